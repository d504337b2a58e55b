/*
 * test_metrics.c - the Prometheus endpoint of a real cbd (metrics_listen):
 * what a scrape shows after worker processes made a known number of calls,
 * that `promtool check metrics` accepts the real scrape, and that with the
 * option unset the daemon listens on no TCP socket at all.
 *
 * Counts are asserted exactly: every worker is a separate process with its
 * own lanes, each exits (releasing its lanes) before the scrape, and the
 * test waits until the daemon has drained everything they recorded.
 * Nothing is timed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(metrics, .fini = stop, .timeout = 120);

#define WORKERS 8
#define SUCCESSES 100
#define FAILURES 10
#define IGNORED 5
#define REJECTS 50

/* ---- helpers ------------------------------------------------------------------ */

/* Start cbd serving metrics on a free loopback port; the port. */
static int start_with_metrics(void)
{
    static char listen[64];
    int port = tsup_free_port();
    cr_assert_gt(port, 0, "no free port: %s", strerror(-port));
    snprintf(listen, sizeof listen, "--metrics-listen=127.0.0.1:%d", port);
    struct tsup_daemon_opts o = {.tag = "metrics", .extra = {listen}};
    tsup_fixture_start(&d, &cl, &o);
    return port;
}

/* GET path over HTTP/1.0 (the server closes when done): the whole
 * response (malloc'd), or NULL if nobody answered. */
static char *http_get(int port, const char *path)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    cr_assert_eq(write(fd, req, (size_t)n), n);
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    for (ssize_t got; (got = read(fd, buf + len, cap - len - 1)) > 0;) {
        len += (size_t)got;
        if (cap - len < 4096)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    close(fd);
    return buf;
}

/* The body of a 200 answer to GET /metrics; fails the test otherwise. */
static char *scrape(int port)
{
    char *resp = http_get(port, "/metrics");
    cr_assert_not_null(resp, "nobody answered on 127.0.0.1:%d", port);
    cr_assert(strncmp(resp, "HTTP/1.0 200", 12) == 0 || strncmp(resp, "HTTP/1.1 200", 12) == 0,
              "the scrape was answered: %.200s", resp);
    cr_assert_not_null(strstr(resp, "text/plain; version=0.0.4"), "content type: %.400s", resp);
    char *body = strstr(resp, "\r\n\r\n");
    cr_assert_not_null(body);
    char *out = strdup(body + 4);
    free(resp);
    return out;
}

/* The value of the sample line that starts with series (name and labels,
 * exactly as rendered), or -1 when there is none. */
static long long sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return atoll(p + n + 1);
    }
    return -1;
}

static void assert_sample(const char *text, const char *series, long long want)
{
    long long got = sample(text, series);
    if (got != want) /* criterion formats the message of a passing assertion too: only on failure */
        cr_assert_fail("%s is %lld, expected %lld; the metrics:\n%.20000s", series, got, want, text);
}

/* `promtool check metrics` on text: skipped when promtool is missing. */
static void promtool_accepts(const char *text)
{
    if (access("/usr/bin/promtool", X_OK) != 0) {
        cr_log_warn("promtool is not installed (Debian package prometheus): check skipped");
        return;
    }
    char path[512], cmd[1100];
    snprintf(path, sizeof path, "%s/scrape.txt", tsup_tmpdir());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < '%s'", path);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL}, *out = NULL;
    int rc = tsup_run(argv, &out, true);
    cr_assert_eq(rc, 0, "promtool check metrics refused the scrape:\n%s", out);
    free(out);
}

/* TCP sockets in LISTEN state that process pid holds (IPv4 and IPv6). */
static int listening_sockets(pid_t pid)
{
    char path[128], link[128];
    unsigned long inodes[256];
    int ninodes = 0, found = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    cr_assert_not_null(dir, "cannot read %s", path);
    for (struct dirent *e; (e = readdir(dir)) != NULL && ninodes < 256;) {
        char fd_path[512];
        snprintf(fd_path, sizeof fd_path, "%s/%s", path, e->d_name);
        ssize_t n = readlink(fd_path, link, sizeof link - 1);
        if (n > 0 && (link[n] = '\0', sscanf(link, "socket:[%lu]", &inodes[ninodes]) == 1))
            ninodes++;
    }
    closedir(dir);
    const char *tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    for (int t = 0; t < 2; t++) {
        FILE *f = fopen(tables[t], "r");
        char line[512];
        if (f == NULL)
            continue;
        while (fgets(line, sizeof line, f) != NULL) {
            char st[8];
            unsigned long inode;
            /* sl local rem st tx:rx tr:when retrnsmt uid timeout inode */
            if (sscanf(line, " %*s %*s %*s %7s %*s %*s %*s %*s %*s %lu", st, &inode) != 2 || strcmp(st, "0A") != 0)
                continue;
            for (int i = 0; i < ninodes; i++)
                found += inodes[i] == inode;
        }
        fclose(f);
    }
    return found;
}

