/* comm_shm.c: the shared-memory implementation of comm.h, for ranks on one machine.
 *
 * DESIGN
 * The segment is one POSIX shared-memory object:
 *
 *   [header, 4096 bytes][world f64 slots of COMM_F64_SLOT doubles][world f32 slots of slot_floats]
 *
 * An allreduce copies the rank's values into its own slot, meets the others at a barrier, sums
 * slots 0..world-1 (in that order, so every rank computes the same bits) into its own buffer, and
 * meets them at a second barrier, so that nobody refills a slot another rank is still reading.
 * Values larger than a slot go in slot-sized pieces.
 *
 * The barrier is an arrival counter and a generation number, C11 atomics in the header. The last
 * rank to arrive resets the counter, advances the generation and wakes the others with
 * FUTEX_WAKE; the others sleep in FUTEX_WAIT on the generation. The ranks run OpenMP compute on
 * few cores, so spinning would steal the core from the very rank being waited for; the waits are
 * short slices (WAIT_SLICE_MS) so a waiter can check its deadline and whether the ranks it waits
 * for still live. Each rank also writes the number of the barrier it has reached into its own
 * header word, so a timeout can name the ranks that did not arrive.
 *
 * A failure (timeout, dead peer, mismatched sizes) leaves the counter in an unknown state, so the
 * handle is marked broken and every later call fails at once: the coordinator stops all ranks when
 * one fails, and a new group gets a new segment.
 *
 * Rank 0 creates the segment (O_EXCL after removing a stale one of the same name, which can only
 * be left by a killed process whose pid was reused: the coordinator's names carry its pid), fills
 * the header and publishes it with a release store of `ready`; the others open it by name, check
 * its size and header against their own arguments, and then every rank meets the others at a
 * first barrier, so a rank that never starts is reported by open. */
#include "worker/comm.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SHM_COMM_MAGIC 0x6d6f632d74646665ULL /* "efdt-com" */
enum {
    SHM_COMM_VERSION = 1,
    SHM_COMM_READY = 0x52454459u,
    HEADER_BYTES = 4096,
    COMM_F64_SLOT = 16384,  /* doubles per rank: two sums of the widest BN layer (8192) */
    SLOT_ALIGN_FLOATS = 1024, /* f32 slots start on page boundaries */
    WAIT_SLICE_MS = 20,
    SUM_BLOCK = 4096,       /* elements summed per block, so each pass over a slot vectorizes */
};

typedef struct ShmCommHeader {
    uint64_t magic;
    uint32_t version, world;
    uint64_t slot_floats, bytes;
    _Atomic uint32_t ready;                   /* SHM_COMM_READY once the header is complete */
    _Atomic uint32_t count;                   /* ranks arrived at the current barrier */
    _Atomic uint32_t gen;                     /* barriers completed; the futex word */
    _Atomic uint32_t arrived[COMM_MAX_WORLD]; /* number of the barrier each rank last reached */
    _Atomic int32_t pid[COMM_MAX_WORLD];      /* each rank's process, once it has joined */
    _Atomic uint64_t n[COMM_MAX_WORLD];       /* each rank's values in the current piece */
} ShmCommHeader;

_Static_assert(sizeof(ShmCommHeader) <= HEADER_BYTES, "the comm header outgrew its page");

