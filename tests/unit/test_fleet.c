/*
 * test_fleet.c - the fleet layer (persistence/fleet.c) over an in-memory
 * transport, with a virtual clock.
 *
 * The transport here is the third one next to redis and DynamoDB: a table
 * of items (the "store") shared by every host of the test, and per host a
 * queue of requests the test delivers when it wants, in order - applying
 * writes with fleet_write_applies / fleet_write_result at the virtual
 * store time, answering reads, publishing a notification of each applied
 * write to the other hosts - or loses (the answer never comes: ERROR
 * -ENOTCONN, after the write applied or not). Connection attempts are
 * answered by the test too (mem_connected), so every outage, lost answer
 * and race is a step the test takes, and nothing depends on real time:
 * the fleet layer's clock is the virtual one, and its reconnection jitter
 * draws 0 (the retry comes on the next loop turn).
 *
 * Hosts are fleet stores made through a cbd_store_ops table built
 * with FLEET_STORE_DEFINE, exactly as the redis and dynamodb stores
 * are; the daemon is played by the test, which records every hook call.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "fleet.h"
#include "tsup.h"
#include "tsup_store.h"

#define MAX_ITEMS 64
#define MAX_REQS 1024
#define MAX_HOSTS 3
#define MAX_SWEPT 4096 /* circuits "c<number>" whose reads the budget tests follow */

/* ---- the in-memory store ------------------------------------------------------------- */

struct mem_item {
    char name[CB_NAME_MAX + 1];
    struct fleet_item item;
    const char *invalid; /* not NULL: the store holds garbage; why */
};

struct mem_req {
    bool read, list;
    void (*each)(void *arg, const char *name);
    void (*listed)(void *arg, int rc);
    char name[CB_NAME_MAX + 1];
    struct fleet_write w;
    char owner[FLEET_OWNER_MAX + 1];
    fleet_read_cb *rcb;
    fleet_write_cb *wcb;
    void *arg;
};

struct fleet_transport {
    int host;
    struct fleet_transport_cbs cbs;
    char owner[FLEET_OWNER_MAX + 1];
    bool up, connecting, closed;
    uint32_t read_budget; /* from the URI: mem://A?read_budget=N */
    struct mem_req q[MAX_REQS];
    size_t head, n;
    uint64_t reads, writes, read_calls;
};

static struct {
    struct mem_item items[MAX_ITEMS];
    size_t nitems;
    int64_t now;
    struct fleet_transport *hosts[MAX_HOSTS];
    /* circuits "c<i>": the period (sync) of their last read by host A, and
     * which of them host A's daemon uses (its hooks.used) */
    uint64_t period;
    uint64_t read_in[MAX_SWEPT];
    unsigned reads_of[MAX_SWEPT];
    bool used[MAX_SWEPT];
} world;

static struct mem_item *item_of(const char *name, bool add)
{
    for (size_t i = 0; i < world.nitems; i++)
        if (strcmp(world.items[i].name, name) == 0)
            return &world.items[i];
    if (!add)
        return NULL;
    cr_assert_lt(world.nitems, MAX_ITEMS);
    struct mem_item *it = &world.items[world.nitems++];
    memset(it, 0, sizeof *it);
    snprintf(it->name, sizeof it->name, "%s", name);
    return it;
}

static int mem_check_uri(const char *uri, char *why, size_t size)
{
    if (strncmp(uri, "mem://", 6) == 0 && uri[6] >= 'A' && uri[6] < 'A' + MAX_HOSTS &&
        (uri[7] == '\0' || strncmp(uri + 7, "?read_budget=", 13) == 0))
        return 0;
    snprintf(why, size, "not mem://A..C[?read_budget=N]");
    return -EINVAL;
}

static int mem_create(struct fleet_transport **out, uv_loop_t *loop, const char *uri, const char *owner_hint,
                      const struct fleet_transport_cbs *cbs, char *why, size_t size)
{
    (void)loop;
    (void)owner_hint;
    if (mem_check_uri(uri, why, size) < 0)
        return -EINVAL;
    struct fleet_transport *t = calloc(1, sizeof *t);
    t->host = uri[6] - 'A';
    t->cbs = *cbs;
    snprintf(t->owner, sizeof t->owner, "host-%c", uri[6]);
    t->read_budget = uri[7] == '?' ? (uint32_t)strtoul(uri + 20, NULL, 10) : 0;
    world.hosts[t->host] = t;
    *out = t;
    return 0;
}

static const char *mem_owner(const struct fleet_transport *t)
{
    return t->owner;
}

static void mem_settings(const struct fleet_transport *t, struct fleet_settings *out)
{
    *out = (struct fleet_settings){.log_name = "mem store", .where = "memory", .sync_ms = 0, .read_batch = 4,
                                   .read_budget = t->read_budget, .backoff_base_ms = 100, .backoff_cap_ms = 5000,
                                   .close_wait_ms = 1000};
}

static void mem_connect(struct fleet_transport *t)
{
    t->connecting = true;
}

static struct mem_req *enqueue(struct fleet_transport *t)
{
    cr_assert_lt(t->n, MAX_REQS, "more requests than the test's queue holds");
    struct mem_req *r = &t->q[(t->head + t->n++) % MAX_REQS];
    memset(r, 0, sizeof *r);
    return r;
}

static int mem_read(struct fleet_transport *t, const char *const *names, size_t n, fleet_read_cb *cb, void *arg)
{
    if (!t->up)
        return -ENOTCONN;
    cr_assert(n >= 1 && n <= 4, "a read of %zu names, beyond the batch of 4", n);
    t->read_calls++;
    for (size_t i = 0; i < n; i++) {
        struct mem_req *r = enqueue(t);
        r->read = true;
        snprintf(r->name, sizeof r->name, "%s", names[i]);
        r->rcb = cb;
        r->arg = arg;
    }
    return (int)n;
}

static int mem_write(struct fleet_transport *t, const struct fleet_write *w, fleet_write_cb *cb, void *arg)
{
    if (!t->up)
        return -ENOTCONN;
    struct mem_req *r = enqueue(t);
    r->w = *w;
    snprintf(r->name, sizeof r->name, "%s", w->name);
    snprintf(r->owner, sizeof r->owner, "%s", w->owner);
    r->w.name = r->name;
    r->w.owner = r->owner;
    r->wcb = cb;
    r->arg = arg;
    return 0;
}

static int mem_list(struct fleet_transport *t, void (*each)(void *arg, const char *name),
                    void (*done)(void *arg, int rc), void *arg)
{
    if (!t->up)
        return -ENOTCONN;
    struct mem_req *r = enqueue(t);
    r->list = true;
    r->each = each;
    r->listed = done;
    r->arg = arg;
    return 0;
}

static void mem_stats(const struct fleet_transport *t, void (*emit)(void *, const char *, uint64_t), void *arg)
{
    emit(arg, "mem_reads", t->reads);
    emit(arg, "mem_writes", t->writes);
}

static void mem_close(struct fleet_transport *t, void (*done)(void *), void *arg)
{
    world.hosts[t->host] = NULL;
    free(t);
    done(arg); /* the test's transport may: the fleet layer waits for its own handles too */
}

static const struct fleet_transport_ops mem_ops = {
    .scheme = "mem", .check_uri = mem_check_uri, .create = mem_create, .owner = mem_owner,
    .settings = mem_settings, .connect = mem_connect, .read = mem_read, .write = mem_write, .list = mem_list,
    .stats = mem_stats, .close = mem_close,
};

FLEET_STORE_DEFINE(mem_store_ops, "mem", mem_ops, mem_check_uri);

/* ---- delivering -------------------------------------------------------------------------- */

static struct mem_req pop(struct fleet_transport *t)
{
    struct mem_req r = t->q[t->head];
    t->head = (t->head + 1) % MAX_REQS;
    t->n--;
    return r;
}

