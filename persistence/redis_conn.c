/*
 * redis_conn.c - one redis connection on the libuv loop (see redis_conn.h).
 *
 * Design. The connection is a libuv stream of its own (uv_tcp_t or
 * uv_pipe_t, a fresh one per attempt), so libuv reports every failure -
 * refused, reset, EOF - to a callback of ours; hiredis is used only to
 * format commands (redisFormatCommandArgv) and, through redis_resp.c, to
 * build reply objects from bytes that passed a bounded scan. Matching
 * replies to commands is ours: a FIFO of waiters, one per command sent, in
 * the order written. That is where the defect of hiredis 0.14's async
 * context is avoided: there, a reply arriving with no callback waiting on a
 * context that is not subscribed trips an assert() and the daemon aborts -
 * which a server or proxy that answers one command twice (or anyone who
 * can write to the socket) can cause at will; so can a pub/sub frame with
 * fewer than two elements or a non-string kind. Here each is a protocol
 * error: the connection ends with -EPROTO and a reason, the owner counts
 * it, logs it and reconnects.
 *
 * What a reply can be, in order of checks:
 *   - the head waiter is a command: the reply is its answer (whatever its
 *     type: the owner validates the content);
 *   - the head waiter is a SUBSCRIBE: the reply must be an error (the
 *     subscription failed) or ["subscribe", <our channel>, <integer>];
 *   - nobody waits, the connection is subscribed: it must be ["message",
 *     <our channel>, <bulk string>];
 *   - nobody waits, not subscribed: an error reply is the server speaking
 *     before it hangs up (e.g. "max number of clients reached") and ends
 *     the connection as a reset; anything else is unsolicited: -EPROTO.
 *
 * Life of a connection: open() resolves host names with uv_getaddrinfo
 * (off the loop), tries each address in turn within the connect timeout,
 * then reads. Every way it ends goes through ended(): the stream is closed,
 * the waiters get NULL replies, and a down() report is marked due. Reports
 * go out only at the end of our own callbacks (report()), never inside a
 * call of the owner: what an owner's call would have to end right away
 * (a failed write, a drop) is deferred to a zero timer. Writes are
 * coalesced: while one uv_write is in flight, new commands gather in a
 * buffer that goes out as one write when it completes. Written buffers are
 * wiped before they are freed: the first one carries AUTH and its password.
 */
#include "redis_conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_resp.h"

#define READ_CHUNK 65536
#define MAX_ADDRESSES 4

enum conn_phase { PH_IDLE, PH_RESOLVING, PH_CONNECTING, PH_UP };

/* The stream of one attempt. It outlives the attempt until its uv_close
 * callback; `live` is false once the connection let go of it. */
struct conn_stream {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_connect_t connect_req;
    struct cbd_redis_conn *owner;
    bool live;
};

struct conn_write {
    uv_write_t req;
    struct conn_stream *stream;
    char *data;
    size_t len;
};

struct conn_resolve {
    uv_getaddrinfo_t req;
    struct cbd_redis_conn *conn;
    bool abandoned; /* the connection gave up on this lookup */
};

enum waiter_kind { W_COMMAND, W_SUBSCRIBE };

struct waiter {
    struct waiter *next;
    cbd_redis_reply_fn *fn;
    void *privdata;
    enum waiter_kind kind;
};

struct cbd_redis_conn {
    uv_loop_t *loop;
    struct cbd_redis_conn_cbs cbs;
    void *data;
    uint32_t connect_timeout_ms, command_timeout_ms;
    enum conn_phase phase;
    uint64_t gen; /* open() count: a deferred drop hits only its own connection */
    struct cbd_redis_addr addr;
    char peer[272]; /* "[host]:port" or "unix:path" */
    struct conn_stream *stream;
    struct conn_resolve *resolve;
    char ips[MAX_ADDRESSES][64]; /* resolved addresses, tried in order */
    unsigned nips, next_ip;
    struct cbd_resp_reader rx;
    struct waiter *head, *tail;
    /* pub/sub: the channel once SUBSCRIBE is sent; subscribed once confirmed */
    char *channel;
    size_t channel_len;
    bool subscribed;
    cbd_redis_reply_fn *sub_fn;
    void *sub_privdata;
    /* commands not written yet; one write in flight at a time */
    char *out;
    size_t out_len, out_cap;
    bool writing;
    uv_timer_t connect_timer, command_timer, defer_timer;
    /* how the current connection ended; the first recorded cause wins */
    bool down_recorded, down_due, up_due;
    int down_err;
    char down_why[1024];
    /* a drop asked for by the owner (or a failed write), done by defer_timer */
    bool drop_due;
    uint64_t drop_gen;
    int drop_err;
    char drop_why[1024];
    bool closing;
    unsigned pending; /* streams and lookups not yet released */
    void (*close_done)(void *arg);
    void *close_arg;
};

