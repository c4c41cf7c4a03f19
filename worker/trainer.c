/* trainer.c: one training step over the op table, and the fine-tuning controls: starting
 * weights (initial checkpoint, pretrained backbone) and frozen layers (see trainer.h).
 *
 * Frozen parameters are a list of float ranges of the params block, made once at init by merging
 * adjacent frozen tensors (a frozen backbone is one range). After each backward pass those ranges
 * of the gradient block are zeroed, and their weight-decay mask bytes are 0, so the unchanged
 * sgd_update leaves them bit-identical (p -= lr * 0) and their momentum at 0: one mem_zero per
 * range per step and no new op. Their gradients are still computed (the tape has no per-
 * activation "needs grad"); skipping them is an optimisation left for later.
 *
 * Data parallelism (trainer_set_comm) adds collectives at fixed points of a step, the same on
 * every rank: the batch's positives (with a "could not label" flag, so one rank's bad batch fails
 * the step everywhere instead of leaving the others waiting), the two loss scalars, the BN sums
 * inside forward and backward when BN is synchronized, and the gradient block. After the
 * gradient sum every rank holds the same bits, so clipping, SGD and EMA need no change. */
#include "worker/trainer.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"

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
    s->precision = PREC_FP32;
    s->loss_scale_init = 65536.0, s->loss_scale_interval = 2000; /* torch.cuda.amp.GradScaler's */
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

/* The buffers of make_targets_backend, and the anchors' one upload. */
static int alloc_backend_targets(Trainer *t, Err *err)
{
    const size_t gts = (size_t)t->s.batch * TRAIN_MAX_BOXES;
    const size_t anchor_bytes = (size_t)t->anchors.count * 4 * sizeof(float);
    t->anchors_dev = backend_alloc(t, anchor_bytes, err);
    t->gt_dev = backend_alloc(t, gts * 4 * sizeof(float), err);
    t->gt_class_dev = backend_alloc(t, gts * sizeof(int32_t), err);
    t->positives_dev = backend_alloc(t, (size_t)t->s.batch * sizeof(int32_t), err);
    t->gt_class_host = malloc((gts ? gts : 1) * sizeof(int32_t));
    t->positives_host = malloc((size_t)t->s.batch * sizeof(int32_t));
    if (!t->anchors_dev || !t->gt_dev || !t->gt_class_dev || !t->positives_dev ||
        !t->gt_class_host || !t->positives_host)
        return err_set(err, "trainer: out of memory for the targets of batch %d", t->s.batch);
    t->model.ops->mem_upload(t->model.ctx, t->anchors_dev, t->anchors.boxes, anchor_bytes);
    return 0;
}

static int alloc_state(Trainer *t, const uint8_t *frozen, Err *err)
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
    if (t->model.ops->label_anchors && alloc_backend_targets(t, err) != 0) return -1;
    if (t->s.ema) {
        t->ema_params = backend_alloc(t, pt->n_params * sizeof(float), err);
        t->ema_buffers = backend_alloc(t, pt->n_buffers * sizeof(float), err);
        if (!t->ema_params || !t->ema_buffers) return err_set(err, "trainer: out of memory for the EMA");
    }
    /* Weight decay on conv weights only (not BN, biases or fusion weights), as effdet, and never
     * on frozen ones. */
    uint8_t *mask = calloc(pt->n_params + 1, 1);
    if (!mask) return err_set(err, "trainer: out of memory");
    for (int i = 0; i < pt->count; i++)
        if (pt->specs[i].kind == PARAM_CONV_WEIGHT)
            memset(mask + pt->specs[i].offset, 1, pt->specs[i].count);
    for (size_t i = 0; frozen && i < pt->n_params; i++)
        if (frozen[i]) mask[i] = 0;
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

/* Prefix lists as the params.h functions take them. */
static int prefix_list(const char (*list)[TRAIN_PREFIX_CAP], int n, const char **out)
{
    for (int i = 0; i < n; i++) out[i] = list[i];
    return n;
}

/* Each --freeze-layers and --remove-weights prefix must name something, checked before any
 * weights are read. */