/* The store executes r now; answered unless lost (then ERROR -ENOTCONN). */
static void execute(struct fleet_transport *t, struct mem_req *r, bool apply, bool answer)
{
    struct mem_item *it = item_of(r->name, false);
    struct fleet_answer a = {.status = FLEET_OK, .at_s = world.now};
    if (r->list) {
        for (size_t i = 0; answer && i < world.nitems; i++)
            if (world.items[i].item.exists || world.items[i].invalid != NULL)
                r->each(r->arg, world.items[i].name);
        r->listed(r->arg, answer ? 0 : -ENOTCONN);
        return;
    }
    if (r->read) {
        t->reads++;
        if (t->host == 0 && r->name[0] == 'c' && r->name[1] >= '0' && r->name[1] <= '9' &&
            atoi(r->name + 1) < MAX_SWEPT) {
            world.read_in[atoi(r->name + 1)] = world.period;
            world.reads_of[atoi(r->name + 1)]++;
        }
        if (it != NULL && it->invalid != NULL)
            a = (struct fleet_answer){.status = FLEET_INVALID, .why = it->invalid};
        else if (it == NULL || !it->item.exists)
            a = (struct fleet_answer){.status = FLEET_ABSENT, .item.shadow = it != NULL ? it->item.shadow
                                                                                     : (struct fleet_shadow){0}};
        else
            a.item = it->item;
    } else {
        t->writes++;
        struct fleet_item before = it != NULL ? it->item : (struct fleet_item){0};
        if (it != NULL && it->invalid != NULL) {
            a = (struct fleet_answer){.status = FLEET_INVALID, .why = it->invalid};
        } else if (apply && fleet_write_applies(&before, &r->w, world.now)) {
            it = item_of(r->name, true);
            fleet_write_result(&before, &r->w, world.now, &it->item);
            a.applied = true;
            a.item = it->item;
            for (int h = 0; h < MAX_HOSTS; h++) /* a notification to the others, as redis publishes */
                if (world.hosts[h] != NULL && world.hosts[h] != t && world.hosts[h]->up)
                    world.hosts[h]->cbs.changed(world.hosts[h]->cbs.arg, r->name);
        } else {
            a.item = before;
        }
    }
    if (!answer)
        a = (struct fleet_answer){.status = FLEET_ERROR, .err = -ENOTCONN, .why = "connection lost"};
    if (r->read)
        r->rcb(r->arg, r->name, &a);
    else
        r->wcb(r->arg, &a);
}

/* The first queued request of host h, delivered (and answered). */
static void deliver_one(int h)
{
    struct fleet_transport *t = world.hosts[h];
    cr_assert(t != NULL && t->n > 0, "host %c has no request to deliver", 'A' + h);
    struct mem_req r = pop(t);
    execute(t, &r, true, true);
}

static uv_loop_t loop;

