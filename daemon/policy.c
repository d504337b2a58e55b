/*
 * policy.c - the per-circuit state machine, Powertools' rules host-wide.
 *
 *   CLOSED    a counted FAILURE grows the streak, a SUCCESS resets it, an
 *             IGNORED outcome leaves it alone. The event that brings the
 *             streak to failure_threshold trips the circuit: exactly one
 *             trip, because the trip bumps the epoch and every later event
 *             of the old epoch is stale.
 *   OPEN      nothing counts. When recovery_timeout_ms has passed the daemon
 *             (never a worker) asks the store for the probe lease; granted ->
 *             HALF_OPEN, refused -> ask again when the holder's lease ends.
 *   HALF_OPEN the permit word holds half_open_max_probes permits for this
 *             epoch; workers take them with a CAS. Only PROBE results of this
 *             epoch count: success_threshold consecutive successes close the
 *             circuit, one failure reopens it, a success short of the
 *             threshold or an IGNORED result gives the permit back. Probers
 *             silent for the lease (probe_lease_ms, 0 = recovery_timeout_ms,
 *             counted from entering HALF_OPEN or the last probe report) lose
 *             their permits: a HALF_OPEN -> HALF_OPEN transition with a new
 *             epoch and a fresh permit word, so their late reports are stale.
 *
 * Publication (every transition): the snapshot fields go inside the record's
 * seqlock; the permit word of a new HALF_OPEN epoch is stored before the
 * state word; the state word is stored last with release, so a worker that
 * sees the new epoch also sees everything the daemon wrote for it. Counters
 * are folded into the record once per drain batch (cbd_policy_flush), not
 * per event, to keep seqlock sections few.
 *
 * Fleet leases (env->fleet: a redis or dynamodb store). The store's election
 * makes one host the probe holder of an opening for a lease counted in
 * whole seconds of the store's clock; the daemon asks for one second more
 * than probe_lease_ms rounds up to, so the lease lasts at least
 * probe_lease_ms from the moment it was asked for, on the daemon's own
 * monotonic clock (no clock of another host is trusted). The holder renews
 * it halfway through - while it probes, no other host can take it over, so
 * the fleet's probe bound holds however long the probes take - and when a
 * renewal is not granted before the lease runs out (store silent, or
 * another host holds it now), it stops admitting probes: OPEN on the same
 * opening, and at once another election. Only a dead, hung or cut-off
 * holder loses its lease to another host. The probers' own lease (above) is
 * separate: it reclaims permits of silent probers on the holding host.
 *
 * Probes on demand (fleet stores). A host competes for the fleet's probe
 * only when one of its workers wants one, and holds the lease only while
 * it probes, so a host without traffic never keeps Powertools functions or
 * other hosts from probing: when the recovery timeout passes the circuit
 * becomes electable (OPEN, CB_SEG_F_ELECTABLE, same epoch); the first call
 * that finds it so sets CB_PERMIT_DEMAND and rings the doorbell, and the
 * daemon then asks for the lease. Granted, it is renewed (halfway through)
 * only while a probe ticket is out or a probe reported since the last
 * renewal; else, and when nobody took a permit within a grace of the grant
 * (min(1 s, lease / 4)), it is given back (release) and the circuit is
 * electable again on the same opening. Refused, the circuit waits for the holder's lease to end, then
 * is electable again. The local store elects at once, as before.
 *
 * Deadlines: each circuit has at most one live timer entry, identified by
 * (epoch, armed_ns). A transition bumps the epoch, which lazily deletes the
 * old entry; a later deadline in the same epoch (a probe report extends the
 * lease) is noticed when the entry fires and re-armed then, so the timer
 * heap holds one entry per waiting circuit, not one per event.
 *
 * Operator holds (flags in the state word): FORCED pins the state - a
 * forced OPEN never asks for a probe (its only deadline is the end of a
 * force_open for_ms, which closes it with source timer), a forced CLOSED
 * counts outcomes in the totals but keeps no streak, so it cannot trip.
 * DISABLED leaves the state as it was under a bypass: workers get BYPASS
 * tickets and report nothing, and no deadline runs while it lasts. While
 * either flag is set, states from the store are ignored on this host: the
 * operator asked for exactly this state here. The flags live in the state
 * word and the end of a force_open for_ms in the version (open_until_ns),
 * so both survive a daemon restart.
 */
#include "policy.h"

#include <errno.h>
#include <stdlib.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "window.h"

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ll

uint32_t cbd_policy_lease_ms(const struct cbd_circuit *c)
{
    return c->cfg.probe_lease_ms ? c->cfg.probe_lease_ms : c->cfg.recovery_timeout_ms;
}

/* Monotonic time of a CLOCK_REALTIME instant (ns); now if it has passed. */
static uint64_t mono_at(int64_t real_ns, const struct cbd_now *now)
{
    int64_t left = real_ns - now->real_ns;
    return now->mono_ns + (left > 0 ? (uint64_t)left : 0);
}

#define BACKOFF_MAX_MS 604800000u /* open_backoff_max_ms 0: 7 days, the bound of every duration */

