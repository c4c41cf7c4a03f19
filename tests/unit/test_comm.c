/* test_comm.c: the shared-memory communicator (worker/comm.h) and data-parallel training, with
 * real processes (fork):
 * - allreduce f32 (odd sizes, in pieces and whole) and f64 over 1, 2 and 3 ranks equals the
 *   rank-order sum, bit for bit, on every rank; the timing of a D0-sized gradient block;
 * - a rank that never joins is named by the error, within the timeout; a rank that exits is
 *   noticed before the timeout; a failed handle keeps failing;
 * - data-parallel training: two ranks with batch 2 and synchronized BN end with the weights of one
 *   worker with batch 4 (within fp32 summation noise), bit-identical to each other; without
 *   synchronized BN the difference is clearly larger (so the comparison can fail).
 *
 * The parent process never runs OpenMP code: libgomp's thread pool does not survive fork, so all
 * compute happens in children, which report through a shared anonymous mapping. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/rng.h"
#include "worker/comm.h"
#include "worker/trainer.h"

enum { MAX_RANKS = 3, CHILD_ALARM_S = 120 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void comm_name(char *out, size_t cap, int n)
{
    snprintf(out, cap, "/effdet-%d-comm-%d", (int)getpid(), n);
}

/* Shared between the parent and its children (MAP_SHARED before fork). */
static void *shared_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

typedef int (*ChildFn)(int rank, int world, void *arg);

/* Runs fn(rank) in `world` children and fails unless every child exits 0. A child that hangs is
 * killed by its alarm, which fails the test instead of hanging it. */
static void run_ranks(int world, ChildFn fn, void *arg)
{
    pid_t pids[MAX_RANKS];
    for (int r = 0; r < world; r++) {
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) {
            alarm(CHILD_ALARM_S);
            _exit(fn(r, world, arg));
        }
    }
    int bad = 0;
    for (int r = 0; r < world; r++) {
        int status;
        assert_int_equal(waitpid(pids[r], &status, 0), pids[r]);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            print_error("rank %d of %d: %s %d\n", r, world,
                        WIFEXITED(status) ? "exit status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            bad = 1;
        }
    }
    assert_int_equal(bad, 0);
}

/* ---- allreduce ---------------------------------------------------------------------------- */

enum { N32 = 1000003, N64 = 20011 }; /* N64 > one f64 slot (16384): two pieces */

typedef struct ReduceJob {
    char name[64];
    size_t max_floats;
    float *out32;  /* (world, N32) */
    double *out64; /* (world, N64) */
} ReduceJob;

/* noinline: GNU C contracts a * b + c into an FMA across inlined code, which would round the
 * expected sums differently from the rounded values the ranks reduce. */
static __attribute__((noinline)) float value32(int rank, size_t i)
{
    return (float)sin(0.001 * i + rank) * (1.0f + rank);
}
static __attribute__((noinline)) double value64(int rank, size_t i)
{
    return 1e-3 * i + 1.0 / (3.0 + rank) + rank * 1e6;
}

static int reduce_child(int rank, int world, void *arg)
{
    ReduceJob *j = arg;
    Err err;
    omp_set_num_threads(1); /* the ranks share two cores */
    Comm *c = comm_shm_open(j->name, rank, world, j->max_floats, 10000, &err);
    if (!c) return fprintf(stderr, "rank %d: %s\n", rank, err.msg), 1;
    float *v32 = j->out32 + (size_t)rank * N32;
    double *v64 = j->out64 + (size_t)rank * N64;
    for (size_t i = 0; i < N32; i++) v32[i] = value32(rank, i);
    for (size_t i = 0; i < N64; i++) v64[i] = value64(rank, i);
    int rc = comm_allreduce_f32(c, v32, N32, &err);
    if (rc == 0) rc = comm_allreduce_f64(c, v64, N64, &err);
    if (rc != 0) fprintf(stderr, "rank %d: %s\n", rank, err.msg);
    comm_close(c);
    return rc != 0;
}

