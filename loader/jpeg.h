/* jpeg.h: JPEG decode/encode (TurboJPEG) into packed 8-bit RGB images, and the RgbImage type.
 *
 * An RgbImage is (h, w, 3) uint8, rows packed without padding, R then G then B. The pixels match
 * what effdet gets from `PIL.Image.open(path).convert('RGB')` for the same libjpeg-turbo build:
 * same IDCT (islow) and chroma upsampling (fancy), grayscale replicated into R=G=B, and CMYK/YCCK
 * converted the way Pillow does it (Adobe inverted CMYK, see jpeg.c). Scaled decode (1/2, 1/4,
 * 1/8) is faster but is not what PIL does, so it stays off (min_w = min_h = 0) for eval parity.
 *
 * Errors (missing, empty or non-regular file, not a JPEG, truncated or corrupt data, absurd size)
 * return -1 with one line in Err naming the file; nothing here prints or exits. */
#ifndef EFFDET_LOADER_JPEG_H
#define EFFDET_LOADER_JPEG_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

typedef struct RgbImage {
    int w, h;
    uint8_t *px; /* (h, w, 3) */
} RgbImage;

/* Makes img hold a w x h image with unspecified pixels. An img that already holds exactly w x h
 * keeps its buffer, so loops can reuse one image; otherwise the old buffer is freed. img must be
 * zero-initialized before its first use ({0}). */
int rgb_image_alloc(RgbImage *img, int w, int h, Err *err);

/* Frees the pixels and zeroes the struct; safe to call twice and on a zeroed image. */
void rgb_image_free(RgbImage *img);

/* Largest decoded image accepted by default (pixels): 1 << 27 is 134 Mpx, 403 MB of RGB, far above
 * any detection dataset and far below what a forged header can claim (65535 x 65535). */
#define JPEG_MAX_PIXELS_DEFAULT ((int64_t)1 << 27)

typedef struct JpegDecodeOptions {
    /* Scaled decode: the smallest scale 1/1, 1/2, 1/4 or 1/8 whose output keeps w >= min_w and
     * h >= min_h. 0 and 0 decode at full size (what PIL does). */
    int min_w, min_h;
    /* 0 (PIL's behaviour): libjpeg warnings about damaged data that still decodes (extraneous bytes
     * before a marker, ...) are accepted; truncated data is always an error. 1: every libjpeg
     * warning is an error. */
    int strict;
    /* Cap on the JPEG's w * h as its header states it (before scaling), checked before any pixel
     * memory is allocated; 0 means JPEG_MAX_PIXELS_DEFAULT. */
    int64_t max_pixels;
    /* When > 0: the header's (full-size) width and height must not exceed these, whatever the
     * decode scale (the loader passes the annotation's size, which its slots are sized from). */
    int max_w, max_h;
} JpegDecodeOptions;

/* Decodes len bytes of a JPEG into out (see rgb_image_alloc for reuse). name labels error messages
 * (the file name). opt may be NULL for full-size, non-strict, default cap. */
int jpeg_decode_mem(const uint8_t *buf, size_t len, const char *name, const JpegDecodeOptions *opt,
                    RgbImage *out, Err *err);

/* Reads path and decodes it as jpeg_decode_mem does. Directories and other non-regular files are
 * refused before reading. */
int jpeg_decode_file(const char *path, const JpegDecodeOptions *opt, RgbImage *out, Err *err);

/* The full-size (unscaled) w x h that the JPEG's frame header states, without decoding pixels, for
 * sizing buffers before a decode. The same checks as jpeg_decode_mem with default options apply up
 * to the header: the SOI marker, header warnings accepted, w * h at most JPEG_MAX_PIXELS_DEFAULT.
 * Damage after the header is not seen, so a later decode can still fail. On error *w = *h = 0. */
int jpeg_read_header_mem(const uint8_t *buf, size_t len, const char *name, int *w, int *h,
                         Err *err);

/* Encodes img as a baseline JPEG (4:4:4 chroma, so thin coloured lines survive) at quality 1..100.
 * *out is malloc'ed (free() it) and *out_len is its size. */
int jpeg_encode_rgb(const RgbImage *img, int quality, uint8_t **out, size_t *out_len, Err *err);

/* Encodes img and writes it to path. */
int jpeg_write_file(const char *path, const RgbImage *img, int quality, Err *err);

#endif
