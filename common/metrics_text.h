/*
 * metrics_text.h - cbd's numbers as a snapshot of plain values, that
 * snapshot in the Prometheus text format (version 0.0.4), and the snapshot
 * on the control socket (msgpack), so the daemon's endpoint and `cbctl
 * metrics` print the same text from the same renderer (docs/metrics.md
 * lists every metric).
 *
 * Pure: no clock, no I/O, no daemon state. The daemon fills a snapshot
 * (daemon/ops.c) and either renders it (the /metrics endpoint,
 * daemon/metrics.c) or packs it, a page of circuits at a time, into the
 * replies of the `metrics` op; cbctl unpacks the pages into one snapshot
 * and renders it here.
 */
#ifndef CB_METRICS_TEXT_H
#define CB_METRICS_TEXT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cb.h"

/* How a connection ended, or why it was refused (stats, logs, the seam). */
enum cbd_conn_end {
    CBD_CONN_OPEN = 0,               /* not ended */
    CBD_CONN_REFUSED_PER_UID,        /* its uid holds max_connections_per_uid */
    CBD_CONN_REFUSED_ADMIN_RESERVED, /* only admin_reserved_connections are left */
    CBD_CONN_REFUSED_MAX,            /* max_connections are open */
    CBD_CONN_FRAME_TIMEOUT,          /* a frame not complete frame_timeout_ms after its first byte */
    CBD_CONN_IDLE,                   /* no request for idle_timeout_ms */
    CBD_CONN_BAD_FRAME,              /* bad length or msgpack: the stream is out of step */
    CBD_CONN_SLOW_READER,            /* CBD_CONTROL_MAX_QUEUED bytes of replies or transitions unread */
    CBD_CONN_HANGUP,                 /* the peer closed, an I/O error, out of memory, or the daemon stops */
    CBD_CONN_NENDS
};

/* What the hook runner did since the daemon started. */
struct cbd_hooks_stats {
    uint64_t started, succeeded, failed, timed_out, dropped, spawn_errors;
};

/* A circuit's call counters. Not every daemon counts every one (rejections
 * need the workers' per-thread counts; slow calls a slow-call policy): the
 * snapshot's calls_counted says which ones exist, and the others are not
 * rendered at all rather than shown as a misleading 0. */
enum cbd_metrics_call {
    CBD_CALL_ALLOWED = 0, /* cb_allow said yes (probes included) */
    CBD_CALL_REJECTED,    /* cb_allow said no */
    CBD_CALL_SUCCEEDED,   /* outcomes recorded as success */
    CBD_CALL_FAILED,      /* outcomes recorded as counted failure */
    CBD_CALL_IGNORED,     /* outcomes recorded as ignored (not counted by the policy) */
    CBD_CALL_SLOW,        /* calls slower than the slow-call threshold */
    CBD_CALL_PROBES,      /* HALF_OPEN probe permits taken */
    CBD_METRICS_NCALLS
};
#define CBD_CALL_BIT(c) (1u << (c))

/* One circuit as the daemon sees it when the snapshot is taken. */
struct cbd_metrics_circuit {
    const char *name;          /* well-formed UTF-8 (cb__name_check), any character: escaped when
                                * rendered. Must stay valid until cbd_metrics_render returns. */
    cb_state state;
    bool forced, disabled;     /* CB_SEG_F_FORCED, CB_SEG_F_DISABLED of its state word */
    uint32_t consecutive_failures; /* CLOSED: the streak; otherwise the count it tripped with */
    int64_t opened_at_ns;      /* CLOCK_REALTIME of its last opening; 0 when CLOSED */
    uint32_t sync_state;       /* CB_SYNC_* (common/segment.h) */
    int64_t synced_at;         /* epoch seconds of its last agreement with the fleet store; 0 never */
    uint64_t transitions[3][3];/* [from][to], indexed by cb_state, since the daemon started */
    uint64_t calls[CBD_METRICS_NCALLS];
};

/* The control socket's connections. */
struct cbd_metrics_control {
    uint32_t open;                   /* admitted and open now */
    uint64_t admitted;               /* since start */
    uint64_t accept_errors;
    uint64_t ends[CBD_CONN_NENDS];   /* struct cbd_control's ends: refusals and closes by reason */
};

