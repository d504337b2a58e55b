/*
 * test_metrics.c - the Prometheus text of a snapshot (daemon/metrics.h)
 * and the /metrics endpoint, without a daemon.
 *
 * The renderer: names escaped as label values, every family with its HELP
 * and TYPE lines and its samples together, numbers as Prometheus reads
 * them, counters the daemon does not keep left out, and `promtool check
 * metrics` accepting the whole text.
 *
 * The endpoint runs on a loop of the test's own with a fill callback. HTTP
 * clients run on a thread of the test's while the loop runs on the test's
 * main thread with a 1 ms timer that counts its ticks: a client that stalls
 * or a flood of clients must not stop those ticks. Bounds are liveness
 * bounds only (a socket read gives up after CLIENT_WAIT_S).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "metrics.h"
#include "segment.h"

#define CLIENT_WAIT_S 30 /* a client read that waits this long means the server hung */
#define NOW_NS 1764240000000000000ll

/* ---- a snapshot with something in every family ----------------------------- */

static void fill_fixture(struct cbd_metrics_snapshot *s)
{
    s->now_ns = NOW_NS;
    s->version = CB_VERSION_STRING;
    s->layout = CB_SEG_MAJOR;
    s->instance = "default";
    s->start_time_ns = NOW_NS - 3600 * 1000000000ll + 123000000;
    s->calls_counted = (1u << CBD_METRICS_NCALLS) - 1;
    s->store = (struct cbd_metrics_store){.scheme = "redis", .online = 1, .counts_errors = true, .errors = 3};
    s->lanes = (struct cbd_metrics_lanes){.drained = 1000, .invalid = 2, .stale = 4, .dropped = 5, .reclaimed = 1,
                                          .in_use = 8};
    s->hooks = (struct cbd_hooks_stats){.started = 10, .succeeded = 7, .failed = 1, .timed_out = 1, .dropped = 2,
                                        .spawn_errors = 1};
    s->control.open = 3;
    s->control.admitted = 40;
    s->control.accept_errors = 1;
    s->control.ends[CBD_CONN_REFUSED_MAX] = 6;
    s->control.ends[CBD_CONN_IDLE] = 9;

    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(s);
    c->name = "payments";
    c->state = CB_OPEN;
    c->consecutive_failures = 5;
    c->opened_at_ns = NOW_NS - 1500000000; /* 1.5 s ago */
    c->sync_state = CB_SYNC_OK;
    c->synced_at = NOW_NS / 1000000000 - 2;
    c->transitions[CB_CLOSED][CB_OPEN] = 1;
    for (unsigned k = 0; k < CBD_METRICS_NCALLS; k++)
        c->calls[k] = 100 + k;

    c = cbd_metrics_snapshot_add_circuit(s);
    c->name = "odd \"name\" with \\ and\nnewline, é, 🚀, tab\t";
    c->state = CB_HALF_OPEN;
    c->forced = true;
    c->opened_at_ns = NOW_NS - 30 * 1000000000ll;
    c->sync_state = CB_SYNC_PENDING;
    c->synced_at = NOW_NS / 1000000000 - 40;
    c->transitions[CB_CLOSED][CB_OPEN] = 2;
    c->transitions[CB_OPEN][CB_HALF_OPEN] = 2;
    c->transitions[CB_HALF_OPEN][CB_OPEN] = 1;

    c = cbd_metrics_snapshot_add_circuit(s);
    c->name = "search";
    c->state = CB_CLOSED;
    c->disabled = true;
    c->consecutive_failures = 2;
    c->sync_state = CB_SYNC_OK;
    c->synced_at = 0; /* never agreed yet */
}

static char *render(const struct cbd_metrics_snapshot *s, size_t *len)
{
    char *text = NULL;
    size_t n = 0;
    cr_assert_eq(cbd_metrics_render(s, &text, &n), 0);
    cr_assert_not_null(text);
    cr_assert_eq(strlen(text), n, "the text has no NUL inside and len counts it");
    if (len != NULL)
        *len = n;
    return text;
}

static char *render_fixture(void)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    fill_fixture(&s);
    char *text = render(&s, NULL);
    cbd_metrics_snapshot_free(&s);
    return text;
}

/* The whole line of text that starts with prefix, or NULL. */
static const char *line_starting(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0'; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0)
            return p;
    return NULL;
}

static void expect_line(const char *text, const char *line)
{
    const char *p = line_starting(text, line);
    cr_expect(p != NULL && p[strlen(line)] == '\n', "no line '%s' in:\n%s", line, text);
}

/* ---- the renderer ---------------------------------------------------------------- */

TestSuite(render);

