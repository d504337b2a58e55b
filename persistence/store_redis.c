/*
 * store_redis.c - the redis transport of the fleet layer (docs/store-redis.md;
 * the fleet rules are fleet.c's, docs/fleet.md).
 *
 * Layout: one hash per circuit, <prefix>c:{<name>}, with Powertools' fields
 * (state, failure_count, opened_at, half_open_owner, probe_lease_expiry)
 * plus updated_ms (server TIME of the last write), version (+1 per write)
 * and, for an opening whose backoff ends later than its recovery timeout,
 * open_until (epoch s) with open_until_of (the opened_at it belongs to),
 * and a shadow circuit's trial marker: shadow_state, shadow_since (epoch
 * s), shadow_host (the writer's owner id) - a hash with only those reads
 * as no item. Every write publishes the circuit's name on <prefix>transitions.
 * The braces are a Redis Cluster hash tag: every key a script touches for a
 * circuit hashes to one slot, so a cluster transport needs no migration.
 *
 * Writes. One Lua script encodes fleet_write_applies and fleet_write_result
 * (fleet.h) for the five kinds: it reads the hash and the server's TIME,
 * decides exactly as the table says, and only then writes, bumps the
 * bookkeeping and publishes. It answers {applied, server second, field,
 * value, ...}: the hash as stored afterwards, so a refused write tells the
 * fleet layer at once what the fleet holds. A number field is a number to
 * the script only if it is digits, the way the decoder below reads it, so
 * the script and the decoder agree on what the item holds. Scripts go as
 * EVALSHA (loaded with SCRIPT LOAD while the connection is prepared); a
 * NOSCRIPT answer (SCRIPT FLUSH, failover) resends that call as EVAL.
 * tests/integration/test_fleet_contract.c checks the script against the
 * table with thousands of random cases.
 *
 * Reads are HGETALL, pipelined (the fleet layer batches them). Every hash
 * read goes through cbd_redis_item_decode, as strict as the DynamoDB codec
 * and with the same rules for what a state needs (fleet_item_check): wrong
 * types, numbers that are not digits or out of range (times up to
 * CB_TIME_MAX_S), unknown states, oversized fields and missing ones make
 * the answer FLEET_INVALID with the reason; the fleet layer counts it and
 * never adopts it. Fields the layout does not name are ignored (a newer cbd
 * may add some), whatever their size.
 *
 * Keys from before the hash tags (<prefix>c:<name>) are moved on read, by a
 * script that renames the old key only when the new one does not exist:
 * every one list() (the restore's SCAN) finds, and a tracked circuit's
 * when its new key is missing - checked once per name (a set of name
 * hashes), which catches old keys an older host wrote after the restore.
 *
 * Connections are the link's (redis_link.c): a command connection and a
 * subscriber, found through the URI (directly or through Redis Sentinel),
 * authenticated, checked to be on the master; this transport adds SCRIPT
 * LOAD to the preparation and reports up() when the link is online and
 * down() when it is not. The link reconnects by itself (backoff with full
 * jitter, at once after a Sentinel failover), so the fleet layer leaves
 * reconnecting to it; a restore while offline brings an attempt forward. An answer saying this server cannot take our
 * writes now (READONLY after a failover, LOADING, NOAUTH, ...) drops the
 * link, which reconnects - to the new master, with a sentinel URI - and
 * answers the request as lost with the connection (-ENOTCONN). A reply lost
 * with a connection is answered the same way.
 *
 * Anything under the prefix that is not ours in shape - keys that are not
 * circuit names, channel messages that are not names, answers of another
 * shape than the command's - is counted as malformed, logged (rate-limited)
 * and ignored.
 */
#include "store_redis.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "log.h"
#include "redis_link.h"
#include "redis_resp.h"
#include "redis_uri.h"
#include "segment.h"

#define RS_PREFIX_MAX 64
#define RS_SCAN_COUNT "256"
#define RS_KEY_MAX (RS_PREFIX_MAX + 4 + CB_NAME_MAX + 1)
#define RS_VERSION_MAX 9007199254740992ull /* 2^53: the script counts in Lua numbers */

/* The URI: where and how to connect (redis_uri.h), and the store's own
 * options. */
struct rs_uri {
    struct cbd_redis_uri conn;
    char prefix[RS_PREFIX_MAX + 1];
    char instance[CB_INSTANCE_MAX + 1];
    bool instance_given; /* instance= was in the URI */
    uint32_t sync_ms;
    uint32_t read_budget; /* passed to the fleet layer as it is */
};

enum rs_script { RS_WRITE, RS_MIGRATE, RS_NSCRIPTS };
enum rs_kind { REQ_READ, REQ_MIGRATE, REQ_WRITE };

/* One request of the fleet layer, until it is answered. */
struct rs_req {
    struct fleet_transport *t;
    enum rs_kind kind;
    bool as_eval; /* sent (again) as EVAL after NOSCRIPT */
    char name[CB_NAME_MAX + 1];
    struct fleet_write w;
    fleet_read_cb *rcb;
    fleet_write_cb *wcb;
    void *arg;
};

