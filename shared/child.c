/* child.c: see child.h. */
#include "shared/child.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

void argv_buf_init(ArgvBuf *a)
{
    a->used = 0, a->argc = 0, a->full = 0, a->argv[0] = NULL;
}

void argv_buf_add(ArgvBuf *a, const char *fmt, ...)
{
    if (a->full) return;
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(a->buf + a->used, sizeof a->buf - a->used, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof a->buf - a->used || a->argc == ARGV_BUF_MAX) {
        a->full = 1;
        return;
    }
    a->argv[a->argc++] = a->buf + a->used;
    a->argv[a->argc] = NULL;
    a->used += (size_t)len + 1;
}

int child_program(const char *name, char *out, size_t cap, Err *err)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) return err_set(err, "/proc/self/exe: %s", strerror(errno));
    self[n] = 0;
    if (!name) {
        if ((size_t)n >= cap) return err_set(err, "%s: path too long", self);
        memcpy(out, self, (size_t)n + 1);
        return 0;
    }
    char *slash = strrchr(self, '/');
    if (slash) *slash = 0;
    if ((size_t)snprintf(out, cap, "%s/effdet-%s", self, name) >= cap)
        return err_set(err, "%s: path too long", self);
    if (access(out, X_OK) != 0) return err_set(err, "%s: %s", out, strerror(errno));
    return 0;
}

/* The child's exec failure, with only async-signal-safe calls. */
static void exec_failed(const char *path)
{
    static const char pre[] = "effdet: ", post[] = ": exec failed\n";
    ssize_t w = write(2, pre, sizeof pre - 1);
    w = write(2, path, strlen(path));
    w = write(2, post, sizeof post - 1);
    (void)w;
}

pid_t child_spawn(const char *const argv[], Err *err)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent) _exit(127);
        execv(argv[0], (char *const *)argv);
        exec_failed(argv[0]);
        _exit(127);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) return err_set(err, "%s: fork: %s", argv[0], strerror(fork_errno));
    return pid;
}
