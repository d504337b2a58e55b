/*
 * cb_bench.c - what the hot path costs, measured against its floor.
 *
 *     cb_bench [--quick] [--json FILE] [--instance NAME] [--workers M] [--trip-runs N]
 *
 * Needs a running cbd (bench/run.sh starts a throwaway one). Measures:
 *   (a) the floor: an acquire load of a word in a shared-memory mapping
 *       (a memfd page mapped PROT_READ, as workers map the segment), and an
 *       empty non-inlined function call for scale;
 *   (b) cb_allow on a CLOSED circuit, (c) cb_allow on an OPEN circuit;
 *   (d) cb_record(SUCCESS) on a CLOSED circuit;
 *   (e) trip latency: M worker processes spin on cb_allow while the parent
 *       records the one failure that trips the circuit (threshold 1); the
 *       latency of a run is the time from just before that cb_record until
 *       the last worker sees its first rejection. For scale, the same
 *       table shows how long one process takes to wake another through a
 *       pipe on this machine: a trip needs at least one such wakeup (the
 *       doorbell), and scheduler noise shows up in both.
 *
 * Method: (a)-(c) time batches of calls with CLOCK_MONOTONIC (one clock
 * read per batch, never per call) after a warm-up, round-robin (one batch
 * of each per round), and report the median and p99 of ns/call over the
 * batches. Ticket words are summed into a
 * volatile sink so the compiler cannot drop the calls. (d) times batches of
 * half a lane and waits between batches until the daemon drained the lane,
 * so every timed call appends an event instead of taking the lane-full drop
 * path. (e) resets the circuit between runs by letting it recover (short
 * recovery timeout) and closing it with one probe success.
 *
 * Shared machines are noisy, so the table puts every figure next to the
 * bare load measured in the same run, and states the goals with "met" or
 * "missed". It asserts nothing about timings: the exit status only says
 * whether every measurement ran (0) or something could not be measured (1).
 * --quick is the smoke run: tiny counts, figures not meaningful.
 */
#define _GNU_SOURCE
#include <cb.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "segment.h"

#define MAX_WORKERS 64

struct opts {
    int quick;
    const char *json, *instance;
    int workers, trip_runs;
    int batches;          /* timed batches per measurement */
    uint64_t batch_calls; /* calls per batch for (a)-(c) */
    int record_batches;
};

/* One row of the table: ns per call, or us per trip for the latency. */
struct result {
    const char *key, *label;
    double median, p99;
    int samples;
    int ran;
};

enum { R_BARE, R_CALL, R_ALLOW_CLOSED, R_ALLOW_OPEN, R_RECORD, R_WAKE, R_TRIP, R_COUNT };

struct bench {
    struct opts o;
    char instance[CB_INSTANCE_MAX + 1];
    cb_client *client;
    cb_circuit *closed, *open, *trip;
    const uint64_t *bare_word;           /* the floor's word, in a read-only memfd mapping */
    const struct cb_lanes_header *lanes; /* read-only view, to see our lane drained */
    size_t lanes_size;
    struct result r[R_COUNT];
    int trip_failed_runs;
};

static volatile uint64_t sink; /* every batch's sum lands here: the calls stay */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and nearest-rank p99 of n samples (sorts them). */
static void summarise(struct result *r, double *s, int n)
{
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    r->median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    int rank = (99 * n + 99) / 100; /* ceil(0.99 n), nearest rank */
    r->p99 = s[rank - 1];
    r->samples = n;
    r->ran = 1;
}

/* ---- (a)-(c): batches of calls --------------------------------------------------------------- */

typedef uint64_t (*batch_fn)(struct bench *b, uint64_t n);

static uint64_t batch_bare_load(struct bench *b, uint64_t n)
{
    const uint64_t *word = b->bare_word;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += __atomic_load_n(word, __ATOMIC_ACQUIRE); /* no writer: pairs with nothing, as a floor */
    return sum;
}

/* Empty, but neither inlined nor analysed away: the asm hides what it does. */
__attribute__((noinline)) static uint64_t empty_function(uint64_t x)
{
    __asm__ volatile("" : "+r"(x));
    return x;
}

static uint64_t batch_empty_call(struct bench *b, uint64_t n)
{
    (void)b;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += empty_function(i);
    return sum;
}

static uint64_t batch_allow_closed(struct bench *b, uint64_t n)
{
    cb_circuit *c = b->closed;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += cb_allow(c).word;
    return sum;
}

