/*
 * metrics.c - the Prometheus text format of a snapshot, and the HTTP
 * endpoint that serves it.
 *
 * Owns: the family table (every metric's name, type and help, once), the
 * text, the endpoint's socket, libmicrohttpd's thread, one uv_async handle
 * and the last rendering. Must not touch: anything of the daemon. The HTTP
 * thread reads only what this file shares with it under `mu`; the daemon's
 * state is read by the fill callback, on the loop, and nowhere else.
 *
 * Renderer. Families come out in the table's order, each with its HELP and
 * TYPE lines and all its samples together (the format requires it); a
 * family with no sample (a counter the daemon does not keep, no store) is
 * left out entirely. Counters are the daemon's uint64s printed as
 * integers; ages are int64 nanoseconds printed as seconds with three
 * decimals, computed from one now_ns so a scrape is one consistent moment.
 * Label values (circuit names are any UTF-8 but NUL) escape backslash,
 * double quote and line feed, as the format says; nothing else needs it.
 *
 * Endpoint. libmicrohttpd runs one internal thread that polls every
 * connection (epoll) and calls on_request once a request is in; a slow or
 * stalled client costs a connection slot until connection_timeout_s of
 * inactivity, never the thread. Connections stay open between scrapes
 * (keep-alive). For GET /metrics the thread asks the loop for a rendering
 * and waits for it:
 *
 *     HTTP thread                       loop
 *     asked++ (my = asked)
 *     uv_async_send  ───────────────▶   on_async: want = asked
 *     wait on cv until answered >= my   fill + render (no lock held)
 *       or render_wait_ms pass          body = text, answered = want,
 *                                       broadcast
 *     copy body, answer 200             (or, on timeout, 503)
 *
 * The loop never waits for HTTP: it renders when it gets to it and takes
 * `mu` only to swap the body. Scrapes that arrive before the loop runs
 * share one rendering (on_async reads `asked` when it runs). A loop busy
 * for longer than render_wait_ms costs the scraper a 503, counted in
 * cbd_metrics_http_responses_total{code="503"}. Stopping sets `stopping`
 * first, so a waiting scrape ends at once, then joins the thread, then
 * closes the async handle.
 *
 * We bind the socket ourselves (and hand it to libmicrohttpd) so a bind
 * failure reaches the operator as errno and text, and port 0 works for
 * tests. The thread starts with every signal blocked: signals are the
 * loop's (uv_signal).
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "segment.h"

/* Memory per connection for the request line and headers: a scrape's are
 * small; larger requests are answered 431 by libmicrohttpd. */
#define CBD_METRICS_CONNECTION_MEMORY (16 * 1024)

/* ---- the family table ---------------------------------------------------- */

enum fam {
    FAM_BUILD_INFO,
    FAM_START_TIME,
    FAM_CIRCUIT_STATE,
    FAM_CIRCUIT_FORCED,
    FAM_CIRCUIT_DISABLED,
    FAM_CIRCUIT_TRANSITIONS,
    FAM_CIRCUIT_CALLS,
    FAM_CIRCUIT_OUTCOMES,
    FAM_CIRCUIT_SLOW,
    FAM_CIRCUIT_PROBES,
    FAM_CIRCUIT_CONSECUTIVE_FAILURES,
    FAM_CIRCUIT_OPEN_AGE,
    FAM_CIRCUIT_SYNC_AGE,
    FAM_STORE_INFO,
    FAM_STORE_ONLINE,
    FAM_STORE_ERRORS,
    FAM_STORE_SYNC_AGE,
    FAM_LANE_DRAINED,
    FAM_LANE_INVALID,
    FAM_LANE_STALE,
    FAM_LANE_DROPPED,
    FAM_LANES_IN_USE,
    FAM_LANES_RECLAIMED,
    FAM_HOOK_RUNS,
    FAM_HOOK_SUCCESSES,
    FAM_HOOK_FAILURES,
    FAM_HOOK_TIMEOUTS,
    FAM_HOOK_DROPPED,
    FAM_HOOK_SPAWN_ERRORS,
    FAM_CONTROL_CONNECTIONS,
    FAM_CONTROL_ADMITTED,
    FAM_CONTROL_REFUSED,
    FAM_CONTROL_CLOSED,
    FAM_CONTROL_ACCEPT_ERRORS,
    FAM_HTTP_RESPONSES,
    NFAMILIES
};

