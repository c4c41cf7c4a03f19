/* gpu_compare.c: the GPU tests' harness (see gpu_compare.h). */
#include "tests/support/gpu_compare.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t xorshift_next(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

float xorshift_uniform(uint32_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)(xorshift_next(s) >> 8) / (float)(1u << 24);
}

void *xalloc(const Ops *ops, OpsCtx *ctx, size_t bytes)
{
    Err err = {{0}};
    void *p = ops->mem_alloc(ctx, bytes, &err);
    if (!p) fail_msg("%s mem_alloc(%zu): %s", ops->name, bytes, err.msg);
    return p;
}

/* A tensor of n values drawn from [lo, hi), uploaded to both backends. */
Buf buf_random(const Backends *b, size_t n, uint32_t *seed, float lo, float hi)
{
    Buf x = {malloc(n * sizeof(float)), xalloc(b->cpu, b->cctx, n * sizeof(float)),
             xalloc(b->gpu, b->gctx, n * sizeof(float)), n};
    assert_non_null(x.host);
    for (size_t i = 0; i < n; i++) x.host[i] = xorshift_uniform(seed, lo, hi);
    b->cpu->mem_upload(b->cctx, x.cpu, x.host, n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x.gpu, x.host, n * sizeof(float));
    return x;
}

/* An output tensor: zeroed on both backends by mem_alloc. */
Buf buf_out(const Backends *b, size_t n)
{
    Buf x = {malloc(n * sizeof(float)), xalloc(b->cpu, b->cctx, n * sizeof(float)),
             xalloc(b->gpu, b->gctx, n * sizeof(float)), n};
    assert_non_null(x.host);
    return x;
}

void buf_free(const Backends *b, Buf *x)
{
    b->cpu->mem_free(b->cctx, x->cpu);
    b->gpu->mem_free(b->gctx, x->gpu);
    free(x->host);
    memset(x, 0, sizeof *x);
}

