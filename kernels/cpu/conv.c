/* conv.c: CPU convolutions, NHWC, TF SAME padding (see kernels/ops.h).
 *
 * Regular convolutions are GEMMs: a 1x1 stride-1 convolution multiplies the (N*H*W, Cin) input by
 * the (Cout, Cin) weight transposed, with no copy; other shapes first gather each image's patches
 * into the workspace (im2col, rows (OH*OW), columns ordered (ky, kx, cin) to match the OHWI
 * weights). Depthwise convolutions are direct loops whose innermost loop runs over contiguous
 * channels of both input and (KH, KW, C) weights, so the compiler vectorizes it. */
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