Test(render, circuit_names_are_escaped_as_label_values)
{
    char *text = render_fixture();
    expect_line(text, "cbd_circuit_state{circuit=\"odd \\\"name\\\" with \\\\ and\\nnewline, é, 🚀, tab\t\","
                      "state=\"half_open\"} 1");
    expect_line(text, "cbd_circuit_state{circuit=\"payments\",state=\"open\"} 1");
    free(text);
}

Test(render, every_family_has_help_and_type_lines_and_its_samples_together)
{
    static const struct {
        const char *name, *type;
    } want[] = {
        {"cbd_build_info", "gauge"},
        {"cbd_start_time_seconds", "gauge"},
        {"cbd_circuit_state", "gauge"},
        {"cbd_circuit_forced", "gauge"},
        {"cbd_circuit_disabled", "gauge"},
        {"cbd_circuit_transitions_total", "counter"},
        {"cbd_circuit_calls_total", "counter"},
        {"cbd_circuit_outcomes_total", "counter"},
        {"cbd_circuit_slow_calls_total", "counter"},
        {"cbd_circuit_probes_total", "counter"},
        {"cbd_circuit_consecutive_failures", "gauge"},
        {"cbd_circuit_open_age_seconds", "gauge"},
        {"cbd_circuit_store_sync_age_seconds", "gauge"},
        {"cbd_store_info", "gauge"},
        {"cbd_store_online", "gauge"},
        {"cbd_store_errors_total", "counter"},
        {"cbd_store_sync_age_seconds", "gauge"},
        {"cbd_lane_events_drained_total", "counter"},
        {"cbd_lane_events_invalid_total", "counter"},
        {"cbd_lane_events_stale_total", "counter"},
        {"cbd_lane_events_dropped_total", "counter"},
        {"cbd_lanes_in_use", "gauge"},
        {"cbd_lanes_reclaimed_total", "counter"},
        {"cbd_hook_runs_total", "counter"},
        {"cbd_hook_successes_total", "counter"},
        {"cbd_hook_failures_total", "counter"},
        {"cbd_hook_timeouts_total", "counter"},
        {"cbd_hook_dropped_total", "counter"},
        {"cbd_hook_spawn_errors_total", "counter"},
        {"cbd_control_connections", "gauge"},
        {"cbd_control_connections_total", "counter"},
        {"cbd_control_connections_refused_total", "counter"},
        {"cbd_control_connections_closed_total", "counter"},
        {"cbd_control_accept_errors_total", "counter"},
    };
    char *text = render_fixture();
    size_t n = sizeof want / sizeof want[0];
    for (size_t i = 0; i < n; i++) {
        char help[128], type[128], sample[128], sample_labels[128];
        snprintf(help, sizeof help, "# HELP %s ", want[i].name);
        snprintf(type, sizeof type, "# TYPE %s %s\n", want[i].name, want[i].type);
        snprintf(sample, sizeof sample, "%s ", want[i].name);
        snprintf(sample_labels, sizeof sample_labels, "%s{", want[i].name);
        const char *h = line_starting(text, help), *t = strstr(text, type);
        cr_expect(h != NULL && t != NULL && h < t, "%s: no HELP line, or not before its TYPE line", want[i].name);
        cr_expect(line_starting(text, sample) != NULL || line_starting(text, sample_labels) != NULL,
                  "%s: no sample", want[i].name);
    }
    /* Samples of a family follow its TYPE line without another family in
     * between: every sample's name is the last TYPE line's (or it). */
    char family[128] = "";
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strncmp(line, "# TYPE ", 7) == 0) {
            snprintf(family, sizeof family, "%.*s", (int)strcspn(line + 7, " "), line + 7);
            continue;
        }
        if (line[0] == '#')
            continue;
        size_t name_len = strcspn(line, "{ ");
        cr_expect(name_len == strlen(family) && strncmp(line, family, name_len) == 0,
                  "sample '%s' is not under its family's TYPE line (last: %s)", line, family);
    }
    free(text);
}

Test(render, one_gauge_per_state_says_which_state_the_circuit_is_in)
{
    char *text = render_fixture();
    expect_line(text, "cbd_circuit_state{circuit=\"payments\",state=\"closed\"} 0");
    expect_line(text, "cbd_circuit_state{circuit=\"payments\",state=\"open\"} 1");
    expect_line(text, "cbd_circuit_state{circuit=\"payments\",state=\"half_open\"} 0");
    expect_line(text, "cbd_circuit_state{circuit=\"search\",state=\"closed\"} 1");
    expect_line(text, "cbd_circuit_forced{circuit=\"payments\"} 0");
    expect_line(text, "cbd_circuit_disabled{circuit=\"search\"} 1");
    free(text);
}