struct fleet_transport {
    struct rs_uri uri;
    struct fleet_transport_cbs cbs;
    char owner[FLEET_OWNER_MAX + 1];
    char channel[RS_PREFIX_MAX + 16];
    struct cbd_redis_link *link;
    bool started;
    unsigned scripts_left; /* SCRIPT LOADs of the attempt not answered yet */
    char sha[RS_NSCRIPTS][41];
    struct {
        void (*each)(void *arg, const char *name);
        void (*done)(void *arg, int rc);
        void *arg;
    } scan;
    uint64_t *checked; /* open addressing: hashes (| 1) of names whose legacy key was checked */
    size_t nchecked, checked_cap;
    uint64_t malformed, migrated;
    struct cbd_ratelimit rl_data;
    bool closing;      /* close() called: nothing is answered any more (fleet.h) */
    void (*close_done)(void *arg);
    void *close_arg;
};

/* ---- the scripts ------------------------------------------------------------------ */

/*
 * write: KEYS[1] the circuit's hash; ARGV: channel, name, kind (OPEN,
 * CLOSE, ELECT, RENEW, RELEASE, SHADOW), opened_at (SHADOW: its since),
 * failure_count, lease seconds, owner id, open_until (OPEN; "0" none),
 * shadow state (SHADOW). fleet_write_applies, with before = the hash (an
 * item only if it has a state: a shadow marker alone is none) and now =
 * TIME; fleet_write_result: OPEN sets open_until and open_until_of (or
 * removes both), CLOSE removes both, the rest keep them. SHADOW sets the
 * three shadow fields and nothing else (no version, no updated_ms): other
 * hosts obey none of it.
 * Reads run before any write, so a wrong-typed key fails the script clean.
 */
static const char script_write[] =
    "local k, kind, me = KEYS[1], ARGV[3], ARGV[7]\n"
    "local w_oa, lease_s = tonumber(ARGV[4]), tonumber(ARGV[6])\n"
    "local exists = redis.call('HEXISTS', k, 'state') == 1\n"
    "local f = redis.call('HMGET', k, 'state', 'opened_at', 'half_open_owner', 'probe_lease_expiry', 'version')\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1])\n"
    "if kind == 'SHADOW' then\n"
    "  redis.call('HSET', k, 'shadow_state', ARGV[9], 'shadow_since', ARGV[4], 'shadow_host', me)\n"
    "  redis.call('PUBLISH', ARGV[1], ARGV[2])\n"
    "  return {1, now, unpack(redis.call('HGETALL', k))}\n"
    "end\n"
    "local function num(x) if x and string.find(x, '^%d+$') then return tonumber(x) end return nil end\n"
    "local st, oa, owner, lease = f[1], num(f[2]), f[3], num(f[4])\n"
    "local open, half = st == 'OPEN', st == 'HALF_OPEN'\n"
    "local mine = half and owner == me\n"
    "local lapsed = half and lease ~= nil and lease <= now\n"
    "local same = (open or half) and oa ~= nil and oa == w_oa\n"
    "local older = oa ~= nil and oa < w_oa\n"
    "local ok\n"
    "if kind == 'OPEN' then ok = not exists or st == 'CLOSED' or (open and older) or"
    " (half and (mine or (lapsed and older)))\n"
    "elseif kind == 'CLOSE' then ok = mine or (same and ((open and not owner) or lapsed))\n"
    "elseif kind == 'ELECT' then ok = (open and not owner and same) or lapsed or mine\n"
    "else ok = mine and same end\n"
    "local function commit(set, del)\n"
    "  local v = num(f[5])\n"
    "  if v == nil or v >= 9007199254740992 then v = 0 end\n"
    "  local ms = now * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  redis.call('HSET', k, 'updated_ms', string.format('%d', ms), 'version', string.format('%d', v + 1),"
    " unpack(set))\n"
    "  if #del > 0 then redis.call('HDEL', k, unpack(del)) end\n"
    "  redis.call('PUBLISH', ARGV[1], ARGV[2])\n"
    "end\n"
    "local lease_at = string.format('%d', now + (lease_s or 0))\n"
    "if ok and kind == 'OPEN' and ARGV[8] ~= '0' then commit({'state', 'OPEN', 'failure_count', ARGV[5],"
    " 'opened_at', ARGV[4], 'open_until', ARGV[8], 'open_until_of', ARGV[4]},"
    " {'half_open_owner', 'probe_lease_expiry'})\n"
    "elseif ok and kind == 'OPEN' then commit({'state', 'OPEN', 'failure_count', ARGV[5], 'opened_at', ARGV[4]},"
    " {'half_open_owner', 'probe_lease_expiry', 'open_until', 'open_until_of'})\n"
    "elseif ok and kind == 'CLOSE' then commit({'state', 'CLOSED', 'failure_count', '0'},"
    " {'opened_at', 'half_open_owner', 'probe_lease_expiry', 'open_until', 'open_until_of'})\n"
    "elseif ok and kind == 'ELECT' then commit({'state', 'HALF_OPEN', 'half_open_owner', me,"
    " 'probe_lease_expiry', lease_at}, {})\n"
    "elseif ok and kind == 'RENEW' then commit({'probe_lease_expiry', lease_at}, {})\n"
    "elseif ok then commit({'state', 'OPEN'}, {'half_open_owner', 'probe_lease_expiry'}) end\n"
    "return {ok and 1 or 0, now, unpack(redis.call('HGETALL', k))}\n";

