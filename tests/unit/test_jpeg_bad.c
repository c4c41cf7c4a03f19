/* test_jpeg_bad.c: loader/jpeg.c on bad input. Missing paths, directories, FIFOs and empty
 * files; non-JPEG bytes; files truncated anywhere (every prefix); forged absurd dimensions, refused
 * from the header before any allocation; corrupt tables and scan data, fatal or only warned about
 * (strict mode); problems hidden behind a benign first warning; random byte damage; and one image
 * reused through a run of failures. Every failure must be -1 with one line naming the file, and
 * leave the image empty or whole, so it can be freed or decoded into again. Good input is
 * tests/unit/test_jpeg.c; the helpers both use are in tests/support/jpeg_fixtures.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "tests/support/jpeg_fixtures.h"
#include "tests/support/rgb_assert.h"
#include "loader/jpeg.h"

/* ---- helpers ------------------------------------------------------------------------------------ */

/* After any decode, failed or not, an image is either empty or holds a whole w x h buffer, so the
 * caller can free it or decode into it again. */
static void assert_image_sane(const RgbImage *img)
{
    if (img->px ? (img->w <= 0 || img->h <= 0) : (img->w != 0 || img->h != 0))
        fail_msg("inconsistent image: px %p, %d x %d", (void *)img->px, img->w, img->h);
}

/* Reads every pixel byte: valgrind then reports any byte a decode left uninitialized. */
static void assert_pixels_defined(const RgbImage *img)
{
    uint64_t sum = 0, n = (uint64_t)img->w * (uint64_t)img->h * 3;
    for (uint64_t i = 0; i < n; i++)
        sum += img->px[i];
    if (sum > n * 255)
        fail_msg("pixel sum %llu of %llu bytes", (unsigned long long)sum, (unsigned long long)n);
}

/* Decodes expecting failure: -1, one line naming name and containing what, a sane image. */
static void expect_decode_error(const uint8_t *jpg, size_t len, const char *name,
                                const JpegDecodeOptions *opt, RgbImage *img, const char *what)
{
    Err err = {0};
    int rc = jpeg_decode_mem(jpg, len, name, opt, img, &err);
    if (rc != -1)
        fail_msg("%s: decode returned %d, want -1 with \"%s\"", name, rc, what);
    assert_err_line(&err, name);
    assert_msg_contains(&err, what);
    assert_image_sane(img);
}