static const struct family {
    const char *name, *type, *help;
} families[NFAMILIES] = {
    [FAM_BUILD_INFO] = {"cbd_build_info", "gauge", "Always 1; labels: cbd's version, segment layout and instance."},
    [FAM_START_TIME] = {"cbd_start_time_seconds", "gauge", "When the daemon started, in seconds since the Unix epoch."},
    [FAM_CIRCUIT_STATE] = {"cbd_circuit_state", "gauge", "1 for the state the circuit is in, 0 for the others."},
    [FAM_CIRCUIT_FORCED] = {"cbd_circuit_forced", "gauge", "1 while an operator forces the circuit's state."},
    [FAM_CIRCUIT_DISABLED] = {"cbd_circuit_disabled", "gauge", "1 while the circuit is disabled (every call allowed)."},
    [FAM_CIRCUIT_TRANSITIONS] = {"cbd_circuit_transitions_total", "counter",
                                 "State transitions of the circuit since the daemon started, by from and to state."},
    [FAM_CIRCUIT_CALLS] = {"cbd_circuit_calls_total", "counter",
                           "Calls the circuit decided on this host, by decision (allowed, rejected)."},
    [FAM_CIRCUIT_OUTCOMES] = {"cbd_circuit_outcomes_total", "counter",
                              "Outcomes recorded on this host, by outcome (success, failure, ignored)."},
    [FAM_CIRCUIT_SLOW] = {"cbd_circuit_slow_calls_total", "counter",
                          "Recorded calls slower than the circuit's slow-call threshold."},
    [FAM_CIRCUIT_PROBES] = {"cbd_circuit_probes_total", "counter", "Half-open probe permits taken on this host."},
    [FAM_CIRCUIT_CONSECUTIVE_FAILURES] = {"cbd_circuit_consecutive_failures", "gauge",
                                          "Closed: the current streak of counted failures; otherwise the count it "
                                          "tripped with."},
    [FAM_CIRCUIT_OPEN_AGE] = {"cbd_circuit_open_age_seconds", "gauge",
                              "Seconds since the circuit last opened; only circuits that are not closed."},
    [FAM_CIRCUIT_SYNC_AGE] = {"cbd_circuit_store_sync_age_seconds", "gauge",
                              "Seconds since the circuit last agreed with the fleet store; fleet stores only."},
    [FAM_STORE_INFO] = {"cbd_store_info", "gauge", "Always 1; label store: the store's scheme."},
    [FAM_STORE_ONLINE] = {"cbd_store_online", "gauge", "1 while writes reach the store, 0 while it is offline."},
    [FAM_STORE_ERRORS] = {"cbd_store_errors_total", "counter", "Store operations that failed."},
    [FAM_STORE_SYNC_AGE] = {"cbd_store_sync_age_seconds", "gauge",
                            "The largest cbd_circuit_store_sync_age_seconds: how stale the stalest circuit is."},
    [FAM_LANE_DRAINED] = {"cbd_lane_events_drained_total", "counter", "Outcome events read from the workers' lanes."},
    [FAM_LANE_INVALID] = {"cbd_lane_events_invalid_total", "counter",
                          "Lane events that failed validation (bad slot, check, outcome or kind) and were ignored."},
    [FAM_LANE_STALE] = {"cbd_lane_events_stale_total", "counter",
                        "Lane events from an older epoch of their circuit, ignored."},
    [FAM_LANE_DROPPED] = {"cbd_lane_events_dropped_total", "counter",
                          "Outcome events a worker dropped because its lane was full."},
    [FAM_LANES_IN_USE] = {"cbd_lanes_in_use", "gauge", "Lanes owned by a worker thread now."},
    [FAM_LANES_RECLAIMED] = {"cbd_lanes_reclaimed_total", "counter", "Lanes taken back from dead workers."},
    [FAM_HOOK_RUNS] = {"cbd_hook_runs_total", "counter", "Hook commands started."},
    [FAM_HOOK_SUCCESSES] = {"cbd_hook_successes_total", "counter", "Hook commands that exited 0."},
    [FAM_HOOK_FAILURES] = {"cbd_hook_failures_total", "counter",
                           "Hook commands that exited non-zero or were killed by a signal."},
    [FAM_HOOK_TIMEOUTS] = {"cbd_hook_timeouts_total", "counter", "Hook commands killed after their timeout."},
    [FAM_HOOK_DROPPED] = {"cbd_hook_dropped_total", "counter",
                          "Transitions whose hooks were dropped from a full per-circuit queue."},
    [FAM_HOOK_SPAWN_ERRORS] = {"cbd_hook_spawn_errors_total", "counter", "Hook commands that could not be started."},
    [FAM_CONTROL_CONNECTIONS] = {"cbd_control_connections", "gauge", "Control socket connections open now."},
    [FAM_CONTROL_ADMITTED] = {"cbd_control_connections_total", "counter", "Control socket connections admitted."},
    [FAM_CONTROL_REFUSED] = {"cbd_control_connections_refused_total", "counter",
                             "Control socket connections refused, by the limit that refused them."},
    [FAM_CONTROL_CLOSED] = {"cbd_control_connections_closed_total", "counter",
                            "Control socket connections closed, by reason."},
    [FAM_CONTROL_ACCEPT_ERRORS] = {"cbd_control_accept_errors_total", "counter",
                                   "accept(2) failures on the control socket (EMFILE, ...)."},
    [FAM_HTTP_RESPONSES] = {"cbd_metrics_http_responses_total", "counter",
                            "Answers of this metrics endpoint, by HTTP status code (503: the loop was too busy)."},
};

/* How each call counter is shown: its family and, for families with
 * several, its label. */