/* migrate: KEYS[1] the circuit's hash, KEYS[2] its key before hash tags.
 * Renames the old key if the new one does not exist; {moved (1/0), the
 * hash...}, or {-1} if the old key is not a hash. Two keys in different
 * slots: for the standalone and Sentinel deployments that have old keys. */
static const char script_migrate[] =
    "local new, old = KEYS[1], KEYS[2]\n"
    "local moved = 0\n"
    "if redis.call('EXISTS', new) == 0 and redis.call('EXISTS', old) == 1 then\n"
    "  if redis.call('TYPE', old).ok ~= 'hash' then return {-1} end\n"
    "  redis.call('RENAME', old, new)\n"
    "  moved = 1\n"
    "end\n"
    "return {moved, unpack(redis.call('HGETALL', new))}\n";

static const char *const rs_scripts[RS_NSCRIPTS] = {[RS_WRITE] = script_write, [RS_MIGRATE] = script_migrate};

/* ---- URI -------------------------------------------------------------------------- */

#define RS_OPTIONS "prefix, sync_ms, read_budget, instance"

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
    } else if (strcmp(name, "read_budget") == 0) {
        if (!cbd_redis_parse_u32(val, n, 0, 1000000000, &u->read_budget))
            return "read_budget must be a number 0..1000000000 (circuit reads a second; 0: no budget)";
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
    return cbd_redis_uri_parse(uri, &u->conn, store_option, u, RS_OPTIONS, why, size);
}

/* "<prefix>c:{<name>}": the braces are a Redis Cluster hash tag, so every
 * key a script touches for one circuit hashes to the circuit's slot. */
static void key_of(const struct fleet_transport *t, const char *name, char *key)
{
    snprintf(key, RS_KEY_MAX, "%sc:{%s}", t->uri.prefix, name);
}

/* "<prefix>c:<name>": the key before hash tags, migrated on read. */
static void legacy_key_of(const struct fleet_transport *t, const char *name, char *key)
{
    snprintf(key, RS_KEY_MAX, "%sc:%s", t->uri.prefix, name);
}

/* ---- what redis holds ------------------------------------------------------------- */

static bool is_str(const redisReply *r, const char *lit)
{
    return r->type == REDIS_REPLY_STRING && r->len == strlen(lit) && memcmp(r->str, lit, r->len) == 0;
}

static const struct fleet_item_names rs_names = {
    .kind = "field", .state = "state", .failure_count = "failure_count", .opened_at = "opened_at",
    .owner = "half_open_owner", .lease = "probe_lease_expiry", .open_until = "open_until",
    .open_until_of = "open_until_of", .shadow_state = "shadow_state", .shadow_since = "shadow_since",
    .shadow_host = "shadow_host",
};

enum rs_field { F_STATE, F_FAILURES, F_OPENED, F_OWNER, F_LEASE, F_UPDATED, F_VERSION, F_UNTIL, F_UNTIL_OF, F_COUNT };
enum rs_shadow_field { SH_STATE, SH_SINCE, SH_HOST, SH_COUNT };
static const char *const rs_shadow_fields[SH_COUNT] = {"shadow_state", "shadow_since", "shadow_host"};

static const struct {
    const char *name;
    uint64_t max;
    const char *above;
} rs_fields[F_COUNT] = {
    [F_STATE] = {"state", 0, NULL},
    [F_FAILURES] = {"failure_count", UINT32_MAX, "more than 4294967295"},
    [F_OPENED] = {"opened_at", CB_TIME_MAX_S, "after 2255-03-14 (epoch second 9000000000)"},
    [F_OWNER] = {"half_open_owner", 0, NULL},
    [F_LEASE] = {"probe_lease_expiry", CB_TIME_MAX_S, "after 2255-03-14 (epoch second 9000000000)"},
    [F_UPDATED] = {"updated_ms", CB_TIME_MAX_S * 1000ull, "after 2255-03-14"},
    [F_VERSION] = {"version", RS_VERSION_MAX, "more than 9007199254740992"},
    [F_UNTIL] = {"open_until", CB_TIME_MAX_S, "after 2255-03-14 (epoch second 9000000000)"},
    [F_UNTIL_OF] = {"open_until_of", CB_TIME_MAX_S, "after 2255-03-14 (epoch second 9000000000)"},
};

