/* comm_nccl.cu: the NCCL communicator of worker/comm.h over a CUDA context's device memory, the op
 * table's comm_open (kernels/ops.h). Compiled in where the Makefile found NCCL (EFFDET_HAVE_NCCL);
 * elsewhere this file is empty and the table's comm_open is NULL.
 *
 * DESIGN
 * One process per GPU, each with its own context. Opening: rank 0 makes NCCL's unique id, and the
 * host communicator given as `bootstrap` (comm_shm) carries its 128 bytes to the others as a sum
 * of doubles to which only rank 0 contributes (a byte is exact in a double and x + 0 is x). The
 * same sum carries a count of ranks and a count of ranks that failed to prepare, so a local
 * failure (no memory, no unique id) fails every rank at once instead of leaving them waiting.
 *
 * Sums: allreduce_f32 is one ncclAllReduce in place on the context's stream, so it comes after the
 * backward pass that wrote the gradients and before the optimizer that reads them. NCCL's
 * algorithms reduce each element once and broadcast the result, so every rank gets the same bits,
 * as comm.h requires; the order of the terms is NCCL's rather than rank order, so the bits may
 * differ in the last place from what the shared-memory communicator would give. allreduce_f64
 * (host doubles) goes through a device staging buffer made at open, in pieces of its size.
 *
 * Waits: the communicator is non-blocking (config.blocking = 0), so no NCCL call waits for the
 * peers; every wait is a poll here, of ncclCommGetAsyncError and of an event recorded after the
 * collective, bounded by the timeout given at open. A collective returns only once it has
 * completed: that is where a peer that never arrives is noticed, and it costs nothing, since the
 * trainer downloads the gradients' norm right after the sum. The clock starts when the work queued
 * before the collective has finished, so a long backward pass does not count against the peers.
 * On a timeout or an error the NCCL communicator is aborted at once (its kernels return, so the
 * stream drains and the context stays usable for the caller's cleanup) and the handle is broken:
 * every later call fails at once, as comm_shm's do. */
#ifdef EFFDET_HAVE_NCCL

#include <string.h>
#include <time.h>

#include <nccl.h>

#include "kernels/cuda/cuda_common.cuh"

extern "C" {
#include "worker/comm.h"
}

enum {
    STAGE_DOUBLES = 16384, /* allreduce_f64's device staging, as comm_shm's f64 slot */
    POLL_US = 50,          /* between polls: a gradient sum takes about a millisecond */
    ID_DOUBLES = NCCL_UNIQUE_ID_BYTES,
    EXCHANGE_DOUBLES = ID_DOUBLES + 2, /* the id, then the rank count, then the failed count */
};

typedef struct NcclComm {
    Comm base;          /* first: a Comm * is an NcclComm * */
    cudaStream_t stream; /* the context's: collectives are ordered with its ops */
    int device;
    int timeout_ms;
    ncclComm_t nccl;    /* NULL once aborted */
    double *stage;      /* device, STAGE_DOUBLES */
    cudaEvent_t ready;  /* recorded before a collective: the work it waits behind is done */
    cudaEvent_t done;   /* recorded after it */
    int broken;
} NcclComm;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void sleep_poll(void)
{
    struct timespec ts = {0, POLL_US * 1000L};
    nanosleep(&ts, NULL);
}

/* Breaks the handle (aborting NCCL's side, see DESIGN) and fills err; returns -1. */
static int nc_fail(NcclComm *c, Err *err, const char *what, const char *detail)
{
    if (c->nccl) ncclCommAbort(c->nccl);
    c->nccl = NULL;
    c->broken = 1;
    (void)cudaGetLastError(); /* not left for the next op's launch check to report */
    return err_set(err, "comm nccl: rank %d of %d on cuda:%d: %s: %s", c->base.rank, c->base.world,
                   c->device, what, detail);
}

static int nc_fail_nccl(NcclComm *c, Err *err, const char *what, ncclResult_t rc)
{
    char detail[600];
    const char *last = ncclGetLastError(c->nccl); /* NCCL's detail; NULL comm is allowed */
    snprintf(detail, sizeof detail, "%s%s%s%s", ncclGetErrorString(rc), last && last[0] ? " (" : "",
             last && last[0] ? last : "", last && last[0] ? ")" : "");
    return nc_fail(c, err, what, detail);
}

static int nc_fail_cuda(NcclComm *c, Err *err, const char *what, cudaError_t rc)
{
    return nc_fail(c, err, what, cudaGetErrorString(rc));
}

static int nc_timeout(NcclComm *c, Err *err, const char *what, double waited)
{
    char detail[160];
    snprintf(detail, sizeof detail, "timed out after %.0f ms (a peer rank did not arrive or has "
             "exited)", waited);
    return nc_fail(c, err, what, detail);
}

/* Waits until NCCL has finished the call just made on the communicator (non-blocking calls may
 * return ncclInProgress, and nothing else may touch the communicator or its stream before the
 * state is ncclSuccess). `issued` is the call's own return. */
