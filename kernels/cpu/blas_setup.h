/* blas_setup.h: call cpu_blas_setup(argv) first thing in main (see blas_setup.c): it may
 * re-execute the program once with OPENBLAS_CORETYPE and GOMP_SPINCOUNT set. */
#ifndef EFFDET_BLAS_SETUP_H
#define EFFDET_BLAS_SETUP_H

void cpu_blas_setup(char **argv);

#endif
