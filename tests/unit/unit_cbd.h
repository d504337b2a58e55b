/*
 * unit_cbd.h - a daemon's state in the test process, for the unit tests of
 * the drain, the deadline heap and the lane ring between libcb and the
 * drain: the subsystems they need (config, loop, segment, circuits, policy
 * env, timers, drain), wired here as cbd.c wires them, with no struct cbd.
 *
 * ucbd_open makes (or, on the instance a previous one left, adopts) a real
 * segment with cbd_segment_open on a unique instance, unlinked when the
 * test process exits, and starts the drain; ucbd_add registers a circuit as cbd_circuit_register
 * does minus the store and the quota (cbd_segment_add + cbd_policy_load);
 * the policy's env appends history and arms the real deadline heap as
 * cbd.c's does, and records every transition and request for the probe
 * lease for the test to check. A libcb client of the same process finds the
 * circuits in the index without a socket and reports through the lanes.
 * Nothing runs the loop unless a test does.
 *
 * Header-only (static functions) so each test executable stays one file;
 * included by test_drain.c, test_lanes.c and test_timers.c.
 */
#ifndef UNIT_CBD_H
#define UNIT_CBD_H

#include <criterion/criterion.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "circuits.h"
#include "config.h"
#include "drain.h"
#include "policy.h"
#include "segment_owner.h"
#include "timers.h"
#include "tsup.h"

#define UCBD_UNUSED __attribute__((unused))

struct ucbd_ask {
    uint32_t slot;
    int64_t opened_at;
    uint64_t mono;
};

struct ucbd {
    /* The daemon's subsystems this fixture wires itself, as cbd.c does. */
    struct cbd_config cfg;
    uv_loop_t loop;
    struct cbd_segment seg;
    struct cbd_circuits circuits;
    struct cbd_policy_env env;
    struct cbd_timers timers;
    struct cbd_drain drain;
    uint64_t transitions;
    struct ucbd_ask *asks;
    size_t nasks, asks_cap;
    /* Set: the next transition "kills the daemon" right after it is
     * published (longjmp out of whatever drove it), before the history
     * entry and everything after - as a SIGKILL there would. */
    jmp_buf *die_on_transition;
};

struct ucbd_opts {
    uint32_t capacity, lanes, lane_capacity;
    uint32_t drain_interval_ms, reclaim_interval_ms;
};

static void ucbd_transitioned(void *arg, const struct cbd_circuit *c, cb_state from, int64_t prev_opened_at,
                              cb_source source, const struct cbd_now *now)
{
    struct ucbd *u = arg;
    (void)prev_opened_at;
    u->transitions++;
    if (u->die_on_transition != NULL) {
        jmp_buf *die = u->die_on_transition;
        u->die_on_transition = NULL;
        longjmp(*die, 1);
    }
    struct cbd_history_entry e = {.slot = c->slot, .epoch = c->epoch, .failure_count = c->trip_failure_count,
                                  .from = (uint8_t)from, .to = (uint8_t)c->state, .source = (uint8_t)source,
                                  .opened_at = c->opened_at, .time_ns = now->real_ns};
    cbd_segment_history_append(&u->seg, &e);
}

static void ucbd_try_probe(void *arg, const struct cbd_circuit *c, uint32_t lease_s)
{
    struct ucbd *u = arg;
    struct cbd_now now;
    (void)lease_s;
    cbd_now(&now);
    if (u->nasks == u->asks_cap) {
        u->asks_cap = u->asks_cap ? u->asks_cap * 2 : 256;
        u->asks = realloc(u->asks, u->asks_cap * sizeof *u->asks);
        cr_assert_not_null(u->asks);
    }
    u->asks[u->nasks++] = (struct ucbd_ask){.slot = c->slot, .opened_at = c->opened_at, .mono = now.mono_ns};
}

static void ucbd_arm(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns)
{
    cbd_timers_add(&((struct ucbd *)arg)->timers, slot, epoch, at_ns);
}

/* A deadline the policy armed is due: as cbd.c's on_deadline. */
static void ucbd_deadline(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns, const struct cbd_now *now)
{
    struct ucbd *u = arg;
    if (slot < u->circuits.n)
        cbd_policy_on_deadline(&u->env, &u->circuits.by_slot[slot], epoch, at_ns, now);
}

static uint64_t ucbd_history_next(void *arg)
{
    return atomic_load(&((struct ucbd *)arg)->seg.hdr->history_head);
}

static void ucbd_grow(struct ucbd *u, uint32_t need)
{
    cr_assert_eq(cbd_circuits_grow(&u->circuits, need), 0);
}