static void turn(void)
{
    for (int i = 0; i < 4; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* Run until quiet: every queued request of every up host delivered. */
static void settle(void)
{
    for (int rounds = 0; rounds < 1000; rounds++) {
        turn();
        bool any = false;
        for (int h = 0; h < MAX_HOSTS; h++) {
            while (world.hosts[h] != NULL && world.hosts[h]->up && world.hosts[h]->n > 0) {
                deliver_one(h);
                any = true;
            }
        }
        if (!any)
            return;
    }
    cr_assert_fail("the hosts never stopped sending");
}

/* Host h's requests waiting for delivery, the first one's kind. */
static size_t queued(int h)
{
    turn();
    return world.hosts[h]->n;
}

static const struct mem_req *first(int h)
{
    cr_assert(queued(h) > 0, "host %c sent nothing", 'A' + h);
    return &world.hosts[h]->q[world.hosts[h]->head];
}

/* The connection attempt host h's store made, answered. */
static void mem_connected(int h, bool ok)
{
    turn();
    struct fleet_transport *t = world.hosts[h];
    cr_assert(t->connecting, "host %c made no connection attempt", 'A' + h);
    t->connecting = false;
    t->up = ok;
    if (ok)
        t->cbs.up(t->cbs.arg, "connected to memory");
    else
        t->cbs.down(t->cbs.arg, -ECONNREFUSED, "connection refused");
    turn();
}

/* Host h loses its connection: the answers to what it has queued are lost
 * (the requests applied or not), then down() - the order redis_link
 * reports them in. */
static void mem_drop(int h, bool applied)
{
    struct fleet_transport *t = world.hosts[h];
    t->up = false;
    while (t->n > 0) {
        struct mem_req r = pop(t);
        execute(t, &r, applied, false);
    }
    t->cbs.down(t->cbs.arg, -ECONNRESET, "connection reset");
    turn();
}

/* ---- the daemon, as the test plays it: hosts recording their hooks ---------------------------- */

static struct tsup_store_host hosts[MAX_HOSTS];

static int64_t clock_now(void *arg)
{
    (void)arg;
    return world.now;
}

static uint64_t clock_random(void *arg)
{
    (void)arg;
    return 0;
}

/* Host h ('A' + h) created; not connected yet. */
static struct tsup_store_host *host_new(int h)
{
    char uri[16];
    const char *err = NULL;
    struct tsup_store_host *x = &hosts[h];
    memset(x, 0, sizeof *x);
    snprintf(uri, sizeof uri, "mem://%c", 'A' + h);
    struct cbd_store_hooks hk = tsup_store_hooks(x, &loop, "t");
    cr_assert_eq(mem_store_ops.create(&x->s, uri, &hk, &err), 0, "%s", err ? err : "?");
    fleet_set_clock(x->s, &(struct fleet_clock){.now_s = clock_now, .random = clock_random});
    return x;
}

/* Host h created, restored and online. */
static struct tsup_store_host *host_up(int h)
{
    struct tsup_store_host *x = host_new(h);
    mem_store_ops.restore(x->s, tsup_store_restored, &x->done);
    mem_connected(h, true);
    settle();
    cr_assert(x->done.restored && x->done.restore_rc == 0 && x->online);
    return x;
}

static void host_close(struct tsup_store_host *x)
{
    mem_store_ops.close(x->s, tsup_store_closed, &x->done);
    for (int i = 0; i < 100 && !x->done.closed; i++)
        turn();
    cr_assert(x->done.closed, "close never finished");
}

static void setup(void)
{
    memset(&world, 0, sizeof world);
    world.now = 1700000000;
    cr_assert_eq(uv_loop_init(&loop), 0);
}

static void teardown_loop(void)
{
    for (int h = 0; h < MAX_HOSTS; h++)
        if (hosts[h].s != NULL && !hosts[h].done.closed)
            host_close(&hosts[h]);
    turn();
    cr_assert_eq(uv_loop_close(&loop), 0, "the fleet layer left a handle open");
}

TestSuite(fleet, .init = setup, .fini = teardown_loop, .timeout = 20);

/* ---- helpers ------------------------------------------------------------------------------------ */

static struct cbd_store_state state(const char *name, cb_state st, int64_t opened_at)
{
    struct cbd_store_state s = {.state = st, .opened_at = opened_at, .failure_count = st == CB_OPEN ? 5 : 0};
    snprintf(s.name, sizeof s.name, "%s", name);
    return s;
}

static void transition(struct tsup_store_host *x, const char *name, cb_state st, int64_t opened_at, int64_t prev)
{
    struct cbd_store_state s = state(name, st, opened_at);
    mem_store_ops.transition(x->s, &s, prev);
}

static const struct fleet_item *stored(const char *name)
{
    struct mem_item *it = item_of(name, false);
    cr_assert(it != NULL, "the store holds no item for %s", name);
    return &it->item;
}

static const struct cbd_store_state *last_remote(const struct tsup_store_host *x)
{
    const struct cbd_store_state *st = tsup_store_last_remote(x, NULL);
    cr_assert_not_null(st, "the daemon was told nothing");
    return st;
}

static const struct tsup_probe *last_probe(const struct tsup_store_host *x)
{
    const struct tsup_probe *p = tsup_store_last_probe(x);
    cr_assert_not_null(p, "the election was never answered");
    return p;
}

/* The daemon of host x asks for the probe of (name, opened_at) and, when
 * granted, goes HALF_OPEN as cbd does. Granted? */
static bool elect(struct tsup_store_host *x, const char *name, int64_t opened_at, uint32_t lease_s)
{
    int before = x->nprobe;
    mem_store_ops.try_probe(x->s, name, opened_at, lease_s);
    settle();
    cr_assert_eq(x->nprobe, before + 1, "the election was not answered once");
    if (last_probe(x)->granted)
        transition(x, name, CB_HALF_OPEN, opened_at, opened_at);
    settle();
    return last_probe(x)->granted;
}

/* A counter of host x's store, as cbd's stats show it (without store_). */
static uint64_t store_stat(const struct tsup_store_host *x, const char *name)
{
    bool found;
    uint64_t v = tsup_store_stat(&mem_store_ops, x->s, name, &found);
    cr_assert(found, "no counter %s", name);
    return v;
}

/* The first queued request of host h answered with an error (-EIO: the
 * store said no; -EINVAL: it refused the request as malformed). */
static void answer_error(int h, int err)
{
    turn();
    struct fleet_transport *t = world.hosts[h];
    cr_assert(t->n > 0, "host %c sent nothing", 'A' + h);
    struct mem_req r = pop(t);
    struct fleet_answer a = {.status = FLEET_ERROR, .err = err, .why = "ERR the store says no"};
    if (r.read)
        r.rcb(r.arg, r.name, &a);
    else
        r.wcb(r.arg, &a);
    turn();
}

static struct fleet_item make_item(cb_state st, int64_t opened_at, const char *owner, int64_t lease)
{
    struct fleet_item it = {.exists = true, .state = st, .opened_at = opened_at, .lease_expiry = lease,
                            .failure_count = st == CB_CLOSED ? 0 : 5};
    snprintf(it.owner, sizeof it.owner, "%s", owner);
    return it;
}

/* ==== the write rules ============================================================================== */

struct rule {
    const char *what;
    struct fleet_item before;
    enum fleet_write_kind kind;
    bool applies;
};

#define NOW 1000
#define ABSENT ((struct fleet_item){0})
#define CLOSED_ITEM make_item(CB_CLOSED, 0, "", 0)
#define OPEN_AT(t) make_item(CB_OPEN, t, "", 0)
#define HALF(t, who, lease) make_item(CB_HALF_OPEN, t, who, lease)

Test(fleet, each_write_applies_exactly_where_the_rules_say)
{
    /* every write is about opening 100, by owner "me", at store time 1000 */
    const struct rule rules[] = {
        {"OPEN over nothing", ABSENT, FLEET_OPEN, true},
        {"OPEN over CLOSED", CLOSED_ITEM, FLEET_OPEN, true},
        {"OPEN over an older opening", OPEN_AT(99), FLEET_OPEN, true},
        {"OPEN over the same opening", OPEN_AT(100), FLEET_OPEN, false},
        {"OPEN over a newer opening", OPEN_AT(101), FLEET_OPEN, false},
        {"OPEN by the prober (reopen)", HALF(100, "me", NOW + 5), FLEET_OPEN, true},
        {"OPEN over another's live lease", HALF(99, "other", NOW + 1), FLEET_OPEN, false},
        {"OPEN over another's lapsed lease of an older opening", HALF(99, "other", NOW), FLEET_OPEN, true},
        {"OPEN over another's lapsed lease of the same opening", HALF(100, "other", NOW - 5), FLEET_OPEN, false},
        {"CLOSE of nothing", ABSENT, FLEET_CLOSE, false},
        {"CLOSE of CLOSED", CLOSED_ITEM, FLEET_CLOSE, false},
        {"CLOSE of the same opening, no prober", OPEN_AT(100), FLEET_CLOSE, true},
        {"CLOSE of another opening", OPEN_AT(99), FLEET_CLOSE, false},
        {"CLOSE by the prober, whatever the opening", HALF(50, "me", NOW + 5), FLEET_CLOSE, true},
        {"CLOSE under another's live lease", HALF(100, "other", NOW + 1), FLEET_CLOSE, false},
        {"CLOSE under another's lapsed lease, same opening", HALF(100, "other", NOW), FLEET_CLOSE, true},
        {"CLOSE under another's lapsed lease, another opening", HALF(99, "other", NOW - 1), FLEET_CLOSE, false},
        {"ELECT over nothing", ABSENT, FLEET_ELECT, false},
        {"ELECT over CLOSED", CLOSED_ITEM, FLEET_ELECT, false},
        {"ELECT on the opening seen (Powertools' election)", OPEN_AT(100), FLEET_ELECT, true},
        {"ELECT on another opening than seen", OPEN_AT(99), FLEET_ELECT, false},
        {"ELECT under another's live lease", HALF(100, "other", NOW + 1), FLEET_ELECT, false},
        {"ELECT over another's lapsed lease (takeover)", HALF(99, "other", NOW), FLEET_ELECT, true},
        {"ELECT over our own live lease", HALF(100, "me", NOW + 9), FLEET_ELECT, true},
        {"RENEW of our lease", HALF(100, "me", NOW + 1), FLEET_RENEW, true},
        {"RENEW of our lapsed lease", HALF(100, "me", NOW - 9), FLEET_RENEW, true},
        {"RENEW of our lease of another opening", HALF(99, "me", NOW + 1), FLEET_RENEW, false},
        {"RENEW of another's lease", HALF(100, "other", NOW + 1), FLEET_RENEW, false},
        {"RENEW of an OPEN", OPEN_AT(100), FLEET_RENEW, false},
        {"RELEASE of our lease", HALF(100, "me", NOW + 1), FLEET_RELEASE, true},
        {"RELEASE of another's lease", HALF(100, "other", NOW + 1), FLEET_RELEASE, false},
        {"RELEASE of our lease of another opening", HALF(99, "me", NOW + 1), FLEET_RELEASE, false},
        {"RELEASE of nothing", ABSENT, FLEET_RELEASE, false},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        struct fleet_write w = {.kind = rules[i].kind, .name = "x", .opened_at = 100, .failure_count = 7,
                                .lease_s = 30, .owner = "me", .recovery_s = 30};
        cr_expect_eq(fleet_write_applies(&rules[i].before, &w, NOW), rules[i].applies, "%s: %s", rules[i].what,
                     rules[i].applies ? "refused" : "applied");
    }
}

Test(fleet, each_write_leaves_the_item_the_rules_say)
{
    struct fleet_write w = {.name = "x", .opened_at = 100, .failure_count = 7, .lease_s = 30, .owner = "me"};
    struct fleet_item after, open = OPEN_AT(100), half = HALF(100, "me", NOW + 5);
    w.kind = FLEET_OPEN;
    fleet_write_result(&half, &w, NOW, &after);
    cr_assert(after.exists && after.state == CB_OPEN && after.opened_at == 100 && after.failure_count == 7 &&
              after.owner[0] == '\0' && after.lease_expiry == 0 && after.updated_at == NOW);
    w.kind = FLEET_ELECT;
    fleet_write_result(&open, &w, NOW, &after);
    cr_assert(after.state == CB_HALF_OPEN && after.opened_at == 100 && after.failure_count == 5 &&
              strcmp(after.owner, "me") == 0 && after.lease_expiry == NOW + 30,
              "the election keeps the opening and failure count");
    w.kind = FLEET_RENEW;
    fleet_write_result(&half, &w, NOW + 10, &after);
    cr_assert(after.state == CB_HALF_OPEN && strcmp(after.owner, "me") == 0 && after.lease_expiry == NOW + 40);
    w.kind = FLEET_RELEASE;
    fleet_write_result(&half, &w, NOW, &after);
    cr_assert(after.state == CB_OPEN && after.opened_at == 100 && after.failure_count == 5 && after.owner[0] == '\0' &&
              after.lease_expiry == 0, "a release gives back the same opening, without owner");
    w.kind = FLEET_CLOSE;
    fleet_write_result(&half, &w, NOW, &after);
    cr_assert(after.state == CB_CLOSED && after.opened_at == 0 && after.failure_count == 0 && after.owner[0] == '\0' &&
              after.lease_expiry == 0);
}

Test(fleet, an_opening_carries_its_deadline_which_close_removes_and_the_others_keep)
{
    struct fleet_write w = {.name = "x", .opened_at = 100, .failure_count = 7, .open_until = 190, .lease_s = 30,
                            .owner = "me"};
    struct fleet_item after, before = OPEN_AT(90), with;
    w.kind = FLEET_OPEN;
    fleet_write_result(&before, &w, NOW, &with);
    cr_assert(with.open_until == 190 && with.open_until_of == 100, "OPEN sets the deadline tied to its opening");
    struct fleet_write other = w;
    other.open_until = 0;
    other.opened_at = 200;
    fleet_write_result(&with, &other, NOW, &after);
    cr_assert(after.open_until == 0 && after.open_until_of == 0, "an OPEN without a deadline removes the old one");
    w.open_until = 0; /* what the other kinds carry */
    enum fleet_write_kind keep[] = {FLEET_ELECT, FLEET_RENEW, FLEET_RELEASE};
    struct fleet_item half = with;
    half.state = CB_HALF_OPEN;
    snprintf(half.owner, sizeof half.owner, "me");
    half.lease_expiry = NOW + 5;
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        w.kind = keep[i];
        fleet_write_result(keep[i] == FLEET_ELECT ? &with : &half, &w, NOW, &after);
        cr_expect(after.open_until == 190 && after.open_until_of == 100, "%s keeps the deadline",
                  fleet_write_kind_name(keep[i]));
    }
    w.kind = FLEET_CLOSE;
    fleet_write_result(&half, &w, NOW, &after);
    cr_assert(after.open_until == 0 && after.open_until_of == 0, "CLOSE removes it");
}

Test(fleet, a_stale_or_half_deadline_pair_is_read_as_none_or_refused)
{
    struct fleet_item_names n = {.kind = "field", .open_until = "open_until", .open_until_of = "open_until_of"};
    struct fleet_item it = OPEN_AT(100);
    char why[200];
    cr_assert_eq(fleet_item_deadline(&n, &it, 190, 100, why, sizeof why), 0);
    cr_assert(it.open_until == 190 && it.open_until_of == 100);
    cr_assert_eq(fleet_item_deadline(&n, &it, 190, 90, why, sizeof why), 0, "a Powertools reopen leaves it: valid");
    cr_assert(it.open_until == 0 && it.open_until_of == 90, "of another opening: no deadline");
    cr_assert_eq(fleet_item_deadline(&n, &it, -1, -1, why, sizeof why), 0);
    cr_assert(it.open_until == 0 && it.open_until_of == 0);
    cr_assert_eq(fleet_item_deadline(&n, &it, 190, -1, why, sizeof why), -EBADMSG);
    cr_assert_str_eq(why, "field 'open_until' without 'open_until_of' (the opening's end and the opened_at it "
                          "belongs to come together)");
    cr_assert_eq(fleet_item_deadline(&n, &it, -1, 100, why, sizeof why), -EBADMSG);
    cr_assert_not_null(strstr(why, "field 'open_until_of' without 'open_until'"), "%s", why);
    struct fleet_item closed = CLOSED_ITEM;
    cr_assert_eq(fleet_item_deadline(&n, &closed, 190, 0, why, sizeof why), 0);
    cr_assert_eq(closed.open_until, 0, "a CLOSED item has no deadline");
}

/* ==== two hosts ====================================================================================== */

static void both_track(const char *name)
{
    mem_store_ops.track(hosts[0].s, name, NULL);
    mem_store_ops.track(hosts[1].s, name, NULL);
    settle();
}

/* A and B online, tracking name; A trips it now and B has heard. */
static int64_t a_trips(const char *name)
{
    host_up(0);
    host_up(1);
    both_track(name);
    int64_t t = world.now;
    transition(&hosts[0], name, CB_OPEN, t, 0);
    settle();
    return t;
}

Test(fleet, a_trip_is_written_and_reaches_the_other_host_through_the_notification)
{
    int64_t t = a_trips("pay");
    cr_assert(stored("pay")->state == CB_OPEN && stored("pay")->opened_at == t);
    cr_assert_eq(hosts[1].nremote, 1);
    cr_assert(last_remote(&hosts[1])->state == CB_OPEN && last_remote(&hosts[1])->opened_at == t &&
              last_remote(&hosts[1])->failure_count == 5);
    cr_assert_eq(hosts[0].nremote, 0, "A's own write is no news to A");
    cr_assert(tsup_store_was_synced(&hosts[0], "pay") && tsup_store_was_synced(&hosts[1], "pay"));
}

/* A and B online, tracking name; A opens it now with a backoff deadline
 * until_ns, and B has heard. The opening's second. */
static int64_t a_opens_until(const char *name, int64_t until_ns)
{
    host_up(0);
    host_up(1);
    both_track(name);
    int64_t t = world.now;
    struct cbd_store_state st = state(name, CB_OPEN, t);
    st.open_until_ns = until_ns;
    mem_store_ops.transition(hosts[0].s, &st, 0);
    settle();
    return t;
}

/* Host A's backoff travels to B: the deadline in whole seconds, rounded up. */
Test(fleet, a_backoff_deadline_is_written_rounded_up_and_reaches_the_other_host)
{
    int64_t t = a_opens_until("pay", (world.now + 95) * 1000000000ll + 1); /* a ns into second t + 95 */
    cr_assert(stored("pay")->open_until == t + 96 && stored("pay")->open_until_of == t,
              "stored %lld of %lld: never early", (long long)stored("pay")->open_until,
              (long long)stored("pay")->open_until_of);
    cr_assert_eq(last_remote(&hosts[1])->open_until_ns, (t + 96) * 1000000000ll);
    cr_assert(elect(&hosts[1], "pay", t, 30), "B probes once its own wait is over");
    cr_assert_eq(stored("pay")->open_until, t + 96, "an election keeps the deadline");
    transition(&hosts[1], "pay", CB_CLOSED, 0, t);
    settle();
    cr_assert(stored("pay")->state == CB_CLOSED && stored("pay")->open_until == 0 && stored("pay")->open_until_of == 0);
}

Test(fleet, a_deadline_left_by_a_powertools_reopen_is_not_the_new_openings)
{
    int64_t t = a_opens_until("pay", (world.now + 95) * 1000000000ll);
    /* A function closes and reopens it with Powertools, which knows no deadline. */
    struct fleet_item *it = &item_of("pay", false)->item;
    it->opened_at = t + 40;
    it->open_until = 0; /* what a decoder reads of a pair of another opening */
    world.now = t + 40;
    mem_store_ops.sync(hosts[1].s);
    settle();
    cr_assert(last_remote(&hosts[1])->opened_at == t + 40 && last_remote(&hosts[1])->open_until_ns == 0,
              "B waits its own recovery timeout from the function's opening");
}

Test(fleet, exactly_one_host_wins_the_election_and_the_other_learns_when_the_lease_ends)
{
    int64_t t = a_trips("db");
    mem_store_ops.try_probe(hosts[0].s, "db", t, 10);
    mem_store_ops.try_probe(hosts[1].s, "db", t, 10);
    settle();
    cr_assert(last_probe(&hosts[0])->granted && !last_probe(&hosts[1])->granted);
    cr_assert_eq(last_probe(&hosts[0])->lease, world.now + 10);
    cr_assert_eq(last_probe(&hosts[1])->lease, world.now + 10, "the loser is told when to ask again");
    cr_assert_eq(last_remote(&hosts[1])->state, CB_HALF_OPEN, "the loser sees the fleet probing");
    cr_assert_str_eq(last_remote(&hosts[1])->probe_owner, "host-A");
    cr_assert_eq(store_stat(&hosts[1], "conditions_lost"), 1);
}

Test(fleet, the_holder_renews_its_lease_and_nobody_takes_it_while_it_probes)
{
    int64_t t = a_trips("ledger");
    cr_assert(elect(&hosts[0], "ledger", t, 10));
    world.now += 6;
    mem_store_ops.try_probe(hosts[0].s, "ledger", t, 10);
    cr_assert_eq(first(0)->w.kind, FLEET_RENEW, "the holder renews, it does not elect");
    settle();
    cr_assert(last_probe(&hosts[0])->granted);
    cr_assert_eq(last_probe(&hosts[0])->lease, world.now + 10);
    world.now += 6; /* past the first lease */
    cr_assert_not(elect(&hosts[1], "ledger", t, 10), "B took over a renewed lease");
    cr_assert_eq(stored("ledger")->lease_expiry, world.now + 4);
}

Test(fleet, a_released_lease_lets_another_host_or_a_powertools_function_elect_at_once)
{
    int64_t t = a_trips("quotes");
    cr_assert(elect(&hosts[0], "quotes", t, 10));
    mem_store_ops.release(hosts[0].s, "quotes", t);
    cr_assert_eq(first(0)->w.kind, FLEET_RELEASE);
    settle();
    const struct fleet_item *it = stored("quotes");
    cr_assert(it->state == CB_OPEN && it->opened_at == t && it->owner[0] == '\0' && it->lease_expiry == 0,
              "the item is back to OPEN on the same opening, without owner");
    struct fleet_write pt = {.kind = FLEET_ELECT, .name = "quotes", .opened_at = t, .lease_s = 30,
                             .owner = "4242#0f8fad5b"};
    cr_assert(fleet_write_applies(it, &pt, world.now), "Powertools' election would win now");
    cr_assert(elect(&hosts[1], "quotes", t, 10), "another host elects at once");
}

Test(fleet, a_crashed_holders_lease_is_taken_over_once_it_lapses)
{
    int64_t t = a_trips("search");
    cr_assert(elect(&hosts[0], "search", t, 10));
    int64_t lease = last_probe(&hosts[0])->lease;
    host_close(&hosts[0]); /* A dies holding the lease */
    cr_assert_not(elect(&hosts[1], "search", t, 10), "the lease is live");
    cr_assert_eq(last_probe(&hosts[1])->lease, lease);
    world.now = lease;
    cr_assert(elect(&hosts[1], "search", t, 10), "a lapsed lease is taken over");
    cr_assert_str_eq(stored("search")->owner, "host-B");
}

Test(fleet, a_refused_write_tells_the_daemon_what_the_fleet_holds)
{
    int64_t t = a_trips("cache");
    cr_assert(elect(&hosts[0], "cache", t, 10));
    int before = hosts[1].nremote;
    transition(&hosts[1], "cache", CB_OPEN, t - 10, 0); /* B, late, trips an older opening */
    settle();
    cr_assert_gt(hosts[1].nremote, before);
    cr_assert_eq(last_remote(&hosts[1])->state, CB_HALF_OPEN);
    cr_assert_eq(last_remote(&hosts[1])->opened_at, t);
    transition(&hosts[1], "cache", CB_CLOSED, 0, t); /* and closes without the lease */
    settle();
    cr_assert_eq(stored("cache")->state, CB_HALF_OPEN, "a close without the lease is refused");
    cr_assert_eq(last_remote(&hosts[1])->state, CB_HALF_OPEN);
    transition(&hosts[0], "cache", CB_CLOSED, 0, t); /* the prober's close */
    settle();
    cr_assert_eq(stored("cache")->state, CB_CLOSED);
    cr_assert_eq(last_remote(&hosts[1])->state, CB_CLOSED, "B follows the prober's close");
}

/* ==== agreement ======================================================================================= */

Test(fleet, agreement_is_told_only_once_no_newer_transition_waits)
{
    host_up(0);
    mem_store_ops.track(hosts[0].s, "carts", NULL);
    settle();
    transition(&hosts[0], "carts", CB_OPEN, world.now, 0);
    cr_assert_eq(first(0)->w.kind, FLEET_OPEN);
    transition(&hosts[0], "carts", CB_CLOSED, 0, world.now); /* while the trip is on its way */
    int synced = hosts[0].nsynced;
    deliver_one(0);
    turn();
    cr_assert_eq(hosts[0].nsynced, synced, "agreement told while the close waits to be written");
    cr_assert_eq(first(0)->w.kind, FLEET_CLOSE);
    settle();
    cr_assert_eq(hosts[0].nsynced, synced + 1);
    cr_assert_eq(stored("carts")->state, CB_CLOSED);
    cr_assert_eq(hosts[0].nremote, 0, "its own answers are no news");
}

Test(fleet, a_transition_the_store_already_holds_is_not_written_again)
{
    int64_t t = a_trips("echo");
    uint64_t writes = world.hosts[1]->writes;
    transition(&hosts[1], "echo", CB_OPEN, t, 0); /* B's daemon on the opening it was told */
    settle();
    cr_assert_eq(world.hosts[1]->writes, writes);
    cr_assert(tsup_store_was_synced(&hosts[1], "echo"));
}

/* ==== outages ========================================================================================= */

Test(fleet, queued_transitions_are_replayed_latest_only_and_the_outage_is_reconciled)
{
    host_up(0);
    host_up(1);
    both_track("bill");
    both_track("other");
    mem_drop(0, false);
    cr_assert(!hosts[0].online && hosts[0].health_false == 1);
    int64_t t = world.now;
    transition(&hosts[0], "bill", CB_OPEN, t, 0);
    transition(&hosts[0], "bill", CB_CLOSED, 0, t);
    transition(&hosts[0], "bill", CB_OPEN, t + 1, 0); /* the latest state per circuit is kept */
    cr_assert_eq(store_stat(&hosts[0], "queued"), 1);
    transition(&hosts[1], "other", CB_OPEN, t, 0); /* meanwhile, in the fleet */
    settle();
    cr_assert_eq(hosts[0].nremote, 0, "A is offline: it hears nothing");
    uint64_t writes = world.hosts[0]->writes;
    mem_connected(0, true);
    cr_assert_eq(first(0)->w.kind, FLEET_OPEN, "queued writes go first");
    settle();
    cr_assert_eq(world.hosts[0]->writes, writes + 1, "one write for three transitions");
    cr_assert_eq(stored("bill")->opened_at, t + 1);
    cr_assert_eq(last_remote(&hosts[1])->opened_at, t + 1);
    cr_assert_eq(store_stat(&hosts[0], "queued"), 0);
    cr_assert_eq(hosts[0].health_true, 2);
    cr_assert(strcmp(last_remote(&hosts[0])->name, "other") == 0 && last_remote(&hosts[0])->state == CB_OPEN,
              "the reconcile after the outage found B's trip");
}

Test(fleet, elections_while_offline_are_granted_host_local_only_after_a_connection_attempt_failed)
{
    int64_t t = a_trips("mail");
    mem_store_ops.try_probe(hosts[0].s, "mail", t, 10);
    cr_assert_eq(queued(0), 1);
    mem_drop(0, false); /* a dropped connection is no outage yet */
    cr_assert_eq(hosts[0].nprobe, 0, "granted before an attempt to reconnect failed");
    mem_connected(0, false);
    cr_assert_eq(hosts[0].nprobe, 1);
    cr_assert(last_probe(&hosts[0])->granted && last_probe(&hosts[0])->lease == world.now + 10);
    cr_assert_eq(store_stat(&hosts[0], "host_local_grants"), 1);
    mem_store_ops.try_probe(hosts[0].s, "mail", t, 10); /* a renewal during the outage */
    turn();
    cr_assert_eq(hosts[0].nprobe, 1, "granted without waiting for an attempt");
    mem_connected(0, false);
    cr_assert_eq(hosts[0].nprobe, 2);
    cr_assert(last_probe(&hosts[0])->granted);
    mem_store_ops.try_probe(hosts[0].s, "mail", t, 10);
    mem_connected(0, true); /* the store is back before the attempt failed: the fleet decides */
    settle();
    cr_assert_eq(hosts[0].nprobe, 3);
    cr_assert_eq(stored("mail")->state, CB_HALF_OPEN, "asked of the store");
    cr_assert_eq(store_stat(&hosts[0], "host_local_grants"), 2);
}

Test(fleet, an_election_asked_while_the_first_connection_is_made_waits_for_it)
{
    struct tsup_store_host *a = host_new(0);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_store_ops.try_probe(a->s, "boot", 1700000000, 10);
    turn();
    cr_assert_eq(a->nprobe, 0);
    mem_connected(0, true);
    settle();
    cr_assert_eq(a->nprobe, 1);
    cr_assert_not(last_probe(a)->granted, "the store has no such opening: refused, not granted host-local");
}

Test(fleet, lost_answers_are_asked_again_on_the_next_connection)
{
    int64_t t = a_trips("lost");
    mem_store_ops.try_probe(hosts[0].s, "lost", t, 10);
    cr_assert_eq(queued(0), 1);
    mem_drop(0, true); /* the election won, its answer was lost */
    cr_assert_eq(hosts[0].nprobe, 0);
    cr_assert_eq(stored("lost")->state, CB_HALF_OPEN);
    mem_connected(0, true);
    settle();
    cr_assert_eq(hosts[0].nprobe, 1);
    cr_assert(last_probe(&hosts[0])->granted, "our own lease: the election asked again wins it again");
    transition(&hosts[0], "lost", CB_HALF_OPEN, t, t);
    transition(&hosts[0], "lost", CB_CLOSED, 0, t);
    cr_assert_eq(queued(0), 1);
    mem_drop(0, false); /* the close never arrived */
    cr_assert_eq(stored("lost")->state, CB_HALF_OPEN);
    mem_connected(0, true);
    settle();
    cr_assert_eq(stored("lost")->state, CB_CLOSED, "the close is written once the store is back");
    cr_assert_eq(last_remote(&hosts[1])->state, CB_CLOSED);
}

Test(fleet, an_election_the_store_cannot_decide_while_online_is_granted_host_local)
{
    int64_t t = a_trips("failopen");
    mem_store_ops.try_probe(hosts[0].s, "failopen", t, 10);
    answer_error(0, -EIO);
    cr_assert_eq(hosts[0].nprobe, 1);
    cr_assert(last_probe(&hosts[0])->granted, "an error is no lost condition: fail open");
    cr_assert_eq(store_stat(&hosts[0], "host_local_grants"), 1);
    cr_assert_eq(store_stat(&hosts[0], "errors"), 1);
}

Test(fleet, a_write_the_store_failed_waits_for_the_next_reconcile_and_a_malformed_one_is_dropped)
{
    host_up(0);
    mem_store_ops.track(hosts[0].s, "k", NULL);
    settle();
    int64_t t = world.now;
    transition(&hosts[0], "k", CB_OPEN, t, 0);
    answer_error(0, -EIO);
    cr_assert_eq(queued(0), 0, "sent again at once: an error reply would loop");
    cr_assert_eq(store_stat(&hosts[0], "queued"), 1);
    world.hosts[0]->cbs.changed(world.hosts[0]->cbs.arg, "k"); /* a read meanwhile goes, the write waits */
    cr_assert_eq(queued(0), 1);
    cr_assert(first(0)->read);
    deliver_one(0);
    cr_assert_eq(queued(0), 0);
    cr_assert_not(tsup_store_was_synced(&hosts[0], "k") && hosts[0].nsynced > 1, "a refused write shows as agreed");
    mem_store_ops.sync(hosts[0].s);
    cr_assert_eq(first(0)->w.kind, FLEET_OPEN, "the reconcile sends it again");
    settle();
    cr_assert_eq(stored("k")->opened_at, t);
    transition(&hosts[0], "k", CB_CLOSED, 0, t);
    answer_error(0, -EINVAL);
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(stored("k")->state, CB_OPEN, "a write the store refused as malformed is not sent again");
    cr_assert_eq(store_stat(&hosts[0], "queued"), 0);
}

/* ==== what the store holds ============================================================================= */

/* The stores log through cbd_log on stderr: into a file of the test's own. */
static const char *capture_log(void)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/fleet.log", tsup_tmpdir());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert(fd >= 0 && dup2(fd, 2) == 2, "cannot capture stderr in %s", path);
    close(fd);
    return path;
}

