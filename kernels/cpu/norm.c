/* norm.c: CPU batch norm (inference and training) and activations, forward and backward, over
 * NHWC rows of C channels.
 *
 * Train-mode batch norm and the backward passes work channel tile by channel tile (BN_TILE
 * channels), so that a tile's per-channel sums fit the deterministic reduction of reduce.c and its
 * coefficients fit on the stack whatever the channel count. A train-mode layer first computes the
 * sums of all its channels (on the stack: ops never allocate, and a NULL context must work), so
 * that with data-parallel sync (Ops.set_bn_sync) one allreduce per pass carries the whole layer;
 * without sync the arithmetic is the same, tile by tile. Every pass computes the
 * pre-activation the same way, pre = x * scale + shift with scale = gamma * invstd and
 * shift = beta - mean * scale (PyTorch's folded form), so the backward recomputes exactly what the
 * forward activated. */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

enum { BN_MAX_CHANNELS = 8192, BN_TILE = 64 };

/* out (rows, ld) = act(in * scale + shift) over ct channels of each row (ct <= ld). One loop per
 * activation keeps the inner loop branch-free, so it vectorizes. */
static void bn_apply(float *out, const float *in, const float *scale, const float *shift, Act act,
                     size_t rows, int ld, int ct)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        const float *x = in + r * ld;
        float *y = out + r * ld;
        if (act == ACT_SILU) {
#pragma omp simd
            for (int ch = 0; ch < ct; ch++) y[ch] = cpu__silu(x[ch] * scale[ch] + shift[ch]);
        } else if (act == ACT_SIGMOID) {
#pragma omp simd
            for (int ch = 0; ch < ct; ch++) y[ch] = cpu__sigmoid(x[ch] * scale[ch] + shift[ch]);
        } else {
#pragma omp simd
            for (int ch = 0; ch < ct; ch++) y[ch] = x[ch] * scale[ch] + shift[ch];
        }
    }
}

void cpu__bn_infer_forward(OpsCtx *ctx, float *out, const float *in, const float *gamma,
                           const float *beta, const float *mean, const float *var, float eps,
                           Act act, size_t rows, int c)
{
    /* Folded once per call into scale and shift, as PyTorch's CPU inference path does:
     * out = in * (gamma / sqrt(var + eps)) + (beta - mean * gamma / sqrt(var + eps)). */
    float scale[BN_MAX_CHANNELS], shift[BN_MAX_CHANNELS];
    ASSERT(c <= BN_MAX_CHANNELS);
    for (int ch = 0; ch < c; ch++) {
        float invstd = 1.0f / sqrtf(var[ch] + eps);
        scale[ch] = gamma[ch] * invstd;
        shift[ch] = beta[ch] - mean[ch] * scale[ch];
    }
    bn_apply(out, in, scale, shift, act, rows, c, c);
}

/* One channel tile [c0, c0 + ct) of a batch norm: views of x and dy that start at c0 (row stride
 * c) and the tile's per-channel statistics and coefficients. */
typedef struct BnTile {
    const float *x, *dy;
    int c, ct;
    Act act;
    double mean_d[BN_TILE]; /* batch mean in double, for the variance pass */
    float mean[BN_TILE], invstd[BN_TILE], scale[BN_TILE], shift[BN_TILE];
} BnTile;

static BnTile bn_tile(const float *x, const float *dy, int c0, int c, Act act)
{
    BnTile t = {.x = x + c0, .dy = dy ? dy + c0 : NULL, .c = c, .act = act};
    t.ct = c - c0 < BN_TILE ? c - c0 : BN_TILE;
    return t;
}

/* Fills scale and shift of a tile whose mean and invstd are set. */
static void bn_tile_fold(BnTile *t, const float *gamma, const float *beta)
{
    for (int j = 0; j < t->ct; j++) {
        t->scale[j] = gamma[j] * t->invstd[j];
        t->shift[j] = beta[j] - t->mean[j] * t->scale[j];
    }
}

/* Sum of squared deviations from the double mean, per channel of the tile. */
static void bn_sqdev_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const BnTile *t = arg;
    for (size_t r = begin; r < end; r++) {
        const float *x = t->x + r * t->c;
        for (int j = 0; j < t->ct; j++) {
            double d = x[j] - t->mean_d[j];
            acc[j] += d * d;
        }
    }
}

void cpu__set_bn_sync(OpsCtx *ctx, const BnSync *sync)
{
    ASSERT(!sync || (sync->allreduce && sync->world >= 1));
    ctx->has_bn_sync = sync != NULL;
    if (sync) ctx->bn_sync = *sync;
}

/* Ranks whose rows enter a train-mode BN layer's statistics. */
static int bn_world(const OpsCtx *ctx) { return ctx && ctx->has_bn_sync ? ctx->bn_sync.world : 1; }

/* Sums v over the ranks when batch norm is synchronized. A failed allreduce is not handled here:
 * its callback keeps the error and the caller (the trainer) fails the step, whose statistics are
 * then discarded along with everything else the step computed. */
