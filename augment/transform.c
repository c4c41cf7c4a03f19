/* transform.c: effdet's train (RandomResizePad + RandomFlip) and eval (ResizePad) transforms of one
 * sample, and the normalization into the batch's dtype (see transform.h for the arithmetic).
 *
 * DESIGN
 * - Stream: Philox key = seed; counter high word = 'T' (0x54) << 24 | epoch, low word = sample
 *   index (train_sample.c's layout with a tag of its own: 'A' 0x41 and 'P' 0x50 are train_sample's,
 *   0x53 synth's, so no draw here repeats one of theirs). Epochs go up to 2^24 - 1 and indices up
 *   to 2^32 - 1 (the samplers check that the dataset fits 32-bit indices).
 * - Draws, always all of them and in this order, so a config change (hflip off, a fixed filter)
 *   never shifts the draws that follow: scale_factor (2 words), u_y (2), u_x (2), flip (1),
 *   interpolation (1): 8 words, two Philox blocks. A uniform double is CPython's random.random()
 *   construction from two 32-bit words, (a >> 5) * 2^26 + (b >> 6) over 2^53: 53 random bits in
 *   [0, 1). scale_factor = min + (max - min) * u as Python's random.uniform(min, max). flip and the
 *   random filter are the top bit of their word (probability exactly 1/2).
 * - Geometry and boxes follow effdet's Python in double (img_scale, int() truncation) and numpy's
 *   float32 box arithmetic: a float32 array times a Python float multiplies in float32 by
 *   (float)img_scale; subtracting the int64 offsets rounds the exact difference once, which is what
 *   float32 subtraction of the exactly representable (float)offset gives.
 * - Deviation from effdet: a scaled side of 0 (scale 0.1 on a 4000 x 10 image) is clamped to 1.
 *   PIL would raise on resize((w, 0)); a training loop should not die on one thin image.
 * - Deviation kept from the dataset rule: inputs beyond DATASET_MAX_INSTANCES boxes are ignored and
 *   counted as dropped (the dataset never hands more; this only guards the fixed-size target).
 * - The image: the canvas padding is filled with the fill colour, then resize_rgb_region computes
 *   only the visible window of the resized image, straight into the canvas (rows W * 3 bytes
 *   apart): at scale 2 most of a full resize would be cropped away. The flip is not a pass of its
 *   own: the normalization reads canvas rows backwards. Normalization goes through a per-channel
 *   table of the 256 values, computed with normalize_rgb_to_nhwc's float32 expression (the same
 *   bits), converted to F16 / BF16 once per call when those are asked for.
 * - Memory: the canvas lives in AugScratch and is reused; after the first sample of a size this
 *   file allocates nothing (the resampler's own temporary is resize.c's). */
#include "augment/transform.h"

#include <math.h>
#include <string.h>

#include "shared/check.h"
#include "shared/rng.h"

#define STREAM_AUG 0x54u /* 'T' */

AugConfig aug_config_default(int height, int width)
{
    AugConfig c = {.height = height, .width = width, .seed = 0, .scale_min = 0.1,
                   .scale_max = 2.0, .hflip = 1, .interp = AUG_RANDOM,
                   .eval_filter = RESIZE_BILINEAR, .dtype = ST_F32};
    memcpy(c.fill, resize_imagenet_fill, 3);
    return c;
}

size_t aug_image_bytes(const AugConfig *cfg)
{
    size_t n = (size_t)cfg->height * (size_t)cfg->width * 3;
    return n * (cfg->dtype == ST_F32 ? 4 : 2);
}

void aug_scratch_free(AugScratch *s) { rgb_image_free(&s->canvas); }

/* ---- randomness ------------------------------------------------------------------------------ */