Test(render, transitions_show_every_pair_of_different_states_and_flag_changes_once_they_happen)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
    c->name = "x";
    c->transitions[CB_CLOSED][CB_OPEN] = 7;
    c->transitions[CB_OPEN][CB_OPEN] = 1; /* forced open while open */
    char *text = render(&s, NULL);
    expect_line(text, "cbd_circuit_transitions_total{circuit=\"x\",from=\"closed\",to=\"open\"} 7");
    expect_line(text, "cbd_circuit_transitions_total{circuit=\"x\",from=\"half_open\",to=\"closed\"} 0");
    expect_line(text, "cbd_circuit_transitions_total{circuit=\"x\",from=\"open\",to=\"open\"} 1");
    cr_expect_null(strstr(text, "from=\"closed\",to=\"closed\""));
    cr_expect_null(strstr(text, "from=\"half_open\",to=\"half_open\""));
    size_t pairs = 0;
    for (const char *p = text; (p = strstr(p, "cbd_circuit_transitions_total{")) != NULL; p++)
        pairs++;
    cr_expect_eq(pairs, 7, "6 pairs of different states and the one flag change, got %zu", pairs);
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, call_counters_the_daemon_does_not_keep_are_not_rendered)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    s.calls_counted = CBD_CALL_BIT(CBD_CALL_ALLOWED) | CBD_CALL_BIT(CBD_CALL_FAILED);
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
    c->name = "x";
    c->calls[CBD_CALL_ALLOWED] = 5;
    c->calls[CBD_CALL_REJECTED] = 99;
    c->calls[CBD_CALL_FAILED] = 2;
    char *text = render(&s, NULL);
    expect_line(text, "cbd_circuit_calls_total{circuit=\"x\",decision=\"allowed\"} 5");
    expect_line(text, "cbd_circuit_outcomes_total{circuit=\"x\",outcome=\"failure\"} 2");
    cr_expect_null(strstr(text, "decision=\"rejected\""));
    cr_expect_null(strstr(text, "outcome=\"success\""));
    cr_expect_null(strstr(text, "outcome=\"ignored\""));
    cr_expect_null(strstr(text, "cbd_circuit_slow_calls_total"), "a family without samples has no HELP either");
    cr_expect_null(strstr(text, "cbd_circuit_probes_total"));
    free(text);

    s.calls_counted = 0;
    text = render(&s, NULL);
    cr_expect_null(strstr(text, "cbd_circuit_calls_total"));
    cr_expect_null(strstr(text, "cbd_circuit_outcomes_total"));
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, numbers_are_integers_and_seconds_with_three_decimals)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    s.now_ns = NOW_NS;
    s.start_time_ns = NOW_NS + 5000000; /* ...000.005 */
    s.calls_counted = CBD_CALL_BIT(CBD_CALL_ALLOWED);
    s.lanes.drained = UINT64_MAX;
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
    c->name = "a";
    c->state = CB_OPEN;
    c->opened_at_ns = NOW_NS - 1500000000;
    c->calls[CBD_CALL_ALLOWED] = 0;
    c = cbd_metrics_snapshot_add_circuit(&s);
    c->name = "b";
    c->state = CB_OPEN;
    c->opened_at_ns = NOW_NS + 1000000000; /* the wall clock stepped back: no negative age */
    char *text = render(&s, NULL);
    expect_line(text, "cbd_start_time_seconds 1764240000.005");
    expect_line(text, "cbd_lane_events_drained_total 18446744073709551615");
    expect_line(text, "cbd_circuit_open_age_seconds{circuit=\"a\"} 1.500");
    expect_line(text, "cbd_circuit_open_age_seconds{circuit=\"b\"} 0.000");
    expect_line(text, "cbd_circuit_calls_total{circuit=\"a\",decision=\"allowed\"} 0");
    cr_expect_eq(text[strlen(text) - 1], '\n', "the last line ends with a line feed");
    cr_expect_null(strstr(text, "\n\n"), "no empty line");
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, ages_show_only_where_they_mean_something)
{
    char *text = render_fixture();
    cr_expect_null(strstr(text, "cbd_circuit_open_age_seconds{circuit=\"search\"}"), "search is closed");
    cr_expect_null(strstr(text, "cbd_circuit_store_sync_age_seconds{circuit=\"search\"}"), "search never synced");
    expect_line(text, "cbd_circuit_store_sync_age_seconds{circuit=\"payments\"} 2.000");
    expect_line(text, "cbd_store_sync_age_seconds 40.000");
    expect_line(text, "cbd_store_info{store=\"redis\"} 1");
    expect_line(text, "cbd_store_online 1");
    expect_line(text, "cbd_store_errors_total 3");
    free(text);

    struct cbd_metrics_snapshot s; /* the local store: nothing to sync, no error count, health unknown */
    cbd_metrics_snapshot_init(&s);
    s.now_ns = NOW_NS;
    s.store = (struct cbd_metrics_store){.scheme = "local", .online = -1};
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
    c->name = "x";
    c->sync_state = CB_SYNC_LOCAL;
    c->synced_at = NOW_NS / 1000000000;
    text = render(&s, NULL);
    expect_line(text, "cbd_store_info{store=\"local\"} 1");
    cr_expect_null(strstr(text, "sync_age"));
    cr_expect_null(strstr(text, "cbd_store_online"));
    cr_expect_null(strstr(text, "cbd_store_errors_total"));
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, the_control_socket_ends_are_labelled_by_reason)
{
    char *text = render_fixture();
    expect_line(text, "cbd_control_connections_refused_total{reason=\"max_connections\"} 6");
    expect_line(text, "cbd_control_connections_refused_total{reason=\"per_uid\"} 0");
    expect_line(text, "cbd_control_connections_closed_total{reason=\"idle\"} 9");
    expect_line(text, "cbd_control_connections_closed_total{reason=\"hangup\"} 0");
    cr_expect_null(strstr(text, "closed_total{reason=\"max_connections\""));
    expect_line(text, "cbd_build_info{version=\"" CB_VERSION_STRING "\",layout=\"2\",cbd_instance=\"default\"} 1");
    free(text);
}

