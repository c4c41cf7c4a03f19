/* detect.cu: the detect op: worker/postprocess.c's steps 1-3 (top-k, decode, per-class NMS) for a
 * whole batch on the GPU (contract: kernels/ops.h; reference: postprocess_image with img_scale <= 0).
 *
 * Order of candidates. Each (anchor, class) logit of an image gets a unique 64-bit key: the
 * logit's bits mapped to an unsigned integer that orders like the float (-0 taken as +0, as float
 * comparison does), then ~flat, flat = anchor * C + class. A larger key is a larger logit, or an
 * equal logit at a lower flat index: the CPU heap's rule, so the top k are the k largest keys.
 *
 * Steps, all on ctx->stream, all scratch in ctx->workspace (detect_workspace_bytes):
 * 1. Top-k by radix select: 8 passes over the logits, one byte of the key each, most significant
 *    first. A pass counts, per image, the byte values of the keys that share the bytes already
 *    chosen (det_hist_kernel); det_select_kernel then picks the byte whose bin holds the k-th
 *    largest. After 8 passes the chosen bytes are that key itself, T, and exactly k keys are
 *    >= T (keys are unique), which det_collect_kernel gathers. Memory is O(batch * k), and the
 *    counts are integers, so the result does not depend on the order blocks run in.
 * 2. det_decode_kernel: decode() of postprocess.c for each candidate, score = sigmoid(logit).
 * 3. det_rank_kernel: each candidate's position in NMS order, by counting the candidates that go
 *    before it: score descending, then class ascending, then key descending (top-k order).
 *    postprocess.c breaks the last tie (equal score and class) by heap slot, an order no parallel
 *    code can reproduce; top-k order is this op's rule instead, so the two differ only where two
 *    candidates of one class have exactly the same score (tests/gpu/test_detect_gpu.c).
 * 4. NMS as torchvision's CUDA nms: det_nms_mask_kernel sets, for each candidate i, the bits of
 *    the later candidates j of the same class with iou(i, j) > iou_thresh, 64 per word; then
 *    det_nms_scan_kernel (one block per image) walks the candidates in order with a "removed"
 *    bit set, keeping the first max_det survivors: the CPU's greedy loop, where only kept
 *    candidates suppress.
 *
 * Arithmetic. Each float operation is an __f*_rn intrinsic, rounded on its own as the CPU rounds
 * it; expf is CUDA's, within 2 ulp of glibc's, so a score or box may differ from the CPU's in the
 * last bits, and two candidates whose scores tie on one side may be ordered by score on the
 * other (the test compares detections as sets). The one fused multiply-add is iou()'s area_a + area_b, which gcc 12 contracts on
 * x86-64-v3 (the Makefile's ARCH): det_iou does the same, so IoUs at the threshold agree.
 * Logits are assumed not NaN (a NaN would rank above +inf here).
 *
 * Mixed precision: the cls and box tensors are of the context's storage type T (cuda_common.cuh),
 * read through cuda__ld; a 2-byte value converts to float exactly, so everything after the read
 * is the fp32 op's arithmetic on those values. Anchors, scratch and dets are float. */
#include "kernels/cuda/cuda_common.cuh"

enum {
    DET_MAX_LEVELS = 8,   /* levels a kernel takes by value (the CPU's MAX_LEVELS is 6) */
    DET_PASSES = 8,       /* radix select: one byte of the 64-bit key per pass */
    DET_BINS = 256,
    DET_ITEMS = 32,       /* logits per thread in the passes over all logits */
    DET_TILE = 256,       /* threads of det_rank_kernel, and candidates per shared-memory tile */
    DET_WORD = 64,        /* candidates per NMS mask word */
    DET_SCAN_THREADS = 128,
};

/* Each level's logits and box outputs (backend pointers, storage type T) and its first anchor. */
template <typename T> struct DetLevels {
    const T *cls[DET_MAX_LEVELS];
    const T *box[DET_MAX_LEVELS];
    int start[DET_MAX_LEVELS + 1];
    int num_levels;
};

