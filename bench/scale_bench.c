/*
 * scale_bench.c - one host at scale: N circuits (100,000 by default) and T
 * worker threads (1,024), against one cbd started by bench/with_cbd.sh
 * with room for them (--capacity, --lanes: bench/run.sh passes both, and
 * the same numbers to this program).
 *
 * In order, each figure measured once in this run:
 *  1. memory: the state and lanes regions' sizes (/dev/shm), per circuit of
 *     capacity and per lane (a lane is a worker thread's), and the daemon's
 *     private memory (RssAnon) grown by the registrations, per circuit;
 *  2. registration: N circuits through cb_circuit_get from one thread
 *     (each a round trip on the control socket), circuits per second;
 *  3. idle CPU of the daemon (utime + stime from /proc) over a window:
 *     before the circuits, with N circuits, and with N circuits and T
 *     threads each holding a lane - the target is under 1% of one core, so
 *     no per-tick work may grow with the circuits or the lanes' count;
 *  4. drain throughput: while all T threads hold lanes, H of them (1 by
 *     default: on 2 cores more spinning threads only starve the daemon)
 *     record successes as fast as they can for a window; the daemon's
 *     events_drained per second, against the events recorded and the
 *     lanes' drops;
 *  5. cbctl list (every circuit) and show (one) wall times;
 *  6. history under a storm: a reader follows the history ring
 *     (cb_next_transition) while threads trip S circuits at once
 *     (failure_threshold 1): transitions made, read, and lost to overruns;
 *  7. cost vs circuits (measured between 2 and 3, before any thread runs):
 *     one thread calls cb_allow, then cb_record, on K circuits visited in a
 *     scattered order, for K = 1, 10, 100 ... and all of them: ns per call (median
 *     of 7 rounds; records in batches of 1,024 with a pause for the drain),
 *     against the floor at each K - the two dependent loads cb_allow makes
 *     (handle -> state word pointer -> word) without its compare - so the
 *     cache misses a bigger working set costs are the floor's too.
 *
 * Output: Markdown on stdout; with --json FILE the figures as one object.
 * Figures are reported, never judged: the exit status says whether
 * everything ran.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench_util.h"
#include "cb.h"

struct opts {
    const char *instance, *cbctl, *json;
    int circuits, threads, capacity, lanes, window_s, storm, hammers;
};

static int fail(const char *fmt, const char *what)
{
    fprintf(stderr, "scale_bench: ");
    fprintf(stderr, fmt, what);
    fputc('\n', stderr);
    return 1;
}

/* ---- the daemon from outside ------------------------------------------------ */

/* The pid of the cbd running instance (its command line has "--instance
 * INSTANCE"), or -1. */
static pid_t daemon_pid(const char *instance)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = -1;
    while (d != NULL && found < 0 && (e = readdir(d)) != NULL) {
        char path[300], cmd[4096];
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(cmd, 1, sizeof cmd - 1, f);
        fclose(f);
        cmd[n] = '\0';
        for (size_t i = 0; i + 1 < n; i += strlen(cmd + i) + 1)
            if (strcmp(cmd + i, "--instance") == 0 && strcmp(cmd + i + strlen(cmd + i) + 1, instance) == 0 &&
                strstr(cmd, "cbd") != NULL)
                found = atoi(e->d_name);
    }
    if (d != NULL)
        closedir(d);
    return found;
}

/* A kB line of /proc/PID/status ("RssAnon:"), in bytes, or -1. */
static long long status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    long long v = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, key, strlen(key)) == 0)
            v = atoll(line + strlen(key)) * 1024;
    if (f != NULL)
        fclose(f);
    return v;
}

