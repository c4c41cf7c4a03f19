/* elementwise_backward.cu: the CUDA backend's backward passes of the memory-bound ops of
 * elementwise.cu: activations, gradient accumulation (the backward of add), BiFPN fusion,
 * squeeze-excitation, SAME max pooling and legacy nearest upsampling, NHWC. Each follows its
 * CPU reference (kernels/cpu/norm.c, elementwise.c, se.c, resample.c) expression for expression,
 * and, as every backward, ACCUMULATES (+=) into the gradients it produces.
 *
 * Activations and their gradients (x, dy, dx, ins, dins) are of the context's storage type T
 * (cuda_common.cuh): a dx += reads the old value, adds in float and rounds the sum once when it
 * stores it. Fusion edge weights, SE's saved tensors and parameter gradients are float.
 *
 * Determinism without atomics: where several outputs feed one input (overlapping pool windows,
 * upsampled copies) each input cell gathers its contributions itself, in the order the CPU's
 * scatter adds them, so those results are bitwise the CPU's but for fused multiply-adds. Sums over
 * many values (fusion's dw) go through reduce.cuh; SE's per-image sums have a kernel of their own
 * with a fixed tree, in double as the CPU.
 *
 * SE backward keeps its per-image intermediates (da_e, da_r, dpool) in cuda__scratch. */
#include "kernels/cuda/reduce.cuh"

/* Up to four fusion tensors travel by value in the kernel's parameters (as elementwise.cu's
 * FuseInputs): no host-to-device copy of the pointer array, nothing to synchronize on. */
template <typename T> struct FuseInputs {
    const T *p[4];
};

template <typename T> struct FuseGrads {
    T *p[4]; /* NULL: that input needs no gradient */
};

enum { TILE_C = 32, SE_ROWS = 32 };

/* ---- device helpers ------------------------------------------------------------------------------ */

/* Element j's share of d out / d w_i = relu'(w_i) sum_j dy (x_i - out) / denom, with out
 * recomputed in double as the CPU's fuse_grad_chunk. Each term is divided by denom here (the CPU
 * divides the total), so the sum can add straight into dw; where w_i <= 0 every term is 0 and dw_i
 * keeps its value, as the CPU skips it. */
template <typename T>
static __device__ __forceinline__ float fuse_dw_term(const FuseInputs<T> &in, const T *dy,
                                                     const float *w, int k, int i, size_t j)
{
    float wr[4];
    const float denom = cuda__fuse_weights(wr, w, k);
    if (!(w[i] > 0.0f)) return 0.0f;
    double out = 0.0;
    for (int m = 0; m < k; m++) out += (double)wr[m] * cuda__ld(in.p[m], j);
    out /= denom;
    return (float)((double)cuda__ld(dy, j) * (cuda__ld(in.p[i], j) - out) / denom);
}

