/*
 * fleet_bench.c - what sharing circuits through redis costs: how long a
 * transition takes to reach another host, and how many redis commands the
 * fleet issues while workers check circuits at a given rate.
 *
 * bench/fleet_run.sh starts a redis-server on loopback and two cbd daemons
 * on it (hosts A and B: two instances on this machine, each with its own
 * segment and its own redis connections), then runs this program as a
 * worker of both.
 *
 * 1. Propagation. One circuit (failure_threshold 1, success_threshold 1,
 *    recovery_timeout_ms 100). A worker of A records a failure; a worker of
 *    B checks the circuit in a loop until it is refused: that time is one
 *    sample of "open A -> B" - A's drain and trip, A's compare-and-write
 *    script, pub/sub, B's read, B's publication in its segment. Then
 *    whichever host wins the probe election closes it with one success,
 *    and the time until the other host allows calls again is one sample
 *    of "close prober -> other". The checking worker yields between checks
 *    (two cores run both daemons, redis and this program), so a sample is
 *    late by at most one scheduler slice.
 * 2. Store traffic. K circuits registered on both hosts; no transitions.
 *    Worker threads on both hosts run paced checks (cb_allow, and
 *    cb_record of a success) at several total rates; redis' own
 *    total_commands_processed over each window gives commands per second
 *    (minus this program's INFO). The fleet's design says it is about
 *    hosts x circuits / sync interval plus pub/sub, whatever the rate.
 *
 * Output: a summary on stdout, and with --json FILE the figures for
 * bench/report.py (distributions in microseconds, as bench_util.h writes
 * them). Figures are reported, never judged: the exit status says whether
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

struct opts {
    const char *a, *b, *json, *redis_host;
    int redis_port, iterations, circuits, window_s, sync_ms;
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
 * REJECTED-kind sentinel with *late set when SPIN_LIMIT_NS passed. */
