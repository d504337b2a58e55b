/*
 * store_redis.c - the fleet store on redis (docs/store-redis.md).
 *
 * Layout: one hash per circuit, <prefix>c:{<name>}, with Powertools' fields
 * (state, failure_count, opened_at, half_open_owner, probe_lease_expiry)
 * plus updated_ms (server TIME of the last write) and version (+1 per
 * write). Every write publishes the circuit's name on <prefix>transitions.
 * The braces are a Redis Cluster hash tag: every key a script touches for a
 * circuit hashes to one slot, so a cluster transport needs no migration.
 * Keys from before the tags (<prefix>c:<name>) are renamed on read: every
 * one the restore's SCAN finds, and a tracked circuit's when its new key
 * is missing (checked once per circuit).
 *
 * Writes are three Lua scripts that read the hash and the server's TIME,
 * decide, and write-and-publish only if the comparison holds; each returns
 * its verdict and the hash as stored afterwards, so a refused write tells
 * this host at once what the fleet holds:
 *   open   (trip or a prober's reopen) never clobbers an equal or newer
 *          opening nor a live probe lease held by another host;
 *   close  only by the lease holder (or, for a close decided host-local
 *          during an outage, while the fleet still holds the same opening
 *          with no prober);
 *   probe  the election: granted iff OPEN with the caller's opened_at and
 *          no owner, or HALF_OPEN with an expired lease (or our own), and
 *          then HALF_OPEN + owner + lease from the server's clock.
 * Scripts go as EVALSHA (loaded with SCRIPT LOAD at connect); a NOSCRIPT
 * answer (SCRIPT FLUSH, failover) resends that call as EVAL.
 *
 * Per circuit the store keeps two views: `cur`, what the daemon holds as
 * far as the store knows (its transitions and our reports), and `known`,
 * what redis held when last read or written. hooks->remote fires when the
 * fleet's state differs from `cur` in a way that matters (an OPEN the
 * daemon is already probing, or a HALF_OPEN held by another host while the
 * daemon is OPEN on that same opening, are not news) and no write or
 * election of ours for the circuit is pending, whose answer will tell.
 *
 Connections are the link's (redis_link.c): a command connection (writes,
 * elections, reads) and a subscriber, found through the URI (directly or
 * through Redis Sentinel), authenticated, checked to be on the master; the
 * store adds SCRIPT LOAD to the preparation and is online when the link is.
 * When the link goes down the store reports health(false); the link
 * reconnects with exponential backoff and full jitter (cap 5 s). While
 * offline the daemon runs host-local: transitions are queued, latest state
 * per circuit (memory is bounded by the circuits), and elections are
 * granted host-local on the next loop turn - the fleet-wide probe bound
 * cannot hold without the store, and a circuit must not stay OPEN forever
 * because redis is down. An election is granted host-local only once an
 * attempt to connect failed while it waited: one asked while the store
 * connects (at start, or a retry) or after a connection dropped waits for
 * the next attempt, so a daemon that starts with circuits past their
 * recovery timeout, or a host that was hung and finds its connection timed
 * out, does not probe beside the fleet's holder. Once back: queued writes
 * first, then waiting elections, then a reconcile. hooks->synced (if set)
 * follows every answer that leaves redis and the daemon agreeing on a
 * circuit. An answer saying this server cannot take our writes now
 * (READONLY after a failover, LOADING, NOAUTH, ...) drops the link, which
 * reconnects - to the new master, with a sentinel URI.
 *
 * Traffic: transitions, elections, one read per pub/sub message about a
 * tracked circuit, one read at registration, and the reconcile every
 * sync_ms (pipelined HGETALL, at most RS_WINDOW in flight). Never per
 * request. Data under the prefix that is not ours (other types, garbage
 * fields, bad names) is counted as malformed, logged (rate-limited) and
 * ignored: the circuit keeps its last good state.
 */
#include "store_redis.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "redis_link.h"
#include "redis_resp.h"
#include "redis_uri.h"
#include "segment.h"

#define RS_PREFIX_MAX 64
#define RS_WINDOW 128         /* reconcile and restore reads in flight */
#define RS_WRITES_MAX 256     /* transition writes in flight */
#define RS_SCAN_COUNT "256"
#define RS_KEY_MAX (RS_PREFIX_MAX + 4 + CB_NAME_MAX + 1)
#define RS_TIME_MAX 100000000000ll /* epoch seconds beyond this are garbage */

/* The URI: where and how to connect (redis_uri.h), and the store's own
 * options. */
struct rs_uri {
    struct cbd_redis_uri conn;
    char prefix[RS_PREFIX_MAX + 1];
    char instance[CB_INSTANCE_MAX + 1];
    bool instance_given; /* instance= was in the URI */
    uint32_t sync_ms;
};

/* A circuit's state, compactly (owner as a hash). */
struct rs_view {
    uint8_t state;  /* cb_state */
    bool valid;     /* known: redis was read or written since start */
    uint32_t failure_count;
    int64_t opened_at;
    uint64_t owner_hash; /* HALF_OPEN: cb__name_hash of the owner; else 0 */
};

struct rs_write {
    cb_state state; /* CB_OPEN or CB_CLOSED */
    uint32_t failure_count;
    int64_t opened_at, prev_opened_at;
};

struct rs_circuit {
    struct rs_circuit *hnext; /* hash chain */
    struct rs_circuit *qnext; /* write queue */
    struct rs_circuit *gnext; /* host-local grants due */
    struct rs_view cur, known;
    struct rs_write w, w_sent; /* latest unwritten transition; the one in flight */
    bool w_pending, w_inflight, w_queued;
    bool r_inflight, r_again, legacy_checked;
    bool p_inflight, p_pending, lease_mine, g_queued;
    int64_t p_opened_at, p_sent_opened_at, g_opened_at;
    uint32_t p_lease_s, p_sent_lease_s, g_lease_s;
    uint8_t name_len;
    char name[CB_NAME_MAX + 1];
};

enum rs_phase { RS_DOWN, RS_CONNECTING, RS_ONLINE };
enum rs_script { RS_OPEN, RS_CLOSE, RS_PROBE, RS_MIGRATE, RS_NSCRIPTS };
enum rs_err { RS_ERR_NOSCRIPT, RS_ERR_DATA, RS_ERR_CONN, RS_ERR_OTHER };

struct rs_restore_item {
    char name[CB_NAME_MAX + 1];
};

struct cbd_store {
    struct cbd_store_hooks hooks;
    struct rs_uri uri;
    char owner[sizeof(((struct cbd_store_state *)0)->probe_owner)];
    uint64_t owner_hash;
    char channel[RS_PREFIX_MAX + 16];
    struct cbd_redis_link *link; /* connections, handshake, failover, backoff */
    enum rs_phase phase;
    bool started;
    unsigned scripts_left; /* SCRIPT LOADs of the attempt not answered yet */
    int health; /* -1 not reported yet, else the last reported value */
    char sha[RS_NSCRIPTS][41];
    uv_timer_t sync_timer, grant_timer;
    struct rs_circuit **buckets, **list;
    size_t nbuckets, count, list_cap;
    struct rs_circuit *wq_head, *wq_tail, *g_head, *g_tail;
    unsigned writes_inflight;
    bool rec_running;
    size_t rec_cursor;
    unsigned rec_inflight;
    struct {
        void (*done)(void *arg, int rc);
        void *arg;
        unsigned inflight;
        bool more;
        char cursor[32];
    } restore;
    unsigned migrated; /* legacy keys renamed by this restore */
    bool closing, tearing;
    unsigned close_pending;
    void (*close_done)(void *arg);
    void *close_arg;
    struct cbd_store_redis_stats stats;
    struct cbd_ratelimit rl_conn, rl_data, rl_err;
};

