/* flags.h: strict parsing of the process mains' flag values (effdet-loader, effdet-augment,
 * effdet-evaluator), and their one usage-error line. A value with trailing text, out of range or
 * overflowing is refused: "12x" is not 12. */
#ifndef EFFDET_FLAGS_H
#define EFFDET_FLAGS_H

#include <stdint.h>

/* 0 and *v set when s is an integer in [min, max]; -1 otherwise. */
int flags_long(const char *s, long min, long max, long *v);
int flags_double(const char *s, double min, double max, double *v);
int flags_u64(const char *s, uint64_t *v);
/* "HxW" or "N" (N x N), each side in [1, 16384]. */
int flags_hw(const char *s, int *h, int *w);
/* Prints "PROG: WHAT (USAGE)" to stderr and returns 2, the exit status of a usage error. */
int flags_usage_error(const char *prog, const char *usage, const char *what);

#endif
