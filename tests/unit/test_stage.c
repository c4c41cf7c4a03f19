/* test_stage.c: the stage protocol (shared/stage.h), producers (StageServer) and consumers
 * (StageClient) in one process and one thread over ipc:// endpoints in a scratch directory.
 *
 * A step pumps every server (requests become tasks, at most `answer` tasks are answered per step,
 * so work stays outstanding for a while) and polls every client once for a millisecond. Answers
 * carry a shared-memory tensor whose bytes depend on the key and one inline uint, both checked on
 * delivery. Crashes are simulated by freeing a server or client without answering or releasing.
 * Cases: the basic flow (exactly once, window, slots returned, welcome info); a producer that
 * dies and restarts (after dead_ms and at once); two producers, one dying for good; a consumer
 * replaced under the same name; duplicates and stale messages (crafted on raw DEALER sockets,
 * and from a fake producer on a raw ROUTER for the consumer's side); malformed input to the
 * server; a fail answer. The last case checks that no segment of this
 * process is left in /dev/shm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/stage.h"
#include "tests/support/tmpdir.h"

enum {
    KEYS = 256,       /* keys used by the tests are below this */
    DATA_BYTES = 300, /* the result tensor, U8 (300) at offset 0 of its slot */
    MAX_TASKS = 16,
    MAX_HELD = 32,
    HB_MS = 20,
    DEAD_MS = 200,
    N_SRV = 3,
    N_CLI = 2,
};
#define NO_KEY UINT64_MAX
#define REQ_XOR 0xabcu /* the request field "want" is key ^ REQ_XOR */

static uint8_t pattern(uint64_t key, size_t i) { return (uint8_t)(key * 37 + i * 11 + 5); }

/* ---- producers ------------------------------------------------------------------------------- */

typedef struct Srv {
    StageServer s;
    int up;
    int answer;          /* tasks answered per step (0: hold them, a hung producer) */
    int64_t budget;      /* answers left before it stops answering; -1: no limit */
    uint64_t fail_key;   /* answered with fail; NO_KEY: none */
    StageTask tasks[MAX_TASKS]; /* never moved: t->req points into t->msg */
    int task_used[MAX_TASKS];
    uint64_t task_seq[MAX_TASKS], seq;
    uint32_t max_per_client; /* queued + working requests of one consumer, the most seen */
    uint64_t n_answered;
} Srv;

static void put_info(void *app, WireWriter *w)
{
    (void)app;
    wire_put_uint(w, "n_images", 123);
    wire_put_str(w, "what", "test");
}

static void srv_start(Srv *v, void *ctx, const char *ep, const char *tag, uint32_t n_slots)
{
    memset(v, 0, sizeof *v);
    StageServerConfig cfg = {.endpoint = ep, .seg_tag = tag, .n_slots = n_slots,
                             .slot_bytes = DATA_BYTES, .queue_cap = 64, .hb_ms = HB_MS,
                             .limits = wire_limits_default(), .n_info = 2, .put_info = put_info};
    Err err = {{0}};
    if (stage_server_init(&v->s, ctx, &cfg, &err)) fail_msg("%s", err.msg);
    v->up = 1, v->answer = 1, v->budget = -1, v->fail_key = NO_KEY;
}

static int srv_tasks(const Srv *v)
{
    int n = 0;
    for (int i = 0; i < MAX_TASKS; i++) n += v->task_used[i];
    return n;
}

/* A crash: tasks are dropped unanswered, the socket closed and the segment unlinked. */
static void srv_crash(Srv *v)
{
    if (!v->up) return;
    for (int i = 0; i < MAX_TASKS; i++)
        if (v->task_used[i]) {
            wire_msg_free(&v->tasks[i].req);
            zmq_msg_close(&v->tasks[i].msg);
            v->task_used[i] = 0;
        }
    stage_server_free(&v->s);
    v->up = 0;
}

static void srv_answer(Srv *v, int i)
{
    StageTask *t = &v->tasks[i];
    Err err = {{0}};
    if (t->key == v->fail_key) {
        char text[64];
        snprintf(text, sizeof text, "no such image: key %llu", (unsigned long long)t->key);
        if (stage_server_fail(&v->s, t, text, &err)) fail_msg("%s", err.msg);
    } else {
        uint8_t *p = shm_slot(&v->s.seg, t->slot);
        for (size_t j = 0; j < DATA_BYTES; j++) p[j] = pattern(t->key, j);
        WireWriter w;
        int64_t shape[1] = {DATA_BYTES};
        stage_server_done_begin(&v->s, t, &w, 2);
        wire_put_tensor_shm(&w, "data", ST_U8, 1, shape, &v->s.seg, t->slot, 0);
        wire_put_uint(&w, "tag", t->key * 3 + 1);
        if (stage_server_finish(&v->s, t, &w, &err)) fail_msg("%s", err.msg);
        wire_writer_free(&w);
    }
    v->task_used[i] = 0;
    v->n_answered++;
}