/* The value v of field f into it: 0 or -EBADMSG. */
static int decode_field(enum rs_field f, const redisReply *v, struct fleet_item *it, char *why, size_t size)
{
    char q[64];
    uint64_t n = 0;
    const char *name = rs_fields[f].name;
    if (v->type != REDIS_REPLY_STRING)
        return fleet_fault(why, size, "field '%s' is not a string", name);
    if (f == F_STATE) {
        if (fleet_parse_state(v->str, v->len, &it->state) == 0)
            return 0;
        return fleet_fault(why, size, "field 'state' is '%s', not CLOSED, OPEN or HALF_OPEN",
                   fleet_quote(v->str, v->len, q, sizeof q));
    }
    if (f == F_OWNER) {
        if (v->len > FLEET_OWNER_MAX)
            return fleet_fault(why, size, "field '%s' is %zu bytes, more than the %d cbd holds ('%s')", name, v->len,
                       FLEET_OWNER_MAX, fleet_quote(v->str, v->len, q, sizeof q));
        if (memchr(v->str, '\0', v->len) != NULL)
            return fleet_fault(why, size, "field '%s' holds a NUL byte ('%s')", name, fleet_quote(v->str, v->len, q, sizeof q));
        memcpy(it->owner, v->str, v->len);
        it->owner[v->len] = '\0';
        return 0;
    }
    int rc = fleet_parse_number("field", name, v->str, v->len, rs_fields[f].max, rs_fields[f].above, &n, why, size);
    if (rc < 0)
        return rc;
    if (f == F_FAILURES)
        it->failure_count = (uint32_t)n;
    else if (f == F_OPENED)
        it->opened_at = (int64_t)n;
    else if (f == F_LEASE)
        it->lease_expiry = (int64_t)n;
    else if (f == F_UPDATED)
        it->updated_at = (int64_t)(n / 1000);
    else if (f == F_UNTIL)
        it->open_until = (int64_t)n; /* as stored: fleet_item_deadline decides */
    else if (f == F_UNTIL_OF)
        it->open_until_of = (int64_t)n;
    return 0;
}

/* The shadow marker's fields (each string, at most once) into out: a bad
 * marker is dropped and flagged, never a fault of the hash. */
static void decode_shadow(const struct fleet_raw sh[SH_COUNT], bool bad, struct fleet_item *out)
{
    char why[200];
    if (bad || fleet_item_shadow(&rs_names, out, sh[SH_STATE], sh[SH_SINCE], sh[SH_HOST], why, sizeof why) < 0) {
        out->shadow = (struct fleet_shadow){.state = CB_CLOSED};
        out->shadow_invalid = true;
    }
}

int cbd_redis_item_decode(redisReply *const *el, size_t n, struct fleet_item *out, char *why, size_t size)
{
    unsigned seen = 0;
    struct fleet_raw sh[SH_COUNT] = {{0}};
    bool sh_bad = false;
    memset(out, 0, sizeof *out);
    if (n == 0)
        return 0;
    if (n % 2 != 0)
        return fleet_fault(why, size, "an odd field/value list (%zu elements)", n);
    out->exists = true;
    out->lease_expiry = -1; /* absent, where 0 is a valid (long expired) lease: fleet_item_check says so */
    for (size_t i = 0; i < n; i += 2) {
        if (el[i]->type != REDIS_REPLY_STRING)
            return fleet_fault(why, size, "a field name that is not a string");
        for (enum rs_shadow_field f = 0; f < SH_COUNT; f++) {
            if (!is_str(el[i], rs_shadow_fields[f]))
                continue;
            sh_bad |= sh[f].s != NULL || el[i + 1]->type != REDIS_REPLY_STRING; /* twice, or not a string */
            if (el[i + 1]->type == REDIS_REPLY_STRING)
                sh[f] = (struct fleet_raw){.s = el[i + 1]->str, .len = el[i + 1]->len};
        }
        for (enum rs_field f = 0; f < F_COUNT; f++) {
            if (!is_str(el[i], rs_fields[f].name))
                continue;
            if (seen & (1u << f))
                return fleet_fault(why, size, "field '%s' appears twice", rs_fields[f].name);
            seen |= 1u << f;
            int rc = decode_field(f, el[i + 1], out, why, size);
            if (rc < 0)
                return rc;
        }
    }
    decode_shadow(sh, sh_bad, out);
    if (!(seen & (1u << F_STATE)) && out->shadow.since != 0 &&
        (seen & ~(1u << F_VERSION | 1u << F_UPDATED)) == 0) {
        /* a shadow marker alone (a shadow trial of a circuit no host wrote): no item for real purposes */
        out->exists = false;
        out->lease_expiry = 0;
        return 0;
    }
    if (!(seen & (1u << F_STATE)))
        return fleet_fault(why, size, "no 'state' field");
    /* The script elects only when the field is absent ("not owner"): over
     * such a hash no host could ever elect, while it reads as OPEN without
     * owner. A reopen removes the field. */
    if (out->state == CB_OPEN && (seen & (1u << F_OWNER)))
        return fleet_fault(why, size, "an OPEN hash with field 'half_open_owner' (a reopen removes it; no election "
                           "could succeed over it)");
    if (out->state != CB_HALF_OPEN) {
        memset(out->owner, 0, sizeof out->owner);
        out->lease_expiry = 0;
    }
    if (out->state == CB_CLOSED)
        out->opened_at = 0;
    int rc = fleet_item_deadline(&rs_names, out, seen & (1u << F_UNTIL) ? out->open_until : -1,
                                 seen & (1u << F_UNTIL_OF) ? out->open_until_of : -1, why, size);
    if (rc == 0)
        rc = fleet_item_check(&rs_names, out, why, size);
    return rc < 0 ? rc : 1;
}

