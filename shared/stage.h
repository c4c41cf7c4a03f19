/* stage.h: the request/slot protocol between a pipeline stage and its consumers (loader -> augment,
 * augment -> worker), built so that a process that dies loses nothing and doubles nothing.
 *
 * DESIGN
 * - Pull, not push. A consumer (StageClient) asks producers (StageServer) for work by key; a
 *   producer computes the result into a slot of its shared-memory segment and answers with a
 *   message naming the slot; the consumer hands the slot back (credit) when it is done with it.
 *   The consumer therefore always knows what is outstanding where, which PUSH/PULL cannot tell
 *   (what was queued to a dead peer is silently lost). Keys are opaque 64-bit numbers chosen by
 *   the consumer, unique per need (never reused for another need).
 * - Sockets: each producer binds one ROUTER; a consumer has one DEALER per producer, so it picks
 *   the producer of every request and can re-issue to another one.
 * - Incarnations. Every process start draws a random 64-bit incarnation. Requests and credits name
 *   the producer incarnation they are meant for, and a producer ignores those naming another one,
 *   so a message queued before a restart can never free a slot or start work in the new process.
 *   A consumer that says hello with a new incarnation under an old name (it was restarted) gets
 *   its predecessor's slots released and queued requests dropped at once.
 * - Liveness. Both sides send a heartbeat every hb_ms when they have nothing else to say. A
 *   consumer that hears nothing from a producer for dead_ms declares it dead and moves its
 *   outstanding keys back to the front of the queue, for whichever producer has room first (the
 *   restarted one, or another). Messages are read before timeouts are judged, so a consumer busy
 *   for minutes (a training step) does not mistake its own silence for a producer's death.
 *   A producer answers a message from a consumer it does not know (or one addressed to another
 *   incarnation) with a heartbeat, so a consumer notices a restarted producer at its first
 *   message and says hello at once. Producers do not time consumers out (a worker may compute for long between calls); they
 *   release a consumer's slots when it is replaced (new incarnation) or when told by the
 *   coordinator.
 * - Room. A producer gets a request only while the requests outstanding there stay below the
 *   window and, with the results of it that the consumer still holds, below its slot count: a
 *   request it has no slot for would wait behind results the consumer keeps (out of order, for
 *   a key re-issued elsewhere) and never run.
 * - Exactly once. A result is accepted only for a key still outstanding; a late duplicate (from a
 *   producer declared dead too early, or a re-issued key answered twice) is credited back and
 *   dropped. Results of a dead producer's segment stay readable until released (the mapping
 *   outlives the producer).
 *
 * Messages (shared/wire.h maps; "inc" is always the sender's incarnation):
 *   consumer -> producer: hello {name, inc}; req {inc, to, key, + request fields};
 *                         credit {inc, to, slot}; hb {inc}
 *   producer -> consumer: welcome {inc, segment, slots, slot_bytes, + info fields};
 *                         done {inc, key, slot, + result fields}; fail {inc, key, error}; hb {inc}
 * ("to" is the producer incarnation a request or credit is meant for.)
 *
 * Stage reports (optional, producer -> whoever listens; StageServerConfig.report). A producer
 * with a report endpoint connects a PUSH socket there and sends, at start and then every
 * report_ms (default hb_ms), one map:
 *   stage_report {role str ("loader", "augment"), name str (its seg_tag: "loader0", "aug0"),
 *                 pid uint, inc uint (its incarnation), t_s f64 (seconds since it started),
 *                 done uint (results finished since start), failed uint,
 *                 items_per_result uint (images per result: 1 for a loader, the batch size for
 *                 an augmenter), busy_s f64 (seconds spent computing results since start),
 *                 queued uint (requests waiting), slots_busy uint (working or held),
 *                 slots_held uint (results delivered, not yet handed back), slots uint}
 * Its capacity is done * items_per_result / busy_s images per second per process, and
 * busy_s / t_s how much of its time it computes. busy_s is measured by the process itself
 * (stage_server_add_busy): a loader counts decoding a request, an augmenter transforming and
 * packing samples, not the time a batch waits for its loaders (several batches wait at once, so
 * wall time between next and finish would count one second several times). Reports never slow a
 * stage: the socket has a small high-water mark, linger 0 and non-blocking sends, so a missing or
 * slow listener only loses reports (each is a complete picture; counters are cumulative, so a lost
 * one costs nothing but resolution). A listener tells restarts apart by inc. slots_held of an
 * augmenter is the number of batches finished and not yet given back by the worker: its queue
 * (plus the batch it trains on). */
#ifndef EFFDET_STAGE_H
#define EFFDET_STAGE_H

#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "shared/err.h"
#include "shared/shm.h"
#include "shared/wire.h"
#include "shared/zmq_util.h"

