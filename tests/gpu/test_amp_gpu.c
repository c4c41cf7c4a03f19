/* test_amp_gpu.c: mixed precision (kernels/ops.h, Conventions) on the CUDA backend, whose
 * activations really are 2-byte fp16 or bf16 values, against the CPU backend's emulation
 * (kernels/cpu/amp.c), for both types: every op that reads or writes activation tensors, forward
 * and backward, detection_loss with loss scaling, the act_upload/act_download round trip, and
 * cast_params with the regular convolution. detect, which the CPU has no op for, is held to the
 * CUDA backend in fp32 given the same (already rounded) logits: it must give the same bits.
 *
 * Each type has its own pair of contexts, set_precision'd before anything else is done with them.
 * Activation inputs are drawn as floats, rounded to the type on the host and uploaded with
 * act_upload, so both backends start from the same representable values; parameters and other
 * fp32 tensors go through mem_upload. Results are read back in fp32 (act_download for activations,
 * mem_download for the rest) and compared as
 *     max |gpu - cpu| <= K * u * max |cpu| + AMP_ATOL,   u = 2^-10 (fp16) or 2^-7 (bf16),
 * u being the type's unit in the last place at 1. Both backends compute in fp32 and round once
 * when they store, so a stored value differs by one unit where the two fp32 results straddle a
 * rounding boundary; K = 4 leaves room for that and for the few places that round twice on the GPU
 * (conv2d_forward's bias add after cuDNN's store, the asymmetric-padding window add of conv2d
 * backward-data, cuDNN's weight gradient rounded to the type before it is added), each at most one
 * more unit. As in test_train_ops_gpu.c, outputs are pre-filled with random values (gradients
 * accumulate; "=" outputs must be written), and an op that consumes another's result gets the
 * CPU's, so each op is compared alone. Built and run only by `make test-gpu`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/gpu_compare.h"

#define AMP_K 4.0
#define AMP_ATOL 1e-6

/* One activation type: the CPU and CUDA contexts that store it. */
typedef struct Pair {
    const Ops *cpu, *gpu;
    OpsCtx *cctx, *gctx;
    Precision prec;
    const char *name; /* "fp16", "bf16" */
} Pair;

typedef struct Amp {
    Pair pair[2];
    OpsCtx *gref; /* CUDA in fp32: detect's reference */
} Amp;

/* One tensor on both backends, and its host copy. */
typedef struct ATensor {
    float *host, *cpu, *gpu;
    size_t n;
    int act; /* 1: an activation (act_upload/act_download), 0: fp32 (mem_upload/mem_download) */
} ATensor;

/* ---- rounding, as ops.h specifies it: to nearest even, overflow to inf ----------------------- */

static float round_fp16(float x)
{
    if (!isfinite(x)) return x;
    const float a = fabsf(x);
    if (a >= 65520.0f) return copysignf(INFINITY, x); /* halfway past 65504 rounds to 2^16 */
    int e;
    (void)frexpf(a, &e); /* a = m 2^e, m in [0.5, 1): 11 significant bits means steps of 2^(e-11) */
    if (e < -13) e = -13; /* below 2^-14 the subnormals' step, 2^-24 */
    const float q = ldexpf(1.0f, e - 11);
    return copysignf(rintf(a / q) * q, x);
}

static float round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return x; /* inf, NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float round_to(Precision p, float x)
{
    return p == PREC_FP16 ? round_fp16(x) : p == PREC_BF16 ? round_bf16(x) : x;
}

static double unit(Precision p) { return p == PREC_FP16 ? 0x1p-10 : 0x1p-7; }

/* ---- tensors on both backends ---------------------------------------------------------------- */

/* host -> both backends; activations are rounded on the host first, so the uploads are exact. */
static void t_put(const Pair *b, ATensor *x)
{
    if (x->act) {
        for (size_t i = 0; i < x->n; i++) x->host[i] = round_to(b->prec, x->host[i]);
        b->cpu->act_upload(b->cctx, x->cpu, x->host, x->n);
        b->gpu->act_upload(b->gctx, x->gpu, x->host, x->n);
    } else {
        b->cpu->mem_upload(b->cctx, x->cpu, x->host, x->n * sizeof(float));
        b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
    }
}

/* A tensor of n values from [lo, hi); fp32-sized buffers in every type, as ops.h has them. */
static ATensor t_new(const Pair *b, size_t n, int act, uint32_t *seed, float lo, float hi)
{
    ATensor x = {malloc(n * sizeof(float)), xalloc(b->cpu, b->cctx, n * sizeof(float)),
                 xalloc(b->gpu, b->gctx, n * sizeof(float)), n, act};
    assert_non_null(x.host);
    for (size_t i = 0; i < n; i++) x.host[i] = xorshift_uniform(seed, lo, hi);
    t_put(b, &x);
    return x;
}

static void t_free(const Pair *b, ATensor *x)
{
    b->cpu->mem_free(b->cctx, x->cpu);
    b->gpu->mem_free(b->gctx, x->gpu);
    free(x->host);
    memset(x, 0, sizeof *x);
}

/* Both backends' values of x, in fp32. */
static void t_get(const Pair *b, const ATensor *x, float *cpu, float *gpu)
{
    if (x->act) {
        b->cpu->act_download(b->cctx, cpu, x->cpu, x->n);
        b->gpu->act_download(b->gctx, gpu, x->gpu, x->n);
    } else {
        b->cpu->mem_download(b->cctx, cpu, x->cpu, x->n * sizeof(float));
        b->gpu->mem_download(b->gctx, gpu, x->gpu, x->n * sizeof(float));
    }
}

/* The CPU's values of x onto the GPU (and into x->host). */
static void t_share_cpu(const Pair *b, ATensor *x)
{
    float *scratch = malloc(x->n * sizeof(float));
    assert_non_null(scratch);
    t_get(b, x, x->host, scratch);
    free(scratch);
    if (x->act)
        b->gpu->act_upload(b->gctx, x->gpu, x->host, x->n);
    else
        b->gpu->mem_upload(b->gctx, x->gpu, x->host, x->n * sizeof(float));
}