static const struct {
    enum fam family;
    const char *label; /* NULL: the family has only this counter */
} call_samples[CBD_METRICS_NCALLS] = {
    [CBD_CALL_ALLOWED] = {FAM_CIRCUIT_CALLS, "decision=\"allowed\""},
    [CBD_CALL_REJECTED] = {FAM_CIRCUIT_CALLS, "decision=\"rejected\""},
    [CBD_CALL_SUCCEEDED] = {FAM_CIRCUIT_OUTCOMES, "outcome=\"success\""},
    [CBD_CALL_FAILED] = {FAM_CIRCUIT_OUTCOMES, "outcome=\"failure\""},
    [CBD_CALL_IGNORED] = {FAM_CIRCUIT_OUTCOMES, "outcome=\"ignored\""},
    [CBD_CALL_SLOW] = {FAM_CIRCUIT_SLOW, NULL},
    [CBD_CALL_PROBES] = {FAM_CIRCUIT_PROBES, NULL},
};

/* Label values of the control socket's ends: a refusal or a close. */
static const char *const refusal_reason[CBD_CONN_NENDS] = {
    [CBD_CONN_REFUSED_PER_UID] = "per_uid",
    [CBD_CONN_REFUSED_ADMIN_RESERVED] = "admin_reserved",
    [CBD_CONN_REFUSED_MAX] = "max_connections",
};
static const char *const close_reason[CBD_CONN_NENDS] = {
    [CBD_CONN_FRAME_TIMEOUT] = "frame_timeout", [CBD_CONN_IDLE] = "idle",   [CBD_CONN_BAD_FRAME] = "bad_frame",
    [CBD_CONN_SLOW_READER] = "slow_reader",     [CBD_CONN_HANGUP] = "hangup",
};
_Static_assert(CBD_CONN_NENDS == 9, "a new way a control connection ends: name it in refusal_reason or close_reason");

static const char *const state_label[3] = {[CB_CLOSED] = "closed", [CB_OPEN] = "open", [CB_HALF_OPEN] = "half_open"};
static const unsigned http_status[CBD_HTTP_NCODES] = {
    [CBD_HTTP_200] = 200, [CBD_HTTP_404] = 404, [CBD_HTTP_405] = 405, [CBD_HTTP_503] = 503};

/* ---- the snapshot --------------------------------------------------------- */

void cbd_metrics_snapshot_init(struct cbd_metrics_snapshot *s)
{
    memset(s, 0, sizeof *s);
}

void cbd_metrics_snapshot_clear(struct cbd_metrics_snapshot *s)
{
    struct cbd_metrics_circuit *rows = s->circuits;
    size_t cap = s->circuits_cap;
    memset(s, 0, sizeof *s);
    s->circuits = rows;
    s->circuits_cap = cap;
}

void cbd_metrics_snapshot_free(struct cbd_metrics_snapshot *s)
{
    free(s->circuits);
    memset(s, 0, sizeof *s);
}

struct cbd_metrics_circuit *cbd_metrics_snapshot_add_circuit(struct cbd_metrics_snapshot *s)
{
    if (s->ncircuits == s->circuits_cap) {
        size_t cap = s->circuits_cap ? 2 * s->circuits_cap : 64;
        struct cbd_metrics_circuit *rows = realloc(s->circuits, cap * sizeof *rows);
        if (rows == NULL)
            return NULL;
        s->circuits = rows;
        s->circuits_cap = cap;
    }
    struct cbd_metrics_circuit *row = &s->circuits[s->ncircuits++];
    memset(row, 0, sizeof *row);
    return row;
}

/* ---- text ------------------------------------------------------------------- */