/* A worker process: its own client; SUCCESSES, FAILURES and IGNORED
 * outcomes on "calls" and REJECTS calls of the open "tripped". Exits 0
 * when every call was decided as expected. */
static void worker(const cb_config *calls_cfg, const cb_config *tripped_cfg)
{
    cb_client *c = NULL;
    cb_circuit *calls = NULL, *tripped = NULL;
    if (cb_client_open(&c, d.instance) < 0 || cb_circuit_get(c, "calls", calls_cfg, &calls) < 0 ||
        cb_circuit_get(c, "tripped", tripped_cfg, &tripped) < 0)
        _exit(10);
    const struct {
        cb_outcome outcome;
        int n;
    } plan[] = {{CB_SUCCESS, SUCCESSES}, {CB_FAILURE, FAILURES}, {CB_IGNORED, IGNORED}};
    for (size_t p = 0; p < sizeof plan / sizeof plan[0]; p++)
        if (tsup_record_n(calls, plan[p].outcome, plan[p].n) != plan[p].n)
            _exit(11);
    for (int i = 0; i < REJECTS; i++)
        if (cb_permitted(cb_allow(tripped)))
            _exit(12);
    cb_client_close(c); /* releases this process's lanes: the daemon drains them */
    _exit(0);
}

/* `cbctl metrics` on d: its output (malloc'd); fails the test unless it exits 0. */
static char *cbctl_metrics(void)
{
    char *argv[] = {(char *)tsup_cbctl_path(), "--socket", d.socket, "--instance", d.instance, "metrics", NULL};
    char *out = NULL;
    int rc = tsup_run(argv, &out, false);
    cr_assert_eq(rc, 0, "cbctl metrics exited %d: %s", rc, out);
    return out;
}

/* text without the lines that move between two renderings of the same
 * state: ages, the start time (from two clocks read at another instant),
 * the endpoint's own answers and cbctl's own connection (admitted and open
 * while it asks). */
static char *steady_lines(const char *text)
{
    static const char *const moving[] = {"cbd_circuit_open_age_seconds{", "cbd_start_time_seconds ",
                                         "cbd_metrics_http_responses_total{", "cbd_control_connections ",
                                         "cbd_control_connections_total ",
                                         "cbd_control_connections_closed_total{reason=\"hangup\"}"};
    char *out = calloc(1, strlen(text) + 1), *o = out;
    for (const char *p = text; *p != '\0';) {
        const char *end = strchrnul(p, '\n');
        bool skip = false;
        for (size_t i = 0; i < sizeof moving / sizeof moving[0]; i++)
            skip |= strncmp(p, moving[i], strlen(moving[i])) == 0;
        if (!skip) {
            memcpy(o, p, (size_t)(end - p));
            o += end - p;
            *o++ = '\n';
        }
        p = *end ? end + 1 : end;
    }
    return out;
}

/* ---- tests ----------------------------------------------------------------------- */

