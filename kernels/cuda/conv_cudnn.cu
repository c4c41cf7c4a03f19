/* conv_cudnn.cu: regular (groups = 1) convolution forward through cuDNN, fp32, NHWC, TF SAME
 * padding; the only translation unit of the backend that calls cuDNN.
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
 * Algorithms. A plan per shape holds the cuDNN descriptors and the algorithm, in a fixed-capacity
 * cache in the context. The algorithm comes from cuDNN's heuristics (cudnnGetConvolutionForward-
 * Algorithm_v7) rather than from cudnnFind: the heuristics run on the host, need no scratch output
 * and no synchronization, and give the same choice on every run. Among the ranked candidates we
 * take the first whose workspace fits what the context reserved, skipping the FFT and non-fused
 * Winograd algorithms, whose transforms round differently from direct summation by more than the
 * fp32 parity tests accept. The math type is CUDNN_FMA_MATH: on Ampere and later the default would
 * let cuDNN use TF32 tensor cores, which is a precision mode of its own, not fp32.
 *
 * Bias. A small kernel adds it after cuDNN, so the result is (sum) + bias as in the CPU's GEMM onto
 * bias-filled rows. The cuDNN call writes with beta = 0 and never reads the output's old values. */
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

/* Distinct convolution shapes in one model at one (batch, size) are a few dozen; training and
 * evaluation together stay well under this. Past it, slots are reused round robin. */
enum { CONV_PLAN_CAP = 256 };

struct ConvPlan {
    ConvShape key;
    int eh, ew;                    /* zero rows/cols appended at the bottom/right (conv_extra) */
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t algo;
    size_t algo_bytes;             /* cuDNN workspace that algo needs */
    size_t chosen_for;             /* ctx->workspace_bytes when algo was chosen */
    int chosen;
};

/* ---- kernels ------------------------------------------------------------------------------------ */

/* dst (N, H+eh, W+ew, C) = src (N, H, W, C) with zeros in the appended rows and columns. */
__global__ void conv_pad_kernel(float *dst, const float *src, int n, int h, int w, int c, int eh,
                                int ew)
{
    const int pw = w + ew, ph = h + eh;
    const size_t total = (size_t)n * ph * pw * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, ph, pw, c);
        dst[i] = (p.y < h && p.x < w) ? src[((p.n * h + p.y) * w + p.x) * c + p.c] : 0.0f;
    }
}

/* out (M, Cout) += b (Cout), broadcast over the M = N*OH*OW output pixels. */
__global__ void conv_bias_kernel(float *out, const float *b, size_t count, int cout)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] += b[i % cout];
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

/* Workspace bytes taken by the zero-extended copy of the input; 0 when padding is symmetric. */
static size_t conv_pad_bytes(const ConvShape *s)
{
    int eh, ew;
    conv_extra(s, &eh, &ew);
    if (!eh && !ew) return 0;
    return align256((size_t)s->n * (s->h + eh) * (s->w + ew) * s->cin * sizeof(float));
}

/* Points p's descriptors at shape s. Creating a descriptor allocates host memory, which happens
 * once per slot during warm-up; later plans for a reused slot only set the existing ones. */
static void plan_set(ConvPlan *p, const ConvShape *s)
{
    if (!p->x) {
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
        CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w));
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
    }
    p->key = *s;
    p->chosen = 0;
    conv_extra(s, &p->eh, &p->ew);
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->cin,
                                           s->h + p->eh, s->w + p->ew));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, s->cout,
                                           s->cin, s->kh, s->kw));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, s->pad_top, s->pad_left, s->stride,
                                                s->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, CUDNN_FMA_MATH));
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
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->cout,
                                           s->oh, s->ow));
}

static int algo_allowed(cudnnConvolutionFwdAlgo_t a)
{
    return a != CUDNN_CONVOLUTION_FWD_ALGO_FFT && a != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING &&
           a != CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
}

