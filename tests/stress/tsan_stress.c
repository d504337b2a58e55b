/*
 * tsan_stress.c - segment.h's shared-memory protocols under real
 * concurrency: for ThreadSanitizer (built with -DCB_TSAN=ON), and as a
 * plain stress test in every other build. Plain C and pthreads, not
 * criterion (whose forking runner TSan cannot follow).
 *
 * One process and one malloc'd segment (a circuit record, its permit word,
 * one lane per worker), with threads standing for the parties that share a
 * real one, each using the protocol of the code it stands for:
 *
 *   daemon (1)   drains every lane as drain.c does (acquire of the tail,
 *                release of the head), gives a probe's permit back as
 *                policy.c's permit_back does, publishes a version per batch
 *                and now and then a transition (CLOSED, OPEN, HALF_OPEN in
 *                turn, paced so every worker makes calls in each state) in
 *                policy.c's order: permit word, version, release store of
 *                the state word; it rewrites the policy fields under
 *                cfg_seq every CFG_EVERY-th batch;
 *   readers (R)  snapshot reads as cb__seg_snapshot does: the state word,
 *                cb_seg_version_try_read, the policy fields under cfg_seq;
 *   workers (W)  cb_allow's decision on the state word (acquire), probe
 *                permits with take_permit's CAS, and every call reported
 *                through the worker's own lane with lane_append's protocol
 *                (plain stores of the event, release store of the tail, the
 *                head reloaded with acquire only when the lane looks full).
 *
 * What is checked (a violation is printed, and the exit status is 1):
 *   - every version read is whole: the daemon derives every field of
 *     version n from n and from the epoch its word carries;
 *   - a reader's versions never go back, and the version read after a
 *     state word is at least that word's epoch (the word is stored after
 *     its version is committed);
 *   - policy fields read without a retry are all of one write;
 *   - a worker that sees HALF_OPEN epoch e sees a permit word of epoch
 *     e or later (stored before the state word);
 *   - no more than MAX_PROBES permits of one epoch are held at once;
 *   - the daemon gets every event a worker appended once, in order and
 *     intact (sequence numbers, check word, kind, outcome, epoch);
 *   - call counts: every rejection and probe a worker counted in its lane
 *     (lanes.c's count_call: CALL_KEYS circuits in turn for CB_LANE_CALL_ENTRIES
 *     entries, so entries change circuits while the daemon folds) is
 *     folded by the daemon (drain.c's fold_calls) once, to the circuit it
 *     was counted for.
 *
 * Usage: tsan_stress [--seconds S] [--workers W] [--readers R]
 *                    [--break versions|permits|lanes]
 * --break makes one party break its protocol on purpose (widening its race
 * with sched_yield), to show the checks catch it: the run must then fail.
 * Prints what every party did; exits 0 only if nothing was violated and
 * every kind of operation happened.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "segment.h"

#define MAX_WORKERS 16
#define MAX_READERS 16
#define LANE_CAPACITY 64u
#define MAX_PROBES 1u /* below the number of workers, so the bound can be exceeded */
#define TRANSITION_EVERY 8u /* versions per transition, at least ... */
#define CALLS_PER_EPOCH 32u /* ... and this many calls per worker in each epoch, so every state is exercised */
#define CFG_EVERY 64u       /* versions per policy rewrite */
#define MAX_REPORTS 20
#define CALL_KEYS 5u        /* circuits the workers count calls of: more than a lane's entries */

enum breakage { BREAK_NONE, BREAK_VERSIONS, BREAK_PERMITS, BREAK_LANES };

static struct {
    struct cb_seg_record *rec;
    _Atomic uint64_t *permit;
    char *lanes; /* workers x stride bytes */
    size_t stride;
    unsigned workers, readers;
    enum breakage breakage;
    _Atomic bool stop_workers, stop_all;
    _Atomic uint64_t violations;
    _Atomic uint64_t held;  /* (epoch << 32) | permits held of that epoch, for the newest epoch seen */
    _Atomic uint64_t progress[MAX_WORKERS]; /* calls made, per worker (paces the daemon's transitions) */
} G;