static void malformed(struct fleet_transport *t, const char *what, const char *key, size_t klen, const char *why)
{
    uint64_t suppressed;
    char k[96];
    t->malformed++;
    if (!cbd_ratelimit_pass(&t->rl_data, &suppressed))
        return;
    cbd_redis_printable(k, sizeof k, key, klen);
    cbd_log(CBD_LOG_WARN, "redis store: ignoring malformed %s '%s' under prefix '%s': %s (%" PRIu64 " more suppressed)",
            what, k, t->uri.prefix, why, suppressed);
}

/* ---- talking to redis ------------------------------------------------------------- */

/* Send one command of C strings; 0 or -ENOTCONN. */
static int command(struct fleet_transport *t, cbd_redis_reply_fn *fn, void *priv, int argc, const char **argv)
{
    size_t len[13];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    return cbd_redis_link_command(t->link, fn, priv, argc, argv, len);
}

static void on_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

/* The request's command: HGETALL, the migrate script or the write script. */
static int send_req(struct rs_req *q)
{
    struct fleet_transport *t = q->t;
    char key[RS_KEY_MAX], old[RS_KEY_MAX], a[4][24];
    const char *argv[13];
    key_of(t, q->name, key);
    if (q->kind == REQ_READ) {
        argv[0] = "HGETALL";
        argv[1] = key;
        return command(t, on_reply, q, 2, argv);
    }
    enum rs_script script = q->kind == REQ_WRITE ? RS_WRITE : RS_MIGRATE;
    bool eval = q->as_eval || t->sha[script][0] == '\0';
    argv[0] = eval ? "EVAL" : "EVALSHA";
    argv[1] = eval ? rs_scripts[script] : t->sha[script];
    argv[3] = key;
    if (q->kind == REQ_MIGRATE) {
        legacy_key_of(t, q->name, old);
        argv[2] = "2";
        argv[4] = old;
        return command(t, on_reply, q, 5, argv);
    }
    snprintf(a[0], sizeof a[0], "%" PRId64, q->w.kind == FLEET_SHADOW ? q->w.shadow_since : q->w.opened_at);
    snprintf(a[1], sizeof a[1], "%" PRIu32, q->w.failure_count);
    snprintf(a[2], sizeof a[2], "%" PRIu32, q->w.lease_s);
    snprintf(a[3], sizeof a[3], "%" PRId64, q->w.kind == FLEET_OPEN ? q->w.open_until : 0);
    const char *args[] = {"1", key, t->channel, q->name, fleet_write_kind_name(q->w.kind), a[0], a[1], a[2],
                          t->owner, a[3], cb__state_name(q->w.shadow_state)};
    memcpy(argv + 2, args, sizeof args);
    return command(t, on_reply, q, 13, argv);
}

/* Answer the fleet layer and forget the request. */
static void answer(struct rs_req *q, const struct fleet_answer *a)
{
    /* After close() the link fails what is in flight: nothing is answered (fleet.h). */
    if (!q->t->closing && q->kind == REQ_WRITE)
        q->wcb(q->arg, a);
    else if (!q->t->closing)
        q->rcb(q->arg, q->name, a);
    free(q);
}

static void answer_error(struct rs_req *q, int err, const char *why)
{
    answer(q, &(struct fleet_answer){.status = FLEET_ERROR, .err = err, .why = why});
}

/* The set of names whose legacy key was checked: open addressing on the
 * name's hash | 1, at most half full. A name goes in only once its move was
 * answered, so a check lost with its connection is made again; no memory to
 * remember it only costs a check per read. */
static uint64_t legacy_hash(const char *name) { return cb__name_hash(name, strlen(name)) | 1; }

/* h's slot in the set, or the empty slot where it would go (cap > 0). */
static size_t legacy_slot(const uint64_t *set, size_t cap, uint64_t h)
{
    size_t j = h % cap;
    while (set[j] != 0 && set[j] != h)
        j = (j + 1) % cap;
    return j;
}

static bool legacy_checked(const struct fleet_transport *t, const char *name)
{
    return t->checked_cap != 0 && t->checked[legacy_slot(t->checked, t->checked_cap, legacy_hash(name))] != 0;
}

static void legacy_mark_checked(struct fleet_transport *t, const char *name)
{
    if (2 * (t->nchecked + 1) > t->checked_cap) {
        size_t cap = t->checked_cap ? 2 * t->checked_cap : 256;
        uint64_t *n = calloc(cap, sizeof *n);
        if (n == NULL)
            return;
        for (size_t i = 0; i < t->checked_cap; i++) {
            if (t->checked[i] != 0)
                n[legacy_slot(n, cap, t->checked[i])] = t->checked[i];
        }
        free(t->checked);
        t->checked = n;
        t->checked_cap = cap;
    }
    uint64_t h = legacy_hash(name);
    size_t j = legacy_slot(t->checked, t->checked_cap, h);
    if (t->checked[j] == 0) {
        t->checked[j] = h;
        t->nchecked++;
    }
}

/* An error reply: the answer it makes (the request is resent instead after
 * NOSCRIPT). Answers that say this server cannot take our commands now drop
 * the link, which reconnects, perhaps to the new primary. */
