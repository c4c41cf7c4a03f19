/* train_args.c: see train_args.h. */
#include "launch/train_args.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/data_pipeline.h"
#include "loader/train_sample.h"

const char *const TRAIN_USAGE =
    "effdet train --data DIR | --ann FILE --images DIR --model NAME [--num-classes N] "
    "[--image-size HxW] [--batch-size B] [--epochs E] [--lr LR] [--warmup-epochs W] "
    "[--no-model-ema] [--model-ema-decay D] [--seed S] [--output DIR] [--resume PATH] "
    "[--initial-checkpoint FILE] [--keep K] [--eval-interval E] [--skip-bad-images] "
    "[--log-interval N] [--checkpoint-interval E] [--bn-momentum M] [--smoothing S] [--remove-weights PREFIX...] "
    "[--freeze-layers PREFIX...] [--head-only] [--pretrained-backbone FILE] [--device D] [--tf32] "
    "[--amp] [--amp-dtype fp16|bf16] [--loss-scale S] "
    "[--loaders N --augmenters M [--devices cpu,cpu|cuda:0,...] [--sync-bn] [--max-restarts N] "
    "[--val-data DIR | --val-ann FILE --val-images DIR] [--hang-timeout S]]";


/* A flag taking one or more values (argparse's nargs='+'): optarg, then every following argument
 * up to the next one starting with '-'. */
/* --devices cpu,cpu or cuda:0,cuda:1: one worker per entry. */
static int parse_devices(TrainArgs *a, const char *list, Err *err)
{
    a->n_devices = 0;
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (a->n_devices == TRAIN_MAX_DEVICES) return err_set(err, "--devices: more than %d", TRAIN_MAX_DEVICES);
        if (!n || n >= TRAIN_DEVICE_CAP) return err_set(err, "--devices: bad entry in '%s'", list);
        memcpy(a->devices[a->n_devices], p, n);
        a->devices[a->n_devices++][n] = 0;
        p += n + (end ? 1 : 0);
        if (end && !*p) return err_set(err, "--devices: bad entry in '%s'", list);
    }
    if (!a->n_devices) return err_set(err, "--devices: empty");
    return 0;
}

static int parse_list(const char *flag, int argc, char **argv, const char **list, int *n, Err *err)
{
    const char *v = optarg;
    for (;;) {
        if (*n == TRAIN_MAX_PREFIXES) return err_set(err, "%s: more than %d prefixes", flag, TRAIN_MAX_PREFIXES);
        if (!*v || strlen(v) >= TRAIN_PREFIX_CAP)
            return err_set(err, "%s: prefix '%s' is empty or longer than %d characters", flag, v,
                           TRAIN_PREFIX_CAP - 1);
        list[(*n)++] = v;
        if (optind >= argc || argv[optind][0] == '-') return 0;
        v = argv[optind++];
    }
}