/* Per-thread tallies, summed at the end (written by their thread only). */
struct tally {
    uint64_t versions, transitions, cfg_writes, permits_returned, drained, drain_batches;
    uint64_t reads, read_retries, cfg_reads, cfg_retries;
    uint64_t calls, probes, rejected, appended, dropped;
    uint64_t counted[CALL_KEYS], uncounted; /* call counts (counts words' units) by circuit */
};

static void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void violation(const char *fmt, ...)
{
    if (atomic_fetch_add(&G.violations, 1) >= MAX_REPORTS)
        return;
    va_list ap;
    va_start(ap, fmt);
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "VIOLATION: %s\n", line);
}

static struct cb_lane *lane_of(unsigned w) { return (struct cb_lane *)(G.lanes + (size_t)w * G.stride); }

/* ---- versions: every field a function of n -------------------------------- */

static unsigned state_of(uint32_t epoch) { return epoch % 3; } /* CLOSED, OPEN, HALF_OPEN, ... */

/* Version n, published while the circuit is at epoch e. */
static struct cb_seg_vdata version_of(uint64_t n, uint32_t e)
{
    return (struct cb_seg_vdata){
        .word = cb_seg_state_word(state_of(e), 0, 0, e),
        .opened_at_ns = (int64_t)(n * 3),
        .open_until_ns = (int64_t)(n * 3 + 7),
        .last_transition_ns = -(int64_t)n,
        .trip_failure_count = e * 5 + 1,
        .failure_streak = (uint32_t)(n ^ 0xabcdefu),
        .probe_successes = e,
        .sync_state = (uint32_t)(n % 4),
        .synced_at = (int64_t)(n * 11),
        .total_successes = n * 13,
        .total_failures = ~n,
        .total_ignored = n << 7,
        .total_stale_events = n * n,
        .applied_pos = n + 5,
        .applied_lane = (uint32_t)(n % 1000),
        .from = (uint8_t)(n % 3),
        .source = (uint8_t)(n % 5),
        .history_seq = n * 2 + 1,
    };
}

/* d is version n of one epoch: its fields agree with n and with its word's epoch. */
static bool version_whole(const struct cb_seg_vdata *d, uint64_t n)
{
    struct cb_seg_vdata w = version_of(n, cb_seg_word_epoch(d->word));
    return d->word == w.word && d->opened_at_ns == w.opened_at_ns && d->open_until_ns == w.open_until_ns &&
           d->last_transition_ns == w.last_transition_ns && d->trip_failure_count == w.trip_failure_count &&
           d->failure_streak == w.failure_streak && d->probe_successes == w.probe_successes &&
           d->sync_state == w.sync_state && d->synced_at == w.synced_at && d->total_successes == w.total_successes &&
           d->total_failures == w.total_failures && d->total_ignored == w.total_ignored &&
           d->total_stale_events == w.total_stale_events && d->applied_pos == w.applied_pos &&
           d->applied_lane == w.applied_lane && d->from == w.from && d->source == w.source &&
           d->history_seq == w.history_seq;
}

static cb_config cfg_of(uint32_t k)
{
    return (cb_config){.failure_threshold = k, .success_threshold = k ^ 0x55u, .half_open_max_probes = k + 2,
                       .recovery_timeout_ms = k * 3, .probe_lease_ms = ~k};
}

/* The broken writer: stamps the copy current first and fills it after,
 * so readers find a valid stamp on fields being rewritten. */
static void publish_fill_after_commit(struct cb_seg_record *r, const struct cb_seg_vdata *d)
{
    uint64_t v = atomic_load_explicit(&r->vseq, memory_order_relaxed) + 1;
    struct cb_seg_version *x = &r->version[v & 1];
    atomic_store_explicit(&x->vseq, v, memory_order_release);
    atomic_store_explicit(&r->vseq, v, memory_order_release);
    struct cb_seg_vdata half = version_of(v - 2, cb_seg_word_epoch(d->word)); /* half of it rewritten ... */
    half.word = d->word;
    half.opened_at_ns = d->opened_at_ns;
    half.total_successes = d->total_successes;
    cb_seg_version_fill(x, &half);
    sched_yield(); /* ... while readers look */
    cb_seg_version_fill(x, d);
}

/* ---- the daemon --------------------------------------------------------- */