static void error_reply(struct rs_req *q, const redisReply *r)
{
    static const char *const conn_errors[] = {"READONLY", "LOADING", "MASTERDOWN", "NOAUTH", "NOPERM", "BUSY"};
    if (strncmp(r->str, "NOSCRIPT", 8) == 0 && !q->as_eval && q->kind != REQ_READ) {
        q->as_eval = true;
        if (send_req(q) == 0)
            return;
    }
    if (q->kind == REQ_MIGRATE && strncmp(r->str, "NOPERM", 6) == 0) {
        /* an ACL user without the keyspace commands (EXISTS, TYPE, RENAME)
         * cannot have keys from before hash tags moved: none is looked for */
        legacy_mark_checked(q->t, q->name);
        answer(q, &(struct fleet_answer){.status = FLEET_ABSENT});
        return;
    }
    if (strstr(r->str, "WRONGTYPE") != NULL) {
        answer(q, &(struct fleet_answer){.status = FLEET_INVALID, .why = "the key is not a hash"});
        return;
    }
    for (size_t i = 0; i < sizeof conn_errors / sizeof conn_errors[0]; i++) {
        if (strncmp(r->str, conn_errors[i], strlen(conn_errors[i])) == 0) {
            cbd_redis_link_drop(q->t->link, -EIO, r->str);
            answer_error(q, -ENOTCONN, r->str);
            return;
        }
    }
    answer_error(q, -EIO, r->str);
}

/* A hash's field/value list as the answer. */
static void answer_hash(struct rs_req *q, redisReply *const *el, size_t n, bool applied, int64_t at_s)
{
    char why[300];
    struct fleet_answer a = {.status = FLEET_OK, .applied = applied, .at_s = at_s};
    int rc = cbd_redis_item_decode(el, n, &a.item, why, sizeof why);
    if (rc < 0)
        a = (struct fleet_answer){.status = FLEET_INVALID, .why = why};
    else if (rc == 0 && q->kind != REQ_WRITE)
        a.status = FLEET_ABSENT;
    answer(q, &a);
}

static void migrated(struct rs_req *q, const redisReply *r)
{
    struct fleet_transport *t = q->t;
    legacy_mark_checked(t, q->name); /* answered: moved, nothing to move, or not a hash */
    if (r->element[0]->integer < 0) {
        answer(q, &(struct fleet_answer){.status = FLEET_INVALID,
                                         .why = "its key from before hash tags (<prefix>c:<name>) is not a hash"});
        return;
    }
    if (r->element[0]->integer == 1) {
        t->migrated++;
        cbd_log(CBD_LOG_INFO, "redis store: circuit '%s' moved from %sc:%s to %sc:{%s} (hash-tagged layout)", q->name,
                t->uri.prefix, q->name, t->uri.prefix, q->name);
    }
    q->kind = REQ_READ;
    answer_hash(q, r->element + 1, r->elements - 1, false, 0);
}

/* Does r have the shape of the request's answer? HGETALL: a list; the
 * migrate script: {-1..1, ...}; the write script: {0/1, second, ...}. */
static bool answer_shape(const struct rs_req *q, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return false;
    if (q->kind == REQ_READ)
        return true;
    if (r->elements < 1 || r->element[0]->type != REDIS_REPLY_INTEGER)
        return false;
    long long v = r->element[0]->integer;
    if (q->kind == REQ_MIGRATE)
        return v >= -1 && v <= 1;
    return v >= 0 && v <= 1 && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_INTEGER;
}

static void on_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct rs_req *q = arg;
    struct fleet_transport *t = q->t;
    (void)conn;
    if (r == NULL) {
        answer_error(q, -ENOTCONN, "the connection went before the answer came");
    } else if (r->type == REDIS_REPLY_ERROR) {
        error_reply(q, r);
    } else if (!answer_shape(q, r)) {
        malformed(t, "answer about circuit", q->name, strlen(q->name), "not the shape the command answers");
        answer_error(q, -EIO, "an answer of another shape than the command's");
    } else if (q->kind == REQ_MIGRATE) {
        migrated(q, r);
    } else if (q->kind == REQ_WRITE) {
        answer_hash(q, r->element + 2, r->elements - 2, r->element[0]->integer == 1, r->element[1]->integer);
    } else if (r->elements == 0 && !legacy_checked(t, q->name)) { /* perhaps under its key from before hash tags */
        q->kind = REQ_MIGRATE;
        if (send_req(q) < 0) {
            q->kind = REQ_READ;
            answer_hash(q, r->element, 0, false, 0);
        }
    } else {
        answer_hash(q, r->element, r->elements, false, 0);
    }
}

/* ---- the transport's ops ------------------------------------------------------------ */

/* One HGETALL per name, pipelined. */
static int rs_read(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg)
{
    for (size_t i = 0; i < n; i++) {
        struct rs_req *q = calloc(1, sizeof *q);
        int rc = q != NULL ? 0 : -ENOMEM;
        if (q != NULL) {
            *q = (struct rs_req){.t = t, .kind = REQ_READ, .rcb = cb, .arg = arg};
            snprintf(q->name, sizeof q->name, "%s", names[i]);
            rc = send_req(q);
        }
        if (rc < 0) {
            free(q);
            return i > 0 ? (int)i : rc; /* the ones sent are answered */
        }
    }
    return (int)n;
}

