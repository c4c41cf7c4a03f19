/* test_train_ops_gpu.c: every training op of the CUDA backend (train-mode BN, the backward
 * passes, the detection loss, the optimizer) and TF32 convolutions against the CPU reference
 * (kernels/cpu/), under tests/support/gpu_compare.h's bounds (fp32 1e-5 relative + 1e-6
 * absolute, TF32 1e-3).
 *
 * Every gradient output is pre-filled with the same random values on both backends (not zeros),
 * since backward ops accumulate (+=): a kernel that overwrites, or leaves an output unwritten,
 * fails at once. Outputs with "=" semantics (forward outputs, dcls/dbox, sum_squares) are
 * pre-filled with random values too, so an unwritten value shows. Where one op feeds another
 * (saved batch statistics, SE's saved tensors) the CPU's result is copied to the GPU first, so each
 * op is compared alone. Sizes are odd as in test_ops_gpu.c. Built and run only by
 * `make test-gpu`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/gpu_compare.h"

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
                int l = (int)(xorshift_uniform(&seed, 0.0f, (float)levels));
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
     * both levels + 1), as the model calls it. grads: bit 0 dcls passed, bit 1 dbox passed.
     * scale: the loss scale (mixed precision's; the gradients are multiplied by it, the losses
     * not), 1 but in the last two cases. */
    enum { LEVELS = 2 };
    static const struct {
        int batch, size, anchors, classes;
        float ls;
        unsigned grads;
        float scale;
    } cases[] = {
        {2, 24, 9, 90, 0.0f, 3, 1.0f}, {2, 24, 9, 90, 0.1f, 3, 1.0f}, {2, 24, 9, 90, 0.1f, 0, 1.0f},
        {1, 7, 9, 5, 0.0f, 3, 1.0f},   {1, 7, 9, 5, 0.1f, 3, 1.0f}, /* small norm */
        {3, 10, 3, 37, 0.1f, 1, 1.0f}, {3, 10, 3, 37, 0.0f, 2, 1.0f},
        {2, 24, 9, 90, 0.1f, 3, 1024.0f}, {1, 7, 9, 5, 0.0f, 3, 0.375f},
    };
    const float alpha = 0.25f, gamma = 1.5f, delta = 0.1f, box_weight = 50.0f;
    uint32_t seed = 27182;
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        const int A = cases[t].anchors, C = cases[t].classes;
        const float ls = cases[t].ls, scale = cases[t].scale;
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
                const float u = xorshift_uniform(&seed, 0.0f, 1.0f);
                float *tb = tbox[l].host + a * 4;
                if (u < 0.03f) {
                    int cl = (int)xorshift_uniform(&seed, 0.0f, (float)C);
                    target[a] = cl < C ? cl : C - 1;
                    positives++;
                } else {
                    target[a] = u < 0.13f ? -2 : -1;
                }
                const int zero_all = target[a] == -2 || (target[a] == -1 && u < 0.57f);
                for (int k = 0; k < 4; k++)
                    if (zero_all || xorshift_uniform(&seed, 0.0f, 1.0f) < 0.2f) tb[k] = 0.0f;
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
                                   delta, box_weight, ls, scale);
            b->gpu->detection_loss(b->gctx, loss.gpu, with_dcls ? dcls[l].gpu : NULL,
                                   with_dbox ? dbox[l].gpu : NULL, cls[l].gpu, box[l].gpu,
                                   tcls[l].gpu, tbox[l].gpu, rows[l], A, C, norm, alpha, gamma,
                                   delta, box_weight, ls, scale);
        }
        char what[144];
        for (int l = 0; l < LEVELS; l++) {
            if (with_dcls) {
                snprintf(what, sizeof what,
                         "detection_loss rows %zu A %d C %d ls %g scale %g: dcls", rows[l], A, C,
                         ls, scale);
                expect_close(b, what, &dcls[l]);
            }
            if (with_dbox) {
                snprintf(what, sizeof what,
                         "detection_loss rows %zu A %d C %d ls %g scale %g: dbox", rows[l], A, C,
                         ls, scale);
                expect_close(b, what, &dbox[l]);
            }
        }
        /* Each loss on its own, so the smaller box loss is held to its own magnitude. */
        const Buf focal = {loss.host, loss.cpu, loss.gpu, 1};
        const Buf huber = {loss.host + 1, loss.cpu + 1, loss.gpu + 1, 1};
        snprintf(what, sizeof what,
                 "detection_loss %d levels A %d C %d ls %g scale %g%s%s: loss[0] focal", LEVELS, A,
                 C, ls, scale, with_dcls ? "" : " dcls NULL", with_dbox ? "" : " dbox NULL");
        expect_close(b, what, &focal);
        snprintf(what, sizeof what,
                 "detection_loss %d levels A %d C %d ls %g scale %g%s%s: loss[1] huber", LEVELS, A,
                 C, ls, scale, with_dcls ? "" : " dcls NULL", with_dbox ? "" : " dbox NULL");
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
    for (size_t i = 0; i < count; i++) mask[i] = xorshift_uniform(&seed, 0.0f, 1.0f) < 0.5f;
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
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bn_train),
        cmocka_unit_test(test_bn_infer_backward),
        cmocka_unit_test(test_act_backward),
        cmocka_unit_test(test_conv2d_backward),
        cmocka_unit_test(test_dwconv2d_backward),
        cmocka_unit_test(test_se_backward),
        cmocka_unit_test(test_accumulate),
        cmocka_unit_test(test_maxpool_backward),
        cmocka_unit_test(test_upsample_backward),
        cmocka_unit_test(test_fuse_backward),
        cmocka_unit_test(test_detection_loss),
        cmocka_unit_test(test_optimizer),
        cmocka_unit_test_teardown(test_conv2d_tf32, tf32_teardown),
    };
    return gpu_compare_main("test_train_ops_gpu", tests, sizeof tests / sizeof tests[0]);
}
