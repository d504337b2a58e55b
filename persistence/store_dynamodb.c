/*
 * store_dynamodb.c - the `dynamodb` store: circuits shared through
 * Powertools' circuit breaker table (docs/store-dynamodb.md).
 *
 * Design. Every circuit is one item laid out exactly as Powertools lays it
 * out (POWERTOOLS.md), so Lambda functions using Powertools and hosts running
 * cbd share one circuit per name. All I/O is DynamoDB's JSON API over
 * aws_http (libcurl multi on the loop, SigV4); credentials come from
 * aws_credentials (the SDK chain). Nothing blocks the loop.
 *
 * Writes compare before they write. Powertools' trip is an unconditional
 * PutItem; ours is conditional so a stale host never clobbers a live probe
 * lease or a newer opening: it writes over no item, a CLOSED one, an older
 * OPEN one, or a HALF_OPEN one whose lease expired or is our own. The
 * election is Powertools' conditional PutItem verbatim; close and reopen are
 * its UpdateItems, conditional on the owner being us. The holder renews its
 * lease (the daemon asks try_probe again while it probes) with an
 * UpdateItem of the lease and the TTL alone, conditional on the item still
 * being our lease on the same opening: the election's condition would fail
 * on a live lease, and reading it back as ours would answer with the old
 * expiry, so another host would take over while this one still probes. An
 * election that reads back as ours (its retried attempt won, or the table
 * was ahead of what this host had read) is followed by a renewal, so a
 * grant always carries a lease of the length asked for. A close by a host
 * without the lease (an operator's force, or a probe run host-local during
 * an outage) only closes the opening it saw, and never under a live lease.
 * A lost condition is a normal answer: the item is read back (consistent
 * read) and reported through hooks->remote, and the daemon adopts the
 * fleet's state. An election that fails for any other reason is granted
 * host-local (fail open), where Powertools would raise. Every write sets the
 * TTL attribute to now + recovery_timeout + 3600 s, as Powertools does.
 *
 * Work per circuit is serialised: at most one request per circuit in flight,
 * and behind it at most one queued write (the latest transition replaces an
 * older queued one: memory stays bounded however long an outage lasts), one
 * queued election and one queued read. Entry points only record the work
 * and arm a 0 ms "kick" timer, so every hook runs from a loop callback and
 * never inside the daemon's call.
 *
 * Reads. Remote changes are found by BatchGetItem of every tracked circuit
 * (<= 100 keys a request) every sync_ms, UnprocessedKeys retried with
 * backoff. A read of a circuit with a request in flight or a write queued is
 * not reported (that request's answer settles the circuit). A circuit is
 * reported when the fleet's view differs from the last one seen or written
 * here; an absent item reads as CLOSED (as Powertools reads it), except on a
 * circuit never seen, where absence says nothing. restore() reads the
 * circuits tracked so far: at a first start that is none, and each circuit
 * is read (GetItem) when it is first tracked, so a circuit OPEN in the fleet
 * opens here when it registers. An eventually consistent read that returns
 * our own lease with an expiry older than our last renewal is stale, not
 * news: reporting it would make the holder give up its probing.
 *
 * Items. Every item goes through the codec (dynamodb_item.c), which holds
 * Powertools' layout and its validation; this file only checks that an
 * item is about the key it asked for and names a circuit cbd can hold. An
 * invalid item is never adopted nor taken for an absent one (that would
 * read as CLOSED): the circuit keeps its view, the read counts in
 * invalid_items, and the log says why once per circuit until its item is
 * valid again - not at every sync.
 *
 * hooks->synced (if set) follows every answer that leaves the table and the
 * daemon agreeing on a circuit - a write landed, an election or renewal was
 * answered, a read found agreement or reported the difference - unless a
 * newer transition of it still waits to be written.
 *
 * Outage. A request that fails after its retries (network, 5xx, throttling,
 * credentials, missing table) marks the store offline: hooks->health(false),
 * writes stay queued, elections are granted host-local (the daemon keeps
 * working alone; the fleet's probe bound cannot hold while it is unreachable)
 * and the sync timer turns into a probe with full-jitter backoff. The first
 * success marks it online again, sends the queued writes and reconciles.
 */
#define _GNU_SOURCE /* gethostname, arc4random */
#include "store_dynamodb.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aws_credentials.h"
#include "aws_http.h"
#include "dynamodb_item.h"
#include "log.h"
#include "segment.h"

#define BATCH_MAX 100u             /* keys per BatchGetItem: DynamoDB's limit */
#define UNPROCESSED_ATTEMPTS 5u
#define TTL_MARGIN_S 3600          /* Powertools: expiration = now + recovery_timeout + 3600 */
#define TARGET "DynamoDB_20120810."
#define CREATE_POLLS 300u          /* DescribeTable polls, 1 s apart */

/* ---- options ------------------------------------------------------------------ */

struct ddb_opts {
    char table[256], region[64], endpoint[512];
    char pk[64], sk[64], static_pk[256];
    char a_state[64], a_fc[64], a_oa[64], a_owner[64], a_lease[64], a_exp[64];
    char owner[96];
    uint32_t sync_ms, timeout_ms, connect_timeout_ms, attempts, backoff_max_ms;
    bool consistent, tls_verify, allow_http;
};

enum opt_type { OPT_STR, OPT_U32, OPT_BOOL };
static const struct opt {
    const char *name;
    enum opt_type type;
    size_t off, size;
    uint32_t min, max;
} opts_table[] = {
#define S(n, f) {n, OPT_STR, offsetof(struct ddb_opts, f), sizeof(((struct ddb_opts *)0)->f), 0, 0}
#define U(n, f, lo, hi) {n, OPT_U32, offsetof(struct ddb_opts, f), 0, lo, hi}
#define B(n, f) {n, OPT_BOOL, offsetof(struct ddb_opts, f), 0, 0, 0}
    S("region", region), S("endpoint", endpoint), S("pk", pk), S("sk", sk), S("static_pk", static_pk),
    S("attr_state", a_state), S("attr_failure_count", a_fc), S("attr_opened_at", a_oa),
    S("attr_owner", a_owner), S("attr_lease", a_lease), S("attr_expiration", a_exp), S("owner", owner),
    U("sync_ms", sync_ms, 0, 86400000), U("timeout_ms", timeout_ms, 100, 60000),
    U("connect_timeout_ms", connect_timeout_ms, 100, 60000), U("attempts", attempts, 1, 10),
    U("backoff_max_ms", backoff_max_ms, 10, 300000), B("consistent", consistent),
    B("tls_verify", tls_verify), B("allow_http", allow_http),
#undef S
#undef U
#undef B
};

static char uri_err[512]; /* create()'s *err: names the bad part; the loop is single-threaded */

static const char *fail(const char *fmt, const char *what)
{
    snprintf(uri_err, sizeof uri_err, fmt, what);
    return uri_err;
}

static void opts_defaults(struct ddb_opts *o)
{
    char host[64] = "localhost";
    memset(o, 0, sizeof *o);
    strcpy(o->pk, "id");
    strcpy(o->static_pk, "circuit_breaker#cbd");
    strcpy(o->a_state, "state");
    strcpy(o->a_fc, "failure_count");
    strcpy(o->a_oa, "opened_at");
    strcpy(o->a_owner, "half_open_owner");
    strcpy(o->a_lease, "probe_lease_expiry");
    strcpy(o->a_exp, "expiration");
    gethostname(host, sizeof host - 1);
    snprintf(o->owner, sizeof o->owner, "cbd@%.60s#%d#%08x", host, (int)getpid(), arc4random());
    o->sync_ms = 1000;
    o->timeout_ms = 2000;
    o->connect_timeout_ms = 1000;
    o->attempts = 3;
    o->backoff_max_ms = 5000;
    o->tls_verify = true;
}

