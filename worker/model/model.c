/* model.c: model life cycle: build the parameter table, hold the blocks, plan, run (model.h). */
#include "worker/model/model.h"

#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/log.h"
#include "worker/model/layers.h"

void model_describe(Model *m, const ModelConfig *cfg)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    backbone_build(m);
    bifpn_build(m);
    head_build(m, &m->class_head, "class_net", cfg->num_classes);
    head_build(m, &m->box_head, "box_net", 4);
}

int model_create(Model *m, const ModelConfig *cfg, const Ops *ops, int device, Err *err)
{
    model_describe(m, cfg);
    m->ops = ops;
    m->ctx = ops->ctx_create(device, err);
    if (!m->ctx) goto fail;
    m->params = ops->mem_alloc(m->ctx, m->table.n_params * sizeof(float), err);
    if (!m->params) goto fail;
    m->buffers = ops->mem_alloc(m->ctx, m->table.n_buffers * sizeof(float), err);
    if (!m->buffers) goto fail;
    return 0;
fail:
    err_wrap(err, "creating %s: ", cfg->name);
    model_free(m);
    return -1;
}

void model_free(Model *m)
{
    if (m->ctx) {
        m->ops->mem_free(m->ctx, m->params);
        m->ops->mem_free(m->ctx, m->buffers);
        m->ops->mem_free(m->ctx, m->arena);
        m->ops->mem_free(m->ctx, m->grad_arena);
        m->ops->mem_free(m->ctx, m->grads);
        m->ops->ctx_destroy(m->ctx);
    }
    free(m->cells);
    free(m->tape);
    m->tape = NULL, m->grad_arena = NULL, m->grads = NULL;
    param_table_free(&m->table);
    free(m->act_offset);
    m->ctx = NULL, m->params = NULL, m->buffers = NULL, m->arena = NULL, m->cells = NULL;
    m->act_offset = NULL;
}

/* Weights are staged in host memory, then uploaded once. */
static int upload_blocks(Model *m, const float *params, const float *buffers)
{
    m->ops->mem_upload(m->ctx, m->params, params, m->table.n_params * sizeof(float));
    m->ops->mem_upload(m->ctx, m->buffers, buffers, m->table.n_buffers * sizeof(float));
    model_weights_changed(m);
    m->ops->sync(m->ctx);
    return 0;
}

static int host_blocks(const Model *m, float **params, float **buffers, Err *err)
{
    *params = calloc(m->table.n_params + 1, sizeof(float));
    *buffers = calloc(m->table.n_buffers + 1, sizeof(float));
    if (!*params || !*buffers) {
        free(*params), free(*buffers);
        return err_set(err, "%s: out of host memory for the weights", m->cfg.name);
    }
    return 0;
}

int model_set_tf32(Model *m, int on, Err *err)
{
    if (!m->ops->set_tf32)
        return on ? err_set(err, "--tf32: the %s backend has no TF32 mode (it computes in fp32)", m->ops->name) : 0;
    m->ops->set_tf32(m->ctx, on);
    return 0;
}

/* The rounded copy is allocated here, once, so that refreshing it later cannot fail. */
int model_set_precision(Model *m, Precision p, Err *err)
{
    if (p == m->precision) return 0;
    if (!m->ops->set_precision)
        return err_set(err, "--amp %s: the %s backend has no mixed precision", precision_name(p),
                       m->ops->name);
    if (m->arena) return err_set(err, "--amp: the precision must be set before the model is planned");
    if (m->ops->set_precision(m->ctx, p, err) != 0) return -1;
    m->precision = p;
    return m->ops->cast_params(m->ctx, m->params, m->table.n_params, err);
}

void model_weights_changed(Model *m)
{
    if (m->precision == PREC_FP32) return;
    Err err;
    /* The copy was allocated by model_set_precision, so this cannot fail. */
    int rc = m->ops->cast_params(m->ctx, m->params, m->table.n_params, &err);
    ASSERT(rc == 0);
}

void model_upload_input(Model *m, const float *host)
{
    m->ops->act_upload(m->ctx, m->input.p, host, act_count(m->input));
}

