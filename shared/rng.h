/* rng.h: counter-based random numbers (Philox4x32-10). A value depends only on (key, counter), never
 * on call order or process, so per-sample randomness derived from (seed, epoch, index) is the same
 * whatever the number of processes, and a restarted process redoes exactly the same draws. */
#ifndef EFFDET_RNG_H
#define EFFDET_RNG_H

#include <stdint.h>

typedef struct Rng {
    uint32_t key[2];
    uint32_t ctr[4];
    uint32_t out[4];
    int used; /* values of out already handed out */
} Rng;

/* A stream keyed by seed, with the counter's high words set to (stream_hi, stream_lo). */
void rng_init(Rng *r, uint64_t seed, uint32_t stream_hi, uint32_t stream_lo);
uint32_t rng_u32(Rng *r);
float rng_uniform(Rng *r); /* [0, 1) with 24 random bits */
float rng_normal(Rng *r);  /* N(0, 1), Box-Muller */

#endif
