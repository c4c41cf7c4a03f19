/* cli.h: small helpers shared by the effdet subcommands: strict number and size parsing, and
 * the one-line error exit every command uses for bad input. */
#ifndef EFFDET_CLI_H
#define EFFDET_CLI_H

#include "shared/err.h"

/* An integer in [min, max]; err names the flag. */
int cli_parse_int(const char *flag, const char *s, long min, long max, long *out, Err *err);
int cli_parse_float(const char *flag, const char *s, double min, double max, double *out, Err *err);
/* "HxW" (or a single number N for NxN), each in [1, 16384]. */
int cli_parse_hw(const char *flag, const char *s, int *h, int *w, Err *err);
/* Prints "effdet CMD: message" to stderr and returns the exit status 1. */
int cli_fail(const char *cmd, const Err *err);
/* Prints a usage line to stderr and returns 2. */
int cli_usage(const char *usage);

#endif
