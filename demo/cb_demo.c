/*
 * cb_demo.c - six prefork workers share one circuit breaker.
 *
 *     cb_demo [INSTANCE]        (default: $CB_INSTANCE, else "default")
 *
 * The parent plays a prefork master: it opens one libcb client, registers
 * the circuit "payments" (trip after 5 consecutive failures, stay OPEN for
 * 1.5 s, close after 3 probe successes) and forks six workers that inherit
 * the client. Each worker serves a request every 3 ms (staggered, so the
 * host sees one every 0.5 ms): ask the breaker (cb_allow), call a simulated
 * downstream that takes 1 ms, report the outcome (cb_record), or serve a
 * fallback when rejected.
 *
 * The story, driven by the parent through a flag in a MAP_SHARED page:
 * the downstream is healthy, goes hard down at +50 ms, and comes back
 * recovery + 0.5 s later. So the breaker trips once for the whole host, the
 * first half-open probe meets a dead downstream and reopens the circuit,
 * and the second recovery closes it after three probe successes - never
 * more than one probe in flight.
 *
 * Observation never goes through the breaker itself: the parent reads the
 * daemon's transitions from the segment's history (cb_next_transition) and
 * the workers send notable moments (first rejection, probe taken, probe
 * result) through a pipe, one write of a small struct each (atomic below
 * PIPE_BUF). Per-worker counters live in the shared page. Everything is
 * timestamped where it happens and printed at the end as one sorted
 * timeline, because interleaved live output from seven processes is
 * unreadable.
 *
 * Exit status: 0 when the story happened (exactly one trip, at most
 * half_open_max_probes probes at a time, closed again), 1 otherwise.
 */
#define _GNU_SOURCE
#include <cb.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 6
#define CIRCUIT "payments"
#define DOWN_AT_MS 50          /* the downstream dies this long after the start */
#define BACK_AFTER_OPEN_MS 500 /* ... and returns this long after the first HALF_OPEN is due */
#define CALL_MS 1              /* one downstream call, healthy or failing */
#define REQUEST_EVERY_US 3000  /* each worker gets a request this often (staggered) */
#define TAIL_MS 200            /* healthy traffic shown after the final close */
#define MAX_EVENTS 4096

/* What a worker tells the parent. */
enum worker_event_kind {
    WEV_REJECTING,  /* this worker's tickets turned from allowed to rejected */
    WEV_CALLING,    /* ... and from rejected back to allowed */
    WEV_PROBE,      /* it holds a half-open probe ticket */
    WEV_PROBE_DONE, /* the probe call returned; value = 1 success, 0 failure */
};
struct worker_event {
    int32_t worker, kind;
    int64_t t_ns; /* CLOCK_MONOTONIC */
    int64_t value;
    int64_t others_rejected; /* WEV_PROBE_DONE: calls the other workers rejected during the probe */
};

/* The page the parent and the workers share (mapped before fork). Each
 * worker writes only its own counters; relaxed atomics, since readers want
 * totals, not ordering. The flags carry no data with them: a flip only
 * has to be seen soon, so they need no pairing either. */
struct worker_counters {
    _Atomic uint64_t ok, failed, rejected, probes, probe_failures;
};
struct shared_page {
    _Atomic int downstream_up;
    _Atomic int stop;
    _Atomic int probes_in_flight, probes_max;
    struct worker_counters w[WORKERS];
};

/* One line of the timeline, from any source. */
enum tl_kind { TL_DOWN, TL_UP, TL_TRANSITION, TL_WORKER };
struct tl_event {
    int64_t t_ns;
    unsigned order; /* arrival order: keeps sorting stable */
    enum tl_kind kind;
    struct worker_event w;
    cb_transition tr;
};