static int check_prefixes(const Trainer *t, Err *err)
{
    const char *p[TRAIN_MAX_PREFIXES], *bad;
    int n = prefix_list(t->s.freeze, t->s.n_freeze, p);
    if ((bad = param_table_unmatched_prefix(&t->model.table, p, n)))
        return err_set(err, "--freeze-layers: '%s' matches no tensor of %s", bad, t->cfg.name);
    n = prefix_list(t->s.remove_weights, t->s.n_remove_weights, p);
    if ((bad = param_table_unmatched_prefix(&t->model.table, p, n)))
        return err_set(err, "--remove-weights: '%s' matches no tensor of %s", bad, t->cfg.name);
    return 0;
}

/* The starting weights (trainer.h): fresh init, then the initial checkpoint or pretrained
 * backbone over it, staged on the host and uploaded once. */
static int load_weights(Trainer *t, const char *weights, Err *err)
{
    const TrainSettings *s = &t->s;
    Model *m = &t->model;
    const char *backbone = s->pretrained_backbone[0] ? s->pretrained_backbone : NULL;
    if (s->n_remove_weights && !weights) return err_set(err, "--remove-weights needs --initial-checkpoint");
    if (backbone && weights)
        return err_set(err, "--pretrained-backbone %s: --initial-checkpoint %s already holds a "
                            "backbone; give one of them", backbone, weights);
    if (!weights && !backbone) return model_init_random(m, s->seed, err);
    float *params = calloc(m->table.n_params + 1, sizeof(float));
    float *buffers = calloc(m->table.n_buffers + 1, sizeof(float));
    if (!params || !buffers) {
        free(params), free(buffers);
        return err_set(err, "trainer: out of host memory for the weights");
    }
    param_table_init_random(&m->table, s->seed, params, buffers);
    const char *skip[TRAIN_MAX_PREFIXES];
    ParamLoadOptions o = {.skip = skip, .reinit_class_head = 1};
    o.n_skip = prefix_list(s->remove_weights, s->n_remove_weights, skip);
    if (backbone) o = (ParamLoadOptions){.backbone_only = 1};
    ParamLoadReport rep;
    const char *path = weights ? weights : backbone;
    int rc = param_table_load_with(&m->table, path, m->cfg.name, &o, params, buffers, &rep, err);
    if (rc == 0) {
        model_set_weights(m, params, buffers);
        if (rep.n_reinit)
            log_info("%s: re-initialised the class head's predict conv for %d classes: %s", path,
                     t->cfg.num_classes, rep.reinit);
        if (o.n_skip) log_info("%s: %d tensors not loaded (--remove-weights)", path, rep.skipped);
        if (backbone)
            log_info("%s: loaded the backbone (%d tensors, %s names)", path, rep.loaded,
                     rep.timm_names ? "timm" : "effdet");
    }
    free(params), free(buffers);
    return rc;
}

static int is_frozen_name(const TrainSettings *s, const char *name)
{
    const char *p[TRAIN_MAX_PREFIXES];
    int n = prefix_list(s->freeze, s->n_freeze, p);
    if (s->head_only && strncmp(name, "class_net.", 10) && strncmp(name, "box_net.", 8)) return 1;
    return param_name_has_prefix(name, p, n);
}

/* A BN layer is frozen whole when any of its tensors is: the plan's tape lists every BN layer
 * of the model once (the heads have one per level), so walking it finds them all. */
static int freeze_bn_layers(Trainer *t, uint8_t *frozen, const uint8_t *frozen_buffers)
{
    int n = 0;
    for (int i = 0; i < t->model.n_tape; i++) {
        const TapeOp *op = &t->model.tape[i];
        if (op->kind != TAPE_BN) continue;
        BnP *bn = (BnP *)op->layer; /* a layer of t->model, which the trainer owns */
        if (frozen[bn->gamma] || frozen[bn->beta] || frozen_buffers[bn->mean] || frozen_buffers[bn->var]) {
            bn->frozen = 1, n++;
            memset(frozen + bn->gamma, 1, (size_t)bn->c);
            memset(frozen + bn->beta, 1, (size_t)bn->c);
        }
    }
    return n;
}

/* The frozen tensors' ranges, adjacent ones merged (each tensor's slot is padded to 64 floats,
 * params.h, whose padding is never written). */
