/* detector.h: detections of a batch from the model's head outputs, wherever the backend can make
 * them. With a backend that has the detect op (CUDA: top-k, decode and per-class NMS on the GPU),
 * only the (batch, max_det) detections travel to the host; otherwise the head outputs are
 * downloaded (when the backend's memory is not host memory) and worker/postprocess.c runs on the
 * host. Both follow worker/postprocess.h's rules, so callers never see the difference.
 *
 * Everything is sized once at init for the model's planned batch: the backend's workspace is
 * reserved for the detect op, the host staging buffers allocated. */
#ifndef EFFDET_DETECTOR_H
#define EFFDET_DETECTOR_H

#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/model/model.h"
#include "worker/postprocess.h"

typedef struct Detector {
    Model *model;              /* planned; not owned */
    const Anchors *anchors;    /* not owned */
    int batch;
    int on_backend;            /* 1: ops->detect; 0: host postprocess */
    Postprocess post;          /* host path */
    float *host_cls[MAX_LEVELS], *host_box[MAX_LEVELS]; /* host path downloads; NULL on host memory */
    float *anchors_dev;        /* backend path: (count, 4) */
    float *dets_dev;           /* (batch, max_det, 6) */
    int32_t *n_dev;            /* (batch) */
    float *dets_host;          /* (batch, max_det, 6) */
    int32_t *n_host;           /* (batch) */
} Detector;

/* `model` must be planned (its head outputs exist). EFFDET_HOST_DETECT=1 forces the host path, so
 * both can be compared on one machine. */
int detector_init(Detector *d, Model *model, const Anchors *anchors, Err *err);
void detector_free(Detector *d); /* idempotent */

/* Detections of images 0..n-1 of the last forward pass. img_scale[i] > 0 clips and scales image
 * i's boxes to its original pixels (orig_w/orig_h), as postprocess_image does; img_scale NULL
 * keeps every image in input pixels. out holds (n, max_det) rows; count[i] gets image i's number. */
void detector_run(Detector *d, int n, const float *img_scale, const int *orig_w, const int *orig_h,
                  Detection *out, int *count);

#endif
