/*
 * test_fleet_contract.c - each transport encodes the one write rule.
 *
 * fleet_write_applies / fleet_write_result (persistence/fleet.c) state what
 * a conditional write does; the redis transport encodes it as a Lua script
 * and the dynamodb transport as ConditionExpressions. This test drives each
 * transport alone (no fleet layer) against a real redis-server and a real
 * dynalite: thousands of seeded random cases, each a prior item written raw
 * into the store (or none), then one random write through the transport,
 * and checks that the answer's `applied` is what fleet_write_applies says
 * at the store time the transport reports, and that the item afterwards -
 * in the answer, and as a read through the transport finds it - is what
 * fleet_write_result (or, refused, the prior item) says. Leases are drawn
 * around the store's clock so that lapsed/live boundaries are hit, and
 * openings from three neighbouring seconds so that older/same/newer are.
 * A few priors are garbage (an unknown state): no write may change them,
 * and the answer says the item is invalid.
 *
 * The seed is printed; CBD_CONTRACT_SEED replays a run, CBD_CONTRACT_CASES
 * sets the number of cases per backend (default 3000).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "../dynamo/ddb_test_support.h"
#include "fleet.h"
#include "dynamodb_table.h"
#include "store_dynamodb.h"
#include "store_redis.h"

#define TABLE "cbd-contract"
#define ME "contract-me"
#define OTHER "contract-other"
#define BASE 1700000000 /* openings: BASE, BASE + 1, BASE + 2 */

TestSuite(fleet_contract, .init = ddb_test_env, .timeout = 600);

/* ---- the seeded generator --------------------------------------------------------------- */

static uint64_t rng;

