/* test_resize.c: augment/resize.c against Pillow's bytes and effdet's arithmetic.
 *
 * The pil_* arrays were made offline with Pillow 9.4.0 (Debian python3-pil) by
 *   Image.frombytes('RGB', (iw, ih), SRC(iw, ih)).resize((ow, oh), Image.BILINEAR|BICUBIC).tobytes()
 * and, for letterboxes, by effdet's ResizePad code (transforms.py) with fill (124, 116, 104):
 *   s = min(th / ih, tw / iw); new = Image.new('RGB', (tw, th), fill)
 *   new.paste(img.resize((int(iw * s), int(ih * s)), interp)); new.tobytes()
 * where SRC is ramp (x*53 + y*97 + c*71 + ((x*y) % 7)*29) & 255 or checker ((x+y+c) & 1) * 255,
 * the same generators as below. Beyond these cases, 1200 random resizes (1..900 px, both filters,
 * up, down, one axis) and 600 random letterboxes matched Pillow byte for byte when written. */

/* The reference resampler below must round like resize.c, which turns contraction into fma off. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/rgb_assert.h"
#include "augment/resize.h"

static const uint8_t pil_ramp_7x5_3x4_bilinear[36] = {
    62, 133, 177, 134, 156, 129, 96, 99, 157, 117, 150, 135, 97, 160, 136, 143, 151, 129,
    110, 143, 127, 134, 143, 120, 124, 141, 119, 77, 148, 122, 129, 174, 102, 83, 131, 148,
};
static const uint8_t pil_ramp_7x5_3x4_bicubic[36] = {
    52, 134, 183, 145, 156, 126, 93, 93, 158, 119, 147, 136, 91, 166, 133, 148, 155, 130,
    110, 137, 130, 137, 148, 117, 124, 138, 115, 72, 148, 124, 131, 178, 98, 82, 129, 150,
};
static const uint8_t pil_checker_5x3_11x7_bilinear[231] = {
    0, 255, 0, 46, 209, 46, 162, 93, 162, 232, 23, 232, 116, 139, 116, 0, 255, 0,
    116, 139, 116, 232, 23, 232, 162, 93, 162, 46, 209, 46, 0, 255, 0, 36, 219, 36,
    69, 186, 69, 152, 103, 152, 202, 53, 202, 119, 136, 119, 36, 219, 36, 119, 136, 119,
    202, 53, 202, 152, 103, 152, 69, 186, 69, 36, 219, 36, 146, 109, 146, 139, 116, 139,
    123, 132, 123, 113, 142, 113, 129, 126, 129, 146, 109, 146, 129, 126, 129, 113, 142, 113,
    123, 132, 123, 139, 116, 139, 146, 109, 146, 255, 0, 255, 209, 46, 209, 93, 162, 93,
    23, 232, 23, 139, 116, 139, 255, 0, 255, 139, 116, 139, 23, 232, 23, 93, 162, 93,
    209, 46, 209, 255, 0, 255, 146, 109, 146, 139, 116, 139, 123, 132, 123, 113, 142, 113,
    129, 126, 129, 146, 109, 146, 129, 126, 129, 113, 142, 113, 123, 132, 123, 139, 116, 139,
    146, 109, 146, 36, 219, 36, 69, 186, 69, 152, 103, 152, 202, 53, 202, 119, 136, 119,
    36, 219, 36, 119, 136, 119, 202, 53, 202, 152, 103, 152, 69, 186, 69, 36, 219, 36,
    0, 255, 0, 46, 209, 46, 162, 93, 162, 232, 23, 232, 116, 139, 116, 0, 255, 0,
    116, 139, 116, 232, 23, 232, 162, 93, 162, 46, 209, 46, 0, 255, 0,
};
static const uint8_t pil_checker_5x3_11x7_bicubic[231] = {
    0, 255, 0, 18, 237, 18, 191, 64, 191, 255, 0, 255, 107, 148, 107, 0, 255, 0,
    107, 148, 107, 255, 0, 255, 191, 64, 191, 18, 237, 18, 0, 255, 0, 26, 229, 26,
    55, 200, 55, 170, 85, 170, 224, 31, 224, 114, 141, 114, 26, 229, 26, 114, 141, 114,
    224, 31, 224, 170, 85, 170, 55, 200, 55, 26, 229, 26, 160, 95, 160, 151, 104, 151,
    114, 141, 114, 97, 158, 97, 132, 123, 132, 160, 95, 160, 132, 123, 132, 97, 158, 97,
    114, 141, 114, 151, 104, 151, 160, 95, 160, 255, 0, 255, 219, 36, 219, 74, 181, 74,
    6, 249, 6, 145, 110, 145, 255, 0, 255, 145, 110, 145, 6, 249, 6, 74, 181, 74,
    219, 36, 219, 255, 0, 255, 160, 95, 160, 151, 104, 151, 114, 141, 114, 97, 158, 97,
    132, 123, 132, 160, 95, 160, 132, 123, 132, 97, 158, 97, 114, 141, 114, 151, 104, 151,
    160, 95, 160, 26, 229, 26, 55, 200, 55, 170, 85, 170, 224, 31, 224, 114, 141, 114,
    26, 229, 26, 114, 141, 114, 224, 31, 224, 170, 85, 170, 55, 200, 55, 26, 229, 26,
    0, 255, 0, 18, 237, 18, 191, 64, 191, 255, 0, 255, 107, 148, 107, 0, 255, 0,
    107, 148, 107, 255, 0, 255, 191, 64, 191, 18, 237, 18, 0, 255, 0,
};
static const uint8_t pil_ramp_23x17_5x3_bicubic[45] = {
    112, 155, 132, 120, 147, 123, 119, 123, 120, 125, 134, 119, 114, 122, 119, 127, 144, 145,
    133, 125, 126, 132, 106, 132, 121, 126, 131, 120, 137, 129, 123, 127, 139, 119, 111, 143,
    138, 126, 108, 141, 113, 126, 129, 116, 131,
};
static const uint8_t pil_ramp_6x4_13x4_bilinear[156] = {
    0, 71, 142, 10, 81, 152, 35, 106, 177, 59, 130, 201, 84, 155, 226, 108, 179, 240,
    133, 204, 147, 157, 228, 53, 181, 144, 67, 206, 50, 92, 142, 45, 116, 48, 70, 141,
    9, 80, 151, 97, 168, 239, 113, 184, 206, 151, 222, 125, 159, 230, 74, 79, 150, 112,
    8, 79, 150, 46, 117, 188, 84, 155, 226, 122, 193, 155, 160, 231, 75, 197, 180, 83,
    235, 99, 121, 251, 66, 137, 194, 9, 80, 166, 30, 101, 99, 82, 153, 62, 133, 174,
    113, 184, 107, 154, 225, 50, 88, 159, 102, 21, 92, 153, 84, 155, 118, 160, 231, 76,
    129, 200, 103, 62, 133, 155, 34, 105, 176, 35, 106, 177, 62, 133, 155, 127, 198, 101,
    162, 233, 77, 108, 179, 142, 66, 128, 199, 156, 99, 170, 245, 69, 140, 203, 126, 89,
    149, 191, 35, 114, 185, 89, 85, 156, 178, 73, 144, 215,
};
static const uint8_t pil_ramp_9x6_9x4_bicubic[108] = {
    30, 111, 182, 102, 173, 145, 64, 135, 217, 136, 209, 112, 197, 100, 83, 103, 73, 144,
    63, 136, 218, 155, 126, 31, 118, 189, 103, 154, 66, 148, 108, 179, 133, 102, 173, 85,
    50, 99, 190, 172, 252, 58, 118, 94, 165, 134, 182, 95, 110, 97, 155, 106, 177, 109,
    75, 133, 109, 116, 187, 119, 48, 119, 178, 215, 127, 113, 143, 214, 20, 56, 138, 209,
    147, 60, 108, 177, 164, 76, 92, 163, 117, 199, 104, 75, 122, 193, 107, 109, 180, 86,
    166, 247, 50, 118, 189, 172, 84, 155, 226, 61, 142, 215, 148, 119, 200, 80, 151, 123,
};
/* scaled 8 x 4, img_scale 1.625 (float32 1.625) */
static const uint8_t pil_letterbox_13x7_to_8x8_bilinear[192] = {
    74, 138, 163, 87, 158, 168, 153, 152, 108, 114, 104, 152, 123, 135, 106, 139, 142, 86,
    103, 86, 128, 91, 162, 148, 122, 115, 135, 102, 159, 126, 128, 165, 111, 120, 141, 131,
    122, 144, 115, 95, 161, 108, 117, 142, 115, 129, 128, 121, 117, 158, 100, 96, 153, 128,
    154, 195, 89, 87, 137, 174, 144, 123, 133, 113, 174, 89, 83, 124, 154, 157, 105, 98,
    123, 130, 148, 107, 178, 137, 116, 187, 188, 118, 189, 146, 133, 126, 132, 110, 166, 106,
    139, 76, 118, 224, 51, 115, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
};
/* scaled 3 x 6, img_scale 1.5 (float32 1.5) */
static const uint8_t pil_letterbox_5x9_to_10x6_bicubic[180] = {
    59, 136, 168, 88, 165, 179, 172, 147, 94, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 137, 116, 140, 86, 157, 121,
    119, 186, 114, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 89, 158, 113, 102, 134, 155, 177, 176, 57, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    155, 138, 100, 120, 202, 86, 138, 213, 131, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 120, 134, 147, 71, 121, 183,
    99, 177, 195, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 97, 129, 142, 143, 147, 131, 135, 135, 148, 124, 116, 104,
    124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104, 124, 116, 104,
};

