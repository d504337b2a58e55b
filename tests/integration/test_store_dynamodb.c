/*
 * test_store_dynamodb.c - the dynamodb store against dynalite, driven
 * through its ops table by two "hosts" on one loop (no daemon needed):
 * fleet propagation, the probe election, leases, compare-before-write,
 * composite keys; interoperability with items written and read exactly the
 * way Powertools writes and reads them; items that are not valid circuits
 * (written raw into the table) ignored, counted and logged once per
 * circuit; and faults from a scripted loopback endpoint (throttling, 5xx,
 * garbage, slow answers, an item for another key) and from dynalite killed
 * and restarted mid-run.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../dynamo/ddb_test_support.h"
#include "dynamodb_table.h"
#include "store_dynamodb.h"
#include "tsup_store.h"

#define TABLE "cbd-circuits"
#define LIVENESS_MS 10000

TestSuite(store_dynamodb, .init = ddb_test_env, .timeout = 60);

/* ---- a host: one store and what its hooks were told -------------------------------- */

struct host {
    struct cbd_store *s;
    struct cbd_store_hooks hooks;
    int remotes;                  /* hooks->remote calls */
    struct cbd_store_state remote; /* the last one */
    int probes;                   /* hooks->probe_result calls */
    bool granted;
    int64_t lease_expiry;
    int health_calls;
    bool online;
    char why[512];
    struct tsup_store_done done;  /* what restore() and close() said */
    int synced;                   /* hooks->synced calls */
    char synced_name[128];        /* the last one's circuit */
    int64_t synced_at;
};

static uv_loop_t loop;

static void on_remote(void *arg, const struct cbd_store_state *st)
{
    struct host *h = arg;
    h->remotes++;
    h->remote = *st;
}

static void on_probe(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry)
{
    struct host *h = arg;
    (void)name;
    (void)opened_at;
    h->probes++;
    h->granted = granted;
    h->lease_expiry = lease_expiry;
}

static void on_health(void *arg, bool online, const char *why)
{
    struct host *h = arg;
    h->health_calls++;
    h->online = online;
    snprintf(h->why, sizeof h->why, "%s", why);
}

static void on_synced(void *arg, const char *name, int64_t at_s)
{
    struct host *h = arg;
    h->synced++;
    snprintf(h->synced_name, sizeof h->synced_name, "%s", name);
    h->synced_at = at_s;
}

/* Run the loop until cond holds; false after ms. */
#define RUN_UNTIL(cond, ms)                                                   \
    ({                                                                        \
        int64_t run__end = tsup_now_ms() + (ms);                              \
        while (!(cond) && tsup_now_ms() < run__end) {                         \
            uv_run(&loop, UV_RUN_NOWAIT);                                     \
            if (!(cond))                                                      \
                usleep(1000);                                                 \
        }                                                                     \
        (bool)(cond);                                                         \
    })

static void host_open(struct host *h, const char *fmt, ...)
{
    char uri[1024];
    const char *err = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(uri, sizeof uri, fmt, ap);
    va_end(ap);
    memset(h, 0, sizeof *h);
    h->hooks = (struct cbd_store_hooks){.loop = &loop, .arg = h, .remote = on_remote, .probe_result = on_probe,
                                        .health = on_health, .synced = on_synced};
    int rc = cbd_store_dynamodb_ops.create(&h->s, uri, &h->hooks, &err);
    cr_assert_eq(rc, 0, "create %s: %s", uri, err ? err : "?");
}

static void host_close(struct host *h)
{
    cbd_store_dynamodb_ops.close(h->s, tsup_store_closed, &h->done);
    cr_assert(RUN_UNTIL(h->done.closed, LIVENESS_MS), "close never finished");
}

static void track(struct host *h, const char *name, uint32_t recovery_ms)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.recovery_timeout_ms = recovery_ms;
    cbd_store_dynamodb_ops.track(h->s, name, &cfg);
}

static struct cbd_store_state state(const char *name, cb_state st, int64_t opened_at, uint32_t failures)
{
    struct cbd_store_state s = {.state = st, .opened_at = opened_at, .failure_count = failures};
    snprintf(s.name, sizeof s.name, "%s", name);
    return s;
}

static void transition(struct host *h, const char *name, cb_state st, int64_t opened_at, int64_t prev)
{
    struct cbd_store_state s = state(name, st, opened_at, st == CB_OPEN ? 5 : 0);
    cbd_store_dynamodb_ops.transition(h->s, &s, prev);
}

static void try_probe(struct host *h, const char *name, int64_t opened_at, uint32_t lease_s)
{
    h->probes = 0;
    cbd_store_dynamodb_ops.try_probe(h->s, name, opened_at, lease_s);
}

/* A counter as the daemon's stats show it (store_<name>): 0 if absent. */
static uint64_t store_stat(const struct host *h, const char *name)
{
    return tsup_store_stat(&cbd_store_dynamodb_ops, h->s, name, NULL);
}

/* Written, acknowledged, nothing queued. */
static bool settled(const struct host *h)
{
    return store_stat(h, "queued") == 0;
}

static void create_table(const char *endpoint, const char *extra)
{
    char uri[512], err[512];
    snprintf(uri, sizeof uri, "dynamodb://" TABLE "?endpoint=%s%s", endpoint, extra);
    int rc = dynamodb_table_create(uri, err, sizeof err);
    cr_assert(rc == 0 || rc == 1, "create-table: %d %s", rc, err);
}

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

/* dynalite with the table; the loop ready. */
static void fleet_start(struct dynalite *d, const char *extra)
{
    dynalite_start(d, 0);
    create_table(d->endpoint, extra);
    uv_loop_init(&loop);
}

static void fleet_stop(struct host *a, struct host *b)
{
    if (a)
        host_close(a);
    if (b)
        host_close(b);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0, "a store left a handle open");
}

#define HOST_URI "dynamodb://" TABLE "?endpoint=%s&sync_ms=200&owner=%s&backoff_max_ms=400&timeout_ms=1000"

/* dynalite with the table; host A, and host B unless b is NULL, on it; each
 * tracks name (unless NULL) with a 30 s recovery timeout. */
