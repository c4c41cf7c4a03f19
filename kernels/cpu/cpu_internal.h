/* cpu_internal.h: the CPU backend's functions, shared between its files and its op table
 * (ops_cpu.c). Everything here is plain C over host memory, written to be read: it is the
 * reference that the CUDA backend is tested against. */
#ifndef EFFDET_CPU_INTERNAL_H
#define EFFDET_CPU_INTERNAL_H

#include <math.h>
#include <stdint.h>

#include "kernels/ops.h"

struct OpsCtx {
    float *workspace; /* scratch for im2col, reserved once at plan time */
    size_t workspace_bytes;
    /* Data-parallel batch norm (Ops.set_bn_sync); has_bn_sync 0: local statistics. Ops also
     * accept a NULL context (tests), which means local statistics too. */
    BnSync bn_sync;
    int has_bn_sync;
    /* Mixed precision, emulated (amp.c): activations stay floats holding values rounded to
     * `prec`; param_copy is the convolutions' rounded copy of the parameter block param_base. */
    Precision prec;
    float *param_copy;
    const float *param_base;
    size_t param_count;
    /* Timers (timer.c): CLOCK_MONOTONIC seconds per slot. A fixed array, so the context needs
     * nothing freed for them; slots 0..timer_slots-1 are reserved. */
    double timer_marks[32768];
    int timer_slots;
};

/* timer.c: the op table's timers (kernels/ops.h). */
int cpu__timer_reserve(OpsCtx *ctx, int slots, Err *err);
void cpu__timer_mark(OpsCtx *ctx, int slot);
double cpu__timer_elapsed_ms(OpsCtx *ctx, int from, int to);

size_t cpu__conv2d_workspace_bytes(const ConvShape *s);
void cpu__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                         const ConvShape *s);
void cpu__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                           const ConvShape *s);
void cpu__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                           const float *beta, const float *mean, const float *var, float eps,
                           Act act, size_t rows, int c);
void cpu__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count);
void cpu__se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                     const float *x, const float *w_r, const float *b_r, const float *w_e,
                     const float *b_e, int n, int hw, int c, int cr);
void cpu__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count);
void cpu__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s);
void cpu__upsample_nearest_forward(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                   int c, int oh, int ow);
void cpu__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                       size_t count);

/* Training (see the training section of kernels/ops.h). */
void cpu__bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                           float *running_mean, float *running_var, const float *in,
                           const float *gamma, const float *beta, float eps, float momentum,
                           Act act, size_t rows, int c);
void cpu__bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *in, const float *gamma, const float *beta,
                            const float *save_mean, const float *save_invstd, Act act,
                            size_t rows, int c);
void cpu__bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *in, const float *gamma, const float *beta,
                            const float *mean, const float *var, float eps, Act act, size_t rows,
                            int c);
void cpu__act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                       size_t count);
void cpu__set_bn_sync(OpsCtx *ctx, const BnSync *sync);
void cpu__conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                          const float *x, const float *w, const ConvShape *s);
void cpu__dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy, const float *x,
                            const float *w, const ConvShape *s);
void cpu__se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e, float *db_e,
                      const float *dy, const float *x, const float *pooled, const float *hidden,
                      const float *gate, const float *w_r, const float *b_r, const float *w_e,
                      int n, int hw, int c, int cr);
void cpu__accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count);
void cpu__maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                           const PoolShape *s);
void cpu__upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h, int w,
                                    int c, int oh, int ow);
void cpu__fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                        const float *const *ins, const float *w, int k, size_t count);
void cpu__sum_squares(OpsCtx *ctx, float *out, const float *x, size_t count);
void cpu__sgd_update(OpsCtx *ctx, float *params, float *momentum_buf, const float *grads,
                     const uint8_t *decay_mask, float lr, float momentum, float weight_decay,
                     float grad_scale, size_t count);
void cpu__ema_update(OpsCtx *ctx, float *ema, const float *x, float decay, size_t count);

/* Deterministic parallel sums (reduce.c): out[0..width) = the sums that fn adds into its zeroed
 * acc over [begin, end) subranges of [0, n). The split is fixed (not one part per thread), the
 * parts sum in double and meet in a fixed order, so results are bit-identical run to run. */
enum { CPU_REDUCE_CHUNKS = 32, CPU_REDUCE_WIDTH = 256 };
typedef void (*CpuReduceFn)(double *acc, size_t begin, size_t end, const void *arg);
void cpu__reduce(double *out, int width, size_t n, CpuReduceFn fn, const void *arg);
/* out[j] = sum over rows r of a[r * ld + j] * b[r * ld + j] (of a alone when b is NULL), j < ct
 * <= CPU_REDUCE_WIDTH. */
