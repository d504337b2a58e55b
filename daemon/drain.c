/*
 * drain.c - consume the outcome lanes.
 *
 * Each lane is a single-producer (one worker thread) / single-consumer (this
 * loop) ring; head and tail count events forever. The loop drains every
 * owned lane when the doorbell rings (a failure or probe result) and once
 * more at shutdown; every drain_interval_ms (successes do not ring) it
 * drains the lanes of claimed groups only (the lanes header's
 * claimed_groups, a bit per 64 lanes that claimers set and reclaim
 * clears), and of those a lane that had nothing for QUIET_TICKS ticks in a
 * row only every QUIET_EVERY-th tick. An idle daemon so touches no lane
 * nobody claimed, and a quiet claimed lane a tenth as often: each lane is
 * a page apart from the next (its events), so a pass over all of them is a
 * cache and TLB miss per lane. The cost of the skip: a success recorded in
 * a quiet lane waits up to QUIET_EVERY ticks when nothing rings (a failure
 * or probe anywhere drains every lane at once, as before). When every
 * claimed lane is quiet (or none is claimed) the tick itself slows to
 * QUIET_EVERY drain intervals - the pace a quiet lane was visited at
 * already - and goes back to drain_interval_ms as soon as a drain finds an
 * event: an idle daemon wakes ten times a second, not a hundred. Reclaim's
 * pass (every reclaim_interval_ms) looks at the lanes of claimed groups,
 * and every RECLAIM_FULL_EVERY-th pass at every lane, which puts the bits
 * right (a claimer that died between its claim and its bit). The daemon
 * keeps its own copy of the groups it has seen claimed (known_groups) and
 * forgets one only when its own look finds the group empty, so a hostile
 * worker that clears shared bits hides no lane the daemon knows of; one
 * that sets bits costs the tick their lanes' scan, nothing more.
 *
 * Nothing in the lanes region is trusted: workers map it writable, so a
 * buggy one can write anything anywhere in it. Hence:
 *  - a lane whose tail is more than lane_capacity ahead of its head (or
 *    behind it) is garbage: count an overrun, skip to the tail;
 *  - every event is copied out of shared memory once and then validated:
 *    slot < circuits registered, check == CB_EVENT_CHECK ^ (slot & 0xffff),
 *    outcome <= CB_IGNORED, kind ALLOWED or PROBE; anything else is counted
 *    as invalid, warned about (rate-limited, naming lane and owner pid) and
 *    dropped. The policy then ignores valid events of an older epoch.
 *
 * Exactly once. The events of a lane are applied in memory, then every
 * circuit they touched is published (one version each, carrying the drain
 * checkpoint: lane and position of the last event it counts), and only then
 * does the lane's head move past them. A daemon that dies anywhere in
 * between leaves the head where it was; the next daemon drains the same
 * events again and skips, circuit by circuit, those its record already
 * counts (applied_lane/applied_pos in its version), so every event is
 * counted once, a trip is made once, and nothing is lost. One catch: a
 * record has one checkpoint, so the lane the dead daemon was in the middle
 * of (the only one whose head lags checkpoints that name it) is drained
 * first, before any other lane's events move those checkpoints on.
 *
 * Call counts: each drained lane's rejections and probe permits (counted
 * by its owner thread in its header) are folded into the circuits first,
 * free: they share the cache lines of tail and head. A key that names no
 * circuit now (removed, reused slot, garbage) is counted as unattributed.
 *
 * Reclaim (every reclaim_interval_ms): a lane whose owner marked it
 * CB_LANE_RELEASED (thread exit, client close), whose owner process is gone
 * (kill(pid, 0) fails with ESRCH), or whose owner word is nonsense, is
 * drained one last time and freed. Limitation: pids are those of the
 * daemon's pid namespace; workers in another namespace need the daemon in
 * theirs.
 *
 * Owns the lanes' heads, the reclaim of their owner words, its two timers
 * and its counters. It must not touch the state region except through the
 * policy (which publishes), nor anything of the store, the hooks or the
 * socket: a transition an event causes reaches those through the env.
 */
#include "drain.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "fault.h"

