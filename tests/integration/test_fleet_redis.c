/*
 * test_fleet_redis.c - fleet semantics through redis: two or three real cbd
 * daemons, each with its own instance (one "host" each), share circuits
 * through one real redis-server on a free loopback port (tsup_redis).
 * Workers are libcb clients of each instance in the test process, so every
 * check reads the same shared memory a worker on that host would.
 *
 *  - a trip on one host reaches the workers of the others (source remote,
 *    in history and hooks, CB_ORIGIN fleet), and the prober's close comes
 *    back;
 *  - hosts hammering a circuit past its recovery timeout: one probe at a
 *    time fleet-wide, all of them on the election's winner;
 *  - a hung holder's lease is taken over once it expires, and the holder
 *    gives way when it runs again;
 *  - a restarted host adopts what the fleet did while it was down, and
 *    gives the fleet back an opening it lost;
 *  - redis killed mid-run: every host keeps checking and tripping alone,
 *    and they reconcile when it returns empty; nothing is lost;
 *  - conflicting transitions (trips that cross, a trip that lands after
 *    the fleet closed) settle on one opening, never dropping an OPEN;
 *  - a host's backoff deadline travels with its opening: another host
 *    shows it and does not probe before it;
 *  - foreign data under the prefix and error replies are counted and
 *    logged, and change no circuit.
 *
 * A paused daemon (SIGSTOP) stands for a host that is slow or cut off: its
 * workers keep recording into the lanes, and it acts on them when resumed.
 * Timing is never asserted; waits use liveness bounds.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "tsup.h"

#define MAX_HOSTS 3
#define RECONNECT_MS 15000 /* redis back -> reconnected: the store's backoff reaches 5 s */

static struct tsup_redis redis;
static struct tsup_daemon host[MAX_HOSTS];
static cb_client *cl[MAX_HOSTS];
static int nhosts;
static char prefix[48];

static void stop_all(void)
{
    for (int i = 0; i < nhosts; i++) {
        cb_client_close(cl[i]);
        cl[i] = NULL;
        if (host[i].pid != 0)
            cr_expect_eq(tsup_daemon_stop(&host[i]), 0, "cbd of host %d did not exit 0 on SIGTERM", i);
    }
    tsup_redis_stop(&redis);
}

TestSuite(fleet_redis, .fini = stop_all, .timeout = 60);

/* redis, then n daemons on it (base: more options for each, may be NULL). */
static void start_fleet(int n, const struct tsup_daemon_opts *base)
{
    static const char *const tags[MAX_HOSTS] = {"hostA", "hostB", "hostC"};
    char opts[128];
    cr_assert_eq(tsup_redis_start(&redis), 0, "cannot start redis-server");
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("fleet"));
    snprintf(opts, sizeof opts, "prefix=%s&sync_ms=200", prefix);
    const char *uri = tsup_redis_uri(&redis, opts);
    for (int i = 0; i < n; i++) {
        struct tsup_daemon_opts o = base != NULL ? *base : (struct tsup_daemon_opts){0};
        o.tag = tags[i];
        o.store = uri;
        cr_assert_eq(tsup_daemon_start(&host[i], &o), 0, "cbd of host %d did not start", i);
        nhosts = i + 1;
        cl[i] = tsup_client(&host[i]);
    }
}

/* A field of the circuit's hash in redis, "" when absent (static buffer). */
static const char *fleet_field(const char *name, const char *field)
{
    static char value[256];
    char key[256], *out = NULL;
    snprintf(key, sizeof key, "%sc:{%s}", prefix, name);
    cr_assert_eq(tsup_redis_cli(&redis, &out, "HGET", key, field, NULL), 0, "redis-cli HGET %s %s", key, field);
    snprintf(value, sizeof value, "%s", out);
    value[strcspn(value, "\r\n")] = '\0';
    free(out);
    return value;
}

static void redis_ok(const char *cmd, const char *a, const char *b, const char *c)
{
    char *out = NULL;
    int rc = tsup_redis_cli(&redis, &out, cmd, a, b, c, NULL);
    cr_assert(rc == 0 && strncmp(out, "ERR", 3) != 0, "redis-cli %s %s: %s", cmd, a, out);
    free(out);
}

/* The sync state of name in host h's segment (CB_SYNC_*), and its synced_at. */
static unsigned sync_of(int h, const char *name, int64_t *synced_at)
{
    size_t size, len = strlen(name);
    struct cb_seg_header *hdr = tsup_seg_map(host[h].instance, 0, &size);
    cr_assert_not_null(hdr, "cannot map the segment of host %d", h);
    int slot = cb__seg_lookup(hdr, name, len, cb__name_hash(name, len), NULL);
    cr_assert_geq(slot, 0, "host %d has no circuit %s", h, name);
    struct cb_seg_snapshot snap;
    cr_assert_eq(cb__seg_snapshot(hdr, (uint32_t)slot, &snap), 0);
    if (synced_at != NULL)
        *synced_at = snap.synced_at;
    munmap(hdr, size);
    return snap.sync_state;
}

static bool all_in_sync(const char *name)
{
    for (int h = 0; h < nhosts; h++)
        if (sync_of(h, name, NULL) != CB_SYNC_OK)
            return false;
    return true;
}

