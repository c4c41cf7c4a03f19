/* curves_png.c: the loss and mAP curves as a PNG (see curves_png.h).
 *
 * DESIGN: everything is drawn into one RGB buffer with a handful of primitives (pixel, line,
 * rectangle, 5x7 text), then handed to libpng row by row. A panel is a plot rectangle plus a data
 * range; a series is sorted by x, reduced to at most one point per pixel column, and drawn as a
 * polyline (plus square markers when there are few points, as for mAP per epoch). libpng reports
 * errors by longjmp; its error callback copies the message into the Err first. */
#include "curves_png.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/font5x7.h"

typedef struct Rgb {
    uint8_t r, g, b;
} Rgb;

static const Rgb BACKGROUND = {255, 255, 255};
static const Rgb AXIS = {0, 0, 0};
static const Rgb GRID = {225, 225, 225};
static const Rgb TEXT = {40, 40, 40};
static const Rgb LOSS_COLOR = {31, 119, 180};
static const Rgb MAP_COLOR = {214, 39, 40};

typedef struct Canvas {
    int w, h;
    uint8_t *rgb; /* (h, w, 3) */
} Canvas;

/* A plot rectangle in pixels (x0 < x1 left to right, y0 < y1 top to bottom) and the data range it
 * shows. */
typedef struct Panel {
    int x0, y0, x1, y1;
    double xmin, xmax, ymin, ymax;
} Panel;

typedef struct Point {
    double x, y;
} Point;

static void put_pixel(Canvas *c, int x, int y, Rgb col)
{
    if (x < 0 || y < 0 || x >= c->w || y >= c->h)
        return;
    uint8_t *p = c->rgb + 3 * ((size_t)y * (size_t)c->w + (size_t)x);
    p[0] = col.r;
    p[1] = col.g;
    p[2] = col.b;
}

static void fill_rect(Canvas *c, int x0, int y0, int x1, int y1, Rgb col)
{
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++)
            put_pixel(c, x, y, col);
}

/* Bresenham's line; thick draws a 2x2 pen so the curves stand out from the grid. */
static void draw_line(Canvas *c, int x0, int y0, int x1, int y1, Rgb col, int thick)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int e = dx + dy;
    for (;;) {
        put_pixel(c, x0, y0, col);
        if (thick) {
            put_pixel(c, x0 + 1, y0, col);
            put_pixel(c, x0, y0 + 1, col);
            put_pixel(c, x0 + 1, y0 + 1, col);
        }
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

/* Each character takes 6 * scale pixels across (5 plus a gap). */
static int text_width(const char *s, int scale)
{
    return (int)strlen(s) * 6 * scale;
}

static void draw_text(Canvas *c, int x, int y, const char *s, int scale, Rgb col)
{
    for (; *s; s++, x += 6 * scale) {
        const uint8_t *g = font5x7_rows(*s);
        if (!g)
            continue;
        for (int row = 0; row < FONT5X7_H; row++)
            for (int cx = 0; cx < FONT5X7_W; cx++)
                if (g[row] & (0x10 >> cx))
                    fill_rect(c, x + cx * scale, y + row * scale, x + (cx + 1) * scale - 1,
                              y + (row + 1) * scale - 1, col);
    }
}

static int px_x(const Panel *p, double x)
{
    return p->x0 + (int)lround((x - p->xmin) / (p->xmax - p->xmin) * (p->x1 - p->x0));
}

static int px_y(const Panel *p, double y)
{
    return p->y1 - (int)lround((y - p->ymin) / (p->ymax - p->ymin) * (p->y1 - p->y0));
}

static int cmp_point_x(const void *a, const void *b)
{
    double xa = ((const Point *)a)->x, xb = ((const Point *)b)->x;
    return (xa > xb) - (xa < xb);
}

/* Copies the finite points sorted by x and, when there are more than `columns`, replaces them by
 * per-column means; returns the number of points kept in *out (caller frees), or -1 on OOM. */
static int prepare_series(const double *xs, const double *ys, int n, int columns, Point **out)
{
    Point *pts = malloc(((size_t)n + 1) * sizeof *pts);
    if (!pts)
        return -1;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(xs[i]) && isfinite(ys[i]))
            pts[m++] = (Point){xs[i], ys[i]};
    qsort(pts, (size_t)m, sizeof *pts, cmp_point_x);
    if (m > columns) {
        /* Bin by x into `columns` equal bins; a bin's mean is written over the array's front,
         * which is safe because bin k is written at index <= the first point it consumed. */
        double lo = pts[0].x, hi = pts[m - 1].x;
        int kept = 0, i = 0;
        for (int bin = 0; bin < columns && i < m; bin++) {
            double edge = lo + (hi - lo) * (bin + 1) / columns;
            double sx = 0, sy = 0;
            int cnt = 0;
            while (i < m && (pts[i].x <= edge || bin == columns - 1)) {
                sx += pts[i].x;
                sy += pts[i].y;
                cnt++;
                i++;
            }
            if (cnt > 0)
                pts[kept++] = (Point){sx / cnt, sy / cnt};
        }
        m = kept;
    }
    *out = pts;
    return m;
}