/* Picks the highest-ranked allowed algorithm whose workspace fits in `avail` bytes. */
static void plan_choose(OpsCtx *ctx, ConvPlan *p, size_t avail)
{
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int got = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(ctx->cudnn, p->x, p->w, p->conv, p->y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
                                                       perf));
    for (int i = 0; i < got; i++) {
        size_t bytes = 0;
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !algo_allowed(perf[i].algo)) continue;
        /* The workspace query is authoritative; the heuristic's estimate is not always. */
        if (cudnnGetConvolutionForwardWorkspaceSize(ctx->cudnn, p->x, p->w, p->conv, p->y,
                                                    perf[i].algo, &bytes) != CUDNN_STATUS_SUCCESS ||
            bytes > avail)
            continue;
        p->algo = perf[i].algo;
        p->algo_bytes = bytes;
        p->chosen_for = ctx->workspace_bytes;
        p->chosen = 1;
        return;
    }
    const ConvShape *s = &p->key;
    fprintf(stderr,
            "%s:%d: conv2d: cuDNN offers no fp32 algorithm for in (%d,%d,%d,%d) k %dx%d stride %d "
            "out (%d,%d,%d,%d) within %zu workspace bytes\n",
            __FILE__, __LINE__, s->n, s->h, s->w, s->cin, s->kh, s->kw, s->stride, s->n, s->oh,
            s->ow, s->cout, avail);
    exit(EXIT_FAILURE);
}

/* The plan for shape s, from the cache or made now; its algorithm fits the current workspace. */
static ConvPlan *plan_get(OpsCtx *ctx, const ConvShape *s, size_t pad_bytes)
{
    ConvPlan *p = NULL;
    for (int i = 0; i < ctx->conv_plan_count && !p; i++)
        if (!memcmp(&ctx->conv_plans[i].key, s, sizeof *s)) p = &ctx->conv_plans[i];
    if (!p) {
        int slot = ctx->conv_plan_count;
        if (slot < CONV_PLAN_CAP) {
            ctx->conv_plan_count++;
        } else {
            slot = ctx->conv_plan_next;
            ctx->conv_plan_next = (slot + 1) % CONV_PLAN_CAP;
        }
        p = &ctx->conv_plans[slot];
        plan_set(p, s);
    }
    /* A grown workspace may admit a faster algorithm, so the choice is remade when it changes. */
    if (!p->chosen || p->chosen_for != ctx->workspace_bytes)
        plan_choose(ctx, p, ctx->workspace_bytes - pad_bytes);
    return p;
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

/* ---- launchers ---------------------------------------------------------------------------------- */

/* The zero-extended input copy, plus room for cuDNN: the im2col matrix of the whole batch, what the
 * explicit-GEMM algorithm needs and more than the implicit-GEMM ones ask for (for a 1x1 convolution
 * it is the size of the input, which also covers an algorithm that transposes NHWC internally).
 * The model reserves the maximum over its convolutions and every convolution may then use all of
 * it: plan_choose only requires the algorithm to fit what is actually reserved. */
size_t cuda__conv2d_workspace_bytes(const ConvShape *s)
{
    size_t cols = (size_t)s->n * s->oh * s->ow * s->kh * s->kw * s->cin * sizeof(float);
    return conv_pad_bytes(s) + align256(cols);
}

void cuda__conv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w, const float *b,
                          const ConvShape *s)
{
    ASSERT(s->cin > 0 && s->kh > 0 && s->kw > 0 && s->stride > 0);
    if (!s->n || !s->oh || !s->ow || !s->cout) return;
    size_t pad_bytes = conv_pad_bytes(s);
    ASSERT(ctx->workspace_bytes >= pad_bytes);
    ConvPlan *p = plan_get(ctx, s, pad_bytes);

    const float *x = in;
    char *ws = (char *)ctx->workspace;
    if (pad_bytes) {
        size_t total = (size_t)s->n * (s->h + p->eh) * (s->w + p->ew) * s->cin;
        conv_pad_kernel<<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
            (float *)ws, in, s->n, s->h, s->w, s->cin, p->eh, p->ew);
        CUDA_CHECK(cudaGetLastError());
        x = (const float *)ws;
        ws += pad_bytes;
    }
    const float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(ctx->cudnn, &one, p->x, x, p->w, w, p->conv, p->algo,
                                        p->algo_bytes ? ws : NULL, p->algo_bytes, &zero, p->y,
                                        out));
    if (b) {
        size_t count = (size_t)s->n * s->oh * s->ow * s->cout;
        conv_bias_kernel<<<cuda__blocks(count), CUDA_BLOCK, 0, ctx->stream>>>(out, b, count,
                                                                              s->cout);
        CUDA_CHECK(cudaGetLastError());
    }
    CUDA_OP_END(ctx);
}
