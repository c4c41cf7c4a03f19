/* layers.h: the building blocks every part of the model shares: parameter declaration helpers
 * (conv, BN, separable conv with effdet's names) and forward helpers over the op table.
 *
 * Planning is a dry run of the forward code: with f->dry set, fwd_take only adds up the bytes
 * each activation needs (256-byte aligned) and no op runs. The real pass takes the same
 * activations in the same order from the arena sized by the dry run, so the arena is exactly
 * what the forward pass needs and nothing allocates during it. */
#ifndef EFFDET_LAYERS_H
#define EFFDET_LAYERS_H

#include "worker/model/model.h"

typedef struct Fwd {
    const Ops *ops;
    OpsCtx *ctx;
    const float *params, *buffers;
    float eps;
    int dry;            /* planning pass: count bytes, run nothing */
    char *arena;
    size_t used, cap;   /* bytes */
    size_t workspace;   /* largest conv workspace seen (planning) */
} Fwd;

/* A new (n, h, w, c) activation from the arena (p == NULL in a dry run). */
Act4 fwd_take(Fwd *f, int n, int h, int w, int c);

/* Parameter declarations with effdet's names; prefix is e.g. "backbone.blocks.1.0.conv_pw". */
ConvP layer_conv(Model *m, const char *prefix, int cin, int cout, int k, int stride, int bias);
ConvP layer_dwconv(Model *m, const char *prefix, int c, int k, int stride);
BnP layer_bn(Model *m, const char *prefix, int c);
SepConvP layer_sepconv(Model *m, const char *prefix, int cin, int cout, int bias, int has_bn);

/* Forward helpers. Each returns a new activation. */
Act4 fwd_conv(Fwd *f, const ConvP *c, Act4 x);
Act4 fwd_bn(Fwd *f, const BnP *bn, Act act, Act4 x);
Act4 fwd_act(Fwd *f, Act act, Act4 x);
Act4 fwd_sepconv(Fwd *f, const SepConvP *s, Act act, Act4 x); /* act after BN (if any) */
Act4 fwd_maxpool_same(Fwd *f, Act4 x, int oh, int ow);       /* 3x3 stride 2 */
Act4 fwd_upsample(Fwd *f, Act4 x, int oh, int ow);
Act4 fwd_add(Fwd *f, Act4 a, Act4 b);

#endif
