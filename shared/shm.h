/* shm.h: shared-memory segments divided into equal slots, where pixels and tensors travel between
 * processes (a message names a slot; shared/wire.h).
 *
 * A segment is a POSIX shared-memory object "/effdet-<pid>-<tag>-<counter>" created O_EXCL with
 * mode 0600 (only this user can map it) by the producer that writes its slots. Consumers open it
 * by name, read-only, and check that its size is exactly what the producer announced, so a slot
 * reference can be validated against the mapping before any byte is touched. Slots are
 * slot_bytes apart, slot_bytes a multiple of SHM_ALIGN, so tensors at aligned offsets are aligned
 * for every dtype and for SIMD loads.
 *
 * The creator unlinks the name when it closes the segment; shm_unlink_stale removes segments left
 * by processes that died (their pid no longer exists), which the coordinator runs at start. */
#ifndef EFFDET_SHM_H
#define EFFDET_SHM_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

enum {
    SHM_NAME_CAP = 64, /* "/effdet-" + pid + tag + counter + NUL */
    SHM_TAG_CAP = 24,  /* tags are [a-z0-9_]{1,23} */
    SHM_ALIGN = 4096,  /* slot size and segment alignment */
};

/* Largest segment accepted, created or opened (a forged size is refused before mmap). */
#define SHM_MAX_BYTES ((size_t)64 << 30)

typedef struct ShmSegment {
    char name[SHM_NAME_CAP];
    uint8_t *base;     /* NULL when closed */
    size_t bytes;      /* n_slots * slot_bytes */
    size_t slot_bytes; /* multiple of SHM_ALIGN */
    uint32_t n_slots;
    int owner;         /* 1: created here; closing unlinks */
    int writable;
} ShmSegment;

/* slot_bytes rounded up to SHM_ALIGN. */
size_t shm_slot_round(size_t slot_bytes);

/* Creates a segment of n_slots slots of at least slot_bytes each (rounded up), mapped read-write.
 * tag names the producer in the segment name ("loader0", "aug1"). The memory is reserved now, so
 * a /dev/shm too small for it is this error rather than a SIGBUS at the first write. */
int shm_segment_create(ShmSegment *s, const char *tag, uint32_t n_slots, size_t slot_bytes,
                       Err *err);
/* Opens a segment by name: the name must look like one of ours, and its size must equal
 * n_slots * slot_bytes (slot_bytes a multiple of SHM_ALIGN). writable 0 maps it read-only. */
int shm_segment_open(ShmSegment *s, const char *name, uint32_t n_slots, size_t slot_bytes,
                     int writable, Err *err);
/* Unmaps; the owner also unlinks the name. Idempotent; a zeroed segment is fine. */
void shm_segment_close(ShmSegment *s);

/* Start of slot i (i < n_slots; ASSERTed). */
uint8_t *shm_slot(const ShmSegment *s, uint32_t i);

/* 1 when [offset, offset + bytes) lies inside one slot (overflow-safe); 0 otherwise. */
int shm_range_ok(const ShmSegment *s, uint32_t slot, uint64_t offset, uint64_t bytes);

/* Removes /dev/shm/effdet-<pid>-* objects whose pid is not a live process; returns how many. */
int shm_unlink_stale(Err *err);

#endif