/* The bound of the file comment with k units; prints the figures of every comparison. */
static void expect_k(const Pair *b, const char *what, const ATensor *x, double k)
{
    float *ref = malloc(x->n * sizeof(float)), *got = malloc(x->n * sizeof(float));
    assert_non_null(ref);
    assert_non_null(got);
    t_get(b, x, ref, got);
    double max_ref = 0.0, max_diff = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < x->n; i++) {
        const double g = got[i], r = ref[i];
        /* Equal infinities (fp16 overflow) and NaN in both are the same answer. */
        double d = (g == r || (isnan(g) && isnan(r))) ? 0.0 : fabs(g - r);
        if (isnan(d)) d = INFINITY;
        if (isfinite(r) && fabs(r) > max_ref) max_ref = fabs(r);
        if (d > max_diff) max_diff = d, worst = i;
    }
    const double u = unit(b->prec), tol = k * u * max_ref + AMP_ATOL;
    const int ok = max_diff <= tol;
    printf("  %s %-62s max|gpu-cpu| %-9.3g max|cpu| %-9.3g %5.2f units%s\n", b->name, what,
           max_diff, max_ref, max_ref > 0 ? max_diff / (u * max_ref) : 0.0, ok ? "" : "  FAIL");
    if (!ok)
        fail_msg("%s %s: max|gpu-cpu| = %g > tol %g (%g units) at [%zu]: gpu %.9g, cpu %.9g",
                 b->name, what, max_diff, tol, k, worst, got[worst], ref[worst]);
    free(ref);
    free(got);
}

static void expect(const Pair *b, const char *what, const ATensor *x)
{
    expect_k(b, what, x, AMP_K);
}

static void reserve_conv(const Pair *b, const ConvShape *s)
{
    Err err = {{0}};
    if (b->cpu->workspace_reserve(b->cctx, b->cpu->conv2d_workspace_bytes(s), &err) < 0 ||
        b->gpu->workspace_reserve(b->gctx, b->gpu->conv2d_workspace_bytes(s), &err) < 0)
        fail_msg("workspace_reserve: %s", err.msg);
}

/* ---- tests --------------------------------------------------------------------------------------- */

/* act_upload then act_download must give the host's own rounding, bit for bit, on both backends:
 * ties (to even), fp16 overflow and its threshold, subnormals, signed zeros, infinities; more
 * values than one staging chunk of the CUDA backend (precision.cu), so the chunk loop runs. */
static void test_act_roundtrip(void **state)
{
    Amp *amp = *state;
    static const float special[] = {
        0.0f, -0.0f, 1.0f, -1.0f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-8f,
        1.0f + 3 * 0x1p-8f, 65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e5f, -1e5f, 0x1p-14f,
        0x1p-24f, 0x1p-25f, 0x1.8p-25f, 3e-8f, 1e-30f, 3.0e38f, 3.4e38f, INFINITY, -INFINITY, NAN,
    };
    const size_t n = ((size_t)1 << 22) + 1000, ns = sizeof special / sizeof special[0];
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        float *src = malloc(n * sizeof(float)), *cpu = malloc(n * sizeof(float));
        float *gpu = malloc(n * sizeof(float));
        assert_true(src && cpu && gpu);
        uint32_t seed = 99;
        /* Magnitudes from 2^-30 to 2^20: past fp16's subnormals and its overflow. */
        for (size_t i = 0; i < n; i++)
            src[i] = xorshift_uniform(&seed, -1.0f, 1.0f) *
                     ldexpf(1.0f, (int)xorshift_uniform(&seed, -30.0f, 20.0f));
        memcpy(src, special, sizeof special);
        float *dc = xalloc(b->cpu, b->cctx, n * sizeof(float));
        float *dg = xalloc(b->gpu, b->gctx, n * sizeof(float));
        b->cpu->act_upload(b->cctx, dc, src, n);
        b->gpu->act_upload(b->gctx, dg, src, n);
        b->cpu->act_download(b->cctx, cpu, dc, n);
        b->gpu->act_download(b->gctx, gpu, dg, n);
        size_t bad_cpu = 0, bad_gpu = 0, first = n;
        for (size_t i = 0; i < n; i++) {
            const float want = round_to(b->prec, src[i]);
            const int nan = isnan(want);
            const int cok = nan ? isnan(cpu[i]) : !memcmp(&want, &cpu[i], sizeof want);
            const int gok = nan ? isnan(gpu[i]) : !memcmp(&want, &gpu[i], sizeof want);
            bad_cpu += !cok, bad_gpu += !gok;
            if ((!cok || !gok) && first == n) first = i;
        }
        printf("  %s act_upload/act_download of %zu values (%zu special): %zu cpu, %zu gpu values "
               "differ from the rounding\n", b->name, n, ns, bad_cpu, bad_gpu);
        if (bad_cpu || bad_gpu)
            fail_msg("%s round trip: first difference at [%zu]: in %.9g, want %.9g, cpu %.9g, "
                     "gpu %.9g", b->name, first, src[first], round_to(b->prec, src[first]),
                     cpu[first], gpu[first]);
        b->cpu->mem_free(b->cctx, dc);
        b->gpu->mem_free(b->gctx, dg);
        free(src), free(cpu), free(gpu);
    }
}

/* Regular convolutions read cast_params's copy of the parameter block: one block (the contract
 * wants the same one every call) holds each case's weights and bias at another offset (a multiple
 * of 64 floats, as worker/model/params.c aligns tensors), and is filled again and cast again for
 * every case, which also shows that the copy follows the weights. */