static long long shm_bytes(const char *instance, const char *suffix)
{
    char path[256];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/cbd.%s%s", instance, suffix);
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* The daemon's share of one core over window_s seconds, in percent. */
static double idle_cpu_pct(pid_t pid, int window_s)
{
    double c0 = proc_cpu_s(pid);
    int64_t t0 = mono_ns();
    sleep_us((long)window_s * 1000000);
    double c1 = proc_cpu_s(pid);
    return 100.0 * (c1 - c0) / ((double)(mono_ns() - t0) / 1e9);
}

/* A counter of `cbctl --json stats`, or -1. */
static long long daemon_stat(const struct opts *o, const char *name)
{
    char cmd[1024], out[16384], key[80];
    snprintf(cmd, sizeof cmd, "'%s' --instance '%s' --json stats", o->cbctl, o->instance);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    if (pclose(p) != 0)
        return -1;
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *at = strstr(out, key);
    return at != NULL ? atoll(at + strlen(key)) : -1;
}

/* Wall seconds of `cbctl --instance I ARGS >/dev/null`, or -1 if it failed. */
static double cbctl_s(const struct opts *o, const char *args)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' --instance '%s' %s >/dev/null", o->cbctl, o->instance, args);
    int64_t t0 = mono_ns();
    int rc = system(cmd);
    return rc == 0 ? (double)(mono_ns() - t0) / 1e9 : -1;
}

/* ---- worker threads ------------------------------------------------------------ */

enum phase { PARK, HOLD, HAMMER, STOP };

struct pool {
    cb_circuit **c;
    int n;
    _Atomic int phase;
    _Atomic int holding; /* threads that own a lane */
    int hammers;         /* threads (the first ones to start) that record in the HAMMER phase */
    _Atomic uint64_t recorded;
};

/* One worker thread: takes a lane with one record, then waits; hammers
 * (allow + record a success, on circuits in turn) while the phase says so. */
static void *worker(void *arg)
{
    struct pool *p = arg;
    unsigned i = (unsigned)(uintptr_t)pthread_self() * 2654435761u;
    cb_circuit *c = p->c[i % (unsigned)p->n];
    cb_record(c, cb_allow(c), CB_SUCCESS);
    bool hammer = atomic_fetch_add(&p->holding, 1) < p->hammers;
    int ph;
    while ((ph = atomic_load(&p->phase)) != STOP) {
        if (ph != HAMMER || !hammer) {
            sleep_us(20 * 1000);
            continue;
        }
        uint64_t n = 0;
        for (; n < 4096; n++, i++) {
            c = p->c[i % (unsigned)p->n];
            cb_record(c, cb_allow(c), CB_SUCCESS);
        }
        atomic_fetch_add_explicit(&p->recorded, n, memory_order_relaxed);
    }
    return NULL;
}

/* ---- the history storm ----------------------------------------------------------- */

struct storm {
    cb_client *watch;
    _Atomic bool done;
    uint64_t read, overruns;
};

static void *history_reader(void *arg)
{
    struct storm *s = arg;
    cb_transition t;
    for (;;) {
        int rc = cb_next_transition(s->watch, &t);
        if (rc == 1)
            s->read++;
        else if (rc == -EOVERFLOW)
            s->overruns++;
        else if (atomic_load(&s->done))
            break;
        else
            sleep_us(100);
    }
    return NULL;
}

struct tripper {
    pthread_t thread;
    cb_circuit **c;
    int from, to;
};

static void *trip_range(void *arg)
{
    struct tripper *t = arg;
    for (int i = t->from; i < t->to; i++)
        cb_record(t->c[i], cb_allow(t->c[i]), CB_FAILURE);
    return NULL;
}

/* ---- cost vs circuits -------------------------------------------------------------- */

#define SPREAD_MAX 9         /* K = 1, 10, ... 10^7 and N at most */
#define SPREAD_ROUNDS 7
#define SPREAD_CALLS (1 << 20) /* per round, cb_allow and the floor */
#define SPREAD_BATCH 1024      /* records between two drains (a lane holds 4,096) */

struct spread {
    int points;
    int k[SPREAD_MAX];
    double floor_ns[SPREAD_MAX], allow_ns[SPREAD_MAX], record_ns[SPREAD_MAX];
};


static volatile uint64_t sink;

/* The handles of c[0..k) in a scattered order (a multiplicative step mod k
 * visits far-apart circuits in turn), SPREAD_CALLS long. */