static int frozen_ranges(Trainer *t, const uint8_t *frozen, size_t *n_floats, Err *err)
{
    const ParamTable *pt = &t->model.table;
    t->frozen = malloc((size_t)pt->count * 2 * sizeof *t->frozen);
    if (!t->frozen) return err_set(err, "trainer: out of memory");
    *n_floats = 0;
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *p = &pt->specs[i];
        if (param_is_buffer(p->kind) || !frozen[p->offset]) continue;
        size_t slot = (p->count + 63) / 64 * 64;
        *n_floats += p->count;
        size_t *last = t->n_frozen ? &t->frozen[2 * (t->n_frozen - 1)] : NULL;
        if (last && last[0] + last[1] == p->offset) last[1] += slot;
        else t->frozen[2 * t->n_frozen] = p->offset, t->frozen[2 * t->n_frozen + 1] = slot, t->n_frozen++;
    }
    return 0;
}

/* Frozen parameters (trainer.h). Needs the plan (its tape); fills t->frozen and *mask (one byte
 * per parameter, 1: frozen; NULL when nothing is). */
static int freeze_init(Trainer *t, uint8_t **mask, Err *err)
{
    const ParamTable *pt = &t->model.table;
    *mask = NULL;
    if (!t->s.n_freeze && !t->s.head_only) return 0;
    uint8_t *frozen = calloc(pt->n_params + 1, 1), *frozen_buffers = calloc(pt->n_buffers + 1, 1);
    if (!frozen || !frozen_buffers) {
        free(frozen), free(frozen_buffers);
        return err_set(err, "trainer: out of memory");
    }
    for (int i = 0; i < pt->count; i++) {
        const ParamSpec *p = &pt->specs[i];
        if (is_frozen_name(&t->s, p->name))
            memset((param_is_buffer(p->kind) ? frozen_buffers : frozen) + p->offset, 1, p->count);
    }
    int n_bn = freeze_bn_layers(t, frozen, frozen_buffers);
    free(frozen_buffers);
    if (n_bn && !t->model.ops->bn_infer_backward) {
        free(frozen);
        return err_set(err, "the %s backend cannot train with frozen BN layers yet", t->model.ops->name);
    }
    size_t n_floats = 0;
    if (frozen_ranges(t, frozen, &n_floats, err) != 0) {
        free(frozen);
        return -1;
    }
    log_info("frozen: %zu of %zu parameters (%d range%s), %d BN layers on running statistics",
             n_floats, model_count_params(&t->model), t->n_frozen, t->n_frozen == 1 ? "" : "s", n_bn);
    *mask = frozen;
    return 0;
}

static void zero_frozen(Trainer *t, float *block)
{
    for (int i = 0; i < t->n_frozen; i++)
        t->model.ops->mem_zero(t->model.ctx, block + t->frozen[2 * i], t->frozen[2 * i + 1] * sizeof(float));
}

/* The settings record of checkpoints (JSON); fails when it does not fit. */
static int settings_json(const Trainer *t, char *out, size_t cap, Err *err)
{
    const TrainSettings *s = &t->s;
    const char *p[TRAIN_MAX_PREFIXES];
    cJSON *j = cJSON_CreateObject();
    ASSERT(j);
    cJSON_AddNumberToObject(j, "batch", s->batch);
    int hw[2] = {s->h, s->w};
    cJSON_AddItemToObject(j, "image_size", cJSON_CreateIntArray(hw, 2));
    cJSON_AddNumberToObject(j, "lr", s->lr);
    cJSON_AddNumberToObject(j, "warmup_lr", s->warmup_lr);
    cJSON_AddNumberToObject(j, "warmup_steps", (double)s->warmup_steps);
    cJSON_AddNumberToObject(j, "total_steps", (double)s->total_steps);
    cJSON_AddNumberToObject(j, "ema", s->ema);
    cJSON_AddNumberToObject(j, "ema_decay", s->ema_decay);
    cJSON_AddNumberToObject(j, "bn_momentum", s->bn_momentum);
    cJSON_AddNumberToObject(j, "label_smoothing", s->label_smoothing);
    cJSON_AddStringToObject(j, "precision", precision_name(s->precision));
    cJSON_AddStringToObject(j, "initial_checkpoint", t->initial);
    cJSON_AddItemToObject(j, "remove_weights",
                          cJSON_CreateStringArray(p, prefix_list(s->remove_weights, s->n_remove_weights, p)));
    cJSON_AddStringToObject(j, "pretrained_backbone", s->pretrained_backbone);
    cJSON_AddItemToObject(j, "freeze_layers", cJSON_CreateStringArray(p, prefix_list(s->freeze, s->n_freeze, p)));
    cJSON_AddBoolToObject(j, "head_only", s->head_only);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    ASSERT(text);
    int rc = 0;
    if (strlen(text) >= cap)
        rc = err_set(err, "the training settings (%zu bytes of JSON) exceed a checkpoint's settings "
                          "record (%zu): fewer or shorter prefixes or paths", strlen(text), cap - 1);
    else
        memcpy(out, text, strlen(text) + 1);
    free(text);
    return rc;
}

