/* test_wire.c: shared/wire.c, the msgpack message codec. Round trips of every field kind and of
 * tensors; then every bound of the decoder (message size, str, bin, map, array, depth, value
 * count), wrong and missing fields, truncated and mutated buffers, a non-map top level, ext types,
 * non-str and repeated keys, bad versions and bad tensors: each must be an Err of one line naming
 * what is wrong, never a crash (run under `make SAN=1 test` for the "never" part). Shared-memory
 * tensors against a real segment (shared/shm.c): a round trip through a reader's own mapping and
 * every reference that must be refused. Also the transport under the messages:
 * shared/zmq_util.c's sockets and run directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/wire.h"
#include "shared/zmq_util.h"

/* Raw msgpack, for messages our writer would never produce. */
typedef struct Raw {
    msgpack_sbuffer buf;
    msgpack_packer pk;
} Raw;

static void raw_init(Raw *r)
{
    msgpack_sbuffer_init(&r->buf);
    msgpack_packer_init(&r->pk, &r->buf, msgpack_sbuffer_write);
}

static void raw_str(Raw *r, const char *s)
{
    assert_int_equal(msgpack_pack_str_with_body(&r->pk, s, strlen(s)), 0);
}

/* A map header of n + 2 entries and the type/version pair. */
static void raw_header(Raw *r, size_t n, const char *type, uint64_t version)
{
    assert_int_equal(msgpack_pack_map(&r->pk, n + 2), 0);
    raw_str(r, "type");
    raw_str(r, type);
    raw_str(r, "version");
    assert_int_equal(msgpack_pack_uint64(&r->pk, version), 0);
}

/* Starts a message {type, version, key: <the value the caller packs next>}. */
static void raw_one_field(Raw *r, const char *type, const char *key)
{
    raw_init(r);
    raw_header(r, 1, type, 1);
    raw_str(r, key);
}

/* Decoding must fail with a one-line message containing want. */
static void expect_decode_error(const void *data, size_t len, const WireLimits *lim,
                                const char *want)
{
    WireMsg m;
    Err err = {{0}};
    wire_msg_init(&m);
    if (wire_decode(&m, data, len, lim, &err) == 0) fail_msg("decoded, wanted error '%s'", want);
    if (!strstr(err.msg, want) || strchr(err.msg, '\n'))
        fail_msg("error '%s', wanted '%s'", err.msg, want);
    wire_msg_free(&m);
}

static void expect_raw_error(Raw *r, const WireLimits *lim, const char *want)
{
    expect_decode_error(r->buf.data, r->buf.size, lim, want);
    msgpack_sbuffer_destroy(&r->buf);
}

static void decode_ok(WireMsg *m, const void *data, size_t len)
{
    WireLimits lim = wire_limits_default();
    Err err = {{0}};
    wire_msg_init(m);
    if (wire_decode(m, data, len, &lim, &err)) fail_msg("%s", err.msg);
}

