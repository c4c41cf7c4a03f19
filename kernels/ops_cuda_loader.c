/* ops_cuda_loader.c: ops_cuda() loads the CUDA backend on demand.
 *
 * The CUDA backend (kernels/cuda/) is built as its own shared library, libeffdet_cuda.so, which
 * alone links cuDNN, cuBLAS, the CUDA runtime and NCCL. Programs dlopen it only when a user asks
 * for --device cuda, so CPU runs never load the CUDA libraries (faster start, runs on machines
 * without them, clean under valgrind and the sanitizers). Where it looks, in order:
 * $EFFDET_CUDA_LIB, then lib/ beside the program's bin/ directory (build/lib for build/bin/effdet,
 * also from build/tests/gpu/), then the loader's search path. */
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/ops.h"

typedef const Ops *(*CudaEntry)(Err *err);

static void *open_backend(char *tried, size_t cap)
{
    char exe[PATH_MAX], cand[3][PATH_MAX + 64];
    int n = 0;
    const char *env = getenv("EFFDET_CUDA_LIB");
    if (env) snprintf(cand[n++], sizeof cand[0], "%s", env);
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        exe[len] = '\0';
        char *dir = dirname(exe);
        snprintf(cand[n++], sizeof cand[0], "%s/../lib/libeffdet_cuda.so", dir);
        snprintf(cand[n++], sizeof cand[0], "%s/../../lib/libeffdet_cuda.so", dir);
    }
    tried[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (access(cand[i], R_OK) != 0) continue;
        void *h = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
        snprintf(tried, cap, "%s", dlerror());
        return NULL;
    }
    void *h = dlopen("libeffdet_cuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) snprintf(tried, cap, "libeffdet_cuda.so not found beside the program (was it built "
                                 "with nvcc and cuDNN? `make` prints a ✓/✗ line for each)");
    return h;
}

const Ops *ops_cuda(Err *err)
{
    char why[512];
    /* The handle stays open for the life of the process: the table points into the library. */
    void *h = open_backend(why, sizeof why);
    if (!h) return err_set(err, "--device cuda: cannot load the CUDA backend: %s", why), NULL;
    CudaEntry entry = (CudaEntry)dlsym(h, "effdet_cuda_ops");
    if (!entry) return err_set(err, "--device cuda: %s has no effdet_cuda_ops", "libeffdet_cuda.so"), NULL;
    return entry(err);
}
