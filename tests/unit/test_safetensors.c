/* test_safetensors.c: the strict reader and the atomic writer: a round trip, and every malformed
 * file the reader must refuse with a message naming the file and the tensor. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/safetensors.h"

static char dir[] = "/tmp/effdet_st_XXXXXX";

static int setup(void **state) { return mkdtemp(dir) ? 0 : -1; }

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes an 8-byte length, the header text as given, then `data_len` bytes of data. */
static void write_raw(const char *path, const char *header, size_t data_len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t n = strlen(header);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_len; i++) fputc((int)i, f);
    fclose(f);
}

static void expect_refused(const char *header, size_t data_len, const char *needle)
{
    char path[256];
    snprintf(path, sizeof path, "%s/bad.safetensors", dir);
    write_raw(path, header, data_len);
    SafeTensors st;
    Err err;
    int rc = st_open(&st, path, &err);
    if (rc == 0) {
        st_close(&st);
        fail_msg("accepted a bad file (wanted an error containing '%s'): %s", needle, header);
    }
    print_message("refused: %s\n", err.msg);
    if (!strstr(err.msg, needle) || !strstr(err.msg, path))
        fail_msg("message '%s' does not name '%s' and the file", err.msg, needle);
}

static void test_round_trip(void **state)
{
    char path[256];
    snprintf(path, sizeof path, "%s/ok.safetensors", dir);
    float a[6] = {1, 2, 3, 4, 5, 6};
    int64_t b[2] = {-7, 1LL << 40};
    StWriteTensor ts[2] = {{"layer.weight", ST_F32, 2, {2, 3}, a}, {"steps", ST_I64, 1, {2}, b}};
    const char *meta[] = {"model", "tf_efficientdet_d0", "note", "quote \" and \\ survive"};
    Err err;
    assert_int_equal(st_write(path, ts, 2, meta, 2, &err), 0);
    SafeTensors st;
    if (st_open(&st, path, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(st.count, 2);
    assert_string_equal(st_meta(&st, "model"), "tf_efficientdet_d0");
    assert_string_equal(st_meta(&st, "note"), "quote \" and \\ survive");
    float got[6];
    int64_t shape[2] = {2, 3};
    assert_int_equal(st_read_f32(&st, "layer.weight", 2, shape, got, &err), 0);
    assert_memory_equal(got, a, sizeof a);
    const StTensor *t = st_find(&st, "steps");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_I64);
    assert_memory_equal(t->data, b, sizeof b);
    int64_t wrong[2] = {3, 2};
    assert_int_equal(st_read_f32(&st, "layer.weight", 2, wrong, got, &err), -1);
    assert_non_null(strstr(err.msg, "has shape [2, 3], expected [3, 2]"));
    assert_int_equal(st_read_f32(&st, "steps", 1, shape, got, &err), -1);
    assert_non_null(strstr(err.msg, "is I64, expected F32"));
    assert_int_equal(st_read_f32(&st, "nope", 1, shape, got, &err), -1);
    assert_non_null(strstr(err.msg, "'nope' is missing"));
    st_close(&st);
    st_close(&st); /* idempotent */
    /* No temporary file is left beside it. */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp", dir);
    assert_int_not_equal(system(cmd), 0);
}

static void test_malformed(void **state)
{
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4,
                   "past the data");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 4,
                   "needs 8");
    expect_refused("{\"a\": {\"dtype\": \"F99\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                   "unknown dtype");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
                   "non-negative");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8,
                   "gap or overlap");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
                   "data section holds 8");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                   "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                   4, "gap or overlap");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                   "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                   8, "appears twice");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]", 4, "not a JSON object");
    expect_refused("[1, 2, 3]", 0, "not a JSON object");
    expect_refused("{\"__metadata__\": {\"k\": 5}}", 0, "not a string");
    expect_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
                   "\"data_offsets\": [0, 4]}}", 4, "overflows");
}

static void test_header_length(void **state)
{
    char path[256];
    snprintf(path, sizeof path, "%s/len.safetensors", dir);
    uint8_t huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    FILE *f = fopen(path, "wb");
    fwrite(huge, 1, sizeof huge, f);
    fclose(f);
    SafeTensors st;
    Err err;
    assert_int_equal(st_open(&st, path, &err), -1);
    assert_non_null(strstr(err.msg, "100 MB cap"));
    uint8_t past[12] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    f = fopen(path, "wb");
    fwrite(past, 1, sizeof past, f);
    fclose(f);
    assert_int_equal(st_open(&st, path, &err), -1);
    assert_non_null(strstr(err.msg, "past the end of the file"));
    f = fopen(path, "wb");
    fwrite(past, 1, 5, f);
    fclose(f);
    assert_int_equal(st_open(&st, path, &err), -1);
    assert_non_null(strstr(err.msg, "too short"));
    assert_int_equal(st_open(&st, "/nonexistent/x.safetensors", &err), -1);
    assert_non_null(strstr(err.msg, "/nonexistent/x.safetensors: No such file"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_header_length),
    };
    return cmocka_run_group_tests_name("safetensors", tests, setup, teardown);
}