Test(metrics, a_scrape_shows_the_exact_counts_of_eight_worker_processes)
{
    int port = start_with_metrics();
    cb_config calls_cfg = tsup_config(1000000, 1, 1, 60000), tripped_cfg = tsup_config(3, 1, 1, 600000);
    cb_circuit *calls = tsup_circuit(cl, "calls", &calls_cfg), *tripped = tsup_circuit(cl, "tripped", &tripped_cfg);
    cr_assert_eq(tsup_record_n(tripped, CB_FAILURE, 3), 3);
    cr_assert(tsup_wait_state(tripped, CB_OPEN), "three failures did not open the circuit");

    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        if ((pids[i] = tsup_fork()) == 0)
            worker(&calls_cfg, &tripped_cfg);
        cr_assert_gt(pids[i], 0);
    }
    for (int i = 0; i < WORKERS; i++) {
        int status;
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        tsup_untrack(pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d ended with status %#x", i, status);
    }
    cr_assert(tsup_wait_drained(calls, (uint64_t)WORKERS * (SUCCESSES + FAILURES + IGNORED)),
              "the daemon did not drain every outcome the workers recorded");
    /* The workers' lanes are drained (call counts folded) one last time when reclaimed. */
    cr_assert(tsup_wait_until(tsup_stat(&d, "lanes_in_use") <= 1, TSUP_LIVENESS_MS),
              "the exited workers' lanes were not reclaimed");

    char *text = scrape(port);
    assert_sample(text, "cbd_circuit_outcomes_total{circuit=\"calls\",outcome=\"success\"}", WORKERS * SUCCESSES);
    assert_sample(text, "cbd_circuit_outcomes_total{circuit=\"calls\",outcome=\"failure\"}", WORKERS * FAILURES);
    assert_sample(text, "cbd_circuit_outcomes_total{circuit=\"calls\",outcome=\"ignored\"}", WORKERS * IGNORED);
    assert_sample(text, "cbd_circuit_outcomes_total{circuit=\"tripped\",outcome=\"failure\"}", 3);
    assert_sample(text, "cbd_circuit_calls_total{circuit=\"tripped\",decision=\"rejected\"}", WORKERS * REJECTS);
    assert_sample(text, "cbd_circuit_calls_total{circuit=\"tripped\",decision=\"allowed\"}", 3);
    assert_sample(text, "cbd_circuit_calls_total{circuit=\"calls\",decision=\"rejected\"}", 0);
    assert_sample(text, "cbd_circuit_calls_total{circuit=\"calls\",decision=\"allowed\"}",
                  WORKERS * (SUCCESSES + FAILURES + IGNORED));
    assert_sample(text, "cbd_circuit_probes_total{circuit=\"tripped\"}", 0);
    assert_sample(text, "cbd_circuit_state{circuit=\"calls\",state=\"closed\"}", 1);
    assert_sample(text, "cbd_circuit_state{circuit=\"tripped\",state=\"open\"}", 1);
    assert_sample(text, "cbd_circuit_state{circuit=\"tripped\",state=\"closed\"}", 0);
    assert_sample(text, "cbd_circuit_transitions_total{circuit=\"tripped\",from=\"closed\",to=\"open\"}", 1);
    assert_sample(text, "cbd_circuit_transitions_total{circuit=\"calls\",from=\"closed\",to=\"open\"}", 0);
    assert_sample(text, "cbd_circuit_consecutive_failures{circuit=\"tripped\"}", 3);
    assert_sample(text, "cbd_store_info{store=\"local\"}", 1);
    assert_sample(text, "cbd_store_online", 1);
    cr_assert_geq(sample(text, "cbd_circuit_open_age_seconds{circuit=\"tripped\"}"), 0, "%.4000s", text);
    cr_assert_eq(sample(text, "cbd_circuit_open_age_seconds{circuit=\"calls\"}"), -1, "a closed circuit has no open age");
    cr_assert_gt(sample(text, "cbd_lane_events_drained_total"), WORKERS * (SUCCESSES + FAILURES + IGNORED));
    assert_sample(text, "cbd_lane_events_invalid_total", 0);
    cr_assert_geq(sample(text, "cbd_lanes_reclaimed_total"), 0, "%.4000s", text);
    promtool_accepts(text);
    free(text);
}

Test(metrics, the_endpoint_answers_only_get_of_its_path_and_counts_its_answers)
{
    int port = start_with_metrics();
    char *resp = http_get(port, "/nothing");
    cr_assert_not_null(resp);
    cr_assert(strstr(resp, " 404 ") != NULL, "GET /nothing: %.200s", resp);
    free(resp);
    char *text = scrape(port);
    assert_sample(text, "cbd_metrics_http_responses_total{code=\"404\"}", 1);
    char build[256];
    snprintf(build, sizeof build, "cbd_build_info{version=\"%s\",layout=\"%u\",cbd_instance=\"%s\"}",
             CB_VERSION_STRING, CB_SEG_MAJOR, d.instance);
    assert_sample(text, build, 1);
    promtool_accepts(text);
    free(text);
    cr_assert_eq(listening_sockets(d.pid), 1, "the daemon serving metrics holds one listening TCP socket");
}

