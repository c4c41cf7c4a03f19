/* elementwise.c: CPU residual add and BiFPN node fusion. */
#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

void cpu__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) out[i] = a[i] + b[i];
}

void cpu__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                       size_t count)
{
    /* effdet computes each term as (x_i * relu(w_i)) / (sum + 1e-4) and then sums the terms in
     * input order; the same order here keeps float rounding identical. */
    float wr[4] = {1.0f, 1.0f, 1.0f, 1.0f}, denom = 1.0f;
    ASSERT(k >= 1 && k <= 4);
    if (w) {
        float sum = 0.0f;
        for (int i = 0; i < k; i++) {
            wr[i] = w[i] > 0.0f ? w[i] : 0.0f;
            sum += wr[i];
        }
        denom = sum + 1e-4f;
    }
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < count; j++) {
        float acc = 0.0f;
        for (int i = 0; i < k; i++) acc += w ? (ins[i][j] * wr[i]) / denom : ins[i][j];
        out[j] = acc;
    }
}
