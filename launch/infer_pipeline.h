/* infer_pipeline.h: the single-process inference path of `effdet infer`, `effdet eval --weights`
 * and `effdet bench --mode infer`: JPEG decode -> effdet eval transform (letterbox resize with the
 * mean colour, ImageNet normalization) -> model forward on a batch -> top-k + per-class NMS ->
 * boxes in original pixels. Every buffer is sized once at init for (batch, H, W). (The
 * multi-process pipeline of loader, augment and worker processes replaces this for training and
 * large evaluations.)
 *
 * On top of it, what the commands share so that each exists once: the COCO results file (written
 * beside its path and renamed into place, so a failed run leaves none), per-image warnings held
 * back until some image has been read, and the evaluation of weights on a COCO-format set
 * (infer_evaluate_dataset) with its printed and JSON forms. */
#ifndef EFFDET_INFER_PIPELINE_H
#define EFFDET_INFER_PIPELINE_H

#include <stdint.h>
#include <stdio.h>

#include "evaluator/coco_eval.h"
#include "loader/dataset.h"
#include "loader/jpeg.h"
#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/model/model.h"
#include "worker/detector.h"
#include "worker/postprocess.h"

typedef struct InferOptions {
    const char *model, *device;
    const char *weights;  /* safetensors; NULL: deterministic random weights (benchmarks) */
    int weights_later;    /* 1: neither; the caller uploads them with model_set_weights */
    int num_classes;      /* <= 0: the variant's default (90) */
    int batch;
    int h, w;             /* model input; 0: the variant's native size */
    float score_thresh;   /* detections below are dropped */
    int tf32;             /* --tf32 (CUDA) */
    Precision precision;  /* --amp: activations in fp16 or bf16 */
} InferOptions;

typedef struct InferSlot {
    int ok;               /* image decoded and placed */
    int orig_w, orig_h;
    float img_scale;      /* maps model-input pixels back to original pixels */
} InferSlot;

typedef struct InferResult {
    int count[4096];      /* detections per slot (0 for a failed slot) */
    Detection *dets;      /* (batch, max_det), valid up to count[i] */
} InferResult;

typedef struct InferPipeline {
    ModelConfig cfg;
    Model model;
    Anchors anchors;
    Detector detector;    /* top-k + NMS on the backend when it can, else on the host */
    int batch, h, w;
    float score_thresh;
    float *host_input;    /* (batch, H, W, 3) staging, uploaded once per batch */
    InferSlot *slots;
    Detection *dets;      /* (batch, max_det) */
    float *img_scale;     /* (batch) the slots' scales and sizes, as detector_run takes them */
    int *orig_w, *orig_h;
    RgbImage decoded, boxed;
} InferPipeline;

int infer_pipeline_init(InferPipeline *p, const InferOptions *o, Err *err);
void infer_pipeline_free(InferPipeline *p); /* idempotent */
/* Decodes and places one image into batch slot `slot`; on error the slot is marked failed. */
int infer_pipeline_add_file(InferPipeline *p, const char *path, int slot, Err *err);
int infer_pipeline_add_jpeg(InferPipeline *p, const uint8_t *buf, size_t len, int slot,
                            const char *name, Err *err);
/* Runs the first n slots; results stay valid until the next run. */
int infer_pipeline_run(InferPipeline *p, int n, InferResult *res, Err *err);

/* A COCO results file: [{image_id, category_id, bbox [x, y, w, h], score}, ...]. It is written to
 * PATH.tmp.PID and renamed to PATH by infer_results_commit, so readers never see half a file. */
typedef struct InferResultsFile {
    FILE *f;
    const char *path;     /* borrowed */
    char tmp[1200];
    size_t n;             /* detections written */
} InferResultsFile;

int infer_results_open(InferResultsFile *r, const char *path, Err *err);
void infer_results_add(InferResultsFile *r, int64_t image_id, int64_t category_id,
                       const Detection *d);
/* Closes, syncs and renames into place; on failure the temporary file is removed. */
int infer_results_commit(InferResultsFile *r, Err *err);
void infer_results_abort(InferResultsFile *r); /* removes the temporary file; idempotent */

/* Warnings about unreadable images. Until the first image is read they are held back: when none
 * can be read the command's one error line says so, instead of N warnings and then an error. */
typedef struct InferSkips {
    char **held;          /* (n_held) copies, printed by the first infer_skips_read */
    int n_held;
    int n;                /* images skipped so far */
    int any_read;
    char first[1024];     /* the first skip's message, for the error line */
} InferSkips;

void infer_skips_note(InferSkips *s, const char *msg);
void infer_skips_read(InferSkips *s); /* an image was read: flush what was held */
/* n_images all failed: err = the one message (n_images 1) or "none of the N ... (first: ...)". */
int infer_skips_fail_all(const InferSkips *s, int n_images, Err *err);
void infer_skips_free(InferSkips *s); /* idempotent */

/* Weights on a COCO-format set: every image of the annotation file through the pipeline, labels
 * mapped back to the file's category ids (dataset_label_category), the results optionally
 * written, and pycocotools' bbox evaluation over every ground-truth image. */
typedef struct InferEvalJob {
    InferOptions o;       /* o.num_classes <= 0: the set's category count */
    const char *data_dir; /* DIR/annotations.json + DIR/images, or: */
    const char *ann, *images_dir;
    const char *out;      /* results JSON, or NULL */
} InferEvalJob;

typedef struct InferEvalCounts {
    size_t images;        /* in the annotation file */
    size_t unreadable;    /* warned about, evaluated without detections */
    size_t dets;          /* detections evaluated (and written) */
    size_t dets_unmapped; /* dropped: a label no category of the set has (model has more classes) */
} InferEvalCounts;

/* An unreadable image is a warning naming it and counts as an image without detections; when
 * none can be read it is an error. res is filled on success (free with coco_eval_result_free). */
int infer_evaluate_dataset(const InferEvalJob *job, CocoEvalResult *res, InferEvalCounts *c,
                           Err *err);
/* "mAP A mAP@0.5 B mAP@0.75 C (N images[, K unreadable: evaluated without detections])" and
 * pycocotools' 12-line summary. */
void infer_print_metrics(FILE *f, const CocoEvalResult *res, const InferEvalCounts *c);
/* {"stats": [12], "stat_names": [...], "per_category_AP": {"<id>": AP}}, every number printed so
 * that it reads back exactly (what `effdet eval --json` prints). */
void infer_write_metrics_json(FILE *f, const CocoEvalResult *res);

#endif
