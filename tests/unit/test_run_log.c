/* test_run_log.c: the training run's outputs (coordinator/run_log.h, tfevents.h, curves_png.h).
 *
 * The event file is read back independently of the writer: every TFRecord is parsed, both masked
 * CRC32Cs are checked (with a bitwise CRC32C written here, itself checked against the standard
 * check value), and the Event protobufs are decoded to find each scalar's tag, step and value; a
 * flipped byte must be caught. The PNG is read back with libpng: size, curve (coloured) pixels in
 * each panel, no leftover .tmp, and a clean error for a missing directory. run_log is driven with
 * tty 0 (exact plain lines, DLLL lines that cJSON parses with the right values, evaluation
 * arriving out of order) and tty 1 (the "\r" bar with an ETA, DLLL lines printed above it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <dirent.h>
#include <ftw.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/curves_png.h"
#include "coordinator/run_log.h"
#include "coordinator/tfevents.h"

/* ---- helpers: temporary directories and files ---- */

static void make_tmpdir(char path[64])
{
    snprintf(path, 64, "/tmp/test_run_log.XXXXXX");
    assert_non_null(mkdtemp(path));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* The one event file under dir/tensorboard (fails unless there is exactly one). */
static void find_event_file(const char *dir, char *out, size_t n)
{
    char tb[256];
    snprintf(tb, sizeof tb, "%s/tensorboard", dir);
    DIR *d = opendir(tb);
    assert_non_null(d);
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "events.out.tfevents.", 20) != 0)
            continue;
        found++;
        snprintf(out, n, "%s/%s", tb, e->d_name);
    }
    closedir(d);
    if (found != 1)
        fail_msg("%s: %d event files, expected 1", tb, found);
}

static char *read_all(FILE *f, size_t *n_out)
{
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = 0;
    if (n_out)
        *n_out = (size_t)n;
    return buf;
}

static char *read_path(const char *path, size_t *n_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("%s: cannot open", path);
    char *buf = read_all(f, n_out);
    fclose(f);
    return buf;
}

/* ---- an independent TFRecord + Event reader ---- */

/* Bitwise CRC32C, deliberately not table-driven so it does not share the writer's method. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t masked(uint32_t c)
{
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static uint64_t le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

typedef struct Scalar {
    char tag[64];
    long step;
    float value;
} Scalar;

typedef struct Events {
    char version[32];
    double first_wall_time;
    int n_records;
    int n;
    Scalar s[256];
    char error[128]; /* set when the file is malformed */
} Events;

/* A protobuf reader over [p, end): returns 0 and the field, or -1 at a malformed field. */
typedef struct Pb {
    const uint8_t *p, *end;
} Pb;

static int pb_varint(Pb *b, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end)
            return -1;
        uint8_t byte = *b->p++;
        *v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return 0;
    }
    return -1;
}

typedef struct PbField {
    unsigned num, wire;
    uint64_t u;              /* varint, fixed64, fixed32 */
    const uint8_t *data;     /* length-delimited */
    size_t len;
} PbField;

static int pb_next(Pb *b, PbField *f)
{
    uint64_t key;
    if (pb_varint(b, &key) != 0)
        return -1;
    f->num = (unsigned)(key >> 3);
    f->wire = (unsigned)(key & 7);
    switch (f->wire) {
    case 0:
        return pb_varint(b, &f->u);
    case 1:
    case 5: {
        int bytes = f->wire == 1 ? 8 : 4;
        if (b->end - b->p < bytes)
            return -1;
        f->u = le(b->p, bytes);
        b->p += bytes;
        return 0;
    }
    case 2: {
        uint64_t len;
        if (pb_varint(b, &len) != 0 || len > (uint64_t)(b->end - b->p))
            return -1;
        f->data = b->p;
        f->len = (size_t)len;
        b->p += len;
        return 0;
    }
    default:
        return -1;
    }
}

static int decode_value(Events *ev, const uint8_t *p, size_t n, long step)
{
    Pb b = {p, p + n};
    PbField f;
    Scalar s = {.step = step, .value = NAN};
    int have_tag = 0, have_value = 0;
    while (b.p < b.end) {
        if (pb_next(&b, &f) != 0)
            return -1;
        if (f.num == 1 && f.wire == 2 && f.len < sizeof s.tag) {
            memcpy(s.tag, f.data, f.len);
            s.tag[f.len] = 0;
            have_tag = 1;
        } else if (f.num == 2 && f.wire == 5) {
            uint32_t u = (uint32_t)f.u;
            memcpy(&s.value, &u, sizeof u);
            have_value = 1;
        }
    }
    if (!have_tag || !have_value || ev->n >= 256)
        return -1;
    ev->s[ev->n++] = s;
    return 0;
}