static void try_next_address(struct cbd_redis_conn *conn);

__attribute__((format(printf, 3, 4))) static void record_down(struct cbd_redis_conn *conn, int err,
                                                              const char *fmt, ...)
{
    va_list ap;
    if (conn->down_recorded)
        return;
    conn->down_recorded = true;
    conn->down_err = err;
    va_start(ap, fmt);
    vsnprintf(conn->down_why, sizeof conn->down_why, fmt, ap);
    va_end(ap);
}

/* ---- releasing ----------------------------------------------------------------- */

static void maybe_finish_close(struct cbd_redis_conn *conn)
{
    if (!conn->closing || conn->pending > 0)
        return;
    void (*done)(void *) = conn->close_done;
    void *arg = conn->close_arg;
    cbd_resp_free(&conn->rx);
    free(conn->out);
    free(conn);
    if (done != NULL)
        done(arg);
}

static void on_released(uv_handle_t *h)
{
    struct cbd_redis_conn *conn = h->data;
    conn->pending--;
    maybe_finish_close(conn);
}

static void on_stream_closed(uv_handle_t *h)
{
    struct conn_stream *s = h->data;
    struct cbd_redis_conn *conn = s->owner;
    free(s);
    conn->pending--;
    maybe_finish_close(conn);
}

static void detach_stream(struct cbd_redis_conn *conn)
{
    struct conn_stream *s = conn->stream;
    if (s == NULL)
        return;
    s->live = false;
    conn->stream = NULL;
    conn->writing = false; /* the write in flight, if any, is cancelled */
    uv_close(&s->h.handle, on_stream_closed);
}

/* Every waiter gets its NULL reply; the subscriber too. */
static void fail_waiters(struct cbd_redis_conn *conn)
{
    struct waiter *w = conn->head;
    bool subscribed = conn->subscribed;
    cbd_redis_reply_fn *sub_fn = conn->sub_fn;
    void *sub_privdata = conn->sub_privdata;
    conn->head = conn->tail = NULL;
    conn->subscribed = false;
    conn->sub_fn = NULL;
    free(conn->channel);
    conn->channel = NULL;
    while (w != NULL) {
        struct waiter *next = w->next;
        w->fn(conn, NULL, w->privdata);
        free(w);
        w = next;
    }
    if (subscribed)
        sub_fn(conn, NULL, sub_privdata);
}

/* The connection is gone (whatever ended it): back to idle, report due. */
static void ended(struct cbd_redis_conn *conn)
{
    record_down(conn, -ECONNRESET, "connection to %s closed", conn->peer);
    if (conn->resolve != NULL) {
        conn->resolve->abandoned = true; /* its callback releases it */
        conn->resolve = NULL;
    }
    detach_stream(conn);
    conn->phase = PH_IDLE;
    conn->next_ip = conn->nips;
    if (conn->out != NULL)
        explicit_bzero(conn->out, conn->out_len);
    conn->out_len = 0;
    conn->up_due = false;
    conn->down_due = true;
    if (conn->drop_gen == conn->gen)
        conn->drop_due = false;
    uv_timer_stop(&conn->connect_timer);
    uv_timer_stop(&conn->command_timer);
    cbd_resp_reset(&conn->rx);
    fail_waiters(conn);
}

/* End the connection now (from one of our callbacks only). */
static void kill_now(struct cbd_redis_conn *conn, int err, const char *why)
{
    record_down(conn, err, "%s", why);
    if (conn->phase != PH_IDLE)
        ended(conn);
}

__attribute__((format(printf, 2, 3))) static void protocol_error(struct cbd_redis_conn *conn, const char *fmt, ...)
{
    char what[256], why[sizeof conn->down_why];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(why, sizeof why, "protocol error from %s: %s", conn->peer, what);
    kill_now(conn, -EPROTO, why);
}

