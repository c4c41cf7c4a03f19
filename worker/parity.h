/* parity.h: running a reference fixture directory (weights.safetensors + io.safetensors, as in
 * ../shared/fixtures/effdet_d0_128) through our model, and comparing with what the reference
 * computed. Used by `effdet parity` and by tests/parity.
 *
 * The fixture's weights metadata names the model ("model"), "num_classes", "image_size" [H, W]
 * and "batch"; io.safetensors holds "input" (B, 3, H, W) NCHW. Outputs are produced under the
 * fixture's own names and layouts: class_out.L (B, A*C, fh, fw), box_out.L (B, A*4, fh, fw) NCHW,
 * detections (B, max_det, 6) rows [x1, y1, x2, y2, score, class] zero-padded, anchors (N, 4). */
#ifndef EFFDET_PARITY_H
#define EFFDET_PARITY_H

#include "shared/err.h"
#include "worker/anchors.h"
#include "worker/model/model.h"

/* One named host tensor of a parity result (PyTorch layout). */
typedef struct ParityTensor {
    char name[160];
    int ndim;
    int64_t shape[4];
    float *data;
} ParityTensor;

enum { PARITY_MAX_EXTRA = 256 };

static inline size_t parity_tensor_numel(const ParityTensor *e)
{
    size_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (size_t)e->shape[d];
    return n;
}

typedef struct ParityRun {
    ModelConfig cfg;
    Model model;
    Anchors anchors;
    int batch, h, w;
    float *class_out[MAX_LEVELS]; /* host, NCHW */
    float *box_out[MAX_LEVELS];   /* host, NCHW */
    float *detections;            /* host (B, max_det, 6) */
    /* Training parity (train.safetensors present): loss, class_loss, box_loss, every grad.<name>
     * the reference lists and the bn_after.<name> running statistics after the train forward. */
    int has_train;
    float loss[3];
    ParityTensor extra[PARITY_MAX_EXTRA];
    int n_extra;
} ParityRun;

/* prec: the activations' precision (--amp); the training half runs in fp32 only. */
int parity_run(ParityRun *r, const char *dir, const char *device, Precision prec, Err *err);
/* The training half: runs when DIR/train.safetensors exists (called by parity_run). */
int parity_run_train(ParityRun *r, const char *dir, const char *device, Err *err);
void parity_run_free(ParityRun *r); /* idempotent */
int parity_write(const ParityRun *r, const char *path, Err *err);

/* max|ours - ref| / max|ref| over n values (0 when both are all zero). */
double parity_rel_err(const float *ours, const float *ref, size_t n);
/* rms(ours - ref) / rms(ref): the average error, where 2-byte rounding noise is spread out. */
double parity_rms_rel_err(const float *ours, const float *ref, size_t n);

/* The bound a tensor of a parity run must meet against the reference, by its name, on every
 * backend: head outputs (class_out.*, box_out.*) and the losses 1e-4 (max|ours - ref| / max|ref|,
 * losses relative), BN running statistics after the train step (bn_after.*) 1e-5, gradients 1e-3,
 * except BiFPN cell 1's, 3e-3, and those from BiFPN cell 0 down, 1e-1 (worker/parity.c says why:
 * measured fp32 rounding noise of this fixture). 0: not judged (the
 * train-mode head outputs, reported for information). */
double parity_bound(const char *name);
/* The head outputs' bound under --amp (fp16 or bf16 activations against the fp32 reference):
 * issue #8's 1e-2, the same measure. */
#define PARITY_AMP_BOUND 1e-2

/* Matches detection rows (rows of 6) as sets: same class, each box corner within
 * box_abs + box_rel * |ref| pixels, score within score_tol. Returns the number of rows of either
 * side left unmatched (0 = same). From the same head outputs, boxes agree to 1e-3 px; through a
 * whole float32 network, head outputs differ by float noise (~1e-6 relative) that exp() turns into
 * ~1e-3 px on boxes hundreds of pixels wide, hence the relative term (the fixture README's 1e-4). */
int parity_match_detections(const float *ours, const float *ref, int rows, float box_abs,
                            float box_rel, float score_tol);

#endif