static int decode_event(Events *ev, const uint8_t *p, size_t n)
{
    Pb b = {p, p + n};
    PbField f;
    double wall = NAN;
    long step = 0;
    const uint8_t *summary = NULL;
    size_t summary_len = 0;
    while (b.p < b.end) {
        if (pb_next(&b, &f) != 0)
            return -1;
        if (f.num == 1 && f.wire == 1)
            memcpy(&wall, &f.u, sizeof wall);
        else if (f.num == 2 && f.wire == 0)
            step = (long)(int64_t)f.u;
        else if (f.num == 3 && f.wire == 2 && f.len < sizeof ev->version && ev->n_records == 0) {
            memcpy(ev->version, f.data, f.len);
            ev->version[f.len] = 0;
        } else if (f.num == 5 && f.wire == 2) {
            summary = f.data;
            summary_len = f.len;
        }
    }
    if (!isfinite(wall))
        return -1;
    if (ev->n_records == 0)
        ev->first_wall_time = wall;
    if (summary) {
        Pb sb = {summary, summary + summary_len};
        while (sb.p < sb.end) {
            if (pb_next(&sb, &f) != 0)
                return -1;
            if (f.num == 1 && f.wire == 2 && decode_value(ev, f.data, f.len, step) != 0)
                return -1;
        }
    }
    return 0;
}

/* Parses a whole event file held in memory; ev->error says what was wrong, if anything. */
static void parse_events(const uint8_t *buf, size_t n, Events *ev)
{
    memset(ev, 0, sizeof *ev);
    size_t off = 0;
    while (off < n) {
        if (n - off < 12) {
            snprintf(ev->error, sizeof ev->error, "truncated header at %zu", off);
            return;
        }
        uint64_t len = le(buf + off, 8);
        if ((uint32_t)le(buf + off + 8, 4) != masked(crc32c_bitwise(buf + off, 8))) {
            snprintf(ev->error, sizeof ev->error, "length CRC mismatch at %zu", off);
            return;
        }
        off += 12;
        if (len > n - off || n - off - len < 4) {
            snprintf(ev->error, sizeof ev->error, "truncated record at %zu", off);
            return;
        }
        if ((uint32_t)le(buf + off + len, 4) != masked(crc32c_bitwise(buf + off, len))) {
            snprintf(ev->error, sizeof ev->error, "data CRC mismatch at %zu", off);
            return;
        }
        if (decode_event(ev, buf + off, (size_t)len) != 0) {
            snprintf(ev->error, sizeof ev->error, "bad Event protobuf at %zu", off);
            return;
        }
        ev->n_records++;
        off += len + 4;
    }
}

static void parse_event_dir(const char *dir, Events *ev)
{
    char path[512];
    size_t n;
    find_event_file(dir, path, sizeof path);
    char *buf = read_path(path, &n);
    parse_events((const uint8_t *)buf, n, ev);
    free(buf);
    if (ev->error[0])
        fail_msg("%s: %s", path, ev->error);
    if (strcmp(ev->version, "brain.Event:2") != 0)
        fail_msg("%s: file_version \"%s\", expected \"brain.Event:2\"", path, ev->version);
    double now = (double)time(NULL);
    if (!(fabs(ev->first_wall_time - now) < 600))
        fail_msg("%s: first wall_time %f, now %f", path, ev->first_wall_time, now);
}

static const Scalar *find_scalar(const Events *ev, const char *tag, long step)
{
    for (int i = 0; i < ev->n; i++)
        if (ev->s[i].step == step && strcmp(ev->s[i].tag, tag) == 0)
            return &ev->s[i];
    return NULL;
}

static void expect_scalar(const Events *ev, const char *tag, long step, double value)
{
    const Scalar *s = find_scalar(ev, tag, step);
    if (!s)
        fail_msg("no scalar %s at step %ld among %d", tag, step, ev->n);
    if (!(s->value == (float)value) && !(isnan(value) && isnan(s->value)))
        fail_msg("scalar %s at step %ld: %.9g, expected %.9g", tag, step, s->value, value);
}

