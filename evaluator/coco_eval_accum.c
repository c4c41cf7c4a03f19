/* coco_eval_accum.c: pycocotools' accumulate() and summarize() over the matched detections.
 *
 * accumulate: for each (category, area range, maxDets, IoU threshold), the kept detections of
 * all images are ranked by descending score, ties broken by image id and then rank within the
 * image (pycocotools concatenates per-image lists in image-id order and mergesorts, which is
 * stable). Walking that ranking, ignored detections count as neither TP nor FP; precision at a TP
 * is tp / (tp + fp + eps), made monotone from the right, and sampled at the 101 recall
 * thresholds where recall tp / npig first reaches them (searchsorted, side left), 0 beyond.
 * Only TP positions can be sampled (recall rises only there, and precision after a TP only falls
 * until the next one), so only they are stored: the result is numpy's value for value.
 *
 * summarize: means over the entries > -1 in numpy's C order, summed with numpy's pairwise
 * summation, so the stats are numpy's to the last bit rather than to 1e-15. */
#include "evaluator/coco_eval_internal.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

enum { T = COCO_EVAL_NUM_IOU, R = COCO_EVAL_NUM_RECALL, A = COCO_EVAL_NUM_AREAS,
       M = COCO_EVAL_NUM_MAX_DETS };

/* A key whose ascending order is descending score (numpy compares -score; -0.0 and 0.0 tie). */
static uint64_t accum_score_key(double score)
{
    uint64_t b;
    if (score == 0) score = 0; /* -0.0 becomes 0.0 */
    memcpy(&b, &score, sizeof b);
    b = b >> 63 ? ~b : b | (uint64_t)1 << 63; /* IEEE order as unsigned order */
    return ~b;
}

/* Stable LSD radix sort of the pairs (key[i], idx[i]) by key, a byte a pass (a pass whose byte is
 * the same for every key is skipped). Stability keeps image-id order among equal scores. */
static void accum_radix_sort(uint64_t *key, uint32_t *idx, size_t n, uint64_t *key_tmp,
                             uint32_t *idx_tmp)
{
    uint64_t *k0 = key, *k1 = key_tmp, *kt;
    uint32_t *i0 = idx, *i1 = idx_tmp, *it;
    for (int shift = 0; shift < 64 && n > 1; shift += 8) {
        size_t count[256] = {0}, sum = 0;
        for (size_t i = 0; i < n; i++) count[k0[i] >> shift & 255]++;
        if (count[k0[0] >> shift & 255] == n) continue;
        for (int d = 0; d < 256; d++) {
            size_t c = count[d];
            count[d] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++) {
            size_t pos = count[k0[i] >> shift & 255]++;
            k1[pos] = k0[i];
            i1[pos] = i0[i];
        }
        kt = k0, k0 = k1, k1 = kt;
        it = i0, i0 = i1, i1 = it;
    }
    if (k0 != key) {
        memcpy(key, k0, n * sizeof *key);
        memcpy(idx, i0, n * sizeof *idx);
    }
}

/* Record indices grouped by category (a stable counting sort); start[k] is where category k
 * begins (K + 1 entries). */
static uint32_t *accum_group_by_category(const EvalRec *recs, size_t n, size_t n_cats,
                                         size_t *start)
{
    uint32_t *order = malloc((n ? n : 1) * sizeof *order);
    size_t *fill = malloc((n_cats + 1) * sizeof *fill);
    ASSERT(order && fill);
    memset(start, 0, (n_cats + 1) * sizeof *start);
    for (size_t i = 0; i < n; i++) start[recs[i].cat + 1]++;
    for (size_t k = 0; k < n_cats; k++) start[k + 1] += start[k];
    memcpy(fill, start, (n_cats + 1) * sizeof *fill);
    for (size_t i = 0; i < n; i++) order[fill[recs[i].cat]++] = (uint32_t)i;
    free(fill);
    return order;
}

