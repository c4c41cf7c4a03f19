/* jpeg_fixtures.h: helpers shared by the JPEG tests (tests/unit/test_jpeg.c, good images, and
 * tests/unit/test_jpeg_bad.c, bad input): made-up JPEGs from TurboJPEG, byte surgery on their
 * markers, scratch paths, and checks of the decoder's one-line error messages. Every helper fails
 * the running cmocka test (fail_msg) instead of returning an error. */
#ifndef EFFDET_TEST_JPEG_FIXTURES_H
#define EFFDET_TEST_JPEG_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

/* Fails unless err->msg contains needle. */
void assert_msg_contains(const Err *err, const char *needle);

/* Fails unless err->msg is one non-empty line (every decode error is) that contains name. */
void assert_err_line(const Err *err, const char *name);

/* Fills px (h, w, 3) with a smooth RGB pattern (JPEG keeps it within a few levels). */
void fill_smooth(uint8_t *px, int w, int h);

/* TurboJPEG-compressed copy (quality 92) of px in pixel format pf (TJPF_*), with chroma
 * subsampling subsamp (TJSAMP_*) and TJFLAG_* flags, as a malloc'ed buffer of *len bytes. */
uint8_t *tj_make(const uint8_t *px, int w, int h, int pf, int subsamp, int flags, size_t *len);

/* A w x h 4:2:0 RGB JPEG of the fill_smooth pattern, malloc'ed, *len bytes. */
uint8_t *make_rgb_jpeg(int w, int h, size_t *len);

/* Makes a private temporary directory in dir and puts dir/name in path; the caller removes both. */
void temp_path(char *dir, size_t dir_size, char *path, size_t path_size, const char *name);

/* Offset of the first marker 0xFF code in jpg (fails when absent). */
size_t find_marker(const uint8_t *jpg, size_t len, uint8_t code);

/* Rewrites the SOF marker's height and width fields. */
void set_sof_size(uint8_t *jpg, size_t len, int w, int h);

/* A malloc'ed copy of jpg (*out_len bytes) with two stray bytes before the first SOS: a warning
 * Pillow ignores, which then comes before any other problem of the file. */
uint8_t *with_stray_bytes(const uint8_t *jpg, size_t len, size_t *out_len);

#endif
