/*
 * test_rates.c - the rules beyond Powertools against the real cbd: a
 * failure rate that the calls of sixteen worker processes reach together
 * while none of them alone holds enough calls to be judged, a slow-call
 * rate measured by cb_call, shadow mode that never rejects a call, and a
 * live `set` that keeps the circuit's window.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void start(void) { tsup_fixture_start(&d, &cl, NULL); }

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(rates, .fini = stop, .timeout = 120);

/* A count window of `size` calls judged from `min_calls` on at failure_pct. */
static cb_config count_window(uint32_t size, uint32_t min_calls, uint32_t failure_pct)
{
    cb_config cfg = tsup_config(5, 1, 1, 60000);
    cfg.sliding_window_type = 1;
    cfg.sliding_window_size = size;
    cfg.minimum_number_of_calls = min_calls;
    cfg.failure_rate_threshold = failure_pct;
    return cfg;
}

/* One worker process: 10 calls, failures 2nd, 5th and 8th (30%), never two
 * in a row; exits 0 if every call was allowed. */
static pid_t worker(cb_circuit *c)
{
    pid_t pid = tsup_fork();
    cr_assert_geq(pid, 0, "fork failed");
    if (pid > 0)
        return pid;
    int refused = 0;
    for (int i = 0; i < 10; i++) {
        cb_ticket t = cb_allow(c);
        refused += !cb_permitted(t);
        cb_record(c, t, i % 3 == 1 ? CB_FAILURE : CB_SUCCESS);
    }
    _exit(refused);
}

static void reap(pid_t pid)
{
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a worker's call was refused");
}

Test(rates, sixteen_workers_together_reach_a_failure_rate_that_none_holds_enough_calls_to_be_judged_on)
{
    start();
    cb_config cfg = count_window(160, 160, 30); /* each worker makes 10 calls: 16 are needed */
    cb_circuit *c = tsup_circuit(cl, "inventory", &cfg);
    for (int w = 0; w < 15; w++)
        reap(worker(c));
    cr_assert(tsup_wait_drained(c, 150), "cbd did not drain the 15 workers' calls");
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED, "150 calls, under the minimum of 160");
    cr_assert_eq(i.total_failures, 45);
    cr_assert_lt(i.failure_count, cfg.failure_threshold, "failures never came five in a row");
    reap(worker(c));
    cr_assert(tsup_wait_state(c, CB_OPEN), "160 calls of 16 workers, 30%% failed: the circuit did not trip");
    i = tsup_info(c);
    cr_assert_eq(i.failure_count, 48, "the failures in the window when it tripped");
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED);
}

static int slow_fn(void *arg)
{
    struct timespec ts = {0, *(long *)arg};
    nanosleep(&ts, NULL);
    return 0;
}

Test(rates, cb_call_times_the_calls_of_a_circuit_with_a_slow_call_rule_and_slow_successes_trip_it)
{
    start();
    cb_config cfg = count_window(4, 4, 100);
    cfg.slow_call_duration_threshold_ms = 20;
    cfg.slow_call_rate_threshold = 50;
    cb_circuit *c = tsup_circuit(cl, "search", &cfg);
    long fast = 0, slow = 60 * 1000 * 1000;
    cr_assert_eq(cb_call(c, slow_fn, &fast, NULL), 0);
    cr_assert_eq(cb_call(c, slow_fn, &fast, NULL), 0);
    cr_assert_eq(cb_call(c, slow_fn, &slow, NULL), 0);
    cr_assert(tsup_wait_drained(c, 3));
    cr_assert_eq(tsup_info(c).state, CB_CLOSED, "3 calls, under the minimum");
    cr_assert_eq(cb_call(c, slow_fn, &slow, NULL), 0);
    cr_assert(tsup_wait_state(c, CB_OPEN), "2 of 4 calls took 60 ms, over 20 ms: the circuit did not trip");
    cr_assert_eq(tsup_info(c).total_failures, 0, "every call succeeded");
}

Test(rates, a_shadow_circuit_trips_and_tells_watchers_but_never_rejects_a_call)
{
    start();
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cfg.shadow = 1;
    cb_circuit *c = tsup_circuit(cl, "ledger", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN), "the policy did not run");
    cb_transition t;
    cr_assert(tsup_wait_until(cb_next_transition(cl, &t) == 1, TSUP_LIVENESS_MS), "no transition in the history");
    cr_assert(t.from == CB_CLOSED && t.to == CB_OPEN);
    for (int k = 0; k < 100000; k++)
        cr_assert(cb_permitted(cb_allow(c)), "a shadow circuit rejected call %d", k);
    tsup_ctl_named_op_ok(&d, "force_open", "ledger");
    cr_assert(tsup_wait_until(!cb_permitted(cb_allow(c)), TSUP_LIVENESS_MS), "forced open rejects, shadow or not");
}

/* {"op": "set", "name": name, "config": {field: value}}: 0 or the error. */
static int64_t set_field(const char *name, const char *field, uint64_t value)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct tsup_reply r;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    cb__mp_kv_str(&pk, "op", "set");
    cb__mp_kv_str(&pk, "name", name);
    cb__mp_pack_str(&pk, "config");
    msgpack_pack_map(&pk, 1);
    cb__mp_kv_u64(&pk, field, value);
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1, "no reply to set");
    close(fd);
    msgpack_sbuffer_destroy(&sb);
    int64_t err = tsup_reply_ok(&r) ? 0 : tsup_reply_error(&r);
    tsup_reply_free(&r);
    return err;
}

Test(rates, a_live_set_judges_the_calls_already_in_the_window_and_survives_a_reload)
{
    start();
    cb_config cfg = count_window(10, 10, 50);
    cb_circuit *c = tsup_circuit(cl, "billing", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 4), 4);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 5), 5);
    cr_assert(tsup_wait_drained(c, 9));
    cr_assert_eq(set_field("billing", "failure_rate_threshold", 40), 0);
    cr_assert(tsup_wait_until(tsup_info(c).config.failure_rate_threshold == 40, TSUP_LIVENESS_MS),
              "the record does not show the new threshold");
    cr_assert_eq(set_field("billing", "failure_rate_threshold", 0), -EINVAL, "out of bounds is refused");
    cr_assert_eq(set_field("billing", "no_such_field", 1), -EINVAL);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_op(&d, "reload", &r), 1);
    cr_assert(tsup_reply_ok(&r));
    tsup_reply_free(&r);
    cr_assert_eq(tsup_info(c).config.failure_rate_threshold, 40, "a reload keeps the operator's value");
    cr_assert_eq(tsup_info(c).state, CB_CLOSED);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 1), 1); /* 10 calls, 4 failed: 40% */
    cr_assert(tsup_wait_state(c, CB_OPEN), "the nine calls before the set were lost");
}
