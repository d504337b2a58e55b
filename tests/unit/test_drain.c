/*
 * test_drain.c - the daemon's drain (daemon/drain.c): exactly-once counting
 * through a record's drain checkpoint, and the reclaim of lanes whose owner
 * let go or died.
 *
 * An in-process daemon (unit_cbd.h) on a real segment; a second one opened
 * on the same instance adopts the segment as a restarted cbd does. The
 * state a daemon leaves when it dies in the middle of a drain is made two
 * ways: by killing it there (the policy's transition callback jumps out of
 * the drain, so nothing after the transition is written: no history entry,
 * no other record's counters, no lane head), or by writing the checkpoint
 * such a daemon publishes directly into a record's version.
 */
#include "unit_cbd.h"

#include <inttypes.h>

#include <sys/wait.h>

static cb_config threshold(uint32_t failures)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = failures;
    return cfg;
}

/* What a daemon publishes when it dies in the middle of draining lane_no:
 * slot's version counts `successes`, checkpointed at position pos. */
static void died_draining(struct ucbd *u, uint32_t slot, uint64_t successes, uint32_t lane_no, uint64_t pos)
{
    struct cb_seg_vdata v = ucbd_version(u, slot);
    v.total_successes = successes;
    v.applied_lane = lane_no + 1;
    v.applied_pos = pos;
    cb_seg_version_publish(CB_SEG_RECORD(u->seg.hdr, slot), &v);
}

Test(drain, each_event_is_applied_once_and_the_head_moves_past_it)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lane_capacity = 64});
    cb_config cfg = threshold(100);
    uint32_t a = ucbd_add(u, "a", &cfg), b = ucbd_add(u, "b", &cfg);
    struct cb_lane *l0 = ucbd_claim(u, 0), *l3 = ucbd_claim(u, 3);
    ucbd_append_n(u, l0, a, CB_SUCCESS, 5);
    ucbd_append_n(u, l3, b, CB_FAILURE, 7);
    ucbd_append_n(u, l0, b, CB_IGNORED, 2);
    cbd_drain_all(&u->drain);
    cr_assert_eq(ucbd_version(u, a).total_successes, 5);
    cr_assert_eq(ucbd_version(u, b).total_failures, 7);
    cr_assert_eq(ucbd_version(u, b).failure_streak, 7);
    cr_assert_eq(ucbd_version(u, b).total_ignored, 2);
    cr_assert_eq(atomic_load(&l0->head), 7);
    cr_assert_eq(atomic_load(&l3->head), 7);
    cbd_drain_all(&u->drain);
    cr_assert_eq(ucbd_counted(u, a) + ucbd_counted(u, b), 14, "a second drain finds nothing new");
    struct cb_seg_vdata v = ucbd_version(u, b);
    cr_assert_eq(v.applied_lane, 3 + 1, "b's checkpoint names the lane drained last (lane 3)");
    cr_assert_eq(v.applied_pos, 7, "and the position after its last event there");
    ucbd_close(u);
}

Test(drain, a_records_checkpoint_skips_its_events_before_the_position_and_the_rest_are_applied)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lane_capacity = 64});
    cb_config cfg = threshold(100);
    uint32_t a = ucbd_add(u, "a", &cfg), b = ucbd_add(u, "b", &cfg);
    struct cb_lane *lane = ucbd_claim(u, 2);
    for (int i = 0; i < 10; i++) { /* a, b, a, b, ... at positions 0..19 */
        ucbd_append_n(u, lane, a, CB_SUCCESS, 1);
        ucbd_append_n(u, lane, b, CB_SUCCESS, 1);
    }
    /* The daemon that counted a's events up to position 10 (six of them)
     * published that, and died before the lane's head moved. */
    died_draining(u, a, 6, 2, 11);
    u = ucbd_successor(u); /* drains lane 2 first */
    cbd_drain_all(&u->drain);
    cr_assert_eq(ucbd_version(u, a).total_successes, 10, "6 counted before + 4 from position 11 on");
    cr_assert_eq(ucbd_version(u, b).total_successes, 10, "another record's events are all applied");
    cr_assert_eq(u->drain.events_replayed, 6);
    cr_assert_eq(ucbd_version(u, a).applied_pos, 19);
    cr_assert_eq(atomic_load(&CB_LANES_LANE(u->seg.lanes, 2)->head), 20);
    ucbd_close(u);
}

