/* stop_signal.h: SIGINT and SIGTERM as a readable file descriptor, so that a process's poll loop
 * ends a wait at once when asked to stop (the self-pipe trick). The pipe's write end is the one
 * process-wide static STYLE allows: a signal handler has nowhere else to find it. */
#ifndef EFFDET_STOP_SIGNAL_H
#define EFFDET_STOP_SIGNAL_H

/* Installs the handlers; returns the pipe's read end (non-blocking, close-on-exec), or -1 with
 * errno set. Calling it twice returns the same descriptor. */
int stop_signal_install(void);

/* 1 once a stop signal has arrived (reading the descriptor does not clear it). */
int stop_signal_raised(int fd);

#endif
