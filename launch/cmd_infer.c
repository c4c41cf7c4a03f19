/* cmd_infer.c: `effdet infer`, object detection with trained (or random) weights, in two forms:
 *
 *   effdet infer --model NAME --weights FILE|random [options] PATH... --out results.json
 *     Each PATH is a JPEG file or a directory; a directory contributes its *.jpg and *.jpeg files
 *     (extension in any case, not recursive) sorted by name. image_id is the file name's number
 *     when the name is all digits (COCO's 000000397133.jpg -> 397133), otherwise the image's
 *     1-based position in the expanded list. An image that cannot be read is a warning naming it
 *     and is counted; if no image can be read the command fails with one line.
 *
 *   effdet infer --model NAME --weights FILE|random (--data DIR | --ann FILE --images DIR)
 *                [options] --out results.json [--metrics FILE]
 *     Every image of a COCO-format set (DIR/annotations.json + DIR/images), image and category ids
 *     from the annotation file, and since the boxes are known, pycocotools' bbox evaluation: a
 *     "mAP ..." line and the 12-line summary on stdout, and with --metrics the JSON that
 *     `effdet eval --json` prints. --num-classes defaults to the set's category count. An
 *     unreadable image is a warning and is evaluated without detections. The same code runs
 *     `effdet eval --weights` (infer_evaluate_dataset).
 *
 * `--weights random` runs deterministic random weights (demos, benchmarks): real path, meaningless
 * boxes. The results file is COCO results JSON ({image_id, category_id, bbox [x, y, w, h] in
 * original pixels, score}), written atomically: a failed run leaves none. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/draw.h"
#include "launch/infer_pipeline.h"
#include "shared/check.h"
#include "shared/log.h"

static const char *USAGE =
    "effdet infer --model NAME --weights FILE|random [--num-classes N] [--image-size HxW] "
    "[--batch-size B] [--device cpu|cuda[:N]] [--amp] [--amp-dtype fp16|bf16] [--score-thresh T] "
    "(PATH... [--draw DIR] [--draw-thresh T] | --data DIR | --ann FILE --images DIR) "
    "--out results.json [--metrics FILE]  (PATH: a JPEG, or a directory of *.jpg/*.jpeg)";

typedef struct InferArgs {
    InferOptions o;
    const char *out, *draw_dir, *metrics;
    const char *data_dir, *ann, *images_dir; /* the COCO-set form */
    int random_weights;
    double draw_thresh;
    char **paths;         /* the command line's PATHs */
    int n_paths;
    char **images;        /* (n_images) PATHs with directories expanded; owned */
    int n_images;
} InferArgs;

static int parse_check(InferArgs *a, Err *err)
{
    if (!a->o.model || (!a->o.weights && !a->random_weights) || !a->out)
        return err_set(err, "--model, --weights and --out are required (usage: %s)", USAGE);
    int set = a->data_dir || a->ann || a->images_dir;
    if (!set && a->n_paths == 0)
        return err_set(err, "no images: give image files or directories, or --data DIR (usage: %s)", USAGE);
    if (set && a->n_paths > 0)
        return err_set(err, "image paths and --data/--ann/--images are two forms; give one (usage: %s)", USAGE);
    if (a->data_dir && (a->ann || a->images_dir))
        return err_set(err, "--data DIR already names DIR/annotations.json and DIR/images; drop --ann/--images");
    if (!a->data_dir && set && !(a->ann && a->images_dir))
        return err_set(err, "--ann and --images go together (usage: %s)", USAGE);
    if (set && a->draw_dir)
        return err_set(err, "--draw works on image paths, not on --data/--ann sets");
    if (!set && a->metrics)
        return err_set(err, "--metrics needs annotations (--data DIR or --ann FILE --images DIR)");
    return 0;
}