int train_args_parse(int argc, char **argv, TrainArgs *a, int worker, Err *err)
{
    enum { O_NOEMA = 256, O_EMA, O_SKIP, O_REMOVE, O_FREEZE, O_HEAD_ONLY, O_BACKBONE, O_LOADERS,
           O_AUGMENTERS, O_TF32, O_DEVICES, O_SYNC_BN, O_MAX_RESTARTS, O_VAL_DATA, O_VAL_ANN,
           O_VAL_IMAGES, O_HANG, O_FAULT, O_RANK, O_WORLD, O_CONNECT, O_COORD, O_COMM, O_AMP,
           O_AMP_DTYPE, O_LOSS_SCALE };
    static const struct option opts[] = {
        {"data", required_argument, 0, 'D'}, {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'}, {"model", required_argument, 0, 'm'},
        {"num-classes", required_argument, 0, 'n'}, {"image-size", required_argument, 0, 's'},
        {"batch-size", required_argument, 0, 'b'}, {"epochs", required_argument, 0, 'e'},
        {"lr", required_argument, 0, 'l'}, {"warmup-epochs", required_argument, 0, 'W'},
        {"model-ema", no_argument, 0, O_EMA}, {"no-model-ema", no_argument, 0, O_NOEMA},
        {"model-ema-decay", required_argument, 0, 'E'}, {"seed", required_argument, 0, 'S'},
        {"output", required_argument, 0, 'o'}, {"resume", required_argument, 0, 'r'},
        {"initial-checkpoint", required_argument, 0, 'i'}, {"keep", required_argument, 0, 'k'},
        {"eval-interval", required_argument, 0, 'v'}, {"skip-bad-images", no_argument, 0, O_SKIP},
        {"log-interval", required_argument, 0, 'L'}, {"device", required_argument, 0, 'd'},
        {"checkpoint-interval", required_argument, 0, 'c'},
        {"bn-momentum", required_argument, 0, 'B'},
        {"smoothing", required_argument, 0, 'Z'},
        {"remove-weights", required_argument, 0, O_REMOVE},
        {"freeze-layers", required_argument, 0, O_FREEZE},
        {"head-only", no_argument, 0, O_HEAD_ONLY},
        {"pretrained-backbone", required_argument, 0, O_BACKBONE},
        {"loaders", required_argument, 0, O_LOADERS},
        {"augmenters", required_argument, 0, O_AUGMENTERS},
        {"tf32", no_argument, 0, O_TF32}, {"amp", no_argument, 0, O_AMP},
        {"amp-dtype", required_argument, 0, O_AMP_DTYPE},
        {"loss-scale", required_argument, 0, O_LOSS_SCALE},
        {"devices", required_argument, 0, O_DEVICES}, {"sync-bn", no_argument, 0, O_SYNC_BN},
        {"max-restarts", required_argument, 0, O_MAX_RESTARTS},
        {"val-data", required_argument, 0, O_VAL_DATA}, {"val-ann", required_argument, 0, O_VAL_ANN},
        {"val-images", required_argument, 0, O_VAL_IMAGES},
        {"hang-timeout", required_argument, 0, O_HANG}, {"fault", required_argument, 0, O_FAULT},
        {"rank", required_argument, 0, O_RANK}, {"world", required_argument, 0, O_WORLD},
        {"connect", required_argument, 0, O_CONNECT}, {"coord", required_argument, 0, O_COORD},
        {"comm", required_argument, 0, O_COMM},
        {0, 0, 0, 0}};
    *a = (TrainArgs){.model = "tf_efficientdet_d0", .output = "effdet-train", .device = "cpu",
                     .batch = 8, .epochs = 10, .seed = 42, .keep = 3, .eval_interval = 0,
                     .log_interval = 10, .ckpt_interval = 1, .lr = 0.08, .warmup_epochs = 1.0, .ema_decay = 0.9998,
                     .ema = 1, .max_restarts = 3, .hang_s = 600, .world = 1, .loss_scale = 65536};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'D': a->data = optarg; break;
        case 'A': a->ann = optarg; break;
        case 'I': a->images = optarg; break;
        case 'm': a->model = optarg; break;
        case 'n': if (cli_parse_int("--num-classes", optarg, 1, 100000, &a->num_classes, err)) return -1; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &a->h, &a->w, err)) return -1; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, 4096, &a->batch, err)) return -1; break;
        case 'e': if (cli_parse_int("--epochs", optarg, 1, 1000000, &a->epochs, err)) return -1; break;
        case 'l': if (cli_parse_float("--lr", optarg, 0, 1e9, &a->lr, err)) return -1; break;
        case 'W': if (cli_parse_float("--warmup-epochs", optarg, 0, 1e6, &a->warmup_epochs, err)) return -1; break;
        case O_EMA: a->ema = 1; break;
        case O_NOEMA: a->ema = 0; break;
        case 'E': if (cli_parse_float("--model-ema-decay", optarg, 0, 1, &a->ema_decay, err)) return -1; break;
        case 'S': if (cli_parse_int("--seed", optarg, 0, 1L << 62, &a->seed, err)) return -1; break;
        case 'o': a->output = optarg; break;
        case 'r': a->resume = optarg; break;
        case 'i': a->initial = optarg; break;
        case 'k': if (cli_parse_int("--keep", optarg, 1, 1000, &a->keep, err)) return -1; break;
        case 'v': if (cli_parse_int("--eval-interval", optarg, 0, 1000000, &a->eval_interval, err)) return -1; break;
        case O_SKIP: a->skip_bad = 1; break;
        case 'L': if (cli_parse_int("--log-interval", optarg, 1, 1000000, &a->log_interval, err)) return -1; break;
        case 'd': a->device = optarg; break;
        case O_TF32: a->tf32 = 1; break;
        case O_AMP: precision_amp_flag(&a->precision); break;
        case O_AMP_DTYPE: if (precision_parse(optarg, &a->precision, err)) return -1; break;
        case O_LOSS_SCALE: if (cli_parse_float("--loss-scale", optarg, 0x1p-24, 0x1p100, &a->loss_scale, err)) return -1; break;
        case 'Z': if (cli_parse_float("--smoothing", optarg, 0, 1, &a->smoothing, err)) return -1; break;
        case 'B': if (cli_parse_float("--bn-momentum", optarg, 1e-6, 1, &a->bn_momentum, err)) return -1; break;
        case 'c': if (cli_parse_int("--checkpoint-interval", optarg, 1, 1000000, &a->ckpt_interval, err)) return -1; break;
        case O_REMOVE: if (parse_list("--remove-weights", argc, argv, a->remove, &a->n_remove, err)) return -1; break;
        case O_FREEZE: if (parse_list("--freeze-layers", argc, argv, a->freeze, &a->n_freeze, err)) return -1; break;
        case O_HEAD_ONLY: a->head_only = 1; break;
        case O_BACKBONE: a->backbone = optarg; break;
        case O_LOADERS: if (cli_parse_int("--loaders", optarg, 1, DATA_PIPELINE_MAX, &a->loaders, err)) return -1; break;
        case O_AUGMENTERS: if (cli_parse_int("--augmenters", optarg, 1, DATA_PIPELINE_MAX, &a->augmenters, err)) return -1; break;
        case O_DEVICES: if (parse_devices(a, optarg, err)) return -1; break;
        case O_SYNC_BN: a->sync_bn = 1; break;
        case O_MAX_RESTARTS: if (cli_parse_int("--max-restarts", optarg, 0, 1000, &a->max_restarts, err)) return -1; break;
        case O_VAL_DATA: a->val_data = optarg; break;
        case O_VAL_ANN: a->val_ann = optarg; break;
        case O_VAL_IMAGES: a->val_images = optarg; break;
        case O_HANG: if (cli_parse_float("--hang-timeout", optarg, 1, 1e7, &a->hang_s, err)) return -1; break;
        case O_FAULT: a->fault = optarg; break;
        case O_RANK: if (!worker || cli_parse_int("--rank", optarg, 0, TRAIN_MAX_DEVICES - 1, &a->rank, err)) return worker ? -1 : err_set(err, "--rank: only for worker processes"); break;
        case O_WORLD: if (!worker || cli_parse_int("--world", optarg, 1, TRAIN_MAX_DEVICES, &a->world, err)) return worker ? -1 : err_set(err, "--world: only for worker processes"); break;
        case O_CONNECT: a->connect = optarg; break;
        case O_COORD: a->coord = optarg; break;
        case O_COMM: a->comm = optarg; break;
        default: return err_set(err, "unknown option (usage: %s)", TRAIN_USAGE);
        }
    }
    if (optind != argc) return err_set(err, "unexpected argument '%s' (usage: %s)", argv[optind], TRAIN_USAGE);
    if (a->n_devices && !a->loaders && !a->augmenters) a->loaders = a->augmenters = 1;
    if (!a->data && !(a->ann && a->images))
        return err_set(err, "a dataset is required: --data DIR or --ann FILE --images DIR");
    if (!a->loaders != !a->augmenters)
        return err_set(err, "--loaders and --augmenters go together (the data stages as processes)");
    if (a->backbone && strlen(a->backbone) >= TRAIN_PATH_CAP)
        return err_set(err, "--pretrained-backbone: path longer than %d characters", TRAIN_PATH_CAP - 1);
    if (a->data) snprintf(a->ann_buf, sizeof a->ann_buf, "%s/annotations.json", a->data);
    else snprintf(a->ann_buf, sizeof a->ann_buf, "%s", a->ann);
    if (!a->val_ann != !a->val_images)
        return err_set(err, "--val-ann and --val-images go together (or --val-data DIR)");
    if (a->val_data) snprintf(a->val_ann_buf, sizeof a->val_ann_buf, "%s/annotations.json", a->val_data);
    else if (a->val_ann) snprintf(a->val_ann_buf, sizeof a->val_ann_buf, "%s", a->val_ann);
    else memcpy(a->val_ann_buf, a->ann_buf, sizeof a->ann_buf);
    if (a->sync_bn && a->n_devices < 2)
        return err_set(err, "--sync-bn needs at least two --devices");
    if (trainer_check_loss_scale(a->loss_scale, err) != 0) return -1;
    if (worker && a->world > 1 && !a->comm) return err_set(err, "a worker of %ld needs --comm", a->world);
    if (worker && (!a->connect || !a->coord)) return err_set(err, "a worker needs --connect and --coord");
    return 0;
}