static void flush_dirty(struct cbd_drain *dr)
{
    for (uint32_t i = 0; i < dr->ndirty; i++)
        cbd_policy_flush(&dr->circuits->by_slot[dr->dirty[i]]);
    dr->ndirty = 0;
}

/* Lists c for flush_dirty before its first event of the batch. */
static void mark_dirty(struct cbd_drain *dr, struct cbd_circuit *c)
{
    if (c->dirty)
        return; /* already listed (the policy clears it when it publishes) */
    if (dr->ndirty == dr->dirty_cap) {
        uint32_t *p = realloc(dr->dirty, (size_t)dr->dirty_cap * 2 * sizeof *p);
        if (p == NULL) /* out of memory: publish what is listed now, reuse the list */
            flush_dirty(dr);
        else {
            dr->dirty = p;
            dr->dirty_cap *= 2;
        }
    }
    dr->dirty[dr->ndirty++] = c->slot;
}

static int event_valid(const struct cbd_drain *dr, const struct cb_lane_event *e)
{
    return e->slot < dr->circuits->n && e->check == (uint16_t)(CB_EVENT_CHECK ^ (e->slot & 0xffff)) &&
           e->outcome <= CB_IGNORED && (e->kind == CB_TICKET_ALLOWED || e->kind == CB_TICKET_PROBE);
}

/* An event for a slot whose circuit was removed: a late report of a
 * removed circuit, counted as stale and not applied (the slot's record is
 * not the daemon's to publish until it is reused). */
static int event_removed(const struct cbd_drain *dr, const struct cb_lane_event *e)
{
    return dr->circuits->by_slot[e->slot].removed;
}

static void warn_invalid(struct cbd_drain *dr, uint32_t lane_no, uint64_t owner, const struct cb_lane_event *e)
{
    uint64_t suppressed;
    if (!cbd_ratelimit_pass(&dr->invalid_warn, &suppressed))
        return;
    cbd_log(CBD_LOG_WARN,
            "lane %u (owner pid %u): invalid event ignored (slot %u, outcome %u, kind %u, check 0x%04x): "
            "a worker wrote garbage into the lanes region; %llu more since the last warning",
            lane_no, (uint32_t)(owner >> 32), e->slot, e->outcome, e->kind, e->check,
            (unsigned long long)suppressed);
}

/* The circuit a lane's call-count key names now, or NULL (no circuit
 * there any more, or garbage). */
static struct cbd_circuit *call_key_circuit(const struct cbd_drain *dr, uint64_t key)
{
    uint32_t slot = (uint32_t)key - 1, incarnation = (uint32_t)(key >> 32);
    if ((uint32_t)key == 0 || slot >= dr->circuits->n)
        return NULL;
    struct cbd_circuit *c = &dr->circuits->by_slot[slot];
    return c->removed || c->incarnation != incarnation ? NULL : c;
}

/* Adds what the lane's owner counted since the last fold to the circuits
 * its keys name (segment.h: call counts). The words are in the lines a
 * drain reads anyway (tail's and head's). */
static void fold_calls(struct cbd_drain *dr, struct cb_lane *lane)
{
    for (unsigned i = 0; i < CB_LANE_CALL_ENTRIES; i++) {
        /* Acquire pairs with the worker's release store of counts: the key
         * loaded next is the one these counts were made under. */
        uint64_t counts = atomic_load_explicit(&lane->calls[i].counts, memory_order_acquire);
        uint64_t seen = atomic_load_explicit(&lane->calls_seen[i], memory_order_relaxed);
        if (counts == seen)
            continue;
        uint64_t key = atomic_load_explicit(&lane->calls[i].key, memory_order_relaxed);
        uint64_t rejected = (counts - seen) & (CB_LANE_PROBE_ONE - 1);
        uint64_t probes = (counts >> CB_LANE_REJECTED_BITS) - (seen >> CB_LANE_REJECTED_BITS);
        probes &= (1ull << (64 - CB_LANE_REJECTED_BITS)) - 1;
        struct cbd_circuit *c = call_key_circuit(dr, key);
        if (c != NULL) {
            c->rejected += rejected;
            c->probes += probes;
        } else {
            dr->calls_unattributed += rejected + probes;
        }
        /* Release: the worker that sees counts == seen may give the entry
         * to another circuit; everything of this key is folded by now. */
        atomic_store_explicit(&lane->calls_seen[i], counts, memory_order_release);
    }
}