/* A growing buffer; out of memory once, it stays so and the render fails. */
struct text {
    char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct text *t, const char *s, size_t n)
{
    if (t->oom)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (t->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (p == NULL) {
            t->oom = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void put_str(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

static void put_u64(struct text *t, uint64_t v)
{
    char digits[20], *d = digits + sizeof digits;
    do
        *--d = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    put(t, d, (size_t)(digits + sizeof digits - d));
}

/* ns as seconds with three decimals ("12.345"); negative counts as 0. */
static void put_seconds(struct text *t, int64_t ns)
{
    uint64_t ms = ns > 0 ? (uint64_t)ns / 1000000u : 0;
    char frac[5] = {'.', (char)('0' + ms / 100 % 10), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 0};
    put_u64(t, ms / 1000);
    put(t, frac, 4);
}

/* A label value between its quotes: \ " and line feed escaped. */
static void put_label_value(struct text *t, const char *v)
{
    const char *run = v;
    for (; *v != '\0'; v++) {
        const char *esc = *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : *v == '\n' ? "\\n" : NULL;
        if (esc == NULL)
            continue;
        put(t, run, (size_t)(v - run));
        put(t, esc, 2);
        run = v + 1;
    }
    put(t, run, (size_t)(v - run));
}

static void put_header(struct text *t, enum fam f)
{
    put_str(t, "# HELP ");
    put_str(t, families[f].name);
    put(t, " ", 1);
    put_str(t, families[f].help);
    put_str(t, "\n# TYPE ");
    put_str(t, families[f].name);
    put(t, " ", 1);
    put_str(t, families[f].type);
    put(t, "\n", 1);
}

/* `name{circuit="..."` - the caller adds more labels, then ends the sample. */
static void begin_circuit_sample(struct text *t, enum fam f, const struct cbd_metrics_circuit *c)
{
    put_str(t, families[f].name);
    put_str(t, "{circuit=\"");
    put_label_value(t, c->name);
    put(t, "\"", 1);
}

/* `} value\n` */
static void end_sample_u64(struct text *t, uint64_t v)
{
    put(t, "} ", 2);
    put_u64(t, v);
    put(t, "\n", 1);
}

static void end_sample_seconds(struct text *t, int64_t ns)
{
    put(t, "} ", 2);
    put_seconds(t, ns);
    put(t, "\n", 1);
}

/* A family of one unlabelled sample. */
static void put_single_u64(struct text *t, enum fam f, uint64_t v)
{
    put_header(t, f);
    put_str(t, families[f].name);
    put(t, " ", 1);
    put_u64(t, v);
    put(t, "\n", 1);
}

/* ---- the families ------------------------------------------------------------ */

static void render_build(struct text *t, const struct cbd_metrics_snapshot *s)
{
    put_header(t, FAM_BUILD_INFO);
    put_str(t, "cbd_build_info{version=\"");
    put_label_value(t, s->version ? s->version : "");
    put_str(t, "\",layout=\"");
    put_u64(t, s->layout);
    put_str(t, "\",cbd_instance=\"");
    put_label_value(t, s->instance ? s->instance : "");
    put_str(t, "\"} 1\n");
    if (s->start_time_ns > 0) {
        put_header(t, FAM_START_TIME);
        put_str(t, "cbd_start_time_seconds ");
        put_seconds(t, s->start_time_ns);
        put(t, "\n", 1);
    }
}

/* The age of c's last store agreement (ns), or -1 when it has none to show. */
static int64_t sync_age_ns(const struct cbd_metrics_snapshot *s, const struct cbd_metrics_circuit *c)
{
    if (c->sync_state == CB_SYNC_LOCAL || c->synced_at <= 0)
        return -1;
    int64_t age = s->now_ns - c->synced_at * 1000000000;
    return age > 0 ? age : 0;
}

static void render_circuit_states(struct text *t, const struct cbd_metrics_snapshot *s)
{
    if (s->ncircuits == 0)
        return;
    put_header(t, FAM_CIRCUIT_STATE);
    for (size_t i = 0; i < s->ncircuits; i++)
        for (unsigned st = 0; st < 3; st++) {
            begin_circuit_sample(t, FAM_CIRCUIT_STATE, &s->circuits[i]);
            put_str(t, ",state=\"");
            put_str(t, state_label[st]);
            put(t, "\"", 1);
            end_sample_u64(t, s->circuits[i].state == st);
        }
    put_header(t, FAM_CIRCUIT_FORCED);
    for (size_t i = 0; i < s->ncircuits; i++) {
        begin_circuit_sample(t, FAM_CIRCUIT_FORCED, &s->circuits[i]);
        end_sample_u64(t, s->circuits[i].forced);
    }
    put_header(t, FAM_CIRCUIT_DISABLED);
    for (size_t i = 0; i < s->ncircuits; i++) {
        begin_circuit_sample(t, FAM_CIRCUIT_DISABLED, &s->circuits[i]);
        end_sample_u64(t, s->circuits[i].disabled);
    }
}

/* Every from != to pair, 0 included, so rate() sees the series from the
 * start; a same-state transition (a flag change) once it happened. */
static void render_transitions(struct text *t, const struct cbd_metrics_snapshot *s)
{
    if (s->ncircuits == 0)
        return;
    put_header(t, FAM_CIRCUIT_TRANSITIONS);
    for (size_t i = 0; i < s->ncircuits; i++) {
        const struct cbd_metrics_circuit *c = &s->circuits[i];
        for (unsigned from = 0; from < 3; from++)
            for (unsigned to = 0; to < 3; to++) {
                if (from == to && c->transitions[from][to] == 0)
                    continue;
                begin_circuit_sample(t, FAM_CIRCUIT_TRANSITIONS, c);
                put_str(t, ",from=\"");
                put_str(t, state_label[from]);
                put_str(t, "\",to=\"");
                put_str(t, state_label[to]);
                put(t, "\"", 1);
                end_sample_u64(t, c->transitions[from][to]);
            }
    }
}

/* The call counters the daemon keeps, family by family. */
static void render_calls(struct text *t, const struct cbd_metrics_snapshot *s)
{
    static const enum fam call_families[] = {FAM_CIRCUIT_CALLS, FAM_CIRCUIT_OUTCOMES, FAM_CIRCUIT_SLOW,
                                                FAM_CIRCUIT_PROBES};
    if (s->ncircuits == 0)
        return;
    for (size_t f = 0; f < sizeof call_families / sizeof call_families[0]; f++) {
        unsigned in_family = 0;
        for (unsigned k = 0; k < CBD_METRICS_NCALLS; k++)
            if (call_samples[k].family == call_families[f] && (s->calls_counted & CBD_CALL_BIT(k)))
                in_family |= CBD_CALL_BIT(k);
        if (in_family == 0)
            continue;
        put_header(t, call_families[f]);
        for (size_t i = 0; i < s->ncircuits; i++)
            for (unsigned k = 0; k < CBD_METRICS_NCALLS; k++) {
                if (!(in_family & CBD_CALL_BIT(k)))
                    continue;
                begin_circuit_sample(t, call_families[f], &s->circuits[i]);
                if (call_samples[k].label != NULL) {
                    put(t, ",", 1);
                    put_str(t, call_samples[k].label);
                }
                end_sample_u64(t, s->circuits[i].calls[k]);
            }
    }
}

static void render_circuit_gauges(struct text *t, const struct cbd_metrics_snapshot *s)
{
    size_t open = 0, synced = 0;
    if (s->ncircuits == 0)
        return;
    put_header(t, FAM_CIRCUIT_CONSECUTIVE_FAILURES);
    for (size_t i = 0; i < s->ncircuits; i++) {
        begin_circuit_sample(t, FAM_CIRCUIT_CONSECUTIVE_FAILURES, &s->circuits[i]);
        end_sample_u64(t, s->circuits[i].consecutive_failures);
        open += s->circuits[i].state != CB_CLOSED && s->circuits[i].opened_at_ns > 0;
        synced += sync_age_ns(s, &s->circuits[i]) >= 0;
    }
    if (open > 0) {
        put_header(t, FAM_CIRCUIT_OPEN_AGE);
        for (size_t i = 0; i < s->ncircuits; i++) {
            const struct cbd_metrics_circuit *c = &s->circuits[i];
            if (c->state == CB_CLOSED || c->opened_at_ns <= 0)
                continue;
            begin_circuit_sample(t, FAM_CIRCUIT_OPEN_AGE, c);
            end_sample_seconds(t, s->now_ns - c->opened_at_ns);
        }
    }
    if (synced > 0) {
        put_header(t, FAM_CIRCUIT_SYNC_AGE);
        for (size_t i = 0; i < s->ncircuits; i++) {
            int64_t age = sync_age_ns(s, &s->circuits[i]);
            if (age < 0)
                continue;
            begin_circuit_sample(t, FAM_CIRCUIT_SYNC_AGE, &s->circuits[i]);
            end_sample_seconds(t, age);
        }
    }
}

static void render_store(struct text *t, const struct cbd_metrics_snapshot *s)
{
    const struct cbd_metrics_store *st = &s->store;
    if (st->scheme == NULL)
        return;
    put_header(t, FAM_STORE_INFO);
    put_str(t, "cbd_store_info{store=\"");
    put_label_value(t, st->scheme);
    put_str(t, "\"} 1\n");
    if (st->online >= 0)
        put_single_u64(t, FAM_STORE_ONLINE, st->online > 0);
    if (st->counts_errors)
        put_single_u64(t, FAM_STORE_ERRORS, st->errors);
    int64_t stalest = -1;
    for (size_t i = 0; i < s->ncircuits; i++) {
        int64_t age = sync_age_ns(s, &s->circuits[i]);
        if (age > stalest)
            stalest = age;
    }
    if (stalest >= 0) {
        put_header(t, FAM_STORE_SYNC_AGE);
        put_str(t, "cbd_store_sync_age_seconds ");
        put_seconds(t, stalest);
        put(t, "\n", 1);
    }
}

/* The daemon-wide counters of one unlabelled sample each. */
static void render_daemon(struct text *t, const struct cbd_metrics_snapshot *s)
{
    const struct {
        enum fam f;
        uint64_t v;
    } singles[] = {
        {FAM_LANE_DRAINED, s->lanes.drained},
        {FAM_LANE_INVALID, s->lanes.invalid},
        {FAM_LANE_STALE, s->lanes.stale},
        {FAM_LANE_DROPPED, s->lanes.dropped},
        {FAM_LANES_IN_USE, s->lanes.in_use},
        {FAM_LANES_RECLAIMED, s->lanes.reclaimed},
        {FAM_HOOK_RUNS, s->hooks.started},
        {FAM_HOOK_SUCCESSES, s->hooks.succeeded},
        {FAM_HOOK_FAILURES, s->hooks.failed},
        {FAM_HOOK_TIMEOUTS, s->hooks.timed_out},
        {FAM_HOOK_DROPPED, s->hooks.dropped},
        {FAM_HOOK_SPAWN_ERRORS, s->hooks.spawn_errors},
        {FAM_CONTROL_CONNECTIONS, s->control.open},
        {FAM_CONTROL_ADMITTED, s->control.admitted},
    };
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++)
        put_single_u64(t, singles[i].f, singles[i].v);
}

/* One family over a subset of the control socket's ends, labelled reason. */
static void render_ends(struct text *t, enum fam f, const char *const *names, const uint64_t *ends)
{
    put_header(t, f);
    for (unsigned e = 0; e < CBD_CONN_NENDS; e++) {
        if (names[e] == NULL)
            continue;
        put_str(t, families[f].name);
        put_str(t, "{reason=\"");
        put_str(t, names[e]);
        put(t, "\"", 1);
        end_sample_u64(t, ends[e]);
    }
}

static void render_control(struct text *t, const struct cbd_metrics_snapshot *s)
{
    render_ends(t, FAM_CONTROL_REFUSED, refusal_reason, s->control.ends);
    render_ends(t, FAM_CONTROL_CLOSED, close_reason, s->control.ends);
    put_single_u64(t, FAM_CONTROL_ACCEPT_ERRORS, s->control.accept_errors);
}

static void render_http(struct text *t, const struct cbd_metrics_snapshot *s)
{
    if (!s->has_http)
        return;
    put_header(t, FAM_HTTP_RESPONSES);
    for (unsigned k = 0; k < CBD_HTTP_NCODES; k++) {
        put_str(t, "cbd_metrics_http_responses_total{code=\"");
        put_u64(t, http_status[k]);
        put(t, "\"", 1);
        end_sample_u64(t, s->http_responses[k]);
    }
}

int cbd_metrics_render(const struct cbd_metrics_snapshot *s, char **text, size_t *len)
{
    struct text t = {0};
    render_build(&t, s);
    render_circuit_states(&t, s);
    render_transitions(&t, s);
    render_calls(&t, s);
    render_circuit_gauges(&t, s);
    render_store(&t, s);
    render_daemon(&t, s);
    render_control(&t, s);
    render_http(&t, s);
    if (t.oom) {
        free(t.p);
        return -ENOMEM;
    }
    *text = t.p;
    *len = t.len;
    return 0;
}

/* ---- the listen address ------------------------------------------------------ */

static int listen_fail(const char *listen, char *why, size_t size)
{
    snprintf(why, size, "metrics_listen '%s': expected IPv4:PORT, [IPv6]:PORT or PORT (e.g. 127.0.0.1:9464)",
             listen);
    return -EINVAL;
}

int cbd_metrics_parse_listen(const char *listen, struct sockaddr_storage *addr, socklen_t *addrlen, char *why,
                             size_t size)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    memset(addr, 0, sizeof *addr);
    if (listen == NULL || *listen == '\0')
        return listen_fail(listen ? listen : "", why, size);
    if (listen[0] == '[') { /* [IPv6]:PORT */
        const char *end = strchr(listen, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - listen - 1) >= sizeof host)
            return listen_fail(listen, why, size);
        memcpy(host, listen + 1, (size_t)(end - listen - 1));
        host[end - listen - 1] = '\0';
        port = end + 2;
    } else if ((port = strrchr(listen, ':')) != NULL) { /* IPv4:PORT */
        if ((size_t)(port - listen) >= sizeof host || memchr(listen, ':', (size_t)(port - listen)) != NULL)
            return listen_fail(listen, why, size);
        memcpy(host, listen, (size_t)(port - listen));
        host[port - listen] = '\0';
        port++;
    } else { /* PORT: loopback */
        snprintf(host, sizeof host, "127.0.0.1");
        port = listen;
    }
    unsigned long p = 0;
    if (*port == '\0' || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
        (p = strtoul(port, NULL, 10)) > 65535)
        return listen_fail(listen, why, size);
    struct sockaddr_in *v4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)addr;
    if (listen[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)p);
        *addrlen = sizeof *v4;
    } else if (listen[0] == '[' && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)p);
        *addrlen = sizeof *v6;
    } else {
        return listen_fail(listen, why, size);
    }
    return 0;
}

