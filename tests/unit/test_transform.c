/* test_transform.c: augment/transform.c, effdet's RandomResizePad + RandomFlip and ResizePad.
 *
 * The train transform is checked on synthetic images (loader/synth.c) whose per-pixel object mask
 * and exact tight boxes are known:
 *   - the image equals the naive pipeline effdet runs (full resize_rgb, crop, paste on a fill
 *     canvas, mirror the whole canvas, normalize), byte for byte;
 *   - the boxes equal effdet's formulas recomputed here in double (to float32 precision), kept and
 *     dropped alike, and map back (undo flip, + offset, * img_scale) onto the original boxes
 *     clipped to the visible window;
 *   - on the pixels: every output pixel whose centre maps into object k lies inside k's box, the
 *     box centre of a large rectangle or disk has the object's colour, every visible pixel stays
 *     within the range of the source pixels under its filter footprint (background stays
 *     background), and the padding is exactly the normalized fill colour, on the left when
 *     flipped. The same runs on a 2x reduced decode passed with its original size.
 * Then: the eval round trip, parameter determinism, F16 / BF16 against a rounding reference
 * written independently here (nearest value by search over the format's values), and degenerate
 * inputs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "augment/resize.h"
#include "augment/transform.h"
#include "loader/synth.h"
#include "shared/rng.h"

/* ---- helpers --------------------------------------------------------------------------------- */

/* normalize_rgb_to_nhwc's values, from its documented formula. */
static float g_lut[3][256];

static void lut_init(void)
{
    for (int c = 0; c < 3; c++) {
        float m = (float)(resize_imagenet_mean[c] * 255), s = (float)(resize_imagenet_std[c] * 255);
        for (int v = 0; v < 256; v++) g_lut[c][v] = ((float)v - m) / s;
    }
}

/* The byte whose normalized value is exactly v on channel c; fails when there is none. */
static int denorm(float v, int c, int x, int y)
{
    int lo = 0, hi = 255;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (g_lut[c][mid] < v) lo = mid + 1;
        else hi = mid;
    }
    if (g_lut[c][lo] != v) fail_msg("pixel (%d, %d) c %d: %.9g is no normalized byte", x, y, c, v);
    return lo;
}

static void render(int index, int w, int h, SynthImage *img)
{
    SynthConfig c;
    synth_config_default(&c);
    c.seed = 11, c.n_images = index + 1, c.width = w, c.height = h, c.fixed_size = 1;
    c.n_classes = 6;
    Err err = {{0}};
    if (synth_render(&c, index, img, &err) != 0) fail_msg("synth_render: %s", err.msg);
}

static int synth_boxes(const SynthImage *img, DatasetBox *b)
{
    for (int k = 0; k < img->n_objects; k++) {
        const SynthObject *o = &img->obj[k];
        b[k] = (DatasetBox){(float)o->bbox[0], (float)o->bbox[1], (float)(o->bbox[0] + o->bbox[2]),
                            (float)(o->bbox[1] + o->bbox[3]), o->cls + 1, o->iscrowd};
    }
    return img->n_objects;
}

/* effdet's RandomResizePad numbers, recomputed from its Python (with the scaled-side clamp). */
typedef struct Geo {
    double s;
    int sw, sh, ox, oy, vw, vh;
} Geo;

static Geo geo_of(const AugConfig *c, const AugTrainParams *p, int w, int h)
{
    Geo g;
    double sy = p->scale_factor * c->height / h, sx = p->scale_factor * c->width / w;
    g.s = fmin(sy, sx);
    g.sh = (int)(h * g.s), g.sw = (int)(w * g.s);
    g.sh = g.sh < 1 ? 1 : g.sh, g.sw = g.sw < 1 ? 1 : g.sw;
    g.oy = (int)(fmax(0.0, (double)(g.sh - c->height)) * p->u_y);
    g.ox = (int)(fmax(0.0, (double)(g.sw - c->width)) * p->u_x);
    g.vh = g.sh - g.oy < c->height ? g.sh - g.oy : c->height;
    g.vw = g.sw - g.ox < c->width ? g.sw - g.ox : c->width;
    return g;
}

static float *alloc_out(const AugConfig *c)
{
    float *p = malloc(aug_image_bytes(c));
    assert_non_null(p);
    return p;
}

/* ---- 1. train transform on synthetic shapes -------------------------------------------------- */

/* The naive pipeline: full resize, crop, paste at the top-left of a fill canvas, mirror. */
static void naive_train(const AugConfig *c, const AugTrainParams *p, const RgbImage *img,
                        const Geo *g, float *want)
{
    RgbImage full = {0};
    Err err = {{0}};
    if (resize_rgb(img, g->sw, g->sh, p->filter, &full, &err) != 0) fail_msg("%s", err.msg);
    int W = c->width, H = c->height;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int xc = p->flip ? W - 1 - x : x;
            const uint8_t *px = c->fill;
            if (xc < g->vw && y < g->vh)
                px = full.px + ((size_t)(y + g->oy) * full.w + (xc + g->ox)) * 3;
            for (int ch = 0; ch < 3; ch++) want[((size_t)y * W + x) * 3 + ch] = g_lut[ch][px[ch]];
        }
    rgb_image_free(&full);
}

/* Checks the rows of t against effdet's box arithmetic in double: object j kept when its clipped
 * box has area; rows in object order; returns, per object, its row or -1. */
