/* test_dataset.c: loader/dataset.c (the training index: label mapping in both modes and every rule
 * for imperfect annotation files) and loader/train_sample.c (letterbox scale, flip of image and
 * boxes, determinism from (seed, epoch, index) whatever the call order, epoch permutations,
 * batches, unreadable images). Annotation files are written with ' for " (see write_json). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/support/tmpdir.h"
#include "augment/resize.h"
#include "loader/dataset.h"
#include "loader/synth.h"
#include "loader/train_sample.h"

typedef TmpDir Fixture;

/* Writes dir/ann.json with every ' of text turned into "; returns its path (static buffer). */
static const char *write_json(const char *dir, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/ann.json", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (const char *p = text; *p; p++) fputc(*p == '\'' ? '"' : *p, fp);
    assert_int_equal(fclose(fp), 0);
    return path;
}

static void open_ok(Dataset *ds, const char *dir, const char *json, int num_classes)
{
    Err err = {{0}};
    if (dataset_open(ds, write_json(dir, json), "imgs", num_classes, &err) != 0)
        fail_msg("dataset_open: %s", err.msg);
}

static void expect_open_error(const char *dir, const char *json, int num_classes, const char *want)
{
    Dataset ds;
    Err err = {{0}};
    if (dataset_open(&ds, write_json(dir, json), "imgs", num_classes, &err) == 0)
        fail_msg("accepted (wanted an error containing \"%s\")", want);
    if (!strstr(err.msg, want)) fail_msg("error \"%s\" does not contain \"%s\"", err.msg, want);
    if (strchr(err.msg, '\n')) fail_msg("error \"%s\" is more than one line", err.msg);
    assert_null(ds.images);
    dataset_free(&ds);
}

static void assert_box(const DatasetBox *b, float x1, float y1, float x2, float y2, int label)
{
    if (b->x1 != x1 || b->y1 != y1 || b->x2 != x2 || b->y2 != y2 || b->label != label)
        fail_msg("box (%.9g, %.9g, %.9g, %.9g) label %d, want (%.9g, %.9g, %.9g, %.9g) label %d", b->x1, b->y1,
                 b->x2, b->y2, b->label, x1, y1, x2, y2, label);
}

/* Three categories with ids 9, 2, 5 do not fit 1..3: labels 1..3 in id order (2, 5, 9). Images
 * come out by id, boxes grouped by image in file order, paths under the images directory. */
static void test_index_contiguous_labels(void **state)
{
    Fixture *f = *state;
    Dataset ds;
    open_ok(&ds, f->dir,
            "{'images': [{'id': 30, 'file_name': 'c.jpg', 'width': 100, 'height': 50},"
            "            {'id': 10, 'file_name': 'a.jpg', 'width': 80, 'height': 60},"
            "            {'id': 20, 'file_name': 'b.jpg', 'width': 40, 'height': 40}],"
            " 'annotations': ["
            "  {'id': 1, 'image_id': 30, 'category_id': 9, 'bbox': [1, 2, 10, 20], 'area': 1, 'iscrowd': 0},"
            "  {'id': 2, 'image_id': 10, 'category_id': 2, 'bbox': [5, 5, 5, 5], 'area': 1, 'iscrowd': 0},"
            "  {'id': 3, 'image_id': 30, 'category_id': 5, 'bbox': [3.5, 4, 2, 2], 'area': 1, 'iscrowd': 1}],"
            " 'categories': [{'id': 9, 'name': 'x'}, {'id': 2, 'name': 'y'}, {'id': 5, 'name': 'z'}]}",
            3);
    assert_int_equal(ds.n_images, 3);
    assert_int_equal(ds.num_classes, 3);
    assert_int_equal(ds.ids_as_labels, 0);
    const int64_t ids[3] = {10, 20, 30}, n_boxes[3] = {1, 0, 2};
    const char *paths[3] = {"imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ds.images[i].id, ids[i]);
        assert_int_equal(ds.images[i].n_boxes, n_boxes[i]);
        assert_string_equal(ds.images[i].path, paths[i]);
    }
    assert_int_equal(ds.images[2].width, 100);
    assert_box(&ds.boxes[ds.images[0].first_box], 5, 5, 10, 10, 1);
    assert_box(&ds.boxes[ds.images[2].first_box], 1, 2, 11, 22, 3);
    assert_box(&ds.boxes[ds.images[2].first_box + 1], 3.5f, 4, 5.5f, 6, 2);
    assert_int_equal(ds.boxes[ds.images[2].first_box + 1].iscrowd, 1);
    assert_int_equal(ds.counts.crowd, 1);
    assert_int_equal(ds.counts.images_empty, 1);
    const int64_t cats[5] = {-1, 2, 5, 9, -1};
    for (int l = 0; l < 5; l++) assert_int_equal(dataset_label_category(&ds, l), cats[l]);
    dataset_free(&ds);
    dataset_free(&ds); /* idempotent */
}

