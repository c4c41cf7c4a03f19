/* resize.c: Pillow's ImagingResample for 8-bit RGB, effdet's ResizePad, and input normalization.
 *
 * Resampling follows Pillow's src/libImaging/Resample.c (8-bit path; tested byte for byte against
 * Pillow 9.4.0), because effdet's numbers come from PIL and one level in a pixel can move mAP:
 *   - Separable: a horizontal pass over only the source rows the vertical pass will read, rounded
 *     to uint8, then a vertical pass, rounded again. A pass whose size does not change is skipped
 *     (Pillow copies); both skipped is a plain copy.
 *   - Per output index i: scale = in / out, filterscale = max(scale, 1) (antialiasing when
 *     shrinking), support = filter support * filterscale, center = (i + 0.5) * scale, taps from
 *     max((int)(center - support + 0.5), 0) to min((int)(center + support + 0.5), in), weights
 *     filter((j - center + 0.5) / filterscale) normalized to sum 1 in double.
 *   - Weights become fixed point with PRECISION_BITS = 32 - 8 - 2 = 22 (rounded half away from
 *     zero); the accumulator starts at 1 << 21 (round half up) and the result is acc >> 22 clamped
 *     to 0..255 (a negative accumulator gives 0, as Pillow's clip table does).
 * With AVX2 both passes run in vector kernels that form the same int32 sums (see "AVX2 kernels");
 * the scalar loops are the reference, the fallback, and do the edges.
 * Pillow's x86-64 wheels target baseline x86-64, which has no fused multiply-add; GNU C contracts
 * a*b+c into fma under -march=native, which could move a weight by one unit in the last place, so
 * this file turns contraction off (no case has been seen to differ either way; this keeps it so).
 *
 * Images are RgbImage (h, w, 3). The internal resampler computes any rectangle of the output and
 * writes it through a row stride, so the letterbox resizes straight into its canvas and the train
 * transform's crop costs only the crop. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "augment/resize.h"
#include "shared/check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define PRECISION_BITS (32 - 8 - 2)

const double resize_imagenet_mean[3] = {0.485, 0.456, 0.406};
const double resize_imagenet_std[3] = {0.229, 0.224, 0.225};
const uint8_t resize_imagenet_fill[3] = {124, 116, 104};

/* One axis of the resampling, for the output indices [lo, lo + n) of out_size (a region needs only
 * its own): for each, the first source index and tap count, and ksize fixed-point weights (unused
 * tail zero). Entry 0 is output index lo. A horizontal plan may also carry the vector kernel's
 * copy of the weights (see "AVX2 kernels"). */
typedef struct AxisPlan {
    int in_size, out_size, lo, n, ksize;
    int taps;       /* the largest count of the n entries (ksize allows for one more) */
    int *bounds;    /* (n, 2): first, count */
    int32_t *k;     /* (n, ksize) */
    int n_vec;      /* entries [0, n_vec) go through the vector kernel, the rest through the loop */
    int16_t *wide;  /* (n_vec / 2, slots, 2, 16): see hvec_prepare */
} AxisPlan;

/* ---- filters (Pillow's definitions) ------------------------------------------------------------ */

static double filter_support(ResizeFilter f)
{
    return f == RESIZE_BICUBIC ? 2.0 : 1.0;
}