static void test_conv2d(void **state)
{
    Amp *amp = *state;
    static const struct { int n, h, w, cin, cout, k, stride, dx, db; } cases[] = {
        {2, 45, 41, 19, 23, 1, 1, 1, 1}, /* pointwise */
        {2, 44, 40, 19, 23, 3, 1, 1, 1}, /* symmetric */
        {2, 88, 80, 19, 23, 3, 2, 1, 1}, /* asymmetric: one more row and column after */
        {2, 89, 80, 19, 7, 5, 2, 1, 1},  /* asymmetric in W only */
        {2, 32, 32, 64, 64, 3, 1, 1, 1}, {2, 45, 41, 19, 23, 3, 1, 0, 1}, /* dx NULL */
        {2, 64, 64, 3, 32, 3, 2, 0, 0},  /* the stem: no dx, no bias gradient */
    };
    enum { CASES = sizeof cases / sizeof cases[0] };
    size_t block = 0;
    for (int t = 0; t < CASES; t++) {
        const size_t need = 64 * (1 + 2 * (size_t)t) +
                            (size_t)cases[t].cout * (cases[t].k * cases[t].k * cases[t].cin + 1);
        if (need > block) block = need;
    }
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 2024 + p;
        ATensor params = t_new(b, block, 0, &seed, -1.0f, 1.0f);
        for (int t = 0; t < CASES; t++) {
            ConvShape s;
            conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].cin, cases[t].cout,
                            cases[t].k, cases[t].stride);
            reserve_conv(b, &s);
            /* New fp32 weights (not rounded: cast_params rounds them), cast on both. */
            for (size_t i = 0; i < block; i++) params.host[i] = xorshift_uniform(&seed, -1, 1);
            t_put(b, &params);
            Err err = {{0}};
            if (b->cpu->cast_params(b->cctx, params.cpu, block, &err) < 0 ||
                b->gpu->cast_params(b->gctx, params.gpu, block, &err) < 0)
                fail_msg("cast_params: %s", err.msg);
            const size_t off = 64 * (1 + 2 * (size_t)t), nw = (size_t)s.cout * s.kh * s.kw * s.cin;
            const float *wc = params.cpu + off, *wg = params.gpu + off;
            const float *bc = wc + nw, *bg = wg + nw;
            const size_t nx = (size_t)s.n * s.h * s.w * s.cin;
            const size_t ny = (size_t)s.n * s.oh * s.ow * s.cout;
            ATensor x = t_new(b, nx, 1, &seed, -1.0f, 1.0f);
            char shape[160], what[224];
            for (int bias = 1; bias >= 0; bias--) {
                ATensor out = t_new(b, ny, 1, &seed, -9.0f, 9.0f); /* "=": must be overwritten */
                b->cpu->conv2d_forward(b->cctx, out.cpu, x.cpu, wc, bias ? bc : NULL, &s);
                b->gpu->conv2d_forward(b->gctx, out.gpu, x.gpu, wg, bias ? bg : NULL, &s);
                describe_conv(shape, sizeof shape, "conv2d_forward", &s, bias);
                expect(b, shape, &out);
                t_free(b, &out);
            }
            /* Backward into pre-filled gradients: dx (activation), dw and db in an fp32 gradient
             * block laid out as the parameters, whose other values must stay as they are. */
            ATensor dy = t_new(b, ny, 1, &seed, -1.0f, 1.0f);
            ATensor dx = t_new(b, nx, 1, &seed, -1.0f, 1.0f);
            ATensor grads = t_new(b, block, 0, &seed, -1.0f, 1.0f);
            const int with_dx = cases[t].dx, with_db = cases[t].db;
            b->cpu->conv2d_backward(b->cctx, with_dx ? dx.cpu : NULL, grads.cpu + off,
                                    with_db ? grads.cpu + off + nw : NULL, dy.cpu, x.cpu, wc, &s);
            b->gpu->conv2d_backward(b->gctx, with_dx ? dx.gpu : NULL, grads.gpu + off,
                                    with_db ? grads.gpu + off + nw : NULL, dy.gpu, x.gpu, wg, &s);
            describe_conv(shape, sizeof shape, "conv2d_backward", &s, 0);
            if (with_dx) {
                snprintf(what, sizeof what, "%s: dx", shape);
                expect(b, what, &dx);
            }
            snprintf(what, sizeof what, "%s%s%s: dw, db", shape, with_dx ? "" : " dx NULL",
                     with_db ? "" : " db NULL");
            expect(b, what, &grads);
            t_free(b, &x), t_free(b, &dy), t_free(b, &dx), t_free(b, &grads);
        }
        t_free(b, &params);
    }
}

static void test_dwconv2d(void **state)
{
    Amp *amp = *state;
    static const struct { int n, h, w, c, k, stride; } cases[] = {
        {2, 45, 41, 37, 3, 1}, {2, 44, 40, 37, 5, 1}, {2, 88, 80, 37, 3, 2},
        {2, 89, 81, 37, 5, 2}, {1, 80, 80, 144, 5, 2},
    };
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 3141 + p;
        for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
            ConvShape s;
            conv_shape_same(&s, cases[t].n, cases[t].h, cases[t].w, cases[t].c, cases[t].c,
                            cases[t].k, cases[t].stride);
            const size_t nx = (size_t)s.n * s.h * s.w * s.cin;
            const size_t ny = (size_t)s.n * s.oh * s.ow * s.cin;
            const size_t nw = (size_t)s.kh * s.kw * s.cin;
            ATensor x = t_new(b, nx, 1, &seed, -1.0f, 1.0f);
            ATensor w = t_new(b, nw, 0, &seed, -1.0f, 1.0f); /* fp32: depthwise reads them as is */
            ATensor out = t_new(b, ny, 1, &seed, -9.0f, 9.0f);
            ATensor dy = t_new(b, ny, 1, &seed, -1.0f, 1.0f);
            ATensor dx = t_new(b, nx, 1, &seed, -1.0f, 1.0f);
            ATensor dw = t_new(b, nw, 0, &seed, -1.0f, 1.0f);
            b->cpu->dwconv2d_forward(b->cctx, out.cpu, x.cpu, w.cpu, &s);
            b->gpu->dwconv2d_forward(b->gctx, out.gpu, x.gpu, w.gpu, &s);
            b->cpu->dwconv2d_backward(b->cctx, dx.cpu, dw.cpu, dy.cpu, x.cpu, w.cpu, &s);
            b->gpu->dwconv2d_backward(b->gctx, dx.gpu, dw.gpu, dy.gpu, x.gpu, w.gpu, &s);
            char shape[160], what[200];
            describe_conv(shape, sizeof shape, "dwconv2d", &s, 0);
            snprintf(what, sizeof what, "%s: out", shape);
            expect(b, what, &out);
            snprintf(what, sizeof what, "%s: dx", shape);
            expect(b, what, &dx);
            snprintf(what, sizeof what, "%s: dw", shape);
            expect(b, what, &dw);
            t_free(b, &x), t_free(b, &w), t_free(b, &out), t_free(b, &dy), t_free(b, &dx);
            t_free(b, &dw);
        }
    }
}

static void bn_expect(const Pair *b, const char *op, size_t rows, int c, Act a, const char *name,
                      const ATensor *x)
{
    char what[160];
    snprintf(what, sizeof what, "%s rows %zu c %d act %s: %s", op, rows, c, act_name(a), name);
    expect(b, what, x);
}

