/*
 * test_names.c - circuit names as Powertools takes them: any UTF-8 string
 * (spaces, '#', quotes, non-ASCII, even control characters), up to 127
 * bytes. Each one works end to end (libcb, the daemon, the local store
 * across a reboot, hooks), and every place that shows a name to a person -
 * the log, cbctl's tables and errors - shows it quoted and escaped, so a
 * name can never forge a log line or a column.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(names, .fini = stop, .timeout = 60);

static const char *const powertools_names[] = {
    "orders #1",
    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x90\x8d",
    "quote\" back\\slash; semi",
    "forged\n2026-01-01T00:00:00Z cbd[1] INFO transition circuit=x",
};

static char *run_cbctl(char *const extra[], int *status)
{
    char *argv[12] = {(char *)tsup_cbctl_path(), "--instance", d.instance};
    int n = 3;
    for (int i = 0; extra[i] != NULL && n < 11; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    char *out = NULL;
    *status = tsup_run(argv, &out, true);
    return out;
}

static bool read_file(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    buf[fread(buf, 1, size - 1, f)] = '\0';
    fclose(f);
    return true;
}

Test(names, any_utf8_name_trips_survives_a_reboot_and_is_shown_escaped)
{
    char hook_log[256], hook[512];
    snprintf(hook_log, sizeof hook_log, "%s/hook.log", tsup_tmpdir());
    snprintf(hook, sizeof hook, "printf '%%s\\n' \"$CB_CIRCUIT\" >> %s", hook_log);
    struct tsup_daemon_opts o = {.tag = "names", .extra = {"--hook-command", hook}};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    size_t n = sizeof powertools_names / sizeof powertools_names[0];
    for (size_t i = 0; i < n; i++) {
        cb_circuit *c = tsup_circuit(cl, powertools_names[i], &cfg);
        cr_assert_str_eq(tsup_info(c).name, powertools_names[i]);
        cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
        cr_assert(tsup_wait_state(c, CB_OPEN), "%zu did not trip", i);
    }
    /* The log shows every name quoted: the forged line stays inside its quotes.
     * A trip's log line follows the state workers see: wait for the last one. */
    cr_assert(tsup_wait_until(tsup_log_count(&d, "forged\\x0a2026") >= 2, TSUP_LIVENESS_MS),
              "the last trip was not logged");
    cr_assert_eq(tsup_log_count(&d, "circuit=\"orders #1\""), 2, "registration and trip");
    cr_assert_eq(tsup_log_count(&d, "2026-01-01T00:00:00Z cbd[1]"), 2, "the forged text stays on the real lines");
    cr_assert_eq(tsup_log_count(&d, "forged\\x0a2026"), 2, "the newline is escaped");
    /* cbctl list: one line per circuit, names quoted */
    int st;
    char *list_args[] = {"list", NULL};
    char *out = run_cbctl(list_args, &st);
    cr_assert_eq(st, 0, "%s", out);
    int lines = 0;
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    cr_assert_eq(lines, 1 + (int)n, "a header and one line per circuit:\n%s", out);
    cr_assert_not_null(strstr(out, "\"quote\\\" back\\\\slash; semi\""), "%s", out);
    free(out);
    /* cbctl show takes the name as it is */
    char *show_args[] = {"--json", "show", (char *)powertools_names[1], NULL};
    out = run_cbctl(show_args, &st);
    cr_assert_eq(st, 0, "%s", out);
    cr_assert_not_null(strstr(out, "\"state\":\"OPEN\""), "%s", out);
    free(out);
    /* hooks get the name as it is */
    char buf[4096] = "";
    cr_assert(tsup_wait_until(read_file(hook_log, buf, sizeof buf) && strstr(buf, powertools_names[3]) != NULL,
                              TSUP_LIVENESS_MS), "hooks wrote: %s", buf);
    for (size_t i = 0; i < n; i++)
        cr_assert_not_null(strstr(buf, powertools_names[i]), "%s", buf);
    /* A reboot: shared memory is gone, the local store brings them back OPEN. */
    cb_client_close(cl);
    cl = NULL;
    cr_assert_eq(tsup_daemon_stop(&d), 0);
    tsup_shm_unlink(d.instance);
    cr_assert_eq(tsup_daemon_restart(&d), 0);
    cl = tsup_client(&d);
    for (size_t i = 0; i < n; i++) {
        cb_circuit *c = tsup_circuit(cl, powertools_names[i], NULL);
        cr_assert_eq(tsup_info(c).state, CB_OPEN, "%zu lost its opening across the reboot", i);
    }
}

Test(names, a_name_that_is_not_utf8_or_too_long_is_refused_with_a_clear_error)
{
    struct tsup_daemon_opts o = {.tag = "badnames"};
    tsup_fixture_start(&d, &cl, &o);
    char longest[CB_NAME_MAX + 2];
    memset(longest, 'x', sizeof longest);
    longest[CB_NAME_MAX + 1] = '\0';
    const char *bad[] = {"", "\xff", longest};
    for (size_t i = 0; i < 3; i++) {
        cb_circuit *c;
        cr_assert_eq(cb_circuit_get(cl, bad[i], NULL, &c), -EINVAL, "name %zu", i);
    }
    int st;
    char *args[] = {"show", "\xff", NULL};
    char *out = run_cbctl(args, &st);
    cr_assert_eq(st, 2, "%s", out);
    cr_assert_not_null(strstr(out, "is not a valid circuit name (1..127 bytes of UTF-8)"), "%s", out);
    free(out);
}
