/*
 * test_policy.c - the circuit breaker policy as a worker sees it, against
 * the real cbd: thresholds, streaks, recovery, probes, leases, epochs,
 * cb_call, cb_info_get and the transition history.
 *
 * Every test starts its own daemon and opens one client in the test
 * process. Recovery timeouts are short (tens to hundreds of ms) so cycles
 * are quick; nothing asserts how quickly cbd reacts, only that it does
 * within TSUP_LIVENESS_MS. Circuits that must stay OPEN use a long timeout.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void start(const struct tsup_daemon_opts *o) { tsup_fixture_start(&d, &cl, o); }

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(policy, .fini = stop, .timeout = 60);

/* Records n outcomes and waits until cbd has drained them all. */
static void record(cb_circuit *c, cb_outcome o, int n)
{
    cb_info before = tsup_info(c);
    cr_assert_eq(tsup_record_n(c, o, n), n, "a CLOSED circuit rejected a call");
    uint64_t drained = before.total_successes + before.total_failures + before.total_ignored + (uint64_t)n;
    cr_assert(tsup_wait_drained(c, drained), "cbd did not drain %d events", n);
}

/* One full cycle of a circuit with failure and success threshold 1:
 * CLOSED -> OPEN -> HALF_OPEN -> CLOSED, driven by state, not history. */
static void cycle(cb_circuit *c)
{
    cr_assert(tsup_wait_until(tsup_ticket_kind(cb_allow(c)) == CB_TICKET_ALLOWED, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN), "never went HALF_OPEN");
    cb_record(c, tsup_probe(c), CB_SUCCESS);
    cr_assert(tsup_wait_state(c, CB_CLOSED), "the probe's success did not close it");
}

Test(policy, four_failures_keep_a_circuit_closed_and_the_fifth_trips_it)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    uint32_t epoch0 = tsup_info(c).epoch;

    record(c, CB_FAILURE, 4);
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED, "tripped before the threshold");
    cr_assert_eq(i.failure_count, 4, "streak %u after 4 failures", i.failure_count);
    cr_assert_eq(i.epoch, epoch0);

    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_OPEN), "5 failures did not trip a threshold of 5");
    i = tsup_info(c);
    cr_assert_eq(i.failure_count, 5, "trip failure count");
    cr_assert_eq(i.epoch, epoch0 + 1, "one transition, one epoch");
    for (int k = 0; k < 1000; k++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "an OPEN circuit let call %d through", k);
}

Test(policy, a_success_resets_the_failure_streak)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 4);
    record(c, CB_SUCCESS, 1);
    cr_assert_eq(tsup_info(c).failure_count, 0, "a success left the streak");
    record(c, CB_FAILURE, 4);
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED, "8 failures split by a success tripped a threshold of 5");
    cr_assert_eq(i.failure_count, 4);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    cr_assert_eq(tsup_info(c).failure_count, 5);
}

Test(policy, an_ignored_outcome_leaves_the_streak_alone)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 4);
    record(c, CB_IGNORED, 3);
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED);
    cr_assert_eq(i.failure_count, 4, "ignored outcomes changed the streak to %u", i.failure_count);
    cr_assert_eq(i.total_ignored, 3);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_OPEN), "the streak of 4 + 1 did not trip");
}

Test(policy, after_the_recovery_timeout_exactly_one_probe_is_admitted)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 3, 1, 200);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN), "still not HALF_OPEN after the recovery timeout");
    cb_ticket probe = tsup_probe(c);
    cr_assert_eq(tsup_ticket_epoch(probe), tsup_info(c).epoch, "the probe carries the HALF_OPEN epoch");
    for (int k = 0; k < 1000; k++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "a second probe was admitted (call %d)", k);
    cr_assert_eq(tsup_info(c).state, CB_HALF_OPEN);
}