Test(render, a_daemon_without_circuits_or_store_renders_its_own_families_only)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    s.calls_counted = (1u << CBD_METRICS_NCALLS) - 1;
    char *text = render(&s, NULL);
    cr_expect_null(strstr(text, "cbd_circuit_"));
    cr_expect_null(strstr(text, "cbd_store_"));
    cr_expect_null(strstr(text, "cbd_start_time_seconds"));
    cr_expect_null(strstr(text, "cbd_metrics_http_responses_total"), "only the endpoint adds its own counts");
    expect_line(text, "cbd_lanes_in_use 0");
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, a_snapshot_reused_after_clear_keeps_no_old_circuit)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    for (int i = 0; i < 1000; i++) { /* past the first growth of the rows */
        struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
        cr_assert_not_null(c);
        c->name = "retired-circuit";
    }
    cbd_metrics_snapshot_clear(&s);
    cr_expect_eq(s.ncircuits, 0);
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(&s);
    cr_expect_eq(c->consecutive_failures, 0);
    c->name = "new";
    char *text = render(&s, NULL);
    cr_expect_null(strstr(text, "retired-circuit"));
    free(text);
    cbd_metrics_snapshot_free(&s);
}

Test(render, promtool_accepts_the_text)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        cr_skip_test("promtool not found: install Debian's prometheus package (scripts/setup.sh does) to run this check");
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    fill_fixture(&s);
    s.has_http = true;
    s.http_responses[CBD_HTTP_200] = 12;
    char *text = render(&s, NULL);
    char path[] = "/tmp/cbd-test-metrics-XXXXXX", cmd[256], out[4096] = "";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    int status = pclose(p);
    unlink(path);
    cr_expect_eq(status, 0, "promtool check metrics failed:\n%s\non:\n%s", out, text);
    cr_expect_eq(n, 0, "promtool has remarks:\n%s", out);
    free(text);
    cbd_metrics_snapshot_free(&s);
}

/* ---- the listen address ------------------------------------------------------------ */

Test(listen, addresses_parse_as_an_operator_writes_them)
{
    static const struct {
        const char *text;
        int family;
        const char *host;
        unsigned port;
    } good[] = {
        {"127.0.0.1:9464", AF_INET, "127.0.0.1", 9464},
        {"0.0.0.0:80", AF_INET, "0.0.0.0", 80},
        {"[::1]:9464", AF_INET6, "::1", 9464},
        {"[::]:0", AF_INET6, "::", 0},
        {"9464", AF_INET, "127.0.0.1", 9464},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct sockaddr_storage a;
        socklen_t len;
        char why[256] = "", host[64];
        cr_assert_eq(cbd_metrics_parse_listen(good[i].text, &a, &len, why, sizeof why), 0, "%s: %s", good[i].text,
                     why);
        cr_expect_eq(a.ss_family, good[i].family, "%s", good[i].text);
        const void *in = a.ss_family == AF_INET ? (const void *)&((struct sockaddr_in *)&a)->sin_addr
                                                : (const void *)&((struct sockaddr_in6 *)&a)->sin6_addr;
        unsigned port = ntohs(a.ss_family == AF_INET ? ((struct sockaddr_in *)&a)->sin_port
                                                     : ((struct sockaddr_in6 *)&a)->sin6_port);
        cr_expect_str_eq(inet_ntop(a.ss_family, in, host, sizeof host), good[i].host, "%s", good[i].text);
        cr_expect_eq(port, good[i].port, "%s", good[i].text);
    }
}