static double filter_eval(ResizeFilter f, double x)
{
    if (x < 0.0)
        x = -x;
    if (f == RESIZE_BILINEAR)
        return x < 1.0 ? 1.0 - x : 0.0;
    const double a = -0.5; /* Keys' cubic convolution, the value Pillow uses */
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* ---- coefficient plans -------------------------------------------------------------------------- */

static double axis_filterscale(int in, int out)
{
    double scale = (double)in / out;
    return scale < 1.0 ? 1.0 : scale;
}

static int axis_ksize(ResizeFilter f, int in, int out)
{
    return (int)ceil(filter_support(f) * axis_filterscale(in, out)) * 2 + 1;
}

/* Pillow's normalize_coeffs_8bpc: round half away from zero into 22 fractional bits. */
static int32_t weight_to_fixed(double w)
{
    return w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                 : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
}

/* The source window [*first, *first + *count) of output index i (precompute_coeffs' xmin, xmax). */
static void axis_window(int in, int out, ResizeFilter f, int i, int *first, int *count)
{
    double scale = (double)in / out;
    double support = filter_support(f) * axis_filterscale(in, out);
    double center = (i + 0.5) * scale;
    int lo = (int)(center - support + 0.5);
    int hi = (int)(center + support + 0.5);
    *first = lo < 0 ? 0 : lo;
    *count = (hi > in ? in : hi) - *first;
}

/* Fills p->bounds, p->k and p->taps (precompute_coeffs), evaluating each filter value once into w
 * (ksize doubles) for both the sum and the stored weight, as Pillow does. */
static void axis_plan_fill(AxisPlan *p, ResizeFilter f, double *w)
{
    double scale = (double)p->in_size / p->out_size;
    double ss = 1.0 / axis_filterscale(p->in_size, p->out_size);
    p->taps = 0;
    for (int e = 0; e < p->n; e++) {
        int i = p->lo + e, first, n;
        axis_window(p->in_size, p->out_size, f, i, &first, &n);
        double center = (i + 0.5) * scale;
        double ww = 0.0;
        for (int x = 0; x < n; x++) {
            w[x] = filter_eval(f, (x + first - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = p->k + (size_t)e * p->ksize;
        for (int x = 0; x < p->ksize; x++)
            k[x] = x < n ? weight_to_fixed(ww != 0.0 ? w[x] / ww : w[x]) : 0;
        p->bounds[2 * e] = first;
        p->bounds[2 * e + 1] = n;
        if (n > p->taps)
            p->taps = n;
    }
}

/* ---- the two passes ----------------------------------------------------------------------------- */

static uint8_t clip8(int32_t acc)
{
    if (acc < 0)
        return 0;
    acc >>= PRECISION_BITS;
    return acc > 255 ? 255 : (uint8_t)acc;
}

/* ---- AVX2 kernels -------------------------------------------------------------------------------
 * Both passes are short dot products of bytes with 22-bit fixed-point weights; the vector kernels
 * give the sums of Pillow's loops bit for bit:
 *   - Products come from pmaddwd on 16-bit pairs. A weight does not fit 16 bits, so each is split
 *     exactly as w = hi * 2^15 + lo with lo in [0, 2^15), and sum(p * w) = 2^15 * sum(p * hi) +
 *     sum(p * lo). Lanes wrap mod 2^32 like any int32 sum, and Pillow's true sum fits in int32,
 *     so the result is that sum exactly. Zero weights past a window's count add nothing.
 *   - Then acc >> 22 packed with saturation: negative gives 0, above 255 gives 255, as clip8.
 *   - A plan whose weights do not split into 16-bit halves (none seen) takes the scalar loops.
 * Horizontal: two outputs per iteration, one per 128-bit lane. A 16-byte load at a window's start
 * holds 5 pixels, and pshufb spreads taps (j, j + 1) into 16-bit pairs per channel, (R_j, R_j+1,
 * G_j, G_j+1, B_j, B_j+1, 0, 0). The tap loop runs to the plan's longest window (2 for a bilinear
 * upscale, not ksize's 3). Loads read whole 16-byte groups, so an output goes to the vector kernel
 * only if its last group ends inside the source row; the few at the right edge use the loop.
 * Vertical: 32 bytes of a row at a time, rows in pairs whose bytes are interleaved into 16-bit
 * pairs. */
#if defined(__AVX2__)

#define HVEC_GROUP 5 /* taps per 16-byte load */

static int split_fits(int32_t k)
{
    return k >> 15 >= INT16_MIN && k >> 15 <= INT16_MAX;
}

/* Tap pairs (slots) per output: three per group of 5 taps, fewer in a short last group. */
static int hvec_slots(int taps)
{
    int slots = 0;
    for (int x = 0; x < taps; x += HVEC_GROUP)
        slots += ((taps - x < HVEC_GROUP ? taps - x : HVEC_GROUP) + 1) / 2;
    return slots;
}

/* Room for p->wide before the plan is filled: taps <= ksize. */
static size_t hvec_bytes(int n, int ksize)
{
    return (size_t)(n / 2) * (size_t)hvec_slots(ksize) * 64;
}

/* Chooses n_vec and fills p->wide: per pair of outputs (a, b) and slot of taps (j, j + 1), a lo
 * vector and a hi vector of 16 int16, lane 0 (lo_a(j), lo_a(j + 1)) x 4 and lane 1 the same for
 * b. */
static void hvec_prepare(AxisPlan *p)
{
    int groups = (p->taps + HVEC_GROUP - 1) / HVEC_GROUP;
    int n_vec = 0;
    while (n_vec < p->n &&
           3 * p->bounds[2 * n_vec] + 3 * HVEC_GROUP * (groups - 1) + 16 <= 3 * p->in_size)
        n_vec++;
    n_vec &= ~3;
    for (size_t e = 0; e < (size_t)n_vec * p->ksize; e++)
        if (!split_fits(p->k[e]))
            n_vec = 0;
    int16_t *w = p->wide;
    for (int i = 0; i < n_vec; i += 2)
        for (int x = 0; x < p->taps; x += HVEC_GROUP)
            for (int j = x; j < x + HVEC_GROUP && j < p->taps; j += 2, w += 32)
                for (int lane = 0; lane < 2; lane++) {
                    const int32_t *k = p->k + (size_t)(i + lane) * p->ksize;
                    int has_k1 = j + 1 < x + HVEC_GROUP && j + 1 < p->taps;
                    int32_t k0 = k[j], k1 = has_k1 ? k[j + 1] : 0;
                    for (int q = 0; q < 4; q++) {
                        w[lane * 8 + 2 * q] = (int16_t)(k0 & 0x7fff);
                        w[lane * 8 + 2 * q + 1] = (int16_t)(k1 & 0x7fff);
                        w[16 + lane * 8 + 2 * q] = (int16_t)(k0 >> 15);
                        w[16 + lane * 8 + 2 * q + 1] = (int16_t)(k1 >> 15);
                    }
                }
    p->n_vec = n_vec;
}

/* pshufb masks for taps (0, 1), (2, 3) and (4, none) of a 5-pixel load, the same in both lanes:
 * 16-bit (R_j, R_j+1, G_j, G_j+1, B_j, B_j+1, 0, 0), bytes b and c being pixels j and j + 1. */
#define HVEC_PAIR(b, c) b, -1, c, -1, b + 1, -1, c + 1, -1, b + 2, -1, c + 2, -1, -1, -1, -1, -1
#define HVEC_ONE(b) b, -1, -1, -1, b + 1, -1, -1, -1, b + 2, -1, -1, -1, -1, -1, -1, -1

/* The sums of outputs a (lane 0, window at ta) and b (lane 1, at tb) shifted down: (R, G, B, 0)
 * per lane. *w walks the pair's weights. */
static inline __attribute__((always_inline)) __m256i hvec_pair(const uint8_t *ta, const uint8_t *tb,
                                                               const __m256i **w, int taps)
{
    const __m256i mask[3] = {
        _mm256_setr_epi8(HVEC_PAIR(0, 3), HVEC_PAIR(0, 3)),
        _mm256_setr_epi8(HVEC_PAIR(6, 9), HVEC_PAIR(6, 9)),
        _mm256_setr_epi8(HVEC_ONE(12), HVEC_ONE(12)),
    };
    __m256i lo = _mm256_set1_epi32(1 << (PRECISION_BITS - 1)), hi = _mm256_setzero_si256();
    for (int x = 0; x < taps; x += HVEC_GROUP) {
        __m256i v = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ta + 3 * x))),
            _mm_loadu_si128((const __m128i *)(tb + 3 * x)), 1);
        for (int t = 0; t < 3 && x + 2 * t < taps; t++, *w += 2) {
            __m256i px = _mm256_shuffle_epi8(v, mask[t]);
            lo = _mm256_add_epi32(lo, _mm256_madd_epi16(px, _mm256_loadu_si256(*w)));
            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(px, _mm256_loadu_si256(*w + 1)));
        }
    }
    return _mm256_srai_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, 15), lo), PRECISION_BITS);
}