/* name registered with cfg on every host of the fleet: c[h] on host h. */
static void circuit_on_all(const char *name, const cb_config *cfg, cb_circuit **c)
{
    for (int h = 0; h < nhosts; h++)
        c[h] = tsup_circuit(cl[h], name, cfg);
}

/* Trip c on its host: one counted failure (the tests use threshold 1). */
static void trip(cb_circuit *c)
{
    cb_ticket t = cb_allow(c);
    cr_assert_eq(tsup_ticket_kind(t), CB_TICKET_ALLOWED, "the circuit to trip is not CLOSED");
    cb_record(c, t, CB_FAILURE);
}

/* Waits until one of c[0..n) hands out a probe (its index; ticket in *t),
 * failing if any of them permits anything else meanwhile. */
static int first_probe(cb_circuit *const *c, int n, cb_ticket *t)
{
    int who = -1;
    bool got = tsup_wait_until(({
                                   for (int i = 0; i < n && who < 0; i++) {
                                       *t = cb_allow(c[i]);
                                       cr_assert(!cb_permitted(*t) || cb_ticket_is_probe(*t),
                                                 "host %d permitted a call that is not a probe", i);
                                       who = cb_permitted(*t) ? i : -1;
                                   }
                                   who >= 0;
                               }),
                               3 * TSUP_LIVENESS_MS);
    cr_assert(got, "no host handed out a probe");
    return who;
}

/* The contents of the test directory's file name, or "" (static buffer). */
static const char *slurp(const char *name)
{
    static char buf[4096];
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tsup_tmpdir(), name);
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    buf[n] = '\0';
    return buf;
}

static bool hook_saw(int h, const char *line)
{
    char name[64];
    snprintf(name, sizeof name, "hooks.%s", host[h].instance);
    return strstr(slurp(name), line) != NULL;
}

Test(fleet_redis, a_trip_on_one_host_reaches_the_workers_of_the_other_and_the_close_comes_back)
{
    static char hook[300];
    snprintf(hook, sizeof hook, "echo $CB_SOURCE $CB_ORIGIN $CB_FROM $CB_TO >> %s/hooks.$CB_INSTANCE", tsup_tmpdir());
    struct tsup_daemon_opts o = {.extra = {"--hook-command", hook, NULL}};
    start_fleet(2, &o);
    cb_config cfg = tsup_config(3, 2, 1, 500);
    cb_circuit *c[2];
    circuit_on_all("payments", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("payments"), TSUP_LIVENESS_MS), "registration never synced");

    cr_assert_eq(tsup_record_n(c[0], CB_FAILURE, 3), 3);
    cr_assert(tsup_wait_state(c[0], CB_OPEN));
    cr_assert(tsup_wait_state(c[1], CB_OPEN), "host B never learnt of host A's trip");
    cr_assert_eq(tsup_ticket_kind(cb_allow(c[1])), CB_TICKET_REJECTED, "B's workers still call an open downstream");
    cb_transition tr = tsup_next_transition(cl[1], "payments");
    cr_assert(tr.from == CB_CLOSED && tr.to == CB_OPEN && tr.source == CB_SOURCE_REMOTE,
              "B's transition: %d -> %d, source %d", tr.from, tr.to, tr.source);
    cr_assert_eq(tr.opened_at, tsup_info(c[0]).opened_at, "B has another opening than A");
    cr_assert_eq(tr.failure_count, 3);
    cr_assert_eq(atoll(fleet_field("payments", "opened_at")), tr.opened_at, "redis has another opening");

    /* After the recovery timeout one host wins the probe; two successes close it everywhere. */
    cb_ticket t;
    int p = first_probe(c, 2, &t), other = 1 - p;
    cb_record(c[p], t, CB_SUCCESS);
    cb_record(c[p], tsup_probe(c[p]), CB_SUCCESS);
    cr_assert(tsup_wait_state(c[p], CB_CLOSED));
    cr_assert(tsup_wait_state(c[other], CB_CLOSED), "the prober's close never reached the other host");
    cr_assert_str_eq(fleet_field("payments", "state"), "CLOSED");
    do
        tr = tsup_next_transition(cl[other], "payments");
    while (tr.to != CB_CLOSED);
    cr_assert_eq(tr.source, CB_SOURCE_REMOTE, "the close came from elsewhere");
    /* CB_ORIGIN: an operator acts only where a transition started (local), not
     * on every host it reached (fleet). */
    cr_assert(tsup_wait_until(hook_saw(0, "local local CLOSED OPEN\n") && hook_saw(1, "remote fleet CLOSED OPEN\n") &&
                                  hook_saw(other, "remote fleet OPEN CLOSED\n") &&
                                  hook_saw(p, "local local HALF_OPEN CLOSED\n"),
                              TSUP_LIVENESS_MS),
              "the hooks did not see the transitions with their sources and origins (files hooks.* in %s)",
              tsup_tmpdir());
    cr_assert(tsup_wait_until(all_in_sync("payments"), TSUP_LIVENESS_MS));
}

/* ---- one probe fleet-wide ---------------------------------------------------- */

