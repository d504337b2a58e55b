/*
 * test_store_redis.c - the redis store against a real redis-server.
 *
 * Each test starts its own redis-server on a free loopback port (no
 * persistence; tsup_redis), and drives two store instances ("hosts" A and
 * B, told apart by the URI's instance option) on one uv loop through the
 * ops table, as two daemons would. A blocking hiredis context inspects what
 * the store wrote.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "store_redis.h"
#include "tsup.h"
#include "tsup_store.h"

/* ---- a redis-server of our own (tsup_redis) ------------------------------------ */

static redisContext *srv_connect(const struct tsup_redis *r)
{
    struct timeval tv = {1, 0};
    return r->sock[0] ? redisConnectUnixWithTimeout(r->sock, tv) : redisConnectWithTimeout("127.0.0.1", r->port, tv);
}

/* redis-server without persistence, in this test's directory; extra is a
 * NULL-terminated list of more arguments. */
static void srv_init(struct tsup_redis *r, bool unix_socket, const char *const *extra)
{
    cr_assert_eq(tsup_redis_start_with(r, unix_socket, extra), 0, "cannot start redis-server");
}

/* HGET of a field of circuit name's hash (prefix t:) from the test's own
 * connection ("" if absent); the answer stays valid for three more calls. */
static const char *hget(const struct tsup_redis *r, const char *name, const char *field)
{
    static char out[4][128];
    static int n;
    char *v = out[n++ % 4];
    redisContext *c = srv_connect(r);
    cr_assert(c != NULL && !c->err);
    redisReply *rep = redisCommand(c, "HGET t:c:{%s} %s", name, field);
    cr_assert(rep != NULL);
    snprintf(v, sizeof out[0], "%s", rep->type == REDIS_REPLY_STRING ? rep->str : "");
    freeReplyObject(rep);
    redisFree(c);
    return v;
}

static void redis_do(const struct tsup_redis *r, const char *fmt, const char *a, const char *b)
{
    redisContext *c = srv_connect(r);
    cr_assert(c != NULL && !c->err);
    redisReply *rep = redisCommand(c, fmt, a, b);
    cr_assert(rep != NULL && rep->type != REDIS_REPLY_ERROR, "%s: %s", fmt, rep ? rep->str : "no reply");
    freeReplyObject(rep);
    redisFree(c);
}

/* ---- two hosts on one loop ------------------------------------------------------- */

static uv_loop_t loop;