static void check_reduce(int world, size_t max_floats, int id)
{
    ReduceJob j = {.max_floats = max_floats};
    comm_name(j.name, sizeof j.name, id);
    j.out32 = shared_alloc((size_t)world * N32 * sizeof(float));
    j.out64 = shared_alloc((size_t)world * N64 * sizeof(double));
    run_ranks(world, reduce_child, &j);
    size_t bad32 = 0, bad64 = 0;
    for (size_t i = 0; i < N32; i++) {
        float want = value32(0, i);
        for (int r = 1; r < world; r++) want += value32(r, i);
        for (int r = 0; r < world; r++) bad32 += memcmp(&j.out32[(size_t)r * N32 + i], &want, 4) != 0;
    }
    for (size_t i = 0; i < N64; i++) {
        double want = value64(0, i);
        for (int r = 1; r < world; r++) want += value64(r, i);
        for (int r = 0; r < world; r++) bad64 += memcmp(&j.out64[(size_t)r * N64 + i], &want, 8) != 0;
    }
    print_message("world %d, max_floats %zu: %zu f32 and %zu f64 values differ from the rank-order "
                  "sum\n", world, max_floats, bad32, bad64);
    assert_int_equal(bad32, 0);
    assert_int_equal(bad64, 0);
    /* Rank 0 unlinked the name on close. */
    assert_int_equal(shm_open(j.name, O_RDONLY, 0), -1);
    assert_int_equal(errno, ENOENT);
    munmap(j.out32, (size_t)world * N32 * sizeof(float));
    munmap(j.out64, (size_t)world * N64 * sizeof(double));
}

static void test_allreduce(void **state)
{
    check_reduce(1, N32, 1);
    check_reduce(2, N32, 2);      /* one piece */
    check_reduce(3, 262144, 3);   /* four pieces, the last one short */
    check_reduce(2, 100000, 4);
}

enum { GRAD_FLOATS = 3900000, TIMED_REPS = 10 };

typedef struct TimingJob {
    char name[64];
    double *seconds; /* (2), per allreduce, each rank's view */
} TimingJob;

static int timing_child(int rank, int world, void *arg)
{
    TimingJob *j = arg;
    Err err;
    omp_set_num_threads(1);
    Comm *c = comm_shm_open(j->name, rank, world, GRAD_FLOATS, 10000, &err);
    float *g = malloc(GRAD_FLOATS * sizeof(float));
    if (!c || !g) return fprintf(stderr, "rank %d: %s\n", rank, c ? "out of memory" : err.msg), 1;
    for (size_t i = 0; i < GRAD_FLOATS; i++) g[i] = 1e-6f * (float)(i % 1000);
    int rc = comm_allreduce_f32(c, g, GRAD_FLOATS, &err); /* warm: first touch of the pages */
    double t0 = now_s();
    for (int k = 0; k < TIMED_REPS && rc == 0; k++) rc = comm_allreduce_f32(c, g, GRAD_FLOATS, &err);
    j->seconds[rank] = (now_s() - t0) / TIMED_REPS;
    if (rc != 0) fprintf(stderr, "rank %d: %s\n", rank, err.msg);
    free(g);
    comm_close(c);
    return rc != 0;
}

static void test_allreduce_timing(void **state)
{
    TimingJob j;
    comm_name(j.name, sizeof j.name, 5);
    j.seconds = shared_alloc(2 * sizeof(double));
    run_ranks(2, timing_child, &j);
    print_message("allreduce_f32 of %d floats over 2 ranks (1 thread each): %.2f ms (rank 0), "
                  "%.2f ms (rank 1)\n", GRAD_FLOATS, j.seconds[0] * 1e3, j.seconds[1] * 1e3);
    assert_true(j.seconds[0] > 0 && j.seconds[1] > 0);
    munmap(j.seconds, 2 * sizeof(double));
}

/* ---- failures ------------------------------------------------------------------------------ */

static void test_missing_rank(void **state)
{
    char name[64];
    comm_name(name, sizeof name, 6);
    Err err = {{0}};
    double t0 = now_s();
    Comm *c = comm_shm_open(name, 0, 2, 1000, 600, &err);
    double waited = now_s() - t0;
    print_message("missing rank after %.2f s: %s\n", waited, err.msg);
    assert_null(c);
    if (!strstr(err.msg, "rank(s) 1") || !strstr(err.msg, name))
        fail_msg("'%s' does not name rank 1 and the segment", err.msg);
    assert_true(waited >= 0.55 && waited < 5.0);
    assert_int_equal(shm_open(name, O_RDONLY, 0), -1); /* removed by the failed open */

    /* A rank that is not rank 0 waits for the segment as long as its timeout, then fails. */
    comm_name(name, sizeof name, 7);
    c = comm_shm_open(name, 1, 2, 1000, 300, &err);
    assert_null(c);
    print_message("no rank 0: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "rank 0"));
}

static int leave_child(int rank, int world, void *arg)
{
    Err err;
    Comm *c = comm_shm_open(arg, 1, 2, 1000, 5000, &err);
    if (!c) return fprintf(stderr, "%s\n", err.msg), 1;
    return 0; /* exits without closing: a dead peer */
}

static void test_dead_rank(void **state)
{
    char name[64];
    comm_name(name, sizeof name, 8);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(CHILD_ALARM_S);
        _exit(leave_child(1, 2, name));
    }
    Err err;
    Comm *c = comm_shm_open(name, 0, 2, 1000, 4000, &err);
    if (!c) fail_msg("%s", err.msg);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid); /* reaped: its pid no longer exists */
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    double v[3] = {1, 2, 3}, t0 = now_s();
    assert_int_equal(comm_allreduce_f64(c, v, 3, &err), -1);
    double waited = now_s() - t0;
    print_message("dead rank after %.2f s: %s\n", waited, err.msg);
    assert_non_null(strstr(err.msg, "rank(s) 1 (its process has exited)"));
    assert_true(waited < 2.0); /* noticed before the 4 s timeout */
    float f = 1;
    assert_int_equal(comm_allreduce_f32(c, &f, 1, &err), -1);
    assert_non_null(strstr(err.msg, "earlier failure"));
    comm_close(c);
    assert_int_equal(shm_open(name, O_RDONLY, 0), -1);
}

