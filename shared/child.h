/* child.h: starting the programs of a pipeline: where they are, their command lines, and the one
 * way they are forked, shared by launch/data_pipeline.c (the data stages of `effdet batches` and
 * the benchmarks) and the coordinator (every process of a training run). */
#ifndef EFFDET_CHILD_H
#define EFFDET_CHILD_H

#include <stddef.h>
#include <sys/types.h>

#include "shared/err.h"

enum { ARGV_BUF_MAX = 128, ARGV_BUF_BYTES = 16384 };

/* A command line under construction: each argument is formatted into buf. When buf or argv has
 * no room, `full` is set and later adds do nothing, so the caller reports one error at the end. */
typedef struct ArgvBuf {
    char buf[ARGV_BUF_BYTES];
    size_t used;
    const char *argv[ARGV_BUF_MAX + 1]; /* NULL-terminated */
    int argc;
    int full;
} ArgvBuf;

void argv_buf_init(ArgvBuf *a);
void argv_buf_add(ArgvBuf *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The path of DIR/effdet-NAME beside the running program (checked executable), or with name NULL
 * of the running program itself. */
int child_program(const char *name, char *out, size_t cap, Err *err);

/* fork + exec rather than posix_spawn, for two settings the child needs before it runs: its own
 * process group (a Ctrl-C at the terminal reaches only the parent, which stops its children in
 * order, workers first so they can checkpoint) and SIGTERM when the parent dies (a parent killed
 * with -9 leaves no child running). Signals are blocked around the fork and the child starts with
 * default handlers and an empty mask (libuv's signal handling must not leak into it). The pid, or
 * -1 with err set. */
pid_t child_spawn(const char *const argv[], Err *err);

#endif