/* The workspace, carved by det_layout. (batch, k) arrays hold each image's k candidates. */
typedef struct DetScratch {
    uint32_t *hist;      /* (DET_PASSES, batch, DET_BINS) byte counts of each pass */
    uint64_t *prefix;    /* (batch) key bytes chosen so far; after the last pass, T */
    uint32_t *remaining; /* (batch) rank of T among the keys that share prefix */
    uint32_t *count;     /* (batch) candidates gathered so far */
    uint64_t *key;       /* (batch, k) candidate keys, in gathering order */
    float4 *cand_box;    /* (batch, k) x1 y1 x2 y2, gathering order */
    float *cand_score;
    int32_t *cand_class; /* class channel, 0-based */
    float4 *box;         /* (batch, k) the same, in NMS order */
    float *score;
    int32_t *cls;
    uint64_t *mask;      /* (batch, k, words) suppression bits; word w of row i for w >= i / 64 */
} DetScratch;

/* ---- keys and helpers -------------------------------------------------------------------------- */

__device__ __forceinline__ uint64_t det_key(float logit, uint32_t flat)
{
    uint32_t u = __float_as_uint(logit);
    if (u == 0x80000000u) u = 0u; /* -0 == +0 */
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((uint64_t)u << 32) | (uint64_t)(~flat);
}

__device__ __forceinline__ float det_key_logit(uint64_t key)
{
    const uint32_t u = (uint32_t)(key >> 32);
    return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

__device__ __forceinline__ uint32_t det_key_flat(uint64_t key) { return ~(uint32_t)key; }

/* Calls f(key) for the logits of image b that this thread owns: blockIdx.x and threadIdx.x stride
 * over each level's (cells * A * C) slice of the image. */
template <typename T, typename F>
__device__ __forceinline__ void det_for_each_logit(const DetLevels<T> &lv, int classes, int b, F f)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (int l = 0; l < lv.num_levels; l++) {
        const size_t n = (size_t)(lv.start[l + 1] - lv.start[l]) * classes;
        const T *x = lv.cls[l] + (size_t)b * n;
        const uint32_t base = (uint32_t)lv.start[l] * (uint32_t)classes;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride)
            f(det_key(cuda__ld(x, i), base + (uint32_t)i));
    }
}

/* Candidate j goes before candidate i in NMS order: score descending, class ascending, then top-k
 * order (key descending). Keys are unique, so this is a strict total order. */
__device__ __forceinline__ bool det_before(float sj, int cj, uint64_t kj, float si, int ci,
                                           uint64_t ki)
{
    return sj > si || (sj == si && (cj < ci || (cj == ci && kj > ki)));
}

/* postprocess.c iou(a, b), a the kept candidate, boxes x1 y1 x2 y2 in (x, y, z, w), with area_a
 * fused into the sum as the CPU build computes it (see the file comment). */
__device__ __forceinline__ float det_iou(float4 a, float4 b)
{
    const float aw = __fsub_rn(a.z, a.x), ah = __fsub_rn(a.w, a.y);
    const float area_b = __fmul_rn(__fsub_rn(b.z, b.x), __fsub_rn(b.w, b.y));
    const float xx1 = fmaxf(a.x, b.x), yy1 = fmaxf(a.y, b.y);
    const float xx2 = fminf(a.z, b.z), yy2 = fminf(a.w, b.w);
    const float w = fmaxf(0.0f, __fsub_rn(xx2, xx1)), h = fmaxf(0.0f, __fsub_rn(yy2, yy1));
    const float inter = __fmul_rn(w, h);
    return __fdiv_rn(inter, __fsub_rn(__fmaf_rn(aw, ah, area_b), inter));
}

/* ---- kernels ----------------------------------------------------------------------------------- */

/* Pass `pass` of the radix select: hist[b][byte] += keys of image b that share the chosen bytes
 * (prefix[b], unused in pass 0), counted by their byte at bit 56 - 8 pass. Grid (x, batch). */
