/* train_args.h: the flags of `effdet train` (NVIDIA train.py / effdet names where they exist),
 * shared by the command itself, the coordinator's topology and the worker processes it starts
 * (which get the user's command line back, plus their own flags). */
#ifndef EFFDET_LAUNCH_TRAIN_ARGS_H
#define EFFDET_LAUNCH_TRAIN_ARGS_H

#include "loader/dataset.h"
#include "shared/err.h"
#include "worker/trainer.h"

enum { TRAIN_MAX_DEVICES = 16, TRAIN_DEVICE_CAP = 32 };

typedef struct TrainArgs {
    const char *data, *ann, *images, *model, *output, *resume, *initial, *device, *backbone;
    const char *val_data, *val_ann, *val_images; /* evaluation set (default: the training set) */
    long num_classes, batch, epochs, seed, keep, eval_interval, log_interval, ckpt_interval;
    long loaders, augmenters; /* 0: decode in this process */
    long max_restarts;
    double lr, warmup_epochs, ema_decay, bn_momentum, smoothing, hang_s;
    int h, w, ema, skip_bad, head_only, tf32, sync_bn;
    Precision precision;      /* --amp (fp16), --amp-dtype */
    double loss_scale;        /* --loss-scale: fp16's starting loss scale */
    const char *freeze[TRAIN_MAX_PREFIXES], *remove[TRAIN_MAX_PREFIXES];
    int n_freeze, n_remove;
    char devices[TRAIN_MAX_DEVICES][TRAIN_DEVICE_CAP]; /* --devices cpu,cpu | cuda:0,cuda:1 */
    int n_devices;
    const char *fault;        /* tests: the coordinator's --fault */
    /* A worker process (set by the coordinator): rank of world, the augmenters' endpoints
     * (comma-separated), the coordinator's endpoint, the collectives' shared-memory name. */
    long rank, world;
    const char *connect, *coord, *comm;
    char ann_buf[1024], val_ann_buf[1024];
} TrainArgs;

extern const char *const TRAIN_USAGE;

/* Parses argv (argv[0] is the subcommand). worker: also accept the worker flags. */
int train_args_parse(int argc, char **argv, TrainArgs *a, int worker, Err *err);

/* The trainer's settings for args on a dataset of n images, with world workers of a->batch each:
 * --lr is per 64 images of the global batch, warm-up and schedule count global steps. */
void train_args_settings(const TrainArgs *a, const ModelConfig *cfg, int num_classes, size_t n_images,
                         int world, TrainSettings *s, size_t *steps_per_epoch);

/* Opens the training dataset (or with val, the evaluation set) the args name. */
int train_args_open_dataset(const TrainArgs *a, int val, Dataset *ds, Err *err);

#endif
