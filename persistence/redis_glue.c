/*
 * redis_glue.c - a hiredis 0.14 async context driven by the libuv loop.
 *
 * Design. hiredis reports an async context's life through three doors: the
 * connect callback (success or failure of the non-blocking connect), the
 * reply callbacks (NULL when the context dies with the reply outstanding),
 * and the event library's cleanup hook, which it calls whenever the context
 * is torn down, for any reason. The glue treats the cleanup hook as the one
 * place where a connection ends: it records the cause (the first recorded
 * cause wins: a failed connect, our timeout or drop, else hiredis' errstr),
 * releases the poll watcher, and marks a down() report due. Reports are
 * delivered only at the end of the glue's own entry points (poll and timer
 * callbacks), never inside hiredis and never inside a call of the owner, so
 * the owner may do anything in up()/down() (even free nothing is in use).
 *
 * Why not hiredis' adapters/libuv.h: on a non-zero poll status (libuv says
 * UV_EBADF for EPOLLERR, e.g. a refused connect) it returns without telling
 * hiredis, libuv has already stopped the watcher, and the connection hangs
 * forever with no callback. Here a failed poll status is handed to hiredis
 * as "writable, then readable": the write path runs hiredis' connect check
 * (getsockopt SO_ERROR -> connect callback with REDIS_ERR) or the failing
 * write, the read path sees a reset or EOF, and hiredis tears the context
 * down with its own error text. If hiredis still sees nothing wrong, the
 * glue ends the connection itself: libuv will not watch that fd again.
 *
 * Freeing a context from inside one of its callbacks is unsafe in 0.14
 * (the connect callback is not guarded by REDIS_IN_CALLBACK), so every
 * teardown the glue starts (timeouts, drop, close) runs from a uv timer,
 * outside hiredis.
 *
 * Timeouts: the connect timer covers resolution and the TCP/unix connect;
 * the command timer runs while any command waits for its first reply and is
 * re-armed on every reply (progress), so a silent server is noticed within
 * command_timeout_ms even on an idle-looking pipeline. Host names are
 * resolved with uv_getaddrinfo (off the loop) because hiredis' own connect
 * would call getaddrinfo on the loop thread; the addresses are tried in
 * order until one connects (a dual-stack "localhost" may give ::1 first
 * while redis listens on 127.0.0.1 only), all within the connect timeout.
 */
#include "redis_glue.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum glue_phase { PH_IDLE, PH_RESOLVING, PH_CONNECTING, PH_UP };

/* The poll watcher of one hiredis context. It outlives the context until
 * its uv_close callback. */
struct glue_poll {
    uv_poll_t handle;
    redisAsyncContext *ac; /* NULL once hiredis cleaned up */
    struct cbd_redis_conn *conn;
    int events;
};

struct glue_resolve {
    uv_getaddrinfo_t req;
    struct cbd_redis_conn *conn;
    bool abandoned; /* the connection gave up on this lookup */
};

/* What a command's reply is routed through. */
struct glue_cmd {
    struct cbd_redis_conn *conn;
    cbd_redis_reply_fn *fn;
    void *privdata;
    bool waiting;    /* counted in conn->outstanding until its first reply */
    bool persistent; /* SUBSCRIBE: called per message, freed at the NULL reply */
};

struct cbd_redis_conn {
    uv_loop_t *loop;
    struct cbd_redis_conn_cbs cbs;
    uint32_t connect_timeout_ms, command_timeout_ms;
    enum glue_phase phase;
    uint64_t gen; /* open() count: a deferred drop hits only its own connection */
    redisAsyncContext *ac;
    struct glue_resolve *resolve; /* the lookup in flight */
    struct cbd_redis_addr addr;
    char ips[4][64]; /* resolved addresses, tried in order until one connects */
    unsigned nips, next_ip;
    bool next_due; /* the connect to one address failed: try the next */
    unsigned outstanding; /* commands waiting for their first reply */
    uv_timer_t connect_timer, command_timer, defer_timer;
    /* how the current connection ended; the first recorded cause wins */
    bool down_recorded, down_due, up_due;
    int down_err;
    char down_why[192];
    /* a drop asked for from inside a callback, done by defer_timer */
    bool drop_due;
    uint64_t drop_gen;
    int drop_err;
    char drop_why[192];
    bool closing;
    unsigned pending; /* handles and lookups not yet released */
    void (*close_done)(void *arg);
    void *close_arg;
};

