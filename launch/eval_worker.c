/* eval_worker.c: `effdet eval-worker`, the inference worker of the training topology: evaluates
 * one epoch's EMA snapshot on the evaluation set while training goes on. Every image goes through
 * the inference path of `effdet infer` (infer_pipeline.h); its detections, mapped back to the
 * set's category ids, are sent to the evaluator process (evaluator/evaluator_proc.h: one
 * `detections` message per image, an empty one for an image without detections or an unreadable
 * one, then `epoch_end` with the count). The evaluator publishes the metrics to the coordinator.
 *
 *   effdet eval-worker --model NAME --num-classes K --image-size HxW --batch-size B --device D
 *     --weights SNAPSHOT --epoch E --send EVALUATOR_ENDPOINT --coord ENDPOINT [--tf32]
 *     [--amp-dtype fp16|bf16]
 *     --data DIR | --ann FILE --images DIR
 *
 * Started and supervised by the coordinator; exit 0 once everything is sent (the PUSH socket
 * lingers until the evaluator has it), 1 with one line (also sent to --coord) otherwise. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "launch/infer_pipeline.h"
#include "shared/log.h"
#include "shared/stop_signal.h"
#include "shared/wire.h"
#include "shared/zmq_util.h"

typedef struct EvalWorker {
    InferOptions o;
    const char *data, *ann, *images, *send, *coord;
    long epoch, num_classes, batch;
    Dataset ds;
    InferPipeline p;
    int p_open;
    void *zctx;
    ZmqSocket out, coord_sock;
    double *rows;           /* (max_det, 6) one image's detections */
} EvalWorker;

static int parse(int argc, char **argv, EvalWorker *e, Err *err)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"num-classes", required_argument, 0, 'n'},
        {"image-size", required_argument, 0, 's'}, {"batch-size", required_argument, 0, 'b'},
        {"device", required_argument, 0, 'd'}, {"weights", required_argument, 0, 'W'},
        {"epoch", required_argument, 0, 'e'}, {"send", required_argument, 0, 'S'},
        {"coord", required_argument, 0, 'C'}, {"tf32", no_argument, 0, 'T'},
        {"amp-dtype", required_argument, 0, 'P'},
        {"data", required_argument, 0, 'D'}, {"ann", required_argument, 0, 'A'},
        {"images", required_argument, 0, 'I'}, {0, 0, 0, 0}};
    e->o = (InferOptions){.model = "tf_efficientdet_d0", .device = "cpu", .batch = 1};
    e->batch = 1;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'm': e->o.model = optarg; break;
        case 'n': if (cli_parse_int("--num-classes", optarg, 1, 100000, &e->num_classes, err)) return -1; break;
        case 's': if (cli_parse_hw("--image-size", optarg, &e->o.h, &e->o.w, err)) return -1; break;
        case 'b': if (cli_parse_int("--batch-size", optarg, 1, 4096, &e->batch, err)) return -1; break;
        case 'd': e->o.device = optarg; break;
        case 'W': e->o.weights = optarg; break;
        case 'e': if (cli_parse_int("--epoch", optarg, 0, 1L << 40, &e->epoch, err)) return -1; break;
        case 'S': e->send = optarg; break;
        case 'C': e->coord = optarg; break;
        case 'T': e->o.tf32 = 1; break;
        case 'P': if (precision_parse(optarg, &e->o.precision, err)) return -1; break;
        case 'D': e->data = optarg; break;
        case 'A': e->ann = optarg; break;
        case 'I': e->images = optarg; break;
        default: return err_set(err, "unknown option");
        }
    }
    if (optind != argc) return err_set(err, "unexpected argument '%s'", argv[optind]);
    if (!e->o.weights || !e->send || !e->coord || (!e->data && !(e->ann && e->images)))
        return err_set(err, "--weights, --send, --coord and --data (or --ann and --images) are required");
    e->o.batch = (int)e->batch;
    return 0;
}

static int send_msg(ZmqSocket *s, WireWriter *w, Err *err)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    int rc = zmq_util_send(s, data, len, -1, err);
    wire_writer_free(w);
    return rc == 0 ? 0 : rc < 0 ? -1 : err_set(err, "%s: interrupted", s->endpoint);
}