void model_download(const Model *m, float *host, Act4 a)
{
    m->ops->act_download(m->ctx, host, a.p, act_count(a));
}

void model_set_weights(Model *m, const float *params, const float *buffers)
{
    upload_blocks(m, params, buffers);
}

int model_load_weights(Model *m, const char *path, Err *err)
{
    float *params, *buffers;
    if (host_blocks(m, &params, &buffers, err) != 0) return -1;
    int rc = param_table_load(&m->table, path, m->cfg.name, params, buffers, err);
    if (rc == 0) upload_blocks(m, params, buffers);
    free(params), free(buffers);
    return rc;
}

int model_init_random(Model *m, unsigned long long seed, Err *err)
{
    float *params, *buffers;
    if (host_blocks(m, &params, &buffers, err) != 0) return -1;
    param_table_init_random(&m->table, seed, params, buffers);
    upload_blocks(m, params, buffers);
    free(params), free(buffers);
    return 0;
}

/* The whole network, written once: the dry run plans, the real run computes. */
static void network_forward(Fwd *f, Model *m)
{
    m->input = fwd_take(f, m->batch, m->in_h, m->in_w, 3);
    backbone_forward(f, m, m->input, m->backbone_feat);
    bifpn_forward(f, m, m->backbone_feat, m->fpn_feat);
    head_forward(f, m, &m->class_head, m->fpn_feat, m->class_out);
    head_forward(f, m, &m->box_head, m->fpn_feat, m->box_out);
    /* The head outputs are what the caller reads: alive to the end. */
    for (int l = 0; l < m->cfg.num_levels; l++) fwd_use(f, m->class_out[l]), fwd_use(f, m->box_out[l]);
}

static Fwd fwd_begin(Model *m, int dry)
{
    Fwd f = {.ops = m->ops, .ctx = m->ctx, .params = m->params, .buffers = m->buffers,
             .eps = m->cfg.bn_eps, .dry = dry, .train = m->train, .bn_momentum = m->bn_momentum,
             .arena = m->arena, .prof = m->prof,
             .offset = m->act_offset};
    return f;
}

typedef struct Placed {
    size_t off, bytes;
} Placed;

static int by_offset(const void *a, const void *b)
{
    size_t x = ((const Placed *)a)->off, y = ((const Placed *)b)->off;
    return x < y ? -1 : x > y;
}

/* Greedy interval placement, largest first: each activation goes to the lowest offset that does
 * not overlap an already placed activation alive at the same time. Returns the arena size. */
static size_t place_shared(const Fwd *f, size_t *offset)
{
    int n = f->step;
    int *order = malloc((size_t)n * sizeof *order);
    Placed *busy = malloc((size_t)n * sizeof *busy);
    char *placed = calloc((size_t)n, 1);
    ASSERT(order && busy && placed);
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) /* insertion sort by size, descending: stable and n is small */
        for (int j = i; j > 0 && f->bytes[order[j]] > f->bytes[order[j - 1]]; j--) {
            int t = order[j]; order[j] = order[j - 1]; order[j - 1] = t;
        }
    size_t total = 0;
    for (int a = 0; a < n; a++) {
        int i = order[a], nb = 0;
        for (int j = 0; j < n; j++)
            if (placed[j] && f->first[j] <= f->last[i] && f->first[i] <= f->last[j])
                busy[nb++] = (Placed){offset[j], f->bytes[j]};
        qsort(busy, (size_t)nb, sizeof *busy, by_offset);
        size_t off = 0;
        for (int k = 0; k < nb; k++) {
            if (busy[k].off >= off + f->bytes[i]) break;
            if (busy[k].off + busy[k].bytes > off) off = busy[k].off + busy[k].bytes;
        }
        offset[i] = off, placed[i] = 1;
        if (off + f->bytes[i] > total) total = off + f->bytes[i];
    }
    free(order), free(busy), free(placed);
    return total;
}

static size_t place_all(const Fwd *f, size_t *offset)
{
    size_t total = 0;
    for (int i = 0; i < f->step; i++) offset[i] = total, total += f->bytes[i];
    return total;
}

