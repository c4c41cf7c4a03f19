/* augment_proc.c: the augment process (see augment_proc.h).
 *
 * DESIGN
 * - Several batches are in progress at once (one per slot). A batch task asks the loaders for its
 *   B samples under keys of its own (key_base + position), so the same image needed twice (an
 *   epoch's last batch wraps around) or by a batch of a replaced consumer never gets confused.
 *   Samples are transformed as they arrive, in any order, into their position of the slot; the
 *   transform depends only on (seed, epoch, index), so the bytes of a batch do not depend on
 *   which loader answered or when.
 * - The loaders' answers and the consumer's requests are watched by one poll: stage_client_poll
 *   takes the server's socket as its extra socket.
 * - A task whose consumer was replaced (it restarted) is abandoned: its outstanding samples are
 *   cancelled (any that still come are handed straight back) and its slot freed. */
#include "augment/augment_proc.h"

#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"
#include "shared/stop_signal.h"
#include "shared/zmq_util.h"

typedef struct BatchTask {
    int used;
    StageTask t;
    uint32_t epoch;
    int train;
    uint32_t indices[AUGMENT_MAX_BATCH];
    uint64_t key_base;
    int remaining;
    uint64_t boxes_dropped;
} BatchTask;

typedef struct Augmenter {
    const AugmentConfig *cfg;
    StageClient cli;
    StageServer srv;
    BatchLayout layout;
    uint64_t n_images, num_classes;
    BatchTask *tasks; /* (slots) */
    uint64_t next_key;
    AugScratch scratch;
    uint64_t batches, samples;
} Augmenter;

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

void augment_batch_layout(int batch, const AugConfig *aug, BatchLayout *l)
{
    size_t b = (size_t)batch, off = 0;
    size_t sizes[] = {b * aug_image_bytes(aug),
                      b * DATASET_MAX_INSTANCES * 4 * sizeof(float),
                      b * DATASET_MAX_INSTANCES * sizeof(int32_t),
                      b * DATASET_MAX_INSTANCES,
                      b * sizeof(float),
                      b * 2 * sizeof(int32_t),
                      b * sizeof(int64_t),
                      b * sizeof(int64_t),
                      b};
    size_t *offs[] = {&l->images,   &l->bbox,     &l->cls,   &l->crowd,   &l->img_scale,
                      &l->img_size, &l->image_id, &l->index, &l->replaced};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        *offs[i] = off;
        off = align64(off + sizes[i]);
    }
    l->bytes = off;
}

static BatchTask *task_of_key(Augmenter *a, uint64_t key, int *pos)
{
    for (uint32_t i = 0; i < a->srv.seg.n_slots; i++) {
        BatchTask *bt = &a->tasks[i];
        if (bt->used && key >= bt->key_base && key < bt->key_base + (uint64_t)a->cfg->batch) {
            *pos = (int)(key - bt->key_base);
            return bt;
        }
    }
    return NULL;
}

/* The loader request of a sample: where it is, and how small it may be decoded. */
static void put_sample_req(void *app, uint64_t key, WireWriter *w)
{
    Augmenter *a = app;
    int pos;
    BatchTask *bt = task_of_key(a, key, &pos);
    ASSERT(bt); /* keys are cancelled when their task ends */
    double fit_h = 0, fit_w = 0;
    if (bt->train) {
        AugTrainParams p;
        aug_train_params(&a->cfg->aug, bt->epoch, bt->indices[pos], &p);
        fit_h = p.scale_factor * a->cfg->aug.height;
        fit_w = p.scale_factor * a->cfg->aug.width;
    }
    wire_put_uint(w, "epoch", bt->epoch);
    wire_put_uint(w, "index", bt->indices[pos]);
    wire_put_f64(w, "fit_h", fit_h);
    wire_put_f64(w, "fit_w", fit_w);
}