static void on_poll(uv_poll_t *h, int status, int events);

static void record_down(struct cbd_redis_conn *conn, int err, const char *why)
{
    if (conn->down_recorded)
        return;
    conn->down_recorded = true;
    conn->down_err = err;
    snprintf(conn->down_why, sizeof conn->down_why, "%s", why);
}

/* The connection is gone (whatever ended it): back to idle, report due. */
static void ended(struct cbd_redis_conn *conn)
{
    record_down(conn, -ECONNRESET, "connection closed");
    conn->phase = PH_IDLE;
    conn->ac = NULL;
    conn->outstanding = 0;
    conn->up_due = false;
    conn->down_due = true;
    uv_timer_stop(&conn->connect_timer);
    uv_timer_stop(&conn->command_timer);
}

static void try_next_address(struct cbd_redis_conn *conn);

/* Deliver what is due. Called last in every glue entry point. */
static void report(struct cbd_redis_conn *conn)
{
    if (conn->next_due) {
        conn->next_due = false;
        try_next_address(conn);
    }
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

static void maybe_finish_close(struct cbd_redis_conn *conn)
{
    if (!conn->closing || conn->pending > 0)
        return;
    void (*done)(void *) = conn->close_done;
    void *arg = conn->close_arg;
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

static void on_poll_closed(uv_handle_t *h)
{
    struct glue_poll *p = h->data;
    struct cbd_redis_conn *conn = p->conn;
    free(p);
    conn->pending--;
    maybe_finish_close(conn);
}

/* ---- hiredis event hooks ---------------------------------------------------- */

static void poll_update(struct glue_poll *p)
{
    if (p->ac == NULL)
        return;
    if (p->events != 0)
        uv_poll_start(&p->handle, p->events, on_poll);
    else
        uv_poll_stop(&p->handle);
}

static void ev_add_read(void *d) { ((struct glue_poll *)d)->events |= UV_READABLE; poll_update(d); }
static void ev_del_read(void *d) { ((struct glue_poll *)d)->events &= ~UV_READABLE; poll_update(d); }
static void ev_add_write(void *d) { ((struct glue_poll *)d)->events |= UV_WRITABLE; poll_update(d); }
static void ev_del_write(void *d) { ((struct glue_poll *)d)->events &= ~UV_WRITABLE; poll_update(d); }

/* hiredis tears the context down (error, EOF, failed connect, or our
 * redisAsyncFree). It may call this twice; the second call finds p->ac NULL. */
static void ev_cleanup(void *d)
{
    struct glue_poll *p = d;
    redisAsyncContext *ac = p->ac;
    if (ac == NULL)
        return;
    struct cbd_redis_conn *conn = p->conn;
    record_down(conn, -ECONNRESET, ac->c.err ? ac->c.errstr : "connection closed");
    ac->ev.addRead = ac->ev.delRead = ac->ev.addWrite = ac->ev.delWrite = NULL;
    ac->ev.cleanup = NULL;
    ac->ev.data = NULL;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->handle, on_poll_closed);
    if (conn->phase == PH_CONNECTING && conn->next_ip < conn->nips) {
        conn->ac = NULL; /* this address failed; report() tries the next */
        conn->down_recorded = false;
        conn->next_due = true;
        return;
    }
    ended(conn);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct cbd_redis_conn *conn = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this; ev_cleanup follows */
        record_down(conn, -ECONNREFUSED, ac->c.errstr);
        return;
    }
    conn->phase = PH_UP;
    conn->up_due = true;
    uv_timer_stop(&conn->connect_timer);
}

/* ---- teardown from the loop (never inside hiredis) -------------------------- */

