/*
 * metrics.h - cbd's numbers in the Prometheus text format (version 0.0.4),
 * and the HTTP endpoint that serves them (docs/metrics.md lists every
 * metric).
 *
 * Two parts:
 *  - the renderer: a snapshot (struct cbd_metrics_snapshot) the daemon
 *    fills with plain numbers, turned into text. Pure: no clock, no daemon
 *    state; `cbctl metrics` and the endpoint print the same text.
 *  - the endpoint: libmicrohttpd on a thread of its own answering GET
 *    /metrics. It never reads daemon state: it asks the loop for a fresh
 *    rendering (uv_async) and waits a bounded time for it (metrics.c
 *    explains the handshake).
 */
#ifndef CBD_METRICS_H
#define CBD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "cb.h"
#include "control.h"
#include "hooks.h"

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
};

void cbd_metrics_snapshot_init(struct cbd_metrics_snapshot *s);
/* Zeroes everything but keeps the circuits' storage for the next fill. */
void cbd_metrics_snapshot_clear(struct cbd_metrics_snapshot *s);
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

/* ---- the endpoint ------------------------------------------------------ */

/*
 * cbd_metrics_parse_listen - an address to listen on, as an operator
 * writes it: "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464", or a port
 * alone ("9464": loopback, 127.0.0.1). Numeric addresses only (no name is
 * resolved). Port 0 asks the kernel for a free port (tests).
 * Returns 0 with *addr and *addrlen, or -EINVAL with why (size bytes) saying
 * what is wrong, e.g. "metrics_listen 'x:1': expected IPv4:PORT, [IPv6]:PORT or PORT".
 */
int cbd_metrics_parse_listen(const char *listen, struct sockaddr_storage *addr, socklen_t *addrlen, char *why,
                             size_t size);

/*
 * The daemon's part: fill s (cleared) on the loop thread from the daemon's
 * own state - now_ns included - and return 0; a negative errno (e.g.
 * -EAGAIN while the daemon is still starting) answers the scrape with 503.
 * Called only on the loop, so it may read anything the loop owns; the
 * rendering follows in the same loop callback, so s may point at the
 * daemon's strings (circuit names in the segment).
 */
typedef int (*cbd_metrics_fill_fn)(void *arg, struct cbd_metrics_snapshot *s);

/* Bounds of the endpoint (cbd_metrics_start uses the defaults). */
struct cbd_metrics_limits {
    unsigned connection_limit;     /* connections at once; more wait in the listen backlog */
    unsigned connection_timeout_s; /* a connection idle this long (a half-sent request) is closed */
    unsigned render_wait_ms;       /* how long a scrape waits for the loop before answering 503 */
};
#define CBD_METRICS_LIMITS_DEFAULT ((struct cbd_metrics_limits){32, 5, 1000})

struct cbd_metrics;

/*
 * cbd_metrics_start - listen on listen (see cbd_metrics_parse_listen) and
 * serve GET/HEAD /metrics from a thread of libmicrohttpd's. Each scrape
 * calls fill(arg, snapshot) on loop's thread and renders it there.
 * Returns 0 with *out, or a negative errno with why (size bytes) naming the
 * fault: -EINVAL (bad address), -EADDRINUSE, -EACCES, ... (from bind), -ENOMEM.
 * Call on the loop's thread.
 */
int cbd_metrics_start(struct cbd_metrics **out, uv_loop_t *loop, const char *listen, cbd_metrics_fill_fn fill,
                      void *arg, char *why, size_t size);
int cbd_metrics_start_limits(struct cbd_metrics **out, uv_loop_t *loop, const char *listen,
                             const struct cbd_metrics_limits *limits, cbd_metrics_fill_fn fill, void *arg, char *why,
                             size_t size);

/* The port it listens on (the kernel's choice for port 0). */
uint16_t cbd_metrics_port(const struct cbd_metrics *m);

/*
 * cbd_metrics_stop - close the socket and every connection, join the HTTP
 * thread (a scrape waiting for the loop is answered 503 at once), and free
 * m once its loop handle has closed (the loop must run once more, as it
 * does while the daemon stops). Call on the loop's thread; NULL is a no-op.
 */
void cbd_metrics_stop(struct cbd_metrics *m);

#endif /* CBD_METRICS_H */
