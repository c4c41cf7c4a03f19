/* coco.h: COCO annotation files (instances_*.json) and COCO detection results files.
 *
 * The ground truth reader keeps what the evaluator and the data loader use: images (id, width,
 * height, file_name), annotations (id, image_id, category_id, bbox, area, iscrowd) and categories
 * (id, name, supercategory). Everything else (segmentation polygons and RLE, info, licenses,
 * captions) is checked for JSON syntax and skipped without being built, so a train2017-sized file
 * (450 MB, 860k boxes) parses in about a second with memory close to the file's size (see
 * docs/evaluator.md for the figures that made cJSON's DOM the wrong tool here).
 *
 * JSON is read as Python's json module reads it, since pycocotools is the reference: keys are
 * case-sensitive, a repeated key keeps its last value, and the literals NaN, Infinity and
 * -Infinity are numbers (so that a NaN score is reported as a NaN score, not as a syntax error).
 * Errors name the file, the line and column, and the record: "dets.json:3:41: detection 12: score
 * is NaN". Ids are integers that fit in int64 (a float such as 42.0 is accepted as 42). */
#ifndef EFFDET_COCO_H
#define EFFDET_COCO_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

typedef struct CocoImage {
    int64_t id;
    int32_t width, height;  /* 0 when the file has none */
    const char *file_name;  /* "" when the file has none; owned by the dataset */
} CocoImage;

typedef struct CocoAnnotation {
    int64_t id, image_id, category_id;
    double bbox[4]; /* x, y, w, h in pixels; w, h >= 0 */
    double area;    /* the file's area field (the mask area in COCO, not w*h) */
    int iscrowd;    /* 0 or 1 */
} CocoAnnotation;

typedef struct CocoCategory {
    int64_t id;
    const char *name, *supercategory; /* "" when absent; owned by the dataset */
} CocoCategory;

typedef struct CocoStrBlock CocoStrBlock;

/* A parsed ground truth file. Arrays keep the file's order. Image and category ids are unique and
 * every annotation names a listed image and category (the parser checks both). */
typedef struct CocoDataset {
    CocoImage *images;
    size_t n_images;
    CocoAnnotation *annotations;
    size_t n_annotations;
    CocoCategory *categories;
    size_t n_categories;
    /* private: lookup orders (indices sorted by id) and the string storage */
    uint32_t *image_order, *category_order;
    CocoStrBlock *strings;
} CocoDataset;

/* One detection of a results file: {image_id, category_id, bbox: [x, y, w, h], score}. */
typedef struct CocoDetection {
    int64_t image_id, category_id;
    double bbox[4]; /* finite, w, h >= 0 */
    double score;   /* not NaN */
} CocoDetection;

typedef struct CocoDetections {
    CocoDetection *dets; /* (n) in file order */
    size_t n;
} CocoDetections;

/* Reads a ground truth file. "images" and "categories" are required, "annotations" may be absent
 * (image info files). On error ds is left empty (safe to free) and err names file, line and
 * record. */
int coco_dataset_load(CocoDataset *ds, const char *path, Err *err);
/* The same from memory; name is used in messages. text need not be NUL-terminated. */
int coco_dataset_parse(CocoDataset *ds, const char *text, size_t len, const char *name, Err *err);
/* Frees everything and zeroes ds; safe to call twice. */
void coco_dataset_free(CocoDataset *ds);
/* Index into ds->images / ds->categories of the given id, or -1. */
int64_t coco_dataset_image_index(const CocoDataset *ds, int64_t image_id);
int64_t coco_dataset_category_index(const CocoDataset *ds, int64_t category_id);

/* Reads a results file: a JSON list of {image_id, category_id, bbox, score} objects (other
 * fields such as segmentation are skipped). Missing fields, a bbox that is not 4 finite numbers
 * or has a negative width or height, and a NaN score are errors. */
int coco_detections_load(CocoDetections *dets, const char *path, Err *err);
int coco_detections_parse(CocoDetections *dets, const char *text, size_t len, const char *name,
                          Err *err);
void coco_detections_free(CocoDetections *dets);

#endif