/* Outputs [0, p->n_vec) of one row, four at a time: two pairs, packed to bytes, put in order
 * (a, b, c, d) and stored as 12 bytes. Inlined per tap count, so the tap loops unroll. */
static inline __attribute__((always_inline)) void hvec_row_taps(const uint8_t *s, uint8_t *d,
                                                                const AxisPlan *p, int taps)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5);
    const __m128i compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    const __m256i *w = (const __m256i *)p->wide;
    const int *bounds = p->bounds;
    int n_vec = p->n_vec;
    for (int i = 0; i < n_vec; i += 4, d += 12) {
        __m256i ab = hvec_pair(s + 3 * (size_t)bounds[2 * i], s + 3 * (size_t)bounds[2 * i + 2],
                               &w, taps);
        __m256i cd = hvec_pair(s + 3 * (size_t)bounds[2 * i + 4],
                               s + 3 * (size_t)bounds[2 * i + 6], &w, taps);
        /* Dwords after the packs: a, c, a, c | b, d, b, d. */
        __m256i px = _mm256_packus_epi16(_mm256_packs_epi32(ab, cd), _mm256_setzero_si256());
        __m128i abcd = _mm_shuffle_epi8(
            _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(px, order)), compact);
        int32_t last = _mm_extract_epi32(abcd, 2);
        _mm_storel_epi64((__m128i *)d, abcd);
        memcpy(d + 8, &last, 4);
    }
}

