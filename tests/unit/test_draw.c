/* test_draw.c: launch/draw.c (linked into the effdet command only, so included here whole). */
#include "launch/draw.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

static const uint8_t gray[3] = {50, 50, 50};

static RgbImage make_gray(int w, int h)
{
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(rgb_image_alloc(&img, w, h, &err), 0);
    for (int i = 0; i < w * h; i++)
        memcpy(img.px + 3 * i, gray, 3);
    return img;
}

static const uint8_t *pixel(const RgbImage *img, int x, int y)
{
    return img->px + ((size_t)y * img->w + x) * 3;
}

static void assert_pixel(const RgbImage *img, int x, int y, const uint8_t want[3])
{
    const uint8_t *p = pixel(img, x, y);
    if (memcmp(p, want, 3) != 0)
        fail_msg("pixel (%d, %d): got (%d, %d, %d), want (%d, %d, %d)", x, y, p[0], p[1], p[2],
                 want[0], want[1], want[2]);
}

/* Pixels in [x0, x1) x [y0, y1) equal to c. */
static int count_color(const RgbImage *img, int x0, int y0, int x1, int y1, const uint8_t c[3])
{
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++)
            n += memcmp(pixel(img, x, y), c, 3) == 0;
    return n;
}

static void test_outline_edges_and_inside(void **state)
{
    RgbImage img = make_gray(200, 150);
    uint8_t color[3];
    draw_class_color(3, color);
    draw_detection(&img, 40.f, 60.f, 120.f, 110.f, 3, 0.87f);
    /* The outline is the outer 2 pixels of [40, 120) x [60, 110). */
    assert_pixel(&img, 80, 60, color);
    assert_pixel(&img, 80, 61, color);
    assert_pixel(&img, 80, 109, color);
    assert_pixel(&img, 80, 108, color);
    assert_pixel(&img, 40, 85, color);
    assert_pixel(&img, 41, 85, color);
    assert_pixel(&img, 119, 85, color);
    assert_pixel(&img, 118, 85, color);
    /* Inside, and just outside, nothing changes. */
    assert_int_equal(count_color(&img, 42, 62, 118, 108, gray), 76 * 46);
    assert_pixel(&img, 39, 85, gray);
    assert_pixel(&img, 120, 85, gray);
    assert_pixel(&img, 80, 110, gray);
    /* The label sits above the box: 9 rows of background with some text pixels in it. */
    assert_pixel(&img, 40, 51, color);
    assert_pixel(&img, 40, 50, gray);
    int text_w = (int)strlen("3 0.87") * 6 + 1;
    int bg = count_color(&img, 40, 51, 40 + text_w, 60, color);
    assert_true(bg > 0);
    assert_true(bg < text_w * 9);
    assert_pixel(&img, 40 + text_w, 55, gray);
    rgb_image_free(&img);
}

static void test_label_inside_when_no_room(void **state)
{
    RgbImage img = make_gray(100, 80);
    uint8_t color[3];
    draw_class_color(1, color);
    draw_detection(&img, 10.f, 3.f, 90.f, 70.f, 1, 0.5f);
    /* No room above y = 3: rows 0..2 stay gray, the label fills rows 3..11 inside the box. */
    assert_int_equal(count_color(&img, 0, 0, 100, 3, gray), 300);
    assert_pixel(&img, 12, 11, color);
    assert_true(count_color(&img, 12, 4, 40, 12, color) < 28 * 8);
    rgb_image_free(&img);
}

