/* test_coco_eval.c: evaluator/, the COCO bbox evaluator. Every case of the pycocotools fixtures
 * ($EFFDET_FIXTURES/coco_eval/case_*) must match its expected.json (stats and per-category AP);
 * then one hand-made case per pycocotools rule, with the expected numbers worked out in the
 * comments; then the image-by-image API (duplicates, missing images, reset).
 * Test JSON is written with ' for " (see J()). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evaluator/coco_eval.h"
#include "shared/coco.h"

enum { AP, AP50, AP75, APS, APM, APL, AR1, AR10, AR100, ARS, ARM, ARL };

/* pycocotools' precision after tp true and fp false positives. */
static double P(double tp, double fp) { return tp / (fp + tp + DBL_EPSILON); }

static char *J(const char *text)
{
    char *s = strdup(text);
    assert_non_null(s);
    for (char *p = s; *p; p++)
        if (*p == '\'') *p = '"';
    return s;
}

static CocoEval *eval_from_json(const char *gt_text)
{
    CocoDataset gt;
    Err err = {{0}};
    char *s = J(gt_text);
    if (coco_dataset_parse(&gt, s, strlen(s), "gt", &err)) fail_msg("gt: %s", err.msg);
    free(s);
    CocoEval *ev = coco_eval_create(&gt);
    coco_dataset_free(&gt);
    return ev;
}

static void add_json(CocoEval *ev, const char *dets_text)
{
    CocoDetections d;
    Err err = {{0}};
    char *s = J(dets_text);
    if (coco_detections_parse(&d, s, strlen(s), "dets", &err)) fail_msg("dets: %s", err.msg);
    free(s);
    if (coco_eval_add_dets(ev, d.dets, d.n, &err)) fail_msg("add: %s", err.msg);
    coco_detections_free(&d);
}

static void run_json(const char *gt_text, const char *dets_text, CocoEvalResult *res)
{
    CocoEval *ev = eval_from_json(gt_text);
    add_json(ev, dets_text);
    coco_eval_run(ev, res);
    coco_eval_free(ev);
}

static void assert_close(double got, double want, double tol, const char *what)
{
    if (!(fabs(got - want) <= tol)) fail_msg("%s: got %.17g, want %.17g", what, got, want);
}

static void assert_stats(const CocoEvalResult *res, const double want[COCO_EVAL_NUM_STATS])
{
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        assert_close(res->stats[s], want[s], 1e-12, coco_eval_stat_names[s]);
}

#define IMAGES1 "'images': [{'id': 1}], "
#define CATS1 "'categories': [{'id': 1}], "
#define ANN(id, img, cat, box, area, crowd)                                                       \
    "{'id': " #id ", 'image_id': " #img ", 'category_id': " #cat ", 'bbox': " box                \
    ", 'area': " #area ", 'iscrowd': " #crowd "}"
#define DET(img, cat, box, score)                                                                 \
    "{'image_id': " #img ", 'category_id': " #cat ", 'bbox': " box ", 'score': " #score "}"

/* ---- the fixtures ------------------------------------------------------------------------- */

static double json_number(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v)) fail_msg("expected.json: no number \"%s\"", key);
    return v->valuedouble;
}

static cJSON *read_json_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), n);
    fclose(f);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j) fail_msg("%s: not JSON", path);
    return j;
}

/* The same detections delivered image by image, in the GT's image order, must give the very
 * same numbers as the whole results file. */
static void check_image_by_image(const CocoDataset *gt, const CocoDetections *d,
                                 const CocoEvalResult *want, const char *dir)
{
    CocoEval *ev = coco_eval_create(gt);
    CocoDetection *mine = malloc((d->n ? d->n : 1) * sizeof *mine);
    Err err = {{0}};
    assert_non_null(mine);
    for (size_t i = 0; i < gt->n_images; i++) {
        size_t n = 0;
        for (size_t j = 0; j < d->n; j++)
            if (d->dets[j].image_id == gt->images[i].id) mine[n++] = d->dets[j];
        if (coco_eval_add_image(ev, gt->images[i].id, mine, n, &err)) fail_msg("%s", err.msg);
    }
    if (coco_eval_check_complete(ev, &err)) fail_msg("%s: %s", dir, err.msg);
    CocoEvalResult res;
    coco_eval_run(ev, &res);
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        if (memcmp(&res.stats[s], &want->stats[s], sizeof(double)))
            fail_msg("%s: %s image by image %.17g, whole file %.17g", dir, coco_eval_stat_names[s],
                     res.stats[s], want->stats[s]);
    coco_eval_result_free(&res);
    coco_eval_free(ev);
    free(mine);
}

