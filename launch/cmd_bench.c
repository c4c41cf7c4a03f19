/* cmd_bench.c: `effdet bench --mode forward|infer|infer-jpeg|train --model NAME
 *   --device cpu|cuda[:N] --batch-size B [--image-size HxW] [--iters N] [--warmup N] [--tf32]
 *   [--amp] [--amp-dtype fp16|bf16] [--profile] [--json]`.
 *
 * forward:    the network alone on a synthetic input already in backend memory (random weights,
 *             fixed seed).
 * infer:      what a serving loop costs per batch: the synthetic input already in backend memory,
 *             forward + detections (top-k + NMS) through worker/detector.h's detector_infer (one
 *             graph replay where the backend records graphs), the detections downloaded.
 * infer-jpeg: the whole single-image path of `effdet infer`: JPEG decode + letterbox resize +
 *             normalize + upload + forward + detections, on a synthetic JPEG made in memory.
 * train:      trainer_step on a synthetic batch (targets, forward, loss, backward, clipping, SGD,
 *             EMA).
 * Prints img/s and the mean latency of one batch (of one step in train); --json prints one JSON
 * object on one line, always with img_per_s and latency_ms. --amp runs activations in fp16
 * (--amp-dtype bf16: bf16); "precision" says fp16, bf16, tf32 or fp32.
 *
 * --profile adds one profiled iteration after the timed ones (worker/model/profile.h): every op
 * of the model between backend timer marks, summed per kind and direction with its least memory
 * traffic, and what the ops leave of the iteration as an "other" row. It is an extra iteration so
 * that its marks cannot slow the timed ones.
 *
 * The data modes (augment, handoff, data, pipeline: the data stages, alone or feeding the train
 * step) have flags of their own and live in cmd_bench_data.c. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/infer_pipeline.h"
#include "shared/rng.h"
#include "worker/model/profile.h"
#include "worker/trainer.h"

static const char *USAGE =
    "effdet bench --mode forward|infer|infer-jpeg|train|data|augment|handoff|pipeline --model NAME "
    "[--device cpu|cuda[:N]] [--batch-size B] [--image-size HxW] [--iters N] [--warmup N] [--tf32] "
    "[--amp] [--amp-dtype fp16|bf16] [--profile] [--json]";

typedef struct BenchArgs {
    const char *mode, *model, *device;
    long batch, iters, warmup;
    int h, w, json, tf32, profile;
    Precision precision;
} BenchArgs;

/* What a run measured, for the report. */
typedef struct BenchResult {
    double elapsed;         /* seconds of the timed iterations */
    char model[64];         /* the variant's name */
    int h, w;
    double arena_mb;        /* inference modes */
    long skipped;           /* train: fp16 steps skipped for overflowing gradients */
    int profiled;
    ProfSummary prof;
} BenchResult;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse(int argc, char **argv, BenchArgs *a, Err *err)
{
    enum { O_AMP = 256, O_AMP_DTYPE, O_PROFILE };
    static const struct option opts[] = {
        {"mode", required_argument, 0, 'm'},   {"model", required_argument, 0, 'M'},
        {"device", required_argument, 0, 'd'}, {"batch-size", required_argument, 0, 'b'},
        {"image-size", required_argument, 0, 's'}, {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'}, {"json", no_argument, 0, 'j'},
        {"tf32", no_argument, 0, 'T'},         {"amp", no_argument, 0, O_AMP},
        {"amp-dtype", required_argument, 0, O_AMP_DTYPE},
        {"profile", no_argument, 0, O_PROFILE},
        {0, 0, 0, 0}};
    *a = (BenchArgs){.mode = "forward", .model = "tf_efficientdet_d0", .device = "cpu", .batch = 1,
                     .iters = 10, .warmup = 2, .precision = PREC_FP32};
    int opt;
    optind = 1;
    opterr = 0; /* getopt's own messages would make a second error line */
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': a->mode = optarg; break;
        case 'M': a->model = optarg; break;
        case 'd': a->device = optarg; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, 4096, &a->batch, err)) return -1; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &a->h, &a->w, err)) return -1; break;
        case 'i': if (cli_parse_int("--iters", optarg, 1, 1000000, &a->iters, err)) return -1; break;
        case 'w': if (cli_parse_int("--warmup", optarg, 0, 1000000, &a->warmup, err)) return -1; break;
        case 'j': a->json = 1; break;
        case 'T': a->tf32 = 1; break;
        case O_AMP: precision_amp_flag(&a->precision); break;
        case O_AMP_DTYPE: if (precision_parse(optarg, &a->precision, err)) return -1; break;
        case O_PROFILE: a->profile = 1; break;
        default:
            return err_set(err, "%s: unknown option or missing value (usage: %s)",
                           argv[optind - 1], USAGE);
        }
    }
    if (optind != argc) return err_set(err, "unexpected argument '%s'", argv[optind]);
    if (strcmp(a->mode, "forward") && strcmp(a->mode, "infer") && strcmp(a->mode, "infer-jpeg") &&
        strcmp(a->mode, "train"))
        return err_set(err, "--mode %s: expected forward, infer, infer-jpeg, train, data, augment, "
                       "handoff or pipeline", a->mode);
    return 0;
}

