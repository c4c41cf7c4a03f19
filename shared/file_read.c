/* file_read.c: see file_read.h. */
#include "shared/file_read.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/check.h"

/* Closes fd and frees buf on the way out of an error. */
static int fail_read(int fd, char *buf, Err *err, const char *path, const char *why)
{
    free(buf);
    close(fd);
    return err_set(err, "%s: %s", path, why);
}

int file_read_all(const char *path, size_t max_bytes, char **data, size_t *len, Err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return err_set(err, "%s: %s", path, strerror(errno));
    size_t cap = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 1 << 16;
    char *buf = malloc(cap);
    ASSERT(buf);
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            ASSERT(buf);
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return fail_read(fd, buf, err, path, strerror(errno));
        if (got == 0) break;
        n += (size_t)got;
        if (n > max_bytes) {
            char why[64];
            snprintf(why, sizeof why, "more than %zu bytes", max_bytes);
            return fail_read(fd, buf, err, path, why);
        }
    }
    close(fd);
    *data = buf, *len = n;
    return 0;
}