static uint64_t batch_allow_open(struct bench *b, uint64_t n)
{
    cb_circuit *c = b->open;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += cb_allow(c).word;
    return sum;
}

/* (a)-(c) interleaved: every round times one batch of each, so a noisy
 * moment of a shared machine hits all rows alike and the ratios hold. */
static int measure_batches(struct bench *b)
{
    static const batch_fn fns[] = {
        [R_BARE] = batch_bare_load,
        [R_CALL] = batch_empty_call,
        [R_ALLOW_CLOSED] = batch_allow_closed,
        [R_ALLOW_OPEN] = batch_allow_open,
    };
    enum { N_FNS = sizeof fns / sizeof fns[0] };
    int n = b->o.batches;
    double *s = calloc((size_t)n * N_FNS, sizeof *s);
    if (s == NULL)
        return -1;
    for (int f = 0; f < N_FNS; f++)
        sink += fns[f](b, b->o.batch_calls); /* warm-up: caches, branch predictors, page faults */
    for (int i = 0; i < n; i++) {
        for (int f = 0; f < N_FNS; f++) {
            int64_t t0 = mono_ns();
            sink += fns[f](b, b->o.batch_calls);
            s[f * n + i] = (double)(mono_ns() - t0) / (double)b->o.batch_calls;
        }
    }
    for (int f = 0; f < N_FNS; f++)
        summarise(&b->r[f], s + f * n, n);
    free(s);
    return 0;
}

/* ---- (d): cb_record -------------------------------------------------------------------------- */

/* Our thread's lane: the one whose owner word names this process (the
 * bench records from one thread only). */
static const struct cb_lane *own_lane(const struct bench *b)
{
    uint64_t want = cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED);
    for (uint32_t i = 0; i < b->lanes->lane_count; i++) {
        const struct cb_lane *l = CB_LANES_LANE(b->lanes, i);
        if (atomic_load_explicit(&l->owner, memory_order_relaxed) == want)
            return l;
    }
    return NULL;
}

/* Wait (up to 2 s) until the daemon has drained every event of the lane. */
static int wait_drained(const struct cb_lane *l)
{
    int64_t deadline = mono_ns() + 2000000000;
    /* Acquire on head pairs with the daemon's release store after it read
     * the events; tail is ours, so relaxed is enough. */
    while (atomic_load_explicit(&l->head, memory_order_acquire) !=
           atomic_load_explicit(&l->tail, memory_order_relaxed)) {
        if (mono_ns() > deadline)
            return -ETIMEDOUT;
        sleep_us(200);
    }
    return 0;
}

static int measure_record(struct bench *b)
{
    cb_ticket t = cb_allow(b->closed);
    cb_record(b->closed, t, CB_SUCCESS); /* claims this thread's lane */
    const struct cb_lane *l = own_lane(b);
    if (l == NULL) {
        fprintf(stderr, "cb_bench: cb_record: no lane of this process found in the lanes region\n");
        return -1;
    }
    uint32_t per_batch = b->lanes->lane_capacity / 2;
    int n = b->o.record_batches;
    double *s = calloc((size_t)n, sizeof *s);
    if (s == NULL)
        return -1;
    uint64_t dropped = atomic_load_explicit(&l->dropped, memory_order_relaxed);
    for (int i = -1; i < n; i++) { /* batch -1 is the warm-up */
        if (wait_drained(l) < 0) {
            fprintf(stderr, "cb_bench: cb_record: cbd did not drain the lane within 2 s\n");
            free(s);
            return -1;
        }
        int64_t t0 = mono_ns();
        for (uint32_t k = 0; k < per_batch; k++)
            cb_record(b->closed, t, CB_SUCCESS);
        if (i >= 0)
            s[i] = (double)(mono_ns() - t0) / per_batch;
    }
    dropped = atomic_load_explicit(&l->dropped, memory_order_relaxed) - dropped;
    if (dropped)
        fprintf(stderr, "cb_bench: note: %llu recorded events were dropped (lane full)\n",
                (unsigned long long)dropped);
    summarise(&b->r[R_RECORD], s, n);
    free(s);
    return 0;
}

/* ---- (e): trip latency, and a process wakeup for scale --------------------------------------- */

/* One-way wakeup through a pipe: the parent writes its clock, the child
 * (blocked in read) answers how long after that it ran. */
