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
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * c;
        float *y = out + r * c;
        for (int ch = 0; ch < c; ch++) y[ch] = cpu__act(x[ch] * scale[ch] + shift[ch], act);
    }
}

void cpu__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) out[i] = cpu__act(in[i], act);
}
