/* test_detect_gpu.c: the detection ops of the CUDA backend against the host code they stand in
 * for: label_anchors against worker/labeler.c, detect against worker/postprocess.c.
 *
 * label_anchors must match: for D0 anchors at several input sizes, batches of random GT
 * sets whose rows cover every case of labeler.h's rules (crowd and padding rows, a class 0 row,
 * boxes equal to an anchor or half of one, duplicated boxes, boxes that overlap no anchor, zero
 * area boxes, clusters of tiny boxes that force-match one anchor) are labeled on both, and
 * cls_target and the positives must be identical, box_target equal up to the last bits (the
 * GPU's logf is CUDA's, within 1 ulp of glibc's).
 *
 * detect: random logits, several of them with many exactly equal values (a few levels, +0 and
 * -0, logits whose sigmoid rounds to 1), and random box deltas. The reference is
 * postprocess_image's own top-k and decoded candidates, put through the greedy NMS below in the
 * op's documented order: score descending, class ascending, then top-k order (logit descending,
 * lower flat index first). postprocess_image breaks the last tie (same score, same class) by heap
 * slot instead, which no parallel code can reproduce; so the test's NMS is first run in
 * postprocess_image's own order and must then reproduce postprocess_image's output exactly, which
 * shows it is the same NMS, and the test reports for how many images the tie order changed the
 * answer. Detections are compared as sets: each reference row must match an unused row of the
 * op's with the same class, score within 1e-6 and box coordinates within 1e-4 |ref| + 1e-3 (the
 * GPU's expf is CUDA's, within 2 ulp of glibc's); rows past the last must be zero. The maximum
 * differences and the number of bit-identical rows in place are printed.
 *
 * Built and run only by `make test-gpu`: without a usable GPU it says why and exits non-zero. */
/* The reference IoU below must round as postprocess.c's compiled iou() does (see ref_iou). */
#pragma GCC optimize("fp-contract=off")

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "tests/support/gpu_compare.h"
#include "worker/anchors.h"
#include "worker/labeler.h"
#include "worker/model/config.h"
#include "worker/postprocess.h"

static const char *const MODEL = "efficientdet_d0";
static const double SCORE_ATOL = 1e-6, BOX_RTOL = 1e-4, BOX_ATOL = 1e-3;

static int rng_int(uint32_t *s, int n) { return (int)((xorshift_next(s) >> 8) % (uint32_t)n); }

static void *dev_alloc(const Backends *g, size_t bytes) { return xalloc(g->gpu, g->gctx, bytes); }