/* ---- helpers ------------------------------------------------------------------------------------ */

typedef enum SrcKind { SRC_RAMP, SRC_CHECKER } SrcKind;

static RgbImage make_src(SrcKind kind, int w, int h)
{
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(rgb_image_alloc(&img, w, h, &err), 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                int v = kind == SRC_RAMP ? (x * 53 + y * 97 + c * 71 + ((x * y) % 7) * 29) & 255
                                         : ((x + y + c) & 1) * 255;
                img.px[(y * w + x) * 3 + c] = (uint8_t)v;
            }
    return img;
}

typedef struct PilCase {
    const char *what;
    SrcKind kind;
    int iw, ih, ow, oh;
    ResizeFilter f;
    const uint8_t *want;
    size_t want_len;
} PilCase;

#define PIL_CASE(what, kind, iw, ih, ow, oh, f, arr) {what, kind, iw, ih, ow, oh, f, arr, sizeof arr}

static const PilCase pil_cases[] = {
    PIL_CASE("down, bilinear", SRC_RAMP, 7, 5, 3, 4, RESIZE_BILINEAR, pil_ramp_7x5_3x4_bilinear),
    PIL_CASE("down, bicubic", SRC_RAMP, 7, 5, 3, 4, RESIZE_BICUBIC, pil_ramp_7x5_3x4_bicubic),
    PIL_CASE("up, bilinear", SRC_CHECKER, 5, 3, 11, 7, RESIZE_BILINEAR,
             pil_checker_5x3_11x7_bilinear),
    /* Bicubic overshoots on a 0/255 checkerboard, so this pins the clamping too. */
    PIL_CASE("up, bicubic, clipped", SRC_CHECKER, 5, 3, 11, 7, RESIZE_BICUBIC,
             pil_checker_5x3_11x7_bicubic),
    /* A 4.6x / 5.7x shrink: wide antialiased support, and the horizontal pass runs only on the rows
     * the vertical pass reads. */
    PIL_CASE("strong shrink, bicubic", SRC_RAMP, 23, 17, 5, 3, RESIZE_BICUBIC,
             pil_ramp_23x17_5x3_bicubic),
    PIL_CASE("horizontal only", SRC_RAMP, 6, 4, 13, 4, RESIZE_BILINEAR, pil_ramp_6x4_13x4_bilinear),
    PIL_CASE("vertical only", SRC_RAMP, 9, 6, 9, 4, RESIZE_BICUBIC, pil_ramp_9x6_9x4_bicubic),
};