int model_plan(Model *m, int batch, int h, int w, PlanMode mode, Err *err)
{
    if (batch < 1 || h < 1 || w < 1 || h > 16384 || w > 16384)
        return err_set(err, "%s: bad input size batch %d, %dx%d", m->cfg.name, batch, h, w);
    m->batch = batch, m->in_h = h, m->in_w = w;
    model_config_feat_sizes(&m->cfg, h, w, m->feat_h, m->feat_w);
    /* effdet resamples between adjacent levels by pooling only when both dims shrink; a level
     * where one dim stops shrinking and the other does not has no defined resampling. */
    for (int i = 1; i < m->cfg.num_levels; i++) {
        int dh = m->feat_h[i] < m->feat_h[i - 1], dw = m->feat_w[i] < m->feat_w[i - 1];
        if (dh != dw)
            return err_set(err, "%s: image size %dx%d is too small or too thin: level P%d is %dx%d "
                                "after P%d %dx%d (effdet cannot resample it)",
                           m->cfg.name, h, w, m->cfg.min_level + i, m->feat_h[i], m->feat_w[i],
                           m->cfg.min_level + i - 1, m->feat_h[i - 1], m->feat_w[i - 1]);
    }
    if (mode == PLAN_TRAIN && (!m->ops->bn_train_forward || !m->ops->detection_loss))
        return err_set(err, "%s: the %s backend cannot train yet", m->cfg.name, m->ops->name);
    m->train = mode == PLAN_TRAIN;
    Fwd dry = fwd_begin(m, 1);
    network_forward(&dry, m);
    free(m->act_offset);
    free(m->tape);
    m->act_offset = malloc((size_t)dry.step * sizeof *m->act_offset);
    ASSERT(m->act_offset);
    m->n_acts = dry.step;
    m->tape = dry.tape, m->n_tape = dry.n_tape;
    m->reuse = mode == PLAN_INFER;
    size_t bytes = m->reuse ? place_shared(&dry, m->act_offset) : place_all(&dry, m->act_offset);
    free(dry.bytes), free(dry.first), free(dry.last);
    m->ops->mem_free(m->ctx, m->arena);
    m->ops->mem_free(m->ctx, m->grad_arena);
    m->ops->mem_free(m->ctx, m->grads);
    m->grad_arena = NULL, m->grads = NULL;
    m->arena = m->ops->mem_alloc(m->ctx, bytes, err);
    if (!m->arena) return err_wrap(err, "%s: activation arena of %zu MB: ", m->cfg.name, bytes >> 20);
    m->arena_bytes = bytes;
    if (m->train) {
        m->grad_arena = m->ops->mem_alloc(m->ctx, bytes, err);
        m->grads = m->ops->mem_alloc(m->ctx, m->table.n_params * sizeof(float), err);
        if (!m->grad_arena || !m->grads)
            return err_wrap(err, "%s: gradients for batch %d at %dx%d: ", m->cfg.name, batch, h, w);
    }
    if (m->ops->workspace_reserve(m->ctx, dry.workspace, err) != 0) return -1;
    log_debug("%s: planned batch %d, %dx%d: %d activations in an arena of %.1f MB, conv workspace "
              "%.1f MB", m->cfg.name, batch, h, w, m->n_acts, bytes / 1048576.0,
              dry.workspace / 1048576.0);
    /* The input's pointer is known before any forward: callers fill it first. */
    m->input.p = (float *)(m->arena + m->act_offset[0]);
    return 0;
}

void model_forward(Model *m)
{
    ASSERT(m->arena);
    Fwd f = fwd_begin(m, 0);
    network_forward(&f, m);
    ASSERT(f.step == m->n_acts);
}

size_t model_count_params(const Model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->table.count; i++)
        if (!param_is_buffer(m->table.specs[i].kind)) n += m->table.specs[i].count;
    return n;
}

size_t model_count_bn_buffers(const Model *m)
{
    size_t n = 0;
    for (int i = 0; i < m->table.count; i++)
        if (param_is_buffer(m->table.specs[i].kind)) n += m->table.specs[i].count;
    return n;
}