template <typename T>
__global__ void det_hist_kernel(uint32_t *hist, const uint64_t *prefix, DetLevels<T> lv,
                                int classes, int pass)
{
    __shared__ uint32_t s_hist[DET_BINS];
    const int b = blockIdx.y;
    for (int i = threadIdx.x; i < DET_BINS; i += blockDim.x) s_hist[i] = 0;
    __syncthreads();
    const int shift = 56 - 8 * pass;
    const uint64_t want = pass ? prefix[b] >> (shift + 8) : 0;
    det_for_each_logit(lv, classes, b, [&](uint64_t key) {
        if (pass == 0 || (key >> (shift + 8)) == want)
            atomicAdd(&s_hist[(key >> shift) & (DET_BINS - 1)], 1u);
    });
    __syncthreads();
    for (int i = threadIdx.x; i < DET_BINS; i += blockDim.x)
        if (s_hist[i]) atomicAdd(&hist[(size_t)b * DET_BINS + i], s_hist[i]);
}

/* One thread per image: the byte of pass `pass` whose bin holds the remaining[b]-th largest key
 * (k in pass 0), walking the bins from the largest byte down. */
__global__ void det_select_kernel(uint64_t *prefix, uint32_t *remaining, const uint32_t *hist,
                                  int batch, int k, int pass)
{
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= batch) return;
    uint64_t pre = pass ? prefix[b] : 0;
    uint32_t rem = pass ? remaining[b] : (uint32_t)k;
    const uint32_t *h = hist + (size_t)b * DET_BINS;
    int d = DET_BINS - 1;
    while (d > 0 && h[d] < rem) rem -= h[d--];
    prefix[b] = pre | ((uint64_t)d << (56 - 8 * pass));
    remaining[b] = rem;
}

/* The k keys >= T of each image, in whatever order the atomics hand out slots (later steps
 * order them by key, so the order here does not matter). */
template <typename T>
__global__ void det_collect_kernel(uint64_t *cand_key, uint32_t *count, const uint64_t *threshold,
                                   DetLevels<T> lv, int classes, int k)
{
    const int b = blockIdx.y;
    const uint64_t t = threshold[b];
    det_for_each_logit(lv, classes, b, [&](uint64_t key) {
        if (key < t) return;
        const uint32_t slot = atomicAdd(&count[b], 1u);
        if (slot < (uint32_t)k) cand_key[(size_t)b * k + slot] = key;
    });
}

/* postprocess.c decode() for each of the batch * k candidates. */
template <typename T>
__global__ void det_decode_kernel(float4 *cand_box, float *cand_score, int32_t *cand_class,
                                  const uint64_t *cand_key, const float *anchors, DetLevels<T> lv,
                                  int classes, int k, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int b = (int)(i / k);
        const uint64_t key = cand_key[i];
        const uint32_t flat = det_key_flat(key);
        const int anchor = (int)(flat / (uint32_t)classes);
        int l = 0;
        while (anchor >= lv.start[l + 1]) l++;
        const size_t rows_l = (size_t)(lv.start[l + 1] - lv.start[l]); /* cells * A */
        const T *tp = lv.box[l] + ((size_t)b * rows_l + (size_t)(anchor - lv.start[l])) * 4;
        const float t[4] = {cuda__ld(tp, 0), cuda__ld(tp, 1), cuda__ld(tp, 2), cuda__ld(tp, 3)};
        const float *an = anchors + (size_t)anchor * 4;
        const float yca = __fdiv_rn(__fadd_rn(an[0], an[2]), 2.0f);
        const float xca = __fdiv_rn(__fadd_rn(an[1], an[3]), 2.0f);
        const float ha = __fsub_rn(an[2], an[0]), wa = __fsub_rn(an[3], an[1]);
        const float w = __fmul_rn(expf(t[3]), wa), h = __fmul_rn(expf(t[2]), ha);
        const float yc = __fadd_rn(__fmul_rn(t[0], ha), yca);
        const float xc = __fadd_rn(__fmul_rn(t[1], wa), xca);
        const float hw = __fdiv_rn(w, 2.0f), hh = __fdiv_rn(h, 2.0f);
        cand_box[i] = make_float4(__fsub_rn(xc, hw), __fsub_rn(yc, hh), __fadd_rn(xc, hw),
                                  __fadd_rn(yc, hh));
        cand_score[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-det_key_logit(key))));
        cand_class[i] = (int32_t)(flat % (uint32_t)classes);
    }
}