/* ---- data-parallel training ---------------------------------------------------------------- */

enum { GB = 4, H = 64, W = 64, M = 3, STEPS = 3, MAX_PARAMS = 8 << 20 };

typedef struct GlobalBatch {
    float input[GB * H * W * 3];
    float boxes[GB * M * 4];
    int32_t classes[GB * M];
} GlobalBatch;

/* The global batch of a step: random normalized images, two or three random boxes each. */
static void make_global_batch(GlobalBatch *b, long step)
{
    Rng r;
    rng_init(&r, 11, 3, (uint32_t)step);
    for (size_t i = 0; i < sizeof b->input / sizeof b->input[0]; i++) b->input[i] = rng_normal(&r);
    for (int i = 0; i < GB * M; i++) {
        float y = 2 + rng_uniform(&r) * 34, x = 2 + rng_uniform(&r) * 34;
        float h = 8 + rng_uniform(&r) * 24, w = 8 + rng_uniform(&r) * 24;
        b->boxes[4 * i + 0] = y, b->boxes[4 * i + 1] = x;
        b->boxes[4 * i + 2] = y + h, b->boxes[4 * i + 3] = x + w;
        b->classes[i] = (i / M) % 2 && i % M == 2 ? -1 : 1 + (int32_t)(rng_u32(&r) % 3);
    }
}

typedef struct DpJob {
    char name[64];
    int sync_bn;
    size_t *n_params;    /* (3): what each run wrote */
    float *params;       /* (3, MAX_PARAMS): the single worker's, then rank 0's and rank 1's */
    float *initial;      /* (MAX_PARAMS): the weights before the first step */
    double *loss;        /* (3): last step's loss as each reports it */
} DpJob;

/* world 1: the single worker with the whole batch (slot 0); world 2: rank r with images 2r, 2r+1
 * (slot 1 + r). */
static int dp_child(int rank, int world, void *arg)
{
    DpJob *j = arg;
    Err err;
    /* One thread everywhere: the ranks share two cores, and libgomp's spinning threads stall
     * when another process holds a core (docs/ARCHITECTURE.md, OpenBLAS section). */
    omp_set_num_threads(1);
    const int batch = GB / world, slot = world == 1 ? 0 : 1 + rank;
    TrainSettings s;
    train_settings_default(&s, "tf_efficientdet_d0", 3, batch, H, W);
    s.lr = 0.05, s.warmup_lr = 0.005, s.warmup_steps = 1, s.total_steps = STEPS;
    Trainer t;
    if (trainer_init(&t, &s, "cpu", NULL, &err) != 0) return fprintf(stderr, "%s\n", err.msg), 1;
    size_t n = t.model.table.n_params;
    if (n > MAX_PARAMS) return fprintf(stderr, "%zu parameters\n", n), 1;
    if (slot == 0) memcpy(j->initial, t.model.params, n * sizeof(float));
    Comm *c = NULL;
    if (world > 1) {
        c = comm_shm_open(j->name, rank, world, n, 30000, &err);
        if (!c || trainer_set_comm(&t, c, j->sync_bn, &err) != 0)
            return fprintf(stderr, "rank %d: %s\n", rank, err.msg), 1;
    }
    GlobalBatch *b = malloc(sizeof *b);
    int rc = b ? 0 : 1;
    for (long step = 0; step < STEPS && rc == 0; step++) {
        make_global_batch(b, step);
        const size_t first = (size_t)rank * batch;
        TrainStats st;
        rc = trainer_step(&t, b->input + first * H * W * 3, b->boxes + first * M * 4,
                          b->classes + first * M, NULL, M, &st, &err);
        /* Every rank must learn that rank 1 (or the single worker) wants to stop at the last step. */
        int any = -1;
        if (rc == 0) rc = trainer_agree_stop(&t, step == STEPS - 1 && rank == world - 1, &any, &err);
        if (rc == 0 && any != (step == STEPS - 1)) rc = err_set(&err, "agree_stop gave %d at step %ld", any, step);
        j->loss[slot] = st.loss;
    }
    if (rc != 0) fprintf(stderr, "rank %d of %d: %s\n", rank, world, b ? err.msg : "out of memory");
    j->n_params[slot] = n;
    memcpy(j->params + (size_t)slot * MAX_PARAMS, t.model.params, n * sizeof(float));
    free(b);
    trainer_free(&t);
    comm_close(c);
    return rc != 0;
}

