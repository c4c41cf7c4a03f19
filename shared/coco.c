/* coco.c: readers for COCO ground truth files and COCO detection results files (see coco.h).
 *
 * Both are read with the pull parser of shared/json_reader.h over the whole file held in memory:
 * the readers ask for the values they want (ids, bbox, area, ...) and skip the others, checking
 * their syntax without building anything (cJSON's DOM was 10x slower and took 10x the memory on a
 * train2017-sized file; docs/evaluator.md). Records are read into structs by a field table
 * (name, type, offset), so one reader serves images, annotations, categories and detections.
 *
 * Errors are one line, "FILE:LINE:COLUMN: [RECORD INDEX: ]what is wrong", with the record being
 * "image", "annotation", "category" or "detection" and its 0-based index in its list. */
#include "shared/coco.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/file_read.h"
#include "shared/json_reader.h"

/* [x, y, w, h]: four finite numbers with w, h >= 0. */
static int coco_read_bbox(JsonReader *r, double box[4])
{
    size_t at = (json_ws(r), r->pos), k = 0;
    int rc;
    if (json_enter(r, '[', "bbox", "a list of 4 numbers")) return -1;
    for (; (rc = json_list_next(r, k)) > 0; k++) {
        double v;
        if (json_read_double(r, "bbox", &v)) return -1;
        if (k < 4) box[k] = v;
    }
    if (rc < 0) return -1;
    if (k != 4) return json_fail_at(r, at, "\"bbox\" must hold 4 numbers, found %zu", k);
    for (k = 0; k < 4; k++)
        if (!isfinite(box[k]))
            return json_fail_at(r, at, "\"bbox\" holds a non-finite number (%g)", box[k]);
    if (box[2] < 0 || box[3] < 0)
        return json_fail_at(r, at, "\"bbox\" has a negative %s (%g)",
                            box[2] < 0 ? "width" : "height", box[2] < 0 ? box[2] : box[3]);
    return 0;
}

/* ---- ground truth --------------------------------------------------------------------------- */

struct CocoStrBlock {
    CocoStrBlock *next;
    size_t used, cap;
    char data[];
};

/* Room for len + 1 bytes that never moves (strings are handed out as pointers). */
static char *coco_str_alloc(CocoDataset *ds, size_t len)
{
    CocoStrBlock *b = ds->strings;
    if (!b || b->cap - b->used < len + 1) {
        size_t cap = len + 1 > 65536 ? len + 1 : 65536;
        b = malloc(sizeof *b + cap);
        ASSERT(b);
        b->next = ds->strings, b->used = 0, b->cap = cap;
        ds->strings = b;
    }
    char *p = b->data + b->used;
    b->used += len + 1;
    return p;
}

static int coco_read_string(JsonReader *r, CocoDataset *ds, const char *field, const char **out)
{
    size_t beg, end;
    int escaped;
    if (json_peek(r) != '"') return json_type_error(r, field, "a string");
    if (json_string_span(r, &beg, &end, &escaped)) return -1;
    char *p = coco_str_alloc(ds, end - beg);
    p[json_string_decode(r->s, beg, end, p)] = '\0';
    *out = p;
    return 0;
}

/* ---- records -------------------------------------------------------------------------------- */

/* A record's fields, read into a struct by offset: one reader serves the four record kinds. */
typedef enum { F_ID, F_SIZE, F_NUMBER, F_SCORE, F_BBOX, F_STRING, F_CROWD } CocoFieldType;

typedef struct CocoField {
    const char *name;
    CocoFieldType type;
    size_t offset;
    int required;
} CocoField;

