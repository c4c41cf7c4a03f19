/* test_jpeg.c: loader/jpeg.c against Pillow's bytes and against TurboJPEG-made inputs.
 *
 * The pil_* arrays below were made offline with Pillow 9.4.0 (Debian python3-pil, on the same
 * libjpeg-turbo 2.1.5 this project links) by:
 *   im = Image.frombytes('RGB', (w, h), ramp(w, h)).convert(MODE)   # MODE 'RGB' 9x7, 'CMYK' 6x5
 *   im.save(buf, 'JPEG', quality=85, optimize=True)                   # -> pil_jpeg_*
 *   Image.open(buf).convert('RGB').tobytes()                          # -> pil_rgb_of_*
 * with ramp(x, y, c) = (x*53 + y*97 + c*71 + ((x*y) % 7)*29) & 255. Pillow writes CMYK inverted
 * with an Adobe marker (transform 0), as Photoshop does, so pil_rgb_of_cmyk_6x5 pins both the
 * inversion convention and Pillow's CMYK->RGB rounding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tests/support/rgb_assert.h"
#include "loader/jpeg.h"

static const uint8_t pil_jpeg_rgb_9x7[389] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x05, 0x03, 0x04, 0x04, 0x04, 0x03, 0x05,
    0x04, 0x04, 0x04, 0x05, 0x05, 0x05, 0x06, 0x07, 0x0c, 0x08, 0x07, 0x07, 0x07, 0x07, 0x0f, 0x0b,
    0x0b, 0x09, 0x0c, 0x11, 0x0f, 0x12, 0x12, 0x11, 0x0f, 0x11, 0x11, 0x13, 0x16, 0x1c, 0x17, 0x13,
    0x14, 0x1a, 0x15, 0x11, 0x11, 0x18, 0x21, 0x18, 0x1a, 0x1d, 0x1d, 0x1f, 0x1f, 0x1f, 0x13, 0x17,
    0x22, 0x24, 0x22, 0x1e, 0x24, 0x1c, 0x1e, 0x1f, 0x1e, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x05, 0x05,
    0x05, 0x07, 0x06, 0x07, 0x0e, 0x08, 0x08, 0x0e, 0x1e, 0x14, 0x11, 0x14, 0x1e, 0x1e, 0x1e, 0x1e,
    0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e,
    0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e,
    0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0x1e, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x07, 0x00, 0x09, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x16, 0x00, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x05, 0xff, 0xc4, 0x00, 0x20, 0x10, 0x00, 0x03,
    0x00, 0x02, 0x02, 0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02,
    0x03, 0x04, 0x11, 0x00, 0x06, 0x05, 0x12, 0x14, 0x54, 0x93, 0xd4, 0xff, 0xc4, 0x00, 0x14, 0x01,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x06, 0xff, 0xc4, 0x00, 0x23, 0x11, 0x00, 0x01, 0x02, 0x05, 0x03, 0x05, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x11, 0x00, 0x03, 0x04, 0x05, 0x61, 0x06, 0x21,
    0x31, 0x13, 0x22, 0x41, 0x52, 0x91, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03,
    0x11, 0x00, 0x3f, 0x00, 0xb5, 0x71, 0x21, 0x4e, 0xb6, 0x72, 0x12, 0xb8, 0xd6, 0x9e, 0x09, 0x0e,
    0xe0, 0x21, 0x43, 0x8f, 0x39, 0xc4, 0x8a, 0xb2, 0xe9, 0x00, 0x9b, 0x91, 0xb3, 0xe9, 0x98, 0x2b,
    0xb9, 0xa1, 0xdb, 0x12, 0xc5, 0xb6, 0xfd, 0xbf, 0x61, 0xf8, 0xfe, 0x53, 0xef, 0xa7, 0xef, 0xe3,
    0x8e, 0x15, 0xd6, 0x97, 0x29, 0xd6, 0x8a, 0xc1, 0x4f, 0x29, 0x95, 0x95, 0x39, 0x3c, 0x03, 0xe0,
    0x81, 0xb6, 0x00, 0xcb, 0xc1, 0xe4, 0x8e, 0xbd, 0x2a, 0x26, 0x2b, 0xd9, 0x41, 0x87, 0x00, 0x76,
    0x9d, 0xbe, 0x98, 0xff, 0xd9,
};
static const uint8_t pil_rgb_of_rgb_9x7[189] = {
    2, 77, 83, 66, 139, 148, 116, 185, 200, 156, 194, 215, 104, 83, 114, 97, 57, 84,
    123, 103, 115, 139, 150, 136, 169, 217, 167, 118, 173, 176, 164, 222, 226, 11, 74, 81,
    122, 162, 172, 199, 191, 202, 138, 116, 119, 153, 144, 137, 80, 98, 72, 63, 117, 65,
    57, 73, 72, 93, 119, 116, 157, 204, 198, 45, 89, 74, 199, 218, 188, 87, 98, 56,
    166, 183, 138, 90, 124, 74, 155, 220, 164, 102, 97, 78, 194, 206, 184, 88, 131, 103,
    106, 160, 124, 136, 177, 133, 110, 143, 100, 78, 103, 71, 159, 196, 162, 50, 118, 69,
    170, 163, 119, 100, 112, 62, 39, 89, 28, 157, 221, 169, 135, 193, 168, 99, 140, 142,
    62, 78, 111, 111, 133, 154, 147, 211, 176, 102, 110, 87, 188, 213, 183, 170, 227, 184,
    147, 220, 177, 115, 185, 159, 119, 165, 163, 149, 154, 183, 135, 144, 153, 54, 113, 55,
    99, 137, 184, 54, 102, 142, 70, 138, 161, 95, 174, 169, 120, 197, 155, 131, 180, 124,
    206, 200, 152, 70, 65, 0, 160, 213, 95,
};
static const uint8_t pil_jpeg_cmyk_6x5[306] = {
    0xff, 0xd8, 0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x05, 0x03, 0x04, 0x04, 0x04, 0x03, 0x05, 0x04, 0x04,
    0x04, 0x05, 0x05, 0x05, 0x06, 0x07, 0x0c, 0x08, 0x07, 0x07, 0x07, 0x07, 0x0f, 0x0b, 0x0b, 0x09,
    0x0c, 0x11, 0x0f, 0x12, 0x12, 0x11, 0x0f, 0x11, 0x11, 0x13, 0x16, 0x1c, 0x17, 0x13, 0x14, 0x1a,
    0x15, 0x11, 0x11, 0x18, 0x21, 0x18, 0x1a, 0x1d, 0x1d, 0x1f, 0x1f, 0x1f, 0x13, 0x17, 0x22, 0x24,
    0x22, 0x1e, 0x24, 0x1c, 0x1e, 0x1f, 0x1e, 0xff, 0xc0, 0x00, 0x14, 0x08, 0x00, 0x05, 0x00, 0x06,
    0x04, 0x43, 0x11, 0x00, 0x4d, 0x11, 0x00, 0x59, 0x11, 0x00, 0x4b, 0x11, 0x00, 0xff, 0xc4, 0x00,
    0x16, 0x00, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x05, 0x06, 0x08, 0xff, 0xc4, 0x00, 0x22, 0x10, 0x00, 0x03, 0x00, 0x02, 0x02, 0x02,
    0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
    0x11, 0x12, 0x13, 0x00, 0x14, 0x21, 0x22, 0x23, 0x32, 0xff, 0xda, 0x00, 0x0e, 0x04, 0x43, 0x00,
    0x4d, 0x00, 0x59, 0x00, 0x4b, 0x00, 0x00, 0x3f, 0x00, 0x8d, 0xc8, 0xd9, 0x26, 0x17, 0x0b, 0xd8,
    0x1c, 0x2c, 0x0c, 0x19, 0xa4, 0x77, 0xff, 0x00, 0x42, 0xd8, 0x97, 0xc2, 0xc7, 0xcb, 0xc4, 0x5f,
    0x4e, 0x38, 0x21, 0xe5, 0x0b, 0xcd, 0xd6, 0x6c, 0x7d, 0x8c, 0x3b, 0x1d, 0x9f, 0x10, 0xbf, 0x72,
    0xc6, 0x8f, 0x46, 0x77, 0xba, 0x1c, 0x3c, 0xce, 0x17, 0x55, 0xcd, 0xea, 0xc9, 0xad, 0xdb, 0x26,
    0xb2, 0x2c, 0xb3, 0x59, 0xd0, 0x3c, 0xb1, 0xff, 0x00, 0x6d, 0x54, 0xa0, 0x0a, 0x8b, 0x5f, 0x29,
    0xf7, 0x34, 0x55, 0x1d, 0xc5, 0x09, 0x2c, 0xdd, 0xb1, 0x47, 0x82, 0xe5, 0x0e, 0x49, 0xcd, 0xb5,
    0x32, 0xd9, 0x0a, 0xd1, 0x32, 0x78, 0xd3, 0x6c, 0xc1, 0x0e, 0x03, 0x4c, 0x56, 0x90, 0x65, 0x88,
    0x2a, 0xa3, 0xf0, 0x4f, 0x27, 0x21, 0x7f, 0x90, 0xce, 0xe5, 0x16, 0x6a, 0x7c, 0x06, 0xcb, 0xf9,
    0xff, 0xd9,
};
static const uint8_t pil_rgb_of_cmyk_6x5[90] = {
    0, 69, 137, 54, 132, 201, 111, 171, 246, 152, 231, 39, 217, 26, 101, 7, 77, 160,
    100, 165, 249, 175, 246, 58, 0, 75, 147, 94, 155, 244, 171, 248, 47, 247, 63, 131,
    191, 17, 74, 54, 114, 195, 168, 234, 39, 9, 88, 149, 173, 255, 71, 45, 92, 173,
    36, 100, 178, 179, 253, 60, 47, 126, 200, 254, 67, 145, 147, 203, 24, 66, 156, 218,
    128, 200, 16, 45, 115, 194, 16, 95, 140, 181, 244, 62, 142, 218, 31, 62, 128, 201,
};

/* ---- helpers ------------------------------------------------------------------------------------ */

