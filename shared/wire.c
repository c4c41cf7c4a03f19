/* wire.c: msgpack messages: a bounded decoder over msgpack-c, typed field getters, and a writer
 * (see wire.h for the message rules).
 *
 * Why a scan before msgpack-c: msgpack_unpack_next allocates an array or map's entries as soon as
 * it reads the header, trusting the count, so 5 bytes announcing 2^32 entries ask its zone for
 * 100 GB. wire_scan walks the raw bytes first, without allocating, and checks every length and
 * count against the limits and against the bytes left (an entry takes at least one byte), and
 * that map keys are str. Once the scan passes, msgpack-c's allocation is bounded by
 * max_objects * sizeof(msgpack_object) and the unpacked tree can be read without further checks
 * on its shape. The scan keeps no recursion: a fixed stack of WIRE_DEPTH_CAP frames. */
#include "shared/wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "shared/check.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "wire.h: tensor data on the wire is little-endian; add byte swapping for this machine"
#endif

/* msgpack-c's unpacker has its own nesting limit (MSGPACK_EMBED_STACK_SIZE, 32); ours must not
 * exceed it, so that every message we accept msgpack-c accepts too. */
enum { WIRE_DEPTH_CAP = 32 };

WireLimits wire_limits_default(void)
{
    return (WireLimits){
        .max_msg_bytes = 16u << 20,
        .max_map_entries = 64,
        .max_array_len = 4096,
        .max_str_bytes = 4096,
        .max_bin_bytes = 16u << 20,
        .max_depth = 8,
        .max_objects = 65536,
    };
}

/* ---- the bounded scan ------------------------------------------------------------------------ */

typedef struct WireScan {
    const uint8_t *p;
    size_t n, pos;
    size_t at; /* where the value being checked starts, for messages */
    const WireLimits *lim;
    uint64_t objects;
    char type[WIRE_TYPE_CAP];  /* the message type once its value has been scanned */
    char field[WIRE_KEY_CAP];  /* the top-level key whose value is being scanned */
    Err *err;
} WireScan;

typedef enum { SCAN_SCALAR, SCAN_STR, SCAN_BIN, SCAN_ARRAY, SCAN_MAP, SCAN_BAD } ScanKind;

/* "message ['TYPE']: [field 'KEY': ]text at byte POS"; returns -1. */
static int scan_fail(const WireScan *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int scan_fail(const WireScan *s, const char *fmt, ...)
{
    char msg[512], type[WIRE_TYPE_CAP + 8] = "", field[WIRE_KEY_CAP + 16] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s->type[0]) snprintf(type, sizeof type, " '%s'", s->type);
    if (s->field[0]) snprintf(field, sizeof field, "field '%s': ", s->field);
    return err_set(s->err, "message%s: %s%s (at byte %zu of %zu)", type, field, msg, s->at, s->n);
}

static uint64_t scan_be(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = v << 8 | p[i];
    return v;
}

static const char *scan_kind_name(ScanKind k)
{
    static const char *names[] = {"a scalar", "a str", "a bin", "an array", "a map", "an ext"};
    return names[k];
}

/* Classifies the header at s->pos: its kind, its header size and its length or count (0 for a
 * scalar, whose payload is counted in *head). Needs only the first byte to be there. */
static ScanKind scan_header(uint8_t b, size_t *head, size_t *lenb)
{
    *lenb = 0;
    *head = 1;
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) return SCAN_SCALAR;
    if (b >= 0x80 && b <= 0x8f) return SCAN_MAP;
    if (b >= 0x90 && b <= 0x9f) return SCAN_ARRAY;
    if (b >= 0xa0 && b <= 0xbf) return SCAN_STR;
    switch (b) {
    case 0xca: case 0xcb: *head = 1 + (b == 0xca ? 4 : 8); return SCAN_SCALAR;
    case 0xcc: case 0xd0: *head = 2; return SCAN_SCALAR;
    case 0xcd: case 0xd1: *head = 3; return SCAN_SCALAR;
    case 0xce: case 0xd2: *head = 5; return SCAN_SCALAR;
    case 0xcf: case 0xd3: *head = 9; return SCAN_SCALAR;
    case 0xc4: case 0xc5: case 0xc6:
        *lenb = (size_t)1 << (b - 0xc4), *head = 1 + *lenb;
        return SCAN_BIN;
    case 0xd9: case 0xda: case 0xdb:
        *lenb = (size_t)1 << (b - 0xd9), *head = 1 + *lenb;
        return SCAN_STR;
    case 0xdc: case 0xdd: *lenb = b == 0xdc ? 2 : 4, *head = 1 + *lenb; return SCAN_ARRAY;
    case 0xde: case 0xdf: *lenb = b == 0xde ? 2 : 4, *head = 1 + *lenb; return SCAN_MAP;
    default: return SCAN_BAD; /* 0xc1 (never used) and the ext family */
    }
}

