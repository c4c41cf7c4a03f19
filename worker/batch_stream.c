/* batch_stream.c: batches from augment processes in schedule order (see batch_stream.h).
 *
 * Requests are built when they are sent (and again if re-issued after an augmenter's death), so
 * the indices of a batch are computed from its key each time rather than stored per request; two
 * epoch orders are cached because requests run ahead across an epoch's end. */
#include "worker/batch_stream.h"

#include <stdlib.h>
#include <string.h>

#include "loader/dataset.h"
#include "loader/train_sample.h"
#include "shared/check.h"
#include "shared/log.h"
#include "shared/stop_signal.h"

static uint64_t key_of(uint32_t epoch, uint64_t b) { return (uint64_t)epoch << 32 | b; }

void batch_schedule(const uint32_t *order, uint64_t n, uint64_t b, int batch, int rank, int world,
                    uint32_t *indices, uint8_t *valid)
{
    uint64_t g0 = b * (uint64_t)batch * (uint64_t)world + (uint64_t)rank * (uint64_t)batch;
    for (int j = 0; j < batch; j++) {
        uint64_t g = g0 + (uint64_t)j;
        indices[j] = order ? order[g % n] : (uint32_t)(g % n);
        valid[j] = g < n;
    }
}

/* The order of epoch (NULL for an eval pass: the identity). */
static const uint32_t *epoch_order(BatchStream *s, uint32_t epoch)
{
    if (!s->cfg.train) return NULL;
    for (int i = 0; i < 2; i++)
        if (s->order_epochs[i] == (int64_t)epoch) return s->orders[i];
    int i = s->order_epochs[0] > s->order_epochs[1]; /* replace the older one */
    train_epoch_permutation(s->cfg.seed, epoch, s->orders[i], s->n_images);
    s->order_epochs[i] = epoch;
    return s->orders[i];
}

static void put_req(void *app, uint64_t key, WireWriter *w)
{
    BatchStream *s = app;
    uint32_t epoch = (uint32_t)(key >> 32);
    uint8_t valid[BATCH_STREAM_MAX];
    batch_schedule(epoch_order(s, epoch), s->n_images, key & 0xffffffffu, s->cfg.batch,
                   s->cfg.rank, s->cfg.world, s->scratch_idx, valid);
    wire_put_uint(w, "epoch", epoch);
    wire_put_uint(w, "train", (uint64_t)s->cfg.train);
    wire_put_bin(w, "indices", s->scratch_idx, (size_t)s->cfg.batch * sizeof(uint32_t));
}

int batch_stream_init(BatchStream *s, void *zctx, const BatchStreamConfig *cfg, Err *err)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->order_epochs[0] = s->order_epochs[1] = -1;
    if (cfg->batch < 1 || cfg->batch > BATCH_STREAM_MAX)
        return err_set(err, "batch %d: 1 to %d", cfg->batch, BATCH_STREAM_MAX);
    if (cfg->world < 1 || cfg->rank < 0 || cfg->rank >= cfg->world)
        return err_set(err, "rank %d of world %d", cfg->rank, cfg->world);
    if (!s->cfg.window) s->cfg.window = 2;
    s->n_results = (int)s->cfg.window * cfg->n_augmenters + 1;
    s->results = calloc((size_t)s->n_results, sizeof *s->results);
    s->result_used = calloc((size_t)s->n_results, 1);
    s->early = calloc((size_t)s->n_results, sizeof *s->early);
    s->scratch_idx = calloc((size_t)cfg->batch, sizeof *s->scratch_idx);
    if (!s->results || !s->result_used || !s->early || !s->scratch_idx) {
        batch_stream_free(s);
        return err_set(err, "out of memory for the batch stream");
    }
    StageClientConfig cc = {.name = cfg->name, .endpoints = cfg->augmenters,
                            .n_peers = cfg->n_augmenters, .window = s->cfg.window,
                            .hb_ms = cfg->hb_ms, .dead_ms = cfg->dead_ms, .limits = cfg->limits,
                            .req_fields = 3, .put_req = put_req, .app = s};
    if (stage_client_init(&s->cli, zctx, &cc, err) < 0) {
        batch_stream_free(s);
        return -1;
    }
    s->next_epoch = s->want_epoch = cfg->epoch;
    s->next_b = s->want_b = cfg->first_batch;
    return 0;
}

