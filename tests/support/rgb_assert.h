/* rgb_assert.h: comparison of packed RGB images for the image tests. */
#ifndef EFFDET_TEST_RGB_ASSERT_H
#define EFFDET_TEST_RGB_ASSERT_H

#include <stddef.h>
#include <stdint.h>

/* Fails with the first differing byte of two (h, w, 3) images: index, pixel, channel, values. */
void assert_rgb_equal(const uint8_t *got, const uint8_t *want, size_t n, int w);

#endif
