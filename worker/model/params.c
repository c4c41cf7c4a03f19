/* params.c: the parameter table, layout conversion, safetensors loading (strict, and with the
 * fine-tuning options of ParamLoadOptions: one code path for both) and random init. */
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

size_t param_table_max_count(const ParamTable *t)
{
    size_t max_count = 1;
    for (int i = 0; i < t->count; i++)
        if (t->specs[i].count > max_count) max_count = t->specs[i].count;
    return max_count;
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

int param_name_has_prefix(const char *name, const char *const *prefixes, int n)
{
    for (int i = 0; i < n; i++)
        if (!strncmp(name, prefixes[i], strlen(prefixes[i]))) return 1;
    return 0;
}

const char *param_table_unmatched_prefix(const ParamTable *t, const char *const *prefixes, int n)
{
    for (int i = 0; i < n; i++) {
        int hit = 0;
        for (int j = 0; j < t->count && !hit; j++) hit = param_name_has_prefix(t->specs[j].name, &prefixes[i], 1);
        if (!hit) return prefixes[i];
    }
    return NULL;
}

static const char BACKBONE[] = "backbone.";
enum { BACKBONE_LEN = sizeof BACKBONE - 1 };

static int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* How the file names the table's tensors: file name = prefix + (timm ? name minus "backbone."
 * : name). */
typedef struct FileNaming {
    const char *prefix; /* "ema." for a checkpoint with EMA weights, which effdet evaluates */
    int timm;           /* timm's bare EfficientNet names (backbone loads only) */
    int backbone_only;
} FileNaming;

static FileNaming file_naming(const SafeTensors *st, const ParamTable *t, const ParamLoadOptions *o)
{
    FileNaming fn = {.prefix = "", .backbone_only = o->backbone_only};
    const char *first = t->count ? t->specs[0].name : ""; /* backbone.conv_stem.weight */
    char name[160];
    snprintf(name, sizeof name, "ema.%s", first);
    if (st_find(st, name)) fn.prefix = "ema.";
    else if (o->backbone_only && starts_with(first, BACKBONE) && !st_find(st, first))
        fn.timm = st_find(st, first + BACKBONE_LEN) != NULL;
    return fn;
}

static void file_name_of(const FileNaming *fn, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s", fn->prefix, fn->timm ? name + BACKBONE_LEN : name);
}

/* The table name a file tensor stands for, or NULL for tensors a weights file may hold beyond
 * the model's: effdet's num_batches_tracked counters; in our checkpoints (worker/checkpoint.h)
 * the optimizer state and whichever of the raw and EMA weights is not being loaded; the rest of
 * the network in a backbone load, and timm's classifier side. */
static const char *table_name_of(const FileNaming *fn, const char *name, char *buf, size_t cap)
{
    const char *suffix = ".num_batches_tracked";
    size_t n = strlen(name), m = strlen(suffix);
    if ((n > m && !strcmp(name + n - m, suffix)) || starts_with(name, "optim.")) return NULL;
    if (!starts_with(name, fn->prefix)) return NULL;
    name += strlen(fn->prefix);
    if (fn->timm) {
        if (starts_with(name, "conv_head.") || starts_with(name, "bn2.") ||
            starts_with(name, "classifier."))
            return NULL;
        snprintf(buf, cap, "%s%s", BACKBONE, name);
        return buf;
    }
    return fn->backbone_only && !starts_with(name, BACKBONE) ? NULL : name;
}

/* Whether the load reads this tensor of the table. */
static int wanted(const ParamSpec *s, const ParamLoadOptions *o)
{
    if (o->backbone_only && !starts_with(s->name, BACKBONE)) return 0;
    return !param_name_has_prefix(s->name, o->skip, o->n_skip);
}

/* One line for a mismatch between file and model, naming the first offender. */
static int mismatch(Err *err, const char *path, const char *model_name, const char *file_model,
                    const char *what, const char *name, int others, int backbone_only)
{
    char more[64] = "", hint[160] = "";
    if (others > 0) snprintf(more, sizeof more, " (and %d more)", others);
    if (file_model && strcmp(file_model, model_name))
        snprintf(hint, sizeof hint, "; the file says it holds %s, not %s", file_model, model_name);
    else if (backbone_only)
        snprintf(hint, sizeof hint, "; the backbone of another variant?");
    else
        snprintf(hint, sizeof hint, "; weights of another variant or num_classes?");
    return err_set(err, "%s: tensor '%s' %s%s for %s%s", path, name, what, more, model_name, hint);
}

/* Missing (wanted by the table, absent from the file) and unexpected (in the file, not in the
 * table) tensors: one error naming the first. */
