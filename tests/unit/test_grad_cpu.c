/* test_grad_cpu.c: every CPU backward op against its own forward by central finite differences,
 * and the training ops with closed forms (running statistics, SGD, EMA, sum of squares) against
 * literal loops, plus bit-for-bit reproducibility across runs and thread counts.
 *
 * The loss is a random projection L = sum(r * out), summed in double from the float outputs, so
 * dL/dout = r is the dy handed to the backward. Gradient buffers start from random values, not
 * zeros, and the check subtracts them again: a backward that writes (=) instead of accumulating
 * (+=) fails. Tolerance: the worst |finite difference - analytic| must stay within 1e-2 of the
 * largest analytic gradient; each check prints its worst error. */
#include <math.h>
#include <omp.h>
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

static float *randn(size_t n, uint32_t stream)
{
    Rng r;
    rng_init(&r, 1234, 11, stream);
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = rng_normal(&r);
    return p;
}

static float *copy_of(const float *src, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    memcpy(p, src, n * sizeof(float));
    return p;
}

/* One finite-difference case: forward() recomputes out from the tensors it points at, which the
 * checker perturbs in place. The fields are a bag that each case uses as it needs. */
typedef struct Fd Fd;
struct Fd {
    void (*forward)(Fd *f);
    const Ops *ops;
    OpsCtx *ctx;
    float *out, *r; /* out_n values each */
    size_t out_n;
    float *t[6];    /* inputs and parameters */
    float *save[4]; /* saved for the backward */
    int n, h, w, c, oh, ow, k, cr;
    Act act;
    ConvShape cs;
    PoolShape ps;
};

static double fd_loss(Fd *f)
{
    f->forward(f);
    double l = 0;
    for (size_t i = 0; i < f->out_n; i++) l += (double)f->r[i] * f->out[i];
    return l;
}

/* Checks the gradient (got - prior: what the backward added) of L with respect to the n values
 * at p, perturbing each by +-eps. */
static void fd_check(Fd *f, const char *what, float *p, size_t n, const float *got,
                     const float *prior, float eps)
{
    double worst = 0, max_g = 0, worst_fd = 0, worst_an = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        float keep = p[i], up = keep + eps, down = keep - eps;
        p[i] = up;
        double lp = fd_loss(f);
        p[i] = down;
        double lm = fd_loss(f);
        p[i] = keep;
        double fd = (lp - lm) / ((double)up - (double)down);
        double an = (double)got[i] - (prior ? prior[i] : 0.0);
        if (fabs(an) > max_g) max_g = fabs(an);
        if (!(fabs(fd - an) <= worst)) worst = fabs(fd - an), at = i, worst_fd = fd, worst_an = an;
    }
    double tol = 1e-2 * max_g + 1e-6;
    print_message("  %-44s worst |fd-an| %.2e (%.2e of max|grad| %.3e) at %zu: fd %.6f an %.6f\n",
                  what, worst, max_g > 0 ? worst / max_g : 0.0, max_g, at, worst_fd, worst_an);
    if (!(worst <= tol))
        fail_msg("%s: |fd - analytic| %.3e > %.3e at %zu: fd %.6f, analytic %.6f", what, worst,
                 tol, at, worst_fd, worst_an);
}

static void fd_init(Fd *f, size_t out_n)
{
    Err err;
    f->ops = ops_cpu();
    f->ctx = f->ops->ctx_create(0, &err);
    assert_non_null(f->ctx);
    f->out_n = out_n;
    f->out = calloc(out_n, sizeof(float));
    f->r = randn(out_n, 999);
}

static void fd_free(Fd *f)
{
    for (int i = 0; i < 6; i++) free(f->t[i]);
    for (int i = 0; i < 4; i++) free(f->save[i]);
    free(f->out), free(f->r);
    f->ops->ctx_destroy(f->ctx);
}

/* ---- activations and batch norm ------------------------------------------------------------- */

static void fwd_act(Fd *f) { f->ops->act_forward(f->ctx, f->out, f->t[0], f->act, f->out_n); }

