/* data_pipeline.c: see data_pipeline.h. */
#include "launch/data_pipeline.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/shm.h"
#include "shared/stage.h"

/* DIR/effdet-NAME beside the running program. */
static int sibling(const char *name, char *out, size_t cap, Err *err)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) return err_set(err, "/proc/self/exe: %s", strerror(errno));
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    if ((size_t)snprintf(out, cap, "%s/effdet-%s", self, name) >= cap)
        return err_set(err, "%s: path too long", self);
    if (access(out, X_OK) != 0) return err_set(err, "%s: %s", out, strerror(errno));
    return 0;
}

/* fork + exec rather than posix_spawn, for two settings the child needs before it runs: its own
 * process group (a Ctrl-C at the terminal reaches only this process, which stops the stages in
 * order after its checkpoint) and SIGTERM when this process dies (a parent killed with -9 leaves
 * no stage running). */
static int spawn(DataPipeline *p, const char *name, char *const argv[], Err *err)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) return err_set(err, "%s: fork: %s", argv[0], strerror(errno));
    if (pid == 0) {
        setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(127);
        execv(argv[0], argv);
        fprintf(stderr, "effdet: %s: exec: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    p->pids[p->n] = pid;
    snprintf(p->names[p->n], sizeof p->names[0], "%s", name);
    p->n++;
    return 0;
}

/* ---- command lines --------------------------------------------------------------------------- */

/* Appends a string (formatted) to out: copied into out->buf, pointed to by out->argv[*n]. Sets
 * *full when buf or argv has no room, so the caller reports one error at the end. */
static void argv_add(StageArgv *out, int *n, size_t *used, int *full, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void argv_add(StageArgv *out, int *n, size_t *used, int *full, const char *fmt, ...)
{
    if (*full) return;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out->buf + *used, sizeof out->buf - *used, fmt, ap);
    va_end(ap);
    /* One slot stays for the terminating NULL. */
    if (len < 0 || (size_t)len >= sizeof out->buf - *used || *n + 1 >= STAGE_ARGV_MAX) {
        *full = 1;
        return;
    }
    out->argv[(*n)++] = out->buf + *used;
    *used += (size_t)len + 1;
}

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
                             int i, StageArgv *out, Err *err)
{
    memset(out->argv, 0, sizeof out->argv);
    int loader = !strcmp(role, "loader");
    if (!loader && strcmp(role, "augment"))
        return err_set(err, "stage role '%s': expected loader or augment", role);
    int count = loader ? cfg->loaders : cfg->augmenters;
    if (i < 0 || i >= count || count > DATA_PIPELINE_MAX)
        return err_set(err, "%s %d of a pipeline of %d (at most %d)", role, i, count,
                       DATA_PIPELINE_MAX);
    char bin[PATH_MAX], sock[32], ep[ZMQ_UTIL_ENDPOINT_CAP];
    snprintf(sock, sizeof sock, "%s%d.sock", loader ? "loader" : "aug", i);
    if (sibling(role, bin, sizeof bin, err) < 0 || rundir_endpoint(rundir, sock, ep, err) < 0)
        return -1;
    int n = 0, full = 0;
    size_t used = 0;
    int hb = cfg->hb_ms ? cfg->hb_ms : STAGE_HB_MS;
    argv_add(out, &n, &used, &full, "%s", bin);
    argv_add(out, &n, &used, &full, "--listen");
    argv_add(out, &n, &used, &full, "%s", ep);
    argv_add(out, &n, &used, &full, "--name");
    argv_add(out, &n, &used, &full, "%s%d", loader ? "loader" : "aug", i);
    argv_add(out, &n, &used, &full, "--hb-ms");
    argv_add(out, &n, &used, &full, "%d", hb);
    if (cfg->report) {
        argv_add(out, &n, &used, &full, "--report");
        argv_add(out, &n, &used, &full, "%s", cfg->report);
    }
    if (loader) {
        if (cfg->data) {
            argv_add(out, &n, &used, &full, "--data");
            argv_add(out, &n, &used, &full, "%s", cfg->data);
        } else {
            argv_add(out, &n, &used, &full, "--ann");
            argv_add(out, &n, &used, &full, "%s", cfg->ann);
            argv_add(out, &n, &used, &full, "--images");
            argv_add(out, &n, &used, &full, "%s", cfg->images);
        }
        if (cfg->num_classes) {
            argv_add(out, &n, &used, &full, "--num-classes");
            argv_add(out, &n, &used, &full, "%d", cfg->num_classes);
        }
        if (cfg->skip_bad_images) argv_add(out, &n, &used, &full, "--skip-bad-images");
    } else {
        char list[sizeof out->buf];
        if (loader_list(cfg, rundir, list, sizeof list, err) < 0) return -1;
        argv_add(out, &n, &used, &full, "--loaders");
        argv_add(out, &n, &used, &full, "%s", list);
        argv_add(out, &n, &used, &full, "--batch");
        argv_add(out, &n, &used, &full, "%d", cfg->batch);
        argv_add(out, &n, &used, &full, "--image-size");
        argv_add(out, &n, &used, &full, "%dx%d", cfg->height, cfg->width);
        argv_add(out, &n, &used, &full, "--seed");
        argv_add(out, &n, &used, &full, "%llu", (unsigned long long)cfg->seed);
        argv_add(out, &n, &used, &full, "--slots");
        argv_add(out, &n, &used, &full, "%d", cfg->aug_slots ? cfg->aug_slots : 2);
        argv_add(out, &n, &used, &full, "--dtype");
        argv_add(out, &n, &used, &full, "%s", cfg->dtype ? cfg->dtype : "f32");
        argv_add(out, &n, &used, &full, "--dead-ms");
        argv_add(out, &n, &used, &full, "%d", cfg->dead_ms ? cfg->dead_ms : STAGE_DEAD_MS);
    }
    if (full)
        return err_set(err, "%s %d: its command line exceeds %zu bytes or %d arguments", role, i,
                       sizeof out->buf, STAGE_ARGV_MAX - 1);
    out->argv[n] = NULL;
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
    StageArgv sa;
    for (int i = 0; i < cfg->loaders; i++) {
        char name[16];
        snprintf(name, sizeof name, "loader%d", i);
        if (data_pipeline_stage_argv(cfg, p->rundir, "loader", i, &sa, err) < 0 ||
            spawn(p, name, (char *const *)sa.argv, err) < 0)
            goto fail;
    }
    for (int i = 0; i < cfg->augmenters; i++) {
        char name[16], sock[32];
        snprintf(name, sizeof name, "aug%d", i);
        snprintf(sock, sizeof sock, "aug%d.sock", i);
        if (rundir_endpoint(p->rundir, sock, p->aug_eps[i], err) < 0 ||
            data_pipeline_stage_argv(cfg, p->rundir, "augment", i, &sa, err) < 0 ||
            spawn(p, name, (char *const *)sa.argv, err) < 0)
            goto fail;
        p->aug_ptrs[i] = p->aug_eps[i];
        p->n_aug++;
    }
    return 0;
fail:
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
