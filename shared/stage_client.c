/* stage_client.c: the consumer side of the stage protocol (see stage.h for the design).
 *
 * The wanted keys live in one array in want order, each PENDING (to be sent) or SENT (to a peer),
 * so re-issuing after a producer's death is flipping SENT back to PENDING: the keys keep their
 * order and go out again first. Counts are small (windows of a few requests per producer, a few
 * batches of samples), so linear scans are cheaper than any index.
 *
 * Messages are received straight into the StageResult the caller passed: decoded fields point
 * into the ZeroMQ message, and a small message's bytes live inside zmq_msg_t itself, so the
 * message must not move after decoding. Anything that is not a result is freed at once. */
#include "shared/stage.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"

/* ---- sending ------------------------------------------------------------------------------- */

static void client_send(StageClient *c, int pi, WireWriter *w)
{
    StagePeer *p = &c->peers[pi];
    size_t len;
    const void *data = wire_writer_data(w, &len);
    /* No high-water mark on our DEALERs (set at init), so this only fails when the context ends;
     * a message to a dead producer waits for its successor, which ignores it (incarnations). */
    if (zmq_send(p->sock.sock, data, len, ZMQ_DONTWAIT) < 0 && errno != ETERM)
        log_warn("stage %s: send: %s", p->sock.endpoint, zmq_strerror(errno));
    p->last_sent_ms = stage_now_ms();
}

static void send_hello(StageClient *c, int pi)
{
    c->peers[pi].last_hello_ms = stage_now_ms();
    WireWriter w;
    wire_writer_init(&w, "hello", 2);
    wire_put_str(&w, "name", c->cfg.name);
    wire_put_uint(&w, "inc", c->inc);
    client_send(c, pi, &w);
    wire_writer_free(&w);
}

static void send_hb(StageClient *c, int pi)
{
    WireWriter w;
    wire_writer_init(&w, "hb", 1);
    wire_put_uint(&w, "inc", c->inc);
    client_send(c, pi, &w);
    wire_writer_free(&w);
}

static void send_credit(StageClient *c, int pi, uint64_t peer_inc, uint32_t slot)
{
    WireWriter w;
    wire_writer_init(&w, "credit", 3);
    wire_put_uint(&w, "inc", c->inc);
    wire_put_uint(&w, "to", peer_inc);
    wire_put_uint(&w, "slot", slot);
    client_send(c, pi, &w);
    wire_writer_free(&w);
}

static void send_req(StageClient *c, int pi, uint64_t key)
{
    WireWriter w;
    wire_writer_init(&w, "req", 3 + c->cfg.req_fields);
    wire_put_uint(&w, "inc", c->inc);
    wire_put_uint(&w, "to", c->peers[pi].inc);
    wire_put_uint(&w, "key", key);
    if (c->cfg.req_fields) c->cfg.put_req(c->cfg.app, key, &w);
    client_send(c, pi, &w);
    wire_writer_free(&w);
}

/* The live producer with the fewest requests outstanding and room for one more, or -1. */
static int pick_peer(const StageClient *c)
{
    int best = -1;
    for (int i = 0; i < c->cfg.n_peers; i++) {
        const StagePeer *p = &c->peers[i];
        if (!p->alive || p->outstanding >= c->cfg.window || p->outstanding + p->held >= p->slots)
            continue;
        if (best < 0 || p->outstanding < c->peers[best].outstanding) best = i;
    }
    return best;
}

/* Hellos to producers not (or no longer) welcomed, requests while windows have room, and
 * heartbeats that are due. */