static void put_info(void *app, WireWriter *w)
{
    const Augmenter *a = app;
    wire_put_uint(w, "n_images", a->n_images);
    wire_put_uint(w, "num_classes", a->num_classes);
    wire_put_uint(w, "batch", (uint64_t)a->cfg->batch);
    wire_put_uint(w, "height", (uint64_t)a->cfg->aug.height);
    wire_put_uint(w, "width", (uint64_t)a->cfg->aug.width);
    wire_put_str(w, "dtype", st_dtype_name(a->cfg->aug.dtype));
}

/* Ends a task; samples still wanted from the loaders are cancelled (none are once it is done). */
static void task_end(Augmenter *a, BatchTask *bt)
{
    for (int j = 0; bt->remaining > 0 && j < a->cfg->batch; j++)
        stage_client_cancel(&a->cli, bt->key_base + (uint64_t)j);
    bt->remaining = 0;
    bt->used = 0;
}

static int task_fail(Augmenter *a, BatchTask *bt, const char *why, Err *err)
{
    char line[STAGE_ERROR_CAP + 64];
    snprintf(line, sizeof line, "%s: %s", a->cfg->name, why);
    task_end(a, bt);
    return stage_server_fail(&a->srv, &bt->t, line, err);
}

/* A new batch request: checked, then its samples are wanted from the loaders. */
static int task_start(Augmenter *a, BatchTask *bt, Err *err)
{
    uint64_t epoch, train;
    const void *idx;
    size_t len;
    Err rerr;
    memset(bt->indices, 0, sizeof bt->indices);
    bt->used = 1, bt->boxes_dropped = 0, bt->epoch = 0, bt->remaining = 0;
    bt->key_base = a->next_key;
    a->next_key += (uint64_t)a->cfg->batch;
    if (wire_get_uint(&bt->t.req.root, "epoch", &epoch, &rerr) < 0 ||
        wire_get_uint(&bt->t.req.root, "train", &train, &rerr) < 0 ||
        wire_get_bin(&bt->t.req.root, "indices", &idx, &len, &rerr) < 0)
        return task_fail(a, bt, rerr.msg, err);
    if (epoch >= (1u << 24) || len != (size_t)a->cfg->batch * sizeof(uint32_t)) {
        err_set(&rerr, "epoch %llu (< 2^24) with %zu bytes of indices (expected %d)",
                (unsigned long long)epoch, len, a->cfg->batch * 4);
        return task_fail(a, bt, rerr.msg, err);
    }
    bt->epoch = (uint32_t)epoch, bt->train = train != 0;
    memcpy(bt->indices, idx, len);
    for (int j = 0; j < a->cfg->batch; j++)
        if (bt->indices[j] >= a->n_images) {
            err_set(&rerr, "index %u of a dataset of %llu images", bt->indices[j],
                    (unsigned long long)a->n_images);
            return task_fail(a, bt, rerr.msg, err);
        }
    bt->remaining = a->cfg->batch;
    for (int j = 0; j < a->cfg->batch; j++) stage_client_want(&a->cli, bt->key_base + (uint64_t)j);
    return 0;
}