static void *dev_upload(const Backends *g, const void *host, size_t bytes)
{
    void *p = dev_alloc(g, bytes);
    g->gpu->mem_upload(g->gctx, p, host, bytes);
    return p;
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

/* D0's config and its anchors for an h x w input. */
static void model_setup(int num_classes, int h, int w, ModelConfig *cfg, Anchors *anc)
{
    Err err = {{0}};
    if (model_config_get(MODEL, num_classes, cfg, &err) != 0) fail_msg("%s", err.msg);
    if (anchors_build(anc, cfg, h, w, &err) != 0) fail_msg("anchors %dx%d: %s", h, w, err.msg);
}

/* ---- label_anchors ------------------------------------------------------------------------------ */

enum { GT_RANDOM, GT_ANCHOR, GT_HALF_ANCHOR, GT_DUPLICATE, GT_OUTSIDE, GT_ZERO, GT_CROWD, GT_PAD,
       GT_TINY, GT_CLASS0, GT_KINDS };

/* How an image's rows are drawn: every kind once then random kinds; all padding; random kinds;
 * only the kinds that make ties (duplicates, tiny boxes around one point, boxes off the image). */
enum { MODE_EVERY_KIND, MODE_ALL_PADDING, MODE_RANDOM, MODE_TIES };

static void random_box(uint32_t *s, int h, int w, float *b)
{
    b[0] = xorshift_uniform(s, -0.1f * h, (float)h);
    b[1] = xorshift_uniform(s, -0.1f * w, (float)w);
    b[2] = b[0] + xorshift_uniform(s, 1.0f, 0.6f * h);
    b[3] = b[1] + xorshift_uniform(s, 1.0f, 0.6f * w);
}

static void make_gt_rows(uint32_t *s, const Anchors *anc, int h, int w, int num_classes, int mode,
                         float *boxes, int32_t *classes, uint8_t *crowd, int n)
{
    static const int tie_kinds[] = {GT_DUPLICATE, GT_TINY, GT_OUTSIDE, GT_ZERO};
    /* The point the GT_TINY rows of this image share, so that several GTs force-match the same
     * anchor and the lowest must win. */
    const float py = xorshift_uniform(s, 0.0f, (float)h), px = xorshift_uniform(s, 0.0f, (float)w);
    for (int i = 0; i < n; i++) {
        float *b = boxes + 4 * i;
        int kind = mode == MODE_ALL_PADDING                ? GT_PAD
                   : mode == MODE_EVERY_KIND && i < GT_KINDS ? i
                   : mode == MODE_TIES                     ? tie_kinds[rng_int(s, 4)]
                                                           : rng_int(s, GT_KINDS);
        classes[i] = 1 + rng_int(s, num_classes);
        crowd[i] = 0;
        if (kind == GT_DUPLICATE && (i == 0 || classes[i - 1] <= -1)) kind = GT_RANDOM;
        switch (kind) {
        case GT_ANCHOR:
        case GT_HALF_ANCHOR:
            memcpy(b, anc->boxes + 4 * (size_t)rng_int(s, anc->count), 4 * sizeof(float));
            if (kind == GT_HALF_ANCHOR) b[2] = b[0] + (b[2] - b[0]) / 2.0f; /* IoU ~0.5 */
            break;
        case GT_DUPLICATE: /* of the previous row (not padding), maybe with another class */
            memcpy(b, boxes + 4 * (i - 1), 4 * sizeof(float));
            break;
        case GT_OUTSIDE: /* overlaps no anchor: force-matches anchor 0 */
            b[0] = 10.0f * h + xorshift_uniform(s, 0.0f, 50.0f);
            b[1] = 10.0f * w + xorshift_uniform(s, 0.0f, 50.0f);
            b[2] = b[0] + 10.0f, b[3] = b[1] + 10.0f;
            break;
        case GT_ZERO:
            b[0] = b[2] = xorshift_uniform(s, 0.0f, (float)h);
            b[1] = xorshift_uniform(s, 0.0f, (float)w);
            b[3] = b[1] + xorshift_uniform(s, 1.0f, 20.0f);
            break;
        case GT_CROWD:
            random_box(s, h, w, b);
            crowd[i] = 1;
            break;
        case GT_PAD: /* skipped before its coordinates are read */
            classes[i] = -1;
            b[0] = b[1] = b[2] = b[3] = NAN;
            break;
        case GT_TINY: {
            const float d = xorshift_uniform(s, 0.5f, 3.0f);
            b[0] = py - d, b[1] = px - d, b[2] = py + d, b[3] = px + d;
            break;
        }
        case GT_CLASS0: /* kept (class > -1); its positive anchors get class target -1 */
            random_box(s, h, w, b);
            classes[i] = 0;
            break;
        default:
            random_box(s, h, w, b);
        }
    }
}

/* Box targets: the encoding's logf is CUDA's on the GPU, within 1 ulp of glibc's. */
static int box_close(const float *cpu, const float *gpu)
{
    for (int k = 0; k < 4; k++)
        if (!(fabsf(gpu[k] - cpu[k]) <= 4e-7f * fabsf(cpu[k]) + 1e-7f)) return 0;
    return 1;
}

/* One batch labeled by labeler.c and by the op: classes and positives identical, box targets
 * within the last bits (box_close). */
static void label_case(const Backends *g, int h, int w, int max_boxes, uint32_t seed)
{
    static const int modes[] = {MODE_EVERY_KIND, MODE_ALL_PADDING, MODE_RANDOM, MODE_TIES,
                                MODE_RANDOM};
    const int batch = (int)(sizeof modes / sizeof modes[0]);
    ModelConfig cfg;
    Anchors anc;
    model_setup(0, h, w, &cfg, &anc);
    const int count = anc.count, C = cfg.num_classes;
    const size_t rows = (size_t)batch * count, gts = (size_t)batch * max_boxes;
    float *boxes = xmalloc(gts * 4 * sizeof(float));
    int32_t *classes = xmalloc(gts * sizeof(int32_t));
    int32_t *gpu_classes = xmalloc(gts * sizeof(int32_t));
    uint8_t *crowd = xmalloc(gts);
    uint32_t s = seed;
    for (int b = 0; b < batch; b++)
        make_gt_rows(&s, &anc, h, w, C, modes[b], boxes + (size_t)b * max_boxes * 4,
                     classes + (size_t)b * max_boxes, crowd + (size_t)b * max_boxes, max_boxes);
    /* What the trainer uploads: crowd rows as class -1. */
    for (size_t i = 0; i < gts; i++) gpu_classes[i] = crowd[i] ? -1 : classes[i];

    Labeler lb;
    Err err = {{0}};
    if (labeler_init(&lb, &anc, C, max_boxes, &err) != 0) fail_msg("%s", err.msg);
    int32_t *cls_cpu = xmalloc(rows * sizeof(int32_t)), *cls_gpu = xmalloc(rows * sizeof(int32_t));
    float *box_cpu = xmalloc(rows * 4 * sizeof(float));
    float *box_gpu = xmalloc(rows * 4 * sizeof(float));
    int32_t pos_cpu[8], pos_gpu[8];
    for (int b = 0; b < batch; b++) {
        const size_t first = (size_t)b * max_boxes;
        pos_cpu[b] = labeler_label_image(&lb, cls_cpu, box_cpu, b, batch, boxes + 4 * first,
                                         classes + first, crowd + first, max_boxes, &err);
        if (pos_cpu[b] < 0) fail_msg("labeler, image %d: %s", b, err.msg);
    }

    /* The outputs start as garbage (0x7f bytes), so a row the op leaves unwritten shows. */
    memset(cls_gpu, 0x7f, rows * sizeof(int32_t));
    memset(box_gpu, 0x7f, rows * 4 * sizeof(float));
    float *anchors_d = dev_upload(g, anc.boxes, (size_t)count * 4 * sizeof(float));
    float *gt_d = dev_upload(g, boxes, gts * 4 * sizeof(float));
    int32_t *gtc_d = dev_upload(g, gpu_classes, gts * sizeof(int32_t));
    int32_t *cls_d = dev_upload(g, cls_gpu, rows * sizeof(int32_t));
    float *box_d = dev_upload(g, box_gpu, rows * 4 * sizeof(float));
    int32_t *pos_d = dev_alloc(g, (size_t)batch * sizeof(int32_t));
    g->gpu->label_anchors(g->gctx, cls_d, box_d, pos_d, anchors_d, count, anc.level_start,
                          cfg.num_levels, gt_d, gtc_d, batch, max_boxes);
    g->gpu->mem_download(g->gctx, cls_gpu, cls_d, rows * sizeof(int32_t));
    g->gpu->mem_download(g->gctx, box_gpu, box_d, rows * 4 * sizeof(float));
    g->gpu->mem_download(g->gctx, pos_gpu, pos_d, (size_t)batch * sizeof(int32_t));

    size_t bad = 0, first_bad = 0;
    for (size_t r = 0; r < rows; r++)
        if (cls_cpu[r] != cls_gpu[r] || !box_close(box_cpu + 4 * r, box_gpu + 4 * r))
            if (bad++ == 0) first_bad = r;
    printf("  label_anchors %dx%d, %d images x %d GT rows, %d anchors: positives", h, w, batch,
           max_boxes, count);
    for (int b = 0; b < batch; b++) printf(" %d/%d", pos_gpu[b], pos_cpu[b]);
    printf(" (gpu/cpu), %zu of %zu rows differ%s\n", bad, rows, bad ? "  FAIL" : "");
    if (bad) {
        const size_t r = first_bad;
        const float *c = box_cpu + 4 * r, *x = box_gpu + 4 * r;
        fail_msg("label_anchors %dx%d: row %zu: class %d vs cpu %d, box %.9g %.9g %.9g %.9g vs "
                 "cpu %.9g %.9g %.9g %.9g",
                 h, w, r, cls_gpu[r], cls_cpu[r], x[0], x[1], x[2], x[3], c[0], c[1], c[2], c[3]);
    }
    for (int b = 0; b < batch; b++)
        if (pos_gpu[b] != pos_cpu[b])
            fail_msg("label_anchors %dx%d image %d: %d positives, cpu %d", h, w, b, pos_gpu[b],
                     pos_cpu[b]);

    g->gpu->mem_free(g->gctx, anchors_d), g->gpu->mem_free(g->gctx, gt_d);
    g->gpu->mem_free(g->gctx, gtc_d), g->gpu->mem_free(g->gctx, cls_d);
    g->gpu->mem_free(g->gctx, box_d), g->gpu->mem_free(g->gctx, pos_d);
    labeler_free(&lb);
    anchors_free(&anc);
    free(boxes), free(classes), free(gpu_classes), free(crowd);
    free(cls_cpu), free(cls_gpu), free(box_cpu), free(box_gpu);
}

static void test_label_anchors(void **state)
{
    const Backends *g = *state;
    if (!g->gpu->label_anchors) fail_msg("the %s backend has no label_anchors", g->gpu->name);
    label_case(g, 128, 128, 24, 0x1234567u);
    label_case(g, 96, 160, 24, 0x2468aceu);
    label_case(g, 192, 256, 40, 0x13579bdu); /* several of labeler.c's 1024-anchor tiles */
    label_case(g, 64, 64, 0, 0x5555555u);    /* no GT rows at all: all background */
}

/* ---- detect ------------------------------------------------------------------------------------- */

enum { DIST_CONTINUOUS, DIST_LEVELS, DIST_BOUNDARY, DIST_SATURATED, DIST_ZEROS };
static const char *const DIST_NAMES[] = {"continuous", "4 levels", "tie at the top-k boundary",
                                         "sigmoid rounds to 1", "+0 and -0 ties"};

/* One logit. p_cont: DIST_BOUNDARY's share of distinct large values (about k/2 of them, so the
 * k-th largest falls in a block of equal values). */
static float draw_logit(uint32_t *s, int dist, float p_cont)
{
    static const float levels[] = {-4.0f, -2.0f, 0.5f, 1.5f}, low[] = {-3.0f, -1.0f, 0.25f};
    switch (dist) {
    case DIST_LEVELS:
        return levels[rng_int(s, 4)];
    case DIST_BOUNDARY:
        if (xorshift_uniform(s, 0.0f, 1.0f) < p_cont) return xorshift_uniform(s, 0.5f, 4.0f);
        return low[rng_int(s, 3)];
    case DIST_SATURATED:
        return xorshift_uniform(s, 12.0f, 40.0f);
    case DIST_ZEROS: {
        const int r = rng_int(s, 4);
        return r == 0 ? -3.0f : r == 1 ? -1.0f : r == 2 ? -0.0f : 0.0f;
    }
    default:
        return xorshift_uniform(s, -6.0f, 3.0f);
    }
}

/* postprocess.c's iou() as its build computes it: gcc 12 at -O3 -march=x86-64-v3 fuses area_a
 * into the sum (area_a + area_b as one FMA); the rest rounds operation by operation (this file
 * turns contraction off). The op's det_iou does the same. */
static float ref_iou(const Detection *a, const Detection *b)
{
    const float aw = a->x2 - a->x1, ah = a->y2 - a->y1;
    const float area_b = (b->x2 - b->x1) * (b->y2 - b->y1);
    const float xx1 = fmaxf(a->x1, b->x1), yy1 = fmaxf(a->y1, b->y1);
    const float xx2 = fminf(a->x2, b->x2), yy2 = fminf(a->y2, b->y2);
    const float w = fmaxf(0.0f, xx2 - xx1), h = fmaxf(0.0f, yy2 - yy1), inter = w * h;
    return inter / (fmaf(aw, ah, area_b) - inter);
}

/* postprocess_image's greedy NMS over p's candidates (left by its last call) in `order`. */
static int ref_nms(const Postprocess *p, const int *order, unsigned char *suppressed,
                   Detection *out)
{
    int kept = 0;
    memset(suppressed, 0, (size_t)p->k);
    for (int a = 0; a < p->k && kept < p->cfg->max_det_per_image; a++) {
        const int i = order[a];
        if (suppressed[i]) continue;
        for (int b = a + 1; b < p->k; b++) {
            const int j = order[b];
            if (!suppressed[j] && p->cand[j].class_id == p->cand[i].class_id &&
                ref_iou(&p->cand[i], &p->cand[j]) > p->cfg->nms_iou)
                suppressed[j] = 1;
        }
        out[kept++] = p->cand[i];
    }
    return kept;
}

/* The op's order: score descending, class ascending, logit descending, flat index ascending. */
static int by_op_order(const void *pa, const void *pb, void *ctx)
{
    const Postprocess *p = ctx;
    const int i = *(const int *)pa, j = *(const int *)pb;
    const Detection *a = &p->cand[i], *b = &p->cand[j];
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->class_id != b->class_id) return a->class_id - b->class_id;
    if (p->heap_val[i] != p->heap_val[j]) return p->heap_val[i] > p->heap_val[j] ? -1 : 1;
    return p->heap[i] - p->heap[j];
}

