/* test_ops_cpu.c: every CPU op against a direct, obviously-correct computation written here in
 * the most literal way (explicit padding arrays, PyTorch's formulas), on odd sizes, both strides,
 * symmetric and asymmetric SAME padding. */
#include <math.h>
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
    rng_init(&r, 42, 7, stream);
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = rng_normal(&r);
    return p;
}

static void assert_close(const char *what, const float *got, const float *want, size_t n,
                         double rtol)
{
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d <= max_diff)) max_diff = d;
        if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
    }
    print_message("%s: max|diff| %.3e, max|ref| %.3e\n", what, max_diff, max_ref);
    if (!(max_diff <= 1e-6 + rtol * max_ref))
        fail_msg("%s: max|diff| %.3e exceeds %.3e", what, max_diff, 1e-6 + rtol * max_ref);
}

/* TF SAME, written out from the definition: pad = max((ceil(in/s)-1)*s + k - in, 0), half (floor)
 * before. */
static void same(int in, int k, int s, int *out, int *before)
{
    *out = (in + s - 1) / s;
    int pad = (*out - 1) * s + k - in;
    if (pad < 0) pad = 0;
    *before = pad / 2;
}

/* Reference convolution on an explicitly zero-padded NHWC copy; weights in PyTorch's OIHW (or
 * (C,1,KH,KW) for depthwise) so the layout conversion is tested too. */
static void ref_conv(float *out, const float *in, const float *w_oihw, const float *b, int n, int h,
                     int w, int cin, int cout, int k, int s, int depthwise)
{
    int oh, ow, pt, pl;
    same(h, k, s, &oh, &pt);
    same(w, k, s, &ow, &pl);
    for (int bi = 0; bi < n; bi++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++)
                for (int co = 0; co < cout; co++) {
                    double acc = b ? b[co] : 0;
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            int iy = oy * s + ky - pt, ix = ox * s + kx - pl;
                            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                            if (depthwise) {
                                acc += (double)in[(((size_t)bi * h + iy) * w + ix) * cin + co] *
                                       w_oihw[((size_t)co * k + ky) * k + kx];
                            } else {
                                for (int ci = 0; ci < cin; ci++)
                                    acc += (double)in[(((size_t)bi * h + iy) * w + ix) * cin + ci] *
                                           w_oihw[(((size_t)co * cin + ci) * k + ky) * k + kx];
                            }
                        }
                    out[(((size_t)bi * oh + oy) * ow + ox) * cout + co] = (float)acc;
                }
}

static void check_conv(int n, int h, int w, int cin, int cout, int k, int s, int depthwise)
{
    const Ops *ops = ops_cpu();
    Err err;
    OpsCtx *ctx = ops->ctx_create(0, &err);
    ConvShape sh;
    conv_shape_same(&sh, n, h, w, cin, depthwise ? cin : cout, k, s);
    if (depthwise) cout = cin;
    size_t in_n = (size_t)n * h * w * cin, out_n = (size_t)n * sh.oh * sh.ow * cout;
    size_t w_n = depthwise ? (size_t)cin * k * k : (size_t)cout * cin * k * k;
    float *x = randn(in_n, 1), *wt = randn(w_n, 2), *b = randn(cout, 3);
    float *ours_w = malloc(w_n * sizeof(float)), *got = malloc(out_n * sizeof(float));
    float *want = malloc(out_n * sizeof(float));
    /* OIHW -> OHWI, or (C,1,KH,KW) -> (KH,KW,C), as params.c does. */
    for (int o = 0; o < (depthwise ? 1 : cout); o++)
        for (int i = 0; i < cin; i++)
            for (int y = 0; y < k; y++)
                for (int xx = 0; xx < k; xx++) {
                    if (depthwise)
                        ours_w[((size_t)y * k + xx) * cin + i] = wt[((size_t)i * k + y) * k + xx];
                    else
                        ours_w[(((size_t)o * k + y) * k + xx) * cin + i] =
                            wt[(((size_t)o * cin + i) * k + y) * k + xx];
                }
    assert_int_equal(ops->workspace_reserve(ctx, ops->conv2d_workspace_bytes(&sh), &err), 0);
    if (depthwise)
        ops->dwconv2d_forward(ctx, got, x, ours_w, &sh);
    else
        ops->conv2d_forward(ctx, got, x, ours_w, b, &sh);
    ref_conv(want, x, wt, depthwise ? NULL : b, n, h, w, cin, cout, k, s, depthwise);
    char what[128];
    snprintf(what, sizeof what, "%s conv %dx%dx%d k%d s%d pad(%d,%d)", depthwise ? "dw" : "regular",
             h, w, cin, k, s, sh.pad_top, sh.pad_left);
    assert_close(what, got, want, out_n, 1e-5);
    free(x), free(wt), free(b), free(ours_w), free(got), free(want);
    ops->ctx_destroy(ctx);
}

