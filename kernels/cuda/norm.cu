/* norm.cu: the CUDA backend's train-mode batch norm, forward and backward, and the backward of
 * inference batch norm, NHWC rows of C channels with the activation included. Activations (in,
 * out, dy, dx) are of the context's storage type T (cuda_common.cuh), read and written through
 * cuda__ld/cuda__st; statistics, parameters, their gradients and all the math are float. Each
 * follows its CPU reference (kernels/cpu/norm.c) expression for expression: the pre-activation is
 * always
 * x * scale + shift with scale = gamma * invstd and shift = beta - mean * scale (PyTorch's folded
 * form), so a backward recomputes exactly what the forward activated.
 *
 * Sums over rows (batch statistics, dgamma, dbeta and the two sums of dx) go through reduce.cuh's
 * deterministic column sums: same bits on every run, no atomics. Those sum in float where the CPU
 * sums in double, so the statistics take two passes (the mean, then squared deviations from it)
 * rather than E[x^2] - mean^2, and the mean pass sums each value's difference from its channel's
 * first value, so a mean far larger than the spread does not cost the mean its precision.
 *
 * Train backward keeps its two per-channel sums (2C floats) between the reductions and the dx
 * kernel in cuda__scratch: no output can hold them (dgamma and dbeta accumulate).
 *
 * Data parallel (set_bn_sync, kernels/ops.h): the forward's two sums and the backward's pair are
 * summed over the ranks through the host, as the CPU does: downloaded (the stream waits), given
 * to the callback as doubles, uploaded; the divisions then count every rank's rows. The mean
 * pass's shifted sums are turned back into plain sums in double first (the ranks' first rows
 * differ). dgamma and dbeta take this rank's sums before they are replaced, as the contract says.
 * Each synchronized layer costs three host round trips per step: correct first; NCCL on the
 * device sums (comm_nccl.cu) is the faster form, once measured. */
#include "kernels/cuda/reduce.cuh"

enum { TILE_C = 32, TILE_R = 8 };

/* What every pass needs to rebuild a channel's coefficients. Train mode passes the saved invstd;
 * inference passes var and eps (invstd == NULL) and folds 1 / sqrtf(var + eps) as
 * bn_infer_forward does, so both backends and both passes use the same rounded values. */
typedef struct BnParams {
    const float *gamma, *beta, *mean;
    const float *invstd; /* (C) or NULL */
    const float *var;    /* (C), read only when invstd == NULL */
    float eps;
    Act act;
} BnParams;

typedef struct BnCoef {
    float mean, invstd, scale, shift;
} BnCoef;

/* ---- device helpers ------------------------------------------------------------------------------ */

static __device__ __forceinline__ BnCoef bn_coef(const BnParams &p, int ch)
{
    BnCoef k;
    k.mean = p.mean[ch];
    k.invstd = p.invstd ? p.invstd[ch] : 1.0f / sqrtf(p.var[ch] + p.eps);
    k.scale = p.gamma[ch] * k.invstd;
    k.shift = p.beta[ch] - k.mean * k.scale;
    return k;
}

/* dz = dy * act'(pre): the gradient at the pre-activation (dy itself without an activation). */
static __device__ __forceinline__ float bn_dz(const BnCoef &k, float x, float dy, Act act)
{
    return act == ACT_NONE ? dy : dy * cuda__act_grad(x * k.scale + k.shift, act);
}

/* The terms of the two backward sums at row r, channel ch: dz (dbeta) and dz * xhat (dgamma). */
template <typename T>
static __device__ __forceinline__ float bn_dz_at(const BnParams &p, const T *x, const T *dy,
                                                 size_t r, int c, int ch)
{
    const size_t i = r * c + ch;
    return bn_dz(bn_coef(p, ch), cuda__ld(x, i), cuda__ld(dy, i), p.act);
}

