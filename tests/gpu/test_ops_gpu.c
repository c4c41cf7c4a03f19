/* test_ops_gpu.c: every op of the CUDA backend against the CPU reference (kernels/cpu/).
 *
 * Each test draws random inputs of deliberately odd sizes (channels that are not multiples of 4 or
 * 32, heights and widths that are odd and even, so both symmetric and asymmetric SAME padding
 * occur), runs the op on both backends and requires, for every output and saved tensor,
 *     max |gpu - cpu| <= 1e-5 * max |cpu| + 1e-6,
 * printing the worst difference and its ratio to max |cpu| for every comparison (llm.c style), so
 * the log shows how much room each op has, and closing with one line per op: the worst ratio seen
 * over all its comparisons. Built and run only by `make test-gpu`: on a machine without a usable
 * GPU it prints why and exits non-zero, since there is nothing to compare.
 *
 * Training ops: every gradient output is pre-filled with the same random values on both backends
 * (not zeros), since backward ops accumulate (+=): a kernel that overwrites, or leaves an output
 * unwritten, fails at once. Outputs with "=" semantics (forward outputs, dcls/dbox, sum_squares)
 * are pre-filled with random values too, so an unwritten value shows. Where one op feeds another
 * (saved batch statistics, SE's saved tensors) the CPU's result is copied to the GPU first, so each
 * op is compared alone. TF32 (set_tf32) is checked against the looser bound RTOL_TF32. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

static const double RTOL = 1e-5, ATOL = 1e-6;
/* TF32 rounds each GEMM operand to a 10-bit mantissa (5e-4 relative; up to 1e-3 truncated). */
static const double RTOL_TF32 = 1e-3;

/* The worst max|gpu - cpu| / max|cpu| of one op (the first word of a comparison's label) in one
 * math mode, over all its comparisons: the closing summary. */
typedef struct OpWorst {
    char op[32];
    int tf32, checks;
    double rel;
} OpWorst;

enum { SUMMARY_CAP = 48 };

typedef struct Backends {
    const Ops *cpu, *gpu;
    OpsCtx *cctx, *gctx;
    int tf32; /* set_tf32(gctx, 1) is in effect: RTOL_TF32 applies, summary rows say tf32 */
    int n_worst;
    OpWorst worst[SUMMARY_CAP];
} Backends;

/* One tensor on both backends, and its host copy (the random values, or space for a download). */
typedef struct Buf {
    float *host, *cpu, *gpu;
    size_t n;
} Buf;

/* xorshift32: a fixed sequence per test, so a failure reproduces. */
static float rng_uniform(uint32_t *s, float lo, float hi)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return lo + (hi - lo) * (float)(*s >> 8) / (float)(1u << 24);
}

static void *xalloc(const Ops *ops, OpsCtx *ctx, size_t bytes)
{
    Err err = {{0}};
    void *p = ops->mem_alloc(ctx, bytes, &err);
    if (!p) fail_msg("%s mem_alloc(%zu): %s", ops->name, bytes, err.msg);
    return p;
}

/* A tensor of n values drawn from [lo, hi), uploaded to both backends. */
static Buf buf_random(const Backends *b, size_t n, uint32_t *seed, float lo, float hi)
{
    Buf x = {malloc(n * sizeof(float)), xalloc(b->cpu, b->cctx, n * sizeof(float)),
             xalloc(b->gpu, b->gctx, n * sizeof(float)), n};
    assert_non_null(x.host);
    for (size_t i = 0; i < n; i++) x.host[i] = rng_uniform(seed, lo, hi);
    b->cpu->mem_upload(b->cctx, x.cpu, x.host, n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x.gpu, x.host, n * sizeof(float));
    return x;
}

/* An output tensor: zeroed on both backends by mem_alloc. */
static Buf buf_out(const Backends *b, size_t n)
{
    Buf x = {malloc(n * sizeof(float)), xalloc(b->cpu, b->cctx, n * sizeof(float)),
             xalloc(b->gpu, b->gctx, n * sizeof(float)), n};
    assert_non_null(x.host);
    return x;
}

static void buf_free(const Backends *b, Buf *x)
{
    b->cpu->mem_free(b->cctx, x->cpu);
    b->gpu->mem_free(b->gctx, x->gpu);
    free(x->host);
    memset(x, 0, sizeof *x);
}

/* Uploads x->host to both backends again (after a test changed its values). */
static void buf_upload(const Backends *b, const Buf *x)
{
    b->cpu->mem_upload(b->cctx, x->cpu, x->host, x->n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
}

/* The CPU's values of x copied to the GPU tensor (and to x->host), so that an op which consumes
 * another op's result starts from the same input on both backends and is compared alone. */
static void buf_share_cpu(const Backends *b, Buf *x)
{
    b->cpu->mem_download(b->cctx, x->host, x->cpu, x->n * sizeof(float));
    b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
}

/* Raw bytes (int32 targets, uint8 masks) uploaded to both backends. */
typedef struct Raw {
    void *cpu, *gpu;
} Raw;

static Raw raw_upload(const Backends *b, const void *host, size_t bytes)
{
    Raw r = {xalloc(b->cpu, b->cctx, bytes), xalloc(b->gpu, b->gctx, bytes)};
    b->cpu->mem_upload(b->cctx, r.cpu, host, bytes);
    b->gpu->mem_upload(b->gctx, r.gpu, host, bytes);
    return r;
}

static void raw_free(const Backends *b, Raw *r)
{
    b->cpu->mem_free(b->cctx, r->cpu);
    b->gpu->mem_free(b->gctx, r->gpu);
    memset(r, 0, sizeof *r);
}

/* An op this file calls that the GPU table leaves NULL fails its test instead of crashing. */
#define REQUIRE_GPU_OP(b, op)                                                                    \
    do {                                                                                         \
        if (!(b)->gpu->op) fail_msg("the %s backend has no " #op, (b)->gpu->name);               \
    } while (0)

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
static double check_close(Backends *b, const char *what, const Buf *x, int print)
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

static void expect_close(Backends *b, const char *what, const Buf *x)
{
    check_close(b, what, x, 1);
}

static void reserve(const Backends *b, const ConvShape *s)
{
    Err err = {{0}};
    if (b->cpu->workspace_reserve(b->cctx, b->cpu->conv2d_workspace_bytes(s), &err) < 0 ||
        b->gpu->workspace_reserve(b->gctx, b->gpu->conv2d_workspace_bytes(s), &err) < 0)
        fail_msg("workspace_reserve: %s", err.msg);
}

static void describe_conv(char *dst, size_t size, const char *op, const ConvShape *s, int bias)
{
    int bottom = (s->oh - 1) * s->stride + s->kh - s->h - s->pad_top;
    int right = (s->ow - 1) * s->stride + s->kw - s->w - s->pad_left;
    snprintf(dst, size, "%s (%d,%d,%d,%d)->(%d,%d,%d) k%d s%d pad t%d b%d l%d r%d%s", op, s->n, s->h,
             s->w, s->cin, s->oh, s->ow, s->cout, s->kh, s->stride, s->pad_top, bottom,
             s->pad_left, right, bias ? " +bias" : "");
}

/* ---- tests -------------------------------------------------------------------------------------- */

static void test_conv2d(void **state)
{
    Backends *b = *state;
    static const struct { int n, h, w, cin, cout, k, stride, bias; } cases[] = {
        {2, 13, 9, 19, 23, 1, 1, 1},  /* pointwise */
        {2, 13, 9, 19, 23, 3, 1, 1},  {2, 13, 9, 19, 23, 5, 1, 0},
        {2, 13, 9, 19, 23, 3, 2, 1},  /* odd sizes, stride 2: symmetric */
        {2, 12, 8, 19, 23, 3, 2, 1},  /* even sizes, stride 2: one more row/col after */
        {2, 12, 8, 19, 23, 5, 2, 0},  {2, 13, 8, 19, 23, 3, 2, 1}, /* asymmetric in W only */
        {2, 12, 9, 19, 7, 5, 2, 1},   /* asymmetric in H only */
        {2, 13, 9, 19, 23, 1, 2, 1},  {2, 12, 8, 19, 23, 1, 2, 0}, /* 1x1 stride 2 */
        {2, 13, 9, 19, 23, 2, 1, 1},  /* even kernel, stride 1: asymmetric */
        {2, 64, 64, 3, 32, 3, 2, 1},  /* the stem */
        {2, 32, 32, 64, 64, 3, 1, 1}, {2, 16, 16, 96, 40, 1, 1, 0},
    };
    uint32_t seed = 12345;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ConvShape s;
        conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].cin, cases[t].cout,
                        cases[t].k, cases[t].stride);
        reserve(b, &s);
        Buf in = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.cout * s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf bias = buf_random(b, (size_t)s.cout, &seed, -1.0f, 1.0f);
        Buf out = buf_out(b, (size_t)s.n * s.oh * s.ow * s.cout);
        const int hb = cases[t].bias;
        b->cpu->conv2d_forward(b->cctx, out.cpu, in.cpu, w.cpu, hb ? bias.cpu : NULL, &s);
        /* Twice on the GPU: the second call runs from the cached plan. */
        for (int rep = 0; rep < 2; rep++)
            b->gpu->conv2d_forward(b->gctx, out.gpu, in.gpu, w.gpu, hb ? bias.gpu : NULL, &s);
        char what[160];
        describe_conv(what, sizeof what, "conv2d_forward", &s, hb);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &w), buf_free(b, &bias), buf_free(b, &out);
    }
}

