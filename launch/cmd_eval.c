/* cmd_eval.c: `effdet eval`, COCO bbox evaluation as pycocotools' COCOeval computes it, in two
 * forms:
 *
 *   effdet eval --gt GT.json --dets DETS.json [--json]
 *     A results file against a ground truth file.
 *
 *   effdet eval --weights FILE|random --model NAME (--data DIR | --ann FILE --images DIR)
 *               [--num-classes N] [--image-size HxW] [--device D] [--batch-size B]
 *               [--out results.json] [--json]
 *     Weights on a COCO-format set: exactly `effdet infer --data` (infer_evaluate_dataset: one
 *     copy of the code), writing the results file only when --out is given. It prints the
 *     "mAP ..." line before the summary; an unreadable image is a warning and is evaluated
 *     without detections.
 *
 * Output: pycocotools' 12-line summary, or with --json one object {"stats": [12 numbers],
 * "stat_names": [...], "per_category_AP": {"<category id>": AP}} with the numbers printed so they
 * read back exactly. Bad input (unreadable or malformed files, a detection of an image the ground
 * truth lacks, a negative box size, a NaN score, a missing field) is one line on stderr and exit
 * status 1; bad flags are exit status 2. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evaluator/coco_eval.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/infer_pipeline.h"
#include "shared/check.h"
#include "shared/coco.h"
#include "shared/log.h"

static const char *USAGE =
    "effdet eval --gt GT.json --dets DETS.json [--json] | effdet eval --weights FILE|random "
    "--model NAME (--data DIR | --ann FILE --images DIR) [--num-classes N] [--image-size HxW] "
    "[--device cpu|cuda[:N]] [--amp] [--amp-dtype fp16|bf16] [--batch-size B] [--out results.json] "
    "[--json]";

static double eval_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Loads both files and evaluates; err says what went wrong. */
static int eval_files(const char *gt_path, const char *dets_path, CocoEvalResult *res, Err *err)
{
    CocoDataset gt;
    CocoDetections dets;
    double t0 = eval_now();
    if (coco_dataset_load(&gt, gt_path, err)) return -1;
    CocoEval *ev = coco_eval_create(&gt);
    size_t n_images = gt.n_images;
    coco_dataset_free(&gt);
    double t1 = eval_now();
    if (coco_detections_load(&dets, dets_path, err)) {
        coco_eval_free(ev);
        return -1;
    }
    int rc = coco_eval_add_dets(ev, dets.dets, dets.n, err);
    coco_detections_free(&dets);
    if (rc) {
        coco_eval_free(ev);
        return err_wrap(err, "%s: ", dets_path);
    }
    double t2 = eval_now();
    coco_eval_run(ev, res);
    coco_eval_free(ev);
    log_info("eval: %zu detections on %zu images: ground truth read in %.3f s, detections in "
             "%.3f s, evaluated in %.3f s", res->n_dets, n_images, t1 - t0, t2 - t1,
             eval_now() - t2);
    if (res->n_dets_unknown_category)
        log_warn("eval: %zu detections name a category that %s lacks; ignored, as pycocotools "
                 "does", res->n_dets_unknown_category, gt_path);
    return 0;
}

/* The --weights form: weights on a COCO set, through `effdet infer --data`'s code. */
static int eval_weights(const InferEvalJob *job, int json)
{
    Err err;
    CocoEvalResult res;
    InferEvalCounts c;
    if (infer_evaluate_dataset(job, &res, &c, &err) != 0) return cli_fail("eval", &err);
    if (json) infer_write_metrics_json(stdout, &res);
    else infer_print_metrics(stdout, &res, &c);
    coco_eval_result_free(&res);
    return 0;
}

