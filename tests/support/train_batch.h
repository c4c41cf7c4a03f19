/* train_batch.h: a small synthetic training batch for trainer tests (D0 at 64x64, batch 2, 3 box
 * rows per image, the last one padding), that depends only on the step, so a resumed run sees the
 * same data as a straight one. */
#ifndef EFFDET_TEST_TRAIN_BATCH_H
#define EFFDET_TEST_TRAIN_BATCH_H

#include <stdint.h>

enum { TB_BATCH = 2, TB_H = 64, TB_W = 64, TB_ROWS = 3, TB_CLASSES = 3 };

typedef struct TrainBatch {
    float input[TB_BATCH * TB_H * TB_W * 3]; /* normalized NHWC, N(0, 1) */
    float boxes[TB_BATCH * TB_ROWS * 4];     /* yxyx input pixels */
    int32_t classes[TB_BATCH * TB_ROWS];     /* 1..TB_CLASSES, -1 padding */
} TrainBatch;

void train_batch_make(TrainBatch *b, long step);

#endif
