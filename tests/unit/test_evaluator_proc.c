/* test_evaluator_proc.c: the evaluator process (evaluator/evaluator_proc.c), first as a state
 * machine driven in-process with a test clock, then as the real build/bin/effdet-evaluator
 * ($EFFDET_BIN) over ZeroMQ in a private run directory.
 *
 * The ground truth and detections are the pycocotools fixture case_1 ($EFFDET_FIXTURES): its
 * detections are sent image by image (file order within an image, every ground-truth image,
 * those without detections too), and the published stats and per-category AP must equal
 * expected.json within 1e-12. Around that: duplicate images (reported, not counted: the stats
 * still match), late and third epochs, missing images (reported after --timeout and at
 * shutdown, naming the first missing image), malformed messages (counted, the process goes on),
 * the shutdown message and SIGTERM (exit 0), bad flags (exit 2) and a bad ground truth (exit 1).
 * Spawned processes are killed and the run directory removed in teardown, whatever failed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "evaluator/coco_eval.h"
#include "evaluator/evaluator_proc.h"
#include "shared/coco.h"
#include "shared/wire.h"
#include "shared/zmq_util.h"

extern char **environ;

/* ---- the fixture ----------------------------------------------------------------------------- */

typedef struct Fixture {
    char gt_path[1024];
    CocoDataset gt;
    CocoDetections all;
    CocoDetection **img_dets; /* (n_images) each image's detections, file order */
    size_t *img_n;
    double stats[COCO_EVAL_NUM_STATS];
    size_t n_cat;
    int64_t cat_ids[64];
    double cat_ap[64];
} Fixture;

static Fixture fx;

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("%s: %s", path, strerror(errno));
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void load_expected(const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/expected.json", dir);
    char *text = read_text(path);
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    const cJSON *stats = cJSON_GetObjectItemCaseSensitive(j, "stats"), *e;
    assert_int_equal(cJSON_GetArraySize(stats), COCO_EVAL_NUM_STATS);
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        fx.stats[s] = cJSON_GetArrayItem(stats, s)->valuedouble;
    fx.n_cat = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, "per_category_AP")) {
        assert_true(fx.n_cat < 64);
        fx.cat_ids[fx.n_cat] = strtoll(e->string, NULL, 10);
        fx.cat_ap[fx.n_cat++] = e->valuedouble;
    }
    cJSON_Delete(j);
    free(text);
}

static int fixture_setup(void **state)
{
    const char *root = getenv("EFFDET_FIXTURES");
    char dir[1024], path[1100];
    Err err;
    /* The in-process evaluator's warnings are expected here; the spawned one logs at info. */
    setenv("EFFDET_LOG", "error", 1);
    snprintf(dir, sizeof dir, "%s/coco_eval/case_1", root ? root : "../shared/fixtures");
    snprintf(fx.gt_path, sizeof fx.gt_path, "%s/gt.json", dir);
    snprintf(path, sizeof path, "%s/dets.json", dir);
    if (coco_dataset_load(&fx.gt, fx.gt_path, &err) || coco_detections_load(&fx.all, path, &err)) {
        fprintf(stderr, "fixture: %s\n", err.msg);
        return -1;
    }
    load_expected(dir);
    fx.img_dets = calloc(fx.gt.n_images, sizeof *fx.img_dets);
    fx.img_n = calloc(fx.gt.n_images, sizeof *fx.img_n);
    for (size_t i = 0; i < fx.gt.n_images; i++) {
        fx.img_dets[i] = malloc((fx.all.n + 1) * sizeof **fx.img_dets);
        for (size_t j = 0; j < fx.all.n; j++)
            if (fx.all.dets[j].image_id == fx.gt.images[i].id)
                fx.img_dets[i][fx.img_n[i]++] = fx.all.dets[j];
    }
    return 0;
}

static int fixture_teardown(void **state)
{
    for (size_t i = 0; i < fx.gt.n_images; i++) free(fx.img_dets[i]);
    free(fx.img_dets);
    free(fx.img_n);
    coco_dataset_free(&fx.gt);
    coco_detections_free(&fx.all);
    return 0;
}

/* ---- sending: one scenario code for the in-process evaluator and the process ----------------- */

typedef struct Sender {
    Evaluator *ev; /* in-process: evaluator_handle at time now */
    double now;
    ZmqSocket *sock; /* else: over ZeroMQ */
    int shutdown_seen;
} Sender;

