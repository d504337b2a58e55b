/*
 * test_tsup.c - the daemon fixture itself (tests/support/tsup_daemon.c):
 * stopping a daemon that a test paused with SIGSTOP, the way the fleet and
 * staleness tests leave one when an assertion fails half-way, whether the
 * pause has taken effect yet or not.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <sys/wait.h>

#include "tsup.h"

TestSuite(tsup, .timeout = 60);

static void stops_with_exit_0(struct tsup_daemon *d)
{
    int status = tsup_daemon_stop(d);
    cr_assert(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
    cr_assert_eq(tsup_log_count(d, "stopped (exit code 0)"), 1, "cbd stopped the way SIGTERM stops it");
}

Test(tsup, a_daemon_paused_by_the_test_is_continued_and_exits_0_on_sigterm)
{
    struct tsup_daemon d;
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0);
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    cr_assert(tsup_wait_until(tsup_proc_state(d.pid) == 'T', TSUP_LIVENESS_MS), "SIGSTOP never stopped cbd");
    stops_with_exit_0(&d);
}

Test(tsup, a_daemon_stopped_right_after_a_sigstop_still_exits_0_on_sigterm)
{
    struct tsup_daemon d;
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0);
    cr_assert_eq(kill(d.pid, SIGSTOP), 0); /* kill() returns before cbd has stopped */
    stops_with_exit_0(&d);
}