/* PyTorch's legacy nearest index, elementwise.cu's and the CPU's nearest_src verbatim. */
static __device__ __forceinline__ int nearest_src(int dst, int in, int out)
{
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    float scale = (float)in / (float)out;
    int src = (int)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

/* [*begin, *end): the destinations along one axis that copy source i. nearest_src is monotone
 * (a float product by a positive constant rounds monotonically, and so do floor and min), so they
 * are contiguous; the guess i * out / in is corrected by stepping, checked against nearest_src
 * itself, so rounding in the guess cannot drop or add a cell. */
static __device__ void nearest_range(int i, int in, int out, int *begin, int *end)
{
    long long guess = (long long)i * out / in;
    int b = guess < out ? (int)guess : out;
    while (b > 0 && nearest_src(b - 1, in, out) >= i) b--;
    while (b < out && nearest_src(b, in, out) < i) b++;
    int e = b;
    while (e < out && nearest_src(e, in, out) == i) e++;
    *begin = b;
    *end = e;
}

/* floor(a / b) for b > 0 and any sign of a. */
static __device__ __forceinline__ int floor_div(int a, int b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* [*begin, *end]: the output positions along one axis whose pool window covers input i, i.e.
 * o * stride - pad <= i <= o * stride - pad + k - 1, within [0, out). */
static __device__ __forceinline__ void pool_range(int i, int k, int stride, int pad, int out,
                                                  int *begin, int *end)
{
    int lo = floor_div(i + pad - k + 1 + stride - 1, stride); /* ceil((i + pad - k + 1) / s) */
    int hi = floor_div(i + pad, stride);
    *begin = lo > 0 ? lo : 0;
    *end = hi < out - 1 ? hi : out - 1;
}

/* ---- kernels ------------------------------------------------------------------------------------ */

template <typename T>
__global__ void act_backward_kernel(T *dx, const T *dy, const T *x, Act act, size_t count)
{
    /* Without an activation x is never read (the CPU does not read it either). */
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = cuda__ld(dy, i);
        cuda__st(dx, i,
                 cuda__ld(dx, i) + (act == ACT_NONE ? g : g * cuda__act_grad(cuda__ld(x, i), act)));
    }
}

template <typename T> __global__ void accumulate_kernel(T *dst, const T *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(dst, i, cuda__ld(dst, i) + cuda__ld(src, i));
}

/* dins[i] += (dy * relu(w_i)) / denom, or dy for sum fusion; inputs are visited in order within
 * one thread, so even two entries naming the same tensor add up as on the CPU. */
template <typename T>
__global__ void fuse_backward_kernel(FuseGrads<T> dins, const T *dy, const float *w, int k,
                                     size_t count)
{
    float wr[4];
    const float denom = cuda__fuse_weights(wr, w, k);
    for (size_t j = blockIdx.x * (size_t)blockDim.x + threadIdx.x; j < count;
         j += (size_t)gridDim.x * blockDim.x) {
        const float g = cuda__ld(dy, j);
        for (int i = 0; i < k; i++)
            if (dins.p[i])
                cuda__st(dins.p[i], j, cuda__ld(dins.p[i], j) + (w ? (g * wr[i]) / denom : g));
    }
}

/* SE: dgate (N, C) = sum over HW of dy * x, in double as the CPU's column dots, then
 * da_e = dgate * gate (1 - gate), the gradient at the excite pre-sigmoid, in the CPU's order.
 * Grid (ceil(C/TILE_C), N), block (TILE_C, SE_ROWS), as se_pool_kernel: each thread sums every
 * SE_ROWS-th row of one channel, then the column of partials folds in shared memory. */
template <typename T>
__global__ void se_gate_grad_kernel(float *da_e, const T *dy, const T *x, const float *gate, int hw,
                                    int c)
{
    __shared__ double part[SE_ROWS][TILE_C + 1];
    const int ch = blockIdx.x * TILE_C + threadIdx.x;
    const size_t b = blockIdx.y;
    double acc = 0.0;
    if (ch < c)
        for (int i = threadIdx.y; i < hw; i += SE_ROWS) {
            const size_t at = (b * hw + i) * c + ch;
            acc += (double)cuda__ld(dy, at) * cuda__ld(x, at);
        }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int half = SE_ROWS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.y < half)
            part[threadIdx.y][threadIdx.x] += part[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && ch < c) {
        const float g = gate[b * c + ch];
        da_e[b * c + ch] = (float)part[0][threadIdx.x] * g * (1.0f - g);
    }
}

/* SE: dw_e (C, Cr) += da_e^T hidden and db_e (C) += sum da_e, one thread per weight, adding the
 * images in order as the CPU does image by image. */
__global__ void se_expand_param_kernel(float *dw_e, float *db_e, const float *da_e,
                                       const float *hidden, int n, int c, int cr)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)c * cr;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t ch = i / cr;
        const int r = (int)(i % cr);
        float acc = dw_e[i];
        for (int b = 0; b < n; b++) acc += da_e[(size_t)b * c + ch] * hidden[(size_t)b * cr + r];
        dw_e[i] = acc;
        if (r == 0) {
            float sum = db_e[ch];
            for (int b = 0; b < n; b++) sum += da_e[(size_t)b * c + ch];
            db_e[ch] = sum;
        }
    }
}

/* SE: da_r (N, Cr) = (w_e^T da_e) * silu'(a_r), with a_r the pre-SiLU hidden recomputed as the
 * forward's se_reduce_kernel sums it (b_r + the lanes' shuffle-summed dot). One warp per
 * (image, r): the lanes stride over channels, and a shuffle tree sums both dot products. */