/* Inference and train-mode batch norm, forward and backward, every activation. */
static void test_batch_norm(void **state)
{
    Amp *amp = *state;
    static const struct { size_t rows; int c; float lo, hi; } cases[] = {
        {7, 5, -3.0f, 3.0f}, {2 * 37 * 41, 19, -3.0f, 3.0f}, {4 * 33 * 31, 130, 1.0f, 5.0f},
    };
    const float eps = 1e-3f, momentum = 0.1f;
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 1701 + p;
        for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
            const size_t rows = cases[t].rows, n = rows * cases[t].c;
            const int c = cases[t].c;
            ATensor in = t_new(b, n, 1, &seed, cases[t].lo, cases[t].hi);
            ATensor dy = t_new(b, n, 1, &seed, -1.0f, 1.0f);
            ATensor gamma = t_new(b, c, 0, &seed, 0.5f, 1.5f), beta = t_new(b, c, 0, &seed, -1, 1);
            ATensor rmean = t_new(b, c, 0, &seed, -1, 1), rvar = t_new(b, c, 0, &seed, 0.5f, 2);
            for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
                ATensor out = t_new(b, n, 1, &seed, -9, 9), tout = t_new(b, n, 1, &seed, -9, 9);
                b->cpu->bn_infer_forward(b->cctx, out.cpu, in.cpu, gamma.cpu, beta.cpu, rmean.cpu,
                                         rvar.cpu, eps, a, rows, c);
                b->gpu->bn_infer_forward(b->gctx, out.gpu, in.gpu, gamma.gpu, beta.gpu, rmean.gpu,
                                         rvar.gpu, eps, a, rows, c);
                bn_expect(b, "bn_infer_forward", rows, c, a, "out", &out);

                ATensor mean = t_new(b, c, 0, &seed, -9, 9), invstd = t_new(b, c, 0, &seed, -9, 9);
                ATensor rm = t_new(b, c, 0, &seed, -1, 1), rv = t_new(b, c, 0, &seed, 0.5f, 2);
                b->cpu->bn_train_forward(b->cctx, tout.cpu, mean.cpu, invstd.cpu, rm.cpu, rv.cpu,
                                         in.cpu, gamma.cpu, beta.cpu, eps, momentum, a, rows, c);
                b->gpu->bn_train_forward(b->gctx, tout.gpu, mean.gpu, invstd.gpu, rm.gpu, rv.gpu,
                                         in.gpu, gamma.gpu, beta.gpu, eps, momentum, a, rows, c);
                const ATensor *res[5] = {&tout, &mean, &invstd, &rm, &rv};
                const char *names[5] = {"out", "save_mean", "save_invstd", "running_mean",
                                        "running_var"};
                for (int i = 0; i < 5; i++)
                    bn_expect(b, "bn_train_forward", rows, c, a, names[i], res[i]);

                /* Backward from the CPU's saved statistics. */
                t_share_cpu(b, &mean), t_share_cpu(b, &invstd);
                ATensor dx = t_new(b, n, 1, &seed, -1, 1);
                ATensor dg = t_new(b, c, 0, &seed, -1, 1), db = t_new(b, c, 0, &seed, -1, 1);
                b->cpu->bn_train_backward(b->cctx, dx.cpu, dg.cpu, db.cpu, dy.cpu, in.cpu,
                                          gamma.cpu, beta.cpu, mean.cpu, invstd.cpu, a, rows, c);
                b->gpu->bn_train_backward(b->gctx, dx.gpu, dg.gpu, db.gpu, dy.gpu, in.gpu,
                                          gamma.gpu, beta.gpu, mean.gpu, invstd.gpu, a, rows, c);
                ATensor *grads[3] = {&dx, &dg, &db};
                const char *gnames[3] = {"dx", "dgamma", "dbeta"};
                for (int i = 0; i < 3; i++)
                    bn_expect(b, "bn_train_backward", rows, c, a, gnames[i], grads[i]);

                /* Inference backward, accumulating onto the CPU's gradients on both. */
                for (int i = 0; i < 3; i++) t_share_cpu(b, grads[i]);
                b->cpu->bn_infer_backward(b->cctx, dx.cpu, dg.cpu, db.cpu, dy.cpu, in.cpu,
                                          gamma.cpu, beta.cpu, rmean.cpu, rvar.cpu, eps, a, rows,
                                          c);
                b->gpu->bn_infer_backward(b->gctx, dx.gpu, dg.gpu, db.gpu, dy.gpu, in.gpu,
                                          gamma.gpu, beta.gpu, rmean.gpu, rvar.gpu, eps, a, rows,
                                          c);
                for (int i = 0; i < 3; i++)
                    bn_expect(b, "bn_infer_backward", rows, c, a, gnames[i], grads[i]);
                t_free(b, &out), t_free(b, &tout), t_free(b, &mean), t_free(b, &invstd);
                t_free(b, &rm), t_free(b, &rv), t_free(b, &dx), t_free(b, &dg), t_free(b, &db);
            }
            t_free(b, &in), t_free(b, &dy), t_free(b, &gamma), t_free(b, &beta);
            t_free(b, &rmean), t_free(b, &rvar);
        }
    }
}

/* Activations forward and backward, residual add and its backward (accumulate). */
static void test_act_add(void **state)
{
    Amp *amp = *state;
    static const size_t counts[] = {1001, (1u << 20) + 3};
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 5858 + p;
        for (size_t t = 0; t < sizeof counts / sizeof counts[0]; t++) {
            const size_t n = counts[t];
            ATensor x = t_new(b, n, 1, &seed, -12.0f, 12.0f);
            const float tails[4] = {-100.0f, 100.0f, -88.0f, 89.0f}; /* saturated: no NaN */
            memcpy(x.host, tails, sizeof tails);
            t_put(b, &x);
            ATensor y = t_new(b, n, 1, &seed, -2.0f, 2.0f), dy = t_new(b, n, 1, &seed, -1, 1);
            char what[96];
            for (Act a = ACT_NONE; a <= ACT_SIGMOID; a++) {
                ATensor out = t_new(b, n, 1, &seed, -9, 9), dx = t_new(b, n, 1, &seed, -1, 1);
                b->cpu->act_forward(b->cctx, out.cpu, x.cpu, a, n);
                b->gpu->act_forward(b->gctx, out.gpu, x.gpu, a, n);
                b->cpu->act_backward(b->cctx, dx.cpu, dy.cpu, x.cpu, a, n);
                b->gpu->act_backward(b->gctx, dx.gpu, dy.gpu, x.gpu, a, n);
                snprintf(what, sizeof what, "act_forward %s count %zu", act_name(a), n);
                expect(b, what, &out);
                snprintf(what, sizeof what, "act_backward %s count %zu", act_name(a), n);
                expect(b, what, &dx);
                t_free(b, &out), t_free(b, &dx);
            }
            ATensor sum = t_new(b, n, 1, &seed, -9, 9), acc = t_new(b, n, 1, &seed, -1, 1);
            b->cpu->add_forward(b->cctx, sum.cpu, x.cpu, y.cpu, n);
            b->gpu->add_forward(b->gctx, sum.gpu, x.gpu, y.gpu, n);
            b->cpu->accumulate(b->cctx, acc.cpu, y.cpu, n);
            b->gpu->accumulate(b->gctx, acc.gpu, y.gpu, n);
            snprintf(what, sizeof what, "add_forward count %zu", n);
            expect(b, what, &sum);
            snprintf(what, sizeof what, "accumulate count %zu", n);
            expect(b, what, &acc);
            t_free(b, &x), t_free(b, &y), t_free(b, &dy), t_free(b, &sum), t_free(b, &acc);
        }
    }
}