static int rs_write(struct fleet_transport *t, const struct fleet_write *w, fleet_write_cb *cb, void *arg)
{
    struct rs_req *q = calloc(1, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    *q = (struct rs_req){.t = t, .kind = REQ_WRITE, .w = *w, .wcb = cb, .arg = arg};
    snprintf(q->name, sizeof q->name, "%s", w->name);
    q->w.name = q->name;
    int rc = send_req(q);
    if (rc < 0)
        free(q);
    return rc;
}

/* ---- list: SCAN <prefix>c:* ----------------------------------------------------------- */

static void on_scan_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg);

static int scan(struct fleet_transport *t, const char *cursor)
{
    char pattern[2 * RS_PREFIX_MAX + 4];
    size_t n = 0;
    for (const char *p = t->uri.prefix; *p != '\0'; p++) {
        if (strchr("*?[]\\", *p) != NULL)
            pattern[n++] = '\\'; /* the prefix is literal, not a glob */
        pattern[n++] = *p;
    }
    memcpy(pattern + n, "c:*", 4);
    const char *argv[6] = {"SCAN", cursor, "MATCH", pattern, "COUNT", RS_SCAN_COUNT};
    return command(t, on_scan_reply, t, 6, argv);
}

/* A key the SCAN found: <prefix>c:{<name>}, or <prefix>c:<name> from before
 * hash tags (read moves it); the circuit's name to the fleet layer. */
static void scanned_key(struct fleet_transport *t, const redisReply *k)
{
    char name[CB_NAME_MAX + 1];
    size_t plen = strlen(t->uri.prefix) + 2;
    if (k->type != REDIS_REPLY_STRING)
        return;
    bool ours = k->len > plen && memcmp(k->str, t->uri.prefix, plen - 2) == 0 && memcmp(k->str + plen - 2, "c:", 2) == 0;
    const char *rest = k->str + plen;
    size_t n = ours ? k->len - plen : 0;
    bool tagged = n > 2 && rest[0] == '{' && rest[n - 1] == '}';
    if (tagged) {
        rest++;
        n -= 2;
    }
    if (n == 0 || n > CB_NAME_MAX || memchr(rest, '\0', n) != NULL) {
        malformed(t, "key", k->str, k->len, "not <prefix>c:{<circuit name>}");
        return;
    }
    memcpy(name, rest, n);
    name[n] = '\0';
    if (cb__name_check(name) < 0) {
        malformed(t, "key", k->str, k->len, "not <prefix>c:{<circuit name>}");
        return;
    }
    t->scan.each(t->scan.arg, name);
}

static void scan_end(struct fleet_transport *t, int rc)
{
    void (*done)(void *, int) = t->scan.done;
    t->scan.done = NULL;
    if (done != NULL)
        done(t->scan.arg, rc);
}

static void on_scan_reply(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct fleet_transport *t = arg;
    (void)conn;
    if (r == NULL || t->scan.done == NULL) {
        scan_end(t, -ENOTCONN);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[0]->len >= 32 || r->element[1]->type != REDIS_REPLY_ARRAY) {
        cbd_log(CBD_LOG_WARN, "redis store: restore: SCAN answered %s",
                r->type == REDIS_REPLY_ERROR ? r->str : "something other than [cursor, keys]");
        scan_end(t, -EIO);
        return;
    }
    char cursor[32];
    memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
    for (size_t i = 0; i < r->element[1]->elements; i++)
        scanned_key(t, r->element[1]->element[i]);
    if (strcmp(cursor, "0") == 0 || scan(t, cursor) < 0)
        scan_end(t, strcmp(cursor, "0") == 0 ? 0 : -ENOTCONN);
}

static int rs_list(struct fleet_transport *t, void (*each)(void *arg, const char *name),
                   void (*done)(void *arg, int rc), void *arg)
{
    if (t->scan.done != NULL)
        return -EBUSY;
    int rc = scan(t, "0");
    if (rc == 0) {
        t->scan.each = each;
        t->scan.done = done;
        t->scan.arg = arg;
    }
    return rc;
}

/* ---- the connection ---------------------------------------------------------------- */

static void on_script_loaded(struct cbd_redis_conn *conn, redisReply *r, void *sha)
{
    struct fleet_transport *t = cbd_redis_conn_data(conn);
    char why[300];
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, sizeof why, "%s refused SCRIPT LOAD: %s", cbd_redis_conn_peer(conn), r->str);
        cbd_redis_link_drop(t->link, -EACCES, why);
        return;
    }
    if (r->type != REDIS_REPLY_STRING || r->len != 40) {
        snprintf(why, sizeof why, "protocol error from %s: SCRIPT LOAD answered something other than a SHA1",
                 cbd_redis_conn_peer(conn));
        cbd_redis_link_drop(t->link, -EPROTO, why);
        return;
    }
    memcpy(sha, r->str, 40);
    ((char *)sha)[40] = '\0';
    if (--t->scripts_left == 0)
        cbd_redis_link_prepared(t->link);
}

