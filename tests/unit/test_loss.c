/* test_loss.c: the CPU detection_loss op and the anchor labeler on small hand-checkable cases.
 *
 * Loss: values against effdet's formulas written literally here in double (loss.py new_focal_loss,
 * huber_loss), gradients against central finite differences, both of that double reference (tight)
 * and of the op itself (loose, float32), with and without label smoothing; the Huber branches by
 * hand; ignored and background anchors; += into loss and = into the gradients; bit-identical
 * results for any thread count. Labeler: empty images, forced matches, two GTs sharing an anchor,
 * ties, the 0.5 threshold, crowd boxes, the batch layout, bad input; the tiled labeler against a
 * brute-force one over the whole IoU matrix, bit for bit; and its speed at D0/512.
 *
 * The brute-force labeler must round like effdet (and the labeler) do, one operation at a time,
 * so contraction into fused multiply-adds is off in this file. */
#pragma GCC optimize("fp-contract=off")

#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "shared/rng.h"
#include "worker/anchors.h"
#include "worker/labeler.h"

/* ---- loss ------------------------------------------------------------------------------------ */

/* One loss problem: rows x A anchors x C classes, with targets. */
typedef struct Case {
    size_t rows;
    int A, C;
    float *cls, *box, *box_target; /* (rows, A*C), (rows, A*4), (rows*A, 4) */
    int32_t *cls_target;           /* (rows*A) */
    float norm, alpha, gamma, delta, box_weight, ls;
} Case;

/* Random logits N(0, 2^2) with a few extreme ones, targets cycling positive / background /
 * ignore, box errors kept 0.02 away from the Huber kink so finite differences stay on one side. */
static void case_random(Case *k, size_t rows, int A, int C, float gamma, float ls, uint32_t seed)
{
    Rng r;
    rng_init(&r, 7, seed, 0);
    *k = (Case){rows, A, C, NULL, NULL, NULL, NULL, 0, 0.25f, gamma, 0.1f, 50.0f, ls};
    size_t n = rows * A;
    k->cls = malloc(n * C * sizeof(float));
    k->box = malloc(n * 4 * sizeof(float));
    k->box_target = malloc(n * 4 * sizeof(float));
    k->cls_target = malloc(n * sizeof(int32_t));
    int positives = 0;
    for (size_t i = 0; i < n * C; i++) k->cls[i] = 2.0f * rng_normal(&r);
    k->cls[0] = 12.0f, k->cls[1] = -12.0f; /* saturated sigmoid, both signs */
    for (size_t a = 0; a < n; a++) {
        int kind = (int)(a % 5);
        k->cls_target[a] = kind < 2 ? (int32_t)(rng_u32(&r) % (uint32_t)C) : kind == 4 ? -2 : -1;
        positives += kind < 2;
        for (int j = 0; j < 4; j++) {
            float t = kind < 2 && rng_uniform(&r) < 0.8f ? 0.3f * rng_normal(&r) : 0.0f;
            float e = 0.25f * rng_normal(&r);
            if (fabsf(fabsf(e) - k->delta) < 0.02f) e += 0.05f;
            k->box_target[4 * a + j] = t;
            k->box[4 * a + j] = t + e;
        }
    }
    k->norm = (float)positives + 1.0f;
}

static void case_free(Case *k)
{
    free(k->cls), free(k->box), free(k->box_target), free(k->cls_target);
}

/* effdet's new_focal_loss for one element, literally, in double. */
static double ref_focal(double x, int z, double alpha, double gamma, double ls)
{
    double p = 1.0 / (1.0 + exp(-x));
    double p_t = z * p + (1 - z) * (1 - p);
    double alpha_t = z * alpha + (1 - z) * (1 - alpha);
    double m = pow(1 - p_t, gamma);
    double zs = ls > 0 ? z * (1 - ls) + 0.5 * ls : z;
    double ce = fmax(x, 0) - x * zs + log1p(exp(-fabs(x))); /* binary_cross_entropy_with_logits */
    return alpha_t * m * ce;
}