Test(policy, a_probe_reported_twice_does_not_free_a_second_permit)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 5, 1, 200);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN));
    cb_ticket t = tsup_probe(c);
    uint64_t successes = tsup_info(c).total_successes, stale = tsup_stat(&d, "events_stale");
    cb_record(c, t, CB_SUCCESS);
    cb_record(c, t, CB_SUCCESS); /* a buggy worker reports again */
    /* both reports taken, the second counted either way */
    cr_assert(tsup_wait_until(({
                                  uint64_t s = tsup_info(c).total_successes;
                                  s >= successes + 2 || (s == successes + 1 && tsup_stat(&d, "events_stale") > stale);
                              }),
                              TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_ticket_kind(tsup_probe(c)), CB_TICKET_PROBE);
    for (int k = 0; k < 1000; k++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "a duplicate report freed a second permit");
}

Test(policy, success_threshold_probe_successes_close_the_circuit)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 3, 1, 200);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN));
    uint32_t half_open_epoch = tsup_info(c).epoch;
    for (int k = 0; k < 3; k++) {
        /* a new probe is admitted only after cbd took the previous result */
        cb_ticket t = tsup_probe(c);
        cr_assert_eq(tsup_info(c).state, CB_HALF_OPEN, "closed after only %d probe successes", k);
        cb_record(c, t, CB_SUCCESS);
    }
    cr_assert(tsup_wait_state(c, CB_CLOSED), "3 probe successes did not close it");
    cb_info i = tsup_info(c);
    cr_assert_eq(i.epoch, half_open_epoch + 1);
    cr_assert_eq(i.opened_at, 0, "a CLOSED circuit has no opened_at");
    cr_assert_eq(i.failure_count, 0);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_ALLOWED);
}

Test(policy, one_probe_failure_reopens_with_a_new_opened_at)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 3, 1, 200);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 1);
    cb_transition open1 = tsup_next_transition(cl, "payments");
    cr_assert_eq(open1.to, CB_OPEN);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN));
    cb_record(c, tsup_probe(c), CB_SUCCESS); /* one success of three ... */
    cb_ticket t = tsup_probe(c);
    /* opened_at is in whole seconds: let the clock tick so the reopening
     * must carry a later one */
    cr_assert(tsup_wait_until(time(NULL) > open1.opened_at, 3000));
    cb_record(c, t, CB_FAILURE); /* ... then one failure */

    cb_transition half = tsup_next_transition(cl, "payments");
    cb_transition reopen = tsup_next_transition(cl, "payments");
    cr_assert_eq(half.from, CB_OPEN);
    cr_assert_eq(half.to, CB_HALF_OPEN);
    cr_assert_eq(reopen.from, CB_HALF_OPEN);
    cr_assert_eq(reopen.to, CB_OPEN, "a probe failure led to state %d", reopen.to);
    cr_assert_gt(reopen.opened_at, open1.opened_at, "the reopening kept the old opened_at");
    cr_assert_eq(reopen.epoch, half.epoch + 1);
    cr_assert_gt(half.epoch, open1.epoch);
}

Test(policy, a_closed_circuit_trips_again_at_the_threshold)
{
    start(NULL);
    cb_config cfg = tsup_config(2, 1, 1, 100);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 2);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN));
    cb_record(c, tsup_probe(c), CB_SUCCESS);
    cr_assert(tsup_wait_state(c, CB_CLOSED));
    record(c, CB_FAILURE, 1);
    cr_assert_eq(tsup_info(c).state, CB_CLOSED, "the streak survived the close");
    record(c, CB_FAILURE, 1);
    static const cb_state expect[][2] = {{CB_CLOSED, CB_OPEN}, {CB_OPEN, CB_HALF_OPEN},
                                         {CB_HALF_OPEN, CB_CLOSED}, {CB_CLOSED, CB_OPEN}};
    for (int k = 0; k < 4; k++) {
        cb_transition tr = tsup_next_transition(cl, "payments");
        cr_assert(tr.from == expect[k][0] && tr.to == expect[k][1], "transition %d: %d -> %d", k, tr.from, tr.to);
    }
}