/* Which form the flags name, or a usage complaint in *why. */
static int eval_form(const char *gt, const char *dets, const InferEvalJob *job, int weights_set,
                     const char **why)
{
    int files = gt || dets, set = job->data_dir || job->ann || job->images_dir;
    if (files && (weights_set || set || job->o.model || job->out)) {
        *why = "--gt/--dets and --weights/--data/--out are two forms; give one";
        return -1;
    }
    if (!weights_set && !set && !job->o.model) {
        *why = !gt || !dets ? "--gt and --dets are required (or --weights, --model and --data)" : NULL;
        return *why ? -1 : 0;
    }
    if (!weights_set || !job->o.model || !set)
        *why = "--weights, --model and --data (or --ann and --images) are required together";
    else if (job->data_dir && (job->ann || job->images_dir))
        *why = "--data DIR already names DIR/annotations.json and DIR/images; drop --ann/--images";
    else if (!job->data_dir && !(job->ann && job->images_dir))
        *why = "--ann and --images go together";
    else
        return 1;
    return -1;
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"gt", required_argument, 0, 'g'},          {"dets", required_argument, 0, 'd'},
        {"json", no_argument, 0, 'j'},              {"help", no_argument, 0, 'h'},
        {"weights", required_argument, 0, 'W'},     {"model", required_argument, 0, 'm'},
        {"data", required_argument, 0, 'a'},        {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'},      {"num-classes", required_argument, 0, 'n'},
        {"image-size", required_argument, 0, 's'},  {"device", required_argument, 0, 'D'},
        {"batch-size", required_argument, 0, 'b'},  {"out", required_argument, 0, 'o'},
        {"amp", no_argument, 0, 'P'},               {"amp-dtype", required_argument, 0, 'Q'},
        {0, 0, 0, 0}};
    const char *gt_path = NULL, *dets_path = NULL;
    InferEvalJob job = {.o = {.device = "cpu", .batch = 1}};
    int json = 0, weights_set = 0, opt;
    long v;
    Err err;
    optind = 1;
    opterr = 0; /* one line of our own instead of getopt's plus the usage */
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'g': gt_path = optarg; break;
        case 'd': dets_path = optarg; break;
        case 'j': json = 1; break;
        case 'h': printf("usage: %s\n", USAGE); return 0;
        case 'W': /* "random": deterministic random weights, as `effdet infer` takes them */
            weights_set = 1;
            job.o.weights = strcmp(optarg, "random") ? optarg : NULL;
            break;
        case 'm': job.o.model = optarg; break;
        case 'a': job.data_dir = optarg; break;
        case 'A': job.ann = optarg; break;
        case 'I': job.images_dir = optarg; break;
        case 'n': if (cli_parse_int("--num-classes", optarg, 1, 100000, &v, &err)) return cli_fail("eval", &err); job.o.num_classes = (int)v; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &job.o.h, &job.o.w, &err)) return cli_fail("eval", &err); break;
        case 'D': job.o.device = optarg; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, 4096, &v, &err)) return cli_fail("eval", &err); job.o.batch = (int)v; break;
        case 'o': job.out = optarg; break;
        case 'P': precision_amp_flag(&job.o.precision); break;
        case 'Q': if (precision_parse(optarg, &job.o.precision, &err)) return cli_fail("eval", &err); break;
        default:
            fprintf(stderr, "effdet eval: bad option %s (usage: %s)\n", argv[optind - 1], USAGE);
            return 2;
        }
    }
    const char *why = NULL;
    int form = optind != argc ? (why = "unexpected argument", -1)
                              : eval_form(gt_path, dets_path, &job, weights_set, &why);
    if (form < 0) {
        fprintf(stderr, "effdet eval: %s (usage: %s)\n", why, USAGE);
        return 2;
    }
    if (form == 1) return eval_weights(&job, json);
    CocoEvalResult res;
    if (eval_files(gt_path, dets_path, &res, &err)) return cli_fail("eval", &err);
    if (json) infer_write_metrics_json(stdout, &res);
    else coco_eval_write_summary(stdout, &res);
    coco_eval_result_free(&res);
    return 0;
}
