/* zmq_util.c: ZeroMQ socket helpers and the run directory (see zmq_util.h).
 *
 * Timeouts are done with zmq_poll before a non-blocking send or receive, not with ZMQ_SNDTIMEO /
 * ZMQ_RCVTIMEO: one socket then serves calls with different timeouts, and the same poll can also
 * watch a file descriptor (a process's signal self-pipe) so that a signal ends a wait at once. */
#include "shared/zmq_util.h"

#include <dirent.h>
#include <signal.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/log.h"

/* What errno means for a loop: AGAIN, TERM, or -1 with "ENDPOINT: CALL: text" in err. */
static int zu_errno(const ZmqSocket *zs, const char *call, Err *err)
{
    int e = errno;
    if (e == EAGAIN || e == EINTR) return ZMQ_UTIL_AGAIN;
    if (e == ETERM) return ZMQ_UTIL_TERM;
    return err_set(err, "%s: %s: %s", zs->endpoint, call, zmq_strerror(e));
}

void *zmq_util_ctx_new(Err *err)
{
    void *ctx = zmq_ctx_new();
    if (!ctx) err_set(err, "zmq_ctx_new: %s", zmq_strerror(errno));
    return ctx;
}

void zmq_util_ctx_term(void *ctx)
{
    if (!ctx) return;
    while (zmq_ctx_term(ctx) != 0) {
        if (errno == EINTR) continue; /* a signal during linger: keep waiting */
        log_error("zmq_ctx_term: %s", zmq_strerror(errno));
        return;
    }
}

void zmq_util_close(ZmqSocket *zs)
{
    if (!zs->sock) return;
    if (zmq_close(zs->sock) != 0) log_error("%s: zmq_close: %s", zs->endpoint, zmq_strerror(errno));
    zs->sock = NULL;
}

/* A socket of cfg->type with cfg's options, endpoint remembered for messages. */
static int zu_open(ZmqSocket *zs, void *ctx, const ZmqSocketConfig *cfg, const char *endpoint,
                   Err *err)
{
    memset(zs, 0, sizeof *zs);
    if (strlen(endpoint) >= sizeof zs->endpoint)
        return err_set(err, "%.64s...: endpoint longer than %zu bytes", endpoint,
                       sizeof zs->endpoint - 1);
    strcpy(zs->endpoint, endpoint);
    if (!(zs->sock = zmq_socket(ctx, cfg->type)))
        return err_set(err, "%s: zmq_socket: %s", zs->endpoint, zmq_strerror(errno));
    struct { int opt; const void *val; size_t len; const char *name; } opts[] = {
        {ZMQ_MAXMSGSIZE, &cfg->max_msg_bytes, sizeof cfg->max_msg_bytes, "ZMQ_MAXMSGSIZE"},
        {ZMQ_LINGER, &cfg->linger_ms, sizeof cfg->linger_ms, "ZMQ_LINGER"},
        {ZMQ_SNDHWM, &cfg->hwm, sizeof cfg->hwm, "ZMQ_SNDHWM"},
        {ZMQ_RCVHWM, &cfg->hwm, sizeof cfg->hwm, "ZMQ_RCVHWM"},
    };
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        if (cfg->hwm == 0 && (opts[i].opt == ZMQ_SNDHWM || opts[i].opt == ZMQ_RCVHWM)) continue;
        if (zmq_setsockopt(zs->sock, opts[i].opt, opts[i].val, opts[i].len) != 0) {
            err_set(err, "%s: zmq_setsockopt %s: %s", zs->endpoint, opts[i].name,
                    zmq_strerror(errno));
            zmq_util_close(zs);
            return -1;
        }
    }
    return 0;
}

/* Errors of socket setup are never control flow: any failure closes the socket. */
static int zu_setup_failed(ZmqSocket *zs, const char *call, Err *err)
{
    err_set(err, "%s: %s: %s", zs->endpoint, call, zmq_strerror(errno));
    zmq_util_close(zs);
    return -1;
}

int zmq_util_bind(ZmqSocket *zs, void *ctx, const ZmqSocketConfig *cfg, const char *endpoint,
                  Err *err)
{
    if (zu_open(zs, ctx, cfg, endpoint, err)) return -1;
    if (zmq_bind(zs->sock, endpoint) != 0) return zu_setup_failed(zs, "bind", err);
    return 0;
}