static const CocoField image_fields[] = {
    {"id", F_ID, offsetof(CocoImage, id), 1},
    {"width", F_SIZE, offsetof(CocoImage, width), 0},
    {"height", F_SIZE, offsetof(CocoImage, height), 0},
    {"file_name", F_STRING, offsetof(CocoImage, file_name), 0},
};
static const CocoField annotation_fields[] = {
    {"id", F_ID, offsetof(CocoAnnotation, id), 1},
    {"image_id", F_ID, offsetof(CocoAnnotation, image_id), 1},
    {"category_id", F_ID, offsetof(CocoAnnotation, category_id), 1},
    {"bbox", F_BBOX, offsetof(CocoAnnotation, bbox), 1},
    {"area", F_NUMBER, offsetof(CocoAnnotation, area), 1},
    {"iscrowd", F_CROWD, offsetof(CocoAnnotation, iscrowd), 0},
};
static const CocoField category_fields[] = {
    {"id", F_ID, offsetof(CocoCategory, id), 1},
    {"name", F_STRING, offsetof(CocoCategory, name), 0},
    {"supercategory", F_STRING, offsetof(CocoCategory, supercategory), 0},
};
static const CocoField detection_fields[] = {
    {"image_id", F_ID, offsetof(CocoDetection, image_id), 1},
    {"category_id", F_ID, offsetof(CocoDetection, category_id), 1},
    {"bbox", F_BBOX, offsetof(CocoDetection, bbox), 1},
    {"score", F_SCORE, offsetof(CocoDetection, score), 1},
};
#define COCO_NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* iscrowd: 0, 1, false or true (pycocotools treats other values inconsistently, so they are
 * errors). */
static int coco_read_crowd(JsonReader *r, int *out)
{
    size_t at = (json_ws(r), r->pos);
    double v;
    if (json_match(r, at, "true") || json_match(r, at, "false")) {
        *out = r->s[at] == 't';
        r->pos += *out ? 4 : 5;
        return 0;
    }
    if (json_read_double(r, "iscrowd", &v)) return -1;
    if (v != 0 && v != 1) return json_fail_at(r, at, "\"iscrowd\" must be 0 or 1, found %g", v);
    *out = v == 1;
    return 0;
}

static int coco_read_field(JsonReader *r, CocoDataset *ds, const CocoField *f, void *p)
{
    size_t at = (json_ws(r), r->pos);
    switch (f->type) {
    case F_ID: return json_read_int64(r, f->name, p);
    case F_SIZE: return json_read_int32(r, f->name, p);
    case F_BBOX: return coco_read_bbox(r, p);
    case F_STRING: return coco_read_string(r, ds, f->name, p);
    case F_CROWD: return coco_read_crowd(r, p);
    case F_NUMBER:
    case F_SCORE:
        if (json_read_double(r, f->name, p)) return -1;
        if (f->type == F_SCORE && isnan(*(double *)p))
            return json_fail_at(r, at, "\"%s\" is NaN", f->name);
        if (f->type == F_NUMBER && !isfinite(*(double *)p))
            return json_fail_at(r, at, "\"%s\" is not finite (%g)", f->name, *(double *)p);
        return 0;
    }
    return 0;
}

/* Reads the object that starts at byte `at` (its '{' already consumed) into the struct out. */
static int coco_read_object(JsonReader *r, CocoDataset *ds, const CocoField *fields, size_t nf,
                            void *out, size_t at)
{
    char key[JSON_KEY_CAP];
    unsigned seen = 0;
    int rc;
    for (size_t m = 0; (rc = json_object_next(r, m, key)) > 0; m++) {
        size_t f = 0;
        while (f < nf && strcmp(key, fields[f].name)) f++;
        if (f == nf) {
            if (json_skip_value(r, 1)) return -1;
            continue;
        }
        if (coco_read_field(r, ds, &fields[f], (char *)out + fields[f].offset)) return -1;
        seen |= 1u << f;
    }
    if (rc < 0) return -1;
    for (size_t f = 0; f < nf; f++)
        if (fields[f].required && !(seen >> f & 1))
            return json_fail_at(r, at, "missing \"%s\"", fields[f].name);
    return 0;
}

/* A list of records of one kind at the current position. A repeated key replaces the list read
 * before, as in Python. init is the value of absent optional fields. */
typedef struct CocoList {
    const char *field, *what;
    const CocoField *fields;
    size_t n_fields, elem;
    const void *init;
} CocoList;

static int coco_read_list(JsonReader *r, CocoDataset *ds, const CocoList *l, void **items,
                          size_t *n)
{
    size_t cap = 0;
    int rc;
    free(*items);
    *items = NULL, *n = 0;
    if (json_enter(r, '[', l->field, "a list")) return -1;
    for (size_t k = 0; (rc = json_list_next(r, k)) > 0; k++) {
        if (k == cap) {
            cap = cap ? cap * 2 : 256;
            *items = realloc(*items, cap * l->elem);
            ASSERT(*items);
        }
        void *item = (char *)*items + k * l->elem;
        memcpy(item, l->init, l->elem);
        r->what = l->what, r->index = k;
        size_t at = (json_ws(r), r->pos);
        if (json_enter(r, '{', NULL, "an object")) return -1;
        if (coco_read_object(r, ds, l->fields, l->n_fields, item, at)) return -1;
        *n = k + 1;
    }
    r->what = NULL;
    return rc;
}