/* Drains one lane completely, its call counts included; whether it had
 * events. */
static bool drain_lane(struct cbd_drain *dr, uint32_t lane_no, uint64_t owner, const struct cbd_now *now)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    struct cb_lane *lane = CB_LANES_LANE(l, lane_no);
    uint32_t cap = l->lane_capacity;
    fold_calls(dr, lane);
    /* Acquire pairs with the producer's release store of tail: the events
     * before it are written. */
    uint64_t tail = atomic_load_explicit(&lane->tail, memory_order_acquire);
    uint64_t head = atomic_load_explicit(&lane->head, memory_order_relaxed); /* we are its only writer */
    if (tail == head)
        return false;
    if (tail < head) {
        /* Garbage: positions only grow. The head stays where it is - moving
         * it back would hand positions the records' checkpoints already
         * name to the lane's next owner (reclaim resets the tail instead). */
        dr->lane_overruns++;
        cbd_log(CBD_LOG_DEBUG, "lane %u (owner pid %u): tail %llu is behind head %llu: ignored", lane_no,
                (uint32_t)(owner >> 32), (unsigned long long)tail, (unsigned long long)head);
        return false;
    }
    if (tail - head > cap) {
        dr->lane_overruns++;
        cbd_log(CBD_LOG_DEBUG, "lane %u (owner pid %u): tail %llu is a lane ahead of head %llu: skipped", lane_no,
                (uint32_t)(owner >> 32), (unsigned long long)tail, (unsigned long long)head);
    } else {
        const struct cb_lane_event *events = CB_LANES_EVENTS(lane);
        for (uint64_t pos = head; pos != tail; pos++) {
            struct cb_lane_event e;
            memcpy(&e, &events[pos & (cap - 1)], sizeof e); /* one read of shared bytes, then checks */
            if (!event_valid(dr, &e)) {
                dr->events_invalid++;
                warn_invalid(dr, lane_no, owner, &e);
                continue;
            }
            struct cbd_circuit *c = &dr->circuits->by_slot[e.slot];
            if (event_removed(dr, &e)) {
                dr->events_stale++;
                continue;
            }
            if (c->pub.applied_lane == lane_no + 1 && pos < c->pub.applied_pos) {
                dr->events_replayed++; /* counted by the daemon before a crash */
                continue;
            }
            mark_dirty(dr, c);
            /* The checkpoint first: a transition this event causes publishes it. */
            c->pub.applied_lane = lane_no + 1;
            c->pub.applied_pos = pos + 1;
            dr->events_drained++;
            c->last_used_ns = now->mono_ns;
            if (cbd_policy_on_event(dr->env, c, &e, now) == CBD_EVENT_STALE)
                dr->events_stale++;
        }
    }
    flush_dirty(dr);
    CBD_FAULT("drain.before_head");
    /* Release pairs with the producer's acquire load of head: the slots
     * read above may be overwritten now. */
    atomic_store_explicit(&lane->head, tail, memory_order_release);
    return true;
}

#define QUIET_TICKS 8u
#define QUIET_EVERY 10u
/* Reclaim passes: one in this many looks at every lane (a worker of layout
 * minor 0 sets no group bit). */
#define RECLAIM_FULL_EVERY 10u

static void tick(uv_timer_t *t);

/* The drain tick at drain_interval_ms, or slow: QUIET_EVERY times that. */
static void set_tick(struct cbd_drain *dr, bool slow)
{
    uint64_t ms = (uint64_t)dr->cfg->drain_interval_ms * (slow ? QUIET_EVERY : 1);
    dr->slow = slow;
    /* uv_timer_start on a running timer re-arms it with the new period. */
    uv_timer_start(&dr->tick, tick, ms, ms);
}