/* A getter's error must contain want. */
#define EXPECT_GET_ERROR(call, want)                                                             \
    do {                                                                                         \
        Err err_ = {{0}};                                                                        \
        Err *err = &err_;                                                                        \
        if ((call) == 0) fail_msg("%s succeeded, wanted '%s'", #call, want);                    \
        if (!strstr(err_.msg, want)) fail_msg("error '%s', wanted '%s'", err_.msg, want);       \
    } while (0)

static void test_round_trip(void **state)
{
    const double stats[3] = {0.25, -1, 1e-300};
    const int64_t ids[4] = {1, -2, INT64_MAX, INT64_MIN};
    const double grid[2][3] = {{1, 2, 3}, {4.5, NAN, -INFINITY}};
    const uint8_t blob[5] = {0, 1, 2, 0xff, 0x80};
    WireTensor t_ids = {.dtype = ST_I64, .ndim = 1, .shape = {4}, .data = ids};
    WireTensor t_grid = {.dtype = ST_F64, .ndim = 2, .shape = {2, 3}, .data = grid};
    WireTensor t_empty = {.dtype = ST_F32, .ndim = 2, .shape = {0, 7}, .data = NULL};
    WireWriter w;
    wire_writer_init(&w, "detections", 11);
    wire_put_str(&w, "name", "héllo");
    wire_put_uint(&w, "epoch", UINT64_MAX);
    wire_put_int(&w, "neg", -42);
    wire_put_int(&w, "pos", 7);
    wire_put_f64(&w, "score", 0.1);
    wire_put_bin(&w, "blob", blob, sizeof blob);
    wire_put_bin(&w, "empty", NULL, 0);
    wire_put_f64_array(&w, "stats", stats, 3);
    wire_put_tensor(&w, "ids", &t_ids);
    wire_put_tensor(&w, "grid", &t_grid);
    wire_put_tensor(&w, "none", &t_empty);
    size_t len;
    const void *data = wire_writer_data(&w, &len);
    WireMsg m;
    decode_ok(&m, data, len);
    Err err = {{0}};
    const char *s;
    size_t n;
    uint64_t u;
    int64_t i;
    double d, got_stats[3];
    const void *p;
    assert_string_equal(m.type, "detections");
    assert_int_equal(wire_get_str(&m.root, "name", &s, &n, &err), 0);
    assert_int_equal(n, strlen("héllo"));
    assert_memory_equal(s, "héllo", n);
    assert_int_equal(wire_get_uint(&m.root, "epoch", &u, &err), 0);
    assert_true(u == UINT64_MAX);
    assert_int_equal(wire_get_int(&m.root, "neg", &i, &err), 0);
    assert_int_equal(i, -42);
    assert_int_equal(wire_get_int(&m.root, "pos", &i, &err), 0);
    assert_int_equal(i, 7);
    assert_int_equal(wire_get_f64(&m.root, "score", &d, &err), 0);
    assert_true(d == 0.1);
    assert_int_equal(wire_get_bin(&m.root, "blob", &p, &n, &err), 0);
    assert_int_equal(n, sizeof blob);
    assert_memory_equal(p, blob, n);
    assert_int_equal(wire_get_bin(&m.root, "empty", &p, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(wire_get_f64_array(&m.root, "stats", got_stats, 3, &err), 0);
    assert_memory_equal(got_stats, stats, sizeof stats);
    WireTensor t;
    assert_int_equal(wire_get_tensor(&m.root, "ids", &t, &err), 0);
    assert_int_equal(t.dtype, ST_I64);
    assert_int_equal(t.ndim, 1);
    assert_int_equal(t.shape[0], 4);
    assert_int_equal(t.bytes, sizeof ids);
    assert_memory_equal(t.data, ids, sizeof ids);
    assert_int_equal(wire_get_tensor(&m.root, "grid", &t, &err), 0);
    assert_int_equal(t.dtype, ST_F64);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[1], 3);
    assert_memory_equal(t.data, grid, sizeof grid); /* NaN and -inf bit for bit */
    assert_int_equal(wire_get_tensor(&m.root, "none", &t, &err), 0);
    assert_int_equal(t.bytes, 0);
    assert_int_equal(t.shape[1], 7);
    assert_true(wire_has(&m.root, "grid"));
    assert_false(wire_has(&m.root, "nope"));
    /* decoding again into the same WireMsg frees the first tree */
    Err e2;
    WireLimits lim = wire_limits_default();
    assert_int_equal(wire_decode(&m, data, len, &lim, &e2), 0);
    wire_msg_free(&m);
    wire_msg_free(&m); /* idempotent */
    wire_writer_free(&w);
    wire_writer_free(&w);
}

static void test_wrong_and_missing_fields(void **state)
{
    Raw r;
    raw_init(&r);
    raw_header(&r, 6, "metrics", 1);
    raw_str(&r, "epoch");
    raw_str(&r, "three");
    raw_str(&r, "big");
    assert_int_equal(msgpack_pack_uint64(&r.pk, (uint64_t)INT64_MAX + 1), 0);
    raw_str(&r, "f32");
    assert_int_equal(msgpack_pack_float(&r.pk, 0.5f), 0);
    raw_str(&r, "stats");
    assert_int_equal(msgpack_pack_array(&r.pk, 2), 0);
    assert_int_equal(msgpack_pack_double(&r.pk, 1), 0);
    raw_str(&r, "x");
    raw_str(&r, "neg");
    assert_int_equal(msgpack_pack_int64(&r.pk, -5), 0);
    raw_str(&r, "nil");
    assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    WireMsg m;
    decode_ok(&m, r.buf.data, r.buf.size);
    uint64_t u;
    int64_t i;
    double d, v[2];
    const void *p;
    size_t n;
    const char *s;
    WireMap sub;
    EXPECT_GET_ERROR(wire_get_uint(&m.root, "epoch", &u, err),
                     "message 'metrics': field 'epoch' is a str, expected a uint");
    EXPECT_GET_ERROR(wire_get_uint(&m.root, "missing", &u, err), "field 'missing' is missing");
    EXPECT_GET_ERROR(wire_get_uint(&m.root, "neg", &u, err), "is a negative int, expected a uint");
    EXPECT_GET_ERROR(wire_get_int(&m.root, "big", &i, err), "does not fit in int64");
    EXPECT_GET_ERROR(wire_get_int(&m.root, "f32", &i, err), "is a float, expected an int");
    EXPECT_GET_ERROR(wire_get_f64(&m.root, "neg", &d, err), "is a negative int, expected a float");
    EXPECT_GET_ERROR(wire_get_bin(&m.root, "epoch", &p, &n, err), "is a str, expected a bin");
    EXPECT_GET_ERROR(wire_get_str(&m.root, "nil", &s, &n, err), "is nil, expected a str");
    EXPECT_GET_ERROR(wire_get_map(&m.root, "stats", &sub, err), "is an array, expected a map");
    EXPECT_GET_ERROR(wire_get_f64_array(&m.root, "stats", v, 3, err), "has 2 values, expected 3");
    EXPECT_GET_ERROR(wire_get_f64_array(&m.root, "stats", v, 2, err),
                     "value 1 is a str, expected a float");
    Err err = {{0}};
    assert_int_equal(wire_get_f64(&m.root, "f32", &d, &err), 0); /* float32 widens exactly */
    assert_true(d == 0.5);
    assert_int_equal(wire_get_int(&m.root, "neg", &i, &err), 0);
    assert_int_equal(i, -5);
    wire_msg_free(&m);
    msgpack_sbuffer_destroy(&r.buf);
}

static void test_bounds(void **state)
{
    WireLimits lim = wire_limits_default();
    Raw r;
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* a str over max_str_bytes, named by its field */
    raw_one_field(&r, "detections", "what");
    raw_str(&r, big);
    expect_raw_error(&r, &lim, "message 'detections': field 'what': a str of 4999 bytes is over "
                               "the limit of 4096");
    /* a bin over max_bin_bytes */
    WireLimits small = lim;
    small.max_bin_bytes = 100;
    raw_one_field(&r, "detections", "dets");
    assert_int_equal(msgpack_pack_bin_with_body(&r.pk, big, 101), 0);
    expect_raw_error(&r, &small, "field 'dets': a bin of 101 bytes is over the limit of 100");
    /* the whole message over max_msg_bytes */
    small = lim;
    small.max_msg_bytes = 64;
    raw_one_field(&r, "detections", "dets");
    assert_int_equal(msgpack_pack_bin_with_body(&r.pk, big, 64), 0);
    expect_raw_error(&r, &small, "bytes is over the limit of 64");
    /* too many map entries, too long an array */
    raw_init(&r);
    raw_header(&r, 63, "x", 1);
    for (int k = 0; k < 63; k++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", k);
        raw_str(&r, key);
        assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    }
    expect_raw_error(&r, &lim, "a map of 65 entries is over the limit of 64");
    raw_one_field(&r, "x", "list");
    assert_int_equal(msgpack_pack_array(&r.pk, 4097), 0);
    for (int k = 0; k < 4097; k++) assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    expect_raw_error(&r, &lim, "field 'list': an array of 4097 entries is over the limit of 4096");
    /* more values than max_objects, each array within its own limit */
    small = lim;
    small.max_objects = 100;
    raw_one_field(&r, "x", "list");
    assert_int_equal(msgpack_pack_array(&r.pk, 200), 0);
    for (int k = 0; k < 200; k++) assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    expect_raw_error(&r, &small, "more than 100 values");
    /* nesting deeper than max_depth */
    raw_one_field(&r, "x", "deep");
    for (int k = 0; k < 8; k++) assert_int_equal(msgpack_pack_array(&r.pk, 1), 0);
    assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    expect_raw_error(&r, &lim, "nested deeper than 8");
    /* counts that the bytes cannot hold: never an allocation of that size */
    const uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    expect_decode_error(huge_map, sizeof huge_map, &lim, "over the limit of 64");
    small = lim;
    small.max_map_entries = UINT32_MAX, small.max_array_len = UINT32_MAX;
    small.max_objects = UINT32_MAX;
    expect_decode_error(huge_map, sizeof huge_map, &small,
                        "truncated: a map of 4294967295 entries");
    const uint8_t huge_array[] = {0x81, 0xa1, 'a', 0xdd, 0xff, 0xff, 0xff, 0xff};
    expect_decode_error(huge_array, sizeof huge_array, &small,
                        "field 'a': truncated: an array of 4294967295 entries, 0 bytes left");
    const uint8_t huge_str[] = {0x81, 0xa1, 'a', 0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'};
    small.max_str_bytes = UINT32_MAX;
    expect_decode_error(huge_str, sizeof huge_str, &small, "truncated: a str of 2147483647 bytes");
}

static void test_shapes(void **state)
{
    WireLimits lim = wire_limits_default();
    Raw r;
    const uint8_t top_array[] = {0x91, 0x01};
    const uint8_t top_int[] = {0x05};
    const uint8_t top_str[] = {0xa1, 'x'};
    const uint8_t ext[] = {0x81, 0xa1, 'a', 0xd4, 0x01, 0x00};
    const uint8_t never_used[] = {0x81, 0xa1, 'a', 0xc1};
    const uint8_t int_key[] = {0x81, 0x01, 0x02};
    expect_decode_error(top_array, sizeof top_array, &lim,
                        "the top level is an array, expected a map");
    expect_decode_error(top_int, sizeof top_int, &lim, "the top level is a scalar, expected a map");
    expect_decode_error(top_str, sizeof top_str, &lim, "the top level is a str, expected a map");
    expect_decode_error(top_str, 0, &lim, "empty");
    expect_decode_error(ext, sizeof ext, &lim, "byte 0xd4 is an ext type");
    expect_decode_error(never_used, sizeof never_used, &lim, "byte 0xc1");
    expect_decode_error(int_key, sizeof int_key, &lim, "a map key is a scalar, expected a str");
    /* stray bytes after the map */
    raw_init(&r);
    raw_header(&r, 0, "x", 1);
    assert_int_equal(msgpack_pack_nil(&r.pk), 0);
    expect_raw_error(&r, &lim, "1 stray bytes after the message");
    /* type and version */
    raw_init(&r);
    raw_header(&r, 0, "x", 2);
    expect_raw_error(&r, &lim, "message 'x': field 'version' is 2, this program speaks 1");
    raw_init(&r);
    raw_header(&r, 0, "a-type-name-that-is-far-too-long-for-us", 1);
    expect_raw_error(&r, &lim, "field 'type' must be 1 to 31 printable ASCII bytes");
    raw_init(&r);
    raw_header(&r, 0, "two\nlines", 1);
    expect_raw_error(&r, &lim, "message: field 'type' must be 1 to 31 printable ASCII bytes");
    /* outside bytes in an error message are made printable, so it stays one line */
    raw_one_field(&r, "x", "a\nb\x80");
    assert_int_equal(msgpack_pack_array(&r.pk, 5000), 0);
    expect_raw_error(&r, &lim, "message 'x': field 'a?b?': an array of 5000 entries");
    raw_init(&r);
    assert_int_equal(msgpack_pack_map(&r.pk, 1), 0);
    raw_str(&r, "version");
    assert_int_equal(msgpack_pack_uint64(&r.pk, 1), 0);
    expect_raw_error(&r, &lim, "field 'type' is missing");
    raw_one_field(&r, "x", "type");
    raw_str(&r, "y");
    expect_raw_error(&r, &lim, "key 'type' appears twice");
    /* empty keys (msgpack-c gives them a NULL pointer: found by fuzz_wire) */
    raw_init(&r);
    raw_header(&r, 2, "x", 1);
    raw_str(&r, ""), raw_str(&r, "");
    raw_str(&r, ""), raw_str(&r, "");
    expect_raw_error(&r, &lim, "message: key '' appears twice");
    raw_init(&r);
    raw_header(&r, 1, "x", 1);
    raw_str(&r, ""), raw_str(&r, "");
    WireMsg m;
    decode_ok(&m, r.buf.data, r.buf.size);
    const char *s;
    size_t n;
    Err err = {{0}};
    assert_int_equal(wire_get_str(&m.root, "", &s, &n, &err), 0);
    assert_non_null(s);
    assert_int_equal(n, 0);
    wire_msg_free(&m);
    msgpack_sbuffer_destroy(&r.buf);
}

/* Field key: a tensor map of n_entries whose first two are dtype and a shape of ndim uints
 * (all `dim`); the caller packs the remaining n_entries - 2. */
static void raw_tensor_head(Raw *r, const char *key, size_t n_entries, const char *dtype,
                            size_t ndim, uint64_t dim)
{
    raw_str(r, key);
    assert_int_equal(msgpack_pack_map(&r->pk, n_entries), 0);
    raw_str(r, "dtype"), raw_str(r, dtype);
    raw_str(r, "shape");
    assert_int_equal(msgpack_pack_array(&r->pk, ndim), 0);
    for (size_t k = 0; k < ndim; k++) assert_int_equal(msgpack_pack_uint64(&r->pk, dim), 0);
}

static void test_tensor_errors(void **state)
{
    Raw r;
    raw_init(&r);
    raw_header(&r, 6, "t", 1);
    /* 3 elements of F64 need 24 bytes, 16 given */
    raw_tensor_head(&r, "short", 3, "F64", 1, 3);
    raw_str(&r, "data");
    assert_int_equal(msgpack_pack_bin_with_body(&r.pk, "0123456789abcdef", 16), 0);
    /* an unknown dtype */
    raw_tensor_head(&r, "dtype", 3, "F128", 0, 0);
    raw_str(&r, "data");
    assert_int_equal(msgpack_pack_bin_with_body(&r.pk, "", 0), 0);
    /* a shared-memory tensor where the protocol wants one inline */
    raw_tensor_head(&r, "shm", 3, "U8", 0, 0);
    raw_str(&r, "shm");
    assert_int_equal(msgpack_pack_map(&r.pk, 0), 0);
    /* a negative dimension */
    raw_str(&r, "negdim");
    assert_int_equal(msgpack_pack_map(&r.pk, 2), 0);
    raw_str(&r, "dtype"), raw_str(&r, "U8");
    raw_str(&r, "shape");
    assert_int_equal(msgpack_pack_array(&r.pk, 1), 0);
    assert_int_equal(msgpack_pack_int64(&r.pk, -1), 0);
    /* 9 dimensions; a shape whose product overflows */
    raw_tensor_head(&r, "ninedims", 2, "U8", 9, 1);
    raw_tensor_head(&r, "overflow", 2, "U8", 3, 1ull << 62);
    WireMsg m;
    decode_ok(&m, r.buf.data, r.buf.size);
    WireTensor t;
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "short", &t, err),
                     "message 't': field 'short.data' is 16 bytes, expected 3 elements of F64");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "dtype", &t, err), "field 'dtype.dtype' is 'F128'");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "shm", &t, err),
                     "message 't': field 'shm' is a shared-memory tensor; this message must carry "
                     "it inline");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "negdim", &t, err),
                     "field 'negdim.shape' dimension 0 is a negative int, expected a uint");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "ninedims", &t, err), "has 9 dimensions, at most 8");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "overflow", &t, err), "overflows 64 bits");
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "nope", &t, err), "field 'nope' is missing");
    wire_msg_free(&m);
    msgpack_sbuffer_destroy(&r.buf);
}

