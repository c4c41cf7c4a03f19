/* cuda_common.cuh: what every file of the CUDA backend shares: the error checks, the backend's
 * `struct OpsCtx`, launch-size helpers, the device-side activations and the declarations of the
 * ops that ops_cuda.cu puts in the table.
 *
 * Conventions
 * - Every kernel launch is followed by CUDA_CHECK(cudaGetLastError()), and every op ends with
 *   CUDA_OP_END(ctx): with EFFDET_SYNC_CHECK=1 (read once when the context is created) it waits for
 *   the stream, so an asynchronous fault is reported at the op that caused it rather than at some
 *   later call.
 * - All work goes to ctx->stream; nothing uses the legacy default stream, whose implicit
 *   synchronization would hide ordering bugs.
 * - Elementwise kernels use grid-stride loops over size_t indices, so any count fits in a grid that
 *   cuda__blocks() caps. Ops return early on empty tensors: a launch of zero blocks is an error.
 * - Mixed precision (kernels/ops.h): every kernel that touches an activation tensor is a template
 *   on its storage type T (float, __half or __nv_bfloat16) and reads and writes it only through
 *   cuda__ld / cuda__st, which convert to and from float: the math is fp32 whatever T is, and a
 *   value is rounded once, when it is stored. The op entry points pick T from ctx->prec with
 *   CUDA_ACT_DISPATCH. The float instantiations are the fp32 kernels as they were, expression for
 *   expression, so fp32 results do not change. Everything that is not an activation (parameters,
 *   their gradients, BN statistics, SE's pooled/hidden/gate, losses) stays float. */
#ifndef EFFDET_CUDA_COMMON_CUH
#define EFFDET_CUDA_COMMON_CUH

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

/* The project's headers are C: their functions keep C linkage when nvcc compiles them as C++. */
extern "C" {
#include "kernels/ops.h"
#include "shared/check.h"
}

#define CUDA_CHECK(expr) CHECK_GEN(expr, cudaSuccess, cudaGetErrorString)
#define CUDNN_CHECK(expr) CHECK_GEN(expr, CUDNN_STATUS_SUCCESS, cudnnGetErrorString)
#define CUBLAS_CHECK(expr) CHECK_GEN(expr, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)

/* Ends every op: with EFFDET_SYNC_CHECK=1 the stream is drained here, so a fault in this op's
 * kernels is reported with this op's file and line. */
#define CUDA_OP_END(ctx)                                                                         \
    do {                                                                                         \
        if ((ctx)->sync_check) CUDA_CHECK(cudaStreamSynchronize((ctx)->stream));                 \
    } while (0)

typedef struct ConvPlan ConvPlan;
enum { CUDA_BN_SYNC_MAX_C = 8192 }; /* channels of a synchronized BN layer (D7x's widest: 3840) */ /* conv_cudnn.cu: cuDNN descriptors + algorithm for one shape */

struct OpsCtx {
    int device;             /* the GPU this context was created on */
    int sync_check;         /* EFFDET_SYNC_CHECK=1: synchronize after each op */
    int conv_log;           /* EFFDET_CONV_LOG=1: print each convolution algorithm choice */
    cudaStream_t stream;    /* every kernel, copy and library call of this context runs here */
    cudnnHandle_t cudnn;    /* bound to stream; used only in conv_cudnn.cu */
    cublasHandle_t cublas;  /* bound to stream; for the GEMMs of the backward pass */
    void *workspace;        /* device scratch, reserved once at plan time, never grown in an op */
    size_t workspace_bytes;
    float *reduce;          /* scratch of the deterministic sums (reduce.cuh), fixed size */
    size_t reduce_floats;
    float *scratch;         /* an op's small intermediates between its kernels (cuda__scratch) */
    size_t scratch_floats;
    int tf32;               /* set_tf32: convolutions and GEMMs may use TF32 tensor cores */
    /* Data-parallel batch norm (set_bn_sync, norm.cu): the callback and a host buffer for the
     * per-channel sums it carries (up to two sums per channel, and their float staging). */
    BnSync bn_sync;
    int has_bn_sync;
    double bn_host[3 * CUDA_BN_SYNC_MAX_C];
    Precision prec;         /* set_precision: the storage type of activations (precision.cu) */
    void *param_copy;       /* cast_params: the parameter block in prec's type (param_count) */
    const float *param_base; /* the fp32 block it mirrors; conv weights map into it */
    size_t param_count;
    void *dw_scratch;       /* conv2d_backward under fp16/bf16: cuDNN's filter gradient in prec's
                             * type (param_count values, so any conv's weights fit), added to dw */
    float *act_stage;       /* act_upload/act_download: fp32 staging chunk of act_stage_floats */
    size_t act_stage_floats;
    ConvPlan *conv_plans;   /* fixed-capacity cache of per-shape convolution plans */
    cudaEvent_t *timer_events; /* timer.cu: the timer slots' events (timer_reserve) */
    int timer_slots;
    int conv_plan_count;    /* slots in use */
    int conv_plan_next;     /* next slot to reuse once all are in use (round robin) */
    struct CudaGraphs *graphs; /* graph.cu: capture state and graph slots; NULL until first used */
};

