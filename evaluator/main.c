/* main.c: `effdet-evaluator`, the evaluator process: flags, signals, and evaluator_run
 * (evaluator_proc.h describes the messages).
 *
 *   effdet-evaluator --gt GT.json --listen ENDPOINT --publish ENDPOINT [--timeout SECONDS]
 *
 * --listen is bound (PULL; workers connect), --publish is connected (PUSH; the coordinator binds
 * it). SIGINT and SIGTERM end the process cleanly (open epochs reported, exit 0) through a
 * self-pipe (shared/stop_signal.h) that the loop polls with its socket.
 * Exit status: 0 after a shutdown message or a signal, 1 for a bad ground truth or a socket that
 * cannot be opened (one line on stderr), 2 for bad flags. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evaluator/evaluator_proc.h"
#include "shared/flags.h"
#include "shared/stop_signal.h"

static const char USAGE[] =
    "usage: effdet-evaluator --gt GT.json --listen ENDPOINT --publish ENDPOINT "
    "[--timeout SECONDS]";

static int usage_error(const char *what)
{
    return flags_usage_error("effdet-evaluator", USAGE, what);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"gt", required_argument, NULL, 'g'},      {"listen", required_argument, NULL, 'l'},
        {"publish", required_argument, NULL, 'p'}, {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    EvaluatorConfig cfg = {.timeout_s = 60, .limits = wire_limits_default()};
    char bad[128];
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'g': cfg.gt_path = optarg; break;
        case 'l': cfg.listen = optarg; break;
        case 'p': cfg.publish = optarg; break;
        case 't':
            if (flags_double(optarg, 1e-3, 1e6, &cfg.timeout_s))
                return usage_error("--timeout must be a number of seconds > 0");
            break;
        case 'h': printf("%s\n", USAGE); return 0;
        default:
            snprintf(bad, sizeof bad, "bad option %.100s", argv[optind - 1]);
            return usage_error(bad);
        }
    }
    if (optind < argc) return usage_error("unexpected arguments");
    if (!cfg.gt_path || !cfg.listen || !cfg.publish)
        return usage_error("--gt, --listen and --publish are required");
    int stop_fd = stop_signal_install();
    if (stop_fd < 0) {
        fprintf(stderr, "effdet-evaluator: signal setup: %s\n", strerror(errno));
        return 1;
    }
    Err err;
    if (evaluator_run(&cfg, stop_fd, &err) != 0) {
        fprintf(stderr, "effdet-evaluator: %s\n", err.msg);
        return 1;
    }
    return 0;
}