/* policy.c's permit_back: one permit back, for this epoch, up to the bound. */
static bool permit_back(uint32_t epoch)
{
    uint64_t w = atomic_load_explicit(G.permit, memory_order_relaxed);
    for (;;) {
        if ((uint32_t)(w >> 32) != epoch || (uint32_t)w >= MAX_PROBES)
            return false;
        if (atomic_compare_exchange_weak_explicit(G.permit, &w, w + 1, memory_order_relaxed, memory_order_relaxed))
            return true;
    }
}

/* drain.c's fold_calls for worker w's lane, into t->counted by key. */
static void fold_calls(unsigned w, struct tally *t)
{
    struct cb_lane *lane = lane_of(w);
    for (unsigned i = 0; i < CB_LANE_CALL_ENTRIES; i++) {
        uint64_t counts = atomic_load_explicit(&lane->calls[i].counts, memory_order_acquire); /* pairs with count_call */
        uint64_t seen = atomic_load_explicit(&lane->calls_seen[i], memory_order_relaxed);
        if (counts == seen)
            continue;
        uint32_t k = (uint32_t)atomic_load_explicit(&lane->calls[i].key, memory_order_relaxed) - 1;
        if (k >= CALL_KEYS)
            violation("lane %u entry %u: counts under key %u, which no worker counts", w, i, k + 1);
        else
            t->counted[k] += counts - seen;
        atomic_store_explicit(&lane->calls_seen[i], counts, memory_order_release); /* the entry may change key */
    }
}

/* drain.c's drain_lane for worker w's lane; expect[w] is the next sequence
 * number that worker appends. */
static void drain_lane(unsigned w, uint32_t *expect, uint32_t now_epoch, struct tally *t)
{
    struct cb_lane *lane = lane_of(w);
    fold_calls(w, t);
    uint64_t tail = atomic_load_explicit(&lane->tail, memory_order_acquire);  /* pairs with the worker's release */
    uint64_t head = atomic_load_explicit(&lane->head, memory_order_relaxed); /* we are its only writer */
    if (tail == head)
        return;
    if (tail - head > LANE_CAPACITY) {
        violation("lane %u: tail %" PRIu64 " ran more than a lane ahead of head %" PRIu64, w, tail, head);
        atomic_store_explicit(&lane->head, tail, memory_order_release);
        return;
    }
    const struct cb_lane_event *events = CB_LANES_EVENTS(lane);
    for (uint64_t pos = head; pos != tail; pos++) {
        struct cb_lane_event e;
        memcpy(&e, &events[pos & (LANE_CAPACITY - 1)], sizeof e);
        if (e.slot != w || e.check != (uint16_t)(CB_EVENT_CHECK ^ w) || e.latency_us != expect[w] ||
            e.outcome > CB_IGNORED || (e.kind != CB_TICKET_ALLOWED && e.kind != CB_TICKET_PROBE) ||
            e.epoch > now_epoch) {
            violation("lane %u position %" PRIu64 ": event {slot %u, check %#x, seq %u, outcome %u, kind %u, "
                      "epoch %u}, expected seq %u of slot %u at epoch <= %u", w, pos, e.slot, e.check,
                      e.latency_us, e.outcome, e.kind, e.epoch, expect[w], w, now_epoch);
            expect[w] = e.latency_us + 1; /* resynchronise: report each fault once */
            continue;
        }
        expect[w]++;
        t->drained++;
        if (e.kind == CB_TICKET_PROBE && e.epoch == now_epoch && state_of(now_epoch) == CB_HALF_OPEN &&
            permit_back(e.epoch))
            t->permits_returned++;
    }
    /* Release pairs with the worker's acquire reload of head: the slots read
     * above may be reused now. */
    atomic_store_explicit(&lane->head, tail, memory_order_release);
}

/* Calls all workers made; the daemon moves on to the next epoch only once
 * each made CALLS_PER_EPOCH more. */
static uint64_t slowest_worker(void)
{
    uint64_t min = UINT64_MAX;
    for (unsigned w = 0; w < G.workers; w++) {
        uint64_t p = atomic_load_explicit(&G.progress[w], memory_order_relaxed);
        min = p < min ? p : min;
    }
    return min;
}