/* Run the loop until cond holds (the stores only move when it runs). */
#define WAIT_FOR(cond, ms)                                                                  \
    cr_assert(tsup_wait_until((uv_run(&loop, UV_RUN_NOWAIT), (cond)), (ms)),                 \
              "timed out after %d ms waiting for %s", (int)(ms), #cond)

static void spin(int ms)
{
    tsup_wait_until((uv_run(&loop, UV_RUN_NOWAIT), false), ms);
}

static const char *uri_of(const struct tsup_redis *r, const char *instance, const char *extra)
{
    static char uri[2][512];
    static int n;
    char *u = uri[n++ % 2];
    if (r->sock[0])
        snprintf(u, 512, "unix://%s?prefix=t:&sync_ms=200&connect_timeout_ms=2000&command_timeout_ms=2000&instance=%s%s",
                 r->sock, instance, extra);
    else
        snprintf(u, 512,
                 "redis://127.0.0.1:%d?prefix=t:&sync_ms=200&connect_timeout_ms=2000&command_timeout_ms=2000&instance=%s%s",
                 r->port, instance, extra);
    return u;
}

static void host_open(struct tsup_store_host *h, const char *uri)
{
    memset(h, 0, sizeof *h);
    struct cbd_store_hooks hooks = tsup_store_hooks(h, &loop, NULL);
    const char *err = NULL;
    int rc = cbd_store_redis_ops.create(&h->s, uri, &hooks, &err);
    cr_assert(rc == 0, "create(%s): %s", uri, err ? err : "?");
    cbd_store_redis_ops.restore(h->s, tsup_store_restored, &h->done);
}

static void host_close(struct tsup_store_host *h)
{
    cbd_store_redis_ops.close(h->s, tsup_store_closed, &h->done);
    WAIT_FOR(h->done.closed, 5000);
}

static void setup(void)
{
    cr_assert(uv_loop_init(&loop) == 0);
}

static void teardown_loop(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    /* every handle the stores made is closed: the loop closes clean */
    cr_assert(uv_loop_close(&loop) == 0, "handles left open on the loop");
}

static const struct cbd_store_state *last_remote(const struct tsup_store_host *h, const char *name)
{
    return tsup_store_last_remote(h, name);
}

static bool remote_is(const struct tsup_store_host *h, const char *name, cb_state state)
{
    const struct cbd_store_state *st = last_remote(h, name);
    return st != NULL && st->state == state;
}

static struct cbd_store_state state_of(const char *name, cb_state state, int64_t opened_at)
{
    struct cbd_store_state st = {.state = state, .opened_at = opened_at, .failure_count = state == CB_OPEN ? 5 : 0};
    snprintf(st.name, sizeof st.name, "%s", name);
    return st;
}

static void trip(struct tsup_store_host *h, const char *name, int64_t opened_at)
{
    struct cbd_store_state st = state_of(name, CB_OPEN, opened_at);
    cbd_store_redis_ops.transition(h->s, &st, 0);
}

/* A counter of the store as cbd's stats show it (store_<name>), 0 if absent. */
static uint64_t store_stat(const struct tsup_store_host *h, const char *name)
{
    return tsup_store_stat(&cbd_store_redis_ops, h->s, name, NULL);
}

/* What the store counted as not its own: malformed answers, keys and
 * messages (the transport's) and invalid items (the fleet layer's). */
static uint64_t garbage(const struct tsup_store_host *h)
{
    return store_stat(h, "malformed") + store_stat(h, "invalid_items");
}

/* Two hosts online and tracking `name`. */
static void two_hosts(const struct tsup_redis *r, struct tsup_store_host *a, struct tsup_store_host *b, const char *name)
{
    host_open(a, uri_of(r, "A", ""));
    host_open(b, uri_of(r, "B", ""));
    WAIT_FOR(a->done.restored && b->done.restored && a->online && b->online, 5000);
    cr_assert(a->done.restore_rc == 0 && b->done.restore_rc == 0, "restore: %d %d (%s / %s)", a->done.restore_rc, b->done.restore_rc,
              a->why, b->why);
    cbd_store_redis_ops.track(a->s, name, NULL);
    cbd_store_redis_ops.track(b->s, name, NULL);
}

/* Two hosts tracking `name`; A trips it now and B sees it. The opening's time. */
static int64_t a_trips_and_b_sees(const struct tsup_redis *r, struct tsup_store_host *a, struct tsup_store_host *b, const char *name)
{
    int64_t t0 = time(NULL);
    two_hosts(r, a, b, name);
    trip(a, name, t0);
    WAIT_FOR(remote_is(b, name, CB_OPEN), 3000);
    return t0;
}

/* a_trips_and_b_sees, then A wins the election with lease_s. */
static int64_t a_holds_the_probe(const struct tsup_redis *r, struct tsup_store_host *a, struct tsup_store_host *b, const char *name,
                                 uint32_t lease_s)
{
    int64_t t0 = a_trips_and_b_sees(r, a, b, name);
    cbd_store_redis_ops.try_probe(a->s, name, t0, lease_s);
    WAIT_FOR(a->nprobe == 1, 3000);
    cr_assert(a->probe[0].granted);
    struct cbd_store_state st = state_of(name, CB_HALF_OPEN, t0);
    cbd_store_redis_ops.transition(a->s, &st, t0);
    return t0;
}

/* Closes the hosts (b may be NULL), then stops redis-server. */
static void hosts_stop(struct tsup_redis *r, struct tsup_store_host *a, struct tsup_store_host *b)
{
    host_close(a);
    if (b)
        host_close(b);
    tsup_redis_stop(r);
}

TestSuite(store_redis, .init = setup, .fini = teardown_loop, .timeout = 60);

Test(store_redis, trip_on_one_host_opens_the_circuit_on_the_other)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_trips_and_b_sees(&r, &a, &b, "payments");
    cr_assert_eq(last_remote(&b, "payments")->opened_at, t0);
    cr_assert_eq(last_remote(&b, "payments")->failure_count, 5);
    cr_assert_null(last_remote(&a, "payments"), "A is told nothing about its own write");
    cr_assert_str_eq(hget(&r, "payments", "state"), "OPEN");
    cr_assert(atoll(hget(&r, "payments", "updated_ms")) / 1000 >= t0 - 1, "updated_ms is server time in ms");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, both_hosts_probe_the_same_opening_and_exactly_one_wins)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_trips_and_b_sees(&r, &a, &b, "db");
    cbd_store_redis_ops.try_probe(a.s, "db", t0, 30);
    cbd_store_redis_ops.try_probe(b.s, "db", t0, 30);
    WAIT_FOR(a.nprobe == 1 && b.nprobe == 1, 3000);
    cr_assert(a.probe[0].granted != b.probe[0].granted, "exactly one host holds the probe");
    struct tsup_store_host *winner = a.probe[0].granted ? &a : &b, *loser = a.probe[0].granted ? &b : &a;
    cr_assert(winner->probe[0].lease >= t0 + 29);
    cr_assert_eq(loser->probe[0].lease, winner->probe[0].lease, "the loser learns when the lease ends");
    const char *owner = hget(&r, "db", "half_open_owner");
    cr_assert(strstr(owner, winner == &a ? ":A:" : ":B:") != NULL, "owner %s", owner);
    cr_assert_str_eq(hget(&r, "db", "state"), "HALF_OPEN");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, a_host_learns_a_fleet_opening_when_it_registers_the_circuit)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    char uri[256];
    srv_init(&r, false, NULL);
    host_open(&a, uri_of(&r, "A", ""));
    snprintf(uri, sizeof uri, "redis://localhost:%d?prefix=t:&sync_ms=200&instance=B", r.port);
    host_open(&b, uri); /* a host name: resolved off the loop */
    WAIT_FOR(a.done.restored && b.done.restored && a.online && b.online, 5000);
    int64_t t0 = time(NULL);
    trip(&a, "inventory", t0);
    spin(500);
    cr_assert_null(last_remote(&b, "inventory"), "B does not use the circuit yet");
    cbd_store_redis_ops.track(b.s, "inventory", NULL);
    WAIT_FOR(remote_is(&b, "inventory", CB_OPEN), 3000);
    cr_assert_eq(last_remote(&b, "inventory")->opened_at, t0);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, an_expired_lease_is_taken_over_by_another_host)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_holds_the_probe(&r, &a, &b, "search", 2);
    cbd_store_redis_ops.try_probe(b.s, "search", t0, 30);
    WAIT_FOR(b.nprobe == 1, 3000);
    cr_assert(!b.probe[0].granted, "the lease is still live");
    spin(3200); /* lease_s 2, in whole seconds of server time */
    cbd_store_redis_ops.try_probe(b.s, "search", t0, 30);
    WAIT_FOR(b.nprobe == 2, 3000);
    cr_assert(b.probe[1].granted, "an expired lease is taken over");
    const char *owner = hget(&r, "search", "half_open_owner");
    cr_assert(strstr(owner, ":B:") != NULL, "owner %s", owner);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, a_released_lease_is_back_to_open_without_owner_and_another_host_elects_at_once)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_holds_the_probe(&r, &a, &b, "release", 30);
    cbd_store_redis_ops.release(a.s, "release", t0);
    WAIT_FOR(strcmp(hget(&r, "release", "state"), "OPEN") == 0, 3000);
    cr_assert_str_eq(hget(&r, "release", "half_open_owner"), "", "the owner is removed");
    cr_assert_str_eq(hget(&r, "release", "probe_lease_expiry"), "", "and the lease");
    cr_assert_eq(atoll(hget(&r, "release", "opened_at")), t0, "on the same opening");
    cbd_store_redis_ops.try_probe(b.s, "release", t0, 30);
    WAIT_FOR(b.nprobe == 1, 3000);
    cr_assert(b.probe[0].granted, "B elects at once, long before A's lease would have ended");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, close_by_the_prober_closes_the_circuit_on_the_other_host)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_holds_the_probe(&r, &a, &b, "mail", 30);
    struct cbd_store_state st = state_of("mail", CB_CLOSED, 0);
    cbd_store_redis_ops.transition(a.s, &st, t0);
    WAIT_FOR(remote_is(&b, "mail", CB_CLOSED), 3000);
    cr_assert_str_eq(hget(&r, "mail", "state"), "CLOSED");
    cr_assert_str_eq(hget(&r, "mail", "half_open_owner"), "", "owner and lease are removed on close");
    cr_assert_str_eq(hget(&r, "mail", "opened_at"), "");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, close_by_a_host_that_does_not_hold_the_lease_is_refused)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_holds_the_probe(&r, &a, &b, "cache", 30);
    int seen = b.nremote;
    struct cbd_store_state st = state_of("cache", CB_CLOSED, 0);
    cbd_store_redis_ops.transition(b.s, &st, t0);
    WAIT_FOR(b.nremote > seen, 3000);
    cr_assert(remote_is(&b, "cache", CB_HALF_OPEN), "B is told the fleet's state back");
    cr_assert(strstr(last_remote(&b, "cache")->probe_owner, ":A:") != NULL);
    cr_assert_str_eq(hget(&r, "cache", "state"), "HALF_OPEN");
    cr_assert(strstr(hget(&r, "cache", "half_open_owner"), ":A:") != NULL);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, trip_does_not_clobber_a_live_probe_lease)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_holds_the_probe(&r, &a, &b, "ledger", 30);
    const char *lease = hget(&r, "ledger", "probe_lease_expiry");
    int seen = b.nremote;
    trip(&b, "ledger", t0 + 5);
    spin(300);
    cr_assert_str_eq(hget(&r, "ledger", "state"), "HALF_OPEN");
    cr_assert_str_eq(hget(&r, "ledger", "probe_lease_expiry"), lease, "the lease is kept");
    cr_assert_eq(atoll(hget(&r, "ledger", "opened_at")), t0);
    cr_assert(b.nremote > seen && remote_is(&b, "ledger", CB_HALF_OPEN), "B adopts the fleet's state");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, queued_transitions_are_written_when_redis_comes_back)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = time(NULL);
    two_hosts(&r, &a, &b, "billing");
    tsup_redis_kill(&r, SIGKILL);
    WAIT_FOR(!a.online && !b.online, 3000);
    cr_assert(a.health_false == 1);
    trip(&a, "billing", t0);
    trip(&a, "billing", t0 + 1); /* the latest state per circuit is kept */
    cr_assert_eq(store_stat(&a, "queued"), 1);
    cbd_store_redis_ops.try_probe(a.s, "other", t0, 10);
    WAIT_FOR(a.nprobe == 1, 8000); /* once the next attempt to reconnect fails */
    cr_assert(a.probe[0].granted, "offline: elections are granted host-local");
    spin(300);
    cr_assert_eq(tsup_redis_restart(&r), 0);
    WAIT_FOR(a.online && b.online, 8000);
    cr_assert_eq(a.health_true, 2);
    WAIT_FOR(remote_is(&b, "billing", CB_OPEN), 3000);
    cr_assert_eq(last_remote(&b, "billing")->opened_at, t0 + 1);
    cr_assert_eq(atoll(hget(&r, "billing", "opened_at")), t0 + 1);
    cr_assert_eq(store_stat(&a, "queued"), 0);
    cr_assert(store_stat(&a, "reconnects") > 0);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, an_open_circuit_lost_by_redis_is_written_again)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    int64_t t0 = a_trips_and_b_sees(&r, &a, &b, "queue");
    redis_do(&r, "FLUSHALL", NULL, NULL);
    spin(600); /* a reconcile (sync_ms 200) notices and writes it back */
    cr_assert_str_eq(hget(&r, "queue", "state"), "OPEN");
    cr_assert_eq(atoll(hget(&r, "queue", "opened_at")), t0);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, garbage_under_the_prefix_is_counted_and_ignored)
{
    struct tsup_redis r;
    struct tsup_store_host a;
    char now[24];
    srv_init(&r, false, NULL);
    snprintf(now, sizeof now, "%ld", (long)time(NULL));
    redis_do(&r, "SET t:c:{strkey} %s", "x", NULL);
    redis_do(&r, "HSET t:c:{banana} state %s", "BANANA", NULL);
    redis_do(&r, "HSET t:c:{xyz} state OPEN opened_at %s", "xyz", NULL);
    redis_do(&r, "HSET %s state OPEN opened_at %s", "t:c:{bad\xffname}", now);
    redis_do(&r, "HSET t:c:{half} state HALF_OPEN opened_at %s", now, NULL);
    redis_do(&r, "HSET t:c:{good} state OPEN opened_at %s failure_count 7", now, NULL);
    host_open(&a, uri_of(&r, "A", ""));
    WAIT_FOR(a.done.restored, 5000);
    cr_assert_eq(a.done.restore_rc, 0);
    cr_assert_eq(a.nremote, 1, "only the good circuit is reported");
    cr_assert(remote_is(&a, "good", CB_OPEN));
    cr_assert_eq(last_remote(&a, "good")->failure_count, 7);
    cr_assert_geq(garbage(&a), 5);
    /* a tracked circuit turns to garbage: counted, last good state kept */
    uint64_t before = garbage(&a);
    redis_do(&r, "HSET t:c:{good} opened_at %s", "soon", NULL);
    redis_do(&r, "PUBLISH t:transitions %s", "good", NULL);
    redis_do(&r, "PUBLISH t:transitions %s", "", NULL);
    struct cbd_store_state st = state_of("strkey", CB_OPEN, time(NULL));
    cbd_store_redis_ops.transition(a.s, &st, 0);
    WAIT_FOR(garbage(&a) >= before + 3, 3000);
    cr_assert_eq(a.nremote, 1);
    /* and the store still works */
    trip(&a, "fine", time(NULL));
    spin(300);
    cr_assert_str_eq(hget(&r, "fine", "state"), "OPEN");
    cr_assert(a.online);
    hosts_stop(&r, &a, NULL);
}

