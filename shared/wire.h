/* wire.h: the messages every process exchanges (msgpack, version 1).
 *
 * A message is one msgpack map with str keys. Two fields are always there:
 *   "type"    str, 1 to WIRE_TYPE_CAP - 1 printable ASCII bytes ("detections", "metrics", ...)
 *   "version" uint, WIRE_VERSION; a peer speaking another version is refused, not guessed at
 * The other fields depend on the type; docs/evaluator.md lists the evaluator's. A map holds each
 * key once (a repeated key is an error, not "the last one wins": two peers could read it
 * differently).
 *
 * Decoding (wire_decode) is bounded: before msgpack-c's unpacker allocates anything, a scan of
 * the raw bytes checks every str/bin length and every array/map count against WireLimits and
 * against the bytes that are actually left, so a 5-byte message announcing 4 billion entries is an
 * error and never an allocation. Anything that is not a map at the top, truncated, followed by
 * stray bytes, or using msgpack ext types is an error. Errors are one line naming the message
 * type (once known) and the field:
 *   "message 'detections': field 'dets' is 1234 bytes, expected a multiple of 48"
 * Typed getters (wire_get_*) read one field of a decoded map and fail with such a line when the
 * field is missing or has another type. Decoded str and bin values point into the bytes that
 * were decoded: keep those bytes (e.g. the zmq_msg_t) alive while the WireMsg is used.
 *
 * Tensors travel as a map in one of two forms:
 *   inline:        {"dtype": str, "shape": [uint...], "data": bin}
 *   shared memory: {"dtype": str, "shape": [uint...], "shm": {"segment": str, "slot": uint,
 *                   "offset": uint, "bytes": uint}}
 * dtype is a safetensors name ("F64", "F32", "I64", ...; shared/safetensors.h), data is row-major
 * little-endian (the byte order of every machine we run on; wire.c refuses to build on others)
 * and exactly prod(shape) * dtype size bytes. Small tensors go inline (detections, metrics); inline
 * data is not aligned: copy it out with memcpy. Large ones (pixels, batches) stay in a slot of a
 * segment (shared/shm.h) and the message names where: "bytes" repeats prod(shape) * dtype size so
 * that a mismatch is caught, and offset is a multiple of the dtype size, so the data is aligned.
 *
 * Each field has one form, fixed by the protocol: wire_get_tensor reads inline tensors only and
 * wire_get_tensor_shm shm tensors only, each refusing the other with a line that says so. The shm
 * reader takes the segment the consumer opened for that producer and checks the reference against
 * it (same name, slot in range, range inside the slot), so a message can never make a process open
 * another segment or read outside its mapping.
 *
 * Encoding (WireWriter): wire_writer_init packs the map header with "type" and "version", then
 * exactly n_fields wire_put_* calls follow (checked: a miscount is a programmer error and
 * aborts). Allocation failure aborts, as everywhere in effdet. */
#ifndef EFFDET_WIRE_H
#define EFFDET_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "shared/err.h"
#include "shared/safetensors.h"
#include "shared/shm.h"

enum {
    WIRE_VERSION = 1,
    WIRE_TYPE_CAP = 32,   /* longest type + 1 */
    WIRE_KEY_CAP = 32,    /* longest key named in errors + 1 (longer keys are cut there) */
    WIRE_MAX_DIMS = ST_MAX_DIMS,
};

/* What a decoder accepts. Every count is checked before anything is allocated for it. */
typedef struct WireLimits {
    size_t max_msg_bytes;     /* the whole message; sockets use it as ZMQ_MAXMSGSIZE too */
    uint32_t max_map_entries; /* per map */
    uint32_t max_array_len;   /* per array */
    uint32_t max_str_bytes;   /* per str */
    uint32_t max_bin_bytes;   /* per bin */
    uint32_t max_depth;       /* nesting of maps and arrays; the top-level map is depth 1 */
    uint32_t max_objects;     /* values in the whole message: bounds the decoder's memory */
} WireLimits;

/* 16 MiB messages, 64 map entries, arrays of 4096, str of 4096 bytes, bin up to the message
 * size, depth 8, 65536 values: generous for headers and detections, small enough that a hostile
 * message costs at most a few MB of decoder memory. */
WireLimits wire_limits_default(void);

