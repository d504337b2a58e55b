/*
 * fleet_bench.c - what sharing circuits through a fleet store costs: how
 * long a transition takes to reach another host, and how many requests the
 * fleet sends to the store while workers check circuits at a given rate.
 *
 * bench/fleet_run.sh starts the store on loopback (a redis-server, or
 * dynalite standing in for DynamoDB) and two cbd daemons on it (hosts A and
 * B: two instances on this machine, each with its own segment and its own
 * store connections), then runs this program as a worker of both, once per
 * store and sync interval (--store, --sync-ms: they must match the daemons').
 *
 * 1. Propagation. One circuit (failure_threshold 1, success_threshold 1,
 *    recovery_timeout_ms 100). A worker of A records a failure; a worker of
 *    B checks the circuit in a loop until it is refused: that time is one
 *    sample of "open A -> B" - A's drain and trip, A's compare-and-write,
 *    then B's discovery (redis: pub/sub, then B's read; DynamoDB: B's next
 *    periodic BatchGetItem, so up to one sync interval), B's publication in
 *    its segment. Then whichever host wins the probe election closes it
 *    with one success, and the time until the other host allows calls
 *    again is one sample of "close prober -> other". With DynamoDB each
 *    transition starts after a random pause within a sync interval, so the
 *    samples cover every phase of the other host's polling (p50 about half
 *    an interval, p99 about one) instead of locking onto it. The checking worker
 *    yields between checks (two cores run both daemons, the store and this
 *    program), so a sample is late by at most one scheduler slice.
 * 2. Store traffic. K circuits registered on both hosts (K + 1 tracked per
 *    host, with the propagation circuit); no transitions. Worker threads on
 *    both hosts run paced checks (cb_allow, and cb_record of a success) at
 *    several total rates, and the store's requests are counted over each
 *    window: redis' own total_commands_processed (minus this program's
 *    INFO), or for DynamoDB the store_requests counter (HTTP attempts) of
 *    both daemons' `stats`, read through cbctl. The design says the traffic
 *    depends on circuits / sync interval, never on the check rate: redis
 *    reads every tracked circuit each sync (hosts x (K + 1) / interval plus
 *    pub/sub), DynamoDB batches 100 keys a request (hosts x ceil((K + 1) /
 *    100) / interval). The DynamoDB store arms its next sync sync_ms after
 *    a read round ends (redis' sync timer repeats), so there a round's own
 *    duration stretches the period: the measured rate sits below the
 *    expected one by that share, visibly at short intervals.
 *    Beside the requests, both daemons' store_reads (circuits read, the
 *    fleet layer's counter) are counted too. With --budget B (the hosts'
 *    store URIs must carry read_budget=B) each host reads at most B
 *    circuits a second whatever K, and --hot H makes the workers use only
 *    the first H circuits, the busy ones the fleet layer reads every sync
 *    (docs/fleet.md, "Reads under a budget").
 *
 * Output: a Markdown summary on stdout, and with --json FILE this run's
 * figures as one JSON object for bench/report.py (distributions in
 * microseconds, as bench_util.h writes them); fleet_run.sh gathers the runs.
 * Figures are reported, never judged: the exit status says whether
 * everything ran.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "cb.h"

#define SPIN_LIMIT_NS (10 * 1000000000ll) /* a transition that has not arrived by then failed */
#define THREADS_PER_HOST 2
#define BATCH 1000 /* checks between two looks at the clock */

/* Total check rates of the traffic part (checks per second, both hosts). */
static const double rates[] = {0, 1e5, 1e6};
#define NRATES (int)(sizeof rates / sizeof rates[0])

/* The stores this program can count requests of. */
enum store { STORE_REDIS, STORE_DYNAMODB };
static const char *const store_names[] = {"redis", "dynamodb"};
static const char *const request_names[] = {"redis commands", "DynamoDB requests"};

struct opts {
    const char *a, *b, *json, *redis_host, *cbctl;
    enum store store;
    int redis_port, iterations, circuits, window_s, sync_ms, budget, hot;
};

static int fail(const char *fmt, const char *what)
{
    fprintf(stderr, "fleet_bench: ");
    fprintf(stderr, fmt, what);
    fputc('\n', stderr);
    return 1;
}

