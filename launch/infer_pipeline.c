/* infer_pipeline.c: decode, letterbox, forward, post-process (see infer_pipeline.h). */
#include "launch/infer_pipeline.h"

#include <stdlib.h>
#include <string.h>

#include "augment/resize.h"
#include "shared/check.h"

int infer_pipeline_init(InferPipeline *p, const InferOptions *o, Err *err)
{
    memset(p, 0, sizeof *p);
    int dev;
    const Ops *ops = ops_for_device(o->device, &dev, err);
    if (!ops || model_config_get(o->model, o->num_classes, &p->cfg, err) != 0) return -1;
    if (o->batch < 1 || o->batch > 4096) return err_set(err, "--batch-size %d: expected 1..4096", o->batch);
    p->batch = o->batch;
    p->h = o->h ? o->h : p->cfg.image_h;
    p->w = o->w ? o->w : p->cfg.image_w;
    p->score_thresh = o->score_thresh;
    if (model_create(&p->model, &p->cfg, ops, dev, err) != 0) return -1;
    int rc = o->weights_later ? 0
             : o->weights     ? model_load_weights(&p->model, o->weights, err)
                              : model_init_random(&p->model, 1234, err);
    if (rc == 0 && model_plan(&p->model, p->batch, p->h, p->w, PLAN_INFER, err) != 0) {
        err_wrap(err, "--image-size %dx%d: ", p->h, p->w);
        rc = -1;
    }
    if (rc == 0) rc = anchors_build(&p->anchors, &p->cfg, p->h, p->w, err);
    if (rc == 0) rc = postprocess_init(&p->post, &p->cfg, &p->anchors, err);
    if (rc != 0) goto fail;
    size_t in_count = (size_t)p->batch * p->h * p->w * 3;
    p->host_input = malloc(in_count * sizeof(float));
    p->slots = calloc((size_t)p->batch, sizeof *p->slots);
    p->dets = malloc((size_t)p->batch * p->cfg.max_det_per_image * sizeof *p->dets);
    if (!p->host_input || !p->slots || !p->dets) goto oom;
    if (!ops->host_memory) {
        for (int l = 0; l < p->cfg.num_levels; l++) {
            p->host_cls[l] = malloc(act_count(p->model.class_out[l]) * sizeof(float));
            p->host_box[l] = malloc(act_count(p->model.box_out[l]) * sizeof(float));
            if (!p->host_cls[l] || !p->host_box[l]) goto oom;
        }
    }
    return 0;
oom:
    err_set(err, "infer: out of memory for batch %d at %dx%d", p->batch, p->h, p->w);
fail:
    infer_pipeline_free(p);
    return -1;
}

void infer_pipeline_free(InferPipeline *p)
{
    model_free(&p->model);
    anchors_free(&p->anchors);
    postprocess_free(&p->post);
    free(p->host_input), free(p->slots), free(p->dets);
    p->host_input = NULL, p->slots = NULL, p->dets = NULL;
    for (int l = 0; l < MAX_LEVELS; l++) {
        free(p->host_cls[l]), free(p->host_box[l]);
        p->host_cls[l] = p->host_box[l] = NULL;
    }
    rgb_image_free(&p->decoded);
    rgb_image_free(&p->boxed);
}

/* The eval transform of one decoded image into batch slot `slot` of the staging input. */
static int place(InferPipeline *p, int slot, Err *err)
{
    InferSlot *s = &p->slots[slot];
    float scale;
    if (letterbox_rgb(&p->decoded, p->h, p->w, resize_imagenet_fill, RESIZE_BILINEAR, &p->boxed,
                      &scale, err) != 0)
        return -1;
    normalize_rgb_to_nhwc(&p->boxed, p->host_input + (size_t)slot * p->h * p->w * 3,
                          resize_imagenet_mean, resize_imagenet_std);
    s->ok = 1;
    s->orig_w = p->decoded.w, s->orig_h = p->decoded.h;
    s->img_scale = scale;
    return 0;
}

int infer_pipeline_add_file(InferPipeline *p, const char *path, int slot, Err *err)
{
    ASSERT(slot >= 0 && slot < p->batch);
    p->slots[slot].ok = 0;
    JpegDecodeOptions opt = {.max_pixels = JPEG_MAX_PIXELS_DEFAULT};
    if (jpeg_decode_file(path, &opt, &p->decoded, err) != 0) return -1;
    return place(p, slot, err);
}

int infer_pipeline_add_jpeg(InferPipeline *p, const uint8_t *buf, size_t len, int slot,
                            const char *name, Err *err)
{
    ASSERT(slot >= 0 && slot < p->batch);
    p->slots[slot].ok = 0;
    JpegDecodeOptions opt = {.max_pixels = JPEG_MAX_PIXELS_DEFAULT};
    if (jpeg_decode_mem(buf, len, name, &opt, &p->decoded, err) != 0) return -1;
    return place(p, slot, err);
}

int infer_pipeline_run(InferPipeline *p, int n, InferResult *res, Err *err)
{
    ASSERT(n >= 1 && n <= p->batch && n <= 4096);
    Model *m = &p->model;
    const ModelConfig *c = &p->cfg;
    /* Failed slots are zero-filled so the batch stays well defined; their results are dropped. */
    for (int i = 0; i < n; i++)
        if (!p->slots[i].ok) memset(p->host_input + (size_t)i * p->h * p->w * 3, 0, (size_t)p->h * p->w * 3 * sizeof(float));
    m->ops->mem_upload(m->ctx, m->input.p, p->host_input, (size_t)p->batch * p->h * p->w * 3 * sizeof(float));
    model_forward(m);
    const float *cls_all[MAX_LEVELS], *box_all[MAX_LEVELS];
    for (int l = 0; l < c->num_levels; l++) {
        cls_all[l] = m->class_out[l].p, box_all[l] = m->box_out[l].p;
        if (!m->ops->host_memory) {
            m->ops->mem_download(m->ctx, p->host_cls[l], m->class_out[l].p, act_count(m->class_out[l]) * sizeof(float));
            m->ops->mem_download(m->ctx, p->host_box[l], m->box_out[l].p, act_count(m->box_out[l]) * sizeof(float));
            cls_all[l] = p->host_cls[l], box_all[l] = p->host_box[l];
        }
    }
    int A = model_config_anchors_per_loc(c);
    res->dets = p->dets;
    for (int i = 0; i < n; i++) {
        res->count[i] = 0;
        if (!p->slots[i].ok) continue;
        const float *cls[MAX_LEVELS], *box[MAX_LEVELS];
        for (int l = 0; l < c->num_levels; l++) {
            size_t cells = (size_t)m->feat_h[l] * m->feat_w[l];
            cls[l] = cls_all[l] + i * cells * A * c->num_classes;
            box[l] = box_all[l] + i * cells * A * 4;
        }
        Detection *d = p->dets + (size_t)i * c->max_det_per_image;
        int k = postprocess_image(&p->post, cls, box, p->slots[i].img_scale, p->slots[i].orig_w,
                                  p->slots[i].orig_h, d);
        int kept = 0;
        for (int j = 0; j < k; j++)
            if (d[j].score >= p->score_thresh) d[kept++] = d[j];
        res->count[i] = kept;
    }
    (void)err;
    return 0;
}
