/*
 * clock.h - the daemon's two clocks, read together: CLOCK_MONOTONIC for
 * deadlines, CLOCK_REALTIME for what is published (opened_at, transition
 * times). The loop's callbacks read them; the policy is handed them and
 * never reads a clock itself, so a test gives it any time it likes.
 */
#ifndef CBD_CLOCK_H
#define CBD_CLOCK_H

#include <stdint.h>

/* Both clocks, read once per loop turn by the caller. */
struct cbd_now {
    uint64_t mono_ns; /* CLOCK_MONOTONIC: deadlines */
    int64_t real_ns;  /* CLOCK_REALTIME: opened_at, transition times */
};

/* Both clocks, now. */
void cbd_now(struct cbd_now *now);

#endif /* CBD_CLOCK_H */
