/* synth.c: the synthetic detection dataset (see synth.h for what an image holds).
 *
 * DESIGN
 * - Randomness: image i draws from the Philox stream (seed, SYNTH_STREAM, i), in a fixed order
 *   (size, grayscale, background, then per object: class, crowd, size, position, colour, shape
 *   details, then the background noise). Nothing depends on other images, so rendering is
 *   deterministic and can be done for any image alone (the tests do).
 * - Exact boxes: every shape is a predicate on pixel centres, evaluated inside the object's
 *   placement rectangle; the annotation is the tight box of the pixels where it holds, measured
 *   while drawing. Placement rectangles of one image keep SYNTH_GAP pixels apart, so no object
 *   covers another and JPEG ringing of one never lands inside another's box.
 * - Visibility: objects are saturated colours on a muted background and carry a dark one-pixel
 *   outline (part of the object), so they stay visible in grayscale images too.
 * - Files: images are baseline 4:2:0 JPEGs at quality 90 (camera-like; grayscale ones have one
 *   component), written straight to their names; annotations.json goes through tmp + fsync +
 *   rename, so a dataset directory with an annotations.json is complete. */
#include "loader/synth.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "shared/check.h"
#include "shared/rng.h"

#define SYNTH_STREAM 0x53594e00u /* "SYN": Philox stream high word of synth images */
#define SYNTH_GAP 3              /* pixels between placement rectangles */
#define SYNTH_TRIES 40           /* placement attempts per object */
#define SYNTH_QUALITY 90

static const int category_ids[SYNTH_MAX_CLASSES] = {1,  3,  7,  8,  12, 15, 20, 24, 27,
                                                    31, 35, 38, 42, 46, 50, 53, 57, 60};
static const char *const shape_names[3] = {"rectangle", "disk", "triangle"};
static const char *const colour_names[6] = {"red", "green", "blue", "yellow", "magenta", "cyan"};
static const uint8_t colour_rgb[6][3] = {{220, 40, 40},  {40, 190, 60},  {40, 70, 220},
                                         {230, 210, 40}, {210, 50, 200}, {40, 200, 210}};

/* Class k: colour family k % 6 and shape (k + k / 6) % 3, so classes 0..5 alternate shapes with
 * every colour, and each colour family takes each shape once over k, k + 6, k + 12. */
static int class_colour(int cls) { return cls % 6; }
SynthShape synth_class_shape(int cls) { return (SynthShape)((cls + cls / 6) % 3); }
int synth_category_id(int cls) { return category_ids[cls]; }

const char *synth_class_name(int cls, char *buf, int cap)
{
    snprintf(buf, (size_t)cap, "%s_%s", colour_names[class_colour(cls)],
             shape_names[synth_class_shape(cls)]);
    return buf;
}

void synth_config_default(SynthConfig *cfg)
{
    *cfg = (SynthConfig){.seed = 0, .n_images = 0, .width = SYNTH_DEFAULT_W,
                         .height = SYNTH_DEFAULT_H, .fixed_size = 0,
                         .n_classes = SYNTH_DEFAULT_CLASSES};
}

int synth_config_check(const SynthConfig *cfg, Err *err)
{
    if (cfg->n_images < 1) return err_set(err, "image count %d: must be at least 1", cfg->n_images);
    if (cfg->width < SYNTH_MIN_SIDE || cfg->width > SYNTH_MAX_SIDE ||
        cfg->height < SYNTH_MIN_SIDE || cfg->height > SYNTH_MAX_SIDE)
        return err_set(err, "size %dx%d: each side must be in [%d, %d]", cfg->width, cfg->height,
                       SYNTH_MIN_SIDE, SYNTH_MAX_SIDE);
    if (cfg->n_classes < 1 || cfg->n_classes > SYNTH_MAX_CLASSES)
        return err_set(err, "%d classes: must be in [1, %d]", cfg->n_classes, SYNTH_MAX_CLASSES);
    return 0;
}

/* ---- shapes ---------------------------------------------------------------------------------- */

enum { MAX_BLOBS = 6 };

/* A shape inside its placement rectangle [x0, x1) x [y0, y1). */
typedef struct Shape {
    int kind; /* SynthShape, or -1 for a crowd cluster of disks */
    int x0, y0, x1, y1;
    double v[3][2];           /* triangle vertices */
    int n_blobs;
    double blob[MAX_BLOBS][3]; /* disks (cx, cy, r); a plain disk is blob 0 */
} Shape;

