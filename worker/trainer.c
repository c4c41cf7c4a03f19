/* trainer.c: one training step over the op table (see trainer.h). */
#include "worker/trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"

void train_settings_default(TrainSettings *s, const char *model, int num_classes, int batch,
                            int h, int w)
{
    memset(s, 0, sizeof *s);
    snprintf(s->model, sizeof s->model, "%s", model);
    s->num_classes = num_classes;
    s->batch = batch, s->h = h, s->w = w;
    s->lr = 0.08 * batch / 64.0;
    s->warmup_lr = s->lr / 10;
    s->warmup_steps = 0;
    s->total_steps = 1;
    s->momentum = 0.9, s->weight_decay = 4e-5, s->clip_norm = 10.0;
    s->ema = 1, s->ema_decay = 0.9998;
    s->alpha = 0.25, s->gamma = 1.5, s->delta = 0.1, s->box_weight = 50.0, s->label_smoothing = 0.0;
    s->seed = 42;
}

double trainer_lr_at(const TrainSettings *s, long step)
{
    if (step < s->warmup_steps)
        return s->warmup_lr + (s->lr - s->warmup_lr) * (double)step / (double)s->warmup_steps;
    long decay = s->total_steps - s->warmup_steps;
    if (decay <= 0) return s->lr;
    double progress = (double)(step - s->warmup_steps) / (double)decay;
    if (progress > 1) progress = 1;
    return 0.5 * s->lr * (1 + cos(M_PI * progress));
}

double trainer_ema_decay_at(const TrainSettings *s, long n)
{
    double warm = (1.0 + n) / (10.0 + n);
    return warm < s->ema_decay ? warm : s->ema_decay;
}

static void *backend_alloc(Trainer *t, size_t bytes, Err *err)
{
    return t->model.ops->mem_alloc(t->model.ctx, bytes ? bytes : 1, err);
}

static int alloc_state(Trainer *t, Err *err)
{
    const ParamTable *pt = &t->model.table;
    size_t rows = (size_t)t->s.batch * t->anchors.count;
    t->momentum = backend_alloc(t, pt->n_params * sizeof(float), err);
    t->decay_mask = backend_alloc(t, pt->n_params, err);
    t->cls_target = backend_alloc(t, rows * sizeof(int32_t), err);
    t->box_target = backend_alloc(t, rows * 4 * sizeof(float), err);
    t->scalars = backend_alloc(t, 4 * sizeof(float), err);
    t->cls_target_host = malloc(rows * sizeof(int32_t));
    t->box_target_host = malloc(rows * 4 * sizeof(float));
    if (!t->momentum || !t->decay_mask || !t->cls_target || !t->box_target || !t->scalars ||
        !t->cls_target_host || !t->box_target_host)
        return err_set(err, "trainer: out of memory for batch %d", t->s.batch);
    if (t->s.ema) {
        t->ema_params = backend_alloc(t, pt->n_params * sizeof(float), err);
        t->ema_buffers = backend_alloc(t, pt->n_buffers * sizeof(float), err);
        if (!t->ema_params || !t->ema_buffers) return err_set(err, "trainer: out of memory for the EMA");
    }
    /* Weight decay on conv weights only (not BN, biases or fusion weights), as effdet. */
    uint8_t *mask = calloc(pt->n_params + 1, 1);
    if (!mask) return err_set(err, "trainer: out of memory");
    for (int i = 0; i < pt->count; i++)
        if (pt->specs[i].kind == PARAM_CONV_WEIGHT)
            memset(mask + pt->specs[i].offset, 1, pt->specs[i].count);
    t->model.ops->mem_upload(t->model.ctx, t->decay_mask, mask, pt->n_params);
    free(mask);
    return 0;
}

