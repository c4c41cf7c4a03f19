/* coco_eval.c: the COCO bbox evaluator's entry points (see coco_eval.h).
 *
 * DESIGN
 * The result must be pycocotools' to the last bit (docs/evaluator.md lists its rules), and a
 * val2017-sized evaluation (5,000 images, 36k boxes, 500k detections) must take well under a
 * second on one core, where pycocotools takes about a minute. Three passes:
 *
 * 1. Ground truth is indexed once at create: image and category ids sorted (pycocotools
 *    evaluates sorted ids), boxes grouped by (image, category) in file order, and the number of
 *    non-ignored boxes per (category, area range), which is all accumulate needs of GT that no
 *    detection matched.
 * 2. run sorts the detections by (image, category, descending score, arrival order) and walks
 *    images and categories in step with the GT groups. Each (image, category) keeps its 100 best
 *    detections and is matched once for the 4 area ranges x 10 IoU thresholds
 *    (coco_eval_match.c); the outcome is two bits per (area, threshold) in a 32-byte record per
 *    detection. Matching only 100 and cutting to 1 or 10 later is what pycocotools does too, and
 *    is exact because greedy matching in score order never looks at lower-scored detections.
 * 3. accumulate ranks each category's records by score (a stable radix sort) and walks them
 *    once per (area, maxDets, threshold) (coco_eval_accum.c); summarize averages with numpy's
 *    pairwise summation.
 * Sorting is counting and radix sorts, lookups by id are hashed: on the val2017-sized bench the
 * whole evaluation takes about 0.3 s on one core (docs/evaluator.md).
 *
 * Detections arrive either as a whole results file or image by image (the evaluator process
 * receives them from workers during an epoch); the arrival order is kept in each detection, as
 * score ties are broken by it, and images delivered one by one are tracked so that a duplicate
 * is refused and a missing one can be named. Everything is owned by the CocoEval; no globals. */
#include "evaluator/coco_eval_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

/* id -> index, open addressing. */
typedef struct EvalIdMap {
    int64_t *keys;
    uint32_t *vals; /* UINT32_MAX: empty slot */
    int shift;      /* 64 - log2(slots) */
} EvalIdMap;

struct CocoEval {
    CocoEvalParams params;
    size_t n_images, n_cats;
    int64_t *image_ids, *cat_ids; /* (n_images), (n_cats) ascending */
    EvalIdMap image_map, cat_map; /* id -> index into those */
    EvalGt *gt;                   /* (n_gt) grouped by image, then category, file order within */
    size_t n_gt;
    size_t *gt_start;             /* (n_images + 1) where each image's GT begins */
    uint32_t *npig;               /* (n_cats, areas) non-ignored GT */
    EvalScratch scratch;
    EvalDet *dets;                /* (n_dets) */
    size_t n_dets, cap_dets, n_unknown_cat;
    uint64_t next_seq;
    uint8_t *delivered;           /* (n_images) set by coco_eval_add_image */
};

const char *const coco_eval_stat_names[COCO_EVAL_NUM_STATS] = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

/* np.linspace(start, stop, num): arange(num) * step + start, with the last value set to stop. */
static void eval_linspace(double start, double stop, int num, double *out)
{
    double step = (stop - start) / (num - 1);
    for (int i = 0; i < num; i++) out[i] = (double)i * step + start;
    out[num - 1] = stop;
}

void coco_eval_params_default(CocoEvalParams *p)
{
    static const int max_dets[COCO_EVAL_NUM_MAX_DETS] = {1, 10, 100};
    static const double ranges[COCO_EVAL_NUM_AREAS][2] = {
        {0, 1e10}, {0, 32 * 32}, {32 * 32, 96 * 96}, {96 * 96, 1e10}};
    eval_linspace(.5, .95, COCO_EVAL_NUM_IOU, p->iou_thresholds);
    eval_linspace(0, 1, COCO_EVAL_NUM_RECALL, p->recall_thresholds);
    memcpy(p->max_dets, max_dets, sizeof max_dets);
    memcpy(p->area_ranges, ranges, sizeof ranges);
}

