/* stage_harness.h: the stage tests' harness (tests/unit/test_stage.c, the protocol through real
 * producers and consumers, and tests/unit/test_stage_raw.c, crafted raw messages): producers
 * (StageServer) and consumers (StageClient) of shared/stage.h in one process and one thread over
 * ipc:// endpoints in a scratch directory.
 *
 * A step pumps every server (requests become tasks, at most `answer` tasks are answered per step,
 * so work stays outstanding for a while) and polls every client once for a millisecond. Answers
 * carry a shared-memory tensor whose bytes are srv_pattern(key, i) and one inline uint (key*3+1),
 * both checked on delivery. Crashes are simulated by freeing a server or client without answering
 * or releasing. Every helper fails the running cmocka test (fail_msg) instead of returning an
 * error. Use: cmocka_unit_test_setup_teardown(test, h_setup, h_teardown); the test reads
 * (H *)*state. */
#ifndef EFFDET_TEST_STAGE_HARNESS_H
#define EFFDET_TEST_STAGE_HARNESS_H

#include <stddef.h>
#include <stdint.h>

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

/* Byte i of the result tensor for key. */
uint8_t srv_pattern(uint64_t key, size_t i);

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

/* Starts producer v (n_slots slots of DATA_BYTES) bound at ep; it answers one task per step. */
void srv_start(Srv *v, void *ctx, const char *ep, const char *tag, uint32_t n_slots);
/* Tasks taken and not yet answered. */
int srv_tasks(const Srv *v);
/* A crash: tasks are dropped unanswered, the socket closed and the segment unlinked. */
void srv_crash(Srv *v);

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

/* Starts consumer u named name, connected to the n producers eps, with the given window. */
void cli_start(Cli *u, void *ctx, const char *name, const char *const *eps, int n, uint32_t window);
/* Results held (hold = 1) and not yet released. */
int cli_held(const Cli *u);
/* Checks the result's tensor (bytes against srv_pattern) and inline field; returns the bytes. */
const uint8_t *cli_check_result(const StageResult *r);
/* Releases every held result. */
void cli_release_all(Cli *u);
/* A crash: held results are dropped without credits. */
void cli_crash(Cli *u);
/* Fails unless each of keys [lo, hi) was delivered exactly once, and nothing else. */
void cli_expect_exactly_once(const Cli *u, uint64_t lo, uint64_t hi);
/* Wants keys [lo, hi). */
void cli_want_range(Cli *u, uint64_t lo, uint64_t hi);

/* ---- the harness ----------------------------------------------------------------------------- */

typedef struct H {
    TmpDir *tmp;
    void *ctx;
    char ep[N_SRV][ZMQ_UTIL_ENDPOINT_CAP];
    const char *eps[N_SRV];
    Srv srv[N_SRV];
    Cli cli[N_CLI];
    ZmqSocket raw[2]; /* DEALERs for crafted messages (test_stage_raw.c) */
    ZmqSocket fake;   /* a ROUTER playing a producer (test_stage_raw.c) */
    ShmSegment fake_seg;
} H;

/* A scratch directory, a ZeroMQ context and endpoints ep[i] = ipc://<dir>/p<i>.sock; nothing
 * started. The teardown crashes whatever is up, closes the raw sockets and removes the rest. */
int h_setup(void **state);
int h_teardown(void **state);

/* One step of every producer, then of every consumer. */
void h_step(H *h);
/* Steps for ms milliseconds. */
void h_run_for(H *h, int ms);

/* Steps until cond holds; fails (cmocka fail_msg) after ms milliseconds. */
#define RUN_UNTIL(h, cond, ms)                                                                   \
    do {                                                                                         \
        int64_t deadline_ = stage_now_ms() + (ms);                                               \
        while (!(cond)) {                                                                        \
            if (stage_now_ms() > deadline_) fail_msg("no '%s' after %d ms", #cond, (int)(ms));   \
            h_step(h);                                                                           \
        }                                                                                        \
    } while (0)

/* Fails when a shared-memory segment of this process is left in /dev/shm. */
void h_expect_no_segments_left(void);

#endif
