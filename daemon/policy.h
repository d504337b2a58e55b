/*
 * policy.h - the per-circuit state machine (Powertools' circuit breaker).
 *
 * Pure: no libuv, no clock reads, no I/O. Time comes in as `now`, effects
 * on the rest of the daemon go out through struct cbd_policy_env, so a unit
 * test drives a circuit with a malloc'd record, a permit word and fake
 * callbacks.
 */
#ifndef CBD_POLICY_H
#define CBD_POLICY_H

#include <stdatomic.h>
#include <stdint.h>

#include "cb.h"
#include "segment.h"

/* Both clocks, read once per loop turn by the caller. */
struct cbd_now {
    uint64_t mono_ns; /* CLOCK_MONOTONIC: deadlines */
    int64_t real_ns;  /* CLOCK_REALTIME: opened_at, transition times */
};

/* The daemon's private view of one circuit; the record is what it publishes. */
struct cbd_circuit {
    struct cb_seg_record *rec;   /* in the state region (daemon writes) */
    _Atomic uint64_t *permit;    /* in the lanes region (workers decrement) */
    uint32_t slot;
    cb_config cfg;
    cb_state state;
    unsigned flags;              /* CB_SEG_F_FORCED / CB_SEG_F_DISABLED (operator actions, later) */
    uint32_t epoch;
    uint32_t streak;             /* CLOSED: consecutive counted failures */
    uint32_t probe_successes;    /* HALF_OPEN: consecutive probe successes */
    uint32_t trip_failure_count; /* failures counted when it last opened */
    int64_t opened_at;           /* epoch seconds of the last opening; 0 when CLOSED */
    uint64_t deadline_ns;        /* OPEN: ask for a probe at; HALF_OPEN: lease expiry; 0: none */
    uint64_t armed_ns;           /* deadline of the one live timer entry of this epoch; 0: none */
    int probe_asked;             /* OPEN: try_probe sent, answer pending */
    int dirty;                   /* counters below not yet published */
    uint32_t d_successes, d_failures, d_ignored, d_stale;
};

/* What the policy needs from the daemon. All calls happen on the loop. */
struct cbd_policy_env {
    void *arg;
    /* After a transition is published (record, permit, state word): append
     * history, log, tell the store and subscribers. prev_opened_at is the
     * opening the transition supersedes (0 if it was CLOSED). */
    void (*transitioned)(void *arg, const struct cbd_circuit *c, cb_state from, int64_t prev_opened_at,
                         cb_source source, const struct cbd_now *now);
    /* Ask the store for the probe lease of an OPEN circuit whose recovery
     * timeout passed; the answer comes back as cbd_policy_on_probe_result. */
    void (*try_probe)(void *arg, const struct cbd_circuit *c, uint32_t lease_s);
    /* Call cbd_policy_on_deadline(c, epoch, at_ns) once at_ns has passed. */
    void (*arm)(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns);
};

enum cbd_event_result {
    CBD_EVENT_COUNTED = 0, /* the event fed the state machine */
    CBD_EVENT_STALE,       /* older epoch (or a ticket kind this state never issued): ignored */
};

/* Loads the circuit from its record (fresh: CLOSED, epoch 0; adopted: as
 * published) and arms its deadline if it is OPEN or HALF_OPEN. */
void cbd_policy_load(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t slot,
                     struct cb_seg_record *rec, _Atomic uint64_t *permit, const struct cbd_now *now);

/* One validated lane event (slot, check, outcome and kind already checked). */
enum cbd_event_result cbd_policy_on_event(const struct cbd_policy_env *env, struct cbd_circuit *c,
                                          const struct cb_lane_event *ev, const struct cbd_now *now);

/* Publishes the counters and streaks gathered since the last flush (one
 * seqlock section per circuit per drain batch). */
void cbd_policy_flush(struct cbd_circuit *c);

/* A timer entry (epoch, at_ns) fired: OPEN -> ask for a probe; HALF_OPEN ->
 * reclaim the permits of silent probers. Stale entries are ignored. */
void cbd_policy_on_deadline(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t epoch,
                            uint64_t at_ns, const struct cbd_now *now);

/* The store's answer to try_probe. granted: HALF_OPEN now; else stay OPEN
 * and ask again at lease_expiry (epoch seconds). */
void cbd_policy_on_probe_result(const struct cbd_policy_env *env, struct cbd_circuit *c, int64_t opened_at,
                                int granted, int64_t lease_expiry, const struct cbd_now *now);

/* A state from outside this host's outcomes (the store at restore, another
 * host, later an operator): CLOSED, or OPEN since opened_at. A HALF_OPEN
 * elsewhere is OPEN here: the probe belongs to its holder, and this host
 * asks the store again when the recovery timeout has passed. flags is kept
 * for forced/disabled states. No-op if it is already the circuit's state. */
void cbd_policy_apply(const struct cbd_policy_env *env, struct cbd_circuit *c, cb_state state, unsigned flags,
                      int64_t opened_at, uint32_t failure_count, cb_source source, const struct cbd_now *now);

/* Probe lease in ms: probe_lease_ms, or recovery_timeout_ms when 0. */
uint32_t cbd_policy_lease_ms(const struct cbd_circuit *c);

const char *cbd_state_name(cb_state s);
const char *cbd_source_name(cb_source s);

#endif /* CBD_POLICY_H */