__global__ void se_reduce_grad_kernel(float *da_r, const float *da_e, const float *pooled,
                                      const float *w_r, const float *b_r, const float *w_e, int n,
                                      int c, int cr)
{
    const int lane = threadIdx.x % 32;
    const size_t warps = (size_t)gridDim.x * blockDim.x / 32;
    for (size_t wi = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32; wi < (size_t)n * cr;
         wi += warps) {
        const size_t b = wi / cr;
        const int r = (int)(wi % cr);
        float dh = 0.0f, a = 0.0f;
        for (int ch = lane; ch < c; ch += 32) {
            dh += w_e[(size_t)ch * cr + r] * da_e[b * c + ch];
            a += w_r[(size_t)r * c + ch] * pooled[b * c + ch];
        }
        for (int off = 16; off > 0; off /= 2) {
            dh += __shfl_down_sync(0xffffffffu, dh, off);
            a += __shfl_down_sync(0xffffffffu, a, off);
        }
        if (lane == 0) da_r[wi] = dh * cuda__act_grad(b_r[r] + a, ACT_SILU);
    }
}

/* SE: dw_r (Cr, C) += da_r^T pooled and db_r (Cr) += sum da_r, one thread per weight, images in
 * order. */
__global__ void se_reduce_param_kernel(float *dw_r, float *db_r, const float *da_r,
                                       const float *pooled, int n, int c, int cr)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)cr * c;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / c;
        const int ch = (int)(i % c);
        float acc = dw_r[i];
        for (int b = 0; b < n; b++) acc += da_r[(size_t)b * cr + r] * pooled[(size_t)b * c + ch];
        dw_r[i] = acc;
        if (ch == 0) {
            float sum = db_r[r];
            for (int b = 0; b < n; b++) sum += da_r[(size_t)b * cr + r];
            db_r[r] = sum;
        }
    }
}

/* SE: dpool (N, C) = (w_r^T da_r) / HW, the mean's gradient, summed over r in the CPU's order. */
__global__ void se_pool_grad_kernel(float *dpool, const float *da_r, const float *w_r, int n,
                                    int hw, int c, int cr)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (size_t)n * c;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / c;
        const int ch = (int)(i % c);
        float acc = 0.0f;
        for (int r = 0; r < cr; r++) acc += w_r[(size_t)r * c + ch] * da_r[b * cr + r];
        dpool[i] = acc / (float)hw;
    }
}

/* SE: dx (N, HW, C) += dy * gate + dpool, broadcast over HW. Grid (blocks, N): the y index is the
 * image, so the gate and dpool rows are fixed per block. */
template <typename T>
__global__ void se_dx_kernel(T *dx, const T *dy, const float *gate, const float *dpool, int hw,
                             int c)
{
    const size_t per_image = (size_t)hw * c;
    const float *g = gate + blockIdx.y * (size_t)c, *dp = dpool + blockIdx.y * (size_t)c;
    const size_t base = blockIdx.y * per_image;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < per_image;
         i += (size_t)gridDim.x * blockDim.x) {
        const int ch = (int)(i % c);
        cuda__st(dx, base + i, cuda__ld(dx, base + i) + (cuda__ld(dy, base + i) * g[ch] + dp[ch]));
    }
}

/* One thread per input value gathers the gradients of the windows whose maximum it is: for each
 * output (oy, ox) whose window covers it, in the CPU's scan order (oy outer, ox inner), the window's
 * first maximum (strict >, as maxpool_forward and the CPU's pool_window_max) is found again, and
 * dy is added if it is this cell. Overlapping windows (stride < kernel) need no atomics, and the
 * additions happen in the CPU's order. */