static void hosts_start(struct dynalite *d, struct host *a, struct host *b, const char *name)
{
    fleet_start(d, "");
    host_open(a, HOST_URI, d->endpoint, "host-a");
    if (b)
        host_open(b, HOST_URI, d->endpoint, "host-b");
    if (name)
        track(a, name, 30000);
    if (name && b)
        track(b, name, 30000);
}

/* h trips name at opened_at and waits until the write is in the table. */
static void trip_written(struct host *h, const char *name, int64_t opened_at)
{
    transition(h, name, CB_OPEN, opened_at, 0);
    cr_assert(RUN_UNTIL(settled(h), LIVENESS_MS), "%s: the trip was never written", name);
}

/* A trips name at opened_at and waits until B has heard of it. */
static void trip_seen(struct host *a, struct host *b, const char *name, int64_t opened_at)
{
    transition(a, name, CB_OPEN, opened_at, 0);
    cr_assert(RUN_UNTIL(b->remotes > 0 && b->remote.state == CB_OPEN, LIVENESS_MS), "B never saw the trip");
}

/* try_probe and wait for the answer: whether h was granted the probe. */
static bool probe(struct host *h, const char *name, int64_t opened_at, uint32_t lease_s)
{
    try_probe(h, name, opened_at, lease_s);
    cr_assert(RUN_UNTIL(h->probes == 1, LIVENESS_MS), "%s: the election was never answered", name);
    return h->granted;
}

/* Hosts A and B tracking name; A's trip at opened_at is in the table and A
 * holds the probe lease for lease_s. */
static void a_holds_the_probe(struct dynalite *d, struct host *a, struct host *b, const char *name,
                              int64_t opened_at, uint32_t lease_s)
{
    hosts_start(d, a, b, name);
    trip_written(a, name, opened_at);
    cr_assert(probe(a, name, opened_at, lease_s), "%s: A lost an election nobody else ran in", name);
}

/* ---- two hosts, one fleet --------------------------------------------------------- */

Test(store_dynamodb, a_trip_on_one_host_opens_the_other_at_the_next_sync)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s();
    hosts_start(&d, &a, &b, "payments");
    trip_seen(&a, &b, "payments", t);
    cr_assert_str_eq(b.remote.name, "payments");
    cr_assert_eq(b.remote.opened_at, t);
    cr_assert_eq(b.remote.failure_count, 5);
    cr_assert(a.online && b.online, "both hosts reported themselves online");
    cr_assert_eq(a.remotes, 0, "A's own write is no news to A");
    fleet_stop(&a, &b);
}

Test(store_dynamodb, exactly_one_host_wins_the_probe_election)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    hosts_start(&d, &a, &b, "search");
    trip_seen(&a, &b, "search", t);
    try_probe(&a, "search", t, 30);
    try_probe(&b, "search", t, 30);
    cr_assert(RUN_UNTIL(a.probes == 1 && b.probes == 1, LIVENESS_MS), "both hosts get an answer");
    cr_assert_eq(a.granted + b.granted, 1, "exactly one winner (A %d, B %d)", a.granted, b.granted);
    struct host *loser = a.granted ? &b : &a;
    cr_assert_eq(loser->remote.state, CB_HALF_OPEN, "the loser learns the fleet is probing");
    cr_assert_str_eq(loser->remote.probe_owner, a.granted ? "host-a" : "host-b");
    json_t *it = ddb_pt_get(d.port, TABLE, "search");
    cr_assert_str_eq(ddb_item_s(it, "state"), "HALF_OPEN");
    cr_assert_str_eq(ddb_item_s(it, "half_open_owner"), a.granted ? "host-a" : "host-b");
    json_decref(it);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, an_expired_lease_is_taken_over_by_another_host)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    /* Times are whole seconds: a 2 s lease is live for at least 1 s. */
    a_holds_the_probe(&d, &a, &b, "ledger", t, 2);
    cr_assert_not(probe(&b, "ledger", t, 30), "A's lease is still live");
    RUN_UNTIL(false, 3100); /* A's lease runs out */
    cr_assert(probe(&b, "ledger", t, 30), "B takes over the expired lease");
    cr_assert(RUN_UNTIL(a.remote.state == CB_HALF_OPEN && strcmp(a.remote.probe_owner, "host-b") == 0,
                        LIVENESS_MS), "A learns B holds the lease now");
    fleet_stop(&a, &b);
}

