/* cmd_eval.c: `effdet eval --gt GT.json --dets DETS.json [--json]`: COCO bbox evaluation of a
 * results file against a ground truth file, as pycocotools' COCOeval prints it: the 12-line
 * summary, or with --json one object {"stats": [12 numbers], "stat_names": [...],
 * "per_category_AP": {"<category id>": AP}} with the numbers printed so they read back exactly.
 * Bad input (unreadable or malformed files, a detection of an image the ground truth lacks, a
 * negative box size, a NaN score, a missing field) is one line on stderr and exit status 1. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "evaluator/coco_eval.h"
#include "launch/cli.h"
#include "launch/commands.h"
#include "shared/check.h"
#include "shared/coco.h"
#include "shared/log.h"

static const char *USAGE = "effdet eval --gt GT.json --dets DETS.json [--json]";

static double eval_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The shortest "%.Ng" that reads back as exactly v (what Python's repr prints); cJSON's printer
 * accepts a 15-digit form within an epsilon, which loses the last bit. */
static void eval_print_number(double v)
{
    char buf[32];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    fputs(buf, stdout);
}

static void eval_print_json(const CocoEvalResult *res)
{
    printf("{\n  \"stats\": [");
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++) {
        printf(s ? ", " : "");
        eval_print_number(res->stats[s]);
    }
    printf("],\n  \"stat_names\": [");
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        printf("%s\"%s\"", s ? ", " : "", coco_eval_stat_names[s]);
    printf("],\n  \"per_category_AP\": {");
    for (size_t k = 0; k < res->n_categories; k++) {
        printf("%s\n    \"%lld\": ", k ? "," : "", (long long)res->category_ids[k]);
        eval_print_number(res->category_ap[k]);
    }
    printf("%s}\n}\n", res->n_categories ? "\n  " : "");
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

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {{"gt", required_argument, 0, 'g'},
                                         {"dets", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *gt_path = NULL, *dets_path = NULL;
    int json = 0, opt;
    Err err;
    optind = 1;
    opterr = 0; /* one line of our own instead of getopt's plus the usage */
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (opt) {
        case 'g': gt_path = optarg; break;
        case 'd': dets_path = optarg; break;
        case 'j': json = 1; break;
        case 'h': printf("usage: %s\n", USAGE); return 0;
        default:
            fprintf(stderr, "effdet eval: bad option %s (usage: %s)\n", argv[optind - 1], USAGE);
            return 2;
        }
    }
    if (!gt_path || !dets_path || optind != argc) {
        fprintf(stderr, "effdet eval: %s (usage: %s)\n",
                optind != argc ? "unexpected argument" : "--gt and --dets are required", USAGE);
        return 2;
    }
    CocoEvalResult res;
    if (eval_files(gt_path, dets_path, &res, &err)) return cli_fail("eval", &err);
    if (json) eval_print_json(&res);
    else coco_eval_write_summary(stdout, &res);
    coco_eval_result_free(&res);
    return 0;
}