template <typename T>
__global__ void maxpool_backward_kernel(T *dx, const T *dy, const T *x, PoolShape s)
{
    const size_t total = (size_t)s.n * s.h * s.w * s.c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, s.h, s.w, s.c);
        const T *img = x + p.n * s.h * s.w * s.c + p.c;
        const T *g = dy + p.n * s.oh * s.ow * s.c + p.c;
        int oy0, oy1, ox0, ox1;
        pool_range(p.y, s.kh, s.stride, s.pad_top, s.oh, &oy0, &oy1);
        pool_range(p.x, s.kw, s.stride, s.pad_left, s.ow, &ox0, &ox1);
        float acc = cuda__ld(dx, i);
        for (int oy = oy0; oy <= oy1; oy++) {
            for (int ox = ox0; ox <= ox1; ox++) {
                float best = -INFINITY;
                int by = -1, bx = -1; /* stays -1 where nothing beats -inf: no gradient, as the CPU */
                cuda__window(oy, ox, s.h, s.w, s.kh, s.kw, s.stride, s.pad_top, s.pad_left,
                             [&](int iy, int ix, int) {
                                 float v = cuda__ld(img, ((size_t)iy * s.w + ix) * s.c);
                                 if (v > best) {
                                     best = v;
                                     by = iy;
                                     bx = ix;
                                 }
                             });
                if (by == p.y && bx == p.x) acc += cuda__ld(g, ((size_t)oy * s.ow + ox) * s.c);
            }
        }
        cuda__st(dx, i, acc);
    }
}

/* One thread per input value sums dy over the output cells that copied it, oy outer and ox inner
 * as the CPU's gather adds them. */
template <typename T>
__global__ void upsample_nearest_backward_kernel(T *dx, const T *dy, int n, int h, int w, int c,
                                                 int oh, int ow)
{
    const size_t total = (size_t)n * h * w * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, h, w, c);
        int oy0, oy1, ox0, ox1;
        nearest_range(p.y, h, oh, &oy0, &oy1);
        nearest_range(p.x, w, ow, &ox0, &ox1);
        const T *g = dy + p.n * oh * ow * c + p.c;
        float acc = cuda__ld(dx, i);
        for (int oy = oy0; oy < oy1; oy++)
            for (int ox = ox0; ox < ox1; ox++) acc += cuda__ld(g, ((size_t)oy * ow + ox) * c);
        cuda__st(dx, i, acc);
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

/* Each op checks its sizes, launches its kernels for the context's storage type T (the *_t
 * functions, through CUDA_ACT_DISPATCH) and ends with CUDA_OP_END. */

template <typename T>
static void act_backward_t(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                           size_t count)
{
    act_backward_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(dx), cuda__as<T>(dy), cuda__as<T>(x), act, count);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                        size_t count)
{
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, act_backward_t, ctx, dx, dy, x, act, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void accumulate_t(OpsCtx *ctx, float *dst, const float *src, size_t count)
{
    accumulate_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(dst), cuda__as<T>(src), count);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count)
{
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, accumulate_t, ctx, dst, src, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void fuse_backward_t(OpsCtx *ctx, float *const *dins, float *dw, const float *dy_f,
                            const float *const *ins, const float *w, int k, size_t count)
{
    const T *dy = cuda__as<T>(dy_f);
    FuseGrads<T> d = {{NULL, NULL, NULL, NULL}};
    int any = 0;
    for (int i = 0; i < k; i++) {
        d.p[i] = cuda__as<T>(dins[i]);
        any |= dins[i] != NULL;
    }
    if (any) {
        fuse_backward_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(d, dy, w, k,
                                                                                     count);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dw) {
        FuseInputs<T> in = {{NULL, NULL, NULL, NULL}};
        for (int i = 0; i < k; i++) in.p[i] = cuda__as<T>(ins[i]);
        /* One deterministic sum per edge weight, each adding into its own dw[i]. */
        for (int i = 0; i < k; i++)
            cuda__sum(ctx, dw + i, 1, count,
                      [=] __device__(size_t j) { return fuse_dw_term(in, dy, w, k, i, j); });
    }
}

void cuda__fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                         const float *const *ins, const float *w, int k, size_t count)
{
    ASSERT(k >= 1 && k <= 4);
    ASSERT(w || !dw);
    if (!count) return;
    CUDA_ACT_DISPATCH(ctx, fuse_backward_t, ctx, dins, dw, dy, ins, w, k, count);
    CUDA_OP_END(ctx);
}

