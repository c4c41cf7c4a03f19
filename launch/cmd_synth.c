/* cmd_synth.c: `effdet synth --out DIR --images N --seed S [--size WxH] [--classes K]`: writes a
 * synthetic COCO-format detection dataset (loader/synth.h): DIR/images/000000000001.jpg ... and
 * DIR/annotations.json. Without --size, image sides vary by up to +-25% around 320x240; with it,
 * every image is exactly WxH. The same flags always give byte-identical files. */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "loader/synth.h"

static const char *USAGE =
    "effdet synth --out DIR --images N --seed S [--size WxH] [--classes K (1..18, default 3)]";

int cmd_synth(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"images", required_argument, 0, 'n'},
                                         {"seed", required_argument, 0, 's'},
                                         {"size", required_argument, 0, 'z'},
                                         {"classes", required_argument, 0, 'k'},
                                         {0, 0, 0, 0}};
    SynthConfig cfg;
    synth_config_default(&cfg);
    const char *out = NULL;
    long images = -1, seed = -1, classes = cfg.n_classes;
    int opt;
    Err err;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'o': out = optarg; break;
        case 'n': bad = cli_parse_int("--images", optarg, 1, 10000000, &images, &err); break;
        case 's': bad = cli_parse_int("--seed", optarg, 0, INT64_MAX, &seed, &err); break;
        case 'k':
            bad = cli_parse_int("--classes", optarg, 1, SYNTH_MAX_CLASSES, &classes, &err);
            break;
        case 'z':
            /* cli_parse_hw reads "AxB" as HxW; image sizes are said WxH, so A is the width */
            bad = cli_parse_hw("--size", optarg, &cfg.width, &cfg.height, &err) ||
                  cfg.width < SYNTH_MIN_SIDE || cfg.height < SYNTH_MIN_SIDE ||
                  cfg.width > SYNTH_MAX_SIDE || cfg.height > SYNTH_MAX_SIDE;
            if (bad)
                err_set(&err, "--size %s: expected WxH (e.g. 320x240), each side in [%d, %d]",
                        optarg, SYNTH_MIN_SIDE, SYNTH_MAX_SIDE);
            cfg.fixed_size = 1;
            break;
        default: return cli_usage(USAGE);
        }
        if (bad) return cli_fail("synth", &err);
    }
    if (!out || images < 0 || seed < 0 || optind != argc) return cli_usage(USAGE);
    cfg.n_images = (int)images, cfg.seed = (uint64_t)seed, cfg.n_classes = (int)classes;
    int64_t n_ann = 0;
    if (synth_write_dataset(out, &cfg, &n_ann, &err) != 0) return cli_fail("synth", &err);
    printf("effdet synth: %d images, %lld annotations, %d classes -> %s\n", cfg.n_images,
           (long long)n_ann, cfg.n_classes, out);
    return 0;
}
