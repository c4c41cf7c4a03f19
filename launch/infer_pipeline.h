/* infer_pipeline.h: the single-process inference path of `effdet infer` and `effdet bench --mode
 * infer`: JPEG decode -> effdet eval transform (letterbox resize with the mean colour, ImageNet
 * normalization) -> model forward on a batch -> top-k + per-class NMS -> boxes in original pixels.
 * Every buffer is sized once at init for (batch, H, W). (The multi-process pipeline of loader,
 * augment and worker processes replaces this for training and large evaluations.) */
#ifndef EFFDET_INFER_PIPELINE_H
#define EFFDET_INFER_PIPELINE_H

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

#endif
