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
#include "clock.h"
#include "fault.h"
#include "segment.h"

struct cbd_override;

/* The daemon's private view of one circuit; the record is what it publishes. */
struct cbd_circuit {
    struct cb_seg_record *rec;   /* in the state region (daemon writes) */
    _Atomic uint64_t *permit;    /* in the lanes region (workers decrement) */
    uint32_t slot;
    cb_config cfg;
    cb_state state;
    unsigned flags;              /* CB_SEG_F_FORCED / CB_SEG_F_DISABLED: operator actions */
    uint32_t incarnation;        /* of the slot (segment.h) */
    uint32_t epoch;
    uint32_t streak;             /* CLOSED: consecutive counted failures */
    uint32_t probe_successes;    /* HALF_OPEN: consecutive probe successes */
    uint32_t trip_failure_count; /* failures counted when it last opened */
    int64_t opened_at;           /* epoch seconds of the last opening; 0 when CLOSED */
    int64_t opened_at_ns;        /* the same, CLOCK_REALTIME ns */
    int64_t open_until_ns;       /* OPEN: CLOCK_REALTIME ns it ends at (recovery timeout, or a
                                  * force_open for_ms); 0: none */
    uint64_t deadline_ns;        /* OPEN: ask for a probe at; HALF_OPEN: lease expiry; 0: none */
    uint64_t armed_ns;           /* deadline of the one live timer entry of this epoch; 0: none */
    int probe_asked;             /* try_probe sent, answer pending (OPEN: election; HALF_OPEN: renewal) */
    uint64_t asked_ns;           /* when that try_probe was sent */
    uint64_t lease_until_ns;     /* HALF_OPEN on a fleet lease: surely ours until then; 0: none */
    uint64_t renew_ns;           /* HALF_OPEN on a fleet lease: renew it (or, once asked, give it up) at */
    int electable;               /* OPEN past its recovery timeout on a fleet store: waits for a
                                  * worker's demand (CB_SEG_F_ELECTABLE) before it competes */
    uint64_t grace_ns;           /* HALF_OPEN on a fleet lease: give it back at if nobody probes */
    int reported;                /* HALF_OPEN: a probe reported since the grant or the last renewal */
    uint32_t electable_pos;      /* its place in the daemon's list of electable circuits */
    /* Rules beyond Powertools' (sliding_window_type != 0, backoff): */
    struct cbd_window *window;   /* CLOSED: the rate window (window.h); NULL until the first call
                                  * of a circuit with a rate rule (or out of memory: no rate trips) */
    uint32_t probe_calls, probe_failures, probe_slow; /* HALF_OPEN by rate: probe results so far */
    uint32_t open_step;          /* OPEN: reopenings before this one since a stable close (backoff) */
    uint32_t reopenings;         /* openings by outcomes since the last stable close */
    uint64_t open_jitter;        /* OPEN: the random draw its wait took (backoff's jitter) */
    int64_t adopted_until_ns;    /* OPEN adopted from a store: the end its store keeps for the opening
                                  * (the opening host's backoff), never waited less; 0: none */
    uint64_t closed_mono_ns;     /* when it last closed (CLOCK_MONOTONIC); 0: never opened */
    int dirty;                   /* pub has changes not yet published */
    struct cb_seg_vdata pub;     /* the version published next: counters, sync state, drain
                                  * checkpoint (the state fields above are copied in) */
    /* The daemon's bookkeeping beside the policy (cbd.c; the policy never
     * reads these): what the registering worker asked for, so a reload can
     * recompute cfg, and the config file section that applies to it. */
    cb_config asked;             /* fields named in asked_mask (bit i: cb__policy_fields[i]) */
    unsigned asked_mask;
    const struct cbd_override *override; /* NULL: no [circuit]/[prefix] section matches */
    cb_config set;               /* an operator's cbctl set: the fields in set_mask, over the rest */
    unsigned set_mask;
    int restore_seen;            /* adopted, and the fleet store reported it during the restore */
    uint32_t owner_uid;          /* who registered it over the socket (CBD_OWNER_NONE: nobody counted) */
    uint64_t last_used_ns;       /* CLOCK_MONOTONIC of its last outcome or registration (expiry) */
    int removed;                 /* the slot holds no circuit (removed, free for reuse) */
    uint64_t transitions[3][3];  /* [from][to] (cb_state) since it was loaded (metrics) */
    uint64_t rejected, probes;   /* workers' call counts folded from the lanes since it was loaded */
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
    /* The history sequence the next transition's entry will take. */
    uint64_t (*history_next)(void *arg);
    /* Fleet stores: the circuit became electable (on) or stopped being so;
     * the daemon checks the permit words of electable circuits for demand
     * after each drain (cbd_policy_on_demand). */
    void (*electable)(void *arg, uint32_t slot, int on);
    /* Fleet stores: give the probe lease of c's opening back without a
     * result (nobody on this host probes). */
    void (*release)(void *arg, const struct cbd_circuit *c);
    /* The store is shared by a fleet (not host-local): a probe lease is
     * then renewed while it is held, and given up when it lapses. */
    int fleet;
    /* 64 random bits: the jitter of a backoff wait (open_backoff_*). */
    uint64_t (*random)(void *arg);
};

