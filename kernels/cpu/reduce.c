/* reduce.c: deterministic parallel sums, shared by the CPU backward passes and the optimizer.
 *
 * Threads that each add up "their" share and then meet give a result that depends on how the
 * work was split, because float addition is not associative; a training run resumed from a
 * checkpoint would then drift from the run it continues. Here the range [0, n) is cut into
 * CPU_REDUCE_CHUNKS fixed chunks, whatever the thread count; each chunk adds its share, in double,
 * into its own zeroed partial, and the partials are added in chunk order. The result is the same
 * bit for bit on every run, with any number of threads and any scheduling. */
#include <string.h>

#include "kernels/cpu/cpu_internal.h"
#include "shared/check.h"

void cpu__reduce(double *out, int width, size_t n, CpuReduceFn fn, const void *arg)
{
    /* 64 KB on the caller's stack: ops never allocate. */
    double part[CPU_REDUCE_CHUNKS][CPU_REDUCE_WIDTH];
    ASSERT(width >= 1 && width <= CPU_REDUCE_WIDTH);
#pragma omp parallel for schedule(static)
    for (int k = 0; k < CPU_REDUCE_CHUNKS; k++) {
        size_t begin = n * k / CPU_REDUCE_CHUNKS, end = n * (k + 1) / CPU_REDUCE_CHUNKS;
        memset(part[k], 0, (size_t)width * sizeof(double));
        if (begin < end) fn(part[k], begin, end, arg);
    }
    for (int j = 0; j < width; j++) {
        double s = 0.0;
        for (int k = 0; k < CPU_REDUCE_CHUNKS; k++) s += part[k][j];
        out[j] = s;
    }
}

typedef struct ColumnDots {
    const float *a, *b; /* (rows, ld) views starting at the first column summed */
    int ld, ct;
} ColumnDots;

static void column_dots_chunk(double *acc, size_t begin, size_t end, const void *arg)
{
    const ColumnDots *d = arg;
    for (size_t r = begin; r < end; r++) {
        const float *a = d->a + r * d->ld;
        if (d->b) {
            const float *b = d->b + r * d->ld;
            for (int j = 0; j < d->ct; j++) acc[j] += (double)a[j] * b[j];
        } else {
            for (int j = 0; j < d->ct; j++) acc[j] += a[j];
        }
    }
}

void cpu__column_dots(double *out, const float *a, const float *b, size_t rows, int ld, int ct)
{
    ColumnDots d = {.a = a, .b = b, .ld = ld, .ct = ct};
    cpu__reduce(out, ct, rows, column_dots_chunk, &d);
}

void cpu__column_sums_add(float *dst, const float *a, size_t rows, int c)
{
    double s[CPU_REDUCE_WIDTH];
    for (int c0 = 0; c0 < c; c0 += CPU_REDUCE_WIDTH) {
        int ct = c - c0 < CPU_REDUCE_WIDTH ? c - c0 : CPU_REDUCE_WIDTH;
        cpu__column_dots(s, a + c0, NULL, rows, c, ct);
        for (int j = 0; j < ct; j++) dst[c0 + j] += (float)s[j];
    }
}