static int measure_wakeup(struct bench *b)
{
    int to_child[2], to_parent[2], n = b->o.trip_runs * 5, got = 0;
    double *s = calloc((size_t)n, sizeof *s);
    if (s == NULL || pipe(to_child) != 0 || pipe(to_parent) != 0) {
        perror("cb_bench: wakeup");
        free(s);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        int64_t t;
        close(to_child[1]);
        while (read(to_child[0], &t, sizeof t) == (ssize_t)sizeof t) {
            t = mono_ns() - t;
            if (write(to_parent[1], &t, sizeof t) != (ssize_t)sizeof t)
                break;
        }
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    for (int64_t t; pid > 0 && got < n; got++) {
        sleep_us(1000); /* let the child block again, as a sleeping daemon would */
        t = mono_ns();
        if (write(to_child[1], &t, sizeof t) != (ssize_t)sizeof t ||
            read(to_parent[0], &t, sizeof t) != (ssize_t)sizeof t)
            break;
        s[got] = (double)t / 1000.0;
    }
    close(to_child[1]);
    close(to_parent[0]);
    if (pid > 0)
        waitpid(pid, NULL, 0);
    if (got > 0)
        summarise(&b->r[R_WAKE], s, got);
    free(s);
    return got == n ? 0 : -1;
}

/* Shared with the spinning workers (MAP_SHARED, made before fork). */
struct trip_page {
    _Atomic int run; /* the run the workers should spin for; -1 = quit */
    _Atomic int ready[MAX_WORKERS], done[MAX_WORKERS];
    _Atomic int64_t seen_ns[MAX_WORKERS];
};

static void trip_worker(cb_circuit *c, struct trip_page *p, int me)
{
    int last = 0;
    for (;;) {
        int run = atomic_load(&p->run);
        if (run < 0)
            _exit(0);
        if (run == last) {
            sleep_us(50); /* between runs: leave the CPUs to the parent and cbd */
            continue;
        }
        atomic_store(&p->ready[me], run);
        while (cb_permitted(cb_allow(c)))
            ;
        atomic_store(&p->seen_ns[me], mono_ns());
        atomic_store(&p->done[me], run); /* seq_cst: seen_ns is visible first */
        last = run;
    }
}

/* Wait until cb_allow(c) gives a ticket of kind `want` (1 ms steps, 5 s). */
static int wait_ticket(cb_circuit *c, unsigned want, cb_ticket *out)
{
    for (int i = 0; i < 5000; i++) {
        cb_ticket t = cb_allow(c);
        if ((t.word & 0xff) == want) {
            if (out)
                *out = t;
            return 0;
        }
        sleep_us(1000);
    }
    return -ETIMEDOUT;
}

/* Wait until field[w] == run for every worker w, or the deadline passes. */
static int all_workers(int n, _Atomic int *field, int run, int64_t deadline)
{
    for (int w = 0; w < n;) {
        if (atomic_load(&field[w]) == run)
            w++;
        else if (mono_ns() > deadline)
            return -ETIMEDOUT;
        else
            sleep_us(20);
    }
    return 0;
}

/* One run: trip with one failure, time it, then recover through one probe.
 * Returns the latency in ns, or -1. */
static int64_t trip_once(struct bench *b, struct trip_page *p, int run)
{
    int n = b->o.workers;
    cb_ticket t;
    if (wait_ticket(b->trip, CB_TICKET_ALLOWED, &t) < 0)
        return -1;
    atomic_store(&p->run, run);
    if (all_workers(n, p->ready, run, mono_ns() + 2000000000) < 0)
        return -1;
    sleep_us(100); /* the workers are inside their spin loops */
    int64_t t0 = mono_ns();
    cb_record(b->trip, t, CB_FAILURE);
    if (all_workers(n, p->done, run, mono_ns() + 5000000000) < 0)
        return -1;
    int64_t last = 0;
    for (int w = 0; w < n; w++)
        if (atomic_load(&p->seen_ns[w]) > last)
            last = atomic_load(&p->seen_ns[w]);
    /* Reset: after the short recovery timeout one probe success closes it. */
    if (wait_ticket(b->trip, CB_TICKET_PROBE, &t) < 0)
        return -1;
    cb_record(b->trip, t, CB_SUCCESS);
    return last - t0;
}

static int spawn_trip_workers(struct bench *b, struct trip_page *p, pid_t *pids)
{
    for (int w = 0; w < b->o.workers; w++) {
        pids[w] = fork();
        if (pids[w] < 0) {
            perror("cb_bench: fork");
            return -1;
        }
        if (pids[w] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the bench */
            trip_worker(b->trip, p, w);
        }
    }
    return 0;
}

static int measure_trip(struct bench *b)
{
    struct trip_page *p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int runs = b->o.trip_runs, ok = 0;
    double *s = calloc((size_t)runs, sizeof *s);
    pid_t pids[MAX_WORKERS] = {0};
    if (p == MAP_FAILED || s == NULL) {
        fprintf(stderr, "cb_bench: trip latency: out of memory\n");
        return -1;
    }
    int rc = spawn_trip_workers(b, p, pids);
    for (int run = 1; rc == 0 && run <= runs; run++) {
        int64_t lat = trip_once(b, p, run);
        if (lat < 0) {
            b->trip_failed_runs++;
            fprintf(stderr, "cb_bench: trip latency: run %d did not complete (circuit stuck?)\n", run);
            break;
        }
        s[ok++] = (double)lat / 1000.0;
    }
    atomic_store(&p->run, -1);
    for (int w = 0; w < b->o.workers; w++)
        if (pids[w] > 0)
            waitpid(pids[w], NULL, 0);
    if (ok > 0)
        summarise(&b->r[R_TRIP], s, ok);
    free(s);
    munmap(p, sizeof *p);
    return rc == 0 && ok == runs ? 0 : -1;
}

/* ---- setup ----------------------------------------------------------------------------------- */

static int get_circuit(struct bench *b, const char *what, uint32_t threshold, uint32_t recovery_ms,
                       cb_circuit **out)
{
    char name[CB_NAME_MAX + 1];
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = threshold;
    cfg.success_threshold = 1;
    cfg.recovery_timeout_ms = recovery_ms;
    /* The pid keeps runs against one daemon apart: circuits are never deleted. */
    snprintf(name, sizeof name, "bench.%d.%s", (int)getpid(), what);
    int rc = cb_circuit_get(b->client, name, &cfg, out);
    if (rc < 0)
        fprintf(stderr, "cb_bench: cannot register circuit '%s': %s\n", name, cb_strerror(rc));
    return rc;
}

static int map_floor_word(struct bench *b)
{
    int fd = memfd_create("cb_bench_floor", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 4096) != 0) {
        perror("cb_bench: memfd");
        return -1;
    }
    void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        perror("cb_bench: mmap memfd");
        return -1;
    }
    b->bare_word = m;
    return 0;
}

