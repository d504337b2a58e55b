/*
 * metrics_text.c - the Prometheus text of a snapshot, and the snapshot on
 * the wire.
 *
 * Owns: the family table (every metric's name, type and help, once), the
 * text, and the msgpack form of a snapshot. Must not touch: anything but
 * the snapshot it is given (no clock, no I/O).
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
 * Wire form. The `metrics` op answers with the daemon-wide numbers as one
 * array and the circuits as arrays of their own, as many as fit in a
 * frame; the order of the values is the order of the pack functions below,
 * and each unpack checks the array's length and every value's type, so a
 * reply of another shape is refused (a circuit row of another shape is
 * not added).
 */
#include "metrics_text.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "segment.h"

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
const unsigned cbd_metrics_http_status[CBD_HTTP_NCODES] = {
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
    if (s->owns_strings) {
        free((char *)s->version);
        free((char *)s->instance);
        free((char *)s->store.scheme);
        for (size_t i = 0; i < s->ncircuits; i++)
            free((char *)s->circuits[i].name);
    }
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
    if (c->sync_state == CB_SYNC_LOCAL || c->synced_at <= 0 || c->synced_at > CB_TIME_MAX_S)
        return -1; /* none, or a time no clock of cbd's reaches (an unpacked snapshot may say anything) */
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
        put_u64(t, cbd_metrics_http_status[k]);
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


/* ---- on the wire ------------------------------------------------------------------ */

#define DAEMON_VALUES (10 + 6 + 6 + 3 + CBD_CONN_NENDS + 1 + CBD_HTTP_NCODES)
#define CIRCUIT_VALUES (8 + 9 + CBD_METRICS_NCALLS)

static void pack_u64s(msgpack_packer *pk, const uint64_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint64(pk, v[i]);
}

void cbd_metrics_pack_daemon(msgpack_packer *pk, const struct cbd_metrics_snapshot *s)
{
    const struct cbd_hooks_stats *h = &s->hooks;
    const struct cbd_metrics_lanes *l = &s->lanes;
    const uint64_t hooks[6] = {h->started, h->succeeded, h->failed, h->timed_out, h->dropped, h->spawn_errors};
    const uint64_t lanes[6] = {l->drained, l->invalid, l->stale, l->dropped, l->reclaimed, l->in_use};
    msgpack_pack_array(pk, DAEMON_VALUES);
    cb__mp_pack_str(pk, s->version ? s->version : "");
    msgpack_pack_uint64(pk, s->layout);
    cb__mp_pack_str(pk, s->instance ? s->instance : "");
    msgpack_pack_int64(pk, s->start_time_ns);
    msgpack_pack_int64(pk, s->now_ns);
    msgpack_pack_uint64(pk, s->calls_counted);
    if (s->store.scheme != NULL)
        cb__mp_pack_str(pk, s->store.scheme);
    else
        msgpack_pack_nil(pk);
    msgpack_pack_int64(pk, s->store.online);
    msgpack_pack_uint64(pk, s->store.counts_errors ? 1 : 0);
    msgpack_pack_uint64(pk, s->store.errors);
    pack_u64s(pk, lanes, 6);
    pack_u64s(pk, hooks, 6);
    msgpack_pack_uint64(pk, s->control.open);
    msgpack_pack_uint64(pk, s->control.admitted);
    msgpack_pack_uint64(pk, s->control.accept_errors);
    pack_u64s(pk, s->control.ends, CBD_CONN_NENDS);
    msgpack_pack_uint64(pk, s->has_http ? 1 : 0);
    pack_u64s(pk, s->http_responses, CBD_HTTP_NCODES);
}

void cbd_metrics_pack_circuit(msgpack_packer *pk, const struct cbd_metrics_circuit *c)
{
    msgpack_pack_array(pk, CIRCUIT_VALUES);
    cb__mp_pack_str(pk, c->name);
    msgpack_pack_uint64(pk, c->state);
    msgpack_pack_uint64(pk, c->forced ? 1 : 0);
    msgpack_pack_uint64(pk, c->disabled ? 1 : 0);
    msgpack_pack_uint64(pk, c->consecutive_failures);
    msgpack_pack_int64(pk, c->opened_at_ns);
    msgpack_pack_uint64(pk, c->sync_state);
    msgpack_pack_int64(pk, c->synced_at);
    pack_u64s(pk, &c->transitions[0][0], 9);
    pack_u64s(pk, c->calls, CBD_METRICS_NCALLS);
}

/* Reads an array's values in order; the first value of a wrong type (or
 * past the end) sets bad, and everything after it reads as 0. */
struct reader {
    const msgpack_object *v;
    uint32_t n, at;
    bool bad, oom;
};

static const msgpack_object *next_value(struct reader *r)
{
    if (r->at >= r->n) {
        r->bad = true;
        return NULL;
    }
    return &r->v[r->at++];
}

static uint64_t read_u64(struct reader *r)
{
    const msgpack_object *o = next_value(r);
    if (o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        return o->via.u64;
    r->bad = true;
    return 0;
}

static int64_t read_i64(struct reader *r)
{
    const msgpack_object *o = next_value(r);
    if (o != NULL && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return o->via.i64;
    if (o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        return (int64_t)o->via.u64;
    r->bad = true;
    return 0;
}

/* A copy of a string value (nil: NULL when nil_ok), NUL terminated. */
static char *read_str(struct reader *r, bool nil_ok)
{
    const msgpack_object *o = next_value(r);
    if (o != NULL && o->type == MSGPACK_OBJECT_NIL && nil_ok)
        return NULL;
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL) {
        r->bad = true;
        return NULL;
    }
    char *copy = strndup(o->via.str.ptr, o->via.str.size);
    r->oom |= copy == NULL;
    return copy;
}

static void read_u64s(struct reader *r, uint64_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = read_u64(r);
}

static int reader_open(struct reader *r, const msgpack_object *o, uint32_t want)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != want)
        return -EINVAL;
    *r = (struct reader){.v = o->via.array.ptr, .n = want};
    return 0;
}

static int reader_close(const struct reader *r)
{
    return r->oom ? -ENOMEM : r->bad ? -EINVAL : 0;
}

int cbd_metrics_unpack_daemon(const msgpack_object *o, struct cbd_metrics_snapshot *s)
{
    struct reader r;
    uint64_t hooks[6], lanes[6];
    if (reader_open(&r, o, DAEMON_VALUES) < 0)
        return -EINVAL;
    s->owns_strings = true;
    s->version = read_str(&r, false);
    s->layout = (unsigned)read_u64(&r);
    s->instance = read_str(&r, false);
    s->start_time_ns = read_i64(&r);
    s->now_ns = read_i64(&r);
    s->calls_counted = (unsigned)read_u64(&r);
    s->store.scheme = read_str(&r, true);
    s->store.online = (int)read_i64(&r);
    s->store.counts_errors = read_u64(&r) != 0;
    s->store.errors = read_u64(&r);
    read_u64s(&r, lanes, 6);
    read_u64s(&r, hooks, 6);
    s->lanes = (struct cbd_metrics_lanes){.drained = lanes[0], .invalid = lanes[1], .stale = lanes[2],
                                          .dropped = lanes[3], .reclaimed = lanes[4], .in_use = (uint32_t)lanes[5]};
    s->hooks = (struct cbd_hooks_stats){.started = hooks[0], .succeeded = hooks[1], .failed = hooks[2],
                                        .timed_out = hooks[3], .dropped = hooks[4], .spawn_errors = hooks[5]};
    s->control.open = (uint32_t)read_u64(&r);
    s->control.admitted = read_u64(&r);
    s->control.accept_errors = read_u64(&r);
    read_u64s(&r, s->control.ends, CBD_CONN_NENDS);
    s->has_http = read_u64(&r) != 0;
    read_u64s(&r, s->http_responses, CBD_HTTP_NCODES);
    return reader_close(&r);
}

int cbd_metrics_unpack_circuit(const msgpack_object *o, struct cbd_metrics_snapshot *s)
{
    struct reader r;
    if (reader_open(&r, o, CIRCUIT_VALUES) < 0)
        return -EINVAL;
    struct cbd_metrics_circuit *c = cbd_metrics_snapshot_add_circuit(s);
    if (c == NULL)
        return -ENOMEM;
    s->owns_strings = true;
    c->name = read_str(&r, false);
    c->state = (cb_state)read_u64(&r);
    c->forced = read_u64(&r) != 0;
    c->disabled = read_u64(&r) != 0;
    c->consecutive_failures = (uint32_t)read_u64(&r);
    c->opened_at_ns = read_i64(&r);
    c->sync_state = (uint32_t)read_u64(&r);
    c->synced_at = read_i64(&r);
    read_u64s(&r, &c->transitions[0][0], 9);
    read_u64s(&r, c->calls, CBD_METRICS_NCALLS);
    if (c->state > CB_HALF_OPEN || c->name == NULL)
        r.bad = true;
    int rc = reader_close(&r);
    if (rc < 0) { /* not shown: drop the row */
        free((char *)c->name);
        s->ncircuits--;
    }
    return rc;
}