struct demo {
    cb_client *client;
    cb_circuit *circuit;
    cb_config cfg; /* the configuration in force (read back) */
    struct shared_page *sh;
    int pipe_rd;
    pid_t pids[WORKERS];
    int64_t t0, realtime_offset; /* realtime - monotonic, to place transitions */
    struct tl_event ev[MAX_EVENTS];
    unsigned n_ev, lost_ev;
    unsigned trips, half_opens, reopens, closes, overruns;
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *state_name(cb_state s)
{
    switch (s) {
    case CB_CLOSED: return "CLOSED";
    case CB_OPEN: return "OPEN";
    case CB_HALF_OPEN: return "HALF_OPEN";
    }
    return "?";
}

/* ---- the worker side ------------------------------------------------------ */

/* The simulated downstream: a 1 ms call that fails while the parent holds it down. */
static int call_downstream(struct shared_page *sh)
{
    sleep_ms(CALL_MS);
    return atomic_load_explicit(&sh->downstream_up, memory_order_relaxed) ? 0 : -1;
}

static void tell_parent(int fd, int worker, int kind, int64_t value, int64_t others_rejected)
{
    struct worker_event e = {worker, kind, mono_ns(), value, others_rejected};
    /* One write below PIPE_BUF is atomic; the parent drains continuously.
     * A failed write means the parent is gone: PDEATHSIG ends us anyway. */
    if (write(fd, &e, sizeof e) != (ssize_t)sizeof e)
        _exit(1);
}

static uint64_t rejected_by_others(struct shared_page *sh, int me)
{
    uint64_t sum = 0;
    for (int i = 0; i < WORKERS; i++)
        if (i != me)
            sum += atomic_load_explicit(&sh->w[i].rejected, memory_order_relaxed);
    return sum;
}

/* A probe call: counts probes in flight host-wide, so the summary can show
 * that the breaker never let more than the configured number run at once. */
static void run_probe(cb_circuit *c, cb_ticket t, struct shared_page *sh, int me, int fd)
{
    struct worker_counters *k = &sh->w[me];
    int inflight = atomic_fetch_add(&sh->probes_in_flight, 1) + 1;
    int max = atomic_load(&sh->probes_max);
    while (inflight > max && !atomic_compare_exchange_weak(&sh->probes_max, &max, inflight))
        ;
    atomic_fetch_add_explicit(&k->probes, 1, memory_order_relaxed);
    uint64_t others_before = rejected_by_others(sh, me);
    tell_parent(fd, me, WEV_PROBE, 0, 0);
    int ok = call_downstream(sh) == 0;
    /* Leave the in-flight count before reporting: once the daemon has our
     * result it may hand the permit to another worker at once. */
    atomic_fetch_sub(&sh->probes_in_flight, 1);
    if (!ok)
        atomic_fetch_add_explicit(&k->probe_failures, 1, memory_order_relaxed);
    tell_parent(fd, me, WEV_PROBE_DONE, ok, (int64_t)(rejected_by_others(sh, me) - others_before));
    cb_record(c, t, ok ? CB_SUCCESS : CB_FAILURE);
}

/* Sleep until the next request arrives: a fixed schedule per worker,
 * offset by its number, skipping arrivals missed while a call ran. */
static void next_request(struct timespec *at, int64_t now_ns)
{
    int64_t t;
    do {
        t = (int64_t)at->tv_sec * 1000000000 + at->tv_nsec + REQUEST_EVERY_US * 1000;
        at->tv_sec = t / 1000000000;
        at->tv_nsec = t % 1000000000;
    } while (t < now_ns);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, at, NULL) == EINTR)
        ;
}

static void worker_main(cb_circuit *c, struct shared_page *sh, int me, int fd)
{
    struct worker_counters *k = &sh->w[me];
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_nsec += (long)me * REQUEST_EVERY_US * 1000 / WORKERS; /* stagger: at most 2.5 ms */
    if (at.tv_nsec >= 1000000000)
        at.tv_sec++, at.tv_nsec -= 1000000000;
    int rejecting = 0;
    for (; !atomic_load_explicit(&sh->stop, memory_order_relaxed); next_request(&at, mono_ns())) {
        cb_ticket t = cb_allow(c);
        if (!cb_permitted(t)) {
            atomic_fetch_add_explicit(&k->rejected, 1, memory_order_relaxed);
            if (!rejecting)
                tell_parent(fd, me, WEV_REJECTING, 0, 0);
            rejecting = 1; /* served the fallback */
            continue;
        }
        if (cb_ticket_is_probe(t)) {
            run_probe(c, t, sh, me, fd);
            continue;
        }
        if (rejecting)
            tell_parent(fd, me, WEV_CALLING, 0, 0);
        rejecting = 0;
        int rc = call_downstream(sh);
        atomic_fetch_add_explicit(rc == 0 ? &k->ok : &k->failed, 1, memory_order_relaxed);
        cb_record(c, t, rc == 0 ? CB_SUCCESS : CB_FAILURE);
    }
    _exit(0);
}

static int start_workers(struct demo *d)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        perror("cb_demo: pipe");
        return -1;
    }
    for (int i = 0; i < WORKERS; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("cb_demo: fork");
            return -1;
        }
        if (pid == 0) {
            close(fds[0]);
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the demo */
            worker_main(d->circuit, d->sh, i, fds[1]);
        }
        d->pids[i] = pid;
    }
    close(fds[1]);
    d->pipe_rd = fds[0];
    return fcntl(d->pipe_rd, F_SETFL, O_NONBLOCK);
}

