/* infer_pipeline.c: decode, letterbox, forward, post-process, and on top of them the results
 * file, the held-back warnings and the evaluation of weights on a COCO set (see
 * infer_pipeline.h). */
#include "launch/infer_pipeline.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "augment/resize.h"
#include "shared/check.h"
#include "shared/log.h"

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
    if (rc == 0) rc = model_set_precision(&p->model, o->precision, err);
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
    model_upload_input(m, p->host_input);
    for (int i = 0; i < n; i++) {
        p->img_scale[i] = p->slots[i].img_scale;
        p->orig_w[i] = p->slots[i].orig_w, p->orig_h[i] = p->slots[i].orig_h;
    }
    /* Forward + detections, replayed as one CUDA graph after the first batches. */
    if (detector_infer(&p->detector, n, p->img_scale, p->orig_w, p->orig_h, p->dets, res->count, err) != 0)
        return -1;
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

/* ---- results file ------------------------------------------------------------------------------ */

int infer_results_open(InferResultsFile *r, const char *path, Err *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    if (snprintf(r->tmp, sizeof r->tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof r->tmp)
        return err_set(err, "--out %s: path too long", path);
    r->f = fopen(r->tmp, "w");
    if (!r->f) {
        int e = errno;
        r->tmp[0] = 0;
        return err_set(err, "--out %s: %s", path, strerror(e));
    }
    fputc('[', r->f);
    return 0;
}

/* The shortest "%.Ng" that reads back as exactly v (what Python's repr prints); cJSON's printer
 * accepts a 15-digit form within an epsilon, which loses the last bit. */
static const char *fmt_exact(char buf[32], double v)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

/* Boxes and scores are printed exactly, as Python's json.dump prints effdet's float32 outputs, so
 * that `effdet eval --gt --dets` of the file gives the in-process numbers bit for bit. Fixed
 * decimals would not: an untrained head's scores all round to 0.010001, and the ties reorder the
 * ranking. */
void infer_results_add(InferResultsFile *r, int64_t image_id, int64_t category_id,
                       const Detection *d)
{
    char b[5][32];
    fprintf(r->f, "%s\n  {\"image_id\": %lld, \"category_id\": %lld, \"bbox\": [%s, %s, %s, %s], \"score\": %s}",
            r->n++ ? "," : "", (long long)image_id, (long long)category_id, fmt_exact(b[0], d->x1),
            fmt_exact(b[1], d->y1), fmt_exact(b[2], d->x2 - d->x1), fmt_exact(b[3], d->y2 - d->y1),
            fmt_exact(b[4], d->score));
}

int infer_results_commit(InferResultsFile *r, Err *err)
{
    fputs("\n]\n", r->f);
    int bad = ferror(r->f);
    bad |= fflush(r->f) != 0 || fsync(fileno(r->f)) != 0;
    bad |= fclose(r->f) != 0;
    r->f = NULL;
    if (bad) {
        infer_results_abort(r);
        return err_set(err, "--out %s: write failed", r->path);
    }
    if (rename(r->tmp, r->path) != 0) {
        int e = errno;
        infer_results_abort(r);
        return err_set(err, "--out %s: %s", r->path, strerror(e));
    }
    r->tmp[0] = 0;
    return 0;
}

void infer_results_abort(InferResultsFile *r)
{
    if (r->f) fclose(r->f);
    r->f = NULL;
    if (r->tmp[0]) unlink(r->tmp);
    r->tmp[0] = 0;
}

/* ---- held-back warnings -------------------------------------------------------------------------- */

void infer_skips_note(InferSkips *s, const char *msg)
{
    if (s->n++ == 0) snprintf(s->first, sizeof s->first, "%s", msg);
    if (s->any_read) {
        log_warn("skipping image: %s", msg);
        return;
    }
    char **held = realloc(s->held, (size_t)(s->n_held + 1) * sizeof *held);
    ASSERT(held);
    s->held = held;
    s->held[s->n_held] = strdup(msg);
    ASSERT(s->held[s->n_held]);
    s->n_held++;
}

void infer_skips_read(InferSkips *s)
{
    if (s->any_read) return;
    s->any_read = 1;
    for (int i = 0; i < s->n_held; i++) log_warn("skipping image: %s", s->held[i]);
    infer_skips_free(s);
}

int infer_skips_fail_all(const InferSkips *s, int n_images, Err *err)
{
    if (n_images == 1) return err_set(err, "%s", s->first);
    return err_set(err, "none of the %d images could be read (first: %s)", n_images, s->first);
}

void infer_skips_free(InferSkips *s)
{
    for (int i = 0; i < s->n_held; i++) free(s->held[i]);
    free(s->held);
    s->held = NULL, s->n_held = 0;
}

/* ---- evaluation on a COCO set ------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* What one evaluation holds while it runs. */
typedef struct EvalRun {
    InferPipeline p;
    const Dataset *ds;
    CocoEval *ev;
    InferResultsFile *out;  /* NULL: no results file */
    CocoDetection *dets;    /* (max_det) one image's, in category ids */
    InferSkips skips;
    InferEvalCounts *c;
} EvalRun;

/* Images [first, first + n) of the set: decode (a failure is a held-back warning), forward, and
 * every image, read or not, delivered to the evaluator. */
static int eval_batch(EvalRun *r, size_t first, int n, Err *err)
{
    InferPipeline *p = &r->p;
    int n_read = 0;
    for (int i = 0; i < n; i++) {
        Err e;
        if (infer_pipeline_add_file(p, r->ds->images[first + i].path, i, &e) != 0) {
            infer_skips_note(&r->skips, e.msg);
            r->c->unreadable++;
        } else {
            infer_skips_read(&r->skips);
            n_read++;
        }
    }
    InferResult res = {.dets = p->dets};
    if (n_read > 0 && infer_pipeline_run(p, n, &res, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        const DatasetImage *im = &r->ds->images[first + i];
        const Detection *d = res.dets + (size_t)i * p->cfg.max_det_per_image;
        int count = p->slots[i].ok ? res.count[i] : 0, kept = 0;
        for (int j = 0; j < count; j++) {
            int64_t cat = dataset_label_category(r->ds, d[j].class_id);
            if (cat < 0) {
                r->c->dets_unmapped++;
                continue;
            }
            r->dets[kept++] = (CocoDetection){.image_id = im->id, .category_id = cat,
                                              .bbox = {d[j].x1, d[j].y1, d[j].x2 - d[j].x1, d[j].y2 - d[j].y1},
                                              .score = d[j].score};
            if (r->out) infer_results_add(r->out, im->id, cat, &d[j]);
        }
        r->c->dets += (size_t)kept;
        if (coco_eval_add_image(r->ev, im->id, r->dets, (size_t)kept, err) != 0) return -1;
    }
    return 0;
}

/* The annotation file and images folder the job names. */
static int job_paths(const InferEvalJob *job, char *ann, char *images, size_t cap, Err *err)
{
    if (!job->data_dir) {
        snprintf(ann, cap, "%s", job->ann);
        snprintf(images, cap, "%s", job->images_dir);
        return 0;
    }
    if (snprintf(ann, cap, "%s/annotations.json", job->data_dir) >= (int)cap ||
        snprintf(images, cap, "%s/images", job->data_dir) >= (int)cap)
        return err_set(err, "--data %s: path too long", job->data_dir);
    return 0;
}

static int eval_all(EvalRun *r, const char *ann, CocoEvalResult *res, Err *err)
{
    const Dataset *ds = r->ds;
    double t0 = now_s();
    for (size_t first = 0; first < ds->n_images; first += (size_t)r->p.batch) {
        size_t left = ds->n_images - first;
        if (eval_batch(r, first, left < (size_t)r->p.batch ? (int)left : r->p.batch, err) != 0) return -1;
    }
    if (!r->skips.any_read) {
        infer_skips_fail_all(&r->skips, (int)ds->n_images, err);
        return err_wrap(err, "%s: ", ann);
    }
    if (coco_eval_check_complete(r->ev, err) != 0) return -1;
    double t1 = now_s();
    coco_eval_run(r->ev, res);
    log_info("eval: %zu images in %.2f s (%.1f img/s), %zu detections evaluated in %.3f s",
             ds->n_images, t1 - t0, (double)ds->n_images / (t1 - t0 > 0 ? t1 - t0 : 1e-9),
             r->c->dets, now_s() - t1);
    if (r->c->dets_unmapped)
        log_warn("%zu detections dropped: their labels have no category in %s (the model has %d "
                 "classes, the set fewer)", r->c->dets_unmapped, ann, ds->num_classes);
    return 0;
}

int infer_evaluate_dataset(const InferEvalJob *job, CocoEvalResult *res, InferEvalCounts *c,
                           Err *err)
{
    memset(res, 0, sizeof *res);
    memset(c, 0, sizeof *c);
    char ann[4096], images[4096];
    if (job_paths(job, ann, images, sizeof ann, err) != 0) return -1;
    Dataset ds;
    if (dataset_open(&ds, ann, images, job->o.num_classes > 0 ? job->o.num_classes : 0, err) != 0)
        return -1;
    if (ds.n_images == 0) {
        dataset_free(&ds);
        return err_set(err, "%s: no images to evaluate", ann);
    }
    /* The evaluator keeps its own copy of the ground truth (coco_eval_create), so the parsed file
     * is freed right away; the dataset index keeps paths and the label mapping. */
    CocoDataset gt;
    if (coco_dataset_load(&gt, ann, err) != 0) {
        dataset_free(&ds);
        return -1;
    }
    EvalRun r = {.ds = &ds, .out = NULL, .c = c};
    InferResultsFile out = {0};
    r.ev = coco_eval_create(&gt);
    coco_dataset_free(&gt);
    c->images = ds.n_images;
    InferOptions o = job->o;
    o.num_classes = ds.num_classes; /* the model's classes are the set's labels */
    int rc = -1;
    if (infer_pipeline_init(&r.p, &o, err) != 0) goto done;
    r.dets = malloc((size_t)r.p.cfg.max_det_per_image * sizeof *r.dets);
    ASSERT(r.ev && r.dets);
    if (job->out && infer_results_open(&out, job->out, err) != 0) goto done;
    r.out = job->out ? &out : NULL;
    rc = eval_all(&r, ann, res, err);
    if (r.out) {
        if (rc == 0) rc = infer_results_commit(&out, err);
        else infer_results_abort(&out);
    }
    if (rc != 0) coco_eval_result_free(res);
done:
    infer_skips_free(&r.skips);
    free(r.dets);
    coco_eval_free(r.ev);
    infer_pipeline_free(&r.p);
    dataset_free(&ds);
    return rc;
}

void infer_print_metrics(FILE *f, const CocoEvalResult *res, const InferEvalCounts *c)
{
    fprintf(f, "mAP %.4f mAP@0.5 %.4f mAP@0.75 %.4f (%zu images", res->stats[0], res->stats[1],
            res->stats[2], c->images);
    if (c->unreadable)
        fprintf(f, "; %zu image%s unreadable, evaluated without detections", c->unreadable,
                c->unreadable == 1 ? "" : "s");
    fprintf(f, ")\n");
    coco_eval_write_summary(f, res);
}

void infer_write_metrics_json(FILE *f, const CocoEvalResult *res)
{
    char b[32];
    fprintf(f, "{\n  \"stats\": [");
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++) {
        fputs(s ? ", " : "", f);
        fputs(fmt_exact(b, res->stats[s]), f);
    }
    fprintf(f, "],\n  \"stat_names\": [");
    for (int s = 0; s < COCO_EVAL_NUM_STATS; s++)
        fprintf(f, "%s\"%s\"", s ? ", " : "", coco_eval_stat_names[s]);
    fprintf(f, "],\n  \"per_category_AP\": {");
    for (size_t k = 0; k < res->n_categories; k++) {
        fprintf(f, "%s\n    \"%lld\": ", k ? "," : "", (long long)res->category_ids[k]);
        fputs(fmt_exact(b, res->category_ap[k]), f);
    }
    fprintf(f, "%s}\n}\n", res->n_categories ? "\n  " : "");
}
