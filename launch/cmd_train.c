/* cmd_train.c: `effdet train`: single-process training on the CPU (or a GPU backend that can
 * train) from a COCO-format dataset, with effdet/NVIDIA train.py flag names:
 *
 *   effdet train --data DIR | --ann FILE --images DIR  --model NAME [--num-classes N]
 *     [--image-size HxW] [--batch-size B] [--epochs E] [--lr LR] [--warmup-epochs W]
 *     [--model-ema | --no-model-ema] [--model-ema-decay D] [--seed S] [--output DIR]
 *     [--resume PATH] [--initial-checkpoint FILE] [--keep K] [--eval-interval E]
 *     [--skip-bad-images] [--log-interval N] [--checkpoint-interval E] [--bn-momentum M]
 *     [--remove-weights PREFIX...] [--freeze-layers PREFIX...] [--head-only]
 *     [--pretrained-backbone FILE] [--device D] [--loaders N --augmenters M]
 *
 * Data: by default one process decodes and letterboxes each batch in turn (loader/train_sample.h:
 * letterbox + flip). --loaders N --augmenters M instead starts the data stages as processes
 * (effdet-loader x N, effdet-augment x M: effdet's train transform with scale jitter 0.1-2.0,
 * random crop, flip, random interpolation) that prepare batches while the step runs; the batch
 * order is the same epoch permutation, and a resumed run gets the same batches it would have.
 *
 * Fine-tuning (worker/trainer.h has the exact rules): --initial-checkpoint with another
 * --num-classes re-initialises the class head's predict conv; --remove-weights PREFIX... keeps the
 * fresh init of the initial checkpoint's tensors under those name prefixes; --freeze-layers
 * PREFIX... never updates those tensors and runs their BN layers on running statistics;
 * --head-only freezes all but class_net.* and box_net.*; --pretrained-backbone FILE loads only the
 * backbone, under effdet names or timm's bare EfficientNet names. Prefix lists take every
 * following argument up to the next one starting with '-'; a prefix matching no tensor is an
 * error.
 *
 * --lr is the rate for 64 images and scales with the batch (automl: 0.08 per 64). A checkpoint
 * (full state) is written every --checkpoint-interval epochs (default 1) and at the end, as
 * OUTPUT/checkpoint-<step>.safetensors; the
 * newest --keep are kept, and the best evaluation as OUTPUT/model_best.safetensors. SIGINT or
 * SIGTERM: the step in flight finishes, a checkpoint is written, the process exits 130; --resume
 * PATH (a checkpoint, or the run directory for its newest checkpoint)
 * continues exactly (same weights, EMA, momentum and data order as a run never stopped).
 * The coordinator (workers, evaluator, supervision) is to replace this loop. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/data_pipeline.h"
#include "launch/train_eval.h"
#include "loader/train_sample.h"
#include "shared/check.h"
#include "shared/log.h"
#include "worker/batch_stream.h"
#include "worker/trainer.h"

static const char *USAGE =
    "effdet train --data DIR | --ann FILE --images DIR --model NAME [--num-classes N] "
    "[--image-size HxW] [--batch-size B] [--epochs E] [--lr LR] [--warmup-epochs W] "
    "[--no-model-ema] [--model-ema-decay D] [--seed S] [--output DIR] [--resume PATH] "
    "[--initial-checkpoint FILE] [--keep K] [--eval-interval E] [--skip-bad-images] "
    "[--log-interval N] [--checkpoint-interval E] [--bn-momentum M] [--smoothing S] [--remove-weights PREFIX...] "
    "[--freeze-layers PREFIX...] [--head-only] [--pretrained-backbone FILE] [--device D] [--tf32] "
    "[--loaders N --augmenters M]";

/* The one piece of global state STYLE allows: set by the signal handler, read between steps. */
static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) { stop_requested = sig; }