/* The "precision" of the report: the activation type under --amp, else the convolutions' math. */
static const char *precision_label(const BenchArgs *a)
{
    return a->precision != PREC_FP32 ? precision_name(a->precision) : a->tf32 ? "tf32" : "fp32";
}

/* Peak resident memory of the process so far, in MB. */
static double peak_rss_mb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0;
}

/* One profiled iteration of `iter` on model m: marks around it, the profile attached only for
 * its duration. The stream is drained first so the iteration starts on an idle backend. */
typedef int (*BenchIter)(void *arg, Err *err);

static int profile_iteration(Model *m, BenchIter iter, void *arg, ProfSummary *s, Err *err)
{
    ModelProfile p;
    if (profile_init(&p, m, err) != 0) return -1;
    m->ops->sync(m->ctx);
    profile_reset(&p);
    m->prof = &p;
    profile_step_begin(&p);
    int rc = iter(arg, err);
    profile_step_end(&p);
    m->prof = NULL;
    if (rc == 0) rc = profile_summarize(&p, s, err);
    profile_free(&p);
    return rc;
}

/* ---- train ---------------------------------------------------------------------------------- */

typedef struct TrainBench {
    Trainer t;
    long batch;
    float *input, *boxes;
    int32_t *classes;
    long skipped;
} TrainBench;

enum { BENCH_BOXES = 4 }; /* ground-truth boxes per synthetic image */

static int train_iter(void *arg, Err *err)
{
    TrainBench *b = arg;
    TrainStats st;
    if (trainer_step(&b->t, b->input, b->boxes, b->classes, NULL, BENCH_BOXES, &st, err) != 0)
        return -1;
    b->skipped += st.skipped != 0;
    return 0;
}

/* A normal-noise batch with BENCH_BOXES random boxes per image (fixed seed). */
static int train_batch(TrainBench *b, int h, int w, Err *err)
{
    size_t n_in = (size_t)b->batch * h * w * 3, n_box = (size_t)b->batch * BENCH_BOXES;
    b->input = malloc(n_in * sizeof(float));
    b->boxes = malloc(n_box * 4 * sizeof(float));
    b->classes = malloc(n_box * sizeof(int32_t));
    if (!b->input || !b->boxes || !b->classes) return err_set(err, "bench: out of memory");
    Rng r;
    rng_init(&r, 3, 0, 0);
    for (size_t i = 0; i < n_in; i++) b->input[i] = rng_normal(&r);
    for (size_t i = 0; i < n_box; i++) {
        float y = rng_uniform(&r) * h * 0.6f, x = rng_uniform(&r) * w * 0.6f;
        float bh = 8 + rng_uniform(&r) * h * 0.4f, bw = 8 + rng_uniform(&r) * w * 0.4f;
        float *bx = b->boxes + 4 * i;
        bx[0] = y, bx[1] = x, bx[2] = y + bh, bx[3] = x + bw;
        b->classes[i] = 1 + (int32_t)(rng_u32(&r) % 90);
    }
    return 0;
}

