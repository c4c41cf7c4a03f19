/* safetensors.c: strict safetensors reader and atomic writer (see safetensors.h). */
#include "shared/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { ST_HEADER_MAX = 100 * 1000 * 1000 };

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_F64] = {"F64", 8}, [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4}, [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1},
};

size_t st_dtype_size(StDtype dt) { return dtypes[dt].size; }
const char *st_dtype_name(StDtype dt) { return dtypes[dt].name; }

int64_t st_numel(const StTensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

static int read_whole_file(const char *path, uint8_t **buf, size_t *size, Err *err)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return err_set(err, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return err_set(err, "%s: not a regular file", path);
    }
    *size = (size_t)sb.st_size;
    *buf = malloc(*size ? *size : 1);
    if (!*buf) {
        close(fd);
        return err_set(err, "%s: cannot allocate %zu bytes", path, *size);
    }
    size_t got = 0;
    while (got < *size) {
        ssize_t r = read(fd, *buf + got, *size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            close(fd);
            free(*buf), *buf = NULL;
            return err_set(err, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "short read");
        }
        got += (size_t)r;
    }
    close(fd);
    return 0;
}

static int parse_dtype(const char *s, StDtype *dt)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(s, dtypes[i].name)) return *dt = (StDtype)i, 0;
    return -1;
}

/* A JSON number that is an exact non-negative integer below 2^53. */
static int json_uint(const cJSON *j, int64_t *v)
{
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || floor(d) != d) return -1;
    *v = (int64_t)d;
    return 0;
}

static int parse_entry(const SafeTensors *st, const cJSON *e, StTensor *t, size_t data_size,
                       Err *err)
{
    const char *p = st->path, *name = e->string;
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return err_set(err, "%s: tensor '%s': header entry needs dtype, shape and data_offsets", p,
                       name);
    t->name = name;
    if (parse_dtype(jd->valuestring, &t->dtype) != 0)
        return err_set(err, "%s: tensor '%s': unknown dtype '%s'", p, name, jd->valuestring);
    t->ndim = cJSON_GetArraySize(js);
    if (t->ndim > ST_MAX_DIMS)
        return err_set(err, "%s: tensor '%s': %d dimensions (at most %d)", p, name, t->ndim,
                       ST_MAX_DIMS);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (json_uint(cJSON_GetArrayItem(js, i), &t->shape[i]) != 0)
            return err_set(err, "%s: tensor '%s': shape entries must be non-negative integers", p,
                           name);
        if (t->shape[i] && numel > (UINT64_MAX / 16) / (uint64_t)t->shape[i])
            return err_set(err, "%s: tensor '%s': shape overflows", p, name);
        numel *= (uint64_t)t->shape[i];
    }
    int64_t b, e2;
    if (cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &b) != 0 ||
        json_uint(cJSON_GetArrayItem(jo, 1), &e2) != 0 || e2 < b)
        return err_set(err, "%s: tensor '%s': data_offsets must be [begin, end] with begin <= end",
                       p, name);
    uint64_t want = numel * st_dtype_size(t->dtype);
    if ((uint64_t)(e2 - b) != want)
        return err_set(err, "%s: tensor '%s': %lld bytes in data_offsets but shape x %s needs %llu",
                       p, name, (long long)(e2 - b), st_dtype_name(t->dtype),
                       (unsigned long long)want);
    if ((uint64_t)e2 > data_size)
        return err_set(err, "%s: tensor '%s': data_offsets end %lld is past the data (%zu bytes): "
                            "file truncated?",
                       p, name, (long long)e2, data_size);
    t->nbytes = (size_t)want;
    t->data = (const uint8_t *)(uintptr_t)b; /* offset for now; made a pointer after the checks */
    return 0;
}

static int cmp_by_offset(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)((const StTensor *)a)->data, y = (uintptr_t)((const StTensor *)b)->data;
    if (x != y) return x < y ? -1 : 1;
    size_t nx = ((const StTensor *)a)->nbytes, ny = ((const StTensor *)b)->nbytes;
    return nx < ny ? -1 : nx > ny;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name);
}

/* Offsets must tile [0, data_size) exactly; names must be unique. Leaves tensors sorted by name. */
static int check_layout(SafeTensors *st, size_t data_size, Err *err)
{
    qsort(st->tensors, (size_t)st->count, sizeof *st->tensors, cmp_by_offset);
    uintptr_t pos = 0;
    for (int i = 0; i < st->count; i++) {
        const StTensor *t = &st->tensors[i];
        if ((uintptr_t)t->data != pos)
            return err_set(err, "%s: tensor '%s': data starts at %llu but the previous tensor ends "
                                "at %llu (gap or overlap)",
                           st->path, t->name, (unsigned long long)(uintptr_t)t->data,
                           (unsigned long long)pos);
        pos += t->nbytes;
    }
    if (pos != data_size)
        return err_set(err, "%s: tensors cover %llu bytes but the data section holds %zu",
                       st->path, (unsigned long long)pos, data_size);
    qsort(st->tensors, (size_t)st->count, sizeof *st->tensors, cmp_by_name);
    for (int i = 1; i < st->count; i++)
        if (!strcmp(st->tensors[i - 1].name, st->tensors[i].name))
            return err_set(err, "%s: tensor '%s' appears twice in the header", st->path,
                           st->tensors[i].name);
    return 0;
}

