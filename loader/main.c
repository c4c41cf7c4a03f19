/* main.c: `effdet-loader`, the loader process: flags, signals, and loader_run (loader_proc.h
 * describes what it serves).
 *
 *   effdet-loader (--data DIR | --ann FILE --images DIR) --listen ENDPOINT [--name NAME]
 *                 [--slots N] [--num-classes N] [--skip-bad-images] [--hb-ms MS]
 *                 [--report ENDPOINT]
 *
 * --report: stage reports (throughput, liveness; shared/stage.h) are pushed there every hb_ms.
 *
 * Exit status: 0 after SIGINT/SIGTERM, 1 for a dataset or socket that cannot be opened (one line on
 * stderr), 2 for bad flags. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loader/loader_proc.h"
#include "shared/flags.h"
#include "shared/stop_signal.h"

static const char USAGE[] =
    "usage: effdet-loader (--data DIR | --ann FILE --images DIR) --listen ENDPOINT [--name NAME] "
    "[--slots N] [--num-classes N] [--skip-bad-images] [--hb-ms MS] [--report ENDPOINT]";

static int usage_error(const char *what) { return flags_usage_error("effdet-loader", USAGE, what); }

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, 'd'},  {"ann", required_argument, NULL, 'a'},
        {"images", required_argument, NULL, 'i'}, {"listen", required_argument, NULL, 'l'},
        {"name", required_argument, NULL, 'n'},  {"slots", required_argument, NULL, 's'},
        {"num-classes", required_argument, NULL, 'c'},
        {"skip-bad-images", no_argument, NULL, 'k'}, {"hb-ms", required_argument, NULL, 'b'},
        {"report", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    LoaderConfig cfg = {.name = "loader0", .slots = 8, .limits = wire_limits_default()};
    char bad[160];
    long v;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': cfg.data = optarg; break;
        case 'a': cfg.ann = optarg; break;
        case 'i': cfg.images = optarg; break;
        case 'l': cfg.endpoint = optarg; break;
        case 'n': cfg.name = optarg; break;
        case 'k': cfg.skip_bad_images = 1; break;
        case 'r': cfg.report = optarg; break;
        case 's':
            if (flags_long(optarg, 1, 4096, &v)) return usage_error("--slots must be in 1..4096");
            cfg.slots = (uint32_t)v;
            break;
        case 'c':
            if (flags_long(optarg, 1, 100000, &v))
                return usage_error("--num-classes must be in 1..100000");
            cfg.num_classes = (int)v;
            break;
        case 'b':
            if (flags_long(optarg, 10, 60000, &v)) return usage_error("--hb-ms must be in 10..60000");
            cfg.hb_ms = (int)v;
            break;
        case 'h': printf("%s\n", USAGE); return 0;
        default:
            snprintf(bad, sizeof bad, "bad option %.100s", argv[optind - 1]);
            return usage_error(bad);
        }
    }
    if (optind < argc) return usage_error("unexpected arguments");
    if (!cfg.endpoint) return usage_error("--listen is required");
    if (!cfg.data == !(cfg.ann && cfg.images) || (cfg.data && (cfg.ann || cfg.images)))
        return usage_error("a dataset is required: --data DIR or --ann FILE --images DIR");
    int stop_fd = stop_signal_install();
    if (stop_fd < 0) {
        fprintf(stderr, "effdet-loader: signal setup: %s\n", strerror(errno));
        return 1;
    }
    Err err;
    if (loader_run(&cfg, stop_fd, NULL, &err) != 0) {
        fprintf(stderr, "effdet-loader: %s\n", err.msg);
        return 1;
    }
    return 0;
}
