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
    int rc = model_set_tf32(&p->model, o->tf32, err);
    if (rc == 0) rc = o->weights_later ? 0
             : o->weights     ? model_load_weights(&p->model, o->weights, err)
                              : model_init_random(&p->model, 1234, err);
    if (rc == 0 && model_plan(&p->model, p->batch, p->h, p->w, PLAN_INFER, err) != 0) {
        err_wrap(err, "--image-size %dx%d: ", p->h, p->w);
        rc = -1;
    }
    if (rc == 0) rc = anchors_build(&p->anchors, &p->cfg, p->h, p->w, err);
    if (rc == 0) rc = detector_init(&p->detector, &p->model, &p->anchors, err);
    if (rc != 0) goto fail;
    size_t in_count = (size_t)p->batch * p->h * p->w * 3;
    p->host_input = malloc(in_count * sizeof(float));
    p->slots = calloc((size_t)p->batch, sizeof *p->slots);
    p->dets = malloc((size_t)p->batch * p->cfg.max_det_per_image * sizeof *p->dets);
    p->img_scale = malloc((size_t)p->batch * sizeof *p->img_scale);
    p->orig_w = malloc((size_t)p->batch * sizeof *p->orig_w);
    p->orig_h = malloc((size_t)p->batch * sizeof *p->orig_h);
    if (!p->host_input || !p->slots || !p->dets || !p->img_scale || !p->orig_w || !p->orig_h) goto oom;
    return 0;
oom:
    err_set(err, "infer: out of memory for batch %d at %dx%d", p->batch, p->h, p->w);
fail:
    infer_pipeline_free(p);
    return -1;
}

void infer_pipeline_free(InferPipeline *p)
{
    detector_free(&p->detector); /* before the model: it frees backend memory */
    model_free(&p->model);
    anchors_free(&p->anchors);
    free(p->host_input), free(p->slots), free(p->dets);
    free(p->img_scale), free(p->orig_w), free(p->orig_h);
    p->host_input = NULL, p->slots = NULL, p->dets = NULL;
    p->img_scale = NULL, p->orig_w = p->orig_h = NULL;
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
    for (int i = 0; i < n; i++) {
        p->img_scale[i] = p->slots[i].img_scale;
        p->orig_w[i] = p->slots[i].orig_w, p->orig_h[i] = p->slots[i].orig_h;
    }
    detector_run(&p->detector, n, p->img_scale, p->orig_w, p->orig_h, p->dets, res->count);
    res->dets = p->dets;
    for (int i = 0; i < n; i++) {
        Detection *d = p->dets + (size_t)i * c->max_det_per_image;
        int kept = 0;
        if (p->slots[i].ok)
            for (int j = 0; j < res->count[i]; j++)
                if (d[j].score >= p->score_thresh) d[kept++] = d[j];
        res->count[i] = kept;
    }
    (void)err;
    return 0;
}
