/* comm.h: collective communication between the data-parallel training ranks.
 *
 * A `Comm` is one rank's handle on a group of `world` ranks. The collectives are sums over ranks,
 * in place; every rank adds the contributions in rank order 0..world-1, so every rank gets
 * bit-identical results and the ranks' weights never drift apart. Any wait longer than the
 * group's timeout fails with an error naming the ranks that did not arrive; after a failure the
 * handle is broken and every later collective fails at once (the coordinator stops the group).
 *
 * `Comm` holds a table of function pointers, as `Ops` does, so that another implementation (NCCL,
 * over device memory) can sit beside the shared-memory one (worker/comm_shm.c) without the callers
 * knowing which runs. */
#ifndef EFFDET_COMM_H
#define EFFDET_COMM_H

#include <stddef.h>

#include "shared/err.h"

enum { COMM_MAX_WORLD = 64 };

typedef struct Comm Comm;

typedef struct CommVtbl {
    const char *name; /* "shm" */
    int (*allreduce_f32)(Comm *c, float *data, size_t n, Err *err);
    int (*allreduce_f64)(Comm *c, double *v, size_t n, Err *err);
    void (*close)(Comm *c);
} CommVtbl;

/* The part every implementation starts with (an implementation's struct embeds it first). */
struct Comm {
    const CommVtbl *vt;
    int rank, world;
    int device_memory; /* 1: allreduce_f32 takes device memory; 0: host memory only */
};

/* Opens rank `rank` of `world` on the POSIX shared-memory object `name` ("/effdet-<pid>-comm-<n>",
 * chosen by the coordinator, which unlinks it at the end). Rank 0 creates it (O_EXCL; an existing
 * one is removed first), the others wait up to timeout_ms for it to appear, complete. max_floats:
 * the largest comm_allreduce_f32 done in one piece (larger ones go in pieces). Every rank then
 * waits (up to timeout_ms) for all the others to join. A wait (any collective) longer than
 * timeout_ms fails with an error naming the rank(s) that did not arrive, never hangs forever; a
 * peer whose process has exited is reported as soon as it is noticed. world 1 needs no peer and
 * its collectives copy nothing. */
Comm *comm_shm_open(const char *name, int rank, int world, size_t max_floats, int timeout_ms,
                    Err *err);

/* NULL fine; rank 0 unlinks the shared-memory name. */
static inline void comm_close(Comm *c)
{
    if (c) c->vt->close(c);
}
static inline int comm_rank(const Comm *c) { return c->rank; }
static inline int comm_world(const Comm *c) { return c->world; }

/* Sum over ranks, in place, in rank order (bit-identical on every rank). data is backend memory
 * (host memory for the CPU backend; see Comm.device_memory). */
static inline int comm_allreduce_f32(Comm *c, float *data, size_t n, Err *err)
{
    return c->vt->allreduce_f32(c, data, n, err);
}
/* The same over host doubles (small values: counts, losses, batch-norm sums). */
static inline int comm_allreduce_f64(Comm *c, double *v, size_t n, Err *err)
{
    return c->vt->allreduce_f64(c, v, n, err);
}

#endif
