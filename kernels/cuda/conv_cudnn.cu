/* conv_cudnn.cu: regular (groups = 1) convolution forward and backward through cuDNN, NHWC, TF
 * SAME padding; the only translation unit of the backend that calls cuDNN.
 *
 * Layouts. Activations are NHWC tensors and the weights (Cout, KH, KW, Cin) are a CUDNN_TENSOR_NHWC
 * filter, whose KRSC order is our OHWI byte for byte, so nothing is transposed.
 *
 * Asymmetric SAME padding. cuDNN pads symmetrically; SAME pads floor(total/2) before and the rest
 * after, one more row (column) at the bottom (right) when the total is odd: stride 2 over an even
 * size with k = 3 or 5, as in the stem. We run cuDNN with the symmetric padding (pad_top,
 * pad_left) on an input that has `eh` zero rows and `ew` zero columns appended at the bottom and
 * right (conv_extra), copied into the workspace. Why this is exact: output row oy reads input rows
 * oy*stride - pad_top + ky for ky < KH in both conventions, so the top edge matches; rows at or
 * past H are zeros in both (SAME padding, or our appended zeros followed by cuDNN's padding); and
 * the last output row reads up to row (OH-1)*stride + KH-1 - pad_top = H-1 + bottom, which
 * eh + pad_top covers by construction. cuDNN's output size for that input is then exactly OH x OW,
 * which plan_set asserts, so any ConvShape that is not SAME-consistent fails loudly instead of
 * being computed wrong. Symmetric shapes (every stride-1 convolution with odd k, every 1x1) skip
 * the copy and run on the caller's input directly.
 *
 * Backward. The gradient rule is += (kernels/ops.h). cuDNN blends its result into the destination
 * as alpha * result + beta * old, so beta = 1 accumulates in place: dw always, and dx when the
 * padding is symmetric. With asymmetric padding cuDNN computes the gradient of the zero-extended
 * input, so backward-data writes it (beta = 0) into the workspace and conv_add_window_kernel adds
 * its top-left (H, W) window into dx: the appended rows and columns are constants, and their
 * gradient is dropped. Backward-filter reads the same zero-extended input, rebuilt in the same
 * workspace region first (filter, then data, so one region serves both in stream order). The bias
 * gradient is a deterministic column sum (reduce.cuh), not cudnnConvolutionBackwardBias, whose
 * summation order is not specified.
 *
 * Algorithms. A plan per shape holds the cuDNN descriptors and, per direction (forward,
 * backward-data, backward-filter), the algorithm, in a fixed-capacity cache in the context. The
 * algorithm comes from cuDNN's heuristics (cudnnGet*Algorithm_v7) rather than from cudnnFind: the
 * heuristics run on the host, need no scratch output and no synchronization, and give the same
 * choice on every run. Among the ranked candidates we skip the FFT and non-fused Winograd
 * algorithms, whose transforms round differently from direct summation by more than the fp32
 * parity tests accept, and take the first deterministic one whose workspace fits what the
 * context reserved; only when no deterministic one fits, the first that fits at all (cudnn_ops.h
 * marks backward-data ALGO_0 and backward-filter ALGO_0 and ALGO_3 non-deterministic: they add with
 * atomics, so their sums change from run to run).
 *
 * Math. ctx->tf32 == 0 (the default) sets CUDNN_FMA_MATH: on Ampere and later cuDNN's default
 * would let it use TF32 tensor cores, which is a precision mode of its own, not fp32. With
 * set_tf32(1) the plans use CUDNN_TENSOR_OP_MATH, which lets cuDNN round the operands to TF32;
 * cuda__conv_math_changed sets the new math type on every cached plan and drops their algorithm
 * choices, since the ranking and the workspace sizes depend on it.
 *
 * Bias. A small kernel adds it after cuDNN, so the result is (sum) + bias as in the CPU's GEMM onto
 * bias-filled rows. The forward cuDNN call writes with beta = 0 and never reads the output's old
 * values.
 *
 * Mixed precision (kernels/ops.h). Under fp16/bf16 every tensor descriptor (x, y, the filter) is
 * of that type while the convolution computes in float (CUDNN_DATA_FLOAT: cuDNN's "pseudo half"
 * and "pseudo bfloat16" configurations), with tensor-op math allowed, as PyTorch's autocast runs
 * its convolutions. The weights are the context's copy in that type made by cast_params: a weight
 * pointer w of the fp32 block maps to param_copy + (w - param_base), and a pointer outside the
 * block is a bug that ends the process. The bias stays fp32 and conv_bias_kernel adds it after
 * cuDNN, so the output is rounded twice (cuDNN's store, then the sum with the bias), where the
 * CPU's emulation rounds once: within one unit of the type's last place. Backward-filter must
 * write a filter of the descriptor's type, so it writes (beta = 0) into ctx->dw_scratch, and
 * conv_dw_add_kernel adds that into the fp32 gradient block: the gradient of one convolution is
 * rounded to the type once before it is accumulated, as autocast's weight gradients are. The
 * padded copies and dx's window go through cuda__ld/cuda__st like every other activation. The
 * workspace is sized for fp32 in every precision (conv2d_workspace_bytes has no precision), which
 * covers the 2-byte tensors with room to spare. */
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/reduce.cuh"