/* One image's detections, COCO boxes in original pixels with the set's category ids. */
static int send_image(EvalWorker *e, int64_t image_id, const Detection *d, int n, Err *err)
{
    int k = 0;
    for (int j = 0; j < n; j++) {
        int64_t cat = dataset_label_category(&e->ds, d[j].class_id);
        if (cat < 0) continue;
        double *row = e->rows + 6 * k++;
        row[0] = d[j].x1, row[1] = d[j].y1, row[2] = d[j].x2 - d[j].x1, row[3] = d[j].y2 - d[j].y1;
        row[4] = d[j].score, row[5] = (double)cat;
    }
    WireWriter w;
    wire_writer_init(&w, "detections", 3);
    wire_put_uint(&w, "epoch", (uint64_t)e->epoch);
    wire_put_int(&w, "image_id", image_id);
    wire_put_bin(&w, "dets", e->rows, (size_t)k * 6 * sizeof(double));
    return send_msg(&e->out, &w, err);
}

static int run_batch(EvalWorker *e, size_t first, int n, int stop_fd, Err *err)
{
    int ok[4096];
    for (int i = 0; i < n; i++) {
        Err ierr;
        ok[i] = infer_pipeline_add_file(&e->p, e->ds.images[first + i].path, i, &ierr) == 0;
        if (!ok[i]) log_warn("%s (evaluated without detections)", ierr.msg);
    }
    InferResult res;
    if (infer_pipeline_run(&e->p, n, &res, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        const Detection *d = res.dets + (size_t)i * e->p.cfg.max_det_per_image;
        if (send_image(e, e->ds.images[first + i].id, d, ok[i] ? res.count[i] : 0, err) != 0) return -1;
    }
    return stop_signal_raised(stop_fd) ? err_set(err, "stopped by a signal") : 0;
}

static int evaluate(EvalWorker *e, int stop_fd, Err *err)
{
    int rc = e->data ? dataset_open_dir(&e->ds, e->data, (int)e->num_classes, err)
                     : dataset_open(&e->ds, e->ann, e->images, (int)e->num_classes, err);
    if (rc != 0) return -1;
    e->o.num_classes = e->ds.num_classes;
    if (infer_pipeline_init(&e->p, &e->o, err) != 0) return -1;
    e->p_open = 1;
    e->rows = malloc((size_t)e->p.cfg.max_det_per_image * 6 * sizeof(double));
    if (!e->rows) return err_set(err, "out of memory");
    if (!(e->zctx = zmq_util_ctx_new(err))) return -1;
    WireLimits lim = wire_limits_default();
    /* Linger: the process exits right after its last message, which must still arrive. */
    ZmqSocketConfig sc = {.type = ZMQ_PUSH, .max_msg_bytes = (int64_t)lim.max_msg_bytes, .linger_ms = 30000};
    if (zmq_util_connect(&e->out, e->zctx, &sc, e->send, err) != 0) return -1;
    for (size_t first = 0; first < e->ds.n_images; first += (size_t)e->p.batch) {
        int n = e->ds.n_images - first < (size_t)e->p.batch ? (int)(e->ds.n_images - first) : e->p.batch;
        if (run_batch(e, first, n, stop_fd, err) != 0) return -1;
    }
    WireWriter w;
    wire_writer_init(&w, "epoch_end", 2);
    wire_put_uint(&w, "epoch", (uint64_t)e->epoch);
    wire_put_uint(&w, "images", (uint64_t)e->ds.n_images);
    return send_msg(&e->out, &w, err);
}

/* The error goes to the coordinator, which ends the run with it as its one line: 0 when sent. */
static int report_error(EvalWorker *e, const char *what)
{
    Err err;
    if (!e->zctx && !(e->zctx = zmq_util_ctx_new(&err))) return -1;
    ZmqSocketConfig sc = {.type = ZMQ_PUSH, .max_msg_bytes = -1, .linger_ms = 1000};
    if (zmq_util_connect(&e->coord_sock, e->zctx, &sc, e->coord, &err) != 0) return -1;
    WireWriter w;
    wire_writer_init(&w, "error", 1);
    wire_put_str(&w, "what", what);
    return send_msg(&e->coord_sock, &w, &err);
}

int cmd_eval_worker(int argc, char **argv)
{
    EvalWorker e;
    Err err;
    memset(&e, 0, sizeof e);
    if (parse(argc, argv, &e, &err) != 0) return cli_fail("eval-worker", &err);
    int stop_fd = stop_signal_install();
    int rc = evaluate(&e, stop_fd, &err);
    int told = rc != 0 && report_error(&e, err.msg) == 0;
    zmq_util_close(&e.out);
    zmq_util_close(&e.coord_sock);
    zmq_util_ctx_term(e.zctx);
    free(e.rows);
    if (e.p_open) infer_pipeline_free(&e.p);
    dataset_free(&e.ds);
    return rc == 0 ? 0 : told ? 1 : cli_fail("eval-worker", &err);
}
