/*
 * drain.h - reading the workers' outcome lanes: validate, feed the policy,
 * reclaim the lanes of exited threads and dead processes. It works on the
 * segment's lanes and the circuits registry it is given, and reaches the
 * rest of the daemon only through the policy's env.
 */
#ifndef CBD_DRAIN_H
#define CBD_DRAIN_H

#include <stdint.h>
#include <uv.h>

#include "circuits.h"
#include "config.h"
#include "log.h"
#include "policy.h"
#include "segment_owner.h"

struct cbd_drain {
    uv_loop_t *loop;
    struct cbd_segment *seg;             /* its lanes region */
    struct cbd_circuits *circuits;       /* what the events' slots name */
    const struct cbd_policy_env *env;    /* events go to the policy with it */
    const struct cbd_config *cfg;        /* drain_interval_ms, reclaim_interval_ms */
    uint64_t events_drained;  /* valid events fed to the policy (stale ones included) */
    uint64_t events_invalid;  /* garbage: bad slot, check, outcome or kind */
    uint64_t events_stale;    /* valid but from an older epoch: ignored */
    uint64_t events_replayed; /* drained again after a crash, already counted: skipped */
    uint64_t lane_overruns;   /* lanes whose tail ran more than a lane ahead: skipped */
    uint64_t lanes_reclaimed; /* lanes freed after their thread or process went away */
    uint64_t calls_unattributed; /* call counts whose key names no circuit now (removed, garbage) */
    struct cbd_ratelimit invalid_warn;
    uv_timer_t tick, reclaim;
    int started;
    uint8_t *quiet;           /* per lane: drain ticks in a row it had nothing (saturates) */
    uint64_t ticks;
    int slow;                 /* every claimed lane quiet: the tick runs QUIET_EVERY times slower */
    uint32_t reclaim_passes;  /* one in RECLAIM_FULL_EVERY looks at every lane */
    uint64_t known_groups[CB_LANE_GROUP_WORDS]; /* groups seen claimed, until a look finds them empty */
    uint32_t *dirty;          /* slots with counters to publish after this batch */
    uint32_t ndirty, dirty_cap;
};

/* Points dr at what it drains and feeds (nothing starts; the pointers
 * outlive dr). cfg is read again at each cbd_drain_set_intervals. */
void cbd_drain_init(struct cbd_drain *dr, uv_loop_t *loop, struct cbd_segment *seg, struct cbd_circuits *circuits,
                    const struct cbd_policy_env *env, const struct cbd_config *cfg);
/* Drains first the lane a previous daemon left half-drained, then starts
 * the drain and reclaim timers. 0 or a libuv error. */
int cbd_drain_start(struct cbd_drain *dr);
/* Drains every owned lane now (doorbell, shutdown), then looks for
 * workers' demand for probes. (The drain tick drains only the lanes of
 * claimed groups, quiet ones less often: drain.c.) */
void cbd_drain_all(struct cbd_drain *dr);
void cbd_drain_stop(struct cbd_drain *dr);
/* Restarts the drain and reclaim timers with the configured intervals (reload). */
void cbd_drain_set_intervals(struct cbd_drain *dr);

/* For stats: lanes owned now, and events workers dropped (full lanes plus
 * no free lane). */
uint64_t cbd_drain_lanes_in_use(const struct cbd_drain *dr);
uint64_t cbd_drain_lane_drops(const struct cbd_drain *dr);

#endif /* CBD_DRAIN_H */
