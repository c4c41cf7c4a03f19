/* trainer.h: one training step of EfficientDet over the op table, as effdet's train.py runs it:
 * targets (AnchorLabeler) -> train-mode forward -> focal + Huber loss -> backward -> gradient
 * clipping by global norm -> SGD with momentum and weight decay on conv weights only -> EMA of
 * every parameter and BN statistic with effdet/NVIDIA's warm-up min(decay, (1+n)/(10+n)).
 *
 * The learning rate follows automl's schedule: linear warm-up from warmup_lr to lr over
 * warmup_steps, then cosine decay to 0 at total_steps. All state lives in backend memory in
 * blocks that mirror the parameter block (momentum, EMA), so one call updates all of it. Every
 * op is deterministic, so the same inputs give bit-identical weights, and a resumed run equals a
 * straight one. */
#ifndef EFFDET_TRAINER_H
#define EFFDET_TRAINER_H

#include <stdint.h>

#include "kernels/ops.h"
#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/checkpoint.h"
#include "worker/comm.h"
#include "worker/labeler.h"
#include "worker/model/model.h"

enum { TRAIN_MAX_BOXES = 100 }; /* effdet's max_num_instances */
enum { TRAIN_MAX_PREFIXES = 16, TRAIN_PREFIX_CAP = 112, TRAIN_PATH_CAP = 1024 };

typedef struct TrainSettings {
    char model[32];
    int num_classes;
    int batch, h, w;
    double lr, warmup_lr;         /* peak and starting learning rates, already batch-scaled */
    long warmup_steps, total_steps;
    double momentum, weight_decay, clip_norm;
    int ema;                      /* keep an EMA of the weights */
    double ema_decay;
    double alpha, gamma, delta, box_weight, label_smoothing;
    double bn_momentum;           /* > 0: override effdet's BN momenta (0.1 backbone, 0.01 rest) */
    uint64_t seed;
    int tf32;                     /* --tf32 (CUDA): TF32 convolutions */
    /* --amp: activations in fp16 with dynamic loss scaling (PyTorch GradScaler's rules: start at
     * loss_scale_init, halve and skip the step when the gradients overflow, double after
     * loss_scale_interval finite steps) or in bf16 (no scaling); fp32 master weights. */
    Precision precision;
    double loss_scale_init;
    long loss_scale_interval;
    /* Fine-tuning. Prefixes are plain name prefixes ("backbone" freezes every backbone.* tensor);
     * each must match some tensor of the model. */
    char freeze[TRAIN_MAX_PREFIXES][TRAIN_PREFIX_CAP]; /* --freeze-layers */
    int n_freeze;
    int head_only;                /* --head-only: freeze all but class_net.* and box_net.* */
    char remove_weights[TRAIN_MAX_PREFIXES][TRAIN_PREFIX_CAP]; /* not read from the initial weights */
    int n_remove_weights;
    char pretrained_backbone[TRAIN_PATH_CAP]; /* "" or a backbone file (effdet or timm names) */
} TrainSettings;

/* Defaults of effdet/automl for a batch: lr 0.08 per 64 images, warm-up from a tenth of it,
 * momentum 0.9, weight decay 4e-5, clip 10, EMA 0.9998, focal alpha 0.25 gamma 1.5, Huber delta
 * 0.1, box weight 50. */
void train_settings_default(TrainSettings *s, const char *model, int num_classes, int batch,
                            int h, int w);

typedef struct TrainStats {
    double loss, class_loss, box_loss;
    double lr, grad_norm;
    int positives; /* of the whole global batch under data parallelism */
    double loss_scale; /* fp16: the scale this step ran with (1 otherwise) */
    int skipped;       /* fp16: the gradients overflowed; no update, the scale was halved */
} TrainStats;

typedef struct Trainer {
    TrainSettings s;
    ModelConfig cfg;
    Model model;
    Anchors anchors;
    Labeler labeler;
    float *momentum, *ema_params, *ema_buffers; /* backend memory */
    uint8_t *decay_mask;                        /* backend, one byte per parameter */
    int32_t *cls_target_host, *cls_target;      /* (batch * anchors) */
    float *box_target_host, *box_target;        /* (batch * anchors, 4) */
    float *scalars;                             /* backend: loss[2], sum of squares */
    /* Targets made on the backend (ops->label_anchors non-NULL; otherwise all NULL): the anchors,
     * uploaded once, the batch's GT rows and each image's positives. */
    float *anchors_dev;                         /* backend (anchors, 4) */
    float *gt_dev;                              /* backend (batch, TRAIN_MAX_BOXES, 4) */
    int32_t *gt_class_host, *gt_class_dev;      /* (batch, TRAIN_MAX_BOXES): crowd rows are -1 */
    int32_t *positives_host, *positives_dev;    /* (batch) */
    size_t *frozen;                             /* (n_frozen, 2) [offset, count) float ranges of
                                                   frozen parameters in the params block */
    int n_frozen;
    char initial[TRAIN_PATH_CAP];               /* the initial weights, for the settings record */
    long step;                                  /* optimizer steps taken (skipped ones included) */
    double loss_scale;                          /* fp16: the dynamic loss scale; 1 otherwise */
    long scale_good_steps;                      /* fp16: finite steps since it last changed */
    long skipped_steps;                         /* fp16: overflowing steps skipped by this process */
    /* Data parallelism (trainer_set_comm); comm NULL: one worker. */
    Comm *comm;
    int sync_bn;
    BnSync bn_sync;  /* given to ops->set_bn_sync; its arg is this Trainer, which must not move */
    int comm_failed; /* a collective failed (comm_err says why): every later step fails */
    Err comm_err;
} Trainer;