typedef struct TrainArgs {
    const char *data, *ann, *images, *model, *output, *resume, *initial, *device, *backbone;
    long num_classes, batch, epochs, seed, keep, eval_interval, log_interval, ckpt_interval;
    long loaders, augmenters; /* 0: decode in this process */
    double lr, warmup_epochs, ema_decay, bn_momentum, smoothing;
    int h, w, ema, skip_bad, head_only, tf32;
    const char *freeze[TRAIN_MAX_PREFIXES], *remove[TRAIN_MAX_PREFIXES];
    int n_freeze, n_remove;
    char ann_buf[1024];
} TrainArgs;

/* A flag taking one or more values (argparse's nargs='+'): optarg, then every following argument
 * up to the next one starting with '-'. */
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

static int parse(int argc, char **argv, TrainArgs *a, Err *err)
{
    enum { O_NOEMA = 256, O_EMA, O_SKIP, O_REMOVE, O_FREEZE, O_HEAD_ONLY, O_BACKBONE, O_LOADERS,
           O_AUGMENTERS, O_TF32 };
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
        {"tf32", no_argument, 0, O_TF32},
        {0, 0, 0, 0}};
    *a = (TrainArgs){.model = "tf_efficientdet_d0", .output = "effdet-train", .device = "cpu",
                     .batch = 8, .epochs = 10, .seed = 42, .keep = 3, .eval_interval = 0,
                     .log_interval = 10, .ckpt_interval = 1, .lr = 0.08, .warmup_epochs = 1.0, .ema_decay = 0.9998,
                     .ema = 1};
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
        case 'Z': if (cli_parse_float("--smoothing", optarg, 0, 1, &a->smoothing, err)) return -1; break;
        case 'B': if (cli_parse_float("--bn-momentum", optarg, 1e-6, 1, &a->bn_momentum, err)) return -1; break;
        case 'c': if (cli_parse_int("--checkpoint-interval", optarg, 1, 1000000, &a->ckpt_interval, err)) return -1; break;
        case O_REMOVE: if (parse_list("--remove-weights", argc, argv, a->remove, &a->n_remove, err)) return -1; break;
        case O_FREEZE: if (parse_list("--freeze-layers", argc, argv, a->freeze, &a->n_freeze, err)) return -1; break;
        case O_HEAD_ONLY: a->head_only = 1; break;
        case O_BACKBONE: a->backbone = optarg; break;
        case O_LOADERS: if (cli_parse_int("--loaders", optarg, 1, DATA_PIPELINE_MAX, &a->loaders, err)) return -1; break;
        case O_AUGMENTERS: if (cli_parse_int("--augmenters", optarg, 1, DATA_PIPELINE_MAX, &a->augmenters, err)) return -1; break;
        default: return err_set(err, "unknown option (usage: %s)", USAGE);
        }
    }
    if (optind != argc) return err_set(err, "unexpected argument '%s' (usage: %s)", argv[optind], USAGE);
    if (!a->data && !(a->ann && a->images))
        return err_set(err, "a dataset is required: --data DIR or --ann FILE --images DIR");
    if (!a->loaders != !a->augmenters)
        return err_set(err, "--loaders and --augmenters go together (the data stages as processes)");
    if (a->backbone && strlen(a->backbone) >= TRAIN_PATH_CAP)
        return err_set(err, "--pretrained-backbone: path longer than %d characters", TRAIN_PATH_CAP - 1);
    if (a->data) snprintf(a->ann_buf, sizeof a->ann_buf, "%s/annotations.json", a->data);
    else snprintf(a->ann_buf, sizeof a->ann_buf, "%s", a->ann);
    return 0;
}

typedef struct Run {
    TrainArgs a;
    Dataset ds;
    TrainSampler sampler;
    Trainer t;
    float *images;
    SampleTarget *targets;
    float *boxes;
    int32_t *classes;
    uint8_t *crowd;
    size_t steps_per_epoch;
    double best_map;
    /* --loaders/--augmenters: the data stages and the stream of their batches */
    DataPipeline pipe;
    void *zctx;
    BatchStream bs;
    int piped;
} Run;

