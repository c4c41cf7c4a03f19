/* train_sample.h: one training sample, from dataset index to model input and target, and the
 * epoch order of samples (the single-process data path; the augment process reuses the per-sample
 * part).
 *
 * A sample (seed, epoch, index) is: decode the JPEG (gray and CMYK become RGB) -> effdet's
 * ResizePad letterbox to the model size (bilinear, image at the top-left, the rest filled with the
 * ImageNet mean colour) -> horizontal flip of the image's region with probability 0.5 -> ImageNet
 * normalization into one float (H, W, 3) slot of the NHWC batch. Boxes follow the same steps in
 * effdet's order and arithmetic: scaled by s (float32, as numpy multiplies a float32 array),
 * clipped to the visible region [0, scaled_w] x [0, scaled_h], dropped unless x1 < x2 and y1 < y2,
 * then mirrored within the visible width: x1' = scaled_w - x2, x2' = scaled_w - x1.
 *
 * The flip mirrors only the image's own region, so padding stays at the right and bottom as at
 * evaluation (effdet's RandomFlip mirrors the whole padded canvas, moving the padding to the left
 * in flipped samples; keeping the eval geometry means img_scale maps boxes back the same way for
 * every sample).
 *
 * Randomness is Philox keyed by the seed: the flip uses the stream (epoch, index), the epoch order
 * the stream (epoch); neither depends on call order, process or what was loaded before. */
#ifndef EFFDET_LOADER_TRAIN_SAMPLE_H
#define EFFDET_LOADER_TRAIN_SAMPLE_H

#include <stddef.h>
#include <stdint.h>

#include "loader/dataset.h"
#include "loader/jpeg.h"
#include "shared/err.h"

/* effdet's per-image target, as DetectionFastCollate lays it out; bbox, cls and crowd go to
 * labeler_label_image (worker/labeler.h) as they are, with n_boxes = DATASET_MAX_INSTANCES. */
typedef struct SampleTarget {
    float bbox[DATASET_MAX_INSTANCES][4]; /* y1, x1, y2, x2 in input pixels; rows >= n are -1 */
    int32_t cls[DATASET_MAX_INSTANCES];   /* labels 1..num_classes; -1 for rows >= n */
    uint8_t crowd[DATASET_MAX_INSTANCES]; /* 1: crowd box (the labeler ignores it); 0 otherwise */
    int32_t n;                            /* boxes kept */
    float img_scale;        /* 1 / s: input pixels -> original pixels (effdet's img_scale) */
    int32_t img_w, img_h;   /* original image size (effdet's img_size) */
    int32_t scaled_w, scaled_h; /* the image's extent on the input canvas */
    int64_t image_id;
    uint32_t index;         /* dataset index loaded (the next readable one after a skip) */
    int32_t flipped;
} SampleTarget;

typedef struct TrainSampleConfig {
    int height, width; /* model input size */
    uint64_t seed;
    int hflip;         /* 1: random horizontal flip with p = 0.5; 0: never */
    int skip_corrupt;  /* 0: an unreadable image is an error naming the file; 1: it is replaced by
                          the next index (wrapping), counted in TrainSampler.skipped */
} TrainSampleConfig;

typedef struct TrainSampler {
    const Dataset *ds;
    TrainSampleConfig cfg;
    RgbImage decoded, canvas; /* reused across samples */
    size_t skipped;           /* unreadable images replaced (skip_corrupt) */
    size_t boxes_dropped;     /* boxes that vanished in the transform (clipped to nothing) */
    uint32_t *perm;           /* (ds->n_images) order of perm_epoch */
    int64_t perm_epoch;       /* -1: none yet */
} TrainSampler;

/* s keeps a pointer to ds. Checks the size and that the dataset fits 32-bit indices. */
int train_sampler_init(TrainSampler *s, const Dataset *ds, const TrainSampleConfig *cfg, Err *err);
void train_sampler_free(TrainSampler *s);

/* Sample index of epoch into dst (height, width, 3) and *t. */
int train_sample_load(TrainSampler *s, uint32_t epoch, size_t index, float *dst, SampleTarget *t,
                      Err *err);

/* 1 when sample (seed, epoch, index) is flipped (before cfg.hflip is applied). */
int train_sample_flip(uint64_t seed, uint32_t epoch, size_t index);

/* effdet ResizePad geometry: s = min(th / h, tw / w) in double and the scaled extent. */
void train_letterbox_geometry(int w, int h, int target_h, int target_w, double *s, int *scaled_w,
                              int *scaled_h);

/* Boxes of a scaled and cropped image, in effdet's float32 arithmetic: each coordinate times
 * (float)s, minus the crop offset, clipped to [0, bound_w] x [0, bound_h]; kept when x1 < x2 and
 * y1 < y2; then, when flip_w > 0, mirrored within [0, flip_w]. Into t (yxyx, padded). Returns the
 * number of boxes dropped. n is at most DATASET_MAX_INSTANCES. */
int train_crop_boxes(const DatasetBox *boxes, int n, double s, int off_x, int off_y, int bound_w,
                     int bound_h, int flip_w, SampleTarget *t);

/* The box part of the transform: boxes (image pixels) -> t->bbox/cls/crowd/n with padding
 * (train_crop_boxes with no crop, mirrored within the scaled width). Returns the number of boxes
 * dropped. */
int train_transform_boxes(const DatasetBox *boxes, int n, double s, int scaled_w, int scaled_h,
                          int flip, SampleTarget *t);

/* Rows t->n .. DATASET_MAX_INSTANCES - 1 of t set to the padding (-1 boxes and labels, crowd 0),
 * as DetectionFastCollate pads. */
void train_target_pad(SampleTarget *t);

/* The order of epoch: a Fisher-Yates shuffle of 0..n-1 drawn from (seed, epoch). */
void train_epoch_permutation(uint64_t seed, uint32_t epoch, uint32_t *perm, size_t n);

/* ceil(n / batch_size): every sample is seen each epoch; the last batch is completed with the
 * start of the same epoch's order, so every batch is full (fixed shapes for the arena). */
size_t train_batches_per_epoch(size_t n, int batch_size);
/* Sample indices of batch b: perm[(b * batch_size + j) % n] for j < batch_size. */
void train_batch_indices(const uint32_t *perm, size_t n, size_t b, int batch_size, uint32_t *out);

/* Batch b of epoch: images (batch_size, height, width, 3) and targets (batch_size). */
int train_batch_load(TrainSampler *s, uint32_t epoch, size_t b, int batch_size, float *images,
                     SampleTarget *targets, Err *err);

#endif