Test(policy, twenty_full_cycles_each_move_the_epoch_by_three)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 1, 1, 50);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    uint32_t epoch = tsup_info(c).epoch;
    for (int k = 0; k < 20; k++) {
        cycle(c);
        cb_transition a = tsup_next_transition(cl, "payments");
        cb_transition b = tsup_next_transition(cl, "payments");
        cb_transition z = tsup_next_transition(cl, "payments");
        cr_assert(a.from == CB_CLOSED && a.to == CB_OPEN && a.epoch == epoch + 1, "cycle %d, first", k);
        cr_assert(b.from == CB_OPEN && b.to == CB_HALF_OPEN && b.epoch == epoch + 2, "cycle %d, second", k);
        cr_assert(z.from == CB_HALF_OPEN && z.to == CB_CLOSED && z.epoch == epoch + 3, "cycle %d, third", k);
        epoch += 3;
    }
    cr_assert_eq(tsup_info(c).epoch, epoch);
}

Test(policy, a_silent_probe_is_reclaimed_after_its_lease_and_its_late_result_ignored)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 2, 1, 200);
    cfg.probe_lease_ms = 300;
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN));
    cb_ticket silent = tsup_probe(c); /* this prober never reports in time */
    cb_ticket second = tsup_probe(c); /* admitted once the lease ran out */
    uint64_t stale = tsup_stat(&d, "events_stale");
    uint64_t successes = tsup_info(c).total_successes;
    /* Reported at once, so the second probe's own lease cannot run out.
     * If the late result counted, these two would close the circuit. */
    cb_record(c, silent, CB_SUCCESS);
    cb_record(c, second, CB_SUCCESS);
    cr_assert(tsup_wait_until(tsup_stat(&d, "events_stale") > stale, TSUP_LIVENESS_MS),
              "the reclaimed probe's late result was not counted as stale");
    cr_assert(tsup_wait_until(tsup_info(c).total_successes > successes, TSUP_LIVENESS_MS),
              "the current probe's success was not counted");
    cr_assert_eq(tsup_info(c).state, CB_HALF_OPEN, "a reclaimed probe's success counted towards closing");

    cb_record(c, tsup_probe(c), CB_SUCCESS);
    cr_assert(tsup_wait_state(c, CB_CLOSED), "two current probe successes did not close it");
}

Test(policy, results_of_a_ticket_from_an_older_epoch_are_ignored)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 1, 1, 100);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cb_ticket old = cb_allow(c);
    cr_assert_eq(tsup_ticket_kind(old), CB_TICKET_ALLOWED);
    cycle(c); /* CLOSED again, three epochs later */
    uint32_t epoch = tsup_info(c).epoch;
    cr_assert_eq(epoch, tsup_ticket_epoch(old) + 3);

    uint64_t stale = tsup_stat(&d, "events_stale");
    cb_record(c, old, CB_FAILURE); /* would trip a threshold of 1 if counted */
    cr_assert(tsup_wait_until(tsup_stat(&d, "events_stale") > stale, TSUP_LIVENESS_MS),
              "an old epoch's failure was not counted as stale");
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED, "an old epoch's failure tripped the circuit");
    cr_assert_eq(i.epoch, epoch);
    record(c, CB_FAILURE, 1);
    cr_assert(tsup_wait_state(c, CB_OPEN), "a current failure did not trip it");
}

/* ---- cb_call ---------------------------------------------------------------- */

struct call_log {
    int calls, on_open_calls, classify_calls;
    cb_info seen;
};

static int fn_returns(void *arg)
{
    int *ret = arg;
    return *ret;
}

static int counting_fn(void *arg)
{
    ((struct call_log *)arg)->calls++;
    return 0;
}

static int fallback(const cb_info *info, void *arg)
{
    struct call_log *log = arg;
    log->on_open_calls++;
    log->seen = *info;
    return 99;
}

/* -7 is an error the caller does not hold against the downstream; 42 is a
 * "successful" return that means the downstream failed. */