/* Max pool (with exact ties: the gradient goes to the first maximum) and nearest upsampling. */
static void test_pool_upsample(void **state)
{
    Amp *amp = *state;
    static const struct { int n, h, w, c, k, stride, levels; } pools[] = {
        {2, 45, 41, 37, 3, 2, 0}, {2, 44, 40, 37, 3, 2, 0}, {2, 44, 41, 37, 3, 2, 3},
        {2, 13, 9, 19, 3, 1, 2},
    };
    static const struct { int n, h, w, c, oh, ow; } ups[] = {
        {2, 4, 4, 19, 8, 8}, {2, 5, 7, 19, 8, 13}, {2, 32, 32, 88, 64, 64}, {2, 9, 5, 19, 5, 3},
    };
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 9090 + p;
        char what[160];
        for (size_t t = 0; t < sizeof pools / sizeof pools[0]; t++) {
            PoolShape s;
            pool_shape_same(&s, pools[t].n, pools[t].h, pools[t].w, pools[t].c, pools[t].k,
                            pools[t].stride);
            const size_t nx = (size_t)s.n * s.h * s.w * s.c, ny = (size_t)s.n * s.oh * s.ow * s.c;
            ATensor x = t_new(b, nx, 1, &seed, -3.0f, -0.1f);
            if (pools[t].levels) {
                for (size_t i = 0; i < nx; i++)
                    x.host[i] = -0.1f - 0.5f * (float)(xorshift_next(&seed) % pools[t].levels);
                t_put(b, &x);
            }
            ATensor out = t_new(b, ny, 1, &seed, -9, 9), dy = t_new(b, ny, 1, &seed, -1, 1);
            ATensor dx = t_new(b, nx, 1, &seed, -1, 1);
            b->cpu->maxpool_forward(b->cctx, out.cpu, x.cpu, &s);
            b->gpu->maxpool_forward(b->gctx, out.gpu, x.gpu, &s);
            b->cpu->maxpool_backward(b->cctx, dx.cpu, dy.cpu, x.cpu, &s);
            b->gpu->maxpool_backward(b->gctx, dx.gpu, dy.gpu, x.gpu, &s);
            snprintf(what, sizeof what, "maxpool (%d,%d,%d,%d) k%d s%d levels %d: out", s.n, s.h,
                     s.w, s.c, s.kh, s.stride, pools[t].levels);
            expect(b, what, &out);
            snprintf(what, sizeof what, "maxpool (%d,%d,%d,%d) k%d s%d levels %d: dx", s.n, s.h,
                     s.w, s.c, s.kh, s.stride, pools[t].levels);
            expect(b, what, &dx);
            t_free(b, &x), t_free(b, &out), t_free(b, &dy), t_free(b, &dx);
        }
        for (size_t t = 0; t < sizeof ups / sizeof ups[0]; t++) {
            const int n = ups[t].n, h = ups[t].h, w = ups[t].w, c = ups[t].c;
            const int oh = ups[t].oh, ow = ups[t].ow;
            const size_t nx = (size_t)n * h * w * c, ny = (size_t)n * oh * ow * c;
            ATensor x = t_new(b, nx, 1, &seed, -2, 2), out = t_new(b, ny, 1, &seed, -9, 9);
            ATensor dy = t_new(b, ny, 1, &seed, -1, 1), dx = t_new(b, nx, 1, &seed, -1, 1);
            b->cpu->upsample_nearest_forward(b->cctx, out.cpu, x.cpu, n, h, w, c, oh, ow);
            b->gpu->upsample_nearest_forward(b->gctx, out.gpu, x.gpu, n, h, w, c, oh, ow);
            b->cpu->upsample_nearest_backward(b->cctx, dx.cpu, dy.cpu, n, h, w, c, oh, ow);
            b->gpu->upsample_nearest_backward(b->gctx, dx.gpu, dy.gpu, n, h, w, c, oh, ow);
            snprintf(what, sizeof what, "upsample_nearest (%d,%d,%d,%d)->(%d,%d): out", n, h, w, c,
                     oh, ow);
            expect(b, what, &out);
            snprintf(what, sizeof what, "upsample_nearest (%d,%d,%d,%d)->(%d,%d): dx", n, h, w, c,
                     oh, ow);
            expect(b, what, &dx);
            t_free(b, &x), t_free(b, &out), t_free(b, &dy), t_free(b, &dx);
        }
    }
}

/* BiFPN fusion, weighted (fp32 edge weights, one of them negative) and summed, forward and
 * backward with some input gradients NULL. */
static void test_fuse(void **state)
{
    Amp *amp = *state;
    static const struct { int k, weighted; float w[4]; unsigned dins; } cases[] = {
        {2, 1, {0.8f, 1.7f}, 0x3}, {3, 1, {-0.2f, 0.9f, 1.4f}, 0x5},
        {4, 1, {0.5f, 0.25f, 2.0f, 1.0f}, 0xf}, {3, 0, {0}, 0x7}, {2, 0, {0}, 0x2},
    };
    const size_t count = 2 * 32 * 32 * 88 + 5;
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 8128 + p;
        ATensor in[4];
        const float *cins[4], *gins[4];
        for (int i = 0; i < 4; i++) {
            in[i] = t_new(b, count, 1, &seed, -2, 2);
            cins[i] = in[i].cpu, gins[i] = in[i].gpu;
        }
        ATensor dy = t_new(b, count, 1, &seed, -1, 1);
        for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
            const int k = cases[t].k, weighted = cases[t].weighted;
            ATensor w = t_new(b, k, 0, &seed, 0, 1), dw = t_new(b, k, 0, &seed, -1, 1);
            memcpy(w.host, cases[t].w, (size_t)k * sizeof(float));
            t_put(b, &w);
            ATensor out = t_new(b, count, 1, &seed, -9, 9), din[4];
            float *cd[4], *gd[4];
            for (int i = 0; i < k; i++) {
                din[i] = t_new(b, count, 1, &seed, -1, 1);
                const int on = (cases[t].dins >> i) & 1;
                cd[i] = on ? din[i].cpu : NULL, gd[i] = on ? din[i].gpu : NULL;
            }
            b->cpu->fuse_forward(b->cctx, out.cpu, cins, weighted ? w.cpu : NULL, k, count);
            b->gpu->fuse_forward(b->gctx, out.gpu, gins, weighted ? w.gpu : NULL, k, count);
            b->cpu->fuse_backward(b->cctx, cd, weighted ? dw.cpu : NULL, dy.cpu, cins,
                                  weighted ? w.cpu : NULL, k, count);
            b->gpu->fuse_backward(b->gctx, gd, weighted ? dw.gpu : NULL, dy.gpu, gins,
                                  weighted ? w.gpu : NULL, k, count);
            char what[128];
            snprintf(what, sizeof what, "fuse k %d %s dins 0x%x: out", k,
                     weighted ? "weighted" : "sum", cases[t].dins);
            expect(b, what, &out);
            for (int i = 0; i < k; i++) {
                if (!cd[i]) continue;
                snprintf(what, sizeof what, "fuse k %d %s dins 0x%x: dins[%d]", k,
                         weighted ? "weighted" : "sum", cases[t].dins, i);
                expect(b, what, &din[i]);
            }
            if (weighted) {
                snprintf(what, sizeof what, "fuse k %d weighted dins 0x%x: dw", k, cases[t].dins);
                expect(b, what, &dw);
            }
            for (int i = 0; i < k; i++) t_free(b, &din[i]);
            t_free(b, &w), t_free(b, &dw), t_free(b, &out);
        }
        for (int i = 0; i < 4; i++) t_free(b, &in[i]);
        t_free(b, &dy);
    }
}

