/* optim.cu: the optimizer ops on the GPU over the flat parameter block, as kernels/cpu/optim.c:
 * the sum of squares for gradient clipping, SGD with momentum (PyTorch's form, coupled L2 weight
 * decay where the parameter's decay_mask byte is 1) and the weights' moving average.
 *
 * The updates are elementwise and keep the CPU's float expressions in the CPU's order, so they
 * differ from it only where the GPU fuses a multiply and an add. The sum of squares is
 * deterministic (reduce.cuh: fixed groups, fixed tree): the CPU accumulates in double, the GPU in
 * float, each thread over a strided run of count / (512 * 256) terms, then a fixed tree; with terms
 * all positive the relative error stays inside the parity tolerance. */
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/reduce.cuh"

/* ---- kernels ------------------------------------------------------------------------------------ */

/* g = grad * grad_scale (+ wd * p where masked); buf = momentum * buf + g; p -= lr * buf. */
__global__ void sgd_update_kernel(float *params, float *momentum_buf, const float *grads,
                                  const uint8_t *decay_mask, float lr, float momentum,
                                  float weight_decay, float grad_scale, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const float p = params[i];
        float g = grads[i] * grad_scale;
        if (decay_mask[i]) g += weight_decay * p;
        const float buf = momentum * momentum_buf[i] + g;
        momentum_buf[i] = buf;
        params[i] = p - lr * buf;
    }
}

/* ema = decay * ema + (1 - decay) * x. */
__global__ void ema_update_kernel(float *ema, const float *x, float decay, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        ema[i] = decay * ema[i] + (1.0f - decay) * x[i];
}

/* ---- launchers ---------------------------------------------------------------------------------- */

void cuda__sum_squares(OpsCtx *ctx, float *out, const float *x, size_t count)
{
    /* No early return for count == 0: the op writes (=) its result, and cuda__sum writes 0 then. */
    cuda__sum(ctx, out, 0, count, [=] __device__(size_t i) {
        const float v = x[i];
        return v * v;
    });
    CUDA_OP_END(ctx);
}

void cuda__sgd_update(OpsCtx *ctx, float *params, float *momentum_buf, const float *grads,
                      const uint8_t *decay_mask, float lr, float momentum, float weight_decay,
                      float grad_scale, size_t count)
{
    if (!count) return;
    sgd_update_kernel<<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        params, momentum_buf, grads, decay_mask, lr, momentum, weight_decay, grad_scale, count);
    CUDA_CHECK(cudaGetLastError());
    CUDA_OP_END(ctx);
}

void cuda__ema_update(OpsCtx *ctx, float *ema, const float *x, float decay, size_t count)
{
    if (!count) return;
    ema_update_kernel<<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(ema, x, decay, count);
    CUDA_CHECK(cudaGetLastError());
    CUDA_OP_END(ctx);
}
