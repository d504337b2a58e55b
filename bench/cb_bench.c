/*
 * cb_bench.c - what libcb costs, measured against its floor and against
 * the breaker a multi-process service would use without cbd.
 *
 *     cb_bench [--quick] [--json FILE] [--instance NAME]     the main run
 *     cb_bench --trip-only [--quick] [--json FILE]           trip latency only
 *     cb_bench --micro-only [--quick] [--json FILE]          the per-call figures only
 *     cb_bench --throughput [--quick] [--json FILE]          daemon drain rate
 *     cb_bench --instr                                       for callgrind
 *
 * Needs a running cbd (bench/run.sh starts throwaway ones). The main run:
 *   micro      the floor (an acquire load of a word in a shared-memory
 *              mapping, an empty non-inlined call), cb_allow on CLOSED, OPEN
 *              and HALF_OPEN circuits, and the in-process baseline's check
 *              (a mutex-protected state machine, what gobreaker, pybreaker or
 *              Polly do), in interleaved batches; cb_record, cb_call and the
 *              baseline's record in batches of half a lane, drained between;
 *   scaling    1, 2, 4 and 8 worker processes calling cb_allow for a fixed
 *              time on one shared circuit and on a circuit each: total checks
 *              per second;
 *   semantics  N worker processes (1, 2, 4, 8) sharing one downstream with
 *              threshold 5: failures until every worker rejects, and probes
 *              admitted at once in HALF_OPEN, for cbd and for the in-process
 *              baseline (one breaker per process);
 *   trip       from just before the tripping failure's cb_record until the
 *              last worker rejects: workers that spin on cb_allow (the worst
 *              case: they keep every core busy) and workers that pause 50 us
 *              after each check as a request would (the time counted is that
 *              of the first rejecting check); a pipe wakeup for scale. Each
 *              trip is also cut in parts: until cbd began the drain that
 *              published it (read back from the opening's recovery deadline,
 *              which counts from that drain's clock reading) - the wait for
 *              the daemon to get a CPU - and until the first worker rejected
 *              (the publication is before it); the rest is the other workers
 *              getting a CPU. The results name cbd's scheduling policy, as
 *              the kernel reports it (bench/with_cbd.sh CBD_SCHED).
 * --trip-only: the trip part alone (bench/run.sh: the comparison under
 *   default scheduling).
 * --throughput: one thread floods cb_record while the daemon drains; events
 *   drained per second of wall time and per second of daemon CPU time (read
 *   from /proc), which is the rate one core sustains. Run it against a cbd
 *   with big lanes and a short drain interval (bench/run.sh does), or it
 *   measures the drain interval instead of the daemon.
 * --instr: runs each hot path a fixed number of times inside its own
 *   non-inlined instr_* function, for valgrind --tool=callgrind to count
 *   instructions (stable where timings are not).
 *
 * Method: batches timed with CLOCK_MONOTONIC (one clock read per batch,
 * never per call) after a warm-up; median and p99 over the batches (or runs),
 * and 101 quantiles in the JSON for the distribution plots. Shared machines
 * are noisy, so every figure is read as a ratio to a floor or baseline
 * measured in the same run. It asserts nothing about timings: the exit
 * status says whether every measurement ran (0) or not (1). --quick is the
 * smoke run: tiny counts, figures not meaningful.
 */
#define _GNU_SOURCE
#include <cb.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "segment.h"

#define MAX_WORKERS 64
#define INSTR_CALLS 500u /* per instr_* function; half of the default lane */
#define PACE_US 50       /* the realistic trip workers' pause after each check */
#define TRIP_RECOVERY_MS 50 /* the trip circuit's OPEN time: long enough to read its opening back */

enum mode { MODE_MAIN, MODE_THROUGHPUT, MODE_INSTR };

struct opts {
    enum mode mode;
    int quick, trip_only, micro_only;
    const char *json, *instance;
    int spin_workers, paced_workers, trip_runs;
    int batches;          /* timed batches per micro measurement */
    uint64_t batch_calls; /* calls per batch */
    int record_batches;
    int scale_reps;       /* repetitions per scaling point */
    int64_t scale_ns;     /* duration of one repetition */
};


enum {
    R_BARE, R_CALL, R_ALLOW_CLOSED, R_ALLOW_OPEN, R_ALLOW_HALF, R_MUTEX_ALLOW, /* interleaved batches */
    R_RECORD, R_RECORD_LATENCY, R_CB_CALL, R_MUTEX_RECORD,                   /* drained batches */
    R_WAKE, R_TRIP_SPIN, R_TRIP_PACED, R_TRIP_SPIN_DRAIN, R_TRIP_PACED_DRAIN, R_TRIP_SPIN_FIRST,
    R_TRIP_PACED_FIRST, R_TPUT_WALL, R_TPUT_CPU, R_TPUT_WIN_WALL, R_TPUT_WIN_CPU, R_COUNT
};

#define SCALE_POINTS 4
static const int scale_n[SCALE_POINTS] = {1, 2, 4, 8};

/* The in-process baseline: one breaker per process behind a mutex, with
 * the same policy (trip after `threshold` consecutive failures, OPEN for
 * `recovery_ns`, then one probe; a probe success closes). It reads the
 * clock only when OPEN, as the cheaper libraries do. */
struct mbreaker {
    pthread_mutex_t mu;
    int state; /* CB_CLOSED, CB_OPEN, CB_HALF_OPEN */
    uint32_t streak, threshold;
    int probes; /* admitted and not yet reported */
    int64_t opened_ns, recovery_ns;
};

struct bench {
    struct opts o;
    char instance[CB_INSTANCE_MAX + 1];
    cb_client *client;
    cb_circuit *closed, *open, *half, *trip;
    cb_ticket half_probe;                /* held for ever: keeps `half` HALF_OPEN with no permit left */
    const uint64_t *bare_word;           /* the floor's word, in a read-only memfd mapping */
    const struct cb_lanes_header *lanes; /* read-only view, to see our lane drained */
    const struct cb_seg_header *seg;     /* read-only view of the state header: the daemon's pid */
    struct mbreaker mb;
    struct result r[R_COUNT];
    double scale_one[SCALE_POINTS][2], scale_many[SCALE_POINTS][2]; /* checks/s: median, p99-low */
    int sem_fail[2][SCALE_POINTS], sem_probes[2][SCALE_POINTS];    /* [0] cbd, [1] in-process */
    int sem_ran;
    double tput_cpu_share, tput_window_cpu_share;
    int failed_runs;
    char daemon_sched[64]; /* cbd's scheduling policy during the trip runs, as the kernel reports it */
};