/* Distinct convolution shapes in one model at one (batch, size) are a few dozen; training and
 * evaluation together stay well under this. Past it, slots are reused round robin. */
enum { CONV_PLAN_CAP = 256 };

/* The three cuDNN convolution directions, each with its own algorithm in a plan. */
typedef enum { CONV_FWD = 0, CONV_BWD_DATA = 1, CONV_BWD_FILTER = 2, CONV_DIRS = 3 } ConvDir;

/* Candidates per heuristic query: the largest of cuDNN's per-direction algorithm counts. */
enum { CONV_ALGO_MAX = 8 };
static_assert((int)CUDNN_CONVOLUTION_FWD_ALGO_COUNT <= (int)CONV_ALGO_MAX &&
                  (int)CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT <= (int)CONV_ALGO_MAX &&
                  (int)CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT <= (int)CONV_ALGO_MAX,
              "CONV_ALGO_MAX must hold every heuristic answer");

/* One direction's algorithm (a cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t value). */
typedef struct AlgoChoice {
    int algo;
    size_t bytes;      /* cuDNN workspace that algo needs */
    size_t chosen_for; /* ctx->workspace_bytes when algo was chosen */
    int chosen;
} AlgoChoice;

struct ConvPlan {
    ConvShape key;
    int eh, ew;                    /* zero rows/cols appended at the bottom/right (conv_extra) */
    cudnnTensorDescriptor_t x, y;  /* x: the (zero-extended) input, also dx's in backward-data */
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    AlgoChoice choice[CONV_DIRS];
};

/* One ranked heuristic result, whatever the direction. */
typedef struct AlgoCand {
    int algo;
    cudnnStatus_t status;
    cudnnDeterminism_t determinism;
} AlgoCand;

static const char *const conv_dir_names[CONV_DIRS] = {"forward", "backward-data",
                                                      "backward-filter"};

/* ---- kernels ------------------------------------------------------------------------------------ */

/* dst (N, H+eh, W+ew, C) = src (N, H, W, C) with zeros in the appended rows and columns. A copy:
 * nothing is rounded in any storage type. */
template <typename T>
__global__ void conv_pad_kernel(T *dst, const T *src, int n, int h, int w, int c, int eh, int ew)
{
    const int pw = w + ew, ph = h + eh;
    const size_t total = (size_t)n * ph * pw * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, ph, pw, c);
        cuda__st(dst, i,
                 (p.y < h && p.x < w) ? cuda__ld(src, ((p.n * h + p.y) * w + p.x) * c + p.c)
                                      : 0.0f);
    }
}

/* dx (N, H, W, C) += the top-left (H, W) window of src (N, H+eh, W+ew, C): the inverse of
 * conv_pad_kernel for gradients. */
template <typename T>
__global__ void conv_add_window_kernel(T *dx, const T *src, int n, int h, int w, int c, int eh,
                                       int ew)
{
    const int pw = w + ew, ph = h + eh;
    const size_t total = (size_t)n * h * w * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, h, w, c);
        cuda__st(dx, i, cuda__ld(dx, i) + cuda__ld(src, ((p.n * ph + p.y) * pw + p.x) * c + p.c));
    }
}

/* out (M, Cout) += b (Cout), broadcast over the M = N*OH*OW output pixels; b is fp32 always. */
template <typename T>
__global__ void conv_bias_kernel(T *out, const float *b, size_t count, int cout)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        cuda__st(out, i, cuda__ld(out, i) + b[i % cout]);
}

