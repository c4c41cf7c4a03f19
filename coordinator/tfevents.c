/* tfevents.c: TensorBoard event files (see tfevents.h).
 *
 * DESIGN: the protobuf is encoded by hand; an Event holding one scalar needs four wire types
 * (varint, fixed64, length-delimited, fixed32) and a few field numbers, which is far less code
 * than a protobuf dependency. Event: wall_time = 1 (double), step = 2 (int64), file_version = 3
 * (string), summary = 5 (Summary). Summary: value = 1 (repeated Value). Value: tag = 1 (string),
 * simple_value = 2 (float). Each record is built in a fixed buffer, then framed and written with
 * one fwrite + fflush, so the file only ever ends between records or inside the last one. */
#include "tfevents.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TFEVENTS_MAX_TAG 256
/* An Event with the longest tag is well under this: 9 + 11 + 2 * 3 length prefixes + tag + 5. */
#define TFEVENTS_MAX_EVENT 512

struct TfEvents {
    FILE *f;
    char *path;
    uint32_t crc_table[256];
};

void tfevents_crc32c_table(uint32_t table[256])
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

uint32_t tfevents_crc32c(const uint32_t table[256], const void *data, size_t n)
{
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

uint32_t tfevents_mask_crc(uint32_t crc)
{
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

/* A small append-only byte buffer for one Event; the callers size it so it never overflows. */
typedef struct PbBuf {
    uint8_t b[TFEVENTS_MAX_EVENT];
    size_t n;
} PbBuf;

static void pb_byte(PbBuf *p, uint8_t v)
{
    p->b[p->n++] = v;
}

static void pb_varint(PbBuf *p, uint64_t v)
{
    while (v >= 0x80) {
        pb_byte(p, (uint8_t)(v | 0x80));
        v >>= 7;
    }
    pb_byte(p, (uint8_t)v);
}

/* A field key: (field number << 3) | wire type. */
static void pb_key(PbBuf *p, unsigned field, unsigned wire)
{
    pb_varint(p, ((uint64_t)field << 3) | wire);
}

static void pb_fixed64(PbBuf *p, unsigned field, uint64_t v)
{
    pb_key(p, field, 1);
    for (int i = 0; i < 8; i++)
        pb_byte(p, (uint8_t)(v >> (8 * i)));
}

static void pb_fixed32(PbBuf *p, unsigned field, uint32_t v)
{
    pb_key(p, field, 5);
    for (int i = 0; i < 4; i++)
        pb_byte(p, (uint8_t)(v >> (8 * i)));
}

static void pb_bytes(PbBuf *p, unsigned field, const void *data, size_t n)
{
    pb_key(p, field, 2);
    pb_varint(p, n);
    memcpy(p->b + p->n, data, n);
    p->n += n;
}

static void pb_double(PbBuf *p, unsigned field, double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    pb_fixed64(p, field, u);
}

static void pb_float(PbBuf *p, unsigned field, float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    pb_fixed32(p, field, u);
}

static double wall_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Frames one serialized Event as a TFRecord and writes it in one piece. */
static int write_record(TfEvents *t, const uint8_t *data, size_t n, Err *err)
{
    uint8_t head[12], tail[4];
    for (int i = 0; i < 8; i++)
        head[i] = (uint8_t)((uint64_t)n >> (8 * i));
    put_le32(head + 8, tfevents_mask_crc(tfevents_crc32c(t->crc_table, head, 8)));
    put_le32(tail, tfevents_mask_crc(tfevents_crc32c(t->crc_table, data, n)));
    if (fwrite(head, 1, sizeof head, t->f) != sizeof head || fwrite(data, 1, n, t->f) != n ||
        fwrite(tail, 1, sizeof tail, t->f) != sizeof tail || fflush(t->f) != 0)
        return err_set(err, "%s: write: %s", t->path, strerror(errno));
    return 0;
}

static int make_dir(const char *path, Err *err)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST)
        return err_set(err, "%s: mkdir: %s", path, strerror(errno));
    return 0;
}