static void check_fixture(const char *dir)
{
    char path[1024];
    CocoDataset gt;
    CocoDetections d;
    CocoEvalResult res;
    Err err = {{0}};
    snprintf(path, sizeof path, "%s/gt.json", dir);
    if (coco_dataset_load(&gt, path, &err)) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "%s/dets.json", dir);
    if (coco_detections_load(&d, path, &err)) fail_msg("%s", err.msg);
    snprintf(path, sizeof path, "%s/expected.json", dir);
    cJSON *want = read_json_file(path);
    CocoEval *ev = coco_eval_create(&gt);
    if (coco_eval_add_dets(ev, d.dets, d.n, &err)) fail_msg("%s", err.msg);
    coco_eval_run(ev, &res);
    const cJSON *stats = cJSON_GetObjectItemCaseSensitive(want, "stats");
    assert_int_equal(cJSON_GetArraySize(stats), COCO_EVAL_NUM_STATS);
    double max_diff = 0;
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++) {
        double w = cJSON_GetArrayItem(stats, s)->valuedouble, diff = fabs(res.stats[s] - w);
        max_diff = diff > max_diff ? diff : max_diff;
        if (!(diff <= 1e-12))
            fail_msg("%s: %s = %.17g, pycocotools %.17g", dir, coco_eval_stat_names[s],
                     res.stats[s], w);
    }
    const cJSON *per_cat = cJSON_GetObjectItemCaseSensitive(want, "per_category_AP");
    assert_int_equal(cJSON_GetArraySize(per_cat), res.n_categories);
    for (size_t k = 0; k < res.n_categories; k++) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)res.category_ids[k]);
        double w = json_number(per_cat, key), diff = fabs(res.category_ap[k] - w);
        max_diff = diff > max_diff ? diff : max_diff;
        if (!(diff <= 1e-12))
            fail_msg("%s: AP of category %s = %.17g, pycocotools %.17g", dir, key,
                     res.category_ap[k], w);
    }
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(want, "counts");
    assert_int_equal(res.n_dets, (size_t)json_number(counts, "dets"));
    assert_int_equal(gt.n_images, (size_t)json_number(counts, "images"));
    const cJSON *thr = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(want, "cocoeval_params"), "iouThrs");
    CocoEvalParams p;
    coco_eval_params_default(&p);
    for (int t = 0; t < COCO_EVAL_NUM_IOU; t++)
        if (p.iou_thresholds[t] != cJSON_GetArrayItem(thr, t)->valuedouble)
            fail_msg("IoU threshold %d: %.17g, numpy %.17g", t, p.iou_thresholds[t],
                     cJSON_GetArrayItem(thr, t)->valuedouble);
    printf("%s: 12 stats and %zu per-category APs match, max |diff| %.3g\n", dir,
           res.n_categories, max_diff);
    check_image_by_image(&gt, &d, &res, dir);
    coco_eval_result_free(&res);
    coco_eval_free(ev);
    cJSON_Delete(want);
    coco_detections_free(&d);
    coco_dataset_free(&gt);
}

static void test_fixtures(void **state)
{
    const char *root = getenv("EFFDET_FIXTURES");
    if (!root) fail_msg("EFFDET_FIXTURES is not set (make test sets it to ../shared/fixtures)");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/coco_eval", root);
    DIR *d = opendir(dir);
    if (!d) fail_msg("%s: cannot open the fixtures", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strncmp(e->d_name, "case_", 5)) continue;
        char sub[1300];
        snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name);
        check_fixture(sub);
        n++;
    }
    closedir(d);
    if (n == 0) fail_msg("%s holds no case_* directory", dir);
}