/* ---- resize vs Pillow ---------------------------------------------------------------------------- */

static void test_resize_matches_pil(void **state)
{
    for (size_t i = 0; i < sizeof pil_cases / sizeof pil_cases[0]; i++) {
        const PilCase *t = &pil_cases[i];
        print_message("case: %s (%d x %d -> %d x %d)\n", t->what, t->iw, t->ih, t->ow, t->oh);
        RgbImage src = make_src(t->kind, t->iw, t->ih), dst = {0};
        Err err = {0};
        assert_int_equal(t->want_len, (size_t)t->ow * t->oh * 3);
        if (resize_rgb(&src, t->ow, t->oh, t->f, &dst, &err) != 0)
            fail_msg("%s: %s", t->what, err.msg);
        assert_int_equal(dst.w, t->ow);
        assert_int_equal(dst.h, t->oh);
        assert_rgb_equal(dst.px, t->want, t->want_len, t->ow);
        rgb_image_free(&src);
        rgb_image_free(&dst);
    }
}

static void test_same_size_copies_and_errors(void **state)
{
    RgbImage src = make_src(SRC_RAMP, 6, 5), dst = {0};
    Err err = {0};
    assert_int_equal(resize_rgb(&src, 6, 5, RESIZE_BICUBIC, &dst, &err), 0);
    assert_rgb_equal(dst.px, src.px, 6 * 5 * 3, 6);
    assert_int_equal(resize_rgb(&src, 0, 5, RESIZE_BILINEAR, &dst, &err), -1);
    if (!strstr(err.msg, "0 x 5"))
        fail_msg("error \"%s\" does not name the size", err.msg);
    RgbImage empty = {0};
    assert_int_equal(resize_rgb(&empty, 3, 3, RESIZE_BILINEAR, &dst, &err), -1);
    rgb_image_free(&src);
    rgb_image_free(&dst);
}

