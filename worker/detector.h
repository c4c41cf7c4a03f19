/* detector.h: detections of a batch from the model's head outputs, wherever the backend can make
 * them. With a backend that has the detect op (CUDA: top-k, decode and per-class NMS on the GPU),
 * only the (batch, max_det) detections travel to the host; otherwise the head outputs are
 * downloaded (when the backend's memory is not host memory) and worker/postprocess.c runs on the
 * host. Both follow worker/postprocess.h's rules, so callers never see the difference.
 *
 * Everything is sized once at init for the model's planned batch: the backend's workspace is
 * reserved for the detect op, the host staging buffers allocated.
 *
 * Graphs (detector_infer): where the backend records graphs (Ops.graph_begin) and the detect op
 * runs there, the forward pass and the detect op are recorded once and then replayed with one
 * launch per batch, which at small batches saves most of the time (D0: ~400 kernel launches).
 * The first call runs eagerly, so that everything lazy happens outside the recording (cuDNN's
 * algorithm choice); the second records and replays; later calls replay. Only the downloads of
 * the detections stay outside the graph. A graph replays the pointers it recorded: it stays valid
 * while the model's plan (arena, input, head outputs), its params and buffers blocks and the
 * backend's workspace stay where they are. New weights written into the same blocks are fine
 * (model_set_weights, an optimizer step: the replay reads them). detector_infer notices a new
 * plan or moved weight blocks itself and records again; anything else that changes what the
 * recorded ops do (model_set_tf32, a larger workspace_reserve by another user of the context)
 * needs detector_drop_graph, or detector_free + detector_init. EFFDET_NO_GRAPHS=1 turns graphs
 * off (every call eager), for comparisons and debugging. */
#ifndef EFFDET_DETECTOR_H
#define EFFDET_DETECTOR_H

#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/model/model.h"
#include "worker/postprocess.h"

/* detector_infer's use of graphs: off (no graph ops, the host path, EFFDET_NO_GRAPHS=1 or a
 * failed recording), the next call runs eagerly, the next call records, or a graph to replay. */
typedef enum { DET_GRAPH_OFF = 0, DET_GRAPH_WARMUP, DET_GRAPH_RECORD, DET_GRAPH_READY } DetectorGraph;

/* The graph's slot on the model's context: one graph-using detector per model. */
enum { DETECTOR_GRAPH_SLOT = 0 };

/* The memory a recorded graph points into; a graph is replayed only while these are unchanged
 * (a plan with the same pointer and sizes has the same layout). */
typedef struct DetectorPlanKey {
    const void *arena, *params, *buffers, *input;
    size_t arena_bytes;
    int batch, h, w, reuse, train;
} DetectorPlanKey;

typedef struct Detector {
    Model *model;              /* planned; not owned */
    const Anchors *anchors;    /* not owned */
    int batch;
    int on_backend;            /* 1: ops->detect; 0: host postprocess */
    Postprocess post;          /* host path */
    float *host_cls[MAX_LEVELS], *host_box[MAX_LEVELS]; /* host path downloads; NULL on fp32 host memory */
    float *anchors_dev;        /* backend path: (count, 4) */
    float *dets_dev;           /* (batch, max_det, 6) */
    int32_t *n_dev;            /* (batch) */
    float *dets_host;          /* (batch, max_det, 6) */
    int32_t *n_host;           /* (batch) */
    DetectorGraph graph;       /* detector_infer's graph state */
    DetectorPlanKey graph_key; /* what the recorded graph points into */
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

/* The forward pass and the detections of images 0..n-1 of the batch in the model's input (the
 * caller uploaded it: model_upload_input), with detector_run's arguments and outputs: on the host
 * path, model_forward + detector_run; on the backend path, the same work as one graph replay when
 * the backend offers graphs (see the top of this file). The whole planned batch runs; n only
 * limits what is downloaded. A recording that fails (the backend refused it) is one warning line,
 * then every later call runs eagerly; -1 (err set) only when the backend fails to replay. */
int detector_infer(Detector *d, int n, const float *img_scale, const int *orig_w,
                   const int *orig_h, Detection *out, int *count, Err *err);

/* Forgets the recorded graph: the next detector_infer runs eagerly, the one after records again.
 * For changes detector_infer cannot see (model_set_tf32; the context's workspace grown by
 * another user). A no-op where graphs are off. */
void detector_drop_graph(Detector *d);

#endif
