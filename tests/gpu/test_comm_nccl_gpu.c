/* test_comm_nccl_gpu.c: the CUDA backend's NCCL communicator (kernels/cuda/comm_nccl.cu, the op
 * table's comm_open), bootstrapped by the shared-memory communicator as `effdet worker` opens it:
 * - world 1 on cuda:0: the communicator says what it is (nccl, device memory, rank 0 of 1); an
 *   allreduce_f32 of device data and an allreduce_f64 of host doubles (more than one staging
 *   piece) leave the values bit for bit; empty sums work; a device communicator is refused as a
 *   bootstrap.
 * - world 2, ranks 0 and 1 on cuda:0 and cuda:1: both ranks end with the sums, bit-identical to
 *   each other and equal to the host's a + b (one addition rounds the same in either order). It
 *   needs two GPUs and is skipped, saying "skipped: needs 2 GPUs", where there are fewer.
 * A build without NCCL (comm_open NULL) skips both.
 *
 * All CUDA work happens in forked children, never in the parent: a CUDA runtime that was
 * initialized before fork() cannot be used in the child. The parent forks, waits, and checks what
 * the children left in a shared anonymous mapping. Built and run only by `make test-gpu`; without
 * a usable GPU the children say why and the tests fail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/ops.h"
#include "worker/comm.h"

enum {
    N32 = (1 << 20) + 7, /* odd: no multiple of anything NCCL might split by */
    N64 = 16384 + 9,     /* more than one staging piece (comm_nccl.cu's STAGE_DOUBLES) */
    WORLD2 = 2,
    TIMEOUT_MS = 60000,
    CHILD_ALARM_S = 180, /* a hung child is killed, which fails the test instead of hanging it */
    EXIT_SKIP = 77,      /* a child's exit status: nothing to test here (why in Shared.why) */
};

/* Written by the children, read by the parent. */
typedef struct Shared {
    char name[64];              /* the bootstrap's shared-memory name */
    char why[WORLD2][512];      /* a child's reason to skip */
    float out32[WORLD2][N32];   /* each rank's f32 values after the sum */
    double out64[WORLD2][N64];
} Shared;

static Shared *shared_new(int id)
{
    Shared *s = mmap(NULL, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(s != MAP_FAILED);
    snprintf(s->name, sizeof s->name, "/effdet-%d-nccl-test-%d", (int)getpid(), id);
    return s;
}

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

/* ---- the children: plain C, no cmocka (its asserts would unwind into the parent's copy) ----- */

#define CHILD_CHECK(cond, ...)                                                                   \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "rank %d: ", rank);                                                  \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fprintf(stderr, "\n");                                                               \
            return 1;                                                                            \
        }                                                                                        \
    } while (0)

/* The CUDA backend with comm_open, or EXIT_SKIP (why in s->why[rank]) or 1. */
static int child_backend(Shared *s, int rank, const Ops **gpu)
{
    Err err = {{0}};
    *gpu = ops_cuda(&err);
    CHILD_CHECK(*gpu, "no usable CUDA GPU: %s", err.msg);
    if (!(*gpu)->comm_open) {
        snprintf(s->why[rank], sizeof s->why[rank], "the CUDA backend was built without NCCL");
        return EXIT_SKIP;
    }
    return 0;
}

/* One rank: context on cuda:rank, bootstrap, NCCL comm, the sums, everything closed. */
static int child_rank(Shared *s, int rank, int world)
{
    const Ops *gpu;
    int rc = child_backend(s, rank, &gpu);
    if (rc != 0) return rc;
    Err err = {{0}};
    OpsCtx *ctx = gpu->ctx_create(rank, &err);
    CHILD_CHECK(ctx, "%s", err.msg);
    Comm *boot = comm_shm_open(s->name, rank, world, 1, TIMEOUT_MS, &err);
    CHILD_CHECK(boot, "bootstrap: %s", err.msg);
    Comm *c = gpu->comm_open(ctx, boot, TIMEOUT_MS, &err);
    CHILD_CHECK(c, "comm_open: %s", err.msg);
    CHILD_CHECK(!strcmp(c->vt->name, "nccl") && c->device_memory == 1, "comm is '%s', device_memory %d",
                c->vt->name, c->device_memory);
    CHILD_CHECK(comm_rank(c) == rank && comm_world(c) == world, "comm is rank %d of %d",
                comm_rank(c), comm_world(c));
    if (world == 1) { /* a device communicator carries no unique id: refused as a bootstrap */
        Err refused = {{0}};
        CHILD_CHECK(!gpu->comm_open(ctx, c, TIMEOUT_MS, &refused) && strstr(refused.msg, "host"),
                    "comm_open over an nccl bootstrap: '%s'", refused.msg);
        printf("refused as expected: %s\n", refused.msg);
    }

    float *host = s->out32[rank];
    for (size_t i = 0; i < N32; i++) host[i] = value32(rank, i);
    float *dev = gpu->mem_alloc(ctx, N32 * sizeof(float), &err);
    CHILD_CHECK(dev, "%s", err.msg);
    gpu->mem_upload(ctx, dev, host, N32 * sizeof(float));
    CHILD_CHECK(comm_allreduce_f32(c, dev, N32, &err) == 0, "allreduce_f32: %s", err.msg);
    CHILD_CHECK(comm_allreduce_f32(c, dev, 0, &err) == 0, "empty allreduce_f32: %s", err.msg);
    memset(host, 0, N32 * sizeof(float));
    gpu->mem_download(ctx, host, dev, N32 * sizeof(float));
    gpu->mem_free(ctx, dev);

    double *v = s->out64[rank];
    for (size_t i = 0; i < N64; i++) v[i] = value64(rank, i);
    CHILD_CHECK(comm_allreduce_f64(c, v, N64, &err) == 0, "allreduce_f64: %s", err.msg);
    CHILD_CHECK(comm_allreduce_f64(c, v, 0, &err) == 0, "empty allreduce_f64: %s", err.msg);

    comm_close(c); /* before its bootstrap and before the context (ops.h) */
    comm_close(boot);
    gpu->ctx_destroy(ctx);
    return 0;
}

