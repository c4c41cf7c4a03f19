/* labeler.c: effdet's AnchorLabeler for one image at a time (see labeler.h for the rules and the
 * output layout).
 *
 * DESIGN
 * The cost is the anchors x GTs IoU matrix (49,104 x up to 100 for D0 at 512). It is never stored.
 * The anchors are cut into tiles of consecutive rows, which are spatially compact (rows run
 * level -> y -> x): each tile keeps its bounding box, and a GT is only compared with the tiles it
 * overlaps, since every other anchor has IoU 0 with it. A tile also stays in cache while the GTs
 * are walked over it in order; one vectorized pass (anchors as structure of arrays) computes the
 * GT's IoUs with the tile and keeps each anchor's running best.
 * - Anchor side (torch.max over GTs, first GT on ties): the best starts at IoU 0 and is replaced
 *   only by a strictly larger IoU. An anchor whose best stays 0 is background whichever GT torch
 *   would name, so the skipped zeros change nothing.
 * - GT side (torch.argmax over anchors, first anchor on ties): the force anchor starts at anchor 0
 *   with IoU 0 (torch's answer for a GT that overlaps nothing) and is replaced only by a strictly
 *   larger IoU, from the first anchor of its tile reaching the tile's maximum; tiles are visited
 *   in anchor order, so earlier anchors win ties.
 *
 * Arithmetic is float32, operation for operation as effdet's torch code (region_similarity_
 * calculator.py iou, box_list.py get_center_coordinates_and_sizes, box_coder.py encode): IoUs
 * close to the 0.5 threshold and exact ties decide the matching, so a fused multiply-add that
 * rounds once where torch rounds twice could flip a target. GNU C contracts a*b + c by default, so
 * this file turns contraction off. */
#pragma GCC optimize("fp-contract=off")

#include "worker/labeler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* FasterRcnnBoxCoder's EPS, added to the four sizes before dividing and taking logs. */
static const float BOX_EPS = 1e-7f;
static const float MATCH_THRESHOLD = 0.5f;
/* Anchors per tile: small enough that a GT overlaps few tiles of the finest level (1024 anchors
 * are about 2 rows of P3 at 512) and that a tile's 8 arrays (32 KB) stay in the L1/L2 cache. */
enum { LABELER_TILE = 1024 };

/* Carves n floats (or int32s, the same size) from a single allocation. */
static float *carve(float **cursor, size_t n)
{
    float *p = *cursor;
    *cursor += n;
    return p;
}

int labeler_init(Labeler *lb, const Anchors *anchors, int num_classes, int max_boxes, Err *err)
{
    memset(lb, 0, sizeof *lb);
    if (anchors->count <= 0 || num_classes <= 0 || max_boxes < 0)
        return err_set(err, "labeler: bad sizes (%d anchors, %d classes, %d boxes)", anchors->count,
                       num_classes, max_boxes);
    size_t n = (size_t)anchors->count, m = (size_t)max_boxes;
    size_t tiles = (n + LABELER_TILE - 1) / LABELER_TILE;
    /* 12 per-anchor arrays, the tile boxes, the tile's IoU row and 8 values per GT row (4 box,
     * area, class, force anchor and its IoU). */
    float *block = malloc((12 * n + 4 * tiles + LABELER_TILE + 8 * m) * sizeof(float));
    if (!block) return err_set(err, "labeler: out of memory for %zu anchors", n);
    lb->mem = block;
    float *cur = block;
    lb->ymin = carve(&cur, n), lb->xmin = carve(&cur, n);
    lb->ymax = carve(&cur, n), lb->xmax = carve(&cur, n);
    lb->area = carve(&cur, n);
    lb->yc = carve(&cur, n), lb->xc = carve(&cur, n), lb->h = carve(&cur, n), lb->w = carve(&cur, n);
    lb->tile_box = carve(&cur, 4 * tiles);
    lb->best_iou = carve(&cur, n), lb->iou_row = carve(&cur, LABELER_TILE);
    lb->best_gt = (int32_t *)carve(&cur, n), lb->match = (int32_t *)carve(&cur, n);
    lb->gt = carve(&cur, 4 * m), lb->gt_area = carve(&cur, m);
    lb->gt_class = (int32_t *)carve(&cur, m), lb->force_anchor = (int32_t *)carve(&cur, m);
    lb->force_iou_bits = (int32_t *)carve(&cur, m);

    lb->count = anchors->count;
    lb->num_classes = num_classes;
    lb->max_boxes = max_boxes;
    /* Anchors does not store its level count: it is the first level whose start is the end. */
    int levels = 1;
    while (levels < MAX_LEVELS && anchors->level_start[levels] < anchors->count) levels++;
    lb->num_levels = levels;
    memcpy(lb->level_start, anchors->level_start, (size_t)(levels + 1) * sizeof(int));
    for (size_t a = 0; a < n; a++) {
        const float *box = anchors->boxes + 4 * a;
        lb->ymin[a] = box[0], lb->xmin[a] = box[1], lb->ymax[a] = box[2], lb->xmax[a] = box[3];
        float h = box[2] - box[0], w = box[3] - box[1];
        lb->area[a] = h * w;
        lb->yc[a] = box[0] + h / 2.0f;
        lb->xc[a] = box[1] + w / 2.0f;
        lb->h[a] = h + BOX_EPS;
        lb->w[a] = w + BOX_EPS;
        float *tb = lb->tile_box + 4 * (a / LABELER_TILE);
        if (a % LABELER_TILE == 0) memcpy(tb, box, 4 * sizeof(float));
        tb[0] = fminf(tb[0], box[0]), tb[1] = fminf(tb[1], box[1]);
        tb[2] = fmaxf(tb[2], box[2]), tb[3] = fmaxf(tb[3], box[3]);
    }
    return 0;
}