/* Deliver what is due. Called last in every entry point of ours. */
static void report(struct cbd_redis_conn *conn)
{
    if (conn->closing) {
        conn->up_due = conn->down_due = false;
        return;
    }
    if (conn->down_due) {
        char why[sizeof conn->down_why];
        conn->down_due = false;
        memcpy(why, conn->down_why, sizeof why);
        conn->cbs.down(conn->cbs.arg, conn, conn->down_err, why);
    } else if (conn->up_due && conn->phase == PH_UP) {
        conn->up_due = false;
        conn->cbs.up(conn->cbs.arg, conn);
    }
}

/* ---- replies --------------------------------------------------------------------- */

/* "status 'OK'", "an array of 3 elements", ... for messages. */
static void describe(char *dst, size_t size, const redisReply *r)
{
    char shown[40];
    switch (r->type) {
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
    case REDIS_REPLY_STRING:
        cbd_redis_printable(shown, sizeof shown, r->str, r->len);
        snprintf(dst, size, "%s '%s'",
                 r->type == REDIS_REPLY_STATUS ? "status" : r->type == REDIS_REPLY_ERROR ? "error" : "string", shown);
        break;
    case REDIS_REPLY_INTEGER:
        snprintf(dst, size, "integer %lld", r->integer);
        break;
    case REDIS_REPLY_ARRAY:
        snprintf(dst, size, "an array of %zu elements", r->elements);
        break;
    default:
        snprintf(dst, size, "nil");
    }
}

static bool is_bulk(const redisReply *r, const char *s, size_t len)
{
    return r->type == REDIS_REPLY_STRING && r->len == len && memcmp(r->str, s, len) == 0;
}

/* Is r [kind, <our channel>, <third_type>]? If not, why says what it is. */
static bool pubsub_frame(const struct cbd_redis_conn *conn, const redisReply *r, const char *kind, int third_type,
                         char *why, size_t size)
{
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && is_bulk(r->element[0], kind, strlen(kind)) &&
        is_bulk(r->element[1], conn->channel, conn->channel_len) && r->element[2]->type == third_type)
        return true;
    char got[64], first[64] = "";
    describe(got, sizeof got, r);
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0)
        describe(first, sizeof first, r->element[0]);
    snprintf(why, size, "expected ['%s', channel, %s], got %s%s%s", kind,
             third_type == REDIS_REPLY_INTEGER ? "count" : "payload", got, first[0] ? " starting with " : "", first);
    return false;
}

static void progress(struct cbd_redis_conn *conn)
{
    if (conn->head == NULL)
        uv_timer_stop(&conn->command_timer);
    else /* the next reply gets a full timeout */
        uv_timer_again(&conn->command_timer);
}

static struct waiter *pop_waiter(struct cbd_redis_conn *conn)
{
    struct waiter *w = conn->head;
    conn->head = w->next;
    if (conn->head == NULL)
        conn->tail = NULL;
    progress(conn);
    return w;
}

static void answer_subscribe(struct cbd_redis_conn *conn, redisReply *r)
{
    char why[200];
    if (r->type != REDIS_REPLY_ERROR && !pubsub_frame(conn, r, "subscribe", REDIS_REPLY_INTEGER, why, sizeof why)) {
        protocol_error(conn, "SUBSCRIBE answered with %s", why);
        return;
    }
    struct waiter *w = pop_waiter(conn);
    if (r->type == REDIS_REPLY_ERROR) {
        free(conn->channel); /* not subscribed: commands may go again */
        conn->channel = NULL;
    } else {
        conn->subscribed = true;
        conn->sub_fn = w->fn;
        conn->sub_privdata = w->privdata;
    }
    w->fn(conn, r, w->privdata);
    free(w);
}

/* One reply off the wire: to its waiter, the subscriber, or an error. */
static void dispatch(struct cbd_redis_conn *conn, redisReply *r)
{
    char what[200];
    struct waiter *w = conn->head;
    if (w != NULL && w->kind == W_COMMAND) {
        pop_waiter(conn);
        w->fn(conn, r, w->privdata);
        free(w);
    } else if (w != NULL) {
        answer_subscribe(conn, r);
    } else if (r->type == REDIS_REPLY_ERROR) {
        /* the server speaks before it hangs up ("max number of clients") */
        char why[sizeof conn->down_why];
        describe(what, sizeof what, r);
        snprintf(why, sizeof why, "%s said %s", conn->peer, what);
        kill_now(conn, -ECONNRESET, why);
    } else if (conn->subscribed) {
        if (pubsub_frame(conn, r, "message", REDIS_REPLY_STRING, what, sizeof what))
            conn->sub_fn(conn, r, conn->sub_privdata);
        else
            protocol_error(conn, "pub/sub frame of unexpected shape: %s", what);
    } else {
        describe(what, sizeof what, r);
        protocol_error(conn, "unsolicited reply (%s) with no command waiting: the server or a proxy answered a "
                       "command twice or sent something unasked", what);
    }
    freeReplyObject(r);
}

