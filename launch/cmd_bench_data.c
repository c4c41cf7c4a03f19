/* cmd_bench_data.c: the data-pipeline benchmarks of `effdet bench`:
 *
 *   --mode augment   decode + train augment in this process, one core: the per-core rate
 *                    (--procs P runs P such processes at once and sums them: the scaling)
 *   --mode handoff   the ZeroMQ + shared-memory hand-off alone: a producer process answering
 *                    every request at once with a 640x480x3 slot, the consumer handing it back
 *   --mode data      the whole pipeline: --loaders N effdet-loader and --augmenters M
 *                    effdet-augment processes feeding batches to this process
 *   --mode pipeline  the same stages feeding the real train step (--model, --device; random
 *                    init), with every stage's capacity from its stage reports (shared/stage.h)
 *                    and the stage that limits; --no-step (or --consumer none) takes batches
 *                    without training, to measure the data stages alone
 *
 *   effdet bench --mode augment|handoff|data|pipeline (--data DIR | --ann FILE --images DIR)
 *                --image-size HxW [--batch-size B]
 *                [--loaders N] [--augmenters M] [--procs P] [--seconds S] [--json]
 *                [--model NAME] [--device D] [--no-step | --consumer train|none]
 *
 * Each prints img/s (--json: one JSON object with img_per_s). The pipeline mode prints one line
 * per stage, the achieved rate, the queue depth and `limit: STAGE`; see pipeline_print. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "augment/transform.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/data_pipeline.h"
#include "loader/loader_proc.h"
#include "shared/log.h"
#include "shared/stage.h"
#include "shared/stop_signal.h"
#include "worker/batch_stream.h"
#include "worker/trainer.h"

static const char *USAGE =
    "effdet bench --mode augment|handoff|data|pipeline (--data DIR | --ann FILE --images DIR) "
    "--image-size HxW [--batch-size B] "
    "[--loaders N] [--augmenters M] [--procs P] [--seconds S] [--json] "
    "[--model NAME] [--device D] [--amp] [--amp-dtype fp16|bf16] [--no-step | --consumer train|none]";

typedef struct DataBenchArgs {
    const char *mode, *data, *ann, *images, *model, *device;
    long batch, loaders, augmenters, procs;
    double seconds;
    int h, w, json, step;
    Precision precision; /* the train step's activations (--amp) */
} DataBenchArgs;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse(int argc, char **argv, DataBenchArgs *a, Err *err)
{
    static const struct option opts[] = {
        {"mode", required_argument, 0, 'm'},    {"data", required_argument, 0, 'D'},
        {"image-size", required_argument, 0, 's'}, {"batch-size", required_argument, 0, 'b'},
        {"loaders", required_argument, 0, 'l'}, {"augmenters", required_argument, 0, 'a'},
        {"procs", required_argument, 0, 'p'},   {"seconds", required_argument, 0, 'S'},
        {"json", no_argument, 0, 'j'},          {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'},  {"model", required_argument, 0, 'M'},
        {"device", required_argument, 0, 'd'},  {"no-step", no_argument, 0, 'n'},
        {"consumer", required_argument, 0, 'c'}, {"amp", no_argument, 0, 'P'},
        {"amp-dtype", required_argument, 0, 'Q'}, {0, 0, 0, 0}};
    *a = (DataBenchArgs){.batch = 8, .loaders = 1, .augmenters = 1, .procs = 1, .seconds = 5,
                         .h = 512, .w = 512, .model = "tf_efficientdet_d0", .device = "cpu",
                         .step = 1};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': a->mode = optarg; break;
        case 'D': a->data = optarg; break;
        case 'A': a->ann = optarg; break;
        case 'I': a->images = optarg; break;
        case 'j': a->json = 1; break;
        case 'M': a->model = optarg; break;
        case 'd': a->device = optarg; break;
        case 'n': a->step = 0; break;
        case 'P': precision_amp_flag(&a->precision); break;
        case 'Q': if (precision_parse(optarg, &a->precision, err)) return -1; break;
        case 'c':
            if (strcmp(optarg, "train") && strcmp(optarg, "none"))
                return err_set(err, "--consumer %s: expected train or none", optarg);
            a->step = !strcmp(optarg, "train");
            break;
        case 's': if (cli_parse_hw("--image-size", optarg, &a->h, &a->w, err)) return -1; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, BATCH_STREAM_MAX, &a->batch, err)) return -1; break;
        case 'l': if (cli_parse_int("--loaders", optarg, 1, DATA_PIPELINE_MAX, &a->loaders, err)) return -1; break;
        case 'a': if (cli_parse_int("--augmenters", optarg, 1, DATA_PIPELINE_MAX, &a->augmenters, err)) return -1; break;
        case 'p': if (cli_parse_int("--procs", optarg, 1, 256, &a->procs, err)) return -1; break;
        case 'S': if (cli_parse_float("--seconds", optarg, 0.1, 3600, &a->seconds, err)) return -1; break;
        default: return -2;
        }
    }
    if (optind < argc) return err_set(err, "unexpected argument '%s'", argv[optind]);
    if (strcmp(a->mode, "handoff") && !a->data && !(a->ann && a->images))
        return err_set(err, "--mode %s needs a dataset: --data DIR or --ann FILE --images DIR",
                       a->mode);
    return 0;
}