static unsigned kind(cb_ticket t) { return (unsigned)(t.word & 0xff); }

/* Checks c until its ticket is not of kind `not`; that ticket, or a
 * REJECTED-kind sentinel with *late set when SPIN_LIMIT_NS passed. An
 * allowed call is recorded as a success, as a worker does after its call:
 * the circuit has local traffic (a read budget reads it every sync). */
static cb_ticket spin_until_not(cb_circuit *c, unsigned not, bool *late)
{
    int64_t end = mono_ns() + SPIN_LIMIT_NS;
    cb_ticket t;
    while (kind(t = cb_allow(c)) == not) {
        if (not == CB_TICKET_ALLOWED)
            cb_record(c, t, CB_SUCCESS);
        if (mono_ns() > end) {
            *late = true;
            return t;
        }
        sched_yield();
    }
    return t;
}

/* A probe ticket from whichever of a, b hands one out first (*who: 0 or 1). */
static bool first_probe(cb_circuit *a, cb_circuit *b, cb_ticket *t, int *who)
{
    int64_t end = mono_ns() + SPIN_LIMIT_NS;
    for (;;) {
        for (*who = 0; *who < 2; (*who)++) {
            *t = cb_allow(*who ? b : a);
            if (kind(*t) == CB_TICKET_PROBE)
                return true;
        }
        if (mono_ns() > end)
            return false;
        sched_yield();
    }
}

/* A pause of 0 .. dephase_ms: see propagate_once. */
static void dephase(int dephase_ms)
{
    if (dephase_ms > 0)
        sleep_us(random() % (1000L * dephase_ms));
}

/* One trip on A seen by B, one close by the prober seen by the other. With
 * a store the other host polls every sync (dephase_ms = sync_ms), each
 * transition waits a random part of a sync first: a round ends when a host
 * has just read the table, so without the pause every transition would
 * start right after the other host's read and wait a whole sync. */
static int propagate_once(cb_circuit *c[2], int dephase_ms, double *open_us, double *close_us)
{
    bool late = false;
    cb_ticket t;
    int who;
    for (int h = 0; h < 2; h++) /* both CLOSED again after the last round */
        if (kind(spin_until_not(c[h], CB_TICKET_REJECTED, &late)) != CB_TICKET_ALLOWED || late)
            return fail("%s: the circuit did not close again on both hosts", "propagation");
    dephase(dephase_ms);
    t = cb_allow(c[0]);
    int64_t t0 = mono_ns();
    cb_record(c[0], t, CB_FAILURE);
    cb_ticket seen = spin_until_not(c[1], CB_TICKET_ALLOWED, &late);
    *open_us = (double)(mono_ns() - t0) / 1000.0;
    if (late)
        return fail("%s: host B never saw host A's trip", "propagation");
    if (kind(seen) == CB_TICKET_PROBE) { /* B saw the trip as a probe it won at once */
        t = seen;
        who = 1;
    } else if (!first_probe(c[0], c[1], &t, &who)) {
        return fail("%s: no host won the probe election", "propagation");
    }
    dephase(dephase_ms);
    t0 = mono_ns();
    cb_record(c[who], t, CB_SUCCESS);
    spin_until_not(c[1 - who], CB_TICKET_REJECTED, &late);
    *close_us = (double)(mono_ns() - t0) / 1000.0;
    return late ? fail("%s: the prober's close never reached the other host", "propagation") : 0;
}

static int bench_propagation(cb_client *cl[2], const struct opts *o, struct result *open_r, struct result *close_r)
{
    cb_config cfg;
    cb_circuit *c[2];
    cb_config_init(&cfg);
    cfg.failure_threshold = cfg.success_threshold = cfg.half_open_max_probes = 1;
    cfg.recovery_timeout_ms = 100;
    cfg.probe_lease_ms = 2000;
    for (int h = 0; h < 2; h++)
        if (cb_circuit_get(cl[h], "fleet-bench-propagation", &cfg, &c[h]) < 0)
            return fail("cannot register the propagation circuit on host %s", h ? "B" : "A");
    sleep_us(300 * 1000); /* B's registration read lands before the first trip */
    double *open_us = calloc((size_t)o->iterations, sizeof *open_us);
    double *close_us = calloc((size_t)o->iterations, sizeof *close_us);
    int rc = open_us != NULL && close_us != NULL ? 0 : fail("%s", "out of memory");
    for (int i = 0; rc == 0 && i < o->iterations; i++)
        rc = propagate_once(c, o->store == STORE_DYNAMODB ? o->sync_ms : 0, &open_us[i], &close_us[i]);
    if (rc == 0) {
        summarise(open_r, open_us, o->iterations);
        summarise(close_r, close_us, o->iterations);
    }
    free(open_us);
    free(close_us);
    return rc;
}

