/* shm.c: POSIX shared-memory segments of equal slots (see shm.h).
 *
 * DESIGN. A segment is created by the one process that writes it and opened by the processes that
 * read it, which learn its name and geometry from a message. Everything a consumer is told is
 * outside bytes, so open re-checks it all before mapping: the name must look like one of ours
 * (no "/dev/shm/../" tricks, no other program's objects), the object must belong to this user,
 * and its size must be exactly the announced n_slots * slot_bytes, so that every later slot
 * reference is checked against the real mapping (shm_range_ok) and never faults.
 *
 * Creation reserves the memory up front (posix_fallocate) rather than only setting the size
 * (ftruncate): tmpfs allocates pages on first touch, and a full /dev/shm (64 MB in a default
 * Docker container) would otherwise be a SIGBUS in the middle of a write instead of one error
 * line at start.
 *
 * The only static state is the counter that makes names unique within the process. */
#include "shared/shm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/check.h"

#define SHM_DIR "/dev/shm"
#define SHM_FILE_PREFIX "effdet-"          /* the name of the object's file in SHM_DIR */
#define SHM_PREFIX "/" SHM_FILE_PREFIX     /* the name shm_open takes */

/* Names taken by segments that died with a process of the same pid are skipped, up to this many:
 * more means /dev/shm is full of leftovers, which shm_unlink_stale is for. */
enum { SHM_CREATE_TRIES = 1000 };

size_t shm_slot_round(size_t slot_bytes)
{
    ASSERT(slot_bytes <= SIZE_MAX - (SHM_ALIGN - 1));
    return (slot_bytes + SHM_ALIGN - 1) / SHM_ALIGN * SHM_ALIGN;
}

#define SHM_TAG_CHARS "abcdefghijklmnopqrstuvwxyz0123456789_"
#define SHM_NAME_CHARS SHM_TAG_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZ-"

/* Tags go into names and file names: [a-z0-9_]{1,23}. */
static int shm_tag_ok(const char *tag)
{
    size_t len = strlen(tag);
    return len > 0 && len < SHM_TAG_CAP && strspn(tag, SHM_TAG_CHARS) == len;
}

/* "/effdet-" then 1 or more of [A-Za-z0-9_-], shorter than SHM_NAME_CAP: one of our names, and
 * no '/' or "..", so it cannot reach outside /dev/shm. */
static int shm_name_ok(const char *name)
{
    size_t plen = strlen(SHM_PREFIX), len = strnlen(name, SHM_NAME_CAP);
    return len < SHM_NAME_CAP && len > plen && !strncmp(name, SHM_PREFIX, plen) &&
           strspn(name + plen, SHM_NAME_CHARS) == len - plen;
}

/* s cut to SHM_NAME_CAP bytes with every byte that is not printable ASCII replaced by '?', for
 * error lines about names and tags that failed their checks (they may come from a message). */
static const char *shm_printable(const char *s, char out[SHM_NAME_CAP])
{
    size_t n = strnlen(s, SHM_NAME_CAP - 1);
    for (size_t i = 0; i < n; i++) out[i] = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';
    out[n] = '\0';
    return out;
}

/* n_slots * slot_bytes into *bytes, checked against overflow and SHM_MAX_BYTES. `what` names the
 * segment (or its tag) in the error. */
static int shm_size(const char *what, uint32_t n_slots, size_t slot_bytes, size_t *bytes,
                    Err *err)
{
    if (n_slots == 0) return err_set(err, "shared memory %s: 0 slots, expected at least 1", what);
    if (slot_bytes == 0) return err_set(err, "shared memory %s: slots of 0 bytes", what);
    if (__builtin_mul_overflow((size_t)n_slots, slot_bytes, bytes) || *bytes > SHM_MAX_BYTES)
        return err_set(err, "shared memory %s: %u slots of %zu bytes is over the limit of %zu "
                            "bytes", what, n_slots, slot_bytes, SHM_MAX_BYTES);
    return 0;
}