static int eval_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* An open-addressing hash from id to index: 500k detections look up image and category. */
static void eval_idmap_init(EvalIdMap *m, const int64_t *ids, size_t n)
{
    int bits = 4;
    while (((size_t)1 << bits) < 2 * n) bits++;
    size_t cap = (size_t)1 << bits;
    m->shift = 64 - bits;
    m->keys = malloc(cap * sizeof *m->keys);
    m->vals = malloc(cap * sizeof *m->vals);
    ASSERT(m->keys && m->vals && n < UINT32_MAX);
    memset(m->vals, 0xff, cap * sizeof *m->vals);
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)((uint64_t)ids[i] * 0x9e3779b97f4a7c15u >> m->shift);
        while (m->vals[h] != UINT32_MAX) h = (h + 1) & (cap - 1);
        m->keys[h] = ids[i];
        m->vals[h] = (uint32_t)i;
    }
}

static void eval_idmap_free(EvalIdMap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* Index of id, or -1. */
static int64_t eval_idmap_find(const EvalIdMap *m, int64_t id)
{
    size_t mask = ((size_t)1 << (64 - m->shift)) - 1;
    for (size_t h = (size_t)((uint64_t)id * 0x9e3779b97f4a7c15u >> m->shift);
         m->vals[h] != UINT32_MAX; h = (h + 1) & mask)
        if (m->keys[h] == id) return m->vals[h];
    return -1;
}

/* The ids of n records (stride bytes apart, the id at id_off), sorted. */
static int64_t *eval_sorted_ids(const void *items, size_t id_off, size_t stride, size_t n)
{
    int64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    ASSERT(ids);
    for (size_t i = 0; i < n; i++)
        ids[i] = *(const int64_t *)((const char *)items + i * stride + id_off);
    qsort(ids, n, sizeof *ids, eval_cmp_i64);
    return ids;
}

typedef struct EvalGtKey {
    uint32_t img, cat, pos;
} EvalGtKey;

static int eval_cmp_gt_key(const void *pa, const void *pb)
{
    const EvalGtKey *a = pa, *b = pb;
    if (a->img != b->img) return a->img < b->img ? -1 : 1;
    if (a->cat != b->cat) return a->cat < b->cat ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

/* Groups the GT by (image, category), counts non-ignored GT per (category, area) and sizes the
 * matching scratch for the largest group. */
static void eval_index_gt(CocoEval *ev, const CocoDataset *ds)
{
    size_t n = ds->n_annotations, max_group = 0;
    EvalGtKey *keys = malloc((n ? n : 1) * sizeof *keys);
    ev->gt = malloc((n ? n : 1) * sizeof *ev->gt);
    ev->gt_start = calloc(ev->n_images + 1, sizeof *ev->gt_start);
    ev->npig = calloc(ev->n_cats * COCO_EVAL_NUM_AREAS + 1, sizeof *ev->npig);
    ASSERT(keys && ev->gt && ev->gt_start && ev->npig && n <= UINT32_MAX);
    for (size_t i = 0; i < n; i++) {
        const CocoAnnotation *a = &ds->annotations[i];
        int64_t img = eval_idmap_find(&ev->image_map, a->image_id);
        int64_t cat = eval_idmap_find(&ev->cat_map, a->category_id);
        ASSERT(img >= 0 && cat >= 0); /* coco_dataset_parse checks both */
        keys[i] = (EvalGtKey){(uint32_t)img, (uint32_t)cat, (uint32_t)i};
    }
    qsort(keys, n, sizeof *keys, eval_cmp_gt_key);
    for (size_t i = 0, group = 0; i < n; i++) {
        const CocoAnnotation *a = &ds->annotations[keys[i].pos];
        EvalGt *g = &ev->gt[i];
        memcpy(g->box, a->bbox, sizeof g->box);
        g->area = a->area, g->cat = keys[i].cat, g->crowd = a->iscrowd != 0;
        g->id_nonzero = a->id != 0;
        ev->gt_start[keys[i].img + 1]++;
        int same = i && keys[i].img == keys[i - 1].img && keys[i].cat == keys[i - 1].cat;
        group = same ? group + 1 : 1;
        max_group = group > max_group ? group : max_group;
        for (int r = 0; r < COCO_EVAL_NUM_AREAS && !g->crowd; r++)
            ev->npig[g->cat * COCO_EVAL_NUM_AREAS + r] +=
                g->area >= ev->params.area_ranges[r][0] && g->area <= ev->params.area_ranges[r][1];
    }
    for (size_t i = 0; i < ev->n_images; i++) ev->gt_start[i + 1] += ev->gt_start[i];
    ev->n_gt = n;
    coco_eval__scratch_init(&ev->scratch, max_group);
    free(keys);
}

CocoEval *coco_eval_create(const CocoDataset *gt)
{
    CocoEval *ev = calloc(1, sizeof *ev);
    ASSERT(ev);
    coco_eval_params_default(&ev->params);
    ev->n_images = gt->n_images;
    ev->n_cats = gt->n_categories;
    ev->image_ids = eval_sorted_ids(gt->images, offsetof(CocoImage, id), sizeof(CocoImage),
                                    gt->n_images);
    ev->cat_ids = eval_sorted_ids(gt->categories, offsetof(CocoCategory, id), sizeof(CocoCategory),
                                  gt->n_categories);
    eval_idmap_init(&ev->image_map, ev->image_ids, ev->n_images);
    eval_idmap_init(&ev->cat_map, ev->cat_ids, ev->n_cats);
    ev->delivered = calloc(ev->n_images + 1, 1);
    ASSERT(ev->delivered);
    eval_index_gt(ev, gt);
    return ev;
}

void coco_eval_free(CocoEval *ev)
{
    if (!ev) return;
    free(ev->image_ids);
    free(ev->cat_ids);
    eval_idmap_free(&ev->image_map);
    eval_idmap_free(&ev->cat_map);
    free(ev->gt);
    free(ev->gt_start);
    free(ev->npig);
    coco_eval__scratch_free(&ev->scratch);
    free(ev->dets);
    free(ev->delivered);
    free(ev);
}

/* The checks pycocotools' loadRes makes (an image id it does not know) plus those it should
 * (boxes and scores it would silently mis-rank or mis-match). */
static int eval_check_det(const CocoEval *ev, const CocoDetection *d, size_t i, Err *err)
{
    if (eval_idmap_find(&ev->image_map, d->image_id) < 0)
        return err_set(err, "detection %zu: image_id %lld is not in the ground truth", i,
                       (long long)d->image_id);
    for (int k = 0; k < 4; k++)
        if (!isfinite(d->bbox[k]))
            return err_set(err, "detection %zu (image %lld): bbox holds a non-finite number", i,
                           (long long)d->image_id);
    if (d->bbox[2] < 0 || d->bbox[3] < 0)
        return err_set(err, "detection %zu (image %lld): bbox has a negative %s", i,
                       (long long)d->image_id, d->bbox[2] < 0 ? "width" : "height");
    if (isnan(d->score))
        return err_set(err, "detection %zu (image %lld): score is NaN", i, (long long)d->image_id);
    return 0;
}

/* Appends checked detections; those of a category the ground truth lacks are counted and dropped,
 * as pycocotools evaluates only the ground truth's categories. */
static void eval_append(CocoEval *ev, const CocoDetection *dets, size_t n)
{
    if (ev->n_dets + n > ev->cap_dets) {
        ev->cap_dets = ev->n_dets + n > 2 * ev->cap_dets ? ev->n_dets + n : 2 * ev->cap_dets;
        ev->dets = realloc(ev->dets, ev->cap_dets * sizeof *ev->dets);
        ASSERT(ev->dets);
    }
    for (size_t i = 0; i < n; i++) {
        const CocoDetection *d = &dets[i];
        int64_t cat = eval_idmap_find(&ev->cat_map, d->category_id);
        if (cat < 0) {
            ev->n_unknown_cat++;
            continue;
        }
        EvalDet *e = &ev->dets[ev->n_dets++];
        memcpy(e->box, d->bbox, sizeof e->box);
        e->score = d->score;
        e->img = (uint32_t)eval_idmap_find(&ev->image_map, d->image_id);
        e->cat = (uint32_t)cat;
        e->seq = ev->next_seq++;
    }
}

int coco_eval_add_dets(CocoEval *ev, const CocoDetection *dets, size_t n, Err *err)
{
    for (size_t i = 0; i < n; i++)
        if (eval_check_det(ev, &dets[i], i, err)) return -1;
    eval_append(ev, dets, n);
    return 0;
}

int coco_eval_add_image(CocoEval *ev, int64_t image_id, const CocoDetection *dets, size_t n,
                        Err *err)
{
    int64_t img = eval_idmap_find(&ev->image_map, image_id);
    if (img < 0) return err_set(err, "image %lld is not in the ground truth", (long long)image_id);
    if (ev->delivered[img])
        return err_set(err, "image %lld delivered twice", (long long)image_id);
    for (size_t i = 0; i < n; i++) {
        if (dets[i].image_id != image_id)
            return err_set(err, "image %lld: detection %zu has image_id %lld", (long long)image_id,
                           i, (long long)dets[i].image_id);
        if (eval_check_det(ev, &dets[i], i, err)) return -1;
    }
    ev->delivered[img] = 1;
    eval_append(ev, dets, n);
    return 0;
}

int coco_eval_check_complete(const CocoEval *ev, Err *err)
{
    size_t missing = 0, first = 0;
    for (size_t i = ev->n_images; i-- > 0;)
        if (!ev->delivered[i]) missing++, first = i;
    if (missing)
        return err_set(err, "%zu of %zu images missing, the first is image %lld", missing,
                       ev->n_images, (long long)ev->image_ids[first]);
    return 0;
}

void coco_eval_reset(CocoEval *ev)
{
    ev->n_dets = 0;
    ev->n_unknown_cat = 0;
    ev->next_seq = 0;
    memset(ev->delivered, 0, ev->n_images);
}

static int eval_cmp_det_score(const void *pa, const void *pb)
{
    const EvalDet *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Stable sort of one (image, category) run by descending score (numpy's mergesort of -score):
 * insertion sort for the usual handful, qsort on (score, arrival) beyond. */
static void eval_sort_run(EvalDet *d, size_t n)
{
    if (n > 16) {
        qsort(d, n, sizeof *d, eval_cmp_det_score);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        EvalDet x = d[i];
        size_t j = i;
        for (; j > 0 && d[j - 1].score < x.score; j--) d[j] = d[j - 1];
        d[j] = x;
    }
}

/* The detections sorted by (image, category, descending score, arrival): a stable counting sort
 * by image, one by category within each image, then each run by score. */
static EvalDet *eval_sort_dets(const CocoEval *ev)
{
    size_t n = ev->n_dets, K = ev->n_cats;
    EvalDet *tmp = malloc((n ? n : 1) * sizeof *tmp), *out = malloc((n ? n : 1) * sizeof *out);
    size_t *at = calloc(ev->n_images + 1, sizeof *at), *cat_at = malloc((K + 1) * sizeof *cat_at);
    ASSERT(tmp && out && at && cat_at);
    for (size_t i = 0; i < n; i++) at[ev->dets[i].img + 1]++;
    for (size_t i = 0; i < ev->n_images; i++) at[i + 1] += at[i];
    for (size_t i = 0; i < n; i++) tmp[at[ev->dets[i].img]++] = ev->dets[i];
    for (size_t s = 0, e; s < n; s = e) { /* at[img] is now where image img ends */
        e = at[tmp[s].img];
        memset(cat_at, 0, (K + 1) * sizeof *cat_at);
        for (size_t i = s; i < e; i++) cat_at[tmp[i].cat + 1]++;
        for (size_t k = 0; k < K; k++) cat_at[k + 1] += cat_at[k];
        for (size_t i = s; i < e; i++) out[s + cat_at[tmp[i].cat]++] = tmp[i];
    }
    for (size_t s = 0, e; s < n; s = e) {
        for (e = s + 1; e < n && out[e].img == out[s].img && out[e].cat == out[s].cat; e++) {}
        eval_sort_run(out + s, e - s);
    }
    free(tmp);
    free(at);
    free(cat_at);
    return out;
}

/* Matches every (image, category) that has detections; returns the number of records written
 * (at most one per detection) and counts the detections past the 100 best. */
static size_t eval_match_all(CocoEval *ev, EvalRec *recs, size_t *over)
{
    size_t n_recs = 0, di = 0;
    uint32_t flags[EVAL_MAX_DETS][COCO_EVAL_NUM_AREAS];
    EvalDet *dets = eval_sort_dets(ev);
    *over = 0;
    while (di < ev->n_dets) {
        uint32_t img = dets[di].img, cat = dets[di].cat;
        size_t de = di;
        while (de < ev->n_dets && dets[de].img == img && dets[de].cat == cat) de++;
        /* the image's GT of this category: its groups are sorted by category */
        size_t gi = ev->gt_start[img], ge = ev->gt_start[img + 1];
        while (gi < ge && ev->gt[gi].cat < cat) gi++;
        size_t gend = gi;
        while (gend < ge && ev->gt[gend].cat == cat) gend++;
        size_t nd = de - di < EVAL_MAX_DETS ? de - di : EVAL_MAX_DETS;
        *over += de - di - nd;
        coco_eval__match(&ev->params, ev->gt + gi, gend - gi, dets + di, nd, &ev->scratch, flags);
        for (size_t i = 0; i < nd; i++) {
            EvalRec *r = &recs[n_recs++];
            r->score = dets[di + i].score;
            r->cat = cat;
            r->rank = (uint32_t)i;
            memcpy(r->flags, flags[i], sizeof r->flags);
        }
        di = de;
    }
    free(dets);
    return n_recs;
}

void coco_eval_run(CocoEval *ev, CocoEvalResult *res)
{
    size_t K = ev->n_cats, over;
    memset(res, 0, sizeof *res);
    ASSERT(ev->n_dets <= UINT32_MAX);
    EvalRec *recs = malloc((ev->n_dets ? ev->n_dets : 1) * sizeof *recs);
    size_t n_prec = COCO_EVAL_NUM_AREAS * COCO_EVAL_NUM_IOU * COCO_EVAL_NUM_RECALL * K + 1;
    size_t n_recall = COCO_EVAL_NUM_AREAS * COCO_EVAL_NUM_MAX_DETS * COCO_EVAL_NUM_IOU * K + 1;
    double *prec = malloc(n_prec * sizeof *prec), *recall = malloc(n_recall * sizeof *recall);
    res->category_ids = malloc((K ? K : 1) * sizeof *res->category_ids);
    res->category_ap = malloc((K ? K : 1) * sizeof *res->category_ap);
    ASSERT(recs && prec && recall && res->category_ids && res->category_ap);
    size_t n_recs = eval_match_all(ev, recs, &over);
    coco_eval__accumulate(&ev->params, recs, n_recs, K, ev->npig, prec, recall);
    coco_eval__summarize(prec, recall, K, &ev->params, res->stats, res->category_ap);
    memcpy(res->category_ids, ev->cat_ids, K * sizeof *res->category_ids);
    res->n_categories = K;
    res->n_dets = ev->n_dets + ev->n_unknown_cat;
    res->n_dets_unknown_category = ev->n_unknown_cat;
    res->n_dets_over_max = over;
    free(recs);
    free(prec);
    free(recall);
}

void coco_eval_result_free(CocoEvalResult *res)
{
    free(res->category_ids);
    free(res->category_ap);
    memset(res, 0, sizeof *res);
}

void coco_eval_write_summary(FILE *f, const CocoEvalResult *res)
{
    /* summarize()'s ' {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}' */
    static const struct { int ap; const char *iou, *area; int max_dets; } rows[] = {
        {1, "0.50:0.95", "all", 100},   {1, "0.50", "all", 100},       {1, "0.75", "all", 100},
        {1, "0.50:0.95", "small", 100}, {1, "0.50:0.95", "medium", 100},
        {1, "0.50:0.95", "large", 100}, {0, "0.50:0.95", "all", 1},    {0, "0.50:0.95", "all", 10},
        {0, "0.50:0.95", "all", 100},   {0, "0.50:0.95", "small", 100},
        {0, "0.50:0.95", "medium", 100}, {0, "0.50:0.95", "large", 100}};
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        fprintf(f, " %-18s %s @[ IoU=%-9s | area=%6s | maxDets=%3d ] = %0.3f\n",
                rows[s].ap ? "Average Precision" : "Average Recall", rows[s].ap ? "(AP)" : "(AR)",
                rows[s].iou, rows[s].area, rows[s].max_dets, res->stats[s]);
}
