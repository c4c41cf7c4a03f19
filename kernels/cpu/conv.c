/* conv.c: CPU convolutions, NHWC, TF SAME padding (see kernels/ops.h).
 *
 * Regular convolutions are GEMMs: a 1x1 stride-1 convolution multiplies the (N*H*W, Cin) input by
 * the (Cout, Cin) weight transposed, with no copy; other shapes first gather each image's patches
 * into the workspace (im2col, rows (OH*OW), columns ordered (ky, kx, cin) to match the OHWI
 * weights). Depthwise convolutions are direct loops whose innermost loop runs over contiguous
 * channels of both input and (KH, KW, C) weights, so the compiler vectorizes it.
 *
 * Backward: dw += dy^T im2col(x) and dcols = dy w are GEMMs too, and dcols goes back into dx
 * through col2im, reusing the forward's workspace (patches first, then their gradients). Every
 * sum is computed in a fixed order (see reduce.c and the gathers below), so gradients are
 * bit-identical run to run. */
#include <cblas.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

static int conv_is_pointwise(const ConvShape *s)
{
    return s->kh == 1 && s->kw == 1 && s->stride == 1 && s->pad_top == 0 && s->pad_left == 0;
}

size_t cpu__conv2d_workspace_bytes(const ConvShape *s)
{
    if (conv_is_pointwise(s)) return 0;
    return (size_t)s->oh * s->ow * s->kh * s->kw * s->cin * sizeof(float);
}

/* Gathers the patches of one image: cols (OH*OW, KH*KW*Cin), zeros where the window is padding. */
static void im2col_image(float *cols, const float *img, const ConvShape *s)
{
    size_t k = (size_t)s->kh * s->kw * s->cin;
#pragma omp parallel for schedule(static)
    for (int oy = 0; oy < s->oh; oy++) {
        for (int ox = 0; ox < s->ow; ox++) {
            float *row = cols + ((size_t)oy * s->ow + ox) * k;
            for (int ky = 0; ky < s->kh; ky++) {
                int iy = oy * s->stride - s->pad_top + ky;
                for (int kx = 0; kx < s->kw; kx++) {
                    int ix = ox * s->stride - s->pad_left + kx;
                    float *dst = row + ((size_t)ky * s->kw + kx) * s->cin;
                    if (iy < 0 || iy >= s->h || ix < 0 || ix >= s->w)
                        memset(dst, 0, (size_t)s->cin * sizeof(float));
                    else
                        memcpy(dst, img + ((size_t)iy * s->w + ix) * s->cin,
                               (size_t)s->cin * sizeof(float));
                }
            }
        }
    }
}

/* out rows (m, Cout) = bias broadcast, so the GEMM can accumulate onto it with beta = 1. */
static void fill_bias(float *out, const float *b, size_t m, int cout)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < m; r++) {
        float *o = out + r * cout;
        if (b)
            memcpy(o, b, (size_t)cout * sizeof(float));
        else
            memset(o, 0, (size_t)cout * sizeof(float));
    }
}

void cpu__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                         const ConvShape *s)
{
    int k = s->kh * s->kw * s->cin;
    if (conv_is_pointwise(s)) {
        size_t m = (size_t)s->n * s->h * s->w;
        fill_bias(out, b, m, s->cout);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, s->cout, k, 1.0f, in, k, w, k,
                    1.0f, out, s->cout);
        return;
    }
    ASSERT(ctx->workspace_bytes >= cpu__conv2d_workspace_bytes(s));
    size_t m = (size_t)s->oh * s->ow;
    for (int n = 0; n < s->n; n++) {
        const float *img = in + (size_t)n * s->h * s->w * s->cin;
        float *o = out + (size_t)n * m * s->cout;
        im2col_image(ctx->workspace, img, s);
        fill_bias(o, b, m, s->cout);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, s->cout, k, 1.0f,
                    ctx->workspace, k, w, k, 1.0f, o, s->cout);
    }
}