/* Copies src[0, len) into dst (cap bytes with the NUL), cut to fit, with every byte that is not
 * printable ASCII replaced by '?': outside bytes go into one-line error messages. */
static void copy_printable(char *dst, size_t cap, const char *src, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) dst[i] = src[i] >= 0x20 && src[i] < 0x7f ? src[i] : '?';
    dst[n] = '\0';
}

/* A type is an identifier: 1 to WIRE_TYPE_CAP - 1 bytes of printable ASCII, no space. */
static int type_ok(const char *s, size_t len)
{
    if (len == 0 || len >= WIRE_TYPE_CAP) return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= 0x20 || s[i] >= 0x7f) return 0;
    return 1;
}

/* Checks one str or bin of len bytes at s->pos (after its header) and moves past it. */
static int scan_bytes(WireScan *s, ScanKind kind, uint64_t len, int is_key, int depth)
{
    uint32_t cap = kind == SCAN_STR ? s->lim->max_str_bytes : s->lim->max_bin_bytes;
    if (len > cap)
        return scan_fail(s, "%s of %llu bytes is over the limit of %u", scan_kind_name(kind),
                         (unsigned long long)len, cap);
    if (len > s->n - s->pos)
        return scan_fail(s, "truncated: %s of %llu bytes, %zu left", scan_kind_name(kind),
                         (unsigned long long)len, s->n - s->pos);
    const char *text = (const char *)s->p + s->pos;
    if (depth == 1 && is_key)
        copy_printable(s->field, sizeof s->field, text, len);
    else if (depth == 1 && kind == SCAN_STR && !strcmp(s->field, "type") && type_ok(text, len))
        copy_printable(s->type, sizeof s->type, text, len);
    s->pos += len;
    return 0;
}

/* Walks the one msgpack value that must fill p[0, n), checking it against the limits. */
static int wire_scan(WireScan *s)
{
    struct { uint64_t items, index; int is_map; } stack[WIRE_DEPTH_CAP];
    const WireLimits *lim = s->lim;
    uint32_t max_depth = lim->max_depth < WIRE_DEPTH_CAP ? lim->max_depth : WIRE_DEPTH_CAP;
    int depth = 0;
    if (s->n > lim->max_msg_bytes)
        return scan_fail(s, "%zu bytes is over the limit of %zu", s->n, lim->max_msg_bytes);
    if (s->n == 0) return scan_fail(s, "empty");
    size_t head0, lenb0;
    ScanKind top = scan_header(s->p[0], &head0, &lenb0);
    if (top != SCAN_MAP)
        return scan_fail(s, "the top level is %s, expected a map", scan_kind_name(top));
    for (;;) {
        int is_key = depth > 0 && stack[depth - 1].is_map && stack[depth - 1].index % 2 == 0;
        if (depth == 1 && is_key) s->field[0] = '\0';
        s->at = s->pos;
        if (s->pos >= s->n) return scan_fail(s, "truncated: a value is missing");
        size_t head, lenb;
        ScanKind kind = scan_header(s->p[s->pos], &head, &lenb);
        if (kind == SCAN_BAD)
            return scan_fail(s, "byte 0x%02x is an ext type or unused in msgpack", s->p[s->pos]);
        if (is_key && kind != SCAN_STR)
            return scan_fail(s, "a map key is %s, expected a str", scan_kind_name(kind));
        if (++s->objects > lim->max_objects)
            return scan_fail(s, "more than %u values", lim->max_objects);
        if (head > s->n - s->pos)
            return scan_fail(s, "truncated: a header of %zu bytes, %zu left", head, s->n - s->pos);
        uint8_t b = s->p[s->pos];
        uint64_t len = lenb ? scan_be(s->p + s->pos + 1, (int)lenb)
                            : kind == SCAN_STR ? (uint64_t)(b & 0x1f) : (uint64_t)(b & 0x0f);
        s->pos += head;
        if (kind == SCAN_STR || kind == SCAN_BIN) {
            if (scan_bytes(s, kind, len, is_key, depth)) return -1;
        } else if (kind == SCAN_ARRAY || kind == SCAN_MAP) {
            uint32_t cap = kind == SCAN_MAP ? lim->max_map_entries : lim->max_array_len;
            uint64_t items = kind == SCAN_MAP ? 2 * len : len;
            if (len > cap)
                return scan_fail(s, "%s of %llu entries is over the limit of %u",
                                 scan_kind_name(kind), (unsigned long long)len, cap);
            if (items > s->n - s->pos) /* every entry takes at least one byte */
                return scan_fail(s, "truncated: %s of %llu entries, %zu bytes left",
                                 scan_kind_name(kind), (unsigned long long)len, s->n - s->pos);
            if ((uint32_t)depth + 1 > max_depth)
                return scan_fail(s, "nested deeper than %u", max_depth);
            if (items > 0) {
                stack[depth].items = items, stack[depth].index = 0;
                stack[depth].is_map = kind == SCAN_MAP;
                depth++;
                continue;
            }
        }
        /* A value is complete: count it in its container, and close the containers it fills. */
        while (depth > 0 && ++stack[depth - 1].index == stack[depth - 1].items) depth--;
        if (depth == 0) break;
    }
    s->at = s->pos;
    if (s->pos != s->n) return scan_fail(s, "%zu stray bytes after the message", s->n - s->pos);
    return 0;
}

