/* cmd_bench.c: `effdet bench --mode forward|infer --model NAME --device cpu|cuda[:N]
 *   --batch-size B [--image-size HxW] [--iters N] [--warmup N] [--json]`.
 *
 * forward: the network alone on a synthetic input (random weights, fixed seed).
 * infer:   the whole single-image path of `effdet infer`: JPEG decode + letterbox resize +
 *          normalize + forward + top-k/NMS, on a synthetic JPEG made in memory.
 * Prints img/s and the mean latency of one batch; --json prints one JSON object.
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
#include "worker/trainer.h"

static const char *USAGE =
    "effdet bench --mode forward|infer|train|data|augment|handoff|pipeline --model NAME [--device cpu|cuda[:N]] [--batch-size B] "
    "[--image-size HxW] [--iters N] [--warmup N] [--tf32] [--json]";

typedef struct BenchArgs {
    const char *mode, *model, *device;
    long batch, iters, warmup;
    int h, w, json, tf32;
} BenchArgs;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse(int argc, char **argv, BenchArgs *a, Err *err)
{
    static const struct option opts[] = {
        {"mode", required_argument, 0, 'm'},   {"model", required_argument, 0, 'M'},
        {"device", required_argument, 0, 'd'}, {"batch-size", required_argument, 0, 'b'},
        {"image-size", required_argument, 0, 's'}, {"iters", required_argument, 0, 'i'},
        {"warmup", required_argument, 0, 'w'}, {"json", no_argument, 0, 'j'},
        {"tf32", no_argument, 0, 'T'},
        {0, 0, 0, 0}};
    *a = (BenchArgs){.mode = "forward", .model = "tf_efficientdet_d0", .device = "cpu", .batch = 1,
                     .iters = 10, .warmup = 2};
    int opt;
    optind = 1;
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
        default: return err_set(err, "unknown option (usage: %s)", USAGE);
        }
    }
    if (optind != argc) return err_set(err, "unexpected argument '%s'", argv[optind]);
    if (strcmp(a->mode, "forward") && strcmp(a->mode, "infer") && strcmp(a->mode, "train"))
        return err_set(err, "--mode %s: expected forward, infer or train", a->mode);
    return 0;
}

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

static int run_forward(const BenchArgs *a, InferPipeline *p, double *elapsed)
{
    /* A real-looking input: values matter on CPUs (denormals), so not the arena's zeros. */
    Rng r;
    rng_init(&r, 11, 0, 0);
    size_t n = act_count(p->model.input);
    for (size_t i = 0; i < n; i++) p->host_input[i] = rng_normal(&r);
    p->model.ops->mem_upload(p->model.ctx, p->model.input.p, p->host_input, n * sizeof(float));
    for (long i = 0; i < a->warmup; i++) model_forward(&p->model);
    p->model.ops->sync(p->model.ctx);
    double t0 = now_s();
    for (long i = 0; i < a->iters; i++) model_forward(&p->model);
    p->model.ops->sync(p->model.ctx);
    *elapsed = now_s() - t0;
    return 0;
}

static int run_infer(const BenchArgs *a, InferPipeline *p, double *elapsed, Err *err)
{
    unsigned char *jpeg = NULL;
    size_t size = 0;
    /* A typical COCO photo: 640x480, letterboxed to the model's input. */
    if (synthetic_jpeg(640, 480, &jpeg, &size, err) != 0) return -1;
    InferResult res;
    int rc = 0;
    for (long i = 0; i < a->warmup + a->iters && rc == 0; i++) {
        if (i == a->warmup) *elapsed = now_s();
        for (long b = 0; b < a->batch && rc == 0; b++)
            rc = infer_pipeline_add_jpeg(p, jpeg, size, (int)b, "synthetic.jpg", err);
        if (rc == 0) rc = infer_pipeline_run(p, (int)a->batch, &res, err);
    }
    *elapsed = now_s() - *elapsed;
    free(jpeg);
    return rc;
}

/* Peak resident memory of the process so far, in MB. */
static double peak_rss_mb(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss / 1024.0 : 0;
}