static uint32_t pick(uint32_t n)
{
    rng ^= rng << 13; /* xorshift64 */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static uint64_t seed_of_run(void)
{
    const char *env = getenv("CBD_CONTRACT_SEED");
    uint64_t seed = env != NULL ? strtoull(env, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    return seed != 0 ? seed : 1;
}

static unsigned cases_of_run(void)
{
    const char *env = getenv("CBD_CONTRACT_CASES");
    return env != NULL && atoi(env) > 0 ? (unsigned)atoi(env) : 3000;
}

/* ---- a case -------------------------------------------------------------------------------- */

struct contract_case {
    struct fleet_item before; /* exists false: no item */
    bool garbage;             /* the prior item is not a circuit (state BANANA) */
    int64_t stored_until;     /* before.open_until_of != 0: the open_until the prior item holds (what a
                                 decoder reads of it, before.open_until, is 0 when it is stale) */
    struct fleet_write w;
};

/* A random case; leases around now (the store's second). */
static struct contract_case random_case(const char *name, int64_t now)
{
    struct contract_case k = {0};
    int shape = (int)pick(20);
    struct fleet_item *b = &k.before;
    if (shape == 0) {
        k.garbage = true;
    } else if (shape <= 3) {
        b->exists = false;
    } else {
        b->exists = true;
        b->state = shape <= 6 ? CB_CLOSED : shape <= 11 ? CB_OPEN : CB_HALF_OPEN;
        if (b->state != CB_CLOSED) {
            b->opened_at = BASE + pick(3);
            b->failure_count = pick(10);
        }
        if (b->state == CB_HALF_OPEN) {
            snprintf(b->owner, sizeof b->owner, "%s", pick(2) ? ME : OTHER);
            static const int64_t around[] = {-100, -2, -1, 0, 1, 2, 100};
            b->lease_expiry = now + around[pick(7)];
        }
        /* a backoff deadline: none, this opening's, or one a Powertools reopen left behind */
        int deadline = (int)pick(3);
        if (deadline > 0) {
            b->open_until_of = deadline == 1 && b->state != CB_CLOSED ? b->opened_at : BASE - 5;
            k.stored_until = b->open_until_of + 60 + pick(100);
            b->open_until = b->open_until_of == b->opened_at ? k.stored_until : 0;
        }
    }
    k.w = (struct fleet_write){.kind = (enum fleet_write_kind)pick(5), .name = name, .opened_at = BASE + pick(3),
                               .failure_count = 1 + pick(9), .lease_s = pick(2) ? 1 : 30, .owner = ME,
                               .recovery_s = 30};
    /* every kind carries one: only an OPEN may write it */
    k.w.open_until = pick(2) ? 0 : k.w.opened_at + 30 + pick(100);
    return k;
}

static bool same_item(const struct fleet_item *a, const struct fleet_item *b)
{
    if (!a->exists || !b->exists)
        return a->exists == b->exists;
    return a->state == b->state && a->failure_count == b->failure_count && a->opened_at == b->opened_at &&
           strcmp(a->owner, b->owner) == 0 && a->lease_expiry == b->lease_expiry && a->open_until == b->open_until &&
           a->open_until_of == b->open_until_of;
}

static const char *show(const struct fleet_item *it, char *buf, size_t size)
{
    if (!it->exists)
        snprintf(buf, size, "no item");
    else
        snprintf(buf, size, "%s fc=%u opened_at=%lld owner='%s' lease=%lld open_until=%lld of %lld",
                 cb__state_name(it->state), it->failure_count, (long long)it->opened_at, it->owner,
                 (long long)it->lease_expiry, (long long)it->open_until, (long long)it->open_until_of);
    return buf;
}

/* ---- a transport on a loop ----------------------------------------------------------------- */

static uv_loop_t loop;

static struct transport_under_test {
    const struct fleet_transport_ops *ops;
    struct fleet_transport *t;
    bool up, down, closed;
    char why[512];
    struct fleet_answer answer;
    bool answered;
    char answer_why[512];
} tr;

static void on_up(void *arg, const char *why)
{
    (void)arg;
    (void)why;
    tr.up = true;
}

static void on_down(void *arg, int err, const char *why)
{
    (void)arg;
    (void)err;
    tr.down = true;
    snprintf(tr.why, sizeof tr.why, "%s", why);
}

static void on_changed(void *arg, const char *name)
{
    (void)arg;
    (void)name;
}

static void keep_answer(const struct fleet_answer *a)
{
    tr.answer = *a;
    snprintf(tr.answer_why, sizeof tr.answer_why, "%s", a->why ? a->why : "");
    tr.answer.why = tr.answer_why;
    tr.answered = true;
}

static void on_written(void *arg, const struct fleet_answer *a)
{
    (void)arg;
    keep_answer(a);
}

static void on_read(void *arg, const char *name, const struct fleet_answer *a)
{
    (void)arg;
    (void)name;
    keep_answer(a);
}

static void on_closed(void *arg)
{
    (void)arg;
    tr.closed = true;
}

static bool run_until(volatile bool *flag)
{
    int64_t end = tsup_now_ms() + 10000;
    while (!*flag && tsup_now_ms() < end)
        uv_run(&loop, UV_RUN_ONCE);
    return *flag;
}

static void link_open(const struct fleet_transport_ops *ops, const char *uri)
{
    char why[512];
    struct fleet_transport_cbs cbs = {.up = on_up, .down = on_down, .changed = on_changed};
    memset(&tr, 0, sizeof tr);
    tr.ops = ops;
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(ops->create(&tr.t, &loop, uri, ME, &cbs, why, sizeof why), 0, "%s: %s", uri, why);
    cr_assert_str_eq(ops->owner(tr.t), ME);
    ops->connect(tr.t);
    cr_assert(run_until(&tr.up), "the transport never came up: %s", tr.why);
}

static void link_close(void)
{
    tr.ops->close(tr.t, on_closed, NULL);
    cr_assert(run_until(&tr.closed));
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
}

static struct fleet_answer link_write(const struct fleet_write *w)
{
    tr.answered = false;
    cr_assert_eq(tr.ops->write(tr.t, w, on_written, NULL), 0);
    cr_assert(run_until(&tr.answered), "the write was never answered");
    return tr.answer;
}

static struct fleet_answer link_read(const char *name)
{
    tr.answered = false;
    cr_assert_eq(tr.ops->read(tr.t, &name, 1, on_read, NULL), 1);
    cr_assert(run_until(&tr.answered), "the read was never answered");
    return tr.answer;
}

/* ---- the contract ----------------------------------------------------------------------------- */

/* Writes the prior item raw into the store. */
typedef void put_prior_fn(const char *name, const struct contract_case *k);

/* Runs n cases through the open tr; put writes each prior. */
static void run_cases(const char *backend, unsigned n, put_prior_fn *put)
{
    char a[300], b[300], c[300];
    unsigned applied = 0, refused = 0, invalid = 0;
    for (unsigned i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "case-%u", i);
        struct contract_case k = random_case(name, (int64_t)time(NULL));
        put(name, &k);
        struct fleet_answer ans = link_write(&k.w);
        const char *what = fleet_write_kind_name(k.w.kind);
        if (k.garbage) {
            cr_assert(ans.status == FLEET_INVALID || (ans.status == FLEET_OK && !ans.applied),
                      "%s case %u: %s over garbage: status %d applied %d", backend, i, what, ans.status, ans.applied);
            struct fleet_answer r = link_read(name);
            cr_assert_eq(r.status, FLEET_INVALID, "%s case %u: %s changed a garbage item (%s)", backend, i, what,
                         show(&r.item, a, sizeof a));
            invalid++;
            continue;
        }
        cr_assert_eq(ans.status, FLEET_OK, "%s case %u: %s: status %d (%s)", backend, i, what, ans.status,
                     ans.why ? ans.why : "");
        cr_assert_gt(ans.at_s, 0, "%s: the answer says no store time", backend);
        bool want = fleet_write_applies(&k.before, &k.w, ans.at_s);
        struct fleet_item after = k.before;
        if (want)
            fleet_write_result(&k.before, &k.w, ans.at_s, &after);
        cr_assert_eq(ans.applied, want,
                     "%s case %u (seed above): %s opened_at=%lld lease_s=%u open_until=%lld over %s at store "
                     "second %lld: the store %s it, the rule %s it",
                     backend, i, what, (long long)k.w.opened_at, k.w.lease_s, (long long)k.w.open_until,
                     show(&k.before, a, sizeof a),
                     (long long)ans.at_s, ans.applied ? "applied" : "refused", want ? "applies" : "refuses");
        cr_assert(same_item(&ans.item, &after), "%s case %u: %s over %s: the store holds %s, the rule says %s",
                  backend, i, what, show(&k.before, a, sizeof a), show(&ans.item, b, sizeof b),
                  show(&after, c, sizeof c));
        if (i % 8 == 0) { /* and a read finds what the answer said */
            struct fleet_answer r = link_read(name);
            struct fleet_item seen = r.status == FLEET_ABSENT ? (struct fleet_item){0} : r.item;
            cr_assert(r.status != FLEET_INVALID && r.status != FLEET_ERROR && same_item(&seen, &after),
                      "%s case %u: read %s after %s", backend, i, show(&seen, a, sizeof a), what);
        }
        want ? applied++ : refused++;
    }
    fprintf(stderr, "fleet_contract: %s: %u cases (%u applied, %u refused, %u over garbage)\n", backend, n, applied,
            refused, invalid);
}

/* ---- redis --------------------------------------------------------------------------------------- */

static struct tsup_redis redis;
static redisContext *raw;

static void redis_ok(redisReply *r)
{
    cr_assert(r != NULL && r->type != REDIS_REPLY_ERROR, "redis: %s", r ? r->str : raw->errstr);
    freeReplyObject(r);
}

static void redis_prior(const char *name, const struct contract_case *k)
{
    char key[64], fc[16], oa[24], lease[24];
    snprintf(key, sizeof key, "k:c:{%s}", name);
    redis_ok(redisCommand(raw, "DEL %s", key));
    const struct fleet_item *b = &k->before;
    if (k->garbage) {
        redis_ok(redisCommand(raw, "HSET %s state BANANA opened_at %d", key, BASE));
        return;
    }
    if (!b->exists)
        return;
    snprintf(fc, sizeof fc, "%u", b->failure_count);
    snprintf(oa, sizeof oa, "%lld", (long long)b->opened_at);
    snprintf(lease, sizeof lease, "%lld", (long long)b->lease_expiry);
    if (b->state == CB_CLOSED)
        redis_ok(redisCommand(raw, "HSET %s state CLOSED failure_count 0", key));
    else if (b->state == CB_OPEN)
        redis_ok(redisCommand(raw, "HSET %s state OPEN failure_count %s opened_at %s", key, fc, oa));
    else
        redis_ok(redisCommand(raw, "HSET %s state HALF_OPEN failure_count %s opened_at %s half_open_owner %s "
                                   "probe_lease_expiry %s", key, fc, oa, b->owner, lease));
    if (b->open_until_of != 0)
        redis_ok(redisCommand(raw, "HSET %s open_until %lld open_until_of %lld", key, (long long)k->stored_until,
                              (long long)b->open_until_of));
}

Test(fleet_contract, the_redis_script_is_the_write_rule)
{
    char uri[256];
    uint64_t seed = seed_of_run();
    rng = seed;
    fprintf(stderr, "fleet_contract: redis: seed %" PRIu64 " (CBD_CONTRACT_SEED=%" PRIu64 " replays it)\n", seed,
            seed);
    cr_assert_eq(tsup_redis_start(&redis), 0, "cannot start redis-server");
    raw = redisConnect("127.0.0.1", redis.port);
    cr_assert(raw != NULL && !raw->err);
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d?prefix=k:", redis.port);
    link_open(&cbd_redis_transport_ops, uri);
    run_cases("redis", cases_of_run(), redis_prior);
    link_close();
    redisFree(raw);
    tsup_redis_stop(&redis);
}

/* ---- dynamodb ------------------------------------------------------------------------------------- */

static struct dynalite db;

static void ddb_ok(json_t *r)
{
    cr_assert_eq(ddb_status(r), 200, "dynalite: %s", json_dumps(r, 0));
    json_decref(r);
}

static void dynamodb_prior(const char *name, const struct contract_case *k)
{
    const struct fleet_item *b = &k->before;
    ddb_ok(ddb_raw(db.port, "DeleteItem", "{\"TableName\":\"" TABLE "\",\"Key\":{\"id\":{\"S\":\"%s\"}}}", name));
    if (k->garbage) {
        ddb_ok(ddb_raw(db.port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"%s\"},"
                       "\"state\":{\"S\":\"BANANA\"},\"opened_at\":{\"N\":\"%d\"}}}", name, BASE));
        return;
    }
    if (!b->exists)
        return;
    if (b->state == CB_CLOSED)
        ddb_ok(ddb_raw(db.port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"%s\"},"
                       "\"state\":{\"S\":\"CLOSED\"},\"failure_count\":{\"N\":\"0\"}}}", name));
    else if (b->state == CB_OPEN)
        ddb_ok(ddb_raw(db.port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"%s\"},"
                       "\"state\":{\"S\":\"OPEN\"},\"failure_count\":{\"N\":\"%u\"},\"opened_at\":{\"N\":\"%lld\"}}}",
                       name, b->failure_count, (long long)b->opened_at));
    else
        ddb_ok(ddb_raw(db.port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"%s\"},"
                       "\"state\":{\"S\":\"HALF_OPEN\"},\"failure_count\":{\"N\":\"%u\"},\"opened_at\":{\"N\":\"%lld\"},"
                       "\"half_open_owner\":{\"S\":\"%s\"},\"probe_lease_expiry\":{\"N\":\"%lld\"}}}",
                       name, b->failure_count, (long long)b->opened_at, b->owner, (long long)b->lease_expiry));
    if (b->open_until_of != 0)
        ddb_ok(ddb_raw(db.port, "UpdateItem", "{\"TableName\":\"" TABLE "\",\"Key\":{\"id\":{\"S\":\"%s\"}},"
                       "\"UpdateExpression\":\"SET cbd_open_until = :u, cbd_open_until_of = :o\","
                       "\"ExpressionAttributeValues\":{\":u\":{\"N\":\"%lld\"},\":o\":{\"N\":\"%lld\"}}}",
                       name, (long long)k->stored_until, (long long)b->open_until_of));
}

Test(fleet_contract, the_dynamodb_conditions_are_the_write_rule)
{
    char uri[256], err[512];
    uint64_t seed = seed_of_run();
    rng = seed;
    fprintf(stderr, "fleet_contract: dynamodb: seed %" PRIu64 " (CBD_CONTRACT_SEED=%" PRIu64 " replays it)\n", seed,
            seed);
    dynalite_start(&db, 0);
    snprintf(uri, sizeof uri, "dynamodb://" TABLE "?endpoint=%s&timeout_ms=2000", db.endpoint);
    int rc = dynamodb_table_create(uri, err, sizeof err);
    cr_assert(rc == 0 || rc == 1, "create-table: %s", err);
    link_open(&cbd_dynamodb_transport_ops, uri);
    run_cases("dynamodb", cases_of_run(), dynamodb_prior);
    link_close();
    dynalite_kill(&db);
}