/* ---- the scripts ------------------------------------------------------------ */

/* KEYS[1] the circuit's hash; ARGV[1] channel, ARGV[2] name, then per script.
 * Reads run before any write, so a wrong-typed key fails the script clean. */
#define LUA_PRELUDE                                                                                    \
    "local k = KEYS[1]\n"                                                                              \
    "local f = redis.call('HMGET', k, 'state', 'opened_at', 'half_open_owner', 'probe_lease_expiry',"  \
    " 'failure_count', 'version')\n"                                                                   \
    "local t = redis.call('TIME')\n"                                                                   \
    "local now = tonumber(t[1])\n"                                                                     \
    "local st, opened, owner, lease = f[1], tonumber(f[2]) or 0, f[3] or '', tonumber(f[4]) or 0\n"   \
    "local function commit(set, del)\n"                                                                \
    "  local ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                                    \
    "  local v = (tonumber(f[6]) or 0) + 1\n"                                                          \
    "  redis.call('HSET', k, 'updated_ms', string.format('%d', ms), 'version', string.format('%d', v),"\
    " unpack(set))\n"                                                                                  \
    "  if #del > 0 then redis.call('HDEL', k, unpack(del)) end\n"                                      \
    "  redis.call('PUBLISH', ARGV[1], ARGV[2])\n"                                                      \
    "end\n"                                                                                            \
    "local ok\n"
#define LUA_RESULT "return {ok and 1 or 0, unpack(redis.call('HGETALL', k))}\n"

static const char *const rs_scripts[RS_NSCRIPTS] = {
    /* open: ARGV[3] opened_at, ARGV[4] failure_count, ARGV[5] owner id */
    [RS_OPEN] = LUA_PRELUDE
    "local new = tonumber(ARGV[3])\n"
    "if st == 'OPEN' then ok = opened < new\n"
    "elseif st == 'HALF_OPEN' then ok = owner == ARGV[5] or (lease <= now and opened < new)\n"
    "else ok = true end\n"
    "if ok then commit({'state', 'OPEN', 'failure_count', ARGV[4], 'opened_at', ARGV[3]},"
    " {'half_open_owner', 'probe_lease_expiry'}) end\n" LUA_RESULT,
    /* close: ARGV[3] the opening it ends, ARGV[4] owner id */
    [RS_CLOSE] = LUA_PRELUDE
    "if st == 'HALF_OPEN' then ok = owner == ARGV[4]\n"
    "elseif st == 'OPEN' then ok = owner == '' and opened == tonumber(ARGV[3])\n"
    "else ok = st ~= 'CLOSED' end\n"
    "if ok then commit({'state', 'CLOSED', 'failure_count', '0'},"
    " {'opened_at', 'half_open_owner', 'probe_lease_expiry'}) end\n" LUA_RESULT,
    /* probe: ARGV[3] opened_at, ARGV[4] lease seconds, ARGV[5] owner id */
    [RS_PROBE] = LUA_PRELUDE
    "if st == 'OPEN' then ok = owner == '' and opened == tonumber(ARGV[3])\n"
    "elseif st == 'HALF_OPEN' then ok = owner == ARGV[5] or lease <= now\n"
    "elseif st == 'CLOSED' then ok = false\n"
    "else ok = true; opened = tonumber(ARGV[3]) end\n"
    "if ok then commit({'state', 'HALF_OPEN', 'failure_count', string.format('%d', tonumber(f[5]) or 0),"
    " 'opened_at', string.format('%d', opened), 'half_open_owner', ARGV[5],"
    " 'probe_lease_expiry', string.format('%d', now + tonumber(ARGV[4]))}, {}) end\n" LUA_RESULT,
    /* migrate: KEYS[1] the circuit's hash, KEYS[2] its key before hash tags.
     * Renames the old key if the new one does not exist; {moved (1/0), the
     * hash...}, or {-1} if the old key is not a hash. Two keys in different
     * slots: for the standalone and Sentinel deployments that have old keys. */
    [RS_MIGRATE] = "local new, old = KEYS[1], KEYS[2]\n"
    "local moved = 0\n"
    "if redis.call('EXISTS', new) == 0 and redis.call('EXISTS', old) == 1 then\n"
    "  if redis.call('TYPE', old).ok ~= 'hash' then return {-1} end\n"
    "  redis.call('RENAME', old, new)\n"
    "  moved = 1\n"
    "end\n"
    "return {moved, unpack(redis.call('HGETALL', new))}\n",
};

/* ---- URI ----------------------------------------------------------------------- */

#define RS_OPTIONS "prefix, sync_ms, instance"

/* The store's own URI options (redis_uri.c parses the connection's). */
static const char *store_option(void *arg, const char *name, const char *val)
{
    struct rs_uri *u = arg;
    size_t n = strlen(val);
    if (strcmp(name, "prefix") == 0) {
        for (size_t i = 0; i < n; i++)
            if (val[i] <= ' ' || val[i] > '~')
                n = 0;
        if (n == 0 || n > RS_PREFIX_MAX)
            return "prefix must be 1..64 printable characters without spaces";
        memcpy(u->prefix, val, n + 1);
    } else if (strcmp(name, "sync_ms") == 0) {
        if (!cbd_redis_parse_u32(val, n, 100, 3600000, &u->sync_ms))
            return "sync_ms must be a number 100..3600000";
    } else if (strcmp(name, "instance") == 0) {
        if (cb__instance_check(val) < 0)
            return "instance must be 1..32 characters of [A-Za-z0-9_-]";
        memcpy(u->instance, val, n + 1);
        u->instance_given = true;
    } else {
        return cbd_redis_uri_unknown;
    }
    return NULL;
}

/* The whole URI into *u: 0, or -EINVAL with why. No I/O. */
static int parse_uri(const char *uri, struct rs_uri *u, char *why, size_t size)
{
    *u = (struct rs_uri){.sync_ms = 1000};
    strcpy(u->prefix, "cbd:");
    const char *env = getenv("CB_INSTANCE");
    snprintf(u->instance, sizeof u->instance, "%s", env != NULL && cb__instance_check(env) == 0 ? env : "default");
    return cbd_redis_uri_parse(uri, &u->conn, store_option, u, RS_OPTIONS, why, size);
}

/* ---- circuits ------------------------------------------------------------------ */

static struct rs_circuit *find(const struct cbd_store *s, const char *name, size_t len)
{
    uint64_t h = cb__name_hash(name, len);
    for (struct rs_circuit *c = s->buckets[h & (s->nbuckets - 1)]; c != NULL; c = c->hnext)
        if (c->name_len == len && memcmp(c->name, name, len) == 0)
            return c;
    return NULL;
}