static void *daemon_main(void *arg)
{
    struct tally *t = arg;
    uint32_t expect[MAX_WORKERS] = {0}, epoch = 0, k = 0;
    uint64_t n = 0, paced = 0;
    for (;;) {
        /* Checked before draining: once the workers stopped, one more full drain. */
        bool last = atomic_load(&G.stop_workers) && atomic_load(&G.stop_all);
        uint64_t before = t->drained;
        for (unsigned w = 0; w < G.workers; w++)
            drain_lane(w, expect, epoch, t);
        t->drain_batches++;
        if (last)
            break;
        n++;
        bool transition = n % TRANSITION_EVERY == 0 && slowest_worker() >= paced + CALLS_PER_EPOCH;
        if (transition) {
            epoch++;
            paced = slowest_worker();
            /* The permit word first (relaxed: the release store of the state word below publishes it). */
            if (state_of(epoch) == CB_HALF_OPEN)
                atomic_store_explicit(G.permit, cb_permit_word(epoch, MAX_PROBES), memory_order_relaxed);
        }
        struct cb_seg_vdata v = version_of(n, epoch);
        if (G.breakage == BREAK_VERSIONS)
            publish_fill_after_commit(G.rec, &v);
        else if (cb_seg_version_publish(G.rec, &v) != n)
            violation("version %" PRIu64 " was numbered otherwise", n);
        t->versions++;
        if (transition) { /* release pairs with the workers' and readers' acquire of the state word */
            atomic_store_explicit(&G.rec->state_word, v.word, memory_order_release);
            t->transitions++;
        }
        if (n % CFG_EVERY == 0) {
            cb_config c = cfg_of(++k);
            cb_seg_cfg_begin(G.rec);
            cb_seg_cfg_store(G.rec, &c);
            cb_seg_cfg_end(G.rec);
            t->cfg_writes++;
        }
        if (t->drained == before)
            sched_yield(); /* nothing came in: let the workers run (every thread shares 2 cores here) */
    }
    for (unsigned w = 0; w < G.workers; w++) {
        uint64_t tail = atomic_load(&lane_of(w)->tail);
        if (expect[w] != (uint32_t)tail)
            violation("lane %u: %u events received, %" PRIu64 " appended", w, expect[w], tail);
    }
    return NULL;
}

/* ---- readers ------------------------------------------------------------- */

static void *reader_main(void *arg)
{
    struct tally *t = arg;
    uint64_t last = 0;
    while (!atomic_load_explicit(&G.stop_all, memory_order_relaxed)) {
        /* Acquire pairs with the daemon's release store of the state word. */
        uint64_t w = atomic_load_explicit(&G.rec->state_word, memory_order_acquire);
        struct cb_seg_vdata d;
        uint64_t v;
        if (cb_seg_version_try_read(G.rec, &d, &v) < 0) {
            t->read_retries++;
            continue;
        }
        if (++t->reads % 256 == 0)
            sched_yield(); /* readers are many; leave the cores to the writers too */
        if (!version_whole(&d, v))
            violation("version %" PRIu64 " read torn (word %#" PRIx64 ", total_successes %" PRIu64 ", "
                      "history_seq %" PRIu64 ")", v, d.word, d.total_successes, d.history_seq);
        if (v < last)
            violation("version %" PRIu64 " read after version %" PRIu64, v, last);
        if (cb_seg_word_epoch(d.word) < cb_seg_word_epoch(w))
            violation("state word of epoch %u seen before its version (version %" PRIu64 " has epoch %u)",
                      cb_seg_word_epoch(w), v, cb_seg_word_epoch(d.word));
        last = v;
        uint32_t seq = cb_seg_cfg_read_begin(G.rec);
        cb_config c;
        cb_seg_cfg_load(G.rec, &c);
        if (cb_seg_cfg_read_retry(G.rec, seq)) {
            t->cfg_retries++;
            continue;
        }
        t->cfg_reads++;
        cb_config want = cfg_of(c.failure_threshold);
        if (seq != 0 && memcmp(&c, &want, sizeof c) != 0)
            violation("policy fields of two writes read together (failure_threshold %u, success_threshold %u, "
                      "probe_lease_ms %u)", c.failure_threshold, c.success_threshold, c.probe_lease_ms);
    }
    return NULL;
}

/* ---- workers ------------------------------------------------------------- */

