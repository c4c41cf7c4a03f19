/* model.h: an EfficientDet model (any variant D0-D7x, any num_classes, any input size) over the
 * backend-neutral op table.
 *
 * Life cycle: model_create (config + parameter table + one params block and one buffers block in
 * backend memory) -> model_load_weights or model_init_random -> model_plan (batch, H, W: sizes the
 * one activation arena and the conv workspace, once) -> model_forward any number of times ->
 * model_free. Nothing allocates inside model_forward.
 *
 * Layers hold offsets into the params block (floats); activations come from the arena through the
 * same forward code run once "dry" at plan time (layers.h), so the plan can never disagree with
 * the forward pass. */
#ifndef EFFDET_MODEL_H
#define EFFDET_MODEL_H

#include <stddef.h>

#include "kernels/ops.h"
#include "worker/model/config.h"
#include "worker/model/params.h"

enum { NO_PARAM = (size_t)-1 };

typedef struct ConvP {
    size_t w, b; /* offsets in the params block; b == NO_PARAM: no bias */
    int cin, cout, k, stride, depthwise;
} ConvP;

typedef struct BnP {
    size_t gamma, beta; /* params block */
    size_t mean, var;   /* buffers block */
    int c;
    float momentum;     /* running-stat update: 0.1 in the timm backbone, 0.01 in BiFPN and heads */
    int frozen;         /* a frozen layer (effdet train --freeze-layers): a training plan runs it as
                           in inference, on its running statistics, which stay unchanged */
} BnP;

typedef struct SeP {
    size_t w_r, b_r, w_e, b_e;
    int c, cr;
} SeP;

typedef struct BlockP {
    BlockCfg cfg;
    ConvP expand, dw, project; /* expand unused in DS blocks */
    BnP bn_expand, bn_dw, bn_project;
    SeP se;
} BlockP;

/* Depthwise k x k (no bias) then pointwise 1x1 (bias), optionally BN. */
typedef struct SepConvP {
    ConvP dw, pw;
    int has_bn;
    BnP bn;
} SepConvP;

/* A 1x1 conv + BN that brings a backbone map to fpn_channels; absent when channels already match. */
typedef struct ResampleP {
    int has_conv;
    ConvP conv;
    BnP bn;
} ResampleP;

typedef struct FnodeP {
    FpnNodeCfg cfg;
    ResampleP resample[MAX_FPN_INPUTS];
    size_t edge; /* edge weights (n_inputs) or NO_PARAM for plain sum */
    SepConvP conv;
} FnodeP;

typedef struct HeadP {
    int outputs_per_anchor; /* num_classes or 4 */
    SepConvP rep[8];        /* shared across levels, no BN */
    BnP bn[8][MAX_LEVELS];  /* per repeat, per level */
    SepConvP predict;
} HeadP;

/* Activation tensor: NHWC view into backend memory. */
typedef struct Act4 {
    float *p;
    int n, h, w, c;
    int id; /* position in the plan's sequence of activations */
} Act4;

static inline size_t act_count(Act4 a) { return (size_t)a.n * a.h * a.w * a.c; }

/* One op of the forward pass as the backward pass needs it: what it read, what it wrote, what it
 * saved, and which layer's parameters it used. Recorded once, at plan time, in forward order;
 * model_backward walks the list in reverse. */
typedef enum {
    TAPE_CONV, TAPE_DWCONV, TAPE_BN, TAPE_ACT, TAPE_SE, TAPE_ADD, TAPE_POOL, TAPE_UPSAMPLE, TAPE_FUSE
} TapeKind;

typedef struct TapeOp {
    TapeKind kind;
    Act4 out;
    Act4 in[4];
    int n_in;
    Act4 saved[3];       /* BN: mean, invstd; SE: pooled, hidden, gate */
    const void *layer;   /* ConvP, BnP or SeP inside the Model */
    size_t edge;         /* fusion edge weights, or NO_PARAM */
    Act act;
} TapeOp;