/* ---- store traffic versus the check rate ------------------------------------- */

struct worker {
    pthread_t thread;
    cb_circuit **c;
    int n;
    double rate; /* checks per second for this thread */
    _Atomic uint64_t checks;
};

static _Atomic bool stop_workers;

/* Paced checks: a batch, then sleep until the batch's time has come. */
static void *worker(void *arg)
{
    struct worker *w = arg;
    int64_t next = mono_ns(), step = (int64_t)(BATCH * 1e9 / w->rate);
    for (unsigned i = 0; !atomic_load_explicit(&stop_workers, memory_order_relaxed);) {
        for (int j = 0; j < BATCH; j++, i++) {
            cb_circuit *c = w->c[i % (unsigned)w->n];
            cb_record(c, cb_allow(c), CB_SUCCESS);
        }
        /* Relaxed: a counter the main thread samples; nothing else hangs on it. */
        atomic_store_explicit(&w->checks, atomic_load_explicit(&w->checks, memory_order_relaxed) + BATCH,
                              memory_order_relaxed);
        next += step;
        int64_t ahead = next - mono_ns();
        if (ahead > 0)
            sleep_us(ahead / 1000);
    }
    return NULL;
}

/* The number after "key" in text (redis' INFO, cbd's stats as JSON), or -1. */
static long long counter_in(const char *text, const char *key)
{
    const char *at = text != NULL ? strstr(text, key) : NULL;
    return at != NULL ? atoll(at + strlen(key)) : -1;
}

/* A daemon's counter key ("\"store_requests\":"), from `cbctl --instance I
 * --json stats`; -1 if cbctl fails or the store does not count it. */
static long long daemon_counter(const char *cbctl, const char *instance, const char *key)
{
    char cmd[1024], out[16384];
    snprintf(cmd, sizeof cmd, "'%s' --instance '%s' --json stats", cbctl, instance);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    return pclose(p) == 0 ? counter_in(out, key) : -1;
}

/* Circuits both daemons' fleet layers have read so far, or -1. */
static long long fleet_reads(const struct opts *o)
{
    long long a = daemon_counter(o->cbctl, o->a, "\"store_reads\":"),
              b = daemon_counter(o->cbctl, o->b, "\"store_reads\":");
    return a < 0 || b < 0 ? -1 : a + b;
}

/* Where the fleet's store requests are counted. */
struct counter {
    enum store store;
    redisContext *redis;
    long long infos; /* INFO commands sent so far: redis counts them as commands */
    const char *cbctl, *instance[2];
};

/* Requests the store has had so far, or -1: redis' commands minus this
 * program's earlier INFOs (this one is counted only after it ran), or the
 * sum of both daemons' store_requests. */
static long long store_requests(struct counter *k)
{
    if (k->store == STORE_DYNAMODB) {
        long long a = daemon_counter(k->cbctl, k->instance[0], "\"store_requests\":"),
                  b = daemon_counter(k->cbctl, k->instance[1], "\"store_requests\":");
        return a < 0 || b < 0 ? -1 : a + b;
    }
    redisReply *r = redisCommand(k->redis, "INFO stats");
    long long n = counter_in(r != NULL && r->type == REDIS_REPLY_STRING ? r->str : NULL, "total_commands_processed:");
    freeReplyObject(r);
    return n < 0 ? -1 : n - k->infos++;
}

struct traffic {
    double target, checks_per_s, requests_per_s, reads_per_s;
};

