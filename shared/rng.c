/* rng.c: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11). */
#include "shared/rng.h"

#include <math.h>

static void philox_round(uint32_t ctr[4], const uint32_t key[2])
{
    uint64_t p0 = (uint64_t)0xD2511F53u * ctr[0], p1 = (uint64_t)0xCD9E8D57u * ctr[2];
    uint32_t c0 = (uint32_t)(p1 >> 32) ^ ctr[1] ^ key[0], c2 = (uint32_t)(p0 >> 32) ^ ctr[3] ^ key[1];
    ctr[0] = c0, ctr[1] = (uint32_t)p1, ctr[2] = c2, ctr[3] = (uint32_t)p0;
}

static void philox_block(Rng *r)
{
    uint32_t c[4] = {r->ctr[0], r->ctr[1], r->ctr[2], r->ctr[3]}, k[2] = {r->key[0], r->key[1]};
    for (int i = 0; i < 10; i++) {
        philox_round(c, k);
        k[0] += 0x9E3779B9u, k[1] += 0xBB67AE85u;
    }
    for (int i = 0; i < 4; i++) r->out[i] = c[i];
    if (++r->ctr[0] == 0) r->ctr[1]++;
    r->used = 0;
}

void rng_init(Rng *r, uint64_t seed, uint32_t stream_hi, uint32_t stream_lo)
{
    r->key[0] = (uint32_t)seed, r->key[1] = (uint32_t)(seed >> 32);
    r->ctr[0] = r->ctr[1] = 0;
    r->ctr[2] = stream_lo, r->ctr[3] = stream_hi;
    r->used = 4;
}

uint32_t rng_u32(Rng *r)
{
    if (r->used == 4) philox_block(r);
    return r->out[r->used++];
}

float rng_uniform(Rng *r) { return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

float rng_normal(Rng *r)
{
    float u1 = ((float)(rng_u32(r) >> 8) + 0.5f) * (1.0f / 16777216.0f);
    float u2 = rng_uniform(r);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}
