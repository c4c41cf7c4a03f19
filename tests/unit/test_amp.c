/* test_amp.c: mixed precision on the CPU backend (kernels/cpu/amp.c) and fp16 loss scaling in the
 * trainer: the fp16/bf16 rounding itself at its edges (ties to even, overflow, subnormals, NaN),
 * ops storing rounded values and convolutions reading the rounded weight copy, and the trainer's
 * dynamic loss scale: overflowing steps skipped with the weights untouched and the scale halved,
 * growth after the interval, the scale carried through a checkpoint, bf16 without scaling. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/rng.h"
#include "tests/support/tmpdir.h"
#include "tests/support/train_batch.h"
#include "worker/trainer.h"

/* ---- rounding --------------------------------------------------------------------------------- */

static void test_round_fp16(void **state)
{
    assert_true(cpu__round_fp16(1.0f) == 1.0f);
    assert_true(cpu__round_fp16(1.0f + 0x1p-11f) == 1.0f);                   /* tie: even */
    assert_true(cpu__round_fp16(1.0f + 3 * 0x1p-11f) == 1.0f + 0x1p-9f);     /* tie: even */
    assert_true(cpu__round_fp16(1.0f + 0x1p-11f + 0x1p-20f) == 1.0f + 0x1p-10f);
    assert_true(cpu__round_fp16(65504.0f) == 65504.0f);                      /* largest */
    assert_true(cpu__round_fp16(65519.0f) == 65504.0f);
    assert_true(isinf(cpu__round_fp16(65520.0f)));                           /* overflow */
    assert_true(isinf(cpu__round_fp16(-1e6f)) && cpu__round_fp16(-1e6f) < 0);
    assert_true(cpu__round_fp16(0x1p-24f) == 0x1p-24f);                      /* subnormal */
    assert_true(cpu__round_fp16(0x1p-25f) == 0.0f);                          /* tie: even */
    assert_true(cpu__round_fp16(3 * 0x1p-26f) == 0x1p-24f);
    assert_true(isnan(cpu__round_fp16(NAN)));
}