/* ---- regions ------------------------------------------------------------------------------------ */

/* xorshift32: a fixed sequence of regions, the same on every run. */
static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* resize_rgb_region of [x0, x0 + w) x [y0, y0 + h) into a buffer whose rows have 5 spare bytes,
 * compared with the crop of full (the whole resize); the spare bytes and the bytes past the last
 * row must stay untouched. */
static void check_region(const RgbImage *src, const RgbImage *full, ResizeFilter f, int x0, int y0,
                         int w, int h)
{
    size_t stride = (size_t)w * 3 + 5, size = stride * (size_t)h + 16, n = (size_t)w * h * 3;
    uint8_t *buf = malloc(size), *want = malloc(n), *got = malloc(n);
    assert_non_null(buf);
    assert_non_null(want);
    assert_non_null(got);
    memset(buf, 0xa5, size);
    Err err = {0};
    if (resize_rgb_region(src, full->w, full->h, x0, y0, w, h, f, buf, stride, &err) != 0)
        fail_msg("region %d x %d at (%d, %d) of %d x %d: %s", w, h, x0, y0, full->w, full->h,
                 err.msg);
    for (int y = 0; y < h; y++) {
        memcpy(want + (size_t)y * w * 3, full->px + ((size_t)(y0 + y) * full->w + x0) * 3,
               (size_t)w * 3);
        memcpy(got + (size_t)y * w * 3, buf + (size_t)y * stride, (size_t)w * 3);
        for (size_t b = (size_t)w * 3; b < stride; b++)
            if (buf[(size_t)y * stride + b] != 0xa5)
                fail_msg("region %d x %d at (%d, %d): row %d wrote spare byte %zu", w, h, x0, y0,
                         y, b - (size_t)w * 3);
    }
    for (size_t b = stride * (size_t)h; b < size; b++)
        if (buf[b] != 0xa5)
            fail_msg("region %d x %d at (%d, %d): wrote past the last row", w, h, x0, y0);
    assert_rgb_equal(got, want, n, w);
    free(buf);
    free(want);
    free(got);
}

static const struct {
    const char *what;
    int iw, ih, ow, oh;
} region_cases[] = {
    {"down", 37, 29, 23, 17},
    {"strong shrink", 61, 43, 9, 7},
    {"up 2x", 31, 23, 62, 46},
    {"up, odd", 13, 7, 29, 11},
    {"up and down", 40, 11, 17, 30},
    {"1 x 1 up", 1, 1, 5, 3},
    {"1 x 1 kept", 1, 1, 1, 1},
    {"one row", 9, 1, 4, 3},
    {"one column", 1, 9, 3, 4},
    {"to one pixel", 9, 7, 1, 1},
    {"horizontal only", 17, 9, 40, 9},
    {"vertical only", 17, 9, 17, 20},
    {"no change", 12, 8, 12, 8},
    {"wide, up 1.6x", 160, 24, 256, 38},
};