template <typename T>
static void se_backward_t(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e,
                          float *db_e, const float *dy, const float *x, const float *pooled,
                          const float *hidden, const float *gate, const float *w_r,
                          const float *b_r, const float *w_e, int n, int hw, int c, int cr)
{
    /* Intermediates: da_e (N, C), da_r (N, Cr), dpool (N, C). */
    const size_t nc = (size_t)n * c, ncr = (size_t)n * cr;
    float *da_e = cuda__scratch(ctx, 2 * nc + ncr), *da_r = da_e + nc, *dpool = da_r + ncr;

    dim3 gate_grid((c + TILE_C - 1) / TILE_C, n);
    se_gate_grad_kernel<T><<<gate_grid, dim3(TILE_C, SE_ROWS), 0, ctx->stream>>>(
        da_e, cuda__as<T>(dy), cuda__as<T>(x), gate, hw, c);
    CUDA_CHECK(cudaGetLastError());
    se_expand_param_kernel<<<cuda__blocks((size_t)c * cr), CUDA_BLOCK, 0, ctx->stream>>>(
        dw_e, db_e, da_e, hidden, n, c, cr);
    CUDA_CHECK(cudaGetLastError());
    se_reduce_grad_kernel<<<cuda__blocks(ncr * 32), CUDA_BLOCK, 0, ctx->stream>>>(
        da_r, da_e, pooled, w_r, b_r, w_e, n, c, cr);
    CUDA_CHECK(cudaGetLastError());
    se_reduce_param_kernel<<<cuda__blocks((size_t)cr * c), CUDA_BLOCK, 0, ctx->stream>>>(
        dw_r, db_r, da_r, pooled, n, c, cr);
    CUDA_CHECK(cudaGetLastError());
    if (dx) {
        se_pool_grad_kernel<<<cuda__blocks(nc), CUDA_BLOCK, 0, ctx->stream>>>(dpool, da_r, w_r, n,
                                                                              hw, c, cr);
        CUDA_CHECK(cudaGetLastError());
        dim3 dx_grid(cuda__blocks((size_t)hw * c), n);
        se_dx_kernel<T><<<dx_grid, CUDA_BLOCK, 0, ctx->stream>>>(cuda__as<T>(dx), cuda__as<T>(dy),
                                                                 gate, dpool, hw, c);
        CUDA_CHECK(cudaGetLastError());
    }
}

void cuda__se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e, float *db_e,
                       const float *dy, const float *x, const float *pooled, const float *hidden,
                       const float *gate, const float *w_r, const float *b_r, const float *w_e,
                       int n, int hw, int c, int cr)
{
    ASSERT((size_t)n <= CUDA_MAX_BLOCKS && cr > 0);
    if (n <= 0 || hw <= 0 || c <= 0) return;
    CUDA_ACT_DISPATCH(ctx, se_backward_t, ctx, dx, dw_r, db_r, dw_e, db_e, dy, x, pooled, hidden,
                      gate, w_r, b_r, w_e, n, hw, c, cr);
    CUDA_OP_END(ctx);
}

template <typename T>
static void maxpool_backward_t(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                               const PoolShape *s, size_t total)
{
    maxpool_backward_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(dx), cuda__as<T>(dy), cuda__as<T>(x), *s);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                            const PoolShape *s)
{
    ASSERT(s->stride > 0);
    size_t total = (size_t)s->n * s->h * s->w * s->c;
    if (!total) return;
    CUDA_ACT_DISPATCH(ctx, maxpool_backward_t, ctx, dx, dy, x, s, total);
    CUDA_OP_END(ctx);
}

template <typename T>
static void upsample_nearest_backward_t(OpsCtx *ctx, float *dx, const float *dy, int n, int h,
                                        int w, int c, int oh, int ow, size_t total)
{
    upsample_nearest_backward_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(dx), cuda__as<T>(dy), n, h, w, c, oh, ow);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h, int w,
                                     int c, int oh, int ow)
{
    size_t total = (size_t)n * h * w * c;
    if (!total) return;
    CUDA_ACT_DISPATCH(ctx, upsample_nearest_backward_t, ctx, dx, dy, n, h, w, c, oh, ow, total);
    CUDA_OP_END(ctx);
}