static void bn_sync_sum(OpsCtx *ctx, double *v, size_t n)
{
    if (ctx && ctx->has_bn_sync) (void)ctx->bn_sync.allreduce(ctx->bn_sync.arg, v, n);
}

/* sum (c) = per-channel sums of in (rows, c), tile by tile. */
static void bn_column_sums(double *sum, const float *in, size_t rows, int c)
{
    for (int c0 = 0; c0 < c; c0 += BN_TILE)
        cpu__column_dots(sum + c0, in + c0, NULL, rows, c, c - c0 < BN_TILE ? c - c0 : BN_TILE);
}

/* sqdev (c) = per-channel sums of (x - mean_d)^2 over in (rows, c), tile by tile. */
static void bn_column_sqdevs(double *sqdev, const double *mean_d, const float *in, size_t rows,
                             int c)
{
    for (int c0 = 0; c0 < c; c0 += BN_TILE) {
        BnTile t = bn_tile(in, NULL, c0, c, ACT_NONE);
        memcpy(t.mean_d, mean_d + c0, (size_t)t.ct * sizeof(double));
        cpu__reduce(sqdev + c0, t.ct, rows, bn_sqdev_chunk, &t);
    }
}

void cpu__bn_train_forward(OpsCtx *ctx, float *out, float *save_mean, float *save_invstd,
                           float *running_mean, float *running_var, const float *in,
                           const float *gamma, const float *beta, float eps, float momentum,
                           Act act, size_t rows, int c)
{
    ASSERT(rows >= 2); /* PyTorch refuses one value per channel in training too */
    ASSERT(c <= BN_MAX_CHANNELS);
    /* Every channel's sums first, so that a synchronized layer sums them over the ranks in one
     * call per pass. Two passes (mean, then squared deviations around the global mean) rather
     * than E[x^2] - mean^2, which cancels badly when |mean| >> std. */
    double mean_d[BN_MAX_CHANNELS], sqdev[BN_MAX_CHANNELS];
    const double total = (double)rows * bn_world(ctx);
    bn_column_sums(mean_d, in, rows, c);
    bn_sync_sum(ctx, mean_d, (size_t)c);
    for (int ch = 0; ch < c; ch++) mean_d[ch] /= total;
    bn_column_sqdevs(sqdev, mean_d, in, rows, c);
    bn_sync_sum(ctx, sqdev, (size_t)c);
    for (int c0 = 0; c0 < c; c0 += BN_TILE) {
        BnTile t = bn_tile(in, NULL, c0, c, act);
        for (int j = 0; j < t.ct; j++) {
            int ch = c0 + j;
            t.mean[j] = (float)mean_d[ch];
            t.invstd[j] = (float)(1.0 / sqrt(sqdev[ch] / total + eps));
            save_mean[ch] = t.mean[j];
            save_invstd[ch] = t.invstd[j];
            /* PyTorch's update, in its order: r = momentum * batch + (1 - momentum) * r. */
            if (running_mean)
                running_mean[ch] = momentum * t.mean[j] + (1.0f - momentum) * running_mean[ch];
            if (running_var) {
                float unbiased = (float)(sqdev[ch] / (total - 1.0));
                running_var[ch] = momentum * unbiased + (1.0f - momentum) * running_var[ch];
            }
        }
        bn_tile_fold(&t, gamma + c0, beta + c0);
        bn_apply(out + c0, t.x, t.scale, t.shift, act, rows, c, t.ct);
    }
}

/* dz = dy * act'(pre) over one row of a tile: the gradient at the pre-activation. */
static void bn_row_dz(float *dz, const float *x, const float *dy, const BnTile *t)
{
    if (t->act == ACT_NONE) {
        for (int j = 0; j < t->ct; j++) dz[j] = dy[j];
        return;
    }
    for (int j = 0; j < t->ct; j++)
        dz[j] = dy[j] * cpu__act_grad(x[j] * t->scale[j] + t->shift[j], t->act);
}

/* acc[j] += dz, acc[ct + j] += dz * xhat with xhat = (x - mean) * invstd: the sums that give
 * dbeta and dgamma. */
static void bn_grad_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const BnTile *t = arg;
    float dz[BN_TILE];
    for (size_t r = begin; r < end; r++) {
        const float *x = t->x + r * t->c;
        bn_row_dz(dz, x, t->dy + r * t->c, t);
        for (int j = 0; j < t->ct; j++) {
            float xhat = (x[j] - t->mean[j]) * t->invstd[j];
            acc[j] += dz[j];
            acc[t->ct + j] += (double)dz[j] * xhat;
        }
    }
}

/* Reduces a tile's dbeta (sum_dz) and dgamma (sum_dzx) sums and adds them to the non-NULL
 * outputs. */
static void bn_tile_param_grads(double *sum_dz, double *sum_dzx, float *dgamma, float *dbeta,
                                const BnTile *t, size_t rows)
{
    double acc[2 * BN_TILE];
    cpu__reduce(acc, 2 * t->ct, rows, bn_grad_chunk, t);
    for (int j = 0; j < t->ct; j++) {
        sum_dz[j] = acc[j];
        sum_dzx[j] = acc[t->ct + j];
        if (dbeta) dbeta[j] += (float)sum_dz[j];
        if (dgamma) dgamma[j] += (float)sum_dzx[j];
    }
}