static int parse_header(SafeTensors *st, Err *err)
{
    if (st->size < 8) return err_set(err, "%s: %zu bytes, too short for safetensors", st->path, st->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | st->buf[i];
    if (n > ST_HEADER_MAX) return err_set(err, "%s: header length %llu exceeds the 100 MB cap "
                                               "(not a safetensors file?)",
                                          st->path, (unsigned long long)n);
    if (n > st->size - 8)
        return err_set(err, "%s: header length %llu is past the end of the file (%zu bytes)",
                       st->path, (unsigned long long)n, st->size);
    const char *end = NULL;
    st->header = cJSON_ParseWithLengthOpts((const char *)st->buf + 8, (size_t)n, &end, 0);
    if (!st->header || !cJSON_IsObject(st->header))
        return err_set(err, "%s: header is not a JSON object (error near byte %ld)", st->path,
                       end ? (long)(end - (const char *)st->buf) : 8L);
    size_t data_size = st->size - 8 - (size_t)n;
    int count = 0;
    for (const cJSON *e = st->header->child; e; e = e->next) count += strcmp(e->string, "__metadata__") != 0;
    st->tensors = calloc((size_t)count + 1, sizeof *st->tensors);
    if (!st->tensors) return err_set(err, "%s: out of memory", st->path);
    for (const cJSON *e = st->header->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) return err_set(err, "%s: __metadata__ is not an object", st->path);
            for (const cJSON *m = e->child; m; m = m->next)
                if (!cJSON_IsString(m))
                    return err_set(err, "%s: __metadata__ value '%s' is not a string", st->path, m->string);
            continue;
        }
        if (parse_entry(st, e, &st->tensors[st->count], data_size, err) != 0) return -1;
        st->count++;
    }
    if (check_layout(st, data_size, err) != 0) return -1;
    const uint8_t *data = st->buf + 8 + n;
    for (int i = 0; i < st->count; i++)
        st->tensors[i].data = data + (uintptr_t)st->tensors[i].data;
    return 0;
}

int st_open(SafeTensors *st, const char *path, Err *err)
{
    memset(st, 0, sizeof *st);
    snprintf(st->path, sizeof st->path, "%s", path);
    if (read_whole_file(path, &st->buf, &st->size, err) != 0) return -1;
    if (parse_header(st, err) != 0) {
        st_close(st);
        return -1;
    }
    return 0;
}

void st_close(SafeTensors *st)
{
    free(st->buf);
    free(st->tensors);
    cJSON_Delete(st->header);
    st->buf = NULL, st->tensors = NULL, st->header = NULL, st->count = 0;
}

const StTensor *st_find(const SafeTensors *st, const char *name)
{
    StTensor key = {.name = name};
    return bsearch(&key, st->tensors, (size_t)st->count, sizeof key, cmp_by_name);
}

const char *st_meta(const SafeTensors *st, const char *key)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(st->header, "__metadata__");
    const cJSON *v = m ? cJSON_GetObjectItemCaseSensitive(m, key) : NULL;
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t len = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

int st_read_f32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, float *dst,
                Err *err)
{
    const StTensor *t = st_find(st, name);
    if (!t) return err_set(err, "%s: tensor '%s' is missing", st->path, name);
    if (t->dtype != ST_F32)
        return err_set(err, "%s: tensor '%s' is %s, expected F32", st->path, name,
                       st_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char got[128], want[128];
        format_shape(got, sizeof got, t->ndim, t->shape);
        format_shape(want, sizeof want, ndim, shape);
        return err_set(err, "%s: tensor '%s' has shape %s, expected %s", st->path, name, got, want);
    }
    memcpy(dst, t->data, t->nbytes);
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w, n -= (size_t)w;
    }
    return 0;
}

static char *build_header(const StWriteTensor *ts, int count, const char *const *meta_kv,
                          int n_meta, size_t *data_bytes)
{
    cJSON *h = cJSON_CreateObject();
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(h, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(m, meta_kv[2 * i], meta_kv[2 * i + 1]);
    }
    size_t off = 0;
    for (int i = 0; i < count; i++) {
        cJSON *e = cJSON_AddObjectToObject(h, ts[i].name);
        cJSON_AddStringToObject(e, "dtype", st_dtype_name(ts[i].dtype));
        cJSON *shape = cJSON_AddArrayToObject(e, "shape");
        size_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)ts[i].shape[d]));
            numel *= (size_t)ts[i].shape[d];
        }
        size_t nb = numel * st_dtype_size(ts[i].dtype);
        cJSON *offs = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
        off += nb;
    }
    *data_bytes = off;
    char *s = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    return s;
}

static int fsync_dir_of(const char *path)
{
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    int fd = open(dirname(tmp), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int st_write(const char *path, const StWriteTensor *ts, int count, const char *const *meta_kv,
             int n_meta, Err *err)
{
    size_t data_bytes = 0;
    char *json = build_header(ts, count, meta_kv, n_meta, &data_bytes);
    if (!json) return err_set(err, "%s: cannot build the header", path);
    size_t jlen = strlen(json), padded = (jlen + 7) / 8 * 8;
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        free(json);
        return err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int bad = write_all(fd, len8, 8) || write_all(fd, json, jlen);
    for (size_t i = jlen; i < padded && !bad; i++) bad = write_all(fd, " ", 1);
    for (int i = 0; i < count && !bad; i++) {
        size_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) numel *= (size_t)ts[i].shape[d];
        bad = write_all(fd, ts[i].data, numel * st_dtype_size(ts[i].dtype));
    }
    free(json);
    int saved = errno;
    if (bad || fsync(fd) != 0) {
        if (!bad) saved = errno;
        close(fd);
        unlink(tmp);
        return err_set(err, "%s: write failed: %s", path, strerror(saved));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return err_set(err, "%s: cannot rename %s into place: %s", path, tmp, strerror(saved));
    }
    if (fsync_dir_of(path) != 0) return err_set(err, "%s: cannot fsync its directory", path);
    return 0;
}