static void test_act_backward(void **state)
{
    const char *names[3] = {"act_backward none", "act_backward silu", "act_backward sigmoid"};
    for (int a = 0; a < 3; a++) {
        Fd f = {.forward = fwd_act, .act = (Act)a};
        size_t n = 2 * 7 * 5 * 3;
        fd_init(&f, n);
        f.t[0] = randn(n, 1);
        for (size_t i = 0; i < n; i++) f.t[0][i] *= 3.0f; /* reach the tails of the sigmoid */
        float *prior = randn(n, 2), *dx = copy_of(prior, n);
        f.ops->act_backward(f.ctx, dx, f.r, f.t[0], f.act, n);
        fd_check(&f, names[a], f.t[0], n, dx, prior, 1e-2f);
        free(prior), free(dx);
        fd_free(&f);
    }
}

/* t: x, gamma, beta, (mean, var for inference); save: mean, invstd of the train forward. */
static void fwd_bn_train(Fd *f)
{
    f->ops->bn_train_forward(f->ctx, f->out, f->save[0], f->save[1], NULL, NULL, f->t[0], f->t[1],
                             f->t[2], 1e-3f, 0.1f, f->act, (size_t)f->n, f->c);
}

static void fwd_bn_infer(Fd *f)
{
    f->ops->bn_infer_forward(f->ctx, f->out, f->t[0], f->t[1], f->t[2], f->t[3], f->t[4], 1e-3f,
                             f->act, (size_t)f->n, f->c);
}

/* Random BN inputs with a nonzero mean per channel, and positive variances for inference. */
static void bn_case(Fd *f, int rows, int c, Act act, int train)
{
    f->forward = train ? fwd_bn_train : fwd_bn_infer;
    f->n = rows, f->c = c, f->act = act;
    fd_init(f, (size_t)rows * c);
    f->t[0] = randn((size_t)rows * c, 10);
    for (int i = 0; i < rows * c; i++) f->t[0][i] = 1.5f * f->t[0][i] + 0.5f * (float)(i % c % 5);
    f->t[1] = randn(c, 11), f->t[2] = randn(c, 12), f->t[3] = randn(c, 13), f->t[4] = randn(c, 14);
    for (int i = 0; i < c; i++) f->t[4][i] = 0.3f + f->t[4][i] * f->t[4][i];
    f->save[0] = calloc(c, sizeof(float)), f->save[1] = calloc(c, sizeof(float));
}

static void check_bn(int rows, int c, Act act, int train)
{
    Fd f = {0};
    bn_case(&f, rows, c, act, train);
    size_t n = (size_t)rows * c;
    float *p_dx = randn(n, 20), *p_dg = randn(c, 21), *p_db = randn(c, 22);
    float *dx = copy_of(p_dx, n), *dg = copy_of(p_dg, c), *db = copy_of(p_db, c);
    f.forward(&f); /* the saved statistics at the unperturbed point */
    if (train)
        f.ops->bn_train_backward(f.ctx, dx, dg, db, f.r, f.t[0], f.t[1], f.t[2], f.save[0],
                                 f.save[1], act, n / c, c);
    else
        f.ops->bn_infer_backward(f.ctx, dx, dg, db, f.r, f.t[0], f.t[1], f.t[2], f.t[3], f.t[4],
                                 1e-3f, act, n / c, c);
    char what[96];
    const char *an = act == ACT_SILU ? "silu" : act == ACT_SIGMOID ? "sigmoid" : "none";
    const char *kind = train ? "bn_train" : "bn_infer";
    snprintf(what, sizeof what, "%s %dx%d %s dx", kind, rows, c, an);
    fd_check(&f, what, f.t[0], n, dx, p_dx, 1e-2f);
    snprintf(what, sizeof what, "%s %dx%d %s dgamma", kind, rows, c, an);
    fd_check(&f, what, f.t[1], c, dg, p_dg, 1e-2f);
    snprintf(what, sizeof what, "%s %dx%d %s dbeta", kind, rows, c, an);
    fd_check(&f, what, f.t[2], c, db, p_db, 1e-2f);
    if (!train) {
        /* Each output may be NULL; the others must not change. */
        float *dx2 = copy_of(p_dx, n), *dg2 = copy_of(p_dg, c);
        f.ops->bn_infer_backward(f.ctx, dx2, NULL, NULL, f.r, f.t[0], f.t[1], f.t[2], f.t[3],
                                 f.t[4], 1e-3f, act, n / c, c);
        f.ops->bn_infer_backward(f.ctx, NULL, dg2, NULL, f.r, f.t[0], f.t[1], f.t[2], f.t[3],
                                 f.t[4], 1e-3f, act, n / c, c);
        assert_memory_equal(dx2, dx, n * sizeof(float));
        assert_memory_equal(dg2, dg, c * sizeof(float));
        free(dx2), free(dg2);
    }
    free(p_dx), free(p_dg), free(p_db), free(dx), free(dg), free(db);
    fd_free(&f);
}

