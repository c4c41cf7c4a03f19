/* stage_harness.c: producers, consumers and the stepping loop of the stage tests (see
 * stage_harness.h). */
#include "tests/support/stage_harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint8_t srv_pattern(uint64_t key, size_t i) { return (uint8_t)(key * 37 + i * 11 + 5); }

/* ---- producers ------------------------------------------------------------------------------- */

static void put_info(void *app, WireWriter *w)
{
    (void)app;
    wire_put_uint(w, "n_images", 123);
    wire_put_str(w, "what", "test");
}

void srv_start(Srv *v, void *ctx, const char *ep, const char *tag, uint32_t n_slots)
{
    memset(v, 0, sizeof *v);
    StageServerConfig cfg = {.endpoint = ep, .seg_tag = tag, .n_slots = n_slots,
                             .slot_bytes = DATA_BYTES, .queue_cap = 64, .hb_ms = HB_MS,
                             .limits = wire_limits_default(), .n_info = 2, .put_info = put_info};
    Err err = {{0}};
    if (stage_server_init(&v->s, ctx, &cfg, &err)) fail_msg("%s", err.msg);
    v->up = 1, v->answer = 1, v->budget = -1, v->fail_key = NO_KEY;
}

int srv_tasks(const Srv *v)
{
    int n = 0;
    for (int i = 0; i < MAX_TASKS; i++) n += v->task_used[i];
    return n;
}

void srv_crash(Srv *v)
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
        for (size_t j = 0; j < DATA_BYTES; j++) p[j] = srv_pattern(t->key, j);
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

static void put_req(void *app, uint64_t key, WireWriter *w)
{
    (void)app;
    wire_put_uint(w, "want", key ^ REQ_XOR);
}

void cli_start(Cli *u, void *ctx, const char *name, const char *const *eps, int n,
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

int cli_held(const Cli *u)
{
    int n = 0;
    for (int i = 0; i < MAX_HELD; i++) n += u->res_used[i];
    return n;
}

static void check_bytes(uint64_t key, const uint8_t *p)
{
    for (size_t j = 0; j < DATA_BYTES; j++)
        if (p[j] != srv_pattern(key, j))
            fail_msg("key %llu: byte %zu is %u, expected %u", (unsigned long long)key, j, p[j],
                     srv_pattern(key, j));
}

const uint8_t *cli_check_result(const StageResult *r)
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
        cli_check_result(r);
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

void cli_release_all(Cli *u)
{
    for (int i = 0; i < MAX_HELD; i++)
        if (u->res_used[i]) {
            stage_client_release(&u->c, &u->res[i]);
            u->res_used[i] = 0;
        }
}

void cli_crash(Cli *u)
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

void cli_expect_exactly_once(const Cli *u, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = 0; k < KEYS; k++) {
        int want = k >= lo && k < hi;
        if (u->delivered[k] != want)
            fail_msg("key %llu delivered %d times, expected %d", (unsigned long long)k,
                     u->delivered[k], want);
    }
}

void cli_want_range(Cli *u, uint64_t lo, uint64_t hi)
{
    for (uint64_t k = lo; k < hi; k++) stage_client_want(&u->c, k);
}

/* ---- the harness ----------------------------------------------------------------------------- */

int h_setup(void **state)
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

int h_teardown(void **state)
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

void h_step(H *h)
{
    for (int i = 0; i < N_SRV; i++) srv_step(&h->srv[i]);
    for (int i = 0; i < N_CLI; i++) cli_step(&h->cli[i]);
}

void h_run_for(H *h, int ms)
{
    int64_t end = stage_now_ms() + ms;
    while (stage_now_ms() < end) h_step(h);
}

void h_expect_no_segments_left(void)
{
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
