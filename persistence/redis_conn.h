/*
 * redis_conn.h - one connection to a redis server (or a sentinel) on the
 * daemon's libuv loop, which nothing the peer sends can crash.
 *
 * The connection is a libuv stream (TCP or unix socket). Commands are
 * formatted by hiredis and written in order; replies are read with bounds
 * (redis_resp.h) and matched to a FIFO of the commands waiting for them,
 * kept here - not hiredis' async context, which asserts (and so aborts the
 * daemon) on a reply nobody waits for or a pub/sub reply of unexpected
 * shape. A reply with no command waiting, bytes that are not RESP or break
 * its limits, a pub/sub frame of the wrong shape, or a connection closed in
 * the middle of a reply end the connection with -EPROTO and a reason naming
 * the peer and what was wrong.
 *
 * Rules the owner can rely on:
 *  - up() and down() never run inside a call the owner made: they run from
 *    the connection's own I/O and timer callbacks.
 *  - Exactly one down() per open() that returned 0, however the connection
 *    ends (refused, reset, timed out, protocol error, dropped).
 *  - When down() runs, every command's reply callback has already run,
 *    those without an answer with reply == NULL.
 *  - A reply callback may send commands and may call cbd_redis_conn_drop()
 *    or cbd_redis_conn_close(); the drop happens on a later loop turn and no
 *    further reply is delivered meanwhile. The reply is freed when the
 *    callback returns.
 *  - A connect timeout covers resolving and connecting; a command timeout
 *    runs while any command waits for its reply and restarts on every reply.
 */
#ifndef CBD_REDIS_CONN_H
#define CBD_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Where a server listens: a TCP host and port, or a unix socket path. */
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
     * -ECONNREFUSED (could not resolve or connect), -ETIMEDOUT (connect or
     * command timeout), -ECONNRESET (lost, or closed by the peer), -EPROTO
     * (the peer broke the protocol), or the err given to drop(). why names
     * it for an operator, with the peer, and is valid during the call only. */
    void (*down)(void *arg, struct cbd_redis_conn *conn, int err, const char *why);
};

/* A connection object, idle until opened. No I/O. 0 or -ENOMEM. */
int cbd_redis_conn_new(struct cbd_redis_conn **out, uv_loop_t *loop, const struct cbd_redis_conn_cbs *cbs,
                       uint32_t connect_timeout_ms, uint32_t command_timeout_ms);

/* The cbs->arg the connection was made with. */
void *cbd_redis_conn_arg(const struct cbd_redis_conn *conn);
/* A second pointer for reply callbacks to find their owner (NULL until set). */
void cbd_redis_conn_set_data(struct cbd_redis_conn *conn, void *data);
void *cbd_redis_conn_data(const struct cbd_redis_conn *conn);
/* "host:port" or "unix:/path" of the last open(), for log lines. */
const char *cbd_redis_conn_peer(const struct cbd_redis_conn *conn);

/* Start connecting; up() or down() follows. 0, or -EBUSY if the previous
 * connection has not reported down() yet (then no callback follows). */
int cbd_redis_conn_open(struct cbd_redis_conn *conn, const struct cbd_redis_addr *addr);

/* Queue one command (argv form, binary safe). 0; -ENOTCONN when the
 * connection is not up or is being dropped, -EBUSY once subscribed,
 * -ENOMEM (then fn is never called). */
int cbd_redis_conn_command(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen);

/* SUBSCRIBE channel. fn gets the confirmation (validated: ["subscribe",
 * channel, count]) or an error reply, then, once subscribed, every message
 * (validated: ["message", channel, string]: the payload is element[2]),
 * then NULL when the connection ends. The connection takes no other
 * command afterwards. 0, -ENOTCONN, -EBUSY (already subscribed), -ENOMEM. */
int cbd_redis_conn_subscribe(struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, void *privdata,
                             const char *channel);

/* End the current connection on a later loop turn; down(err, why) follows
 * unless the connection ended by itself first. A no-op when idle. */
void cbd_redis_conn_drop(struct cbd_redis_conn *conn, int err, const char *why);

/* End any connection without reporting down(), release everything, then
 * done(arg) on a later loop turn. conn is gone afterwards. */
void cbd_redis_conn_close(struct cbd_redis_conn *conn, void (*done)(void *arg), void *arg);

#endif /* CBD_REDIS_CONN_H */