static void run_free(Run *r)
{
    if (r->piped) {
        batch_stream_free(&r->bs);
        zmq_util_ctx_term(r->zctx);
        data_pipeline_stop(&r->pipe);
        r->piped = 0;
    }
    trainer_free(&r->t);
    train_sampler_free(&r->sampler);
    dataset_free(&r->ds);
    free(r->images), free(r->targets), free(r->boxes), free(r->classes), free(r->crowd);
}

static int run_init(Run *r, Err *err)
{
    const TrainArgs *a = &r->a;
    int rc = a->data ? dataset_open_dir(&r->ds, a->data, (int)a->num_classes, err)
                     : dataset_open(&r->ds, a->ann, a->images, (int)a->num_classes, err);
    if (rc != 0) return -1;
    char report[512];
    dataset_report(&r->ds, report, sizeof report);
    log_info("%s", report);
    ModelConfig cfg;
    if (model_config_get(a->model, r->ds.num_classes, &cfg, err) != 0) return -1;
    int h = a->h ? a->h : cfg.image_h, w = a->w ? a->w : cfg.image_w;
    TrainSampleConfig sc = {.height = h, .width = w, .seed = (uint64_t)a->seed, .hflip = 1,
                            .skip_corrupt = a->skip_bad};
    if (train_sampler_init(&r->sampler, &r->ds, &sc, err) != 0) return -1;
    r->steps_per_epoch = train_batches_per_epoch(r->ds.n_images, (int)a->batch);
    TrainSettings s;
    train_settings_default(&s, cfg.name, r->ds.num_classes, (int)a->batch, h, w);
    s.lr = a->lr * a->batch / 64.0;
    s.warmup_lr = s.lr / 10;
    s.warmup_steps = (long)(a->warmup_epochs * r->steps_per_epoch);
    s.total_steps = a->epochs * (long)r->steps_per_epoch;
    s.ema = a->ema, s.ema_decay = a->ema_decay, s.seed = (uint64_t)a->seed;
    s.bn_momentum = a->bn_momentum;
    s.tf32 = a->tf32;
    s.label_smoothing = a->smoothing;
    for (int i = 0; i < a->n_freeze; i++) snprintf(s.freeze[i], sizeof s.freeze[i], "%s", a->freeze[i]);
    for (int i = 0; i < a->n_remove; i++)
        snprintf(s.remove_weights[i], sizeof s.remove_weights[i], "%s", a->remove[i]);
    s.n_freeze = a->n_freeze, s.n_remove_weights = a->n_remove, s.head_only = a->head_only;
    if (a->backbone) snprintf(s.pretrained_backbone, sizeof s.pretrained_backbone, "%s", a->backbone);
    if (trainer_init(&r->t, &s, a->device, a->initial, err) != 0) return -1;
    r->best_map = -1;
    if (a->loaders) return 0; /* batches come from the data stages' shared memory */
    size_t B = (size_t)a->batch, M = DATASET_MAX_INSTANCES;
    r->images = malloc(B * h * w * 3 * sizeof(float));
    r->targets = malloc(B * sizeof *r->targets);
    r->boxes = malloc(B * M * 4 * sizeof(float));
    r->classes = malloc(B * M * sizeof(int32_t));
    r->crowd = malloc(B * M);
    if (!r->images || !r->targets || !r->boxes || !r->classes || !r->crowd)
        return err_set(err, "train: out of memory for batch %ld at %dx%d", a->batch, h, w);
    r->best_map = -1;
    return 0;
}

static int save(Run *r, long epoch, Err *err)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/checkpoint-%ld.safetensors", r->a.output, r->t.step);
    if (trainer_save(&r->t, path, epoch, err) != 0) return -1;
    log_info("checkpoint %s", path);
    return checkpoint_prune(r->a.output, (int)r->a.keep, err);
}