static void send_bytes(Sender *s, const void *msg, size_t len)
{
    if (s->ev) {
        s->shutdown_seen |= evaluator_handle(s->ev, msg, len, s->now) == EVALUATOR_SHUTDOWN;
        return;
    }
    Err err;
    if (zmq_util_send(s->sock, msg, len, 5000, &err) != 0) fail_msg("send: %s", err.msg);
}

static void send_writer(Sender *s, WireWriter *w)
{
    size_t len;
    const void *msg = wire_writer_data(w, &len);
    send_bytes(s, msg, len);
    wire_writer_free(w);
}

/* Image i of the ground truth (file order) with its fixture detections. */
static void send_image(Sender *s, uint64_t epoch, size_t i)
{
    size_t n = fx.img_n[i];
    double *rows = malloc((n + 1) * EVALUATOR_DET_FIELDS * sizeof *rows);
    for (size_t k = 0; k < n; k++) {
        const CocoDetection *d = &fx.img_dets[i][k];
        double *r = rows + k * EVALUATOR_DET_FIELDS;
        memcpy(r, d->bbox, sizeof d->bbox);
        r[4] = d->score, r[5] = (double)d->category_id;
    }
    WireWriter w;
    wire_writer_init(&w, "detections", 3);
    wire_put_uint(&w, "epoch", epoch);
    wire_put_int(&w, "image_id", fx.gt.images[i].id);
    wire_put_bin(&w, "dets", rows, n * EVALUATOR_DET_FIELDS * sizeof *rows);
    send_writer(s, &w);
    free(rows);
}

static void send_epoch_end(Sender *s, uint64_t epoch, uint64_t images)
{
    WireWriter w;
    wire_writer_init(&w, "epoch_end", 2);
    wire_put_uint(&w, "epoch", epoch);
    wire_put_uint(&w, "images", images);
    send_writer(s, &w);
}

static void send_shutdown(Sender *s)
{
    WireWriter w;
    wire_writer_init(&w, "shutdown", 0);
    send_writer(s, &w);
}

/* The lowest image id among the images not in sent[0, n) (ground-truth indices): the first
 * missing image, as the evaluator names it. */
static int64_t first_missing(const size_t *sent, size_t n)
{
    int64_t best = INT64_MAX;
    for (size_t i = 0; i < fx.gt.n_images; i++) {
        int was_sent = 0;
        for (size_t k = 0; k < n; k++) was_sent |= sent[k] == i;
        if (!was_sent && fx.gt.images[i].id < best) best = fx.gt.images[i].id;
    }
    return best;
}

/* Every image of the epoch except `skip` (SIZE_MAX: none). */
static void send_epoch(Sender *s, uint64_t epoch, size_t skip)
{
    for (size_t i = 0; i < fx.gt.n_images; i++)
        if (i != skip) send_image(s, epoch, i);
}

/* ---- checking what was published ------------------------------------------------------------- */

typedef struct Outbox {
    size_t n;
    uint8_t *msg[32];
    size_t len[32];
} Outbox;

static int capture(void *ctx, const void *msg, size_t len)
{
    Outbox *o = ctx;
    assert_true(o->n < 32);
    o->msg[o->n] = malloc(len);
    memcpy(o->msg[o->n], msg, len);
    o->len[o->n++] = len;
    return 0;
}

static void outbox_clear(Outbox *o)
{
    for (size_t i = 0; i < o->n; i++) free(o->msg[i]);
    o->n = 0;
}

static void decode_or_fail(WireMsg *m, const void *msg, size_t len)
{
    WireLimits lim = wire_limits_default();
    Err err;
    wire_msg_init(m);
    if (wire_decode(m, msg, len, &lim, &err)) fail_msg("published: %s", err.msg);
}