static bool grow(struct cbd_store *s)
{
    if (s->count == s->list_cap) {
        size_t cap = s->list_cap * 2;
        struct rs_circuit **l = realloc(s->list, cap * sizeof *l);
        if (l == NULL)
            return false;
        s->list = l;
        s->list_cap = cap;
    }
    if (s->count < s->nbuckets)
        return true;
    size_t nb = s->nbuckets * 2;
    struct rs_circuit **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return true; /* longer chains, still correct */
    for (size_t i = 0; i < s->count; i++) {
        struct rs_circuit *c = s->list[i];
        size_t at = cb__name_hash(c->name, c->name_len) & (nb - 1);
        c->hnext = b[at];
        b[at] = c;
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
    return true;
}

/* The circuit called name, added if new; NULL for a bad name or no memory. */
static struct rs_circuit *get(struct cbd_store *s, const char *name)
{
    if (cb__name_check(name) < 0)
        return NULL;
    size_t len = strlen(name);
    struct rs_circuit *c = find(s, name, len);
    if (c != NULL)
        return c;
    c = calloc(1, sizeof *c);
    if (c == NULL || !grow(s)) {
        free(c);
        cbd_log(CBD_LOG_ERROR, "redis store: out of memory tracking circuit '%s'", name);
        return NULL;
    }
    memcpy(c->name, name, len + 1);
    c->name_len = (uint8_t)len;
    c->cur.state = CB_CLOSED;
    size_t at = cb__name_hash(name, len) & (s->nbuckets - 1);
    c->hnext = s->buckets[at];
    s->buckets[at] = c;
    s->list[s->count++] = c;
    return c;
}

/* "<prefix>c:{<name>}": the braces are a Redis Cluster hash tag, so every
 * key a script touches for one circuit hashes to the circuit's slot. */
static int key_of(const struct cbd_store *s, const char *name, char *key)
{
    return snprintf(key, RS_KEY_MAX, "%sc:{%s}", s->uri.prefix, name);
}

/* "<prefix>c:<name>": the key before hash tags, migrated on read. */
static int legacy_key_of(const struct cbd_store *s, const char *name, char *key)
{
    return snprintf(key, RS_KEY_MAX, "%sc:%s", s->uri.prefix, name);
}

/* ---- views ------------------------------------------------------------------- */

static uint64_t owner_hash(const char *owner)
{
    return owner[0] != '\0' ? cb__name_hash(owner, strlen(owner)) : 0;
}

static struct rs_view view_of(const struct cbd_store_state *st)
{
    struct rs_view v = {.state = (uint8_t)st->state, .valid = true, .failure_count = st->failure_count};
    if (st->state != CB_CLOSED)
        v.opened_at = st->opened_at;
    if (st->state == CB_HALF_OPEN)
        v.owner_hash = owner_hash(st->probe_owner);
    return v;
}

/* Would the daemon (holding cur) learn anything from the fleet's view? Not
 * if they agree, nor if the daemon probes an opening the fleet still has
 * as OPEN (the daemon is ahead), nor if another host probes the opening
 * the daemon has as OPEN (for this host, both mean "reject"). */
static bool equivalent(const struct cbd_store *s, const struct rs_view *fleet, const struct rs_view *cur)
{
    if (fleet->state == cur->state && fleet->opened_at == cur->opened_at && fleet->owner_hash == cur->owner_hash)
        return true;
    if (fleet->opened_at != cur->opened_at)
        return false;
    if (fleet->state == CB_OPEN && cur->state == CB_HALF_OPEN)
        return true;
    return fleet->state == CB_HALF_OPEN && cur->state == CB_OPEN && fleet->owner_hash != s->owner_hash;
}

/* Tell the daemon what the fleet holds. */
static void report(struct cbd_store *s, struct rs_circuit *c, const struct cbd_store_state *st)
{
    c->cur = view_of(st);
    c->lease_mine = st->state == CB_HALF_OPEN && c->cur.owner_hash == s->owner_hash;
    if (!s->closing)
        s->hooks.remote(s->hooks.arg, st);
}

/* Redis just answered about c and the daemon has (or was just told) what
 * it holds: tell the daemon they agree, unless a write of ours is still on
 * its way. */
static void agreed(struct cbd_store *s, const struct rs_circuit *c)
{
    if (!c->w_pending && !c->w_inflight && !s->closing && s->hooks.synced != NULL)
        s->hooks.synced(s->hooks.arg, c->name, (int64_t)time(NULL));
}

/* ---- parsing what redis holds --------------------------------------------------- */

static bool is_str(const redisReply *r, const char *lit)
{
    return r->type == REDIS_REPLY_STRING && r->len == strlen(lit) && memcmp(r->str, lit, r->len) == 0;
}

static bool reply_int(const redisReply *r, int64_t max, int64_t *out)
{
    if (r->type != REDIS_REPLY_STRING || r->len == 0 || r->len > 18)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9')
            return false;
        v = v * 10 + (r->str[i] - '0');
    }
    *out = v;
    return v <= max;
}

static bool parse_state(const redisReply *v, cb_state *out)
{
    static const char *const names[] = {[CB_CLOSED] = "CLOSED", [CB_OPEN] = "OPEN", [CB_HALF_OPEN] = "HALF_OPEN"};
    for (int i = 0; i <= CB_HALF_OPEN; i++)
        if (is_str(v, names[i])) {
            *out = (cb_state)i;
            return true;
        }
    return false;
}

/* One field of the hash into st; the field's name if its value is bad.
 * Unknown fields are left alone (newer writers may add some). */
static const char *parse_field(const redisReply *k, const redisReply *v, struct cbd_store_state *st, unsigned *seen)
{
    int64_t n = 0;
    if (is_str(k, "state")) {
        *seen |= 1;
        return parse_state(v, &st->state) ? NULL : "state";
    }
    if (is_str(k, "half_open_owner")) {
        *seen |= 8;
        if (v->type != REDIS_REPLY_STRING || v->len == 0 || v->len >= sizeof st->probe_owner ||
            memchr(v->str, '\0', v->len) != NULL)
            return "half_open_owner";
        memcpy(st->probe_owner, v->str, v->len);
        st->probe_owner[v->len] = '\0';
        return NULL;
    }
    if (is_str(k, "failure_count")) {
        if (!reply_int(v, UINT32_MAX, &n))
            return "failure_count";
        st->failure_count = (uint32_t)n;
    } else if (is_str(k, "opened_at")) {
        *seen |= 2;
        if (!reply_int(v, RS_TIME_MAX, &st->opened_at))
            return "opened_at";
    } else if (is_str(k, "probe_lease_expiry")) {
        *seen |= 4;
        if (!reply_int(v, RS_TIME_MAX, &st->lease_expiry))
            return "probe_lease_expiry";
    } else if (is_str(k, "updated_ms") && reply_int(v, RS_TIME_MAX * 1000, &n)) {
        st->updated_at = n / 1000; /* informative: a bad one leaves it unknown */
    }
    return NULL;
}

/* A hash as a field/value list into st (name left alone): 1 valid, 0 no
 * such hash, -1 malformed with *bad naming the problem. */
static int parse_hash(redisReply *const *el, size_t n, struct cbd_store_state *st, const char **bad)
{
    unsigned seen = 0;
    memset(st, 0, sizeof *st);
    if (n == 0)
        return 0;
    if (n % 2 != 0) {
        *bad = "odd field/value list";
        return -1;
    }
    for (size_t i = 0; i < n; i += 2) {
        if (el[i]->type != REDIS_REPLY_STRING) {
            *bad = "a field that is not a string";
            return -1;
        }
        if ((*bad = parse_field(el[i], el[i + 1], st, &seen)) != NULL)
            return -1;
    }
    if (!(seen & 1))
        *bad = "no state field";
    else if (st->state != CB_CLOSED && !(seen & 2))
        *bad = "no opened_at for an open circuit";
    else if (st->state == CB_HALF_OPEN && (seen & 12) != 12)
        *bad = "HALF_OPEN without half_open_owner or probe_lease_expiry";
    else
        *bad = NULL;
    if (*bad != NULL)
        return -1;
    if (st->state != CB_HALF_OPEN) {
        st->probe_owner[0] = '\0';
        st->lease_expiry = 0;
    }
    if (st->state == CB_CLOSED)
        st->opened_at = 0;
    return 1;
}