/* Uploads x->host to both backends again (after a test changed its values). */
void buf_upload(const Backends *b, const Buf *x)
{
    b->cpu->mem_upload(b->cctx, x->cpu, x->host, x->n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
}

/* The CPU's values of x copied to the GPU tensor (and to x->host), so that an op which consumes
 * another op's result starts from the same input on both backends and is compared alone. */
void buf_share_cpu(const Backends *b, Buf *x)
{
    b->cpu->mem_download(b->cctx, x->host, x->cpu, x->n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
}

Raw raw_upload(const Backends *b, const void *host, size_t bytes)
{
    Raw r = {xalloc(b->cpu, b->cctx, bytes), xalloc(b->gpu, b->gctx, bytes)};
    b->cpu->mem_upload(b->cctx, r.cpu, host, bytes);
    b->gpu->mem_upload(b->gctx, r.gpu, host, bytes);
    return r;
}

void raw_free(const Backends *b, Raw *r)
{
    b->cpu->mem_free(b->cctx, r->cpu);
    b->gpu->mem_free(b->gctx, r->gpu);
    memset(r, 0, sizeof *r);
}

/* Keeps the worst ratio of the op named by the first word of `what` in the current math mode. */
static void record_worst(Backends *b, const char *what, double rel)
{
    size_t len = strcspn(what, " :");
    OpWorst *w = NULL;
    for (int i = 0; i < b->n_worst && !w; i++)
        if (b->worst[i].tf32 == b->tf32 && strlen(b->worst[i].op) == len &&
            !strncmp(b->worst[i].op, what, len))
            w = &b->worst[i];
    if (!w) {
        if (b->n_worst == SUMMARY_CAP) return;
        w = &b->worst[b->n_worst++];
        snprintf(w->op, sizeof w->op, "%.*s", (int)len, what);
        w->tf32 = b->tf32, w->checks = 0, w->rel = 0.0;
    }
    w->checks++;
    if (!(rel <= w->rel)) w->rel = rel; /* NaN stays the worst */
}

static void print_summary(const Backends *b)
{
    printf("\nworst max|gpu-cpu| / max|cpu| per op (bound: %g fp32, %g tf32, + %g absolute):\n",
           RTOL, RTOL_TF32, ATOL);
    for (int i = 0; i < b->n_worst; i++) {
        const OpWorst *w = &b->worst[i];
        printf("  %-28s %s  rel %-10.3g (%d comparisons)\n", w->op, w->tf32 ? "tf32" : "fp32",
               w->rel, w->checks);
    }
}

/* Downloads both results and checks max|gpu - cpu| <= RTOL * max|cpu| + ATOL (RTOL_TF32 while
 * b->tf32 is set); prints the figures when `print` is set and records the ratio for the summary.
 * Returns max|gpu - cpu| / max|cpu|. */
double check_close(Backends *b, const char *what, const Buf *x, int print)
{
    float *ref = malloc(x->n * sizeof(float));
    assert_non_null(ref);
    b->cpu->mem_download(b->cctx, ref, x->cpu, x->n * sizeof(float));
    b->gpu->mem_download(b->gctx, x->host, x->gpu, x->n * sizeof(float));
    double max_ref = 0.0, max_diff = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < x->n; i++) {
        double g = x->host[i], r = ref[i];
        /* Equal infinities and NaN in both are the same answer; any other NaN is the worst. */
        double d = (g == r || (isnan(g) && isnan(r))) ? 0.0 : fabs(g - r);
        if (isnan(d)) d = INFINITY;
        if (isfinite(r) && fabs(r) > max_ref) max_ref = fabs(r);
        if (d > max_diff) max_diff = d, worst = i;
    }
    double tol = (b->tf32 ? RTOL_TF32 : RTOL) * max_ref + ATOL;
    double rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    record_worst(b, what, rel);
    if (print || !(max_diff <= tol))
        printf("  %-58s max|gpu-cpu| %.3g  max|cpu| %.3g  rel %.3g%s\n", what, max_diff, max_ref,
               rel, max_diff <= tol ? "" : "  FAIL");
    if (!(max_diff <= tol))
        fail_msg("%s: max|gpu-cpu| = %g > tol %g at [%zu]: gpu %.9g, cpu %.9g", what, max_diff, tol,
                 worst, x->host[worst], ref[worst]);
    free(ref);
    return rel;
}

void expect_close(Backends *b, const char *what, const Buf *x)
{
    check_close(b, what, x, 1);
}

void reserve(const Backends *b, const ConvShape *s)
{
    Err err = {{0}};
    if (b->cpu->workspace_reserve(b->cctx, b->cpu->conv2d_workspace_bytes(s), &err) < 0 ||
        b->gpu->workspace_reserve(b->gctx, b->gpu->conv2d_workspace_bytes(s), &err) < 0)
        fail_msg("workspace_reserve: %s", err.msg);
}

const char *act_name(Act a)
{
    return a == ACT_SILU ? "silu" : a == ACT_SIGMOID ? "sigmoid" : "none";
}

void describe_conv(char *dst, size_t size, const char *op, const ConvShape *s, int bias)
{
    int bottom = (s->oh - 1) * s->stride + s->kh - s->h - s->pad_top;
    int right = (s->ow - 1) * s->stride + s->kw - s->w - s->pad_left;
    snprintf(dst, size, "%s (%d,%d,%d,%d)->(%d,%d,%d) k%d s%d pad t%d b%d l%d r%d%s", op, s->n, s->h,
             s->w, s->cin, s->oh, s->ow, s->cout, s->kh, s->stride, s->pad_top, bottom,
             s->pad_left, right, bias ? " +bias" : "");
}

int gpu_compare_main(const char *program, const struct CMUnitTest *tests, size_t n)
{
    Err err = {{0}};
    Backends b = {.cpu = ops_cpu(), .gpu = ops_cuda(&err)};
    if (b.gpu) b.gctx = b.gpu->ctx_create(0, &err);
    if (!b.gpu || !b.gctx) {
        fprintf(stderr,
                "%s: no usable CUDA GPU, so the CUDA backend cannot be compared with the CPU: "
                "%s\n(make test-gpu is meant for a machine with a GPU)\n",
                program, err.msg);
        return 1;
    }
    b.cctx = b.cpu->ctx_create(0, &err);
    if (!b.cctx) {
        fprintf(stderr, "%s: cpu backend: %s\n", program, err.msg);
        b.gpu->ctx_destroy(b.gctx);
        return 1;
    }
    struct CMUnitTest *run = malloc(n * sizeof *run);
    assert_non_null(run);
    for (size_t i = 0; i < n; i++) {
        run[i] = tests[i];
        if (!run[i].initial_state) run[i].initial_state = &b;
    }
    int failed = _cmocka_run_group_tests(program, run, n, NULL, NULL);
    if (b.n_worst) print_summary(&b);
    free(run);
    b.gpu->ctx_destroy(b.gctx);
    b.cpu->ctx_destroy(b.cctx);
    return failed ? 1 : 0;
}
