/* stop_signal.c: see stop_signal.h. */
#include "shared/stop_signal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static int stop_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    (void)sig;
    int saved = errno;
    /* The pipe is non-blocking; a failed write means it is full, which already says "stop". */
    ssize_t n = write(stop_pipe[1], "x", 1);
    (void)n;
    errno = saved;
}

int stop_signal_install(void)
{
    if (stop_pipe[0] >= 0) return stop_pipe[0];
    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGINT, &sa, NULL) != 0 ||
        sigaction(SIGTERM, &sa, NULL) != 0)
        return -1;
    return stop_pipe[0];
}

int stop_signal_raised(int fd)
{
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}