/* Queued and working requests of each live consumer's current incarnation; the largest count. */
static void srv_count(Srv *v)
{
    const StageServer *s = &v->s;
    for (int ci = 0; ci < s->n_clients; ci++) {
        if (!s->clients[ci].live) continue;
        uint32_t n = 0;
        for (size_t q = 0; q < s->q_len; q++) {
            const StageQueued *e = &s->queue[(s->q_head + q) % s->cfg.queue_cap];
            n += e->client == ci && e->inc == s->clients[ci].inc;
        }
        for (int i = 0; i < MAX_TASKS; i++)
            n += v->task_used[i] && v->tasks[i].client == ci &&
                 v->tasks[i].client_inc == s->clients[ci].inc;
        if (n > v->max_per_client) v->max_per_client = n;
    }
}

static void srv_step(Srv *v)
{
    if (!v->up) return;
    Err err = {{0}};
    if (stage_server_pump(&v->s, &err)) fail_msg("pump: %s", err.msg);
    for (;;) {
        int i = 0;
        while (i < MAX_TASKS && v->task_used[i]) i++;
        if (i == MAX_TASKS || !stage_server_next(&v->s, &v->tasks[i])) break;
        uint64_t want;
        if (wire_get_uint(&v->tasks[i].req.root, "want", &want, &err)) fail_msg("%s", err.msg);
        if (want != (v->tasks[i].key ^ REQ_XOR))
            fail_msg("request field want is %llu for key %llu", (unsigned long long)want,
                     (unsigned long long)v->tasks[i].key);
        v->task_used[i] = 1;
        v->task_seq[i] = v->seq++;
    }
    srv_count(v);
    for (int n = 0; n < v->answer && v->budget != 0; n++) {
        int oldest = -1;
        for (int i = 0; i < MAX_TASKS; i++)
            if (v->task_used[i] && (oldest < 0 || v->task_seq[i] < v->task_seq[oldest])) oldest = i;
        if (oldest < 0) break;
        srv_answer(v, oldest);
        if (v->budget > 0) v->budget--;
    }
}

/* ---- consumers ------------------------------------------------------------------------------- */

typedef struct Cli {
    StageClient c;
    int up;
    int hold;                  /* 1: keep results instead of releasing them */
    StageResult res[MAX_HELD]; /* never moved: decoded fields point into the message */
    int res_used[MAX_HELD];
    int delivered[KEYS];
    char seg_of[KEYS][SHM_NAME_CAP];
    int n_delivered, n_failed;
    uint64_t failed_key;
    char failed_msg[STAGE_ERROR_CAP];
    uint32_t max_outstanding;
} Cli;

static void put_req(void *app, uint64_t key, WireWriter *w)
{
    (void)app;
    wire_put_uint(w, "want", key ^ REQ_XOR);
}

static void cli_start(Cli *u, void *ctx, const char *name, const char *const *eps, int n,
                      uint32_t window)
{
    memset(u, 0, sizeof *u);
    StageClientConfig cfg = {.name = name, .endpoints = eps, .n_peers = n, .window = window,
                             .hb_ms = HB_MS, .dead_ms = DEAD_MS,
                             .limits = wire_limits_default(), .req_fields = 1,
                             .put_req = put_req};
    Err err = {{0}};
    if (stage_client_init(&u->c, ctx, &cfg, &err)) fail_msg("%s", err.msg);
    u->up = 1;
}

static int cli_held(const Cli *u)
{
    int n = 0;
    for (int i = 0; i < MAX_HELD; i++) n += u->res_used[i];
    return n;
}

static void check_bytes(uint64_t key, const uint8_t *p)
{
    for (size_t j = 0; j < DATA_BYTES; j++)
        if (p[j] != pattern(key, j))
            fail_msg("key %llu: byte %zu is %u, expected %u", (unsigned long long)key, j, p[j],
                     pattern(key, j));
}