static cb_outcome classify(int result, void *arg)
{
    ((struct call_log *)arg)->classify_calls++;
    return result == -7 ? CB_IGNORED : result == 42 ? CB_FAILURE : CB_SUCCESS;
}

Test(policy, cb_call_returns_the_result_and_counts_it_by_sign)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    int ret = 7;
    cr_assert_eq(cb_call(c, fn_returns, &ret, NULL), 7);
    ret = -5;
    cr_assert_eq(cb_call(c, fn_returns, &ret, NULL), -5);
    cr_assert(tsup_wait_drained(c, 2));
    cb_info i = tsup_info(c);
    cr_assert_eq(i.total_successes, 1);
    cr_assert_eq(i.total_failures, 1, "a negative result is a failure by default");
}

Test(policy, cb_call_classifier_decides_what_counts)
{
    start(NULL);
    cb_config cfg = tsup_config(2, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    struct call_log log = {0};
    cb_call_opts opts = {.classify = classify, .arg = &log};
    int ret = -7;
    for (int k = 0; k < 5; k++)
        cr_assert_eq(cb_call(c, fn_returns, &ret, &opts), -7);
    cr_assert(tsup_wait_drained(c, 5));
    cb_info i = tsup_info(c);
    cr_assert_eq(i.total_ignored, 5, "classified IGNORED");
    cr_assert_eq(i.state, CB_CLOSED, "ignored errors tripped the circuit");
    ret = 42;
    cr_assert_eq(cb_call(c, fn_returns, &ret, &opts), 42);
    cr_assert_eq(cb_call(c, fn_returns, &ret, &opts), 42);
    cr_assert(tsup_wait_state(c, CB_OPEN), "two results classified FAILURE did not trip a threshold of 2");
    cr_assert_eq(log.classify_calls, 7, "the classifier saw every permitted call and only those");
}

Test(policy, cb_call_on_an_open_circuit_uses_the_fallback_or_returns_eopen)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    int ret = -1;
    cr_assert_eq(cb_call(c, fn_returns, &ret, NULL), -1);
    cr_assert(tsup_wait_state(c, CB_OPEN));

    struct call_log log = {0};
    cr_assert_eq(cb_call(c, counting_fn, &log, NULL), CB_EOPEN);
    cr_assert_eq(log.calls, 0, "fn ran on an OPEN circuit");

    cb_call_opts opts = {.on_open = fallback, .arg = &log};
    cr_assert_eq(cb_call(c, counting_fn, &log, &opts), 99, "cb_call did not return the fallback's value");
    cr_assert_eq(log.calls, 0);
    cr_assert_eq(log.on_open_calls, 1);
    cr_assert_str_eq(log.seen.name, "payments");
    cr_assert_eq(log.seen.state, CB_OPEN);
    cr_assert_gt(log.seen.opened_at, 0);
    cr_assert_eq(log.seen.failure_count, 1);
    cr_assert_neq(strlen(cb_strerror(CB_EOPEN)), 0, "CB_EOPEN has no name");
}

/* ---- cb_info_get and history -------------------------------------------------- */