/* Fails when some |got - want| > tol, naming the worst byte. */
static void assert_bytes_near(const uint8_t *got, const uint8_t *want, size_t n, int tol)
{
    size_t worst = 0;
    int max = -1;
    for (size_t i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)want[i]);
        if (d > max) {
            max = d;
            worst = i;
        }
    }
    if (max > tol)
        fail_msg("max |diff| %d > %d at byte %zu: got %d, want %d", max, tol, worst, got[worst],
                 want[worst]);
}

static void assert_msg_contains(const Err *err, const char *needle)
{
    if (!strstr(err->msg, needle))
        fail_msg("error \"%s\" does not contain \"%s\"", err->msg, needle);
}

/* A smooth RGB pattern (JPEG keeps it within a few levels). */
static void fill_smooth(uint8_t *px, int w, int h)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                px[(y * w + x) * 3 + c] = (uint8_t)(40 + (x * 150) / w + (y * 50) / h + c * 10);
}

/* TurboJPEG-compressed copy of px in pixel format pf, as a malloc'ed buffer. */
static uint8_t *tj_make(const uint8_t *px, int w, int h, int pf, int subsamp, int flags,
                        size_t *len)
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

static uint8_t *make_rgb_jpeg(int w, int h, size_t *len)
{
    uint8_t *px = malloc((size_t)w * h * 3);
    assert_non_null(px);
    fill_smooth(px, w, h);
    uint8_t *jpg = tj_make(px, w, h, TJPF_RGB, TJSAMP_420, 0, len);
    free(px);
    return jpg;
}