/* ---- the endpoint -------------------------------------------------------------- */

struct cbd_metrics {
    uv_loop_t *loop;
    uv_async_t async;                 /* the HTTP thread asks the loop for a rendering */
    cbd_metrics_fill_fn fill;
    void *arg;
    struct cbd_metrics_limits limits;
    struct MHD_Daemon *mhd;
    uint16_t port;
    /* loop thread only */
    struct cbd_metrics_snapshot snap;
    struct cbd_ratelimit render_warn;
    /* HTTP thread only */
    struct cbd_ratelimit busy_warn, mhd_warn;
    /* shared, under mu */
    uv_mutex_t mu;
    uv_cond_t cv;                     /* answered moved, or stopping */
    uint64_t asked, answered;         /* renderings asked for / the last asked one answered */
    char *body;                       /* the last rendering; NULL if it failed */
    size_t body_len;
    uint64_t responses[CBD_HTTP_NCODES];
    bool stopping;
};

/* On the loop: render for every scrape asked so far, then wake them. */
static void on_async(uv_async_t *h)
{
    struct cbd_metrics *m = h->data;
    uint64_t responses[CBD_HTTP_NCODES];
    uv_mutex_lock(&m->mu);
    uint64_t want = m->asked;
    memcpy(responses, m->responses, sizeof responses);
    uv_mutex_unlock(&m->mu);
    if (want == m->answered) /* answered is written by this thread only */
        return;
    cbd_metrics_snapshot_clear(&m->snap);
    char *text = NULL;
    size_t len = 0;
    int rc = m->fill(m->arg, &m->snap);
    if (rc >= 0) {
        m->snap.has_http = true;
        memcpy(m->snap.http_responses, responses, sizeof responses);
        rc = cbd_metrics_render(&m->snap, &text, &len);
    }
    uint64_t suppressed;
    if (rc < 0 && cbd_ratelimit_pass(&m->render_warn, &suppressed))
        cbd_log(CBD_LOG_WARN, "metrics: no rendering for a scrape (%s); answering 503 (%" PRIu64 " more suppressed)",
                strerror(-rc), suppressed);
    uv_mutex_lock(&m->mu);
    free(m->body);
    m->body = text;
    m->body_len = len;
    m->answered = want;
    uv_cond_broadcast(&m->cv);
    uv_mutex_unlock(&m->mu);
}