static void test_bn_backward(void **state)
{
    check_bn(70, 5, ACT_NONE, 1); /* N=2, H=7, W=5 */
    check_bn(70, 3, ACT_SILU, 1);
    check_bn(70, 4, ACT_SIGMOID, 1);
    check_bn(15, 67, ACT_SILU, 1); /* two channel tiles */
    check_bn(70, 5, ACT_NONE, 0);
    check_bn(70, 6, ACT_SILU, 0);
    check_bn(15, 67, ACT_SIGMOID, 0);
}

static void test_bn_running_stats(void **state)
{
    const Ops *ops = ops_cpu();
    int rows = 70, c = 5;
    float mom = 0.1f, eps = 1e-3f;
    float *x = randn((size_t)rows * c, 30), *g = randn(c, 31), *b = randn(c, 32);
    float *rm = randn(c, 33), *rv = randn(c, 34), *out = malloc(sizeof(float) * rows * c);
    for (int i = 0; i < rows * c; i++) x[i] = 2.0f * x[i] + 3.0f;
    for (int i = 0; i < c; i++) rv[i] = 1.0f + rv[i] * rv[i];
    float *rm0 = copy_of(rm, c), *rv0 = copy_of(rv, c), sm[5], si[5];
    ops->bn_train_forward(NULL, out, sm, si, rm, rv, x, g, b, eps, mom, ACT_NONE, rows, c);
    for (int ch = 0; ch < c; ch++) {
        double mean = 0, ss = 0;
        for (int r = 0; r < rows; r++) mean += x[r * c + ch];
        mean /= rows;
        for (int r = 0; r < rows; r++) ss += (x[r * c + ch] - mean) * (x[r * c + ch] - mean);
        double want[4] = {mean, 1 / sqrt(ss / rows + eps), (1 - mom) * rm0[ch] + mom * mean,
                          (1 - mom) * rv0[ch] + mom * ss / (rows - 1)};
        float got[4] = {sm[ch], si[ch], rm[ch], rv[ch]};
        const char *names[4] = {"save_mean", "save_invstd", "running_mean", "running_var"};
        for (int i = 0; i < 4; i++)
            if (!(fabs(got[i] - want[i]) <= 1e-6 + 1e-6 * fabs(want[i])))
                fail_msg("channel %d %s: got %.9g, want %.9g", ch, names[i], got[i], want[i]);
        for (int r = 0; r < rows; r++) {
            double y = (x[r * c + ch] - mean) / sqrt(ss / rows + eps) * g[ch] + b[ch];
            if (!(fabs(out[r * c + ch] - y) <= 1e-5 + 1e-5 * fabs(y)))
                fail_msg("bn_train out[%d,%d]: got %.9g, want %.9g", r, ch, out[r * c + ch], y);
        }
    }
    free(x), free(g), free(b), free(rm), free(rv), free(out), free(rm0), free(rv0);
}

/* ---- convolutions -------------------------------------------------------------------------- */

/* t: x, w, b. */
static void fwd_conv(Fd *f)
{
    if (f->k)
        f->ops->dwconv2d_forward(f->ctx, f->out, f->t[0], f->t[1], &f->cs);
    else
        f->ops->conv2d_forward(f->ctx, f->out, f->t[0], f->t[1], f->t[2], &f->cs);
}