static void check_boxes(const AugConfig *c, const AugTrainParams *p, const Geo *g,
                        const DatasetBox *b, int n, const SampleTarget *t, int dropped, int *row_of)
{
    int r = 0;
    for (int j = 0; j < n; j++) {
        double e[4] = {b[j].y1 * g->s - g->oy, b[j].x1 * g->s - g->ox, b[j].y2 * g->s - g->oy,
                       b[j].x2 * g->s - g->ox};
        for (int k = 0; k < 4; k++) e[k] = fmin(fmax(e[k], 0.0), k & 1 ? g->vw : g->vh);
        if (p->flip) {
            double x1 = c->width - e[3], x2 = c->width - e[1];
            e[1] = x1, e[3] = x2;
        }
        double area_h = e[2] - e[0], area_w = e[3] - e[1];
        row_of[j] = -1;
        int match = r < t->n && t->cls[r] == b[j].label && t->crowd[r] == (uint8_t)b[j].iscrowd;
        for (int k = 0; k < 4 && match; k++) match = fabs(t->bbox[r][k] - e[k]) <= 2e-3;
        if (area_h > 1e-3 && area_w > 1e-3) {
            if (!match)
                fail_msg("object %d (label %d, box %g %g %g %g): row %d is label %d, yxyx %g %g "
                         "%g %g; want yxyx %g %g %g %g", j, b[j].label, b[j].x1, b[j].y1, b[j].x2,
                         b[j].y2, r, r < t->n ? t->cls[r] : -1, t->bbox[r][0], t->bbox[r][1],
                         t->bbox[r][2], t->bbox[r][3], e[0], e[1], e[2], e[3]);
        } else if (area_h > 0 && area_w > 0) {
            if (!match) continue; /* a sliver: float32 may keep or drop it */
        } else {
            continue;
        }
        row_of[j] = r++;
    }
    if (r != t->n) fail_msg("%d rows written, %d matched objects", t->n, r);
    assert_int_equal(dropped, n - t->n);
    for (int i = t->n; i < DATASET_MAX_INSTANCES; i++) {
        assert_int_equal(t->cls[i], -1);
        for (int k = 0; k < 4; k++) assert_true(t->bbox[i][k] == -1.0f);
    }
    /* The brief's round trip: undo the flip, add the offset, * img_scale; compare with the original
     * box clipped to the visible window, within 0.5 px / s + 1 px. */
    double tol = 0.5 / g->s + 1, wx0 = g->ox / g->s, wx1 = (g->ox + g->vw) / g->s;
    double wy0 = g->oy / g->s, wy1 = (g->oy + g->vh) / g->s;
    for (int j = 0; j < n; j++) {
        if (row_of[j] < 0) continue;
        const float *q = t->bbox[row_of[j]];
        double x1 = q[1], x2 = q[3];
        if (p->flip) x1 = c->width - q[3], x2 = c->width - q[1];
        double got[4] = {(q[0] + g->oy) * t->img_scale, (x1 + g->ox) * t->img_scale,
                         (q[2] + g->oy) * t->img_scale, (x2 + g->ox) * t->img_scale};
        double want[4] = {fmin(fmax(b[j].y1, wy0), wy1), fmin(fmax(b[j].x1, wx0), wx1),
                          fmin(fmax(b[j].y2, wy0), wy1), fmin(fmax(b[j].x2, wx0), wx1)};
        for (int k = 0; k < 4; k++)
            if (fabs(got[k] - want[k]) > tol)
                fail_msg("object %d coord %d maps back to %g, want %g (tol %g)", j, k, got[k],
                         want[k], tol);
    }
}

/* Source pixels that are inside object k with their four neighbours (flat object colour). */
static uint8_t *inner_mask(const SynthImage *im)
{
    int w = im->rgb.w, h = im->rgb.h;
    uint8_t *in = calloc((size_t)w * h, 1);
    assert_non_null(in);
    for (int y = 1; y < h - 1; y++)
        for (int x = 1; x < w - 1; x++) {
            size_t i = (size_t)y * w + x;
            uint8_t m = im->mask[i];
            if (m && im->mask[i - 1] == m && im->mask[i + 1] == m && im->mask[i - w] == m &&
                im->mask[i + w] == m)
                in[i] = m;
        }
    return in;
}

