/* coco_eval_internal.h: what the evaluator's files share (coco_eval.c drives, coco_eval_match.c
 * matches one image and category, coco_eval_accum.c turns matches into precision, recall and the
 * summary). Not for use outside evaluator/. */
#ifndef EFFDET_COCO_EVAL_INTERNAL_H
#define EFFDET_COCO_EVAL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "evaluator/coco_eval.h"

/* Every evaluator file includes this header first. The arithmetic must be numpy's and
 * pycocotools' operation for operation: GCC contracts a*b + c into a fused multiply-add by default
 * in GNU C at -O3 -march=native, which rounds once instead of twice, and an IoU or a linspace
 * threshold one rounding off can fall on the other side of a comparison. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

enum {
    EVAL_IGNORED_SHIFT = 16, /* flags: bit t = matched at threshold t, bit 16 + t = ignored */
    EVAL_MAX_DETS = 100,     /* the largest maxDets: detections kept per (image, category) */
};

/* One ground-truth box, grouped by image and then category, in file order within a group. */
typedef struct EvalGt {
    double box[4];
    double area;        /* the annotation's area field, which decides its area range */
    uint32_t cat;       /* index into the sorted category ids */
    uint8_t crowd;
    uint8_t id_nonzero; /* pycocotools records a match as the GT's id, so id 0 reads as unmatched */
} EvalGt;

/* One detection as added. */
typedef struct EvalDet {
    double box[4];
    double score;
    uint32_t img, cat;  /* indices into the sorted image and category ids */
    uint64_t seq;       /* arrival order: breaks score ties as the results file's order does */
} EvalDet;

/* One kept detection after matching, as accumulate() needs it. Records are written in image-id
 * order, then rank, which is how pycocotools breaks score ties across images. */
typedef struct EvalRec {
    double score;
    uint32_t cat;
    uint32_t rank; /* 0-based place among its (image, category)'s detections by score */
    uint32_t flags[COCO_EVAL_NUM_AREAS];
} EvalRec;

/* Work memory of coco_eval__match for up to max_gt ground truths per (image, category). */
typedef struct EvalScratch {
    size_t max_gt;
    double *iou;      /* (100, max_gt) */
    uint32_t *order;  /* (max_gt) */
    uint8_t *ignored; /* (max_gt) */
    uint8_t *taken;   /* (max_gt) */
} EvalScratch;

void coco_eval__scratch_init(EvalScratch *s, size_t max_gt);
void coco_eval__scratch_free(EvalScratch *s);

/* Matches the nd (<= 100) detections of one (image, category), sorted by descending score, with
 * its ng (<= s->max_gt) ground truths for every area range and IoU threshold: flags[i][a] for
 * detection i. */
void coco_eval__match(const CocoEvalParams *p, const EvalGt *gt, size_t ng, const EvalDet *det,
                      size_t nd, EvalScratch *s, uint32_t (*flags)[COCO_EVAL_NUM_AREAS]);

/* Ranks recs per category and fills prec (A, T, R, K) for maxDets 100 and recall (A, M, T, K),
 * with -1 where a category has no non-ignored ground truth (npig, (K, A), is 0). */
void coco_eval__accumulate(const CocoEvalParams *p, const EvalRec *recs, size_t n_recs,
                           size_t n_cats, const uint32_t *npig, double *prec, double *recall);

/* The 12 stats and per-category AP from prec and recall, averaged as numpy does. */
void coco_eval__summarize(const double *prec, const double *recall, size_t n_cats,
                          const CocoEvalParams *p, double stats[COCO_EVAL_NUM_STATS],
                          double *cat_ap);

#endif