/* effdet's huber_loss for one element with the mask, in double. */
static double ref_huber(double out, double target, double delta)
{
    if (target == 0) return 0;
    double ae = fabs(out - target), quad = fmin(ae, delta);
    return 0.5 * quad * quad + delta * (ae - quad);
}

/* The op on rows [r0, r0 + rows): returns loss[0] + box_weight * loss[1] in double. */
static double run_op(const Case *k, size_t r0, size_t rows, float *loss, float *dcls, float *dbox)
{
    const Ops *ops = ops_cpu();
    size_t a0 = r0 * k->A;
    ops->detection_loss(NULL, loss, dcls, dbox, k->cls + a0 * k->C, k->box + a0 * 4,
                        k->cls_target + a0, k->box_target + a0 * 4, rows, k->A, k->C, k->norm,
                        k->alpha, k->gamma, k->delta, k->box_weight, k->ls, 1.0f);
    return loss[0] + (double)k->box_weight * loss[1];
}

static void assert_grad(const char *what, const float *got, const double *want, size_t n,
                        double rtol)
{
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (!(d <= max_diff)) max_diff = d;
        if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
    }
    print_message("%s: max|diff| %.3e, max|ref| %.3e (bound %.1e max|ref|)\n", what, max_diff,
                  max_ref, rtol);
    if (!(max_diff <= rtol * max_ref)) fail_msg("%s: max|diff| %.3e too large", what, max_diff);
}

static void check_random_case(float gamma, float ls)
{
    Case k;
    case_random(&k, 7, 3, 5, gamma, ls, (uint32_t)(gamma * 10 + ls * 100));
    size_t n_anchor = k.rows * k.A, n_cls = n_anchor * k.C, n_box = n_anchor * 4;
    float loss[2] = {0, 0};
    float *dcls = malloc(n_cls * sizeof(float)), *dbox = malloc(n_box * sizeof(float));
    run_op(&k, 0, k.rows, loss, dcls, dbox);

    /* Values against the literal double reference. */
    double cls_ref = 0, box_ref = 0;
    for (size_t a = 0; a < n_anchor; a++) {
        for (int c = 0; c < k.C && k.cls_target[a] != -2; c++)
            cls_ref += ref_focal(k.cls[a * k.C + c], c == k.cls_target[a], k.alpha, k.gamma, k.ls);
        for (int j = 0; j < 4; j++)
            box_ref += ref_huber(k.box[4 * a + j], k.box_target[4 * a + j], k.delta);
    }
    cls_ref /= k.norm, box_ref /= 4.0 * k.norm;
    print_message("gamma %.1f ls %.1f: class loss %.7g (ref %.7g), box loss %.7g (ref %.7g)\n",
                  gamma, ls, loss[0], cls_ref, loss[1], box_ref);
    assert_true(fabs(loss[0] - cls_ref) <= 2e-6 * fabs(cls_ref));
    assert_true(fabs(loss[1] - box_ref) <= 2e-6 * fabs(box_ref));

    /* Gradients against central differences of the double reference (h = 1e-5). */
    double *want = malloc(n_cls * sizeof(double));
    for (size_t i = 0; i < n_cls; i++) {
        size_t a = i / k.C;
        int c = (int)(i % k.C), z = c == k.cls_target[a];
        double x = k.cls[i], h = 1e-5;
        want[i] = k.cls_target[a] == -2 ? 0
                : (ref_focal(x + h, z, k.alpha, k.gamma, k.ls) -
                   ref_focal(x - h, z, k.alpha, k.gamma, k.ls)) / (2 * h) / k.norm;
    }
    assert_grad("dcls vs d(double reference)", dcls, want, n_cls, 1e-5);
    double *want_box = malloc(n_box * sizeof(double));
    for (size_t i = 0; i < n_box; i++) {
        double h = 1e-6, x = k.box[i], t = k.box_target[i];
        want_box[i] = k.box_weight * (ref_huber(x + h, t, k.delta) - ref_huber(x - h, t, k.delta)) /
                      (2 * h) / (4.0 * k.norm);
    }
    assert_grad("dbox vs d(double reference)", dbox, want_box, n_box, 1e-5);

    /* The op itself by central differences of its float32 total, one row at a time so the total
     * stays small and float rounding does not swamp the difference. */
    for (size_t i = 0; i < n_cls + n_box; i++) {
        int is_cls = i < n_cls;
        size_t j = is_cls ? i : i - n_cls, row = j / (is_cls ? (size_t)k.A * k.C : (size_t)k.A * 4);
        float *x = is_cls ? k.cls + j : k.box + j, x0 = *x, h = is_cls ? 1e-2f : 2e-3f;
        float lp[2] = {0, 0}, lm[2] = {0, 0};
        *x = x0 + h;
        double fp = run_op(&k, row, 1, lp, NULL, NULL);
        *x = x0 - h;
        double fm = run_op(&k, row, 1, lm, NULL, NULL);
        *x = x0;
        (is_cls ? want : want_box)[j] = (fp - fm) / (2.0 * h);
    }
    assert_grad("dcls vs d(op)", dcls, want, n_cls, 2e-3);
    assert_grad("dbox vs d(op)", dbox, want_box, n_box, 2e-3);
    free(want), free(want_box), free(dcls), free(dbox);
    case_free(&k);
}