/* dw (fp32) += src (count values of storage type T): cuDNN's filter gradient under fp16/bf16. */
template <typename T> __global__ void conv_dw_add_kernel(float *dw, const T *src, size_t count)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        dw[i] += cuda__ld(src, i);
}

/* ---- plans -------------------------------------------------------------------------------------- */

static size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

/* Rows (columns) of zeros to append at the bottom (right) so that cuDNN's symmetric padding
 * reproduces SAME's bottom (right) padding; 0 or 1 for SAME shapes. `bottom` is the padding the
 * last output row needs below the input, which is negative when it never reaches the last row. */
static void conv_extra(const ConvShape *s, int *eh, int *ew)
{
    int bottom = (s->oh - 1) * s->stride + s->kh - s->h - s->pad_top;
    int right = (s->ow - 1) * s->stride + s->kw - s->w - s->pad_left;
    *eh = bottom > s->pad_top ? bottom - s->pad_top : 0;
    *ew = right > s->pad_left ? right - s->pad_left : 0;
}

/* Workspace bytes taken by the zero-extended copy of the input (and, in backward, by the gradient
 * of that copy, which reuses the region); 0 when padding is symmetric. */
static size_t conv_pad_bytes(const ConvShape *s)
{
    int eh, ew;
    conv_extra(s, &eh, &ew);
    if (!eh && !ew) return 0;
    return align256((size_t)s->n * (s->h + eh) * (s->w + ew) * s->cin * sizeof(float));
}

/* fp16/bf16 data runs on tensor cores (products exact, sums in float); fp32 uses them only when
 * TF32 is on. */
static cudnnMathType_t conv_math(const OpsCtx *ctx)
{
    return ctx->tf32 || ctx->prec != PREC_FP32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}

/* The cuDNN type of the context's activations (and of the weight copy). */
static cudnnDataType_t conv_dtype(const OpsCtx *ctx)
{
    return ctx->prec == PREC_FP16   ? CUDNN_DATA_HALF
           : ctx->prec == PREC_BF16 ? CUDNN_DATA_BFLOAT16
                                    : CUDNN_DATA_FLOAT;
}


/* Points p's descriptors at shape s. Creating a descriptor allocates host memory, which happens
 * once per slot during warm-up; later plans for a reused slot only set the existing ones. */
static void plan_set(const OpsCtx *ctx, ConvPlan *p, const ConvShape *s)
{
    if (!p->x) {
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
        CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
    }
    p->key = *s;
    memset(p->choice, 0, sizeof p->choice);
    conv_extra(s, &p->eh, &p->ew);
    const cudnnDataType_t dtype = conv_dtype(ctx);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, dtype, s->n, s->cin,
                                           s->h + p->eh, s->w + p->ew));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, dtype, CUDNN_TENSOR_NHWC, s->cout, s->cin, s->kh,
                                           s->kw));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, s->pad_top, s->pad_left, s->stride,
                                                s->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, conv_math(ctx)));
    int on, oc, oh, ow;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &on, &oc, &oh, &ow));
    if (on != s->n || oc != s->cout || oh != s->oh || ow != s->ow) {
        fprintf(stderr,
                "%s:%d: conv2d: shape in (%d,%d,%d,%d) k %dx%d stride %d pad (%d,%d) is not TF "
                "SAME: expected output (%d,%d,%d,%d), cuDNN computes (%d,%d,%d,%d)\n",
                __FILE__, __LINE__, s->n, s->h, s->w, s->cin, s->kh, s->kw, s->stride, s->pad_top,
                s->pad_left, s->n, s->oh, s->ow, s->cout, on, oh, ow, oc);
        exit(EXIT_FAILURE);
    }
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, dtype, s->n, s->cout, s->oh,
                                           s->ow));
}

/* FFT and non-fused Winograd are excluded in every direction (see the header comment). */
static int algo_allowed(ConvDir dir, int a)
{
    switch (dir) {
    case CONV_FWD:
        return a != CUDNN_CONVOLUTION_FWD_ALGO_FFT && a != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING &&
               a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    case CONV_BWD_DATA:
        return a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT &&
               a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING &&
               a != CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
    case CONV_BWD_FILTER:
        return a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT &&
               a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING &&
               a != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
    default:
        return 0;
    }
}

