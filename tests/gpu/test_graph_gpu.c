/* test_graph_gpu.c: the CUDA backend's graphs and pinned host memory (kernels/cuda/graph.cu), and
 * detector_infer's use of them (worker/detector.c).
 *
 * - detector_infer with graphs must give exactly the detections of the eager path (model_forward
 *   + detector_run: the same kernels, so the same bits) for D0 at 128x128 with random weights,
 *   over batches with different inputs, through each of its states: the eager first call, the
 *   recording, replays, a dropped graph, and a new plan of the model (recorded again by itself).
 * - The ops' errors: graph_end without graph_begin, an empty or nonexistent slot, and a recording
 *   that fails because an op allocated during it, after which the context must work as before
 *   (an upload, a download, and a new recording).
 * - host_register / host_unregister: a malloc'd buffer round trips through the device from and
 *   into registered memory, a second registration is refused, and a read-only view of a
 *   shared-memory segment (what the worker maps of an augmenter's batch slots) can be pinned.
 * - Figures only: D0 at 512x512, batch 1, eager against graph replays (issue #8's target: 2 ms).
 *
 * Built and run only by `make test-gpu`: without a usable GPU it says why and exits non-zero. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/ops.h"
#include "shared/rng.h"
#include "shared/shm.h"
#include "tests/support/gpu_compare.h"
#include "worker/anchors.h"
#include "worker/detector.h"
#include "worker/model/model.h"

static const char *const MODEL = "tf_efficientdet_d0";

/* D0 planned for (batch, size, size) with random weights on the GPU, its anchors and detector. */
typedef struct Net {
    Model m;
    Anchors anc;
    Detector det;
    float *input;               /* host (batch, size, size, 3) */
    Detection *ref, *got;       /* (batch, max_det) */
    int *ref_count, *got_count; /* (batch) */
} Net;

static void net_init(Net *t, const Ops *gpu, int batch, int size)
{
    memset(t, 0, sizeof *t);
    /* The states under test need graphs on and the detect op on the GPU. */
    unsetenv("EFFDET_NO_GRAPHS");
    unsetenv("EFFDET_HOST_DETECT");
    ModelConfig cfg;
    Err err = {{0}};
    if (model_config_get(MODEL, 0, &cfg, &err) != 0) fail_msg("%s", err.msg);
    if (model_create(&t->m, &cfg, gpu, 0, &err) != 0) fail_msg("%s", err.msg);
    if (model_init_random(&t->m, 11, &err) != 0) fail_msg("%s", err.msg);
    if (model_plan(&t->m, batch, size, size, PLAN_INFER, &err) != 0) fail_msg("%s", err.msg);
    if (anchors_build(&t->anc, &t->m.cfg, size, size, &err) != 0) fail_msg("%s", err.msg);
    if (detector_init(&t->det, &t->m, &t->anc, &err) != 0) fail_msg("%s", err.msg);
    size_t rows = (size_t)batch * cfg.max_det_per_image;
    t->input = malloc(act_count(t->m.input) * sizeof(float));
    t->ref = calloc(rows, sizeof(Detection)), t->got = calloc(rows, sizeof(Detection));
    t->ref_count = calloc((size_t)batch, sizeof(int)), t->got_count = calloc((size_t)batch, sizeof(int));
    assert_true(t->input && t->ref && t->got && t->ref_count && t->got_count);
}

static void net_free(Net *t)
{
    detector_free(&t->det);
    anchors_free(&t->anc);
    model_free(&t->m);
    free(t->input), free(t->ref), free(t->got), free(t->ref_count), free(t->got_count);
}

static void net_input(Net *t, uint64_t seed)
{
    Rng r;
    rng_init(&r, seed, 3, 0);
    for (size_t i = 0; i < act_count(t->m.input); i++) t->input[i] = rng_normal(&r);
    model_upload_input(&t->m, t->input);
}

/* One batch both ways on the same input; detector_infer must leave the detector in state
 * `after`. Counts equal and rows bit-identical. */
