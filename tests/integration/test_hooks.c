/*
 * test_hooks.c - transition hooks: the environment a hook gets, global and
 * per-circuit hooks in order, output in the log, and isolation - a hook
 * that never ends is killed at its timeout (with what it started), while
 * its circuit keeps transitioning and other circuits' hooks keep running -
 * and that no hook starts before the drain that fired it has published
 * every circuit it trips.
 *
 * Hooks write what they see into files in the test's directory; the test
 * waits for those files (liveness bound), never for a time.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;
static char dir[256];

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(hooks, .fini = stop, .timeout = 60);

/* cbd with a config file made from fmt, where every %1$s is the test's directory. */
static void start(const char *fmt)
{
    char conf[512], text[4096];
    snprintf(dir, sizeof dir, "%s", tsup_tmpdir());
    snprintf(conf, sizeof conf, "%s/cbd.conf", dir);
    snprintf(text, sizeof text, fmt, dir);
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    struct tsup_daemon_opts o = {.extra = {"-c", conf, NULL}};
    cr_assert_eq(tsup_daemon_start(&d, &o), 0, "cbd did not start");
    cl = tsup_client(&d);
}

/* The contents of dir/name once it exists and is complete (ends in "\n"), or NULL. */
static char *slurp(const char *name)
{
    char path[512];
    static char buf[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return n > 0 && buf[n - 1] == '\n' ? buf : NULL;
}

static char *wait_file(const char *name)
{
    char *s = NULL;
    cr_assert(tsup_wait_until((s = slurp(name)) != NULL, TSUP_LIVENESS_MS), "no hook wrote %s/%s", dir, name);
    return s;
}

Test(hooks, a_hook_gets_the_transition_in_its_environment)
{
    start("[hooks]\ncommand = env | grep -E '^CB_' | sort > %1$s/env.$CB_CIRCUIT.$CB_EPOCH\n");
    cb_config cfg = tsup_config(3, 1, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 3), 3);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    char *env = wait_file("env.payments.1");
    const char *want[] = {"CB_CIRCUIT=payments\n", "CB_FROM=CLOSED\n", "CB_TO=OPEN\n", "CB_SOURCE=local\n", "CB_ORIGIN=local\n",
                          "CB_EPOCH=1\n", "CB_FAILURE_COUNT=3\n", "CB_TIME=20", "CB_TIME_NS=", "CB_INSTANCE="};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_not_null(strstr(env, want[i]), "the hook's environment lacks %s:\n%s", want[i], env);
    char opened[64];
    snprintf(opened, sizeof opened, "CB_OPENED_AT=%lld\n", (long long)tsup_info(c).opened_at);
    cr_assert_not_null(strstr(env, opened), "CB_OPENED_AT is not the circuit's opened_at:\n%s", env);
    tsup_ctl_named_op_ok(&d, "reset", "payments");
    env = wait_file("env.payments.2");
    cr_assert_not_null(strstr(env, "CB_SOURCE=operator\n"), "%s", env);
    cr_assert_not_null(strstr(env, "CB_FROM=OPEN\n"), "%s", env);
    cr_assert_not_null(strstr(env, "CB_OPENED_AT=0\n"), "%s", env);
}

Test(hooks, global_then_circuit_hooks_run_in_transition_order)
{
    start("[hooks]\ncommand = echo global $CB_EPOCH >> %1$s/order\n"
          "[prefix \"pay\"]\nhook = echo section $CB_EPOCH >> %1$s/order\n"
          "hook = echo second $CB_EPOCH >> %1$s/order\n");
    tsup_circuit(cl, "payments", NULL);
    tsup_ctl_named_op_ok(&d, "force_open", "payments");
    tsup_ctl_named_op_ok(&d, "reset", "payments");
    const char *want = "global 1\nsection 1\nsecond 1\nglobal 2\nsection 2\nsecond 2\n";
    cr_assert(tsup_wait_until(slurp("order") != NULL && strcmp(slurp("order"), want) == 0, TSUP_LIVENESS_MS),
              "hooks ran as\n%s\nnot\n%s", slurp("order") ? slurp("order") : "(nothing)", want);
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_succeeded") == 6, TSUP_LIVENESS_MS));
    tsup_circuit(cl, "search", NULL);
    tsup_ctl_named_op_ok(&d, "force_open", "search"); /* no section: the global hook only */
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_started") == 7, TSUP_LIVENESS_MS));
}