static int run_train(const BenchArgs *a, BenchResult *res, Err *err)
{
    ModelConfig cfg;
    if (model_config_get(a->model, 0, &cfg, err) != 0) return -1;
    snprintf(res->model, sizeof res->model, "%s", cfg.name);
    res->h = a->h ? a->h : cfg.image_h, res->w = a->w ? a->w : cfg.image_w;
    TrainSettings s;
    train_settings_default(&s, cfg.name, 90, (int)a->batch, res->h, res->w);
    s.total_steps = a->warmup + a->iters + a->profile; /* the schedule covers every step taken */
    s.tf32 = a->tf32;
    s.precision = a->precision;
    TrainBench b = {.batch = a->batch};
    if (trainer_init(&b.t, &s, a->device, NULL, err) != 0) return -1;
    int rc = train_batch(&b, res->h, res->w, err);
    for (long i = 0; rc == 0 && i < a->warmup + a->iters; i++) {
        if (i == a->warmup) {
            b.t.model.ops->sync(b.t.model.ctx);
            b.skipped = 0;
            res->elapsed = now_s();
        }
        rc = train_iter(&b, err);
    }
    if (rc == 0) {
        b.t.model.ops->sync(b.t.model.ctx);
        res->elapsed = now_s() - res->elapsed;
        res->skipped = b.skipped;
    }
    if (rc == 0 && a->profile) {
        rc = profile_iteration(&b.t.model, train_iter, &b, &res->prof, err);
        res->profiled = rc == 0;
    }
    free(b.input), free(b.boxes), free(b.classes);
    trainer_free(&b.t);
    return rc;
}

/* ---- forward, infer, infer-jpeg ------------------------------------------------------------- */

typedef struct InferBench {
    const BenchArgs *a;
    InferPipeline p;
    unsigned char *jpeg; /* infer-jpeg: one synthetic photo */
    size_t jpeg_size;
    InferResult res;
} InferBench;

