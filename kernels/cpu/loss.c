/* loss.c: the detection_loss op on the CPU: effdet's focal loss ("new" focal loss, loss.py
 * `new_focal_loss`, legacy_focal=False) and Huber box loss for one pyramid level, with their
 * gradients, as kernels/ops.h documents.
 *
 * Per anchor row with class target t (0..C-1 positive channel, -1 background, -2 ignore) and per
 * class channel c with onehot z = (c == t), logit x, p = sigmoid(x):
 *   p_t = z ? p : 1 - p,   alpha_t = z ? alpha : 1 - alpha,   q = 1 - p_t,   m = q^gamma
 *   z_s = z (1 - ls) + ls / 2            (label smoothing enters the cross entropy only)
 *   ce  = BCE_with_logits(x, z_s) = (1 - z_s) x + max(-x, 0) + log1p(exp(-|x|))
 *   focal = alpha_t m ce,  summed over every (anchor, channel) whose anchor is not ignored.
 * Its exact derivative, with dq/dx = (z ? -1 : 1) p (1 - p) and dm/dq = gamma q^(gamma - 1):
 *   d focal / dx = alpha_t (dm/dq dq/dx ce + m (p - z_s)).
 * Box: per component with target t != 0 (effdet masks exact zeros), e = box - t,
 *   huber(e) = 0.5 min(|e|, d)^2 + d (|e| - min(|e|, d)),  d huber / de = clamp(e, -d, d).
 * loss[0] += sum focal / norm, loss[1] += sum huber / (4 norm);
 * dcls = d focal / dx / norm (0 for ignored anchors), dbox = box_weight * clamp(e, -d, d) / (4 norm)
 * (0 for masked components), both =, so the caller's total = loss[0] + box_weight * loss[1] has exactly these
 * gradients.
 *
 * The per-element terms are float32, in effdet's order of operations (q = 1 - p_t is rounded as
 * effdet rounds it, so q is exactly 0 where effdet's is). A level holds up to 26M logits (P3 of D0
 * at 512, batch 8), so the loop over a row's channels is branch-free and call-free and vectorizes:
 * exp is cpu__expf (2 ulp) and log the loss_logf below (1 ulp), instead of libm calls (8x faster
 * measured). The sums go through cpu__reduce (reduce.c): double, a fixed split of the rows and a
 * fixed order of combination, so the result is bit-identical for any number of OpenMP threads. */
#include "kernels/cpu/cpu_internal.h"

#include <string.h>

#include "shared/check.h"

/* The class target that ops.h documents as "-2 ignore" (worker/labeler.h LABEL_IGNORE). */
enum { TARGET_IGNORE = -2 };

typedef struct FocalParams {
    float alpha, gamma, label_smoothing, inv_norm; /* inv_norm: loss_scale / norm, the gradients' factor */
    int classes;
} FocalParams;

/* Channels per vectorized pass of focal_block. */
enum { FOCAL_BLOCK = 128 };

/* Natural log of a normal finite x > 0 (focal_block only passes q in [~3e-8, 1] and 1 + e in
 * [1, 2]), without calls or branches so that loops over it vectorize. The classic fdlibm scheme:
 * x = 2^k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), s = f / (2 + f), z = s^2,
 * log(1 + f) = f - f^2/2 + s (f^2/2 + R), R = Lg1 z + Lg2 z^2 + Lg3 z^3 + Lg4 z^4 (minimax);
 * relative error below 1e-7 (measured against double over [1e-6, 10]). */
static inline float loss_logf(float x)
{
    int32_t ix;
    memcpy(&ix, &x, sizeof ix);
    ix += 0x3f800000 - 0x3f3504f3; /* moves the mantissa split from 1 to sqrt(1/2) */
    const int32_t k = (ix >> 23) - 0x7f;
    ix = (ix & 0x007fffff) + 0x3f3504f3;
    float m;
    memcpy(&m, &ix, sizeof m);
    const float f = m - 1.0f, s = f / (2.0f + f), z = s * s, w = z * z;
    const float r = z * (0.66666662693f + w * 0.28498786688f) +
                    w * (0.40000972152f + w * 0.24279078841f);
    const float hfsq = 0.5f * f * f, dk = (float)k;
    /* ln 2 split into a part exact in float times k and the rest. */
    return s * (hfsq + r) + dk * 9.0580006145e-06f - hfsq + f + dk * 6.9313812256e-01f;
}

/* Focal terms (unnormalized) of n logits into term and their gradients divided by norm into dx;
 * channel `target` (may be outside [0, n)) is the positive one. Branch-free per element (selects
 * only) and over restrict pointers, so the loop vectorizes. */