/* A metrics message of epoch whose numbers are the fixture's expected ones. */
static void check_metrics(const void *msg, size_t len, uint64_t epoch)
{
    WireMsg m;
    Err err;
    uint64_t e, images;
    double stats[COCO_EVAL_NUM_STATS];
    WireTensor ids, ap;
    decode_or_fail(&m, msg, len);
    assert_string_equal(m.type, "metrics");
    if (wire_get_uint(&m.root, "epoch", &e, &err) ||
        wire_get_uint(&m.root, "images", &images, &err) ||
        wire_get_f64_array(&m.root, "stats", stats, COCO_EVAL_NUM_STATS, &err) ||
        wire_get_tensor(&m.root, "category_ids", &ids, &err) ||
        wire_get_tensor(&m.root, "category_ap", &ap, &err))
        fail_msg("%s", err.msg);
    assert_int_equal(e, epoch);
    assert_int_equal(images, fx.gt.n_images);
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        if (!(fabs(stats[s] - fx.stats[s]) <= 1e-12))
            fail_msg("epoch %llu: %s = %.17g, expected %.17g", (unsigned long long)epoch,
                     coco_eval_stat_names[s], stats[s], fx.stats[s]);
    assert_true(ids.dtype == ST_I64 && ap.dtype == ST_F64);
    assert_int_equal(ids.shape[0], (int64_t)fx.n_cat);
    assert_int_equal(ap.shape[0], (int64_t)fx.n_cat);
    for (size_t k = 0; k < fx.n_cat; k++) {
        int64_t id;
        double v;
        memcpy(&id, (const char *)ids.data + 8 * k, 8);
        memcpy(&v, (const char *)ap.data + 8 * k, 8);
        size_t j = 0;
        while (j < fx.n_cat && fx.cat_ids[j] != id) j++;
        assert_true(j < fx.n_cat);
        if (!(fabs(v - fx.cat_ap[j]) <= 1e-12))
            fail_msg("category %lld: AP %.17g, expected %.17g", (long long)id, v, fx.cat_ap[j]);
    }
    wire_msg_free(&m);
}

enum { NO_IMAGE = -1 }; /* check_error: the error must not name an image */

/* An error message of that kind and epoch whose text holds what, naming image_id (or none). */
static void check_error(const void *msg, size_t len, const char *kind, uint64_t epoch,
                        int64_t image_id, const char *what)
{
    WireMsg m;
    Err err;
    const char *k, *w;
    size_t klen, wlen;
    uint64_t e;
    int64_t id;
    decode_or_fail(&m, msg, len);
    if (strcmp(m.type, "error")) fail_msg("published a '%s', expected an error '%s'", m.type, kind);
    if (wire_get_str(&m.root, "kind", &k, &klen, &err) ||
        wire_get_str(&m.root, "what", &w, &wlen, &err) ||
        wire_get_uint(&m.root, "epoch", &e, &err))
        fail_msg("%s", err.msg);
    char text[1200];
    snprintf(text, sizeof text, "%.*s", (int)wlen, w);
    if (klen != strlen(kind) || memcmp(k, kind, klen) || !strstr(text, what))
        fail_msg("error %.*s '%s', expected %s '%s'", (int)klen, k, text, kind, what);
    assert_int_equal(e, epoch);
    if (image_id == NO_IMAGE) {
        assert_false(wire_has(&m.root, "image_id"));
    } else {
        if (wire_get_int(&m.root, "image_id", &id, &err)) fail_msg("%s", err.msg);
        assert_int_equal(id, image_id);
    }
    wire_msg_free(&m);
}

/* ---- in-process: the state machine ----------------------------------------------------------- */

typedef struct Local {
    Outbox out;
    Sender s;
} Local;

static Local *local_new(double timeout_s)
{
    Local *l = calloc(1, sizeof *l);
    CocoDataset gt;
    Err err;
    WireLimits lim = wire_limits_default();
    if (coco_dataset_load(&gt, fx.gt_path, &err)) fail_msg("%s", err.msg);
    l->s.ev = evaluator_create(&gt, timeout_s, &lim, capture, &l->out);
    return l;
}

static void local_free(Local *l)
{
    evaluator_free(l->s.ev);
    outbox_clear(&l->out);
    free(l);
}

static void test_epoch(void **state)
{
    Local *l = local_new(10);
    evaluator_announce(l->s.ev);
    assert_int_equal(l->out.n, 1);
    outbox_clear(&l->out);
    send_epoch(&l->s, 0, SIZE_MAX);
    assert_int_equal(l->out.n, 0); /* all images in, but no epoch_end yet */
    send_epoch_end(&l->s, 0, fx.gt.n_images);
    assert_int_equal(l->out.n, 1);
    check_metrics(l->out.msg[0], l->out.len[0], 0);
    assert_int_equal(evaluator_counts(l->s.ev)->evaluated, 1);
    local_free(l);
}

