/* tfevents.h: a TensorBoard event file writer (scalars only), with no TensorFlow dependency.
 *
 * The file is dir/tensorboard/events.out.tfevents.<unix seconds>.<hostname> (a ".<n>" suffix is
 * added when that name is taken). It is a TFRecord stream: per record, the data length as a
 * little-endian uint64, the masked CRC32C of those 8 bytes, the data (one serialized Event
 * protobuf), and the masked CRC32C of the data; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8.
 * The first Event carries wall_time and file_version "brain.Event:2"; each scalar is an Event with
 * wall_time, step and a Summary holding one Value{tag, simple_value}. Every record is flushed when
 * written, so a killed run keeps what it logged. */
#ifndef EFFDET_TFEVENTS_H
#define EFFDET_TFEVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

typedef struct TfEvents TfEvents;

/* Creates dir (one level) and dir/tensorboard when missing and opens a new event file there. */
TfEvents *tfevents_open(const char *dir, Err *err);
/* Appends one scalar Event (tag at most 256 bytes); 0 or -1. */
int tfevents_scalar(TfEvents *t, const char *tag, long step, double value, Err *err);
/* The file's path (for messages and tests); valid until tfevents_close. */
const char *tfevents_path(const TfEvents *t);
/* Closes the file and frees t; NULL is fine. */
void tfevents_close(TfEvents *t);

/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78) with a table from tfevents_crc32c_table;
 * exposed so the tests can check it against the standard check value. */
void tfevents_crc32c_table(uint32_t table[256]);
uint32_t tfevents_crc32c(const uint32_t table[256], const void *data, size_t n);
/* TFRecord's masking of a CRC, which keeps CRCs of data that holds CRCs well distributed. */
uint32_t tfevents_mask_crc(uint32_t crc);

#endif
