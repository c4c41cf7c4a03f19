/* test_profile.c: the per-op profile (worker/model/profile.h) on the CPU backend:
 * - the least-traffic arithmetic of known small ops, written out by hand here (a 1x1 conv with
 *   bias in fp32 and fp16, forward and backward, with and without an input gradient; a 3x3
 *   stride-2 conv; a depthwise conv; BN in training, inference and frozen; weighted fusion);
 * - the CPU timers (marks in call order, reservation beyond the fixed capacity refused);
 * - a whole profiled train step of D0 at 64x64: one record per forward op and per backward op
 *   (the tape's length each), rows that sum to the totals, and op times inside the step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "worker/model/model.h"
#include "worker/model/profile.h"

static Act4 act(int id, int n, int h, int w, int c) { return (Act4){NULL, n, h, w, c, id}; }

static void test_conv1x1_traffic(void **state)
{
    /* (2, 8, 8, 16) -> (2, 8, 8, 32), weights (32, 1, 1, 16) and a bias of 32. */
    ConvP c = {.w = 0, .b = 512, .cin = 16, .cout = 32, .k = 1, .stride = 1};
    TapeOp op = {.kind = TAPE_CONV, .out = act(2, 2, 8, 8, 32), .in = {act(1, 2, 8, 8, 16)},
                 .n_in = 1, .layer = &c};
    double x = 2 * 8 * 8 * 16, y = 2 * 8 * 8 * 32, w = 32 * 16, b = 32;
    assert_int_equal(profile_op_kind(&op), PROF_CONV1X1);
    assert_string_equal(profile_kind_name(PROF_CONV1X1), "conv 1x1");
    /* forward: x read, y written (activations), w and b read (fp32). */
    assert_true(profile_op_bytes(&op, 0, 4) == (x + y) * 4 + (w + b) * 4);
    assert_true(profile_op_bytes(&op, 0, 2) == (x + y) * 2 + (w + b) * 4);
    assert_true(profile_op_bytes(&op, 0, 4) == 26752.0);
    /* backward: dy and x read, dx written; w read, dw and db written. */
    assert_true(profile_op_bytes(&op, 1, 4) == (y + x + x) * 4 + (w + w + b) * 4);
    assert_true(profile_op_bytes(&op, 1, 2) == (y + x + x) * 2 + (w + w + b) * 4);
    /* The network input (activation 0) gets no gradient: no dx. */
    op.in[0].id = 0;
    assert_true(profile_op_bytes(&op, 1, 4) == (y + x) * 4 + (w + w + b) * 4);
}

static void test_convkxk_and_depthwise_traffic(void **state)
{
    /* 3x3 stride 2 SAME on (1, 9, 9, 3) -> (1, 5, 5, 8), no bias. */
    ConvShape s;
    conv_shape_same(&s, 1, 9, 9, 3, 8, 3, 2);
    assert_int_equal(s.oh, 5);
    ConvP c = {.b = NO_PARAM, .cin = 3, .cout = 8, .k = 3, .stride = 2};
    TapeOp op = {.kind = TAPE_CONV, .out = act(2, 1, 5, 5, 8), .in = {act(1, 1, 9, 9, 3)},
                 .n_in = 1, .layer = &c};
    assert_int_equal(profile_op_kind(&op), PROF_CONVKXK);
    assert_true(profile_op_bytes(&op, 0, 4) == (243 + 200) * 4 + 8 * 3 * 3 * 3 * 4);
    /* Depthwise 3x3 on (1, 4, 4, 6): weights (3, 3, 6). */
    ConvP d = {.b = NO_PARAM, .cin = 6, .cout = 6, .k = 3, .stride = 1, .depthwise = 1};
    TapeOp dw = {.kind = TAPE_DWCONV, .out = act(2, 1, 4, 4, 6), .in = {act(1, 1, 4, 4, 6)},
                 .n_in = 1, .layer = &d};
    assert_int_equal(profile_op_kind(&dw), PROF_DWCONV);
    assert_true(profile_op_bytes(&dw, 0, 2) == (96 + 96) * 2 + 54 * 4);
    assert_true(profile_op_bytes(&dw, 1, 2) == (96 * 3) * 2 + 54 * 2 * 4);
}

static void test_bn_and_fuse_traffic(void **state)
{
    BnP bn = {.c = 4};
    TapeOp op = {.kind = TAPE_BN, .out = act(2, 2, 3, 3, 4), .in = {act(1, 2, 3, 3, 4)},
                 .n_in = 1, .layer = &bn};
    double x = 72;
    /* Inference: x, y; gamma, beta, mean, var. */
    assert_true(profile_op_bytes(&op, 0, 4) == 2 * x * 4 + 4 * 4 * 4);
    /* Training: + save_mean and save_invstd written; backward reads them and gamma, beta and
     * writes dgamma, dbeta. */
    op.saved[0] = act(3, 1, 1, 1, 4), op.saved[1] = act(4, 1, 1, 1, 4);
    assert_true(profile_op_bytes(&op, 0, 4) == 2 * x * 4 + 6 * 4 * 4);
    assert_true(profile_op_bytes(&op, 1, 2) == 3 * x * 2 + 6 * 4 * 4);
    /* Frozen: runs as in inference; backward reads the running statistics, no dgamma/dbeta. */
    bn.frozen = 1;
    assert_true(profile_op_bytes(&op, 0, 4) == 2 * x * 4 + 4 * 4 * 4);
    assert_true(profile_op_bytes(&op, 1, 4) == 3 * x * 4 + 4 * 4 * 4);
    /* Weighted fusion of 3 inputs of 10 values: forward ins + out + w; backward dy, dins, ins
     * (for dw), w and dw. Sum fusion's backward needs no input values. */
    TapeOp fu = {.kind = TAPE_FUSE, .out = act(9, 1, 1, 2, 5), .n_in = 3, .edge = 7,
                 .in = {act(5, 1, 1, 2, 5), act(6, 1, 1, 2, 5), act(7, 1, 1, 2, 5)}};
    assert_int_equal(profile_op_kind(&fu), PROF_FUSE);
    assert_true(profile_op_bytes(&fu, 0, 4) == 40 * 4 + 3 * 4);
    assert_true(profile_op_bytes(&fu, 1, 4) == 70 * 4 + 6 * 4);
    fu.edge = NO_PARAM;
    assert_true(profile_op_bytes(&fu, 1, 4) == 40 * 4);
}

