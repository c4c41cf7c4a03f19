/* timer.cu: the CUDA backend's timers (kernels/ops.h, timer_reserve/mark/elapsed_ms).
 *
 * One cudaEvent per slot, created with timing enabled when the slots are reserved (never inside a
 * profiled pass, where creating events would cost more than the ops it measures). A mark records
 * its event on the context's stream, so the GPU stamps it once every op issued before it has
 * finished; the difference between two marks is device time, including any gap in which the GPU
 * waited for the host to issue the next kernel. Reading a difference waits for both events, not
 * for the whole stream. The events die with the context (cuda__timer_free in ctx_destroy). */
#include "kernels/cuda/cuda_common.cuh"

int cuda__timer_reserve(OpsCtx *ctx, int slots, Err *err)
{
    if (slots < 0) return err_set(err, "cuda backend: %d timer slots asked for", slots);
    if (slots <= ctx->timer_slots) return 0;
    cudaEvent_t *ev = (cudaEvent_t *)realloc(ctx->timer_events, (size_t)slots * sizeof *ev);
    if (!ev) return err_set(err, "cuda backend: out of host memory for %d timer slots", slots);
    ctx->timer_events = ev;
    /* timer_slots counts the events made so far, so a failure part way leaves them all freeable. */
    while (ctx->timer_slots < slots) {
        cudaError_t rc = cudaEventCreate(&ev[ctx->timer_slots]);
        if (rc != cudaSuccess) {
            (void)cudaGetLastError(); /* not a kernel's fault: keep it out of the next check */
            return err_set(err, "cuda backend: creating timer event %d of %d: %s", ctx->timer_slots,
                           slots, cudaGetErrorString(rc));
        }
        ctx->timer_slots++;
    }
    return 0;
}

void cuda__timer_mark(OpsCtx *ctx, int slot)
{
    ASSERT(slot >= 0 && slot < ctx->timer_slots);
    CUDA_CHECK(cudaEventRecord(ctx->timer_events[slot], ctx->stream));
}

double cuda__timer_elapsed_ms(OpsCtx *ctx, int from, int to)
{
    ASSERT(from >= 0 && from < ctx->timer_slots && to >= 0 && to < ctx->timer_slots);
    CUDA_CHECK(cudaEventSynchronize(ctx->timer_events[from]));
    CUDA_CHECK(cudaEventSynchronize(ctx->timer_events[to]));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, ctx->timer_events[from], ctx->timer_events[to]));
    return ms;
}

void cuda__timer_free(OpsCtx *ctx)
{
    for (int i = 0; i < ctx->timer_slots; i++) CUDA_CHECK(cudaEventDestroy(ctx->timer_events[i]));
    free(ctx->timer_events);
    ctx->timer_events = NULL;
    ctx->timer_slots = 0;
}
