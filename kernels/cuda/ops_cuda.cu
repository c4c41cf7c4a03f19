/* ops_cuda.cu: the CUDA backend's context, memory and op table (kernels/ops.h).
 *
 * A context owns one non-blocking stream, the cuDNN and cuBLAS handles bound to it, and one
 * workspace (and, under fp16/bf16 activations, precision.cu's weight copy, filter-gradient scratch
 * and staging chunk). Everything a context does is ordered on its stream: allocation zeroes with
 * cudaMemsetAsync, uploads are cudaMemcpyAsync (the runtime stages pageable memory, so the caller
 * may reuse its buffer on return), downloads wait for the stream before returning.
 *
 * Failures that come from the machine rather than from a bug (no GPU, no driver, out of memory)
 * travel up through Err, so `--device cuda` on a machine without a GPU ends with one line instead
 * of a crash. A failed runtime call also leaves its code in the runtime's "last error", which the
 * next CUDA_CHECK(cudaGetLastError()) after a launch would report against an innocent kernel; the
 * error paths below therefore clear it with cudaGetLastError().
 *
 * ctx_create makes its device current for the calling thread, and ops assume it stays current:
 * one context per process and GPU, as the worker runs. */
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* Fills err with "what: runtime message", clears the runtime's last error and returns -1. */
static int cuda_fail(Err *err, cudaError_t rc, const char *what)
{
    (void)cudaGetLastError();
    return err_set(err, "cuda backend: %s: %s", what, cudaGetErrorString(rc));
}

/* Checks that `device` names a usable GPU, without touching any device state. */
static int cuda_device_check(int device, Err *err)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess) return cuda_fail(err, rc, "no usable CUDA device (cudaGetDeviceCount)");
    if (count == 0) return err_set(err, "cuda backend: no CUDA device: the driver reports 0 GPUs");
    if (device < 0 || device >= count)
        return err_set(err, "cuda backend: device cuda:%d does not exist (%d GPU%s)", device, count,
                       count == 1 ? "" : "s");
    return 0;
}

static void cuda_ctx_destroy(OpsCtx *ctx)
{
    if (!ctx) return;
    cuda__graph_ctx_free(ctx); /* first: the stream may still be capturing, which a wait refuses */
    /* Work may still be queued; nothing below may be released under it. */
    if (ctx->stream) CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    cuda__conv_ctx_free(ctx);
    cuda__ctx_free_precision(ctx);
    cuda__timer_free(ctx);
    if (ctx->cublas) CUBLAS_CHECK(cublasDestroy(ctx->cublas));
    if (ctx->workspace) CUDA_CHECK(cudaFree(ctx->workspace));
    if (ctx->reduce) CUDA_CHECK(cudaFree(ctx->reduce));
    if (ctx->scratch) CUDA_CHECK(cudaFree(ctx->scratch));
    if (ctx->stream) CUDA_CHECK(cudaStreamDestroy(ctx->stream));
    free(ctx);
}

static OpsCtx *cuda_ctx_create(int device, Err *err)
{
    if (cuda_device_check(device, err) < 0) return NULL;
    OpsCtx *ctx = (OpsCtx *)calloc(1, sizeof *ctx);
    if (!ctx) return err_set(err, "cuda backend: out of host memory"), nullptr;
    ctx->device = device;
    const char *sync = getenv("EFFDET_SYNC_CHECK");
    ctx->sync_check = sync && !strcmp(sync, "1");
    const char *conv_log = getenv("EFFDET_CONV_LOG");
    ctx->conv_log = conv_log && !strcmp(conv_log, "1");

    cudaError_t rc = cudaSetDevice(device);
    if (rc != cudaSuccess) {
        cuda_fail(err, rc, "cudaSetDevice");
        goto fail;
    }
    rc = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (rc != cudaSuccess) {
        ctx->stream = NULL;
        cuda_fail(err, rc, "creating a stream");
        goto fail;
    }
    if (cublasCreate(&ctx->cublas) != CUBLAS_STATUS_SUCCESS) {
        ctx->cublas = NULL;
        (void)cudaGetLastError();
        err_set(err, "cuda backend: cannot create a cuBLAS handle (out of device memory?)");
        goto fail;
    }
    CUBLAS_CHECK(cublasSetStream(ctx->cublas, ctx->stream));
    /* Partials of the deterministic sums (reduce.cuh): 512 groups of 8192 channels at most. */
    ctx->reduce_floats = (size_t)4 << 20;
    rc = cudaMalloc((void **)&ctx->reduce, ctx->reduce_floats * sizeof(float));
    if (rc != cudaSuccess) {
        ctx->reduce = NULL;
        cuda_fail(err, rc, "allocating the reduction scratch");
        goto fail;
    }
    /* Per-op intermediates (cuda__scratch): SE backward's N (2C + Cr) floats are the largest. */
    ctx->scratch_floats = (size_t)4 << 20;
    rc = cudaMalloc((void **)&ctx->scratch, ctx->scratch_floats * sizeof(float));
    if (rc != cudaSuccess) {
        ctx->scratch = NULL;
        cuda_fail(err, rc, "allocating the op scratch");
        goto fail;
    }
    if (cuda__conv_ctx_init(ctx, err) < 0) goto fail;
    return ctx;
fail:
    cuda_ctx_destroy(ctx);
    return NULL;
}

