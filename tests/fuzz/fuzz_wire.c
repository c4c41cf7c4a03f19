/* fuzz_wire.c: libFuzzer target for the message decoder (shared/wire.c) and the evaluator's
 * handling of messages (evaluator/evaluator_proc.c), the code that reads bytes from other
 * processes.
 *
 * Each input is used twice:
 * 1. as one message: decoded under the default limits and under tight ones; when it decodes,
 *    every typed getter and both tensor readers are tried on the fields the protocol uses, the
 *    shared-memory one against a real 2-slot segment (fuzz_segment), whose slot a tensor it
 *    accepts must lie in;
 * 2. as a sequence of messages, each a 2-byte little-endian length and that many bytes, fed to a
 *    fresh evaluator over a 3-image ground truth, with its clock advancing, so duplicates, epochs,
 *    timeouts and evaluations are reached. Everything the evaluator publishes must decode.
 * Any crash, sanitizer report, leak or failed ASSERT is a bug; errors are expected and must be
 * one line. Build and run with tests/fuzz/run.sh. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "evaluator/evaluator_proc.h"
#include "shared/check.h"
#include "shared/coco.h"
#include "shared/shm.h"
#include "shared/wire.h"

/* The segment's name as the seeds write it (tests/fuzz/wire_seeds.c), the same in every run, so
 * that the fuzzer can get past the name check to the slot, offset and bytes checks. */
#define FUZZ_SEGMENT "/effdet-0-fuzz-0"

static const char GT[] =
    "{\"images\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}], "
    "\"categories\": [{\"id\": 1}, {\"id\": 2}], \"annotations\": ["
    "{\"id\": 1, \"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 10, 10], \"area\": 100},"
    "{\"id\": 2, \"image_id\": 2, \"category_id\": 2, \"bbox\": [5, 5, 40, 40], \"area\": 1600,"
    " \"iscrowd\": 1}]}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    setenv("EFFDET_LOG", "error", 1); /* the evaluator warns about every bad message */
    return 0;
}

static void check_err(const Err *err) { ASSERT(err->msg[0] && !strchr(err->msg, '\n')); }

/* A real mapping of 2 slots of 4096 bytes, made on first use and kept for the process (libFuzzer
 * gives no context to keep it in). Its object is unlinked at once, so nothing is left in /dev/shm
 * however the fuzzer ends, and it is renamed FUZZ_SEGMENT: the reader only compares names. */
static const ShmSegment *fuzz_segment(void)
{
    static ShmSegment seg;
    if (!seg.base) {
        Err err;
        int rc = shm_segment_create(&seg, "fuzz", 2, 4096, &err);
        ASSERT(rc == 0);
        rc = shm_unlink(seg.name);
        ASSERT(rc == 0);
        seg.owner = 0;
        snprintf(seg.name, sizeof seg.name, "%s", FUZZ_SEGMENT);
    }
    return &seg;
}

/* A shared-memory tensor the reader accepts lies inside its slot of seg. */
static void check_shm_tensor(const ShmSegment *seg, const WireTensor *t, uint32_t slot)
{
    ASSERT(slot < seg->n_slots);
    const uint8_t *p = t->data, *start = shm_slot(seg, slot);
    ASSERT(p >= start && t->bytes <= seg->slot_bytes - (size_t)(p - start));
    if (t->bytes) {
        volatile uint8_t x = p[t->bytes - 1]; /* mapped: a fault here is a bug */
        (void)x;
    }
}