Test(store_dynamodb, a_close_by_the_prober_closes_every_host)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    hosts_start(&d, &a, &b, "mail");
    trip_seen(&a, &b, "mail", t);
    cr_assert(probe(&a, "mail", t, 30));
    cr_assert(RUN_UNTIL(b.remote.state == CB_HALF_OPEN, LIVENESS_MS));
    struct cbd_store_state half = state("mail", CB_HALF_OPEN, t, 0);
    cbd_store_dynamodb_ops.transition(a.s, &half, t); /* nothing to write: the election did */
    transition(&a, "mail", CB_CLOSED, 0, t);
    cr_assert(RUN_UNTIL(b.remote.state == CB_CLOSED, LIVENESS_MS), "B never saw the close");
    json_t *it = ddb_pt_get(d.port, TABLE, "mail");
    cr_assert_str_eq(ddb_item_s(it, "state"), "CLOSED");
    cr_assert_not(ddb_item_has(it, "opened_at") || ddb_item_has(it, "half_open_owner") || ddb_item_has(it, "probe_lease_expiry"));
    json_decref(it);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, writes_never_clobber_a_live_lease_or_a_newer_opening)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    hosts_start(&d, &a, &b, NULL);
    track(&a, "geo", 30000); /* only A: B's view stays stale */
    trip_written(&a, "geo", t);
    cr_assert(probe(&a, "geo", t, 30));
    /* B, with a stale view: an older trip, then a close without the lease. */
    transition(&b, "geo", CB_OPEN, t - 100, 0);
    cr_assert(RUN_UNTIL(b.remotes == 1, LIVENESS_MS), "the lost condition is reported");
    cr_assert_eq(b.remote.state, CB_HALF_OPEN);
    cr_assert_str_eq(b.remote.probe_owner, "host-a");
    transition(&b, "geo", CB_CLOSED, 0, t);
    cr_assert(RUN_UNTIL(b.remotes == 2, LIVENESS_MS));
    cr_assert_eq(b.remote.state, CB_HALF_OPEN);
    cr_assert_geq(store_stat(&b, "conditions_lost"), 2);
    json_t *it = ddb_pt_get(d.port, TABLE, "geo");
    cr_assert_str_eq(ddb_item_s(it, "state"), "HALF_OPEN");
    cr_assert_str_eq(ddb_item_s(it, "half_open_owner"), "host-a");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t);
    json_decref(it);
    /* A newer opening does replace an older OPEN. */
    transition(&a, "geo", CB_OPEN, t + 10, t); /* A's probe failed: reopen */
    cr_assert(RUN_UNTIL(settled(&a), LIVENESS_MS));
    trip_written(&b, "geo", t + 20);
    it = ddb_pt_get(d.port, TABLE, "geo");
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t + 20);
    json_decref(it);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, composite_keys_put_the_name_in_the_sort_key)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s();
    fleet_start(&d, "&sk=name");
    host_open(&a, HOST_URI "&sk=name&static_pk=circuit_breaker%%23orders", d.endpoint, "host-a");
    host_open(&b, HOST_URI "&sk=name&static_pk=circuit_breaker%%23orders", d.endpoint, "host-b");
    track(&a, "stock", 30000);
    track(&b, "stock", 30000);
    trip_seen(&a, &b, "stock", t);
    json_t *it = ddb_raw(d.port, "GetItem", "{\"TableName\":\"" TABLE "\",\"Key\":{\"id\":{\"S\":"
                     "\"circuit_breaker#orders\"},\"name\":{\"S\":\"stock\"}}}");
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN");
    json_decref(it);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, registering_a_circuit_open_in_the_fleet_reads_it_at_once)
{
    struct dynalite d;
    struct host c;
    int64_t t = now_s();
    fleet_start(&d, "");
    json_t *r = ddb_raw(d.port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"billing\"},"
                    "\"state\":{\"S\":\"OPEN\"},\"failure_count\":{\"N\":\"5\"},\"opened_at\":{\"N\":\"%lld\"},"
                    "\"expiration\":{\"N\":\"%lld\"}}}", (long long)t, (long long)t + 3630);
    cr_assert_eq(ddb_status(r), 200);
    json_decref(r);
    host_open(&c, "dynamodb://" TABLE "?endpoint=%s&sync_ms=0", d.endpoint); /* no periodic sync */
    cbd_store_dynamodb_ops.restore(c.s, tsup_store_restored, &c.done);
    cr_assert_not(c.done.restored, "done never runs inside restore()");
    cr_assert(RUN_UNTIL(c.done.restored, LIVENESS_MS));
    cr_assert_eq(c.done.restore_rc, 0);
    cr_assert_eq(c.remotes, 0, "nothing tracked yet: restore reads nothing");
    track(&c, "billing", 30000);
    cr_assert(RUN_UNTIL(c.remotes == 1, LIVENESS_MS), "registration reads the circuit");
    cr_assert_eq(c.remote.state, CB_OPEN);
    cr_assert_eq(c.remote.opened_at, t);
    fleet_stop(&c, NULL);
}

/* ---- interoperability with Powertools ------------------------------------------------ */

Test(store_dynamodb, items_written_the_powertools_way_reach_the_host)
{
    struct dynalite d;
    struct host a;
    int64_t t = now_s() - 40;
    hosts_start(&d, &a, NULL, "pt-orders");
    cr_assert(RUN_UNTIL(a.online, LIVENESS_MS));
    ddb_pt_trip(d.port, TABLE, "pt-orders", t);
    cr_assert(RUN_UNTIL(a.remote.state == CB_OPEN && a.remote.opened_at == t, LIVENESS_MS), "trip not seen");
    cr_assert_eq(a.remote.failure_count, 5);
    cr_assert_eq(ddb_pt_elect(d.port, TABLE, "pt-orders", t), 200);
    cr_assert(RUN_UNTIL(a.remote.state == CB_HALF_OPEN, LIVENESS_MS), "election not seen");
    cr_assert_str_eq(a.remote.probe_owner, DDB_PT_OWNER);
    cr_assert_geq(a.remote.lease_expiry, now_s() + 25);
    cr_assert_not(probe(&a, "pt-orders", t, 30), "a Powertools prober's live lease is respected");
    ddb_pt_update(d.port, TABLE, "pt-orders", false, 0);
    cr_assert(RUN_UNTIL(a.remote.state == CB_CLOSED, LIVENESS_MS), "close not seen");
    ddb_pt_trip(d.port, TABLE, "pt-orders", t + 5);
    cr_assert_eq(ddb_pt_elect(d.port, TABLE, "pt-orders", t + 5), 200);
    ddb_pt_update(d.port, TABLE, "pt-orders", true, t + 9);
    cr_assert(RUN_UNTIL(a.remote.state == CB_OPEN && a.remote.opened_at == t + 9, LIVENESS_MS), "reopen not seen");
    cr_assert_str_eq(a.remote.probe_owner, "");
    fleet_stop(&a, NULL);
}