static void check_conv(int n, int h, int w, int cin, int cout, int k, int stride, int depthwise)
{
    Fd f = {.forward = fwd_conv, .k = depthwise};
    Err err;
    conv_shape_same(&f.cs, n, h, w, cin, depthwise ? cin : cout, k, stride);
    const ConvShape *s = &f.cs;
    fd_init(&f, (size_t)n * s->oh * s->ow * s->cout);
    assert_int_equal(f.ops->workspace_reserve(f.ctx, f.ops->conv2d_workspace_bytes(s), &err), 0);
    size_t xn = (size_t)n * h * w * cin;
    size_t wn = depthwise ? (size_t)k * k * cin : (size_t)s->cout * k * k * cin;
    f.t[0] = randn(xn, 40), f.t[1] = randn(wn, 41), f.t[2] = randn(s->cout, 42);
    float *p_dx = randn(xn, 43), *p_dw = randn(wn, 44), *p_db = randn(s->cout, 45);
    float *dx = copy_of(p_dx, xn), *dw = copy_of(p_dw, wn), *db = copy_of(p_db, s->cout);
    if (depthwise)
        f.ops->dwconv2d_backward(f.ctx, dx, dw, f.r, f.t[0], f.t[1], s);
    else
        f.ops->conv2d_backward(f.ctx, dx, dw, db, f.r, f.t[0], f.t[1], s);
    char what[96];
    const char *kind = depthwise ? "dwconv" : "conv";
    int pad_h = (s->oh - 1) * stride + k - h, pad_w = (s->ow - 1) * stride + k - w;
    pad_h = pad_h > 0 ? pad_h : 0, pad_w = pad_w > 0 ? pad_w : 0;
    int len = snprintf(what, sizeof what, "%s %dx%dx%d->%d k%d s%d pad %d+%d,%d+%d ", kind, h, w,
                       cin, s->cout, k, stride, s->pad_top, pad_h - s->pad_top, s->pad_left,
                       pad_w - s->pad_left);
    snprintf(what + len, sizeof what - len, "dx");
    fd_check(&f, what, f.t[0], xn, dx, p_dx, 1e-2f);
    snprintf(what + len, sizeof what - len, "dw");
    fd_check(&f, what, f.t[1], wn, dw, p_dw, 1e-2f);
    if (!depthwise) {
        snprintf(what + len, sizeof what - len, "db");
        fd_check(&f, what, f.t[2], s->cout, db, p_db, 1e-2f);
    }
    /* dx (and db) NULL: the weight gradient is unchanged, bit for bit. */
    float *dw2 = copy_of(p_dw, wn);
    if (depthwise)
        f.ops->dwconv2d_backward(f.ctx, NULL, dw2, f.r, f.t[0], f.t[1], s);
    else
        f.ops->conv2d_backward(f.ctx, NULL, dw2, NULL, f.r, f.t[0], f.t[1], s);
    assert_memory_equal(dw2, dw, wn * sizeof(float));
    free(p_dx), free(p_dw), free(p_db), free(dx), free(dw), free(db), free(dw2);
    fd_free(&f);
}

static void test_conv_backward(void **state)
{
    /* H = 7, W = 6: stride 2 pads (1, 1) rows but (0, 1) columns for k = 3, (2, 2) and (1, 2)
     * for k = 5, so symmetric and asymmetric SAME padding are both covered. */
    check_conv(2, 7, 6, 3, 4, 1, 1, 0); /* pointwise GEMM path */
    check_conv(2, 7, 6, 3, 4, 1, 2, 0); /* 1x1 stride 2: im2col */
    check_conv(2, 7, 6, 3, 4, 3, 1, 0);
    check_conv(2, 7, 6, 3, 5, 3, 2, 0);
    check_conv(2, 7, 6, 5, 0, 3, 1, 1);
    check_conv(2, 7, 6, 5, 0, 3, 2, 1);
    check_conv(2, 7, 6, 4, 0, 5, 1, 1);
    check_conv(2, 7, 6, 6, 0, 5, 2, 1);
    check_conv(1, 4, 3, 37, 0, 5, 2, 1); /* several channel tiles of the dw reduction */
}

/* ---- squeeze-excitation ---------------------------------------------------------------------- */