/* ---- augment: decode + train transform in-process ------------------------------------------- */

/* Images per second of one process over the dataset, for `seconds`. */
static int augment_rate(const DataBenchArgs *a, double *ips, Err *err)
{
    Dataset ds;
    if ((a->data ? dataset_open_dir(&ds, a->data, 0, err)
                 : dataset_open(&ds, a->ann, a->images, 0, err)) < 0)
        return -1;
    AugConfig cfg = aug_config_default(a->h, a->w);
    LoaderDecoder dec = {0};
    AugScratch scratch = {0};
    float *dst = malloc(aug_image_bytes(&cfg));
    int rc = dst ? 0 : err_set(err, "out of memory");
    size_t n = 0;
    double t0 = now_s(), t = t0;
    while (rc == 0 && t - t0 < a->seconds) {
        size_t idx = n % ds.n_images, loaded;
        int replaced;
        AugTrainParams p;
        aug_train_params(&cfg, 0, idx, &p);
        const DatasetImage *im = &ds.images[idx];
        rc = loader_decode(&dec, &ds, idx, p.scale_factor * a->h, p.scale_factor * a->w, 0,
                           &loaded, &replaced, err);
        SampleTarget st;
        if (rc == 0 &&
            aug_train_apply(&cfg, &p, &dec.img, im->width, im->height,
                            &ds.boxes[im->first_box], im->n_boxes, &scratch, dst, &st, err) < 0)
            rc = -1;
        n++;
        if ((n & 7) == 0) t = now_s();
    }
    *ips = n / (now_s() - t0);
    free(dst);
    aug_scratch_free(&scratch);
    loader_decoder_free(&dec);
    dataset_free(&ds);
    return rc;
}

/* procs processes at once, each measuring its own rate; the sum comes back through a pipe. */
static int augment_bench(const DataBenchArgs *a, double *total, double *single, Err *err)
{
    int fds[2];
    if (pipe(fds) != 0) return err_set(err, "pipe failed");
    for (long i = 0; i < a->procs; i++) {
        pid_t pid = fork();
        if (pid < 0) return err_set(err, "fork failed");
        if (pid == 0) {
            double ips = -1;
            Err e;
            if (augment_rate(a, &ips, &e) < 0) fprintf(stderr, "effdet bench: %s\n", e.msg);
            ssize_t wn = write(fds[1], &ips, sizeof ips);
            _exit(wn == sizeof ips && ips >= 0 ? 0 : 1);
        }
    }
    close(fds[1]);
    *total = 0, *single = 1e30;
    int bad = 0;
    for (long i = 0; i < a->procs; i++) {
        double v;
        if (read(fds[0], &v, sizeof v) != sizeof v || v < 0) bad = 1;
        else *total += v, *single = v < *single ? v : *single;
    }
    close(fds[0]);
    while (wait(NULL) > 0) {
    }
    return bad ? err_set(err, "a benchmark process failed") : 0;
}