enum cbd_event_result {
    CBD_EVENT_COUNTED = 0, /* the event fed the state machine */
    CBD_EVENT_STALE,       /* older epoch (or a ticket kind this state never issued): ignored */
};

/* Loads the circuit from its record (fresh: CLOSED, epoch 0; adopted: as
 * published) and arms its deadline if it is OPEN or HALF_OPEN (on a fleet
 * store an adopted HALF_OPEN asks at once whether the lease is its own:
 * the previous process held it under another owner id). */
void cbd_policy_load(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t slot,
                     struct cb_seg_record *rec, _Atomic uint64_t *permit, const struct cbd_now *now);

/* One validated lane event (slot, check, outcome and kind already checked). */
enum cbd_event_result cbd_policy_on_event(const struct cbd_policy_env *env, struct cbd_circuit *c,
                                          const struct cb_lane_event *ev, const struct cbd_now *now);

/* Frees what the policy allocated for the circuit (its window); the
 * circuit is loaded again before any other use. */
void cbd_policy_unload(struct cbd_circuit *c);

/* Publishes the counters and streaks gathered since the last flush (one
 * seqlock section per circuit per drain batch). */
void cbd_policy_flush(struct cbd_circuit *c);

/* A worker asked for a probe of an electable OPEN circuit (the permit
 * word's CB_PERMIT_DEMAND): compete for the fleet's probe lease, once. */
void cbd_policy_on_demand(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now);

/* A timer entry (epoch, at_ns) fired: OPEN -> ask for a probe; HALF_OPEN ->
 * reclaim the permits of silent probers, and on a fleet store renew the
 * probe lease halfway through it (or, when it lapsed unrenewed, go OPEN on
 * the same opening and ask for it again). Stale entries are ignored. */
void cbd_policy_on_deadline(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t epoch,
                            uint64_t at_ns, const struct cbd_now *now);

/* The store's answer to try_probe. OPEN: granted -> HALF_OPEN now, holding
 * the lease for probe_lease_ms from when it was asked; refused -> stay OPEN
 * and ask again at lease_expiry (epoch seconds; 0 unknown: in a second).
 * HALF_OPEN (a renewal): granted -> the lease runs on; refused -> nothing
 * yet (a store reports another holder through cbd_policy_apply, and an
 * unrenewed lease lapses). */
void cbd_policy_on_probe_result(const struct cbd_policy_env *env, struct cbd_circuit *c, int64_t opened_at,
                                int granted, int64_t lease_expiry, const struct cbd_now *now);