static int measure_traffic(struct counter *k, cb_circuit **c[2], const struct opts *o, double rate,
                           struct traffic *out)
{
    struct worker w[2 * THREADS_PER_HOST];
    int nw = rate > 0 ? 2 * THREADS_PER_HOST : 0;
    atomic_store(&stop_workers, false);
    for (int i = 0; i < nw; i++) {
        w[i] = (struct worker){.c = c[i % 2], .n = o->hot, .rate = rate / nw};
        if (pthread_create(&w[i].thread, NULL, worker, &w[i]) != 0)
            return fail("%s", "cannot start a worker thread");
    }
    sleep_us(500 * 1000); /* past the threads' start */
    uint64_t checks0 = 0, checks1 = 0;
    for (int i = 0; i < nw; i++) /* relaxed: off by a batch at most */
        checks0 += atomic_load_explicit(&w[i].checks, memory_order_relaxed);
    long long r0 = store_requests(k), f0 = fleet_reads(o);
    int64_t t0 = mono_ns();
    sleep_us((long)o->window_s * 1000000);
    long long r1 = store_requests(k), f1 = fleet_reads(o);
    double dt = (double)(mono_ns() - t0) / 1e9;
    for (int i = 0; i < nw; i++)
        checks1 += atomic_load_explicit(&w[i].checks, memory_order_relaxed);
    atomic_store(&stop_workers, true);
    for (int i = 0; i < nw; i++)
        pthread_join(w[i].thread, NULL);
    if (r0 < 0 || r1 < 0)
        return fail("cannot count the store's requests (%s)", k->store == STORE_REDIS
                                                                  ? "INFO stats has no total_commands_processed"
                                                                  : "cbctl stats has no store_requests");
    *out = (struct traffic){rate, (double)(checks1 - checks0) / dt, (double)(r1 - r0) / dt,
                            f0 < 0 || f1 < 0 ? -1 : (double)(f1 - f0) / dt};
    return 0;
}

/* The counter of o's store; redis needs its own connection. */
static int counter_open(struct counter *k, const struct opts *o)
{
    *k = (struct counter){.store = o->store, .cbctl = o->cbctl, .instance = {o->a, o->b}};
    if (o->store == STORE_DYNAMODB)
        return 0;
    k->redis = redisConnect(o->redis_host, o->redis_port);
    if (k->redis == NULL || k->redis->err)
        return fail("cannot reach redis: %s", k->redis ? k->redis->errstr : "out of memory");
    return 0;
}

static int bench_traffic(cb_client *cl[2], const struct opts *o, struct traffic t[NRATES])
{
    cb_circuit **c[2] = {calloc((size_t)o->circuits, sizeof(cb_circuit *)),
                         calloc((size_t)o->circuits, sizeof(cb_circuit *))};
    char name[64];
    struct counter k = {0};
    int rc = c[0] && c[1] ? 0 : fail("%s", "out of memory");
    for (int i = 0; rc == 0 && i < o->circuits; i++) {
        snprintf(name, sizeof name, "fleet-bench-traffic-%d", i);
        for (int h = 0; rc == 0 && h < 2; h++)
            if (cb_circuit_get(cl[h], name, NULL, &c[h][i]) < 0)
                rc = fail("cannot register %s", name);
    }
    if (rc == 0)
        rc = counter_open(&k, o);
    /* registration reads settle (under a budget they take K / B seconds), and a sync or two passes */
    for (int64_t end = mono_ns() + 600 * 1000000000ll; rc == 0 && fleet_reads(o) < 2ll * o->circuits;) {
        if (mono_ns() > end)
            rc = fail("%s: the hosts did not read every circuit within 10 minutes", "traffic");
        sleep_us(500 * 1000);
    }
    if (rc == 0)
        sleep_us(1000L * (1000 + 2 * o->sync_ms));
    for (int i = 0; rc == 0 && i < NRATES; i++)
        rc = measure_traffic(&k, c, o, rates[i], &t[i]);
    if (k.redis != NULL)
        redisFree(k.redis);
    free(c[0]);
    free(c[1]);
    return rc;
}

/* ---- output ------------------------------------------------------------------- */

/* Circuit reads a second the design expects with no transitions: every
 * tracked circuit (the traffic ones and the propagation one) read once a
 * sync by each host; under a budget B, per period of S the U busy ones
 * (the hot ones and the propagation one) and q = (B*S - U) - floor((B*S -
 * U) / 4) swept (docs/fleet.md, "Reads under a budget"). */
