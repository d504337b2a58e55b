/*
 * test_memos.c - the hot path's per-thread memos (libcb lanes.c, "Memos"):
 * a refusal or a record decided from what the thread worked out last time
 * must decide exactly what the full path would, count exactly as much,
 * and give up its memory whenever what it remembered may have changed.
 *
 * Each test tries to catch the memo deciding on something stale: a daemon
 * gone stale while a thread refuses in a tight loop, a probe permit given
 * back while the thread remembers there was none, a fork whose child
 * inherits the parent's memo (and with it the parent's lane), a client
 * closed and opened again at maybe the same addresses.
 *
 * The daemon side is an in-process daemon on a real segment (unit_cbd.h);
 * the test writes the heartbeat itself to make it stale, as a hung daemon
 * would leave it.
 */
#include "unit_cbd.h"

#include <sys/wait.h>

#define BUDGET_MAX 64 /* lanes.c: REJECT_BUDGET_MAX */

struct fixture {
    struct ucbd *u;
    uint32_t slot;
    cb_client *cl;
    cb_circuit *c;
};

/* A circuit that trips on one failure and stays OPEN for recovery_ms. */
static struct fixture open_fixture(uint32_t recovery_ms, uint32_t probes)
{
    struct fixture f = {.u = ucbd_open(NULL, &(struct ucbd_opts){.lanes = 8, .lane_capacity = 64})};
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = 1;
    cfg.recovery_timeout_ms = recovery_ms;
    cfg.half_open_max_probes = probes;
    f.slot = ucbd_add(f.u, "downstream", &cfg);
    cr_assert_eq(cb_client_open(&f.cl, f.u->cfg.instance), 0);
    cr_assert_eq(cb_circuit_get(f.cl, "downstream", NULL, &f.c), 0);
    return f;
}

static void close_fixture(struct fixture *f)
{
    if (f->cl != NULL)
        cb_client_close(f->cl);
    ucbd_close(f->u);
}

static cb_state state_of(const struct fixture *f)
{
    return cb_seg_word_state(ucbd_version(f->u, f->slot).word);
}

static void trip(const struct fixture *f)
{
    cb_ticket t = cb_allow(f->c);
    cr_assert_eq(tsup_ticket_kind(t), CB_TICKET_ALLOWED);
    cb_record(f->c, t, CB_FAILURE);
    cbd_drain_all(&f->u->drain);
    cr_assert_eq(state_of(f), CB_OPEN);
}

/* A circuit "other" that never trips, at *slot. */
static cb_circuit *second_circuit(const struct fixture *f, uint32_t *slot)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = 1000000;
    *slot = ucbd_add(f->u, "other", &cfg);
    cb_circuit *c;
    cr_assert_eq(cb_circuit_get(f->cl, "other", NULL, &c), 0);
    return c;
}

/* n calls that must all be refused. */
static void refuse_n(const struct fixture *f, int n)
{
    for (int i = 0; i < n; i++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(f->c)), CB_TICKET_REJECTED, "call %d was not refused", i);
}

/* Rejections the daemon has folded for the circuit. */
static uint64_t rejected(const struct fixture *f)
{
    cbd_drain_all(&f->u->drain);
    return f->u->circuits.by_slot[f->slot].rejected;
}

/* The daemon's heartbeat, as a hung daemon leaves it: older than its limit
 * (1 s here), under the fail-open policy. */
static void make_stale(const struct fixture *f)
{
    struct cb_seg_header *h = f->u->seg.hdr;
    h->stale_policy = CB_STALE_FAIL_OPEN;
    h->stale_limit_ms = 1000;
    atomic_store(&h->heartbeat_ns, atomic_load(&h->heartbeat_ns) - 2000000000ull);
}

/* Past the recovery timeout the policy asks for a probe (ucbd records the
 * ask); a host-local store grants it at once, as here. */
static void to_half_open(const struct fixture *f)
{
    size_t asks = f->u->nasks;
    cr_assert(ucbd_run_until(f->u, f->u->nasks > asks, 1000), "the recovery timeout never ended");
    struct cbd_now now;
    cbd_now(&now);
    struct cbd_circuit *c = &f->u->circuits.by_slot[f->slot];
    cbd_policy_on_probe_result(&f->u->env, c, c->opened_at, 1, 0, &now);
    cr_assert_eq(state_of(f), CB_HALF_OPEN);
}

Test(memos, a_thread_refusing_in_a_tight_loop_fails_open_at_most_a_budget_of_calls_after_the_daemon_went_stale)
{
    struct fixture f = open_fixture(600000, 1);
    trip(&f);
    refuse_n(&f, 10000); /* fast enough for the budget to reach its cap */
    make_stale(&f);
    int calls = 0;
    cb_ticket t;
    do {
        t = cb_allow(f.c);
        calls++;
    } while (tsup_ticket_kind(t) == CB_TICKET_REJECTED && calls < 10 * BUDGET_MAX);
    cr_assert_eq(tsup_ticket_kind(t), CB_TICKET_BYPASS, "a stale daemon's OPEN circuit is still refused");
    cr_assert_leq(calls, BUDGET_MAX, "failed open only at call %d after the daemon went stale", calls);
    close_fixture(&f);
}

Test(memos, a_slow_caller_reads_the_clock_on_every_refusal)
{
    struct fixture f = open_fixture(600000, 1);
    trip(&f);
    /* One refusal per clock tick at most: no budget ever grows past 1. */
    for (int i = 0; i < 5; i++) {
        refuse_n(&f, 1);
        usleep(20000);
    }
    make_stale(&f);
    cr_assert_eq(tsup_ticket_kind(cb_allow(f.c)), CB_TICKET_BYPASS, "the first call after the daemon went stale");
    close_fixture(&f);
}