/* Squeeze-excitation: x, out, dy and dx are activations; pooled, hidden and gate stay fp32. */
static void test_se(void **state)
{
    Amp *amp = *state;
    static const struct { int n, hw, c, cr; } cases[] = {
        {2, 13 * 9, 19, 5}, {3, 1000, 70, 17}, {4, 40 * 40, 144, 6},
    };
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        uint32_t seed = 6174 + p;
        for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
            const int n = cases[t].n, hw = cases[t].hw, c = cases[t].c, cr = cases[t].cr;
            const size_t nx = (size_t)n * hw * c;
            ATensor x = t_new(b, nx, 1, &seed, -1, 1), out = t_new(b, nx, 1, &seed, -9, 9);
            ATensor w_r = t_new(b, (size_t)cr * c, 0, &seed, -1, 1);
            ATensor b_r = t_new(b, cr, 0, &seed, -1, 1);
            ATensor w_e = t_new(b, (size_t)c * cr, 0, &seed, -1, 1);
            ATensor b_e = t_new(b, c, 0, &seed, -1, 1);
            ATensor pooled = t_new(b, (size_t)n * c, 0, &seed, -9, 9);
            ATensor hidden = t_new(b, (size_t)n * cr, 0, &seed, -9, 9);
            ATensor gate = t_new(b, (size_t)n * c, 0, &seed, -9, 9);
            b->cpu->se_forward(b->cctx, out.cpu, pooled.cpu, hidden.cpu, gate.cpu, x.cpu, w_r.cpu,
                               b_r.cpu, w_e.cpu, b_e.cpu, n, hw, c, cr);
            b->gpu->se_forward(b->gctx, out.gpu, pooled.gpu, hidden.gpu, gate.gpu, x.gpu, w_r.gpu,
                               b_r.gpu, w_e.gpu, b_e.gpu, n, hw, c, cr);
            char what[128];
            const ATensor *fres[4] = {&out, &pooled, &hidden, &gate};
            const char *fnames[4] = {"out", "pooled", "hidden", "gate"};
            for (int i = 0; i < 4; i++) {
                snprintf(what, sizeof what, "se_forward n %d hw %d c %d cr %d: %s", n, hw, c, cr,
                         fnames[i]);
                expect(b, what, fres[i]);
            }
            t_share_cpu(b, &pooled), t_share_cpu(b, &hidden), t_share_cpu(b, &gate);
            ATensor dy = t_new(b, nx, 1, &seed, -1, 1), dx = t_new(b, nx, 1, &seed, -1, 1);
            ATensor dw_r = t_new(b, (size_t)cr * c, 0, &seed, -1, 1);
            ATensor db_r = t_new(b, cr, 0, &seed, -1, 1);
            ATensor dw_e = t_new(b, (size_t)c * cr, 0, &seed, -1, 1);
            ATensor db_e = t_new(b, c, 0, &seed, -1, 1);
            b->cpu->se_backward(b->cctx, dx.cpu, dw_r.cpu, db_r.cpu, dw_e.cpu, db_e.cpu, dy.cpu,
                                x.cpu, pooled.cpu, hidden.cpu, gate.cpu, w_r.cpu, b_r.cpu, w_e.cpu,
                                n, hw, c, cr);
            b->gpu->se_backward(b->gctx, dx.gpu, dw_r.gpu, db_r.gpu, dw_e.gpu, db_e.gpu, dy.gpu,
                                x.gpu, pooled.gpu, hidden.gpu, gate.gpu, w_r.gpu, b_r.gpu, w_e.gpu,
                                n, hw, c, cr);
            const ATensor *bres[5] = {&dx, &dw_r, &db_r, &dw_e, &db_e};
            const char *bnames[5] = {"dx", "dw_r", "db_r", "dw_e", "db_e"};
            for (int i = 0; i < 5; i++) {
                snprintf(what, sizeof what, "se_backward n %d hw %d c %d cr %d: %s", n, hw, c, cr,
                         bnames[i]);
                expect(b, what, bres[i]);
            }
            ATensor *all[15] = {&x, &out, &w_r, &b_r, &w_e, &b_e, &pooled, &hidden, &gate,
                                &dy, &dx, &dw_r, &db_r, &dw_e, &db_e};
            for (int i = 0; i < 15; i++) t_free(b, all[i]);
        }
    }
}

/* Focal and Huber losses of two levels with loss scaling: dcls and dbox are scaled and rounded
 * to the type, the losses are not scaled. The last fp16 scale overflows most gradients to inf,
 * which both backends must store as inf (IEEE overflow is what loss scaling detects). */