/* ---- handoff: the stage protocol alone --------------------------------------------------------- */

static int handoff_server(const char *ep, int stop_fd)
{
    Err err;
    void *zctx = zmq_util_ctx_new(&err);
    StageServer s;
    StageServerConfig sc = {.endpoint = ep, .seg_tag = "bench", .n_slots = 8,
                            .slot_bytes = 640 * 480 * 3, .limits = wire_limits_default()};
    if (!zctx || stage_server_init(&s, zctx, &sc, &err) < 0) {
        fprintf(stderr, "effdet bench: %s\n", err.msg);
        return 1;
    }
    int64_t shape[3] = {480, 640, 3};
    while (!stop_signal_raised(stop_fd)) {
        if (stage_server_pump(&s, &err) != 0) break;
        StageTask t;
        if (stage_server_next(&s, &t)) {
            WireWriter w;
            stage_server_done_begin(&s, &t, &w, 1);
            wire_put_tensor_shm(&w, "image", ST_U8, 3, shape, &s.seg, t.slot, 0);
            stage_server_finish(&s, &t, &w, &err);
            wire_writer_free(&w);
            continue;
        }
        int ready;
        zmq_util_poll(&s.sock, ZMQ_POLLIN, stop_fd, 50, &ready, &err);
    }
    stage_server_free(&s);
    zmq_util_ctx_term(zctx);
    return 0;
}

static int handoff_bench(const DataBenchArgs *a, double *ips, Err *err)
{
    char dir[RUNDIR_CAP], ep[ZMQ_UTIL_ENDPOINT_CAP];
    if (rundir_create(dir, err) < 0 || rundir_endpoint(dir, "handoff.sock", ep, err) < 0) return -1;
    pid_t pid = fork();
    if (pid == 0) _exit(handoff_server(ep, stop_signal_install()));
    void *zctx = zmq_util_ctx_new(err);
    StageClient c;
    const char *eps[1] = {ep};
    StageClientConfig cc = {.name = "bench", .endpoints = eps, .n_peers = 1, .window = 4,
                            .limits = wire_limits_default()};
    int rc = zctx && stage_client_init(&c, zctx, &cc, err) == 0 ? 0 : -1;
    uint64_t key = 0, got = 0;
    double t0 = 0;
    while (rc == 0) {
        while (stage_client_pending(&c) < 8) stage_client_want(&c, key++);
        StageResult r;
        int prc = stage_client_poll(&c, NULL, 100, &r, err);
        if (prc < 0 || prc == STAGE_FAILED) rc = -1;
        if (prc != STAGE_RESULT) continue;
        WireTensor t;
        uint32_t slot;
        if (wire_get_tensor_shm(&r.done.root, "image", r.seg, &t, &slot, err) < 0) rc = -1;
        stage_client_release(&c, &r);
        if (++got == 100) t0 = now_s(); /* after the start-up */
        if (got > 100 && now_s() - t0 >= a->seconds) break;
    }
    *ips = (got - 100) / (now_s() - t0);
    stage_client_free(&c);
    zmq_util_ctx_term(zctx);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    Err e2;
    rundir_remove(dir, &e2);
    shm_unlink_stale(&e2);
    return rc;
}

/* ---- data: the whole pipeline ---------------------------------------------------------------- */