/* EMA starts as a copy of the weights. */
static void ema_reset(Trainer *t)
{
    if (!t->s.ema) return;
    const Ops *o = t->model.ops;
    o->mem_zero(t->model.ctx, t->ema_params, t->model.table.n_params * sizeof(float));
    o->mem_zero(t->model.ctx, t->ema_buffers, t->model.table.n_buffers * sizeof(float));
    o->ema_update(t->model.ctx, t->ema_params, t->model.params, 0.0f, t->model.table.n_params);
    o->ema_update(t->model.ctx, t->ema_buffers, t->model.buffers, 0.0f, t->model.table.n_buffers);
}

int trainer_init(Trainer *t, const TrainSettings *s, const char *device, const char *weights,
                 Err *err)
{
    memset(t, 0, sizeof *t);
    t->s = *s;
    int dev;
    const Ops *ops = ops_for_device(device, &dev, err);
    if (!ops || model_config_get(s->model, s->num_classes, &t->cfg, err) != 0) return -1;
    if (model_create(&t->model, &t->cfg, ops, dev, err) != 0) return -1;
    t->model.bn_momentum = (float)s->bn_momentum;
    int rc = weights ? model_load_weights(&t->model, weights, err)
                     : model_init_random(&t->model, s->seed, err);
    if (rc == 0) rc = model_plan(&t->model, s->batch, s->h, s->w, PLAN_TRAIN, err);
    if (rc == 0) rc = anchors_build(&t->anchors, &t->cfg, s->h, s->w, err);
    if (rc == 0) rc = labeler_init(&t->labeler, &t->anchors, t->cfg.num_classes, TRAIN_MAX_BOXES, err);
    if (rc == 0) rc = alloc_state(t, err);
    if (rc != 0) {
        trainer_free(t);
        return -1;
    }
    ema_reset(t);
    return 0;
}

void trainer_free(Trainer *t)
{
    if (t->model.ctx) {
        const Ops *o = t->model.ops;
        OpsCtx *c = t->model.ctx;
        o->mem_free(c, t->momentum), o->mem_free(c, t->ema_params), o->mem_free(c, t->ema_buffers);
        o->mem_free(c, t->decay_mask), o->mem_free(c, t->cls_target), o->mem_free(c, t->box_target);
        o->mem_free(c, t->scalars);
    }
    t->momentum = t->ema_params = t->ema_buffers = t->box_target = t->scalars = NULL;
    t->decay_mask = NULL, t->cls_target = NULL;
    free(t->cls_target_host), free(t->box_target_host);
    t->cls_target_host = NULL, t->box_target_host = NULL;
    labeler_free(&t->labeler);
    anchors_free(&t->anchors);
    model_free(&t->model);
}

/* Targets for the batch on the host, then one upload. Returns the total positives or -1. */
static int make_targets(Trainer *t, const float *boxes, const int32_t *classes,
                        const uint8_t *crowd, int max_boxes, Err *err)
{
    int total = 0;
    for (int b = 0; b < t->s.batch; b++) {
        const uint8_t *cr = crowd ? crowd + (size_t)b * max_boxes : NULL;
        int pos = labeler_label_image(&t->labeler, t->cls_target_host, t->box_target_host, b,
                                      t->s.batch, boxes + (size_t)b * max_boxes * 4,
                                      classes + (size_t)b * max_boxes, cr, max_boxes, err);
        if (pos < 0) return err_wrap(err, "image %d of the batch: ", b);
        total += pos;
    }
    size_t rows = (size_t)t->s.batch * t->anchors.count;
    t->model.ops->mem_upload(t->model.ctx, t->cls_target, t->cls_target_host, rows * sizeof(int32_t));
    t->model.ops->mem_upload(t->model.ctx, t->box_target, t->box_target_host, rows * 4 * sizeof(float));
    return total;
}

