/*
 * store_redis.h - the redis fleet store (see store_redis.c and
 * docs/store-redis.md). URIs (redis_uri.h has the connection options:
 * db, user, password_file, password_env, timeouts, sentinel auth):
 *
 *   redis://[user@]host[:port][/db][?option=value&...]
 *   unix:///path/to/redis.sock[?option=value&...]
 *   redis-sentinel://[user@]host[:port][,host[:port]...]/master[/db][?option=value&...]
 *
 * The store's own options: prefix (key prefix, default "cbd:"), sync_ms
 * (reconcile period, default 1000), instance (the middle part of this
 * host's probe owner id "<hostname>:<instance>:<pid>"; default: the
 * daemon's instance).
 */
#ifndef CBD_STORE_REDIS_H
#define CBD_STORE_REDIS_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

extern const struct cbd_store_ops cbd_store_redis_ops;

/* Counters for the daemon's `stats` reply. */
struct cbd_store_redis_stats {
    uint64_t commands_sent; /* commands written to redis (handshake included) */
    uint64_t errors;        /* error replies and failed or lost connections */
    uint64_t malformed;     /* foreign or garbage data under the prefix, ignored */
    uint64_t reconnects;    /* connection attempts after the first */
    uint64_t protocol_errors; /* connections dropped because the peer broke RESP or pub/sub */
    uint64_t failovers;     /* master changes learnt from the sentinels */
    uint32_t queued;        /* circuits with a transition waiting to be written */
    bool online;            /* both connections up and ready */
};

/* Fill *out for a store made by cbd_store_redis_ops (the caller checks the
 * ops). Loop thread only. */
void cbd_store_redis_stats(const struct cbd_store *s, struct cbd_store_redis_stats *out);

#endif /* CBD_STORE_REDIS_H */