static int evaluate(Run *r, long epoch, Err *err)
{
    float *params, *buffers;
    double stats[12];
    if (trainer_eval_weights(&r->t, &params, &buffers, err) != 0) return -1;
    int rc = train_evaluate(&r->t.s, r->a.device, params, buffers, &r->ds, r->a.ann_buf, stats, err);
    free(params), free(buffers);
    if (rc != 0) return -1;
    printf("eval epoch %ld step %ld: mAP %.4f mAP@0.5 %.4f mAP@0.75 %.4f (%s weights)\n", epoch,
           r->t.step, stats[0], stats[1], stats[2], r->t.s.ema ? "EMA" : "raw");
    printf("DLLL {\"type\": \"eval\", \"epoch\": %ld, \"step\": %ld, \"map\": %.6f, \"map50\": %.6f, "
           "\"map75\": %.6f}\n", epoch, r->t.step, stats[0], stats[1], stats[2]);
    fflush(stdout);
    if (stats[0] > r->best_map) {
        char path[1200];
        r->best_map = stats[0];
        snprintf(path, sizeof path, "%s/model_best.safetensors", r->a.output);
        return trainer_save(&r->t, path, epoch, err);
    }
    return 0;
}

/* The batch's targets as the trainer takes them: (B, 100, 4) yxyx, (B, 100) labels, crowd. */
static void gather_targets(Run *r)
{
    size_t M = DATASET_MAX_INSTANCES;
    for (long b = 0; b < r->a.batch; b++) {
        memcpy(r->boxes + b * M * 4, r->targets[b].bbox, sizeof r->targets[b].bbox);
        memcpy(r->classes + b * M, r->targets[b].cls, sizeof r->targets[b].cls);
        memcpy(r->crowd + b * M, r->targets[b].crowd, sizeof r->targets[b].crowd);
    }
}

/* The data stages, asked for batches from the trainer's position on (after a resume too). */
static int pipe_start(Run *r, Err *err)
{
    const TrainArgs *a = &r->a;
    DataPipelineConfig pc = {.data = a->data, .ann = a->ann, .images = a->images,
                             .num_classes = (int)a->num_classes, .loaders = (int)a->loaders,
                             .augmenters = (int)a->augmenters, .batch = (int)a->batch,
                             .height = r->t.s.h, .width = r->t.s.w, .seed = (uint64_t)a->seed,
                             .skip_bad_images = a->skip_bad, .aug_slots = 2};
    if (data_pipeline_start(&r->pipe, &pc, err) < 0) return -1;
    r->piped = 1;
    if (!(r->zctx = zmq_util_ctx_new(err))) return -1;
    long spe = (long)r->steps_per_epoch;
    BatchStreamConfig bc = {.name = "worker0", .augmenters = r->pipe.aug_ptrs,
                            .n_augmenters = r->pipe.n_aug, .window = 2, .batch = (int)a->batch,
                            .height = r->t.s.h, .width = r->t.s.w, .seed = (uint64_t)a->seed,
                            .train = 1, .rank = 0, .world = 1,
                            .epoch = (uint32_t)(r->t.step / spe),
                            .first_batch = (uint64_t)(r->t.step % spe),
                            .limits = wire_limits_default(), .alive = data_pipeline_alive,
                            .alive_arg = &r->pipe};
    if (batch_stream_init(&r->bs, r->zctx, &bc, err) < 0) return -1;
    int rc = batch_stream_start(&r->bs, -1, err);
    if (rc != 0) return rc < 0 ? -1 : err_set(err, "the data stages stopped before the first batch");
    if (r->bs.batches_per_epoch != r->steps_per_epoch || r->bs.n_images != r->ds.n_images)
        return err_set(err, "the loaders see %llu images, this process %zu",
                       (unsigned long long)r->bs.n_images, r->ds.n_images);
    return 0;
}