int trainer_loss_and_grads(Trainer *t, const float *input, const float *boxes,
                           const int32_t *classes, const uint8_t *crowd, int max_boxes,
                           TrainStats *st, Err *err)
{
    Model *m = &t->model;
    const Ops *o = m->ops;
    memset(st, 0, sizeof *st);
    int pos = make_targets(t, boxes, classes, crowd, max_boxes, err);
    if (pos < 0) return -1;
    st->positives = pos;
    o->mem_upload(m->ctx, m->input.p, input, act_count(m->input) * sizeof(float));
    model_forward(m);
    model_zero_grads(m);
    o->mem_zero(m->ctx, t->scalars, 4 * sizeof(float));
    int A = model_config_anchors_per_loc(&t->cfg), B = t->s.batch;
    for (int l = 0; l < t->cfg.num_levels; l++) {
        size_t first = (size_t)B * t->anchors.level_start[l];
        size_t rows = (size_t)B * m->feat_h[l] * m->feat_w[l];
        o->detection_loss(m->ctx, t->scalars, model_grad(m, m->class_out[l]),
                          model_grad(m, m->box_out[l]), m->class_out[l].p, m->box_out[l].p,
                          t->cls_target + first, t->box_target + 4 * first, rows, A,
                          t->cfg.num_classes, (float)(pos + 1), (float)t->s.alpha,
                          (float)t->s.gamma, (float)t->s.delta, (float)t->s.box_weight,
                          (float)t->s.label_smoothing);
    }
    float loss[2];
    o->mem_download(m->ctx, loss, t->scalars, sizeof loss);
    st->class_loss = loss[0], st->box_loss = loss[1];
    st->loss = loss[0] + t->s.box_weight * loss[1];
    if (!isfinite(st->loss))
        return err_set(err, "step %ld: the loss is not finite (class %g, box %g)", t->step,
                       st->class_loss, st->box_loss);
    model_backward(m);
    return 0;
}

int trainer_step(Trainer *t, const float *input, const float *boxes, const int32_t *classes,
                 const uint8_t *crowd, int max_boxes, TrainStats *st, Err *err)
{
    if (trainer_loss_and_grads(t, input, boxes, classes, crowd, max_boxes, st, err) != 0) return -1;
    Model *m = &t->model;
    const Ops *o = m->ops;
    size_t n = m->table.n_params;
    float sumsq;
    o->sum_squares(m->ctx, t->scalars + 2, m->grads, n);
    o->mem_download(m->ctx, &sumsq, t->scalars + 2, sizeof sumsq);
    st->grad_norm = sqrt((double)sumsq);
    if (!isfinite(st->grad_norm))
        return err_set(err, "step %ld: the gradient norm is not finite", t->step);
    /* torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1. */
    double coef = t->s.clip_norm > 0 ? t->s.clip_norm / (st->grad_norm + 1e-6) : 1.0;
    float scale = coef < 1.0 ? (float)coef : 1.0f;
    st->lr = trainer_lr_at(&t->s, t->step);
    o->sgd_update(m->ctx, m->params, t->momentum, m->grads, t->decay_mask, (float)st->lr,
                  (float)t->s.momentum, (float)t->s.weight_decay, scale, n);
    if (t->s.ema) {
        float d = (float)trainer_ema_decay_at(&t->s, t->step);
        o->ema_update(m->ctx, t->ema_params, m->params, d, n);
        o->ema_update(m->ctx, t->ema_buffers, m->buffers, d, m->table.n_buffers);
    }
    t->step++;
    return 0;
}

/* Host copies of every state block (for checkpoints). */
static int download_state(Trainer *t, CheckpointState *cs, Err *err)
{
    const ParamTable *pt = &t->model.table;
    const Ops *o = t->model.ops;
    memset(cs, 0, sizeof *cs);
    size_t np = (pt->n_params + 1) * sizeof(float), nb = (pt->n_buffers + 1) * sizeof(float);
    cs->params = malloc(np), cs->buffers = malloc(nb), cs->momentum = malloc(np);
    if (t->s.ema) cs->ema_params = malloc(np), cs->ema_buffers = malloc(nb);
    if (!cs->params || !cs->buffers || !cs->momentum || (t->s.ema && (!cs->ema_params || !cs->ema_buffers)))
        return err_set(err, "trainer: out of host memory for a checkpoint");
    o->mem_download(t->model.ctx, cs->params, t->model.params, pt->n_params * sizeof(float));
    o->mem_download(t->model.ctx, cs->buffers, t->model.buffers, pt->n_buffers * sizeof(float));
    o->mem_download(t->model.ctx, cs->momentum, t->momentum, pt->n_params * sizeof(float));
    if (t->s.ema) {
        o->mem_download(t->model.ctx, cs->ema_params, t->ema_params, pt->n_params * sizeof(float));
        o->mem_download(t->model.ctx, cs->ema_buffers, t->ema_buffers, pt->n_buffers * sizeof(float));
    }
    return 0;
}

