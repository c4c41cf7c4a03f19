/* bench_eval.c: times the COCO evaluator on a generated val2017-sized case: 5,000 images, about
 * 36k ground-truth boxes in 80 categories, 100 detections per image (jittered copies of the
 * ground truth plus random boxes, scores with 3 decimals so that ties happen). The case is
 * written as JSON text in memory from a fixed seed, so JSON reading is timed too, separately.
 * Target (issue 4): evaluation <= 1 s on one core.
 *
 *   bench_eval                 the generated case
 *   bench_eval --gt FILE       also time reading a ground truth file (e.g. a train2017-sized
 *                              one) and report the peak RSS of the process */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "evaluator/coco_eval.h"
#include "shared/check.h"
#include "shared/coco.h"
#include "shared/rng.h"

enum { N_IMAGES = 5000, DETS_PER_IMAGE = 100, MAX_GT_PER_IMAGE = 14 };

typedef struct Text {
    char *s;
    size_t n, cap;
} Text;

static void text_add(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(Text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(t->s + t->n, t->cap - t->n, fmt, ap);
        va_end(ap);
        ASSERT(k >= 0);
        if ((size_t)k < t->cap - t->n) {
            t->n += (size_t)k;
            return;
        }
        t->cap = t->cap ? 2 * t->cap : 1 << 20;
        t->s = realloc(t->s, t->cap);
        ASSERT(t->s);
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double uni(Rng *r, double lo, double hi) { return lo + (hi - lo) * rng_uniform(r); }

/* COCO's 80 category ids (1..90 with gaps). */
static int coco_cat_id(int k)
{
    static const int gaps[] = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83};
    int id = k + 1;
    for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++)
        if (id >= gaps[g]) id++;
    return id;
}

/* A box with log-uniform size, so small, medium and large all occur. */
static void random_box(Rng *r, double b[4])
{
    b[2] = 4 * exp2(uni(r, 0, 6.5));
    b[3] = b[2] * uni(r, 0.5, 2);
    b[0] = uni(r, 0, 640 - b[2] > 1 ? 640 - b[2] : 1);
    b[1] = uni(r, 0, 480 - b[3] > 1 ? 480 - b[3] : 1);
}

/* The ground truth and the results file of the generated case, as JSON text. */
static void make_case(Text *gt, Text *dets, size_t *n_gt)
{
    Rng r;
    rng_init(&r, 2017, 0, 0);
    *n_gt = 0;
    text_add(gt, "{\"images\": [");
    for (int i = 0; i < N_IMAGES; i++)
        text_add(gt, "%s{\"id\": %d, \"width\": 640, \"height\": 480, \"file_name\": "
                     "\"%012d.jpg\"}", i ? ", " : "", 7 + 97 * i, 7 + 97 * i);
    text_add(gt, "], \"annotations\": [");
    text_add(dets, "[");
    for (int i = 0; i < N_IMAGES; i++) {
        int image_id = 7 + 97 * i, n = (int)(rng_u32(&r) % (MAX_GT_PER_IMAGE + 1)), nd = 0;
        for (int g = 0; g < n; g++) {
            double b[4];
            int cat = coco_cat_id((int)(rng_u32(&r) % 80)), crowd = rng_uniform(&r) < 0.01f;
            random_box(&r, b);
            text_add(gt, "%s{\"id\": %zu, \"image_id\": %d, \"category_id\": %d, \"bbox\": "
                         "[%.2f, %.2f, %.2f, %.2f], \"area\": %.3f, \"iscrowd\": %d}",
                     *n_gt ? ", " : "", *n_gt + 1, image_id, cat, b[0], b[1], b[2], b[3],
                     b[2] * b[3] * uni(&r, 0.6, 1), crowd);
            ++*n_gt;
            /* 1 to 3 jittered copies, now and then with a wrong category */
            for (int c = 1 + (int)(rng_u32(&r) % 3); c > 0 && nd < DETS_PER_IMAGE; c--, nd++) {
                double j = 0.15 * b[2];
                int dcat = rng_uniform(&r) < 0.1f ? coco_cat_id((int)(rng_u32(&r) % 80)) : cat;
                text_add(dets, "%s{\"image_id\": %d, \"category_id\": %d, \"bbox\": [%.2f, "
                               "%.2f, %.2f, %.2f], \"score\": %.3f}",
                         i || nd ? ", " : "", image_id, dcat, b[0] + uni(&r, -j, j),
                         b[1] + uni(&r, -j, j), b[2] * uni(&r, 0.8, 1.2), b[3] * uni(&r, 0.8, 1.2),
                         uni(&r, 0.3, 1));
            }
        }
        /* random false positives in a few categories fill the image up to 100 */
        for (; nd < DETS_PER_IMAGE; nd++) {
            double b[4];
            random_box(&r, b);
            text_add(dets, "%s{\"image_id\": %d, \"category_id\": %d, \"bbox\": [%.2f, %.2f, "
                           "%.2f, %.2f], \"score\": %.3f}",
                     i || nd ? ", " : "", image_id, coco_cat_id((int)(rng_u32(&r) % 20)), b[0],
                     b[1], b[2], b[3], uni(&r, 0, 0.6));
        }
    }
    text_add(gt, "], \"categories\": [");
    for (int k = 0; k < 80; k++)
        text_add(gt, "%s{\"id\": %d, \"name\": \"c%d\"}", k ? ", " : "", coco_cat_id(k), k);
    text_add(gt, "]}");
    text_add(dets, "]");
}

