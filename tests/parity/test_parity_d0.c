/* test_parity_d0.c: the model against the effdet reference fixture (../shared/fixtures/
 * effdet_d0_128, found through $EFFDET_FIXTURES): every head output, the anchors, post-processing
 * from the reference's own head outputs, and detections end to end. A missing fixture fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/layout.h"
#include "shared/safetensors.h"
#include "worker/parity.h"
#include "worker/postprocess.h"

static char fixture_dir[1024];

static int setup(void **state)
{
    const char *root = getenv("EFFDET_FIXTURES");
    snprintf(fixture_dir, sizeof fixture_dir, "%s/effdet_d0_128", root ? root : "../shared/fixtures");
    return 0;
}

static float *read_ref(const SafeTensors *st, const char *name, size_t *n)
{
    const StTensor *t = st_find(st, name);
    if (!t) fail_msg("reference tensor %s missing from the fixture", name);
    *n = (size_t)st_numel(t);
    float *buf = malloc(*n * sizeof(float));
    assert_non_null(buf);
    Err err;
    if (st_read_f32(st, name, t->ndim, t->shape, buf, &err) != 0) fail_msg("%s", err.msg);
    return buf;
}

static void open_io(SafeTensors *st)
{
    char path[1200];
    Err err;
    snprintf(path, sizeof path, "%s/io.safetensors", fixture_dir);
    if (st_open(st, path, &err) != 0) fail_msg("%s", err.msg);
}

static void test_head_outputs_and_detections(void **state)
{
    ParityRun r;
    Err err;
    if (parity_run(&r, fixture_dir, "cpu", PREC_FP32, &err) != 0) fail_msg("parity_run: %s", err.msg);
    SafeTensors io;
    open_io(&io);
    const ModelConfig *c = &r.cfg;
    for (int l = 0; l < c->num_levels; l++) {
        char name[32];
        size_t n;
        for (int kind = 0; kind < 2; kind++) {
            snprintf(name, sizeof name, "%s.%d", kind ? "box_out" : "class_out", c->min_level + l);
            float *ref = read_ref(&io, name, &n);
            double e = parity_rel_err(kind ? r.box_out[l] : r.class_out[l], ref, n);
            print_message("%s: max|ours-ref|/max|ref| = %.3e (bound 1e-4)\n", name, e);
            if (!(e <= 1e-4)) fail_msg("%s: relative error %.3e > 1e-4", name, e);
            free(ref);
        }
    }
    size_t n;
    float *ref_det = read_ref(&io, "detections", &n);
    for (int b = 0; b < r.batch; b++) {
        int bad = parity_match_detections(r.detections + (size_t)b * 600, ref_det + (size_t)b * 600,
                                          100, 1e-3f, 1e-4f, 1e-5f);
        if (bad) fail_msg("image %d: %d detection rows unmatched end to end", b, bad);
    }
    free(ref_det);
    float *ref_anchors = read_ref(&io, "anchors", &n);
    assert_int_equal(n, (size_t)r.anchors.count * 4);
    double ea = parity_rel_err(r.anchors.boxes, ref_anchors, n);
    print_message("anchors: max rel err %.3e\n", ea);
    assert_true(ea <= 1e-7);
    free(ref_anchors);
    st_close(&io);
    parity_run_free(&r);
}

/* The reference's own head outputs through our post-processing: same detections to 1e-3 px. */
static void test_postprocess_from_reference_heads(void **state)
{
    SafeTensors io;
    open_io(&io);
    ModelConfig cfg;
    Err err;
    Anchors anchors;
    Postprocess pp;
    assert_int_equal(model_config_get("tf_efficientdet_d0", 90, &cfg, &err), 0);
    assert_int_equal(anchors_build(&anchors, &cfg, 128, 128, &err), 0);
    assert_int_equal(postprocess_init(&pp, &cfg, &anchors, &err), 0);
    int fh[MAX_LEVELS], fw[MAX_LEVELS], A = 9, B = 2;
    model_config_feat_sizes(&cfg, 128, 128, fh, fw);
    float *cls[MAX_LEVELS], *box[MAX_LEVELS];
    for (int l = 0; l < cfg.num_levels; l++) {
        char name[32];
        size_t n;
        snprintf(name, sizeof name, "class_out.%d", 3 + l);
        float *c = read_ref(&io, name, &n);
        cls[l] = malloc(n * sizeof(float));
        layout_nchw_to_nhwc(cls[l], c, B, A * 90, fh[l], fw[l]);
        free(c);
        snprintf(name, sizeof name, "box_out.%d", 3 + l);
        float *bx = read_ref(&io, name, &n);
        box[l] = malloc(n * sizeof(float));
        layout_nchw_to_nhwc(box[l], bx, B, A * 4, fh[l], fw[l]);
        free(bx);
    }
    size_t n;
    float *ref_det = read_ref(&io, "detections", &n);
    for (int b = 0; b < B; b++) {
        const float *cl[MAX_LEVELS], *bl[MAX_LEVELS];
        for (int l = 0; l < cfg.num_levels; l++) {
            cl[l] = cls[l] + (size_t)b * fh[l] * fw[l] * A * 90;
            bl[l] = box[l] + (size_t)b * fh[l] * fw[l] * A * 4;
        }
        Detection d[100];
        float rows[600] = {0};
        int k = postprocess_image(&pp, cl, bl, 0.0f, 0, 0, d);
        assert_int_equal(k, 100);
        for (int i = 0; i < k; i++) {
            float *row = rows + i * 6;
            row[0] = d[i].x1, row[1] = d[i].y1, row[2] = d[i].x2, row[3] = d[i].y2;
            row[4] = d[i].score, row[5] = (float)d[i].class_id;
        }
        int bad = parity_match_detections(rows, ref_det + (size_t)b * 600, 100, 1e-3f, 0.0f, 1e-5f);
        if (bad) fail_msg("image %d: %d rows unmatched from the reference head outputs", b, bad);
        /* Sorted by score, like effdet. */
        for (int i = 1; i < k; i++) assert_true(d[i - 1].score >= d[i].score);
    }
    for (int l = 0; l < cfg.num_levels; l++) free(cls[l]), free(box[l]);
    free(ref_det);
    postprocess_free(&pp);
    anchors_free(&anchors);
    st_close(&io);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_outputs_and_detections),
        cmocka_unit_test(test_postprocess_from_reference_heads),
    };
    return cmocka_run_group_tests_name("parity_d0", tests, setup, NULL);
}