static int pipeline_bench(const DataBenchArgs *a, double *ips, Err *err)
{
    DataPipelineConfig pc = {.data = a->data, .ann = a->ann, .images = a->images, .loaders = (int)a->loaders,
                             .augmenters = (int)a->augmenters, .batch = (int)a->batch,
                             .height = a->h, .width = a->w, .seed = 1, .aug_slots = 3};
    DataPipeline p;
    if (data_pipeline_start(&p, &pc, err) < 0) return -1;
    void *zctx = zmq_util_ctx_new(err);
    BatchStream s;
    BatchStreamConfig bc = {.name = "bench", .augmenters = p.aug_ptrs, .n_augmenters = p.n_aug,
                            .window = 3, .batch = (int)a->batch, .height = a->h, .width = a->w,
                            .seed = 1, .train = 1, .world = 1, .limits = wire_limits_default(),
                            .alive = data_pipeline_alive, .alive_arg = &p};
    int rc = zctx ? batch_stream_init(&s, zctx, &bc, err) : -1;
    if (rc == 0) rc = batch_stream_start(&s, -1, err);
    long warm = 2 * a->augmenters, got = 0;
    double t0 = now_s();
    while (rc == 0) {
        Batch b;
        if ((rc = batch_stream_next(&s, &b, -1, err)) != 0) break;
        batch_stream_release(&s, &b);
        if (++got == warm) t0 = now_s();
        if (got > warm && now_s() - t0 >= a->seconds) break;
    }
    *ips = (double)(got - warm) * a->batch / (now_s() - t0);
    batch_stream_free(&s);
    zmq_util_ctx_term(zctx);
    data_pipeline_stop(&p);
    return rc < 0 ? -1 : 0;
}

/* ---- pipeline: the data stages feeding the train step, measured by their reports -------------- */

enum { REPORT_STAGES = 2 * DATA_PIPELINE_MAX };

/* The fields of one stage report that the figures need. */
typedef struct StageFigures {
    uint64_t inc, done, items_per_result, slots_held;
    double t_s, busy_s;
} StageFigures;

/* One stage process as its reports tell it. Before the measurement window opens only `last` is
 * kept; opening makes it the baseline `first` (a stage that reports first later, or restarts
 * with a new incarnation, takes its next report as its baseline). */
typedef struct StageTrack {
    char name[STAGE_NAME_CAP], role[16];
    int has_last, has_first;
    StageFigures first, last;
    double held_sum; /* slots_held over the window's reports */
    long held_n;
} StageTrack;

typedef struct ReportListener {
    ZmqSocket sock;
    StageTrack st[REPORT_STAGES];
    int n, open;
    uint64_t n_reports, n_malformed;
} ReportListener;

static int report_parse(const WireMsg *m, char *role, char *name, StageFigures *f, Err *err)
{
    const char *r, *nm;
    size_t rl, nl;
    if (strcmp(m->type, "stage_report"))
        return err_set(err, "message '%s': expected stage_report", m->type);
    if (wire_get_str(&m->root, "role", &r, &rl, err) < 0 ||
        wire_get_str(&m->root, "name", &nm, &nl, err) < 0 ||
        wire_get_uint(&m->root, "inc", &f->inc, err) < 0 ||
        wire_get_uint(&m->root, "done", &f->done, err) < 0 ||
        wire_get_uint(&m->root, "items_per_result", &f->items_per_result, err) < 0 ||
        wire_get_uint(&m->root, "slots_held", &f->slots_held, err) < 0 ||
        wire_get_f64(&m->root, "t_s", &f->t_s, err) < 0 ||
        wire_get_f64(&m->root, "busy_s", &f->busy_s, err) < 0)
        return -1;
    if (rl >= 16 || nl >= STAGE_NAME_CAP || !nl)
        return err_set(err, "message 'stage_report': role or name too long");
    memcpy(role, r, rl), role[rl] = 0;
    memcpy(name, nm, nl), name[nl] = 0;
    return 0;
}

static void report_take(ReportListener *l, const char *role, const char *name,
                        const StageFigures *f)
{
    int i = 0;
    while (i < l->n && strcmp(l->st[i].name, name)) i++;
    if (i == l->n) {
        if (l->n == REPORT_STAGES) return;
        l->n++;
        memset(&l->st[i], 0, sizeof l->st[i]);
        snprintf(l->st[i].name, sizeof l->st[i].name, "%s", name);
        snprintf(l->st[i].role, sizeof l->st[i].role, "%s", role);
    }
    StageTrack *t = &l->st[i];
    t->last = *f, t->has_last = 1;
    if (!l->open) return;
    if (!t->has_first || t->first.inc != f->inc) { /* new, or restarted: its baseline */
        t->first = *f, t->has_first = 1;
        t->held_sum = 0, t->held_n = 0;
    }
    t->held_sum += (double)f->slots_held;
    t->held_n++;
}

