/* elementwise.cu: the CUDA backend's memory-bound ops, NHWC: inference batch norm (+ act),
 * activations, residual add, BiFPN fusion, squeeze-excitation, SAME max pooling and legacy nearest
 * upsampling. Each follows its CPU reference (kernels/cpu/norm.c, elementwise.c, se.c,
 * resample.c) expression for expression, so results differ only where the GPU fuses a multiply and
 * an add, or, in SE's reductions, sums in another order.
 *
 * Activations are of the context's storage type T (cuda_common.cuh, mixed precision): kernels
 * read them with cuda__ld and write them with cuda__st, and compute in float. Parameters and SE's
 * pooled/hidden/gate are float in every precision.
 *
 * Index maps put the channel innermost on consecutive threads, so every warp reads and writes
 * contiguous memory. Per-channel parameters (batch norm's folded scale and shift) are computed once
 * per thread and reused over the rows that thread visits. */
#include "kernels/cuda/cuda_common.cuh"

/* Up to four fusion inputs travel by value in the kernel's parameters: no host-to-device copy of
 * the pointer array, and nothing to synchronize on. */
template <typename T> struct FuseInputs {
    const T *p[4];
};

enum { TILE_C = 32, TILE_R = 8, SE_POOL_ROWS = 32 };

/* ---- kernels ------------------------------------------------------------------------------------ */

/* Block (TILE_C, TILE_R): threadIdx.x picks the channel, the y dimension strides over rows. */
template <typename T>
__global__ void bn_infer_forward_kernel(T *out, const T *in, const float *gamma, const float *beta,
                                        const float *mean, const float *var, float eps, Act act,
                                        size_t rows, int c)
{
    int ch = blockIdx.x * TILE_C + threadIdx.x;
    if (ch >= c) return;
    /* Folded as the CPU folds it: in * scale + shift. */
    float scale = gamma[ch] * (1.0f / sqrtf(var[ch] + eps));
    float shift = beta[ch] - mean[ch] * scale;
    for (size_t r = blockIdx.y * (size_t)TILE_R + threadIdx.y; r < rows;
         r += (size_t)gridDim.y * TILE_R) {
        size_t i = r * c + ch;
        cuda__st(out, i, cuda__act(cuda__ld(in, i) * scale + shift, act));
    }
}

template <typename T>
__global__ void act_forward_kernel(T *out, const T *in, Act act, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(out, i, cuda__act(cuda__ld(in, i), act));
}

template <typename T>
__global__ void add_forward_kernel(T *out, const T *a, const T *b, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(out, i, cuda__ld(a, i) + cuda__ld(b, i));
}

/* The edge weights stay on the device (they are trained parameters); every thread folds them the
 * way the CPU does, in input order, so denom is bitwise the CPU's. Each term is
 * (x_i * relu(w_i)) / denom, summed in input order, as effdet computes it. */
template <typename T>
__global__ void fuse_forward_kernel(T *out, FuseInputs<T> ins, const float *w, int k, size_t count)
{
    float wr[4];
    const float denom = cuda__fuse_weights(wr, w, k);
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < count;
         j += (size_t)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < k; i++) {
            const float x = cuda__ld(ins.p[i], j);
            acc += w ? (x * wr[i]) / denom : x;
        }
        cuda__st(out, j, acc);
    }
}

/* SE squeeze: pooled (N, C) = mean over HW of x (N, HW, C). Grid (ceil(C/TILE_C), N), block
 * (TILE_C, SE_POOL_ROWS): each thread sums every SE_POOL_ROWS-th row of one channel, then the
 * column of partial sums is reduced in shared memory. Deterministic: no atomics. The grid has only
 * N * ceil(C/32) blocks, few for the early SE layers (large HW, small C); splitting HW over more
 * blocks, with partial sums in the workspace, is the optimization to measure there. */
template <typename T> __global__ void se_pool_kernel(float *pooled, const T *x, int hw, int c)
{
    __shared__ float part[SE_POOL_ROWS][TILE_C + 1];
    int ch = blockIdx.x * TILE_C + threadIdx.x;
    size_t b = blockIdx.y;
    float acc = 0.0f;
    if (ch < c)
        for (int i = threadIdx.y; i < hw; i += SE_POOL_ROWS)
            acc += cuda__ld(x, (b * hw + i) * c + ch);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int half = SE_POOL_ROWS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.y < half)
            part[threadIdx.y][threadIdx.x] += part[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && ch < c) pooled[b * c + ch] = part[0][threadIdx.x] / (float)hw;
}