Test(drain, the_lane_a_dead_daemon_was_draining_is_drained_before_any_other)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lane_capacity = 64});
    cb_config cfg = threshold(100);
    uint32_t a = ucbd_add(u, "a", &cfg);
    struct cb_lane *l0 = ucbd_claim(u, 0), *l1 = ucbd_claim(u, 1);
    ucbd_append_n(u, l1, a, CB_SUCCESS, 6);
    /* Died in lane 1 after counting 4 of its events; lane 0 got its events
     * after that. Drained in lane order, lane 0 would move a's checkpoint
     * away from lane 1 and lane 1's first 4 events would count twice. */
    died_draining(u, a, 4, 1, 4);
    ucbd_append_n(u, l0, a, CB_SUCCESS, 3);
    u = ucbd_successor(u);
    cbd_drain_all(&u->drain);
    cr_assert_eq(ucbd_version(u, a).total_successes, 6 + 3, "every event once (%llu counted)",
                 (unsigned long long)ucbd_version(u, a).total_successes);
    cr_assert_eq(u->drain.events_replayed, 4);
    ucbd_close(u);
}

Test(drain, a_daemon_killed_as_a_drained_failure_trips_the_circuit_is_followed_by_one_that_counts_every_event_once)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lane_capacity = 64});
    cb_config cfg = threshold(3);
    uint32_t a = ucbd_add(u, "a", &cfg), b = ucbd_add(u, "b", &cfg);
    struct cb_lane *lane = ucbd_claim(u, 1);
    uint32_t a_closed = u->circuits.by_slot[a].epoch;
    ucbd_append_n(u, lane, a, CB_FAILURE, 2);
    ucbd_append_n(u, lane, b, CB_SUCCESS, 3);
    ucbd_append_n(u, lane, a, CB_FAILURE, 2); /* the first trips a, the second comes from a worker still in flight */
    ucbd_append_n(u, lane, b, CB_SUCCESS, 2);
    jmp_buf died;
    u->die_on_transition = &died;
    if (setjmp(died) == 0) {
        cbd_drain_all(&u->drain);
        cr_assert_fail("the drain should have tripped a");
    }
    cr_assert_eq(atomic_load(&lane->head), 0, "died before the head moved");
    cr_assert_eq(atomic_load(&u->seg.hdr->history_head), 0, "and before the history entry");
    u = ucbd_successor(u);
    cr_assert_eq(atomic_load(&u->seg.hdr->history_head), 1, "the committed trip's history entry is completed");
    cr_assert_eq(atomic_load(&CB_SEG_HISTORY(u->seg.hdr, 0)->to), CB_OPEN);
    cbd_drain_all(&u->drain);
    struct cb_seg_vdata va = ucbd_version(u, a), vb = ucbd_version(u, b);
    cr_assert_eq(cb_seg_word_state(va.word), CB_OPEN);
    cr_assert_eq(cb_seg_word_epoch(va.word), a_closed + 1, "tripped once");
    cr_assert_eq(u->transitions, 0, "the new daemon makes no second trip");
    cr_assert_eq(va.trip_failure_count, 3);
    cr_assert_eq(va.total_failures, 3, "the three failures before the trip count once");
    cr_assert_eq(va.total_stale_events, 1, "the in-flight failure is of the CLOSED epoch");
    cr_assert_eq(vb.total_successes, 5, "b's events, never published by the dead daemon, are applied now");
    cr_assert_eq(u->drain.events_replayed, 3);
    cr_assert_eq(atomic_load(&CB_LANES_LANE(u->seg.lanes, 1)->head), 9);
    ucbd_close(u);
}

/* ---- reclaim ------------------------------------------------------------------------ */

static struct ucbd *reclaiming_daemon(uint32_t *slot)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.reclaim_interval_ms = 10, .drain_interval_ms = 1000});
    cb_config cfg = threshold(1000);
    *slot = ucbd_add(u, "a", &cfg);
    return u;
}