/* Outputs [0, p->n_vec) of one row; returns n_vec. */
static int hvec_row(const uint8_t *s, uint8_t *d, const AxisPlan *p)
{
    switch (p->taps) {
    case 2: hvec_row_taps(s, d, p, 2); break;
    case 3: hvec_row_taps(s, d, p, 3); break;
    case 4: hvec_row_taps(s, d, p, 4); break;
    case 5: hvec_row_taps(s, d, p, 5); break;
    default: hvec_row_taps(s, d, p, p->taps); break;
    }
    return p->n_vec;
}

#define VVEC_MAX_PAIRS 32 /* row pairs the vertical kernel takes; more go to the scalar loop */

/* Bytes [0, 32 * m) of one vertical output row for the largest such m: rows (2q, 2q + 1) are
 * interleaved byte by byte (an odd last row pairs with itself at weight 0) and widened with zeros
 * into 16-bit pairs. The unpacks and packs both work within 128-bit lanes and undo each other, so
 * bytes come out in order. Inlined per pair count. */
static inline __attribute__((always_inline)) size_t vvec_row_pairs(const uint8_t *const *rows,
                                                                   const __m256i *wlo,
                                                                   const __m256i *whi, int n,
                                                                   int pairs, size_t nb,
                                                                   uint8_t *d)
{
    const __m256i zero = _mm256_setzero_si256();
    size_t b0 = 0;
    for (; b0 + 32 <= nb; b0 += 32) {
        __m256i lo[4], hi[4];
        for (int v = 0; v < 4; v++) {
            lo[v] = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
            hi[v] = zero;
        }
        for (int q = 0; q < pairs; q++) {
            const uint8_t *r1 = rows[2 * q + 1 < n ? 2 * q + 1 : 2 * q];
            __m256i a = _mm256_loadu_si256((const __m256i *)(rows[2 * q] + b0));
            __m256i b = _mm256_loadu_si256((const __m256i *)(r1 + b0));
            __m256i ab[2] = {_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b)};
            for (int v = 0; v < 4; v++) {
                __m256i px = v & 1 ? _mm256_unpackhi_epi8(ab[v / 2], zero)
                                   : _mm256_unpacklo_epi8(ab[v / 2], zero);
                lo[v] = _mm256_add_epi32(lo[v], _mm256_madd_epi16(px, wlo[q]));
                hi[v] = _mm256_add_epi32(hi[v], _mm256_madd_epi16(px, whi[q]));
            }
        }
        for (int v = 0; v < 4; v++)
            lo[v] = _mm256_srai_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi[v], 15), lo[v]),
                                      PRECISION_BITS);
        __m256i out = _mm256_packus_epi16(_mm256_packs_epi32(lo[0], lo[1]),
                                          _mm256_packs_epi32(lo[2], lo[3]));
        _mm256_storeu_si256((__m256i *)(d + b0), out);
    }
    return b0;
}

