/* checkpoint.c: full training state as one safetensors file (see checkpoint.h). */
#include "worker/checkpoint.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/safetensors.h"

static const char *FORMAT = "effdet-c checkpoint";

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

typedef struct Section {
    const char *prefix;
    float *params, *buffers; /* buffers NULL: only the parameters (momentum) */
} Section;

static void sections_of(const CheckpointState *s, Section sec[3], int *n)
{
    *n = 0;
    sec[(*n)++] = (Section){"", s->params, s->buffers};
    if (s->ema_params) sec[(*n)++] = (Section){"ema.", s->ema_params, s->ema_buffers};
    if (s->momentum) sec[(*n)++] = (Section){"optim.momentum.", s->momentum, NULL};
}

int checkpoint_write(const char *path, const ParamTable *t, const char *model_name,
                     int num_classes, const CheckpointState *s, Err *err)
{
    Section sec[3];
    int n_sec, n = 0;
    sections_of(s, sec, &n_sec);
    size_t total = (size_t)n_sec * (t->n_params + t->n_buffers);
    StWriteTensor *ts = calloc((size_t)n_sec * t->count, sizeof *ts);
    char (*names)[160] = calloc((size_t)n_sec * t->count, sizeof *names);
    float *staging = malloc((total + 1) * sizeof(float));
    int rc = -1;
    if (!ts || !names || !staging) {
        err_set(err, "%s: out of memory for the checkpoint", path);
        goto done;
    }
    uint64_t sum = 0xcbf29ce484222325ULL;
    float *cursor = staging;
    for (int k = 0; k < n_sec; k++)
        for (int i = 0; i < t->count; i++) {
            const ParamSpec *p = &t->specs[i];
            int buffer = param_is_buffer(p->kind);
            if (buffer && !sec[k].buffers) continue;
            param_convert(p, cursor, (buffer ? sec[k].buffers : sec[k].params) + p->offset, 0);
            snprintf(names[n], sizeof names[n], "%s%s", sec[k].prefix, p->name);
            ts[n] = (StWriteTensor){names[n], ST_F32, p->ndim, {0}, cursor};
            for (int d = 0; d < p->ndim; d++) ts[n].shape[d] = p->shape[d];
            sum = fnv1a(sum, cursor, p->count * sizeof(float));
            cursor += p->count;
            n++;
        }
    char step[32], epoch[32], seed[32], classes[32], checksum[32], scale[40], scale_steps[32];
    snprintf(step, sizeof step, "%ld", s->step);
    snprintf(scale, sizeof scale, "%.17g", s->loss_scale);
    snprintf(scale_steps, sizeof scale_steps, "%ld", s->loss_scale_steps);
    snprintf(epoch, sizeof epoch, "%ld", s->epoch);
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->seed);
    snprintf(classes, sizeof classes, "%d", num_classes);
    snprintf(checksum, sizeof checksum, "%016llx", (unsigned long long)sum);
    const char *meta[] = {"format", FORMAT, "version", "1", "model", model_name,
                          "num_classes", classes, "step", step, "epoch", epoch, "seed", seed,
                          "loss_scale", scale, "loss_scale_steps", scale_steps,
                          "settings", s->settings, "checksum", checksum};
    rc = st_write(path, ts, n, meta, (int)(sizeof meta / sizeof meta[0] / 2), err);
done:
    free(ts), free(names), free(staging);
    return rc;
}

static int read_section(const SafeTensors *st, const ParamTable *t, const Section *sec,
                        float *tmp, uint64_t *sum, Err *err)
{
    for (int i = 0; i < t->count; i++) {
        const ParamSpec *p = &t->specs[i];
        int buffer = param_is_buffer(p->kind);
        if (buffer && !sec->buffers) continue;
        char name[160];
        snprintf(name, sizeof name, "%s%s", sec->prefix, p->name);
        if (st_read_f32(st, name, p->ndim, p->shape, tmp, err) != 0) return -1;
        *sum = fnv1a(*sum, tmp, p->count * sizeof(float));
        param_convert(p, (buffer ? sec->buffers : sec->params) + p->offset, tmp, 1);
    }
    return 0;
}

static long meta_long(const SafeTensors *st, const char *key)
{
    const char *v = st_meta(st, key);
    return v ? strtol(v, NULL, 10) : -1;
}

