/* train_eval.c: COCO evaluation of a trainer's weights (its EMA when kept) on a dataset, in the
 * training process: the eval transform and post-processing of `effdet infer` (infer_pipeline.c)
 * on every image, detections mapped back to category ids, and the project's COCO evaluator.
 * (The asynchronous evaluator process replaces this when the pipeline lands.) */
#include "launch/train_eval.h"

#include <stdlib.h>
#include <string.h>

#include "evaluator/coco_eval.h"
#include "launch/infer_pipeline.h"
#include "shared/log.h"

static int add_batch(InferPipeline *p, const Dataset *ds, size_t first, int n, CocoEval *ev,
                     CocoDetection *dets, Err *err)
{
    for (int i = 0; i < n; i++)
        if (infer_pipeline_add_file(p, ds->images[first + i].path, i, err) != 0) return -1;
    InferResult res;
    if (infer_pipeline_run(p, n, &res, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        const Detection *d = res.dets + (size_t)i * p->cfg.max_det_per_image;
        for (int j = 0; j < res.count[i]; j++) {
            dets[j] = (CocoDetection){.image_id = ds->images[first + i].id,
                                      .category_id = dataset_label_category(ds, d[j].class_id),
                                      .bbox = {d[j].x1, d[j].y1, d[j].x2 - d[j].x1, d[j].y2 - d[j].y1},
                                      .score = d[j].score};
        }
        if (coco_eval_add_image(ev, ds->images[first + i].id, dets, (size_t)res.count[i], err) != 0)
            return -1;
    }
    return 0;
}

int train_evaluate(const TrainSettings *s, const char *device, const float *params,
                   const float *buffers, const Dataset *ds, const char *ann_path,
                   double stats[12], Err *err)
{
    CocoDataset gt;
    if (coco_dataset_load(&gt, ann_path, err) != 0) return -1;
    InferPipeline p;
    /* The trainer's weights replace any initialisation: skip the random one. */
    InferOptions o = {.model = s->model, .device = device, .num_classes = s->num_classes,
                      .weights_later = 1,
                      .batch = s->batch, .h = s->h, .w = s->w, .score_thresh = 0.0f,
                      .tf32 = s->tf32, .precision = s->precision};
    CocoEval *ev = NULL;
    CocoDetection *dets = NULL;
    int rc = -1;
    if (infer_pipeline_init(&p, &o, err) != 0) goto done_gt;
    model_set_weights(&p.model, params, buffers);
    ev = coco_eval_create(&gt);
    dets = malloc((size_t)p.cfg.max_det_per_image * sizeof *dets);
    if (!ev || !dets) {
        err_set(err, "evaluation: out of memory");
        goto done;
    }
    for (size_t first = 0; first < ds->n_images; first += (size_t)p.batch) {
        int n = ds->n_images - first < (size_t)p.batch ? (int)(ds->n_images - first) : p.batch;
        if (add_batch(&p, ds, first, n, ev, dets, err) != 0) goto done;
    }
    if (coco_eval_check_complete(ev, err) != 0) goto done;
    CocoEvalResult res;
    coco_eval_run(ev, &res);
    memcpy(stats, res.stats, sizeof res.stats);
    coco_eval_result_free(&res);
    rc = 0;
done:
    free(dets);
    coco_eval_free(ev);
    infer_pipeline_free(&p);
done_gt:
    coco_dataset_free(&gt);
    return rc;
}