static void malformed(struct cbd_store *s, const char *what, const char *key, size_t klen, const char *why)
{
    uint64_t suppressed;
    char k[96];
    s->stats.malformed++;
    if (!cbd_ratelimit_pass(&s->rl_data, &suppressed))
        return;
    cbd_redis_printable(k, sizeof k, key, klen);
    cbd_log(CBD_LOG_WARN, "redis store: ignoring malformed %s '%s' under prefix '%s': %s (%" PRIu64 " more suppressed)",
            what, k, s->uri.prefix, why, suppressed);
}

static void malformed_circuit(struct cbd_store *s, const struct rs_circuit *c, const char *why)
{
    malformed(s, "circuit", c->name, c->name_len, why);
}

/* ---- talking to redis ---------------------------------------------------------- */

/* Send one command of C strings; 0 or -ENOTCONN. */
static int command(struct cbd_store *s, cbd_redis_reply_fn *fn, void *priv, int argc, const char **argv)
{
    size_t len[12];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    return cbd_redis_link_command(s->link, fn, priv, argc, argv, len);
}

/* Run a script on circuit c (EVALSHA, or EVAL when asked or not loaded). */
static int eval(struct cbd_store *s, enum rs_script script, bool use_eval, cbd_redis_reply_fn *fn,
                struct rs_circuit *c, int nargs, const char **args)
{
    char key[RS_KEY_MAX];
    const char *argv[12];
    key_of(s, c->name, key);
    use_eval = use_eval || s->sha[script][0] == '\0';
    argv[0] = use_eval ? "EVAL" : "EVALSHA";
    argv[1] = use_eval ? rs_scripts[script] : s->sha[script];
    argv[2] = "1";
    argv[3] = key;
    argv[4] = s->channel;
    argv[5] = c->name;
    for (int i = 0; i < nargs; i++)
        argv[6 + i] = args[i];
    return command(s, fn, c, 6 + nargs, argv);
}

/* The migrate script for circuit name (EVAL when asked or not loaded). */
static int send_migrate(struct cbd_store *s, const char *name, bool use_eval, cbd_redis_reply_fn *fn, void *priv)
{
    char key[RS_KEY_MAX], old[RS_KEY_MAX];
    key_of(s, name, key);
    legacy_key_of(s, name, old);
    use_eval = use_eval || s->sha[RS_MIGRATE][0] == '\0';
    const char *argv[5] = {use_eval ? "EVAL" : "EVALSHA", use_eval ? rs_scripts[RS_MIGRATE] : s->sha[RS_MIGRATE], "2",
                           key, old};
    return command(s, fn, priv, 5, argv);
}

/* The migrate script's answer: 1 with the hash's field/value list in
 * *el[0..*n), 0 if the old key is not a hash, -1 if it makes no sense. */
static int migrate_result(const redisReply *r, redisReply *const **el, size_t *n)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER ||
        r->element[0]->integer < -1 || r->element[0]->integer > 1)
        return -1;
    if (r->element[0]->integer < 0)
        return 0;
    *el = r->element + 1;
    *n = r->elements - 1;
    return 1;
}

/* A script's answer {verdict, field, value, ...}: the hash as stored after
 * it into st. The verdict (0/1), or -1 if the answer makes no sense. */
static int script_result(struct cbd_store *s, struct rs_circuit *c, const redisReply *r, struct cbd_store_state *st)
{
    const char *bad = "not a script result";
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && r->element[0]->type == REDIS_REPLY_INTEGER &&
        parse_hash(r->element + 1, r->elements - 1, st, &bad) >= 0) {
        memcpy(st->name, c->name, (size_t)c->name_len + 1);
        return r->element[0]->integer != 0; /* no fields: the hash is gone, st is CLOSED */
    }
    malformed_circuit(s, c, bad);
    return -1;
}

/* What an error reply means for the caller, counted and logged. */
static enum rs_err reply_error(struct cbd_store *s, const char *what, const char *name, const redisReply *r)
{
    static const char *const conn_errors[] = {"READONLY", "LOADING", "MASTERDOWN", "NOAUTH", "NOPERM", "BUSY"};
    uint64_t suppressed;
    if (strncmp(r->str, "NOSCRIPT", 8) == 0)
        return RS_ERR_NOSCRIPT;
    if (strstr(r->str, "WRONGTYPE") != NULL) {
        malformed(s, "circuit", name, strlen(name), "the key is not a hash");
        return RS_ERR_DATA;
    }
    s->stats.errors++;
    if (cbd_ratelimit_pass(&s->rl_err, &suppressed))
        cbd_log(CBD_LOG_WARN, "redis store: %s of circuit '%s' failed: %s (%" PRIu64 " more suppressed)", what,
                name, r->str, suppressed);
    for (size_t i = 0; i < sizeof conn_errors / sizeof conn_errors[0]; i++)
        if (strncmp(r->str, conn_errors[i], strlen(conn_errors[i])) == 0) {
            /* this server cannot take our writes now (replica, loading,
             * lost auth): reconnect, perhaps to the new primary */
            cbd_redis_link_drop(s->link, -EIO, r->str);
            return RS_ERR_CONN;
        }
    return RS_ERR_OTHER;
}

/* ---- connection life ------------------------------------------------------------ */

static void wq_push(struct cbd_store *s, struct rs_circuit *c);
static void pump_writes(struct cbd_store *s);
static void ask_waiting(struct cbd_store *s, bool attempt_failed);
static void reconcile_start(struct cbd_store *s);
static void on_sync_timer(uv_timer_t *t);
static void restore_scan(struct cbd_store *s, const char *cursor);
static void on_message(struct cbd_store *s, const char *name, size_t len);
static void teardown(struct cbd_store *s);

static void set_health(struct cbd_store *s, bool online, const char *why)
{
    uint64_t suppressed;
    if (s->health == (int)online) {
        if (!online && cbd_ratelimit_pass(&s->rl_conn, &suppressed))
            cbd_log(CBD_LOG_WARN, "redis store: still offline: %s (%" PRIu64 " more suppressed)", why, suppressed);
        return;
    }
    s->health = online;
    if (online)
        cbd_log(CBD_LOG_INFO, "redis store: online: %s (prefix '%s', owner id '%s')", why, s->uri.prefix, s->owner);
    else
        cbd_log(CBD_LOG_WARN, "redis store: offline, running host-local and retrying: %s", why);
    if (!s->closing)
        s->hooks.health(s->hooks.arg, online, why);
}

static void finish_restore(struct cbd_store *s, int rc)
{
    if (s->migrated > 0)
        cbd_log(CBD_LOG_INFO, "redis store: moved %u circuits from %sc:<name> to the hash-tagged %sc:{<name>}",
                s->migrated, s->uri.prefix, s->uri.prefix);
    s->migrated = 0;
    void (*done)(void *, int) = s->restore.done;
    s->restore.done = NULL;
    s->restore.more = false;
    if (done != NULL)
        done(s->restore.arg, rc);
    if (rc == 0)
        reconcile_start(s);
}

static void go_online(void *arg, const char *why)
{
    struct cbd_store *s = arg;
    s->phase = RS_ONLINE;
    set_health(s, true, why);
    uv_timer_start(&s->sync_timer, on_sync_timer, s->uri.sync_ms, s->uri.sync_ms);
    for (size_t i = 0; i < s->count; i++)
        if (s->list[i]->w_pending && !s->list[i]->w_inflight)
            wq_push(s, s->list[i]);
    pump_writes(s); /* queued transitions go out before any read */
    ask_waiting(s, false);
    if (s->restore.done != NULL)
        restore_scan(s, "0");
    else
        reconcile_start(s);
}

