/*
 * store_dynamodb.c - the dynamodb transport of the fleet layer: circuits
 * shared through Powertools' circuit breaker table (docs/store-dynamodb.md;
 * the fleet rules are fleet.c's, docs/fleet.md).
 *
 * Design. Every circuit is one item laid out exactly as Powertools lays it
 * out (POWERTOOLS.md), so Lambda functions using Powertools and hosts running
 * cbd share one circuit per name; cbd adds only an opening's backoff
 * deadline (cbd_open_until, cbd_open_until_of) and a shadow trial's marker
 * (cbd_shadow_state, cbd_shadow_since, cbd_shadow_host), which Powertools
 * ignores. All I/O is DynamoDB's JSON API over
 * aws_http (libcurl multi on the loop, SigV4); credentials come from
 * aws_credentials (the SDK chain). Nothing blocks the loop. This file is
 * wire encoding only: item and key codec (dynamodb_item.c), request
 * bodies, batching, answers; what to write when, and what an answer means
 * for the daemon, is the fleet layer's.
 *
 * Writes. Each of the five writes (fleet.h) is one UpdateItem whose
 * ConditionExpression encodes fleet_write_applies exactly and whose update
 * encodes fleet_write_result (SHADOW: no condition, the marker only, and
 * where no item exists Powertools' CLOSED item with it, so a Powertools
 * reader never meets an item without a state), with ReturnValues ALL_NEW: the answer is the
 * item as stored afterwards. The election is Powertools' condition
 * verbatim, plus "or the lease is ours" (a renewal by election, or the
 * retry of an attempt whose answer was lost); RELEASE gives the lease back
 * so that Powertools' own election succeeds at once. A lost condition
 * (ConditionalCheckFailedException) is a normal answer: the item is read
 * back with a consistent GetItem and handed up, so the fleet layer learns
 * at once what the fleet holds. Every write sets the TTL attribute to now +
 * recovery_timeout + 3600 s, as Powertools does; lease times are this
 * host's clock, as Powertools' are. tests/integration/
 * test_fleet_contract.c checks the conditions against the table with
 * thousands of random cases on dynalite.
 *
 * Reads. One name: GetItem. Several (the reconcile): BatchGetItem of up to
 * 100 keys, UnprocessedKeys retried with backoff (5 tries), names neither
 * returned nor unprocessed answered as absent. When IAM denies
 * BatchGetItem (AccessDeniedException), the transport says so once and
 * reads each circuit with GetItem from then on. Every item goes through
 * the codec (dynamodb_item.c), which holds Powertools' layout and its
 * validation; an item for another key than the one asked for, or about a
 * name that is not a circuit cbd accepts, is invalid too.
 *
 * Connection. DynamoDB has none to keep: connect() reads a key that is no
 * circuit (GetItem of "cbd-reachability-check"), which proves the endpoint,
 * the credentials, the table and its key schema; up() or down() follows.
 * A request that fails after aws_http's retries for any reason but a lost
 * condition or a refused request (network, 5xx, throttling, credentials,
 * a missing table, access denied) reports down() once, and is answered as
 * lost with the store (-ENOTCONN). A request DynamoDB refuses as malformed
 * (ValidationException) is answered -EINVAL: not to be sent again. Requests
 * made while credentials are being fetched wait for them.
 */
#define _GNU_SOURCE /* explicit_bzero */
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
#include "dynamodb_uri.h"
#include "fleet.h"
#include "log.h"
#include "pct_decode.h"
#include "segment.h"

_Static_assert(CBD_DDB_URI_OWNER_MAX == FLEET_OWNER_MAX, "the owner option holds a fleet owner id");

#define BATCH_MAX 100u             /* keys per BatchGetItem: DynamoDB's limit */
#define UNPROCESSED_ATTEMPTS 5u
#define PROBE_KEY "cbd-reachability-check" /* what connect() reads: no circuit */

/* ---- the store ----------------------------------------------------------------- */

enum health { H_UNKNOWN, H_ONLINE, H_OFFLINE };
enum busy { IDLE, BUSY_WRITE, BUSY_ELECT, BUSY_READ };

/* ---- the transport ---------------------------------------------------------------- */

enum ddb_kind { Q_PROBE, Q_GET, Q_BATCH, Q_WRITE, Q_READBACK };

