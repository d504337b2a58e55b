/*
 * fleet.h - the fleet layer: what every store shared by hosts does, once
 * (docs/fleet.md). fleet.c implements struct cbd_store_ops for every fleet
 * store over a transport (struct fleet_transport_ops below); a transport
 * (store_redis.c, store_dynamodb.c, the in-memory one of tests/unit/
 * test_fleet.c) only encodes and carries: it knows its wire format, its
 * connection and its batching, never a fleet rule. Fleet rules - views,
 * agreement, elections, leases, renewal and release, ordering of openings,
 * reconcile, outage queues, host-local grants, what is news for the daemon -
 * live in fleet.c alone.
 *
 * Three parts:
 *   1. the fleet item and the write rules: fleet_write_applies and
 *      fleet_write_result are the one statement of what a conditional
 *      write does; each transport encodes exactly this (a Lua script, a
 *      DynamoDB ConditionExpression), and tests/integration/
 *      test_fleet_contract.c checks that it does;
 *   2. what a transport must provide and how it answers;
 *   3. the store made of a transport (cbd_store_ops), for store.c's table.
 */
#ifndef CBD_FLEET_H
#define CBD_FLEET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "cb.h"
#include "store.h"

#define FLEET_OWNER_MAX 95        /* bytes of a probe owner id (Powertools' half_open_owner, as cbd holds it) */
#define FLEET_TTL_MARGIN_S 3600   /* Powertools: an item's TTL is its write + recovery_timeout + 3600 s */
#define FLEET_READ_BATCH_MAX 128  /* names one read() may carry */

/* ==== 1. the item and the write rules ==================================== */

/* A shadow circuit's trial state in the fleet: written by a host that runs
 * the circuit in shadow, read by everyone, obeyed by nobody. */
struct fleet_shadow {
    cb_state state;                    /* CLOSED, OPEN, HALF_OPEN */
    int64_t since;                     /* epoch s of that transition; 0: no marker */
    char host[FLEET_OWNER_MAX + 1];    /* the writing host's owner id */
};

/* A circuit's item as a transport reads and writes it, validated. */
struct fleet_item {
    bool exists;                       /* false: no item for this name (reads as CLOSED) */
    cb_state state;
    uint32_t failure_count;
    int64_t opened_at;                 /* epoch s; 0 when CLOSED */
    char owner[FLEET_OWNER_MAX + 1];   /* HALF_OPEN: the probe holder's id, "" otherwise */
    int64_t lease_expiry;              /* HALF_OPEN: epoch s; 0 otherwise */
    int64_t updated_at;                /* the store's clock of its last write, if it keeps one; else 0 */
    /* The opening's end when the opening host's backoff made it later than
     * opened_at + recovery timeout, tied to that opening: a Powertools
     * function that reopens the circuit leaves the pair as it was, and an
     * opened_at that is not open_until_of says the pair is stale. */
    int64_t open_until;                /* epoch s (rounded up: never early) for opened_at; 0: none or stale */
    int64_t open_until_of;             /* the opened_at the pair was written for, as stored; 0: absent */
    /* A shadow circuit's trial as the last host that ran it wrote it
     * (FLEET_SHADOW): beside the item, never part of its real state. An
     * item may hold the marker alone: it reads as absent (exists false). */
    struct fleet_shadow shadow;
    bool shadow_invalid;               /* the item had a bad shadow marker: ignored (shadow empty) */
};

enum fleet_write_kind { FLEET_OPEN, FLEET_CLOSE, FLEET_ELECT, FLEET_RENEW, FLEET_RELEASE, FLEET_SHADOW };

struct fleet_write {
    enum fleet_write_kind kind;
    const char *name;
    int64_t opened_at;        /* OPEN: the new opening; the others: the opening it is about */
    uint32_t failure_count;   /* OPEN */
    int64_t open_until;       /* OPEN: epoch s the opening's wait ends at (backoff); 0: none */
    uint32_t lease_s;         /* ELECT, RENEW: lease length in seconds */
    const char *owner;        /* this host's owner id */
    uint32_t recovery_s;      /* the circuit's recovery timeout, for a store's TTL (DynamoDB's expiration) */
    cb_state shadow_state;    /* SHADOW: the shadow circuit's state */
    int64_t shadow_since;     /* SHADOW: epoch s of its transition */
};

