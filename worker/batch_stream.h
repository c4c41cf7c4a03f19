/* batch_stream.h: the worker's side of the data pipeline: the epoch schedule, and batches from
 * augment processes in schedule order.
 *
 * Schedule (the same for any number of loaders and augmenters, and across restarts):
 *   n images, global batch G = batch * world, batches per epoch ceil(n / G).
 *   Train: the order of epoch e is train_epoch_permutation(seed, e) (loader/train_sample.h);
 *   eval: 0..n-1. Position j of rank r in global batch b is g = b * G + r * batch + j; it holds
 *   image order[g mod n], and is valid when g < n. Invalid positions complete the last batch
 *   (shapes stay fixed) with the epoch's first images again: they are marked, so an epoch
 *   delivers every image exactly once as valid (n per epoch over all ranks), and a consumer
 *   counting or evaluating skips them.
 * A batch is asked for by key (epoch << 32 | b) from whichever augmenter has room (at most
 * `window` each); results arrive in any order and are handed out in schedule order. Train streams
 * run on through the epochs; an eval stream ends after its one pass. */
#ifndef EFFDET_WORKER_BATCH_STREAM_H
#define EFFDET_WORKER_BATCH_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "shared/err.h"
#include "shared/stage.h"

enum { BATCH_STREAM_MAX = 1024 };

typedef struct BatchStreamConfig {
    const char *name;              /* "worker0": stable across restarts */
    const char *const *augmenters; /* endpoints */
    int n_augmenters;
    uint32_t window;               /* batches outstanding per augmenter */
    int batch, height, width;      /* checked against the augmenters' */
    uint64_t seed;
    int train;                     /* 1: shuffled epochs, train transform; 0: one eval pass */
    int rank, world;
    uint32_t epoch;                /* where to start (a resumed run: its epoch and batch); */
    uint64_t first_batch;          /* batches_per_epoch means "after the epoch's last batch" */
    int hb_ms, dead_ms;
    WireLimits limits;
    /* Optional: called between waits; -1 (err set) ends the stream with that error (a data
     * process this one started has exited, say). */
    int (*alive)(void *arg, Err *err);
    void *alive_arg;
} BatchStreamConfig;

/* One batch: views into the augmenter's slot, valid until batch_stream_release. */
typedef struct Batch {
    uint32_t epoch;
    uint64_t b;                /* batch number within the epoch */
    int n_valid;
    uint8_t valid[BATCH_STREAM_MAX];
    const void *images;        /* (batch, H, W, 3) of dtype */
    int dtype;                 /* StDtype */
    const float *bbox;         /* (batch, 100, 4) yxyx */
    const int32_t *cls;        /* (batch, 100) */
    const uint8_t *crowd;      /* (batch, 100) */
    const float *img_scale;    /* (batch) */
    const int32_t *img_size;   /* (batch, 2) w, h */
    const int64_t *image_id;   /* (batch) */
    const int64_t *index;      /* (batch) dataset index loaded */
    const uint8_t *replaced;   /* (batch) */
    size_t images_bytes;
    uint64_t boxes_dropped;
    int ref;                   /* the stream's result entry holding the slot */
} Batch;

typedef struct BatchStream {
    BatchStreamConfig cfg;
    StageClient cli;
    uint64_t n_images;
    uint64_t batches_per_epoch;
    uint32_t next_epoch;      /* next batch to hand out */
    uint64_t next_b;
    uint32_t want_epoch;      /* next batch to ask for */
    uint64_t want_b;
    int ended;                /* eval: the pass is asked for completely */
    uint32_t *orders[2];      /* the orders of two epochs (requests straddle an epoch's end) */
    int64_t order_epochs[2];
    StageResult *results;     /* (n_results) slots received and not yet released */
    uint8_t *result_used;     /* 0 free, 1 received early (waiting its turn), 2 handed out */
    Batch *early;             /* (n_results) the batch views of entries waiting their turn */
    int n_results;
    uint32_t *scratch_idx;    /* (batch) */
    /* batch_stream_pin: the backend the augmenters' segments are registered with (NULL: none),
     * and per mapped segment (StageClient.segs) 0 not yet tried, 1 registered, 2 refused. */
    const Ops *pin_ops;
    OpsCtx *pin_ctx;
    uint8_t pinned[STAGE_MAX_SEGMENTS];
} BatchStream;

int batch_stream_init(BatchStream *s, void *zctx, const BatchStreamConfig *cfg, Err *err);
/* Releases held batches and unregisters pinned segments too (so ctx must still exist); idempotent. */
void batch_stream_free(BatchStream *s);

/* Pins the augmenters' shared-memory segments with the backend (Ops.host_register) so that
 * uploads of batch images are DMA transfers, asynchronous to the host: the segments mapped now
 * and each one mapped later (a restarted augmenter's). Nothing where the backend does not offer
 * it (the CPU). A segment the backend refuses is one warning line, and its batches upload from
 * pageable memory as before. Call once, any time after init; ctx must outlive the stream (or
 * come after batch_stream_free). A pinned upload reads the slot after the upload call returns:
 * a batch must be released only after the context has waited for the upload (the step's next
 * download or sync), which the training loop does. */
void batch_stream_pin(BatchStream *s, const Ops *ops, OpsCtx *ctx);

/* Waits for the augmenters' welcome (dataset size, configuration check). 0, 1 when stop_fd became
 * readable, -1. */
int batch_stream_start(BatchStream *s, int stop_fd, Err *err);

/* The next batch in schedule order: 0 and *b filled, 1 when stop_fd became readable or an eval
 * pass is over, -1 (an augmenter's failure, e.g. an unreadable image: err names it). */
int batch_stream_next(BatchStream *s, Batch *b, int stop_fd, Err *err);
void batch_stream_release(BatchStream *s, Batch *b);

/* Indices and validity of rank's batch b of epoch (the schedule above). order is the epoch's. */
void batch_schedule(const uint32_t *order, uint64_t n, uint64_t b, int batch, int rank, int world,
                    uint32_t *indices, uint8_t *valid);

#endif
