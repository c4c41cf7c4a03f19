/* dataset.c: the training dataset index (rules in dataset.h).
 *
 * DESIGN
 * - shared/coco.c does the JSON and the referential checks (unknown image_id or category_id is
 *   its error, naming the annotation's index, id and the missing id); this file only turns the
 *   parsed file into what training reads per sample: a path, a size and a short box list.
 * - The CocoDataset is freed once the index is built: a train2017-sized file keeps 860k boxes of
 *   16 bytes plus the paths, not the parser's records.
 * - Annotations are grouped per image with a counting sort (stable, so file order survives within
 *   an image and the first-100 rule is the file's first 100). */
#include "loader/dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/coco.h"

void dataset_free(Dataset *ds)
{
    free(ds->images);
    free(ds->boxes);
    free(ds->label_to_category);
    free(ds->path_store);
    memset(ds, 0, sizeof *ds);
}

int64_t dataset_label_category(const Dataset *ds, int label)
{
    if (label < 1 || label > ds->num_classes) return -1;
    return ds->label_to_category[label];
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Labels: ids themselves when all lie in 1..num_classes, else 1..K in ascending id order.
 * cat_label[i] receives the label of coco->categories[i]. */
static int build_labels(Dataset *ds, const CocoDataset *coco, const char *name, int num_classes,
                        int32_t *cat_label, Err *err)
{
    size_t k = coco->n_categories;
    int64_t *ids = malloc(sizeof *ids * (k ? k : 1));
    ASSERT(ids);
    int in_range = num_classes > 0;
    for (size_t i = 0; i < k; i++) {
        ids[i] = coco->categories[i].id;
        if (ids[i] < 1 || ids[i] > num_classes) in_range = 0;
    }
    qsort(ids, k, sizeof *ids, cmp_i64);
    if (!in_range && num_classes > 0 && k > (size_t)num_classes) {
        err_set(err,
                "%s: %zu categories do not fit a %d-class model (their ids, %lld..%lld, are not "
                "all within 1..%d either)",
                name, k, num_classes, (long long)ids[0], (long long)ids[k - 1], num_classes);
        free(ids);
        return -1;
    }
    ds->num_classes = num_classes > 0 ? num_classes : (int)k;
    ds->ids_as_labels = in_range;
    ds->label_to_category = malloc(sizeof(int64_t) * ((size_t)ds->num_classes + 1));
    ASSERT(ds->label_to_category);
    for (int l = 0; l <= ds->num_classes; l++) ds->label_to_category[l] = -1;
    for (size_t i = 0; i < k; i++) {
        int64_t id = coco->categories[i].id;
        int64_t *at = bsearch(&id, ids, k, sizeof *ids, cmp_i64);
        cat_label[i] = in_range ? (int32_t)id : (int32_t)(at - ids) + 1;
        ds->label_to_category[cat_label[i]] = id;
    }
    free(ids);
    return 0;
}

/* ds->images: coco's images by ascending id, with their paths. */
static int build_images(Dataset *ds, const CocoDataset *coco, const char *name,
                        const char *images_dir, Err *err)
{
    size_t n = coco->n_images, bytes = 0, dir_len = strlen(images_dir);
    int64_t (*key)[2] = malloc(sizeof *key * (n ? n : 1)); /* (id, coco index) */
    ASSERT(key);
    for (size_t i = 0; i < n; i++) {
        const CocoImage *im = &coco->images[i];
        if (im->width <= 0 || im->height <= 0 || !im->file_name[0]) {
            free(key);
            return err_set(err, "%s: image %zu (id %lld) has no %s", name, i, (long long)im->id,
                           !im->file_name[0] ? "file_name" : "width and height");
        }
        key[i][0] = im->id, key[i][1] = (int64_t)i;
        bytes += dir_len + 1 + strlen(im->file_name) + 1;
    }
    qsort(key, n, sizeof *key, cmp_i64); /* ids are unique: the first int64 decides */
    ds->images = calloc(n ? n : 1, sizeof *ds->images);
    ds->path_store = malloc(bytes ? bytes : 1);
    ASSERT(ds->images && ds->path_store);
    char *p = ds->path_store;
    for (size_t r = 0; r < n; r++) {
        const CocoImage *im = &coco->images[key[r][1]];
        DatasetImage *d = &ds->images[r];
        d->id = im->id, d->width = im->width, d->height = im->height, d->path = p;
        p += sprintf(p, "%s/%s", images_dir, im->file_name) + 1;
    }
    ds->n_images = n;
    free(key);
    return 0;
}

/* Clips one annotation to its image; 0 when it is kept (box filled), 1 when dropped. */
static int clip_box(const CocoAnnotation *a, const DatasetImage *im, DatasetBox *b, int *clipped)
{
    double x1 = a->bbox[0], y1 = a->bbox[1], x2 = x1 + a->bbox[2], y2 = y1 + a->bbox[3];
    *clipped = x1 < 0 || y1 < 0 || x2 > im->width || y2 > im->height;
    if (*clipped) {
        x1 = x1 < 0 ? 0 : x1, y1 = y1 < 0 ? 0 : y1;
        x2 = x2 > im->width ? im->width : x2, y2 = y2 > im->height ? im->height : y2;
    }
    if (!(x2 - x1 >= 1 && y2 - y1 >= 1)) return 1;
    b->x1 = (float)x1, b->y1 = (float)y1, b->x2 = (float)x2, b->y2 = (float)y2;
    b->iscrowd = a->iscrowd;
    return 0;
}

/* Groups annotations by image (stable) and applies the clip / drop / limit rules. */
static void build_boxes(Dataset *ds, const CocoDataset *coco, const int32_t *cat_label)
{
    size_t n_img = ds->n_images, n_ann = coco->n_annotations;
    size_t *start = calloc(n_img + 1, sizeof *start);
    size_t *rank = malloc(sizeof *rank * (coco->n_images ? coco->n_images : 1));
    size_t *by_image = malloc(sizeof *by_image * (n_ann ? n_ann : 1));
    size_t *ann_rank = malloc(sizeof *ann_rank * (n_ann ? n_ann : 1));
    ds->boxes = malloc(sizeof *ds->boxes * (n_ann ? n_ann : 1));
    ASSERT(start && rank && by_image && ann_rank && ds->boxes);
    for (size_t r = 0; r < n_img; r++)
        rank[coco_dataset_image_index(coco, ds->images[r].id)] = r;
    for (size_t j = 0; j < n_ann; j++) {
        ann_rank[j] = rank[coco_dataset_image_index(coco, coco->annotations[j].image_id)];
        start[ann_rank[j] + 1]++;
    }
    for (size_t r = 0; r < n_img; r++) start[r + 1] += start[r];
    for (size_t j = 0; j < n_ann; j++) by_image[start[ann_rank[j]]++] = j;
    /* start[r] now ends image r's run; its run begins where image r - 1's ended */
    DatasetCounts *c = &ds->counts;
    c->annotations = n_ann;
    size_t kept = 0;
    for (size_t r = 0, from = 0; r < n_img; from = start[r], r++) {
        DatasetImage *im = &ds->images[r];
        im->first_box = kept;
        int lost = 0;
        for (size_t q = from; q < start[r]; q++) {
            const CocoAnnotation *a = &coco->annotations[by_image[q]];
            DatasetBox *b = &ds->boxes[kept];
            int clipped;
            if (clip_box(a, im, b, &clipped)) {
                c->dropped_degenerate++;
                continue;
            }
            if (im->n_boxes == DATASET_MAX_INSTANCES) {
                c->dropped_over_limit++, lost = 1;
                continue;
            }
            b->label = cat_label[coco_dataset_category_index(coco, a->category_id)];
            c->clipped += (size_t)clipped, c->crowd += (size_t)b->iscrowd;
            im->n_boxes++, kept++;
        }
        c->images_over_limit += (size_t)lost;
        c->images_empty += im->n_boxes == 0;
    }
    ds->n_boxes = c->boxes = kept;
    free(start), free(rank), free(by_image), free(ann_rank);
}

int dataset_open(Dataset *ds, const char *ann_path, const char *images_dir, int num_classes,
                 Err *err)
{
    memset(ds, 0, sizeof *ds);
    if (num_classes < 0) return err_set(err, "%s: num_classes %d < 0", ann_path, num_classes);
    CocoDataset coco;
    if (coco_dataset_load(&coco, ann_path, err) != 0) return -1;
    int32_t *cat_label = malloc(sizeof *cat_label * (coco.n_categories ? coco.n_categories : 1));
    ASSERT(cat_label);
    int rc = build_labels(ds, &coco, ann_path, num_classes, cat_label, err);
    if (rc == 0) rc = build_images(ds, &coco, ann_path, images_dir, err);
    if (rc == 0) build_boxes(ds, &coco, cat_label);
    free(cat_label);
    coco_dataset_free(&coco);
    if (rc != 0) dataset_free(ds);
    return rc;
}

int dataset_open_dir(Dataset *ds, const char *dir, int num_classes, Err *err)
{
    char ann[4096], images[4096];
    if (snprintf(ann, sizeof ann, "%s/annotations.json", dir) >= (int)sizeof ann ||
        snprintf(images, sizeof images, "%s/images", dir) >= (int)sizeof images) {
        memset(ds, 0, sizeof *ds);
        return err_set(err, "%s: path too long", dir);
    }
    return dataset_open(ds, ann, images, num_classes, err);
}

int dataset_report(const Dataset *ds, char *buf, size_t cap)
{
    const DatasetCounts *c = &ds->counts;
    return snprintf(buf, cap,
                    "dataset: %zu images (%zu without boxes), %zu boxes (%zu crowd) from %zu "
                    "annotations, %d classes (%s); %zu boxes clipped to their image, %zu dropped "
                    "as degenerate (w or h < 1), %zu dropped over the %d-box limit in %zu images",
                    ds->n_images, c->images_empty, c->boxes, c->crowd, c->annotations,
                    ds->num_classes,
                    ds->ids_as_labels ? "category ids as labels" : "labels 1..K by category id",
                    c->clipped, c->dropped_degenerate, c->dropped_over_limit,
                    DATASET_MAX_INSTANCES, c->images_over_limit);
}