/* Epochs 0 and 1 interleaved image by image, 1's epoch_end before 0's last image. */
static void test_interleaved_epochs(void **state)
{
    Local *l = local_new(10);
    size_t n = fx.gt.n_images;
    send_epoch_end(&l->s, 1, n);
    for (size_t i = 0; i < n; i++) {
        send_image(&l->s, 1, i);
        if (i + 1 < n) send_image(&l->s, 0, i);
    }
    assert_int_equal(l->out.n, 1);
    check_metrics(l->out.msg[0], l->out.len[0], 1);
    send_epoch_end(&l->s, 0, n);
    send_image(&l->s, 0, n - 1);
    assert_int_equal(l->out.n, 2);
    check_metrics(l->out.msg[1], l->out.len[1], 0);
    local_free(l);
}

static void test_duplicate_late_busy(void **state)
{
    Local *l = local_new(10);
    size_t n = fx.gt.n_images;
    int64_t id3 = fx.gt.images[3].id;
    send_image(&l->s, 0, 3);
    send_image(&l->s, 0, 3); /* counted once: the stats below would differ otherwise */
    assert_int_equal(l->out.n, 1);
    check_error(l->out.msg[0], l->out.len[0], "duplicate", 0, id3, "delivered twice");
    send_image(&l->s, 1, 0);
    send_image(&l->s, 2, 0); /* a third epoch while 0 and 1 are open */
    check_error(l->out.msg[1], l->out.len[1], "busy", 2, fx.gt.images[0].id, "at most 2");
    send_epoch(&l->s, 0, 3);
    send_epoch_end(&l->s, 0, n);
    assert_int_equal(l->out.n, 3);
    check_metrics(l->out.msg[2], l->out.len[2], 0);
    send_image(&l->s, 0, 5); /* epoch 0 is finished */
    check_error(l->out.msg[3], l->out.len[3], "late", 0, fx.gt.images[5].id, "was evaluated");
    send_epoch_end(&l->s, 1, n);
    send_epoch_end(&l->s, 1, n);
    check_error(l->out.msg[4], l->out.len[4], "duplicate", 1, NO_IMAGE, "epoch_end received twice");
    const EvaluatorCounts *c = evaluator_counts(l->s.ev);
    assert_int_equal(c->duplicates, 2);
    assert_int_equal(c->busy, 1);
    assert_int_equal(c->late, 1);
    local_free(l);
}

/* A missing image: reported timeout seconds after epoch_end and again every timeout; when it
 * comes, the epoch is evaluated. */
static void test_missing_image_timeout(void **state)
{
    Local *l = local_new(2);
    size_t n = fx.gt.n_images, skip = 7;
    l->s.now = 100;
    send_epoch(&l->s, 4, skip);
    send_epoch_end(&l->s, 4, n);
    assert_true(evaluator_next_deadline(l->s.ev) == 102);
    evaluator_tick(l->s.ev, 101.9);
    assert_int_equal(l->out.n, 0);
    evaluator_tick(l->s.ev, 102);
    assert_int_equal(l->out.n, 1);
    int64_t first = fx.gt.images[skip].id;
    char what[128];
    snprintf(what, sizeof what, "1 of %zu images missing, the first is image %lld", n,
             (long long)first);
    check_error(l->out.msg[0], l->out.len[0], "incomplete", 4, first, what);
    assert_true(evaluator_next_deadline(l->s.ev) == 104);
    send_image(&l->s, 4, skip);
    assert_int_equal(l->out.n, 2);
    check_metrics(l->out.msg[1], l->out.len[1], 4);
    assert_true(isinf(evaluator_next_deadline(l->s.ev)));
    local_free(l);
}