/* Percent-decode [s, e) into buf; false if malformed or too long. */
static bool pct_decode(const char *s, const char *e, char *buf, size_t size)
{
    size_t n = 0;
    for (; s < e; s++) {
        unsigned v;
        char c = *s;
        if (c == '%') {
            if (e - s < 3 || sscanf(s + 1, "%2x", &v) != 1 || v == 0)
                return false;
            c = (char)v;
            s += 2;
        }
        if (n + 1 >= size)
            return false;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return true;
}

static const char *opt_set(struct ddb_opts *o, const char *k, const char *ke, const char *v, const char *ve)
{
    char key[40], val[512];
    if (!pct_decode(k, ke, key, sizeof key) || !pct_decode(v, ve, val, sizeof val))
        return fail("dynamodb URI: bad percent-encoding or over-long value near '%.40s'", k);
    for (size_t i = 0; i < sizeof opts_table / sizeof opts_table[0]; i++) {
        const struct opt *t = &opts_table[i];
        if (strcmp(key, t->name) != 0)
            continue;
        char *field = (char *)o + t->off, *end;
        if (t->type == OPT_STR) {
            if (strlen(val) >= t->size)
                return fail("dynamodb URI: value of '%s' is too long", t->name);
            strcpy(field, val);
        } else if (t->type == OPT_BOOL) {
            int b = cb__parse_bool(val);
            if (b < 0)
                return fail("dynamodb URI: '%s' must be true or false", t->name);
            *(bool *)field = b;
        } else {
            errno = 0;
            unsigned long n = strtoul(val, &end, 10);
            if (errno || end == val || *end || val[0] == '-' || n < t->min || n > t->max)
                return fail("dynamodb URI: '%s' is not a number in its range (see docs/store-dynamodb.md)",
                            t->name);
            *(uint32_t *)field = (uint32_t)n;
        }
        return NULL;
    }
    return fail("dynamodb URI: unknown option '%s' (see docs/store-dynamodb.md)", key);
}

static bool loopback_url(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL;
    bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
              (strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 || strcmp(host, "[::1]") == 0);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

static bool table_name_ok(const char *t)
{
    size_t n = strlen(t);
    return n >= 3 && n <= 255 &&
           strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n;
}

/* Region and endpoint: the URI, else the SDK's environment and files. */
static const char *opts_resolve(struct ddb_opts *o)
{
    if (!o->region[0] && cbd_aws_default_region(o->region, sizeof o->region) < 0) {
        if (!o->endpoint[0] && !getenv("AWS_ENDPOINT_URL_DYNAMODB") && !getenv("AWS_ENDPOINT_URL"))
            return fail("dynamodb URI: no region: add ?region=... or set AWS_REGION%s", "");
        strcpy(o->region, "us-east-1"); /* a local endpoint ignores it, SigV4 needs one */
    }
    if (!o->endpoint[0] && cbd_aws_endpoint("DYNAMODB", "dynamodb", o->region, o->endpoint, sizeof o->endpoint) < 0)
        return fail("dynamodb endpoint from AWS_ENDPOINT_URL%s is too long", "");
    if (strncmp(o->endpoint, "https://", 8) != 0 && strncmp(o->endpoint, "http://", 7) != 0)
        return fail("dynamodb endpoint '%.300s' must start with https:// (or http:// for a local endpoint)",
                    o->endpoint);
    if (strncmp(o->endpoint, "http://", 7) == 0 && !o->allow_http && !loopback_url(o->endpoint))
        return fail("dynamodb endpoint '%.300s': plain http is only for loopback; add allow_http=true to mean it",
                    o->endpoint);
    return NULL;
}

static const char *opts_parse(struct ddb_opts *o, const char *uri)
{
    static const char scheme[] = "dynamodb://";
    opts_defaults(o);
    if (strncmp(uri, scheme, sizeof scheme - 1) != 0)
        return fail("not a dynamodb URI: '%.200s' (expected dynamodb://TABLE?region=...)", uri);
    const char *t = uri + sizeof scheme - 1, *q = strchr(t, '?');
    const char *te = q ? q : t + strlen(t);
    if (!pct_decode(t, te, o->table, sizeof o->table) || !table_name_ok(o->table))
        return fail("dynamodb URI: table name '%.260s' must be 3-255 of [A-Za-z0-9_.-]", o->table);
    for (const char *p = q ? q + 1 : te; *p;) {
        const char *amp = strchr(p, '&'), *end = amp ? amp : p + strlen(p), *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq)
            return fail("dynamodb URI: option '%.40s' has no '=value'", p);
        const char *msg = opt_set(o, p, eq, eq + 1, end);
        if (msg)
            return msg;
        p = amp ? amp + 1 : end;
    }
    const char *names[] = {o->pk, o->a_state, o->a_fc, o->a_oa, o->a_owner, o->a_lease, o->a_exp, o->owner};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!names[i][0])
            return fail("dynamodb URI: attribute names, pk and owner must not be empty%s", "");
    if (strcmp(o->pk, o->sk) == 0)
        return fail("dynamodb URI: pk and sk must differ (both '%s')", o->pk);
    if (o->sk[0] && !o->static_pk[0])
        return fail("dynamodb URI: static_pk must not be empty with sk=%s", o->sk);
    return opts_resolve(o);
}

/* ---- the store ----------------------------------------------------------------- */

enum health { H_UNKNOWN, H_ONLINE, H_OFFLINE };
enum busy { IDLE, BUSY_WRITE, BUSY_ELECT, BUSY_READ };

struct circ {
    struct circ *hnext;             /* hash chain */
    struct circ *next;              /* every circuit, newest first */
    struct circ *dnext;             /* kick list */
    bool dirty;
    bool mark;                      /* scratch: answered in the batch being applied */
    bool invalid_logged;            /* its item was invalid, and the log said so */
    char name[CB_NAME_MAX + 1];
    uint32_t recovery_s;            /* for the TTL */
    struct cbd_store_state seen;    /* the fleet's view, as last read or written here */
    bool seen_valid;
    bool lease;                     /* we hold the fleet's probe lease for lease_opened_at */
    int64_t lease_opened_at;
    enum busy busy;
    bool want_write, want_elect, want_read, read_always;
    struct cbd_store_state want;    /* the latest transition not yet written */
    int64_t want_prev;
    int64_t elect_opened_at;
    uint32_t elect_lease_s;
};

struct cbd_store {
    struct cbd_store_hooks hooks;
    struct ddb_opts o;
    struct cbd_ddb_layout layout;   /* the item's attribute names, pointing into o */
    char sigv4[128];
    struct cbd_aws_http *http;
    struct cbd_aws_credentials *creds;
    uv_timer_t kick, sync_timer, batch_timer, close_timer;
    struct circ **buckets;
    uint32_t nbuckets, ncirc;
    struct circ *all, *dirty;
    enum health health;
    uint32_t down_probes;           /* failed probes since going offline: the backoff exponent */
    bool sync_wanted, sync_again;
    unsigned sync_inflight;         /* batches of the current round still out */
    bool round_failed;
    int round_rc;
    struct batch *waiting;          /* batches waiting to retry UnprocessedKeys */
    void (*restore_done)(void *arg, int rc);
    void *restore_arg;
    unsigned inflight;              /* our requests in flight */
    bool closing, closed_http;
    unsigned handles;
    void (*close_done)(void *arg);
    void *close_arg;
    struct cbd_ratelimit malformed_rl;
    struct cbd_dynamodb_stats st;
};

enum write_kind { W_NONE, W_TRIP, W_REOPEN, W_CLOSE_OWNER, W_CLOSE };

/* A request's context. */
struct op {
    struct cbd_store *s;
    struct circ *c;
    enum write_kind kind;           /* writes */
    struct cbd_store_state st;      /* write: what is written; elect: the HALF_OPEN item */
    int64_t prev;                   /* write: the opening superseded; read: the election's opening */
    uint32_t lease_s;               /* elect, and the read after a lost one */
    bool renewal;                   /* elect: renews our own lease (and the read after a lost renewal) */
    bool elect_follow;              /* a read after a lost election or renewal */
};

struct batch {
    struct cbd_store *s;
    json_t *keys;                   /* the Keys array sent */
    uint32_t attempt;
    uint64_t due_ms;
    struct batch *next;
};

