/* test_jpeg.c: loader/jpeg.c on good input, against Pillow's bytes and against TurboJPEG-made
 * inputs: decode of every colour form and coding mode, encode and file round trips, scaled decode,
 * header reading, and the encoder's argument errors. Bad input (corrupt, truncated, empty, huge,
 * not JPEG, not a file) is tests/unit/test_jpeg_bad.c; the helpers both use are in
 * tests/support/jpeg_fixtures.c.
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

#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tests/support/jpeg_fixtures.h"
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

/* The loader's requests: the smallest of 1/1, 1/2, 1/4, 1/8 that keeps both minimums. */
static void test_scaled_decode_choice(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(640, 480, &len);
    expect_scaled(jpg, len, 300, 200, 320, 240); /* 1/4 gives 160 < 300 */
    expect_scaled(jpg, len, 100, 100, 160, 120); /* 1/8 gives 80 x 60 */
    expect_scaled(jpg, len, 700, 10, 640, 480);  /* nothing smaller keeps 700 */
    expect_scaled(jpg, len, 320, 240, 320, 240); /* equal counts as kept */
    expect_scaled(jpg, len, 321, 0, 640, 480);
    expect_scaled(jpg, len, 0, 61, 160, 120);
    expect_scaled(jpg, len, 1, 1, 80, 60);
    free(jpg);
}

/* max_w / max_h bound the header's full size, whatever the decode scale: a 640 x 480 JPEG is
 * refused under a 639 x 480 bound even when a 1/8 decode (80 x 60) was asked for. */
static void test_max_size(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(640, 480, &len);
    RgbImage img = {0};
    Err err = {{0}};
    JpegDecodeOptions ok = {.min_w = 1, .min_h = 1, .max_w = 640, .max_h = 480};
    assert_int_equal(jpeg_decode_mem(jpg, len, "m.jpg", &ok, &img, &err), 0);
    assert_int_equal(img.w, 80);
    JpegDecodeOptions narrow = ok, low = ok;
    narrow.max_w = 639, low.max_h = 479;
    assert_int_equal(jpeg_decode_mem(jpg, len, "m.jpg", &narrow, &img, &err), -1);
    assert_err_line(&err, "m.jpg");
    assert_msg_contains(&err, "640 x 480, larger than the 639 x 480 expected");
    assert_int_equal(jpeg_decode_mem(jpg, len, "m.jpg", &low, &img, &err), -1);
    assert_msg_contains(&err, "larger than the 640 x 479 expected");
    rgb_image_free(&img);
    free(jpg);
}

/* Fails unless each pixel of the 1/d decode is near the mean of its d x d block (cut at the
 * edges) in the full decode: what DCT-domain scaling approximates on a smooth picture. */
static void assert_scaled_like_full(const RgbImage *full, const RgbImage *small, int d, int tol)
{
    for (int y = 0; y < small->h; y++)
        for (int x = 0; x < small->w; x++)
            for (int c = 0; c < 3; c++) {
                int sum = 0, n = 0;
                for (int yy = y * d; yy < y * d + d && yy < full->h; yy++)
                    for (int xx = x * d; xx < x * d + d && xx < full->w; xx++, n++)
                        sum += full->px[((size_t)yy * full->w + xx) * 3 + c];
                int got = small->px[((size_t)y * small->w + x) * 3 + c];
                if (abs(got * n - sum) > tol * n)
                    fail_msg("1/%d: pixel (%d, %d) channel %d is %d, block mean %d", d, x, y, c,
                             got, sum / n);
            }
}

/* Scaled decode of each colour form at an odd size: the size is libjpeg's ceil(w / d), and the
 * pixels are the block means of the full decode (gray stays gray; progressive equals baseline).
 * The size also keeps valgrind quiet: on 4:2:0 images whose output width is 1 or 2 mod 4 at 1/8
 * (and 46 mod 48 at full size), libjpeg-turbo's SIMD code leaves the G of one pixel "undefined"
 * to valgrind, though the bytes are those of the scalar code (JSIMD_FORCENONE=1) and do not change
 * with heap contents (MALLOC_PERTURB_): a known SIMD false positive (libjpeg-turbo issue #238). */