static int log_lines(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    int n = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        n += strstr(line, text) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

Test(fleet, invalid_items_are_counted_at_every_read_logged_once_and_never_adopted)
{
    const char *log = capture_log();
    host_up(0);
    item_of("bad", true)->invalid = "field 'opened_at' is not a number ('soon')";
    mem_store_ops.track(hosts[0].s, "bad", NULL);
    settle();
    mem_store_ops.sync(hosts[0].s);
    settle();
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(store_stat(&hosts[0], "invalid_items"), 3);
    cr_assert_eq(hosts[0].nremote, 0, "an invalid item was adopted");
    cr_assert_eq(log_lines(log, "circuit bad: ignoring its item in memory: field 'opened_at' is not a number"), 1);
    item_of("bad", false)->invalid = NULL;
    item_of("bad", false)->item = make_item(CB_OPEN, world.now, "", 0);
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(hosts[0].nremote, 1);
    cr_assert_eq(last_remote(&hosts[0])->state, CB_OPEN);
    cr_assert_eq(log_lines(log, "circuit bad: its item in memory is valid again"), 1);
    item_of("bad", false)->invalid = "state 'BANANA'";
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(log_lines(log, "circuit bad: ignoring its item"), 2, "logged again after it was valid");
}

Test(fleet, an_election_over_an_invalid_item_is_granted_host_local)
{
    host_up(0);
    item_of("junk", true)->invalid = "state 'BANANA'";
    mem_store_ops.try_probe(hosts[0].s, "junk", world.now, 10);
    settle();
    cr_assert(last_probe(&hosts[0])->granted);
    cr_assert_eq(store_stat(&hosts[0], "invalid_items"), 1);
}

Test(fleet, an_opening_the_store_lost_is_written_again_and_one_expired_by_ttl_reads_as_closed)
{
    int64_t t = a_trips("queue");
    item_of("queue", false)->item.exists = false; /* flushed, failed over */
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert(stored("queue")->exists && stored("queue")->opened_at == t, "the lost opening is written again");
    cr_assert_eq(store_stat(&hosts[0], "rewrites"), 1);
    int remotes = hosts[1].nremote;
    world.now = t + 30 + FLEET_TTL_MARGIN_S + 1;
    item_of("queue", false)->item.exists = false; /* expired by its TTL */
    mem_store_ops.sync(hosts[1].s);
    settle();
    cr_assert_not(stored("queue")->exists, "an expired opening is not written again");
    cr_assert_eq(hosts[1].nremote, remotes + 1);
    cr_assert_eq(last_remote(&hosts[1])->state, CB_CLOSED, "it reads as CLOSED, as Powertools reads it");
}

Test(fleet, a_stale_copy_of_our_own_lease_is_no_news)
{
    int64_t t = a_trips("orders");
    cr_assert(elect(&hosts[0], "orders", t, 10));
    struct fleet_item old = *stored("orders");
    world.now += 5;
    cr_assert(elect(&hosts[0], "orders", t, 10), "renewed");
    struct fleet_item renewed = *stored("orders");
    item_of("orders", false)->item = old; /* an eventually consistent read returns the old copy */
    int remotes = hosts[0].nremote;
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(hosts[0].nremote, remotes, "the holder was told about its own lease");
    item_of("orders", false)->item = renewed;
    world.now += 4;
    mem_store_ops.try_probe(hosts[0].s, "orders", t, 10);
    cr_assert_eq(first(0)->w.kind, FLEET_RENEW, "the holder still knows it holds the lease");
    settle();
}

Test(fleet, an_election_that_takes_over_a_lapsed_lease_of_another_opening_gives_it_back)
{
    host_up(0);
    int64_t t = world.now;
    item_of("geo", true)->item = make_item(CB_HALF_OPEN, t - 100, "host-C", t - 1);
    mem_store_ops.track(hosts[0].s, "geo", NULL);
    settle();
    mem_store_ops.try_probe(hosts[0].s, "geo", t, 10); /* the daemon asks about another opening */
    settle();
    cr_assert_not(last_probe(&hosts[0])->granted, "a lease of another opening is no grant");
    const struct fleet_item *it = stored("geo");
    cr_assert(it->state == CB_OPEN && it->opened_at == t - 100 && it->owner[0] == '\0', "given back at once");
}

/* ==== restore, registration, batching ==================================================================== */

Test(fleet, restore_lists_the_store_and_reports_every_valid_item)
{
    item_of("a", true)->item = make_item(CB_OPEN, world.now - 5, "", 0);
    item_of("b", true)->item = make_item(CB_CLOSED, 0, "", 0);
    item_of("c", true)->invalid = "state 'BANANA'";
    struct tsup_store_host *a = host_new(0);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    turn();
    cr_assert_not(a->done.restored, "done before the store was read");
    mem_connected(0, true);
    settle();
    cr_assert(a->done.restored && a->done.restore_rc == 0);
    cr_assert_eq(a->nremote, 2, "every valid item is reported");
    cr_assert_eq(store_stat(a, "invalid_items"), 1);
    cr_assert_eq(store_stat(a, "circuits"), 3, "every listed circuit is tracked");
}

Test(fleet, restore_fails_at_once_when_the_first_connection_attempt_fails)
{
    struct tsup_store_host *a = host_new(0);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, false);
    cr_assert(a->done.restored && a->done.restore_rc < 0);
    cr_assert(!a->online && a->health_false == 1);
}