/* Deliver every complete reply buffered, until one ends the connection
 * or the owner asked to drop or close it. */
static void process(struct cbd_redis_conn *conn)
{
    while (conn->stream != NULL && !conn->drop_due && !conn->closing) {
        redisReply *r;
        int rc = cbd_resp_next(&conn->rx, &r);
        if (rc == 0)
            return;
        if (rc == -ENOMEM) {
            char why[sizeof conn->down_why];
            snprintf(why, sizeof why, "out of memory reading a reply from %s", conn->peer);
            kill_now(conn, -ECONNRESET, why);
        } else if (rc < 0) {
            protocol_error(conn, "%s", cbd_resp_error(&conn->rx));
        } else {
            dispatch(conn, r);
        }
    }
}

/* ---- I/O callbacks ---------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn_stream *s = h->data;
    char *at = NULL;
    size_t size = 0;
    (void)suggested;
    if (!s->live || cbd_resp_space(&s->owner->rx, READ_CHUNK, &at, &size) < 0)
        size = 0; /* libuv reports UV_ENOBUFS to on_read */
    *buf = uv_buf_init(at, (unsigned)(size > READ_CHUNK ? READ_CHUNK : size));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct conn_stream *s = st->data;
    struct cbd_redis_conn *conn = s->owner;
    char why[sizeof conn->down_why];
    (void)buf;
    if (!s->live || nread == 0)
        return;
    if (nread > 0) {
        cbd_resp_wrote(&conn->rx, (size_t)nread);
        process(conn);
    } else if (nread == UV_EOF && cbd_resp_pending(&conn->rx) > 0) {
        protocol_error(conn, "connection closed mid-reply (%zu bytes of an unfinished reply)",
                       cbd_resp_pending(&conn->rx));
    } else {
        if (nread == UV_EOF)
            snprintf(why, sizeof why, "connection closed by %s", conn->peer);
        else
            snprintf(why, sizeof why, "reading from %s failed: %s", conn->peer, uv_strerror((int)nread));
        kill_now(conn, -ECONNRESET, why);
    }
    report(conn);
}

static void flush(struct cbd_redis_conn *conn);

static void on_write(uv_write_t *req, int status)
{
    struct conn_write *w = (struct conn_write *)req;
    struct conn_stream *s = w->stream;
    explicit_bzero(w->data, w->len); /* an AUTH command carries a password */
    free(w->data);
    free(w);
    if (!s->live)
        return; /* cancelled: the connection ended meanwhile */
    struct cbd_redis_conn *conn = s->owner;
    conn->writing = false;
    if (status < 0) {
        char why[sizeof conn->down_why];
        snprintf(why, sizeof why, "writing to %s failed: %s", conn->peer, uv_strerror(status));
        kill_now(conn, -ECONNRESET, why);
    } else {
        flush(conn);
    }
    report(conn);
}

/* Let the defer timer end the connection (we may be inside the owner's call). */
static void drop_later(struct cbd_redis_conn *conn, int err, const char *why);

static void flush(struct cbd_redis_conn *conn)
{
    if (conn->writing || conn->out_len == 0 || conn->stream == NULL)
        return;
    struct conn_write *w = malloc(sizeof *w);
    if (w == NULL) {
        drop_later(conn, -ECONNRESET, "out of memory writing a command");
        return;
    }
    uv_buf_t buf = uv_buf_init(conn->out, (unsigned)conn->out_len);
    w->stream = conn->stream;
    w->data = conn->out;
    w->len = conn->out_len;
    conn->out = NULL;
    conn->out_len = conn->out_cap = 0;
    int rc = uv_write(&w->req, &conn->stream->h.stream, &buf, 1, on_write);
    if (rc < 0) {
        char why[sizeof conn->down_why];
        explicit_bzero(w->data, w->len);
        free(w->data);
        free(w);
        snprintf(why, sizeof why, "writing to %s failed: %s", conn->peer, uv_strerror(rc));
        drop_later(conn, -ECONNRESET, why);
        return;
    }
    conn->writing = true;
}

