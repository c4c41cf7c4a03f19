/* coord_messages.c: what the children tell the coordinator (coordinator.h lists the messages):
 * progress for the run log, epoch ends that queue evaluations, the evaluator's metrics and the
 * best snapshot, liveness, and the per-epoch sample accounting. A message that cannot be decoded
 * is logged and dropped: a child's bug must not stop the run. */
#include "coordinator/coord_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/wire.h"

/* ---- evaluation jobs ------------------------------------------------------------------------ */

void coord__eval_dispatch(Coord *c)
{
    if (c->state != COORD_RUNNING && c->state != COORD_FINISHING) return;
    if (!c->q_len || c->eval_phase != EVAL_IDLE || !c->evaluator_ready) return;
    CoordProc *p = coord__find(c, PROC_EVAL_WORKER, 0);
    if (!p || p->pid > 0) return;
    if (coord__spawn(c, p) == 0) c->eval_phase = EVAL_RUNNING;
}

/* The evaluator was restarted: the job in flight starts again from its snapshot once the new
 * evaluator is ready (its detections so far died with the old one). */
void coord__eval_restart(Coord *c)
{
    CoordProc *p = coord__find(c, PROC_EVAL_WORKER, 0);
    if (p && p->pid > 0) coord__kill(c, p, SIGKILL); /* its exit resets the phase */
    else c->eval_phase = EVAL_IDLE;
}

static void queue_eval(Coord *c, long epoch, long step, const char *snapshot, size_t len)
{
    if (epoch <= c->last_queued_epoch) return; /* replayed after a worker restart: same snapshot */
    if (c->q_len == COORD_EVAL_QUEUE || len >= COORD_PATH_CAP) {
        log_warn("epoch %ld: evaluation skipped (%s)", epoch,
                 len >= COORD_PATH_CAP ? "snapshot path too long" : "too many evaluations waiting");
        return;
    }
    CoordEvalJob *j = &c->queue[(c->q_head + c->q_len++) % COORD_EVAL_QUEUE];
    j->epoch = epoch, j->step = step;
    memcpy(j->snapshot, snapshot, len);
    j->snapshot[len] = 0;
    c->last_queued_epoch = epoch;
    coord__eval_dispatch(c);
}

/* The best snapshot becomes model_best (rename: a reader never sees half a file); the others
 * are removed. */
static void keep_best(Coord *c, const CoordEvalJob *j, double map)
{
    char best[COORD_PATH_CAP + 32];
    snprintf(best, sizeof best, "%s/model_best.safetensors", c->cfg.output);
    if (map > c->best_map) {
        c->best_map = map;
        c->res->best_epoch = j->epoch;
        if (rename(j->snapshot, best) != 0) log_warn("%s -> %s: %s", j->snapshot, best, strerror(errno));
    } else if (unlink(j->snapshot) != 0 && errno != ENOENT) {
        log_warn("%s: %s", j->snapshot, strerror(errno));
    }
}

static void on_metrics(Coord *c, const WireMap *m)
{
    Err err;
    uint64_t epoch;
    double stats[12];
    if (wire_get_uint(m, "epoch", &epoch, &err) != 0 || wire_get_f64_array(m, "stats", stats, 12, &err) != 0) {
        log_warn("evaluator: %s", err.msg);
        return;
    }
    if (!c->q_len || c->queue[c->q_head].epoch != (long)epoch) {
        log_warn("evaluator: metrics of epoch %llu, which is not the one being evaluated",
                 (unsigned long long)epoch);
        return;
    }
    CoordEvalJob *j = &c->queue[c->q_head];
    if (c->cfg.log && run_log_eval(c->cfg.log, j->epoch, j->step, stats, &err) != 0) log_warn("%s", err.msg);
    keep_best(c, j, stats[0]);
    c->q_head = (c->q_head + 1) % COORD_EVAL_QUEUE, c->q_len--;
    c->eval_phase = EVAL_IDLE;
    coord__eval_dispatch(c);
    coord__advance(c);
}

static void on_evaluator_error(Coord *c, const WireMap *m)
{
    const char *kind = "", *what = "";
    size_t kl = 0, wl = 0;
    Err err;
    if (wire_get_str(m, "kind", &kind, &kl, &err) != 0 || wire_get_str(m, "what", &what, &wl, &err) != 0) {
        log_warn("evaluator: %s", err.msg);
        return;
    }
    log_warn("evaluator: %.*s: %.*s", (int)kl, kind, (int)wl, what);
    /* Images that never came: run the job again on a fresh evaluator. */
    if (kl == 10 && !memcmp(kind, "incomplete", 10) && c->eval_phase == EVAL_SENT) {
        CoordProc *ev = coord__find(c, PROC_EVALUATOR, 0);
        if (ev && ev->pid > 0) kill(ev->pid, SIGKILL); /* handled as a death: restart + rerun */
    }
}

/* ---- sample accounting ---------------------------------------------------------------------- */