/* The pixel checks of one output (see the top). dec_w is the decoded width (orig or orig / 2). */
static void check_pixels(const AugConfig *c, const AugTrainParams *p, const Geo *g,
                         const SynthImage *im, int dec_w, int dec_h, const float *out,
                         const SampleTarget *t, const int *row_of)
{
    int W = c->width, H = c->height, ow = im->rgb.w, oh = im->rgb.h, half = dec_w != ow;
    double support = p->filter == RESIZE_BICUBIC ? 2 : 1;
    /* footprint half-widths in original pixels: the filter (antialiased when shrinking), plus the
     * 2x decode's own bilinear footprint, plus a pixel of slack for centre rounding */
    double rx = support * fmax(1.0, (double)dec_w / g->sw) * ow / dec_w + (half ? 2 : 0) + 1;
    double ry = support * fmax(1.0, (double)dec_h / g->sh) * oh / dec_h + (half ? 2 : 0) + 1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const float *v = out + ((size_t)y * W + x) * 3;
            int xc = p->flip ? W - 1 - x : x;
            if (xc >= g->vw || y >= g->vh) {
                for (int ch = 0; ch < 3; ch++)
                    if (v[ch] != g_lut[ch][c->fill[ch]])
                        fail_msg("padding (%d, %d) c %d: %g, want the fill %g", x, y, ch, v[ch],
                                 g_lut[ch][c->fill[ch]]);
                continue;
            }
            double sx = (xc + g->ox + 0.5) * ow / g->sw, sy = (y + g->oy + 0.5) * oh / g->sh;
            int mx = (int)sx, my = (int)sy;
            mx = mx < ow ? mx : ow - 1, my = my < oh ? my : oh - 1;
            int k = im->mask[(size_t)my * ow + mx];
            if (k) { /* a pixel of object k lies in k's box (1.5 px for resampling) */
                int r = row_of[k - 1];
                if (r < 0)
                    fail_msg("pixel (%d, %d) shows object %d, which has no box", x, y, k - 1);
                const float *q = t->bbox[r];
                if (y + 0.5 < q[0] - 1.5 || y + 0.5 > q[2] + 1.5 || x + 0.5 < q[1] - 1.5 ||
                    x + 0.5 > q[3] + 1.5)
                    fail_msg("pixel (%d, %d) of object %d is outside its box yxyx %g %g %g %g", x,
                             y, k - 1, q[0], q[1], q[2], q[3]);
            }
            if ((x | y) & 1) continue; /* footprint ranges on every other pixel: time */
            int x0 = (int)floor(sx - rx), x1 = (int)floor(sx + rx);
            int y0 = (int)floor(sy - ry), y1 = (int)floor(sy + ry);
            x0 = x0 < 0 ? 0 : x0, y0 = y0 < 0 ? 0 : y0;
            x1 = x1 >= ow ? ow - 1 : x1, y1 = y1 >= oh ? oh - 1 : y1;
            int lo[3] = {255, 255, 255}, hi[3] = {0, 0, 0};
            for (int yy = y0; yy <= y1; yy++)
                for (int xx = x0; xx <= x1; xx++)
                    for (int ch = 0; ch < 3; ch++) {
                        int s = im->rgb.px[((size_t)yy * ow + xx) * 3 + ch];
                        lo[ch] = s < lo[ch] ? s : lo[ch], hi[ch] = s > hi[ch] ? s : hi[ch];
                    }
            for (int ch = 0; ch < 3; ch++) {
                int got = denorm(v[ch], ch, x, y);
                double slack = 2 + (p->filter == RESIZE_BICUBIC ? 0.2 * (hi[ch] - lo[ch]) : 0);
                if (got < lo[ch] - slack || got > hi[ch] + slack)
                    fail_msg("pixel (%d, %d) c %d = %d outside its source range [%d, %d] "
                             "(source %.1f, %.1f, flip %d)", x, y, ch, got, lo[ch], hi[ch], sx, sy,
                             p->flip);
            }
        }
    /* Box centres of large, fully visible rectangles and disks have the object's colour. */
    uint8_t *in = inner_mask(im);
    for (int j = 0; j < im->n_objects; j++) {
        const SynthObject *o = &im->obj[j];
        int r = row_of[j];
        if (r < 0 || o->iscrowd || synth_class_shape(o->cls) == SYNTH_TRIANGLE) continue;
        if (o->bbox[0] * g->s < g->ox || (o->bbox[0] + o->bbox[2]) * g->s > g->ox + g->vw ||
            o->bbox[1] * g->s < g->oy || (o->bbox[1] + o->bbox[3]) * g->s > g->oy + g->vh)
            continue; /* clipped: its box centre is not the object's */
        const float *q = t->bbox[r];
        if (q[2] - q[0] < 16 || q[3] - q[1] < 16) continue;
        int cx = (int)((q[1] + q[3]) / 2), cy = (int)((q[0] + q[2]) / 2);
        size_t centre = (size_t)(o->bbox[1] + o->bbox[3] / 2) * ow + (o->bbox[0] + o->bbox[2] / 2);
        assert_int_equal(in[centre], j + 1);
        for (int ch = 0; ch < 3; ch++) {
            int got = denorm(out[((size_t)cy * W + cx) * 3 + ch], ch, cx, cy);
            int want = im->rgb.px[centre * 3 + ch];
            if (abs(got - want) > 2)
                fail_msg("box centre (%d, %d) of object %d c %d: %d, want the object's %d", cx,
                         cy, j, ch, got, want);
        }
    }
    free(in);
}

typedef struct Coverage {
    int down, up_cropped, flipped, bilinear, bicubic, clipped, dropped;
} Coverage;

static void run_train_case(const AugConfig *c, uint32_t epoch, uint64_t index, int w, int h,
                           int half, Coverage *cov)
{
    SynthImage im = {0};
    render((int)(index % 16), w, h, &im);
    DatasetBox b[SYNTH_MAX_OBJECTS];
    int n = synth_boxes(&im, b);
    RgbImage dec = {0};
    const RgbImage *src = &im.rgb;
    Err err = {{0}};
    if (half) {
        if (resize_rgb(&im.rgb, w / 2, h / 2, RESIZE_BILINEAR, &dec, &err) != 0)
            fail_msg("%s", err.msg);
        src = &dec;
    }
    AugTrainParams p;
    aug_train_params(c, epoch, index, &p);
    Geo g = geo_of(c, &p, w, h);
    assert_true(aug_train_image_scale(c, &p, w, h) == g.s);
    print_message("draw (%u, %llu): %d x %d%s, scale %.3f -> %d x %d at (%d, %d), flip %d, %s\n",
                  epoch, (unsigned long long)index, w, h, half ? " (2x decode)" : "",
                  p.scale_factor, g.sw, g.sh, g.ox, g.oy, p.flip,
                  p.filter == RESIZE_BICUBIC ? "bicubic" : "bilinear");
    AugScratch s = {0};
    float *out = alloc_out(c), *want = alloc_out(c);
    SampleTarget t;
    memset(&t, 0x5a, sizeof t);
    t.image_id = 77, t.index = 5;
    int dropped = aug_train_apply(c, &p, src, w, h, b, n, &s, out, &t, &err);
    if (dropped < 0) fail_msg("aug_train_apply: %s", err.msg);
    naive_train(c, &p, src, &g, want);
    for (size_t i = 0; i < (size_t)c->width * c->height * 3; i++)
        if (out[i] != want[i])
            fail_msg("value %zu (x %zu, y %zu, c %zu): %g, the naive pipeline gives %g", i,
                     i / 3 % (size_t)c->width, i / 3 / (size_t)c->width, i % 3, out[i], want[i]);
    assert_true(t.img_scale == (float)(1.0 / g.s));
    assert_int_equal(t.img_w, w);
    assert_int_equal(t.img_h, h);
    assert_int_equal(t.scaled_w, g.sw);
    assert_int_equal(t.scaled_h, g.sh);
    assert_int_equal(t.flipped, p.flip);
    assert_int_equal(t.image_id, 77);
    assert_int_equal(t.index, 5);
    int row_of[SYNTH_MAX_OBJECTS];
    check_boxes(c, &p, &g, b, n, &t, dropped, row_of);
    check_pixels(c, &p, &g, &im, src->w, src->h, out, &t, row_of);
    for (int j = 0; j < n; j++)
        if (row_of[j] >= 0 && (b[j].x1 * g.s < g.ox || b[j].x2 * g.s > g.ox + g.vw ||
                               b[j].y1 * g.s < g.oy || b[j].y2 * g.s > g.oy + g.vh))
            cov->clipped++;
    cov->down += g.s < 1, cov->up_cropped += g.s > 1 && (g.ox > 0 || g.oy > 0);
    cov->flipped += p.flip, cov->dropped += dropped > 0;
    cov->bilinear += p.filter == RESIZE_BILINEAR, cov->bicubic += p.filter == RESIZE_BICUBIC;
    free(out);
    free(want);
    aug_scratch_free(&s);
    aug_scratch_free(&s); /* idempotent */
    rgb_image_free(&dec);
    synth_image_free(&im);
}

