/*
 * test_hooks.c - transition hooks (daemon/hooks.h) driven directly on a
 * loop of the test's own, without a daemon: hooks start on the loop's next
 * turn, never inside cbd_hooks_fire; the environment a hook gets,
 * one circuit's hooks one at a time in transition order, different
 * circuits concurrently, the oldest waiting transition dropped from a full
 * queue, failures and timeouts counted, and close() ending it all.
 *
 * Hooks are real /bin/sh commands writing into a directory of the test's;
 * the loop runs until the stats say every started hook has ended.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hooks.h"

static uv_loop_t loop;
static struct cbd_hooks *hooks;
static char dir[64];

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/cbd-test-hooks-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(uv_loop_init(&loop), 0);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

TestSuite(hooks, .init = setup, .fini = teardown);

static struct cbd_hook_event event(const char *circuit, uint32_t epoch)
{
    struct cbd_hook_event ev = {.from = "CLOSED", .to = "OPEN", .source = "local", .origin = "local",
                                .opened_at = 1764240000, .failure_count = 5, .epoch = epoch,
                                .time_ns = 1764240000123456789};
    snprintf(ev.circuit, sizeof ev.circuit, "%s", circuit);
    return ev;
}

static uint64_t ended(void)
{
    struct cbd_hooks_stats st;
    cbd_hooks_stats_get(hooks, &st);
    return st.succeeded + st.failed + st.timed_out + st.spawn_errors;
}

/* Run the loop until n hooks have ended. */
static void run_until_ended(uint64_t n)
{
    while (ended() < n)
        uv_run(&loop, UV_RUN_ONCE);
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static void close_hooks(void)
{
    bool closed = false;
    cbd_hooks_close(hooks, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "handles left open after close");
}

/* The file dir/name, whole, into buf. */
static const char *read_file(const char *name, char *buf, size_t size)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s was not written", path);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static struct cbd_hooks_stats stats(void)
{
    struct cbd_hooks_stats st;
    cbd_hooks_stats_get(hooks, &st);
    return st;
}

Test(hooks, a_hook_gets_the_transition_and_nothing_else_of_the_daemon_in_its_environment)
{
    char cmd[256], out[2048];
    setenv("CBD_SECRET_OF_THE_DAEMON", "not for hooks", 1);
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 10000, 16), 0);
    snprintf(cmd, sizeof cmd, "env | grep -E '^(CB_|CBD_|LANG=)' | sort > '%s/env'", dir);
    struct cbd_hook_event ev = event("payments", 7);
    ev.origin = "fleet";
    cbd_hooks_fire(hooks, cmd, &ev);
    run_until_ended(1);
    cr_assert_str_eq(read_file("env", out, sizeof out), "CB_CIRCUIT=payments\n"
                                                        "CB_EPOCH=7\n"
                                                        "CB_FAILURE_COUNT=5\n"
                                                        "CB_FROM=CLOSED\n"
                                                        "CB_INSTANCE=prod\n"
                                                        "CB_OPENED_AT=1764240000\n"
                                                        "CB_ORIGIN=fleet\n"
                                                        "CB_SOURCE=local\n"
                                                        "CB_TIME=2025-11-27T10:40:00.123Z\n"
                                                        "CB_TIME_NS=1764240000123456789\n"
                                                        "CB_TO=OPEN\n"
                                                        "LANG=C.UTF-8\n");
    cr_assert_eq(stats().succeeded, 1);
    close_hooks();
}

/* A hook starts (a fork of the daemon) only after the callback that fired
 * it has returned: a drain publishes every circuit it trips first. */
Test(hooks, a_fired_hook_starts_on_the_loop_s_next_turn_not_inside_fire)
{
    char cmd[256], out[64];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 10000, 16), 0);
    struct cbd_hook_event a = event("payments", 1), b = event("search", 1);
    snprintf(cmd, sizeof cmd, "echo $CB_CIRCUIT >> '%s/ran'", dir);
    cbd_hooks_fire(hooks, cmd, &a);
    cbd_hooks_fire(hooks, cmd, &b);
    cr_assert_eq(stats().started, 0, "a hook started inside cbd_hooks_fire");
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(stats().started, 2, "the queued hooks did not start on the next turn");
    run_until_ended(2);
    cr_assert_eq(stats().succeeded, 2);
    cr_assert_eq(strlen(read_file("ran", out, sizeof out)), strlen("payments\nsearch\n"));
    close_hooks();
}

