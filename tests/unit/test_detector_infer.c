/* test_detector_infer.c: detector_infer on the CPU backend, which offers no graphs: it must give
 * exactly what model_forward + detector_run give (same counts, bit-identical rows), over several
 * batches with different inputs, with and without scaling to original sizes and for part of the
 * batch. Also: the CPU table leaves the graph and pinning ops NULL (ops.h: not offered), so the
 * detector never leaves DET_GRAPH_OFF and batch_stream_pin does nothing. The graph path itself
 * needs a GPU: tests/gpu/test_graph_gpu.c. */
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
#include "worker/batch_stream.h"
#include "worker/detector.h"
#include "worker/model/model.h"

enum { BATCH = 2, SIZE = 128 };

typedef struct Fixture {
    Model m;
    Anchors anc;
    Detector det;
    float *input; /* (BATCH, SIZE, SIZE, 3) */
    Detection *out_run, *out_infer;
    int count_run[BATCH], count_infer[BATCH];
} Fixture;

static int setup(void **state)
{
    Fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    ModelConfig cfg;
    Err err;
    if (model_config_get("tf_efficientdet_d0", 0, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(&f->m, &cfg, ops_cpu(), 0, &err) != 0) fail_msg("%s", err.msg);
    if (model_init_random(&f->m, 7, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(&f->m, BATCH, SIZE, SIZE, PLAN_INFER, &err) != 0) fail_msg("%s", err.msg);
    if (anchors_build(&f->anc, &f->m.cfg, SIZE, SIZE, &err) != 0) fail_msg("%s", err.msg);
    if (detector_init(&f->det, &f->m, &f->anc, &err) != 0) fail_msg("%s", err.msg);
    size_t rows = (size_t)BATCH * cfg.max_det_per_image;
    f->input = malloc(act_count(f->m.input) * sizeof(float));
    f->out_run = calloc(rows, sizeof(Detection));
    f->out_infer = calloc(rows, sizeof(Detection));
    assert_true(f->input && f->out_run && f->out_infer);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    detector_free(&f->det);
    detector_free(&f->det); /* idempotent */
    anchors_free(&f->anc);
    model_free(&f->m);
    free(f->input), free(f->out_run), free(f->out_infer);
    free(f);
    return 0;
}

static void random_input(Fixture *f, uint64_t seed)
{
    Rng r;
    rng_init(&r, seed, 1, 0);
    for (size_t i = 0; i < act_count(f->m.input); i++) f->input[i] = rng_normal(&r);
}

/* The two ways on the same input: counts equal, rows bit-identical. */
static void compare_once(Fixture *f, int n, const float *scale, const int *ow, const int *oh,
                         uint64_t seed)
{
    int max_det = f->m.cfg.max_det_per_image;
    random_input(f, seed);
    model_upload_input(&f->m, f->input);
    model_forward(&f->m);
    detector_run(&f->det, n, scale, ow, oh, f->out_run, f->count_run);

    /* Fresh outputs of the forward pass: garbage in the arena first, so a detector_infer that
     * skipped the forward pass would be caught. */
    memset(f->out_infer, 0x55, (size_t)BATCH * max_det * sizeof(Detection));
    for (int l = 0; l < f->m.cfg.num_levels; l++)
        memset(f->m.class_out[l].p, 0, act_count(f->m.class_out[l]) * sizeof(float));
    model_upload_input(&f->m, f->input);
    Err err;
    if (detector_infer(&f->det, n, scale, ow, oh, f->out_infer, f->count_infer, &err) != 0)
        fail_msg("detector_infer: %s", err.msg);
    assert_int_equal(f->det.graph, DET_GRAPH_OFF);

    int total = 0;
    for (int i = 0; i < n; i++) {
        if (f->count_infer[i] != f->count_run[i])
            fail_msg("seed %llu image %d: detector_infer gives %d detections, forward + "
                     "detector_run %d", (unsigned long long)seed, i, f->count_infer[i],
                     f->count_run[i]);
        const Detection *a = f->out_run + (size_t)i * max_det, *b = f->out_infer + (size_t)i * max_det;
        for (int j = 0; j < f->count_run[i]; j++)
            if (memcmp(&a[j], &b[j], sizeof a[j]))
                fail_msg("seed %llu image %d row %d: infer (%g %g %g %g %g class %d), run (%g %g "
                         "%g %g %g class %d)", (unsigned long long)seed, i, j, b[j].x1, b[j].y1,
                         b[j].x2, b[j].y2, b[j].score, b[j].class_id, a[j].x1, a[j].y1, a[j].x2,
                         a[j].y2, a[j].score, a[j].class_id);
        total += f->count_run[i];
    }
    printf("  seed %llu, %d of %d images%s: %d detections identical\n", (unsigned long long)seed,
           n, BATCH, scale ? ", scaled to original sizes" : "", total);
    assert_true(total > 0); /* random weights still give detections: the comparison means something */
}

static void test_infer_equals_forward_and_run(void **state)
{
    Fixture *f = *state;
    for (uint64_t seed = 1; seed <= 3; seed++) compare_once(f, BATCH, NULL, NULL, NULL, seed);
    const float scale[BATCH] = {0.5f, 0.25f};
    const int ow[BATCH] = {256, 512}, oh[BATCH] = {200, 480};
    compare_once(f, BATCH, scale, ow, oh, 4);
    compare_once(f, 1, scale, ow, oh, 5); /* part of the batch */
    detector_drop_graph(&f->det);         /* nothing to drop: graphs stay off */
    assert_int_equal(f->det.graph, DET_GRAPH_OFF);
    compare_once(f, BATCH, NULL, NULL, NULL, 6);
}

static void test_cpu_offers_no_graphs_or_pinning(void **state)
{
    (void)state;
    const Ops *o = ops_cpu();
    assert_null(o->graph_begin);
    assert_null(o->graph_end);
    assert_null(o->graph_launch);
    assert_null(o->host_register);
    assert_null(o->host_unregister);
    /* batch_stream_pin with such a backend does nothing, and freeing the stream stays safe. */
    BatchStream s;
    memset(&s, 0, sizeof s);
    batch_stream_pin(&s, o, NULL);
    assert_null(s.pin_ops);
    batch_stream_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_infer_equals_forward_and_run, setup, teardown),
        cmocka_unit_test(test_cpu_offers_no_graphs_or_pinning),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
