/* parity.c: run a reference fixture through the model and compare (see parity.h). */
#include "worker/parity.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/layout.h"
#include "shared/safetensors.h"
#include "worker/detector.h"
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
        model_upload_input(&r->model, nhwc);
        rc = 0;
    }
    free(nchw), free(nhwc);
    st_close(&st);
    return rc;
}

/* Head outputs to host NCHW, then the detections of the batch (on the backend when it can). */
static int collect_outputs(ParityRun *r, Err *err)
{
    Model *m = &r->model;
    const ModelConfig *c = &r->cfg;
    int max_det = c->max_det_per_image;
    float *nhwc = NULL;
    Detector det;
    Detection *dets = NULL;
    int *count = NULL, rc = -1;
    if (detector_init(&det, m, &r->anchors, err) != 0) return -1;
    for (int l = 0; l < c->num_levels; l++) {
        Act4 t[2] = {m->class_out[l], m->box_out[l]};
        float **dst[2] = {&r->class_out[l], &r->box_out[l]};
        for (int j = 0; j < 2; j++) {
            free(nhwc);
            nhwc = malloc(act_count(t[j]) * sizeof(float));
            *dst[j] = malloc(act_count(t[j]) * sizeof(float));
            if (!nhwc || !*dst[j]) goto done;
            model_download(m, nhwc, t[j]);
            layout_nhwc_to_nchw(*dst[j], nhwc, t[j].n, t[j].h, t[j].w, t[j].c);
        }
    }
    r->detections = calloc((size_t)r->batch * max_det * 6, sizeof(float));
    dets = malloc((size_t)r->batch * max_det * sizeof *dets);
    count = malloc((size_t)r->batch * sizeof *count);
    if (!r->detections || !dets || !count) goto done;
    detector_run(&det, r->batch, NULL, NULL, NULL, dets, count);
    for (int b = 0; b < r->batch; b++)
        for (int i = 0; i < count[b]; i++) {
            const Detection *d = &dets[(size_t)b * max_det + i];
            float *row = r->detections + ((size_t)b * max_det + i) * 6;
            row[0] = d->x1, row[1] = d->y1, row[2] = d->x2, row[3] = d->y2;
            row[4] = d->score, row[5] = (float)d->class_id;
        }
    rc = 0;
done:
    if (rc) err_set(err, "parity: out of memory for the outputs");
    free(nhwc), free(dets), free(count);
    detector_free(&det);
    return rc;
}

int parity_run(ParityRun *r, const char *dir, const char *device, Precision prec, Err *err)
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
    if (model_set_precision(&r->model, prec, err) != 0 ||
        model_load_weights(&r->model, wpath, err) != 0 ||
        model_plan(&r->model, r->batch, r->h, r->w, PLAN_INFER, err) != 0 ||
        anchors_build(&r->anchors, &r->cfg, r->h, r->w, err) != 0 || load_input(r, iopath, err) != 0)
        goto fail;
    model_forward(&r->model);
    if (collect_outputs(r, err) != 0) goto fail;
    if (prec == PREC_FP32 && parity_run_train(r, dir, device, err) != 0) goto fail;
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

/* Why the gradients from BiFPN cell 0 down get 1e-1: this fixture's batch of 2 at 128x128 makes
 * the train-mode BN of P6/P7 (2x2 and 1x1 maps) normalize over 8 and 2 values, which amplifies
 * float32 rounding. Measured: feeding our own network the same input perturbed by 1e-6 relative
 * (the size of the fp32-vs-fp32 difference between two implementations) moves these gradients by
 * 2.0e-2 .. 3.5e-2, while our 1-thread and 2-thread runs agree to 2e-6; a change of summation
 * order inside one of our own kernels moved them by up to 3e-2 too. 1e-1 still catches a wrong
 * rule, which moves a gradient by its own size; the losses and statistics keep tight bounds.
 * BiFPN cell 1 is sensitive too, less so: 1e-6 relative input perturbations (4 seeds, CPU) moved
 * its listed gradients to 3.1e-4 .. 9.5e-4 from the reference (conv_dw) and 2.2e-4 .. 7.0e-4
 * (conv_pw), at the old 1e-3 bound, which the CUDA backend's fp32 rounding then crossed (1.04e-3);
 * 3e-3 keeps a 3x margin over that noise and still catches any wrong rule. The heads' gradients
 * moved by at most 2.8e-4 and keep 1e-3. */
double parity_bound(const char *name)
{
    if (!strncmp(name, "class_out.", 10) || !strncmp(name, "box_out.", 8)) return 1e-4;
    if (!strcmp(name, "loss") || !strcmp(name, "class_loss") || !strcmp(name, "box_loss")) return 1e-4;
    if (!strncmp(name, "bn_after.", 9)) return 1e-5;
    if (!strncmp(name, "grad.backbone.", 14) || !strncmp(name, "grad.fpn.resample.", 18) ||
        !strncmp(name, "grad.fpn.cell.0.", 16))
        return 1e-1;
    if (!strncmp(name, "grad.fpn.cell.1.", 16)) return 3e-3;
    if (!strncmp(name, "grad.", 5)) return 1e-3;
    return 0;
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

double parity_rms_rel_err(const float *ours, const float *ref, size_t n)
{
    double d2 = 0, r2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)ours[i] - ref[i];
        d2 += d * d, r2 += (double)ref[i] * ref[i];
    }
    return r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
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