/* SE reduce: hidden (N, Cr) = silu(pooled . w_r^T + b_r), one warp per (image, r): the lanes read
 * a row of w_r (Cr, C) contiguously, and a shuffle tree sums their partial dot products. */
__global__ void se_reduce_kernel(float *hidden, const float *pooled, const float *w_r,
                                 const float *b_r, int n, int c, int cr)
{
    const int lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t wi = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32; wi < (size_t)n * cr;
         wi += warps) {
        size_t b = wi / cr;
        int r = (int)(wi % cr);
        float acc = 0.0f;
        for (int ch = lane; ch < c; ch += 32) acc += w_r[(size_t)r * c + ch] * pooled[b * c + ch];
        for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) hidden[wi] = cuda__silu(b_r[r] + acc);
    }
}

/* SE expand: gate (N, C) = sigmoid(hidden . w_e^T + b_e), one thread per (image, channel), summed
 * over r in the CPU's order, starting from the bias. */
__global__ void se_expand_kernel(float *gate, const float *hidden, const float *w_e,
                                 const float *b_e, int n, int c, int cr)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n * c;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / c;
        int ch = (int)(i % c);
        float acc = b_e[ch];
        for (int r = 0; r < cr; r++) acc += w_e[(size_t)ch * cr + r] * hidden[b * cr + r];
        gate[i] = cuda__sigmoid(acc);
    }
}

/* SE excite: out (N, HW, C) = x * gate (N, C), broadcast over HW. Grid (blocks, N): the y index
 * is the image, so the gate row is fixed per block. */
template <typename T>
__global__ void se_scale_kernel(T *out, const T *x, const float *gate, int hw, int c)
{
    const size_t per_image = (size_t)hw * c;
    const float *g = gate + blockIdx.y * (size_t)c;
    const size_t base = blockIdx.y * per_image;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < per_image;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(out, base + i, cuda__ld(x, base + i) * g[i % c]);
}

/* Max over the window's cells that lie inside the input: padding is -inf, so it never wins, and a
 * window entirely in padding (impossible with SAME) would give -inf as on the CPU. */
template <typename T> __global__ void maxpool_forward_kernel(T *out, const T *in, PoolShape s)
{
    const size_t total = (size_t)s.n * s.oh * s.ow * s.c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex o = cuda__nhwc(i, s.oh, s.ow, s.c);
        const T *img = in + o.n * s.h * s.w * s.c + o.c;
        float m = -INFINITY;
        cuda__window(o.y, o.x, s.h, s.w, s.kh, s.kw, s.stride, s.pad_top, s.pad_left,
                     [&](int iy, int ix, int) {
                         float v = cuda__ld(img, ((size_t)iy * s.w + ix) * s.c);
                         m = v > m ? v : m; /* the CPU's comparison, so NaN handling matches too */
                     });
        cuda__st(out, i, m);
    }
}

/* PyTorch's legacy nearest index, the CPU's nearest_src (kernels/cpu/resample.c) verbatim: the
 * scale is in/out rounded to float32 and the product is floored in float. IEEE division and
 * multiplication (no --use_fast_math) make it bitwise the CPU's. */