struct worker {
    unsigned id;
    struct tally t;
    uint64_t head_cache;
    uint32_t seq;
    uint64_t rng;
};

static uint64_t next_random(struct worker *w) /* splitmix64 */
{
    uint64_t z = (w->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* lanes.c's lane_append; false when the lane is full (dropped). */
static bool lane_append(struct worker *w, uint32_t epoch, unsigned outcome, unsigned kind)
{
    struct cb_lane *l = lane_of(w->id);
    uint64_t tail = atomic_load_explicit(&l->tail, memory_order_relaxed); /* we are its only writer */
    if (tail - w->head_cache > LANE_CAPACITY - 1) {
        /* Acquire pairs with the daemon's release store of head. */
        w->head_cache = atomic_load_explicit(&l->head, memory_order_acquire);
        if (tail - w->head_cache > LANE_CAPACITY - 1) {
            atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
            return false;
        }
    }
    struct cb_lane_event e = {.slot = w->id, .epoch = epoch, .outcome = (uint8_t)outcome, .kind = (uint8_t)kind,
                              .check = (uint16_t)(CB_EVENT_CHECK ^ w->id), .latency_us = w->seq};
    if (G.breakage == BREAK_LANES) { /* the tail published before the event is written */
        atomic_store_explicit(&l->tail, tail + 1, memory_order_release);
        sched_yield();
        memcpy(&CB_LANES_EVENTS(l)[tail & (LANE_CAPACITY - 1)], &e, sizeof e);
    } else {
        memcpy(&CB_LANES_EVENTS(l)[tail & (LANE_CAPACITY - 1)], &e, sizeof e);
        /* Release pairs with the daemon's acquire load of tail. */
        atomic_store_explicit(&l->tail, tail + 1, memory_order_release);
    }
    w->seq++;
    return true;
}

/* take_permit: the CAS of libcb (or, broken, a load and a store). */
static bool take_permit(uint32_t epoch)
{
    uint64_t p = atomic_load_explicit(G.permit, memory_order_relaxed);
    if (G.breakage == BREAK_PERMITS) {
        if ((uint32_t)(p >> 32) != epoch || (uint32_t)p == 0)
            return false;
        sched_yield();
        atomic_store_explicit(G.permit, p - 1, memory_order_relaxed);
        return true;
    }
    while ((uint32_t)(p >> 32) == epoch && (uint32_t)p > 0) {
        if (atomic_compare_exchange_weak_explicit(G.permit, &p, p - 1, memory_order_relaxed, memory_order_relaxed))
            return true;
    }
    return false;
}

/* Counts a held permit of epoch; false when this epoch is no longer the
 * newest one seen (its holders are not counted any more). */
static bool hold(uint32_t epoch)
{
    uint64_t h = atomic_load(&G.held), next;
    do {
        uint32_t tag = (uint32_t)(h >> 32);
        if (tag > epoch)
            return false;
        next = tag == epoch ? h + 1 : ((uint64_t)epoch << 32) | 1;
    } while (!atomic_compare_exchange_weak(&G.held, &h, next));
    if ((uint32_t)next > MAX_PROBES)
        violation("%u probe permits of epoch %u held at once (bound %u)", (uint32_t)next, epoch, MAX_PROBES);
    return true;
}

static void unhold(uint32_t epoch)
{
    uint64_t h = atomic_load(&G.held);
    while ((uint32_t)(h >> 32) == epoch && !atomic_compare_exchange_weak(&G.held, &h, h - 1)) {
    }
}

/* lanes.c's count_call: one rejection (add 1) or probe (CB_LANE_PROBE_ONE)
 * of circuit k in w's lane (segment.h's cb_lane_count_call, the code libcb
 * runs), tallied as counted or not. */
static void count_call(struct worker *w, uint32_t k, uint64_t add)
{
    bool taken;
    if (cb_lane_count_call(lane_of(w->id), cb_lane_call_key(k, 0), add, &taken) == NULL)
        w->t.uncounted++;
    else
        w->t.counted[k] += add;
}

/* A rejected call, counted for one of CALL_KEYS circuits in turn; now and
 * then a yield, so that a worker spinning on an OPEN circuit does not keep
 * the daemon from changing it. */
static void rejected(struct worker *w)
{
    count_call(w, (uint32_t)(w->t.rejected % CALL_KEYS), 1);
    if (++w->t.rejected % 64 == 0)
        sched_yield();
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load_explicit(&G.stop_workers, memory_order_relaxed)) {
        atomic_store_explicit(&G.progress[w->id], ++w->t.calls, memory_order_relaxed);
        /* Acquire pairs with the daemon's release store of the state word. */
        uint64_t word = atomic_load_explicit(&G.rec->state_word, memory_order_acquire);
        uint32_t epoch = cb_seg_word_epoch(word);
        unsigned outcome = (unsigned)(next_random(w) % 3), kind = CB_TICKET_ALLOWED;
        switch (cb_seg_word_state(word)) {
        case CB_CLOSED:
            break;
        case CB_HALF_OPEN: {
            uint32_t permit_epoch = (uint32_t)(atomic_load_explicit(G.permit, memory_order_relaxed) >> 32);
            if (permit_epoch < epoch)
                violation("HALF_OPEN epoch %u seen with a permit word of epoch %u", epoch, permit_epoch);
            if (!take_permit(epoch)) {
                rejected(w);
                continue;
            }
            bool counted = hold(epoch);
            count_call(w, (uint32_t)(w->t.probes % CALL_KEYS), CB_LANE_PROBE_ONE);
            w->t.probes++;
            if (next_random(w) % 4 == 0)
                sched_yield(); /* a slow probe */
            if (counted)
                unhold(epoch);
            kind = CB_TICKET_PROBE;
            break;
        }
        default:
            rejected(w);
            continue;
        }
        if (lane_append(w, epoch, outcome, kind)) {
            w->t.appended++;
        } else {
            w->t.dropped++;
            sched_yield(); /* the daemon is behind: let it run (2 cores run every thread here) */
        }
    }
    return NULL;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: tsan_stress [--seconds S] [--workers 1..%d] [--readers 1..%d] "
                    "[--break versions|permits|lanes]\n", MAX_WORKERS, MAX_READERS);
    exit(2);
}