static void kill_now(struct cbd_redis_conn *conn, int err, const char *why)
{
    record_down(conn, err, why);
    conn->next_ip = conn->nips; /* no fallback to other addresses */
    conn->next_due = false;
    if (conn->resolve != NULL) {
        conn->resolve->abandoned = true; /* its callback releases it */
        conn->resolve = NULL;
        ended(conn);
    } else if (conn->ac != NULL) {
        /* runs every pending reply callback with NULL, then ev_cleanup */
        redisAsyncFree(conn->ac);
    } else if (conn->phase != PH_IDLE) {
        ended(conn); /* between two addresses */
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct glue_poll *p = h->data;
    struct cbd_redis_conn *conn = p->conn;
    if (status < 0) {
        /* The fd is in error and libuv stopped watching it. Let hiredis
         * write first: its connect check or a failing write reports the
         * error; then read, which sees a reset or EOF. */
        if (p->ac != NULL)
            redisAsyncHandleWrite(p->ac);
        if (p->ac != NULL)
            redisAsyncHandleRead(p->ac);
        if (p->ac != NULL) {
            char why[96];
            snprintf(why, sizeof why, "socket error: %s", uv_strerror(status));
            kill_now(conn, -ECONNRESET, why);
        }
    } else {
        if (p->ac != NULL && (events & UV_READABLE))
            redisAsyncHandleRead(p->ac);
        if (p->ac != NULL && (events & UV_WRITABLE))
            redisAsyncHandleWrite(p->ac);
    }
    report(conn);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct cbd_redis_conn *conn = t->data;
    char why[64];
    snprintf(why, sizeof why, "connect timed out after %u ms", conn->connect_timeout_ms);
    kill_now(conn, -ETIMEDOUT, why);
    report(conn);
}

static void on_command_timeout(uv_timer_t *t)
{
    struct cbd_redis_conn *conn = t->data;
    char why[64];
    snprintf(why, sizeof why, "no reply within %u ms", conn->command_timeout_ms);
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

/* ---- connecting ------------------------------------------------------------- */

static int attach(struct cbd_redis_conn *conn, redisAsyncContext *ac)
{
    struct glue_poll *p = calloc(1, sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    int rc = uv_poll_init(conn->loop, &p->handle, ac->c.fd);
    if (rc < 0) {
        free(p);
        return rc;
    }
    p->handle.data = p;
    p->conn = conn;
    p->ac = ac;
    conn->pending++;
    ac->data = conn;
    ac->ev.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    conn->ac = ac;
    /* arms the write watch whose first event completes the connect */
    redisAsyncSetConnectCallback(ac, on_connect);
    return 0;
}

/* Start connecting to a numeric address (ip != NULL) or the unix socket.
 * 0, or -1 with the failure recorded. */
static int try_connect(struct cbd_redis_conn *conn, const char *ip)
{
    redisAsyncContext *ac =
        ip != NULL ? redisAsyncConnect(ip, conn->addr.port) : redisAsyncConnectUnix(conn->addr.path);
    if (ac == NULL) {
        record_down(conn, -ECONNREFUSED, "out of memory creating the connection");
        return -1;
    }
    if (ac->err) {
        record_down(conn, -ECONNREFUSED, ac->c.errstr);
        redisAsyncFree(ac);
        return -1;
    }
    /* TCP keepalive (15 s): an idle subscriber on a dead path is noticed */
    if (ip != NULL)
        redisEnableKeepAlive(&ac->c);
    int rc = attach(conn, ac);
    if (rc < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot watch the socket: %s", uv_strerror(rc));
        record_down(conn, -ECONNREFUSED, why);
        redisAsyncFree(ac);
        return -1;
    }
    conn->phase = PH_CONNECTING;
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
    struct glue_resolve *r = (struct glue_resolve *)req;
    struct cbd_redis_conn *conn = r->conn;
    bool abandoned = r->abandoned;
    free(r);
    conn->pending--;
    conn->nips = conn->next_ip = 0;
    for (struct addrinfo *ai = status == 0 && !abandoned ? res : NULL; ai != NULL && conn->nips < 4; ai = ai->ai_next) {
        char *ip = conn->ips[conn->nips];
        if (ai->ai_family == AF_INET)
            conn->nips += uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof conn->ips[0]) == 0;
        else if (ai->ai_family == AF_INET6)
            conn->nips += uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof conn->ips[0]) == 0;
    }
    uv_freeaddrinfo(res);
    if (abandoned) {
        maybe_finish_close(conn);
        return;
    }
    conn->resolve = NULL;
    if (conn->nips == 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot resolve host '%.100s': %s", conn->addr.host,
                 status < 0 ? uv_strerror(status) : "no IPv4/IPv6 address");
        record_down(conn, -ECONNREFUSED, why);
        ended(conn);
    } else {
        try_next_address(conn);
    }
    report(conn);
}