/* Whether there is a second GPU: the backend's context check is cudaGetDeviceCount > 1. */
static int child_probe(Shared *s)
{
    const int rank = 1;
    const Ops *gpu;
    int rc = child_backend(s, rank, &gpu);
    if (rc != 0) return rc;
    Err err = {{0}};
    OpsCtx *ctx = gpu->ctx_create(1, &err);
    if (!ctx) {
        snprintf(s->why[rank], sizeof s->why[rank], "%s", err.msg);
        return EXIT_SKIP;
    }
    gpu->ctx_destroy(ctx);
    return 0;
}

/* ---- the parent --------------------------------------------------------------------------- */

typedef int (*ChildFn)(Shared *s, int rank, int world);

static int probe_fn(Shared *s, int rank, int world) { return child_probe(s); }

/* Runs fn in `world` children (rank 0..world-1); returns EXIT_SKIP when one skipped, fails the
 * test when one failed, 0 otherwise. */
static int run_children(Shared *s, int world, ChildFn fn)
{
    pid_t pids[WORLD2];
    for (int r = 0; r < world; r++) {
        fflush(stdout), fflush(stderr);
        pids[r] = fork();
        assert_true(pids[r] >= 0);
        if (pids[r] == 0) {
            alarm(CHILD_ALARM_S);
            int rc = fn(s, r, world);
            fflush(stdout), fflush(stderr);
            _exit(rc);
        }
    }
    int bad = 0, skipped = 0;
    for (int r = 0; r < world; r++) {
        int status;
        assert_int_equal(waitpid(pids[r], &status, 0), pids[r]);
        if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_SKIP) {
            skipped = 1;
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            print_error("rank %d of %d: %s %d\n", r, world,
                        WIFEXITED(status) ? "exit status" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            bad = 1;
        }
    }
    assert_int_equal(bad, 0);
    return skipped ? EXIT_SKIP : 0;
}

/* Compares got with want bit for bit, printing the first difference with both values. */
static void expect_bits32(const float *got, const float *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: value %zu is %.9g, expected %.9g (not bit-identical)", what, i,
                     (double)got[i], (double)want[i]);
    }
}

static void expect_bits64(const double *got, const double *want, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(double)) != 0)
            fail_msg("%s: value %zu is %.17g, expected %.17g (not bit-identical)", what, i, got[i],
                     want[i]);
    }
}

static void test_world1_identity(void **state)
{
    Shared *s = shared_new(1);
    if (run_children(s, 1, child_rank) == EXIT_SKIP) {
        printf("skipped: %s\n", s->why[0]);
        munmap(s, sizeof *s);
        skip();
    }
    float *want32 = malloc(N32 * sizeof(float));
    double *want64 = malloc(N64 * sizeof(double));
    assert_true(want32 && want64);
    for (size_t i = 0; i < N32; i++) want32[i] = value32(0, i);
    for (size_t i = 0; i < N64; i++) want64[i] = value64(0, i);
    expect_bits32(s->out32[0], want32, N32, "world 1 allreduce_f32");
    expect_bits64(s->out64[0], want64, N64, "world 1 allreduce_f64");
    printf("world 1: allreduce_f32 of %d floats and allreduce_f64 of %d doubles are the identity\n",
           N32, N64);
    free(want32), free(want64);
    munmap(s, sizeof *s);
}

static void test_world2_sums(void **state)
{
    Shared *s = shared_new(2);
    if (run_children(s, 1, probe_fn) == EXIT_SKIP) {
        printf("skipped: needs 2 GPUs (%s)\n", s->why[1]);
        munmap(s, sizeof *s);
        skip();
    }
    assert_int_equal(run_children(s, WORLD2, child_rank), 0);
    /* Every rank holds the same bits: the weights of the ranks never drift apart. */
    expect_bits32(s->out32[1], s->out32[0], N32, "world 2 allreduce_f32, rank 1 against rank 0");
    expect_bits64(s->out64[1], s->out64[0], N64, "world 2 allreduce_f64, rank 1 against rank 0");
    /* One addition per value rounds the same whatever the order: the host's sum is exact. */
    float *want32 = malloc(N32 * sizeof(float));
    double *want64 = malloc(N64 * sizeof(double));
    assert_true(want32 && want64);
    for (size_t i = 0; i < N32; i++) want32[i] = value32(0, i) + value32(1, i);
    for (size_t i = 0; i < N64; i++) want64[i] = value64(0, i) + value64(1, i);
    expect_bits32(s->out32[0], want32, N32, "world 2 allreduce_f32 against a + b");
    expect_bits64(s->out64[0], want64, N64, "world 2 allreduce_f64 against a + b");
    printf("world 2: both ranks hold a + b, bit-identical (%d floats, %d doubles)\n", N32, N64);
    free(want32), free(want64);
    munmap(s, sizeof *s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_world1_identity),
        cmocka_unit_test(test_world2_sums),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