/* A decoded map, with what errors need to name it. */
typedef struct WireMap {
    const msgpack_object_map *map;
    const char *msg;             /* the message type (NULL before it is known) */
    char path[2 * WIRE_KEY_CAP]; /* "" at the top, "category_ap." inside that field's map */
} WireMap;

/* A decoded message. */
typedef struct WireMsg {
    msgpack_unpacked up;        /* owns the decoded object tree */
    char type[WIRE_TYPE_CAP];
    WireMap root;
} WireMsg;

void wire_msg_init(WireMsg *m);
/* Decodes data[0, len): a map with a "type" str and "version" == WIRE_VERSION, within lim. On
 * error m holds nothing (free it or decode again) and err says what is wrong. */
int wire_decode(WireMsg *m, const void *data, size_t len, const WireLimits *lim, Err *err);
void wire_msg_free(WireMsg *m); /* idempotent */

/* "message 'TYPE': field 'PATH.KEY' " + the formatted text, into err; returns -1. */
int wire_fail(const WireMap *m, const char *key, Err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Typed fields of a decoded map: a missing field or another type is an error naming it. */
int wire_has(const WireMap *m, const char *key);
int wire_get_str(const WireMap *m, const char *key, const char **s, size_t *len, Err *err);
int wire_get_uint(const WireMap *m, const char *key, uint64_t *v, Err *err);
int wire_get_int(const WireMap *m, const char *key, int64_t *v, Err *err);   /* fits in int64 */
int wire_get_f64(const WireMap *m, const char *key, double *v, Err *err);    /* float32 or 64 */
int wire_get_bin(const WireMap *m, const char *key, const void **p, size_t *len, Err *err);
/* An array of exactly n floats. */
int wire_get_f64_array(const WireMap *m, const char *key, double *v, size_t n, Err *err);
int wire_get_map(const WireMap *m, const char *key, WireMap *sub, Err *err);

/* A tensor field (see the top of this file). */
typedef struct WireTensor {
    StDtype dtype;
    int ndim;
    int64_t shape[WIRE_MAX_DIMS];
    const void *data; /* (prod(shape)) elements: unaligned inline, aligned in shared memory */
    size_t bytes;
} WireTensor;

/* An inline tensor; t->data points into the decoded bytes. */
int wire_get_tensor(const WireMap *m, const char *key, WireTensor *t, Err *err);
/* A shared-memory tensor in seg (open, mapped): its reference is checked against seg, then
 * t->data points into seg's mapping and *slot is the slot it lies in (for the caller to release
 * when done). */
int wire_get_tensor_shm(const WireMap *m, const char *key, const ShmSegment *seg, WireTensor *t,
                        uint32_t *slot, Err *err);

/* ---- encoding ---------------------------------------------------------------------------- */

typedef struct WireWriter {
    msgpack_sbuffer buf;
    msgpack_packer pk;
    uint32_t n_fields, n_put; /* promised and written fields besides type and version */
} WireWriter;

/* Starts a message {type, version, n_fields more}. */
void wire_writer_init(WireWriter *w, const char *type, uint32_t n_fields);
void wire_put_str(WireWriter *w, const char *key, const char *s);
void wire_put_uint(WireWriter *w, const char *key, uint64_t v);
void wire_put_int(WireWriter *w, const char *key, int64_t v);
void wire_put_f64(WireWriter *w, const char *key, double v);
void wire_put_bin(WireWriter *w, const char *key, const void *p, size_t len);
void wire_put_f64_array(WireWriter *w, const char *key, const double *v, size_t n);
/* An inline tensor: t->data holds prod(t->shape) elements of t->dtype (t->bytes is ignored). */
void wire_put_tensor(WireWriter *w, const char *key, const WireTensor *t);
/* A shared-memory tensor: prod(shape) elements of dtype already written at offset in seg's slot.
 * The range must lie inside the slot and offset be a multiple of the dtype size (ASSERTed: the
 * writer chose them). */
void wire_put_tensor_shm(WireWriter *w, const char *key, StDtype dtype, int ndim,
                         const int64_t *shape, const ShmSegment *seg, uint32_t slot, size_t offset);
/* The finished message; aborts unless exactly n_fields were put. Valid until the writer is
 * freed. */
const void *wire_writer_data(const WireWriter *w, size_t *len);
void wire_writer_free(WireWriter *w); /* idempotent */

#endif
