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
 *
 * With --loaders N --augmenters M (and --devices) the run is a pipeline under the coordinator
 * (launch/train_topology.c): this file then also holds the worker process, `effdet worker`: the
 * same command line plus --rank/--world/--connect/--coord/--comm, training on its slice of each
 * global batch from the augmenters' shared memory, reporting each step to the coordinator, rank 0
 * writing checkpoints and the EMA snapshot of each evaluated epoch. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/data_pipeline.h"
#include "launch/train_args.h"
#include "launch/train_eval.h"
#include "launch/train_topology.h"
#include "loader/train_sample.h"
#include "shared/check.h"
#include "shared/log.h"
#include "shared/stop_signal.h"
#include "shared/wire.h"
#include "shared/zmq_util.h"
#include "worker/batch_stream.h"
#include "worker/comm.h"
#include "worker/trainer.h"

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
    int stop_fd;          /* SIGINT/SIGTERM (shared/stop_signal.h) */
    /* A worker process: the augmenters' batches, the collectives, the coordinator's socket. */
    int worker;
    void *zctx;
    BatchStream bs;
    int streaming;
    Comm *comm;
    Comm *comm_boot;      /* the shared-memory comm that opened a device comm (NCCL), or NULL */
    ZmqSocket coord;
    char aug_eps[DATA_PIPELINE_MAX][ZMQ_UTIL_ENDPOINT_CAP]; /* BatchStream keeps pointers to them */
    const char *aug_ptrs[DATA_PIPELINE_MAX];
} Run;

static void run_free(Run *r)
{
    if (r->streaming) batch_stream_free(&r->bs);
    r->streaming = 0;
    zmq_util_close(&r->coord);
    zmq_util_ctx_term(r->zctx);
    r->zctx = NULL;
    /* The comms before the trainer: a device comm works on the model's context. */
    comm_close(r->comm);
    comm_close(r->comm_boot);
    r->comm = r->comm_boot = NULL;
    trainer_free(&r->t);
    train_sampler_free(&r->sampler);
    dataset_free(&r->ds);
    free(r->images), free(r->targets), free(r->boxes), free(r->classes), free(r->crowd);
}

