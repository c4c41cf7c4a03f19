/* train_topology.h: `effdet train --loaders N --augmenters M [--devices ...]`: the training
 * topology of one node run by the coordinator (coordinator/coordinator.h): the data stages, one
 * worker per device (`effdet worker`, data parallel), the evaluator and the per-epoch eval jobs
 * (`effdet eval-worker`), with the run log (progress, DLLL, TensorBoard, curves.png). */
#ifndef EFFDET_LAUNCH_TRAIN_TOPOLOGY_H
#define EFFDET_LAUNCH_TRAIN_TOPOLOGY_H

#include "launch/train_args.h"

/* argv: the user's `effdet train` arguments (argv[0] is "train"), handed on to the workers.
 * Returns the process exit status: 0, 130 after SIGINT/SIGTERM, 1 (one line printed). */
int train_topology_run(const TrainArgs *a, int argc, char **argv);

#endif