/* ---- the rules, one hand-made case each --------------------------------------------------- */

/* np.linspace(.5, .95, 10) gives 0.8999999999999999 (0.5 + 0.05 * i would give
 * 0.8500000000000001 before it), and linspace(0, 1, 101) is i * 0.01, last exactly 1. */
static void test_linspace_thresholds(void **state)
{
    static const double iou[] = {0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.8999999999999999, 0.95};
    CocoEvalParams p;
    coco_eval_params_default(&p);
    for (int t = 0; t < COCO_EVAL_NUM_IOU; t++)
        if (p.iou_thresholds[t] != iou[t])
            fail_msg("IoU threshold %d: %.17g, want %.17g", t, p.iou_thresholds[t], iou[t]);
    assert_true(p.iou_thresholds[7] != 0.5 + 0.05 * 7);
    assert_true(p.recall_thresholds[0] == 0 && p.recall_thresholds[100] == 1);
    assert_true(p.recall_thresholds[50] == 0.5 && p.recall_thresholds[29] == 0.29);
    assert_true(p.recall_thresholds[57] == 0.5700000000000001); /* not 57 / 100 */
    assert_int_equal(p.max_dets[0], 1);
    assert_int_equal(p.max_dets[2], 100);
    assert_true(p.area_ranges[1][1] == 1024 && p.area_ranges[2][0] == 1024);
    assert_true(p.area_ranges[2][1] == 9216 && p.area_ranges[3][0] == 9216);
}

/* One perfect detection of a large box. */
static void test_perfect(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[10, 10, 100, 100]", 10000, 0) "]}",
             "[" DET(1, 1, "[10, 10, 100, 100]", 0.9) "]", &res);
    double p = P(1, 0);
    const double want[] = {p, p, p, -1, -1, p, 1, 1, 1, -1, -1, 1};
    assert_stats(&res, want);
    assert_int_equal(res.n_categories, 1);
    assert_close(res.category_ap[0], p, 1e-12, "category AP");
    coco_eval_result_free(&res);
    coco_eval_result_free(&res);
}

/* A crowd GT: IoU = intersection / detection area, it absorbs any number of detections, and
 * those are ignored. d2 lies inside it (IoU 1), d3 half inside (IoU exactly 0.5: absorbed at
 * threshold .50 only, a FP above), d1 (lowest score) is the normal GT's TP. So threshold .50 has
 * precision 1, the nine others 1/2 at full recall. */
static void test_crowd(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) ", "
             ANN(2, 1, 1, "[100, 100, 50, 50]", 2500, 1) "]}",
             "[" DET(1, 1, "[110, 110, 10, 10]", 0.9) ", " DET(1, 1, "[140, 100, 20, 10]", 0.8) ", "
             DET(1, 1, "[0, 0, 10, 10]", 0.7) "]", &res);
    double ap = (101 * P(1, 0) + 909 * P(1, 1)) / 1010;
    /* AR1: the best detection is the absorbed one, so nothing is found */
    const double want[] = {ap, P(1, 0), P(1, 1), ap, -1, -1, 0, 1, 1, 1, -1, -1};
    assert_stats(&res, want);
    coco_eval_result_free(&res);
}

/* Area ranges come from the GT's area field (1024 here, its box is 40x40 = 1600), inclusive at
 * both ends: 1024 is small and medium. An unmatched detection outside the range (the 100x100 FP)
 * is ignored there, so small and medium see only the TP, and all sees FP then TP. */
