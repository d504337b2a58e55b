/*
 * test_fleet_dynamodb.c - two real cbd daemons, each its own instance,
 * sharing circuits through one DynamoDB table (dynalite on a free loopback
 * port): two hosts of one fleet, seen through their workers.
 *
 * What the fleet promises (DESIGN.md section 5) and these tests check: a
 * trip on one host rejects calls on the other; the table holds Powertools'
 * item, so a trip written the way Powertools writes it opens every host; in
 * HALF_OPEN the fleet admits no more probes at once than half_open_max_probes,
 * whichever host the workers are on, even while the probing outlasts the
 * probe lease (the holder renews it), and the prober's close closes every
 * host; with the table gone both hosts keep serving and tripping alone, and
 * once it is back the opening is in the table.
 *
 * Workers are libcb clients: the test process on each instance, or forked
 * children (one client each, like prefork workers) that count the probe
 * tickets they hold in a MAP_SHARED page. The table is created with
 * `cbctl dynamodb create-table`; items are read and written with the raw
 * requests of ddb_test_support.h, as boto3 would send them. This file does
 * not link the daemon's code: everything goes through cbd, cbctl and libcb.
 *
 * No timing is asserted: every wait is a generous liveness bound.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../dynamo/ddb_test_support.h"

#define TABLE "cbd-fleet"
#define FLEET_LIVENESS_MS 10000 /* a trip, an election, a close and a sync on a loaded 2-core machine */
#define WORKERS_PER_HOST 2

/* ddb_test_env's credentials are inherited by cbd and cbctl. */
TestSuite(fleet_dynamodb, .init = ddb_test_env, .timeout = 60);

/* ---- the table ------------------------------------------------------------------------ */

/* The item's state is state (and, if opened_at > 0, its opened_at). */
static bool item_is(int port, const char *name, const char *state, int64_t opened_at)
{
    json_t *it = ddb_pt_get(port, TABLE, name);
    const char *st = ddb_item_s(it, "state");
    bool ok = st && strcmp(st, state) == 0 && (opened_at <= 0 || ddb_item_n(it, "opened_at") == opened_at);
    json_decref(it);
    return ok;
}

/* ---- the fleet: dynalite, the table, two hosts ---------------------------------------- */

struct fleet {
    struct dynalite db;
    char uri[512];
    struct tsup_daemon a, b;
    cb_client *ca, *cb;
    const char *name;     /* the test's circuit, */
    cb_circuit *pa, *pb;  /* registered on host A and on host B */
};

/* `cbctl dynamodb create-table URI`: dynalite has no UpdateTimeToLive, so
 * the command warns and still succeeds. */
static void create_table(const struct fleet *f)
{
    char *out = NULL;
    char *argv[] = {(char *)tsup_cbctl_path(), "dynamodb", "create-table", (char *)f->uri, NULL};
    int rc = tsup_run(argv, &out, true);
    cr_assert_eq(rc, 0, "cbctl dynamodb create-table %s: exit %d: %s", f->uri, rc, out);
    free(out);
}

static void start_host(struct tsup_daemon *d, const char *tag, const char *uri)
{
    struct tsup_daemon_opts o = {.tag = tag, .store = uri};
    int rc = tsup_daemon_start(d, &o);
    cr_assert_eq(rc, 0, "cbd %s with store %s: %s", tag, uri, strerror(-rc));
}

/* dynalite, the table and both hosts; the test's circuit, a unique name
 * from base, registered with cfg on both hosts. */
static void fleet_start(struct fleet *f, const char *base, const cb_config *cfg)
{
    dynalite_start(&f->db, 0);
    snprintf(f->uri, sizeof f->uri,
             "dynamodb://" TABLE "?region=us-east-1&endpoint=%s&sync_ms=200&timeout_ms=1000&backoff_max_ms=400",
             f->db.endpoint);
    create_table(f);
    start_host(&f->a, "hosta", f->uri);
    start_host(&f->b, "hostb", f->uri);
    f->ca = tsup_client(&f->a);
    f->cb = tsup_client(&f->b);
    f->name = tsup_unique(base);
    f->pa = tsup_circuit(f->ca, f->name, cfg);
    f->pb = tsup_circuit(f->cb, f->name, cfg);
}