/* HSET key field value ... with binary-safe values (argv form). */
static void redis_hset(const struct tsup_redis *r, const char *key, int n, const char *const *fv)
{
    const char *argv[16];
    size_t len[16];
    redisContext *c = srv_connect(r);
    cr_assert(c != NULL && !c->err && n <= 14);
    argv[0] = "HSET";
    argv[1] = key;
    for (int i = 0; i < n; i++)
        argv[2 + i] = fv[i];
    for (int i = 0; i < n + 2; i++)
        len[i] = strlen(argv[i]);
    redisReply *rep = redisCommandArgv(c, n + 2, argv, len);
    cr_assert(rep != NULL && rep->type != REDIS_REPLY_ERROR, "HSET %s: %s", key, rep ? rep->str : "no reply");
    freeReplyObject(rep);
    redisFree(c);
}

Test(store_redis, hashes_that_are_not_valid_items_are_never_adopted)
{
    struct tsup_redis r;
    struct tsup_store_host a;
    char now[24];
    srv_init(&r, false, NULL);
    snprintf(now, sizeof now, "%ld", (long)time(NULL));
    char *huge = malloc(1 << 20); /* a 1 MB version field */
    memset(huge, '7', (1 << 20) - 1);
    huge[(1 << 20) - 1] = '\0';
    redis_hset(&r, "t:c:{big-version}", 6, (const char *[]){"state", "OPEN", "opened_at", now, "version", huge});
    free(huge);
    redis_hset(&r, "t:c:{late-year}", 4, (const char *[]){"state", "OPEN", "opened_at", "9000000001"});
    redis_hset(&r, "t:c:{bad-updated}", 6, (const char *[]){"state", "OPEN", "opened_at", now, "updated_ms", "x"});
    redis_hset(&r, "t:c:{signed}", 4, (const char *[]){"state", "OPEN", "opened_at", "+1700000000"});
    redis_hset(&r, "t:c:{lease-year}", 8, (const char *[]){"state", "HALF_OPEN", "opened_at", now,
                                                           "half_open_owner", "h:A:1", "probe_lease_expiry",
                                                           "99999999999"});
    redis_hset(&r, "t:c:{no-opened}", 4, (const char *[]){"state", "OPEN", "failure_count", "5"});
    redis_hset(&r, "t:c:{ok}", 4, (const char *[]){"state", "OPEN", "opened_at", now});
    host_open(&a, uri_of(&r, "A", ""));
    WAIT_FOR(a.done.restored, 5000);
    cr_assert_eq(a.done.restore_rc, 0);
    cr_assert_eq(a.nremote, 1, "%d circuits adopted, the first %s", a.nremote, a.remote[0].name);
    cr_assert_str_eq(a.remote[0].name, "ok");
    cr_assert_geq(store_stat(&a, "invalid_items"), 6, "invalid_items %llu",
                  (unsigned long long)store_stat(&a, "invalid_items"));
    hosts_stop(&r, &a, NULL);
}