/*
 * How long an opening waits in OPEN (ms): recovery_timeout_ms, or with
 * backoff (open_backoff_multiplier_pct > 100) for the opening that comes
 * `step` reopenings after a stable close, a draw r spread uniformly over
 * [recovery_timeout_ms, min(cap, recovery_timeout_ms x multiplier^step)]:
 * full jitter over the growth, never shorter than the configured timeout,
 * so hosts that opened together do not probe together. The first opening
 * (step 0) waits recovery_timeout_ms exactly, as without backoff.
 */
uint64_t cbd_policy_open_wait_ms(const cb_config *cfg, uint32_t step, uint64_t r)
{
    uint64_t base = cfg->recovery_timeout_ms;
    uint64_t cap = cfg->open_backoff_max_ms ? cfg->open_backoff_max_ms : BACKOFF_MAX_MS;
    if (cfg->open_backoff_multiplier_pct <= 100 || step == 0 || cap <= base)
        return base;
    /* At most ~2000 steps (x1.01 from 1 ms to 7 days), then the cap. */
    double ceiling = (double)base, factor = cfg->open_backoff_multiplier_pct / 100.0;
    for (uint32_t i = 0; i < step && ceiling < (double)cap; i++)
        ceiling *= factor;
    uint64_t top = ceiling < (double)cap ? (uint64_t)ceiling : cap;
    return base + r % (top - base + 1);
}

/* CLOCK_REALTIME (ns) the wait in OPEN of an opening at opened_at_ns ends
 * at: its own wait, and never before the end a store gave an adopted one. */
static int64_t recovery_end(const struct cbd_circuit *c, int64_t opened_at_ns)
{
    int64_t end = opened_at_ns + (int64_t)cbd_policy_open_wait_ms(&c->cfg, c->open_step, c->open_jitter) *
                                     (int64_t)NS_PER_MS;
    return end > c->adopted_until_ns ? end : c->adopted_until_ns;
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
    return a == 0 ? b : b == 0 ? a : a < b ? a : b;
}

/* The earliest of the state's deadline, the fleet lease's renewal and its
 * grace; 0: none. */
static uint64_t next_deadline(const struct cbd_circuit *c)
{
    return earliest(earliest(c->deadline_ns, c->renew_ns), c->grace_ns);
}

/* Keeps exactly one live timer entry per circuit: arm only when there is
 * none, or the new deadline comes first. */
static void schedule(const struct cbd_policy_env *env, struct cbd_circuit *c)
{
    uint64_t at = next_deadline(c);
    if (at == 0 || (c->armed_ns != 0 && c->armed_ns <= at))
        return;
    c->armed_ns = at;
    env->arm(env->arg, c->slot, c->epoch, at);
}

/* The fleet's rules for probe leases apply to c: a fleet store, and not a
 * shadow trial (whose transitions reach the fleet as a marker only, so its
 * probes are its host's own, as with the local store). */
static bool fleet_lease(const struct cbd_policy_env *env, const struct cbd_circuit *c)
{
    return env->fleet && !c->cfg.shadow;
}

/* Asks the store for the probe lease of the circuit's opening (OPEN: the
 * election; HALF_OPEN: a renewal). The lease asked for is one second more
 * than probe_lease_ms rounds up to: a store counts it in whole seconds from
 * the second it grants it in, so it lasts probe_lease_ms from now at least. */
static void ask_lease(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now)
{
    c->probe_asked = 1;
    c->asked_ns = now->mono_ns;
    if (env->fleet && !fleet_lease(env, c)) {
        /* A trial's probe is its own host's: the fleet's item never holds
         * the trial's opening, so its election could never be won. */
        cbd_policy_on_probe_result(env, c, c->opened_at, 1, 0, now);
        return;
    }
    env->try_probe(env->arg, c, (cbd_policy_lease_ms(c) + 999) / 1000 + 1);
}


/* The fleet granted (or renewed) the lease asked for at asked_ns: surely
 * ours for probe_lease_ms from then; renewed halfway. */
static void hold_lease(const struct cbd_policy_env *env, struct cbd_circuit *c)
{
    uint64_t lease = (uint64_t)cbd_policy_lease_ms(c) * NS_PER_MS;
    if (!fleet_lease(env, c))
        return; /* host-local: nobody else can take it */
    c->lease_until_ns = c->asked_ns + lease;
    c->renew_ns = c->asked_ns + lease / 2;
    schedule(env, c);
}

/* How long a fleet lease is kept with nobody probing: min(1 s, lease / 4). */
static uint64_t grace_ns(const struct cbd_circuit *c)
{
    uint64_t quarter = (uint64_t)cbd_policy_lease_ms(c) * NS_PER_MS / 4;
    return quarter < 1000 * NS_PER_MS ? quarter : 1000 * NS_PER_MS;
}

