/* test_model.c: the model on shapes the fixture does not cover: non-square sizes not divisible by
 * 2^max_level, batch independence, the two memory plans agreeing, and the deepest variant (D7x,
 * levels P3-P8, plain-sum BiFPN) wiring up and running. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/rng.h"
#include "worker/anchors.h"
#include "worker/model/model.h"

static void make_model(Model *m, const char *name, int num_classes, int batch, int h, int w,
                       PlanMode mode, int random)
{
    ModelConfig cfg;
    Err err;
    if (model_config_get(name, num_classes, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(m, &cfg, ops_cpu(), 0, &err) != 0) fail_msg("%s", err.msg);
    if (random && model_init_random(m, 99, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(m, batch, h, w, mode, &err) != 0) fail_msg("%s", err.msg);
}

static void fill_input(Model *m, int image, uint32_t seed)
{
    Rng r;
    rng_init(&r, seed, 1, 0);
    size_t per = (size_t)m->in_h * m->in_w * 3;
    for (size_t i = 0; i < per; i++) m->input.p[image * per + i] = rng_normal(&r);
}

static size_t level_count(const Act4 *a) { return act_count(*a); }

static void test_odd_size_shapes_and_anchors(void **state)
{
    Model m;
    make_model(&m, "tf_efficientdet_d0", 7, 2, 100, 75, PLAN_INFER, 1);
    int fh[MAX_LEVELS], fw[MAX_LEVELS];
    model_config_feat_sizes(&m.cfg, 100, 75, fh, fw);
    int expect_h[5] = {13, 7, 4, 2, 1}, expect_w[5] = {10, 5, 3, 2, 1};
    size_t cells = 0;
    for (int l = 0; l < 5; l++) {
        assert_int_equal(fh[l], expect_h[l]);
        assert_int_equal(fw[l], expect_w[l]);
        cells += (size_t)fh[l] * fw[l];
    }
    fill_input(&m, 0, 1);
    fill_input(&m, 1, 2);
    model_forward(&m);
    for (int l = 0; l < 5; l++) {
        const Act4 *c = &m.class_out[l], *b = &m.box_out[l];
        assert_int_equal(c->h, fh[l]);
        assert_int_equal(c->w, fw[l]);
        assert_int_equal(c->c, 9 * 7);
        assert_int_equal(b->c, 9 * 4);
        for (size_t i = 0; i < level_count(c); i++) assert_true(isfinite(c->p[i]));
        for (size_t i = 0; i < level_count(b); i++) assert_true(isfinite(b->p[i]));
    }
    Anchors a;
    Err err;
    assert_int_equal(anchors_build(&a, &m.cfg, 100, 75, &err), 0);
    assert_int_equal(a.count, (int)(cells * 9));
    /* Strides are H/fh and W/fw as floats: the first P3 anchor centre is (100/13/2, 75/10/2). */
    float cy = (a.boxes[0] + a.boxes[2]) / 2, cx = (a.boxes[1] + a.boxes[3]) / 2;
    assert_float_equal(cy, 100.0 / 13 / 2, 1e-5);
    assert_float_equal(cx, 75.0 / 10 / 2, 1e-5);
    anchors_free(&a);
    model_free(&m);
    model_free(&m); /* idempotent */
}

/* Image 1 of a batch of 2 computes the same as that image alone, and the memory-sharing plan
 * computes the same as the keep-everything plan. */
static void test_batch_and_plan_agree(void **state)
{
    Model pair, single, keep;
    make_model(&pair, "tf_efficientdet_d0", 5, 2, 96, 80, PLAN_INFER, 1);
    make_model(&single, "tf_efficientdet_d0", 5, 1, 96, 80, PLAN_INFER, 1);
    make_model(&keep, "tf_efficientdet_d0", 5, 2, 96, 80, PLAN_KEEP_ALL, 1);
    assert_true(keep.arena_bytes > pair.arena_bytes);
    print_message("arena: %.1f MB shared plan, %.1f MB keep-all plan\n", pair.arena_bytes / 1048576.0,
                  keep.arena_bytes / 1048576.0);
    fill_input(&pair, 0, 5), fill_input(&pair, 1, 6);
    fill_input(&keep, 0, 5), fill_input(&keep, 1, 6);
    fill_input(&single, 0, 6);
    model_forward(&pair);
    model_forward(&single);
    model_forward(&keep);
    for (int l = 0; l < pair.cfg.num_levels; l++) {
        size_t n = level_count(&single.class_out[l]);
        const float *second = pair.class_out[l].p + n;
        double worst = 0;
        for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(second[i] - single.class_out[l].p[i]));
        if (worst > 1e-4) fail_msg("level %d: batch image 1 differs from the single run by %g", l, worst);
        assert_memory_equal(pair.class_out[l].p, keep.class_out[l].p, 2 * n * sizeof(float));
        assert_memory_equal(pair.box_out[l].p, keep.box_out[l].p, level_count(&pair.box_out[l]) * sizeof(float));
    }
    model_free(&pair), model_free(&single), model_free(&keep);
}

static void test_d7x_runs(void **state)
{
    Model m;
    /* 200x130 halves to 1x1 at P8 on both axes at the same level. Zero weights keep it cheap:
     * the point is the wiring (6 levels, sum fusion, P8 from P7) and the shapes. */
    make_model(&m, "tf_efficientdet_d7x", 0, 1, 200, 130, PLAN_INFER, 0);
    assert_int_equal(m.cfg.num_levels, 6);
    assert_int_equal(m.cfg.n_nodes, 10);
    fill_input(&m, 0, 3);
    model_forward(&m);
    assert_int_equal(m.class_out[5].h, 1);
    assert_int_equal(m.class_out[5].w, 1);
    assert_int_equal(m.class_out[0].h, 25);
    assert_int_equal(m.class_out[0].w, 17);
    assert_int_equal(m.class_out[0].c, 9 * 90);
    model_free(&m);
}

static void test_plan_refuses_bad_sizes(void **state)
{
    ModelConfig cfg;
    Model m;
    Err err;
    assert_int_equal(model_config_get("d0", 0, &cfg, &err), 0);
    assert_int_equal(model_create(&m, &cfg, ops_cpu(), 0, &err), 0);
    assert_int_equal(model_plan(&m, 1, 8, 512, PLAN_INFER, &err), -1);
    assert_non_null(strstr(err.msg, "too small or too thin"));
    assert_int_equal(model_plan(&m, 0, 64, 64, PLAN_INFER, &err), -1);
    model_free(&m);
    assert_int_equal(model_config_get("tf_efficientdet_d9", 0, &cfg, &err), -1);
    assert_non_null(strstr(err.msg, "unknown model 'tf_efficientdet_d9'"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_odd_size_shapes_and_anchors),
        cmocka_unit_test(test_batch_and_plan_agree),
        cmocka_unit_test(test_d7x_runs),
        cmocka_unit_test(test_plan_refuses_bad_sizes),
    };
    return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
