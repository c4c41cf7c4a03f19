/* ops.h: the one backend-neutral op API of effdet-c.
 *
 * A backend (kernels/cpu/, kernels/cuda/) fills an `Ops` table of function pointers with these exact
 * signatures; the model holds a `const Ops *` and never knows which backend runs it. The CPU backend
 * is the readable reference that the CUDA backend is tested against.
 *
 * Conventions
 * - Every activation is fp32 NHWC: index ((n * H + y) * W + x) * C + c. Pointers passed to ops are
 *   memory of the backend (host memory for the CPU, device memory for CUDA).
 * - Weights are stored the way NHWC convolution wants them, not the way PyTorch stores them; the
 *   conversion happens once when weights are loaded or saved (worker/model/params.c):
 *     regular conv   (Cout, KH, KW, Cin)   "OHWI"; for 1x1 convs this is PyTorch's own byte order
 *     depthwise conv (KH, KW, C)           so the inner loop over channels is contiguous
 * - Padding is TensorFlow "SAME": the output size is ceil(in / stride) and the total padding
 *   max((out - 1) * stride + k - in, 0) is split floor(total / 2) before (top/left) and the rest
 *   after. A ConvShape carries pad_top/pad_left; bottom/right follow from the output size.
 * - Signatures read (ctx, outputs..., saved-for-backward..., inputs..., params..., shape).
 * - Gradient rule: every backward op ACCUMULATES (+=) into the gradients it produces, of
 *   parameters and of activations alike. The model zeroes the gradient arena and the parameter
 *   gradient block before a backward pass, so tensors that fan out (BiFPN nodes, residual
 *   inputs, heads shared across levels) need no special case. `dx` arguments may be NULL when the
 *   input needs no gradient (the network input, frozen layers).
 * - Ops never allocate; scratch space comes from OpsCtx, sized by ops->workspace_bytes at plan time.
 * - Mixed precision (Ops.set_precision with PREC_FP16 or PREC_BF16, as autocast runs a network):
 *   activation tensors, that is every NHWC map an op reads or writes (in/out/x/a/b/ins of forward
 *   ops, dy/dx/dst/src/dins of backward ops, cls/box/dcls/dbox of detection_loss, cls/box of
 *   detect), hold 2-byte elements of that type. Their pointers keep the type float * and their
 *   buffers keep fp32 sizes (the first half is used), so the model code is the same in every
 *   precision; host data crosses with act_upload/act_download. Everything else stays fp32:
 *   parameters and their gradients, BN running statistics and save_mean/save_invstd, SE's
 *   pooled/hidden/gate, fusion edge weights, anchors, targets, losses and scalars. Ops compute in
 *   fp32 and round when they store (a backward op's dx += rounds the sum). Regular convolutions
 *   read their weights from the copy cast_params made in the activation type (their bias stays
 *   fp32); depthwise convolutions, BN, SE and fusion read the fp32 parameters.
 */
#ifndef EFFDET_OPS_H
#define EFFDET_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

typedef struct OpsCtx OpsCtx; /* backend state: stream, library handles, workspace */
/* A data-parallel communicator (worker/comm.h). Forward-declared, since kernels do not depend on
 * worker/; comm.h repeats this identical typedef, which C11 (and C++) allow. */
typedef struct Comm Comm;

typedef enum { ACT_NONE = 0, ACT_SILU = 1, ACT_SIGMOID = 2 } Act;

/* The storage type of activations and their gradients (see Conventions). */
typedef enum { PREC_FP32 = 0, PREC_FP16 = 1, PREC_BF16 = 2 } Precision;

/* A 2-D convolution, regular (groups = 1) or depthwise (Cout == Cin). */
typedef struct ConvShape {
    int n, h, w, cin;      /* input (N, H, W, Cin) */
    int oh, ow, cout;      /* output (N, OH, OW, Cout) */
    int kh, kw, stride;
    int pad_top, pad_left; /* TF SAME, see above */
} ConvShape;

/* A max pool with a kh x kw window; the padded cells hold -inf so padding never wins. */
typedef struct PoolShape {
    int n, h, w, c;
    int oh, ow;
    int kh, kw, stride;
    int pad_top, pad_left;
} PoolShape;

/* Data-parallel batch norm (Ops.set_bn_sync): allreduce sums n host doubles in place over the
 * `world` ranks (the same result on every rank), returning 0 or -1. */
typedef struct BnSync {
    int (*allreduce)(void *arg, double *v, size_t n);
    void *arg;
    int world;
} BnSync;

