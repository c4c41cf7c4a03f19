/* coordinator.c: processes, signals and the libuv loop of the coordinator (coordinator.h has the
 * design; coord_messages.c handles what the children say). */
#include "coordinator/coord_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/wire.h"

enum { TICK_MS = 200 };
static const double STOP_GRACE_S = 60, DRAIN_GRACE_S = 10;

const char *proc_role_name(ProcRole r)
{
    static const char *names[PROC_ROLES] = {"loader", "augment", "worker", "evaluator", "eval"};
    return r < PROC_ROLES ? names[r] : "?";
}

double coord__now(Coord *c)
{
    uv_update_time(&c->loop);
    return (double)uv_now(&c->loop) / 1000.0;
}

CoordProc *coord__find(Coord *c, ProcRole role, int index)
{
    for (int i = 0; i < c->n_procs; i++)
        if (c->procs[i].role == role && c->procs[i].index == index) return &c->procs[i];
    return NULL;
}

CoordProc *coord__find_name(Coord *c, const char *name, size_t len)
{
    for (int i = 0; i < c->n_procs; i++)
        if (strlen(c->procs[i].name) == len && !memcmp(c->procs[i].name, name, len)) return &c->procs[i];
    return NULL;
}

int coord__alive(const Coord *c, ProcRole role)
{
    int n = 0;
    for (int i = 0; i < c->n_procs; i++) n += c->procs[i].role == role && c->procs[i].pid > 0;
    return n;
}

static int children_alive(const Coord *c)
{
    int n = 0;
    for (int i = 0; i < c->n_procs; i++) n += c->procs[i].pid > 0;
    return n;
}

void coord__kill(Coord *c, CoordProc *p, int sig)
{
    if (p->pid <= 0) return;
    p->expected_exit = 1;
    if (kill(p->pid, sig) != 0 && errno != ESRCH) log_warn("kill %s (pid %d): %s", p->name, (int)p->pid, strerror(errno));
}

static void kill_role(Coord *c, ProcRole role, int sig)
{
    for (int i = 0; i < c->n_procs; i++)
        if (c->procs[i].role == role) coord__kill(c, &c->procs[i], sig);
}

/* child_spawn (shared/child.h says why not uv_spawn) with the command line argv_for gives. */
int coord__spawn(Coord *c, CoordProc *p)
{
    ArgvBuf *a = malloc(sizeof *a);
    if (!a) {
        coord__fail(c, "%s: out of memory for its command line", p->name);
        return -1;
    }
    argv_buf_init(a);
    CoordSpawn sp = {.generation = c->generation, .comm = c->comm};
    if (p->role == PROC_EVAL_WORKER && c->q_len) {
        sp.eval_epoch = c->queue[c->q_head].epoch;
        sp.snapshot = c->queue[c->q_head].snapshot;
    }
    Err err;
    pid_t pid = -1;
    if (c->cfg.argv_for(c->cfg.app, p->role, p->index, &sp, a, &err) != 0 || a->full || !a->argc)
        coord__fail(c, "%s: %s", p->name, a->full ? "command line too long" : err.msg);
    else if ((pid = child_spawn(a->argv, &err)) < 0)
        coord__fail(c, "%s: %s", p->name, err.msg);
    else
        log_debug("started %s (pid %d): %s", p->name, (int)pid, a->argv[0]);
    free(a);
    if (pid < 0) return -1;
    p->pid = pid;
    p->last_heard = 0;
    p->started = coord__now(c);
    p->expected_exit = 0;
    p->done = 0;
    return 0;
}

void coord__fail(Coord *c, const char *fmt, ...)
{
    if (!c->failed) {
        char what[sizeof c->err->msg];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        if (c->first_cause[0]) snprintf(c->err->msg, sizeof c->err->msg, "%s (first failure: %s)", what, c->first_cause);
        else snprintf(c->err->msg, sizeof c->err->msg, "%s", what);
        c->failed = 1; /* the caller prints it once everything has stopped */
    }
    if (c->state != COORD_DRAINING) {
        c->state = COORD_DRAINING;
        c->stop_deadline = coord__now(c) + DRAIN_GRACE_S;
        for (int i = 0; i < c->n_procs; i++) coord__kill(c, &c->procs[i], SIGTERM);
    }
    coord__advance(c);
}

static void comm_name(Coord *c)
{
    snprintf(c->comm, sizeof c->comm, "/effdet-%d-comm%d", (int)getpid(), c->generation);
}

static void start_workers(Coord *c)
{
    shm_unlink(c->comm); /* the previous generation's, if any */
    comm_name(c);
    shm_unlink(c->comm);
    for (int r = 0; r < c->cfg.count[PROC_WORKER]; r++)
        if (coord__spawn(c, coord__find(c, PROC_WORKER, r)) != 0) return;
}