/* t: x, w_r, b_r, w_e, b_e; save: pooled, hidden, gate. */
static void fwd_se(Fd *f)
{
    f->ops->se_forward(f->ctx, f->out, f->save[0], f->save[1], f->save[2], f->t[0], f->t[1],
                       f->t[2], f->t[3], f->t[4], f->n, f->h, f->c, f->cr);
}

static void test_se_backward(void **state)
{
    int n = 2, hw = 7 * 5, c = 6, cr = 3;
    Fd f = {.forward = fwd_se, .n = n, .h = hw, .c = c, .cr = cr};
    fd_init(&f, (size_t)n * hw * c);
    size_t sizes[5] = {(size_t)n * hw * c, (size_t)cr * c, cr, (size_t)c * cr, c};
    float *prior[5], *grad[5];
    for (int i = 0; i < 5; i++) {
        f.t[i] = randn(sizes[i], 50 + i);
        prior[i] = randn(sizes[i], 60 + i);
        grad[i] = copy_of(prior[i], sizes[i]);
    }
    f.save[0] = calloc((size_t)n * c, 4), f.save[1] = calloc((size_t)n * cr, 4);
    f.save[2] = calloc((size_t)n * c, 4);
    f.forward(&f);
    f.ops->se_backward(f.ctx, grad[0], grad[1], grad[2], grad[3], grad[4], f.r, f.t[0], f.save[0],
                       f.save[1], f.save[2], f.t[1], f.t[2], f.t[3], n, hw, c, cr);
    const char *names[5] = {"se dx", "se dw_r", "se db_r", "se dw_e", "se db_e"};
    for (int i = 0; i < 5; i++) {
        fd_check(&f, names[i], f.t[i], sizes[i], grad[i], prior[i], 1e-2f);
        free(prior[i]), free(grad[i]);
    }
    fd_free(&f);
}

/* ---- max pool and upsampling ------------------------------------------------------------------ */

static void fwd_pool(Fd *f) { f->ops->maxpool_forward(f->ctx, f->out, f->t[0], &f->ps); }

static void check_maxpool(int n, int h, int w, int c)
{
    Fd f = {.forward = fwd_pool};
    pool_shape_same(&f.ps, n, h, w, c, 3, 2);
    fd_init(&f, (size_t)n * f.ps.oh * f.ps.ow * c);
    /* Distinct values 0.05 apart in random order: no near-ties, so +-1e-3 never moves a max. */
    size_t xn = (size_t)n * h * w * c;
    f.t[0] = malloc(xn * sizeof(float));
    Rng rng;
    rng_init(&rng, 5, 5, 5);
    for (size_t i = 0; i < xn; i++) f.t[0][i] = (float)i;
    for (size_t i = xn - 1; i > 0; i--) {
        size_t j = rng_u32(&rng) % (i + 1);
        float t = f.t[0][i];
        f.t[0][i] = f.t[0][j], f.t[0][j] = t;
    }
    for (size_t i = 0; i < xn; i++) f.t[0][i] = (f.t[0][i] - (float)xn / 2) * 0.05f;
    float *prior = randn(xn, 70), *dx = copy_of(prior, xn);
    f.ops->maxpool_backward(f.ctx, dx, f.r, f.t[0], &f.ps);
    char what[64];
    snprintf(what, sizeof what, "maxpool 3x3/2 %dx%d pad top %d of %d, left %d of %d dx", h, w,
             f.ps.pad_top, (f.ps.oh - 1) * 2 + 3 - h, f.ps.pad_left, (f.ps.ow - 1) * 2 + 3 - w);
    fd_check(&f, what, f.t[0], xn, dx, prior, 1e-3f);
    free(prior), free(dx);
    fd_free(&f);
}

static void test_maxpool_backward(void **state)
{
    check_maxpool(2, 7, 5, 3);  /* odd: pads (1, 1) */
    check_maxpool(2, 8, 6, 3);  /* even: pads (0, 1) */
    check_maxpool(1, 5, 4, 19); /* two channel tiles */
    /* Ties go to the first maximum in scan order, as PyTorch. */
    const Ops *ops = ops_cpu();
    PoolShape ps;
    pool_shape_same(&ps, 1, 2, 2, 1, 3, 2);
    float x[4] = {1, 3, 3, 3}, dy[1] = {2}, dx[4] = {0};
    ops->maxpool_backward(NULL, dx, dy, x, &ps);
    float want[4] = {0, 2, 0, 0};
    assert_memory_equal(dx, want, sizeof dx);
}

