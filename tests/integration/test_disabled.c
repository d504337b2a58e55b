/*
 * test_disabled.c - the development bypass: $CB_DISABLED, and Powertools'
 * $POWERTOOLS_CIRCUIT_BREAKER_DISABLED for its users. A true boolean makes
 * every circuit permit every call (even an OPEN one) and cb_status() say
 * DISABLED; a value that is not a boolean is an error, not a guess.
 *
 * Each test runs in its own process (criterion), so setenv() here touches
 * no other test. The daemon is started and the circuit tripped through a
 * normal client before the variable is set.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *normal, *bypass;

static void clear_env(void)
{
    unsetenv("CB_DISABLED");
    unsetenv("POWERTOOLS_CIRCUIT_BREAKER_DISABLED");
}

static void stop(void)
{
    cb_client_close(bypass);
    cb_client_close(normal);
    bypass = normal = NULL;
    if (d.pid != 0)
        cr_expect_eq(tsup_daemon_stop(&d), 0, "cbd did not exit 0 on SIGTERM");
}

TestSuite(disabled, .init = clear_env, .fini = stop, .timeout = 60);

/* A daemon with "payments" OPEN (for ten minutes). */
static void start_with_open_circuit(void)
{
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0, "cbd did not start");
    normal = tsup_client(&d);
    cb_config cfg = tsup_config(1, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(normal, "payments", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
}

static int ran(void *arg)
{
    ++*(int *)arg;
    return 0;
}

/* With the bypass on: the OPEN circuit permits, counts nothing. */
static void check_bypassed(void)
{
    cb_circuit *marker = tsup_circuit(normal, "marker", NULL);
    uint64_t drained = tsup_stat(&d, "events_drained");
    bypass = tsup_client(&d);
    cr_assert(cb_status(bypass) & CB_STATUS_DISABLED, "cb_status 0x%x lacks DISABLED", cb_status(bypass));
    cb_circuit *c = tsup_circuit(bypass, "payments", NULL);
    for (int k = 0; k < 100; k++) {
        cb_ticket t = cb_allow(c);
        cr_assert(cb_permitted(t), "a bypassed circuit rejected a call");
        cr_assert_eq(tsup_ticket_kind(t), CB_TICKET_BYPASS);
        cb_record(c, t, CB_FAILURE);
    }
    int calls = 0;
    cr_assert_eq(cb_call(c, ran, &calls, NULL), 0);
    cr_assert_eq(calls, 1, "cb_call did not run fn on a bypassed circuit");

    cb_circuit *real = tsup_circuit(normal, "payments", NULL);
    cr_assert_eq(tsup_ticket_kind(cb_allow(real)), CB_TICKET_REJECTED, "the bypass leaked into a normal client");
    /* one event recorded after the bypassed ones: once cbd took it, it
     * would have taken any the bypass had written */
    cr_assert_eq(tsup_record_n(marker, CB_SUCCESS, 1), 1);
    cr_assert(tsup_wait_drained(marker, 1));
    cr_assert_eq(tsup_stat(&d, "events_drained"), drained + 1, "bypassed calls reached cbd");
}

Test(disabled, cb_disabled_1_bypasses_even_an_open_circuit)
{
    start_with_open_circuit();
    cr_assert_eq(setenv("CB_DISABLED", "1", 1), 0);
    check_bypassed();
}

Test(disabled, powertools_disabled_true_bypasses_too)
{
    start_with_open_circuit();
    cr_assert_eq(setenv("POWERTOOLS_CIRCUIT_BREAKER_DISABLED", "true", 1), 0);
    check_bypassed();
}

Test(disabled, booleans_are_read_in_any_case)
{
    start_with_open_circuit();
    cr_assert_eq(setenv("CB_DISABLED", "YES", 1), 0);
    check_bypassed();
}

Test(disabled, a_bypass_client_needs_no_daemon)
{
    cr_assert_eq(setenv("CB_DISABLED", "on", 1), 0);
    int rc = cb_client_open(&bypass, tsup_unique("nodaemon"));
    cr_assert_eq(rc, 0, "a bypass client failed without a daemon: %s", cb_strerror(rc));
    cb_circuit *c = tsup_circuit(bypass, "payments", NULL);
    cr_assert(cb_permitted(cb_allow(c)));
}

Test(disabled, cb_disabled_maybe_is_refused_with_einval)
{
    start_with_open_circuit();
    cr_assert_eq(setenv("CB_DISABLED", "maybe", 1), 0);
    cb_client *cl = NULL;
    cr_assert_eq(cb_client_open(&cl, d.instance), -EINVAL);
    clear_env();
    cr_assert_eq(setenv("POWERTOOLS_CIRCUIT_BREAKER_DISABLED", "2", 1), 0);
    cr_assert_eq(cb_client_open(&cl, d.instance), -EINVAL);
}

Test(disabled, cb_disabled_0_leaves_the_breaker_on)
{
    start_with_open_circuit();
    cr_assert_eq(setenv("CB_DISABLED", "0", 1), 0);
    bypass = tsup_client(&d);
    cr_assert(!(cb_status(bypass) & CB_STATUS_DISABLED));
    cb_circuit *c = tsup_circuit(bypass, "payments", NULL);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "CB_DISABLED=0 bypassed the breaker");
}
