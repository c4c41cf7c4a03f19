/* layers.c: parameter declarations with effdet's names, and forward helpers over the op table
 * (see layers.h for the dry-run planning scheme). */
#include "worker/model/layers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "worker/model/profile.h"

Act4 fwd_take(Fwd *f, int n, int h, int w, int c)
{
    Act4 a = {NULL, n, h, w, c, f->step};
    if (f->dry) {
        if (f->step == f->cap) {
            f->cap = f->cap ? 2 * f->cap : 1024;
            f->bytes = realloc(f->bytes, (size_t)f->cap * sizeof *f->bytes);
            f->first = realloc(f->first, (size_t)f->cap * sizeof *f->first);
            f->last = realloc(f->last, (size_t)f->cap * sizeof *f->last);
            ASSERT(f->bytes && f->first && f->last);
        }
        f->bytes[f->step] = ((size_t)n * h * w * c * sizeof(float) + 255) / 256 * 256;
        f->first[f->step] = f->last[f->step] = f->step;
    } else {
        a.p = (float *)(f->arena + f->offset[f->step]);
    }
    f->step++;
    return a;
}

void fwd_record(Fwd *f, const TapeOp *op)
{
    if (!f->dry || !f->train) return;
    if (f->n_tape == f->tape_cap) {
        f->tape_cap = f->tape_cap ? 2 * f->tape_cap : 1024;
        f->tape = realloc(f->tape, (size_t)f->tape_cap * sizeof *f->tape);
        ASSERT(f->tape);
    }
    f->tape[f->n_tape++] = *op;
}

void fwd_use(Fwd *f, Act4 x)
{
    /* The op reading x is issued after the takes of its outputs, so x's life reaches the
     * newest activation and the two never share memory. */
    if (f->dry && f->last[x.id] < f->step - 1) f->last[x.id] = f->step - 1;
}

ConvP layer_conv(Model *m, const char *prefix, int cin, int cout, int k, int stride, int bias)
{
    ConvP c = {.cin = cin, .cout = cout, .k = k, .stride = stride, .depthwise = 0, .b = NO_PARAM};
    int64_t ws[4] = {cout, cin, k, k}, bs[1] = {cout};
    c.w = param_table_add(&m->table, PARAM_CONV_WEIGHT, k == 1 ? LAYOUT_SAME : LAYOUT_OIHW, 4, ws,
                          "%s.weight", prefix);
    if (bias) c.b = param_table_add(&m->table, PARAM_BIAS, LAYOUT_SAME, 1, bs, "%s.bias", prefix);
    return c;
}

ConvP layer_dwconv(Model *m, const char *prefix, int ch, int k, int stride)
{
    ConvP c = {.cin = ch, .cout = ch, .k = k, .stride = stride, .depthwise = 1, .b = NO_PARAM};
    int64_t ws[4] = {ch, 1, k, k};
    c.w = param_table_add(&m->table, PARAM_CONV_WEIGHT, LAYOUT_DW, 4, ws, "%s.weight", prefix);
    return c;
}

BnP layer_bn(Model *m, const char *prefix, int ch)
{
    int64_t s[1] = {ch};
    /* timm's backbone keeps PyTorch's momentum 0.1; effdet builds BiFPN and heads with 0.01. */
    BnP bn = {.c = ch, .momentum = strncmp(prefix, "backbone.", 9) ? 0.01f : 0.1f};
    bn.gamma = param_table_add(&m->table, PARAM_BN_WEIGHT, LAYOUT_SAME, 1, s, "%s.weight", prefix);
    bn.beta = param_table_add(&m->table, PARAM_BN_BIAS, LAYOUT_SAME, 1, s, "%s.bias", prefix);
    bn.mean = param_table_add(&m->table, PARAM_BN_MEAN, LAYOUT_SAME, 1, s, "%s.running_mean", prefix);
    bn.var = param_table_add(&m->table, PARAM_BN_VAR, LAYOUT_SAME, 1, s, "%s.running_var", prefix);
    m->table.n_bn_layers++;
    return bn;
}

SepConvP layer_sepconv(Model *m, const char *prefix, int cin, int cout, int bias, int has_bn)
{
    char name[128];
    SepConvP s = {.has_bn = has_bn};
    snprintf(name, sizeof name, "%s.conv_dw", prefix);
    s.dw = layer_dwconv(m, name, cin, 3, 1);
    snprintf(name, sizeof name, "%s.conv_pw", prefix);
    s.pw = layer_conv(m, name, cin, cout, 1, 1, bias);
    if (has_bn) {
        snprintf(name, sizeof name, "%s.bn", prefix);
        s.bn = layer_bn(m, name, cout);
    }
    return s;
}