static void fwd_up(Fd *f)
{
    f->ops->upsample_nearest_forward(f->ctx, f->out, f->t[0], f->n, f->h, f->w, f->c, f->oh,
                                     f->ow);
}

static void check_upsample(int h, int w, int oh, int ow)
{
    Fd f = {.forward = fwd_up, .n = 2, .h = h, .w = w, .c = 3, .oh = oh, .ow = ow};
    fd_init(&f, (size_t)2 * oh * ow * 3);
    size_t xn = (size_t)2 * h * w * 3;
    f.t[0] = randn(xn, 80);
    float *prior = randn(xn, 81), *dx = copy_of(prior, xn);
    f.ops->upsample_nearest_backward(f.ctx, dx, f.r, 2, h, w, 3, oh, ow);
    char what[64];
    snprintf(what, sizeof what, "upsample %dx%d->%dx%d dx", h, w, oh, ow);
    fd_check(&f, what, f.t[0], xn, dx, prior, 1e-2f);
    free(prior), free(dx);
    fd_free(&f);
}

static void test_upsample_backward(void **state)
{
    check_upsample(3, 2, 5, 4);
    check_upsample(2, 3, 4, 5);
    check_upsample(3, 3, 3, 3); /* identity */
}

/* ---- fusion and accumulate ---------------------------------------------------------------------- */

/* t[0..k): inputs, t[5]: edge weights or NULL. */
static void fwd_fuse(Fd *f)
{
    const float *ins[4] = {f->t[0], f->t[1], f->t[2], f->t[3]};
    f->ops->fuse_forward(f->ctx, f->out, ins, f->t[5], f->k, f->out_n);
}

static void check_fuse(int k, int weighted)
{
    size_t count = 2 * 7 * 5 * 3;
    Fd f = {.forward = fwd_fuse, .k = k};
    fd_init(&f, count);
    float *prior[5], *grad[5];
    for (int i = 0; i < k; i++) {
        f.t[i] = randn(count, 90 + i);
        prior[i] = randn(count, 95 + i);
        grad[i] = copy_of(prior[i], count);
    }
    if (weighted) {
        /* With k = 3 the second edge is off (relu'(-0.3) = 0). With k = 2 both are on: a single
         * live edge would make out = x_0 * w_0 / (w_0 + 1e-4), whose gradient in w_0 is ~1e-4
         * and drowns in the float rounding of the finite difference. */
        float w2[4] = {0.7f, 1.3f}, w3[4] = {0.7f, -0.3f, 1.3f};
        f.t[5] = copy_of(k == 2 ? w2 : w3, 4);
        prior[4] = randn(k, 99), grad[4] = copy_of(prior[4], k);
    }
    f.ops->fuse_backward(f.ctx, grad, weighted ? grad[4] : NULL, f.r,
                         (const float *const *)f.t, f.t[5], k, count);
    char what[64];
    for (int i = 0; i < k; i++) {
        snprintf(what, sizeof what, "fuse k=%d %s din[%d]", k, weighted ? "weighted" : "sum", i);
        fd_check(&f, what, f.t[i], count, grad[i], prior[i], 1e-2f);
    }
    if (weighted) {
        snprintf(what, sizeof what, "fuse k=%d weighted dw", k);
        fd_check(&f, what, f.t[5], k, grad[4], prior[4], 1e-3f);
        if (k == 3) assert_true(grad[4][1] == prior[4][1]); /* relu'(w) = 0 for w <= 0 */
    }
    /* A NULL entry of dins is skipped; the others get the same gradient. */
    float *again = copy_of(prior[0], count);
    float *dins[4] = {again, NULL, NULL, NULL};
    f.ops->fuse_backward(f.ctx, dins, NULL, f.r, (const float *const *)f.t, f.t[5], k, count);
    assert_memory_equal(again, grad[0], count * sizeof(float));
    free(again);
    for (int i = 0; i < k + weighted; i++) {
        int j = i < k ? i : 4;
        free(prior[j]), free(grad[j]);
    }
    fd_free(&f);
}