/* A daemon of instance (NULL: a new unique one). On an instance a previous
 * ucbd left, the segment is adopted and every circuit in it loaded, as
 * cbd.c's load_adopted does (completing a transition that was committed but
 * not published). */
static UCBD_UNUSED struct ucbd *ucbd_open(const char *instance, const struct ucbd_opts *o)
{
    struct ucbd *u = calloc(1, sizeof *u);
    cr_assert_not_null(u);
    struct cbd_config *cfg = &u->cfg;
    if (instance == NULL)
        instance = tsup_unique("u");
    snprintf(cfg->instance, sizeof cfg->instance, "%s", instance);
    tsup__track_instance(cfg->instance);
    snprintf(cfg->socket, sizeof cfg->socket, "%s/cbd.sock", tsup_tmpdir()); /* nobody listens: no registrations */
    cfg->segment_mode = 0600;
    cfg->capacity = o->capacity ? o->capacity : 64;
    cfg->lanes = o->lanes ? o->lanes : 4;
    cfg->lane_capacity = o->lane_capacity ? o->lane_capacity : 16;
    cfg->history_capacity = 1024;
    cfg->heartbeat_ms = 100;
    cfg->stale_limit_ms = 3600000; /* the test is the daemon: never stale */
    cfg->stale_policy = CB_STALE_KEEP_STATE;
    cfg->drain_interval_ms = o->drain_interval_ms ? o->drain_interval_ms : 1000;
    cfg->reclaim_interval_ms = o->reclaim_interval_ms ? o->reclaim_interval_ms : 60000;
    cbd_log_threshold = CBD_LOG_ERROR;
    u->env = (struct cbd_policy_env){.arg = u, .transitioned = ucbd_transitioned, .try_probe = ucbd_try_probe,
                                     .arm = ucbd_arm, .history_next = ucbd_history_next};
    cbd_circuits_init(&u->circuits, &u->seg);
    cr_assert_eq(uv_loop_init(&u->loop), 0);
    cr_assert_eq(cbd_segment_open(&u->seg, cfg), 0, "cbd_segment_open %s", cfg->instance);
    cr_assert_eq(cbd_timers_init(&u->timers, &u->loop, ucbd_deadline, u), 0);
    uint32_t n = atomic_load(&u->seg.hdr->circuit_count);
    ucbd_grow(u, n);
    struct cbd_now now;
    cbd_now(&now);
    for (uint32_t i = 0; i < n; i++) {
        struct cb_seg_vdata v;
        cbd_segment_roll_forward(&u->seg, i, &v);
        cbd_policy_load(&u->env, &u->circuits.by_slot[i], i, CB_SEG_RECORD(u->seg.hdr, i), CB_LANES_PERMIT(u->seg.lanes, i),
                        &now);
        u->circuits.by_slot[i].removed = (u->circuits.by_slot[i].flags & CB_SEG_F_REMOVED) != 0;
    }
    u->circuits.n = u->circuits.nadopted = n;
    /* The drain's timers (run only when a test runs the loop); after an
     * adoption it first drains the lane a dead daemon was in the middle of. */
    cbd_drain_init(&u->drain, &u->loop, &u->seg, &u->circuits, &u->env, &u->cfg);
    cr_assert_eq(cbd_drain_start(&u->drain), 0);
    cbd_segment_publish(&u->seg);
    return u;
}

static UCBD_UNUSED uint32_t ucbd_add(struct ucbd *u, const char *name, const cb_config *cfg)
{
    uint32_t slot;
    cr_assert_eq(cbd_segment_add(&u->seg, name, cfg, CBD_OWNER_NONE, UINT32_MAX, &slot), 0, "add %s", name);
    ucbd_grow(u, slot + 1);
    struct cbd_now now;
    cbd_now(&now);
    cbd_policy_load(&u->env, &u->circuits.by_slot[slot], slot, CB_SEG_RECORD(u->seg.hdr, slot),
                    CB_LANES_PERMIT(u->seg.lanes, slot), &now);
    if (slot >= u->circuits.n)
        u->circuits.n = slot + 1;
    return slot;
}

/* The current version of slot's record. */
static UCBD_UNUSED struct cb_seg_vdata ucbd_version(const struct ucbd *u, uint32_t slot)
{
    struct cb_seg_vdata v;
    cr_assert_eq(cb_seg_version_try_read(CB_SEG_RECORD(u->seg.hdr, slot), &v, NULL), 0);
    return v;
}

static UCBD_UNUSED uint64_t ucbd_counted(const struct ucbd *u, uint32_t slot)
{
    struct cb_seg_vdata v = ucbd_version(u, slot);
    return v.total_successes + v.total_failures + v.total_ignored;
}

