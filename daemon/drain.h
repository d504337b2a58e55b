/*
 * drain.h - reading the workers' outcome lanes: validate, feed the policy,
 * reclaim the lanes of exited threads and dead processes.
 */
#ifndef CBD_DRAIN_H
#define CBD_DRAIN_H

#include <stdint.h>
#include <uv.h>

#include "log.h"

struct cbd;

struct cbd_drain {
    uint64_t events_drained;  /* valid events fed to the policy (stale ones included) */
    uint64_t events_invalid;  /* garbage: bad slot, check, outcome or kind */
    uint64_t events_stale;    /* valid but from an older epoch: ignored */
    uint64_t events_replayed; /* drained again after a crash, already counted: skipped */
    uint64_t lane_overruns;   /* lanes whose tail ran more than a lane ahead: skipped */
    uint64_t lanes_reclaimed; /* lanes freed after their thread or process went away */
    struct cbd_ratelimit invalid_warn;
    uv_timer_t tick, reclaim;
    int started;
    uint32_t *dirty;          /* slots with counters to publish after this batch */
    uint32_t ndirty, dirty_cap;
};

int cbd_drain_start(struct cbd *d);
/* Drains every owned lane now (doorbell, tick, shutdown). */
void cbd_drain_all(struct cbd *d);
void cbd_drain_stop(struct cbd *d);
/* Restarts the drain and reclaim timers with the configured intervals (reload). */
void cbd_drain_set_intervals(struct cbd *d);

/* For stats: lanes owned now, and events workers dropped (full lanes plus
 * no free lane). */
uint64_t cbd_drain_lanes_in_use(const struct cbd *d);
uint64_t cbd_drain_lane_drops(const struct cbd *d);

#endif /* CBD_DRAIN_H */