static void test_conv(void **state)
{
    check_conv(2, 13, 9, 5, 7, 3, 1, 0);  /* symmetric */
    check_conv(2, 13, 9, 5, 7, 3, 2, 0);  /* odd input, stride 2: pad 1 before (asymmetric 1,1 vs 0,1) */
    check_conv(1, 16, 10, 3, 8, 3, 2, 0); /* even input, stride 2: pad (0, 1) asymmetric */
    check_conv(2, 7, 11, 19, 6, 1, 1, 0); /* pointwise GEMM path */
    check_conv(2, 13, 9, 19, 0, 3, 1, 1);
    check_conv(2, 13, 9, 19, 0, 3, 2, 1);
    check_conv(2, 16, 12, 19, 0, 5, 2, 1); /* 5x5/2 on even: pad (1, 2) */
    check_conv(1, 5, 3, 4, 0, 5, 1, 1);    /* kernel larger than the map */
}

static void test_maxpool_and_upsample(void **state)
{
    const Ops *ops = ops_cpu();
    int n = 2, h = 7, w = 4, c = 3;
    float *x = randn((size_t)n * h * w * c, 4);
    PoolShape ps;
    pool_shape_same(&ps, n, h, w, c, 3, 2);
    assert_int_equal(ps.oh, 4);
    assert_int_equal(ps.ow, 2);
    float got[2 * 4 * 2 * 3], want[2 * 4 * 2 * 3];
    ops->maxpool_forward(NULL, got, x, &ps);
    for (int b = 0; b < n; b++)
        for (int oy = 0; oy < ps.oh; oy++)
            for (int ox = 0; ox < ps.ow; ox++)
                for (int ch = 0; ch < c; ch++) {
                    float m = -INFINITY; /* padding is -inf: never wins */
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int iy = oy * 2 + ky - ps.pad_top, ix = ox * 2 + kx - ps.pad_left;
                            if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                                m = fmaxf(m, x[(((size_t)b * h + iy) * w + ix) * c + ch]);
                        }
                    want[((b * ps.oh + oy) * ps.ow + ox) * c + ch] = m;
                }
    assert_close("maxpool 7x4 -> 4x2", got, want, sizeof got / sizeof *got, 0);
    /* Legacy nearest 3 -> 5 picks rows 0,0,1,1,2 (fixture README); 2 -> 4 doubles. */
    float src[3] = {10, 20, 30}, up[5];
    ops->upsample_nearest_forward(NULL, up, src, 1, 3, 1, 1, 5, 1);
    float expect[5] = {10, 10, 20, 20, 30};
    assert_memory_equal(up, expect, sizeof up);
    float up2[5];
    ops->upsample_nearest_forward(NULL, up2, src, 1, 1, 3, 1, 1, 5);
    assert_memory_equal(up2, expect, sizeof up2);
    free(x);
}