static int parse(int argc, char **argv, InferArgs *a, Err *err)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"weights", required_argument, 0, 'W'},
        {"num-classes", required_argument, 0, 'n'}, {"image-size", required_argument, 0, 's'},
        {"batch-size", required_argument, 0, 'b'}, {"device", required_argument, 0, 'd'},
        {"score-thresh", required_argument, 0, 't'}, {"draw", required_argument, 0, 'D'},
        {"draw-thresh", required_argument, 0, 'T'}, {"out", required_argument, 0, 'o'},
        {"data", required_argument, 0, 'a'},       {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'},     {"metrics", required_argument, 0, 'M'},
        {"amp", no_argument, 0, 'P'},              {"amp-dtype", required_argument, 0, 'Q'},
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
        case 'a': a->data_dir = optarg; break;
        case 'A': a->ann = optarg; break;
        case 'I': a->images_dir = optarg; break;
        case 'M': a->metrics = optarg; break;
        case 'P': precision_amp_flag(&a->o.precision); break;
        case 'Q': if (precision_parse(optarg, &a->o.precision, err)) return -1; break;
        default: return err_set(err, "unknown option (usage: %s)", USAGE);
        }
    }
    a->paths = argv + optind;
    a->n_paths = argc - optind;
    return parse_check(a, err);
}

/* ---- image paths ---------------------------------------------------------------------------------- */

static int is_jpeg_name(const char *name)
{
    const char *dot = strrchr(name, '.');
    return dot && dot != name && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static void images_push(InferArgs *a, char *path, int *cap)
{
    if (a->n_images == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        a->images = realloc(a->images, (size_t)*cap * sizeof *a->images);
        ASSERT(a->images);
    }
    a->images[a->n_images++] = path;
}

/* Appends dir's JPEG files, sorted by name. */
static int add_dir(InferArgs *a, const char *dir, int *cap, Err *err)
{
    DIR *d = opendir(dir);
    if (!d) return err_set(err, "%s: %s", dir, strerror(errno));
    int first = a->n_images;
    size_t dir_len = strlen(dir);
    int slash = dir_len > 0 && dir[dir_len - 1] == '/';
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_jpeg_name(e->d_name)) continue;
        char *path;
        if (asprintf(&path, "%s%s%s", dir, slash ? "" : "/", e->d_name) < 0) ASSERT(0);
        struct stat st;
        /* A folder named x.jpg is not an image; a file that vanished or is unreadable stays, and
         * its decode error becomes the usual warning. */
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            free(path);
            continue;
        }
        images_push(a, path, cap);
    }
    closedir(d);
    qsort(a->images + first, (size_t)(a->n_images - first), sizeof *a->images, cmp_str);
    return 0;
}

/* a->images: the PATHs in order, each directory replaced by its JPEG files. A path that is not a
 * directory (missing ones included) stays as given: reading it reports what is wrong. */