/* The link went down (an attempt failed, or the connections were lost):
 * host-local until it is back. */
static void went_offline(void *arg, int err, const char *why, bool attempt_failed)
{
    struct cbd_store *s = arg;
    s->phase = RS_DOWN;
    uv_timer_stop(&s->sync_timer);
    s->rec_running = false;
    s->rec_inflight = 0;
    s->stats.errors++;
    set_health(s, false, why);
    ask_waiting(s, attempt_failed);
    if (s->restore.done != NULL)
        finish_restore(s, err);
}

static void start(struct cbd_store *s)
{
    if (!s->started && !s->closing) {
        s->started = true;
        s->phase = RS_CONNECTING;
        cbd_redis_link_start(s->link);
    }
}

/* ---- preparing a connection: the scripts ------------------------------------------ */

static void on_script_loaded(struct cbd_redis_conn *conn, redisReply *r, void *sha)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    char why[300];
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "%s refused SCRIPT LOAD: %s", cbd_redis_conn_peer(conn), r->str);
        cbd_redis_link_drop(s->link, -EACCES, why);
        return;
    }
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        snprintf(why, sizeof why, "protocol error from %s: SCRIPT LOAD answered something other than a SHA1",
                 cbd_redis_conn_peer(conn));
        cbd_redis_link_drop(s->link, -EPROTO, why);
        return;
    }
    memcpy(sha, r->str, 40);
    ((char *)sha)[40] = '\0';
    if (--s->scripts_left == 0)
        cbd_redis_link_prepared(s->link);
}

/* The command connection is ready for the scripts. */
static void load_scripts(void *arg, struct cbd_redis_link *link)
{
    struct cbd_store *s = arg;
    s->scripts_left = 0;
    for (int i = 0; i < RS_NSCRIPTS; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", rs_scripts[i]};
        if (command(s, on_script_loaded, s->sha[i], 3, argv) < 0)
            return; /* the connection is going down; offline follows */
        s->scripts_left++;
    }
    (void)link;
}

static void on_link_message(void *arg, const char *payload, size_t len)
{
    on_message(arg, payload, len);
}

/* ---- writes: transitions ----------------------------------------------------------- */

static void wq_push(struct cbd_store *s, struct rs_circuit *c)
{
    if (c->w_queued)
        return;
    c->w_queued = true;
    c->qnext = NULL;
    if (s->wq_tail != NULL)
        s->wq_tail->qnext = c;
    else
        s->wq_head = c;
    s->wq_tail = c;
}

static struct rs_circuit *wq_pop(struct cbd_store *s)
{
    struct rs_circuit *c = s->wq_head;
    s->wq_head = c->qnext;
    if (s->wq_head == NULL)
        s->wq_tail = NULL;
    c->w_queued = false;
    return c;
}

static void on_write_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

/* Send c->w_sent (again as EVAL after NOSCRIPT). */
static int send_write(struct cbd_store *s, struct rs_circuit *c, bool use_eval)
{
    char a[2][24];
    int rc;
    if (c->w_sent.state == CB_OPEN) {
        snprintf(a[0], sizeof a[0], "%" PRId64, c->w_sent.opened_at);
        snprintf(a[1], sizeof a[1], "%" PRIu32, c->w_sent.failure_count);
        const char *args[3] = {a[0], a[1], s->owner};
        rc = eval(s, RS_OPEN, use_eval, on_write_reply, c, 3, args);
    } else {
        snprintf(a[0], sizeof a[0], "%" PRId64, c->w_sent.prev_opened_at);
        const char *args[2] = {a[0], s->owner};
        rc = eval(s, RS_CLOSE, use_eval, on_write_reply, c, 2, args);
    }
    if (rc == 0) {
        c->w_inflight = true;
        s->writes_inflight++;
    }
    return rc;
}

/* Queued transitions to redis, at most RS_WRITES_MAX in flight; one per
 * circuit at a time, so a circuit's writes land in order. */
static void pump_writes(struct cbd_store *s)
{
    while (s->phase == RS_ONLINE && s->writes_inflight < RS_WRITES_MAX && s->wq_head != NULL) {
        struct rs_circuit *c = wq_pop(s);
        if (!c->w_pending || c->w_inflight)
            continue;
        c->w_sent = c->w;
        if (send_write(s, c, false) < 0)
            return; /* going down: requeued when back online */
        c->w_pending = false;
    }
}

/* An unanswered or failed write stays the latest, unless a newer came. */
static void keep_unwritten(struct rs_circuit *c)
{
    if (!c->w_pending) {
        c->w = c->w_sent;
        c->w_pending = true;
    }
}

static void on_write_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_circuit *c = arg;
    struct cbd_store_state st;
    bool newer = c->w_pending; /* a transition came while this write was out */
    s->writes_inflight--;
    c->w_inflight = false;
    if (r == NULL) {
        keep_unwritten(c); /* written again once back online */
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        enum rs_err e = reply_error(s, "write", c->name, r);
        if (e == RS_ERR_NOSCRIPT && send_write(s, c, true) == 0)
            return;
        if (e != RS_ERR_DATA)
            keep_unwritten(c); /* retried by the next reconcile */
    } else if (script_result(s, c, r, &st) >= 0) {
        c->known = view_of(&st);
        /* refused: the fleet holds something else; the daemon adopts it */
        if (!newer && !equivalent(s, &c->known, &c->cur))
            report(s, c, &st);
        agreed(s, c);
    }
    if (newer)
        wq_push(s, c);
    pump_writes(s);
    if (s->closing && s->wq_head == NULL && s->writes_inflight == 0)
        teardown(s);
}

/* Does the fleet already hold st (an echo of a state it told us)? */
static bool already_there(const struct rs_view *known, const struct cbd_store_state *st)
{
    if (!known->valid)
        return false;
    if (st->state == CB_CLOSED)
        return known->state == CB_CLOSED;
    return known->state == CB_OPEN && known->opened_at == st->opened_at;
}

static void rs_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at)
{
    struct rs_circuit *c = s->closing ? NULL : get(s, st->name);
    if (c == NULL)
        return;
    start(s);
    c->cur = view_of(st);
    if (st->state == CB_HALF_OPEN) {
        /* the election wrote it (or granted it host-local): nothing to write */
        if (st->probe_owner[0] == '\0' && c->lease_mine)
            c->cur.owner_hash = s->owner_hash;
        return;
    }
    c->lease_mine = false;
    if (!c->w_inflight && already_there(&c->known, st)) {
        c->w_pending = false;
        agreed(s, c);
        return;
    }
    c->w = (struct rs_write){st->state, st->failure_count, st->opened_at, prev_opened_at};
    c->w_pending = true;
    if (!c->w_inflight) {
        wq_push(s, c);
        pump_writes(s);
    }
}

/* ---- reads: pub/sub, registration, reconcile ------------------------------------- */

static void on_read_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

static int send_read(struct cbd_store *s, struct rs_circuit *c, cbd_redis_reply_fn *fn)
{
    char key[RS_KEY_MAX];
    const char *argv[2] = {"HGETALL", key};
    key_of(s, c->name, key);
    int rc = command(s, fn, c, 2, argv);
    if (rc == 0)
        c->r_inflight = true;
    return rc;
}