static int run_init(Run *r, Err *err)
{
    const TrainArgs *a = &r->a;
    if (train_args_open_dataset(a, 0, &r->ds, err) != 0) return -1;
    char report[512];
    dataset_report(&r->ds, report, sizeof report);
    if (!r->worker || a->rank == 0) log_info("%s", report);
    ModelConfig cfg;
    if (model_config_get(a->model, r->ds.num_classes, &cfg, err) != 0) return -1;
    TrainSettings s;
    train_args_settings(a, &cfg, r->ds.num_classes, r->ds.n_images, (int)a->world, &s, &r->steps_per_epoch);
    if (r->worker && a->n_devices) {
        if (a->rank >= a->n_devices)
            return err_set(err, "--rank %ld: only %d --devices", a->rank, a->n_devices);
        r->a.device = r->a.devices[a->rank];
    }
    if (trainer_init(&r->t, &s, r->a.device, a->initial, err) != 0) return -1;
    r->best_map = -1;
    if (r->worker) return 0; /* batches come from the augmenters' shared memory */
    TrainSampleConfig sc = {.height = s.h, .width = s.w, .seed = (uint64_t)a->seed, .hflip = 1,
                            .skip_corrupt = a->skip_bad};
    if (train_sampler_init(&r->sampler, &r->ds, &sc, err) != 0) return -1;
    size_t B = (size_t)a->batch, M = DATASET_MAX_INSTANCES;
    r->images = malloc(B * s.h * s.w * 3 * sizeof(float));
    r->targets = malloc(B * sizeof *r->targets);
    r->boxes = malloc(B * M * 4 * sizeof(float));
    r->classes = malloc(B * M * sizeof(int32_t));
    r->crowd = malloc(B * M);
    if (!r->images || !r->targets || !r->boxes || !r->classes || !r->crowd)
        return err_set(err, "train: out of memory for batch %ld at %dx%d", a->batch, s.h, s.w);
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

/* In-process evaluation (single-process training): the workers' runs evaluate asynchronously. */
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

/* ---- the worker process's links: augmenters, collectives, coordinator ----------------------- */

/* A coordinator that cannot take a message in 1 s is gone or stuck: the step goes on. 0 when sent. */
static int send_coord(Run *r, WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    Err err;
    int rc = zmq_util_send(&r->coord, data, len, 1000, &err);
    if (rc < 0) log_warn("%s", err.msg);
    wire_writer_free(w);
    return rc == 0 ? 0 : -1;
}

static void send_simple(Run *r, const char *type)
{
    WireWriter w;
    wire_writer_init(&w, type, 2);
    wire_put_uint(&w, "rank", (uint64_t)r->a.rank);
    wire_put_uint(&w, "step", (uint64_t)r->t.step);
    send_coord(r, &w);
}

/* A worker's error goes to the coordinator, which ends the run with it as its one line; 0 when
 * sent (the worker then prints nothing), -1 when there is no coordinator to tell. */
static int send_error(Run *r, const char *what)
{
    if (!r->coord.sock) return -1;
    WireWriter w;
    wire_writer_init(&w, "error", 2);
    wire_put_uint(&w, "rank", (uint64_t)r->a.rank);
    wire_put_str(&w, "what", what);
    return send_coord(r, &w);
}

static int worker_connect(Run *r, Err *err)
{
    const TrainArgs *a = &r->a;
    if (!(r->zctx = zmq_util_ctx_new(err))) return -1;
    ZmqSocketConfig sc = {.type = ZMQ_PUSH, .max_msg_bytes = -1, .linger_ms = 2000};
    if (zmq_util_connect(&r->coord, r->zctx, &sc, a->coord, err) != 0) return -1;
    if (a->world > 1) {
        /* A GPU backend with a communicator of its own (NCCL) sums the gradients in device
         * memory; the shared-memory comm then only bootstraps it, so it needs no f32 slots. */
        const Ops *o = r->t.model.ops;
        int device_comm = !o->host_memory && o->comm_open;
        int timeout_ms = (int)(a->hang_s * 1000);
        Comm *shm = comm_shm_open(a->comm, (int)a->rank, (int)a->world,
                                  device_comm ? 1 : r->t.model.table.n_params, timeout_ms, err);
        if (!shm) return -1;
        if (device_comm) {
            r->comm_boot = shm;
            if (!(r->comm = o->comm_open(r->t.model.ctx, shm, timeout_ms, err))) return -1;
        } else {
            r->comm = shm;
        }
        if (trainer_set_comm(&r->t, r->comm, a->sync_bn, err) != 0) return -1;
    }
    char (*eps)[ZMQ_UTIL_ENDPOINT_CAP] = r->aug_eps;
    const char **ptrs = r->aug_ptrs;
    int n = 0;
    for (const char *p = a->connect; *p;) {
        if (n == DATA_PIPELINE_MAX) return err_set(err, "--connect: more than %d endpoints", DATA_PIPELINE_MAX);
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!len || len >= ZMQ_UTIL_ENDPOINT_CAP) return err_set(err, "--connect: bad endpoint list");
        memcpy(eps[n], p, len), eps[n][len] = 0, ptrs[n] = eps[n], n++;
        p += len + (end ? 1 : 0);
    }
    long spe = (long)r->steps_per_epoch;
    char name[32];
    snprintf(name, sizeof name, "worker%ld", a->rank);
    BatchStreamConfig bc = {.name = name, .augmenters = ptrs, .n_augmenters = n, .window = 2,
                            .batch = (int)a->batch, .height = r->t.s.h, .width = r->t.s.w,
                            .seed = (uint64_t)a->seed, .train = 1, .rank = (int)a->rank,
                            .world = (int)a->world, .epoch = (uint32_t)(r->t.step / spe),
                            .first_batch = (uint64_t)(r->t.step % spe),
                            .limits = wire_limits_default()};
    if (batch_stream_init(&r->bs, r->zctx, &bc, err) < 0) return -1;
    r->streaming = 1;
    /* Batches straight from the shared-memory slots by DMA (where the backend can pin them). */
    batch_stream_pin(&r->bs, r->t.model.ops, r->t.model.ctx);
    WireWriter w;
    wire_writer_init(&w, "hello", 3);
    wire_put_uint(&w, "rank", (uint64_t)a->rank);
    wire_put_uint(&w, "pid", (uint64_t)getpid());
    wire_put_uint(&w, "step", (uint64_t)r->t.step);
    send_coord(r, &w);
    int rc = batch_stream_start(&r->bs, r->stop_fd, err);
    if (rc != 0) return rc < 0 ? -1 : err_set(err, "stopped before the first batch");
    if (r->bs.batches_per_epoch != r->steps_per_epoch || r->bs.n_images != r->ds.n_images)
        return err_set(err, "the loaders see %llu images, this process %zu",
                       (unsigned long long)r->bs.n_images, r->ds.n_images);
    return 0;
}