Test(metrics, without_metrics_listen_the_daemon_listens_on_no_tcp_socket)
{
    struct tsup_daemon_opts o = {.tag = "nometrics"};
    tsup_fixture_start(&d, &cl, &o);
    cr_assert_eq(listening_sockets(d.pid), 0, "metrics_listen is unset, yet the daemon listens on TCP");
}

Test(metrics, check_config_names_a_metrics_address_it_cannot_use)
{
    char *argv[] = {(char *)tsup_cbd_path(), "--check-config", "/dev/null", "--metrics-listen=localhost:9464", NULL};
    char *out = NULL;
    int rc = tsup_run(argv, &out, true);
    cr_assert_eq(rc, 2, "--check-config took a name for an address: %s", out);
    cr_assert_not_null(strstr(out, "metrics_listen"), "%s", out);
    cr_assert_not_null(strstr(out, "'localhost:9464' is not a listen address"), "%s", out);
    free(out);
}

Test(metrics, cbctl_metrics_prints_what_a_scrape_shows_every_circuit_in_pages)
{
    enum { CIRCUITS = 700 }; /* with long names, more than one frame of rows */
    int port = start_with_metrics();
    char name[CB_NAME_MAX + 1];
    for (int i = 0; i < CIRCUITS; i++) {
        snprintf(name, sizeof name, "%0120d-%d", 0, i);
        tsup_circuit(cl, name, NULL);
    }
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cr_assert_eq(tsup_record_n(tsup_circuit(cl, "opens \"quoted\"\nname", &cfg), CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(tsup_circuit(cl, "opens \"quoted\"\nname", &cfg), CB_OPEN));

    char *scraped = scrape(port), *text = cbctl_metrics();
    for (int i = 0; i < CIRCUITS; i++) {
        char series[256];
        snprintf(series, sizeof series, "cbd_circuit_state{circuit=\"%0120d-%d\",state=\"closed\"}", 0, i);
        assert_sample(text, series, 1);
    }
    assert_sample(text, "cbd_circuit_state{circuit=\"opens \\\"quoted\\\"\\nname\",state=\"open\"}", 1);
    promtool_accepts(text);
    char *a = steady_lines(text), *b = steady_lines(scraped);
    size_t same = 0;
    while (a[same] != '\0' && a[same] == b[same])
        same++;
    cr_assert(a[same] == b[same], "cbctl metrics and the scrape differ beyond ages and the endpoint's answers, "
              "at byte %zu:\n%.300s\n---\n%.300s", same, a + same, b + same);
    cr_assert_not_null(strstr(text, "cbd_metrics_http_responses_total{code=\"200\"} 1\n"),
                       "cbctl metrics shows the endpoint's answers too:\n%.4000s", text);
    free(a);
    free(b);
    free(text);
    free(scraped);
}

Test(metrics, a_probe_permit_is_counted_once_and_rejections_beside_it)
{
    int port = start_with_metrics();
    cb_config cfg = tsup_config(1, 1, 1, 200);
    cb_circuit *c = tsup_circuit(cl, "probed", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    int rejected = 0;
    cb_ticket probe;
    cr_assert(tsup_wait_until(({
                                  probe = cb_allow(c);
                                  rejected += !cb_permitted(probe);
                                  cb_ticket_is_probe(probe);
                              }),
                              TSUP_LIVENESS_MS),
              "no probe ticket");
    cb_record(c, probe, CB_SUCCESS);
    cr_assert(tsup_wait_state(c, CB_CLOSED));
    char *text = NULL;
    cr_assert(tsup_wait_until((free(text), text = scrape(port),
                               sample(text, "cbd_circuit_probes_total{circuit=\"probed\"}") == 1),
                              TSUP_LIVENESS_MS),
              "the probe was not counted:\n%.4000s", text);
    assert_sample(text, "cbd_circuit_calls_total{circuit=\"probed\",decision=\"rejected\"}", rejected);
    assert_sample(text, "cbd_circuit_transitions_total{circuit=\"probed\",from=\"open\",to=\"half_open\"}", 1);
    assert_sample(text, "cbd_circuit_transitions_total{circuit=\"probed\",from=\"half_open\",to=\"closed\"}", 1);
    free(text);
}