void labeler_free(Labeler *lb)
{
    free(lb->mem);
    memset(lb, 0, sizeof *lb);
}

int labeler_check_rows(const Labeler *lb, const float *boxes, const int32_t *classes,
                       const uint8_t *crowd, int n_boxes, Err *err)
{
    if (n_boxes < 0 || n_boxes > lb->max_boxes)
        return err_set(err, "labeler: %d GT boxes, at most %d allowed", n_boxes, lb->max_boxes);
    for (int i = 0; i < n_boxes; i++) {
        if (classes[i] <= -1 || (crowd && crowd[i])) continue;
        if (classes[i] > lb->num_classes)
            return err_set(err, "labeler: GT box %d has class %d, above the %d classes", i,
                           classes[i], lb->num_classes);
        const float *b = boxes + 4 * i;
        if (!isfinite(b[0]) || !isfinite(b[1]) || !isfinite(b[2]) || !isfinite(b[3]))
            return err_set(err, "labeler: GT box %d has a non-finite coordinate", i);
    }
    return 0;
}

/* Keeps the GT rows effdet keeps (class > -1, not crowd) in order; -1 with err on bad input. */
static int labeler_gather_gts(Labeler *lb, const float *boxes, const int32_t *classes,
                              const uint8_t *crowd, int n_boxes, Err *err)
{
    if (labeler_check_rows(lb, boxes, classes, crowd, n_boxes, err) != 0) return -1;
    int k = 0;
    for (int i = 0; i < n_boxes; i++) {
        if (classes[i] <= -1 || (crowd && crowd[i])) continue;
        const float *b = boxes + 4 * i;
        memcpy(lb->gt + 4 * k, b, 4 * sizeof(float));
        lb->gt_area[k] = (b[2] - b[0]) * (b[3] - b[1]);
        lb->gt_class[k] = classes[i];
        k++;
    }
    return k;
}

/* IoU of one GT (yxyx g, area garea) against n anchors into row, keeping each anchor's best IoU
 * and its GT index. Only a strictly larger IoU replaces the best, so the first GT wins ties, as
 * torch.max over the GT dimension does. Plain comparisons rather than fminf/fmaxf, whose NaN rules
 * keep them out of vector registers; coordinates are finite (checked when GTs are gathered), so
 * every IoU is a finite float >= +0 (inter > 0 implies union >= the GT's area > 0).
 * Returns the bit pattern of the row's maximum: non-negative floats order like their bits as
 * integers, and an integer max reduction vectorizes where a float one (NaN rules) does not. */
static int32_t iou_row_update(float *restrict row, float *restrict best, int32_t *restrict best_gt,
                           const float *restrict ymin, const float *restrict xmin,
                           const float *restrict ymax, const float *restrict xmax,
                           const float *restrict area, int n, const float *g, float garea,
                           int32_t gi)
{
    const float gy0 = g[0], gx0 = g[1], gy1 = g[2], gx1 = g[3];
    int32_t max_bits = 0;
    for (int a = 0; a < n; a++) {
        /* Every value is loaded and computed unconditionally (the division too, its result is
         * discarded where inter == 0), so the loop compiles to blends instead of masked loads
         * and stores. */
        const float ay0 = ymin[a], ax0 = xmin[a], ay1 = ymax[a], ax1 = xmax[a], aa = area[a];
        const float b_iou = best[a];
        const int32_t b_gt = best_gt[a];
        float ih = (gy1 < ay1 ? gy1 : ay1) - (gy0 > ay0 ? gy0 : ay0);
        float iw = (gx1 < ax1 ? gx1 : ax1) - (gx0 > ax0 ? gx0 : ax0);
        ih = ih > 0.0f ? ih : 0.0f;
        iw = iw > 0.0f ? iw : 0.0f;
        const float inter = ih * iw;
        const float ratio = inter / ((garea + aa) - inter);
        const float iou = inter == 0.0f ? 0.0f : ratio;
        row[a] = iou;
        best[a] = iou > b_iou ? iou : b_iou;
        best_gt[a] = iou > b_iou ? gi : b_gt;
        int32_t bits;
        memcpy(&bits, &iou, sizeof bits);
        max_bits = bits > max_bits ? bits : max_bits;
    }
    return max_bits;
}