static void send_step(Run *r, const Batch *bt, const TrainStats *st, double img_s)
{
    int64_t idx[BATCH_STREAM_MAX];
    size_t n = 0;
    uint64_t replaced = 0;
    for (int j = 0; j < r->a.batch; j++) {
        if (!bt->valid[j]) continue;
        if (bt->replaced[j]) replaced++;
        else idx[n++] = bt->index[j];
    }
    WireWriter w;
    wire_writer_init(&w, "step", 11);
    wire_put_uint(&w, "rank", (uint64_t)r->a.rank);
    wire_put_uint(&w, "step", (uint64_t)r->t.step);
    wire_put_uint(&w, "epoch", bt->epoch);
    wire_put_uint(&w, "b", bt->b);
    wire_put_f64(&w, "loss", st->loss);
    wire_put_f64(&w, "class_loss", st->class_loss);
    wire_put_f64(&w, "box_loss", st->box_loss);
    wire_put_f64(&w, "lr", st->lr);
    wire_put_f64(&w, "img_s", img_s);
    wire_put_bin(&w, "indices", idx, n * sizeof *idx);
    wire_put_uint(&w, "replaced", replaced);
    send_coord(r, &w);
}

/* Rank 0 at an epoch's end: the checkpoint, and the snapshot the coordinator evaluates. */
static int worker_epoch_end(Run *r, long done, Err *err)
{
    long total = r->t.s.total_steps;
    if ((done % r->a.ckpt_interval == 0 || r->t.step == total) && save(r, done, err) != 0) return -1;
    char snap[1200] = "";
    long every = r->a.eval_interval ? r->a.eval_interval : 1;
    if (done % every == 0 || r->t.step == total) {
        snprintf(snap, sizeof snap, "%s/snapshot-epoch-%ld.safetensors", r->a.output, done);
        if (trainer_save(&r->t, snap, done, err) != 0) return -1;
    }
    WireWriter w;
    wire_writer_init(&w, "epoch_end", 4);
    wire_put_uint(&w, "rank", (uint64_t)r->a.rank);
    wire_put_uint(&w, "epoch", (uint64_t)done);
    wire_put_uint(&w, "step", (uint64_t)r->t.step);
    wire_put_str(&w, "snapshot", snap);
    send_coord(r, &w);
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------------- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) + (t1.tv_nsec - t0->tv_nsec) * 1e-9;
}

/* One step's batch: from the augmenters (a worker) or decoded here. */
static int next_batch(Run *r, long epoch, long b, Batch *bt, Err *err)
{
    if (r->worker) {
        if (batch_stream_next(&r->bs, bt, -1, err) != 0) return -1;
        ASSERT(bt->epoch == (uint32_t)epoch && bt->b == (uint64_t)b && bt->dtype == ST_F32);
        return 0;
    }
    if (train_batch_load(&r->sampler, (uint32_t)epoch, (size_t)b, (int)r->a.batch, r->images,
                         r->targets, err) != 0)
        return -1;
    gather_targets(r);
    memset(bt, 0, sizeof *bt);
    bt->images = r->images, bt->bbox = r->boxes, bt->cls = r->classes, bt->crowd = r->crowd;
    return 0;
}

/* 0: all steps done; 1: stopped by a signal (every rank at the same step); -1. */
static int train_loop(Run *r, Err *err)
{
    long spe = (long)r->steps_per_epoch, total = r->t.s.total_steps;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long first = r->t.step;
    long global = r->a.batch * r->a.world;
    while (r->t.step < total) {
        int stop = stop_signal_raised(r->stop_fd), any = stop;
        if (r->worker && trainer_agree_stop(&r->t, stop, &any, err) != 0) return -1;
        if (any) return 1;
        long epoch = r->t.step / spe, b = r->t.step % spe;
        Batch bt;
        if (next_batch(r, epoch, b, &bt, err) != 0) return -1;
        long long first_id = r->worker ? (long long)bt.image_id[0] : (long long)r->targets[0].image_id;
        TrainStats st;
        int rc = trainer_step(&r->t, bt.images, bt.bbox, bt.cls, bt.crowd, DATASET_MAX_INSTANCES, &st, err);
        if (rc != 0) {
            if (r->worker) batch_stream_release(&r->bs, &bt);
            return err_wrap(err, "epoch %ld batch %ld (first image id %lld): ", epoch, b, first_id);
        }
        double dt = seconds_since(&t0);
        double ips = (r->t.step - first) * global / (dt > 0 ? dt : 1);
        if (r->worker) {
            send_step(r, &bt, &st, ips);
            batch_stream_release(&r->bs, &bt);
        } else if (r->t.step % r->a.log_interval == 0 || r->t.step == total) {
            printf("epoch %ld step %ld/%ld: loss %.4f (class %.4f box %.5f) lr %.5f grad norm %.3f "
                   "%.2f img/s", epoch, r->t.step, total, st.loss, st.class_loss, st.box_loss,
                   st.lr, st.grad_norm, ips);
            if (r->t.s.precision == PREC_FP16) /* after an overflow the scale shows the halving */
                printf(" loss scale %g (%ld steps skipped)", r->t.loss_scale, r->t.skipped_steps);
            printf("\n");
            fflush(stdout);
        }
        if (r->t.step % spe) continue;
        long done = r->t.step / spe;
        if (r->worker) {
            if (r->a.rank == 0 && worker_epoch_end(r, done, err) != 0) return -1;
            continue;
        }
        if ((done % r->a.ckpt_interval == 0 || r->t.step == total) && save(r, done, err) != 0)
            return -1;
        if (r->a.eval_interval && done % r->a.eval_interval == 0 && evaluate(r, done, err) != 0)
            return -1;
    }
    return 0;
}

