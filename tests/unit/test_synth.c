/* test_synth.c: loader/synth.c, the synthetic dataset: what it writes parses as COCO with the
 * promised layout, the same seed gives the same bytes, every box is the exact tight box of the
 * pixels drawn for its object, grayscale images are real 1-channel JPEGs, the class scheme and
 * crowd regions, and bad configs and unwritable directories are one-line errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "tests/support/tmpdir.h"
#include "loader/jpeg.h"
#include "loader/synth.h"
#include "shared/coco.h"

typedef TmpDir Fixture;

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) fail_msg("cannot read %s", path);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static SynthConfig config(int n, uint64_t seed)
{
    SynthConfig c;
    synth_config_default(&c);
    c.n_images = n, c.seed = seed;
    return c;
}

static void write_dataset(const char *dir, const SynthConfig *c)
{
    Err err = {{0}};
    if (synth_write_dataset(dir, c, NULL, &err) != 0) fail_msg("synth_write_dataset: %s", err.msg);
}

/* The written annotations parse, with 12-digit names, sizes that match the JPEGs, exact COCO
 * fields and the non-contiguous category ids 1, 3, 7. */
static void test_layout_parses(void **state)
{
    Fixture *f = *state;
    SynthConfig c = config(12, 3);
    write_dataset(f->dir, &c);
    char path[256];
    snprintf(path, sizeof path, "%s/annotations.json", f->dir);
    CocoDataset ds;
    Err err = {{0}};
    if (coco_dataset_load(&ds, path, &err) != 0) fail_msg("coco: %s", err.msg);
    assert_int_equal(ds.n_images, 12);
    assert_int_equal(ds.n_categories, 3);
    const int64_t want_ids[3] = {1, 3, 7};
    for (int k = 0; k < 3; k++) assert_int_equal(ds.categories[k].id, want_ids[k]);
    assert_string_equal(ds.categories[0].name, "red_rectangle");
    assert_string_equal(ds.categories[1].name, "green_disk");
    assert_string_equal(ds.categories[2].name, "blue_triangle");
    assert_string_equal(ds.categories[2].supercategory, "triangle");
    assert_true(ds.n_annotations >= 12);
    for (size_t i = 0; i < ds.n_images; i++) {
        char want[32];
        snprintf(want, sizeof want, "%012zu.jpg", i + 1);
        assert_int_equal(ds.images[i].id, (int64_t)i + 1);
        assert_string_equal(ds.images[i].file_name, want);
        snprintf(path, sizeof path, "%s/images/%s", f->dir, want);
        RgbImage img = {0};
        if (jpeg_decode_file(path, NULL, &img, &err) != 0) fail_msg("decode: %s", err.msg);
        assert_int_equal(img.w, ds.images[i].width);
        assert_int_equal(img.h, ds.images[i].height);
        rgb_image_free(&img);
    }
    for (size_t j = 0; j < ds.n_annotations; j++) {
        const CocoAnnotation *a = &ds.annotations[j];
        const CocoImage *im = &ds.images[coco_dataset_image_index(&ds, a->image_id)];
        assert_int_equal(a->id, (int64_t)j + 1);
        assert_true(a->bbox[0] >= 0 && a->bbox[1] >= 0 && a->bbox[2] >= 1 && a->bbox[3] >= 1);
        assert_true(a->bbox[0] + a->bbox[2] <= im->width);
        assert_true(a->bbox[1] + a->bbox[3] <= im->height);
        if (!a->iscrowd && a->area != a->bbox[2] * a->bbox[3])
            fail_msg("annotation %zu: area %g, w * h %g", j, a->area, a->bbox[2] * a->bbox[3]);
    }
    coco_dataset_free(&ds);
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    uint8_t *x = read_all(a, &na), *y = read_all(b, &nb);
    if (na != nb || memcmp(x, y, na) != 0) fail_msg("%s (%zu bytes) != %s (%zu bytes)", a, na, b, nb);
    free(x);
    free(y);
}

/* The same config twice: byte-identical files. Another seed: different annotations. */
static void test_deterministic(void **state)
{
    Fixture *f = *state;
    char d[3][128], a[256], b[256];
    SynthConfig c = config(8, 42);
    for (int k = 0; k < 3; k++) {
        snprintf(d[k], sizeof d[k], "%s/run%d", f->dir, k);
        c.seed = k < 2 ? 42 : 43;
        write_dataset(d[k], &c);
    }
    for (int i = 1; i <= 8; i++) {
        snprintf(a, sizeof a, "%s/images/%012d.jpg", d[0], i);
        snprintf(b, sizeof b, "%s/images/%012d.jpg", d[1], i);
        assert_same_file(a, b);
    }
    snprintf(a, sizeof a, "%s/annotations.json", d[0]);
    snprintf(b, sizeof b, "%s/annotations.json", d[1]);
    assert_same_file(a, b);
    size_t na, nc;
    uint8_t *x = read_all(a, &na);
    snprintf(b, sizeof b, "%s/annotations.json", d[2]);
    uint8_t *z = read_all(b, &nc);
    assert_false(na == nc && memcmp(x, z, na) == 0);
    free(x);
    free(z);
}

