/* labeler.cu: the label_anchors op: worker/labeler.c's training targets for a whole batch on the
 * GPU, bit for bit (rules and the level-major output layout: worker/labeler.h; contract:
 * kernels/ops.h).
 *
 * Three kernels per batch, each deterministic:
 * 1. label_match_kernel, one thread per output row (image, anchor): the anchor's best GT, scanning
 *    the image's rows in order and replacing the best only on a strictly larger IoU (the first GT
 *    wins ties, as torch.max); the threshold match is that GT where IoU >= 0.5, else -1. It is
 *    stored in cls_target, which serves as scratch until kernel 3 overwrites it.
 * 2. label_force_kernel, one block per (image, GT row): the GT's argmax-IoU anchor, first anchor
 *    on ties (a block reduction on (IoU, lower index)); a GT that overlaps nothing takes anchor 0,
 *    as in effdet. It then does atomicMin(scratch, FORCED + g) on that anchor's row: forced values
 *    lie below every threshold match (>= -1), so they override it, and the smallest is the lowest
 *    GT, which is what the CPU's backwards overwrite loop leaves. An integer min does not depend on
 *    the order the blocks run in.
 * 3. label_encode_kernel, one thread per row: turns the scratch into the class target and the box
 *    target and counts each image's positives (integer atomics: exact, order-free).
 * A GT is named by its row in the (batch, max_boxes) input, skipped rows included. The CPU numbers
 * only the kept rows, but in the same order, so "first" and "lowest" pick the same GT.
 *
 * Arithmetic. labeler.c is compiled with fp-contract off, so each product, sum and quotient is
 * rounded on its own; here every float operation is an __f*_rn intrinsic, which nvcc never fuses
 * into an FMA, so class targets, matches and positives are the CPU's exactly. The box encoding's
 * logf is CUDA's (within 1 ulp of glibc's, which the CPU calls), so th and tw may differ from the
 * CPU's in the last bit (tests/gpu/test_detect_gpu.c bounds it). */
#include "kernels/cuda/cuda_common.cuh"

/* Levels a kernel takes by value (the CPU's MAX_LEVELS is 6). */
enum { LABEL_MAX_LEVELS = 8, LABEL_BLOCK = 256 };

/* A forced match of GT g is stored as LABEL_FORCED + g: below -1, the smallest threshold value. */
static const int32_t LABEL_FORCED = INT32_MIN;

/* labeler.c's constants: FasterRcnnBoxCoder's EPS, and the matched/unmatched threshold. */
#define LABEL_BOX_EPS 1e-7f
#define LABEL_MATCH_THRESHOLD 0.5f

/* The anchor rows of each level (level_start) and the batch: what maps an output row to its
 * (image, anchor) and back (labeler.h's layout). */
typedef struct LabelLevels {
    int start[LABEL_MAX_LEVELS + 1];
    int num_levels;
    int batch;
} LabelLevels;

/* ---- helpers ----------------------------------------------------------------------------------- */

/* Output row r -> (image b, anchor a): level l's rows are batch * start[l] + b * size + i. */
__device__ __forceinline__ void label_row_anchor(const LabelLevels &lv, size_t r, int *b, int *a)
{
    int l = 0;
    while (l + 1 < lv.num_levels && r >= (size_t)lv.batch * lv.start[l + 1]) l++;
    const size_t size = (size_t)(lv.start[l + 1] - lv.start[l]);
    const size_t off = r - (size_t)lv.batch * lv.start[l];
    *b = (int)(off / size);
    *a = lv.start[l] + (int)(off % size);
}

/* (image b, anchor a) -> output row. */
__device__ __forceinline__ size_t label_anchor_row(const LabelLevels &lv, int b, int a)
{
    int l = 0;
    while (l + 1 < lv.num_levels && a >= lv.start[l + 1]) l++;
    const size_t size = (size_t)(lv.start[l + 1] - lv.start[l]);
    return (size_t)lv.batch * lv.start[l] + (size_t)b * size + (size_t)(a - lv.start[l]);
}

/* A yxyx box and its area (ymax - ymin) * (xmax - xmin), as labeler.c computes both. */
typedef struct LabelBox {
    float y0, x0, y1, x1, area;
} LabelBox;