/* Tries every getter on the fields the protocol uses; results may be errors, never crashes. */
static void fuzz_getters(const WireMsg *m)
{
    static const char *keys[] = {"epoch", "image_id", "dets", "images", "stats", "category_ids",
                                 "category_ap", "kind", "what", "t", "image"};
    const ShmSegment *seg = fuzz_segment();
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        Err err;
        uint64_t u;
        int64_t i;
        double d, v[12];
        const char *s;
        const void *p;
        size_t n;
        WireMap sub;
        WireTensor t;
        uint32_t slot;
        if (wire_get_uint(&m->root, keys[k], &u, &err)) check_err(&err);
        if (wire_get_int(&m->root, keys[k], &i, &err)) check_err(&err);
        if (wire_get_f64(&m->root, keys[k], &d, &err)) check_err(&err);
        if (wire_get_str(&m->root, keys[k], &s, &n, &err)) check_err(&err);
        if (wire_get_bin(&m->root, keys[k], &p, &n, &err)) check_err(&err);
        if (wire_get_f64_array(&m->root, keys[k], v, 12, &err)) check_err(&err);
        if (wire_get_map(&m->root, keys[k], &sub, &err)) check_err(&err);
        if (wire_get_tensor(&m->root, keys[k], &t, &err)) {
            check_err(&err);
        } else if (t.bytes) {
            volatile uint8_t x = ((const uint8_t *)t.data)[t.bytes - 1]; /* in bounds */
            (void)x;
        }
        if (wire_get_tensor_shm(&m->root, keys[k], seg, &t, &slot, &err))
            check_err(&err);
        else
            check_shm_tensor(seg, &t, slot);
    }
}

static void fuzz_one_message(const uint8_t *data, size_t size)
{
    WireLimits lims[2] = {wire_limits_default(), wire_limits_default()};
    lims[1].max_msg_bytes = 512, lims[1].max_map_entries = 4, lims[1].max_array_len = 4;
    lims[1].max_str_bytes = 16, lims[1].max_bin_bytes = 64, lims[1].max_depth = 3;
    lims[1].max_objects = 32;
    WireMsg m;
    wire_msg_init(&m);
    for (int l = 0; l < 2; l++) {
        Err err;
        if (wire_decode(&m, data, size, &lims[l], &err) == 0) {
            ASSERT(m.type[0] && strlen(m.type) < WIRE_TYPE_CAP);
            fuzz_getters(&m);
        } else {
            check_err(&err);
        }
    }
    wire_msg_free(&m);
}

/* Whatever the evaluator publishes must be a valid message. */
static int fuzz_publish(void *ctx, const void *msg, size_t len)
{
    WireLimits lim = wire_limits_default();
    WireMsg m;
    Err err;
    wire_msg_init(&m);
    ASSERT(wire_decode(&m, msg, len, &lim, &err) == 0);
    wire_msg_free(&m);
    ++*(size_t *)ctx;
    return 0;
}

static void fuzz_evaluator(const uint8_t *data, size_t size)
{
    CocoDataset gt;
    Err err;
    size_t published = 0;
    WireLimits lim = wire_limits_default();
    ASSERT(coco_dataset_parse(&gt, GT, sizeof GT - 1, "gt", &err) == 0);
    Evaluator *ev = evaluator_create(&gt, 1.0, &lim, fuzz_publish, &published);
    double now = 0;
    for (size_t pos = 0; pos + 2 <= size;) {
        size_t len = (size_t)data[pos] | (size_t)data[pos + 1] << 8;
        pos += 2;
        if (len > size - pos) len = size - pos;
        /* a copy of exactly len bytes, so that ASan sees any read past the message */
        uint8_t *msg = malloc(len ? len : 1);
        ASSERT(msg);
        memcpy(msg, data + pos, len);
        int rc = evaluator_handle(ev, msg, len, now);
        free(msg);
        pos += len;
        now += 0.4;
        evaluator_tick(ev, now);
        if (rc == EVALUATOR_SHUTDOWN) break;
    }
    evaluator_finish(ev);
    const EvaluatorCounts *c = evaluator_counts(ev);
    ASSERT(c->publish_failed == 0 && c->evaluated <= c->messages);
    evaluator_free(ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_one_message(data, size);
    fuzz_evaluator(data, size);
    return 0;
}
