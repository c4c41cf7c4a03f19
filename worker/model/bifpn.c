/* bifpn.c: the BiFPN as effdet builds it.
 *
 * Extra levels: P6 = MaxPool_SAME(BN(conv1x1(C5))) ("fpn.resample.3"), P7.. = MaxPool_SAME(prev).
 * Each cell has 2 * num_levels - 2 nodes (config.c). A node resamples each input to its level
 * (1x1 conv + BN first when the channels differ, i.e. backbone maps in the first cell; then a
 * 3x3/2 SAME max pool when both dims shrink, nearest resize when either grows), fuses them
 * (fast normalized fusion or plain sum), applies SiLU, then a separable conv + BN. A cell's
 * outputs are its last num_levels nodes, P_min .. P_max. */
#include <stdio.h>
#include <stdlib.h>

#include "shared/check.h"
#include "worker/model/layers.h"
#include "worker/model/profile.h"

static ResampleP resample_build(Model *m, const char *prefix, int cin)
{
    ResampleP r = {.has_conv = cin != m->cfg.fpn_channels};
    if (r.has_conv) {
        char name[160];
        snprintf(name, sizeof name, "%s.conv.conv", prefix);
        r.conv = layer_conv(m, name, cin, m->cfg.fpn_channels, 1, 1, 1);
        snprintf(name, sizeof name, "%s.conv.bn", prefix);
        r.bn = layer_bn(m, name, m->cfg.fpn_channels);
    }
    return r;
}

static int backbone_channels(const Model *m, int i)
{
    return m->cfg.blocks[m->cfg.feat_block[i]].out;
}

void bifpn_build(Model *m)
{
    const ModelConfig *c = &m->cfg;
    char name[160];
    for (int lv = 3; lv < c->num_levels; lv++) {
        snprintf(name, sizeof name, "fpn.resample.%d", lv);
        m->extra[lv] = resample_build(m, name, lv == 3 ? backbone_channels(m, 2) : c->fpn_channels);
    }
    m->cells = calloc((size_t)c->fpn_repeats, sizeof *m->cells);
    ASSERT(m->cells);
    for (int r = 0; r < c->fpn_repeats; r++) {
        for (int j = 0; j < c->n_nodes; j++) {
            FnodeP *nd = &m->cells[r][j];
            nd->cfg = c->nodes[j];
            for (int i = 0; i < nd->cfg.n_inputs; i++) {
                int off = nd->cfg.inputs[i];
                int cin = r == 0 && off < 3 ? backbone_channels(m, off) : c->fpn_channels;
                snprintf(name, sizeof name, "fpn.cell.%d.fnode.%d.combine.resample.%d", r, j, off);
                nd->resample[i] = resample_build(m, name, cin);
            }
            nd->edge = NO_PARAM;
            if (c->weighted_fusion) {
                int64_t s[1] = {nd->cfg.n_inputs};
                nd->edge = param_table_add(&m->table, PARAM_EDGE_WEIGHT, LAYOUT_SAME, 1, s,
                                           "fpn.cell.%d.fnode.%d.combine.edge_weights", r, j);
            }
            snprintf(name, sizeof name, "fpn.cell.%d.fnode.%d.after_combine.conv", r, j);
            nd->conv = layer_sepconv(m, name, c->fpn_channels, c->fpn_channels, 1, 1);
        }
    }
}

/* Brings x to size (oh, ow): conv + BN when present, then pool, resize or nothing. */
static Act4 resample_forward(Fwd *f, const ResampleP *r, Act4 x, int oh, int ow)
{
    if (r->has_conv) x = fwd_bn(f, &r->bn, ACT_NONE, fwd_conv(f, &r->conv, x));
    if (x.h > oh && x.w > ow) return fwd_maxpool_same(f, x, oh, ow);
    if (x.h < oh || x.w < ow) return fwd_upsample(f, x, oh, ow);
    ASSERT(x.h == oh && x.w == ow);
    return x;
}

static Act4 fnode_forward(Fwd *f, const Model *m, const FnodeP *nd, const Act4 *x)
{
    int li = nd->cfg.level - m->cfg.min_level, oh = m->feat_h[li], ow = m->feat_w[li];
    Act4 in[MAX_FPN_INPUTS];
    const float *ptrs[MAX_FPN_INPUTS];
    for (int i = 0; i < nd->cfg.n_inputs; i++) {
        in[i] = resample_forward(f, &nd->resample[i], x[nd->cfg.inputs[i]], oh, ow);
        ptrs[i] = in[i].p;
    }
    Act4 fused = fwd_take(f, in[0].n, oh, ow, m->cfg.fpn_channels);
    for (int i = 0; i < nd->cfg.n_inputs; i++) fwd_use(f, in[i]);
    TapeOp op = {.kind = TAPE_FUSE, .out = fused, .n_in = nd->cfg.n_inputs, .edge = nd->edge};
    for (int i = 0; i < nd->cfg.n_inputs; i++) op.in[i] = in[i];
    fwd_record(f, &op);
    if (!f->dry) {
        int pr = profile_op_begin(f->prof);
        f->ops->fuse_forward(f->ctx, fused.p, ptrs, nd->edge == NO_PARAM ? NULL : f->params + nd->edge,
                             nd->cfg.n_inputs, act_count(fused));
        profile_op_end(f->prof, pr, &op, 0);
    }
    return fwd_sepconv(f, &nd->conv, ACT_NONE, fwd_act(f, ACT_SILU, fused));
}

void bifpn_forward(Fwd *f, Model *m, const Act4 feats[3], Act4 out[MAX_LEVELS])
{
    const ModelConfig *c = &m->cfg;
    int L = c->num_levels;
    Act4 x[MAX_LEVELS + MAX_FPN_NODES];
    for (int i = 0; i < 3; i++) x[i] = feats[i];
    for (int lv = 3; lv < L; lv++)
        x[lv] = resample_forward(f, &m->extra[lv], x[lv - 1], m->feat_h[lv], m->feat_w[lv]);
    for (int r = 0; r < c->fpn_repeats; r++) {
        for (int j = 0; j < c->n_nodes; j++) x[L + j] = fnode_forward(f, m, &m->cells[r][j], x);
        for (int i = 0; i < L; i++) x[i] = x[L + c->n_nodes - L + i];
    }
    for (int i = 0; i < L; i++) out[i] = x[i];
}