/* More distinct shapes than the context's plan cache holds (256), then the first ones again, which
 * by then have been evicted: slot reuse must re-plan them correctly. */
static void test_conv2d_plan_cache(void **state)
{
    Backends *b = *state;
    enum { SHAPES = 300, AGAIN = 8 };
    uint32_t seed = 6;
    double worst = 0.0;
    for (int t = 0; t < SHAPES + AGAIN; t++) {
        ConvShape s;
        conv_shape_same(&s, 1, 6, 5, 3, 1 + t % SHAPES, 3, 1 + t % 2);
        reserve(b, &s);
        Buf in = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.cout * s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf bias = buf_random(b, (size_t)s.cout, &seed, -1.0f, 1.0f);
        Buf out = buf_out(b, (size_t)s.n * s.oh * s.ow * s.cout);
        b->cpu->conv2d_forward(b->cctx, out.cpu, in.cpu, w.cpu, bias.cpu, &s);
        b->gpu->conv2d_forward(b->gctx, out.gpu, in.gpu, w.gpu, bias.gpu, &s);
        char what[160];
        describe_conv(what, sizeof what, "conv2d_forward", &s, 1);
        double rel = check_close(b, what, &out, 0);
        if (rel > worst) worst = rel;
        buf_free(b, &in), buf_free(b, &w), buf_free(b, &bias), buf_free(b, &out);
    }
    printf("  %-58s rel %.3g (worst of %d shapes)\n",
           "conv2d_forward plan cache: cout 1..300, s1/s2", worst, SHAPES + AGAIN);
}

static void test_dwconv2d(void **state)
{
    Backends *b = *state;
    static const struct { int n, h, w, c, k, stride; } cases[] = {
        {2, 13, 9, 19, 3, 1}, {2, 13, 9, 19, 5, 1}, {2, 13, 9, 19, 3, 2}, {2, 13, 9, 19, 5, 2},
        {2, 12, 8, 19, 3, 2}, {2, 12, 8, 19, 5, 2}, {2, 13, 8, 19, 3, 2}, {2, 13, 9, 19, 1, 1},
        {2, 13, 9, 19, 2, 1}, {1, 20, 20, 144, 5, 2},
    };
    uint32_t seed = 777;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ConvShape s;
        conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].c, cases[t].c, cases[t].k,
                        cases[t].stride);
        Buf in = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf out = buf_out(b, (size_t)s.n * s.oh * s.ow * s.cout);
        b->cpu->dwconv2d_forward(b->cctx, out.cpu, in.cpu, w.cpu, &s);
        b->gpu->dwconv2d_forward(b->gctx, out.gpu, in.gpu, w.gpu, &s);
        char what[160];
        describe_conv(what, sizeof what, "dwconv2d_forward", &s, 0);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &w), buf_free(b, &out);
    }
}

static const char *act_name(Act a)
{
    return a == ACT_SILU ? "silu" : a == ACT_SIGMOID ? "sigmoid" : "none";
}

static void test_bn_infer(void **state)
{
    Backends *b = *state;
    static const struct { size_t rows; int c; } cases[] = {{2 * 13 * 9, 19}, {3 * 7 * 11, 70}};
    uint32_t seed = 4242;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t rows = cases[t].rows;
        const int c = cases[t].c;
        Buf in = buf_random(b, rows * c, &seed, -3.0f, 3.0f);
        Buf gamma = buf_random(b, c, &seed, 0.5f, 1.5f), beta = buf_random(b, c, &seed, -1, 1);
        Buf mean = buf_random(b, c, &seed, -1, 1), var = buf_random(b, c, &seed, 0.1f, 2.0f);
        Buf out = buf_out(b, rows * c);
        for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
            b->cpu->bn_infer_forward(b->cctx, out.cpu, in.cpu, gamma.cpu, beta.cpu, mean.cpu,
                                     var.cpu, 1e-3f, a, rows, c);
            b->gpu->bn_infer_forward(b->gctx, out.gpu, in.gpu, gamma.gpu, beta.gpu, mean.gpu,
                                     var.gpu, 1e-3f, a, rows, c);
            char what[96];
            snprintf(what, sizeof what, "bn_infer_forward rows %zu c %d act %s", rows, c,
                     act_name(a));
            expect_close(b, what, &out);
        }
        buf_free(b, &in), buf_free(b, &gamma), buf_free(b, &beta), buf_free(b, &mean);
        buf_free(b, &var), buf_free(b, &out);
    }
}

static void test_act_add(void **state)
{
    Backends *b = *state;
    const size_t count = 1001;
    uint32_t seed = 99;
    Buf x = buf_random(b, count, &seed, -12.0f, 12.0f), y = buf_random(b, count, &seed, -1, 1);
    /* Saturated tails: expf overflows to inf here, and both backends must agree on the limits. */
    const float tails[4] = {-100.0f, 100.0f, -88.0f, 89.0f};
    memcpy(x.host, tails, sizeof tails);
    buf_upload(b, &x);
    Buf out = buf_out(b, count);
    for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
        b->cpu->act_forward(b->cctx, out.cpu, x.cpu, a, count);
        b->gpu->act_forward(b->gctx, out.gpu, x.gpu, a, count);
        char what[64];
        snprintf(what, sizeof what, "act_forward %s count %zu", act_name(a), count);
        expect_close(b, what, &out);
    }
    b->cpu->add_forward(b->cctx, out.cpu, x.cpu, y.cpu, count);
    b->gpu->add_forward(b->gctx, out.gpu, x.gpu, y.gpu, count);
    expect_close(b, "add_forward count 1001", &out);
    buf_free(b, &x), buf_free(b, &y), buf_free(b, &out);
}

static void test_fuse(void **state)
{
    Backends *b = *state;
    const size_t count = 2 * 13 * 9 * 19;
    uint32_t seed = 31337;
    Buf in[4];
    const float *cins[4], *gins[4];
    for (int i = 0; i < 4; i++) {
        in[i] = buf_random(b, count, &seed, -2.0f, 2.0f);
        cins[i] = in[i].cpu, gins[i] = in[i].gpu;
    }
    /* One negative edge weight, which relu must zero out. */
    Buf w = buf_random(b, 4, &seed, 0.1f, 2.0f);
    w.host[1] = -0.5f;
    buf_upload(b, &w);
    Buf out = buf_out(b, count);
    for (int k = 1; k <= 4; k++) {
        for (int weighted = 0; weighted < 2; weighted++) {
            b->cpu->fuse_forward(b->cctx, out.cpu, cins, weighted ? w.cpu : NULL, k, count);
            b->gpu->fuse_forward(b->gctx, out.gpu, gins, weighted ? w.gpu : NULL, k, count);
            char what[64];
            snprintf(what, sizeof what, "fuse_forward k %d %s count %zu", k,
                     weighted ? "weighted" : "sum", count);
            expect_close(b, what, &out);
        }
    }
    for (int i = 0; i < 4; i++) buf_free(b, &in[i]);
    buf_free(b, &w), buf_free(b, &out);
}