static long long exists(const struct tsup_redis *r, const char *key)
{
    redisContext *c = srv_connect(r);
    cr_assert(c != NULL && !c->err);
    redisReply *rep = redisCommand(c, "EXISTS %s", key);
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_INTEGER);
    long long n = rep->integer;
    freeReplyObject(rep);
    redisFree(c);
    return n;
}

Test(store_redis, keys_from_before_hash_tags_are_moved_when_read)
{
    struct tsup_redis r;
    struct tsup_store_host a;
    char now[24];
    srv_init(&r, false, NULL);
    snprintf(now, sizeof now, "%ld", (long)time(NULL));
    redis_do(&r, "HSET t:c:legacy state OPEN opened_at %s failure_count 4", now, NULL);
    redis_do(&r, "SET t:c:notahash %s", "x", NULL);
    host_open(&a, uri_of(&r, "A", ""));
    WAIT_FOR(a.done.restored, 5000);
    cr_assert_eq(a.done.restore_rc, 0);
    cr_assert(remote_is(&a, "legacy", CB_OPEN), "the restore reads a key of the old layout");
    cr_assert_eq(last_remote(&a, "legacy")->failure_count, 4);
    cr_assert_str_eq(hget(&r, "legacy", "state"), "OPEN", "and moves it to t:c:{legacy}");
    cr_assert_eq(exists(&r, "t:c:legacy"), 0);
    cr_assert_geq(garbage(&a), 1, "an old key that is not a hash is counted");
    cr_assert_eq(exists(&r, "t:c:notahash"), 1, "and left alone");
    /* an old host writes the old layout after the restore: read when tracked */
    redis_do(&r, "HSET t:c:late state OPEN opened_at %s", now, NULL);
    cbd_store_redis_ops.track(a.s, "late", NULL);
    WAIT_FOR(remote_is(&a, "late", CB_OPEN), 3000);
    cr_assert_str_eq(hget(&r, "late", "state"), "OPEN");
    cr_assert_eq(exists(&r, "t:c:late"), 0);
    /* both layouts: the new key wins and the old one is left for the operator */
    redis_do(&r, "HSET t:c:{both} state %s failure_count %s", "CLOSED", "0");
    redis_do(&r, "HSET t:c:both state OPEN opened_at %s", now, NULL);
    cbd_store_redis_ops.track(a.s, "both", NULL);
    spin(500);
    cr_assert_null(last_remote(&a, "both"), "the stale old key is not adopted");
    cr_assert_eq(exists(&r, "t:c:both"), 1);
    hosts_stop(&r, &a, NULL);
}