static void test_region_matches_full_resize(void **state)
{
    uint32_t rnd = 0x9e3779b9u;
    const ResizeFilter filters[2] = {RESIZE_BILINEAR, RESIZE_BICUBIC};
    for (size_t i = 0; i < sizeof region_cases / sizeof region_cases[0]; i++)
        for (int fi = 0; fi < 2; fi++) {
            int ow = region_cases[i].ow, oh = region_cases[i].oh;
            print_message("case: %s (%d x %d -> %d x %d), %s\n", region_cases[i].what,
                          region_cases[i].iw, region_cases[i].ih, ow, oh,
                          fi ? "bicubic" : "bilinear");
            RgbImage src = make_src(i & 1 ? SRC_CHECKER : SRC_RAMP, region_cases[i].iw,
                                    region_cases[i].ih), full = {0};
            Err err = {0};
            assert_int_equal(resize_rgb(&src, ow, oh, filters[fi], &full, &err), 0);
            check_region(&src, &full, filters[fi], 0, 0, ow, oh);
            check_region(&src, &full, filters[fi], ow - 1, oh - 1, 1, 1);
            check_region(&src, &full, filters[fi], 0, oh - 1, ow, 1);
            check_region(&src, &full, filters[fi], ow - 1, 0, 1, oh);
            for (int r = 0; r < 24; r++) {
                int w = 1 + (int)(next_rand(&rnd) % (uint32_t)ow);
                int h = 1 + (int)(next_rand(&rnd) % (uint32_t)oh);
                int x0 = (int)(next_rand(&rnd) % (uint32_t)(ow - w + 1));
                int y0 = (int)(next_rand(&rnd) % (uint32_t)(oh - h + 1));
                check_region(&src, &full, filters[fi], x0, y0, w, h);
            }
            rgb_image_free(&src);
            rgb_image_free(&full);
        }
}

static void test_region_refuses_bad_regions(void **state)
{
    RgbImage src = make_src(SRC_RAMP, 8, 6);
    static const struct {
        int x0, y0, w, h;
    } bad[] = {
        {0, 0, 0, 4},  {0, 0, 4, 0},  {0, 0, -1, 4},         {-1, 0, 4, 4},
        {0, -1, 4, 4}, {7, 0, 4, 4},  {0, 7, 4, 4},          {0, 0, 11, 10},
        {0x7fffffff, 0, 4, 4},        {1, 1, 0x7fffffff, 1},
    };
    uint8_t buf[16 * 16 * 3];
    memset(buf, 0xa5, sizeof buf);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Err err = {0};
        int rc = resize_rgb_region(&src, 10, 10, bad[i].x0, bad[i].y0, bad[i].w, bad[i].h,
                                   RESIZE_BILINEAR, buf, 16 * 3, &err);
        if (rc != -1)
            fail_msg("region %d x %d at (%d, %d) of 10 x 10: got %d, want -1", bad[i].w, bad[i].h,
                     bad[i].x0, bad[i].y0, rc);
        if (!strstr(err.msg, "region"))
            fail_msg("error \"%s\" does not name the region", err.msg);
    }
    Err err = {0};
    assert_int_equal(resize_rgb_region(&src, 10, 10, 0, 0, 4, 4, RESIZE_BILINEAR, buf, 11, &err),
                     -1);
    assert_int_equal(resize_rgb_region(&src, 0, 10, 0, 0, 1, 1, RESIZE_BILINEAR, buf, 48, &err),
                     -1);
    for (size_t b = 0; b < sizeof buf; b++)
        if (buf[b] != 0xa5)
            fail_msg("a refused region wrote byte %zu", b);
    rgb_image_free(&src);
}

/* ---- resize vs a plain reference --------------------------------------------------------------- */

/* Pillow's ImagingResample as plainly as it can be written (what resize.c was before its vector
 * kernels, checked against Pillow on 1200 random resizes): the cases above are too small to reach
 * the kernels, so this is their spec on random sizes. */
