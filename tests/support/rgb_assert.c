/* rgb_assert.c: RGB image comparison for the image tests (see rgb_assert.h). */
#include "tests/support/rgb_assert.h"

#include <setjmp.h>
#include <stdarg.h>

#include <cmocka.h>

void assert_rgb_equal(const uint8_t *got, const uint8_t *want, size_t n, int w)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i])
            fail_msg("byte %zu (x %zu, y %zu, c %zu): got %d, want %d", i, (i / 3) % (size_t)w,
                     i / 3 / (size_t)w, i % 3, got[i], want[i]);
}