static int task_finish(Augmenter *a, BatchTask *bt, Err *err)
{
    const BatchLayout *l = &a->layout;
    const AugConfig *aug = &a->cfg->aug;
    const ShmSegment *seg = &a->srv.seg;
    uint32_t slot = bt->t.slot;
    int64_t b = a->cfg->batch, m = DATASET_MAX_INSTANCES;
    WireWriter w;
    stage_server_done_begin(&a->srv, &bt->t, &w, 11);
    wire_put_tensor_shm(&w, "images", aug->dtype, 4, (int64_t[]){b, aug->height, aug->width, 3},
                        seg, slot, l->images);
    wire_put_tensor_shm(&w, "bbox", ST_F32, 3, (int64_t[]){b, m, 4}, seg, slot, l->bbox);
    wire_put_tensor_shm(&w, "cls", ST_I32, 2, (int64_t[]){b, m}, seg, slot, l->cls);
    wire_put_tensor_shm(&w, "crowd", ST_U8, 2, (int64_t[]){b, m}, seg, slot, l->crowd);
    wire_put_tensor_shm(&w, "img_scale", ST_F32, 1, (int64_t[]){b}, seg, slot, l->img_scale);
    wire_put_tensor_shm(&w, "img_size", ST_I32, 2, (int64_t[]){b, 2}, seg, slot, l->img_size);
    wire_put_tensor_shm(&w, "image_id", ST_I64, 1, (int64_t[]){b}, seg, slot, l->image_id);
    wire_put_tensor_shm(&w, "index", ST_I64, 1, (int64_t[]){b}, seg, slot, l->index);
    wire_put_tensor_shm(&w, "replaced", ST_U8, 1, (int64_t[]){b}, seg, slot, l->replaced);
    wire_put_uint(&w, "epoch", bt->epoch);
    wire_put_uint(&w, "boxes_dropped", bt->boxes_dropped);
    task_end(a, bt);
    int rc = stage_server_finish(&a->srv, &bt->t, &w, err);
    wire_writer_free(&w);
    a->batches++;
    return rc;
}

/* One decoded sample from a loader: transform it into its place in the batch's slot. */
static int take_sample(Augmenter *a, BatchTask *bt, int pos, StageResult *r, Err *err)
{
    const BatchLayout *l = &a->layout;
    uint8_t *slot = shm_slot(&a->srv.seg, bt->t.slot);
    WireTensor img, boxes, labels;
    uint32_t lslot;
    int64_t image_id;
    uint64_t orig_w, orig_h, index, replaced;
    Err rerr;
    if (wire_get_tensor_shm(&r->done.root, "image", r->seg, &img, &lslot, &rerr) < 0 ||
        wire_get_tensor(&r->done.root, "boxes", &boxes, &rerr) < 0 ||
        wire_get_tensor(&r->done.root, "labels", &labels, &rerr) < 0 ||
        wire_get_int(&r->done.root, "image_id", &image_id, &rerr) < 0 ||
        wire_get_uint(&r->done.root, "orig_w", &orig_w, &rerr) < 0 ||
        wire_get_uint(&r->done.root, "orig_h", &orig_h, &rerr) < 0 ||
        wire_get_uint(&r->done.root, "index", &index, &rerr) < 0 ||
        wire_get_uint(&r->done.root, "replaced", &replaced, &rerr) < 0)
        return task_fail(a, bt, rerr.msg, err);
    int64_t n = boxes.ndim == 2 ? boxes.shape[0] : -1;
    if (img.dtype != ST_U8 || img.ndim != 3 || img.shape[2] != 3 || img.shape[0] < 1 ||
        img.shape[1] < 1 || boxes.dtype != ST_F32 || n < 0 || n > DATASET_MAX_INSTANCES ||
        boxes.shape[1] != 4 || labels.dtype != ST_I32 || labels.ndim != 2 ||
        labels.shape[0] != n || labels.shape[1] != 2 || orig_w < 1 || orig_h < 1 ||
        orig_w > RESIZE_MAX_SIDE || orig_h > RESIZE_MAX_SIDE) {
        err_set(&rerr, "a loader's sample has malformed tensors or sizes");
        return task_fail(a, bt, rerr.msg, err);
    }
    DatasetBox db[DATASET_MAX_INSTANCES];
    for (int64_t i = 0; i < n; i++) {
        float c[4];
        int32_t lab[2];
        memcpy(c, (const uint8_t *)boxes.data + i * 16, 16);
        memcpy(lab, (const uint8_t *)labels.data + i * 8, 8);
        db[i] = (DatasetBox){c[0], c[1], c[2], c[3], lab[0], lab[1]};
    }
    RgbImage view = {.w = (int)img.shape[1], .h = (int)img.shape[0], .px = (uint8_t *)img.data};
    void *dst = slot + l->images + (size_t)pos * aug_image_bytes(&a->cfg->aug);
    SampleTarget t;
    int dropped;
    if (bt->train) {
        AugTrainParams p;
        aug_train_params(&a->cfg->aug, bt->epoch, bt->indices[pos], &p);
        dropped = aug_train_apply(&a->cfg->aug, &p, &view, (int)orig_w, (int)orig_h, db, (int)n,
                                  &a->scratch, dst, &t, &rerr);
    } else {
        dropped = aug_eval_apply(&a->cfg->aug, &view, db, (int)n, &a->scratch, dst, &t, &rerr);
    }
    if (dropped < 0) return task_fail(a, bt, rerr.msg, err);
    bt->boxes_dropped += (uint64_t)dropped;
    size_t m = DATASET_MAX_INSTANCES;
    memcpy(slot + l->bbox + (size_t)pos * m * 16, t.bbox, m * 16);
    memcpy(slot + l->cls + (size_t)pos * m * 4, t.cls, m * 4);
    memcpy(slot + l->crowd + (size_t)pos * m, t.crowd, m);
    memcpy(slot + l->img_scale + (size_t)pos * 4, &t.img_scale, 4);
    int32_t size[2] = {(int32_t)orig_w, (int32_t)orig_h};
    memcpy(slot + l->img_size + (size_t)pos * 8, size, 8);
    int64_t idx = (int64_t)index;
    memcpy(slot + l->image_id + (size_t)pos * 8, &image_id, 8);
    memcpy(slot + l->index + (size_t)pos * 8, &idx, 8);
    slot[l->replaced + (size_t)pos] = (uint8_t)(replaced != 0);
    a->samples++;
    return --bt->remaining == 0 ? task_finish(a, bt, err) : 0;
}