/* A fresh file path under a private temporary directory (removed by the caller). */
static void temp_path(char *dir, size_t dir_size, char *path, size_t path_size, const char *name)
{
    snprintf(dir, dir_size, "/tmp/effdet_test_jpeg_XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, path_size, "%s/%s", dir, name);
}

static void write_bytes(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* ---- Pillow parity ------------------------------------------------------------------------------ */

static void check_pil_decode(const uint8_t *jpg, size_t len, const char *name, int w, int h,
                             const uint8_t *want, size_t want_len)
{
    RgbImage img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, name, NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(img.w, w);
    assert_int_equal(img.h, h);
    assert_int_equal(want_len, (size_t)w * h * 3);
    assert_rgb_equal(img.px, want, want_len, img.w);
    rgb_image_free(&img);
}

static void test_decode_matches_pil_rgb(void **state)
{
    check_pil_decode(pil_jpeg_rgb_9x7, sizeof pil_jpeg_rgb_9x7, "rgb.jpg", 9, 7, pil_rgb_of_rgb_9x7,
                     sizeof pil_rgb_of_rgb_9x7);
}

static void test_decode_matches_pil_cmyk(void **state)
{
    check_pil_decode(pil_jpeg_cmyk_6x5, sizeof pil_jpeg_cmyk_6x5, "cmyk.jpg", 6, 5,
                     pil_rgb_of_cmyk_6x5, sizeof pil_rgb_of_cmyk_6x5);
}

/* ---- colour spaces and coding modes ------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    const int w = 33, h = 21;
    RgbImage src = {0}, back = {0};
    Err err = {0};
    assert_int_equal(rgb_image_alloc(&src, w, h, &err), 0);
    fill_smooth(src.px, w, h);
    uint8_t *jpg = NULL;
    size_t len = 0;
    if (jpeg_encode_rgb(&src, 95, &jpg, &len, &err) != 0)
        fail_msg("%s", err.msg);
    assert_true(len > 100);
    if (jpeg_decode_mem(jpg, len, "rt.jpg", NULL, &back, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(back.w, w);
    assert_int_equal(back.h, h);
    assert_bytes_near(back.px, src.px, (size_t)w * h * 3, 6);
    free(jpg);
    rgb_image_free(&src);
    rgb_image_free(&back);
}

static void test_write_file_round_trip(void **state)
{
    char dir[64], path[128];
    temp_path(dir, sizeof dir, path, sizeof path, "out.jpg");
    RgbImage src = {0}, back = {0};
    Err err = {0};
    assert_int_equal(rgb_image_alloc(&src, 16, 9, &err), 0);
    fill_smooth(src.px, 16, 9);
    if (jpeg_write_file(path, &src, 90, &err) != 0)
        fail_msg("%s", err.msg);
    if (jpeg_decode_file(path, NULL, &back, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(back.w, 16);
    assert_int_equal(back.h, 9);
    assert_bytes_near(back.px, src.px, 16 * 9 * 3, 10);
    unlink(path);
    rmdir(dir);
    rgb_image_free(&src);
    rgb_image_free(&back);
}

static void test_grayscale_replicates(void **state)
{
    const int w = 20, h = 12;
    uint8_t gray[20 * 12];
    for (int i = 0; i < w * h; i++)
        gray[i] = (uint8_t)(30 + i % w * 9);
    size_t len = 0;
    uint8_t *jpg = tj_make(gray, w, h, TJPF_GRAY, TJSAMP_GRAY, 0, &len);
    RgbImage img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, "gray.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(img.w, w);
    assert_int_equal(img.h, h);
    for (int i = 0; i < w * h; i++) {
        const uint8_t *p = img.px + 3 * i;
        if (p[0] != p[1] || p[1] != p[2])
            fail_msg("pixel %d is not gray: %d %d %d", i, p[0], p[1], p[2]);
        if (abs(p[0] - gray[i]) > 4)
            fail_msg("pixel %d: got %d, want %d +- 4", i, p[0], gray[i]);
    }
    free(jpg);
    rgb_image_free(&img);
}

/* TurboJPEG stores CMYK as YCCK with an Adobe marker; the samples are Adobe-inverted (255 = no
 * ink), so stored (200, 100, 50, 180) is the colour R = 200*180/255 = 141, G = 71, B = 35.
 * Reading the samples as plain ink would give black here instead. */
static void test_cmyk_inverted_adobe(void **state)
{
    const int w = 16, h = 16;
    const uint8_t stored[4] = {200, 100, 50, 180};
    uint8_t *cmyk = malloc(w * h * 4);
    assert_non_null(cmyk);
    for (int i = 0; i < w * h; i++)
        memcpy(cmyk + 4 * i, stored, 4);
    size_t len = 0;
    uint8_t *jpg = tj_make(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 0, &len);
    RgbImage img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, "cmyk.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    const uint8_t want[3] = {141, 71, 35};
    for (int i = 0; i < w * h; i++)
        assert_bytes_near(img.px + 3 * i, want, 3, 2);
    free(cmyk);
    free(jpg);
    rgb_image_free(&img);
}

/* A progressive file holds the same quantized coefficients as the baseline one, so the pixels are
 * identical. */
static void test_progressive_equals_baseline(void **state)
{
    const int w = 40, h = 24;
    uint8_t *px = malloc(w * h * 3);
    assert_non_null(px);
    fill_smooth(px, w, h);
    size_t len_b = 0, len_p = 0;
    uint8_t *base = tj_make(px, w, h, TJPF_RGB, TJSAMP_420, 0, &len_b);
    uint8_t *prog = tj_make(px, w, h, TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, &len_p);
    assert_int_not_equal(memcmp(base, prog, len_b < len_p ? len_b : len_p), 0);
    RgbImage a = {0}, b = {0};
    Err err = {0};
    if (jpeg_decode_mem(base, len_b, "base.jpg", NULL, &a, &err) != 0 ||
        jpeg_decode_mem(prog, len_p, "prog.jpg", NULL, &b, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(b.w, w);
    assert_int_equal(b.h, h);
    assert_rgb_equal(b.px, a.px, (size_t)w * h * 3, w);
    free(px);
    free(base);
    free(prog);
    rgb_image_free(&a);
    rgb_image_free(&b);
}

/* ---- scaled decode ---------------------------------------------------------------------------- */

static void expect_scaled(const uint8_t *jpg, size_t len, int min_w, int min_h, int want_w,
                          int want_h)
{
    JpegDecodeOptions opt = {.min_w = min_w, .min_h = min_h};
    RgbImage img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, "scaled.jpg", &opt, &img, &err) != 0)
        fail_msg("%s", err.msg);
    if (img.w != want_w || img.h != want_h)
        fail_msg("min %d x %d: got %d x %d, want %d x %d", min_w, min_h, img.w, img.h, want_w,
                 want_h);
    rgb_image_free(&img);
}

static void test_scaled_decode_sizes(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(100, 60, &len);
    expect_scaled(jpg, len, 0, 0, 100, 60);   /* no request: full size */
    expect_scaled(jpg, len, 1, 1, 13, 8);     /* 1/8, sizes rounded up */
    expect_scaled(jpg, len, 20, 0, 25, 15);   /* 1/8 gives 13 < 20, so 1/4 */
    expect_scaled(jpg, len, 50, 30, 50, 30);  /* 1/2 exactly */
    expect_scaled(jpg, len, 0, 31, 100, 60);  /* 1/2 gives 30 < 31 */
    expect_scaled(jpg, len, 400, 400, 100, 60); /* never upscales */
    free(jpg);
}

/* ---- errors ------------------------------------------------------------------------------------- */

static void test_missing_file(void **state)
{
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(jpeg_decode_file("/nonexistent/dir/none.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "/nonexistent/dir/none.jpg");
    assert_msg_contains(&err, "No such file");
    assert_null(img.px);
}

static void test_not_a_jpeg(void **state)
{
    const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13};
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(jpeg_decode_mem(png, sizeof png, "pic.png", NULL, &img, &err), -1);
    assert_msg_contains(&err, "pic.png");
    assert_msg_contains(&err, "not a JPEG");
    assert_int_equal(jpeg_decode_mem(png, 0, "empty.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "empty.jpg");
    /* A JPEG start marker followed by garbage is corrupt, not a crash. */
    const uint8_t junk[] = {0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(jpeg_decode_mem(junk, sizeof junk, "junk.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "junk.jpg");
    rgb_image_free(&img);
}

/* Offset of the first marker 0xFF code in jpg (fails when absent). */
static size_t find_marker(const uint8_t *jpg, size_t len, uint8_t code)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == code)
            return i;
    fail_msg("no marker 0xff%02x in the test JPEG", code);
    return 0;
}

static void test_truncated_file(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(64, 48, &len);
    size_t sos = find_marker(jpg, len, 0xDA);
    char dir[64], path[128];
    temp_path(dir, sizeof dir, path, sizeof path, "cut.jpg");
    write_bytes(path, jpg, sos + (len - sos) / 2); /* cut in the middle of the scan data */
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(jpeg_decode_file(path, NULL, &img, &err), -1);
    assert_msg_contains(&err, path);
    assert_msg_contains(&err, "truncated");
    JpegDecodeOptions strict = {.strict = 1};
    assert_int_equal(jpeg_decode_file(path, &strict, &img, &err), -1);
    assert_msg_contains(&err, "truncated");
    /* Cut inside the tables, before the image header is complete. */
    assert_int_equal(jpeg_decode_mem(jpg, sos - 40, "head.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "head.jpg");
    assert_int_equal(jpeg_decode_mem(jpg, 100, "tables.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "tables.jpg: truncated");
    unlink(path);
    rmdir(dir);
    free(jpg);
    rgb_image_free(&img);
}

/* Two stray bytes before the SOS marker make libjpeg warn "extraneous bytes"; Pillow decodes such
 * a file to the same pixels, so by default we do too, and strict mode refuses it. */
static void test_benign_warning_policy(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(32, 16, &len);
    size_t sos = find_marker(jpg, len, 0xDA);
    uint8_t *odd = malloc(len + 2);
    assert_non_null(odd);
    memcpy(odd, jpg, sos);
    memcpy(odd + sos, "\x12\x34", 2);
    memcpy(odd + sos + 2, jpg + sos, len - sos);
    RgbImage ok = {0}, img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, "good.jpg", NULL, &ok, &err) != 0 ||
        jpeg_decode_mem(odd, len + 2, "odd.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    assert_rgb_equal(img.px, ok.px, 32 * 16 * 3, 32);
    JpegDecodeOptions strict = {.strict = 1};
    assert_int_equal(jpeg_decode_mem(odd, len + 2, "odd.jpg", &strict, &img, &err), -1);
    assert_msg_contains(&err, "odd.jpg");
    assert_msg_contains(&err, "extraneous");
    free(jpg);
    free(odd);
    rgb_image_free(&ok);
    rgb_image_free(&img);
}

/* Rewrites the SOF marker's height and width fields. */
static void set_sof_size(uint8_t *jpg, size_t len, int w, int h)
{
    size_t i = find_marker(jpg, len, 0xC0);
    jpg[i + 5] = (uint8_t)(h >> 8);
    jpg[i + 6] = (uint8_t)h;
    jpg[i + 7] = (uint8_t)(w >> 8);
    jpg[i + 8] = (uint8_t)w;
}

static void test_absurd_dimensions(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(16, 16, &len);
    RgbImage img = {0};
    Err err = {0};
    JpegDecodeOptions tiny_cap = {.max_pixels = 100};
    assert_int_equal(jpeg_decode_mem(jpg, len, "cap.jpg", &tiny_cap, &img, &err), -1);
    assert_msg_contains(&err, "cap.jpg");
    assert_msg_contains(&err, "16 x 16");
    set_sof_size(jpg, len, 60000, 60000);
    assert_int_equal(jpeg_decode_mem(jpg, len, "huge.jpg", NULL, &img, &err), -1);
    assert_msg_contains(&err, "huge.jpg");
    assert_msg_contains(&err, "60000 x 60000");
    assert_null(img.px);
    free(jpg);
}

static void test_encode_errors_and_image_reuse(void **state)
{
    RgbImage img = {0};
    Err err = {0};
    uint8_t *out = (uint8_t *)&err;
    size_t len = 7;
    assert_int_equal(jpeg_encode_rgb(&img, 90, &out, &len, &err), -1); /* empty image */
    assert_null(out);
    assert_int_equal(len, 0);
    assert_int_equal(rgb_image_alloc(&img, 4, 3, &err), 0);
    memset(img.px, 7, 4 * 3 * 3);
    assert_int_equal(jpeg_encode_rgb(&img, 0, &out, &len, &err), -1);
    assert_msg_contains(&err, "quality 0");
    uint8_t *keep = img.px;
    assert_int_equal(rgb_image_alloc(&img, 4, 3, &err), 0); /* same size: same buffer */
    assert_ptr_equal(img.px, keep);
    assert_int_equal(rgb_image_alloc(&img, 0, 3, &err), -1);
    rgb_image_free(&img);
    rgb_image_free(&img); /* idempotent */
    assert_null(img.px);
    assert_int_equal(img.w, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_matches_pil_rgb),
        cmocka_unit_test(test_decode_matches_pil_cmyk),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_write_file_round_trip),
        cmocka_unit_test(test_grayscale_replicates),
        cmocka_unit_test(test_cmyk_inverted_adobe),
        cmocka_unit_test(test_progressive_equals_baseline),
        cmocka_unit_test(test_scaled_decode_sizes),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_not_a_jpeg),
        cmocka_unit_test(test_truncated_file),
        cmocka_unit_test(test_benign_warning_policy),
        cmocka_unit_test(test_absurd_dimensions),
        cmocka_unit_test(test_encode_errors_and_image_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