static int map_lanes(struct bench *b)
{
    char state_name[CB_SHM_NAME_MAX], lanes_name[CB_SHM_NAME_MAX];
    struct stat st;
    cb__shm_names(b->instance, state_name, lanes_name);
    int fd = shm_open(lanes_name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "cb_bench: cannot open %s: %s\n", lanes_name, strerror(errno));
        return -1;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED || cb__lanes_header_check(m, (uint64_t)st.st_size) != 0) {
        fprintf(stderr, "cb_bench: %s is not a cbd lanes region\n", lanes_name);
        return -1;
    }
    b->lanes = m;
    b->lanes_size = (size_t)st.st_size;
    return 0;
}

/* Trip a circuit with a 10-minute recovery and wait until it rejects. */
static int make_open(struct bench *b)
{
    if (get_circuit(b, "open", 1, 600000, &b->open) < 0)
        return -1;
    cb_record(b->open, cb_allow(b->open), CB_FAILURE);
    if (wait_ticket(b->open, CB_TICKET_REJECTED, NULL) < 0) {
        fprintf(stderr, "cb_bench: circuit did not open within 5 s of its tripping failure\n");
        return -1;
    }
    return 0;
}

static int setup(struct bench *b)
{
    int rc = cb_client_open(&b->client, b->o.instance);
    if (rc < 0) {
        fprintf(stderr, "cb_bench: cannot open cbd instance '%s': %s (start one with bench/run.sh)\n",
                b->instance, cb_strerror(rc));
        return -1;
    }
    if (cb_status(b->client) & CB_STATUS_DISABLED) {
        fprintf(stderr, "cb_bench: $CB_DISABLED bypasses the breaker: nothing to measure\n");
        return -1;
    }
    if (map_floor_word(b) < 0 || map_lanes(b) < 0 ||
        get_circuit(b, "closed", 1000000, 30000, &b->closed) < 0 ||
        get_circuit(b, "trip", 1, 20, &b->trip) < 0 || make_open(b) < 0)
        return -1;
    return 0;
}

/* ---- report ---------------------------------------------------------------------------------- */