/* A move of an old-layout key that fails (here: redis refuses writes for
 * want of replicas for a while) is tried again on a later read, not given
 * up for the life of the daemon. */
Test(store_redis, a_key_from_before_hash_tags_whose_move_failed_is_moved_on_a_later_read)
{
    struct tsup_redis r;
    struct tsup_store_host a;
    char now[24];
    srv_init(&r, false, NULL);
    snprintf(now, sizeof now, "%ld", (long)time(NULL));
    host_open(&a, uri_of(&r, "A", ""));
    WAIT_FOR(a.done.restored, 5000);
    redis_do(&r, "HSET t:c:lost state OPEN opened_at %s failure_count 3", now, NULL);
    redis_do(&r, "CONFIG SET min-replicas-to-write %s", "1", NULL);
    uint64_t errors = store_stat(&a, "errors");
    cbd_store_redis_ops.track(a.s, "lost", NULL);
    WAIT_FOR(store_stat(&a, "errors") > errors, 3000);
    cr_assert_null(last_remote(&a, "lost"), "adopted while redis refused the move");
    redis_do(&r, "CONFIG SET min-replicas-to-write %s", "0", NULL);
    WAIT_FOR(remote_is(&a, "lost", CB_OPEN), 5000);
    cr_assert_str_eq(hget(&r, "lost", "state"), "OPEN", "moved to t:c:{lost}");
    cr_assert_eq(exists(&r, "t:c:lost"), 0);
    hosts_stop(&r, &a, NULL);
}

