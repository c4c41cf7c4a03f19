/* fuzz_jpeg.c: libFuzzer target for the JPEG path (loader/jpeg.c), the code that reads image files
 * a user's dataset holds.
 *
 * An input is two option bytes, then the file: byte 0 is the strict flag (bit 0) and min_w / 16
 * (bits 1..7), byte 1 is min_h / 8. The file is read three ways, into one reused image:
 * 1. jpeg_read_header_mem;
 * 2. jpeg_decode_mem at full size, not strict;
 * 3. jpeg_decode_mem with the option bytes' min_w, min_h and strict flag.
 * Decodes use max_pixels 1 << 20, as libjpeg-turbo's own decompress fuzzer caps images at 1 Mpx:
 * a progressive file may hold up to 500 scans (TJFLAG_LIMITSCANS) of a mostly empty image, and a
 * larger cap makes such inputs time out rather than find bugs.
 *
 * On success the image must have the header's size, scaled by the factor the options ask for
 * (recomputed here), and every pixel byte is read (ASan then checks the buffer's extent). On
 * failure the error is one line naming the file. Any crash, sanitizer report, leak or failed
 * ASSERT is a bug. Seeds: tests/fuzz/jpeg_seeds.c. Build and run with tests/fuzz/run.sh. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "loader/jpeg.h"
#include "shared/check.h"

#define FUZZ_NAME "fuzz.jpg"
#define FUZZ_MAX_PIXELS ((int64_t)1 << 20)

/* The scale jpeg.c must pick (its header comment): the smallest of 1/1, 1/2, 1/4, 1/8 whose
 * ceil(w / d) x ceil(h / d) keeps both minimums. */
static int fuzz_expected_denom(int w, int h, int min_w, int min_h)
{
    int best = 1;
    if (min_w <= 0 && min_h <= 0)
        return 1;
    for (int d = 2; d <= 8; d *= 2)
        if ((w + d - 1) / d >= min_w && (h + d - 1) / d >= min_h)
            best = d;
    return best;
}

/* Checks one decode's outcome against the header's size (hw x hh, 0 when the header failed). */
static void fuzz_check(int rc, const RgbImage *img, const Err *err, int hw, int hh, int denom)
{
    if (rc != 0) {
        ASSERT(rc == -1);
        ASSERT(err->msg[0] && !strchr(err->msg, '\n') && strstr(err->msg, FUZZ_NAME));
        ASSERT(img->px ? img->w > 0 && img->h > 0 : img->w == 0 && img->h == 0);
        return;
    }
    /* A decode that succeeds has a header that reads, and caps that agree. */
    ASSERT(hw > 0 && hh > 0 && (int64_t)hw * hh <= FUZZ_MAX_PIXELS);
    ASSERT(img->px && img->w == (hw + denom - 1) / denom && img->h == (hh + denom - 1) / denom);
    uint64_t sum = 0, n = (uint64_t)img->w * (uint64_t)img->h * 3;
    for (uint64_t i = 0; i < n; i++)
        sum += img->px[i];
    ASSERT(sum <= n * 255);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const int strict = data[0] & 1, min_w = (data[0] >> 1) * 16, min_h = data[1] * 8;
    const uint8_t *file = data + 2;
    const size_t len = size - 2;
    RgbImage img = {0};
    Err err;

    int hw = 0, hh = 0;
    if (jpeg_read_header_mem(file, len, FUZZ_NAME, &hw, &hh, &err) != 0) {
        ASSERT(hw == 0 && hh == 0);
        ASSERT(err.msg[0] && !strchr(err.msg, '\n') && strstr(err.msg, FUZZ_NAME));
    } else {
        ASSERT(hw > 0 && hh > 0 && (int64_t)hw * hh <= JPEG_MAX_PIXELS_DEFAULT);
    }

    JpegDecodeOptions full = {.max_pixels = FUZZ_MAX_PIXELS};
    int rc = jpeg_decode_mem(file, len, FUZZ_NAME, &full, &img, &err);
    fuzz_check(rc, &img, &err, hw, hh, 1);

    JpegDecodeOptions opt = {
        .min_w = min_w, .min_h = min_h, .strict = strict, .max_pixels = FUZZ_MAX_PIXELS};
    rc = jpeg_decode_mem(file, len, FUZZ_NAME, &opt, &img, &err);
    fuzz_check(rc, &img, &err, hw, hh, fuzz_expected_denom(hw, hh, min_w, min_h));

    rgb_image_free(&img);
    rgb_image_free(&img);
    ASSERT(img.px == NULL && img.w == 0 && img.h == 0);
    return 0;
}