Test(listen, bad_addresses_are_refused_with_the_expected_forms)
{
    static const char *const bad[] = {"", "localhost:9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536",
                                      "127.0.0.1:-1", "127.0.0.1:94a", "::1:9464", "[::1]", "[::1]9464",
                                      "[127.0.0.1]:1", "[::1:1", "1.2.3.4.5:1", "999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct sockaddr_storage a;
        socklen_t len;
        char why[256] = "";
        cr_expect_eq(cbd_metrics_parse_listen(bad[i], &a, &len, why, sizeof why), -EINVAL, "'%s' accepted", bad[i]);
        cr_expect(strstr(why, "expected IPv4:PORT, [IPv6]:PORT or PORT") != NULL && strstr(why, bad[i]) != NULL,
                  "'%s': %s", bad[i], why);
    }
}

/* ---- the endpoint ---------------------------------------------------------------------- */

static uv_loop_t loop;
static struct cbd_metrics *metrics;
static _Atomic uint64_t ticks;     /* the loop's timer callbacks */
static _Atomic unsigned fills;     /* fill callbacks */
static _Atomic int fill_result;    /* what fill returns */

static int fill(void *arg, struct cbd_metrics_snapshot *s)
{
    (void)arg;
    atomic_fetch_add(&fills, 1);
    int rc = atomic_load(&fill_result);
    if (rc == 0)
        fill_fixture(s);
    return rc;
}

static void endpoint_setup(void)
{
    cr_assert_eq(uv_loop_init(&loop), 0);
    metrics = NULL;
    atomic_store(&ticks, 0);
    atomic_store(&fills, 0);
    atomic_store(&fill_result, 0);
}

static void endpoint_teardown(void)
{
    cbd_metrics_stop(metrics);
    uv_run(&loop, UV_RUN_DEFAULT); /* every handle closes */
    cr_expect_eq(uv_loop_close(&loop), 0, "a handle is left on the loop");
}

TestSuite(endpoint, .init = endpoint_setup, .fini = endpoint_teardown);

static void start(unsigned connection_limit, unsigned timeout_s, unsigned wait_ms)
{
    struct cbd_metrics_limits lim = {connection_limit, timeout_s, wait_ms};
    char why[256] = "";
    int rc = cbd_metrics_start_limits(&metrics, &loop, "127.0.0.1:0", &lim, fill, NULL, why, sizeof why);
    cr_assert_eq(rc, 0, "start: %s", why);
    cr_assert_neq(cbd_metrics_port(metrics), 0);
}