/* Grid (ceil(k / DET_TILE), batch), DET_TILE threads: candidate i's NMS position is the number of
 * candidates before it (det_before), counted over shared-memory tiles; it is copied there. */
__global__ void det_rank_kernel(float4 *box, float *score, int32_t *cls, const float4 *cand_box,
                                const float *cand_score, const int32_t *cand_class,
                                const uint64_t *cand_key, int k)
{
    __shared__ float s_score[DET_TILE];
    __shared__ int32_t s_class[DET_TILE];
    __shared__ uint64_t s_key[DET_TILE];
    const size_t base = (size_t)blockIdx.y * k;
    const int i = blockIdx.x * DET_TILE + threadIdx.x;
    const bool mine = i < k;
    const float si = mine ? cand_score[base + i] : 0.0f;
    const int32_t ci = mine ? cand_class[base + i] : 0;
    const uint64_t ki = mine ? cand_key[base + i] : 0;
    int pos = 0;
    for (int t0 = 0; t0 < k; t0 += DET_TILE) {
        const int j = t0 + threadIdx.x;
        if (j < k) {
            s_score[threadIdx.x] = cand_score[base + j];
            s_class[threadIdx.x] = cand_class[base + j];
            s_key[threadIdx.x] = cand_key[base + j];
        }
        __syncthreads();
        const int n = min(DET_TILE, k - t0);
        if (mine)
            for (int t = 0; t < n; t++)
                pos += det_before(s_score[t], s_class[t], s_key[t], si, ci, ki);
        __syncthreads();
    }
    if (mine) {
        box[base + pos] = cand_box[base + i];
        score[base + pos] = si;
        cls[base + pos] = ci;
    }
}

/* Grid (words, words, batch), DET_WORD threads: block (col, row) writes word col of the mask rows
 * row * 64 .. row * 64 + 63: bit t set where candidate j = col * 64 + t comes after i, has the same
 * class and iou(i, j) > thresh. Words left of the diagonal are never read and not written. */
__global__ void det_nms_mask_kernel(uint64_t *mask, const float4 *box, const int32_t *cls, int k,
                                    int words, float thresh)
{
    __shared__ float4 s_box[DET_WORD];
    __shared__ int32_t s_class[DET_WORD];
    const int col = blockIdx.x, row = blockIdx.y;
    if (col < row) return; /* the whole block leaves together */
    const size_t base = (size_t)blockIdx.z * k;
    const int j0 = col * DET_WORD, n = min(DET_WORD, k - j0);
    if ((int)threadIdx.x < n) {
        s_box[threadIdx.x] = box[base + j0 + threadIdx.x];
        s_class[threadIdx.x] = cls[base + j0 + threadIdx.x];
    }
    __syncthreads();
    const int i = row * DET_WORD + threadIdx.x;
    if (i >= k) return;
    const float4 bi = box[base + i];
    const int32_t ci = cls[base + i];
    uint64_t bits = 0;
    for (int t = col == row ? (int)threadIdx.x + 1 : 0; t < n; t++)
        if (s_class[t] == ci && det_iou(bi, s_box[t]) > thresh) bits |= 1ull << t;
    mask[(base + i) * words + col] = bits;
}

/* One block per image: the greedy walk in NMS order. A candidate not yet removed is kept (written
 * as row `kept` of dets) and removes the later ones its mask row names; the walk stops at max_det
 * kept. Control flow is uniform: every thread reads the same removed bit. */
