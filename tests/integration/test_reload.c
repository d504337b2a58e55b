/*
 * test_reload.c - the configuration file and reload: per-circuit sections,
 * SIGHUP and `cbctl reload` applying a new file to running circuits, a
 * broken file refused with FILE:LINE: option in the log and the reply while
 * the old configuration stays, the same errors as --check-config finds,
 * restart-only options kept with a warning, --check-config, and
 * docs/configuration.md agreeing with --help-config.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;
static char conf[256];

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(reload, .fini = stop, .timeout = 60);

static void write_conf(const char *text)
{
    if (conf[0] == '\0')
        snprintf(conf, sizeof conf, "%s/cbd.conf", tsup_tmpdir());
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void start(const char *text)
{
    write_conf(text);
    struct tsup_daemon_opts o = {.extra = {"-c", conf, NULL}};
    cr_assert_eq(tsup_daemon_start(&d, &o), 0, "cbd did not start with %s", conf);
    cl = tsup_client(&d);
}

static uint32_t threshold(cb_circuit *c)
{
    return tsup_info(c).config.failure_threshold;
}

/* ---- sections ------------------------------------------------------------------ */

Test(reload, exact_beats_prefix_and_the_longest_prefix_wins)
{
    start("[defaults]\nfailure_threshold = 9\n"
          "[prefix \"pay\"]\nfailure_threshold = 3\n"
          "[prefix \"payments.\"]\nfailure_threshold = 4\nrecovery_timeout_ms = 1234\n"
          "[circuit \"payments.eu\"]\nfailure_threshold = 6\n");
    cr_assert_eq(threshold(tsup_circuit(cl, "payments.us", NULL)), 4);
    cr_assert_eq(tsup_info(tsup_circuit(cl, "payments.us", NULL)).config.recovery_timeout_ms, 1234);
    cr_assert_eq(threshold(tsup_circuit(cl, "payments.eu", NULL)), 6);
    cr_assert_eq(threshold(tsup_circuit(cl, "paypal", NULL)), 3);
    cr_assert_eq(threshold(tsup_circuit(cl, "search", NULL)), 9);
    cb_config cfg = tsup_config(7, 1, 1, 60000);
    cb_circuit *mine = tsup_circuit(cl, "mine", &cfg);
    cr_assert_eq(threshold(mine), 7, "[defaults] beat what the worker asked for");
    cb_circuit *over = tsup_circuit(cl, "paystack", &cfg);
    cr_assert_eq(threshold(over), 3, "the file's section did not beat what the worker asked for");
    cr_assert_eq(tsup_info(over).config.recovery_timeout_ms, 60000, "a field the section does not name changed");
}

/* ---- reload --------------------------------------------------------------------- */

Test(reload, sighup_applies_new_thresholds_to_existing_circuits)
{
    start("[defaults]\nfailure_threshold = 5\n");
    cb_circuit *dflt = tsup_circuit(cl, "follows-defaults", NULL);
    cb_config cfg = tsup_config(5, 1, 1, 60000);
    cb_circuit *asked = tsup_circuit(cl, "asked", &cfg);
    cb_circuit *named = tsup_circuit(cl, "named", &cfg);
    cr_assert_eq(threshold(dflt), 5);
    write_conf("[defaults]\nfailure_threshold = 2\n[circuit \"named\"]\nfailure_threshold = 2\n");
    cr_assert_eq(kill(d.pid, SIGHUP), 0);
    cr_assert(tsup_wait_until(threshold(dflt) == 2 && threshold(named) == 2, TSUP_LIVENESS_MS),
              "the reload did not reach the existing circuits (%u, %u)", threshold(dflt), threshold(named));
    cr_assert_eq(threshold(asked), 5, "[defaults] beat what the worker asked for");
    cr_assert_eq(tsup_record_n(dflt, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_state(dflt, CB_OPEN), "two failures did not trip under the new threshold");
    cr_assert_eq(tsup_record_n(named, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_state(named, CB_OPEN));
    cr_assert_eq(tsup_log_count(&d, "reloaded"), 1);
}

Test(reload, cbctl_reload_answers_and_keeps_circuit_states)
{
    start("[defaults]\nfailure_threshold = 1\nrecovery_timeout_ms = 600000\n");
    cb_circuit *c = tsup_circuit(cl, "ledger", NULL);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    uint32_t epoch = tsup_info(c).epoch;
    write_conf("[defaults]\nfailure_threshold = 3\nrecovery_timeout_ms = 600000\n");
    char *out;
    char *argv[] = {(char *)tsup_cbctl_path(), "--socket", d.socket, "--instance", d.instance, "reload",
                    NULL};
    cr_assert_eq(tsup_run(argv, &out, true), 0, "cbctl reload: %s", out);
    free(out);
    cb_info i = tsup_info(c);
    cr_assert_eq(i.config.failure_threshold, 3);
    cr_assert_eq(i.state, CB_OPEN, "a reload changed a circuit's state");
    cr_assert_eq(i.epoch, epoch, "a reload made a transition");
}

Test(reload, a_broken_file_is_refused_and_the_running_config_stays)
{
    start("[defaults]\nfailure_threshold = 4\n");
    cb_circuit *c = tsup_circuit(cl, "x", NULL);
    write_conf("[defaults]\nfailure_threshold = 2\nsuccess_threshold = lots\n[nonsense]\n");
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_op(&d, "reload", &r), 1);
    cr_assert_eq(tsup_reply_error(&r), -EINVAL);
    char msg[1024], want[512];
    cr_assert_eq(cb__mp_get_str(r.map, "message", msg, sizeof msg), 0);
    snprintf(want, sizeof want, "%s:3: option 'success_threshold': 'lots' is not a number", conf);
    cr_assert_not_null(strstr(msg, want), "reply \"%s\" lacks \"%s\"", msg, want);
    tsup_reply_free(&r);
    cr_assert_eq(tsup_log_count(&d, want), 1, "the log lacks \"%s\"", want);
    snprintf(want, sizeof want, "%s:4: section [nonsense]", conf);
    cr_assert_eq(tsup_log_count(&d, want), 1, "the log lacks every error but the first");
    cr_assert_eq(threshold(c), 4, "a refused file changed the policy");
    cr_assert_eq(tsup_stat(&d, "reloads_failed"), 1);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2);
    usleep(100 * 1000);
    cr_assert_eq(tsup_info(c).state, CB_CLOSED, "the refused threshold took effect");
}