void cbd_policy_load(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t slot,
                     struct cb_seg_record *rec, _Atomic uint64_t *permit, const struct cbd_now *now)
{
    memset(c, 0, sizeof *c);
    c->rec = rec;
    c->permit = permit;
    c->slot = slot;
    /* The daemon is the only writer of the record: its current version and
     * policy are complete (an adopting daemon repaired the policy's seq). */
    cb_seg_cfg_load(rec, &c->cfg);
    cb_seg_version_try_read(rec, &c->pub, NULL);
    uint64_t w = c->pub.word;
    c->state = (cb_state)cb_seg_word_state(w);
    /* electable again when its deadline passes; shadow follows the policy */
    c->flags = cb_seg_word_flags(w) & ~(CB_SEG_F_ELECTABLE | CB_SEG_F_SHADOW);
    c->incarnation = cb_seg_word_incarnation(w);
    c->epoch = cb_seg_word_epoch(w);
    c->streak = c->pub.failure_streak;
    c->probe_successes = c->pub.probe_successes;
    c->trip_failure_count = c->pub.trip_failure_count;
    c->opened_at_ns = c->pub.opened_at_ns;
    c->opened_at = c->opened_at_ns / NS_PER_S;
    c->open_until_ns = c->pub.open_until_ns;
    if (c->flags & CB_SEG_F_DISABLED)
        return; /* bypassed by an operator: no deadline runs */
    if (c->state == CB_OPEN && c->open_until_ns != 0) {
        /* The recovery deadline (or the end of a force_open for_ms) kept at
         * full precision: a restart never makes a probe early. */
        c->deadline_ns = mono_at(c->open_until_ns, now);
    } else if (c->state == CB_HALF_OPEN && !(c->flags & CB_SEG_F_FORCED)) {
        /* probers in flight keep their permits for one more lease */
        c->deadline_ns = now->mono_ns + cbd_policy_lease_ms(c) * NS_PER_MS;
        if (fleet_lease(env, c)) { /* the fleet lease was the previous process's: ask now whether it is ours */
            c->lease_until_ns = c->deadline_ns;
            c->renew_ns = now->mono_ns;
        }
    }
    schedule(env, c);
}

/* The state word's flags: the operator's, ELECTABLE, and SHADOW on a
 * shadow circuit whose state would reject calls (never on CLOSED, so a
 * shadow circuit's CLOSED word is the plain one cb_allow's fast path
 * expects; never over FORCED: a forced open rejects even in shadow). */
static unsigned shown_flags(const struct cbd_circuit *c)
{
    unsigned f = c->flags | (c->electable ? CB_SEG_F_ELECTABLE : 0);
    if (c->cfg.shadow && c->state != CB_CLOSED && !(c->flags & CB_SEG_F_FORCED))
        f |= CB_SEG_F_SHADOW;
    return f;
}

void cbd_policy_unload(struct cbd_circuit *c)
{
    free(c->window);
    c->window = NULL;
}

/* Publishes the circuit as the record's next version (see segment.h). */
static void publish(struct cbd_circuit *c)
{
    struct cb_seg_vdata *v = &c->pub;
    v->word = cb_seg_state_word(c->state, shown_flags(c), c->incarnation, c->epoch);
    v->opened_at_ns = c->opened_at_ns;
    v->open_until_ns = c->open_until_ns;
    v->trip_failure_count = c->trip_failure_count;
    v->failure_streak = c->streak;
    v->probe_successes = c->probe_successes;
    uint64_t n;
    struct cb_seg_version *x = cb_seg_version_begin(c->rec, &n);
    cb_seg_version_fill(x, v);
    CBD_FAULT("version.filled"); /* the spare copy written, not yet current */
    cb_seg_version_commit(c->rec, x, n);
    c->dirty = 0;
}

void cbd_policy_flush(struct cbd_circuit *c)
{
    if (c->dirty)
        publish(c);
}

/*
 * The one transition function. For an opening the caller has set
 * opened_at_ns and trip_failure_count; open_until_ns is when the OPEN state
 * ends (CLOCK_REALTIME ns: the recovery deadline, or the end of a
 * force_open for_ms; 0 none), ignored for other states.
 */