static void write_bytes(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* ---- errors ------------------------------------------------------------------------------------- */

/* Paths that hold no JPEG: missing, a directory, an empty file, a PNG, a FIFO. */
static void test_bad_files(void **state)
{
    RgbImage img = {0};
    Err err = {0};
    assert_int_equal(jpeg_decode_file("/nonexistent/dir/none.jpg", NULL, &img, &err), -1);
    assert_err_line(&err, "/nonexistent/dir/none.jpg");
    assert_msg_contains(&err, "No such file");
    char dir[64], path[128];
    temp_path(dir, sizeof dir, path, sizeof path, "empty.jpg");
    assert_int_equal(jpeg_decode_file(dir, NULL, &img, &err), -1);
    assert_err_line(&err, dir);
    assert_msg_contains(&err, "is a directory");
    write_bytes(path, (const uint8_t *)"", 0);
    assert_int_equal(jpeg_decode_file(path, NULL, &img, &err), -1);
    assert_err_line(&err, path);
    assert_msg_contains(&err, "empty file");
    const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H'};
    write_bytes(path, png, sizeof png);
    assert_int_equal(jpeg_decode_file(path, NULL, &img, &err), -1);
    assert_err_line(&err, path);
    assert_msg_contains(&err, "not a JPEG");
    unlink(path);
    assert_int_equal(mkfifo(path, 0600), 0); /* refused, not waited on for a writer */
    assert_int_equal(jpeg_decode_file(path, NULL, &img, &err), -1);
    assert_err_line(&err, path);
    assert_msg_contains(&err, "not a regular file");
    assert_null(img.px);
    unlink(path);
    rmdir(dir);
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

/* A forged header is refused from the header alone: an image that already holds pixels keeps its
 * very buffer, so no allocation (nor the free that precedes one) happened. Without the max_pixels
 * check the decode would reallocate it for 60000 x 60000 (10.8 GB) before failing. */
static void test_absurd_dimensions(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(16, 16, &len);
    RgbImage img = {0};
    Err err = {0};
    JpegDecodeOptions tiny_cap = {.max_pixels = 100};
    expect_decode_error(jpg, len, "cap.jpg", &tiny_cap, &img, "16 x 16");
    if (jpeg_decode_mem(jpg, len, "small.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    uint8_t *keep = img.px;
    /* libjpeg itself refuses sides above 65500; 65500 x 2050 is just over the 1 << 27 cap. */
    const int sizes[][2] = {{60000, 60000}, {65500, 65500}, {65500, 2050}};
    for (int i = 0; i < 3; i++) {
        set_sof_size(jpg, len, sizes[i][0], sizes[i][1]);
        char want[64];
        snprintf(want, sizeof want, "%d x %d is out of range", sizes[i][0], sizes[i][1]);
        expect_decode_error(jpg, len, "huge.jpg", NULL, &img, want);
        assert_ptr_equal(img.px, keep);
        assert_int_equal(img.w, 16);
        assert_int_equal(img.h, 16);
    }
    /* The cap is on w * h as the header states it: equal passes (then the data runs out). */
    set_sof_size(jpg, len, 1000, 1000);
    JpegDecodeOptions cap = {.max_pixels = 999999};
    expect_decode_error(jpg, len, "over.jpg", &cap, &img, "1000 x 1000 is out of range");
    assert_ptr_equal(img.px, keep);
    cap.max_pixels = 1000000;
    expect_decode_error(jpg, len, "at.jpg", &cap, &img, "truncated");
    assert_int_equal(img.w, 1000);
    rgb_image_free(&img);
    free(jpg);
}

/* A header that passes the cap over data for a far smaller image: truncated, and the image holds
 * the header's size afterwards, whole and reusable. */
static void test_truncated_big_header(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(64, 48, &len);
    set_sof_size(jpg, len, 4000, 3000);
    RgbImage img = {0};
    Err err = {0};
    expect_decode_error(jpg, len, "big.jpg", NULL, &img, "big.jpg: truncated");
    JpegDecodeOptions strict = {.strict = 1, .min_w = 500};
    expect_decode_error(jpg, len, "big.jpg", &strict, &img, "big.jpg: truncated");
    assert_int_equal(img.w, 500);
    assert_int_equal(img.h, 375);
    set_sof_size(jpg, len, 64, 48);
    if (jpeg_decode_mem(jpg, len, "fixed.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(img.w, 64);
    assert_pixels_defined(&img);
    rgb_image_free(&img);
    free(jpg);
}

/* Damage that libjpeg calls fatal is an error in both modes; damaged scan data that libjpeg only
 * warns about decodes by default (as in Pillow) and fails in strict mode. */
static void test_corrupt_data(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(64, 48, &len);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    RgbImage img = {0};
    JpegDecodeOptions strict = {.strict = 1};
    memcpy(bad, jpg, len);
    bad[find_marker(bad, len, 0xC0) + 4] = 12; /* 12-bit samples */
    expect_decode_error(bad, len, "p12.jpg", NULL, &img,
                        "corrupt JPEG (Unsupported JPEG data precision 12)");
    memcpy(bad, jpg, len);
    memset(bad + find_marker(bad, len, 0xC4) + 5, 200, 16); /* Huffman code counts > 256 */
    expect_decode_error(bad, len, "dht.jpg", NULL, &img, "corrupt JPEG (Bogus Huffman");
    memcpy(bad, jpg, len);
    set_sof_size(bad, len, 64, 0);
    expect_decode_error(bad, len, "h0.jpg", NULL, &img, "corrupt JPEG");
    memcpy(bad, jpg, len);
    bad[find_marker(bad, len, 0xC0) + 9] = 0; /* no components */
    expect_decode_error(bad, len, "nc.jpg", NULL, &img, "corrupt JPEG");
    /* Scan damage that libjpeg only warns about: stuffed 0xFF bytes (0xFF00) make a run of 1 bits
     * longer than any Huffman code. */
    memcpy(bad, jpg, len);
    size_t sos = find_marker(bad, len, 0xDA), mid = sos + (len - sos) / 2;
    memcpy(bad + mid, "\xFF\x00\xFF\x00\xFF\x00", 6);
    Err err = {0};
    if (jpeg_decode_mem(bad, len, "scan.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(img.w, 64);
    assert_pixels_defined(&img);
    expect_decode_error(bad, len, "scan.jpg", &strict, &img,
                        "scan.jpg: corrupt JPEG (Corrupt JPEG data: bad Huffman code)");
    /* Scan data that stops early at a marker (here a cut file with EOI appended) counts as
     * truncated, though the file ends properly (see jpeg.c). */
    memcpy(bad, jpg, mid);
    memcpy(bad + mid, "\xFF\xD9", 2);
    expect_decode_error(bad, mid + 2, "cut.jpg", NULL, &img,
                        "cut.jpg: truncated JPEG (Corrupt JPEG data: premature end");
    free(bad);
    free(jpg);
    rgb_image_free(&img);
}

/* Problems behind a benign first warning: TurboJPEG reports only that warning, yet truncation and
 * later fatal errors must fail as they do on their own; trailing bytes after EOI are fine. */
static void test_problems_behind_a_warning(void **state)
{
    size_t len = 0, olen = 0;
    uint8_t *jpg = make_rgb_jpeg(64, 48, &len);
    uint8_t *odd = with_stray_bytes(jpg, len, &olen);
    RgbImage img = {0};
    Err err = {0};
    size_t sos = find_marker(odd, olen, 0xDA);
    expect_decode_error(odd, sos + (olen - sos) / 2, "cut.jpg", NULL, &img, "cut.jpg: truncated");
    expect_decode_error(odd, olen - 2, "noeoi.jpg", NULL, &img, "noeoi.jpg: truncated");
    uint8_t *tail = malloc(olen + 5);
    assert_non_null(tail);
    memcpy(tail, odd, olen);
    memcpy(tail + olen, "\xFF\x00zz\xFF", 5); /* bytes after EOI are never read */
    if (jpeg_decode_mem(tail, olen + 5, "tail.jpg", NULL, &img, &err) != 0)
        fail_msg("%s", err.msg);
    free(tail);
    free(odd);
    free(jpg);
    /* Progressive: a bogus Huffman table before a later scan is fatal. */
    uint8_t *px = malloc(64 * 48 * 3);
    assert_non_null(px);
    fill_smooth(px, 64, 48);
    jpg = tj_make(px, 64, 48, TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, &len);
    odd = with_stray_bytes(jpg, len, &olen);
    size_t later = find_marker(odd + sos + 4, olen - sos - 4, 0xC4) + sos + 4;
    memset(odd + later + 5, 200, 16);
    expect_decode_error(odd, olen, "late.jpg", NULL, &img,
                        "late.jpg: corrupt JPEG (Bogus Huffman");
    free(odd);
    free(jpg);
    free(px);
    rgb_image_free(&img);
}

/* Every proper prefix of a JPEG fails with one line naming it, in every colour form and behind a
 * benign warning, and leaves the image reusable. */
static void test_every_prefix_fails(void **state)
{
    enum { W = 24, H = 16 };
    uint8_t px[W * H * 4];
    for (int i = 0; i < W * H * 4; i++)
        px[i] = (uint8_t)(i * 5);
    const int pfs[] = {TJPF_RGB, TJPF_GRAY, TJPF_CMYK, TJPF_RGB};
    const int subsamps[] = {TJSAMP_420, TJSAMP_GRAY, TJSAMP_444, TJSAMP_420};
    RgbImage img = {0};
    Err err = {0};
    for (int k = 0; k < 5; k++) {
        size_t len = 0;
        int kind = k < 4 ? k : 0;
        uint8_t *jpg = tj_make(px, W, H, pfs[kind], subsamps[kind],
                               kind == 3 ? TJFLAG_PROGRESSIVE : 0, &len);
        if (k == 4) { /* the stray-byte form of the RGB file */
            size_t olen = 0;
            uint8_t *odd = with_stray_bytes(jpg, len, &olen);
            free(jpg);
            jpg = odd;
            len = olen;
        }
        for (size_t n = 0; n < len; n++) {
            JpegDecodeOptions opt = {.min_w = (int)(n % 3) * 4};
            int rc = jpeg_decode_mem(jpg, n, "prefix.jpg", &opt, &img, &err);
            if (rc != -1)
                fail_msg("form %d: prefix of %zu of %zu bytes decoded (rc %d)", k, n, len, rc);
            assert_err_line(&err, "prefix.jpg");
            assert_image_sane(&img);
        }
        if (jpeg_decode_mem(jpg, len, "whole.jpg", NULL, &img, &err) != 0)
            fail_msg("form %d: %s", k, err.msg);
        assert_pixels_defined(&img);
        free(jpg);
    }
    rgb_image_free(&img);
}

/* Random byte damage (a small deterministic fuzz): every outcome is a sane image with defined
 * pixels or one line naming the file. */
static void test_random_damage(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(32, 24, &len);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    RgbImage img = {0};
    Err err = {0};
    uint32_t rng = 12345;
    int decoded = 0;
    for (int iter = 0; iter < 400; iter++) {
        memcpy(bad, jpg, len);
        for (int k = 0; k < 1 + iter % 4; k++) {
            rng = rng * 1664525u + 1013904223u;
            bad[(rng >> 8) % len] = (uint8_t)(rng >> 24);
        }
        JpegDecodeOptions opt = {.strict = iter & 1, .min_w = iter % 5 * 3, .max_pixels = 1 << 20};
        if (jpeg_decode_mem(bad, len, "dmg.jpg", &opt, &img, &err) == 0) {
            assert_image_sane(&img);
            assert_true((int64_t)img.w * img.h <= (int64_t)1 << 20);
            assert_pixels_defined(&img);
            decoded++;
        } else {
            assert_err_line(&err, "dmg.jpg");
            assert_image_sane(&img);
        }
    }
    assert_true(decoded > 0); /* damage in the scan data mostly still decodes */
    free(bad);
    free(jpg);
    rgb_image_free(&img);
}

/* One image through a run of failures of every kind: each leaves it freeable and reusable. */
static void test_errors_leave_image_reusable(void **state)
{
    size_t len = 0;
    uint8_t *jpg = make_rgb_jpeg(40, 30, &len);
    uint8_t *huge = malloc(len), *big = malloc(len);
    assert_non_null(huge);
    assert_non_null(big);
    memcpy(huge, jpg, len);
    set_sof_size(huge, len, 60000, 60000);
    memcpy(big, jpg, len);
    set_sof_size(big, len, 400, 300);
    RgbImage ref = {0}, img = {0};
    Err err = {0};
    if (jpeg_decode_mem(jpg, len, "ref.jpg", NULL, &ref, &err) != 0)
        fail_msg("%s", err.msg);
    const struct { const uint8_t *buf; size_t len; } bad[] = {
        {jpg, 0}, {(const uint8_t *)"\x89PNG\r\n\x1a\n", 8}, {jpg, len / 2}, {huge, len},
        {big, len}, {jpg, 100},
    };
    for (int i = 0; i < 6; i++) {
        for (int before = 0; before < 2; before++) { /* into an empty, then a full image */
            if (before && jpeg_decode_mem(jpg, len, "ok.jpg", NULL, &img, &err) != 0)
                fail_msg("%s", err.msg);
            expect_decode_error(bad[i].buf, bad[i].len, "bad.jpg", NULL, &img, "bad.jpg");
            if (jpeg_decode_mem(jpg, len, "again.jpg", NULL, &img, &err) != 0)
                fail_msg("case %d: %s", i, err.msg);
            assert_rgb_equal(img.px, ref.px, 40 * 30 * 3, 40);
            rgb_image_free(&img);
            rgb_image_free(&img);
        }
    }
    rgb_image_free(&ref);
    free(huge);
    free(big);
    free(jpg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_not_a_jpeg),
        cmocka_unit_test(test_truncated_file),
        cmocka_unit_test(test_benign_warning_policy),
        cmocka_unit_test(test_absurd_dimensions),
        cmocka_unit_test(test_truncated_big_header),
        cmocka_unit_test(test_corrupt_data),
        cmocka_unit_test(test_problems_behind_a_warning),
        cmocka_unit_test(test_every_prefix_fails),
        cmocka_unit_test(test_random_damage),
        cmocka_unit_test(test_errors_leave_image_reusable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