/* Creates the file exclusively, so two writers started in the same second never share a file. */
static FILE *create_event_file(const char *tbdir, char **path_out, Err *err)
{
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0)
        strcpy(host, "localhost");
    host[sizeof host - 1] = 0;
    long now = (long)time(NULL);
    for (int attempt = 0; attempt < 100; attempt++) {
        char suffix[16] = "";
        if (attempt > 0)
            snprintf(suffix, sizeof suffix, ".%d", attempt);
        char *path = NULL;
        if (asprintf(&path, "%s/events.out.tfevents.%ld.%s%s", tbdir, now, host, suffix) < 0) {
            err_set(err, "%s: out of memory", tbdir);
            return NULL;
        }
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0) {
            int e = errno;
            if (e == EEXIST) {
                free(path);
                continue;
            }
            err_set(err, "%s: %s", path, strerror(e));
            free(path);
            return NULL;
        }
        FILE *f = fdopen(fd, "wb");
        if (!f) {
            err_set(err, "%s: fdopen: %s", path, strerror(errno));
            close(fd);
            free(path);
            return NULL;
        }
        *path_out = path;
        return f;
    }
    err_set(err, "%s: no free event file name for second %ld", tbdir, now);
    return NULL;
}

TfEvents *tfevents_open(const char *dir, Err *err)
{
    char *tbdir = NULL;
    if (make_dir(dir, err) != 0)
        return NULL;
    if (asprintf(&tbdir, "%s/tensorboard", dir) < 0) {
        err_set(err, "%s: out of memory", dir);
        return NULL;
    }
    TfEvents *t = calloc(1, sizeof *t);
    if (!t) {
        err_set(err, "%s: out of memory", dir);
        free(tbdir);
        return NULL;
    }
    tfevents_crc32c_table(t->crc_table);
    if (make_dir(tbdir, err) != 0 || !(t->f = create_event_file(tbdir, &t->path, err))) {
        free(tbdir);
        free(t);
        return NULL;
    }
    free(tbdir);

    PbBuf pb = {.n = 0};
    static const char version[] = "brain.Event:2";
    pb_double(&pb, 1, wall_time_now());
    pb_bytes(&pb, 3, version, sizeof version - 1);
    if (write_record(t, pb.b, pb.n, err) != 0) {
        tfevents_close(t);
        return NULL;
    }
    return t;
}

int tfevents_scalar(TfEvents *t, const char *tag, long step, double value, Err *err)
{
    size_t tag_len = strlen(tag);
    if (tag_len == 0 || tag_len > TFEVENTS_MAX_TAG)
        return err_set(err, "%s: scalar tag of %zu bytes (1 to %d allowed)", t->path, tag_len,
                       TFEVENTS_MAX_TAG);
    /* Nested messages are encoded inside out: Value, then Summary around it, then the Event. */
    PbBuf value_pb = {.n = 0}, summary_pb = {.n = 0}, event_pb = {.n = 0};
    pb_bytes(&value_pb, 1, tag, tag_len);
    pb_float(&value_pb, 2, (float)value);
    pb_bytes(&summary_pb, 1, value_pb.b, value_pb.n);
    pb_double(&event_pb, 1, wall_time_now());
    /* int64 as a varint: a negative step takes ten bytes, as protobuf specifies. */
    pb_key(&event_pb, 2, 0);
    pb_varint(&event_pb, (uint64_t)(int64_t)step);
    pb_bytes(&event_pb, 5, summary_pb.b, summary_pb.n);
    return write_record(t, event_pb.b, event_pb.n, err);
}

const char *tfevents_path(const TfEvents *t)
{
    return t->path;
}

void tfevents_close(TfEvents *t)
{
    if (!t)
        return;
    if (t->f)
        fclose(t->f);
    free(t->path);
    free(t);
}