/* One request to DynamoDB, until it is answered. */
struct ddb_req {
    struct fleet_transport *t;
    struct ddb_req *next;           /* waiting for credentials, or a batch waiting to retry */
    enum ddb_kind kind;
    const char *op;                 /* the DynamoDB operation */
    json_t *body;                   /* until sent */
    char name[CB_NAME_MAX + 1];     /* GET, WRITE, READBACK */
    struct fleet_write w;           /* WRITE, READBACK */
    int64_t now;                    /* WRITE, READBACK: the time the condition was checked at */
    bool applied;                   /* READBACK: the write applied (its answer held no item) */
    fleet_read_cb *rcb;
    fleet_write_cb *wcb;
    void *arg;
    size_t n;                       /* BATCH: names, and which still wait for an answer */
    char (*names)[CB_NAME_MAX + 1];
    bool *pending;
    uint32_t attempt;
    uint64_t due_ms;
};

struct fleet_transport {
    struct cbd_ddb_opts o;
    struct cbd_ddb_layout layout;   /* the item's attribute names, pointing into o */
    uv_loop_t *loop;
    struct fleet_transport_cbs cbs;
    struct cbd_aws_http *http;
    struct cbd_aws_credentials *creds;
    uv_timer_t defer, batch_timer;
    bool up;                        /* reported up, and no down() since */
    bool probing;                   /* a connect() in flight */
    bool batch_denied;              /* IAM refuses BatchGetItem: GetItem per circuit */
    bool down_deferred;
    char down_why[512];
    struct ddb_req *waiting;        /* for credentials */
    struct ddb_req *batches;        /* waiting to retry UnprocessedKeys */
    bool closing;
    unsigned handles;
    void (*close_done)(void *arg);
    void *close_arg;
    uint64_t malformed, unprocessed_keys;
    struct cbd_ratelimit malformed_rl;
};

static void req_free(struct ddb_req *q)
{
    json_decref(q->body);
    free(q->names);
    free(q->pending);
    free(q);
}

static struct ddb_req *req_new(struct fleet_transport *t, enum ddb_kind kind, const char *op, json_t *body)
{
    struct ddb_req *q = body != NULL ? calloc(1, sizeof *q) : NULL;
    if (q == NULL) {
        json_decref(body);
        return NULL;
    }
    *q = (struct ddb_req){.t = t, .kind = kind, .op = op, .body = body};
    return q;
}

static void malformed(struct fleet_transport *t, const char *fmt, const char *what)
{
    uint64_t suppressed;
    char msg[400];
    t->malformed++;
    if (!cbd_ratelimit_pass(&t->malformed_rl, &suppressed))
        return;
    snprintf(msg, sizeof msg, fmt, what);
    cbd_log(CBD_LOG_WARN, "dynamodb: ignoring %s from table %s (%llu more suppressed)", msg, t->o.table,
            (unsigned long long)suppressed);
}

/* ---- down, deferred ---------------------------------------------------------------- */

/* The store went away (a request failed after its retries): down() once. */
static void went_down(struct fleet_transport *t, int err, const char *why)
{
    if (!t->up || t->closing)
        return;
    t->up = false;
    t->cbs.down(t->cbs.arg, err, why);
}

static void on_defer(uv_timer_t *tm)
{
    struct fleet_transport *t = tm->data;
    if (!t->down_deferred || t->closing)
        return;
    t->down_deferred = false;
    t->up = false;
    t->cbs.down(t->cbs.arg, -EIO, t->down_why);
}

/* down() on the next loop turn: a failure inside a call of the fleet layer. */
static void defer_down(struct fleet_transport *t, const char *why)
{
    snprintf(t->down_why, sizeof t->down_why, "%s", why);
    t->down_deferred = true;
    uv_timer_start(&t->defer, on_defer, 0, 0);
}

/* ---- sending --------------------------------------------------------------------------- */

static void on_answer(void *arg, const struct cbd_aws_response *r);

/* Send q (0), keep it until the credentials are in (0), or -errno with
 * *why when it cannot go: q is the caller's again. */
static int send_req(struct ddb_req *q, const char **why)
{
    struct fleet_transport *t = q->t;
    struct cbd_aws_creds cr;
    int rc = cbd_aws_credentials_get(t->creds, &cr, why);
    if (rc == -EAGAIN) {
        q->next = t->waiting;
        t->waiting = q;
        return 0;
    }
    if (rc < 0)
        return rc;
    rc = cbd_ddb_send(t->http, &t->o, &cr, q->op, q->body, t->o.attempts, on_answer, q);
    explicit_bzero(&cr, sizeof cr);
    if (rc < 0) {
        *why = "out of memory sending a request";
        return rc;
    }
    json_decref(q->body);
    q->body = NULL;
    return 0;
}

/* Answer the fleet layer (names of a batch: each one still waiting) and
 * forget q. */
static void answer(struct ddb_req *q, const struct fleet_answer *a)
{
    if (q->kind == Q_WRITE || q->kind == Q_READBACK)
        q->wcb(q->arg, a);
    else if (q->kind == Q_GET)
        q->rcb(q->arg, q->name, a);
    for (size_t i = 0; q->kind == Q_BATCH && i < q->n; i++)
        if (q->pending[i])
            q->rcb(q->arg, q->names[i], a);
    req_free(q);
}