Test(store_redis, refused_connection_reports_the_store_offline)
{
    struct tsup_store_host a;
    char uri[200];
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d?connect_timeout_ms=500&instance=A", tsup_free_port());
    host_open(&a, uri);
    WAIT_FOR(a.done.restored && a.health_false == 1, 3000);
    cr_assert(a.done.restore_rc < 0);
    cr_assert(strstr(a.why, "refused") != NULL, "why: %s", a.why);
    spin(1500);
    cr_assert(store_stat(&a, "reconnects") > 0, "it keeps retrying");
    cr_assert_eq(a.health_false, 1, "health is reported on change only");
    host_close(&a);
}

Test(store_redis, a_silent_server_times_out_and_the_store_recovers)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    host_open(&a, uri_of(&r, "A", "&command_timeout_ms=500"));
    host_open(&b, uri_of(&r, "B", ""));
    WAIT_FOR(a.online && b.online, 5000);
    cbd_store_redis_ops.track(b.s, "slow", NULL);
    kill(r.pid, SIGSTOP);
    trip(&a, "slow", time(NULL));
    WAIT_FOR(!a.online, 3000);
    cr_assert(strstr(a.why, "no reply within 500 ms") != NULL, "why: %s", a.why);
    kill(r.pid, SIGCONT);
    WAIT_FOR(a.online, 8000);
    WAIT_FOR(remote_is(&b, "slow", CB_OPEN), 3000);
    hosts_stop(&r, &a, &b);
}