struct hammer {
    pthread_t thread;
    cb_circuit *c;
    int host;
};

static _Atomic int inflight, most_inflight, stop_hammers;
static _Atomic int probes_by_host[MAX_HOSTS];

/* A worker thread: check, call (a probe takes a while), report; again. */
static void *hammer(void *arg)
{
    const struct hammer *w = arg;
    while (!atomic_load(&stop_hammers)) {
        cb_ticket t = cb_allow(w->c);
        if (cb_ticket_is_probe(t)) {
            int now = atomic_fetch_add(&inflight, 1) + 1, m = atomic_load(&most_inflight);
            while (now > m && !atomic_compare_exchange_weak(&most_inflight, &m, now)) {
            }
            atomic_fetch_add(&probes_by_host[w->host], 1);
            usleep(2000);
            atomic_fetch_sub(&inflight, 1);
        }
        if (cb_permitted(t))
            cb_record(w->c, t, CB_SUCCESS);
        usleep(200);
    }
    return NULL;
}

static bool all_state(cb_circuit *const *c, int n, cb_state s)
{
    for (int i = 0; i < n; i++)
        if (tsup_info(c[i]).state != s)
            return false;
    return true;
}

Test(fleet_redis, hosts_hammering_a_recovering_circuit_run_one_probe_at_a_time_fleet_wide)
{
    start_fleet(3, NULL);
    cb_config cfg = tsup_config(1, 4, 1, 300);
    cb_circuit *c[MAX_HOSTS];
    struct hammer w[2 * MAX_HOSTS];
    circuit_on_all("search", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("search"), TSUP_LIVENESS_MS));
    for (int i = 0; i < 2 * MAX_HOSTS; i++) {
        w[i] = (struct hammer){.c = c[i % 3], .host = i % 3};
        cr_assert_eq(pthread_create(&w[i].thread, NULL, hammer, &w[i]), 0);
    }
    for (int cycle = 0; cycle < 3; cycle++) {
        int before[MAX_HOSTS], probers = 0, probes = 0;
        for (int h = 0; h < 3; h++)
            before[h] = atomic_load(&probes_by_host[h]);
        trip(c[cycle]);
        cr_assert(tsup_wait_until(!all_state(c, 3, CB_CLOSED), TSUP_LIVENESS_MS), "cycle %d: no trip", cycle);
        cr_assert(tsup_wait_until(all_state(c, 3, CB_CLOSED), 3 * TSUP_LIVENESS_MS),
                  "cycle %d: the fleet never closed again", cycle);
        for (int h = 0; h < 3; h++) {
            int n = atomic_load(&probes_by_host[h]) - before[h];
            probers += n > 0;
            probes += n;
        }
        cr_assert_eq(probers, 1, "cycle %d: %d hosts probed", cycle, probers);
        cr_assert_geq(probes, 4, "cycle %d: closed after %d probes", cycle, probes);
    }
    atomic_store(&stop_hammers, 1);
    for (int i = 0; i < 2 * MAX_HOSTS; i++)
        pthread_join(w[i].thread, NULL);
    cr_assert_eq(atomic_load(&most_inflight), 1, "%d probes ran at once", atomic_load(&most_inflight));
}

Test(fleet_redis, a_hung_holders_lease_is_taken_over_and_the_holder_gives_way_when_it_runs_again)
{
    struct tsup_daemon_opts o = {.stale_policy = "keep-state"}; /* a paused host's workers obey its state */
    start_fleet(2, &o);
    cb_config cfg = tsup_config(1, 2, 1, 300);
    cfg.probe_lease_ms = 2000;
    cb_circuit *c[2];
    circuit_on_all("ledger", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("ledger"), TSUP_LIVENESS_MS));
    trip(c[0]);
    cr_assert(tsup_wait_until(tsup_info(c[1]).state != CB_CLOSED, TSUP_LIVENESS_MS));
    cb_ticket silent, t;
    int h = first_probe(c, 2, &silent), o2 = 1 - h;
    cr_assert_eq(kill(host[h].pid, SIGSTOP), 0); /* the holder hangs with its probe out */

    cr_assert_eq(first_probe(&c[o2], 1, &t), 0, "the other host never took the lease over");
    cr_assert(strstr(fleet_field("ledger", "half_open_owner"), host[o2].instance) != NULL,
              "redis names %s as the holder", fleet_field("ledger", "half_open_owner"));

    cr_assert_eq(kill(host[h].pid, SIGCONT), 0);
    cr_assert(tsup_wait_until(({
                                  cb_ticket x = cb_allow(c[h]);
                                  cr_assert(!cb_permitted(x), "the old holder admitted a call (kind %u)",
                                            tsup_ticket_kind(x));
                                  tsup_info(c[h]).state == CB_OPEN;
                              }),
                              TSUP_LIVENESS_MS),
              "the old holder kept its HALF_OPEN");
    cb_record(c[h], silent, CB_SUCCESS); /* its late report belongs to an older epoch */
    cb_record(c[o2], t, CB_SUCCESS);
    cb_record(c[o2], tsup_probe(c[o2]), CB_SUCCESS);
    cr_assert(tsup_wait_state(c[o2], CB_CLOSED));
    cr_assert(tsup_wait_state(c[h], CB_CLOSED), "the new holder's close never reached the old one");
}

