/* profile.c: the per-op profile (profile.h): timer marks around every op, the least traffic of
 * each op from its tape description, and the per-kind summary as a table or JSON. */
#include "worker/model/profile.h"

#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

enum { SLOT_STEP_BEGIN = 0, SLOT_STEP_END = 1, SLOT_FIRST_OP = 2 };

int profile_init(ModelProfile *p, const Model *m, Err *err)
{
    memset(p, 0, sizeof *p);
    if (!m->arena) return err_set(err, "profile: %s is not planned", m->cfg.name);
    if (!m->ops->timer_reserve || !m->ops->timer_mark || !m->ops->timer_elapsed_ms)
        return err_set(err, "profile: the %s backend has no timers", m->ops->name);
    /* A training plan's tape holds every forward op, and backward runs one op per tape entry; an
     * inference plan has no tape, but each forward op takes at least one new activation. */
    int cap = m->train ? 2 * m->n_tape : m->n_acts;
    if (cap < 1 || cap > (1 << 28)) return err_set(err, "profile: %d ops to time", cap);
    p->rec = malloc((size_t)cap * sizeof *p->rec);
    if (!p->rec) return err_set(err, "profile: out of memory for %d ops", cap);
    if (m->ops->timer_reserve(m->ctx, SLOT_FIRST_OP + 2 * cap, err) != 0) {
        profile_free(p);
        return err_wrap(err, "profile of %s: ", m->cfg.name);
    }
    p->ops = m->ops, p->ctx = m->ctx;
    p->act_bytes = m->precision == PREC_FP32 ? 4 : 2; /* fp16 and bf16 are 2 bytes */
    p->batch = m->batch;
    p->cap = cap;
    return 0;
}

void profile_free(ModelProfile *p)
{
    free(p->rec);
    p->rec = NULL;
    p->cap = p->n = 0;
}

void profile_reset(ModelProfile *p)
{
    p->n = 0;
    p->overflow = 0;
    p->step_marks = 0;
}

void profile_step_begin(ModelProfile *p)
{
    p->ops->timer_mark(p->ctx, SLOT_STEP_BEGIN);
    p->step_marks |= 1;
}

void profile_step_end(ModelProfile *p)
{
    p->ops->timer_mark(p->ctx, SLOT_STEP_END);
    p->step_marks |= 2;
}

int profile_op_begin(ModelProfile *p)
{
    if (!p) return -1;
    if (p->n == p->cap) {
        p->overflow = 1;
        return -1;
    }
    int i = p->n++;
    p->ops->timer_mark(p->ctx, SLOT_FIRST_OP + 2 * i);
    return i;
}

void profile_op_end(ModelProfile *p, int rec, const TapeOp *op, int backward)
{
    if (!p || rec < 0) return;
    p->ops->timer_mark(p->ctx, SLOT_FIRST_OP + 2 * rec + 1);
    p->rec[rec] = (ProfRecord){.kind = profile_op_kind(op), .backward = backward,
                               .bytes = profile_op_bytes(op, backward, p->act_bytes)};
}

/* ---- traffic ------------------------------------------------------------------------------------ */

ProfKind profile_op_kind(const TapeOp *op)
{
    switch (op->kind) {
    case TAPE_CONV: return ((const ConvP *)op->layer)->k == 1 ? PROF_CONV1X1 : PROF_CONVKXK;
    case TAPE_DWCONV: return PROF_DWCONV;
    case TAPE_BN: return PROF_BN;
    case TAPE_ACT: return PROF_ACT;
    case TAPE_SE: return PROF_SE;
    case TAPE_ADD: return PROF_ADD;
    case TAPE_POOL: return PROF_POOL;
    case TAPE_UPSAMPLE: return PROF_UPSAMPLE;
    case TAPE_FUSE: return PROF_FUSE;
    }
    ASSERT(!"unknown tape op");
    return PROF_KINDS;
}

const char *profile_kind_name(ProfKind k)
{
    static const char *const names[PROF_KINDS] = {
        "conv 1x1", "conv kxk", "dwconv", "bn", "act", "se", "add", "pool", "upsample", "fuse"};
    ASSERT(k >= 0 && k < PROF_KINDS);
    return names[k];
}

/* Elements of an activation's gradient that a backward op writes: none for the network input
 * (activation 0), which gets no gradient (backward.c dx_of). */
static double grad_count(Act4 a) { return a.id == 0 ? 0.0 : (double)act_count(a); }