Test(hooks, hook_output_goes_to_the_log_and_failures_are_counted)
{
    start("[hooks]\ncommand = echo said $CB_CIRCUIT; echo complained >&2; exit 3\n");
    tsup_circuit(cl, "mail", NULL);
    tsup_ctl_named_op_ok(&d, "force_open", "mail");
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_failed") == 1, TSUP_LIVENESS_MS), "a failing hook not counted");
    cr_assert_eq(tsup_log_count(&d, "circuit=mail stdout: said mail"), 1);
    cr_assert_eq(tsup_log_count(&d, "circuit=mail stderr: complained"), 1);
    cr_assert_eq(tsup_log_count(&d, "exit status 3"), 1);
}

Test(hooks, a_hanging_hook_is_killed_at_its_timeout_and_delays_nobody)
{
    start("[hooks]\ntimeout_ms = 3000\n"
          "[circuit \"slow\"]\nhook = echo $$ > %1$s/slow.pid && exec sleep 1000\n"
          "[circuit \"fast\"]\nhook = echo $CB_TO >> %1$s/fast\n");
    cb_circuit *slow = tsup_circuit(cl, "slow", NULL);
    tsup_circuit(cl, "fast", NULL);
    tsup_ctl_named_op_ok(&d, "force_open", "slow");
    pid_t hung = (pid_t)atoi(wait_file("slow.pid"));
    cr_assert_gt(hung, 0);
    /* While it hangs: its own circuit transitions, and another circuit's hooks run. */
    tsup_ctl_named_op_ok(&d, "reset", "slow");
    cr_assert_eq(tsup_info(slow).state, CB_CLOSED);
    cr_assert_eq(tsup_ticket_kind(cb_allow(slow)), CB_TICKET_ALLOWED, "a hanging hook held up a check");
    tsup_ctl_named_op_ok(&d, "force_open", "fast");
    cr_assert_str_eq(wait_file("fast"), "OPEN\n");
    cr_assert_eq(kill(hung, 0), 0, "the slow hook ended before its timeout: the test proves nothing");
    cr_assert_eq(tsup_stat(&d, "hooks_timed_out"), 0);
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_timed_out") == 1, TSUP_LIVENESS_MS), "never killed");
    cr_assert(tsup_wait_until(kill(hung, 0) < 0 && errno == ESRCH, TSUP_LIVENESS_MS), "the sleep outlived its hook");
    cr_assert_eq(tsup_log_count(&d, "killed after its 3000 ms timeout"), 1);
    /* The reset's hook waited behind the hung one, and runs (and hangs) next. */
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_started") == 3, TSUP_LIVENESS_MS));
}

/* Forty circuits tripped by one drain (the daemon is stopped while a worker
 * records their tripping failures in its lane, so that one doorbell finds
 * them all), a hook each: the first circuit's hook looks at the last
 * circuit and must find it OPEN - starting a hook forks the daemon, and
 * started during the drain the first hooks held back the publication of
 * the circuits after them by a millisecond each. */
Test(hooks, every_circuit_one_drain_trips_is_published_before_the_first_hook_starts)
{
    enum { N = 40 };
    char fmt[1024];
    snprintf(fmt, sizeof fmt,
             "[hooks]\nmax_running = 64\n"
             "command = [ \"$CB_CIRCUIT\" != t.0 ] || { '%s' --instance \"$CB_INSTANCE\" show t.%d > %%1$s/seen.tmp"
             " && mv %%1$s/seen.tmp %%1$s/seen; }\n",
             tsup_cbctl_path(), N - 1);
    start(fmt);
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cb_circuit *c[N];
    cb_ticket t[N];
    for (int i = 0; i < N; i++) {
        char name[16];
        snprintf(name, sizeof name, "t.%d", i);
        c[i] = tsup_circuit(cl, name, &cfg);
        t[i] = cb_allow(c[i]);
    }
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    cr_assert(tsup_wait_until(tsup_proc_state(d.pid) == 'T', TSUP_LIVENESS_MS), "cbd did not stop");
    for (int i = 0; i < N; i++)
        cb_record(c[i], t[i], CB_FAILURE);
    cr_assert_eq(kill(d.pid, SIGCONT), 0);
    cr_assert(tsup_wait_state(c[N - 1], CB_OPEN));
    char *seen = wait_file("seen");
    cr_assert_not_null(strstr(seen, "state:           OPEN"), "the first hook ran before t.%d was published:\n%s",
                       N - 1, seen);
    cr_assert(tsup_wait_until(tsup_stat(&d, "hooks_started") == N, TSUP_LIVENESS_MS));
}