/* Stops the data stages and the evaluator (the workers are gone or finishing). */
static void drain_rest(Coord *c)
{
    c->state = COORD_DRAINING;
    c->stop_deadline = coord__now(c) + DRAIN_GRACE_S;
    for (int i = 0; i < c->n_procs; i++) coord__kill(c, &c->procs[i], SIGTERM);
}

void coord__advance(Coord *c)
{
    switch (c->state) {
    case COORD_RESTARTING:
        if (coord__alive(c, PROC_WORKER)) return;
        c->generation++;
        c->res->worker_restarts++;
        log_warn("restarting the %d worker%s from the last checkpoint of %s (restart %d of %d)",
                 c->cfg.count[PROC_WORKER], c->cfg.count[PROC_WORKER] > 1 ? "s" : "", c->cfg.output,
                 c->generation, c->cfg.max_restarts);
        c->state = COORD_RUNNING;
        start_workers(c);
        return;
    case COORD_RUNNING: {
        int done = 0;
        for (int r = 0; r < c->cfg.count[PROC_WORKER]; r++) done += coord__find(c, PROC_WORKER, r)->done;
        if (done < c->cfg.count[PROC_WORKER]) return;
        c->state = COORD_FINISHING;
    } /* fall through */
    case COORD_FINISHING:
        coord__eval_dispatch(c);
        if (c->q_len) return;
        drain_rest(c);
        break;
    case COORD_STOPPING:
        if (coord__alive(c, PROC_WORKER)) return;
        drain_rest(c);
        break;
    case COORD_DRAINING:
        break;
    }
    if (!children_alive(c)) uv_stop(&c->loop);
}

/* A data stage or the evaluator died while the run goes on: start it again. */
static void restart_service(Coord *c, CoordProc *p, const char *how)
{
    if (p->restarts >= c->cfg.stage_max_restarts) {
        coord__fail(c, "%s %s, restarted %d times already", p->name, how, p->restarts);
        return;
    }
    p->restarts++;
    c->res->stage_restarts++;
    log_warn("%s %s: restarting it (%d of %d)", p->name, how, p->restarts, c->cfg.stage_max_restarts);
    if (p->role == PROC_EVALUATOR) c->evaluator_ready = 0;
    if (coord__spawn(c, p) != 0) return;
    if (p->role == PROC_EVALUATOR) coord__eval_restart(c);
}

static void worker_failed(Coord *c, CoordProc *p, const char *how, int status_1)
{
    if (status_1) {
        if (c->reported[0]) coord__fail(c, "%s", c->reported);
        else coord__fail(c, "%s %s", p->name, how);
        return;
    }
    if (c->generation >= c->cfg.max_restarts) {
        coord__fail(c, "%s %s, and the workers were restarted %d times already (--max-restarts)",
                    p->name, how, c->generation);
        return;
    }
    if (!c->first_cause[0]) snprintf(c->first_cause, sizeof c->first_cause, "%s %s", p->name, how);
    log_warn("%s %s: stopping the other workers", p->name, how);
    c->state = COORD_RESTARTING;
    kill_role(c, PROC_WORKER, SIGKILL);
}

static void on_exit_status(Coord *c, CoordProc *p, int st)
{
    char how[96];
    if (WIFEXITED(st)) snprintf(how, sizeof how, "exited with status %d", WEXITSTATUS(st));
    else snprintf(how, sizeof how, "was killed by signal %d", WTERMSIG(st));
    int clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    int expected = p->expected_exit;
    p->pid = 0;
    log_debug("%s %s", p->name, how);
    if (p->role == PROC_WORKER && clean && c->state != COORD_RESTARTING) p->done = 1;
    if (c->state == COORD_DRAINING || c->state == COORD_STOPPING) return;
    switch (p->role) {
    case PROC_WORKER:
        if (clean || c->state == COORD_RESTARTING || c->state == COORD_FINISHING) break;
        worker_failed(c, p, how, WIFEXITED(st) && WEXITSTATUS(st) == 1);
        break;
    case PROC_EVAL_WORKER:
        if (clean && c->eval_phase == EVAL_RUNNING) {
            c->eval_phase = EVAL_SENT; /* its metrics come from the evaluator */
            break;
        }
        c->eval_phase = EVAL_IDLE;
        if (clean || expected) { /* stopped by coord__eval_restart: dispatch starts it again */
            coord__eval_dispatch(c);
            break;
        }
        if (WIFEXITED(st) && WEXITSTATUS(st) == 1) {
            coord__fail(c, "the evaluation of epoch %ld: %s", c->queue[c->q_head].epoch,
                        c->reported[0] ? c->reported : how);
            break;
        }
        /* Its detections are half sent: the evaluator starts afresh as well. */
        restart_service(c, coord__find(c, PROC_EVALUATOR, 0), "lost its evaluation job");
        break;
    default:
        if (expected && c->state == COORD_FINISHING) break;
        restart_service(c, p, how);
        break;
    }
}

