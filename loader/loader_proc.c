/* loader_proc.c: the loader process (see loader_proc.h).
 *
 * DESIGN
 * - One request at a time, decoded straight after the pump that received it; the loop polls its
 *   socket between requests, so heartbeats and credits keep flowing while it works. Loaders scale
 *   by running more of them, not by threads: each is one core's worth of TurboJPEG.
 * - The decoded image is copied into the slot (about 0.1 ms for 640 x 480) rather than decoded in
 *   place: the decoder owns its buffer's size, and a slot is only as large as the annotations'
 *   largest image, so an image larger than its annotation is refused before it can overflow.
 * - A replacement for an unreadable image is the next index that decodes: a function of the files
 *   alone, so every loader and every restart picks the same one. */
#include "loader/loader_proc.h"

#include <math.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"
#include "shared/stop_signal.h"
#include "shared/zmq_util.h"

int loader_slot_bytes(const Dataset *ds, size_t *bytes, Err *err)
{
    size_t best = 3;
    for (size_t i = 0; i < ds->n_images; i++) {
        const DatasetImage *im = &ds->images[i];
        int64_t px = (int64_t)im->width * im->height;
        if (px > JPEG_MAX_PIXELS_DEFAULT)
            return err_set(err, "%s: annotated as %d x %d, more than the decoder's %lld pixels",
                           im->path, im->width, im->height, (long long)JPEG_MAX_PIXELS_DEFAULT);
        if ((size_t)px * 3 > best) best = (size_t)px * 3;
    }
    *bytes = best;
    return 0;
}

void loader_decoder_free(LoaderDecoder *d) { rgb_image_free(&d->img); }

/* Decodes one index. The JPEG's own size (from its header, whatever the decode scale) must not
 * exceed its annotation's: the slot is sized from the annotations, and the answer must not depend
 * on the scale a random draw picked. */
static int decode_one(LoaderDecoder *d, const DatasetImage *im, double fit_h, double fit_w,
                      Err *err)
{
    JpegDecodeOptions opt = {.max_w = im->width, .max_h = im->height};
    if (fit_h > 0 && fit_w > 0) {
        double s = fmin(fit_h / im->height, fit_w / im->width);
        if (s < 1) { /* the augmenter downscales: a reduced decode that still covers it will do */
            opt.min_w = (int)ceil(im->width * s);
            opt.min_h = (int)ceil(im->height * s);
        }
    }
    return jpeg_decode_file(im->path, &opt, &d->img, err);
}

int loader_decode(LoaderDecoder *d, const Dataset *ds, size_t index, double fit_h, double fit_w,
                  int skip, size_t *loaded, int *replaced, Err *err)
{
    size_t n = ds->n_images;
    ASSERT(index < n);
    for (size_t tries = 0; tries < n; tries++) {
        size_t i = (index + tries) % n;
        if (decode_one(d, &ds->images[i], fit_h, fit_w, err) == 0) {
            *loaded = i;
            *replaced = tries > 0;
            return 0;
        }
        if (!skip) return -1;
        log_warn("skipping unreadable image: %s", err->msg);
    }
    return err_set(err, "none of the %zu images of the dataset could be read (last: %s)", n,
                   err->msg);
}

/* ---- the process ------------------------------------------------------------------------- */

typedef struct Loader {
    const LoaderConfig *cfg;
    Dataset ds;
    LoaderDecoder dec;
    StageServer srv;
    LoaderCounts counts;
} Loader;

static void put_info(void *app, WireWriter *w)
{
    const Loader *l = app;
    wire_put_uint(w, "n_images", l->ds.n_images);
    wire_put_uint(w, "num_classes", (uint64_t)l->ds.num_classes);
}