/* On the HTTP thread: a copy of a rendering made after this call began, or
 * NULL (the loop did not answer within render_wait_ms, the fill or the
 * render failed, or we are stopping). */
static char *fetch_rendering(struct cbd_metrics *m, size_t *len)
{
    char *copy = NULL;
    uv_mutex_lock(&m->mu);
    uint64_t mine = ++m->asked;
    bool stopping = m->stopping;
    uv_mutex_unlock(&m->mu);
    if (stopping)
        return NULL;
    uv_async_send(&m->async);
    uint64_t deadline = uv_hrtime() + (uint64_t)m->limits.render_wait_ms * 1000000u;
    uv_mutex_lock(&m->mu);
    for (uint64_t now; m->answered < mine && !m->stopping && (now = uv_hrtime()) < deadline;)
        (void)uv_cond_timedwait(&m->cv, &m->mu, deadline - now);
    bool answered = m->answered >= mine;
    if (answered && m->body != NULL && (copy = malloc(m->body_len + 1)) != NULL) {
        memcpy(copy, m->body, m->body_len + 1);
        *len = m->body_len;
    }
    stopping = m->stopping;
    uv_mutex_unlock(&m->mu);
    uint64_t suppressed;
    if (!answered && !stopping && cbd_ratelimit_pass(&m->busy_warn, &suppressed))
        cbd_log(CBD_LOG_WARN,
                "metrics: the loop did not render within %u ms; answering 503 (%" PRIu64 " more suppressed)",
                m->limits.render_wait_ms, suppressed);
    return copy;
}