Test(store_redis, flushed_scripts_fall_back_to_eval)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, false, NULL);
    two_hosts(&r, &a, &b, "noscript");
    redis_do(&r, "SCRIPT FLUSH", NULL, NULL);
    trip(&a, "noscript", time(NULL));
    WAIT_FOR(remote_is(&b, "noscript", CB_OPEN), 3000);
    cr_assert_str_eq(hget(&r, "noscript", "state"), "OPEN");
    hosts_stop(&r, &a, &b);
}

Test(store_redis, password_acl_user_and_database_are_used_on_connect)
{
    struct tsup_redis r;
    struct tsup_store_host a, bad;
    char uri[400];
    static const char *const auth[] = {"--requirepass", "s3cret", NULL};
    srv_init(&r, false, auth);
    redisContext *c = srv_connect(&r);
    redisReply *rep = redisCommand(c, "AUTH s3cret");
    freeReplyObject(rep);
    rep = redisCommand(c, "ACL SETUSER alice on >p@ss ~* &* +@all");
    cr_assert(rep != NULL && rep->type != REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    char wrong[256];
    snprintf(wrong, sizeof wrong, "%s/wrong.pass", tsup_tmpdir());
    FILE *f = fopen(wrong, "w");
    cr_assert(f != NULL && fputs("wrong\n", f) >= 0 && fclose(f) == 0);
    setenv("CBD_TEST_ALICE_PASSWORD", "p@ss", 1);
    snprintf(uri, sizeof uri, "redis://alice@127.0.0.1:%d/3?prefix=t:&instance=A&password_env=CBD_TEST_ALICE_PASSWORD",
             r.port);
    host_open(&a, uri);
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d?instance=B&password_file=%s", r.port, wrong);
    host_open(&bad, uri);
    WAIT_FOR(a.online && bad.health_false == 1, 5000);
    cr_assert(strstr(bad.why, "AUTH") != NULL, "why: %s", bad.why);
    trip(&a, "acl", time(NULL));
    spin(300);
    rep = redisCommand(c, "SELECT 3");
    freeReplyObject(rep);
    rep = redisCommand(c, "HGET t:c:{acl} state");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING && strcmp(rep->str, "OPEN") == 0);
    freeReplyObject(rep);
    redisFree(c);
    hosts_stop(&r, &a, &bad);
}