static void answer_error(struct ddb_req *q, int err, const char *why)
{
    if (q->kind == Q_PROBE) {
        q->t->probing = false;
        q->t->up = false;
        q->t->cbs.down(q->t->cbs.arg, err, why);
        req_free(q);
        return;
    }
    answer(q, &(struct fleet_answer){.status = FLEET_ERROR, .err = err, .why = why});
}

/* Send q again from a callback (a read-back, a retry, credentials in):
 * when it cannot go, it is answered as lost with the store. */
static void resend(struct ddb_req *q)
{
    const char *why = "";
    if (send_req(q, &why) < 0) {
        went_down(q->t, -EIO, why);
        answer_error(q, -ENOTCONN, why);
    }
}

/* Sends every request of list again; an answer may close the transport
 * on the way (it runs up to the daemon): the rest are then dropped. */
static void resend_all(struct fleet_transport *t, struct ddb_req *list)
{
    while (list != NULL) {
        struct ddb_req *q = list;
        list = q->next;
        if (t->closing)
            req_free(q);
        else
            resend(q);
    }
}

static void on_creds_ready(void *arg)
{
    struct fleet_transport *t = arg;
    struct ddb_req *list = t->waiting;
    t->waiting = NULL;
    resend_all(t, list);
}

/* ---- bodies -------------------------------------------------------------------------------- */

/* Short names for the attribute values of the request bodies below. */
#define S cbd_ddb_s
#define N cbd_ddb_n

static json_t *key_json(const struct fleet_transport *t, const char *name)
{
    return cbd_ddb_key(&t->layout, name, strlen(name));
}

static json_t *get_body(const struct fleet_transport *t, const char *name, bool consistent)
{
    return json_pack("{s:s, s:o, s:b}", "TableName", t->o.table, "Key", key_json(t, name), "ConsistentRead",
                     consistent);
}

/* The five writes: fleet_write_applies as a ConditionExpression,
 * fleet_write_result as an UpdateExpression (an OPEN without a deadline:
 * open_without_deadline). */
static const struct {
    const char *update, *condition;
} write_exprs[] = {
    [FLEET_OPEN] = {"SET #st = :open, #fc = :fc, #oa = :oa, #exp = :exp, #until = :until, #until_of = :oa "
                    "REMOVE #own, #lease",
                    "attribute_not_exists(#pk) OR #st = :closed OR (#st = :open AND #oa < :oa) OR "
                    "(#st = :half AND (#own = :me OR (#lease <= :now AND #oa < :oa)))"},
    [FLEET_CLOSE] = {"SET #st = :closed, #fc = :zero, #exp = :exp REMOVE #oa, #own, #lease, #until, #until_of",
                     "(#st = :half AND #own = :me) OR "
                     "(#oa = :oa AND ((#st = :open AND attribute_not_exists(#own)) OR (#st = :half AND #lease <= :now)))"},
    [FLEET_ELECT] = {"SET #st = :half, #own = :me, #lease = :lease, #exp = :exp",
                     "(#st = :open AND attribute_not_exists(#own) AND #oa = :oa) OR (#st = :half AND #lease <= :now) "
                     "OR (#st = :half AND #own = :me)"},
    [FLEET_RENEW] = {"SET #lease = :lease, #exp = :exp", "#st = :half AND #own = :me AND #oa = :oa"},
    [FLEET_RELEASE] = {"SET #st = :open, #exp = :exp REMOVE #own, #lease", "#st = :half AND #own = :me AND #oa = :oa"},
    /* the marker alone, unconditionally; where there is no item, Powertools' CLOSED item with it */
    [FLEET_SHADOW] = {"SET #shst = :shst, #shsince = :shsince, #shhost = :me, #st = if_not_exists(#st, :closed), "
                      "#fc = if_not_exists(#fc, :zero), #exp = if_not_exists(#exp, :exp)", NULL},
};
static const char open_without_deadline[] =
    "SET #st = :open, #fc = :fc, #oa = :oa, #exp = :exp REMOVE #own, #lease, #until, #until_of";

/* Does expression e name placeholder p (":oa", "#own")? */
static bool names_placeholder(const char *e, const char *p)
{
    size_t n = strlen(p);
    for (const char *at = strstr(e, p); at != NULL; at = strstr(at + 1, p))
        if (at[n] != '_' && !(at[n] >= 'a' && at[n] <= 'z'))
            return true;
    return false;
}