/* graph.cu: graph capture and replay, pinned host memory (the table's optional ops), and the
 * graphs' end with the context (called first in ctx_destroy: it ends an unfinished capture). */
extern "C" {
int cuda__graph_begin(OpsCtx *ctx, Err *err);
int cuda__graph_end(OpsCtx *ctx, int id, Err *err);
int cuda__graph_launch(OpsCtx *ctx, int id, Err *err);
int cuda__host_register(OpsCtx *ctx, void *p, size_t bytes, Err *err);
void cuda__host_unregister(OpsCtx *ctx, void *p);
void cuda__graph_ctx_free(OpsCtx *ctx);
}

/* Room for `floats` intermediates an op keeps between its own kernels (BN backward's per-channel
 * sums, SE backward's per-image gradients). Separate from ctx->reduce, which the sums between them
 * overwrite; valid until the op returns (ops run in stream order, one at a time). */
static inline float *cuda__scratch(OpsCtx *ctx, size_t floats)
{
    ASSERT(floats <= ctx->scratch_floats);
    return ctx->scratch;
}

/* Threads per block of the 1-D kernels, and the most blocks a grid-stride launch uses: plenty to
 * fill any current GPU, and within every grid dimension's limit. */
enum { CUDA_BLOCK = 256 };
static const size_t CUDA_MAX_BLOCKS = 65535;

static inline unsigned cuda__cap_blocks(size_t blocks)
{
    return (unsigned)(blocks < CUDA_MAX_BLOCKS ? blocks : CUDA_MAX_BLOCKS);
}

/* Blocks for a grid-stride loop over count items with CUDA_BLOCK threads per block. */
static inline unsigned cuda__blocks(size_t count)
{
    return cuda__cap_blocks((count + CUDA_BLOCK - 1) / CUDA_BLOCK);
}

/* A flat NHWC index split into its coordinates; every per-element kernel starts with this. */
typedef struct NhwcIndex {
    size_t n;
    int y, x, c;
} NhwcIndex;

__device__ __forceinline__ NhwcIndex cuda__nhwc(size_t i, int h, int w, int c)
{
    NhwcIndex r;
    r.c = (int)(i % c);
    size_t pix = i / c;
    r.x = (int)(pix % w);
    r.y = (int)(pix / w % h);
    r.n = pix / ((size_t)w * h);
    return r;
}

/* Calls visit(iy, ix, tap) for every cell of output (oy, ox)'s window that lies inside the h x w
 * input, ky outer and kx inner as the CPU loops, with tap = ky * kw + kx. Cells outside the input
 * are SAME padding and are skipped: zero padding for a sum, -inf padding for a max. */
template <typename Visit>
__device__ __forceinline__ void cuda__window(int oy, int ox, int h, int w, int kh, int kw,
                                             int stride, int pad_top, int pad_left, Visit visit)
{
    for (int ky = 0; ky < kh; ky++) {
        int iy = oy * stride - pad_top + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; kx++) {
            int ix = ox * stride - pad_left + kx;
            if (ix < 0 || ix >= w) continue;
            visit(iy, ix, ky * kw + kx);
        }
    }
}

/* The CPU's scalar activations (kernels/cpu/cpu_internal.h), same expressions. The division is
 * IEEE-rounded (nvcc's default without --use_fast_math); CUDA's expf is within 2 ulp of glibc's. */
__device__ __forceinline__ float cuda__sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float cuda__silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float cuda__act(float x, Act act)
{
    return act == ACT_SILU ? cuda__silu(x) : act == ACT_SIGMOID ? cuda__sigmoid(x) : x;
}
/* BiFPN fusion weights, the CPU's fuse_weights: wr = relu(w) and denom = sum(wr) + 1e-4, or ones
 * and 1 for sum fusion (w NULL), folded in input order so denom is bitwise the CPU's. The weights
 * stay on the device (trained parameters); every thread folds them itself. */