Test(hooks, one_circuit_s_hooks_run_one_at_a_time_in_transition_order)
{
    char cmd[256], out[256];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 8, 10000, 64), 0);
    /* mkdir is atomic: a second hook running at once finds the lock taken */
    snprintf(cmd, sizeof cmd, "cd '%s' && { mkdir lock || echo overlap; echo $CB_EPOCH; rmdir lock; } >> seen", dir);
    for (uint32_t epoch = 1; epoch <= 10; epoch++) {
        struct cbd_hook_event ev = event("payments", epoch);
        cbd_hooks_fire(hooks, cmd, &ev);
    }
    run_until_ended(10);
    cr_assert_str_eq(read_file("seen", out, sizeof out), "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n");
    cr_assert_eq(stats().dropped, 0);
    close_hooks();
}

Test(hooks, hooks_of_different_circuits_run_at_once)
{
    char cmd[512];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 2, 10000, 16), 0);
    /* each circuit's hook waits for the other's: both succeed only if they run together */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && touch $CB_CIRCUIT && other=a && [ $CB_CIRCUIT = a ] && other=b; "
             "while [ ! -e $other ]; do sleep 0.01; done",
             dir);
    struct cbd_hook_event a = event("a", 1), b = event("b", 1);
    cbd_hooks_fire(hooks, cmd, &a);
    cbd_hooks_fire(hooks, cmd, &b);
    run_until_ended(2);
    cr_assert_eq(stats().succeeded, 2, "timed out waiting for each other: %llu",
                 (unsigned long long)stats().timed_out);
    close_hooks();
}

Test(hooks, a_full_queue_drops_its_oldest_waiting_transition)
{
    char cmd[256], out[256];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 10000, 2), 0);
    snprintf(cmd, sizeof cmd, "echo $CB_EPOCH >> '%s/seen'", dir);
    /* 1 starts on the next turn; 2 and 3 wait; 4 and 5 push out 2 and 3 */
    for (uint32_t epoch = 1; epoch <= 5; epoch++) {
        struct cbd_hook_event ev = event("payments", epoch);
        cbd_hooks_fire(hooks, cmd, &ev);
        if (epoch == 1)
            uv_run(&loop, UV_RUN_NOWAIT);
    }
    run_until_ended(3);
    cr_assert_str_eq(read_file("seen", out, sizeof out), "1\n4\n5\n");
    struct cbd_hooks_stats st = stats();
    cr_assert_eq(st.dropped, 2);
    cr_assert_eq(st.started, 3);
    close_hooks();
}

Test(hooks, a_hook_that_exits_non_zero_is_counted_as_failed)
{
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 10000, 16), 0);
    struct cbd_hook_event a = event("a", 1), b = event("b", 1);
    cbd_hooks_fire(hooks, "echo failing on purpose >&2; exit 3", &a);
    cbd_hooks_fire(hooks, "true", &b);
    run_until_ended(2);
    struct cbd_hooks_stats st = stats();
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.succeeded, 1);
    cr_assert_eq(st.timed_out, 0);
    close_hooks();
}

Test(hooks, a_hook_past_its_timeout_is_killed_and_the_next_one_runs)
{
    char cmd[256], out[64];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 100, 16), 0);
    struct cbd_hook_event first = event("payments", 1), second = event("payments", 2);
    cbd_hooks_fire(hooks, "sleep 600", &first);
    snprintf(cmd, sizeof cmd, "echo $CB_EPOCH > '%s/next'", dir);
    cbd_hooks_fire(hooks, cmd, &second);
    run_until_ended(2);
    struct cbd_hooks_stats st = stats();
    cr_assert_eq(st.timed_out, 1);
    cr_assert_eq(st.succeeded, 1);
    cr_assert_str_eq(read_file("next", out, sizeof out), "2\n");
    close_hooks();
}

Test(hooks, an_empty_command_runs_nothing)
{
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 4, 10000, 16), 0);
    struct cbd_hook_event ev = event("payments", 1);
    cbd_hooks_fire(hooks, "", &ev);
    cbd_hooks_fire(hooks, NULL, &ev);
    struct cbd_hooks_stats st = stats();
    cr_assert_eq(st.started + st.dropped, 0);
    close_hooks();
}

Test(hooks, close_kills_what_runs_drops_what_waits_and_then_says_done)
{
    char cmd[256];
    cr_assert_eq(cbd_hooks_create(&hooks, &loop, "prod", 1, 600000, 16), 0);
    struct cbd_hook_event first = event("payments", 1), second = event("payments", 2);
    cbd_hooks_fire(hooks, "sleep 600", &first);
    uv_run(&loop, UV_RUN_NOWAIT);
    snprintf(cmd, sizeof cmd, "touch '%s/ran'", dir);
    cbd_hooks_fire(hooks, cmd, &second);
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(stats().started, 1);
    close_hooks(); /* returns only once done() was called and every handle closed */
    char path[128];
    snprintf(path, sizeof path, "%s/ran", dir);
    cr_assert_neq(access(path, F_OK), 0, "the waiting hook ran after close");
}