/* The data range of the points with a margin; a flat or single-point range is widened so the
 * mapping never divides by zero. */
static void panel_fit(Panel *p, const Point *pts, int n)
{
    double xmin = pts[0].x, xmax = pts[0].x, ymin = pts[0].y, ymax = pts[0].y;
    for (int i = 1; i < n; i++) {
        xmin = fmin(xmin, pts[i].x);
        xmax = fmax(xmax, pts[i].x);
        ymin = fmin(ymin, pts[i].y);
        ymax = fmax(ymax, pts[i].y);
    }
    if (xmax - xmin < 1e-12) {
        xmin -= 1;
        xmax += 1;
    }
    if (ymax - ymin < 1e-12 * fmax(1.0, fabs(ymax))) {
        double pad = fmax(0.5 * fabs(ymax), 0.05);
        ymin -= pad;
        ymax += pad;
    }
    double ypad = 0.05 * (ymax - ymin);
    p->xmin = xmin;
    p->xmax = xmax;
    p->ymin = ymin - ypad;
    p->ymax = ymax + ypad;
}

/* A "nice" tick spacing (1, 2 or 5 times a power of ten) giving about five ticks over range;
 * integer axes (steps, epochs) never get fractional ticks. */
static double tick_step(double range, int integer)
{
    double raw = range / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    double step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
    return integer && step < 1 ? 1 : step;
}

static void tick_label(char buf[32], double v, double step)
{
    /* Snap values that should be zero but carry rounding error, e.g. -1.4e-17. */
    if (fabs(v) < 1e-6 * step)
        v = 0;
    snprintf(buf, 32, step >= 1 ? "%.0f" : "%.4g", v);
}

/* Grid, axes, ticks with labels at nice values, the title and the x axis name. */
static void draw_frame(Canvas *c, const Panel *p, const char *title, const char *xname, int empty)
{
    int mid = (p->x0 + p->x1) / 2;
    char label[32];
    draw_text(c, mid - text_width(title, 2) / 2, p->y0 - 28, title, 2, TEXT);
    draw_text(c, mid - text_width(xname, 1) / 2, p->y1 + 24, xname, 1, TEXT);
    if (empty) {
        draw_text(c, mid - text_width("no data", 2) / 2, (p->y0 + p->y1) / 2, "no data", 2, TEXT);
    } else {
        double xs = tick_step(p->xmax - p->xmin, 1), ys = tick_step(p->ymax - p->ymin, 0);
        /* Indexing ticks by k (not accumulating) keeps rounding from drifting across the axis. */
        for (double k = ceil(p->xmin / xs); k * xs <= p->xmax + 1e-9 * xs; k++) {
            int x = px_x(p, k * xs);
            draw_line(c, x, p->y0, x, p->y1, GRID, 0);
            draw_line(c, x, p->y1, x, p->y1 + 5, AXIS, 0);
            tick_label(label, k * xs, xs);
            draw_text(c, x - text_width(label, 1) / 2, p->y1 + 9, label, 1, TEXT);
        }
        for (double k = ceil(p->ymin / ys); k * ys <= p->ymax + 1e-9 * ys; k++) {
            int y = px_y(p, k * ys);
            draw_line(c, p->x0, y, p->x1, y, GRID, 0);
            draw_line(c, p->x0 - 5, y, p->x0, y, AXIS, 0);
            tick_label(label, k * ys, ys);
            draw_text(c, p->x0 - 8 - text_width(label, 1), y - 3, label, 1, TEXT);
        }
    }
    draw_line(c, p->x0, p->y0, p->x0, p->y1, AXIS, 0);
    draw_line(c, p->x0, p->y1, p->x1, p->y1, AXIS, 0);
}