/* Runs the GTs that overlap tile t over its anchors: updates each anchor's best GT and each GT's
 * force-match anchor (see DESIGN). */
static void labeler_match_tile(Labeler *lb, int n_gt, int t)
{
    const int t0 = t * LABELER_TILE;
    const int n = lb->count - t0 < LABELER_TILE ? lb->count - t0 : LABELER_TILE;
    const float *tb = lb->tile_box + 4 * t;
    for (int g = 0; g < n_gt; g++) {
        const float *gb = lb->gt + 4 * g;
        /* A positive intersection with any anchor of the tile needs one with the tile's box. */
        if (!(gb[2] > tb[0] && tb[2] > gb[0] && gb[3] > tb[1] && tb[3] > gb[1])) continue;
        int32_t max_bits = iou_row_update(lb->iou_row, lb->best_iou + t0, lb->best_gt + t0,
                                          lb->ymin + t0, lb->xmin + t0, lb->ymax + t0,
                                          lb->xmax + t0, lb->area + t0, n, gb, lb->gt_area[g], g);
        if (max_bits <= lb->force_iou_bits[g]) continue; /* earlier anchors win ties */
        float max;
        memcpy(&max, &max_bits, sizeof max);
        int arg = 0;
        while (arg < n - 1 && lb->iou_row[arg] != max) arg++;
        lb->force_iou_bits[g] = max_bits;
        lb->force_anchor[g] = t0 + arg;
    }
}

/* FasterRcnnBoxCoder.encode of GT g against anchor a. */
static void labeler_encode(const Labeler *lb, float *t, int g, int a)
{
    const float *b = lb->gt + 4 * g;
    float h = b[2] - b[0], w = b[3] - b[1];
    float yc = b[0] + h / 2.0f, xc = b[1] + w / 2.0f;
    t[0] = (yc - lb->yc[a]) / lb->h[a];
    t[1] = (xc - lb->xc[a]) / lb->w[a];
    t[2] = logf((h + BOX_EPS) / lb->h[a]);
    t[3] = logf((w + BOX_EPS) / lb->w[a]);
}

int labeler_label_image(Labeler *lb, int32_t *cls_target, float *box_target, int b, int batch,
                        const float *boxes, const int32_t *classes, const uint8_t *crowd,
                        int n_boxes, Err *err)
{
    if (batch < 1 || b < 0 || b >= batch)
        return err_set(err, "labeler: image %d of a batch of %d", b, batch);
    int n_gt = labeler_gather_gts(lb, boxes, classes, crowd, n_boxes, err);
    if (n_gt < 0) return -1;

    /* Start states of DESIGN: IoU 0 everywhere (the bits of +0.0f are 0). */
    for (int a = 0; a < lb->count; a++) lb->best_iou[a] = 0.0f, lb->best_gt[a] = 0;
    for (int g = 0; g < n_gt; g++) lb->force_iou_bits[g] = 0, lb->force_anchor[g] = 0;
    for (int t = 0; t * LABELER_TILE < lb->count; t++) labeler_match_tile(lb, n_gt, t);
    for (int a = 0; a < lb->count; a++)
        lb->match[a] = n_gt > 0 && lb->best_iou[a] >= MATCH_THRESHOLD ? lb->best_gt[a] : -1;
    /* Force matches override; walking the GTs backwards lets the lowest GT index win. */
    for (int g = n_gt - 1; g >= 0; g--) lb->match[lb->force_anchor[g]] = g;

    int positives = 0;
    for (int l = 0; l < lb->num_levels; l++) {
        int start = lb->level_start[l], size = lb->level_start[l + 1] - start;
        size_t out = (size_t)batch * start + (size_t)b * size;
        for (int i = 0; i < size; i++) {
            int a = start + i, g = lb->match[a];
            int32_t *c = cls_target + out + i;
            float *t = box_target + 4 * (out + i);
            if (g < 0) {
                *c = LABEL_BACKGROUND;
                t[0] = t[1] = t[2] = t[3] = 0.0f;
                continue;
            }
            *c = lb->gt_class[g] - 1;
            labeler_encode(lb, t, g, a);
            positives++;
        }
    }
    return positives;
}