Test(fleet_redis, redis_killed_mid_run_stops_no_host_and_they_reconcile_when_it_returns)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cb_circuit *before[2], *x[2], *y[2];
    circuit_on_all("before", &cfg, before);
    circuit_on_all("x", &cfg, x);
    circuit_on_all("y", &cfg, y);
    trip(before[0]);
    cr_assert(tsup_wait_state(before[1], CB_OPEN));
    cr_assert(tsup_wait_until(all_in_sync("x") && all_in_sync("before"), TSUP_LIVENESS_MS));
    int64_t last_agreed;
    sync_of(0, "x", &last_agreed);

    tsup_redis_stop(&redis); /* SIGKILL: every key is gone with it */
    cr_assert(tsup_wait_until(sync_of(0, "x", NULL) == CB_SYNC_OFFLINE && sync_of(1, "x", NULL) == CB_SYNC_OFFLINE,
                              TSUP_LIVENESS_MS),
              "the records never showed the store offline");
    trip(x[0]);
    trip(y[1]);
    cr_assert(tsup_wait_state(x[0], CB_OPEN), "host A stopped tripping without redis");
    cr_assert(tsup_wait_state(y[1], CB_OPEN), "host B stopped tripping without redis");
    cr_assert(tsup_ping(&host[0]) && tsup_ping(&host[1]), "a daemon stopped answering without redis");
    cr_assert_eq(tsup_ticket_kind(cb_allow(x[1])), CB_TICKET_ALLOWED, "B cannot know of A's trip yet");
    char *show = NULL;
    char *argv[] = {(char *)tsup_cbctl_path(), "--instance", host[0].instance, "show", "x", NULL};
    cr_assert_eq(tsup_run(argv, &show, true), 0);
    cr_assert(strstr(show, "offline") != NULL, "cbctl show does not say the store is offline:\n%s", show);
    free(show);
    int64_t agreed;
    cr_assert_eq(sync_of(0, "x", &agreed), CB_SYNC_OFFLINE);
    cr_assert_eq(agreed, last_agreed, "synced_at moved while offline: the age of the last agreement is lost");
    cr_assert(tsup_wait_until(tsup_stat(&host[0], "store_reconnects") >= 2, TSUP_LIVENESS_MS), "no retries");

    cr_assert_eq(tsup_redis_restart(&redis), 0);
    cr_assert(tsup_wait_until(tsup_info(x[1]).state == CB_OPEN && tsup_info(y[0]).state == CB_OPEN, RECONNECT_MS),
              "the hosts did not reconcile their outage trips");
    cr_assert_eq(tsup_info(x[1]).opened_at, tsup_info(x[0]).opened_at);
    cr_assert_eq(tsup_info(y[0]).opened_at, tsup_info(y[1]).opened_at);
    cr_assert(tsup_wait_until(strcmp(fleet_field("before", "state"), "OPEN") == 0, TSUP_LIVENESS_MS),
              "an OPEN that redis lost was not written again");
    cr_assert(tsup_wait_state(before[0], CB_OPEN) && tsup_wait_state(before[1], CB_OPEN));
    cr_assert(tsup_wait_until(all_in_sync("x") && all_in_sync("y") && all_in_sync("before"), TSUP_LIVENESS_MS),
              "sync states: A x %u, B x %u", sync_of(0, "x", NULL), sync_of(1, "x", NULL));
}

/* Powertools' election written for redis (fleet.h, ELECT): OPEN on the
 * opening seen, without an owner, becomes HALF_OPEN held by owner for 30
 * s of the server's clock. "1" won, "0" lost (redis-cli's answer). */
static const char *other_client_elects(const char *name, int64_t opened_at, const char *owner)
{
    static char won[8];
    static const char script[] =
        "local f = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'half_open_owner')\n"
        "if f[1] ~= 'OPEN' or f[3] or f[2] ~= ARGV[1] then return 0 end\n"
        "local now = tonumber(redis.call('TIME')[1])\n"
        "redis.call('HSET', KEYS[1], 'state', 'HALF_OPEN', 'half_open_owner', ARGV[2], 'probe_lease_expiry',"
        " string.format('%d', now + 30))\n"
        "return 1\n";
    char key[128], seen[24], *out = NULL;
    snprintf(key, sizeof key, "%sc:{%s}", prefix, name);
    snprintf(seen, sizeof seen, "%lld", (long long)opened_at);
    cr_assert_eq(tsup_redis_cli(&redis, &out, "EVAL", script, "1", key, seen, owner, NULL), 0, "redis-cli EVAL");
    snprintf(won, sizeof won, "%.*s", (int)strcspn(out, "\r\n"), out);
    free(out);
    return won;
}

/* The other half of probes on demand: a host whose worker wants a probe
 * takes the lease, but a worker that then never takes the probe must not
 * keep it. Within the grace (min(1 s, lease / 4)) the host gives it back:
 * the hash is OPEN again on the same opening, without an owner, and
 * another client's election wins at once. The lease asked for lasts 21 s:
 * one that merely ran out would leave the hash HALF_OPEN that long. */