/* Starting weights: effdet-style random init with seed s->seed, then, over it, either
 * - weights (--initial-checkpoint; NULL: none), a safetensors file with effdet names (our
 *   checkpoints load their EMA weights): every tensor except those under s->remove_weights, and
 *   except the class head's predict conv when its shape differs (another num_classes), which
 *   keep their fresh init; any other mismatch is an error naming the tensor; or
 * - s->pretrained_backbone: the backbone only (params.h ParamLoadOptions.backbone_only).
 *
 * Frozen parameters (s->freeze, s->head_only) are never updated: their gradients are zeroed
 * right after the backward pass, so the clipping norm leaves them out and SGD adds nothing (zero
 * gradient, no weight decay, momentum stays 0). A BN layer with a frozen tensor is frozen whole
 * (gamma, beta, running statistics): it runs in inference mode on its running statistics (BnP.
 * frozen), as NVIDIA's train.py puts frozen layers' BN in eval mode. The EMA still averages frozen
 * tensors with themselves, which can move them by rounding only. */
int trainer_init(Trainer *t, const TrainSettings *s, const char *device, const char *weights,
                 Err *err);
void trainer_free(Trainer *t); /* idempotent */

/* Data parallel: c's ranks each train on their slice of the global batch (s.batch per rank). The
 * positives of the whole global batch normalize the loss (so the ranks' losses add up to the
 * single-worker loss; TrainStats reports the global loss and positives on every rank), the
 * gradient block is summed over ranks before clipping, and with sync_bn the train-mode BN
 * statistics are the global batch's (ops->set_bn_sync; an error when the backend lacks it).
 * Every rank then takes the same update, so the ranks' weights stay bit-identical. NULL c: one
 * worker. Call after trainer_init, before the first step; c must outlive the trainer's steps.
 * Every rank must make the same sequence of trainer_step / trainer_loss_and_grads /
 * trainer_agree_stop calls; a failed collective (a timeout, a dead rank, a rank whose batch
 * could not be labelled) makes the step fail on every rank that notices, and all later ones. */
int trainer_set_comm(Trainer *t, Comm *c, int sync_bn, Err *err);

/* Whether any rank wants to stop: *any = 1 when some rank passed stop != 0 (with no comm,
 * *any = stop). The worker loop calls it once per step, so every rank stops at the same step. */
int trainer_agree_stop(Trainer *t, int stop, int *any, Err *err);

/* One step on a batch: input (batch, H, W, 3) normalized host floats; boxes (batch, max_boxes, 4)
 * yxyx input pixels; classes (batch, max_boxes) 1-based, -1 padding; crowd (batch, max_boxes) or
 * NULL. Fails (and leaves the weights untouched) on bad targets or a non-finite loss.
 *
 * fp16 (s.precision): the loss gradients are multiplied by the loss scale, the backward pass runs
 * on scaled gradients, and the update divides it out (exactly: the scale is a power of two). When
 * the loss or the gradients are not finite, the step is skipped (st->skipped: no SGD, no EMA, the
 * schedule's step still counts, as NVIDIA's and timm's loops do with GradScaler) and the scale
 * halves; after loss_scale_interval finite steps it doubles. A scale that falls below 2^-24 means
 * fp16 overflows whatever the scale: the step fails with that error. */
int trainer_step(Trainer *t, const float *input, const float *boxes, const int32_t *classes,
                 const uint8_t *crowd, int max_boxes, TrainStats *st, Err *err);

/* Only forward + loss + backward (no update): for parity with a reference's gradients. */
int trainer_loss_and_grads(Trainer *t, const float *input, const float *boxes,
                           const int32_t *classes, const uint8_t *crowd, int max_boxes,
                           TrainStats *st, Err *err);

/* A starting loss scale must be a positive power of two, so that unscaling is exact; fails with
 * the --loss-scale line. (trainer_init checks it; the command checks it before reading data.) */
int trainer_check_loss_scale(double scale, Err *err);

/* Learning rate at a step, and the EMA decay after n updates. */
double trainer_lr_at(const TrainSettings *s, long step);
double trainer_ema_decay_at(const TrainSettings *s, long n);

/* Whole training state to/from a checkpoint file (worker/checkpoint.h). */
int trainer_save(Trainer *t, const char *path, long epoch, Err *err);
int trainer_resume(Trainer *t, const char *path, long *epoch, Err *err);

/* Host copies of the weights to evaluate: the EMA when kept, else the raw weights. The caller
 * frees both. */
int trainer_eval_weights(Trainer *t, float **params, float **buffers, Err *err);

#endif