/* The lanes: workers' outcome events on their way to the daemon. */
struct cbd_metrics_lanes {
    uint64_t drained, invalid, stale, dropped, reclaimed;
    uint32_t in_use;
};

/* The store. */
struct cbd_metrics_store {
    const char *scheme;  /* "local", "redis", "dynamodb"; NULL: no store (nothing rendered) */
    int online;          /* 1 writes reach it, 0 offline, -1 not reported yet (not rendered) */
    bool counts_errors;  /* false: the store keeps no error count (not rendered) */
    uint64_t errors;     /* failed store operations since start */
};

/* What the endpoint itself served (filled by the endpoint, not the daemon). */
enum cbd_metrics_code { CBD_HTTP_200 = 0, CBD_HTTP_404, CBD_HTTP_405, CBD_HTTP_503, CBD_HTTP_NCODES };
extern const unsigned cbd_metrics_http_status[CBD_HTTP_NCODES]; /* 200, 404, 405, 503 */

/*
 * Everything one rendering shows. The daemon fills it on its loop; the
 * renderer reads nothing else. Zero it with cbd_metrics_snapshot_init,
 * add circuits with cbd_metrics_snapshot_add_circuit.
 */
struct cbd_metrics_snapshot {
    int64_t now_ns;              /* CLOCK_REALTIME the snapshot was taken at: ages count from it */
    const char *version;         /* CB_VERSION_STRING */
    unsigned layout;             /* CB_SEG_MAJOR */
    const char *instance;        /* the daemon's instance name */
    int64_t start_time_ns;       /* CLOCK_REALTIME the daemon started at; 0: not rendered */
    unsigned calls_counted;      /* CBD_CALL_BIT()s of the call counters the daemon keeps */
    struct cbd_metrics_store store;
    struct cbd_metrics_lanes lanes;
    struct cbd_hooks_stats hooks;
    struct cbd_metrics_control control;
    uint64_t http_responses[CBD_HTTP_NCODES]; /* the endpoint's answers so far */
    bool has_http;               /* set by the endpoint: render http_responses */
    /* circuits, through cbd_metrics_snapshot_add_circuit */
    struct cbd_metrics_circuit *circuits;
    size_t ncircuits, circuits_cap;
    bool owns_strings;           /* the strings are malloc'd copies (cbd_metrics_unpack_*): free frees them */
};

void cbd_metrics_snapshot_init(struct cbd_metrics_snapshot *s);
/* Zeroes everything but keeps the circuits' storage for the next fill. */
void cbd_metrics_snapshot_clear(struct cbd_metrics_snapshot *s);
/* Frees the circuits' storage, and the strings when the snapshot owns them. */
void cbd_metrics_snapshot_free(struct cbd_metrics_snapshot *s);
/* A zeroed row for one more circuit, or NULL when out of memory. The
 * pointer is valid until the next add: fill it before adding another. */
struct cbd_metrics_circuit *cbd_metrics_snapshot_add_circuit(struct cbd_metrics_snapshot *s);

/*
 * cbd_metrics_render - s in the Prometheus text format, version 0.0.4:
 * every family with its HELP and TYPE lines, circuit names escaped
 * (backslash, double quote, line feed), families without samples left out.
 * Returns 0 with *text (malloc'd, NUL terminated; free() it) and *len, or
 * -ENOMEM.
 */
int cbd_metrics_render(const struct cbd_metrics_snapshot *s, char **text, size_t *len);

/* The Content-Type of that text. */
#define CBD_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* ---- on the wire (the `metrics` op, docs/protocol.md) -------------------- */

/*
 * The daemon-wide part of s (everything but the circuits), and one
 * circuit, each as one msgpack array of plain values in a fixed order.
 * unpack fills s / c from such an array, strings copied (s->owns_strings
 * is set: cbd_metrics_snapshot_free frees them); 0, -EINVAL for an array
 * of another shape, or -ENOMEM.
 */
void cbd_metrics_pack_daemon(msgpack_packer *pk, const struct cbd_metrics_snapshot *s);
void cbd_metrics_pack_circuit(msgpack_packer *pk, const struct cbd_metrics_circuit *c);
int cbd_metrics_unpack_daemon(const msgpack_object *o, struct cbd_metrics_snapshot *s);
int cbd_metrics_unpack_circuit(const msgpack_object *o, struct cbd_metrics_snapshot *s);

#endif /* CB_METRICS_TEXT_H */
