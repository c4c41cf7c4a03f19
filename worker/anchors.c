/* anchors.c: effdet anchor generation (see anchors.h). */
#include "worker/anchors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int anchors_build(Anchors *a, const ModelConfig *c, int h, int w, Err *err)
{
    int fh[MAX_LEVELS], fw[MAX_LEVELS], A = model_config_anchors_per_loc(c);
    memset(a, 0, sizeof *a);
    model_config_feat_sizes(c, h, w, fh, fw);
    for (int l = 0; l < c->num_levels; l++) {
        a->level_start[l] = a->count;
        a->count += fh[l] * fw[l] * A;
    }
    a->level_start[c->num_levels] = a->count;
    a->boxes = malloc((size_t)a->count * 4 * sizeof(float));
    if (!a->boxes) return err_set(err, "anchors: out of memory for %d anchors", a->count);
    float *out = a->boxes;
    for (int l = 0; l < c->num_levels; l++) {
        double sy = (double)h / fh[l], sx = (double)w / fw[l];
        for (int i = 0; i < fh[l]; i++) {
            double cy = sy / 2 + i * sy;
            for (int j = 0; j < fw[l]; j++) {
                double cx = sx / 2 + j * sx;
                for (int o = 0; o < c->num_scales; o++) {
                    double octave = pow(2.0, (double)o / c->num_scales);
                    for (int r = 0; r < c->num_aspects; r++) {
                        double hx = c->anchor_scale * sx * octave * c->aspects[r][0] / 2.0;
                        double hy = c->anchor_scale * sy * octave * c->aspects[r][1] / 2.0;
                        *out++ = (float)(cy - hy);
                        *out++ = (float)(cx - hx);
                        *out++ = (float)(cy + hy);
                        *out++ = (float)(cx + hx);
                    }
                }
            }
        }
    }
    return 0;
}

void anchors_free(Anchors *a)
{
    free(a->boxes);
    a->boxes = NULL;
    a->count = 0;
}