static void test_malformed(void **state)
{
    Local *l = local_new(10);
    WireWriter w;
    const double bad_cat[6] = {1, 2, 3, 4, 0.5, 1.5}, nan_score[6] = {1, 2, 3, 4, NAN, 1};
    int64_t id0 = fx.gt.images[0].id;
    /* not attributable: counted and logged, nothing published */
    send_bytes(&l->s, "garbage", 7);
    send_bytes(&l->s, "\x91\x01", 2);
    wire_writer_init(&w, "hello", 0);
    send_writer(&l->s, &w);
    wire_writer_init(&w, "detections", 1);
    wire_put_uint(&w, "epoch", 0);
    send_writer(&l->s, &w);
    assert_int_equal(l->out.n, 0);
    assert_int_equal(evaluator_counts(l->s.ev)->malformed, 4);
    /* attributable but wrong: published as "rejected", the image stays missing */
    wire_writer_init(&w, "detections", 3);
    wire_put_uint(&w, "epoch", 0);
    wire_put_int(&w, "image_id", id0);
    wire_put_bin(&w, "dets", bad_cat, 47);
    send_writer(&l->s, &w);
    check_error(l->out.msg[0], l->out.len[0], "rejected", 0, id0,
                "field 'dets' is 47 bytes, expected a multiple of 48");
    const double *rows[2] = {bad_cat, nan_score};
    const char *want[2] = {"category_id 1.5 is not an integer", "NaN"};
    for (int k = 0; k < 2; k++) {
        wire_writer_init(&w, "detections", 3);
        wire_put_uint(&w, "epoch", 0);
        wire_put_int(&w, "image_id", id0);
        wire_put_bin(&w, "dets", rows[k], sizeof bad_cat);
        send_writer(&l->s, &w);
        check_error(l->out.msg[1 + k], l->out.len[1 + k], "rejected", 0, id0, want[k]);
    }
    /* images the ground truth lacks, in two new epochs: refused without opening them */
    for (uint64_t e = 77; e <= 78; e++) {
        wire_writer_init(&w, "detections", 3);
        wire_put_uint(&w, "epoch", e);
        wire_put_int(&w, "image_id", -77);
        wire_put_bin(&w, "dets", NULL, 0);
        send_writer(&l->s, &w);
        check_error(l->out.msg[e - 74], l->out.len[e - 74], "rejected", e, -77,
                    "not in the ground truth");
    }
    send_image(&l->s, 1, 0); /* epochs 0 and 1 open: 77 and 78 took no slot */
    assert_int_equal(l->out.n, 5);
    /* the epoch still evaluates to the expected numbers */
    send_epoch(&l->s, 0, SIZE_MAX);
    send_epoch_end(&l->s, 0, fx.gt.n_images + 1);
    check_error(l->out.msg[5], l->out.len[5], "count", 0, NO_IMAGE, "announces 52 images");
    check_metrics(l->out.msg[6], l->out.len[6], 0);
    assert_int_equal(evaluator_counts(l->s.ev)->rejected, 5);
    assert_int_equal(evaluator_counts(l->s.ev)->busy, 0);
    local_free(l);
}

static void test_shutdown_reports_open_epochs(void **state)
{
    Local *l = local_new(10);
    send_image(&l->s, 9, 2);
    send_shutdown(&l->s);
    assert_true(l->s.shutdown_seen);
    evaluator_finish(l->s.ev);
    assert_int_equal(l->out.n, 1);
    const size_t sent[] = {2};
    check_error(l->out.msg[0], l->out.len[0], "incomplete", 9, first_missing(sent, 1),
                "at shutdown:");
    local_free(l);
}

/* ---- the real process ------------------------------------------------------------------------ */

typedef struct Proc {
    pid_t pid;
    char dir[RUNDIR_CAP], log[RUNDIR_CAP + 32];
    char listen[ZMQ_UTIL_ENDPOINT_CAP], publish[ZMQ_UTIL_ENDPOINT_CAP];
    void *ctx;
    ZmqSocket push, pull;
    Sender s;
} Proc;

static Proc proc;

