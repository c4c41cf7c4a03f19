/* blas_setup.c: the environment the CPU backend's libraries read when they load, fixed before
 * they do. Both settings can only be given through environment variables read at load time, so
 * when one is missing the process sets it and re-executes itself, once.
 *
 * 1. OPENBLAS_CORETYPE. Debian's OpenBLAS 0.3.21 picks its kernels from a table of CPU models it
 *    knows; on newer CPUs it falls back to "Prescott" (SSE3) kernels, 3x slower than the AVX2
 *    ones (measured here: D0 forward 445 ms vs 270 ms). Set when the loaded core is a generic one
 *    and the CPU has AVX2 and FMA.
 * 2. GOMP_SPINCOUNT. libgomp threads spin about 300,000 iterations at every barrier before
 *    sleeping. When another process holds a core, every parallel region then waits for a
 *    descheduled thread: measured with one core busy, D0 256x256 forward took 7.2 s per image
 *    instead of 0.22 s with a spin count of 2000. The short spin costs nothing measurable on an
 *    idle machine.
 * Nothing is changed where the user set these variables (or OMP_WAIT_POLICY) already. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/blas_setup.h"

char *openblas_get_corename(void);

void cpu_blas_setup(char **argv)
{
    if (getenv("EFFDET_REEXEC")) return;
    int changed = 0;
    if (!getenv("OPENBLAS_CORETYPE")) {
        const char *core = openblas_get_corename();
        int generic = !core || !strcmp(core, "Prescott") || !strcmp(core, "Core2") ||
                      !strcmp(core, "Nehalem") || !strcmp(core, "Unknown");
        __builtin_cpu_init();
        if (generic && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
            setenv("OPENBLAS_CORETYPE", __builtin_cpu_supports("avx512f") ? "SkylakeX" : "Haswell", 1);
            changed = 1;
        }
    }
    if (!getenv("GOMP_SPINCOUNT") && !getenv("OMP_WAIT_POLICY")) {
        setenv("GOMP_SPINCOUNT", "2000", 1);
        changed = 1;
    }
    if (!changed) return;
    setenv("EFFDET_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): run on with the libraries' defaults, correct but slower. */
}
