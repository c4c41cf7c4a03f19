/* test_stage.c: the stage protocol (shared/stage.h) through real producers (StageServer) and
 * consumers (StageClient), driven by the harness of tests/support/stage_harness.h (one process,
 * one thread, ipc:// endpoints in a scratch directory; crashes simulated by freeing a server or
 * client without answering or releasing).
 * Cases: the basic flow (exactly once, window, slots returned, welcome info); a producer that
 * dies and restarts (after dead_ms and at once); two producers, one dying for good; a consumer
 * replaced under the same name; a fail answer. Crafted raw messages (duplicates and staleness,
 * incarnation checks, malformed input) are tests/unit/test_stage_raw.c. The last case checks that
 * no segment of this process is left in /dev/shm. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/stage.h"
#include "tests/support/stage_harness.h"

/* ---- a: the basic flow ----------------------------------------------------------------------- */

static void test_basic(void **state)
{
    H *h = *state;
    Srv *v = &h->srv[0];
    Cli *u = &h->cli[0];
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    cli_start(u, h->ctx, "w", h->eps, 1, 2);
    cli_want_range(u, 0, 20);
    assert_int_equal(stage_client_pending(&u->c), 20);
    RUN_UNTIL(h, u->n_delivered == 20 && stage_client_pending(&u->c) == 0, 5000);
    cli_expect_exactly_once(u, 0, 20);
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
    cli_want_range(u, 0, 20);
    run_until_stuck(h, v, u, 6);
    uint64_t old_inc = v->s.inc;
    char old_seg[SHM_NAME_CAP];
    snprintf(old_seg, sizeof old_seg, "%s", v->s.seg.name);
    srv_crash(v);
    /* The dead producer's results stay readable (the mapping outlives the name). */
    for (int i = 0; i < MAX_HELD; i++)
        if (u->res_used[i]) cli_check_result(&u->res[i]);
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
        h_run_for(h, 2 * HB_MS);
        assert_int_equal(u->n_delivered, 6);
    } else {
        h_run_for(h, 10); /* lets ZeroMQ finish closing the old listener */
    }
    srv_start(v, h->ctx, h->ep[0], "tst0", 8);
    assert_true(v->s.inc != old_inc);
    assert_string_not_equal(v->s.seg.name, old_seg);
    int64_t t_start = stage_now_ms();
    RUN_UNTIL(h, u->n_delivered == 20, 5000);
    int64_t recovered_ms = stage_now_ms() - t_start;
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    cli_expect_exactly_once(u, 0, 20);
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
    cli_want_range(u, 0, 40);
    RUN_UNTIL(h, v1->n_answered == 3 && srv_tasks(v1) == 2 && u->c.peers[1].outstanding == 2,
              3000);
    srv_crash(v1);
    v0->answer = 1;
    RUN_UNTIL(h, u->n_delivered == 40, 5000);
    cli_expect_exactly_once(u, 0, 40);
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
    cli_want_range(a, 0, 10);
    /* A holds 2 results and 2 more are being worked on: the slots are full, so A (which counts
     * the slots it holds) sends nothing more, though its window would allow it. */
    RUN_UNTIL(h, cli_held(a) == 2 && srv_tasks(v) == 2, 3000);
    h_run_for(h, 5 * HB_MS);
    assert_int_equal(v->s.q_len, 0);
    assert_int_equal(a->c.peers[0].outstanding, 2);
    assert_int_equal(stage_server_busy(&v->s), 4);
    cli_crash(a);
    cli_start(b, h->ctx, "w", h->eps, 1, 2);
    cli_want_range(b, 100, 110);
    RUN_UNTIL(h, v->s.clients[0].inc == b->c.inc, 2000);
    assert_int_equal(v->s.n_clients, 1);
    assert_int_equal(v->s.n_released, 1);
    assert_int_equal(stage_server_busy(&v->s), 2); /* A's held slots came back; work goes on */
    v->budget = -1;
    RUN_UNTIL(h, b->n_delivered == 10, 5000);
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    cli_expect_exactly_once(b, 100, 110);
    /* A's working and queued requests were never answered to anyone. */
    assert_int_equal(b->c.n_duplicates, 0);
    assert_int_equal(v->s.n_done, 2 + 10);
    assert_int_equal(v->s.q_len, 0);
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
    cli_want_range(u, 0, 10);
    RUN_UNTIL(h, u->n_delivered == 9 && u->n_failed == 1, 3000);
    assert_int_equal(u->failed_key, 5);
    if (!strstr(u->failed_msg, "no such image: key 5"))
        fail_msg("error '%s', wanted 'no such image: key 5'", u->failed_msg);
    assert_int_equal(stage_client_pending(&u->c), 0);
    for (uint64_t k = 0; k < 10; k++)
        if (u->delivered[k] != (k != 5))
            fail_msg("key %llu delivered %d times", (unsigned long long)k, u->delivered[k]);
    RUN_UNTIL(h, stage_server_busy(&v->s) == 0, 2000);
    h_run_for(h, 2 * HB_MS);
    assert_int_equal(u->n_failed, 1);
    assert_int_equal(u->n_delivered, 9);
    assert_int_equal(v->s.n_failed, 1);
    assert_int_equal(v->s.n_done, 9);
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
        cmocka_unit_test_setup_teardown(test_basic, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_producer_restart_after_dead, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_producer_restart_at_once, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_two_producers_one_dies, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_consumer_replaced, h_setup, h_teardown),
        cmocka_unit_test_setup_teardown(test_fail, h_setup, h_teardown),
        cmocka_unit_test(test_no_segments_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