static cb_ticket spin_until_not(cb_circuit *c, unsigned not, bool *late)
{
    int64_t end = mono_ns() + SPIN_LIMIT_NS;
    cb_ticket t;
    while (kind(t = cb_allow(c)) == not) {
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

/* One trip on A seen by B, one close by the prober seen by the other. */
static int propagate_once(cb_circuit *c[2], double *open_us, double *close_us)
{
    bool late = false;
    cb_ticket t;
    int who;
    for (int h = 0; h < 2; h++) /* both CLOSED again after the last round */
        if (kind(spin_until_not(c[h], CB_TICKET_REJECTED, &late)) != CB_TICKET_ALLOWED || late)
            return fail("%s: the circuit did not close again on both hosts", "propagation");
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
        rc = propagate_once(c, &open_us[i], &close_us[i]);
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

/* redis' total_commands_processed, or -1. */
static long long commands_processed(redisContext *rc)
{
    long long n = -1;
    redisReply *r = redisCommand(rc, "INFO stats");
    const char *at = r != NULL && r->type == REDIS_REPLY_STRING ? strstr(r->str, "total_commands_processed:") : NULL;
    if (at != NULL)
        n = atoll(at + strlen("total_commands_processed:"));
    freeReplyObject(r);
    return n;
}

struct traffic {
    double target, checks_per_s, commands_per_s;
};

static int measure_traffic(redisContext *rc, cb_circuit **c[2], const struct opts *o, double rate, struct traffic *out)
{
    struct worker w[2 * THREADS_PER_HOST];
    int nw = rate > 0 ? 2 * THREADS_PER_HOST : 0;
    atomic_store(&stop_workers, false);
    for (int i = 0; i < nw; i++) {
        w[i] = (struct worker){.c = c[i % 2], .n = o->circuits, .rate = rate / nw};
        if (pthread_create(&w[i].thread, NULL, worker, &w[i]) != 0)
            return fail("%s", "cannot start a worker thread");
    }
    sleep_us(500 * 1000); /* past the threads' start */
    uint64_t checks0 = 0, checks1 = 0;
    for (int i = 0; i < nw; i++) /* relaxed: off by a batch at most */
        checks0 += atomic_load_explicit(&w[i].checks, memory_order_relaxed);
    long long c0 = commands_processed(rc);
    int64_t t0 = mono_ns();
    sleep_us((long)o->window_s * 1000000);
    long long c1 = commands_processed(rc);
    double dt = (double)(mono_ns() - t0) / 1e9;
    for (int i = 0; i < nw; i++)
        checks1 += atomic_load_explicit(&w[i].checks, memory_order_relaxed);
    atomic_store(&stop_workers, true);
    for (int i = 0; i < nw; i++)
        pthread_join(w[i].thread, NULL);
    if (c0 < 0 || c1 < 0)
        return fail("%s", "INFO stats has no total_commands_processed");
    *out = (struct traffic){rate, (double)(checks1 - checks0) / dt, (double)(c1 - c0 - 1) / dt};
    return 0;
}

static int bench_traffic(cb_client *cl[2], const struct opts *o, struct traffic t[NRATES])
{
    cb_circuit **c[2] = {calloc((size_t)o->circuits, sizeof(cb_circuit *)),
                         calloc((size_t)o->circuits, sizeof(cb_circuit *))};
    char name[64];
    int rc = c[0] && c[1] ? 0 : fail("%s", "out of memory");
    for (int k = 0; rc == 0 && k < o->circuits; k++) {
        snprintf(name, sizeof name, "fleet-bench-traffic-%d", k);
        for (int h = 0; rc == 0 && h < 2; h++)
            if (cb_circuit_get(cl[h], name, NULL, &c[h][k]) < 0)
                rc = fail("cannot register %s", name);
    }
    redisContext *r = rc == 0 ? redisConnect(o->redis_host, o->redis_port) : NULL;
    if (rc == 0 && (r == NULL || r->err))
        rc = fail("cannot reach redis: %s", r ? r->errstr : "out of memory");
    if (rc == 0)
        sleep_us(1000 * 1000); /* registration reads settle */
    for (int i = 0; rc == 0 && i < NRATES; i++)
        rc = measure_traffic(r, c, o, rates[i], &t[i]);
    if (r != NULL)
        redisFree(r);
    free(c[0]);
    free(c[1]);
    return rc;
}

/* ---- output ------------------------------------------------------------------- */

static int report(const struct opts *o, const struct result *open_r, const struct result *close_r,
                  const struct traffic t[NRATES])
{
    printf("propagation through redis on loopback, %d rounds (microseconds):\n", o->iterations);
    printf("  open A -> B           p50 %8.0f   p99 %8.0f\n", open_r->median, open_r->p99);
    printf("  close prober -> other p50 %8.0f   p99 %8.0f\n", close_r->median, close_r->p99);
    printf("redis commands per second, 2 hosts x %d circuits, sync every %d ms (expected ~%.0f):\n", o->circuits,
           o->sync_ms, 2.0 * o->circuits * 1000.0 / o->sync_ms);
    for (int i = 0; i < NRATES; i++)
        printf("  %9.0f checks/s (target %9.0f): %8.1f commands/s\n", t[i].checks_per_s, t[i].target,
               t[i].commands_per_s);
    if (o->json == NULL)
        return 0;
    FILE *f = fopen(o->json, "w");
    if (f == NULL)
        return fail("cannot write %s", o->json);
    fprintf(f, "{\n  \"hosts\": 2, \"circuits\": %d, \"sync_ms\": %d, \"rounds\": %d,\n  \"propagation\": {\n",
            o->circuits, o->sync_ms, o->iterations);
    json_result(f, open_r, true);
    json_result(f, close_r, false);
    fprintf(f, "  },\n  \"store_traffic\": [\n");
    for (int i = 0; i < NRATES; i++)
        fprintf(f, "    {\"target_checks_per_s\": %.0f, \"checks_per_s\": %.0f, \"redis_commands_per_s\": %.1f}%s\n",
                t[i].target, t[i].checks_per_s, t[i].commands_per_s, i + 1 < NRATES ? "," : "");
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : fail("cannot write %s", o->json);
}

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct option longs[] = {
        {"a", required_argument, NULL, 'a'},          {"b", required_argument, NULL, 'b'},
        {"redis-host", required_argument, NULL, 'H'}, {"redis-port", required_argument, NULL, 'p'},
        {"iterations", required_argument, NULL, 'n'}, {"circuits", required_argument, NULL, 'k'},
        {"window-s", required_argument, NULL, 'w'},   {"sync-ms", required_argument, NULL, 's'},
        {"json", required_argument, NULL, 'j'},       {"quick", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct opts){.a = getenv("CB_INSTANCE_A"), .b = getenv("CB_INSTANCE"), .redis_host = "127.0.0.1",
                       .iterations = 300, .circuits = 100, .window_s = 5, .sync_ms = 1000};
    for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 'a': o->a = optarg; break;
        case 'b': o->b = optarg; break;
        case 'H': o->redis_host = optarg; break;
        case 'p': o->redis_port = atoi(optarg); break;
        case 'n': o->iterations = atoi(optarg); break;
        case 'k': o->circuits = atoi(optarg); break;
        case 'w': o->window_s = atoi(optarg); break;
        case 's': o->sync_ms = atoi(optarg); break;
        case 'j': o->json = optarg; break;
        case 'q': o->iterations = 10, o->circuits = 10, o->window_s = 1; break;
        default: return -1;
        }
    }
    if (o->a == NULL || o->b == NULL || o->redis_port <= 0 || o->iterations < 1 || o->circuits < 1 ||
        o->window_s < 1 || o->sync_ms < 1)
        return -1;
    return 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct result open_r = {.key = "open_a_to_b", .label = "trip on A seen by B", .unit = "us"};
    struct result close_r = {.key = "close_prober_to_other", .label = "prober's close seen by the other", .unit = "us"};
    struct traffic t[NRATES];
    cb_client *cl[2] = {NULL, NULL};
    int rc;
    if (parse(argc, argv, &o) < 0) {
        fprintf(stderr, "usage: fleet_bench --a INSTANCE --b INSTANCE --redis-port PORT [--redis-host H] "
                        "[--iterations N] [--circuits K] [--window-s S] [--sync-ms MS] [--json FILE] [--quick]\n"
                        "(instances default to $CB_INSTANCE_A and $CB_INSTANCE)\n");
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
    if (rc == 0)
        rc = report(&o, &open_r, &close_r, t);
    cb_client_close(cl[0]);
    cb_client_close(cl[1]);
    return rc;
}