void cpu__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                           const ConvShape *s)
{
    const int c = s->cin;
    ASSERT(s->cout == c);
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s->n; n++) {
        for (int oy = 0; oy < s->oh; oy++) {
            const float *img = in + (size_t)n * s->h * s->w * c;
            for (int ox = 0; ox < s->ow; ox++) {
                float *o = out + (((size_t)n * s->oh + oy) * s->ow + ox) * c;
                memset(o, 0, (size_t)c * sizeof(float));
                for (int ky = 0; ky < s->kh; ky++) {
                    int iy = oy * s->stride - s->pad_top + ky;
                    if (iy < 0 || iy >= s->h) continue;
                    for (int kx = 0; kx < s->kw; kx++) {
                        int ix = ox * s->stride - s->pad_left + kx;
                        if (ix < 0 || ix >= s->w) continue;
                        const float *ip = img + ((size_t)iy * s->w + ix) * c;
                        const float *wp = w + ((size_t)ky * s->kw + kx) * c;
                        for (int ch = 0; ch < c; ch++) o[ch] += ip[ch] * wp[ch];
                    }
                }
            }
        }
    }
}

/* ---- backward ------------------------------------------------------------------------------------
 * The input gradients are gathers, not scatters: each thread owns whole input rows and adds what
 * every (tap, output) pair sends them in a fixed order, so no two threads write one value and the
 * result does not depend on scheduling. */

/* The output index whose window puts tap t on input index i (i = o * stride - pad + t), or -1. */
static int conv_out_index(int i, int t, int pad, int stride, int out)
{
    int p = i + pad - t;
    if (p < 0 || p % stride) return -1;
    p /= stride;
    return p < out ? p : -1;
}

/* dimg (H, W, Cin) += the patch gradients dcols (OH*OW, KH*KW*Cin) of one image (col2im). */
static void col2im_image_add(float *dimg, const float *dcols, const ConvShape *s)
{
    size_t k = (size_t)s->kh * s->kw * s->cin;
#pragma omp parallel for schedule(static)
    for (int iy = 0; iy < s->h; iy++) {
        for (int ky = 0; ky < s->kh; ky++) {
            int oy = conv_out_index(iy, ky, s->pad_top, s->stride, s->oh);
            if (oy < 0) continue;
            for (int ix = 0; ix < s->w; ix++) {
                float *dst = dimg + ((size_t)iy * s->w + ix) * s->cin;
                for (int kx = 0; kx < s->kw; kx++) {
                    int ox = conv_out_index(ix, kx, s->pad_left, s->stride, s->ow);
                    if (ox < 0) continue;
                    const float *src = dcols + ((size_t)oy * s->ow + ox) * k +
                                       ((size_t)ky * s->kw + kx) * s->cin;
                    for (int ci = 0; ci < s->cin; ci++) dst[ci] += src[ci];
                }
            }
        }
    }
}

void cpu__conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                          const float *x, const float *w, const ConvShape *s)
{
    int k = s->kh * s->kw * s->cin;
    if (db) cpu__column_sums_add(db, dy, (size_t)s->n * s->oh * s->ow, s->cout);
    if (conv_is_pointwise(s)) {
        /* dw (Cout, Cin) += dy^T x and dx (M, Cin) += dy w over all M = N*H*W rows at once. */
        int m = s->n * s->h * s->w;
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->cout, k, m, 1.0f, dy, s->cout,
                        x, k, 1.0f, dw, k);
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, s->cout, 1.0f, dy,
                        s->cout, w, k, 1.0f, dx, k);
        return;
    }
    /* Per image, the one workspace serves twice: the patches for dw, then their gradients. */
    if (!dw && !dx) return;
    ASSERT(ctx->workspace_bytes >= cpu__conv2d_workspace_bytes(s));
    int m = s->oh * s->ow;
    for (int n = 0; n < s->n; n++) {
        const float *dyn = dy + (size_t)n * m * s->cout;
        if (dw) {
            im2col_image(ctx->workspace, x + (size_t)n * s->h * s->w * s->cin, s);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->cout, k, m, 1.0f, dyn,
                        s->cout, ctx->workspace, k, 1.0f, dw, k);
        }
        if (dx) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, s->cout, 1.0f, dyn,
                        s->cout, w, k, 0.0f, ctx->workspace, k);
            col2im_image_add(dx + (size_t)n * s->h * s->w * s->cin, ctx->workspace, s);
        }
    }
}

/* A tile of depthwise channels [c0, c0 + ct) for the dw reduction over rows (n, oy). */
typedef struct DwTile {
    const float *dy, *x;
    const ConvShape *s;
    int c0, ct;
} DwTile;

