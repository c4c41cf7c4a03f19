/* test_ops_gpu.c: every forward op of the CUDA backend against the CPU reference (kernels/cpu/),
 * under tests/support/gpu_compare.h's bound (1e-5 relative + 1e-6 absolute).
 *
 * Each test draws random inputs of deliberately odd sizes (channels that are not multiples of 4 or
 * 32, heights and widths that are odd and even, so both symmetric and asymmetric SAME padding
 * occur) and compares every output and saved tensor. The training ops are in
 * test_train_ops_gpu.c. Built and run only by `make test-gpu`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/gpu_compare.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_conv2d_plan_cache),
        cmocka_unit_test(test_dwconv2d),
        cmocka_unit_test(test_bn_infer),
        cmocka_unit_test(test_act_add),
        cmocka_unit_test(test_fuse),
        cmocka_unit_test(test_se),
        cmocka_unit_test(test_maxpool),
        cmocka_unit_test(test_upsample),
    };
    return gpu_compare_main("test_ops_gpu", tests, sizeof tests / sizeof tests[0]);
}
