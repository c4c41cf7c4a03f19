/* resample.c: CPU SAME max pooling (padding is -inf, so windows simply skip padded cells) and
 * legacy PyTorch nearest upsampling, both NHWC, forward and backward. */
#include "kernels/cpu/cpu_internal.h"

enum { POOL_TILE = 16 };

/* The maximum of one window over ct channels, and where it is: the offset in img of the first
 * maximum in scan order (strict >), or -1 where the window holds nothing above -inf. Padded cells
 * are skipped, so -inf padding never wins. img is one image from its tile's first channel, with
 * rows of s->c channels. Forward and backward share this scan, so each gradient goes exactly
 * where its forward maximum came from. */
static void pool_window_max(float *best, long *arg, const float *img, const PoolShape *s, int oy,
                            int ox, int ct)
{
    for (int j = 0; j < ct; j++) best[j] = -INFINITY, arg[j] = -1;
    for (int ky = 0; ky < s->kh; ky++) {
        int iy = oy * s->stride - s->pad_top + ky;
        if (iy < 0 || iy >= s->h) continue;
        for (int kx = 0; kx < s->kw; kx++) {
            int ix = ox * s->stride - s->pad_left + kx;
            if (ix < 0 || ix >= s->w) continue;
            long at = ((long)iy * s->w + ix) * s->c;
            for (int j = 0; j < ct; j++)
                if (img[at + j] > best[j]) best[j] = img[at + j], arg[j] = at;
        }
    }
}

void cpu__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s)
{
    const int c = s->c;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s->n; n++) {
        for (int oy = 0; oy < s->oh; oy++) {
            const float *img = in + (size_t)n * s->h * s->w * c;
            for (int ox = 0; ox < s->ow; ox++) {
                float *o = out + (((size_t)n * s->oh + oy) * s->ow + ox) * c;
                for (int c0 = 0; c0 < c; c0 += POOL_TILE) {
                    long arg[POOL_TILE];
                    int ct = c - c0 < POOL_TILE ? c - c0 : POOL_TILE;
                    pool_window_max(o + c0, arg, img + c0, s, oy, ox, ct);
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

/* Each thread owns an (image, channel tile) pair and scatters its windows' gradients in scan
 * order: no two threads touch one value, and the order of additions is fixed. */
void cpu__maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                           const PoolShape *s)
{
    const int c = s->c, tiles = (c + POOL_TILE - 1) / POOL_TILE;
#pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < s->n; n++) {
        for (int tile = 0; tile < tiles; tile++) {
            const int c0 = tile * POOL_TILE, ct = c - c0 < POOL_TILE ? c - c0 : POOL_TILE;
            const float *img = x + (size_t)n * s->h * s->w * c + c0;
            float *dimg = dx + (size_t)n * s->h * s->w * c + c0;
            for (int oy = 0; oy < s->oh; oy++) {
                for (int ox = 0; ox < s->ow; ox++) {
                    float best[POOL_TILE];
                    long arg[POOL_TILE];
                    pool_window_max(best, arg, img, s, oy, ox, ct);
                    const float *g = dy + (((size_t)n * s->oh + oy) * s->ow + ox) * c + c0;
                    for (int j = 0; j < ct; j++)
                        if (arg[j] >= 0) dimg[arg[j] + j] += g[j];
                }
            }
        }
    }
}

/* A gather per input row: the output rows that copied it are found by scanning, and their
 * cells are added in order, so threads own disjoint input rows. */
void cpu__upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h, int w,
                                    int c, int oh, int ow)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < n; b++) {
        for (int iy = 0; iy < h; iy++) {
            float *drow = dx + ((size_t)b * h + iy) * w * c;
            for (int oy = 0; oy < oh; oy++) {
                if (nearest_src(oy, h, oh) != iy) continue;
                const float *grow = dy + ((size_t)b * oh + oy) * ow * c;
                for (int ox = 0; ox < ow; ox++) {
                    float *d = drow + (size_t)nearest_src(ox, w, ow) * c;
                    for (int ch = 0; ch < c; ch++) d[ch] += grow[(size_t)ox * c + ch];
                }
            }
        }
    }
}