static void send_due(StageClient *c)
{
    int64_t now = stage_now_ms();
    for (int i = 0; i < c->cfg.n_peers; i++)
        if (!c->peers[i].alive && now - c->peers[i].last_sent_ms >= c->cfg.hb_ms) send_hello(c, i);
    for (size_t k = 0; k < c->n_keys; k++) {
        if (c->keys[k].state != KEY_PENDING) continue;
        int pi = pick_peer(c);
        if (pi < 0) break;
        send_req(c, pi, c->keys[k].key);
        c->keys[k].state = KEY_SENT, c->keys[k].peer = pi;
        c->peers[pi].outstanding++;
    }
    now = stage_now_ms();
    for (int i = 0; i < c->cfg.n_peers; i++)
        if (c->peers[i].alive && now - c->peers[i].last_sent_ms >= c->cfg.hb_ms) send_hb(c, i);
}

/* ---- producers coming and going ----------------------------------------------------------- */

/* Everything sent to peer pi goes back to the front of the line (want order is kept). */
static void requeue_peer(StageClient *c, int pi)
{
    for (size_t k = 0; k < c->n_keys; k++)
        if (c->keys[k].state == KEY_SENT && c->keys[k].peer == pi) {
            c->keys[k].state = KEY_PENDING;
            c->n_reissued++;
        }
    c->peers[pi].outstanding = 0;
}

static void check_deaths(StageClient *c)
{
    int64_t now = stage_now_ms();
    for (int i = 0; i < c->cfg.n_peers; i++) {
        StagePeer *p = &c->peers[i];
        if (!p->alive || now - p->last_heard_ms <= c->cfg.dead_ms) continue;
        log_warn("stage %s: no word for %lld ms: re-issuing its %u requests", p->sock.endpoint,
                 (long long)(now - p->last_heard_ms), p->outstanding);
        p->alive = 0;
        c->n_peer_deaths++;
        requeue_peer(c, i);
    }
}

static int segment_index(StageClient *c, const char *name, size_t name_len, uint64_t slots,
                         uint64_t slot_bytes, Err *err)
{
    for (int i = 0; i < c->n_segs; i++)
        if (strlen(c->segs[i].name) == name_len && !memcmp(c->segs[i].name, name, name_len))
            return i;
    if (c->n_segs == STAGE_MAX_SEGMENTS)
        return err_set(err, "stage: more than %d producer segments (restarts) in one run",
                       STAGE_MAX_SEGMENTS);
    char buf[SHM_NAME_CAP];
    if (name_len >= sizeof buf || slots == 0 || slots > UINT32_MAX)
        return err_set(err, "stage: welcome names a bad segment (%zu-byte name, %llu slots)",
                       name_len, (unsigned long long)slots);
    memcpy(buf, name, name_len);
    buf[name_len] = 0;
    if (shm_segment_open(&c->segs[c->n_segs], buf, (uint32_t)slots, (size_t)slot_bytes, 0, err) <
        0)
        return -1;
    return c->n_segs++;
}

/* A welcome: a new incarnation replaces the old one (whose work is re-issued). The message is
 * moved into the peer and decoded again there, where it stays. */
static int on_welcome(StageClient *c, int pi, StageResult *r, Err *err)
{
    StagePeer *p = &c->peers[pi];
    uint64_t inc, slots, slot_bytes;
    const char *seg;
    size_t seg_len;
    if (wire_get_uint(&r->done.root, "inc", &inc, err) < 0 ||
        wire_get_str(&r->done.root, "segment", &seg, &seg_len, err) < 0 ||
        wire_get_uint(&r->done.root, "slots", &slots, err) < 0 ||
        wire_get_uint(&r->done.root, "slot_bytes", &slot_bytes, err) < 0)
        return -1;
    if (inc == p->inc && p->has_welcome) { /* a repeated hello's answer */
        p->alive = 1;
        p->last_heard_ms = stage_now_ms();
        return 0;
    }
    int si = segment_index(c, seg, seg_len, slots, slot_bytes, err);
    if (si < 0) return err_wrap(err, "%s: ", p->sock.endpoint);
    if (p->has_welcome) {
        log_info("stage %s: restarted producer: re-issuing %u requests", p->sock.endpoint,
                 p->outstanding);
        requeue_peer(c, pi);
        wire_msg_free(&p->welcome);
        zmq_msg_close(&p->welcome_msg);
    }
    zmq_msg_init(&p->welcome_msg);
    zmq_msg_move(&p->welcome_msg, &r->msg);
    wire_msg_init(&p->welcome);
    int rc = wire_decode(&p->welcome, zmq_msg_data(&p->welcome_msg),
                         zmq_msg_size(&p->welcome_msg), &c->cfg.limits, err);
    ASSERT(rc == 0); /* the same bytes decoded a moment ago */
    p->has_welcome = 1;
    p->inc = inc, p->seg = si, p->alive = 1, p->outstanding = 0, p->held = 0;
    p->slots = (uint32_t)slots;
    p->last_heard_ms = stage_now_ms();
    return 0;
}