static void test_se(void **state)
{
    Backends *b = *state;
    static const struct { int n, hw, c, cr; } cases[] = {{2, 13 * 9, 19, 5}, {3, 1000, 70, 17}};
    uint32_t seed = 2024;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int n = cases[t].n, hw = cases[t].hw, c = cases[t].c, cr = cases[t].cr;
        Buf x = buf_random(b, (size_t)n * hw * c, &seed, -1.0f, 1.0f);
        Buf w_r = buf_random(b, (size_t)cr * c, &seed, -1, 1), b_r = buf_random(b, cr, &seed, -1, 1);
        Buf w_e = buf_random(b, (size_t)c * cr, &seed, -1, 1), b_e = buf_random(b, c, &seed, -1, 1);
        Buf out = buf_out(b, (size_t)n * hw * c), pooled = buf_out(b, (size_t)n * c);
        Buf hidden = buf_out(b, (size_t)n * cr), gate = buf_out(b, (size_t)n * c);
        b->cpu->se_forward(b->cctx, out.cpu, pooled.cpu, hidden.cpu, gate.cpu, x.cpu, w_r.cpu,
                           b_r.cpu, w_e.cpu, b_e.cpu, n, hw, c, cr);
        b->gpu->se_forward(b->gctx, out.gpu, pooled.gpu, hidden.gpu, gate.gpu, x.gpu, w_r.gpu,
                           b_r.gpu, w_e.gpu, b_e.gpu, n, hw, c, cr);
        const Buf *res[4] = {&pooled, &hidden, &gate, &out};
        const char *names[4] = {"pooled", "hidden", "gate", "out"};
        for (int i = 0; i < 4; i++) {
            char what[96];
            snprintf(what, sizeof what, "se_forward n %d hw %d c %d cr %d: %s", n, hw, c, cr,
                     names[i]);
            expect_close(b, what, res[i]);
        }
        buf_free(b, &x), buf_free(b, &w_r), buf_free(b, &b_r), buf_free(b, &w_e);
        buf_free(b, &b_e), buf_free(b, &out), buf_free(b, &pooled), buf_free(b, &hidden);
        buf_free(b, &gate);
    }
}

static void test_maxpool(void **state)
{
    Backends *b = *state;
    static const struct { int n, h, w, c, k, stride; } cases[] = {
        {2, 13, 9, 19, 3, 2}, {2, 12, 8, 19, 3, 2}, {2, 13, 8, 19, 3, 2},
        {2, 13, 9, 19, 3, 1}, {2, 12, 8, 19, 2, 2}, {2, 13, 9, 19, 1, 2},
    };
    uint32_t seed = 5150;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        PoolShape s;
        pool_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].c, cases[t].k,
                        cases[t].stride);
        /* All negative, so a padded cell taken as 0 instead of -inf would win and show. */
        Buf in = buf_random(b, (size_t)s.n * s.h * s.w * s.c, &seed, -3.0f, -0.1f);
        Buf out = buf_out(b, (size_t)s.n * s.oh * s.ow * s.c);
        b->cpu->maxpool_forward(b->cctx, out.cpu, in.cpu, &s);
        b->gpu->maxpool_forward(b->gctx, out.gpu, in.gpu, &s);
        char what[128];
        snprintf(what, sizeof what, "maxpool_forward (%d,%d,%d,%d)->(%d,%d) k%d s%d pad t%d l%d",
                 s.n, s.h, s.w, s.c, s.oh, s.ow, s.kh, s.stride, s.pad_top, s.pad_left);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &out);
    }
}

static void test_upsample(void **state)
{
    Backends *b = *state;
    static const struct { int n, h, w, c, oh, ow; } cases[] = {
        {2, 3, 3, 19, 5, 5}, {2, 4, 4, 19, 8, 8}, {2, 3, 4, 19, 5, 8},
        {2, 7, 5, 19, 7, 5}, {2, 5, 9, 19, 3, 4}, {1, 10, 10, 64, 20, 20},
        {1, 10, 26, 19, 12, 44}, /* see test_upsample_backward */
    };
    uint32_t seed = 8080;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int n = cases[t].n, h = cases[t].h, w = cases[t].w, c = cases[t].c;
        const int oh = cases[t].oh, ow = cases[t].ow;
        Buf in = buf_random(b, (size_t)n * h * w * c, &seed, -1.0f, 1.0f);
        Buf out = buf_out(b, (size_t)n * oh * ow * c);
        b->cpu->upsample_nearest_forward(b->cctx, out.cpu, in.cpu, n, h, w, c, oh, ow);
        b->gpu->upsample_nearest_forward(b->gctx, out.gpu, in.gpu, n, h, w, c, oh, ow);
        char what[96];
        snprintf(what, sizeof what, "upsample_nearest_forward (%d,%d,%d,%d)->(%d,%d)", n, h, w, c,
                 oh, ow);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &out);
    }
}

/* ---- training ops ------------------------------------------------------------------------------- */

static void test_bn_train(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, bn_train_forward);
    REQUIRE_GPU_OP(b, bn_train_backward);
    /* From 7 rows (where the unbiased factor 7/6 of running_var shows) to several thousand
     * (reductions over many blocks); 130 channels span three of the CPU's 64-channel tiles; [1, 5)
     * has |mean| > std. */
    static const struct { size_t rows; int c; float lo, hi; } cases[] = {
        {7, 5, -3.0f, 3.0f},
        {2 * 37 * 41, 19, -3.0f, 3.0f},
        {8 * 30 * 30, 70, 1.0f, 5.0f},
        {4 * 33 * 31, 130, -2.0f, 2.0f},
    };
    const float eps = 1e-3f, momentum = 0.1f;
    uint32_t seed = 1701;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t rows = cases[t].rows;
        const int c = cases[t].c;
        Buf in = buf_random(b, rows * c, &seed, cases[t].lo, cases[t].hi);
        Buf gamma = buf_random(b, c, &seed, 0.5f, 1.5f), beta = buf_random(b, c, &seed, -1, 1);
        Buf dy = buf_random(b, rows * c, &seed, -1.0f, 1.0f);
        for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
            char what[128];
            /* Forward with running statistics; all outputs pre-filled, so none goes unwritten. */
            Buf out = buf_random(b, rows * c, &seed, -9, 9);
            Buf mean = buf_random(b, c, &seed, -9, 9), invstd = buf_random(b, c, &seed, -9, 9);
            Buf rmean = buf_random(b, c, &seed, -1, 1), rvar = buf_random(b, c, &seed, 0.5f, 2);
            b->cpu->bn_train_forward(b->cctx, out.cpu, mean.cpu, invstd.cpu, rmean.cpu, rvar.cpu,
                                     in.cpu, gamma.cpu, beta.cpu, eps, momentum, a, rows, c);
            b->gpu->bn_train_forward(b->gctx, out.gpu, mean.gpu, invstd.gpu, rmean.gpu, rvar.gpu,
                                     in.gpu, gamma.gpu, beta.gpu, eps, momentum, a, rows, c);
            const Buf *res[5] = {&out, &mean, &invstd, &rmean, &rvar};
            const char *names[5] = {"out", "save_mean", "save_invstd", "running_mean",
                                    "running_var"};
            for (int i = 0; i < 5; i++) {
                snprintf(what, sizeof what, "bn_train_forward rows %zu c %d act %s: %s", rows, c,
                         act_name(a), names[i]);
                expect_close(b, what, res[i]);
            }
            /* Without running statistics (NULL): the same outputs, into fresh pre-filled ones. */
            Buf out2 = buf_random(b, rows * c, &seed, -9, 9);
            Buf mean2 = buf_random(b, c, &seed, -9, 9), invstd2 = buf_random(b, c, &seed, -9, 9);
            b->cpu->bn_train_forward(b->cctx, out2.cpu, mean2.cpu, invstd2.cpu, NULL, NULL, in.cpu,
                                     gamma.cpu, beta.cpu, eps, momentum, a, rows, c);
            b->gpu->bn_train_forward(b->gctx, out2.gpu, mean2.gpu, invstd2.gpu, NULL, NULL, in.gpu,
                                     gamma.gpu, beta.gpu, eps, momentum, a, rows, c);
            const Buf *res2[3] = {&out2, &mean2, &invstd2};
            for (int i = 0; i < 3; i++) {
                snprintf(what, sizeof what,
                         "bn_train_forward rows %zu c %d act %s, running NULL: %s", rows, c,
                         act_name(a), names[i]);
                expect_close(b, what, res2[i]);
            }
            /* Backward from the CPU's saved statistics, gradients pre-filled (+=). */
            buf_share_cpu(b, &mean), buf_share_cpu(b, &invstd);
            Buf dx = buf_random(b, rows * c, &seed, -1, 1);
            Buf dgamma = buf_random(b, c, &seed, -1, 1), dbeta = buf_random(b, c, &seed, -1, 1);
            b->cpu->bn_train_backward(b->cctx, dx.cpu, dgamma.cpu, dbeta.cpu, dy.cpu, in.cpu,
                                      gamma.cpu, beta.cpu, mean.cpu, invstd.cpu, a, rows, c);
            b->gpu->bn_train_backward(b->gctx, dx.gpu, dgamma.gpu, dbeta.gpu, dy.gpu, in.gpu,
                                      gamma.gpu, beta.gpu, mean.gpu, invstd.gpu, a, rows, c);
            const Buf *grads[3] = {&dx, &dgamma, &dbeta};
            const char *gnames[3] = {"dx", "dgamma", "dbeta"};
            for (int i = 0; i < 3; i++) {
                snprintf(what, sizeof what, "bn_train_backward rows %zu c %d act %s: %s", rows, c,
                         act_name(a), gnames[i]);
                expect_close(b, what, grads[i]);
            }
            /* dx NULL (an input that needs no gradient): the parameter gradients alone. */
            Buf dgamma2 = buf_random(b, c, &seed, -1, 1), dbeta2 = buf_random(b, c, &seed, -1, 1);
            b->cpu->bn_train_backward(b->cctx, NULL, dgamma2.cpu, dbeta2.cpu, dy.cpu, in.cpu,
                                      gamma.cpu, beta.cpu, mean.cpu, invstd.cpu, a, rows, c);
            b->gpu->bn_train_backward(b->gctx, NULL, dgamma2.gpu, dbeta2.gpu, dy.gpu, in.gpu,
                                      gamma.gpu, beta.gpu, mean.gpu, invstd.gpu, a, rows, c);
            snprintf(what, sizeof what, "bn_train_backward rows %zu c %d act %s, dx NULL: dgamma",
                     rows, c, act_name(a));
            expect_close(b, what, &dgamma2);
            snprintf(what, sizeof what, "bn_train_backward rows %zu c %d act %s, dx NULL: dbeta",
                     rows, c, act_name(a));
            expect_close(b, what, &dbeta2);
            buf_free(b, &out), buf_free(b, &mean), buf_free(b, &invstd), buf_free(b, &rmean);
            buf_free(b, &rvar), buf_free(b, &out2), buf_free(b, &mean2), buf_free(b, &invstd2);
            buf_free(b, &dx), buf_free(b, &dgamma), buf_free(b, &dbeta), buf_free(b, &dgamma2);
            buf_free(b, &dbeta2);
        }
        buf_free(b, &in), buf_free(b, &gamma), buf_free(b, &beta), buf_free(b, &dy);
    }
}