/* cuDNN's ranked heuristic candidates for one direction of p, best first; returns their number. */
static int plan_candidates(OpsCtx *ctx, const ConvPlan *p, ConvDir dir, AlgoCand *out)
{
    int got = 0;
    if (dir == CONV_FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx->cudnn, p->x, p->w, p->conv, p->y,
                                                           CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                           perf));
        for (int i = 0; i < got; i++)
            out[i] = AlgoCand{(int)perf[i].algo, perf[i].status, perf[i].determinism};
    } else if (dir == CONV_BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
        CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
            ctx->cudnn, p->w, p->y, p->conv, p->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got,
            perf));
        for (int i = 0; i < got; i++)
            out[i] = AlgoCand{(int)perf[i].algo, perf[i].status, perf[i].determinism};
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
        CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
            ctx->cudnn, p->x, p->y, p->conv, p->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got,
            perf));
        for (int i = 0; i < got; i++)
            out[i] = AlgoCand{(int)perf[i].algo, perf[i].status, perf[i].determinism};
    }
    return got;
}

/* The workspace algorithm a of direction dir needs for p; not SUCCESS when cuDNN cannot run it. */
static cudnnStatus_t algo_workspace(OpsCtx *ctx, const ConvPlan *p, ConvDir dir, int a,
                                    size_t *bytes)
{
    *bytes = 0;
    if (dir == CONV_FWD)
        return cudnnGetConvolutionForwardWorkspaceSize(ctx->cudnn, p->x, p->w, p->conv, p->y,
                                                       (cudnnConvolutionFwdAlgo_t)a, bytes);
    if (dir == CONV_BWD_DATA)
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            ctx->cudnn, p->w, p->y, p->conv, p->x, (cudnnConvolutionBwdDataAlgo_t)a, bytes);
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(
        ctx->cudnn, p->x, p->y, p->conv, p->w, (cudnnConvolutionBwdFilterAlgo_t)a, bytes);
}

/* Picks direction dir's algorithm: the highest-ranked allowed deterministic one whose workspace
 * fits in `avail` bytes, else the highest-ranked allowed one that fits. */
static void plan_choose(OpsCtx *ctx, ConvPlan *p, ConvDir dir, size_t avail)
{
    AlgoCand cand[CONV_ALGO_MAX];
    const int got = plan_candidates(ctx, p, dir, cand);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < got; i++) {
            size_t bytes = 0;
            if (cand[i].status != CUDNN_STATUS_SUCCESS || !algo_allowed(dir, cand[i].algo))
                continue;
            if (pass == 0 && cand[i].determinism != CUDNN_DETERMINISTIC) continue;
            /* The workspace query is authoritative; the heuristic's estimate is not always. */
            if (algo_workspace(ctx, p, dir, cand[i].algo, &bytes) != CUDNN_STATUS_SUCCESS ||
                bytes > avail)
                continue;
            const ConvShape *s = &p->key;
            /* Atomics make such an algorithm's sums differ run to run, so a resumed run would no
             * longer equal a straight one: worth a line. EFFDET_CONV_LOG=1 lists every choice. */
            if (pass == 1 || ctx->conv_log)
                fprintf(stderr, "effdet: %s: conv2d %s in (%d,%d,%d,%d) k %dx%d stride %d out %d: "
                        "cuDNN algorithm %d%s, %zu workspace bytes\n",
                        pass == 1 ? "warning" : "info", conv_dir_names[dir], s->n, s->h, s->w,
                        s->cin, s->kh, s->kw, s->stride, s->cout, cand[i].algo,
                        pass == 1 ? " (no deterministic one fits: results may vary run to run)" : "",
                        bytes);
            AlgoChoice *c = &p->choice[dir];
            c->algo = cand[i].algo;
            c->bytes = bytes;
            c->chosen_for = ctx->workspace_bytes;
            c->chosen = 1;
            return;
        }
    }
    const ConvShape *s = &p->key;
    fprintf(stderr,
            "%s:%d: conv2d: cuDNN offers no %s %s algorithm for in (%d,%d,%d,%d) k %dx%d stride "
            "%d out (%d,%d,%d,%d) within %zu workspace bytes\n",
            __FILE__, __LINE__, precision_name(ctx->prec), conv_dir_names[dir], s->n, s->h, s->w, s->cin,
            s->kh, s->kw,
            s->stride, s->n, s->oh, s->ow, s->cout, avail);
    exit(EXIT_FAILURE);
}

