/* test_parity_train_targets.c: training targets and loss against the effdet reference fixture
 * (../shared/fixtures/effdet_d0_128/train.safetensors, found through $EFFDET_FIXTURES; a missing
 * fixture fails). The labeler must reproduce effdet's AnchorLabeler targets (class targets
 * exactly, box targets to 1e-5), and the CPU detection_loss op fed the reference's train-mode head
 * outputs and our targets must reproduce class_loss, box_loss and loss to 1e-5 relative, and its
 * gradients summed over positions the reference's gradients of the two predict biases (the heads
 * share their predict conv across levels, so d loss / d bias[ch] = sum of d loss / d out[..., ch]). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "shared/layout.h"
#include "shared/safetensors.h"
#include "worker/anchors.h"
#include "worker/labeler.h"

enum { B = 2, A = 9, C = 90, MAX_GT = 8 };

/* effdet's training constants for this fixture (README "Target assignment and loss"). */
static const float ALPHA = 0.25f, GAMMA = 1.5f, DELTA = 0.1f, BOX_WEIGHT = 50.0f;

/* Everything the tests share, built once: the fixture, the anchors and our targets. */
typedef struct Fixture {
    SafeTensors st;
    ModelConfig cfg;
    Anchors anchors;
    int fh[MAX_LEVELS], fw[MAX_LEVELS];
    int32_t *cls_target; /* level-major batch layout, see worker/labeler.h */
    float *box_target;
    int positives[B];
} Fixture;

static float *read_f32(const SafeTensors *st, const char *name, size_t *n)
{
    const StTensor *t = st_find(st, name);
    if (!t) fail_msg("reference tensor %s missing from the fixture", name);
    *n = (size_t)st_numel(t);
    float *buf = malloc(*n * sizeof(float) + 1);
    assert_non_null(buf);
    Err err;
    if (st_read_f32(st, name, t->ndim, t->shape, buf, &err) != 0) fail_msg("%s", err.msg);
    return buf;
}

static int32_t *read_i32(const SafeTensors *st, const char *name, size_t *n)
{
    const StTensor *t = st_find(st, name);
    if (!t) fail_msg("reference tensor %s missing from the fixture", name);
    if (t->dtype != ST_I32) fail_msg("%s: dtype %s, expected I32", name, st_dtype_name(t->dtype));
    *n = (size_t)st_numel(t);
    int32_t *buf = malloc(*n * sizeof(int32_t) + 1);
    assert_non_null(buf);
    memcpy(buf, t->data, *n * sizeof(int32_t));
    return buf;
}