/* Maps fd's bytes into s (prot as asked); the caller closes fd. */
static int shm_map(ShmSegment *s, int fd, int writable, Err *err)
{
    int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void *p = mmap(NULL, s->bytes, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return err_set(err, "shared memory %s: mmap of %zu bytes: %s", s->name, s->bytes,
                       strerror(errno));
    s->base = p;
    s->writable = writable;
    return 0;
}

/* Gives fd its mode and size. shm_open's mode passes through the umask, which can only take bits
 * away; fchmod makes it exactly 0600 whatever the umask. */
static int shm_shape(const ShmSegment *s, int fd, Err *err)
{
    if (fchmod(fd, 0600) != 0)
        return err_set(err, "shared memory %s: fchmod: %s", s->name, strerror(errno));
    if (ftruncate(fd, (off_t)s->bytes) != 0)
        return err_set(err, "shared memory %s: ftruncate to %zu bytes: %s", s->name, s->bytes,
                       strerror(errno));
    int rc = posix_fallocate(fd, 0, (off_t)s->bytes); /* returns the error, errno untouched */
    if (rc != 0)
        return err_set(err, "shared memory %s: reserving %zu bytes in " SHM_DIR ": %s", s->name,
                       s->bytes, strerror(rc));
    return 0;
}

int shm_segment_create(ShmSegment *s, const char *tag, uint32_t n_slots, size_t slot_bytes,
                       Err *err)
{
    static atomic_uint counter; /* unique names within this process, across threads */
    char text[SHM_NAME_CAP];
    memset(s, 0, sizeof *s);
    if (!shm_tag_ok(tag))
        return err_set(err, "shared memory tag '%s': expected 1 to %d of [a-z0-9_]",
                       shm_printable(tag, text), SHM_TAG_CAP - 1);
    if (slot_bytes > SHM_MAX_BYTES)
        return err_set(err, "shared memory %s: slots of %zu bytes are over the limit of %zu bytes",
                       tag, slot_bytes, SHM_MAX_BYTES);
    s->slot_bytes = shm_slot_round(slot_bytes);
    if (shm_size(tag, n_slots, s->slot_bytes, &s->bytes, err)) return -1;
    s->n_slots = n_slots;
    int fd = -1;
    for (int tries = 0; fd < 0; tries++) {
        unsigned n = atomic_fetch_add(&counter, 1);
        snprintf(s->name, sizeof s->name, SHM_PREFIX "%ld-%s-%u", (long)getpid(), tag, n);
        fd = shm_open(s->name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0 && (errno != EEXIST || tries + 1 == SHM_CREATE_TRIES)) {
            int e = errno;
            char name[SHM_NAME_CAP];
            memcpy(name, s->name, sizeof name);
            memset(s, 0, sizeof *s);
            return err_set(err, "shared memory %s: shm_open: %s", name, strerror(e));
        }
    }
    if (shm_shape(s, fd, err) || shm_map(s, fd, 1, err)) {
        shm_unlink(s->name);
        close(fd);
        memset(s, 0, sizeof *s);
        return -1;
    }
    close(fd); /* the mapping keeps the object alive */
    s->owner = 1;
    return 0;
}

int shm_segment_open(ShmSegment *s, const char *name, uint32_t n_slots, size_t slot_bytes,
                     int writable, Err *err)
{
    struct stat st;
    char text[SHM_NAME_CAP];
    memset(s, 0, sizeof *s);
    if (!shm_name_ok(name))
        return err_set(err, "shared memory '%s': not an effdet segment name ('" SHM_PREFIX
                            "' then [A-Za-z0-9_-], under %d bytes)", shm_printable(name, text),
                       SHM_NAME_CAP);
    if (slot_bytes % SHM_ALIGN != 0)
        return err_set(err, "shared memory %s: slots of %zu bytes, expected a multiple of %d",
                       name, slot_bytes, SHM_ALIGN);
    if (shm_size(name, n_slots, slot_bytes, &s->bytes, err)) return -1;
    strcpy(s->name, name);
    s->slot_bytes = slot_bytes, s->n_slots = n_slots;
    int fd = shm_open(name, writable ? O_RDWR : O_RDONLY, 0);
    if (fd < 0) {
        int e = errno;
        memset(s, 0, sizeof *s);
        return err_set(err, "shared memory %s: shm_open: %s", name, strerror(e));
    }
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = err_set(err, "shared memory %s: fstat: %s", name, strerror(errno));
    else if (st.st_uid != geteuid()) /* someone else's object could change under us */
        rc = err_set(err, "shared memory %s: owned by uid %ld, not this user (%ld)", name,
                     (long)st.st_uid, (long)geteuid());
    else if ((uint64_t)st.st_size != s->bytes)
        rc = err_set(err, "shared memory %s: %lld bytes, expected %u slots of %zu = %zu bytes",
                     name, (long long)st.st_size, n_slots, slot_bytes, s->bytes);
    else
        rc = shm_map(s, fd, writable != 0, err);
    close(fd);
    if (rc) memset(s, 0, sizeof *s);
    return rc;
}

void shm_segment_close(ShmSegment *s)
{
    if (s->base) {
        int rc = munmap(s->base, s->bytes); /* fails only for a corrupted struct */
        ASSERT(rc == 0);
    }
    /* shm_unlink can only fail because someone removed the name already (ENOENT) or put their
     * own object there (EPERM in the sticky /dev/shm): either way nothing of ours is left. */
    if (s->owner && s->name[0]) shm_unlink(s->name);
    memset(s, 0, sizeof *s);
}

uint8_t *shm_slot(const ShmSegment *s, uint32_t i)
{
    ASSERT(s->base && i < s->n_slots);
    return s->base + (size_t)i * s->slot_bytes;
}

/* Geometry only (not whether the segment is mapped), so writers can check references they are
 * about to send. */
int shm_range_ok(const ShmSegment *s, uint32_t slot, uint64_t offset, uint64_t bytes)
{
    return slot < s->n_slots && offset <= s->slot_bytes && bytes <= s->slot_bytes - offset;
}

/* The pid in "effdet-<pid>-...", or 0 when the name is not of that form. */
static long shm_name_pid(const char *file)
{
    size_t plen = strlen(SHM_FILE_PREFIX);
    long pid = 0;
    if (strncmp(file, SHM_FILE_PREFIX, plen)) return 0;
    const char *p = file + plen;
    for (; *p >= '0' && *p <= '9'; p++) {
        pid = pid * 10 + (*p - '0');
        if (pid > INT32_MAX) return 0;
    }
    return *p == '-' ? pid : 0;
}

int shm_unlink_stale(Err *err)
{
    DIR *d = opendir(SHM_DIR);
    if (!d) return err_set(err, SHM_DIR ": %s", strerror(errno));
    int removed = 0, rc = 0;
    struct dirent *e;
    struct stat st;
    while ((e = readdir(d))) {
        long pid = shm_name_pid(e->d_name);
        /* kill(pid, 0) fails with ESRCH only when no such process exists; a live process of
         * another user gives EPERM and keeps its segments. Pids are those of our pid namespace. */
        if (pid <= 0 || kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        /* Other users' leftovers are theirs to remove (the sticky /dev/shm refuses anyway). */
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_uid != geteuid())
            continue;
        char name[sizeof e->d_name + 1];
        snprintf(name, sizeof name, "/%s", e->d_name);
        if (shm_unlink(name) == 0)
            removed++;
        else if (errno != ENOENT && rc == 0) /* ENOENT: another process removed it first */
            rc = err_set(err, "shared memory %s: shm_unlink: %s", name, strerror(errno));
    }
    closedir(d);
    return rc ? rc : removed;
}