enum {
    STAGE_NAME_CAP = 32,
    STAGE_ERROR_CAP = 512,
    STAGE_MAX_PEERS = 64,    /* producers per consumer */
    STAGE_MAX_CLIENTS = 64,  /* consumers per producer */
    STAGE_MAX_SEGMENTS = 256, /* segments a consumer keeps mapped (producer restarts included) */
    STAGE_HB_MS = 200,
    STAGE_DEAD_MS = 3000,
};

int64_t stage_now_ms(void);       /* CLOCK_MONOTONIC */
int64_t stage_now_ns(void);       /* CLOCK_MONOTONIC */
uint64_t stage_incarnation(void); /* random, never 0 */

/* ---- producer side ------------------------------------------------------------------------- */

typedef struct StageClientRec {
    uint8_t id[ZMQ_UTIL_ID_CAP];
    size_t id_len;
    char name[STAGE_NAME_CAP];
    uint64_t inc;
    int64_t last_sent_ms;
    int live;
} StageClientRec;

typedef struct StageQueued {
    int client;   /* index into clients */
    uint64_t inc; /* the client's incarnation when it asked */
    uint64_t key;
    zmq_msg_t msg; /* the request, kept to decode its fields when work starts */
} StageQueued;

typedef struct StageServerConfig {
    const char *endpoint;  /* bound */
    const char *seg_tag;   /* shared-memory segment tag ("loader0") */
    uint32_t n_slots;
    size_t slot_bytes;
    size_t queue_cap;      /* queued requests over all consumers */
    int hb_ms;
    WireLimits limits;
    /* The welcome's extra fields, packed into every welcome: n_info fields put by put_info. */
    uint32_t n_info;
    void (*put_info)(void *app, WireWriter *w);
    void *app;
    /* Stage reports (see the top of this file): the endpoint to connect to (NULL: none), the
     * role named in them, their period (0: hb_ms) and the images in one result (0: 1). */
    const char *report;
    const char *role;
    int report_ms;
    uint32_t items_per_result;
} StageServerConfig;

typedef enum { SLOT_FREE = 0, SLOT_WORKING, SLOT_HELD } StageSlotState;

typedef struct StageServer {
    StageServerConfig cfg;
    ZmqSocket sock;
    ShmSegment seg;
    uint64_t inc;
    StageClientRec clients[STAGE_MAX_CLIENTS];
    int n_clients;
    StageQueued *queue; /* (queue_cap) FIFO */
    size_t q_head, q_len;
    uint8_t *slot_state; /* (n_slots) StageSlotState */
    int *slot_client;    /* (n_slots) holder, -1 when free */
    uint64_t *slot_inc;  /* (n_slots) holder's incarnation */
    /* counters, for logs and tests */
    uint64_t n_done, n_failed, n_stale, n_malformed, n_released;
    /* reports: the socket (closed when cfg.report is NULL), start, last send, busy time */
    ZmqSocket report_sock;
    int64_t start_ns, last_report_ms;
    int64_t busy_ns;
    uint64_t n_reports, n_reports_dropped;
} StageServer;

/* One request being worked on: its slot is reserved until stage_server_finish or _fail. */
typedef struct StageTask {
    uint32_t slot;
    uint64_t key;
    int client;
    uint64_t client_inc;
    zmq_msg_t msg;
    WireMsg req; /* decoded request; its fields are the app's */
} StageTask;

int stage_server_init(StageServer *s, void *zctx, const StageServerConfig *cfg, Err *err);
void stage_server_free(StageServer *s); /* closes the socket, unlinks the segment; idempotent */

/* Handles every message waiting on the socket (hello, req, credit, hb) without blocking, and sends
 * heartbeats that are due. Malformed messages are counted and logged, never fatal. */
int stage_server_pump(StageServer *s, Err *err);
/* The oldest queued request of a live consumer when a slot is free: 1 and t filled (slot
 * reserved), 0 when there is none. */
int stage_server_next(StageServer *s, StageTask *t);
/* 1 while t's consumer is still the incarnation that asked (work for a replaced one can stop). */
int stage_server_task_live(const StageServer *s, const StageTask *t);
/* Starts the done message of t: key, slot and inc are put; the caller puts n_fields more, then
 * calls stage_server_finish. */
void stage_server_done_begin(StageServer *s, const StageTask *t, WireWriter *w, uint32_t n_fields);
/* Sends w (from done_begin) and frees t's message; the slot stays held until credited (or freed
 * at once if the consumer is gone). */
int stage_server_finish(StageServer *s, StageTask *t, WireWriter *w, Err *err);
/* Answers t with fail {key, error}, frees its slot. */
int stage_server_fail(StageServer *s, StageTask *t, const char *error, Err *err);
/* Releases every slot and request of the consumer called name (the coordinator saw it die). */
void stage_server_release_client(StageServer *s, const char *name);
/* Slots not free (working or held). */
uint32_t stage_server_busy(const StageServer *s);
/* Adds ns nanoseconds (stage_now_ns differences) of computing results to the reported busy_s. */
void stage_server_add_busy(StageServer *s, int64_t ns);
/* Sends a stage report now (stage_server_pump sends them when due); nothing without cfg.report.
 * A report the socket has no room for is dropped and counted, never waited for. */
