/* test_shm.c: shared/shm.c, shared-memory segments of slots. A real child process writes a slot
 * that the parent reads; the object's mode is 0600 whatever the umask; a read-only open is mapped
 * read-only; wrong sizes, bad names and bad tags are refused with one line naming the segment;
 * closing unlinks (only for the owner); shm_unlink_stale removes what a dead process left and keeps
 * what live ones use; shm_range_ok at its edges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/shm.h"

static void create_ok(ShmSegment *s, const char *tag, uint32_t n_slots, size_t slot_bytes)
{
    Err err = {{0}};
    if (shm_segment_create(s, tag, n_slots, slot_bytes, &err)) fail_msg("%s", err.msg);
}

/* The call must fail with a one-line error containing want. */
#define EXPECT_SHM_ERROR(call, want)                                                             \
    do {                                                                                         \
        Err err_ = {{0}};                                                                        \
        Err *err = &err_;                                                                        \
        if ((call) == 0) fail_msg("%s succeeded, wanted '%s'", #call, want);                    \
        if (!strstr(err_.msg, want) || strchr(err_.msg, '\n'))                                  \
            fail_msg("error '%s', wanted '%s'", err_.msg, want);                                 \
    } while (0)

/* 1 when the object named name exists in /dev/shm. */
static int shm_exists(const char *name)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd >= 0) {
        close(fd);
        return 1;
    }
    assert_int_equal(errno, ENOENT);
    return 0;
}

/* The child's exit status, which must be a normal exit. */
static int wait_child(pid_t pid)
{
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Child: opens name writable and fills slot 2 with bytes i * 7 + 1. Exit status 0 when all
 * went well; the child uses no cmocka calls (they would longjmp into the parent's copy). */
static int child_write_slot(const char *name)
{
    ShmSegment s;
    Err err;
    if (shm_segment_open(&s, name, 4, 8192, 1, &err)) {
        fprintf(stderr, "child: %s\n", err.msg);
        return 1;
    }
    uint8_t *p = shm_slot(&s, 2);
    for (size_t i = 0; i < s.slot_bytes; i++) p[i] = (uint8_t)(i * 7 + 1);
    int ok = s.owner == 0 && s.writable == 1;
    shm_segment_close(&s);
    return ok ? 0 : 2;
}

static void test_fork_round_trip(void **state)
{
    ShmSegment s, ro;
    Err err = {{0}};
    create_ok(&s, "test_fork", 4, 5000);
    assert_int_equal(s.slot_bytes, 8192); /* rounded up to SHM_ALIGN */
    assert_int_equal(s.bytes, 4 * 8192);
    assert_int_equal(s.owner, 1);
    assert_int_equal(s.writable, 1);
    char want[SHM_NAME_CAP];
    snprintf(want, sizeof want, "/effdet-%ld-test_fork-", (long)getpid());
    assert_true(!strncmp(s.name, want, strlen(want)));
    assert_true((uintptr_t)s.base % SHM_ALIGN == 0);
    memset(s.base, 0, s.bytes);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) _exit(child_write_slot(s.name));
    assert_int_equal(wait_child(pid), 0);
    const uint8_t *p = shm_slot(&s, 2);
    for (size_t i = 0; i < s.slot_bytes; i++)
        if (p[i] != (uint8_t)(i * 7 + 1)) fail_msg("slot 2 byte %zu is %u, child wrote %u", i, p[i],
                                                   (uint8_t)(i * 7 + 1));
    assert_int_equal(shm_slot(&s, 1)[8191], 0); /* its neighbours untouched */
    assert_int_equal(shm_slot(&s, 3)[0], 0);
    /* a second reader sees the same bytes through its own mapping */
    if (shm_segment_open(&ro, s.name, 4, 8192, 0, &err)) fail_msg("%s", err.msg);
    assert_memory_equal(shm_slot(&ro, 2), p, ro.slot_bytes);
    shm_segment_close(&ro);
    assert_true(shm_exists(s.name)); /* a reader's close leaves the name */
    shm_segment_close(&s);
}

/* mode 0600 even under a umask that would take the owner's write bit away. */
static void test_mode_0600(void **state)
{
    ShmSegment s;
    struct stat st;
    char path[128];
    mode_t old = umask(0277);
    create_ok(&s, "test_mode", 1, 1);
    umask(old);
    snprintf(path, sizeof path, "/dev/shm%s", s.name);
    assert_int_equal(stat(path, &st), 0);
    if ((st.st_mode & 07777) != 0600) fail_msg("%s has mode %o, wanted 0600", path, st.st_mode);
    assert_int_equal(st.st_size, SHM_ALIGN);
    shm_segment_close(&s);
}

/* The permissions /proc/self/maps shows for the mapping that starts at p ("r--s", "rw-s"). */
static void mapping_perms(const void *p, char perms[5])
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    assert_non_null(f);
    perms[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        uintptr_t start;
        char pr[5];
        if (sscanf(line, "%" SCNxPTR "-%*x %4s", &start, pr) == 2 && start == (uintptr_t)p) {
            memcpy(perms, pr, 5);
            break;
        }
    }
    fclose(f);
    if (!perms[0]) fail_msg("no mapping at %p in /proc/self/maps", p);
}

