/* postprocess.h: detections from raw head outputs, as effdet's bench.py `_post_process` +
 * anchors.py `generate_detections` compute them:
 *   1. top max_detection_points (5000) of the flattened (anchor, class) logits of one image;
 *   2. decode those anchors' (ty, tx, th, tw) (Faster R-CNN coding, no scale factors) into
 *      [x1, y1, x2, y2] input pixels; score = sigmoid(logit);
 *   3. per-class hard NMS (torchvision batched_nms: suppress IoU > threshold, in float32), sorted
 *      by score descending, first max_det_per_image (100);
 *   4. optionally clip to the image and scale back to original pixels (img_scale, as effdet's
 *      eval path does with img_info).
 * All host memory; scratch is allocated once per (config, anchors) by postprocess_init. */
#ifndef EFFDET_POSTPROCESS_H
#define EFFDET_POSTPROCESS_H

#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/model/config.h"

typedef struct Detection {
    float x1, y1, x2, y2;
    float score;
    int class_id; /* 1-based: class channel + 1 */
} Detection;

typedef struct Postprocess {
    const ModelConfig *cfg;
    const Anchors *anchors;
    int k;            /* candidates kept by the top-k */
    int *heap;        /* (k) flattened (anchor * C + class) indices */
    float *heap_val;  /* (k) their logits */
    Detection *cand;  /* (k) decoded candidates */
    int *order;       /* (k) */
    unsigned char *suppressed; /* (k) */
} Postprocess;

int postprocess_init(Postprocess *p, const ModelConfig *cfg, const Anchors *anchors, Err *err);
void postprocess_free(Postprocess *p); /* idempotent */

/* One image. cls[l] (fh*fw, A*C) and box[l] (fh*fw, A*4) point at that image's level outputs.
 * img_scale <= 0: boxes stay in input pixels, unclipped (effdet with img_info=None). Otherwise
 * boxes are clipped to [0, orig_w/img_scale] x [0, orig_h/img_scale] and multiplied by img_scale.
 * Writes up to max_det_per_image detections, sorted by score; returns their number. */
int postprocess_image(Postprocess *p, const float *const *cls, const float *const *box,
                      float img_scale, int orig_w, int orig_h, Detection *out);

/* Step 4 alone: clips a detection in input pixels to the image and scales it to original pixels
 * (img_scale > 0). */
void postprocess_to_original(Detection *d, float img_scale, int orig_w, int orig_h);

#endif