Test(store_dynamodb, items_written_by_the_host_read_back_the_powertools_way)
{
    struct dynalite d;
    struct host a;
    int64_t t = now_s() - 40;
    hosts_start(&d, &a, NULL, NULL);
    track(&a, "pt-pay", 20000);
    trip_written(&a, "pt-pay", t);
    json_t *it = ddb_pt_get(d.port, TABLE, "pt-pay");
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t);
    cr_assert_eq(ddb_item_n(it, "failure_count"), 5);
    int64_t exp = ddb_item_n(it, "expiration");
    cr_assert(exp >= now_s() + 20 + 3600 - 5 && exp <= now_s() + 20 + 3600, "expiration %lld", (long long)exp);
    cr_assert_not(ddb_item_has(it, "half_open_owner"));
    json_decref(it);
    cr_assert(probe(&a, "pt-pay", t, 20));
    it = ddb_pt_get(d.port, TABLE, "pt-pay");
    cr_assert_str_eq(ddb_item_s(it, "state"), "HALF_OPEN");
    cr_assert_str_eq(ddb_item_s(it, "half_open_owner"), "host-a");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t);
    cr_assert_eq(ddb_item_n(it, "probe_lease_expiry"), a.lease_expiry);
    cr_assert(a.lease_expiry >= now_s() + 18 && a.lease_expiry <= now_s() + 20);
    json_decref(it);
    cr_assert_eq(ddb_pt_elect(d.port, TABLE, "pt-pay", t), 400, "Powertools respects the host's live lease");
    transition(&a, "pt-pay", CB_CLOSED, 0, t);
    cr_assert(RUN_UNTIL(settled(&a), LIVENESS_MS));
    it = ddb_pt_get(d.port, TABLE, "pt-pay");
    cr_assert_str_eq(ddb_item_s(it, "state"), "CLOSED");
    cr_assert_eq(ddb_item_n(it, "failure_count"), 0);
    cr_assert_not(ddb_item_has(it, "opened_at") || ddb_item_has(it, "half_open_owner") || ddb_item_has(it, "probe_lease_expiry"));
    cr_assert(ddb_item_has(it, "expiration"));
    json_decref(it);
    fleet_stop(&a, NULL);
}

/* ---- items that are not valid circuits ------------------------------------------------------ */

/* Each written raw over an OPEN circuit of its own: none may be adopted. */
static const struct bad_item {
    const char *name, *attrs, *why;
} bad_items[] = {
    {"bad-state-n", "\"state\":{\"N\":\"1\"}", "attribute 'state' is N, expected S"},
    {"bad-opened-s", "\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"S\":\"1700000000\"}",
     "attribute 'opened_at' is S, expected N"},
    {"bad-state", "\"state\":{\"S\":\"BANANA\"},\"failure_count\":{\"N\":\"0\"}",
     "attribute 'state' is 'BANANA', not CLOSED, OPEN or HALF_OPEN"},
    {"bad-negative", "\"state\":{\"S\":\"CLOSED\"},\"failure_count\":{\"N\":\"-1\"}",
     "attribute 'failure_count' is negative"},
    {"bad-year", "\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"253402300800\"}",
     "attribute 'opened_at' is after 2255-03-14"},
    {"bad-fraction", "\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"1700000000.5\"}",
     "attribute 'opened_at' is not a whole number"},
    {"bad-digits", "\"state\":{\"S\":\"CLOSED\"},\"failure_count\":{\"N\":\"123456789012345678901234\"}",
     "attribute 'failure_count' is more than 4294967295"},
    {"bad-no-opened", "\"state\":{\"S\":\"OPEN\"},\"failure_count\":{\"N\":\"5\"}", "OPEN needs 'opened_at'"},
    {"bad-no-owner", "\"state\":{\"S\":\"HALF_OPEN\"},\"opened_at\":{\"N\":\"1700000000\"},"
     "\"probe_lease_expiry\":{\"N\":\"1700000030\"}", "HALF_OPEN needs 'half_open_owner'"},
    {"bad-no-lease", "\"state\":{\"S\":\"HALF_OPEN\"},\"opened_at\":{\"N\":\"1700000000\"},"
     "\"half_open_owner\":{\"S\":\"" DDB_PT_OWNER "\"}", "HALF_OPEN needs 'probe_lease_expiry'"},
    {"bad-long-owner", "\"state\":{\"S\":\"HALF_OPEN\"},\"opened_at\":{\"N\":\"1700000000\"},"
     "\"probe_lease_expiry\":{\"N\":\"1700000030\"},\"half_open_owner\":{\"S\":\"" DDB_PT_OWNER DDB_PT_OWNER DDB_PT_OWNER "\"}",
     "attribute 'half_open_owner' is 123 bytes, more than the 95 cbd holds"},
};
#define BAD_ITEMS (sizeof bad_items / sizeof bad_items[0])

/* A raw PutItem of the item {id: name, attrs...}, the way any table client writes. */
static void put_raw(int port, const char *name, const char *attrs)
{
    json_t *r = ddb_raw(port, "PutItem", "{\"TableName\":\"" TABLE "\",\"Item\":{\"id\":{\"S\":\"%s\"},%s}}", name,
                        attrs);
    cr_assert_eq(ddb_status(r), 200, "PutItem %s: %s", name, json_dumps(r, 0));
    json_decref(r);
}

static void put_bad_items(int port)
{
    for (size_t i = 0; i < BAD_ITEMS; i++)
        put_raw(port, bad_items[i].name, bad_items[i].attrs);
}

static void track_bad_items(struct host *h)
{
    for (size_t i = 0; i < BAD_ITEMS; i++)
        track(h, bad_items[i].name, 30000);
}

/* The stores log through cbd_log on stderr: into a file of the test's own. */
static const char *capture_log(void)
{
    static char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/stores.log", tsup_tmpdir());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert(fd >= 0 && dup2(fd, 2) == 2, "cannot capture stderr in %s", path);
    close(fd);
    return path;
}