static void ref_coeffs(int in, int out, ResizeFilter f, int *bounds, int32_t *k, int ksize)
{
    double scale = (double)in / out, fs = scale < 1.0 ? 1.0 : scale, ss = 1.0 / fs;
    double support = (f == RESIZE_BICUBIC ? 2.0 : 1.0) * fs;
    for (int i = 0; i < out; i++) {
        double center = (i + 0.5) * scale, w[512], ww = 0.0;
        int first = (int)(center - support + 0.5), last = (int)(center + support + 0.5);
        first = first < 0 ? 0 : first;
        last = last > in ? in : last;
        assert_true(last - first <= 512);
        for (int x = 0; x < last - first; x++) {
            double t = fabs((x + first - center + 0.5) * ss);
            if (f == RESIZE_BILINEAR)
                w[x] = t < 1.0 ? 1.0 - t : 0.0;
            else
                w[x] = t < 1.0 ? (1.5 * t - 2.5) * t * t + 1
                               : t < 2.0 ? (((t - 5) * t + 8) * t - 4) * -0.5 : 0.0;
            ww += w[x];
        }
        for (int x = 0; x < ksize; x++) {
            double v = x < last - first ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[i * ksize + x] = (int32_t)(v < 0 ? -0.5 + v * (1 << 22) : 0.5 + v * (1 << 22));
        }
        bounds[2 * i] = first;
        bounds[2 * i + 1] = last - first;
    }
}

static uint8_t ref_clip(int64_t acc)
{
    return acc < 0 ? 0 : (acc >> 22) > 255 ? 255 : (uint8_t)(acc >> 22);
}

static void ref_resize(const RgbImage *src, int ow, int oh, ResizeFilter f, uint8_t *dst)
{
    int iw = src->w, ih = src->h;
    double sup = f == RESIZE_BICUBIC ? 2.0 : 1.0;
    int kw = (int)ceil(sup * (iw > ow ? (double)iw / ow : 1.0)) * 2 + 1;
    int kh = (int)ceil(sup * (ih > oh ? (double)ih / oh : 1.0)) * 2 + 1;
    int *bw = malloc(sizeof(int) * 2 * ow), *bh = malloc(sizeof(int) * 2 * oh);
    int32_t *cw = malloc(sizeof(int32_t) * ow * kw), *ch = malloc(sizeof(int32_t) * oh * kh);
    uint8_t *tmp = malloc((size_t)ow * ih * 3);
    ref_coeffs(iw, ow, f, bw, cw, kw);
    ref_coeffs(ih, oh, f, bh, ch, kh);
    /* Horizontal pass over every source row (or a copy when the width stays). */
    for (int y = 0; y < ih; y++)
        for (int i = 0; i < ow; i++)
            for (int c = 0; c < 3; c++) {
                const uint8_t *row = src->px + (size_t)y * iw * 3;
                int64_t acc = 1 << 21;
                for (int x = 0; x < bw[2 * i + 1]; x++)
                    acc += row[(bw[2 * i] + x) * 3 + c] * (int64_t)cw[i * kw + x];
                tmp[((size_t)y * ow + i) * 3 + c] = ow == iw ? row[i * 3 + c] : ref_clip(acc);
            }
    for (int i = 0; i < oh; i++)
        for (int b = 0; b < ow * 3; b++) {
            int64_t acc = 1 << 21;
            for (int y = 0; y < bh[2 * i + 1]; y++)
                acc += tmp[(size_t)(bh[2 * i] + y) * ow * 3 + b] * (int64_t)ch[i * kh + y];
            dst[(size_t)i * ow * 3 + b] = oh == ih ? tmp[(size_t)i * ow * 3 + b] : ref_clip(acc);
        }
    free(bw);
    free(bh);
    free(cw);
    free(ch);
    free(tmp);
}

static int rand_side(uint32_t *rnd)
{
    uint32_t m = next_rand(rnd) % 4;
    return 1 + (int)(next_rand(rnd) % (m == 0 ? 8u : m == 1 ? 48u : 260u));
}