/* '0' is rows 0x0E, 0x11, ...: on a white box the first glyph row shows dots at columns 1..3. */
static void test_label_glyph_dots(void **state)
{
    RgbImage img = make_gray(50, 20);
    const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0};
    draw_label(&img, 5, 4, "0", white);
    int gx = 5 + 1, gy = 4 + 1; /* one dot of margin */
    assert_pixel(&img, gx + 0, gy, white);
    assert_pixel(&img, gx + 1, gy, black);
    assert_pixel(&img, gx + 3, gy, black);
    assert_pixel(&img, gx + 4, gy, white);
    assert_pixel(&img, gx + 0, gy + 1, black);
    assert_pixel(&img, gx + 2, gy + 1, white);
    assert_pixel(&img, 5 + 7, 4, gray); /* the box is 1 + 6 dots wide */
    assert_pixel(&img, 5, 4 + 9, gray); /* and 9 dots tall */
    /* Unknown characters and letters of both cases do not crash; 'A' and 'a' are one glyph. */
    draw_label(&img, 5, 4, "aA?~", white);
    assert_memory_equal(pixel(&img, 7, 5), pixel(&img, 13, 5), 3);
    rgb_image_free(&img);
}

static void test_clipping_and_bad_boxes(void **state)
{
    RgbImage img = make_gray(40, 30);
    uint8_t color[3];
    draw_class_color(7, color);
    /* Partly outside: the right and bottom edges that are inside get drawn. */
    draw_detection(&img, -10.f, -10.f, 20.f, 15.f, 7, 0.9f);
    assert_pixel(&img, 19, 5, color);
    assert_pixel(&img, 18, 5, color);
    assert_pixel(&img, 5, 14, color);
    assert_pixel(&img, 17, 12, gray);
    /* Its label moved onto the image at (0, 0). */
    assert_pixel(&img, 0, 0, color);
    /* Wholly outside, huge, inverted, not finite, degenerate, at the far corner: no crash. */
    RgbImage before = make_gray(40, 30);
    memcpy(before.px, img.px, 40 * 30 * 3);
    draw_detection(&img, 100.f, 100.f, 200.f, 200.f, 7, 0.9f);
    draw_detection(&img, -1e30f, -1e30f, -5.f, -5.f, 7, 0.9f);
    draw_detection(&img, 30.f, 20.f, 10.f, 5.f, 7, 0.9f);
    draw_detection(&img, NAN, 1.f, 5.f, 5.f, 7, 0.9f);
    draw_detection(&img, 1.f, 1.f, INFINITY, 5.f, 7, 0.9f);
    assert_memory_equal(img.px, before.px, 40 * 30 * 3);
    draw_detection(&img, -1e30f, -1e30f, 1e30f, 1e30f, -5, 1e9f);
    draw_detection(&img, 39.5f, 29.5f, 39.6f, 29.6f, 123456, -1.f);
    draw_detection(&img, 10.f, 10.f, 10.f, 10.f, 0, 0.f);
    draw_label(&img, 38, 28, "a very long label that runs off the image", color);
    draw_label(&img, -1000000, -1000000, "x", color);
    draw_label(&img, 1000000, 5, "x", color);
    RgbImage tiny = make_gray(1, 1);
    draw_detection(&tiny, 0.f, 0.f, 1.f, 1.f, 2, 0.5f);
    rgb_image_free(&tiny);
    rgb_image_free(&before);
    rgb_image_free(&img);
}

static void test_class_colors_and_scale(void **state)
{
    uint8_t a[3], b[3], again[3];
    for (int c = 0; c < 90; c++) {
        draw_class_color(c, a);
        draw_class_color(c + 1, b);
        draw_class_color(c, again);
        assert_memory_equal(a, again, 3);
        if (memcmp(a, b, 3) == 0)
            fail_msg("classes %d and %d share (%d, %d, %d)", c, c + 1, a[0], a[1], a[2]);
    }
    /* On a 1300 px image the font is 3 px per dot, so the label is 27 rows tall. */
    RgbImage big = make_gray(1300, 1300);
    uint8_t color[3];
    draw_class_color(5, color);
    draw_detection(&big, 100.f, 200.f, 400.f, 500.f, 5, 0.5f);
    assert_pixel(&big, 100, 200 - 27, color);
    assert_pixel(&big, 100, 200 - 28, gray);
    rgb_image_free(&big);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outline_edges_and_inside),
        cmocka_unit_test(test_label_inside_when_no_room),
        cmocka_unit_test(test_label_glyph_dots),
        cmocka_unit_test(test_clipping_and_bad_boxes),
        cmocka_unit_test(test_class_colors_and_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