template <typename T>
static __device__ __forceinline__ float bn_dzxhat_at(const BnParams &p, const T *x, const T *dy,
                                                     size_t r, int c, int ch)
{
    const size_t i = r * c + ch;
    const BnCoef k = bn_coef(p, ch);
    const float xi = cuda__ld(x, i);
    const float xhat = (xi - k.mean) * k.invstd;
    return bn_dz(k, xi, cuda__ld(dy, i), p.act) * xhat;
}

/* ---- kernels ------------------------------------------------------------------------------------ */

/* mean (C): in, the sums of x - x[row 0]; out, the batch mean x[row 0] + sum / rows, formed in
 * double as the CPU forms its mean and rounded once. */
template <typename T> __global__ void bn_mean_kernel(float *mean, const T *in, size_t rows, int c)
{
    for (size_t ch = blockIdx.x * (size_t)blockDim.x + threadIdx.x; ch < (size_t)c;
         ch += (size_t)gridDim.x * blockDim.x)
        mean[ch] = (float)((double)cuda__ld(in, ch) + (double)mean[ch] / (double)rows);
}

/* invstd (C): in, the sums of squared deviations; out, 1 / sqrt(var + eps) of the biased variance,
 * in double as the CPU. The running statistics follow PyTorch's update in the CPU's order, with
 * the unbiased variance. */
__global__ void bn_stats_kernel(float *invstd, const float *mean, float *running_mean,
                                float *running_var, float eps, float momentum, size_t rows, int c)
{
    for (size_t ch = blockIdx.x * (size_t)blockDim.x + threadIdx.x; ch < (size_t)c;
         ch += (size_t)gridDim.x * blockDim.x) {
        const double sqdev = invstd[ch];
        invstd[ch] = (float)(1.0 / sqrt(sqdev / (double)rows + eps));
        if (running_mean)
            running_mean[ch] = momentum * mean[ch] + (1.0f - momentum) * running_mean[ch];
        if (running_var) {
            const float unbiased = (float)(sqdev / (double)(rows - 1));
            running_var[ch] = momentum * unbiased + (1.0f - momentum) * running_var[ch];
        }
    }
}

/* out = act(in * scale + shift). Block (TILE_C, TILE_R): threadIdx.x picks the channel, whose
 * coefficients are folded once per thread; the y dimension strides over rows. */
template <typename T>
__global__ void bn_apply_kernel(T *out, const T *in, BnParams p, size_t rows, int c)
{
    const int ch = blockIdx.x * TILE_C + threadIdx.x;
    if (ch >= c) return;
    const BnCoef k = bn_coef(p, ch);
    for (size_t r = blockIdx.y * (size_t)TILE_R + threadIdx.y; r < rows;
         r += (size_t)gridDim.y * TILE_R) {
        const size_t i = r * c + ch;
        cuda__st(out, i, cuda__act(cuda__ld(in, i) * k.scale + k.shift, p.act));
    }
}

/* dbeta += sum dz, dgamma += sum dz * xhat (sums: the C sums of dz, then the C sums of dz * xhat);
 * either output may be NULL. */
__global__ void bn_param_grad_kernel(float *dgamma, float *dbeta, const float *sums, int c)
{
    for (size_t ch = blockIdx.x * (size_t)blockDim.x + threadIdx.x; ch < (size_t)c;
         ch += (size_t)gridDim.x * blockDim.x) {
        if (dbeta) dbeta[ch] += sums[ch];
        if (dgamma) dgamma[ch] += sums[c + ch];
    }
}

/* dx += g * (dz - ka - xhat * kb) with g = gamma * invstd (= scale): the CPU's bn_tile_dx. Train
 * mode passes its sums (ka = mean of dz, kb = mean of dz * xhat, the gradient through the batch
 * statistics, over `total` rows: this rank's, or every rank's when synchronized); inference
 * passes sums == NULL, so ka = kb = 0 and dx += dz * scale. Same layout as bn_apply_kernel. */