/* One (category, area, maxDets, threshold) over the ranked flags fl[0..n) of that area: the
 * recall, and when q is not NULL the 101 sampled precisions (q[r * q_stride]). fp_at and pr have
 * room for npig + 1 values. The walk is branchless (matches are unpredictable): it notes the FP
 * count at each TP, and precision is computed at the TPs afterwards. */
static double accum_one(const uint32_t *fl, size_t n, int t, uint32_t npig, const double *rec_thr,
                        uint32_t *fp_at, double *pr, double *q, size_t q_stride)
{
    uint32_t fp = 0;
    size_t ntp = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t counted = ~fl[i] >> (EVAL_IGNORED_SHIFT + t) & 1, matched = fl[i] >> t & 1;
        fp_at[ntp] = fp;
        ntp += counted & matched;
        fp += counted & (matched ^ 1);
        ASSERT(ntp <= npig);
    }
    if (q) {
        for (size_t j = 0; j < ntp; j++) {
            double tp = (double)(j + 1);
            pr[j] = tp / ((double)fp_at[j] + tp + DBL_EPSILON);
        }
        for (size_t j = ntp; j-- > 1;)
            if (pr[j] > pr[j - 1]) pr[j - 1] = pr[j];
        size_t j = 0;
        for (int r = 0; r < R; r++) {
            while (j < ntp && (double)(j + 1) / npig < rec_thr[r]) j++;
            q[r * q_stride] = j < ntp ? pr[j] : 0;
        }
    }
    return (double)ntp / npig;
}

/* Work memory of accumulate, sized for the largest category. */
typedef struct AccumWork {
    uint64_t *key, *key_tmp;
    uint32_t *idx_tmp, *fl; /* fl: (A, max_n) flags of the records kept for one maxDets */
    uint32_t *fp_at;        /* (max_npig + 1) */
    double *pr;             /* (max_npig + 1) */
} AccumWork;

void coco_eval__accumulate(const CocoEvalParams *p, const EvalRec *recs, size_t n_recs,
                           size_t n_cats, const uint32_t *npig, double *prec, double *recall)
{
    size_t *start = malloc((n_cats + 1) * sizeof *start), max_n = 1, max_npig = 1;
    ASSERT(start);
    uint32_t *order = accum_group_by_category(recs, n_recs, n_cats, start);
    for (size_t k = 0; k < n_cats; k++)
        max_n = start[k + 1] - start[k] > max_n ? start[k + 1] - start[k] : max_n;
    for (size_t i = 0; i < n_cats * A; i++) max_npig = npig[i] > max_npig ? npig[i] : max_npig;
    AccumWork w = {malloc(max_n * sizeof *w.key), malloc(max_n * sizeof *w.key_tmp),
                   malloc(max_n * sizeof *w.idx_tmp), malloc(A * max_n * sizeof *w.fl),
                   malloc((max_npig + 1) * sizeof *w.fp_at), malloc((max_npig + 1) * sizeof *w.pr)};
    ASSERT(w.key && w.key_tmp && w.idx_tmp && w.fl && w.fp_at && w.pr);
    for (size_t i = 0; i < A * T * R * n_cats; i++) prec[i] = -1;
    for (size_t i = 0; i < A * M * T * n_cats; i++) recall[i] = -1;
    for (size_t k = 0; k < n_cats; k++) {
        uint32_t *idx = order + start[k];
        size_t n = start[k + 1] - start[k];
        for (size_t i = 0; i < n; i++) w.key[i] = accum_score_key(recs[idx[i]].score);
        accum_radix_sort(w.key, idx, n, w.key_tmp, w.idx_tmp);
        for (int m = 0; m < M; m++) {
            size_t nm = 0; /* the records within maxDets of their image, in ranking order */
            for (size_t i = 0; i < n; i++) {
                const EvalRec *r = &recs[idx[i]];
                if (r->rank >= (uint32_t)p->max_dets[m]) continue;
                for (int a = 0; a < A; a++) w.fl[a * max_n + nm] = r->flags[a];
                nm++;
            }
            for (int a = 0; a < A; a++) {
                uint32_t np = npig[k * A + a];
                if (np == 0) continue; /* no non-ignored GT: -1, left out of every mean */
                for (int t = 0; t < T; t++) {
                    /* precision is only summarized for maxDets 100, the last */
                    double *q = m == M - 1 ? prec + ((size_t)(a * T + t) * R) * n_cats + k : NULL;
                    recall[((size_t)(a * M + m) * T + t) * n_cats + k] =
                        accum_one(w.fl + a * max_n, nm, t, np, p->recall_thresholds, w.fp_at, w.pr,
                                  q, n_cats);
                }
            }
        }
    }
    free(w.key);
    free(w.key_tmp);
    free(w.idx_tmp);
    free(w.fl);
    free(w.fp_at);
    free(w.pr);
    free(order);
    free(start);
}