static double expected_reads(const struct opts *o)
{
    double all = 2.0 * (o->circuits + 1) * 1000.0 / o->sync_ms;
    long long per = (long long)o->budget * o->sync_ms / 1000, busy = o->hot + 1, left = per - busy;
    double budgeted = 2.0 * (double)(busy + (left > 0 ? left - left / 4 : 0)) * 1000.0 / o->sync_ms;
    return o->budget > 0 && budgeted < all ? budgeted : all;
}

/* Requests for those reads: one HGETALL each from redis, 100 a
 * BatchGetItem from DynamoDB (at best, without a budget's partial ones). */
static double expected_requests(const struct opts *o)
{
    if (o->store == STORE_REDIS)
        return expected_reads(o);
    if (o->budget > 0)
        return expected_reads(o) / 100.0;
    return 2.0 * ((o->circuits + 1 + 99) / 100) * 1000.0 / o->sync_ms;
}

/* The run as Markdown on stdout. */
static void print_markdown(const struct opts *o, const struct result *r[2], const struct traffic t[NRATES])
{
    printf("\n### Fleet through %s on loopback: 2 hosts, %d circuits, sync every %d ms, ", store_names[o->store],
           o->circuits + 1, o->sync_ms);
    if (o->budget > 0)
        printf("read budget %d/s per host, workers on %d circuits\n\n", o->budget, o->hot);
    else
        printf("no read budget\n\n");
    printf("| propagation (%d rounds) | p50 ms | p99 ms |\n|---|---:|---:|\n", o->iterations);
    for (int i = 0; i < 2; i++)
        printf("| %s | %.2f | %.2f |\n", r[i]->label, r[i]->median / 1000.0, r[i]->p99 / 1000.0);
    printf("\n| target checks/s | checks/s | %s/s | expected | circuit reads/s | expected |\n"
           "|---:|---:|---:|---:|---:|---:|\n", request_names[o->store]);
    for (int i = 0; i < NRATES; i++)
        printf("| %.0f | %.0f | %.1f | %s%.1f | %.1f | %s%.1f |\n", t[i].target, t[i].checks_per_s,
               t[i].requests_per_s, o->budget > 0 ? "<= " : "", expected_requests(o), t[i].reads_per_s,
               o->budget > 0 ? "<= " : "", expected_reads(o));
    printf("\nexpected: 2 hosts x %s / %d ms, %d circuits tracked per host (%d + the propagation one);\n"
           "%s\n\n",
           o->store == STORE_REDIS ? "circuits" : "ceil(circuits / 100)", o->sync_ms, o->circuits + 1,
           o->circuits,
           o->store == STORE_REDIS ? "plus pub/sub on transitions (none here)"
                                   : "the next sync is armed when a read round ends: its duration stretches the "
                                     "period");
}

