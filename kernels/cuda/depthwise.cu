/* depthwise.cu: depthwise convolution forward, fp32, NHWC, weights (KH, KW, C), any kernel size and
 * stride, TF SAME padding (pad_top/pad_left from the ConvShape; asymmetric padding needs nothing
 * special here, since windows simply skip the cells outside the input).
 *
 * One thread computes one output value; consecutive threads take consecutive channels of the same
 * output pixel, so each warp reads contiguous runs of both the input pixel and the weight row
 * (coalesced), and neighbouring pixels' overlapping windows hit in L1/L2. The sum runs over ky, then
 * kx, starting from zero, exactly as the CPU reference (kernels/cpu/conv.c) does, so the two differ
 * only by fused multiply-adds. */
#include "kernels/cuda/cuda_common.cuh"

/* ---- kernels ------------------------------------------------------------------------------------ */

__global__ void dwconv2d_forward_kernel(float *out, const float *__restrict__ in,
                                        const float *__restrict__ w, ConvShape s)
{
    const int c = s.cin;
    const size_t total = (size_t)s.n * s.oh * s.ow * c;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const NhwcIndex o = cuda__nhwc(i, s.oh, s.ow, c);
        const float *img = in + o.n * s.h * s.w * c + o.c;
        float acc = 0.0f;
        cuda__window(o.y, o.x, s.h, s.w, s.kh, s.kw, s.stride, s.pad_top, s.pad_left,
                     [&](int iy, int ix, int tap) {
                         acc += img[((size_t)iy * s.w + ix) * c] * w[(size_t)tap * c + o.c];
                     });
        out[i] = acc;
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

void cuda__dwconv2d_forward(OpsCtx *ctx, float *out, const float *in, const float *w,
                            const ConvShape *s)
{
    ASSERT(s->cout == s->cin && s->stride > 0);
    size_t total = (size_t)s->n * s->oh * s->ow * s->cin;
    if (!total) return;
    dwconv2d_forward_kernel<<<cuda__blocks(total), CUDA_BLOCK, 0, ctx->stream>>>(out, in, w, *s);
    CUDA_CHECK(cudaGetLastError());
    CUDA_OP_END(ctx);
}
