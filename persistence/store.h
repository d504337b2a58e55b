/*
 * store.h - where circuits outlive the daemon, and how a fleet shares them.
 *
 * A store is a table of functions (struct cbd_store_ops) over the daemon's
 * libuv loop. Three backends implement it:
 *
 *   local     the embedded default: one state file, written atomically
 *             (temp, fsync, rename, fsync dir) after transitions, read at
 *             start. Host-local: the fleet calls below grant at once.
 *   redis     the fleet layer (fleet.c) over the redis transport: cbd's own
 *             connections on the loop (redis_link.c, redis_conn.c; hiredis
 *             only reads replies), Lua compare-and-write scripts, pub/sub.
 *   dynamodb  the fleet layer over the dynamodb transport: libcurl multi on
 *             the loop, SigV4, Powertools' item layout.
 *
 * Contract, the same for every backend:
 *  - Nothing here blocks the loop. Every call returns at once; results come
 *    back through the callbacks in struct cbd_store_hooks, on the loop.
 *  - The request path never waits for a store: the daemon publishes a
 *    transition to the segment first, then tells the store (write-through).
 *  - A store never overwrites a newer transition: each write carries the
 *    opened_at/state it supersedes and compares before it writes.
 *  - While a store is unreachable the daemon runs host-local; the store
 *    retries with backoff and, once back, reconciles (reports what it holds
 *    through hooks->remote) so an OPEN is never lost.
 *  - A shadow circuit's transitions (st->shadow) reach a fleet store only
 *    as the item's shadow marker, an unconditional write that never
 *    changes what other hosts or Powertools obey.
 *  - Store traffic depends on transitions and on circuits / sync interval,
 *    never on the request rate: only transitions and periodic syncs call it.
 *  - Stores are part of the daemon and may log through common/log.h
 *    (cbd_log); the daemon also logs every text given to hooks->health.
 */
#ifndef CBD_STORE_H
#define CBD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cb.h"

struct cbd_store;

/* A shadow circuit's trial as a fleet store holds it (the last host that
 * ran the circuit in shadow and had a transition wrote it). */
struct cbd_store_shadow {
    cb_state state;
    int64_t since;     /* epoch seconds of that transition */
    char host[96];     /* the writing host's owner id */
};

/* A circuit's shared state as the fleet sees it (Powertools' item). */
struct cbd_store_state {
    char name[128];
    cb_state state;
    uint32_t failure_count; /* failures at trip time, else 0 */
    int64_t opened_at;      /* epoch seconds; 0 when closed */
    int64_t opened_at_ns;   /* the same at full precision where the store keeps it (local), else 0 */
    char probe_owner[96];   /* HALF_OPEN: the probe holder's id, "" otherwise */
    int64_t lease_expiry;   /* HALF_OPEN: epoch seconds; 0 otherwise */
    int64_t updated_at;     /* fleet stores: epoch seconds (store's clock) of its last write; 0 unknown */
    int64_t open_until_ns;  /* OPEN: CLOCK_REALTIME ns its wait ends at (the opening host's backoff);
                             * 0: none, it ends at opened_at + recovery_timeout */
    /* fleet stores only: a shadow circuit's transition, a trial other hosts
     * must not obey: written as the item's shadow marker, never its state */
    bool shadow;
    /* local store only: the policy, so registrations survive a reboot */
    bool has_config;
    cb_config config;
};

/* What the daemon gives a store: its loop and the callbacks it answers to.
 * All callbacks run on the loop thread. */
struct cbd_store_hooks {
    uv_loop_t *loop;
    void *arg;
    const char *instance; /* the daemon's instance (part of a fleet owner id); may be NULL */
    /* The fleet changed a circuit (another host, or reconcile after an
     * outage). The daemon applies it if it is newer than what it has. */
    void (*remote)(void *arg, const struct cbd_store_state *st);
    /* Answer to try_probe: granted = this host holds the fleet's probe
     * lease for (name, opened_at) until lease_expiry (epoch seconds).
     * Refused: lease_expiry is when the current holder's lease ends (when
     * to ask again), 0 if unknown. */
    void (*probe_result)(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry);
    /* The store's health, with news for the operator: online = writes are
     * reaching it. The daemon logs why (a warning when offline) and mirrors
     * online into each record's sync_state/synced_at. */
    void (*health)(void *arg, bool online, const char *why);
    /* Optional (NULL: never called; stores check): the store and the fleet
     * agreed on circuit name at at_s (epoch seconds) - a write of it
     * landed, an election about it was answered, or a read found what the
     * daemon has (or reported the difference) - and no write of it is
     * pending. The daemon shows it as the record's sync_state OK and
     * synced_at; a local transition makes it PENDING until the next call. */
    void (*synced)(void *arg, const char *name, int64_t at_s);
    /* Optional (NULL: the store tells busy circuits from idle ones by
     * nothing): each(each_arg, name) for every circuit with local traffic
     * (an outcome drained, or a registration) since *mark, then *mark =
     * now. *mark is the daemon's opaque bookmark, kept by the store between
     * calls, 0 at first (every circuit). A fleet store with a read budget
     * calls it once per sync to read those circuits before the others. */
    void (*used)(void *arg, uint64_t *mark, void (*each)(void *each_arg, const char *name), void *each_arg);
};