static void test_focal_and_huber_gradients(void **state)
{
    check_random_case(1.5f, 0.0f);
    check_random_case(1.5f, 0.1f);
    check_random_case(2.0f, 0.0f);
    check_random_case(2.0f, 0.1f);
}

/* Huber by hand (linear branch: d (|e| - d/2)): delta 0.1, norm 2, box_weight 50, one anchor; the components hit the quadratic
 * branch, the mask (target exactly 0), the linear branch below and above, and e == 0. */
static void test_huber_branches(void **state)
{
    const Ops *ops = ops_cpu();
    float target[8] = {0.3f, 0.0f, -0.2f, 0.05f, 0.4f, 0.0f, 0.0f, 0.0f};
    float box[8] = {0.35f, 1.0f, -0.5f, 0.5f, 0.4f, 0.0f, 0.0f, 0.0f};
    float cls[2] = {0, 0}, dcls[2], dbox[8];
    int32_t cls_target[2] = {-2, -2}; /* no class loss: only the box part is under test */
    float loss[2] = {0, 0};
    ops->detection_loss(NULL, loss, dcls, dbox, cls, box, cls_target, target, 2, 1, 1, 2.0f, 0.25f,
                        1.5f, 0.1f, 50.0f, 0.0f, 1.0f);
    double e0 = (double)(0.35f - 0.3f), e2 = (double)(-0.5f - -0.2f), e3 = (double)(0.5f - 0.05f);
    double want = (0.5 * e0 * e0 + 0.1 * (fabs(e2) - 0.05) + 0.1 * (e3 - 0.05)) / 8.0;
    double g = 50.0 / 8.0;
    double want_grad[8] = {g * e0, 0, -g * 0.1, g * 0.1, 0, 0, 0, 0};
    print_message("huber: loss %.9g, hand %.9g\n", loss[1], want);
    assert_true(fabs(loss[1] - want) <= 1e-7 * want);
    assert_true(loss[0] == 0.0f);
    for (int i = 0; i < 8; i++) {
        if (!(fabs(dbox[i] - want_grad[i]) <= 1e-6))
            fail_msg("dbox[%d] = %.9g, by hand %.9g", i, dbox[i], want_grad[i]);
    }
    assert_true(dcls[0] == 0.0f && dcls[1] == 0.0f);
}