/* Registers the segments mapped since the last call (the client only appends to its list). */
static void pin_new_segments(BatchStream *s)
{
    if (!s->pin_ops) return;
    for (int i = 0; i < s->cli.n_segs; i++) {
        ShmSegment *seg = &s->cli.segs[i];
        if (s->pinned[i] || !seg->base) continue;
        Err why;
        if (s->pin_ops->host_register(s->pin_ctx, seg->base, seg->bytes, &why) == 0) {
            s->pinned[i] = 1;
            log_debug("batch stream: pinned %s (%.1f MB)", seg->name, seg->bytes / 1048576.0);
        } else {
            s->pinned[i] = 2;
            log_warn("batch stream: cannot pin %s (%.1f MB), its batches upload from pageable "
                     "memory: %s", seg->name, seg->bytes / 1048576.0, why.msg);
        }
    }
}

/* Before the segments are unmapped (stage_client_free). */
static void unpin_segments(BatchStream *s)
{
    for (int i = 0; s->pin_ops && i < s->cli.n_segs; i++)
        if (s->pinned[i] == 1) s->pin_ops->host_unregister(s->pin_ctx, s->cli.segs[i].base);
    memset(s->pinned, 0, sizeof s->pinned);
    s->pin_ops = NULL, s->pin_ctx = NULL;
}

void batch_stream_pin(BatchStream *s, const Ops *ops, OpsCtx *ctx)
{
    if (!ops->host_register || !ops->host_unregister) return; /* not offered: pageable uploads */
    ASSERT(!s->pin_ops && ctx);
    s->pin_ops = ops, s->pin_ctx = ctx;
    pin_new_segments(s);
}

void batch_stream_free(BatchStream *s)
{
    for (int i = 0; i < s->n_results; i++)
        if (s->result_used && s->result_used[i]) {
            stage_client_release(&s->cli, &s->results[i]);
            s->result_used[i] = 0;
        }
    unpin_segments(s);
    stage_client_free(&s->cli);
    free(s->results), free(s->result_used), free(s->early), free(s->scratch_idx);
    free(s->orders[0]), free(s->orders[1]);
    s->results = NULL, s->result_used = NULL, s->early = NULL, s->scratch_idx = NULL;
    s->orders[0] = s->orders[1] = NULL;
    s->n_results = 0;
}

/* Checks the welcome's configuration against ours. */
static int check_info(BatchStream *s, const WireMap *info, Err *err)
{
    uint64_t batch, height, width;
    if (wire_get_uint(info, "n_images", &s->n_images, err) < 0 ||
        wire_get_uint(info, "batch", &batch, err) < 0 ||
        wire_get_uint(info, "height", &height, err) < 0 ||
        wire_get_uint(info, "width", &width, err) < 0)
        return -1;
    if (batch != (uint64_t)s->cfg.batch || height != (uint64_t)s->cfg.height ||
        width != (uint64_t)s->cfg.width)
        return err_set(err, "the augmenters make batches of %llu at %llux%llu; this worker wants "
                            "%d at %dx%d", (unsigned long long)batch, (unsigned long long)height,
                       (unsigned long long)width, s->cfg.batch, s->cfg.height, s->cfg.width);
    if (s->n_images == 0 || s->n_images > UINT32_MAX)
        return err_set(err, "the augmenters serve %llu images", (unsigned long long)s->n_images);
    return 0;
}