/* Waits for the loaders' first welcome: the dataset size comes from there. */
static int wait_dataset(Augmenter *a, int stop_fd, Err *err)
{
    WireMap info;
    while (!stage_client_info(&a->cli, &info)) {
        if (stop_signal_raised(stop_fd)) return 1;
        StageResult r;
        int rc = stage_client_poll(&a->cli, NULL, a->cli.cfg.hb_ms, &r, err);
        if (rc < 0 || rc == ZMQ_UTIL_TERM) return rc < 0 ? -1 : 1;
        if (rc == STAGE_RESULT) stage_client_release(&a->cli, &r);
    }
    if (wire_get_uint(&info, "n_images", &a->n_images, err) < 0 ||
        wire_get_uint(&info, "num_classes", &a->num_classes, err) < 0)
        return -1;
    if (a->n_images == 0 || a->n_images > UINT32_MAX)
        return err_set(err, "the loaders serve %llu images (1 to 2^32 - 1)",
                       (unsigned long long)a->n_images);
    return 0;
}

static int serve(Augmenter *a, int stop_fd, Err *err)
{
    uint32_t n_slots = a->srv.seg.n_slots;
    while (!stop_signal_raised(stop_fd)) {
        int rc = stage_server_pump(&a->srv, err);
        if (rc) return rc == ZMQ_UTIL_TERM ? 0 : -1;
        for (uint32_t i = 0; i < n_slots; i++) /* consumers that were replaced */
            if (a->tasks[i].used && !stage_server_task_live(&a->srv, &a->tasks[i].t)) {
                task_end(a, &a->tasks[i]);
                stage_server_fail(&a->srv, &a->tasks[i].t, "abandoned", err);
            }
        for (uint32_t i = 0; i < n_slots; i++) {
            if (a->tasks[i].used) continue;
            if (!stage_server_next(&a->srv, &a->tasks[i].t)) break;
            if (task_start(a, &a->tasks[i], err) < 0) return -1;
        }
        StageResult r;
        rc = stage_client_poll(&a->cli, a->srv.sock.sock, a->cli.cfg.hb_ms, &r, err);
        if (rc < 0) return -1;
        if (rc == ZMQ_UTIL_TERM) return 0;
        int pos;
        BatchTask *bt = (rc == STAGE_RESULT || rc == STAGE_FAILED) ? task_of_key(a, r.key, &pos)
                                                                   : NULL;
        if (rc == STAGE_FAILED && bt && task_fail(a, bt, err->msg, err) < 0) return -1;
        if (rc == STAGE_RESULT) {
            /* Transforming a sample (and packing its batch when it is the last) is the
             * augmenter's work; waiting for loaders is not (several batches wait at once). */
            int64_t t0 = stage_now_ns();
            int trc = bt ? take_sample(a, bt, pos, &r, err) : 0;
            stage_server_add_busy(&a->srv, stage_now_ns() - t0);
            stage_client_release(&a->cli, &r);
            if (trc < 0) return -1;
        }
    }
    return 0;
}