/* Lines of the log holding both strings. */
static int log_lines(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        n += strstr(line, a) != NULL && strstr(line, b) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

Test(store_dynamodb, invalid_items_are_not_adopted_but_counted_at_each_read_and_logged_once_per_circuit)
{
    struct dynalite d;
    struct host a, b;
    const char *log = capture_log();
    int64_t t = now_s() - 5;
    hosts_start(&d, &a, &b, NULL);
    track_bad_items(&a);
    track_bad_items(&b);
    for (size_t i = 0; i < BAD_ITEMS; i++)
        transition(&a, bad_items[i].name, CB_OPEN, t, 0);
    cr_assert(RUN_UNTIL(settled(&a) && b.remotes == (int)BAD_ITEMS, LIVENESS_MS), "B saw %d of the trips", b.remotes);
    put_bad_items(d.port);
    /* Every sync reads every item again: three rounds on both hosts. */
    cr_assert(RUN_UNTIL(store_stat(&a, "invalid_items") >= 3 * BAD_ITEMS &&
                        store_stat(&b, "invalid_items") >= 3 * BAD_ITEMS, LIVENESS_MS),
              "invalid_items: A %llu, B %llu", (unsigned long long)store_stat(&a, "invalid_items"),
              (unsigned long long)store_stat(&b, "invalid_items"));
    cr_assert_eq(a.remotes, 0, "A adopted %s as %d", a.remote.name, a.remote.state);
    cr_assert_eq(b.remotes, (int)BAD_ITEMS, "B adopted %s as %d", b.remote.name, b.remote.state);
    cr_assert_eq(store_stat(&a, "malformed") + store_stat(&b, "malformed"), 0, "the answers themselves were fine");
    for (size_t i = 0; i < BAD_ITEMS; i++) {
        char who[64];
        snprintf(who, sizeof who, "circuit %s: ignoring its item", bad_items[i].name);
        cr_assert_eq(log_lines(log, who, bad_items[i].why), 2, "%s: once per host, saying '%s' (see %s)",
                     bad_items[i].name, bad_items[i].why, log);
    }
    /* Powertools writes a valid item over one of them: adopted, and the log says so. */
    ddb_pt_trip(d.port, TABLE, "bad-state", t + 1);
    cr_assert(RUN_UNTIL(b.remotes == (int)BAD_ITEMS + 1 && a.remotes == 1, LIVENESS_MS), "the valid item was not adopted");
    cr_assert_str_eq(b.remote.name, "bad-state");
    cr_assert_eq(b.remote.opened_at, t + 1);
    cr_assert_eq(log_lines(log, "circuit bad-state: its item", "is valid again"), 2);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, a_host_registering_circuits_whose_items_are_invalid_adopts_none)
{
    struct dynalite d;
    struct host c;
    fleet_start(&d, "");
    put_bad_items(d.port);
    host_open(&c, "dynamodb://" TABLE "?endpoint=%s&sync_ms=0", d.endpoint); /* only the reads at registration */
    track_bad_items(&c);
    cr_assert(RUN_UNTIL(store_stat(&c, "invalid_items") == BAD_ITEMS, LIVENESS_MS), "invalid_items %llu of %zu",
              (unsigned long long)store_stat(&c, "invalid_items"), BAD_ITEMS);
    cr_assert_eq(c.remotes, 0, "%s was adopted as %d", c.remote.name, c.remote.state);
    fleet_stop(&c, NULL);
}

Test(store_dynamodb, an_invalid_item_does_not_hide_the_valid_ones_read_with_it)
{
    struct dynalite d;
    struct host a;
    int64_t t = now_s() - 5;
    hosts_start(&d, &a, NULL, NULL);
    track(&a, "nul-owner", 30000);
    track(&a, "pt-valid", 30000);
    cr_assert(RUN_UNTIL(a.synced >= 2, LIVENESS_MS), "the reads at registration");
    put_raw(d.port, "nul-owner", "\"state\":{\"S\":\"HALF_OPEN\"},\"opened_at\":{\"N\":\"1700000000\"},"
            "\"half_open_owner\":{\"S\":\"4242#a\\u0000b\"},\"probe_lease_expiry\":{\"N\":\"1700000030\"}");
    ddb_pt_trip(d.port, TABLE, "pt-valid", t);
    cr_assert(RUN_UNTIL(a.remotes == 1, LIVENESS_MS), "the valid item in the same BatchGetItem answer was lost");
    cr_assert_str_eq(a.remote.name, "pt-valid");
    cr_assert_eq(a.remote.state, CB_OPEN);
    cr_assert_geq(store_stat(&a, "invalid_items"), 1, "the owner with a NUL byte is counted");
    fleet_stop(&a, NULL);
}

/* ---- faults from a scripted endpoint ---------------------------------------------------- */

enum script { SC_RETRY, SC_GARBAGE, SC_SLOW, SC_DOWN, SC_UP, SC_OTHER_KEY };
static struct scripted {
    enum script mode;
    int gets, puts, batches;
} sc;

/* An answer holding an OPEN item for name under member ("Item" of a
 * GetItem, "Attributes" of an UpdateItem). */
static void open_item_in(char *body, size_t len, const char *member, const char *name)
{
    snprintf(body, len, "{\"%s\":{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"OPEN\"},\"failure_count\":{\"N\":"
             "\"5\"},\"opened_at\":{\"N\":\"1700000000\"},\"expiration\":{\"N\":\"1700003630\"}}}", member, name);
}

static void open_item(char *body, size_t len, const char *name)
{
    open_item_in(body, len, "Item", name);
}

/* An endpoint that answers the way each test scripts it. Reads of the
 * store's connection check (a key that is no circuit) are answered as a
 * table without that item, except when the whole endpoint is down or
 * slow; the scripts count the requests about the test's circuits. */
static void scripted_handler(void *arg, const struct fake_req *rq, struct fake_resp *rs)
{
    struct scripted *s = arg;
    char target[128] = "";
    fake_header(rq, "X-Amz-Target", target, sizeof target);
    bool get = strstr(target, ".GetItem"), batch = strstr(target, ".BatchGetItem");
    bool put = strstr(target, ".PutItem") || strstr(target, ".UpdateItem");
    if (get && strstr(rq->body, "cbd-reachability-check") != NULL && s->mode != SC_DOWN) {
        strcpy(rs->body, "{}");
        return;
    }
    int n = get ? ++s->gets : put ? ++s->puts : batch ? ++s->batches : 0;
    if (s->mode == SC_DOWN) {
        rs->status = 503;
        strcpy(rs->body, "{\"__type\":\"com.amazon.coral.service#ServiceUnavailableException\"}");
    } else if (s->mode == SC_RETRY && (get || put) && n <= 2) {
        rs->status = n == 1 ? 400 : 500;
        strcpy(rs->body, n == 2 ? "{\"__type\":\"com.amazon.coral.service#InternalFailure\"}"
                         : get ? "{\"__type\":\"com.amazon.coral.availability#ThrottlingException\",\"message\":"
                                 "\"Rate of requests exceeds the allowed throughput.\"}"
                               : "{\"__type\":\"com.amazonaws.dynamodb.v20120810#"
                                 "ProvisionedThroughputExceededException\"}");
    } else if (s->mode == SC_GARBAGE && get) {
        strcpy(rs->body, n == 1 ? "{{{ not json" : "[1,2,3]");
    } else if (s->mode == SC_GARBAGE && batch) {
        strcpy(rs->body, "{\"Responses\":{\"" TABLE "\":[{\"id\":{\"S\":\"inv\"},\"state\":{\"S\":\"BANANA\"}},"
                         "{\"id\":{\"S\":\"inv\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"xyz\"}},"
                         "{\"id\":{\"S\":\"bad name\"},\"state\":{\"S\":\"OPEN\"}},17]}}");
    } else if (s->mode == SC_OTHER_KEY && get) {
        open_item(rs->body, sizeof rs->body, "other");
    } else if (s->mode == SC_SLOW && get && n == 1) {
        rs->delay_ms = 1500;
        open_item(rs->body, sizeof rs->body, "inv");
    } else if (get) {
        open_item(rs->body, sizeof rs->body, "inv");
    } else if (put) { /* the item as written: ReturnValues ALL_NEW */
        open_item_in(rs->body, sizeof rs->body, "Attributes", "inv");
    } else if (batch) {
        strcpy(rs->body, "{\"Responses\":{\"" TABLE "\":[]},\"UnprocessedKeys\":{}}");
    }
}

static struct fake_http *scripted_start(enum script mode, struct host *h, const char *extra)
{
    struct fake_http *f = fake_http_start(scripted_handler, &sc);
    sc.mode = mode;
    uv_loop_init(&loop);
    host_open(h, "dynamodb://" TABLE "?endpoint=http://127.0.0.1:%d&sync_ms=0&owner=host-f&timeout_ms=%s"
              "&backoff_max_ms=300", f->port, extra);
    return f;
}

static void scripted_set(struct fake_http *f, enum script mode)
{
    pthread_mutex_lock(&f->mu);
    sc.mode = mode;
    pthread_mutex_unlock(&f->mu);
}

Test(store_dynamodb, throttling_and_server_errors_are_retried_until_success)
{
    struct host h;
    struct fake_http *f = scripted_start(SC_RETRY, &h, "1000");
    track(&h, "inv", 30000);
    cr_assert(RUN_UNTIL(h.remotes == 1, LIVENESS_MS), "the read succeeded in the end");
    cr_assert_eq(h.remote.state, CB_OPEN);
    transition(&h, "inv", CB_OPEN, now_s(), 0);
    cr_assert(RUN_UNTIL(settled(&h), LIVENESS_MS), "the write succeeded in the end");
    /* the connection check (one GetItem), then three attempts each for the read and the write */
    cr_assert_eq(store_stat(&h, "requests"), 7);
    cr_assert_eq(store_stat(&h, "retries"), 4);
    cr_assert_eq(store_stat(&h, "throttles"), 2, "ThrottlingException and ProvisionedThroughputExceededException");
    cr_assert_eq(store_stat(&h, "errors"), 0);
    cr_assert(h.online && h.health_calls == 1, "never reported offline");
    pthread_mutex_lock(&f->mu);
    cr_assert_eq(f->connections, 1, "one kept-alive connection for all six attempts");
    pthread_mutex_unlock(&f->mu);
    fleet_stop(&h, NULL);
}

Test(store_dynamodb, garbage_answers_are_counted_and_ignored)
{
    struct host h;
    scripted_start(SC_GARBAGE, &h, "1000");
    track(&h, "inv", 30000);
    cr_assert(RUN_UNTIL(store_stat(&h, "malformed") >= 1, LIVENESS_MS));
    track(&h, "other", 30000);
    cr_assert(RUN_UNTIL(store_stat(&h, "malformed") >= 2, LIVENESS_MS), "two GetItem answers that are not DynamoDB JSON");
    cbd_store_dynamodb_ops.sync(h.s);
    /* the batch answer's four items: an invalid item for inv (invalid_items),
     * a second item for inv, one about a name nobody asked for and one that
     * is not an item (malformed answers) */
    cr_assert(RUN_UNTIL(store_stat(&h, "invalid_items") >= 1 && store_stat(&h, "malformed") >= 5, LIVENESS_MS),
              "invalid_items %llu, malformed %llu", (unsigned long long)store_stat(&h, "invalid_items"),
              (unsigned long long)store_stat(&h, "malformed"));
    cr_assert_eq(h.remotes, 0, "nothing garbage is reported as a circuit");
    fleet_stop(&h, NULL);
}

Test(store_dynamodb, an_item_for_another_key_than_the_one_asked_for_is_not_adopted)
{
    struct host h;
    scripted_start(SC_OTHER_KEY, &h, "1000");
    track(&h, "inv", 30000);
    cr_assert(RUN_UNTIL(store_stat(&h, "invalid_items") == 1, LIVENESS_MS), "the item was not counted");
    RUN_UNTIL(false, 300); /* a wrong report would come now */
    cr_assert_eq(h.remotes, 0, "circuit %s was reported from an item about 'other'", h.remote.name);
    cr_assert_eq(store_stat(&h, "malformed"), 0, "the answer itself is DynamoDB JSON");
    fleet_stop(&h, NULL);
}

Test(store_dynamodb, an_answer_slower_than_the_timeout_is_retried)
{
    struct host h;
    scripted_start(SC_SLOW, &h, "300");
    track(&h, "inv", 30000);
    cr_assert(RUN_UNTIL(h.remotes == 1, LIVENESS_MS));
    cr_assert_geq(store_stat(&h, "timeouts"), 1);
    cr_assert_geq(store_stat(&h, "retries"), 1);
    cr_assert_eq(store_stat(&h, "errors"), 0);
    fleet_stop(&h, NULL);
}

Test(store_dynamodb, an_unreachable_table_goes_host_local_and_comes_back)
{
    struct host h;
    struct fake_http *f = scripted_start(SC_DOWN, &h, "1000");
    int64_t t = now_s() - 40;
    track(&h, "inv", 30000);
    cr_assert(RUN_UNTIL(h.health_calls == 1, LIVENESS_MS));
    cr_assert_not(h.online);
    cr_assert(strstr(h.why, "HTTP 503") && strstr(h.why, "ServiceUnavailableException"), "%s", h.why);
    transition(&h, "inv", CB_OPEN, t, 0);
    cr_assert(probe(&h, "inv", t, 30), "the probe is granted host-local while the fleet is unreachable");
    cr_assert_eq(store_stat(&h, "queued"), 1, "the trip waits for the table");
    scripted_set(f, SC_UP);
    cr_assert(RUN_UNTIL(h.online, LIVENESS_MS), "back online");
    cr_assert(RUN_UNTIL(settled(&h), LIVENESS_MS), "the queued trip was written");
    fleet_stop(&h, NULL);
}

Test(store_dynamodb, dynalite_killed_and_restarted_gets_the_queued_trip)
{
    struct dynalite d;
    struct host a;
    int64_t t = now_s();
    fleet_start(&d, "");
    host_open(&a, HOST_URI "&attempts=2", d.endpoint, "host-a");
    track(&a, "inventory", 30000);
    cr_assert(RUN_UNTIL(a.online, LIVENESS_MS));
    dynalite_kill(&d);
    transition(&a, "inventory", CB_OPEN, t, 0);
    cr_assert(RUN_UNTIL(!a.online, LIVENESS_MS), "the outage is reported");
    cr_assert_eq(store_stat(&a, "queued"), 1);
    dynalite_start(&d, d.port);
    create_table(d.endpoint, ""); /* dynalite keeps nothing: a fresh, empty table */
    cr_assert(RUN_UNTIL(a.online && settled(&a), LIVENESS_MS), "back online with the trip written");
    json_t *it = ddb_pt_get(d.port, TABLE, "inventory");
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t);
    json_decref(it);
    fleet_stop(&a, NULL);
}