static void test_round_bf16(void **state)
{
    assert_true(cpu__round_bf16(1.0f + 0x1p-8f) == 1.0f);                    /* tie: even */
    assert_true(cpu__round_bf16(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);      /* tie: even */
    assert_true(cpu__round_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);
    assert_true(cpu__round_bf16(-3.0f) == -3.0f);
    assert_true(isinf(cpu__round_bf16(3.4028235e38f)));                      /* rounds up past max */
    assert_true(cpu__round_bf16(0x1p-130f) == 0x1p-130f);                    /* subnormal, kept */
    assert_true(isnan(cpu__round_bf16(NAN)));
    assert_true(cpu__round_bf16(INFINITY) == INFINITY);
}

/* ---- ops under set_precision ----------------------------------------------------------------- */

static int representable(float v, Precision p)
{
    return (p == PREC_FP16 ? cpu__round_fp16(v) : cpu__round_bf16(v)) == v;
}

static float round_to(float v, Precision p)
{
    return p == PREC_FP16 ? cpu__round_fp16(v) : cpu__round_bf16(v);
}

/* A 3x3 conv whose weights live in a registered parameter block: the output equals the fp32 conv
 * of the rounded weights, rounded; act_upload rounds; a backward dx += comes out rounded. */
static void check_conv(Precision prec)
{
    const Ops *o = ops_cpu();
    Err err;
    OpsCtx *ctx = o->ctx_create(0, &err);
    assert_non_null(ctx);
    assert_int_equal(o->set_precision(ctx, prec, &err), 0);
    ConvShape s;
    conv_shape_same(&s, 2, 7, 6, 5, 4, 3, 1);
    size_t nin = 2 * 7 * 6 * 5, nout = (size_t)2 * s.oh * s.ow * 4, nw = 4 * 3 * 3 * 5;
    float *params = calloc(nw + 4, sizeof(float)), *host = malloc(nin * sizeof(float));
    float *in = malloc(nin * sizeof(float)), *out = malloc(nout * sizeof(float));
    float *want = malloc(nout * sizeof(float)), *wr = malloc(nw * sizeof(float));
    float *dx = calloc(nin, sizeof(float)), *dw = calloc(nw, sizeof(float));
    assert_true(params && host && in && out && want && wr && dx && dw);
    Rng r;
    rng_init(&r, 3, 0, 0);
    for (size_t i = 0; i < nw + 4; i++) params[i] = rng_normal(&r) * 0.3f;
    for (size_t i = 0; i < nin; i++) host[i] = rng_normal(&r);
    assert_int_equal(o->workspace_reserve(ctx, o->conv2d_workspace_bytes(&s), &err), 0);
    assert_int_equal(o->cast_params(ctx, params, nw + 4, &err), 0);
    o->act_upload(ctx, in, host, nin);
    for (size_t i = 0; i < nin; i++) assert_true(in[i] == round_to(host[i], prec));
    o->conv2d_forward(ctx, out, in, params, params + nw, &s);
    for (size_t i = 0; i < nw; i++) wr[i] = round_to(params[i], prec);
    cpu__conv2d_forward(ctx, want, in, wr, params + nw, &s);
    for (size_t i = 0; i < nout; i++) {
        assert_true(representable(out[i], prec));
        assert_true(out[i] == round_to(want[i], prec));
    }
    /* A weight change is seen only after cast_params, as the model calls it. */
    params[0] += 1.0f;
    assert_int_equal(o->cast_params(ctx, params, nw + 4, &err), 0);
    o->conv2d_forward(ctx, want, in, params, params + nw, &s);
    int moved = 0;
    for (size_t i = 0; i < nout; i++) moved |= want[i] != out[i];
    assert_true(moved);
    o->conv2d_backward(ctx, dx, dw, NULL, out, in, params, &s);
    o->conv2d_backward(ctx, dx, dw, NULL, out, in, params, &s);
    for (size_t i = 0; i < nin; i++) assert_true(representable(dx[i], prec));
    free(params), free(host), free(in), free(out), free(want), free(wr), free(dx), free(dw);
    o->ctx_destroy(ctx);
}

static void test_conv_fp16(void **state) { check_conv(PREC_FP16); }
static void test_conv_bf16(void **state) { check_conv(PREC_BF16); }

/* The loss gradients carry the loss scale; the loss values do not. */
static void test_loss_scale_in_loss(void **state)
{
    const Ops *o = ops_cpu();
    float cls[6] = {0.3f, -1.2f, 2.0f, -0.5f, 0.1f, 0.7f}, box[8] = {0.1f, 0.2f, -0.3f, 0.05f,
                                                                     0.3f, -0.1f, 0.2f, 0.4f};
    int32_t tgt[2] = {1, -1};
    float bt[8] = {0.2f, 0.1f, -0.2f, 0.1f, 0, 0, 0, 0};
    float l1[2] = {0}, l2[2] = {0}, dc1[6], dc2[6], db1[8], db2[8];
    o->detection_loss(NULL, l1, dc1, db1, cls, box, tgt, bt, 2, 1, 3, 2.0f, 0.25f, 1.5f, 0.1f,
                      50.0f, 0.0f, 1.0f);
    o->detection_loss(NULL, l2, dc2, db2, cls, box, tgt, bt, 2, 1, 3, 2.0f, 0.25f, 1.5f, 0.1f,
                      50.0f, 0.0f, 1024.0f);
    assert_true(l1[0] == l2[0] && l1[1] == l2[1]);
    for (int i = 0; i < 6; i++) assert_true(dc2[i] == 1024.0f * dc1[i]);
    for (int i = 0; i < 8; i++) assert_true(db2[i] == 1024.0f * db1[i]);
}

/* ---- the trainer's loss scale ----------------------------------------------------------------- */

static void init(Trainer *t, Precision prec, double scale, long interval)
{
    TrainSettings s;
    train_settings_default(&s, "tf_efficientdet_d0", TB_CLASSES, TB_BATCH, TB_H, TB_W);
    s.lr = 0.02, s.warmup_lr = 0.002, s.warmup_steps = 2, s.total_steps = 40;
    s.precision = prec, s.loss_scale_init = scale, s.loss_scale_interval = interval;
    Err err;
    if (trainer_init(t, &s, "cpu", NULL, &err) != 0) fail_msg("trainer_init: %s", err.msg);
}

static int step(Trainer *t, long i, TrainStats *st)
{
    TrainBatch *b = malloc(sizeof *b); /* 100 KB: not on the stack */
    assert_non_null(b);
    train_batch_make(b, i);
    Err err;
    int rc = trainer_step(t, b->input, b->boxes, b->classes, NULL, TB_ROWS, st, &err);
    free(b);
    if (rc != 0) fail_msg("step %ld: %s", i, err.msg);
    return st->skipped;
}

/* A scale of 2^40 overflows fp16's activation gradients: steps are skipped, weights and momentum
 * untouched, the scale halving each time, until one fits; then interval 2 doubles it after two
 * finite steps. A checkpoint carries scale and count into a fresh trainer. */
static void test_fp16_dynamic_scale(void **state)
{
    Trainer t;
    init(&t, PREC_FP16, 0x1p40, 2);
    size_t n = t.model.table.n_params;
    float *before = malloc(n * sizeof(float));
    assert_non_null(before);
    memcpy(before, t.model.params, n * sizeof(float));
    TrainStats st;
    long i = 0, skipped = 0;
    double scale = 0x1p40;
    while (step(&t, i, &st)) {
        assert_true(st.loss_scale == scale);
        assert_memory_equal(t.model.params, before, n * sizeof(float));
        scale /= 2, i++, skipped++;
        assert_true(t.loss_scale == scale);
        assert_int_equal(t.step, i);
        assert_true(i < 40);
    }
    assert_true(skipped >= 1);          /* 2^40 cannot fit */
    assert_true(isfinite(st.loss) && isfinite(st.grad_norm) && st.grad_norm > 0);
    assert_true(st.loss_scale == scale && t.loss_scale == scale);
    assert_int_equal(t.scale_good_steps, 1);
    assert_true(memcmp(t.model.params, before, n * sizeof(float)) != 0);
    print_message("      fp16: %ld steps skipped from 2^40, training at 2^%d\n", skipped,
                  (int)log2(scale));
    /* One more finite step completes the interval: the scale doubles. (If it overflows instead,
     * the scale halves; either way it moved by the rule.) */
    i++;
    if (!step(&t, i, &st)) assert_true(t.loss_scale == 2 * scale && t.scale_good_steps == 0);
    else assert_true(t.loss_scale == scale / 2);
    char path[256];
    snprintf(path, sizeof path, "%s/amp.safetensors", ((TmpDir *)*state)->dir);
    Err err;
    assert_int_equal(trainer_save(&t, path, 1, &err), 0);
    Trainer u;
    init(&u, PREC_FP16, 65536, 2);
    long epoch;
    if (trainer_resume(&u, path, &epoch, &err) != 0) fail_msg("resume: %s", err.msg);
    assert_true(u.loss_scale == t.loss_scale);
    assert_int_equal(u.scale_good_steps, t.scale_good_steps);
    assert_int_equal(u.step, t.step);
    free(before);
    trainer_free(&u);
    trainer_free(&t);
}

/* bf16 has fp32's range: no scaling, nothing skipped, even from a scale that overflows fp16.
 * (That its steps track fp32's is amp_cli.sh's check, at a size where train-mode BN is not
 * degenerate: at 64x64 the top level has 1x1 cells, BN over 2 values.) */
static void test_bf16_no_scaling(void **state)
{
    Trainer t;
    init(&t, PREC_BF16, 0x1p40, 2);
    TrainStats st;
    for (long i = 0; i < 4; i++) {
        assert_int_equal(step(&t, i, &st), 0);
        assert_true(st.loss_scale == 1.0 && t.loss_scale == 1.0);
        assert_true(isfinite(st.loss) && isfinite(st.grad_norm));
    }
    trainer_free(&t);
}

/* The starting scale must be a power of two (exact unscaling). */
static void test_bad_scale(void **state)
{
    TrainSettings s;
    train_settings_default(&s, "tf_efficientdet_d0", TB_CLASSES, TB_BATCH, TB_H, TB_W);
    s.precision = PREC_FP16, s.loss_scale_init = 1000;
    Trainer t;
    Err err;
    assert_int_not_equal(trainer_init(&t, &s, "cpu", NULL, &err), 0);
    assert_non_null(strstr(err.msg, "power of two"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_fp16),
        cmocka_unit_test(test_round_bf16),
        cmocka_unit_test(test_conv_fp16),
        cmocka_unit_test(test_conv_bf16),
        cmocka_unit_test(test_loss_scale_in_loss),
        cmocka_unit_test_setup_teardown(test_fp16_dynamic_scale, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test(test_bf16_no_scaling),
        cmocka_unit_test(test_bad_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