static int count_tag(const Events *ev, const char *tag)
{
    int c = 0;
    for (int i = 0; i < ev->n; i++)
        c += strcmp(ev->s[i].tag, tag) == 0;
    return c;
}

/* ---- CRC32C and tfevents ---- */

static void test_crc32c(void **state)
{
    (void)state;
    uint32_t table[256];
    tfevents_crc32c_table(table);
    uint32_t got = tfevents_crc32c(table, "123456789", 9);
    if (got != 0xE3069283u)
        fail_msg("crc32c(\"123456789\") = 0x%08X, expected 0xE3069283", got);
    got = crc32c_bitwise((const uint8_t *)"123456789", 9);
    if (got != 0xE3069283u)
        fail_msg("test's bitwise crc32c(\"123456789\") = 0x%08X, expected 0xE3069283", got);
    uint8_t data[1000];
    for (int i = 0; i < 1000; i++)
        data[i] = (uint8_t)(i * 131 + 7);
    for (size_t n = 0; n <= sizeof data; n += 37)
        assert_int_equal(tfevents_crc32c(table, data, n), crc32c_bitwise(data, n));
    assert_int_equal(tfevents_mask_crc(0x12345678u), masked(0x12345678u));
}

static void test_tfevents_roundtrip(void **state)
{
    (void)state;
    char dir[64], path[512];
    Err err = {{0}};
    make_tmpdir(dir);
    TfEvents *t = tfevents_open(dir, &err);
    if (!t)
        fail_msg("tfevents_open: %s", err.msg);
    assert_int_equal(tfevents_scalar(t, "train/loss", 1, 1.5, &err), 0);
    assert_int_equal(tfevents_scalar(t, "train/loss", 300, 0.25, &err), 0);
    assert_int_equal(tfevents_scalar(t, "eval/mAP", 1000000, 0.3333, &err), 0);
    assert_int_equal(tfevents_scalar(t, "x", 0, -2.0, &err), 0);
    char long_tag[300];
    memset(long_tag, 'a', sizeof long_tag - 1);
    long_tag[sizeof long_tag - 1] = 0;
    assert_int_equal(tfevents_scalar(t, long_tag, 1, 1, &err), -1);
    assert_non_null(strstr(err.msg, "tag"));
    snprintf(path, sizeof path, "%s", tfevents_path(t));
    /* Flushed per record: the file is complete before close, as after a kill. */
    Events ev;
    size_t n;
    char *buf = read_path(path, &n);
    parse_events((const uint8_t *)buf, n, &ev);
    assert_string_equal(ev.error, "");
    assert_int_equal(ev.n_records, 5);
    free(buf);
    tfevents_close(t);

    parse_event_dir(dir, &ev);
    assert_int_equal(ev.n, 4);
    expect_scalar(&ev, "train/loss", 1, 1.5);
    expect_scalar(&ev, "train/loss", 300, 0.25);
    expect_scalar(&ev, "eval/mAP", 1000000, 0.3333);
    expect_scalar(&ev, "x", 0, -2.0);

    /* The reader must notice corruption: flip one byte of the data, then of the length. */
    buf = read_path(path, &n);
    buf[n - 6] ^= 0x40;
    parse_events((const uint8_t *)buf, n, &ev);
    assert_non_null(strstr(ev.error, "data CRC mismatch"));
    buf[n - 6] ^= 0x40;
    buf[0] ^= 0x01;
    parse_events((const uint8_t *)buf, n, &ev);
    assert_non_null(strstr(ev.error, "length CRC mismatch"));
    free(buf);

    /* A second writer in the same second gets a file of its own. */
    TfEvents *t2 = tfevents_open(dir, &err), *t3 = tfevents_open(dir, &err);
    assert_non_null(t2);
    assert_non_null(t3);
    assert_string_not_equal(tfevents_path(t2), tfevents_path(t3));
    tfevents_close(t2);
    tfevents_close(t3);
    tfevents_close(NULL);
    rm_tree(dir);

    /* A directory that cannot be created is a clean error. */
    assert_null(tfevents_open("/nonexistent_dir_for_test/run", &err));
    assert_non_null(strstr(err.msg, "/nonexistent_dir_for_test/run"));
}

/* ---- curves PNG ---- */