/*
 * fleet_write_applies - would w apply to the item before at store time
 * now_s? With mine = before is HALF_OPEN held by w->owner, lapsed = before
 * is HALF_OPEN with lease_expiry <= now_s:
 *
 *   OPEN     no item, or CLOSED, or OPEN with an older opening, or HALF_OPEN
 *            and (mine, or lapsed with an older opening)
 *   CLOSE    mine, or the same opening and (OPEN without owner, or lapsed)
 *   ELECT    OPEN without owner on the same opening (Powertools' election),
 *            or lapsed (a takeover), or mine
 *   RENEW    mine on the same opening
 *   RELEASE  mine on the same opening
 *   SHADOW   always (last writer wins: a trial's marker, not a state)
 *
 * The rule every transport encodes atomically, and the one the in-memory
 * transport of the unit tests executes.
 */
bool fleet_write_applies(const struct fleet_item *before, const struct fleet_write *w, int64_t now_s);

/*
 * fleet_write_result - the item after w applied to before at now_s:
 *   OPEN     OPEN, w's failure_count and opening, no owner or lease;
 *            open_until w->open_until and open_until_of w's opening (both
 *            removed, reading 0, when w->open_until is 0)
 *   CLOSE    CLOSED, failure_count 0, no opening, owner, lease or open_until
 *   ELECT    HALF_OPEN, owner w->owner, lease now_s + lease_s; opening,
 *            failure_count and open_until kept
 *   RENEW    lease now_s + lease_s
 *   RELEASE  OPEN, same opening, failure_count and open_until, no owner or
 *            lease
 *   SHADOW   only the shadow marker: w's shadow_state, shadow_since and
 *            owner; everything else as it was, exists and updated_at too
 *            (an absent item stays absent for every real purpose)
 * updated_at is now_s (but SHADOW). Meaningful only where fleet_write_applies holds.
 */
void fleet_write_result(const struct fleet_item *before, const struct fleet_write *w, int64_t now_s,
                        struct fleet_item *after);

/* "OPEN", "CLOSE", "ELECT", "RENEW", "RELEASE", "SHADOW": for logs and wire encodings. */
const char *fleet_write_kind_name(enum fleet_write_kind kind);

/* ---- validating items: the helpers every transport's codec decodes with ---- */

/* How a transport names the item's parts in messages: kind is "attribute"
 * (DynamoDB) or "field" (redis), then each part's name in the store. */
struct fleet_item_names {
    const char *kind;
    const char *state, *failure_count, *opened_at, *owner, *lease, *open_until, *open_until_of;
    const char *shadow_state, *shadow_since, *shadow_host;
};

/* why (size bytes, always terminated) from fmt; returns -EBADMSG: the
 * decoders' "this item is not valid, because ...". */
