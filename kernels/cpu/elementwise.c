/* elementwise.c: CPU residual add, gradient accumulation and BiFPN node fusion, forward and
 * backward. */
#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

void cpu__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) out[i] = a[i] + b[i];
}

void cpu__accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) dst[i] += src[i];
}

/* The fusion's effective weights: wr = relu(w) and denom = sum(wr) + 1e-4, or ones and 1 for sum
 * fusion (w == NULL). Forward and backward share it so they use the same rounded values. */
static float fuse_weights(float wr[4], const float *w, int k)
{
    ASSERT(k >= 1 && k <= 4);
    for (int i = 0; i < 4; i++) wr[i] = 1.0f;
    if (!w) return 1.0f;
    float sum = 0.0f;
    for (int i = 0; i < k; i++) {
        wr[i] = w[i] > 0.0f ? w[i] : 0.0f;
        sum += wr[i];
    }
    return sum + 1e-4f;
}

void cpu__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                       size_t count)
{
    /* effdet computes each term as (x_i * relu(w_i)) / (sum + 1e-4) and then sums the terms in
     * input order; the same order here keeps float rounding identical. */
    float wr[4];
    float denom = fuse_weights(wr, w, k);
#pragma omp parallel for schedule(static)
    for (size_t j = 0; j < count; j++) {
        float acc = 0.0f;
        for (int i = 0; i < k; i++) acc += w ? (ins[i][j] * wr[i]) / denom : ins[i][j];
        out[j] = acc;
    }
}

typedef struct FuseGrad {
    const float *const *ins;
    const float *dy;
    const float *wr;
    float denom;
    int k;
} FuseGrad;

/* acc[i] += dy * (x_i - out) over [begin, end), out recomputed in double. */
static void fuse_grad_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const FuseGrad *f = arg;
    for (size_t j = begin; j < end; j++) {
        double out = 0.0;
        for (int i = 0; i < f->k; i++) out += (double)f->wr[i] * f->ins[i][j];
        out /= f->denom;
        for (int i = 0; i < f->k; i++) acc[i] += f->dy[j] * (f->ins[i][j] - out);
    }
}

/* With S = sum_j relu(w_j) and D = S + 1e-4: d out / d x_i = relu(w_i) / D, and
 * d out / d w_i = relu'(w_i) (x_i - out) / D, since w_i enters both its own term and D. */
void cpu__fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                        const float *const *ins, const float *w, int k, size_t count)
{
    float wr[4];
    float denom = fuse_weights(wr, w, k);
    ASSERT(w || !dw);
    for (int i = 0; i < k; i++) {
        float *d = dins[i];
        if (!d) continue;
        const float wi = wr[i];
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < count; j++) d[j] += w ? (dy[j] * wi) / denom : dy[j];
    }
    if (!dw) return;
    FuseGrad f = {.ins = ins, .dy = dy, .wr = wr, .denom = denom, .k = k};
    double acc[4];
    cpu__reduce(acc, k, count, fuse_grad_chunk, &f);
    for (int i = 0; i < k; i++)
        if (w[i] > 0.0f) dw[i] += (float)(acc[i] / denom);
}