/* Stops u: timers closed, process memory freed; the segment stays for the
 * next daemon. clean: a clean stop (daemon_pid 0); else a daemon that died
 * where it stood (nothing more written to the segment). */
static void ucbd_free(struct ucbd *u, bool clean)
{
    cbd_drain_stop(&u->drain);
    cbd_timers_close(&u->timers);
    uv_run(&u->loop, UV_RUN_DEFAULT); /* the close callbacks */
    cr_assert_eq(uv_loop_close(&u->loop), 0);
    if (clean) {
        cbd_segment_close(&u->seg);
    } else {
        munmap(u->seg.hdr, u->seg.state_size);
        munmap(u->seg.lanes, u->seg.lanes_size);
    }
    cbd_circuits_free(&u->circuits);
    free(u->asks);
    free(u);
}

static UCBD_UNUSED void ucbd_close(struct ucbd *u) { ucbd_free(u, true); }
static UCBD_UNUSED void ucbd_abandon(struct ucbd *u) { ucbd_free(u, false); }

/* u dies where it stands; the daemon started next adopts its segment. */
static UCBD_UNUSED struct ucbd *ucbd_successor(struct ucbd *u)
{
    char instance[CB_INSTANCE_MAX + 1];
    struct ucbd_opts o = {.capacity = u->cfg.capacity, .lanes = u->cfg.lanes,
                          .lane_capacity = u->cfg.lane_capacity, .drain_interval_ms = u->cfg.drain_interval_ms,
                          .reclaim_interval_ms = u->cfg.reclaim_interval_ms};
    snprintf(instance, sizeof instance, "%s", u->cfg.instance);
    ucbd_abandon(u);
    return ucbd_open(instance, &o);
}

/* Runs the loop until cond holds (each turn blocks until a timer is due),
 * at most turns turns. */
#define ucbd_run_until(u, cond, turns)                                      \
    ({                                                                      \
        int ucbd__n = 0;                                                    \
        while (!(cond) && ucbd__n++ < (turns))                              \
            uv_run(&(u)->loop, UV_RUN_ONCE);                              \
        (cond);                                                             \
    })

/* The lane this process owns (the first one, in lane order), or NULL. */
static UCBD_UNUSED struct cb_lane *ucbd_my_lane(const struct ucbd *u, uint32_t *lane_no)
{
    const struct cb_lanes_header *l = u->seg.lanes;
    uint64_t mine = cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED);
    for (uint32_t i = 0; i < l->lane_count; i++) {
        struct cb_lane *lane = CB_LANES_LANE(l, i);
        if (atomic_load(&lane->owner) == mine) {
            if (lane_no != NULL)
                *lane_no = i;
            return lane;
        }
    }
    return NULL;
}

/* What a worker writes for one outcome (lanes.c's lane_append), appended by
 * hand to lane: for garbage, torn tails and lanes a dead daemon left. */
static UCBD_UNUSED struct cb_lane_event ucbd_event(uint32_t slot, uint32_t epoch, unsigned outcome, unsigned kind)
{
    return (struct cb_lane_event){.slot = slot, .epoch = epoch, .outcome = (uint8_t)outcome, .kind = (uint8_t)kind,
                                  .check = (uint16_t)(CB_EVENT_CHECK ^ (slot & 0xffff))};
}

static UCBD_UNUSED void ucbd_append(const struct ucbd *u, struct cb_lane *lane, struct cb_lane_event e)
{
    uint64_t tail = atomic_load(&lane->tail);
    CB_LANES_EVENTS(lane)[tail & (u->seg.lanes->lane_capacity - 1)] = e;
    atomic_store_explicit(&lane->tail, tail + 1, memory_order_release);
}

/* n events of slot's current epoch (ALLOWED tickets), appended by hand. */
static UCBD_UNUSED void ucbd_append_n(const struct ucbd *u, struct cb_lane *lane, uint32_t slot, unsigned outcome,
                                      int n)
{
    for (int i = 0; i < n; i++)
        ucbd_append(u, lane, ucbd_event(slot, u->circuits.by_slot[slot].epoch, outcome, CB_TICKET_ALLOWED));
}

/* Claims lane_no for this process as a worker thread would. */
static UCBD_UNUSED struct cb_lane *ucbd_claim(const struct ucbd *u, uint32_t lane_no)
{
    struct cb_lane *lane = CB_LANES_LANE(u->seg.lanes, lane_no);
    uint64_t free_word = 0;
    cr_assert(atomic_compare_exchange_strong(&lane->owner, &free_word,
                                             cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED)),
              "lane %u is free", lane_no);
    return lane;
}

#endif /* UNIT_CBD_H */
