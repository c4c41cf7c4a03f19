/* params.c: the parameter table, layout conversion, safetensors loading and random init. */
#include "worker/model/params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/rng.h"
#include "shared/safetensors.h"

size_t param_table_add(ParamTable *t, ParamKind kind, ParamLayout layout, int ndim,
                       const int64_t *shape, const char *fmt, ...)
{
    if (t->count == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 512;
        t->specs = realloc(t->specs, (size_t)t->cap * sizeof *t->specs);
        ASSERT(t->specs);
    }
    ParamSpec *s = &t->specs[t->count++];
    memset(s, 0, sizeof *s);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    ASSERT(len > 0 && (size_t)len < sizeof s->name);
    ASSERT(ndim >= 1 && ndim <= 4);
    s->ndim = ndim;
    s->count = 1;
    for (int i = 0; i < ndim; i++) s->shape[i] = shape[i], s->count *= (size_t)shape[i];
    s->layout = layout;
    s->kind = kind;
    /* Each tensor starts on a 64-float (256-byte) boundary so vector loads and GPU kernels can
     * treat any tensor as aligned. */
    size_t *cursor = param_is_buffer(kind) ? &t->n_buffers : &t->n_params;
    s->offset = *cursor;
    *cursor += (s->count + 63) / 64 * 64;
    return s->offset;
}

void param_table_free(ParamTable *t)
{
    free(t->specs);
    memset(t, 0, sizeof *t);
}

const ParamSpec *param_table_find(const ParamTable *t, const char *name)
{
    for (int i = 0; i < t->count; i++)
        if (!strcmp(t->specs[i].name, name)) return &t->specs[i];
    return NULL;
}

void param_convert(const ParamSpec *s, float *dst, const float *src, int to_ours)
{
    if (s->layout == LAYOUT_SAME) {
        memcpy(dst, src, s->count * sizeof(float));
        return;
    }
    int o = (int)s->shape[0], i_ch = (int)s->shape[1], kh = (int)s->shape[2], kw = (int)s->shape[3];
    for (int a = 0; a < o; a++)
        for (int b = 0; b < i_ch; b++)
            for (int y = 0; y < kh; y++)
                for (int x = 0; x < kw; x++) {
                    size_t torch = (((size_t)a * i_ch + b) * kh + y) * kw + x;
                    size_t ours = s->layout == LAYOUT_OIHW
                                      ? (((size_t)a * kh + y) * kw + x) * i_ch + b
                                      : ((size_t)y * kw + x) * o + a; /* depthwise: i_ch == 1 */
                    if (to_ours)
                        dst[ours] = src[torch];
                    else
                        dst[torch] = src[ours];
                }
}

/* Tensors a weights file may hold beyond the model's: effdet's num_batches_tracked counters and,
 * in our checkpoints (worker/checkpoint.h), the optimizer state and whichever of the raw and
 * EMA weights is not being loaded. */
static int is_ignored_extra(const char *name, const char *prefix)
{
    const char *suffix = ".num_batches_tracked";
    size_t n = strlen(name), m = strlen(suffix);
    if (n > m && !strcmp(name + n - m, suffix)) return 1;
    if (!strncmp(name, "optim.", 6)) return 1;
    return *prefix ? strncmp(name, prefix, strlen(prefix)) != 0 : 0;
}

/* One line for a mismatch between file and model, naming the first offender. */
static int mismatch(Err *err, const char *path, const char *model_name, const char *file_model,
                    const char *what, const char *name, int others)
{
    char more[64] = "", hint[160] = "";
    if (others > 0) snprintf(more, sizeof more, " (and %d more)", others);
    if (file_model && strcmp(file_model, model_name))
        snprintf(hint, sizeof hint, "; the file says it holds %s, not %s", file_model, model_name);
    else
        snprintf(hint, sizeof hint, "; weights of another variant or num_classes?");
    return err_set(err, "%s: tensor '%s' %s%s for %s%s", path, name, what, more, model_name, hint);
}

int param_table_load(const ParamTable *t, const char *path, const char *model_name, float *params,
                     float *buffers, Err *err)
{
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    const char *file_model = st_meta(&st, "model");
    int rc = -1, missing = 0, extra = 0;
    const char *first_missing = NULL, *first_extra = NULL;
    /* A checkpoint with EMA weights is loaded through them, as effdet evaluates the EMA model. */
    char name[160];
    snprintf(name, sizeof name, "ema.%s", t->count ? t->specs[0].name : "");
    const char *prefix = st_find(&st, name) ? "ema." : "";
    size_t plen = strlen(prefix);
    for (int i = 0; i < t->count; i++) {
        snprintf(name, sizeof name, "%s%s", prefix, t->specs[i].name);
        if (!st_find(&st, name) && !missing++) first_missing = t->specs[i].name;
    }
    for (int i = 0; i < st.count; i++) {
        const char *n = st.tensors[i].name;
        if (is_ignored_extra(n, prefix)) continue;
        if (!param_table_find(t, n + plen) && !extra++) first_extra = n;
    }
    if (missing) {
        mismatch(err, path, model_name, file_model, "is missing", first_missing, missing - 1);
        goto done;
    }
    if (extra) {
        mismatch(err, path, model_name, file_model, "is unexpected", first_extra, extra - 1);
        goto done;
    }
    size_t max_count = 0;
    for (int i = 0; i < t->count; i++)
        if (t->specs[i].count > max_count) max_count = t->specs[i].count;
    float *tmp = malloc(max_count * sizeof(float));
    if (!tmp) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < t->count; i++) {
        const ParamSpec *s = &t->specs[i];
        snprintf(name, sizeof name, "%s%s", prefix, s->name);
        if (st_read_f32(&st, name, s->ndim, s->shape, tmp, err) != 0) {
            if (file_model && strcmp(file_model, model_name))
                err_wrap(err, "(file holds %s, model is %s) ", file_model, model_name);
            free(tmp);
            goto done;
        }
        param_convert(s, (param_is_buffer(s->kind) ? buffers : params) + s->offset, tmp, 1);
    }
    free(tmp);
    rc = 0;
done:
    st_close(&st);
    return rc;
}

static int is_class_prior_bias(const ParamSpec *s)
{
    return !strcmp(s->name, "class_net.predict.conv_pw.bias") ||
           !strcmp(s->name, "class_net.predict.conv.bias");
}

void param_table_init_random(const ParamTable *t, uint64_t seed, float *params, float *buffers)
{
    for (int i = 0; i < t->count; i++) {
        const ParamSpec *s = &t->specs[i];
        float *dst = (param_is_buffer(s->kind) ? buffers : params) + s->offset;
        Rng r;
        rng_init(&r, seed, 0x9a7a0000u, (uint32_t)i); /* one stream per tensor */
        size_t fan_in = s->ndim == 4 ? (size_t)(s->shape[1] * s->shape[2] * s->shape[3]) : 1;
        float stdv = 1.0f / sqrtf((float)fan_in);
        for (size_t j = 0; j < s->count; j++) {
            switch (s->kind) {
            case PARAM_CONV_WEIGHT: dst[j] = stdv * rng_normal(&r); break;
            case PARAM_BIAS: dst[j] = is_class_prior_bias(s) ? -4.595f : 0.0f; break;
            case PARAM_BN_WEIGHT: case PARAM_BN_VAR: case PARAM_EDGE_WEIGHT: dst[j] = 1.0f; break;
            case PARAM_BN_BIAS: case PARAM_BN_MEAN: dst[j] = 0.0f; break;
            }
        }
    }
}
