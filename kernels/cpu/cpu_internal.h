/* cpu_internal.h: the CPU backend's functions, shared between its files and its op table
 * (ops_cpu.c). Everything here is plain C over host memory, written to be read: it is the
 * reference that the CUDA backend is tested against. */
#ifndef EFFDET_CPU_INTERNAL_H
#define EFFDET_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "kernels/ops.h"

struct OpsCtx {
    float *workspace; /* scratch for im2col, reserved once at plan time */
    size_t workspace_bytes;
};

size_t cpu__conv2d_workspace_bytes(const ConvShape *s);
void cpu__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                         const ConvShape *s);
void cpu__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                           const ConvShape *s);
void cpu__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                           const float *beta, const float *mean, const float *var, float eps,
                           Act act, size_t rows, int c);
void cpu__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count);
void cpu__se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                     const float *x, const float *w_r, const float *b_r, const float *w_e,
                     const float *b_e, int n, int hw, int c, int cr);
void cpu__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count);
void cpu__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s);
void cpu__upsample_nearest_forward(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                   int c, int oh, int ow);
void cpu__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                       size_t count);

/* expf for activations, written so that loops over it vectorize (glibc's expf is a call the
 * compiler will not vectorize without -ffast-math). Cody-Waite range reduction x = n ln2 + r,
 * |r| <= ln2/2, then a degree-6 Taylor polynomial for e^r and 2^n built in the exponent bits:
 * relative error below 2e-7 (about 2 ulp) over the clamped range, far inside the 1e-5 that parity
 * with the PyTorch reference needs. */
static inline float cpu__expf(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;      /* ln2 split in a short high part ... */
    r = r - n * -2.12194440e-4f;         /* ... and the rest, so n * ln2_hi is exact */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Scalar activations, shared by every op that applies one. */
static inline float cpu__sigmoid(float x) { return 1.0f / (1.0f + cpu__expf(-x)); }
static inline float cpu__silu(float x) { return x / (1.0f + cpu__expf(-x)); }
static inline float cpu__act(float x, Act act)
{
    return act == ACT_SILU ? cpu__silu(x) : act == ACT_SIGMOID ? cpu__sigmoid(x) : x;
}

#endif