static void fleet_stop(struct fleet *f)
{
    cb_client_close(f->ca);
    cb_client_close(f->cb);
    int sa = tsup_daemon_stop(&f->a), sb = tsup_daemon_stop(&f->b);
    cr_expect_eq(sa, 0, "host A stopped cleanly (status %d)", sa);
    cr_expect_eq(sb, 0, "host B stopped cleanly (status %d)", sb);
}

/* The next transition of name on a host's history, which must be from -> to. */
static cb_transition expect_transition(cb_client *cl, const char *name, cb_state from, cb_state to)
{
    cb_transition tr = tsup_next_transition(cl, name);
    cr_assert(tr.from == from && tr.to == to, "%s: expected %d -> %d, got %d -> %d (source %d)", name, from, to,
              tr.from, tr.to, tr.source);
    return tr;
}

/* ---- a trip on one host ----------------------------------------------------------------- */

Test(fleet_dynamodb, a_trip_on_one_host_rejects_calls_on_the_other_and_writes_powertools_item)
{
    struct fleet f;
    cb_config cfg = tsup_config(3, 1, 1, 30000);
    fleet_start(&f, "payments", &cfg);
    cr_assert(cb_permitted(cb_allow(f.pb)), "B starts CLOSED");

    int64_t before = (int64_t)time(NULL);
    cr_assert_eq(tsup_record_n(f.pa, CB_FAILURE, 3), 3);
    cr_assert(tsup_wait_state(f.pa, CB_OPEN), "A trips on its own failures");
    cb_info ia = tsup_info(f.pa);

    cr_assert(tsup_wait_until(!cb_permitted(cb_allow(f.pb)), TSUP_LIVENESS_MS), "B's workers never saw A's trip");
    cb_info ib = tsup_info(f.pb);
    cr_assert_eq(ib.state, CB_OPEN);
    cr_assert_eq(ib.opened_at, ia.opened_at, "B adopts A's opening");
    cr_assert_eq(ib.failure_count, 3);
    cb_transition tr = expect_transition(f.cb, f.name, CB_CLOSED, CB_OPEN);
    cr_assert_eq(tr.source, CB_SOURCE_REMOTE);

    json_t *it = ddb_pt_get(f.db.port, TABLE, f.name);
    cr_assert_str_eq(ddb_item_s(it, "id"), f.name);
    cr_assert_str_eq(ddb_item_s(it, "state"), "OPEN");
    cr_assert_eq(ddb_item_n(it, "opened_at"), ia.opened_at);
    cr_assert_eq(ddb_item_n(it, "failure_count"), 3);
    int64_t exp = ddb_item_n(it, "expiration");
    cr_assert(exp >= before + 30 + 3600 && exp <= (int64_t)time(NULL) + 30 + 3600,
              "expiration %lld is now + recovery_timeout + 3600", (long long)exp);
    cr_assert(!ddb_item_has(it, "half_open_owner") && !ddb_item_has(it, "probe_lease_expiry"),
              "an OPEN item has no owner");
    json_decref(it);
    fleet_stop(&f);
}

/* ---- one probe for the fleet --------------------------------------------------------------- */

/* What the forked workers share with the test (MAP_SHARED). */
struct probe_board {
    atomic_int in_flight;     /* PROBE tickets held right now, both hosts */
    atomic_int max_in_flight; /* the most ever held at once */
    atomic_int probes[2];     /* PROBE tickets issued per host */
    atomic_int close_ok;      /* 0: probes report IGNORED (HALF_OPEN lasts), 1: SUCCESS (it closes) */
    atomic_int stop;
};

/* A prefork worker of one host: its own client, hammering cb_allow. A probe
 * is held a little (a downstream call), then reports an uncounted error
 * (its permit goes back, the circuit stays HALF_OPEN) until the test lets
 * the probes succeed. */