Act4 fwd_conv(Fwd *f, const ConvP *c, Act4 x)
{
    ConvShape s;
    ASSERT(x.c == c->cin);
    conv_shape_same(&s, x.n, x.h, x.w, x.c, c->cout, c->k, c->stride);
    Act4 y = fwd_take(f, x.n, s.oh, s.ow, c->cout);
    fwd_use(f, x);
    if (f->dry && !c->depthwise) {
        size_t ws = f->ops->conv2d_workspace_bytes(&s);
        if (ws > f->workspace) f->workspace = ws;
    }
    TapeOp op = {.kind = c->depthwise ? TAPE_DWCONV : TAPE_CONV, .out = y, .in = {x}, .n_in = 1,
                 .layer = c};
    fwd_record(f, &op);
    if (f->dry) return y;
    const float *w = f->params + c->w, *b = c->b == NO_PARAM ? NULL : f->params + c->b;
    int pr = profile_op_begin(f->prof);
    if (c->depthwise)
        f->ops->dwconv2d_forward(f->ctx, y.p, x.p, w, &s);
    else
        f->ops->conv2d_forward(f->ctx, y.p, x.p, w, b, &s);
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

Act4 fwd_bn(Fwd *f, const BnP *bn, Act act, Act4 x)
{
    ASSERT(x.c == bn->c);
    Act4 y = fwd_take(f, x.n, x.h, x.w, x.c);
    size_t rows = (size_t)x.n * x.h * x.w;
    /* A training plan takes the saved batch statistics of every BN layer, frozen or not, so that
     * freezing (BnP.frozen, set by the trainer once the plan exists) never changes the plan; a
     * frozen layer leaves them unused and runs as in inference (model_backward checks the same
     * flag). */
    TapeOp op = {.kind = TAPE_BN, .out = y, .in = {x}, .n_in = 1, .layer = bn, .act = act};
    if (f->train) {
        Act4 mean = fwd_take(f, 1, 1, 1, x.c), invstd = fwd_take(f, 1, 1, 1, x.c);
        fwd_use(f, x), fwd_use(f, y), fwd_use(f, mean), fwd_use(f, invstd);
        op.saved[0] = mean, op.saved[1] = invstd;
        fwd_record(f, &op);
    } else {
        fwd_use(f, x);
    }
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    if (f->train && !bn->frozen)
        f->ops->bn_train_forward(f->ctx, y.p, op.saved[0].p, op.saved[1].p, f->buffers + bn->mean,
                                 f->buffers + bn->var, x.p, f->params + bn->gamma,
                                 f->params + bn->beta, f->eps,
                                 f->bn_momentum > 0 ? f->bn_momentum : bn->momentum, act, rows, x.c);
    else
        f->ops->bn_infer_forward(f->ctx, y.p, x.p, f->params + bn->gamma, f->params + bn->beta,
                                 f->buffers + bn->mean, f->buffers + bn->var, f->eps, act,
                                 rows, x.c);
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

Act4 fwd_act(Fwd *f, Act act, Act4 x)
{
    Act4 y = fwd_take(f, x.n, x.h, x.w, x.c);
    fwd_use(f, x);
    TapeOp op = {.kind = TAPE_ACT, .out = y, .in = {x}, .n_in = 1, .act = act};
    fwd_record(f, &op);
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    f->ops->act_forward(f->ctx, y.p, x.p, act, act_count(x));
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

Act4 fwd_sepconv(Fwd *f, const SepConvP *s, Act act, Act4 x)
{
    Act4 y = fwd_conv(f, &s->pw, fwd_conv(f, &s->dw, x));
    if (s->has_bn) return fwd_bn(f, &s->bn, act, y);
    return act == ACT_NONE ? y : fwd_act(f, act, y);
}

Act4 fwd_maxpool_same(Fwd *f, Act4 x, int oh, int ow)
{
    PoolShape s;
    pool_shape_same(&s, x.n, x.h, x.w, x.c, 3, 2);
    ASSERT(s.oh == oh && s.ow == ow);
    Act4 y = fwd_take(f, x.n, oh, ow, x.c);
    fwd_use(f, x);
    TapeOp op = {.kind = TAPE_POOL, .out = y, .in = {x}, .n_in = 1};
    fwd_record(f, &op);
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    f->ops->maxpool_forward(f->ctx, y.p, x.p, &s);
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

Act4 fwd_upsample(Fwd *f, Act4 x, int oh, int ow)
{
    Act4 y = fwd_take(f, x.n, oh, ow, x.c);
    fwd_use(f, x);
    TapeOp op = {.kind = TAPE_UPSAMPLE, .out = y, .in = {x}, .n_in = 1};
    fwd_record(f, &op);
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    f->ops->upsample_nearest_forward(f->ctx, y.p, x.p, x.n, x.h, x.w, x.c, oh, ow);
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

Act4 fwd_add(Fwd *f, Act4 a, Act4 b)
{
    ASSERT(act_count(a) == act_count(b));
    Act4 y = fwd_take(f, a.n, a.h, a.w, a.c);
    fwd_use(f, a);
    fwd_use(f, b);
    TapeOp op = {.kind = TAPE_ADD, .out = y, .in = {a, b}, .n_in = 2};
    fwd_record(f, &op);
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    f->ops->add_forward(f->ctx, y.p, a.p, b.p, act_count(a));
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}