static void kick_arm(struct cbd_store *s);
static void sync_start(struct cbd_store *s);
static void sync_arm(struct cbd_store *s);
static void close_finish(struct cbd_store *s);
static void batch_end(struct batch *b, bool failed, int rc);

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static struct circ *circ_find(struct cbd_store *s, const char *name)
{
    uint64_t h = cb__name_hash(name, strlen(name));
    for (struct circ *c = s->buckets[h & (s->nbuckets - 1)]; c; c = c->hnext)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void circ_rehash(struct cbd_store *s)
{
    uint32_t n = s->nbuckets * 2;
    struct circ **b = calloc(n, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (struct circ *c = s->all; c; c = c->next) {
        uint64_t h = cb__name_hash(c->name, strlen(c->name));
        c->hnext = b[h & (n - 1)];
        b[h & (n - 1)] = c;
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

/* Find or start tracking name; NULL for a bad name or no memory. */
static struct circ *circ_get(struct cbd_store *s, const char *name, bool *created)
{
    struct circ *c = circ_find(s, name);
    *created = false;
    if (c || cb__name_check(name) < 0 || !(c = calloc(1, sizeof *c)))
        return c;
    strcpy(c->name, name);
    c->recovery_s = 30;
    uint64_t h = cb__name_hash(name, strlen(name));
    c->hnext = s->buckets[h & (s->nbuckets - 1)];
    s->buckets[h & (s->nbuckets - 1)] = c;
    c->next = s->all;
    s->all = c;
    if (++s->ncirc > s->nbuckets)
        circ_rehash(s);
    *created = true;
    return c;
}

static void mark_dirty(struct cbd_store *s, struct circ *c)
{
    if (!c->dirty) {
        c->dirty = true;
        c->dnext = s->dirty;
        s->dirty = c;
    }
    kick_arm(s);
}

static bool has_work(const struct circ *c)
{
    return c->want_write || c->want_elect || c->want_read;
}

/* ---- health ------------------------------------------------------------------- */

static void set_online(struct cbd_store *s)
{
    if (s->health == H_ONLINE)
        return;
    bool was_down = s->health == H_OFFLINE;
    s->health = H_ONLINE;
    s->down_probes = 0;
    if (s->closing)
        return;
    cbd_log(CBD_LOG_INFO, "dynamodb: table %s at %s reachable%s", s->o.table, s->o.endpoint,
            was_down ? ": writing queued transitions, then reconciling" : "");
    s->hooks.health(s->hooks.arg, true, "dynamodb reachable");
    for (struct circ *c = s->all; c; c = c->next)
        if (has_work(c))
            mark_dirty(s, c);
    if (was_down) {
        s->sync_wanted = true;
        kick_arm(s);
    }
}

static void set_offline(struct cbd_store *s, const char *why)
{
    if (s->health == H_OFFLINE || s->closing)
        return;
    s->health = H_OFFLINE;
    cbd_log(CBD_LOG_WARN, "dynamodb: table %s unreachable, running host-local and retrying: %s", s->o.table, why);
    s->hooks.health(s->hooks.arg, false, why);
    sync_arm(s);
}

/* How an answer counts. */
enum outcome { ANS_OK, ANS_CONDITION, ANS_DOWN, ANS_REJECTED, ANS_CANCELLED };

static enum outcome classify(struct cbd_store *s, const struct cbd_aws_response *r, const char *what)
{
    s->inflight--;
    if (r->cancelled || s->closed_http)
        return ANS_CANCELLED;
    if (r->status >= 200 && r->status <= 299) {
        set_online(s);
        return ANS_OK;
    }
    if (strcmp(r->error_code, "ConditionalCheckFailedException") == 0) {
        s->st.conditions_lost++;
        set_online(s);
        return ANS_CONDITION;
    }
    if (r->status == 400 && (strcmp(r->error_code, "ValidationException") == 0 ||
                             strcmp(r->error_code, "SerializationException") == 0)) {
        cbd_log(CBD_LOG_ERROR, "dynamodb: %s refused (dropped; check the table's key schema and the URI's "
                "attribute names): %s", what, r->why);
        set_online(s);
        return ANS_REJECTED;
    }
    set_offline(s, r->why);
    return ANS_DOWN;
}

/* ---- requests ---------------------------------------------------------------- */

static void on_creds_ready(void *arg)
{
    struct cbd_store *s = arg;
    for (struct circ *c = s->all; c; c = c->next)
        if (has_work(c))
            mark_dirty(s, c);
    kick_arm(s);
}

/* Send one DynamoDB call; body is consumed. 0, -EAGAIN (credentials are
 * being fetched: the work is retried when they are in), or -errno. */
static int ddb_call(struct cbd_store *s, const char *op, json_t *body, cbd_aws_http_cb cb, void *arg)
{
    struct cbd_aws_creds cr;
    const char *why;
    int rc = body ? cbd_aws_credentials_get(s->creds, &cr, &why) : -ENOMEM;
    if (rc == -EAGAIN || rc == -ENOMEM) {
        json_decref(body);
        return rc;
    }
    if (rc < 0) {
        json_decref(body);
        set_offline(s, why);
        return rc;
    }
    char *text = json_dumps(body, JSON_COMPACT), target[96];
    json_decref(body);
    snprintf(target, sizeof target, "X-Amz-Target: " TARGET "%s", op);
    const char *hdrs[] = {"Content-Type: application/x-amz-json-1.0", target, NULL};
    struct cbd_aws_request q = {
        .method = "POST", .url = s->o.endpoint, .body = text, .body_len = text ? strlen(text) : 0,
        .headers = hdrs, .sigv4 = s->sigv4, .creds = &cr, .timeout_ms = s->o.timeout_ms,
        .connect_timeout_ms = s->o.connect_timeout_ms, .max_attempts = s->o.attempts,
        .insecure_tls = !s->o.tls_verify, .cb = cb, .arg = arg,
    };
    rc = text ? cbd_aws_http_send(s->http, &q) : -ENOMEM;
    explicit_bzero(&cr, sizeof cr);
    free(text);
    if (rc == 0)
        s->inflight++;
    return rc;
}

/* Short names for the attribute values of the request bodies below. */
#define S cbd_ddb_s
#define N cbd_ddb_n

static json_t *key_json(const struct cbd_store *s, const char *name)
{
    return cbd_ddb_key(&s->layout, name, strlen(name));
}

/* ExpressionAttributeNames for the placeholders in `used` (DynamoDB refuses
 * unused ones): P #pk, S #st, F #fc, O #oa, W #own, L #lease, E #exp. */
static json_t *expr_names(const struct cbd_store *s, const char *used)
{
    const struct { char code; const char *ph, *attr; } map[] = {
        {'P', "#pk", s->o.pk}, {'S', "#st", s->o.a_state}, {'F', "#fc", s->o.a_fc}, {'O', "#oa", s->o.a_oa},
        {'W', "#own", s->o.a_owner}, {'L', "#lease", s->o.a_lease}, {'E', "#exp", s->o.a_exp},
    };
    json_t *n = json_object();
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strchr(used, map[i].code))
            json_object_set_new(n, map[i].ph, json_string(map[i].attr));
    return n;
}

/* The whole item for a PutItem; NULL (logged) if it is not one cbd would
 * read back, which a transition of the daemon never is. */
static json_t *item_json(const struct cbd_store *s, const struct cbd_store_state *st, int64_t expiration)
{
    struct cbd_ddb_item it = {.state = st->state, .failure_count = st->failure_count, .opened_at = st->opened_at,
                              .lease_expiry = st->lease_expiry, .expiration = expiration};
    char why[256];
    it.name_len = strlen(st->name);
    memcpy(it.name, st->name, it.name_len + 1);
    snprintf(it.owner, sizeof it.owner, "%s", st->probe_owner);
    json_t *j = cbd_ddb_item_encode(&s->layout, &it, why, sizeof why);
    if (j == NULL)
        cbd_log(CBD_LOG_ERROR, "dynamodb: not writing circuit %s to table %s: %s", st->name, s->o.table, why);
    return j;
}

/* ---- items -------------------------------------------------------------------- */

static const char *attr_s(json_t *item, const char *name)
{
    return json_string_value(json_object_get(json_object_get(item, name), "S"));
}

/* An item read and not adopted: counted at every read; logged once per
 * circuit (c, when the item is known to be about one) until its item is
 * valid again, else rate limited. */
static void item_invalid(struct cbd_store *s, struct circ *c, const char *why)
{
    uint64_t suppressed;
    s->st.invalid_items++;
    if (c != NULL && !c->invalid_logged) {
        c->invalid_logged = true;
        cbd_log(CBD_LOG_WARN, "dynamodb: circuit %s: ignoring its item in table %s: %s; the circuit keeps its last "
                "state (counted in invalid_items, not logged again until its item is valid)", c->name, s->o.table,
                why);
    } else if (c == NULL && cbd_ratelimit_pass(&s->malformed_rl, &suppressed)) {
        cbd_log(CBD_LOG_WARN, "dynamodb: ignoring an item in table %s: %s (counted in invalid_items; %llu more "
                "suppressed)", s->o.table, why, (unsigned long long)suppressed);
    }
}

/*
 * Validate an item before it is adopted: the answer to circuit asked's
 * GetItem, or (asked NULL) one item of a BatchGetItem, which must name a
 * circuit tracked here. A valid item fills st and returns its circuit; an
 * invalid one is counted and logged (item_invalid) and returns NULL. Either
 * way *about is the circuit the item is about, when its key says so.
 */
static struct circ *item_adopt(struct cbd_store *s, json_t *item, struct circ *asked, struct circ **about,
                               struct cbd_store_state *st)
{
    struct cbd_ddb_item it;
    char why[400], q[200];
    struct circ *c = asked;
    int rc = cbd_ddb_item_decode(&s->layout, item, &it, why, sizeof why);
    bool cbd_name = it.name_len == strlen(it.name) && cb__name_check(it.name) == 0;
    if (it.name_len > 0) {
        const char *fault = NULL; /* a format with one %s: the name */
        if (asked != NULL && (!cbd_name || strcmp(it.name, asked->name) != 0))
            fault = "its key '%s' is not the key asked for";
        else if (asked == NULL && !cbd_name)
            fault = "it is about circuit '%s', which is not a circuit name cbd accepts";
        else if (asked == NULL && (c = circ_find(s, it.name)) == NULL)
            fault = "it is about circuit '%s', which this host did not ask for";
        if (fault != NULL) {
            snprintf(why, sizeof why, fault, fleet_quote(it.name, it.name_len, q, sizeof q));
            rc = -EBADMSG;
        }
    }
    *about = c;
    if (rc < 0) {
        item_invalid(s, c, why);
        return NULL;
    }
    memset(st, 0, sizeof *st);
    strcpy(st->name, it.name);
    st->state = it.state;
    st->failure_count = it.failure_count;
    st->opened_at = it.opened_at;
    strcpy(st->probe_owner, it.owner);
    st->lease_expiry = it.lease_expiry;
    if (c->invalid_logged) {
        c->invalid_logged = false;
        cbd_log(CBD_LOG_INFO, "dynamodb: circuit %s: its item in table %s is valid again", c->name, s->o.table);
    }
    return c;
}

static void malformed(struct cbd_store *s, const char *what)
{
    uint64_t suppressed;
    s->st.malformed++;
    if (cbd_ratelimit_pass(&s->malformed_rl, &suppressed))
        cbd_log(CBD_LOG_WARN, "dynamodb: ignoring %s from table %s (%llu more suppressed)", what, s->o.table,
                (unsigned long long)suppressed);
}

static bool same_view(const struct cbd_store_state *a, const struct cbd_store_state *b)
{
    return a->state == b->state && a->opened_at == b->opened_at && a->lease_expiry == b->lease_expiry &&
           strcmp(a->probe_owner, b->probe_owner) == 0;
}

/* Is st our probe lease on opening opened_at? */
static bool lease_is_ours(const struct cbd_store *s, const struct cbd_store_state *st, int64_t opened_at)
{
    return st->state == CB_HALF_OPEN && st->opened_at == opened_at && strcmp(st->probe_owner, s->o.owner) == 0;
}

/* An eventually consistent read can return our own lease as it was before
 * our latest renewal: no news, and no loss of the lease. */
static bool stale_own_lease(const struct cbd_store *s, const struct circ *c, const struct cbd_store_state *st)
{
    return c->seen_valid && lease_is_ours(s, &c->seen, c->seen.opened_at) &&
           lease_is_ours(s, st, c->seen.opened_at) && st->lease_expiry < c->seen.lease_expiry;
}

static void report(struct cbd_store *s, const struct cbd_store_state *st)
{
    if (s->closing)
        return;
    s->st.remote_reports++;
    s->hooks.remote(s->hooks.arg, st);
}

/* The fleet's view of c is st (NULL: no item). Keep the lease honest and
 * report it when it is news, or always (after a lost condition). */
static void settle(struct cbd_store *s, struct circ *c, const struct cbd_store_state *st, bool always)
{
    struct cbd_store_state v = {0};
    if (st && !always && stale_own_lease(s, c, st))
        return;
    if (st)
        v = *st;
    else
        strcpy(v.name, c->name);
    bool news = c->seen_valid ? !same_view(&c->seen, &v) : st != NULL;
    if (c->lease && !lease_is_ours(s, &v, c->lease_opened_at))
        c->lease = false;
    c->seen = v;
    c->seen_valid = true;
    if (news || always)
        report(s, &v);
}

/* DynamoDB just answered about c and the daemon has (or was just told)
 * what the table holds: tell the daemon they agree, unless a newer
 * transition of c waits to be written. At most one request per circuit is
 * in flight, and it is the one answering, so no write of c is on its way. */
static void agreed(struct cbd_store *s, const struct circ *c)
{
    if (s->hooks.synced != NULL && !s->closing && !c->want_write)
        s->hooks.synced(s->hooks.arg, c->name, now_s());
}

/* ---- per-circuit work ------------------------------------------------------- */

static void probe_answer(struct cbd_store *s, struct circ *c, int64_t opened_at, bool granted, int64_t expiry)
{
    if (!s->closing)
        s->hooks.probe_result(s->hooks.arg, c->name, opened_at, granted, expiry);
}

/* Grant the probe host-local: the fleet cannot be asked. */
static void grant_local(struct cbd_store *s, struct circ *c, int64_t opened_at, uint32_t lease_s)
{
    c->lease = false;
    probe_answer(s, c, opened_at, true, now_s() + lease_s);
}

static void op_done(struct cbd_store *s, struct circ *c)
{
    c->busy = IDLE;
    if (has_work(c))
        mark_dirty(s, c);
    if (s->closing && s->inflight == 0)
        close_finish(s);
}

static void on_read(void *arg, const struct cbd_aws_response *r);

/* Read c's item; lost: the election or renewal whose condition failed
 * (its answer is the read's), or NULL. */
static int start_read(struct cbd_store *s, struct circ *c, const struct op *lost)
{
    struct op *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    *o = (struct op){.s = s, .c = c, .elect_follow = lost != NULL};
    if (lost) {
        o->prev = lost->st.opened_at;
        o->lease_s = lost->lease_s;
        o->renewal = lost->renewal;
    }
    /* After a lost condition only a consistent read tells what won. */
    bool consistent = lost || c->read_always || s->o.consistent;
    json_t *b = json_pack("{s:s, s:o, s:b}", "TableName", s->o.table, "Key", key_json(s, c->name),
                          "ConsistentRead", consistent);
    int rc = ddb_call(s, "GetItem", b, on_read, o);
    if (rc < 0)
        free(o);
    else
        c->busy = BUSY_READ;
    return rc;
}

static void read_answer(struct cbd_store *s, struct op *o, json_t *item)
{
    struct circ *c = o->c, *about;
    struct cbd_store_state st;
    bool ok = !item || item_adopt(s, item, c, &about, &st) != NULL;
    bool ours = o->elect_follow && ok && item && lease_is_ours(s, &st, o->prev);
    if (ok) {
        settle(s, c, item ? &st : NULL, o->elect_follow ? !ours : c->read_always);
        agreed(s, c);
    }
    if (!o->elect_follow) {
        c->read_always = false;
        return;
    }
    if (ours) {
        c->lease = true;
        c->lease_opened_at = st.opened_at;
    }
    if (ours && !o->renewal) {
        /* Ours with whatever lease it had: renew it before granting (a
         * newer question, already queued, is answered instead). */
        if (!c->want_elect) {
            c->want_elect = true;
            c->elect_opened_at = o->prev;
            c->elect_lease_s = o->lease_s;
        }
        return;
    }
    probe_answer(s, c, o->prev, ours, ok && item ? st.lease_expiry : 0);
}

static void on_read(void *arg, const struct cbd_aws_response *r)
{
    struct op *o = arg;
    struct cbd_store *s = o->s;
    struct circ *c = o->c;
    enum outcome oc = classify(s, r, "GetItem");
    bool answered = false;
    if (oc == ANS_OK) {
        json_t *j, *item;
        answered = cbd_ddb_answer_get(r->body, r->body_len, &j, &item) == 0;
        if (!answered) {
            malformed(s, "a GetItem answer that is not DynamoDB JSON");
        } else {
            read_answer(s, o, item);
            json_decref(j);
        }
    } else if (oc == ANS_DOWN && !o->elect_follow) {
        c->want_read = true; /* again once DynamoDB is back */
    }
    /* The daemon waits for every election's answer: the condition was
     * lost, so whatever went wrong reading back, it was not granted. */
    if (o->elect_follow && !answered && oc != ANS_CANCELLED)
        probe_answer(s, c, o->prev, false, 0);
    free(o);
    op_done(s, c);
}

static void on_elect(void *arg, const struct cbd_aws_response *r)
{
    struct op *o = arg;
    struct cbd_store *s = o->s;
    struct circ *c = o->c;
    enum outcome oc = classify(s, r, o->renewal ? "probe lease renewal UpdateItem" : "election PutItem");
    if (oc == ANS_OK) {
        c->lease = true;
        c->lease_opened_at = o->st.opened_at;
        c->seen = o->st;
        c->seen_valid = true;
        agreed(s, c);
        probe_answer(s, c, o->st.opened_at, true, o->st.lease_expiry);
    } else if (oc == ANS_CONDITION) {
        c->busy = IDLE;
        if (start_read(s, c, o) == 0) {
            free(o);
            return;
        }
        probe_answer(s, c, o->st.opened_at, false, 0);
    } else if (oc == ANS_DOWN || oc == ANS_REJECTED) {
        grant_local(s, c, o->st.opened_at, o->lease_s); /* fail open, host-local */
    }
    free(o);
    op_done(s, c);
}

/* Powertools' election, verbatim: a PutItem of the HALF_OPEN item o->st. */
static json_t *elect_body(struct cbd_store *s, const struct op *o, int64_t now)
{
    return json_pack(
        "{s:s, s:o, s:s, s:o, s:{s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Item",
        item_json(s, &o->st, now + o->c->recovery_s + TTL_MARGIN_S), "ConditionExpression",
        "(#st = :open AND attribute_not_exists(#own) AND #oa = :oa) OR (#st = :half AND #lease <= :now)",
        "ExpressionAttributeNames", expr_names(s, "SWOL"), "ExpressionAttributeValues", ":open", S("OPEN"), ":oa",
        N(o->st.opened_at), ":half", S("HALF_OPEN"), ":now", N(now));
}

/* The renewal of our own lease: the lease and the TTL move, nothing else
 * (a Powertools reader sees the same item with a later lease), and only
 * while the item is still our lease on the same opening. */
static json_t *renew_body(struct cbd_store *s, const struct op *o, int64_t now)
{
    return json_pack(
        "{s:s, s:o, s:s, s:s, s:o, s:{s:o, s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Key",
        key_json(s, o->st.name), "UpdateExpression", "SET #lease = :lease, #exp = :exp", "ConditionExpression",
        "#st = :half AND #own = :me AND #oa = :oa", "ExpressionAttributeNames", expr_names(s, "SWOLE"),
        "ExpressionAttributeValues", ":lease", N(o->st.lease_expiry), ":exp",
        N(now + o->c->recovery_s + TTL_MARGIN_S), ":half", S("HALF_OPEN"), ":me", S(s->o.owner), ":oa",
        N(o->st.opened_at));
}

/* Ask for the probe lease of elect_opened_at: a renewal when the table, as
 * last seen here, holds it as ours; else the election. */
static int start_elect(struct cbd_store *s, struct circ *c)
{
    struct op *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    int64_t now = now_s();
    bool renew = c->seen_valid && lease_is_ours(s, &c->seen, c->elect_opened_at);
    *o = (struct op){.s = s, .c = c, .lease_s = c->elect_lease_s, .renewal = renew};
    strcpy(o->st.name, c->name);
    o->st.state = CB_HALF_OPEN;
    o->st.opened_at = c->elect_opened_at;
    o->st.failure_count = c->seen_valid && c->seen.opened_at == c->elect_opened_at ? c->seen.failure_count : 0;
    strcpy(o->st.probe_owner, s->o.owner);
    o->st.lease_expiry = now + c->elect_lease_s;
    json_t *b = renew ? renew_body(s, o, now) : elect_body(s, o, now);
    int rc = ddb_call(s, renew ? "UpdateItem" : "PutItem", b, on_elect, o);
    if (rc < 0)
        free(o);
    else
        c->busy = BUSY_ELECT;
    return rc;
}

static enum write_kind write_kind(const struct circ *c, const struct cbd_store_state *st, int64_t prev)
{
    bool owner = c->lease && c->lease_opened_at == prev;
    switch (st->state) {
    case CB_OPEN:
        return owner ? W_REOPEN : W_TRIP;
    case CB_CLOSED:
        return owner ? W_CLOSE_OWNER : prev ? W_CLOSE : W_NONE;
    case CB_HALF_OPEN:
        /* With the fleet's lease the election wrote it. Without (granted
         * host-local in an outage) the fleet must at least learn the opening. */
        return c->lease && c->lease_opened_at == st->opened_at ? W_NONE : W_TRIP;
    }
    return W_NONE;
}

/* The body of a transition's write. */
static json_t *write_body(struct cbd_store *s, const struct op *o)
{
    int64_t now = now_s(), exp = now + o->c->recovery_s + TTL_MARGIN_S;
    static const char close_set[] = "SET #st = :closed, #fc = :zero, #exp = :exp REMOVE #oa, #own, #lease";
    struct cbd_store_state open = o->st;
    switch (o->kind) {
    case W_TRIP:
        open.state = CB_OPEN;
        return json_pack(
            "{s:s, s:o, s:s, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Item",
            item_json(s, &open, exp), "ConditionExpression",
            "attribute_not_exists(#pk) OR #st = :closed OR (#st = :open AND #oa < :oa) OR "
            "(#st = :half AND (#lease <= :now OR #own = :me))",
            "ExpressionAttributeNames", expr_names(s, "PSOLW"), "ExpressionAttributeValues", ":closed", S("CLOSED"),
            ":open", S("OPEN"), ":oa", N(open.opened_at), ":half", S("HALF_OPEN"), ":now", N(now), ":me",
            S(s->o.owner));
    case W_REOPEN:
        return json_pack(
            "{s:s, s:o, s:s, s:s, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Key",
            key_json(s, o->st.name), "UpdateExpression",
            "SET #st = :open, #fc = :zero, #oa = :oa, #exp = :exp REMOVE #own, #lease", "ConditionExpression",
            "#st = :half AND #own = :me", "ExpressionAttributeNames", expr_names(s, "SFOEWL"),
            "ExpressionAttributeValues", ":open", S("OPEN"), ":zero", N(0), ":oa", N(o->st.opened_at), ":exp",
            N(exp), ":half", S("HALF_OPEN"), ":me", S(s->o.owner));
    case W_CLOSE_OWNER:
        return json_pack("{s:s, s:o, s:s, s:s, s:o, s:{s:o, s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Key",
                         key_json(s, o->st.name), "UpdateExpression", close_set, "ConditionExpression",
                         "#st = :half AND #own = :me", "ExpressionAttributeNames", expr_names(s, "SFEOWL"),
                         "ExpressionAttributeValues", ":closed", S("CLOSED"), ":zero", N(0), ":exp", N(exp),
                         ":half", S("HALF_OPEN"), ":me", S(s->o.owner));
    case W_CLOSE:
        return json_pack(
            "{s:s, s:o, s:s, s:s, s:o, s:{s:o, s:o, s:o, s:o, s:o, s:o, s:o}}", "TableName", s->o.table, "Key",
            key_json(s, o->st.name), "UpdateExpression", close_set, "ConditionExpression",
            "attribute_not_exists(#pk) OR #st = :closed OR "
            "(#oa = :prev AND (#st = :open OR #lease <= :now OR #own = :me))",
            "ExpressionAttributeNames", expr_names(s, "PSFEOWL"), "ExpressionAttributeValues", ":closed",
            S("CLOSED"), ":zero", N(0), ":exp", N(exp), ":prev", N(o->prev), ":open", S("OPEN"), ":now", N(now),
            ":me", S(s->o.owner));
    case W_NONE:
        break;
    }
    return NULL;
}

static void on_write(void *arg, const struct cbd_aws_response *r)
{
    struct op *o = arg;
    struct cbd_store *s = o->s;
    struct circ *c = o->c;
    enum outcome oc = classify(s, r, "transition write");
    if (oc == ANS_OK) {
        struct cbd_store_state v = o->st;
        if (o->kind == W_TRIP)
            v.state = CB_OPEN;
        if (o->kind == W_REOPEN || o->kind == W_CLOSE_OWNER || o->kind == W_CLOSE) {
            c->lease = false;
            v.failure_count = 0;
            v.probe_owner[0] = '\0';
            v.lease_expiry = 0;
            if (v.state == CB_CLOSED)
                v.opened_at = 0;
        }
        c->seen = v;
        c->seen_valid = true;
        agreed(s, c);
    } else if (oc == ANS_CONDITION) {
        c->want_read = c->read_always = true;
    } else if (oc == ANS_DOWN && !c->want_write) {
        c->want_write = true; /* kept for when DynamoDB is back, unless a newer one replaced it */
        c->want = o->st;
        c->want_prev = o->prev;
    }
    free(o);
    op_done(s, c);
}

static int start_write(struct cbd_store *s, struct circ *c)
{
    enum write_kind k = write_kind(c, &c->want, c->want_prev);
    if (k == W_NONE) { /* e.g. HALF_OPEN on our lease: the election wrote it */
        c->want_write = false;
        if (c->seen_valid && c->seen.state == c->want.state && c->seen.opened_at == c->want.opened_at)
            agreed(s, c);
        return 0;
    }
    struct op *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    *o = (struct op){.s = s, .c = c, .kind = k, .st = c->want, .prev = c->want_prev};
    int rc = ddb_call(s, k == W_TRIP ? "PutItem" : "UpdateItem", write_body(s, o), on_write, o);
    if (rc < 0) {
        free(o);
        return rc;
    }
    c->want_write = false;
    c->busy = BUSY_WRITE;
    return 0;
}

/* Start the circuit's next piece of work, if it can go now. A write waits
 * for DynamoDB; an election does not (host-local grant while offline). */
static void circ_process(struct cbd_store *s, struct circ *c)
{
    bool reachable = s->health != H_OFFLINE;
    if (c->busy != IDLE)
        return; /* op_done marks it dirty again */
    if (c->want_write && reachable && (start_write(s, c) < 0 || c->busy != IDLE))
        return;
    if (s->closing)
        return;
    if (c->want_elect) {
        if (s->health != H_OFFLINE && start_elect(s, c) == 0) {
            c->want_elect = false;
        } else if (s->health == H_OFFLINE) { /* unreachable, or no credentials */
            c->want_elect = false;
            grant_local(s, c, c->elect_opened_at, c->elect_lease_s);
        }
        return;
    }
    if (c->want_read && reachable && start_read(s, c, NULL) == 0)
        c->want_read = false;
}

static void on_kick(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    struct circ *list = s->dirty;
    s->dirty = NULL;
    while (list) {
        struct circ *c = list;
        list = c->dnext;
        c->dirty = false;
        circ_process(s, c);
    }
    if (s->sync_wanted && !s->closing) {
        s->sync_wanted = false;
        sync_start(s);
    }
    while (s->closing && s->waiting) {
        struct batch *b = s->waiting;
        s->waiting = b->next;
        batch_end(b, true, -ECANCELED);
    }
    if (s->closing && s->inflight == 0)
        close_finish(s);
}

static void kick_arm(struct cbd_store *s)
{
    if (!s->closed_http && !uv_is_active((uv_handle_t *)&s->kick))
        uv_timer_start(&s->kick, on_kick, 0, 0);
}

/* ---- reconcile: BatchGetItem of every tracked circuit --------------------------- */

static void round_end(struct cbd_store *s)
{
    int rc = s->round_failed ? (s->round_rc ? s->round_rc : -EIO) : 0;
    if (s->restore_done) {
        void (*done)(void *, int) = s->restore_done;
        s->restore_done = NULL;
        done(s->restore_arg, rc);
    }
    if (s->health == H_OFFLINE && !s->round_failed)
        s->down_probes = 0;
    if (s->sync_again) {
        s->sync_again = false;
        s->sync_wanted = true;
        kick_arm(s);
    }
    sync_arm(s);
    if (s->closing && s->inflight == 0)
        close_finish(s);
}

static void batch_end(struct batch *b, bool failed, int rc)
{
    struct cbd_store *s = b->s;
    if (failed) {
        s->round_failed = true;
        s->round_rc = rc;
    }
    json_decref(b->keys);
    free(b);
    if (--s->sync_inflight == 0)
        round_end(s);
}

/* Set the mark of each circuit whose key (or item) is in arr. */
static void mark_names(struct cbd_store *s, json_t *arr, bool mark)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        char name[CB_NAME_MAX + 1], why[256];
        size_t len;
        int rc = cbd_ddb_key_decode(&s->layout, v, name, sizeof name, &len, why, sizeof why);
        struct circ *c = rc == 0 && len == strlen(name) ? circ_find(s, name) : NULL;
        if (c)
            c->mark = mark;
    }
}

/* Report what a batch answer holds (its items and UnprocessedKeys, which
 * may be NULL); returns the UnprocessedKeys to retry (or NULL). */
static json_t *batch_apply(struct cbd_store *s, json_t *items, json_t *unproc, json_t *sent)
{
    const char *name_attr = s->o.sk[0] ? s->o.sk : s->o.pk;
    size_t i;
    json_t *v;
    json_array_foreach(items, i, v) {
        struct cbd_store_state st;
        struct circ *c;
        if (item_adopt(s, v, NULL, &c, &st) == NULL) {
            if (c)
                c->mark = true; /* it has an item, if not one to adopt: it is not absent */
            continue;
        }
        c->mark = true;
        if (c->busy == IDLE && !c->want_write && !c->want_elect) {
            settle(s, c, &st, false);
            agreed(s, c);
        }
    }
    mark_names(s, unproc, true);
    /* Asked for, neither returned nor left unprocessed: there is no item. */
    json_array_foreach(sent, i, v) {
        const char *name = attr_s(v, name_attr);
        struct circ *c = name ? circ_find(s, name) : NULL;
        if (c && !c->mark && c->busy == IDLE && !c->want_write && !c->want_elect) {
            settle(s, c, NULL, false);
            agreed(s, c);
        }
    }
    mark_names(s, items, false);
    mark_names(s, unproc, false);
    return json_is_array(unproc) && json_array_size(unproc) > 0 ? unproc : NULL;
}

static void batch_go(struct batch *b);

/* The batch timer: send the waiting batches that are due, rearm for the rest. */
static void on_batch_timer(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    uint64_t now = uv_now(s->hooks.loop), next = UINT64_MAX;
    struct batch **pp = &s->waiting, *due = NULL;
    while (*pp) {
        struct batch *b = *pp;
        if (b->due_ms <= now) {
            *pp = b->next;
            b->next = due;
            due = b;
        } else {
            next = b->due_ms < next ? b->due_ms : next;
            pp = &b->next;
        }
    }
    if (next != UINT64_MAX)
        uv_timer_start(&s->batch_timer, on_batch_timer, next - now, 0);
    while (due) {
        struct batch *b = due;
        due = b->next;
        batch_go(b);
    }
}

static void on_batch(void *arg, const struct cbd_aws_response *r)
{
    struct batch *b = arg;
    struct cbd_store *s = b->s;
    enum outcome oc = classify(s, r, "BatchGetItem");
    if (oc != ANS_OK) {
        batch_end(b, true, oc == ANS_CANCELLED ? -ECANCELED : -EIO);
        return;
    }
    json_t *ans, *items, *unproc_keys;
    if (cbd_ddb_answer_batch(r->body, r->body_len, s->o.table, &ans, &items, &unproc_keys) < 0) {
        malformed(s, "a BatchGetItem answer that is not DynamoDB JSON");
        batch_end(b, true, -EBADMSG);
        return;
    }
    json_t *unproc = batch_apply(s, items, unproc_keys, b->keys);
    if (unproc)
        s->st.unprocessed_keys += json_array_size(unproc);
    if (unproc && b->attempt + 1 < UNPROCESSED_ATTEMPTS && !s->closing) {
        json_decref(b->keys);
        b->keys = json_incref(unproc);
        b->due_ms = uv_now(s->hooks.loop) + cbd_aws_backoff_ms(b->attempt++, 50, 1000);
        b->next = s->waiting;
        s->waiting = b;
        uv_timer_start(&s->batch_timer, on_batch_timer, 0, 0);
    } else {
        batch_end(b, unproc != NULL, -EAGAIN);
    }
    json_decref(ans);
}

static void batch_go(struct batch *b)
{
    struct cbd_store *s = b->s;
    json_t *body = json_pack("{s:{s:{s:O, s:b}}}", "RequestItems", s->o.table, "Keys", b->keys, "ConsistentRead",
                             s->o.consistent);
    int rc = ddb_call(s, "BatchGetItem", body, on_batch, b);
    if (rc < 0)
        batch_end(b, true, rc);
}

static void sync_start(struct cbd_store *s)
{
    if (s->sync_inflight) {
        s->sync_again = true;
        return;
    }
    struct cbd_aws_creds cr;
    const char *why;
    int rc = cbd_aws_credentials_get(s->creds, &cr, &why);
    explicit_bzero(&cr, sizeof cr);
    if (rc == -EAGAIN) {
        s->sync_wanted = true; /* on_creds_ready kicks again */
        return;
    }
    s->round_failed = false;
    s->round_rc = 0;
    s->sync_inflight = 1; /* held while the batches go out */
    if (rc < 0) {
        set_offline(s, why);
        s->round_failed = true;
        s->round_rc = rc;
    }
    struct batch *b = NULL;
    for (struct circ *c = rc < 0 ? NULL : s->all; c; c = c->next) {
        if (!b && (!(b = calloc(1, sizeof *b)) || !(b->keys = json_array()))) {
            free(b);
            b = NULL;
            s->round_failed = true;
            break;
        }
        b->s = s;
        json_array_append_new(b->keys, key_json(s, c->name));
        if (json_array_size(b->keys) == BATCH_MAX || !c->next) {
            s->sync_inflight++;
            batch_go(b);
            b = NULL;
        }
    }
    if (--s->sync_inflight == 0)
        round_end(s);
}

static void on_sync_timer(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    if (s->health == H_OFFLINE)
        s->down_probes++;
    s->sync_wanted = true;
    kick_arm(s);
}

/* Next periodic sync: every sync_ms, or a backoff probe while offline. */
static void sync_arm(struct cbd_store *s)
{
    uint64_t delay = s->o.sync_ms;
    if (s->closing)
        return;
    if (s->health == H_OFFLINE)
        delay = 100 + cbd_aws_backoff_ms(s->down_probes, 200, s->o.backoff_max_ms);
    if (delay)
        uv_timer_start(&s->sync_timer, on_sync_timer, delay, 0);
}

/* ---- the ops ----------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct cbd_store *s = h->data;
    if (--s->handles > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    while (s->all) {
        struct circ *c = s->all;
        s->all = c->next;
        free(c);
    }
    free(s->buckets);
    free(s);
    if (done)
        done(arg);
}

static void on_http_closed(void *arg)
{
    struct cbd_store *s = arg;
    uv_timer_t *timers[] = {&s->kick, &s->sync_timer, &s->batch_timer, &s->close_timer};
    s->http = NULL;
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
        uv_close((uv_handle_t *)timers[i], on_handle_closed);
}

/* Nothing of ours is in flight (or the close deadline passed): let go. */
static void close_finish(struct cbd_store *s)
{
    if (s->closed_http)
        return;
    s->closed_http = true;
    unsigned lost = 0;
    for (const struct circ *c = s->all; c; c = c->next)
        lost += c->want_write || c->busy == BUSY_WRITE;
    if (lost)
        cbd_log(CBD_LOG_WARN, "dynamodb: closing with %u transition(s) not written to table %s (unreachable); "
                "the fleet keeps its last state for them", lost, s->o.table);
    uv_timer_stop(&s->kick);
    uv_timer_stop(&s->sync_timer);
    uv_timer_stop(&s->batch_timer);
    uv_timer_stop(&s->close_timer);
    cbd_aws_credentials_free(s->creds);
    s->creds = NULL;
    cbd_aws_http_close(s->http, on_http_closed, s);
}

static void on_close_deadline(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    cbd_log(CBD_LOG_WARN, "dynamodb: %u request(s) still unanswered at close; cancelling them", s->inflight);
    close_finish(s);
}

static void ddb_close(struct cbd_store *s, void (*done)(void *arg), void *arg)
{
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->sync_timer);
    /* Flush: the kick sends the queued writes (nothing else), and the last
     * answer finishes the close; a deadline bounds the wait. */
    for (struct circ *c = s->all; c; c = c->next)
        if (c->want_write)
            mark_dirty(s, c);
    uv_timer_start(&s->close_timer, on_close_deadline, (uint64_t)s->o.timeout_ms * s->o.attempts + 2000, 0);
    kick_arm(s);
}