void train_args_settings(const TrainArgs *a, const ModelConfig *cfg, int num_classes, size_t n_images,
                         int world, TrainSettings *s, size_t *steps_per_epoch)
{
    int h = a->h ? a->h : cfg->image_h, w = a->w ? a->w : cfg->image_w;
    long global = a->batch * world;
    size_t spe = train_batches_per_epoch(n_images, (int)global);
    train_settings_default(s, cfg->name, num_classes, (int)a->batch, h, w);
    s->lr = a->lr * global / 64.0;
    s->warmup_lr = s->lr / 10;
    s->warmup_steps = (long)(a->warmup_epochs * spe);
    s->total_steps = a->epochs * (long)spe;
    s->ema = a->ema, s->ema_decay = a->ema_decay, s->seed = (uint64_t)a->seed;
    s->bn_momentum = a->bn_momentum;
    s->tf32 = a->tf32;
    s->precision = a->precision, s->loss_scale_init = a->loss_scale;
    s->label_smoothing = a->smoothing;
    for (int i = 0; i < a->n_freeze; i++) snprintf(s->freeze[i], sizeof s->freeze[i], "%s", a->freeze[i]);
    for (int i = 0; i < a->n_remove; i++)
        snprintf(s->remove_weights[i], sizeof s->remove_weights[i], "%s", a->remove[i]);
    s->n_freeze = a->n_freeze, s->n_remove_weights = a->n_remove, s->head_only = a->head_only;
    if (a->backbone) snprintf(s->pretrained_backbone, sizeof s->pretrained_backbone, "%s", a->backbone);
    *steps_per_epoch = spe;
}

int train_args_open_dataset(const TrainArgs *a, int val, Dataset *ds, Err *err)
{
    const char *dir = a->data, *ann = a->ann, *images = a->images;
    if (val && (a->val_data || a->val_ann)) dir = a->val_data, ann = a->val_ann, images = a->val_images;
    return dir ? dataset_open_dir(ds, dir, (int)a->num_classes, err)
               : dataset_open(ds, ann, images, (int)a->num_classes, err);
}