int batch_stream_start(BatchStream *s, int stop_fd, Err *err)
{
    WireMap info;
    int free_i = 0;
    while (!stage_client_info(&s->cli, &info)) {
        if (stop_signal_raised(stop_fd)) return 1;
        int rc = stage_client_poll(&s->cli, NULL, s->cli.cfg.hb_ms, &s->results[free_i], err);
        if (rc < 0) return -1;
        if (rc == ZMQ_UTIL_TERM) return 1;
        if (s->cfg.alive && s->cfg.alive(s->cfg.alive_arg, err) < 0) return -1;
        if (rc == STAGE_RESULT) stage_client_release(&s->cli, &s->results[free_i]);
    }
    if (check_info(s, &info, err) < 0) return -1;
    uint64_t g = (uint64_t)s->cfg.batch * (uint64_t)s->cfg.world;
    s->batches_per_epoch = (s->n_images + g - 1) / g;
    if (s->next_b > s->batches_per_epoch)
        return err_set(err, "start batch %llu of an epoch of %llu batches",
                       (unsigned long long)s->next_b, (unsigned long long)s->batches_per_epoch);
    if (s->next_b == s->batches_per_epoch && s->cfg.train) { /* just after an epoch's last batch */
        s->next_b = s->want_b = 0;
        s->next_epoch = ++s->want_epoch;
    }
    if (s->cfg.train) {
        s->orders[0] = malloc(s->n_images * sizeof(uint32_t));
        s->orders[1] = malloc(s->n_images * sizeof(uint32_t));
        if (!s->orders[0] || !s->orders[1]) return err_set(err, "out of memory for epoch orders");
    }
    return 0;
}

/* The views of result i as a batch. */
static int fill_batch(BatchStream *s, int i, Batch *b, Err *err)
{
    StageResult *r = &s->results[i];
    const WireMap *m = &r->done.root;
    int64_t bs = s->cfg.batch;
    struct { const char *key; const void **dst; StDtype dtype; int64_t inner; } t[] = {
        {"bbox", (const void **)&b->bbox, ST_F32, 400},
        {"cls", (const void **)&b->cls, ST_I32, 100},
        {"crowd", (const void **)&b->crowd, ST_U8, 100},
        {"img_scale", (const void **)&b->img_scale, ST_F32, 1},
        {"img_size", (const void **)&b->img_size, ST_I32, 2},
        {"image_id", (const void **)&b->image_id, ST_I64, 1},
        {"index", (const void **)&b->index, ST_I64, 1},
        {"replaced", (const void **)&b->replaced, ST_U8, 1},
    };
    WireTensor wt;
    uint32_t slot;
    uint64_t epoch;
    if (wire_get_tensor_shm(m, "images", r->seg, &wt, &slot, err) < 0) return -1;
    if (wt.ndim != 4 || wt.shape[0] != bs || wt.shape[1] != s->cfg.height ||
        wt.shape[2] != s->cfg.width || wt.shape[3] != 3)
        return wire_fail(m, "images", err, "has the wrong shape");
    b->images = wt.data, b->dtype = wt.dtype, b->images_bytes = wt.bytes;
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
        if (wire_get_tensor_shm(m, t[k].key, r->seg, &wt, &slot, err) < 0) return -1;
        if (wt.dtype != t[k].dtype || wt.bytes != (size_t)(bs * t[k].inner) * st_dtype_size(wt.dtype))
            return wire_fail(m, t[k].key, err, "has the wrong dtype or size");
        *t[k].dst = wt.data;
    }
    if (wire_get_uint(m, "epoch", &epoch, err) < 0 ||
        wire_get_uint(m, "boxes_dropped", &b->boxes_dropped, err) < 0)
        return -1;
    b->epoch = (uint32_t)(r->key >> 32), b->b = r->key & 0xffffffffu;
    if (epoch != b->epoch) return wire_fail(m, "epoch", err, "does not match the request");
    batch_schedule(epoch_order(s, b->epoch), s->n_images, b->b, s->cfg.batch, s->cfg.rank,
                   s->cfg.world, s->scratch_idx, b->valid);
    b->n_valid = 0;
    for (int j = 0; j < s->cfg.batch; j++) b->n_valid += b->valid[j];
    b->ref = i;
    return 0;
}

