/* blas_setup.h: call cpu_blas_setup(argv) first thing in main (see blas_setup.c). */
#ifndef EFFDET_BLAS_SETUP_H
#define EFFDET_BLAS_SETUP_H

void cpu_blas_setup(char **argv);

#endif