/* The plan for shape s, from the cache or made now. */
static ConvPlan *plan_get(OpsCtx *ctx, const ConvShape *s)
{
    for (int i = 0; i < ctx->conv_plan_count; i++)
        if (!memcmp(&ctx->conv_plans[i].key, s, sizeof *s)) return &ctx->conv_plans[i];
    int slot = ctx->conv_plan_count;
    if (slot < CONV_PLAN_CAP) {
        ctx->conv_plan_count++;
    } else {
        slot = ctx->conv_plan_next;
        ctx->conv_plan_next = (slot + 1) % CONV_PLAN_CAP;
    }
    ConvPlan *p = &ctx->conv_plans[slot];
    plan_set(ctx, p, s);
    return p;
}

/* Direction dir's algorithm for p, fitting the current workspace less pad_bytes. */
static const AlgoChoice *plan_algo(OpsCtx *ctx, ConvPlan *p, ConvDir dir, size_t pad_bytes)
{
    const AlgoChoice *c = &p->choice[dir];
    /* A grown workspace may admit a faster algorithm, so the choice is remade when it changes. */
    if (!c->chosen || c->chosen_for != ctx->workspace_bytes)
        plan_choose(ctx, p, dir, ctx->workspace_bytes - pad_bytes);
    return c;
}

/* ---- context ------------------------------------------------------------------------------------ */

int cuda__conv_ctx_init(OpsCtx *ctx, Err *err)
{
    size_t runtime = cudnnGetVersion();
    if (runtime / 10000 != CUDNN_MAJOR)
        return err_set(err, "cuda backend: built against cuDNN %d but cuDNN %zu.%zu is loaded",
                       CUDNN_MAJOR, runtime / 10000, runtime / 100 % 100);
    ctx->conv_plans = (ConvPlan *)calloc(CONV_PLAN_CAP, sizeof *ctx->conv_plans);
    if (!ctx->conv_plans) return err_set(err, "cuda backend: out of host memory");
    cudnnStatus_t st = cudnnCreate(&ctx->cudnn);
    if (st != CUDNN_STATUS_SUCCESS) {
        ctx->cudnn = NULL;
        (void)cudaGetLastError();
        return err_set(err, "cuda backend: cannot create a cuDNN handle: %s",
                       cudnnGetErrorString(st));
    }
    CUDNN_CHECK(cudnnSetStream(ctx->cudnn, ctx->stream));
    return 0;
}

void cuda__conv_ctx_free(OpsCtx *ctx)
{
    for (int i = 0; ctx->conv_plans && i < ctx->conv_plan_count; i++) {
        ConvPlan *p = &ctx->conv_plans[i];
        CUDNN_CHECK(cudnnDestroyTensorDescriptor(p->x));
        CUDNN_CHECK(cudnnDestroyTensorDescriptor(p->y));
        CUDNN_CHECK(cudnnDestroyFilterDescriptor(p->w));
        CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(p->conv));
    }
    free(ctx->conv_plans);
    ctx->conv_plans = NULL;
    ctx->conv_plan_count = 0;
    if (ctx->cudnn) CUDNN_CHECK(cudnnDestroy(ctx->cudnn));
    ctx->cudnn = NULL;
}

/* ctx->tf32 changed: every cached plan takes the new math type, and since cuDNN ranks algorithms
 * and sizes their workspaces per math type, every direction chooses again on its next call. */
void cuda__conv_math_changed(OpsCtx *ctx)
{
    for (int i = 0; ctx->conv_plans && i < ctx->conv_plan_count; i++) {
        ConvPlan *p = &ctx->conv_plans[i];
        CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, conv_math(ctx)));
        memset(p->choice, 0, sizeof p->choice);
    }
}

/* ctx->prec changed: every cached plan's descriptors take the new type (plan_set also drops the
 * algorithm choices, which cuDNN ranks per type). */
