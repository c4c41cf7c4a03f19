/* coco_eval_match.c: IoU and greedy matching of one (image, category), as pycocotools'
 * computeIoU (maskApi.c bbIou) and evaluateImg do it, for the 4 area ranges and 10 IoU thresholds.
 *
 * The arithmetic is pycocotools' operation for operation, in double (and not contracted into
 * fused multiply-adds: see coco_eval_internal.h). */
#include "evaluator/coco_eval_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

void coco_eval__scratch_init(EvalScratch *s, size_t max_gt)
{
    size_t n = max_gt ? max_gt : 1;
    s->max_gt = max_gt;
    s->iou = malloc(EVAL_MAX_DETS * n * sizeof *s->iou);
    s->order = malloc(n * sizeof *s->order);
    s->ignored = malloc(n);
    s->taken = malloc(n);
    ASSERT(s->iou && s->order && s->ignored && s->taken);
}

void coco_eval__scratch_free(EvalScratch *s)
{
    free(s->iou);
    free(s->order);
    free(s->ignored);
    free(s->taken);
    memset(s, 0, sizeof *s);
}

/* bbIou: the GT's own box area (never its area field), and for a crowd GT the union is the
 * detection's area alone. */
static double match_iou(const double *d, double da, const double *g, int crowd)
{
    double w = fmin(d[2] + d[0], g[2] + g[0]) - fmax(d[0], g[0]);
    if (w <= 0) return 0;
    double h = fmin(d[3] + d[1], g[3] + g[1]) - fmax(d[1], g[1]);
    if (h <= 0) return 0;
    double ga = g[2] * g[3], i = w * h;
    double u = crowd ? da : da + ga - i;
    return i / u;
}

/* evaluateImg's loop for one threshold: each detection, in score order, takes the best remaining
 * GT with IoU >= thr (a later equal IoU wins); matched non-crowd GTs are skipped, crowd GTs take
 * any number of detections, and a detection that holds a non-ignored GT stops at the first
 * ignored one (they are ordered last). order[] lists GTs non-ignored first; n_ok of them. */
static void match_threshold(const EvalGt *gt, size_t ng, size_t nd, const double *iou,
                            const uint32_t *order, size_t n_ok, const uint8_t *det_out,
                            double thr, int t, uint8_t *taken,
                            uint32_t (*flags)[COCO_EVAL_NUM_AREAS], int a)
{
    memset(taken, 0, ng);
    for (size_t i = 0; i < nd; i++) {
        const double *row = iou + i * ng;
        double best = thr;
        size_t m = ng;
        for (size_t k = 0; k < ng; k++) {
            const EvalGt *g = &gt[order[k]];
            if (taken[k] && !g->crowd) continue;
            if (m < n_ok && k >= n_ok) break;
            if (row[order[k]] < best) continue;
            best = row[order[k]];
            m = k;
        }
        uint32_t matched = 0, ignored = 0;
        if (m < ng) {
            taken[m] = 1;
            ignored = m >= n_ok;
            matched = gt[order[m]].id_nonzero;
        }
        if (!matched && det_out[i]) ignored = 1;
        flags[i][a] |= matched << t | ignored << (EVAL_IGNORED_SHIFT + t);
    }
}

void coco_eval__match(const CocoEvalParams *p, const EvalGt *gt, size_t ng, const EvalDet *det,
                      size_t nd, EvalScratch *s, uint32_t (*flags)[COCO_EVAL_NUM_AREAS])
{
    ASSERT(nd <= EVAL_MAX_DETS && ng <= s->max_gt);
    double det_area[EVAL_MAX_DETS];
    for (size_t i = 0; i < nd; i++) {
        det_area[i] = det[i].box[2] * det[i].box[3];
        for (size_t k = 0; k < ng; k++)
            s->iou[i * ng + k] = match_iou(det[i].box, det_area[i], gt[k].box, gt[k].crowd);
        memset(flags[i], 0, sizeof flags[i]);
    }
    for (int a = 0; a < COCO_EVAL_NUM_AREAS; a++) {
        double lo = p->area_ranges[a][0], hi = p->area_ranges[a][1];
        uint8_t det_out[EVAL_MAX_DETS];
        for (size_t i = 0; i < nd; i++) det_out[i] = det_area[i] < lo || det_area[i] > hi;
        /* np.argsort(_ignore, kind='mergesort'): non-ignored GTs first, each group in file order */
        size_t n_ok = 0;
        for (size_t k = 0; k < ng; k++) {
            s->ignored[k] = gt[k].crowd || gt[k].area < lo || gt[k].area > hi;
            if (!s->ignored[k]) s->order[n_ok++] = (uint32_t)k;
        }
        for (size_t k = 0, j = n_ok; k < ng; k++)
            if (s->ignored[k]) s->order[j++] = (uint32_t)k;
        for (int t = 0; t < COCO_EVAL_NUM_IOU; t++) {
            double thr = fmin(p->iou_thresholds[t], 1 - 1e-10);
            match_threshold(gt, ng, nd, s->iou, s->order, n_ok, det_out, thr, t, s->taken, flags,
                            a);
        }
    }
}