/* [0, 1) with 53 random bits, as CPython's random.random() builds it from two 32-bit words. */
static double rng_unit53(Rng *r)
{
    uint32_t a = rng_u32(r) >> 5, b = rng_u32(r) >> 6;
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

void aug_train_params(const AugConfig *cfg, uint32_t epoch, uint64_t index, AugTrainParams *p)
{
    ASSERT(epoch < (1u << 24));
    ASSERT(index <= UINT32_MAX);
    Rng r;
    rng_init(&r, cfg->seed, STREAM_AUG << 24 | epoch, (uint32_t)index);
    double u = rng_unit53(&r);
    p->scale_factor = cfg->scale_min + (cfg->scale_max - cfg->scale_min) * u;
    p->u_y = rng_unit53(&r);
    p->u_x = rng_unit53(&r);
    uint32_t flip = rng_u32(&r), interp = rng_u32(&r);
    p->flip = cfg->hflip && (flip >> 31);
    switch (cfg->interp) {
    case AUG_BILINEAR: p->filter = RESIZE_BILINEAR; break;
    case AUG_BICUBIC: p->filter = RESIZE_BICUBIC; break;
    default: p->filter = (interp >> 31) ? RESIZE_BICUBIC : RESIZE_BILINEAR; break;
    }
}

/* ---- geometry and boxes ---------------------------------------------------------------------- */

double aug_train_image_scale(const AugConfig *cfg, const AugTrainParams *p, int w, int h)
{
    /* effdet: scaled_target_height = scale_factor * target_h; img_scale_y = that / height */
    double sy = p->scale_factor * cfg->height / h, sx = p->scale_factor * cfg->width / w;
    return sy < sx ? sy : sx;
}

/* RandomResizePad's numbers for an original w x h image. The visible window is
 * [off_x, off_x + vis_w) x [off_y, off_y + vis_h) of the resized image; vis = min(scaled, target)
 * because the offset is 0 unless scaled > target, and then at most scaled - target. */
typedef struct TrainGeometry {
    double img_scale;
    int scaled_w, scaled_h;
    int off_x, off_y;
    int vis_w, vis_h;
} TrainGeometry;

static void train_geometry(const AugConfig *cfg, const AugTrainParams *p, int w, int h,
                           TrainGeometry *g)
{
    int th = cfg->height, tw = cfg->width;
    g->img_scale = aug_train_image_scale(cfg, p, w, h);
    g->scaled_h = (int)(h * g->img_scale), g->scaled_w = (int)(w * g->img_scale);
    if (g->scaled_h < 1) g->scaled_h = 1; /* deviation: PIL would raise (see DESIGN) */
    if (g->scaled_w < 1) g->scaled_w = 1;
    g->off_y = (int)(fmax(0.0, (double)(g->scaled_h - th)) * p->u_y);
    g->off_x = (int)(fmax(0.0, (double)(g->scaled_w - tw)) * p->u_x);
    g->vis_h = g->scaled_h < th ? g->scaled_h : th;
    g->vis_w = g->scaled_w < tw ? g->scaled_w : tw;
    ASSERT(g->off_y + g->vis_h <= g->scaled_h && g->off_x + g->vis_w <= g->scaled_w);
}

/* RandomResizePad then RandomFlip on the boxes (train_crop_boxes: numpy's float32, see DESIGN):
 * clipped to the visible window, mirrored within the whole canvas width tw. */
static int train_boxes(const DatasetBox *boxes, int n, const TrainGeometry *g, int flip, int tw,
                       SampleTarget *t)
{
    return train_crop_boxes(boxes, n, g->img_scale, g->off_x, g->off_y, g->vis_w, g->vis_h,
                            flip ? tw : 0, t);
}

/* ---- normalization --------------------------------------------------------------------------- */

uint16_t aug_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;  /* NaN (quiet) */
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to infinity (tie: even) */
    if (ax >= 0x38800000u) {                      /* normal half: rebias 127 -> 15, 23 -> 10 bits */
        uint32_t q = (ax >> 13) - (112u << 10), rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) q++; /* a carry moves up the exponent */
        return (uint16_t)(sign | q);
    }
    if (ax <= 0x33000000u) return sign; /* <= 2^-25: zero (2^-25 itself ties to even 0) */
    /* subnormal half: round(value * 2^24) of value = m * 2^(e - 150); e in 102..112 */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++; /* 0x400 is the smallest normal: right */
    return (uint16_t)(sign | q);
}

uint16_t aug_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* NaN stays NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* The 256 normalized values of each channel, as normalize_rgb_to_nhwc computes them. */
static void normalize_table(float lut[3][256])
{
    for (int c = 0; c < 3; c++) {
        float m = (float)(resize_imagenet_mean[c] * 255), s = (float)(resize_imagenet_std[c] * 255);
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v - m) / s;
    }
}

/* One row of w pixels; flip reads src from its right end. T is float or uint16_t. */
#define NORMALIZE_ROW(T, lut, src, dst, w, flip)                                                 \
    do {                                                                                         \
        const uint8_t *s_ = (src);                                                               \
        T *d_ = (dst);                                                                           \
        ptrdiff_t step_ = (flip) ? -3 : 3;                                                       \
        if (flip) s_ += (size_t)((w) - 1) * 3;                                                   \
        for (int x_ = 0; x_ < (w); x_++, s_ += step_, d_ += 3) {                                 \
            d_[0] = lut[0][s_[0]], d_[1] = lut[1][s_[1]], d_[2] = lut[2][s_[2]];                 \
        }                                                                                        \
    } while (0)