static void request_read(struct cbd_store *s, struct rs_circuit *c)
{
    if (c->r_inflight)
        c->r_again = true; /* one more read after the one in flight */
    else if (s->phase == RS_ONLINE)
        send_read(s, c, on_read_reply);
}

/* redis holds no hash for c. If the daemon has it open, redis lost it
 * (flushed, restarted without persistence): write it again. */
static void absent(struct cbd_store *s, struct rs_circuit *c)
{
    c->known = (struct rs_view){.state = CB_CLOSED, .valid = true};
    if (c->cur.state == CB_CLOSED || c->w_pending || c->w_inflight)
        return;
    cbd_log(CBD_LOG_INFO, "redis store: circuit '%s' is open here but missing in redis: writing it again", c->name);
    c->w = (struct rs_write){CB_OPEN, c->cur.failure_count, c->cur.opened_at, 0};
    c->w_pending = true;
    wq_push(s, c);
    pump_writes(s);
}

static void on_migrate_read(struct cbd_redis_conn *conn, redisReply *r, void *arg);

/* What redis holds for c (a field/value list) adopted. A missing hash may
 * still be under the key before hash tags: checked once per circuit. */
static void adopt_hash(struct cbd_store *s, struct rs_circuit *c, redisReply *const *el, size_t n)
{
    struct cbd_store_state st;
    const char *bad = NULL;
    int rc = parse_hash(el, n, &st, &bad);
    if (rc < 0) {
        malformed_circuit(s, c, bad); /* the circuit keeps its last good state */
        return;
    }
    if (rc == 0 && !c->legacy_checked) {
        c->legacy_checked = true;
        if (send_migrate(s, c->name, false, on_migrate_read, c) == 0) {
            c->r_inflight = true;
            return;
        }
    }
    if (rc == 0) {
        absent(s, c);
        agreed(s, c);
        return;
    }
    memcpy(st.name, c->name, (size_t)c->name_len + 1);
    c->known = view_of(&st);
    /* a write or election of ours in flight is newer and will tell */
    if (c->w_pending || c->w_inflight || c->p_inflight)
        return;
    if (!equivalent(s, &c->known, &c->cur))
        report(s, c, &st);
    agreed(s, c);
}

static void apply_read(struct cbd_store *s, struct rs_circuit *c, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR)
        reply_error(s, "read", c->name, r);
    else if (r->type != REDIS_REPLY_ARRAY)
        malformed_circuit(s, c, "HGETALL answered something other than a list");
    else
        adopt_hash(s, c, r->element, r->elements);
}

static void read_again_if_asked(struct cbd_store *s, struct rs_circuit *c)
{
    if (c->r_again) {
        c->r_again = false;
        request_read(s, c);
    }
}

static void on_migrate_read(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_circuit *c = arg;
    redisReply *const *el;
    size_t n;
    c->r_inflight = false;
    if (r == NULL) {
        c->r_again = false;
        c->legacy_checked = false; /* asked again on the next connection */
        return;
    }
    int rc = r->type == REDIS_REPLY_ERROR ? -2 : migrate_result(r, &el, &n);
    if (rc == -2 && reply_error(s, "legacy key check", c->name, r) == RS_ERR_NOSCRIPT &&
        send_migrate(s, c->name, true, on_migrate_read, c) == 0) {
        c->r_inflight = true;
        return;
    }
    if (rc == 1 && r->element[0]->integer == 1)
        cbd_log(CBD_LOG_INFO, "redis store: circuit '%s' moved from %sc:%s to %sc:{%s} (hash-tagged layout)", c->name,
                s->uri.prefix, c->name, s->uri.prefix, c->name);
    if (rc == 1)
        adopt_hash(s, c, el, n);
    else if (rc == 0)
        malformed_circuit(s, c, "its key from before hash tags (<prefix>c:<name>) is not a hash");
    else if (rc == -1)
        malformed_circuit(s, c, "the legacy key check answered something else");
    read_again_if_asked(s, c);
}

static void on_read_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_circuit *c = arg;
    c->r_inflight = false;
    if (r == NULL) {
        c->r_again = false; /* the reconcile after reconnecting reads it */
        return;
    }
    apply_read(s, c, r);
    read_again_if_asked(s, c);
}

static void on_message(struct cbd_store *s, const char *name, size_t len)
{
    struct rs_circuit *c = len > 0 && len <= CB_NAME_MAX ? find(s, name, len) : NULL;
    if (c != NULL)
        request_read(s, c);
    else if (len == 0 || len > CB_NAME_MAX || memchr(name, '\0', len) != NULL)
        malformed(s, "message", name, len, "not a circuit name");
    /* else: a circuit this host does not use */
}

static void on_sync_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

/* Keep up to RS_WINDOW reads of tracked circuits in flight. */
static void reconcile_step(struct cbd_store *s)
{
    while (s->rec_running && s->phase == RS_ONLINE && s->rec_inflight < RS_WINDOW && s->rec_cursor < s->count) {
        struct rs_circuit *c = s->list[s->rec_cursor];
        if (c->w_pending && !c->w_inflight)
            wq_push(s, c); /* retry a write that an error reply refused */
        if (!c->r_inflight) {
            if (send_read(s, c, on_sync_reply) < 0)
                return;
            s->rec_inflight++;
        }
        s->rec_cursor++;
    }
    pump_writes(s);
    if (s->rec_running && s->rec_inflight == 0 && s->rec_cursor >= s->count)
        s->rec_running = false;
}

static void on_sync_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    on_read_reply(conn, r, arg);
    if (s->rec_inflight > 0)
        s->rec_inflight--;
    if (r != NULL)
        reconcile_step(s);
}

/* A full pass over the tracked circuits, unless one runs already. Not
 * during restore, which reads everything anyway. */
static void reconcile_start(struct cbd_store *s)
{
    if (s->phase != RS_ONLINE || s->restore.done != NULL || s->rec_running)
        return;
    s->rec_running = true;
    s->rec_cursor = 0;
    reconcile_step(s);
}

static void on_sync_timer(uv_timer_t *t) { reconcile_start(t->data); }

static void rs_track(struct cbd_store *s, const char *name, const cb_config *cfg)
{
    (void)cfg; /* the fleet shares states, not policies */
    size_t len = strlen(name);
    if (s->closing || len > CB_NAME_MAX || find(s, name, len) != NULL)
        return;
    struct rs_circuit *c = get(s, name);
    if (c == NULL)
        return;
    start(s);
    request_read(s, c); /* a circuit open in the fleet opens here at registration */
}

static void rs_sync(struct cbd_store *s)
{
    start(s);
    reconcile_start(s);
}

/* ---- elections ---------------------------------------------------------------------- */

static void on_grant_timer(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    while (s->g_head != NULL && !s->closing) {
        struct rs_circuit *c = s->g_head;
        s->g_head = c->gnext;
        if (s->g_head == NULL)
            s->g_tail = NULL;
        c->g_queued = false;
        cbd_log(CBD_LOG_DEBUG, "redis store: offline: probe of '%s' granted host-local", c->name);
        s->hooks.probe_result(s->hooks.arg, c->name, c->g_opened_at, true, (int64_t)time(NULL) + c->g_lease_s);
    }
}