static int nc_settle(NcclComm *c, ncclResult_t issued, const char *what, Err *err)
{
    if (issued != ncclSuccess && issued != ncclInProgress) return nc_fail_nccl(c, err, what, issued);
    const double start = now_ms();
    for (;;) {
        ncclResult_t state = ncclInProgress;
        ncclResult_t rc = ncclCommGetAsyncError(c->nccl, &state);
        if (rc != ncclSuccess) return nc_fail_nccl(c, err, what, rc);
        if (state == ncclSuccess) return 0;
        if (state != ncclInProgress) return nc_fail_nccl(c, err, what, state);
        double waited = now_ms() - start;
        if (waited >= c->timeout_ms) return nc_timeout(c, err, what, waited);
        sleep_poll();
    }
}

/* Issues one in-place sum of n values at p on the stream and waits for its completion (DESIGN). */
static int nc_allreduce(NcclComm *c, void *p, size_t n, ncclDataType_t type, const char *what,
                        Err *err)
{
    cudaError_t crc = cudaEventRecord(c->ready, c->stream);
    if (crc != cudaSuccess) return nc_fail_cuda(c, err, what, crc);
    ncclResult_t rc = ncclAllReduce(p, p, n, type, ncclSum, c->nccl, c->stream);
    if (nc_settle(c, rc, what, err) != 0) return -1;
    crc = cudaEventRecord(c->done, c->stream);
    if (crc != cudaSuccess) return nc_fail_cuda(c, err, what, crc);
    double start = -1.0; /* when the work before the collective was done */
    for (;;) {
        crc = cudaEventQuery(c->done);
        if (crc == cudaSuccess) return 0;
        if (crc != cudaErrorNotReady) return nc_fail_cuda(c, err, what, crc);
        /* A peer's failure (a closed connection) shows here before any timeout. */
        ncclResult_t state = ncclSuccess;
        rc = ncclCommGetAsyncError(c->nccl, &state);
        if (rc != ncclSuccess) return nc_fail_nccl(c, err, what, rc);
        if (state != ncclSuccess && state != ncclInProgress) return nc_fail_nccl(c, err, what, state);
        if (start < 0) {
            crc = cudaEventQuery(c->ready);
            if (crc == cudaSuccess) start = now_ms();
            else if (crc != cudaErrorNotReady) return nc_fail_cuda(c, err, what, crc);
        } else if (now_ms() - start >= c->timeout_ms) {
            return nc_timeout(c, err, what, now_ms() - start);
        }
        sleep_poll();
    }
}

static int nccl_allreduce_f32(Comm *base, float *data, size_t n, Err *err)
{
    NcclComm *c = (NcclComm *)base;
    if (c->broken) return nc_fail(c, err, "allreduce_f32", "unusable after an earlier failure");
    if (n == 0) return 0; /* n is the same on every rank */
    return nc_allreduce(c, data, n, ncclFloat, "allreduce_f32", err);
}

static int nccl_allreduce_f64(Comm *base, double *v, size_t n, Err *err)
{
    NcclComm *c = (NcclComm *)base;
    const char *what = "allreduce_f64";
    if (c->broken) return nc_fail(c, err, what, "unusable after an earlier failure");
    for (size_t off = 0; off < n; off += STAGE_DOUBLES) {
        const size_t k = n - off < STAGE_DOUBLES ? n - off : STAGE_DOUBLES;
        cudaError_t crc = cudaMemcpyAsync(c->stage, v + off, k * sizeof(double),
                                          cudaMemcpyHostToDevice, c->stream);
        if (crc != cudaSuccess) return nc_fail_cuda(c, err, what, crc);
        if (nc_allreduce(c, c->stage, k, ncclDouble, what, err) != 0) return -1;
        /* The sum is complete, so this copy cannot wait on the peers. */
        crc = cudaMemcpyAsync(v + off, c->stage, k * sizeof(double), cudaMemcpyDeviceToHost,
                              c->stream);
        if (crc == cudaSuccess) crc = cudaStreamSynchronize(c->stream);
        if (crc != cudaSuccess) return nc_fail_cuda(c, err, what, crc);
    }
    return 0;
}

/* Must come before the context is destroyed (ops.h). A healthy communicator is finalized (its
 * operations flushed, within the timeout) and destroyed; a broken one was aborted already. */
static void nccl_close(Comm *base)
{
    NcclComm *c = (NcclComm *)base;
    if (c->nccl) {
        Err err;
        if (nc_settle(c, ncclCommFinalize(c->nccl), "closing", &err) == 0) {
            ncclResult_t rc = ncclCommDestroy(c->nccl);
            if (rc != ncclSuccess)
                fprintf(stderr, "comm nccl: rank %d: ncclCommDestroy: %s\n", c->base.rank,
                        ncclGetErrorString(rc));
        } else {
            fprintf(stderr, "%s\n", err.msg); /* nc_settle aborted it */
        }
        c->nccl = NULL;
    }
    if (c->done) CUDA_CHECK(cudaEventDestroy(c->done));
    if (c->ready) CUDA_CHECK(cudaEventDestroy(c->ready));
    if (c->stage) CUDA_CHECK(cudaFree(c->stage));
    free(c);
}

