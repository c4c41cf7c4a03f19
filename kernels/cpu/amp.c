/* amp.c: mixed precision on the CPU, emulated, as the reference the GPU's real fp16/bf16 storage is
 * tested against (kernels/ops.h, Conventions). Activations stay floats here, but every value an op
 * stores is rounded to the context's type, which is exactly what 2-byte storage with fp32 math
 * does: a GPU kernel reads T (exactly representable as float), computes in fp32 and rounds once
 * when it stores. The wrappers below run the fp32 ops unchanged and round what they stored; ops
 * whose outputs are copies or maxima of rounded inputs (max pool, nearest upsample forward) need
 * no wrapper. Regular convolutions read the rounded parameter copy (cast_params), as autocast
 * casts their weights; their weight gradients stay fp32 sums here, where cuDNN's pass through a
 * 2-byte dw differs by rounding only.
 *
 * With fp32 (the default, and a NULL context in tests) every wrapper is the plain op. */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

/* IEEE binary16, round to nearest even, overflow to inf, subnormals kept: the F16C conversion
 * (x86-64-v3) or GCC's soft-float one, both exact to the standard. */
float cpu__round_fp16(float x) { return (float)(_Float16)x; }

/* bfloat16: the top 16 bits of the float, rounded to nearest even; NaN stays NaN (quieted). */
float cpu__round_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        u |= 0x00400000u;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
    }
    u &= 0xffff0000u;
    memcpy(&x, &u, sizeof x);
    return x;
}

static int amp_on(const OpsCtx *ctx) { return ctx && ctx->prec != PREC_FP32; }

/* Rounds count stored values to the context's type (nothing in fp32 or for NULL p). */
static void round_stored(const OpsCtx *ctx, float *p, size_t count)
{
    if (!amp_on(ctx) || !p) return;
    if (ctx->prec == PREC_FP16) {
#pragma omp parallel for schedule(static) if (count > 65536)
        for (size_t i = 0; i < count; i++) p[i] = cpu__round_fp16(p[i]);
    } else {
#pragma omp parallel for schedule(static) if (count > 65536)
        for (size_t i = 0; i < count; i++) p[i] = cpu__round_bf16(p[i]);
    }
}

/* A regular convolution's weights: the rounded copy at the same offset when w lies in the block
 * cast_params registered, else w itself (a convolution of weights outside the block, as in op
 * tests, uses them as given). */
static const float *conv_weights(const OpsCtx *ctx, const float *w)
{
    if (!amp_on(ctx) || !ctx->param_copy || w < ctx->param_base ||
        w >= ctx->param_base + ctx->param_count)
        return w;
    return ctx->param_copy + (w - ctx->param_base);
}

int cpu__set_precision(OpsCtx *ctx, Precision p, Err *err)
{
    if (p != PREC_FP32 && p != PREC_FP16 && p != PREC_BF16)
        return err_set(err, "cpu backend: unknown activation precision %d", (int)p);
    ctx->prec = p;
    return 0;
}

int cpu__cast_params(OpsCtx *ctx, const float *params, size_t count, Err *err)
{
    if (!amp_on(ctx)) return 0;
    if (!ctx->param_copy) {
        ctx->param_copy = malloc((count ? count : 1) * sizeof(float));
        if (!ctx->param_copy)
            return err_set(err, "cpu backend: out of memory for the %zu-value rounded weights", count);
        ctx->param_base = params, ctx->param_count = count;
    }
    ASSERT(params == ctx->param_base && count == ctx->param_count);
    memcpy(ctx->param_copy, params, count * sizeof(float));
    round_stored(ctx, ctx->param_copy, count);
    return 0;
}

void cpu__act_upload(OpsCtx *ctx, float *dst, const float *host_src, size_t count)
{
    if (count) memmove(dst, host_src, count * sizeof(float));
    round_stored(ctx, dst, count);
}

void cpu__act_download(OpsCtx *ctx, float *host_dst, const float *src, size_t count)
{
    if (count) memmove(host_dst, src, count * sizeof(float));
}

/* ---- forward ------------------------------------------------------------------------------- */

void cpu__amp_conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                             const float *b, const ConvShape *s)
{
    cpu__conv2d_forward(ctx, out, in, conv_weights(ctx, w), b, s);
    round_stored(ctx, out, (size_t)s->n * s->oh * s->ow * s->cout);
}

void cpu__amp_dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                               const ConvShape *s)
{
    cpu__dwconv2d_forward(ctx, out, in, w, s);
    round_stored(ctx, out, (size_t)s->n * s->oh * s->ow * s->cout);
}

void cpu__amp_bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                               const float *beta, const float *mean, const float *var, float eps,
                               Act act, size_t rows, int c)
{
    cpu__bn_infer_forward(ctx, out, in, gamma, beta, mean, var, eps, act, rows, c);
    round_stored(ctx, out, rows * c);
}

