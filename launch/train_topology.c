/* train_topology.c: see train_topology.h. The command lines of every process are built here;
 * the coordinator only knows roles. */
#include "launch/train_topology.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "coordinator/coordinator.h"
#include "launch/cli.h"
#include "launch/data_pipeline.h"
#include "shared/log.h"
#include "shared/shm.h"
#include "shared/zmq_util.h"

typedef struct Topology {
    const TrainArgs *a;
    int argc;
    char **argv;
    int workers;
    char self[PATH_MAX], evaluator[PATH_MAX];
    char rundir[RUNDIR_CAP];
    char coord_ep[ZMQ_UTIL_ENDPOINT_CAP], eval_ep[ZMQ_UTIL_ENDPOINT_CAP];
    char aug_list[DATA_PIPELINE_MAX * ZMQ_UTIL_ENDPOINT_CAP];
    DataPipelineConfig dp;
    int num_classes, h, w;
} Topology;

static int program_paths(Topology *t, Err *err)
{
    return child_program(NULL, t->self, sizeof t->self, err) != 0 ||
                   child_program("evaluator", t->evaluator, sizeof t->evaluator, err) != 0
               ? -1
               : 0;
}

static void add_dataset(ArgvBuf *o, const TrainArgs *a, int val)
{
    const char *dir = a->data, *ann = a->ann, *images = a->images;
    if (val && (a->val_data || a->val_ann)) dir = a->val_data, ann = a->val_ann, images = a->val_images;
    if (dir) {
        argv_buf_add(o, "--data");
        argv_buf_add(o, "%s", dir);
    } else {
        argv_buf_add(o, "--ann");
        argv_buf_add(o, "%s", ann);
        argv_buf_add(o, "--images");
        argv_buf_add(o, "%s", images);
    }
}

static int argv_for(void *app, ProcRole role, int index, const CoordSpawn *sp, ArgvBuf *o, Err *err)
{
    Topology *t = app;
    const TrainArgs *a = t->a;
    switch (role) {
    case PROC_LOADER:
    case PROC_AUGMENT:
        return data_pipeline_stage_argv(&t->dp, t->rundir, role == PROC_LOADER ? "loader" : "augment",
                                        index, o, err);
    case PROC_WORKER:
        argv_buf_add(o, "%s", t->self);
        argv_buf_add(o, "worker");
        for (int i = 1; i < t->argc; i++) argv_buf_add(o, "%s", t->argv[i]);
        argv_buf_add(o, "--rank=%d", index);
        argv_buf_add(o, "--world=%d", t->workers);
        argv_buf_add(o, "--connect"), argv_buf_add(o, "%s", t->aug_list);
        argv_buf_add(o, "--coord"), argv_buf_add(o, "%s", t->coord_ep);
        argv_buf_add(o, "--comm"), argv_buf_add(o, "%s", sp->comm);
        /* After a failure every worker continues from the run's newest checkpoint. */
        if (sp->generation > 0) argv_buf_add(o, "--resume"), argv_buf_add(o, "%s", a->output);
        return 0;
    case PROC_EVALUATOR:
        argv_buf_add(o, "%s", t->evaluator);
        argv_buf_add(o, "--gt"), argv_buf_add(o, "%s", a->val_ann_buf);
        argv_buf_add(o, "--listen"), argv_buf_add(o, "%s", t->eval_ep);
        argv_buf_add(o, "--publish"), argv_buf_add(o, "%s", t->coord_ep);
        argv_buf_add(o, "--timeout=300");
        return 0;
    case PROC_EVAL_WORKER:
        argv_buf_add(o, "%s", t->self);
        argv_buf_add(o, "eval-worker");
        argv_buf_add(o, "--model"), argv_buf_add(o, "%s", a->model);
        argv_buf_add(o, "--num-classes=%d", t->num_classes);
        argv_buf_add(o, "--image-size=%dx%d", t->h, t->w);
        argv_buf_add(o, "--batch-size=%ld", a->batch);
        argv_buf_add(o, "--device"), argv_buf_add(o, "%s", a->n_devices ? a->devices[0] : a->device);
        argv_buf_add(o, "--weights"), argv_buf_add(o, "%s", sp->snapshot);
        argv_buf_add(o, "--epoch=%ld", sp->eval_epoch);
        argv_buf_add(o, "--send"), argv_buf_add(o, "%s", t->eval_ep);
        argv_buf_add(o, "--coord"), argv_buf_add(o, "%s", t->coord_ep);
        if (a->tf32) argv_buf_add(o, "--tf32");
        if (a->precision != PREC_FP32) argv_buf_add(o, "--amp-dtype=%s", precision_name(a->precision));
        add_dataset(o, a, 1);
        return 0;
    default:
        return err_set(err, "no command line for role %d", (int)role);
    }
}

