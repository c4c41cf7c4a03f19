/* backward.c: the backward pass: the tape recorded at plan time (layers.c), walked in reverse,
 * one backward op per forward op. Activation gradients live in a gradient arena with the same
 * offsets as the activations; every backward op accumulates (kernels/ops.h), so tensors read by
 * several ops (BiFPN nodes, residual inputs, the heads' inputs at every level) sum their
 * gradients without special cases. The network input (activation 0) gets no gradient.
 * A frozen BN layer (BnP.frozen) ran as in inference, so its gradient goes through its running
 * statistics and its gamma and beta get none (the trainer does not update them). */
#include <string.h>

#include "shared/check.h"
#include "worker/model/layers.h"
#include "worker/model/profile.h"

float *model_grad(const Model *m, Act4 a)
{
    ASSERT(m->grad_arena && a.id >= 0 && a.id < m->n_acts);
    return (float *)(m->grad_arena + m->act_offset[a.id]);
}

static const float *act_ptr(const Model *m, Act4 a)
{
    return (const float *)(m->arena + m->act_offset[a.id]);
}

/* The input's gradient, or NULL for the network input. */
static float *dx_of(const Model *m, Act4 a) { return a.id == 0 ? NULL : model_grad(m, a); }

void model_zero_grads(Model *m)
{
    ASSERT(m->train);
    m->ops->mem_zero(m->ctx, m->grad_arena, m->arena_bytes);
    m->ops->mem_zero(m->ctx, m->grads, m->table.n_params * sizeof(float));
}

static void conv_backward(Model *m, const TapeOp *op)
{
    const ConvP *c = op->layer;
    Act4 x = op->in[0];
    ConvShape s;
    conv_shape_same(&s, x.n, x.h, x.w, x.c, c->cout, c->k, c->stride);
    const float *w = m->params + c->w;
    if (op->kind == TAPE_DWCONV) {
        m->ops->dwconv2d_backward(m->ctx, dx_of(m, x), m->grads + c->w, model_grad(m, op->out),
                                  act_ptr(m, x), w, &s);
        return;
    }
    m->ops->conv2d_backward(m->ctx, dx_of(m, x), m->grads + c->w,
                            c->b == NO_PARAM ? NULL : m->grads + c->b, model_grad(m, op->out),
                            act_ptr(m, x), w, &s);
}

static void se_backward(Model *m, const TapeOp *op)
{
    const SeP *se = op->layer;
    Act4 x = op->in[0];
    m->ops->se_backward(m->ctx, dx_of(m, x), m->grads + se->w_r, m->grads + se->b_r,
                        m->grads + se->w_e, m->grads + se->b_e, model_grad(m, op->out),
                        act_ptr(m, x), act_ptr(m, op->saved[0]), act_ptr(m, op->saved[1]),
                        act_ptr(m, op->saved[2]), m->params + se->w_r, m->params + se->b_r,
                        m->params + se->w_e, x.n, x.h * x.w, x.c, se->cr);
}

static void fuse_backward(Model *m, const TapeOp *op)
{
    float *dins[4] = {0};
    const float *ins[4] = {0};
    for (int i = 0; i < op->n_in; i++) dins[i] = dx_of(m, op->in[i]), ins[i] = act_ptr(m, op->in[i]);
    int weighted = op->edge != NO_PARAM;
    m->ops->fuse_backward(m->ctx, dins, weighted ? m->grads + op->edge : NULL,
                          model_grad(m, op->out), ins, weighted ? m->params + op->edge : NULL,
                          op->n_in, act_count(op->out));
}

static void op_backward(Model *m, const TapeOp *op)
{
    const Ops *o = m->ops;
    Act4 x = op->in[0];
    const float *dy = model_grad(m, op->out);
    int pr = profile_op_begin(m->prof);
    switch (op->kind) {
    case TAPE_CONV:
    case TAPE_DWCONV: conv_backward(m, op); break;
    case TAPE_BN: {
        const BnP *bn = op->layer;
        if (bn->frozen) { /* inference-mode BN (layers.c fwd_bn): dx through the running stats */
            o->bn_infer_backward(m->ctx, dx_of(m, x), NULL, NULL, dy, act_ptr(m, x),
                                 m->params + bn->gamma, m->params + bn->beta,
                                 m->buffers + bn->mean, m->buffers + bn->var, m->cfg.bn_eps,
                                 op->act, (size_t)x.n * x.h * x.w, x.c);
            break;
        }
        o->bn_train_backward(m->ctx, dx_of(m, x), m->grads + bn->gamma, m->grads + bn->beta, dy,
                             act_ptr(m, x), m->params + bn->gamma, m->params + bn->beta,
                             act_ptr(m, op->saved[0]), act_ptr(m, op->saved[1]), op->act,
                             (size_t)x.n * x.h * x.w, x.c);
        break;
    }
    case TAPE_ACT: o->act_backward(m->ctx, dx_of(m, x), dy, act_ptr(m, x), op->act, act_count(x)); break;
    case TAPE_SE: se_backward(m, op); break;
    case TAPE_ADD:
        for (int i = 0; i < 2; i++)
            if (dx_of(m, op->in[i])) o->accumulate(m->ctx, model_grad(m, op->in[i]), dy, act_count(x));
        break;
    case TAPE_POOL: {
        PoolShape s;
        pool_shape_same(&s, x.n, x.h, x.w, x.c, 3, 2);
        o->maxpool_backward(m->ctx, dx_of(m, x), dy, act_ptr(m, x), &s);
        break;
    }
    case TAPE_UPSAMPLE:
        o->upsample_nearest_backward(m->ctx, dx_of(m, x), dy, x.n, x.h, x.w, x.c, op->out.h, op->out.w);
        break;
    case TAPE_FUSE: fuse_backward(m, op); break;
    }
    profile_op_end(m->prof, pr, op, 1);
}

void model_backward(Model *m)
{
    ASSERT(m->train && m->tape);
    for (int i = m->n_tape - 1; i >= 0; i--) op_backward(m, &m->tape[i]);
}