static int setup(void **state)
{
    const char *root = getenv("EFFDET_FIXTURES");
    char path[1200];
    snprintf(path, sizeof path, "%s/effdet_d0_128/train.safetensors",
             root ? root : "../shared/fixtures");
    Fixture *f = calloc(1, sizeof *f);
    Err err;
    if (!f) return -1;
    if (st_open(&f->st, path, &err) != 0) {
        fprintf(stderr, "fixture missing: %s\n", err.msg);
        free(f);
        return -1;
    }
    if (model_config_get("tf_efficientdet_d0", C, &f->cfg, &err) != 0 ||
        anchors_build(&f->anchors, &f->cfg, 128, 128, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    model_config_feat_sizes(&f->cfg, 128, 128, f->fh, f->fw);

    size_t nb, nc;
    float *boxes = read_f32(&f->st, "gt_boxes", &nb);
    float *classes_f = read_f32(&f->st, "gt_classes", &nc);
    if (nb != B * MAX_GT * 4 || nc != B * MAX_GT) {
        fprintf(stderr, "gt_boxes/gt_classes: %zu/%zu values, expected %d/%d\n", nb, nc,
                B * MAX_GT * 4, B * MAX_GT);
        return -1;
    }
    int32_t classes[B * MAX_GT];
    for (int i = 0; i < B * MAX_GT; i++) classes[i] = (int32_t)lrintf(classes_f[i]);

    Labeler lb;
    size_t count = (size_t)f->anchors.count;
    f->cls_target = malloc(B * count * sizeof(int32_t));
    f->box_target = malloc(B * count * 4 * sizeof(float));
    if (!f->cls_target || !f->box_target) return -1;
    if (labeler_init(&lb, &f->anchors, C, MAX_GT, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    for (int b = 0; b < B; b++) {
        f->positives[b] = labeler_label_image(&lb, f->cls_target, f->box_target, b, B,
                                              boxes + b * MAX_GT * 4, classes + b * MAX_GT, NULL,
                                              MAX_GT, &err);
        if (f->positives[b] < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return -1;
        }
    }
    labeler_free(&lb);
    free(boxes);
    free(classes_f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    Fixture *f = *state;
    if (!f) return 0;
    free(f->cls_target);
    free(f->box_target);
    anchors_free(&f->anchors);
    st_close(&f->st);
    free(f);
    return 0;
}

static void test_labeler_matches_effdet(void **state)
{
    Fixture *f = *state;
    size_t n;
    float *ref_pos = read_f32(&f->st, "label.num_positives", &n);
    assert_int_equal(n, B);
    for (int b = 0; b < B; b++) {
        print_message("image %d: %d positives (effdet %g)\n", b, f->positives[b], ref_pos[b]);
        assert_int_equal(f->positives[b], (int)ref_pos[b]);
    }
    free(ref_pos);
    for (int l = 0; l < f->cfg.num_levels; l++) {
        char name[32];
        size_t start = (size_t)B * f->anchors.level_start[l];
        size_t rows = (size_t)B * f->fh[l] * f->fw[l] * A;
        snprintf(name, sizeof name, "label.cls.%d", f->cfg.min_level + l);
        int32_t *ref_cls = read_i32(&f->st, name, &n);
        assert_int_equal(n, rows);
        int mismatches = 0;
        for (size_t i = 0; i < rows; i++)
            if (f->cls_target[start + i] != ref_cls[i]) {
                if (mismatches++ < 5)
                    print_message("%s[%zu]: ours %d, effdet %d\n", name, i, f->cls_target[start + i],
                                  ref_cls[i]);
            }
        free(ref_cls);
        snprintf(name, sizeof name, "label.box.%d", f->cfg.min_level + l);
        float *ref_box = read_f32(&f->st, name, &n);
        assert_int_equal(n, rows * 4);
        double max_diff = 0;
        for (size_t i = 0; i < rows * 4; i++) {
            double d = fabs((double)f->box_target[4 * start + i] - ref_box[i]);
            if (!(d <= max_diff)) max_diff = d;
        }
        free(ref_box);
        print_message("level %d: %d class target mismatches, box max|diff| %.3e (bound 1e-5)\n",
                      f->cfg.min_level + l, mismatches, max_diff);
        assert_int_equal(mismatches, 0);
        if (!(max_diff <= 1e-5)) fail_msg("%s: max|diff| %.3e > 1e-5", name, max_diff);
    }
}

/* |ours - ref| <= 1e-5 |ref|, printed either way. */
static void assert_rel(const char *what, double ours, double ref)
{
    double rel = fabs(ours - ref) / fabs(ref);
    print_message("%s: ours %.9g, effdet %.9g, rel diff %.3e (bound 1e-5)\n", what, ours, ref, rel);
    if (!(rel <= 1e-5)) fail_msg("%s: relative difference %.3e > 1e-5", what, rel);
}

static void test_loss_matches_effdet(void **state)
{
    Fixture *f = *state;
    const Ops *ops = ops_cpu();
    Err err;
    OpsCtx *ctx = ops->ctx_create(0, &err);
    assert_non_null(ctx);
    float loss[2] = {0, 0};
    float norm = (float)(f->positives[0] + f->positives[1]) + 1.0f;
    double dbias_cls[A * C] = {0}, dbias_box[A * 4] = {0};
    for (int l = 0; l < f->cfg.num_levels; l++) {
        int h = f->fh[l], w = f->fw[l], level = f->cfg.min_level + l;
        size_t rows = (size_t)B * h * w, n, start = (size_t)B * f->anchors.level_start[l];
        char name[40];
        snprintf(name, sizeof name, "train.class_out.%d", level);
        float *nchw = read_f32(&f->st, name, &n);
        assert_int_equal(n, rows * A * C);
        float *cls = malloc(n * sizeof(float)), *dcls = malloc(n * sizeof(float));
        layout_nchw_to_nhwc(cls, nchw, B, A * C, h, w);
        free(nchw);
        snprintf(name, sizeof name, "train.box_out.%d", level);
        nchw = read_f32(&f->st, name, &n);
        assert_int_equal(n, rows * A * 4);
        float *box = malloc(n * sizeof(float)), *dbox = malloc(n * sizeof(float));
        layout_nchw_to_nhwc(box, nchw, B, A * 4, h, w);
        free(nchw);

        ops->detection_loss(ctx, loss, dcls, dbox, cls, box, f->cls_target + start,
                            f->box_target + 4 * start, rows, A, C, norm, ALPHA, GAMMA, DELTA,
                            BOX_WEIGHT, 0.0f, 1.0f);
        for (size_t r = 0; r < rows; r++) {
            for (int ch = 0; ch < A * C; ch++) dbias_cls[ch] += dcls[r * A * C + ch];
            for (int ch = 0; ch < A * 4; ch++) dbias_box[ch] += dbox[r * A * 4 + ch];
        }
        free(cls), free(dcls), free(box), free(dbox);
    }
    ops->ctx_destroy(ctx);

    size_t n;
    float *ref_cls = read_f32(&f->st, "class_loss", &n);
    float *ref_box = read_f32(&f->st, "box_loss", &n);
    float *ref_loss = read_f32(&f->st, "loss", &n);
    assert_rel("class_loss", loss[0], ref_cls[0]);
    assert_rel("box_loss", loss[1], ref_box[0]);
    assert_rel("loss", (double)loss[0] + BOX_WEIGHT * (double)loss[1], ref_loss[0]);
    free(ref_cls), free(ref_box), free(ref_loss);

    /* Gradients: the bias of each head's predict conv collects the whole gradient of its output. */
    const char *names[2] = {"grad.class_net.predict.conv_pw.bias", "grad.box_net.predict.conv_pw.bias"};
    const double *ours[2] = {dbias_cls, dbias_box};
    for (int k = 0; k < 2; k++) {
        float *ref = read_f32(&f->st, names[k], &n);
        assert_int_equal(n, k ? A * 4 : A * C);
        double max_diff = 0, max_ref = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs(ours[k][i] - ref[i]);
            if (!(d <= max_diff)) max_diff = d;
            if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
        }
        print_message("%s: max|diff| %.3e, max|ref| %.3e (bound 1e-6 + 1e-5 max|ref|)\n",
                      names[k], max_diff, max_ref);
        if (!(max_diff <= 1e-6 + 1e-5 * max_ref))
            fail_msg("%s: max|diff| %.3e too large", names[k], max_diff);
        free(ref);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labeler_matches_effdet),
        cmocka_unit_test(test_loss_matches_effdet),
    };
    return cmocka_run_group_tests_name("parity_train_targets", tests, setup, teardown);
}
