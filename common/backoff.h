/*
 * backoff.h - the one formula every retry in persistence/ waits by:
 * exponential backoff with full jitter (AWS Architecture Blog, "Exponential
 * Backoff And Jitter"). Attempt n waits a delay drawn uniformly from
 * [0, min(cap, base * 2^n)], so clients that failed together (every host
 * that lost the same redis, every request DynamoDB throttled at once) do
 * not come back in step.
 *
 * Pure: the caller gives the random bits, so a test can give any.
 */
#ifndef CBD_BACKOFF_H
#define CBD_BACKOFF_H

#include <stdint.h>

static inline uint32_t cbd_backoff_ms(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms, uint64_t r)
{
    uint64_t ceiling = base_ms;
    for (uint32_t i = 0; i < attempt && ceiling < cap_ms; i++)
        ceiling *= 2;
    if (ceiling > cap_ms)
        ceiling = cap_ms;
    return (uint32_t)(r % (ceiling + 1));
}

#endif /* CBD_BACKOFF_H */
