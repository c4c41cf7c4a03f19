/* labeler.h: training targets per anchor, exactly as effdet's AnchorLabeler computes them
 * (anchors.py `AnchorLabeler.batch_label_anchors` with IouSimilarity, ArgMaxMatcher(0.5, 0.5,
 * force_match_for_each_row=True) and FasterRcnnBoxCoder without scale factors).
 *
 * Rules, for one image:
 * - GT rows with class <= -1 are dropped, and so are crowd rows (effdet's parsers move crowd boxes
 *   out of the target list before labeling). The remaining GTs keep their order.
 * - IoU(GT, anchor) on yxyx boxes in float32, operation for operation as effdet's torch code
 *   (0 where the intersection is 0). Each anchor takes its max-IoU GT (the first GT on ties) and
 *   is positive when that IoU >= 0.5, background otherwise (matched and unmatched thresholds are
 *   both 0.5, so no anchor is ignored).
 * - Then every GT is force-matched to its argmax-IoU anchor (the first anchor on ties; a GT that
 *   overlaps no anchor at all therefore takes anchor 0, as in effdet), overriding the above; when
 *   several GTs force-match the same anchor the lowest GT index wins.
 * - A positive anchor gets class target = GT class - 1 (0-based channel; effdet does the same for
 *   class 0, which yields -1 on a positive anchor) and box target (ty, tx, th, tw):
 *   ty = (yc - yc_a) / (ha + eps), tx = (xc - xc_a) / (wa + eps), th = log((h + eps) / (ha + eps)),
 *   tw = log((w + eps) / (wa + eps)), eps = 1e-7. Background anchors get -1 and four zeros.
 *   LABEL_IGNORE (-2) is reserved for ignored anchors; these thresholds never produce it.
 *
 * Output layout. The outputs of a batch are level-major so that each pyramid level is one
 * contiguous (batch * fh * fw * A) slice, the flattening of that level's NHWC head output
 * (B, fh, fw, A*C): anchor row r of level l (level_start[l] <= r < level_start[l+1]) of image b
 * sits at row  batch * level_start[l] + b * (level_start[l+1] - level_start[l])
 *                                     + (r - level_start[l]).
 * With batch = 1 this is simply the anchor order (level -> y -> x -> anchor). cls_target has one
 * int32 per row, box_target four floats per row. The detection_loss op of level l then takes
 * cls_target + batch * level_start[l] and box_target + 4 * batch * level_start[l].
 *
 * Scratch memory is allocated once by labeler_init for up to max_boxes GT rows; labeling an image
 * allocates nothing. A Labeler is not shared between threads (one per labeling thread). */
#ifndef EFFDET_LABELER_H
#define EFFDET_LABELER_H

#include <stdint.h>

#include "shared/err.h"
#include "worker/anchors.h"

enum { LABEL_BACKGROUND = -1, LABEL_IGNORE = -2 };

typedef struct Labeler {
    int count;                           /* anchors */
    int num_levels;
    int level_start[MAX_LEVELS + 1];
    int num_classes;
    int max_boxes;
    void *mem; /* the one allocation; every array below is carved from it */
    /* Anchors as structure of arrays, so the anchors x GTs IoU loop vectorizes, plus their areas,
     * centres and sizes as effdet's float32 code computes them. */
    float *ymin, *xmin, *ymax, *xmax, *area;
    float *yc, *xc, *h, *w;
    float *tile_box; /* bounding box of each tile of anchors (labeler.c DESIGN) */
    /* Per-anchor scratch: best IoU so far, its GT, the final match (-1 background); and the IoUs
     * of the current GT with the current tile of anchors. */
    float *best_iou;
    int32_t *best_gt, *match;
    float *iou_row;
    /* Per-GT scratch (max_boxes rows): kept boxes, their areas and classes, the force-match
     * anchor so far and the bits of its IoU (see labeler.c). */
    float *gt, *gt_area;
    int32_t *gt_class, *force_anchor, *force_iou_bits;
} Labeler;

/* Copies what it needs from anchors (the Anchors may be freed afterwards). num_classes bounds the
 * accepted class ids (1..num_classes); max_boxes bounds the GT rows per image (before dropping). */
int labeler_init(Labeler *lb, const Anchors *anchors, int num_classes, int max_boxes, Err *err);
void labeler_free(Labeler *lb); /* idempotent */

/* Labels image b of a batch of `batch` images into the level-major outputs described above.
 * boxes (n_boxes, 4) yxyx input pixels; classes (n_boxes) 1-based, <= -1 means padding;
 * crowd (n_boxes) nonzero marks a crowd box, or NULL for none. Returns the number of positive
 * anchors (>= 0), or -1 with err filled for bad input: more than max_boxes rows, a class above
 * num_classes, a non-finite coordinate. */
/* The checks labeler_label_image makes on one image's GT rows (at most max_boxes rows; in every
 * row it keeps, a class up to num_classes and finite coordinates), for callers that label on a
 * backend (ops->label_anchors). 0, or -1 with err naming the row. */
int labeler_check_rows(const Labeler *lb, const float *boxes, const int32_t *classes,
                       const uint8_t *crowd, int n_boxes, Err *err);

int labeler_label_image(Labeler *lb, int32_t *cls_target, float *box_target, int b, int batch,
                        const float *boxes, const int32_t *classes, const uint8_t *crowd,
                        int n_boxes, Err *err);

#endif
