/* stage_server.c: the producer side of the stage protocol (see stage.h for the design).
 *
 * The server never blocks: stage_server_pump reads what is waiting, stage_server_next hands the
 * oldest request of a live consumer to the caller when a slot is free. Requests are queued as
 * their raw message and decoded again when their work starts, so the queue holds no pointers into
 * freed decoder trees. Entries of a replaced consumer are not removed from the middle of the
 * queue: they are skipped when they reach its head (their incarnation no longer matches). */
#include "shared/stage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "shared/check.h"
#include "shared/log.h"

int64_t stage_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t stage_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

uint64_t stage_incarnation(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) {
        /* No entropy source: pid and time still differ between two starts of one process. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20);
    }
    return v ? v : 1;
}

/* ---- sending ------------------------------------------------------------------------------- */

/* One frame to routing id `id`. ROUTER drops what it cannot deliver (a consumer that is gone):
 * that consumer's replacement says hello and is served afresh, so a lost message costs nothing. */
static void send_to(StageServer *s, const uint8_t *id, size_t id_len, const char *who,
                    WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    Err err;
    if (zmq_util_router_send(&s->sock, id, id_len, data, len, &err) < 0)
        log_warn("stage %s: send to %s: %s", s->cfg.endpoint, who, err.msg);
}

static void server_send(StageServer *s, int ci, WireWriter *w)
{
    StageClientRec *c = &s->clients[ci];
    send_to(s, c->id, c->id_len, c->name, w);
    c->last_sent_ms = stage_now_ms();
}

/* A heartbeat to consumer ci, or (ci < 0) to a sender we do not know or that addressed another
 * incarnation: that tells a consumer its producer was restarted, so it says hello at once rather
 * than after dead_ms. */
static void server_hb(StageServer *s, int ci, const uint8_t *id, size_t id_len)
{
    WireWriter w;
    wire_writer_init(&w, "hb", 1);
    wire_put_uint(&w, "inc", s->inc);
    if (ci >= 0) server_send(s, ci, &w);
    else send_to(s, id, id_len, "an unknown consumer", &w);
    wire_writer_free(&w);
}

static void server_fail(StageServer *s, int ci, uint64_t key, const char *error)
{
    WireWriter w;
    wire_writer_init(&w, "fail", 3);
    wire_put_uint(&w, "inc", s->inc);
    wire_put_uint(&w, "key", key);
    wire_put_str(&w, "error", error);
    server_send(s, ci, &w);
    wire_writer_free(&w);
}

static void server_welcome(StageServer *s, int ci)
{
    WireWriter w;
    wire_writer_init(&w, "welcome", 4 + s->cfg.n_info);
    wire_put_uint(&w, "inc", s->inc);
    wire_put_str(&w, "segment", s->seg.name);
    wire_put_uint(&w, "slots", s->seg.n_slots);
    wire_put_uint(&w, "slot_bytes", s->seg.slot_bytes);
    if (s->cfg.n_info) s->cfg.put_info(s->cfg.app, &w);
    server_send(s, ci, &w);
    wire_writer_free(&w);
}

/* ---- consumers ----------------------------------------------------------------------------- */

static void slot_free(StageServer *s, uint32_t i)
{
    s->slot_state[i] = SLOT_FREE;
    s->slot_client[i] = -1;
    s->slot_inc[i] = 0;
}

/* Held slots of consumer ci come back; slots being worked on come back when the work ends
 * (stage_server_task_live tells the worker to stop early); queued requests are skipped. */
static void release_client(StageServer *s, int ci)
{
    for (uint32_t i = 0; i < s->seg.n_slots; i++)
        if (s->slot_client[i] == ci && s->slot_state[i] == SLOT_HELD) slot_free(s, i);
    s->n_released += s->clients[ci].live;
    s->clients[ci].live = 0;
}

static int find_client_by_id(const StageServer *s, const uint8_t *id, size_t id_len)
{
    for (int i = 0; i < s->n_clients; i++)
        if (s->clients[i].live && s->clients[i].id_len == id_len &&
            !memcmp(s->clients[i].id, id, id_len))
            return i;
    return -1;
}

static void on_hello(StageServer *s, const WireMsg *m, const uint8_t *id, size_t id_len)
{
    const char *name;
    size_t name_len;
    uint64_t inc;
    Err err;
    if (wire_get_str(&m->root, "name", &name, &name_len, &err) < 0 ||
        wire_get_uint(&m->root, "inc", &inc, &err) < 0 || name_len == 0 ||
        name_len >= STAGE_NAME_CAP) {
        s->n_malformed++;
        log_warn("stage %s: bad hello: %s", s->cfg.endpoint,
                 name_len >= STAGE_NAME_CAP ? "name too long" : err.msg);
        return;
    }
    int ci = -1;
    for (int i = 0; i < s->n_clients && ci < 0; i++)
        if (strlen(s->clients[i].name) == name_len && !memcmp(s->clients[i].name, name, name_len))
            ci = i;
    if (ci >= 0 && s->clients[ci].inc != inc) {
        if (s->clients[ci].live)
            log_info("stage %s: %s restarted: releasing what its predecessor held",
                     s->cfg.endpoint, s->clients[ci].name);
        release_client(s, ci);
    }
    if (ci < 0) {
        if (s->n_clients == STAGE_MAX_CLIENTS) {
            log_warn("stage %s: more than %d consumers; hello ignored", s->cfg.endpoint,
                     STAGE_MAX_CLIENTS);
            return;
        }
        ci = s->n_clients++;
        memcpy(s->clients[ci].name, name, name_len);
        s->clients[ci].name[name_len] = 0;
    }
    StageClientRec *c = &s->clients[ci];
    memcpy(c->id, id, id_len);
    c->id_len = id_len;
    c->inc = inc;
    c->live = 1;
    server_welcome(s, ci);
}

static void on_req(StageServer *s, WireMsg *m, zmq_msg_t *msg, int ci, const uint8_t *id,
                   size_t id_len)
{
    uint64_t inc, to, key;
    Err err;
    if (wire_get_uint(&m->root, "inc", &inc, &err) < 0 ||
        wire_get_uint(&m->root, "to", &to, &err) < 0 ||
        wire_get_uint(&m->root, "key", &key, &err) < 0) {
        s->n_malformed++;
        log_warn("stage %s: bad request: %s", s->cfg.endpoint, err.msg);
        return;
    }
    if (ci < 0 || to != s->inc || inc != s->clients[ci].inc) {
        s->n_stale++; /* meant for a previous incarnation of one side */
        if (ci < 0 || to != s->inc) server_hb(s, -1, id, id_len);
        return;
    }
    if (s->q_len == s->cfg.queue_cap) {
        /* A consumer sending beyond its window: answer at once rather than queue without end. */
        server_fail(s, ci, key, "the producer's request queue is full");
        return;
    }
    StageQueued *q = &s->queue[(s->q_head + s->q_len++) % s->cfg.queue_cap];
    q->client = ci, q->inc = inc, q->key = key;
    zmq_msg_init(&q->msg);
    zmq_msg_move(&q->msg, msg);
}

static void on_credit(StageServer *s, const WireMsg *m, int ci, const uint8_t *id,
                      size_t id_len)
{
    uint64_t inc, to, slot;
    Err err;
    if (wire_get_uint(&m->root, "inc", &inc, &err) < 0 ||
        wire_get_uint(&m->root, "to", &to, &err) < 0 ||
        wire_get_uint(&m->root, "slot", &slot, &err) < 0) {
        s->n_malformed++;
        log_warn("stage %s: bad credit: %s", s->cfg.endpoint, err.msg);
        return;
    }
    if (ci < 0 || to != s->inc || inc != s->clients[ci].inc || slot >= s->seg.n_slots ||
        s->slot_state[slot] != SLOT_HELD || s->slot_client[slot] != ci ||
        s->slot_inc[slot] != inc) {
        s->n_stale++;
        if (ci < 0 || to != s->inc) server_hb(s, -1, id, id_len);
        return;
    }
    slot_free(s, (uint32_t)slot);
}

/* ---- reports ------------------------------------------------------------------------------- */

/* Reports hold a few at most: a listener that fell behind wants the newest figures, and the
 * counters are cumulative, so dropping older ones loses nothing a later one does not say. */
enum { REPORT_HWM = 4 };

static int report_open(StageServer *s, void *zctx, Err *err)
{
    /* linger 0: a stage stopping never waits for a listener that is gone. */
    ZmqSocketConfig zc = {.type = ZMQ_PUSH, .max_msg_bytes = 4096, .linger_ms = 0,
                          .hwm = REPORT_HWM};
    if (zmq_util_connect(&s->report_sock, zctx, &zc, s->cfg.report, err) < 0) return -1;
    if (!s->cfg.role) s->cfg.role = "stage";
    if (!s->cfg.report_ms) s->cfg.report_ms = s->cfg.hb_ms;
    if (!s->cfg.items_per_result) s->cfg.items_per_result = 1;
    return 0;
}

void stage_server_report(StageServer *s)
{
    if (!s->report_sock.sock) return;
    int64_t now = stage_now_ns();
    WireWriter w;
    uint32_t held = 0;
    for (uint32_t i = 0; i < s->seg.n_slots; i++) held += s->slot_state[i] == SLOT_HELD;
    wire_writer_init(&w, "stage_report", 13);
    wire_put_str(&w, "role", s->cfg.role);
    wire_put_str(&w, "name", s->cfg.seg_tag);
    wire_put_uint(&w, "pid", (uint64_t)getpid());
    wire_put_uint(&w, "inc", s->inc);
    wire_put_f64(&w, "t_s", (double)(now - s->start_ns) * 1e-9);
    wire_put_uint(&w, "done", s->n_done);
    wire_put_uint(&w, "failed", s->n_failed);
    wire_put_uint(&w, "items_per_result", s->cfg.items_per_result);
    wire_put_f64(&w, "busy_s", (double)s->busy_ns * 1e-9);
    wire_put_uint(&w, "queued", s->q_len);
    wire_put_uint(&w, "slots_busy", stage_server_busy(s));
    wire_put_uint(&w, "slots_held", held);
    wire_put_uint(&w, "slots", s->seg.n_slots);
    size_t len;
    const void *data = wire_writer_data(&w, &len);
    Err err;
    /* Timeout 0: one try. AGAIN (no room: nobody listens, or too slowly) drops this report. */
    int rc = zmq_util_send(&s->report_sock, data, len, 0, &err);
    if (rc == 0) s->n_reports++;
    else s->n_reports_dropped++;
    if (rc < 0 && s->n_reports_dropped == 1) log_warn("stage report: %s", err.msg);
    wire_writer_free(&w);
    s->last_report_ms = now / 1000000;
}

void stage_server_add_busy(StageServer *s, int64_t ns)
{
    if (ns > 0) s->busy_ns += ns;
}

/* ---- public -------------------------------------------------------------------------------- */

int stage_server_init(StageServer *s, void *zctx, const StageServerConfig *cfg, Err *err)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    if (!s->cfg.queue_cap) s->cfg.queue_cap = 1024;
    if (!s->cfg.hb_ms) s->cfg.hb_ms = STAGE_HB_MS;
    s->inc = stage_incarnation();
    s->start_ns = stage_now_ns();
    ZmqSocketConfig zc = {.type = ZMQ_ROUTER,
                          .max_msg_bytes = (int64_t)cfg->limits.max_msg_bytes,
                          .linger_ms = 0};
    if (zmq_util_bind(&s->sock, zctx, &zc, cfg->endpoint, err) < 0) return -1;
    /* No high-water mark: messages are small and bounded by slots and windows, and a done
     * dropped at a mark would leave its key outstanding at a live producer forever. */
    int zero = 0;
    if (zmq_setsockopt(s->sock.sock, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s->sock.sock, ZMQ_RCVHWM, &zero, sizeof zero) != 0) {
        err_set(err, "%s: zmq_setsockopt ZMQ_SNDHWM: %s", cfg->endpoint, zmq_strerror(errno));
        stage_server_free(s);
        return -1;
    }
    /* Segments of producers killed before they could unlink them (a restart replaces one):
     * removing the names is safe, consumers keep what they have mapped. */
    Err serr;
    int stale = shm_unlink_stale(&serr);
    if (stale < 0) log_warn("%s", serr.msg);
    else if (stale > 0) log_info("removed %d shared-memory segments of dead processes", stale);
    if (shm_segment_create(&s->seg, cfg->seg_tag, cfg->n_slots, cfg->slot_bytes, err) < 0) {
        stage_server_free(s);
        return -1;
    }
    s->queue = calloc(s->cfg.queue_cap, sizeof *s->queue);
    s->slot_state = calloc(cfg->n_slots, 1);
    s->slot_client = malloc(cfg->n_slots * sizeof *s->slot_client);
    s->slot_inc = calloc(cfg->n_slots, sizeof *s->slot_inc);
    if (!s->queue || !s->slot_state || !s->slot_client || !s->slot_inc) {
        stage_server_free(s);
        return err_set(err, "%s: out of memory for %u slots", cfg->endpoint, cfg->n_slots);
    }
    for (uint32_t i = 0; i < cfg->n_slots; i++) slot_free(s, i);
    if (cfg->report) {
        if (report_open(s, zctx, err) < 0) {
            stage_server_free(s);
            return -1;
        }
        stage_server_report(s); /* at once: a listener learns of a (re)start without waiting */
    }
    return 0;
}