template <typename T>
__global__ void bn_backward_dx_kernel(T *dx, const T *dy, const T *in, BnParams p,
                                      const float *sums, size_t rows, double total, int c)
{
    const int ch = blockIdx.x * TILE_C + threadIdx.x;
    if (ch >= c) return;
    const BnCoef k = bn_coef(p, ch);
    float ka = 0.0f, kb = 0.0f;
    if (sums) {
        ka = (float)((double)sums[ch] / total);
        kb = (float)((double)sums[c + ch] / total);
    }
    for (size_t r = blockIdx.y * (size_t)TILE_R + threadIdx.y; r < rows;
         r += (size_t)gridDim.y * TILE_R) {
        const size_t i = r * c + ch;
        const float x = cuda__ld(in, i);
        const float dz = bn_dz(k, x, cuda__ld(dy, i), p.act);
        const float xhat = (x - k.mean) * k.invstd;
        cuda__st(dx, i, cuda__ld(dx, i) + k.scale * (dz - ka - xhat * kb));
    }
}

/* sum (C, double) = the plain sums of in (rows, C) from pass 1's sums of x - x[row 0]. */
template <typename T>
__global__ void bn_unshift_kernel(double *sum, const float *shifted, const T *in, size_t rows, int c)
{
    for (size_t ch = blockIdx.x * (size_t)blockDim.x + threadIdx.x; ch < (size_t)c;
         ch += (size_t)gridDim.x * blockDim.x)
        sum[ch] = (double)shifted[ch] + (double)rows * (double)cuda__ld(in, ch);
}

/* ---- data parallel (set_bn_sync) ---------------------------------------------------------------- */

void cuda__set_bn_sync(OpsCtx *ctx, const BnSync *sync)
{
    ctx->has_bn_sync = sync != NULL;
    if (sync) ctx->bn_sync = *sync;
}

/* Rows of every rank in a synchronized layer's statistics. */
static double bn_total(const OpsCtx *ctx, size_t rows)
{
    return (double)rows * (ctx->has_bn_sync ? ctx->bn_sync.world : 1);
}

/* The ranks' sum of ctx->bn_host[0, n) in place. A failed allreduce is the trainer's to report
 * (its callback keeps the error and the step fails on every rank); the values are then unused. */
static void bn_host_allreduce(OpsCtx *ctx, size_t n)
{
    (void)ctx->bn_sync.allreduce(ctx->bn_sync.arg, ctx->bn_host, n);
}

/* n device floats summed over the ranks, in place, through ctx->bn_host (doubles at [0, n), the
 * float staging after them). An upload from pageable memory returns once the driver has staged
 * it, so the buffer may be reused at once. */