static void focal_block(float *restrict term, float *restrict dx, const float *restrict x, int n,
                        int target, const FocalParams *fp)
{
    const float ls = fp->label_smoothing, gamma = fp->gamma, alpha = fp->alpha;
    const float inv_norm = fp->inv_norm;
    /* m and dm/dq where q == 0: 0^gamma is 1 for gamma == 0 and 0 above; its derivative is 1 for
     * gamma == 1 and 0 for gamma > 1 (gamma < 1 has no finite one there; 0 keeps training finite). */
    const float m_at_0 = gamma == 0.0f ? 1.0f : 0.0f, dm_at_0 = gamma == 1.0f ? 1.0f : 0.0f;
    for (int i = 0; i < n; i++) {
        const int z = i == target;
        const float xc = x[i];
        /* Sigmoid and softplus share e = exp(-|x|), which never overflows. */
        const float e = cpu__expf(-fabsf(xc)), r = 1.0f / (1.0f + e);
        const float p = xc >= 0.0f ? r : e * r;
        /* effdet's float32 order: p_t, then q = 1 - p_t, so q is exactly 0 where p_t rounds to
         * 1, as in effdet. */
        const float p_t = z ? p : 1.0f - p;
        const float alpha_t = z ? alpha : 1.0f - alpha;
        const float q = 1.0f - p_t;
        const float m = q > 0.0f ? cpu__expf(gamma * loss_logf(q)) : m_at_0;
        const float zs = ls > 0.0f ? (float)z * (1.0f - ls) + 0.5f * ls : (float)z;
        /* log1p(e) = log(u) e / (u - 1) with u = 1 + e rounded (exact up to rounding), and e
         * itself where u rounds to 1. */
        const float u = 1.0f + e;
        const float log1p_e = u == 1.0f ? e : loss_logf(u) * (e / (u - 1.0f));
        /* max(-x, 0) as a select: fmaxf's NaN rules make it a call that stops vectorization. */
        const float ce = (1.0f - zs) * xc + (xc < 0.0f ? -xc : 0.0f) + log1p_e;
        term[i] = alpha_t * m * ce;
        const float dm_dq = q > 0.0f ? gamma * m / q : dm_at_0;
        const float dq_dx = (z ? -1.0f : 1.0f) * p * (1.0f - p);
        dx[i] = inv_norm * alpha_t * (dm_dq * dq_dx * ce + m * (p - zs));
    }
}

/* Focal loss of one anchor's C logits (unnormalized sum, in double, in channel order) and, when
 * dx is non-NULL, its gradient divided by norm. The terms wait in a stack buffer because an
 * in-order double sum inside the loop would keep it scalar. */
static double focal_anchor(float *dx, const float *x, int32_t target, const FocalParams *fp)
{
    float term[FOCAL_BLOCK], unused_dx[FOCAL_BLOCK];
    double sum = 0.0;
    for (int c0 = 0; c0 < fp->classes; c0 += FOCAL_BLOCK) {
        const int n = fp->classes - c0 < FOCAL_BLOCK ? fp->classes - c0 : FOCAL_BLOCK;
        focal_block(term, dx ? dx + c0 : unused_dx, x + c0, n, target - c0, fp);
        for (int i = 0; i < n; i++) sum += term[i];
    }
    return sum;
}

/* Huber loss of one anchor's 4 box outputs (unnormalized sum) and, when db is non-NULL, its
 * gradient times grad_scale. */
static double huber_anchor(float *db, const float *box, const float *target, float delta,
                           float grad_scale)
{
    double sum = 0.0;
    for (int k = 0; k < 4; k++) {
        if (target[k] == 0.0f) {
            if (db) db[k] = 0.0f;
            continue;
        }
        const float e = box[k] - target[k], ae = fabsf(e);
        const float quad = fminf(ae, delta);
        sum += (double)(0.5f * quad * quad + delta * (ae - quad));
        if (db) db[k] = grad_scale * (ae <= delta ? e : copysignf(delta, e));
    }
    return sum;
}

/* Everything one range of rows needs, for cpu__reduce. */
typedef struct LossArgs {
    float *dcls, *dbox;
    const float *cls, *box, *box_target;
    const int32_t *cls_target;
    size_t A, C;
    FocalParams fp;
    float delta, box_grad_scale;
} LossArgs;

/* Rows [begin, end): acc[0] += focal sums, acc[1] += Huber sums, gradients written. */
static void loss_rows(double *acc, size_t begin, size_t end, const void *arg)
{
    const LossArgs *la = arg;
    const size_t A = la->A, C = la->C;
    for (size_t a = begin * A; a < end * A; a++) {
        const int32_t t = la->cls_target[a];
        ASSERT(t >= TARGET_IGNORE && t < la->fp.classes);
        float *dx = la->dcls ? la->dcls + a * C : NULL;
        if (t == TARGET_IGNORE) {
            if (dx) memset(dx, 0, C * sizeof(float));
        } else {
            acc[0] += focal_anchor(dx, la->cls + a * C, t, &la->fp);
        }
        acc[1] += huber_anchor(la->dbox ? la->dbox + a * 4 : NULL, la->box + a * 4,
                               la->box_target + a * 4, la->delta, la->box_grad_scale);
    }
}

void cpu__detection_loss(OpsCtx *ctx, float *loss, float *dcls, float *dbox, const float *cls,
                         const float *box, const int32_t *cls_target, const float *box_target,
                         size_t rows, int anchors, int classes, float norm, float alpha,
                         float gamma, float delta, float box_weight, float label_smoothing,
                         float loss_scale)
{
    /* loss_scale is a power of two (or 1), so scaling the gradients' factors is exact. */
    const LossArgs la = {
        .dcls = dcls, .dbox = dbox, .cls = cls, .box = box, .box_target = box_target,
        .cls_target = cls_target, .A = (size_t)anchors, .C = (size_t)classes,
        .fp = {alpha, gamma, label_smoothing, loss_scale / norm, classes},
        .delta = delta, .box_grad_scale = loss_scale * box_weight / (4.0f * norm),
    };
    double sums[2];
    cpu__reduce(sums, 2, rows, loss_rows, &la);
    loss[0] += (float)(sums[0] / norm);
    loss[1] += (float)(sums[1] / (4.0 * norm));
}
