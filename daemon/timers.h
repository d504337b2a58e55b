/*
 * timers.h - deadlines in one min-heap behind one uv_timer on the loop:
 * each (slot, epoch, at) goes to a fire callback once its time has come.
 * The daemon arms circuits' recovery timeouts and probe leases here; the
 * heap knows nothing of circuits.
 */
#ifndef CBD_TIMERS_H
#define CBD_TIMERS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "clock.h"

struct cbd_deadline {
    uint64_t at_ns; /* CLOCK_MONOTONIC */
    uint32_t slot, epoch;
};

/* A due deadline, handed back as it was added; now: the clocks when it fired. */
typedef void cbd_deadline_fn(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns, const struct cbd_now *now);

struct cbd_timers {
    uv_timer_t timer;
    struct cbd_deadline *heap;
    size_t n, cap;
    int started;
    cbd_deadline_fn *fire;
    void *arg;
};

/* The heap on loop; due deadlines go to fire(arg, ...). 0 or a libuv error. */
int cbd_timers_init(struct cbd_timers *tm, uv_loop_t *loop, cbd_deadline_fn *fire, void *arg);
/* Calls fire(slot, epoch, at_ns) once at_ns has passed. Entries are never
 * removed: the receiver ignores the ones it outgrew. */
void cbd_timers_add(struct cbd_timers *tm, uint32_t slot, uint32_t epoch, uint64_t at_ns);
/* Closes the uv_timer (its close callback runs on the loop) and frees the heap. */
void cbd_timers_close(struct cbd_timers *tm);

#endif /* CBD_TIMERS_H */