static void start_resolve(struct cbd_redis_conn *conn)
{
    struct glue_resolve *r = calloc(1, sizeof *r);
    char port[8];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    snprintf(port, sizeof port, "%u", conn->addr.port);
    int rc = r == NULL ? UV_ENOMEM : uv_getaddrinfo(conn->loop, &r->req, on_resolved, conn->addr.host, port, &hints);
    if (rc < 0) {
        char why[160];
        free(r);
        snprintf(why, sizeof why, "cannot resolve host '%.100s': %s", conn->addr.host, uv_strerror(rc));
        record_down(conn, -ECONNREFUSED, why);
        ended(conn);
        return;
    }
    r->conn = conn;
    conn->resolve = r;
    conn->pending++;
    conn->phase = PH_RESOLVING;
}

/* ---- public ------------------------------------------------------------------ */

int cbd_redis_conn_new(struct cbd_redis_conn **out, uv_loop_t *loop, const struct cbd_redis_conn_cbs *cbs,
                       uint32_t connect_timeout_ms, uint32_t command_timeout_ms)
{
    struct cbd_redis_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL)
        return -ENOMEM;
    conn->loop = loop;
    conn->cbs = *cbs;
    conn->connect_timeout_ms = connect_timeout_ms;
    conn->command_timeout_ms = command_timeout_ms;
    uv_timer_init(loop, &conn->connect_timer);
    uv_timer_init(loop, &conn->command_timer);
    uv_timer_init(loop, &conn->defer_timer);
    conn->connect_timer.data = conn->command_timer.data = conn->defer_timer.data = conn;
    *out = conn;
    return 0;
}

void *cbd_redis_conn_arg(const struct cbd_redis_conn *conn) { return conn->cbs.arg; }

int cbd_redis_conn_open(struct cbd_redis_conn *conn, const struct cbd_redis_addr *addr)
{
    if (conn->closing || conn->phase != PH_IDLE || conn->down_due)
        return -EBUSY;
    conn->addr = *addr;
    conn->gen++;
    conn->down_recorded = false;
    conn->outstanding = 0;
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

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    struct glue_cmd *cmd = privdata;
    struct cbd_redis_conn *conn = cmd->conn;
    if (cmd->waiting) {
        cmd->waiting = false;
        if (conn->outstanding > 0)
            conn->outstanding--;
        if (conn->outstanding == 0)
            uv_timer_stop(&conn->command_timer);
        else if (reply != NULL) /* progress: the next reply gets a full timeout */
            uv_timer_start(&conn->command_timer, on_command_timeout, conn->command_timeout_ms, 0);
    }
    cmd->fn(conn, reply, cmd->privdata);
    if (!cmd->persistent || reply == NULL)
        free(cmd);
}

static int send_cmd(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, bool persistent,
                    int argc, const char **argv, const size_t *argvlen)
{
    if (conn->phase != PH_UP || conn->closing || conn->drop_due)
        return -ENOTCONN;
    struct glue_cmd *cmd = malloc(sizeof *cmd);
    if (cmd == NULL)
        return -ENOMEM;
    *cmd = (struct glue_cmd){.conn = conn, .fn = fn, .privdata = privdata, .waiting = true, .persistent = persistent};
    if (redisAsyncCommandArgv(conn->ac, on_reply, cmd, argc, argv, argvlen) != REDIS_OK) {
        free(cmd); /* the context is disconnecting */
        return -ENOTCONN;
    }
    if (conn->outstanding++ == 0)
        uv_timer_start(&conn->command_timer, on_command_timeout, conn->command_timeout_ms, 0);
    return 0;
}

int cbd_redis_conn_command(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen)
{
    return send_cmd(conn, fn, privdata, false, argc, argv, argvlen);
}

int cbd_redis_conn_subscribe(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata,
                             const char *channel)
{
    const char *argv[2] = {"SUBSCRIBE", channel};
    size_t len[2] = {9, strlen(channel)};
    return send_cmd(conn, fn, privdata, true, 2, argv, len);
}

void cbd_redis_conn_drop(struct cbd_redis_conn *conn, int err, const char *why)
{
    if (conn->closing || conn->phase == PH_IDLE || conn->drop_due)
        return;
    conn->drop_due = true;
    conn->drop_gen = conn->gen;
    conn->drop_err = err;
    snprintf(conn->drop_why, sizeof conn->drop_why, "%s", why);
    defer(conn);
}

void cbd_redis_conn_close(struct cbd_redis_conn *conn, void (*done)(void *arg), void *arg)
{
    conn->closing = true;
    conn->close_done = done;
    conn->close_arg = arg;
    defer(conn);
}