/* A state from outside this host's outcomes (the store at restore, another
 * host), adopted as it is (opened_at in epoch seconds, or opened_at_ns > 0
 * from a store that keeps full precision; whole seconds count from the end
 * of that second, so a probe is never early): the store's compare-and-write already decided
 * that it is the fleet's, even when its opened_at is older than ours.
 * CLOSED, or OPEN since opened_at. A HALF_OPEN elsewhere is OPEN here: the
 * probe belongs to its holder, and this host asks the store again once
 * the recovery timeout, the opening's open_until_ns (CLOCK_REALTIME ns the
 * opening host's backoff ends at; 0 none: the recovery timeout alone) and
 * the holder's lease_expiry (epoch seconds; 0 for other states) have all
 * passed - a HALF_OPEN of this host gives its probes up.
 * No-op if it is already the circuit's state, and while an operator holds
 * the circuit (forced or disabled): the operator's word beats the fleet's
 * on this host. 0, or -ERANGE (nothing applied) for a time beyond
 * CB_TIME_MAX_S or an opened_at_ns outside opened_at's second. */
int cbd_policy_apply(const struct cbd_policy_env *env, struct cbd_circuit *c, cb_state state, unsigned flags,
                     int64_t opened_at, int64_t opened_at_ns, uint32_t failure_count, int64_t lease_expiry,
                     int64_t open_until_ns, cb_source source, const struct cbd_now *now);

/* The fleet store is reachable again: a HALF_OPEN circuit renews its lease
 * now, so a probe granted host-local during the outage becomes the fleet's
 * (or gives way to another host's). */
void cbd_policy_renew_now(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now);

/* Operator actions (control socket), each one transition with source
 * operator, even when the state stays (disable/enable in CLOSED): watchers
 * see every operator action as a new epoch.
 *   FORCE_OPEN    OPEN + FORCED: rejected whatever outcomes say; with
 *                 for_ms > 0 a timer returns it to CLOSED (source timer)
 *   FORCE_CLOSED  CLOSED + FORCED: outcomes count in totals, never trip
 *   RESET         CLOSED under the policy: flags cleared, streak 0
 *   DISABLE       + DISABLED over the current state: workers bypass it
 *   ENABLE        CLOSED under the policy (flags cleared) */
enum cbd_operator_action { CBD_FORCE_OPEN, CBD_FORCE_CLOSED, CBD_RESET, CBD_DISABLE, CBD_ENABLE };
void cbd_policy_operator(const struct cbd_policy_env *env, struct cbd_circuit *c, enum cbd_operator_action action,
                         uint32_t for_ms, const struct cbd_now *now);

/* A new policy for the circuit (registration is done; this is a reload, a
 * config section that now applies, or an operator's set). Published in the
 * record at once; an OPEN circuit's recovery deadline follows the new
 * recovery_timeout_ms and backoff (with the same jitter draw); a failure
 * streak keeps its count and is compared with the new threshold on the
 * next counted failure; a rate window keeps its calls (window.h:
 * cbd_window_reshape) and is judged by the new thresholds on the next call;
 * shadow applies to the state word at once. No transition. */
void cbd_policy_set_config(const struct cbd_policy_env *env, struct cbd_circuit *c, const cb_config *cfg,
                           const struct cbd_now *now);

/* Mirrors the fleet store's health into the record (CB_SYNC_*, epoch s). */
void cbd_policy_set_sync(struct cbd_circuit *c, unsigned sync_state, int64_t synced_at);

/* A force_open for_ms: CLOCK_REALTIME ms it ends at; else 0. */
static inline int64_t cbd_policy_forced_until_ms(const struct cbd_circuit *c)
{
    return c->state == CB_OPEN && (c->flags & CB_SEG_F_FORCED) ? c->open_until_ns / 1000000 : 0;
}

/* The wait in OPEN (ms) of an opening `step` reopenings after a stable
 * close, r its random draw: recovery_timeout_ms, or with backoff a value
 * in [recovery_timeout_ms, min(cap, recovery_timeout_ms x multiplier^step)]. */
uint64_t cbd_policy_open_wait_ms(const cb_config *cfg, uint32_t step, uint64_t r);

/* Probe lease in ms: probe_lease_ms, or recovery_timeout_ms when 0. */
uint32_t cbd_policy_lease_ms(const struct cbd_circuit *c);

#endif /* CBD_POLICY_H */