/* The fleet cannot be asked: grant host-local, on a later loop turn. */
static void local_grant(struct cbd_store *s, struct rs_circuit *c, int64_t opened_at, uint32_t lease_s)
{
    if (s->closing)
        return;
    c->g_opened_at = opened_at;
    c->g_lease_s = lease_s;
    c->lease_mine = false;
    if (!c->g_queued) {
        c->g_queued = true;
        c->gnext = NULL;
        if (s->g_tail != NULL)
            s->g_tail->gnext = c;
        else
            s->g_head = c;
        s->g_tail = c;
    }
    uv_timer_start(&s->grant_timer, on_grant_timer, 0, 0);
}

static void on_probe_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

static int send_probe(struct cbd_store *s, struct rs_circuit *c, bool use_eval)
{
    char a[2][24];
    snprintf(a[0], sizeof a[0], "%" PRId64, c->p_sent_opened_at);
    snprintf(a[1], sizeof a[1], "%" PRIu32, c->p_sent_lease_s);
    const char *args[3] = {a[0], a[1], s->owner};
    int rc = eval(s, RS_PROBE, use_eval, on_probe_reply, c, 3, args);
    if (rc == 0)
        c->p_inflight = true;
    return rc;
}

static void start_probe(struct cbd_store *s, struct rs_circuit *c)
{
    c->p_pending = true; /* until sent: it waits for a connection (ask_waiting) */
    if (s->phase != RS_ONLINE)
        return;
    c->p_sent_opened_at = c->p_opened_at;
    c->p_sent_lease_s = c->p_lease_s;
    if (send_probe(s, c, false) == 0)
        c->p_pending = false;
}

static void probe_answer(struct cbd_store *s, struct rs_circuit *c, const struct cbd_store_state *st, bool granted)
{
    c->known = view_of(st);
    if (granted) {
        c->lease_mine = true;
        c->cur = c->known;
    } else if (!c->w_pending && !c->w_inflight && !equivalent(s, &c->known, &c->cur)) {
        report(s, c, st); /* e.g. closed by the fleet meanwhile */
    }
    agreed(s, c);
    /* refused: the holder's lease expiry tells the daemon when to ask again */
    int64_t lease = granted || st->state == CB_HALF_OPEN ? st->lease_expiry : 0;
    if (!s->closing)
        s->hooks.probe_result(s->hooks.arg, c->name, c->p_sent_opened_at, granted, lease);
}

static void on_probe_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_circuit *c = arg;
    struct cbd_store_state st;
    int granted = -1;
    c->p_inflight = false;
    if (r != NULL && r->type == REDIS_REPLY_ERROR) {
        if (reply_error(s, "probe election", c->name, r) == RS_ERR_NOSCRIPT && send_probe(s, c, true) == 0)
            return;
    } else if (r != NULL) {
        granted = script_result(s, c, r, &st);
    }
    if (granted >= 0)
        probe_answer(s, c, &st, granted);
    else if (r == NULL) /* the connection went: asked again on the next one */
        c->p_pending = true;
    else if (!c->p_pending) /* an error answer: the fleet cannot decide now; host-local, as offline */
        local_grant(s, c, c->p_sent_opened_at, c->p_sent_lease_s);
    if (c->p_pending)
        start_probe(s, c);
}

/* Elections that waited for a connection: sent now that one is up, or
 * granted host-local once an attempt to connect failed (a dropped
 * connection alone is no outage yet: the next attempt decides). */
static void ask_waiting(struct cbd_store *s, bool attempt_failed)
{
    for (size_t i = 0; i < s->count; i++) {
        struct rs_circuit *c = s->list[i];
        if (!c->p_pending || c->p_inflight) {
            continue;
        } else if (s->phase == RS_ONLINE) {
            start_probe(s, c);
        } else if (attempt_failed) {
            c->p_pending = false;
            local_grant(s, c, c->p_opened_at, c->p_lease_s);
        }
    }
}

static void rs_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s)
{
    struct rs_circuit *c = s->closing ? NULL : get(s, name);
    if (c == NULL)
        return;
    start(s);
    c->p_opened_at = opened_at;
    c->p_lease_s = lease_s;
    if (c->p_inflight)
        c->p_pending = true; /* asked after the answer to the one in flight */
    else
        start_probe(s, c);
}

/* ---- restore: everything under the prefix ------------------------------------------- */

static void on_scan_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

static void restore_scan(struct cbd_store *s, const char *cursor)
{
    char pattern[2 * RS_PREFIX_MAX + 4];
    size_t n = 0;
    for (const char *p = s->uri.prefix; *p != '\0'; p++) {
        if (strchr("*?[]\\", *p) != NULL)
            pattern[n++] = '\\'; /* the prefix is literal, not a glob */
        pattern[n++] = *p;
    }
    memcpy(pattern + n, "c:*", 4);
    const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", RS_SCAN_COUNT};
    /* if this fails the store is going down, and went_offline ends the restore */
    command(s, on_scan_reply, NULL, 6, argv);
}

/* A circuit found by the restore, as a field/value list. */
static void restore_fields(struct cbd_store *s, const char *name, redisReply *const *el, size_t n)
{
    struct cbd_store_state st;
    const char *bad = NULL;
    int rc = parse_hash(el, n, &st, &bad);
    if (rc < 0)
        malformed(s, "circuit", name, strlen(name), bad);
    struct rs_circuit *c = rc > 0 ? get(s, name) : NULL; /* rc 0: deleted since the SCAN */
    if (c == NULL)
        return;
    c->legacy_checked = true; /* the restore saw every key */
    memcpy(st.name, c->name, (size_t)c->name_len + 1);
    c->known = view_of(&st);
    if (!c->w_pending && !c->w_inflight)
        report(s, c, &st);
    agreed(s, c);
}

static void restore_apply(struct cbd_store *s, const char *name, const redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR)
        reply_error(s, "restore read", name, r);
    else if (r->type != REDIS_REPLY_ARRAY)
        malformed(s, "circuit", name, strlen(name), "not a hash");
    else
        restore_fields(s, name, r->element, r->elements);
}

static void restore_next(struct cbd_store *s)
{
    if (s->restore.done == NULL || s->restore.inflight > 0)
        return;
    if (s->restore.more)
        restore_scan(s, s->restore.cursor);
    else
        finish_restore(s, 0);
}

static void on_restore_read(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_restore_item *it = arg;
    s->restore.inflight--;
    if (r != NULL)
        restore_apply(s, it->name, r);
    free(it);
    if (r != NULL)
        restore_next(s);
}

static void on_restore_migrate(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    struct rs_restore_item *it = arg;
    redisReply *const *el;
    size_t n;
    int rc = r == NULL ? -3 : r->type == REDIS_REPLY_ERROR ? -2 : migrate_result(r, &el, &n);
    if (rc == -2 && reply_error(s, "restore read", it->name, r) == RS_ERR_NOSCRIPT &&
        send_migrate(s, it->name, true, on_restore_migrate, it) == 0)
        return;
    s->restore.inflight--;
    if (rc == 1) {
        s->migrated += r->element[0]->integer == 1;
        restore_fields(s, it->name, el, n);
    } else if (rc == 0) {
        malformed(s, "key", it->name, strlen(it->name), "a key from before hash tags that is not a hash");
    } else if (rc == -1) {
        malformed(s, "circuit", it->name, strlen(it->name), "the migration answered something else");
    }
    free(it);
    if (r != NULL)
        restore_next(s);
}

/* A key found by the restore: <prefix>c:{<name>}, read; or <prefix>c:<name>
 * from before hash tags, moved to the new key and read. */