static void infer_case(Net *t, uint64_t seed, DetectorGraph after, const char *what)
{
    const int batch = t->m.batch, max_det = t->m.cfg.max_det_per_image;
    net_input(t, seed);
    model_forward(&t->m);
    detector_run(&t->det, batch, NULL, NULL, NULL, t->ref, t->ref_count);

    /* The same input again; the outputs start as garbage so a row the replay misses shows. */
    net_input(t, seed);
    memset(t->got, 0x55, (size_t)batch * max_det * sizeof(Detection));
    Err err = {{0}};
    if (detector_infer(&t->det, batch, NULL, NULL, NULL, t->got, t->got_count, &err) != 0)
        fail_msg("%s: detector_infer: %s", what, err.msg);
    if (t->det.graph != after)
        fail_msg("%s: the detector's graph state is %d, expected %d", what, t->det.graph, after);
    int total = 0;
    for (int i = 0; i < batch; i++) {
        if (t->got_count[i] != t->ref_count[i])
            fail_msg("%s image %d: %d detections, eager %d", what, i, t->got_count[i],
                     t->ref_count[i]);
        for (int j = 0; j < t->ref_count[i]; j++) {
            const Detection *a = &t->ref[(size_t)i * max_det + j], *b = &t->got[(size_t)i * max_det + j];
            if (memcmp(a, b, sizeof *a))
                fail_msg("%s image %d row %d: (%.9g %.9g %.9g %.9g %.9g class %d), eager (%.9g "
                         "%.9g %.9g %.9g %.9g class %d)", what, i, j, b->x1, b->y1, b->x2, b->y2,
                         b->score, b->class_id, a->x1, a->y1, a->x2, a->y2, a->score, a->class_id);
        }
        total += t->ref_count[i];
    }
    printf("  %-44s %d images, %d detections identical to the eager path\n", what, batch, total);
    assert_true(total > 0);
}

static void test_infer_graph_matches_eager(void **state)
{
    const Backends *g = *state;
    REQUIRE_GPU_OP(g, graph_begin);
    REQUIRE_GPU_OP(g, detect);
    Net t;
    net_init(&t, g->gpu, 2, 128);
    assert_int_equal(t.det.on_backend, 1);
    assert_int_equal(t.det.graph, DET_GRAPH_WARMUP);
    infer_case(&t, 1, DET_GRAPH_RECORD, "call 1: eager");
    infer_case(&t, 2, DET_GRAPH_READY, "call 2: recorded, replayed");
    infer_case(&t, 3, DET_GRAPH_READY, "call 3: replayed");
    infer_case(&t, 4, DET_GRAPH_READY, "call 4: replayed");
    infer_case(&t, 2, DET_GRAPH_READY, "call 5: replayed, call 2's input again");

    /* New weights in the same blocks: the replay reads them. */
    Err err = {{0}};
    if (model_init_random(&t.m, 12, &err) != 0) fail_msg("%s", err.msg);
    infer_case(&t, 5, DET_GRAPH_READY, "new weights: replayed");

    detector_drop_graph(&t.det);
    assert_int_equal(t.det.graph, DET_GRAPH_WARMUP);
    infer_case(&t, 6, DET_GRAPH_RECORD, "dropped: eager");
    infer_case(&t, 7, DET_GRAPH_READY, "dropped: recorded again");

    /* A new plan moves the arena: detector_infer must notice and record again. */
    if (model_plan(&t.m, 2, 128, 128, PLAN_KEEP_ALL, &err) != 0) fail_msg("%s", err.msg);
    infer_case(&t, 8, DET_GRAPH_RECORD, "new plan: eager");
    infer_case(&t, 9, DET_GRAPH_READY, "new plan: recorded again");
    infer_case(&t, 10, DET_GRAPH_READY, "new plan: replayed");
    net_free(&t);
}

/* ---- the ops' errors ---------------------------------------------------------------------------- */