Test(fleet_redis, a_lease_taken_for_a_call_that_never_probes_is_given_back_and_another_client_elects_at_once)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 3, 1, 1000);
    cfg.probe_lease_ms = 20000;
    cb_circuit *c[2];
    circuit_on_all("giveback", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("giveback"), TSUP_LIVENESS_MS));
    trip(c[0]);
    cr_assert(tsup_wait_state(c[0], CB_OPEN) && tsup_wait_state(c[1], CB_OPEN));
    int64_t opened = tsup_info(c[0]).opened_at;
    cr_assert(tsup_wait_until(tsup_electable(c[0]), TSUP_LIVENESS_MS), "A's circuit never became electable");
    cr_assert_eq(tsup_ticket_kind(cb_allow(c[0])), CB_TICKET_REJECTED, "a call on an electable circuit is rejected");
    cb_transition tr;
    do
        tr = tsup_next_transition(cl[0], "giveback");
    while (tr.to != CB_HALF_OPEN);
    cr_assert_eq(tr.opened_at, opened, "A took the lease of its opening");
    tr = tsup_next_transition(cl[0], "giveback");
    cr_assert(tr.from == CB_HALF_OPEN && tr.to == CB_OPEN, "nobody probed, yet A went %d -> %d", tr.from, tr.to);
    cr_assert(tsup_wait_until(strcmp(fleet_field("giveback", "state"), "OPEN") == 0 &&
                                  fleet_field("giveback", "half_open_owner")[0] == '\0',
                              TSUP_LIVENESS_MS),
              "the hash did not go back to OPEN without an owner");
    cr_assert_eq(atoll(fleet_field("giveback", "opened_at")), opened, "on the same opening");
    cr_assert_str_eq(other_client_elects("giveback", opened, "4242#0f8fad5b"), "1",
                     "another client's election failed after the host gave the lease back");
    cr_assert_eq(tsup_info(c[1]).state, CB_OPEN, "B, idle, never competed");
}

/* Sleeps until the epoch second after at_s has begun. */
static void next_second_after(int64_t at_s)
{
    while (time(NULL) <= at_s)
        usleep(20 * 1000);
}

/* ---- backoff across hosts ------------------------------------------------------ */

#define NS_PER_S 1000000000ll

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* A probe of c, waiting as long as a backoff of up to 4 s may take. */
static cb_ticket probe_after_backoff(cb_circuit *c)
{
    cb_ticket t = {0};
    bool got = tsup_wait_until(({
                                   t = cb_allow(c);
                                   cr_assert(!cb_permitted(t) || cb_ticket_is_probe(t), "a call permitted while open");
                                   cb_permitted(t);
                               }),
                               3 * TSUP_LIVENESS_MS);
    cr_assert(got, "no probe after the backoff");
    return t;
}

Test(fleet_redis, another_hosts_backoff_deadline_is_the_one_this_host_shows_and_waits_for)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 1, 1, 300);
    cfg.open_backoff_multiplier_pct = 10000; /* x100 a step: a reopening waits 0.3 .. 4 s */
    cfg.open_backoff_max_ms = 4000;
    cfg.open_backoff_reset_ms = 600000;
    cb_circuit *c[2];
    circuit_on_all("backoff", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("backoff"), TSUP_LIVENESS_MS), "registration never synced");
    trip(c[0]);
    cr_assert(tsup_wait_state(c[0], CB_OPEN));

    /* A probes and fails until a reopening, in a second of its own, drew a
     * wait that ends after B's own (opened_at's second + recovery timeout):
     * only A's deadline can make B wait that long. */
    cb_info a = tsup_info(c[0]);
    for (int i = 0;; i++) {
        cr_assert_lt(i, 12, "no reopening drew a wait beyond the recovery timeout");
        int64_t before = a.opened_at;
        cb_ticket t = probe_after_backoff(c[0]);
        cb_record(c[0], t, CB_FAILURE);
        cr_assert(tsup_wait_until((a = tsup_info(c[0])).state == CB_OPEN && a.epoch > tsup_ticket_epoch(t),
                                  TSUP_LIVENESS_MS), "the failed probe did not reopen A");
        int64_t own_end_b = (a.opened_at + 1) * NS_PER_S - 1 + 300 * 1000000ll;
        if (a.opened_at != before && a.open_until_ns > own_end_b)
            break;
    }
    int64_t whole = (a.open_until_ns + NS_PER_S - 1) / NS_PER_S; /* the fleet keeps seconds, rounded up */
    cr_assert(tsup_wait_until(tsup_info(c[1]).opened_at == a.opened_at, TSUP_LIVENESS_MS),
              "B never adopted A's reopening");
    cb_info b = tsup_info(c[1]);
    cr_assert_eq(b.state, CB_OPEN);
    cr_assert_eq(b.open_until_ns, whole * NS_PER_S, "B shows open_until %lld, A's deadline is %lld (wait %lld ms)",
                 (long long)b.open_until_ns, (long long)a.open_until_ns,
                 (long long)((a.open_until_ns - a.opened_at * NS_PER_S) / 1000000));
    cr_assert_eq(atoll(fleet_field("backoff", "open_until")), whole);
    cr_assert_eq(atoll(fleet_field("backoff", "open_until_of")), a.opened_at);

    /* B's workers are rejected until A's deadline, then B probes. */
    for (;;) {
        cb_ticket t = cb_allow(c[1]);
        int64_t after = realtime_ns();
        if (cb_permitted(t)) {
            cr_assert(cb_ticket_is_probe(t));
            cr_assert_geq(after, a.open_until_ns, "B probed %lld ms before A's deadline",
                          (long long)((a.open_until_ns - after) / 1000000));
            cb_record(c[1], t, CB_SUCCESS);
            break;
        }
        cr_assert_lt(after, a.open_until_ns + 3 * TSUP_LIVENESS_MS * 1000000ll, "B never probed");
        usleep(2000);
    }
    cr_assert(tsup_wait_state(c[0], CB_CLOSED), "B's close never reached A");
    cr_assert_str_eq(fleet_field("backoff", "open_until"), "", "a close removes the deadline");
}

