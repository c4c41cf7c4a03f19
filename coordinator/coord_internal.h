/* coord_internal.h: the coordinator's state, shared by coordinator.c (processes, signals, the
 * loop) and coord_messages.c (what the children say: progress, epochs, evaluation, accounting). */
#ifndef EFFDET_COORD_INTERNAL_H
#define EFFDET_COORD_INTERNAL_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "coordinator/coordinator.h"
#include "shared/zmq_util.h"

enum { EVAL_IDLE = 0, EVAL_RUNNING, EVAL_SENT };
enum { COORD_MAX_PROCS = 140, COORD_NAME_CAP = 24, COORD_MAX_FAULTS = 8, COORD_EVAL_QUEUE = 64 };

typedef enum {
    COORD_RUNNING = 0,
    COORD_RESTARTING, /* a worker failed: waiting for the others to be gone */
    COORD_FINISHING,  /* the workers are done: waiting for the evaluations still due */
    COORD_STOPPING,   /* a signal: waiting for the workers' checkpoint and exit */
    COORD_DRAINING,   /* the rest got SIGTERM: waiting for every child to exit */
} CoordState;

typedef struct CoordProc {
    ProcRole role;
    int index;
    char name[COORD_NAME_CAP];
    pid_t pid;            /* 0: not running */
    int restarts;
    double last_heard;    /* seconds (loop clock); 0: nothing heard from this incarnation */
    double started;
    int done;             /* worker: finished its steps and exited 0 */
    int expected_exit;    /* killed or stopped on purpose: its exit is not a failure */
} CoordProc;

typedef struct CoordFault {
    char name[COORD_NAME_CAP];
    long step;
    int fired;
} CoordFault;

typedef struct CoordEvalJob {
    long epoch, step;
    char snapshot[COORD_PATH_CAP];
} CoordEvalJob;

/* Sample accounting of one epoch (a ring of two: ranks may straddle an epoch's end). */
typedef struct CoordEpochTally {
    long epoch;           /* -1: unused */
    uint8_t *seen;        /* (n_images) times each image was trained on */
    long images, twice, replaced;
    long *next_b;         /* (workers) the batch each rank must report next; -1: a gap */
    int ranks_done;
} CoordEpochTally;

typedef struct Coord {
    CoordinatorConfig cfg;
    CoordResult *res;
    Err *err;             /* the failure that ends the run goes here */
    char first_cause[sizeof ((Err *)0)->msg]; /* the first worker failure, restarted from */
    char reported[sizeof ((Err *)0)->msg];    /* the first error a worker or eval job sent */
    int failed;
    uv_loop_t loop;
    uv_signal_t sig_int, sig_term, sig_chld;
    uv_timer_t tick;
    uv_poll_t zpoll;
    void *zctx;
    ZmqSocket pull;
    CoordState state;
    int signals;          /* SIGINT/SIGTERM received */
    double stop_deadline; /* DRAINING/STOPPING: SIGKILL whatever is left after it */
    CoordProc procs[COORD_MAX_PROCS];
    int n_procs;
    int generation;       /* worker group */
    char comm[64];        /* this generation's shared-memory name */
    CoordFault faults[COORD_MAX_FAULTS];
    int n_faults;
    CoordEvalJob queue[COORD_EVAL_QUEUE];
    int q_head, q_len;
    int eval_phase;       /* of queue[q_head]: EVAL_IDLE, EVAL_RUNNING (eval worker alive),
                             EVAL_SENT (it finished: the evaluator's metrics are due) */
    int evaluator_ready;
    long last_queued_epoch;
    double best_map;
    CoordEpochTally tally[2];
    long *last_recorded;  /* (workers) linear step last counted per rank */
    long last_step;
} Coord;

double coord__now(Coord *c);
CoordProc *coord__find(Coord *c, ProcRole role, int index);
CoordProc *coord__find_name(Coord *c, const char *name, size_t len);
int coord__spawn(Coord *c, CoordProc *p);
void coord__kill(Coord *c, CoordProc *p, int sig);
int coord__alive(const Coord *c, ProcRole role);
/* Records the first failure and starts stopping everything. */
void coord__fail(Coord *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Moves the state machine on after an exit or a message. */
void coord__advance(Coord *c);

/* coord_messages.c */
void coord__drain(Coord *c);              /* every message waiting on the PULL socket */
void coord__eval_dispatch(Coord *c);      /* starts the next evaluation when one can run */
void coord__eval_restart(Coord *c);       /* the evaluator or eval worker died mid-job */
int coord__tally_init(Coord *c);
void coord__tally_free(Coord *c);

#endif
