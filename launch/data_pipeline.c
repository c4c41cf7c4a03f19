/* data_pipeline.c: see data_pipeline.h. */
#include "launch/data_pipeline.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/child.h"
#include "shared/log.h"
#include "shared/shm.h"
#include "shared/stage.h"

/* A stage started with child_spawn, remembered for check and stop. */
static int spawn(DataPipeline *p, const char *name, const char *const argv[], Err *err)
{
    pid_t pid = child_spawn(argv, err);
    if (pid < 0) return -1;
    p->pids[p->n] = pid;
    snprintf(p->names[p->n], sizeof p->names[0], "%s", name);
    p->n++;
    return 0;
}

/* ---- command lines --------------------------------------------------------------------------- */

/* "ipc://RUNDIR/loader0.sock,ipc://RUNDIR/loader1.sock,..." into list (cap bytes). */
static int loader_list(const DataPipelineConfig *cfg, const char *rundir, char *list, size_t cap,
                       Err *err)
{
    size_t used = 0;
    for (int j = 0; j < cfg->loaders; j++) {
        char sock[32], ep[ZMQ_UTIL_ENDPOINT_CAP];
        snprintf(sock, sizeof sock, "loader%d.sock", j);
        if (rundir_endpoint(rundir, sock, ep, err) < 0) return -1;
        int len = snprintf(list + used, cap - used, "%s%s", j ? "," : "", ep);
        if (len < 0 || (size_t)len >= cap - used)
            return err_set(err, "%s: the endpoints of %d loaders do not fit a command line",
                           rundir, cfg->loaders);
        used += (size_t)len;
    }
    return 0;
}

int data_pipeline_stage_argv(const DataPipelineConfig *cfg, const char *rundir, const char *role,
                             int i, ArgvBuf *out, Err *err)
{
    argv_buf_init(out);
    int loader = !strcmp(role, "loader");
    if (!loader && strcmp(role, "augment"))
        return err_set(err, "stage role '%s': expected loader or augment", role);
    int count = loader ? cfg->loaders : cfg->augmenters;
    if (i < 0 || i >= count || count > DATA_PIPELINE_MAX)
        return err_set(err, "%s %d of a pipeline of %d (at most %d)", role, i, count,
                       DATA_PIPELINE_MAX);
    char bin[PATH_MAX], sock[32], ep[ZMQ_UTIL_ENDPOINT_CAP];
    snprintf(sock, sizeof sock, "%s%d.sock", loader ? "loader" : "aug", i);
    if (child_program(role, bin, sizeof bin, err) < 0 || rundir_endpoint(rundir, sock, ep, err) < 0)
        return -1;
    int hb = cfg->hb_ms ? cfg->hb_ms : STAGE_HB_MS;
    argv_buf_add(out, "%s", bin);
    argv_buf_add(out, "--listen");
    argv_buf_add(out, "%s", ep);
    argv_buf_add(out, "--name");
    argv_buf_add(out, "%s%d", loader ? "loader" : "aug", i);
    argv_buf_add(out, "--hb-ms");
    argv_buf_add(out, "%d", hb);
    if (cfg->report) {
        argv_buf_add(out, "--report");
        argv_buf_add(out, "%s", cfg->report);
    }
    if (loader) {
        if (cfg->data) {
            argv_buf_add(out, "--data");
            argv_buf_add(out, "%s", cfg->data);
        } else {
            argv_buf_add(out, "--ann");
            argv_buf_add(out, "%s", cfg->ann);
            argv_buf_add(out, "--images");
            argv_buf_add(out, "%s", cfg->images);
        }
        if (cfg->num_classes) {
            argv_buf_add(out, "--num-classes");
            argv_buf_add(out, "%d", cfg->num_classes);
        }
        if (cfg->skip_bad_images) argv_buf_add(out, "--skip-bad-images");
    } else {
        char list[sizeof out->buf];
        if (loader_list(cfg, rundir, list, sizeof list, err) < 0) return -1;
        argv_buf_add(out, "--loaders");
        argv_buf_add(out, "%s", list);
        argv_buf_add(out, "--batch");
        argv_buf_add(out, "%d", cfg->batch);
        argv_buf_add(out, "--image-size");
        argv_buf_add(out, "%dx%d", cfg->height, cfg->width);
        argv_buf_add(out, "--seed");
        argv_buf_add(out, "%llu", (unsigned long long)cfg->seed);
        argv_buf_add(out, "--slots");
        argv_buf_add(out, "%d", cfg->aug_slots ? cfg->aug_slots : 2);
        argv_buf_add(out, "--dtype");
        argv_buf_add(out, "%s", cfg->dtype ? cfg->dtype : "f32");
        argv_buf_add(out, "--dead-ms");
        argv_buf_add(out, "%d", cfg->dead_ms ? cfg->dead_ms : STAGE_DEAD_MS);
    }
    if (out->full)
        return err_set(err, "%s %d: its command line exceeds %zu bytes or %d arguments", role, i,
                       sizeof out->buf, ARGV_BUF_MAX);
    return 0;
}

