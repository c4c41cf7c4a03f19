/* test_profile_gpu.c: the CUDA backend's timers and a profiled train step on the GPU
 * (kernels/ops.h timer_*, worker/model/profile.h), what `effdet bench --profile` relies on:
 * - timers: a mark pair around a large memset measures it (more than around nothing), marks stay
 *   readable after more slots are reserved, and differences add up (0->2 = 0->1 + 1->2 within
 *   the events' resolution);
 * - D0 at 128x128, batch 2, one forward + backward with the profile attached on the GPU and on the
 *   CPU: the same ops per row and the same least traffic (same tape, same arithmetic), and on the
 *   GPU every row's time within the step.
 * Built and run only by `make test-gpu`: without a usable GPU it says why and exits non-zero. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/ops.h"
#include "tests/support/gpu_compare.h"
#include "worker/model/model.h"
#include "worker/model/profile.h"

static void test_timers(void **state)
{
    Backends *b = *state;
    const Ops *g = b->gpu;
    REQUIRE_GPU_OP(b, timer_reserve);
    Err err = {{0}};
    if (g->timer_reserve(b->gctx, 3, &err) != 0) fail_msg("%s", err.msg);
    size_t bytes = (size_t)512 << 20;
    void *p = xalloc(g, b->gctx, bytes);
    g->sync(b->gctx);
    g->timer_mark(b->gctx, 0);
    g->mem_zero(b->gctx, p, bytes);
    g->timer_mark(b->gctx, 1);
    g->timer_mark(b->gctx, 2);
    /* Growing the pool keeps the events already marked. */
    if (g->timer_reserve(b->gctx, 64, &err) != 0) fail_msg("%s", err.msg);
    double memset_ms = g->timer_elapsed_ms(b->gctx, 0, 1), empty_ms = g->timer_elapsed_ms(b->gctx, 1, 2);
    double all_ms = g->timer_elapsed_ms(b->gctx, 0, 2);
    printf("  memset of 512 MB: %.4f ms (%.0f GB/s); between two marks: %.4f ms\n", memset_ms,
           bytes / (memset_ms * 1e-3) / 1e9, empty_ms);
    assert_true(memset_ms > 0 && empty_ms >= 0 && empty_ms < memset_ms);
    assert_true(fabs(all_ms - (memset_ms + empty_ms)) < 2e-3);
    g->mem_free(b->gctx, p);
}

/* One profiled forward + backward of D0 at 128x128, batch 2, on `ops`. */
static void profiled_pass(const Ops *ops, ProfSummary *s)
{
    ModelConfig cfg;
    Model m;
    ModelProfile p;
    Err err = {{0}};
    if (model_config_get("tf_efficientdet_d0", 0, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(&m, &cfg, ops, 0, &err) != 0) fail_msg("%s", err.msg);
    if (model_init_random(&m, 5, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(&m, 2, 128, 128, PLAN_TRAIN, &err) != 0) fail_msg("%s", err.msg);
    if (profile_init(&p, &m, &err) != 0) fail_msg("%s: %s", ops->name, err.msg);
    model_forward(&m); /* once unprofiled: the convolutions choose their algorithms */
    ops->sync(m.ctx);
    m.prof = &p;
    profile_reset(&p);
    profile_step_begin(&p);
    model_forward(&m);
    model_zero_grads(&m);
    model_backward(&m);
    profile_step_end(&p);
    m.prof = NULL;
    if (profile_summarize(&p, s, &err) != 0) fail_msg("%s: %s", ops->name, err.msg);
    profile_print_table(stdout, s, "other (zeroing the gradients)");
    profile_free(&p);
    model_free(&m);
}

static void test_profiled_train_pass(void **state)
{
    Backends *b = *state;
    ProfSummary gs, cs;
    profiled_pass(b->gpu, &gs);
    profiled_pass(b->cpu, &cs);
    assert_int_equal(gs.n_rows, cs.n_rows);
    double sum = 0;
    for (int i = 0; i < gs.n_rows; i++) {
        const ProfRow *g = &gs.rows[i], *c = &cs.rows[i];
        assert_int_equal(g->kind, c->kind);
        assert_int_equal(g->backward, c->backward);
        assert_int_equal(g->ops, c->ops);
        assert_true(g->bytes == c->bytes);
        assert_true(g->ms >= 0);
        sum += g->ms;
    }
    printf("  gpu: rows %.3f ms of a %.3f ms step (cpu %.3f of %.3f)\n", sum, gs.step_ms,
           cs.fwd_ms + cs.bwd_ms, cs.step_ms);
    assert_true(sum <= gs.step_ms + 1e-3);
    assert_true(gs.fwd_ms > 0 && gs.bwd_ms > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timers),
        cmocka_unit_test(test_profiled_train_pass),
    };
    return gpu_compare_main("test_profile_gpu", tests, sizeof tests / sizeof tests[0]);
}
