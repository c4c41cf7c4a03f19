/* resample.c: CPU SAME max pooling (padding is -inf, so windows simply skip padded cells) and
 * legacy PyTorch nearest upsampling, both NHWC. */
#include "kernels/cpu/cpu_internal.h"

void cpu__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s)
{
    const int c = s->c;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s->n; n++) {
        for (int oy = 0; oy < s->oh; oy++) {
            for (int ox = 0; ox < s->ow; ox++) {
                float *o = out + (((size_t)n * s->oh + oy) * s->ow + ox) * c;
                for (int ch = 0; ch < c; ch++) o[ch] = -INFINITY;
                for (int ky = 0; ky < s->kh; ky++) {
                    int iy = oy * s->stride - s->pad_top + ky;
                    if (iy < 0 || iy >= s->h) continue;
                    for (int kx = 0; kx < s->kw; kx++) {
                        int ix = ox * s->stride - s->pad_left + kx;
                        if (ix < 0 || ix >= s->w) continue;
                        const float *ip = in + (((size_t)n * s->h + iy) * s->w + ix) * c;
                        for (int ch = 0; ch < c; ch++) o[ch] = ip[ch] > o[ch] ? ip[ch] : o[ch];
                    }
                }
            }
        }
    }
}

/* PyTorch's nearest_idx: the scale is in/out in float32 and the product is floored in float. */
static int nearest_src(int dst, int in, int out)
{
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

void cpu__upsample_nearest_forward(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                   int c, int oh, int ow)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++) {
        for (int oy = 0; oy < oh; oy++) {
            int iy = nearest_src(oy, h, oh);
            for (int ox = 0; ox < ow; ox++) {
                int ix = nearest_src(ox, w, ow);
                const float *ip = in + (((size_t)b * h + iy) * w + ix) * c;
                float *o = out + (((size_t)b * oh + oy) * ow + ox) * c;
                for (int ch = 0; ch < c; ch++) o[ch] = ip[ch];
            }
        }
    }
}
