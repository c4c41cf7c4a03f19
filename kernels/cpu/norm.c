/* norm.c: CPU batch norm (inference) and activations, NHWC rows of C channels. */
#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

enum { BN_MAX_CHANNELS = 8192 };

void cpu__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                           const float *beta, const float *mean, const float *var, float eps,
                           Act act, size_t rows, int c)
{
    /* Folded once per call into scale and shift, as PyTorch's CPU inference path does:
     * out = in * (gamma / sqrt(var + eps)) + (beta - mean * gamma / sqrt(var + eps)). */
    float scale[BN_MAX_CHANNELS], shift[BN_MAX_CHANNELS];
    ASSERT(c <= BN_MAX_CHANNELS);
    for (int ch = 0; ch < c; ch++) {
        float invstd = 1.0f / sqrtf(var[ch] + eps);
        scale[ch] = gamma[ch] * invstd;
        shift[ch] = beta[ch] - mean[ch] * scale[ch];
    }
    /* One loop per activation keeps the inner loop branch-free, so it vectorizes. */
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * c;
        float *y = out + r * c;
        if (act == ACT_SILU) {
#pragma omp simd
            for (int ch = 0; ch < c; ch++) y[ch] = cpu__silu(x[ch] * scale[ch] + shift[ch]);
        } else if (act == ACT_SIGMOID) {
#pragma omp simd
            for (int ch = 0; ch < c; ch++) y[ch] = cpu__sigmoid(x[ch] * scale[ch] + shift[ch]);
        } else {
#pragma omp simd
            for (int ch = 0; ch < c; ch++) y[ch] = x[ch] * scale[ch] + shift[ch];
        }
    }
}

void cpu__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
    if (act == ACT_SILU) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = cpu__silu(in[i]);
    } else if (act == ACT_SIGMOID) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = cpu__sigmoid(in[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = in[i];
    }
}
