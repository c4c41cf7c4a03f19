/* data_pipeline.c: see data_pipeline.h. */
#include "launch/data_pipeline.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/shm.h"

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

int data_pipeline_start(DataPipeline *p, const DataPipelineConfig *cfg, Err *err)
{
    memset(p, 0, sizeof *p);
    if (cfg->loaders < 1 || cfg->loaders > DATA_PIPELINE_MAX || cfg->augmenters < 1 ||
        cfg->augmenters > DATA_PIPELINE_MAX)
        return err_set(err, "--loaders and --augmenters must be in 1..%d", DATA_PIPELINE_MAX);
    char loader_bin[PATH_MAX], aug_bin[PATH_MAX];
    /* What a run killed with -9 left: its sockets' directory (its stages' segments are removed
     * by the stages themselves when they start, stage_server_init). */
    Err serr;
    if (rundir_remove_stale(&serr) < 0) log_warn("%s", serr.msg);
    if (sibling("loader", loader_bin, sizeof loader_bin, err) < 0 ||
        sibling("augment", aug_bin, sizeof aug_bin, err) < 0 || rundir_create(p->rundir, err) < 0)
        return -1;
    char loader_eps[DATA_PIPELINE_MAX][ZMQ_UTIL_ENDPOINT_CAP], list[DATA_PIPELINE_MAX * 128] = "";
    char hb[16], dead[16], batch[16], size[40], seed[24], slots[16], ncls[16], name[16];
    snprintf(hb, sizeof hb, "%d", cfg->hb_ms ? cfg->hb_ms : 200);
    snprintf(dead, sizeof dead, "%d", cfg->dead_ms ? cfg->dead_ms : 3000);
    snprintf(batch, sizeof batch, "%d", cfg->batch);
    snprintf(size, sizeof size, "%dx%d", cfg->height, cfg->width);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)cfg->seed);
    snprintf(slots, sizeof slots, "%d", cfg->aug_slots ? cfg->aug_slots : 2);
    snprintf(ncls, sizeof ncls, "%d", cfg->num_classes);
    for (int i = 0; i < cfg->loaders; i++) {
        char sock[32];
        snprintf(sock, sizeof sock, "loader%d.sock", i);
        snprintf(name, sizeof name, "loader%d", i);
        if (rundir_endpoint(p->rundir, sock, loader_eps[i], err) < 0) goto fail;
        const char *argv[20] = {loader_bin, "--listen", loader_eps[i], "--name", name,
                                "--hb-ms", hb};
        int k = 7;
        if (cfg->data) argv[k++] = "--data", argv[k++] = cfg->data;
        else argv[k++] = "--ann", argv[k++] = cfg->ann, argv[k++] = "--images", argv[k++] = cfg->images;
        if (cfg->num_classes) argv[k++] = "--num-classes", argv[k++] = ncls;
        if (cfg->skip_bad_images) argv[k++] = "--skip-bad-images";
        if (spawn(p, name, (char *const *)argv, err) < 0) goto fail;
        if (i) strcat(list, ",");
        strcat(list, loader_eps[i]);
    }
    for (int i = 0; i < cfg->augmenters; i++) {
        char sock[32];
        snprintf(sock, sizeof sock, "aug%d.sock", i);
        snprintf(name, sizeof name, "aug%d", i);
        if (rundir_endpoint(p->rundir, sock, p->aug_eps[i], err) < 0) goto fail;
        const char *argv[] = {aug_bin, "--loaders", list, "--listen", p->aug_eps[i], "--name",
                              name, "--batch", batch, "--image-size", size, "--seed", seed,
                              "--slots", slots, "--dtype", cfg->dtype ? cfg->dtype : "f32",
                              "--hb-ms", hb, "--dead-ms", dead, NULL};
        if (spawn(p, name, (char *const *)argv, err) < 0) goto fail;
        p->aug_ptrs[i] = p->aug_eps[i];
        p->n_aug++;
    }
    return 0;
fail:
    data_pipeline_stop(p);
    return -1;
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
