/* mkjpeg.c: writes small JPEG files for the end-to-end tests, in each colour form a user's
 * folder may hold: `mkjpeg OUT.jpg rgb|gray|cmyk|progressive W H`. The picture is a smooth
 * gradient with a bright rectangle, so a detector has something to look at. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: mkjpeg OUT.jpg rgb|gray|cmyk|progressive W H\n");
        return 2;
    }
    const char *kind = argv[2];
    int w = atoi(argv[3]), h = atoi(argv[4]);
    if (w < 1 || h < 1 || w > 8192 || h > 8192) return fprintf(stderr, "mkjpeg: bad size\n"), 2;
    int cmyk = !strcmp(kind, "cmyk"), gray = !strcmp(kind, "gray");
    int ch = cmyk ? 4 : gray ? 1 : 3;
    unsigned char *px = malloc((size_t)w * h * ch);
    if (!px) return 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++) {
                int inside = x > w / 4 && x < w / 2 && y > h / 3 && y < 2 * h / 3;
                px[((size_t)y * w + x) * ch + c] = (unsigned char)(inside ? 230 - 40 * c : (x + 2 * y + 60 * c) % 200);
            }
    tjhandle tj = tjInitCompress();
    unsigned char *jpeg = NULL;
    unsigned long size = 0;
    int pf = cmyk ? TJPF_CMYK : gray ? TJPF_GRAY : TJPF_RGB;
    int ss = cmyk ? TJSAMP_444 : gray ? TJSAMP_GRAY : TJSAMP_420;
    int flags = !strcmp(kind, "progressive") ? TJFLAG_PROGRESSIVE : 0;
    if (!tj || tjCompress2(tj, px, w, 0, h, pf, &jpeg, &size, ss, 90, flags) != 0) {
        fprintf(stderr, "mkjpeg: %s\n", tjGetErrorStr2(tj));
        return 1;
    }
    FILE *f = fopen(argv[1], "wb");
    if (!f || fwrite(jpeg, 1, size, f) != size || fclose(f) != 0) {
        fprintf(stderr, "mkjpeg: cannot write %s\n", argv[1]);
        return 1;
    }
    tjFree(jpeg);
    tjDestroy(tj);
    free(px);
    return 0;
}