/* --resume PATH: a checkpoint file, or a run directory whose newest checkpoint is taken (none
 * yet: a fresh start, so the same command line both starts and continues a run). */
static int resume(Run *r, Err *err)
{
    char latest[1200];
    const char *path = r->a.resume;
    struct stat sb;
    if (!path) return 0;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        checkpoint_latest(r->a.resume, latest, sizeof latest);
        if (!latest[0] && (!r->worker || r->a.rank == 0))
            log_info("--resume: no checkpoint in %s yet, starting from scratch", r->a.resume);
        path = latest[0] ? latest : NULL;
    }
    if (!path) return 0;
    long epoch;
    if (trainer_resume(&r->t, path, &epoch, err) != 0) return -1;
    if (!r->worker || r->a.rank == 0) log_info("resumed from %s at step %ld", path, r->t.step);
    return 0;
}

/* Single-process training, and the worker process: the same loop. */
static int run_training(Run *r, const char *cmd)
{
    Err err;
    if ((r->stop_fd = stop_signal_install()) < 0) {
        err_set(&err, "signal setup: %s", strerror(errno));
        return cli_fail(cmd, &err);
    }
    if (mkdir(r->a.output, 0755) != 0 && errno != EEXIST) {
        err_set(&err, "--output %s: %s", r->a.output, strerror(errno));
        return cli_fail(cmd, &err);
    }
    int rc = run_init(r, &err);
    if (rc == 0) rc = resume(r, &err);
    if (rc == 0 && r->worker) rc = worker_connect(r, &err);
    if (rc == 0) rc = train_loop(r, &err);
    if (rc < 0) {
        int told = send_error(r, err.msg) == 0;
        run_free(r);
        return told ? 1 : cli_fail(cmd, &err);
    }
    long spe = (long)r->steps_per_epoch;
    if (rc == 1) {
        if ((!r->worker || r->a.rank == 0) && save(r, r->t.step / spe, &err) != 0) {
            run_free(r);
            return cli_fail(cmd, &err);
        }
        if (!r->worker || r->a.rank == 0)
            log_info("stopped by a signal at step %ld; --resume continues", r->t.step);
        if (r->worker) send_simple(r, "stopped");
        run_free(r);
        return 130;
    }
    if (r->worker) {
        send_simple(r, "done");
        run_free(r);
        return 0;
    }
    /* The final weights are always evaluated, unless the last epoch's evaluation just did. */
    long epochs_done = r->t.step / spe;
    int evaluated = r->a.eval_interval && epochs_done % r->a.eval_interval == 0;
    if (!evaluated && evaluate(r, epochs_done, &err) != 0) {
        run_free(r);
        return cli_fail(cmd, &err);
    }
    run_free(r);
    return 0;
}

int cmd_train(int argc, char **argv)
{
    Run r;
    Err err;
    memset(&r, 0, sizeof r);
    if (train_args_parse(argc, argv, &r.a, 0, &err) != 0) return cli_fail("train", &err);
    if (r.a.loaders) return train_topology_run(&r.a, argc, argv);
    return run_training(&r, "train");
}

int cmd_worker(int argc, char **argv)
{
    Run r;
    Err err;
    memset(&r, 0, sizeof r);
    r.worker = 1;
    if (train_args_parse(argc, argv, &r.a, 1, &err) != 0) return cli_fail("worker", &err);
    return run_training(&r, "worker");
}