static void scatter(cb_circuit **c, int k, cb_circuit **order)
{
    uint64_t step = 2654435761u % (uint64_t)k;
    if (step == 0)
        step = 1;
    for (uint64_t i = 0, at = 0; i < SPREAD_CALLS; i++, at = (at + step) % (uint64_t)k)
        order[i] = c[at];
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* The floor: cb_allow's two dependent loads, through the handle. */
static double spread_floor_ns(cb_circuit *const *order)
{
    uint64_t acc = 0;
    int64_t t0 = mono_ns();
    for (int i = 0; i < SPREAD_CALLS; i++) {
        const struct cb__circuit_head *h = (const struct cb__circuit_head *)order[i];
        acc += __atomic_load_n(__atomic_load_n(&h->state_word, __ATOMIC_ACQUIRE), __ATOMIC_ACQUIRE);
    }
    sink += acc;
    return (double)(mono_ns() - t0) / SPREAD_CALLS;
}

static double spread_allow_ns(cb_circuit *const *order)
{
    uint64_t acc = 0;
    int64_t t0 = mono_ns();
    for (int i = 0; i < SPREAD_CALLS; i++)
        acc += cb_allow(order[i]).word;
    sink += acc;
    return (double)(mono_ns() - t0) / SPREAD_CALLS;
}

/* Records in batches the daemon drains in between (its tick is 10 ms):
 * only the batches are timed. */
static double spread_record_ns(cb_circuit *const *order)
{
    cb_ticket t[SPREAD_BATCH];
    int64_t spent = 0;
    int calls = 0;
    for (int b = 0; b + SPREAD_BATCH <= SPREAD_CALLS / 16; b += SPREAD_BATCH) {
        for (int i = 0; i < SPREAD_BATCH; i++)
            t[i] = cb_allow(order[b + i]);
        int64_t t0 = mono_ns();
        for (int i = 0; i < SPREAD_BATCH; i++)
            cb_record(order[b + i], t[i], CB_SUCCESS);
        spent += mono_ns() - t0;
        calls += SPREAD_BATCH;
        sleep_us(12 * 1000);
    }
    return (double)spent / calls;
}

static int measure_spread(cb_circuit **c, int n, struct spread *sp)
{
    cb_circuit **order = malloc(SPREAD_CALLS * sizeof *order);
    if (order == NULL)
        return fail("%s", "out of memory");
    sp->points = 0;
    for (int k = 1; k <= n && sp->points < SPREAD_MAX; k = k < n && k * 10 > n ? n : k * 10) {
        double fl[SPREAD_ROUNDS], al[SPREAD_ROUNDS], rec[SPREAD_ROUNDS];
        scatter(c, k, order);
        for (int r = 0; r < SPREAD_ROUNDS; r++) {
            spread_floor_ns(order); /* the CPU back at speed after the records' pauses */
            fl[r] = spread_floor_ns(order);
            al[r] = spread_allow_ns(order);
            rec[r] = spread_record_ns(order);
        }
        sp->k[sp->points] = k;
        sp->floor_ns[sp->points] = median_of(fl, SPREAD_ROUNDS);
        sp->allow_ns[sp->points] = median_of(al, SPREAD_ROUNDS);
        sp->record_ns[sp->points] = median_of(rec, SPREAD_ROUNDS);
        sp->points++;
    }
    free(order);
    return 0;
}

/* ---- the run ----------------------------------------------------------------------- */

struct figures {
    long long state_bytes, lanes_bytes, anon_before, anon_after;
    struct spread spread;
    double reg_s, idle_empty, idle_circuits, idle_threads, drain_per_s, record_per_s, list_s, show_s;
    long long drops, storm_transitions;
    uint64_t storm_read, storm_overruns;
    int history_capacity;
};

static int run(const struct opts *o, struct figures *f)
{
    cb_client *cl = NULL, *watch = NULL;
    cb_config cfg;
    char name[64];
    pid_t pid = daemon_pid(o->instance);
    if (pid < 0)
        return fail("no cbd with --instance %s running", o->instance);
    int rc = cb_client_open(&cl, o->instance);
    if (rc < 0)
        return fail("cannot open a client: %s", cb_strerror(rc));
    cb_circuit **c = calloc((size_t)o->circuits, sizeof *c);
    if (c == NULL)
        return fail("%s", "out of memory");
    f->state_bytes = shm_bytes(o->instance, "");
    f->lanes_bytes = shm_bytes(o->instance, ".lanes");
    f->idle_empty = idle_cpu_pct(pid, o->window_s);
    f->anon_before = status_kb(pid, "RssAnon:");

    cb_config_init(&cfg);
    cfg.failure_threshold = 1; /* the storm trips with one failure each */
    cfg.recovery_timeout_ms = 600000;
    int64_t t0 = mono_ns();
    for (int i = 0; i < o->circuits; i++) {
        snprintf(name, sizeof name, "scale-%06d", i);
        if ((rc = cb_circuit_get(cl, name, &cfg, &c[i])) < 0) {
            fprintf(stderr, "scale_bench: registering %s: %s\n", name, cb_strerror(rc));
            return 1;
        }
    }
    f->reg_s = (double)(mono_ns() - t0) / 1e9;
    sleep_us(500 * 1000);
    f->anon_after = status_kb(pid, "RssAnon:");
    f->idle_circuits = idle_cpu_pct(pid, o->window_s);
    if ((rc = measure_spread(c + o->storm, o->circuits - o->storm, &f->spread)) != 0)
        return rc; /* the storm's circuits stay CLOSED and untouched */

    /* threads: a lane each, then idle */
    int storm = o->storm < o->circuits ? o->storm : o->circuits;
    struct pool p = {.c = c + storm, .n = o->circuits - storm, .hammers = o->hammers}; /* storm's stay untouched */
    pthread_t *th = calloc((size_t)o->threads, sizeof *th);
    for (int i = 0; i < o->threads; i++)
        if (pthread_create(&th[i], NULL, worker, &p) != 0)
            return fail("%s", "cannot start a worker thread");
    while (atomic_load(&p.holding) < o->threads)
        sleep_us(10 * 1000);
    sleep_us(500 * 1000);
    f->idle_threads = idle_cpu_pct(pid, o->window_s);

    /* drain throughput */
    long long d0 = daemon_stat(o, "events_drained"), x0 = daemon_stat(o, "lane_drops");
    uint64_t r0 = atomic_load(&p.recorded);
    t0 = mono_ns();
    atomic_store(&p.phase, HAMMER);
    sleep_us((long)o->window_s * 1000000);
    atomic_store(&p.phase, HOLD);
    double dt = (double)(mono_ns() - t0) / 1e9;
    uint64_t r1 = atomic_load(&p.recorded);
    sleep_us(200 * 1000); /* the last events drained */
    long long d1 = daemon_stat(o, "events_drained"), x1 = daemon_stat(o, "lane_drops");
    f->drain_per_s = d0 < 0 || d1 < 0 ? -1 : (double)(d1 - d0) / dt;
    f->record_per_s = (double)(r1 - r0) / dt;
    f->drops = x0 < 0 || x1 < 0 ? -1 : x1 - x0;

    f->list_s = cbctl_s(o, "list");
    snprintf(name, sizeof name, "show scale-%06d", o->circuits / 2);
    f->show_s = cbctl_s(o, name);

    /* the storm: storm circuits trip at once from 8 threads, a reader follows */
    struct storm s = {0};
    if ((rc = cb_client_open(&watch, o->instance)) < 0)
        return fail("cannot open the history reader: %s", cb_strerror(rc));
    s.watch = watch;
    long long tr0 = daemon_stat(o, "transitions");
    pthread_t reader;
    pthread_create(&reader, NULL, history_reader, &s);
    struct tripper trip[8];
    for (int i = 0; i < 8; i++) {
        trip[i] = (struct tripper){.c = c, .from = storm * i / 8, .to = storm * (i + 1) / 8};
        pthread_create(&trip[i].thread, NULL, trip_range, &trip[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(trip[i].thread, NULL);
    sleep_us(1000 * 1000);
    atomic_store(&s.done, true);
    pthread_join(reader, NULL);
    long long tr1 = daemon_stat(o, "transitions");
    f->storm_transitions = tr0 < 0 || tr1 < 0 ? -1 : tr1 - tr0;
    f->storm_read = s.read;
    f->storm_overruns = s.overruns;

    atomic_store(&p.phase, STOP);
    for (int i = 0; i < o->threads; i++)
        pthread_join(th[i], NULL);
    free(th);
    cb_client_close(watch);
    cb_client_close(cl);
    free(c);
    return 0;
}

static void print_markdown(const struct opts *o, const struct figures *f)
{
    printf("\n### One host at scale: %d circuits, %d worker threads (capacity %d, %d lanes)\n\n", o->circuits,
           o->threads, o->capacity, o->lanes);
    printf("| figure | value |\n|---|---:|\n");
    printf("| state region | %.1f MiB, %.0f bytes per circuit of capacity |\n", f->state_bytes / 1048576.0,
           (double)f->state_bytes / o->capacity);
    printf("| lanes region | %.1f MiB, %.0f bytes per lane (worker thread) |\n", f->lanes_bytes / 1048576.0,
           (double)f->lanes_bytes / o->lanes);
    printf("| daemon private memory grown by the registrations | %.1f MiB, %.0f bytes per circuit |\n",
           (f->anon_after - f->anon_before) / 1048576.0, (double)(f->anon_after - f->anon_before) / o->circuits);
    printf("| registration, one client thread | %.0f circuits/s (%.2f s for %d) |\n", o->circuits / f->reg_s,
           f->reg_s, o->circuits);
    printf("| daemon CPU idle, no circuit | %.2f%% of a core |\n", f->idle_empty);
    printf("| daemon CPU idle, %d circuits | %.2f%% of a core (%.2fx the empty daemon) |\n", o->circuits,
           f->idle_circuits, f->idle_empty > 0 ? f->idle_circuits / f->idle_empty : 0);
    printf("| daemon CPU idle, %d circuits, %d threads holding lanes | %.2f%% of a core |\n", o->circuits, o->threads,
           f->idle_threads);
    printf("| drain throughput, %d of %d threads recording | %.0f events/s drained, %.0f recorded/s, %lld dropped |\n",
           o->hammers, o->threads, f->drain_per_s, f->record_per_s, f->drops);
    printf("| cbctl list (%d circuits) | %.3f s |\n", o->circuits, f->list_s);
    printf("| cbctl show | %.4f s |\n", f->show_s);
    printf("| history storm: %d trips at once | %lld transitions, %llu read by a follower, %llu overruns |\n",
           o->storm, f->storm_transitions, (unsigned long long)f->storm_read,
           (unsigned long long)f->storm_overruns);
    printf("\n#### Cost vs circuits: one thread calling K circuits in a scattered order (ns per call, median of %d)\n\n",
           SPREAD_ROUNDS);
    printf("| K circuits | floor (2 dependent loads) | cb_allow CLOSED | vs floor | cb_record | vs floor |\n");
    printf("|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < f->spread.points; i++)
        printf("| %d | %.2f | %.2f | %.2fx | %.2f | %.2fx |\n", f->spread.k[i], f->spread.floor_ns[i],
               f->spread.allow_ns[i], f->spread.allow_ns[i] / f->spread.floor_ns[i], f->spread.record_ns[i],
               f->spread.record_ns[i] / f->spread.floor_ns[i]);
    printf("\n");
}

static int write_json(const struct opts *o, const struct figures *f)
{
    FILE *j = fopen(o->json, "w");
    if (j == NULL)
        return fail("cannot write %s", o->json);
    char spread[SPREAD_MAX * 128] = "";
    for (int i = 0, at = 0; i < f->spread.points; i++)
        at += snprintf(spread + at, sizeof spread - (size_t)at,
                       "%s{\"circuits\": %d, \"floor_ns\": %.3f, \"allow_ns\": %.3f, \"record_ns\": %.3f}",
                       i ? ", " : "", f->spread.k[i], f->spread.floor_ns[i], f->spread.allow_ns[i],
                       f->spread.record_ns[i]);
    fprintf(j,
            "{\"circuits\": %d, \"threads\": %d, \"capacity\": %d, \"lanes\": %d,\n"
            " \"state_bytes\": %lld, \"lanes_bytes\": %lld, \"daemon_anon_bytes_per_circuit\": %.1f,\n"
            " \"registrations_per_s\": %.0f, \"idle_cpu_pct\": {\"empty\": %.3f, \"circuits\": %.3f, "
            "\"circuits_and_threads\": %.3f},\n"
            " \"spread\": [%s],\n"
            " \"hammers\": %d, \"drained_per_s\": %.0f, \"recorded_per_s\": %.0f, \"lane_drops\": %lld,\n"
            " \"cbctl_list_s\": %.4f, \"cbctl_show_s\": %.4f,\n"
            " \"storm\": {\"trips\": %d, \"transitions\": %lld, \"read\": %llu, \"overruns\": %llu}}\n",
            o->circuits, o->threads, o->capacity, o->lanes, f->state_bytes, f->lanes_bytes,
            (double)(f->anon_after - f->anon_before) / o->circuits, o->circuits / f->reg_s, f->idle_empty,
            f->idle_circuits, f->idle_threads, spread, o->hammers, f->drain_per_s, f->record_per_s, f->drops, f->list_s, f->show_s,
            o->storm, f->storm_transitions, (unsigned long long)f->storm_read,
            (unsigned long long)f->storm_overruns);
    return fclose(j) == 0 ? 0 : fail("cannot write %s", o->json);
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"circuits", required_argument, NULL, 'n'}, {"threads", required_argument, NULL, 't'},
        {"capacity", required_argument, NULL, 'C'}, {"lanes", required_argument, NULL, 'L'},
        {"window-s", required_argument, NULL, 'w'}, {"storm", required_argument, NULL, 's'},
        {"cbctl", required_argument, NULL, 'c'},    {"json", required_argument, NULL, 'j'},
        {"hammers", required_argument, NULL, 'H'},  {NULL, 0, NULL, 0},
    };
    struct opts o = {.instance = getenv("CB_INSTANCE"), .cbctl = "cbctl", .circuits = 100000, .threads = 1024,
                     .capacity = 0, .lanes = 0, .window_s = 10, .storm = 10000, .hammers = 1};
    for (int c; (c = getopt_long(argc, argv, "", longs, NULL)) != -1;) {
        switch (c) {
        case 'n': o.circuits = atoi(optarg); break;
        case 't': o.threads = atoi(optarg); break;
        case 'C': o.capacity = atoi(optarg); break;
        case 'L': o.lanes = atoi(optarg); break;
        case 'w': o.window_s = atoi(optarg); break;
        case 's': o.storm = atoi(optarg); break;
        case 'c': o.cbctl = optarg; break;
        case 'j': o.json = optarg; break;
        case 'H': o.hammers = atoi(optarg); break;
        default: o.instance = NULL; break;
        }
    }
    if (o.instance == NULL || o.circuits < 2 || o.threads < 1 || o.capacity < o.circuits || o.lanes < o.threads ||
        o.window_s < 1 || o.storm < 1 || o.hammers < 1 || o.hammers > o.threads) {
        fprintf(stderr, "usage: scale_bench --capacity C --lanes L [--circuits N (<= C)] [--threads T (<= L)]\n"
                        "       [--window-s S] [--storm TRIPS] [--hammers H] [--cbctl PATH] [--json FILE]\n"
                        "(the instance is $CB_INSTANCE; C and L: the daemon's --capacity and --lanes)\n");
        return 2;
    }
    struct figures f = {0};
    int rc = run(&o, &f);
    if (rc == 0) {
        print_markdown(&o, &f);
        rc = o.json != NULL ? write_json(&o, &f) : 0;
    }
    return rc;
}
