/*
 * clock.c - reads both clocks (clock.h). The only place the daemon reads
 * the time of day or the monotonic clock for its circuits; everything
 * below the loop's callbacks takes a struct cbd_now.
 */
#include "clock.h"

#include <time.h>

void cbd_now(struct cbd_now *now)
{
    struct timespec m, r;
    clock_gettime(CLOCK_MONOTONIC, &m);
    clock_gettime(CLOCK_REALTIME, &r);
    now->mono_ns = (uint64_t)m.tv_sec * 1000000000u + (uint64_t)m.tv_nsec;
    now->real_ns = (int64_t)r.tv_sec * 1000000000 + r.tv_nsec;
}