/* Reads every report waiting, without blocking. A malformed one is counted and skipped: it says
 * nothing about the pipeline's speed. */
static int reports_drain(ReportListener *l, Err *err)
{
    WireLimits lim = wire_limits_default();
    for (;;) {
        zmq_msg_t msg;
        int rc = zmq_util_recv(&l->sock, &msg, 0, err);
        if (rc == ZMQ_UTIL_AGAIN || rc == ZMQ_UTIL_TERM) {
            zmq_msg_close(&msg);
            return 0;
        }
        if (rc < 0) {
            zmq_msg_close(&msg);
            return -1;
        }
        WireMsg m;
        wire_msg_init(&m);
        char role[16], name[STAGE_NAME_CAP];
        StageFigures f;
        Err derr;
        if (rc == ZMQ_UTIL_MULTIPART ||
            wire_decode(&m, zmq_msg_data(&msg), zmq_msg_size(&msg), &lim, &derr) < 0 ||
            report_parse(&m, role, name, &f, &derr) < 0) {
            if (l->n_malformed++ == 0)
                log_warn("%s: %s", l->sock.endpoint, rc == ZMQ_UTIL_MULTIPART ? err->msg : derr.msg);
        } else {
            report_take(l, role, name, &f);
            l->n_reports++;
        }
        wire_msg_free(&m);
        zmq_msg_close(&msg);
    }
}

/* Opens the window: every stage's latest report is its baseline. */
static void reports_open(ReportListener *l)
{
    l->open = 1;
    for (int i = 0; i < l->n; i++) {
        StageTrack *t = &l->st[i];
        t->has_first = t->has_last;
        t->first = t->last;
        t->held_sum = 0, t->held_n = 0;
    }
}

/* One role's figures over the window. NAN where its reports do not say (none came, or it did
 * no work: no busy time to divide by). */
typedef struct RoleFigures {
    int procs;            /* configured */
    int reporting;        /* processes with a window */
    double per_proc;      /* images per busy second of one process: its capacity */
    double total;         /* per_proc * procs */
    double busy;          /* busy time / wall time, over its processes */
    double held;          /* slots_held, time-averaged, summed over its processes */
} RoleFigures;

static void role_figures(const ReportListener *l, const char *role, int procs, RoleFigures *r)
{
    double items = 0, busy = 0, wall = 0;
    *r = (RoleFigures){.procs = procs, .per_proc = NAN, .total = NAN, .busy = NAN, .held = 0};
    for (int i = 0; i < l->n; i++) {
        const StageTrack *t = &l->st[i];
        if (strcmp(t->role, role) || !t->has_first) continue;
        r->reporting++;
        items += (double)(t->last.done - t->first.done) * (double)t->last.items_per_result;
        busy += t->last.busy_s - t->first.busy_s;
        wall += t->last.t_s - t->first.t_s;
        if (t->held_n) r->held += t->held_sum / t->held_n;
    }
    if (busy > 0 && items > 0) r->per_proc = items / busy, r->total = r->per_proc * procs;
    if (wall > 0) r->busy = busy / wall;
}

typedef struct PipelineFigures {
    RoleFigures loader, augment;
    double worker;        /* the train step's images per second (NAN with --no-step) */
    double step_ms;
    double achieved;      /* images per second the worker took in the window */
    double data_wait;     /* the worker's time spent waiting for batches / window */
    double step_frac;     /* the worker's time in the train step / window */
    double queue_depth;   /* batches finished and waiting for the worker, time-averaged */
    double elapsed;
    long batches;
    const char *limit;    /* "loader", "augment", "worker (train step)" or "unknown" */
} PipelineFigures;

