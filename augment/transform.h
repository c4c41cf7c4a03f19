/* transform.h: effdet's train and eval transforms for one sample, from a decoded image and its
 * boxes to one normalized NHWC image of the batch and its target (what the augment process runs).
 *
 * Train (effdet transforms_coco_train = RandomResizePad + RandomFlip, automl's equivalent):
 *   scale_factor ~ U[scale_min, scale_max] (0.1, 2.0 by default)
 *   img_scale = min(H * scale_factor / h, W * scale_factor / w)   (h, w: the ORIGINAL image size,
 *               i.e. the annotation's, whatever resolution the image was decoded at)
 *   scaled = (int(w * img_scale), int(h * img_scale))
 *   offset_y = int(max(0, scaled_h - H) * U[0, 1)), offset_x likewise
 *   the image resized to scaled (bilinear, bicubic or one of the two at random), the window
 *   [offset_x, min(scaled_w, offset_x + W)) x [offset_y, ...) pasted at the top-left of an H x W
 *   canvas filled with the fill colour (the ImageNet mean colour or 0);
 *   boxes: * img_scale, - offset, clipped to [0, min(scaled, target)] per axis, kept when
 *   x1 < x2 and y1 < y2; then with p = 0.5 the whole canvas is mirrored (effdet's RandomFlip:
 *   x' = W - x, padding moves to the left), boxes with it.
 *   target.img_scale = 1 / img_scale.
 * Eval (effdet transforms_coco_eval = ResizePad): letterbox_rgb (PIL-exact, bilinear by default),
 *   boxes * s clipped to the scaled image, img_scale = 1 / s; no randomness. Boxes multiplied by
 *   img_scale (divided by s) map back to original pixels.
 *
 * Randomness: every draw of a sample comes from Philox keyed by the seed with a stream of its own
 * for (epoch, index): the same (seed, epoch, index) gives the same parameters in any process and
 * in any order. aug_train_params draws them; the loader uses them too (aug_train_image_scale) to
 * pick a reduced JPEG decode scale.
 *
 * Output: dst is (H, W, 3) of dtype ST_F32, ST_F16 or ST_BF16: ((p - 255 * mean) / (255 * std))
 * computed in float32 exactly as normalize_rgb_to_nhwc does, then rounded to nearest-even for
 * F16/BF16. Boxes go to a SampleTarget (loader/train_sample.h: yxyx in canvas pixels, 1-based
 * labels, crowd flags, rows >= n padded with -1). */
#ifndef EFFDET_AUGMENT_TRANSFORM_H
#define EFFDET_AUGMENT_TRANSFORM_H

#include <stddef.h>
#include <stdint.h>

#include "augment/resize.h"
#include "loader/dataset.h"
#include "loader/jpeg.h"
#include "loader/train_sample.h"
#include "shared/err.h"
#include "shared/safetensors.h"

typedef enum AugInterp { AUG_BILINEAR, AUG_BICUBIC, AUG_RANDOM } AugInterp;

typedef struct AugConfig {
    int height, width;            /* model input size H x W */
    uint64_t seed;
    double scale_min, scale_max;  /* train scale jitter; 0.1 and 2.0 by default */
    int hflip;                    /* train: 1 flips with p = 0.5 */
    AugInterp interp;             /* train interpolation (effdet: random); eval uses eval_filter */
    ResizeFilter eval_filter;     /* bilinear by default, as effdet's eval loader */
    uint8_t fill[3];              /* canvas fill: resize_imagenet_fill (mean) or {0, 0, 0} */
    StDtype dtype;                /* ST_F32 (default), ST_F16 or ST_BF16 */
} AugConfig;

/* H x W, seed 0, scale 0.1 .. 2.0, flip on, random interpolation, mean fill, F32. */
AugConfig aug_config_default(int height, int width);

typedef struct AugTrainParams {
    double scale_factor; /* U[scale_min, scale_max] */
    double u_y, u_x;     /* U[0, 1): the crop offsets' fractions */
    int flip;            /* 0 or 1 (0 when cfg->hflip is 0) */
    ResizeFilter filter;
} AugTrainParams;

/* The random parameters of sample (epoch, index); epoch < 2^24 and index < 2^32 (the stream
 * layout, see transform.c; larger values are a programming error and abort). */
void aug_train_params(const AugConfig *cfg, uint32_t epoch, uint64_t index, AugTrainParams *p);

/* img_scale of the train transform for an original w x h image (see the top). */
double aug_train_image_scale(const AugConfig *cfg, const AugTrainParams *p, int w, int h);

/* Scratch reused across samples (no allocation once sizes settle). Zero-initialize; free with
 * aug_scratch_free. */
typedef struct AugScratch {
    RgbImage canvas;
} AugScratch;
void aug_scratch_free(AugScratch *s);

/* One training sample. img is the decoded image (any resolution: a reduced-scale decode is
 * resampled as if it were the orig_w x orig_h original); boxes are in original pixels (xyxy, as
 * Dataset keeps them). Writes dst (H, W, 3) of cfg->dtype and t (n, bbox, cls, crowd, img_scale,
 * img_w = orig_w, img_h = orig_h, scaled_w/h, flipped; image_id and index are the caller's).
 * scaled_w/h is the resized image's size before the crop; its visible part on the canvas is
 * min(scaled, target) per axis. A scaled side of 0 is clamped to 1 (PIL would raise there).
 * Returns the number of boxes dropped by the transform, or -1 with err set. */
int aug_train_apply(const AugConfig *cfg, const AugTrainParams *p, const RgbImage *img, int orig_w,
                    int orig_h, const DatasetBox *boxes, int n_boxes, AugScratch *s, void *dst,
                    SampleTarget *t, Err *err);

/* One evaluation sample (no randomness); img must be the full-resolution decode. Same outputs. */
int aug_eval_apply(const AugConfig *cfg, const RgbImage *img, const DatasetBox *boxes, int n_boxes,
                   AugScratch *s, void *dst, SampleTarget *t, Err *err);

/* Normalizes an RGB canvas (H, W, 3) into dst of dtype (see the top). */
void aug_normalize(const RgbImage *canvas, StDtype dtype, void *dst);

/* Bytes of one (H, W, 3) image of cfg->dtype. */
size_t aug_image_bytes(const AugConfig *cfg);

/* The float32 -> float16 / bfloat16 conversions aug_normalize uses: round to nearest, ties to
 * even (subnormals, overflow to infinity; NaN stays NaN), as torch's .half() / .bfloat16(). */
uint16_t aug_f32_to_f16(float f);
uint16_t aug_f32_to_bf16(float f);

#endif
