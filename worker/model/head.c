/* head.c: effdet's HeadNet, used for both the class net and the box net. box_class_repeats
 * separable convs are shared across levels (conv_rep.R), each followed by a per-level BN
 * (bn_rep.R.LEVEL.bn) and SiLU; then a shared separable `predict` conv with bias, whose output
 * (B, fh, fw, A * outputs) in NHWC is already effdet's permute(0, 2, 3, 1) layout. */
#include <stdio.h>

#include "shared/check.h"
#include "worker/model/layers.h"

void head_build(Model *m, HeadP *h, const char *prefix, int outputs_per_anchor)
{
    const ModelConfig *c = &m->cfg;
    char name[128];
    ASSERT(c->head_repeats <= 8);
    h->outputs_per_anchor = outputs_per_anchor;
    for (int r = 0; r < c->head_repeats; r++) {
        snprintf(name, sizeof name, "%s.conv_rep.%d", prefix, r);
        h->rep[r] = layer_sepconv(m, name, c->fpn_channels, c->fpn_channels, 1, 0);
    }
    for (int r = 0; r < c->head_repeats; r++)
        for (int lv = 0; lv < c->num_levels; lv++) {
            snprintf(name, sizeof name, "%s.bn_rep.%d.%d.bn", prefix, r, lv);
            h->bn[r][lv] = layer_bn(m, name, c->fpn_channels);
        }
    snprintf(name, sizeof name, "%s.predict", prefix);
    h->predict = layer_sepconv(m, name, c->fpn_channels,
                               outputs_per_anchor * model_config_anchors_per_loc(c), 1, 0);
}

void head_forward(Fwd *f, Model *m, const HeadP *h, const Act4 *in, Act4 *out)
{
    for (int lv = 0; lv < m->cfg.num_levels; lv++) {
        Act4 x = in[lv];
        for (int r = 0; r < m->cfg.head_repeats; r++)
            x = fwd_bn(f, &h->bn[r][lv], ACT_SILU, fwd_sepconv(f, &h->rep[r], ACT_NONE, x));
        out[lv] = fwd_sepconv(f, &h->predict, ACT_NONE, x);
    }
}