static int in_disk(const double d[3], double px, double py)
{
    double dx = px - d[0], dy = py - d[1];
    return dx * dx + dy * dy <= d[2] * d[2];
}

static double edge_fn(const double a[2], const double b[2], double px, double py)
{
    return (b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]);
}

/* Whether pixel (x, y) belongs to the shape (its centre is inside). */
static int shape_covers(const Shape *s, int x, int y)
{
    if (x < s->x0 || x >= s->x1 || y < s->y0 || y >= s->y1) return 0;
    double px = x + 0.5, py = y + 0.5;
    switch (s->kind) {
    case SYNTH_RECT: return 1;
    case SYNTH_TRIANGLE: {
        double e0 = edge_fn(s->v[0], s->v[1], px, py), e1 = edge_fn(s->v[1], s->v[2], px, py);
        double e2 = edge_fn(s->v[2], s->v[0], px, py);
        return (e0 >= 0 && e1 >= 0 && e2 >= 0) || (e0 <= 0 && e1 <= 0 && e2 <= 0);
    }
    default:
        for (int b = 0; b < s->n_blobs; b++)
            if (in_disk(s->blob[b], px, py)) return 1;
        return 0;
    }
}

static int rng_range(Rng *r, int lo, int hi) /* uniform in [lo, hi] (Lemire's multiply-shift) */
{
    return lo + (int)(((uint64_t)rng_u32(r) * (uint64_t)(hi - lo + 1)) >> 32);
}

/* Shape details inside the placement rectangle already set in s. */
static void shape_details(Shape *s, Rng *r)
{
    double w = s->x1 - s->x0, h = s->y1 - s->y0;
    if (s->kind == SYNTH_DISK) {
        s->n_blobs = 1;
        double rad = (w < h ? w : h) / 2;
        s->blob[0][0] = s->x0 + w / 2, s->blob[0][1] = s->y0 + h / 2, s->blob[0][2] = rad;
    } else if (s->kind == SYNTH_TRIANGLE) {
        /* apex on one side of the rectangle, base along the opposite side */
        int side = rng_range(r, 0, 3);
        double t = 0.2 + 0.6 * rng_uniform(r);
        double x0 = s->x0, y0 = s->y0, x1 = s->x1, y1 = s->y1;
        double v[4][3][2] = {{{x0 + t * w, y0}, {x1, y1}, {x0, y1}},
                             {{x0 + t * w, y1}, {x0, y0}, {x1, y0}},
                             {{x0, y0 + t * h}, {x1, y0}, {x1, y1}},
                             {{x1, y0 + t * h}, {x0, y1}, {x0, y0}}};
        memcpy(s->v, v[side], sizeof s->v);
    } else if (s->kind < 0) {
        s->n_blobs = rng_range(r, 3, MAX_BLOBS);
        double m = w < h ? w : h;
        for (int b = 0; b < s->n_blobs; b++) {
            double rad = m * (0.12 + 0.1 * rng_uniform(r));
            s->blob[b][0] = s->x0 + rad + (w - 2 * rad) * rng_uniform(r);
            s->blob[b][1] = s->y0 + rad + (h - 2 * rad) * rng_uniform(r);
            s->blob[b][2] = rad;
        }
    }
}

/* Draws s as object k (fill colour, dark outline), recording its tight box and pixel count. */
static void shape_draw(const Shape *s, int k, const uint8_t fill[3], SynthImage *img)
{
    int w = img->rgb.w, x_lo = w, y_lo = img->rgb.h, x_hi = -1, y_hi = -1;
    int64_t count = 0;
    uint8_t edge[3] = {(uint8_t)(fill[0] * 2 / 5), (uint8_t)(fill[1] * 2 / 5),
                       (uint8_t)(fill[2] * 2 / 5)};
    for (int y = s->y0; y < s->y1; y++)
        for (int x = s->x0; x < s->x1; x++) {
            if (!shape_covers(s, x, y)) continue;
            int inner = shape_covers(s, x - 1, y) && shape_covers(s, x + 1, y) &&
                        shape_covers(s, x, y - 1) && shape_covers(s, x, y + 1);
            size_t p = (size_t)y * w + x;
            memcpy(img->rgb.px + 3 * p, inner ? fill : edge, 3);
            img->mask[p] = (uint8_t)(k + 1);
            count++;
            if (x < x_lo) x_lo = x;
            if (x > x_hi) x_hi = x;
            if (y < y_lo) y_lo = y;
            if (y > y_hi) y_hi = y;
        }
    SynthObject *o = &img->obj[k];
    ASSERT(count > 0);
    o->bbox[0] = x_lo, o->bbox[1] = y_lo;
    o->bbox[2] = x_hi - x_lo + 1, o->bbox[3] = y_hi - y_lo + 1;
    o->area = o->iscrowd ? count : (int64_t)o->bbox[2] * o->bbox[3];
}