/* Elements moved by a convolution: (activation elements, fp32 elements). */
static void conv_traffic(const TapeOp *op, int backward, double *act, double *f32)
{
    const ConvP *c = op->layer;
    double w = c->depthwise ? (double)c->k * c->k * c->cout : (double)c->cout * c->k * c->k * c->cin;
    double b = c->b == NO_PARAM ? 0.0 : c->cout;
    double x = act_count(op->in[0]), y = act_count(op->out);
    if (!backward) {
        *act = x + y;      /* in, out */
        *f32 = w + b;      /* weights, bias */
    } else {
        *act = y + x + grad_count(op->in[0]); /* dy, x, dx */
        *f32 = w + w + b;                      /* w; dw, db */
    }
}

/* BN: gamma, beta, and either the running statistics (read in inference or when frozen; updated
 * in training) or nothing more; training also writes (forward) or reads (backward) the saved
 * mean and invstd, and backward writes dgamma and dbeta. */
static void bn_traffic(const TapeOp *op, int backward, double *act, double *f32)
{
    const BnP *bn = op->layer;
    double c = bn->c, x = act_count(op->in[0]), y = act_count(op->out);
    int batch_stats = act_count(op->saved[0]) > 0 && !bn->frozen;
    if (!backward) {
        *act = x + y;
        *f32 = 4 * c + (batch_stats ? 2 * c : 0); /* gamma, beta, mean, var; save_mean/invstd */
    } else {
        *act = y + x + grad_count(op->in[0]);
        *f32 = batch_stats ? 2 * c + 2 * c + 2 * c  /* gamma, beta; saved; dgamma, dbeta */
                           : 4 * c;                 /* gamma, beta, mean, var */
    }
}

/* SE: w_r (cr, c), b_r, w_e (c, cr), b_e; pooled (n, c), hidden (n, cr), gate (n, c) saved. */
static void se_traffic(const TapeOp *op, int backward, double *act, double *f32)
{
    const SeP *se = op->layer;
    double c = se->c, cr = se->cr, n = op->in[0].n;
    double params = 2 * c * cr + cr + c, saved = n * (2 * c + cr);
    double x = act_count(op->in[0]), y = act_count(op->out);
    if (!backward) {
        *act = x + y;
        *f32 = params + saved;
    } else {
        *act = y + x + grad_count(op->in[0]);
        *f32 = (params - c) + saved + params; /* w_r, b_r, w_e; saved; the four gradients */
    }
}

double profile_op_bytes(const TapeOp *op, int backward, int act_bytes)
{
    double act = 0, f32 = 0, y = act_count(op->out), x = act_count(op->in[0]);
    switch (op->kind) {
    case TAPE_CONV:
    case TAPE_DWCONV: conv_traffic(op, backward, &act, &f32); break;
    case TAPE_BN: bn_traffic(op, backward, &act, &f32); break;
    case TAPE_SE: se_traffic(op, backward, &act, &f32); break;
    case TAPE_ACT:
    case TAPE_POOL: /* forward: in, out; backward: dy, x (activation input / window maxima), dx */
        act = backward ? y + x + grad_count(op->in[0]) : x + y;
        break;
    case TAPE_UPSAMPLE: /* backward needs no input values: dy, dx */
        act = backward ? y + grad_count(op->in[0]) : x + y;
        break;
    case TAPE_ADD:
    case TAPE_FUSE: {
        int weighted = op->kind == TAPE_FUSE && op->edge != NO_PARAM;
        act = y; /* out, or dy */
        for (int i = 0; i < op->n_in; i++) {
            double in = act_count(op->in[i]);
            /* Backward reads the inputs only for the edge weights' gradient. */
            if (!backward) act += in;
            else act += grad_count(op->in[i]) + (weighted ? in : 0);
        }
        f32 = weighted ? (backward ? 2.0 : 1.0) * op->n_in : 0; /* w; dw */
        break;
    }
    }
    return act * act_bytes + f32 * 4;
}

/* ---- summary ------------------------------------------------------------------------------------ */

