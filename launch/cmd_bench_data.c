/* cmd_bench_data.c: the data-pipeline benchmarks of `effdet bench`:
 *
 *   --mode augment  decode + train augment in this process, one core: the per-core rate
 *                   (--procs P runs P such processes at once and sums them: the scaling)
 *   --mode handoff  the ZeroMQ + shared-memory hand-off alone: a producer process answering
 *                   every request at once with a 640x480x3 slot, the consumer handing it back
 *   --mode data     the whole pipeline: --loaders N effdet-loader and --augmenters M
 *                   effdet-augment processes feeding batches to this process
 *
 *   effdet bench --mode augment|handoff|data (--data DIR | --ann FILE --images DIR)
 *                --image-size HxW [--batch-size B]
 *                [--loaders N] [--augmenters M] [--procs P] [--seconds S] [--json]
 *
 * Each prints img/s (--json: one JSON object with img_per_s). */
#include <getopt.h>
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
#include "shared/stage.h"
#include "shared/stop_signal.h"
#include "worker/batch_stream.h"

static const char *USAGE =
    "effdet bench --mode augment|handoff|data (--data DIR | --ann FILE --images DIR) "
    "--image-size HxW [--batch-size B] "
    "[--loaders N] [--augmenters M] [--procs P] [--seconds S] [--json]";

typedef struct DataBenchArgs {
    const char *mode, *data, *ann, *images;
    long batch, loaders, augmenters, procs;
    double seconds;
    int h, w, json;
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
        {"images", required_argument, 0, 'I'},  {0, 0, 0, 0}};
    *a = (DataBenchArgs){.batch = 8, .loaders = 1, .augmenters = 1, .procs = 1, .seconds = 5,
                         .h = 512, .w = 512};
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': a->mode = optarg; break;
        case 'D': a->data = optarg; break;
        case 'A': a->ann = optarg; break;
        case 'I': a->images = optarg; break;
        case 'j': a->json = 1; break;
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

int cmd_bench_data(int argc, char **argv)
{
    DataBenchArgs a;
    Err err;
    int rc = parse(argc, argv, &a, &err);
    if (rc == -2) return cli_usage(USAGE);
    if (rc < 0) return cli_fail("bench", &err);
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
