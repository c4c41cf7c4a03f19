/* precision.cu: mixed precision in the CUDA backend (kernels/ops.h): set_precision, cast_params
 * and act_upload/act_download, the conversions between fp32 and the activation storage type.
 *
 * A context stores activations as float (the default), __half or __nv_bfloat16 (ctx->prec); the
 * ops pick their kernels' instantiation from it (CUDA_ACT_DISPATCH, cuda_common.cuh). Conversions
 * to the 2-byte types round to nearest even and overflow to +-inf, as the CPU's emulation
 * (kernels/cpu/amp.c) rounds.
 *
 * Buffers. set_precision allocates the fp32 staging chunk through which act_upload and
 * act_download convert host floats (a host-to-device copy cannot convert, so the floats land in
 * device memory first); large tensors go through it chunk by chunk, in stream order, so its size
 * is fixed and no op allocates. cast_params allocates, on its first call, the weight copy of the
 * parameter block and the scratch into which conv2d_backward has cuDNN write its filter
 * gradient (conv_cudnn.cu); both hold param_count 2-byte values. */
#include "kernels/cuda/cuda_common.cuh"

/* Floats per staging chunk (16 MiB): large enough that the per-chunk launch costs nothing next to
 * the copy, small enough to keep on every context that runs in fp16 or bf16. */
static const size_t ACT_STAGE_FLOATS = (size_t)1 << 22;

/* ---- kernels ------------------------------------------------------------------------------------ */

template <typename T> __global__ void prec_to_kernel(T *dst, const float *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(dst, i, src[i]);
}

template <typename T> __global__ void prec_from_kernel(float *dst, const T *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = cuda__ld(src, i);
}

/* ---- launchers ---------------------------------------------------------------------------------- */

/* Elements [at, at + count) of dst, a tensor of T, = src (count floats, device), rounded. */
template <typename T>
static void prec_to(OpsCtx *ctx, void *dst, size_t at, const float *src, size_t count)
{
    prec_to_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>((T *)dst + at, src,
                                                                            count);
    CUDA_CHECK(cudaGetLastError());
}

/* dst (count floats, device) = elements [at, at + count) of src, a tensor of T, exactly. */
template <typename T>
static void prec_from(OpsCtx *ctx, float *dst, const void *src, size_t at, size_t count)
{
    prec_from_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
        dst, (const T *)src + at, count);
    CUDA_CHECK(cudaGetLastError());
}

/* Fills err with "what: runtime message", clears the runtime's last error (so that the next
 * launch check does not report it) and returns -1. */
static int prec_fail(Err *err, cudaError_t rc, const char *what)
{
    (void)cudaGetLastError();
    return err_set(err, "cuda backend: %s: %s", what, cudaGetErrorString(rc));
}

/* Frees the weight copy and the filter-gradient scratch once no queued work can use them. */
static void prec_free_copies(OpsCtx *ctx)
{
    if (!ctx->param_copy && !ctx->dw_scratch) return;
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    if (ctx->param_copy) CUDA_CHECK(cudaFree(ctx->param_copy));
    if (ctx->dw_scratch) CUDA_CHECK(cudaFree(ctx->dw_scratch));
    ctx->param_copy = NULL;
    ctx->dw_scratch = NULL;
    ctx->param_base = NULL;
    ctx->param_count = 0;
}

void cuda__ctx_free_precision(OpsCtx *ctx)
{
    prec_free_copies(ctx);
    if (ctx->act_stage) CUDA_CHECK(cudaFree(ctx->act_stage));
    ctx->act_stage = NULL;
    ctx->act_stage_floats = 0;
}

int cuda__set_precision(OpsCtx *ctx, Precision p, Err *err)
{
    if (p != PREC_FP32 && p != PREC_FP16 && p != PREC_BF16)
        return err_set(err, "cuda backend: unknown activation precision %d", (int)p);
    if (p != PREC_FP32) {
        /* The backend is built for sm_80 and sm_90, and cuDNN's bf16 convolutions need sm_80. */
        int major = 0, minor = 0;
        cudaError_t rc = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor,
                                                ctx->device);
        if (rc == cudaSuccess)
            rc = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ctx->device);
        if (rc != cudaSuccess) return prec_fail(err, rc, "reading the compute capability");
        if (major < 8)
            return err_set(err,
                           "cuda backend: %s activations need a GPU of compute capability 8.0 or "
                           "later; cuda:%d is %d.%d",
                           precision_name(p), ctx->device, major, minor);
        if (!ctx->act_stage) {
            void *stage = NULL;
            rc = cudaMalloc(&stage, ACT_STAGE_FLOATS * sizeof(float));
            if (rc != cudaSuccess)
                return prec_fail(err, rc, "allocating the activation staging buffer");
            ctx->act_stage = (float *)stage;
            ctx->act_stage_floats = ACT_STAGE_FLOATS;
        }
    }
    if (p == ctx->prec) return 0;
    /* A weight copy of the old type must not be read as the new one: the next cast_params makes a
     * new one, and a convolution before it fails loudly (conv_weights). */
    prec_free_copies(ctx);
    ctx->prec = p;
    cuda__conv_precision_changed(ctx);
    return 0;
}

