/* dataset.h: the training dataset index: a COCO annotation file plus an images directory, read
 * into per-image box lists with 1-based class labels, ready for the sample transform.
 *
 * Labels (effdet's CocoParser): when every category id lies in 1..num_classes the ids are the
 * labels themselves (effdet's cat_ids_as_labels, what the 90-class COCO configs use: COCO's 80
 * categories keep ids 1..90 with gaps); otherwise the K categories get labels 1..K in ascending id
 * order, and K > num_classes is an error. label_to_category is the inverse, for results files.
 *
 * Boxes are kept in image pixels as corners (x1, y1, x2, y2), float32 as effdet's parser stores
 * them. Rules for imperfect files, each counted in DatasetCounts and shown by dataset_report:
 *   - a box partly outside its image is clipped to the image;
 *   - a box narrower or lower than 1 pixel after clipping (zero-area boxes, boxes wholly outside)
 *     is dropped: effdet's parser drops w < 1 or h < 1;
 *   - an image keeps its first DATASET_MAX_INSTANCES boxes in file order (effdet's
 *     max_num_instances), the rest are dropped;
 *   - crowd boxes are kept and flagged; the anchor labeler ignores them rather than training on
 *     them (effdet's bbox_ignore).
 * An annotation naming an unknown image or category, an image without width, height or file_name,
 * or too many categories is an error (Err names it). Images are ordered by ascending id, as
 * effdet's parser orders them. */
#ifndef EFFDET_LOADER_DATASET_H
#define EFFDET_LOADER_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

enum { DATASET_MAX_INSTANCES = 100 };

typedef struct DatasetBox {
    float x1, y1, x2, y2; /* image pixels, clipped to [0, width] x [0, height] */
    int32_t label;        /* 1 .. num_classes */
    int32_t iscrowd;      /* 1: crowd region, ignored by the labeler */
} DatasetBox;

typedef struct DatasetImage {
    int64_t id;
    int32_t width, height; /* from the annotation file */
    const char *path;      /* images_dir/file_name; owned by the dataset */
    size_t first_box;      /* boxes[first_box .. first_box + n_boxes) */
    int32_t n_boxes;       /* <= DATASET_MAX_INSTANCES */
} DatasetImage;

typedef struct DatasetCounts {
    size_t annotations;        /* in the file */
    size_t boxes;              /* kept (crowd included) */
    size_t crowd;              /* kept crowd boxes */
    size_t clipped;            /* kept boxes that were clipped to their image */
    size_t dropped_degenerate; /* w < 1 or h < 1 after clipping */
    size_t dropped_over_limit; /* beyond DATASET_MAX_INSTANCES in their image */
    size_t images_over_limit;  /* images that lost boxes to the limit */
    size_t images_empty;       /* images with no kept box (negatives) */
} DatasetCounts;

typedef struct Dataset {
    DatasetImage *images; /* (n_images) by ascending id */
    size_t n_images;
    DatasetBox *boxes;    /* (n_boxes) grouped by image, file order within one */
    size_t n_boxes;
    int num_classes;
    int ids_as_labels;          /* 1: label = category id */
    int64_t *label_to_category; /* (num_classes + 1): category id of each label, -1 where none */
    DatasetCounts counts;
    char *path_store;           /* storage of images[].path */
} Dataset;

/* Reads ann_path and indexes images_dir. num_classes is the model's class count; 0 means "as many
 * as the file has categories" (contiguous labels). On error ds is left empty (safe to free). */
int dataset_open(Dataset *ds, const char *ann_path, const char *images_dir, int num_classes,
                 Err *err);
/* The --data DIR layout: DIR/annotations.json and DIR/images/. */
int dataset_open_dir(Dataset *ds, const char *dir, int num_classes, Err *err);
/* Frees everything and zeroes ds; safe to call twice. */
void dataset_free(Dataset *ds);

/* Category id of a label, or -1 (label out of range, or no category has it). */
int64_t dataset_label_category(const Dataset *ds, int label);

/* One line summarizing the index and every count above, for the trainer's log. Returns what
 * snprintf returns. */
int dataset_report(const Dataset *ds, char *buf, size_t cap);

#endif
