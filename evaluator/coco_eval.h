/* coco_eval.h: COCO bbox evaluation with pycocotools' semantics (COCOeval, iouType "bbox",
 * default parameters): the 12 summary numbers and per-category AP.
 *
 * Use: coco_eval_create from a parsed ground truth; add detections, either all at once from a
 * results file (coco_eval_add_dets) or image by image as a worker delivers them
 * (coco_eval_add_image, which refuses an image delivered twice; coco_eval_check_complete names a
 * missing one); coco_eval_run; coco_eval_reset to start the next epoch with the same ground truth.
 * The rules and the measured speed are in docs/evaluator.md. Single-threaded; one CocoEval must
 * not be used from two threads at once. */
#ifndef EFFDET_COCO_EVAL_H
#define EFFDET_COCO_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "shared/coco.h"
#include "shared/err.h"

enum {
    COCO_EVAL_NUM_IOU = 10,   /* IoU thresholds .50:.05:.95 */
    COCO_EVAL_NUM_RECALL = 101,
    COCO_EVAL_NUM_AREAS = 4,  /* all, small, medium, large */
    COCO_EVAL_NUM_MAX_DETS = 3,
    COCO_EVAL_NUM_STATS = 12,
};

/* pycocotools' Params for iouType "bbox" (fixed; exposed so tests can check them). */
typedef struct CocoEvalParams {
    double iou_thresholds[COCO_EVAL_NUM_IOU];       /* np.linspace(.5, .95, 10), bit for bit */
    double recall_thresholds[COCO_EVAL_NUM_RECALL]; /* np.linspace(0, 1, 101) */
    int max_dets[COCO_EVAL_NUM_MAX_DETS];           /* 1, 10, 100 */
    double area_ranges[COCO_EVAL_NUM_AREAS][2];     /* inclusive [lo, hi] */
} CocoEvalParams;

void coco_eval_params_default(CocoEvalParams *p);

/* Names of the stats, in pycocotools' order: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
 * ARs, ARm, ARl. */
extern const char *const coco_eval_stat_names[COCO_EVAL_NUM_STATS];

typedef struct CocoEvalResult {
    double stats[COCO_EVAL_NUM_STATS]; /* -1 where no category has ground truth */
    size_t n_categories;
    int64_t *category_ids; /* (n_categories) ascending, every category of the ground truth */
    double *category_ap;   /* (n_categories) AP@[.5:.95], area all, 100 dets; -1 without GT */
    size_t n_dets;         /* detections added */
    size_t n_dets_unknown_category; /* dropped: category not in the GT (as pycocotools does) */
    size_t n_dets_over_max;         /* beyond the 100 best of an (image, category): never counted */
} CocoEvalResult;

typedef struct CocoEval CocoEval;

/* Copies what evaluation needs from gt (a dataset coco_dataset_parse accepted; it may be freed
 * afterwards). */
CocoEval *coco_eval_create(const CocoDataset *gt);
void coco_eval_free(CocoEval *ev); /* NULL is fine */

/* Adds detections of any images, in results-file order (the order breaks score ties). All or
 * nothing: an image id not in the ground truth, a non-finite box, a negative width or height or
 * a NaN score fails the call with err naming the detection (index i of dets) and adds none. */
int coco_eval_add_dets(CocoEval *ev, const CocoDetection *dets, size_t n, Err *err);
/* Adds all detections of one image (n may be 0), all of whose image_id must be image_id. An
 * image added a second time, or unknown, is an error. */
int coco_eval_add_image(CocoEval *ev, int64_t image_id, const CocoDetection *dets, size_t n,
                        Err *err);
/* 0 when every ground-truth image has come through coco_eval_add_image; else err says how many
 * are missing and names the first. */
int coco_eval_check_complete(const CocoEval *ev, Err *err);
/* Forgets all detections and delivered images (the next epoch). */
void coco_eval_reset(CocoEval *ev);

/* Evaluates the detections added so far into res (free it with coco_eval_result_free). Can be
 * called again after adding more. */
void coco_eval_run(CocoEval *ev, CocoEvalResult *res);
void coco_eval_result_free(CocoEvalResult *res); /* zeroes res; safe twice */

/* The 12 lines pycocotools' summarize() prints. */
void coco_eval_write_summary(FILE *f, const CocoEvalResult *res);

#endif