static const char *CATS_1_3_7 =
    "{'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 100, 'height': 100}],"
    " 'annotations': ["
    "  {'id': 1, 'image_id': 1, 'category_id': 7, 'bbox': [0, 0, 10, 10], 'area': 1, 'iscrowd': 0},"
    "  {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [0, 0, 10, 10], 'area': 1, 'iscrowd': 0}],"
    " 'categories': [{'id': 1}, {'id': 3}, {'id': 7}]}";

/* Ids 1, 3, 7 within 1..90: the ids are the labels (effdet's cat_ids_as_labels); within 1..7 too.
 * With num_classes 0 the labels are 1..K; with 5 classes 7 does not fit but K = 3 does. */
static void test_ids_as_labels(void **state)
{
    Fixture *f = *state;
    Dataset ds;
    const int classes[4] = {90, 7, 0, 5}, want_n[4] = {90, 7, 3, 5}, as_ids[4] = {1, 1, 0, 0};
    const int want_label7[4] = {7, 7, 3, 3};
    for (int c = 0; c < 4; c++) {
        open_ok(&ds, f->dir, CATS_1_3_7, classes[c]);
        assert_int_equal(ds.num_classes, want_n[c]);
        assert_int_equal(ds.ids_as_labels, as_ids[c]);
        assert_int_equal(ds.boxes[0].label, want_label7[c]);
        assert_int_equal(ds.boxes[1].label, 1);
        assert_int_equal(dataset_label_category(&ds, want_label7[c]), 7);
        assert_int_equal(dataset_label_category(&ds, 2), as_ids[c] ? -1 : 3);
        dataset_free(&ds);
    }
    expect_open_error(f->dir, CATS_1_3_7, 2, "3 categories do not fit a 2-class model (their ids, 1..7,");
}

/* Partly outside: clipped and counted. Zero area, wholly outside, thinner than 1 px after
 * clipping: dropped and counted. */
static void test_clip_and_drop(void **state)
{
    Fixture *f = *state;
    Dataset ds;
    open_ok(&ds, f->dir,
            "{'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 100, 'height': 80}],"
            " 'annotations': ["
            "  {'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [-5, 70, 20, 30], 'area': 1, 'iscrowd': 0},"
            "  {'id': 2, 'image_id': 1, 'category_id': 1, 'bbox': [10, 10, 0, 5], 'area': 0, 'iscrowd': 0},"
            "  {'id': 3, 'image_id': 1, 'category_id': 1, 'bbox': [120, 10, 5, 5], 'area': 1, 'iscrowd': 0},"
            "  {'id': 4, 'image_id': 1, 'category_id': 1, 'bbox': [99.5, 10, 5, 5], 'area': 1, 'iscrowd': 0},"
            "  {'id': 5, 'image_id': 1, 'category_id': 1, 'bbox': [90, 0, 10, 80], 'area': 1, 'iscrowd': 0}],"
            " 'categories': [{'id': 1}]}",
            1);
    assert_int_equal(ds.n_boxes, 2);
    assert_box(&ds.boxes[0], 0, 70, 15, 80, 1);
    assert_box(&ds.boxes[1], 90, 0, 100, 80, 1); /* touching the borders is not clipping */
    assert_int_equal(ds.counts.clipped, 1);
    assert_int_equal(ds.counts.dropped_degenerate, 3);
    assert_int_equal(ds.counts.annotations, 5);
    char line[512];
    dataset_report(&ds, line, sizeof line);
    if (!strstr(line, "2 boxes") || !strstr(line, "1 boxes clipped") ||
        !strstr(line, "3 dropped as degenerate") || strchr(line, '\n'))
        fail_msg("report \"%s\"", line);
    dataset_free(&ds);
}

