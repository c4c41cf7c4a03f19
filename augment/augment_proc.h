/* augment_proc.h: the augment process: takes batch requests from a consumer (a worker), fetches
 * the batch's decoded images from loader processes, runs the train or eval transform
 * (augment/transform.h) and packs the batch into one shared-memory slot. Both sides speak the
 * stage protocol (shared/stage.h): a consumer of loaders, a producer for workers. augment/main.c is
 * a thin shell over augment_run.
 *
 * Requests (req, besides the protocol's fields):
 *   epoch uint, train uint (1: train transform, 0: eval), indices bin: B uint32 dataset indices.
 * Results (done), every tensor in the batch's slot:
 *   images (B, H, W, 3) of the dtype; bbox F32 (B, 100, 4) yxyx input pixels, rows past a
 *   sample's boxes -1; cls I32 (B, 100) labels, -1 padding; crowd U8 (B, 100); img_scale F32 (B);
 *   img_size I32 (B, 2) original w, h; image_id I64 (B); index I64 (B) the index loaded;
 *   replaced U8 (B) 1 where an unreadable image was replaced; plus epoch uint and
 *   boxes_dropped uint (boxes the transform clipped to nothing).
 * Welcome info: n_images, num_classes (from the loaders), batch, height, width, dtype (str), so a
 * consumer can refuse an augmenter configured differently.
 * A loader's failure (an unreadable image without --skip-bad-images) fails the batch with the
 * loader's line, prefixed by the batch. */
#ifndef EFFDET_AUGMENT_PROC_H
#define EFFDET_AUGMENT_PROC_H

#include <stddef.h>
#include <stdint.h>

#include "augment/transform.h"
#include "shared/err.h"
#include "shared/stage.h"

enum { AUGMENT_MAX_BATCH = 1024 };

typedef struct AugmentConfig {
    AugConfig aug;              /* size, seed, jitter, interpolation, fill, dtype */
    int batch;                  /* B */
    const char *const *loaders; /* loader endpoints */
    int n_loaders;
    uint32_t loader_window;     /* requests outstanding per loader */
    const char *endpoint;       /* bound */
    const char *name;           /* "aug0": segment tag and the name loaders know us by */
    uint32_t slots;             /* batches in flight */
    int hb_ms, dead_ms;
    const char *report;         /* stage reports go there (shared/stage.h); NULL: none */
    WireLimits limits;
} AugmentConfig;

/* Where each tensor of a batch lies in its slot (64-byte aligned offsets). */
typedef struct BatchLayout {
    size_t images, bbox, cls, crowd, img_scale, img_size, image_id, index, replaced;
    size_t bytes; /* the slot size */
} BatchLayout;

void augment_batch_layout(int batch, const AugConfig *aug, BatchLayout *l);

/* Connects to the loaders, waits for their dataset, binds, and serves until stop_fd is readable
 * or the context ends. */
int augment_run(const AugmentConfig *cfg, int stop_fd, Err *err);

#endif