static void normalize_canvas(const RgbImage *canvas, StDtype dtype, int flip, void *dst)
{
    ASSERT(dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16);
    float lut[3][256];
    normalize_table(lut);
    int w = canvas->w, h = canvas->h;
    size_t row = (size_t)w * 3;
    if (dtype == ST_F32) {
        for (int y = 0; y < h; y++)
            NORMALIZE_ROW(float, lut, canvas->px + y * row, (float *)dst + y * row, w, flip);
        return;
    }
    uint16_t lut16[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut16[c][v] = dtype == ST_F16 ? aug_f32_to_f16(lut[c][v]) : aug_f32_to_bf16(lut[c][v]);
    for (int y = 0; y < h; y++)
        NORMALIZE_ROW(uint16_t, lut16, canvas->px + y * row, (uint16_t *)dst + y * row, w, flip);
}

void aug_normalize(const RgbImage *canvas, StDtype dtype, void *dst)
{
    normalize_canvas(canvas, dtype, 0, dst);
}

/* ---- the transforms -------------------------------------------------------------------------- */

static int config_check(const AugConfig *cfg, Err *err)
{
    if (cfg->height < 1 || cfg->width < 1 || cfg->height > RESIZE_MAX_SIDE ||
        cfg->width > RESIZE_MAX_SIDE)
        return err_set(err, "augment: input size %dx%d: each side must be in [1, %d]",
                       cfg->height, cfg->width, RESIZE_MAX_SIDE);
    if (cfg->dtype != ST_F32 && cfg->dtype != ST_F16 && cfg->dtype != ST_BF16)
        return err_set(err, "augment: output dtype %s: expected F32, F16 or BF16",
                       st_dtype_name(cfg->dtype));
    return 0;
}

/* The canvas outside [0, vis_w) x [0, vis_h) in the fill colour. */
static void canvas_fill_padding(RgbImage *c, int vis_w, int vis_h, const uint8_t fill[3])
{
    size_t row = (size_t)c->w * 3;
    for (int y = 0; y < c->h; y++) {
        uint8_t *p = c->px + y * row;
        int x0 = y < vis_h ? vis_w : 0;
        if (y > vis_h) { /* row vis_h (the first full one) is already filled */
            memcpy(p, c->px + (size_t)vis_h * row, row);
            continue;
        }
        for (int x = x0; x < c->w; x++) memcpy(p + 3 * x, fill, 3);
    }
}

/* Boxes taken from the input: the first DATASET_MAX_INSTANCES (the rest count as dropped). */
static int boxes_capped(int n) { return n < DATASET_MAX_INSTANCES ? n : DATASET_MAX_INSTANCES; }

static void target_meta(SampleTarget *t, float img_scale, int w, int h, int sw, int sh, int flip)
{
    t->img_scale = img_scale;
    t->img_w = w, t->img_h = h;
    t->scaled_w = sw, t->scaled_h = sh;
    t->flipped = flip;
}

int aug_train_apply(const AugConfig *cfg, const AugTrainParams *p, const RgbImage *img, int orig_w,
                    int orig_h, const DatasetBox *boxes, int n_boxes, AugScratch *s, void *dst,
                    SampleTarget *t, Err *err)
{
    if (config_check(cfg, err) != 0) return -1;
    if (!img->px || img->w < 1 || img->h < 1)
        return err_set(err, "augment: empty image (%d x %d)", img->w, img->h);
    if (orig_w < 1 || orig_h < 1)
        return err_set(err, "augment: original size %d x %d", orig_w, orig_h);
    if (n_boxes < 0) return err_set(err, "augment: %d boxes", n_boxes);
    if (!(p->scale_factor > 0) || !isfinite(p->scale_factor))
        return err_set(err, "augment: scale factor %g", p->scale_factor);
    TrainGeometry g;
    train_geometry(cfg, p, orig_w, orig_h, &g);
    if (rgb_image_alloc(&s->canvas, cfg->width, cfg->height, err) != 0) return -1;
    canvas_fill_padding(&s->canvas, g.vis_w, g.vis_h, cfg->fill);
    if (resize_rgb_region(img, g.scaled_w, g.scaled_h, g.off_x, g.off_y, g.vis_w, g.vis_h,
                          p->filter, s->canvas.px, (size_t)cfg->width * 3, err) != 0)
        return err_wrap(err, "augment: %d x %d image (original %d x %d): ", img->w, img->h,
                        orig_w, orig_h);
    normalize_canvas(&s->canvas, cfg->dtype, p->flip, dst);
    int n = boxes_capped(n_boxes);
    int dropped = train_boxes(boxes, n, &g, p->flip, cfg->width, t) + (n_boxes - n);
    target_meta(t, (float)(1.0 / g.img_scale), orig_w, orig_h, g.scaled_w, g.scaled_h, p->flip);
    return dropped;
}

int aug_eval_apply(const AugConfig *cfg, const RgbImage *img, const DatasetBox *boxes, int n_boxes,
                   AugScratch *s, void *dst, SampleTarget *t, Err *err)
{
    if (config_check(cfg, err) != 0) return -1;
    if (n_boxes < 0) return err_set(err, "augment: %d boxes", n_boxes);
    float img_scale;
    if (letterbox_rgb(img, cfg->height, cfg->width, cfg->fill, cfg->eval_filter, &s->canvas,
                      &img_scale, err) != 0)
        return err_wrap(err, "augment: ");
    double sc;
    int sw, sh;
    train_letterbox_geometry(img->w, img->h, cfg->height, cfg->width, &sc, &sw, &sh);
    ASSERT(img_scale == (float)(1.0 / sc));
    normalize_canvas(&s->canvas, cfg->dtype, 0, dst);
    int n = boxes_capped(n_boxes);
    int dropped = train_transform_boxes(boxes, n, sc, sw, sh, 0, t) + (n_boxes - n);
    target_meta(t, img_scale, img->w, img->h, sw, sh, 0);
    return dropped;
}
