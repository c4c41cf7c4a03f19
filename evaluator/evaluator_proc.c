/* evaluator_proc.c: the evaluator process (see evaluator_proc.h for its messages).
 *
 * DESIGN
 * - One thread, one loop: zmq_poll on the PULL socket and the stop fd, with the poll's timeout
 *   set by the next "incomplete" report that is due. Evaluation runs inline: on a val2017-sized
 *   epoch it takes about 0.3 s, during which ZeroMQ queues the next epoch's detections (and,
 *   past the high-water mark, makes the workers wait: back-pressure, nothing lost). A thread
 *   would only add locking around CocoEval, which is single-threaded by design.
 * - Up to EVALUATOR_EPOCHS epochs are open, each with its own CocoEval (created once and reset
 *   between epochs, so an epoch costs no ground-truth indexing) and its own `seen` flags. The
 *   flags repeat what CocoEval records, on purpose: they tell a duplicate from a rejected image
 *   before CocoEval is asked, so the error published says which it was, and they give the first
 *   missing image in id order, the same one coco_eval_check_complete names.
 * - Never count an image twice: a second delivery of an (epoch, image) is refused and published
 *   as a "duplicate" error; one for an epoch already evaluated is "late". When a worker dies, the
 *   coordinator re-issues its images; whichever copy comes first counts, the other is reported.
 * - Time is a parameter (now), not read inside the state machine, so tests control timeouts.
 * - A producer's bad message must not stop the evaluation of everyone else's: nothing here
 *   exits or asserts on message content. */
#include "evaluator/evaluator_proc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "evaluator/coco_eval.h"
#include "shared/check.h"
#include "shared/log.h"
#include "shared/zmq_util.h"

typedef struct EpochSlot {
    int open;
    uint64_t epoch;
    CocoEval *ce;
    uint8_t *seen;   /* (n_images) by ground-truth file index: detections accepted */
    size_t n_seen;
    int end_seen;    /* epoch_end arrived */
    double deadline; /* the next "incomplete" report, once end_seen */
} EpochSlot;

struct Evaluator {
    CocoDataset gt;
    double timeout_s;
    WireLimits lim;
    EvaluatorPublish publish;
    void *publish_ctx;
    EpochSlot slots[EVALUATOR_EPOCHS];
    int any_evaluated;
    uint64_t last_evaluated; /* the highest epoch evaluated: epochs up to it are over */
    CocoDetection *dets;  /* (cap_dets) scratch for one image's rows */
    size_t cap_dets;
    EvaluatorCounts counts;
};

Evaluator *evaluator_create(CocoDataset *gt, double timeout_s, const WireLimits *lim,
                            EvaluatorPublish publish, void *publish_ctx)
{
    Evaluator *ev = calloc(1, sizeof *ev);
    ASSERT(ev);
    ev->gt = *gt;
    memset(gt, 0, sizeof *gt);
    ev->timeout_s = timeout_s, ev->lim = *lim;
    ev->publish = publish, ev->publish_ctx = publish_ctx;
    for (int i = 0; i < EVALUATOR_EPOCHS; i++) {
        ev->slots[i].ce = coco_eval_create(&ev->gt);
        ev->slots[i].seen = calloc(ev->gt.n_images ? ev->gt.n_images : 1, 1);
        ASSERT(ev->slots[i].seen);
    }
    return ev;
}

void evaluator_free(Evaluator *ev)
{
    if (!ev) return;
    for (int i = 0; i < EVALUATOR_EPOCHS; i++) {
        coco_eval_free(ev->slots[i].ce);
        free(ev->slots[i].seen);
    }
    coco_dataset_free(&ev->gt);
    free(ev->dets);
    free(ev);
}

const EvaluatorCounts *evaluator_counts(const Evaluator *ev) { return &ev->counts; }

/* ---- publishing ------------------------------------------------------------------------------ */

static void ev_send(Evaluator *ev, WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    if (ev->publish(ev->publish_ctx, data, len)) ev->counts.publish_failed++;
    wire_writer_free(w);
}

void evaluator_announce(Evaluator *ev)
{
    WireWriter w;
    wire_writer_init(&w, "ready", 3);
    wire_put_uint(&w, "pid", (uint64_t)getpid());
    wire_put_uint(&w, "images", ev->gt.n_images);
    wire_put_uint(&w, "categories", ev->gt.n_categories);
    ev_send(ev, &w);
}