__device__ __forceinline__ float cuda__fuse_weights(float wr[4], const float *w, int k)
{
    for (int i = 0; i < 4; i++) wr[i] = 1.0f;
    if (!w) return 1.0f;
    float sum = 0.0f;
    for (int i = 0; i < k; i++) {
        wr[i] = w[i] > 0.0f ? w[i] : 0.0f;
        sum += wr[i];
    }
    return sum + 1e-4f;
}
/* act'(x), the CPU's cpu__act_grad: silu' = s (1 + x (1 - s)), sigmoid' = s (1 - s). */
__device__ __forceinline__ float cuda__act_grad(float x, Act act)
{
    if (act == ACT_NONE) return 1.0f;
    float s = cuda__sigmoid(x);
    return act == ACT_SILU ? s * (1.0f + x * (1.0f - s)) : s * (1.0f - s);
}

/* ---- activation storage (mixed precision) -------------------------------------------------- */

/* Element i of an activation tensor of storage type T, as a float (exact for every T). */
__device__ __forceinline__ float cuda__ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float cuda__ld(const __half *p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float cuda__ld(const __nv_bfloat16 *p, size_t i)
{
    return __bfloat162float(p[i]);
}
/* Stores v into element i, rounded to nearest even; beyond the type's range it becomes +-inf
 * (IEEE overflow), which is what fp16 loss scaling looks for. */
__device__ __forceinline__ void cuda__st(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void cuda__st(__half *p, size_t i, float v)
{
    p[i] = __float2half_rn(v);
}
__device__ __forceinline__ void cuda__st(__nv_bfloat16 *p, size_t i, float v)
{
    p[i] = __float2bfloat16_rn(v);
}

/* An op's float * activation pointer seen as its storage type (ops.h keeps float * in every
 * precision; under fp16/bf16 the first half of the buffer holds the 2-byte values). */
template <typename T> static inline T *cuda__as(float *p) { return reinterpret_cast<T *>(p); }
template <typename T> static inline const T *cuda__as(const float *p)
{
    return reinterpret_cast<const T *>(p);
}

/* Calls fn<T>(args...) with T the storage type of ctx's activations. */
#define CUDA_ACT_DISPATCH(ctx, fn, ...)                                                          \
    do {                                                                                         \
        switch ((ctx)->prec) {                                                                   \
        case PREC_FP16: fn<__half>(__VA_ARGS__); break;                                          \
        case PREC_BF16: fn<__nv_bfloat16>(__VA_ARGS__); break;                                   \
        default: fn<float>(__VA_ARGS__); break;                                                  \
        }                                                                                        \
    } while (0)

/* The backend's functions, with C linkage so C code (benchmarks, tests) may call them directly. */
extern "C" {

/* conv_cudnn.cu: the cuDNN handle and the plan cache live and die with the context. */
int cuda__conv_ctx_init(OpsCtx *ctx, Err *err);
void cuda__conv_ctx_free(OpsCtx *ctx);
void cuda__conv_math_changed(OpsCtx *ctx); /* ctx->tf32 changed: plans choose again */
void cuda__conv_precision_changed(OpsCtx *ctx); /* ctx->prec changed: plans take the new type */
size_t cuda__conv2d_workspace_bytes(const ConvShape *s);
void cuda__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                          const ConvShape *s);

/* depthwise.cu */
void cuda__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                            const ConvShape *s);

/* elementwise.cu */
void cuda__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                            const float *beta, const float *mean, const float *var, float eps,
                            Act act, size_t rows, int c);
void cuda__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count);
void cuda__se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                      const float *x, const float *w_r, const float *b_r, const float *w_e,
                      const float *b_e, int n, int hw, int c, int cr);
void cuda__add_forward(OpsCtx *ctx, float *out, const float *a, const float *b, size_t count);
void cuda__maxpool_forward(OpsCtx *ctx, float *out, const float *in, const PoolShape *s);
void cuda__upsample_nearest_forward(OpsCtx *ctx, float *out, const float *in, int n, int h, int w,
                                    int c, int oh, int ow);
void cuda__fuse_forward(OpsCtx *ctx, float *out, const float *const *ins, const float *w, int k,
                        size_t count);

/* ---- training ---------------------------------------------------------------------------------- */