static void test_area_bands(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 40, 40]", 1024, 0) "]}",
             "[" DET(1, 1, "[0, 0, 40, 40]", 0.5) ", " DET(1, 1, "[200, 200, 100, 100]", 0.9) "]",
             &res);
    double h = P(1, 1), p = P(1, 0);
    const double want[] = {h, h, h, p, p, -1, 0, 1, 1, 1, 1, -1};
    assert_stats(&res, want);
    coco_eval_result_free(&res);
    /* 9216 is medium and large; 1024.5 is medium only */
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 96, 96]", 9216, 0) "]}",
             "[" DET(1, 1, "[0, 0, 96, 96]", 0.5) "]", &res);
    const double want2[] = {p, p, p, -1, p, p, 1, 1, 1, -1, 1, 1};
    assert_stats(&res, want2);
    coco_eval_result_free(&res);
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 1, 1]", 1024.5, 0) "]}",
             "[" DET(1, 1, "[0, 0, 1, 1]", 0.5) "]", &res);
    const double want3[] = {p, p, p, -1, p, -1, 1, 1, 1, -1, 1, -1};
    assert_stats(&res, want3);
    coco_eval_result_free(&res);
}

/* A detection matched to a GT outside the area range is ignored, whatever its own area: d1
 * (box area 100, small) matches g1 whose area field says large, so for small it is neither TP
 * nor FP and d2 is a clean TP. */
static void test_out_of_range_gt(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 20000, 0) ", "
             ANN(2, 1, 1, "[100, 100, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[0, 0, 10, 10]", 0.9) ", " DET(1, 1, "[100, 100, 10, 10]", 0.8) "]",
             &res);
    /* all: TP, TP: the second precision 2 / (2 + eps) rounds to 1, and 1 wins the running max */
    double p = P(1, 0);
    const double want[] = {1, 1, 1, p, -1, p, 0.5, 1, 1, 1, -1, 1};
    assert_stats(&res, want);
    coco_eval_result_free(&res);
}

/* maxDets counts per image and category: category 1's best is a FP, category 2's a TP, so AR1 is
 * (0 + 1) / 2; a per-image cut would have dropped category 2's detection. */
static void test_max_dets_per_category(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 "'categories': [{'id': 1}, {'id': 2}], 'annotations': ["
             ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) ", " ANN(2, 1, 2, "[50, 50, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[200, 200, 10, 10]", 0.9) ", " DET(1, 1, "[0, 0, 10, 10]", 0.8) ", "
             DET(1, 2, "[50, 50, 10, 10]", 0.7) "]", &res);
    assert_close(res.stats[AR1], 0.5, 1e-12, "AR1");
    assert_close(res.stats[AR10], 1, 1e-12, "AR10");
    coco_eval_result_free(&res);
}

/* An image may contribute more than 100 detections (60 + 1 in each of two categories, all
 * found); the cut is the 100 best of each (image, category): category 3's TP is 101st. */
static void test_max_dets_cut(void **state)
{
    static char dets[40000];
    size_t n = (size_t)snprintf(dets, sizeof dets, "[");
    for (int cat = 1; cat <= 3; cat++) {
        int fps = cat == 3 ? 100 : 60;
        for (int i = 0; i < fps; i++)
            n += (size_t)snprintf(dets + n, sizeof dets - n, "%s{'image_id': 1, 'category_id': %d, "
                                  "'bbox': [%d, 300, 5, 5], 'score': 0.9}", n > 1 ? ", " : "", cat,
                                  200 + 3 * i);
        n += (size_t)snprintf(dets + n, sizeof dets - n, ", {'image_id': 1, 'category_id': %d, "
                              "'bbox': [%d, 0, 10, 10], 'score': 0.1}", cat, 50 * cat);
    }
    snprintf(dets + n, sizeof dets - n, "]");
    CocoEvalResult res;
    run_json("{" IMAGES1 "'categories': [{'id': 1}, {'id': 2}, {'id': 3}], 'annotations': ["
             ANN(1, 1, 1, "[50, 0, 10, 10]", 100, 0) ", " ANN(2, 1, 2, "[100, 0, 10, 10]", 100, 0)
             ", " ANN(3, 1, 3, "[150, 0, 10, 10]", 100, 0) "]}", dets, &res);
    assert_close(res.stats[AR100], 2.0 / 3, 1e-12, "AR100");
    assert_int_equal(res.n_dets, 223);
    assert_int_equal(res.n_dets_over_max, 1);
    assert_close(res.category_ap[2], 0, 0, "AP of category 3");
    coco_eval_result_free(&res);
}

