/* cmd_demo.c: `effdet demo [--out DIR] [--model NAME] [--device D] [--epochs E]`: the README's
 * main job on an embedded default. It writes a synthetic COCO-format dataset (coloured shapes,
 * `effdet synth`), trains EfficientDet on it through the whole pipeline (a loader, an augmenter,
 * one worker on the CPU, or on the GPU when the CUDA backend loads, the evaluator every few
 * epochs: `effdet train --loaders`), and draws the best checkpoint's detections on the images:
 * DIR/run/ (checkpoints, model_best, curves.png, TensorBoard events), DIR/results.json,
 * DIR/drawn/. A few minutes on two CPU cores. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "kernels/ops.h"

static const char *USAGE = "effdet demo [--out DIR] [--model NAME] [--device cpu|cuda[:N]] [--epochs E]";

/* cuda:0 when the CUDA backend loads and finds a GPU, else cpu. */
static const char *default_device(void)
{
    Err err;
    int dev;
    return ops_for_device("cuda:0", &dev, &err) ? "cuda:0" : "cpu";
}

int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"model", required_argument, 0, 'm'},
                                         {"device", required_argument, 0, 'd'},
                                         {"epochs", required_argument, 0, 'e'},
                                         {0, 0, 0, 0}};
    const char *out = "effdet-demo", *model = "tf_efficientdet_d0", *device = NULL, *epochs = "400";
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'o': out = optarg; break;
        case 'm': model = optarg; break;
        case 'd': device = optarg; break;
        case 'e': epochs = optarg; break;
        default: return cli_usage(USAGE);
        }
    }
    if (optind != argc) return cli_usage(USAGE);
    if (!device) device = default_device();
    Err err;
    char data[1100], run[1100], best[1200], results[1100], drawn[1100], images[1200];
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        err_set(&err, "--out %s: %s", out, strerror(errno));
        return cli_fail("demo", &err);
    }
    snprintf(data, sizeof data, "%s/data", out);
    snprintf(run, sizeof run, "%s/run", out);
    snprintf(best, sizeof best, "%s/model_best.safetensors", run);
    snprintf(results, sizeof results, "%s/results.json", out);
    snprintf(drawn, sizeof drawn, "%s/drawn", out);
    snprintf(images, sizeof images, "%s/images", data);
    printf("effdet demo: 1/3 a synthetic dataset of 16 images in %s\n", data);
    char *synth[] = {"synth", "--out", data, "--images", "16", "--seed", "1", "--size", "128x128",
                     "--classes", "3"};
    int rc = cmd_synth(11, synth);
    if (rc != 0) return rc;
    /* The overfit recipe of tests/e2e/train_cli.sh: a high peak rate for batch 16, and BN running
     * statistics that follow a short run (--bn-momentum 0.1). */
    printf("effdet demo: 2/3 training %s at 128x128 on %s for %s epochs, evaluated every 50\n", model,
           device, epochs);
    fflush(stdout);
    char *train[] = {"train", "--data", data, "--model", (char *)model, "--image-size", "128x128",
                     "--batch-size", "16", "--epochs", (char *)epochs, "--lr", "0.64",
                     "--warmup-epochs", "5", "--bn-momentum", "0.1", "--loaders", "1",
                     "--augmenters", "1", "--devices", (char *)device, "--eval-interval", "50",
                     "--checkpoint-interval", "50", "--log-interval", "10", "--output", run};
    if ((rc = cmd_train((int)(sizeof train / sizeof *train), train)) != 0) return rc;
    printf("effdet demo: 3/3 detections of %s drawn in %s/\n", best, drawn);
    fflush(stdout);
    char *infer[] = {"infer", "--model", (char *)model, "--num-classes", "3", "--image-size", "128x128",
                     "--device", (char *)device, "--weights", best, "--out", results, "--draw", drawn,
                     "--draw-thresh", "0.3", images};
    if ((rc = cmd_infer((int)(sizeof infer / sizeof *infer), infer)) != 0) return rc;
    printf("effdet demo: done: %s/curves.png (loss and mAP), %s (COCO results), %s/ (drawn), "
           "%s/tensorboard (TensorBoard)\n", run, results, drawn, run);
    return 0;
}
