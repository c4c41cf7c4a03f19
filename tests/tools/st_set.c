/* st_set.c: copies a safetensors file, setting every element of one F32 tensor to a value, for
 * tests that need poisoned weights: `st_set IN OUT NAME VALUE` (VALUE may be inf or nan). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/safetensors.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: st_set IN OUT NAME VALUE\n");
        return 2;
    }
    SafeTensors st;
    Err err;
    if (st_open(&st, argv[1], &err) != 0) return fprintf(stderr, "st_set: %s\n", err.msg), 1;
    StWriteTensor *ts = calloc((size_t)st.count, sizeof *ts);
    float value = strtof(argv[4], NULL), *patched = NULL;
    int found = 0;
    for (int i = 0; i < st.count; i++) {
        const StTensor *t = &st.tensors[i];
        ts[i] = (StWriteTensor){t->name, t->dtype, t->ndim, {0}, t->data};
        memcpy(ts[i].shape, t->shape, sizeof t->shape);
        if (!strcmp(t->name, argv[3]) && t->dtype == ST_F32) {
            size_t n = (size_t)st_numel(t);
            patched = malloc(n * sizeof(float));
            for (size_t j = 0; j < n; j++) patched[j] = value;
            ts[i].data = patched;
            found = 1;
        }
    }
    if (!found) return fprintf(stderr, "st_set: no F32 tensor '%s' in %s\n", argv[3], argv[1]), 1;
    const char *meta[] = {"model", st_meta(&st, "model") ? st_meta(&st, "model") : ""};
    int rc = st_write(argv[2], ts, st.count, meta, 1, &err);
    if (rc) fprintf(stderr, "st_set: %s\n", err.msg);
    free(patched), free(ts);
    st_close(&st);
    return rc ? 1 : 0;
}
