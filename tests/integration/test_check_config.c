/*
 * test_check_config.c - `cbd --check-config FILE` and the daemon's start
 * judge a file alike: whatever the start refuses, the check refuses first,
 * with the same lines (FILE:LINE: option 'x': what is wrong (expected ...)),
 * exit code 2, and a refused start touches nothing (no segment is made).
 * Each case is a file an operator could write; the real cbd reads it.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tsup.h"

static char conf[256];

/* Writes len bytes of text (NULs included) to this test's cbd.conf. */
static void write_conf(const char *text, size_t len)
{
    snprintf(conf, sizeof conf, "%s/cbd.conf", tsup_tmpdir());
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, len, f), len);
    fclose(f);
}

/* `cbd --check-config cbd.conf`: its exit status, its output in *out. */
static int check_config(char **out)
{
    char *argv[] = {(char *)tsup_cbd_path(), "--check-config", conf, NULL};
    return tsup_run(argv, out, true);
}

/* `cbd -c cbd.conf` on a fresh instance: its exit status (it must not
 * stay up), its output in *out, the instance in *instance. */
static int start_daemon(char **out, const char **instance)
{
    char socket[256];
    *instance = tsup_unique("chk");
    tsup__track_instance(*instance);
    snprintf(socket, sizeof socket, "%s/%s.sock", tsup_tmpdir(), *instance);
    char *argv[] = {(char *)tsup_cbd_path(), "-c", conf, "--instance", (char *)*instance, "--socket", socket, NULL};
    return tsup_run(argv, out, true);
}

static bool segment_exists(const char *instance)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/cbd.%s", instance);
    return stat(path, &st) == 0;
}

/* The file (len bytes) is refused by the check and by the start alike,
 * both printing exactly one error, "cbd.conf:" followed by want. */
static void refused_alike(const char *text, size_t len, const char *want)
{
    char *checked, *started, line[1024];
    const char *instance;
    write_conf(text, len);
    snprintf(line, sizeof line, "%s:%s", conf, want);
    cr_assert_eq(check_config(&checked), 2, "--check-config did not refuse it: %s", checked);
    cr_assert_not_null(strstr(checked, line), "--check-config said\n%s\ninstead of\n%s", checked, line);
    cr_assert_eq(strchr(checked, '\n'), checked + strlen(checked) - 1, "more than one error:\n%s", checked);
    cr_assert_eq(start_daemon(&started, &instance), 2, "the start did not fail with 2: %s", started);
    cr_assert_str_eq(started, checked, "the start and --check-config disagree");
    cr_assert(!segment_exists(instance), "a refused start made the segment of %s", instance);
    free(checked);
    free(started);
}

#define REFUSED_ALIKE(text, want) refused_alike(text, sizeof text - 1, want)

Test(check_config, a_local_store_without_a_file_is_refused_before_the_start)
{
    REFUSED_ALIKE("[daemon]\nstore = local:\n", "2: option 'store': store 'local:': the local store needs a file "
                                                "(expected local:/ABSOLUTE/PATH, e.g. local:/var/lib/cbd/default.state)");
}

Test(check_config, a_relative_local_store_path_is_refused_before_the_start)
{
    REFUSED_ALIKE("[daemon]\nstore = local:state.json\n",
                  "2: option 'store': store 'local:state.json': the local store's path must be absolute");
    REFUSED_ALIKE("[daemon]\nstore = local:/var/lib/cbd/\n",
                  "2: option 'store': store 'local:/var/lib/cbd/': the local store's path names a directory");
}

Test(check_config, a_nul_byte_is_named_where_it_is)
{
    REFUSED_ALIKE("[daemon]\nlanes = 8\0x\n[defaults]\nfailure_threshold = 2\n",
                  "2: option 'lanes': control byte 0x00 (NUL) at column 10 (expected text: tab is the only "
                  "control character allowed)");
    REFUSED_ALIKE("[daemon]\n\0\n", "2: control byte 0x00 (NUL) at column 1");
}

Test(check_config, a_huge_number_is_out_of_range_not_a_non_number)
{
    REFUSED_ALIKE("[daemon]\ncapacity = 99999999999999999999\n",
                  "2: option 'capacity': 99999999999999999999 is out of range (expected an integer 1..16777216)");
}

Test(check_config, a_too_long_line_says_the_real_limit)
{
    char text[6000];
    int n = snprintf(text, sizeof text, "[hooks]\ncommand = %05000d\ntimeout_ms = 100\n", 0);
    refused_alike(text, (size_t)n, "2: option 'command': line is 5010 bytes (expected at most 4095; for a longer "
                                   "hook, run a script; give a longer value on the command line)");
}

Test(check_config, a_stale_limit_under_two_heartbeats_is_refused_at_its_line)
{
    REFUSED_ALIKE("[daemon]\nheartbeat_ms = 100\nstale_limit_ms = 150\n",
                  "3: option 'stale_limit_ms': 150 is below 2 x heartbeat_ms (100) (expected at least 200, or a "
                  "shorter heartbeat_ms)");
}