/* One synthetic image: a smooth gradient with a few blocks, so JPEG decode does real work. */
static int synthetic_jpeg(int w, int h, unsigned char **jpeg, size_t *size, Err *err)
{
    RgbImage img = {.w = w, .h = h, .px = malloc((size_t)w * h * 3)};
    if (!img.px) return err_set(err, "bench: out of memory");
    Rng r;
    rng_init(&r, 7, 0, 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                img.px[((size_t)y * w + x) * 3 + c] =
                    (unsigned char)((x * (c + 1) + y * (3 - c)) / 4 + (rng_u32(&r) & 15));
    int rc = jpeg_encode_rgb(&img, 90, jpeg, size, err);
    rgb_image_free(&img);
    return rc;
}

static int infer_iter(void *arg, Err *err)
{
    InferBench *b = arg;
    InferPipeline *p = &b->p;
    if (!strcmp(b->a->mode, "infer-jpeg")) {
        for (int i = 0; i < p->batch; i++)
            if (infer_pipeline_add_jpeg(p, b->jpeg, b->jpeg_size, i, "synthetic.jpg", err) != 0)
                return -1;
        return infer_pipeline_run(p, p->batch, &b->res, err);
    }
    if (!strcmp(b->a->mode, "forward")) {
        model_forward(&p->model);
        return 0;
    }
    return detector_infer(&p->detector, p->batch, NULL, NULL, NULL, p->dets, b->res.count, err);
}

static int run_infer(const BenchArgs *a, BenchResult *res, Err *err)
{
    InferBench *b = calloc(1, sizeof *b); /* InferResult is large for a stack */
    if (!b) return err_set(err, "bench: out of memory");
    b->a = a;
    InferOptions o = {.model = a->model, .device = a->device, .weights = NULL, .num_classes = 0,
                      .batch = (int)a->batch, .h = a->h, .w = a->w, .score_thresh = 0.0f,
                      .tf32 = a->tf32, .precision = a->precision};
    int rc = infer_pipeline_init(&b->p, &o, err);
    InferPipeline *p = &b->p;
    /* A typical COCO photo, 640x480, letterboxed to the model's input. */
    if (rc == 0 && !strcmp(a->mode, "infer-jpeg"))
        rc = synthetic_jpeg(640, 480, &b->jpeg, &b->jpeg_size, err);
    if (rc == 0 && strcmp(a->mode, "infer-jpeg")) {
        /* A real-looking input, uploaded once: values matter on CPUs (denormals), so not the
         * arena's zeros. */
        Rng r;
        rng_init(&r, 11, 0, 0);
        size_t n = act_count(p->model.input);
        for (size_t i = 0; i < n; i++) p->host_input[i] = rng_normal(&r);
        model_upload_input(&p->model, p->host_input);
    }
    for (long i = 0; rc == 0 && i < a->warmup + a->iters; i++) {
        if (i == a->warmup) {
            p->model.ops->sync(p->model.ctx);
            res->elapsed = now_s();
        }
        rc = infer_iter(b, err);
    }
    if (rc == 0) {
        p->model.ops->sync(p->model.ctx);
        res->elapsed = now_s() - res->elapsed;
        snprintf(res->model, sizeof res->model, "%s", p->cfg.name);
        res->h = p->h, res->w = p->w;
        res->arena_mb = p->model.arena_bytes / 1048576.0;
    }
    if (rc == 0 && a->profile) {
        /* A graph replay runs none of the model's code, so no hook, and timer marks cannot go
         * into a recording: dropping the graph makes the next detector_infer run eagerly. */
        detector_drop_graph(&p->detector);
        rc = profile_iteration(&p->model, infer_iter, b, &res->prof, err);
        res->profiled = rc == 0;
    }
    infer_pipeline_free(p);
    free(b->jpeg);
    free(b);
    return rc;
}

/* ---- report --------------------------------------------------------------------------------- */

/* The profile row of time no model op accounts for, named for what runs there in each mode. */
static const char *other_label(const char *mode)
{
    return !strcmp(mode, "train")        ? "other (loss, optimizer, targets)"
           : !strcmp(mode, "infer")      ? "other (detect, download)"
           : !strcmp(mode, "infer-jpeg") ? "other (decode, resize, upload, detect)"
                                         : "other (between ops)";
}

static void report(const BenchArgs *a, const BenchResult *r)
{
    double ips = a->batch * a->iters / r->elapsed, latency_ms = r->elapsed / a->iters * 1e3;
    int train = !strcmp(a->mode, "train");
    if (a->json) {
        printf("{\"mode\": \"%s\", \"model\": \"%s\", \"device\": \"%s\", \"batch_size\": %ld, "
               "\"image_size\": [%d, %d], \"precision\": \"%s\", \"tf32\": %s, \"threads\": %d, "
               "\"iters\": %ld, \"img_per_s\": %.3f, \"latency_ms\": %.3f",
               a->mode, r->model, a->device, a->batch, r->h, r->w, precision_label(a),
               a->tf32 ? "true" : "false", omp_get_max_threads(), a->iters, ips, latency_ms);
        if (train)
            printf(", \"skipped_steps\": %ld, \"peak_rss_mb\": %.1f", r->skipped, peak_rss_mb());
        else
            printf(", \"arena_mb\": %.1f", r->arena_mb);
        if (r->profiled) {
            printf(", ");
            profile_print_json(stdout, &r->prof, other_label(a->mode));
        }
        printf("}\n");
        return;
    }
    printf("%s %s %s batch %ld %dx%d %s, %d threads: %.2f img/s, %.2f ms per %s", a->mode,
           r->model, a->device, a->batch, r->h, r->w, precision_label(a), omp_get_max_threads(),
           ips, latency_ms, train ? "step" : "batch");
    if (train) printf(", peak memory %.0f MB", peak_rss_mb());
    if (train && r->skipped) printf(", %ld steps skipped (fp16 overflow)", r->skipped);
    printf("\n");
    if (r->profiled) profile_print_table(stdout, &r->prof, other_label(a->mode));
}

int cmd_bench(int argc, char **argv)
{
    for (int i = 1; i + 1 < argc; i++) /* the data modes have flags of their own */
        if (!strcmp(argv[i], "--mode") && (!strcmp(argv[i + 1], "data") ||
                                          !strcmp(argv[i + 1], "augment") ||
                                          !strcmp(argv[i + 1], "handoff") ||
                                          !strcmp(argv[i + 1], "pipeline")))
            return cmd_bench_data(argc, argv);
    BenchArgs a;
    Err err;
    if (parse(argc, argv, &a, &err) != 0) return cli_fail("bench", &err);
    BenchResult r = {0};
    int rc = !strcmp(a.mode, "train") ? run_train(&a, &r, &err) : run_infer(&a, &r, &err);
    if (rc != 0) return cli_fail("bench", &err);
    report(&a, &r);
    return 0;
}