/* The goals, judged from this run's figures: reported, never asserted. */
struct goals {
    bool allow_closed, record, trip;
};

static struct goals judge(const struct result *r)
{
    struct goals g = {
        .allow_closed = r[R_ALLOW_CLOSED].ran && r[R_ALLOW_CLOSED].median <= 2.0 &&
                        r[R_ALLOW_CLOSED].median <= 1.5 * r[R_BARE].median,
        .record = r[R_RECORD].ran && r[R_RECORD].median <= 15.0,
        .trip = r[R_TRIP].ran && r[R_TRIP].p99 <= 1000.0,
    };
    return g;
}

static const char *met(const struct bench *b, int ok)
{
    return b->o.quick ? "n/a (--quick)" : ok ? "met" : "missed";
}

static void cpu_model(char *buf, size_t size)
{
    snprintf(buf, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(buf, size, "%s", colon + 2);
            buf[strcspn(buf, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
}

static void print_table(const struct bench *b)
{
    const struct result *r = b->r, *bare = &r[R_BARE];
    struct goals g = judge(r);
    char cpu[128];
    cpu_model(cpu, sizeof cpu);
    printf("cb_bench: libcb %s, instance %s, %ld CPUs (%s), %s\n\n", cb_version(), b->instance,
           sysconf(_SC_NPROCESSORS_ONLN), cpu,
           b->o.quick ? "--quick smoke run: figures are not meaningful" : "full run");
    printf("| measurement | median | p99 | median vs bare load | goal |\n|---|---|---|---|---|\n");
    for (int i = R_BARE; i <= R_RECORD; i++) {
        if (!r[i].ran)
            continue;
        const char *goal = i == R_BARE ? "floor" : i == R_CALL ? "for scale" : "";
        char buf[96] = "";
        if (i == R_ALLOW_CLOSED)
            snprintf(buf, sizeof buf, "<= 2 ns and <= 1.5x bare load: %s", met(b, g.allow_closed));
        if (i == R_RECORD)
            snprintf(buf, sizeof buf, "<= 15 ns: %s", met(b, g.record));
        printf("| %s | %.2f ns | %.2f ns | %.2fx | %s |\n", r[i].label, r[i].median, r[i].p99,
               bare->median > 0 ? r[i].median / bare->median : 0.0, *goal ? goal : buf);
    }
    if (r[R_WAKE].ran)
        printf("| %s | %.1f us | %.1f us | | for scale |\n", r[R_WAKE].label, r[R_WAKE].median,
               r[R_WAKE].p99);
    if (r[R_TRIP].ran)
        printf("| %s, %d worker%s, %d runs | %.1f us | %.1f us | | p99 <= 1 ms: %s |\n", r[R_TRIP].label,
               b->o.workers, b->o.workers == 1 ? "" : "s", r[R_TRIP].samples, r[R_TRIP].median, r[R_TRIP].p99,
               met(b, g.trip));
    printf(
        "\n(a)-(c): %d batches of %llu calls; cb_record: %d batches of %u events (half a lane), lane drained "
        "between batches.\n",
        b->o.batches, (unsigned long long)b->o.batch_calls, b->o.record_batches,
        b->lanes ? b->lanes->lane_capacity / 2 : 0);
}

static void json_result(FILE *f, const struct result *r, const struct result *bare, const char *unit,
                        int last)
{
    fprintf(f, "    \"%s\": {\"median_%s\": %.4f, \"p99_%s\": %.4f, \"samples\": %d", r->key, unit, r->median,
            unit, r->p99, r->samples);
    if (strcmp(unit, "ns") == 0 && bare->median > 0)
        fprintf(f, ", \"ratio_to_bare_load\": %.4f", r->median / bare->median);
    fprintf(f, "}%s\n", last ? "" : ",");
}

static int write_json(const struct bench *b, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "cb_bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    const struct result *r = b->r;
    fprintf(f, "{\n  \"libcb_version\": \"%s\",\n  \"quick\": %s,\n  \"cpus\": %ld,\n", cb_version(),
            b->o.quick ? "true" : "false", sysconf(_SC_NPROCESSORS_ONLN));
    fprintf(f, "  \"batches\": %d,\n  \"calls_per_batch\": %llu,\n  \"record_batches\": %d,\n", b->o.batches,
            (unsigned long long)b->o.batch_calls, b->o.record_batches);
    fprintf(f, "  \"trip_workers\": %d,\n  \"trip_failed_runs\": %d,\n  \"results\": {\n", b->o.workers,
            b->trip_failed_runs);
    int last = R_COUNT - 1;
    while (last > 0 && !r[last].ran)
        last--;
    for (int i = 0; i <= last; i++)
        if (r[i].ran)
            json_result(f, &r[i], &r[R_BARE], i >= R_WAKE ? "us" : "ns", i == last);
    fprintf(f, "  },\n  \"goals\": {\n");
    struct goals g = judge(r);
    fprintf(f, "    \"allow_closed_median_le_2ns_and_1_5x_bare\": %s,\n", g.allow_closed ? "true" : "false");
    fprintf(f, "    \"record_median_le_15ns\": %s,\n", g.record ? "true" : "false");
    fprintf(f, "    \"trip_p99_le_1ms\": %s\n  }\n}\n", g.trip ? "true" : "false");
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: cb_bench [--quick] [--json FILE] [--instance NAME] [--workers M] [--trip-runs N]\n"
               "  needs a running cbd for the instance (default: $CB_INSTANCE, else \"default\");\n"
               "  bench/run.sh starts a throwaway one and passes its arguments on.\n");
}

static int parse_int(const char *opt, const char *s, int lo, int hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "cb_bench: %s '%s': expected a number from %d to %d\n", opt, s, lo, hi);
        exit(2);
    }
    return (int)v;
}