/* The result's tensor (bytes checked) and inline field. */
static const uint8_t *check_result(const StageResult *r)
{
    WireTensor t;
    uint32_t slot;
    uint64_t tag;
    Err err = {{0}};
    if (wire_get_tensor_shm(&r->done.root, "data", r->seg, &t, &slot, &err) ||
        wire_get_uint(&r->done.root, "tag", &tag, &err))
        fail_msg("key %llu: %s", (unsigned long long)r->key, err.msg);
    assert_int_equal(slot, r->slot);
    assert_int_equal(t.dtype, ST_U8);
    assert_int_equal(t.bytes, DATA_BYTES);
    if (tag != r->key * 3 + 1)
        fail_msg("key %llu: tag %llu, expected %llu", (unsigned long long)r->key,
                 (unsigned long long)tag, (unsigned long long)(r->key * 3 + 1));
    check_bytes(r->key, t.data);
    return t.data;
}

static void cli_step(Cli *u)
{
    if (!u->up) return;
    int i = 0;
    while (i < MAX_HELD && u->res_used[i]) i++;
    if (i == MAX_HELD) fail_msg("the test holds more than %d results", MAX_HELD);
    StageResult *r = &u->res[i];
    Err err = {{0}};
    int rc = stage_client_poll(&u->c, NULL, 1, r, &err);
    if (rc < 0) fail_msg("poll: %s", err.msg);
    if (rc == STAGE_RESULT) {
        if (r->key >= KEYS) fail_msg("delivered key %llu, never wanted", (unsigned long long)r->key);
        check_result(r);
        u->delivered[r->key]++;
        u->n_delivered++;
        snprintf(u->seg_of[r->key], SHM_NAME_CAP, "%s", r->seg->name);
        if (u->hold) u->res_used[i] = 1;
        else stage_client_release(&u->c, r);
    } else if (rc == STAGE_FAILED) {
        u->n_failed++;
        u->failed_key = r->key;
        snprintf(u->failed_msg, sizeof u->failed_msg, "%s", err.msg);
    } else if (rc != STAGE_NONE) {
        fail_msg("poll returned %d", rc);
    }
    for (int p = 0; p < u->c.cfg.n_peers; p++)
        if (u->c.peers[p].outstanding > u->max_outstanding)
            u->max_outstanding = u->c.peers[p].outstanding;
}

static void cli_release_all(Cli *u)
{
    for (int i = 0; i < MAX_HELD; i++)
        if (u->res_used[i]) {
            stage_client_release(&u->c, &u->res[i]);
            u->res_used[i] = 0;
        }
}

/* A crash: held results are dropped without credits. */
static void cli_crash(Cli *u)
{
    if (!u->up) return;
    for (int i = 0; i < MAX_HELD; i++)
        if (u->res_used[i]) {
            wire_msg_free(&u->res[i].done);
            zmq_msg_close(&u->res[i].msg);
            u->res_used[i] = 0;
        }
    stage_client_free(&u->c);
    u->up = 0;
}

/* Each of keys [lo, hi) delivered exactly once, and nothing else. */
static void expect_exactly_once(const Cli *u, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = 0; k < KEYS; k++) {
        int want = k >= lo && k < hi;
        if (u->delivered[k] != want)
            fail_msg("key %llu delivered %d times, expected %d", (unsigned long long)k,
                     u->delivered[k], want);
    }
}

/* ---- the harness ----------------------------------------------------------------------------- */

typedef struct H {
    TmpDir *tmp;
    void *ctx;
    char ep[N_SRV][ZMQ_UTIL_ENDPOINT_CAP];
    const char *eps[N_SRV];
    Srv srv[N_SRV];
    Cli cli[N_CLI];
    ZmqSocket raw[2]; /* DEALERs for crafted messages */
    ZmqSocket fake;   /* a ROUTER playing a producer */
    ShmSegment fake_seg;
} H;

static int h_setup(void **state)
{
    void *t = NULL;
    if (tmpdir_setup(&t)) return -1;
    H *h = calloc(1, sizeof *h);
    Err err;
    if (!h || !(h->ctx = zmq_util_ctx_new(&err))) return -1;
    h->tmp = t;
    for (int i = 0; i < N_SRV; i++) {
        snprintf(h->ep[i], sizeof h->ep[i], "ipc://%s/p%d.sock", h->tmp->dir, i);
        h->eps[i] = h->ep[i];
    }
    *state = h;
    return 0;
}

static int h_teardown(void **state)
{
    H *h = *state;
    for (int i = 0; i < N_CLI; i++) cli_crash(&h->cli[i]);
    for (int i = 0; i < N_SRV; i++) srv_crash(&h->srv[i]);
    for (int i = 0; i < 2; i++) zmq_util_close(&h->raw[i]);
    zmq_util_close(&h->fake);
    shm_segment_close(&h->fake_seg);
    zmq_util_ctx_term(h->ctx);
    void *t = h->tmp;
    free(h);
    return tmpdir_teardown(&t);
}