static void test_train_on_shapes(void **state)
{
    AugConfig c = aug_config_default(192, 256); /* H != W: catches swapped axes */
    c.seed = 2024;
    static const int sizes[][2] = {{320, 240}, {240, 320}, {400, 160}, {120, 300}, {96, 96}};
    Coverage cov = {0};
    for (uint64_t i = 0; i < 30; i++) {
        const int *sz = sizes[i % 5];
        run_train_case(&c, (uint32_t)(i % 3), i, sz[0], sz[1], 0, &cov);
    }
    print_message("coverage: %d down, %d up+cropped, %d flipped, %d bilinear, %d bicubic, %d "
                  "clipped boxes, %d draws dropping boxes\n", cov.down, cov.up_cropped,
                  cov.flipped, cov.bilinear, cov.bicubic, cov.clipped, cov.dropped);
    assert_true(cov.down >= 3 && cov.up_cropped >= 3 && cov.flipped >= 3 && cov.flipped <= 27);
    assert_true(cov.bilinear >= 3 && cov.bicubic >= 3 && cov.clipped >= 3 && cov.dropped >= 1);
}

/* Black fill, fixed bicubic, and a 2x reduced decode passed with its original size. */
static void test_train_reduced_decode(void **state)
{
    AugConfig c = aug_config_default(160, 160);
    c.seed = 5, c.interp = AUG_BICUBIC, memset(c.fill, 0, 3);
    Coverage cov = {0};
    for (uint64_t i = 0; i < 10; i++) run_train_case(&c, 1, 100 + i, 320, 240, 1, &cov);
    assert_int_equal(cov.bicubic, 10);
    assert_true(cov.flipped >= 1 && cov.flipped <= 9);
}

/* F16 and BF16 outputs are the conversions of the F32 output. */
static uint16_t ref_f16(float f);
static uint16_t ref_bf16(float f);

static void test_train_half_dtypes(void **state)
{
    SynthImage im = {0};
    render(3, 300, 200, &im);
    DatasetBox b[SYNTH_MAX_OBJECTS];
    int n = synth_boxes(&im, b);
    AugConfig c = aug_config_default(128, 128);
    AugScratch s = {0};
    Err err = {{0}};
    float *f32 = alloc_out(&c);
    uint16_t *h16 = malloc((size_t)128 * 128 * 3 * 2);
    assert_non_null(h16);
    for (uint64_t i = 0; i < 4; i++) {
        AugTrainParams p;
        aug_train_params(&c, 0, i, &p);
        SampleTarget t32, t16;
        memset(&t32, 0, sizeof t32);
        memset(&t16, 0, sizeof t16);
        c.dtype = ST_F32;
        assert_true(aug_train_apply(&c, &p, &im.rgb, 300, 200, b, n, &s, f32, &t32, &err) >= 0);
        const uint8_t *canvas_px = s.canvas.px;
        for (int dt = 0; dt < 2; dt++) {
            c.dtype = dt ? ST_BF16 : ST_F16;
            assert_int_equal(aug_image_bytes(&c), (size_t)128 * 128 * 3 * 2);
            assert_true(aug_train_apply(&c, &p, &im.rgb, 300, 200, b, n, &s, h16, &t16, &err) >= 0);
            assert_ptr_equal(s.canvas.px, canvas_px); /* no reallocation */
            for (size_t k = 0; k < (size_t)128 * 128 * 3; k++) {
                uint16_t want = dt ? ref_bf16(f32[k]) : ref_f16(f32[k]);
                if (h16[k] != want)
                    fail_msg("%s value %zu: 0x%04x, want 0x%04x (from %.9g)", dt ? "BF16" : "F16",
                             k, h16[k], want, f32[k]);
            }
            assert_memory_equal(&t16, &t32, sizeof t32);
        }
    }
    free(f32);
    free(h16);
    aug_scratch_free(&s);
    synth_image_free(&im);
}

/* ---- 2. eval round trip ---------------------------------------------------------------------- */

