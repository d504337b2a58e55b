/*
 * metrics.h - the HTTP endpoint that serves cbd's numbers in the
 * Prometheus text format (the snapshot and its renderer are
 * common/metrics_text.h, shared with `cbctl metrics`).
 *
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

#include "metrics_text.h"

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

/* The endpoint's answers so far, by code (for the `metrics` op, so cbctl
 * shows what a scrape shows). Any thread. */
void cbd_metrics_responses(struct cbd_metrics *m, uint64_t out[CBD_HTTP_NCODES]);

/*
 * cbd_metrics_stop - close the socket and every connection, join the HTTP
 * thread (a scrape waiting for the loop is answered 503 at once), and free
 * m once its loop handle has closed (the loop must run once more, as it
 * does while the daemon stops). Call on the loop's thread; NULL is a no-op.
 */
void cbd_metrics_stop(struct cbd_metrics *m);

#endif /* CBD_METRICS_H */
