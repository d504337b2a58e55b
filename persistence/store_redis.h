/*
 * store_redis.h - the redis fleet store: the fleet layer (fleet.h) over the
 * redis transport of store_redis.c (docs/store-redis.md). URIs (redis_uri.h
 * has the connection options: db, user, password_file, password_env,
 * timeouts, sentinel auth):
 *
 *   redis://[user@]host[:port][/db][?option=value&...]
 *   unix:///path/to/redis.sock[?option=value&...]
 *   redis-sentinel://[user@]host[:port][,host[:port]...]/master[/db][?option=value&...]
 *
 * The store's own options: prefix (key prefix, default "cbd:"), sync_ms
 * (reconcile period, default 1000), read_budget (circuit reads a second
 * the reconcile may spend, default 0: every circuit each sync), instance (the instance part of this
 * host's probe owner id "<hostname>:<instance>:<pid>:<random>"; default:
 * the daemon's instance).
 */
#ifndef CBD_STORE_REDIS_H
#define CBD_STORE_REDIS_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "fleet.h"
#include "store.h"

extern const struct cbd_store_ops cbd_store_redis_ops;

/* The transport alone, for tests that drive it without the fleet layer
 * (tests/integration/test_fleet_contract.c). */
extern const struct fleet_transport_ops cbd_redis_transport_ops;

/*
 * cbd_redis_item_decode - a circuit's hash, as the field/value list el[0..n)
 * of HGETALL or of a script's answer, into *out. Known fields must be
 * strings; numbers digits only and in range (opened_at,
 * probe_lease_expiry, open_until and open_until_of up to CB_TIME_MAX_S,
 * the last two together or not at all: fleet_item_deadline; failure_count 32 bits,
 * updated_ms up to CB_TIME_MAX_S * 1000, version up to 2^53);
 * half_open_owner at most FLEET_OWNER_MAX bytes without NUL; state exactly
 * CLOSED, OPEN or HALF_OPEN; each field at most once; and what the state
 * needs present (fleet_item_check). Fields the layout does not name are
 * ignored. The shadow marker (shadow_state, shadow_since, shadow_host:
 * fleet_item_shadow) never makes the hash invalid: a bad one is dropped
 * with out->shadow_invalid set. Returns 1 with *out, 0 for an empty list
 * or a hash holding only a valid shadow marker (no item; out->shadow), or
 * -EBADMSG with why (size bytes, always terminated) naming the fault the
 * way an operator reads it ("field 'opened_at' is not a number ('soon')").
 */
int cbd_redis_item_decode(redisReply *const *el, size_t n, struct fleet_item *out, char *why, size_t size);

#endif /* CBD_STORE_REDIS_H */