static void check(int rc, const Err *err)
{
    if (rc) {
        fprintf(stderr, "bench_eval: %s\n", err->msg);
        exit(1);
    }
}

static void bench_file(const char *path)
{
    CocoDataset ds;
    Err err;
    double t0 = now_s();
    check(coco_dataset_load(&ds, path, &err), &err);
    double t = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench_eval: read %s: %zu images, %zu annotations in %.2f s; peak RSS %.0f MB\n", path,
           ds.n_images, ds.n_annotations, t, (double)ru.ru_maxrss / 1024);
    coco_dataset_free(&ds);
}

int main(int argc, char **argv)
{
    Text gt_text = {0}, dets_text = {0};
    CocoDataset gt;
    CocoDetections dets;
    CocoEvalResult res;
    Err err;
    size_t n_gt;
    make_case(&gt_text, &dets_text, &n_gt);
    double t0 = now_s();
    check(coco_dataset_parse(&gt, gt_text.s, gt_text.n, "gt", &err), &err);
    double t1 = now_s();
    check(coco_detections_parse(&dets, dets_text.s, dets_text.n, "dets", &err), &err);
    double t2 = now_s();
    CocoEval *ev = coco_eval_create(&gt);
    check(coco_eval_add_dets(ev, dets.dets, dets.n, &err), &err);
    double t3 = now_s();
    coco_eval_run(ev, &res);
    double t4 = now_s();
    printf("bench_eval: %d images, %zu GT boxes, 80 categories, %zu detections\n", N_IMAGES, n_gt,
           dets.n);
    printf("bench_eval: JSON read: ground truth %.3f s (%.1f MB), detections %.3f s (%.1f MB)\n",
           t1 - t0, (double)gt_text.n / 1e6, t2 - t1, (double)dets_text.n / 1e6);
    printf("bench_eval: evaluate: index + add %.3f s, run %.3f s, total %.3f s (target <= 1 s)\n",
           t3 - t2, t4 - t3, t4 - t2);
    printf("bench_eval: AP %.4f AP50 %.4f AR100 %.4f\n", res.stats[0], res.stats[1], res.stats[8]);
    coco_eval_result_free(&res);
    coco_eval_free(ev);
    coco_detections_free(&dets);
    coco_dataset_free(&gt);
    free(gt_text.s);
    free(dets_text.s);
    if (argc == 3 && !strcmp(argv[1], "--gt")) bench_file(argv[2]);
    else if (argc != 1) fprintf(stderr, "usage: bench_eval [--gt FILE]\n");
    return argc == 1 || argc == 3 ? 0 : 2;
}