static ssize_t find_key(const StageClient *c, uint64_t key)
{
    for (size_t k = 0; k < c->n_keys; k++)
        if (c->keys[k].key == key) return (ssize_t)k;
    return -1;
}

static void drop_key(StageClient *c, size_t k)
{
    if (c->keys[k].state == KEY_SENT && c->peers[c->keys[k].peer].outstanding > 0)
        c->peers[c->keys[k].peer].outstanding--;
    memmove(&c->keys[k], &c->keys[k + 1], (c->n_keys - k - 1) * sizeof *c->keys);
    c->n_keys--;
}

/* One message of peer pi, decoded in r. STAGE_RESULT keeps it in r; anything else is done with. */
static int on_message(StageClient *c, int pi, StageResult *r, Err *err)
{
    StagePeer *p = &c->peers[pi];
    if (!strcmp(r->done.type, "welcome")) return on_welcome(c, pi, r, err) < 0 ? -1 : STAGE_NONE;
    uint64_t inc;
    if (wire_get_uint(&r->done.root, "inc", &inc, err) < 0) return -1;
    if (!p->has_welcome || inc != p->inc) {
        /* A producer incarnation that has not welcomed us: it was (re)started and does not know
         * us yet. Say hello now; its welcome re-issues what the old one had. */
        if (!strcmp(r->done.type, "hb") && stage_now_ms() - p->last_hello_ms >= c->cfg.hb_ms / 4)
            send_hello(c, pi);
        return STAGE_NONE;
    }
    p->last_heard_ms = stage_now_ms();
    p->alive = 1; /* declared dead too early: it was only slow */
    if (!strcmp(r->done.type, "hb")) return STAGE_NONE;
    uint64_t key;
    if (wire_get_uint(&r->done.root, "key", &key, err) < 0) return -1;
    ssize_t k = find_key(c, key);
    if (!strcmp(r->done.type, "fail")) {
        const char *text;
        size_t len;
        if (k < 0) return STAGE_NONE;
        if (wire_get_str(&r->done.root, "error", &text, &len, err) < 0) return -1;
        drop_key(c, (size_t)k);
        r->key = key, r->peer = pi, r->peer_inc = inc;
        err_set(err, "%.*s", (int)(len < STAGE_ERROR_CAP ? len : STAGE_ERROR_CAP), text);
        return STAGE_FAILED;
    }
    if (strcmp(r->done.type, "done") != 0)
        return err_set(err, "unexpected message '%s'", r->done.type);
    uint64_t slot;
    if (wire_get_uint(&r->done.root, "slot", &slot, err) < 0) return -1;
    if (slot >= c->segs[p->seg].n_slots)
        return wire_fail(&r->done.root, "slot", err, "is %llu, the segment has %u slots",
                         (unsigned long long)slot, c->segs[p->seg].n_slots);
    if (k < 0) { /* answered already (re-issued) or cancelled: give the slot back */
        c->n_duplicates++;
        send_credit(c, pi, inc, (uint32_t)slot);
        return STAGE_NONE;
    }
    drop_key(c, (size_t)k);
    p->held++;
    r->key = key, r->peer = pi, r->peer_inc = inc, r->slot = (uint32_t)slot;
    r->seg = &c->segs[p->seg];
    c->n_results++;
    return STAGE_RESULT;
}