static void test_resize_matches_reference(void **state)
{
    uint32_t rnd = 0x2545f491u;
    for (int t = 0; t < 160; t++) {
        int iw = rand_side(&rnd), ih = rand_side(&rnd), ow = rand_side(&rnd), oh = rand_side(&rnd);
        if (t < 4) { /* the train transform's sizes: 640 x 480 to about 0.8x and 1.6x */
            iw = 640;
            ih = 480;
            ow = t & 1 ? 1024 : 512;
            oh = t & 1 ? 768 : 384;
        } else if (t % 8 == 4) {
            ow = iw;
        } else if (t % 8 == 5) {
            oh = ih;
        } else if (t % 8 == 6) {
            ow = 2 * iw;
            oh = 2 * ih;
        }
        ResizeFilter f = t & 2 ? RESIZE_BICUBIC : RESIZE_BILINEAR;
        RgbImage src = make_src(t % 3 ? SRC_RAMP : SRC_CHECKER, iw, ih), dst = {0};
        if (t % 3 == 2) /* noise, which makes bicubic overshoot at every pixel */
            for (size_t b = 0; b < (size_t)iw * ih * 3; b++)
                src.px[b] = (uint8_t)(next_rand(&rnd) >> 24);
        uint8_t *want = malloc((size_t)ow * oh * 3);
        assert_non_null(want);
        ref_resize(&src, ow, oh, f, want);
        Err err = {0};
        if (resize_rgb(&src, ow, oh, f, &dst, &err) != 0)
            fail_msg("%d x %d -> %d x %d: %s", iw, ih, ow, oh, err.msg);
        if (memcmp(dst.px, want, (size_t)ow * oh * 3) != 0) {
            print_message("case %d: %d x %d -> %d x %d, %s\n", t, iw, ih, ow, oh,
                          f == RESIZE_BICUBIC ? "bicubic" : "bilinear");
            assert_rgb_equal(dst.px, want, (size_t)ow * oh * 3, ow);
        }
        free(want);
        rgb_image_free(&src);
        rgb_image_free(&dst);
    }
}

/* ---- letterbox (effdet ResizePad) --------------------------------------------------------------- */