int fleet_fault(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* The state spelt exactly (cb__state_name's spelling) (len bytes at s): 0 with *out, or -EINVAL. */
int fleet_parse_state(const char *s, size_t len, cb_state *out);

/*
 * fleet_parse_number - a whole number written as digits only (no sign,
 * fraction or exponent; leading zeros allowed), at most max: 0 with *out,
 * or -EBADMSG with why naming the fault as "<kind> '<name>' is negative
 * ('-1')"; above says what a larger value is ("more than 4294967295").
 */
int fleet_parse_number(const char *kind, const char *name, const char *v, size_t len, uint64_t max,
                       const char *above, uint64_t *out, char *why, size_t size);

/*
 * fleet_item_check - what an item's state needs, however it travelled: a
 * known state; OPEN and HALF_OPEN an opened_at of 1..CB_TIME_MAX_S;
 * HALF_OPEN an owner of 1..FLEET_OWNER_MAX bytes and a lease_expiry of
 * 0..CB_TIME_MAX_S (a decoder gives opened_at 0, owner "" and lease_expiry
 * -1 for what is absent). 0, or -EBADMSG with why ("HALF_OPEN needs
 * 'half_open_owner' (the probe holder's id, 1 to 95 bytes)").
 */
int fleet_item_check(const struct fleet_item_names *names, const struct fleet_item *it, char *why, size_t size);

/*
 * fleet_item_deadline - the deadline pair a decoder read (each an epoch
 * second 0..CB_TIME_MAX_S, or -1 absent) into it, after its state and
 * opened_at: both absent, open_until 0; one without the other, -EBADMSG
 * ("field 'open_until' without 'open_until_of' (...)"); both present,
 * open_until_of as stored and open_until only when the pair is the
 * opening's (open_until_of == opened_at, not CLOSED), else 0 (stale: left
 * by a Powertools reopen, valid). Returns 0 or -EBADMSG with why.
 */
int fleet_item_deadline(const struct fleet_item_names *names, struct fleet_item *it, int64_t until, int64_t of,
                        char *why, size_t size);

/* One part of a shadow marker as a decoder found it: absent (s NULL), or
 * its bytes. */
struct fleet_raw {
    const char *s;
    size_t len;
};

/*
 * fleet_item_shadow - the shadow marker a decoder found (each part absent
 * or its bytes: a state spelt exactly, epoch seconds 1..CB_TIME_MAX_S as
 * digits, a host id of 1..FLEET_OWNER_MAX bytes without NUL) into
 * it->shadow. All three absent: no marker, 0. Anything else wrong (a part
 * without the others, a bad value): no marker, it->shadow_invalid, and
 * -EBADMSG with why - the decoder keeps the item: a bad marker never
 * makes the real state unreadable.
 */
int fleet_item_shadow(const struct fleet_item_names *names, struct fleet_item *it, struct fleet_raw state,
                      struct fleet_raw since, struct fleet_raw host, char *why, size_t size);

/* s (len bytes, any of them) quoted for a log line: printable ASCII and
 * UTF-8 as they are, other bytes, ' and \ as \xNN, cut with "..." to fit
 * size bytes (at least 8). Returns buf. */
const char *fleet_quote(const char *s, size_t len, char *buf, size_t size);

/* This host's probe owner id, "<hostname>:<instance>:<pid>:<random>" (at
 * most FLEET_OWNER_MAX bytes): new on every start, so a restarted daemon
 * never takes a lease of its previous process for its own. */
void fleet_owner_id(char *buf, size_t size, const char *instance);

/* ==== 2. transports ========================================================= */

struct fleet_transport;

/* What a transport tells the fleet layer, on the loop, never inside a call
 * the fleet layer made. */
struct fleet_transport_cbs {
    void *arg;
    /* Connected and ready (why names the endpoint, for the log). */
    void (*up)(void *arg, const char *why);
    /* Lost, or a connection attempt failed: once per attempt or up period.
     * The fleet layer decides when to call connect() again. */
    void (*down)(void *arg, int err, const char *why);
    /* A push notification that circuit name changed (redis pub/sub). */
    void (*changed)(void *arg, const char *name);
};

enum fleet_status {
    FLEET_OK,      /* item holds what the store has (exists may be false after a write) */
    FLEET_ABSENT,  /* reads: the store has no item for the name */
    FLEET_INVALID, /* the store holds something that is not a valid item: why says what */
    FLEET_ERROR,   /* no answer from the store: err and why say why */
};

struct fleet_answer {
    enum fleet_status status;
    bool applied;           /* writes, OK: the condition held and the write happened */
    struct fleet_item item; /* OK: the item (after a write: as stored afterwards, read back consistently) */
    int64_t at_s;           /* writes: the store time the condition was checked at (0 unknown) */
    int err;                /* ERROR: -ENOTCONN the store went away before answering (the request may
                               have applied), -EINVAL the store refused the request as malformed (do
                               not send it again), else -EIO */
    const char *why;        /* INVALID, ERROR: for the operator; valid during the callback */
};

/* How the fleet layer runs a transport. */
struct fleet_settings {
    const char *log_name;     /* how log lines name the store: "redis store", "dynamodb" */
    char where[200];          /* which data, for log lines: "table circuits" (cut to fit) */
    uint32_t sync_ms;         /* reconcile period; 0: only when the daemon asks */
    uint32_t read_budget;     /* circuit reads a second (the URI's read_budget): 0, every tracked
                                 circuit each sync; else busy circuits first, the rest swept
                                 within it (docs/fleet.md, "Reads under a budget") */
    uint32_t read_batch;      /* names per read(), 1..FLEET_READ_BATCH_MAX */
    bool reconnects;          /* the transport reconnects by itself (redis_link); else: */
    uint32_t backoff_base_ms; /* the fleet layer calls connect() again after a full-jitter */
    uint32_t backoff_cap_ms;  /* backoff from base, doubling up to cap */
    uint32_t close_wait_ms;   /* close(): how long writes in flight may take to land */
};

typedef void fleet_read_cb(void *arg, const char *name, const struct fleet_answer *a);
typedef void fleet_write_cb(void *arg, const struct fleet_answer *a);

/*
 * Asynchronous on the daemon's libuv loop. Every request is answered
 * exactly once, never inside the call that made it; a request whose call
 * returns an error is never answered. After close() nothing is answered.
 */
struct fleet_transport_ops {
    const char *scheme;
    /* The URI as create() reads it, without I/O: 0 or -EINVAL with why. */
    int (*check_uri)(const char *uri, char *why, size_t size);
    /* A transport for uri, idle until connect(). owner_hint: the owner id
     * fleet_owner_id made; the URI may name another. 0, or -errno with why. */
    int (*create)(struct fleet_transport **out, uv_loop_t *loop, const char *uri, const char *owner_hint,
                  const struct fleet_transport_cbs *cbs, char *why, size_t size);
    const char *(*owner)(const struct fleet_transport *t); /* this host's owner id */
    void (*settings)(const struct fleet_transport *t, struct fleet_settings *out);
    /* (Re)connect now: up() or down() follows. Called at start, by a
     * restore while offline, and after each down() on the backoff unless
     * the transport reconnects by itself (settings.reconnects). */
    void (*connect)(struct fleet_transport *t);
    /* Read n names (n <= settings.read_batch; the names are copied):
     * cb(arg, name, answer) once per name taken. Returns how many names it
     * took, from the first (n unless it failed half-way); < 0: none. */
    int (*read)(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg);
    /* The conditional write w, atomically as fleet_write_applies says. */
    int (*write)(struct fleet_transport *t, const struct fleet_write *w, fleet_write_cb *cb, void *arg);
    /* Every circuit name the store holds: each(arg, name) per name, then
     * done(arg, rc) once. NULL: the store cannot list (dynamodb). */
    int (*list)(struct fleet_transport *t, void (*each)(void *arg, const char *name),
                void (*done)(void *arg, int rc), void *arg);
    /* The transport's own counters (names distinct from the fleet layer's). */
    void (*stats)(const struct fleet_transport *t, void (*emit)(void *arg, const char *name, uint64_t v), void *arg);
    /* Stop everything, then done(arg) on a later loop turn. */
    void (*close)(struct fleet_transport *t, void (*done)(void *arg), void *arg);
};

/* ==== 3. the store over a transport ========================================= */

/* cbd_store_ops.create for a fleet store on transport t. */
int fleet_store_create(const struct fleet_transport_ops *t, struct cbd_store **out, const char *uri,
                       const struct cbd_store_hooks *hooks, const char **err);

/* The rest of cbd_store_ops (store.h has the contract); the same for every
 * fleet store. */
void fleet_restore(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg);
void fleet_track(struct cbd_store *s, const char *name, const cb_config *cfg);
void fleet_untrack(struct cbd_store *s, const char *name);
void fleet_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at);
void fleet_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s);
void fleet_release(struct cbd_store *s, const char *name, int64_t opened_at);
void fleet_reconcile(struct cbd_store *s);
void fleet_close(struct cbd_store *s, void (*done)(void *arg), void *arg);
void fleet_stats(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value), void *arg);
int fleet_shadow_of(const struct cbd_store *s, const char *name, struct cbd_store_shadow *out);