__global__ void det_nms_scan_kernel(float *dets, int32_t *n_dets, const uint64_t *mask,
                                    const float4 *box, const float *score, const int32_t *cls,
                                    int k, int words, int max_det)
{
    extern __shared__ uint64_t s_removed[];
    const int b = blockIdx.x;
    const size_t base = (size_t)b * k;
    float *out = dets + (size_t)b * max_det * 6;
    for (int w = threadIdx.x; w < words; w += blockDim.x) s_removed[w] = 0;
    __syncthreads();
    int kept = 0;
    for (int i = 0; i < k && kept < max_det; i++) {
        if ((s_removed[i / DET_WORD] >> (i % DET_WORD)) & 1u) continue;
        __syncthreads(); /* every thread has read the bit before the words change */
        if (threadIdx.x == 0) {
            const float4 bx = box[base + i];
            float *r = out + (size_t)kept * 6;
            r[0] = bx.x, r[1] = bx.y, r[2] = bx.z, r[3] = bx.w;
            r[4] = score[base + i];
            r[5] = (float)(cls[base + i] + 1);
        }
        const uint64_t *m = mask + (base + i) * words;
        for (int w = i / DET_WORD + threadIdx.x; w < words; w += blockDim.x) s_removed[w] |= m[w];
        kept++;
        __syncthreads();
    }
    for (size_t e = (size_t)kept * 6 + threadIdx.x; e < (size_t)max_det * 6; e += blockDim.x)
        out[e] = 0.0f;
    if (threadIdx.x == 0) n_dets[b] = kept;
}

/* ---- launchers --------------------------------------------------------------------------------- */

/* Carves the workspace at base (NULL: sizes only); returns the bytes used. Every array starts on
 * a 256-byte boundary. */
static size_t det_layout(DetScratch *s, void *base, int batch, int k)
{
    const size_t bk = (size_t)batch * k, words = ((size_t)k + DET_WORD - 1) / DET_WORD;
    size_t off = 0;
    auto take = [&](size_t bytes) -> void * {
        void *p = base ? (char *)base + off : nullptr;
        off += (bytes + 255) / 256 * 256;
        return p;
    };
    s->hist = (uint32_t *)take((size_t)DET_PASSES * batch * DET_BINS * sizeof(uint32_t));
    s->prefix = (uint64_t *)take((size_t)batch * sizeof(uint64_t));
    s->remaining = (uint32_t *)take((size_t)batch * sizeof(uint32_t));
    s->count = (uint32_t *)take((size_t)batch * sizeof(uint32_t));
    s->key = (uint64_t *)take(bk * sizeof(uint64_t));
    s->cand_box = (float4 *)take(bk * sizeof(float4));
    s->cand_score = (float *)take(bk * sizeof(float));
    s->cand_class = (int32_t *)take(bk * sizeof(int32_t));
    s->box = (float4 *)take(bk * sizeof(float4));
    s->score = (float *)take(bk * sizeof(float));
    s->cls = (int32_t *)take(bk * sizeof(int32_t));
    s->mask = (uint64_t *)take(bk * words * sizeof(uint64_t));
    return off;
}

size_t cuda__detect_workspace_bytes(int batch, int count, int classes, int k, int max_det)
{
    (void)count, (void)classes, (void)max_det;
    if (batch <= 0 || k <= 0) return 0;
    DetScratch s;
    return det_layout(&s, NULL, batch, k);
}

