/* layers.h: the building blocks every part of the model shares: parameter declaration helpers
 * (conv, BN, separable conv with effdet's names) and forward helpers over the op table.
 *
 * Planning is a dry run of the forward code: with f->dry set, no op runs; fwd_take records each
 * activation's size and the step it is made, and fwd_use the last step that reads it. From those
 * lifetimes the plan gives every activation a fixed arena offset (model.c: shared memory for
 * activations whose lives do not overlap, or one slot each when training keeps them all). The
 * real pass takes the same activations in the same order, so nothing allocates during it. */
#ifndef EFFDET_LAYERS_H
#define EFFDET_LAYERS_H

#include "worker/model/model.h"

typedef struct Fwd {
    const Ops *ops;
    OpsCtx *ctx;
    const float *params;
    float *buffers;     /* BN running statistics: written in train mode */
    float eps;
    int dry;            /* planning pass: count bytes, run nothing */
    int train;          /* batch norm with batch statistics, and record the tape */
    float bn_momentum;  /* > 0: overrides the layers' running-stat momentum */
    struct ModelProfile *prof; /* Model.prof: non-NULL times every op (profile.h) */
    TapeOp *tape;       /* dry run in train mode: the ops in forward order */
    int n_tape, tape_cap;
    char *arena;
    const size_t *offset; /* real pass: arena offset of each activation, by sequence number */
    int step;             /* activations taken so far */
    size_t workspace;     /* largest conv workspace seen (planning) */
    /* Dry run: per activation, bytes and lifetime [first, last] in steps. */
    size_t *bytes;
    int *first, *last;
    int cap;
} Fwd;

/* Records op (dry run in train mode only). */
void fwd_record(Fwd *f, const TapeOp *op);

/* A new (n, h, w, c) activation (p == NULL in a dry run). */
Act4 fwd_take(Fwd *f, int n, int h, int w, int c);
/* Marks x as read by the op being issued now (extends its life in the plan). */
void fwd_use(Fwd *f, Act4 x);

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