Test(store_redis, unix_socket_uri_reaches_the_server)
{
    struct tsup_redis r;
    struct tsup_store_host a, b;
    srv_init(&r, true, NULL);
    a_trips_and_b_sees(&r, &a, &b, "local");
    hosts_stop(&r, &a, &b);
}

struct bad_uri {
    const char *uri, *err;
};

Test(store_redis, bad_uris_are_rejected_with_a_clear_message)
{
    static const struct bad_uri cases[] = {
        {"http://x", "must start with redis://, redis-sentinel:// or unix://"},
        {"redis://", "missing host"},
        {"redis://:6379", "missing host"},
        {"redis://h:0", "port must be"},
        {"redis://h:99999", "port must be"},
        {"redis://h:x", "port must be"},
        {"redis://h:1/abc", "database number"},
        {"redis://[::1", "unterminated"},
        {"redis://h?prefix=", "prefix must be"},
        {"redis://h?prefix=a%20b", "prefix must be"},
        {"redis://h?sync_ms=5", "sync_ms must be"},
        {"redis://h?connect_timeout_ms=0", "connect_timeout_ms must be"},
        {"redis://h?command_timeout_ms=x", "command_timeout_ms must be"},
        {"redis://h?instance=a.b", "instance must be"},
        {"redis://h?bogus=1", "unknown option"},
        {"redis://h?prefix", "without '=value'"},
        {"redis://u:p@h", "a password in the URI is refused"},
        {"redis://:p@h", "password_file=/path"},
        {"redis://h?password=x", "or in an environment variable and give ?password_env=NAME"},
        {"redis://u%zz@h?password_env=P", "bad %-escape"},
        {"redis://u@h", "user 'u' needs password_file= or password_env="},
        {"redis://h?password_file=rel/pass", "password_file must be an absolute path"},
        {"redis://h?password_env=1BAD", "password_env must be an environment variable name"},
        {"redis://h?password_env=P&password_file=/p", "give password_file or password_env, not both"},
        {"redis://h?sentinel_user=u", "sentinel_user is for redis-sentinel:// URIs only"},
        {"redis-sentinel://h1,h2", "missing master name"},
        {"redis-sentinel://h1,/m", "missing sentinel host"},
        {"redis-sentinel:///m", "missing sentinel host"},
        {"redis-sentinel://h:26379/bad name", "the master name must be"},
        {"redis-sentinel://h/m/99999", "database number"},
        {"redis-sentinel://a,b,c,d,e,f,g,h,i/m", "more than 8 sentinels"},
        {"redis-sentinel://h/m?sentinel_user=s", "sentinel_user needs sentinel_password_file="},
        {"unix://relative.sock", "must be absolute"},
        {"unix://", "must be absolute"},
    };
    struct cbd_store_hooks hooks = {.loop = &loop};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cbd_store *s = NULL;
        const char *err = NULL;
        cr_assert_eq(cbd_store_redis_ops.create(&s, cases[i].uri, &hooks, &err), -EINVAL, "%s", cases[i].uri);
        cr_assert(err != NULL && strstr(err, cases[i].err) != NULL, "%s: %s", cases[i].uri, err ? err : "(null)");
        char why[512];
        cr_assert_eq(cbd_store_redis_ops.check_uri(cases[i].uri, why, sizeof why), -EINVAL, "check_uri(%s)",
                     cases[i].uri);
        cr_assert_str_eq(why, err, "check_uri says what create says");
    }
    char why[512] = "";
    cr_assert_eq(cbd_store_redis_ops.check_uri("redis-sentinel://h1,h2:26380/m/2?password_env=P&prefix=x:", why,
                                               sizeof why), 0, "%s", why);
}