__device__ __forceinline__ int nearest_src(int dst, int in, int out)
{
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

/* A copy: the value is stored in the type it was read from, so nothing is rounded. */
template <typename T>
__global__ void upsample_nearest_forward_kernel(T *out, const T *in, int n, int h, int w, int c,
                                                int oh, int ow)
{
    const size_t total = (size_t)n * oh * ow * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex o = cuda__nhwc(i, oh, ow, c);
        int iy = nearest_src(o.y, h, oh), ix = nearest_src(o.x, w, ow);
        out[i] = in[((o.n * h + iy) * w + ix) * c + o.c];
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

/* Each op checks its sizes, launches its kernels for the context's storage type T (the *_t
 * functions, through CUDA_ACT_DISPATCH) and ends with CUDA_OP_END. */

template <typename T>
static void bn_infer_forward_t(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                               const float *beta, const float *mean, const float *var, float eps,
                               Act act, size_t rows, int c)
{
    dim3 grid((c + TILE_C - 1) / TILE_C, cuda__cap_blocks((rows + TILE_R - 1) / TILE_R));
    bn_infer_forward_kernel<T><<<grid, dim3(TILE_C, TILE_R), 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(in), gamma, beta, mean, var, eps, act, rows, c);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                            const float *beta, const float *mean, const float *var, float eps,
                            Act act, size_t rows, int c)
{
    if (!rows || c <= 0) return;
    CUDA_ACT_DISPATCH(ctx, bn_infer_forward_t, ctx, out, in, gamma, beta, mean, var, eps, act,
                      rows, c);
    CUDA_OP_END(ctx);
}

template <typename T>
static void act_forward_t(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
    act_forward_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(in), act, count);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, act_forward_t, ctx, out, in, act, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void add_forward_t(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count)
{
    add_forward_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(a), cuda__as<T>(b), count);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count)
{
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, add_forward_t, ctx, out, a, b, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void fuse_forward_t(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                           size_t count)
{
    FuseInputs<T> in = {{NULL, NULL, NULL, NULL}};
    for (int i = 0; i < k; i++) in.p[i] = cuda__as<T>(ins[i]);
    fuse_forward_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), in, w, k, count);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                        size_t count)
{
    ASSERT(k >= 1 && k <= 4);
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, fuse_forward_t, ctx, out, ins, w, k, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void se_forward_t(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                         const float *x, const float *w_r, const float *b_r, const float *w_e,
                         const float *b_e, int n, int hw, int c, int cr)
{
    dim3 pool_grid((c + TILE_C - 1) / TILE_C, n);
    se_pool_kernel<T><<<pool_grid, dim3(TILE_C, SE_POOL_ROWS), 0, ctx->stream>>>(
        pooled, cuda__as<T>(x), hw, c);
    CUDA_CHECK(cudaGetLastError());
    se_reduce_kernel<<<cuda__blocks((size_t)n * cr * 32), CUDA_BLOCK, 0, ctx->stream>>>(
        hidden, pooled, w_r, b_r, n, c, cr);
    CUDA_CHECK(cudaGetLastError());
    se_expand_kernel<<<cuda__blocks((size_t)n * c), CUDA_BLOCK, 0, ctx->stream>>>(
        gate, hidden, w_e, b_e, n, c, cr);
    CUDA_CHECK(cudaGetLastError());
    dim3 scale_grid(cuda__blocks((size_t)hw * c), n);
    se_scale_kernel<T><<<scale_grid, CUDA_BLOCK, 0, ctx->stream>>>(cuda__as<T>(out),
                                                                   cuda__as<T>(x), gate, hw, c);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                      const float *x, const float *w_r, const float *b_r, const float *w_e,
                      const float *b_e, int n, int hw, int c, int cr)
{
    ASSERT((size_t)n <= CUDA_MAX_BLOCKS && cr > 0);
    if (n <= 0 || hw <= 0 || c <= 0) return;
    CUDA_ACT_DISPATCH(ctx, se_forward_t, ctx, out, pooled, hidden, gate, x, w_r, b_r, w_e, b_e, n,
                      hw, c, cr);
    CUDA_OP_END(ctx);
}

template <typename T>
static void maxpool_forward_t(OpsCtx *ctx, float *out, const float *in, const PoolShape *s,
                              size_t total)
{
    maxpool_forward_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(in), *s);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s)
{
    ASSERT(s->stride > 0);
    size_t total = (size_t)s->n * s->oh * s->ow * s->c;
    if (!total) return;
    CUDA_ACT_DISPATCH(ctx, maxpool_forward_t, ctx, out, in, s, total);
    CUDA_OP_END(ctx);
}

template <typename T>
static void upsample_nearest_forward_t(OpsCtx *ctx, float *out, const float *in, int n, int h,
                                       int w, int c, int oh, int ow, size_t total)
{
    upsample_nearest_forward_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(in), n, h, w, c, oh, ow);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__upsample_nearest_forward(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                    int c, int oh, int ow)
{
    size_t total = (size_t)n * oh * ow * c;
    if (!total) return;
    CUDA_ACT_DISPATCH(ctx, upsample_nearest_forward_t, ctx, out, in, n, h, w, c, oh, ow, total);
    CUDA_OP_END(ctx);
}
