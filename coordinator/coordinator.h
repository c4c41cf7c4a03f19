/* coordinator.h: the supervisor of one node's training pipeline (libuv): it spawns the data
 * stages (effdet-loader x N, effdet-augment x M), the training workers (one per device), the
 * evaluator and, at each epoch end, an inference worker that evaluates the EMA snapshot; it
 * receives their messages on one ZeroMQ PULL socket, keeps the run going through failures and
 * stops everything cleanly.
 *
 * DESIGN
 * - Command lines come from the caller (argv_for): the coordinator knows roles, not flags, so
 *   the same loop runs any topology the launcher builds.
 * - Children are forked here (not uv_spawn) for two settings exec cannot give them afterwards:
 *   their own process group (a Ctrl-C at the terminal reaches only the coordinator, which stops
 *   the workers first so they can checkpoint) and PR_SET_PDEATHSIG (a coordinator killed with -9
 *   leaves no child running). Their exits arrive through a libuv SIGCHLD watcher and waitpid.
 * - Failures:
 *   - a data stage (loader, augmenter) that dies is started again under its old name and
 *     endpoint; its consumers re-issue what it had (shared/stage.h), so nothing is lost or
 *     doubled. So is the evaluator, and the evaluation in flight is run again from its snapshot.
 *   - a worker killed or crashed: every worker is stopped (SIGKILL: their peers' collectives
 *     cannot complete anyway) and the group restarts from the last checkpoint of the run
 *     directory, at most max_restarts times. The first failure is kept as the run's cause. A
 *     worker that exits with status 1 reported an error of its input (an unreadable image, bad
 *     weights): restarting would fail the same way, so the run ends with that error.
 *   - hung processes: a worker silent (no step message) for hang_s, or a data stage whose
 *     reports stop for stage_dead_s, is killed with SIGKILL and handled as above. (The evaluator
 *     speaks only when it has metrics; a lost evaluation shows as its "incomplete" report.)
 * - SIGINT/SIGTERM: the workers get SIGINT, agree on a step (trainer_agree_stop), rank 0 writes a
 *   checkpoint, they exit; then the other children get SIGTERM. A second SIGINT kills every child
 *   at once. Either way coordinator_run returns only when no child is left.
 * - Evaluation is asynchronous: rank 0 reports each epoch end with a snapshot file; the eval jobs
 *   run one at a time in epoch order while training goes on; the evaluator's metrics are logged
 *   with their epoch and the best snapshot becomes OUTPUT/model_best.safetensors (rename: atomic).
 * - Sample accounting: every worker reports the dataset indices of each batch it trained on; for
 *   each epoch the coordinator checks that every image was seen exactly once (replayed steps after
 *   a restart are recognised by (rank, epoch, batch) and not counted twice).
 *
 * Messages received (shared/wire.h maps, version 1):
 *   worker:      hello {rank, pid, step}; step {rank, step, epoch, b, loss, class_loss,
 *                box_loss, lr, img_s, indices: bin of int64 (valid, not replaced), replaced: uint};
 *                epoch_end {rank, epoch (epochs done), step, snapshot: str ("" when not
 *                evaluated)}; done {rank, step}; stopped {rank, step}; error {rank, what}
 *   evaluator:   ready, metrics, error (evaluator/evaluator_proc.h)
 *   eval worker: error {what}
 *   data stages: stage_report {name, ...} (shared/stage.h): liveness only here */
#ifndef EFFDET_COORDINATOR_H
#define EFFDET_COORDINATOR_H

#include <stddef.h>

#include "coordinator/run_log.h"
#include "shared/child.h"
#include "shared/err.h"

typedef enum {
    PROC_LOADER = 0,
    PROC_AUGMENT,
    PROC_WORKER,
    PROC_EVALUATOR,
    PROC_EVAL_WORKER,
    PROC_ROLES
} ProcRole;

enum { COORD_PATH_CAP = 1024 };

/* What a command line depends on besides role and index. */
typedef struct CoordSpawn {
    int generation;       /* workers: 0, then +1 per group restart (resume from the run dir) */
    const char *comm;     /* workers: the shared-memory name of this generation's collectives */
    long eval_epoch;      /* eval worker: the epoch evaluated */
    const char *snapshot; /* eval worker: the weights */
} CoordSpawn;

typedef struct CoordinatorConfig {
    int count[PROC_ROLES]; /* loaders, augmenters, workers, evaluator (0 or 1); eval worker unused */
    const char *listen;    /* the coordinator's PULL endpoint (ipc:// in the caller's run dir) */
    const char *output;    /* the run's output directory: snapshots, model_best */
    long n_images;         /* training images per epoch */
    long steps_per_epoch, total_steps, first_step;
    int max_restarts;       /* worker-group restarts */
    int stage_max_restarts; /* per data stage, evaluator and eval job */
    double hang_s;          /* worker silence that counts as hung */
    double stage_dead_s;    /* report silence of a data stage that counts as hung */
    const char *fault;      /* tests: "NAME@STEP[,NAME@STEP]": SIGKILL NAME once STEP is reached */
    RunLog *log;            /* progress and metrics output; not owned */
    int (*argv_for)(void *app, ProcRole role, int index, const CoordSpawn *sp, ArgvBuf *out,
                    Err *err);
    void *app;
} CoordinatorConfig;

typedef struct CoordResult {
    int interrupted;     /* stopped by SIGINT/SIGTERM (exit 130) */
    long last_step;
    double best_map;     /* -1: nothing evaluated */
    long best_epoch;
    int worker_restarts, stage_restarts;
    long epochs_checked; /* epochs whose sample accounting was complete and exact */
} CoordResult;

/* Runs the topology to its end: 0 when the workers finished (or were stopped by a signal:
 * res->interrupted), -1 with err naming the first failure. No child is left running either way. */
int coordinator_run(const CoordinatorConfig *cfg, CoordResult *res, Err *err);

const char *proc_role_name(ProcRole r); /* "loader", "augment", "worker", ... */

#endif
