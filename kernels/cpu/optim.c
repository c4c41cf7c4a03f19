/* optim.c: the CPU optimizer ops over the flat parameter block: the sum of squares for gradient
 * clipping (deterministic, see reduce.c), SGD with momentum and the weights' moving average, each
 * exactly the formula of kernels/ops.h. */
#include "kernels/cpu/cpu_internal.h"

static void sum_squares_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const float *x = arg;
    double s = 0.0;
    for (size_t i = begin; i < end; i++) s += (double)x[i] * x[i];
    acc[0] += s;
}

void cpu__sum_squares(OpsCtx *ctx, float *out, const float *x, size_t count)
{
    double s;
    cpu__reduce(&s, 1, count, sum_squares_chunk, x);
    *out = (float)s;
}

void cpu__sgd_update(OpsCtx *ctx, float *params, float *momentum_buf, const float *grads,
                     const uint8_t *decay_mask, float lr, float momentum, float weight_decay,
                     float grad_scale, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        float g = grads[i] * grad_scale;
        if (decay_mask[i]) g += weight_decay * params[i];
        momentum_buf[i] = momentum * momentum_buf[i] + g;
        params[i] -= lr * momentum_buf[i];
    }
}

void cpu__ema_update(OpsCtx *ctx, float *ema, const float *x, float decay, size_t count)
{
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) ema[i] = decay * ema[i] + (1.0f - decay) * x[i];
}