static void ddb_restore(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg)
{
    s->restore_done = done;
    s->restore_arg = arg;
    s->sync_wanted = true;
    kick_arm(s);
}

static void ddb_track(struct cbd_store *s, const char *name, const cb_config *cfg)
{
    bool created;
    struct circ *c = circ_get(s, name, &created);
    if (!c) {
        cbd_log(CBD_LOG_WARN, "dynamodb: cannot track circuit %.128s (bad name or out of memory)", name);
        return;
    }
    c->recovery_s = cfg->recovery_timeout_ms / 1000 + (cfg->recovery_timeout_ms % 1000 != 0);
    if (created) {
        c->want_read = true; /* a circuit OPEN in the fleet opens here at registration */
        mark_dirty(s, c);
    }
}

static void ddb_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at)
{
    bool created;
    struct circ *c = circ_get(s, st->name, &created);
    if (!c) {
        cbd_log(CBD_LOG_WARN, "dynamodb: cannot write circuit %.128s (bad name or out of memory)", st->name);
        return;
    }
    c->want = *st;
    c->want_prev = prev_opened_at;
    c->want_write = true;
    mark_dirty(s, c);
}

static void ddb_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s)
{
    bool created;
    struct circ *c = circ_get(s, name, &created);
    if (!c) {
        cbd_log(CBD_LOG_WARN, "dynamodb: cannot elect a probe for circuit %.128s", name);
        return;
    }
    c->want_elect = true;
    c->elect_opened_at = opened_at;
    c->elect_lease_s = lease_s ? lease_s : c->recovery_s;
    mark_dirty(s, c);
}

