/* file_read.h: a whole file into memory, for the parsers of outside bytes (COCO JSON, JPEG). */
#ifndef EFFDET_FILE_READ_H
#define EFFDET_FILE_READ_H

#include <stddef.h>

#include "shared/err.h"

/* Reads path to its end into *data (malloc'ed, one spare byte past *len; free() it). Reads until
 * EOF rather than trusting the size, so pipes and files that grow work too. Errors are one line
 * "PATH: strerror" (missing, unreadable, a directory: EISDIR), or "PATH: more than MAX bytes". */
int file_read_all(const char *path, size_t max_bytes, char **data, size_t *len, Err *err);

#endif
