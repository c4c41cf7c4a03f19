/* zmq_util.h: ZeroMQ sockets the way every effdet process uses them, and the private run
 * directory their ipc:// endpoints live in.
 *
 * Errors follow the ZeroMQ guide: every call is checked. EAGAIN (a timeout) and EINTR (a signal)
 * are not errors but ZMQ_UTIL_AGAIN, so that a loop can check its stop flag and go on; ETERM (the
 * context is being terminated) is ZMQ_UTIL_TERM, the end of the loop. Anything else is -1 with one
 * line in err naming the endpoint and the call: "ipc:///run/user/1000/effdet-x/eval.sock: bind:
 * Address already in use".
 *
 * One message is one frame (msgpack, shared/wire.h); a multi-part message is refused as malformed
 * (ZMQ_UTIL_MULTIPART: its parts are drained, so the socket stays usable).
 *
 * Run directory: rundir_create makes DIR/effdet-<pid>-XXXXXX with mode 0700 under $XDG_RUNTIME_DIR (or
 * $TMPDIR, or /tmp), so only this user can reach the sockets; rundir_endpoint names a socket in
 * it; rundir_remove deletes its files and itself. ipc:// paths are limited to 107 bytes by the
 * kernel (sun_path), so long directories are refused up front rather than failing at bind. */
#ifndef EFFDET_ZMQ_UTIL_H
#define EFFDET_ZMQ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "shared/err.h"

enum {
    ZMQ_UTIL_AGAIN = 1, /* timed out or interrupted: check flags and call again */
    ZMQ_UTIL_TERM = 2,  /* the context is terminating: leave the loop */
    ZMQ_UTIL_MULTIPART = 3, /* zmq_util_recv: a multi-part message arrived (drained; err says) */
    ZMQ_UTIL_SOCKET_READY = 1, /* zmq_util_poll's ready bits */
    ZMQ_UTIL_FD_READY = 2,
    ZMQ_UTIL_ENDPOINT_CAP = 256,
    RUNDIR_CAP = 108, /* sun_path: a directory must leave room for socket names */
    ZMQ_UTIL_ID_CAP = 255, /* ROUTER routing ids */
};

typedef struct ZmqSocket {
    void *sock;                            /* NULL when closed */
    char endpoint[ZMQ_UTIL_ENDPOINT_CAP]; /* for messages */
} ZmqSocket;

typedef struct ZmqSocketConfig {
    int type;              /* ZMQ_PUSH, ZMQ_PULL, ... */
    int64_t max_msg_bytes; /* ZMQ_MAXMSGSIZE: a peer sending more is disconnected */
    int linger_ms;         /* ZMQ_LINGER: how long closing waits to deliver what is queued */
    int hwm;               /* ZMQ_SNDHWM and ZMQ_RCVHWM; 0 keeps ZeroMQ's 1000 */
} ZmqSocketConfig;

/* A context, or NULL with err set. */
void *zmq_util_ctx_new(Err *err);
/* Terminates ctx after every socket is closed (retries on EINTR); NULL is fine. */
void zmq_util_ctx_term(void *ctx);

/* A socket of cfg's type bound to / connected to endpoint, options set. On error zs is closed. */
int zmq_util_bind(ZmqSocket *zs, void *ctx, const ZmqSocketConfig *cfg, const char *endpoint,
                  Err *err);
int zmq_util_connect(ZmqSocket *zs, void *ctx, const ZmqSocketConfig *cfg, const char *endpoint,
                     Err *err);
void zmq_util_close(ZmqSocket *zs); /* idempotent */

/* Waits up to timeout_ms (-1: forever) until zs has a message (or, for a sending socket, room:
 * events is ZMQ_POLLIN or ZMQ_POLLOUT) or fd (-1: none) is readable; *ready gets the
 * ZMQ_UTIL_*_READY bits. 0, ZMQ_UTIL_AGAIN (timeout or signal: *ready is 0), ZMQ_UTIL_TERM or
 * -1. */
int zmq_util_poll(ZmqSocket *zs, short events, int fd, int timeout_ms, int *ready, Err *err);
/* Sends one frame, waiting up to timeout_ms for room. 0, ZMQ_UTIL_AGAIN (not sent), TERM, -1. */
int zmq_util_send(ZmqSocket *zs, const void *data, size_t len, int timeout_ms, Err *err);
/* Receives one frame into msg (initialized here; close it with zmq_msg_close after use, whatever
 * the result), waiting up to timeout_ms (0: one non-blocking try). 0, ZMQ_UTIL_AGAIN, ZMQ_UTIL_TERM, ZMQ_UTIL_MULTIPART
 * (malformed input, not a socket failure) or -1. */
int zmq_util_recv(ZmqSocket *zs, zmq_msg_t *msg, int timeout_ms, Err *err);

/* ROUTER sockets: every message is [peer routing id][one frame]. The id is at most
 * ZMQ_UTIL_ID_CAP bytes (ZeroMQ's own limit is 255). router_recv reads one such message without
 * waiting: 0 with id/msg set (close msg whatever the result), ZMQ_UTIL_AGAIN when none is waiting,
 * ZMQ_UTIL_MULTIPART for any other framing (drained; err says), TERM or -1. router_send sends one
 * frame to id without waiting: a peer that is gone or full loses the message (ROUTER's rule), which
 * the stage protocol (shared/stage.h) recovers from. */
int zmq_util_router_recv(ZmqSocket *zs, uint8_t id[ZMQ_UTIL_ID_CAP], size_t *id_len,
                         zmq_msg_t *msg, Err *err);
int zmq_util_router_send(ZmqSocket *zs, const uint8_t *id, size_t id_len, const void *data,
                         size_t len, Err *err);

/* Creates the run directory (mode 0700) into dir. */
int rundir_create(char dir[RUNDIR_CAP], Err *err);
/* "ipc://DIR/NAME" into out (ZMQ_UTIL_ENDPOINT_CAP bytes); errors if the path is too long for
 * a Unix socket. */
int rundir_endpoint(const char *dir, const char *name, char out[ZMQ_UTIL_ENDPOINT_CAP], Err *err);
/* Removes the files in dir and dir itself; a missing dir is fine. */
int rundir_remove(const char *dir, Err *err);
/* Removes this user's run directories (effdet-<pid>-XXXXXX) whose process no longer exists (it
 * was killed before it could clean up); returns how many, or -1. */
int rundir_remove_stale(Err *err);

#endif