/* Background anchors are a one-hot of zeros; ignored anchors add nothing and get zero gradients
 * (= semantics: the NaN poison must be overwritten); loss accumulates with +=. */
static void test_background_ignore_and_accumulate(void **state)
{
    const Ops *ops = ops_cpu();
    float cls[2 * 3] = {0.5f, -1.0f, 2.0f, 0.3f, 0.1f, -0.2f};
    float box[8] = {0}, target[8] = {0}, dbox[8];
    int32_t tgt[2] = {-1, -2};
    float dcls[6], loss[2] = {1.0f, 2.0f};
    for (int i = 0; i < 6; i++) dcls[i] = NAN;
    ops->detection_loss(NULL, loss, dcls, dbox, cls, box, tgt, target, 1, 2, 3, 1.0f, 0.25f, 1.5f,
                        0.1f, 50.0f, 0.0f, 1.0f);
    double want = 0;
    for (int c = 0; c < 3; c++) want += ref_focal(cls[c], 0, 0.25, 1.5, 0.0);
    print_message("background: %.9g, reference %.9g (+1 already there)\n", loss[0] - 1.0, want);
    assert_true(fabs((loss[0] - 1.0) - want) <= 1e-6);
    assert_true(loss[1] == 2.0f);
    for (int c = 0; c < 3; c++) assert_true(dcls[3 + c] == 0.0f);
    for (int c = 0; c < 3; c++) assert_true(isfinite(dcls[c]) && dcls[c] > 0.0f);
}

/* The fixed partition makes the result independent of the number of threads, bit for bit. */
static void test_deterministic_across_threads(void **state)
{
    Case k;
    case_random(&k, 1000, 9, 20, 1.5f, 0.0f, 99);
    size_t n_cls = k.rows * k.A * k.C, n_box = k.rows * k.A * 4;
    float l1[2] = {0, 0}, l8[2] = {0, 0};
    float *c1 = malloc(n_cls * sizeof(float)), *c8 = malloc(n_cls * sizeof(float));
    float *b1 = malloc(n_box * sizeof(float)), *b8 = malloc(n_box * sizeof(float));
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    run_op(&k, 0, k.rows, l1, c1, b1);
    omp_set_num_threads(8);
    run_op(&k, 0, k.rows, l8, c8, b8);
    omp_set_num_threads(saved);
    print_message("1 thread: %.9g %.9g; 8 threads: %.9g %.9g\n", l1[0], l1[1], l8[0], l8[1]);
    assert_memory_equal(l1, l8, sizeof l1);
    assert_memory_equal(c1, c8, n_cls * sizeof(float));
    assert_memory_equal(b1, b8, n_box * sizeof(float));
    /* Without gradient buffers the loss is the same. */
    float l0[2] = {0, 0};
    run_op(&k, 0, k.rows, l0, NULL, NULL);
    assert_memory_equal(l0, l1, sizeof l0);
    free(c1), free(c8), free(b1), free(b8);
    case_free(&k);
}

/* ---- labeler --------------------------------------------------------------------------------- */

/* Hand-made anchors, two levels: level 0 is a 2x2 grid of 10x10 boxes with 20 px pitch, level 1
 * one 10x20 box. */
static const float TOY_ANCHORS[5][4] = {
    {0, 0, 10, 10}, {0, 20, 10, 30}, {20, 0, 30, 10}, {20, 20, 30, 30}, {0, 0, 10, 20},
};

typedef struct Toy {
    Labeler lb;
    int32_t cls[10];
    float box[40];
} Toy;

static void toy_init(Toy *t, int max_boxes)
{
    Anchors a = {.count = 5, .level_start = {0, 4, 5}, .boxes = (float *)TOY_ANCHORS};
    Err err;
    if (labeler_init(&t->lb, &a, 3, max_boxes, &err) != 0) fail_msg("%s", err.msg);
}