static void test_detection_loss(void **state)
{
    Amp *amp = *state;
    enum { LEVELS = 2 };
    static const struct { int batch, size, anchors, classes; float ls; } cases[] = {
        {2, 24, 9, 90, 0.0f}, {1, 7, 9, 5, 0.1f}, {3, 10, 3, 37, 0.1f},
    };
    const float alpha = 0.25f, gamma = 1.5f, delta = 0.1f, box_weight = 50.0f;
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        const float scales[3] = {1.0f, b->prec == PREC_FP16 ? 1024.0f : 65536.0f,
                                 b->prec == PREC_FP16 ? 0x1p24f : 0x1p40f};
        uint32_t seed = 27182 + p;
        for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
            const int A = cases[t].anchors, C = cases[t].classes;
            size_t rows[LEVELS];
            ATensor cls[LEVELS], box[LEVELS], tbox[LEVELS];
            Raw tcls[LEVELS];
            int positives = 0;
            for (int l = 0; l < LEVELS; l++) {
                const int side = cases[t].size >> l;
                rows[l] = (size_t)cases[t].batch * side * side;
                const size_t na = rows[l] * A;
                cls[l] = t_new(b, na * C, 1, &seed, -10.0f, 6.0f);
                tbox[l] = t_new(b, na * 4, 0, &seed, -1.0f, 1.0f);
                int32_t *target = malloc(na * sizeof(int32_t));
                assert_non_null(target);
                /* As test_train_ops_gpu.c: 3% positive, 10% ignored, a fifth of the box target
                 * components exactly 0 (masked). */
                for (size_t a = 0; a < na; a++) {
                    const float u = xorshift_uniform(&seed, 0.0f, 1.0f);
                    if (u < 0.03f) {
                        const int cl = (int)xorshift_uniform(&seed, 0.0f, (float)C);
                        target[a] = cl < C ? cl : C - 1;
                        positives++;
                    } else {
                        target[a] = u < 0.13f ? -2 : -1;
                    }
                    for (int k = 0; k < 4; k++)
                        if (xorshift_uniform(&seed, 0.0f, 1.0f) < 0.2f) tbox[l].host[a * 4 + k] = 0;
                }
                t_put(b, &tbox[l]);
                tcls[l] = (Raw){xalloc(b->cpu, b->cctx, na * sizeof(int32_t)),
                                xalloc(b->gpu, b->gctx, na * sizeof(int32_t))};
                b->cpu->mem_upload(b->cctx, tcls[l].cpu, target, na * sizeof(int32_t));
                b->gpu->mem_upload(b->gctx, tcls[l].gpu, target, na * sizeof(int32_t));
                free(target);
                /* Box outputs near their targets: both Huber branches occur. */
                box[l] = t_new(b, na * 4, 1, &seed, -0.3f, 0.3f);
                for (size_t i = 0; i < na * 4; i++) box[l].host[i] += tbox[l].host[i];
                t_put(b, &box[l]);
            }
            const float norm = (float)positives + 1.0f;
            for (int sc = 0; sc < 3; sc++) {
                const float scale = scales[sc];
                ATensor loss = t_new(b, 2, 0, &seed, 0, 0); /* zeroed, as the caller must */
                ATensor dcls[LEVELS], dbox[LEVELS];
                for (int l = 0; l < LEVELS; l++) {
                    dcls[l] = t_new(b, cls[l].n, 1, &seed, -1, 1); /* "=": must be overwritten */
                    dbox[l] = t_new(b, box[l].n, 1, &seed, -1, 1);
                    b->cpu->detection_loss(b->cctx, loss.cpu, dcls[l].cpu, dbox[l].cpu,
                                           cls[l].cpu, box[l].cpu, tcls[l].cpu, tbox[l].cpu,
                                           rows[l], A, C, norm, alpha, gamma, delta, box_weight,
                                           cases[t].ls, scale);
                    b->gpu->detection_loss(b->gctx, loss.gpu, dcls[l].gpu, dbox[l].gpu,
                                           cls[l].gpu, box[l].gpu, tcls[l].gpu, tbox[l].gpu,
                                           rows[l], A, C, norm, alpha, gamma, delta, box_weight,
                                           cases[t].ls, scale);
                }
                char what[144];
                for (int l = 0; l < LEVELS; l++) {
                    snprintf(what, sizeof what, "detection_loss rows %zu A %d C %d scale %g: dcls",
                             rows[l], A, C, scale);
                    expect(b, what, &dcls[l]);
                    snprintf(what, sizeof what, "detection_loss rows %zu A %d C %d scale %g: dbox",
                             rows[l], A, C, scale);
                    expect(b, what, &dbox[l]);
                    t_free(b, &dcls[l]), t_free(b, &dbox[l]);
                }
                snprintf(what, sizeof what, "detection_loss A %d C %d scale %g: loss", A, C,
                         scale);
                expect(b, what, &loss);
                t_free(b, &loss);
            }
            for (int l = 0; l < LEVELS; l++) {
                t_free(b, &cls[l]), t_free(b, &box[l]), t_free(b, &tbox[l]);
                b->cpu->mem_free(b->cctx, tcls[l].cpu);
                b->gpu->mem_free(b->gctx, tcls[l].gpu);
            }
        }
    }
}

/* detect reads its logits and box outputs in the activation type; converted to float they are
 * exact, so given the same rounded values the fp32 context must give the same detections, bit for
 * bit. Rounding to 2 bytes makes many logits equal (bf16 keeps 8 bits), which exercises the
 * tie order too. */