/* conv_cudnn.cu */
void cuda__conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                           const float *x, const float *w, const ConvShape *s);
/* depthwise.cu */
void cuda__dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy, const float *x,
                             const float *w, const ConvShape *s);
/* norm.cu */
void cuda__bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                            float *running_mean, float *running_var, const float *in,
                            const float *gamma, const float *beta, float eps, float momentum,
                            Act act, size_t rows, int c);
void cuda__bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *in, const float *gamma, const float *beta,
                             const float *save_mean, const float *save_invstd, Act act,
                             size_t rows, int c);
void cuda__set_bn_sync(OpsCtx *ctx, const BnSync *sync);
void cuda__bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *in, const float *gamma, const float *beta,
                             const float *mean, const float *var, float eps, Act act, size_t rows,
                             int c);
/* elementwise_backward.cu */
void cuda__act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                        size_t count);
void cuda__se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e, float *db_e,
                       const float *dy, const float *x, const float *pooled, const float *hidden,
                       const float *gate, const float *w_r, const float *b_r, const float *w_e,
                       int n, int hw, int c, int cr);
void cuda__accumulate(OpsCtx *ctx, float *dst, const float *src, size_t count);
void cuda__maxpool_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x,
                            const PoolShape *s);
void cuda__upsample_nearest_backward(OpsCtx *ctx, float *dx, const float *dy, int n, int h, int w,
                                     int c, int oh, int ow);
void cuda__fuse_backward(OpsCtx *ctx, float *const *dins, float *dw, const float *dy,
                         const float *const *ins, const float *w, int k, size_t count);
/* loss.cu */
void cuda__detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                          const float *box, const int32_t *cls_target, const float *box_target,
                          size_t rows, int anchors, int classes, float norm, float alpha,
                          float gamma, float delta, float box_weight, float label_smoothing,
                          float loss_scale);
/* optim.cu */
void cuda__sum_squares(OpsCtx *ctx, float *out, const float *x, size_t count);
void cuda__sgd_update(OpsCtx *ctx, float *params, float *momentum_buf, const float *grads,
                      const uint8_t *decay_mask, float lr, float momentum, float weight_decay,
                      float grad_scale, size_t count);
void cuda__ema_update(OpsCtx *ctx, float *ema, const float *x, float decay, size_t count);

/* ---- mixed precision (precision.cu) ------------------------------------------------------------ */

int cuda__set_precision(OpsCtx *ctx, Precision p, Err *err);
int cuda__cast_params(OpsCtx *ctx, const float *params, size_t count, Err *err);
void cuda__act_upload(OpsCtx *ctx, float *dst, const float *host_src, size_t count);
void cuda__act_download(OpsCtx *ctx, float *host_dst, const float *src, size_t count);
void cuda__ctx_free_precision(OpsCtx *ctx); /* ctx_destroy: the buffers above */

/* ---- detection ---------------------------------------------------------------------------------- */

/* labeler.cu */
void cuda__label_anchors(OpsCtx *ctx, int32_t *cls_target, float *box_target, int32_t *positives,
                         const float *anchors, int count, const int *level_start, int num_levels,
                         const float *gt, const int32_t *gt_class, int batch, int max_boxes);
/* detect.cu */
size_t cuda__detect_workspace_bytes(int batch, int count, int classes, int k, int max_det);
void cuda__detect(OpsCtx *ctx, float *dets, int32_t *n_dets, const float *const *cls,
                  const float *const *box, const float *anchors, int count, const int *level_start,
                  int num_levels, int batch, int anchors_per_loc, int classes, int k,
                  float iou_thresh, int max_det);
/* comm_nccl.cu: the table's comm_open where the Makefile found NCCL (EFFDET_HAVE_NCCL, which also
 * links -lnccl); NULL, the op not offered, elsewhere. */
#ifdef EFFDET_HAVE_NCCL
Comm *cuda__comm_open(OpsCtx *ctx, Comm *bootstrap, int timeout_ms, Err *err);
#define CUDA__COMM_OPEN cuda__comm_open
#else
#define CUDA__COMM_OPEN NULL
#endif

/* timer.cu: the op table's timers, one event per slot; cuda__timer_free runs in ctx_destroy. */
int cuda__timer_reserve(OpsCtx *ctx, int slots, Err *err);
void cuda__timer_mark(OpsCtx *ctx, int slot);
double cuda__timer_elapsed_ms(OpsCtx *ctx, int from, int to);
void cuda__timer_free(OpsCtx *ctx);

} /* extern "C" */

#endif