static void test_bn_infer_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, bn_infer_backward);
    static const struct { size_t rows; int c; } cases[] = {{2 * 37 * 41, 19}, {4 * 33 * 31, 130}};
    /* Which of dx (1), dgamma (2), dbeta (4) are passed; the others are NULL. */
    static const unsigned masks[] = {7, 1, 6, 4, 2};
    uint32_t seed = 4343;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const size_t rows = cases[t].rows;
        const int c = cases[t].c;
        Buf in = buf_random(b, rows * c, &seed, -3.0f, 3.0f);
        Buf gamma = buf_random(b, c, &seed, 0.5f, 1.5f), beta = buf_random(b, c, &seed, -1, 1);
        Buf mean = buf_random(b, c, &seed, -1, 1), var = buf_random(b, c, &seed, 0.1f, 2.0f);
        Buf dy = buf_random(b, rows * c, &seed, -1.0f, 1.0f);
        for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
            for (size_t m = 0; m < sizeof masks / sizeof masks[0]; m++) {
                const unsigned mask = masks[m];
                Buf dx = buf_random(b, rows * c, &seed, -1, 1);
                Buf dgamma = buf_random(b, c, &seed, -1, 1), dbeta = buf_random(b, c, &seed, -1, 1);
                b->cpu->bn_infer_backward(b->cctx, mask & 1 ? dx.cpu : NULL,
                                          mask & 2 ? dgamma.cpu : NULL, mask & 4 ? dbeta.cpu : NULL,
                                          dy.cpu, in.cpu, gamma.cpu, beta.cpu, mean.cpu, var.cpu,
                                          1e-3f, a, rows, c);
                b->gpu->bn_infer_backward(b->gctx, mask & 1 ? dx.gpu : NULL,
                                          mask & 2 ? dgamma.gpu : NULL, mask & 4 ? dbeta.gpu : NULL,
                                          dy.gpu, in.gpu, gamma.gpu, beta.gpu, mean.gpu, var.gpu,
                                          1e-3f, a, rows, c);
                const Buf *grads[3] = {&dx, &dgamma, &dbeta};
                const char *gnames[3] = {"dx", "dgamma", "dbeta"};
                for (int i = 0; i < 3; i++) {
                    if (!(mask & (1u << i))) continue;
                    char what[128];
                    snprintf(what, sizeof what, "bn_infer_backward rows %zu c %d act %s%s%s%s: %s",
                             rows, c, act_name(a), mask & 1 ? "" : ", dx NULL",
                             mask & 2 ? "" : ", dgamma NULL", mask & 4 ? "" : ", dbeta NULL",
                             gnames[i]);
                    expect_close(b, what, grads[i]);
                }
                buf_free(b, &dx), buf_free(b, &dgamma), buf_free(b, &dbeta);
            }
        }
        buf_free(b, &in), buf_free(b, &gamma), buf_free(b, &beta), buf_free(b, &mean);
        buf_free(b, &var), buf_free(b, &dy);
    }
}

static void test_act_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, act_backward);
    static const size_t counts[] = {1001, (1u << 20) + 3};
    uint32_t seed = 5858;
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        const size_t count = counts[t];
        Buf x = buf_random(b, count, &seed, -12.0f, 12.0f);
        /* Saturated tails, as in test_act_add: the derivative must come out 0, not NaN. */
        const float tails[4] = {-100.0f, 100.0f, -88.0f, 89.0f};
        memcpy(x.host, tails, sizeof tails);
        buf_upload(b, &x);
        Buf dy = buf_random(b, count, &seed, -1.0f, 1.0f);
        for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
            Buf dx = buf_random(b, count, &seed, -1.0f, 1.0f);
            b->cpu->act_backward(b->cctx, dx.cpu, dy.cpu, x.cpu, a, count);
            b->gpu->act_backward(b->gctx, dx.gpu, dy.gpu, x.gpu, a, count);
            char what[64];
            snprintf(what, sizeof what, "act_backward %s count %zu", act_name(a), count);
            expect_close(b, what, &dx);
            buf_free(b, &dx);
        }
        buf_free(b, &x), buf_free(b, &dy);
    }
}

/* dx (unless NULL), dw and db (unless NULL) of one convolution on both backends, gradients
 * pre-filled; x, w and dy as given. Shared by the fp32 and the TF32 tests. */
static void conv_backward_check(Backends *b, const ConvShape *s, const Buf *x, const Buf *w,
                                const Buf *dy, int with_dx, int with_db, uint32_t *seed,
                                const char *note)
{
    Buf dx = buf_random(b, (size_t)s->n * s->h * s->w * s->cin, seed, -1.0f, 1.0f);
    Buf dw = buf_random(b, (size_t)s->cout * s->kh * s->kw * s->cin, seed, -1.0f, 1.0f);
    Buf db = buf_random(b, (size_t)s->cout, seed, -1.0f, 1.0f);
    b->cpu->conv2d_backward(b->cctx, with_dx ? dx.cpu : NULL, dw.cpu, with_db ? db.cpu : NULL,
                            dy->cpu, x->cpu, w->cpu, s);
    b->gpu->conv2d_backward(b->gctx, with_dx ? dx.gpu : NULL, dw.gpu, with_db ? db.gpu : NULL,
                            dy->gpu, x->gpu, w->gpu, s);
    char shape[160], what[224];
    describe_conv(shape, sizeof shape, "conv2d_backward", s, 0);
    const Buf *grads[3] = {&dx, &dw, &db};
    const char *gnames[3] = {"dx", "dw", "db"};
    const int present[3] = {with_dx, 1, with_db};
    for (int i = 0; i < 3; i++) {
        if (!present[i]) continue;
        snprintf(what, sizeof what, "%s%s%s%s: %s", shape, with_dx ? "" : " dx NULL",
                 with_db ? "" : " db NULL", note, gnames[i]);
        expect_close(b, what, grads[i]);
    }
    buf_free(b, &dx), buf_free(b, &dw), buf_free(b, &db);
}