int coord__tally_init(Coord *c)
{
    int w = c->cfg.count[PROC_WORKER];
    c->last_recorded = malloc((size_t)(w ? w : 1) * sizeof(long));
    for (int i = 0; i < 2; i++) {
        c->tally[i].epoch = -1;
        c->tally[i].seen = calloc((size_t)(c->cfg.n_images ? c->cfg.n_images : 1), 1);
        c->tally[i].next_b = malloc((size_t)(w ? w : 1) * sizeof(long));
        if (!c->tally[i].seen || !c->tally[i].next_b) return err_set(c->err, "coordinator: out of memory");
    }
    if (!c->last_recorded) return err_set(c->err, "coordinator: out of memory");
    for (int r = 0; r < w; r++) c->last_recorded[r] = c->cfg.first_step - 1;
    return 0;
}

void coord__tally_free(Coord *c)
{
    for (int i = 0; i < 2; i++) free(c->tally[i].seen), free(c->tally[i].next_b);
    free(c->last_recorded);
}

static CoordEpochTally *tally_for(Coord *c, long epoch)
{
    CoordEpochTally *t = &c->tally[epoch % 2];
    if (t->epoch == epoch) return t;
    if (t->epoch >= 0 && t->ranks_done < c->cfg.count[PROC_WORKER])
        log_warn("epoch %ld: its sample count was never completed", t->epoch + 1);
    memset(t->seen, 0, (size_t)c->cfg.n_images);
    t->epoch = epoch, t->images = t->twice = t->replaced = 0, t->ranks_done = 0;
    /* A resumed run starts mid-epoch: that epoch's earlier batches were counted by another run. */
    long first_b = epoch * c->cfg.steps_per_epoch < c->cfg.first_step
                       ? c->cfg.first_step - epoch * c->cfg.steps_per_epoch : 0;
    for (int r = 0; r < c->cfg.count[PROC_WORKER]; r++) t->next_b[r] = first_b ? -1 : 0;
    return t;
}

static void tally_batch(Coord *c, int rank, long epoch, long b, const int64_t *idx, size_t n,
                        long replaced)
{
    long linear = epoch * c->cfg.steps_per_epoch + b;
    if (linear <= c->last_recorded[rank]) return; /* replayed after a restart */
    c->last_recorded[rank] = linear;
    CoordEpochTally *t = tally_for(c, epoch);
    if (t->next_b[rank] >= 0) t->next_b[rank] = t->next_b[rank] == b ? b + 1 : -1;
    for (size_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= c->cfg.n_images) continue;
        if (t->seen[idx[i]]++) t->twice++;
        else t->images++;
    }
    t->replaced += replaced;
    if (b != c->cfg.steps_per_epoch - 1 || ++t->ranks_done < c->cfg.count[PROC_WORKER]) return;
    int complete = 1;
    for (int r = 0; r < c->cfg.count[PROC_WORKER]; r++) complete &= t->next_b[r] == c->cfg.steps_per_epoch;
    if (!complete) {
        run_log_line(c->cfg.log, "epoch %ld: %ld images (the epoch started before this run)", epoch + 1, t->images);
    } else if (t->twice == 0 && t->images + t->replaced == c->cfg.n_images) {
        c->res->epochs_checked++;
        run_log_line(c->cfg.log, "epoch %ld: %ld images trained, each once%s", epoch + 1, t->images,
                     t->replaced ? " (unreadable ones replaced)" : "");
    } else {
        log_error("epoch %ld: sample count wrong: %ld distinct images of %ld, %ld twice, %ld replaced",
                  epoch + 1, t->images, c->cfg.n_images, t->twice, t->replaced);
    }
}

/* ---- messages ------------------------------------------------------------------------------- */

static void fire_faults(Coord *c, long step)
{
    for (int i = 0; i < c->n_faults; i++) {
        CoordFault *f = &c->faults[i];
        if (f->fired || step < f->step) continue;
        CoordProc *p = coord__find_name(c, f->name, strlen(f->name));
        if (!p || p->pid <= 0) continue;
        f->fired = 1;
        log_warn("--fault: SIGKILL to %s (pid %d) at step %ld", p->name, (int)p->pid, step);
        kill(p->pid, SIGKILL);
    }
}

static void log_step(Coord *c, CoordProc *p, const WireMap *m, long step, long epoch);

static void on_step(Coord *c, CoordProc *p, const WireMap *m)
{
    Err err;
    uint64_t step, epoch, b, replaced = 0;
    const void *idx = NULL;
    size_t idx_len = 0;
    if (wire_get_uint(m, "step", &step, &err) || wire_get_uint(m, "epoch", &epoch, &err) ||
        wire_get_uint(m, "b", &b, &err) || wire_get_bin(m, "indices", &idx, &idx_len, &err) ||
        wire_get_uint(m, "replaced", &replaced, &err)) {
        log_warn("%s: %s", p->name, err.msg);
        return;
    }
    if (idx_len % sizeof(int64_t)) return;
    int64_t buf[1024];
    size_t n = idx_len / sizeof(int64_t);
    if (n > 1024) n = 1024;
    memcpy(buf, idx, n * sizeof(int64_t)); /* the bin is not aligned */
    if (p->index == 0) log_step(c, p, m, (long)step, (long)epoch);
    tally_batch(c, p->index, (long)epoch, (long)b, buf, n, (long)replaced);
    if (p->index == 0) fire_faults(c, (long)step);
}