Test(fleet, reads_go_in_batches_of_the_transports_size)
{
    char names[10][8];
    host_up(0);
    uint64_t calls = world.hosts[0]->read_calls;
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof names[i], "c%d", i);
        mem_store_ops.track(hosts[0].s, names[i], NULL);
    }
    settle();
    cr_assert_eq(world.hosts[0]->read_calls, calls + 3, "10 registrations in batches of 4");
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(world.hosts[0]->read_calls, calls + 6);
}

Test(fleet, an_untracked_circuit_is_neither_read_nor_reported)
{
    int64_t t = a_trips("gone");
    mem_store_ops.untrack(hosts[1].s, "gone");
    uint64_t reads = world.hosts[1]->reads;
    int remotes = hosts[1].nremote;
    transition(&hosts[0], "gone", CB_CLOSED, 0, t);
    mem_store_ops.sync(hosts[1].s);
    settle();
    cr_assert_eq(world.hosts[1]->reads, reads);
    cr_assert_eq(hosts[1].nremote, remotes);
    cr_assert_eq(store_stat(&hosts[1], "circuits"), 0);
}

Test(fleet, close_writes_what_is_queued_and_then_tells_the_daemon_nothing)
{
    host_up(0);
    host_up(1);
    both_track("last");
    transition(&hosts[0], "last", CB_OPEN, world.now, 0);
    mem_store_ops.try_probe(hosts[0].s, "other", world.now, 10);
    int synced = hosts[0].nsynced, probes = hosts[0].nprobe;
    mem_store_ops.close(hosts[0].s, tsup_store_closed, &hosts[0].done);
    settle();
    turn();
    cr_assert(hosts[0].done.closed);
    cr_assert_eq(stored("last")->state, CB_OPEN, "the queued trip was written before closing");
    cr_assert_eq(hosts[0].nsynced, synced);
    cr_assert_eq(hosts[0].nprobe, probes);
    cr_assert_eq(last_remote(&hosts[1])->state, CB_OPEN);
}