/* The bytes vvec_row_pairs can do for one output row; returns how many. */
static size_t vvec_row(const uint8_t *const *rows, const int32_t *k, int n, size_t nb, uint8_t *d)
{
    __m256i wlo[VVEC_MAX_PAIRS], whi[VVEC_MAX_PAIRS];
    int pairs = (n + 1) / 2;
    if (pairs > VVEC_MAX_PAIRS)
        return 0;
    for (int q = 0; q < pairs; q++) {
        int32_t k0 = k[2 * q], k1 = 2 * q + 1 < n ? k[2 * q + 1] : 0;
        if (!split_fits(k0) || !split_fits(k1))
            return 0;
        uint32_t lo = (uint32_t)(k0 & 0x7fff) | (uint32_t)(k1 & 0x7fff) << 16;
        uint32_t hi = (uint32_t)(k0 >> 15 & 0xffff) | (uint32_t)(k1 >> 15 & 0xffff) << 16;
        wlo[q] = _mm256_set1_epi32((int32_t)lo);
        whi[q] = _mm256_set1_epi32((int32_t)hi);
    }
    switch (pairs) {
    case 1: return vvec_row_pairs(rows, wlo, whi, n, 1, nb, d);
    case 2: return vvec_row_pairs(rows, wlo, whi, n, 2, nb, d);
    case 3: return vvec_row_pairs(rows, wlo, whi, n, 3, nb, d);
    default: return vvec_row_pairs(rows, wlo, whi, n, pairs, nb, d);
    }
}
#else
/* Without AVX2 every output goes through the scalar loop. */
static size_t hvec_bytes(int n, int ksize)
{
    return 0;
}

static void hvec_prepare(AxisPlan *p)
{
    p->n_vec = 0;
}

static int hvec_row(const uint8_t *s, uint8_t *d, const AxisPlan *p)
{
    return 0;
}

static size_t vvec_row(const uint8_t *const *rows, const int32_t *k, int n, size_t nb, uint8_t *d)
{
    return 0;
}
#endif

/* One row s resampled along x into d: the plan's n outputs, whose windows index s from its column
 * 0. The vector kernel takes what it can; this loop is Pillow's and does the rest. */
static void pass_horizontal(const uint8_t *s, uint8_t *d, const AxisPlan *p)
{
    for (int i = hvec_row(s, d, p); i < p->n; i++) {
        const int32_t *k = p->k + (size_t)i * p->ksize;
        const uint8_t *t = s + (size_t)p->bounds[2 * i] * 3;
        int32_t acc[3] = {1 << (PRECISION_BITS - 1), 1 << (PRECISION_BITS - 1),
                          1 << (PRECISION_BITS - 1)};
        for (int x = 0; x < p->bounds[2 * i + 1]; x++)
            for (int c = 0; c < 3; c++)
                acc[c] += t[3 * x + c] * k[x];
        for (int c = 0; c < 3; c++)
            d[3 * i + c] = clip8(acc[c]);
    }
}

/* One output row d (nb bytes) from the n rows `rows` weighted by k. Every byte of a row is filtered
 * the same way, channels included. The vector kernel takes what it can; this loop is Pillow's and
 * does the rest. */
static void pass_vertical(const uint8_t *const *rows, const int32_t *k, int n, size_t nb,
                          uint8_t *d)
{
    for (size_t b = vvec_row(rows, k, n, nb, d); b < nb; b++) {
        int32_t acc = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < n; y++)
            acc += rows[y][b] * k[y];
        d[b] = clip8(acc);
    }
}

/* ---- resampling into a strided destination ---------------------------------------------------- */

static int resize_check(const RgbImage *src, int out_w, int out_h, Err *err)
{
    if (!src->px || src->w < 1 || src->h < 1 || src->w > RESIZE_MAX_SIDE ||
        src->h > RESIZE_MAX_SIDE)
        return err_set(err, "resize: source image %d x %d is empty or too large", src->w, src->h);
    if (out_w < 1 || out_h < 1 || out_w > RESIZE_MAX_SIDE || out_h > RESIZE_MAX_SIDE)
        return err_set(err, "resize: output size %d x %d is outside 1..%d", out_w, out_h,
                       RESIZE_MAX_SIDE);
    return 0;
}

/* Scratch blocks start 32-byte aligned, so every array in them is aligned for its type. */
static size_t align32(size_t n)
{
    return (n + 31) & ~(size_t)31;
}

