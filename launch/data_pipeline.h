/* data_pipeline.h: starts the data stages of one node as child processes (effdet-loader x N,
 * effdet-augment x M, the programs beside the running effdet) wired in a private run directory,
 * and stops them: what `effdet batches` and `effdet bench --mode data` run on, until the
 * coordinator takes this over. Stopping leaves no process, socket or shared-memory segment. */
#ifndef EFFDET_LAUNCH_DATA_PIPELINE_H
#define EFFDET_LAUNCH_DATA_PIPELINE_H

#include <stdint.h>
#include <sys/types.h>

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
} DataPipelineConfig;

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
/* A child that has exited: -1 with err naming it and its status; 0 while all run. */
int data_pipeline_check(DataPipeline *p, Err *err);
/* data_pipeline_check for a callback taking void * (BatchStreamConfig.alive with the pipeline). */
int data_pipeline_alive(void *pipeline, Err *err);
/* SIGTERM, up to 5 s of grace, SIGKILL; removes the run directory and stale segments. */
void data_pipeline_stop(DataPipeline *p);

#endif
