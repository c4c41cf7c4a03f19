/* resize.c: Pillow's ImagingResample for 8-bit RGB, effdet's ResizePad, and input normalization.
 *
 * Resampling follows Pillow's src/libImaging/Resample.c (8-bit path; tested byte for byte against
 * Pillow 9.4.0), because effdet's numbers come from PIL and one level in a pixel can move mAP:
 *   - Separable: a horizontal pass over only the source rows the vertical pass will read, rounded
 *     to uint8, then a vertical pass, rounded again. A pass whose size does not change is skipped
 *     (Pillow copies); both skipped is a plain copy.
 *   - Per output index i: scale = in / out, filterscale = max(scale, 1) (antialiasing when
 *     shrinking), support = filter support * filterscale, center = (i + 0.5) * scale, taps from
 *     max((int)(center - support + 0.5), 0) to min((int)(center + support + 0.5), in), weights
 *     filter((j - center + 0.5) / filterscale) normalized to sum 1 in double.
 *   - Weights become fixed point with PRECISION_BITS = 32 - 8 - 2 = 22 (rounded half away from
 *     zero); the accumulator starts at 1 << 21 (round half up) and the result is acc >> 22 clamped
 *     to 0..255 (a negative accumulator gives 0, as Pillow's clip table does).
 * Pillow's x86-64 wheels target baseline x86-64, which has no fused multiply-add; GNU C contracts
 * a*b+c into fma under -march=native, which could move a weight by one unit in the last place, so
 * this file turns contraction off (no case has been seen to differ either way; this keeps it so).
 *
 * Images are RgbImage (h, w, 3). The internal resampler writes through a row stride, so the
 * letterbox resizes straight into its canvas without a second image. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "augment/resize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

const double resize_imagenet_mean[3] = {0.485, 0.456, 0.406};
const double resize_imagenet_std[3] = {0.229, 0.224, 0.225};
const uint8_t resize_imagenet_fill[3] = {124, 116, 104};

/* One axis of the resampling: for each output index, the first source index and tap count, and
 * ksize fixed-point weights (unused tail zero). */
typedef struct AxisPlan {
    int in_size, out_size, ksize;
    int *bounds;  /* (out_size, 2): first, count */
    int32_t *k;   /* (out_size, ksize) */
} AxisPlan;

/* ---- filters (Pillow's definitions) ------------------------------------------------------------ */

static double filter_support(ResizeFilter f)
{
    return f == RESIZE_BICUBIC ? 2.0 : 1.0;
}

static double filter_eval(ResizeFilter f, double x)
{
    if (x < 0.0)
        x = -x;
    if (f == RESIZE_BILINEAR)
        return x < 1.0 ? 1.0 - x : 0.0;
    const double a = -0.5; /* Keys' cubic convolution, the value Pillow uses */
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* ---- coefficient plans -------------------------------------------------------------------------- */

static double axis_filterscale(int in, int out)
{
    double scale = (double)in / out;
    return scale < 1.0 ? 1.0 : scale;
}

static int axis_ksize(ResizeFilter f, int in, int out)
{
    return (int)ceil(filter_support(f) * axis_filterscale(in, out)) * 2 + 1;
}

/* Pillow's normalize_coeffs_8bpc: round half away from zero into 22 fractional bits. */
static int32_t weight_to_fixed(double w)
{
    return w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                 : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
}

/* Fills p->bounds and p->k (precompute_coeffs). The weights are evaluated twice, once for their
 * sum and once to store, rather than kept in a double array: the values are identical. */
static void axis_plan_fill(AxisPlan *p, ResizeFilter f)
{
    double scale = (double)p->in_size / p->out_size;
    double filterscale = axis_filterscale(p->in_size, p->out_size);
    double support = filter_support(f) * filterscale;
    double ss = 1.0 / filterscale;
    for (int i = 0; i < p->out_size; i++) {
        double center = (i + 0.5) * scale;
        int first = (int)(center - support + 0.5);
        int last = (int)(center + support + 0.5);
        if (first < 0)
            first = 0;
        if (last > p->in_size)
            last = p->in_size;
        int n = last - first;
        double ww = 0.0;
        for (int x = 0; x < n; x++)
            ww += filter_eval(f, (x + first - center + 0.5) * ss);
        int32_t *k = p->k + (size_t)i * p->ksize;
        for (int x = 0; x < p->ksize; x++) {
            double w = x < n ? filter_eval(f, (x + first - center + 0.5) * ss) : 0.0;
            k[x] = weight_to_fixed(ww != 0.0 ? w / ww : w);
        }
        p->bounds[2 * i] = first;
        p->bounds[2 * i + 1] = n;
    }
}

/* ---- the two passes ----------------------------------------------------------------------------- */

static uint8_t clip8(int32_t acc)
{
    if (acc < 0)
        return 0;
    acc >>= PRECISION_BITS;
    return acc > 255 ? 255 : (uint8_t)acc;
}

/* rows rows of src (stride bytes apart) resampled along x into dst (dst_stride apart). */
static void pass_horizontal(const uint8_t *src, size_t src_stride, uint8_t *dst,
                            size_t dst_stride, int rows, const AxisPlan *p)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)y * src_stride;
        uint8_t *d = dst + (size_t)y * dst_stride;
        for (int i = 0; i < p->out_size; i++) {
            const int32_t *k = p->k + (size_t)i * p->ksize;
            const uint8_t *t = s + (size_t)p->bounds[2 * i] * 3;
            int32_t acc[3] = {1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1),
                              1 << (PRECISION_BITS - 1)};
            for (int x = 0; x < p->bounds[2 * i + 1]; x++)
                for (int c = 0; c < 3; c++)
                    acc[c] += t[3 * x + c] * k[x];
            for (int c = 0; c < 3; c++)
                d[3 * i + c] = clip8(acc[c]);
        }
    }
}

