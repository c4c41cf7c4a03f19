/* jpeg_fixtures.c: JPEG test inputs and error-message checks (see jpeg_fixtures.h). */
#include "tests/support/jpeg_fixtures.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

void assert_msg_contains(const Err *err, const char *needle)
{
    if (!strstr(err->msg, needle))
        fail_msg("error \"%s\" does not contain \"%s\"", err->msg, needle);
}

void assert_err_line(const Err *err, const char *name)
{
    if (!err->msg[0] || strchr(err->msg, '\n') || strchr(err->msg, '\r'))
        fail_msg("error \"%s\" is not one line", err->msg);
    assert_msg_contains(err, name);
}

void fill_smooth(uint8_t *px, int w, int h)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                px[(y * w + x) * 3 + c] = (uint8_t)(40 + (x * 150) / w + (y * 50) / h + c * 10);
}

uint8_t *tj_make(const uint8_t *px, int w, int h, int pf, int subsamp, int flags, size_t *len)
{
    tjhandle tj = tjInitCompress();
    assert_non_null(tj);
    unsigned char *buf = NULL;
    unsigned long size = 0;
    int rc = tjCompress2(tj, px, w, 0, h, pf, &buf, &size, subsamp, 92, flags);
    if (rc != 0)
        fail_msg("tjCompress2: %s", tjGetErrorStr2(tj));
    tjDestroy(tj);
    uint8_t *out = malloc(size);
    assert_non_null(out);
    memcpy(out, buf, size);
    tjFree(buf);
    *len = size;
    return out;
}

uint8_t *make_rgb_jpeg(int w, int h, size_t *len)
{
    uint8_t *px = malloc((size_t)w * h * 3);
    assert_non_null(px);
    fill_smooth(px, w, h);
    uint8_t *jpg = tj_make(px, w, h, TJPF_RGB, TJSAMP_420, 0, len);
    free(px);
    return jpg;
}

void temp_path(char *dir, size_t dir_size, char *path, size_t path_size, const char *name)
{
    snprintf(dir, dir_size, "/tmp/effdet_test_jpeg_XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, path_size, "%s/%s", dir, name);
}

size_t find_marker(const uint8_t *jpg, size_t len, uint8_t code)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == code)
            return i;
    fail_msg("no marker 0xff%02x in the test JPEG", code);
    return 0;
}

void set_sof_size(uint8_t *jpg, size_t len, int w, int h)
{
    size_t i = find_marker(jpg, len, 0xC0);
    jpg[i + 5] = (uint8_t)(h >> 8);
    jpg[i + 6] = (uint8_t)h;
    jpg[i + 7] = (uint8_t)(w >> 8);
    jpg[i + 8] = (uint8_t)w;
}

uint8_t *with_stray_bytes(const uint8_t *jpg, size_t len, size_t *out_len)
{
    size_t sos = find_marker(jpg, len, 0xDA);
    uint8_t *odd = malloc(len + 2);
    assert_non_null(odd);
    memcpy(odd, jpg, sos);
    memcpy(odd + sos, "\x12\x34", 2);
    memcpy(odd + sos + 2, jpg + sos, len - sos);
    *out_len = len + 2;
    return odd;
}
