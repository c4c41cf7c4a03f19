/* cmd_infer.c: `effdet infer --model NAME --weights FILE [--num-classes N] [--image-size HxW]
 *   [--batch-size B] [--device D] [--score-thresh T] [--draw DIR [--draw-thresh T]]
 *   IMAGE... --out results.json`.
 *
 * `--weights random` runs deterministic random weights (demos, benchmarks): real path, meaningless
 * boxes.
 *
 * Writes COCO results JSON ({image_id, category_id, bbox [x, y, w, h] in original pixels, score}),
 * atomically. image_id is the file name's number when the name is all digits (COCO's
 * 000000397133.jpg -> 397133), otherwise the image's 1-based position on the command line.
 * An image that cannot be read is a warning naming it and is counted; if no image can be read
 * the command fails. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/draw.h"
#include "launch/infer_pipeline.h"
#include "shared/log.h"

static const char *USAGE =
    "effdet infer --model NAME --weights FILE|random [--num-classes N] [--image-size HxW] "
    "[--batch-size B] [--device cpu|cuda[:N]] [--score-thresh T] [--draw DIR] [--draw-thresh T] "
    "IMAGE... --out results.json";

typedef struct InferArgs {
    InferOptions o;
    const char *out, *draw_dir;
    int random_weights;
    double draw_thresh;
    char **images;
    int n_images;
} InferArgs;

static int parse(int argc, char **argv, InferArgs *a, Err *err)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"weights", required_argument, 0, 'W'},
        {"num-classes", required_argument, 0, 'n'}, {"image-size", required_argument, 0, 's'},
        {"batch-size", required_argument, 0, 'b'}, {"device", required_argument, 0, 'd'},
        {"score-thresh", required_argument, 0, 't'}, {"draw", required_argument, 0, 'D'},
        {"draw-thresh", required_argument, 0, 'T'}, {"out", required_argument, 0, 'o'},
        {0, 0, 0, 0}};
    memset(a, 0, sizeof *a);
    a->o.device = "cpu", a->o.batch = 1, a->draw_thresh = 0.3;
    long v;
    double d;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': a->o.model = optarg; break;
        case 'W': /* "random": deterministic random weights, for demos and benchmarks */
            a->random_weights = !strcmp(optarg, "random");
            a->o.weights = a->random_weights ? NULL : optarg;
            break;
        case 'n': if (cli_parse_int("--num-classes", optarg, 1, 100000, &v, err)) return -1; a->o.num_classes = (int)v; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &a->o.h, &a->o.w, err)) return -1; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, 4096, &v, err)) return -1; a->o.batch = (int)v; break;
        case 'd': a->o.device = optarg; break;
        case 't': if (cli_parse_float("--score-thresh", optarg, 0, 1, &d, err)) return -1; a->o.score_thresh = (float)d; break;
        case 'D': a->draw_dir = optarg; break;
        case 'T': if (cli_parse_float("--draw-thresh", optarg, 0, 1, &d, err)) return -1; a->draw_thresh = d; break;
        case 'o': a->out = optarg; break;
        default: return err_set(err, "unknown option (usage: %s)", USAGE);
        }
    }
    if (!a->o.model || (!a->o.weights && !a->random_weights) || !a->out || optind >= argc)
        return err_set(err, "--model, --weights, --out and at least one image are required (usage: %s)", USAGE);
    a->images = argv + optind;
    a->n_images = argc - optind;
    return 0;
}

static long image_id_for(const char *path, int position)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    size_t len = dot ? (size_t)(dot - base) : strlen(base);
    if (len == 0 || len > 15) return position;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char)base[i])) return position;
    return strtol(base, NULL, 10);
}