Test(fleet_redis, a_restarted_host_adopts_a_close_it_missed_and_restores_an_opening_the_fleet_lost)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 1, 1, 600);
    cb_circuit *c[2];
    circuit_on_all("db", &cfg, c);
    cb_config slow = tsup_config(1, 1, 1, 600000); /* no election: the restore alone writes it back */
    cb_circuit *solo = tsup_circuit(cl[0], "solo", &slow); /* only host A uses it */
    cr_assert(tsup_wait_until(all_in_sync("db"), TSUP_LIVENESS_MS));

    /* A dies with db OPEN; B probes and closes it while A is down. */
    trip(c[0]);
    cr_assert(tsup_wait_state(c[0], CB_OPEN));
    int64_t opened = tsup_info(c[0]).opened_at;
    /* the write-through is asynchronous: the fleet has the opening before A dies */
    cr_assert(tsup_wait_until(strcmp(fleet_field("db", "state"), "OPEN") == 0, TSUP_LIVENESS_MS));
    tsup_daemon_kill9(&host[0]);
    next_second_after(opened); /* the close is then later than the opening, by redis' clock too */
    cb_record(c[1], tsup_probe(c[1]), CB_SUCCESS);
    cr_assert(tsup_wait_state(c[1], CB_CLOSED));
    cr_assert_eq(tsup_daemon_restart(&host[0]), 0);
    cr_assert(tsup_wait_state(c[0], CB_CLOSED), "the restarted host kept an opening the fleet had closed");
    cb_transition tr;
    do
        tr = tsup_next_transition(cl[0], "db");
    while (tr.to != CB_CLOSED);
    cr_assert_eq(tr.source, CB_SOURCE_RESTORE);
    cr_assert_str_eq(fleet_field("db", "state"), "CLOSED", "the restarted host reopened the fleet");

    /* A dies with solo OPEN, and redis loses everything meanwhile. */
    trip(solo);
    cr_assert(tsup_wait_until(strcmp(fleet_field("solo", "state"), "OPEN") == 0, TSUP_LIVENESS_MS));
    tsup_daemon_kill9(&host[0]);
    redis_ok("FLUSHALL", NULL, NULL, NULL);
    cr_assert_eq(tsup_daemon_restart(&host[0]), 0);
    cr_assert(tsup_wait_until(strcmp(fleet_field("solo", "state"), "OPEN") == 0, TSUP_LIVENESS_MS),
              "the restarted host did not give its opening back to the fleet");
    cr_assert_eq(atoll(fleet_field("solo", "opened_at")), tsup_info(solo).opened_at);
    /* and it follows the fleet for it again: a close written by hand reaches it */
    char key[128], channel[128];
    snprintf(key, sizeof key, "%sc:{solo}", prefix);
    snprintf(channel, sizeof channel, "%stransitions", prefix);
    redis_ok("HDEL", key, "opened_at", NULL);
    redis_ok("HSET", key, "state", "CLOSED");
    redis_ok("PUBLISH", channel, "solo", NULL);
    cr_assert(tsup_wait_state(solo, CB_CLOSED), "an adopted circuit is not tracked");
}

/* Host b, paused, records a failure it will act on when resumed; meanwhile
 * run(arg) happens in the fleet; then b resumes. */
static void while_paused(int b, cb_circuit *cb, void (*run)(void *), void *arg)
{
    cb_ticket t = cb_allow(cb);
    cr_assert_eq(tsup_ticket_kind(t), CB_TICKET_ALLOWED);
    cr_assert_eq(kill(host[b].pid, SIGSTOP), 0);
    cb_record(cb, t, CB_FAILURE);
    run(arg);
    cr_assert_eq(kill(host[b].pid, SIGCONT), 0);
}

/* A trips, then a second passes (so a later trip has a later opened_at). */
static void trip_and_wait(void *arg)
{
    cb_circuit *a = arg;
    trip(a);
    cr_assert(tsup_wait_state(a, CB_OPEN));
    usleep(1100 * 1000);
}

/* A trips, probes and closes, all before the paused host acts. */
static void full_cycle(void *arg)
{
    cb_circuit *a = arg;
    trip(a);
    cr_assert(tsup_wait_state(a, CB_OPEN));
    cb_record(a, tsup_probe(a), CB_SUCCESS);
    cr_assert(tsup_wait_state(a, CB_CLOSED));
    usleep(1100 * 1000);
}