/* Reads every waiting message, peers in turn, until a result: STAGE_RESULT, STAGE_FAILED,
 * STAGE_NONE, TERM or -1. Malformed messages are logged and counted, never fatal. */
static int drain(StageClient *c, StageResult *r, Err *err)
{
    for (int i = 0; i < c->cfg.n_peers; i++) {
        StagePeer *p = &c->peers[i];
        for (;;) {
            Err merr;
            int rc = zmq_util_recv(&p->sock, &r->msg, 0, &merr);
            wire_msg_init(&r->done);
            if (rc == ZMQ_UTIL_AGAIN || rc == ZMQ_UTIL_TERM || rc < 0) {
                zmq_msg_close(&r->msg);
                if (rc == ZMQ_UTIL_AGAIN) break;
                if (rc < 0) *err = merr;
                return rc;
            }
            if (rc == ZMQ_UTIL_MULTIPART) {
                rc = -1; /* merr says so */
            } else if (wire_decode(&r->done, zmq_msg_data(&r->msg), zmq_msg_size(&r->msg),
                                   &c->cfg.limits, &merr) < 0) {
                rc = -1;
            } else {
                rc = on_message(c, i, r, &merr);
                if (rc == STAGE_FAILED) { /* a producer's error: the caller's now */
                    *err = merr;
                    wire_msg_free(&r->done);
                    zmq_msg_close(&r->msg);
                    return rc;
                }
            }
            if (rc == STAGE_RESULT) return rc;
            if (rc < 0) {
                c->n_malformed++;
                log_warn("stage %s: %s", p->sock.endpoint, merr.msg);
            }
            wire_msg_free(&r->done);
            zmq_msg_close(&r->msg);
        }
    }
    return STAGE_NONE;
}

/* ---- public -------------------------------------------------------------------------------- */