/* ==== reads under a budget ================================================================================ */

/* Host A's daemon: the circuits it used since the last call (world.used). */
static void daemon_used(void *arg, uint64_t *mark, void (*each)(void *each_arg, const char *name), void *each_arg)
{
    char name[16];
    (void)arg;
    for (int i = 0; i < MAX_SWEPT; i++) {
        if (world.used[i]) {
            snprintf(name, sizeof name, "c%d", i);
            each(each_arg, name);
        }
    }
    (*mark)++;
}

/* Host A with a read budget of budget reads a second (the mem store has
 * no sync timer: each sync() is a period of one second), its daemon
 * telling which circuits it uses, created and not connected yet. */
static struct tsup_store_host *budget_host_new(unsigned budget)
{
    char uri[64];
    const char *err = NULL;
    struct tsup_store_host *x = &hosts[0];
    memset(x, 0, sizeof *x);
    snprintf(uri, sizeof uri, "mem://A?read_budget=%u", budget);
    struct cbd_store_hooks hk = tsup_store_hooks(x, &loop, "t");
    hk.used = daemon_used;
    cr_assert_eq(mem_store_ops.create(&x->s, uri, &hk, &err), 0, "%s", err ? err : "?");
    fleet_set_clock(x->s, &(struct fleet_clock){.now_s = clock_now, .random = clock_random});
    return x;
}