static void on_connected(uv_connect_t *req, int status)
{
    struct conn_stream *s = req->data;
    struct cbd_redis_conn *conn = s->owner;
    if (!s->live)
        return; /* abandoned: timed out or closed */
    if (status == 0)
        status = uv_read_start(&s->h.stream, on_alloc, on_read);
    if (status < 0) {
        record_down(conn, -ECONNREFUSED, "cannot connect to %s: %s", conn->peer, uv_strerror(status));
        detach_stream(conn);
        try_next_address(conn);
    } else {
        conn->phase = PH_UP;
        conn->up_due = true;
        uv_timer_stop(&conn->connect_timer);
        if (s->h.handle.type == UV_TCP) {
            uv_tcp_nodelay(&s->h.tcp, 1);
            /* an idle subscriber on a dead path is noticed (15 s) */
            uv_tcp_keepalive(&s->h.tcp, 1, 15);
        }
        flush(conn);
    }
    report(conn);
}

/* ---- timers ------------------------------------------------------------------------- */

static void on_connect_timeout(uv_timer_t *t)
{
    struct cbd_redis_conn *conn = t->data;
    char why[sizeof conn->down_why];
    snprintf(why, sizeof why, "connecting to %s timed out after %u ms", conn->peer, conn->connect_timeout_ms);
    conn->down_recorded = false; /* the timeout is the news, not the last refused address */
    kill_now(conn, -ETIMEDOUT, why);
    report(conn);
}

static void on_command_timeout(uv_timer_t *t)
{
    struct cbd_redis_conn *conn = t->data;
    char why[sizeof conn->down_why];
    snprintf(why, sizeof why, "%s sent no reply within %u ms", conn->peer, conn->command_timeout_ms);
    kill_now(conn, -ETIMEDOUT, why);
    report(conn);
}

static void finish_close(struct cbd_redis_conn *conn)
{
    kill_now(conn, -ECONNRESET, "closed");
    uv_timer_stop(&conn->connect_timer);
    uv_timer_stop(&conn->command_timer);
    conn->pending += 3;
    uv_close((uv_handle_t *)&conn->connect_timer, on_released);
    uv_close((uv_handle_t *)&conn->command_timer, on_released);
    uv_close((uv_handle_t *)&conn->defer_timer, on_released);
}

static void on_defer(uv_timer_t *t)
{
    struct cbd_redis_conn *conn = t->data;
    if (conn->closing) {
        finish_close(conn);
        return;
    }
    if (conn->drop_due) {
        conn->drop_due = false;
        if (conn->drop_gen == conn->gen && conn->phase != PH_IDLE)
            kill_now(conn, conn->drop_err, conn->drop_why);
    }
    report(conn);
}

static void defer(struct cbd_redis_conn *conn)
{
    uv_timer_start(&conn->defer_timer, on_defer, 0, 0);
}

static void drop_later(struct cbd_redis_conn *conn, int err, const char *why)
{
    if (conn->closing || conn->phase == PH_IDLE || conn->drop_due)
        return;
    conn->drop_due = true;
    conn->drop_gen = conn->gen;
    conn->drop_err = err;
    snprintf(conn->drop_why, sizeof conn->drop_why, "%s", why);
    defer(conn);
}

/* ---- connecting --------------------------------------------------------------------- */

/* Start connecting to a numeric address (ip != NULL) or the unix socket.
 * 0, or -1 with the failure recorded. */