/* numpy's pairwise summation of a contiguous float64 array (DOUBLE_pairwise_sum, blocks of 128
 * with 8 accumulators), which np.mean uses. */
static double accum_pairwise_sum(const double *a, size_t n)
{
    if (n < 8) {
        double res = 0.;
        for (size_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8], res;
        size_t i;
        for (int j = 0; j < 8; j++) r[j] = a[j];
        for (i = 8; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return accum_pairwise_sum(a, n2) + accum_pairwise_sum(a + n2, n - n2);
}

/* np.mean(s[s > -1]) over v[i0 + i * stride] for i < n, or -1 when nothing is > -1; buf has room
 * for n values. */
static double accum_mean(const double *v, size_t n, size_t stride, double *buf)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i * stride] > -1) buf[m++] = v[i * stride];
    return m ? accum_pairwise_sum(buf, m) / (double)m : -1;
}

/* Index of the IoU threshold equal to thr (np.where(iouThr == p.iouThrs)), or -1. */
static int accum_find_thr(const CocoEvalParams *p, double thr)
{
    for (int t = 0; t < T; t++)
        if (p->iou_thresholds[t] == thr) return t;
    return -1;
}

void coco_eval__summarize(const double *prec, const double *recall, size_t n_cats,
                          const CocoEvalParams *p, double stats[COCO_EVAL_NUM_STATS],
                          double *cat_ap)
{
    size_t K = n_cats, TRK = (size_t)T * R * K;
    double *buf = malloc((TRK ? TRK : 1) * sizeof *buf);
    ASSERT(buf);
    /* AP over all thresholds for each area; AP50 and AP75 for area all (maxDets 100) */
    static const int ap_area[] = {0, -1, -1, 1, 2, 3};
    for (int s = 0; s < 6; s++) {
        int a = ap_area[s] < 0 ? 0 : ap_area[s];
        const double *v = prec + (size_t)a * TRK;
        if (ap_area[s] >= 0) {
            stats[s] = accum_mean(v, TRK, 1, buf);
        } else {
            int t = accum_find_thr(p, s == 1 ? .5 : .75);
            stats[s] = t < 0 ? -1 : accum_mean(v + (size_t)t * R * K, (size_t)R * K, 1, buf);
        }
    }
    /* AR: maxDets 1, 10, 100 for area all, then the three areas at maxDets 100 */
    static const int ar_area[] = {0, 0, 0, 1, 2, 3}, ar_m[] = {0, 1, 2, 2, 2, 2};
    for (int s = 0; s < 6; s++)
        stats[6 + s] = accum_mean(recall + (size_t)(ar_area[s] * M + ar_m[s]) * T * K,
                                  (size_t)T * K, 1, buf);
    /* per category: precision[:, :, k, all, 100], in (t, r) order */
    for (size_t k = 0; k < K; k++) cat_ap[k] = accum_mean(prec + k, (size_t)T * R, K, buf);
    free(buf);
}