static void test_fuse_backward(void **state)
{
    check_fuse(2, 1);
    check_fuse(3, 1);
    check_fuse(2, 0);
    check_fuse(3, 0);
    /* accumulate: dst += src. */
    float dst[3] = {1, 2, 3}, src[3] = {0.5f, -2, 4}, want[3] = {1.5f, 0, 7};
    ops_cpu()->accumulate(NULL, dst, src, 3);
    assert_memory_equal(dst, want, sizeof dst);
}

/* ---- optimizer ------------------------------------------------------------------------------- */

static void test_optimizer(void **state)
{
    const Ops *ops = ops_cpu();
    size_t n = 1001;
    float *p = randn(n, 100), *m = randn(n, 101), *g = randn(n, 102);
    float *p_want = copy_of(p, n), *m_want = copy_of(m, n);
    uint8_t *mask = malloc(n);
    for (size_t i = 0; i < n; i++) mask[i] = (uint8_t)(i % 3 != 0);
    float lr = 0.08f, mom = 0.9f, wd = 4e-5f, scale = 0.37f;
    ops->sgd_update(NULL, p, m, g, mask, lr, mom, wd, scale, n);
    for (size_t i = 0; i < n; i++) {
        double gi = (double)g[i] * scale + wd * mask[i] * (double)p_want[i];
        double mi = mom * (double)m_want[i] + gi;
        double pi = p_want[i] - lr * mi;
        if (!(fabs(m[i] - mi) <= 1e-6 * (1 + fabs(mi)) && fabs(p[i] - pi) <= 1e-6 * (1 + fabs(pi))))
            fail_msg("sgd_update[%zu]: buf %.9g want %.9g, param %.9g want %.9g", i, m[i], mi,
                     p[i], pi);
    }
    float *ema = randn(n, 103), *ema0 = copy_of(ema, n), decay = 0.9998f;
    ops->ema_update(NULL, ema, p, decay, n);
    for (size_t i = 0; i < n; i++) {
        double want = decay * (double)ema0[i] + (1 - (double)decay) * p[i];
        if (!(fabs(ema[i] - want) <= 1e-6 * (1 + fabs(want))))
            fail_msg("ema_update[%zu]: got %.9g, want %.9g", i, ema[i], want);
    }
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    float got;
    ops->sum_squares(NULL, &got, g, n);
    if (!(fabs(got - ss) <= 1e-6 * ss)) fail_msg("sum_squares: got %.9g, want %.9g", got, ss);
    ops->sum_squares(NULL, &got, g, 0);
    assert_true(got == 0.0f);
    free(p), free(m), free(g), free(p_want), free(m_want), free(mask), free(ema), free(ema0);
}

/* ---- reproducibility ---------------------------------------------------------------------------- */

static float *take(float **cursor, size_t n)
{
    float *p = *cursor;
    *cursor += n;
    return p;
}

/* Every op with a reduction, on sizes where the fixed chunks matter, writing all its outputs
 * into res (total floats). x, r and cancel hold rows * c values. */
