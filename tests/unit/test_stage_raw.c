/* test_stage_raw.c: the stage protocol (shared/stage.h) against crafted messages, with the harness
 * of tests/support/stage_harness.h (one process, one thread, ipc:// endpoints in a scratch
 * directory). Raw DEALER sockets play consumers toward a real producer, and a raw ROUTER plays a
 * producer toward a real consumer, to send what a correct peer never would.
 * Cases: duplicates and stale messages (a done for a cancelled key; requests and credits naming
 * another incarnation, a slot not held or held by another consumer); a consumer ignoring a done
 * from another producer incarnation; malformed input to the server. The flow between real peers
 * is tests/unit/test_stage.c. The last case checks that no segment of this process is left in
 * /dev/shm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "shared/stage.h"
#include "tests/support/stage_harness.h"

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
        h_step(h);
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
    h_run_for(h, 2 * HB_MS);
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
    for (size_t j = 0; j < DATA_BYTES; j++) shm_slot(&h->fake_seg, 1)[j] = srv_pattern(42, j);
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
    h_run_for(h, 3 * HB_MS);
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
    cli_want_range(u, 0, 6);
    RUN_UNTIL(h, u->n_delivered == 6, 3000);
    cli_expect_exactly_once(u, 0, 6);
    assert_int_equal(v->s.n_malformed, 7);
    assert_int_equal(v->s.n_clients, 1); /* no hello above was accepted */
    assert_int_equal(u->c.n_malformed, 0);
}

/* ---- no leftovers ---------------------------------------------------------------------------- */

static void test_no_segments_left(void **state)
{
    (void)state;
    h_expect_no_segments_left();
}

int main(void)
{
    setenv("EFFDET_LOG", "error", 1); /* the warnings about bad input are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_duplicates_and_stale, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_ignores_other_incarnation, h_setup,
                                        h_teardown),
        cmocka_unit_test_setup_teardown(test_malformed, h_setup, h_teardown),
        cmocka_unit_test(test_no_segments_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