/* Defines name, a fleet store's cbd_store_ops: only the scheme, the
 * transport and the URI check differ from one fleet store to another. */
#define FLEET_STORE_DEFINE(name, scheme_, transport_, check_uri_)                                                \
    static int name##_create(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks,       \
                             const char **err)                                                                   \
    {                                                                                                            \
        return fleet_store_create(&(transport_), out, uri, hooks, err);                                          \
    }                                                                                                            \
    const struct cbd_store_ops name = {                                                                          \
        .scheme = (scheme_), .create = name##_create, .check_uri = (check_uri_), .restore = fleet_restore,       \
        .track = fleet_track, .untrack = fleet_untrack, .transition = fleet_transition,                          \
        .try_probe = fleet_try_probe, .release = fleet_release, .sync = fleet_reconcile, .close = fleet_close,   \
        .stats = fleet_stats, .shadow = fleet_shadow_of,                                                         \
    }

/* Test seam: the epoch clock (leases, agreement times, the age of an
 * opening) and the random bits (reconnection jitter) the fleet layer uses.
 * Unset: time() and a generator seeded at create. */
struct fleet_clock {
    int64_t (*now_s)(void *arg);
    uint64_t (*random)(void *arg);
    void *arg;
};
void fleet_set_clock(struct cbd_store *s, const struct fleet_clock *clock);

#endif /* CBD_FLEET_H */