/* ---- lease renewal and agreement ---------------------------------------------------- */

Test(store_dynamodb, the_holder_renews_its_lease_in_the_table_and_keeps_the_other_host_out)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    a_holds_the_probe(&d, &a, &b, "orders", t, 2);
    int64_t first = a.lease_expiry;
    RUN_UNTIL(false, 1100);
    /* the holder, still probing, renews */
    cr_assert(probe(&a, "orders", t, 3), "the holder's renewal is granted");
    cr_assert_gt(a.lease_expiry, first, "the renewal moves the lease (%lld, was %lld)", (long long)a.lease_expiry,
                 (long long)first);
    json_t *it = ddb_pt_get(d.port, TABLE, "orders");
    cr_assert_str_eq(ddb_item_s(it, "state"), "HALF_OPEN");
    cr_assert_str_eq(ddb_item_s(it, "half_open_owner"), "host-a");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t);
    cr_assert_eq(ddb_item_n(it, "probe_lease_expiry"), a.lease_expiry, "the table holds the renewed lease");
    cr_assert_gt(ddb_item_n(it, "expiration"), a.lease_expiry, "the TTL moves with it");
    json_decref(it);
    RUN_UNTIL(now_s() > first, 3000); /* the first lease would have run out */
    cr_assert_not(probe(&b, "orders", t, 30), "B cannot take over a renewed lease");
    cr_assert_eq(b.lease_expiry, a.lease_expiry, "B is told when the renewed lease ends");
    fleet_stop(&a, &b);
}