/* Sets up a plan for outputs [lo, lo + n) whose arrays live at *cursor (advanced past them); NULL
 * cursor only sizes. A horizontal plan also gets room for the vector kernel's weights. */
static size_t axis_plan_place(AxisPlan *p, int in, int out, int lo, int n, int horizontal,
                              ResizeFilter f, char **cursor)
{
    p->in_size = in;
    p->out_size = out;
    p->lo = lo;
    p->n = n;
    p->ksize = axis_ksize(f, in, out);
    size_t kbytes = align32((size_t)n * (size_t)p->ksize * sizeof(int32_t));
    size_t bbytes = align32((size_t)n * 2 * sizeof(int));
    size_t wbytes = horizontal ? align32(hvec_bytes(n, p->ksize)) : 0;
    if (cursor) {
        p->k = (int32_t *)*cursor;
        p->bounds = (int *)(*cursor + kbytes);
        p->wide = (int16_t *)(*cursor + kbytes + bbytes);
        *cursor += kbytes + bbytes + wbytes;
    }
    return kbytes + bbytes + wbytes;
}

/* The region [x0, x0 + w) x [y0, y0 + h) of src resampled to out_w x out_h, written to dst rows
 * dst_stride bytes apart. Only the plan entries, source rows and columns the region reads are
 * computed, so the bytes are those of the full resize: every output depends only on its own
 * window. When both passes run, horizontally resampled rows go to a ring of ksize rows, made as the
 * vertical pass first needs them (windows only move down, and one holds at most ksize rows), so
 * the intermediate stays in cache. One scratch block holds the plans, the ring and its row
 * pointers. */
static int resample_region(const RgbImage *src, int out_w, int out_h, int x0, int y0, int w,
                           int h, ResizeFilter f, uint8_t *dst, size_t dst_stride, Err *err)
{
    size_t src_stride = (size_t)src->w * 3, row_bytes = (size_t)w * 3;
    int need_h = out_w != src->w, need_v = out_h != src->h;
    if (!need_h && !need_v) {
        const uint8_t *s = src->px + (size_t)y0 * src_stride + (size_t)x0 * 3;
        for (int y = 0; y < h; y++)
            memcpy(dst + (size_t)y * dst_stride, s + (size_t)y * src_stride, row_bytes);
        return 0;
    }
    AxisPlan ph = {0}, pv = {0};
    int nh = need_h ? w : 0, nv = need_v ? h : 0;
    size_t bytes = axis_plan_place(&ph, src->w, out_w, x0, nh, 1, f, NULL) +
                   axis_plan_place(&pv, src->h, out_h, y0, nv, 0, f, NULL);
    int ring = need_h && need_v ? pv.ksize : 0, kmax = ph.ksize > pv.ksize ? ph.ksize : pv.ksize;
    size_t wbytes = align32((size_t)kmax * sizeof(double));
    size_t pbytes = align32((size_t)pv.ksize * sizeof(const uint8_t *));
    bytes += wbytes + pbytes + (size_t)ring * align32(row_bytes);
    char *scratch = aligned_alloc(32, bytes), *cursor = scratch;
    if (!scratch)
        return err_set(err, "resize: out of memory (%zu bytes of scratch for %d x %d -> %d x %d)",
                       bytes, src->w, src->h, out_w, out_h);
    double *wtmp = (double *)cursor;
    const uint8_t **rows = (const uint8_t **)(cursor + wbytes);
    cursor += wbytes + pbytes;
    axis_plan_place(&ph, src->w, out_w, x0, nh, 1, f, &cursor);
    axis_plan_place(&pv, src->h, out_h, y0, nv, 0, f, &cursor);
    uint8_t *tmp = (uint8_t *)cursor;
    axis_plan_fill(&ph, f, wtmp);
    axis_plan_fill(&pv, f, wtmp);
    hvec_prepare(&ph);
    if (!need_v) {
        for (int y = 0; y < h; y++)
            pass_horizontal(src->px + (size_t)(y0 + y) * src_stride, dst + (size_t)y * dst_stride,
                            &ph);
    } else {
        int next = 0; /* the first source row not yet in the ring */
        for (int i = 0; i < h; i++) {
            int first = pv.bounds[2 * i], n = pv.bounds[2 * i + 1];
            ASSERT(n <= pv.ksize); /* the ring and rows hold ksize */
            for (int y = 0; y < n; y++) {
                const uint8_t *s = src->px + (size_t)(first + y) * src_stride;
                if (!need_h) {
                    rows[y] = s + (size_t)x0 * 3;
                    continue;
                }
                uint8_t *slot = tmp + (size_t)((first + y) % ring) * align32(row_bytes);
                if (first + y >= next)
                    pass_horizontal(s, slot, &ph);
                rows[y] = slot;
            }
            if (first + n > next)
                next = first + n;
            pass_vertical(rows, pv.k + (size_t)i * pv.ksize, n, row_bytes,
                          dst + (size_t)i * dst_stride);
        }
    }
    free(scratch);
    return 0;
}

