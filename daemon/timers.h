/*
 * timers.h - circuit deadlines (recovery timeouts, probe leases) in one
 * min-heap behind one uv_timer, plus the clock reads the policy is given.
 */
#ifndef CBD_TIMERS_H
#define CBD_TIMERS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "policy.h"

struct cbd;

struct cbd_deadline {
    uint64_t at_ns; /* CLOCK_MONOTONIC */
    uint32_t slot, epoch;
};

struct cbd_timers {
    uv_timer_t timer;
    struct cbd_deadline *heap;
    size_t n, cap;
    int started;
};

/* Both clocks, now. */
void cbd_now(struct cbd_now *now);

int cbd_timers_init(struct cbd *d);
/* Calls cbd_policy_on_deadline(slot, epoch, at_ns) once at_ns has passed.
 * Entries are never removed: the policy ignores the ones it outgrew. */
void cbd_timers_add(struct cbd *d, uint32_t slot, uint32_t epoch, uint64_t at_ns);
void cbd_timers_close(struct cbd *d);

#endif /* CBD_TIMERS_H */