/* Rank 0's step: the progress line (every rank trains on the same weights). */
static void log_step(Coord *c, CoordProc *p, const WireMap *m, long step, long epoch)
{
    Err err;
    double v[5];
    static const char *keys[5] = {"loss", "class_loss", "box_loss", "lr", "img_s"};
    for (int i = 0; i < 5; i++)
        if (wire_get_f64(m, keys[i], &v[i], &err) != 0) {
            log_warn("%s: %s", p->name, err.msg);
            return;
        }
    if (step > c->last_step) {
        c->last_step = step;
        if (c->cfg.log && run_log_step(c->cfg.log, epoch, step, v[0], v[1], v[2], v[3], v[4], &err) != 0)
            log_warn("%s", err.msg);
    }
}

static void on_worker(Coord *c, CoordProc *p, const WireMsg *msg)
{
    const WireMap *m = &msg->root;
    Err err;
    if (!strcmp(msg->type, "step")) {
        on_step(c, p, m);
    } else if (!strcmp(msg->type, "epoch_end")) {
        uint64_t epoch, step;
        const char *snap;
        size_t len;
        if (wire_get_uint(m, "epoch", &epoch, &err) || wire_get_uint(m, "step", &step, &err) ||
            wire_get_str(m, "snapshot", &snap, &len, &err)) {
            log_warn("%s: %s", p->name, err.msg);
            return;
        }
        if (len) queue_eval(c, (long)epoch, (long)step, snap, len);
    } else if (!strcmp(msg->type, "error")) {
        const char *what;
        size_t len;
        if (wire_get_str(m, "what", &what, &len, &err) == 0 && !c->reported[0])
            snprintf(c->reported, sizeof c->reported, "%s: %.*s", p->name, (int)len, what);
    }
    /* hello, done, stopped: liveness only (exits tell the rest) */
}

static void handle(Coord *c, const void *data, size_t len)
{
    WireLimits lim = wire_limits_default();
    WireMsg msg;
    Err err;
    wire_msg_init(&msg);
    if (wire_decode(&msg, data, len, &lim, &err) != 0) {
        log_warn("coordinator: a malformed message: %s", err.msg);
        wire_msg_free(&msg);
        return;
    }
    const WireMap *m = &msg.root;
    CoordProc *p = NULL;
    uint64_t rank;
    const char *name;
    size_t nlen;
    if (!strcmp(msg.type, "stage_report")) {
        if (wire_get_str(m, "name", &name, &nlen, &err) == 0) p = coord__find_name(c, name, nlen);
    } else if (!strcmp(msg.type, "ready") || !strcmp(msg.type, "metrics") || wire_has(m, "kind")) {
        p = coord__find(c, PROC_EVALUATOR, 0);
    } else if (wire_has(m, "rank") && wire_get_uint(m, "rank", &rank, &err) == 0) {
        p = coord__find(c, PROC_WORKER, (int)rank);
    } else {
        p = coord__find(c, PROC_EVAL_WORKER, 0);
    }
    if (!p) {
        log_warn("coordinator: message '%s' from an unknown sender", msg.type);
        wire_msg_free(&msg);
        return;
    }
    p->last_heard = coord__now(c);
    if (p->role == PROC_WORKER) {
        on_worker(c, p, &msg);
    } else if (p->role == PROC_EVALUATOR) {
        if (!strcmp(msg.type, "ready")) {
            c->evaluator_ready = 1;
            coord__eval_dispatch(c);
        } else if (!strcmp(msg.type, "metrics")) {
            on_metrics(c, m);
        } else if (!strcmp(msg.type, "error")) {
            on_evaluator_error(c, m);
        }
    } else if (p->role == PROC_EVAL_WORKER && !strcmp(msg.type, "error")) {
        if (wire_get_str(m, "what", &name, &nlen, &err) == 0 && !c->reported[0])
            snprintf(c->reported, sizeof c->reported, "%.*s", (int)nlen, name);
    }
    wire_msg_free(&msg);
}

/* ZMQ_FD is edge-triggered: read until ZMQ_EVENTS says nothing is left. */
void coord__drain(Coord *c)
{
    for (;;) {
        int events = 0;
        size_t elen = sizeof events;
        if (!c->pull.sock || zmq_getsockopt(c->pull.sock, ZMQ_EVENTS, &events, &elen) != 0) return;
        if (!(events & ZMQ_POLLIN)) return;
        zmq_msg_t msg;
        Err err;
        int rc = zmq_util_recv(&c->pull, &msg, 0, &err);
        if (rc == 0) handle(c, zmq_msg_data(&msg), zmq_msg_size(&msg));
        else if (rc < 0) log_warn("%s", err.msg);
        zmq_msg_close(&msg);
        if (rc == ZMQ_UTIL_AGAIN || rc == ZMQ_UTIL_TERM || rc < 0) return;
    }
}
