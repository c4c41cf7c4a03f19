/* train_batch.c: see train_batch.h. */
#include "tests/support/train_batch.h"

#include <stddef.h>

#include "shared/rng.h"

void train_batch_make(TrainBatch *b, long step)
{
    Rng r;
    rng_init(&r, 5, 77, (uint32_t)step);
    for (size_t i = 0; i < sizeof b->input / sizeof b->input[0]; i++) b->input[i] = rng_normal(&r);
    for (int i = 0; i < TB_BATCH * TB_ROWS; i++) {
        float y = 4 + rng_uniform(&r) * 30, x = 4 + rng_uniform(&r) * 30;
        float h = 8 + rng_uniform(&r) * 24, w = 8 + rng_uniform(&r) * 24;
        b->boxes[4 * i + 0] = y, b->boxes[4 * i + 1] = x;
        b->boxes[4 * i + 2] = y + h, b->boxes[4 * i + 3] = x + w;
        b->classes[i] = i % TB_ROWS == TB_ROWS - 1 ? -1 : 1 + (int32_t)(rng_u32(&r) % TB_CLASSES);
    }
}