/* A producer writes a tensor into its segment and sends a reference; a reader that opened the
 * segment read-only gets a pointer into its own mapping, aligned, with the producer's bytes. */
static void test_tensor_shm_round_trip(void **state)
{
    ShmSegment prod, cons;
    Err e = {{0}};
    if (shm_segment_create(&prod, "test_wire", 2, 4096, &e)) fail_msg("%s", e.msg);
    float *px = (float *)(shm_slot(&prod, 1) + 64); /* (2, 3) */
    for (int i = 0; i < 6; i++) px[i] = 0.5f * (float)i - 1;
    const int64_t shape[2] = {2, 3}, whole[1] = {4096};
    WireWriter w;
    wire_writer_init(&w, "sample", 4);
    wire_put_uint(&w, "epoch", 1);
    wire_put_tensor_shm(&w, "image", ST_F32, 2, shape, &prod, 1, 64);
    wire_put_tensor_shm(&w, "whole", ST_U8, 1, whole, &prod, 0, 0);    /* the whole slot */
    wire_put_tensor_shm(&w, "scalar", ST_F64, 0, NULL, &prod, 0, 4088); /* ends at its end */
    size_t len;
    const void *data = wire_writer_data(&w, &len);
    WireMsg m;
    decode_ok(&m, data, len);
    if (shm_segment_open(&cons, prod.name, 2, 4096, 0, &e)) fail_msg("%s", e.msg);
    WireTensor t;
    uint32_t slot = 99;
    if (wire_get_tensor_shm(&m.root, "image", &cons, &t, &slot, &e)) fail_msg("%s", e.msg);
    assert_int_equal(t.dtype, ST_F32);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 2);
    assert_int_equal(t.shape[1], 3);
    assert_int_equal(t.bytes, 6 * sizeof(float));
    assert_int_equal(slot, 1);
    assert_ptr_equal(t.data, shm_slot(&cons, 1) + 64);
    assert_int_equal((uintptr_t)t.data % sizeof(float), 0);
    assert_memory_equal(t.data, px, t.bytes);
    if (wire_get_tensor_shm(&m.root, "whole", &cons, &t, &slot, &e)) fail_msg("%s", e.msg);
    assert_int_equal(slot, 0);
    assert_int_equal(t.bytes, 4096);
    assert_ptr_equal(t.data, shm_slot(&cons, 0));
    if (wire_get_tensor_shm(&m.root, "scalar", &cons, &t, &slot, &e)) fail_msg("%s", e.msg);
    assert_int_equal(t.ndim, 0);
    assert_int_equal(t.bytes, 8);
    assert_ptr_equal(t.data, shm_slot(&cons, 0) + 4088);
    /* the inline getter refuses a shared-memory tensor */
    EXPECT_GET_ERROR(wire_get_tensor(&m.root, "image", &t, err),
                     "message 'sample': field 'image' is a shared-memory tensor; this message must "
                     "carry it inline");
    wire_msg_free(&m);
    wire_writer_free(&w);
    shm_segment_close(&cons);
    shm_segment_close(&prod);
}