static int check_names(const SafeTensors *st, const ParamTable *t, const ParamLoadOptions *o,
                       const FileNaming *fn, const char *path, const char *model_name, Err *err)
{
    const char *file_model = st_meta(st, "model");
    char name[160], first_missing[160] = "";
    int missing = 0, extra = 0;
    const char *first_extra = NULL;
    for (int i = 0; i < t->count; i++) {
        if (!wanted(&t->specs[i], o)) continue;
        file_name_of(fn, t->specs[i].name, name, sizeof name);
        if (!st_find(st, name) && !missing++)
            snprintf(first_missing, sizeof first_missing, "%s", name + strlen(fn->prefix));
    }
    for (int i = 0; i < st->count; i++) {
        const char *n = table_name_of(fn, st->tensors[i].name, name, sizeof name);
        if (n && !param_table_find(t, n) && !extra++) first_extra = st->tensors[i].name;
    }
    if (missing)
        return mismatch(err, path, model_name, file_model, "is missing", first_missing, missing - 1,
                        o->backbone_only);
    if (extra)
        return mismatch(err, path, model_name, file_model, "is unexpected", first_extra, extra - 1,
                        o->backbone_only);
    return 0;
}

static int same_shape(const StTensor *ft, const ParamSpec *s)
{
    if (ft->ndim != s->ndim) return 0;
    for (int d = 0; d < s->ndim; d++)
        if (ft->shape[d] != s->shape[d]) return 0;
    return 1;
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape)
{
    int len = 0;
    out[0] = '\0';
    for (int d = 0; d < ndim && len >= 0 && (size_t)len < cap; d++)
        len += snprintf(out + len, cap - (size_t)len, "%s%lld", d ? "x" : "", (long long)shape[d]);
}

/* A class-head predict tensor of another num_classes: kept (fresh init) and reported. */
static int keep_class_head(const StTensor *ft, const ParamSpec *s, const ParamLoadOptions *o,
                           ParamLoadReport *rep)
{
    if (!o->reinit_class_head || !starts_with(s->name, "class_net.predict.") || same_shape(ft, s))
        return 0;
    char fs[64], ms[64];
    shape_str(fs, sizeof fs, ft->ndim, ft->shape);
    shape_str(ms, sizeof ms, s->ndim, s->shape);
    size_t len = strlen(rep->reinit);
    snprintf(rep->reinit + len, sizeof rep->reinit - len, "%s%s (file %s, model %s)",
             rep->n_reinit ? ", " : "", s->name, fs, ms);
    rep->n_reinit++;
    return 1;
}

int param_table_load_with(const ParamTable *t, const char *path, const char *model_name,
                          const ParamLoadOptions *opts, float *params, float *buffers,
                          ParamLoadReport *report, Err *err)
{
    ParamLoadOptions none = {0};
    ParamLoadReport scratch;
    const ParamLoadOptions *o = opts ? opts : &none;
    ParamLoadReport *rep = report ? report : &scratch;
    memset(rep, 0, sizeof *rep);
    const char *unmatched = param_table_unmatched_prefix(t, o->skip, o->n_skip);
    if (unmatched)
        return err_set(err, "%s: prefix '%s' of the tensors not to load matches no tensor of %s",
                       path, unmatched, model_name);
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    const char *file_model = st_meta(&st, "model");
    FileNaming fn = file_naming(&st, t, o);
    rep->timm_names = fn.timm;
    int rc = -1;
    float *tmp = NULL;
    if (check_names(&st, t, o, &fn, path, model_name, err) != 0) goto done;
    tmp = malloc(param_table_max_count(t) * sizeof(float));
    if (!tmp) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < t->count; i++) {
        const ParamSpec *s = &t->specs[i];
        char name[160];
        if (!wanted(s, o)) {
            rep->skipped++;
            continue;
        }
        file_name_of(&fn, s->name, name, sizeof name);
        if (keep_class_head(st_find(&st, name), s, o, rep)) continue;
        if (st_read_f32(&st, name, s->ndim, s->shape, tmp, err) != 0) {
            if (file_model && strcmp(file_model, model_name))
                err_wrap(err, "(file holds %s, model is %s) ", file_model, model_name);
            goto done;
        }
        param_convert(s, (param_is_buffer(s->kind) ? buffers : params) + s->offset, tmp, 1);
        rep->loaded++;
    }
    rc = 0;
done:
    free(tmp);
    st_close(&st);
    return rc;
}

int param_table_load(const ParamTable *t, const char *path, const char *model_name, float *params,
                     float *buffers, Err *err)
{
    return param_table_load_with(t, path, model_name, NULL, params, buffers, NULL, err);
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
