/* anchors.h: effdet's anchor boxes (anchors.py `Anchors`), for any input size.
 *
 * Rows are ordered level (min..max) -> y -> x -> anchor a = octave * num_aspects + aspect, which is
 * the flattening of the NHWC head outputs concatenated over levels. For level l with feature size
 * (fh, fw): stride_y = H / fh and stride_x = W / fw as floats (not 2^l when H, W are not
 * divisible), centres stride/2 + i * stride, half sizes anchor_scale * stride * 2^(octave/3) *
 * aspect / 2. Computed in float64 and stored in float32, [ymin, xmin, ymax, xmax]. */
#ifndef EFFDET_ANCHORS_H
#define EFFDET_ANCHORS_H

#include "shared/err.h"
#include "worker/model/config.h"

typedef struct Anchors {
    int count;
    int level_start[MAX_LEVELS + 1]; /* first row of each level; level_start[L] == count */
    float *boxes;                    /* (count, 4) yxyx, input pixels */
} Anchors;

int anchors_build(Anchors *a, const ModelConfig *c, int h, int w, Err *err);
void anchors_free(Anchors *a); /* idempotent */

#endif