static json_t *write_body(const struct fleet_transport *t, const struct fleet_write *w, int64_t now)
{
    const char *u = w->kind == FLEET_OPEN && w->open_until == 0 ? open_without_deadline : write_exprs[w->kind].update;
    const char *c = write_exprs[w->kind].condition;
    const struct { const char *ph, *attr; } attrs[] = {
        {"#pk", t->o.pk}, {"#st", t->o.a_state}, {"#fc", t->o.a_fc}, {"#oa", t->o.a_oa},
        {"#own", t->o.a_owner}, {"#lease", t->o.a_lease}, {"#exp", t->o.a_exp}, {"#until", t->o.a_until},
        {"#until_of", t->o.a_until_of}, {"#shst", t->layout.shadow_state}, {"#shsince", t->layout.shadow_since},
        {"#shhost", t->layout.shadow_host},
    };
    const struct { const char *ph; json_t *v; } vals[] = {
        {":open", S("OPEN")}, {":closed", S("CLOSED")}, {":half", S("HALF_OPEN")}, {":zero", N(0)},
        {":fc", N(w->failure_count)}, {":oa", N(w->opened_at)}, {":me", S(w->owner)}, {":now", N(now)},
        {":lease", N(now + w->lease_s)}, {":exp", N(now + (int64_t)w->recovery_s + FLEET_TTL_MARGIN_S)},
        {":until", N(w->open_until)}, {":shst", S(cb__state_name(w->shadow_state))}, {":shsince", N(w->shadow_since)},
    };
    json_t *names = json_object(), *values = json_object();
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++)
        if (names_placeholder(u, attrs[i].ph) || (c != NULL && names_placeholder(c, attrs[i].ph)))
            json_object_set_new(names, attrs[i].ph, json_string(attrs[i].attr));
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        if (names_placeholder(u, vals[i].ph) || (c != NULL && names_placeholder(c, vals[i].ph)))
            json_object_set_new(values, vals[i].ph, vals[i].v);
        else
            json_decref(vals[i].v);
    }
    json_t *body = json_pack("{s:s, s:o, s:s, s:o, s:o, s:s}", "TableName", t->o.table, "Key", key_json(t, w->name),
                             "UpdateExpression", u, "ExpressionAttributeNames", names, "ExpressionAttributeValues",
                             values, "ReturnValues", "ALL_NEW");
    if (body != NULL && c != NULL && json_object_set_new(body, "ConditionExpression", json_string(c)) < 0) {
        json_decref(body);
        return NULL;
    }
    return body;
}

#undef S
#undef N

/* ---- items --------------------------------------------------------------------------------- */

/* An item about circuit asked (its key must say so) into a: OK or INVALID. */
static void item_answer(const struct fleet_transport *t, const json_t *item, const char *asked,
                        struct fleet_answer *a, char *why, size_t size)
{
    struct cbd_ddb_item it;
    char q[200];
    int rc = cbd_ddb_item_decode(&t->layout, item, &it, why, size);
    if (it.name_len > 0 && (it.name_len != strlen(asked) || memcmp(it.name, asked, it.name_len) != 0)) {
        snprintf(why, size, "its key '%s' is not the key asked for", fleet_quote(it.name, it.name_len, q, sizeof q));
        rc = -EBADMSG;
    }
    if (rc < 0) {
        *a = (struct fleet_answer){.status = FLEET_INVALID, .why = why};
        return;
    }
    a->status = FLEET_OK;
    a->item = (struct fleet_item){.exists = !it.marker_only, .state = it.state, .failure_count = it.failure_count,
                                  .opened_at = it.opened_at, .lease_expiry = it.lease_expiry,
                                  .open_until = it.open_until, .open_until_of = it.open_until_of,
                                  .shadow = it.shadow, .shadow_invalid = it.shadow_invalid};
    memcpy(a->item.owner, it.owner, sizeof a->item.owner);
}

/* ---- answers -------------------------------------------------------------------------------- */

/* A GetItem's answer (a read, a read-back after a write, or a probe). */
static void got_item(struct ddb_req *q, const struct cbd_aws_response *r)
{
    struct fleet_transport *t = q->t;
    struct fleet_answer a = {.status = FLEET_ABSENT};
    char why[400];
    json_t *root, *item;
    if (cbd_ddb_answer_get(r->body, r->body_len, &root, &item) < 0) {
        malformed(t, "a %s answer that is not DynamoDB JSON", "GetItem");
        answer_error(q, -EIO, "a GetItem answer that is not DynamoDB JSON");
        return;
    }
    if (item != NULL)
        item_answer(t, item, q->name, &a, why, sizeof why);
    if (q->kind == Q_READBACK) {
        if (a.status == FLEET_ABSENT)
            a.status = FLEET_OK; /* a write's answer: the item as stored, here none */
        a.applied = q->applied;
        a.at_s = q->now;
    }
    answer(q, &a);
    json_decref(root);
}

