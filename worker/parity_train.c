/* parity_train.c: the training half of `effdet parity`: when the fixture directory holds
 * train.safetensors (input, gt_boxes, gt_classes, and the reference's loss, gradients and
 * running statistics after one train-mode forward), compute the same with our trainer: targets,
 * train-mode forward, focal + box loss, backward, no optimizer step. Outputs are named as the
 * reference names them: loss, class_loss, box_loss, grad.<param> for every gradient it lists,
 * bn_after.<bn>.running_mean/var for every statistic it lists, in PyTorch layouts. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/layout.h"
#include "shared/safetensors.h"
#include "worker/parity.h"
#include "worker/trainer.h"

/* Reads gt_boxes (B, M, 4) and gt_classes (B, M) (float class ids, -1 padding). */
static int read_targets(const SafeTensors *st, int batch, float **boxes, int32_t **classes,
                        int *max_boxes, Err *err)
{
    const StTensor *tb = st_find(st, "gt_boxes"), *tc = st_find(st, "gt_classes");
    if (!tb || !tc || tb->ndim != 3 || tc->ndim != 2 || tb->shape[0] != batch ||
        tb->shape[2] != 4 || tc->shape[0] != batch || tc->shape[1] != tb->shape[1])
        return err_set(err, "%s: gt_boxes (B, M, 4) and gt_classes (B, M) are required", st->path);
    int m = (int)tb->shape[1];
    if (m > TRAIN_MAX_BOXES)
        return err_set(err, "%s: %d boxes per image, at most %d", st->path, m, TRAIN_MAX_BOXES);
    float *cls = malloc((size_t)batch * m * sizeof(float));
    *boxes = malloc((size_t)batch * m * 4 * sizeof(float));
    *classes = malloc((size_t)batch * m * sizeof(int32_t));
    if (!cls || !*boxes || !*classes) {
        free(cls);
        return err_set(err, "%s: out of memory", st->path);
    }
    if (st_read_f32(st, "gt_boxes", 3, tb->shape, *boxes, err) != 0 ||
        st_read_f32(st, "gt_classes", 2, tc->shape, cls, err) != 0) {
        free(cls);
        return -1;
    }
    for (int i = 0; i < batch * m; i++) (*classes)[i] = (int32_t)cls[i];
    free(cls);
    *max_boxes = m;
    return 0;
}

static ParityTensor *add_extra(ParityRun *r, const char *name, const StTensor *like, Err *err)
{
    if (r->n_extra == PARITY_MAX_EXTRA) return err_set(err, "parity: too many tensors"), NULL;
    ParityTensor *e = &r->extra[r->n_extra];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->ndim = like->ndim;
    for (int d = 0; d < like->ndim; d++) e->shape[d] = like->shape[d];
    e->data = malloc((size_t)st_numel(like) * sizeof(float));
    if (!e->data) return err_set(err, "parity: out of memory"), NULL;
    r->n_extra++;
    return e;
}

/* grad.<param> and bn_after.<buffer> for every name the reference lists, in its layouts. */
static int collect(ParityRun *r, const SafeTensors *st, Trainer *t, Err *err)
{
    const ParamTable *pt = &t->model.table;
    float *grads = malloc((pt->n_params + 1) * sizeof(float));
    float *buffers = malloc((pt->n_buffers + 1) * sizeof(float));
    if (!grads || !buffers) {
        free(grads), free(buffers);
        return err_set(err, "parity: out of memory");
    }
    const Ops *o = t->model.ops;
    o->mem_download(t->model.ctx, grads, t->model.grads, pt->n_params * sizeof(float));
    o->mem_download(t->model.ctx, buffers, t->model.buffers, pt->n_buffers * sizeof(float));
    int rc = 0;
    for (int i = 0; i < st->count && rc == 0; i++) {
        const StTensor *ref = &st->tensors[i];
        int is_grad = !strncmp(ref->name, "grad.", 5), is_bn = !strncmp(ref->name, "bn_after.", 9);
        if (!is_grad && !is_bn) continue;
        const ParamSpec *p = param_table_find(pt, ref->name + (is_grad ? 5 : 9));
        if (!p) {
            rc = err_set(err, "%s: %s names no tensor of %s", st->path, ref->name, r->cfg.name);
            break;
        }
        ParityTensor *e = add_extra(r, ref->name, ref, err);
        if (!e) rc = -1;
        else param_convert(p, e->data, (param_is_buffer(p->kind) ? buffers : grads) + p->offset, 0);
    }
    free(grads), free(buffers);
    return rc;
}

