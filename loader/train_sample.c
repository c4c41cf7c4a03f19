/* train_sample.c: the training sample transform and the epoch order (see train_sample.h).
 *
 * DESIGN
 * - Streams: Philox key = seed; counter high word = tag << 24 | epoch, low word = sample index
 *   (flip) or 0 (permutation). Tags keep the two apart, and apart from synth.c's stream. Epochs
 *   therefore go up to 2^24 - 1. Later augmentations draw after the flip from the same sample
 *   stream, so adding one never changes another sample's randomness.
 * - The sampler holds the decode and canvas images and reuses them: after the first sample of a
 *   given size there is no allocation except the resampler's temporary.
 * - The image and its boxes share one letterbox geometry, computed here with resize.c's arithmetic
 *   (train_letterbox_geometry) and checked against the canvas letterbox_rgb produced. */
#include "loader/train_sample.h"

#include <stdlib.h>
#include <string.h>

#include "augment/resize.h"
#include "shared/check.h"
#include "shared/log.h"
#include "shared/rng.h"

#define STREAM_SAMPLE 0x41u /* 'A' */
#define STREAM_PERM 0x50u   /* 'P' */

static void rng_for(Rng *r, uint64_t seed, uint32_t tag, uint32_t epoch, uint32_t lo)
{
    ASSERT(epoch < (1u << 24));
    rng_init(r, seed, tag << 24 | epoch, lo);
}

/* Uniform in [0, bound), unbiased (Lemire's multiply-shift with rejection). */
static uint32_t rng_below(Rng *r, uint32_t bound)
{
    uint64_t m = (uint64_t)rng_u32(r) * bound;
    if ((uint32_t)m < bound) {
        uint32_t floor = (0u - bound) % bound;
        while ((uint32_t)m < floor) m = (uint64_t)rng_u32(r) * bound;
    }
    return (uint32_t)(m >> 32);
}

int train_sample_flip(uint64_t seed, uint32_t epoch, size_t index)
{
    Rng r;
    rng_for(&r, seed, STREAM_SAMPLE, epoch, (uint32_t)index);
    return rng_uniform(&r) < 0.5f;
}

void train_letterbox_geometry(int w, int h, int target_h, int target_w, double *s, int *scaled_w,
                              int *scaled_h)
{
    /* resize.c's letterbox_rgb, which is effdet's Python: double division, int() truncation */
    double sy = (double)target_h / h, sx = (double)target_w / w;
    *s = sx < sy ? sx : sy;
    *scaled_w = (int)(w * *s), *scaled_h = (int)(h * *s);
}

static float clamp_box(float v, float hi) { return v < 0 ? 0 : v > hi ? hi : v; }

int train_crop_boxes(const DatasetBox *boxes, int n, double s, int off_x, int off_y, int bound_w,
                     int bound_h, int flip_w, SampleTarget *t)
{
    float sf = (float)s, ox = (float)off_x, oy = (float)off_y;
    float bw = (float)bound_w, bh = (float)bound_h, fw = (float)flip_w;
    int k = 0;
    for (int i = 0; i < n; i++) {
        const DatasetBox *b = &boxes[i];
        float y1 = clamp_box(b->y1 * sf - oy, bh), x1 = clamp_box(b->x1 * sf - ox, bw);
        float y2 = clamp_box(b->y2 * sf - oy, bh), x2 = clamp_box(b->x2 * sf - ox, bw);
        if (!(x1 < x2 && y1 < y2)) continue;
        if (flip_w > 0) { /* effdet _fliph: x_max = width - x_min, x_min = width - x_max */
            float fx1 = fw - x2, fx2 = fw - x1;
            x1 = fx1, x2 = fx2;
        }
        t->bbox[k][0] = y1, t->bbox[k][1] = x1, t->bbox[k][2] = y2, t->bbox[k][3] = x2;
        t->cls[k] = b->label, t->crowd[k] = (uint8_t)(b->iscrowd != 0);
        k++;
    }
    t->n = k;
    train_target_pad(t);
    return n - k;
}

int train_transform_boxes(const DatasetBox *boxes, int n, double s, int scaled_w, int scaled_h,
                          int flip, SampleTarget *t)
{
    return train_crop_boxes(boxes, n, s, 0, 0, scaled_w, scaled_h, flip ? scaled_w : 0, t);
}

void train_target_pad(SampleTarget *t)
{
    for (int i = t->n; i < DATASET_MAX_INSTANCES; i++) {
        for (int c = 0; c < 4; c++) t->bbox[i][c] = -1;
        t->cls[i] = -1, t->crowd[i] = 0;
    }
}

int train_sampler_init(TrainSampler *s, const Dataset *ds, const TrainSampleConfig *cfg, Err *err)
{
    memset(s, 0, sizeof *s);
    s->perm_epoch = -1;
    if (cfg->height < 1 || cfg->width < 1 || cfg->height > RESIZE_MAX_SIDE ||
        cfg->width > RESIZE_MAX_SIDE)
        return err_set(err, "input size %dx%d: each side must be in [1, %d]", cfg->height,
                       cfg->width, RESIZE_MAX_SIDE);
    if (ds->n_images == 0) return err_set(err, "the dataset has no images");
    if (ds->n_images > UINT32_MAX)
        return err_set(err, "%zu images: at most 2^32 - 1", ds->n_images);
    s->ds = ds;
    s->cfg = *cfg;
    return 0;
}

