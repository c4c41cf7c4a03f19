/* data_pipeline.h: starts the data stages of one node as child processes (effdet-loader x N,
 * effdet-augment x M, the programs beside the running effdet) wired in a private run directory,
 * and stops them: what `effdet batches` and `effdet bench --mode data` run on, until the
 * coordinator takes this over. Stopping leaves no process, socket or shared-memory segment. */
#ifndef EFFDET_LAUNCH_DATA_PIPELINE_H
#define EFFDET_LAUNCH_DATA_PIPELINE_H

#include <stdint.h>
#include <sys/types.h>

#include "shared/child.h"
#include "shared/err.h"
#include "shared/zmq_util.h"

enum { DATA_PIPELINE_MAX = 64 };

typedef struct DataPipelineConfig {
    const char *data, *ann, *images; /* the dataset: --data DIR or --ann FILE --images DIR */
    int num_classes;
    int loaders, augmenters;
    int batch, height, width;
    uint64_t seed;
    int skip_bad_images;
    const char *dtype;               /* "f32", "f16", "bf16" */
    int hb_ms, dead_ms;
    int aug_slots;
    const char *report;              /* every stage's --report (stage reports); NULL: none */
} DataPipelineConfig;

/* The command line (argv[0] = the program beside the running effdet, NULL-terminated) of data
 * stage `role` ("loader" or "augment") number i of a pipeline with run directory rundir, exactly
 * as data_pipeline_start runs it (endpoints rundir/loader<i>.sock and rundir/aug<i>.sock; stage
 * names loader<i> and aug<i>). A supervisor spawns and respawns stages with it: a restarted stage
 * under the same name and endpoint is what the stage protocol recovers from (shared/stage.h). */
int data_pipeline_stage_argv(const DataPipelineConfig *cfg, const char *rundir, const char *role,
                             int i, ArgvBuf *out, Err *err);

typedef struct DataPipeline {
    char rundir[RUNDIR_CAP];
    pid_t pids[2 * DATA_PIPELINE_MAX];
    char names[2 * DATA_PIPELINE_MAX][16];
    int n;
    char aug_eps[DATA_PIPELINE_MAX][ZMQ_UTIL_ENDPOINT_CAP];
    const char *aug_ptrs[DATA_PIPELINE_MAX]; /* the augmenters' endpoints, for BatchStream */
    int n_aug;
} DataPipeline;

int data_pipeline_start(DataPipeline *p, const DataPipelineConfig *cfg, Err *err);
/* data_pipeline_start in two steps, for a caller that binds a socket of its own in the run
 * directory before the stages start (a report listener: rundir_endpoint(p->rundir, ...)):
 * open creates the run directory, spawn starts the stages; a failed spawn stops the pipeline. */
int data_pipeline_open(DataPipeline *p, Err *err);
int data_pipeline_spawn(DataPipeline *p, const DataPipelineConfig *cfg, Err *err);
/* A child that has exited: -1 with err naming it and its status; 0 while all run. */
int data_pipeline_check(DataPipeline *p, Err *err);
/* data_pipeline_check for a callback taking void * (BatchStreamConfig.alive with the pipeline). */
int data_pipeline_alive(void *pipeline, Err *err);
/* SIGTERM, up to 5 s of grace, SIGKILL; removes the run directory and stale segments. */
void data_pipeline_stop(DataPipeline *p);

#endif