static void test_read_only(void **state)
{
    ShmSegment s, ro, rw;
    Err err = {{0}};
    char perms[5];
    create_ok(&s, "test_ro", 2, 4096);
    if (shm_segment_open(&ro, s.name, 2, 4096, 0, &err) ||
        shm_segment_open(&rw, s.name, 2, 4096, 1, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(ro.writable, 0);
    assert_int_equal(ro.owner, 0);
    mapping_perms(ro.base, perms);
    assert_string_equal(perms, "r--s"); /* a write would fault: not tried */
    mapping_perms(rw.base, perms);
    assert_string_equal(perms, "rw-s");
    mapping_perms(s.base, perms);
    assert_string_equal(perms, "rw-s");
    shm_segment_close(&ro);
    shm_segment_close(&rw);
    shm_segment_close(&s);
}

static void test_sizes_refused(void **state)
{
    ShmSegment s, o;
    create_ok(&s, "test_size", 4, 4096);
    /* the object is 4 x 4096: any other announced geometry is refused before mmap */
    char want[256];
    snprintf(want, sizeof want, "shared memory %s: 16384 bytes, expected 8 slots of 4096 = 32768 "
                                "bytes", s.name);
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 8, 4096, 0, err), want);
    assert_null(o.base);
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 2, 4096, 0, err),
                     "16384 bytes, expected 2 slots of 4096 = 8192 bytes");
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 4, 4000, 0, err),
                     "slots of 4000 bytes, expected a multiple of 4096");
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 0, 4096, 0, err), "0 slots, expected at least 1");
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 4, 0, 0, err), "slots of 0 bytes");
    /* over SHM_MAX_BYTES, and products that overflow size_t */
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, 17, (size_t)4 << 30, 0, err),
                     "over the limit of 68719476736 bytes");
    EXPECT_SHM_ERROR(shm_segment_open(&o, s.name, UINT32_MAX, SIZE_MAX / 4096 * 4096, 0, err),
                     "over the limit");
    EXPECT_SHM_ERROR(shm_segment_create(&o, "test_size", 0, 4096, err), "0 slots");
    EXPECT_SHM_ERROR(shm_segment_create(&o, "test_size", 1, 0, err), "slots of 0 bytes");
    EXPECT_SHM_ERROR(shm_segment_create(&o, "test_size", 1, SIZE_MAX, err), "over the limit");
    EXPECT_SHM_ERROR(shm_segment_create(&o, "test_size", 65537, (size_t)1 << 20, err),
                     "65537 slots of 1048576 bytes is over the limit");
    assert_null(o.base);
    shm_segment_close(&o); /* a failed create leaves nothing to close: fine anyway */
    shm_segment_close(&s);
}

static void test_names_refused(void **state)
{
    ShmSegment o;
    static const char *bad[] = {
        "",
        "/effdet-",
        "effdet-1-x-0",         /* no leading '/' */
        "/other-1-x-0",
        "/effdet-../../etc/passwd",
        "/effdet-1/x",
        "/effdet-1-x-0\n",
        "/effdet-1-x.0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT_SHM_ERROR(shm_segment_open(&o, bad[i], 1, 4096, 0, err),
                         "not an effdet segment name");
    /* SHM_NAME_CAP bytes without the NUL: one too long */
    char long_name[SHM_NAME_CAP + 1];
    memset(long_name, '7', SHM_NAME_CAP);
    memcpy(long_name, "/effdet-", 8);
    long_name[SHM_NAME_CAP] = '\0';
    EXPECT_SHM_ERROR(shm_segment_open(&o, long_name, 1, 4096, 0, err), "not an effdet segment");
    /* a well-formed name that does not exist */
    EXPECT_SHM_ERROR(shm_segment_open(&o, "/effdet-1-nobody-999999", 1, 4096, 0, err),
                     "shared memory /effdet-1-nobody-999999: shm_open: No such file or directory");
    static const char *bad_tags[] = {"", "Loader", "a-b", "a/b", "a.b", "tag with space",
                                     "abcdefghijklmnopqrstuvwx" /* 24 */};
    for (size_t i = 0; i < sizeof bad_tags / sizeof bad_tags[0]; i++)
        EXPECT_SHM_ERROR(shm_segment_create(&o, bad_tags[i], 1, 4096, err),
                         "expected 1 to 23 of [a-z0-9_]");
    ShmSegment s;
    create_ok(&s, "abcdefghijklmnopqrstuvw", 1, 4096); /* 23: the longest tag */
    assert_true(strlen(s.name) < SHM_NAME_CAP);
    shm_segment_close(&s);
}

