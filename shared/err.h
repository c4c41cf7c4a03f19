/* err.h: errors about outside bytes travel up to main as a code plus one line of text.
 *
 * A function that reads files, messages or flags takes an `Err *` and returns 0 on success or -1
 * after filling it with one line that names the thing (file, tensor, field) and what is wrong.
 * main prints that line and exits non-zero; nothing below main prints or exits for such errors. */
#ifndef EFFDET_ERR_H
#define EFFDET_ERR_H

#include <stdarg.h>

typedef struct Err {
    char msg[1024];
} Err;

/* Fills err (when non-NULL) and returns -1, so callers can write `return err_set(err, ...)`. */
int err_set(Err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the existing message with more context ("loading X: " + old message); returns -1. */
int err_wrap(Err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