typedef struct Diff {
    double max_abs, max_ref, max_update;
} Diff;

static Diff compare(const float *ref, const float *x, const float *initial, size_t n)
{
    Diff d = {0};
    for (size_t i = 0; i < n; i++) {
        d.max_abs = fmax(d.max_abs, fabs((double)ref[i] - x[i]));
        d.max_ref = fmax(d.max_ref, fabs((double)ref[i]));
        d.max_update = fmax(d.max_update, fabs((double)ref[i] - initial[i]));
    }
    return d;
}

/* Runs the single worker and the two ranks; returns max|a-b| / max|a| of rank 0 against the single
 * worker, and checks that the ranks agree bit for bit. */
static double dp_run(int sync_bn, int id)
{
    DpJob j = {.sync_bn = sync_bn};
    comm_name(j.name, sizeof j.name, id);
    j.n_params = shared_alloc(3 * sizeof(size_t));
    j.params = shared_alloc(3 * (size_t)MAX_PARAMS * sizeof(float));
    j.initial = shared_alloc((size_t)MAX_PARAMS * sizeof(float));
    j.loss = shared_alloc(3 * sizeof(double));
    double t0 = now_s();
    run_ranks(1, dp_child, &j);
    double t1 = now_s();
    run_ranks(2, dp_child, &j);
    double t2 = now_s();
    size_t n = j.n_params[0];
    assert_true(n > 0);
    assert_int_equal(j.n_params[1], n);
    assert_int_equal(j.n_params[2], n);
    assert_memory_equal(j.params + MAX_PARAMS, j.params + 2 * (size_t)MAX_PARAMS, n * sizeof(float));
    assert_true(j.loss[1] == j.loss[2]); /* every rank reports the global loss */
    Diff d = compare(j.params, j.params + MAX_PARAMS, j.initial, n);
    double rel = d.max_abs / d.max_ref;
    print_message("sync_bn %d: %zu params; single worker %.1f s, 2 ranks %.1f s; last loss %.6f "
                  "(single) vs %.6f (ranks); max|a-b| %.3g, max|a| %.3g, rel %.3g; largest update "
                  "%.3g (diff / update %.3g)\n", sync_bn, n, t1 - t0, t2 - t1, j.loss[0], j.loss[1],
                  d.max_abs, d.max_ref, rel, d.max_update, d.max_abs / d.max_update);
    munmap(j.n_params, 3 * sizeof(size_t));
    munmap(j.params, 3 * (size_t)MAX_PARAMS * sizeof(float));
    munmap(j.initial, (size_t)MAX_PARAMS * sizeof(float));
    munmap(j.loss, 3 * sizeof(double));
    return rel;
}

static void test_data_parallel(void **state)
{
    double rel_sync = dp_run(1, 9);
    double rel_local = dp_run(0, 10);
    /* Summation order alone (BN sums, conv weight gradients, the gradient allreduce) differs
     * between the runs: fp32 noise, far below 1e-4. Local BN statistics over half the batch are a
     * different computation, which must show. */
    assert_true(rel_sync < 1e-4);
    assert_true(rel_local > 10 * rel_sync);
    assert_true(rel_local > 1e-5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allreduce),
        cmocka_unit_test(test_allreduce_timing),
        cmocka_unit_test(test_missing_rank),
        cmocka_unit_test(test_dead_rank),
        cmocka_unit_test(test_data_parallel),
    };
    return cmocka_run_group_tests_name("comm", tests, NULL, NULL);
}
