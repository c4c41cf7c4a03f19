/* reduce.cu: the non-template halves of reduce.cuh's deterministic sums. */
#include "kernels/cuda/reduce.cuh"

__global__ void cuda__colsum_finish_kernel(float *out, const float *part, int groups, int c,
                                           int accumulate)
{
    for (size_t ch = blockIdx.x * (size_t)blockDim.x + threadIdx.x; ch < (size_t)c;
         ch += (size_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int g = 0; g < groups; g++) s += part[(size_t)g * c + ch];
        out[ch] = accumulate ? out[ch] + s : s;
    }
}

__global__ void cuda__sum_finish_kernel(float *out, const float *part, int groups, int accumulate)
{
    __shared__ float s[REDUCE_SUM_THREADS];
    float acc = 0.0f;
    for (int g = threadIdx.x; g < groups; g += REDUCE_SUM_THREADS) acc += part[g];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int half = REDUCE_SUM_THREADS / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) s[threadIdx.x] += s[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = accumulate ? out[0] + s[0] : s[0];
}

int cuda__colsum_groups(const OpsCtx *ctx, size_t rows, int c)
{
    size_t by_rows = (rows + REDUCE_TR - 1) / REDUCE_TR;
    size_t by_scratch = ctx->reduce_floats / (size_t)c;
    size_t g = by_rows < REDUCE_MAX_GROUPS ? by_rows : REDUCE_MAX_GROUPS;
    if (g > by_scratch) g = by_scratch;
    ASSERT(g >= 1); /* ctx->reduce holds at least one row of partials for any channel count used */
    return (int)g;
}
