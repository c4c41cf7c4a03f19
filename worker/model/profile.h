/* profile.h: a per-op profile of the model: where a forward pass or a train step spends its time,
 * and how close each kind of op comes to moving its bytes at the memory's speed
 * (`effdet bench --profile`).
 *
 * Attached to a planned model (Model.prof), the profile has the forward helpers (layers.c and the
 * SE and fusion calls) and the backward pass (backward.c) bracket every op with two backend timer
 * marks (kernels/ops.h timer_mark) and record what the op is. Detached (NULL), the hooks cost one
 * call that returns at once. The caller brackets the whole step with profile_step_begin/end, so
 * what no op accounts for (loss, optimizer, targets, detections, host gaps) is a row of its own.
 *
 * Traffic is the least an op must move: each tensor it touches read or written once (an input
 * read, an output written; a gradient that is accumulated, a running statistic that is updated,
 * counted once too), activations and their gradients at the profile's element size (4 bytes in
 * fp32, 2 in fp16/bf16), parameters, their gradients and the small per-channel tensors (BN's
 * saved statistics, SE's pooled/hidden/gate) at 4 bytes. Achieved GB/s is that traffic over the
 * measured time, so it can only understate the memory traffic a kernel really causes. */
#ifndef EFFDET_PROFILE_H
#define EFFDET_PROFILE_H

#include <stdio.h>

#include "shared/err.h"
#include "worker/model/model.h"

typedef enum {
    PROF_CONV1X1, PROF_CONVKXK, PROF_DWCONV, PROF_BN, PROF_ACT, PROF_SE, PROF_ADD, PROF_POOL,
    PROF_UPSAMPLE, PROF_FUSE, PROF_KINDS
} ProfKind;

/* One op of the profiled pass: its kind, direction and least traffic; its marks are the timer
 * slots 2 + 2i (start) and 3 + 2i (end) for record i. */
typedef struct ProfRecord {
    ProfKind kind;
    int backward;
    double bytes;
} ProfRecord;

typedef struct ModelProfile {
    const Ops *ops;
    OpsCtx *ctx;
    int act_bytes;    /* activation element size: 4 (fp32) or 2 (fp16, bf16), the model's */
    int batch;        /* images per pass, for the per-image figures */
    int cap;          /* ops one profiled step may hold */
    int n;            /* ops recorded since profile_reset */
    int overflow;     /* ops past cap went unrecorded: the summary fails */
    int step_marks;   /* bit 0: step begun, bit 1: step ended */
    ProfRecord *rec;  /* (cap) */
} ModelProfile;

/* A planned model's profile: room for one forward and one backward pass (timer slots reserved on
 * the model's backend once, here), activations counted at the model's precision. Fails where the
 * backend has no timers or they cannot be reserved. */
int profile_init(ModelProfile *p, const Model *m, Err *err);
void profile_free(ModelProfile *p); /* idempotent */
/* Forgets the recorded ops and step marks (before each profiled step). */
void profile_reset(ModelProfile *p);
void profile_step_begin(ModelProfile *p);
void profile_step_end(ModelProfile *p);

/* The hooks: op_begin marks an op's start and returns its record (-1 when p is NULL or full);
 * op_end marks its end and records it. The op is described as the tape does (a forward helper
 * builds the TapeOp even when it records no tape). */
int profile_op_begin(ModelProfile *p);
void profile_op_end(ModelProfile *p, int rec, const TapeOp *op, int backward);

/* The traffic arithmetic, public for tests: the kind of a tape op, and the least bytes its forward
 * or backward op moves with activations of act_bytes bytes. */
ProfKind profile_op_kind(const TapeOp *op);
const char *profile_kind_name(ProfKind k);
double profile_op_bytes(const TapeOp *op, int backward, int act_bytes);

/* A profiled step, per kind and direction (rows with no op are left out), kinds in ProfKind order,
 * forward rows before backward rows. */
typedef struct ProfRow {
    ProfKind kind;
    int backward;
    long ops;
    double ms, bytes;
} ProfRow;

typedef struct ProfSummary {
    ProfRow rows[2 * PROF_KINDS];
    int n_rows;
    int batch;
    double step_ms;          /* between the step marks */
    double fwd_ms, bwd_ms;   /* the rows' sums */
    double bytes;            /* least traffic of every op */
} ProfSummary;

/* Reads the marks (waiting for the backend) into s. Fails when the step was not bracketed by
 * profile_step_begin/end or when the step held more ops than the profile has room for. */
int profile_summarize(ModelProfile *p, ProfSummary *s, Err *err);
/* A table (kind, pass, ops, ms, % of the step, MB per image, GB/s), with `other` naming the row of
 * step time no op accounts for (e.g. "other (loss, optimizer, targets)"). */
void profile_print_table(FILE *f, const ProfSummary *s, const char *other);
/* The same as JSON members for the caller's object: `"profile_step_ms": S, "profile": [{"kind",
 * "pass", "ops", "ms", "pct", "mb_per_img", "gb_per_s"}, ...]`, the `other` row last with pass
 * "step". No leading or trailing comma. */
void profile_print_json(FILE *f, const ProfSummary *s, const char *other);

#endif