/* The stage of lowest total capacity. */
static void pick_limit(PipelineFigures *f)
{
    double best = INFINITY;
    f->limit = "unknown";
    if (!isnan(f->loader.total) && f->loader.total < best)
        best = f->loader.total, f->limit = "loader";
    if (!isnan(f->augment.total) && f->augment.total < best)
        best = f->augment.total, f->limit = "augment";
    if (!isnan(f->worker) && f->worker < best) f->limit = "worker (train step)";
}

/* Trains on batch b (its images are F32: the pipeline's dtype). */
static int train_on(Trainer *t, const Batch *b, Err *err)
{
    if (b->dtype != ST_F32) return err_set(err, "the augmenters deliver non-F32 batches");
    TrainStats st;
    return trainer_step(t, b->images, b->bbox, b->cls, b->crowd, DATASET_MAX_INSTANCES, &st, err);
}

/* The dataset's class count from the augmenters' welcome, so labels fit the model's head. */
static int stream_classes(const BatchStream *s, int *n, Err *err)
{
    WireMap info;
    uint64_t v;
    if (!stage_client_info(&s->cli, &info)) return err_set(err, "no augmenter welcomed us");
    if (wire_get_uint(&info, "num_classes", &v, err) < 0) return -1;
    if (v < 1 || v > 100000) return err_set(err, "the loaders report %llu classes",
                                            (unsigned long long)v);
    *n = (int)v;
    return 0;
}

/* Takes batches (and trains on them) until the window of a->seconds after the warm-up is over. */
static int pipeline_loop(const DataBenchArgs *a, BatchStream *s, Trainer *t, ReportListener *l,
                         PipelineFigures *f, Err *err)
{
    /* Warm-up: the first steps allocate and fault pages in, and the stages fill their queues. */
    long warm = a->augmenters * 2 > 3 ? a->augmenters * 2 : 3, got = 0;
    double t0 = now_s(), waited = 0, stepped = 0;
    for (;;) {
        int in_window = got >= warm; /* this batch is asked for after the window opened */
        double ask = now_s();
        Batch b;
        int rc = batch_stream_next(s, &b, -1, err);
        if (rc != 0) return rc < 0 ? -1 : err_set(err, "the batch stream ended");
        double have = now_s();
        rc = t ? train_on(t, &b, err) : 0;
        double done = now_s();
        batch_stream_release(s, &b);
        if (rc < 0) return err_wrap(err, "train step on epoch %u batch %llu: ", b.epoch,
                                    (unsigned long long)b.b);
        if (reports_drain(l, err) < 0) return -1;
        if (in_window) waited += have - ask, stepped += done - have;
        if (++got == warm) {
            t0 = now_s();
            reports_open(l);
        }
        if (in_window && done - t0 >= a->seconds) break;
    }
    f->elapsed = now_s() - t0;
    f->batches = got - warm;
    double images = (double)f->batches * a->batch;
    f->achieved = images / f->elapsed;
    f->data_wait = waited / f->elapsed;
    f->step_frac = stepped / f->elapsed;
    f->worker = t && stepped > 0 ? images / stepped : NAN;
    f->step_ms = t ? stepped / f->batches * 1e3 : NAN;
    return reports_drain(l, err);
}

