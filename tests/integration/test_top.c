/*
 * test_top.c - `cbctl top` in a real terminal: tmux (Debian package tmux)
 * runs it against a real cbd, the test reads the screen with capture-pane
 * and types with send-keys, as a person would: the circuits' rows appear,
 * a trip shows as OPEN with its rejections per second, s changes the sort,
 * q quits. Skipped when tmux is missing. The tmux server is the test's own
 * (a socket in the test's directory) and is killed at the end.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;
static char tmux_sock[512];

/* tmux -S <ours> a b c e: its exit status; its output in *out (NULL: dropped). */
static int tmux(char **out, const char *a, const char *b, const char *c, const char *e)
{
    char *argv[] = {"/usr/bin/tmux", "-S", tmux_sock, (char *)a, (char *)b, (char *)c, (char *)e, NULL}, *text;
    int rc = tsup_run(argv, &text, true);
    if (out != NULL)
        *out = text;
    else
        free(text);
    return rc;
}

static void stop(void)
{
    if (tmux_sock[0] != '\0')
        tmux(NULL, "kill-server", NULL, NULL, NULL);
    tsup_fixture_stop(&d, &cl);
}

TestSuite(top, .fini = stop, .timeout = 60);

/* The screen now (malloc'd). */
static char *screen(void)
{
    char *out = NULL;
    tmux(&out, "capture-pane", "-p", "-t", "top");
    return out;
}

/* The screen's line that starts with name followed by a blank, or "". */
static const char *row_of(const char *text, const char *name, char *line, size_t size)
{
    size_t n = strlen(name);
    line[0] = '\0';
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ') {
            size_t len = strcspn(p, "\n");
            snprintf(line, size, "%.*s", (int)(len < size ? len : size - 1), p);
            break;
        }
    }
    return line;
}

/* Waits until the screen shows what pred says; the last screen in *last. */
static bool screen_shows(bool (*pred)(const char *), char **last)
{
    return tsup_wait_until((free(*last), *last = screen(), *last != NULL && pred(*last)), TSUP_LIVENESS_MS);
}

static bool both_closed(const char *s)
{
    char a[256], b[256];
    return strstr(row_of(s, "alpha", a, sizeof a), "CLOSED") && strstr(row_of(s, "beta", b, sizeof b), "CLOSED");
}

/* beta OPEN, rejecting: its REJECTED/s column (the fourth) above 0. */
static bool beta_open_rejecting(const char *s)
{
    char line[256], name[64], state[32];
    double allowed, rejected;
    row_of(s, "beta", line, sizeof line);
    return sscanf(line, "%63s %31s %lf %lf", name, state, &allowed, &rejected) == 4 && strcmp(state, "OPEN") == 0 &&
           rejected > 0;
}

static bool sorted_by_state(const char *s) { return strstr(s, "sorted by state") != NULL; }

Test(top, shows_the_circuits_live_sorts_and_quits)
{
    if (access("/usr/bin/tmux", X_OK) != 0) {
        cr_log_warn("tmux is not installed (Debian package tmux): test skipped");
        return;
    }
    struct tsup_daemon_opts o = {.tag = "top"};
    tsup_fixture_start(&d, &cl, &o);
    snprintf(tmux_sock, sizeof tmux_sock, "%s/tmux.sock", tsup_tmpdir());
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cb_circuit *alpha = tsup_circuit(cl, "alpha", &cfg), *beta = tsup_circuit(cl, "beta", &cfg);
    cr_assert_eq(tsup_record_n(alpha, CB_SUCCESS, 5), 5);

    /* The tmux server that new-session starts keeps the descriptors it was
     * given: /dev/null, so that tsup_run's pipe closes. */
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "/usr/bin/tmux -S '%s' new-session -d -s top -x 150 -y 30 "
             "'%s --instance %s --socket %s top --interval 200' </dev/null >/dev/null 2>&1", tmux_sock,
             tsup_cbctl_path(), d.instance, d.socket);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL}, *out = NULL;
    cr_assert_eq(tsup_run(argv, &out, false), 0, "tmux did not start");
    free(out);

    char *last = NULL;
    cr_assert(screen_shows(both_closed, &last), "top did not show both circuits CLOSED:\n%s", last);

    cr_assert_eq(tsup_record_n(beta, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(beta, CB_OPEN));
    cr_assert(tsup_wait_until(({
                                  for (int i = 0; i < 1000; i++) /* rejected: counted in this thread's lane */
                                      cb_allow(beta);
                                  free(last);
                                  last = screen();
                                  last != NULL && beta_open_rejecting(last);
                              }),
                              TSUP_LIVENESS_MS),
              "top did not show beta OPEN and rejecting:\n%s", last);

    tmux(NULL, "send-keys", "-t", "top", "s");
    cr_assert(screen_shows(sorted_by_state, &last), "s did not change the sort:\n%s", last);
    char line[256];
    cr_assert(strstr(last, row_of(last, "beta", line, sizeof line)) < strstr(last, "alpha"),
              "sorted by state, the open circuit comes first:\n%s", last);

    tmux(NULL, "send-keys", "-t", "top", "q");
    cr_assert(tsup_wait_until(tmux(NULL, "has-session", "-t", "top", NULL) != 0, TSUP_LIVENESS_MS),
              "q did not quit top");
    free(last);
}