static void test_cpu_timers(void **state)
{
    const Ops *ops = ops_cpu();
    Err err;
    OpsCtx *ctx = ops->ctx_create(0, &err);
    assert_non_null(ctx);
    assert_int_equal(ops->timer_reserve(ctx, 3, &err), 0);
    ops->timer_mark(ctx, 0);
    volatile double sink = 0;
    for (int i = 0; i < 1000000; i++) sink += i * 0.5;
    ops->timer_mark(ctx, 1);
    ops->timer_mark(ctx, 2);
    double a = ops->timer_elapsed_ms(ctx, 0, 1), b = ops->timer_elapsed_ms(ctx, 1, 2);
    printf("  busy loop %.4f ms, back-to-back marks %.4f ms\n", a, b);
    assert_true(a > 0 && b >= 0 && b < a);
    assert_true(ops->timer_elapsed_ms(ctx, 0, 2) >= a);
    assert_int_equal(ops->timer_reserve(ctx, 1, &err), 0); /* fewer: nothing to do */
    assert_int_equal(ops->timer_reserve(ctx, 1 << 20, &err), -1);
    printf("  %s\n", err.msg);
    assert_non_null(strstr(err.msg, "timer slots"));
    ops->ctx_destroy(ctx);
}

/* The profile counts activations at the model's precision: 2 bytes under fp16. */
static void test_fp16_element_size(void **state)
{
    ModelConfig cfg;
    Model m;
    Err err;
    if (model_config_get("tf_efficientdet_d0", 0, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(&m, &cfg, ops_cpu(), 0, &err) != 0) fail_msg("%s", err.msg);
    if (model_set_precision(&m, PREC_FP16, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(&m, 1, 64, 64, PLAN_INFER, &err) != 0) fail_msg("%s", err.msg);
    ModelProfile p;
    if (profile_init(&p, &m, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(p.act_bytes, 2);
    profile_free(&p);
    model_free(&m);
}

static void test_profiled_train_pass(void **state)
{
    ModelConfig cfg;
    Model m;
    Err err;
    if (model_config_get("tf_efficientdet_d0", 0, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(&m, &cfg, ops_cpu(), 0, &err) != 0) fail_msg("%s", err.msg);
    if (model_init_random(&m, 5, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(&m, 2, 64, 64, PLAN_TRAIN, &err) != 0) fail_msg("%s", err.msg);
    ModelProfile p;
    ProfSummary s;
    if (profile_init(&p, &m, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(p.act_bytes, 4); /* the model's precision: fp32 */
    assert_int_equal(profile_summarize(&p, &s, &err), -1); /* no step marked yet */
    m.prof = &p;
    profile_reset(&p);
    profile_step_begin(&p);
    model_forward(&m);
    model_zero_grads(&m);
    model_backward(&m);
    profile_step_end(&p);
    m.prof = NULL;
    if (profile_summarize(&p, &s, &err) != 0) fail_msg("%s", err.msg);
    long fwd = 0, bwd = 0;
    double ms = 0, bytes = 0, want_bytes = 0;
    for (int i = 0; i < s.n_rows; i++) {
        *(s.rows[i].backward ? &bwd : &fwd) += s.rows[i].ops;
        ms += s.rows[i].ms, bytes += s.rows[i].bytes;
        assert_true(s.rows[i].ms >= 0);
    }
    for (int i = 0; i < m.n_tape; i++)
        want_bytes += profile_op_bytes(&m.tape[i], 0, 4) + profile_op_bytes(&m.tape[i], 1, 4);
    printf("  %ld forward and %ld backward ops (tape %d), %.3f of %.3f ms, %.2f MB per image\n", fwd,
           bwd, m.n_tape, ms, s.step_ms, bytes / 2 / 1e6);
    assert_int_equal(fwd, m.n_tape);
    assert_int_equal(bwd, m.n_tape);
    assert_true(bytes == s.bytes && bytes == want_bytes);
    assert_true(ms <= s.step_ms && s.fwd_ms + s.bwd_ms <= s.step_ms);
    assert_true(s.fwd_ms > 0 && s.bwd_ms > 0);
    /* A second forward in the same profiled step overflows the room for one step. */
    m.prof = &p;
    profile_reset(&p);
    profile_step_begin(&p);
    model_forward(&m);
    model_forward(&m);
    model_forward(&m);
    profile_step_end(&p);
    m.prof = NULL;
    assert_int_equal(profile_summarize(&p, &s, &err), -1);
    assert_non_null(strstr(err.msg, "room"));
    profile_free(&p);
    profile_free(&p); /* idempotent */
    model_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv1x1_traffic),
        cmocka_unit_test(test_convkxk_and_depthwise_traffic),
        cmocka_unit_test(test_bn_and_fuse_traffic),
        cmocka_unit_test(test_cpu_timers),
        cmocka_unit_test(test_fp16_element_size),
        cmocka_unit_test(test_profiled_train_pass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