__device__ __forceinline__ LabelBox label_box(const float *p)
{
    LabelBox b;
    b.y0 = p[0], b.x0 = p[1], b.y1 = p[2], b.x1 = p[3];
    b.area = __fmul_rn(__fsub_rn(b.y1, b.y0), __fsub_rn(b.x1, b.x0));
    return b;
}

/* iou_row_update's expression for one (GT g, anchor a) pair: 0 where the intersection is 0,
 * else inter / ((garea + aarea) - inter). Every IoU is a float >= +0 (labeler.c). */
__device__ __forceinline__ float label_iou(const LabelBox &g, const LabelBox &a)
{
    float ih = __fsub_rn(g.y1 < a.y1 ? g.y1 : a.y1, g.y0 > a.y0 ? g.y0 : a.y0);
    float iw = __fsub_rn(g.x1 < a.x1 ? g.x1 : a.x1, g.x0 > a.x0 ? g.x0 : a.x0);
    ih = ih > 0.0f ? ih : 0.0f;
    iw = iw > 0.0f ? iw : 0.0f;
    const float inter = __fmul_rn(ih, iw);
    if (inter == 0.0f) return 0.0f;
    return __fdiv_rn(inter, __fsub_rn(__fadd_rn(g.area, a.area), inter));
}

/* ---- kernels ----------------------------------------------------------------------------------- */

/* Kernel 1: each row's threshold match (GT row index, or -1) into match. */
__global__ void label_match_kernel(int32_t *match, const float *anchors, const float *gt,
                                   const int32_t *gt_class, LabelLevels lv, int max_boxes,
                                   size_t rows)
{
    for (size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x; r < rows;
         r += (size_t)gridDim.x * blockDim.x) {
        int b, a;
        label_row_anchor(lv, r, &b, &a);
        const LabelBox an = label_box(anchors + 4 * (size_t)a);
        const float *gb = gt + (size_t)b * max_boxes * 4;
        const int32_t *gc = gt_class + (size_t)b * max_boxes;
        /* The CPU's start state is IoU 0 with GT 0, and only a strictly larger IoU replaces it,
         * so a best >= 0.5 always names the GT that reached it. */
        float best = 0.0f;
        int best_g = -1;
        for (int g = 0; g < max_boxes; g++) {
            if (gc[g] <= -1) continue;
            const float iou = label_iou(label_box(gb + 4 * (size_t)g), an);
            if (iou > best) best = iou, best_g = g;
        }
        match[r] = best >= LABEL_MATCH_THRESHOLD ? best_g : -1;
    }
}