/* A reload runs the check `cbd --check-config` runs: the same errors, each
 * logged once, even for a restart-only option (the store) whose new value
 * would never be applied. */
Test(reload, a_reload_refuses_what_check_config_refuses_with_the_same_lines)
{
    start("[defaults]\nfailure_threshold = 4\n");
    cb_circuit *c = tsup_circuit(cl, "z", NULL);
    write_conf("[daemon]\nstore = local:relative.state\nheartbeat_ms = 100\nstale_limit_ms = 150\n"
               "[defaults]\nfailure_threshold = 2\n");
    char *out;
    char *argv[] = {(char *)tsup_cbd_path(), "--check-config", conf, NULL};
    cr_assert_eq(tsup_run(argv, &out, true), 2, "%s", out);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_op(&d, "reload", &r), 1);
    cr_assert_eq(tsup_reply_error(&r), -EINVAL);
    char msg[1024];
    cr_assert_eq(cb__mp_get_str(r.map, "message", msg, sizeof msg), 0);
    tsup_reply_free(&r);
    int lines = 0;
    for (char *line = strtok(out, "\n"); line != NULL; line = strtok(NULL, "\n"), lines++) {
        cr_expect_eq(tsup_log_count(&d, line), 1, "the reload did not log \"%s\" once", line);
        cr_expect_not_null(strstr(msg, line), "the reply \"%s\" lacks \"%s\"", msg, line);
    }
    cr_assert_eq(lines, 2, "--check-config found %d errors", lines);
    free(out);
    cr_assert_eq(threshold(c), 4, "a refused file changed the policy");
}

Test(reload, a_restart_only_option_keeps_its_value_with_a_warning)
{
    start("[daemon]\ncapacity = 1000\n");
    write_conf("[daemon]\ncapacity = 2000\n[defaults]\nfailure_threshold = 2\n");
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_op(&d, "reload", &r), 1);
    cr_assert(tsup_reply_ok(&r), "the reload was refused");
    tsup_reply_free(&r);
    cr_assert_eq(tsup_log_count(&d, "option 'capacity' changed from 1000 to 2000, but only a restart"), 1);
    cb_circuit *c = tsup_circuit(cl, "y", NULL);
    cr_assert_eq(threshold(c), 2, "the reloadable part of the file was not applied");
}

/* ---- the file outside a running daemon ----------------------------------------- */

Test(reload, check_config_reports_every_error_with_file_and_line)
{
    write_conf("[daemon]\nlanes = many\n[defaults]\nfailure_threshold = 0\n[circuit \"\"]\n");
    char *out;
    char *argv[] = {(char *)tsup_cbd_path(), "--check-config", conf, NULL};
    cr_assert_eq(tsup_run(argv, &out, true), 2, "--check-config of a broken file: %s", out);
    char want[512];
    snprintf(want, sizeof want, "%s:2: option 'lanes'", conf);
    cr_assert_not_null(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "%s:4: option 'failure_threshold'", conf);
    cr_assert_not_null(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, "%s:5: section [circuit \"\"]", conf);
    cr_assert_not_null(strstr(out, want), "%s", out);
    free(out);
    write_conf("[daemon]\nlanes = 8\n[hooks]\ncommand = true\ncommand = logger cbd\n[prefix \"a\"]\nhook = true\n");
    cr_assert_eq(tsup_run(argv, &out, true), 0, "--check-config of a good file: %s", out);
    cr_assert_str_eq(out, "ok\n");
    free(out);
}

Test(reload, docs_configuration_md_is_what_help_config_prints)
{
    char path[PATH_MAX], *out;
    snprintf(path, sizeof path, "%s", __FILE__); /* tests/integration/test_reload.c in the source tree */
    for (int up = 0; up < 3; up++)
        *strrchr(path, '/') = '\0';
    strcat(path, "/docs/configuration.md");
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot read %s", path);
    char *doc = calloc(1, 1 << 20);
    size_t n = fread(doc, 1, (1 << 20) - 1, f);
    fclose(f);
    doc[n] = '\0';
    char *argv[] = {(char *)tsup_cbd_path(), "--help-config", NULL};
    cr_assert_eq(tsup_run(argv, &out, true), 0);
    cr_assert_str_eq(doc, out, "docs/configuration.md differs from `cbd --help-config`: regenerate it");
    free(out);
    free(doc);
}