/* ---- lookups -------------------------------------------------------------------------------- */

typedef struct CocoIdPos {
    int64_t id;
    uint32_t pos;
} CocoIdPos;

static int coco_cmp_id_pos(const void *a, const void *b)
{
    const CocoIdPos *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* order[] = indices of the n records (stride bytes apart, the id at id_off) sorted by id; a
 * repeated id is an error naming both records (what: "images"). */
static int coco_build_order(const char *name, const char *what, const void *items, size_t id_off,
                            size_t stride, size_t n, uint32_t **order, Err *err)
{
    if (n > UINT32_MAX) return err_set(err, "%s: more than %u %s", name, UINT32_MAX, what);
    CocoIdPos *tmp = malloc((n ? n : 1) * sizeof *tmp);
    *order = malloc((n ? n : 1) * sizeof **order);
    ASSERT(tmp && *order);
    for (size_t i = 0; i < n; i++)
        tmp[i] = (CocoIdPos){*(const int64_t *)((const char *)items + i * stride + id_off),
                             (uint32_t)i};
    qsort(tmp, n, sizeof *tmp, coco_cmp_id_pos);
    for (size_t i = 0; i < n; i++) {
        (*order)[i] = tmp[i].pos;
        if (i && tmp[i].id == tmp[i - 1].id) {
            int rc = err_set(err, "%s: %s %u and %u have the same id %lld", name, what,
                             tmp[i - 1].pos, tmp[i].pos, (long long)tmp[i].id);
            free(tmp);
            return rc;
        }
    }
    free(tmp);
    return 0;
}

static int64_t coco_find(const uint32_t *order, const void *first, size_t stride, size_t n,
                         int64_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int64_t v = *(const int64_t *)((const char *)first + order[mid] * stride);
        if (v < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n && *(const int64_t *)((const char *)first + order[lo] * stride) == id)
        return order[lo];
    return -1;
}

int64_t coco_dataset_image_index(const CocoDataset *ds, int64_t image_id)
{
    return coco_find(ds->image_order, ds->images, sizeof(CocoImage), ds->n_images, image_id);
}

int64_t coco_dataset_category_index(const CocoDataset *ds, int64_t category_id)
{
    return coco_find(ds->category_order, ds->categories, sizeof(CocoCategory), ds->n_categories,
                     category_id);
}

/* Ids are unique (pycocotools keys annotations by id, so two with one id would silently become
 * one), and every annotation names a listed image and category. */
static int coco_dataset_index(CocoDataset *ds, const char *name, Err *err)
{
    uint32_t *ann_order = NULL;
    int rc = coco_build_order(name, "annotations", ds->annotations, offsetof(CocoAnnotation, id),
                              sizeof(CocoAnnotation), ds->n_annotations, &ann_order, err);
    free(ann_order);
    if (rc ||
        coco_build_order(name, "images", ds->images, offsetof(CocoImage, id), sizeof(CocoImage),
                         ds->n_images, &ds->image_order, err) ||
        coco_build_order(name, "categories", ds->categories, offsetof(CocoCategory, id),
                         sizeof(CocoCategory), ds->n_categories, &ds->category_order, err))
        return -1;
    for (size_t i = 0; i < ds->n_annotations; i++) {
        const CocoAnnotation *a = &ds->annotations[i];
        if (coco_dataset_image_index(ds, a->image_id) < 0)
            return err_set(err, "%s: annotation %zu (id %lld): image_id %lld is not in \"images\"",
                           name, i, (long long)a->id, (long long)a->image_id);
        if (coco_dataset_category_index(ds, a->category_id) < 0)
            return err_set(err, "%s: annotation %zu (id %lld): category_id %lld is not in "
                                "\"categories\"", name, i, (long long)a->id,
                           (long long)a->category_id);
    }
    return 0;
}

/* ---- public --------------------------------------------------------------------------------- */

int coco_dataset_parse(CocoDataset *ds, const char *text, size_t len, const char *name, Err *err)
{
    static const CocoImage image_init = {.file_name = ""};
    static const CocoAnnotation annotation_init = {0};
    static const CocoCategory category_init = {.name = "", .supercategory = ""};
    static const CocoList lists[] = {
        {"images", "image", image_fields, COCO_NFIELDS(image_fields), sizeof(CocoImage),
         &image_init},
        {"annotations", "annotation", annotation_fields, COCO_NFIELDS(annotation_fields),
         sizeof(CocoAnnotation), &annotation_init},
        {"categories", "category", category_fields, COCO_NFIELDS(category_fields),
         sizeof(CocoCategory), &category_init},
    };
    JsonReader r = {.s = text, .n = len, .name = name, .err = err};
    char key[JSON_KEY_CAP];
    unsigned seen = 0;
    int rc;
    memset(ds, 0, sizeof *ds);
    void **items[] = {(void **)&ds->images, (void **)&ds->annotations, (void **)&ds->categories};
    size_t *counts[] = {&ds->n_images, &ds->n_annotations, &ds->n_categories};
    if (json_peek(&r) != '{') {
        rc = json_fail_at(&r, r.pos, "expected a JSON object with \"images\" and \"categories\", "
                                     "found %s", json_kind_name(json_peek(&r)));
        goto fail;
    }
    r.pos++;
    for (size_t m = 0; (rc = json_object_next(&r, m, key)) > 0; m++) {
        size_t l = 0;
        while (l < 3 && strcmp(key, lists[l].field)) l++;
        rc = l < 3 ? coco_read_list(&r, ds, &lists[l], items[l], counts[l])
                   : json_skip_value(&r, 1);
        if (rc) goto fail;
        seen |= l < 3 ? 1u << l : 0;
    }
    if (rc < 0 || json_expect_end(&r)) goto fail;
    for (size_t l = 0; l < 3; l += 2) {
        if (!(seen >> l & 1)) {
            rc = err_set(err, "%s: the top-level object has no \"%s\" list", name, lists[l].field);
            goto fail;
        }
    }
    if (coco_dataset_index(ds, name, err) == 0) return 0;
fail:
    coco_dataset_free(ds);
    return -1;
}

int coco_dataset_load(CocoDataset *ds, const char *path, Err *err)
{
    char *text;
    size_t len;
    memset(ds, 0, sizeof *ds);
    if (file_read_all(path, SIZE_MAX, &text, &len, err)) return -1;
    int rc = coco_dataset_parse(ds, text, len, path, err);
    free(text);
    return rc;
}

void coco_dataset_free(CocoDataset *ds)
{
    free(ds->images);
    free(ds->annotations);
    free(ds->categories);
    free(ds->image_order);
    free(ds->category_order);
    for (CocoStrBlock *b = ds->strings, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    memset(ds, 0, sizeof *ds);
}

int coco_detections_parse(CocoDetections *dets, const char *text, size_t len, const char *name,
                          Err *err)
{
    static const CocoDetection init = {0};
    static const CocoList list = {"results", "detection", detection_fields,
                                  COCO_NFIELDS(detection_fields), sizeof(CocoDetection), &init};
    JsonReader r = {.s = text, .n = len, .name = name, .err = err};
    memset(dets, 0, sizeof *dets);
    if (json_peek(&r) != '[') {
        json_fail_at(&r, r.pos, "expected a list of detections, found %s",
                     json_kind_name(json_peek(&r)));
    } else if (coco_read_list(&r, NULL, &list, (void **)&dets->dets, &dets->n) == 0 &&
               json_expect_end(&r) == 0) {
        return 0;
    }
    coco_detections_free(dets);
    return -1;
}

int coco_detections_load(CocoDetections *dets, const char *path, Err *err)
{
    char *text;
    size_t len;
    memset(dets, 0, sizeof *dets);
    if (file_read_all(path, SIZE_MAX, &text, &len, err)) return -1;
    int rc = coco_detections_parse(dets, text, len, path, err);
    free(text);
    return rc;
}

void coco_detections_free(CocoDetections *dets)
{
    free(dets->dets);
    memset(dets, 0, sizeof *dets);
}
