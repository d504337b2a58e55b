/*
 * metrics.c - the HTTP endpoint that serves the Prometheus text of a
 * snapshot (common/metrics_text.c renders it).
 *
 * Owns: the endpoint's socket, libmicrohttpd's thread, one uv_async handle
 * and the last rendering. Must not touch: anything of the daemon. The HTTP
 * thread reads only what this file shares with it under `mu`; the daemon's
 * state is read by the fill callback, on the loop, and nowhere else.
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

/* Memory per connection for the request line and headers: a scrape's are
 * small; larger requests are answered 431 by libmicrohttpd. */
#define CBD_METRICS_CONNECTION_MEMORY (16 * 1024)

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
    enum MHD_Result rc = MHD_queue_response(conn, cbd_metrics_http_status[code], r);
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

void cbd_metrics_responses(struct cbd_metrics *m, uint64_t out[CBD_HTTP_NCODES])
{
    uv_mutex_lock(&m->mu);
    memcpy(out, m->responses, sizeof m->responses);
    uv_mutex_unlock(&m->mu);
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