/* Reads an RGB PNG with libpng's simplified API; returns the pixels (caller frees). */
static uint8_t *read_png(const char *path, int *w, int *h)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&img, path))
        fail_msg("%s: %s", path, img.message);
    img.format = PNG_FORMAT_RGB;
    uint8_t *px = malloc(PNG_IMAGE_SIZE(img));
    assert_non_null(px);
    if (!png_image_finish_read(&img, NULL, px, 0, NULL))
        fail_msg("%s: %s", path, img.message);
    *w = (int)img.width;
    *h = (int)img.height;
    png_image_free(&img);
    return px;
}

/* Curves are the only coloured pixels: background, axes, grid and text are all grey. */
static int coloured_pixels(const uint8_t *px, int w, int h, int x0, int x1)
{
    int c = 0;
    for (int y = 0; y < h; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *p = px + 3 * ((size_t)y * (size_t)w + (size_t)x);
            c += !(p[0] == p[1] && p[1] == p[2]);
        }
    return c;
}

static int dark_pixels(const uint8_t *px, int w, int h, int x0, int x1)
{
    int c = 0;
    for (int y = 0; y < h; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *p = px + 3 * ((size_t)y * (size_t)w + (size_t)x);
            c += p[0] < 128 && p[1] < 128 && p[2] < 128;
        }
    return c;
}

static void test_curves_png(void **state)
{
    (void)state;
    char dir[64], path[128], tmp[140];
    Err err = {{0}};
    make_tmpdir(dir);
    snprintf(path, sizeof path, "%s/curves.png", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);

    /* Many steps (binned per column) with a NaN and an inf, and an unsorted mAP series. */
    enum { N = 5000 };
    double *steps = malloc(N * sizeof *steps), *loss = malloc(N * sizeof *loss);
    assert_non_null(steps);
    assert_non_null(loss);
    for (int i = 0; i < N; i++) {
        steps[i] = i + 1;
        loss[i] = 2.0 * exp(-i / 1000.0) + 0.1 * sin(i * 0.7);
    }
    loss[10] = NAN;
    loss[20] = INFINITY;
    const double epochs[4] = {3, 1, 2, 4}, map[4] = {0.21, 0.05, 0.12, 0.25};
    if (curves_png_write(path, steps, loss, N, epochs, map, 4, &err) != 0)
        fail_msg("curves_png_write: %s", err.msg);
    assert_false(file_exists(tmp));
    int w, h;
    uint8_t *px = read_png(path, &w, &h);
    assert_int_equal(w, CURVES_PNG_WIDTH);
    assert_int_equal(h, CURVES_PNG_HEIGHT);
    int half = CURVES_PNG_PANEL_WIDTH;
    int left = coloured_pixels(px, w, h, 0, half), right = coloured_pixels(px, w, h, half, w);
    if (left < 300 || right < 100)
        fail_msg("curve pixels: left panel %d (want >= 300), right panel %d (want >= 100)", left,
                 right);
    /* Axes and labels in both panels. */
    assert_true(dark_pixels(px, w, h, 0, half) > 300);
    assert_true(dark_pixels(px, w, h, half, w) > 300);
    free(px);

    /* No mAP yet and a single loss point: the right panel has no curve, the left a marker. */
    const double one_step = 1, one_loss = 0.5;
    assert_int_equal(curves_png_write(path, &one_step, &one_loss, 1, NULL, NULL, 0, &err), 0);
    px = read_png(path, &w, &h);
    assert_true(coloured_pixels(px, w, h, 0, half) > 0);
    assert_int_equal(coloured_pixels(px, w, h, half, w), 0);
    free(px);

    /* A missing directory: -1, the path named, nothing created. */
    snprintf(path, sizeof path, "%s/missing/curves.png", dir);
    assert_int_equal(curves_png_write(path, steps, loss, N, epochs, map, 4, &err), -1);
    if (!strstr(err.msg, "missing/curves.png"))
        fail_msg("error \"%s\" does not name the file", err.msg);
    assert_false(file_exists(path));
    free(steps);
    free(loss);
    rm_tree(dir);
}

/* ---- run_log ---- */

static double step_loss(long s)
{
    return 0.8423 - 0.01 * (double)s;
}

static double step_class(long s)
{
    return 0.5312 - 0.01 * (double)s;
}