static void transition(const struct cbd_policy_env *env, struct cbd_circuit *c, cb_state to, unsigned flags,
                       cb_source source, int64_t open_until_ns, const struct cbd_now *now)
{
    cb_state from = c->state;
    /* The record still holds the opening this transition supersedes. */
    int64_t prev_opened_at = c->pub.opened_at_ns / NS_PER_S;
    c->state = to;
    c->flags = flags;
    c->epoch++;
    c->streak = 0;
    c->probe_successes = 0;
    if (from != CB_HALF_OPEN || to != CB_HALF_OPEN) { /* a reclaim of probers keeps the fleet lease */
        c->probe_asked = 0;
        c->lease_until_ns = c->renew_ns = 0;
    }
    c->armed_ns = 0; /* the old epoch's timer entry is dead */
    c->deadline_ns = 0;
    c->grace_ns = 0;
    c->reported = 0;
    if (c->electable)
        env->electable(env->arg, c->slot, 0);
    c->electable = 0;
    if (to == CB_CLOSED) {
        c->opened_at = c->opened_at_ns = 0;
        c->trip_failure_count = 0;
        if (from != CB_CLOSED)
            c->closed_mono_ns = now->mono_ns; /* a stable close resets the backoff from here */
    }
    /* Every state judges its own calls (resilience4j resets its metrics on
     * each transition); a reclaim of probers keeps the probes' results. */
    if (c->window != NULL)
        cbd_window_clear(c->window);
    if (from != CB_HALF_OPEN || to != CB_HALF_OPEN)
        c->probe_calls = c->probe_failures = c->probe_slow = 0;
    if (to == CB_OPEN) {
        c->open_until_ns = open_until_ns;
        c->deadline_ns = open_until_ns != 0 && !(flags & CB_SEG_F_DISABLED) ? mono_at(open_until_ns, now) : 0;
    } else {
        c->open_until_ns = 0;
        if (to == CB_HALF_OPEN)
            c->deadline_ns = now->mono_ns + cbd_policy_lease_ms(c) * NS_PER_MS;
    }
    c->pub.last_transition_ns = now->real_ns;
    c->pub.from = (uint8_t)from;
    c->pub.source = (uint8_t)source;
    c->pub.history_seq = env->history_next(env->arg);
    /* The permit word first: its new epoch grants nothing until the state
     * word carries that epoch (relaxed: published by the release below). */
    if (to == CB_HALF_OPEN)
        atomic_store_explicit(c->permit, cb_permit_word(c->epoch, c->cfg.half_open_max_probes),
                              memory_order_relaxed);
    /* The commit point: once this version is current the transition has
     * happened, whatever moment the daemon dies at (an adopting daemon
     * stores the state word and the history entry that may be missing). */
    publish(c);
    CBD_FAULT("transition.committed");
    /* Release pairs with cb_allow's acquire load of the state word: a worker
     * that sees this epoch sees the permit word above. */
    atomic_store_explicit(&c->rec->state_word, c->pub.word, memory_order_release);
    CBD_FAULT("transition.published");
    env->transitioned(env->arg, c, from, prev_opened_at, source, now);
    schedule(env, c);
}

/* An opening now by this host's outcomes (a trip, or a probe that failed). */
static void open_now(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t failures,
                     const struct cbd_now *now)
{
    /* Backoff: a trip after a close that held open_backoff_reset_ms starts
     * over; a reopening from HALF_OPEN, or a trip soon after a close, waits
     * one step longer. */
    if (c->state == CB_CLOSED &&
        now->mono_ns - c->closed_mono_ns >= (uint64_t)c->cfg.open_backoff_reset_ms * NS_PER_MS)
        c->reopenings = 0;
    c->open_step = c->reopenings;
    c->reopenings += c->reopenings < UINT32_MAX;
    c->open_jitter = c->cfg.open_backoff_multiplier_pct > 100 && env->random != NULL ? env->random(env->arg) : 0;
    c->adopted_until_ns = 0; /* this host's opening: its own backoff */
    c->opened_at_ns = now->real_ns;
    c->opened_at = now->real_ns / NS_PER_S;
    c->trip_failure_count = failures;
    transition(env, c, CB_OPEN, c->flags, CB_SOURCE_LOCAL, recovery_end(c, now->real_ns), now);
}

/* A probe reported without closing or reopening: its permit goes back,
 * unless the epoch moved on or the word is already full. */