static void *cuda_mem_alloc(OpsCtx *ctx, size_t bytes, Err *err)
{
    /* Rounded up to whole 256-byte blocks (cudaMalloc's alignment) so the zeroing covers what a
     * vectorized kernel may read, and so zero bytes still yield a distinct, non-NULL pointer. */
    size_t rounded = bytes ? (bytes + 255) / 256 * 256 : 256;
    void *p = NULL;
    cudaError_t rc = cudaMalloc(&p, rounded);
    if (rc != cudaSuccess) {
        char what[96];
        snprintf(what, sizeof what, "cannot allocate %zu bytes on cuda:%d", bytes, ctx->device);
        return cuda_fail(err, rc, what), nullptr;
    }
    CUDA_CHECK(cudaMemsetAsync(p, 0, rounded, ctx->stream));
    return p;
}

static void cuda_mem_free(OpsCtx *ctx, void *p)
{
    /* cudaFree waits for the device, so no queued kernel can still be using p. */
    (void)ctx;
    if (p) CUDA_CHECK(cudaFree(p));
}

static void cuda_mem_upload(OpsCtx *ctx, void *dst, const void *host_src, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx->stream));
    CUDA_OP_END(ctx);
}

static void cuda_mem_download(OpsCtx *ctx, void *host_dst, const void *src, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx->stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
}

static void cuda_mem_zero(OpsCtx *ctx, void *p, size_t bytes)
{
    if (!bytes) return;
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx->stream));
    CUDA_OP_END(ctx);
}

static void cuda_sync(OpsCtx *ctx) { CUDA_CHECK(cudaStreamSynchronize(ctx->stream)); }

/* Grows the workspace (never shrinks it). The convolution plans notice the new size by themselves
 * and pick their algorithms again (conv_cudnn.cu). */
static int cuda_workspace_reserve(OpsCtx *ctx, size_t bytes, Err *err)
{
    if (bytes <= ctx->workspace_bytes) return 0;
    void *p = cuda_mem_alloc(ctx, bytes, err);
    if (!p) return err_wrap(err, "reserving the workspace: ");
    if (ctx->workspace) CUDA_CHECK(cudaFree(ctx->workspace));
    ctx->workspace = p;
    ctx->workspace_bytes = bytes;
    return 0;
}

/* The convolution plans read ctx->tf32 when they pick their math type; changing it drops their
 * algorithm choice so the next call picks again under the new math. */
static void cuda_set_tf32(OpsCtx *ctx, int on)
{
    ctx->tf32 = on != 0;
    cuda__conv_math_changed(ctx);
    CUBLAS_CHECK(cublasSetMathMode(ctx->cublas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}

static const Ops cuda_ops = {
    .name = "cuda",
    .host_memory = 0,
    .ctx_create = cuda_ctx_create,
    .ctx_destroy = cuda_ctx_destroy,
    .mem_alloc = cuda_mem_alloc,
    .mem_free = cuda_mem_free,
    .mem_upload = cuda_mem_upload,
    .mem_download = cuda_mem_download,
    .mem_zero = cuda_mem_zero,
    .act_upload = cuda__act_upload, /* precision.cu; here, in the struct's order (C++ wants it) */
    .act_download = cuda__act_download,
    .sync = cuda_sync,
    .conv2d_workspace_bytes = cuda__conv2d_workspace_bytes,
    .workspace_reserve = cuda_workspace_reserve,
    .conv2d_forward = cuda__conv2d_forward,
    .dwconv2d_forward = cuda__dwconv2d_forward,
    .bn_infer_forward = cuda__bn_infer_forward,
    .act_forward = cuda__act_forward,
    .se_forward = cuda__se_forward,
    .add_forward = cuda__add_forward,
    .maxpool_forward = cuda__maxpool_forward,
    .upsample_nearest_forward = cuda__upsample_nearest_forward,
    .fuse_forward = cuda__fuse_forward,
    .bn_train_forward = cuda__bn_train_forward,
    .bn_train_backward = cuda__bn_train_backward,
    .bn_infer_backward = cuda__bn_infer_backward,
    .act_backward = cuda__act_backward,
    .conv2d_backward = cuda__conv2d_backward,
    .dwconv2d_backward = cuda__dwconv2d_backward,
    .se_backward = cuda__se_backward,
    .accumulate = cuda__accumulate,
    .maxpool_backward = cuda__maxpool_backward,
    .upsample_nearest_backward = cuda__upsample_nearest_backward,
    .fuse_backward = cuda__fuse_backward,
    .detection_loss = cuda__detection_loss,
    .sum_squares = cuda__sum_squares,
    .sgd_update = cuda__sgd_update,
    .ema_update = cuda__ema_update,
    .set_tf32 = cuda_set_tf32,
    .set_precision = cuda__set_precision,
    .cast_params = cuda__cast_params,
    .timer_reserve = cuda__timer_reserve,
    .timer_mark = cuda__timer_mark,
    .timer_elapsed_ms = cuda__timer_elapsed_ms,
    .set_bn_sync = cuda__set_bn_sync,
    .comm_open = CUDA__COMM_OPEN, /* comm_nccl.cu; before label_anchors: the struct's order */
    .label_anchors = cuda__label_anchors,
    .detect_workspace_bytes = cuda__detect_workspace_bytes,
    .detect = cuda__detect,
    .graph_begin = cuda__graph_begin,
    .graph_end = cuda__graph_end,
    .graph_launch = cuda__graph_launch,
    .host_register = cuda__host_register,
    .host_unregister = cuda__host_unregister,
};

/* The entry point of libeffdet_cuda.so, found with dlsym by kernels/ops_cuda_loader.c. */
extern "C" __attribute__((visibility("default"))) const Ops *effdet_cuda_ops(Err *err)
{
    /* Device 0 stands for "any GPU at all"; ctx_create checks the index the user asked for. */
    if (cuda_device_check(0, err) < 0) return NULL;
    return &cuda_ops;
}
