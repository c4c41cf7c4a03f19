/* test_ops_gpu.c: every op of the CUDA backend against the CPU reference (kernels/cpu/).
 *
 * Each test draws random inputs of deliberately odd sizes (channels that are not multiples of 4 or
 * 32, heights and widths that are odd and even, so both symmetric and asymmetric SAME padding
 * occur), runs the op on both backends and requires, for every output and saved tensor,
 *     max |gpu - cpu| <= 1e-5 * max |cpu| + 1e-6,
 * printing the worst difference and its ratio to max |cpu| for every comparison (llm.c style), so
 * the log shows how much room each op has. Built and run only by `make test-gpu`: on a machine
 * without a usable GPU it prints why and exits non-zero, since there is nothing to compare. */
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

typedef struct Backends {
    const Ops *cpu, *gpu;
    OpsCtx *cctx, *gctx;
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

/* Downloads both results and checks max|gpu - cpu| <= RTOL * max|cpu| + ATOL; prints the figures
 * when `print` is set. Returns max|gpu - cpu| / max|cpu|. */
static double check_close(const Backends *b, const char *what, const Buf *x, int print)
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
    double tol = RTOL * max_ref + ATOL, rel = max_ref > 0 ? max_diff / max_ref : max_diff;
    if (print || !(max_diff <= tol))
        printf("  %-58s max|gpu-cpu| %.3g  max|cpu| %.3g  rel %.3g%s\n", what, max_diff, max_ref,
               rel, max_diff <= tol ? "" : "  FAIL");
    if (!(max_diff <= tol))
        fail_msg("%s: max|gpu-cpu| = %g > tol %g at [%zu]: gpu %.9g, cpu %.9g", what, max_diff, tol,
                 worst, x->host[worst], ref[worst]);
    free(ref);
    return rel;
}

static void expect_close(const Backends *b, const char *what, const Buf *x)
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
    const Backends *b = *state;
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
        describe_conv(what, sizeof what, "conv2d", &s, hb);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &w), buf_free(b, &bias), buf_free(b, &out);
    }
}

/* More distinct shapes than the context's plan cache holds (256), then the first ones again, which
 * by then have been evicted: slot reuse must re-plan them correctly. */
static void test_conv2d_plan_cache(void **state)
{
    const Backends *b = *state;
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
        describe_conv(what, sizeof what, "conv2d", &s, 1);
        double rel = check_close(b, what, &out, 0);
        if (rel > worst) worst = rel;
        buf_free(b, &in), buf_free(b, &w), buf_free(b, &bias), buf_free(b, &out);
    }
    printf("  %-58s rel %.3g (worst of %d shapes)\n", "conv2d plan cache: cout 1..300, s1/s2",
           worst, SHAPES + AGAIN);
}

static void test_dwconv2d(void **state)
{
    const Backends *b = *state;
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
        describe_conv(what, sizeof what, "dwconv2d", &s, 0);
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
    const Backends *b = *state;
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
            snprintf(what, sizeof what, "bn_infer rows %zu c %d act %s", rows, c, act_name(a));
            expect_close(b, what, &out);
        }
        buf_free(b, &in), buf_free(b, &gamma), buf_free(b, &beta), buf_free(b, &mean);
        buf_free(b, &var), buf_free(b, &out);
    }
}

static void test_act_add(void **state)
{
    const Backends *b = *state;
    const size_t count = 1001;
    uint32_t seed = 99;
    Buf x = buf_random(b, count, &seed, -12.0f, 12.0f), y = buf_random(b, count, &seed, -1, 1);
    /* Saturated tails: expf overflows to inf here, and both backends must agree on the limits. */
    const float tails[4] = {-100.0f, 100.0f, -88.0f, 89.0f};
    memcpy(x.host, tails, sizeof tails);
    b->cpu->mem_upload(b->cctx, x.cpu, x.host, count * sizeof(float));
    b->gpu->mem_upload(b->gctx, x.gpu, x.host, count * sizeof(float));
    Buf out = buf_out(b, count);
    for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
        b->cpu->act_forward(b->cctx, out.cpu, x.cpu, a, count);
        b->gpu->act_forward(b->gctx, out.gpu, x.gpu, a, count);
        char what[64];
        snprintf(what, sizeof what, "act %s count %zu", act_name(a), count);
        expect_close(b, what, &out);
    }
    b->cpu->add_forward(b->cctx, out.cpu, x.cpu, y.cpu, count);
    b->gpu->add_forward(b->gctx, out.gpu, x.gpu, y.gpu, count);
    expect_close(b, "add count 1001", &out);
    buf_free(b, &x), buf_free(b, &y), buf_free(b, &out);
}

static void test_fuse(void **state)
{
    const Backends *b = *state;
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
    b->cpu->mem_upload(b->cctx, w.cpu, w.host, 4 * sizeof(float));
    b->gpu->mem_upload(b->gctx, w.gpu, w.host, 4 * sizeof(float));
    Buf out = buf_out(b, count);
    for (int k = 1; k <= 4; k++) {
        for (int weighted = 0; weighted < 2; weighted++) {
            b->cpu->fuse_forward(b->cctx, out.cpu, cins, weighted ? w.cpu : NULL, k, count);
            b->gpu->fuse_forward(b->gctx, out.gpu, gins, weighted ? w.gpu : NULL, k, count);
            char what[64];
            snprintf(what, sizeof what, "fuse k %d %s count %zu", k,
                     weighted ? "weighted" : "sum", count);
            expect_close(b, what, &out);
        }
    }
    for (int i = 0; i < 4; i++) buf_free(b, &in[i]);
    buf_free(b, &w), buf_free(b, &out);
}

static void test_se(void **state)
{
    const Backends *b = *state;
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
            snprintf(what, sizeof what, "se n %d hw %d c %d cr %d: %s", n, hw, c, cr, names[i]);
            expect_close(b, what, res[i]);
        }
        buf_free(b, &x), buf_free(b, &w_r), buf_free(b, &b_r), buf_free(b, &w_e);
        buf_free(b, &b_e), buf_free(b, &out), buf_free(b, &pooled), buf_free(b, &hidden);
        buf_free(b, &gate);
    }
}

static void test_maxpool(void **state)
{
    const Backends *b = *state;
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
        snprintf(what, sizeof what, "maxpool (%d,%d,%d,%d)->(%d,%d) k%d s%d pad t%d l%d", s.n,
                 s.h, s.w, s.c, s.oh, s.ow, s.kh, s.stride, s.pad_top, s.pad_left);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &out);
    }
}

static void test_upsample(void **state)
{
    const Backends *b = *state;
    static const struct { int n, h, w, c, oh, ow; } cases[] = {
        {2, 3, 3, 19, 5, 5}, {2, 4, 4, 19, 8, 8}, {2, 3, 4, 19, 5, 8},
        {2, 7, 5, 19, 7, 5}, {2, 5, 9, 19, 3, 4}, {1, 10, 10, 64, 20, 20},
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
        snprintf(what, sizeof what, "upsample_nearest (%d,%d,%d,%d)->(%d,%d)", n, h, w, c, oh, ow);
        expect_close(b, what, &out);
        buf_free(b, &in), buf_free(b, &out);
    }
}

int main(void)
{
    Err err = {{0}};
    Backends b = {ops_cpu(), ops_cuda(&err), NULL, NULL};
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
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    b.gpu->ctx_destroy(b.gctx);
    b.cpu->ctx_destroy(b.cctx);
    return failed ? 1 : 0;
}
