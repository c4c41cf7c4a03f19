/* jpeg_seeds.c: writes the seed inputs of fuzz_jpeg into the folder given as argv[1]: small JPEGs
 * in each form a dataset may hold (4:2:0, 4:2:2, 4:4:0, 4:4:4, 4:1:1, gray, CMYK, progressive,
 * restart markers, arithmetic coding, optimized Huffman tables, 1 x 1), plus a file with stray
 * bytes before SOS (a warning) and a truncated one, each behind the two option bytes fuzz_jpeg
 * reads first, with a few option values. TurboJPEG 2.1 exposes restart intervals, arithmetic
 * coding and optimized tables only through its TJ_* environment variables, read at each
 * compression, so those seeds set them around tjCompress2. Run by tests/fuzz/run.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "shared/check.h"

typedef struct Seed {
    const char *name;
    int pf, subsamp, flags, w, h;
    const char *env;    /* "TJ_RESTART=1" and the like, or NULL */
    uint8_t opt[2];     /* fuzz_jpeg's option bytes: strict | min_w / 16 << 1, min_h / 8 */
} Seed;

static const Seed SEEDS[] = {
    {"rgb420", TJPF_RGB, TJSAMP_420, 0, 16, 16, NULL, {0, 0}},
    {"rgb444_strict", TJPF_RGB, TJSAMP_444, 0, 9, 7, NULL, {1, 0}},
    {"rgb422_half", TJPF_RGB, TJSAMP_422, 0, 33, 17, NULL, {1 << 1, 0}},
    {"rgb440", TJPF_RGB, TJSAMP_440, 0, 20, 24, NULL, {0, 1}},
    {"rgb411", TJPF_RGB, TJSAMP_411, 0, 40, 8, NULL, {0, 0}},
    {"gray_eighth", TJPF_GRAY, TJSAMP_GRAY, 0, 13, 11, NULL, {0, 1}},
    {"cmyk", TJPF_CMYK, TJSAMP_444, 0, 8, 8, NULL, {0, 0}},
    {"cmyk420_scaled", TJPF_CMYK, TJSAMP_420, 0, 24, 16, NULL, {1 << 1, 0}},
    {"progressive", TJPF_RGB, TJSAMP_420, TJFLAG_PROGRESSIVE, 48, 32, NULL, {0, 2}},
    {"restart", TJPF_RGB, TJSAMP_420, 0, 32, 32, "TJ_RESTART=1", {1, 0}},
    {"arithmetic", TJPF_RGB, TJSAMP_420, 0, 24, 16, "TJ_ARITHMETIC=1", {0, 0}},
    {"progressive_arith", TJPF_RGB, TJSAMP_444, TJFLAG_PROGRESSIVE, 16, 16, "TJ_ARITHMETIC=1",
     {0, 1}},
    {"optimized", TJPF_RGB, TJSAMP_420, 0, 24, 24, "TJ_OPTIMIZE=1", {0, 0}},
    {"one_pixel", TJPF_RGB, TJSAMP_420, 0, 1, 1, NULL, {0, 0}},
};

static void write_seed(const char *dir, const char *name, const uint8_t opt[2], const uint8_t *jpg,
                       size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    ASSERT(fwrite(opt, 1, 2, f) == 2);
    ASSERT(fwrite(jpg, 1, len, f) == len);
    ASSERT(fclose(f) == 0);
}

/* A gradient with some texture, in s->pf's channel count, compressed as s says. */
static uint8_t *make_jpeg(const Seed *s, unsigned long *len)
{
    int ch = tjPixelSize[s->pf];
    uint8_t *px = malloc((size_t)s->w * s->h * ch);
    ASSERT(px);
    for (int i = 0; i < s->w * s->h * ch; i++) {
        int x = i / ch % s->w, y = i / ch / s->w, c = i % ch;
        px[i] = (uint8_t)(x * 7 + y * 5 + c * 40 + ((x ^ y) & 3) * 9);
    }
    if (s->env) {
        char name[32];
        const char *eq = strchr(s->env, '=');
        snprintf(name, sizeof name, "%.*s", (int)(eq - s->env), s->env);
        ASSERT(setenv(name, eq + 1, 1) == 0);
    }
    tjhandle tj = tjInitCompress();
    ASSERT(tj);
    unsigned char *jpg = NULL;
    *len = 0;
    if (tjCompress2(tj, px, s->w, 0, s->h, s->pf, &jpg, len, s->subsamp, 85, s->flags) != 0) {
        fprintf(stderr, "jpeg_seeds: %s: %s\n", s->name, tjGetErrorStr2(tj));
        exit(1);
    }
    tjDestroy(tj);
    unsetenv("TJ_RESTART");
    unsetenv("TJ_ARITHMETIC");
    unsetenv("TJ_OPTIMIZE");
    free(px);
    return jpg;
}

int main(int argc, char **argv)
{
    ASSERT(argc == 2);
    const char *dir = argv[1];
    for (size_t i = 0; i < sizeof SEEDS / sizeof SEEDS[0]; i++) {
        unsigned long len;
        uint8_t *jpg = make_jpeg(&SEEDS[i], &len);
        write_seed(dir, SEEDS[i].name, SEEDS[i].opt, jpg, len);
        if (i == 0) {
            /* Two stray bytes before SOS (a warning Pillow ignores), and the file cut in half. */
            size_t sos = 2;
            while (sos + 1 < len && !(jpg[sos] == 0xFF && jpg[sos + 1] == 0xDA))
                sos++;
            uint8_t *odd = malloc(len + 2);
            ASSERT(odd);
            memcpy(odd, jpg, sos);
            memcpy(odd + sos, "\x12\x34", 2);
            memcpy(odd + sos + 2, jpg + sos, len - sos);
            write_seed(dir, "stray_bytes", SEEDS[i].opt, odd, len + 2);
            write_seed(dir, "truncated", SEEDS[i].opt, jpg, len / 2);
            free(odd);
        }
        tjFree(jpg);
    }
    return 0;
}