/* Read the item back consistently: the write's answer held none. */
static void read_back(struct ddb_req *q, bool applied)
{
    struct ddb_req *b = req_new(q->t, Q_READBACK, "GetItem", get_body(q->t, q->name, true));
    if (b == NULL) {
        answer_error(q, -EIO, "out of memory reading the item back");
        return;
    }
    memcpy(b->name, q->name, sizeof b->name);
    b->w = q->w;
    b->w.name = b->name;
    b->now = q->now;
    b->applied = applied;
    b->wcb = q->wcb;
    b->arg = q->arg;
    req_free(q);
    resend(b);
}

/* An UpdateItem that applied: ALL_NEW holds the item as stored. */
static void written(struct ddb_req *q, const struct cbd_aws_response *r)
{
    char why[400];
    json_t *root = json_loadb(r->body, r->body_len, JSON_ALLOW_NUL, NULL);
    json_t *item = json_object_get(root, "Attributes");
    if (!json_is_object(item)) {
        json_decref(root);
        read_back(q, true);
        return;
    }
    struct fleet_answer a = {.applied = true, .at_s = q->now};
    item_answer(q->t, item, q->name, &a, why, sizeof why);
    answer(q, &a);
    json_decref(root);
}

static size_t batch_index(const struct ddb_req *q, const char *name, size_t len)
{
    for (size_t i = 0; i < q->n; i++)
        if (strlen(q->names[i]) == len && memcmp(q->names[i], name, len) == 0)
            return i;
    return SIZE_MAX;
}

static void batch_retry_due(uv_timer_t *tm);

/* The items of a batch answer, each to the name it is about: false if one
 * of them could not even say which (its key is unreadable). */
static bool batch_items(struct ddb_req *q, json_t *items)
{
    struct fleet_transport *t = q->t;
    char why[400], qn[200];
    bool readable = true;
    size_t i;
    json_t *v;
    json_array_foreach(items, i, v) {
        struct cbd_ddb_item it;
        struct fleet_answer a;
        cbd_ddb_item_decode(&t->layout, v, &it, why, sizeof why);
        size_t at = it.name_len > 0 ? batch_index(q, it.name, it.name_len) : SIZE_MAX;
        if (it.name_len == 0) {
            readable = false;
            malformed(t, "an item whose key cannot be read: %s", why);
        } else if (at == SIZE_MAX || !q->pending[at]) {
            snprintf(why, sizeof why, "an item about '%s', which was %s",
                     fleet_quote(it.name, it.name_len, qn, sizeof qn), at == SIZE_MAX ? "not asked for" : "answered already");
            malformed(t, "%s", why);
        } else {
            item_answer(t, v, q->names[at], &a, why, sizeof why);
            q->pending[at] = false;
            q->rcb(q->arg, q->names[at], &a);
        }
    }
    return readable;
}

/* Marks again[] the names DynamoDB left unprocessed; how many. */
static size_t batch_unprocessed(struct ddb_req *q, json_t *keys, bool *again)
{
    char name[CB_NAME_MAX + 1], why[400];
    size_t i, len, at, n = 0;
    json_t *v;
    json_array_foreach(keys, i, v) {
        if (cbd_ddb_key_decode(&q->t->layout, v, name, sizeof name, &len, why, sizeof why) == 0 &&
            (at = batch_index(q, name, len)) != SIZE_MAX && q->pending[at] && !again[at]) {
            again[at] = true;
            n++;
        }
    }
    q->t->unprocessed_keys += n;
    return n;
}

/* The names still pending go again later, with backoff (up to 5 tries). */
static void batch_again(struct ddb_req *q)
{
    struct fleet_transport *t = q->t;
    if (q->attempt + 1 >= UNPROCESSED_ATTEMPTS) {
        answer_error(q, -EIO, "keys still unprocessed after 5 BatchGetItem tries");
        return;
    }
    json_t *keys = json_array();
    for (size_t i = 0; i < q->n; i++)
        if (q->pending[i])
            json_array_append_new(keys, key_json(t, q->names[i]));
    q->body = json_pack("{s:{s:{s:o, s:b}}}", "RequestItems", t->o.table, "Keys", keys, "ConsistentRead",
                        t->o.consistent);
    q->due_ms = uv_now(t->loop) + cbd_aws_backoff_ms(q->attempt++, 50, 1000);
    q->next = t->batches;
    t->batches = q;
    uv_timer_start(&t->batch_timer, batch_retry_due, 0, 0);
}

/* A BatchGetItem's answer: each item to its name; the names left
 * unprocessed are asked again later; the rest have no item (or, if an item
 * of the answer was unreadable, no answer). */
