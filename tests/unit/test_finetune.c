/* test_finetune.c: the fine-tuning controls of the trainer (worker/trainer.h) and the loader
 * options under them (worker/model/params.h ParamLoadOptions):
 *  - an initial checkpoint of another num_classes: every tensor loaded except the class head's
 *    predict conv, which keeps its fresh init (prior bias -4.595); a shape mismatch elsewhere is
 *    an error naming the tensor; the strict loader still refuses the file;
 *  - remove_weights: matched tensors keep their init (and may be absent from the file); a prefix
 *    matching nothing is an error naming it;
 *  - freeze and head_only: frozen parameters bit-identical after 3 steps with momentum 0 while the
 *    others change, frozen BN layers' running statistics unchanged, a BN layer named by one of its
 *    statistics frozen whole, the prefixes in the checkpoint's settings; the gradient through
 *    frozen BN layers (running statistics) against central differences;
 *  - pretrained_backbone: timm's bare EfficientNet names (with the classifier side and
 *    num_batches_tracked present) and effdet names load exactly the backbone; a missing tensor is
 *    an error naming it.
 * D0 at 64x64, batch 2: seconds. Weights files are written with st_write in a temp directory. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/rng.h"
#include "shared/safetensors.h"
#include "worker/trainer.h"

enum { B = 2, H = 64, W = 64, M = 3, FILE_SEED = 11 };
static const char *MODEL = "tf_efficientdet_d0";

static char dir[] = "/tmp/effdet_finetune_XXXXXX";

static int setup(void **state) { return mkdtemp(dir) ? 0 : -1; }
static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Host blocks of a model description: the weights a test file holds, or a fresh init. */
typedef struct Weights {
    Model desc; /* model_describe only: the table */
    float *params, *buffers;
} Weights;

static void weights_init(Weights *w, int num_classes, uint64_t seed)
{
    ModelConfig cfg;
    Err err;
    if (model_config_get(MODEL, num_classes, &cfg, &err) != 0) fail_msg("%s", err.msg);
    model_describe(&w->desc, &cfg);
    w->params = calloc(w->desc.table.n_params + 1, sizeof(float));
    w->buffers = calloc(w->desc.table.n_buffers + 1, sizeof(float));
    param_table_init_random(&w->desc.table, seed, w->params, w->buffers);
}

static void weights_free(Weights *w)
{
    free(w->params), free(w->buffers);
    model_free(&w->desc);
}

static const float *tensor_of(const Weights *w, const ParamSpec *s)
{
    return (param_is_buffer(s->kind) ? w->buffers : w->params) + s->offset;
}

typedef enum { NAMES_EFFDET, NAMES_TIMM } Names;

/* Writes w's tensors in PyTorch layout: under effdet names, or as timm's bare EfficientNet (the
 * backbone without "backbone.", plus the classifier side and a num_batches_tracked counter that
 * the loader must ignore). `drop` (a table name) is left out; `flatten` is written 1-D. */
static void write_weights(const char *path, const Weights *w, Names names, const char *drop,
                          const char *flatten)
{
    const ParamTable *t = &w->desc.table;
    StWriteTensor *ts = calloc((size_t)t->count + 8, sizeof *ts);
    float *staging = malloc((t->n_params + t->n_buffers) * sizeof(float));
    static float extra[64 * 320];
    static int64_t counter = 7;
    float *cursor = staging;
    int n = 0;
    for (int i = 0; i < t->count; i++) {
        const ParamSpec *s = &t->specs[i];
        if (drop && !strcmp(s->name, drop)) continue;
        if (names == NAMES_TIMM && strncmp(s->name, "backbone.", 9)) continue;
        param_convert(s, cursor, tensor_of(w, s), 0);
        ts[n] = (StWriteTensor){names == NAMES_TIMM ? s->name + 9 : s->name, ST_F32, s->ndim, {0}, cursor};
        for (int d = 0; d < s->ndim; d++) ts[n].shape[d] = s->shape[d];
        if (flatten && !strcmp(s->name, flatten)) ts[n].ndim = 1, ts[n].shape[0] = (int64_t)s->count;
        cursor += s->count;
        n++;
    }
    if (names == NAMES_TIMM) {
        ts[n++] = (StWriteTensor){"conv_head.weight", ST_F32, 4, {64, 320, 1, 1}, extra};
        ts[n++] = (StWriteTensor){"bn2.weight", ST_F32, 1, {64}, extra};
        ts[n++] = (StWriteTensor){"bn2.running_var", ST_F32, 1, {64}, extra};
        ts[n++] = (StWriteTensor){"classifier.weight", ST_F32, 2, {10, 64}, extra};
        ts[n++] = (StWriteTensor){"classifier.bias", ST_F32, 1, {10}, extra};
        ts[n++] = (StWriteTensor){"bn1.num_batches_tracked", ST_I64, 0, {0}, &counter};
    }
    Err err;
    if (st_write(path, ts, n, NULL, 0, &err) != 0) fail_msg("%s", err.msg);
    free(ts), free(staging);
}