/* train.class_out.L / train.box_out.L: the train-mode head outputs, NCHW, as the reference
 * names them (the inputs of the loss, for telling a loss difference from a network one). */
static int collect_heads(ParityRun *r, Trainer *t, Err *err)
{
    const Model *m = &t->model;
    for (int l = 0; l < t->cfg.num_levels; l++)
        for (int k = 0; k < 2; k++) {
            Act4 a = k ? m->box_out[l] : m->class_out[l];
            char name[64];
            snprintf(name, sizeof name, "train.%s.%d", k ? "box_out" : "class_out", t->cfg.min_level + l);
            StTensor like = {.ndim = 4, .shape = {a.n, a.c, a.h, a.w}};
            ParityTensor *e = add_extra(r, name, &like, err);
            float *nhwc = malloc(act_count(a) * sizeof(float));
            if (!e || !nhwc) {
                free(nhwc);
                return e ? err_set(err, "parity: out of memory") : -1;
            }
            m->ops->mem_download(m->ctx, nhwc, a.p, act_count(a) * sizeof(float));
            layout_nhwc_to_nchw(e->data, nhwc, a.n, a.h, a.w, a.c);
            free(nhwc);
        }
    return 0;
}

int parity_run_train(ParityRun *r, const char *dir, const char *device, Err *err)
{
    char path[1200], wpath[1200];
    snprintf(path, sizeof path, "%s/train.safetensors", dir);
    snprintf(wpath, sizeof wpath, "%s/weights.safetensors", dir);
    if (access(path, F_OK) != 0) return 0;
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    float *boxes = NULL, *input = NULL, *nchw = NULL;
    int32_t *classes = NULL;
    int max_boxes = 0, rc = -1;
    Trainer t = {0};
    TrainSettings s;
    train_settings_default(&s, r->cfg.name, r->cfg.num_classes, r->batch, r->h, r->w);
    s.ema = 0;
    if (read_targets(&st, r->batch, &boxes, &classes, &max_boxes, err) != 0) goto done;
    size_t n = (size_t)r->batch * 3 * r->h * r->w;
    int64_t shape[4] = {r->batch, 3, r->h, r->w};
    input = malloc(n * sizeof(float)), nchw = malloc(n * sizeof(float));
    if (!input || !nchw) {
        err_set(err, "%s: out of memory", path);
        goto done;
    }
    if (st_read_f32(&st, "input", 4, shape, nchw, err) != 0) goto done;
    layout_nchw_to_nhwc(input, nchw, r->batch, 3, r->h, r->w);
    if (trainer_init(&t, &s, device, wpath, err) != 0) goto done;
    TrainStats ts;
    if (trainer_loss_and_grads(&t, input, boxes, classes, NULL, max_boxes, &ts, err) != 0) goto done;
    r->loss[0] = (float)ts.loss, r->loss[1] = (float)ts.class_loss, r->loss[2] = (float)ts.box_loss;
    r->has_train = 1;
    rc = collect(r, &st, &t, err);
    if (rc == 0) rc = collect_heads(r, &t, err);
done:
    trainer_free(&t);
    free(boxes), free(classes), free(input), free(nchw);
    st_close(&st);
    return rc;
}