/* Field key: a one-dimensional shm tensor {dtype, shape: [dim], shm: {segment, slot, offset,
 * bytes}}. */
static void raw_shm_tensor(Raw *r, const char *key, const char *dtype, uint64_t dim,
                           const char *segment, uint64_t slot, uint64_t offset, uint64_t bytes)
{
    raw_tensor_head(r, key, 3, dtype, 1, dim);
    raw_str(r, "shm");
    assert_int_equal(msgpack_pack_map(&r->pk, 4), 0);
    raw_str(r, "segment"), raw_str(r, segment);
    raw_str(r, "slot");
    assert_int_equal(msgpack_pack_uint64(&r->pk, slot), 0);
    raw_str(r, "offset");
    assert_int_equal(msgpack_pack_uint64(&r->pk, offset), 0);
    raw_str(r, "bytes");
    assert_int_equal(msgpack_pack_uint64(&r->pk, bytes), 0);
}

static void test_tensor_shm_errors(void **state)
{
    ShmSegment seg;
    Err e = {{0}};
    char long_name[100];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    if (shm_segment_create(&seg, "test_wire", 8, 4096, &e)) fail_msg("%s", e.msg);
    const char *name = seg.name;
    Raw r;
    raw_init(&r);
    raw_header(&r, 11, "sample", 1);
    raw_shm_tensor(&r, "image", "F32", 4, name, 9, 0, 16);         /* no slot 9 */
    raw_shm_tensor(&r, "past", "U8", 100, name, 7, 4000, 100);     /* 4 bytes past the slot */
    raw_shm_tensor(&r, "bytes", "F32", 4, name, 0, 0, 15);         /* 4 floats are 16 bytes */
    raw_shm_tensor(&r, "huge", "F64", 1ull << 62, name, 0, 0, 0);  /* 2^65 bytes */
    raw_shm_tensor(&r, "wrap", "F64", 2, name, 0, UINT64_MAX - 7, 16); /* end wraps to 8 */
    raw_shm_tensor(&r, "misaligned", "F32", 4, name, 0, 2, 16);
    raw_shm_tensor(&r, "other", "F32", 4, "/effdet-1-other-0", 0, 0, 16);
    raw_shm_tensor(&r, "long", "F32", 4, long_name, 0, 0, 16);
    raw_tensor_head(&r, "inline", 3, "U8", 1, 2);
    raw_str(&r, "data");
    assert_int_equal(msgpack_pack_bin_with_body(&r.pk, "ab", 2), 0);
    raw_tensor_head(&r, "partial", 3, "U8", 1, 2); /* a reference without its bytes */
    raw_str(&r, "shm");
    assert_int_equal(msgpack_pack_map(&r.pk, 3), 0);
    raw_str(&r, "segment"), raw_str(&r, name);
    raw_str(&r, "slot"), raw_str(&r, "0");
    raw_str(&r, "offset");
    assert_int_equal(msgpack_pack_uint64(&r.pk, 0), 0);
    raw_tensor_head(&r, "ok", 3, "U8", 1, 2);
    raw_str(&r, "shm");
    assert_int_equal(msgpack_pack_map(&r.pk, 4), 0);
    raw_str(&r, "segment"), raw_str(&r, name);
    raw_str(&r, "slot");
    assert_int_equal(msgpack_pack_uint64(&r.pk, 7), 0);
    raw_str(&r, "offset");
    assert_int_equal(msgpack_pack_uint64(&r.pk, 4094), 0);
    raw_str(&r, "bytes");
    assert_int_equal(msgpack_pack_uint64(&r.pk, 2), 0);
    WireMsg m;
    decode_ok(&m, r.buf.data, r.buf.size);
    WireTensor t;
    uint32_t slot;
    char want[256];
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "image", &seg, &t, &slot, err),
                     "message 'sample': field 'image.shm.slot' is 9, the segment has 8 slots");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "past", &seg, &t, &slot, err),
                     "message 'sample': field 'past.shm' has 100 bytes at offset 4000, past the "
                     "end of its 4096-byte slot");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "bytes", &seg, &t, &slot, err),
                     "field 'bytes.shm.bytes' is 15, expected 4 elements of F32");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "huge", &seg, &t, &slot, err),
                     "field 'huge.shm.bytes' is 0, expected 4611686018427387904 elements of F64");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "wrap", &seg, &t, &slot, err),
                     "field 'wrap.shm' has 16 bytes at offset 18446744073709551608, past the end");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "misaligned", &seg, &t, &slot, err),
                     "field 'misaligned.shm.offset' is 2, not a multiple of 4 (the size of F32)");
    snprintf(want, sizeof want, "field 'other.shm.segment' is '/effdet-1-other-0', this process "
                                "reads '%s'", name);
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "other", &seg, &t, &slot, err), want);
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "long", &seg, &t, &slot, err),
                     "xxxxxxx...', this process reads");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "inline", &seg, &t, &slot, err),
                     "message 'sample': field 'inline' is an inline tensor; this message must "
                     "carry it in shared memory");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "partial", &seg, &t, &slot, err),
                     "field 'partial.shm.slot' is a str, expected a uint");
    EXPECT_GET_ERROR(wire_get_tensor_shm(&m.root, "nope", &seg, &t, &slot, err),
                     "field 'nope' is missing");
    /* the last bytes of the last slot are fine */
    if (wire_get_tensor_shm(&m.root, "ok", &seg, &t, &slot, &e)) fail_msg("%s", e.msg);
    assert_ptr_equal(t.data, seg.base + seg.bytes - 2);
    assert_int_equal(slot, 7);
    wire_msg_free(&m);
    msgpack_sbuffer_destroy(&r.buf);
    shm_segment_close(&seg);
}