static void ddb_sync(struct cbd_store *s)
{
    s->sync_wanted = true;
    kick_arm(s);
}

/* The URI as create() reads it, through the same parser, without creating
 * anything: the region and endpoint are resolved as create() resolves them
 * (environment and the AWS config file), so an error here is the one
 * create() would give. The credential chain is create()'s alone. */
static int ddb_check_uri(const char *uri, char *why, size_t size)
{
    struct ddb_opts o;
    const char *msg = uri != NULL ? opts_parse(&o, uri) : "no dynamodb URI given";
    if (msg == NULL)
        return 0;
    snprintf(why, size, "%s", msg);
    return -EINVAL;
}

static int ddb_create(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks,
                      const char **err)
{
    struct cbd_store *s = calloc(1, sizeof *s);
    char cerr[256];
    if (!s || !(s->buckets = calloc(64, sizeof *s->buckets))) {
        free(s);
        *err = "out of memory";
        return -ENOMEM;
    }
    s->nbuckets = 64;
    const char *msg = opts_parse(&s->o, uri);
    int rc = msg ? -EINVAL : cbd_aws_http_create(&s->http, hooks->loop);
    if (rc == 0 && (rc = cbd_aws_credentials_create(&s->creds, s->http, s->o.region, on_creds_ready, s, cerr,
                                                    sizeof cerr)) < 0)
        msg = fail("dynamodb credentials: %s", cerr);
    if (rc < 0) {
        if (s->http)
            cbd_aws_http_close(s->http, NULL, NULL);
        free(s->buckets);
        free(s);
        *err = msg ? msg : "out of memory";
        return rc;
    }
    s->hooks = *hooks;
    s->layout = (struct cbd_ddb_layout){
        .pk = s->o.pk, .sk = s->o.sk, .static_pk = s->o.static_pk, .state = s->o.a_state, .failure_count = s->o.a_fc,
        .opened_at = s->o.a_oa, .owner = s->o.a_owner, .lease = s->o.a_lease, .expiration = s->o.a_exp};
    snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:dynamodb", s->o.region);
    uv_timer_t *timers[] = {&s->kick, &s->sync_timer, &s->batch_timer, &s->close_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        uv_timer_init(hooks->loop, timers[i]);
        timers[i]->data = s;
    }
    s->handles = 4;
    cbd_log(CBD_LOG_INFO, "dynamodb: table %s at %s (region %s, %s keys), credentials: %s, probe owner id %s",
            s->o.table, s->o.endpoint, s->o.region, s->o.sk[0] ? "composite" : "simple",
            cbd_aws_credentials_source(s->creds)[0] ? cbd_aws_credentials_source(s->creds) : "none found yet",
            s->o.owner);
    sync_arm(s);
    *out = s;
    return 0;
}