static int pipeline_train_bench(const DataBenchArgs *a, PipelineFigures *f, Err *err)
{
    char report_ep[ZMQ_UTIL_ENDPOINT_CAP];
    DataPipeline p;
    /* Reports every 100 ms: a few seconds of window are then tens of reports per stage. */
    DataPipelineConfig pc = {.data = a->data, .ann = a->ann, .images = a->images,
                             .loaders = (int)a->loaders, .augmenters = (int)a->augmenters,
                             .batch = (int)a->batch, .height = a->h, .width = a->w, .seed = 1,
                             .aug_slots = 3, .hb_ms = 100, .report = report_ep};
    if (data_pipeline_open(&p, err) < 0) return -1;
    ReportListener *l = calloc(1, sizeof *l);
    void *zctx = zmq_util_ctx_new(err);
    /* linger 0: reports still queued at the end are worthless. */
    ZmqSocketConfig zc = {.type = ZMQ_PULL, .max_msg_bytes = 4096, .linger_ms = 0};
    int rc = l && zctx ? 0 : (l ? -1 : err_set(err, "out of memory"));
    /* Bound before the stages start, so their first report (sent at start) is heard. */
    if (rc == 0 && (rundir_endpoint(p.rundir, "report.sock", report_ep, err) < 0 ||
                    zmq_util_bind(&l->sock, zctx, &zc, report_ep, err) < 0))
        rc = -1;
    int spawned = rc == 0 && data_pipeline_spawn(&p, &pc, err) == 0;
    if (rc == 0 && !spawned) rc = -1;
    BatchStream s;
    int have_stream = 0;
    BatchStreamConfig bc = {.name = "bench", .augmenters = p.aug_ptrs, .n_augmenters = p.n_aug,
                            .window = 2, .batch = (int)a->batch, .height = a->h, .width = a->w,
                            .seed = 1, .train = 1, .world = 1, .limits = wire_limits_default(),
                            .alive = data_pipeline_alive, .alive_arg = &p};
    if (rc == 0) rc = batch_stream_init(&s, zctx, &bc, err), have_stream = rc == 0;
    if (rc == 0 && (rc = batch_stream_start(&s, -1, err)) > 0)
        rc = err_set(err, "the data stages stopped before the first batch");
    Trainer t;
    int have_trainer = 0;
    int ncls = 0;
    if (rc == 0 && a->step && (rc = stream_classes(&s, &ncls, err)) == 0) {
        TrainSettings ts;
        train_settings_default(&ts, a->model, ncls, (int)a->batch, a->h, a->w);
        ts.total_steps = 1000000; /* the schedule does not matter to the speed */
        ts.precision = a->precision;
        rc = trainer_init(&t, &ts, a->device, NULL, err);
        have_trainer = rc == 0;
        if (have_trainer) batch_stream_pin(&s, t.model.ops, t.model.ctx); /* as the worker does */
    }
    if (rc == 0) rc = pipeline_loop(a, &s, have_trainer ? &t : NULL, l, f, err);
    if (rc == 0) {
        role_figures(l, "loader", (int)a->loaders, &f->loader);
        role_figures(l, "augment", (int)a->augmenters, &f->augment);
        /* The augmenters' held slots are the batches finished and not yet given back: those
         * waiting for the worker plus, while it trains, the one it trains on. */
        f->queue_depth = fmax(0, f->augment.held - f->step_frac);
        pick_limit(f);
    }
    /* The stream first: it unregisters its pinned slots through the trainer's context. */
    if (have_stream) batch_stream_free(&s);
    if (have_trainer) trainer_free(&t);
    if (l) zmq_util_close(&l->sock);
    free(l);
    zmq_util_ctx_term(zctx);
    data_pipeline_stop(&p);
    return rc < 0 ? -1 : 0;
}

/* A figure for JSON: null when unknown. */
static void json_num(const char *key, double v, const char *sep)
{
    if (isnan(v) || isinf(v)) printf("\"%s\": null%s", key, sep);
    else printf("\"%s\": %.3f%s", key, v, sep);
}

static void json_role(const char *name, const RoleFigures *r)
{
    printf("\"%s\": {\"procs\": %d, \"reporting\": %d, ", name, r->procs, r->reporting);
    json_num("img_per_s_per_proc", r->per_proc, ", ");
    json_num("img_per_s", r->total, ", ");
    json_num("busy", r->busy, "}, ");
}

static void text_role(const char *name, const RoleFigures *r)
{
    if (isnan(r->total))
        printf("%-7s x%d: no figures (%d of %d processes reported work)\n", name, r->procs,
               r->reporting, r->procs);
    else
        printf("%-7s x%d: %.1f img/s per process, %.1f img/s total (busy %.0f%%)\n", name,
               r->procs, r->per_proc, r->total, isnan(r->busy) ? 0 : 100 * r->busy);
}