static void test_eval_round_trip(void **state)
{
    static const int sizes[][2] = {{640, 480}, {480, 640}, {100, 50}, {50, 100}, {37, 513},
                                   {1000, 6},  {3, 700},   {256, 192}, {1, 1},   {511, 512}};
    AugConfig c = aug_config_default(256, 192);
    AugScratch s = {0};
    Err err = {{0}};
    float *out = alloc_out(&c), *want = alloc_out(&c);
    Rng r;
    rng_init(&r, 99, 0x7e57u, 0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        int w = sizes[i][0], h = sizes[i][1];
        RgbImage img = {0}, box = {0};
        assert_int_equal(rgb_image_alloc(&img, w, h, &err), 0);
        for (size_t k = 0; k < (size_t)w * h * 3; k++) img.px[k] = (uint8_t)(rng_u32(&r) >> 24);
        DatasetBox b[40];
        for (int k = 0; k < 40; k++) {
            float x1 = rng_uniform(&r) * w, x2 = rng_uniform(&r) * w;
            float y1 = rng_uniform(&r) * h, y2 = rng_uniform(&r) * h;
            b[k] = (DatasetBox){fminf(x1, x2), fminf(y1, y2), fmaxf(x1, x2) + 0.5f,
                                fmaxf(y1, y2) + 0.5f, 1 + k % 5, k % 7 == 0};
            b[k].x2 = fminf(b[k].x2, (float)w), b[k].y2 = fminf(b[k].y2, (float)h);
        }
        SampleTarget t;
        int dropped = aug_eval_apply(&c, &img, b, 40, &s, out, &t, &err);
        if (dropped < 0) fail_msg("%d x %d: %s", w, h, err.msg);
        float scale;
        assert_int_equal(letterbox_rgb(&img, 256, 192, c.fill, RESIZE_BILINEAR, &box, &scale,
                                       &err), 0);
        normalize_rgb_to_nhwc(&box, want, resize_imagenet_mean, resize_imagenet_std);
        assert_memory_equal(out, want, aug_image_bytes(&c));
        assert_true(t.img_scale == scale);
        double s_ = fmin(256.0 / h, 192.0 / w);
        int sw = (int)(w * s_), sh = (int)(h * s_);
        assert_int_equal(t.scaled_w, sw);
        assert_int_equal(t.scaled_h, sh);
        assert_int_equal(t.img_w, w);
        assert_int_equal(t.img_h, h);
        assert_int_equal(t.flipped, 0);
        /* What the scaled image shows of the original: [0, sw / s) x [0, sh / s). */
        double vis_w = sw / s_, vis_h = sh / s_;
        int k = 0;
        for (int j = 0; j < 40; j++) {
            double want_b[4] = {fmin(b[j].y1, vis_h), fmin(b[j].x1, vis_w), fmin(b[j].y2, vis_h),
                                fmin(b[j].x2, vis_w)};
            double area_h = want_b[2] - want_b[0], area_w = want_b[3] - want_b[1];
            if (!(area_h > 0 && area_w > 0)) continue;
            int match = k < t.n && t.cls[k] == b[j].label && t.crowd[k] == b[j].iscrowd;
            for (int q = 0; q < 4 && match; q++)
                match = fabs(t.bbox[k][q] * t.img_scale - want_b[q]) <= 0.5;
            if (!match && area_h < 1e-2 && area_w < 1e-2) continue; /* a sliver: either way */
            assert_true(k < t.n);
            assert_int_equal(t.cls[k], b[j].label);
            assert_int_equal(t.crowd[k], b[j].iscrowd);
            for (int q = 0; q < 4; q++) {
                double got = (double)t.bbox[k][q] * t.img_scale;
                if (fabs(got - want_b[q]) > 0.5)
                    fail_msg("%d x %d box %d coord %d: %g * %g = %g, want %g", w, h, j, q,
                             t.bbox[k][q], t.img_scale, got, want_b[q]);
            }
            k++;
        }
        assert_int_equal(t.n, k);
        assert_int_equal(dropped, 40 - k);
        rgb_image_free(&img);
        rgb_image_free(&box);
    }
    free(out);
    free(want);
    aug_scratch_free(&s);
}

/* ---- 3. determinism of the parameters -------------------------------------------------------- */

static int params_equal(const AugTrainParams *a, const AugTrainParams *b)
{
    return a->scale_factor == b->scale_factor && a->u_y == b->u_y && a->u_x == b->u_x &&
           a->flip == b->flip && a->filter == b->filter;
}