Test(memos, every_refusal_is_counted_once_whether_remembered_or_worked_out)
{
    struct fixture f = open_fixture(600000, 1);
    trip(&f);
    uint64_t before = rejected(&f);
    refuse_n(&f, 100000);
    cr_assert_eq(rejected(&f) - before, 100000);
    close_fixture(&f);
}

Test(memos, a_permit_given_back_in_half_open_goes_to_the_next_call_not_refused_from_memory)
{
    struct fixture f = open_fixture(20, 1);
    trip(&f);
    to_half_open(&f);
    cb_ticket probe = cb_allow(f.c);
    cr_assert_eq(tsup_ticket_kind(probe), CB_TICKET_PROBE);
    refuse_n(&f, 1000); /* the one permit is out: remembered as none left */
    cb_record(f.c, probe, CB_IGNORED); /* gives the permit back */
    cbd_drain_all(&f.u->drain);
    cr_assert_eq(state_of(&f), CB_HALF_OPEN);
    cr_assert_eq(tsup_ticket_kind(cb_allow(f.c)), CB_TICKET_PROBE, "the permit given back was refused");
    close_fixture(&f);
}

Test(memos, a_new_half_open_epoch_is_never_refused_on_the_last_one_s_memory)
{
    struct fixture f = open_fixture(20, 1);
    trip(&f);
    to_half_open(&f);
    cb_ticket probe = cb_allow(f.c);
    refuse_n(&f, 1000);
    cb_record(f.c, probe, CB_FAILURE); /* reopens */
    cbd_drain_all(&f.u->drain);
    cr_assert_eq(state_of(&f), CB_OPEN);
    refuse_n(&f, 1000);
    to_half_open(&f);
    cr_assert_eq(tsup_ticket_kind(cb_allow(f.c)), CB_TICKET_PROBE, "the new epoch's permit was refused");
    close_fixture(&f);
}

Test(memos, a_forked_child_counts_in_a_lane_of_its_own_never_in_the_parent_s)
{
    struct fixture f = open_fixture(600000, 1);
    trip(&f);
    refuse_n(&f, 1000); /* the parent's thread remembers its count entry */
    uint32_t parent_lane_no;
    struct cb_lane *parent_lane = ucbd_my_lane(f.u, &parent_lane_no);
    cr_assert_not_null(parent_lane);
    cbd_drain_all(&f.u->drain);
    uint64_t parent_counts[CB_LANE_CALL_ENTRIES];
    for (int i = 0; i < CB_LANE_CALL_ENTRIES; i++)
        parent_counts[i] = atomic_load(&parent_lane->calls[i].counts);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        for (int i = 0; i < 500; i++) {
            if (tsup_ticket_kind(cb_allow(f.c)) != CB_TICKET_REJECTED)
                _exit(1);
        }
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's calls were not all refused");
    for (int i = 0; i < CB_LANE_CALL_ENTRIES; i++)
        cr_assert_eq(atomic_load(&parent_lane->calls[i].counts), parent_counts[i],
                     "the child wrote the parent's count entry %d", i);
    cr_assert_eq(rejected(&f), 1000 + 500, "the child's refusals are counted, in its own lane");
    close_fixture(&f);
}

Test(memos, a_client_closed_and_opened_again_counts_through_its_new_mapping)
{
    struct fixture f = open_fixture(600000, 1);
    trip(&f);
    refuse_n(&f, 1000);
    cb_ticket t = cb_allow(f.c);
    cb_client_close(f.cl);
    cr_assert_eq(cb_client_open(&f.cl, f.u->cfg.instance), 0);
    cr_assert_eq(cb_circuit_get(f.cl, "downstream", NULL, &f.c), 0);
    refuse_n(&f, 1000);
    cr_assert_eq(rejected(&f), 2001);
    (void)t;
    close_fixture(&f);
}

Test(memos, records_of_two_handles_in_turn_each_reach_their_own_circuit)
{
    struct fixture f = open_fixture(600000, 1);
    uint32_t slot_b;
    cb_circuit *b = second_circuit(&f, &slot_b);
    for (int i = 0; i < 1000; i++) {
        cb_record(b, cb_allow(b), CB_FAILURE);
        cb_record(f.c, cb_allow(f.c), CB_SUCCESS);
        if (i % 16 == 15)
            cbd_drain_all(&f.u->drain); /* the lane holds 64 */
    }
    cbd_drain_all(&f.u->drain);
    struct cb_seg_vdata va = ucbd_version(f.u, f.slot), vb = ucbd_version(f.u, slot_b);
    cr_assert_eq(va.total_successes, 1000);
    cr_assert_eq(va.total_failures, 0);
    cr_assert_eq(vb.total_failures, 1000);
    cr_assert_eq(vb.total_successes, 0);
    close_fixture(&f);
}

Test(memos, a_forked_child_records_in_a_lane_of_its_own)
{
    struct fixture f = open_fixture(600000, 1);
    uint32_t slot_b;
    cb_circuit *b = second_circuit(&f, &slot_b);
    for (int i = 0; i < 10; i++)
        cb_record(b, cb_allow(b), CB_SUCCESS); /* the parent's record memo */
    struct cb_lane *parent_lane = ucbd_my_lane(f.u, NULL);
    cr_assert_not_null(parent_lane);
    uint64_t parent_tail = atomic_load(&parent_lane->tail);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        for (int i = 0; i < 20; i++)
            cb_record(b, cb_allow(b), CB_SUCCESS);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cr_assert_eq(atomic_load(&parent_lane->tail), parent_tail, "the child appended to the parent's lane");
    cbd_drain_all(&f.u->drain);
    cr_assert_eq(ucbd_version(f.u, slot_b).total_successes, 30);
    close_fixture(&f);
}
