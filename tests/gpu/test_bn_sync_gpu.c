/* test_bn_sync_gpu.c: synchronized batch norm on the CUDA backend (set_bn_sync): two ranks, each a
 * thread with its own context on GPU 0 and half of the rows, summing through an in-process
 * allreduce, give the statistics and gradients one context computes over all the rows: the same
 * mean, invstd, running statistics and outputs, dx of each half, and dgamma/dbeta whose two local
 * parts add up to the whole (the trainer sums the gradient block over the ranks afterwards).
 * Built by `make`, run by `make test-gpu` (EFFDET_TEST_CPU=1: on the CPU backend instead). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "shared/rng.h"

enum { RANKS = 2 };

/* The two ranks' allreduce: each puts its values in its slot, both wait, both sum the slots in
 * rank order (identical bits), both wait again before the slots are reused. */
typedef struct Group {
    pthread_barrier_t barrier;
    double *slot[RANKS];
} Group;

typedef struct Rank {
    Group *g;
    int rank;
    BnSync sync;
    /* the case */
    const float *in, *dy, *gamma, *beta; /* host, this rank's rows */
    size_t rows;
    int c;
    Act act;
    /* results (host) */
    float *out, *mean, *invstd, *rmean, *rvar, *dx, *dgamma, *dbeta;
    char error[256];
} Rank;

static int group_allreduce(void *arg, double *v, size_t n)
{
    Rank *r = arg;
    Group *g = r->g;
    g->slot[r->rank] = v;
    pthread_barrier_wait(&g->barrier);
    double *sum = malloc(n * sizeof(double));
    if (!sum) return -1;
    for (size_t i = 0; i < n; i++) {
        sum[i] = 0;
        for (int k = 0; k < RANKS; k++) sum[i] += g->slot[k][i];
    }
    pthread_barrier_wait(&g->barrier); /* everyone has read the slots */
    memcpy(v, sum, n * sizeof(double));
    free(sum);
    return 0;
}

static float *dev_upload(const Ops *o, OpsCtx *ctx, const float *host, size_t n, Err *err)
{
    float *p = o->mem_alloc(ctx, n * sizeof(float), err);
    if (p && host) o->mem_upload(ctx, p, host, n * sizeof(float));
    return p;
}

/* One rank's (or the single context's) forward and backward; sync NULL: local statistics. */
static int run_bn(Rank *r, const BnSync *sync)
{
    Err err;
    /* EFFDET_TEST_CPU=1 runs the same on the CPU backend: the harness checked where no GPU is. */
    const char *cpu = getenv("EFFDET_TEST_CPU");
    const Ops *o = cpu && !strcmp(cpu, "1") ? ops_cpu() : ops_cuda(&err);
    if (!o) return snprintf(r->error, sizeof r->error, "%s", err.msg), -1;
    OpsCtx *ctx = o->ctx_create(0, &err);
    if (!ctx) return snprintf(r->error, sizeof r->error, "%s", err.msg), -1;
    const size_t n = r->rows * r->c, c = (size_t)r->c;
    enum { IN, DY, GAMMA, BETA, OUT, MEAN, INVSTD, DX, RMEAN, RVAR, DGAMMA, DBETA, NBUF };
    const float *src[NBUF] = {r->in, r->dy, r->gamma, r->beta};
    const size_t len[NBUF] = {n, n, c, c, n, c, c, n, c, c, c, c};
    float *d[NBUF] = {0};
    int ok = 1;
    for (int i = 0; i < NBUF; i++) ok = ok && (d[i] = dev_upload(o, ctx, src[i], len[i], &err));
    float *in = d[IN], *dy = d[DY], *gamma = d[GAMMA], *beta = d[BETA], *out = d[OUT];
    float *mean = d[MEAN], *invstd = d[INVSTD], *dx = d[DX], *rmean = d[RMEAN], *rvar = d[RVAR];
    float *dgamma = d[DGAMMA], *dbeta = d[DBETA];
    float *ones = ok ? malloc(c * sizeof(float)) : NULL;
    if (!ones) {
        snprintf(r->error, sizeof r->error, "%s", ok ? "out of host memory" : err.msg);
        for (int i = 0; i < NBUF; i++) o->mem_free(ctx, d[i]);
        o->ctx_destroy(ctx);
        return -1;
    }
    for (size_t i = 0; i < c; i++) ones[i] = 1.0f;
    o->mem_upload(ctx, rvar, ones, c * sizeof(float)); /* PyTorch's starting running_var */
    free(ones);
    o->set_bn_sync(ctx, sync);
    o->bn_train_forward(ctx, out, mean, invstd, rmean, rvar, in, gamma, beta, 1e-3f, 0.1f, r->act,
                        r->rows, r->c);
    o->bn_train_backward(ctx, dx, dgamma, dbeta, dy, in, gamma, beta, mean, invstd, r->act,
                         r->rows, r->c);
    o->mem_download(ctx, r->out, out, n * sizeof(float));
    o->mem_download(ctx, r->dx, dx, n * sizeof(float));
    o->mem_download(ctx, r->mean, mean, c * sizeof(float));
    o->mem_download(ctx, r->invstd, invstd, c * sizeof(float));
    o->mem_download(ctx, r->rmean, rmean, c * sizeof(float));
    o->mem_download(ctx, r->rvar, rvar, c * sizeof(float));
    o->mem_download(ctx, r->dgamma, dgamma, c * sizeof(float));
    o->mem_download(ctx, r->dbeta, dbeta, c * sizeof(float));
    for (int i = 0; i < NBUF; i++) o->mem_free(ctx, d[i]);
    o->ctx_destroy(ctx);
    return 0;
}

