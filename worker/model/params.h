/* params.h: the model's parameter table: every tensor under its effdet state_dict name, and where it
 * lives in the two contiguous blocks the model owns.
 *
 * - Trainable parameters (conv weights and biases, BN weight/bias, BiFPN edge weights) live in one
 *   block, so gradients, momentum and EMA mirror it and one all-reduce covers it.
 * - BN running statistics (running_mean, running_var) live in a second block ("buffers").
 * - `shape` is effdet's (PyTorch) shape; `layout` says how our NHWC layout differs (kernels/ops.h):
 *   conversion happens only when weights are loaded or saved.
 * - `num_batches_tracked` entries of effdet checkpoints are accepted and ignored (the momentum is
 *   fixed), and never required. */
#ifndef EFFDET_PARAMS_H
#define EFFDET_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

typedef enum {
    LAYOUT_SAME = 0, /* same bytes as PyTorch (1-D tensors, 1x1 convs) */
    LAYOUT_OIHW,     /* regular KxK conv: PyTorch (O, I, KH, KW) <-> ours (O, KH, KW, I) */
    LAYOUT_DW,       /* depthwise conv: PyTorch (C, 1, KH, KW) <-> ours (KH, KW, C) */
} ParamLayout;

typedef enum {
    PARAM_CONV_WEIGHT = 0, /* weight decay applies */
    PARAM_BIAS,
    PARAM_BN_WEIGHT,
    PARAM_BN_BIAS,
    PARAM_EDGE_WEIGHT,
    PARAM_BN_MEAN, /* buffer */
    PARAM_BN_VAR,  /* buffer */
} ParamKind;

typedef struct ParamSpec {
    char name[112];
    int ndim;
    int64_t shape[4];
    ParamLayout layout;
    ParamKind kind;
    size_t offset; /* in floats, in the params block or (for BN statistics) the buffers block */
    size_t count;
} ParamSpec;

typedef struct ParamTable {
    ParamSpec *specs;
    int count, cap;
    size_t n_params;  /* floats in the params block */
    size_t n_buffers; /* floats in the buffers block */
    int n_bn_layers;
} ParamTable;

static inline int param_is_buffer(ParamKind k) { return k == PARAM_BN_MEAN || k == PARAM_BN_VAR; }

/* Appends a tensor and returns its offset in its block. The name is printf-formatted. */
size_t param_table_add(ParamTable *t, ParamKind kind, ParamLayout layout, int ndim,
                       const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
void param_table_free(ParamTable *t);
const ParamSpec *param_table_find(const ParamTable *t, const char *name);
/* Elements of the largest tensor (at least 1): the size of a one-tensor staging buffer. */
size_t param_table_max_count(const ParamTable *t);

/* Converts one tensor between PyTorch layout (src) and ours (dst), or back with to_ours = 0. */
void param_convert(const ParamSpec *s, float *dst, const float *src, int to_ours);

/* Loads every tensor of the table from a safetensors file into host blocks (params, buffers),
 * converting layouts. Missing, unexpected, mis-typed or mis-shaped tensors are one error line
 * naming the first offender (and how many others), and the model the file says it holds. */
int param_table_load(const ParamTable *t, const char *path, const char *model_name, float *params,
                     float *buffers, Err *err);

/* Name prefixes (plain string prefixes: "class_net.predict" matches
 * "class_net.predict.conv_pw.bias"). */
int param_name_has_prefix(const char *name, const char *const *prefixes, int n);
/* The first of prefixes that starts no tensor name of the table (parameters or BN statistics), or
 * NULL when each matches some tensor. */
const char *param_table_unmatched_prefix(const ParamTable *t, const char *const *prefixes, int n);

/* Fine-tuning loads (effdet train --initial-checkpoint, --remove-weights, --pretrained-backbone).
 * Tensors the load does not read keep whatever the blocks held (the caller's fresh
 * initialisation). A zero ParamLoadOptions is param_table_load's strict behaviour. */
typedef struct ParamLoadOptions {
    const char *const *skip; /* name prefixes not loaded; each must match some tensor */
    int n_skip;
    /* Only backbone.* is loaded (the rest keep their values), from an effdet file (any other
     * tensors ignored) or from timm's bare EfficientNet names ("conv_stem.weight",
     * "blocks.0.0.conv_dw.weight", "bn1.weight"), whose classifier side (conv_head.*, bn2.*,
     * classifier.*) is ignored. Every backbone tensor must be in the file. */
    int backbone_only;
    /* class_net.predict.* tensors whose shape differs from the file's (another num_classes) keep
     * their values instead of being an error. A shape mismatch anywhere else stays one. */
    int reinit_class_head;
} ParamLoadOptions;

/* What a load did, for the caller's log. */
typedef struct ParamLoadReport {
    int loaded, skipped; /* tensors read; tensors left as they were (skip, backbone_only) */
    int timm_names;      /* the file used timm's bare EfficientNet names */
    int n_reinit;        /* class_net.predict.* tensors kept because their shapes differ */
    char reinit[256];    /* their names and shapes, e.g. "class_net.predict.conv_pw.bias (file 810,
                            model 27)" */
} ParamLoadReport;

/* param_table_load with options; report may be NULL. */
int param_table_load_with(const ParamTable *t, const char *path, const char *model_name,
                          const ParamLoadOptions *opts, float *params, float *buffers,
                          ParamLoadReport *report, Err *err);

/* Deterministic initialisation for tests and benchmarks (effdet-like scales): conv weights
 * N(0, 1/fan_in), biases 0 except the class head's prior -4.595, BN weight 1 and bias 0, running
 * mean 0 and var 1, edge weights 1. */
void param_table_init_random(const ParamTable *t, uint64_t seed, float *params, float *buffers);

#endif