/* 105 boxes in one image: the first 100 in file order stay. */
static void test_instance_limit(void **state)
{
    Fixture *f = *state;
    char *json = malloc(1 << 16);
    assert_non_null(json);
    int n = sprintf(json, "{'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 500, 'height': 500},"
                          " {'id': 2, 'file_name': 'b.jpg', 'width': 500, 'height': 500}],"
                          " 'categories': [{'id': 1}], 'annotations': [");
    for (int i = 0; i < 105; i++)
        n += sprintf(json + n, "%s{'id': %d, 'image_id': 1, 'category_id': 1, 'bbox': [%d, 0, 2, 2], "
                               "'area': 4, 'iscrowd': 0}", i ? "," : "", i + 1, i);
    n += sprintf(json + n, ", {'id': 999, 'image_id': 2, 'category_id': 1, 'bbox': [0, 0, 2, 2],"
                           " 'area': 4, 'iscrowd': 0}]}");
    Dataset ds;
    open_ok(&ds, f->dir, json, 1);
    free(json);
    assert_int_equal(ds.images[0].n_boxes, DATASET_MAX_INSTANCES);
    assert_box(&ds.boxes[99], 99, 0, 101, 2, 1);
    assert_int_equal(ds.images[1].n_boxes, 1);
    assert_int_equal(ds.images[1].first_box, 100);
    assert_int_equal(ds.counts.dropped_over_limit, 5);
    assert_int_equal(ds.counts.images_over_limit, 1);
    dataset_free(&ds);
}

/* Unknown category or image, missing size or file name, bad paths: one line naming the record. */
static void test_bad_files(void **state)
{
    Fixture *f = *state;
    expect_open_error(f->dir,
                      "{'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 9, 'height': 9}],"
                      " 'annotations': [{'id': 77, 'image_id': 1, 'category_id': 99, 'bbox': [0, 0, 1, 1],"
                      " 'area': 1, 'iscrowd': 0}], 'categories': [{'id': 1}]}",
                      1, "(id 77): category_id 99 is not in");
    expect_open_error(f->dir,
                      "{'images': [{'id': 1, 'file_name': 'a.jpg', 'width': 9, 'height': 9}],"
                      " 'annotations': [{'id': 78, 'image_id': 555, 'category_id': 1, 'bbox': [0, 0, 1, 1],"
                      " 'area': 1, 'iscrowd': 0}], 'categories': [{'id': 1}]}",
                      1, "(id 78): image_id 555 is not in");
    expect_open_error(f->dir,
                      "{'images': [{'id': 4, 'file_name': 'a.jpg'}], 'annotations': [],"
                      " 'categories': [{'id': 1}]}",
                      1, "image 0 (id 4) has no width and height");
    expect_open_error(f->dir,
                      "{'images': [{'id': 4, 'width': 9, 'height': 9}], 'categories': [{'id': 1}]}",
                      1, "(id 4) has no file_name");
    Dataset ds;
    Err err = {{0}};
    char missing[128];
    snprintf(missing, sizeof missing, "%s/nowhere", f->dir);
    assert_int_equal(dataset_open_dir(&ds, missing, 3, &err), -1);
    if (!strstr(err.msg, "nowhere/annotations.json")) fail_msg("error \"%s\"", err.msg);
    dataset_free(&ds);
}

/* ---- the sample transform -------------------------------------------------------------------- */

enum { IN_H = 128, IN_W = 128 };

/* What the sample tests share: a synth dataset of n fixed 80x160 (w x h) images in dir/data
 * (s = 0.8, scaled extent 64 wide and 128 high, so the padding is on the right and a flip must
 * mirror 64 columns, not 128), two samplers (seed 1234, flips off or on, skip_corrupt off) and
 * two batch-sized image buffers. */
typedef struct Rig {
    Dataset ds;
    char data[128];
    TrainSampler s[2]; /* hflip 0, hflip 1 */
    float *a, *b;      /* (2, IN_H, IN_W, 3) each */
} Rig;

enum { SLOT = IN_H * IN_W * 3 };

static void sampler_ok(TrainSampler *s, const Dataset *ds, int hflip, int skip)
{
    TrainSampleConfig cfg = {.height = IN_H, .width = IN_W, .seed = 1234, .hflip = hflip,
                             .skip_corrupt = skip};
    Err err = {{0}};
    if (train_sampler_init(s, ds, &cfg, &err) != 0) fail_msg("sampler: %s", err.msg);
}