static int toy_label(Toy *t, const float *boxes, const int32_t *classes, const uint8_t *crowd,
                     int n)
{
    Err err;
    int pos = labeler_label_image(&t->lb, t->cls, t->box, 0, 1, boxes, classes, crowd, n, &err);
    if (pos < 0) fail_msg("%s", err.msg);
    return pos;
}

/* The class targets of the 5 toy anchors against a literal list. */
static void assert_classes(const Toy *t, const int32_t *want)
{
    for (int a = 0; a < 5; a++)
        if (t->cls[a] != want[a]) fail_msg("anchor %d: class target %d, want %d", a, t->cls[a], want[a]);
}

/* effdet's FasterRcnnBoxCoder in double, for comparing box targets. */
static void ref_encode(double *out, const float *g, const float *a)
{
    double eps = 1e-7, ha = a[2] - a[0], wa = a[3] - a[1], h = g[2] - g[0], w = g[3] - g[1];
    out[0] = (g[0] + h / 2 - (a[0] + ha / 2)) / (ha + eps);
    out[1] = (g[1] + w / 2 - (a[1] + wa / 2)) / (wa + eps);
    out[2] = log((h + eps) / (ha + eps));
    out[3] = log((w + eps) / (wa + eps));
}

static void assert_box(const Toy *t, int a, const float *gt)
{
    double want[4];
    ref_encode(want, gt, TOY_ANCHORS[a]);
    for (int j = 0; j < 4; j++)
        if (!(fabs(t->box[4 * a + j] - want[j]) <= 1e-6))
            fail_msg("anchor %d box target %d: %.9g, want %.9g", a, j, t->box[4 * a + j], want[j]);
}

static void assert_background(const Toy *t, int a)
{
    assert_int_equal(t->cls[a], -1);
    for (int j = 0; j < 4; j++) assert_true(t->box[4 * a + j] == 0.0f);
}

