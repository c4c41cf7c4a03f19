/* postprocess.c: top-k, box decoding and per-class NMS (see postprocess.h). */
#include "worker/postprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int postprocess_init(Postprocess *p, const ModelConfig *cfg, const Anchors *anchors, Err *err)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->anchors = anchors;
    long total = (long)anchors->count * cfg->num_classes;
    p->k = total < cfg->max_detection_points ? (int)total : cfg->max_detection_points;
    size_t k = (size_t)(p->k ? p->k : 1);
    p->heap = malloc(k * sizeof *p->heap);
    p->heap_val = malloc(k * sizeof *p->heap_val);
    p->cand = malloc(k * sizeof *p->cand);
    p->order = malloc(k * sizeof *p->order);
    p->suppressed = malloc(k);
    if (!p->heap || !p->heap_val || !p->cand || !p->order || !p->suppressed) {
        postprocess_free(p);
        return err_set(err, "postprocess: out of memory");
    }
    return 0;
}

void postprocess_free(Postprocess *p)
{
    free(p->heap), free(p->heap_val), free(p->cand), free(p->order), free(p->suppressed);
    p->heap = NULL, p->heap_val = NULL, p->cand = NULL, p->order = NULL, p->suppressed = NULL;
}

/* Min-heap on (value, then larger index first) so the heap root is the weakest kept candidate;
 * among equal logits the lower flattened index wins, a deterministic order. */
static int weaker(float va, int ia, float vb, int ib) { return va < vb || (va == vb && ia > ib); }

static void heap_sift_down(float *v, int *idx, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && weaker(v[l], idx[l], v[m], idx[m])) m = l;
        if (r < n && weaker(v[r], idx[r], v[m], idx[m])) m = r;
        if (m == i) return;
        float tv = v[i]; v[i] = v[m]; v[m] = tv;
        int ti = idx[i]; idx[i] = idx[m]; idx[m] = ti;
        i = m;
    }
}

/* Selects the k largest logits over every (anchor, class) of the image. */
static void select_topk(Postprocess *p, const float *const *cls)
{
    const ModelConfig *c = p->cfg;
    int n = 0, C = c->num_classes;
    for (int l = 0; l < c->num_levels; l++) {
        int a0 = p->anchors->level_start[l];
        long count = (long)(p->anchors->level_start[l + 1] - a0) * C;
        const float *x = cls[l];
        for (long j = 0; j < count; j++) {
            int flat = (int)((long)a0 * C + j);
            if (n < p->k) {
                p->heap_val[n] = x[j], p->heap[n] = flat, n++;
                if (n == p->k)
                    for (int i = n / 2 - 1; i >= 0; i--) heap_sift_down(p->heap_val, p->heap, n, i);
            } else if (weaker(p->heap_val[0], p->heap[0], x[j], flat)) {
                p->heap_val[0] = x[j], p->heap[0] = flat;
                heap_sift_down(p->heap_val, p->heap, n, 0);
            }
        }
    }
}

/* Decodes candidate i (flattened index) into p->cand, effdet's decode_box_outputs in float32. */
static void decode(Postprocess *p, int slot, int flat, float logit, const float *const *box)
{
    const ModelConfig *c = p->cfg;
    int C = c->num_classes, anchor = flat / C, l = 0;
    while (anchor >= p->anchors->level_start[l + 1]) l++;
    const float *t = box[l] + (size_t)(anchor - p->anchors->level_start[l]) * 4;
    const float *an = p->anchors->boxes + (size_t)anchor * 4;
    float yca = (an[0] + an[2]) / 2.0f, xca = (an[1] + an[3]) / 2.0f;
    float ha = an[2] - an[0], wa = an[3] - an[1];
    float w = expf(t[3]) * wa, h = expf(t[2]) * ha;
    float yc = t[0] * ha + yca, xc = t[1] * wa + xca;
    Detection *d = &p->cand[slot];
    d->x1 = xc - w / 2.0f, d->y1 = yc - h / 2.0f, d->x2 = xc + w / 2.0f, d->y2 = yc + h / 2.0f;
    d->score = 1.0f / (1.0f + expf(-logit));
    d->class_id = flat % C + 1;
}

static int by_score_desc(const void *a, const void *b, void *ctx)
{
    const Detection *cand = ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (cand[i].score != cand[j].score) return cand[i].score > cand[j].score ? -1 : 1;
    if (cand[i].class_id != cand[j].class_id) return cand[i].class_id - cand[j].class_id;
    return i - j;
}

static float iou(const Detection *a, const Detection *b)
{
    float area_a = (a->x2 - a->x1) * (a->y2 - a->y1), area_b = (b->x2 - b->x1) * (b->y2 - b->y1);
    float xx1 = fmaxf(a->x1, b->x1), yy1 = fmaxf(a->y1, b->y1);
    float xx2 = fminf(a->x2, b->x2), yy2 = fminf(a->y2, b->y2);
    float w = fmaxf(0.0f, xx2 - xx1), h = fmaxf(0.0f, yy2 - yy1), inter = w * h;
    return inter / (area_a + area_b - inter);
}

void postprocess_to_original(Detection *d, float img_scale, int orig_w, int orig_h)
{
    float mw = orig_w / img_scale, mh = orig_h / img_scale;
    d->x1 = fminf(fmaxf(d->x1, 0.0f), mw) * img_scale;
    d->x2 = fminf(fmaxf(d->x2, 0.0f), mw) * img_scale;
    d->y1 = fminf(fmaxf(d->y1, 0.0f), mh) * img_scale;
    d->y2 = fminf(fmaxf(d->y2, 0.0f), mh) * img_scale;
}

int postprocess_image(Postprocess *p, const float *const *cls, const float *const *box,
                      float img_scale, int orig_w, int orig_h, Detection *out)
{
    select_topk(p, cls);
    for (int i = 0; i < p->k; i++) decode(p, i, p->heap[i], p->heap_val[i], box);
    /* Sorting by (score, class) makes each class's candidates contiguous in score order for the
     * greedy NMS, exactly what per-class NMS over a score-sorted list does. */
    for (int i = 0; i < p->k; i++) p->order[i] = i;
    qsort_r(p->order, (size_t)p->k, sizeof *p->order, by_score_desc, p->cand);
    memset(p->suppressed, 0, (size_t)p->k);
    int kept = 0, max_det = p->cfg->max_det_per_image;
    for (int a = 0; a < p->k && kept < max_det; a++) {
        int i = p->order[a];
        if (p->suppressed[i]) continue;
        Detection d = p->cand[i];
        for (int b = a + 1; b < p->k; b++) {
            int j = p->order[b];
            if (!p->suppressed[j] && p->cand[j].class_id == d.class_id &&
                iou(&d, &p->cand[j]) > p->cfg->nms_iou)
                p->suppressed[j] = 1;
        }
        if (img_scale > 0) postprocess_to_original(&d, img_scale, orig_w, orig_h);
        out[kept++] = d;
    }
    return kept;
}
