/* graph.cu: CUDA graphs (record a context's work once, replay it with one launch) and pinned host
 * memory, the CUDA backend's graph_* and host_* ops (kernels/ops.h).
 *
 * Why graphs: at batch 1, D0's forward pass is about 400 small kernels, each costing a few
 * microseconds of launch on the host; a graph launches them all with one call. The ops queue
 * everything on ctx->stream, bind cuDNN to it and take scratch from buffers fixed at plan time,
 * so a forward pass recorded by stream capture replays the same work on the same memory.
 *
 * Capture mode: cudaStreamCaptureModeThreadLocal. Calls that are unsafe during a capture (an
 * allocation, a wait) are refused when this thread makes them, which is where our ops run, so a
 * misbehaving op invalidates the capture and graph_end reports it; other threads of the process
 * (another context, a data thread) are left alone, which Global mode would not do.
 *
 * EFFDET_SYNC_CHECK=1 makes every op wait for the stream (CUDA_OP_END), and a capturing stream
 * refuses waits. Nothing runs while recording, so there is nothing to wait for: the check is off
 * from graph_begin to graph_end and applies to graph_launch instead, which waits after the
 * replay so a fault inside a graph is reported at its launch.
 *
 * A graph holds the pointers it recorded. The workspace is the one buffer the context itself may
 * move (workspace_reserve grows it); each slot remembers the workspace it was recorded with, and
 * graph_launch refuses to replay over a freed one. The caller owns the rest (see ops.h).
 *
 * Errors of these calls come from the machine or from the caller's sequence (a capture that
 * failed, a slot never filled), so they travel up through Err; the runtime's last error is
 * cleared on every failure path, as ops_cuda.cu does, so no later launch check blames an
 * innocent kernel. */
#include <string.h>

#include "kernels/cuda/cuda_common.cuh"

enum { GRAPH_SLOTS = 4 }; /* ops.h documents ids 0 to 3 */

struct CudaGraphs {
    int capturing;                      /* between a successful graph_begin and its graph_end */
    int sync_check;                     /* ctx->sync_check before the capture, restored after */
    cudaGraphExec_t exec[GRAPH_SLOTS];  /* NULL: empty slot */
    const void *workspace[GRAPH_SLOTS]; /* ctx->workspace when the slot's graph was recorded */
};

/* Fills err with "what: runtime message", clears the runtime's last error and returns -1. */
static int graph_fail(Err *err, cudaError_t rc, const char *what)
{
    (void)cudaGetLastError();
    return err_set(err, "cuda backend: %s: %s", what, cudaGetErrorString(rc));
}

static int graph_slot_check(int id, const char *op, Err *err)
{
    if (id < 0 || id >= GRAPH_SLOTS)
        return err_set(err, "cuda backend: %s: graph slot %d does not exist (0 to %d)", op, id,
                       GRAPH_SLOTS - 1);
    return 0;
}

/* Ends the capture in progress (if any) and restores the sync check: *graph gets the recording,
 * or NULL when the capture failed (rc says why). */
static cudaError_t graph_stop_capture(OpsCtx *ctx, cudaGraph_t *graph)
{
    CudaGraphs *g = ctx->graphs;
    *graph = NULL;
    cudaError_t rc = cudaStreamEndCapture(ctx->stream, graph);
    g->capturing = 0;
    ctx->sync_check = g->sync_check;
    if (rc != cudaSuccess && *graph) {
        CUDA_CHECK(cudaGraphDestroy(*graph));
        *graph = NULL;
    }
    return rc;
}

int cuda__graph_begin(OpsCtx *ctx, Err *err)
{
    if (!ctx->graphs) {
        ctx->graphs = (CudaGraphs *)calloc(1, sizeof *ctx->graphs);
        if (!ctx->graphs) return err_set(err, "cuda backend: out of host memory for graphs");
    }
    CudaGraphs *g = ctx->graphs;
    if (g->capturing) return err_set(err, "cuda backend: graph_begin: a capture is in progress");
    cudaError_t rc = cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal);
    if (rc != cudaSuccess) return graph_fail(err, rc, "starting a graph capture");
    g->capturing = 1;
    g->sync_check = ctx->sync_check;
    ctx->sync_check = 0;
    return 0;
}

