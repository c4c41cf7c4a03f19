/* main.c: the `effdet` command: dispatches to a subcommand (commands.h). */
#include <stdio.h>
#include <string.h>

#include "kernels/cpu/blas_setup.h"
#include "launch/commands.h"

typedef struct Command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} Command;

static const Command commands[] = {
    {"info", cmd_info, "model facts: parameters, BN buffers, anchors (--model NAME [--num-classes N] [--json])"},
    {"parity", cmd_parity, "run a reference fixture directory and write our outputs (DIR --out FILE)"},
    {"infer", cmd_infer, "detect objects in JPEGs, folders or a COCO set (--model NAME --weights FILE PATH...|--data DIR --out FILE)"},
    {"bench", cmd_bench, "measure speed (--mode forward --model NAME --device cpu --batch-size B --json)"},
    {"train", cmd_train, "train on a COCO-format dataset (--data DIR --model NAME ... [--loaders N --augmenters M --devices D,D])"},
    {"synth", cmd_synth, "write a synthetic COCO-format dataset (--out DIR --images N --seed S)"},
    {"batches", cmd_batches, "print the data pipeline's batch stream (--data DIR --batch-size B --image-size HxW)"},
    {"demo", cmd_demo, "the README's main job: train and evaluate on a synthetic set (--out DIR)"},
    {"eval", cmd_eval, "COCO bbox evaluation (--gt GT.json --dets DETS.json | --weights FILE --model NAME --data DIR) [--json]"},
    {"worker", cmd_worker, "(started by `effdet train --loaders`) one data-parallel training worker"},
    {"eval-worker", cmd_eval_worker, "(started by `effdet train --loaders`) one epoch's evaluation"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: effdet COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv)
{
    cpu_blas_setup(argv);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "effdet: unknown command '%s' (effdet --help lists them)\n", argv[1]);
    return 2;
}
