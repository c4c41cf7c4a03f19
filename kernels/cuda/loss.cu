/* loss.cu: the detection_loss op on the GPU: effdet's focal loss (legacy_focal=False) and Huber box
 * loss for one pyramid level with their gradients, as kernels/ops.h documents and
 * kernels/cpu/loss.c computes them.
 *
 * Per anchor a with class target t = cls_target[a] (0..C-1 the positive channel, -1 background,
 * -2 ignore) and per channel c with one-hot z = (c == t): the focal term and its gradient come from
 * focal_term below, which is the CPU's focal_block written for one element, expression for
 * expression and in the same float32 order (p_t, then q = 1 - p_t, m = exp(gamma log q),
 * log1p(e) as log(u) e / (u - 1), ...), so the two differ only by the GPU's fused multiply-adds and
 * its expf/logf (within 2 ulp) instead of the CPU's polynomials. No one-hot tensor exists: each
 * element compares its channel with its anchor's target. Ignored anchors add no focal term and get
 * a zero gradient. The Huber term covers every anchor, ignored ones included, exactly as the CPU:
 * only components whose target is exactly 0 are masked (effdet's rule).
 *
 * Sums: loss[0] += sum focal / norm and loss[1] += sum huber / (4 norm) go through cuda__sum
 * (reduce.cuh) with accumulate = 1, so they are deterministic and no atomics touch the loss. Each
 * term is divided before it is summed, since the sum lands directly in loss; the CPU divides its
 * double sum at the end instead, which differs by rounding only. The gradients dcls = d focal / dx
 * / norm and dbox = box_weight * clamp(e, -delta, delta) / (4 norm) are written (=, not +=) by
 * elementwise kernels that recompute the same terms, which costs less than storing them.
 *
 * Mixed precision: cls, box, dcls and dbox are of the context's storage type T (cuda_common.cuh);
 * the targets, the losses and all the math are float. The gradients are multiplied by loss_scale
 * (fp16 loss scaling) before they are rounded to T, so small gradients survive the rounding; the
 * losses are not scaled. */
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/reduce.cuh"

/* The class target that ops.h documents as "-2 ignore" (worker/labeler.h LABEL_IGNORE). */
enum { TARGET_IGNORE = -2 };

/* Everything focal_term needs besides the logit, computed once on the host as the CPU does. */
typedef struct FocalParams {
    float alpha, gamma, ls, inv_norm;
    float m_at_0, dm_at_0; /* m and dm/dq where q == 0 (see cuda__detection_loss) */
} FocalParams;

/* ---- kernels ------------------------------------------------------------------------------------ */

/* The focal term (unnormalized) of logit xc with one-hot z, and in *dx its gradient divided by
 * norm: the body of the CPU's focal_block. */
__device__ __forceinline__ float focal_term(float xc, int z, const FocalParams &fp, float *dx)
{
    const float ls = fp.ls, gamma = fp.gamma, alpha = fp.alpha;
    /* Sigmoid and softplus share e = exp(-|x|), which never overflows. */
    const float e = expf(-fabsf(xc)), r = 1.0f / (1.0f + e);
    const float p = xc >= 0.0f ? r : e * r;
    /* effdet's float32 order: p_t, then q = 1 - p_t, so q is exactly 0 where p_t rounds to 1. */
    const float p_t = z ? p : 1.0f - p;
    const float alpha_t = z ? alpha : 1.0f - alpha;
    const float q = 1.0f - p_t;
    const float m = q > 0.0f ? expf(gamma * logf(q)) : fp.m_at_0;
    const float zs = ls > 0.0f ? (float)z * (1.0f - ls) + 0.5f * ls : (float)z;
    /* log1p(e) = log(u) e / (u - 1) with u = 1 + e rounded, and e itself where u rounds to 1. */
    const float u = 1.0f + e;
    const float log1p_e = u == 1.0f ? e : logf(u) * (e / (u - 1.0f));
    const float ce = (1.0f - zs) * xc + (xc < 0.0f ? -xc : 0.0f) + log1p_e;
    const float dm_dq = q > 0.0f ? gamma * m / q : fp.dm_at_0;
    const float dq_dx = (z ? -1.0f : 1.0f) * p * (1.0f - p);
    *dx = fp.inv_norm * alpha_t * (dm_dq * dq_dx * ce + m * (p - zs));
    return alpha_t * m * ce;
}

/* The Huber term (unnormalized) of box output b against target t, and in *db its gradient times
 * grad_scale; both 0 where t == 0 (masked). The CPU's huber_anchor for one component. */
__device__ __forceinline__ float huber_term(float b, float t, float delta, float grad_scale,
                                            float *db)
{
    if (t == 0.0f) {
        *db = 0.0f;
        return 0.0f;
    }
    const float e = b - t, ae = fabsf(e);
    const float quad = fminf(ae, delta);
    *db = grad_scale * (ae <= delta ? e : copysignf(delta, e));
    return 0.5f * quad * quad + delta * (ae - quad);
}