int cuda__graph_end(OpsCtx *ctx, int id, Err *err)
{
    CudaGraphs *g = ctx->graphs;
    if (!g || !g->capturing) return err_set(err, "cuda backend: graph_end without graph_begin");
    cudaGraph_t graph;
    cudaError_t rc = graph_stop_capture(ctx, &graph);
    if (rc != cudaSuccess)
        return graph_fail(err, rc, "the graph capture failed (an op waited or allocated while "
                                   "recording)");
    if (graph_slot_check(id, "graph_end", err) < 0) {
        CUDA_CHECK(cudaGraphDestroy(graph));
        return -1;
    }
    cudaGraphExec_t exec = NULL;
    rc = cudaGraphInstantiate(&exec, graph, 0);
    CUDA_CHECK(cudaGraphDestroy(graph)); /* the executable graph keeps what it needs */
    if (rc != cudaSuccess) return graph_fail(err, rc, "instantiating the captured graph");
    /* An older graph may still run on the stream; the runtime frees it when it completes. */
    if (g->exec[id]) CUDA_CHECK(cudaGraphExecDestroy(g->exec[id]));
    g->exec[id] = exec;
    g->workspace[id] = ctx->workspace;
    return 0;
}

int cuda__graph_launch(OpsCtx *ctx, int id, Err *err)
{
    if (graph_slot_check(id, "graph_launch", err) < 0) return -1;
    CudaGraphs *g = ctx->graphs;
    if (g && g->capturing) return err_set(err, "cuda backend: graph_launch during a capture");
    if (!g || !g->exec[id]) return err_set(err, "cuda backend: graph slot %d holds no graph", id);
    if (g->workspace[id] != ctx->workspace)
        return err_set(err, "cuda backend: graph slot %d was recorded with a workspace that has "
                            "since been replaced (workspace_reserve grew it): record it again",
                       id);
    cudaError_t rc = cudaGraphLaunch(g->exec[id], ctx->stream);
    if (rc != cudaSuccess) return graph_fail(err, rc, "launching a graph");
    CUDA_OP_END(ctx);
    return 0;
}

void cuda__graph_ctx_free(OpsCtx *ctx)
{
    CudaGraphs *g = ctx->graphs;
    if (!g) return;
    if (g->capturing) { /* abandoned mid-capture (an error path): end it, drop the recording */
        cudaGraph_t graph;
        if (graph_stop_capture(ctx, &graph) == cudaSuccess) CUDA_CHECK(cudaGraphDestroy(graph));
        (void)cudaGetLastError();
    }
    for (int i = 0; i < GRAPH_SLOTS; i++)
        if (g->exec[i]) CUDA_CHECK(cudaGraphExecDestroy(g->exec[i]));
    free(g);
    ctx->graphs = NULL;
}

/* ---- pinned host memory -------------------------------------------------------------------------- */

int cuda__host_register(OpsCtx *ctx, void *p, size_t bytes, Err *err)
{
    if (!p || !bytes)
        return err_set(err, "cuda backend: host_register: nothing to register (%zu bytes at %p)",
                       bytes, p);
    /* The default registration lets the device read and write the memory; a read-only mapping
     * (a consumer's view of a shared-memory segment) cannot be pinned for writing, so it is
     * registered read-only where the device supports that, which is all an upload needs. */
    cudaError_t rc = cudaHostRegister(p, bytes, cudaHostRegisterDefault);
    if (rc == cudaSuccess) return 0;
    if (rc == cudaErrorHostMemoryAlreadyRegistered)
        return graph_fail(err, rc, "host_register: the memory is registered already");
    (void)cudaGetLastError();
    int read_only = 0;
    cudaError_t rc_attr = cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported,
                                                 ctx->device);
    if (rc_attr != cudaSuccess) (void)cudaGetLastError();
    if (rc_attr == cudaSuccess && read_only)
        rc = cudaHostRegister(p, bytes, cudaHostRegisterReadOnly);
    if (rc == cudaSuccess) return 0;
    char what[96];
    snprintf(what, sizeof what, "cannot pin %zu bytes of host memory (cudaHostRegister)", bytes);
    return graph_fail(err, rc, what);
}

void cuda__host_unregister(OpsCtx *ctx, void *p)
{
    if (!p) return;
    /* Uploads from p may still be queued: they read it until they complete. */
    CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    CUDA_CHECK(cudaHostUnregister(p));
}