static void got_batch(struct ddb_req *q, const struct cbd_aws_response *r)
{
    struct fleet_transport *t = q->t;
    json_t *root, *items, *unproc;
    bool *again = calloc(q->n ? q->n : 1, sizeof *again);
    if (again == NULL || cbd_ddb_answer_batch(r->body, r->body_len, t->o.table, &root, &items, &unproc) < 0) {
        free(again);
        malformed(t, "a %s answer that is not DynamoDB JSON", "BatchGetItem");
        answer_error(q, -EIO, "a BatchGetItem answer that is not DynamoDB JSON");
        return;
    }
    bool readable = batch_items(q, items);
    size_t left = batch_unprocessed(q, unproc, again);
    json_decref(root);
    struct fleet_answer none = readable ? (struct fleet_answer){.status = FLEET_ABSENT}
                                        : (struct fleet_answer){.status = FLEET_ERROR, .err = -EIO,
                                                                .why = "an item of the answer could not be read"};
    for (size_t i = 0; i < q->n; i++) {
        if (q->pending[i] && !again[i]) {
            q->pending[i] = false;
            q->rcb(q->arg, q->names[i], &none);
        }
    }
    free(again);
    if (left == 0 || t->closing)
        req_free(q);
    else
        batch_again(q);
}

/* The batches waiting to retry that are due go again; the timer waits for the rest. */
static void batch_retry_due(uv_timer_t *tm)
{
    struct fleet_transport *t = tm->data;
    uint64_t now = uv_now(t->loop), next = UINT64_MAX;
    struct ddb_req **pp = &t->batches, *due = NULL;
    while (*pp != NULL) {
        struct ddb_req *q = *pp;
        if (q->due_ms <= now) {
            *pp = q->next;
            q->next = due;
            due = q;
        } else {
            next = q->due_ms < next ? q->due_ms : next;
            pp = &q->next;
        }
    }
    if (next != UINT64_MAX)
        uv_timer_start(&t->batch_timer, batch_retry_due, next - now, 0);
    resend_all(t, due);
}

static int send_gets(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg);

/* IAM refuses BatchGetItem: GetItem per circuit from now on. */
static void batch_denied(struct ddb_req *q, const struct cbd_aws_response *r)
{
    struct fleet_transport *t = q->t;
    const char *names[BATCH_MAX];
    size_t n = 0;
    if (!t->batch_denied)
        cbd_log(CBD_LOG_WARN, "dynamodb: BatchGetItem on table %s is denied (%s): reading each circuit with GetItem "
                "instead; allow dynamodb:BatchGetItem to read up to 100 circuits a request (docs/store-dynamodb.md)",
                t->o.table, r->why);
    t->batch_denied = true;
    for (size_t i = 0; i < q->n; i++)
        if (q->pending[i])
            names[n++] = q->names[i];
    int sent = send_gets(t, names, n, q->rcb, q->arg);
    /* the first names sent are answered by their GetItem; any left, here */
    for (size_t i = 0; i < q->n && sent > 0; i++) {
        if (q->pending[i]) {
            q->pending[i] = false;
            sent--;
        }
    }
    answer_error(q, -EIO, "BatchGetItem denied and GetItem could not be sent");
}

static void on_answer(void *arg, const struct cbd_aws_response *r)
{
    struct ddb_req *q = arg;
    struct fleet_transport *t = q->t;
    if (r->cancelled || t->closing) { /* nothing is answered once close() is called */
        req_free(q);
        return;
    }
    bool ok = r->status >= 200 && r->status <= 299;
    if (q->kind == Q_PROBE) {
        if (!ok) {
            answer_error(q, -EIO, r->why);
            return;
        }
        char why[sizeof t->o.table + sizeof t->o.endpoint + 32];
        snprintf(why, sizeof why, "table %s at %s reachable", t->o.table, t->o.endpoint);
        t->probing = false;
        t->up = true;
        req_free(q);
        t->cbs.up(t->cbs.arg, why);
    } else if (ok) {
        if (q->kind == Q_BATCH)
            got_batch(q, r);
        else if (q->kind == Q_WRITE)
            written(q, r);
        else
            got_item(q, r);
    } else if (q->kind == Q_WRITE && strcmp(r->error_code, "ConditionalCheckFailedException") == 0) {
        read_back(q, false);
    } else if (q->kind == Q_BATCH && strcmp(r->error_code, "AccessDeniedException") == 0) {
        batch_denied(q, r);
    } else if (r->status == 400 && (strcmp(r->error_code, "ValidationException") == 0 ||
                                    strcmp(r->error_code, "SerializationException") == 0)) {
        cbd_log(CBD_LOG_ERROR, "dynamodb: %s refused (check the table's key schema and the URI's attribute "
                "names): %s", q->op, r->why);
        answer_error(q, -EINVAL, r->why);
    } else {
        went_down(t, -EIO, r->why);
        answer_error(q, -ENOTCONN, r->why);
    }
}