/* The command connection is ready for the scripts. */
static void load_scripts(void *arg, struct cbd_redis_link *link)
{
    struct fleet_transport *t = arg;
    (void)link;
    t->scripts_left = 0;
    for (int i = 0; i < RS_NSCRIPTS; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", rs_scripts[i]};
        if (command(t, on_script_loaded, t->sha[i], 3, argv) < 0)
            return; /* the connection is going down; offline follows */
        t->scripts_left++;
    }
}

static void on_online(void *arg, const char *why)
{
    struct fleet_transport *t = arg;
    t->cbs.up(t->cbs.arg, why);
}

static void on_offline(void *arg, int err, const char *why, bool attempt_failed)
{
    struct fleet_transport *t = arg;
    (void)attempt_failed; /* the fleet layer knows whether it was up */
    t->cbs.down(t->cbs.arg, err, why);
}

/* A message on the channel: the name of a circuit some host wrote. */
static void on_message(void *arg, const char *payload, size_t len)
{
    struct fleet_transport *t = arg;
    char name[CB_NAME_MAX + 1];
    if (len == 0 || len > CB_NAME_MAX || memchr(payload, '\0', len) != NULL) {
        malformed(t, "message", payload, len, "not a circuit name");
        return;
    }
    memcpy(name, payload, len);
    name[len] = '\0';
    t->cbs.changed(t->cbs.arg, name);
}

static void rs_connect(struct fleet_transport *t)
{
    if (!t->started) {
        t->started = true;
        cbd_redis_link_start(t->link);
    } else {
        cbd_redis_link_retry_now(t->link); /* no need to wait out the link's own backoff */
    }
}

static void rs_settings(const struct fleet_transport *t, struct fleet_settings *out)
{
    *out = (struct fleet_settings){.log_name = "redis store", .sync_ms = t->uri.sync_ms,
                                   .read_budget = t->uri.read_budget, .read_batch = FLEET_READ_BATCH_MAX, .reconnects = true,
                                   .close_wait_ms = t->uri.conn.command_timeout_ms};
    snprintf(out->where, sizeof out->where, "redis under prefix '%s'", t->uri.prefix);
}

static const char *rs_owner(const struct fleet_transport *t)
{
    return t->owner;
}

static void rs_stats(const struct fleet_transport *t, void (*emit)(void *, const char *, uint64_t), void *arg)
{
    struct cbd_redis_link_stats ls;
    cbd_redis_link_stats(t->link, &ls);
    emit(arg, "commands_sent", ls.commands_sent);
    emit(arg, "reconnects", ls.reconnects);
    emit(arg, "protocol_errors", ls.protocol_errors);
    emit(arg, "failovers", ls.failovers);
    emit(arg, "malformed", t->malformed);
    emit(arg, "migrated", t->migrated);
}

static void on_link_closed(void *arg)
{
    struct fleet_transport *t = arg;
    void (*done)(void *) = t->close_done;
    void *done_arg = t->close_arg;
    free(t->checked);
    free(t);
    done(done_arg);
}

static void rs_close(struct fleet_transport *t, void (*done)(void *arg), void *arg)
{
    t->close_done = done;
    t->close_arg = arg;
    t->closing = true;
    t->scan.done = NULL; /* a listing in flight ends unanswered too */
    cbd_redis_link_close(t->link, on_link_closed, t);
}

static int rs_check_uri(const char *uri, char *why, size_t size)
{
    struct rs_uri u;
    return parse_uri(uri, &u, why, size);
}

static int rs_create(struct fleet_transport **out, uv_loop_t *loop, const char *uri, const char *owner_hint,
                     const struct fleet_transport_cbs *cbs, char *why, size_t size)
{
    struct fleet_transport *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(why, size, "out of memory creating the redis store");
        return -ENOMEM;
    }
    if (parse_uri(uri, &t->uri, why, size) < 0) {
        free(t);
        return -EINVAL;
    }
    t->cbs = *cbs;
    if (t->uri.instance_given)
        fleet_owner_id(t->owner, sizeof t->owner, t->uri.instance);
    else
        snprintf(t->owner, sizeof t->owner, "%s", owner_hint);
    snprintf(t->channel, sizeof t->channel, "%stransitions", t->uri.prefix);
    struct cbd_redis_link_cbs lcbs = {.arg = t, .prepare = load_scripts, .online = on_online,
                                      .offline = on_offline, .message = on_message};
    if (cbd_redis_link_new(&t->link, loop, &t->uri.conn, t->channel, &lcbs) < 0) {
        free(t);
        snprintf(why, size, "out of memory creating the redis store");
        return -ENOMEM;
    }
    *out = t;
    return 0;
}

const struct fleet_transport_ops cbd_redis_transport_ops = {
    .scheme = "redis", .check_uri = rs_check_uri, .create = rs_create, .owner = rs_owner,
    .settings = rs_settings, .connect = rs_connect, .read = rs_read, .write = rs_write, .list = rs_list,
    .stats = rs_stats, .close = rs_close,
};

FLEET_STORE_DEFINE(cbd_store_redis_ops, "redis", cbd_redis_transport_ops, rs_check_uri);