/* n circuits c0..c(n-1) registered on host A. */
static void track_many(struct tsup_store_host *x, int n)
{
    char name[16];
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "c%d", i);
        mem_store_ops.track(x->s, name, NULL);
    }
}

/* One sync period of host A: the reconcile, everything answered. How
 * many circuits it read. */
static uint64_t period(struct tsup_store_host *x)
{
    uint64_t before = world.hosts[0]->reads;
    world.period++;
    world.now++;
    mem_store_ops.sync(x->s);
    settle();
    return world.hosts[0]->reads - before;
}

Test(fleet, a_read_budget_is_never_exceeded_over_a_long_run)
{
    unsigned seed = (unsigned)getpid();
    srandom(seed);
    struct tsup_store_host *a = budget_host_new(50);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, true);
    settle();
    track_many(a, 1000); /* 1000 registration reads: paced by the budget too */
    settle();
    cr_assert_leq(world.hosts[0]->reads, 50, "the first period read %llu (seed %u)",
                  (unsigned long long)world.hosts[0]->reads, seed);
    for (int p = 0; p < 400; p++) {
        for (int i = 0; i < 1000; i++) /* the daemon's traffic moves from circuit to circuit */
            world.used[i] = random() % 100 < (p % 50 < 25 ? 2 : 20);
        if (random() % 10 == 0) /* and another host's transitions push reads */
            world.hosts[0]->cbs.changed(world.hosts[0]->cbs.arg, "c7");
        uint64_t n = period(a);
        cr_assert_leq(n, 50, "period %d read %llu circuits on a budget of 50 (seed %u)", p, (unsigned long long)n,
                      seed);
    }
    cr_assert_eq(store_stat(a, "reads"), world.hosts[0]->reads);
}

Test(fleet, under_a_budget_busy_circuits_are_read_every_sync)
{
    struct tsup_store_host *a = budget_host_new(100);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, true);
    settle();
    track_many(a, 1000);
    settle();
    for (int i = 0; i < 1000; i += 50) /* 20 busy circuits */
        world.used[i] = true;
    for (int p = 0; p < 20; p++) /* the registrations' reads are done */
        period(a);
    for (int p = 0; p < 50; p++) {
        period(a);
        for (int i = 0; i < 1000; i += 50)
            cr_assert_eq(world.read_in[i], world.period, "busy circuit c%d was not read in period %llu", i,
                         (unsigned long long)world.period);
    }
    cr_assert_geq(store_stat(a, "busy_reads"), 50 * 20);
}

Test(fleet, under_a_budget_idle_circuits_are_all_read_within_the_sweep_time)
{
    enum { C = 1000, U = 20, B = 100 };
    struct tsup_store_host *a = budget_host_new(B);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, true);
    settle();
    track_many(a, C);
    settle();
    for (int i = 0; i < C; i += C / U)
        world.used[i] = true;
    for (int p = 0; p < 20; p++)
        period(a);
    /* docs/fleet.md: a period (S = 1 s) sweeps q = (B*S - U) - floor((B*S - U) / 4) circuits, so every
     * circuit is read within ceil((C - U) / q) periods */
    int q = (B - U) - (B - U) / 4, sweep = (C - U + q - 1) / q;
    for (int round = 0; round < 3; round++) {
        uint64_t from = world.period + 1;
        for (int p = 0; p < sweep; p++)
            period(a);
        for (int i = 0; i < C; i++)
            cr_assert_geq(world.read_in[i], from, "circuit c%d not read in the %d periods from %llu", i, sweep,
                          (unsigned long long)from);
    }
    for (int i = 0; i < C; i++)
        cr_assert_leq(world.reads_of[i], 20u + 3u * (world.used[i] ? (unsigned)sweep : 1u) + 2u,
                      "circuit c%d read %u times: the sweep reads an idle circuit once a round", i, world.reads_of[i]);
    cr_assert_geq(store_stat(a, "sweeps"), 3);
}

Test(fleet, a_restore_reads_every_circuit_at_once_and_later_periods_repay_it)
{
    struct tsup_store_host *a = budget_host_new(50);
    track_many(a, 200); /* an adopted segment's circuits, tracked before the restore */
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, true);
    settle();
    cr_assert(a->done.restored && a->done.restore_rc == 0, "the restore waited for the budget");
    cr_assert_eq(world.hosts[0]->reads, 200);
    world.used[3] = true;
    cr_assert_eq(period(a), 0, "a period that starts 150 reads in debt reads nothing");
    cr_assert_eq(period(a), 0);
    cr_assert_eq(period(a), 0);
    cr_assert_gt(period(a), 0, "the debt is paid: reads again");
    cr_assert_eq(world.read_in[3], world.period, "the busy circuit first");
}

Test(fleet, without_a_budget_every_tracked_circuit_is_read_every_sync)
{
    struct tsup_store_host *a = budget_host_new(0);
    mem_store_ops.restore(a->s, tsup_store_restored, &a->done);
    mem_connected(0, true);
    settle();
    track_many(a, 300);
    settle();
    cr_assert_eq(period(a), 300);
    cr_assert_eq(period(a), 300);
    cr_assert_eq(store_stat(a, "busy_reads"), 0, "the daemon is not asked what it uses");
}

/* ---- shadow circuits: a trial's marker, never the state others obey --------------------------- */

/* Host x's daemon has name in shadow: its transition to st, as cbd.c tells a fleet store. */
static void shadow_transition(struct tsup_store_host *x, const char *name, cb_state st, int64_t opened_at)
{
    struct cbd_store_state s = state(name, st, opened_at);
    s.shadow = true;
    mem_store_ops.transition(x->s, &s, 0);
}

