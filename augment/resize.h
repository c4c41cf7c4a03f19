/* resize.h: PIL-exact resampling of 8-bit RGB, effdet's eval ResizePad, and input normalization.
 *
 * resize_rgb gives the same bytes as Pillow's `img.resize((w, h), Image.BILINEAR | BICUBIC)` on an
 * RGB image; letterbox_rgb is effdet's `ResizePad` (transforms.py); normalize_rgb_to_nhwc is the
 * arithmetic of effdet's PrefetchLoader. Conventions, rounding and sources are in resize.c. */
#ifndef EFFDET_AUGMENT_RESIZE_H
#define EFFDET_AUGMENT_RESIZE_H

#include <stdint.h>

#include "loader/jpeg.h" /* RgbImage */
#include "shared/err.h"

typedef enum ResizeFilter {
    RESIZE_BILINEAR, /* PIL Image.BILINEAR: triangle filter, support 1 */
    RESIZE_BICUBIC,  /* PIL Image.BICUBIC: Keys cubic with a = -0.5, support 2 */
} ResizeFilter;

/* Largest width or height resize_rgb and letterbox_rgb accept, in or out (JPEG's own limit). */
#define RESIZE_MAX_SIDE 65535

/* ImageNet statistics as effdet passes them (IMAGENET_DEFAULT_MEAN / _STD), and the eval fill
 * colour round(255 * mean) = (124, 116, 104) that effdet's fill_color='mean' resolves to. Doubles,
 * because effdet forms 255 * x in double before storing float32, and for 0.224 that differs from
 * doing it in float. */
extern const double resize_imagenet_mean[3];
extern const double resize_imagenet_std[3];
extern const uint8_t resize_imagenet_fill[3];

/* Resamples src to out_w x out_h into dst (allocated or reused as rgb_image_alloc does; dst must
 * not be src). Uses one temporary allocation (filter coefficients and the horizontal pass), freed
 * before returning. */
int resize_rgb(const RgbImage *src, int out_w, int out_h, ResizeFilter f, RgbImage *dst, Err *err);

/* The region [x0, x0 + w) x [y0, y0 + h) of what resize_rgb(src, out_w, out_h, f) would produce,
 * written to dst (rows dst_stride bytes apart), computing only that region: the train transform
 * crops a window out of an image scaled up to 2x, so most of a full resize would be thrown away.
 * The bytes equal the same region of resize_rgb's output; bytes of dst outside the region's rows
 * of 3 * w are left alone. Fails with one line in err if the region is empty or not inside
 * out_w x out_h, or dst_stride < 3 * w. Uses one temporary allocation (the plans for the region's
 * rows and columns and a few resampled rows), freed before returning. */
int resize_rgb_region(const RgbImage *src, int out_w, int out_h, int x0, int y0, int w, int h,
                      ResizeFilter f, uint8_t *dst, size_t dst_stride, Err *err);

/* effdet ResizePad: scales src by s = min(target_h / h, target_w / w) to (int)(w * s) x
 * (int)(h * s), places it at the top-left of a target_w x target_h canvas of colour fill, and sets
 * *img_scale = 1 / s (float32, as effdet's target["img_scale"]), the factor that maps boxes on the
 * canvas back to src pixels. Fails if a scaled side would be 0 (PIL would raise there too).
 * dst must not be src. */
int letterbox_rgb(const RgbImage *src, int target_h, int target_w, const uint8_t fill[3],
                  ResizeFilter f, RgbImage *dst, float *img_scale, Err *err);

/* round(255 * mean) per channel, as effdet's resolve_fill_color('mean'). */
void resize_fill_from_mean(const double mean[3], uint8_t fill[3]);

/* dst[y][x][c] = ((float)p - m[c]) / s[c] with m = float(255 * mean), s = float(255 * std), all in
 * float32 as effdet's `x.float().sub_(mean).div_(std)`. dst is one image of the model's input
 * batch: (src->h, src->w, 3), i.e. batch + index * h * w * 3 for NHWC. */
void normalize_rgb_to_nhwc(const RgbImage *src, float *dst, const double mean[3],
                           const double std[3]);

#endif