/* ---- the transport's ops ----------------------------------------------------------------------- */

/* Send q for a call of the fleet layer: 0, or -errno (q freed, and down()
 * follows on the next loop turn when the credentials failed). */
static int send_for_caller(struct ddb_req *q)
{
    const char *why = "";
    if (q == NULL)
        return -ENOMEM;
    int rc = send_req(q, &why);
    if (rc < 0) {
        if (rc != -ENOMEM)
            defer_down(q->t, why);
        req_free(q);
    }
    return rc;
}

static int send_gets(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg)
{
    for (size_t i = 0; i < n; i++) {
        struct ddb_req *q = req_new(t, Q_GET, "GetItem", get_body(t, names[i], t->o.consistent));
        if (q != NULL) {
            snprintf(q->name, sizeof q->name, "%s", names[i]);
            q->rcb = cb;
            q->arg = arg;
        }
        int rc = send_for_caller(q);
        if (rc < 0)
            return i > 0 ? (int)i : rc;
    }
    return (int)n;
}

static int dd_read(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg)
{
    if (n == 1 || t->batch_denied)
        return send_gets(t, names, n, cb, arg);
    json_t *keys = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(keys, key_json(t, names[i]));
    struct ddb_req *q = req_new(t, Q_BATCH, "BatchGetItem",
                                json_pack("{s:{s:{s:o, s:b}}}", "RequestItems", t->o.table, "Keys", keys,
                                          "ConsistentRead", t->o.consistent));
    if (q != NULL) {
        q->names = calloc(n, sizeof *q->names);
        q->pending = calloc(n, sizeof *q->pending);
        if (q->names == NULL || q->pending == NULL) {
            req_free(q);
            return -ENOMEM;
        }
        q->n = n;
        for (size_t i = 0; i < n; i++) {
            snprintf(q->names[i], sizeof q->names[i], "%s", names[i]);
            q->pending[i] = true;
        }
        q->rcb = cb;
        q->arg = arg;
    }
    int rc = send_for_caller(q);
    return rc < 0 ? rc : (int)n;
}

static int dd_write(struct fleet_transport *t, const struct fleet_write *w, fleet_write_cb *cb, void *arg)
{
    int64_t now = (int64_t)time(NULL);
    struct ddb_req *q = req_new(t, Q_WRITE, "UpdateItem", write_body(t, w, now));
    if (q != NULL) {
        snprintf(q->name, sizeof q->name, "%s", w->name);
        q->w = *w;
        q->w.name = q->name;
        q->now = now;
        q->wcb = cb;
        q->arg = arg;
    }
    return send_for_caller(q);
}

static void dd_connect(struct fleet_transport *t)
{
    const char *why = "";
    if (t->probing || t->closing)
        return;
    struct ddb_req *q = req_new(t, Q_PROBE, "GetItem", get_body(t, PROBE_KEY, false));
    int rc = q != NULL ? send_req(q, &why) : -ENOMEM;
    if (rc < 0) {
        if (q != NULL)
            req_free(q);
        defer_down(t, rc == -ENOMEM ? "out of memory" : why);
        return;
    }
    t->probing = true;
}

static const char *dd_owner(const struct fleet_transport *t)
{
    return t->o.owner;
}

static void dd_settings(const struct fleet_transport *t, struct fleet_settings *out)
{
    *out = (struct fleet_settings){.log_name = "dynamodb", .sync_ms = t->o.sync_ms, .read_budget = t->o.read_budget,
                                   .read_batch = BATCH_MAX,
                                   .backoff_base_ms = 200, .backoff_cap_ms = t->o.backoff_max_ms,
                                   .close_wait_ms = t->o.timeout_ms * t->o.attempts + 2000};
    snprintf(out->where, sizeof out->where, "table %.190s", t->o.table);
}

static void dd_stats(const struct fleet_transport *t, void (*emit)(void *, const char *, uint64_t), void *arg)
{
    struct cbd_aws_http_stats h = {0};
    if (t->http != NULL)
        cbd_aws_http_stats(t->http, &h);
    emit(arg, "requests", h.requests);
    emit(arg, "retries", h.retries);
    emit(arg, "throttles", h.throttles);
    emit(arg, "timeouts", h.timeouts);
    emit(arg, "malformed", t->malformed);
    emit(arg, "unprocessed_keys", t->unprocessed_keys);
    emit(arg, "batch_denied", t->batch_denied);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct fleet_transport *t = h->data;
    if (--t->handles > 0)
        return;
    void (*done)(void *) = t->close_done;
    void *arg = t->close_arg;
    free(t);
    done(arg);
}