/* Kernel 2: block (g, b) finds GT g's argmax anchor in image b and claims that anchor's row. */
__global__ void label_force_kernel(int32_t *match, const float *anchors, int count, const float *gt,
                                   const int32_t *gt_class, LabelLevels lv, int max_boxes)
{
    __shared__ float s_iou[LABEL_BLOCK];
    __shared__ int s_idx[LABEL_BLOCK];
    const int g = blockIdx.x, b = blockIdx.y;
    if (gt_class[(size_t)b * max_boxes + g] <= -1) return; /* the whole block leaves together */
    const LabelBox gb = label_box(gt + ((size_t)b * max_boxes + g) * 4);
    /* Each thread's anchors ascend, so keeping only strictly larger IoUs keeps its first argmax;
     * every thread with an anchor starts above -1, threads without one never win. */
    float best = -1.0f;
    int best_a = INT32_MAX;
    for (int a = threadIdx.x; a < count; a += blockDim.x) {
        const float iou = label_iou(gb, label_box(anchors + 4 * (size_t)a));
        if (iou > best) best = iou, best_a = a;
    }
    s_iou[threadIdx.x] = best;
    s_idx[threadIdx.x] = best_a;
    __syncthreads();
    for (int half = LABEL_BLOCK / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) {
            const float v = s_iou[threadIdx.x + half];
            const int i = s_idx[threadIdx.x + half];
            if (v > s_iou[threadIdx.x] || (v == s_iou[threadIdx.x] && i < s_idx[threadIdx.x]))
                s_iou[threadIdx.x] = v, s_idx[threadIdx.x] = i;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicMin(&match[label_anchor_row(lv, b, s_idx[0])], LABEL_FORCED + g);
}

/* Kernel 3: final targets from the scratch in cls_target, and each image's positives. */
__global__ void label_encode_kernel(int32_t *cls_target, float *box_target, int32_t *positives,
                                    const float *anchors, const float *gt,
                                    const int32_t *gt_class, LabelLevels lv, int max_boxes,
                                    size_t rows)
{
    for (size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x; r < rows;
         r += (size_t)gridDim.x * blockDim.x) {
        const int32_t m = cls_target[r];
        const int g = m < -1 ? (int)(m - LABEL_FORCED) : (int)m;
        float *t = box_target + 4 * r;
        if (g < 0) {
            cls_target[r] = -1; /* LABEL_BACKGROUND */
            t[0] = t[1] = t[2] = t[3] = 0.0f;
            continue;
        }
        int b, a;
        label_row_anchor(lv, r, &b, &a);
        const size_t row = (size_t)b * max_boxes + g;
        cls_target[r] = gt_class[row] - 1;
        /* labeler_init's anchor terms, then labeler_encode, operation for operation. */
        const float *an = anchors + 4 * (size_t)a;
        const float ha = __fsub_rn(an[2], an[0]), wa = __fsub_rn(an[3], an[1]);
        const float yca = __fadd_rn(an[0], __fdiv_rn(ha, 2.0f));
        const float xca = __fadd_rn(an[1], __fdiv_rn(wa, 2.0f));
        const float hae = __fadd_rn(ha, LABEL_BOX_EPS), wae = __fadd_rn(wa, LABEL_BOX_EPS);
        const float *bx = gt + 4 * row;
        const float h = __fsub_rn(bx[2], bx[0]), w = __fsub_rn(bx[3], bx[1]);
        const float yc = __fadd_rn(bx[0], __fdiv_rn(h, 2.0f));
        const float xc = __fadd_rn(bx[1], __fdiv_rn(w, 2.0f));
        t[0] = __fdiv_rn(__fsub_rn(yc, yca), hae);
        t[1] = __fdiv_rn(__fsub_rn(xc, xca), wae);
        t[2] = logf(__fdiv_rn(__fadd_rn(h, LABEL_BOX_EPS), hae));
        t[3] = logf(__fdiv_rn(__fadd_rn(w, LABEL_BOX_EPS), wae));
        atomicAdd(&positives[b], 1);
    }
}

/* ---- launchers --------------------------------------------------------------------------------- */

void cuda__label_anchors(OpsCtx *ctx, int32_t *cls_target, float *box_target, int32_t *positives,
                         const float *anchors, int count, const int *level_start, int num_levels,
                         const float *gt, const int32_t *gt_class, int batch, int max_boxes)
{
    if (batch <= 0) return;
    ASSERT(count > 0 && max_boxes >= 0 && batch <= 65535);
    ASSERT(num_levels >= 1 && num_levels <= LABEL_MAX_LEVELS);
    ASSERT(level_start[0] == 0 && level_start[num_levels] == count);
    LabelLevels lv = {};
    for (int l = 0; l <= num_levels; l++) {
        ASSERT(l == 0 || level_start[l] >= level_start[l - 1]);
        lv.start[l] = level_start[l];
    }
    lv.num_levels = num_levels;
    lv.batch = batch;
    const size_t rows = (size_t)batch * count;

    CUDA_CHECK(cudaMemsetAsync(positives, 0, (size_t)batch * sizeof(int32_t), ctx->stream));
    label_match_kernel<<<cuda__blocks(rows), CUDA_BLOCK, 0, ctx->stream>>>(
        cls_target, anchors, gt, gt_class, lv, max_boxes, rows);
    CUDA_CHECK(cudaGetLastError());
    if (max_boxes > 0) {
        label_force_kernel<<<dim3((unsigned)max_boxes, (unsigned)batch), LABEL_BLOCK, 0,
                             ctx->stream>>>(cls_target, anchors, count, gt, gt_class, lv,
                                            max_boxes);
        CUDA_CHECK(cudaGetLastError());
    }
    label_encode_kernel<<<cuda__blocks(rows), CUDA_BLOCK, 0, ctx->stream>>>(
        cls_target, box_target, positives, anchors, gt, gt_class, lv, max_boxes, rows);
    CUDA_CHECK(cudaGetLastError());
    CUDA_OP_END(ctx);
}