void cuda__conv_precision_changed(OpsCtx *ctx)
{
    for (int i = 0; ctx->conv_plans && i < ctx->conv_plan_count; i++) {
        ConvPlan *p = &ctx->conv_plans[i];
        const ConvShape key = p->key;
        plan_set(ctx, p, &key);
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

/* The zero-extended input copy (whose region backward reuses for the extended input's gradient),
 * plus room for cuDNN's own workspace in any direction: the im2col matrix of the whole batch, what
 * the explicit-GEMM algorithms need and more than the implicit-GEMM ones ask for, plus a copy of
 * the output and of the weights, which covers an algorithm that transposes dy or dw out of NHWC
 * internally in backward (for a 1x1 convolution the im2col matrix is the size of the input, which
 * covers transposing x). The model reserves the maximum over its convolutions and every
 * convolution may then use all of it: plan_choose only requires the algorithm to fit what is
 * actually reserved. */
size_t cuda__conv2d_workspace_bytes(const ConvShape *s)
{
    size_t cols = (size_t)s->n * s->oh * s->ow * s->kh * s->kw * s->cin * sizeof(float);
    size_t out = (size_t)s->n * s->oh * s->ow * s->cout * sizeof(float);
    size_t weights = (size_t)s->cout * s->kh * s->kw * s->cin * sizeof(float);
    return conv_pad_bytes(s) + align256(cols) + align256(out) + align256(weights);
}

/* The weights cuDNN reads for the fp32 weights w of shape s: w itself in fp32, else the same
 * offset in cast_params's copy. */
static const void *conv_weights(const OpsCtx *ctx, const float *w, const ConvShape *s)
{
    if (ctx->prec == PREC_FP32) return w;
    const size_t count = (size_t)s->cout * s->kh * s->kw * s->cin;
    const uintptr_t at = (uintptr_t)w, base = (uintptr_t)ctx->param_base;
    const size_t off = (at - base) / sizeof(float);
    if (!ctx->param_copy || at < base || (at - base) % sizeof(float) ||
        off > ctx->param_count || count > ctx->param_count - off) {
        fprintf(stderr,
                "%s:%d: conv2d under %s: the weights (%zu values at %p) are not inside the "
                "parameter block given to cast_params (%zu values at %p)\n",
                __FILE__, __LINE__, precision_name(ctx->prec), count, (const void *)w, ctx->param_count,
                (const void *)ctx->param_base);
        exit(EXIT_FAILURE);
    }
    return (const char *)ctx->param_copy + off * 2; /* fp16 and bf16 are 2 bytes */
}

/* Writes the zero-extended copy of in into ws and returns it. */
template <typename T>
static const T *conv_pad_input(OpsCtx *ctx, T *ws, const T *in, const ConvPlan *p)
{
    const ConvShape *s = &p->key;
    size_t total = (size_t)s->n * (s->h + p->eh) * (s->w + p->ew) * s->cin;
    conv_pad_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        ws, in, s->n, s->h, s->w, s->cin, p->eh, p->ew);
    CUDA_CHECK(cudaGetLastError());
    return ws;
}

template <typename T>
static void conv2d_forward_t(OpsCtx *ctx, float *out_f, const float *in_f, const float *w,
                             const float *b, const ConvShape *s)
{
    size_t pad_bytes = conv_pad_bytes(s);
    ASSERT(ctx->workspace_bytes >= pad_bytes);
    ConvPlan *p = plan_get(ctx, s);
    const AlgoChoice *fwd = plan_algo(ctx, p, CONV_FWD, pad_bytes);
    const void *wdev = conv_weights(ctx, w, s);

    T *out = cuda__as<T>(out_f);
    const T *x = cuda__as<T>(in_f);
    char *ws = (char *)ctx->workspace;
    if (pad_bytes) {
        x = conv_pad_input(ctx, (T *)ws, x, p);
        ws += pad_bytes;
    }
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(ctx->cudnn, &one, p->x, x, p->w, wdev, p->conv,
                                        (cudnnConvolutionFwdAlgo_t)fwd->algo,
                                        fwd->bytes ? ws : NULL, fwd->bytes, &zero, p->y, out));
    if (b) {
        size_t count = (size_t)s->n * s->oh * s->ow * s->cout;
        conv_bias_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(out, b, count,
                                                                                 s->cout);
        CUDA_CHECK(cudaGetLastError());
    }
}

void cuda__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                          const ConvShape *s)
{
    ASSERT(s->cin > 0 && s->kh > 0 && s->kw > 0 && s->stride > 0);
    if (!s->n || !s->oh || !s->ow || !s->cout) return;
    CUDA_ACT_DISPATCH(ctx, conv2d_forward_t, ctx, out, in, w, b, s);
    CUDA_OP_END(ctx);
}