static void bn_sync_floats(OpsCtx *ctx, float *dev, size_t n)
{
    ASSERT(n <= 2 * (size_t)CUDA_BN_SYNC_MAX_C);
    float *f = (float *)(ctx->bn_host + n);
    CUDA_CHECK(cudaMemcpyAsync(f, dev, n * sizeof(float), cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    for (size_t i = 0; i < n; i++) ctx->bn_host[i] = f[i];
    bn_host_allreduce(ctx, n);
    for (size_t i = 0; i < n; i++) f[i] = (float)ctx->bn_host[i];
    CUDA_CHECK(cudaMemcpyAsync(dev, f, n * sizeof(float), cudaMemcpyHostToDevice, ctx->stream));
}

/* The global batch mean into mean (C, device), which holds this rank's pass-1 sums of
 * x - x[row 0]: plain sums in double on the device, summed over the ranks, divided by every
 * rank's rows and rounded once, as the CPU forms its mean. */
template <typename T>
static void bn_sync_mean(OpsCtx *ctx, float *mean, const T *x, size_t rows, int c)
{
    ASSERT(c <= CUDA_BN_SYNC_MAX_C);
    double *sum = (double *)cuda__scratch(ctx, 2 * (size_t)c);
    bn_unshift_kernel<T><<<cuda__blocks((size_t)c), CUDA_BLOCK, 0, ctx->stream>>>(sum, mean, x,
                                                                                  rows, c);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaMemcpyAsync(ctx->bn_host, sum, (size_t)c * sizeof(double),
                               cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    bn_host_allreduce(ctx, (size_t)c);
    float *f = (float *)(ctx->bn_host + c);
    const double total = bn_total(ctx, rows);
    for (int ch = 0; ch < c; ch++) f[ch] = (float)(ctx->bn_host[ch] / total);
    CUDA_CHECK(cudaMemcpyAsync(mean, f, (size_t)c * sizeof(float), cudaMemcpyHostToDevice,
                               ctx->stream));
}

/* ---- launchers ---------------------------------------------------------------------------------- */

static dim3 bn_grid(size_t rows, int c)
{
    return dim3((c + TILE_C - 1) / TILE_C, cuda__cap_blocks((rows + TILE_R - 1) / TILE_R));
}

/* Each op checks its sizes, launches its kernels for the context's storage type T (the *_t
 * functions, through CUDA_ACT_DISPATCH) and ends with CUDA_OP_END. */

template <typename T>
static void bn_train_forward_t(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                               float *running_mean, float *running_var, const float *in_f,
                               const float *gamma, const float *beta, float eps, float momentum,
                               Act act, size_t rows, int c)
{
    const T *x = cuda__as<T>(in_f);
    /* Pass 1: the mean, from deviations from row 0 (see the file comment). */
    cuda__colsum(ctx, save_mean, 0, rows, c, [=] __device__(size_t r, int ch) {
        return cuda__ld(x, r * c + ch) - cuda__ld(x, ch);
    });
    if (ctx->has_bn_sync) {
        bn_sync_mean<T>(ctx, save_mean, x, rows, c);
    } else {
        bn_mean_kernel<T><<<cuda__blocks((size_t)c), CUDA_BLOCK, 0, ctx->stream>>>(save_mean, x,
                                                                                   rows, c);
        CUDA_CHECK(cudaGetLastError());
    }
    /* Pass 2: squared deviations from that mean, summed into save_invstd until bn_stats_kernel
     * turns them into invstd. */
    const float *mean = save_mean;
    cuda__colsum(ctx, save_invstd, 0, rows, c, [=] __device__(size_t r, int ch) {
        const float d = cuda__ld(x, r * c + ch) - mean[ch];
        return d * d;
    });
    if (ctx->has_bn_sync) bn_sync_floats(ctx, save_invstd, (size_t)c);
    /* The variance's count (and the running variance's unbiasing) is every rank's rows. */
    bn_stats_kernel<<<cuda__blocks((size_t)c), CUDA_BLOCK, 0, ctx->stream>>>(
        save_invstd, save_mean, running_mean, running_var, eps, momentum,
        (size_t)bn_total(ctx, rows), c);
    CUDA_CHECK(cudaGetLastError());
    const BnParams p = {gamma, beta, save_mean, save_invstd, NULL, eps, act};
    bn_apply_kernel<T><<<bn_grid(rows, c), dim3(TILE_C, TILE_R), 0, ctx->stream>>>(
        cuda__as<T>(out), x, p, rows, c);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                            float *running_mean, float *running_var, const float *in,
                            const float *gamma, const float *beta, float eps, float momentum,
                            Act act, size_t rows, int c)
{
    ASSERT(rows >= 2); /* as the CPU: PyTorch refuses one value per channel in training too */
    if (c <= 0) return;
    CUDA_ACT_DISPATCH(ctx, bn_train_forward_t, ctx, out, save_mean, save_invstd, running_mean,
                      running_var, in, gamma, beta, eps, momentum, act, rows, c);
    CUDA_OP_END(ctx);
}

template <typename T>
static void bn_train_backward_t(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy_f, const float *in_f, const float *gamma,
                                const float *beta, const float *save_mean,
                                const float *save_invstd, Act act, size_t rows, int c)
{
    const BnParams p = {gamma, beta, save_mean, save_invstd, NULL, 0.0f, act};
    const T *x = cuda__as<T>(in_f), *dy = cuda__as<T>(dy_f);
    /* Through the batch statistics: dx = gamma * invstd * (dz - mean(dz) - xhat * mean(dz xhat)).
     * The two sums are taken first (they are dbeta's and dgamma's too), then one elementwise
     * pass, so nothing cancels beyond what the CPU's formula cancels. */
    float *sums = cuda__scratch(ctx, 2 * (size_t)c);
    cuda__colsum(ctx, sums, 0, rows, c,
                 [=] __device__(size_t r, int ch) { return bn_dz_at(p, x, dy, r, c, ch); });
    cuda__colsum(ctx, sums + c, 0, rows, c,
                 [=] __device__(size_t r, int ch) { return bn_dzxhat_at(p, x, dy, r, c, ch); });
    if (dgamma || dbeta) { /* this rank's sums (the gradient block is summed later) */
        bn_param_grad_kernel<<<cuda__blocks((size_t)c), CUDA_BLOCK, 0, ctx->stream>>>(dgamma, dbeta,
                                                                                      sums, c);
        CUDA_CHECK(cudaGetLastError());
    }
    if (ctx->has_bn_sync) bn_sync_floats(ctx, sums, 2 * (size_t)c);
    if (dx) {
        bn_backward_dx_kernel<T><<<bn_grid(rows, c), dim3(TILE_C, TILE_R), 0, ctx->stream>>>(
            cuda__as<T>(dx), dy, x, p, sums, rows, bn_total(ctx, rows), c);
        CUDA_CHECK(cudaGetLastError());
    }
}

void cuda__bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *in, const float *gamma, const float *beta,
                             const float *save_mean, const float *save_invstd, Act act,
                             size_t rows, int c)
{
    if (!rows || c <= 0 || (!dx && !dgamma && !dbeta)) return;
    CUDA_ACT_DISPATCH(ctx, bn_train_backward_t, ctx, dx, dgamma, dbeta, dy, in, gamma, beta,
                      save_mean, save_invstd, act, rows, c);
    CUDA_OP_END(ctx);
}

template <typename T>
static void bn_infer_backward_t(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy_f, const float *in_f, const float *gamma,
                                const float *beta, const float *mean, const float *var, float eps,
                                Act act, size_t rows, int c)
{
    const BnParams p = {gamma, beta, mean, NULL, var, eps, act};
    const T *x = cuda__as<T>(in_f), *dy = cuda__as<T>(dy_f);
    /* Frozen statistics are constants: the parameter sums add straight into their outputs, and
     * dx = dz * scale needs no sum. */
    if (dbeta)
        cuda__colsum(ctx, dbeta, 1, rows, c,
                     [=] __device__(size_t r, int ch) { return bn_dz_at(p, x, dy, r, c, ch); });
    if (dgamma)
        cuda__colsum(ctx, dgamma, 1, rows, c, [=] __device__(size_t r, int ch) {
            return bn_dzxhat_at(p, x, dy, r, c, ch);
        });
    if (dx) {
        bn_backward_dx_kernel<T><<<bn_grid(rows, c), dim3(TILE_C, TILE_R), 0, ctx->stream>>>(
            cuda__as<T>(dx), dy, x, p, NULL, rows, (double)rows, c);
        CUDA_CHECK(cudaGetLastError());
    }
}

void cuda__bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *in, const float *gamma, const float *beta,
                             const float *mean, const float *var, float eps, Act act, size_t rows,
                             int c)
{
    if (!rows || c <= 0) return;
    CUDA_ACT_DISPATCH(ctx, bn_infer_backward_t, ctx, dx, dgamma, dbeta, dy, in, gamma, beta, mean,
                      var, eps, act, rows, c);
    CUDA_OP_END(ctx);
}