static void test_params_deterministic(void **state)
{
    AugConfig c = aug_config_default(512, 512);
    c.seed = 42;
    enum { N = 2000 };
    AugTrainParams *fw = malloc(sizeof *fw * N);
    assert_non_null(fw);
    int flips = 0, cubic = 0;
    double mean_y = 0, mean_x = 0;
    for (int i = 0; i < N; i++) {
        aug_train_params(&c, 3, (uint64_t)i, &fw[i]);
        const AugTrainParams *p = &fw[i];
        if (!(p->scale_factor >= 0.1 && p->scale_factor < 2.0))
            fail_msg("draw %d: scale %.17g outside [0.1, 2)", i, p->scale_factor);
        assert_true(p->u_y >= 0 && p->u_y < 1 && p->u_x >= 0 && p->u_x < 1);
        flips += p->flip, cubic += p->filter == RESIZE_BICUBIC;
        mean_y += p->u_y / N, mean_x += p->u_x / N;
    }
    print_message("%d flips, %d bicubic of %d; mean u_y %.3f, u_x %.3f\n", flips, cubic, N, mean_y,
                  mean_x);
    assert_in_range(flips, 900, 1100);
    assert_in_range(cubic, 900, 1100);
    assert_true(fabs(mean_y - 0.5) < 0.03 && fabs(mean_x - 0.5) < 0.03);
    /* Backwards and interleaved with other epochs: the same values. */
    for (int i = N - 1; i >= 0; i -= 7) {
        AugTrainParams p, other;
        aug_train_params(&c, 4, (uint64_t)i, &other);
        aug_train_params(&c, 3, (uint64_t)i, &p);
        if (!params_equal(&p, &fw[i])) fail_msg("draw %d differs when drawn out of order", i);
        assert_false(params_equal(&p, &other));
    }
    /* Another seed, epoch or neighbouring index differs. */
    AugConfig c2 = c;
    c2.seed = 43;
    int same = 0;
    for (int i = 0; i < 100; i++) {
        AugTrainParams p;
        aug_train_params(&c2, 3, (uint64_t)i, &p);
        same += p.scale_factor == fw[i].scale_factor;
        same += i > 0 && fw[i].scale_factor == fw[i - 1].scale_factor;
    }
    assert_int_equal(same, 0);
    /* Switching flips or the filter off changes nothing else (every draw is always made). */
    AugConfig c3 = c;
    c3.hflip = 0, c3.interp = AUG_BILINEAR, c3.scale_min = 0.5, c3.scale_max = 1.5;
    for (int i = 0; i < 200; i++) {
        AugTrainParams p;
        aug_train_params(&c3, 3, (uint64_t)i, &p);
        assert_int_equal(p.flip, 0);
        assert_int_equal(p.filter, RESIZE_BILINEAR);
        assert_true(p.u_y == fw[i].u_y && p.u_x == fw[i].u_x);
        double u = (fw[i].scale_factor - 0.1) / 1.9;
        assert_true(fabs(p.scale_factor - (0.5 + u)) < 1e-12);
    }
    c3.interp = AUG_BICUBIC;
    AugTrainParams p;
    aug_train_params(&c3, 0, 0, &p);
    assert_int_equal(p.filter, RESIZE_BICUBIC);
    /* The documented stream: Philox (seed, 'T' << 24 | epoch, index); words: scale (2), u_y (2),
     * u_x (2), flip, filter; a uniform is ((a >> 5) * 2^26 + (b >> 6)) / 2^53. */
    for (int i = 0; i < 50; i++) {
        Rng r;
        rng_init(&r, 42, 0x54u << 24 | 3, (uint32_t)i);
        double u[3];
        for (int k = 0; k < 3; k++) {
            uint32_t a = rng_u32(&r) >> 5, b = rng_u32(&r) >> 6;
            u[k] = ldexp((double)a * 67108864.0 + b, -53);
        }
        uint32_t flip = rng_u32(&r), filter = rng_u32(&r);
        assert_true(fw[i].scale_factor == 0.1 + (2.0 - 0.1) * u[0]);
        assert_true(fw[i].u_y == u[1] && fw[i].u_x == u[2]);
        assert_int_equal(fw[i].flip, flip >> 31);
        assert_int_equal(fw[i].filter, filter >> 31 ? RESIZE_BICUBIC : RESIZE_BILINEAR);
    }
    free(fw);
}

/* ---- 4. F16 / BF16 ------------------------------------------------------------------------- */

/* Values of the positive encodings, increasing with the bits; the infinity code stands for the
 * next power of two, where rounding with an unbounded exponent would land (IEEE's overflow
 * rule). */
static double f16_value(uint32_t bits)
{
    uint32_t e = bits >> 10, m = bits & 0x3ff;
    return e == 0 ? ldexp(m, -24) : ldexp(1024 + m, (int)e - 25);
}

static double bf16_value(uint32_t bits)
{
    if (bits == 0x7f80) return ldexp(1, 128);
    uint32_t e = bits >> 7, m = bits & 0x7f;
    return e == 0 ? ldexp(m, -133) : ldexp(128 + m, (int)e - 134);
}