/* The shadow marker host x's store has for name: its state, or -1 when none. */
static int shadow_seen_by(const struct tsup_store_host *x, const char *name, struct cbd_store_shadow *out)
{
    return mem_store_ops.shadow(x->s, name, out) == 1 ? (int)out->state : -1;
}

Test(fleet, a_shadow_rule_applies_over_anything_and_writes_the_marker_alone)
{
    struct fleet_item befores[] = {ABSENT, CLOSED_ITEM, OPEN_AT(100), HALF(100, "other", NOW + 5)};
    struct fleet_write w = {.kind = FLEET_SHADOW, .name = "c", .owner = "me", .shadow_state = CB_OPEN,
                            .shadow_since = NOW};
    for (size_t i = 0; i < sizeof befores / sizeof befores[0]; i++) {
        struct fleet_item after, b = befores[i];
        b.updated_at = NOW - 50;
        cr_assert(fleet_write_applies(&b, &w, NOW), "case %zu: a marker is never refused", i);
        fleet_write_result(&b, &w, NOW, &after);
        cr_assert(after.shadow.state == CB_OPEN && after.shadow.since == NOW && strcmp(after.shadow.host, "me") == 0,
                  "case %zu: the marker is written", i);
        after.shadow = b.shadow;
        cr_assert(memcmp(&after, &b, sizeof b) == 0, "case %zu: the real state, exists and updated_at are kept", i);
    }
}

Test(fleet, a_shadow_trip_writes_the_marker_and_the_fleet_stays_closed_for_every_other_host)
{
    host_up(0);
    host_up(1);
    both_track("pay");
    world.now += 7;
    shadow_transition(&hosts[0], "pay", CB_OPEN, world.now);
    cr_assert_eq(first(0)->w.kind, FLEET_SHADOW, "a shadow transition is written as the marker");
    settle();
    const struct fleet_item *it = stored("pay");
    cr_assert_not(it->exists, "no real item was made: every reader reads CLOSED");
    cr_assert(it->shadow.state == CB_OPEN && it->shadow.since == world.now && strcmp(it->shadow.host, "host-A") == 0);
    mem_store_ops.sync(hosts[1].s);
    settle();
    cr_assert_eq(hosts[1].nremote, 0, "B is told nothing: it obeys no trial");
    struct cbd_store_shadow sh;
    cr_assert_eq(shadow_seen_by(&hosts[1], "pay", &sh), CB_OPEN, "B's reconcile read the marker");
    cr_assert(sh.since == world.now && strcmp(sh.host, "host-A") == 0);
    cr_assert_eq(shadow_seen_by(&hosts[0], "pay", &sh), CB_OPEN, "A knows what it wrote");
    cr_assert_eq(store_stat(&hosts[0], "shadow_writes"), 1);
    /* B trips for real: the marker stays beside the real opening */
    transition(&hosts[1], "pay", CB_OPEN, world.now, 0);
    settle();
    cr_assert(stored("pay")->exists && stored("pay")->state == CB_OPEN && stored("pay")->shadow.state == CB_OPEN);
}

Test(fleet, a_shadow_close_never_closes_a_real_opening_nor_touches_its_lease)
{
    int64_t t = a_trips("db");
    cr_assert(elect(&hosts[1], "db", t, 10));
    struct fleet_item before = *stored("db");
    world.now += 3;
    shadow_transition(&hosts[0], "db", CB_CLOSED, 0);
    settle();
    struct fleet_item after = *stored("db");
    cr_assert(after.shadow.state == CB_CLOSED && after.shadow.since == world.now);
    after.shadow = before.shadow;
    cr_assert(memcmp(&after, &before, sizeof before) == 0, "state, opening, owner, lease and updated_at are as they were");
    cr_assert(last_probe(&hosts[1])->granted && store_stat(&hosts[1], "conditions_lost") == 0);
}

Test(fleet, a_shadow_marker_lost_with_the_connection_is_written_when_the_store_is_back)
{
    host_up(0);
    mem_store_ops.track(hosts[0].s, "geo", NULL);
    settle();
    shadow_transition(&hosts[0], "geo", CB_OPEN, world.now);
    turn();
    mem_drop(0, false);
    cr_assert_null(item_of("geo", false), "nothing reached the store");
    mem_connected(0, true);
    settle();
    cr_assert_eq(stored("geo")->shadow.state, CB_OPEN, "written once the store is back");
    cr_assert_not(stored("geo")->exists);
}

Test(fleet, a_newer_shadow_transition_replaces_one_not_yet_written)
{
    host_up(0);
    mem_store_ops.track(hosts[0].s, "mail", NULL);
    settle();
    world.hosts[0]->up = false; /* requests wait: the store does not take them */
    shadow_transition(&hosts[0], "mail", CB_OPEN, world.now);
    shadow_transition(&hosts[0], "mail", CB_HALF_OPEN, world.now);
    turn();
    world.hosts[0]->up = true;
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert_eq(stored("mail")->shadow.state, CB_HALF_OPEN);
    cr_assert_eq(store_stat(&hosts[0], "shadow_writes"), 1, "one write: the latest");
}

Test(fleet, an_invalid_shadow_marker_is_counted_and_the_real_state_is_still_obeyed)
{
    host_up(0);
    mem_store_ops.track(hosts[0].s, "pay", NULL);
    settle();
    struct mem_item *it = item_of("pay", true);
    it->item = OPEN_AT(world.now);
    it->item.shadow_invalid = true; /* what a decoder reads of a bad marker: none, flagged */
    mem_store_ops.sync(hosts[0].s);
    settle();
    cr_assert(last_remote(&hosts[0])->state == CB_OPEN, "the real opening is adopted");
    cr_assert_eq(store_stat(&hosts[0], "invalid_shadows"), 1);
    cr_assert_eq(store_stat(&hosts[0], "invalid_items"), 0, "the item itself is valid");
    struct cbd_store_shadow sh;
    cr_assert_eq(shadow_seen_by(&hosts[0], "pay", &sh), -1);
}

/* fleet_item_shadow, the check every decoder runs on a marker. */
Test(fleet, a_shadow_marker_is_all_three_parts_each_valid_or_none)
{
    static const struct fleet_item_names n = {.kind = "field", .shadow_state = "shadow_state",
                                              .shadow_since = "shadow_since", .shadow_host = "shadow_host"};
#define RAW(str) ((struct fleet_raw){.s = (str), .len = sizeof(str) - 1})
    static const struct fleet_raw none = {0};
    struct fleet_item it;
    char why[200];
    cr_assert_eq(fleet_item_shadow(&n, &it, none, none, none, why, sizeof why), 0);
    cr_assert(it.shadow.since == 0 && !it.shadow_invalid, "no marker");
    cr_assert_eq(fleet_item_shadow(&n, &it, RAW("OPEN"), RAW("1700000000"), RAW("h:1"), why, sizeof why), 0);
    cr_assert(it.shadow.state == CB_OPEN && it.shadow.since == 1700000000 && strcmp(it.shadow.host, "h:1") == 0);
    struct {
        struct fleet_raw st, since, host;
        const char *why;
    } bad[] = {
        {RAW("OPEN"), none, RAW("h"), "a shadow marker without field 'shadow_since'"},
        {RAW("open"), RAW("1"), RAW("h"), "field 'shadow_state' is 'open', not CLOSED, OPEN or HALF_OPEN"},
        {RAW("OPEN"), RAW("-1"), RAW("h"), "field 'shadow_since' is negative ('-1')"},
        {RAW("OPEN"), RAW("0"), RAW("h"), "field 'shadow_since' is 0 (epoch seconds, 1 to 9000000000)"},
        {RAW("OPEN"), RAW("9000000001"), RAW("h"), "field 'shadow_since' is after 2255-03-14"},
        {RAW("OPEN"), RAW("1"), RAW(""), "field 'shadow_host' is not a host id of 1 to 95 bytes"},
        {RAW("OPEN"), RAW("1"), RAW("a\0b"), "field 'shadow_host' is not a host id"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(fleet_item_shadow(&n, &it, bad[i].st, bad[i].since, bad[i].host, why, sizeof why), -EBADMSG,
                     "case %zu", i);
        cr_assert(it.shadow_invalid && it.shadow.since == 0 && it.shadow.host[0] == '\0', "case %zu: dropped", i);
        cr_assert(strncmp(why, bad[i].why, strlen(bad[i].why)) == 0, "case %zu: '%s'", i, why);
    }
#undef RAW
}