static Rig *rig_open(const char *dir, int n)
{
    Rig *r = calloc(1, sizeof *r);
    assert_non_null(r);
    SynthConfig c;
    synth_config_default(&c);
    c.n_images = n, c.seed = 21, c.fixed_size = 1, c.width = 80, c.height = 160;
    Err err = {{0}};
    snprintf(r->data, sizeof r->data, "%s/data", dir);
    if (synth_write_dataset(r->data, &c, NULL, &err) != 0) fail_msg("synth: %s", err.msg);
    if (dataset_open_dir(&r->ds, r->data, 3, &err) != 0) fail_msg("dataset: %s", err.msg);
    for (int k = 0; k < 2; k++) sampler_ok(&r->s[k], &r->ds, k, 0);
    r->a = malloc(sizeof(float) * 2 * SLOT);
    r->b = malloc(sizeof(float) * 2 * SLOT);
    assert_true(r->a && r->b);
    return r;
}

static void rig_close(Rig *r)
{
    for (int k = 0; k < 2; k++) train_sampler_free(&r->s[k]);
    train_sampler_free(&r->s[0]); /* idempotent */
    dataset_free(&r->ds);
    free(r->a), free(r->b), free(r);
}

static void load_ok(TrainSampler *s, uint32_t epoch, size_t i, float *dst, SampleTarget *t)
{
    Err err = {{0}};
    if (train_sample_load(s, epoch, i, dst, t, &err) != 0) fail_msg("sample %zu: %s", i, err.msg);
}

/* No flip: boxes are the dataset's times float(0.8), yxyx, padded with -1; img_scale = 1 / 0.8;
 * the padding columns hold the normalized fill colour. */
static void test_letterbox_scale(void **state)
{
    Fixture *f = *state;
    Rig *r = rig_open(f->dir, 4);
    const Dataset *ds = &r->ds;
    SampleTarget t;
    for (size_t i = 0; i < ds->n_images; i++) {
        load_ok(&r->s[0], 0, i, r->a, &t);
        const DatasetImage *im = &ds->images[i];
        assert_int_equal(t.scaled_w, 64);
        assert_int_equal(t.scaled_h, 128);
        assert_int_equal(t.img_w, 80);
        assert_int_equal(t.img_h, 160);
        assert_int_equal(t.image_id, im->id);
        assert_true(t.img_scale == (float)(1.0 / 0.8));
        assert_int_equal(t.n, im->n_boxes);
        for (int k = 0; k < t.n; k++) {
            const DatasetBox *b = &ds->boxes[im->first_box + k];
            float want[4] = {b->y1 * 0.8f, b->x1 * 0.8f, b->y2 * 0.8f, b->x2 * 0.8f};
            for (int c = 0; c < 4; c++)
                if (t.bbox[k][c] != want[c])
                    fail_msg("image %zu box %d coord %d: %.9g, want %.9g", i, k, c, t.bbox[k][c],
                             want[c]);
            assert_int_equal(t.cls[k], b->label);
            assert_int_equal(t.crowd[k], b->iscrowd);
        }
        for (int k = t.n; k < DATASET_MAX_INSTANCES; k++) {
            assert_int_equal(t.cls[k], -1);
            assert_true(t.bbox[k][0] == -1 && t.bbox[k][3] == -1);
        }
        for (int c = 0; c < 3; c++) {
            float want = ((float)resize_imagenet_fill[c] - (float)(255 * resize_imagenet_mean[c])) /
                         (float)(255 * resize_imagenet_std[c]);
            float got = r->a[((size_t)7 * IN_W + 100) * 3 + c];
            if (got != want) fail_msg("padding channel %d: %.9g, want %.9g", c, got, want);
        }
    }
    rig_close(r);
}

/* A flipped sample is the unflipped one mirrored within the image's extent: pixels
 * dst'[y][x] = dst[y][63 - x] for x < 64, padding unchanged; boxes x1' = 64 - x2. */