template <typename T>
static void conv2d_backward_t(OpsCtx *ctx, float *dx_f, float *dw, float *db, const float *dy_f,
                              const float *x_f, const float *w, const ConvShape *s)
{
    const size_t pad_bytes = conv_pad_bytes(s);
    ASSERT(ctx->workspace_bytes >= pad_bytes);
    const float one = 1.0f, zero = 0.0f;
    T *dx = cuda__as<T>(dx_f);
    const T *dy = cuda__as<T>(dy_f), *x = cuda__as<T>(x_f);
    /* The extended input (filter) and then its gradient (data) share the region at the start of
     * the workspace; cuDNN's scratch follows it. */
    T *ext = (T *)ctx->workspace;
    char *ws = (char *)ctx->workspace + pad_bytes;

    if (db) {
        const int cout = s->cout;
        cuda__colsum(ctx, db, 1, (size_t)s->n * s->oh * s->ow, cout,
                     [=] __device__(size_t r, int ch) { return cuda__ld(dy, r * cout + ch); });
    }
    if (dw || dx) {
        ConvPlan *p = plan_get(ctx, s);
        if (dw) {
            const AlgoChoice *bf = plan_algo(ctx, p, CONV_BWD_FILTER, pad_bytes);
            const T *xin = pad_bytes ? conv_pad_input(ctx, ext, x, p) : x;
            if (ctx->prec == PREC_FP32) {
                CUDNN_CHECK(cudnnConvolutionBackwardFilter(
                    ctx->cudnn, &one, p->x, xin, p->y, dy, p->conv,
                    (cudnnConvolutionBwdFilterAlgo_t)bf->algo, bf->bytes ? ws : NULL, bf->bytes,
                    &one, p->w, dw));
            } else {
                /* The filter gradient in T (see the file comment), then added into fp32 dw. */
                const size_t count = (size_t)s->cout * s->kh * s->kw * s->cin;
                (void)conv_weights(ctx, w, s); /* dw mirrors w: count fits in dw_scratch */
                ASSERT(ctx->dw_scratch != NULL && count <= ctx->param_count);
                CUDNN_CHECK(cudnnConvolutionBackwardFilter(
                    ctx->cudnn, &one, p->x, xin, p->y, dy, p->conv,
                    (cudnnConvolutionBwdFilterAlgo_t)bf->algo, bf->bytes ? ws : NULL, bf->bytes,
                    &zero, p->w, ctx->dw_scratch));
                conv_dw_add_kernel<T><<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(
                    dw, (const T *)ctx->dw_scratch, count);
                CUDA_CHECK(cudaGetLastError());
            }
        }
        if (dx) {
            const AlgoChoice *bd = plan_algo(ctx, p, CONV_BWD_DATA, pad_bytes);
            const void *wdev = conv_weights(ctx, w, s);
            /* Symmetric: accumulate into dx directly (beta = 1). Asymmetric: the extended input's
             * gradient overwrites the region (beta = 0), then its window is added into dx. */
            CUDNN_CHECK(cudnnConvolutionBackwardData(
                ctx->cudnn, &one, p->w, wdev, p->y, dy, p->conv,
                (cudnnConvolutionBwdDataAlgo_t)bd->algo, bd->bytes ? ws : NULL, bd->bytes,
                pad_bytes ? &zero : &one, p->x, pad_bytes ? (void *)ext : (void *)dx));
            if (pad_bytes) {
                size_t total = (size_t)s->n * s->h * s->w * s->cin;
                if (total) {
                    conv_add_window_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
                        dx, ext, s->n, s->h, s->w, s->cin, p->eh, p->ew);
                    CUDA_CHECK(cudaGetLastError());
                }
            }
        }
    }
}

void cuda__conv2d_backward(OpsCtx *ctx, float *dx, float *dw, float *db, const float *dy,
                           const float *x, const float *w, const ConvShape *s)
{
    ASSERT(s->cin > 0 && s->kh > 0 && s->kw > 0 && s->stride > 0);
    /* An empty output sends no gradient anywhere: every += adds nothing. */
    if (!s->n || !s->oh || !s->ow || !s->cout) return;
    CUDA_ACT_DISPATCH(ctx, conv2d_backward_t, ctx, dx, dw, db, dy, x, w, s);
    CUDA_OP_END(ctx);
}