struct cbd_store_ops {
    const char *scheme; /* "local", "redis", "dynamodb" */
    /* Parse uri and prepare; no I/O yet. 0 or -EINVAL with *err set to a
     * static message naming what is wrong with the URI. */
    int (*create)(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks,
                  const char **err);
    /* Check uri exactly as create() would, without I/O or side effects
     * (cbd --check-config and the daemon's start use it alike). 0, or
     * -EINVAL with an operator-readable reason in why (size bytes). */
    int (*check_uri)(const char *uri, char *why, size_t size);
    /* Load everything the store holds, calling hooks->remote for each
     * circuit, then done(arg, rc). Called once before READY. rc < 0 means
     * the store could not be read (the daemon logs it and starts host-local). */
    void (*restore)(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg);
    /* A circuit exists (registration or config change): the local store
     * keeps it; fleet stores start syncing it. */
    void (*track)(struct cbd_store *s, const char *name, const cb_config *cfg);
    /* Optional (may be NULL): the circuit was removed on this host; the
     * local store forgets it, fleet stores stop syncing it (the fleet's
     * item stays: other hosts may use the circuit). */
    void (*untrack)(struct cbd_store *s, const char *name);
    /* Write-through of a local transition; st is the state after it and
     * prev_opened_at the opening it supersedes (for compare-and-write). */
    void (*transition)(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at);
    /* Ask the fleet for the probe lease of an OPEN circuit whose recovery
     * timeout passed on this host; answered by hooks->probe_result. The
     * local store grants at once (on the next loop turn). With a fleet
     * store the holder asks again halfway through its lease, to renew it:
     * a store grants the holder of a live lease a new one (the owner id
     * is the caller's), and refuses everyone else until it expires. */
    void (*try_probe)(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s);
    /* Optional (may be NULL: the lease lapses instead): this host holds
     * the probe lease of (name, opened_at) but nobody here probes: give it
     * back without a result (the fleet's item goes back to OPEN on the
     * same opening, without an owner), so another host or a Powertools
     * function can probe at once. */
    void (*release)(struct cbd_store *s, const char *name, int64_t opened_at);
    /* Periodic reconcile (every sync interval): read the fleet's view of
     * every tracked circuit, report differences through hooks->remote. */
    void (*sync)(struct cbd_store *s);
    /* Flush what is pending, stop timers and I/O, then done(arg). */
    void (*close)(struct cbd_store *s, void (*done)(void *arg), void *arg);
    /* Optional (may be NULL): report the store's counters, one emit per
     * counter (name without prefix, e.g. "commands_sent"); the daemon shows
     * them in `stats` as store_<name>. */
    void (*stats)(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value), void *arg);
    /* Optional (may be NULL): the shadow marker of circuit name as the
     * store last read or wrote it: 1 with *out, 0 when there is none (or
     * the circuit is not tracked). */
    int (*shadow)(const struct cbd_store *s, const char *name, struct cbd_store_shadow *out);
};

/* Backend lookup by URI scheme ("local:PATH", "redis://...", "dynamodb://..."). */
const struct cbd_store_ops *cbd_store_find(const char *uri);

/*
 * cbd_store_uri_error - why uri is no store this cbd can create: no backend
 * for its scheme, or its backend's check_uri refuses it.
 * Returns NULL when uri names a backend this cbd has and that backend
 * accepts it; else writes a message such as "unknown store 'foo://x'
 * (expected local:PATH)" into buf (size bytes, always NUL terminated) and
 * returns buf. uri may be NULL.
 */
const char *cbd_store_uri_error(const char *uri, char *buf, size_t size);

extern const struct cbd_store_ops cbd_store_local_ops;
extern const struct cbd_store_ops cbd_store_redis_ops;
extern const struct cbd_store_ops cbd_store_dynamodb_ops;

#endif /* CBD_STORE_H */