static void check_letterbox(int iw, int ih, int th, int tw, ResizeFilter f, const uint8_t *want,
                            size_t want_len, float want_scale)
{
    RgbImage src = make_src(SRC_RAMP, iw, ih), dst = {0};
    Err err = {0};
    float scale = 0;
    if (letterbox_rgb(&src, th, tw, resize_imagenet_fill, f, &dst, &scale, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(dst.w, tw);
    assert_int_equal(dst.h, th);
    assert_int_equal(want_len, (size_t)tw * th * 3);
    assert_rgb_equal(dst.px, want, want_len, tw);
    if (scale != want_scale)
        fail_msg("img_scale: got %.9g, want %.9g", scale, want_scale);
    rgb_image_free(&src);
    rgb_image_free(&dst);
}

static void test_letterbox_pil_wide(void **state)
{
    /* s = min(8/7, 8/13): the image becomes 8 x 4 at the top, rows 4..7 are fill. */
    check_letterbox(13, 7, 8, 8, RESIZE_BILINEAR, pil_letterbox_13x7_to_8x8_bilinear,
                    sizeof pil_letterbox_13x7_to_8x8_bilinear, 1.625f);
}

static void test_letterbox_pil_tall(void **state)
{
    /* Non-square target (h 6, w 10): the image becomes 3 x 6 at the left. */
    check_letterbox(5, 9, 6, 10, RESIZE_BICUBIC, pil_letterbox_5x9_to_10x6_bicubic,
                    sizeof pil_letterbox_5x9_to_10x6_bicubic, 1.5f);
}

/* Python's int(49 * (512 / 49)) is 511, not 512: the last row stays fill colour. */
static void test_letterbox_truncation_like_python(void **state)
{
    RgbImage src = make_src(SRC_RAMP, 30, 49), dst = {0};
    Err err = {0};
    float scale = 0;
    if (letterbox_rgb(&src, 512, 512, resize_imagenet_fill, RESIZE_BILINEAR, &dst, &scale, &err))
        fail_msg("%s", err.msg);
    if (scale != 0x1.88p-4f)
        fail_msg("img_scale: got %a, want %a", scale, 0x1.88p-4f);
    const uint8_t *last_row = dst.px + (size_t)511 * 512 * 3;
    const uint8_t *row_510 = dst.px + (size_t)510 * 512 * 3;
    assert_memory_equal(last_row, resize_imagenet_fill, 3);
    assert_memory_not_equal(row_510, resize_imagenet_fill, 3);
    /* Column 313 is the first fill column (int(30 * s) = 313). */
    assert_memory_equal(dst.px + 313 * 3, resize_imagenet_fill, 3);
    assert_memory_not_equal(dst.px + 312 * 3, resize_imagenet_fill, 3);
    rgb_image_free(&src);
    rgb_image_free(&dst);
}

static void test_letterbox_degenerate(void **state)
{
    RgbImage src = make_src(SRC_RAMP, 1000, 1), dst = {0};
    Err err = {0};
    float scale = -1;
    assert_int_equal(letterbox_rgb(&src, 64, 64, resize_imagenet_fill, RESIZE_BILINEAR, &dst,
                                   &scale, &err), -1);
    if (!strstr(err.msg, "64 x 0"))
        fail_msg("error \"%s\" does not give the scaled size", err.msg);
    assert_true(scale == -1);
    rgb_image_free(&src);
    rgb_image_free(&dst);
}

/* ---- normalization ----------------------------------------------------------------------------- */

static void test_fill_from_mean(void **state)
{
    uint8_t fill[3];
    resize_fill_from_mean(resize_imagenet_mean, fill);
    assert_int_equal(fill[0], 124);
    assert_int_equal(fill[1], 116);
    assert_int_equal(fill[2], 104);
    assert_memory_equal(fill, resize_imagenet_fill, 3);
}

/* Expected values: Python float32 emulation of torch's x.float().sub_(m).div_(s) with
 * m = float32(x * 255 for x in mean), s likewise. Green's std 0.224 is where doing 255 * 0.224f in
 * float would already change the last bit. */
static const struct {
    uint8_t p;
    float v[3];
} norm_ref[] = {
    {0, {-0x1.0f177ap+1f, -0x1.04924ap+1f, -0x1.cdf012p+0f}},
    {1, {-0x1.0ce656p+1f, -0x1.02549ep+1f, -0x1.c979d4p+0f}},
    {116, {-0x1.0d2c8p-3f, -0x1.4140e6p-8f, 0x1.bd1dd6p-3f}},
    {124, {0x1.6cbd7ap-8f, 0x1.14cbaap-3f, 0x1.6d5696p-2f}},
    {200, {0x1.4e9a9ep+0f, 0x1.773738p+0f, 0x1.ae6fdcp+0f}},
    {255, {0x1.1fdc3ap+1f, 0x1.36db6ep+1f, 0x1.51eb86p+1f}},
};

static void test_normalize_exact_and_in_place(void **state)
{
    const int n = (int)(sizeof norm_ref / sizeof norm_ref[0]);
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(rgb_image_alloc(&img, n, 1, &err), 0);
    for (int i = 0; i < n; i++)
        memset(img.px + 3 * i, norm_ref[i].p, 3);
    /* A batch of 2 images of 1 x n: write image 1 and leave image 0 alone. */
    float batch[2][16][3];
    for (int i = 0; i < 16; i++)
        for (int c = 0; c < 3; c++)
            batch[0][i][c] = batch[1][i][c] = 42.0f;
    normalize_rgb_to_nhwc(&img, &batch[1][0][0], resize_imagenet_mean, resize_imagenet_std);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            if (batch[1][i][c] != norm_ref[i].v[c])
                fail_msg("p %d channel %d: got %a, want %a", norm_ref[i].p, c, batch[1][i][c],
                         norm_ref[i].v[c]);
            if (batch[0][i][c] != 42.0f)
                fail_msg("image 0 was written at %d/%d: %g", i, c, batch[0][i][c]);
        }
    if (batch[1][n][0] != 42.0f)
        fail_msg("wrote past the image: %g", batch[1][n][0]);
    rgb_image_free(&img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resize_matches_pil),
        cmocka_unit_test(test_same_size_copies_and_errors),
        cmocka_unit_test(test_region_matches_full_resize),
        cmocka_unit_test(test_region_refuses_bad_regions),
        cmocka_unit_test(test_resize_matches_reference),
        cmocka_unit_test(test_letterbox_pil_wide),
        cmocka_unit_test(test_letterbox_pil_tall),
        cmocka_unit_test(test_letterbox_truncation_like_python),
        cmocka_unit_test(test_letterbox_degenerate),
        cmocka_unit_test(test_fill_from_mean),
        cmocka_unit_test(test_normalize_exact_and_in_place),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