int resize_rgb(const RgbImage *src, int out_w, int out_h, ResizeFilter f, RgbImage *dst, Err *err)
{
    if (resize_check(src, out_w, out_h, err) < 0 || rgb_image_alloc(dst, out_w, out_h, err) < 0)
        return -1;
    return resample_region(src, out_w, out_h, 0, 0, out_w, out_h, f, dst->px, (size_t)out_w * 3,
                           err);
}

int resize_rgb_region(const RgbImage *src, int out_w, int out_h, int x0, int y0, int w, int h,
                      ResizeFilter f, uint8_t *dst, size_t dst_stride, Err *err)
{
    if (resize_check(src, out_w, out_h, err) < 0)
        return -1;
    if (w < 1 || h < 1 || x0 < 0 || y0 < 0 || x0 > out_w - w || y0 > out_h - h)
        return err_set(err, "resize: region %d x %d at (%d, %d) is empty or not inside %d x %d", w,
                       h, x0, y0, out_w, out_h);
    if (dst_stride < (size_t)w * 3)
        return err_set(err, "resize: row stride %zu is shorter than a %d-pixel row", dst_stride, w);
    return resample_region(src, out_w, out_h, x0, y0, w, h, f, dst, dst_stride, err);
}

/* ---- effdet eval transform ---------------------------------------------------------------------- */

int letterbox_rgb(const RgbImage *src, int target_h, int target_w, const uint8_t fill[3],
                  ResizeFilter f, RgbImage *dst, float *img_scale, Err *err)
{
    if (resize_check(src, target_w, target_h, err) < 0)
        return err_wrap(err, "letterbox: ");
    /* Python's arithmetic, in the same order and in double: int / int is a correctly rounded
     * double, and int(h * s) truncates. */
    double sy = (double)target_h / src->h, sx = (double)target_w / src->w;
    double s = sx < sy ? sx : sy;
    int scaled_h = (int)(src->h * s), scaled_w = (int)(src->w * s);
    if (scaled_h < 1 || scaled_w < 1)
        return err_set(err, "letterbox: a %d x %d image scales to %d x %d in %d x %d", src->w,
                       src->h, scaled_w, scaled_h, target_w, target_h);
    if (rgb_image_alloc(dst, target_w, target_h, err) < 0)
        return -1;
    size_t n = (size_t)target_w * target_h;
    for (size_t i = 0; i < n; i++)
        memcpy(dst->px + 3 * i, fill, 3);
    if (resample_region(src, scaled_w, scaled_h, 0, 0, scaled_w, scaled_h, f, dst->px,
                        (size_t)target_w * 3, err) < 0)
        return -1;
    *img_scale = (float)(1.0 / s);
    return 0;
}

void resize_fill_from_mean(const double mean[3], uint8_t fill[3])
{
    /* Python's round() is round-half-even, like nearbyint in the default rounding mode. */
    for (int c = 0; c < 3; c++)
        fill[c] = (uint8_t)nearbyint(255 * mean[c]);
}

void normalize_rgb_to_nhwc(const RgbImage *src, float *dst, const double mean[3],
                           const double std[3])
{
    float m[3], s[3];
    for (int c = 0; c < 3; c++) {
        m[c] = (float)(mean[c] * 255);
        s[c] = (float)(std[c] * 255);
    }
    size_t n = (size_t)src->w * src->h;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            dst[3 * i + c] = ((float)src->px[3 * i + c] - m[c]) / s[c];
}