/* ---- decoded maps ---------------------------------------------------------------------------- */

/* msgpack-c gives an empty str or bin a NULL pointer, which memcmp and memcpy must not see even
 * for 0 bytes; callers get "" instead. */
static const char *obj_bytes(const msgpack_object *o)
{
    const char *p = o->type == MSGPACK_OBJECT_STR ? o->via.str.ptr : o->via.bin.ptr;
    return p ? p : "";
}

static int key_is(const msgpack_object *k, const char *key)
{
    size_t len = strlen(key);
    return k->via.str.size == len && !memcmp(obj_bytes(k), key, len);
}

static const msgpack_object *wire_find(const WireMap *m, const char *key)
{
    for (uint32_t i = 0; i < m->map->size; i++)
        if (key_is(&m->map->ptr[i].key, key)) return &m->map->ptr[i].val;
    return NULL;
}

/* "message 'TYPE'", or "message" while the type is not known yet. */
static const char *msg_label(const WireMap *m, char buf[WIRE_TYPE_CAP + 16])
{
    if (!m->msg) return "message";
    snprintf(buf, WIRE_TYPE_CAP + 16, "message '%s'", m->msg);
    return buf;
}

int wire_fail(const WireMap *m, const char *key, Err *err, const char *fmt, ...)
{
    char msg[512], label[WIRE_TYPE_CAP + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return err_set(err, "%s: field '%s%s' %s", msg_label(m, label), m->path, key, msg);
}

/* Scanned keys are str; a repeated one is refused, since two readers could pick different ones. */
static int wire_check_keys(const WireMap *m, Err *err)
{
    const msgpack_object_kv *kv = m->map->ptr;
    for (uint32_t i = 0; i < m->map->size; i++)
        for (uint32_t j = 0; j < i; j++)
            if (kv[i].key.via.str.size == kv[j].key.via.str.size &&
                !memcmp(obj_bytes(&kv[i].key), obj_bytes(&kv[j].key), kv[i].key.via.str.size)) {
                char key[WIRE_KEY_CAP], label[WIRE_TYPE_CAP + 16];
                copy_printable(key, sizeof key, obj_bytes(&kv[i].key), kv[i].key.via.str.size);
                return err_set(err, "%s: key '%s%s' appears twice", msg_label(m, label), m->path,
                               key);
            }
    return 0;
}

static const char *obj_kind_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a bool";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "a uint";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative int";
    case MSGPACK_OBJECT_FLOAT32: case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a str";
    case MSGPACK_OBJECT_BIN: return "a bin";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    default: return "an ext";
    }
}