/* The run as one JSON object (fleet_run.sh puts the runs in one array). */
static int write_json(const struct opts *o, const struct result *r[2], const struct traffic t[NRATES])
{
    FILE *f = fopen(o->json, "w");
    if (f == NULL)
        return fail("cannot write %s", o->json);
    fprintf(f,
            "{\n  \"store\": \"%s\", \"hosts\": 2, \"circuits\": %d, \"sync_ms\": %d, \"rounds\": %d,\n"
            "  \"read_budget\": %d, \"hot_circuits\": %d,\n"
            "  \"requests\": \"%s\", \"expected_requests_per_s\": %.1f, \"expected_reads_per_s\": %.1f,\n"
            "  \"propagation\": {\n",
            store_names[o->store], o->circuits + 1, o->sync_ms, o->iterations, o->budget, o->hot,
            request_names[o->store], expected_requests(o), expected_reads(o));
    json_result(f, r[0], true);
    json_result(f, r[1], false);
    fprintf(f, "  },\n  \"store_traffic\": [\n");
    for (int i = 0; i < NRATES; i++)
        fprintf(f, "    {\"target_checks_per_s\": %.0f, \"checks_per_s\": %.0f, \"requests_per_s\": %.1f, "
                   "\"reads_per_s\": %.1f}%s\n",
                t[i].target, t[i].checks_per_s, t[i].requests_per_s, t[i].reads_per_s, i + 1 < NRATES ? "," : "");
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : fail("cannot write %s", o->json);
}

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"a", required_argument, NULL, 'a'},          {"b", required_argument, NULL, 'b'},
        {"store", required_argument, NULL, 'S'},      {"cbctl", required_argument, NULL, 'c'},
        {"redis-host", required_argument, NULL, 'H'}, {"redis-port", required_argument, NULL, 'p'},
        {"iterations", required_argument, NULL, 'n'}, {"circuits", required_argument, NULL, 'k'},
        {"window-s", required_argument, NULL, 'w'},   {"sync-ms", required_argument, NULL, 's'},
        {"json", required_argument, NULL, 'j'},       {"quick", no_argument, NULL, 'q'},
        {"budget", required_argument, NULL, 'B'},     {"hot", required_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct opts){.a = getenv("CB_INSTANCE_A"), .b = getenv("CB_INSTANCE"), .redis_host = "127.0.0.1",
                       .cbctl = "cbctl", .iterations = 300, .circuits = 100, .window_s = 5, .sync_ms = 1000};
    for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 'a': o->a = optarg; break;
        case 'b': o->b = optarg; break;
        case 'S':
            if (strcmp(optarg, "redis") != 0 && strcmp(optarg, "dynamodb") != 0)
                return -1;
            o->store = strcmp(optarg, "redis") == 0 ? STORE_REDIS : STORE_DYNAMODB;
            break;
        case 'c': o->cbctl = optarg; break;
        case 'H': o->redis_host = optarg; break;
        case 'p': o->redis_port = atoi(optarg); break;
        case 'n': o->iterations = atoi(optarg); break;
        case 'k': o->circuits = atoi(optarg); break;
        case 'w': o->window_s = atoi(optarg); break;
        case 's': o->sync_ms = atoi(optarg); break;
        case 'j': o->json = optarg; break;
        case 'B': o->budget = atoi(optarg); break;
        case 'h': o->hot = atoi(optarg); break;
        case 'q': o->iterations = 10, o->circuits = 10, o->window_s = 1; break; /* options after it win */
        default: return -1;
        }
    }
    if (o->hot <= 0 || o->hot > o->circuits)
        o->hot = o->circuits;
    if (o->a == NULL || o->b == NULL || (o->store == STORE_REDIS && o->redis_port <= 0) || o->iterations < 1 ||
        o->circuits < 1 || o->window_s < 1 || o->sync_ms < 1 || o->budget < 0)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct result open_r = {.key = "open_a_to_b", .label = "trip on A seen by B", .unit = "us"};
    struct result close_r = {.key = "close_prober_to_other", .label = "prober's close seen by the other", .unit = "us"};
    const struct result *r[2] = {&open_r, &close_r};
    struct traffic t[NRATES];
    cb_client *cl[2] = {NULL, NULL};
    int rc;
    if (parse(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: fleet_bench [--store redis|dynamodb] --a INSTANCE --b INSTANCE --sync-ms MS\n"
                        "       [--redis-port PORT [--redis-host H]] [--cbctl PATH] [--iterations N]\n"
                        "       [--circuits K] [--window-s S] [--json FILE] [--quick]\n"
                        "       [--budget B (the URIs' read_budget) [--hot H (circuits the workers use)]]\n"
                        "(instances default to $CB_INSTANCE_A and $CB_INSTANCE; redis needs --redis-port;\n"
                        "dynamodb counts requests through cbctl's stats, default cbctl on $PATH)\n");
        return 2;
    }
    if ((rc = cb_client_open(&cl[0], o.a)) < 0 || (rc = cb_client_open(&cl[1], o.b)) < 0) {
        fprintf(stderr, "fleet_bench: cannot open a client of %s: %s\n", cl[0] ? o.b : o.a, cb_strerror(rc));
        cb_client_close(cl[0]);
        return 1;
    }
    rc = bench_propagation(cl, &o, &open_r, &close_r);
    if (rc == 0)
        rc = bench_traffic(cl, &o, t);
    if (rc == 0) {
        print_markdown(&o, r, t);
        rc = o.json != NULL ? write_json(&o, r, t) : 0;
    }
    cb_client_close(cl[0]);
    cb_client_close(cl[1]);
    return rc;
}