Test(store_dynamodb, a_renewal_after_another_host_took_over_is_refused_and_reported)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    a_holds_the_probe(&d, &a, &b, "billing", t, 1);
    RUN_UNTIL(false, 2100); /* A's lease runs out unrenewed */
    cr_assert(probe(&b, "billing", t, 30), "B takes over the expired lease");
    /* A, late, renews */
    cr_assert_not(probe(&a, "billing", t, 30), "a lease another host took over is not renewed");
    cr_assert_eq(a.lease_expiry, b.lease_expiry, "A is told when B's lease ends");
    cr_assert_eq(a.remote.state, CB_HALF_OPEN);
    cr_assert_str_eq(a.remote.probe_owner, "host-b", "A learns B holds the lease");
    json_t *it = ddb_pt_get(d.port, TABLE, "billing");
    cr_assert_str_eq(ddb_item_s(it, "half_open_owner"), "host-b");
    cr_assert_eq(ddb_item_n(it, "probe_lease_expiry"), b.lease_expiry);
    json_decref(it);
    fleet_stop(&a, &b);
}

Test(store_dynamodb, synced_follows_every_answer_that_agrees_with_the_table)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    hosts_start(&d, &a, &b, "carts");
    cr_assert(RUN_UNTIL(a.synced > 0 && b.synced > 0, LIVENESS_MS), "the read at registration agrees");
    transition(&a, "carts", CB_OPEN, t, 0);
    a.synced = 0;
    cr_assert(RUN_UNTIL(settled(&a) && a.synced > 0, LIVENESS_MS), "the trip landed");
    cr_assert_str_eq(a.synced_name, "carts");
    cr_assert_geq(a.synced_at, t + 30);
    b.synced = 0;
    cr_assert(RUN_UNTIL(b.remote.state == CB_OPEN && b.synced > 0, LIVENESS_MS), "a sync reported the difference");
    b.synced = 0;
    try_probe(&b, "carts", t, 30);
    cr_assert(RUN_UNTIL(b.probes == 1 && b.synced > 0, LIVENESS_MS), "the election was answered");
    a.synced = 0;
    try_probe(&a, "carts", t, 30);
    cr_assert(RUN_UNTIL(a.probes == 1 && a.synced > 0, LIVENESS_MS), "the lost election was read back");
    cr_assert_not(a.granted);
    fleet_stop(&a, &b);
}

/* ---- release, keys, IAM ----------------------------------------------------------------- */