Test(check_config, admins_cannot_reserve_every_connection)
{
    REFUSED_ALIKE("[daemon]\nmax_connections = 16\nadmin_reserved_connections = 16\n",
                  "3: option 'admin_reserved_connections': 16 leaves none of max_connections (16) to other users "
                  "(expected at most 15)");
}

/* Every error of one file, each once with its line, and cross-option
 * rules in the same run as the errors of single values. */
Test(check_config, every_error_of_a_file_is_reported_with_its_line)
{
    static const char text[] = "[daemon]\n"                              /* 1 */
                               "capacity = 99999999999999999999\n"       /* 2 */
                               "drain_interval_ms = 10ms\n"              /* 3 */
                               "socket_mode = 0680\n"                    /* 4 */
                               "stale_policy = open\n"                   /* 5 */
                               "heartbeat_ms = 1000\n"                   /* 6 */
                               "stale_limit_ms = 1500\n"                 /* 7 */
                               "[defualts]\n"                            /* 8 */
                               "[defaults]\n"                            /* 9 */
                               "failure_treshold = 3\n"                  /* 10 */
                               "success_threshold = -5\n"                /* 11 */
                               "[daemon]\n"                              /* 12 */
                               "max_circuits_per_uid = 99999\n";         /* 13: above capacity, fine */
    static const char *const want[] = {
        "2: option 'capacity': 99999999999999999999 is out of range (expected an integer 1..16777216)",
        "3: option 'drain_interval_ms': '10ms' has 'ms' after the number (expected an integer 1..1000)",
        "4: option 'socket_mode': '0680' is not an octal mode: 8 is not an octal digit (expected an octal mode "
        "0000..0777, such as 0660)",
        "5: option 'stale_policy': 'open' is not a known value (expected one of fail-open | keep-state)",
        "8: section [defualts]: unknown section (did you mean [defaults]?",
        "10: option 'failure_treshold': unknown in section [defaults] (did you mean 'failure_threshold'?",
        "11: option 'success_threshold': -5 is negative (expected an integer 1..1000000)",
        "12: section [daemon]: given twice (first at line 1; expected each section once",
        "7: option 'stale_limit_ms': 1500 is below 2 x heartbeat_ms (1000) (expected at least 2000",
    };
    char *out, line[512];
    write_conf(text, sizeof text - 1);
    cr_assert_eq(check_config(&out), 2, "%s", out);
    size_t lines = 0;
    for (const char *p = out; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "%s:%s", conf, want[i]);
        cr_expect_not_null(strstr(out, line), "missing\n%s\nin\n%s", line, out);
    }
    cr_assert_eq(lines, sizeof want / sizeof want[0], "not one line per error:\n%s", out);
    free(out);
}

/* The [daemon] limits: valid values pass, each out-of-range one names its
 * bounds, and a circuit quota above the capacity is no error. */
Test(check_config, the_limits_of_one_user_are_checked_like_every_option)
{
    static const char good[] = "[daemon]\ncapacity = 1000\nmax_connections = 100\nmax_connections_per_uid = 10\n"
                               "admin_reserved_connections = 99\nframe_timeout_ms = 100\nidle_timeout_ms = 0\n"
                               "max_circuits_per_uid = 5000\ncircuit_expiry_s = 86400\n";
    char *out;
    write_conf(good, sizeof good - 1);
    cr_assert_eq(check_config(&out), 0, "%s", out);
    cr_assert_str_eq(out, "ok\n");
    free(out);
    static const char text[] = "[daemon]\nmax_connections = 8\nmax_connections_per_uid = 0\n"
                               "admin_reserved_connections = 2000\nframe_timeout_ms = 99\nidle_timeout_ms = -1\n"
                               "max_circuits_per_uid = 16777217\ncircuit_expiry_s = 31536001\n";
    static const char *const want[] = {
        "2: option 'max_connections': 8 is out of range (expected an integer 16..65536)",
        "3: option 'max_connections_per_uid': 0 is out of range (expected an integer 1..65536)",
        "4: option 'admin_reserved_connections': 2000 is out of range (expected an integer 0..1024)",
        "5: option 'frame_timeout_ms': 99 is out of range (expected an integer 100..600000)",
        "6: option 'idle_timeout_ms': -1 is negative (expected an integer 0..86400000)",
        "7: option 'max_circuits_per_uid': 16777217 is out of range (expected an integer 0..16777216)",
        "8: option 'circuit_expiry_s': 31536001 is out of range (expected an integer 0..31536000)",
    };
    char line[512];
    write_conf(text, sizeof text - 1);
    cr_assert_eq(check_config(&out), 2, "%s", out);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "%s:%s", conf, want[i]);
        cr_expect_not_null(strstr(out, line), "missing\n%s\nin\n%s", line, out);
    }
    free(out);
}
