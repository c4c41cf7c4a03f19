/* evaluator_proc.h: the evaluator process: COCO bbox evaluation of detections that workers send
 * image by image during an epoch; the metrics are published as soon as the epoch's last image
 * is in. evaluator/main.c is a thin shell (flags, signals) over evaluator_run.
 *
 * Messages (shared/wire.h; every one also has "type" and "version": 1). Received on --listen:
 *   detections  {epoch: uint, image_id: int, dets: bin}  dets: n x 6 float64 little-endian rows
 *               [x, y, w, h, score, category_id], n >= 0 (an image without detections still
 *               comes, with an empty bin: that is how the evaluator knows it was seen)
 *   epoch_end   {epoch: uint, images: uint}  the number of images the coordinator handed out
 *   shutdown    {}  report what is unfinished, then exit 0
 * Published on --publish:
 *   ready       {pid: uint, images: uint, categories: uint}  once, when listening
 *   metrics     {epoch: uint, stats: [12 float64] (coco_eval_stat_names order),
 *                category_ids: tensor I64 (K), category_ap: tensor F64 (K), images: uint,
 *                dets: uint, dets_unknown_category: uint, dets_over_max: uint, eval_s: float64}
 *   error       {epoch: uint, kind: str, what: str, image_id: int (when it concerns one image)}
 *               kind: "duplicate" (an image of the epoch came twice: the second is not counted),
 *               "rejected" (bad detections: the image stays missing), "late" (the epoch, or a
 *               later one, is already evaluated), "busy" (a third epoch while two are open), "count" (epoch_end's count is not the ground truth's), "incomplete"
 *               (images still missing --timeout seconds after epoch_end, repeated every
 *               --timeout, or at shutdown; image_id is the first missing one).
 * An epoch is evaluated when every ground-truth image has arrived and its epoch_end too. Two
 * epochs may be open at once (the next one's detections arrive while the last images of this
 * one are still on their way); each has its own CocoEval. Messages that cannot be decoded or
 * attributed to an (epoch, image) are logged, counted and otherwise ignored.
 *
 * The state machine (evaluator_create ... evaluator_finish) is separate from the sockets so that
 * tests drive it with their own clock and read what it publishes through the callback. */
#ifndef EFFDET_EVALUATOR_PROC_H
#define EFFDET_EVALUATOR_PROC_H

#include <stddef.h>
#include <stdint.h>

#include "shared/coco.h"
#include "shared/err.h"
#include "shared/wire.h"

enum {
    EVALUATOR_EPOCHS = 2,      /* epochs open at once */
    EVALUATOR_DET_FIELDS = 6,  /* float64 per detection row */
    EVALUATOR_SHUTDOWN = 1,    /* evaluator_handle: a shutdown message arrived */
};

typedef struct EvaluatorCounts {
    uint64_t messages;   /* received */
    uint64_t malformed;  /* not decodable or not attributable: logged and dropped */
    uint64_t images;     /* accepted (epoch, image) deliveries */
    uint64_t duplicates, rejected, late, busy; /* published as errors of that kind */
    uint64_t evaluated;  /* epochs whose metrics were published */
    uint64_t incomplete; /* "incomplete" reports */
    uint64_t publish_failed;
} EvaluatorCounts;

/* Delivers one encoded message; 0 when sent, -1 (already logged) when not. */
typedef int (*EvaluatorPublish)(void *ctx, const void *msg, size_t len);

typedef struct Evaluator Evaluator;

/* Takes over gt (the caller's struct is left empty). timeout_s: see "incomplete" above. */
Evaluator *evaluator_create(CocoDataset *gt, double timeout_s, const WireLimits *lim,
                            EvaluatorPublish publish, void *publish_ctx);
void evaluator_free(Evaluator *ev); /* NULL is fine */

/* Publishes "ready". */
void evaluator_announce(Evaluator *ev);
/* Handles one received message at time now (seconds, any monotonic origin): 0, or
 * EVALUATOR_SHUTDOWN. Never fails: bad input is logged, counted and published as above. */
int evaluator_handle(Evaluator *ev, const void *msg, size_t len, double now);
/* Sends the "incomplete" reports that are due at time now. */
void evaluator_tick(Evaluator *ev, double now);
/* When the next report is due (INFINITY when none is). */
double evaluator_next_deadline(const Evaluator *ev);
/* At exit: one "incomplete" report for each epoch still open. */
void evaluator_finish(Evaluator *ev);
const EvaluatorCounts *evaluator_counts(const Evaluator *ev);

/* The process: --gt, --listen, --publish and --timeout of `effdet-evaluator`. */
typedef struct EvaluatorConfig {
    const char *gt_path;
    const char *listen;  /* endpoint the PULL socket binds: workers connect PUSH sockets here */
    const char *publish; /* endpoint the PUSH socket connects to: the coordinator's PULL */
    double timeout_s;
    WireLimits limits;
} EvaluatorConfig;

/* Loads the ground truth, opens the sockets, announces, and handles messages until a shutdown
 * message or until stop_fd (a signal self-pipe; -1 for none) becomes readable. 0 then; -1 with
 * err for a ground truth or socket failure. */
int evaluator_run(const EvaluatorConfig *cfg, int stop_fd, Err *err);

#endif