typedef struct ShmComm {
    Comm base; /* first: a Comm * is a ShmComm * */
    char name[64];
    int timeout_ms;
    int fd;
    uint8_t *map;
    size_t bytes;
    ShmCommHeader *hdr;
    double *f64;        /* world slots of COMM_F64_SLOT */
    float *f32;         /* world slots of slot_floats */
    size_t slot_floats;
    uint32_t barriers;  /* barriers this rank has passed */
    int broken;
} ShmComm;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Shared (not FUTEX_PRIVATE): the word lives in memory mapped by several processes. */
static void futex_wait(_Atomic uint32_t *word, uint32_t expected, int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static int fail(ShmComm *s, Err *err, const char *fmt, const char *detail)
{
    s->broken = 1;
    return err_set(err, "comm %s: rank %d of %d: %s%s", s->name, s->base.rank, s->base.world, fmt,
                   detail);
}

/* "1, 3" (the ranks that have not reached barrier `no`) into out; also says which of them are
 * known to have exited. Returns 1 when one has exited. */
static int missing_ranks(const ShmComm *s, uint32_t no, char *out, size_t cap)
{
    int dead = 0;
    size_t len = 0;
    out[0] = '\0';
    for (int r = 0; r < s->base.world && len + 1 < cap; r++) {
        if (atomic_load(&s->hdr->arrived[r]) >= no) continue;
        int32_t pid = atomic_load(&s->hdr->pid[r]);
        int gone = pid > 0 && kill(pid, 0) != 0 && errno == ESRCH;
        dead |= gone;
        int w = snprintf(out + len, cap - len, "%s%d%s", len ? ", " : "", r,
                         gone ? " (its process has exited)" : pid > 0 ? "" : " (never joined)");
        len += w > 0 ? (size_t)w : 0;
    }
    return dead;
}

/* Waits until every rank has arrived here; see DESIGN. `what` names the collective. */
static int shm_barrier(ShmComm *s, const char *what, Err *err)
{
    ShmCommHeader *h = s->hdr;
    const int world = s->base.world;
    const uint32_t no = s->barriers + 1;
    /* Read before arriving: the generation cannot move until this rank has arrived. */
    const uint32_t gen = atomic_load(&h->gen);
    atomic_store(&h->arrived[s->base.rank], no);
    if (atomic_fetch_add(&h->count, 1) + 1 == (uint32_t)world) {
        atomic_store(&h->count, 0); /* before the generation moves: nobody arrives again sooner */
        atomic_fetch_add(&h->gen, 1);
        futex_wake_all(&h->gen);
    } else {
        const double start = now_ms();
        while (atomic_load(&h->gen) == gen) {
            char who[512], msg[640];
            int dead = missing_ranks(s, no, who, sizeof who);
            double waited = now_ms() - start;
            if (dead || waited >= s->timeout_ms) {
                snprintf(msg, sizeof msg, "%s after %.0f ms, waiting for rank(s) %s", what, waited,
                         who);
                return fail(s, err, dead ? "peer lost in " : "timed out in ", msg);
            }
            futex_wait(&h->gen, gen, WAIT_SLICE_MS);
        }
    }
    s->barriers = no;
    return 0;
}

/* First barrier of a piece: also checks that every rank reduces as many values, which catches
 * ranks whose sequences of collectives went apart (a bug, or data that differs in shape). */
static int shm_arrive_piece(ShmComm *s, size_t n, const char *what, Err *err)
{
    atomic_store(&s->hdr->n[s->base.rank], (uint64_t)n);
    if (shm_barrier(s, what, err) != 0) return -1;
    for (int r = 0; r < s->base.world; r++) {
        uint64_t nr = atomic_load(&s->hdr->n[r]);
        if (nr != n) {
            char msg[160];
            snprintf(msg, sizeof msg, "%s of %zu values, rank %d gave %llu", what, n, r,
                     (unsigned long long)nr);
            return fail(s, err, "mismatched ", msg);
        }
    }
    return 0;
}

static int shm_allreduce_f32(Comm *c, float *data, size_t n, Err *err)
{
    ShmComm *s = (ShmComm *)c;
    if (s->broken) return fail(s, err, "unusable after an earlier failure", "");
    if (c->world == 1 || n == 0) return 0; /* n is the same on every rank */
    const int world = c->world;
    for (size_t off = 0; off < n; off += s->slot_floats) {
        const size_t k = n - off < s->slot_floats ? n - off : s->slot_floats;
        float *out = data + off;
        memcpy(s->f32 + (size_t)c->rank * s->slot_floats, out, k * sizeof(float));
        if (shm_arrive_piece(s, k, "allreduce_f32", err) != 0) return -1;
#pragma omp parallel for schedule(static) if (k >= 8 * SUM_BLOCK)
        for (size_t b = 0; b < k; b += SUM_BLOCK) {
            const size_t e = k - b < SUM_BLOCK ? k - b : SUM_BLOCK;
            const float *s0 = s->f32 + b;
            for (size_t i = 0; i < e; i++) out[b + i] = s0[i];
            for (int r = 1; r < world; r++) {
                const float *sr = s->f32 + (size_t)r * s->slot_floats + b;
                for (size_t i = 0; i < e; i++) out[b + i] += sr[i];
            }
        }
        if (shm_barrier(s, "allreduce_f32 (done reading)", err) != 0) return -1;
    }
    return 0;
}

static int shm_allreduce_f64(Comm *c, double *v, size_t n, Err *err)
{
    ShmComm *s = (ShmComm *)c;
    if (s->broken) return fail(s, err, "unusable after an earlier failure", "");
    if (c->world == 1 || n == 0) return 0;
    for (size_t off = 0; off < n; off += COMM_F64_SLOT) {
        const size_t k = n - off < COMM_F64_SLOT ? n - off : COMM_F64_SLOT;
        memcpy(s->f64 + (size_t)c->rank * COMM_F64_SLOT, v + off, k * sizeof(double));
        if (shm_arrive_piece(s, k, "allreduce_f64", err) != 0) return -1;
        for (size_t i = 0; i < k; i++) {
            double acc = s->f64[i];
            for (int r = 1; r < c->world; r++) acc += s->f64[(size_t)r * COMM_F64_SLOT + i];
            v[off + i] = acc;
        }
        if (shm_barrier(s, "allreduce_f64 (done reading)", err) != 0) return -1;
    }
    return 0;
}

static void shm_close(Comm *c)
{
    ShmComm *s = (ShmComm *)c;
    if (s->map) {
        /* A stale mapping of this name must never look ready to a later group. */
        if (c->rank == 0) atomic_store(&s->hdr->ready, 0);
        munmap(s->map, s->bytes);
    }
    if (s->fd >= 0) close(s->fd);
    if (c->rank == 0 && s->fd >= 0) shm_unlink(s->name);
    free(s);
}

static const CommVtbl shm_vtbl = {
    .name = "shm",
    .allreduce_f32 = shm_allreduce_f32,
    .allreduce_f64 = shm_allreduce_f64,
    .close = shm_close,
};

/* Rank 0: a fresh segment with its header filled and published. */
static int shm_create(ShmComm *s, Err *err)
{
    if (shm_unlink(s->name) == 0) fprintf(stderr, "comm %s: removed a stale segment\n", s->name);
    s->fd = shm_open(s->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (s->fd < 0) return err_set(err, "comm %s: shm_open: %s", s->name, strerror(errno));
    /* Reserve the memory now, so a full /dev/shm is this error rather than a SIGBUS later. */
    int rc = posix_fallocate(s->fd, 0, (off_t)s->bytes);
    if (rc != 0)
        return err_set(err, "comm %s: cannot reserve %zu bytes: %s", s->name, s->bytes, strerror(rc));
    s->map = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
    if (s->map == MAP_FAILED) {
        s->map = NULL;
        return err_set(err, "comm %s: mmap: %s", s->name, strerror(errno));
    }
    ShmCommHeader *h = (ShmCommHeader *)s->map;
    h->magic = SHM_COMM_MAGIC, h->version = SHM_COMM_VERSION, h->world = (uint32_t)s->base.world;
    h->slot_floats = s->slot_floats, h->bytes = s->bytes;
    atomic_store_explicit(&h->ready, SHM_COMM_READY, memory_order_release);
    return 0;
}

/* Other ranks: wait for rank 0's segment to appear with the expected size and a complete header. */
static int shm_attach(ShmComm *s, Err *err)
{
    const double deadline = now_ms() + s->timeout_ms;
    for (;; sleep_ms(WAIT_SLICE_MS)) {
        if (now_ms() >= deadline)
            return err_set(err, "comm %s: rank %d of %d: timed out after %d ms waiting for rank 0 "
                                "to create the segment", s->name, s->base.rank, s->base.world,
                           s->timeout_ms);
        if (s->fd < 0) s->fd = shm_open(s->name, O_RDWR, 0);
        if (s->fd < 0) {
            if (errno == ENOENT) continue;
            return err_set(err, "comm %s: shm_open: %s", s->name, strerror(errno));
        }
        struct stat st;
        if (fstat(s->fd, &st) != 0) return err_set(err, "comm %s: fstat: %s", s->name, strerror(errno));
        if (st.st_size == 0) continue; /* created, not yet sized */
        if ((size_t)st.st_size != s->bytes)
            return err_set(err, "comm %s: the segment has %lld bytes, not %zu: another world or "
                                "max_floats than rank %d's", s->name, (long long)st.st_size,
                           s->bytes, s->base.rank);
        if (!s->map) {
            s->map = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
            if (s->map == MAP_FAILED) {
                s->map = NULL;
                return err_set(err, "comm %s: mmap: %s", s->name, strerror(errno));
            }
        }
        ShmCommHeader *h = (ShmCommHeader *)s->map;
        if (atomic_load_explicit(&h->ready, memory_order_acquire) != SHM_COMM_READY) continue;
        if (h->magic != SHM_COMM_MAGIC || h->version != SHM_COMM_VERSION ||
            h->world != (uint32_t)s->base.world || h->slot_floats != s->slot_floats)
            return err_set(err, "comm %s: the segment is not a comm of world %d (magic %llx, "
                                "version %u, world %u)", s->name, s->base.world,
                           (unsigned long long)h->magic, h->version, h->world);
        return 0;
    }
}

Comm *comm_shm_open(const char *name, int rank, int world, size_t max_floats, int timeout_ms,
                    Err *err)
{
    if (!name || name[0] != '/' || strchr(name + 1, '/') || strlen(name) >= 64)
        return err_set(err, "comm: bad shared-memory name '%s' (one '/' then up to 62 characters)",
                       name ? name : "(null)"), NULL;
    if (world < 1 || world > COMM_MAX_WORLD || rank < 0 || rank >= world || timeout_ms <= 0)
        return err_set(err, "comm %s: bad rank %d of world %d (1..%d ranks) or timeout %d ms",
                       name, rank, world, COMM_MAX_WORLD, timeout_ms), NULL;
    ShmComm *s = calloc(1, sizeof *s);
    if (!s) return err_set(err, "comm %s: out of memory", name), NULL;
    s->base = (Comm){.vt = &shm_vtbl, .rank = rank, .world = world, .device_memory = 0};
    snprintf(s->name, sizeof s->name, "%s", name);
    s->timeout_ms = timeout_ms;
    s->fd = -1;
    /* world 1 reduces nothing, so its segment is the header alone. */
    size_t f64_floats = world > 1 ? (size_t)COMM_F64_SLOT * 2 : 0;
    size_t want = max_floats ? max_floats : 1;
    s->slot_floats = world > 1 ? (want + SLOT_ALIGN_FLOATS - 1) / SLOT_ALIGN_FLOATS * SLOT_ALIGN_FLOATS : 1;
    s->bytes = HEADER_BYTES + (size_t)world * (f64_floats + (world > 1 ? s->slot_floats : 0)) * sizeof(float);
    int rc = rank == 0 ? shm_create(s, err) : shm_attach(s, err);
    if (rc == 0) {
        s->hdr = (ShmCommHeader *)s->map;
        s->f64 = (double *)(s->map + HEADER_BYTES);
        s->f32 = (float *)(s->map + HEADER_BYTES + (size_t)world * f64_floats * sizeof(float));
        atomic_store(&s->hdr->pid[rank], (int32_t)getpid());
        rc = shm_barrier(s, "joining", err);
    }
    if (rc != 0) {
        shm_close(&s->base);
        return NULL;
    }
    return &s->base;
}
