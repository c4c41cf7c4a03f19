/* test_batch_schedule.c: the epoch schedule of worker/batch_stream.h (batch_schedule).
 *
 * For n images, batch and world sizes (small ones, primes, exact and inexact divisions, batches
 * larger than the dataset), one epoch of ceil(n / (batch * world)) batches over every rank: the
 * valid positions, read in schedule order (batch, then rank, then position), hold the epoch's order
 * exactly once each, from a train permutation (train_epoch_permutation) or, for eval (order NULL),
 * 0..n-1 in order; invalid positions appear only in the last batch, there are exactly
 * batches * batch * world - n of them, and they repeat the epoch's first images. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "loader/train_sample.h"
#include "worker/batch_stream.h"

/* One epoch of n images at batch x world, in the given order (NULL: eval). */
static void check_epoch(const uint32_t *order, uint64_t n, int batch, int world)
{
    uint64_t g_size = (uint64_t)batch * (uint64_t)world;
    uint64_t batches = (n + g_size - 1) / g_size;
    uint32_t *seen = calloc(n, sizeof *seen);
    uint32_t idx[8];
    uint8_t valid[8];
    assert_non_null(seen);
    assert_true(batch <= 8);
    uint64_t next = 0, n_invalid = 0;
    for (uint64_t b = 0; b < batches; b++)
        for (int r = 0; r < world; r++) {
            memset(idx, 0xff, sizeof idx);
            memset(valid, 0xff, sizeof valid);
            batch_schedule(order, n, b, batch, r, world, idx, valid);
            for (int j = 0; j < batch; j++) {
                uint64_t g = b * g_size + (uint64_t)r * (uint64_t)batch + (uint64_t)j;
                if (valid[j] > 1)
                    fail_msg("n %llu batch %d world %d: batch %llu rank %d position %d: valid is "
                             "%u", (unsigned long long)n, batch, world, (unsigned long long)b, r,
                             j, valid[j]);
                if (idx[j] >= n)
                    fail_msg("n %llu batch %d world %d: batch %llu rank %d position %d: index "
                             "%u out of range", (unsigned long long)n, batch, world,
                             (unsigned long long)b, r, j, idx[j]);
                if (!valid[j]) {
                    if (b != batches - 1)
                        fail_msg("n %llu batch %d world %d: invalid position in batch %llu of %llu",
                                 (unsigned long long)n, batch, world, (unsigned long long)b,
                                 (unsigned long long)batches);
                    /* Padding repeats the epoch's first images (shapes stay fixed). */
                    uint32_t want = order ? order[g % n] : (uint32_t)(g % n);
                    if (idx[j] != want)
                        fail_msg("n %llu batch %d world %d: padding at %llu is %u, expected %u",
                                 (unsigned long long)n, batch, world, (unsigned long long)g,
                                 idx[j], want);
                    n_invalid++;
                    continue;
                }
                uint32_t want = order ? order[next] : (uint32_t)next;
                if (idx[j] != want)
                    fail_msg("n %llu batch %d world %d %s: valid position %llu holds %u, expected "
                             "%u", (unsigned long long)n, batch, world, order ? "train" : "eval",
                             (unsigned long long)next, idx[j], want);
                next++;
                seen[idx[j]]++;
            }
        }
    assert_int_equal(next, n);
    assert_int_equal(n_invalid, batches * g_size - n);
    for (uint64_t i = 0; i < n; i++)
        if (seen[i] != 1)
            fail_msg("n %llu batch %d world %d %s: image %llu seen %u times",
                     (unsigned long long)n, batch, world, order ? "train" : "eval",
                     (unsigned long long)i, seen[i]);
    free(seen);
}

static void test_epoch_covers_each_image_once(void **state)
{
    (void)state;
    const uint64_t ns[] = {1, 5, 22, 24, 100};
    const int batches[] = {1, 3, 4, 8};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
        uint64_t n = ns[a];
        uint32_t *perm = malloc(n * sizeof *perm);
        uint8_t *hit = calloc(n, 1);
        assert_non_null(perm);
        assert_non_null(hit);
        train_epoch_permutation(1234, 3, perm, n);
        /* A permutation, so once per order position is once per image. */
        for (uint64_t i = 0; i < n; i++) {
            assert_true(perm[i] < n);
            assert_int_equal(hit[perm[i]]++, 0);
        }
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++)
            for (int world = 1; world <= 3; world++) {
                check_epoch(perm, n, batches[bi], world);
                check_epoch(NULL, n, batches[bi], world);
            }
        free(hit);
        free(perm);
    }
}

/* The exact layout of the header's formula at one inexact case: n 5, batch 3, world 2. */
static void test_layout(void **state)
{
    (void)state;
    uint32_t order[5] = {4, 2, 0, 3, 1}, idx[3];
    uint8_t valid[3];
    batch_schedule(order, 5, 0, 3, 0, 2, idx, valid);
    assert_memory_equal(idx, ((uint32_t[]){4, 2, 0}), sizeof idx);
    assert_memory_equal(valid, ((uint8_t[]){1, 1, 1}), sizeof valid);
    batch_schedule(order, 5, 0, 3, 1, 2, idx, valid);
    assert_memory_equal(idx, ((uint32_t[]){3, 1, 4}), sizeof idx);
    assert_memory_equal(valid, ((uint8_t[]){1, 1, 0}), sizeof valid);
    batch_schedule(NULL, 5, 0, 3, 1, 2, idx, valid);
    assert_memory_equal(idx, ((uint32_t[]){3, 4, 0}), sizeof idx);
    assert_memory_equal(valid, ((uint8_t[]){1, 1, 0}), sizeof valid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_epoch_covers_each_image_once),
        cmocka_unit_test(test_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
