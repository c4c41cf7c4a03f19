/* check.h: error checks that end the process, for programmer errors and device-library failures.
 *
 * Outside bytes (files, messages, flags) never reach these: they return an error through Err (err.h)
 * up to main, which prints one line and exits non-zero. These macros are for invariants and for
 * library calls whose failure leaves nothing sensible to do (CUDA, cuDNN, cuBLAS, NCCL).
 * ASSERT is never compiled out and never holds a call with effects. */
#ifndef EFFDET_CHECK_H
#define EFFDET_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define ASSERT(x)                                                                                \
    do {                                                                                         \
        if (!(x)) {                                                                              \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #x);           \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

/* One generic check: expr is evaluated once, compared with ok, and strfn turns the code into text. */
#define CHECK_GEN(expr, ok, strfn)                                                               \
    do {                                                                                         \
        __typeof__(expr) check_rc_ = (expr);                                                     \
        if (check_rc_ != (ok)) {                                                                 \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, strfn(check_rc_));     \
            exit(EXIT_FAILURE);                                                                  \
        }                                                                                        \
    } while (0)

#endif