void cpu__column_dots(double *out, const float *a, const float *b, size_t rows, int ld, int ct);
/* dst[j] += sum over rows of a (rows, c), for any c. */
void cpu__column_sums_add(float *dst, const float *a, size_t rows, int c);

void cpu__detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                         const float *box, const int32_t *cls_target, const float *box_target,
                         size_t rows, int anchors, int classes, float norm, float alpha,
                         float gamma, float delta, float box_weight, float label_smoothing,
                         float loss_scale);

/* Mixed precision, emulated (amp.c; kernels/ops.h, Conventions): the table's ops that store
 * activations are these wrappers, which run the fp32 op above and round what it stored. */
float cpu__round_fp16(float x);
float cpu__round_bf16(float x);
int cpu__set_precision(OpsCtx *ctx, Precision p, Err *err);
int cpu__cast_params(OpsCtx *ctx, const float *params, size_t count, Err *err);
void cpu__act_upload(OpsCtx *ctx, float *dst, const float *host_src, size_t count);
void cpu__act_download(OpsCtx *ctx, float *host_dst, const float *src, size_t count);
void cpu__amp_conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                             const float *b, const ConvShape *s);
void cpu__amp_dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                               const ConvShape *s);
void cpu__amp_bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                               const float *beta, const float *mean, const float *var, float eps,
                               Act act, size_t rows, int c);
void cpu__amp_act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count);
void cpu__amp_se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                         const float *x, const float *w_r, const float *b_r, const float *w_e,
                         const float *b_e, int n, int hw, int c, int cr);
void cpu__amp_add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count);
void cpu__amp_fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                           size_t count);
void cpu__amp_bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                               float *running_mean, float *running_var, const float *in,
                               const float *gamma, const float *beta, float eps, float momentum,
                               Act act, size_t rows, int c);
void cpu__amp_bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy, const float *in, const float *gamma,
                                const float *beta, const float *save_mean,
                                const float *save_invstd, Act act, size_t rows, int c);
void cpu__amp_bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta,
                                const float *dy, const float *in, const float *gamma,
                                const float *beta, const float *mean, const float *var, float eps,
                                Act act, size_t rows, int c);
void cpu__amp_act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                           size_t count);
void cpu__amp_conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                              const float *x, const float *w, const ConvShape *s);
void cpu__amp_dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy,
                                const float *x, const float *w, const ConvShape *s);
void cpu__amp_se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e,
                          float *db_e, const float *dy, const float *x, const float *pooled,
                          const float *hidden, const float *gate, const float *w_r,
                          const float *b_r, const float *w_e, int n, int hw, int c, int cr);
void cpu__amp_accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count);
void cpu__amp_maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                               const PoolShape *s);
void cpu__amp_upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h,
                                        int w, int c, int oh, int ow);
void cpu__amp_fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                            const float *const *ins, const float *w, int k, size_t count);
void cpu__amp_detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                             const float *box, const int32_t *cls_target, const float *box_target,
                             size_t rows, int anchors, int classes, float norm, float alpha,
                             float gamma, float delta, float box_weight, float label_smoothing,
                             float loss_scale);

/* expf for activations, written so that loops over it vectorize (glibc's expf is a call the
 * compiler will not vectorize without -ffast-math). Cody-Waite range reduction x = n ln2 + r,
 * |r| <= ln2/2, then a degree-6 Taylor polynomial for e^r and 2^n built in the exponent bits:
 * relative error below 2e-7 (about 2 ulp) over the clamped range, far inside the 1e-5 that parity
 * with the PyTorch reference needs. */
static inline float cpu__expf(float x)
{
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;      /* ln2 split in a short high part ... */
    r = r - n * -2.12194440e-4f;         /* ... and the rest, so n * ln2_hi is exact */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Scalar activations, shared by every op that applies one. */
static inline float cpu__sigmoid(float x) { return 1.0f / (1.0f + cpu__expf(-x)); }
static inline float cpu__silu(float x) { return x / (1.0f + cpu__expf(-x)); }
static inline float cpu__act(float x, Act act)
{
    return act == ACT_SILU ? cpu__silu(x) : act == ACT_SIGMOID ? cpu__sigmoid(x) : x;
}
/* act'(x): silu' = s (1 + x (1 - s)), sigmoid' = s (1 - s), with s = sigmoid(x). */
static inline float cpu__act_grad(float x, Act act)
{
    if (act == ACT_NONE) return 1.0f;
    float s = cpu__sigmoid(x);
    return act == ACT_SILU ? s * (1.0f + x * (1.0f - s)) : s * (1.0f - s);
}

#endif
