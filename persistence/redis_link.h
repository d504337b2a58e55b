/*
 * redis_link.h - how a redis transport reaches its server: the endpoint of
 * a URI (redis://, unix://, redis-sentinel://), authentication, database,
 * master verification, a command and a subscriber connection, failover
 * and reconnection. The transport (store_redis.c) only encodes commands
 * and reads their replies.
 *
 * A link is online when both connections are up, authenticated (AUTH with
 * the URI's password, and user for ACL users), the command connection is on
 * the URI's database and its server says ROLE master, the transport's own
 * preparation is done (prepare -> cbd_redis_link_prepared), and the
 * subscriber connection is subscribed to the transport's channel. With a
 * redis-sentinel URI the master's address comes from the sentinels first,
 * and a sentinel stays subscribed to +switch-master while online.
 *
 * When either connection ends, or a failover is announced, or the owner
 * drops the link (e.g. a READONLY answer), both connections are dropped,
 * offline() is called once, and the link reconnects after a delay drawn
 * with exponential backoff and full jitter (cbd_redis_backoff_ms), asking
 * the sentinels again first. It never gives up: a wrong password or an
 * unreachable server is reported (offline's why) and retried.
 *
 * Callbacks run from the connections' and timers' callbacks, never inside
 * a call of the owner. Both connections' data pointer (cbd_redis_conn_data)
 * is cbs->arg, for reply callbacks.
 */
#ifndef CBD_REDIS_LINK_H
#define CBD_REDIS_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "redis_conn.h"
#include "redis_uri.h"

#define CBD_REDIS_BACKOFF_BASE_MS 100u
#define CBD_REDIS_BACKOFF_CAP_MS 5000u

struct cbd_redis_link;

struct cbd_redis_link_cbs {
    void *arg;
    /* The command connection is authenticated, on its database and on the
     * master: send what must precede use (SCRIPT LOAD, ...) with
     * cbd_redis_link_command, then call cbd_redis_link_prepared. NULL: none. */
    void (*prepare)(void *arg, struct cbd_redis_link *link);
    /* Online; why names the server ("connected to redis://10.0.0.5:6379/0"). */
    void (*online)(void *arg, const char *why);
    /* Offline: a connection attempt failed (attempt_failed) or an online
     * link was lost; once per attempt or online period. A retry is already
     * scheduled. why names the endpoint and the cause; -EPROTO means the
     * peer broke the protocol (already counted and logged by the link). */
    void (*offline)(void *arg, int err, const char *why, bool attempt_failed);
    /* A message on the channel (shape and channel checked): its payload. */
    void (*message)(void *arg, const char *payload, size_t len);
};

struct cbd_redis_link_stats {
    uint64_t commands_sent;   /* commands written, handshakes and sentinels included */
    uint64_t reconnects;      /* connection attempts after the first */
    uint64_t protocol_errors; /* connections dropped because the peer broke RESP or pub/sub */
    uint64_t failovers;       /* master changes learnt from the sentinels */
};

/* A link for uri (copied) and channel, idle until started. No I/O.
 * 0 or -ENOMEM. */
int cbd_redis_link_new(struct cbd_redis_link **out, uv_loop_t *loop, const struct cbd_redis_uri *uri,
                       const char *channel, const struct cbd_redis_link_cbs *cbs);
/* Connect, the first time it is called. */
void cbd_redis_link_start(struct cbd_redis_link *link);
/* Started, offline and waiting out the backoff: connect now instead. */
void cbd_redis_link_retry_now(struct cbd_redis_link *link);
bool cbd_redis_link_is_online(const struct cbd_redis_link *link);
/* A command on the command connection, while preparing or online: as
 * cbd_redis_conn_command (0, -ENOTCONN, -ENOMEM); counted. */
int cbd_redis_link_command(struct cbd_redis_link *link, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen);
/* The transport's preparation is done (ignored if the attempt it was for ended). */
void cbd_redis_link_prepared(struct cbd_redis_link *link);
/* Take the link offline and reconnect (on a later loop turn): for answers
 * like READONLY, LOADING or NOAUTH that mean "not the server to talk to now". */
void cbd_redis_link_drop(struct cbd_redis_link *link, int err, const char *why);
/* The endpoint for log lines, never with a secret: "redis://10.0.0.5:6379/0",
 * "unix:///run/redis.sock (db 0)", "redis-sentinel://mymaster at
 * 10.0.0.6:6379/0 (sentinels h1:26379,h2:26379)". */
const char *cbd_redis_link_endpoint(const struct cbd_redis_link *link);
void cbd_redis_link_stats(const struct cbd_redis_link *link, struct cbd_redis_link_stats *out);
/* Stop everything without further callbacks, release, then done(arg) on a
 * later loop turn. */
void cbd_redis_link_close(struct cbd_redis_link *link, void (*done)(void *arg), void *arg);

/* The delay before reconnect attempt `attempt` (0 = first retry), from a
 * uniformly random 64-bit r: uniform in [0, min(CAP, BASE * 2^attempt)]
 * ("full jitter"), so hosts that lost the same server do not come back in
 * step. Pure: tests give it r. */
uint32_t cbd_redis_backoff_ms(unsigned attempt, uint64_t r);

#endif /* CBD_REDIS_LINK_H */
