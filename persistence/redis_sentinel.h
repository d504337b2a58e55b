/*
 * redis_sentinel.h - which server is the master, by asking Redis Sentinel,
 * and news when that changes.
 *
 * Given the sentinels and the master's name of a redis-sentinel:// URI, it
 * asks them in turn (SENTINEL get-master-addr-by-name), the last one that
 * answered first, as Redis' guidelines for sentinel clients advise. The
 * sentinel that named the master stays connected and subscribed to
 * +switch-master, so a failover is known the moment a sentinel announces
 * it; if that watching connection ends, the owner asks again later
 * (cbd_redis_sentinel_watch) and is told if the master moved meanwhile.
 *
 * Callbacks come from the connection's callbacks, never inside a call of
 * the owner. Everything a sentinel answers is validated; an answer that
 * makes no sense counts as that sentinel failing.
 */
#ifndef CBD_REDIS_SENTINEL_H
#define CBD_REDIS_SENTINEL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "redis_conn.h"
#include "redis_uri.h"

struct cbd_redis_sentinel;

struct cbd_redis_sentinel_cbs {
    void *arg;
    /* Answer to ask(): a sentinel named the master (ip and port). */
    void (*found)(void *arg, const struct cbd_redis_addr *master);
    /* Answer to ask(): no sentinel could name it; why lists each one's failure. */
    void (*failed)(void *arg, int err, const char *why);
    /* The master is no longer `current`: a +switch-master for our name, or
     * a watch() that found another address. why says which sentinel said so. */
    void (*moved)(void *arg, const struct cbd_redis_addr *master, const char *why);
    /* The watching connection ended (not after stop()); watch() again later. */
    void (*unwatched)(void *arg, int err, const char *why);
};

struct cbd_redis_sentinel_stats {
    uint64_t commands_sent, protocol_errors;
};

/* No I/O. uri must be a redis-sentinel URI and outlive the object. 0 or -ENOMEM. */
int cbd_redis_sentinel_new(struct cbd_redis_sentinel **out, uv_loop_t *loop, const struct cbd_redis_uri *uri,
                           const struct cbd_redis_sentinel_cbs *cbs);
/* Ask the sentinels for the master: found() or failed() follows. Drops a
 * watch in progress. */
void cbd_redis_sentinel_ask(struct cbd_redis_sentinel *s);
/* Ask again while the master is known to be `current`: moved() if it is
 * not, unwatched() if no sentinel answers, else watching again. */
void cbd_redis_sentinel_watch(struct cbd_redis_sentinel *s, const struct cbd_redis_addr *current);
/* Stop asking or watching; no callback follows until the next ask/watch. */
void cbd_redis_sentinel_stop(struct cbd_redis_sentinel *s);
/* "h1:26379,h2:26379": for log lines. */
const char *cbd_redis_sentinel_list(const struct cbd_redis_sentinel *s);
void cbd_redis_sentinel_stats(const struct cbd_redis_sentinel *s, struct cbd_redis_sentinel_stats *out);
/* Release everything, then done(arg) on a later loop turn. */
void cbd_redis_sentinel_close(struct cbd_redis_sentinel *s, void (*done)(void *arg), void *arg);

#endif /* CBD_REDIS_SENTINEL_H */