/* Serves one request: decode into the slot, answer done (or fail naming the file). */
static int serve(Loader *l, StageTask *t, Err *err)
{
    uint64_t epoch, index;
    double fit_h, fit_w;
    Err rerr;
    if (wire_get_uint(&t->req.root, "epoch", &epoch, &rerr) < 0 ||
        wire_get_uint(&t->req.root, "index", &index, &rerr) < 0 ||
        wire_get_f64(&t->req.root, "fit_h", &fit_h, &rerr) < 0 ||
        wire_get_f64(&t->req.root, "fit_w", &fit_w, &rerr) < 0)
        return stage_server_fail(&l->srv, t, rerr.msg, err);
    if (index >= l->ds.n_images) {
        err_set(&rerr, "request for image index %llu of a dataset of %zu",
                (unsigned long long)index, l->ds.n_images);
        return stage_server_fail(&l->srv, t, rerr.msg, err);
    }
    size_t loaded;
    int replaced;
    if (loader_decode(&l->dec, &l->ds, index, fit_h, fit_w, l->cfg->skip_bad_images, &loaded,
                      &replaced, &rerr) < 0) {
        l->counts.failed++;
        return stage_server_fail(&l->srv, t, rerr.msg, err);
    }
    l->counts.replaced += (uint64_t)replaced;
    const RgbImage *img = &l->dec.img;
    memcpy(shm_slot(&l->srv.seg, t->slot), img->px, (size_t)img->w * img->h * 3);
    const DatasetImage *im = &l->ds.images[loaded];
    float boxes[DATASET_MAX_INSTANCES][4];
    int32_t labels[DATASET_MAX_INSTANCES][2];
    for (int i = 0; i < im->n_boxes; i++) {
        const DatasetBox *b = &l->ds.boxes[im->first_box + (size_t)i];
        boxes[i][0] = b->x1, boxes[i][1] = b->y1, boxes[i][2] = b->x2, boxes[i][3] = b->y2;
        labels[i][0] = b->label, labels[i][1] = b->iscrowd;
    }
    WireWriter w;
    stage_server_done_begin(&l->srv, t, &w, 8);
    int64_t shape[3] = {img->h, img->w, 3};
    wire_put_tensor_shm(&w, "image", ST_U8, 3, shape, &l->srv.seg, t->slot, 0);
    WireTensor tb = {.dtype = ST_F32, .ndim = 2, .shape = {im->n_boxes, 4}, .data = boxes};
    WireTensor tl = {.dtype = ST_I32, .ndim = 2, .shape = {im->n_boxes, 2}, .data = labels};
    wire_put_tensor(&w, "boxes", &tb);
    wire_put_tensor(&w, "labels", &tl);
    wire_put_int(&w, "image_id", im->id);
    wire_put_uint(&w, "orig_w", (uint64_t)im->width);
    wire_put_uint(&w, "orig_h", (uint64_t)im->height);
    wire_put_uint(&w, "index", loaded);
    wire_put_uint(&w, "replaced", (uint64_t)replaced);
    int rc = stage_server_finish(&l->srv, t, &w, err);
    wire_writer_free(&w);
    l->counts.served++;
    return rc;
}

int loader_run(const LoaderConfig *cfg, int stop_fd, LoaderCounts *counts, Err *err)
{
    Loader l = {.cfg = cfg};
    int rc = cfg->data ? dataset_open_dir(&l.ds, cfg->data, cfg->num_classes, err)
                       : dataset_open(&l.ds, cfg->ann, cfg->images, cfg->num_classes, err);
    if (rc < 0) return -1;
    void *zctx = NULL;
    size_t slot_bytes;
    if (loader_slot_bytes(&l.ds, &slot_bytes, err) < 0 || !(zctx = zmq_util_ctx_new(err))) {
        dataset_free(&l.ds);
        return -1;
    }
    StageServerConfig sc = {.endpoint = cfg->endpoint, .seg_tag = cfg->name,
                            .n_slots = cfg->slots ? cfg->slots : 8, .slot_bytes = slot_bytes,
                            .hb_ms = cfg->hb_ms, .limits = cfg->limits, .n_info = 2,
                            .put_info = put_info, .app = &l, .report = cfg->report,
                            .role = "loader", .items_per_result = 1};
    rc = stage_server_init(&l.srv, zctx, &sc, err);
    if (rc == 0)
        log_info("loader %s: %zu images, %u slots of %zu bytes, on %s", cfg->name, l.ds.n_images,
                 sc.n_slots, l.srv.seg.slot_bytes, cfg->endpoint);
    while (rc == 0 && !stop_signal_raised(stop_fd)) {
        if ((rc = stage_server_pump(&l.srv, err)) != 0) break;
        StageTask t;
        if (stage_server_next(&l.srv, &t)) {
            /* Decode, copy and answer: the loader's work per image, its reported busy time. */
            int64_t t0 = stage_now_ns();
            rc = serve(&l, &t, err);
            stage_server_add_busy(&l.srv, stage_now_ns() - t0);
            continue;
        }
        int ready;
        rc = zmq_util_poll(&l.srv.sock, ZMQ_POLLIN, stop_fd, l.srv.cfg.hb_ms, &ready, err);
        if (rc == ZMQ_UTIL_AGAIN) rc = 0;
    }
    if (rc == ZMQ_UTIL_TERM) rc = 0;
    if (counts) *counts = l.counts;
    log_info("loader %s: served %llu, replaced %llu unreadable, failed %llu", cfg->name,
             (unsigned long long)l.counts.served, (unsigned long long)l.counts.replaced,
             (unsigned long long)l.counts.failed);
    stage_server_free(&l.srv);
    zmq_util_ctx_term(zctx);
    loader_decoder_free(&l.dec);
    dataset_free(&l.ds);
    return rc < 0 ? -1 : 0;
}
