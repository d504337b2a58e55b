/*
 * test_timers.c - the circuit deadlines (daemon/timers.c): one min-heap of
 * (deadline, slot, epoch) behind one uv_timer, with lazy deletion by epoch.
 *
 * Circuits of an in-process daemon (unit_cbd.h) trip on failures handed to
 * the policy at an instant an hour back on the real clocks, so their
 * recovery deadlines have all passed: one turn of the loop fires every one,
 * and the order of the policy's requests for the probe lease is the order
 * the heap gave them in. Deadlines an hour ahead show what stays armed.
 * No test waits for a deadline to come.
 */
#include "unit_cbd.h"

#include <inttypes.h>

#define MS 1000000ull
#define HOUR (3600 * 1000 * MS)

/* Both clocks, an hour ago. */
static struct cbd_now hour_ago(void)
{
    struct cbd_now now;
    cbd_now(&now);
    now.mono_ns -= HOUR;
    now.real_ns -= (int64_t)HOUR;
    return now;
}

static cb_config recovery(uint32_t ms)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = 1;
    cfg.recovery_timeout_ms = ms;
    return cfg;
}

/* One failure in CLOSED at now trips slot (threshold 1). */
static void trip_at(struct ucbd *u, uint32_t slot, const struct cbd_now *now)
{
    struct cbd_circuit *c = &u->circuits.by_slot[slot];
    struct cb_lane_event e = ucbd_event(slot, c->epoch, CB_FAILURE, CB_TICKET_ALLOWED);
    cbd_policy_on_event(&u->env, c, &e, now);
    cbd_policy_flush(c);
    cr_assert_eq(c->state, CB_OPEN);
}

/* Runs the timers that are due now. */
static void fire_due(struct ucbd *u)
{
    for (int i = 0; i < 3; i++)
        uv_run(&u->loop, UV_RUN_NOWAIT);
}

Test(timers, deadlines_fire_in_deadline_order_whatever_order_they_were_armed_in)
{
    enum { N = 20000 };
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.capacity = N});
    static uint32_t rt[N];
    struct cbd_now back = hour_ago();
    for (uint32_t i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "c%u", i);
        rt[i] = 1000 + (uint32_t)((i * 2654435761ull) % 600000); /* scattered, armed out of order */
        cb_config cfg = recovery(rt[i]);
        cr_assert_eq(ucbd_add(u, name, &cfg), i);
        trip_at(u, i, &back);
    }
    cr_assert_eq(u->timers.n, N, "one entry per OPEN circuit");
    fire_due(u);
    cr_assert_eq(u->nasks, N, "every recovery deadline an hour old fired (%zu of %d)", u->nasks, N);
    static bool seen[N];
    for (size_t k = 0; k < u->nasks; k++) {
        uint32_t s = u->asks[k].slot;
        cr_assert_not(seen[s], "slot %u fired twice", s);
        seen[s] = true;
        if (k > 0)
            cr_assert_leq(rt[u->asks[k - 1].slot], rt[s], "request %zu (deadline +%u ms) after one of +%u ms", k,
                          rt[s], rt[u->asks[k - 1].slot]);
    }
    cr_assert_eq(u->timers.n, N, "each asks again after a lease: one live entry each, nothing else");
    ucbd_close(u);
}

Test(timers, an_entry_of_an_older_epoch_is_dropped_when_it_comes_up)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){0});
    cb_config cfg = recovery(1000);
    uint32_t a = ucbd_add(u, "a", &cfg), b = ucbd_add(u, "b", &cfg);
    struct cbd_now back = hour_ago();
    trip_at(u, a, &back);
    trip_at(u, b, &back);
    cbd_policy_operator(&u->env, &u->circuits.by_slot[a], CBD_RESET, 0, &back); /* a's entry is dead now */
    cr_assert_eq(u->timers.n, 2, "deletion is lazy");
    fire_due(u);
    cr_assert_eq(u->nasks, 1);
    cr_assert_eq(u->asks[0].slot, b, "only the live entry asks for a probe");
    cr_assert_eq(u->circuits.by_slot[a].state, CB_CLOSED);
    cr_assert_eq(u->timers.n, 1, "the dead entry is gone, b waits for its next request");
    ucbd_close(u);
}

