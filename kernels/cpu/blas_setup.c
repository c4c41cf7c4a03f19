/* blas_setup.c: makes OpenBLAS use the kernels this CPU can run.
 *
 * Debian's OpenBLAS 0.3.21 picks its kernels when it is loaded, from a table of CPU models it
 * knows; on CPUs newer than that table it falls back to "Prescott" (SSE3) kernels, 3x slower
 * than the AVX2 ones (measured here: D0 forward 445 ms vs 270 ms). The choice can only be
 * overridden through OPENBLAS_CORETYPE before the library loads, so when the loaded core is a
 * generic one and the CPU has AVX2 and FMA, the process sets the variable and re-executes
 * itself once. Nothing happens when OPENBLAS_CORETYPE is already set. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/blas_setup.h"

char *openblas_get_corename(void);

void cpu_blas_setup(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE") || getenv("EFFDET_BLAS_REEXEC")) return;
    const char *core = openblas_get_corename();
    int generic = !core || !strcmp(core, "Prescott") || !strcmp(core, "Core2") ||
                  !strcmp(core, "Nehalem") || !strcmp(core, "Unknown");
    __builtin_cpu_init();
    if (!generic || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    setenv("OPENBLAS_CORETYPE", __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell", 1);
    setenv("EFFDET_BLAS_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): keep running with the generic kernels, correct but slower. */
}
