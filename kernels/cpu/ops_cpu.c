/* ops_cpu.c: the CPU backend's context, memory and op table. Memory is host memory; "upload" and
 * "download" are copies, so the model code is the same for every backend. */
#include <stdlib.h>
#include <string.h>
#include <xmmintrin.h>

#include "kernels/cpu/cpu_internal.h"

static OpsCtx *cpu_ctx_create(int device, Err *err)
{
    /* Denormal floats cost a microcode assist (~100 cycles) per operation on x86, and real images
     * through random or trained weights produce them in the deep layers (measured: 3x slower
     * forward). Flush them to zero, as GPUs do by default: set FTZ and DAZ in every thread of the
     * OpenMP pool, which OpenBLAS shares. Results differ only below 1.2e-38. */
    _mm_setcsr(_mm_getcsr() | 0x8040);
#pragma omp parallel
    _mm_setcsr(_mm_getcsr() | 0x8040);
    OpsCtx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) err_set(err, "cpu backend: out of memory");
    return ctx;
}

static void cpu_ctx_destroy(OpsCtx *ctx)
{
    if (!ctx) return;
    free(ctx->workspace);
    free(ctx->param_copy);
    free(ctx);
}

static void *cpu_mem_alloc(OpsCtx *ctx, size_t bytes, Err *err)
{
    size_t rounded = (bytes + 255) / 256 * 256;
    void *p = aligned_alloc(256, rounded ? rounded : 256);
    if (!p) return err_set(err, "cpu backend: cannot allocate %zu bytes", bytes), NULL;
    memset(p, 0, rounded);
    return p;
}

static void cpu_mem_free(OpsCtx *ctx, void *p) { free(p); }

static void cpu_mem_copy(OpsCtx *ctx, void *dst, const void *src, size_t bytes)
{
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_mem_zero(OpsCtx *ctx, void *p, size_t bytes)
{
    if (bytes) memset(p, 0, bytes);
}

static void cpu_sync(OpsCtx *ctx) {}

static int cpu_workspace_reserve(OpsCtx *ctx, size_t bytes, Err *err)
{
    if (bytes <= ctx->workspace_bytes) return 0;
    float *p = cpu_mem_alloc(ctx, bytes, err);
    if (!p) return -1;
    free(ctx->workspace);
    ctx->workspace = p;
    ctx->workspace_bytes = bytes;
    return 0;
}

static const Ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .ctx_create = cpu_ctx_create,
    .ctx_destroy = cpu_ctx_destroy,
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .mem_upload = cpu_mem_copy,
    .mem_download = cpu_mem_copy,
    .mem_zero = cpu_mem_zero,
    .act_upload = cpu__act_upload,
    .act_download = cpu__act_download,
    .sync = cpu_sync,
    .conv2d_workspace_bytes = cpu__conv2d_workspace_bytes,
    .workspace_reserve = cpu_workspace_reserve,
    .conv2d_forward = cpu__amp_conv2d_forward,
    .dwconv2d_forward = cpu__amp_dwconv2d_forward,
    .bn_infer_forward = cpu__amp_bn_infer_forward,
    .act_forward = cpu__amp_act_forward,
    .se_forward = cpu__amp_se_forward,
    .add_forward = cpu__amp_add_forward,
    .maxpool_forward = cpu__maxpool_forward,
    .upsample_nearest_forward = cpu__upsample_nearest_forward,
    .fuse_forward = cpu__amp_fuse_forward,
    .bn_train_forward = cpu__amp_bn_train_forward,
    .bn_train_backward = cpu__amp_bn_train_backward,
    .bn_infer_backward = cpu__amp_bn_infer_backward,
    .act_backward = cpu__amp_act_backward,
    .conv2d_backward = cpu__amp_conv2d_backward,
    .dwconv2d_backward = cpu__amp_dwconv2d_backward,
    .se_backward = cpu__amp_se_backward,
    .accumulate = cpu__amp_accumulate,
    .maxpool_backward = cpu__amp_maxpool_backward,
    .upsample_nearest_backward = cpu__amp_upsample_nearest_backward,
    .fuse_backward = cpu__amp_fuse_backward,
    .detection_loss = cpu__amp_detection_loss,
    .sum_squares = cpu__sum_squares,
    .sgd_update = cpu__sgd_update,
    .ema_update = cpu__ema_update,
    .set_bn_sync = cpu__set_bn_sync,
    .set_precision = cpu__set_precision,
    .cast_params = cpu__cast_params,
    .timer_reserve = cpu__timer_reserve,
    .timer_mark = cpu__timer_mark,
    .timer_elapsed_ms = cpu__timer_elapsed_ms,
};

const Ops *ops_cpu(void) { return &cpu_ops; }