static int expand_paths(InferArgs *a, Err *err)
{
    int cap = 0;
    char *empty = calloc((size_t)a->n_paths, 1); /* directories without JPEGs */
    ASSERT(empty);
    for (int i = 0; i < a->n_paths; i++) {
        struct stat st;
        if (stat(a->paths[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            int before = a->n_images;
            if (add_dir(a, a->paths[i], &cap, err) != 0) {
                free(empty);
                return -1;
            }
            empty[i] = a->n_images == before;
        } else {
            char *copy = strdup(a->paths[i]);
            ASSERT(copy);
            images_push(a, copy, &cap);
        }
    }
    /* Empty directories are warnings only beside images: with none at all, the error says it. */
    for (int i = 0; i < a->n_paths && a->n_images > 0; i++)
        if (empty[i]) log_warn("%s: no .jpg or .jpeg files in this directory", a->paths[i]);
    free(empty);
    if (a->n_images == 0 && a->n_paths == 1)
        return err_set(err, "no images: %s has no .jpg or .jpeg files", a->paths[0]);
    if (a->n_images == 0)
        return err_set(err, "no images: none of the %d directories has .jpg or .jpeg files", a->n_paths);
    return 0;
}

static void images_free(InferArgs *a)
{
    for (int i = 0; i < a->n_images; i++) free(a->images[i]);
    free(a->images);
    a->images = NULL, a->n_images = 0;
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

/* ---- the image-paths form ------------------------------------------------------------------------ */

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

/* Runs images[first, first + n) and appends their results. */
static int run_batch(InferPipeline *p, const InferArgs *a, int first, int n, InferResultsFile *out,
                     InferSkips *skips, Err *err)
{
    int n_read = 0;
    for (int i = 0; i < n; i++) {
        Err e;
        if (infer_pipeline_add_file(p, a->images[first + i], i, &e) != 0) {
            infer_skips_note(skips, e.msg);
        } else {
            infer_skips_read(skips);
            n_read++;
        }
    }
    if (n_read == 0) return 0;
    InferResult res;
    if (infer_pipeline_run(p, n, &res, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        if (!p->slots[i].ok) continue;
        const Detection *d = res.dets + (size_t)i * p->cfg.max_det_per_image;
        long id = image_id_for(a->images[first + i], first + i + 1);
        for (int j = 0; j < res.count[i]; j++) infer_results_add(out, id, d[j].class_id, &d[j]);
        Err e;
        if (a->draw_dir && write_drawn(a, a->images[first + i], d, res.count[i], &e) != 0)
            log_warn("--draw: %s", e.msg);
    }
    return 0;
}

static int infer_paths(InferArgs *a, Err *err)
{
    if (expand_paths(a, err) != 0) return -1;
    if (a->draw_dir && mkdir(a->draw_dir, 0755) != 0 && errno != EEXIST)
        return err_set(err, "--draw %s: %s", a->draw_dir, strerror(errno));
    InferPipeline p;
    if (infer_pipeline_init(&p, &a->o, err) != 0) return -1;
    InferResultsFile out;
    if (infer_results_open(&out, a->out, err) != 0) {
        infer_pipeline_free(&p);
        return -1;
    }
    InferSkips skips = {0};
    int rc = 0;
    for (int first = 0; first < a->n_images && rc == 0; first += p.batch) {
        int n = a->n_images - first < p.batch ? a->n_images - first : p.batch;
        rc = run_batch(&p, a, first, n, &out, &skips, err);
    }
    infer_pipeline_free(&p);
    if (rc == 0 && !skips.any_read) rc = infer_skips_fail_all(&skips, a->n_images, err);
    infer_skips_free(&skips);
    size_t written = out.n;
    if (rc == 0) rc = infer_results_commit(&out, err);
    else infer_results_abort(&out);
    if (rc != 0) return -1;
    if (skips.n) log_warn("%d of %d images skipped (see the warnings above)", skips.n, a->n_images);
    fprintf(stderr, "effdet infer: %d images, %zu detections -> %s\n", a->n_images - skips.n,
            written, a->out);
    return 0;
}

/* ---- the COCO-set form -------------------------------------------------------------------------- */

static int write_metrics(const char *path, const CocoEvalResult *res, Err *err)
{
    FILE *f = fopen(path, "w");
    if (!f) return err_set(err, "--metrics %s: %s", path, strerror(errno));
    infer_write_metrics_json(f, res);
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    return bad ? err_set(err, "--metrics %s: write failed", path) : 0;
}

static int infer_set(const InferArgs *a, Err *err)
{
    InferEvalJob job = {.o = a->o, .data_dir = a->data_dir, .ann = a->ann,
                        .images_dir = a->images_dir, .out = a->out};
    CocoEvalResult res;
    InferEvalCounts c;
    if (infer_evaluate_dataset(&job, &res, &c, err) != 0) return -1;
    infer_print_metrics(stdout, &res, &c);
    int rc = a->metrics ? write_metrics(a->metrics, &res, err) : 0;
    coco_eval_result_free(&res);
    if (rc == 0)
        fprintf(stderr, "effdet infer: %zu images, %zu detections -> %s\n", c.images - c.unreadable,
                c.dets, a->out);
    return rc;
}

int cmd_infer(int argc, char **argv)
{
    InferArgs a;
    Err err;
    if (parse(argc, argv, &a, &err) != 0) return cli_fail("infer", &err);
    int rc = a.n_paths > 0 ? infer_paths(&a, &err) : infer_set(&a, &err);
    images_free(&a);
    return rc != 0 ? cli_fail("infer", &err) : 0;
}