/* Asks for batches until window * augmenters are outstanding or waiting. */
static void want_ahead(BatchStream *s)
{
    size_t cap = (size_t)s->cfg.window * (size_t)s->cfg.n_augmenters, early = 0;
    for (int i = 0; i < s->n_results; i++) early += s->result_used[i] == 1;
    while (!s->ended && stage_client_pending(&s->cli) + early < cap) {
        stage_client_want(&s->cli, key_of(s->want_epoch, s->want_b));
        if (++s->want_b == s->batches_per_epoch) {
            s->want_b = 0;
            if (s->cfg.train) s->want_epoch++;
            else s->ended = 1;
        }
    }
}

/* Gives back the early result furthest ahead and asks for it again later: the augmenters' slots
 * are all held by batches that came early while the one needed next waits for room (its
 * augmenter died; the survivors are full). Costs one batch of work, only after a failure. */
static void evict_latest(BatchStream *s)
{
    int best = -1;
    for (int i = 0; i < s->n_results; i++)
        if (s->result_used[i] == 1 && (best < 0 || s->results[i].key > s->results[best].key))
            best = i;
    if (best < 0) return;
    uint64_t key = s->results[best].key;
    stage_client_release(&s->cli, &s->results[best]);
    s->result_used[best] = 0;
    stage_client_want(&s->cli, key);
}

int batch_stream_next(BatchStream *s, Batch *b, int stop_fd, Err *err)
{
    if (!s->cfg.train && s->next_b == s->batches_per_epoch) return 1;
    uint64_t want = key_of(s->next_epoch, s->next_b);
    for (;;) {
        for (int i = 0; i < s->n_results; i++)
            if (s->result_used[i] == 1 && s->results[i].key == want) {
                *b = s->early[i];
                s->result_used[i] = 2;
                if (++s->next_b == s->batches_per_epoch && s->cfg.train)
                    s->next_b = 0, s->next_epoch++;
                return 0;
            }
        if (stop_signal_raised(stop_fd)) return 1;
        want_ahead(s);
        int i = 0;
        while (i < s->n_results && s->result_used[i]) i++;
        ASSERT(i < s->n_results); /* one more entry than can be outstanding */
        int rc = stage_client_poll(&s->cli, NULL, s->cli.cfg.hb_ms, &s->results[i], err);
        if (rc == STAGE_FAILED)
            return err_wrap(err, "batch %llu of epoch %u: ",
                            (unsigned long long)(s->results[i].key & 0xffffffffu),
                            (uint32_t)(s->results[i].key >> 32));
        if (rc < 0) return -1;
        if (rc == ZMQ_UTIL_TERM) return 1;
        if (s->cfg.alive && s->cfg.alive(s->cfg.alive_arg, err) < 0) {
            if (rc == STAGE_RESULT) stage_client_release(&s->cli, &s->results[i]);
            return -1;
        }
        if (rc != STAGE_RESULT) {
            if (stage_client_stalled(&s->cli)) evict_latest(s);
            continue;
        }
        s->result_used[i] = 1;
        pin_new_segments(s); /* a result may come from a segment mapped by this poll */
        if (fill_batch(s, i, &s->early[i], err) < 0) return -1;
    }
}

void batch_stream_release(BatchStream *s, Batch *b)
{
    ASSERT(b->ref >= 0 && b->ref < s->n_results && s->result_used[b->ref] == 2);
    stage_client_release(&s->cli, &s->results[b->ref]);
    s->result_used[b->ref] = 0;
    b->ref = -1;
}