/* Every prefix of a valid message, and 20,000 random mutations of it: errors (or, for some
 * mutations, a valid message), never a crash, and every error one line. */
static void test_truncated_and_mutated(void **state)
{
    WireLimits lim = wire_limits_default();
    const double rows[12] = {1, 2, 3, 4, 0.5, 1, 5, 6, 7, 8, 0.25, 3};
    WireTensor t = {.dtype = ST_F64, .ndim = 2, .shape = {2, 6}, .data = rows};
    ShmSegment seg;
    Err err;
    if (shm_segment_create(&seg, "test_wire", 2, 4096, &err)) fail_msg("%s", err.msg);
    WireWriter w;
    wire_writer_init(&w, "detections", 5);
    wire_put_uint(&w, "epoch", 3);
    wire_put_int(&w, "image_id", 397133);
    wire_put_bin(&w, "dets", rows, sizeof rows);
    wire_put_tensor(&w, "t", &t);
    wire_put_tensor_shm(&w, "s", ST_F32, 2, t.shape, &seg, 1, 4000);
    size_t len;
    const uint8_t *data = wire_writer_data(&w, &len);
    WireMsg m;
    wire_msg_init(&m);
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size: ASan sees any overread */
        memcpy(copy, data, cut);
        if (wire_decode(&m, copy, cut, &lim, &err) == 0)
            fail_msg("prefix %zu of %zu decoded", cut, len);
        assert_null(strchr(err.msg, '\n'));
        free(copy);
    }
    uint8_t *copy = malloc(len);
    unsigned seed = 12345;
    size_t decoded = 0;
    for (int k = 0; k < 20000; k++) {
        memcpy(copy, data, len);
        for (int f = 0; f < 1 + k % 4; f++) {
            seed = seed * 1103515245u + 12345u;
            copy[(seed >> 8) % len] = (uint8_t)(seed >> 20);
        }
        if (wire_decode(&m, copy, len, &lim, &err) == 0) {
            uint64_t u;
            uint32_t slot;
            WireTensor got;
            decoded++;
            wire_get_uint(&m.root, "epoch", &u, &err); /* any outcome; no crash */
            wire_get_tensor(&m.root, "t", &got, &err);
            if (wire_get_tensor_shm(&m.root, "s", &seg, &got, &slot, &err) == 0) {
                const uint8_t *p = got.data, *start = shm_slot(&seg, slot);
                if (p < start || got.bytes > seg.slot_bytes - (size_t)(p - start))
                    fail_msg("mutation %d: %zu bytes at %p outside slot %u", k, got.bytes,
                             (const void *)p, slot);
            }
        } else {
            assert_null(strchr(err.msg, '\n'));
        }
    }
    print_message("mutations: %zu of 20000 still decoded\n", decoded);
    free(copy);
    wire_msg_free(&m);
    wire_writer_free(&w);
    shm_segment_close(&seg);
}