static int train_loop(Run *r, Err *err)
{
    long spe = (long)r->steps_per_epoch, total = r->t.s.total_steps;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long first = r->t.step;
    while (r->t.step < total && !stop_requested) {
        long epoch = r->t.step / spe, b = r->t.step % spe;
        const float *images = r->images, *boxes = r->boxes;
        const int32_t *classes = r->classes;
        const uint8_t *crowd = r->crowd;
        long long first_id;
        Batch bt;
        if (r->piped) {
            if (batch_stream_next(&r->bs, &bt, -1, err) != 0) return -1;
            ASSERT(bt.epoch == (uint32_t)epoch && bt.b == (uint64_t)b && bt.dtype == ST_F32);
            images = bt.images, boxes = bt.bbox, classes = bt.cls, crowd = bt.crowd;
            first_id = bt.image_id[0];
        } else {
            if (train_batch_load(&r->sampler, (uint32_t)epoch, (size_t)b, (int)r->a.batch,
                                 r->images, r->targets, err) != 0)
                return -1;
            gather_targets(r);
            first_id = r->targets[0].image_id;
        }
        TrainStats st;
        int rc = trainer_step(&r->t, images, boxes, classes, crowd, DATASET_MAX_INSTANCES, &st, err);
        if (r->piped) batch_stream_release(&r->bs, &bt);
        if (rc != 0)
            return err_wrap(err, "epoch %ld batch %ld (first image id %lld): ", epoch, b, first_id);
        if (r->t.step % r->a.log_interval == 0 || r->t.step == total) {
            struct timespec t1;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double dt = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
            double ips = (r->t.step - first) * r->a.batch / (dt > 0 ? dt : 1);
            printf("epoch %ld step %ld/%ld: loss %.4f (class %.4f box %.5f) lr %.5f grad norm %.3f "
                   "%.2f img/s\n", epoch, r->t.step, total, st.loss, st.class_loss, st.box_loss,
                   st.lr, st.grad_norm, ips);
            fflush(stdout);
        }
        if (r->t.step % spe == 0) {
            long done = r->t.step / spe;
            if ((done % r->a.ckpt_interval == 0 || r->t.step == total) && save(r, done, err) != 0)
                return -1;
            if (r->a.eval_interval && done % r->a.eval_interval == 0 && evaluate(r, done, err) != 0)
                return -1;
        }
    }
    return 0;
}

int cmd_train(int argc, char **argv)
{
    Run r;
    Err err;
    memset(&r, 0, sizeof r);
    if (parse(argc, argv, &r.a, &err) != 0) return cli_fail("train", &err);
    if (mkdir(r.a.output, 0755) != 0 && errno != EEXIST) {
        err_set(&err, "--output %s: %s", r.a.output, strerror(errno));
        return cli_fail("train", &err);
    }
    if (run_init(&r, &err) != 0) goto fail;
    char latest[1200];
    /* --resume PATH: a checkpoint file, or a run directory whose newest checkpoint is taken (none
     * yet: a fresh start, so the same command line both starts and continues a run). */
    const char *resume = r.a.resume;
    struct stat sb;
    if (resume && stat(resume, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        checkpoint_latest(r.a.resume, latest, sizeof latest);
        if (!latest[0]) log_info("--resume: no checkpoint in %s yet, starting from scratch", r.a.resume);
        resume = latest[0] ? latest : NULL;
    }
    if (resume) {
        long epoch;
        if (trainer_resume(&r.t, resume, &epoch, &err) != 0) goto fail;
        log_info("resumed from %s at step %ld", resume, r.t.step);
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (r.a.loaders && pipe_start(&r, &err) != 0) goto fail;
    if (train_loop(&r, &err) != 0) goto fail;
    long spe = (long)r.steps_per_epoch;
    if (stop_requested) {
        if (save(&r, r.t.step / spe, &err) != 0) goto fail;
        log_info("stopped by signal %d at step %ld; --resume continues", (int)stop_requested, r.t.step);
        run_free(&r);
        return 130;
    }
    /* The final weights are always evaluated, unless the last epoch's evaluation just did. */
    long epochs_done = r.t.step / spe;
    int evaluated = r.a.eval_interval && epochs_done % r.a.eval_interval == 0;
    if (!evaluated && evaluate(&r, epochs_done, &err) != 0) goto fail;
    run_free(&r);
    return 0;
fail:
    run_free(&r);
    return cli_fail("train", &err);
}