static void test_conv2d_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, conv2d_backward);
    /* N*OH*OW is several thousand in most cases, so dw and db are sums over many blocks. The
     * cases that pass NULL come last: a kernel that writes through NULL spoils the context. */
    static const struct { int n, h, w, cin, cout, k, stride, dx, db; } cases[] = {
        {2, 45, 41, 19, 23, 1, 1, 1, 1}, /* pointwise: one GEMM over all rows */
        {2, 45, 41, 19, 23, 3, 1, 1, 1}, /* stride 1: symmetric */
        {2, 44, 40, 19, 23, 3, 1, 1, 1},
        {2, 89, 81, 19, 23, 3, 2, 1, 1}, /* odd sizes, stride 2: symmetric */
        {2, 88, 80, 19, 23, 3, 2, 1, 1}, /* even sizes, stride 2: one more row/col after */
        {2, 89, 80, 19, 23, 3, 2, 1, 1}, /* asymmetric in W only */
        {2, 88, 81, 19, 23, 3, 2, 1, 1}, /* asymmetric in H only */
        {2, 88, 80, 19, 7, 5, 2, 1, 1},  {2, 89, 81, 19, 23, 1, 2, 1, 1}, /* 1x1 stride 2 */
        {2, 32, 32, 64, 64, 3, 1, 1, 1}, {4, 24, 24, 88, 37, 1, 1, 1, 1},
        {2, 45, 41, 19, 23, 1, 1, 0, 1}, /* dx NULL */
        {2, 44, 40, 19, 23, 3, 1, 1, 0}, /* db NULL */
        {2, 88, 81, 19, 23, 3, 2, 0, 0},
        {2, 64, 64, 3, 32, 3, 2, 0, 1},  /* the stem: no dx for the network input */
    };
    uint32_t seed = 2718;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ConvShape s;
        conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].cin, cases[t].cout,
                        cases[t].k, cases[t].stride);
        reserve(b, &s);
        Buf x = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.cout * s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf dy = buf_random(b, (size_t)s.n * s.oh * s.ow * s.cout, &seed, -1.0f, 1.0f);
        conv_backward_check(b, &s, &x, &w, &dy, cases[t].dx, cases[t].db, &seed, "");
        buf_free(b, &x), buf_free(b, &w), buf_free(b, &dy);
    }
}

static void test_dwconv2d_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, dwconv2d_backward);
    /* N*OH*OW of several thousand for dw; 37 and 144 channels (144 spans several channel tiles of
     * the CPU's reduction). The dx NULL cases come last. */
    static const struct { int n, h, w, c, k, stride, dx; } cases[] = {
        {2, 45, 41, 37, 3, 1, 1}, {2, 44, 40, 37, 5, 1, 1}, {2, 89, 81, 37, 3, 2, 1},
        {2, 88, 80, 37, 3, 2, 1}, {2, 89, 81, 37, 5, 2, 1}, {2, 88, 80, 37, 5, 2, 1},
        {2, 89, 80, 37, 3, 2, 1}, {2, 88, 81, 37, 5, 2, 1}, {1, 80, 80, 144, 5, 2, 1},
        {2, 45, 41, 37, 3, 1, 0}, {2, 88, 80, 37, 5, 2, 0},
    };
    uint32_t seed = 3141;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ConvShape s;
        conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].c, cases[t].c, cases[t].k,
                        cases[t].stride);
        Buf x = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf dy = buf_random(b, (size_t)s.n * s.oh * s.ow * s.cout, &seed, -1.0f, 1.0f);
        Buf dx = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf dw = buf_random(b, (size_t)s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        const int with_dx = cases[t].dx;
        b->cpu->dwconv2d_backward(b->cctx, with_dx ? dx.cpu : NULL, dw.cpu, dy.cpu, x.cpu, w.cpu,
                                  &s);
        b->gpu->dwconv2d_backward(b->gctx, with_dx ? dx.gpu : NULL, dw.gpu, dy.gpu, x.gpu, w.gpu,
                                  &s);
        char shape[160], what[200];
        describe_conv(shape, sizeof shape, "dwconv2d_backward", &s, 0);
        if (with_dx) {
            snprintf(what, sizeof what, "%s: dx", shape);
            expect_close(b, what, &dx);
        }
        snprintf(what, sizeof what, "%s%s: dw", shape, with_dx ? "" : " dx NULL");
        expect_close(b, what, &dw);
        buf_free(b, &x), buf_free(b, &w), buf_free(b, &dy), buf_free(b, &dx), buf_free(b, &dw);
    }
}

static void test_se_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, se_backward);
    static const struct { int n, hw, c, cr, dx; } cases[] = {
        {2, 13 * 9, 19, 5, 1}, {3, 1000, 70, 17, 1}, {4, 40 * 40, 144, 6, 1}, {2, 400, 40, 10, 0},
    };
    uint32_t seed = 6174;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int n = cases[t].n, hw = cases[t].hw, c = cases[t].c, cr = cases[t].cr;
        const int with_dx = cases[t].dx;
        Buf x = buf_random(b, (size_t)n * hw * c, &seed, -1.0f, 1.0f);
        Buf w_r = buf_random(b, (size_t)cr * c, &seed, -1, 1);
        Buf b_r = buf_random(b, cr, &seed, -1, 1);
        Buf w_e = buf_random(b, (size_t)c * cr, &seed, -1, 1), b_e = buf_random(b, c, &seed, -1, 1);
        Buf out = buf_out(b, (size_t)n * hw * c), pooled = buf_out(b, (size_t)n * c);
        Buf hidden = buf_out(b, (size_t)n * cr), gate = buf_out(b, (size_t)n * c);
        /* The forward's saved tensors, from the CPU on both backends. */
        b->cpu->se_forward(b->cctx, out.cpu, pooled.cpu, hidden.cpu, gate.cpu, x.cpu, w_r.cpu,
                           b_r.cpu, w_e.cpu, b_e.cpu, n, hw, c, cr);
        buf_share_cpu(b, &pooled), buf_share_cpu(b, &hidden), buf_share_cpu(b, &gate);
        Buf dy = buf_random(b, (size_t)n * hw * c, &seed, -1.0f, 1.0f);
        Buf dx = buf_random(b, (size_t)n * hw * c, &seed, -1.0f, 1.0f);
        Buf dw_r = buf_random(b, (size_t)cr * c, &seed, -1, 1);
        Buf db_r = buf_random(b, cr, &seed, -1, 1);
        Buf dw_e = buf_random(b, (size_t)c * cr, &seed, -1, 1);
        Buf db_e = buf_random(b, c, &seed, -1, 1);
        b->cpu->se_backward(b->cctx, with_dx ? dx.cpu : NULL, dw_r.cpu, db_r.cpu, dw_e.cpu,
                            db_e.cpu, dy.cpu, x.cpu, pooled.cpu, hidden.cpu, gate.cpu, w_r.cpu,
                            b_r.cpu, w_e.cpu, n, hw, c, cr);
        b->gpu->se_backward(b->gctx, with_dx ? dx.gpu : NULL, dw_r.gpu, db_r.gpu, dw_e.gpu,
                            db_e.gpu, dy.gpu, x.gpu, pooled.gpu, hidden.gpu, gate.gpu, w_r.gpu,
                            b_r.gpu, w_e.gpu, n, hw, c, cr);
        const Buf *grads[5] = {&dx, &dw_r, &db_r, &dw_e, &db_e};
        const char *gnames[5] = {"dx", "dw_r", "db_r", "dw_e", "db_e"};
        for (int i = with_dx ? 0 : 1; i < 5; i++) {
            char what[112];
            snprintf(what, sizeof what, "se_backward n %d hw %d c %d cr %d%s: %s", n, hw, c, cr,
                     with_dx ? "" : " dx NULL", gnames[i]);
            expect_close(b, what, grads[i]);
        }
        buf_free(b, &x), buf_free(b, &w_r), buf_free(b, &b_r), buf_free(b, &w_e);
        buf_free(b, &b_e), buf_free(b, &out), buf_free(b, &pooled), buf_free(b, &hidden);
        buf_free(b, &gate), buf_free(b, &dy), buf_free(b, &dx), buf_free(b, &dw_r);
        buf_free(b, &db_r), buf_free(b, &dw_e), buf_free(b, &db_e);
    }
}