static void permit_back(struct cbd_circuit *c)
{
    uint64_t w = atomic_load_explicit(c->permit, memory_order_relaxed);
    for (;;) {
        if ((uint32_t)(w >> 32) != c->epoch || (uint32_t)w >= c->cfg.half_open_max_probes)
            return;
        /* Relaxed is enough: the permit word carries no other data; workers
         * CAS it and only compare its epoch with the state word's. */
        if (atomic_compare_exchange_weak_explicit(c->permit, &w, w + 1, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

/* The circuit judges rates over a window (else consecutive failures). */
static bool rate_rule(const struct cbd_circuit *c)
{
    return c->cfg.sliding_window_type == CBD_WINDOW_COUNT || c->cfg.sliding_window_type == CBD_WINDOW_TIME;
}

/* A call slower than slow_call_duration_threshold_ms (0: no slow-call rule;
 * a call whose duration was not measured carries 0 and is never slow). */
static bool slow_call(const struct cbd_circuit *c, const struct cb_lane_event *ev)
{
    uint64_t limit_us = (uint64_t)c->cfg.slow_call_duration_threshold_ms * 1000;
    return limit_us != 0 && ev->latency_us > limit_us;
}

/* Failure rate or slow-call rate reached over calls (each judged alone, as
 * resilience4j does; a rate is never judged on fewer calls than the caller
 * says). */
static bool rates_reached(const struct cbd_circuit *c, uint64_t calls, uint64_t failures, uint64_t slow)
{
    return cbd_rate_reached(failures, calls, c->cfg.failure_rate_threshold) ||
           cbd_rate_reached(slow, calls, c->cfg.slow_call_rate_threshold);
}

/* The window's rates, once it holds minimum_number_of_calls (for a count
 * window at most its size, as resilience4j caps it). */
static bool window_trips(const struct cbd_circuit *c, const struct cbd_window *w)
{
    uint64_t min = c->cfg.minimum_number_of_calls;
    if (w->type == CBD_WINDOW_COUNT && min > w->size)
        min = w->size;
    return w->calls >= (min ? min : 1) && rates_reached(c, w->calls, w->failures, w->slow);
}

/* The circuit's window in the shape its policy says, made on first use. */
static struct cbd_window *window_of(struct cbd_circuit *c, const struct cbd_now *now)
{
    uint32_t type = c->cfg.sliding_window_type, size = c->cfg.sliding_window_size;
    if (c->window == NULL || c->window->type != type || c->window->size != size) {
        struct cbd_window *w = cbd_window_reshape(c->window, type, size, now->mono_ns);
        if (w == NULL)
            return c->window = NULL, NULL; /* out of memory (or a nonsense size): judged on the next call */
        c->window = w;
    }
    return c->window;
}

static enum cbd_event_result on_closed(const struct cbd_policy_env *env, struct cbd_circuit *c,
                                       const struct cb_lane_event *ev, const struct cbd_now *now)
{
    unsigned outcome = ev->outcome;
    if (outcome == CB_SUCCESS) {
        c->pub.total_successes++;
        c->streak = 0;
    } else if (outcome == CB_FAILURE) {
        c->pub.total_failures++;
        c->streak += !(c->flags & CB_SEG_F_FORCED); /* forced closed: counted in the totals, never trips */
    } else {
        c->pub.total_ignored++; /* in no window, as resilience4j's ignored exceptions */
        return CBD_EVENT_COUNTED;
    }
    if (c->flags & CB_SEG_F_FORCED)
        return CBD_EVENT_COUNTED;
    if (!rate_rule(c)) {
        if (outcome == CB_FAILURE && c->streak >= c->cfg.failure_threshold)
            open_now(env, c, c->streak, now);
        return CBD_EVENT_COUNTED;
    }
    struct cbd_window *w = window_of(c, now);
    if (w == NULL)
        return CBD_EVENT_COUNTED;
    cbd_window_add(w, outcome == CB_FAILURE, slow_call(c, ev), now->mono_ns);
    if (window_trips(c, w))
        open_now(env, c, (uint32_t)(w->failures < UINT32_MAX ? w->failures : UINT32_MAX), now);
    return CBD_EVENT_COUNTED;
}

/* HALF_OPEN under a rate rule: permitted_number_of_calls_in_half_open_state
 * probe results, then their failure and slow-call rates decide - reopen if
 * either reaches its threshold, else close. An IGNORED result counts
 * nothing and gives its permit back. */
static void probe_by_rate(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cb_lane_event *ev,
                          const struct cbd_now *now)
{
    uint32_t need = c->cfg.permitted_number_of_calls_in_half_open_state;
    c->probe_calls++;
    c->probe_failures += ev->outcome == CB_FAILURE;
    c->probe_slow += slow_call(c, ev);
    if (ev->outcome == CB_SUCCESS)
        c->probe_successes++;
    if (c->probe_calls < (need ? need : 1))
        permit_back(c);
    else if (rates_reached(c, c->probe_calls, c->probe_failures, c->probe_slow))
        open_now(env, c, c->probe_failures, now);
    else
        transition(env, c, CB_CLOSED, c->flags, CB_SOURCE_LOCAL, 0, now);
}

static enum cbd_event_result on_half_open(const struct cbd_policy_env *env, struct cbd_circuit *c,
                                          const struct cb_lane_event *ev, const struct cbd_now *now)
{
    unsigned outcome = ev->outcome;
    c->reported = 1;
    /* A report proves the probers are alive: the lease runs from here. */
    c->deadline_ns = now->mono_ns + cbd_policy_lease_ms(c) * NS_PER_MS;
    if (outcome != CB_IGNORED && rate_rule(c) && !(c->flags & CB_SEG_F_FORCED)) {
        if (outcome == CB_SUCCESS)
            c->pub.total_successes++;
        else
            c->pub.total_failures++;
        probe_by_rate(env, c, ev, now);
    } else if (outcome == CB_SUCCESS) {
        c->pub.total_successes++;
        if (++c->probe_successes >= c->cfg.success_threshold)
            transition(env, c, CB_CLOSED, c->flags, CB_SOURCE_LOCAL, 0, now);
        else
            permit_back(c);
    } else if (outcome == CB_FAILURE) {
        c->pub.total_failures++;
        open_now(env, c, 1, now); /* the probe's failure reopened it */
    } else {
        c->pub.total_ignored++;
        permit_back(c);
    }
    return CBD_EVENT_COUNTED;
}

enum cbd_event_result cbd_policy_on_event(const struct cbd_policy_env *env, struct cbd_circuit *c,
                                          const struct cb_lane_event *ev, const struct cbd_now *now)
{
    c->dirty = 1;
    /* A ticket of this epoch was issued by this state: ALLOWED only while
     * CLOSED, PROBE only while HALF_OPEN, nothing while OPEN. Anything else
     * is from an older epoch (or made up) and must not count. */
    if (ev->epoch == c->epoch && c->state == CB_CLOSED && ev->kind == CB_TICKET_ALLOWED)
        return on_closed(env, c, ev, now);
    if (ev->epoch == c->epoch && c->state == CB_HALF_OPEN && ev->kind == CB_TICKET_PROBE)
        return on_half_open(env, c, ev, now);
    c->pub.total_stale_events++;
    return CBD_EVENT_STALE;
}

/* Permits taken and not yet reported. A word of another epoch or above
 * the maximum was scribbled on by a worker: treat every permit as taken so
 * the lease reclaims it. */
static uint32_t outstanding(const struct cbd_circuit *c)
{
    uint64_t w = atomic_load_explicit(c->permit, memory_order_relaxed);
    uint32_t left = (uint32_t)w, max = c->cfg.half_open_max_probes;
    if ((uint32_t)(w >> 32) != c->epoch || left > max)
        return max;
    return max - left;
}

/* OPEN on a fleet store, past its recovery timeout: wait for a worker's
 * call to want a probe. The word gets the flag (same epoch: no transition),
 * the permit word a clean demand bit. */
static void make_electable(const struct cbd_policy_env *env, struct cbd_circuit *c)
{
    if (c->electable)
        return;
    c->electable = 1;
    /* Relaxed: published by the state word's release store below. */
    atomic_store_explicit(c->permit, cb_permit_word(c->epoch, 0), memory_order_relaxed);
    publish(c);
    /* Release pairs with cb_allow's acquire load: a worker that sees the
     * flag sees the permit word above. */
    atomic_store_explicit(&c->rec->state_word, c->pub.word, memory_order_release);
    env->electable(env->arg, c->slot, 1);
}

static void stop_electable(const struct cbd_policy_env *env, struct cbd_circuit *c)
{
    if (!c->electable)
        return;
    c->electable = 0;
    publish(c);
    atomic_store_explicit(&c->rec->state_word, c->pub.word, memory_order_release); /* pairs with cb_allow */
    env->electable(env->arg, c->slot, 0);
}

void cbd_policy_on_demand(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now)
{
    if (c->state != CB_OPEN || !c->electable || c->probe_asked || (c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED)))
        return;
    /* Ask again after a lease if the store never answers. */
    c->deadline_ns = now->mono_ns + cbd_policy_lease_ms(c) * NS_PER_MS;
    schedule(env, c);
    ask_lease(env, c, now);
}

/* Nobody on this host probes under the lease: give it back, and be
 * electable again on the same opening. */
static void release_lease(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now)
{
    env->release(env->arg, c);
    transition(env, c, CB_OPEN, c->flags, CB_SOURCE_TIMER, now->real_ns, now);
}

/* A fleet lease nobody on this host uses: no permit out, and no result
 * since the grant or the last renewal. */
static bool lease_idle(const struct cbd_circuit *c)
{
    return outstanding(c) == 0 && !c->reported;
}

/* HALF_OPEN on a fleet lease, at its renewal time: renew it while it is
 * used, else give it back; if it lapsed unrenewed, it may be another host's
 * by now - stop admitting probes (OPEN on the same opening, deadline now:
 * electable again at once). True if the state changed. */
static bool renew_lease(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now)
{
    if (now->mono_ns >= c->lease_until_ns) {
        transition(env, c, CB_OPEN, c->flags, CB_SOURCE_TIMER, now->real_ns, now);
        return true;
    }
    if (!c->probe_asked && lease_idle(c) && c->grace_ns > now->mono_ns) {
        /* Granted after its renewal time (a slow store): the workers get
         * their grace first, or a busy host would give back every grant
         * unused (tests/model: p2-slow-answers). Decide when it ends. */
        c->renew_ns = c->grace_ns < c->lease_until_ns ? c->grace_ns : c->lease_until_ns;
        return false;
    }
    if (!c->probe_asked && lease_idle(c)) {
        release_lease(env, c, now);
        return true;
    }
    c->renew_ns = c->lease_until_ns; /* unless a renewal is granted by then */
    if (!c->probe_asked) {
        c->reported = 0; /* the next renewal needs probing during this lease */
        ask_lease(env, c, now);
    }
    return false;
}

void cbd_policy_on_deadline(const struct cbd_policy_env *env, struct cbd_circuit *c, uint32_t epoch,
                            uint64_t at_ns, const struct cbd_now *now)
{
    if (epoch != c->epoch || at_ns != c->armed_ns)
        return; /* lazily deleted entry */
    c->armed_ns = 0;
    if (c->flags & CB_SEG_F_DISABLED)
        return; /* bypassed: nothing runs until enable */
    if (c->renew_ns != 0 && c->renew_ns <= now->mono_ns && renew_lease(env, c, now))
        return;
    if (c->grace_ns != 0 && c->grace_ns <= now->mono_ns) {
        c->grace_ns = 0;
        if (lease_idle(c)) { /* granted, and nobody took the probe */
            release_lease(env, c, now);
            return;
        }
    }
    if (c->deadline_ns > now->mono_ns) { /* moved later since it was armed, or a renewal was due */
        schedule(env, c);
        return;
    }
    uint32_t lease_ms = cbd_policy_lease_ms(c);
    if (c->flags & CB_SEG_F_FORCED) { /* only a force_open for_ms has a deadline: its end */
        transition(env, c, CB_CLOSED, c->flags & ~CB_SEG_F_FORCED, CB_SOURCE_TIMER, 0, now);
    } else if (c->state == CB_OPEN && fleet_lease(env, c)) {
        c->probe_asked = 0; /* an unanswered election is asked again on the next demand */
        c->deadline_ns = 0;
        make_electable(env, c);
    } else if (c->state == CB_OPEN) {
        /* Ask again after a lease if the store never answers. */
        c->deadline_ns = now->mono_ns + lease_ms * NS_PER_MS;
        schedule(env, c);
        ask_lease(env, c, now);
    } else if (c->state == CB_HALF_OPEN && outstanding(c) > 0) {
        transition(env, c, CB_HALF_OPEN, c->flags, CB_SOURCE_TIMER, 0, now);
    } else if (c->state == CB_HALF_OPEN) { /* nobody holds a probe: nothing to reclaim yet */
        c->deadline_ns = now->mono_ns + lease_ms * NS_PER_MS;
        schedule(env, c);
    }
}

void cbd_policy_on_probe_result(const struct cbd_policy_env *env, struct cbd_circuit *c, int64_t opened_at,
                                int granted, int64_t lease_expiry, const struct cbd_now *now)
{
    if ((c->state != CB_OPEN && c->state != CB_HALF_OPEN) || !c->probe_asked || opened_at != c->opened_at)
        return; /* an answer to a question this circuit no longer asks */
    c->probe_asked = 0;
    if (c->state == CB_HALF_OPEN) { /* a renewal; refused, it lapses unless another is granted in time */
        if (granted)
            hold_lease(env, c);
        return;
    }
    if (granted) {
        transition(env, c, CB_HALF_OPEN, c->flags, CB_SOURCE_TIMER, 0, now);
        hold_lease(env, c);
        if (fleet_lease(env, c)) {
            c->grace_ns = now->mono_ns + grace_ns(c);
            schedule(env, c);
        }
        return;
    }
    stop_electable(env, c); /* another holder probes: electable again when its lease ends */
    /* Another holder probes; ask again when its lease ends (at least 100 ms
     * from now, so a clock skew cannot make this spin), or in a second if
     * the store could not say (its report of the fleet's state follows). */
    uint64_t at = lease_expiry > 0 ? mono_at(lease_expiry * NS_PER_S, now) : now->mono_ns + 1000 * NS_PER_MS;
    c->deadline_ns = at > now->mono_ns + 100 * NS_PER_MS ? at : now->mono_ns + 100 * NS_PER_MS;
    schedule(env, c);
}

int cbd_policy_apply(const struct cbd_policy_env *env, struct cbd_circuit *c, cb_state state, unsigned flags,
                     int64_t opened_at, int64_t opened_at_ns, uint32_t failure_count, int64_t lease_expiry,
                     int64_t open_until_ns, cb_source source, const struct cbd_now *now)
{
    cb_state to = state == CB_CLOSED ? CB_CLOSED : CB_OPEN;
    if (opened_at < 0 || opened_at > CB_TIME_MAX_S || lease_expiry < 0 || lease_expiry > CB_TIME_MAX_S ||
        opened_at_ns < 0 || (opened_at_ns != 0 && opened_at_ns / NS_PER_S != opened_at) || open_until_ns < 0 ||
        open_until_ns / NS_PER_S > CB_TIME_MAX_S)
        return -ERANGE; /* times cbd cannot hold: never adopted */
    if (c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED))
        return 0; /* an operator holds it on this host */
    if (to == c->state && flags == c->flags && (to == CB_CLOSED || opened_at == c->opened_at))
        return 0;
    if (to == CB_CLOSED) {
        transition(env, c, CB_CLOSED, flags, source, 0, now);
        return 0;
    }
    /* latest: the latest instant the opening can have happened at. A
     * store that keeps only whole seconds (Powertools' item) says the
     * opening happened within the second after opened_at: the recovery
     * timeout is counted from its end, so a probe may come up to a second
     * late, never early. The local store keeps full precision. */
    int64_t latest;
    if (opened_at_ns > 0)
        c->opened_at_ns = latest = opened_at_ns;
    else if (opened_at > 0)
        latest = (c->opened_at_ns = opened_at * NS_PER_S) + NS_PER_S - 1;
    else
        c->opened_at_ns = latest = now->real_ns;
    c->opened_at = c->opened_at_ns / NS_PER_S;
    c->trip_failure_count = failure_count;
    /* The fleet's opening: its own wait is the recovery timeout, and the
     * opening host's backoff (open_until_ns) when its store keeps it. */
    c->open_step = 0;
    c->adopted_until_ns = open_until_ns;
    int64_t until = recovery_end(c, latest);
    if (state == CB_HALF_OPEN && lease_expiry * NS_PER_S > until)
        until = lease_expiry * NS_PER_S; /* the holder's lease runs: asking earlier is refused */
    transition(env, c, CB_OPEN, flags, source, until, now);
    return 0;
}

void cbd_policy_renew_now(const struct cbd_policy_env *env, struct cbd_circuit *c, const struct cbd_now *now)
{
    if (c->state != CB_HALF_OPEN || c->renew_ns == 0 || c->probe_asked)
        return;
    c->renew_ns = now->mono_ns;
    schedule(env, c);
}

void cbd_policy_operator(const struct cbd_policy_env *env, struct cbd_circuit *c, enum cbd_operator_action action,
                         uint32_t for_ms, const struct cbd_now *now)
{
    switch (action) {
    case CBD_FORCE_OPEN:
        c->opened_at_ns = now->real_ns;
        c->opened_at = now->real_ns / NS_PER_S;
        c->trip_failure_count = 0; /* no failures tripped it */
        transition(env, c, CB_OPEN, CB_SEG_F_FORCED, CB_SOURCE_OPERATOR,
                   for_ms ? now->real_ns + (int64_t)for_ms * (int64_t)NS_PER_MS : 0, now);
        break;
    case CBD_FORCE_CLOSED:
        transition(env, c, CB_CLOSED, CB_SEG_F_FORCED, CB_SOURCE_OPERATOR, 0, now);
        break;
    case CBD_RESET:
    case CBD_ENABLE:
        c->reopenings = 0; /* the operator starts the backoff over */
        transition(env, c, CB_CLOSED, 0, CB_SOURCE_OPERATOR, 0, now);
        break;
    case CBD_DISABLE: /* the state stays underneath; OPEN keeps its opening and its end, but no deadline runs */
        transition(env, c, c->state, c->flags | CB_SEG_F_DISABLED, CB_SOURCE_OPERATOR, c->open_until_ns, now);
        break;
    }
}

/* A lowered probe bound applies to the HALF_OPEN epoch in progress: the
 * permits left shrink so that outstanding + left is the new bound (never
 * below zero: probes already running finish). */
static void clamp_permits(struct cbd_circuit *c, uint32_t old_max)
{
    uint64_t w = atomic_load_explicit(c->permit, memory_order_relaxed);
    for (;;) {
        uint32_t left = (uint32_t)w, max = c->cfg.half_open_max_probes;
        if ((uint32_t)(w >> 32) != c->epoch || left > old_max)
            return; /* another epoch, or scribbled on: the lease reclaims it */
        uint32_t running = old_max - left, want = running < max ? max - running : 0;
        if (want >= left)
            return;
        /* Relaxed: the permit word carries no other data (see permit_back). */
        if (atomic_compare_exchange_weak_explicit(c->permit, &w, cb_permit_word(c->epoch, want),
                                                  memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

void cbd_policy_set_config(const struct cbd_policy_env *env, struct cbd_circuit *c, const cb_config *cfg,
                           const struct cbd_now *now)
{
    struct cb_seg_record *r = c->rec;
    uint32_t old_max = c->cfg.half_open_max_probes;
    bool was_shadow = c->cfg.shadow, held_lease = fleet_lease(env, c) && c->lease_until_ns != 0;
    c->cfg = *cfg;
    if (c->state == CB_HALF_OPEN && cfg->half_open_max_probes < old_max)
        clamp_permits(c, old_max);
    if (c->window != NULL && !rate_rule(c))
        cbd_policy_unload(c);
    else if (c->window != NULL)
        window_of(c, now); /* reshaped, keeping its calls */
    /* Config fields are read under their own seqlock (segment.h). */
    cb_seg_cfg_begin(r);
    cb_seg_cfg_store(r, cfg);
    CBD_FAULT("config.written"); /* cfg_seq odd */
    cb_seg_cfg_end(r);
    if (c->state == CB_OPEN && !c->probe_asked && !(c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED))) {
        c->open_until_ns = recovery_end(c, c->opened_at_ns);
        c->deadline_ns = mono_at(c->open_until_ns, now);
        if (c->open_until_ns > now->real_ns)
            stop_electable(env, c); /* a longer timeout: not yet */
        publish(c); /* the deadline shown is the real one */
        schedule(env, c);
    }
    if (shown_flags(c) != cb_seg_word_flags(atomic_load_explicit(&r->state_word, memory_order_relaxed))) {
        publish(c); /* shadow turned on or off: same epoch, the word's flag follows */
        atomic_store_explicit(&r->state_word, c->pub.word, memory_order_release); /* pairs with cb_allow */
    }
    if (!env->fleet || was_shadow == (bool)cfg->shadow || (c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED)))
        return;
    if (cfg->shadow && held_lease) {
        /* A trial from now on: the fleet's probe lease goes back to the
         * fleet; this host's probes in flight go on as the trial's. */
        env->release(env->arg, c);
        c->lease_until_ns = c->renew_ns = c->grace_ns = 0;
    } else if (!cfg->shadow && (c->state == CB_OPEN || c->state == CB_HALF_OPEN)) {
        /* The trial becomes real: its opening is written to the fleet as
         * an opening (the transition reaches the store), and the fleet
         * elects its prober; a trial's own probe ends here. */
        transition(env, c, CB_OPEN, c->flags, CB_SOURCE_OPERATOR,
                   c->state == CB_OPEN ? c->open_until_ns : now->real_ns, now);
    }
}

void cbd_policy_set_sync(struct cbd_circuit *c, unsigned sync_state, int64_t synced_at)
{
    c->pub.sync_state = sync_state;
    if (synced_at != 0)
        c->pub.synced_at = synced_at;
    publish(c);
}