static void *rank_main(void *arg)
{
    Rank *r = arg;
    r->sync = (BnSync){.allreduce = group_allreduce, .arg = r, .world = RANKS};
    return run_bn(r, &r->sync) == 0 ? NULL : (void *)r;
}

static void alloc_results(Rank *r, size_t rows, int c)
{
    const size_t n = rows * c;
    r->out = malloc(n * sizeof(float)), r->dx = malloc(n * sizeof(float));
    r->mean = malloc(c * sizeof(float)), r->invstd = malloc(c * sizeof(float));
    r->rmean = malloc(c * sizeof(float)), r->rvar = malloc(c * sizeof(float));
    r->dgamma = malloc(c * sizeof(float)), r->dbeta = malloc(c * sizeof(float));
    assert_true(r->out && r->dx && r->mean && r->invstd && r->rmean && r->rvar && r->dgamma &&
                r->dbeta);
}

static void free_results(Rank *r)
{
    free(r->out), free(r->dx), free(r->mean), free(r->invstd), free(r->rmean), free(r->rvar);
    free(r->dgamma), free(r->dbeta);
}

/* max|a - b| / max(max|b|, 1e-3) */
static double rel(const float *a, const float *b, size_t n)
{
    double d = 0, m = 1e-3;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i])), m = fmax(m, fabs((double)b[i]));
    return d / m;
}

static void check(const char *what, double r, double bound)
{
    print_message("      %-28s %.2e (bound %.0e)\n", what, r, bound);
    if (!(r <= bound)) fail_msg("%s: %.3e over %.0e", what, r, bound);
}

static void test_two_ranks_equal_one(void **state)
{
    const int c = 37;
    const size_t half = 2 * 19 * 23, rows = 2 * half;
    float *in = malloc(rows * c * sizeof(float)), *dy = malloc(rows * c * sizeof(float));
    float gamma[37], beta[37];
    assert_true(in && dy);
    Rng g;
    rng_init(&g, 9, 0, 0);
    for (size_t i = 0; i < rows * c; i++) in[i] = 2.0f + rng_normal(&g), dy[i] = rng_normal(&g);
    for (int i = 0; i < c; i++) gamma[i] = 0.5f + rng_uniform(&g), beta[i] = rng_normal(&g);
    for (Act act = ACT_NONE; act <= ACT_SILU; act++) {
        Rank whole = {.in = in, .dy = dy, .gamma = gamma, .beta = beta, .rows = rows, .c = c, .act = act};
        alloc_results(&whole, rows, c);
        if (run_bn(&whole, NULL) != 0) fail_msg("one context: %s", whole.error);
        Group grp;
        assert_int_equal(pthread_barrier_init(&grp.barrier, NULL, RANKS), 0);
        Rank rk[RANKS];
        pthread_t th[RANKS];
        for (int k = 0; k < RANKS; k++) {
            rk[k] = (Rank){.g = &grp, .rank = k, .in = in + k * half * c, .dy = dy + k * half * c,
                           .gamma = gamma, .beta = beta, .rows = half, .c = c, .act = act};
            alloc_results(&rk[k], half, c);
            assert_int_equal(pthread_create(&th[k], NULL, rank_main, &rk[k]), 0);
        }
        for (int k = 0; k < RANKS; k++) {
            void *bad;
            pthread_join(th[k], &bad);
            if (bad) fail_msg("rank %d: %s", k, rk[k].error);
        }
        pthread_barrier_destroy(&grp.barrier);
        print_message("    act %d:\n", (int)act);
        for (int k = 0; k < RANKS; k++) {
            check("save_mean", rel(rk[k].mean, whole.mean, c), 1e-5);
            check("save_invstd", rel(rk[k].invstd, whole.invstd, c), 1e-5);
            check("running_mean", rel(rk[k].rmean, whole.rmean, c), 1e-5);
            check("running_var", rel(rk[k].rvar, whole.rvar, c), 1e-5);
            check("out (this rank's rows)", rel(rk[k].out, whole.out + k * half * c, half * c), 1e-5);
            check("dx (this rank's rows)", rel(rk[k].dx, whole.dx + k * half * c, half * c), 1e-4);
        }
        float dg[37], db[37];
        for (int i = 0; i < c; i++) dg[i] = rk[0].dgamma[i] + rk[1].dgamma[i], db[i] = rk[0].dbeta[i] + rk[1].dbeta[i];
        check("dgamma (sum of the ranks')", rel(dg, whole.dgamma, c), 1e-4);
        check("dbeta (sum of the ranks')", rel(db, whole.dbeta, c), 1e-4);
        for (int k = 0; k < RANKS; k++) free_results(&rk[k]);
        free_results(&whole);
    }
    free(in), free(dy);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_two_ranks_equal_one)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