static void test_accumulate(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, accumulate);
    static const size_t counts[] = {1, 5, 1001, (1u << 20) + 3};
    uint32_t seed = 1123;
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        Buf dst = buf_random(b, counts[t], &seed, -1.0f, 1.0f);
        Buf src = buf_random(b, counts[t], &seed, -1.0f, 1.0f);
        b->cpu->accumulate(b->cctx, dst.cpu, src.cpu, counts[t]);
        b->gpu->accumulate(b->gctx, dst.gpu, src.gpu, counts[t]);
        char what[64];
        snprintf(what, sizeof what, "accumulate count %zu", counts[t]);
        expect_close(b, what, &dst);
        buf_free(b, &dst), buf_free(b, &src);
    }
}

static void test_maxpool_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, maxpool_backward);
    /* levels 0: continuous values; L > 0: L distinct values only, so windows hold exact ties and
     * the gradient must go to the first maximum in scan order (L = 1: every window is one big
     * tie). All negative, so a padded cell taken as 0 would win. */
    static const struct { int n, h, w, c, k, stride, levels; } cases[] = {
        {2, 45, 41, 37, 3, 2, 0}, {2, 44, 40, 37, 3, 2, 0}, {2, 45, 40, 37, 3, 2, 0},
        {2, 45, 41, 37, 3, 2, 3}, {2, 44, 40, 37, 3, 2, 3}, {2, 44, 41, 37, 3, 2, 2},
        {2, 13, 9, 19, 3, 2, 1},  {2, 13, 9, 19, 3, 1, 3},  {2, 12, 8, 19, 2, 2, 3},
        {1, 64, 64, 88, 3, 2, 4},
    };
    uint32_t seed = 9090;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        PoolShape s;
        pool_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].c, cases[t].k,
                        cases[t].stride);
        const int levels = cases[t].levels;
        Buf x = buf_random(b, (size_t)s.n * s.h * s.w * s.c, &seed, -3.0f, -0.1f);
        if (levels > 0) {
            for (size_t i = 0; i < x.n; i++) {
                int l = (int)(rng_uniform(&seed, 0.0f, (float)levels));
                x.host[i] = -0.1f - 0.5f * (float)(l < levels ? l : levels - 1);
            }
            buf_upload(b, &x);
        }
        Buf dy = buf_random(b, (size_t)s.n * s.oh * s.ow * s.c, &seed, -1.0f, 1.0f);
        Buf dx = buf_random(b, x.n, &seed, -1.0f, 1.0f);
        b->cpu->maxpool_backward(b->cctx, dx.cpu, dy.cpu, x.cpu, &s);
        b->gpu->maxpool_backward(b->gctx, dx.gpu, dy.gpu, x.gpu, &s);
        char what[144];
        snprintf(what, sizeof what,
                 "maxpool_backward (%d,%d,%d,%d)->(%d,%d) k%d s%d pad t%d l%d %s%d", s.n, s.h, s.w,
                 s.c, s.oh, s.ow, s.kh, s.stride, s.pad_top, s.pad_left,
                 levels ? "tied, levels " : "continuous", levels);
        expect_close(b, what, &dx);
        buf_free(b, &x), buf_free(b, &dy), buf_free(b, &dx);
    }
}

static void test_upsample_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, upsample_nearest_backward);
    /* 2x, non-integer ratios (5->8, 7->13), identity, and a downsample (inputs that no output
     * copied get nothing). 10->12 and 26->44 tell the float32 rule apart from look-alikes: at
     * dst 6 of 10->12 the float scale's product taken in double floors to 4, not 5; at dst 22
     * of 26->44 exact integer math (dst * in / out) gives 13, not 12. */
    static const struct { int n, h, w, c, oh, ow; } cases[] = {
        {2, 4, 4, 19, 8, 8},    {2, 3, 5, 19, 6, 10},  {2, 5, 7, 19, 8, 13},
        {2, 7, 5, 19, 13, 8},   {2, 7, 5, 19, 7, 5},   {2, 9, 5, 19, 5, 3},
        {1, 10, 10, 64, 20, 20}, {2, 32, 32, 88, 64, 64}, {1, 10, 26, 19, 12, 44},
    };
    uint32_t seed = 4096;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int n = cases[t].n, h = cases[t].h, w = cases[t].w, c = cases[t].c;
        const int oh = cases[t].oh, ow = cases[t].ow;
        Buf dy = buf_random(b, (size_t)n * oh * ow * c, &seed, -1.0f, 1.0f);
        Buf dx = buf_random(b, (size_t)n * h * w * c, &seed, -1.0f, 1.0f);
        b->cpu->upsample_nearest_backward(b->cctx, dx.cpu, dy.cpu, n, h, w, c, oh, ow);
        b->gpu->upsample_nearest_backward(b->gctx, dx.gpu, dy.gpu, n, h, w, c, oh, ow);
        char what[112];
        snprintf(what, sizeof what, "upsample_nearest_backward (%d,%d,%d,%d)->(%d,%d)", n, h, w, c,
                 oh, ow);
        expect_close(b, what, &dx);
        buf_free(b, &dy), buf_free(b, &dx);
    }
}

static void test_fuse_backward(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, fuse_backward);
    /* Edge weights with a negative one and an exact 0 (relu' = 0: no dw, no din contribution),
     * sum fusion (w == NULL), and some dins NULL (bit i of dins set: dins[i] is passed). */
    static const struct { int k, weighted; float w[4]; unsigned dins; } cases[] = {
        {2, 1, {0.8f, 1.7f}, 0x3},
        {3, 1, {0.6f, 1.1f, 0.0f}, 0x7},
        {3, 1, {-0.2f, 0.9f, 1.4f}, 0x7},
        {4, 1, {0.5f, 0.25f, 2.0f, 1.0f}, 0xf},
        {2, 0, {0}, 0x3},
        {3, 0, {0}, 0x7},
        {2, 1, {0.3f, -0.5f}, 0x1},
        {3, 1, {0.7f, 1.2f, 0.4f}, 0x6},
        {3, 0, {0}, 0x5},
    };
    const size_t count = 2 * 32 * 32 * 88;
    uint32_t seed = 8128;
    Buf in[4];
    const float *cins[4], *gins[4];
    for (int i = 0; i < 4; i++) {
        in[i] = buf_random(b, count, &seed, -2.0f, 2.0f);
        cins[i] = in[i].cpu, gins[i] = in[i].gpu;
    }
    Buf dy = buf_random(b, count, &seed, -1.0f, 1.0f);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int k = cases[t].k, weighted = cases[t].weighted;
        Buf w = buf_random(b, (size_t)k, &seed, 0, 1), dw = buf_random(b, (size_t)k, &seed, -1, 1);
        memcpy(w.host, cases[t].w, (size_t)k * sizeof(float));
        buf_upload(b, &w);
        Buf din[4];
        float *cd[4], *gd[4];
        for (int i = 0; i < k; i++) {
            din[i] = buf_random(b, count, &seed, -1.0f, 1.0f);
            const int on = (cases[t].dins >> i) & 1;
            cd[i] = on ? din[i].cpu : NULL, gd[i] = on ? din[i].gpu : NULL;
        }
        b->cpu->fuse_backward(b->cctx, cd, weighted ? dw.cpu : NULL, dy.cpu, cins,
                              weighted ? w.cpu : NULL, k, count);
        b->gpu->fuse_backward(b->gctx, gd, weighted ? dw.gpu : NULL, dy.gpu, gins,
                              weighted ? w.gpu : NULL, k, count);
        char desc[96] = "sum", what[160];
        if (weighted) {
            int len = snprintf(desc, sizeof desc, "w");
            for (int i = 0; i < k; i++)
                len += snprintf(desc + len, sizeof desc - (size_t)len, "%s%g", i ? "," : " ",
                                cases[t].w[i]);
        }
        for (int i = 0; i < k; i++) {
            if (!cd[i]) continue;
            snprintf(what, sizeof what, "fuse_backward k %d %s dins mask 0x%x count %zu: dins[%d]",
                     k, desc, cases[t].dins, count, i);
            expect_close(b, what, &din[i]);
        }
        if (weighted) {
            snprintf(what, sizeof what, "fuse_backward k %d %s dins mask 0x%x count %zu: dw", k,
                     desc, cases[t].dins, count);
            expect_close(b, what, &dw);
        }
        for (int i = 0; i < k; i++) buf_free(b, &din[i]);
        buf_free(b, &w), buf_free(b, &dw);
    }
    for (int i = 0; i < 4; i++) buf_free(b, &in[i]);
    buf_free(b, &dy);
}

