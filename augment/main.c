/* main.c: `effdet-augment`, the augment process: flags, signals, and augment_run
 * (augment_proc.h describes what it serves).
 *
 *   effdet-augment --loaders EP[,EP...] --listen ENDPOINT --batch B --image-size HxW [--seed S]
 *                  [--name NAME] [--slots N] [--dtype f32|f16|bf16]
 *                  [--interp random|bilinear|bicubic] [--fill mean|zero] [--scale-min X]
 *                  [--scale-max X] [--no-flip] [--loader-window N] [--hb-ms MS] [--dead-ms MS]
 *                  [--report ENDPOINT]
 *
 * --report: stage reports (throughput, liveness; shared/stage.h) are pushed there every hb_ms.
 *
 * Exit status: 0 after SIGINT/SIGTERM, 1 for a failure (one line on stderr), 2 for bad flags. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augment/augment_proc.h"
#include "shared/flags.h"
#include "shared/stop_signal.h"

static const char USAGE[] =
    "usage: effdet-augment --loaders EP[,EP...] --listen ENDPOINT --batch B --image-size HxW "
    "[--seed S] [--name NAME] [--slots N] [--dtype f32|f16|bf16] "
    "[--interp random|bilinear|bicubic] [--fill mean|zero] [--scale-min X] [--scale-max X] "
    "[--no-flip] [--loader-window N] [--hb-ms MS] [--dead-ms MS] [--report ENDPOINT]";

static int usage_error(const char *what) { return flags_usage_error("effdet-augment", USAGE, what); }

enum { MAX_LOADERS = 64 };

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"loaders", required_argument, NULL, 'L'},    {"listen", required_argument, NULL, 'l'},
        {"batch", required_argument, NULL, 'b'},      {"image-size", required_argument, NULL, 'S'},
        {"seed", required_argument, NULL, 's'},       {"name", required_argument, NULL, 'n'},
        {"slots", required_argument, NULL, 'k'},      {"dtype", required_argument, NULL, 'd'},
        {"interp", required_argument, NULL, 'i'},     {"fill", required_argument, NULL, 'f'},
        {"scale-min", required_argument, NULL, 'm'},  {"scale-max", required_argument, NULL, 'M'},
        {"no-flip", no_argument, NULL, 'F'},          {"loader-window", required_argument, NULL, 'w'},
        {"hb-ms", required_argument, NULL, 'H'},      {"dead-ms", required_argument, NULL, 'D'},
        {"report", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
    };
    AugmentConfig cfg = {.name = "aug0", .slots = 2, .limits = wire_limits_default()};
    int h = 0, w = 0, flip = 1, fill_zero = 0;
    AugInterp interp = AUG_RANDOM;
    StDtype dtype = ST_F32;
    double smin = 0.1, smax = 2.0;
    uint64_t seed = 0;
    char *loader_list = NULL, bad[160];
    const char *loaders[MAX_LOADERS];
    long v;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'L': loader_list = optarg; break;
        case 'l': cfg.endpoint = optarg; break;
        case 'n': cfg.name = optarg; break;
        case 'F': flip = 0; break;
        case 'r': cfg.report = optarg; break;
        case 'b':
            if (flags_long(optarg, 1, AUGMENT_MAX_BATCH, &v)) return usage_error("bad --batch");
            cfg.batch = (int)v;
            break;
        case 'S':
            if (flags_hw(optarg, &h, &w)) return usage_error("--image-size must be HxW");
            break;
        case 's':
            if (flags_u64(optarg, &seed)) return usage_error("--seed must be an integer >= 0");
            break;
        case 'k':
            if (flags_long(optarg, 1, 64, &v)) return usage_error("--slots must be in 1..64");
            cfg.slots = (uint32_t)v;
            break;
        case 'w':
            if (flags_long(optarg, 1, 1024, &v)) return usage_error("--loader-window: 1..1024");
            cfg.loader_window = (uint32_t)v;
            break;
        case 'H':
            if (flags_long(optarg, 10, 60000, &v)) return usage_error("--hb-ms: 10..60000");
            cfg.hb_ms = (int)v;
            break;
        case 'D':
            if (flags_long(optarg, 50, 600000, &v)) return usage_error("--dead-ms: 50..600000");
            cfg.dead_ms = (int)v;
            break;
        case 'd':
            if (!strcmp(optarg, "f32")) dtype = ST_F32;
            else if (!strcmp(optarg, "f16")) dtype = ST_F16;
            else if (!strcmp(optarg, "bf16")) dtype = ST_BF16;
            else return usage_error("--dtype must be f32, f16 or bf16");
            break;
        case 'i':
            if (!strcmp(optarg, "random")) interp = AUG_RANDOM;
            else if (!strcmp(optarg, "bilinear")) interp = AUG_BILINEAR;
            else if (!strcmp(optarg, "bicubic")) interp = AUG_BICUBIC;
            else return usage_error("--interp must be random, bilinear or bicubic");
            break;
        case 'f':
            if (!strcmp(optarg, "mean")) fill_zero = 0;
            else if (!strcmp(optarg, "zero")) fill_zero = 1;
            else return usage_error("--fill must be mean or zero");
            break;
        case 'm':
            if (flags_double(optarg, 0.01, 10, &smin)) return usage_error("--scale-min: 0.01..10");
            break;
        case 'M':
            if (flags_double(optarg, 0.01, 10, &smax)) return usage_error("--scale-max: 0.01..10");
            break;
        case 'h': printf("%s\n", USAGE); return 0;
        default:
            snprintf(bad, sizeof bad, "bad option %.100s", argv[optind - 1]);
            return usage_error(bad);
        }
    }
    if (optind < argc) return usage_error("unexpected arguments");
    if (!loader_list || !cfg.endpoint || !cfg.batch || !h)
        return usage_error("--loaders, --listen, --batch and --image-size are required");
    if (smin > smax) return usage_error("--scale-min is above --scale-max");
    for (char *tok = strtok(loader_list, ","); tok; tok = strtok(NULL, ",")) {
        if (cfg.n_loaders == MAX_LOADERS) return usage_error("more than 64 loaders");
        loaders[cfg.n_loaders++] = tok;
    }
    if (!cfg.n_loaders) return usage_error("--loaders names no endpoint");
    cfg.loaders = loaders;
    cfg.aug = aug_config_default(h, w);
    cfg.aug.seed = seed, cfg.aug.hflip = flip, cfg.aug.interp = interp, cfg.aug.dtype = dtype;
    cfg.aug.scale_min = smin, cfg.aug.scale_max = smax;
    if (fill_zero) memset(cfg.aug.fill, 0, sizeof cfg.aug.fill);
    int stop_fd = stop_signal_install();
    if (stop_fd < 0) {
        fprintf(stderr, "effdet-augment: signal setup: %s\n", strerror(errno));
        return 1;
    }
    Err err;
    if (augment_run(&cfg, stop_fd, &err) != 0) {
        fprintf(stderr, "effdet-augment: %s\n", err.msg);
        return 1;
    }
    return 0;
}