/* The field key of type `type`, or an error naming what it is instead. */
static const msgpack_object *wire_field(const WireMap *m, const char *key, msgpack_object_type type,
                                        const char *expected, Err *err)
{
    const msgpack_object *o = wire_find(m, key);
    if (!o) {
        wire_fail(m, key, err, "is missing");
        return NULL;
    }
    if (o->type != type && !(type == MSGPACK_OBJECT_FLOAT64 && o->type == MSGPACK_OBJECT_FLOAT32)) {
        wire_fail(m, key, err, "is %s, expected %s", obj_kind_name(o), expected);
        return NULL;
    }
    return o;
}

int wire_has(const WireMap *m, const char *key) { return wire_find(m, key) != NULL; }

int wire_get_str(const WireMap *m, const char *key, const char **s, size_t *len, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_STR, "a str", err);
    if (!o) return -1;
    *s = obj_bytes(o), *len = o->via.str.size;
    return 0;
}

int wire_get_uint(const WireMap *m, const char *key, uint64_t *v, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_POSITIVE_INTEGER, "a uint", err);
    if (!o) return -1;
    *v = o->via.u64;
    return 0;
}

int wire_get_int(const WireMap *m, const char *key, int64_t *v, Err *err)
{
    const msgpack_object *o = wire_find(m, key);
    if (o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return 0;
    }
    if (!(o = wire_field(m, key, MSGPACK_OBJECT_POSITIVE_INTEGER, "an int", err))) return -1;
    if (o->via.u64 > INT64_MAX)
        return wire_fail(m, key, err, "is %llu, which does not fit in int64",
                         (unsigned long long)o->via.u64);
    *v = (int64_t)o->via.u64;
    return 0;
}

int wire_get_f64(const WireMap *m, const char *key, double *v, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_FLOAT64, "a float", err);
    if (!o) return -1;
    *v = o->via.f64; /* msgpack-c widens float32 to double */
    return 0;
}

int wire_get_bin(const WireMap *m, const char *key, const void **p, size_t *len, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_BIN, "a bin", err);
    if (!o) return -1;
    *p = obj_bytes(o), *len = o->via.bin.size;
    return 0;
}

int wire_get_f64_array(const WireMap *m, const char *key, double *v, size_t n, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_ARRAY, "an array", err);
    if (!o) return -1;
    if (o->via.array.size != n)
        return wire_fail(m, key, err, "has %u values, expected %zu", o->via.array.size, n);
    for (size_t i = 0; i < n; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_FLOAT64 && e->type != MSGPACK_OBJECT_FLOAT32)
            return wire_fail(m, key, err, "value %zu is %s, expected a float", i, obj_kind_name(e));
        v[i] = e->via.f64;
    }
    return 0;
}

int wire_get_map(const WireMap *m, const char *key, WireMap *sub, Err *err)
{
    const msgpack_object *o = wire_field(m, key, MSGPACK_OBJECT_MAP, "a map", err);
    if (!o) return -1;
    sub->map = &o->via.map;
    sub->msg = m->msg;
    snprintf(sub->path, sizeof sub->path, "%s%s.", m->path, key);
    return wire_check_keys(sub, err);
}

/* dtype name -> StDtype, over safetensors' table. */
static int wire_dtype_parse(const char *s, size_t len, StDtype *dt)
{
    for (int d = ST_F64; d <= ST_BOOL; d++) {
        const char *name = st_dtype_name((StDtype)d);
        if (strlen(name) == len && !memcmp(name, s, len)) return *dt = (StDtype)d, 0;
    }
    return -1;
}