/* Checks one DLLL line's JSON: the type and each numeric field (NaN expected means null). */
static void check_dlll(const char *line, const char *type, const char *const *keys,
                       const double *values, int n_keys)
{
    cJSON *j = cJSON_Parse(line + 5);
    if (!j)
        fail_msg("DLLL line is not valid JSON: %s", line);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    if (!cJSON_IsString(t) || strcmp(t->valuestring, type) != 0)
        fail_msg("DLLL type is not \"%s\": %s", type, line);
    for (int i = 0; i < n_keys; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[i]);
        if (isnan(values[i])) {
            if (!cJSON_IsNull(v))
                fail_msg("DLLL %s should be null: %s", keys[i], line);
            continue;
        }
        if (!cJSON_IsNumber(v) || fabs(v->valuedouble - values[i]) > 1e-5 * fabs(values[i]))
            fail_msg("DLLL %s should be %g: %s", keys[i], values[i], line);
    }
    cJSON_Delete(j);
}

static void test_run_log_plain(void **state)
{
    (void)state;
    char dir[64], png[128];
    Err err = {{0}};
    make_tmpdir(dir);
    FILE *out = tmpfile();
    assert_non_null(out);
    RunLogConfig cfg = {.dir = dir, .total_steps = 10, .steps_per_epoch = 5, .batch = 8,
                        .tty = 0, .log_interval = 3, .out = out};
    RunLog *r = run_log_open(&cfg, &err);
    if (!r)
        fail_msg("run_log_open: %s", err.msg);
    const double stats[12] = {0.1234, 0.2345, 0.1111, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (long s = 1; s <= 10; s++) {
        double box = s == 6 ? NAN : 0.00622;
        if (run_log_step(r, (s - 1) / 5, s, step_loss(s), step_class(s), box, 0.08, 54.1,
                         &err) != 0)
            fail_msg("run_log_step %ld: %s", s, err.msg);
        /* Epoch 1's evaluation arrives during epoch 2's steps. */
        if (s == 7)
            assert_int_equal(run_log_eval(r, 1, 5, stats, &err), 0);
    }
    run_log_line(r, "saved checkpoint %d", 2);
    assert_int_equal(run_log_close(r, &err), 0);
    assert_int_equal(run_log_close(r, &err), 0);
    snprintf(png, sizeof png, "%s/curves.png", dir);
    assert_true(file_exists(png));
    run_log_free(r);

    char *text = read_all(out, NULL);
    fclose(out);
    assert_null(strchr(text, '\r'));
    assert_null(strstr(text, "ETA"));
    /* Exact plain lines at steps 3 and 10 (the last step, not a multiple of 3). */
    assert_non_null(strstr(text, "epoch 1 step 3/10: loss 0.8123 (class 0.5012 box 0.00622) "
                                 "lr 0.08000 54.10 img/s\n"));
    assert_non_null(strstr(text, "epoch 2 step 10/10: loss 0.7423 (class 0.4312 box 0.00622) "
                                 "lr 0.08000 54.10 img/s\n"));
    assert_non_null(strstr(text, "eval epoch 1 step 5: mAP 0.1234 mAP@0.5 0.2345 "
                                 "mAP@0.75 0.1111\n"));
    assert_non_null(strstr(text, "saved checkpoint 2\n"));
    /* Plain lines only at logged steps. */
    assert_null(strstr(text, "step 4/10"));
    assert_null(strstr(text, "step 5/10:"));

    int n_train = 0, n_eval = 0, n_plain = 0;
    long want_steps[4] = {3, 6, 9, 10};
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "epoch ", 6) == 0)
            n_plain++;
        if (strncmp(line, "DLLL ", 5) != 0)
            continue;
        if (strstr(line, "\"train\"")) {
            assert_true(n_train < 4);
            long s = want_steps[n_train++];
            static const char *const keys[7] = {"step", "epoch", "loss", "class_loss",
                                                "box_loss", "lr", "img_s"};
            double values[7] = {(double)s, (double)((s - 1) / 5 + 1), step_loss(s),
                                step_class(s), s == 6 ? NAN : 0.00622, 0.08, 54.1};
            check_dlll(line, "train", keys, values, 7);
        } else {
            static const char *const keys[5] = {"epoch", "step", "map", "map50", "map75"};
            const double values[5] = {1, 5, 0.1234, 0.2345, 0.1111};
            check_dlll(line, "eval", keys, values, 5);
            n_eval++;
        }
    }
    assert_int_equal(n_train, 4);
    assert_int_equal(n_eval, 1);
    assert_int_equal(n_plain, 4);
    free(text);

    Events ev;
    parse_event_dir(dir, &ev);
    for (int i = 0; i < 4; i++) {
        long s = want_steps[i];
        expect_scalar(&ev, "train/loss", s, step_loss(s));
        expect_scalar(&ev, "train/class_loss", s, step_class(s));
        expect_scalar(&ev, "train/box_loss", s, s == 6 ? NAN : 0.00622);
        expect_scalar(&ev, "train/lr", s, 0.08);
        expect_scalar(&ev, "train/img_s", s, 54.1);
    }
    assert_int_equal(count_tag(&ev, "train/loss"), 4);
    expect_scalar(&ev, "eval/mAP", 5, 0.1234);
    expect_scalar(&ev, "eval/mAP50", 5, 0.2345);
    expect_scalar(&ev, "eval/mAP75", 5, 0.1111);
    assert_int_equal(ev.n, 4 * 5 + 3);

    int w, h;
    uint8_t *px = read_png(png, &w, &h);
    assert_int_equal(w, CURVES_PNG_WIDTH);
    assert_true(coloured_pixels(px, w, h, 0, CURVES_PNG_PANEL_WIDTH) > 0);
    assert_true(coloured_pixels(px, w, h, CURVES_PNG_PANEL_WIDTH, w) > 0);
    free(px);
    rm_tree(dir);
}