static void on_http_closed(void *arg)
{
    struct fleet_transport *t = arg;
    t->http = NULL;
    uv_close((uv_handle_t *)&t->defer, on_handle_closed);
    uv_close((uv_handle_t *)&t->batch_timer, on_handle_closed);
}

static void dd_close(struct fleet_transport *t, void (*done)(void *arg), void *arg)
{
    struct ddb_req *lists[] = {t->waiting, t->batches};
    t->closing = true;
    t->close_done = done;
    t->close_arg = arg;
    uv_timer_stop(&t->defer);
    uv_timer_stop(&t->batch_timer);
    for (size_t i = 0; i < 2; i++) {
        while (lists[i] != NULL) {
            struct ddb_req *q = lists[i];
            lists[i] = q->next;
            req_free(q);
        }
    }
    t->waiting = t->batches = NULL;
    cbd_aws_credentials_free(t->creds);
    t->creds = NULL;
    t->handles = 2;
    cbd_aws_http_close(t->http, on_http_closed, t); /* what is in flight comes back cancelled */
}

/* The URI as create() reads it, through the same parser, without creating
 * anything: the region and endpoint are resolved as create() resolves them
 * (environment and the AWS config file), so an error here is the one
 * create() would give. The credential chain is create()'s alone. */
static int dd_check_uri(const char *uri, char *why, size_t size)
{
    struct cbd_ddb_opts o;
    const char *msg = uri != NULL ? cbd_ddb_uri_parse(&o, uri) : "no dynamodb URI given";
    if (msg == NULL)
        return 0;
    snprintf(why, size, "%s", msg);
    return -EINVAL;
}

static int dd_create(struct fleet_transport **out, uv_loop_t *loop, const char *uri, const char *owner_hint,
                     const struct fleet_transport_cbs *cbs, char *why, size_t size)
{
    char cerr[256];
    struct fleet_transport *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(why, size, "out of memory");
        return -ENOMEM;
    }
    const char *msg = cbd_ddb_uri_parse(&t->o, uri);
    int rc = msg ? -EINVAL : cbd_aws_http_create(&t->http, loop);
    if (msg != NULL)
        snprintf(why, size, "%s", msg);
    else if (rc < 0)
        snprintf(why, size, "out of memory");
    else if ((rc = cbd_aws_credentials_create(&t->creds, t->http, t->o.region, on_creds_ready, t, cerr,
                                              sizeof cerr)) < 0)
        snprintf(why, size, "dynamodb credentials: %s", cerr);
    if (rc < 0) {
        if (t->http)
            cbd_aws_http_close(t->http, NULL, NULL);
        free(t);
        return rc;
    }
    t->loop = loop;
    t->cbs = *cbs;
    if (t->o.owner[0] == '\0')
        snprintf(t->o.owner, sizeof t->o.owner, "%s", owner_hint);
    t->layout = (struct cbd_ddb_layout){
        .pk = t->o.pk, .sk = t->o.sk, .static_pk = t->o.static_pk, .state = t->o.a_state, .failure_count = t->o.a_fc,
        .opened_at = t->o.a_oa, .owner = t->o.a_owner, .lease = t->o.a_lease, .expiration = t->o.a_exp,
        .open_until = t->o.a_until, .open_until_of = t->o.a_until_of, .shadow_state = CBD_DDB_SHADOW_STATE,
        .shadow_since = CBD_DDB_SHADOW_SINCE, .shadow_host = CBD_DDB_SHADOW_HOST};
    uv_timer_init(loop, &t->defer);
    uv_timer_init(loop, &t->batch_timer);
    t->defer.data = t->batch_timer.data = t;
    cbd_log(CBD_LOG_INFO, "dynamodb: table %s at %s (region %s, %s keys%s%s), credentials: %s, probe owner id %s",
            t->o.table, t->o.endpoint, t->o.region, t->o.sk[0] ? "composite" : "simple",
            t->o.sk[0] ? ", partition key value " : "", t->o.sk[0] ? t->o.static_pk : "",
            cbd_aws_credentials_source(t->creds)[0] ? cbd_aws_credentials_source(t->creds) : "none found yet",
            t->o.owner);
    *out = t;
    return 0;
}

const struct fleet_transport_ops cbd_dynamodb_transport_ops = {
    .scheme = "dynamodb", .check_uri = dd_check_uri, .create = dd_create, .owner = dd_owner,
    .settings = dd_settings, .connect = dd_connect, .read = dd_read, .write = dd_write, .list = NULL,
    .stats = dd_stats, .close = dd_close,
};

FLEET_STORE_DEFINE(cbd_store_dynamodb_ops, "dynamodb", cbd_dynamodb_transport_ops, dd_check_uri);