int stage_client_init(StageClient *c, void *zctx, const StageClientConfig *cfg, Err *err)
{
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    if (!c->cfg.hb_ms) c->cfg.hb_ms = STAGE_HB_MS;
    if (!c->cfg.dead_ms) c->cfg.dead_ms = STAGE_DEAD_MS;
    if (!c->cfg.window) c->cfg.window = 1;
    if (cfg->n_peers < 1 || cfg->n_peers > STAGE_MAX_PEERS)
        return err_set(err, "stage %s: %d producers (1 to %d)", cfg->name, cfg->n_peers,
                       STAGE_MAX_PEERS);
    if (strlen(cfg->name) == 0 || strlen(cfg->name) >= STAGE_NAME_CAP)
        return err_set(err, "stage: consumer name '%s' is empty or too long", cfg->name);
    c->inc = stage_incarnation();
    ZmqSocketConfig zc = {.type = ZMQ_DEALER,
                          .max_msg_bytes = (int64_t)cfg->limits.max_msg_bytes,
                          .linger_ms = 0};
    for (int i = 0; i < cfg->n_peers; i++) {
        StagePeer *p = &c->peers[i];
        p->seg = -1;
        if (zmq_util_connect(&p->sock, zctx, &zc, cfg->endpoints[i], err) < 0) {
            stage_client_free(c);
            return -1;
        }
        int zero = 0; /* see client_send */
        if (zmq_setsockopt(p->sock.sock, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
            zmq_setsockopt(p->sock.sock, ZMQ_RCVHWM, &zero, sizeof zero) != 0) {
            err_set(err, "%s: zmq_setsockopt ZMQ_SNDHWM: %s", cfg->endpoints[i],
                    zmq_strerror(errno));
            stage_client_free(c);
            return -1;
        }
    }
    return 0;
}

void stage_client_free(StageClient *c)
{
    for (int i = 0; i < STAGE_MAX_PEERS; i++) {
        StagePeer *p = &c->peers[i];
        if (p->has_welcome) {
            wire_msg_free(&p->welcome);
            zmq_msg_close(&p->welcome_msg);
            p->has_welcome = 0;
        }
        zmq_util_close(&p->sock);
    }
    for (int i = 0; i < c->n_segs; i++) shm_segment_close(&c->segs[i]);
    c->n_segs = 0;
    free(c->keys);
    c->keys = NULL, c->n_keys = 0, c->keys_cap = 0;
}

void stage_client_want(StageClient *c, uint64_t key)
{
    if (c->n_keys == c->keys_cap) {
        c->keys_cap = c->keys_cap ? 2 * c->keys_cap : 64;
        c->keys = realloc(c->keys, c->keys_cap * sizeof *c->keys);
        ASSERT(c->keys); /* effdet aborts on allocation failure */
    }
    c->keys[c->n_keys++] = (StageKey){.key = key, .state = KEY_PENDING, .peer = -1};
}

void stage_client_cancel(StageClient *c, uint64_t key)
{
    ssize_t k = find_key(c, key);
    if (k >= 0) drop_key(c, (size_t)k);
}

size_t stage_client_pending(const StageClient *c) { return c->n_keys; }

int stage_client_stalled(const StageClient *c)
{
    int pending = 0, live = 0;
    for (size_t k = 0; k < c->n_keys && !pending; k++) pending = c->keys[k].state == KEY_PENDING;
    for (int i = 0; i < c->cfg.n_peers; i++) {
        const StagePeer *p = &c->peers[i];
        if (!p->alive) continue;
        if (p->outstanding > 0) return 0; /* work in flight will free room */
        live = 1;
    }
    return pending && live && pick_peer(c) < 0;
}

int stage_client_poll(StageClient *c, void *extra, int timeout_ms, StageResult *r, Err *err)
{
    send_due(c);
    int rc = drain(c, r, err);
    if (rc != STAGE_NONE) return rc;
    check_deaths(c);
    send_due(c); /* re-issued keys go to the producers still alive */
    zmq_pollitem_t items[STAGE_MAX_PEERS + 1];
    int n = 0;
    for (int i = 0; i < c->cfg.n_peers; i++)
        items[n++] = (zmq_pollitem_t){.socket = c->peers[i].sock.sock, .events = ZMQ_POLLIN};
    if (extra) items[n++] = (zmq_pollitem_t){.socket = extra, .events = ZMQ_POLLIN};
    int hb = c->cfg.hb_ms;
    if (zmq_poll(items, n, timeout_ms < 0 || timeout_ms > hb ? hb : timeout_ms) < 0) {
        if (errno == EINTR) return STAGE_NONE;
        if (errno == ETERM) return ZMQ_UTIL_TERM;
        return err_set(err, "stage %s: zmq_poll: %s", c->cfg.name, zmq_strerror(errno));
    }
    rc = drain(c, r, err);
    if (rc != STAGE_NONE) return rc;
    if (extra && (items[n - 1].revents & ZMQ_POLLIN)) return STAGE_EXTRA;
    return STAGE_NONE;
}

void stage_client_release(StageClient *c, StageResult *r)
{
    StagePeer *p = &c->peers[r->peer];
    if (p->inc == r->peer_inc) {
        send_credit(c, r->peer, r->peer_inc, r->slot);
        if (p->held > 0) p->held--;
    }
    wire_msg_free(&r->done);
    zmq_msg_close(&r->msg);
}

int stage_client_live_peers(const StageClient *c)
{
    int n = 0;
    for (int i = 0; i < c->cfg.n_peers; i++) n += c->peers[i].alive;
    return n;
}

int stage_client_info(const StageClient *c, WireMap *m)
{
    for (int i = 0; i < c->cfg.n_peers; i++)
        if (c->peers[i].has_welcome) {
            *m = c->peers[i].welcome.root;
            return 1;
        }
    return 0;
}