static volatile uint64_t sink; /* every batch's sum lands here: the calls stay */

/* ---- the in-process baseline ---------------------------------------------------------------- */

static void mb_init(struct mbreaker *m, uint32_t threshold, int64_t recovery_ns)
{
    pthread_mutex_init(&m->mu, NULL);
    m->state = CB_CLOSED;
    m->streak = 0;
    m->threshold = threshold;
    m->probes = 0;
    m->recovery_ns = recovery_ns;
}

/* Returns a CB_TICKET_* kind, as cb_allow would. */
static unsigned mb_allow(struct mbreaker *m)
{
    unsigned kind = CB_TICKET_ALLOWED;
    pthread_mutex_lock(&m->mu);
    if (m->state == CB_OPEN && mono_ns() - m->opened_ns >= m->recovery_ns) {
        m->state = CB_HALF_OPEN;
        m->probes = 0;
    }
    if (m->state == CB_OPEN)
        kind = CB_TICKET_REJECTED;
    else if (m->state == CB_HALF_OPEN)
        kind = m->probes < 1 ? (m->probes++, CB_TICKET_PROBE) : CB_TICKET_REJECTED;
    pthread_mutex_unlock(&m->mu);
    return kind;
}

static void mb_record(struct mbreaker *m, unsigned kind, cb_outcome outcome)
{
    pthread_mutex_lock(&m->mu);
    if (kind == CB_TICKET_PROBE) {
        m->probes--;
        m->state = outcome == CB_FAILURE ? CB_OPEN : CB_CLOSED;
        m->opened_ns = mono_ns();
        m->streak = 0;
    } else if (m->state == CB_CLOSED && outcome == CB_FAILURE && ++m->streak >= m->threshold) {
        m->state = CB_OPEN;
        m->opened_ns = mono_ns();
    } else if (outcome == CB_SUCCESS) {
        m->streak = 0;
    }
    pthread_mutex_unlock(&m->mu);
}

/* ---- micro: interleaved batches of calls ---------------------------------------------------- */

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

static uint64_t allow_loop(cb_circuit *c, uint64_t n)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += cb_allow(c).word;
    return sum;
}

static uint64_t batch_allow_closed(struct bench *b, uint64_t n) { return allow_loop(b->closed, n); }
static uint64_t batch_allow_open(struct bench *b, uint64_t n) { return allow_loop(b->open, n); }
static uint64_t batch_allow_half(struct bench *b, uint64_t n) { return allow_loop(b->half, n); }

static uint64_t batch_mutex_allow(struct bench *b, uint64_t n)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += mb_allow(&b->mb);
    return sum;
}

/* Every round times one batch of each, so a noisy moment of a shared
 * machine hits all rows alike and the ratios hold. */