void cbd_drain_all(struct cbd_drain *dr)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    struct cbd_now now;
    bool events = false;
    cbd_now(&now);
    for (uint32_t i = 0; i < l->lane_count; i++) {
        uint64_t owner = atomic_load_explicit(&CB_LANES_LANE(l, i)->owner, memory_order_relaxed);
        if (owner == 0)
            continue; /* a free lane was drained when it was freed */
        uint32_t word;
        uint64_t bit;
        cb_lane_group_of(i, &word, &bit);
        dr->known_groups[word] |= bit; /* an owned lane: its group is claimed, whatever its bit says */
        if (drain_lane(dr, i, owner, &now)) {
            dr->quiet[i] = 0;
            events = true;
        }
    }
    if (events && dr->slow && dr->started)
        set_tick(dr, false); /* traffic again: successes drained at drain_interval_ms */
    cbd_circuits_check_demand(dr->circuits, dr->env); /* a call that wants a probe rang the same doorbell */
}

/* The drain tick: the lanes of claimed groups; one quiet for QUIET_TICKS
 * ticks in a row only every QUIET_EVERY-th tick (every tick when the tick
 * is slow). True when every claimed lane is quiet now. */
static bool drain_claimed(struct cbd_drain *dr)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    struct cbd_now now;
    bool every = ++dr->ticks % QUIET_EVERY == 0 || dr->slow, all_quiet = true;
    cbd_now(&now);
    for (uint32_t w = 0; w < CB_LANE_GROUP_WORDS; w++) {
        /* Relaxed: a bit set after this load is seen next tick. */
        dr->known_groups[w] |= atomic_load_explicit(&l->claimed_groups[w], memory_order_relaxed);
        for (uint64_t bits = dr->known_groups[w]; bits != 0; bits &= bits - 1) {
            uint64_t first = ((uint64_t)w * 64 + (unsigned)__builtin_ctzll(bits)) * CB_LANE_GROUP;
            for (uint64_t n = first; n < first + CB_LANE_GROUP && n < l->lane_count; n++) {
                if (dr->quiet[n] >= QUIET_TICKS && !every)
                    continue;
                uint64_t owner = atomic_load_explicit(&CB_LANES_LANE(l, n)->owner, memory_order_relaxed);
                if (owner != 0 && drain_lane(dr, (uint32_t)n, owner, &now))
                    dr->quiet[n] = 0;
                else if (dr->quiet[n] < UINT8_MAX)
                    dr->quiet[n]++;
                if (owner != 0 && dr->quiet[n] < QUIET_TICKS)
                    all_quiet = false;
            }
        }
    }
    cbd_circuits_check_demand(dr->circuits, dr->env);
    return all_quiet;
}

/* Whether any lane of group g is owned. */
static bool group_owned(const struct cb_lanes_header *l, uint32_t g)
{
    for (uint64_t n = (uint64_t)g * CB_LANE_GROUP; n < (uint64_t)(g + 1) * CB_LANE_GROUP && n < l->lane_count; n++) {
        /* Acquire pairs with the claimer's release of the group bit (its
         * owner word was stored before it). */
        if (atomic_load_explicit(&CB_LANES_LANE(l, n)->owner, memory_order_acquire) != 0)
            return true;
    }
    return false;
}

/* After a reclaim pass: every group with an owned lane has its bit (a
 * worker of minor 0 does not set it), and a group with none loses it.
 * Clearing first, looking again after: a claim that raced the clear is
 * seen and its bit set back. */
static void sync_groups(struct cbd_drain *dr, bool full)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    for (uint32_t g = 0; (uint64_t)g * CB_LANE_GROUP < l->lane_count; g++) {
        uint32_t word;
        uint64_t bit;
        cb_lane_group_of(g * CB_LANE_GROUP, &word, &bit);
        bool set = atomic_load_explicit(&l->claimed_groups[word], memory_order_relaxed) & bit;
        if (!set && !(dr->known_groups[word] & bit) && !full)
            continue; /* a claimer sets its group's bit; the full pass finds a bit it never set */
        if (group_owned(l, g)) {
            dr->known_groups[word] |= bit;
            if (!set)
                atomic_fetch_or_explicit(&l->claimed_groups[word], bit, memory_order_relaxed);
            continue;
        }
        dr->known_groups[word] &= ~bit;
        if (set) {
            /* Acquire pairs with a claimer's release fetch_or: if its bit
             * was set before this clear, its owner word is seen below. */
            atomic_fetch_and_explicit(&l->claimed_groups[word], ~bit, memory_order_acq_rel);
            if (group_owned(l, g))
                atomic_fetch_or_explicit(&l->claimed_groups[word], bit, memory_order_relaxed);
        }
    }
}