static void record_n(cb_client *cl, int n)
{
    cb_circuit *c;
    cr_assert_eq(cb_circuit_get(cl, "a", NULL, &c), 0);
    for (int i = 0; i < n; i++)
        cb_record(c, cb_allow(c), CB_SUCCESS);
}

Test(drain, a_released_lane_is_drained_one_last_time_and_freed)
{
    uint32_t a;
    struct ucbd *u = reclaiming_daemon(&a);
    cb_client *cl;
    cr_assert_eq(cb_client_open(&cl, u->cfg.instance), 0);
    record_n(cl, 5);
    uint32_t n;
    struct cb_lane *lane = ucbd_my_lane(u, &n);
    cr_assert_not_null(lane);
    cb_client_close(cl);
    cr_assert_eq(atomic_load(&lane->owner), cb_lane_owner_word((uint32_t)getpid(), CB_LANE_RELEASED));
    cr_assert(ucbd_run_until(u, u->drain.lanes_reclaimed == 1, 1000));
    cr_assert_eq(atomic_load(&lane->owner), 0, "free for the next thread");
    cr_assert_eq(ucbd_counted(u, a), 5, "nothing appended before the release is lost");
    cr_assert_eq(atomic_load(&lane->head), 5);
    cr_assert_eq(cbd_drain_lanes_in_use(&u->drain), 0);
    ucbd_close(u);
}

Test(drain, a_dead_processs_lane_is_drained_one_last_time_and_freed)
{
    uint32_t a;
    struct ucbd *u = reclaiming_daemon(&a);
    pid_t pid = tsup_fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) { /* a worker that dies without closing its client */
        cb_client *cl;
        if (cb_client_open(&cl, u->cfg.instance) < 0)
            _exit(1);
        cb_circuit *c;
        if (cb_circuit_get(cl, "a", NULL, &c) < 0)
            _exit(2);
        for (int i = 0; i < 7; i++)
            cb_record(c, cb_allow(c), CB_FAILURE);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the worker ran (status %d)", status);
    cr_assert_eq(cbd_drain_lanes_in_use(&u->drain), 1, "its lane is still owned by the dead pid");
    cr_assert(ucbd_run_until(u, u->drain.lanes_reclaimed == 1, 1000));
    cr_assert_eq(ucbd_version(u, a).total_failures, 7);
    cr_assert_eq(cbd_drain_lanes_in_use(&u->drain), 0);
    ucbd_close(u);
}

Test(drain, a_live_owners_lane_is_never_reclaimed)
{
    uint32_t a;
    struct ucbd *u = reclaiming_daemon(&a);
    cb_client *cl;
    cr_assert_eq(cb_client_open(&cl, u->cfg.instance), 0);
    record_n(cl, 3);
    struct cb_lane *lane = ucbd_my_lane(u, NULL);
    uint64_t owner = atomic_load(&lane->owner);
    for (int turn = 0; turn < 10; turn++) /* ten reclaim rounds or more */
        uv_run(&u->loop, UV_RUN_ONCE);
    cr_assert_eq(u->drain.lanes_reclaimed, 0);
    cr_assert_eq(atomic_load(&lane->owner), owner);
    record_n(cl, 2);
    cbd_drain_all(&u->drain);
    cr_assert_eq(ucbd_counted(u, a), 5, "the thread keeps its lane");
    cb_client_close(cl);
    ucbd_close(u);
}

Test(drain, a_lane_with_a_nonsense_owner_word_is_drained_and_freed)
{
    uint32_t a;
    struct ucbd *u = reclaiming_daemon(&a);
    struct cb_lane *lane = ucbd_claim(u, 2);
    ucbd_append_n(u, lane, a, CB_SUCCESS, 4);
    atomic_store(&lane->owner, cb_lane_owner_word((uint32_t)getpid(), 77));
    cr_assert(ucbd_run_until(u, u->drain.lanes_reclaimed == 1, 1000));
    cr_assert_eq(atomic_load(&lane->owner), 0);
    cr_assert_eq(ucbd_counted(u, a), 4);
    ucbd_close(u);
}

/* ---- an idle daemon sleeps ------------------------------------------------------------ */