void stage_server_free(StageServer *s)
{
    if (s->queue) {
        for (size_t i = 0; i < s->q_len; i++)
            zmq_msg_close(&s->queue[(s->q_head + i) % s->cfg.queue_cap].msg);
        free(s->queue);
        s->queue = NULL;
    }
    s->q_len = 0;
    free(s->slot_state), free(s->slot_client), free(s->slot_inc);
    s->slot_state = NULL, s->slot_client = NULL, s->slot_inc = NULL;
    zmq_util_close(&s->sock);
    zmq_util_close(&s->report_sock);
    shm_segment_close(&s->seg);
}

int stage_server_pump(StageServer *s, Err *err)
{
    for (;;) {
        uint8_t id[ZMQ_UTIL_ID_CAP];
        size_t id_len = 0;
        zmq_msg_t msg;
        int rc = zmq_util_router_recv(&s->sock, id, &id_len, &msg, err);
        if (rc == ZMQ_UTIL_AGAIN) {
            zmq_msg_close(&msg);
            break;
        }
        if (rc == ZMQ_UTIL_TERM || rc < 0) {
            zmq_msg_close(&msg);
            return rc;
        }
        if (rc == ZMQ_UTIL_MULTIPART) {
            s->n_malformed++;
            log_warn("stage: %s", err->msg);
            zmq_msg_close(&msg);
            continue;
        }
        WireMsg m;
        wire_msg_init(&m);
        Err derr;
        if (wire_decode(&m, zmq_msg_data(&msg), zmq_msg_size(&msg), &s->cfg.limits, &derr) < 0) {
            s->n_malformed++;
            log_warn("stage %s: %s", s->cfg.endpoint, derr.msg);
        } else {
            int ci = find_client_by_id(s, id, id_len);
            if (!strcmp(m.type, "hello")) on_hello(s, &m, id, id_len);
            else if (!strcmp(m.type, "req")) on_req(s, &m, &msg, ci, id, id_len);
            else if (!strcmp(m.type, "credit")) on_credit(s, &m, ci, id, id_len);
            else if (!strcmp(m.type, "hb")) {
                if (ci < 0) server_hb(s, -1, id, id_len);
            } else {
                s->n_malformed++;
                log_warn("stage %s: unexpected message '%s'", s->cfg.endpoint, m.type);
            }
        }
        wire_msg_free(&m);
        zmq_msg_close(&msg);
    }
    int64_t now = stage_now_ms();
    for (int i = 0; i < s->n_clients; i++)
        if (s->clients[i].live && now - s->clients[i].last_sent_ms >= s->cfg.hb_ms)
            server_hb(s, i, NULL, 0);
    if (s->report_sock.sock && now - s->last_report_ms >= s->cfg.report_ms) stage_server_report(s);
    return 0;
}

