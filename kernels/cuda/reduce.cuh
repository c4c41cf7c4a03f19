/* reduce.cuh: deterministic sums for the CUDA backward passes, loss and optimizer.
 *
 * Why not atomics: float addition is not associative, so atomicAdd results depend on the order
 * blocks happen to run, and a resumed training run would drift from the run it continues. As the
 * CPU does (kernels/cpu/reduce.c), the work is cut into a number of groups fixed by the sizes
 * alone; each group writes its partial sum into the context's reduction scratch (ctx->reduce,
 * reserved once at ctx_create), and a second kernel adds the partials in group order. Same inputs,
 * same bits, on every run.
 *
 * Two shapes:
 * - cuda__colsum(ctx, out, accumulate, rows, c, f): out[ch] (+)= sum over r < rows of f(r, ch),
 *   a per-channel sum over NHWC rows (bias and BN gradients, depthwise weight gradients).
 * - cuda__sum(ctx, out, accumulate, count, f): out[0] (+)= sum over i < count of f(i).
 * `f` is a __device__ lambda (nvcc --extended-lambda) returning float; partials are kept in float,
 * summed in a fixed tree inside a block. */
#ifndef EFFDET_CUDA_REDUCE_CUH
#define EFFDET_CUDA_REDUCE_CUH

#include "kernels/cuda/cuda_common.cuh"

enum { REDUCE_TC = 32, REDUCE_TR = 8, REDUCE_MAX_GROUPS = 512, REDUCE_SUM_THREADS = 256 };

/* Block (REDUCE_TC, REDUCE_TR), grid (ceil(c / TC), groups): group g sums rows g*TR + ty,
 * stepping by groups*TR, then the block's TR rows of partials are folded in shared memory. */
template <typename F>
__global__ void cuda__colsum_part_kernel(float *part, size_t rows, int c, F f)
{
    __shared__ float s[REDUCE_TR][REDUCE_TC + 1];
    const int ch = blockIdx.x * REDUCE_TC + threadIdx.x;
    float acc = 0.0f;
    if (ch < c)
        for (size_t r = blockIdx.y * (size_t)REDUCE_TR + threadIdx.y; r < rows;
             r += (size_t)gridDim.y * REDUCE_TR)
            acc += f(r, ch);
    s[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    for (int half = REDUCE_TR / 2; half > 0; half /= 2) {
        if ((int)threadIdx.y < half) s[threadIdx.y][threadIdx.x] += s[threadIdx.y + half][threadIdx.x];
        __syncthreads();
    }
    if (threadIdx.y == 0 && ch < c) part[(size_t)blockIdx.y * c + ch] = s[0][threadIdx.x];
}

/* out[ch] (+)= sum of the groups' partials, in group order. */
__global__ void cuda__colsum_finish_kernel(float *out, const float *part, int groups, int c,
                                           int accumulate);

/* Groups for a column sum: enough blocks to fill the GPU, bounded by the scratch and by rows. */
int cuda__colsum_groups(const OpsCtx *ctx, size_t rows, int c);

template <typename F>
void cuda__colsum(OpsCtx *ctx, float *out, int accumulate, size_t rows, int c, F f)
{
    if (c <= 0) return;
    if (!rows) {
        if (!accumulate) CUDA_CHECK(cudaMemsetAsync(out, 0, (size_t)c * sizeof(float), ctx->stream));
        return;
    }
    const int groups = cuda__colsum_groups(ctx, rows, c);
    dim3 grid((c + REDUCE_TC - 1) / REDUCE_TC, groups);
    cuda__colsum_part_kernel<<<grid, dim3(REDUCE_TC, REDUCE_TR), 0, ctx->stream>>>(ctx->reduce,
                                                                                 rows, c, f);
    CUDA_CHECK(cudaGetLastError());
    cuda__colsum_finish_kernel<<<cuda__blocks((size_t)c), CUDA_BLOCK, 0, ctx->stream>>>(
        out, ctx->reduce, groups, c, accumulate);
    CUDA_CHECK(cudaGetLastError());
}

/* Grid-stride partial sums, one per block, folded in shared memory. */
template <typename F>
__global__ void cuda__sum_part_kernel(float *part, size_t count, F f)
{
    __shared__ float s[REDUCE_SUM_THREADS];
    float acc = 0.0f;
    for (size_t i = blockIdx.x * (size_t)REDUCE_SUM_THREADS + threadIdx.x; i < count;
         i += (size_t)gridDim.x * REDUCE_SUM_THREADS)
        acc += f(i);
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int half = REDUCE_SUM_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = s[0];
}

/* out[0] (+)= sum of `groups` partials (one block, fixed tree). */
__global__ void cuda__sum_finish_kernel(float *out, const float *part, int groups, int accumulate);

template <typename F>
void cuda__sum(OpsCtx *ctx, float *out, int accumulate, size_t count, F f)
{
    size_t want = (count + REDUCE_SUM_THREADS - 1) / REDUCE_SUM_THREADS;
    const int groups = (int)(want < REDUCE_MAX_GROUPS ? (want ? want : 1) : REDUCE_MAX_GROUPS);
    cuda__sum_part_kernel<<<groups, REDUCE_SUM_THREADS, 0, ctx->stream>>>(ctx->reduce, count, f);
    CUDA_CHECK(cudaGetLastError());
    cuda__sum_finish_kernel<<<1, REDUCE_SUM_THREADS, 0, ctx->stream>>>(out, ctx->reduce, groups,
                                                                       accumulate);
    CUDA_CHECK(cudaGetLastError());
}

#endif