void stage_server_report(StageServer *s);

/* ---- consumer side ------------------------------------------------------------------------- */

typedef struct StagePeer {
    ZmqSocket sock;
    uint64_t inc;    /* the latest producer incarnation that welcomed us; 0: none yet */
    int alive;       /* 0 before a welcome and after dead_ms of silence (until it speaks again) */
    int seg;         /* index into StageClient.segs of inc's segment, -1 before a welcome */
    uint32_t slots;  /* inc's slot count */
    uint32_t outstanding; /* requests sent and not answered */
    uint32_t held;   /* results of inc delivered and not yet released: they hold its slots */
    int64_t last_heard_ms, last_sent_ms, last_hello_ms;
    zmq_msg_t welcome_msg; /* the latest welcome, kept decoded for its info fields */
    WireMsg welcome;
    int has_welcome;
} StagePeer;

typedef enum { KEY_PENDING = 0, KEY_SENT } StageKeyState;

typedef struct StageKey {
    uint64_t key;
    int state;
    int peer; /* KEY_SENT: where */
} StageKey;

typedef struct StageClientConfig {
    const char *name;            /* stable across restarts ("aug0", "worker0") */
    const char *const *endpoints; /* n_peers producer endpoints */
    int n_peers;
    uint32_t window;             /* requests outstanding per producer */
    int hb_ms, dead_ms;
    WireLimits limits;
    /* Request fields besides inc, to, key: req_fields of them, put by put_req. */
    uint32_t req_fields;
    void (*put_req)(void *app, uint64_t key, WireWriter *w);
    void *app;
} StageClientConfig;

typedef struct StageClient {
    StageClientConfig cfg;
    uint64_t inc;
    StagePeer peers[STAGE_MAX_PEERS];
    ShmSegment segs[STAGE_MAX_SEGMENTS];
    int n_segs;
    StageKey *keys;   /* wanted and not yet delivered, in want order */
    size_t n_keys, keys_cap;
    uint64_t n_results, n_duplicates, n_reissued, n_malformed, n_peer_deaths;
} StageClient;

/* A delivered result: valid until stage_client_release. */
typedef struct StageResult {
    uint64_t key;
    int peer;
    uint64_t peer_inc;
    uint32_t slot;
    const ShmSegment *seg; /* the producer's segment, for wire_get_tensor_shm */
    zmq_msg_t msg;
    WireMsg done;          /* the done message; the result fields are the app's */
} StageResult;

int stage_client_init(StageClient *c, void *zctx, const StageClientConfig *cfg, Err *err);
void stage_client_free(StageClient *c); /* idempotent */

/* Appends key to the wanted keys (requested as producers have room). */
void stage_client_want(StageClient *c, uint64_t key);
/* Forgets a wanted key that is no longer needed (its result, if it comes, is credited back). */
void stage_client_cancel(StageClient *c, uint64_t key);
/* Wanted keys not yet delivered. */
size_t stage_client_pending(const StageClient *c);
/* 1 when a wanted key waits, some producer is alive, and none of them has room or work in
 * flight: only slots this consumer holds can unblock it (it holds results out of order while
 * waiting for one that a dead producer had). The caller must give a result back. */
int stage_client_stalled(const StageClient *c);

/* Distinct from ZMQ_UTIL_AGAIN and ZMQ_UTIL_TERM, which the same calls return. */
enum { STAGE_NONE = 0, STAGE_RESULT = 16, STAGE_EXTRA = 17, STAGE_FAILED = 18 };
/* Sends what can be sent, then waits up to timeout_ms (at most hb_ms, so heartbeats go out) for a
 * result or for extra (another socket of the caller, may be NULL) to be readable. STAGE_RESULT with
 * r filled, STAGE_FAILED (a producer answered fail for r->key, which is no longer wanted; err holds
 * its error line; r needs no release), STAGE_EXTRA, STAGE_NONE (timeout or signal),
 * ZMQ_UTIL_TERM, or -1 (a socket failed). */
int stage_client_poll(StageClient *c, void *extra, int timeout_ms, StageResult *r, Err *err);
/* Hands r's slot back to its producer (if that incarnation still lives) and frees r. */
void stage_client_release(StageClient *c, StageResult *r);

/* Producers welcomed now. */
int stage_client_live_peers(const StageClient *c);
/* The info fields of the first welcomed producer's welcome: 1 and *m set, 0 if none yet. The map
 * stays valid until the next stage_client_poll. */
int stage_client_info(const StageClient *c, WireMap *m);

#endif