/* Both hosts on the same opening as redis, and never both HALF_OPEN. */
static bool one_opening(cb_circuit *const *c)
{
    cb_info a = tsup_info(c[0]), b = tsup_info(c[1]);
    cr_assert(a.state != CB_HALF_OPEN || b.state != CB_HALF_OPEN, "both hosts hold the probe");
    return a.state != CB_CLOSED && b.state != CB_CLOSED && a.opened_at == b.opened_at &&
           atoll(fleet_field("mail", "opened_at")) == a.opened_at;
}

Test(fleet_redis, conflicting_transitions_settle_on_one_opening_without_losing_an_open)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 1, 1, 2500); /* longer than a pause: the trips really cross */
    cb_circuit *c[2];
    circuit_on_all("mail", &cfg, c);
    cr_assert(tsup_wait_until(all_in_sync("mail"), TSUP_LIVENESS_MS));

    /* Trips that cross: B trips a second after A without having heard of it. */
    while_paused(1, c[1], trip_and_wait, c[0]);
    cr_assert(tsup_wait_until(one_opening(c), TSUP_LIVENESS_MS), "the hosts kept different openings");
    cb_ticket t;
    int p = first_probe(c, 2, &t);
    cb_record(c[p], t, CB_SUCCESS);
    cr_assert(tsup_wait_until(all_state(c, 2, CB_CLOSED), TSUP_LIVENESS_MS));

    /* A trip that lands after the fleet closed: B's failure happened, so the fleet opens again. */
    while_paused(1, c[1], full_cycle, c[0]);
    cr_assert(tsup_wait_until(one_opening(c), TSUP_LIVENESS_MS), "B's late trip was lost");
    cr_assert_gt(tsup_info(c[0]).opened_at, 0);
    cr_assert(tsup_wait_until(all_in_sync("mail"), TSUP_LIVENESS_MS));
}

Test(fleet_redis, foreign_data_and_error_replies_are_counted_and_change_no_circuit)
{
    start_fleet(2, NULL);
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    cb_circuit *g[2], *h[2], *k[2];
    circuit_on_all("g", &cfg, g);
    circuit_on_all("h", &cfg, h);
    circuit_on_all("k", &cfg, k);
    trip(g[0]);
    cr_assert(tsup_wait_state(g[1], CB_OPEN));
    cr_assert(tsup_wait_until(all_in_sync("g") && all_in_sync("h"), TSUP_LIVENESS_MS));
    cb_info g_before[2] = {tsup_info(g[0]), tsup_info(g[1])};
    uint64_t malformed = tsup_stat(&host[1], "store_malformed") + tsup_stat(&host[1], "store_invalid_items");
    char key[128], channel[128];
    snprintf(channel, sizeof channel, "%stransitions", prefix);

    snprintf(key, sizeof key, "%sc:{g}", prefix); /* a garbage field in a live circuit */
    redis_ok("HSET", key, "opened_at", "soon");
    redis_ok("PUBLISH", channel, "g", NULL);
    snprintf(key, sizeof key, "%sc:{h}", prefix); /* a circuit that is not a hash */
    redis_ok("DEL", key, NULL, NULL);
    redis_ok("SET", key, "CLOSED", NULL);
    redis_ok("PUBLISH", channel, "h", NULL);
    redis_ok("PUBLISH", channel, "", NULL); /* not a circuit name */
    snprintf(key, sizeof key, "%sc:{z}", prefix);
    redis_ok("HSET", key, "state", "BANANA");
    cr_assert(tsup_wait_until(tsup_stat(&host[1], "store_malformed") + tsup_stat(&host[1], "store_invalid_items") >=
                                  malformed + 3,
                              TSUP_LIVENESS_MS),
              "malformed data was not counted");
    cr_assert_gt(tsup_log_count(&host[1], "malformed"), 0, "a malformed message was not logged");
    cr_assert_gt(tsup_log_count(&host[1], "ignoring its item"), 0, "an invalid item was not logged");
    usleep(500 * 1000); /* two reconcile rounds over the garbage */
    for (int i = 0; i < 2; i++) {
        cb_info now = tsup_info(g[i]);
        cr_assert(now.state == CB_OPEN && now.epoch == g_before[i].epoch && now.opened_at == g_before[i].opened_at,
                  "host %d's circuit g moved on garbage", i);
        cr_assert_eq(tsup_info(h[i]).state, CB_CLOSED, "host %d's circuit h moved on garbage", i);
    }

    /* Error replies: redis refuses every write; the trip stays local and pending. */
    uint64_t errors = tsup_stat(&host[0], "store_errors");
    redis_ok("CONFIG", "SET", "maxmemory", "1");
    trip(k[0]);
    cr_assert(tsup_wait_state(k[0], CB_OPEN));
    cr_assert(tsup_wait_until(tsup_stat(&host[0], "store_errors") > errors, TSUP_LIVENESS_MS),
              "the error reply was not counted");
    cr_assert_eq(sync_of(0, "k", NULL), CB_SYNC_PENDING, "a refused write shows as agreed");
    cr_assert_eq(tsup_info(k[1]).state, CB_CLOSED);
    redis_ok("CONFIG", "SET", "maxmemory", "0");
    cr_assert(tsup_wait_state(k[1], CB_OPEN), "the refused write was never retried");
    cr_assert(tsup_wait_until(all_in_sync("k"), TSUP_LIVENESS_MS));
    cr_assert(tsup_ping(&host[0]) && tsup_ping(&host[1]));
}

