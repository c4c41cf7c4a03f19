/* se.c: CPU squeeze-excitation, forward and backward (see se_forward in kernels/ops.h). The two 1x1
 * convolutions act on one pooled vector per image, so they are small matrix-vector products
 * written as loops. */
#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

void cpu__se_forward(OpsCtx *ctx, float *out, float *pooled, float *hidden, float *gate,
                     const float *x, const float *w_r, const float *b_r, const float *w_e,
                     const float *b_e, int n, int hw, int c, int cr)
{
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * hw * c;
        float *p = pooled + (size_t)b * c;
        for (int ch = 0; ch < c; ch++) p[ch] = 0.0f;
        for (int i = 0; i < hw; i++)
            for (int ch = 0; ch < c; ch++) p[ch] += xb[(size_t)i * c + ch];
        for (int ch = 0; ch < c; ch++) p[ch] /= (float)hw;

        float *h = hidden + (size_t)b * cr;
        for (int r = 0; r < cr; r++) {
            float acc = b_r[r];
            for (int ch = 0; ch < c; ch++) acc += w_r[(size_t)r * c + ch] * p[ch];
            h[r] = cpu__silu(acc);
        }
        float *g = gate + (size_t)b * c;
        for (int ch = 0; ch < c; ch++) {
            float acc = b_e[ch];
            for (int r = 0; r < cr; r++) acc += w_e[(size_t)ch * cr + r] * h[r];
            g[ch] = cpu__sigmoid(acc);
        }
        float *ob = out + (size_t)b * hw * c;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < hw; i++)
            for (int ch = 0; ch < c; ch++) ob[(size_t)i * c + ch] = xb[(size_t)i * c + ch] * g[ch];
    }
}

enum { SE_MAX_CHANNELS = 8192 };

/* Backward, image by image (the small products accumulate into the weight gradients in image
 * order, so the result is deterministic):
 *   dgate = sum_hw dy * x;  da_e = dgate * gate (1 - gate)      -> db_e, dw_e = da_e h^T
 *   dh = w_e^T da_e;        da_r = dh * silu'(a_r)              -> db_r, dw_r = da_r pooled^T
 *   dx = dy * gate + (w_r^T da_r) / HW (the mean's gradient reaches every position). */
void cpu__se_backward(OpsCtx *ctx, float *dx, float *dw_r, float *db_r, float *dw_e, float *db_e,
                      const float *dy, const float *x, const float *pooled, const float *hidden,
                      const float *gate, const float *w_r, const float *b_r, const float *w_e,
                      int n, int hw, int c, int cr)
{
    float da_e[SE_MAX_CHANNELS], dpool[SE_MAX_CHANNELS], da_r[SE_MAX_CHANNELS];
    ASSERT(c <= SE_MAX_CHANNELS && cr <= SE_MAX_CHANNELS);
    for (int b = 0; b < n; b++) {
        const float *xb = x + (size_t)b * hw * c, *dyb = dy + (size_t)b * hw * c;
        const float *p = pooled + (size_t)b * c, *h = hidden + (size_t)b * cr;
        const float *g = gate + (size_t)b * c;
        for (int c0 = 0; c0 < c; c0 += CPU_REDUCE_WIDTH) {
            double dgate[CPU_REDUCE_WIDTH];
            int ct = c - c0 < CPU_REDUCE_WIDTH ? c - c0 : CPU_REDUCE_WIDTH;
            cpu__column_dots(dgate, dyb + c0, xb + c0, (size_t)hw, c, ct);
            for (int j = 0; j < ct; j++)
                da_e[c0 + j] = (float)dgate[j] * g[c0 + j] * (1.0f - g[c0 + j]);
        }
        for (int ch = 0; ch < c; ch++) {
            db_e[ch] += da_e[ch];
            for (int r = 0; r < cr; r++) dw_e[(size_t)ch * cr + r] += da_e[ch] * h[r];
        }
        for (int r = 0; r < cr; r++) {
            float dh = 0.0f, a = b_r[r]; /* a: the pre-SiLU hidden, summed as the forward does */
            for (int ch = 0; ch < c; ch++) {
                dh += w_e[(size_t)ch * cr + r] * da_e[ch];
                a += w_r[(size_t)r * c + ch] * p[ch];
            }
            da_r[r] = dh * cpu__act_grad(a, ACT_SILU);
            db_r[r] += da_r[r];
            for (int ch = 0; ch < c; ch++) dw_r[(size_t)r * c + ch] += da_r[r] * p[ch];
        }
        if (!dx) continue;
        for (int ch = 0; ch < c; ch++) {
            float acc = 0.0f;
            for (int r = 0; r < cr; r++) acc += w_r[(size_t)r * c + ch] * da_r[r];
            dpool[ch] = acc / (float)hw;
        }
        float *dxb = dx + (size_t)b * hw * c;
#pragma omp parallel for schedule(static)
        for (int i = 0; i < hw; i++)
            for (int ch = 0; ch < c; ch++)
                dxb[(size_t)i * c + ch] += dyb[(size_t)i * c + ch] * g[ch] + dpool[ch];
    }
}