/* The context still works: values round trip, and a recording of a plain copy replays it. */
static void check_ctx_usable(const Backends *g, const char *what)
{
    const Ops *o = g->gpu;
    enum { N = 1000 };
    float host[N], back[N];
    for (int i = 0; i < N; i++) host[i] = (float)i * 0.5f - 7.0f;
    float *a = xalloc(o, g->gctx, sizeof host), *b = xalloc(o, g->gctx, sizeof host);
    o->mem_upload(g->gctx, a, host, sizeof host);
    Err err = {{0}};
    if (o->graph_begin(g->gctx, &err) != 0) fail_msg("%s: graph_begin: %s", what, err.msg);
    o->add_forward(g->gctx, b, a, a, N); /* b = 2a */
    if (o->graph_end(g->gctx, 1, &err) != 0) fail_msg("%s: graph_end: %s", what, err.msg);
    o->mem_zero(g->gctx, b, sizeof host);
    if (o->graph_launch(g->gctx, 1, &err) != 0) fail_msg("%s: graph_launch: %s", what, err.msg);
    o->mem_download(g->gctx, back, b, sizeof back);
    for (int i = 0; i < N; i++)
        if (back[i] != 2.0f * host[i])
            fail_msg("%s: a replayed add gives %g at %d, expected %g", what, back[i], i, 2.0f * host[i]);
    o->mem_free(g->gctx, a), o->mem_free(g->gctx, b);
    printf("  %s: the context records and replays as before\n", what);
}

static void expect_fail(int rc, const Err *err, const char *what)
{
    if (rc == 0) fail_msg("%s: succeeded, expected an error", what);
    printf("  %-40s -> %s\n", what, err->msg);
}

static void test_graph_errors(void **state)
{
    const Backends *g = *state;
    REQUIRE_GPU_OP(g, graph_begin);
    const Ops *o = g->gpu;
    Err err = {{0}};
    expect_fail(o->graph_end(g->gctx, 0, &err), &err, "graph_end without graph_begin");
    expect_fail(o->graph_launch(g->gctx, 3, &err), &err, "graph_launch of an empty slot");
    expect_fail(o->graph_launch(g->gctx, 4, &err), &err, "graph_launch of slot 4");
    expect_fail(o->graph_launch(g->gctx, -1, &err), &err, "graph_launch of slot -1");

    if (o->graph_begin(g->gctx, &err) != 0) fail_msg("graph_begin: %s", err.msg);
    expect_fail(o->graph_begin(g->gctx, &err), &err, "graph_begin twice");
    expect_fail(o->graph_launch(g->gctx, 0, &err), &err, "graph_launch while recording");
    expect_fail(o->graph_end(g->gctx, 9, &err), &err, "graph_end into slot 9");
    check_ctx_usable(g, "after a refused slot");

    /* An allocation while recording: refused, and so is the recording. */
    if (o->graph_begin(g->gctx, &err) != 0) fail_msg("graph_begin: %s", err.msg);
    void *p = o->mem_alloc(g->gctx, 4096, &err);
    if (p) {
        o->mem_free(g->gctx, p);
        fail_msg("mem_alloc during a recording succeeded");
    }
    printf("  %-40s -> %s\n", "mem_alloc while recording", err.msg);
    expect_fail(o->graph_end(g->gctx, 2, &err), &err, "graph_end after an allocation");
    check_ctx_usable(g, "after a failed recording");
    expect_fail(o->graph_launch(g->gctx, 2, &err), &err, "graph_launch of the failed slot");
}

/* ---- pinned host memory ------------------------------------------------------------------------- */