static int same_dets(const Detection *a, int na, const Detection *b, int nb)
{
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

typedef struct DetStats {
    double score, box; /* max |gpu - ref| of scores, and of box coordinates over their bound */
    int rows, exact;
} DetStats;

/* The op's rows of one image against the reference, as sets: each reference row must match an
 * unused row of the op's (same class, score and box within bounds), since scores that tie on one
 * side may be ordered on the other (detect.cu, Arithmetic); rows past n must be zero. */
static void compare_image(const char *what, int b, const float *rows, int n_gpu,
                          const Detection *ref, int n_ref, int max_det, DetStats *st)
{
    if (n_gpu != n_ref)
        fail_msg("%s image %d: %d detections, reference %d", what, b, n_gpu, n_ref);
    unsigned char used[1024] = {0};
    assert_true(n_ref <= 1024);
    for (int i = 0; i < n_ref; i++) {
        const Detection *d = &ref[i];
        const float want[5] = {d->x1, d->y1, d->x2, d->y2, d->score};
        int found = -1;
        for (int j = 0; j < n_gpu && found < 0; j++) {
            const float *r = rows + 6 * j;
            int ok = !used[j] && r[5] == (float)d->class_id && fabs((double)r[4] - d->score) <= SCORE_ATOL;
            for (int c = 0; ok && c < 4; c++)
                ok = fabs((double)r[c] - want[c]) <= BOX_RTOL * fabs(want[c]) + BOX_ATOL;
            if (ok) found = j;
        }
        if (found < 0)
            fail_msg("%s image %d: reference row %d (class %d score %.9g box %.6g %.6g %.6g %.6g) "
                     "has no match", what, b, i, d->class_id, d->score, want[0], want[1], want[2],
                     want[3]);
        const float *r = rows + 6 * found;
        used[found] = 1;
        const double ds = fabs((double)r[4] - d->score);
        if (ds > st->score) st->score = ds;
        for (int c = 0; c < 4; c++) {
            const double db = fabs((double)r[c] - want[c]);
            if (db > st->box) st->box = db;
        }
        st->rows++;
        st->exact += !memcmp(r, want, sizeof want) && found == i;
    }
    for (int e = n_ref * 6; e < max_det * 6; e++)
        if (rows[e] != 0.0f)
            fail_msg("%s image %d: value %d past the last detection is %g, not 0", what, b, e,
                     rows[e]);
}

/* One batch on both sides. big: box size deltas in [1.5, 2.5] (boxes 4.5 to 12 times their
 * anchor), which overlap so much that fewer than max_det survive the NMS. */
static void detect_case(const Backends *g, int num_classes, int h, int w, int batch, int dist, int big,
                        uint32_t seed)
{
    ModelConfig cfg;
    Anchors anc;
    model_setup(num_classes, h, w, &cfg, &anc);
    const int C = cfg.num_classes, L = cfg.num_levels, A = model_config_anchors_per_loc(&cfg);
    const int count = anc.count, max_det = cfg.max_det_per_image;
    const long total = (long)count * C;
    const int k = total < cfg.max_detection_points ? (int)total : cfg.max_detection_points;
    const float p_cont = 0.5f * (float)k / (float)total;
    char what[128];
    snprintf(what, sizeof what, "detect %dx%d C=%d %s%s", h, w, C, DIST_NAMES[dist],
             big ? ", big boxes" : "");

    /* Head outputs per level: cls (batch, rows_l, C), box (batch, rows_l, 4); rows_l = cells A. */
    float *cls_h[MAX_LEVELS], *box_h[MAX_LEVELS];
    const float *cls_d[MAX_LEVELS], *box_d[MAX_LEVELS];
    uint32_t s = seed;
    for (int l = 0; l < L; l++) {
        const size_t rows_l = (size_t)(anc.level_start[l + 1] - anc.level_start[l]);
        assert_int_equal(rows_l % A, 0);
        const size_t nc = (size_t)batch * rows_l * C, nb = (size_t)batch * rows_l * 4;
        cls_h[l] = xmalloc(nc * sizeof(float));
        box_h[l] = xmalloc(nb * sizeof(float));
        for (size_t i = 0; i < nc; i++) cls_h[l][i] = draw_logit(&s, dist, p_cont);
        for (size_t i = 0; i < nb; i++)
            box_h[l][i] = i % 4 < 2 ? xorshift_uniform(&s, -0.5f, 0.5f)
                          : big     ? xorshift_uniform(&s, 1.5f, 2.5f)
                                    : xorshift_uniform(&s, -1.0f, 1.0f);
        cls_d[l] = dev_upload(g, cls_h[l], nc * sizeof(float));
        box_d[l] = dev_upload(g, box_h[l], nb * sizeof(float));
    }

    /* The op, with dets pre-filled with garbage so unwritten zero rows show. */
    Err err = {{0}};
    const size_t det_floats = (size_t)batch * max_det * 6;
    float *dets = xmalloc(det_floats * sizeof(float));
    int32_t n_dets[8];
    memset(dets, 0x7f, det_floats * sizeof(float));
    float *anchors_d = dev_upload(g, anc.boxes, (size_t)count * 4 * sizeof(float));
    float *dets_d = dev_upload(g, dets, det_floats * sizeof(float));
    int32_t *n_d = dev_alloc(g, (size_t)batch * sizeof(int32_t));
    const size_t ws = g->gpu->detect_workspace_bytes(batch, count, C, k, max_det);
    if (g->gpu->workspace_reserve(g->gctx, ws, &err) != 0) fail_msg("%s: %s", what, err.msg);
    g->gpu->detect(g->gctx, dets_d, n_d, cls_d, box_d, anchors_d, count, anc.level_start, L, batch,
                   A, C, k, cfg.nms_iou, max_det);
    g->gpu->mem_download(g->gctx, dets, dets_d, det_floats * sizeof(float));
    g->gpu->mem_download(g->gctx, n_dets, n_d, (size_t)batch * sizeof(int32_t));

    /* The host, image by image. */
    Postprocess p;
    if (postprocess_init(&p, &cfg, &anc, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(p.k, k);
    Detection *cpu = xmalloc((size_t)max_det * sizeof(Detection));
    Detection *ref = xmalloc((size_t)max_det * sizeof(Detection));
    int *order = xmalloc((size_t)k * sizeof(int));
    unsigned char *suppressed = xmalloc((size_t)k);
    DetStats st = {0};
    int tie_images = 0;
    for (int b = 0; b < batch; b++) {
        const float *cls_b[MAX_LEVELS], *box_b[MAX_LEVELS];
        for (int l = 0; l < L; l++) {
            const size_t rows_l = (size_t)(anc.level_start[l + 1] - anc.level_start[l]);
            cls_b[l] = cls_h[l] + (size_t)b * rows_l * C;
            box_b[l] = box_h[l] + (size_t)b * rows_l * 4;
        }
        const int n_cpu = postprocess_image(&p, cls_b, box_b, 0.0f, 0, 0, cpu);
        /* The test's NMS in postprocess_image's own order must give its exact answer. */
        int n_ref = ref_nms(&p, p.order, suppressed, ref);
        if (!same_dets(ref, n_ref, cpu, n_cpu))
            fail_msg("%s image %d: the test's NMS (%d detections) does not reproduce "
                     "postprocess_image (%d): ref_iou is stale",
                     what, b, n_ref, n_cpu);
        for (int i = 0; i < k; i++) order[i] = i;
        qsort_r(order, (size_t)k, sizeof *order, by_op_order, &p);
        n_ref = ref_nms(&p, order, suppressed, ref);
        tie_images += !same_dets(ref, n_ref, cpu, n_cpu);
        compare_image(what, b, dets + (size_t)b * max_det * 6, n_dets[b], ref, n_ref, max_det, &st);
    }
    printf("  %-58s k %d: %d rows, %d bit-identical, max|score diff| %.3g, max|box diff| %.3g; "
           "heap-order ties changed postprocess_image's answer in %d of %d images\n",
           what, k, st.rows, st.exact, st.score, st.box, tie_images, batch);

    postprocess_free(&p);
    free(cpu), free(ref), free(order), free(suppressed), free(dets);
    for (int l = 0; l < L; l++) {
        g->gpu->mem_free(g->gctx, (void *)cls_d[l]), g->gpu->mem_free(g->gctx, (void *)box_d[l]);
        free(cls_h[l]), free(box_h[l]);
    }
    g->gpu->mem_free(g->gctx, anchors_d), g->gpu->mem_free(g->gctx, dets_d);
    g->gpu->mem_free(g->gctx, n_d);
    anchors_free(&anc);
}

static void test_detect(void **state)
{
    const Backends *g = *state;
    if (!g->gpu->detect || !g->gpu->detect_workspace_bytes)
        fail_msg("the %s backend has no detect", g->gpu->name);
    uint32_t seed = 0x9e3779b9u;
    for (int dist = DIST_CONTINUOUS; dist <= DIST_ZEROS; dist++)
        detect_case(g, 0, 128, 128, 3, dist, 0, seed += 0x1111u);
    detect_case(g, 0, 96, 160, 2, DIST_BOUNDARY, 0, seed += 0x1111u);
    detect_case(g, 0, 256, 256, 2, DIST_CONTINUOUS, 0, seed += 0x1111u);
    detect_case(g, 0, 256, 256, 2, DIST_LEVELS, 0, seed += 0x1111u);
    /* k == every logit (fewer than max_detection_points); few survivors, so zero rows follow */
    detect_case(g, 3, 64, 64, 3, DIST_CONTINUOUS, 0, seed += 0x1111u);
    detect_case(g, 1, 64, 64, 3, DIST_LEVELS, 1, seed += 0x1111u);
    detect_case(g, 2, 64, 64, 3, DIST_CONTINUOUS, 1, seed += 0x1111u);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label_anchors),
        cmocka_unit_test(test_detect),
    };
    return gpu_compare_main("test_detect_gpu", tests, sizeof tests / sizeof tests[0]);
}