/* A connected client socket whose reads give up after CLIENT_WAIT_S. */
static int connect_to(int family, uint16_t port)
{
    struct sockaddr_storage a = {0};
    socklen_t len;
    if (family == AF_INET6) {
        struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&a;
        v6->sin6_family = AF_INET6;
        v6->sin6_addr = in6addr_loopback;
        v6->sin6_port = htons(port);
        len = sizeof *v6;
    } else {
        struct sockaddr_in *v4 = (struct sockaddr_in *)&a;
        v4->sin_family = AF_INET;
        v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        v4->sin_port = htons(port);
        len = sizeof *v4;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct timeval tv = {.tv_sec = CLIENT_WAIT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, len) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

struct reply {
    int status;        /* 0: the server closed without an answer */
    bool timed_out;    /* the read gave up: the server hung */
    char head[1024];
    char *body;        /* malloc'd, NUL terminated */
    size_t body_len;
};

/* Reads until the server closes (the requests say Connection: close). */
static struct reply read_reply(int fd)
{
    struct reply r = {0};
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        r.timed_out = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        break;
    }
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (end != NULL && sscanf(buf, "HTTP/1.%*d %d", &r.status) == 1) {
        snprintf(r.head, sizeof r.head, "%.*s", (int)(end - buf), buf);
        r.body_len = len - (size_t)(end + 4 - buf);
        r.body = malloc(r.body_len + 1);
        memcpy(r.body, end + 4, r.body_len + 1);
    }
    free(buf);
    return r;
}

static struct reply request_on(int family, uint16_t port, const char *method, const char *path)
{
    char req[256];
    int fd = connect_to(family, port);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", method, path);
    cr_assert_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    struct reply r = read_reply(fd);
    close(fd);
    return r;
}

static struct reply request(const char *method, const char *path)
{
    return request_on(AF_INET, cbd_metrics_port(metrics), method, path);
}

/* Runs fn(arg) on a client thread while this thread runs the loop, with a
 * 1 ms timer counting ticks; returns when fn has returned. */
struct client {
    void (*fn)(void *arg);
    void *arg;
    uv_async_t done;
};

static void *client_main(void *p)
{
    struct client *c = p;
    c->fn(c->arg);
    uv_async_send(&c->done);
    return NULL;
}

static void on_client_done(uv_async_t *h)
{
    uv_stop(h->loop);
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    atomic_fetch_add(&ticks, 1);
}

static void run_client(void (*fn)(void *arg), void *arg)
{
    struct client c = {.fn = fn, .arg = arg};
    uv_timer_t tick;
    pthread_t thread;
    cr_assert_eq(uv_async_init(&loop, &c.done, on_client_done), 0);
    cr_assert_eq(uv_timer_init(&loop, &tick), 0);
    cr_assert_eq(uv_timer_start(&tick, on_tick, 1, 1), 0);
    cr_assert_eq(pthread_create(&thread, NULL, client_main, &c), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    pthread_join(thread, NULL);
    uv_close((uv_handle_t *)&c.done, NULL);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&loop, UV_RUN_NOWAIT); /* the two closes complete */
}

struct exchange {
    const char *method, *path;
    int family; /* 0: AF_INET */
    struct reply reply;
};

static void do_exchange(void *arg)
{
    struct exchange *x = arg;
    x->reply = request_on(x->family ? x->family : AF_INET, cbd_metrics_port(metrics), x->method, x->path);
}

static struct reply exchange(const char *method, const char *path)
{
    struct exchange x = {.method = method, .path = path};
    run_client(do_exchange, &x);
    return x.reply;
}

static char *expected_body(uint64_t answered_200)
{
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    fill_fixture(&s);
    s.has_http = true;
    s.http_responses[CBD_HTTP_200] = answered_200;
    char *text = render(&s, NULL);
    cbd_metrics_snapshot_free(&s);
    return text;
}

Test(endpoint, get_metrics_answers_the_rendering_of_what_the_daemon_fills)
{
    start(8, 5, 10000);
    for (uint64_t i = 0; i < 2; i++) {
        struct reply r = exchange("GET", "/metrics");
        cr_assert_eq(r.status, 200, "%s", r.head);
        cr_expect(strstr(r.head, "Content-Type: " CBD_METRICS_CONTENT_TYPE) != NULL, "%s", r.head);
        char *want = expected_body(i); /* the second scrape counts the first */
        cr_expect_str_eq(r.body, want);
        free(want);
        free(r.body);
    }
    cr_expect_eq(atomic_load(&fills), 2);
}

static void do_two_scrapes_on_one_connection(void *arg)
{
    struct reply *r = arg;
    int fd = connect_to(AF_INET, cbd_metrics_port(metrics));
    cr_assert_geq(fd, 0);
    const char *reqs = "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"
                       "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    cr_assert_eq(send(fd, reqs, strlen(reqs), MSG_NOSIGNAL), (ssize_t)strlen(reqs));
    *r = read_reply(fd);
    close(fd);
}

Test(endpoint, one_connection_carries_several_scrapes)
{
    start(8, 5, 10000);
    struct reply r;
    run_client(do_two_scrapes_on_one_connection, &r);
    cr_assert_eq(r.status, 200, "%s", r.head);
    cr_expect(strstr(r.head, "Connection: close") == NULL, "the first answer closes the connection:\n%s", r.head);
    cr_expect(strstr(r.body, "HTTP/1.1 200 OK\r\n") != NULL, "no second answer on the connection");
    cr_expect_eq(atomic_load(&fills), 2);
    free(r.body);
}

Test(endpoint, head_answers_like_get_without_a_body)
{
    start(8, 5, 10000);
    struct reply r = exchange("HEAD", "/metrics");
    cr_expect_eq(r.status, 200, "%s", r.head);
    cr_expect_eq(r.body_len, 0);
    free(r.body);
}

Test(endpoint, other_paths_are_not_found_and_other_methods_not_allowed)
{
    start(8, 5, 10000);
    static const char *const paths[] = {"/", "/metrics/", "/metricsx", "/favicon.ico", "/../metrics"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        struct reply r = exchange("GET", paths[i]);
        cr_expect_eq(r.status, 404, "GET %s: %s", paths[i], r.head);
        free(r.body);
    }
    static const char *const methods[] = {"POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        struct reply r = exchange(methods[i], "/metrics");
        cr_expect_eq(r.status, 405, "%s /metrics: %s", methods[i], r.head);
        cr_expect(strstr(r.head, "Allow: GET, HEAD") != NULL, "%s", r.head);
        free(r.body);
    }
    cr_expect_eq(atomic_load(&fills), 0, "nothing but GET /metrics asks the loop");
}

Test(endpoint, garbage_requests_get_an_error_and_the_endpoint_stays_up)
{
    start(8, 1, 10000);
    static const char *const garbage[] = {"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                                          "GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
                                          "GET /metrics HTTP/9.9\r\n\r\n", "GET\r\n\r\n", "\r\n\r\n\r\n",
                                          "GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n"};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
        int fd = connect_to(AF_INET, cbd_metrics_port(metrics));
        cr_assert_geq(fd, 0);
        send(fd, garbage[i], strlen(garbage[i]), MSG_NOSIGNAL);
        struct reply r = read_reply(fd);
        close(fd);
        cr_expect(!r.timed_out, "garbage %zu: the server neither answered nor closed", i);
        cr_expect(r.status == 0 || r.status >= 400, "garbage %zu answered %d", i, r.status);
        free(r.body);
    }
    /* headers past the connection's memory */
    size_t big = 64 * 1024;
    char *huge = malloc(big + 64);
    int n = snprintf(huge, 64, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(huge + n, 'a', big);
    memcpy(huge + n + big, "\r\n\r\n", 4);
    int fd = connect_to(AF_INET, cbd_metrics_port(metrics));
    cr_assert_geq(fd, 0);
    send(fd, huge, (size_t)n + big + 4, MSG_NOSIGNAL);
    struct reply r = read_reply(fd);
    close(fd);
    free(huge);
    cr_expect(!r.timed_out && (r.status == 0 || r.status >= 400), "huge headers answered %d", r.status);
    free(r.body);

    r = exchange("GET", "/metrics");
    cr_expect_eq(r.status, 200);
    free(r.body);
}

Test(endpoint, a_failing_fill_answers_503)
{
    start(8, 5, 10000);
    atomic_store(&fill_result, -EAGAIN);
    struct reply r = exchange("GET", "/metrics");
    cr_expect_eq(r.status, 503, "%s", r.head);
    free(r.body);
    atomic_store(&fill_result, 0);
    r = exchange("GET", "/metrics");
    cr_expect_eq(r.status, 200, "%s", r.head);
    cr_expect(strstr(r.body, "cbd_metrics_http_responses_total{code=\"503\"} 1\n") != NULL, "%s", r.body);
    free(r.body);
}

Test(endpoint, a_loop_that_does_not_run_costs_the_scrape_a_503_not_a_hang)
{
    start(8, 5, 100);
    struct reply r = request("GET", "/metrics"); /* on this thread: the loop is not running */
    cr_expect(!r.timed_out);
    cr_expect_eq(r.status, 503, "%s", r.head);
    cr_expect_eq(atomic_load(&fills), 0);
    free(r.body);
}

/* A client that sends half a request and stalls. */
struct stall {
    uint64_t ticks_during;     /* loop ticks between the stall's start and its end */
    struct reply other;        /* a full scrape made meanwhile */
    struct reply stalled;      /* what the stalled client read */
};

static void do_stall(void *arg)
{
    struct stall *st = arg;
    int fd = connect_to(AF_INET, cbd_metrics_port(metrics));
    cr_assert_geq(fd, 0);
    const char *half = "GET /metrics HTTP/1.1\r\nHost: te";
    cr_assert_eq(send(fd, half, strlen(half), MSG_NOSIGNAL), (ssize_t)strlen(half));
    uint64_t t0 = atomic_load(&ticks);
    st->other = request("GET", "/metrics");
    st->stalled = read_reply(fd); /* returns when the server closes it, or after CLIENT_WAIT_S */
    st->ticks_during = atomic_load(&ticks) - t0;
    close(fd);
}

Test(endpoint, a_stalled_client_does_not_delay_the_loop_and_is_cut_off)
{
    start(8, 1, 10000);
    struct stall st = {0};
    run_client(do_stall, &st);
    cr_expect_eq(st.other.status, 200, "a scrape while another client stalls: %s", st.other.head);
    cr_expect(!st.stalled.timed_out, "the stalled client was not cut off by the connection timeout");
    cr_expect_eq(st.stalled.status == 0 || st.stalled.status >= 400, 1, "the stalled request got %d",
                 st.stalled.status);
    cr_expect_geq(st.ticks_during, 2, "the loop's timer stopped while a client stalled");
    free(st.other.body);
    free(st.stalled.body);
}

#define FLOOD 200

struct flood {
    unsigned ok, closed, hung, connect_failed;
    uint64_t ticks_during;
};

static void do_flood(void *arg)
{
    struct flood *f = arg;
    int fds[FLOOD];
    const char *req = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    uint64_t t0 = atomic_load(&ticks);
    for (int i = 0; i < FLOOD; i++) {
        fds[i] = connect_to(AF_INET, cbd_metrics_port(metrics));
        if (fds[i] < 0)
            f->connect_failed++;
        else
            send(fds[i], req, strlen(req), MSG_NOSIGNAL);
    }
    for (int i = 0; i < FLOOD; i++) {
        if (fds[i] < 0)
            continue;
        struct reply r = read_reply(fds[i]);
        close(fds[i]);
        f->hung += r.timed_out;
        f->ok += r.status == 200;
        f->closed += !r.timed_out && r.status != 200;
        free(r.body);
    }
    f->ticks_during = atomic_load(&ticks) - t0;
}

Test(endpoint, two_hundred_parallel_connections_are_served_or_refused_while_the_loop_runs)
{
    start(16, 5, 10000);
    struct flood f = {0};
    run_client(do_flood, &f);
    cr_log_info("flood: %u answered 200, %u closed without 200, %u connects failed; %llu loop ticks meanwhile", f.ok,
                f.closed, f.connect_failed, (unsigned long long)f.ticks_during);
    cr_expect_eq(f.hung, 0, "%u connections neither answered nor closed", f.hung);
    cr_expect_eq(f.ok + f.closed + f.connect_failed, FLOOD);
    cr_expect_gt(f.ok, 0, "no scrape was answered");
    cr_expect_geq(f.ticks_during, 2, "the loop's timer stopped during the flood");
    struct reply r = exchange("GET", "/metrics");
    cr_expect_eq(r.status, 200, "after the flood: %s", r.head);
    free(r.body);
}

Test(endpoint, ipv6_loopback_is_served)
{
    struct cbd_metrics_limits lim = {8, 5, 10000};
    char why[256] = "";
    int rc = cbd_metrics_start_limits(&metrics, &loop, "[::1]:0", &lim, fill, NULL, why, sizeof why);
    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT)
        cr_skip_test("no IPv6 loopback here: %s", why);
    cr_assert_eq(rc, 0, "%s", why);
    struct exchange x = {.method = "GET", .path = "/metrics", .family = AF_INET6};
    run_client(do_exchange, &x);
    cr_expect_eq(x.reply.status, 200, "%s", x.reply.head);
    free(x.reply.body);
    cr_expect_eq(connect_to(AF_INET, cbd_metrics_port(metrics)), -ECONNREFUSED, "[::1] listens on IPv4 too");
}

