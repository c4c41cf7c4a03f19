/* synth.h: a synthetic COCO-format detection dataset, for training tests and demos without COCO.
 *
 * Each image is a muted gradient-plus-noise background with 1..6 saturated shapes. A class is a
 * (shape, colour family) pair: rectangles, disks and triangles in red, green, blue, yellow,
 * magenta and cyan, chosen so that the first classes differ in both shape and colour (class 0 a red
 * rectangle, 1 a green disk, 2 a blue triangle, ...). Category ids are deliberately not contiguous
 * (1, 3, 7, 8, ...), as COCO's are not. Objects never overlap, so every box is the exact tight box
 * of the pixels drawn for that object: pixel (x, y) covers [x, x + 1) x [y, y + 1), and a box is
 * [min x, max x + 1) x [min y, max y + 1). About 5% of annotations are crowd regions (a cluster of
 * small disks of one class, iscrowd = 1, area = the pixels drawn) and about 15% of the images are
 * written as 1-channel grayscale JPEGs.
 *
 * Everything is a function of (seed, image index) through Philox streams, so the same config gives
 * byte-identical files on any machine and any image can be rendered alone. */
#ifndef EFFDET_LOADER_SYNTH_H
#define EFFDET_LOADER_SYNTH_H

#include <stdint.h>

#include "loader/jpeg.h"
#include "shared/err.h"

enum {
    SYNTH_MAX_CLASSES = 18,  /* 3 shapes x 6 colour families */
    SYNTH_MAX_OBJECTS = 6,   /* per image */
    SYNTH_DEFAULT_W = 320,
    SYNTH_DEFAULT_H = 240,
    SYNTH_DEFAULT_CLASSES = 3,
    SYNTH_MIN_SIDE = 32,     /* image sides allowed */
    SYNTH_MAX_SIDE = 4096,
};

typedef enum { SYNTH_RECT = 0, SYNTH_DISK = 1, SYNTH_TRIANGLE = 2 } SynthShape;

typedef struct SynthConfig {
    uint64_t seed;
    int n_images;
    int width, height; /* base size; each side varies by up to +-25% per image unless fixed_size */
    int fixed_size;    /* 1: every image is exactly width x height */
    int n_classes;     /* 1 .. SYNTH_MAX_CLASSES */
} SynthConfig;

/* One drawn object and its annotation. */
typedef struct SynthObject {
    int cls;         /* 0-based class; category id is synth_category_id(cls) */
    int iscrowd;
    int bbox[4];     /* x, y, w, h: the tight box of the drawn pixels */
    int64_t area;    /* w * h, or for a crowd region the number of pixels drawn */
} SynthObject;

/* One rendered image before JPEG encoding. */
typedef struct SynthImage {
    RgbImage rgb;     /* (h, w, 3); for a grayscale image R = G = B = the written gray level */
    uint8_t *mask;    /* (h, w): 0 background, k + 1 where object k was drawn */
    int gray;         /* 1: written as a 1-channel JPEG */
    int n_objects;
    SynthObject obj[SYNTH_MAX_OBJECTS];
} SynthImage;

/* seed 0, 0 images, 320 x 240 varying, 3 classes. */
void synth_config_default(SynthConfig *cfg);

/* Checks the fields (image count >= 1, sides in [SYNTH_MIN_SIDE, SYNTH_MAX_SIDE], classes in
 * range). */
int synth_config_check(const SynthConfig *cfg, Err *err);

/* The COCO category id of class cls (0-based), and its name ("red_rectangle"). */
int synth_category_id(int cls);
const char *synth_class_name(int cls, char *buf, int cap);
SynthShape synth_class_shape(int cls);

/* Renders image index (0-based; its COCO id is index + 1) into img, reusing img's buffers when the
 * size repeats. img must be zero-initialized before first use; free it with synth_image_free. */
int synth_render(const SynthConfig *cfg, int index, SynthImage *img, Err *err);
void synth_image_free(SynthImage *img);

/* Writes out_dir/images/<12-digit id>.jpg for every image and out_dir/annotations.json (written
 * to a temporary name, fsynced and renamed). Creates out_dir (its parent must exist) and
 * out_dir/images. *n_annotations (may be NULL) receives the annotation count. */
int synth_write_dataset(const char *out_dir, const SynthConfig *cfg, int64_t *n_annotations,
                        Err *err);

#endif