static int measure_batches(struct bench *b)
{
    static const batch_fn fns[] = {
        [R_BARE] = batch_bare_load,       [R_CALL] = batch_empty_call,  [R_ALLOW_CLOSED] = batch_allow_closed,
        [R_ALLOW_OPEN] = batch_allow_open, [R_ALLOW_HALF] = batch_allow_half, [R_MUTEX_ALLOW] = batch_mutex_allow,
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

/* ---- micro: cb_record, cb_call, the baseline's record --------------------------------------- */

/* The calling process's lanes: the ones whose owner word names it. Sums
 * head (what the daemon consumed) or, with tail, what was produced. */
static uint64_t own_lanes_sum(const struct bench *b, bool tail)
{
    uint64_t want = cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED), sum = 0;
    for (uint32_t i = 0; i < b->lanes->lane_count; i++) {
        const struct cb_lane *l = CB_LANES_LANE(b->lanes, i);
        /* Acquire on head pairs with the daemon's release store after it
         * read the events; tail is written by this process. */
        if (atomic_load_explicit(&l->owner, memory_order_relaxed) == want)
            sum += tail ? atomic_load_explicit(&l->tail, memory_order_relaxed)
                        : atomic_load_explicit(&l->head, memory_order_acquire);
    }
    return sum;
}

/* Wait (up to 2 s) until the daemon has drained every event of our lanes. */
static int wait_drained(const struct bench *b)
{
    int64_t deadline = mono_ns() + 2000000000;
    while (own_lanes_sum(b, false) != own_lanes_sum(b, true)) {
        if (mono_ns() > deadline) {
            fprintf(stderr, "cb_bench: cbd did not drain this process's lane within 2 s\n");
            return -ETIMEDOUT;
        }
        sleep_us(200);
    }
    return 0;
}

static int nop_fn(void *arg)
{
    (void)arg;
    return 0;
}

static void drained_batch(struct bench *b, int which, uint32_t n, cb_ticket t)
{
    switch (which) {
    case R_RECORD:
        for (uint32_t k = 0; k < n; k++)
            cb_record(b->closed, t, CB_SUCCESS);
        break;
    case R_RECORD_LATENCY: /* a duration the caller measured (a constant: the clock is the caller's cost) */
        for (uint32_t k = 0; k < n; k++)
            cb_record_latency(b->closed, t, CB_SUCCESS, 1234567);
        break;
    case R_CB_CALL:
        for (uint32_t k = 0; k < n; k++)
            sink += (uint64_t)cb_call(b->closed, nop_fn, NULL, NULL);
        break;
    default:
        for (uint32_t k = 0; k < n; k++)
            mb_record(&b->mb, CB_TICKET_ALLOWED, CB_SUCCESS);
    }
}

/* Batches of half a lane, the lane drained before each, so every timed
 * call appends an event instead of taking the lane-full drop path. */
static int measure_drained(struct bench *b)
{
    cb_ticket t = cb_allow(b->closed);
    cb_record(b->closed, t, CB_SUCCESS); /* claims this thread's lane */
    uint32_t per_batch = b->lanes->lane_capacity / 2;
    int n = b->o.record_batches;
    double *s = calloc((size_t)n * (R_MUTEX_RECORD - R_RECORD + 1), sizeof *s);
    if (s == NULL)
        return -1;
    for (int i = -1; i < n; i++) { /* round -1 is the warm-up */
        for (int which = R_RECORD; which <= R_MUTEX_RECORD; which++) {
            if (wait_drained(b) < 0) {
                free(s);
                return -1;
            }
            int64_t t0 = mono_ns();
            drained_batch(b, which, per_batch, t);
            if (i >= 0)
                s[(which - R_RECORD) * n + i] = (double)(mono_ns() - t0) / per_batch;
        }
    }
    for (int which = R_RECORD; which <= R_MUTEX_RECORD; which++)
        summarise(&b->r[which], s + (which - R_RECORD) * n, n);
    free(s);
    return 0;
}

/* ---- trip latency, and a process wakeup for scale ------------------------------------------- */

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

/* Shared with the trip workers (MAP_SHARED, made before fork). */
struct trip_page {
    _Atomic int run;  /* the run the workers should check for; -1 = quit */
    int pace_us;      /* pause after each permitted check; 0 = spin */
    _Atomic int ready[MAX_WORKERS], done[MAX_WORKERS];
    _Atomic int64_t seen_ns[MAX_WORKERS]; /* time of the first rejecting check */
};

/* fork() for a worker process that never outlives the bench: the kernel
 * kills it with SIGKILL when the bench dies. */
static pid_t fork_worker(void)
{
    pid_t pid = fork();
    if (pid == 0)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    return pid;
}

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
            if (p->pace_us)
                sleep_us(p->pace_us); /* a request's work between two checks */
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

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* When cbd began the drain that opened the trip circuit (CLOCK_REALTIME
 * ns), or -1: the opening's recovery deadline minus the recovery timeout
 * (policy.c: the deadline counts from the drain's clock reading, taken
 * when the doorbell's wakeup reached the loop). Read while it is still
 * that opening's OPEN. */
static int64_t trip_drain_began(cb_circuit *c, uint32_t epoch)
{
    cb_info info;
    if (cb_info_get(c, &info) < 0 || info.state != CB_OPEN || info.epoch != epoch || info.open_until_ns == 0)
        return -1;
    return info.open_until_ns - (int64_t)TRIP_RECOVERY_MS * 1000000;
}

/* The parts of one trip, ns from just before the tripping failure's
 * cb_record: cbd began its drain (-1: not known), the first worker
 * rejected (the publication is before it), the last one did. */
struct trip_times {
    int64_t drain, first, last;
};

/* One run: trip with one failure, time it, then recover through one probe.
 * Returns 0, or -1 when the run did not complete. */
static int trip_once(struct bench *b, struct trip_page *p, int n, int run, struct trip_times *out)
{
    cb_ticket t;
    cb_info before;
    if (wait_ticket(b->trip, CB_TICKET_ALLOWED, &t) < 0 || cb_info_get(b->trip, &before) < 0)
        return -1;
    atomic_store(&p->run, run);
    if (all_workers(n, p->ready, run, mono_ns() + 2000000000) < 0)
        return -1;
    sleep_us(100 + p->pace_us); /* the workers are inside their check loops */
    int64_t t0_real = real_ns(), t0 = mono_ns();
    cb_record(b->trip, t, CB_FAILURE);
    if (all_workers(n, p->done, run, mono_ns() + 5000000000) < 0)
        return -1;
    int64_t began = trip_drain_began(b->trip, before.epoch + 1);
    out->drain = began < 0 ? -1 : began - t0_real;
    out->first = INT64_MAX;
    out->last = 0;
    for (int w = 0; w < n; w++) {
        int64_t seen = atomic_load(&p->seen_ns[w]) - t0;
        out->first = seen < out->first ? seen : out->first;
        out->last = seen > out->last ? seen : out->last;
    }
    /* Reset: after the short recovery timeout one probe success closes it. */
    if (wait_ticket(b->trip, CB_TICKET_PROBE, &t) < 0)
        return -1;
    cb_record(b->trip, t, CB_SUCCESS);
    return 0;
}

static int spawn_trip_workers(struct bench *b, struct trip_page *p, int n, pid_t *pids)
{
    for (int w = 0; w < n; w++) {
        pids[w] = fork_worker();
        if (pids[w] < 0) {
            perror("cb_bench: fork");
            return -1;
        }
        if (pids[w] == 0)
            trip_worker(b->trip, p, w);
    }
    return 0;
}

/* `runs` trips watched by n workers that pause pace_us after each check:
 * the latencies (last worker) into r[which], the times until cbd's drain
 * began into r[drain_which], until the first worker rejected into
 * r[first_which]. */
static int measure_trip(struct bench *b, int which, int drain_which, int first_which, int n, int pace_us)
{
    struct trip_page *p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int runs = b->o.trip_runs, ok = 0, drains = 0;
    double *s = calloc((size_t)runs * 3, sizeof *s), *d = s + runs, *f = d + runs;
    pid_t pids[MAX_WORKERS] = {0};
    if (p == MAP_FAILED || s == NULL) {
        fprintf(stderr, "cb_bench: trip latency: out of memory\n");
        return -1;
    }
    p->pace_us = pace_us;
    int rc = spawn_trip_workers(b, p, n, pids);
    for (int run = 1; rc == 0 && run <= runs; run++) {
        struct trip_times t;
        if (trip_once(b, p, n, run, &t) < 0) {
            b->failed_runs++;
            fprintf(stderr, "cb_bench: trip latency: run %d did not complete (circuit stuck?)\n", run);
            break;
        }
        f[ok] = (double)t.first / 1000.0;
        s[ok++] = (double)t.last / 1000.0;
        if (t.drain >= 0) /* else the circuit left that OPEN before we looked: not known */
            d[drains++] = (double)t.drain / 1000.0;
    }
    atomic_store(&p->run, -1);
    for (int w = 0; w < n; w++)
        if (pids[w] > 0)
            waitpid(pids[w], NULL, 0);
    if (ok > 0) {
        summarise(&b->r[which], s, ok);
        summarise(&b->r[first_which], f, ok);
    }
    if (drains > 0)
        summarise(&b->r[drain_which], d, drains);
    free(s);
    munmap(p, sizeof *p);
    return rc == 0 && ok == runs ? 0 : -1;
}

/* cbd's scheduling as the kernel reports it: what the trip figures were
 * measured under (bench/with_cbd.sh starts cbd as systemd/cbd.service
 * would, or with default scheduling when it may not raise it). */
static void describe_daemon_sched(struct bench *b)
{
    pid_t pid = (pid_t)atomic_load(&b->seg->daemon_pid);
    struct sched_param sp;
    int policy = sched_getscheduler(pid), nice = 0;
    if (policy >= 0 && sched_getparam(pid, &sp) == 0) {
        errno = 0; /* -1 is a niceness too */
        nice = getpriority(PRIO_PROCESS, (id_t)pid);
    }
    if (policy < 0 || errno != 0) {
        snprintf(b->daemon_sched, sizeof b->daemon_sched, "unknown (pid %d: %s)", (int)pid, strerror(errno));
        return;
    }
    const char *reset = policy & SCHED_RESET_ON_FORK ? ", reset-on-fork" : "";
    policy &= ~SCHED_RESET_ON_FORK;
    if (policy == SCHED_FIFO || policy == SCHED_RR)
        snprintf(b->daemon_sched, sizeof b->daemon_sched, "SCHED_%s %d%s", policy == SCHED_FIFO ? "FIFO" : "RR",
                 sp.sched_priority, reset);
    else
        snprintf(b->daemon_sched, sizeof b->daemon_sched, "SCHED_OTHER nice %d%s", nice, reset);
}

/* ---- scaling: checks per second from 1..8 processes ------------------------------------------ */

struct scale_page {
    _Atomic int ready, go;
    _Atomic uint64_t count[MAX_WORKERS];
    _Atomic int64_t elapsed_ns[MAX_WORKERS];
};

static void scale_worker(cb_circuit *c, struct scale_page *p, int me, int64_t dur)
{
    uint64_t sum = allow_loop(c, 100000), n = 0; /* warm-up */
    atomic_fetch_add(&p->ready, 1);
    while (!atomic_load(&p->go))
        sleep_us(10);
    int64_t t0 = mono_ns(), t;
    do {
        sum += allow_loop(c, 4096);
        n += 4096;
    } while ((t = mono_ns()) - t0 < dur);
    sink += sum;
    atomic_store(&p->count[me], n);
    atomic_store(&p->elapsed_ns[me], t - t0);
    _exit(0);
}

/* n processes for one repetition; returns total checks per second, or -1. */
static double scale_once(struct bench *b, cb_circuit **circuits, int n)
{
    struct scale_page *p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    int started = 0;
    for (; started < n; started++) {
        pid_t pid = fork_worker();
        if (pid < 0)
            break;
        if (pid == 0)
            scale_worker(circuits[started], p, started, b->o.scale_ns);
    }
    while (atomic_load(&p->ready) < started)
        sleep_us(100);
    atomic_store(&p->go, 1);
    while (wait(NULL) > 0)
        ;
    double rate = 0;
    for (int w = 0; w < started; w++)
        rate += (double)atomic_load(&p->count[w]) * 1e9 / (double)atomic_load(&p->elapsed_ns[w]);
    munmap(p, sizeof *p);
    return started == n ? rate : -1;
}

/* out[i][0]: median total checks/s over the repetitions; [1]: the lowest. */
static int measure_scaling(struct bench *b, cb_circuit **many, double out[SCALE_POINTS][2], bool one)
{
    cb_circuit *same[MAX_WORKERS];
    for (int w = 0; w < MAX_WORKERS; w++)
        same[w] = b->closed;
    double s[32];
    for (int i = 0; i < SCALE_POINTS; i++) {
        int reps = b->o.scale_reps;
        for (int r = 0; r < reps; r++)
            if ((s[r] = scale_once(b, one ? same : many, scale_n[i])) < 0)
                return -1;
        qsort(s, (size_t)reps, sizeof *s, cmp_double);
        out[i][0] = reps % 2 ? s[reps / 2] : (s[reps / 2 - 1] + s[reps / 2]) / 2;
        out[i][1] = s[0];
    }
    return 0;
}

/* ---- semantics: N processes, one downstream ------------------------------------------------- */

enum { OP_FAIL = 1, OP_CHECK, OP_QUIT };
#define SEM_THRESHOLD 5

struct sem_page {
    _Atomic int seq[MAX_WORKERS], ack[MAX_WORKERS];
    int recovery_ms; /* the in-process breakers' recovery timeout, as the circuit's */
    int op[MAX_WORKERS];
    unsigned reply[MAX_WORKERS]; /* the ticket kind the worker got */
};

/* A worker of the semantics run: cbd's circuit c, or its own in-process
 * breaker when c is NULL. A PROBE ticket is held, never reported, so every
 * probe the implementation admits shows. */
static void sem_worker(cb_circuit *c, struct sem_page *p, int me)
{
    struct mbreaker own;
    mb_init(&own, SEM_THRESHOLD, (int64_t)p->recovery_ms * 1000000);
    for (int last = 0;;) {
        int seq = atomic_load(&p->seq[me]);
        if (seq == last) {
            sleep_us(20);
            continue;
        }
        if (p->op[me] == OP_QUIT)
            _exit(0);
        cb_ticket t = c ? cb_allow(c) : (cb_ticket){mb_allow(&own)};
        unsigned kind = t.word & 0xff;
        if (p->op[me] == OP_FAIL && kind == CB_TICKET_ALLOWED) {
            if (c)
                cb_record(c, t, CB_FAILURE);
            else
                mb_record(&own, kind, CB_FAILURE);
        }
        p->reply[me] = kind;
        atomic_store(&p->ack[me], seq); /* seq_cst: reply is visible first */
        last = seq;
    }
}

static unsigned sem_cmd(struct sem_page *p, int w, int op)
{
    p->op[w] = op;
    int seq = atomic_fetch_add(&p->seq[w], 1) + 1; /* seq_cst: op is visible first */
    for (int64_t deadline = mono_ns() + 2000000000; atomic_load(&p->ack[w]) != seq;) {
        if (op == OP_QUIT || mono_ns() > deadline)
            return CB_TICKET_REJECTED;
        sleep_us(10);
    }
    return p->reply[w];
}

/* Failures, dealt to the workers in turn, until every worker rejects;
 * then, after the recovery timeout, one check per worker: probes admitted. */
static int sem_run(cb_circuit *c, int n, int recovery_ms, int *fails, int *probes)
{
    struct sem_page *p = mmap(NULL, sizeof *p, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    p->recovery_ms = recovery_ms;
    int started = 0;
    for (; started < n; started++) {
        pid_t pid = fork_worker();
        if (pid < 0)
            break;
        if (pid == 0)
            sem_worker(c, p, started);
    }
    int all = 0;
    *fails = *probes = 0;
    for (int i = 0; started == n && !all && i < 4 * n * SEM_THRESHOLD; i++) {
        *fails += sem_cmd(p, i % n, OP_FAIL) == CB_TICKET_ALLOWED;
        sleep_us(3000); /* cbd: the doorbell woke the daemon; let it drain and publish */
        all = 1;
        for (int w = 0; w < n && all; w++)
            all = sem_cmd(p, w, OP_CHECK) == CB_TICKET_REJECTED;
    }
    if (all) {
        sleep_us((recovery_ms + 300) * 1000L);
        for (int w = 0; w < n; w++)
            *probes += sem_cmd(p, w, OP_CHECK) == CB_TICKET_PROBE;
    }
    for (int w = 0; w < started; w++)
        sem_cmd(p, w, OP_QUIT);
    while (wait(NULL) > 0)
        ;
    munmap(p, sizeof *p);
    return all && started == n ? 0 : -1;
}

/* ---- setup ----------------------------------------------------------------------------------- */

static int get_circuit(struct bench *b, const char *what, uint32_t threshold, uint32_t recovery_ms,
                       uint32_t lease_ms, cb_circuit **out)
{
    char name[CB_NAME_MAX + 1];
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = threshold;
    cfg.success_threshold = 1;
    cfg.recovery_timeout_ms = recovery_ms;
    cfg.probe_lease_ms = lease_ms;
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

/* Read-only views of the lanes region (to see lanes drained) and of the
 * state header (the daemon's pid). */
static int map_regions(struct bench *b)
{
    char names[2][CB_SHM_NAME_MAX];
    const void *maps[2];
    cb__shm_names(b->instance, names[0], names[1]);
    for (int i = 0; i < 2; i++) {
        struct stat st;
        int fd = shm_open(names[i], O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0 || fstat(fd, &st) != 0) {
            fprintf(stderr, "cb_bench: cannot open %s: %s\n", names[i], strerror(errno));
            return -1;
        }
        size_t len = i == 0 ? CB_SEG_HEADER_SIZE : (size_t)st.st_size;
        void *m = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (m == MAP_FAILED || (i == 1 && cb__lanes_header_check(m, (uint64_t)st.st_size) != 0)) {
            fprintf(stderr, "cb_bench: %s is not a cbd region\n", names[i]);
            return -1;
        }
        maps[i] = m;
    }
    b->seg = maps[0];
    b->lanes = maps[1];
    return 0;
}

/* A circuit that trips on one failure: `open` stays OPEN for 10 minutes;
 * `half` recovers after 20 ms and its one probe is taken and never
 * reported (10-minute lease), so its checks take the HALF_OPEN path and
 * find no permit left. */
static int make_open_and_half(struct bench *b)
{
    if (get_circuit(b, "open", 1, 600000, 0, &b->open) < 0 || get_circuit(b, "half", 1, 20, 600000, &b->half) < 0)
        return -1;
    cb_record(b->open, cb_allow(b->open), CB_FAILURE);
    cb_record(b->half, cb_allow(b->half), CB_FAILURE);
    if (wait_ticket(b->open, CB_TICKET_REJECTED, NULL) < 0 || wait_ticket(b->half, CB_TICKET_PROBE, &b->half_probe) < 0) {
        fprintf(stderr, "cb_bench: a circuit did not open (or go HALF_OPEN) within 5 s of its tripping failure\n");
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
    mb_init(&b->mb, 1000000, 30 * 1000000000LL);
    if (map_floor_word(b) < 0 || map_regions(b) < 0 || get_circuit(b, "closed", 1000000, 30000, 0, &b->closed) < 0)
        return -1;
    if (b->o.mode == MODE_THROUGHPUT)
        return 0;
    if (get_circuit(b, "trip", 1, TRIP_RECOVERY_MS, 0, &b->trip) < 0)
        return -1;
    if (b->o.trip_only)
        return 0;
    return make_open_and_half(b) < 0 ? -1 : 0;
}

static int measure_semantics(struct bench *b)
{
    int points = b->o.quick ? 2 : SCALE_POINTS;
    /* Long enough that no breaker recovers before the last worker trips. */
    int recovery_ms = b->o.quick ? 200 : 1000;
    for (int i = 0; i < points; i++) {
        char what[32];
        cb_circuit *c;
        snprintf(what, sizeof what, "sem%d", scale_n[i]);
        if (get_circuit(b, what, SEM_THRESHOLD, (uint32_t)recovery_ms, 0, &c) < 0 ||
            sem_run(c, scale_n[i], recovery_ms, &b->sem_fail[0][i], &b->sem_probes[0][i]) < 0 ||
            sem_run(NULL, scale_n[i], recovery_ms, &b->sem_fail[1][i], &b->sem_probes[1][i]) < 0) {
            fprintf(stderr, "cb_bench: semantics with %d processes did not complete\n", scale_n[i]);
            return -1;
        }
    }
    b->sem_ran = points;
    return 0;
}

/* ---- daemon throughput ---------------------------------------------------------------------- */

static _Atomic int tput_stop;

struct tput_producer_arg {
    cb_circuit *c;
    bool latency; /* cb_record_latency (a slow-call rule reads it) instead of cb_record */
};

static void *tput_producer(void *arg)
{
    const struct tput_producer_arg *a = arg;
    cb_ticket t = cb_allow(a->c);
    while (!atomic_load_explicit(&tput_stop, memory_order_relaxed))
        for (int k = 0; k < 256; k++) {
            if (a->latency)
                cb_record_latency(a->c, t, CB_SUCCESS, 1000);
            else
                cb_record(a->c, t, CB_SUCCESS);
        }
    return NULL;
}

/* One producer thread floods outcomes of c; the main thread samples what
 * the daemon consumed from its lane (head) and the daemon's CPU time into
 * r[wall] and r[cpu]. Returns the daemon's share of a core, or < 0. */
static double measure_drain(struct bench *b, cb_circuit *c, bool latency, int wall_r, int cpu_r)
{
    pthread_t th;
    pid_t dpid = (pid_t)atomic_load(&b->seg->daemon_pid);
    struct tput_producer_arg arg = {c, latency};
    atomic_store(&tput_stop, 0);
    if (pthread_create(&th, NULL, tput_producer, &arg) != 0)
        return -1;
    int reps = b->o.quick ? 2 : 9, got = 0, got_cpu = 0;
    double wall[16], cpu[16], share = 0;
    sleep_us(100000); /* the producer owns its lane and the daemon is busy */
    for (int r = 0; r < reps; r++) {
        uint64_t h0 = own_lanes_sum(b, false);
        double c0 = proc_cpu_s(dpid);
        int64_t t0 = mono_ns();
        sleep_us(b->o.quick ? 50000 : 500000);
        uint64_t h1 = own_lanes_sum(b, false);
        double c1 = proc_cpu_s(dpid), secs = (double)(mono_ns() - t0) / 1e9;
        wall[got++] = (double)(h1 - h0) / secs;
        if (c0 >= 0 && c1 > c0) {
            cpu[got_cpu++] = (double)(h1 - h0) / (c1 - c0);
            share += (c1 - c0) / secs;
        }
    }
    atomic_store(&tput_stop, 1);
    pthread_join(th, NULL);
    summarise(&b->r[wall_r], wall, got);
    if (got_cpu == 0)
        return -1;
    summarise(&b->r[cpu_r], cpu, got_cpu);
    return share / got_cpu;
}

/* The drain rate for a circuit of Powertools' rule, then for one with a
 * rate window and a slow-call rule (each outcome then also goes through
 * the window, with its duration). */
static int measure_throughput(struct bench *b)
{
    cb_circuit *c, *w;
    char name[CB_NAME_MAX + 1];
    cb_config cfg;
    if (get_circuit(b, "tput", 1000000, 30000, 0, &c) < 0)
        return -1;
    b->tput_cpu_share = measure_drain(b, c, false, R_TPUT_WALL, R_TPUT_CPU);
    cb_config_init(&cfg);
    cfg.sliding_window_type = 1;
    cfg.sliding_window_size = 1000;
    cfg.minimum_number_of_calls = 1000;
    cfg.failure_rate_threshold = 50;
    cfg.slow_call_duration_threshold_ms = 60000;
    cfg.slow_call_rate_threshold = 50;
    snprintf(name, sizeof name, "bench.%d.tput-window", (int)getpid());
    int rc = cb_circuit_get(b->client, name, &cfg, &w);
    if (rc < 0) {
        fprintf(stderr, "cb_bench: cannot register circuit '%s': %s\n", name, cb_strerror(rc));
        return -1;
    }
    b->tput_window_cpu_share = measure_drain(b, w, true, R_TPUT_WIN_WALL, R_TPUT_WIN_CPU);
    return b->tput_cpu_share >= 0 && b->tput_window_cpu_share >= 0 ? 0 : -1;
}

/* ---- instruction counts (run under callgrind) ----------------------------------------------- */

#define INSTR_FN(name, body)                                                                        \
    __attribute__((noinline)) static void instr_##name(struct bench *b)                           \
    {                                                                                               \
        body;                                                                                       \
    }
INSTR_FN(bare_load, sink += batch_bare_load(b, INSTR_CALLS))
INSTR_FN(empty_call, sink += batch_empty_call(b, INSTR_CALLS))
INSTR_FN(allow_closed, sink += batch_allow_closed(b, INSTR_CALLS))
INSTR_FN(allow_open, sink += batch_allow_open(b, INSTR_CALLS))
INSTR_FN(allow_half_open, sink += batch_allow_half(b, INSTR_CALLS))
INSTR_FN(mutex_allow, sink += batch_mutex_allow(b, INSTR_CALLS))
INSTR_FN(record, drained_batch(b, R_RECORD, INSTR_CALLS, cb_allow(b->closed)))
INSTR_FN(cb_call, drained_batch(b, R_CB_CALL, INSTR_CALLS, cb_allow(b->closed)))
INSTR_FN(mutex_record, drained_batch(b, R_MUTEX_RECORD, INSTR_CALLS, cb_allow(b->closed)))

/* Each instr_* runs INSTR_CALLS calls once: callgrind's inclusive count of
 * instr_X divided by INSTR_CALLS is X's cost per call, loop included. */
static int run_instr(struct bench *b)
{
    cb_record(b->closed, cb_allow(b->closed), CB_SUCCESS); /* claim the lane outside the counts */
    instr_bare_load(b);
    instr_empty_call(b);
    instr_allow_closed(b);
    instr_allow_open(b);
    instr_allow_half_open(b);
    instr_mutex_allow(b);
    if (wait_drained(b) < 0)
        return -1;
    instr_record(b);
    if (wait_drained(b) < 0)
        return -1;
    instr_cb_call(b);
    instr_mutex_record(b);
    printf("cb_bench: instr_* functions ran %u calls each\n", INSTR_CALLS);
    return 0;
}

/* ---- report ---------------------------------------------------------------------------------- */

static void print_table(const struct bench *b)
{
    const struct result *r = b->r;
    printf("cb_bench: libcb %s, instance %s, %ld CPUs, %s\n\n", cb_version(), b->instance,
           sysconf(_SC_NPROCESSORS_ONLN), b->o.quick ? "--quick smoke run: figures are not meaningful" : "full run");
    printf("| measurement | median | p99 | samples |\n|---|---|---|---|\n");
    for (int i = 0; i < R_COUNT; i++)
        if (r[i].ran)
            printf("| %s | %.4g %s | %.4g %s | %d |\n", r[i].label, r[i].median, r[i].unit, r[i].p99, r[i].unit,
                   r[i].samples);
    if (b->r[R_TRIP_SPIN].ran || b->r[R_TRIP_PACED].ran) {
        printf("\ntrip latency, cbd under %s (us):\n| workers | p50 | p99 | max | runs |\n|---|---|---|---|---|\n",
               b->daemon_sched);
        for (int i = R_TRIP_SPIN; i <= R_TRIP_PACED_FIRST; i++)
            if (r[i].ran)
                printf("| %s | %.0f | %.0f | %.0f | %d |\n", r[i].label, r[i].median, r[i].p99, r[i].q[N_QUANT - 1],
                       r[i].samples);
    }
    if (b->scale_one[0][0] > 0) {
        printf("\n| processes | checks/s, one circuit | checks/s, a circuit each |\n|---|---|---|\n");
        for (int i = 0; i < SCALE_POINTS; i++)
            printf("| %d | %.3g | %.3g |\n", scale_n[i], b->scale_one[i][0], b->scale_many[i][0]);
    }
    if (b->sem_ran) {
        printf("\n| processes | failures until all reject: cbd / in-process | probes in HALF_OPEN: cbd / "
               "in-process |\n|---|---|---|\n");
        for (int i = 0; i < b->sem_ran; i++)
            printf("| %d | %d / %d | %d / %d |\n", scale_n[i], b->sem_fail[0][i], b->sem_fail[1][i],
                   b->sem_probes[0][i], b->sem_probes[1][i]);
    }
}


static void json_scaling(FILE *f, const double (*v)[2]) /* SCALE_POINTS rows */
{
    fprintf(f, "[");
    for (int i = 0; i < SCALE_POINTS; i++)
        fprintf(f, "%s{\"processes\": %d, \"median\": %.6g, \"lowest\": %.6g}", i ? ", " : "", scale_n[i], v[i][0],
                v[i][1]);
    fprintf(f, "]");
}

static void json_semantics(FILE *f, const struct bench *b, int impl)
{
    fprintf(f, "[");
    for (int i = 0; i < b->sem_ran; i++)
        fprintf(f, "%s{\"processes\": %d, \"failures_to_trip_all\": %d, \"probes_in_half_open\": %d}", i ? ", " : "",
                scale_n[i], b->sem_fail[impl][i], b->sem_probes[impl][i]);
    fprintf(f, "]");
}

static int write_json(const struct bench *b, const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "cb_bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"libcb_version\": \"%s\",\n  \"quick\": %s,\n  \"cpus\": %ld,\n", cb_version(),
            b->o.quick ? "true" : "false", sysconf(_SC_NPROCESSORS_ONLN));
    fprintf(f, "  \"batches\": %d,\n  \"calls_per_batch\": %llu,\n  \"record_batches\": %d,\n", b->o.batches,
            (unsigned long long)b->o.batch_calls, b->o.record_batches);
    fprintf(f, "  \"record_batch_events\": %u,\n  \"trip_runs\": %d,\n  \"trip_spin_workers\": %d,\n",
            b->lanes->lane_capacity / 2, b->o.trip_runs, b->o.spin_workers);
    fprintf(f, "  \"trip_paced_workers\": %d,\n  \"trip_pace_us\": %d,\n  \"failed_runs\": %d,\n", b->o.paced_workers,
            PACE_US, b->failed_runs);
    if (b->daemon_sched[0])
        fprintf(f, "  \"trip_daemon_sched\": \"%s\",\n", b->daemon_sched);
    fprintf(f, "  \"scale_reps\": %d,\n  \"scale_seconds\": %.3f,\n", b->o.scale_reps, (double)b->o.scale_ns / 1e9);
    if (b->tput_cpu_share > 0)
        fprintf(f, "  \"daemon_cpu_share\": %.4f,\n", b->tput_cpu_share);
    if (b->tput_window_cpu_share > 0)
        fprintf(f, "  \"daemon_cpu_share_window\": %.4f,\n", b->tput_window_cpu_share);
    if (b->scale_one[0][0] > 0) {
        fprintf(f, "  \"scaling_one_circuit\": ");
        json_scaling(f, b->scale_one);
        fprintf(f, ",\n  \"scaling_circuit_each\": ");
        json_scaling(f, b->scale_many);
        fprintf(f, ",\n");
    }
    if (b->sem_ran) {
        fprintf(f, "  \"semantics_threshold\": %d,\n  \"semantics_cbd\": ", SEM_THRESHOLD);
        json_semantics(f, b, 0);
        fprintf(f, ",\n  \"semantics_in_process\": ");
        json_semantics(f, b, 1);
        fprintf(f, ",\n");
    }
    fprintf(f, "  \"results\": {\n");
    int last = R_COUNT - 1;
    while (last > 0 && !b->r[last].ran)
        last--;
    for (int i = 0; i <= last; i++)
        if (b->r[i].ran)
            json_result(f, &b->r[i], i != last);
    fprintf(f, "  }\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f, "usage: cb_bench [--quick] [--throughput | --instr] [--json FILE] [--instance NAME]\n"
               "                [--spin-workers M] [--paced-workers M] [--trip-runs N] [--trip-only | --micro-only]\n"
               "  needs a running cbd for the instance (default: $CB_INSTANCE, else \"default\");\n"
               "  bench/run.sh starts throwaway ones and runs everything.\n"
               "  --trip-only: only the trip latency (and the pipe wakeup for scale).\n"
               "  --micro-only: only the per-call figures (an A/B of a hot-path change).\n");
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

/* Full: 201 interleaved batches of 1M calls, 300 drained rounds, 200 trips
 * per worker kind (p99 is then the second worst), 5 x 0.2 s per scaling
 * point. Quick: a few of each. */
static void set_counts(struct opts *o)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    o->batches = o->quick ? 3 : 201;
    o->batch_calls = o->quick ? 1000 : 1000000;
    o->record_batches = o->quick ? 3 : 300;
    o->scale_reps = o->quick ? 1 : 5;
    o->scale_ns = o->quick ? 5000000 : 200000000;
    if (o->spin_workers == 0) /* one spinner per CPU: cbd competes with them, the worst case */
        o->spin_workers = o->quick ? 2 : (int)(cpus < 2 ? 2 : cpus > MAX_WORKERS ? MAX_WORKERS : cpus);
    if (o->paced_workers == 0) /* a small prefork pool */
        o->paced_workers = o->quick ? 2 : 8;
    if (o->trip_runs == 0)
        o->trip_runs = o->quick ? 3 : 200;
}

static void parse_args(struct opts *o, int argc, char **argv)
{
    static const struct option longs[] = {
        {"quick", no_argument, NULL, 'q'},          {"throughput", no_argument, NULL, 'T'},
        {"instr", no_argument, NULL, 'I'},          {"json", required_argument, NULL, 'j'},
        {"instance", required_argument, NULL, 'i'}, {"spin-workers", required_argument, NULL, 's'},
        {"paced-workers", required_argument, NULL, 'p'}, {"trip-runs", required_argument, NULL, 'r'},
        {"trip-only", no_argument, NULL, 't'},      {"micro-only", no_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "qTIj:i:s:p:r:tmh", longs, NULL)) != -1) {
        switch (c) {
        case 'q': o->quick = 1; break;
        case 'T': o->mode = MODE_THROUGHPUT; break;
        case 'I': o->mode = MODE_INSTR; break;
        case 'j': o->json = optarg; break;
        case 'i': o->instance = optarg; break;
        case 's': o->spin_workers = parse_int("--spin-workers", optarg, 1, MAX_WORKERS); break;
        case 'p': o->paced_workers = parse_int("--paced-workers", optarg, 1, MAX_WORKERS); break;
        case 'r': o->trip_runs = parse_int("--trip-runs", optarg, 1, 100000); break;
        case 't': o->trip_only = 1; break;
        case 'm': o->micro_only = 1; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind != argc) {
        usage(stderr);
        exit(2);
    }
    set_counts(o);
}

/* The trip part: a wakeup for scale, then trips watched by spinning and
 * by paced workers. */
static int run_trip(struct bench *b)
{
    describe_daemon_sched(b);
    int rc = measure_wakeup(b);
    rc |= measure_trip(b, R_TRIP_SPIN, R_TRIP_SPIN_DRAIN, R_TRIP_SPIN_FIRST, b->o.spin_workers, 0);
    rc |= measure_trip(b, R_TRIP_PACED, R_TRIP_PACED_DRAIN, R_TRIP_PACED_FIRST, b->o.paced_workers, PACE_US);
    for (int i = R_WAKE; i <= R_TRIP_PACED; i++)
        if (!b->r[i].ran)
            rc = -1;
    return rc;
}

/* The per-call figures: interleaved and drained batches. */
static int run_micro(struct bench *b)
{
    int rc = measure_batches(b);
    rc |= measure_drained(b);
    for (int i = 0; i <= R_MUTEX_RECORD; i++)
        if (!b->r[i].ran)
            rc = -1;
    return rc;
}

static int run_main(struct bench *b)
{
    cb_circuit *many[MAX_WORKERS];
    for (int w = 0; w < scale_n[SCALE_POINTS - 1]; w++) {
        char what[32];
        snprintf(what, sizeof what, "scale%d", w);
        if (get_circuit(b, what, 1000000, 30000, 0, &many[w]) < 0)
            return -1;
    }
    int rc = measure_batches(b);
    rc |= measure_drained(b);
    rc |= measure_scaling(b, many, b->scale_one, true);
    rc |= measure_scaling(b, many, b->scale_many, false);
    rc |= measure_semantics(b);
    rc |= run_trip(b);
    for (int i = 0; i <= R_TRIP_PACED; i++)
        if (!b->r[i].ran)
            rc = -1;
    return rc;
}

int main(int argc, char **argv)
{
    static struct bench b = {
        .r = {[R_BARE] = {.key = "bare_load", .label = "bare acquire load (shm page)", .unit = "ns"},
              [R_CALL] = {.key = "empty_call", .label = "empty non-inlined call", .unit = "ns"},
              [R_ALLOW_CLOSED] = {.key = "allow_closed", .label = "cb_allow, CLOSED", .unit = "ns"},
              [R_ALLOW_OPEN] = {.key = "allow_open", .label = "cb_allow, OPEN", .unit = "ns"},
              [R_ALLOW_HALF] = {.key = "allow_half_open", .label = "cb_allow, HALF_OPEN (no permit left)", .unit = "ns"},
              [R_MUTEX_ALLOW] = {.key = "inproc_allow", .label = "in-process mutex breaker: allow", .unit = "ns"},
              [R_RECORD] = {.key = "record", .label = "cb_record(SUCCESS)", .unit = "ns"},
              [R_RECORD_LATENCY] = {.key = "record_latency", .label = "cb_record_latency(SUCCESS, measured)",
                                    .unit = "ns"},
              [R_CB_CALL] = {.key = "cb_call", .label = "cb_call (empty fn, success)", .unit = "ns"},
              [R_MUTEX_RECORD] = {.key = "inproc_record", .label = "in-process mutex breaker: record", .unit = "ns"},
              [R_WAKE] = {.key = "process_wakeup", .label = "process wakeup through a pipe", .unit = "us"},
              [R_TRIP_SPIN] = {.key = "trip_spin", .label = "trip latency, workers spinning", .unit = "us"},
              [R_TRIP_PACED] = {.key = "trip_paced", .label = "trip latency, workers pausing 50 us per check",
                                .unit = "us"},
              [R_TRIP_SPIN_DRAIN] = {.key = "trip_spin_drain",
                                     .label = "trip, workers spinning: failure recorded -> cbd begins its drain",
                                     .unit = "us"},
              [R_TRIP_PACED_DRAIN] = {.key = "trip_paced_drain",
                                      .label = "trip, workers pausing: failure recorded -> cbd begins its drain",
                                      .unit = "us"},
              [R_TRIP_SPIN_FIRST] = {.key = "trip_spin_first",
                                     .label = "trip, workers spinning: failure recorded -> first worker rejects",
                                     .unit = "us"},
              [R_TRIP_PACED_FIRST] = {.key = "trip_paced_first",
                                      .label = "trip, workers pausing: failure recorded -> first worker rejects",
                                      .unit = "us"},
              [R_TPUT_WALL] = {.key = "drain_wall", .label = "daemon drain, events per second", .unit = "ev/s"},
              [R_TPUT_CPU] = {.key = "drain_cpu", .label = "daemon drain, events per daemon CPU second",
                              .unit = "ev/s"},
              [R_TPUT_WIN_WALL] = {.key = "drain_window_wall",
                                   .label = "daemon drain, window and slow-call rules, events per second",
                                   .unit = "ev/s"},
              [R_TPUT_WIN_CPU] = {.key = "drain_window_cpu",
                                  .label = "daemon drain, window and slow-call rules, events per daemon CPU second",
                                  .unit = "ev/s"}},
    };
    parse_args(&b.o, argc, argv);
    const char *inst = b.o.instance ? b.o.instance : getenv("CB_INSTANCE");
    snprintf(b.instance, sizeof b.instance, "%s", inst && *inst ? inst : "default");
    if (setup(&b) < 0)
        return 1;
    int rc = b.o.mode == MODE_INSTR        ? run_instr(&b)
             : b.o.mode == MODE_THROUGHPUT ? measure_throughput(&b)
             : b.o.trip_only               ? run_trip(&b)
             : b.o.micro_only              ? run_micro(&b)
                                           : run_main(&b);
    if (b.o.mode != MODE_INSTR)
        print_table(&b);
    if (b.o.json && b.o.mode != MODE_INSTR && write_json(&b, b.o.json) < 0)
        rc = -1;
    cb_client_close(b.client);
    return rc == 0 ? 0 : 1;
}
