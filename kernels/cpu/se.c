/* se.c: CPU squeeze-excitation (see se_forward in kernels/ops.h). The two 1x1 convolutions act on
 * one pooled vector per image, so they are small matrix-vector products written as loops. */
#include "kernels/cpu/cpu_internal.h"

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