static void stop_workers(struct demo *d)
{
    atomic_store(&d->sh->stop, 1);
    for (int i = 0; i < WORKERS; i++)
        if (d->pids[i] > 0)
            waitpid(d->pids[i], NULL, 0);
}

/* ---- the parent: collect ------------------------------------------------------ */

static struct tl_event *add_event(struct demo *d, enum tl_kind kind, int64_t t_ns)
{
    if (d->n_ev == MAX_EVENTS) {
        d->lost_ev++;
        return NULL;
    }
    struct tl_event *e = &d->ev[d->n_ev];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->t_ns = t_ns;
    e->order = d->n_ev++;
    return e;
}

static void drain_pipe(struct demo *d)
{
    struct worker_event w;
    while (read(d->pipe_rd, &w, sizeof w) == (ssize_t)sizeof w) {
        struct tl_event *e = add_event(d, TL_WORKER, w.t_ns);
        if (e)
            e->w = w;
    }
}

static void count_transition(struct demo *d, const cb_transition *tr)
{
    if (tr->from == CB_CLOSED && tr->to == CB_OPEN)
        d->trips++;
    else if (tr->from == CB_OPEN && tr->to == CB_HALF_OPEN)
        d->half_opens++;
    else if (tr->from == CB_HALF_OPEN && tr->to == CB_OPEN)
        d->reopens++;
    else if (tr->from == CB_HALF_OPEN && tr->to == CB_CLOSED)
        d->closes++;
}

static void read_transitions(struct demo *d)
{
    cb_transition tr;
    int rc;
    while ((rc = cb_next_transition(d->client, &tr)) != 0) {
        if (rc == -EOVERFLOW) {
            d->overruns++;
            continue;
        }
        if (rc < 0)
            break; /* the client lost its segment: the summary will say what is missing */
        if (strcmp(tr.name, CIRCUIT) != 0)
            continue; /* another circuit of a shared daemon */
        /* The daemon stamps transitions with CLOCK_REALTIME; place them on
         * the workers' monotonic clock. */
        int64_t t = tr.time_ns ? tr.time_ns - d->realtime_offset : mono_ns();
        struct tl_event *e = add_event(d, TL_TRANSITION, t);
        if (e)
            e->tr = tr;
        count_transition(d, &tr);
    }
}

/* Run the story: flip the downstream down and up on schedule, collect
 * events until the circuit closed after a half-open (plus a short healthy
 * tail) or a deadline passed. */
static void run_story(struct demo *d)
{
    int64_t ms = 1000000, down_at = d->t0 + DOWN_AT_MS * ms;
    int64_t up_at = down_at + (d->cfg.recovery_timeout_ms + BACK_AFTER_OPEN_MS) * ms;
    int64_t deadline = up_at + (3 * (int64_t)d->cfg.recovery_timeout_ms + 3000) * ms, closed_at = 0;
    int down = 0, up = 0;
    for (int64_t now = mono_ns(); now < deadline; now = mono_ns()) {
        if (!down && now >= down_at) {
            atomic_store(&d->sh->downstream_up, 0);
            add_event(d, TL_DOWN, now);
            down = 1;
        }
        if (!up && now >= up_at) {
            atomic_store(&d->sh->downstream_up, 1);
            add_event(d, TL_UP, now);
            up = 1;
        }
        drain_pipe(d);
        read_transitions(d);
        if (!closed_at && up && d->closes > 0)
            closed_at = now;
        if (closed_at && now - closed_at >= TAIL_MS * ms)
            break;
        usleep(200);
    }
}

/* ---- the parent: tell -------------------------------------------------------- */

static int by_time(const void *a, const void *b)
{
    const struct tl_event *x = a, *y = b;
    if (x->t_ns != y->t_ns)
        return x->t_ns < y->t_ns ? -1 : 1;
    return x->order < y->order ? -1 : 1;
}