/* dx (rows, c) += g * (dz - ka - xhat * kb) over a tile's channels (dx starts at the tile). */
static void bn_tile_dx(float *dx, const BnTile *t, const float *g, const float *ka,
                       const float *kb, size_t rows)
{
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) {
        float dz[BN_TILE];
        const float *x = t->x + r * t->c;
        float *d = dx + r * t->c;
        bn_row_dz(dz, x, t->dy + r * t->c, t);
        for (int j = 0; j < t->ct; j++) {
            float xhat = (x[j] - t->mean[j]) * t->invstd[j];
            d[j] += g[j] * (dz[j] - ka[j] - xhat * kb[j]);
        }
    }
}

/* A tile of a train-mode layer with its saved statistics, folded. */
static BnTile bn_saved_tile(const float *in, const float *dy, int c0, int c, Act act,
                            const float *save_mean, const float *save_invstd, const float *gamma,
                            const float *beta)
{
    BnTile t = bn_tile(in, dy, c0, c, act);
    for (int j = 0; j < t.ct; j++) {
        t.mean[j] = save_mean[c0 + j];
        t.invstd[j] = save_invstd[c0 + j];
    }
    bn_tile_fold(&t, gamma + c0, beta + c0);
    return t;
}

void cpu__bn_train_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *in, const float *gamma, const float *beta,
                            const float *save_mean, const float *save_invstd, Act act,
                            size_t rows, int c)
{
    /* Through the batch statistics: with dz the gradient at the pre-activation,
     * dx = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)), the means over the whole
     * (global) batch. Every channel's sums first, so that a synchronized layer sums them over the
     * ranks in one call; dgamma and dbeta take this rank's own sums. */
    ASSERT(c <= BN_MAX_CHANNELS);
    double sums[2 * BN_MAX_CHANNELS]; /* sum_dz (c), then sum_dzx (c) */
    for (int c0 = 0; c0 < c; c0 += BN_TILE) {
        BnTile t = bn_saved_tile(in, dy, c0, c, act, save_mean, save_invstd, gamma, beta);
        bn_tile_param_grads(sums + c0, sums + c + c0, dgamma ? dgamma + c0 : NULL,
                            dbeta ? dbeta + c0 : NULL, &t, rows);
    }
    /* dx NULL is a property of the model (the same on every rank), so skipping the sum here
     * keeps the ranks' sequences of collectives equal. */
    if (!dx) return;
    bn_sync_sum(ctx, sums, 2 * (size_t)c);
    const double total = (double)rows * bn_world(ctx);
    for (int c0 = 0; c0 < c; c0 += BN_TILE) {
        BnTile t = bn_saved_tile(in, dy, c0, c, act, save_mean, save_invstd, gamma, beta);
        float g[BN_TILE], ka[BN_TILE], kb[BN_TILE];
        for (int j = 0; j < t.ct; j++) {
            g[j] = gamma[c0 + j] * t.invstd[j];
            ka[j] = (float)(sums[c0 + j] / total);
            kb[j] = (float)(sums[c + c0 + j] / total);
        }
        bn_tile_dx(dx + c0, &t, g, ka, kb, rows);
    }
}

void cpu__bn_infer_backward(OpsCtx *ctx, float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *in, const float *gamma, const float *beta,
                            const float *mean, const float *var, float eps, Act act, size_t rows,
                            int c)
{
    /* Frozen statistics are constants: dx = dz * scale, and the parameter sums are those of the
     * train-mode backward. */
    for (int c0 = 0; c0 < c; c0 += BN_TILE) {
        BnTile t = bn_tile(in, dy, c0, c, act);
        for (int j = 0; j < t.ct; j++) {
            t.mean[j] = mean[c0 + j];
            t.invstd[j] = 1.0f / sqrtf(var[c0 + j] + eps); /* as bn_infer_forward */
        }
        bn_tile_fold(&t, gamma + c0, beta + c0);
        if (dgamma || dbeta) {
            double sum_dz[BN_TILE], sum_dzx[BN_TILE];
            bn_tile_param_grads(sum_dz, sum_dzx, dgamma ? dgamma + c0 : NULL,
                                dbeta ? dbeta + c0 : NULL, &t, rows);
        }
        if (!dx) continue;
        float zero[BN_TILE] = {0};
        bn_tile_dx(dx + c0, &t, t.scale, zero, zero, rows);
    }
}

void cpu__act_forward(OpsCtx *ctx, float *out, const float *in, Act act, size_t count)
{
    if (act == ACT_SILU) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = cpu__silu(in[i]);
    } else if (act == ACT_SIGMOID) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = cpu__sigmoid(in[i]);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < count; i++) out[i] = in[i];
    }
}

void cpu__act_backward(OpsCtx *ctx, float *dx, const float *dy, const float *x, Act act,
                       size_t count)
{
    if (act == ACT_NONE) {
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < count; i++) dx[i] += dy[i];
    } else {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < count; i++) dx[i] += dy[i] * cpu__act_grad(x[i], act);
    }
}
