/* cmd_parity.c: `effdet parity DIR --out OUT.safetensors [--device cpu|cuda[:N]] [--amp]
 * [--amp-dtype fp16|bf16]`: runs the model named in a reference fixture directory on its input and
 * writes our outputs under the fixture's names and layouts (worker/parity.h). Where the fixture
 * holds the reference outputs, it also prints, per tensor, max|ours - ref| / max|ref| against its
 * bound (parity_bound) and whether the detections match as sets, and exits 1 when anything is over
 * its bound. With --amp the activations are fp16 (or bf16) and the reference fp32: the head
 * outputs are judged against PARITY_AMP_BOUND, the detections are reported (a score a few fp16
 * units away can reorder the top k) and the training half is not run. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launch/cli.h"
#include "launch/commands.h"
#include "shared/safetensors.h"
#include "worker/parity.h"

static const char *USAGE = "effdet parity DIR --out OUT.safetensors [--device cpu|cuda[:N]] [--amp] "
                           "[--amp-dtype fp16|bf16]";

/* One judged line; returns 1 when the tensor is over its bound (parity_bound, or amp_bound when
 * that is > 0). */
static int judge(const char *name, double rel, double amp_bound)
{
    double bound = amp_bound > 0 ? amp_bound : parity_bound(name);
    int bad = bound > 0 && !(rel <= bound);
    if (bound > 0)
        printf("  %-14s max|ours-ref|/max|ref| = %.3e  %s (bound %.0e)\n", name, rel,
               bad ? "FAIL" : "ok", bound);
    else
        printf("  %-14s max|ours-ref|/max|ref| = %.3e  (not judged)\n", name, rel);
    return bad;
}

static int report_tensor(const SafeTensors *ref, const char *name, const float *ours, size_t n,
                         double amp_bound)
{
    const StTensor *t = st_find(ref, name);
    if (!t || t->dtype != ST_F32 || (size_t)st_numel(t) != n) return 0;
    float *buf = malloc(n * sizeof(float));
    if (!buf) return 1;
    memcpy(buf, t->data, n * sizeof(float));
    int bad = judge(name, parity_rel_err(ours, buf, n), amp_bound);
    if (amp_bound > 0) /* the average error too: 2-byte rounding noise is spread, not a spike */
        printf("  %-14s rms|ours-ref|/rms|ref| = %.3e  (information)\n", "",
               parity_rms_rel_err(ours, buf, n));
    free(buf);
    return bad;
}

/* Training half: losses (relative error) and every gradient / statistic the reference lists.
 * Returns the number of failures. */
static int report_train(const ParityRun *r, const char *dir)
{
    char path[1024];
    SafeTensors ref;
    Err err;
    int bad = 0;
    snprintf(path, sizeof path, "%s/train.safetensors", dir);
    if (!r->has_train || st_open(&ref, path, &err) != 0) return 0;
    printf("comparison with %s:\n", path);
    const char *names[3] = {"loss", "class_loss", "box_loss"};
    for (int i = 0; i < 3; i++) {
        const StTensor *t = st_find(&ref, names[i]);
        float v;
        if (!t || t->dtype != ST_F32 || t->nbytes != sizeof v) continue;
        memcpy(&v, t->data, sizeof v);
        printf("  %-14s ours %.9g ref %.9g\n", names[i], r->loss[i], v);
        bad += judge(names[i], v ? fabs((r->loss[i] - v) / v) : fabs(r->loss[i]), 0);
    }
    for (int i = 0; i < r->n_extra; i++)
        bad += report_tensor(&ref, r->extra[i].name, r->extra[i].data,
                             parity_tensor_numel(&r->extra[i]), 0);
    st_close(&ref);
    return bad;
}