static void test_flip(void **state)
{
    Fixture *f = *state;
    Rig *r = rig_open(f->dir, 6);
    float *a = r->a, *b = r->b;
    SampleTarget ta, tb;
    int flipped = 0, unflipped = 0;
    for (size_t i = 0; i < r->ds.n_images; i++) {
        load_ok(&r->s[0], 3, i, a, &ta);
        load_ok(&r->s[1], 3, i, b, &tb);
        assert_int_equal(tb.flipped, train_sample_flip(1234, 3, i));
        assert_int_equal(ta.n, tb.n);
        if (!tb.flipped) {
            unflipped++;
            assert_memory_equal(a, b, sizeof(float) * SLOT);
            continue;
        }
        flipped++;
        for (int y = 0; y < IN_H; y++)
            for (int x = 0; x < IN_W; x++)
                for (int c = 0; c < 3; c++) {
                    int sx = x < 64 ? 63 - x : x;
                    float want = a[((size_t)y * IN_W + sx) * 3 + c], got = b[((size_t)y * IN_W + x) * 3 + c];
                    if (got != want) fail_msg("sample %zu (%d, %d, %d): %.9g, want %.9g", i, y, x, c, got, want);
                }
        for (int k = 0; k < ta.n; k++) {
            float want[4] = {ta.bbox[k][0], 64 - ta.bbox[k][3], ta.bbox[k][2], 64 - ta.bbox[k][1]};
            for (int c = 0; c < 4; c++)
                if (tb.bbox[k][c] != want[c])
                    fail_msg("sample %zu box %d coord %d: %.9g, want %.9g", i, k, c, tb.bbox[k][c], want[c]);
        }
    }
    if (!flipped || !unflipped) fail_msg("%d flipped, %d not: want both", flipped, unflipped);
    rig_close(r);
}

static void test_flip_stream(void **state)
{
    int n = 0, same_epochs = 0, same_seeds = 0;
    for (size_t i = 0; i < 2000; i++) {
        int v = train_sample_flip(5, 0, i);
        n += v;
        same_epochs += v == train_sample_flip(5, 1, i);
        same_seeds += v == train_sample_flip(6, 0, i);
        assert_int_equal(v, train_sample_flip(5, 0, i));
    }
    if (n < 900 || n > 1100) fail_msg("%d of 2000 flipped", n);
    if (same_epochs > 1100 || same_seeds > 1100)
        fail_msg("flips agree across epochs %d, seeds %d of 2000 times", same_epochs, same_seeds);
}

/* Sample (epoch 2, index 3) has the same bytes loaded first in a fresh sampler or after others. */
static void test_sample_order_independent(void **state)
{
    Fixture *f = *state;
    Rig *r = rig_open(f->dir, 5);
    TrainSampler fresh;
    sampler_ok(&fresh, &r->ds, 1, 0);
    SampleTarget ta, tb;
    memset(&ta, 0, sizeof ta), memset(&tb, 0, sizeof tb);
    load_ok(&fresh, 2, 3, r->a, &ta);
    for (size_t i = 0; i < r->ds.n_images; i++) load_ok(&r->s[1], (uint32_t)(i % 3), 4 - i, r->b, &tb);
    load_ok(&r->s[1], 2, 3, r->b, &tb);
    assert_memory_equal(r->a, r->b, sizeof(float) * SLOT);
    assert_memory_equal(&ta, &tb, sizeof ta);
    train_sampler_free(&fresh);
    rig_close(r);
}

/* Boxes outside the visible region vanish; partly visible ones are clipped to it. */
static void test_transform_boxes(void **state)
{
    DatasetBox in[3] = {{10, 10, 20, 20, 2, 0}, {150, 10, 170, 20, 1, 1}, {90, 90, 200, 120, 3, 0}};
    SampleTarget t;
    /* s = 0.5 on an 80 x 40 extent, flipped: box 1 (x 75..85) is clipped to 75..80, box 2 (y 45..60)
     * lies below the extent */
    int dropped = train_transform_boxes(in, 3, 0.5, 80, 40, 1, &t);
    assert_int_equal(dropped, 1);
    assert_int_equal(t.n, 2);
    const float want[2][4] = {{5, 70, 10, 75}, {5, 0, 10, 5}};
    for (int k = 0; k < 2; k++)
        for (int c = 0; c < 4; c++)
            if (t.bbox[k][c] != want[k][c])
                fail_msg("box %d coord %d: %.9g, want %.9g", k, c, t.bbox[k][c], want[k][c]);
    assert_int_equal(t.cls[0], 2);
    assert_int_equal(t.cls[1], 1);
    assert_int_equal(t.crowd[1], 1);
    assert_int_equal(t.cls[2], -1);
}

static int is_permutation(const uint32_t *p, size_t n)
{
    uint8_t *seen = calloc(n, 1);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        ok = p[i] < n && !seen[p[i]];
        if (ok) seen[p[i]] = 1;
    }
    free(seen);
    return ok;
}

