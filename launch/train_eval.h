/* train_eval.h: COCO evaluation of trained weights on a dataset (see train_eval.c). */
#ifndef EFFDET_TRAIN_EVAL_H
#define EFFDET_TRAIN_EVAL_H

#include "loader/dataset.h"
#include "shared/err.h"
#include "worker/trainer.h"

/* params/buffers: host blocks in our layouts (trainer_eval_weights). stats: pycocotools' 12. */
int train_evaluate(const TrainSettings *s, const char *device, const float *params,
                   const float *buffers, const Dataset *ds, const char *ann_path,
                   double stats[12], Err *err);

#endif
