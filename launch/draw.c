/* draw.c: box outlines and labels for `effdet infer --draw` (see draw.h).
 *
 * Plain loops over the pixels, no allocation. Every write goes through fill_rect, which clips to
 * the image, so callers may pass boxes partly or wholly outside it. Float coordinates are clamped
 * to a little beyond the image before they become ints, so huge values cannot overflow. The font
 * is shared/font5x7.h. */
#include "launch/draw.h"

#include <math.h>
#include <stdio.h>

#include "shared/font5x7.h"

#define OUTLINE_PX 2

/* Pixels per font dot: 1 up to 600 px on the short side, one more per further 600 px. */
static int label_scale(const RgbImage *img)
{
    int side = img->w < img->h ? img->w : img->h;
    return 1 + side / 600;
}

/* Fills [x0, x1) x [y0, y1), clipped to the image. */
static void fill_rect(RgbImage *img, int x0, int y0, int x1, int y1, const uint8_t c[3])
{
    if (x0 < 0)
        x0 = 0;
    if (y0 < 0)
        y0 = 0;
    if (x1 > img->w)
        x1 = img->w;
    if (y1 > img->h)
        y1 = img->h;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            uint8_t *p = img->px + ((size_t)y * img->w + x) * 3;
            p[0] = c[0];
            p[1] = c[1];
            p[2] = c[2];
        }
}

void draw_label(RgbImage *img, int x, int y, const char *text, const uint8_t bg[3])
{
    static const uint8_t black[3] = {0, 0, 0}, white[3] = {255, 255, 255};
    if (!img->px || x >= img->w || y >= img->h || x < -img->w || y < -img->h)
        return; /* wholly outside; the bounds also keep the sums below far from overflow */
    int s = label_scale(img), n = 0;
    while (text[n] && n < img->w)
        n++;
    /* One dot of margin around the text and between glyphs. */
    fill_rect(img, x, y, x + (n * (FONT5X7_W + 1) + 1) * s, y + (FONT5X7_H + 2) * s, bg);
    int luma = 299 * bg[0] + 587 * bg[1] + 114 * bg[2]; /* Rec. 601, times 1000 */
    const uint8_t *fg = luma > 128 * 1000 ? black : white;
    for (int i = 0; i < n; i++) {
        const uint8_t *g = font5x7_rows(text[i]);
        int gx = x + (1 + i * (FONT5X7_W + 1)) * s, gy = y + s;
        for (int r = 0; g && r < FONT5X7_H; r++)
            for (int col = 0; col < FONT5X7_W; col++)
                if (g[r] & (0x10 >> col))
                    fill_rect(img, gx + col * s, gy + r * s, gx + (col + 1) * s, gy + (r + 1) * s,
                              fg);
    }
}

void draw_class_color(int class_id, uint8_t rgb[3])
{
    /* Hue steps by the golden ratio, so neighbouring ids get distant hues; HSV with s = 0.8, v = 1. */
    double h = fmod((unsigned)class_id * 0.61803398875, 1.0) * 6.0;
    int sector = (int)h;
    double f = h - sector, lo = 0.2, fall = 1.0 - 0.8 * f, rise = 0.2 + 0.8 * f;
    double r[6] = {1, fall, lo, lo, rise, 1}, g[6] = {rise, 1, 1, fall, lo, lo},
           b[6] = {lo, lo, rise, 1, 1, fall};
    rgb[0] = (uint8_t)lrint(255 * r[sector]);
    rgb[1] = (uint8_t)lrint(255 * g[sector]);
    rgb[2] = (uint8_t)lrint(255 * b[sector]);
}

/* Rounds a coordinate to a pixel edge, clamped to [-8, limit + 8] first. */
static int pixel_edge(float v, int limit)
{
    float c = fminf(fmaxf(v, -8.0f), (float)limit + 8.0f);
    return (int)lrintf(c);
}

void draw_detection(RgbImage *img, float x1, float y1, float x2, float y2, int class_id,
                    float score)
{
    if (!img->px || !isfinite(x1) || !isfinite(y1) || !isfinite(x2) || !isfinite(y2) || x2 < x1 ||
        y2 < y1)
        return;
    int ax = pixel_edge(x1, img->w), ay = pixel_edge(y1, img->h);
    int bx = pixel_edge(x2, img->w), by = pixel_edge(y2, img->h);
    if (bx <= ax)
        bx = ax + 1;
    if (by <= ay)
        by = ay + 1;
    if (bx <= 0 || by <= 0 || ax >= img->w || ay >= img->h)
        return; /* not on the image at all: no outline, and no label pulled onto it */
    uint8_t color[3];
    draw_class_color(class_id, color);
    fill_rect(img, ax, ay, bx, ay + OUTLINE_PX, color);
    fill_rect(img, ax, by - OUTLINE_PX, bx, by, color);
    fill_rect(img, ax, ay, ax + OUTLINE_PX, by, color);
    fill_rect(img, bx - OUTLINE_PX, ay, bx, by, color);

    char text[48];
    int n = snprintf(text, sizeof text, "%d %.2f", class_id, (double)score);
    if (n < 0)
        return;
    if (n >= (int)sizeof text)
        n = (int)sizeof text - 1;
    /* Keep the label on the image, so boxes cut by its edges still say what they are. */
    int s = label_scale(img), label_w = (n * (FONT5X7_W + 1) + 1) * s, label_h = (FONT5X7_H + 2) * s;
    int lx = ax + label_w > img->w ? img->w - label_w : ax;
    int ly = ay - label_h >= 0 ? ay - label_h : ay;
    draw_label(img, lx < 0 ? 0 : lx, ly < 0 ? 0 : ly, text, color);
}