int stage_server_next(StageServer *s, StageTask *t)
{
    uint32_t slot = 0;
    while (slot < s->seg.n_slots && s->slot_state[slot] != SLOT_FREE) slot++;
    if (slot == s->seg.n_slots) return 0;
    while (s->q_len) {
        StageQueued *q = &s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->cfg.queue_cap;
        s->q_len--;
        const StageClientRec *c = &s->clients[q->client];
        if (!c->live || c->inc != q->inc) {
            zmq_msg_close(&q->msg); /* its consumer was replaced */
            continue;
        }
        memset(t, 0, sizeof *t);
        t->slot = slot, t->key = q->key, t->client = q->client, t->client_inc = q->inc;
        zmq_msg_init(&t->msg);
        zmq_msg_move(&t->msg, &q->msg);
        zmq_msg_close(&q->msg);
        wire_msg_init(&t->req);
        Err err;
        /* It decoded when it arrived, with the same limits. */
        int rc = wire_decode(&t->req, zmq_msg_data(&t->msg), zmq_msg_size(&t->msg),
                             &s->cfg.limits, &err);
        ASSERT(rc == 0);
        s->slot_state[slot] = SLOT_WORKING;
        s->slot_client[slot] = t->client;
        s->slot_inc[slot] = t->client_inc;
        return 1;
    }
    return 0;
}