/* Rendering one image alone gives what rendering it after others gives (per-image streams). */
static void test_render_independent(void **state)
{
    SynthConfig c = config(10, 7);
    SynthImage a = {0}, b = {0};
    Err err = {{0}};
    assert_int_equal(synth_render(&c, 5, &a, &err), 0);
    for (int i = 0; i < 10; i++) assert_int_equal(synth_render(&c, i, &b, &err), 0);
    assert_int_equal(synth_render(&c, 5, &b, &err), 0);
    assert_int_equal(a.rgb.w, b.rgb.w);
    assert_int_equal(a.rgb.h, b.rgb.h);
    assert_memory_equal(a.rgb.px, b.rgb.px, (size_t)a.rgb.w * a.rgb.h * 3);
    assert_int_equal(a.n_objects, b.n_objects);
    synth_image_free(&a);
    synth_image_free(&b);
}

/* Every object's box is the tight box of its drawn pixels: none outside, one on each border line,
 * and on colour images the object's border pixel differs from the background just outside. */
static void test_boxes_exact(void **state)
{
    SynthConfig c = config(60, 11);
    SynthImage im = {0};
    Err err = {{0}};
    int checked_colour = 0;
    for (int i = 0; i < c.n_images; i++) {
        assert_int_equal(synth_render(&c, i, &im, &err), 0);
        assert_true(im.n_objects >= 1 && im.n_objects <= SYNTH_MAX_OBJECTS);
        int w = im.rgb.w;
        for (int k = 0; k < im.n_objects; k++) {
            const int *bb = im.obj[k].bbox;
            int x0 = bb[0], y0 = bb[1], x1 = bb[0] + bb[2] - 1, y1 = bb[1] + bb[3] - 1;
            int edges[4] = {0}; /* top, bottom, left, right */
            int64_t count = 0;
            for (int y = 0; y < im.rgb.h; y++)
                for (int x = 0; x < w; x++) {
                    if (im.mask[(size_t)y * w + x] != k + 1) continue;
                    if (x < x0 || x > x1 || y < y0 || y > y1)
                        fail_msg("image %d object %d: pixel (%d, %d) outside box [%d, %d, %d, %d]",
                                 i, k, x, y, bb[0], bb[1], bb[2], bb[3]);
                    edges[0] |= y == y0, edges[1] |= y == y1, edges[2] |= x == x0,
                        edges[3] |= x == x1;
                    count++;
                }
            for (int e = 0; e < 4; e++)
                if (!edges[e])
                    fail_msg("image %d object %d: box [%d, %d, %d, %d] border %d has no drawn pixel",
                             i, k, bb[0], bb[1], bb[2], bb[3], e);
            if (im.obj[k].iscrowd) assert_int_equal(im.obj[k].area, count);
            /* the leftmost drawn pixel of the top row against the background pixel above it */
            if (im.gray || y0 == 0) continue;
            int x = x0;
            while (im.mask[(size_t)y0 * w + x] != k + 1) x++;
            const uint8_t *in = im.rgb.px + 3 * ((size_t)y0 * w + x), *out = in - 3 * (size_t)w;
            assert_int_equal(im.mask[(size_t)(y0 - 1) * w + x], 0);
            int diff = abs(in[0] - out[0]) + abs(in[1] - out[1]) + abs(in[2] - out[2]);
            if (diff < 20)
                fail_msg("image %d object %d: border pixel (%d,%d,%d) vs background (%d,%d,%d)",
                         i, k, in[0], in[1], in[2], out[0], out[1], out[2]);
            checked_colour++;
        }
    }
    assert_true(checked_colour > 50);
    synth_image_free(&im);
}

/* About 15% of images are 1-channel JPEGs; they decode to R = G = B. */
static void test_grayscale(void **state)
{
    Fixture *f = *state;
    SynthConfig c = config(60, 5);
    write_dataset(f->dir, &c);
    tjhandle tj = tjInitDecompress();
    int n_gray = 0;
    SynthImage im = {0};
    Err err = {{0}};
    for (int i = 0; i < c.n_images; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/images/%012d.jpg", f->dir, i + 1);
        size_t len;
        uint8_t *buf = read_all(path, &len);
        int w, h, sub, cs;
        assert_int_equal(tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &sub, &cs), 0);
        free(buf);
        assert_int_equal(synth_render(&c, i, &im, &err), 0);
        if (im.gray != (cs == TJCS_GRAY))
            fail_msg("image %d: rendered gray %d, JPEG colourspace %d", i + 1, im.gray, cs);
        if (!im.gray) continue;
        n_gray++;
        RgbImage rgb = {0};
        if (jpeg_decode_file(path, NULL, &rgb, &err) != 0) fail_msg("decode: %s", err.msg);
        for (size_t p = 0; p < (size_t)rgb.w * rgb.h; p++)
            if (rgb.px[3 * p] != rgb.px[3 * p + 1] || rgb.px[3 * p] != rgb.px[3 * p + 2])
                fail_msg("gray image %d pixel %zu is not gray", i + 1, p);
        rgb_image_free(&rgb);
    }
    tjDestroy(tj);
    synth_image_free(&im);
    if (n_gray < 3 || n_gray > 20) fail_msg("%d gray images of 60, want about 9", n_gray);
}