static int run_train(const BenchArgs *a, double *elapsed, int *h, int *w, Err *err)
{
    ModelConfig cfg;
    if (model_config_get(a->model, 0, &cfg, err) != 0) return -1;
    *h = a->h ? a->h : cfg.image_h, *w = a->w ? a->w : cfg.image_w;
    TrainSettings s;
    train_settings_default(&s, cfg.name, 90, (int)a->batch, *h, *w);
    s.total_steps = a->warmup + a->iters;
    s.tf32 = a->tf32;
    Trainer t;
    if (trainer_init(&t, &s, a->device, NULL, err) != 0) return -1;
    size_t n_in = (size_t)a->batch * *h * *w * 3;
    float *input = malloc(n_in * sizeof(float)), *boxes = malloc((size_t)a->batch * 4 * 4 * sizeof(float));
    int32_t *classes = malloc((size_t)a->batch * 4 * sizeof(int32_t));
    int rc = input && boxes && classes ? 0 : err_set(err, "bench: out of memory");
    Rng r;
    rng_init(&r, 3, 0, 0);
    for (size_t i = 0; rc == 0 && i < n_in; i++) input[i] = rng_normal(&r);
    for (long i = 0; rc == 0 && i < a->batch * 4; i++) {
        float y = rng_uniform(&r) * *h * 0.6f, x = rng_uniform(&r) * *w * 0.6f;
        float bh = 8 + rng_uniform(&r) * *h * 0.4f, bw = 8 + rng_uniform(&r) * *w * 0.4f;
        boxes[4 * i] = y, boxes[4 * i + 1] = x, boxes[4 * i + 2] = y + bh, boxes[4 * i + 3] = x + bw;
        classes[i] = 1 + (int32_t)(rng_u32(&r) % 90);
    }
    TrainStats st;
    for (long i = 0; rc == 0 && i < a->warmup + a->iters; i++) {
        if (i == a->warmup) *elapsed = now_s();
        rc = trainer_step(&t, input, boxes, classes, NULL, 4, &st, err);
    }
    t.model.ops->sync(t.model.ctx);
    *elapsed = now_s() - *elapsed;
    free(input), free(boxes), free(classes);
    trainer_free(&t);
    return rc;
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
    if (!strcmp(a.mode, "train")) {
        double elapsed = 0;
        int h, w;
        if (run_train(&a, &elapsed, &h, &w, &err) != 0) return cli_fail("bench", &err);
        double ips = a.batch * a.iters / elapsed, step_ms = elapsed / a.iters * 1e3;
        if (a.json)
            printf("{\"mode\": \"train\", \"model\": \"%s\", \"device\": \"%s\", \"batch_size\": %ld, "
                   "\"image_size\": [%d, %d], \"precision\": \"%s\", \"threads\": %d, \"iters\": %ld, "
                   "\"img_per_s\": %.3f, \"latency_ms\": %.3f, \"peak_rss_mb\": %.1f}\n",
                   a.model, a.device, a.batch, h, w, a.tf32 ? "tf32" : "fp32", omp_get_max_threads(), a.iters, ips, step_ms,
                   peak_rss_mb());
        else
            printf("train %s %s batch %ld %dx%d fp32, %d threads: %.2f img/s, %.1f ms per step, "
                   "peak memory %.0f MB\n", a.model, a.device, a.batch, h, w, omp_get_max_threads(),
                   ips, step_ms, peak_rss_mb());
        return 0;
    }
    InferPipeline p;
    InferOptions o = {.model = a.model, .device = a.device, .weights = NULL, .num_classes = 0,
                      .batch = (int)a.batch, .h = a.h, .w = a.w, .score_thresh = 0.0f,
                      .tf32 = a.tf32};
    if (infer_pipeline_init(&p, &o, &err) != 0) return cli_fail("bench", &err);
    double elapsed = 0;
    int rc = strcmp(a.mode, "forward") ? run_infer(&a, &p, &elapsed, &err) : run_forward(&a, &p, &elapsed);
    if (rc == 0) {
        double latency_ms = elapsed / a.iters * 1e3, ips = a.batch * a.iters / elapsed;
        if (a.json)
            printf("{\"mode\": \"%s\", \"model\": \"%s\", \"device\": \"%s\", \"batch_size\": %ld, "
                   "\"image_size\": [%d, %d], \"precision\": \"%s\", \"threads\": %d, "
                   "\"iters\": %ld, \"img_per_s\": %.3f, \"latency_ms\": %.3f, "
                   "\"arena_mb\": %.1f}\n",
                   a.mode, p.cfg.name, a.device, a.batch, p.h, p.w, a.tf32 ? "tf32" : "fp32", omp_get_max_threads(), a.iters,
                   ips, latency_ms, p.model.arena_bytes / 1048576.0);
        else
            printf("%s %s %s batch %ld %dx%d fp32, %d threads: %.2f img/s, %.2f ms per batch\n",
                   a.mode, p.cfg.name, a.device, a.batch, p.h, p.w, omp_get_max_threads(), ips,
                   latency_ms);
    }
    infer_pipeline_free(&p);
    return rc ? cli_fail("bench", &err) : 0;
}