/* Runs u's loop for about ms milliseconds of wall time. */
static void run_for_ms(struct ucbd *u, int ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000;
    while (uv_hrtime() < end)
        uv_run(&u->loop, UV_RUN_ONCE);
}

/* With nothing to drain the tick slows to ten drain intervals (the pace a
 * quiet lane is visited at anyway); a loaded machine can only make it
 * tick less, so the bound below cannot be missed by a slow run. */
Test(drain, an_idle_daemon_ticks_ten_times_slower_than_the_drain_interval)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.drain_interval_ms = 10});
    cb_config cfg = threshold(1000);
    ucbd_add(u, "a", &cfg);
    run_for_ms(u, 100); /* to the slow pace */
    uint64_t ticks = u->drain.ticks;
    run_for_ms(u, 1000);
    cr_assert(u->drain.slow, "the tick of a daemon with nothing claimed is not slow");
    cr_assert_leq(u->drain.ticks - ticks, 20, "%" PRIu64 " ticks in a second at a 10 ms drain interval",
                  u->drain.ticks - ticks);
    ucbd_close(u);
}

/* A success recorded while the tick is slow is drained within the slow
 * tick, and the tick is back at drain_interval_ms for the traffic after it. */
Test(drain, the_first_event_after_a_quiet_spell_brings_the_tick_back_to_pace)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.drain_interval_ms = 10});
    cb_config cfg = threshold(1000);
    uint32_t a = ucbd_add(u, "a", &cfg);
    cb_client *cl;
    cr_assert_eq(cb_client_open(&cl, u->cfg.instance), 0);
    record_n(cl, 1);
    cr_assert(ucbd_run_until(u, ucbd_counted(u, a) == 1, 1000));
    cr_assert(ucbd_run_until(u, u->drain.slow, 1000), "a quiet lane never slowed the tick");
    record_n(cl, 1); /* a success: it rings no doorbell */
    cr_assert(ucbd_run_until(u, ucbd_counted(u, a) == 2, 1000), "the success was never drained");
    cr_assert(!u->drain.slow, "the tick stayed slow with traffic in a lane");
    cb_client_close(cl);
    ucbd_close(u);
}

/* Reclaim looks at claimed groups; a lane whose claimer died between its
 * claim and setting its group's bit is found by the full pass. */
Test(drain, a_dead_owners_lane_outside_every_claimed_group_is_reclaimed_by_the_full_pass)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lanes = 256, .reclaim_interval_ms = 10,
                                                         .drain_interval_ms = 1000});
    cr_assert(ucbd_run_until(u, u->drain.reclaim_passes >= 2, 1000), "reclaim never ran");
    pid_t pid = tsup_fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(0);
    cr_assert_eq(waitpid(pid, NULL, 0), pid);
    tsup_untrack(pid);
    struct cb_lane *lane = CB_LANES_LANE(u->seg.lanes, 130); /* group 2: nobody claimed it */
    atomic_store(&lane->owner, cb_lane_owner_word((uint32_t)pid, CB_LANE_OWNED));
    cr_assert(ucbd_run_until(u, u->drain.lanes_reclaimed == 1, 10000), "the dead owner's lane was never freed");
    cr_assert_eq(atomic_load(&lane->owner), 0);
    ucbd_close(u);
}

/* A worker of layout minor 0 claims lanes without setting its group's bit:
 * the full reclaim pass finds its lane, and its successes are drained. */
Test(drain, successes_in_a_lane_whose_group_was_never_marked_are_drained_after_a_full_pass)
{
    struct ucbd *u = ucbd_open(NULL, &(struct ucbd_opts){.lanes = 256, .reclaim_interval_ms = 10,
                                                         .drain_interval_ms = 10});
    cb_config cfg = threshold(1000);
    uint32_t a = ucbd_add(u, "a", &cfg);
    cr_assert(ucbd_run_until(u, u->drain.reclaim_passes >= 2, 1000), "reclaim never ran");
    struct cb_lane *lane = ucbd_claim(u, 200); /* group 3, no bit: what an old worker leaves */
    ucbd_append_n(u, lane, a, CB_SUCCESS, 3);
    cr_assert(ucbd_run_until(u, ucbd_counted(u, a) == 3, 1000), "the old worker's successes were never drained");
    ucbd_close(u);
}