/* A power of two, so that scaling and unscaling the gradients is exact. */
static int is_power_of_two(double v)
{
    int e;
    return isfinite(v) && v > 0 && frexp(v, &e) == 0.5;
}

int trainer_check_loss_scale(double scale, Err *err)
{
    if (!is_power_of_two(scale))
        return err_set(err, "--loss-scale %g: expected a power of two (1, 2, ..., 65536, ...)", scale);
    return 0;
}

static int check_loss_scale(const TrainSettings *s, Err *err)
{
    if (s->precision != PREC_FP16) return 0;
    if (trainer_check_loss_scale(s->loss_scale_init, err) != 0) return -1;
    if (s->loss_scale_interval < 1)
        return err_set(err, "--loss-scale-interval %ld: expected at least 1", s->loss_scale_interval);
    return 0;
}

int trainer_init(Trainer *t, const TrainSettings *s, const char *device, const char *weights,
                 Err *err)
{
    memset(t, 0, sizeof *t);
    t->s = *s;
    if (weights) snprintf(t->initial, sizeof t->initial, "%s", weights);
    int dev;
    const Ops *ops = ops_for_device(device, &dev, err);
    if (!ops || model_config_get(s->model, s->num_classes, &t->cfg, err) != 0) return -1;
    if (model_create(&t->model, &t->cfg, ops, dev, err) != 0) return -1;
    if (model_set_tf32(&t->model, s->tf32, err) != 0 || check_loss_scale(s, err) != 0 ||
        model_set_precision(&t->model, s->precision, err) != 0) {
        trainer_free(t);
        return -1;
    }
    t->loss_scale = s->precision == PREC_FP16 ? s->loss_scale_init : 1.0;
    t->model.bn_momentum = (float)s->bn_momentum;
    uint8_t *frozen = NULL;
    char json[sizeof ((CheckpointState *)0)->settings];
    int rc = settings_json(t, json, sizeof json, err);
    if (rc == 0) rc = check_prefixes(t, err);
    if (rc == 0) rc = load_weights(t, weights, err);
    if (rc == 0) rc = model_plan(&t->model, s->batch, s->h, s->w, PLAN_TRAIN, err);
    if (rc == 0) rc = anchors_build(&t->anchors, &t->cfg, s->h, s->w, err);
    if (rc == 0) rc = labeler_init(&t->labeler, &t->anchors, t->cfg.num_classes, TRAIN_MAX_BOXES, err);
    if (rc == 0) rc = freeze_init(t, &frozen, err);
    if (rc == 0) rc = alloc_state(t, frozen, err);
    free(frozen);
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
        o->mem_free(c, t->anchors_dev), o->mem_free(c, t->gt_dev), o->mem_free(c, t->gt_class_dev);
        o->mem_free(c, t->positives_dev);
    }
    t->anchors_dev = t->gt_dev = NULL, t->gt_class_dev = t->positives_dev = NULL;
    free(t->gt_class_host), free(t->positives_host);
    t->gt_class_host = t->positives_host = NULL;
    free(t->frozen);
    t->frozen = NULL, t->n_frozen = 0;
    t->momentum = t->ema_params = t->ema_buffers = t->box_target = t->scalars = NULL;
    t->decay_mask = NULL, t->cls_target = NULL;
    free(t->cls_target_host), free(t->box_target_host);
    t->cls_target_host = NULL, t->box_target_host = NULL;
    labeler_free(&t->labeler);
    anchors_free(&t->anchors);
    model_free(&t->model);
}