/* Inference half: head outputs and detections. Returns the number of failures. */
static int report(const ParityRun *r, const char *dir, Precision prec)
{
    const double amp_bound = prec == PREC_FP32 ? 0 : PARITY_AMP_BOUND;
    char path[1024];
    SafeTensors ref;
    Err err;
    int bad = 0;
    snprintf(path, sizeof path, "%s/io.safetensors", dir);
    if (st_open(&ref, path, &err) != 0) return 0;
    const ModelConfig *c = &r->cfg;
    int A = model_config_anchors_per_loc(c);
    printf("comparison with %s:\n", path);
    for (int l = 0; l < c->num_levels; l++) {
        char name[32];
        size_t cells = (size_t)r->batch * r->model.feat_h[l] * r->model.feat_w[l];
        snprintf(name, sizeof name, "class_out.%d", c->min_level + l);
        bad += report_tensor(&ref, name, r->class_out[l], cells * A * c->num_classes, amp_bound);
        snprintf(name, sizeof name, "box_out.%d", c->min_level + l);
        bad += report_tensor(&ref, name, r->box_out[l], cells * A * 4, amp_bound);
    }
    const StTensor *d = st_find(&ref, "detections");
    size_t rows = (size_t)r->batch * c->max_det_per_image;
    if (d && d->dtype == ST_F32 && (size_t)st_numel(d) == rows * 6) {
        float *buf = malloc(rows * 6 * sizeof(float));
        int unmatched = 0;
        if (!buf) return bad + 1;
        memcpy(buf, d->data, rows * 6 * sizeof(float));
        /* Under --amp: boxes within 1% (+0.5 px), scores within 1e-2. */
        const float box_abs = prec ? 0.5f : 1e-3f, box_rel = prec ? 1e-2f : 1e-4f;
        const float score_tol = prec ? 1e-2f : 1e-5f;
        for (int b = 0; b < r->batch; b++)
            unmatched += parity_match_detections(r->detections + (size_t)b * c->max_det_per_image * 6,
                                                 buf + (size_t)b * c->max_det_per_image * 6,
                                                 c->max_det_per_image, box_abs, box_rel, score_tol);
        if (prec != PREC_FP32) {
            printf("  detections     %d rows (of ours and the reference's %zu each) unmatched within "
                   "1%% + 0.5 px and 1e-2 in score (not judged under --amp: ranks near the top-k "
                   "cut can swap)\n", unmatched, rows);
        } else {
            printf("  detections     %s (%d rows unmatched)\n", unmatched ? "FAIL" : "match", unmatched);
            bad += unmatched > 0;
        }
        free(buf);
    }
    st_close(&ref);
    return bad;
}

int cmd_parity(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"device", required_argument, 0, 'd'},
                                         {"amp", no_argument, 0, 'a'},
                                         {"amp-dtype", required_argument, 0, 't'},
                                         {0, 0, 0, 0}};
    const char *out = NULL, *device = "cpu";
    Precision prec = PREC_FP32;
    Err err;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 'o')
            out = optarg;
        else if (opt == 'd')
            device = optarg;
        else if (opt == 'a')
            precision_amp_flag(&prec);
        else if (opt == 't') {
            if (precision_parse(optarg, &prec, &err) != 0) return cli_fail("parity", &err);
        } else
            return cli_usage(USAGE);
    }
    if (!out || optind != argc - 1) return cli_usage(USAGE);
    const char *dir = argv[optind];
    ParityRun r;
    if (parity_run(&r, dir, device, prec, &err) != 0) return cli_fail("parity", &err);
    int rc = parity_write(&r, out, &err);
    if (rc == 0) {
        printf("wrote %s (%s, batch %d, %dx%d, %s, %s activations)\n", out, r.cfg.name, r.batch,
               r.h, r.w, device, precision_name(prec));
        int bad = report(&r, dir, prec) + report_train(&r, dir);
        if (bad) rc = err_set(&err, "%d comparison%s with the reference over %s bound (lines marked FAIL)",
                              bad, bad == 1 ? "" : "s", bad == 1 ? "its" : "their");
        else printf("parity: every comparison within its bound\n");
    }
    parity_run_free(&r);
    return rc ? cli_fail("parity", &err) : 0;
}