/* A Model must stay where model_create put it: its tape points at layers inside it. */
typedef struct Model {
    ModelConfig cfg;
    ParamTable table;
    const Ops *ops;
    OpsCtx *ctx;
    float *params;  /* backend memory, table.n_params floats */
    float *buffers; /* backend memory, table.n_buffers floats */

    ConvP stem;
    BnP stem_bn;
    BlockP blocks[MAX_BLOCKS];
    ResampleP extra[MAX_LEVELS]; /* levels past the backbone (P6: conv+BN+pool, P7..: pool) */
    FnodeP (*cells)[MAX_FPN_NODES]; /* fpn_repeats cells */
    HeadP class_head, box_head;

    /* The plan: fixed by model_plan. */
    int batch, in_h, in_w;
    int feat_h[MAX_LEVELS], feat_w[MAX_LEVELS];
    char *arena;
    size_t arena_bytes;
    int reuse;                    /* inference plan: activations share memory when their lives don't overlap */
    int train;                    /* training plan: batch-statistics BN, tape, gradient arena */
    Precision precision;          /* of the activations (model_set_precision) */
    float bn_momentum;            /* > 0: overrides every BN's running-stat momentum (--bn-momentum) */
    struct ModelProfile *prof;    /* non-NULL: every op is timed (profile.h, effdet bench --profile) */
    TapeOp *tape;
    int n_tape;
    char *grad_arena;             /* training: d loss / d activation, same offsets as the arena */
    float *grads;                 /* training: d loss / d params, table.n_params floats */
    int n_acts;
    size_t *act_offset;           /* (n_acts) byte offset of each activation in the arena */
    Act4 input;                   /* (B, H, W, 3), filled by the caller */
    Act4 class_out[MAX_LEVELS];   /* (B, fh, fw, A * num_classes) raw logits */
    Act4 box_out[MAX_LEVELS];     /* (B, fh, fw, A * 4) raw (ty, tx, th, tw) */
    Act4 backbone_feat[3];        /* debugging: strides 8, 16, 32 */
    Act4 fpn_feat[MAX_LEVELS];    /* debugging: BiFPN outputs */
} Model;

int model_create(Model *m, const ModelConfig *cfg, const Ops *ops, int device, Err *err);
/* Builds the layers and the parameter table only, with no backend and no memory (effdet info). */
void model_describe(Model *m, const ModelConfig *cfg);
void model_free(Model *m); /* idempotent */
/* --tf32: lets the backend's convolutions and GEMMs use TF32 (about 1e-3 relative instead of
 * fp32's 1e-6). Fails, naming the backend, where it has no such mode (the CPU). */
int model_set_tf32(Model *m, int on, Err *err);
/* --amp: activations and their gradients in fp16 or bf16 (kernels/ops.h, mixed precision), fp32
 * weights. Before model_plan; fails, naming the backend, where it cannot store that type. */
int model_set_precision(Model *m, Precision p, Err *err);
/* After the weights change on the backend (an optimizer step): refreshes the convolutions'
 * low-precision copy of them (nothing in fp32). model_set_weights and the loads call it. */
void model_weights_changed(Model *m);
/* Host fp32 data into the network input, and head outputs back (converted under --amp). */
void model_upload_input(Model *m, const float *host);
void model_download(const Model *m, float *host, Act4 a);
int model_load_weights(Model *m, const char *path, Err *err);
int model_init_random(Model *m, unsigned long long seed, Err *err);
/* Uploads host blocks in our layouts (e.g. a trainer's EMA weights for evaluation). */
void model_set_weights(Model *m, const float *params, const float *buffers);
/* Sizes the arena for (batch, h, w); input sizes must give at least one pixel at max_level.
 * PLAN_INFER lets activations share memory once they are dead (only the input and the head
 * outputs stay valid after a forward); PLAN_KEEP_ALL keeps every activation, as training needs. */
typedef enum { PLAN_INFER = 0, PLAN_KEEP_ALL = 1, PLAN_TRAIN = 2 } PlanMode;
int model_plan(Model *m, int batch, int h, int w, PlanMode mode, Err *err);
/* Runs the network on m->input; fills class_out/box_out. In a PLAN_TRAIN plan, batch norm uses
 * batch statistics and updates the running statistics. */
void model_forward(Model *m);
/* PLAN_TRAIN only: propagates the head-output gradients (written by the caller into
 * model_grad(m, m->class_out[l]) and model_grad(m, m->box_out[l])) back through the tape,
 * accumulating into m->grads. */
void model_backward(Model *m);
/* Zeroes the activation-gradient arena and the parameter gradients (before writing the loss
 * gradients of the head outputs and calling model_backward). */
void model_zero_grads(Model *m);
/* The gradient buffer of an activation (PLAN_TRAIN). */
float *model_grad(const Model *m, Act4 a);

/* Counts for `effdet info`. */
size_t model_count_params(const Model *m);
size_t model_count_bn_buffers(const Model *m);

/* Declarations of each part's parameters (build) and its forward pass, one file each. */
struct Fwd;
void backbone_build(Model *m);
void backbone_forward(struct Fwd *f, Model *m, Act4 x, Act4 feats[3]);
void bifpn_build(Model *m);
void bifpn_forward(struct Fwd *f, Model *m, const Act4 feats[3], Act4 out[MAX_LEVELS]);
void head_build(Model *m, HeadP *h, const char *prefix, int outputs_per_anchor);
void head_forward(struct Fwd *f, Model *m, const HeadP *h, const Act4 *in, Act4 *out);

#endif