/* Queue one answer. body is taken (free()d by libmicrohttpd) when owned. */
static enum MHD_Result answer(struct cbd_metrics *m, struct MHD_Connection *conn, enum cbd_metrics_code code,
                              char *body, size_t len, bool owned)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        if (owned)
            free(body);
        return MHD_NO; /* libmicrohttpd closes the connection */
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                            code == CBD_HTTP_200 ? CBD_METRICS_CONTENT_TYPE : "text/plain; charset=utf-8");
    if (code == CBD_HTTP_405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, http_status[code], r);
    MHD_destroy_response(r);
    uv_mutex_lock(&m->mu);
    m->responses[code]++;
    uv_mutex_unlock(&m->mu);
    return rc;
}

static char *const not_found = "cbd serves its metrics at /metrics\n";
static char *const not_allowed = "only GET and HEAD are served\n";
static char *const unavailable = "cbd could not render its metrics in time; try again\n";

/* On the HTTP thread: once when a request's headers are in (*req_cls NULL),
 * then once per piece of body, then once more when the request is complete.
 * A method we do not serve is answered at once, its body unread (the
 * connection closes); the others are answered once complete, so the
 * connection can carry the next scrape (a response queued early makes
 * libmicrohttpd close it). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    struct cbd_metrics *m = cls;
    (void)version;
    (void)upload_data;
    if (*req_cls == NULL) {
        if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
            return answer(m, conn, CBD_HTTP_405, not_allowed, strlen(not_allowed), false);
        *req_cls = m; /* seen */
        return MHD_YES;
    }
    if (*upload_data_size != 0)
        return MHD_NO; /* a GET or HEAD with a body: close the connection */
    if (strcmp(url, "/metrics") != 0)
        return answer(m, conn, CBD_HTTP_404, not_found, strlen(not_found), false);
    size_t len = 0;
    char *body = fetch_rendering(m, &len);
    if (body == NULL)
        return answer(m, conn, CBD_HTTP_503, unavailable, strlen(unavailable), false);
    return answer(m, conn, CBD_HTTP_200, body, len, true);
}

