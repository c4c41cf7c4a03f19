/* safetensors.h: strict reading and atomic writing of safetensors files.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON header
 * ({"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end)}}), then the
 * raw little-endian row-major data. The reader rejects anything the format does not allow, each
 * with one line naming the file and the tensor: a header over 100 MB or past the end of the file,
 * malformed JSON, unknown dtypes, negative or overflowing shapes, a byte count that is not
 * shape x dtype size, duplicate names, and offsets that do not tile the data section exactly
 * (no gap, no overlap, nothing left over). Tensor data is not necessarily aligned: copy it out
 * with memcpy (st_read_f32 does). */
#ifndef EFFDET_SAFETENSORS_H
#define EFFDET_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "shared/err.h"

enum { ST_MAX_DIMS = 8 };

typedef enum { ST_F64, ST_F32, ST_F16, ST_BF16, ST_I64, ST_I32, ST_I16, ST_I8, ST_U8, ST_BOOL } StDtype;

typedef struct StTensor {
    const char *name; /* points into the parsed header */
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const uint8_t *data; /* unaligned, nbytes long */
    size_t nbytes;
} StTensor;

typedef struct SafeTensors {
    char path[512];
    uint8_t *buf; /* the whole file */
    size_t size;
    struct cJSON *header;
    StTensor *tensors;
    int count;
} SafeTensors;

int st_open(SafeTensors *st, const char *path, Err *err);
void st_close(SafeTensors *st); /* idempotent */
const StTensor *st_find(const SafeTensors *st, const char *name);
/* The string value of a __metadata__ key, or NULL. */
const char *st_meta(const SafeTensors *st, const char *key);
size_t st_dtype_size(StDtype dt);
const char *st_dtype_name(StDtype dt);
int64_t st_numel(const StTensor *t);
/* Copies tensor `name` (dtype F32, exactly the given shape) into dst; errors name the tensor. */
int st_read_f32(const SafeTensors *st, const char *name, int ndim, const int64_t *shape, float *dst,
                Err *err);

/* One tensor to write: data is host memory of numel * dtype size bytes. */
typedef struct StWriteTensor {
    const char *name;
    StDtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} StWriteTensor;

/* Writes tensors and metadata (meta_kv: n_meta pairs key, value) to path atomically: a temporary
 * file in the same directory, fsync, rename, fsync of the directory. A crash at any point leaves
 * either the old file or the complete new one. */
int st_write(const char *path, const StWriteTensor *tensors, int count, const char *const *meta_kv,
             int n_meta, Err *err);

#endif
