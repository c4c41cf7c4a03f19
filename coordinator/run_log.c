/* run_log.c: the training run's terminal output, DLLL lines, TensorBoard scalars and curves
 * (see run_log.h).
 *
 * DESIGN: one struct owns the output stream state (whether a bar is on screen, and its text so it
 * can be redrawn under any line printed above it), the event file, and the two series kept for
 * the curves. The bar is drawn as "\r" + text + ESC[K (erase to end of line), so a shorter line
 * never leaves the end of a longer one behind; anything else printed first erases the bar, prints
 * its own full line, then redraws the bar. The ETA uses the wall clock since the first step seen
 * (so it includes evaluation and checkpoint pauses, which the run really spends), and falls back
 * to the caller's img/s before a second step arrives. Evaluations arrive asynchronously, so the
 * mAP series is kept sorted by epoch on insert. */
#include "run_log.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "curves_png.h"
#include "tfevents.h"

#define RUN_LOG_BAR_CELLS 10

/* A growable series of (x, y) pairs. */
typedef struct Series {
    double *x, *y;
    size_t n, cap;
} Series;

struct RunLog {
    RunLogConfig cfg; /* cfg.dir points at dir below */
    char *dir;
    FILE *out;
    int tty;
    long total_epochs;
    TfEvents *tf;
    Series loss; /* per step */
    Series map;  /* per epoch, sorted by epoch */
    int bar_shown;
    char bar[256];
    double t_first; /* monotonic seconds at the first step seen */
    long step_first;
    int closed;
};

static double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int series_reserve(Series *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = s->cap ? 2 * s->cap : 1024;
    while (cap < n)
        cap *= 2;
    double *x = realloc(s->x, cap * sizeof *x);
    if (!x)
        return -1;
    s->x = x;
    double *y = realloc(s->y, cap * sizeof *y);
    if (!y)
        return -1;
    s->y = y;
    s->cap = cap;
    return 0;
}

static void series_free(Series *s)
{
    free(s->x);
    free(s->y);
    s->x = s->y = NULL;
    s->n = s->cap = 0;
}

/* Inserts keeping x sorted; an equal x replaces the old value. */
static int series_insert_sorted(Series *s, double x, double y)
{
    size_t i = 0;
    while (i < s->n && s->x[i] < x)
        i++;
    if (i < s->n && s->x[i] == x) {
        s->y[i] = y;
        return 0;
    }
    if (series_reserve(s, s->n + 1) != 0)
        return -1;
    memmove(s->x + i + 1, s->x + i, (s->n - i) * sizeof *s->x);
    memmove(s->y + i + 1, s->y + i, (s->n - i) * sizeof *s->y);
    s->x[i] = x;
    s->y[i] = y;
    s->n++;
    return 0;
}

/* A JSON number, or null for NaN and infinities, which JSON cannot represent. */
static const char *json_num(char buf[32], double v)
{
    if (!isfinite(v))
        return "null";
    snprintf(buf, 32, "%.6g", v);
    return buf;
}

/* "M:SS" or "H:MM:SS"; "--:--" when unknown. */
static void format_eta(char buf[32], double seconds)
{
    if (!isfinite(seconds) || seconds < 0 || seconds > 1e9) {
        snprintf(buf, 32, "--:--");
        return;
    }
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(buf, 32, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, 32, "%ld:%02ld", s / 60, s % 60);
}

static void bar_draw(RunLog *r)
{
    fprintf(r->out, "\r%s\033[K", r->bar);
    fflush(r->out);
    r->bar_shown = 1;
}

/* Prints one full line, above the bar when one is on screen. */
static void print_line(RunLog *r, const char *text)
{
    if (r->bar_shown)
        fputs("\r\033[K", r->out);
    fprintf(r->out, "%s\n", text);
    if (r->bar_shown)
        bar_draw(r);
    else
        fflush(r->out);
}