int checkpoint_read(const char *path, const ParamTable *t, const char *model_name,
                    int num_classes, CheckpointState *s, Err *err)
{
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    int rc = -1;
    const char *fmt = st_meta(&st, "format"), *model = st_meta(&st, "model");
    const char *checksum = st_meta(&st, "checksum"), *settings = st_meta(&st, "settings");
    float *tmp = NULL;
    if (!fmt || strcmp(fmt, FORMAT) || meta_long(&st, "version") != 1 || !checksum) {
        err_set(err, "%s: not an effdet-c checkpoint (version 1)", path);
        goto done;
    }
    if (!model || strcmp(model, model_name) || meta_long(&st, "num_classes") != num_classes) {
        err_set(err, "%s: checkpoint of %s with %ld classes, not %s with %d", path,
                model ? model : "?", meta_long(&st, "num_classes"), model_name, num_classes);
        goto done;
    }
    tmp = malloc(param_table_max_count(t) * sizeof(float));
    if (!tmp) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    /* The checksum covers every section present in the file, in the order written; sections the
     * caller does not want are still hashed. */
    CheckpointState want = *s;
    float *scratch_params = NULL, *scratch_buffers = NULL;
    int has_ema = st_find(&st, "ema.backbone.conv_stem.weight") != NULL;
    int has_mom = st_find(&st, "optim.momentum.backbone.conv_stem.weight") != NULL;
    if ((s->ema_params && !has_ema) || (s->momentum && !has_mom)) {
        err_set(err, "%s: checkpoint has no %s state", path, !has_ema && s->ema_params ? "EMA" : "momentum");
        goto done;
    }
    scratch_params = malloc((t->n_params + 1) * sizeof(float));
    scratch_buffers = malloc((t->n_buffers + 1) * sizeof(float));
    if (!scratch_params || !scratch_buffers) {
        free(scratch_params), free(scratch_buffers);
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    if (has_ema && !want.ema_params) want.ema_params = scratch_params, want.ema_buffers = scratch_buffers;
    if (has_mom && !want.momentum) want.momentum = scratch_params;
    Section sec[3];
    int n_sec;
    sections_of(&want, sec, &n_sec);
    uint64_t sum = 0xcbf29ce484222325ULL;
    int bad = 0;
    for (int k = 0; k < n_sec && !bad; k++) bad = read_section(&st, t, &sec[k], tmp, &sum, err) != 0;
    free(scratch_params), free(scratch_buffers);
    if (bad) goto done;
    char got[32];
    snprintf(got, sizeof got, "%016llx", (unsigned long long)sum);
    if (strcmp(got, checksum)) {
        err_set(err, "%s: checksum mismatch (file says %s, data gives %s): corrupted checkpoint",
                path, checksum, got);
        goto done;
    }
    s->step = meta_long(&st, "step");
    s->epoch = meta_long(&st, "epoch");
    s->seed = strtoull(st_meta(&st, "seed") ? st_meta(&st, "seed") : "0", NULL, 10);
    s->loss_scale = st_meta(&st, "loss_scale") ? strtod(st_meta(&st, "loss_scale"), NULL) : 0.0;
    s->loss_scale_steps = st_meta(&st, "loss_scale_steps") ? meta_long(&st, "loss_scale_steps") : 0;
    snprintf(s->settings, sizeof s->settings, "%s", settings ? settings : "{}");
    rc = 0;
done:
    free(tmp);
    st_close(&st);
    return rc;
}

static int is_checkpoint_name(const char *name, long *step)
{
    char tail[64];
    return sscanf(name, "checkpoint-%ld.safetensor%63s", step, tail) == 2 && !strcmp(tail, "s");
}

int checkpoint_prune(const char *dir, int keep, Err *err)
{
    DIR *d = opendir(dir);
    if (!d) return err_set(err, "%s: cannot list the run directory", dir);
    long steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        long step;
        if (is_checkpoint_name(e->d_name, &step)) steps[n++] = step;
        else if (strstr(e->d_name, ".safetensors.tmp.")) {
            /* Left by a process killed while writing: never a checkpoint, only clutter. */
            char path[1200];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        int newer = 0;
        for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
        if (newer >= keep) {
            char path[1200];
            snprintf(path, sizeof path, "%s/checkpoint-%ld.safetensors", dir, steps[i]);
            unlink(path);
        }
    }
    return 0;
}

void checkpoint_latest(const char *dir, char *path, size_t cap)
{
    path[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) return;
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long step;
        if (is_checkpoint_name(e->d_name, &step) && step > best) best = step;
    }
    closedir(d);
    if (best >= 0) snprintf(path, cap, "%s/checkpoint-%ld.safetensors", dir, best);
}