/* Resamples along y; src row 0 is source row `first_row` (the horizontal pass kept only the rows
 * in use). Every byte of a row (3 * width) is filtered the same way, channels included. acc holds
 * one row of accumulators, so the inner loop runs along the row and vectorizes; integer sums do not
 * depend on their order, so this is still Pillow's result. */
static void pass_vertical(const uint8_t *src, size_t src_stride, int first_row, int width,
                          uint8_t *dst, size_t dst_stride, const AxisPlan *p, int32_t *acc)
{
    size_t nb = (size_t)width * 3;
    for (int i = 0; i < p->out_size; i++) {
        const int32_t *k = p->k + (size_t)i * p->ksize;
        const uint8_t *s = src + (size_t)(p->bounds[2 * i] - first_row) * src_stride;
        for (size_t b = 0; b < nb; b++)
            acc[b] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < p->bounds[2 * i + 1]; y++) {
            const uint8_t *row = s + (size_t)y * src_stride;
            int32_t ky = k[y];
            for (size_t b = 0; b < nb; b++)
                acc[b] += row[b] * ky;
        }
        uint8_t *d = dst + (size_t)i * dst_stride;
        for (size_t b = 0; b < nb; b++)
            d[b] = clip8(acc[b]);
    }
}

/* ---- resampling into a strided destination ---------------------------------------------------- */

static int resize_check(const RgbImage *src, int out_w, int out_h, Err *err)
{
    if (!src->px || src->w < 1 || src->h < 1 || src->w > RESIZE_MAX_SIDE ||
        src->h > RESIZE_MAX_SIDE)
        return err_set(err, "resize: source image %d x %d is empty or too large", src->w, src->h);
    if (out_w < 1 || out_h < 1 || out_w > RESIZE_MAX_SIDE || out_h > RESIZE_MAX_SIDE)
        return err_set(err, "resize: output size %d x %d is outside 1..%d", out_w, out_h,
                       RESIZE_MAX_SIDE);
    return 0;
}

/* Sets up a plan whose arrays live at *cursor (advanced past them); NULL cursor only sizes. */
static size_t axis_plan_place(AxisPlan *p, int in, int out, ResizeFilter f, char **cursor)
{
    p->in_size = in;
    p->out_size = out;
    p->ksize = axis_ksize(f, in, out);
    size_t kbytes = (size_t)out * (size_t)p->ksize * sizeof(int32_t);
    size_t bbytes = (size_t)out * 2 * sizeof(int);
    if (cursor) {
        p->k = (int32_t *)*cursor;
        p->bounds = (int *)(*cursor + kbytes);
        *cursor += kbytes + bbytes;
    }
    return kbytes + bbytes;
}

/* src resampled to out_w x out_h, written to dst rows dst_stride bytes apart. One scratch block
 * holds both plans, the vertical accumulator row (all 4-byte types first, so alignment holds) and
 * the horizontal pass's rows. */
