/* checkpoint.h: full training state in one safetensors file, written atomically.
 *
 * Tensors: the model under effdet's state_dict names and PyTorch layouts (so the file is also a
 * plain weights file for effdet and for `effdet infer --weights`), "ema.<name>" for the EMA of
 * every parameter and BN statistic, "optim.momentum.<name>" for SGD's momentum buffers.
 * Metadata: format "effdet-c checkpoint" version 1, model, num_classes, step, epoch, seed, the
 * data cursor, the fp16 loss scale and the trainer's settings (JSON), and an FNV-1a 64 checksum of all tensor bytes,
 * so a torn or corrupted file is refused by name rather than loaded wrong. Writing goes through
 * a temporary file, fsync, rename and a directory fsync (shared/safetensors.c). */
#ifndef EFFDET_CHECKPOINT_H
#define EFFDET_CHECKPOINT_H

#include <stdint.h>

#include "shared/err.h"
#include "worker/model/params.h"

/* Host copies of every block, in our layouts (kernels/ops.h), as the trainer holds them. */
typedef struct CheckpointState {
    float *params, *buffers;          /* table.n_params, table.n_buffers floats */
    float *ema_params, *ema_buffers;  /* NULL when no EMA */
    float *momentum;                  /* table.n_params floats, or NULL */
    long step, epoch;
    uint64_t seed;
    /* fp16 training's dynamic loss scale and its finite steps since the last change (metadata
     * "loss_scale", "loss_scale_steps"); 0 and 0 when the file has none (fp32, bf16, older files). */
    double loss_scale;
    long loss_scale_steps;
    char settings[2048];              /* the trainer's settings as a JSON object */
} CheckpointState;

int checkpoint_write(const char *path, const ParamTable *t, const char *model_name,
                     int num_classes, const CheckpointState *s, Err *err);
/* Reads a checkpoint into s (whose blocks the caller allocated for table t). Refuses files of
 * another model or num_classes, a missing section the caller asks for (non-NULL block), and any
 * checksum mismatch. */
int checkpoint_read(const char *path, const ParamTable *t, const char *model_name,
                    int num_classes, CheckpointState *s, Err *err);

/* Checkpoint files of a run directory: DIR/checkpoint-<step>.safetensors; keeps the newest
 * `keep` of them (and model_best.safetensors, which is never pruned). */
int checkpoint_prune(const char *dir, int keep, Err *err);
/* The newest complete checkpoint of DIR, or "" when none. */
void checkpoint_latest(const char *dir, char *path, size_t cap);

#endif
