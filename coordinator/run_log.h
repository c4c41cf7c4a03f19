/* run_log.h: what a training run shows and leaves behind, for the coordinator and for
 * single-process training alike.
 *
 * On a terminal, one progress line redrawn in place; otherwise a plain line every log_interval
 * steps. In both cases dllogger-style "DLLL {json}" lines every log_interval steps and after each
 * evaluation, TensorBoard scalars under dir/tensorboard (tfevents.h), and at close dir/curves.png
 * (curves_png.h). Epochs are printed 1-based everywhere ("epoch 1" is the first epoch, and
 * "eval epoch 1" is the evaluation after it), although run_log_step takes the 0-based epoch.
 * A "logged" step is one where step % log_interval == 0, or the last step (step == total_steps);
 * plain lines, DLLL lines and TensorBoard train scalars are written at logged steps. Loss is kept
 * for every step for the curves. Not thread-safe: one thread calls it. */
#ifndef EFFDET_RUN_LOG_H
#define EFFDET_RUN_LOG_H

#include <stdio.h>

#include "shared/err.h"

typedef struct RunLogConfig {
    const char *dir;        /* the run's --output directory: tensorboard/ and curves.png go here; NULL: no files */
    long total_steps;       /* for the bar and the ETA */
    long steps_per_epoch;
    int batch;              /* global batch, for img/s */
    int tty;                /* -1: decide with isatty(stdout); 0: plain lines; 1: bar */
    int log_interval;       /* plain lines: one per this many steps */
    FILE *out;              /* stdout normally (NULL: stdout) */
} RunLogConfig;

typedef struct RunLog RunLog;

/* Copies cfg (dir included) and opens the event file when dir is set. NULL with err on a bad
 * config (total_steps, steps_per_epoch or log_interval below 1) or when the event file cannot be
 * created. */
RunLog *run_log_open(const RunLogConfig *cfg, Err *err);

/* A step done: epoch (0-based), step (1-based count of steps done), losses, lr, img_s (measured by
 * the caller). On a terminal: one updating line
 *   "\r epoch 2/10 [#####.....] step 123/1000 loss 0.812 lr 0.0800 54.1 img/s ETA 3:12";
 * otherwise a plain line at logged steps:
 *   "epoch 2 step 123/1000: loss 0.8123 (class 0.5012 box 0.00622) lr 0.08000 54.10 img/s".
 * At logged steps also `DLLL {"type": "train", "step": 123, "epoch": 2, "loss": ..., "class_loss":
 * ..., "box_loss": ..., "lr": ..., "img_s": ...}` (on a terminal above the bar; non-finite numbers
 * are written as null) and the TensorBoard scalars train/loss, train/class_loss, train/box_loss,
 * train/lr, train/img_s at that step. -1 only when the event file cannot be written. */
int run_log_step(RunLog *r, long epoch, long step, double loss, double class_loss,
                 double box_loss, double lr, double img_s, Err *err);

/* Evaluation of epoch `epoch` (1-based: epochs done) at step: prints
 *   "eval epoch E step S: mAP 0.1234 mAP@0.5 0.2345 mAP@0.75 0.1111"
 * and `DLLL {"type": "eval", "epoch": E, "step": S, "map": ..., "map50": ..., "map75": ...}`;
 * TensorBoard eval/mAP, eval/mAP50, eval/mAP75 at step S; remembered for the curves (a repeated
 * epoch replaces the earlier value). stats: pycocotools' 12 numbers. May be interleaved with
 * run_log_step in any order. */
int run_log_eval(RunLog *r, long epoch, long step, const double stats[12], Err *err);

/* Any other line (an info message, no trailing newline needed) printed so that it does not
 * collide with the bar: the bar is cleared, the line printed, and the bar redrawn below it. */
void run_log_line(RunLog *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Ends the bar line, writes dir/curves.png (loss per step, and mAP per epoch when any), closes
 * the event file. 0 or -1. Idempotent: later calls return 0 and do nothing. */
int run_log_close(RunLog *r, Err *err);

/* Closes (ignoring errors) when not closed yet, and frees; NULL is fine. */
void run_log_free(RunLog *r);

#endif