static int resample_into(const RgbImage *src, uint8_t *dst, size_t dst_stride, int out_w,
                         int out_h, ResizeFilter f, Err *err)
{
    size_t src_stride = (size_t)src->w * 3, tmp_stride = (size_t)out_w * 3;
    int need_h = out_w != src->w, need_v = out_h != src->h;
    if (!need_h && !need_v) {
        for (int y = 0; y < out_h; y++)
            memcpy(dst + (size_t)y * dst_stride, src->px + (size_t)y * src_stride, src_stride);
        return 0;
    }
    AxisPlan ph = {0}, pv = {0};
    size_t acc_bytes = tmp_stride * sizeof(int32_t);
    size_t bytes = axis_plan_place(&ph, src->w, out_w, f, NULL) +
                   axis_plan_place(&pv, src->h, out_h, f, NULL) + acc_bytes +
                   (need_h && need_v ? tmp_stride * (size_t)src->h : 0);
    char *scratch = malloc(bytes), *cursor = scratch;
    if (!scratch)
        return err_set(err, "resize: out of memory (%zu bytes of scratch for %d x %d -> %d x %d)",
                       bytes, src->w, src->h, out_w, out_h);
    axis_plan_place(&ph, src->w, out_w, f, &cursor);
    axis_plan_place(&pv, src->h, out_h, f, &cursor);
    int32_t *acc = (int32_t *)cursor;
    uint8_t *tmp = (uint8_t *)(cursor + acc_bytes);
    axis_plan_fill(&ph, f);
    axis_plan_fill(&pv, f);
    if (!need_v) {
        pass_horizontal(src->px, src_stride, dst, dst_stride, src->h, &ph);
    } else if (!need_h) {
        pass_vertical(src->px, src_stride, 0, src->w, dst, dst_stride, &pv, acc);
    } else {
        /* Only rows [first, last) feed the vertical pass (Pillow's ybox_first / ybox_last). */
        int first = pv.bounds[0];
        int last = pv.bounds[2 * out_h - 2] + pv.bounds[2 * out_h - 1];
        pass_horizontal(src->px + (size_t)first * src_stride, src_stride, tmp, tmp_stride,
                        last - first, &ph);
        pass_vertical(tmp, tmp_stride, first, out_w, dst, dst_stride, &pv, acc);
    }
    free(scratch);
    return 0;
}

int resize_rgb(const RgbImage *src, int out_w, int out_h, ResizeFilter f, RgbImage *dst, Err *err)
{
    if (resize_check(src, out_w, out_h, err) < 0 || rgb_image_alloc(dst, out_w, out_h, err) < 0)
        return -1;
    return resample_into(src, dst->px, (size_t)out_w * 3, out_w, out_h, f, err);
}

/* ---- effdet eval transform ---------------------------------------------------------------------- */

int letterbox_rgb(const RgbImage *src, int target_h, int target_w, const uint8_t fill[3],
                  ResizeFilter f, RgbImage *dst, float *img_scale, Err *err)
{
    if (resize_check(src, target_w, target_h, err) < 0)
        return err_wrap(err, "letterbox: ");
    /* Python's arithmetic, in the same order and in double: int / int is a correctly rounded
     * double, and int(h * s) truncates. */
    double sy = (double)target_h / src->h, sx = (double)target_w / src->w;
    double s = sx < sy ? sx : sy;
    int scaled_h = (int)(src->h * s), scaled_w = (int)(src->w * s);
    if (scaled_h < 1 || scaled_w < 1)
        return err_set(err, "letterbox: a %d x %d image scales to %d x %d in %d x %d", src->w,
                       src->h, scaled_w, scaled_h, target_w, target_h);
    if (rgb_image_alloc(dst, target_w, target_h, err) < 0)
        return -1;
    size_t n = (size_t)target_w * target_h;
    for (size_t i = 0; i < n; i++)
        memcpy(dst->px + 3 * i, fill, 3);
    if (resample_into(src, dst->px, (size_t)target_w * 3, scaled_w, scaled_h, f, err) < 0)
        return -1;
    *img_scale = (float)(1.0 / s);
    return 0;
}

void resize_fill_from_mean(const double mean[3], uint8_t fill[3])
{
    /* Python's round() is round-half-even, like nearbyint in the default rounding mode. */
    for (int c = 0; c < 3; c++)
        fill[c] = (uint8_t)nearbyint(255 * mean[c]);
}

void normalize_rgb_to_nhwc(const RgbImage *src, float *dst, const double mean[3],
                           const double std[3])
{
    float m[3], s[3];
    for (int c = 0; c < 3; c++) {
        m[c] = (float)(mean[c] * 255);
        s[c] = (float)(std[c] * 255);
    }
    size_t n = (size_t)src->w * src->h;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            dst[3 * i + c] = ((float)src->px[3 * i + c] - m[c]) / s[c];
}