/* Equal scores keep results-file order within an image (a stable sort): FP listed first gives
 * precision 1/2, TP listed first gives 1. Across images they go by image id, whatever the order
 * of the file or of the GT's image list. */
static void test_score_ties(void **state)
{
    CocoEvalResult res;
    const char *gt = "{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) "]}";
    run_json(gt, "[" DET(1, 1, "[50, 50, 10, 10]", 0.5) ", " DET(1, 1, "[0, 0, 10, 10]", 0.5) "]", &res);
    assert_close(res.stats[AP], P(1, 1), 1e-12, "AP, FP first in the file");
    coco_eval_result_free(&res);
    run_json(gt, "[" DET(1, 1, "[0, 0, 10, 10]", 0.5) ", " DET(1, 1, "[50, 50, 10, 10]", 0.5) "]", &res);
    assert_close(res.stats[AP], P(1, 0), 1e-12, "AP, TP first in the file");
    coco_eval_result_free(&res);
    const char *dets = "[" DET(5, 1, "[0, 0, 10, 10]", 0.5) ", " DET(3, 1, "[0, 0, 10, 10]", 0.5) "]";
    run_json("{'images': [{'id': 5}, {'id': 3}], " CATS1 "'annotations': ["
             ANN(1, 3, 1, "[0, 0, 10, 10]", 100, 0) "]}", dets, &res);
    assert_close(res.stats[AP], P(1, 0), 1e-12, "AP, TP on image 3, FP on image 5");
    coco_eval_result_free(&res);
    run_json("{'images': [{'id': 5}, {'id': 3}], " CATS1 "'annotations': ["
             ANN(1, 5, 1, "[0, 0, 10, 10]", 100, 0) "]}", dets, &res);
    assert_close(res.stats[AP], P(1, 1), 1e-12, "AP, FP on image 3, TP on image 5");
    coco_eval_result_free(&res);
}

/* Images without GT or detections change nothing; an image with detections and no GT gives FPs;
 * an image with GT and no detections lowers recall. A category with detections but no GT (3) or
 * with neither (2) is -1 and left out; one with GT and no detections (4) is 0 and counts; a
 * category the GT does not list (7) is dropped and counted. Category 1: TP then FP with 2 GT:
 * precision P(1, 0) up to recall 0.5 (51 of the 101 thresholds), 0 beyond. */
static void test_empty_images_and_categories(void **state)
{
    CocoEvalResult res;
    run_json("{'images': [{'id': 1}, {'id': 2}, {'id': 3}, {'id': 4}, {'id': 9}], "
             "'categories': [{'id': 1}, {'id': 2}, {'id': 3}, {'id': 4}], 'annotations': ["
             ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) ", " ANN(2, 2, 1, "[0, 0, 10, 10]", 100, 0) ", "
             ANN(3, 4, 4, "[0, 0, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[0, 0, 10, 10]", 0.9) ", " DET(3, 1, "[0, 0, 10, 10]", 0.8) ", "
             DET(1, 3, "[0, 0, 10, 10]", 0.7) ", " DET(1, 7, "[0, 0, 10, 10]", 0.6) "]", &res);
    double ap1 = 51 * P(1, 0) / 101;
    assert_close(res.stats[AP], ap1 / 2, 1e-12, "AP");
    assert_close(res.stats[AR100], 0.25, 1e-12, "AR100");
    const double want_cat[] = {ap1, -1, -1, 0};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(res.category_ids[k], k + 1);
        assert_close(res.category_ap[k], want_cat[k], 1e-12, "category AP");
    }
    assert_int_equal(res.n_dets_unknown_category, 1);
    assert_int_equal(res.n_dets, 4);
    coco_eval_result_free(&res);
    /* no detections at all: 0 where there is GT; no GT at all: -1 everywhere */
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) "]}", "[]",
             &res);
    const double zero[] = {0, 0, 0, 0, -1, -1, 0, 0, 0, 0, -1, -1};
    assert_stats(&res, zero);
    coco_eval_result_free(&res);
    run_json("{" IMAGES1 CATS1 "'annotations': []}", "[" DET(1, 1, "[0, 0, 1, 1]", 1) "]", &res);
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        assert_close(res.stats[s], -1, 0, coco_eval_stat_names[s]);
    coco_eval_result_free(&res);
}

