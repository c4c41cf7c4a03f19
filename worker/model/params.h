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

/* Converts one tensor between PyTorch layout (src) and ours (dst), or back with to_ours = 0. */
void param_convert(const ParamSpec *s, float *dst, const float *src, int to_ours);

/* Loads every tensor of the table from a safetensors file into host blocks (params, buffers),
 * converting layouts. Missing, unexpected, mis-typed or mis-shaped tensors are one error line
 * naming the first offender (and how many others), and the model the file says it holds. */
int param_table_load(const ParamTable *t, const char *path, const char *model_name, float *params,
                     float *buffers, Err *err);

/* Deterministic initialisation for tests and benchmarks (effdet-like scales): conv weights
 * N(0, 1/fan_in), biases 0 except the class head's prior -4.595, BN weight 1 and bias 0, running
 * mean 0 and var 1, edge weights 1. */
void param_table_init_random(const ParamTable *t, uint64_t seed, float *params, float *buffers);

#endif
