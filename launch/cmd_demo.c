/* cmd_demo.c: `effdet demo [--out DIR] [--model NAME] [--weights FILE] [--device D]`: the
 * README's main job on an embedded default. It makes a few synthetic photos (coloured shapes on a
 * gradient, JPEG), runs the whole inference path on them (decode, letterbox, forward, top-k, NMS)
 * and writes DIR/results.json plus the images with their boxes drawn in DIR/drawn/. Without
 * --weights the network has deterministic random weights: the boxes are meaningless, the path is
 * real. (Training on synthetic data joins this demo when training lands.) */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "loader/jpeg.h"
#include "shared/rng.h"

static const char *USAGE =
    "effdet demo [--out DIR] [--model NAME] [--weights FILE] [--device cpu|cuda[:N]]";

/* A 640x480 picture: gradient background with `seed`-dependent filled rectangles and disks. */
static int make_photo(const char *path, uint32_t seed, Err *err)
{
    RgbImage img = {0}; /* rgb_image_alloc reuses what img holds, so it starts empty */
    if (rgb_image_alloc(&img, 640, 480, err) != 0) return -1;
    for (int y = 0; y < img.h; y++)
        for (int x = 0; x < img.w; x++) {
            uint8_t *p = img.px + ((size_t)y * img.w + x) * 3;
            p[0] = (uint8_t)(40 + x / 8), p[1] = (uint8_t)(60 + y / 6), p[2] = (uint8_t)(120 + (x + y) / 20);
        }
    Rng r;
    rng_init(&r, seed, 0xde30u, 0);
    for (int s = 0; s < 4; s++) {
        int cx = 60 + (int)(rng_uniform(&r) * 520), cy = 60 + (int)(rng_uniform(&r) * 360);
        int rad = 25 + (int)(rng_uniform(&r) * 70), disk = rng_u32(&r) & 1;
        uint8_t col[3] = {(uint8_t)(rng_u32(&r) & 255), (uint8_t)(rng_u32(&r) & 255), (uint8_t)(rng_u32(&r) & 255)};
        for (int y = cy - rad; y < cy + rad; y++)
            for (int x = cx - rad; x < cx + rad; x++) {
                if (x < 0 || y < 0 || x >= img.w || y >= img.h) continue;
                if (disk && (x - cx) * (x - cx) + (y - cy) * (y - cy) > rad * rad) continue;
                memcpy(img.px + ((size_t)y * img.w + x) * 3, col, 3);
            }
    }
    int rc = jpeg_write_file(path, &img, 92, err);
    rgb_image_free(&img);
    return rc;
}

int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"model", required_argument, 0, 'm'},
                                         {"weights", required_argument, 0, 'w'},
                                         {"device", required_argument, 0, 'd'},
                                         {0, 0, 0, 0}};
    const char *out = "effdet-demo", *model = "tf_efficientdet_d0", *weights = NULL, *device = "cpu";
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'o': out = optarg; break;
        case 'm': model = optarg; break;
        case 'w': weights = optarg; break;
        case 'd': device = optarg; break;
        default: return cli_usage(USAGE);
        }
    }
    if (optind != argc) return cli_usage(USAGE);
    Err err;
    char paths[3][1024], results[1100], drawn[1100];
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        err_set(&err, "--out %s: %s", out, strerror(errno));
        return cli_fail("demo", &err);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/photo%d.jpg", out, i + 1);
        if (make_photo(paths[i], 11u + (uint32_t)i, &err) != 0) return cli_fail("demo", &err);
    }
    snprintf(results, sizeof results, "%s/results.json", out);
    snprintf(drawn, sizeof drawn, "%s/drawn", out);
    char *args[32] = {"infer", "--model", (char *)model, "--device", (char *)device, "--out", results,
                      "--draw", drawn, "--draw-thresh", "0.2"};
    int n = 11;
    if (weights) args[n++] = "--weights", args[n++] = (char *)weights;
    else args[n++] = "--weights", args[n++] = "random";
    for (int i = 0; i < 3; i++) args[n++] = paths[i];
    printf("effdet demo: %s on 3 synthetic photos in %s (%s weights)\n", model, out,
           weights ? weights : "random");
    int rc = cmd_infer(n, args);
    if (rc == 0) printf("effdet demo: results in %s, drawn images in %s/\n", results, drawn);
    return rc;
}