void cpu__amp_act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
    cpu__act_forward(ctx, out, in, act, count);
    round_stored(ctx, out, count);
}

void cpu__amp_se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                         const float *x, const float *w_r, const float *b_r, const float *w_e,
                         const float *b_e, int n, int hw, int c, int cr)
{
    cpu__se_forward(ctx, out, pooled, hidden, gate, x, w_r, b_r, w_e, b_e, n, hw, c, cr);
    round_stored(ctx, out, (size_t)n * hw * c);
}

void cpu__amp_add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count)
{
    cpu__add_forward(ctx, out, a, b, count);
    round_stored(ctx, out, count);
}

void cpu__amp_fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                           size_t count)
{
    cpu__fuse_forward(ctx, out, ins, w, k, count);
    round_stored(ctx, out, count);
}

void cpu__amp_bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                               float *running_mean, float *running_var, const float *in,
                               const float *gamma, const float *beta, float eps, float momentum,
                               Act act, size_t rows, int c)
{
    cpu__bn_train_forward(ctx, out, save_mean, save_invstd, running_mean, running_var, in, gamma,
                          beta, eps, momentum, act, rows, c);
    round_stored(ctx, out, rows * c);
}

/* ---- backward: the activation gradients they accumulate into ------------------------------- */

void cpu__amp_bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy, const float *in, const float *gamma,
                                const float *beta, const float *save_mean,
                                const float *save_invstd, Act act, size_t rows, int c)
{
    cpu__bn_train_backward(ctx, dx, dgamma, dbeta, dy, in, gamma, beta, save_mean, save_invstd,
                           act, rows, c);
    round_stored(ctx, dx, rows * c);
}

void cpu__amp_bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy, const float *in, const float *gamma,
                                const float *beta, const float *mean, const float *var, float eps,
                                Act act, size_t rows, int c)
{
    cpu__bn_infer_backward(ctx, dx, dgamma, dbeta, dy, in, gamma, beta, mean, var, eps, act, rows, c);
    round_stored(ctx, dx, rows * c);
}

void cpu__amp_act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                           size_t count)
{
    cpu__act_backward(ctx, dx, dy, x, act, count);
    round_stored(ctx, dx, count);
}

void cpu__amp_conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const float *w, const ConvShape *s)
{
    cpu__conv2d_backward(ctx, dx, dw, db, dy, x, conv_weights(ctx, w), s);
    round_stored(ctx, dx, (size_t)s->n * s->h * s->w * s->cin);
}

void cpu__amp_dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy,
                                const float *x, const float *w, const ConvShape *s)
{
    cpu__dwconv2d_backward(ctx, dx, dw, dy, x, w, s);
    round_stored(ctx, dx, (size_t)s->n * s->h * s->w * s->cin);
}

void cpu__amp_se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e,
                          float *db_e, const float *dy, const float *x, const float *pooled,
                          const float *hidden, const float *gate, const float *w_r,
                          const float *b_r, const float *w_e, int n, int hw, int c, int cr)
{
    cpu__se_backward(ctx, dx, dw_r, db_r, dw_e, db_e, dy, x, pooled, hidden, gate, w_r, b_r, w_e,
                     n, hw, c, cr);
    round_stored(ctx, dx, (size_t)n * hw * c);
}

void cpu__amp_accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count)
{
    cpu__accumulate(ctx, dst, src, count);
    round_stored(ctx, dst, count);
}

void cpu__amp_maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                               const PoolShape *s)
{
    cpu__maxpool_backward(ctx, dx, dy, x, s);
    round_stored(ctx, dx, (size_t)s->n * s->h * s->w * s->c);
}

void cpu__amp_upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h,
                                        int w, int c, int oh, int ow)
{
    cpu__upsample_nearest_backward(ctx, dx, dy, n, h, w, c, oh, ow);
    round_stored(ctx, dx, (size_t)n * h * w * c);
}

void cpu__amp_fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                            const float *const *ins, const float *w, int k, size_t count)
{
    cpu__fuse_backward(ctx, dins, dw, dy, ins, w, k, count);
    for (int i = 0; i < k; i++) round_stored(ctx, dins[i], count);
}

void cpu__amp_detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                             const float *box, const int32_t *cls_target, const float *box_target,
                             size_t rows, int anchors, int classes, float norm, float alpha,
                             float gamma, float delta, float box_weight, float label_smoothing,
                             float loss_scale)
{
    cpu__detection_loss(ctx, loss, dcls, dbox, cls, box, cls_target, box_target, rows, anchors,
                        classes, norm, alpha, gamma, delta, box_weight, label_smoothing, loss_scale);
    round_stored(ctx, dcls, rows * anchors * classes);
    round_stored(ctx, dbox, rows * anchors * 4);
}