Test(endpoint, a_port_in_use_is_refused_with_the_reason)
{
    start(8, 5, 10000);
    char listen_on[64], why[256] = "";
    struct cbd_metrics *second = NULL;
    snprintf(listen_on, sizeof listen_on, "127.0.0.1:%u", cbd_metrics_port(metrics));
    int rc = cbd_metrics_start(&second, &loop, listen_on, fill, NULL, why, sizeof why);
    cr_expect_eq(rc, -EADDRINUSE, "%d: %s", rc, why);
    cr_expect(strstr(why, listen_on) != NULL && strstr(why, "in use") != NULL, "%s", why);
    cr_expect_null(second);
}

static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 4096; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

Test(endpoint, stop_joins_the_thread_and_releases_the_socket)
{
    int before = open_fds();
    start(8, 5, 10000);
    uint16_t port = cbd_metrics_port(metrics);
    struct reply r = exchange("GET", "/metrics");
    cr_expect_eq(r.status, 200);
    free(r.body);
    cbd_metrics_stop(metrics);
    metrics = NULL;
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_expect_eq(open_fds(), before, "a descriptor outlived stop");
    cr_expect_eq(connect_to(AF_INET, port), -ECONNREFUSED);
}

/* A scrape waiting for a loop that is not running, and the loop stops the endpoint. */
static void *scrape_thread(void *arg)
{
    struct reply *r = arg;
    *r = request("GET", "/metrics");
    return NULL;
}

Test(endpoint, stop_answers_a_waiting_scrape_at_once)
{
    start(8, 5, 3600 * 1000); /* the scrape would wait an hour for the loop */
    uv_run(&loop, UV_RUN_NOWAIT); /* the async handle is now in the loop's epoll set */
    struct reply r;
    pthread_t thread;
    cr_assert_eq(pthread_create(&thread, NULL, scrape_thread, &r), 0);
    struct pollfd pfd = {.fd = uv_backend_fd(&loop), .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, CLIENT_WAIT_S * 1000), 1, "the scrape never asked the loop");
    cbd_metrics_stop(metrics); /* the scrape is waiting: stop must not wait for it */
    metrics = NULL;
    pthread_join(thread, NULL);
    cr_expect(!r.timed_out, "the waiting scrape hung after stop");
    cr_expect(r.status == 503 || r.status == 0, "got %d", r.status);
    cr_expect_eq(atomic_load(&fills), 0);
    free(r.body);
}