/* Fills the output size and SAME padding of a convolution or pool from the input size. */
void conv_shape_same(ConvShape *s, int n, int h, int w, int cin, int cout, int k, int stride);
void pool_shape_same(PoolShape *s, int n, int h, int w, int c, int k, int stride);

typedef struct Ops {
    const char *name; /* "cpu" or "cuda" */
    int host_memory;  /* 1: backend memory is host memory, readable without a download */

    /* Context and memory. `device` selects a GPU for CUDA and is ignored on the CPU. */
    OpsCtx *(*ctx_create)(int device, Err *err);
    void (*ctx_destroy)(OpsCtx *ctx);
    void *(*mem_alloc)(OpsCtx *ctx, size_t bytes, Err *err); /* zeroed, 256-byte aligned */
    void (*mem_free)(OpsCtx *ctx, void *p);
    void (*mem_upload)(OpsCtx *ctx, void *dst, const void *host_src, size_t bytes);
    void (*mem_download)(OpsCtx *ctx, void *host_dst, const void *src, size_t bytes);
    void (*mem_zero)(OpsCtx *ctx, void *p, size_t bytes);
    /* Host fp32 values to and from an activation tensor, converted to and from the context's
     * activation type (plain copies in fp32). */
    void (*act_upload)(OpsCtx *ctx, float *dst, const float *host_src, size_t count);
    void (*act_download)(OpsCtx *ctx, float *host_dst, const float *src, size_t count);
    void (*sync)(OpsCtx *ctx);
    /* Scratch bytes a convolution of this shape needs (im2col and the like); the model sizes the
     * context's workspace once with the maximum over its convolutions. */
    size_t (*conv2d_workspace_bytes)(const ConvShape *s);
    int (*workspace_reserve)(OpsCtx *ctx, size_t bytes, Err *err);

    /* out (N, OH, OW, Cout) = conv(in (N, H, W, Cin), w (Cout, KH, KW, Cin)) + b (Cout) or no bias. */
    void (*conv2d_forward)(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                           const ConvShape *s);
    /* out (N, OH, OW, C) = depthwise conv(in (N, H, W, C), w (KH, KW, C)); no bias in EfficientDet. */
    void (*dwconv2d_forward)(OpsCtx *ctx, float *out, const float *in, const float *w,
                             const ConvShape *s);
    /* Inference batch norm over rows = N*H*W rows of C channels, then an activation:
     * out = act((in - mean) / sqrt(var + eps) * gamma + beta). */
    void (*bn_infer_forward)(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                             const float *beta, const float *mean, const float *var, float eps,
                             Act act, size_t rows, int c);
    /* out = act(in), elementwise over count values. */
    void (*act_forward)(OpsCtx *ctx, float *out, const float *in, Act act, size_t count);
    /* Squeeze-excitation on x (N, HW, C):
     *   pooled (N, C) = mean over HW; hidden (N, Cr) = silu(pooled . w_r^T + b_r);
     *   gate (N, C) = sigmoid(hidden . w_e^T + b_e); out = x * gate.
     * w_r (Cr, C), w_e (C, Cr): PyTorch's 1x1 conv byte order. pooled/hidden/gate are saved for
     * the backward pass. */
    void (*se_forward)(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                       const float *x, const float *w_r, const float *b_r, const float *w_e,
                       const float *b_e, int n, int hw, int c, int cr);
    /* out = a + b, elementwise (residual connections). */
    void (*add_forward)(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count);
    /* SAME max pool, -inf padding. */
    void (*maxpool_forward)(OpsCtx *ctx, float *out, const float *in, const PoolShape *s);
    /* Legacy PyTorch "nearest" resize of in (N, H, W, C) to (N, OH, OW, C):
     * src = min(floor(dst * (float)(in / out)), in - 1) per axis, the scale computed in float32. */
    void (*upsample_nearest_forward)(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                     int c, int oh, int ow);
    /* BiFPN node fusion of k <= 4 inputs of count values each; `ins` is a host array of k backend
     * pointers. With edge weights w (k values, backend memory): out = sum_i relu(w_i) * in_i / (sum_j relu(w_j) + 1e-4) ("fast attention");
     * with w == NULL: out = sum_i in_i (d6, d7, d7x). */
    void (*fuse_forward)(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                         size_t count);

    /* ---- training: train-mode batch norm, backward passes, loss, optimizer ------------------- */

    /* Train-mode batch norm over rows = N*H*W: batch mean and biased variance per channel;
     * save_mean/save_invstd (C) keep mean and 1/sqrt(var + eps) for the backward pass;
     * out = act((in - mean) * invstd * gamma + beta). When running_mean/var are non-NULL they are
     * updated in place as PyTorch does: r = (1 - momentum) * r + momentum * batch, with the
     * unbiased variance (rows / (rows - 1)) for running_var; rows must be at least 2. */
    void (*bn_train_forward)(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                             float *running_mean, float *running_var, const float *in,
                             const float *gamma, const float *beta, float eps, float momentum,
                             Act act, size_t rows, int c);
    /* Backward of bn_train_forward (act included: the pre-activation is recomputed from in).
     * dx, dgamma, dbeta += ... */
    void (*bn_train_backward)(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *in, const float *gamma, const float *beta,
                              const float *save_mean, const float *save_invstd, Act act,
                              size_t rows, int c);
    /* Backward of bn_infer_forward (frozen statistics, e.g. a frozen backbone): dx, dgamma,
     * dbeta += ... Any of dx, dgamma, dbeta may be NULL. */
    void (*bn_infer_backward)(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                              const float *in, const float *gamma, const float *beta,
                              const float *mean, const float *var, float eps, Act act,
                              size_t rows, int c);
    /* dx += dy * act'(x) for out = act(x). */
    void (*act_backward)(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                         size_t count);
    /* dx (N,H,W,Cin) += conv^T(dy); dw (Cout,KH,KW,Cin) += ...; db (Cout) += sum dy (db may be NULL;
     * dx may be NULL). */
    void (*conv2d_backward)(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                            const float *x, const float *w, const ConvShape *s);
    /* Depthwise: dx (N,H,W,C) += ..., dw (KH,KW,C) += ... (dx may be NULL). */
    void (*dwconv2d_backward)(OpsCtx *ctx, float *dx, float *dw, const float *dy, const float *x,
                              const float *w, const ConvShape *s);
    /* Backward of se_forward, with the tensors it saved: dx, dw_r, db_r, dw_e, db_e += ... */
    void (*se_backward)(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e, float *db_e,
                        const float *dy, const float *x, const float *pooled, const float *hidden,
                        const float *gate, const float *w_r, const float *b_r, const float *w_e,
                        int n, int hw, int c, int cr);
    /* dst += src, elementwise (the backward of add_forward, once per input). */
    void (*accumulate)(OpsCtx *ctx, float *dst, const float *src, size_t count);
    /* Max pool backward: each window's gradient goes to its maximum (the first one in scan order
     * on ties, as PyTorch). dx += ... */
    void (*maxpool_backward)(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                             const PoolShape *s);
    /* Nearest upsample backward: dx (N,H,W,C) += sum of dy over the cells that copied it. */
    void (*upsample_nearest_backward)(OpsCtx *ctx, float *dx, const float *dy, int n, int h, int w,
                                      int c, int oh, int ow);
    /* Fusion backward: dins[i] += d out / d in_i (a host array of k backend pointers, entries may
     * be NULL), dw (k values, or NULL for sum fusion) += d out / d w through relu and the
     * normalization. */
    void (*fuse_backward)(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                          const float *const *ins, const float *w, int k, size_t count);

    /* Focal + Huber loss of one pyramid level, accumulated: loss[0] += sum focal / norm,
     * loss[1] += sum huber / (4 norm), where norm = (positive anchors over the whole batch) + 1,
     * the same value for every level's call. dcls = d loss[0] / d cls (0 for ignored anchors) and
     * dbox = box_weight * d loss[1] / d box (0 for masked components; as in effdet, the box mask is
     * the target's zeros alone, whatever the class target) (=, not +=), both multiplied by
     * loss_scale (mixed-precision loss scaling; 1 otherwise; the losses are not): the gradients
     * of total = loss[0] + box_weight * loss[1]. dcls/dbox may be NULL (loss only).
     * cls (rows, A*C) logits, box (rows, A*4); cls_target (rows*A) int32: class channel
     * 0..C-1, -1 background, -2 ignore; box_target (rows*A, 4) (ty, tx, th, tw), components
     * equal to 0 are masked out as effdet does. focal = alpha_t (1 - p_t)^gamma
     * BCE_with_logits(logit, z_s), p_t and alpha_t from the one-hot z, z_s = z (1 - ls) + ls / 2
     * (label smoothing enters only the BCE). huber(e) = 0.5 e^2 if |e| <= delta else
     * delta (|e| - delta / 2). loss is backend memory (2 floats, zeroed by the caller). */
    void (*detection_loss)(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                           const float *box, const int32_t *cls_target, const float *box_target,
                           size_t rows, int anchors, int classes, float norm, float alpha,
                           float gamma, float delta, float box_weight, float label_smoothing,
                           float loss_scale);

    /* sum of squares of count values into *out (backend memory, one float; =). */
    void (*sum_squares)(OpsCtx *ctx, float *out, const float *x, size_t count);
    /* SGD with momentum (PyTorch's form) over the parameter block, with the gradient scaled by
     * grad_scale first (clipping) and L2 weight decay added to it (coupled, as torch.optim.SGD)
     * where decay_mask is 1:
     * g = grad * grad_scale + wd * mask * p; buf = momentum * buf + g; p -= lr * buf. */
    void (*sgd_update)(OpsCtx *ctx, float *params, float *momentum_buf, const float *grads,
                       const uint8_t *decay_mask, float lr, float momentum, float weight_decay,
                       float grad_scale, size_t count);
    /* ema = decay * ema + (1 - decay) * x over count values. */
    void (*ema_update)(OpsCtx *ctx, float *ema, const float *x, float decay, size_t count);

    /* ---- optional: NULL where the backend does not offer them ------------------------------ */

    /* TF32 for the convolutions and GEMMs (on: Ampere and later round their operands to a 10-bit
     * mantissa, about 1e-3 relative; off, the default: exact fp32). NULL on the CPU. */
    void (*set_tf32)(OpsCtx *ctx, int on);

    /* Mixed precision (see Conventions): the activation type of every later op of this context.
     * Called once, before the model is planned and any activation written; PREC_FP32 is the
     * default. Fails, naming the type, where the backend cannot store it. NULL: fp32 only. */
    int (*set_precision)(OpsCtx *ctx, Precision p, Err *err);
    /* Under mixed precision, the regular convolutions' copy of the parameter block: the count
     * floats of params (backend memory) rounded to the activation type into the context's copy,
     * at the same offsets (the first call allocates it; later calls pass the same block). The
     * model calls it whenever the weights change (loads, every optimizer step). Fails only when
     * the copy cannot be allocated. A no-op in fp32. Non-NULL wherever set_precision is. */
    int (*cast_params)(OpsCtx *ctx, const float *params, size_t count, Err *err);

    /* Timers in stream order, for per-op profiles (effdet bench --profile). timer_reserve makes
     * slots 0..slots-1 exist (fewer than before: nothing to do; fails, naming the count, where
     * they cannot be made); timer_mark records in a slot the time at which every op issued before
     * it has finished (it does not wait); timer_elapsed_ms waits until both marks are reached and
     * returns the milliseconds from `from` to `to`; both slots must have been marked. A mark
     * costs a few microseconds of issue time, so a profiled pass runs a little slower than a
     * plain one. The CPU's ops are synchronous: a mark reads the clock. NULL: no timers. */
    int (*timer_reserve)(OpsCtx *ctx, int slots, Err *err);
    void (*timer_mark)(OpsCtx *ctx, int slot);
    double (*timer_elapsed_ms)(OpsCtx *ctx, int from, int to);

    /* Data-parallel batch norm: train-mode BN statistics (forward: the per-channel sums for the
     * mean, then of squared deviations around the global mean; backward: the sums of dz and
     * dz*xhat) are summed over all ranks through sync->allreduce, with rows * sync->world values
     * per channel: one call per phase per layer (forward 2 of c values, backward 1 of 2c). dgamma
     * and dbeta stay this rank's sums (the gradient block is summed later). A failed allreduce
     * leaves the statistics undefined; its callback must remember the failure. The context keeps a
     * copy of *sync (sync->arg must outlive it). NULL sync: local statistics (the default). */
    void (*set_bn_sync)(OpsCtx *ctx, const BnSync *sync);

    /* Data parallelism over device memory: a communicator (worker/comm.h) for the same ranks as
     * `bootstrap`, whose allreduce_f32 sums this context's memory in order with the context's
     * other work (Comm.device_memory = 1; allreduce_f64 still takes host doubles). bootstrap is a
     * host communicator (comm_shm_open), used only while opening, to pass the library's unique id
     * from rank 0 to the others; the caller keeps it open while the new one lives, and closes
     * the new one first, before the context is destroyed. Each rank's context is on its own GPU.
     * Any wait longer than timeout_ms fails, and a failure leaves the communicator broken, as
     * comm.h says. NULL: not offered (the CPU backend, a CUDA build without NCCL). */
    Comm *(*comm_open)(OpsCtx *ctx, Comm *bootstrap, int timeout_ms, Err *err);

    /* Training targets of a batch on the backend, worker/labeler.h's rules and its level-major
     * output layout, bit for bit. anchors (count, 4) yxyx (backend); level_start (num_levels + 1)
     * a host array; gt (batch, max_boxes, 4) yxyx input pixels and gt_class (batch, max_boxes)
     * 1-based (backend), already checked by the host, with padding and crowd rows set to class -1
     * (rows of class <= -1 are skipped; the others keep their order). Writes cls_target
     * (batch * count) int32, box_target (batch * count, 4) and positives (batch) int32, the
     * positive anchors of each image. NULL: the host labels (worker/labeler.c). */
    void (*label_anchors)(OpsCtx *ctx, int32_t *cls_target, float *box_target, int32_t *positives,
                          const float *anchors, int count, const int *level_start, int num_levels,
                          const float *gt, const int32_t *gt_class, int batch, int max_boxes);

    /* Detections of a batch on the backend, worker/postprocess.h steps 1-3: the top k of the
     * flattened (anchor, class) logits of each image (equal logits: the lower index first),
     * Faster R-CNN decode against the anchors, score = sigmoid(logit), per-class greedy NMS
     * (suppress IoU > iou_thresh) in score order (equal score and class: top-k order, where the
     * host code keeps heap order), the best max_det kept. cls[l] (batch, cells_l,
     * A*C) and box[l] (batch, cells_l, A*4): host arrays of backend pointers, one per level;
     * anchors (count, 4) yxyx (backend); level_start a host array. Writes dets (batch, max_det, 6)
     * rows x1 y1 x2 y2 score class (1-based) in input pixels, sorted by score, zero rows after the
     * last, and n_dets (batch) int32 (backend). Scratch comes from the workspace, which the caller
     * reserves with detect_workspace_bytes. NULL: the host does it (worker/postprocess.c). */
    size_t (*detect_workspace_bytes)(int batch, int count, int classes, int k, int max_det);
    void (*detect)(OpsCtx *ctx, float *dets, int32_t *n_dets, const float *const *cls,
                   const float *const *box, const float *anchors, int count,
                   const int *level_start, int num_levels, int batch, int anchors_per_loc,
                   int classes, int k, float iou_thresh, int max_det);

    /* Graphs: record the work ops queue on the context, then replay it with one launch (at batch
     * 1, D0's ~400 kernel launches cost more than their work). graph_begin starts recording:
     * later ops of this context are recorded, not run, until graph_end, which turns the recording
     * into the graph of slot id (0 to 3), replacing an older graph there. graph_launch runs slot
     * id's graph, in order with the context's other work. A graph replays its ops with the
     * pointers and parameters they had when recorded, reading whatever those buffers hold at
     * launch: it stays valid while none of its buffers moves (a model's plan, params, buffers and
     * the workspace; graph_launch refuses a graph whose workspace has grown since). Between begin
     * and end, nothing may allocate (mem_alloc, a growing workspace_reserve: they fail, and so
     * does graph_end, leaving the context usable) or wait for the device (mem_download, sync, an
     * upload from unregistered memory: a bug, which the backend stops at as at any failed call).
     * NULL: not offered (the CPU backend). */
    int (*graph_begin)(OpsCtx *ctx, Err *err);
    int (*graph_end)(OpsCtx *ctx, int id, Err *err);
    int (*graph_launch)(OpsCtx *ctx, int id, Err *err);
    /* Pinned host memory: registers bytes at p (a read-only mapping is fine, e.g. shared-memory
     * batch slots) so that uploads from it are DMA transfers, asynchronous with respect to the
     * host: the caller must leave the memory unchanged until the context has waited for them (its
     * next download or sync). host_unregister waits for the context's queued work, and must come
     * before the memory is freed or unmapped. Fails on memory registered already. NULL: not
     * offered (the CPU backend, whose uploads are plain copies). */
    int (*host_register)(OpsCtx *ctx, void *p, size_t bytes, Err *err);
    void (*host_unregister)(OpsCtx *ctx, void *p);
} Ops;

/* The backends. ops_cuda() returns NULL (and fills err) where the CUDA backend was not built or no
 * GPU is usable. */
const Ops *ops_cpu(void);
const Ops *ops_cuda(Err *err);

/* "fp32", "fp16", "bf16" (the --amp-dtype spelling; inline, so the CUDA library has it too). */
static inline const char *precision_name(Precision p)
{
    return p == PREC_FP16 ? "fp16" : p == PREC_BF16 ? "bf16" : "fp32";
}
/* --amp-dtype's value to a Precision; fails with one line. */
int precision_parse(const char *s, Precision *p, Err *err);
/* --amp: fp16, unless an --amp-dtype before it chose already. */
static inline void precision_amp_flag(Precision *p)
{
    if (*p == PREC_FP32) *p = PREC_FP16;
}

/* Picks a backend from a --device string: "cpu", "cuda" or "cuda:N". */
const Ops *ops_for_device(const char *device, int *device_index, Err *err);

#endif