static void test_close_unlinks(void **state)
{
    ShmSegment s, z;
    char name[SHM_NAME_CAP];
    create_ok(&s, "test_close", 1, 4096);
    strcpy(name, s.name);
    assert_true(shm_exists(name));
    shm_segment_close(&s);
    assert_false(shm_exists(name)); /* shm_open fails with ENOENT */
    assert_null(s.base);
    shm_segment_close(&s); /* idempotent */
    memset(&z, 0, sizeof z);
    shm_segment_close(&z); /* a zeroed segment */
    /* names are unique within a process: two segments of one tag */
    ShmSegment a, b;
    create_ok(&a, "test_close", 1, 4096);
    create_ok(&b, "test_close", 1, 4096);
    assert_string_not_equal(a.name, b.name);
    shm_segment_close(&a);
    shm_segment_close(&b);
}

/* A child creates a segment and exits without closing it: once the child is gone,
 * shm_unlink_stale removes its segment and keeps ours. */
static void test_unlink_stale(void **state)
{
    ShmSegment mine;
    Err err = {{0}};
    char name[SHM_NAME_CAP] = {0};
    int fds[2];
    create_ok(&mine, "test_stale", 1, 4096);
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ShmSegment s;
        Err e;
        if (shm_segment_create(&s, "test_stale", 1, 4096, &e)) _exit(1);
        _exit(write(fds[1], s.name, sizeof s.name) == (ssize_t)sizeof s.name ? 0 : 2);
    }
    close(fds[1]);
    assert_int_equal(wait_child(pid), 0); /* reaped: its pid no longer exists */
    assert_int_equal(read(fds[0], name, sizeof name), sizeof name);
    close(fds[0]);
    assert_true(shm_exists(name));
    int removed = shm_unlink_stale(&err);
    if (removed < 0) fail_msg("%s", err.msg);
    assert_true(removed >= 1); /* others' leftovers may be among them */
    assert_false(shm_exists(name));
    assert_true(shm_exists(mine.name));
    shm_segment_close(&mine);
}

static void test_range_ok(void **state)
{
    ShmSegment s = {.n_slots = 2, .slot_bytes = 4096};
    assert_true(shm_range_ok(&s, 0, 0, 4096));      /* the whole slot */
    assert_true(shm_range_ok(&s, 1, 4096, 0));      /* empty, at the exact end */
    assert_true(shm_range_ok(&s, 1, 4000, 96));     /* ends at the exact end */
    assert_false(shm_range_ok(&s, 1, 4000, 97));    /* one byte past */
    assert_false(shm_range_ok(&s, 0, 4097, 0));     /* starts past the end */
    assert_false(shm_range_ok(&s, 0, 0, 4097));
    assert_false(shm_range_ok(&s, 2, 0, 0));        /* no slot 2 */
    assert_false(shm_range_ok(&s, UINT32_MAX, 0, 0));
    /* offset + bytes wraps to a small number in 64 bits: still refused */
    assert_false(shm_range_ok(&s, 0, 8, UINT64_MAX - 7));
    assert_false(shm_range_ok(&s, 0, UINT64_MAX, 1));
    assert_false(shm_range_ok(&s, 0, UINT64_MAX - 7, 16));
    assert_int_equal(shm_slot_round(0), 0);
    assert_int_equal(shm_slot_round(1), 4096);
    assert_int_equal(shm_slot_round(4096), 4096);
    assert_int_equal(shm_slot_round(4097), 8192);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fork_round_trip), cmocka_unit_test(test_mode_0600),
        cmocka_unit_test(test_read_only),       cmocka_unit_test(test_sizes_refused),
        cmocka_unit_test(test_names_refused),   cmocka_unit_test(test_close_unlinks),
        cmocka_unit_test(test_unlink_stale),    cmocka_unit_test(test_range_ok),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
