/* st_diff.c: compares the F32 tensors two safetensors files share, for tests of training runs
 * that must agree within float rounding: `st_diff A B [PREFIX]` prints the worst
 * max|a-b| / max(max|a|, 1e-3) over the tensors (whose names start with PREFIX) and its tensor:
 * relative, except for tensors near zero (a conv bias feeding batch norm gets no gradient and stays
 * at its init, where any rounding is a large relative change). A tensor missing from B or of
 * another shape is an error (exit 1). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "shared/safetensors.h"

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: st_diff A B [PREFIX]\n");
        return 2;
    }
    const char *prefix = argc == 4 ? argv[3] : "";
    SafeTensors a, b;
    Err err;
    if (st_open(&a, argv[1], &err) != 0) return fprintf(stderr, "st_diff: %s\n", err.msg), 1;
    if (st_open(&b, argv[2], &err) != 0) {
        st_close(&a);
        return fprintf(stderr, "st_diff: %s\n", err.msg), 1;
    }
    double worst = 0;
    const char *worst_name = "";
    int compared = 0, rc = 0;
    for (int i = 0; i < a.count && rc == 0; i++) {
        const StTensor *ta = &a.tensors[i];
        if (ta->dtype != ST_F32 || strncmp(ta->name, prefix, strlen(prefix))) continue;
        const StTensor *tb = st_find(&b, ta->name);
        if (!tb || tb->dtype != ST_F32 || st_numel(tb) != st_numel(ta)) {
            fprintf(stderr, "st_diff: %s: missing or of another shape in %s\n", ta->name, argv[2]);
            rc = 1;
            break;
        }
        const float *pa = (const float *)ta->data, *pb = (const float *)tb->data;
        double maxa = 0, maxd = 0;
        for (int64_t j = 0; j < st_numel(ta); j++) {
            double x = pa[j], d = fabs((double)pa[j] - pb[j]);
            if (fabs(x) > maxa) maxa = fabs(x);
            if (d > maxd || isnan(d)) maxd = isnan(d) ? INFINITY : d;
        }
        double rel = maxd / (maxa > 1e-3 ? maxa : 1e-3);
        if (rel > worst || !compared) worst = rel, worst_name = ta->name;
        compared++;
    }
    if (rc == 0) printf("%d tensors, worst max|a-b|/max|a| %.3g (%s)\n", compared, worst, worst_name);
    st_close(&a);
    st_close(&b);
    return rc;
}
