/* gpu_compare.h: the harness of the GPU tests (tests/gpu/): the CPU and CUDA backends side by
 * side, tensors held on both, and the comparison every GPU test makes:
 *     max |gpu - cpu| <= RTOL * max |cpu| + ATOL   (RTOL_TF32 while TF32 is on),
 * printed per comparison (llm.c style) and summarized per op at the end, so a log shows how much
 * room each op has. gpu_compare_main runs a cmocka group with the backends as every test's state;
 * on a machine without a usable GPU it says why and fails, since there is nothing to compare. */
#ifndef EFFDET_TEST_GPU_COMPARE_H
#define EFFDET_TEST_GPU_COMPARE_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernels/ops.h"

#define RTOL 1e-5
#define ATOL 1e-6
/* TF32 rounds each GEMM operand to a 10-bit mantissa (5e-4 relative; up to 1e-3 truncated). */
#define RTOL_TF32 1e-3

/* The worst max|gpu - cpu| / max|cpu| of one op (the first word of a comparison's label) in one
 * math mode, over all its comparisons: the closing summary. */
typedef struct OpWorst {
    char op[32];
    int tf32, checks;
    double rel;
} OpWorst;

enum { SUMMARY_CAP = 48 };

typedef struct Backends {
    const Ops *cpu, *gpu;
    OpsCtx *cctx, *gctx;
    int tf32; /* set_tf32(gctx, 1) is in effect: RTOL_TF32 applies, summary rows say tf32 */
    int n_worst;
    OpWorst worst[SUMMARY_CAP];
} Backends;

/* One tensor on both backends, and its host copy (the random values, or space for a download). */
typedef struct Buf {
    float *host, *cpu, *gpu;
    size_t n;
} Buf;

/* Raw bytes (int32 targets, uint8 masks) on both backends. */
typedef struct Raw {
    void *cpu, *gpu;
} Raw;

/* xorshift32: a fixed sequence per test, so a failure reproduces. */
uint32_t xorshift_next(uint32_t *s);
float xorshift_uniform(uint32_t *s, float lo, float hi);

/* Backend memory, or the test fails naming the backend. */
void *xalloc(const Ops *ops, OpsCtx *ctx, size_t bytes);

/* A tensor of n values drawn from [lo, hi), uploaded to both backends. */
Buf buf_random(const Backends *b, size_t n, uint32_t *seed, float lo, float hi);
/* An output tensor: zeroed on both backends by mem_alloc. */
Buf buf_out(const Backends *b, size_t n);
void buf_free(const Backends *b, Buf *x);
/* Uploads x->host to both backends again (after a test changed its values). */
void buf_upload(const Backends *b, const Buf *x);
/* The CPU's values of x copied to the GPU tensor (and to x->host), so that an op which consumes
 * another op's result starts from the same input on both backends and is compared alone. */
void buf_share_cpu(const Backends *b, Buf *x);

Raw raw_upload(const Backends *b, const void *host, size_t bytes);
void raw_free(const Backends *b, Raw *r);

/* An op a test calls that the GPU table leaves NULL fails its test instead of crashing. */
#define REQUIRE_GPU_OP(b, op)                                                                    \
    do {                                                                                         \
        if (!(b)->gpu->op) fail_msg("the %s backend has no " #op, (b)->gpu->name);               \
    } while (0)

/* Downloads both results and checks the bound above; prints the figures when `print` is set (and
 * always on failure) and records the ratio for the summary. Returns max|gpu - cpu| / max|cpu|. */
double check_close(Backends *b, const char *what, const Buf *x, int print);
void expect_close(Backends *b, const char *what, const Buf *x);

/* Both backends' workspaces reserved for convolution s. */
void reserve(const Backends *b, const ConvShape *s);
const char *act_name(Act a);
/* "op (N,H,W,Cin)->(OH,OW,Cout) kK sS pad tT bB lL rR [+bias]" */
void describe_conv(char *dst, size_t size, const char *op, const ConvShape *s, int bias);

/* Creates both backends, runs the n tests (each without a state of its own gets the Backends),
 * prints the per-op summary, and returns the exit status. */
int gpu_compare_main(const char *program, const struct CMUnitTest *tests, size_t n);

#endif