static void test_detection_loss(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, detection_loss);
    /* Two pyramid levels per case, accumulated into one zeroed loss with one norm (positives of
     * both levels + 1), as the model calls it. grads: bit 0 dcls passed, bit 1 dbox passed. */
    enum { LEVELS = 2 };
    static const struct { int batch, size, anchors, classes; float ls; unsigned grads; } cases[] = {
        {2, 24, 9, 90, 0.0f, 3}, {2, 24, 9, 90, 0.1f, 3}, {2, 24, 9, 90, 0.1f, 0},
        {1, 7, 9, 5, 0.0f, 3},   {1, 7, 9, 5, 0.1f, 3},   /* small norm: gradients far above ATOL */
        {3, 10, 3, 37, 0.1f, 1}, {3, 10, 3, 37, 0.0f, 2},
    };
    const float alpha = 0.25f, gamma = 1.5f, delta = 0.1f, box_weight = 50.0f;
    uint32_t seed = 27182;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int A = cases[t].anchors, C = cases[t].classes;
        const float ls = cases[t].ls;
        const int with_dcls = cases[t].grads & 1, with_dbox = (cases[t].grads >> 1) & 1;
        size_t rows[LEVELS];
        Buf cls[LEVELS], box[LEVELS], tbox[LEVELS], dcls[LEVELS], dbox[LEVELS];
        Raw tcls[LEVELS];
        int positives = 0;
        for (int l = 0; l < LEVELS; l++) {
            const int side = cases[t].size >> l; /* the next level is half as wide */
            rows[l] = (size_t)cases[t].batch * side * side;
            const size_t na = rows[l] * A;
            cls[l] = buf_random(b, na * C, &seed, -10.0f, 6.0f);
            tbox[l] = buf_random(b, na * 4, &seed, -1.0f, 1.0f);
            int32_t *target = malloc(na * sizeof(int32_t));
            assert_non_null(target);
            /* 3% positive (a random class channel), 10% ignored, the rest background: few
             * positives keep norm small, so the gradients (1/norm) stay well above ATOL. Box
             * targets: 20% of the components exactly 0 (masked); about half the background anchors
             * and every ignored one all 0, as the labeler leaves them. */
            for (size_t a = 0; a < na; a++) {
                const float u = rng_uniform(&seed, 0.0f, 1.0f);
                float *tb = tbox[l].host + a * 4;
                if (u < 0.03f) {
                    int cl = (int)rng_uniform(&seed, 0.0f, (float)C);
                    target[a] = cl < C ? cl : C - 1;
                    positives++;
                } else {
                    target[a] = u < 0.13f ? -2 : -1;
                }
                const int zero_all = target[a] == -2 || (target[a] == -1 && u < 0.57f);
                for (int k = 0; k < 4; k++)
                    if (zero_all || rng_uniform(&seed, 0.0f, 1.0f) < 0.2f) tb[k] = 0.0f;
            }
            tcls[l] = raw_upload(b, target, na * sizeof(int32_t));
            free(target);
            /* Box outputs near their targets, so both Huber branches (|e| <= delta and above)
             * occur. */
            box[l] = buf_random(b, na * 4, &seed, -0.3f, 0.3f);
            for (size_t i = 0; i < na * 4; i++) box[l].host[i] += tbox[l].host[i];
            buf_upload(b, &tbox[l]), buf_upload(b, &box[l]);
            /* "=" outputs, pre-filled so that unwritten (ignored, masked) values show. */
            dcls[l] = buf_random(b, na * C, &seed, -1.0f, 1.0f);
            dbox[l] = buf_random(b, na * 4, &seed, -1.0f, 1.0f);
        }
        const float norm = (float)positives + 1.0f;
        Buf loss = buf_out(b, 2); /* zeroed by mem_alloc, as the caller must */
        for (int l = 0; l < LEVELS; l++) {
            b->cpu->detection_loss(b->cctx, loss.cpu, with_dcls ? dcls[l].cpu : NULL,
                                   with_dbox ? dbox[l].cpu : NULL, cls[l].cpu, box[l].cpu,
                                   tcls[l].cpu, tbox[l].cpu, rows[l], A, C, norm, alpha, gamma,
                                   delta, box_weight, ls);
            b->gpu->detection_loss(b->gctx, loss.gpu, with_dcls ? dcls[l].gpu : NULL,
                                   with_dbox ? dbox[l].gpu : NULL, cls[l].gpu, box[l].gpu,
                                   tcls[l].gpu, tbox[l].gpu, rows[l], A, C, norm, alpha, gamma,
                                   delta, box_weight, ls);
        }
        char what[144];
        for (int l = 0; l < LEVELS; l++) {
            if (with_dcls) {
                snprintf(what, sizeof what, "detection_loss rows %zu A %d C %d ls %g: dcls",
                         rows[l], A, C, ls);
                expect_close(b, what, &dcls[l]);
            }
            if (with_dbox) {
                snprintf(what, sizeof what, "detection_loss rows %zu A %d C %d ls %g: dbox",
                         rows[l], A, C, ls);
                expect_close(b, what, &dbox[l]);
            }
        }
        /* Each loss on its own, so the smaller box loss is held to its own magnitude. */
        const Buf focal = {loss.host, loss.cpu, loss.gpu, 1};
        const Buf huber = {loss.host + 1, loss.cpu + 1, loss.gpu + 1, 1};
        snprintf(what, sizeof what, "detection_loss %d levels A %d C %d ls %g%s%s: loss[0] focal",
                 LEVELS, A, C, ls, with_dcls ? "" : " dcls NULL", with_dbox ? "" : " dbox NULL");
        expect_close(b, what, &focal);
        snprintf(what, sizeof what, "detection_loss %d levels A %d C %d ls %g%s%s: loss[1] huber",
                 LEVELS, A, C, ls, with_dcls ? "" : " dcls NULL", with_dbox ? "" : " dbox NULL");
        expect_close(b, what, &huber);
        for (int l = 0; l < LEVELS; l++) {
            buf_free(b, &cls[l]), buf_free(b, &box[l]), buf_free(b, &tbox[l]);
            buf_free(b, &dcls[l]), buf_free(b, &dbox[l]), raw_free(b, &tcls[l]);
        }
        buf_free(b, &loss);
    }
}