/* Nearest encoding of |f| by binary search over [0, inf_code], ties to the even code. */
static uint16_t ref_round(float f, double (*value)(uint32_t), uint32_t inf_code)
{
    double a = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    if (a >= value(inf_code)) return sign | (uint16_t)inf_code;
    uint32_t lo = 0, hi = inf_code; /* value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (value(mid) <= a) lo = mid;
        else hi = mid;
    }
    double dl = a - value(lo), dh = value(hi) - a;
    uint32_t q = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
    return sign | (uint16_t)q;
}

static uint16_t ref_f16(float f) { return ref_round(f, f16_value, 0x7c00); }
static uint16_t ref_bf16(float f) { return ref_round(f, bf16_value, 0x7f80); }

static void test_normalize_half_dtypes(void **state)
{
    RgbImage img = {0};
    Err err = {{0}};
    assert_int_equal(rgb_image_alloc(&img, 256, 2, &err), 0);
    for (int x = 0; x < 256; x++)
        for (int c = 0; c < 3; c++) {
            img.px[x * 3 + c] = (uint8_t)x;
            img.px[(256 + x) * 3 + c] = (uint8_t)(255 - x);
        }
    float f32[512 * 3], want[512 * 3];
    uint16_t h[512 * 3];
    aug_normalize(&img, ST_F32, f32);
    normalize_rgb_to_nhwc(&img, want, resize_imagenet_mean, resize_imagenet_std);
    assert_memory_equal(f32, want, sizeof f32);
    for (int dt = 0; dt < 2; dt++) {
        aug_normalize(&img, dt ? ST_BF16 : ST_F16, h);
        for (int i = 0; i < 512 * 3; i++) {
            uint16_t r = dt ? ref_bf16(f32[i]) : ref_f16(f32[i]);
            if (h[i] != r)
                fail_msg("%s of %.9g (pixel %d c %d): 0x%04x, want 0x%04x", dt ? "BF16" : "F16",
                         f32[i], i / 3, i % 3, h[i], r);
        }
    }
    rgb_image_free(&img);
    /* The converters on ties, subnormals, overflow and random bit patterns. */
    static const float special[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65519.99f, 65520.0f, 1e9f,
                                    -1e9f, 5.960464477539063e-8f, 2.9802322387695312e-8f,
                                    2.98023259e-8f, 6.1035156e-5f, 6.0975552e-5f, 1.00048828125f,
                                    1.00146484375f, 1.00390625f, 1.01171875f, 3.4e38f, -1e-45f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        assert_int_equal(aug_f32_to_f16(special[i]), ref_f16(special[i]));
        assert_int_equal(aug_f32_to_bf16(special[i]), ref_bf16(special[i]));
    }
    assert_int_equal(aug_f32_to_f16(1.00048828125f), 0x3c00);  /* tie, to even (down) */
    assert_int_equal(aug_f32_to_f16(1.00146484375f), 0x3c02);  /* tie, to even (up) */
    assert_int_equal(aug_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(aug_f32_to_bf16(1.00390625f), 0x3f80);
    assert_int_equal(aug_f32_to_bf16(1.01171875f), 0x3f82);
    Rng r;
    rng_init(&r, 1, 0xf16u, 0);
    for (int i = 0; i < 20000; i++) {
        uint32_t bits = rng_u32(&r);
        if (i % 3) /* exponents 2^-27 .. 2^18: half's subnormal, normal and overflow ranges */
            bits = (bits & 0x807fffffu) | (100u + rng_u32(&r) % 46) << 23;
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f) || isinf(f)) continue;
        if (aug_f32_to_f16(f) != ref_f16(f))
            fail_msg("F16 of %.9g (0x%08x): 0x%04x, want 0x%04x", f, bits, aug_f32_to_f16(f),
                     ref_f16(f));
        if (aug_f32_to_bf16(f) != ref_bf16(f))
            fail_msg("BF16 of %.9g (0x%08x): 0x%04x, want 0x%04x", f, bits, aug_f32_to_bf16(f),
                     ref_bf16(f));
    }
}

/* ---- 5. degenerate inputs ------------------------------------------------------------------- */

static void train_fixed(const AugConfig *c, double scale, double u_y, double u_x, int flip,
                        const RgbImage *img, int ow, int oh, const DatasetBox *b, int n,
                        SampleTarget *t, int want_rc)
{
    AugTrainParams p = {scale, u_y, u_x, flip, RESIZE_BICUBIC};
    AugScratch s = {0};
    Err err = {{0}};
    float *out = alloc_out(c);
    int rc = aug_train_apply(c, &p, img, ow, oh, b, n, &s, out, t, &err);
    if (rc != want_rc) fail_msg("%d x %d at scale %g: rc %d (%s), want %d", ow, oh, scale, rc,
                                rc < 0 ? err.msg : "", want_rc);
    Geo g = geo_of(c, &p, ow, oh);
    for (int y = 0; y < c->height; y++) /* the padding is the fill */
        for (int x = 0; x < c->width; x++) {
            int xc = flip ? c->width - 1 - x : x;
            if (xc < g.vw && y < g.vh) continue;
            for (int ch = 0; ch < 3; ch++)
                assert_true(out[((size_t)y * c->width + x) * 3 + ch] == g_lut[ch][c->fill[ch]]);
        }
    free(out);
    aug_scratch_free(&s);
}