static int setup(Topology *t, Dataset *ds, ModelConfig *cfg, Err *err)
{
    const TrainArgs *a = t->a;
    if (mkdir(a->output, 0755) != 0 && errno != EEXIST)
        return err_set(err, "--output %s: %s", a->output, strerror(errno));
    if (program_paths(t, err) != 0 || train_args_open_dataset(a, 0, ds, err) != 0) return -1;
    if (model_config_get(a->model, ds->num_classes, cfg, err) != 0) return -1;
    Dataset val;
    if (a->val_data || a->val_ann) { /* checked now rather than at the first epoch's end */
        if (train_args_open_dataset(a, 1, &val, err) != 0) return err_wrap(err, "evaluation set: ");
        int same = val.num_classes == ds->num_classes;
        dataset_free(&val);
        if (!same) return err_set(err, "the evaluation set's categories differ from the training set's");
    }
    t->num_classes = ds->num_classes;
    t->h = a->h ? a->h : cfg->image_h, t->w = a->w ? a->w : cfg->image_w;
    t->workers = a->n_devices ? a->n_devices : 1;
    Err serr;
    if (rundir_remove_stale(&serr) < 0) log_warn("%s", serr.msg);
    if (rundir_create(t->rundir, err) != 0) return -1;
    if (rundir_endpoint(t->rundir, "coord.sock", t->coord_ep, err) != 0 ||
        rundir_endpoint(t->rundir, "eval.sock", t->eval_ep, err) != 0)
        return -1;
    t->dp = (DataPipelineConfig){.data = a->data, .ann = a->ann, .images = a->images,
                                 .num_classes = (int)a->num_classes, .loaders = (int)a->loaders,
                                 .augmenters = (int)a->augmenters, .batch = (int)a->batch,
                                 .height = t->h, .width = t->w, .seed = (uint64_t)a->seed,
                                 .skip_bad_images = a->skip_bad, .dtype = "f32",
                                 .aug_slots = 2 * t->workers + 1, .report = t->coord_ep};
    for (int i = 0; i < a->augmenters; i++) {
        char ep[ZMQ_UTIL_ENDPOINT_CAP], sock[32];
        snprintf(sock, sizeof sock, "aug%d.sock", i);
        if (rundir_endpoint(t->rundir, sock, ep, err) != 0) return -1;
        if (i) strcat(t->aug_list, ",");
        strcat(t->aug_list, ep);
    }
    return 0;
}

int train_topology_run(const TrainArgs *a, int argc, char **argv)
{
    Topology *t = calloc(1, sizeof *t);
    Err err;
    if (!t) {
        err_set(&err, "out of memory");
        return cli_fail("train", &err);
    }
    t->a = a, t->argc = argc, t->argv = argv;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ModelConfig cfg;
    RunLog *log = NULL;
    int status = 1;
    if (setup(t, &ds, &cfg, &err) != 0) goto done;
    long global = a->batch * t->workers;
    long spe = (long)((ds.n_images + (size_t)global - 1) / (size_t)global);
    RunLogConfig lc = {.dir = a->output, .total_steps = a->epochs * spe, .steps_per_epoch = spe,
                       .batch = (int)global, .tty = -1, .log_interval = (int)a->log_interval,
                       .out = stdout};
    if (!(log = run_log_open(&lc, &err))) goto done;
    run_log_line(log, "train: %s %dx%d, %d worker%s x batch %ld, %d loader%s, %d augmenter%s, %zu images, %ld steps",
                 cfg.name, t->h, t->w, t->workers, t->workers > 1 ? "s" : "", a->batch,
                 (int)a->loaders, a->loaders > 1 ? "s" : "", (int)a->augmenters,
                 a->augmenters > 1 ? "s" : "", ds.n_images, a->epochs * spe);
    CoordinatorConfig cc = {.count = {(int)a->loaders, (int)a->augmenters, t->workers, 1},
                            .listen = t->coord_ep, .output = a->output, .n_images = (long)ds.n_images,
                            .steps_per_epoch = spe, .total_steps = a->epochs * spe,
                            .max_restarts = (int)a->max_restarts, .stage_max_restarts = 10,
                            .hang_s = a->hang_s, .stage_dead_s = 30, .fault = a->fault, .log = log,
                            .argv_for = argv_for, .app = t};
    CoordResult res;
    int rc = coordinator_run(&cc, &res, &err);
    Err cerr;
    if (run_log_close(log, &cerr) != 0) log_warn("%s", cerr.msg);
    if (rc != 0) goto done;
    if (res.interrupted) {
        log_info("stopped at step %ld; --resume %s continues", res.last_step, a->output);
        status = 130;
        goto done;
    }
    if (res.best_map >= 0)
        printf("best mAP %.4f at epoch %ld: %s/model_best.safetensors\n", res.best_map, res.best_epoch, a->output);
    printf("done: %ld steps, %d worker restart%s, %d stage restart%s, %ld epoch%s with exact sample counts\n",
           res.last_step, res.worker_restarts, res.worker_restarts == 1 ? "" : "s", res.stage_restarts,
           res.stage_restarts == 1 ? "" : "s", res.epochs_checked, res.epochs_checked == 1 ? "" : "s");
    status = 0;
done:
    run_log_free(log);
    dataset_free(&ds);
    if (t->rundir[0] && rundir_remove(t->rundir, &cerr) < 0) log_warn("%s", cerr.msg);
    if (shm_unlink_stale(&cerr) < 0) log_warn("%s", cerr.msg);
    free(t);
    return status == 1 ? cli_fail("train", &err) : status;
}