static void test_bn_act_fuse_add_se(void **state)
{
    const Ops *ops = ops_cpu();
    int rows = 37, c = 11;
    float *x = randn((size_t)rows * c, 5), *g = randn(c, 6), *b = randn(c, 7), *m = randn(c, 8);
    float var[11], got[37 * 11], want[37 * 11];
    for (int i = 0; i < c; i++) var[i] = 0.5f + fabsf(g[i]);
    ops->bn_infer_forward(NULL, got, x, g, b, m, var, 1e-3f, ACT_SILU, rows, c);
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < c; i++) {
            double z = (x[r * c + i] - m[i]) / sqrt(var[i] + 1e-3) * g[i] + b[i];
            want[r * c + i] = (float)(z / (1 + exp(-z)));
        }
    assert_close("bn + silu", got, want, (size_t)rows * c, 1e-5);
    ops->act_forward(NULL, got, x, ACT_SIGMOID, (size_t)rows * c);
    for (int i = 0; i < rows * c; i++) want[i] = (float)(1 / (1 + exp(-(double)x[i])));
    assert_close("sigmoid", got, want, (size_t)rows * c, 1e-6);
    /* Large magnitudes: the activations saturate cleanly, no NaN or inf. */
    float big[4] = {-200.0f, -90.0f, 90.0f, 200.0f}, out[4];
    ops->act_forward(NULL, out, big, ACT_SILU, 4);
    assert_true(fabsf(out[0]) < 1e-30f && fabsf(out[3] - 200.0f) < 1e-3f);

    float w[3] = {0.3f, -0.2f, 0.9f}; /* relu(-0.2) = 0: the second input drops out */
    const float *ins[3] = {x, g, b};
    float fused[11];
    ops->fuse_forward(NULL, fused, ins, w, 3, (size_t)c);
    for (int i = 0; i < c; i++) want[i] = (x[i] * 0.3f) / (1.2f + 1e-4f) + (b[i] * 0.9f) / (1.2f + 1e-4f);
    assert_close("fast normalized fusion", fused, want, (size_t)c, 1e-6);
    ops->fuse_forward(NULL, fused, ins, NULL, 3, (size_t)c);
    for (int i = 0; i < c; i++) want[i] = x[i] + g[i] + b[i];
    assert_close("sum fusion", fused, want, (size_t)c, 1e-6);
    ops->add_forward(NULL, fused, g, b, (size_t)c);
    for (int i = 0; i < c; i++) want[i] = g[i] + b[i];
    assert_close("add", fused, want, (size_t)c, 0);

    /* SE on (2, 5, 11) with 3 reduced channels. */
    int n = 2, hw = 5, cr = 3;
    float *wr = randn((size_t)cr * c, 9), *br = randn(cr, 10), *we = randn((size_t)c * cr, 11), *be = randn(c, 12);
    float pooled[22], hidden[6], gate[22], se_got[110], se_want[110];
    ops->se_forward(NULL, se_got, pooled, hidden, gate, x, wr, br, we, be, n, hw, c, cr);
    for (int bi = 0; bi < n; bi++) {
        double p[11], hd[3];
        for (int i = 0; i < c; i++) {
            p[i] = 0;
            for (int j = 0; j < hw; j++) p[i] += x[(bi * hw + j) * c + i];
            p[i] /= hw;
        }
        for (int r = 0; r < cr; r++) {
            double a = br[r];
            for (int i = 0; i < c; i++) a += wr[r * c + i] * p[i];
            hd[r] = a / (1 + exp(-a));
        }
        for (int i = 0; i < c; i++) {
            double a = be[i];
            for (int r = 0; r < cr; r++) a += we[i * cr + r] * hd[r];
            double gt = 1 / (1 + exp(-a));
            for (int j = 0; j < hw; j++) se_want[(bi * hw + j) * c + i] = (float)(x[(bi * hw + j) * c + i] * gt);
        }
    }
    assert_close("squeeze-excitation", se_got, se_want, 110, 1e-5);
    free(x), free(g), free(b), free(m), free(wr), free(br), free(we), free(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv),
        cmocka_unit_test(test_maxpool_and_upsample),
        cmocka_unit_test(test_bn_act_fuse_add_se),
    };
    return cmocka_run_group_tests_name("ops_cpu", tests, NULL, NULL);
}