/* One panel: frame plus the series (polyline, with markers when there are few points). */
static int draw_panel(Canvas *c, int left, const char *title, const char *xname, const double *xs,
                      const double *ys, int n, Rgb col)
{
    Panel p = {.x0 = left + 70, .y0 = 44, .x1 = left + CURVES_PNG_PANEL_WIDTH - 24,
               .y1 = CURVES_PNG_HEIGHT - 48, .xmin = 0, .xmax = 1, .ymin = 0, .ymax = 1};
    Point *pts = NULL;
    int m = prepare_series(xs, ys, n > 0 ? n : 0, p.x1 - p.x0, &pts);
    if (m < 0)
        return -1;
    if (m > 0)
        panel_fit(&p, pts, m);
    draw_frame(c, &p, title, xname, m == 0);
    for (int i = 0; i < m; i++) {
        int x = px_x(&p, pts[i].x), y = px_y(&p, pts[i].y);
        if (i > 0)
            draw_line(c, px_x(&p, pts[i - 1].x), px_y(&p, pts[i - 1].y), x, y, col, 1);
        if (m <= 50)
            fill_rect(c, x - 2, y - 2, x + 2, y + 2, col);
    }
    free(pts);
    return 0;
}

static void on_png_error(png_structp png, png_const_charp msg)
{
    Err *err = png_get_error_ptr(png);
    err_set(err, "libpng: %s", msg);
    png_longjmp(png, 1);
}

static void on_png_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

/* Encodes the canvas to f; 0 or -1 with err set (without the file name). */
static int encode_png(FILE *f, const Canvas *c, Err *err)
{
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, err, on_png_error,
                                              on_png_warning);
    if (!png)
        return err_set(err, "libpng: cannot create the write struct");
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return err_set(err, "libpng: cannot create the info struct");
    }
    /* png and info are not modified after setjmp, so they need not be volatile. */
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)c->w, (png_uint_32)c->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < c->h; y++)
        png_write_row(png, c->rgb + (size_t)y * (size_t)c->w * 3);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* Writes path.tmp, flushes it to disk and renames it over path. */
static int write_atomic(const char *path, const Canvas *c, Err *err)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0)
        return err_set(err, "%s: out of memory", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        err_set(err, "%s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int rc = encode_png(f, c, err);
    if (rc != 0)
        err_wrap(err, "%s: ", tmp);
    else if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = err_set(err, "%s: write: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && rc == 0)
        rc = err_set(err, "%s: close: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = err_set(err, "%s: rename to %s: %s", tmp, path, strerror(errno));
    if (rc != 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

int curves_png_write(const char *path, const double *loss_steps, const double *loss, int n_loss,
                     const double *map_epochs, const double *map, int n_map, Err *err)
{
    Canvas c = {.w = CURVES_PNG_WIDTH, .h = CURVES_PNG_HEIGHT, .rgb = NULL};
    c.rgb = malloc((size_t)c.w * (size_t)c.h * 3);
    if (!c.rgb)
        return err_set(err, "%s: out of memory", path);
    fill_rect(&c, 0, 0, c.w - 1, c.h - 1, BACKGROUND);
    if (draw_panel(&c, 0, "loss", "step", loss_steps, loss, n_loss, LOSS_COLOR) != 0 ||
        draw_panel(&c, CURVES_PNG_PANEL_WIDTH, "mAP", "epoch", map_epochs, map, n_map,
                   MAP_COLOR) != 0) {
        free(c.rgb);
        return err_set(err, "%s: out of memory", path);
    }
    int rc = write_atomic(path, &c, err);
    free(c.rgb);
    return rc;
}