/* Why a lane's owner is gone, or NULL if it is alive. */
static const char *owner_gone(uint64_t owner)
{
    uint32_t pid = (uint32_t)(owner >> 32), state = (uint32_t)owner;
    if (state == CB_LANE_RELEASED)
        return "released";
    if (state != CB_LANE_OWNED || pid == 0 || pid > 0x7fffffffu)
        return "owner word corrupt";
    if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
        return "process exited";
    return NULL;
}

static void reclaim(uv_timer_t *t)
{
    struct cbd_drain *dr = t->data;
    struct cb_lanes_header *l = dr->seg->lanes;
    struct cbd_now now;
    bool full = dr->reclaim_passes++ % RECLAIM_FULL_EVERY == 0;
    cbd_now(&now);
    for (uint32_t i = 0; i < l->lane_count; i++) {
        uint32_t word;
        uint64_t bit;
        cb_lane_group_of(i, &word, &bit);
        /* Relaxed: a group claimed after this load is looked at next pass. */
        if (!full && !((atomic_load_explicit(&l->claimed_groups[word], memory_order_relaxed) | dr->known_groups[word]) &
                       bit)) {
            i |= CB_LANE_GROUP - 1; /* the rest of this unclaimed group */
            continue;
        }
        struct cb_lane *lane = CB_LANES_LANE(l, i);
        /* Acquire pairs with the worker's release store of CB_LANE_RELEASED:
         * every event it appended before letting go is drained below. */
        uint64_t owner = atomic_load_explicit(&lane->owner, memory_order_acquire);
        const char *why = owner != 0 ? owner_gone(owner) : NULL;
        if (why == NULL)
            continue;
        drain_lane(dr, i, owner, &now);
        /* A tail left behind the head by a buggy owner: the next owner
         * starts where the daemon is (no producer exists now). */
        uint64_t head = atomic_load_explicit(&lane->head, memory_order_relaxed);
        if (atomic_load_explicit(&lane->tail, memory_order_relaxed) != head)
            atomic_store_explicit(&lane->tail, head, memory_order_relaxed);
        /* Release pairs with the next claimer's CAS (acquire): it sees the
         * head stored by the final drain above, so the lane starts empty.
         * A CAS, not a store: if the word changed meanwhile, look again
         * next round. */
        if (atomic_compare_exchange_strong_explicit(&lane->owner, &owner, 0, memory_order_release,
                                                    memory_order_relaxed)) {
            dr->lanes_reclaimed++;
            cbd_log(CBD_LOG_DEBUG, "reclaimed lane %u of pid %u (%s)", i, (uint32_t)(owner >> 32), why);
        }
    }
    sync_groups(dr, full);
}

/* After adoption: drains first every lane that a record's checkpoint names
 * beyond the lane's head - the lane the previous daemon was draining when it
 * died - so that its events are skipped against the checkpoints they left. */
static void recover_unfinished_lanes(struct cbd_drain *dr)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    struct cbd_now now;
    cbd_now(&now);
    for (uint32_t i = 0; i < dr->circuits->n; i++) {
        const struct cbd_circuit *c = &dr->circuits->by_slot[i];
        uint32_t lane_no = c->pub.applied_lane - 1;
        if (c->removed || c->pub.applied_lane == 0 || lane_no >= l->lane_count)
            continue;
        struct cb_lane *lane = CB_LANES_LANE(l, lane_no);
        if (c->pub.applied_pos <= atomic_load_explicit(&lane->head, memory_order_relaxed))
            continue;
        cbd_log(CBD_LOG_INFO, "lane %u was being drained when the previous daemon stopped: draining it first",
                lane_no);
        drain_lane(dr, lane_no, atomic_load_explicit(&lane->owner, memory_order_relaxed), &now);
    }
}