/* Steps 1-4 for storage type T: everything of cuda__detect past its checks. */
template <typename T>
static void detect_t(OpsCtx *ctx, float *dets, int32_t *n_dets, const float *const *cls,
                     const float *const *box, const float *anchors, int count,
                     const int *level_start, int num_levels, int batch, int classes, int k,
                     float iou_thresh, int max_det)
{
    const size_t n = (size_t)count * classes;
    DetLevels<T> lv = {};
    for (int l = 0; l < num_levels; l++) {
        lv.cls[l] = cuda__as<T>(cls[l]), lv.box[l] = cuda__as<T>(box[l]);
        lv.start[l] = level_start[l];
    }
    lv.start[num_levels] = count;
    lv.num_levels = num_levels;
    const int words = (k + DET_WORD - 1) / DET_WORD;
    const size_t scan_shared = (size_t)words * sizeof(uint64_t);

    DetScratch s;
    const size_t need = det_layout(&s, ctx->workspace, batch, k);
    ASSERT(ctx->workspace != NULL && ctx->workspace_bytes >= need); /* detect_workspace_bytes */
    cudaStream_t st = ctx->stream;
    const size_t hist_bytes = (size_t)DET_PASSES * batch * DET_BINS * sizeof(uint32_t);
    CUDA_CHECK(cudaMemsetAsync(s.hist, 0, hist_bytes, st));
    CUDA_CHECK(cudaMemsetAsync(s.count, 0, (size_t)batch * sizeof(uint32_t), st));

    /* 1. top-k: radix select of the k-th largest key, then the keys >= it */
    const size_t per_block = (size_t)CUDA_BLOCK * DET_ITEMS;
    const dim3 all(cuda__cap_blocks((n + per_block - 1) / per_block), (unsigned)batch);
    const unsigned per_image = (unsigned)((batch + CUDA_BLOCK - 1) / CUDA_BLOCK);
    for (int pass = 0; pass < DET_PASSES; pass++) {
        uint32_t *hist = s.hist + (size_t)pass * batch * DET_BINS;
        det_hist_kernel<T><<<all, CUDA_BLOCK, 0, st>>>(hist, s.prefix, lv, classes, pass);
        CUDA_CHECK(cudaGetLastError());
        det_select_kernel<<<per_image, CUDA_BLOCK, 0, st>>>(s.prefix, s.remaining, hist, batch, k,
                                                            pass);
        CUDA_CHECK(cudaGetLastError());
    }
    det_collect_kernel<T><<<all, CUDA_BLOCK, 0, st>>>(s.key, s.count, s.prefix, lv, classes, k);
    CUDA_CHECK(cudaGetLastError());

    /* 2. decode, 3. NMS order */
    const size_t bk = (size_t)batch * k;
    det_decode_kernel<T><<<cuda__blocks(bk), CUDA_BLOCK, 0, st>>>(s.cand_box, s.cand_score,
                                                                  s.cand_class, s.key, anchors, lv,
                                                                  classes, k, bk);
    CUDA_CHECK(cudaGetLastError());
    const dim3 tiles((unsigned)((k + DET_TILE - 1) / DET_TILE), (unsigned)batch);
    det_rank_kernel<<<tiles, DET_TILE, 0, st>>>(s.box, s.score, s.cls, s.cand_box, s.cand_score,
                                                s.cand_class, s.key, k);
    CUDA_CHECK(cudaGetLastError());

    /* 4. NMS */
    det_nms_mask_kernel<<<dim3((unsigned)words, (unsigned)words, (unsigned)batch), DET_WORD, 0,
                          st>>>(s.mask, s.box, s.cls, k, words, iou_thresh);
    CUDA_CHECK(cudaGetLastError());
    det_nms_scan_kernel<<<(unsigned)batch, DET_SCAN_THREADS, scan_shared, st>>>(
        dets, n_dets, s.mask, s.box, s.score, s.cls, k, words, max_det);
    CUDA_CHECK(cudaGetLastError());
}

void cuda__detect(OpsCtx *ctx, float *dets, int32_t *n_dets, const float *const *cls,
                  const float *const *box, const float *anchors, int count, const int *level_start,
                  int num_levels, int batch, int anchors_per_loc, int classes, int k,
                  float iou_thresh, int max_det)
{
    if (batch <= 0) return;
    const size_t n = (size_t)count * classes;
    /* flat indices are int on the CPU and 32-bit in the keys */
    ASSERT(count > 0 && classes > 0 && n <= (size_t)INT32_MAX && batch <= 65535);
    ASSERT(k >= 1 && (size_t)k <= n && max_det >= 0);
    ASSERT(num_levels >= 1 && num_levels <= DET_MAX_LEVELS && anchors_per_loc > 0);
    ASSERT(level_start[0] == 0 && level_start[num_levels] == count);
    for (int l = 0; l < num_levels; l++) {
        ASSERT(level_start[l + 1] >= level_start[l]);
        ASSERT((level_start[l + 1] - level_start[l]) % anchors_per_loc == 0);
    }
    const int words = (k + DET_WORD - 1) / DET_WORD;
    const size_t scan_shared = (size_t)words * sizeof(uint64_t);
    ASSERT(words <= 65535 && scan_shared <= 48 * 1024); /* grid y of the mask; default shared */
    CUDA_ACT_DISPATCH(ctx, detect_t, ctx, dets, n_dets, cls, box, anchors, count, level_start,
                      num_levels, batch, classes, k, iou_thresh, max_det);
    CUDA_OP_END(ctx);
}