/* ---- a shadow trial: marked in the store, obeyed by nobody ------------------------------------ */

/* A runs the circuit in shadow, B for real. A's trip writes the hash's
 * shadow marker and nothing else: the fleet's state stays what B obeys
 * (no state at all: CLOSED), B keeps admitting calls through several
 * syncs; B's own trip later is written beside the marker. */
Test(fleet_redis, a_shadow_trip_is_marked_in_the_store_and_the_other_host_keeps_admitting_calls)
{
    start_fleet(2, NULL);
    const char *name = tsup_unique("trial");
    cb_config cfg = tsup_config(1, 1, 1, 600000), trial = cfg;
    trial.shadow = 1;
    cb_circuit *a = tsup_circuit(cl[0], name, &trial), *b = tsup_circuit(cl[1], name, &cfg);
    int64_t before = (int64_t)time(NULL);
    trip(a);
    cr_assert(tsup_wait_state(a, CB_OPEN), "the shadow circuit did not trip");
    cr_assert(cb_permitted(cb_allow(a)), "a shadow circuit rejected a call");
    cr_assert(tsup_wait_until(strcmp(fleet_field(name, "shadow_state"), "OPEN") == 0, TSUP_LIVENESS_MS),
              "the trial's trip never reached the store");
    int64_t since = strtoll(fleet_field(name, "shadow_since"), NULL, 10);
    cr_assert(since >= before && since <= (int64_t)time(NULL), "shadow_since %lld", (long long)since);
    cr_assert_not_null(strstr(fleet_field(name, "shadow_host"), host[0].instance), "the marker names host A: %s",
                       fleet_field(name, "shadow_host"));
    cr_assert_str_eq(fleet_field(name, "state"), "", "a real state was written");
    cr_assert_str_eq(fleet_field(name, "version"), "", "the marker bumped the item's version");
    for (int i = 0; i < 10; i++) { /* five syncs of B */
        cr_assert(cb_permitted(cb_allow(b)), "B rejected a call after A's shadow trip");
        cr_assert_eq(tsup_info(b).state, CB_CLOSED, "B obeyed a trial");
        usleep(100 * 1000);
    }
    /* B's operator sees the trial A runs */
    char *show = NULL;
    char *argv[] = {(char *)tsup_cbctl_path(), "--socket", host[1].socket, "--instance", host[1].instance, "show",
                    (char *)name, NULL};
    cr_assert_eq(tsup_run(argv, &show, true), 0, "%s", show);
    const char *line = strstr(show, "fleet shadow:    OPEN since ");
    cr_assert(line != NULL && strstr(line, host[0].instance) != NULL, "cbctl show on B: %s", show);
    cr_assert_not_null(strstr(show, "state:           CLOSED"), "%s", show);
    free(show);
    trip(b);
    cr_assert(tsup_wait_until(strcmp(fleet_field(name, "state"), "OPEN") == 0, TSUP_LIVENESS_MS), "B's trip");
    cr_assert_str_eq(fleet_field(name, "shadow_state"), "OPEN", "B's real write kept the marker");
}

/* A shadow trial lives on its host: it recovers through its own probes
 * after its own recovery timeout, though the fleet's item says CLOSED and
 * its election there could never be won, and the fleet's CLOSED never
 * ends the trial early. */
Test(fleet_redis, a_shadow_trial_recovers_on_its_own_host_though_the_fleet_item_stays_closed)
{
    start_fleet(2, NULL);
    const char *name = tsup_unique("trial");
    cb_config trial = tsup_config(1, 1, 1, 1500);
    trial.shadow = 1;
    cb_circuit *a = tsup_circuit(cl[0], name, &trial);
    trip(a);
    cr_assert(tsup_wait_state(a, CB_OPEN), "the shadow circuit did not trip");
    usleep(800 * 1000); /* several syncs reading the fleet's CLOSED item */
    cr_assert_eq(tsup_info(a).state, CB_OPEN, "the fleet's CLOSED ended the trial before its recovery timeout");
    cb_ticket t = {0};
    cr_assert(tsup_wait_until(cb_ticket_is_probe(t = cb_allow(a)), TSUP_LIVENESS_MS),
              "the trial never reached HALF_OPEN (ticket kind %u, state %d)", tsup_ticket_kind(t), tsup_info(a).state);
    cb_record(a, t, CB_SUCCESS);
    cr_assert(tsup_wait_state(a, CB_CLOSED), "the trial's probe did not close it");
    cr_assert(tsup_wait_until(strcmp(fleet_field(name, "shadow_state"), "CLOSED") == 0, TSUP_LIVENESS_MS),
              "the trial's close never reached the marker");
    cr_assert_str_eq(fleet_field(name, "state"), "", "a real state was written");
}