static void run_reductions(float *res, size_t total, const float *x, const float *r,
                           const float *cancel)
{
    const Ops *ops = ops_cpu();
    Err err;
    OpsCtx *ctx = ops->ctx_create(0, &err);
    memset(res, 0, total * sizeof(float));
    float *at = res;
    size_t rows = 4099, c = 70, xn = rows * c;

    float *out = take(&at, xn), *sm = take(&at, c), *si = take(&at, c), *rm = take(&at, c);
    float *rv = take(&at, c), *dx = take(&at, xn), *dg = take(&at, c), *db = take(&at, c);
    ops->bn_train_forward(ctx, out, sm, si, rm, rv, x, r, r + 1, 1e-3f, 0.1f, ACT_SILU, rows, c);
    ops->bn_train_backward(ctx, dx, dg, db, r, x, r, r + 1, sm, si, ACT_SILU, rows, c);
    ops->bn_infer_backward(ctx, dx, dg, db, r, x, r, r + 1, sm, si, 1e-3f, ACT_SILU, rows, c);

    ConvShape s; /* 3 * 31 * 29 * 70 values fit in x and r */
    conv_shape_same(&s, 3, 31, 29, c, c, 5, 1);
    float *ddx = take(&at, xn), *ddw = take(&at, 25 * c), *cdb = take(&at, c);
    ops->dwconv2d_backward(ctx, ddx, ddw, r, x, r, &s);
    conv_shape_same(&s, 3, 31, 29, c, c, 1, 1);
    ops->conv2d_backward(ctx, NULL, NULL, cdb, r, x, r, &s); /* db only: the GEMMs are BLAS's */

    size_t count = 100000;
    const float *ins[3] = {x, r, x + 7};
    float w[3] = {0.4f, 1.1f, 0.2f}, *dins[3] = {take(&at, count), NULL, NULL};
    ops->fuse_backward(ctx, dins, take(&at, 3), r, ins, w, 3, count);
    ops->sum_squares(ctx, take(&at, 1), x, xn);

    int n = 4, hw = 1000, cr = 8; /* n * hw * c values fit in x and r */
    float *se_out = take(&at, (size_t)n * hw * c), *pooled = take(&at, n * c);
    float *hidden = take(&at, n * cr), *gate = take(&at, n * c);
    ops->se_forward(ctx, se_out, pooled, hidden, gate, x, r, r, r, r, n, hw, c, cr);
    float *se_dx = take(&at, (size_t)n * hw * c), *dw_r = take(&at, cr * c);
    float *db_r = take(&at, cr), *dw_e = take(&at, c * cr), *db_e = take(&at, c);
    ops->se_backward(ctx, se_dx, dw_r, db_r, dw_e, db_e, r, x, pooled, hidden, gate, r, r, r, n,
                     hw, c, cr);

    /* Double sums of random data round to the same float in almost any order, so the data
     * above would hardly notice a split that follows the thread count; cancel's columns do. */
    ops->bn_train_forward(ctx, take(&at, xn), take(&at, c), take(&at, c), NULL, NULL, cancel, r,
                          r, 1e-3f, 0.1f, ACT_NONE, rows, c);
    conv_shape_same(&s, 1, (int)rows, 1, c, c, 1, 1);
    ops->conv2d_backward(ctx, NULL, NULL, take(&at, c), cancel, x, r, &s);
    assert_true((size_t)(at - res) <= total);
    ops->ctx_destroy(ctx);
}

static void test_reproducible(void **state)
{
    size_t total = 4099 * 70 * 7, n = 4099 * 70;
    float *x = randn(n, 110), *r = randn(n, 111), *cancel = malloc(n * sizeof(float));
    /* Each column: +1e20 in row 0, -1e20 in the middle row, ones elsewhere. 1e20 + 1 == 1e20 in
     * double, so which ones survive depends on where the sum is cut, and the small result lets
     * float show it. */
    for (size_t i = 0; i < n; i++)
        cancel[i] = i / 70 == 0 ? 1e20f : i / 70 == 4099 / 2 ? -1e20f : 1.0f;
    float *first = malloc(total * sizeof(float)), *again = malloc(total * sizeof(float));
    int threads = omp_get_max_threads();
    run_reductions(first, total, x, r, cancel);
    int counts[3] = {threads, 1, 3};
    for (int i = 0; i < 3; i++) {
        omp_set_num_threads(counts[i]);
        run_reductions(again, total, x, r, cancel);
        print_message("  reductions with %d threads: %s\n", counts[i],
                      memcmp(first, again, total * sizeof(float)) ? "DIFFER" : "bit-identical");
        assert_memory_equal(first, again, total * sizeof(float));
    }
    omp_set_num_threads(threads);
    free(x), free(r), free(cancel), free(first), free(again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_act_backward),      cmocka_unit_test(test_bn_backward),
        cmocka_unit_test(test_bn_running_stats),  cmocka_unit_test(test_conv_backward),
        cmocka_unit_test(test_se_backward),       cmocka_unit_test(test_maxpool_backward),
        cmocka_unit_test(test_upsample_backward), cmocka_unit_test(test_fuse_backward),
        cmocka_unit_test(test_optimizer),         cmocka_unit_test(test_reproducible),
    };
    return cmocka_run_group_tests_name("grad_cpu", tests, NULL, NULL);
}