static void worker(struct probe_board *pb, int host, const char *instance, const char *name, const cb_config *cfg)
{
    cb_client *cl;
    cb_circuit *c;
    if (cb_client_open(&cl, instance) < 0 || cb_circuit_get(cl, name, cfg, &c) < 0)
        _exit(1); /* workers_stop fails the test */
    while (!atomic_load(&pb->stop)) {
        cb_ticket t = cb_allow(c);
        if (cb_ticket_is_probe(t)) {
            int now = atomic_fetch_add(&pb->in_flight, 1) + 1;
            int max = atomic_load(&pb->max_in_flight);
            while (now > max && !atomic_compare_exchange_weak(&pb->max_in_flight, &max, now)) {
            }
            atomic_fetch_add(&pb->probes[host], 1);
            usleep(20000);
            /* Given back before the report: the daemon cannot hand the
             * permit out again before it has drained this report. */
            atomic_fetch_sub(&pb->in_flight, 1);
            cb_record(c, t, atomic_load(&pb->close_ok) ? CB_SUCCESS : CB_IGNORED);
        } else if (cb_permitted(t)) {
            usleep(500); /* not reported: successes would reset the test's failure streak */
        } else {
            sched_yield();
        }
    }
    cb_client_close(cl);
    _exit(0);
}