static void path_of(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", dir, name); }

static void settings(TrainSettings *s, int num_classes)
{
    train_settings_default(s, MODEL, num_classes, B, H, W);
    s->lr = 0.02, s->warmup_lr = 0.002, s->warmup_steps = 1, s->total_steps = 8;
}

static void add_prefix(char (*list)[TRAIN_PREFIX_CAP], int *n, const char *p)
{
    snprintf(list[(*n)++], TRAIN_PREFIX_CAP, "%s", p);
}

static void init_ok(Trainer *t, const TrainSettings *s, const char *weights)
{
    Err err;
    if (trainer_init(t, s, "cpu", weights, &err) != 0) fail_msg("trainer_init: %s", err.msg);
}

/* trainer_init must fail with a message containing needle. */
static void init_fails(const TrainSettings *s, const char *weights, const char *needle)
{
    Trainer t;
    Err err;
    assert_int_equal(trainer_init(&t, s, "cpu", weights, &err), -1);
    print_message("refused: %s\n", err.msg);
    if (!strstr(err.msg, needle)) fail_msg("'%s' lacks '%s'", err.msg, needle);
}

/* The trainer's current weights as host blocks, with its table. */
static void download(Trainer *t, Weights *w)
{
    memset(w, 0, sizeof *w);
    model_describe(&w->desc, &t->cfg);
    w->params = malloc(t->model.table.n_params * sizeof(float));
    w->buffers = malloc(t->model.table.n_buffers * sizeof(float));
    t->model.ops->mem_download(t->model.ctx, w->params, t->model.params, t->model.table.n_params * sizeof(float));
    t->model.ops->mem_download(t->model.ctx, w->buffers, t->model.buffers, t->model.table.n_buffers * sizeof(float));
}

static int tensor_equal(const Weights *a, const Weights *b, const char *name)
{
    const ParamSpec *sa = param_table_find(&a->desc.table, name), *sb = param_table_find(&b->desc.table, name);
    assert_non_null(sa);
    assert_non_null(sb);
    assert_int_equal(sa->count, sb->count);
    return !memcmp(tensor_of(a, sa), tensor_of(b, sb), sa->count * sizeof(float));
}

/* Every tensor of got equals `in` when in_set(name) holds, else `out`; names the first that
 * does not. */
static void expect_sources(const Weights *got, const Weights *in, const Weights *out,
                           int (*in_set)(const char *name))
{
    for (int i = 0; i < got->desc.table.count; i++) {
        const char *name = got->desc.table.specs[i].name;
        const Weights *want = in_set(name) ? in : out;
        if (!tensor_equal(got, want, name))
            fail_msg("%s: not the %s value", name, want == in ? "expected (set)" : "expected (other)");
    }
}

static int is_class_predict_pw(const char *name) { return !strncmp(name, "class_net.predict.conv_pw.", 26); }
static int is_predict(const char *name)
{
    return !strncmp(name, "class_net.predict", 17) || !strncmp(name, "box_net.predict", 15);
}
static int is_backbone(const char *name) { return !strncmp(name, "backbone.", 9); }

typedef struct Batch {
    float input[B * H * W * 3];
    float boxes[B * M * 4];
    int32_t classes[B * M];
} Batch;

static void run_steps(Trainer *t, long n)
{
    Batch *b = malloc(sizeof *b);
    for (long i = 0; i < n; i++) {
        Rng r;
        rng_init(&r, 5, 77, (uint32_t)t->step);
        for (size_t k = 0; k < sizeof b->input / sizeof b->input[0]; k++) b->input[k] = rng_normal(&r);
        for (int k = 0; k < B * M; k++) {
            float y = 4 + rng_uniform(&r) * 30, x = 4 + rng_uniform(&r) * 30;
            b->boxes[4 * k + 0] = y, b->boxes[4 * k + 1] = x;
            b->boxes[4 * k + 2] = y + 8 + rng_uniform(&r) * 24, b->boxes[4 * k + 3] = x + 8 + rng_uniform(&r) * 24;
            b->classes[k] = 1 + k % 3;
        }
        TrainStats st;
        Err err;
        if (trainer_step(t, b->input, b->boxes, b->classes, NULL, M, &st, &err) != 0)
            fail_msg("step %ld: %s", t->step, err.msg);
    }
    free(b);
}

static void test_class_head_reinit(void **state)
{
    char path[256];
    path_of(path, sizeof path, "classes5.safetensors");
    Weights file, fresh, got;
    weights_init(&file, 5, FILE_SEED);
    write_weights(path, &file, NAMES_EFFDET, NULL, NULL);
    TrainSettings s;
    settings(&s, 3);
    weights_init(&fresh, 3, s.seed);
    Trainer t;
    init_ok(&t, &s, path);
    download(&t, &got);
    expect_sources(&got, &fresh, &file, is_class_predict_pw);
    const ParamSpec *bias = param_table_find(&got.desc.table, "class_net.predict.conv_pw.bias");
    for (size_t i = 0; i < bias->count; i++) assert_true(tensor_of(&got, bias)[i] == -4.595f);
    /* Inference stays strict: the same file is refused by name. */
    Err err;
    assert_int_equal(param_table_load(&got.desc.table, path, MODEL, got.params, got.buffers, &err), -1);
    if (!strstr(err.msg, "class_net.predict.conv_pw")) fail_msg("strict load: %s", err.msg);
    trainer_free(&t);
    weights_free(&got), weights_free(&fresh), weights_free(&file);
}

static void test_shape_mismatch_elsewhere(void **state)
{
    char path[256];
    path_of(path, sizeof path, "flat_box.safetensors");
    Weights file;
    weights_init(&file, 5, FILE_SEED);
    write_weights(path, &file, NAMES_EFFDET, NULL, "box_net.predict.conv_pw.weight");
    TrainSettings s;
    settings(&s, 3);
    init_fails(&s, path, "box_net.predict.conv_pw.weight");
    weights_free(&file);
}

static void test_remove_weights(void **state)
{
    char path[256];
    path_of(path, sizeof path, "no_box_bias.safetensors");
    Weights file, fresh, got;
    weights_init(&file, 3, FILE_SEED);
    /* A removed tensor need not be in the file at all. */
    write_weights(path, &file, NAMES_EFFDET, "box_net.predict.conv_pw.bias", NULL);
    TrainSettings s;
    settings(&s, 3);
    add_prefix(s.remove_weights, &s.n_remove_weights, "class_net.predict");
    add_prefix(s.remove_weights, &s.n_remove_weights, "box_net.predict");
    weights_init(&fresh, 3, s.seed);
    Trainer t;
    init_ok(&t, &s, path);
    download(&t, &got);
    expect_sources(&got, &fresh, &file, is_predict);
    trainer_free(&t);
    add_prefix(s.remove_weights, &s.n_remove_weights, "class_net.nope");
    init_fails(&s, path, "--remove-weights: 'class_net.nope' matches no tensor");
    /* Without the removal, the missing tensor is named. */
    settings(&s, 3);
    init_fails(&s, path, "box_net.predict.conv_pw.bias' is missing");
    weights_free(&got), weights_free(&fresh), weights_free(&file);
}

/* Starts t with s and runs 3 steps. Frozen: bit-identical, momentum 0; the rest: every conv
 * weight moved, and the running statistics of BN layers that are not frozen. */
static void train_expect_frozen(Trainer *t, const TrainSettings *s, int (*frozen)(const char *name))
{
    Weights before, after;
    init_ok(t, s, NULL);
    download(t, &before);
    run_steps(t, 3);
    download(t, &after);
    size_t n = t->model.table.n_params;
    float *mom = malloc(n * sizeof(float));
    t->model.ops->mem_download(t->model.ctx, mom, t->momentum, n * sizeof(float));
    int n_frozen = 0, n_moved = 0;
    for (int i = 0; i < after.desc.table.count; i++) {
        const ParamSpec *p = &after.desc.table.specs[i];
        int same = tensor_equal(&after, &before, p->name);
        if (frozen(p->name)) {
            if (!same) fail_msg("%s is frozen but changed", p->name);
            for (size_t k = 0; !param_is_buffer(p->kind) && k < p->count; k++)
                if (mom[p->offset + k] != 0.0f) fail_msg("%s is frozen but has momentum %g", p->name, mom[p->offset + k]);
            n_frozen++;
        } else if (p->kind == PARAM_CONV_WEIGHT || p->kind == PARAM_BN_MEAN || p->kind == PARAM_BN_VAR) {
            if (same) fail_msg("%s is trained but did not change", p->name);
            n_moved++;
        }
    }
    print_message("%d frozen tensors unchanged, %d trained tensors moved\n", n_frozen, n_moved);
    assert_true(n_frozen > 0 && n_moved > 0);
    free(mom);
    weights_free(&after), weights_free(&before);
}

static int frozen_by_prefixes(const char *name)
{
    return !strncmp(name, "backbone.blocks.0", 17) || !strncmp(name, "fpn.cell.0.", 11) ||
           !strncmp(name, "backbone.bn1.", 13) || !strncmp(name, "box_net.bn_rep.1.", 17);
}

static void test_freeze_layers(void **state)
{
    TrainSettings s;
    settings(&s, 3);
    add_prefix(s.freeze, &s.n_freeze, "backbone.blocks.0");
    add_prefix(s.freeze, &s.n_freeze, "fpn.cell.0.");
    /* One statistic names its BN layer: frozen whole (weight, bias, both statistics). */
    add_prefix(s.freeze, &s.n_freeze, "backbone.bn1.running_var");
    add_prefix(s.freeze, &s.n_freeze, "box_net.bn_rep.1.");
    Trainer t;
    train_expect_frozen(&t, &s, frozen_by_prefixes);
    /* The prefixes are in the checkpoint's settings. */
    char path[256];
    Err err;
    SafeTensors st;
    path_of(path, sizeof path, "frozen.safetensors");
    if (trainer_save(&t, path, 0, &err) != 0 || st_open(&st, path, &err) != 0) fail_msg("%s", err.msg);
    const char *rec = st_meta(&st, "settings");
    if (!rec || !strstr(rec, "\"freeze_layers\":[\"backbone.blocks.0\",\"fpn.cell.0.\","))
        fail_msg("settings: %s", rec ? rec : "(none)");
    st_close(&st);
    trainer_free(&t);
    add_prefix(s.freeze, &s.n_freeze, "fpn.nope");
    init_fails(&s, NULL, "--freeze-layers: 'fpn.nope' matches no tensor");
}

/* The gradient through frozen BN layers (bn_infer_backward on the running statistics): the
 * directional derivative of the loss along conv_stem.weight's gradient, whose path goes through
 * the frozen stem BN, matches central differences. */
static void test_frozen_bn_gradient(void **state)
{
    TrainSettings s;
    settings(&s, 3);
    add_prefix(s.freeze, &s.n_freeze, "backbone.bn1.");
    add_prefix(s.freeze, &s.n_freeze, "backbone.blocks.0.0.bn1.");
    Trainer t;
    init_ok(&t, &s, NULL);
    /* Running statistics of 4..8 (means and variances), far from the batch's, so that the
     * gradient through them differs clearly from the batch-statistics one. */
    Weights w;
    download(&t, &w);
    for (size_t i = 0; i < t.model.table.n_buffers; i++) w.buffers[i] = 4.0f + (float)(i % 5);
    model_set_weights(&t.model, w.params, w.buffers);
    Batch *b = malloc(sizeof *b);
    memset(b, 0, sizeof *b);
    Rng r;
    rng_init(&r, 9, 1, 0);
    for (size_t k = 0; k < sizeof b->input / sizeof b->input[0]; k++) b->input[k] = rng_normal(&r);
    for (int k = 0; k < B * M; k++) {
        float y = 4 + 8 * (k % 3), x = 6 + 9 * (k % 2);
        b->boxes[4 * k + 0] = y, b->boxes[4 * k + 1] = x, b->boxes[4 * k + 2] = y + 24, b->boxes[4 * k + 3] = x + 20;
        b->classes[k] = 1 + k % 3;
    }
    const ParamSpec *stem = param_table_find(&t.model.table, "backbone.conv_stem.weight");
    float *g = malloc(stem->count * sizeof(float)), *p = malloc(stem->count * sizeof(float));
    TrainStats st;
    Err err;
    if (trainer_loss_and_grads(&t, b->input, b->boxes, b->classes, NULL, M, &st, &err) != 0) fail_msg("%s", err.msg);
    t.model.ops->mem_download(t.model.ctx, g, t.model.grads + stem->offset, stem->count * sizeof(float));
    double norm = 0;
    for (size_t i = 0; i < stem->count; i++) norm += (double)g[i] * g[i];
    norm = sqrt(norm);
    /* Max pools and the Huber loss make the loss piecewise smooth: average three step sizes. */
    const double hs[3] = {1e-4, 3e-5, 1e-5};
    double fd = 0;
    for (int j = 0; j < 3; j++) {
        double loss[2];
        for (int k = 0; k < 2; k++) {
            for (size_t i = 0; i < stem->count; i++)
                p[i] = w.params[stem->offset + i] + (float)((k ? -hs[j] : hs[j]) * g[i] / norm);
            t.model.ops->mem_upload(t.model.ctx, t.model.params + stem->offset, p, stem->count * sizeof(float));
            if (trainer_loss_and_grads(&t, b->input, b->boxes, b->classes, NULL, M, &st, &err) != 0)
                fail_msg("%s", err.msg);
            loss[k] = st.loss;
        }
        fd += (loss[0] - loss[1]) / (2 * hs[j]) / 3;
    }
    /* Batch-statistics BN there would give about twice this gradient (290 vs 135): 10% tells. */
    print_message("directional derivative: backward %.6g, central differences %.6g\n", norm, fd);
    assert_true(fabs(fd - norm) <= 0.1 * norm);
    free(g), free(p), free(b);
    weights_free(&w);
    trainer_free(&t);
}

static int not_head(const char *name) { return strncmp(name, "class_net.", 10) && strncmp(name, "box_net.", 8); }

static void test_head_only(void **state)
{
    TrainSettings s;
    settings(&s, 3);
    s.head_only = 1;
    Trainer t;
    train_expect_frozen(&t, &s, not_head);
    trainer_free(&t);
}

static void test_pretrained_backbone(void **state)
{
    char timm[256], ours[256], missing[256];
    path_of(timm, sizeof timm, "timm_b0.safetensors");
    path_of(ours, sizeof ours, "effdet_names.safetensors");
    path_of(missing, sizeof missing, "timm_missing.safetensors");
    Weights file, fresh, got;
    weights_init(&file, 5, FILE_SEED); /* another num_classes: only the backbone matters */
    write_weights(timm, &file, NAMES_TIMM, NULL, NULL);
    write_weights(ours, &file, NAMES_EFFDET, NULL, NULL);
    write_weights(missing, &file, NAMES_TIMM, "backbone.blocks.6.0.bn3.running_var", NULL);
    TrainSettings s;
    settings(&s, 3);
    weights_init(&fresh, 3, s.seed);
    const char *files[] = {timm, ours};
    for (int k = 0; k < 2; k++) {
        snprintf(s.pretrained_backbone, sizeof s.pretrained_backbone, "%s", files[k]);
        Trainer t;
        init_ok(&t, &s, NULL);
        download(&t, &got);
        expect_sources(&got, &file, &fresh, is_backbone);
        trainer_free(&t);
        weights_free(&got);
    }
    snprintf(s.pretrained_backbone, sizeof s.pretrained_backbone, "%s", missing);
    init_fails(&s, NULL, "tensor 'blocks.6.0.bn3.running_var' is missing");
    weights_free(&fresh), weights_free(&file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_head_reinit),
        cmocka_unit_test(test_shape_mismatch_elsewhere),
        cmocka_unit_test(test_remove_weights),
        cmocka_unit_test(test_freeze_layers),
        cmocka_unit_test(test_frozen_bn_gradient),
        cmocka_unit_test(test_head_only),
        cmocka_unit_test(test_pretrained_backbone),
    };
    return cmocka_run_group_tests_name("finetune", tests, setup, teardown);
}