int stage_server_task_live(const StageServer *s, const StageTask *t)
{
    const StageClientRec *c = &s->clients[t->client];
    return c->live && c->inc == t->client_inc;
}

void stage_server_done_begin(StageServer *s, const StageTask *t, WireWriter *w, uint32_t n_fields)
{
    wire_writer_init(w, "done", 3 + n_fields);
    wire_put_uint(w, "inc", s->inc);
    wire_put_uint(w, "key", t->key);
    wire_put_uint(w, "slot", t->slot);
}

static void task_end(StageTask *t)
{
    wire_msg_free(&t->req);
    zmq_msg_close(&t->msg);
}

int stage_server_finish(StageServer *s, StageTask *t, WireWriter *w, Err *err)
{
    ASSERT(s->slot_state[t->slot] == SLOT_WORKING);
    if (stage_server_task_live(s, t)) {
        server_send(s, t->client, w);
        s->slot_state[t->slot] = SLOT_HELD;
        s->n_done++;
    } else {
        slot_free(s, t->slot);
    }
    task_end(t);
    return 0;
}

int stage_server_fail(StageServer *s, StageTask *t, const char *error, Err *err)
{
    ASSERT(s->slot_state[t->slot] == SLOT_WORKING);
    if (stage_server_task_live(s, t)) server_fail(s, t->client, t->key, error);
    s->n_failed++;
    slot_free(s, t->slot);
    task_end(t);
    return 0;
}

void stage_server_release_client(StageServer *s, const char *name)
{
    for (int i = 0; i < s->n_clients; i++)
        if (s->clients[i].live && !strcmp(s->clients[i].name, name)) release_client(s, i);
}

uint32_t stage_server_busy(const StageServer *s)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->seg.n_slots; i++) n += s->slot_state[i] != SLOT_FREE;
    return n;
}