/* The shape array: at most WIRE_MAX_DIMS uints; *count is their product (checked). */
static int wire_get_shape(const WireMap *t, WireTensor *out, uint64_t *count, Err *err)
{
    const msgpack_object *o = wire_field(t, "shape", MSGPACK_OBJECT_ARRAY, "an array", err);
    if (!o) return -1;
    if (o->via.array.size > WIRE_MAX_DIMS)
        return wire_fail(t, "shape", err, "has %u dimensions, at most %d", o->via.array.size,
                         WIRE_MAX_DIMS);
    *count = 1;
    out->ndim = (int)o->via.array.size;
    for (int i = 0; i < out->ndim; i++) {
        const msgpack_object *e = &o->via.array.ptr[i];
        if (e->type != MSGPACK_OBJECT_POSITIVE_INTEGER || e->via.u64 > INT64_MAX)
            return wire_fail(t, "shape", err, "dimension %d is %s, expected a uint", i,
                             obj_kind_name(e));
        out->shape[i] = (int64_t)e->via.u64;
        if (__builtin_mul_overflow(*count, e->via.u64, count))
            return wire_fail(t, "shape", err, "overflows 64 bits");
    }
    return 0;
}

/* What both forms share: the tensor's map into *t, its dtype and shape; *count is prod(shape).
 * A tensor in the other form than the protocol gives this field is refused here. */
static int wire_tensor_head(const WireMap *m, const char *key, int in_shm, WireMap *t,
                            WireTensor *out, uint64_t *count, Err *err)
{
    const char *dtype;
    size_t dlen;
    memset(out, 0, sizeof *out);
    if (wire_get_map(m, key, t, err)) return -1;
    if (!in_shm && wire_has(t, "shm"))
        return wire_fail(m, key, err, "is a shared-memory tensor; this message must carry it "
                                      "inline");
    if (in_shm && wire_has(t, "data"))
        return wire_fail(m, key, err, "is an inline tensor; this message must carry it in shared "
                                      "memory");
    if (wire_get_str(t, "dtype", &dtype, &dlen, err) || wire_get_shape(t, out, count, err))
        return -1;
    if (wire_dtype_parse(dtype, dlen, &out->dtype)) {
        char text[16];
        copy_printable(text, sizeof text, dtype, dlen);
        return wire_fail(t, "dtype", err, "is '%s', not a dtype", text);
    }
    return 0;
}

int wire_get_tensor(const WireMap *m, const char *key, WireTensor *out, Err *err)
{
    WireMap t;
    uint64_t count = 0, want;
    if (wire_tensor_head(m, key, 0, &t, out, &count, err) ||
        wire_get_bin(&t, "data", &out->data, &out->bytes, err))
        return -1;
    if (__builtin_mul_overflow(count, (uint64_t)st_dtype_size(out->dtype), &want) ||
        want != out->bytes)
        return wire_fail(&t, "data", err, "is %zu bytes, expected %llu elements of %s",
                         out->bytes, (unsigned long long)count, st_dtype_name(out->dtype));
    return 0;
}

/* The reference's segment must be seg: a message names a segment but never chooses which one a
 * process reads (nor makes it open one). */
static int wire_check_segment(const WireMap *ref, const ShmSegment *seg, Err *err)
{
    const char *name;
    size_t len;
    if (wire_get_str(ref, "segment", &name, &len, err)) return -1;
    if (len != strlen(seg->name) || memcmp(name, seg->name, len)) {
        char text[SHM_NAME_CAP];
        copy_printable(text, sizeof text, name, len);
        return wire_fail(ref, "segment", err, "is '%s%s', this process reads '%s'", text,
                         len >= sizeof text ? "..." : "", seg->name);
    }
    return 0;
}

int wire_get_tensor_shm(const WireMap *m, const char *key, const ShmSegment *seg, WireTensor *out,
                        uint32_t *slot, Err *err)
{
    WireMap t, ref;
    uint64_t count = 0, want, i, offset, bytes;
    ASSERT(seg->base); /* an open segment */
    if (wire_tensor_head(m, key, 1, &t, out, &count, err) || wire_get_map(&t, "shm", &ref, err) ||
        wire_check_segment(&ref, seg, err) || wire_get_uint(&ref, "slot", &i, err) ||
        wire_get_uint(&ref, "offset", &offset, err) || wire_get_uint(&ref, "bytes", &bytes, err))
        return -1;
    size_t size = st_dtype_size(out->dtype);
    if (i >= seg->n_slots)
        return wire_fail(&ref, "slot", err, "is %llu, the segment has %u slots",
                         (unsigned long long)i, seg->n_slots);
    if (offset % size != 0) /* the slot is page-aligned, so this aligns the data for its dtype */
        return wire_fail(&ref, "offset", err, "is %llu, not a multiple of %zu (the size of %s)",
                         (unsigned long long)offset, size, st_dtype_name(out->dtype));
    if (__builtin_mul_overflow(count, (uint64_t)size, &want) || want != bytes)
        return wire_fail(&ref, "bytes", err, "is %llu, expected %llu elements of %s",
                         (unsigned long long)bytes, (unsigned long long)count,
                         st_dtype_name(out->dtype));
    if (!shm_range_ok(seg, (uint32_t)i, offset, bytes))
        return wire_fail(&t, "shm", err, "has %llu bytes at offset %llu, past the end of its "
                                         "%zu-byte slot", (unsigned long long)bytes,
                         (unsigned long long)offset, seg->slot_bytes);
    out->data = shm_slot(seg, (uint32_t)i) + offset;
    out->bytes = (size_t)bytes;
    *slot = (uint32_t)i;
    return 0;
}

