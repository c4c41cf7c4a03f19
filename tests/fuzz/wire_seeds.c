/* wire_seeds.c: writes the seed inputs of fuzz_wire into the folder given as argv[1]: single
 * messages of each kind the evaluator reads, one with inline tensors and one with shared-memory
 * tensors in fuzz_wire's segment (FUZZ_SEGMENT there), and a whole epoch as a sequence of
 * 2-byte-length-prefixed messages over fuzz_wire's 3-image ground truth (with a duplicate, a
 * second epoch and a shutdown), so the fuzzer starts from inputs that reach the evaluation and
 * the shared-memory checks. Run by tests/fuzz/run.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/check.h"
#include "shared/wire.h"

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ASSERT(f);
    ASSERT(fwrite(data, 1, len, f) == len);
    ASSERT(fclose(f) == 0);
}

static void detections(WireWriter *w, uint64_t epoch, int64_t image_id, size_t n)
{
    double rows[2 * 6] = {0, 0, 10, 10, 0.9, 1, 4, 4, 40, 40, 0.5, 2};
    wire_writer_init(w, "detections", 3);
    wire_put_uint(w, "epoch", epoch);
    wire_put_int(w, "image_id", image_id);
    wire_put_bin(w, "dets", rows, n * 6 * sizeof(double));
}

static void epoch_end(WireWriter *w, uint64_t epoch)
{
    wire_writer_init(w, "epoch_end", 2);
    wire_put_uint(w, "epoch", epoch);
    wire_put_uint(w, "images", 3);
}

/* Appends w's message to seq with its 2-byte length, and frees w. */
static size_t append(uint8_t *seq, size_t at, WireWriter *w)
{
    size_t len;
    const void *data = wire_writer_data(w, &len);
    ASSERT(len < 65536);
    seq[at] = (uint8_t)len, seq[at + 1] = (uint8_t)(len >> 8);
    memcpy(seq + at + 2, data, len);
    wire_writer_free(w);
    return at + 2 + len;
}

int main(int argc, char **argv)
{
    ASSERT(argc == 2);
    const char *dir = argv[1];
    WireWriter w;
    size_t len;
    detections(&w, 0, 1, 2);
    write_file(dir, "detections", wire_writer_data(&w, &len), len);
    wire_writer_free(&w);
    epoch_end(&w, 0);
    write_file(dir, "epoch_end", wire_writer_data(&w, &len), len);
    wire_writer_free(&w);
    const double ap[2] = {0.5, -1};
    const int64_t ids[2] = {1, 2};
    WireTensor t_ap = {.dtype = ST_F64, .ndim = 1, .shape = {2}, .data = ap};
    WireTensor t_ids = {.dtype = ST_I64, .ndim = 1, .shape = {2}, .data = ids};
    wire_writer_init(&w, "metrics", 3);
    wire_put_f64_array(&w, "stats", ap, 2);
    wire_put_tensor(&w, "category_ap", &t_ap);
    wire_put_tensor(&w, "category_ids", &t_ids);
    write_file(dir, "tensors", wire_writer_data(&w, &len), len);
    wire_writer_free(&w);
    /* fuzz_wire's segment as its reader sees it: 2 slots of 4096 under that fixed name (the
     * writer checks only the geometry, so no object is needed here) */
    const ShmSegment seg = {.name = "/effdet-0-fuzz-0", .n_slots = 2, .slot_bytes = 4096};
    const int64_t image_shape[3] = {16, 16, 3}, t_shape[1] = {2};
    wire_writer_init(&w, "sample", 3);
    wire_put_uint(&w, "epoch", 0);
    wire_put_tensor_shm(&w, "image", ST_U8, 3, image_shape, &seg, 1, 64);
    wire_put_tensor_shm(&w, "t", ST_F64, 1, t_shape, &seg, 0, 4080); /* ends at the slot's end */
    write_file(dir, "shm_tensors", wire_writer_data(&w, &len), len);
    wire_writer_free(&w);

    uint8_t seq[4096];
    size_t at = 0;
    for (int64_t img = 1; img <= 3; img++) {
        detections(&w, 0, img, (size_t)(img % 3));
        at = append(seq, at, &w);
    }
    detections(&w, 0, 2, 1); /* a duplicate */
    at = append(seq, at, &w);
    epoch_end(&w, 0);
    at = append(seq, at, &w);
    detections(&w, 1, 3, 2);
    at = append(seq, at, &w);
    epoch_end(&w, 1);
    at = append(seq, at, &w);
    wire_writer_init(&w, "shutdown", 0);
    at = append(seq, at, &w);
    write_file(dir, "sequence", seq, at);
    return 0;
}