static int try_connect(struct cbd_redis_conn *conn, const char *ip)
{
    struct sockaddr_storage sa;
    struct conn_stream *s = calloc(1, sizeof *s);
    int rc = s == NULL ? UV_ENOMEM : 0;
    if (rc == 0 && ip != NULL && (rc = uv_ip4_addr(ip, conn->addr.port, (struct sockaddr_in *)&sa)) < 0)
        rc = uv_ip6_addr(ip, conn->addr.port, (struct sockaddr_in6 *)&sa);
    if (rc == 0)
        rc = ip != NULL ? uv_tcp_init(conn->loop, &s->h.tcp) : uv_pipe_init(conn->loop, &s->h.pipe, 0);
    if (rc < 0) {
        free(s);
        record_down(conn, -ECONNREFUSED, "cannot connect to %s: %s", conn->peer, uv_strerror(rc));
        return -1;
    }
    s->h.handle.data = s;
    s->connect_req.data = s;
    s->owner = conn;
    s->live = true;
    conn->pending++;
    conn->stream = s;
    conn->phase = PH_CONNECTING;
    if (ip != NULL) {
        rc = uv_tcp_connect(&s->connect_req, &s->h.tcp, (const struct sockaddr *)&sa, on_connected);
    } else {
        uv_pipe_connect(&s->connect_req, &s->h.pipe, conn->addr.path, on_connected);
        rc = 0; /* errors come to on_connected */
    }
    if (rc < 0) {
        record_down(conn, -ECONNREFUSED, "cannot connect to %s: %s", conn->peer, uv_strerror(rc));
        detach_stream(conn);
        return -1;
    }
    return 0;
}

/* The next resolved address that starts connecting; none left ends the
 * connection with the last address's failure. */
static void try_next_address(struct cbd_redis_conn *conn)
{
    while (conn->next_ip < conn->nips) {
        conn->down_recorded = false;
        if (try_connect(conn, conn->ips[conn->next_ip++]) == 0)
            return;
    }
    ended(conn);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct conn_resolve *r = (struct conn_resolve *)req;
    struct cbd_redis_conn *conn = r->conn;
    bool abandoned = r->abandoned;
    free(r);
    conn->pending--;
    if (abandoned) {
        uv_freeaddrinfo(res);
        maybe_finish_close(conn);
        return;
    }
    conn->resolve = NULL;
    conn->nips = conn->next_ip = 0;
    for (struct addrinfo *ai = status == 0 ? res : NULL; ai != NULL && conn->nips < MAX_ADDRESSES; ai = ai->ai_next) {
        char *ip = conn->ips[conn->nips];
        if (ai->ai_family == AF_INET)
            conn->nips += uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof conn->ips[0]) == 0;
        else if (ai->ai_family == AF_INET6)
            conn->nips += uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof conn->ips[0]) == 0;
    }
    uv_freeaddrinfo(res);
    if (conn->nips == 0) {
        record_down(conn, -ECONNREFUSED, "cannot resolve host '%.100s': %s", conn->addr.host,
                    status < 0 ? uv_strerror(status) : "no IPv4/IPv6 address");
        ended(conn);
    } else {
        try_next_address(conn);
    }
    report(conn);
}

static void start_resolve(struct cbd_redis_conn *conn)
{
    struct conn_resolve *r = calloc(1, sizeof *r);
    char port[8];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    snprintf(port, sizeof port, "%u", conn->addr.port);
    conn->phase = PH_RESOLVING;
    int rc = r == NULL ? UV_ENOMEM : uv_getaddrinfo(conn->loop, &r->req, on_resolved, conn->addr.host, port, &hints);
    if (rc < 0) {
        free(r);
        record_down(conn, -ECONNREFUSED, "cannot resolve host '%.100s': %s", conn->addr.host, uv_strerror(rc));
        ended(conn);
        return;
    }
    r->conn = conn;
    conn->resolve = r;
    conn->pending++;
}

/* ---- public --------------------------------------------------------------------------- */

int cbd_redis_conn_new(struct cbd_redis_conn **out, uv_loop_t *loop, const struct cbd_redis_conn_cbs *cbs,
                       uint32_t connect_timeout_ms, uint32_t command_timeout_ms)
{
    struct cbd_redis_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL)
        return -ENOMEM;
    if (cbd_resp_init(&conn->rx) < 0) {
        free(conn);
        return -ENOMEM;
    }
    conn->loop = loop;
    conn->cbs = *cbs;
    conn->connect_timeout_ms = connect_timeout_ms;
    conn->command_timeout_ms = command_timeout_ms;
    uv_timer_init(loop, &conn->connect_timer);
    uv_timer_init(loop, &conn->command_timer);
    uv_timer_init(loop, &conn->defer_timer);
    uv_timer_set_repeat(&conn->command_timer, command_timeout_ms);
    conn->connect_timer.data = conn->command_timer.data = conn->defer_timer.data = conn;
    *out = conn;
    return 0;
}