Test(store_dynamodb, a_released_lease_is_back_to_open_without_owner_and_powertools_elects_at_once)
{
    struct dynalite d;
    struct host a, b;
    int64_t t = now_s() - 30;
    a_holds_the_probe(&d, &a, &b, "giveback", t, 30);
    cbd_store_dynamodb_ops.release(a.s, "giveback", t);
    cr_assert(RUN_UNTIL(({
                            json_t *it = ddb_pt_get(d.port, TABLE, "giveback");
                            const char *st = ddb_item_s(it, "state");
                            bool open = st != NULL && strcmp(st, "OPEN") == 0;
                            json_decref(it);
                            open;
                        }),
                        LIVENESS_MS),
              "the release never reached the table");
    json_t *it = ddb_pt_get(d.port, TABLE, "giveback");
    cr_assert_eq(ddb_item_n(it, "opened_at"), t, "the same opening");
    cr_assert(!ddb_item_has(it, "half_open_owner") && !ddb_item_has(it, "probe_lease_expiry"),
              "no owner, no lease: %s", json_dumps(it, 0));
    json_decref(it);
    cr_assert_eq(ddb_pt_elect(d.port, TABLE, "giveback", t), 200,
                 "Powertools' own election wins at once, long before A's lease would have ended");
    fleet_stop(&a, &b);
}

/* The composite-key partition value by default: Powertools' own,
 * circuit_breaker#<function name>. */
static void default_static_pk_is(const char *function, const char *pk)
{
    struct dynalite d;
    struct host a;
    char key[256];
    if (function != NULL)
        setenv("AWS_LAMBDA_FUNCTION_NAME", function, 1);
    else
        unsetenv("AWS_LAMBDA_FUNCTION_NAME");
    fleet_start(&d, "&sk=name");
    host_open(&a, HOST_URI "&sk=name", d.endpoint, "host-a");
    track(&a, "stock", 30000);
    trip_written(&a, "stock", now_s());
    snprintf(key, sizeof key, "{\"id\":{\"S\":\"%s\"},\"name\":{\"S\":\"stock\"}}", pk);
    json_t *it = ddb_raw(d.port, "GetItem", "{\"TableName\":\"" TABLE "\",\"Key\":%s}", key);
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN", "no item under %s", key);
    json_decref(it);
    fleet_stop(&a, NULL);
}

Test(store_dynamodb, composite_keys_default_to_the_partition_value_of_powertools_in_this_function)
{
    default_static_pk_is("orders-api", "circuit_breaker#orders-api");
}

Test(store_dynamodb, composite_keys_default_to_powertools_partition_value_without_a_function)
{
    default_static_pk_is(NULL, "circuit_breaker#");
}

/* An endpoint whose IAM policy denies BatchGetItem: every GetItem finds an
 * OPEN item for the key asked for. */
static struct {
    int batches, gets;
} denied;

static void batch_denied_handler(void *arg, const struct fake_req *rq, struct fake_resp *rs)
{
    char target[128] = "", name[64] = "";
    (void)arg;
    fake_header(rq, "X-Amz-Target", target, sizeof target);
    if (strstr(target, ".BatchGetItem") != NULL) {
        denied.batches++;
        rs->status = 400;
        strcpy(rs->body, "{\"__type\":\"com.amazon.coral.service#AccessDeniedException\",\"Message\":\"User: "
                         "arn:aws:iam::123456789012:user/cbd is not authorized to perform: dynamodb:BatchGetItem\"}");
        return;
    }
    const char *k = strstr(rq->body, "\"id\":{\"S\":\"");
    if (strstr(target, ".GetItem") == NULL || k == NULL || sscanf(k + 11, "%63[^\"]", name) != 1 ||
        strcmp(name, "cbd-reachability-check") == 0)
        return; /* {} */
    denied.gets++;
    open_item(rs->body, sizeof rs->body, name);
}

Test(store_dynamodb, when_iam_denies_batchgetitem_each_circuit_is_read_with_getitem_and_it_is_said_once)
{
    struct host h;
    const char *log = capture_log();
    struct fake_http *f = fake_http_start(batch_denied_handler, NULL);
    uv_loop_init(&loop);
    host_open(&h, "dynamodb://" TABLE "?endpoint=http://127.0.0.1:%d&sync_ms=0&owner=host-f&timeout_ms=1000",
              f->port);
    const char *names[] = {"deny-a", "deny-b", "deny-c"};
    for (int i = 0; i < 3; i++)
        track(&h, names[i], 30000);
    cr_assert(RUN_UNTIL(h.remotes == 3, LIVENESS_MS), "the reads at registration");
    h.remotes = 0;
    pthread_mutex_lock(&f->mu);
    denied.gets = 0;
    pthread_mutex_unlock(&f->mu);
    int synced = h.synced;
    cbd_store_dynamodb_ops.sync(h.s);
    cr_assert(RUN_UNTIL(({
                            pthread_mutex_lock(&f->mu);
                            int gets = denied.gets;
                            pthread_mutex_unlock(&f->mu);
                            gets == 3 && h.synced >= synced + 3;
                        }),
                        LIVENESS_MS),
              "the denied batch was not read circuit by circuit");
    cbd_store_dynamodb_ops.sync(h.s);
    cr_assert(RUN_UNTIL(({
                            pthread_mutex_lock(&f->mu);
                            int gets = denied.gets;
                            pthread_mutex_unlock(&f->mu);
                            gets == 6;
                        }),
                        LIVENESS_MS));
    pthread_mutex_lock(&f->mu);
    cr_assert_eq(denied.batches, 1, "BatchGetItem is not asked again once denied");
    pthread_mutex_unlock(&f->mu);
    cr_assert_eq(store_stat(&h, "batch_denied"), 1);
    cr_assert(h.online && h.health_calls == 1, "a denied BatchGetItem is no outage");
    cr_assert_eq(log_lines(log, "BatchGetItem on table " TABLE " is denied", "reading each circuit with GetItem"), 1,
                 "the operator is told once (see %s)", log);
    fleet_stop(&h, NULL);
}