/* Counters count from this daemon's start: call counts workers made
 * before (a previous daemon folded them, or nobody will) are skipped. */
static void skip_earlier_calls(struct cbd_drain *dr)
{
    struct cb_lanes_header *l = dr->seg->lanes;
    for (uint32_t n = 0; n < l->lane_count; n++) {
        struct cb_lane *lane = CB_LANES_LANE(l, n);
        for (unsigned i = 0; i < CB_LANE_CALL_ENTRIES; i++)
            atomic_store_explicit(&lane->calls_seen[i],
                                  atomic_load_explicit(&lane->calls[i].counts, memory_order_relaxed),
                                  memory_order_release);
    }
}

static void tick(uv_timer_t *t)
{
    struct cbd_drain *dr = t->data;
    bool quiet = drain_claimed(dr);
    cbd_segment_lanes_check(dr->seg);
    if (quiet != dr->slow)
        set_tick(dr, quiet);
}

void cbd_drain_init(struct cbd_drain *dr, uv_loop_t *loop, struct cbd_segment *seg, struct cbd_circuits *circuits,
                    const struct cbd_policy_env *env, const struct cbd_config *cfg)
{
    memset(dr, 0, sizeof *dr);
    dr->loop = loop;
    dr->seg = seg;
    dr->circuits = circuits;
    dr->env = env;
    dr->cfg = cfg;
}

int cbd_drain_start(struct cbd_drain *dr)
{
    dr->dirty_cap = 256;
    dr->quiet = calloc(dr->seg->lanes->lane_count, sizeof *dr->quiet);
    if (dr->quiet == NULL || (dr->dirty = malloc(dr->dirty_cap * sizeof *dr->dirty)) == NULL) {
        free(dr->quiet);
        dr->quiet = NULL;
        return UV_ENOMEM;
    }
    int rc = uv_timer_init(dr->loop, &dr->tick);
    if (rc == 0)
        rc = uv_timer_init(dr->loop, &dr->reclaim);
    if (rc < 0)
        return rc;
    dr->tick.data = dr->reclaim.data = dr;
    dr->started = 1;
    skip_earlier_calls(dr);
    sync_groups(dr, true); /* lanes claimed under a previous daemon */
    recover_unfinished_lanes(dr);
    cbd_drain_set_intervals(dr);
    return 0;
}

void cbd_drain_set_intervals(struct cbd_drain *dr)
{
    if (!dr->started)
        return;
    set_tick(dr, false);
    uv_timer_start(&dr->reclaim, reclaim, dr->cfg->reclaim_interval_ms, dr->cfg->reclaim_interval_ms);
}

void cbd_drain_stop(struct cbd_drain *dr)
{
    if (dr->started) {
        uv_close((uv_handle_t *)&dr->tick, NULL);
        uv_close((uv_handle_t *)&dr->reclaim, NULL);
    }
    dr->started = 0;
    free(dr->dirty);
    dr->dirty = NULL;
    free(dr->quiet);
    dr->quiet = NULL;
    dr->ndirty = dr->dirty_cap = 0;
}

uint64_t cbd_drain_lanes_in_use(const struct cbd_drain *dr)
{
    const struct cb_lanes_header *l = dr->seg->lanes;
    uint64_t n = 0;
    for (uint32_t i = 0; i < l->lane_count; i++)
        n += atomic_load_explicit(&CB_LANES_LANE(l, i)->owner, memory_order_relaxed) != 0;
    return n;
}

uint64_t cbd_drain_lane_drops(const struct cbd_drain *dr)
{
    const struct cb_lanes_header *l = dr->seg->lanes;
    uint64_t n = atomic_load_explicit(&((struct cb_lanes_header *)l)->no_lane_drops, memory_order_relaxed);
    for (uint32_t i = 0; i < l->lane_count; i++)
        n += atomic_load_explicit(&CB_LANES_LANE(l, i)->dropped, memory_order_relaxed);
    return n;
}