/* Greedy matching: the best IoU >= threshold wins and a later equal IoU replaces an earlier one.
 * d1 overlaps g1 and g2 equally (90 / 110) and takes g2, leaving g1 to d2 (IoU 1) at every
 * threshold; above 0.818 d1 is a FP before d2's TP. */
static void test_greedy_equal_iou(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 0) ", "
             ANN(2, 1, 1, "[2, 0, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[1, 0, 10, 10]", 0.9) ", " DET(1, 1, "[0, 0, 10, 10]", 0.8) "]", &res);
    assert_close(res.stats[AP], (7 * 101 * 1.0 + 3 * 51 * P(1, 1)) / 1010, 1e-12, "AP");
    coco_eval_result_free(&res);
}

/* A detection holding a non-ignored GT stops at the first ignored one (they are ordered last,
 * whatever the file order): it keeps the normal GT although the crowd one has an equal IoU. */
static void test_stop_at_ignored(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 10, 10]", 100, 1) ", "
             ANN(2, 1, 1, "[0, 0, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[0, 0, 10, 10]", 0.9) "]", &res);
    assert_close(res.stats[AP], P(1, 0), 1e-12, "AP");
    assert_close(res.stats[AR100], 1, 1e-12, "AR100");
    coco_eval_result_free(&res);
}

/* pycocotools records a match as the GT's id and reads 0 as "unmatched": a GT with id 0 is never
 * found, and its detection counts as a FP. */
static void test_gt_id_zero(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(0, 1, 1, "[0, 0, 10, 10]", 100, 0) "]}",
             "[" DET(1, 1, "[0, 0, 10, 10]", 0.9) "]", &res);
    assert_close(res.stats[AP], 0, 0, "AP");
    assert_close(res.stats[AR100], 0, 0, "AR100");
    coco_eval_result_free(&res);
}

/* ---- the API: bad detections, image by image, reset --------------------------------------- */

static const char *GT3 = "{'images': [{'id': 30}, {'id': 10}, {'id': 20}], " CATS1 "'annotations': ["
                         ANN(1, 10, 1, "[0, 0, 10, 10]", 100, 0) "]}";

static void assert_err(int rc, const Err *err, const char *want)
{
    assert_int_equal(rc, -1);
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" does not contain \"%s\"", err->msg, want);
    if (strchr(err->msg, '\n')) fail_msg("error \"%s\" is more than one line", err->msg);
}

static void test_bad_detections(void **state)
{
    CocoEval *ev = eval_from_json(GT3);
    Err err = {{0}};
    CocoDetection d[2] = {{10, 1, {0, 0, 10, 10}, 0.9}, {99, 1, {0, 0, 10, 10}, 0.9}};
    /* pycocotools asserts "Results do not correspond to current coco set"; we name the image */
    assert_err(coco_eval_add_dets(ev, d, 2, &err), &err,
               "detection 1: image_id 99 is not in the ground truth");
    d[1].image_id = 10, d[1].score = NAN;
    assert_err(coco_eval_add_dets(ev, d, 2, &err), &err, "detection 1 (image 10): score is NaN");
    d[1].score = 1, d[1].bbox[3] = -1;
    assert_err(coco_eval_add_dets(ev, d, 2, &err), &err,
               "detection 1 (image 10): bbox has a negative height");
    d[1].bbox[3] = 1, d[1].bbox[0] = INFINITY;
    assert_err(coco_eval_add_dets(ev, d, 2, &err), &err, "bbox holds a non-finite number");
    /* all or nothing: the good first detection was never added */
    CocoEvalResult res;
    coco_eval_run(ev, &res);
    assert_int_equal(res.n_dets, 0);
    coco_eval_result_free(&res);
    coco_eval_free(ev);
    coco_eval_free(NULL);
}