static void test_permutation(void **state)
{
    enum { N = 1000 };
    uint32_t a[N], b[N], c[N];
    train_epoch_permutation(9, 0, a, N);
    train_epoch_permutation(9, 1, b, N);
    train_epoch_permutation(9, 0, c, N);
    assert_true(is_permutation(a, N));
    assert_true(is_permutation(b, N));
    assert_memory_equal(a, c, sizeof a);
    int same = 0, fixed = 0;
    for (int i = 0; i < N; i++) same += a[i] == b[i], fixed += a[i] == (uint32_t)i;
    if (same > 20 || fixed > 20) fail_msg("epochs agree at %d places, %d fixed points", same, fixed);
    train_epoch_permutation(10, 0, c, N);
    assert_memory_not_equal(a, c, sizeof a);
    /* every order of 3 items about equally often over 6000 epochs */
    int freq[3][3] = {{0}};
    for (uint32_t e = 0; e < 6000; e++) {
        train_epoch_permutation(9, e, a, 3);
        freq[a[0]][a[1]]++;
    }
    for (int x = 0; x < 3; x++)
        for (int y = 0; y < 3; y++)
            if (x != y && (freq[x][y] < 850 || freq[x][y] > 1150))
                fail_msg("order (%d, %d, .) came %d times in 6000, want about 1000", x, y, freq[x][y]);
    uint32_t one[1];
    train_epoch_permutation(9, 0, one, 1);
    assert_int_equal(one[0], 0);
}

/* ceil(n / B) batches; the last one wraps to the start of the order; together they cover all. */
static void test_batches(void **state)
{
    enum { N = 10, B = 4 };
    uint32_t perm[N], idx[B], count[N] = {0};
    train_epoch_permutation(1, 0, perm, N);
    assert_int_equal(train_batches_per_epoch(N, B), 3);
    assert_int_equal(train_batches_per_epoch(3, B), 1);
    for (size_t b = 0; b < 3; b++) {
        train_batch_indices(perm, N, b, B, idx);
        for (int j = 0; j < B; j++) count[idx[j]]++;
    }
    assert_int_equal(idx[2], perm[0]);
    assert_int_equal(idx[3], perm[1]);
    for (int i = 0; i < N; i++) assert_true(count[i] >= 1);
}

/* A batch is its samples: slot j holds sample perm[b * B + j] of the epoch. */
static void test_batch_load(void **state)
{
    Fixture *f = *state;
    Rig *r = rig_open(f->dir, 5);
    SampleTarget t[2], t1;
    Err err = {{0}};
    uint32_t perm[5], idx[2];
    train_epoch_permutation(1234, 4, perm, 5);
    train_batch_indices(perm, 5, 2, 2, idx);
    if (train_batch_load(&r->s[1], 4, 2, 2, r->a, t, &err) != 0) fail_msg("batch: %s", err.msg);
    for (int j = 0; j < 2; j++) {
        assert_int_equal(t[j].index, idx[j]);
        load_ok(&r->s[1], 4, idx[j], r->b, &t1);
        assert_memory_equal(r->b, r->a + j * SLOT, sizeof(float) * SLOT);
    }
    rig_close(r);
}

/* An unreadable image is an error naming it, or with skip_corrupt the next index, counted. */
static void test_corrupt_image(void **state)
{
    Fixture *f = *state;
    Rig *r = rig_open(f->dir, 3);
    char path[256];
    snprintf(path, sizeof path, "%s/images/000000000002.jpg", r->data);
    FILE *fp = fopen(path, "wb");
    fputs("not a jpeg at all", fp);
    fclose(fp);
    SampleTarget t;
    Err err = {{0}};
    assert_int_equal(train_sample_load(&r->s[1], 0, 1, r->a, &t, &err), -1);
    if (!strstr(err.msg, "000000000002.jpg")) fail_msg("error \"%s\" does not name the file", err.msg);
    TrainSampler skip;
    sampler_ok(&skip, &r->ds, 1, 1);
    load_ok(&skip, 0, 1, r->a, &t);
    assert_int_equal(t.index, 2);
    assert_int_equal(t.image_id, 3);
    assert_int_equal(t.flipped, train_sample_flip(1234, 0, 2));
    assert_int_equal(skip.skipped, 1);
    train_sampler_free(&skip);
    rig_close(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_index_contiguous_labels, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_ids_as_labels, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_clip_and_drop, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_instance_limit, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_letterbox_scale, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_flip, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test(test_flip_stream),
        cmocka_unit_test_setup_teardown(test_sample_order_independent, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test(test_transform_boxes),
        cmocka_unit_test(test_permutation),
        cmocka_unit_test(test_batches),
        cmocka_unit_test_setup_teardown(test_batch_load, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_image, tmpdir_setup, tmpdir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