static const CommVtbl nccl_vtbl = {
    .name = "nccl",
    .allreduce_f32 = nccl_allreduce_f32,
    .allreduce_f64 = nccl_allreduce_f64,
    .close = nccl_close,
};

/* What can fail on this rank alone, done before the exchange so that the exchange can tell the
 * others: the staging buffer, the events, and on rank 0 the unique id. */
static int nc_prepare(NcclComm *c, ncclUniqueId *id, Err *err)
{
    cudaError_t crc = cudaSetDevice(c->device); /* NCCL takes the current device */
    if (crc == cudaSuccess) crc = cudaMalloc((void **)&c->stage, STAGE_DOUBLES * sizeof(double));
    if (crc != cudaSuccess) c->stage = NULL;
    if (crc == cudaSuccess) crc = cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming);
    if (crc == cudaSuccess) crc = cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming);
    if (crc != cudaSuccess) return nc_fail_cuda(c, err, "preparing", crc);
    if (c->base.rank == 0) {
        ncclResult_t rc = ncclGetUniqueId(id);
        if (rc != ncclSuccess) return nc_fail_nccl(c, err, "ncclGetUniqueId", rc);
    }
    return 0;
}

/* Sends rank 0's unique id to every rank through the bootstrap (DESIGN). `prepared` is this
 * rank's nc_prepare result; every rank takes part either way, so that none is left waiting. */
static int nc_exchange(NcclComm *c, Comm *boot, ncclUniqueId *id, int prepared, Err *err)
{
    double v[EXCHANGE_DOUBLES] = {0};
    for (int i = 0; i < ID_DOUBLES && c->base.rank == 0; i++)
        v[i] = (double)(unsigned char)id->internal[i];
    v[ID_DOUBLES] = 1.0;
    v[ID_DOUBLES + 1] = prepared == 0 ? 0.0 : 1.0;
    Err berr;
    if (comm_allreduce_f64(boot, v, EXCHANGE_DOUBLES, &berr) != 0) {
        if (prepared != 0) return -1; /* err says why this rank failed, which matters more */
        return nc_fail(c, err, "passing the unique id through the bootstrap", berr.msg);
    }
    if (prepared != 0) return -1;
    char detail[160];
    if (v[ID_DOUBLES] != c->base.world) {
        snprintf(detail, sizeof detail, "%g ranks took part, not %d", v[ID_DOUBLES], c->base.world);
        return nc_fail(c, err, "passing the unique id", detail);
    }
    if (v[ID_DOUBLES + 1] != 0.0) {
        snprintf(detail, sizeof detail, "%g other rank(s) failed to prepare (each says why)",
                 v[ID_DOUBLES + 1]);
        return nc_fail(c, err, "opening", detail);
    }
    for (int i = 0; i < ID_DOUBLES; i++) {
        if (!(v[i] >= 0.0 && v[i] <= 255.0 && v[i] == (double)(int)v[i]))
            return nc_fail(c, err, "passing the unique id", "a byte arrived damaged");
        id->internal[i] = (char)(unsigned char)(int)v[i];
    }
    return 0;
}

extern "C" Comm *cuda__comm_open(OpsCtx *ctx, Comm *bootstrap, int timeout_ms, Err *err)
{
    if (!bootstrap || bootstrap->device_memory)
        return err_set(err, "comm nccl: the bootstrap must be a host communicator (comm_shm), not "
                            "%s", bootstrap ? bootstrap->vt->name : "NULL"), nullptr;
    if (timeout_ms <= 0) return err_set(err, "comm nccl: bad timeout %d ms", timeout_ms), nullptr;
    NcclComm *c = (NcclComm *)calloc(1, sizeof *c);
    if (!c) return err_set(err, "comm nccl: out of host memory"), nullptr;
    c->base.vt = &nccl_vtbl;
    c->base.rank = bootstrap->rank, c->base.world = bootstrap->world;
    c->base.device_memory = 1;
    c->stream = ctx->stream, c->device = ctx->device, c->timeout_ms = timeout_ms;

    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    int prepared = nc_prepare(c, &id, err);
    if (nc_exchange(c, bootstrap, &id, prepared, err) != 0) {
        nccl_close(&c->base);
        return NULL;
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0; /* every wait is ours, with a timeout (DESIGN) */
    ncclResult_t rc = ncclCommInitRankConfig(&c->nccl, c->base.world, id, c->base.rank, &config);
    if (nc_settle(c, rc, "ncclCommInitRankConfig", err) != 0) {
        nccl_close(&c->base);
        return NULL;
    }
    return &c->base;
}

#endif /* EFFDET_HAVE_NCCL */