/* ---- the pipeline ------------------------------------------------------------------------------ */

int data_pipeline_open(DataPipeline *p, Err *err)
{
    memset(p, 0, sizeof *p);
    /* What a run killed with -9 left: its sockets' directory (its stages' segments are removed
     * by the stages themselves when they start, stage_server_init). */
    Err serr;
    if (rundir_remove_stale(&serr) < 0) log_warn("%s", serr.msg);
    return rundir_create(p->rundir, err);
}

int data_pipeline_spawn(DataPipeline *p, const DataPipelineConfig *cfg, Err *err)
{
    if (cfg->loaders < 1 || cfg->loaders > DATA_PIPELINE_MAX || cfg->augmenters < 1 ||
        cfg->augmenters > DATA_PIPELINE_MAX) {
        data_pipeline_stop(p);
        return err_set(err, "--loaders and --augmenters must be in 1..%d", DATA_PIPELINE_MAX);
    }
    /* Loaders first: augmenters connect to them (either order works, ZeroMQ reconnects, but
     * this one wastes no retry). */
    ArgvBuf *sa = malloc(sizeof *sa);
    if (!sa) {
        data_pipeline_stop(p);
        return err_set(err, "out of memory");
    }
    for (int i = 0; i < cfg->loaders; i++) {
        char name[16];
        snprintf(name, sizeof name, "loader%d", i);
        if (data_pipeline_stage_argv(cfg, p->rundir, "loader", i, sa, err) < 0 ||
            spawn(p, name, sa->argv, err) < 0)
            goto fail;
    }
    for (int i = 0; i < cfg->augmenters; i++) {
        char name[16], sock[32];
        snprintf(name, sizeof name, "aug%d", i);
        snprintf(sock, sizeof sock, "aug%d.sock", i);
        if (rundir_endpoint(p->rundir, sock, p->aug_eps[i], err) < 0 ||
            data_pipeline_stage_argv(cfg, p->rundir, "augment", i, sa, err) < 0 ||
            spawn(p, name, sa->argv, err) < 0)
            goto fail;
        p->aug_ptrs[i] = p->aug_eps[i];
        p->n_aug++;
    }
    free(sa);
    return 0;
fail:
    free(sa);
    data_pipeline_stop(p);
    return -1;
}

int data_pipeline_start(DataPipeline *p, const DataPipelineConfig *cfg, Err *err)
{
    if (cfg->loaders < 1 || cfg->loaders > DATA_PIPELINE_MAX || cfg->augmenters < 1 ||
        cfg->augmenters > DATA_PIPELINE_MAX) {
        memset(p, 0, sizeof *p);
        return err_set(err, "--loaders and --augmenters must be in 1..%d", DATA_PIPELINE_MAX);
    }
    if (data_pipeline_open(p, err) < 0) return -1;
    return data_pipeline_spawn(p, cfg, err);
}

int data_pipeline_check(DataPipeline *p, Err *err)
{
    for (int i = 0; i < p->n; i++) {
        int st;
        if (p->pids[i] <= 0 || waitpid(p->pids[i], &st, WNOHANG) != p->pids[i]) continue;
        p->pids[i] = 0;
        if (WIFEXITED(st))
            return err_set(err, "%s exited with status %d (its error is above)", p->names[i],
                           WEXITSTATUS(st));
        return err_set(err, "%s was killed by signal %d", p->names[i], WTERMSIG(st));
    }
    return 0;
}

int data_pipeline_alive(void *pipeline, Err *err) { return data_pipeline_check(pipeline, err); }

void data_pipeline_stop(DataPipeline *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->pids[i] > 0) kill(p->pids[i], SIGTERM);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int left = p->n; left > 0;) {
        left = 0;
        for (int i = 0; i < p->n; i++) {
            if (p->pids[i] <= 0) continue;
            pid_t r = waitpid(p->pids[i], NULL, WNOHANG);
            if (r == p->pids[i] || (r < 0 && errno == ECHILD)) p->pids[i] = 0;
            else left++;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (left && now.tv_sec - t0.tv_sec >= 5) {
            for (int i = 0; i < p->n; i++)
                if (p->pids[i] > 0) {
                    log_warn("%s did not stop in 5 s: killing it", p->names[i]);
                    kill(p->pids[i], SIGKILL);
                    waitpid(p->pids[i], NULL, 0);
                    p->pids[i] = 0;
                }
            break;
        }
        if (left) usleep(10000);
    }
    p->n = 0;
    Err err;
    if (p->rundir[0] && rundir_remove(p->rundir, &err) < 0) log_warn("%s", err.msg);
    p->rundir[0] = 0;
    if (shm_unlink_stale(&err) < 0) log_warn("%s", err.msg);
}