/* Targets for the batch on the backend (ops->label_anchors, the same targets bit for bit): the
 * host checks the GT rows as the labeler would and marks crowd rows as class -1 (padding already
 * is), one upload of the rows, one download of the positives. Returns the total or -1. */
static int make_targets_backend(Trainer *t, const float *boxes, const int32_t *classes,
                                const uint8_t *crowd, int max_boxes, Err *err)
{
    const Ops *o = t->model.ops;
    OpsCtx *ctx = t->model.ctx;
    const int batch = t->s.batch;
    for (int b = 0; b < batch; b++) {
        const size_t first = (size_t)b * max_boxes;
        if (labeler_check_rows(&t->labeler, boxes + 4 * first, classes + first,
                          crowd ? crowd + first : NULL, max_boxes, err) != 0)
            return err_wrap(err, "image %d of the batch: ", b);
    }
    /* max_boxes <= TRAIN_MAX_BOXES now, so the rows fit the buffers with max_boxes as stride. */
    const size_t rows = (size_t)batch * max_boxes;
    for (size_t i = 0; i < rows; i++) t->gt_class_host[i] = crowd && crowd[i] ? -1 : classes[i];
    o->mem_upload(ctx, t->gt_dev, boxes, rows * 4 * sizeof(float));
    o->mem_upload(ctx, t->gt_class_dev, t->gt_class_host, rows * sizeof(int32_t));
    o->label_anchors(ctx, t->cls_target, t->box_target, t->positives_dev, t->anchors_dev,
                     t->anchors.count, t->labeler.level_start, t->labeler.num_levels, t->gt_dev,
                     t->gt_class_dev, batch, max_boxes);
    o->mem_download(ctx, t->positives_host, t->positives_dev, (size_t)batch * sizeof(int32_t));
    int total = 0;
    for (int b = 0; b < batch; b++) total += t->positives_host[b];
    return total;
}

