/* backbone.c: EfficientNet feature extractor as timm's EfficientNetFeatures (features_only) builds
 * it for the tf_ variants: conv_stem 3x3/2 -> bn1 -> SiLU, then blocks.S.I:
 *   DepthwiseSeparable: conv_dw -> bn1 -> SiLU -> SE -> conv_pw -> bn2 [+ x]
 *   InvertedResidual:   conv_pw -> bn1 -> SiLU -> conv_dw -> bn2 -> SiLU -> SE -> conv_pwl -> bn3 [+ x]
 * The outputs of stages 2, 4 and 6 (strides 8, 16, 32) feed the BiFPN. No conv_head. */
#include <stdio.h>

#include "worker/model/layers.h"
#include "worker/model/profile.h"

static SeP se_build(Model *m, const char *prefix, int c, int cr)
{
    char name[128];
    SeP se = {.c = c, .cr = cr};
    snprintf(name, sizeof name, "%s.se.conv_reduce", prefix);
    ConvP r = layer_conv(m, name, c, cr, 1, 1, 1);
    snprintf(name, sizeof name, "%s.se.conv_expand", prefix);
    ConvP e = layer_conv(m, name, cr, c, 1, 1, 1);
    se.w_r = r.w, se.b_r = r.b, se.w_e = e.w, se.b_e = e.b;
    return se;
}

static void block_build(Model *m, BlockP *b, const BlockCfg *cfg)
{
    char p[96], name[128];
    b->cfg = *cfg;
    snprintf(p, sizeof p, "backbone.blocks.%d.%d", cfg->stage, cfg->index);
#define NAME(suffix) (snprintf(name, sizeof name, "%s.%s", p, suffix), name)
    if (cfg->kind == BLOCK_DS) {
        b->dw = layer_dwconv(m, NAME("conv_dw"), cfg->in, cfg->k, cfg->stride);
        b->bn_dw = layer_bn(m, NAME("bn1"), cfg->in);
        b->se = se_build(m, p, cfg->in, cfg->se_channels);
        b->project = layer_conv(m, NAME("conv_pw"), cfg->in, cfg->out, 1, 1, 0);
        b->bn_project = layer_bn(m, NAME("bn2"), cfg->out);
    } else {
        b->expand = layer_conv(m, NAME("conv_pw"), cfg->in, cfg->mid, 1, 1, 0);
        b->bn_expand = layer_bn(m, NAME("bn1"), cfg->mid);
        b->dw = layer_dwconv(m, NAME("conv_dw"), cfg->mid, cfg->k, cfg->stride);
        b->bn_dw = layer_bn(m, NAME("bn2"), cfg->mid);
        b->se = se_build(m, p, cfg->mid, cfg->se_channels);
        b->project = layer_conv(m, NAME("conv_pwl"), cfg->mid, cfg->out, 1, 1, 0);
        b->bn_project = layer_bn(m, NAME("bn3"), cfg->out);
    }
#undef NAME
}

void backbone_build(Model *m)
{
    m->stem = layer_conv(m, "backbone.conv_stem", 3, m->cfg.stem_channels, 3, 2, 0);
    m->stem_bn = layer_bn(m, "backbone.bn1", m->cfg.stem_channels);
    for (int i = 0; i < m->cfg.n_blocks; i++) block_build(m, &m->blocks[i], &m->cfg.blocks[i]);
}

static Act4 se_forward(Fwd *f, const SeP *se, Act4 x)
{
    Act4 y = fwd_take(f, x.n, x.h, x.w, x.c);
    Act4 pooled = fwd_take(f, x.n, 1, 1, se->c), hidden = fwd_take(f, x.n, 1, 1, se->cr);
    Act4 gate = fwd_take(f, x.n, 1, 1, se->c);
    /* One op writes all four outputs: they must be alive together. */
    fwd_use(f, x), fwd_use(f, y), fwd_use(f, pooled), fwd_use(f, hidden), fwd_use(f, gate);
    TapeOp op = {.kind = TAPE_SE, .out = y, .in = {x}, .n_in = 1, .saved = {pooled, hidden, gate},
                 .layer = se};
    fwd_record(f, &op);
    if (f->dry) return y;
    int pr = profile_op_begin(f->prof);
    f->ops->se_forward(f->ctx, y.p, pooled.p, hidden.p, gate.p, x.p, f->params + se->w_r,
                       f->params + se->b_r, f->params + se->w_e, f->params + se->b_e, x.n,
                       x.h * x.w, x.c, se->cr);
    profile_op_end(f->prof, pr, &op, 0);
    return y;
}

static Act4 block_forward(Fwd *f, const BlockP *b, Act4 x)
{
    Act4 h = x;
    if (b->cfg.kind == BLOCK_IR) h = fwd_bn(f, &b->bn_expand, ACT_SILU, fwd_conv(f, &b->expand, h));
    h = fwd_bn(f, &b->bn_dw, ACT_SILU, fwd_conv(f, &b->dw, h));
    h = se_forward(f, &b->se, h);
    h = fwd_bn(f, &b->bn_project, ACT_NONE, fwd_conv(f, &b->project, h));
    return b->cfg.skip ? fwd_add(f, h, x) : h;
}

void backbone_forward(Fwd *f, Model *m, Act4 x, Act4 feats[3])
{
    Act4 h = fwd_bn(f, &m->stem_bn, ACT_SILU, fwd_conv(f, &m->stem, x));
    int next_feat = 0;
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        h = block_forward(f, &m->blocks[i], h);
        if (next_feat < 3 && i == m->cfg.feat_block[next_feat]) feats[next_feat++] = h;
    }
}