void cbd_dynamodb_stats(const struct cbd_store *s, struct cbd_dynamodb_stats *out)
{
    struct cbd_aws_http_stats h = {0};
    *out = s->st;
    if (s->http)
        cbd_aws_http_stats(s->http, &h);
    out->requests = h.requests;
    out->retries = h.retries;
    out->throttles = h.throttles;
    out->timeouts = h.timeouts;
    out->errors = h.errors;
    out->circuits = s->ncirc;
    out->pending_writes = 0;
    for (const struct circ *c = s->all; c; c = c->next)
        out->pending_writes += c->want_write || c->busy == BUSY_WRITE;
    out->online = s->health == H_ONLINE;
}

static void ddb_stats(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value), void *arg)
{
    struct cbd_dynamodb_stats st;
    cbd_dynamodb_stats(s, &st);
    emit(arg, "requests", st.requests);
    emit(arg, "retries", st.retries);
    emit(arg, "throttles", st.throttles);
    emit(arg, "timeouts", st.timeouts);
    emit(arg, "errors", st.errors);
    emit(arg, "conditions_lost", st.conditions_lost);
    emit(arg, "malformed", st.malformed);
    emit(arg, "invalid_items", st.invalid_items);
    emit(arg, "unprocessed_keys", st.unprocessed_keys);
    emit(arg, "pending_writes", st.pending_writes);
}