/* Targets for the batch on the host, then one upload. Returns the total positives or -1. */
static int make_targets(Trainer *t, const float *boxes, const int32_t *classes,
                        const uint8_t *crowd, int max_boxes, Err *err)
{
    if (t->model.ops->label_anchors)
        return make_targets_backend(t, boxes, classes, crowd, max_boxes, err);
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

/* The BnSync callback: BN sums over the ranks. A failure is kept in the trainer (the op table
 * has no error path), and once the comm has failed later calls fail without waiting again. */
static int trainer_bn_allreduce(void *arg, double *v, size_t n)
{
    Trainer *t = arg;
    if (t->comm_failed) return -1;
    if (comm_allreduce_f64(t->comm, v, n, &t->comm_err) == 0) return 0;
    t->comm_failed = 1;
    return -1;
}

int trainer_set_comm(Trainer *t, Comm *c, int sync_bn, Err *err)
{
    const Ops *o = t->model.ops;
    if (c && !c->device_memory && !o->host_memory)
        return err_set(err, "data parallel: the %s communicator needs host memory, which the %s "
                            "backend does not use", c->vt->name, o->name);
    if (c && sync_bn && !o->set_bn_sync)
        return err_set(err, "data parallel: the %s backend has no synchronized batch norm",
                       o->name);
    t->comm = c;
    t->sync_bn = c && sync_bn;
    t->comm_failed = 0;
    if (t->sync_bn) {
        t->bn_sync = (BnSync){.allreduce = trainer_bn_allreduce, .arg = t, .world = comm_world(c)};
        o->set_bn_sync(t->model.ctx, &t->bn_sync);
    } else if (o->set_bn_sync) {
        o->set_bn_sync(t->model.ctx, NULL);
    }
    return 0;
}

/* Fails (with the first collective error) once a collective of this trainer has failed. */
static int comm_check(const Trainer *t, Err *err)
{
    if (!t->comm_failed) return 0;
    if (err) *err = t->comm_err;
    return -1;
}

/* Sum over the ranks of host doubles; any failure is sticky (comm_check). */
static int trainer_allreduce_f64(Trainer *t, double *v, size_t n, Err *err)
{
    if (comm_check(t, err) != 0) return -1;
    if (!t->comm) return 0;
    if (comm_allreduce_f64(t->comm, v, n, &t->comm_err) == 0) return 0;
    t->comm_failed = 1;
    return comm_check(t, err);
}

int trainer_agree_stop(Trainer *t, int stop, int *any, Err *err)
{
    double v = stop ? 1.0 : 0.0;
    if (trainer_allreduce_f64(t, &v, 1, err) != 0) return -1;
    *any = v > 0;
    return 0;
}

/* The global batch's positives into *global. pos < 0: this rank could not label its batch (err
 * says why); the ranks agree on that too, so every rank fails the step together. */
static int agree_positives(Trainer *t, int pos, double *global, Err *err)
{
    *global = pos;
    if (!t->comm) return pos < 0 ? -1 : 0;
    double v[2] = {pos < 0 ? 0.0 : (double)pos, pos < 0 ? 1.0 : 0.0};
    Err comm_err;
    if (trainer_allreduce_f64(t, v, 2, pos < 0 ? &comm_err : err) != 0) return -1;
    if (pos < 0) return -1;
    if (v[1] > 0)
        return err_set(err, "step %ld: %g other rank(s) could not label their batches", t->step, v[1]);
    *global = v[0];
    return 0;
}

int trainer_loss_and_grads(Trainer *t, const float *input, const float *boxes,
                           const int32_t *classes, const uint8_t *crowd, int max_boxes,
                           TrainStats *st, Err *err)
{
    Model *m = &t->model;
    const Ops *o = m->ops;
    memset(st, 0, sizeof *st);
    if (comm_check(t, err) != 0) return -1;
    double pos;
    if (agree_positives(t, make_targets(t, boxes, classes, crowd, max_boxes, err), &pos, err) != 0)
        return -1;
    st->positives = (int)pos;
    model_upload_input(m, input);
    model_forward(m);
    if (comm_check(t, err) != 0) return -1; /* a synchronized BN layer's sums */
    model_zero_grads(m);
    o->mem_zero(m->ctx, t->scalars, 4 * sizeof(float));
    int A = model_config_anchors_per_loc(&t->cfg), B = t->s.batch;
    for (int l = 0; l < t->cfg.num_levels; l++) {
        size_t first = (size_t)B * t->anchors.level_start[l];
        size_t rows = (size_t)B * m->feat_h[l] * m->feat_w[l];
        o->detection_loss(m->ctx, t->scalars, model_grad(m, m->class_out[l]),
                          model_grad(m, m->box_out[l]), m->class_out[l].p, m->box_out[l].p,
                          t->cls_target + first, t->box_target + 4 * first, rows, A,
                          t->cfg.num_classes, (float)(pos + 1.0), (float)t->s.alpha,
                          (float)t->s.gamma, (float)t->s.delta, (float)t->s.box_weight,
                          (float)t->s.label_smoothing, (float)t->loss_scale);
    }
    float loss[2];
    o->mem_download(m->ctx, loss, t->scalars, sizeof loss);
    /* Each rank's share is normalized by the global positives, so the shares add up to the
     * global loss; every rank then sees the same value and takes the same decision below. */
    double total[2] = {loss[0], loss[1]};
    if (trainer_allreduce_f64(t, total, 2, err) != 0) return -1;
    st->class_loss = total[0], st->box_loss = total[1];
    st->loss = total[0] + t->s.box_weight * total[1];
    st->loss_scale = t->loss_scale;
    if (!isfinite(st->loss) && t->s.precision == PREC_FP16) {
        st->skipped = 1; /* an fp16 overflow in the forward pass: trainer_step skips the step */
        return 0;
    }
    if (!isfinite(st->loss))
        return err_set(err, "step %ld: the loss is not finite (class %g, box %g)", t->step,
                       st->class_loss, st->box_loss);
    model_backward(m);
    if (comm_check(t, err) != 0) return -1;
    zero_frozen(t, m->grads);
    if (t->comm && comm_allreduce_f32(t->comm, m->grads, m->table.n_params, &t->comm_err) != 0) {
        t->comm_failed = 1;
        return comm_check(t, err);
    }
    return 0;
}

/* fp16 overflow (trainer.h): no update, the scale halves, the schedule's step counts. */
static int skip_step(Trainer *t, TrainStats *st, Err *err)
{
    st->skipped = 1;
    t->loss_scale *= 0.5, t->scale_good_steps = 0, t->skipped_steps++;
    if (t->loss_scale < 0x1p-24)
        return err_set(err, "step %ld: fp16 overflows whatever the loss scale (it fell below "
                            "2^-24): train with --amp-dtype bf16 or without --amp", t->step);
    t->step++;
    return 0;
}

int trainer_step(Trainer *t, const float *input, const float *boxes, const int32_t *classes,
                 const uint8_t *crowd, int max_boxes, TrainStats *st, Err *err)
{
    if (trainer_loss_and_grads(t, input, boxes, classes, crowd, max_boxes, st, err) != 0) return -1;
    Model *m = &t->model;
    const Ops *o = m->ops;
    size_t n = m->table.n_params;
    st->lr = trainer_lr_at(&t->s, t->step);
    st->grad_norm = NAN;
    if (!st->skipped) {
        float sumsq;
        o->sum_squares(m->ctx, t->scalars + 2, m->grads, n);
        o->mem_download(m->ctx, &sumsq, t->scalars + 2, sizeof sumsq);
        st->grad_norm = sqrt((double)sumsq) / t->loss_scale;
    }
    if (!isfinite(st->grad_norm) && t->s.precision == PREC_FP16) return skip_step(t, st, err);
    if (!isfinite(st->grad_norm))
        return err_set(err, "step %ld: the gradient norm is not finite", t->step);
    /* torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1;
     * the division by the loss scale (a power of two, 1 outside fp16) unscales the gradients. */
    double coef = t->s.clip_norm > 0 ? t->s.clip_norm / (st->grad_norm + 1e-6) : 1.0;
    float scale = (coef < 1.0 ? (float)coef : 1.0f) / (float)t->loss_scale;
    o->sgd_update(m->ctx, m->params, t->momentum, m->grads, t->decay_mask, (float)st->lr,
                  (float)t->s.momentum, (float)t->s.weight_decay, scale, n);
    model_weights_changed(m);
    if (t->s.precision == PREC_FP16 && ++t->scale_good_steps >= t->s.loss_scale_interval)
        t->loss_scale *= 2, t->scale_good_steps = 0;
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
        if (t->s.precision == PREC_FP16)
            cs.loss_scale = t->loss_scale, cs.loss_scale_steps = t->scale_good_steps;
        rc = settings_json(t, cs.settings, sizeof cs.settings, err);
    }
    if (rc == 0) rc = checkpoint_write(path, &t->model.table, t->cfg.name, t->cfg.num_classes, &cs, err);
    state_free(&cs);
    return rc;
}