int cuda__cast_params(OpsCtx *ctx, const float *params, size_t count, Err *err)
{
    if (ctx->prec == PREC_FP32) return 0;
    /* Another block than last time (a model planned again): the copies follow the new one. */
    if (ctx->param_copy && (params != ctx->param_base || count != ctx->param_count))
        prec_free_copies(ctx);
    if (!ctx->param_copy) {
        const size_t bytes = (count ? count : 1) * 2; /* fp16 and bf16 are 2 bytes */
        void *copy = NULL, *scratch = NULL;
        cudaError_t rc = cudaMalloc(&copy, bytes);
        if (rc != cudaSuccess) {
            char what[128];
            snprintf(what, sizeof what, "cannot allocate the %s weight copy (%zu bytes) on cuda:%d",
                     precision_name(ctx->prec), bytes, ctx->device);
            return prec_fail(err, rc, what);
        }
        rc = cudaMalloc(&scratch, bytes);
        if (rc != cudaSuccess) {
            char what[128];
            snprintf(what, sizeof what,
                     "cannot allocate the %s weight-gradient scratch (%zu bytes) on cuda:%d",
                     precision_name(ctx->prec), bytes, ctx->device);
            prec_fail(err, rc, what);
            CUDA_CHECK(cudaFree(copy));
            return -1;
        }
        ctx->param_copy = copy;
        ctx->dw_scratch = scratch;
        ctx->param_base = params;
        ctx->param_count = count;
    }
    if (count) CUDA_ACT_DISPATCH(ctx, prec_to, ctx, ctx->param_copy, 0, params, count);
    CUDA_OP_END(ctx);
    return 0;
}

void cuda__act_upload(OpsCtx *ctx, float *dst, const float *host_src, size_t count)
{
    if (!count) return;
    if (ctx->prec == PREC_FP32) {
        CUDA_CHECK(cudaMemcpyAsync(dst, host_src, count * sizeof(float), cudaMemcpyHostToDevice,
                                   ctx->stream));
        CUDA_OP_END(ctx);
        return;
    }
    ASSERT(ctx->act_stage != NULL); /* set_precision allocated it */
    /* Chunk by chunk through the staging buffer: each copy into it is queued after the kernel
     * that read the previous chunk, so one buffer serves them all. */
    for (size_t off = 0; off < count; off += ctx->act_stage_floats) {
        const size_t n = count - off < ctx->act_stage_floats ? count - off : ctx->act_stage_floats;
        CUDA_CHECK(cudaMemcpyAsync(ctx->act_stage, host_src + off, n * sizeof(float),
                                   cudaMemcpyHostToDevice, ctx->stream));
        CUDA_ACT_DISPATCH(ctx, prec_to, ctx, dst, off, ctx->act_stage, n);
    }
    CUDA_OP_END(ctx);
}

void cuda__act_download(OpsCtx *ctx, float *host_dst, const float *src, size_t count)
{
    if (!count) return;
    if (ctx->prec == PREC_FP32) {
        CUDA_CHECK(cudaMemcpyAsync(host_dst, src, count * sizeof(float), cudaMemcpyDeviceToHost,
                                   ctx->stream));
        CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
        return;
    }
    ASSERT(ctx->act_stage != NULL); /* set_precision allocated it */
    for (size_t off = 0; off < count; off += ctx->act_stage_floats) {
        const size_t n = count - off < ctx->act_stage_floats ? count - off : ctx->act_stage_floats;
        CUDA_ACT_DISPATCH(ctx, prec_from, ctx, ctx->act_stage, src, off, n);
        CUDA_CHECK(cudaMemcpyAsync(host_dst + off, ctx->act_stage, n * sizeof(float),
                                   cudaMemcpyDeviceToHost, ctx->stream));
    }
    /* As mem_download: the host may read host_dst on return. */
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}