RunLog *run_log_open(const RunLogConfig *cfg, Err *err)
{
    if (cfg->total_steps < 1 || cfg->steps_per_epoch < 1 || cfg->log_interval < 1) {
        err_set(err, "run log: total_steps %ld, steps_per_epoch %ld and log_interval %d must all "
                "be at least 1", cfg->total_steps, cfg->steps_per_epoch, cfg->log_interval);
        return NULL;
    }
    RunLog *r = calloc(1, sizeof *r);
    if (!r || (cfg->dir && !(r->dir = strdup(cfg->dir)))) {
        free(r);
        err_set(err, "run log: out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    r->cfg.dir = r->dir;
    r->out = cfg->out ? cfg->out : stdout;
    r->cfg.out = r->out;
    r->tty = cfg->tty >= 0 ? (cfg->tty != 0) : isatty(fileno(r->out));
    r->total_epochs = (cfg->total_steps + cfg->steps_per_epoch - 1) / cfg->steps_per_epoch;
    r->step_first = -1;
    if (r->dir && !(r->tf = tfevents_open(r->dir, err))) {
        err_wrap(err, "run log: ");
        free(r->dir);
        free(r);
        return NULL;
    }
    return r;
}

/* Seconds left, from the wall clock since the first step or else from the caller's img/s. */
static double eta_seconds(RunLog *r, long step, double img_s)
{
    double left = (double)(r->cfg.total_steps - step);
    if (left <= 0)
        return 0;
    if (step > r->step_first && r->step_first >= 0)
        return left * (now_monotonic() - r->t_first) / (double)(step - r->step_first);
    if (img_s > 0 && r->cfg.batch > 0)
        return left * r->cfg.batch / img_s;
    return NAN;
}

static void bar_update(RunLog *r, long epoch, long step, double loss, double lr, double img_s)
{
    char cells[RUN_LOG_BAR_CELLS + 1], eta[32];
    double frac = (double)step / (double)r->cfg.total_steps;
    int full = (int)(frac * RUN_LOG_BAR_CELLS);
    full = full < 0 ? 0 : full > RUN_LOG_BAR_CELLS ? RUN_LOG_BAR_CELLS : full;
    for (int i = 0; i < RUN_LOG_BAR_CELLS; i++)
        cells[i] = i < full ? '#' : '.';
    cells[RUN_LOG_BAR_CELLS] = 0;
    format_eta(eta, eta_seconds(r, step, img_s));
    snprintf(r->bar, sizeof r->bar,
             " epoch %ld/%ld [%s] step %ld/%ld loss %.3f lr %.4f %.1f img/s ETA %s", epoch + 1,
             r->total_epochs, cells, step, r->cfg.total_steps, loss, lr, img_s, eta);
    bar_draw(r);
}

int run_log_step(RunLog *r, long epoch, long step, double loss, double class_loss,
                 double box_loss, double lr, double img_s, Err *err)
{
    if (r->step_first < 0) {
        r->step_first = step;
        r->t_first = now_monotonic();
    }
    Series *s = &r->loss;
    if (series_reserve(s, s->n + 1) != 0)
        return err_set(err, "run log: out of memory keeping the loss of step %ld", step);
    s->x[s->n] = (double)step;
    s->y[s->n] = loss;
    s->n++;

    int logged = step % r->cfg.log_interval == 0 || step == r->cfg.total_steps;
    if (logged) {
        char line[512], a[32], b[32], c[32], d[32], e[32];
        if (!r->tty) {
            snprintf(line, sizeof line,
                     "epoch %ld step %ld/%ld: loss %.4f (class %.4g box %.3g) lr %.5f %.2f img/s",
                     epoch + 1, step, r->cfg.total_steps, loss, class_loss, box_loss, lr, img_s);
            print_line(r, line);
        }
        snprintf(line, sizeof line,
                 "DLLL {\"type\": \"train\", \"step\": %ld, \"epoch\": %ld, \"loss\": %s, "
                 "\"class_loss\": %s, \"box_loss\": %s, \"lr\": %s, \"img_s\": %s}",
                 step, epoch + 1, json_num(a, loss), json_num(b, class_loss),
                 json_num(c, box_loss), json_num(d, lr), json_num(e, img_s));
        print_line(r, line);
    }
    if (r->tty)
        bar_update(r, epoch, step, loss, lr, img_s);
    if (logged && r->tf) {
        static const char *const tags[5] = {"train/loss", "train/class_loss", "train/box_loss",
                                            "train/lr", "train/img_s"};
        const double values[5] = {loss, class_loss, box_loss, lr, img_s};
        for (int i = 0; i < 5; i++)
            if (tfevents_scalar(r->tf, tags[i], step, values[i], err) != 0)
                return err_wrap(err, "run log: ");
    }
    return 0;
}

int run_log_eval(RunLog *r, long epoch, long step, const double stats[12], Err *err)
{
    char line[512], a[32], b[32], c[32];
    snprintf(line, sizeof line, "eval epoch %ld step %ld: mAP %.4f mAP@0.5 %.4f mAP@0.75 %.4f",
             epoch, step, stats[0], stats[1], stats[2]);
    print_line(r, line);
    snprintf(line, sizeof line,
             "DLLL {\"type\": \"eval\", \"epoch\": %ld, \"step\": %ld, \"map\": %s, \"map50\": %s, "
             "\"map75\": %s}",
             epoch, step, json_num(a, stats[0]), json_num(b, stats[1]), json_num(c, stats[2]));
    print_line(r, line);
    if (series_insert_sorted(&r->map, (double)epoch, stats[0]) != 0)
        return err_set(err, "run log: out of memory keeping the mAP of epoch %ld", epoch);
    if (r->tf) {
        static const char *const tags[3] = {"eval/mAP", "eval/mAP50", "eval/mAP75"};
        for (int i = 0; i < 3; i++)
            if (tfevents_scalar(r->tf, tags[i], step, stats[i], err) != 0)
                return err_wrap(err, "run log: ");
    }
    return 0;
}

void run_log_line(RunLog *r, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    size_t n = strlen(line);
    if (n > 0 && line[n - 1] == '\n')
        line[n - 1] = 0;
    print_line(r, line);
}

int run_log_close(RunLog *r, Err *err)
{
    if (r->closed)
        return 0;
    r->closed = 1;
    if (r->bar_shown) {
        fputc('\n', r->out);
        fflush(r->out);
        r->bar_shown = 0;
    }
    int rc = 0;
    if (r->dir) {
        char *path = NULL;
        if (asprintf(&path, "%s/curves.png", r->dir) < 0) {
            rc = err_set(err, "run log: out of memory");
        } else {
            /* The curves take int counts; a run of more than INT_MAX steps plots its first ones. */
            int n_loss = r->loss.n > (size_t)0x7fffffff ? 0x7fffffff : (int)r->loss.n;
            rc = curves_png_write(path, r->loss.x, r->loss.y, n_loss, r->map.x, r->map.y,
                                  (int)r->map.n, err);
            free(path);
        }
    }
    tfevents_close(r->tf);
    r->tf = NULL;
    return rc;
}

void run_log_free(RunLog *r)
{
    if (!r)
        return;
    run_log_close(r, NULL);
    series_free(&r->loss);
    series_free(&r->map);
    free(r->dir);
    free(r);
}