void train_sampler_free(TrainSampler *s)
{
    rgb_image_free(&s->decoded);
    rgb_image_free(&s->canvas);
    free(s->perm);
    memset(s, 0, sizeof *s);
    s->perm_epoch = -1;
}

/* The transform of one readable image; -1 with err naming the file when it is not readable. */
static int sample_transform(TrainSampler *s, uint32_t epoch, size_t index, float *dst,
                            SampleTarget *t, Err *err)
{
    const DatasetImage *im = &s->ds->images[index];
    int th = s->cfg.height, tw = s->cfg.width;
    float img_scale;
    if (jpeg_decode_file(im->path, NULL, &s->decoded, err) != 0) return -1;
    if (letterbox_rgb(&s->decoded, th, tw, resize_imagenet_fill, RESIZE_BILINEAR, &s->canvas,
                      &img_scale, err) != 0)
        return err_wrap(err, "%s: ", im->path);
    double sc;
    int sw, sh;
    train_letterbox_geometry(s->decoded.w, s->decoded.h, th, tw, &sc, &sw, &sh);
    ASSERT(img_scale == (float)(1.0 / sc));
    int flip = s->cfg.hflip && train_sample_flip(s->cfg.seed, epoch, index);
    if (flip) {
        for (int y = 0; y < sh; y++) {
            uint8_t *row = s->canvas.px + (size_t)y * tw * 3;
            for (int a = 0, b = sw - 1; a < b; a++, b--) {
                uint8_t tmp[3];
                memcpy(tmp, row + 3 * a, 3);
                memcpy(row + 3 * a, row + 3 * b, 3);
                memcpy(row + 3 * b, tmp, 3);
            }
        }
    }
    normalize_rgb_to_nhwc(&s->canvas, dst, resize_imagenet_mean, resize_imagenet_std);
    s->boxes_dropped += (size_t)train_transform_boxes(&s->ds->boxes[im->first_box], im->n_boxes,
                                                      sc, sw, sh, flip, t);
    t->img_scale = img_scale;
    t->img_w = s->decoded.w, t->img_h = s->decoded.h;
    t->scaled_w = sw, t->scaled_h = sh;
    t->image_id = im->id;
    t->index = (uint32_t)index;
    t->flipped = flip;
    return 0;
}

int train_sample_load(TrainSampler *s, uint32_t epoch, size_t index, float *dst, SampleTarget *t,
                      Err *err)
{
    size_t n = s->ds->n_images;
    ASSERT(index < n);
    for (size_t tries = 0; tries < n; tries++) {
        size_t i = (index + tries) % n;
        if (sample_transform(s, epoch, i, dst, t, err) == 0) return 0;
        if (!s->cfg.skip_corrupt) return -1;
        log_warn("skipping unreadable image: %s", err->msg);
        s->skipped++;
    }
    return err_set(err, "none of the %zu images of the dataset could be read (last: %s)", n,
                   err->msg);
}

void train_epoch_permutation(uint64_t seed, uint32_t epoch, uint32_t *perm, size_t n)
{
    ASSERT(n <= UINT32_MAX);
    Rng r;
    rng_for(&r, seed, STREAM_PERM, epoch, 0);
    for (size_t i = 0; i < n; i++) perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        uint32_t j = rng_below(&r, (uint32_t)i), tmp = perm[i - 1];
        perm[i - 1] = perm[j], perm[j] = tmp;
    }
}

size_t train_batches_per_epoch(size_t n, int batch_size)
{
    ASSERT(batch_size > 0);
    return (n + (size_t)batch_size - 1) / (size_t)batch_size;
}

static uint32_t batch_slot(const uint32_t *perm, size_t n, size_t b, int batch_size, int j)
{
    return perm[(b * (size_t)batch_size + (size_t)j) % n];
}

void train_batch_indices(const uint32_t *perm, size_t n, size_t b, int batch_size, uint32_t *out)
{
    for (int j = 0; j < batch_size; j++) out[j] = batch_slot(perm, n, b, batch_size, j);
}

int train_batch_load(TrainSampler *s, uint32_t epoch, size_t b, int batch_size, float *images,
                     SampleTarget *targets, Err *err)
{
    size_t n = s->ds->n_images, slot = (size_t)s->cfg.height * s->cfg.width * 3;
    if (s->perm_epoch != (int64_t)epoch) {
        if (!s->perm) s->perm = malloc(sizeof *s->perm * n);
        ASSERT(s->perm);
        train_epoch_permutation(s->cfg.seed, epoch, s->perm, n);
        s->perm_epoch = epoch;
    }
    for (int j = 0; j < batch_size; j++) {
        uint32_t idx = batch_slot(s->perm, n, b, batch_size, j);
        if (train_sample_load(s, epoch, idx, images + (size_t)j * slot, &targets[j], err) != 0)
            return -1;
    }
    return 0;
}