/* libmicrohttpd's own complaints (accept failures, a full connection
 * table), rate limited: a flood must not flood the log. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct cbd_metrics *m = cls;
    char line[256];
    uint64_t suppressed;
    if (!cbd_ratelimit_pass(&m->mhd_warn, &suppressed))
        return;
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    cbd_log(CBD_LOG_WARN, "metrics: %s (%" PRIu64 " more suppressed)", line, suppressed);
}

static void on_closed(uv_handle_t *h)
{
    struct cbd_metrics *m = h->data;
    cbd_metrics_snapshot_free(&m->snap);
    free(m->body);
    uv_cond_destroy(&m->cv);
    uv_mutex_destroy(&m->mu);
    free(m);
}

/* A listening socket on addr; its port in *port. -errno with why. */
static int open_socket(const char *spec, const struct sockaddr_storage *addr, socklen_t addrlen, uint16_t *port,
                       char *why, size_t size)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) {
        int rc = -errno;
        snprintf(why, size, "metrics_listen '%s': cannot create a socket: %s", spec, strerror(-rc));
        return rc;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr->ss_family == AF_INET6) /* [::] means IPv6 only; 0.0.0.0 is said separately */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_storage bound;
    socklen_t boundlen = sizeof bound;
    if (bind(fd, (const struct sockaddr *)addr, addrlen) < 0 || listen(fd, SOMAXCONN) < 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &boundlen) < 0) {
        int rc = -errno;
        snprintf(why, size, "metrics_listen '%s': cannot listen: %s", spec, strerror(-rc));
        close(fd);
        return rc;
    }
    *port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
    return fd;
}

int cbd_metrics_start_limits(struct cbd_metrics **out, uv_loop_t *loop, const char *listen,
                             const struct cbd_metrics_limits *limits, cbd_metrics_fill_fn fill, void *arg, char *why,
                             size_t size)
{
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint16_t port = 0;
    int rc = cbd_metrics_parse_listen(listen, &addr, &addrlen, why, size);
    if (rc < 0)
        return rc;
    struct cbd_metrics *m = calloc(1, sizeof *m);
    if (m == NULL) {
        snprintf(why, size, "metrics: out of memory");
        return -ENOMEM;
    }
    *m = (struct cbd_metrics){.loop = loop, .fill = fill, .arg = arg, .limits = *limits};
    cbd_metrics_snapshot_init(&m->snap);
    if ((rc = uv_mutex_init(&m->mu)) < 0)
        goto free_m;
    if ((rc = uv_cond_init(&m->cv)) < 0)
        goto destroy_mu;
    if ((rc = uv_async_init(loop, &m->async, on_async)) < 0)
        goto destroy_cv;
    m->async.data = m;
    int fd = open_socket(listen, &addr, addrlen, &port, why, size);
    if (fd < 0) {
        uv_close((uv_handle_t *)&m->async, on_closed);
        return fd;
    }
    m->port = port;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* the HTTP thread inherits it: signals are the loop's */
    m->mhd = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
                              MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, m, /* first, or the start logs to stderr */
                              MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)limits->connection_limit,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)limits->connection_timeout_s,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CBD_METRICS_CONNECTION_MEMORY,
                              MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (m->mhd == NULL) {
        /* fd is not closed here: libmicrohttpd closes it on most of its
         * failure paths, and a second close could hit a descriptor another
         * thread just opened. At worst one descriptor leaks, once. */
        uv_close((uv_handle_t *)&m->async, on_closed);
        snprintf(why, size, "metrics_listen '%s': libmicrohttpd would not start (see the log)", listen);
        return -EIO;
    }
    char host[INET6_ADDRSTRLEN];
    const void *in = addr.ss_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)&addr)->sin6_addr
                                                : (const void *)&((struct sockaddr_in *)&addr)->sin_addr;
    inet_ntop(addr.ss_family, in, host, sizeof host);
    cbd_log(CBD_LOG_INFO, "metrics: serving http://%s%s%s:%u/metrics", addr.ss_family == AF_INET6 ? "[" : "", host,
            addr.ss_family == AF_INET6 ? "]" : "", (unsigned)port);
    *out = m;
    return 0;

destroy_cv:
    uv_cond_destroy(&m->cv);
destroy_mu:
    uv_mutex_destroy(&m->mu);
free_m:
    free(m);
    snprintf(why, size, "metrics: %s", uv_strerror(rc));
    return rc;
}

int cbd_metrics_start(struct cbd_metrics **out, uv_loop_t *loop, const char *listen, cbd_metrics_fill_fn fill,
                      void *arg, char *why, size_t size)
{
    return cbd_metrics_start_limits(out, loop, listen, &CBD_METRICS_LIMITS_DEFAULT, fill, arg, why, size);
}

uint16_t cbd_metrics_port(const struct cbd_metrics *m)
{
    return m->port;
}

void cbd_metrics_stop(struct cbd_metrics *m)
{
    if (m == NULL)
        return;
    uv_mutex_lock(&m->mu);
    m->stopping = true; /* a scrape waiting for the loop (this thread) answers 503 now */
    uv_cond_broadcast(&m->cv);
    uv_mutex_unlock(&m->mu);
    MHD_stop_daemon(m->mhd); /* joins the thread, closes the socket and every connection */
    uv_close((uv_handle_t *)&m->async, on_closed);
}
