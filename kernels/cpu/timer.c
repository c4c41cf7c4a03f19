/* timer.c: the CPU backend's timers (kernels/ops.h, timer_reserve/mark/elapsed_ms). Every CPU op
 * has finished when it returns (its OpenMP regions join before), so "stream order" is call order
 * and a mark is simply the monotonic clock read at the call. The marks live in a fixed array in
 * the context (cpu_internal.h), so reserving never allocates and nothing needs freeing. */
#include <time.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

static int timer_capacity(const OpsCtx *ctx)
{
    return (int)(sizeof ctx->timer_marks / sizeof ctx->timer_marks[0]);
}

int cpu__timer_reserve(OpsCtx *ctx, int slots, Err *err)
{
    if (slots < 0 || slots > timer_capacity(ctx))
        return err_set(err, "cpu backend: %d timer slots asked for, %d at most", slots,
                       timer_capacity(ctx));
    if (slots > ctx->timer_slots) ctx->timer_slots = slots;
    return 0;
}

void cpu__timer_mark(OpsCtx *ctx, int slot)
{
    ASSERT(slot >= 0 && slot < ctx->timer_slots);
    struct timespec ts;
    int rc = clock_gettime(CLOCK_MONOTONIC, &ts);
    ASSERT(rc == 0);
    ctx->timer_marks[slot] = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

double cpu__timer_elapsed_ms(OpsCtx *ctx, int from, int to)
{
    ASSERT(from >= 0 && from < ctx->timer_slots && to >= 0 && to < ctx->timer_slots);
    return (ctx->timer_marks[to] - ctx->timer_marks[from]) * 1e3;
}
