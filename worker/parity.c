/* parity.c: run a reference fixture through the model and compare (see parity.h). */
#include "worker/parity.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/layout.h"
#include "shared/safetensors.h"
#include "worker/postprocess.h"

/* Reads model, num_classes, image_size and batch from the weights file's metadata. */
static int read_fixture_meta(const char *path, char *model, size_t cap, int *num_classes, int *h,
                             int *w, int *batch, Err *err)
{
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    const char *m = st_meta(&st, "model"), *nc = st_meta(&st, "num_classes");
    const char *is = st_meta(&st, "image_size"), *b = st_meta(&st, "batch");
    int rc = -1;
    if (!m || !nc || !is || !b) {
        err_set(err, "%s: metadata needs model, num_classes, image_size and batch", path);
        goto done;
    }
    snprintf(model, cap, "%s", m);
    *num_classes = atoi(nc);
    *batch = atoi(b);
    cJSON *j = cJSON_Parse(is);
    if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(j, 0)) ||
        !cJSON_IsNumber(cJSON_GetArrayItem(j, 1))) {
        cJSON_Delete(j);
        err_set(err, "%s: metadata image_size '%s' is not [H, W]", path, is);
        goto done;
    }
    *h = cJSON_GetArrayItem(j, 0)->valueint, *w = cJSON_GetArrayItem(j, 1)->valueint;
    cJSON_Delete(j);
    if (*num_classes < 1 || *batch < 1 || *batch > 4096 || *h < 1 || *w < 1) {
        err_set(err, "%s: metadata has a bad num_classes, batch or image_size", path);
        goto done;
    }
    rc = 0;
done:
    st_close(&st);
    return rc;
}

static int load_input(ParityRun *r, const char *path, Err *err)
{
    SafeTensors st;
    if (st_open(&st, path, err) != 0) return -1;
    size_t n = (size_t)r->batch * 3 * r->h * r->w;
    float *nchw = malloc(n * sizeof(float)), *nhwc = malloc(n * sizeof(float));
    int64_t shape[4] = {r->batch, 3, r->h, r->w};
    int rc = -1;
    if (!nchw || !nhwc) {
        err_set(err, "%s: out of memory", path);
    } else if (st_read_f32(&st, "input", 4, shape, nchw, err) == 0) {
        layout_nchw_to_nhwc(nhwc, nchw, r->batch, 3, r->h, r->w);
        Model *m = &r->model;
        m->ops->mem_upload(m->ctx, m->input.p, nhwc, n * sizeof(float));
        rc = 0;
    }
    free(nchw), free(nhwc);
    st_close(&st);
    return rc;
}

/* Head outputs to host NCHW, then detections per image. */
static int collect_outputs(ParityRun *r, Err *err)
{
    Model *m = &r->model;
    const ModelConfig *c = &r->cfg;
    int A = model_config_anchors_per_loc(c), max_det = c->max_det_per_image;
    float *nhwc_cls[MAX_LEVELS] = {0}, *nhwc_box[MAX_LEVELS] = {0};
    Postprocess pp;
    int rc = -1;
    if (postprocess_init(&pp, c, &r->anchors, err) != 0) return -1;
    for (int l = 0; l < c->num_levels; l++) {
        Act4 co = m->class_out[l], bo = m->box_out[l];
        nhwc_cls[l] = malloc(act_count(co) * sizeof(float));
        nhwc_box[l] = malloc(act_count(bo) * sizeof(float));
        r->class_out[l] = malloc(act_count(co) * sizeof(float));
        r->box_out[l] = malloc(act_count(bo) * sizeof(float));
        if (!nhwc_cls[l] || !nhwc_box[l] || !r->class_out[l] || !r->box_out[l]) goto done;
        m->ops->mem_download(m->ctx, nhwc_cls[l], co.p, act_count(co) * sizeof(float));
        m->ops->mem_download(m->ctx, nhwc_box[l], bo.p, act_count(bo) * sizeof(float));
        layout_nhwc_to_nchw(r->class_out[l], nhwc_cls[l], co.n, co.h, co.w, co.c);
        layout_nhwc_to_nchw(r->box_out[l], nhwc_box[l], bo.n, bo.h, bo.w, bo.c);
    }
    r->detections = calloc((size_t)r->batch * max_det * 6, sizeof(float));
    Detection *dets = malloc((size_t)max_det * sizeof *dets);
    if (!r->detections || !dets) {
        free(dets);
        goto done;
    }
    for (int b = 0; b < r->batch; b++) {
        const float *cls[MAX_LEVELS], *box[MAX_LEVELS];
        for (int l = 0; l < c->num_levels; l++) {
            size_t cells = (size_t)m->feat_h[l] * m->feat_w[l];
            cls[l] = nhwc_cls[l] + b * cells * A * c->num_classes;
            box[l] = nhwc_box[l] + b * cells * A * 4;
        }
        int n = postprocess_image(&pp, cls, box, 0.0f, 0, 0, dets);
        for (int i = 0; i < n; i++) {
            float *row = r->detections + ((size_t)b * max_det + i) * 6;
            row[0] = dets[i].x1, row[1] = dets[i].y1, row[2] = dets[i].x2, row[3] = dets[i].y2;
            row[4] = dets[i].score, row[5] = (float)dets[i].class_id;
        }
    }
    free(dets);
    rc = 0;
done:
    if (rc) err_set(err, "parity: out of memory for the outputs");
    for (int l = 0; l < MAX_LEVELS; l++) free(nhwc_cls[l]), free(nhwc_box[l]);
    postprocess_free(&pp);
    return rc;
}