/* ---- messages -------------------------------------------------------------------------------- */

void wire_msg_init(WireMsg *m)
{
    memset(m, 0, sizeof *m);
    msgpack_unpacked_init(&m->up);
}

void wire_msg_free(WireMsg *m)
{
    msgpack_unpacked_destroy(&m->up); /* frees the zone and clears it: safe twice */
    memset(&m->root, 0, sizeof m->root);
    m->type[0] = '\0';
}

int wire_decode(WireMsg *m, const void *data, size_t len, const WireLimits *lim, Err *err)
{
    WireScan s = {.p = data, .n = len, .lim = lim, .err = err};
    size_t off = 0;
    wire_msg_free(m);
    if (wire_scan(&s)) return -1;
    msgpack_unpack_return rc = msgpack_unpack_next(&m->up, data, len, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len || m->up.data.type != MSGPACK_OBJECT_MAP) {
        wire_msg_free(m);
        return err_set(err, "message: msgpack-c refused what the scan accepted (code %d, %zu of "
                            "%zu bytes)", (int)rc, off, len);
    }
    m->root.map = &m->up.data.via.map;
    m->root.msg = NULL; /* named once "type" is read */
    const char *type;
    size_t tlen;
    uint64_t version;
    if (wire_check_keys(&m->root, err) || wire_get_str(&m->root, "type", &type, &tlen, err))
        goto fail;
    if (!type_ok(type, tlen)) {
        wire_fail(&m->root, "type", err, "must be 1 to %d printable ASCII bytes, no space",
                  WIRE_TYPE_CAP - 1);
        goto fail;
    }
    memcpy(m->type, type, tlen);
    m->type[tlen] = '\0';
    m->root.msg = m->type;
    if (wire_get_uint(&m->root, "version", &version, err)) goto fail;
    if (version != WIRE_VERSION) {
        wire_fail(&m->root, "version", err, "is %llu, this program speaks %d",
                  (unsigned long long)version, WIRE_VERSION);
        goto fail;
    }
    return 0;
fail:
    wire_msg_free(m);
    return -1;
}

/* ---- encoding -------------------------------------------------------------------------------- */

/* msgpack-c's packer fails only when its buffer cannot grow: out of memory, which aborts here as
 * every allocation failure does in effdet. */
static void pack_ok(int rc) { ASSERT(rc == 0); }

static void pack_str(WireWriter *w, const char *s)
{
    size_t len = strlen(s);
    pack_ok(msgpack_pack_str(&w->pk, len));
    pack_ok(msgpack_pack_str_body(&w->pk, s, len));
}

/* Counts one field and packs its key. */
static void put_key(WireWriter *w, const char *key)
{
    ASSERT(w->n_put < w->n_fields);
    w->n_put++;
    pack_str(w, key);
}

void wire_writer_init(WireWriter *w, const char *type, uint32_t n_fields)
{
    ASSERT(strlen(type) > 0 && strlen(type) < WIRE_TYPE_CAP);
    msgpack_sbuffer_init(&w->buf);
    msgpack_packer_init(&w->pk, &w->buf, msgpack_sbuffer_write);
    w->n_fields = n_fields, w->n_put = 0;
    pack_ok(msgpack_pack_map(&w->pk, (size_t)n_fields + 2));
    pack_str(w, "type");
    pack_str(w, type);
    pack_str(w, "version");
    pack_ok(msgpack_pack_uint64(&w->pk, WIRE_VERSION));
}