static int proc_setup(void **state)
{
    Err err;
    memset(&proc, 0, sizeof proc);
    if (!getenv("EFFDET_BIN")) return 0; /* the tests skip */
    ZmqSocketConfig push_cfg = {ZMQ_PUSH, 1 << 20, 0, 0}, pull_cfg = {ZMQ_PULL, 1 << 20, 0, 0};
    if (rundir_create(proc.dir, &err) || rundir_endpoint(proc.dir, "ev.sock", proc.listen, &err) ||
        rundir_endpoint(proc.dir, "coord.sock", proc.publish, &err) ||
        !(proc.ctx = zmq_util_ctx_new(&err)) ||
        zmq_util_bind(&proc.pull, proc.ctx, &pull_cfg, proc.publish, &err) ||
        zmq_util_connect(&proc.push, proc.ctx, &push_cfg, proc.listen, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    snprintf(proc.log, sizeof proc.log, "%s/evaluator.log", proc.dir);
    proc.s.sock = &proc.push;
    return 0;
}

/* Kills the child if it still runs, then removes sockets and the run directory. */
static int proc_teardown(void **state)
{
    Err err;
    if (proc.pid > 0 && kill(proc.pid, SIGKILL) == 0) waitpid(proc.pid, NULL, 0);
    proc.pid = 0;
    zmq_util_close(&proc.push);
    zmq_util_close(&proc.pull);
    zmq_util_ctx_term(proc.ctx);
    if (proc.dir[0] && rundir_remove(proc.dir, &err)) fprintf(stderr, "%s\n", err.msg);
    return 0;
}

static void proc_spawn(const char *const *args)
{
    char bin[1024];
    const char *dir = getenv("EFFDET_BIN");
    if (!dir) skip();
    snprintf(bin, sizeof bin, "%s/effdet-evaluator", dir);
    const char *argv[16] = {bin};
    for (int i = 0; args[i]; i++) argv[i + 1] = args[i];
    posix_spawn_file_actions_t fa;
    assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
    int flags = O_WRONLY | O_CREAT | O_TRUNC;
    assert_int_equal(posix_spawn_file_actions_addopen(&fa, 2, proc.log, flags, 0600), 0);
    setenv("EFFDET_LOG", "info", 1);
    int rc = posix_spawn(&proc.pid, bin, &fa, NULL, (char *const *)argv, environ);
    setenv("EFFDET_LOG", "error", 1);
    posix_spawn_file_actions_destroy(&fa);
    if (rc) fail_msg("spawn %s: %s", bin, strerror(rc));
}

static void proc_spawn_evaluator(const char *timeout)
{
    const char *args[] = {"--gt", fx.gt_path, "--listen", proc.listen, "--publish", proc.publish,
                          "--timeout", timeout, NULL};
    proc_spawn(args);
}

/* The exit status, waiting up to 10 s. */
static int proc_wait(void)
{
    int status;
    for (int k = 0; k < 1000; k++) {
        pid_t r = waitpid(proc.pid, &status, WNOHANG);
        if (r == proc.pid) {
            proc.pid = 0;
            if (!WIFEXITED(status)) fail_msg("evaluator killed by signal %d", WTERMSIG(status));
            return WEXITSTATUS(status);
        }
        assert_int_equal(r, 0);
        usleep(10000);
    }
    fail_msg("evaluator did not exit within 10 s");
    return -1;
}

/* The next published message (5 s at most) into out; returns its length. */
static size_t proc_recv(uint8_t **out)
{
    zmq_msg_t msg;
    Err err;
    int rc = zmq_util_recv(&proc.pull, &msg, 5000, &err);
    if (rc != 0) fail_msg("nothing published within 5 s (%d: %s)", rc, rc < 0 ? err.msg : "");
    size_t len = zmq_msg_size(&msg);
    *out = malloc(len + 1);
    memcpy(*out, zmq_msg_data(&msg), len);
    zmq_msg_close(&msg);
    return len;
}

static void proc_expect_ready(void)
{
    uint8_t *msg;
    size_t len = proc_recv(&msg);
    WireMsg m;
    Err err;
    uint64_t images;
    decode_or_fail(&m, msg, len);
    assert_string_equal(m.type, "ready");
    if (wire_get_uint(&m.root, "images", &images, &err)) fail_msg("%s", err.msg);
    assert_int_equal(images, fx.gt.n_images);
    wire_msg_free(&m);
    free(msg);
}

static void proc_expect_error(const char *kind, uint64_t epoch, int64_t image_id, const char *what)
{
    uint8_t *msg;
    size_t len = proc_recv(&msg);
    check_error(msg, len, kind, epoch, image_id, what);
    free(msg);
}

static int log_contains(const char *needle)
{
    char *text = read_text(proc.log);
    int found = strstr(text, needle) != NULL;
    free(text);
    return found;
}

static void test_process(void **state)
{
    proc_spawn_evaluator("0.3");
    proc_expect_ready();
    /* epoch 0: everything, one duplicate, and two malformed messages on the way */
    send_image(&proc.s, 0, 0);
    send_image(&proc.s, 0, 0);
    send_bytes(&proc.s, "\xc1garbage", 8);
    assert_true(zmq_send(proc.push.sock, "a", 1, ZMQ_SNDMORE) == 1 &&
                zmq_send(proc.push.sock, "b", 1, 0) == 1); /* a two-part message */
    send_epoch(&proc.s, 0, 0);
    send_epoch_end(&proc.s, 0, fx.gt.n_images);
    proc_expect_error("duplicate", 0, fx.gt.images[0].id, "delivered twice");
    uint8_t *msg;
    size_t len = proc_recv(&msg);
    check_metrics(msg, len, 0);
    free(msg);
    /* epoch 1 without image 4: reported after --timeout, and again at shutdown */
    send_epoch(&proc.s, 1, 4);
    send_epoch_end(&proc.s, 1, fx.gt.n_images);
    proc_expect_error("incomplete", 1, fx.gt.images[4].id, "0.3 s after epoch_end: 1 of 51 images");
    send_shutdown(&proc.s);
    /* the 0.3 s report may come again before the shutdown one */
    for (int k = 0;; k++) {
        len = proc_recv(&msg);
        WireMsg m;
        const char *what;
        size_t wlen;
        Err err;
        decode_or_fail(&m, msg, len);
        assert_int_equal(wire_get_str(&m.root, "what", &what, &wlen, &err), 0);
        int at_shutdown = memmem(what, wlen, "at shutdown", 11) != NULL;
        wire_msg_free(&m);
        if (at_shutdown) check_error(msg, len, "incomplete", 1, fx.gt.images[4].id, "at shutdown");
        free(msg);
        if (at_shutdown) break;
        assert_true(k < 20);
    }
    assert_int_equal(proc_wait(), 0);
    if (!log_contains("2 malformed") || !log_contains("1 epochs evaluated"))
        fail_msg("evaluator log lacks the counts:\n%s", read_text(proc.log));
}

static void test_process_sigterm(void **state)
{
    proc_spawn_evaluator("60");
    proc_expect_ready();
    send_image(&proc.s, 2, 1);
    send_image(&proc.s, 2, 0);
    /* the image must be in before the signal: a duplicate's error is the acknowledgment */
    send_image(&proc.s, 2, 0);
    proc_expect_error("duplicate", 2, fx.gt.images[0].id, "delivered twice");
    assert_int_equal(kill(proc.pid, SIGTERM), 0);
    const size_t sent[] = {0, 1};
    proc_expect_error("incomplete", 2, first_missing(sent, 2),
                      "at shutdown: 49 of 51 images missing");
    assert_int_equal(proc_wait(), 0);
}

static void test_process_bad_start(void **state)
{
    const char *no_gt[] = {"--listen", proc.listen, "--publish", proc.publish, NULL};
    proc_spawn(no_gt);
    assert_int_equal(proc_wait(), 2);
    assert_true(log_contains("--gt, --listen and --publish are required"));
    const char *bad_timeout[] = {"--gt", "x", "--listen", "a", "--publish", "b",
                                 "--timeout", "-1", NULL};
    proc_spawn(bad_timeout);
    assert_int_equal(proc_wait(), 2);
    const char *missing[] = {"--gt", "/nonexistent/gt.json", "--listen", proc.listen,
                             "--publish", proc.publish, NULL};
    proc_spawn(missing);
    assert_int_equal(proc_wait(), 1);
    assert_true(log_contains("effdet-evaluator: /nonexistent/gt.json: No such file or directory"));
    const char *bad_endpoint[] = {"--gt", fx.gt_path, "--listen", "bogus://x", "--publish",
                                  proc.publish, NULL};
    proc_spawn(bad_endpoint);
    assert_int_equal(proc_wait(), 1);
    assert_true(log_contains("effdet-evaluator: bogus://x: bind: Protocol not supported"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch),
        cmocka_unit_test(test_interleaved_epochs),
        cmocka_unit_test(test_duplicate_late_busy),
        cmocka_unit_test(test_missing_image_timeout),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_shutdown_reports_open_epochs),
        cmocka_unit_test_setup_teardown(test_process, proc_setup, proc_teardown),
        cmocka_unit_test_setup_teardown(test_process_sigterm, proc_setup, proc_teardown),
        cmocka_unit_test_setup_teardown(test_process_bad_start, proc_setup, proc_teardown),
    };
    return cmocka_run_group_tests(tests, fixture_setup, fixture_teardown);
}