int parity_run(ParityRun *r, const char *dir, const char *device, Err *err)
{
    char wpath[1024], iopath[1024], model[64];
    int num_classes, dev;
    memset(r, 0, sizeof *r);
    snprintf(wpath, sizeof wpath, "%s/weights.safetensors", dir);
    snprintf(iopath, sizeof iopath, "%s/io.safetensors", dir);
    if (read_fixture_meta(wpath, model, sizeof model, &num_classes, &r->h, &r->w, &r->batch, err))
        return -1;
    const Ops *ops = ops_for_device(device, &dev, err);
    if (!ops || model_config_get(model, num_classes, &r->cfg, err) != 0) return -1;
    if (model_create(&r->model, &r->cfg, ops, dev, err) != 0) return -1;
    if (model_load_weights(&r->model, wpath, err) != 0 ||
        model_plan(&r->model, r->batch, r->h, r->w, PLAN_INFER, err) != 0 ||
        anchors_build(&r->anchors, &r->cfg, r->h, r->w, err) != 0 || load_input(r, iopath, err) != 0)
        goto fail;
    model_forward(&r->model);
    if (collect_outputs(r, err) != 0 || parity_run_train(r, dir, device, err) != 0) goto fail;
    return 0;
fail:
    parity_run_free(r);
    return -1;
}

void parity_run_free(ParityRun *r)
{
    model_free(&r->model);
    anchors_free(&r->anchors);
    for (int l = 0; l < MAX_LEVELS; l++) {
        free(r->class_out[l]), free(r->box_out[l]);
        r->class_out[l] = r->box_out[l] = NULL;
    }
    free(r->detections);
    r->detections = NULL;
    for (int i = 0; i < r->n_extra; i++) free(r->extra[i].data);
    r->n_extra = 0;
}

int parity_write(const ParityRun *r, const char *path, Err *err)
{
    const ModelConfig *c = &r->cfg;
    StWriteTensor ts[2 * MAX_LEVELS + 5 + PARITY_MAX_EXTRA];
    char names[2 * MAX_LEVELS][32];
    int n = 0, A = model_config_anchors_per_loc(c);
    for (int l = 0; l < c->num_levels; l++) {
        const Model *m = &r->model;
        snprintf(names[2 * l], 32, "class_out.%d", c->min_level + l);
        snprintf(names[2 * l + 1], 32, "box_out.%d", c->min_level + l);
        ts[n++] = (StWriteTensor){names[2 * l], ST_F32, 4,
                                  {r->batch, A * c->num_classes, m->feat_h[l], m->feat_w[l]},
                                  r->class_out[l]};
        ts[n++] = (StWriteTensor){names[2 * l + 1], ST_F32, 4,
                                  {r->batch, A * 4, m->feat_h[l], m->feat_w[l]}, r->box_out[l]};
    }
    ts[n++] = (StWriteTensor){"detections", ST_F32, 3, {r->batch, c->max_det_per_image, 6}, r->detections};
    ts[n++] = (StWriteTensor){"anchors", ST_F32, 2, {r->anchors.count, 4}, r->anchors.boxes};
    if (r->has_train) {
        ts[n++] = (StWriteTensor){"loss", ST_F32, 0, {0}, &r->loss[0]};
        ts[n++] = (StWriteTensor){"class_loss", ST_F32, 0, {0}, &r->loss[1]};
        ts[n++] = (StWriteTensor){"box_loss", ST_F32, 0, {0}, &r->loss[2]};
        for (int i = 0; i < r->n_extra; i++) {
            const ParityTensor *e = &r->extra[i];
            ts[n] = (StWriteTensor){e->name, ST_F32, e->ndim, {0}, e->data};
            for (int d = 0; d < e->ndim; d++) ts[n].shape[d] = e->shape[d];
            n++;
        }
    }
    const char *meta[] = {"model", c->name, "generator", "effdet-c parity"};
    return st_write(path, ts, n, meta, 2, err);
}

double parity_rel_err(const float *ours, const float *ref, size_t n)
{
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)ours[i] - ref[i]);
        if (!(d <= max_diff)) max_diff = d; /* NaN propagates as a failure */
        if (fabs(ref[i]) > max_ref) max_ref = fabs(ref[i]);
    }
    return max_ref > 0 ? max_diff / max_ref : max_diff;
}

static int row_is_empty(const float *r)
{
    for (int i = 0; i < 6; i++)
        if (r[i] != 0.0f) return 0;
    return 1;
}

int parity_match_detections(const float *ours, const float *ref, int rows, float box_abs,
                            float box_rel, float score_tol)
{
    unsigned char *used = calloc((size_t)rows + 1, 1);
    int unmatched = 0;
    for (int i = 0; i < rows; i++) {
        const float *a = ref + (size_t)i * 6;
        if (row_is_empty(a)) continue;
        int found = 0;
        for (int j = 0; j < rows && !found; j++) {
            const float *b = ours + (size_t)j * 6;
            if (used[j] || b[5] != a[5] || fabsf(b[4] - a[4]) > score_tol) continue;
            int close = 1;
            for (int k = 0; k < 4; k++) close &= fabsf(b[k] - a[k]) <= box_abs + box_rel * fabsf(a[k]);
            if (close) used[j] = 1, found = 1;
        }
        unmatched += !found;
    }
    for (int j = 0; j < rows; j++)
        unmatched += !used[j] && !row_is_empty(ours + (size_t)j * 6);
    free(used);
    return unmatched;
}
