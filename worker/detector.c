/* detector.c: detections on the backend or on the host, and the forward pass with them as one
 * graph (see detector.h). */
#include "worker/detector.h"

#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"

static int backend_init(Detector *d, Err *err)
{
    Model *m = d->model;
    const Ops *o = m->ops;
    const ModelConfig *c = &m->cfg;
    int count = d->anchors->count, max_det = c->max_det_per_image;
    long total = (long)count * c->num_classes;
    int k = total < c->max_detection_points ? (int)total : c->max_detection_points;
    size_t ws = o->detect_workspace_bytes(d->batch, count, c->num_classes, k, max_det);
    if (o->workspace_reserve(m->ctx, ws, err) != 0) return err_wrap(err, "detections on %s: ", o->name);
    d->anchors_dev = o->mem_alloc(m->ctx, (size_t)count * 4 * sizeof(float), err);
    d->dets_dev = d->anchors_dev ? o->mem_alloc(m->ctx, (size_t)d->batch * max_det * 6 * sizeof(float), err) : NULL;
    d->n_dev = d->dets_dev ? o->mem_alloc(m->ctx, (size_t)d->batch * sizeof(int32_t), err) : NULL;
    if (!d->n_dev) return -1;
    d->dets_host = malloc((size_t)d->batch * max_det * 6 * sizeof(float));
    d->n_host = malloc((size_t)d->batch * sizeof(int32_t));
    if (!d->dets_host || !d->n_host) return err_set(err, "detector: out of host memory");
    o->mem_upload(m->ctx, d->anchors_dev, d->anchors->boxes, (size_t)count * 4 * sizeof(float));
    return 0;
}

/* The head outputs can be read in place: host memory holding fp32 values. */
static int outputs_readable(const Model *m)
{
    return m->ops->host_memory && m->precision == PREC_FP32;
}

static int host_init(Detector *d, Err *err)
{
    Model *m = d->model;
    if (postprocess_init(&d->post, &m->cfg, d->anchors, err) != 0) return -1;
    if (outputs_readable(m)) return 0;
    for (int l = 0; l < m->cfg.num_levels; l++) {
        d->host_cls[l] = malloc(act_count(m->class_out[l]) * sizeof(float));
        d->host_box[l] = malloc(act_count(m->box_out[l]) * sizeof(float));
        if (!d->host_cls[l] || !d->host_box[l]) return err_set(err, "detector: out of host memory");
    }
    return 0;
}

int detector_init(Detector *d, Model *model, const Anchors *anchors, Err *err)
{
    memset(d, 0, sizeof *d);
    d->model = model;
    d->anchors = anchors;
    d->batch = model->class_out[0].n;
    const char *force_host = getenv("EFFDET_HOST_DETECT");
    d->on_backend = model->ops->detect && !(force_host && !strcmp(force_host, "1"));
    const char *no_graphs = getenv("EFFDET_NO_GRAPHS");
    int graphs = d->on_backend && model->ops->graph_begin && !(no_graphs && !strcmp(no_graphs, "1"));
    d->graph = graphs ? DET_GRAPH_WARMUP : DET_GRAPH_OFF;
    int rc = d->on_backend ? backend_init(d, err) : host_init(d, err);
    if (rc != 0) detector_free(d);
    return rc;
}

void detector_free(Detector *d)
{
    Model *m = d->model;
    if (m && m->ctx) {
        m->ops->mem_free(m->ctx, d->anchors_dev);
        m->ops->mem_free(m->ctx, d->dets_dev);
        m->ops->mem_free(m->ctx, d->n_dev);
    }
    d->anchors_dev = d->dets_dev = NULL, d->n_dev = NULL;
    free(d->dets_host), free(d->n_host);
    d->dets_host = NULL, d->n_host = NULL;
    for (int l = 0; l < MAX_LEVELS; l++) {
        free(d->host_cls[l]), free(d->host_box[l]);
        d->host_cls[l] = d->host_box[l] = NULL;
    }
    postprocess_free(&d->post);
    d->graph = DET_GRAPH_OFF;
}

/* Queues the detect op on the head outputs of the last forward pass (no wait). */
static void detect_queue(Detector *d)
{
    Model *m = d->model;
    const ModelConfig *c = &m->cfg;
    const float *cls[MAX_LEVELS], *box[MAX_LEVELS];
    for (int l = 0; l < c->num_levels; l++) cls[l] = m->class_out[l].p, box[l] = m->box_out[l].p;
    long total = (long)d->anchors->count * c->num_classes;
    int k = total < c->max_detection_points ? (int)total : c->max_detection_points;
    m->ops->detect(m->ctx, d->dets_dev, d->n_dev, cls, box, d->anchors_dev, d->anchors->count,
                   d->anchors->level_start, c->num_levels, d->batch,
                   model_config_anchors_per_loc(c), c->num_classes, k, c->nms_iou,
                   c->max_det_per_image);
}

/* Downloads the detect op's results (waiting for it) and converts images 0..n-1. */
static void detect_fetch(Detector *d, int n, const float *img_scale, const int *orig_w,
                         const int *orig_h, Detection *out, int *count)
{
    Model *m = d->model;
    int max_det = m->cfg.max_det_per_image;
    m->ops->mem_download(m->ctx, d->n_host, d->n_dev, (size_t)d->batch * sizeof(int32_t));
    m->ops->mem_download(m->ctx, d->dets_host, d->dets_dev, (size_t)n * max_det * 6 * sizeof(float));
    for (int i = 0; i < n; i++) {
        ASSERT(d->n_host[i] >= 0 && d->n_host[i] <= max_det);
        count[i] = d->n_host[i];
        for (int j = 0; j < count[i]; j++) {
            const float *r = d->dets_host + ((size_t)i * max_det + j) * 6;
            Detection *o = &out[(size_t)i * max_det + j];
            *o = (Detection){r[0], r[1], r[2], r[3], r[4], (int)r[5]};
            if (img_scale && img_scale[i] > 0)
                postprocess_to_original(o, img_scale[i], orig_w[i], orig_h[i]);
        }
    }
}