static int write_drawn(const InferArgs *a, const char *path, const Detection *d, int n, Err *err)
{
    RgbImage img = {0};
    JpegDecodeOptions opt = {.max_pixels = JPEG_MAX_PIXELS_DEFAULT};
    if (jpeg_decode_file(path, &opt, &img, err) != 0) return -1;
    for (int i = 0; i < n; i++)
        if (d[i].score >= a->draw_thresh)
            draw_detection(&img, d[i].x1, d[i].y1, d[i].x2, d[i].y2, d[i].class_id, d[i].score);
    char tmp[1024], out[1200];
    snprintf(tmp, sizeof tmp, "%s", path);
    snprintf(out, sizeof out, "%s/%s", a->draw_dir, basename(tmp));
    int rc = jpeg_write_file(out, &img, 90, err);
    rgb_image_free(&img);
    return rc;
}

/* Runs one batch of paths[0..n) and appends its results; returns images that failed. */
static int run_batch(InferPipeline *p, const InferArgs *a, int first, int n, FILE *f, int *n_written,
                     Err *err)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        Err e;
        if (infer_pipeline_add_file(p, a->images[first + i], i, &e) != 0) {
            if (a->n_images == 1)
                *err = e; /* the only image: its error is the command's one error line */
            else
                log_warn("skipping image: %s", e.msg);
            failed++;
        }
    }
    if (failed == n) return failed;
    InferResult res;
    if (infer_pipeline_run(p, n, &res, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        if (!p->slots[i].ok) continue;
        const Detection *d = res.dets + (size_t)i * p->cfg.max_det_per_image;
        long id = image_id_for(a->images[first + i], first + i + 1);
        for (int j = 0; j < res.count[i]; j++)
            fprintf(f, "%s\n  {\"image_id\": %ld, \"category_id\": %d, \"bbox\": [%.3f, %.3f, %.3f, %.3f], \"score\": %.6f}",
                    (*n_written)++ ? "," : "", id, d[j].class_id, d[j].x1, d[j].y1,
                    d[j].x2 - d[j].x1, d[j].y2 - d[j].y1, d[j].score);
        Err e;
        if (a->draw_dir && write_drawn(a, a->images[first + i], d, res.count[i], &e) != 0)
            log_warn("--draw: %s", e.msg);
    }
    return failed;
}

int cmd_infer(int argc, char **argv)
{
    InferArgs a;
    Err err;
    if (parse(argc, argv, &a, &err) != 0) return cli_fail("infer", &err);
    if (a.draw_dir && mkdir(a.draw_dir, 0755) != 0 && errno != EEXIST) {
        err_set(&err, "--draw %s: %s", a.draw_dir, strerror(errno));
        return cli_fail("infer", &err);
    }
    InferPipeline p;
    if (infer_pipeline_init(&p, &a.o, &err) != 0) return cli_fail("infer", &err);
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", a.out, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        err_set(&err, "--out %s: %s", a.out, strerror(errno));
        infer_pipeline_free(&p);
        return cli_fail("infer", &err);
    }
    int failed = 0, written = 0, rc = 0;
    fprintf(f, "[");
    for (int first = 0; first < a.n_images && rc == 0; first += p.batch) {
        int n = a.n_images - first < p.batch ? a.n_images - first : p.batch;
        int k = run_batch(&p, &a, first, n, f, &written, &err);
        if (k < 0) rc = -1; else failed += k;
    }
    fprintf(f, "\n]\n");
    int werr = ferror(f);
    werr |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    werr |= fclose(f) != 0;
    infer_pipeline_free(&p);
    if (rc == 0 && failed == a.n_images) {
        rc = -1;
        if (a.n_images > 1) err_set(&err, "none of the %d images could be read", a.n_images);
    }
    if (rc == 0 && werr) rc = -1, err_set(&err, "--out %s: write failed", a.out);
    if (rc == 0 && rename(tmp, a.out) != 0) rc = -1, err_set(&err, "--out %s: %s", a.out, strerror(errno));
    if (rc != 0) {
        unlink(tmp);
        return cli_fail("infer", &err);
    }
    if (failed) log_warn("%d of %d images skipped (see the warnings above)", failed, a.n_images);
    fprintf(stderr, "effdet infer: %d images, %d detections -> %s\n", a.n_images - failed, written, a.out);
    return 0;
}