static void test_rundir(void **state)
{
    char dir[RUNDIR_CAP], ep[ZMQ_UTIL_ENDPOINT_CAP], path[512];
    Err err = {{0}};
    struct stat st;
    if (rundir_create(dir, &err)) fail_msg("%s", err.msg);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    if (rundir_endpoint(dir, "evaluator.sock", ep, &err)) fail_msg("%s", err.msg);
    assert_true(!strncmp(ep, "ipc://", 6) && strstr(ep, "/evaluator.sock"));
    char long_name[200];
    memset(long_name, 'n', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_int_equal(rundir_endpoint(dir, long_name, ep, &err), -1);
    assert_non_null(strstr(err.msg, "longer than a Unix socket path allows"));
    snprintf(path, sizeof path, "%s/leftover", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    if (rundir_remove(dir, &err)) fail_msg("%s", err.msg);
    assert_int_equal(stat(dir, &st), -1);
    assert_int_equal(rundir_remove(dir, &err), 0); /* already gone: fine */
}

/* shared/zmq_util.c: one frame each way, timeouts as ZMQ_UTIL_AGAIN, a multi-part message
 * refused without losing the next one, ZMQ_MAXMSGSIZE enforced, the stop fd seen by the poll,
 * and setup errors naming the endpoint. */
static void test_zmq_util(void **state)
{
    char dir[RUNDIR_CAP], ep[ZMQ_UTIL_ENDPOINT_CAP];
    Err err = {{0}};
    ZmqSocket pull = {0}, push = {0}, lonely = {0}, bad = {0};
    ZmqSocketConfig pull_cfg = {ZMQ_PULL, 100, 0, 0}, push_cfg = {ZMQ_PUSH, 100, 0, 0};
    zmq_msg_t msg;
    int ready, fds[2];
    void *ctx = zmq_util_ctx_new(&err);
    assert_non_null(ctx);
    if (rundir_create(dir, &err) || rundir_endpoint(dir, "t.sock", ep, &err) ||
        zmq_util_bind(&pull, ctx, &pull_cfg, ep, &err) ||
        zmq_util_connect(&push, ctx, &push_cfg, ep, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(zmq_util_send(&push, "hello", 5, 1000, &err), 0);
    assert_int_equal(zmq_util_recv(&pull, &msg, 1000, &err), 0);
    assert_int_equal(zmq_msg_size(&msg), 5);
    assert_memory_equal(zmq_msg_data(&msg), "hello", 5);
    zmq_msg_close(&msg);
    /* nothing more: a timeout */
    assert_int_equal(zmq_util_recv(&pull, &msg, 20, &err), ZMQ_UTIL_AGAIN);
    zmq_msg_close(&msg);
    /* a two-part message, then a good one */
    assert_int_equal(zmq_send(push.sock, "a", 1, ZMQ_SNDMORE), 1);
    assert_int_equal(zmq_send(push.sock, "b", 1, 0), 1);
    assert_int_equal(zmq_util_send(&push, "next", 4, 1000, &err), 0);
    assert_int_equal(zmq_util_recv(&pull, &msg, 1000, &err), ZMQ_UTIL_MULTIPART);
    assert_non_null(strstr(err.msg, "t.sock: a message of 2 parts, expected 1"));
    zmq_msg_close(&msg);
    assert_int_equal(zmq_util_recv(&pull, &msg, 1000, &err), 0);
    assert_int_equal(zmq_msg_size(&msg), 4);
    zmq_msg_close(&msg);
    /* over ZMQ_MAXMSGSIZE (100): the receiver drops it (and the connection) */
    char big[200] = {0};
    assert_int_equal(zmq_util_send(&push, big, sizeof big, 1000, &err), 0);
    assert_int_equal(zmq_util_recv(&pull, &msg, 200, &err), ZMQ_UTIL_AGAIN);
    zmq_msg_close(&msg);
    /* the stop fd ends a wait at once */
    assert_int_equal(pipe(fds), 0);
    assert_int_equal(write(fds[1], "x", 1), 1);
    assert_int_equal(zmq_util_poll(&pull, ZMQ_POLLIN, fds[0], 5000, &ready, &err), 0);
    assert_int_equal(ready, ZMQ_UTIL_FD_READY);
    close(fds[0]), close(fds[1]);
    /* a PUSH without peers has no room: a send times out */
    if (rundir_endpoint(dir, "lonely.sock", ep, &err) ||
        zmq_util_bind(&lonely, ctx, &push_cfg, ep, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(zmq_util_send(&lonely, "x", 1, 20, &err), ZMQ_UTIL_AGAIN);
    /* setup errors: one line naming the endpoint and the call */
    const char *nodir = "ipc:///nonexistent-dir/x.sock";
    assert_int_equal(zmq_util_bind(&bad, ctx, &pull_cfg, nodir, &err), -1);
    assert_string_equal(err.msg, "ipc:///nonexistent-dir/x.sock: bind: No such file or directory");
    assert_null(bad.sock);
    assert_int_equal(zmq_util_connect(&bad, ctx, &pull_cfg, "nope://x", &err), -1);
    assert_string_equal(err.msg, "nope://x: connect: Protocol not supported");
    zmq_util_close(&pull), zmq_util_close(&push), zmq_util_close(&lonely);
    zmq_util_close(&pull); /* idempotent */
    zmq_util_ctx_term(ctx);
    if (rundir_remove(dir, &err)) fail_msg("%s", err.msg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_wrong_and_missing_fields),
        cmocka_unit_test(test_bounds),        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_tensor_errors), cmocka_unit_test(test_tensor_shm_round_trip),
        cmocka_unit_test(test_tensor_shm_errors), cmocka_unit_test(test_truncated_and_mutated),
        cmocka_unit_test(test_rundir),       cmocka_unit_test(test_zmq_util),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