static void test_scaled_decode_kinds(void **state)
{
    enum { W = 61, H = 57 };
    uint8_t *px = malloc(W * H * 4);
    assert_non_null(px);
    const struct { const char *name; int pf, subsamp, flags; } kinds[] = {
        {"rgb.jpg", TJPF_RGB, TJSAMP_420, 0},
        {"gray.jpg", TJPF_GRAY, TJSAMP_GRAY, 0},
        {"cmyk.jpg", TJPF_CMYK, TJSAMP_444, 0},
        {"prog.jpg", TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE},
    };
    RgbImage base[4] = {{0}}; /* the rgb.jpg decodes at 1/1, 1/2, 1/4, 1/8 */
    for (int k = 0; k < 4; k++) {
        int ch = tjPixelSize[kinds[k].pf];
        for (int i = 0; i < W * H * ch; i++) /* smooth in x and y, in every channel */
            px[i] = (uint8_t)(20 + i / ch % W + i / ch / W + i % ch * 9);
        size_t len = 0;
        uint8_t *jpg = tj_make(px, W, H, kinds[k].pf, kinds[k].subsamp, kinds[k].flags, &len);
        RgbImage full = {0}, img = {0};
        Err err = {0};
        if (jpeg_decode_mem(jpg, len, kinds[k].name, NULL, &full, &err) != 0)
            fail_msg("%s", err.msg);
        for (int s = 0; s < 4; s++) {
            int d = 1 << s;
            tjscalingfactor sf = {1, d};
            int want_w = (W + d - 1) / d, want_h = (H + d - 1) / d;
            assert_int_equal(want_w, TJSCALED(W, sf));
            assert_int_equal(want_h, TJSCALED(H, sf));
            JpegDecodeOptions opt = {.min_w = want_w, .min_h = want_h};
            if (jpeg_decode_mem(jpg, len, kinds[k].name, &opt, &img, &err) != 0)
                fail_msg("%s", err.msg);
            if (img.w != want_w || img.h != want_h)
                fail_msg("%s at 1/%d: %d x %d, want %d x %d", kinds[k].name, d, img.w, img.h,
                         want_w, want_h);
            assert_scaled_like_full(&full, &img, d, 12);
            for (int i = 0; kinds[k].pf == TJPF_GRAY && i < img.w * img.h; i++)
                if (img.px[3 * i] != img.px[3 * i + 1] || img.px[3 * i] != img.px[3 * i + 2])
                    fail_msg("gray at 1/%d: pixel %d is not gray", d, i);
            if (k == 0) {
                assert_int_equal(rgb_image_alloc(&base[s], img.w, img.h, &err), 0);
                memcpy(base[s].px, img.px, (size_t)img.w * img.h * 3);
            }
            if (kinds[k].flags & TJFLAG_PROGRESSIVE)
                assert_rgb_equal(img.px, base[s].px, (size_t)img.w * img.h * 3, img.w);
        }
        free(jpg);
        rgb_image_free(&full);
        rgb_image_free(&img);
    }
    for (int s = 0; s < 4; s++)
        rgb_image_free(&base[s]);
    free(px);
}

/* ---- header only ----------------------------------------------------------------------------- */

static void expect_header(const uint8_t *jpg, size_t len, int want_w, int want_h)
{
    int w = -1, h = -1;
    Err err = {0};
    if (jpeg_read_header_mem(jpg, len, "hdr.jpg", &w, &h, &err) != 0)
        fail_msg("%s", err.msg);
    if (w != want_w || h != want_h)
        fail_msg("header: %d x %d, want %d x %d", w, h, want_w, want_h);
}

static void expect_header_error(const uint8_t *jpg, size_t len, const char *name, const char *what)
{
    int w = -1, h = -1;
    Err err = {0};
    assert_int_equal(jpeg_read_header_mem(jpg, len, name, &w, &h, &err), -1);
    assert_err_line(&err, name);
    assert_msg_contains(&err, what);
    assert_int_equal(w, 0);
    assert_int_equal(h, 0);
}

static void test_read_header_mem(void **state)
{
    expect_header(pil_jpeg_rgb_9x7, sizeof pil_jpeg_rgb_9x7, 9, 7);
    expect_header(pil_jpeg_cmyk_6x5, sizeof pil_jpeg_cmyk_6x5, 6, 5);
    uint8_t px[61 * 57 * 4] = {0};
    const int pfs[] = {TJPF_GRAY, TJPF_CMYK, TJPF_RGB};
    const int subsamps[] = {TJSAMP_GRAY, TJSAMP_444, TJSAMP_420};
    for (int k = 0; k < 3; k++) {
        size_t len = 0;
        uint8_t *jpg = tj_make(px, 61, 57, pfs[k], subsamps[k], k == 2 ? TJFLAG_PROGRESSIVE : 0,
                               &len);
        expect_header(jpg, len, 61, 57);
        free(jpg);
    }
    size_t len = 0, olen = 0;
    uint8_t *jpg = make_rgb_jpeg(64, 48, &len);
    size_t sos = find_marker(jpg, len, 0xDA);
    expect_header(jpg, sos + 20, 64, 48); /* the header alone: damage after it is unseen */
    uint8_t *odd = with_stray_bytes(jpg, len, &olen);
    expect_header(odd, olen, 64, 48); /* header warnings are accepted, as by the decode */
    expect_header_error(jpg, 0, "empty.jpg", "empty");
    expect_header_error((const uint8_t *)"\x89PNG\r\n\x1a\n", 8, "pic.png", "not a JPEG");
    expect_header_error(jpg, 100, "tables.jpg", "tables.jpg: truncated");
    expect_header_error(jpg, sos - 40, "head.jpg", "head.jpg");
    set_sof_size(jpg, len, 60000, 60000);
    expect_header_error(jpg, len, "huge.jpg", "60000 x 60000 is out of range");
    set_sof_size(jpg, len, 16384, 8192); /* 1 << 27 pixels: the cap itself passes */
    expect_header(jpg, len, 16384, 8192);
    set_sof_size(jpg, len, 16384, 8193);
    expect_header_error(jpg, len, "over.jpg", "out of range");
    memcpy(jpg, odd, sos); /* precision 12 in the header is fatal */
    jpg[find_marker(jpg, len, 0xC0) + 4] = 12;
    expect_header_error(jpg, len, "p12.jpg", "corrupt");
    free(odd);
    free(jpg);
}

/* ---- encode errors, image reuse ----------------------------------------------------------- */

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
        cmocka_unit_test(test_scaled_decode_choice),
        cmocka_unit_test(test_max_size),
        cmocka_unit_test(test_scaled_decode_kinds),
        cmocka_unit_test(test_read_header_mem),
        cmocka_unit_test(test_encode_errors_and_image_reuse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