static void parse_args(struct opts *o, int argc, char **argv)
{
    static const struct option longs[] = {
        {"quick", no_argument, NULL, 'q'},
        {"json", required_argument, NULL, 'j'},
        {"instance", required_argument, NULL, 'i'},
        {"workers", required_argument, NULL, 'w'},
        {"trip-runs", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int c, workers = 0, runs = 0;
    while ((c = getopt_long(argc, argv, "qj:i:w:r:h", longs, NULL)) != -1) {
        switch (c) {
        case 'q': o->quick = 1; break;
        case 'j': o->json = optarg; break;
        case 'i': o->instance = optarg; break;
        case 'w': workers = parse_int("--workers", optarg, 1, MAX_WORKERS); break;
        case 'r': runs = parse_int("--trip-runs", optarg, 1, 100000); break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc) {
        usage(stderr);
        exit(2);
    }
    /* Full: 201 batches of 1M calls (~0.2 s per row at 1 ns), 300 record
     * batches (each waits for a drain tick), 100 trips. Quick: a few each. */
    o->batches = o->quick ? 3 : 201;
    o->batch_calls = o->quick ? 1000 : 1000000;
    o->record_batches = o->quick ? 3 : 300;
    if (workers == 0) /* full: one spinner per CPU, so cbd competes with them as on a busy host */
        workers = o->quick ? 2 : (int)(cpus < 2 ? 2 : cpus > MAX_WORKERS ? MAX_WORKERS : cpus);
    o->workers = workers;
    o->trip_runs = runs ? runs : o->quick ? 3 : 100;
}

int main(int argc, char **argv)
{
    static struct bench b = {
        .r = {[R_BARE] = {"bare_load", "bare acquire load (shm page)", 0, 0, 0, 0},
              [R_CALL] = {"empty_call", "empty non-inlined call", 0, 0, 0, 0},
              [R_ALLOW_CLOSED] = {"allow_closed", "cb_allow, CLOSED", 0, 0, 0, 0},
              [R_ALLOW_OPEN] = {"allow_open", "cb_allow, OPEN", 0, 0, 0, 0},
              [R_RECORD] = {"record_success", "cb_record(SUCCESS)", 0, 0, 0, 0},
              [R_WAKE] = {"process_wakeup", "process wakeup through a pipe", 0, 0, 0, 0},
              [R_TRIP] = {"trip_latency", "trip latency", 0, 0, 0, 0}},
    };
    parse_args(&b.o, argc, argv);
    const char *inst = b.o.instance ? b.o.instance : getenv("CB_INSTANCE");
    snprintf(b.instance, sizeof b.instance, "%s", inst && *inst ? inst : "default");
    if (setup(&b) < 0)
        return 1;
    int rc = measure_batches(&b);
    rc |= measure_record(&b);
    rc |= measure_wakeup(&b);
    rc |= measure_trip(&b);
    for (int i = 0; i < R_COUNT; i++)
        if (!b.r[i].ran)
            rc = -1;
    print_table(&b);
    if (b.o.json && write_json(&b, b.o.json) < 0)
        rc = -1;
    cb_client_close(b.client);
    return rc == 0 ? 0 : 1;
}