static void state_free(CheckpointState *cs)
{
    free(cs->params), free(cs->buffers), free(cs->momentum), free(cs->ema_params), free(cs->ema_buffers);
    memset(cs, 0, sizeof *cs);
}

int trainer_save(Trainer *t, const char *path, long epoch, Err *err)
{
    CheckpointState cs;
    int rc = download_state(t, &cs, err);
    if (rc == 0) {
        cs.step = t->step, cs.epoch = epoch, cs.seed = t->s.seed;
        snprintf(cs.settings, sizeof cs.settings,
                 "{\"batch\": %d, \"image_size\": [%d, %d], \"lr\": %.17g, \"warmup_lr\": %.17g, "
                 "\"warmup_steps\": %ld, \"total_steps\": %ld, \"ema\": %d, \"ema_decay\": %.17g, "
                 "\"bn_momentum\": %.17g}",
                 t->s.batch, t->s.h, t->s.w, t->s.lr, t->s.warmup_lr, t->s.warmup_steps,
                 t->s.total_steps, t->s.ema, t->s.ema_decay, t->s.bn_momentum);
        rc = checkpoint_write(path, &t->model.table, t->cfg.name, t->cfg.num_classes, &cs, err);
    }
    state_free(&cs);
    return rc;
}

int trainer_resume(Trainer *t, const char *path, long *epoch, Err *err)
{
    CheckpointState cs;
    int rc = download_state(t, &cs, err);
    if (rc == 0) rc = checkpoint_read(path, &t->model.table, t->cfg.name, t->cfg.num_classes, &cs, err);
    if (rc == 0) {
        const ParamTable *pt = &t->model.table;
        const Ops *o = t->model.ops;
        o->mem_upload(t->model.ctx, t->model.params, cs.params, pt->n_params * sizeof(float));
        o->mem_upload(t->model.ctx, t->model.buffers, cs.buffers, pt->n_buffers * sizeof(float));
        o->mem_upload(t->model.ctx, t->momentum, cs.momentum, pt->n_params * sizeof(float));
        if (t->s.ema) {
            o->mem_upload(t->model.ctx, t->ema_params, cs.ema_params, pt->n_params * sizeof(float));
            o->mem_upload(t->model.ctx, t->ema_buffers, cs.ema_buffers, pt->n_buffers * sizeof(float));
        }
        o->sync(t->model.ctx);
        t->step = cs.step;
        *epoch = cs.epoch;
    }
    state_free(&cs);
    return rc;
}

int trainer_eval_weights(Trainer *t, float **params, float **buffers, Err *err)
{
    const ParamTable *pt = &t->model.table;
    *params = malloc((pt->n_params + 1) * sizeof(float));
    *buffers = malloc((pt->n_buffers + 1) * sizeof(float));
    if (!*params || !*buffers) {
        free(*params), free(*buffers);
        return err_set(err, "trainer: out of host memory");
    }
    const Ops *o = t->model.ops;
    o->mem_download(t->model.ctx, *params, t->s.ema ? t->ema_params : t->model.params,
                    pt->n_params * sizeof(float));
    o->mem_download(t->model.ctx, *buffers, t->s.ema ? t->ema_buffers : t->model.buffers,
                    pt->n_buffers * sizeof(float));
    return 0;
}
