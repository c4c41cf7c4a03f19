/* test_parity_train.c: one training forward + backward against the effdet reference
 * (train.safetensors of ../shared/fixtures/effdet_d0_128): the three losses, the BN running
 * statistics after the train-mode forward, and every gradient the reference lists.
 *
 * Bounds: parity_bound (worker/parity.c), the same as `effdet parity` applies on every backend. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shared/safetensors.h"
#include "worker/parity.h"

static char fixture_dir[1024];

static int setup(void **state)
{
    const char *root = getenv("EFFDET_FIXTURES");
    snprintf(fixture_dir, sizeof fixture_dir, "%s/effdet_d0_128", root ? root : "../shared/fixtures");
    return 0;
}

static void test_train_parity(void **state)
{
    ParityRun r;
    Err err;
    if (parity_run(&r, fixture_dir, "cpu", PREC_FP32, &err) != 0) fail_msg("parity_run: %s", err.msg);
    assert_true(r.has_train);
    SafeTensors ref;
    char path[1200];
    snprintf(path, sizeof path, "%s/train.safetensors", fixture_dir);
    if (st_open(&ref, path, &err) != 0) fail_msg("%s", err.msg);
    const char *names[3] = {"loss", "class_loss", "box_loss"};
    for (int i = 0; i < 3; i++) {
        float v;
        int64_t none[1] = {0};
        if (st_read_f32(&ref, names[i], 0, none, &v, &err) != 0) fail_msg("%s", err.msg);
        double rel = fabs((r.loss[i] - v) / v);
        print_message("%s: ours %.9g ref %.9g rel %.3e (bound 1e-4)\n", names[i], r.loss[i], v, rel);
        if (!(rel <= 1e-4)) fail_msg("%s differs by %.3e relative", names[i], rel);
    }
    int checked = 0;
    for (int i = 0; i < r.n_extra; i++) {
        const ParityTensor *e = &r.extra[i];
        if (strncmp(e->name, "grad.", 5) && strncmp(e->name, "bn_after.", 9)) continue;
        size_t n = parity_tensor_numel(e);
        float *buf = malloc(n * sizeof(float));
        assert_non_null(buf);
        if (st_read_f32(&ref, e->name, e->ndim, e->shape, buf, &err) != 0) fail_msg("%s", err.msg);
        double rel = parity_rel_err(e->data, buf, n), bound = parity_bound(e->name);
        print_message("%s: %.3e (bound %.0e)\n", e->name, rel, bound);
        if (!(rel <= bound)) fail_msg("%s: relative error %.3e > %.0e", e->name, rel, bound);
        free(buf);
        checked++;
    }
    assert_int_equal(checked, 17); /* 11 gradients and 6 running statistics */
    st_close(&ref);
    parity_run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_train_parity)};
    return cmocka_run_group_tests_name("parity_train", tests, setup, NULL);
}
