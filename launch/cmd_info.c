/* cmd_info.c: `effdet info --model NAME [--num-classes N] [--image-size HxW] [--json]`: the
 * variant's facts as effdet counts them: trainable parameters, BN buffer elements (running mean +
 * var), BN layers, anchors per image and feature map sizes at the given (default: native) size. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "worker/anchors.h"
#include "worker/model/model.h"

static const char *USAGE = "effdet info --model NAME [--num-classes N] [--image-size HxW] [--json]";

static void print_json(const Model *m, int h, int w, const Anchors *a)
{
    const ModelConfig *c = &m->cfg;
    int fh[MAX_LEVELS], fw[MAX_LEVELS];
    model_config_feat_sizes(c, h, w, fh, fw);
    printf("{\"model\": \"%s\", \"backbone\": \"%s\", \"num_classes\": %d, \"image_size\": [%d, %d], "
           "\"params\": %zu, \"bn_buffers\": %zu, \"bn_layers\": %d, \"anchors\": %d, "
           "\"fpn_channels\": %d, \"fpn_cell_repeats\": %d, \"box_class_repeats\": %d, "
           "\"min_level\": %d, \"max_level\": %d, \"feat_sizes\": [",
           c->name, c->backbone, c->num_classes, h, w, model_count_params(m),
           model_count_bn_buffers(m), m->table.n_bn_layers, a->count, c->fpn_channels,
           c->fpn_repeats, c->head_repeats, c->min_level, c->max_level);
    for (int l = 0; l < c->num_levels; l++) printf("%s[%d, %d]", l ? ", " : "", fh[l], fw[l]);
    printf("]}\n");
}

static void print_text(const Model *m, int h, int w, const Anchors *a)
{
    const ModelConfig *c = &m->cfg;
    int fh[MAX_LEVELS], fw[MAX_LEVELS];
    model_config_feat_sizes(c, h, w, fh, fw);
    printf("model        %s (backbone %s, %d classes)\n", c->name, c->backbone, c->num_classes);
    printf("input        %dx%d (HxW)\n", h, w);
    printf("params       %zu trainable\n", model_count_params(m));
    printf("BN buffers   %zu (running mean + var) in %d BN layers\n", model_count_bn_buffers(m),
           m->table.n_bn_layers);
    printf("BiFPN        %d channels x %d cells, %s fusion; heads %d repeats\n", c->fpn_channels,
           c->fpn_repeats, c->weighted_fusion ? "fast normalized" : "sum", c->head_repeats);
    printf("anchors      %d (%d per location)\n", a->count, model_config_anchors_per_loc(c));
    printf("levels      ");
    for (int l = 0; l < c->num_levels; l++) printf(" P%d %dx%d", c->min_level + l, fh[l], fw[l]);
    printf("\n");
}

int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"num-classes", required_argument, 0, 'n'},
                                         {"image-size", required_argument, 0, 's'},
                                         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    const char *name = NULL;
    long num_classes = 0;
    int json = 0, h = 0, w = 0, opt;
    Err err;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': name = optarg; break;
        case 'n':
            if (cli_parse_int("--num-classes", optarg, 1, 100000, &num_classes, &err)) return cli_fail("info", &err);
            break;
        case 's':
            if (cli_parse_hw("--image-size", optarg, &h, &w, &err)) return cli_fail("info", &err);
            break;
        case 'j': json = 1; break;
        default: return cli_usage(USAGE);
        }
    }
    if (!name || optind != argc) return cli_usage(USAGE);
    ModelConfig cfg;
    if (model_config_get(name, (int)num_classes, &cfg, &err) != 0) return cli_fail("info", &err);
    if (!h) h = cfg.image_h, w = cfg.image_w;
    Model m;
    Anchors a;
    model_describe(&m, &cfg);
    if (anchors_build(&a, &cfg, h, w, &err) != 0) {
        model_free(&m);
        return cli_fail("info", &err);
    }
    if (json)
        print_json(&m, h, w, &a);
    else
        print_text(&m, h, w, &a);
    anchors_free(&a);
    model_free(&m);
    return 0;
}