/* Forks WORKERS_PER_HOST workers on each host (kids[i] works on host i % 2). */
static struct probe_board *workers_start(const struct fleet *f, const cb_config *cfg, pid_t *kids)
{
    struct probe_board *board = mmap(NULL, sizeof *board, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(board != MAP_FAILED);
    memset(board, 0, sizeof *board);
    for (int i = 0; i < 2 * WORKERS_PER_HOST; i++) {
        int host = i % 2;
        kids[i] = tsup_fork();
        cr_assert(kids[i] >= 0);
        if (kids[i] == 0)
            worker(board, host, host ? f->b.instance : f->a.instance, f->name, cfg);
    }
    return board;
}

static void workers_stop(struct probe_board *board, const pid_t *kids)
{
    atomic_store(&board->stop, 1);
    for (int i = 0; i < 2 * WORKERS_PER_HOST; i++) {
        int status;
        cr_assert_eq(waitpid(kids[i], &status, 0), kids[i]);
        tsup_untrack(kids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d failed (status %#x)", i, status);
    }
}

/* Trips name on A while the workers hammer; once both hosts have asked the
 * table for the probe lease (one lost the election) and hold_ms more have
 * passed, lets the probes succeed; waits until every host is CLOSED again.
 * The opening's opened_at. */
static int64_t trip_and_probe(struct fleet *f, struct probe_board *board, int64_t hold_ms)
{
    cb_circuit *pa = f->pa, *pb = f->pb;
    cr_assert_eq(tsup_record_n(pa, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_state(pa, CB_OPEN), "A trips");
    cr_assert(tsup_wait_state(pb, CB_OPEN), "B learns A's trip");
    int64_t opened_at = tsup_info(pa).opened_at;
    cr_assert(tsup_wait_until(tsup_stat(&f->a, "store_conditions_lost") + tsup_stat(&f->b, "store_conditions_lost") > 0,
                              FLEET_LIVENESS_MS),
              "no host ever lost a probe election (probes A %d, B %d)", atomic_load(&board->probes[0]),
              atomic_load(&board->probes[1]));
    for (int64_t end = tsup_now_ms() + hold_ms; tsup_now_ms() < end;)
        usleep(10000);
    atomic_store(&board->close_ok, 1);
    cr_assert(tsup_wait_until(tsup_info(pa).state == CB_CLOSED && tsup_info(pb).state == CB_CLOSED,
                              FLEET_LIVENESS_MS),
              "the fleet never closed again (A %d, B %d; probes A %d, B %d)", tsup_info(pa).state,
              tsup_info(pb).state, atomic_load(&board->probes[0]), atomic_load(&board->probes[1]));
    return opened_at;
}

/* The fleet's probe bound held, and only one host probed: which (0 = A, 1 = B). */
static int check_one_prober(const struct probe_board *board, const cb_config *cfg)
{
    int pa_n = atomic_load(&board->probes[0]), pb_n = atomic_load(&board->probes[1]);
    cr_assert_leq(atomic_load(&board->max_in_flight), (int)cfg->half_open_max_probes,
                  "%d probes ran at once across the fleet (half_open_max_probes %u)",
                  atomic_load(&board->max_in_flight), cfg->half_open_max_probes);
    cr_assert_geq(pa_n + pb_n, (int)cfg->success_threshold, "the probes' successes closed the circuit");
    cr_assert(pa_n == 0 || pb_n == 0, "one host holds the fleet's lease: probes on A %d and on B %d", pa_n, pb_n);
    return pa_n ? 0 : 1;
}

/* The workers on both hosts through trip_and_probe, then check_one_prober:
 * the prober host (0 = A, 1 = B); *opened_at, the opening probed. */
static int probe_with_workers(struct fleet *f, const cb_config *cfg, int64_t hold_ms, int64_t *opened_at)
{
    pid_t kids[2 * WORKERS_PER_HOST];
    struct probe_board *board = workers_start(f, cfg, kids);
    *opened_at = trip_and_probe(f, board, hold_ms);
    workers_stop(board, kids);
    int host = check_one_prober(board, cfg);
    munmap(board, sizeof *board);
    return host;
}

Test(fleet_dynamodb, the_fleet_runs_at_most_half_open_max_probes_and_their_close_closes_every_host)
{
    struct fleet f;
    cb_config cfg = tsup_config(2, 3, 2, 800);
    fleet_start(&f, "search", &cfg);
    int64_t opened_at;
    int host = probe_with_workers(&f, &cfg, 0, &opened_at);

    /* The prober closed it itself; the other host lost the election and
     * learned the close from the table. */
    cb_client *prober = host ? f.cb : f.ca, *other = host ? f.ca : f.cb;
    cr_assert_geq(tsup_stat(host ? &f.a : &f.b, "store_conditions_lost"), 1, "the host without probes lost the election");
    expect_transition(prober, f.name, CB_CLOSED, CB_OPEN);
    cb_transition half = expect_transition(prober, f.name, CB_OPEN, CB_HALF_OPEN);
    cr_assert_eq(half.source, CB_SOURCE_TIMER);
    cr_assert_eq(half.opened_at, opened_at, "the lease is for A's opening");
    cr_assert_eq(expect_transition(prober, f.name, CB_HALF_OPEN, CB_CLOSED).source, CB_SOURCE_LOCAL);
    expect_transition(other, f.name, CB_CLOSED, CB_OPEN);
    cr_assert_eq(expect_transition(other, f.name, CB_OPEN, CB_CLOSED).source, CB_SOURCE_REMOTE);

    json_t *it = ddb_pt_get(f.db.port, TABLE, f.name);
    cr_assert_str_eq(ddb_item_s(it, "state"), "CLOSED");
    cr_assert_eq(ddb_item_n(it, "failure_count"), 0);
    cr_assert(!ddb_item_has(it, "opened_at") && !ddb_item_has(it, "half_open_owner") &&
                  !ddb_item_has(it, "probe_lease_expiry"),
              "the close removes the opening and the lease: %s", json_dumps(it, 0));
    json_decref(it);
    fleet_stop(&f);
}

/* A probe lease is a bound on a silent prober, not on probing: probes that
 * keep reporting keep it, on this host and in the table, so the other host
 * never takes over a lease whose holder is still probing. */
Test(fleet_dynamodb, a_prober_that_keeps_reporting_keeps_the_fleet_lease_past_its_length)
{
    struct fleet f;
    cb_config cfg = tsup_config(2, 3, 1, 800);
    cfg.probe_lease_ms = 2000;
    fleet_start(&f, "quotes", &cfg);
    int64_t opened_at;
    probe_with_workers(&f, &cfg, 3 * (int64_t)cfg.probe_lease_ms, &opened_at);
    cr_assert(item_is(f.db.port, f.name, "CLOSED", 0), "the prober's close reached the table");
    fleet_stop(&f);
}

/* ---- Powertools trips ------------------------------------------------------------------------ */

Test(fleet_dynamodb, a_powertools_trip_opens_the_circuit_on_both_hosts)
{
    struct fleet f;
    cb_config cfg = tsup_config(5, 3, 1, 30000);
    fleet_start(&f, "inventory", &cfg);
    cr_assert(cb_permitted(cb_allow(f.pa)) && cb_permitted(cb_allow(f.pb)), "CLOSED everywhere at first");

    int64_t now = (int64_t)time(NULL);
    ddb_pt_trip(f.db.port, TABLE, f.name, now);

    cr_assert(tsup_wait_state(f.pa, CB_OPEN), "A never opened");
    cr_assert(tsup_wait_state(f.pb, CB_OPEN), "B never opened");
    cb_circuit *hosts[] = {f.pa, f.pb};
    for (int i = 0; i < 2; i++) {
        cb_info in = tsup_info(hosts[i]);
        cr_assert_eq(in.opened_at, now, "host %c adopts the item's opened_at", 'A' + i);
        cr_assert_eq(in.failure_count, 5);
        cr_assert(!cb_permitted(cb_allow(hosts[i])), "host %c rejects", 'A' + i);
    }
    cr_assert_eq(expect_transition(f.ca, f.name, CB_CLOSED, CB_OPEN).source, CB_SOURCE_REMOTE);
    cr_assert_eq(expect_transition(f.cb, f.name, CB_CLOSED, CB_OPEN).source, CB_SOURCE_REMOTE);
    cr_assert(item_is(f.db.port, f.name, "OPEN", now), "no host wrote over Powertools' item");
    fleet_stop(&f);
}

/* The interop defect this guards against: at the recovery boundary an idle
 * cbd host won the election and renewed its lease forever without a probe,
 * so Powertools functions could never probe. Hosts whose workers do not
 * call the circuit never compete: Powertools' own election wins, and its
 * close closes every host. */
Test(fleet_dynamodb, idle_hosts_never_keep_a_powertools_function_from_probing)
{
    struct fleet f;
    cb_config cfg = tsup_config(5, 3, 1, 1000);
    fleet_start(&f, "idle", &cfg);
    int64_t opened = (int64_t)time(NULL) - 1;
    ddb_pt_trip(f.db.port, TABLE, f.name, opened);
    cr_assert(tsup_wait_state(f.pa, CB_OPEN) && tsup_wait_state(f.pb, CB_OPEN));
    /* Past the recovery timeout (whole seconds: up to a second late), with
     * several syncs: an idle host that elected would hold the item now. */
    struct tsup_deadline dl = tsup_deadline_in(3000);
    while (tsup_deadline_wait(&dl)) {
    }
    cr_assert(item_is(f.db.port, f.name, "OPEN", opened), "an idle host took the probe lease");
    cr_assert_eq(ddb_pt_elect(f.db.port, TABLE, f.name, opened), 200, "the Powertools function's election failed");
    cr_assert(tsup_wait_until(cb_info_get(f.pa, &(cb_info){0}) == 0 && !cb_permitted(cb_allow(f.pa)), 1000));
    ddb_pt_update(f.db.port, TABLE, f.name, false, 0); /* its probe succeeded: close */
    cr_assert(tsup_wait_state(f.pa, CB_CLOSED), "A did not follow Powertools' close");
    cr_assert(tsup_wait_state(f.pb, CB_CLOSED), "B did not follow Powertools' close");
    fleet_stop(&f);
}

/* The other half of probes on demand: a host whose worker wants a probe
 * does take the lease, but a worker that then never takes the probe must
 * not keep it. Within the grace (min(1 s, lease / 4)) the host gives it
 * back: the item is OPEN again on the same opening, without an owner, and
 * Powertools' own election wins at once. The lease asked for lasts 21 s:
 * a lease that merely ran out would leave the item HALF_OPEN that long. */
Test(fleet_dynamodb, a_lease_taken_for_a_call_that_never_probes_is_given_back_and_powertools_elects_at_once)
{
    struct fleet f;
    cb_config cfg = tsup_config(5, 3, 1, 1000);
    cfg.probe_lease_ms = 20000;
    fleet_start(&f, "giveback", &cfg);
    int64_t opened = (int64_t)time(NULL) - 1;
    ddb_pt_trip(f.db.port, TABLE, f.name, opened);
    cr_assert(tsup_wait_state(f.pa, CB_OPEN) && tsup_wait_state(f.pb, CB_OPEN));
    cr_assert(tsup_wait_until(tsup_electable(f.pa), FLEET_LIVENESS_MS), "A's circuit never became electable");
    cr_assert(!cb_permitted(cb_allow(f.pa)), "a call on an electable circuit is rejected, and wants a probe");
    expect_transition(f.ca, f.name, CB_CLOSED, CB_OPEN);
    cb_transition half = expect_transition(f.ca, f.name, CB_OPEN, CB_HALF_OPEN);
    cr_assert_eq(half.opened_at, opened, "A took the lease of the fleet's opening");
    expect_transition(f.ca, f.name, CB_HALF_OPEN, CB_OPEN); /* nobody took the probe */
    cr_assert(tsup_wait_until(({
                                  json_t *it = ddb_pt_get(f.db.port, TABLE, f.name);
                                  bool back = item_is(f.db.port, f.name, "OPEN", opened) &&
                                              !ddb_item_has(it, "half_open_owner") &&
                                              !ddb_item_has(it, "probe_lease_expiry");
                                  json_decref(it);
                                  back;
                              }),
                              FLEET_LIVENESS_MS),
              "the item did not go back to OPEN without an owner");
    cr_assert_eq(ddb_pt_elect(f.db.port, TABLE, f.name, opened), 200,
                 "the Powertools function's election failed after the host gave the lease back");
    cr_assert_eq(tsup_info(f.pb).state, CB_OPEN, "B, idle, never competed");
    fleet_stop(&f);
}

/* ---- the table goes away -------------------------------------------------------------------- */

Test(fleet_dynamodb, with_the_table_gone_hosts_trip_alone_and_the_opening_reaches_the_table_when_it_returns)
{
    struct fleet f;
    cb_config cfg = tsup_config(2, 3, 1, 60000);
    fleet_start(&f, "ledger", &cfg);

    dynalite_kill(&f.db);
    /* Both hosts serve and trip on their own failures; nothing waits for the table. */
    cr_assert_eq(tsup_record_n(f.pa, CB_FAILURE, 2), 2, "A serves checks");
    cr_assert(tsup_wait_state(f.pa, CB_OPEN), "A trips host-local");
    /* B trips a second later: two openings, and the fleet must settle on B's. */
    int64_t oa = tsup_info(f.pa).opened_at;
    cr_assert(tsup_wait_until((int64_t)time(NULL) > oa, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_record_n(f.pb, CB_FAILURE, 2), 2, "B serves checks");
    cr_assert(tsup_wait_state(f.pb, CB_OPEN), "B trips host-local");
    int64_t ob = tsup_info(f.pb).opened_at;
    cr_assert_gt(ob, oa);
    cr_assert(!cb_permitted(cb_allow(f.pa)) && !cb_permitted(cb_allow(f.pb)));
    cb_circuit *fresh = tsup_circuit(f.ca, tsup_unique("fresh"), &cfg);
    cr_assert(cb_permitted(cb_allow(fresh)), "a circuit registered during the outage works");
    cr_assert(tsup_wait_until(tsup_log_count(&f.a, "running host-local") > 0 &&
                                  tsup_log_count(&f.b, "running host-local") > 0,
                              FLEET_LIVENESS_MS),
              "both hosts tell the operator they run host-local");
    cr_assert(tsup_ping(&f.a) && tsup_ping(&f.b), "both daemons answer during the outage");

    /* dynalite is in memory: it comes back empty, and the table is created again. */
    dynalite_start(&f.db, f.db.port);
    create_table(&f);
    cr_assert(tsup_wait_until(tsup_log_count(&f.a, "is reachable again") > 0 &&
                                  tsup_log_count(&f.b, "is reachable again") > 0,
                              FLEET_LIVENESS_MS),
              "both hosts find the store again");
    cr_assert(tsup_wait_until(item_is(f.db.port, f.name, "OPEN", ob), FLEET_LIVENESS_MS),
              "the latest opening never reached the table");
    cr_assert(tsup_wait_until(tsup_info(f.pa).opened_at == ob, FLEET_LIVENESS_MS),
              "A never adopted B's newer opening (A %lld, B %lld)", (long long)tsup_info(f.pa).opened_at,
              (long long)ob);
    cr_assert(tsup_info(f.pa).state == CB_OPEN && tsup_info(f.pb).state == CB_OPEN, "still OPEN everywhere");
    cr_assert_eq(tsup_info(f.pb).opened_at, ob, "B keeps its own, newer opening");
    cr_assert(item_is(f.db.port, f.name, "OPEN", ob), "nothing overwrote the newer opening");
    fleet_stop(&f);
}

/* ---- a shadow trial: marked in the table, obeyed by nobody ------------------------------------ */

/* A runs the circuit in shadow, B for real. A's trip writes the item's
 * shadow marker (and, with no item yet, Powertools' CLOSED item around
 * it): a Powertools read of the item still says CLOSED, B keeps admitting
 * calls through several syncs. */
Test(fleet_dynamodb, a_shadow_trip_is_marked_in_the_table_and_powertools_and_the_other_host_still_read_closed)
{
    struct fleet f;
    cb_config cfg = tsup_config(1, 1, 1, 600000), trial = cfg;
    trial.shadow = 1;
    dynalite_start(&f.db, 0);
    snprintf(f.uri, sizeof f.uri,
             "dynamodb://" TABLE "?region=us-east-1&endpoint=%s&sync_ms=200&timeout_ms=1000&backoff_max_ms=400",
             f.db.endpoint);
    create_table(&f);
    start_host(&f.a, "hosta", f.uri);
    start_host(&f.b, "hostb", f.uri);
    f.ca = tsup_client(&f.a);
    f.cb = tsup_client(&f.b);
    f.name = tsup_unique("trial");
    f.pa = tsup_circuit(f.ca, f.name, &trial);
    f.pb = tsup_circuit(f.cb, f.name, &cfg);

    int64_t before = (int64_t)time(NULL);
    cr_assert_eq(tsup_record_n(f.pa, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(f.pa, CB_OPEN), "the shadow circuit did not trip");
    cr_assert(cb_permitted(cb_allow(f.pa)), "a shadow circuit rejected a call");
    json_t *it = NULL;
    cr_assert(tsup_wait_until(({
                                  json_decref(it);
                                  it = ddb_pt_get(f.db.port, TABLE, f.name);
                                  const char *st = ddb_item_s(it, "cbd_shadow_state");
                                  st != NULL && strcmp(st, "OPEN") == 0;
                              }),
                              FLEET_LIVENESS_MS),
              "the trial's trip never reached the table");
    int64_t since = ddb_item_n(it, "cbd_shadow_since");
    cr_assert(since >= before && since <= (int64_t)time(NULL), "cbd_shadow_since %lld", (long long)since);
    cr_assert_not_null(strstr(ddb_item_s(it, "cbd_shadow_host"), f.a.instance), "the marker names host A");
    cr_assert_str_eq(ddb_item_s(it, "state"), "CLOSED", "Powertools reads the circuit CLOSED");
    cr_assert_eq(ddb_item_n(it, "failure_count"), 0);
    cr_assert_eq(ddb_item_n(it, "opened_at"), -1, "no opening was written");
    json_decref(it);
    for (int i = 0; i < 10; i++) { /* five syncs of B */
        cr_assert(cb_permitted(cb_allow(f.pb)), "B rejected a call after A's shadow trip");
        cr_assert_eq(tsup_info(f.pb).state, CB_CLOSED, "B obeyed a trial");
        usleep(100 * 1000);
    }
    cr_assert(item_is(f.db.port, f.name, "CLOSED", 0), "the item's real state changed");
    fleet_stop(&f);
}