/* Text: one line per stage, the pipeline's achieved rate and queue, the limit. JSON: one object
 * with the same figures (null where unknown). */
static void pipeline_print(const DataBenchArgs *a, const PipelineFigures *f)
{
    if (a->json) {
        printf("{\"mode\": \"pipeline\", \"model\": \"%s\", \"device\": \"%s\", \"step\": %s, "
               "\"image_size\": [%d, %d], \"batch_size\": %ld, \"loaders\": %ld, "
               "\"augmenters\": %ld, \"seconds\": %.3f, \"batches\": %ld, ",
               a->model, a->device, a->step ? "true" : "false", a->h, a->w, a->batch,
               a->loaders, a->augmenters, f->elapsed, f->batches);
        json_role("loader", &f->loader);
        json_role("augment", &f->augment);
        printf("\"worker\": {\"procs\": 1, ");
        json_num("img_per_s", a->step ? f->worker : f->achieved, ", ");
        json_num("step_ms", f->step_ms, ", ");
        json_num("data_wait", f->data_wait, "}, ");
        json_num("img_per_s", f->achieved, ", ");
        json_num("queue_depth", f->queue_depth, ", ");
        printf("\"limit\": \"%s\"}\n", f->limit);
        return;
    }
    text_role("loader", &f->loader);
    text_role("augment", &f->augment);
    if (a->step)
        printf("worker  x1: %.1f img/s (train step %s %s, %.1f ms per batch of %ld)\n", f->worker,
               a->model, a->device, f->step_ms, a->batch);
    else
        printf("worker  x1: no train step (takes batches and hands them back)\n");
    printf("pipeline: %.1f img/s achieved over %.1f s; queue depth %.2f batches (finished, waiting "
           "for the worker); the worker waited for data %.0f%% of the time\n",
           f->achieved, f->elapsed, f->queue_depth, 100 * f->data_wait);
    printf("limit: %s\n", f->limit);
}

int cmd_bench_data(int argc, char **argv)
{
    DataBenchArgs a;
    Err err;
    int rc = parse(argc, argv, &a, &err);
    if (rc == -2) return cli_usage(USAGE);
    if (rc < 0) return cli_fail("bench", &err);
    if (!strcmp(a.mode, "pipeline")) {
        PipelineFigures f;
        if (pipeline_train_bench(&a, &f, &err) < 0) return cli_fail("bench", &err);
        pipeline_print(&a, &f);
        return 0;
    }
    double ips = 0, single = 0;
    if (!strcmp(a.mode, "augment")) rc = augment_bench(&a, &ips, &single, &err);
    else if (!strcmp(a.mode, "handoff")) rc = handoff_bench(&a, &ips, &err);
    else rc = pipeline_bench(&a, &ips, &err);
    if (rc < 0) return cli_fail("bench", &err);
    if (a.json)
        printf("{\"mode\": \"%s\", \"image_size\": [%d, %d], \"batch_size\": %ld, \"loaders\": %ld, "
               "\"augmenters\": %ld, \"procs\": %ld, \"seconds\": %.1f, \"img_per_s\": %.1f}\n",
               a.mode, a.h, a.w, a.batch, a.loaders, a.augmenters, a.procs, a.seconds, ips);
    else if (!strcmp(a.mode, "augment"))
        printf("decode + train augment to %dx%d: %.1f img/s with %ld process(es) (slowest %.1f "
               "img/s each)\n", a.h, a.w, ips, a.procs, single);
    else if (!strcmp(a.mode, "handoff"))
        printf("ZeroMQ + shm hand-off of 640x480x3 slots: %.0f msg/s\n", ips);
    else
        printf("pipeline %ld loader(s) x %ld augmenter(s), batch %ld at %dx%d: %.1f img/s\n",
               a.loaders, a.augmenters, a.batch, a.h, a.w, ips);
    return 0;
}