/* ---- images ---------------------------------------------------------------------------------- */

static void draw_background(RgbImage *img, Rng *r)
{
    double c[2][3];
    for (int e = 0; e < 2; e++) {
        double v[3], mean = 0;
        for (int ch = 0; ch < 3; ch++) v[ch] = 60 + 130 * rng_uniform(r), mean += v[ch] / 3;
        for (int ch = 0; ch < 3; ch++) c[e][ch] = mean + 0.35 * (v[ch] - mean); /* muted */
    }
    double a = 6.283185307179586 * rng_uniform(r), ca = cos(a), sa = sin(a);
    double lo = fmin(0, ca * img->w) + fmin(0, sa * img->h);
    double hi = fmax(0, ca * img->w) + fmax(0, sa * img->h);
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++) {
            double t = (ca * x + sa * y - lo) / (hi - lo);
            uint8_t *p = img->px + 3 * ((size_t)y * img->w + x);
            for (int ch = 0; ch < 3; ch++) p[ch] = (uint8_t)(c[0][ch] + t * (c[1][ch] - c[0][ch]));
        }
}

/* Grain: +-8 levels per pixel (same on all channels), on background pixels only, so objects
 * stay flat-coloured. Drawn last, so its draws do not shift the objects'. */
static void add_noise(SynthImage *img, Rng *r)
{
    size_t n = (size_t)img->rgb.w * img->rgb.h;
    uint32_t bits = 0;
    for (size_t i = 0; i < n; i++) {
        if ((i & 3) == 0) bits = rng_u32(r);
        int d = (int)((bits >> (8 * (i & 3))) & 15) - 8;
        if (img->mask[i]) continue;
        for (int ch = 0; ch < 3; ch++) {
            int v = img->rgb.px[3 * i + ch] + d;
            img->rgb.px[3 * i + ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

static int rects_apart(const Shape *a, const Shape *b)
{
    return a->x1 + SYNTH_GAP <= b->x0 || b->x1 + SYNTH_GAP <= a->x0 ||
           a->y1 + SYNTH_GAP <= b->y0 || b->y1 + SYNTH_GAP <= a->y0;
}

/* Picks class, crowd flag and a free placement rectangle for object k; 0 if none was found. */
static int place_object(const SynthConfig *cfg, SynthImage *img, Rng *r, Shape *placed, int k)
{
    SynthObject *o = &img->obj[k];
    o->cls = rng_range(r, 0, cfg->n_classes - 1);
    o->iscrowd = rng_uniform(r) < 0.05f;
    Shape *s = &placed[k];
    s->kind = o->iscrowd ? -1 : (int)synth_class_shape(o->cls);
    int w = img->rgb.w, h = img->rgb.h, m = w < h ? w : h;
    int lo = m / 10 > 10 ? m / 10 : 10, hi = m * 2 / 5;
    for (int t = 0; t < SYNTH_TRIES; t++) {
        int bw = rng_range(r, lo, hi), bh = rng_range(r, lo, hi);
        if (s->kind == SYNTH_DISK) bh = bw;
        s->x0 = rng_range(r, 0, w - bw), s->y0 = rng_range(r, 0, h - bh);
        s->x1 = s->x0 + bw, s->y1 = s->y0 + bh;
        int free_spot = 1;
        for (int j = 0; j < k && free_spot; j++) free_spot = rects_apart(s, &placed[j]);
        if (free_spot) return 1;
    }
    return 0;
}

int synth_render(const SynthConfig *cfg, int index, SynthImage *img, Err *err)
{
    if (synth_config_check(cfg, err) != 0) return -1;
    Rng r;
    rng_init(&r, cfg->seed, SYNTH_STREAM, (uint32_t)index);
    int w = cfg->width, h = cfg->height;
    if (!cfg->fixed_size) {
        w = (int)lround(w * (0.75 + 0.5 * rng_uniform(&r)));
        h = (int)lround(h * (0.75 + 0.5 * rng_uniform(&r)));
    }
    img->gray = rng_uniform(&r) < 0.15f;
    if (rgb_image_alloc(&img->rgb, w, h, err) != 0) return -1;
    free(img->mask);
    img->mask = calloc((size_t)w * h, 1);
    ASSERT(img->mask);
    draw_background(&img->rgb, &r);

    Shape placed[SYNTH_MAX_OBJECTS];
    int want = rng_range(&r, 1, SYNTH_MAX_OBJECTS);
    img->n_objects = 0;
    for (int k = 0; k < want; k++) {
        int n = img->n_objects;
        if (!place_object(cfg, img, &r, placed, n)) continue;
        shape_details(&placed[n], &r);
        const uint8_t *base = colour_rgb[class_colour(img->obj[n].cls)];
        uint8_t fill[3];
        for (int ch = 0; ch < 3; ch++) {
            int v = base[ch] + rng_range(&r, -20, 20);
            fill[ch] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        shape_draw(&placed[n], n, fill, img);
        img->n_objects++;
    }
    add_noise(img, &r);
    if (img->gray) {
        for (size_t i = 0; i < (size_t)w * h; i++) {
            uint8_t *p = img->rgb.px + 3 * i;
            uint8_t y = (uint8_t)((299 * p[0] + 587 * p[1] + 114 * p[2] + 500) / 1000);
            p[0] = p[1] = p[2] = y;
        }
    }
    return 0;
}

void synth_image_free(SynthImage *img)
{
    rgb_image_free(&img->rgb);
    free(img->mask);
    memset(img, 0, sizeof *img);
}

/* ---- files ----------------------------------------------------------------------------------- */

/* Encodes img (1 channel when gray) and writes it to path. gray_buf holds w * h bytes. */
static int write_jpeg(tjhandle tj, const SynthImage *img, uint8_t *gray_buf, const char *path,
                      Err *err)
{
    int w = img->rgb.w, h = img->rgb.h;
    const uint8_t *src = img->rgb.px;
    if (img->gray) {
        for (size_t i = 0; i < (size_t)w * h; i++) gray_buf[i] = img->rgb.px[3 * i];
        src = gray_buf;
    }
    unsigned char *jpeg = NULL;
    unsigned long size = 0;
    if (tjCompress2(tj, src, w, 0, h, img->gray ? TJPF_GRAY : TJPF_RGB, &jpeg, &size,
                    img->gray ? TJSAMP_GRAY : TJSAMP_420, SYNTH_QUALITY, 0) != 0)
        return err_set(err, "%s: cannot encode: %s", path, tjGetErrorStr2(tj));
    FILE *f = fopen(path, "wb");
    int bad = !f || fwrite(jpeg, 1, size, f) != size;
    int saved = errno;
    if (f && fclose(f) != 0 && !bad) bad = 1, saved = errno;
    tjFree(jpeg);
    return bad ? err_set(err, "%s: cannot write: %s", path, strerror(saved)) : 0;
}

typedef struct AnnList {
    int64_t n, cap;
    int32_t *image_wh; /* (n_images, 2) */
    struct {
        int image;
        SynthObject o;
    } *a;
} AnnList;

static void write_json(FILE *f, const SynthConfig *cfg, const AnnList *al)
{
    fprintf(f, "{\"info\": {\"description\": \"effdet synth\", \"seed\": %llu, \"version\": 1},\n"
               "\"images\": [\n",
            (unsigned long long)cfg->seed);
    for (int i = 0; i < cfg->n_images; i++)
        fprintf(f, "{\"id\": %d, \"file_name\": \"%012d.jpg\", \"width\": %d, \"height\": %d}%s\n",
                i + 1, i + 1, al->image_wh[2 * i], al->image_wh[2 * i + 1],
                i + 1 < cfg->n_images ? "," : "");
    fprintf(f, "],\n\"annotations\": [\n");
    for (int64_t j = 0; j < al->n; j++) {
        const SynthObject *o = &al->a[j].o;
        fprintf(f,
                "{\"id\": %lld, \"image_id\": %d, \"category_id\": %d, \"bbox\": [%d, %d, %d, %d], "
                "\"area\": %lld, \"iscrowd\": %d}%s\n",
                (long long)j + 1, al->a[j].image + 1, synth_category_id(o->cls), o->bbox[0],
                o->bbox[1], o->bbox[2], o->bbox[3], (long long)o->area, o->iscrowd,
                j + 1 < al->n ? "," : "");
    }
    fprintf(f, "],\n\"categories\": [\n");
    for (int c = 0; c < cfg->n_classes; c++) {
        char name[32];
        fprintf(f, "{\"id\": %d, \"name\": \"%s\", \"supercategory\": \"%s\"}%s\n",
                synth_category_id(c), synth_class_name(c, name, sizeof name),
                shape_names[synth_class_shape(c)], c + 1 < cfg->n_classes ? "," : "");
    }
    fprintf(f, "]}\n");
}

/* path gets the JSON through a temporary file, fsync and rename, then its directory is fsynced. */
static int write_annotations(const char *dir, const char *path, const SynthConfig *cfg,
                             const AnnList *al, Err *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return err_set(err, "%s: cannot create: %s", tmp, strerror(errno));
    write_json(f, cfg, al);
    int bad = ferror(f) || fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) bad = 1, saved = errno;
    if (!bad && rename(tmp, path) != 0) bad = 1, saved = errno;
    if (bad) {
        unlink(tmp);
        return err_set(err, "%s: write failed: %s", path, strerror(saved));
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    int synced = fd >= 0 && fsync(fd) == 0;
    if (fd >= 0) close(fd);
    return synced ? 0 : err_set(err, "%s: cannot fsync the directory", dir);
}

static int make_dir(const char *path, Err *err)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return err_set(err, "%s: cannot create: %s", path, strerror(errno));
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(err, "%s: exists and is not a directory", path);
    return 0;
}

int synth_write_dataset(const char *out_dir, const SynthConfig *cfg, int64_t *n_annotations,
                        Err *err)
{
    if (synth_config_check(cfg, err) != 0) return -1;
    char images_dir[4096], path[4200];
    if (snprintf(images_dir, sizeof images_dir, "%s/images", out_dir) >= (int)sizeof images_dir)
        return err_set(err, "%s: path too long", out_dir);
    if (make_dir(out_dir, err) != 0 || make_dir(images_dir, err) != 0) return -1;

    AnnList al = {0};
    al.image_wh = malloc(sizeof(int32_t) * 2 * (size_t)cfg->n_images);
    ASSERT(al.image_wh);
    tjhandle tj = tjInitCompress();
    ASSERT(tj);
    SynthImage img = {0};
    uint8_t *gray_buf = NULL;
    int rc = 0;
    for (int i = 0; i < cfg->n_images && rc == 0; i++) {
        rc = synth_render(cfg, i, &img, err);
        if (rc != 0) break;
        gray_buf = realloc(gray_buf, (size_t)img.rgb.w * img.rgb.h);
        ASSERT(gray_buf);
        snprintf(path, sizeof path, "%s/%012d.jpg", images_dir, i + 1);
        rc = write_jpeg(tj, &img, gray_buf, path, err);
        al.image_wh[2 * i] = img.rgb.w, al.image_wh[2 * i + 1] = img.rgb.h;
        for (int k = 0; k < img.n_objects; k++) {
            if (al.n == al.cap) {
                al.cap = al.cap ? 2 * al.cap : 256;
                al.a = realloc(al.a, sizeof *al.a * (size_t)al.cap);
                ASSERT(al.a);
            }
            al.a[al.n].image = i, al.a[al.n].o = img.obj[k];
            al.n++;
        }
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/annotations.json", out_dir);
        rc = write_annotations(out_dir, path, cfg, &al, err);
    }
    if (rc == 0 && n_annotations) *n_annotations = al.n;
    synth_image_free(&img);
    free(gray_buf);
    free(al.a);
    free(al.image_wh);
    tjDestroy(tj);
    return rc;
}