static void on_sigchld(uv_signal_t *h, int signum)
{
    Coord *c = h->data;
    for (int i = 0; i < c->n_procs; i++) {
        CoordProc *p = &c->procs[i];
        if (p->pid <= 0) continue;
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) on_exit_status(c, p, st);
        else if (r < 0 && errno == ECHILD) p->pid = 0;
    }
    coord__drain(c); /* what a child said just before it exited */
    coord__advance(c);
}

static void on_stop_signal(uv_signal_t *h, int signum)
{
    Coord *c = h->data;
    c->signals++;
    c->res->interrupted = 1;
    if (c->signals > 1) {
        log_warn("second %s: killing every process now", signum == SIGINT ? "SIGINT" : "SIGTERM");
        for (int i = 0; i < c->n_procs; i++) coord__kill(c, &c->procs[i], SIGKILL);
        c->state = COORD_DRAINING;
        coord__advance(c);
        return;
    }
    if (c->state == COORD_DRAINING) return;
    log_info("%s: the workers write a checkpoint and stop (again: stop at once)",
             signum == SIGINT ? "SIGINT" : "SIGTERM");
    c->state = COORD_STOPPING;
    c->stop_deadline = coord__now(c) + STOP_GRACE_S;
    kill_role(c, PROC_WORKER, SIGINT);
    kill_role(c, PROC_EVAL_WORKER, SIGTERM);
    coord__advance(c);
}

/* Hung processes, and the grace periods of stopping. */
static void on_tick(uv_timer_t *h)
{
    Coord *c = h->data;
    coord__drain(c);
    double now = coord__now(c);
    if ((c->state == COORD_STOPPING || c->state == COORD_DRAINING) && now > c->stop_deadline) {
        for (int i = 0; i < c->n_procs; i++)
            if (c->procs[i].pid > 0) {
                log_warn("%s did not stop in time: killing it", c->procs[i].name);
                coord__kill(c, &c->procs[i], SIGKILL);
            }
        c->stop_deadline = now + DRAIN_GRACE_S;
        return;
    }
    if (c->state != COORD_RUNNING && c->state != COORD_FINISHING) return;
    for (int i = 0; i < c->n_procs; i++) {
        CoordProc *p = &c->procs[i];
        /* The evaluator speaks only when it has metrics: its silence between epochs is normal. */
        if (p->pid <= 0 || p->expected_exit || p->role == PROC_EVAL_WORKER || p->role == PROC_EVALUATOR)
            continue;
        double limit = p->role == PROC_WORKER ? c->cfg.hang_s : c->cfg.stage_dead_s;
        double since = p->last_heard > 0 ? p->last_heard : p->started;
        /* Only what has spoken once is judged: a stage without reports is never called hung. */
        if (p->last_heard > 0 && now - since > limit) {
            log_warn("%s (pid %d) sent nothing for %.0f s: killing it as hung", p->name, (int)p->pid,
                     now - since);
            kill(p->pid, SIGKILL); /* not expected_exit: its exit is handled as a failure */
            p->last_heard = now;
        }
    }
}

static void on_zmq_readable(uv_poll_t *h, int status, int events)
{
    coord__drain(h->data);
}

static int parse_faults(Coord *c, const char *spec)
{
    while (spec && *spec) {
        const char *at = strchr(spec, '@'), *end = strchr(spec, ',');
        if (!end) end = spec + strlen(spec);
        if (!at || at > end || at == spec || (size_t)(at - spec) >= COORD_NAME_CAP || c->n_faults == COORD_MAX_FAULTS)
            return err_set(c->err, "--fault: '%s' is not NAME@STEP[,NAME@STEP...]", spec);
        CoordFault *f = &c->faults[c->n_faults++];
        memcpy(f->name, spec, (size_t)(at - spec));
        f->name[at - spec] = 0;
        char *num_end;
        f->step = strtol(at + 1, &num_end, 10);
        if (num_end != end || f->step < 0) return err_set(c->err, "--fault: bad step in '%s'", spec);
        if (!coord__find_name(c, f->name, strlen(f->name)))
            return err_set(c->err, "--fault: no process is called '%s'", f->name);
        spec = *end ? end + 1 : end;
    }
    return 0;
}