static void test_optimizer(void **state)
{
    Backends *b = *state;
    REQUIRE_GPU_OP(b, sum_squares);
    REQUIRE_GPU_OP(b, sgd_update);
    REQUIRE_GPU_OP(b, ema_update);
    static const size_t counts[] = {1, 1001, (1u << 22) + 5};
    uint32_t seed = 161803;
    char what[96];
    for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
        const size_t count = counts[t];
        Buf x = buf_random(b, count, &seed, -1.0f, 1.0f);
        Buf out = buf_random(b, 1, &seed, 5.0f, 9.0f); /* "=": the old value must go */
        b->cpu->sum_squares(b->cctx, out.cpu, x.cpu, count);
        b->gpu->sum_squares(b->gctx, out.gpu, x.gpu, count);
        snprintf(what, sizeof what, "sum_squares count %zu", count);
        expect_close(b, what, &out);
        buf_free(b, &x), buf_free(b, &out);
    }
    const size_t count = (1u << 20) + 3;
    Buf params = buf_random(b, count, &seed, -1.0f, 1.0f);
    Buf mom = buf_random(b, count, &seed, -0.1f, 0.1f);
    Buf grads = buf_random(b, count, &seed, -2.0f, 2.0f);
    uint8_t *mask = malloc(count);
    assert_non_null(mask);
    for (size_t i = 0; i < count; i++) mask[i] = rng_uniform(&seed, 0.0f, 1.0f) < 0.5f;
    Raw decay_mask = raw_upload(b, mask, count);
    free(mask);
    /* Three steps with different clipping scales; a weight decay large enough to show where the
     * mask is 1. */
    const float scales[3] = {0.37f, 1.0f, 0.05f};
    for (int step = 0; step < 3; step++) {
        b->cpu->sgd_update(b->cctx, params.cpu, mom.cpu, grads.cpu, decay_mask.cpu, 0.08f, 0.9f,
                           0.04f, scales[step], count);
        b->gpu->sgd_update(b->gctx, params.gpu, mom.gpu, grads.gpu, decay_mask.gpu, 0.08f, 0.9f,
                           0.04f, scales[step], count);
        snprintf(what, sizeof what, "sgd_update count %zu step %d grad_scale %g: params", count,
                 step, scales[step]);
        expect_close(b, what, &params);
        snprintf(what, sizeof what, "sgd_update count %zu step %d grad_scale %g: momentum_buf",
                 count, step, scales[step]);
        expect_close(b, what, &mom);
    }
    const float decays[2] = {0.9998f, 0.5f};
    Buf ema = buf_random(b, count, &seed, -1.0f, 1.0f);
    for (int i = 0; i < 2; i++) {
        b->cpu->ema_update(b->cctx, ema.cpu, params.cpu, decays[i], count);
        b->gpu->ema_update(b->gctx, ema.gpu, params.gpu, decays[i], count);
        snprintf(what, sizeof what, "ema_update count %zu decay %g", count, decays[i]);
        expect_close(b, what, &ema);
    }
    buf_free(b, &params), buf_free(b, &mom), buf_free(b, &grads), buf_free(b, &ema);
    raw_free(b, &decay_mask);
}

/* x rounded to multiples of 1/256 on both backends: at most 9 significant bits, exact in TF32. */
static void buf_tf32_exact(const Backends *b, Buf *x)
{
    for (size_t i = 0; i < x->n; i++) x->host[i] = roundf(x->host[i] * 256.0f) / 256.0f;
    buf_upload(b, x);
}

/* conv2d forward (with bias) and backward of one shape in the current math mode. In every GEMM one
 * operand is TF32-exact (w for the forward and dx, xq for dw) and the other full fp32, so TF32
 * shows (about 2e-4) yet leaves room under RTOL_TF32 even where operands are truncated (rounded
 * toward zero) rather than rounded to nearest. */
static void conv_tf32_round(Backends *b, const ConvShape *s, const Buf *x, const Buf *xq,
                            const Buf *w, const Buf *bias, const Buf *dy, uint32_t *seed,
                            const char *note)
{
    Buf out = buf_random(b, (size_t)s->n * s->oh * s->ow * s->cout, seed, -1.0f, 1.0f);
    b->cpu->conv2d_forward(b->cctx, out.cpu, x->cpu, w->cpu, bias->cpu, s);
    b->gpu->conv2d_forward(b->gctx, out.gpu, x->gpu, w->gpu, bias->gpu, s);
    char shape[160], what[200];
    describe_conv(shape, sizeof shape, "conv2d_forward", s, 1);
    snprintf(what, sizeof what, "%s%s", shape, note);
    expect_close(b, what, &out);
    buf_free(b, &out);
    conv_backward_check(b, s, xq, w, dy, 1, 1, seed, note);
}

static void test_conv2d_tf32(void **state)
{
    Backends *b = *state;
    if (!b->gpu->set_tf32) {
        printf("  %s backend has no set_tf32: TF32 test skipped\n", b->gpu->name);
        return;
    }
    REQUIRE_GPU_OP(b, conv2d_backward);
    static const struct { int n, h, w, cin, cout, k, stride; } cases[] = {
        {4, 40, 40, 64, 64, 3, 1}, {2, 64, 64, 40, 88, 3, 2}, {4, 32, 32, 120, 96, 1, 1},
        {2, 63, 63, 32, 48, 5, 2},
    };
    uint32_t seed = 1414;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        ConvShape s;
        conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].cin, cases[t].cout,
                        cases[t].k, cases[t].stride);
        reserve(b, &s);
        Buf x = buf_random(b, (size_t)s.n * s.h * s.w * s.cin, &seed, -1.0f, 1.0f);
        Buf xq = buf_random(b, x.n, &seed, -1.0f, 1.0f);
        Buf w = buf_random(b, (size_t)s.cout * s.kh * s.kw * s.cin, &seed, -1.0f, 1.0f);
        Buf bias = buf_random(b, (size_t)s.cout, &seed, -1.0f, 1.0f);
        Buf dy = buf_random(b, (size_t)s.n * s.oh * s.ow * s.cout, &seed, -1.0f, 1.0f);
        buf_tf32_exact(b, &xq), buf_tf32_exact(b, &w);
        /* fp32 first (plans cached), then TF32 on, then off again: fp32 accuracy must come back,
         * so plans chosen under TF32 may not outlive set_tf32(0). */
        conv_tf32_round(b, &s, &x, &xq, &w, &bias, &dy, &seed, "");
        b->gpu->set_tf32(b->gctx, 1);
        b->tf32 = 1;
        conv_tf32_round(b, &s, &x, &xq, &w, &bias, &dy, &seed, " TF32 on");
        b->gpu->set_tf32(b->gctx, 0);
        b->tf32 = 0;
        conv_tf32_round(b, &s, &x, &xq, &w, &bias, &dy, &seed, " TF32 off again");
        buf_free(b, &x), buf_free(b, &xq), buf_free(b, &w), buf_free(b, &bias), buf_free(b, &dy);
    }
}

/* A failure inside a TF32 round leaves TF32 on; later tests must run in fp32, with its bound. */
static int tf32_teardown(void **state)
{
    Backends *b = *state;
    if (b->tf32 && b->gpu->set_tf32) b->gpu->set_tf32(b->gctx, 0);
    b->tf32 = 0;
    return 0;
}

int main(void)
{
    Err err = {{0}};
    Backends b = {.cpu = ops_cpu(), .gpu = ops_cuda(&err)};
    if (b.gpu) b.gctx = b.gpu->ctx_create(0, &err);
    if (!b.gpu || !b.gctx) {
        fprintf(stderr,
                "test_ops_gpu: no usable CUDA GPU, so the CUDA backend cannot be compared with "
                "the CPU: %s\n(make test-gpu is meant for a machine with a GPU)\n",
                err.msg);
        return 1;
    }
    b.cctx = b.cpu->ctx_create(0, &err);
    if (!b.cctx) {
        fprintf(stderr, "test_ops_gpu: cpu backend: %s\n", err.msg);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_conv2d, &b),
        cmocka_unit_test_prestate(test_conv2d_plan_cache, &b),
        cmocka_unit_test_prestate(test_dwconv2d, &b),
        cmocka_unit_test_prestate(test_bn_infer, &b),
        cmocka_unit_test_prestate(test_act_add, &b),
        cmocka_unit_test_prestate(test_fuse, &b),
        cmocka_unit_test_prestate(test_se, &b),
        cmocka_unit_test_prestate(test_maxpool, &b),
        cmocka_unit_test_prestate(test_upsample, &b),
        cmocka_unit_test_prestate(test_bn_train, &b),
        cmocka_unit_test_prestate(test_bn_infer_backward, &b),
        cmocka_unit_test_prestate(test_act_backward, &b),
        cmocka_unit_test_prestate(test_conv2d_backward, &b),
        cmocka_unit_test_prestate(test_dwconv2d_backward, &b),
        cmocka_unit_test_prestate(test_se_backward, &b),
        cmocka_unit_test_prestate(test_accumulate, &b),
        cmocka_unit_test_prestate(test_maxpool_backward, &b),
        cmocka_unit_test_prestate(test_upsample_backward, &b),
        cmocka_unit_test_prestate(test_fuse_backward, &b),
        cmocka_unit_test_prestate(test_detection_loss, &b),
        cmocka_unit_test_prestate(test_optimizer, &b),
        cmocka_unit_test_prestate_setup_teardown(test_conv2d_tf32, NULL, tf32_teardown, &b),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    print_summary(&b);
    b.gpu->ctx_destroy(b.gctx);
    b.cpu->ctx_destroy(b.cctx);
    return failed ? 1 : 0;
}