static void test_host_register(void **state)
{
    const Backends *g = *state;
    REQUIRE_GPU_OP(g, host_register);
    REQUIRE_GPU_OP(g, host_unregister);
    const Ops *o = g->gpu;
    Err err = {{0}};
    const size_t n = (1 << 20) + 37; /* not a whole number of pages */
    float *src = malloc(n * sizeof(float)), *dst = malloc(n * sizeof(float));
    assert_true(src && dst);
    for (size_t i = 0; i < n; i++) src[i] = (float)(i % 9973) - 17.0f;
    float *dev = xalloc(o, g->gctx, n * sizeof(float));

    for (int round = 0; round < 2; round++) { /* register, use, unregister, and again */
        if (o->host_register(g->gctx, src, n * sizeof(float), &err) != 0)
            fail_msg("round %d: host_register of a malloc'd buffer: %s", round, err.msg);
        if (o->host_register(g->gctx, dst, n * sizeof(float), &err) != 0)
            fail_msg("round %d: host_register of a second buffer: %s", round, err.msg);
        expect_fail(o->host_register(g->gctx, src, n * sizeof(float), &err), &err,
                    "host_register twice");
        memset(dst, 0, n * sizeof(float));
        o->mem_upload(g->gctx, dev, src, n * sizeof(float));   /* asynchronous DMA */
        o->mem_download(g->gctx, dst, dev, n * sizeof(float)); /* into registered memory */
        for (size_t i = 0; i < n; i++)
            if (dst[i] != src[i])
                fail_msg("round %d: value %zu came back as %g, sent %g", round, i, dst[i], src[i]);
        o->host_unregister(g->gctx, src);
        o->host_unregister(g->gctx, dst);
    }
    printf("  %zu floats round trip through registered memory, twice\n", n);
    expect_fail(o->host_register(g->gctx, NULL, 0, &err), &err, "host_register of nothing");

    /* The worker's case: a read-only mapping of a segment another process writes. */
    ShmSegment w = {0}, r = {0};
    const uint32_t slots = 2;
    const size_t slot_bytes = shm_slot_round(n * sizeof(float));
    if (shm_segment_create(&w, "graphtest", slots, slot_bytes, &err) != 0) fail_msg("%s", err.msg);
    memcpy(shm_slot(&w, 1), src, n * sizeof(float));
    if (shm_segment_open(&r, w.name, slots, slot_bytes, 0, &err) != 0) fail_msg("%s", err.msg);
    if (o->host_register(g->gctx, r.base, r.bytes, &err) != 0)
        fail_msg("host_register of a read-only shared-memory mapping (%zu bytes): %s", r.bytes,
                 err.msg);
    memset(dst, 0, n * sizeof(float));
    o->mem_upload(g->gctx, dev, shm_slot(&r, 1), n * sizeof(float));
    o->mem_download(g->gctx, dst, dev, n * sizeof(float));
    assert_memory_equal(dst, src, n * sizeof(float));
    o->host_unregister(g->gctx, r.base);
    printf("  a read-only view of a %zu-byte shared-memory segment pinned, uploaded, unpinned\n",
           r.bytes);
    shm_segment_close(&r);
    shm_segment_close(&w);
    o->mem_free(g->gctx, dev);
    free(src), free(dst);
}

/* ---- figures: D0 512x512 batch 1, eager against replays ---------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* Mean ms of one detector_infer (upload not included: the pipeline overlaps it). */
static double time_infer(Net *t, int iters)
{
    Err err = {{0}};
    double t0 = now_ms();
    for (int i = 0; i < iters; i++)
        if (detector_infer(&t->det, 1, NULL, NULL, NULL, t->got, t->got_count, &err) != 0)
            fail_msg("detector_infer: %s", err.msg);
    return (now_ms() - t0) / iters;
}

static void test_infer_timing(void **state)
{
    const Backends *g = *state;
    REQUIRE_GPU_OP(g, graph_begin);
    Net t;
    net_init(&t, g->gpu, 1, 512);
    net_input(&t, 1);
    enum { ITERS = 50 };
    /* Eager: warm up (cuDNN's choices), then time with the graph dropped before each call. */
    double eager = 0.0;
    Err err = {{0}};
    for (int i = 0; i < ITERS + 3; i++) {
        detector_drop_graph(&t.det); /* every call is the eager first call */
        double t0 = now_ms();
        if (detector_infer(&t.det, 1, NULL, NULL, NULL, t.got, t.got_count, &err) != 0)
            fail_msg("detector_infer: %s", err.msg);
        if (i >= 3) eager += now_ms() - t0;
    }
    eager /= ITERS;
    assert_int_equal(t.det.graph, DET_GRAPH_RECORD);
    time_infer(&t, 3); /* records, then replays */
    assert_int_equal(t.det.graph, DET_GRAPH_READY);
    double graph = time_infer(&t, ITERS);
    printf("  D0 512x512 batch 1, forward + detect + download: eager %.3f ms, graph %.3f ms "
           "(issue #8: <= 2 ms)\n", eager, graph);
    net_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_infer_graph_matches_eager),
        cmocka_unit_test(test_graph_errors),
        cmocka_unit_test(test_host_register),
        cmocka_unit_test(test_infer_timing),
    };
    return gpu_compare_main("test_graph_gpu", tests, sizeof tests / sizeof tests[0]);
}