int trainer_resume(Trainer *t, const char *path, long *epoch, Err *err)
{
    CheckpointState cs;
    int rc = download_state(t, &cs, err);
    if (rc == 0) rc = checkpoint_read(path, &t->model.table, t->cfg.name, t->cfg.num_classes, &cs, err);
    if (rc == 0 && cs.loss_scale != 0 && (!is_power_of_two(cs.loss_scale) || cs.loss_scale_steps < 0))
        rc = err_set(err, "%s: loss_scale %g (after %ld steps) is not a positive power of two: "
                          "corrupted checkpoint", path, cs.loss_scale, cs.loss_scale_steps);
    if (rc == 0) {
        const ParamTable *pt = &t->model.table;
        const Ops *o = t->model.ops;
        o->mem_upload(t->model.ctx, t->model.params, cs.params, pt->n_params * sizeof(float));
        o->mem_upload(t->model.ctx, t->model.buffers, cs.buffers, pt->n_buffers * sizeof(float));
        o->mem_upload(t->model.ctx, t->momentum, cs.momentum, pt->n_params * sizeof(float));
        zero_frozen(t, t->momentum); /* a checkpoint of a run that trained them */
        if (t->s.ema) {
            o->mem_upload(t->model.ctx, t->ema_params, cs.ema_params, pt->n_params * sizeof(float));
            o->mem_upload(t->model.ctx, t->ema_buffers, cs.ema_buffers, pt->n_buffers * sizeof(float));
        }
        model_weights_changed(&t->model);
        o->sync(t->model.ctx);
        t->step = cs.step;
        *epoch = cs.epoch;
        /* An fp16 run carries its scale on; other files keep this run's starting scale. */
        if (t->s.precision == PREC_FP16 && cs.loss_scale > 0)
            t->loss_scale = cs.loss_scale, t->scale_good_steps = cs.loss_scale_steps;
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
