/* test_trainer.c: the training step and its state: learning-rate schedule and EMA warm-up,
 * determinism (two runs bit-identical), exact resume through a checkpoint (N steps straight ==
 * N/2 steps, save, a fresh trainer resumed, N/2 steps), and checkpoints refused when torn,
 * corrupted or of another model. Small model and images so it runs in seconds. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/rng.h"
#include "tests/support/train_batch.h"
#include "worker/trainer.h"

enum { B = TB_BATCH, H = TB_H, W = TB_W, M = TB_ROWS };

static char dir[] = "/tmp/effdet_trainer_XXXXXX";

static int setup(void **state) { return mkdtemp(dir) ? 0 : -1; }
static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}


static void settings(TrainSettings *s)
{
    train_settings_default(s, "tf_efficientdet_d0", 3, B, H, W);
    s->lr = 0.02, s->warmup_lr = 0.002, s->warmup_steps = 2, s->total_steps = 8;
}

static void init(Trainer *t)
{
    TrainSettings s;
    Err err;
    settings(&s);
    if (trainer_init(t, &s, "cpu", NULL, &err) != 0) fail_msg("trainer_init: %s", err.msg);
}

static void run_steps(Trainer *t, long n)
{
    TrainBatch *b = malloc(sizeof *b);
    for (long i = 0; i < n; i++) {
        TrainStats st;
        Err err;
        train_batch_make(b, t->step);
        if (trainer_step(t, b->input, b->boxes, b->classes, NULL, M, &st, &err) != 0)
            fail_msg("step %ld: %s", t->step, err.msg);
        assert_true(isfinite(st.loss) && st.loss > 0);
    }
    free(b);
}

static void download(Trainer *t, float **p, float **mom, float **ema)
{
    size_t n = t->model.table.n_params * sizeof(float);
    *p = malloc(n), *mom = malloc(n), *ema = malloc(n);
    t->model.ops->mem_download(t->model.ctx, *p, t->model.params, n);
    t->model.ops->mem_download(t->model.ctx, *mom, t->momentum, n);
    t->model.ops->mem_download(t->model.ctx, *ema, t->ema_params, n);
}

static void test_schedule(void **state)
{
    TrainSettings s;
    settings(&s);
    assert_float_equal(trainer_lr_at(&s, 0), 0.002, 1e-12);
    assert_float_equal(trainer_lr_at(&s, 1), 0.011, 1e-12);
    assert_float_equal(trainer_lr_at(&s, 2), 0.02, 1e-12);
    assert_float_equal(trainer_lr_at(&s, 5), 0.5 * 0.02 * (1 + cos(M_PI * 3 / 6.0)), 1e-12);
    assert_float_equal(trainer_lr_at(&s, 8), 0.0, 1e-12);
    assert_float_equal(trainer_ema_decay_at(&s, 0), 0.1, 1e-12);
    assert_float_equal(trainer_ema_decay_at(&s, 90), 91.0 / 100.0, 1e-12);
    assert_float_equal(trainer_ema_decay_at(&s, 1000000), 0.9998, 1e-12);
}

static void test_deterministic_and_resume(void **state)
{
    Trainer a, b;
    char path[256];
    snprintf(path, sizeof path, "%s/checkpoint-2.safetensors", dir);
    init(&a);
    run_steps(&a, 4);
    init(&b);
    run_steps(&b, 2);
    Err err;
    if (trainer_save(&b, path, 1, &err) != 0) fail_msg("%s", err.msg);
    trainer_free(&b);
    Trainer c;
    init(&c);
    long epoch = -1;
    if (trainer_resume(&c, path, &epoch, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(c.step, 2);
    assert_int_equal(epoch, 1);
    run_steps(&c, 2);
    float *pa, *ma, *ea, *pc, *mc, *ec;
    download(&a, &pa, &ma, &ea);
    download(&c, &pc, &mc, &ec);
    size_t n = a.model.table.n_params * sizeof(float);
    assert_memory_equal(pa, pc, n);
    assert_memory_equal(ma, mc, n);
    assert_memory_equal(ea, ec, n);
    free(pa), free(ma), free(ea), free(pc), free(mc), free(ec);
    trainer_free(&a);
    trainer_free(&c);
}

static void expect_refused(Trainer *t, const char *path, const char *needle)
{
    long epoch;
    Err err;
    assert_int_equal(trainer_resume(t, path, &epoch, &err), -1);
    print_message("refused: %s\n", err.msg);
    if (!strstr(err.msg, needle) || !strstr(err.msg, path))
        fail_msg("'%s' lacks '%s' or the file name", err.msg, needle);
}

static void test_bad_checkpoints(void **state)
{
    Trainer t;
    init(&t);
    char good[256], bad[256], cmd[700];
    Err err;
    snprintf(good, sizeof good, "%s/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    assert_int_equal(trainer_save(&t, good, 0, &err), 0);
    /* Torn: the write was cut short. */
    snprintf(cmd, sizeof cmd, "head -c 3000000 %s > %s", good, bad);
    assert_int_equal(system(cmd), 0);
    expect_refused(&t, bad, "past the data");
    /* Corrupted: one byte of data flipped, same length. */
    snprintf(cmd, sizeof cmd, "cp %s %s && printf '\\x55' | dd of=%s bs=1 seek=2000000 conv=notrunc status=none",
             good, bad, bad);
    assert_int_equal(system(cmd), 0);
    expect_refused(&t, bad, "checksum mismatch");
    /* Another model's weights are not a checkpoint of this one. */
    TrainSettings s;
    settings(&s);
    s.num_classes = 4;
    Trainer other;
    if (trainer_init(&other, &s, "cpu", NULL, &err) != 0) fail_msg("%s", err.msg);
    expect_refused(&other, good, "not tf_efficientdet_d0 with 4");
    trainer_free(&other);
    trainer_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_deterministic_and_resume),
        cmocka_unit_test(test_bad_checkpoints),
    };
    return cmocka_run_group_tests_name("trainer", tests, setup, teardown);
}