int augment_run(const AugmentConfig *cfg, int stop_fd, Err *err)
{
    if (cfg->batch < 1 || cfg->batch > AUGMENT_MAX_BATCH)
        return err_set(err, "batch %d: 1 to %d", cfg->batch, AUGMENT_MAX_BATCH);
    Augmenter a = {.cfg = cfg};
    augment_batch_layout(cfg->batch, &cfg->aug, &a.layout);
    void *zctx = zmq_util_ctx_new(err);
    if (!zctx) return -1;
    StageClientConfig cc = {.name = cfg->name, .endpoints = cfg->loaders,
                            .n_peers = cfg->n_loaders,
                            .window = cfg->loader_window ? cfg->loader_window : 4,
                            .hb_ms = cfg->hb_ms, .dead_ms = cfg->dead_ms, .limits = cfg->limits,
                            .req_fields = 4, .put_req = put_sample_req, .app = &a};
    uint32_t slots = cfg->slots ? cfg->slots : 2;
    int rc = stage_client_init(&a.cli, zctx, &cc, err);
    if (rc == 0) rc = wait_dataset(&a, stop_fd, err);
    if (rc == 0) {
        StageServerConfig sc = {.endpoint = cfg->endpoint, .seg_tag = cfg->name, .n_slots = slots,
                                .slot_bytes = a.layout.bytes, .hb_ms = cfg->hb_ms,
                                .limits = cfg->limits, .n_info = 6, .put_info = put_info,
                                .app = &a, .report = cfg->report, .role = "augment",
                                .items_per_result = (uint32_t)cfg->batch};
        a.tasks = calloc(slots, sizeof *a.tasks);
        if (!a.tasks) rc = err_set(err, "out of memory for %u batch tasks", slots);
        if (rc == 0) rc = stage_server_init(&a.srv, zctx, &sc, err);
        if (rc == 0) {
            log_info("augment %s: batch %d at %dx%d, %u slots of %zu bytes, %d loaders, on %s",
                     cfg->name, cfg->batch, cfg->aug.height, cfg->aug.width, slots,
                     a.srv.seg.slot_bytes, cfg->n_loaders, cfg->endpoint);
            rc = serve(&a, stop_fd, err);
            log_info("augment %s: %llu batches, %llu samples", cfg->name,
                     (unsigned long long)a.batches, (unsigned long long)a.samples);
        }
    }
    rc = rc < 0 ? -1 : 0;
    for (uint32_t i = 0; a.tasks && i < slots; i++) /* batches still in progress at the stop */
        if (a.tasks[i].used) {
            Err ferr;
            task_end(&a, &a.tasks[i]);
            stage_server_fail(&a.srv, &a.tasks[i].t, "the augmenter is stopping", &ferr);
        }
    stage_server_free(&a.srv);
    stage_client_free(&a.cli);
    zmq_util_ctx_term(zctx);
    aug_scratch_free(&a.scratch);
    free(a.tasks);
    return rc;
}