static void add_procs(Coord *c)
{
    static const char *prefix[PROC_ROLES] = {"loader", "aug", "worker", "evaluator", "eval"};
    for (int role = 0; role < PROC_ROLES; role++) {
        int n = role == PROC_EVAL_WORKER ? (c->cfg.count[PROC_EVALUATOR] ? 1 : 0) : c->cfg.count[role];
        for (int i = 0; i < n; i++) {
            CoordProc *p = &c->procs[c->n_procs++];
            memset(p, 0, sizeof *p);
            p->role = role, p->index = i;
            if (role == PROC_EVALUATOR || role == PROC_EVAL_WORKER) snprintf(p->name, sizeof p->name, "%s", prefix[role]);
            else snprintf(p->name, sizeof p->name, "%s%d", prefix[role], i);
        }
    }
}

static int open_loop(Coord *c)
{
    int rc = uv_loop_init(&c->loop);
    if (rc < 0) return err_set(c->err, "uv_loop_init: %s", uv_strerror(rc));
    uv_signal_t *sigs[3] = {&c->sig_int, &c->sig_term, &c->sig_chld};
    int nums[3] = {SIGINT, SIGTERM, SIGCHLD};
    for (int i = 0; i < 3; i++) {
        if ((rc = uv_signal_init(&c->loop, sigs[i])) < 0 ||
            (rc = uv_signal_start(sigs[i], i == 2 ? on_sigchld : on_stop_signal, nums[i])) < 0)
            return err_set(c->err, "uv_signal_start(%d): %s", nums[i], uv_strerror(rc));
        sigs[i]->data = c;
    }
    if ((rc = uv_timer_init(&c->loop, &c->tick)) < 0 || (rc = uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS)) < 0)
        return err_set(c->err, "uv_timer_start: %s", uv_strerror(rc));
    c->tick.data = c;
    if (!(c->zctx = zmq_util_ctx_new(c->err))) return -1;
    WireLimits lim = wire_limits_default();
    ZmqSocketConfig sc = {.type = ZMQ_PULL, .max_msg_bytes = (int64_t)lim.max_msg_bytes, .linger_ms = 0};
    if (zmq_util_bind(&c->pull, c->zctx, &sc, c->cfg.listen, c->err) != 0) return -1;
    int fd;
    size_t fdlen = sizeof fd;
    if (zmq_getsockopt(c->pull.sock, ZMQ_FD, &fd, &fdlen) != 0)
        return err_set(c->err, "%s: ZMQ_FD: %s", c->cfg.listen, zmq_strerror(errno));
    if ((rc = uv_poll_init(&c->loop, &c->zpoll, fd)) < 0 || (rc = uv_poll_start(&c->zpoll, UV_READABLE, on_zmq_readable)) < 0)
        return err_set(c->err, "uv_poll_start: %s", uv_strerror(rc));
    c->zpoll.data = c;
    return 0;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void close_loop(Coord *c)
{
    uv_walk(&c->loop, close_walk, NULL);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&c->loop);
    if (rc < 0) log_warn("uv_loop_close: %s", uv_strerror(rc));
    zmq_util_close(&c->pull);
    zmq_util_ctx_term(c->zctx);
}

/* Whatever happened, no child outlives the coordinator: a last SIGKILL and wait. */
static void reap_all(Coord *c)
{
    for (int i = 0; i < c->n_procs; i++) {
        CoordProc *p = &c->procs[i];
        if (p->pid <= 0) continue;
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
    for (int g = 0; g <= c->generation; g++) {
        char name[64];
        snprintf(name, sizeof name, "/effdet-%d-comm%d", (int)getpid(), g);
        shm_unlink(name);
    }
}

int coordinator_run(const CoordinatorConfig *cfg, CoordResult *res, Err *err)
{
    Coord *c = calloc(1, sizeof *c);
    if (!c) return err_set(err, "coordinator: out of memory");
    memset(res, 0, sizeof *res);
    res->best_map = -1, res->best_epoch = -1;
    err->msg[0] = 0;
    c->cfg = *cfg, c->res = res, c->err = err;
    c->best_map = -1, c->last_queued_epoch = 0, c->last_step = cfg->first_step;
    add_procs(c);
    int ok = parse_faults(c, cfg->fault) == 0 && coord__tally_init(c) == 0;
    int loop_open = 0;
    if (ok) ok = (loop_open = 1, open_loop(c) == 0);
    if (ok) {
        comm_name(c);
        shm_unlink(c->comm);
        for (int i = 0; i < c->n_procs && !c->failed; i++)
            if (c->procs[i].role != PROC_EVAL_WORKER && c->procs[i].role != PROC_WORKER) coord__spawn(c, &c->procs[i]);
        if (!c->failed) start_workers(c);
        uv_run(&c->loop, UV_RUN_DEFAULT);
    }
    reap_all(c);
    if (loop_open) close_loop(c);
    coord__tally_free(c);
    int failed = !ok || c->failed;
    res->last_step = c->last_step;
    res->best_map = c->best_map;
    free(c);
    return failed ? -1 : 0;
}