static void run_host(Detector *d, int n, const float *img_scale, const int *orig_w,
                     const int *orig_h, Detection *out, int *count)
{
    Model *m = d->model;
    const ModelConfig *c = &m->cfg;
    const float *cls_all[MAX_LEVELS], *box_all[MAX_LEVELS];
    for (int l = 0; l < c->num_levels; l++) {
        cls_all[l] = m->class_out[l].p, box_all[l] = m->box_out[l].p;
        if (outputs_readable(m)) continue;
        model_download(m, d->host_cls[l], m->class_out[l]); /* converted under --amp */
        model_download(m, d->host_box[l], m->box_out[l]);
        cls_all[l] = d->host_cls[l], box_all[l] = d->host_box[l];
    }
    int A = model_config_anchors_per_loc(c);
    for (int i = 0; i < n; i++) {
        const float *cls[MAX_LEVELS], *box[MAX_LEVELS];
        for (int l = 0; l < c->num_levels; l++) {
            size_t cells = (size_t)m->feat_h[l] * m->feat_w[l];
            cls[l] = cls_all[l] + i * cells * A * c->num_classes;
            box[l] = box_all[l] + i * cells * A * 4;
        }
        float s = img_scale ? img_scale[i] : 0.0f;
        count[i] = postprocess_image(&d->post, cls, box, s, s > 0 ? orig_w[i] : 0,
                                     s > 0 ? orig_h[i] : 0, out + (size_t)i * c->max_det_per_image);
    }
}

void detector_run(Detector *d, int n, const float *img_scale, const int *orig_w, const int *orig_h,
                  Detection *out, int *count)
{
    ASSERT(n >= 1 && n <= d->batch);
    if (d->on_backend) {
        detect_queue(d);
        detect_fetch(d, n, img_scale, orig_w, orig_h, out, count);
    } else {
        run_host(d, n, img_scale, orig_w, orig_h, out, count);
    }
}

/* ---- detector_infer: the forward pass and the detections, recorded once ------------------------ */

static DetectorPlanKey plan_key(const Model *m)
{
    return (DetectorPlanKey){.arena = m->arena, .params = m->params, .buffers = m->buffers,
                             .input = m->input.p, .arena_bytes = m->arena_bytes,
                             .batch = m->batch, .h = m->in_h, .w = m->in_w,
                             .reuse = m->reuse, .train = m->train};
}

static int plan_key_equal(const DetectorPlanKey *a, const DetectorPlanKey *b)
{
    return a->arena == b->arena && a->params == b->params && a->buffers == b->buffers &&
           a->input == b->input && a->arena_bytes == b->arena_bytes && a->batch == b->batch &&
           a->h == b->h && a->w == b->w && a->reuse == b->reuse && a->train == b->train;
}

/* A recording the backend refused: the work it held never ran, so the caller runs it eagerly,
 * and so do all later calls (a graph is an optimization; pageable-speed inference still works). */
static void graph_give_up(Detector *d, const Err *why)
{
    log_warn("detector: running without graphs: %s", why->msg);
    d->graph = DET_GRAPH_OFF;
}

/* Records the forward pass + detect op into the detector's slot (nothing runs yet): the state
 * becomes READY, or OFF when the backend refused the recording. */
static void graph_record(Detector *d)
{
    Model *m = d->model;
    Err why;
    if (m->ops->graph_begin(m->ctx, &why) != 0) {
        graph_give_up(d, &why);
        return;
    }
    model_forward(m);
    detect_queue(d);
    if (m->ops->graph_end(m->ctx, DETECTOR_GRAPH_SLOT, &why) != 0) {
        graph_give_up(d, &why);
        return;
    }
    d->graph_key = plan_key(m);
    d->graph = DET_GRAPH_READY;
}

/* Queues the forward pass and the detect op: eagerly, or as a graph replay. */
static int infer_queue(Detector *d, Err *err)
{
    Model *m = d->model;
    if (d->graph == DET_GRAPH_READY) {
        DetectorPlanKey now = plan_key(m);
        if (!plan_key_equal(&now, &d->graph_key)) {
            log_debug("detector: the model's memory moved (a new plan?): recording the graph again");
            d->graph = DET_GRAPH_WARMUP;
        }
    }
    if (d->graph == DET_GRAPH_RECORD) graph_record(d);
    if (d->graph == DET_GRAPH_READY) {
        if (m->ops->graph_launch(m->ctx, DETECTOR_GRAPH_SLOT, err) != 0)
            return err_wrap(err, "detector: replaying the forward graph (detector_drop_graph "
                                 "after changing the context): ");
        return 0;
    }
    model_forward(m);
    detect_queue(d);
    if (d->graph == DET_GRAPH_WARMUP) d->graph = DET_GRAPH_RECORD;
    return 0;
}

int detector_infer(Detector *d, int n, const float *img_scale, const int *orig_w,
                   const int *orig_h, Detection *out, int *count, Err *err)
{
    ASSERT(n >= 1 && n <= d->batch);
    if (!d->on_backend) {
        model_forward(d->model);
        run_host(d, n, img_scale, orig_w, orig_h, out, count);
        return 0;
    }
    if (infer_queue(d, err) != 0) return -1;
    detect_fetch(d, n, img_scale, orig_w, orig_h, out, count);
    return 0;
}

void detector_drop_graph(Detector *d)
{
    if (d->graph != DET_GRAPH_OFF) d->graph = DET_GRAPH_WARMUP;
}