void wire_put_str(WireWriter *w, const char *key, const char *s)
{
    put_key(w, key);
    pack_str(w, s);
}

void wire_put_uint(WireWriter *w, const char *key, uint64_t v)
{
    put_key(w, key);
    pack_ok(msgpack_pack_uint64(&w->pk, v));
}

void wire_put_int(WireWriter *w, const char *key, int64_t v)
{
    put_key(w, key);
    pack_ok(msgpack_pack_int64(&w->pk, v));
}

void wire_put_f64(WireWriter *w, const char *key, double v)
{
    put_key(w, key);
    pack_ok(msgpack_pack_double(&w->pk, v));
}

void wire_put_bin(WireWriter *w, const char *key, const void *p, size_t len)
{
    put_key(w, key);
    pack_ok(msgpack_pack_bin(&w->pk, len));
    pack_ok(msgpack_pack_bin_body(&w->pk, p, len));
}

void wire_put_f64_array(WireWriter *w, const char *key, const double *v, size_t n)
{
    put_key(w, key);
    pack_ok(msgpack_pack_array(&w->pk, n));
    for (size_t i = 0; i < n; i++) pack_ok(msgpack_pack_double(&w->pk, v[i]));
}

/* A tensor map's first entries, {n_entries: "dtype", "shape", ...}; returns prod(shape). */
static uint64_t pack_tensor_head(WireWriter *w, size_t n_entries, StDtype dtype, int ndim,
                                 const int64_t *shape)
{
    uint64_t count = 1;
    ASSERT(ndim >= 0 && ndim <= WIRE_MAX_DIMS);
    pack_ok(msgpack_pack_map(&w->pk, n_entries));
    pack_str(w, "dtype");
    pack_str(w, st_dtype_name(dtype));
    pack_str(w, "shape");
    pack_ok(msgpack_pack_array(&w->pk, (size_t)ndim));
    for (int i = 0; i < ndim; i++) {
        ASSERT(shape[i] >= 0);
        pack_ok(msgpack_pack_uint64(&w->pk, (uint64_t)shape[i]));
        int over = __builtin_mul_overflow(count, (uint64_t)shape[i], &count);
        ASSERT(!over);
    }
    return count;
}

void wire_put_tensor(WireWriter *w, const char *key, const WireTensor *t)
{
    put_key(w, key);
    uint64_t count = pack_tensor_head(w, 3, t->dtype, t->ndim, t->shape);
    pack_str(w, "data");
    size_t bytes = (size_t)count * st_dtype_size(t->dtype);
    pack_ok(msgpack_pack_bin(&w->pk, bytes));
    pack_ok(msgpack_pack_bin_body(&w->pk, t->data, bytes));
}

void wire_put_tensor_shm(WireWriter *w, const char *key, StDtype dtype, int ndim,
                         const int64_t *shape, const ShmSegment *seg, uint32_t slot, size_t offset)
{
    uint64_t bytes, size = st_dtype_size(dtype);
    put_key(w, key);
    uint64_t count = pack_tensor_head(w, 3, dtype, ndim, shape);
    int over = __builtin_mul_overflow(count, size, &bytes);
    /* What the reader would refuse is the writer's bug: catch it here, where it is made. */
    ASSERT(!over && offset % size == 0 && shm_range_ok(seg, slot, offset, bytes));
    pack_str(w, "shm");
    pack_ok(msgpack_pack_map(&w->pk, 4));
    pack_str(w, "segment");
    pack_str(w, seg->name);
    pack_str(w, "slot");
    pack_ok(msgpack_pack_uint64(&w->pk, slot));
    pack_str(w, "offset");
    pack_ok(msgpack_pack_uint64(&w->pk, offset));
    pack_str(w, "bytes");
    pack_ok(msgpack_pack_uint64(&w->pk, bytes));
}

const void *wire_writer_data(const WireWriter *w, size_t *len)
{
    ASSERT(w->n_put == w->n_fields);
    *len = w->buf.size;
    return w->buf.data;
}

void wire_writer_free(WireWriter *w)
{
    msgpack_sbuffer_destroy(&w->buf);
    memset(w, 0, sizeof *w);
}