void *cbd_redis_conn_arg(const struct cbd_redis_conn *conn) { return conn->cbs.arg; }
void cbd_redis_conn_set_data(struct cbd_redis_conn *conn, void *data) { conn->data = data; }
void *cbd_redis_conn_data(const struct cbd_redis_conn *conn) { return conn->data; }
const char *cbd_redis_conn_peer(const struct cbd_redis_conn *conn) { return conn->peer; }

int cbd_redis_conn_open(struct cbd_redis_conn *conn, const struct cbd_redis_addr *addr)
{
    if (conn->closing || conn->phase != PH_IDLE || conn->down_due)
        return -EBUSY;
    conn->addr = *addr;
    conn->gen++;
    conn->down_recorded = false;
    if (addr->path[0] != '\0')
        snprintf(conn->peer, sizeof conn->peer, "unix:%s", addr->path);
    else
        snprintf(conn->peer, sizeof conn->peer, strchr(addr->host, ':') ? "[%s]:%u" : "%s:%u", addr->host,
                 addr->port);
    cbd_resp_reset(&conn->rx);
    uv_timer_start(&conn->connect_timer, on_connect_timeout, conn->connect_timeout_ms, 0);
    conn->nips = conn->next_ip = 0;
    if (addr->path[0] == '\0')
        start_resolve(conn);
    else if (try_connect(conn, NULL) < 0)
        ended(conn);
    if (conn->down_due)
        defer(conn); /* failed at once: report on a later turn */
    return 0;
}

/* Append one formatted command and its waiter. */
static int send_cmd(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, enum waiter_kind kind,
                    int argc, const char **argv, const size_t *argvlen)
{
    char *cmd = NULL;
    if (conn->phase != PH_UP || conn->closing || conn->drop_due)
        return -ENOTCONN;
    if (conn->channel != NULL)
        return -EBUSY;
    struct waiter *w = malloc(sizeof *w);
    int len = w != NULL ? redisFormatCommandArgv(&cmd, argc, argv, argvlen) : -1;
    if (len >= 0 && conn->out_cap - conn->out_len < (size_t)len) {
        size_t cap = conn->out_cap * 2 > conn->out_len + (size_t)len ? conn->out_cap * 2 : conn->out_len + (size_t)len;
        char *o = malloc(cap); /* not realloc: the old buffer is wiped */
        if (o != NULL) {
            if (conn->out != NULL) {
                memcpy(o, conn->out, conn->out_len);
                explicit_bzero(conn->out, conn->out_len);
            }
            free(conn->out);
            conn->out = o;
            conn->out_cap = cap;
        } else {
            len = -1;
        }
    }
    if (len < 0) {
        free(w);
        redisFreeCommand(cmd);
        return -ENOMEM;
    }
    memcpy(conn->out + conn->out_len, cmd, (size_t)len);
    conn->out_len += (size_t)len;
    explicit_bzero(cmd, (size_t)len);
    redisFreeCommand(cmd);
    *w = (struct waiter){.fn = fn, .privdata = privdata, .kind = kind};
    if (conn->tail != NULL)
        conn->tail->next = w;
    else
        conn->head = w;
    conn->tail = w;
    if (conn->head == w)
        uv_timer_start(&conn->command_timer, on_command_timeout, conn->command_timeout_ms,
                       conn->command_timeout_ms);
    flush(conn);
    return 0;
}

int cbd_redis_conn_command(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen)
{
    return send_cmd(conn, fn, privdata, W_COMMAND, argc, argv, argvlen);
}

int cbd_redis_conn_subscribe(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata,
                             const char *channel)
{
    const char *argv[2] = {"SUBSCRIBE", channel};
    size_t len[2] = {9, strlen(channel)};
    if (conn->channel != NULL)
        return -EBUSY;
    char *copy = strdup(channel);
    if (copy == NULL)
        return -ENOMEM;
    int rc = send_cmd(conn, fn, privdata, W_SUBSCRIBE, 2, argv, len);
    if (rc < 0) {
        free(copy);
        return rc;
    }
    conn->channel = copy; /* from here on, no other command */
    conn->channel_len = len[1];
    return 0;
}

void cbd_redis_conn_drop(struct cbd_redis_conn *conn, int err, const char *why)
{
    drop_later(conn, err, why);
}

void cbd_redis_conn_close(struct cbd_redis_conn *conn, void (*done)(void *arg), void *arg)
{
    conn->closing = true;
    conn->close_done = done;
    conn->close_arg = arg;
    defer(conn);
}