Test(policy, info_reports_name_config_state_and_opening_time)
{
    start(NULL);
    cb_config cfg = tsup_config(3, 2, 2, 60000);
    cfg.probe_lease_ms = 1234;
    cb_circuit *c = tsup_circuit(cl, "svc.payments:charge/eu", &cfg);
    cb_info i = tsup_info(c);
    cr_assert_str_eq(i.name, "svc.payments:charge/eu");
    cr_assert_eq(i.state, CB_CLOSED);
    cr_assert(!i.forced && !i.disabled);
    cr_assert_eq(i.opened_at, 0);
    cr_assert_eq(i.failure_count, 0);
    cr_assert_eq(memcmp(&i.config, &cfg, sizeof cfg), 0, "the policy in force differs from the one registered");
    uint32_t epoch0 = i.epoch;

    /* CLOCK_REALTIME, as cbd reads it: time() is the coarse clock, which
     * can still show the previous second when cbd's precise one has moved. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t before = ts.tv_sec;
    record(c, CB_FAILURE, 3);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t after = ts.tv_sec;
    i = tsup_info(c);
    cr_assert(i.opened_at >= before && i.opened_at <= after, "opened_at %lld is not epoch seconds in [%lld, %lld]",
              (long long)i.opened_at, (long long)before, (long long)after);
    cr_assert_eq(i.epoch, epoch0 + 1);
    cr_assert_eq(i.failure_count, 3);
    cr_assert_eq(i.total_failures, 3);
}

Test(policy, an_existing_circuit_keeps_its_configuration)
{
    start(NULL);
    cb_config first = tsup_config(3, 2, 2, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &first);
    cr_assert_eq(tsup_circuit(cl, "payments", NULL), c, "a second get returns the cached handle");
    cb_client *other = tsup_client(&d);
    cb_config second = tsup_config(9, 9, 9, 9000);
    cb_circuit *c2 = tsup_circuit(other, "payments", &second);
    cr_assert_eq(tsup_info(c2).config.failure_threshold, 3);
    cr_assert_eq(tsup_info(c2).config.recovery_timeout_ms, 60000);
    cb_client_close(other);
}

Test(policy, history_shows_each_transition_in_order_with_its_source)
{
    start(NULL);
    cb_config cfg = tsup_config(1, 1, 1, 100);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cb_transition tr;
    cr_assert_eq(cb_next_transition(cl, &tr), 0, "a fresh client sees only what happens after it opened");
    cycle(c);
    cb_transition a = tsup_next_transition(cl, "payments");
    cb_transition b = tsup_next_transition(cl, "payments");
    cb_transition z = tsup_next_transition(cl, "payments");
    cr_assert(a.from == CB_CLOSED && a.to == CB_OPEN && a.source == CB_SOURCE_LOCAL);
    cr_assert(b.from == CB_OPEN && b.to == CB_HALF_OPEN && b.source == CB_SOURCE_TIMER);
    cr_assert(z.from == CB_HALF_OPEN && z.to == CB_CLOSED && z.source == CB_SOURCE_LOCAL);
    cr_assert(b.seq == a.seq + 1 && z.seq == b.seq + 1, "sequence numbers %llu %llu %llu",
              (unsigned long long)a.seq, (unsigned long long)b.seq, (unsigned long long)z.seq);
    cr_assert(b.epoch == a.epoch + 1 && z.epoch == b.epoch + 1);
    cr_assert_eq(a.failure_count, 1);
    cr_assert_gt(a.opened_at, 0);
    cr_assert_eq(z.opened_at, 0);
    cr_assert(a.time_ns <= b.time_ns && b.time_ns <= z.time_ns);
    cr_assert_eq(cb_next_transition(cl, &tr), 0, "more transitions than happened");
}

Test(policy, a_reader_that_falls_behind_the_history_gets_eoverflow_then_resumes)
{
    static const struct tsup_daemon_opts o = {.history_capacity = 16};
    start(&o);
    cb_config cfg = tsup_config(1, 1, 1, 50);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    for (int k = 0; k < 6; k++) /* 18 transitions into a ring of 16 */
        cycle(c);
    cb_transition tr, last = {0};
    cr_assert_eq(cb_next_transition(cl, &tr), -EOVERFLOW);
    int n = 0, rc;
    while ((rc = cb_next_transition(cl, &tr)) == 1) {
        cr_assert(n == 0 || tr.seq == last.seq + 1, "gap after the overrun");
        last = tr;
        n++;
    }
    cr_assert_eq(rc, 0);
    /* the cursor resumes at an entry surely intact: the oldest, or the
     * one after it (which the writer may be lapping) */
    cr_assert(n == 15 || n == 16, "read %d entries of a ring of 16 after the overrun", n);
    cr_assert_eq(last.seq, 17, "the newest of 18 transitions");
    cr_assert_eq(last.to, CB_CLOSED, "the last entry is the last close");
}