int profile_summarize(ModelProfile *p, ProfSummary *s, Err *err)
{
    memset(s, 0, sizeof *s);
    if (p->overflow)
        return err_set(err, "profile: the step ran more than the %d ops the profile has room for",
                       p->cap);
    if (p->step_marks != 3) return err_set(err, "profile: the step was not bracketed by its marks");
    ProfRow all[2 * PROF_KINDS] = {{0}};
    for (int i = 0; i < p->n; i++) {
        const ProfRecord *r = &p->rec[i];
        ProfRow *row = &all[r->backward * PROF_KINDS + r->kind];
        double ms = p->ops->timer_elapsed_ms(p->ctx, SLOT_FIRST_OP + 2 * i, SLOT_FIRST_OP + 2 * i + 1);
        row->kind = r->kind, row->backward = r->backward;
        row->ops++;
        row->ms += ms;
        row->bytes += r->bytes;
        *(r->backward ? &s->bwd_ms : &s->fwd_ms) += ms;
        s->bytes += r->bytes;
    }
    for (int i = 0; i < 2 * PROF_KINDS; i++)
        if (all[i].ops) s->rows[s->n_rows++] = all[i];
    s->step_ms = p->ops->timer_elapsed_ms(p->ctx, SLOT_STEP_BEGIN, SLOT_STEP_END);
    s->batch = p->batch;
    return 0;
}

static double pct(const ProfSummary *s, double ms) { return s->step_ms > 0 ? 100.0 * ms / s->step_ms : 0; }
static double mb_per_img(const ProfSummary *s, double bytes) { return bytes / s->batch / 1e6; }
static double gb_per_s(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e-3) / 1e9 : 0; }

static void table_line(FILE *f, const ProfSummary *s, const char *kind, const char *pass, long ops,
                       double ms, double bytes)
{
    fprintf(f, "  %-34s %-8s %6ld %10.3f %6.1f%% %10.2f %9.1f\n", kind, pass, ops, ms, pct(s, ms),
            mb_per_img(s, bytes), gb_per_s(bytes, ms));
}

void profile_print_table(FILE *f, const ProfSummary *s, const char *other)
{
    fprintf(f, "profile of one step (%.3f ms, batch %d): least traffic per image %.2f MB\n",
            s->step_ms, s->batch, mb_per_img(s, s->bytes));
    fprintf(f, "  %-34s %-8s %6s %10s %7s %10s %9s\n", "kind", "pass", "ops", "ms", "step",
            "MB/img", "GB/s");
    double fwd_bytes = 0, bwd_bytes = 0;
    long fwd_ops = 0, bwd_ops = 0;
    for (int i = 0; i < s->n_rows; i++) {
        const ProfRow *r = &s->rows[i];
        table_line(f, s, profile_kind_name(r->kind), r->backward ? "backward" : "forward", r->ops,
                   r->ms, r->bytes);
        *(r->backward ? &bwd_bytes : &fwd_bytes) += r->bytes;
        *(r->backward ? &bwd_ops : &fwd_ops) += r->ops;
    }
    table_line(f, s, "forward total", "forward", fwd_ops, s->fwd_ms, fwd_bytes);
    if (bwd_ops) table_line(f, s, "backward total", "backward", bwd_ops, s->bwd_ms, bwd_bytes);
    table_line(f, s, other, "step", 0, s->step_ms - s->fwd_ms - s->bwd_ms, 0);
    table_line(f, s, "step", "step", fwd_ops + bwd_ops, s->step_ms, s->bytes);
}

static void json_row(FILE *f, const ProfSummary *s, const char *kind, const char *pass, long ops,
                     double ms, double bytes)
{
    fprintf(f, "{\"kind\": \"%s\", \"pass\": \"%s\", \"ops\": %ld, \"ms\": %.4f, \"pct\": %.2f, "
               "\"mb_per_img\": %.4f, \"gb_per_s\": %.2f}",
            kind, pass, ops, ms, pct(s, ms), mb_per_img(s, bytes), gb_per_s(bytes, ms));
}

void profile_print_json(FILE *f, const ProfSummary *s, const char *other)
{
    fprintf(f, "\"profile_step_ms\": %.4f, \"profile_mb_per_img\": %.4f, \"profile\": [",
            s->step_ms, mb_per_img(s, s->bytes));
    for (int i = 0; i < s->n_rows; i++) {
        const ProfRow *r = &s->rows[i];
        json_row(f, s, profile_kind_name(r->kind), r->backward ? "backward" : "forward", r->ops,
                 r->ms, r->bytes);
        fputs(", ", f);
    }
    json_row(f, s, other, "step", 0, s->step_ms - s->fwd_ms - s->bwd_ms, 0);
    fputs("]", f);
}
