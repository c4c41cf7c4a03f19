/* ops_cpu.c: the CPU backend's context, memory and op table. Memory is host memory; "upload" and
 * "download" are copies, so the model code is the same for every backend. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"

static OpsCtx *cpu_ctx_create(int device, Err *err)
{
    OpsCtx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) err_set(err, "cpu backend: out of memory");
    return ctx;
}

static void cpu_ctx_destroy(OpsCtx *ctx)
{
    if (!ctx) return;
    free(ctx->workspace);
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
    .sync = cpu_sync,
    .conv2d_workspace_bytes = cpu__conv2d_workspace_bytes,
    .workspace_reserve = cpu_workspace_reserve,
    .conv2d_forward = cpu__conv2d_forward,
    .dwconv2d_forward = cpu__dwconv2d_forward,
    .bn_infer_forward = cpu__bn_infer_forward,
    .act_forward = cpu__act_forward,
    .se_forward = cpu__se_forward,
    .add_forward = cpu__add_forward,
    .maxpool_forward = cpu__maxpool_forward,
    .upsample_nearest_forward = cpu__upsample_nearest_forward,
    .fuse_forward = cpu__fuse_forward,
};

const Ops *ops_cpu(void) { return &cpu_ops; }