/* ---- create-table (cbctl): blocking, on a private loop ------------------------- */

enum ct_step { CT_CREATE, CT_DESCRIBE, CT_TTL, CT_DONE };

struct ct {
    struct ddb_opts o;
    char sigv4[128];
    uv_loop_t loop;
    uv_timer_t timer;
    struct cbd_aws_http *http;
    struct cbd_aws_credentials *creds;
    enum ct_step step;
    unsigned polls;
    int rc;
    char *err;
    size_t errlen;
};

static void ct_next(struct ct *t);

static void ct_end(struct ct *t, int rc, const char *fmt, const char *a, const char *b)
{
    t->rc = rc;
    t->step = CT_DONE;
    snprintf(t->err, t->errlen, fmt, a, b);
}

static json_t *ct_body(const struct ct *t)
{
    const struct ddb_opts *o = &t->o;
    if (t->step == CT_DESCRIBE)
        return json_pack("{s:s}", "TableName", o->table);
    if (t->step == CT_TTL)
        return json_pack("{s:s, s:{s:s, s:b}}", "TableName", o->table, "TimeToLiveSpecification", "AttributeName",
                         o->a_exp, "Enabled", 1);
    json_t *defs = json_pack("[{s:s, s:s}]", "AttributeName", o->pk, "AttributeType", "S");
    json_t *keys = json_pack("[{s:s, s:s}]", "AttributeName", o->pk, "KeyType", "HASH");
    if (o->sk[0]) {
        json_array_append_new(defs, json_pack("{s:s, s:s}", "AttributeName", o->sk, "AttributeType", "S"));
        json_array_append_new(keys, json_pack("{s:s, s:s}", "AttributeName", o->sk, "KeyType", "RANGE"));
    }
    return json_pack("{s:s, s:o, s:o, s:s}", "TableName", o->table, "AttributeDefinitions", defs, "KeySchema",
                     keys, "BillingMode", "PAY_PER_REQUEST");
}