/* dcls (anchors, C) = loss_scale * d focal / d logit / norm; 0 for the channels of ignored
 * anchors. */
template <typename T>
__global__ void focal_grad_kernel(T *dcls, const T *cls, const int32_t *cls_target, size_t count,
                                  int classes, FocalParams fp, float loss_scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t a = i / classes;
        const int32_t t = cls_target[a];
        float dx = 0.0f;
        if (t != TARGET_IGNORE)
            (void)focal_term(cuda__ld(cls, i), (int)(i - a * classes) == t, fp, &dx);
        cuda__st(dcls, i, dx * loss_scale);
    }
}

/* dbox (anchors, 4) = grad_scale * clamp(box - target, -delta, delta); 0 where masked. The
 * caller folds loss_scale into grad_scale. */
template <typename T>
__global__ void huber_grad_kernel(T *dbox, const T *box, const float *box_target, size_t count,
                                  float delta, float grad_scale)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count;
         i += (size_t)gridDim.x * blockDim.x) {
        float db;
        (void)huber_term(cuda__ld(box, i), box_target[i], delta, grad_scale, &db);
        cuda__st(dbox, i, db);
    }
}

/* ---- launchers ---------------------------------------------------------------------------------- */

/* The sums and gradient kernels of one level for storage type T; see cuda__detection_loss. */
template <typename T>
static void detection_loss_t(OpsCtx *ctx, float *loss, float *dcls_f, float *dbox_f,
                             const float *cls_f, const float *box_f, const int32_t *cls_target,
                             const float *box_target, size_t n_anchors, int classes, float norm,
                             const FocalParams &fp, float delta, float box_weight,
                             float loss_scale)
{
    const T *cls = cuda__as<T>(cls_f), *box = cuda__as<T>(box_f);
    const float box_grad_scale = box_weight / (4.0f * norm);
    const float box_norm = 4.0f * norm;

    const size_t n_cls = n_anchors * (size_t)classes, n_box = n_anchors * 4;
    if (n_cls) {
        cuda__sum(ctx, loss + 0, 1, n_cls, [=] __device__(size_t i) {
            const size_t a = i / classes;
            const int32_t t = cls_target[a];
            if (t == TARGET_IGNORE) return 0.0f;
            float unused;
            return focal_term(cuda__ld(cls, i), (int)(i - a * classes) == t, fp, &unused) / norm;
        });
        if (dcls_f) {
            focal_grad_kernel<T><<<cuda__blocks(n_cls), CUDA_BLOCK, 0, ctx->stream>>>(
                cuda__as<T>(dcls_f), cls, cls_target, n_cls, classes, fp, loss_scale);
            CUDA_CHECK(cudaGetLastError());
        }
    }
    cuda__sum(ctx, loss + 1, 1, n_box, [=] __device__(size_t i) {
        float unused;
        return huber_term(cuda__ld(box, i), box_target[i], delta, box_grad_scale, &unused) /
               box_norm;
    });
    if (dbox_f) {
        /* box_grad_scale * 1 is box_grad_scale: without loss scaling nothing changes. */
        huber_grad_kernel<T><<<cuda__blocks(n_box), CUDA_BLOCK, 0, ctx->stream>>>(
            cuda__as<T>(dbox_f), box, box_target, n_box, delta, box_grad_scale * loss_scale);
        CUDA_CHECK(cudaGetLastError());
    }
}

void cuda__detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                          const float *box, const int32_t *cls_target, const float *box_target,
                          size_t rows, int anchors, int classes, float norm, float alpha,
                          float gamma, float delta, float box_weight, float label_smoothing,
                          float loss_scale)
{
    const size_t n_anchors = rows * (size_t)anchors;
    if (!n_anchors) return;
    /* Class targets are checked where they are made (the labeler; the CPU also asserts them
     * here): a value past -2..C-1 would act as background on the GPU. */
    FocalParams fp;
    fp.alpha = alpha;
    fp.gamma = gamma;
    fp.ls = label_smoothing;
    fp.inv_norm = 1.0f / norm;
    /* 0^gamma is 1 for gamma == 0 and 0 above; its derivative is 1 for gamma == 1 and 0 for
     * gamma > 1 (gamma < 1 has no finite one there; 0 keeps training finite), as the CPU. */
    fp.m_at_0 = gamma == 0.0f ? 1.0f : 0.0f;
    fp.dm_at_0 = gamma == 1.0f ? 1.0f : 0.0f;
    CUDA_ACT_DISPATCH(ctx, detection_loss_t, ctx, loss, dcls, dbox, cls, box, cls_target,
                      box_target, n_anchors, classes, norm, fp, delta, box_weight, loss_scale);
    CUDA_OP_END(ctx);
}