/* Logs and publishes an error of the given kind about epoch (and image_id unless has_image is
 * 0); what is one line without the epoch, which is prefixed here. */
static void ev_error(Evaluator *ev, uint64_t epoch, const char *kind, int has_image,
                     int64_t image_id, const char *what)
{
    char line[1200];
    snprintf(line, sizeof line, "epoch %llu: %s", (unsigned long long)epoch, what);
    log_warn("evaluator: %s: %s", kind, line);
    WireWriter w;
    wire_writer_init(&w, "error", has_image ? 4 : 3);
    wire_put_uint(&w, "epoch", epoch);
    wire_put_str(&w, "kind", kind);
    wire_put_str(&w, "what", line);
    if (has_image) wire_put_int(&w, "image_id", image_id);
    ev_send(ev, &w);
}

static void ev_malformed(Evaluator *ev, const char *what)
{
    ev->counts.malformed++;
    log_warn("evaluator: malformed message dropped (%llu so far): %s",
             (unsigned long long)ev->counts.malformed, what);
}

static double ev_clock(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void ev_publish_metrics(Evaluator *ev, uint64_t epoch, const CocoEvalResult *res,
                               double eval_s)
{
    WireTensor ids = {.dtype = ST_I64, .ndim = 1, .shape = {(int64_t)res->n_categories},
                      .data = res->category_ids};
    WireTensor ap = {.dtype = ST_F64, .ndim = 1, .shape = {(int64_t)res->n_categories},
                     .data = res->category_ap};
    WireWriter w;
    wire_writer_init(&w, "metrics", 9);
    wire_put_uint(&w, "epoch", epoch);
    wire_put_f64_array(&w, "stats", res->stats, COCO_EVAL_NUM_STATS);
    wire_put_tensor(&w, "category_ids", &ids);
    wire_put_tensor(&w, "category_ap", &ap);
    wire_put_uint(&w, "images", ev->gt.n_images);
    wire_put_uint(&w, "dets", res->n_dets);
    wire_put_uint(&w, "dets_unknown_category", res->n_dets_unknown_category);
    wire_put_uint(&w, "dets_over_max", res->n_dets_over_max);
    wire_put_f64(&w, "eval_s", eval_s);
    ev_send(ev, &w);
}

/* ---- epochs ---------------------------------------------------------------------------------- */

static void ev_close(Evaluator *ev, EpochSlot *s)
{
    coco_eval_reset(s->ce);
    memset(s->seen, 0, ev->gt.n_images);
    s->open = 0, s->n_seen = 0, s->end_seen = 0;
}

/* The open slot of epoch, opening one if the epoch is new; NULL (after publishing why) when the
 * epoch is finished or two others are open. */
static EpochSlot *ev_slot(Evaluator *ev, uint64_t epoch, int has_image, int64_t image_id)
{
    EpochSlot *free_slot = NULL;
    char what[256];
    for (int i = 0; i < EVALUATOR_EPOCHS; i++) {
        if (ev->slots[i].open && ev->slots[i].epoch == epoch) return &ev->slots[i];
        if (!ev->slots[i].open && !free_slot) free_slot = &ev->slots[i];
    }
    /* Epochs run in order, so once one is evaluated, an earlier one without a slot is over
     * too (whatever arrives for it is a straggler); epochs may open in any order otherwise. */
    if (ev->any_evaluated && epoch <= ev->last_evaluated) {
        ev->counts.late++;
        snprintf(what, sizeof what, "arrived after epoch %llu (this one or a later one) was "
                                    "evaluated", (unsigned long long)ev->last_evaluated);
        ev_error(ev, epoch, "late", has_image, image_id, what);
        return NULL;
    }
    _Static_assert(EVALUATOR_EPOCHS == 2, "the message below names two open epochs");
    if (!free_slot) {
        ev->counts.busy++;
        snprintf(what, sizeof what, "arrived while epochs %llu and %llu are still open (at most "
                                    "%d at once)", (unsigned long long)ev->slots[0].epoch,
                 (unsigned long long)ev->slots[1].epoch, EVALUATOR_EPOCHS);
        ev_error(ev, epoch, "busy", has_image, image_id, what);
        return NULL;
    }
    free_slot->open = 1, free_slot->epoch = epoch;
    return free_slot;
}

/* Evaluates and publishes the epoch if all its images and its epoch_end are in. */
static void ev_maybe_evaluate(Evaluator *ev, EpochSlot *s)
{
    if (!s->end_seen || s->n_seen < ev->gt.n_images) return;
    Err err;
    int complete = coco_eval_check_complete(s->ce, &err) == 0;
    ASSERT(complete); /* seen mirrors CocoEval's delivered flags */
    CocoEvalResult res;
    double t0 = ev_clock();
    coco_eval_run(s->ce, &res);
    double eval_s = ev_clock() - t0;
    ev_publish_metrics(ev, s->epoch, &res, eval_s);
    log_info("evaluator: epoch %llu: AP %.4f AP50 %.4f (%zu images, %zu detections, %.3f s)",
             (unsigned long long)s->epoch, res.stats[0], res.stats[1], ev->gt.n_images, res.n_dets,
             eval_s);
    coco_eval_result_free(&res);
    ev->counts.evaluated++;
    if (!ev->any_evaluated || s->epoch > ev->last_evaluated) ev->last_evaluated = s->epoch;
    ev->any_evaluated = 1;
    ev_close(ev, s);
}

/* Publishes an "incomplete" report for s: how many images are missing and the first (lowest id)
 * of them. `when` says why now ("3 s after epoch_end", "at shutdown"). */
static void ev_report_incomplete(Evaluator *ev, EpochSlot *s, const char *when)
{
    char what[1100];
    Err err;
    int64_t first = 0;
    int any = 0;
    for (size_t i = 0; i < ev->gt.n_images; i++)
        if (!s->seen[i] && (!any || ev->gt.images[i].id < first))
            first = ev->gt.images[i].id, any = 1;
    if (coco_eval_check_complete(s->ce, &err) == 0)
        snprintf(err.msg, sizeof err.msg, "all %zu images arrived", ev->gt.n_images);
    snprintf(what, sizeof what, "%s %s%s", when, err.msg,
             s->end_seen ? "" : "; no epoch_end received");
    ev->counts.incomplete++;
    ev_error(ev, s->epoch, "incomplete", any, first, what);
}

/* ---- messages -------------------------------------------------------------------------------- */

/* Converts n rows of 6 float64 into ev->dets; a non-integral category id is an error. */
static int ev_convert_rows(Evaluator *ev, int64_t image_id, const void *bin, size_t n, Err *err)
{
    if (n > ev->cap_dets) {
        ev->cap_dets = n;
        ev->dets = realloc(ev->dets, n * sizeof *ev->dets);
        ASSERT(ev->dets);
    }
    for (size_t i = 0; i < n; i++) {
        double row[EVALUATOR_DET_FIELDS];
        memcpy(row, (const char *)bin + i * sizeof row, sizeof row); /* the bin is unaligned */
        double cat = row[5];
        if (!(cat >= -0x1p63 && cat < 0x1p63) || cat != floor(cat))
            return err_set(err, "detection %zu: category_id %g is not an integer", i, cat);
        ev->dets[i] = (CocoDetection){.image_id = image_id, .category_id = (int64_t)cat,
                                      .bbox = {row[0], row[1], row[2], row[3]}, .score = row[4]};
    }
    return 0;
}

static void ev_on_detections(Evaluator *ev, const WireMsg *m)
{
    uint64_t epoch;
    int64_t image_id;
    const void *bin;
    size_t len;
    Err err;
    char what[1100];
    const size_t row = EVALUATOR_DET_FIELDS * sizeof(double);
    if (wire_get_uint(&m->root, "epoch", &epoch, &err) ||
        wire_get_int(&m->root, "image_id", &image_id, &err) ||
        wire_get_bin(&m->root, "dets", &bin, &len, &err))
        return ev_malformed(ev, err.msg);
    /* An image the ground truth lacks is refused before it can open an epoch: a stray message
     * must not take one of the two slots. */
    int64_t idx = coco_dataset_image_index(&ev->gt, image_id);
    if (idx < 0) {
        ev->counts.rejected++;
        snprintf(what, sizeof what, "image %lld rejected: it is not in the ground truth",
                 (long long)image_id);
        return ev_error(ev, epoch, "rejected", 1, image_id, what);
    }
    EpochSlot *s = ev_slot(ev, epoch, 1, image_id);
    if (!s) return;
    if (s->seen[idx]) {
        ev->counts.duplicates++;
        snprintf(what, sizeof what, "image %lld delivered twice; the second delivery (%zu "
                                    "detections) is not counted", (long long)image_id, len / row);
        return ev_error(ev, epoch, "duplicate", 1, image_id, what);
    }
    if (len % row) {
        wire_fail(&m->root, "dets", &err, "is %zu bytes, expected a multiple of %zu", len, row);
    } else if (ev_convert_rows(ev, image_id, bin, len / row, &err) == 0 &&
               coco_eval_add_image(s->ce, image_id, ev->dets, len / row, &err) == 0) {
        s->seen[idx] = 1;
        s->n_seen++;
        ev->counts.images++;
        return ev_maybe_evaluate(ev, s);
    }
    ev->counts.rejected++;
    snprintf(what, sizeof what, "image %lld rejected: %s", (long long)image_id, err.msg);
    ev_error(ev, epoch, "rejected", 1, image_id, what);
}

static void ev_on_epoch_end(Evaluator *ev, const WireMsg *m, double now)
{
    uint64_t epoch, images;
    Err err;
    char what[256];
    if (wire_get_uint(&m->root, "epoch", &epoch, &err) ||
        wire_get_uint(&m->root, "images", &images, &err))
        return ev_malformed(ev, err.msg);
    EpochSlot *s = ev_slot(ev, epoch, 0, 0);
    if (!s) return;
    if (s->end_seen) {
        ev->counts.duplicates++;
        return ev_error(ev, epoch, "duplicate", 0, 0, "epoch_end received twice");
    }
    if (images != ev->gt.n_images) {
        snprintf(what, sizeof what, "epoch_end announces %llu images, the ground truth has %zu; "
                                    "waiting for all of the ground truth's",
                 (unsigned long long)images, ev->gt.n_images);
        ev_error(ev, epoch, "count", 0, 0, what);
    }
    s->end_seen = 1;
    s->deadline = now + ev->timeout_s;
    ev_maybe_evaluate(ev, s);
}

int evaluator_handle(Evaluator *ev, const void *msg, size_t len, double now)
{
    WireMsg m;
    Err err;
    ev->counts.messages++;
    wire_msg_init(&m);
    int rc = 0;
    if (wire_decode(&m, msg, len, &ev->lim, &err)) {
        ev_malformed(ev, err.msg);
    } else if (!strcmp(m.type, "detections")) {
        ev_on_detections(ev, &m);
    } else if (!strcmp(m.type, "epoch_end")) {
        ev_on_epoch_end(ev, &m, now);
    } else if (!strcmp(m.type, "shutdown")) {
        rc = EVALUATOR_SHUTDOWN;
    } else {
        snprintf(err.msg, sizeof err.msg, "message '%s': not a type the evaluator receives "
                                          "(detections, epoch_end, shutdown)", m.type);
        ev_malformed(ev, err.msg);
    }
    wire_msg_free(&m);
    return rc;
}

double evaluator_next_deadline(const Evaluator *ev)
{
    double t = INFINITY;
    for (int i = 0; i < EVALUATOR_EPOCHS; i++)
        if (ev->slots[i].open && ev->slots[i].end_seen && ev->slots[i].deadline < t)
            t = ev->slots[i].deadline;
    return t;
}

void evaluator_tick(Evaluator *ev, double now)
{
    char when[64];
    for (int i = 0; i < EVALUATOR_EPOCHS; i++) {
        EpochSlot *s = &ev->slots[i];
        if (!s->open || !s->end_seen || now < s->deadline) continue;
        snprintf(when, sizeof when, "%g s after epoch_end:", ev->timeout_s);
        ev_report_incomplete(ev, s, when);
        s->deadline = now + ev->timeout_s; /* keep waiting: re-issued images may still come */
    }
}

void evaluator_finish(Evaluator *ev)
{
    for (int i = 0; i < EVALUATOR_EPOCHS; i++)
        if (ev->slots[i].open) ev_report_incomplete(ev, &ev->slots[i], "at shutdown:");
}

/* ---- the process ----------------------------------------------------------------------------- */

enum {
    EV_SEND_TIMEOUT_MS = 5000, /* a coordinator that reads nothing for this long: log and go on */
    EV_LINGER_MS = 2000,       /* at exit, time for the last reports to reach the coordinator */
    EV_BATCH = 256,            /* messages handled per wakeup before deadlines are checked */
};

static int ev_publish_zmq(void *ctx, const void *msg, size_t len)
{
    Err err;
    int rc = zmq_util_send(ctx, msg, len, EV_SEND_TIMEOUT_MS, &err);
    if (rc == 0) return 0;
    if (rc == ZMQ_UTIL_AGAIN)
        snprintf(err.msg, sizeof err.msg, "%s: not sent: no room after %d ms",
                 ((ZmqSocket *)ctx)->endpoint, EV_SEND_TIMEOUT_MS);
    else if (rc == ZMQ_UTIL_TERM)
        snprintf(err.msg, sizeof err.msg, "%s: not sent: shutting down",
                 ((ZmqSocket *)ctx)->endpoint);
    log_error("evaluator: publishing: %s", err.msg);
    return -1;
}

/* Milliseconds until deadline for zmq_poll: -1 for none, 0 when due. */
static int ev_poll_timeout(double deadline, double now)
{
    if (isinf(deadline)) return -1;
    double ms = ceil((deadline - now) * 1e3);
    return ms <= 0 ? 0 : ms > 3600e3 ? 3600000 : (int)ms;
}

/* Receives and handles messages until shutdown, a stop signal, or a socket error. */
static int ev_loop(Evaluator *ev, ZmqSocket *in, int stop_fd, Err *err)
{
    for (;;) {
        int ready, rc = zmq_util_poll(in, ZMQ_POLLIN, stop_fd,
                                      ev_poll_timeout(evaluator_next_deadline(ev), ev_clock()),
                                      &ready, err);
        if (rc < 0) return -1;
        if (rc == ZMQ_UTIL_TERM || (ready & ZMQ_UTIL_FD_READY)) {
            log_info("evaluator: stop requested");
            return 0;
        }
        for (int k = 0; k < EV_BATCH && (ready & ZMQ_UTIL_SOCKET_READY); k++) {
            zmq_msg_t msg;
            int got = zmq_util_recv(in, &msg, 0, err), handled = 0;
            if (got == 0)
                handled = evaluator_handle(ev, zmq_msg_data(&msg), zmq_msg_size(&msg), ev_clock());
            else if (got == ZMQ_UTIL_MULTIPART)
                ev_malformed(ev, err->msg);
            else
                ready = 0; /* drained (AGAIN), terminating (TERM: the poll says so next), or -1 */
            if (zmq_msg_close(&msg) != 0) log_error("evaluator: zmq_msg_close failed");
            if (got < 0) return -1;
            if (handled == EVALUATOR_SHUTDOWN) {
                log_info("evaluator: shutdown message");
                return 0;
            }
        }
        evaluator_tick(ev, ev_clock());
    }
}

int evaluator_run(const EvaluatorConfig *cfg, int stop_fd, Err *err)
{
    CocoDataset gt;
    ZmqSocket in = {0}, out = {0};
    ZmqSocketConfig in_cfg = {ZMQ_PULL, (int64_t)cfg->limits.max_msg_bytes, 0, 0};
    ZmqSocketConfig out_cfg = {ZMQ_PUSH, (int64_t)cfg->limits.max_msg_bytes, EV_LINGER_MS, 0};
    if (coco_dataset_load(&gt, cfg->gt_path, err)) return -1;
    void *ctx = zmq_util_ctx_new(err);
    int rc = -1;
    Evaluator *ev = NULL;
    if (!ctx || zmq_util_bind(&in, ctx, &in_cfg, cfg->listen, err) ||
        zmq_util_connect(&out, ctx, &out_cfg, cfg->publish, err))
        goto done;
    log_info("evaluator: %zu images, %zu categories; listening on %s, publishing to %s",
             gt.n_images, gt.n_categories, cfg->listen, cfg->publish);
    ev = evaluator_create(&gt, cfg->timeout_s, &cfg->limits, ev_publish_zmq, &out);
    evaluator_announce(ev);
    rc = ev_loop(ev, &in, stop_fd, err);
    evaluator_finish(ev);
    const EvaluatorCounts *c = evaluator_counts(ev);
    log_info("evaluator: %llu messages, %llu images, %llu epochs evaluated, %llu malformed, "
             "%llu duplicates, %llu rejected, %llu late, %llu busy, %llu publish failures",
             (unsigned long long)c->messages, (unsigned long long)c->images,
             (unsigned long long)c->evaluated, (unsigned long long)c->malformed,
             (unsigned long long)c->duplicates, (unsigned long long)c->rejected,
             (unsigned long long)c->late, (unsigned long long)c->busy,
             (unsigned long long)c->publish_failed);
done:
    evaluator_free(ev);
    coco_dataset_free(&gt);
    zmq_util_close(&in);
    zmq_util_close(&out); /* lingers up to EV_LINGER_MS to deliver the last reports */
    zmq_util_ctx_term(ctx);
    return rc;
}