Test(timers, an_earlier_deadline_in_the_same_epoch_fires_once)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){0});
    cb_config cfg = recovery(2 * 3600 * 1000); /* an hour from now */
    uint32_t a = ucbd_add(u, "a", &cfg);
    struct cbd_now back = hour_ago();
    trip_at(u, a, &back);
    cfg.recovery_timeout_ms = 600000; /* 50 minutes ago */
    cbd_policy_set_config(&u->env, &u->circuits.by_slot[a], &cfg, &back);
    cr_assert_eq(u->timers.n, 2, "the earlier deadline is armed beside the later one");
    fire_due(u);
    cr_assert_eq(u->nasks, 1);
    fire_due(u);
    cr_assert_eq(u->nasks, 1, "one request for one deadline");
    ucbd_close(u);
}

Test(timers, a_later_deadline_is_re_armed_when_the_earlier_entry_comes_up)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){0});
    cb_config cfg = recovery(600000);
    uint32_t a = ucbd_add(u, "a", &cfg);
    struct cbd_now back = hour_ago();
    trip_at(u, a, &back);
    cfg.recovery_timeout_ms = 2 * 3600 * 1000;
    cbd_policy_set_config(&u->env, &u->circuits.by_slot[a], &cfg, &back);
    cr_assert_eq(u->timers.n, 1, "a later deadline arms nothing yet");
    fire_due(u);
    cr_assert_eq(u->nasks, 0, "the recovery timeout moved an hour ahead");
    cr_assert_eq(u->timers.n, 1);
    struct cbd_deadline e = u->timers.heap[0];
    cr_assert_eq(e.slot, a);
    cr_assert_eq(e.epoch, u->circuits.by_slot[a].epoch);
    cr_assert_eq(e.at_ns, back.mono_ns + 2 * HOUR, "re-armed at the new deadline");
    cr_assert(uv_is_active((uv_handle_t *)&u->timers.timer));
    uint64_t due_ms = uv_timer_get_due_in(&u->timers.timer);
    cr_assert_geq(due_ms, 3590000, "the alarm is set for the deadline an hour ahead, not before (%" PRIu64 " ms)",
                  due_ms);
    cr_assert_leq(due_ms, 3600000);
    ucbd_close(u);
}

Test(timers, an_entry_for_a_slot_beyond_the_circuits_is_dropped)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){0});
    struct cbd_now back = hour_ago();
    cbd_timers_add(&u->timers, 1000, 3, back.mono_ns);
    fire_due(u);
    cr_assert_eq(u->timers.n, 0);
    cr_assert_eq(u->nasks, 0);
    cr_assert_not(uv_is_active((uv_handle_t *)&u->timers.timer), "an empty heap stops the alarm");
    ucbd_close(u);
}

Test(timers, deadlines_ahead_stay_armed_and_only_the_due_ones_fire)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.capacity = 256});
    struct cbd_now back = hour_ago();
    for (uint32_t i = 0; i < 200; i++) {
        char name[16];
        snprintf(name, sizeof name, "c%u", i);
        cb_config cfg = recovery(i % 2 ? 2 * 3600 * 1000 : 60000); /* odd: an hour ahead; even: long past */
        ucbd_add(u, name, &cfg);
        trip_at(u, i, &back);
    }
    fire_due(u);
    cr_assert_eq(u->nasks, 100);
    for (size_t k = 0; k < u->nasks; k++)
        cr_assert_eq(u->asks[k].slot % 2, 0, "slot %u fired an hour early", u->asks[k].slot);
    cr_assert_eq(u->timers.n, 200, "100 waiting an hour, 100 waiting to ask again");
    ucbd_close(u);
}