static void test_detect(void **state)
{
    Amp *amp = *state;
    enum { LEVELS = 3, BATCH = 2, A = 3, C = 11, K = 300, MAX_DET = 50 };
    static const int sides[LEVELS] = {12, 6, 3};
    int level_start[LEVELS + 1] = {0};
    for (int l = 0; l < LEVELS; l++)
        level_start[l + 1] = level_start[l] + sides[l] * sides[l] * A;
    const int count = level_start[LEVELS];
    for (int p = 0; p < 2; p++) {
        const Pair *b = &amp->pair[p];
        REQUIRE_GPU_OP(b, detect);
        const Ops *g = b->gpu;
        OpsCtx *ctx[2] = {amp->gref, b->gctx}; /* fp32, then the type */
        Err err = {{0}};
        const size_t ws = g->detect_workspace_bytes(BATCH, count, C, K, MAX_DET);
        for (int i = 0; i < 2; i++)
            if (g->workspace_reserve(ctx[i], ws, &err) < 0) fail_msg("workspace: %s", err.msg);
        uint32_t seed = 4242 + p;
        float *anchors = malloc((size_t)count * 4 * sizeof(float));
        assert_non_null(anchors);
        for (int a = 0; a < count; a++) {
            float *an = anchors + 4 * (size_t)a;
            an[0] = xorshift_uniform(&seed, 0, 500), an[1] = xorshift_uniform(&seed, 0, 500);
            an[2] = an[0] + xorshift_uniform(&seed, 8, 120);
            an[3] = an[1] + xorshift_uniform(&seed, 8, 120);
        }
        float *host_cls[LEVELS], *host_box[LEVELS];
        for (int l = 0; l < LEVELS; l++) {
            const size_t cells = (size_t)BATCH * (level_start[l + 1] - level_start[l]);
            host_cls[l] = malloc(cells * C * sizeof(float));
            host_box[l] = malloc(cells * 4 * sizeof(float));
            assert_true(host_cls[l] && host_box[l]);
            for (size_t i = 0; i < cells * C; i++)
                host_cls[l][i] = round_to(b->prec, xorshift_uniform(&seed, -8.0f, 4.0f));
            for (size_t i = 0; i < cells * 4; i++)
                host_box[l][i] = round_to(b->prec, xorshift_uniform(&seed, -1.0f, 1.0f));
        }
        float *dets[2];
        int32_t *ndets[2];
        for (int i = 0; i < 2; i++) {
            float *dan = xalloc(g, ctx[i], (size_t)count * 4 * sizeof(float));
            g->mem_upload(ctx[i], dan, anchors, (size_t)count * 4 * sizeof(float));
            float *dcls[LEVELS], *dbox[LEVELS];
            for (int l = 0; l < LEVELS; l++) {
                const size_t cells = (size_t)BATCH * (level_start[l + 1] - level_start[l]);
                dcls[l] = xalloc(g, ctx[i], cells * C * sizeof(float));
                dbox[l] = xalloc(g, ctx[i], cells * 4 * sizeof(float));
                if (i == 0) {
                    g->mem_upload(ctx[i], dcls[l], host_cls[l], cells * C * sizeof(float));
                    g->mem_upload(ctx[i], dbox[l], host_box[l], cells * 4 * sizeof(float));
                } else {
                    g->act_upload(ctx[i], dcls[l], host_cls[l], cells * C);
                    g->act_upload(ctx[i], dbox[l], host_box[l], cells * 4);
                }
            }
            float *d_dets = xalloc(g, ctx[i], (size_t)BATCH * MAX_DET * 6 * sizeof(float));
            int32_t *d_n = xalloc(g, ctx[i], BATCH * sizeof(int32_t));
            g->detect(ctx[i], d_dets, d_n, (const float *const *)dcls, (const float *const *)dbox,
                      dan, count, level_start, LEVELS, BATCH, A, C, K, 0.5f, MAX_DET);
            dets[i] = malloc((size_t)BATCH * MAX_DET * 6 * sizeof(float));
            ndets[i] = malloc(BATCH * sizeof(int32_t));
            assert_true(dets[i] && ndets[i]);
            g->mem_download(ctx[i], dets[i], d_dets, (size_t)BATCH * MAX_DET * 6 * sizeof(float));
            g->mem_download(ctx[i], ndets[i], d_n, BATCH * sizeof(int32_t));
            g->mem_free(ctx[i], dan), g->mem_free(ctx[i], d_dets), g->mem_free(ctx[i], d_n);
            for (int l = 0; l < LEVELS; l++)
                g->mem_free(ctx[i], dcls[l]), g->mem_free(ctx[i], dbox[l]);
        }
        const int same_n = !memcmp(ndets[0], ndets[1], BATCH * sizeof(int32_t));
        const int same_dets =
            !memcmp(dets[0], dets[1], (size_t)BATCH * MAX_DET * 6 * sizeof(float));
        printf("  %s detect batch %d levels %d A %d C %d k %d: %d and %d detections, %s\n", b->name,
               BATCH, LEVELS, A, C, K, ndets[1][0], ndets[1][1],
               same_n && same_dets ? "the fp32 context's bits" : "DIFFERENT from fp32  FAIL");
        if (!same_n || !same_dets)
            fail_msg("%s detect differs from the fp32 context given the same values (n_dets "
                     "%d %d vs %d %d)", b->name, ndets[1][0], ndets[1][1], ndets[0][0],
                     ndets[0][1]);
        for (int i = 0; i < 2; i++) free(dets[i]), free(ndets[i]);
        for (int l = 0; l < LEVELS; l++) free(host_cls[l]), free(host_box[l]);
        free(anchors);
    }
}

/* ---- main --------------------------------------------------------------------------------------- */

static void amp_destroy(const Ops *cpu, const Ops *gpu, Amp *amp)
{
    for (int p = 0; p < 2; p++) {
        if (amp->pair[p].cctx) cpu->ctx_destroy(amp->pair[p].cctx);
        if (amp->pair[p].gctx) gpu->ctx_destroy(amp->pair[p].gctx);
    }
    if (amp->gref) gpu->ctx_destroy(amp->gref);
}

int main(void)
{
    Err err = {{0}};
    const Ops *cpu = ops_cpu(), *gpu = ops_cuda(&err);
    Amp amp;
    memset(&amp, 0, sizeof amp);
    if (gpu) amp.gref = gpu->ctx_create(0, &err);
    if (!gpu || !amp.gref) {
        fprintf(stderr,
                "test_amp_gpu: no usable CUDA GPU, so the CUDA backend cannot be compared with "
                "the CPU: %s\n(make test-gpu is meant for a machine with a GPU)\n", err.msg);
        return 1;
    }
    if (!cpu->set_precision || !gpu->set_precision || !cpu->act_upload || !gpu->act_upload) {
        fprintf(stderr, "test_amp_gpu: the %s backend has no mixed precision\n",
                !cpu->set_precision || !cpu->act_upload ? cpu->name : gpu->name);
        amp_destroy(cpu, gpu, &amp);
        return 1;
    }
    static const Precision precs[2] = {PREC_FP16, PREC_BF16};
    for (int p = 0; p < 2; p++) {
        Pair *b = &amp.pair[p];
        b->cpu = cpu, b->gpu = gpu, b->prec = precs[p];
        b->name = precs[p] == PREC_FP16 ? "fp16" : "bf16";
        b->cctx = cpu->ctx_create(0, &err);
        if (b->cctx) b->gctx = gpu->ctx_create(0, &err);
        if (!b->cctx || !b->gctx || cpu->set_precision(b->cctx, b->prec, &err) < 0 ||
            gpu->set_precision(b->gctx, b->prec, &err) < 0) {
            fprintf(stderr, "test_amp_gpu: %s contexts: %s\n", b->name, err.msg);
            amp_destroy(cpu, gpu, &amp);
            return 1;
        }
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_prestate(test_act_roundtrip, &amp),
        cmocka_unit_test_prestate(test_conv2d, &amp),
        cmocka_unit_test_prestate(test_dwconv2d, &amp),
        cmocka_unit_test_prestate(test_batch_norm, &amp),
        cmocka_unit_test_prestate(test_act_add, &amp),
        cmocka_unit_test_prestate(test_pool_upsample, &amp),
        cmocka_unit_test_prestate(test_fuse, &amp),
        cmocka_unit_test_prestate(test_se, &amp),
        cmocka_unit_test_prestate(test_detection_loss, &amp),
        cmocka_unit_test_prestate(test_detect, &amp),
    };
    const int failed = cmocka_run_group_tests_name("test_amp_gpu", tests, NULL, NULL);
    amp_destroy(cpu, gpu, &amp);
    return failed ? 1 : 0;
}