static void test_degenerate(void **state)
{
    AugConfig c = aug_config_default(64, 96);
    Err err = {{0}};
    SampleTarget t;
    /* 1 x 1 image, every kind of draw */
    RgbImage one = {0};
    assert_int_equal(rgb_image_alloc(&one, 1, 1, &err), 0);
    one.px[0] = 200, one.px[1] = 10, one.px[2] = 30;
    DatasetBox b1 = {0, 0, 1, 1, 3, 0};
    AugScratch s = {0};
    float *out = alloc_out(&c);
    for (uint64_t i = 0; i < 20; i++) {
        AugTrainParams p;
        aug_train_params(&c, 0, i, &p);
        assert_int_equal(aug_train_apply(&c, &p, &one, 1, 1, &b1, 1, &s, out, &t, &err), 0);
        assert_int_equal(t.n, 1);
        int x = p.flip ? c.width - 1 : 0;
        assert_in_range(denorm(out[x * 3], 0, x, 0), 199, 201);
        int vis_h = t.scaled_h < c.height ? t.scaled_h : c.height;
        assert_true(t.bbox[0][0] == 0 && t.bbox[0][2] == (float)vis_h);
    }
    free(out);
    aug_scratch_free(&s);
    rgb_image_free(&one);
    /* 4000 x 10 at scale 0.1 into 512 x 512: the height scales to 0 and is clamped to 1 */
    AugConfig big = aug_config_default(512, 512);
    RgbImage thin = {0};
    assert_int_equal(rgb_image_alloc(&thin, 4000, 10, &err), 0);
    memset(thin.px, 90, (size_t)4000 * 10 * 3);
    DatasetBox bt[3] = {
        {100, 0, 300, 10, 1, 0}, {3900, 2, 3990, 8, 2, 0}, {3990, 0, 4000, 10, 3, 0}};
    float st = (float)fmin(0.1 * 512 / 10, 0.1 * 512 / 4000);
    train_fixed(&big, 0.1, 0.5, 0.5, 0, &thin, 4000, 10, bt, 3, &t, 1); /* the last is clipped */
    assert_int_equal(t.scaled_w, 51);
    assert_int_equal(t.scaled_h, 1);
    assert_int_equal(t.n, 2);
    assert_true(t.bbox[1][0] == 2 * st && t.bbox[1][2] == 8 * st && t.bbox[1][3] == 51);
    train_fixed(&big, 0.1, 0.5, 0.5, 1, &thin, 4000, 10, bt, 3, &t, 1);
    assert_true(t.bbox[1][1] == 512.0f - 51 && t.bbox[1][3] == 512.0f - 3900 * st);
    rgb_image_free(&thin);
    /* Boxes wholly outside the crop are dropped and counted: 640 x 480 at scale 2 into 96 x 64
     * scales by 128 / 480 to 170 x 128; the window is 96 x 64 at the top-left (u = 0) or at
     * (73, 63) (u ~ 1). */
    SynthImage im = {0};
    render(1, 640, 480, &im);
    DatasetBox bc[4] = {{0, 0, 100, 100, 1, 0},      /* top-left: in the first window only */
                        {500, 0, 640, 100, 2, 0},    /* x 133..171: right of the first window */
                        {300, 400, 450, 480, 3, 1},  /* y 107..128: below the first window */
                        {300, 100, 400, 200, 4, 0}}; /* x 80..107: across its right edge */
    float sc = (float)(128.0 / 480);
    train_fixed(&c, 2.0, 0.0, 0.0, 0, &im.rgb, 640, 480, bc, 4, &t, 2);
    assert_int_equal(t.n, 2);
    assert_int_equal(t.cls[0], 1);
    assert_int_equal(t.cls[1], 4);
    assert_true(t.bbox[1][1] == 300 * sc && t.bbox[1][3] == 96.0f);
    train_fixed(&c, 2.0, 0.999999, 0.999999, 1, &im.rgb, 640, 480, bc, 4, &t, 3);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.cls[0], 3);
    assert_int_equal(t.crowd[0], 1);
    /* x 80..120 - 73, mirrored in the 96-wide canvas; y 107..128 - 63, clipped at 64 */
    assert_true(t.bbox[0][1] == 96.0f - (450 * sc - 73) && t.bbox[0][3] == 96.0f - (300 * sc - 73));
    assert_true(t.bbox[0][0] == 400 * sc - 63 && t.bbox[0][2] == 64.0f);
    synth_image_free(&im);
    /* More boxes than DATASET_MAX_INSTANCES: the first 100 are kept, nothing written past them */
    enum { MANY = DATASET_MAX_INSTANCES + 50 };
    DatasetBox many[MANY];
    for (int i = 0; i < MANY; i++)
        many[i] = (DatasetBox){(float)(i % 10), (float)(i / 10), (float)(i % 10 + 5),
                               (float)(i / 10 + 5), 1 + i % 89, i % 3 == 0};
    RgbImage sq = {0};
    assert_int_equal(rgb_image_alloc(&sq, 48, 32, &err), 0);
    memset(sq.px, 128, (size_t)48 * 32 * 3);
    struct {
        SampleTarget t;
        uint8_t guard[256];
    } g;
    memset(&g, 0xab, sizeof g);
    train_fixed(&c, 1.0, 0, 0, 0, &sq, 48, 32, many, MANY, &g.t, 50);
    for (size_t i = 0; i < sizeof g.guard; i++) assert_int_equal(g.guard[i], 0xab);
    assert_int_equal(g.t.n, DATASET_MAX_INSTANCES);
    for (int i = 0; i < DATASET_MAX_INSTANCES; i++) {
        assert_int_equal(g.t.cls[i], many[i].label);
        assert_int_equal(g.t.crowd[i], many[i].iscrowd);
        assert_true(g.t.bbox[i][1] == many[i].x1 * 2 && g.t.bbox[i][0] == many[i].y1 * 2);
    }
    memset(&g, 0xab, sizeof g);
    out = alloc_out(&c);
    assert_int_equal(aug_eval_apply(&c, &sq, many, MANY, &s, out, &g.t, &err), 50);
    for (size_t i = 0; i < sizeof g.guard; i++) assert_int_equal(g.guard[i], 0xab);
    assert_int_equal(g.t.n, DATASET_MAX_INSTANCES);
    assert_int_equal(g.t.cls[DATASET_MAX_INSTANCES - 1], many[DATASET_MAX_INSTANCES - 1].label);
    /* Refusals: an empty image, a bad size or dtype, a negative count */
    RgbImage empty = {0};
    AugTrainParams p = {1.0, 0, 0, 0, RESIZE_BILINEAR};
    assert_int_equal(aug_train_apply(&c, &p, &empty, 10, 10, NULL, 0, &s, out, &t, &err), -1);
    assert_int_equal(aug_train_apply(&c, &p, &sq, 48, 32, many, -1, &s, out, &t, &err), -1);
    AugConfig bad = c;
    bad.dtype = ST_I32;
    assert_int_equal(aug_train_apply(&bad, &p, &sq, 48, 32, NULL, 0, &s, out, &t, &err), -1);
    assert_non_null(strstr(err.msg, "dtype"));
    bad = c, bad.height = 0;
    assert_int_equal(aug_eval_apply(&bad, &sq, NULL, 0, &s, out, &t, &err), -1);
    free(out);
    aug_scratch_free(&s);
    rgb_image_free(&sq);
}

int main(void)
{
    lut_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_on_shapes),
        cmocka_unit_test(test_train_reduced_decode),
        cmocka_unit_test(test_train_half_dtypes),
        cmocka_unit_test(test_eval_round_trip),
        cmocka_unit_test(test_params_deterministic),
        cmocka_unit_test(test_normalize_half_dtypes),
        cmocka_unit_test(test_degenerate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