/* Crowd regions: about 5% of annotations, area = pixels drawn <= w * h. */
static void test_crowd(void **state)
{
    SynthConfig c = config(300, 9);
    SynthImage im = {0};
    Err err = {{0}};
    int n = 0, crowd = 0;
    for (int i = 0; i < c.n_images; i++) {
        assert_int_equal(synth_render(&c, i, &im, &err), 0);
        for (int k = 0; k < im.n_objects; k++) {
            const SynthObject *o = &im.obj[k];
            n++;
            if (!o->iscrowd) continue;
            crowd++;
            assert_true(o->area >= 1 && o->area <= (int64_t)o->bbox[2] * o->bbox[3]);
        }
    }
    if (crowd * 100 < n * 2 || crowd * 100 > n * 10)
        fail_msg("%d crowd annotations of %d, want about 5%%", crowd, n);
    synth_image_free(&im);
}

/* Every (shape, colour) pair is used once; the first three classes differ in both. */
static void test_class_scheme(void **state)
{
    char names[SYNTH_MAX_CLASSES][32];
    for (int a = 0; a < SYNTH_MAX_CLASSES; a++) {
        synth_class_name(a, names[a], sizeof names[a]);
        if (a > 0) assert_true(synth_category_id(a) > synth_category_id(a - 1));
        for (int b = 0; b < a; b++)
            if (!strcmp(names[a], names[b])) fail_msg("classes %d and %d are both %s", a, b, names[a]);
    }
    assert_int_not_equal(synth_class_shape(0), synth_class_shape(1));
    assert_int_not_equal(synth_class_shape(1), synth_class_shape(2));
    assert_int_not_equal(synth_category_id(1), 2); /* not contiguous */
}

/* Sizes vary by up to +-25% unless fixed. */
static void test_sizes(void **state)
{
    SynthConfig c = config(40, 2);
    SynthImage im = {0};
    Err err = {{0}};
    int distinct = 0, prev_w = 0;
    for (int i = 0; i < c.n_images; i++) {
        assert_int_equal(synth_render(&c, i, &im, &err), 0);
        if (im.rgb.w < 240 || im.rgb.w > 400 || im.rgb.h < 180 || im.rgb.h > 300)
            fail_msg("image %d is %dx%d, want within 25%% of 320x240", i, im.rgb.w, im.rgb.h);
        distinct += im.rgb.w != prev_w, prev_w = im.rgb.w;
    }
    assert_true(distinct > 20);
    c.fixed_size = 1, c.width = 100, c.height = 64;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(synth_render(&c, i, &im, &err), 0);
        assert_int_equal(im.rgb.w, 100);
        assert_int_equal(im.rgb.h, 64);
    }
    synth_image_free(&im);
}

static void expect_error(int rc, const Err *err, const char *want)
{
    if (rc == 0) fail_msg("accepted (wanted an error containing \"%s\")", want);
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" does not contain \"%s\"", err->msg, want);
    if (strchr(err->msg, '\n')) fail_msg("error \"%s\" is more than one line", err->msg);
}

static void test_errors(void **state)
{
    Fixture *f = *state;
    Err err = {{0}};
    SynthConfig c = config(0, 1);
    expect_error(synth_config_check(&c, &err), &err, "image count 0");
    c = config(1, 1), c.n_classes = 19;
    expect_error(synth_config_check(&c, &err), &err, "19 classes");
    c = config(1, 1), c.width = 8;
    expect_error(synth_config_check(&c, &err), &err, "size 8x240");
    c = config(2, 1);
    char path[256];
    snprintf(path, sizeof path, "%s/no/such/parent", f->dir);
    expect_error(synth_write_dataset(path, &c, NULL, &err), &err, path);
    /* a directory where the images folder should be a file's name */
    snprintf(path, sizeof path, "%s/file", f->dir);
    FILE *fp = fopen(path, "w");
    fclose(fp);
    expect_error(synth_write_dataset(path, &c, NULL, &err), &err, "not a directory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_layout_parses, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_deterministic, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test(test_render_independent),
        cmocka_unit_test(test_boxes_exact),
        cmocka_unit_test_setup_teardown(test_grayscale, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test(test_crowd),
        cmocka_unit_test(test_class_scheme),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test_setup_teardown(test_errors, tmpdir_setup, tmpdir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