static void step(H *h)
{
    for (int i = 0; i < N_SRV; i++) srv_step(&h->srv[i]);
    for (int i = 0; i < N_CLI; i++) cli_step(&h->cli[i]);
}

/* Steps until cond holds; fails after ms milliseconds. */
#define RUN_UNTIL(h, cond, ms)                                                                   \
    do {                                                                                         \
        int64_t deadline_ = stage_now_ms() + (ms);                                               \
        while (!(cond)) {                                                                        \
            if (stage_now_ms() > deadline_) fail_msg("no '%s' after %d ms", #cond, (int)(ms));   \
            step(h);                                                                             \
        }                                                                                        \
    } while (0)

static void run_for(H *h, int ms)
{
    int64_t end = stage_now_ms() + ms;
    while (stage_now_ms() < end) step(h);
}

static void want_range(Cli *u, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = lo; k < hi; k++) stage_client_want(&u->c, k);
}

/* ---- a: the basic flow ----------------------------------------------------------------------- */

static void test_basic(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    want_range(u, 0, 20);
    assert_int_equal(stage_client_pending(&u->c), 20);
    RUN_UNTIL(h, u->n_delivered == 20 && stage_client_pending(&u->c) == 0, 5000);
    expect_exactly_once(u, 0, 20);
    /* The window was used, never exceeded, on either side. */
    assert_int_equal(v->max_per_client, 2);
    assert_int_equal(u->max_outstanding, 2);
    /* 20 results through 8 slots: slots came back, and all of them do in the end. */
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    assert_int_equal(v->s.n_done, 20);
    assert_int_equal(u->c.n_results, 20);
    assert_int_equal(u->c.n_duplicates, 0);
    assert_int_equal(u->c.n_reissued, 0);
    assert_int_equal(u->c.n_peer_deaths, 0);
    assert_int_equal(u->c.n_malformed, 0);
    assert_int_equal(v->s.n_malformed, 0);
    assert_int_equal(v->s.n_stale, 0);
    assert_int_equal(stage_client_live_peers(&u->c), 1);
    WireMap info;
    uint64_t n_images;
    const char *what;
    size_t len;
    Err err = {{0}};
    assert_int_equal(stage_client_info(&u->c, &info), 1);
    if (wire_get_uint(&info, "n_images", &n_images, &err) ||
        wire_get_str(&info, "what", &what, &len, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(n_images, 123);
    assert_int_equal(len, 4);
    assert_memory_equal(what, "test", 4);
}

/* ---- b: a producer dies and restarts --------------------------------------------------------- */

/* Runs until the client holds n results and 2 more keys are being worked on at producer v. */
static void run_until_stuck(H *h, Srv *v, Cli *u, int n)
{
    v->budget = n;
    RUN_UNTIL(h, u->n_delivered == n && srv_tasks(v) == 2 && u->c.peers[0].outstanding == 2,
              3000);
}

static void producer_restart(void **state, int wait_dead)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    u->hold = 1;
    want_range(u, 0, 20);
    run_until_stuck(h, v, u, 6);
    uint64_t old_inc = v->s.inc;
    char old_seg[SHM_NAME_CAP];
    snprintf(old_seg, sizeof old_seg, "%s", v->s.seg.name);
    srv_crash(v);
    /* The dead producer's results stay readable (the mapping outlives the name). */
    for (int i = 0; i < MAX_HELD; i++)
        if (u->res_used[i]) check_result(&u->res[i]);
    cli_release_all(u);
    u->hold = 0;
    int64_t t_crash = stage_now_ms();
    if (wait_dead) {
        RUN_UNTIL(h, u->c.n_peer_deaths == 1, 5 * DEAD_MS);
        if (stage_now_ms() - t_crash < DEAD_MS / 2)
            fail_msg("declared dead %lld ms after the crash; dead_ms is %d",
                     (long long)(stage_now_ms() - t_crash), DEAD_MS);
        assert_int_equal(u->c.n_reissued, 2);
        assert_int_equal(stage_client_live_peers(&u->c), 0);
        run_for(h, 2 * HB_MS);
        assert_int_equal(u->n_delivered, 6);
    } else {
        run_for(h, 10); /* lets ZeroMQ finish closing the old listener */
    }
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    assert_true(v->s.inc != old_inc);
    assert_string_not_equal(v->s.seg.name, old_seg);
    int64_t t_start = stage_now_ms();
    RUN_UNTIL(h, u->n_delivered == 20, 5000);
    int64_t recovered_ms = stage_now_ms() - t_start;
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    expect_exactly_once(u, 0, 20);
    assert_true(u->c.n_reissued >= 2);
    assert_int_equal(u->c.peers[0].inc, v->s.inc);
    assert_int_equal(u->c.n_duplicates, 0);
    for (uint64_t k = 0; k < 20; k++)
        if (strcmp(u->seg_of[k], k < 6 ? old_seg : v->s.seg.name) != 0)
            fail_msg("key %llu came from segment %s", (unsigned long long)k, u->seg_of[k]);
    assert_int_equal(v->s.n_done, 14);
    /* A producer back at once is noticed at the consumer's first message to it (the new
     * incarnation answers a stranger with a heartbeat, the consumer says hello): well before
     * dead_ms, and without declaring anything dead. After a death, recovery takes reconnects. */
    if (!wait_dead) {
        assert_int_equal(u->c.n_peer_deaths, 0);
        if (recovered_ms >= DEAD_MS)
            fail_msg("%lld ms to deliver the rest after an immediate restart; dead_ms is %d",
                     (long long)recovered_ms, DEAD_MS);
    } else if (recovered_ms >= 5 * DEAD_MS) {
        fail_msg("%lld ms to deliver the rest after the restart; dead_ms is %d",
                 (long long)recovered_ms, DEAD_MS);
    }
}

static void test_producer_restart_after_dead(void **state) { producer_restart(state, 1); }
static void test_producer_restart_at_once(void **state) { producer_restart(state, 0); }

/* ---- c: two producers, one dies for good ----------------------------------------------------- */

static void test_two_producers_one_dies(void **state)
{
    H *h = *state;
    Srv *v0 = &h->srv[0], *v1 = &h->srv[1];
    Cli *u = &h->cli[0];
    srv_start(v0, h->ctx, h->ep[0], "tst0", 8);
    srv_start(v1, h->ctx, h->ep[1], "tst1", 8);
    cli_start(u, h->ctx, "w", h->eps, 2, 2);
    RUN_UNTIL(h, stage_client_live_peers(&u->c) == 2, 2000);
    v0->answer = 0; /* nothing gets done until producer 1 is stuck */
    v1->budget = 3;
    want_range(u, 0, 40);
    RUN_UNTIL(h, v1->n_answered == 3 && srv_tasks(v1) == 2 && u->c.peers[1].outstanding == 2,
              3000);
    srv_crash(v1);
    v0->answer = 1;
    RUN_UNTIL(h, u->n_delivered == 40, 5000);
    expect_exactly_once(u, 0, 40);
    assert_int_equal(u->c.n_peer_deaths, 1);
    assert_true(u->c.n_reissued >= 2);
    assert_int_equal(stage_client_live_peers(&u->c), 1);
    assert_int_equal(v0->s.n_done, 37);
    assert_int_equal(u->c.n_duplicates, 0);
    RUN_UNTIL(h, stage_server_busy(&v0->s) == 0, 2000);
}

/* ---- d: a consumer replaced ------------------------------------------------------------------ */

static void test_consumer_replaced(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *a = &h->cli[0], *b = &h->cli[1];
    srv_start(v, h->ctx, h->ep[0], "tst0", 4);
    cli_start(a, h->ctx, "w", h->eps, 1, 4);
    a->hold = 1;
    v->budget = 2;
    want_range(a, 0, 10);
    /* A holds 2 results and 2 more are being worked on: the slots are full, so A (which counts
     * the slots it holds) sends nothing more, though its window would allow it. */
    RUN_UNTIL(h, cli_held(a) == 2 && srv_tasks(v) == 2, 3000);
    run_for(h, 5 * HB_MS);
    assert_int_equal(v->s.q_len, 0);
    assert_int_equal(a->c.peers[0].outstanding, 2);
    assert_int_equal(stage_server_busy(&v->s), 4);
    cli_crash(a);
    cli_start(b, h->ctx, "w", h->eps, 1, 2);
    want_range(b, 100, 110);
    RUN_UNTIL(h, v->s.clients[0].inc == b->c.inc, 2000);
    assert_int_equal(v->s.n_clients, 1);
    assert_int_equal(v->s.n_released, 1);
    assert_int_equal(stage_server_busy(&v->s), 2); /* A's held slots came back; work goes on */
    v->budget = -1;
    RUN_UNTIL(h, b->n_delivered == 10, 5000);
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    expect_exactly_once(b, 100, 110);
    /* A's working and queued requests were never answered to anyone. */
    assert_int_equal(b->c.n_duplicates, 0);
    assert_int_equal(v->s.n_done, 2 + 10);
    assert_int_equal(v->s.q_len, 0);
}

/* ---- raw messages ---------------------------------------------------------------------------- */

static void raw_connect(H *h, ZmqSocket *z, const char *ep)
{
    ZmqSocketConfig zc = {.type = ZMQ_DEALER, .max_msg_bytes = 1 << 20, .linger_ms = 0};
    Err err = {{0}};
    if (zmq_util_connect(z, h->ctx, &zc, ep, &err)) fail_msg("%s", err.msg);
}

static void raw_bytes(ZmqSocket *z, const void *data, size_t len)
{
    Err err = {{0}};
    if (zmq_util_send(z, data, len, 1000, &err)) fail_msg("%s", err.msg);
}

static void raw_send(ZmqSocket *z, WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    raw_bytes(z, data, len);
    wire_writer_free(w);
}

/* A message of type with the uint fields named in keys (NULL-terminated). */
static void raw_msg(ZmqSocket *z, const char *type, const char *const *keys, const uint64_t *vals)
{
    uint32_t n = 0;
    while (keys[n]) n++;
    WireWriter w;
    wire_writer_init(&w, type, n);
    for (uint32_t i = 0; i < n; i++) wire_put_uint(&w, keys[i], vals[i]);
    raw_send(z, &w);
}

static void raw_req(ZmqSocket *z, uint64_t inc, uint64_t to, uint64_t key)
{
    raw_msg(z, "req", (const char *const[]){"inc", "to", "key", "want", NULL},
            (const uint64_t[]){inc, to, key, key ^ REQ_XOR});
}

static void raw_credit(ZmqSocket *z, uint64_t inc, uint64_t to, uint64_t slot)
{
    raw_msg(z, "credit", (const char *const[]){"inc", "to", "slot", NULL},
            (const uint64_t[]){inc, to, slot});
}

static void raw_hello(ZmqSocket *z, const char *name, uint64_t inc)
{
    WireWriter w;
    wire_writer_init(&w, "hello", 2);
    wire_put_str(&w, "name", name);
    wire_put_uint(&w, "inc", inc);
    raw_send(z, &w);
}

/* Steps until z (a DEALER, or with id a ROUTER, which puts the sender's routing id there)
 * receives a message other than hb and repeated hellos (a consumer sends one every hb_ms until
 * it reads the welcome): its type must be type; the uint fields k1 and k2 (when not NULL) go to
 * *v1 and *v2. */
static void expect_msg(H *h, ZmqSocket *z, uint8_t *id, size_t *id_len, const char *type,
                       const char *k1, uint64_t *v1, const char *k2, uint64_t *v2)
{
    WireLimits lim = wire_limits_default();
    int64_t deadline = stage_now_ms() + 2000;
    for (;;) {
        if (stage_now_ms() > deadline) fail_msg("no '%s' message", type);
        step(h);
        zmq_msg_t msg;
        Err err = {{0}};
        int rc = id ? zmq_util_router_recv(z, id, id_len, &msg, &err)
                    : zmq_util_recv(z, &msg, 1, &err);
        if (rc == ZMQ_UTIL_AGAIN) {
            zmq_msg_close(&msg);
            continue;
        }
        if (rc) fail_msg("%s", err.msg);
        WireMsg m;
        wire_msg_init(&m);
        if (wire_decode(&m, zmq_msg_data(&msg), zmq_msg_size(&msg), &lim, &err))
            fail_msg("%s", err.msg);
        int skip = !strcmp(m.type, "hb") || (!strcmp(m.type, "hello") && strcmp(type, "hello"));
        if (!skip) {
            if (strcmp(m.type, type) != 0) fail_msg("got '%s', expected '%s'", m.type, type);
            if ((k1 && wire_get_uint(&m.root, k1, v1, &err)) ||
                (k2 && wire_get_uint(&m.root, k2, v2, &err)))
                fail_msg("%s", err.msg);
        }
        wire_msg_free(&m);
        zmq_msg_close(&msg);
        if (!skip) return;
    }
}

/* ---- e: duplicates and staleness ------------------------------------------------------------- */

static void test_duplicates_and_stale(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    /* A done for a cancelled key is credited back and counted, not delivered. */
    v->answer = 0;
    stage_client_want(&u->c, 7);
    RUN_UNTIL(h, srv_tasks(v) == 1, 2000);
    stage_client_cancel(&u->c, 7);
    assert_int_equal(stage_client_pending(&u->c), 0);
    assert_int_equal(u->c.peers[0].outstanding, 0);
    v->answer = 1;
    RUN_UNTIL(h, v->n_answered == 1 && u->c.n_duplicates == 1 && stage_server_busy(&v->s) == 0,
              2000);
    assert_int_equal(u->delivered[7], 0);
    assert_int_equal(u->c.n_results, 0);
    assert_int_equal(v->s.n_stale, 0);

    /* Raw consumers "raw" (inc 0x1111) and "raw2" (0x3333). Requests naming another incarnation
     * of either side are ignored; a good one is answered and its slot held by "raw". */
    ZmqSocket *r1 = &h->raw[0], *r2 = &h->raw[1];
    uint64_t inc, key, slot;
    raw_connect(h, r1, h->ep[0]);
    raw_connect(h, r2, h->ep[0]);
    raw_hello(r1, "raw", 0x1111);
    expect_msg(h, r1, NULL, NULL, "welcome", "inc", &inc, NULL, NULL);
    assert_int_equal(inc, v->s.inc);
    raw_hello(r2, "raw2", 0x1111); /* the same incarnation number: only the name differs */
    expect_msg(h, r2, NULL, NULL, "welcome", NULL, NULL, NULL, NULL);
    raw_req(r1, 0x1111, v->s.inc ^ 1, 1);
    raw_req(r1, 0x2222, v->s.inc, 2);
    raw_req(r1, 0x1111, v->s.inc, 3);
    expect_msg(h, r1, NULL, NULL, "done", "key", &key, "slot", &slot);
    assert_int_equal(key, 3);
    assert_int_equal(v->s.n_stale, 2);
    assert_int_equal(v->n_answered, 2);
    assert_int_equal(stage_server_busy(&v->s), 1);
    /* Credits naming another incarnation, a slot not held, or a slot held by another consumer. */
    raw_credit(r1, 0x1111, v->s.inc ^ 1, slot);
    raw_credit(r1, 0x2222, v->s.inc, slot);
    raw_credit(r1, 0x1111, v->s.inc, (slot + 1) % 8);
    raw_credit(r1, 0x1111, v->s.inc, 1000);
    raw_credit(r2, 0x1111, v->s.inc, slot);
    RUN_UNTIL(h, v->s.n_stale == 7, 2000);
    run_for(h, 2 * HB_MS);
    assert_int_equal(v->s.n_stale, 7);
    assert_int_equal(stage_server_busy(&v->s), 1);
    assert_int_equal(v->s.q_len, 0);
    assert_int_equal(v->n_answered, 2);
    /* The right credit frees it. */
    raw_credit(r1, 0x1111, v->s.inc, slot);
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    assert_int_equal(v->s.n_stale, 7);
    assert_int_equal(v->s.n_malformed, 0);
}

static void fake_send(H *h, const uint8_t *id, size_t id_len, WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    Err err = {{0}};
    if (zmq_util_router_send(&h->fake, id, id_len, data, len, &err)) fail_msg("%s", err.msg);
    wire_writer_free(w);
}

/* A done from the fake producer, incarnation inc, for key in slot 1. */
static void fake_done(H *h, const uint8_t *id, size_t id_len, uint64_t inc, uint64_t key)
{
    WireWriter w;
    int64_t shape[1] = {DATA_BYTES};
    wire_writer_init(&w, "done", 5);
    wire_put_uint(&w, "inc", inc);
    wire_put_uint(&w, "key", key);
    wire_put_uint(&w, "slot", 1);
    wire_put_tensor_shm(&w, "data", ST_U8, 1, shape, &h->fake_seg, 1, 0);
    wire_put_uint(&w, "tag", key * 3 + 1);
    fake_send(h, id, id_len, &w);
}

/* The consumer side: a done naming another producer incarnation than the one that welcomed it
 * is ignored (the key stays wanted); the right one is delivered and credited to that one. */
static void test_consumer_ignores_other_incarnation(void **state)
{
    H *h = *state;
    Cli *u = &h->cli[0];
    uint8_t id[ZMQ_UTIL_ID_CAP];
    size_t id_len = 0;
    uint64_t v;
    ZmqSocketConfig zc = {.type = ZMQ_ROUTER, .max_msg_bytes = 1 << 20, .linger_ms = 0};
    Err err = {{0}};
    if (zmq_util_bind(&h->fake, h->ctx, &zc, h->ep[0], &err) ||
        shm_segment_create(&h->fake_seg, "fake", 2, DATA_BYTES, &err))
        fail_msg("%s", err.msg);
    for (size_t j = 0; j < DATA_BYTES; j++) shm_slot(&h->fake_seg, 1)[j] = pattern(42, j);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    expect_msg(h, &h->fake, id, &id_len, "hello", "inc", &v, NULL, NULL);
    assert_int_equal(v, u->c.inc);
    WireWriter w;
    wire_writer_init(&w, "welcome", 4);
    wire_put_uint(&w, "inc", 0xAAAA);
    wire_put_str(&w, "segment", h->fake_seg.name);
    wire_put_uint(&w, "slots", h->fake_seg.n_slots);
    wire_put_uint(&w, "slot_bytes", h->fake_seg.slot_bytes);
    fake_send(h, id, id_len, &w);
    stage_client_want(&u->c, 42);
    expect_msg(h, &h->fake, id, &id_len, "req", "to", &v, NULL, NULL);
    assert_int_equal(v, 0xAAAA);
    fake_done(h, id, id_len, 0xBBBB, 42);
    run_for(h, 3 * HB_MS);
    assert_int_equal(u->n_delivered, 0);
    assert_int_equal(stage_client_pending(&u->c), 1);
    fake_done(h, id, id_len, 0xAAAA, 42);
    RUN_UNTIL(h, u->n_delivered == 1, 2000);
    assert_int_equal(u->delivered[42], 1);
    expect_msg(h, &h->fake, id, &id_len, "credit", "slot", &v, NULL, NULL);
    assert_int_equal(v, 1);
    assert_int_equal(u->c.n_duplicates, 0);
}

/* ---- f: malformed input ---------------------------------------------------------------------- */

static void test_malformed(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    ZmqSocket *r = &h->raw[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    raw_connect(h, r, h->ep[0]);
    raw_bytes(r, "\xc1 not msgpack", 14);
    assert_int_equal(zmq_send(r->sock, "a", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(r->sock, "b", 1, 0), 1);
    raw_msg(r, "req", (const char *const[]){"inc", NULL}, (const uint64_t[]){0x1111});
    raw_msg(r, "bogus", (const char *const[]){"inc", NULL}, (const uint64_t[]){0x1111});
    raw_msg(r, "hello", (const char *const[]){"inc", NULL}, (const uint64_t[]){0x1111});
    raw_msg(r, "credit", (const char *const[]){"inc", "to", NULL},
            (const uint64_t[]){0x1111, v->s.inc});
    raw_hello(r, "a-name-much-longer-than-the-32-byte-cap", 0x1111);
    RUN_UNTIL(h, v->s.n_malformed == 7, 2000);
    /* A heartbeat is not malformed; the server still serves a real consumer. */
    raw_msg(r, "hb", (const char *const[]){"inc", NULL}, (const uint64_t[]){0x1111});
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    want_range(u, 0, 6);
    RUN_UNTIL(h, u->n_delivered == 6, 3000);
    expect_exactly_once(u, 0, 6);
    assert_int_equal(v->s.n_malformed, 7);
    assert_int_equal(v->s.n_clients, 1); /* no hello above was accepted */
    assert_int_equal(u->c.n_malformed, 0);
}

/* ---- g: a fail answer ------------------------------------------------------------------------ */

static void test_fail(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    v->fail_key = 5;
    want_range(u, 0, 10);
    RUN_UNTIL(h, u->n_delivered == 9 && u->n_failed == 1, 3000);
    assert_int_equal(u->failed_key, 5);
    if (!strstr(u->failed_msg, "no such image: key 5"))
        fail_msg("error '%s', wanted 'no such image: key 5'", u->failed_msg);
    assert_int_equal(stage_client_pending(&u->c), 0);
    for (uint64_t k = 0; k < 10; k++)
        if (u->delivered[k] != (k != 5))
            fail_msg("key %llu delivered %d times", (unsigned long long)k, u->delivered[k]);
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    run_for(h, 2 * HB_MS);
    assert_int_equal(u->n_failed, 1);
    assert_int_equal(u->n_delivered, 9);
    assert_int_equal(v->s.n_failed, 1);
    assert_int_equal(v->s.n_done, 9);
}

/* ---- no leftovers ---------------------------------------------------------------------------- */

static void test_no_segments_left(void **state)
{
    (void)state;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "effdet-%ld-", (long)getpid());
    DIR *d = opendir("/dev/shm");
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) {
            closedir(d);
            fail_msg("/dev/shm/%s is left behind", e->d_name);
        }
    closedir(d);
}

int main(void)
{
    setenv("EFFDET_LOG", "error", 1); /* the warnings about bad input are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_basic, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_producer_restart_after_dead, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_producer_restart_at_once, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_two_producers_one_dies, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_replaced, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_and_stale, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_ignores_other_incarnation, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_malformed, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_fail, h_setup, h_teardown),
        cmocka_unit_test(test_no_segments_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
