/* depthwise.cu: depthwise convolution forward and backward, NHWC, weights (KH, KW, C), any kernel
 * size and stride, TF SAME padding (pad_top/pad_left from the ConvShape; asymmetric padding needs
 * nothing special here, since windows simply skip the cells outside the input). Activations (in,
 * out, dy, dx) are of the context's storage type T, read and written through cuda__ld/cuda__st;
 * the weights and dw are fp32 in every precision (kernels/ops.h), and so is the math.
 *
 * Forward: one thread computes one output value; consecutive threads take consecutive channels of
 * the same output pixel, so each warp reads contiguous runs of both the input pixel and the weight
 * row (coalesced), and neighbouring pixels' overlapping windows hit in L1/L2. The sum runs over ky,
 * then kx, starting from zero, exactly as the CPU reference (kernels/cpu/conv.c) does, so the two
 * differ only by fused multiply-adds.
 *
 * Backward, deterministic and without atomics, as the CPU:
 * - dx is a gather: one thread owns one input value and adds, onto its old value, dy * w of every
 *   output whose window covers it, ky outer and kx inner as cpu__dwconv2d_backward's loops.
 * - dw (KH, KW, C) is one column sum (reduce.cuh) over the N*OH*OW output pixels with KH*KW*C
 *   columns, column j = tap * C + ch being dw's own index: each term is dy * x at that tap, 0 where
 *   the tap falls in the padding. The CPU sums each row's taps in float and the rows in double; the
 *   column sum's fixed tree of float partials stays within the parity tolerance. */
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/reduce.cuh"

/* ---- kernels ------------------------------------------------------------------------------------ */

template <typename T>
__global__ void dwconv2d_forward_kernel(T *out, const T *__restrict__ in,
                                        const float *__restrict__ w, ConvShape s)
{
    const int c = s.cin;
    const size_t total = (size_t)s.n * s.oh * s.ow * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex o = cuda__nhwc(i, s.oh, s.ow, c);
        const T *img = in + o.n * s.h * s.w * c + o.c;
        float acc = 0.0f;
        cuda__window(o.y, o.x, s.h, s.w, s.kh, s.kw, s.stride, s.pad_top, s.pad_left,
                     [&](int iy, int ix, int tap) {
                         acc += cuda__ld(img, ((size_t)iy * s.w + ix) * c) *
                                w[(size_t)tap * c + o.c];
                     });
        cuda__st(out, i, acc);
    }
}

/* The output index whose window puts tap t on input index i (i = o * stride - pad + t), or -1:
 * the CPU's conv_out_index. */
__device__ __forceinline__ int dw_out_index(int i, int t, int pad, int stride, int out)
{
    int p = i + pad - t;
    if (p < 0 || p % stride) return -1;
    p /= stride;
    return p < out ? p : -1;
}

/* dx (N, H, W, C) += the gradient through the depthwise convolution, one input value per thread. */
template <typename T>
__global__ void dwconv2d_backward_data_kernel(T *dx, const T *__restrict__ dy,
                                              const float *__restrict__ w, ConvShape s)
{
    const int c = s.cin;
    const size_t total = (size_t)s.n * s.h * s.w * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex p = cuda__nhwc(i, s.h, s.w, c);
        const T *g = dy + p.n * s.oh * s.ow * c + p.c;
        float acc = cuda__ld(dx, i);
        for (int ky = 0; ky < s.kh; ky++) {
            const int oy = dw_out_index(p.y, ky, s.pad_top, s.stride, s.oh);
            if (oy < 0) continue;
            for (int kx = 0; kx < s.kw; kx++) {
                const int ox = dw_out_index(p.x, kx, s.pad_left, s.stride, s.ow);
                if (ox < 0) continue;
                acc += cuda__ld(g, ((size_t)oy * s.ow + ox) * c) *
                       w[(size_t)(ky * s.kw + kx) * c + p.c];
            }
        }
        cuda__st(dx, i, acc);
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

template <typename T>
static void dwconv2d_forward_t(OpsCtx *ctx, float *out, const float *in, const float *w,
                               const ConvShape *s, size_t total)
{
    dwconv2d_forward_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
        cuda__as<T>(out), cuda__as<T>(in), w, *s);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                            const ConvShape *s)
{
    ASSERT(s->cout == s->cin && s->stride > 0);
    size_t total = (size_t)s->n * s->oh * s->ow * s->cin;
    if (!total) return;
    CUDA_ACT_DISPATCH(ctx, dwconv2d_forward_t, ctx, out, in, w, s, total);
    CUDA_OP_END(ctx);
}

template <typename T>
static void dwconv2d_backward_t(OpsCtx *ctx, float *dx_f, float *dw, const float *dy_f,
                                const float *x_f, const float *w, const ConvShape *s)
{
    T *dx = cuda__as<T>(dx_f);
    const T *dy = cuda__as<T>(dy_f), *x = cuda__as<T>(x_f);
    if (dx) {
        size_t total = (size_t)s->n * s->h * s->w * s->cin;
        dwconv2d_backward_data_kernel<T><<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(
            dx, dy, w, *s);
        CUDA_CHECK(cudaGetLastError());
    }
    if (dw) {
        const ConvShape sh = *s;
        const int c = sh.cin;
        cuda__colsum(ctx, dw, 1, (size_t)sh.n * sh.oh * sh.ow, sh.kh * sh.kw * c,
                     [=] __device__(size_t r, int j) {
                         const int tap = j / c, ch = j - tap * c;
                         const int ky = tap / sh.kw, kx = tap - ky * sh.kw;
                         const int ox = (int)(r % sh.ow);
                         const size_t rest = r / sh.ow;
                         const int oy = (int)(rest % sh.oh);
                         const size_t n = rest / sh.oh;
                         const int iy = oy * sh.stride - sh.pad_top + ky;
                         const int ix = ox * sh.stride - sh.pad_left + kx;
                         if (iy < 0 || iy >= sh.h || ix < 0 || ix >= sh.w) return 0.0f;
                         return cuda__ld(dy, r * c + ch) *
                                cuda__ld(x, ((n * sh.h + iy) * sh.w + ix) * c + ch);
                     });
    }
}

void cuda__dwconv2d_backward(OpsCtx *ctx, float *dx, float *dw, const float *dy, const float *x,
                             const float *w, const ConvShape *s)
{
    ASSERT(s->cout == s->cin && s->stride > 0);
    /* An empty output sends no gradient anywhere: every += adds nothing. */
    if (!s->n || !s->oh || !s->ow || !s->cin) return;
    CUDA_ACT_DISPATCH(ctx, dwconv2d_backward_t, ctx, dx, dw, dy, x, w, s);
    CUDA_OP_END(ctx);
}