int zmq_util_connect(ZmqSocket *zs, void *ctx, const ZmqSocketConfig *cfg, const char *endpoint,
                     Err *err)
{
    if (zu_open(zs, ctx, cfg, endpoint, err)) return -1;
    if (zmq_connect(zs->sock, endpoint) != 0) return zu_setup_failed(zs, "connect", err);
    return 0;
}

int zmq_util_poll(ZmqSocket *zs, short events, int fd, int timeout_ms, int *ready, Err *err)
{
    zmq_pollitem_t items[2] = {{.socket = zs->sock, .events = events},
                               {.fd = fd, .events = ZMQ_POLLIN}};
    *ready = 0;
    int rc = zmq_poll(items, fd >= 0 ? 2 : 1, timeout_ms);
    if (rc < 0) return zu_errno(zs, "zmq_poll", err);
    if (items[0].revents & events) *ready |= ZMQ_UTIL_SOCKET_READY;
    if (fd >= 0 && (items[1].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) *ready |= ZMQ_UTIL_FD_READY;
    return *ready ? 0 : ZMQ_UTIL_AGAIN;
}

int zmq_util_send(ZmqSocket *zs, const void *data, size_t len, int timeout_ms, Err *err)
{
    int ready, rc = zmq_util_poll(zs, ZMQ_POLLOUT, -1, timeout_ms, &ready, err);
    if (rc) return rc;
    if (zmq_send(zs->sock, data, len, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "send", err);
    return 0;
}

/* Reads and drops the rest of a message whose framing is wrong (parts: read so far). The parts of
 * a multi-part message arrive together, so this never waits. */
static int zu_drain(ZmqSocket *zs, zmq_msg_t *msg, size_t parts, const char *expected, Err *err)
{
    while (zmq_msg_more(msg)) {
        if (zmq_msg_close(msg) != 0 || zmq_msg_init(msg) != 0)
            return err_set(err, "%s: zmq_msg_close: %s", zs->endpoint, zmq_strerror(errno));
        if (zmq_msg_recv(msg, zs->sock, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "recv", err);
        parts++;
    }
    err_set(err, "%s: a message of %zu parts, expected %s", zs->endpoint, parts, expected);
    return ZMQ_UTIL_MULTIPART;
}

int zmq_util_recv(ZmqSocket *zs, zmq_msg_t *msg, int timeout_ms, Err *err)
{
    int ready, rc;
    if (zmq_msg_init(msg) != 0)
        return err_set(err, "%s: zmq_msg_init: %s", zs->endpoint, zmq_strerror(errno));
    /* timeout 0: one non-blocking try, without a poll (the stage client drains its sockets so) */
    if (timeout_ms != 0 && (rc = zmq_util_poll(zs, ZMQ_POLLIN, -1, timeout_ms, &ready, err)))
        return rc;
    if (zmq_msg_recv(msg, zs->sock, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "recv", err);
    return zmq_msg_more(msg) ? zu_drain(zs, msg, 1, "1", err) : 0;
}

/* ---- ROUTER framing ---------------------------------------------------------------------------- */

static const char ROUTER_FRAMING[] = "a routing id and 1 frame";

int zmq_util_router_recv(ZmqSocket *zs, uint8_t id[ZMQ_UTIL_ID_CAP], size_t *id_len,
                         zmq_msg_t *msg, Err *err)
{
    if (zmq_msg_init(msg) != 0)
        return err_set(err, "%s: zmq_msg_init: %s", zs->endpoint, zmq_strerror(errno));
    if (zmq_msg_recv(msg, zs->sock, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "recv", err);
    /* ROUTER always prepends the id frame, so a lone frame cannot happen; check anyway. */
    if (!zmq_msg_more(msg) || zmq_msg_size(msg) > ZMQ_UTIL_ID_CAP)
        return zu_drain(zs, msg, 1, ROUTER_FRAMING, err);
    *id_len = zmq_msg_size(msg);
    memcpy(id, zmq_msg_data(msg), *id_len);
    if (zmq_msg_close(msg) != 0 || zmq_msg_init(msg) != 0)
        return err_set(err, "%s: zmq_msg_close: %s", zs->endpoint, zmq_strerror(errno));
    if (zmq_msg_recv(msg, zs->sock, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "recv", err);
    if (zmq_msg_more(msg)) return zu_drain(zs, msg, 2, ROUTER_FRAMING, err);
    return 0;
}

int zmq_util_router_send(ZmqSocket *zs, const uint8_t *id, size_t id_len, const void *data,
                         size_t len, Err *err)
{
    if (zmq_send(zs->sock, id, id_len, ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0)
        return zu_errno(zs, "send", err);
    if (zmq_send(zs->sock, data, len, ZMQ_DONTWAIT) < 0) return zu_errno(zs, "send", err);
    return 0;
}

/* ---- the run directory ----------------------------------------------------------------------- */

/* The base directory of run directories: $XDG_RUNTIME_DIR, else $TMPDIR, else /tmp. */
static const char *rundir_base(void)
{
    const char *bases[] = {getenv("XDG_RUNTIME_DIR"), getenv("TMPDIR"), "/tmp"};
    struct stat st;
    for (size_t i = 0; i < 3; i++)
        if (bases[i] && bases[i][0] && stat(bases[i], &st) == 0 && S_ISDIR(st.st_mode) &&
            access(bases[i], W_OK | X_OK) == 0)
            return bases[i];
    return NULL;
}

int rundir_create(char dir[RUNDIR_CAP], Err *err)
{
    /* Room left for "/<name>.sock" names of up to 27 bytes inside the 107-byte socket path. */
    enum { NAME_ROOM = 28 };
    const char *base = rundir_base();
    if (!base) return err_set(err, "run directory: no writable $XDG_RUNTIME_DIR, $TMPDIR or /tmp");
    /* The pid in the name lets rundir_remove_stale find the directories of dead processes. */
    int n = snprintf(dir, RUNDIR_CAP, "%s/effdet-%ld-XXXXXX", base, (long)getpid());
    if (n < 0 || n >= RUNDIR_CAP - NAME_ROOM)
        return err_set(err, "run directory: %s is too long for Unix socket paths (%d bytes at "
                            "most)", base, RUNDIR_CAP - NAME_ROOM - 23);
    if (!mkdtemp(dir)) /* mode 0700: only this user reaches the sockets */
        return err_set(err, "run directory: mkdtemp %s: %s", dir, strerror(errno));
    return 0;
}

int rundir_remove_stale(Err *err)
{
    const char *base = rundir_base();
    DIR *d = base ? opendir(base) : NULL;
    if (!d) return 0;
    int removed = 0, rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid;
        char rest[16], path[RUNDIR_CAP];
        struct stat st;
        if (sscanf(e->d_name, "effdet-%ld-%15s", &pid, rest) != 2 || strlen(rest) != 6 ||
            pid <= 0 || (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
            continue;
        if (snprintf(path, sizeof path, "%s/%s", base, e->d_name) >= (int)sizeof path ||
            lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid())
            continue;
        if (rundir_remove(path, err) == 0) removed++;
        else rc = -1;
    }
    closedir(d);
    return rc < 0 ? -1 : removed;
}

int rundir_endpoint(const char *dir, const char *name, char out[ZMQ_UTIL_ENDPOINT_CAP], Err *err)
{
    int n = snprintf(out, ZMQ_UTIL_ENDPOINT_CAP, "ipc://%s/%s", dir, name);
    if (n < 0 || (size_t)n - strlen("ipc://") >= RUNDIR_CAP)
        return err_set(err, "%s/%s: longer than a Unix socket path allows (%d bytes)", dir, name,
                       RUNDIR_CAP - 1);
    return 0;
}

int rundir_remove(const char *dir, Err *err)
{
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? 0 : err_set(err, "%s: %s", dir, strerror(errno));
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT && rc == 0)
            rc = err_set(err, "%s/%s: %s", dir, e->d_name, strerror(errno));
    }
    if (closedir(d) != 0 && rc == 0) rc = err_set(err, "%s: %s", dir, strerror(errno));
    if (rc == 0 && rmdir(dir) != 0 && errno != ENOENT)
        rc = err_set(err, "%s: %s", dir, strerror(errno));
    return rc;
}
