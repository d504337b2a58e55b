/*
 * test_log.c - cbd's log lines (common/log.h): level names both ways, the
 * threshold checked before anything is formatted, the line's form (UTC
 * time with milliseconds, cbd[PID], level tag, message, newline) in one
 * write with a cut "..." for an over-long message, and the rate limit for
 * warnings a peer can trigger in a loop.
 *
 * Each test catches stderr in a pipe it owns (criterion runs each test in
 * its own process). The rate limit reads CLOCK_MONOTONIC: the tests move
 * its last_ns instead of waiting, and a burst test that the clock outran
 * (a second between two calls) is skipped rather than failed.
 */
#define _GNU_SOURCE /* strptime */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int saved_stderr = -1, pipe_rd = -1;

/* From here on fd 2 writes into a pipe that captured() reads. */
static void capture(void)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    saved_stderr = dup(STDERR_FILENO);
    dup2(p[1], STDERR_FILENO);
    close(p[1]);
    pipe_rd = p[0];
}

/* What was written to fd 2 since capture(), NUL terminated; its length. */
static size_t captured(char *buf, size_t size)
{
    size_t n = 0;
    ssize_t r;
    while (n + 1 < size && (r = read(pipe_rd, buf + n, size - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    return n;
}

static void restore(void)
{
    if (saved_stderr >= 0) {
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
    }
    if (pipe_rd >= 0)
        close(pipe_rd);
}

TestSuite(log, .fini = restore);

Test(log, the_four_level_names_parse_in_any_case)
{
    cr_assert_eq(cbd_log_level_parse("debug"), CBD_LOG_DEBUG);
    cr_assert_eq(cbd_log_level_parse("info"), CBD_LOG_INFO);
    cr_assert_eq(cbd_log_level_parse("WARN"), CBD_LOG_WARN);
    cr_assert_eq(cbd_log_level_parse("Error"), CBD_LOG_ERROR);
}

Test(log, any_other_level_name_is_refused)
{
    static const char *const bad[] = {"", "warning", "err", "info ", "trace", "3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(cbd_log_level_parse(bad[i]), -EINVAL, "'%s'", bad[i]);
}

Test(log, each_level_has_the_name_it_is_parsed_from)
{
    for (int level = CBD_LOG_DEBUG; level <= CBD_LOG_ERROR; level++)
        cr_assert_eq(cbd_log_level_parse(cbd_log_level_name(level)), level);
    cr_assert_str_eq(cbd_log_level_name(-1), "?");
    cr_assert_str_eq(cbd_log_level_name(4), "?");
}

Test(log, the_default_threshold_is_info)
{
    cr_assert_eq(cbd_log_threshold, CBD_LOG_INFO);
}

static int formatted;

static int count_formatting(void)
{
    return ++formatted;
}

Test(log, a_line_below_the_threshold_is_neither_formatted_nor_written)
{
    char out[256];
    capture();
    cbd_log_threshold = CBD_LOG_WARN;
    cbd_log(CBD_LOG_INFO, "argument %d", count_formatting());
    cbd_log(CBD_LOG_DEBUG, "argument %d", count_formatting());
    cr_assert_eq(formatted, 0, "the arguments of a dropped line were evaluated");
    cr_assert_eq(captured(out, sizeof out), 0, "a dropped line was written: '%s'", out);
    cbd_log(CBD_LOG_WARN, "argument %d", count_formatting());
    cbd_log(CBD_LOG_ERROR, "argument %d", count_formatting());
    cr_assert_eq(formatted, 2);
    captured(out, sizeof out);
    cr_assert(strstr(out, " WARN argument 1\n") != NULL, "%s", out);
    cr_assert(strstr(out, " ERROR argument 2\n") != NULL, "%s", out);
}

Test(log, a_line_is_utc_time_with_milliseconds_pid_level_and_message)
{
    char out[512], re_text[160];
    capture();
    time_t before = time(NULL);
    cbd_log(CBD_LOG_INFO, "circuit %s opened after %d failures", "payments", 5);
    time_t after = time(NULL);
    captured(out, sizeof out);
    snprintf(re_text, sizeof re_text,
             "^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\\.[0-9]{3}Z cbd\\[%d\\] INFO "
             "circuit payments opened after 5 failures\n$",
             (int)getpid());
    regex_t re;
    regmatch_t m[2];
    cr_assert_eq(regcomp(&re, re_text, REG_EXTENDED), 0);
    cr_assert_eq(regexec(&re, out, 2, m, 0), 0, "the line is '%s'", out);
    regfree(&re);
    struct tm tm = {0};
    cr_assert_not_null(strptime(out, "%Y-%m-%dT%H:%M:%S", &tm));
    time_t stamped = timegm(&tm);
    cr_assert(stamped >= before && stamped <= after, "the stamp %lld is not UTC now (%lld..%lld)",
              (long long)stamped, (long long)before, (long long)after);
}

Test(log, each_level_is_tagged_in_capitals)
{
    static const char *const tags[] = {" DEBUG x\n", " INFO x\n", " WARN x\n", " ERROR x\n"};
    cbd_log_threshold = CBD_LOG_DEBUG;
    for (int level = CBD_LOG_DEBUG; level <= CBD_LOG_ERROR; level++) {
        char out[256];
        capture();
        cbd_log(level, "x");
        captured(out, sizeof out);
        restore();
        saved_stderr = pipe_rd = -1;
        cr_assert(strstr(out, tags[level]) != NULL, "level %d: '%s'", level, out);
    }
}

Test(log, an_over_long_message_is_cut_with_dots_and_keeps_its_newline)
{
    static char message[5000], out[8192];
    memset(message, 'm', sizeof message - 1);
    capture();
    cbd_log(CBD_LOG_ERROR, "%s", message);
    size_t n = captured(out, sizeof out);
    cr_assert_eq(n, 2047, "one line of the 2 KiB buffer, less its final byte");
    cr_assert_eq(strchr(out, '\n'), out + n - 1, "one newline, at the end");
    cr_assert_eq(memcmp(out + n - 4, "...\n", 4), 0, "the line ends '%s'", out + n - 8);
    cr_assert(strstr(out, " ERROR mmmm") != NULL, "the head of the line is kept");
}

Test(log, a_line_is_one_write)
{
    /* a datagram socket keeps write boundaries: one line, one datagram */
    int sv[2];
    char buf[4096];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_DGRAM, 0, sv), 0);
    saved_stderr = dup(STDERR_FILENO);
    dup2(sv[1], STDERR_FILENO);
    cbd_log(CBD_LOG_WARN, "lane %u: %s", 3u, "garbage event");
    ssize_t n = recv(sv[0], buf, sizeof buf - 1, MSG_DONTWAIT);
    cr_assert_gt(n, 0);
    buf[n] = '\0';
    cr_assert(strstr(buf, " WARN lane 3: garbage event\n") != NULL, "the first write was '%s'", buf);
    cr_assert_eq(buf[n - 1], '\n', "the first write is the whole line");
    cr_assert_lt(recv(sv[0], buf, sizeof buf, MSG_DONTWAIT), 0, "a second write followed");
    close(sv[0]);
    close(sv[1]);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

Test(log, the_first_line_of_a_rate_limit_passes_with_nothing_suppressed)
{
    struct cbd_ratelimit rl = {0};
    uint64_t suppressed = 99;
    cr_assert_eq(cbd_ratelimit_pass(&rl, &suppressed), 1);
    cr_assert_eq(suppressed, 0);
}

Test(log, a_burst_within_a_second_is_dropped_and_counted_for_the_next_line)
{
    struct cbd_ratelimit rl = {0};
    uint64_t suppressed = 99, start = mono_ns();
    cr_assert_eq(cbd_ratelimit_pass(&rl, &suppressed), 1);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(cbd_ratelimit_pass(&rl, &suppressed), 0, "line %d of the burst passed", i);
    if (mono_ns() - start >= 1000000000u)
        cr_skip_test("the burst took over a second: its count proves nothing");
    cr_assert_eq(rl.suppressed, 1000);
    cr_assert_eq(suppressed, 0, "a dropped line does not touch the caller's count");
    rl.last_ns -= 1000000000u; /* the second is over */
    cr_assert_eq(cbd_ratelimit_pass(&rl, &suppressed), 1);
    cr_assert_eq(suppressed, 1000, "the line that passes reports the lines dropped before it");
    rl.last_ns -= 1000000000u;
    cr_assert_eq(cbd_ratelimit_pass(&rl, &suppressed), 1);
    cr_assert_eq(suppressed, 0, "the count starts again after it is reported");
}

Test(log, a_line_just_under_a_second_after_the_last_is_still_dropped)
{
    struct cbd_ratelimit rl = {0};
    uint64_t suppressed = 0;
    /* last_ns set 0.9 s back: dropped unless the call itself takes 0.1 s */
    uint64_t start = mono_ns();
    rl.last_ns = start - 900000000u;
    int passed = cbd_ratelimit_pass(&rl, &suppressed);
    if (mono_ns() - start >= 100000000u)
        cr_skip_test("the call took 0.1 s: the window may have ended");
    cr_assert_eq(passed, 0);
    cr_assert_eq(rl.suppressed, 1);
}

Test(log, rate_limits_are_independent_of_each_other)
{
    struct cbd_ratelimit refuse = {0}, close_warn = {0};
    uint64_t suppressed;
    cr_assert_eq(cbd_ratelimit_pass(&refuse, &suppressed), 1);
    cr_assert_eq(cbd_ratelimit_pass(&close_warn, &suppressed), 1, "another limit's line does not hold this one");
}