/* The table's key schema equals the URI's: "" or what differs. */
static const char *ct_schema_differs(const struct ct *t, json_t *table)
{
    const char *hash = NULL, *range = NULL;
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(table, "KeySchema"), i, k) {
        const char *type = json_string_value(json_object_get(k, "KeyType"));
        const char *name = json_string_value(json_object_get(k, "AttributeName"));
        if (type && strcmp(type, "HASH") == 0)
            hash = name;
        else if (type && strcmp(type, "RANGE") == 0)
            range = name;
    }
    if (!hash || strcmp(hash, t->o.pk) != 0)
        return "partition key";
    if ((range ? range : "")[0] != t->o.sk[0] || (range && strcmp(range, t->o.sk) != 0))
        return "sort key";
    return "";
}

static void ct_on_timer(uv_timer_t *tm)
{
    ct_next(tm->data);
}

static void ct_describe(struct ct *t, const struct cbd_aws_response *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL), *table = json_object_get(j, "Table");
    const char *status = json_string_value(json_object_get(table, "TableStatus"));
    const char *diff = table ? ct_schema_differs(t, table) : "";
    if (!status)
        ct_end(t, -EBADMSG, "DescribeTable %s: answer without Table.TableStatus%s", t->o.table, "");
    else if (diff[0])
        ct_end(t, -EEXIST, "table %s exists with another %s than the URI's (pk/sk options)", t->o.table, diff);
    else if (strcmp(status, "ACTIVE") == 0) {
        t->step = CT_TTL;
        ct_next(t);
    } else if (++t->polls > CREATE_POLLS)
        ct_end(t, -ETIMEDOUT, "table %s still %s after 5 minutes", t->o.table, status);
    else
        uv_timer_start(&t->timer, ct_on_timer, 1000, 0);
    json_decref(j);
}

static void ct_answer(void *arg, const struct cbd_aws_response *r)
{
    struct ct *t = arg;
    bool ok = r->status >= 200 && r->status <= 299;
    int err = r->status == 400 || r->status == 403 ? -EACCES : -EIO;
    if (r->cancelled)
        return;
    if (t->step == CT_CREATE) {
        if (ok || strcmp(r->error_code, "ResourceInUseException") == 0) {
            t->step = CT_DESCRIBE;
            ct_next(t);
        } else {
            ct_end(t, err, "CreateTable %s: %s", t->o.table, r->why);
        }
    } else if (t->step == CT_DESCRIBE) {
        if (ok)
            ct_describe(t, r);
        else
            ct_end(t, err, "DescribeTable %s: %s", t->o.table, r->why);
    } else if (ok || strstr(r->body, "already enabled")) {
        ct_end(t, 0, "table %s ready, TTL on attribute %s", t->o.table, t->o.a_exp);
    } else if (strcmp(r->error_code, "UnknownOperationException") == 0) {
        ct_end(t, 1, "table %s ready; warning: the endpoint does not support UpdateTimeToLive (a local emulator?), "
               "so expired items are not deleted (%s)", t->o.table, r->why);
    } else {
        ct_end(t, 1, "table %s ready; warning: could not enable TTL: %s", t->o.table, r->why);
    }
}

static void ct_next(struct ct *t)
{
    static const char *const ops[] = {"CreateTable", "DescribeTable", "UpdateTimeToLive"};
    struct cbd_aws_creds cr;
    const char *why;
    char target[96];
    if (t->step == CT_DONE)
        return;
    int rc = cbd_aws_credentials_get(t->creds, &cr, &why);
    if (rc == -EAGAIN)
        return; /* ct_next again when they are in */
    if (rc < 0) {
        ct_end(t, rc, "AWS credentials: %s%s", why[0] ? why : "none found (environment, profile, container, "
               "EC2 metadata)", "");
        return;
    }
    json_t *body = ct_body(t);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    snprintf(target, sizeof target, "X-Amz-Target: " TARGET "%s", ops[t->step]);
    const char *hdrs[] = {"Content-Type: application/x-amz-json-1.0", target, NULL};
    struct cbd_aws_request q = {
        .method = "POST", .url = t->o.endpoint, .body = text, .body_len = text ? strlen(text) : 0,
        .headers = hdrs, .sigv4 = t->sigv4, .creds = &cr, .timeout_ms = t->o.timeout_ms,
        .connect_timeout_ms = t->o.connect_timeout_ms, .max_attempts = t->o.attempts + 2,
        .insecure_tls = !t->o.tls_verify, .cb = ct_answer, .arg = t,
    };
    rc = text ? cbd_aws_http_send(t->http, &q) : -ENOMEM;
    explicit_bzero(&cr, sizeof cr);
    free(text);
    if (rc < 0)
        ct_end(t, rc, "cannot send %s: %s", ops[t->step], strerror(-rc));
}

static void ct_on_creds(void *arg)
{
    ct_next(arg);
}

int cbd_dynamodb_create_table(const char *uri, char *err, size_t errlen)
{
    struct ct *t = calloc(1, sizeof *t);
    char cerr[256];
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->err = err;
    t->errlen = errlen;
    const char *msg = opts_parse(&t->o, uri);
    if (msg) {
        snprintf(err, errlen, "%s", msg);
        free(t);
        return -EINVAL;
    }
    snprintf(t->sigv4, sizeof t->sigv4, "aws:amz:%s:dynamodb", t->o.region);
    uv_loop_init(&t->loop);
    uv_timer_init(&t->loop, &t->timer);
    t->timer.data = t;
    int rc = cbd_aws_http_create(&t->http, &t->loop);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
    } else if ((rc = cbd_aws_credentials_create(&t->creds, t->http, t->o.region, ct_on_creds, t, cerr,
                                                sizeof cerr)) < 0) {
        ct_end(t, rc, "AWS credentials: %s%s", cerr, "");
    } else {
        ct_next(t);
        uv_run(&t->loop, UV_RUN_DEFAULT); /* until no request or poll timer is left */
        if (t->step != CT_DONE)
            ct_end(t, -EIO, "create-table of %s stopped before it finished%s", t->o.table, "");
        rc = t->rc;
    }
    cbd_aws_credentials_free(t->creds);
    if (t->http)
        cbd_aws_http_close(t->http, NULL, NULL);
    uv_close((uv_handle_t *)&t->timer, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->loop);
    free(t);
    return rc;
}

const struct cbd_store_ops cbd_store_dynamodb_ops = {
    .scheme = "dynamodb",
    .create = ddb_create,
    .check_uri = ddb_check_uri,
    .restore = ddb_restore,
    .track = ddb_track,
    .transition = ddb_transition,
    .try_probe = ddb_try_probe,
    .sync = ddb_sync,
    .close = ddb_close,
    .stats = ddb_stats,
};