static void restore_key(struct cbd_store *s, const redisReply *k)
{
    size_t plen = strlen(s->uri.prefix) + 2, n = k->type == REDIS_REPLY_STRING ? k->len : 0;
    const char *rest = k->type == REDIS_REPLY_STRING ? k->str + plen : NULL;
    bool tagged = n > plen + 2 && rest[0] == '{' && k->str[n - 1] == '}';
    size_t nlen = n < plen ? 0 : tagged ? n - plen - 2 : n - plen;
    struct rs_restore_item *it = NULL;
    if (k->type != REDIS_REPLY_STRING)
        return;
    if (nlen > 0 && nlen <= CB_NAME_MAX && (it = malloc(sizeof *it)) != NULL) {
        memcpy(it->name, rest + tagged, nlen);
        it->name[nlen] = '\0';
    }
    if (it == NULL || memcmp(k->str, s->uri.prefix, plen - 2) != 0 || memcmp(k->str + plen - 2, "c:", 2) != 0 ||
        strlen(it->name) != nlen ||
        cb__name_check(it->name) < 0) {
        malformed(s, "key", k->str, k->len, "not <prefix>c:{<circuit name>}");
        free(it);
        return;
    }
    const char *argv[2] = {"HGETALL", k->str};
    if ((tagged ? command(s, on_restore_read, it, 2, argv) : send_migrate(s, it->name, false, on_restore_migrate, it)) <
        0) {
        free(it);
        return;
    }
    s->restore.inflight++;
}

static void on_scan_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_store *s = cbd_redis_conn_data(conn);
    (void)arg;
    if (r == NULL || s->restore.done == NULL)
        return;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len >= sizeof s->restore.cursor || r->element[1]->type != REDIS_REPLY_ARRAY) {
        s->stats.errors++;
        cbd_log(CBD_LOG_WARN, "redis store: restore: SCAN answered %s",
                r->type == REDIS_REPLY_ERROR ? r->str : "something other than [cursor, keys]");
        finish_restore(s, -EIO);
        return;
    }
    memcpy(s->restore.cursor, r->element[0]->str, r->element[0]->len + 1);
    s->restore.more = strcmp(s->restore.cursor, "0") != 0;
    for (size_t i = 0; i < r->element[1]->elements; i++)
        restore_key(s, r->element[1]->element[i]);
    restore_next(s);
}

static void rs_restore(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg)
{
    s->restore.done = done;
    s->restore.arg = arg;
    if (!s->started) {
        start(s); /* go_online scans; went_offline ends it with the error */
    } else if (s->phase == RS_ONLINE) {
        restore_scan(s, "0");
    } else {
        cbd_redis_link_retry_now(s->link); /* no need to wait out the backoff */
    }
}

/* ---- create, close, stats ---------------------------------------------------------- */

/* Memory only: every handle is closed (or was never opened). */
static void free_store(struct cbd_store *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->list[i]);
    free(s->list);
    free(s->buckets);
    free(s);
}

static void on_part_closed(struct cbd_store *s)
{
    if (--s->close_pending > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    free_store(s);
    if (done != NULL)
        done(arg);
}

static void on_link_closed(void *arg) { on_part_closed(arg); }
static void on_timer_closed(uv_handle_t *h) { on_part_closed(h->data); }

static void teardown(struct cbd_store *s)
{
    if (s->tearing)
        return;
    s->tearing = true;
    if (s->restore.done != NULL)
        finish_restore(s, -ECANCELED);
    s->close_pending = 3;
    cbd_redis_link_close(s->link, on_link_closed, s);
    uv_close((uv_handle_t *)&s->sync_timer, on_timer_closed);
    uv_close((uv_handle_t *)&s->grant_timer, on_timer_closed);
}

/* Flush queued transitions while online (bounded by the command timeout),
 * then release everything. No hook is called once close() is. */
static void rs_close(struct cbd_store *s, void (*done)(void *arg), void *arg)
{
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->sync_timer);
    uv_timer_stop(&s->grant_timer);
    if (s->phase == RS_ONLINE && (s->wq_head != NULL || s->writes_inflight > 0))
        pump_writes(s); /* on_write_reply tears down once drained */
    else
        teardown(s);
}

/* "<hostname>:<instance>:<pid>": this host's probe owner id. */
static void identify(struct cbd_store *s)
{
    char host[65] = "";
    if (gethostname(host, sizeof host - 1) < 0 || host[0] == '\0')
        strcpy(host, "unknown-host");
    snprintf(s->owner, sizeof s->owner, "%.48s:%s:%ld", host, s->uri.instance, (long)getpid());
    s->owner_hash = owner_hash(s->owner);
    snprintf(s->channel, sizeof s->channel, "%stransitions", s->uri.prefix);
}

static char create_error[320]; /* create()'s message: the loop thread reads it at once */

static int rs_create(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks, const char **err)
{
    struct rs_uri u;
    if (parse_uri(uri, &u, create_error, sizeof create_error) < 0) {
        *err = create_error;
        return -EINVAL;
    }
    struct cbd_store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        *err = "out of memory creating the redis store";
        return -ENOMEM;
    }
    s->hooks = *hooks;
    s->uri = u;
    if (!u.instance_given && hooks->instance != NULL && cb__instance_check(hooks->instance) == 0)
        snprintf(s->uri.instance, sizeof s->uri.instance, "%s", hooks->instance);
    s->health = -1;
    s->nbuckets = s->list_cap = 64;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    s->list = calloc(s->list_cap, sizeof *s->list);
    identify(s);
    struct cbd_redis_link_cbs cbs = {.arg = s, .prepare = load_scripts, .online = go_online,
                                     .offline = went_offline, .message = on_link_message};
    if (s->buckets == NULL || s->list == NULL ||
        cbd_redis_link_new(&s->link, hooks->loop, &s->uri.conn, s->channel, &cbs) < 0) {
        free_store(s);
        *err = "out of memory creating the redis store";
        return -ENOMEM;
    }
    uv_timer_init(hooks->loop, &s->sync_timer);
    uv_timer_init(hooks->loop, &s->grant_timer);
    s->sync_timer.data = s->grant_timer.data = s;
    *out = s;
    return 0;
}

static int rs_check_uri(const char *uri, char *why, size_t size)
{
    struct rs_uri u;
    return parse_uri(uri, &u, why, size);
}

void cbd_store_redis_stats(const struct cbd_store *s, struct cbd_store_redis_stats *out)
{
    struct cbd_redis_link_stats ls;
    cbd_redis_link_stats(s->link, &ls);
    *out = s->stats;
    out->commands_sent = ls.commands_sent;
    out->reconnects = ls.reconnects;
    out->protocol_errors = ls.protocol_errors;
    out->failovers = ls.failovers;
    out->online = s->phase == RS_ONLINE;
    out->queued = 0;
    for (size_t i = 0; i < s->count; i++)
        out->queued += s->list[i]->w_pending;
}

static void rs_stats(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value), void *arg)
{
    struct cbd_store_redis_stats st;
    cbd_store_redis_stats(s, &st);
    emit(arg, "commands_sent", st.commands_sent);
    emit(arg, "errors", st.errors);
    emit(arg, "malformed", st.malformed);
    emit(arg, "reconnects", st.reconnects);
    emit(arg, "protocol_errors", st.protocol_errors);
    emit(arg, "failovers", st.failovers);
    emit(arg, "queued", st.queued);
}

const struct cbd_store_ops cbd_store_redis_ops = {
    .scheme = "redis",
    .create = rs_create,
    .check_uri = rs_check_uri,
    .restore = rs_restore,
    .track = rs_track,
    .transition = rs_transition,
    .try_probe = rs_try_probe,
    .sync = rs_sync,
    .close = rs_close,
    .stats = rs_stats,
};