static void test_run_log_tty(void **state)
{
    (void)state;
    Err err = {{0}};
    FILE *out = tmpfile();
    assert_non_null(out);
    RunLogConfig cfg = {.dir = NULL, .total_steps = 10, .steps_per_epoch = 5, .batch = 8,
                        .tty = 1, .log_interval = 5, .out = out};
    RunLog *r = run_log_open(&cfg, &err);
    assert_non_null(r);
    const double stats[12] = {0.3, 0.5, 0.25};
    for (long s = 1; s <= 10; s++) {
        assert_int_equal(run_log_step(r, (s - 1) / 5, s, 0.812, 0.5, 0.006, 0.08, 54.1, &err), 0);
        if (s == 6)
            run_log_line(r, "info between steps");
    }
    assert_int_equal(run_log_eval(r, 2, 10, stats, &err), 0);
    assert_int_equal(run_log_close(r, &err), 0);
    run_log_free(r);
    char *text = read_all(out, NULL);
    fclose(out);
    /* The first bar: its ETA comes from img/s (9 steps * 8 images / 54.1 img/s = 0:01). */
    assert_non_null(strstr(text, "\r epoch 1/2 [#.........] step 1/10 loss 0.812 lr 0.0800 "
                                 "54.1 img/s ETA 0:01"));
    assert_non_null(strstr(text, "\r epoch 2/2 [##########] step 10/10 loss 0.812 lr 0.0800 "
                                 "54.1 img/s ETA 0:00"));
    /* Lines printed above the bar clear it first and start at the line's beginning. */
    assert_non_null(strstr(text, "\r\033[KDLLL {\"type\": \"train\", \"step\": 5,"));
    assert_non_null(strstr(text, "\r\033[Kinfo between steps\n"));
    assert_non_null(strstr(text, "\r\033[Keval epoch 2 step 10: mAP 0.3000"));
    /* No plain per-step lines on a terminal, and the output ends with the bar's newline. */
    assert_null(strstr(text, "step 5/10:"));
    size_t n = strlen(text);
    assert_true(n > 0 && text[n - 1] == '\n');
    free(text);
}

static void test_run_log_bad_config(void **state)
{
    (void)state;
    Err err = {{0}};
    RunLogConfig cfg = {.dir = NULL, .total_steps = 10, .steps_per_epoch = 5, .batch = 8,
                        .tty = 0, .log_interval = 0, .out = stdout};
    assert_null(run_log_open(&cfg, &err));
    assert_non_null(strstr(err.msg, "log_interval"));
    cfg.log_interval = 1;
    cfg.dir = "/nonexistent_dir_for_test/run";
    assert_null(run_log_open(&cfg, &err));
    assert_non_null(strstr(err.msg, "/nonexistent_dir_for_test/run"));
    run_log_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_tfevents_roundtrip),
        cmocka_unit_test(test_curves_png),
        cmocka_unit_test(test_run_log_plain),
        cmocka_unit_test(test_run_log_tty),
        cmocka_unit_test(test_run_log_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
