/* fuzz_coco_json.c: libFuzzer target for the COCO readers (shared/coco.c) and, through them, the
 * evaluator. Each input is read both as a ground truth file and as a results file; results that
 * parse are evaluated against a small fixed ground truth, so arbitrary boxes, scores and ids reach
 * the matching and accumulation code too. Any crash, sanitizer report or leak is a bug; a parse
 * error is the expected outcome for most inputs. Build and run with tests/fuzz/run.sh. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "evaluator/coco_eval.h"
#include "shared/check.h"
#include "shared/coco.h"

static const char GT[] =
    "{\"images\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}], "
    "\"categories\": [{\"id\": 1}, {\"id\": 2}], \"annotations\": ["
    "{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100},"
    "{\"id\": 2, \"image_id\": 1, \"category_id\": 1, \"bbox\": [5, 5, 40, 40], \"area\": 1024},"
    "{\"id\": 3, \"image_id\": 2, \"category_id\": 2, \"bbox\": [0, 0, 100, 100], \"area\": 9216,"
    " \"iscrowd\": 1},"
    "{\"id\": 4, \"image_id\": 3, \"category_id\": 1, \"bbox\": [1, 1, 1, 1], \"area\": 0}]}";

/* Evaluates dets against GT, checking the results are in range. */
static void fuzz_evaluate(const CocoDetections *dets)
{
    CocoDataset gt;
    Err err;
    ASSERT(coco_dataset_parse(&gt, GT, sizeof GT - 1, "gt", &err) == 0);
    CocoEval *ev = coco_eval_create(&gt);
    coco_dataset_free(&gt);
    if (coco_eval_add_dets(ev, dets->dets, dets->n, &err) == 0) {
        CocoEvalResult res;
        coco_eval_run(ev, &res);
        for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
            ASSERT(res.stats[s] == -1 || (res.stats[s] >= 0 && res.stats[s] <= 1));
        coco_eval_result_free(&res);
    }
    coco_eval_free(ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    CocoDataset ds;
    CocoDetections dets;
    Err err;
    if (coco_dataset_parse(&ds, (const char *)data, size, "fuzz", &err) == 0) {
        for (size_t i = 0; i < ds.n_annotations; i++)
            ASSERT(coco_dataset_image_index(&ds, ds.annotations[i].image_id) >= 0);
        CocoEval *ev = coco_eval_create(&ds);
        coco_eval_free(ev);
        coco_dataset_free(&ds);
    } else {
        ASSERT(err.msg[0] && !strchr(err.msg, '\n'));
    }
    if (coco_detections_parse(&dets, (const char *)data, size, "fuzz", &err) == 0) {
        fuzz_evaluate(&dets);
        coco_detections_free(&dets);
    } else {
        ASSERT(err.msg[0] && !strchr(err.msg, '\n'));
    }
    return 0;
}