static void line(const struct demo *d, int64_t t_ns, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void line(const struct demo *d, int64_t t_ns, const char *fmt, ...)
{
    va_list ap;
    printf("  + %8.1f ms  ", (double)(t_ns - d->t0) / 1e6);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

static void print_transition(const struct demo *d, const struct tl_event *e)
{
    const cb_transition *tr = &e->tr;
    char why[96];
    if (tr->from == CB_CLOSED && tr->to == CB_OPEN)
        snprintf(why, sizeof why, "%u consecutive failures host-wide", tr->failure_count);
    else if (tr->from == CB_OPEN && tr->to == CB_HALF_OPEN)
        snprintf(why, sizeof why, "recovery timeout passed: probes admitted");
    else if (tr->from == CB_HALF_OPEN && tr->to == CB_OPEN)
        snprintf(why, sizeof why, "a probe failed: open for another %.1f s",
                 d->cfg.recovery_timeout_ms / 1000.0);
    else if (tr->from == CB_HALF_OPEN && tr->to == CB_CLOSED)
        snprintf(why, sizeof why, "%u probe successes in a row", d->cfg.success_threshold);
    else
        snprintf(why, sizeof why, "source %d", (int)tr->source);
    line(d, e->t_ns, "%s -> %s   (%s, epoch %u)", state_name(tr->from), state_name(tr->to), why, tr->epoch);
}

/* Replays the sorted events; tracks which workers reject, so it can say
 * when the whole host has stopped (or resumed) calling the downstream. */
struct replay {
    int rejecting[WORKERS], n_rejecting;
    int want_all_reject, want_all_calling;
};

static void print_worker_event(const struct demo *d, struct replay *r, const struct tl_event *e)
{
    const struct worker_event *w = &e->w;
    int n = w->worker + 1;
    switch (w->kind) {
    case WEV_REJECTING:
    case WEV_CALLING:
        r->n_rejecting += (w->kind == WEV_REJECTING) - r->rejecting[w->worker];
        r->rejecting[w->worker] = w->kind == WEV_REJECTING;
        if (r->want_all_reject && r->n_rejecting == WORKERS) {
            line(d, e->t_ns, "all %d workers now reject '%s' (no calls reach the downstream)", WORKERS,
                 CIRCUIT);
            r->want_all_reject = 0;
        }
        if (r->want_all_calling && r->n_rejecting == 0) {
            line(d, e->t_ns, "all %d workers call the downstream again", WORKERS);
            r->want_all_calling = 0;
        }
        break;
    case WEV_PROBE:
        line(d, e->t_ns, "worker %d holds %s", n,
             d->cfg.half_open_max_probes == 1 ? "the single probe" : "a probe");
        break;
    case WEV_PROBE_DONE:
        line(d, e->t_ns, "worker %d's probe %s; the other workers rejected %lld call%s meanwhile", n,
             w->value ? "succeeded" : "failed", (long long)w->others_rejected,
             w->others_rejected == 1 ? "" : "s");
        break;
    }
}

static void print_timeline(struct demo *d)
{
    struct replay r = {0};
    qsort(d->ev, d->n_ev, sizeof d->ev[0], by_time);
    printf("timeline:\n");
    line(d, d->t0, "%d workers calling '%s' (threshold %u, recovery %.1f s, %u probe successes close)",
         WORKERS, CIRCUIT, d->cfg.failure_threshold, d->cfg.recovery_timeout_ms / 1000.0,
         d->cfg.success_threshold);
    for (unsigned i = 0; i < d->n_ev; i++) {
        const struct tl_event *e = &d->ev[i];
        if (e->kind == TL_DOWN)
            line(d, e->t_ns, "downstream goes down (every call fails)");
        else if (e->kind == TL_UP)
            line(d, e->t_ns, "downstream is healthy again");
        else if (e->kind == TL_WORKER)
            print_worker_event(d, &r, e);
        else {
            print_transition(d, e);
            r.want_all_reject = e->tr.from == CB_CLOSED && e->tr.to == CB_OPEN;
            r.want_all_calling = e->tr.to == CB_CLOSED;
        }
    }
    if (d->lost_ev)
        printf("  (%u events did not fit in the timeline)\n", d->lost_ev);
    if (d->overruns)
        printf("  (the transition history overran %u times: some transitions are missing)\n", d->overruns);
}

/* Prints the per-worker table and the facts the story is about; returns
 * 0 when the story happened. */
static int print_summary(const struct demo *d)
{
    uint64_t ok = 0, failed = 0, rejected = 0, probes = 0, probe_failures = 0;
    printf("\n             calls that   succeeded   failed   were rejected   probes\n");
    for (int i = 0; i < WORKERS; i++) {
        const struct worker_counters *k = &d->sh->w[i];
        printf("  worker %d              %9llu %8llu %15llu %8llu\n", i + 1, (unsigned long long)k->ok,
               (unsigned long long)k->failed, (unsigned long long)k->rejected, (unsigned long long)k->probes);
        ok += k->ok, failed += k->failed, rejected += k->rejected;
        probes += k->probes, probe_failures += k->probe_failures;
    }
    printf("  all workers           %9llu %8llu %15llu %8llu\n\n", (unsigned long long)ok,
           (unsigned long long)failed, (unsigned long long)rejected, (unsigned long long)probes);
    printf(
        "failed calls that reached the dead downstream before the trip: %llu (threshold %u; calls already\n"
        "  in flight when it tripped fail too). Six in-process breakers would each need %u: at least %u.\n",
        (unsigned long long)failed, d->cfg.failure_threshold, d->cfg.failure_threshold,
        WORKERS * d->cfg.failure_threshold);
    printf("transitions: CLOSED->OPEN x%u, OPEN->HALF_OPEN x%u, HALF_OPEN->OPEN x%u, HALF_OPEN->CLOSED x%u\n",
           d->trips, d->half_opens, d->reopens, d->closes);
    int max = atomic_load(&d->sh->probes_max);
    printf(
        "probe calls: %llu (%llu failed); at most %d in flight at any moment (half_open_max_probes %u)\n\n",
        (unsigned long long)probes, (unsigned long long)probe_failures, max, d->cfg.half_open_max_probes);

    int tripped = d->trips == 1,
        probed = probes > 0 && max >= 1 && (unsigned)max <= d->cfg.half_open_max_probes,
        closed = d->closes > 0;
    printf("story: one trip host-wide %s, bounded probes %s, closed again %s\n", tripped ? "ok" : "MISSING",
           probed ? "ok" : "MISSING", closed ? "ok" : "MISSING");
    if (!tripped)
        printf("  (saw %u CLOSED -> OPEN transitions, expected exactly 1)\n", d->trips);
    return tripped && probed && closed ? 0 : 1;
}

/* ---- setup ------------------------------------------------------------------- */

static int open_circuit(struct demo *d, const char *instance)
{
    int rc = cb_client_open(&d->client, instance);
    if (rc < 0) {
        fprintf(stderr, "cb_demo: cannot open cbd instance '%s': %s\n",
                instance                ? instance
                : getenv("CB_INSTANCE") ? getenv("CB_INSTANCE")
                                        : "default",
                cb_strerror(rc));
        return -1;
    }
    if (cb_status(d->client) & CB_STATUS_DISABLED) {
        fprintf(stderr, "cb_demo: the breaker is bypassed ($CB_DISABLED): nothing to show\n");
        return -1;
    }
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = 5;
    cfg.recovery_timeout_ms = 1500;
    cfg.success_threshold = 3;
    if ((rc = cb_circuit_get(d->client, CIRCUIT, &cfg, &d->circuit)) < 0) {
        fprintf(stderr, "cb_demo: cannot register circuit '%s': %s\n", CIRCUIT, cb_strerror(rc));
        return -1;
    }
    /* An existing circuit keeps its configuration: tell the story with it. */
    cb_info info;
    if ((rc = cb_info_get(d->circuit, &info)) < 0) {
        fprintf(stderr, "cb_demo: cannot read circuit '%s': %s\n", CIRCUIT, cb_strerror(rc));
        return -1;
    }
    d->cfg = info.config;
    if (info.state != CB_CLOSED)
        fprintf(stderr, "cb_demo: warning: '%s' is %s already; the story may not play out\n", CIRCUIT,
                state_name(info.state));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))) {
        fprintf(stderr, "usage: cb_demo [INSTANCE]   (default: $CB_INSTANCE, else \"default\")\n");
        return argc > 2 ? 2 : 0;
    }
    static struct demo d; /* large (the event buffer): not on the stack */
    if (open_circuit(&d, argc == 2 ? argv[1] : NULL) < 0)
        return 1;
    d.sh = mmap(NULL, sizeof *d.sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (d.sh == MAP_FAILED) {
        perror("cb_demo: mmap");
        return 1;
    }
    atomic_store(&d.sh->downstream_up, 1);
    d.realtime_offset = realtime_ns() - mono_ns();
    d.t0 = mono_ns();
    printf(
        "cb_demo: %d workers share circuit '%s'; the downstream fails for about %.1f s (takes ~%.0f s)\n\n",
        WORKERS, CIRCUIT, (d.cfg.recovery_timeout_ms + BACK_AFTER_OPEN_MS) / 1000.0,
        (DOWN_AT_MS + 2.0 * d.cfg.recovery_timeout_ms + BACK_AFTER_OPEN_MS + TAIL_MS) / 1000.0);
    fflush(stdout); /* or the children inherit the buffered text */
    int rc = start_workers(&d);
    if (rc == 0)
        run_story(&d);
    stop_workers(&d);
    drain_pipe(&d);
    read_transitions(&d);
    if (rc != 0)
        return 1;
    print_timeline(&d);
    rc = print_summary(&d);
    cb_client_close(d.client);
    return rc;
}