static void *aligned(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, CB_CACHELINE, size) != 0) {
        fprintf(stderr, "tsan_stress: out of memory\n");
        exit(2);
    }
    memset(p, 0, size);
    return p;
}

static void start(pthread_t *th, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(th, NULL, fn, arg);
    if (rc != 0) {
        fprintf(stderr, "tsan_stress: pthread_create: %s\n", strerror(rc));
        exit(2);
    }
}

int main(int argc, char **argv)
{
    double seconds = 2;
    G.workers = 2;
    G.readers = 2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--workers") == 0)
            G.workers = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--readers") == 0)
            G.readers = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--break") == 0) {
            const char *b = argv[++i];
            G.breakage = strcmp(b, "versions") == 0 ? BREAK_VERSIONS : strcmp(b, "permits") == 0 ? BREAK_PERMITS
                         : strcmp(b, "lanes") == 0  ? BREAK_LANES : BREAK_NONE;
            if (G.breakage == BREAK_NONE)
                usage();
        } else
            usage();
    }
    if (!(seconds > 0) || G.workers < 1 || G.workers > MAX_WORKERS || G.readers < 1 || G.readers > MAX_READERS)
        usage();

    G.rec = aligned(sizeof *G.rec);
    G.permit = aligned(CB_CACHELINE);
    G.stride = CB_LANE_HEADER_SIZE + LANE_CAPACITY * sizeof(struct cb_lane_event);
    G.lanes = aligned(G.workers * G.stride);
    struct cb_seg_vdata v0 = version_of(0, 0); /* version 0 in copy 0; the daemon publishes 1, 2, ... */
    cb_seg_version_fill(&G.rec->version[0], &v0);
    atomic_store(&G.rec->state_word, v0.word);

    struct tally dt = {0}, rt[MAX_READERS] = {{0}};
    struct worker wk[MAX_WORKERS];
    pthread_t daemon, readers[MAX_READERS], workers[MAX_WORKERS];
    start(&daemon, daemon_main, &dt);
    for (unsigned i = 0; i < G.readers; i++)
        start(&readers[i], reader_main, &rt[i]);
    for (unsigned i = 0; i < G.workers; i++) {
        wk[i] = (struct worker){.id = i, .rng = 0x5eed + i};
        start(&workers[i], worker_main, &wk[i]);
    }
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do { /* a broken protocol stops the run at its first violation */
        usleep(10000);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9 < seconds &&
             !(G.breakage != BREAK_NONE && atomic_load(&G.violations) > 0));
    atomic_store(&G.stop_workers, true);
    for (unsigned i = 0; i < G.workers; i++)
        pthread_join(workers[i], NULL);
    atomic_store(&G.stop_all, true); /* the daemon drains once more, then stops */
    pthread_join(daemon, NULL);
    for (unsigned i = 0; i < G.readers; i++)
        pthread_join(readers[i], NULL);

    struct tally r = {0}, w = {0};
    for (unsigned i = 0; i < G.readers; i++) {
        r.reads += rt[i].reads;
        r.read_retries += rt[i].read_retries;
        r.cfg_reads += rt[i].cfg_reads;
        r.cfg_retries += rt[i].cfg_retries;
    }
    for (unsigned i = 0; i < G.workers; i++) {
        w.calls += wk[i].t.calls;
        w.probes += wk[i].t.probes;
        w.rejected += wk[i].t.rejected;
        w.appended += wk[i].t.appended;
        w.dropped += wk[i].t.dropped;
        w.uncounted += wk[i].t.uncounted;
        for (unsigned k = 0; k < CALL_KEYS; k++)
            w.counted[k] += wk[i].t.counted[k];
    }
    printf("tsan_stress: %.1f s, %u workers, %u readers%s%s\n", seconds, G.workers, G.readers,
           G.breakage ? ", broken on purpose: " : "",
           G.breakage == BREAK_VERSIONS ? "versions" : G.breakage == BREAK_PERMITS ? "permits"
           : G.breakage == BREAK_LANES  ? "lanes" : "");
    printf("  daemon:  %" PRIu64 " versions, %" PRIu64 " transitions, %" PRIu64 " policy rewrites, %" PRIu64
           " drain rounds, %" PRIu64 " events received, %" PRIu64 " permits returned\n",
           dt.versions, dt.transitions, dt.cfg_writes, dt.drain_batches, dt.drained, dt.permits_returned);
    printf("  readers: %" PRIu64 " snapshots (%" PRIu64 " retried), %" PRIu64 " policy reads (%" PRIu64
           " retried)\n", r.reads, r.read_retries, r.cfg_reads, r.cfg_retries);
    printf("  workers: %" PRIu64 " calls, %" PRIu64 " probes, %" PRIu64 " rejected, %" PRIu64 " events appended, %"
           PRIu64 " dropped on a full lane\n", w.calls, w.probes, w.rejected, w.appended, w.dropped);
    printf("  call counts: %" PRIu64 " rejections and probes not counted (every entry busy)\n", w.uncounted);
    for (unsigned k = 0; k < CALL_KEYS; k++)
        if (w.counted[k] != dt.counted[k])
            violation("circuit %u: workers counted %" PRIu64 " rejections and %" PRIu64 " probes, the daemon folded %"
                      PRIu64 " and %" PRIu64, k, (uint64_t)(w.counted[k] & (CB_LANE_PROBE_ONE - 1)),
                      w.counted[k] >> CB_LANE_REJECTED_BITS, (uint64_t)(dt.counted[k] & (CB_LANE_PROBE_ONE - 1)),
                      dt.counted[k] >> CB_LANE_REJECTED_BITS);
    uint64_t bad = atomic_load(&G.violations);
    if (bad == 0 && w.appended != dt.drained)
        violation("%" PRIu64 " events appended, %" PRIu64 " received", w.appended, dt.drained);
    if (bad == 0 && G.breakage == BREAK_NONE &&
        (r.reads == 0 || r.cfg_reads == 0 || w.probes == 0 || dt.permits_returned == 0 || dt.drained == 0 ||
         dt.transitions < 3)) {
        printf("tsan_stress: FAILED: the run did not exercise every protocol (too short?)\n");
        return 1;
    }
    bad = atomic_load(&G.violations);
    printf("tsan_stress: %s: %" PRIu64 " violations\n", bad ? "FAILED" : "ok", bad);
    free(G.rec);
    free(G.permit);
    free(G.lanes);
    return bad ? 1 : 0;
}