static void test_image_by_image(void **state)
{
    CocoEval *ev = eval_from_json(GT3);
    Err err = {{0}};
    CocoDetection d = {10, 1, {0, 0, 10, 10}, 0.9};
    assert_err(coco_eval_add_image(ev, 11, &d, 1, &err), &err, "image 11 is not in the ground truth");
    assert_err(coco_eval_add_image(ev, 20, &d, 1, &err), &err, "image 20: detection 0 has image_id 10");
    if (coco_eval_add_image(ev, 10, &d, 1, &err)) fail_msg("%s", err.msg);
    assert_err(coco_eval_add_image(ev, 10, &d, 1, &err), &err, "image 10 delivered twice");
    assert_err(coco_eval_check_complete(ev, &err), &err, "2 of 3 images missing, the first is image 20");
    if (coco_eval_add_image(ev, 30, NULL, 0, &err)) fail_msg("%s", err.msg);
    assert_err(coco_eval_check_complete(ev, &err), &err, "1 of 3 images missing, the first is image 20");
    if (coco_eval_add_image(ev, 20, NULL, 0, &err)) fail_msg("%s", err.msg);
    if (coco_eval_check_complete(ev, &err)) fail_msg("%s", err.msg);
    CocoEvalResult a, b;
    coco_eval_run(ev, &a);
    coco_eval_run(ev, &b); /* running again changes nothing */
    assert_close(a.stats[AP], P(1, 0), 1e-12, "AP");
    assert_true(!memcmp(a.stats, b.stats, sizeof a.stats));
    coco_eval_result_free(&b);
    /* the next epoch: everything forgotten, the same image may come again */
    coco_eval_reset(ev);
    assert_err(coco_eval_check_complete(ev, &err), &err, "3 of 3 images missing, the first is image 10");
    CocoDetection fp = {10, 1, {50, 50, 10, 10}, 0.95};
    CocoDetection both[2] = {fp, d};
    if (coco_eval_add_image(ev, 10, both, 2, &err)) fail_msg("%s", err.msg);
    coco_eval_run(ev, &b);
    assert_close(b.stats[AP], P(1, 1), 1e-12, "AP after reset");
    assert_int_equal(b.n_dets, 2);
    coco_eval_result_free(&a);
    coco_eval_result_free(&b);
    coco_eval_free(ev);
}

static void test_summary_format(void **state)
{
    CocoEvalResult res;
    run_json("{" IMAGES1 CATS1 "'annotations': [" ANN(1, 1, 1, "[0, 0, 40, 40]", 1024, 0) "]}",
             "[" DET(1, 1, "[0, 0, 40, 40]", 0.5) ", " DET(1, 1, "[200, 200, 100, 100]", 0.9) "]",
             &res);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    coco_eval_write_summary(f, &res);
    fclose(f);
    const char *want =
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500\n"
        " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.500\n"
        " Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = 0.500\n"
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 1.000\n"
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 1.000\n"
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ] = 1.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = 1.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 1.000\n"
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000\n";
    assert_string_equal(text, want);
    free(text);
    coco_eval_result_free(&res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_linspace_thresholds),
        cmocka_unit_test(test_perfect),
        cmocka_unit_test(test_crowd),
        cmocka_unit_test(test_area_bands),
        cmocka_unit_test(test_out_of_range_gt),
        cmocka_unit_test(test_max_dets_per_category),
        cmocka_unit_test(test_max_dets_cut),
        cmocka_unit_test(test_score_ties),
        cmocka_unit_test(test_empty_images_and_categories),
        cmocka_unit_test(test_greedy_equal_iou),
        cmocka_unit_test(test_stop_at_ignored),
        cmocka_unit_test(test_gt_id_zero),
        cmocka_unit_test(test_bad_detections),
        cmocka_unit_test(test_image_by_image),
        cmocka_unit_test(test_summary_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