static void test_labeler_empty_and_forced(void **state)
{
    Toy t;
    toy_init(&t, 4);
    /* No boxes, and padding rows only: every anchor is background. */
    float pad[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    int32_t pad_cls[2] = {-1, -1};
    assert_int_equal(toy_label(&t, NULL, NULL, NULL, 0), 0);
    for (int a = 0; a < 5; a++) assert_background(&t, a);
    assert_int_equal(toy_label(&t, pad, pad_cls, NULL, 2), 0);
    for (int a = 0; a < 5; a++) assert_background(&t, a);

    /* A small GT whose best IoU is 0.16 < 0.5 is still force-matched to that anchor. */
    float small[4] = {0, 0, 4, 4};
    int32_t cls2[1] = {2};
    assert_int_equal(toy_label(&t, small, cls2, NULL, 1), 1);
    assert_classes(&t, (int32_t[]){1, -1, -1, -1, -1});
    assert_box(&t, 0, small);

    /* A GT straddling anchors 2 and 3 equally (IoU 1/3 each) goes to the first of them. */
    float wide[4] = {20, 0, 30, 30};
    assert_int_equal(toy_label(&t, wide, cls2, NULL, 1), 1);
    assert_classes(&t, (int32_t[]){-1, -1, 1, -1, -1});
    assert_box(&t, 2, wide);

    /* IoU exactly 0.5 is positive: the 10x20 GT is anchor 4 itself (forced, IoU 1) and covers
     * half of anchor 0 (threshold). */
    float half[4] = {0, 0, 10, 20};
    assert_int_equal(toy_label(&t, half, cls2, NULL, 1), 2);
    assert_classes(&t, (int32_t[]){1, -1, -1, -1, 1});
    assert_box(&t, 0, half);
    assert_box(&t, 4, half);
    labeler_free(&t.lb);
    labeler_free(&t.lb); /* idempotent */
}

static void test_labeler_shared_anchor_and_crowd(void **state)
{
    Toy t;
    toy_init(&t, 4);
    /* Two GTs whose best anchor is anchor 0 (IoU 0.16 and 0.25): the lower GT index wins the
     * force match although anchor 0's own best GT is the second. */
    float two[8] = {0, 0, 4, 4, 0, 0, 5, 5};
    int32_t cls12[2] = {1, 2};
    assert_int_equal(toy_label(&t, two, cls12, NULL, 2), 1);
    assert_classes(&t, (int32_t[]){0, -1, -1, -1, -1});
    assert_box(&t, 0, two);

    /* Identical GTs: every anchor's max is a tie, the first GT wins both the threshold match and
     * the force match. */
    float same[8] = {20, 20, 30, 30, 20, 20, 30, 30};
    assert_int_equal(toy_label(&t, same, (int32_t[]){3, 1}, NULL, 2), 1);
    assert_classes(&t, (int32_t[]){-1, -1, -1, 2, -1});

    /* A crowd box is not a target at all, even where it matches perfectly. */
    float mixed[8] = {0, 0, 10, 10, 20, 20, 30, 30};
    uint8_t crowd[2] = {1, 0};
    assert_int_equal(toy_label(&t, mixed, cls12, crowd, 2), 1);
    assert_classes(&t, (int32_t[]){-1, -1, -1, 1, -1});
    assert_background(&t, 0);
    assert_box(&t, 3, mixed + 4);
    labeler_free(&t.lb);
}

static void test_labeler_batch_layout_and_errors(void **state)
{
    Toy t;
    toy_init(&t, 2);
    Err err;
    float gt[4] = {0, 0, 10, 20};
    int32_t cls1[1] = {1};
    /* Image 1 of 2: level 0 rows land at 4..7, the level 1 row at 2 * 4 + 1 = 9. */
    for (int i = 0; i < 10; i++) t.cls[i] = 99;
    assert_int_equal(labeler_label_image(&t.lb, t.cls, t.box, 1, 2, gt, cls1, NULL, 1, &err), 2);
    int32_t want[10] = {99, 99, 99, 99, 0, -1, -1, -1, 99, 0};
    for (int i = 0; i < 10; i++) assert_int_equal(t.cls[i], want[i]);

    float three[12] = {0};
    int32_t cls3[3] = {1, 1, 1};
    assert_int_equal(labeler_label_image(&t.lb, t.cls, t.box, 0, 1, three, cls3, NULL, 3, &err), -1);
    print_message("too many boxes: %s\n", err.msg);
    int32_t big[1] = {4};
    assert_int_equal(labeler_label_image(&t.lb, t.cls, t.box, 0, 1, gt, big, NULL, 1, &err), -1);
    print_message("class too large: %s\n", err.msg);
    float bad[4] = {0, 0, NAN, 10};
    assert_int_equal(labeler_label_image(&t.lb, t.cls, t.box, 0, 1, bad, cls1, NULL, 1, &err), -1);
    print_message("non-finite: %s\n", err.msg);
    labeler_free(&t.lb);
}

/* D0's anchors for an h x w input (90 classes) and a labeler over them. */
static void d0_labeler(Labeler *lb, Anchors *an, int h, int w, int max_boxes)
{
    ModelConfig cfg;
    Err err;
    if (model_config_get("tf_efficientdet_d0", 90, &cfg, &err) != 0 ||
        anchors_build(an, &cfg, h, w, &err) != 0 || labeler_init(lb, an, 90, max_boxes, &err) != 0)
        fail_msg("%s", err.msg);
}

/* effdet's AnchorLabeler in the most literal way: the whole GT x anchor IoU matrix, torch.max over
 * GTs, torch.argmax over anchors, the force match, the box coder; anchor order, batch of 1. */
static int ref_label(int32_t *cls, float *box, const Anchors *an, const float *gt,
                     const int32_t *classes, int n_gt)
{
    int n = an->count;
    float *iou = malloc((size_t)(n_gt ? n_gt : 1) * n * sizeof(float));
    int *match = malloc((size_t)n * sizeof(int));
    for (int g = 0; g < n_gt; g++)
        for (int a = 0; a < n; a++) {
            const float *p = gt + 4 * g, *q = an->boxes + 4 * a;
            float ih = fmaxf(fminf(p[2], q[2]) - fmaxf(p[0], q[0]), 0.0f);
            float iw = fmaxf(fminf(p[3], q[3]) - fmaxf(p[1], q[1]), 0.0f);
            float inter = ih * iw;
            float a1 = (p[2] - p[0]) * (p[3] - p[1]), a2 = (q[2] - q[0]) * (q[3] - q[1]);
            iou[(size_t)g * n + a] = inter == 0.0f ? 0.0f : inter / (a1 + a2 - inter);
        }
    for (int a = 0; a < n; a++) {
        int best = 0;
        for (int g = 1; g < n_gt; g++)
            if (iou[(size_t)g * n + a] > iou[(size_t)best * n + a]) best = g;
        match[a] = n_gt && iou[(size_t)best * n + a] >= 0.5f ? best : -1;
    }
    for (int g = n_gt - 1; g >= 0; g--) {
        int arg = 0;
        for (int a = 1; a < n; a++)
            if (iou[(size_t)g * n + a] > iou[(size_t)g * n + arg]) arg = a;
        match[arg] = g;
    }
    int positives = 0;
    for (int a = 0; a < n; a++) {
        float *t = box + 4 * a;
        const float *q = an->boxes + 4 * a, *p = gt + 4 * (match[a] < 0 ? 0 : match[a]);
        cls[a] = match[a] < 0 ? -1 : classes[match[a]] - 1;
        t[0] = t[1] = t[2] = t[3] = 0.0f;
        if (match[a] < 0) continue;
        positives++;
        float ha = q[2] - q[0], wa = q[3] - q[1], h = p[2] - p[0], w = p[3] - p[1];
        float yca = q[0] + ha / 2.0f, xca = q[1] + wa / 2.0f, yc = p[0] + h / 2.0f, xc = p[1] + w / 2.0f;
        ha += 1e-7f, wa += 1e-7f, h += 1e-7f, w += 1e-7f;
        t[0] = (yc - yca) / ha, t[1] = (xc - xca) / wa, t[2] = logf(h / ha), t[3] = logf(w / wa);
    }
    free(iou), free(match);
    return positives;
}

/* Random images on D0 anchors, with the awkward boxes mixed in: boxes equal to anchors (ties
 * between anchors and between GTs), duplicates, zero-area boxes and boxes far outside the image
 * (they overlap nothing: torch.argmax says anchor 0), tiny and image-sized boxes. */
static void test_labeler_matches_brute_force(void **state)
{
    Anchors an;
    Labeler lb;
    Err err;
    enum { N = 24 };
    d0_labeler(&lb, &an, 256, 192, N);
    size_t n = (size_t)an.count;
    int32_t *cls = malloc(n * sizeof(int32_t)), *ref_cls = malloc(n * sizeof(int32_t));
    float *box = malloc(n * 4 * sizeof(float)), *ref_box = malloc(n * 4 * sizeof(float));
    Rng r;
    rng_init(&r, 11, 0, 0);
    for (int image = 0; image < 20; image++) {
        float gt[4 * N];
        int32_t classes[N];
        int n_gt = image % 7 == 0 ? 0 : 1 + (int)(rng_u32(&r) % N);
        for (int g = 0; g < n_gt; g++) {
            float *p = gt + 4 * g;
            int kind = (int)(rng_u32(&r) % 8);
            classes[g] = 1 + (int)(rng_u32(&r) % 90);
            if (kind == 0) { /* exactly an anchor */
                memcpy(p, an.boxes + 4 * (rng_u32(&r) % n), 4 * sizeof(float));
            } else if (kind == 1 && g > 0) { /* a duplicate of an earlier GT */
                memcpy(p, gt + 4 * (rng_u32(&r) % (uint32_t)g), 4 * sizeof(float));
            } else if (kind == 2) { /* no area somewhere in the image, or far outside it */
                int far = rng_uniform(&r) < 0.3f;
                p[0] = p[2] = far ? 5000.0f : 200 * rng_uniform(&r) + 40;
                p[1] = p[3] = far ? 5000.0f : 150 * rng_uniform(&r) + 30;
                if (far) p[2] += 50, p[3] += 50;
            } else {
                float s = kind == 3 ? 4.0f : kind == 4 ? 250.0f : 90.0f;
                float h = 1 + s * rng_uniform(&r), w = 1 + s * rng_uniform(&r);
                p[0] = 256 * rng_uniform(&r) - h / 2, p[1] = 192 * rng_uniform(&r) - w / 2;
                p[2] = p[0] + h, p[3] = p[1] + w;
            }
        }
        int pos = labeler_label_image(&lb, cls, box, 0, 1, gt, classes, NULL, n_gt, &err);
        int ref_pos = ref_label(ref_cls, ref_box, &an, gt, classes, n_gt);
        assert_int_equal(pos, ref_pos);
        for (size_t a = 0; a < n; a++)
            if (cls[a] != ref_cls[a])
                fail_msg("image %d anchor %zu: class target %d, brute force %d", image, a, cls[a],
                         ref_cls[a]);
        assert_memory_equal(box, ref_box, n * 4 * sizeof(float));
    }
    free(cls), free(ref_cls), free(box), free(ref_box);
    labeler_free(&lb);
    anchors_free(&an);
}

/* D0 at 512 (49,104 anchors) with 100 random boxes: must be cheap next to a training step. */
static void test_labeler_speed(void **state)
{
    Anchors anchors;
    Labeler lb;
    Err err;
    d0_labeler(&lb, &anchors, 512, 512, 100);
    assert_int_equal(anchors.count, 49104);
    Rng r;
    rng_init(&r, 3, 0, 0);
    float boxes[400];
    int32_t classes[100];
    for (int i = 0; i < 100; i++) {
        float y = 480 * rng_uniform(&r), x = 480 * rng_uniform(&r);
        float h = 8 + 200 * rng_uniform(&r), w = 8 + 200 * rng_uniform(&r);
        boxes[4 * i] = y, boxes[4 * i + 1] = x, boxes[4 * i + 2] = y + h, boxes[4 * i + 3] = x + w;
        classes[i] = 1 + i % 90;
    }
    int32_t *cls = malloc(49104 * sizeof(int32_t));
    float *box = malloc(49104 * 4 * sizeof(float));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int pos = 0;
    for (int it = 0; it < 5; it++)
        pos = labeler_label_image(&lb, cls, box, 0, 1, boxes, classes, NULL, 100, &err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6) / 5;
    print_message("labeler D0/512, 100 boxes: %.2f ms per image, %d positives\n", ms, pos);
    assert_true(pos >= 100);
    free(cls), free(box);
    labeler_free(&lb);
    anchors_free(&anchors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_focal_and_huber_gradients),
        cmocka_unit_test(test_huber_branches),
        cmocka_unit_test(test_background_ignore_and_accumulate),
        cmocka_unit_test(test_deterministic_across_threads),
        cmocka_unit_test(test_labeler_empty_and_forced),
        cmocka_unit_test(test_labeler_shared_anchor_and_crowd),
        cmocka_unit_test(test_labeler_batch_layout_and_errors),
        cmocka_unit_test(test_labeler_matches_brute_force),
        cmocka_unit_test(test_labeler_speed),
    };
    return cmocka_run_group_tests_name("loss", tests, NULL, NULL);
}
