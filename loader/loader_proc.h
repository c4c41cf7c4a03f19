/* loader_proc.h: the loader process: a COCO dataset index and TurboJPEG decoding, served over the
 * stage protocol (shared/stage.h) to augment processes. loader/main.c is a thin shell (flags,
 * signals) over loader_run.
 *
 * Requests (req, besides the protocol's fields):
 *   epoch uint, index uint (dataset index, images by ascending id),
 *   fit_h, fit_w f64: the extent the augmenter will scale the image to fit (aug_train_image_scale's
 *   scale_factor * H, * W); the JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 that still
 *   covers it. 0 and 0: full resolution (evaluation: what PIL decodes).
 * Results (done):
 *   image    shm tensor U8 (h, w, 3), the decoded RGB (h, w may be reduced by fit_h/fit_w)
 *   boxes    inline F32 (n, 4): x1, y1, x2, y2 in original pixels (dataset.h's clipping rules)
 *   labels   inline I32 (n, 2): label (1-based), iscrowd
 *   image_id int, orig_w uint, orig_h uint (the annotation's size), index uint (loaded),
 *   replaced uint (1: the requested image was unreadable and skipped; see below)
 * Welcome info: n_images uint, num_classes uint.
 *
 * An unreadable image (missing, corrupt, truncated, not a JPEG, larger than its annotation says)
 * is by default answered with fail naming the file, which stops the pipeline. With
 * skip_bad_images it is replaced by the next readable index (wrapping), the same choice every time
 * (it depends only on the files), and counted. Slots are sized from the annotations' largest
 * image, so nothing is allocated per request. */
#ifndef EFFDET_LOADER_PROC_H
#define EFFDET_LOADER_PROC_H

#include <stddef.h>
#include <stdint.h>

#include "loader/dataset.h"
#include "loader/jpeg.h"
#include "shared/err.h"
#include "shared/stage.h"

typedef struct LoaderConfig {
    const char *data;          /* --data DIR (annotations.json + images/), or: */
    const char *ann, *images;  /* --ann FILE --images DIR */
    int num_classes;           /* 0: as many as the file has */
    const char *endpoint;      /* bound */
    const char *name;          /* segment tag, "loader0" */
    uint32_t slots;            /* decoded images in flight */
    int skip_bad_images;
    int hb_ms;
    const char *report;        /* stage reports go there (shared/stage.h); NULL: none */
    WireLimits limits;
} LoaderConfig;

typedef struct LoaderCounts {
    uint64_t served, replaced, failed;
} LoaderCounts;

/* Opens the dataset, binds, and serves until stop_fd is readable or the context ends. */
int loader_run(const LoaderConfig *cfg, int stop_fd, LoaderCounts *counts, Err *err);

/* ---- pieces the process is made of (tests call them) ----------------------------------------- */

/* Bytes of the largest image of ds as RGB (its slot size). Errors on an image whose annotated size
 * exceeds the decoder's pixel cap. */
int loader_slot_bytes(const Dataset *ds, size_t *bytes, Err *err);

/* Reads and decodes image index of ds with the fit rule above into img. On success *loaded is the
 * index decoded (index itself, or a replacement when skip is set) and *replaced says which. */
typedef struct LoaderDecoder {
    RgbImage img; /* reused across requests */
} LoaderDecoder;
void loader_decoder_free(LoaderDecoder *d);
int loader_decode(LoaderDecoder *d, const Dataset *ds, size_t index, double fit_h, double fit_w,
                  int skip, size_t *loaded, int *replaced, Err *err);

#endif
