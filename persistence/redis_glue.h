/*
 * redis_glue.h - one hiredis async connection on the daemon's libuv loop.
 *
 * hiredis 0.14 brings no timeouts and its bundled libuv adapter drops a
 * failed poll status on the floor (a refused connection then fires no
 * callback at all). This glue owns the connection's life instead: DNS
 * resolution off the loop, the connect, a connect timeout and a command
 * timeout on uv timers, and exactly one `down` report per open() however the
 * connection ends (refused, reset, timed out, dropped by its owner).
 *
 * Rules the owner can rely on:
 *  - up() and down() never run inside a call the owner made, and never
 *    inside hiredis: they run from the glue's own poll/timer callbacks.
 *  - When down() runs, every command's reply callback has already run,
 *    those without an answer with reply == NULL.
 *  - A reply callback may send commands and may call cbd_redis_conn_drop();
 *    the drop happens on a later loop turn.
 */
#ifndef CBD_REDIS_GLUE_H
#define CBD_REDIS_GLUE_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Where redis listens: a TCP host and port, or a unix socket path. */
struct cbd_redis_addr {
    char host[256]; /* name or address literal; "" for a unix socket */
    uint16_t port;
    char path[108]; /* unix socket path; "" for TCP */
};

struct cbd_redis_conn;

/* A reply (or NULL: the connection ended before the reply came). */
typedef void cbd_redis_reply_fn(struct cbd_redis_conn *conn, redisReply *reply, void *privdata);

struct cbd_redis_conn_cbs {
    void *arg;
    /* Connected: send the handshake (AUTH, SELECT, ...). */
    void (*up)(void *arg, struct cbd_redis_conn *conn);
    /* The connection attempt failed or the connection ended. err is
     * -ECONNREFUSED (could not connect or resolve), -ETIMEDOUT (connect or
     * command timeout) or -ECONNRESET (lost or dropped); why names it for
     * an operator and is valid during the call only. */
    void (*down)(void *arg, struct cbd_redis_conn *conn, int err, const char *why);
};

/* A connection object, idle until opened. No I/O. 0 or -ENOMEM. */
int cbd_redis_conn_new(struct cbd_redis_conn **out, uv_loop_t *loop, const struct cbd_redis_conn_cbs *cbs,
                       uint32_t connect_timeout_ms, uint32_t command_timeout_ms);

/* The cbs->arg the connection was made with. */
void *cbd_redis_conn_arg(const struct cbd_redis_conn *conn);

/* Start connecting; up() or down() follows. 0, or -EBUSY if the previous
 * connection has not reported down() yet (then no callback follows). */
int cbd_redis_conn_open(struct cbd_redis_conn *conn, const struct cbd_redis_addr *addr);

/* Queue one command (argv form, binary safe). 0, or -ENOTCONN when the
 * connection is not up (then fn is never called). The command timeout
 * runs while any command waits for its first reply. */
int cbd_redis_conn_command(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen);

/* SUBSCRIBE channel: fn gets the confirmation, then every message, then a
 * NULL reply when the connection ends. 0 or -ENOTCONN. */
int cbd_redis_conn_subscribe(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata,
                             const char *channel);

/* End the current connection on a later loop turn; down(err, why) follows
 * unless the connection ended by itself first. A no-op when idle. */
void cbd_redis_conn_drop(struct cbd_redis_conn *conn, int err, const char *why);

/* End any connection without reporting down(), release everything, then
 * done(arg) on a later loop turn. conn is gone afterwards. */
void cbd_redis_conn_close(struct cbd_redis_conn *conn, void (*done)(void *arg), void *arg);

#endif /* CBD_REDIS_GLUE_H */