/* The outputs [*o0, *o1) whose window puts tap t inside the input: 0 <= o * stride - pad + t < in. */
static void conv_tap_outputs(int t, int pad, int stride, int in, int out, int *o0, int *o1)
{
    int lo = pad - t, hi = in - 1 + pad - t; /* o * stride must lie in [lo, hi] */
    *o0 = lo > 0 ? (lo + stride - 1) / stride : 0;
    *o1 = hi < 0 ? 0 : hi / stride + 1 < out ? hi / stride + 1 : out;
    if (*o0 > *o1) *o0 = *o1;
}

/* acc[(ky * KW + kx) * ct + j] += dy * x over the output rows [begin, end) of all images. Each
 * row first sums in float over its OW positions (a short sum, and a loop of float FMAs over the
 * tile's channels), then adds into the double partial. */
static void dw_grad_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const DwTile *t = arg;
    const ConvShape *s = t->s;
    const int c = s->cin, ct = t->ct, taps = s->kh * s->kw;
    float racc[CPU_REDUCE_WIDTH];
    for (size_t row = begin; row < end; row++) {
        int n = (int)(row / s->oh), oy = (int)(row % s->oh);
        const float *grow = t->dy + ((size_t)n * s->oh + oy) * s->ow * c + t->c0;
        memset(racc, 0, (size_t)taps * ct * sizeof(float));
        for (int ky = 0; ky < s->kh; ky++) {
            int iy = oy * s->stride - s->pad_top + ky;
            if (iy < 0 || iy >= s->h) continue;
            const float *xrow = t->x + ((size_t)n * s->h + iy) * s->w * c + t->c0;
            for (int kx = 0; kx < s->kw; kx++) {
                int o0, o1;
                conv_tap_outputs(kx, s->pad_left, s->stride, s->w, s->ow, &o0, &o1);
                float *ra = racc + (ky * s->kw + kx) * ct;
                for (int ox = o0; ox < o1; ox++) {
                    const float *g = grow + (size_t)ox * c;
                    const float *xp = xrow + (size_t)(ox * s->stride - s->pad_left + kx) * c;
                    for (int j = 0; j < ct; j++) ra[j] += g[j] * xp[j];
                }
            }
        }
        for (int i = 0; i < taps * ct; i++) acc[i] += racc[i];
    }
}

void cpu__dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy, const float *x,
                            const float *w, const ConvShape *s)
{
    const int c = s->cin, taps = s->kh * s->kw;
    ASSERT(s->cout == c && taps <= CPU_REDUCE_WIDTH);
    if (dx) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int n = 0; n < s->n; n++) {
            for (int iy = 0; iy < s->h; iy++) {
                for (int ky = 0; ky < s->kh; ky++) {
                    int oy = conv_out_index(iy, ky, s->pad_top, s->stride, s->oh);
                    if (oy < 0) continue;
                    for (int ix = 0; ix < s->w; ix++) {
                        float *d = dx + (((size_t)n * s->h + iy) * s->w + ix) * c;
                        for (int kx = 0; kx < s->kw; kx++) {
                            int ox = conv_out_index(ix, kx, s->pad_left, s->stride, s->ow);
                            if (ox < 0) continue;
                            const float *g = dy + (((size_t)n * s->oh + oy) * s->ow + ox) * c;
                            const float *wp = w + ((size_t)ky * s->kw + kx) * c;
                            for (int ch = 0; ch < c; ch++) d[ch] += g[ch] * wp[ch];
                        }
                    }
                }
            }
        }
    }
    if (!dw) return;
    /* Channel tiles as wide as the reduction allows (a multiple of 8 where it can be, for the
     * vector loop), each reduced over all N*OH output rows. */
    int tile = CPU_REDUCE_WIDTH / taps;
    if (tile > 8) tile -= tile % 8;
    for (int c0 = 0; c0 < c; c0 += tile) {
        DwTile t = {.dy = dy, .x = x, .s = s, .c0 = c0, .ct = c - c0 < tile ? c - c0 : tile};
        double acc[CPU_REDUCE_WIDTH];
        cpu__reduce(acc, taps * t.ct, (size_t)s->n * s->oh, dw_grad_chunk, &t);
        for (int tap = 0; tap < taps; tap++)
            for (int j = 0; j < t.ct; j++) dw[(size_t)tap * c + c0 + j] += (float)acc[tap * t.ct + j];
    }
}
