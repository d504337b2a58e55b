/*
 * lanes.c - the worker's half of the hot path: cb_record() into per-thread
 * outcome lanes, and cb_allow()'s slow path (flags, staleness, probe
 * permits; a handle that must move to a new segment or registration is
 * handed to circuit.c, which never waits).
 *
 * The lanes region is writable by every worker of the group, so its
 * geometry is read once, when the mapping is checked (client.c), and
 * every address here comes from that copy.
 *
 * Lanes. Every thread writes its own single-producer/single-consumer ring
 * in the lanes region, so cb_record() needs no lock and no RMW: a few plain
 * stores of the 16-byte event and one release store of the tail. A thread
 * claims a lane on its first record through a mapping (CAS of the owner
 * word from 0) and caches it in initial-exec TLS keyed by the mapping's
 * id and the fork generation; the steady state costs a TLS load, two
 * compares, and the append. The producer keeps a private copy of the
 * daemon's head and reloads the shared one only when the copy says the
 * lane is full, so the consumer's cache line is not touched per event.
 * A full lane, or no free lane at all, drops the event and counts it: a
 * worker never waits for the daemon.
 *
 * Ownership ends three ways: the thread exits (a pthread key destructor
 * marks its lanes RELEASED), the client is closed (every lane this process
 * claimed through the mapping is RELEASED), or the process dies (the
 * daemon sees the pid gone). The daemon drains a released lane before it
 * frees it, and head/tail never reset, so nothing is lost or replayed.
 * A thread-exit destructor may run after its client was closed and
 * unmapped; it touches a lane only if the mapping is still in the registry
 * below, checked under the registry lock that close also takes.
 *
 * Fork. A child inherits its parent's TLS and its copy of the lanes
 * mapping, but the lanes still belong to the parent's threads. The atfork
 * child handler bumps a fork generation; every cached lane of an older
 * generation is then a miss, so the child claims lanes of its own and
 * never releases (or writes) the parent's.
 *
 * Call counts. cb_allow's slow path (OPEN, HALF_OPEN) counts each
 * rejection and each probe permit it hands out in the calling thread's
 * lane, per circuit, in words of the producer's cache line that only this
 * thread writes (segment.h: struct cb_lane_calls): a load and a store, no
 * RMW, no line another thread writes. The daemon folds them as it drains
 * the lane. The CLOSED path is untouched: one load and a branch.
 *
 * Memos. Each thread remembers, in initial-exec TLS, what it worked out
 * for the mapping it last recorded through (its records' range and this
 * thread's lane node there) and for the last circuit it was refused by
 * (the state word value, the permit word value that left no probe, its
 * call-count entry). A record whose handle points into that range, or a
 * refusal whose words match, goes straight to the append or the counted
 * rejection: no mapping lookup, no fork-generation walk, and for a
 * rejection no clock read. The staleness
 * verdict is amortised: a rejection memo is good for a budget of calls
 * (its count entry below a limit), after which the clock is read again; the budget doubles (1, 2, 4 ... 64)
 * while every clock read falls within the same coarse clock tick as the
 * one before, and drops back to 1 as soon as one does not. So a thread
 * calling slower than that reads the clock on every rejection as before,
 * and a thread calling faster notices a stale daemon at most 64 of its
 * rejections late. memo_gen invalidates every thread's memos at once: a
 * fork (the child's lanes are not the parent's), a new mapping published
 * or one detached (a closed client's addresses may come back for a new
 * one). A permit given back, a demand bit cleared or a count entry reused
 * changes a value the memo compares, so the next call takes the slow path.
 *
 * Doorbell. A failure or probe result may be what trips or closes a
 * circuit, so it wakes the daemon at once instead of waiting for its
 * drain tick: a relaxed peek first (a burst of failures costs one load
 * each while the bell is rung), then exchange, and only the ringer that
 * turned 0 into 1 makes a syscall. That syscall is a one-byte write to the
 * daemon's doorbell FIFO, which its loop polls: one wakeup per trip. Where
 * the mapping has no FIFO of the daemon's current generation (no access, a
 * daemon without one, a restart cb_status() has not caught up with, or a
 * descriptor number a prefork child closed and reused for a file of its
 * own: checked once per process) it is FUTEX_WAKE on the shared (not
 * private) word, which a daemon thread relays to the loop: two wakeups,
 * but it works with every daemon. The
 * ordering argument (our fence vs. the daemon's) is the same for both; see
 * doorbell_ring and cbd's doorbell.c.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <linux/futex.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TLS_IE __attribute__((tls_model("initial-exec")))

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "lane_append packs events little-endian");
_Static_assert(offsetof(struct cb_lane_event, epoch) == 4 && offsetof(struct cb_lane_event, outcome) == 8 &&
                   offsetof(struct cb_lane_event, check) == 10 && sizeof(struct cb_lane_event) == 16,
               "lane_append packs events by this layout");
#define CLAIM_RETRY_EVERY 1024u /* records without a lane between two claim attempts */
/* Events ahead of the one written that a record asks ownership of: eight
 * lines, enough to hide the transfer of lines the daemon last read
 * (measured: 15-25% off cb_record against two lines ahead). */
#define PREFETCH_EVENTS 32u

/* A thread's lane in one mapping (lane NULL: none was free). */
struct lane_node {
    uint64_t map_id;
    unsigned fork_gen;
    struct cb__map *map;           /* dereferenced only while it is in the registry */
    struct cb_lane *lane;
    struct cb_lane_event *events;
    uint64_t mask;                 /* lane_capacity - 1 */
    uint64_t head_cache;           /* producer-private copy of lane->head */
    size_t prefetch;               /* bytes ahead of the event written that a record prefetches */
    uint32_t misses;               /* records dropped for want of a lane */
    struct lane_node *next;        /* this thread's nodes */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cb__map *registry;   /* mappings not yet detached */
static _Atomic unsigned fork_gen;  /* bumped in every child */
static pthread_key_t thread_key;   /* value: the thread's node list, for the exit destructor */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_err;

static __thread struct lane_node *tls_cur TLS_IE;   /* last node used: the hot-path cache */
static __thread struct lane_node *tls_nodes TLS_IE; /* all of this thread's nodes */

/* Bumped (release) whenever a memo may name what is no longer this thread's
 * to use: a fork (in the child), a mapping published or detached. Alone on
 * its line: the hot path reads it, nothing writes it often. */
static struct {
    _Alignas(64) _Atomic unsigned value;
    char pad[60];
} memo_gen;

#define REJECT_BUDGET_MAX 64u /* rejections decided without reading the clock, at most */

/* cb_record's: this thread's lane in its client's current mapping. A
 * handle whose word points into that mapping's records records there,
 * whichever circuit it is: a thread calling many circuits in turn stays
 * on the memo. */
struct record_memo {
    uintptr_t records;            /* the mapping's record 0 */
    uint64_t records_bytes;       /* 0: no memo */
    unsigned gen;                 /* memo_gen when it was made */
    struct lane_node *node;       /* this thread's node for the mapping, with a lane */
};

/* cb_allow's for a refused call: the circuit's state word had value w and
 * its permit word permit_seen (no probe to give), and the rejection is
 * counted in *counts, this thread's entry for the circuit. */
struct reject_memo {
    const uint64_t *word;
    uint64_t w;
    const _Atomic uint64_t *permit;
    uint64_t permit_seen;
    _Atomic uint64_t *counts;
    unsigned gen;
    uint64_t counts_limit;        /* the budget: *counts below this, no clock read */
    uint32_t size;                /* the budget last granted */
    int64_t checked_ns;           /* coarse clock of the last staleness check */
};

static __thread struct record_memo tls_record TLS_IE;
static __thread struct reject_memo tls_reject TLS_IE;
static __thread _Atomic uint64_t tls_uncounted TLS_IE; /* counts of a daemon that folds none */

static void memo_invalidate_all(void)
{
    /* Release pairs with the acquire in the memo fills: a thread that sees
     * the new generation sees the mapping published before it. */
    atomic_fetch_add_explicit(&memo_gen.value, 1, memory_order_release);
}

void cb__memos_invalidate(void) { memo_invalidate_all(); }

/* This thread's memos, when what they name may have changed under it. */
static void memos_forget(void)
{
    tls_record.records_bytes = 0;
    tls_reject.word = NULL;
}

/* Lane n of m, by the geometry checked at mapping time (client.h). */
static struct cb_lane *map_lane(const struct cb__map *m, uint32_t n)
{
    return (struct cb_lane *)(m->lane0 + (size_t)n * m->lane_stride);
}

static bool map_live(const struct cb__map *m, uint64_t id)
{
    for (const struct cb__map *x = registry; x != NULL; x = x->live_next) {
        if (x == m && x->id == id)
            return true;
    }
    return false;
}

static void lane_release(struct cb_lane *l, uint32_t pid)
{
    uint64_t owned = cb_lane_owner_word(pid, CB_LANE_OWNED);
    /* Release pairs with the daemon's acquire load of owner before its last
     * drain; every event was already published by a release of the tail.
     * The CAS leaves alone a lane that is no longer this process's. */
    atomic_compare_exchange_strong_explicit(&l->owner, &owned, cb_lane_owner_word(pid, CB_LANE_RELEASED),
                                            memory_order_release, memory_order_relaxed);
}

static void thread_exit(void *list)
{
    uint32_t pid = (uint32_t)getpid();
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    pthread_mutex_lock(&registry_lock);
    for (struct lane_node *n = list, *next; n != NULL; n = next) {
        next = n->next;
        if (n->lane != NULL && n->fork_gen == gen && map_live(n->map, n->map_id))
            lane_release(n->lane, pid);
        free(n);
    }
    pthread_mutex_unlock(&registry_lock);
    tls_cur = tls_nodes = NULL;
    memos_forget();
}

static void fork_prepare(void) { pthread_mutex_lock(&registry_lock); }
static void fork_parent(void) { pthread_mutex_unlock(&registry_lock); }
static void fork_child(void)
{
    atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
    memo_invalidate_all();
    pthread_mutex_unlock(&registry_lock);
}

static void init(void)
{
    init_err = -pthread_key_create(&thread_key, thread_exit);
    if (init_err == 0)
        init_err = -pthread_atfork(fork_prepare, fork_parent, fork_child);
}

int cb__lanes_init(void)
{
    pthread_once(&init_once, init);
    return init_err;
}

int cb__lanes_attach(struct cb__map *m)
{
    m->mine = calloc(m->lane_count, sizeof *m->mine);
    if (m->mine == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&registry_lock);
    m->live_next = registry;
    registry = m;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void cb__lanes_detach(struct cb__map *m)
{
    pthread_mutex_lock(&registry_lock);
    for (struct cb__map **pp = &registry; *pp != NULL; pp = &(*pp)->live_next) {
        if (*pp == m) {
            *pp = m->live_next;
            break;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    memo_invalidate_all(); /* before m is unmapped: its addresses may come back */
    /* Out of the registry: no thread-exit destructor touches m any more. */
    uint32_t pid = (uint32_t)getpid();
    for (uint32_t i = 0; i < m->lane_count; i++) {
        if (atomic_load_explicit(&m->mine[i], memory_order_relaxed))
            lane_release(map_lane(m, i), pid);
    }
    free(m->mine);
    m->mine = NULL;
}

/* Claims a free lane of m for node n; leaves n->lane NULL if none is free. */
static void lane_claim(struct cb__map *m, struct lane_node *n)
{
    uint32_t count = m->lane_count, start = (uint32_t)gettid() % count;
    uint64_t want = cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t idx = (start + i) % count; /* threads start apart: fewer lost CAS races */
        struct cb_lane *l = map_lane(m, idx);
        uint64_t expect = 0;
        /* Acquire pairs with the daemon's release store of owner = 0 after
         * its last drain: the head and tail we go on from are final. */
        if (atomic_load_explicit(&l->owner, memory_order_relaxed) != 0 ||
            !atomic_compare_exchange_strong_explicit(&l->owner, &expect, want, memory_order_acquire,
                                                     memory_order_relaxed))
            continue;
        atomic_store_explicit(&m->mine[idx], 1, memory_order_relaxed);
        uint32_t word;
        uint64_t bit;
        cb_lane_group_of(idx, &word, &bit);
        /* Release pairs with the daemon's acquire when it clears the bit:
         * a daemon that clears it after this sees our owner word. Once per
         * claim; a daemon of minor 0 never reads it. */
        atomic_fetch_or_explicit(&m->lanes->claimed_groups[word], bit, memory_order_release);
        n->lane = l;
        n->events = CB_LANES_EVENTS(l);
        n->mask = m->lane_capacity - 1;
        n->prefetch = (m->lane_capacity >= 2 * PREFETCH_EVENTS ? PREFETCH_EVENTS : m->lane_capacity / 2) *
                      sizeof(struct cb_lane_event);
        /* Acquire pairs with the daemon's release store of head. */
        n->head_cache = atomic_load_explicit(&l->head, memory_order_acquire);
        return;
    }
}

/* Frees nodes of a parent process (the lanes are the parent's) and of
 * closed clients. */
static void nodes_prune(unsigned gen)
{
    memos_forget(); /* they may name a node freed here */
    pthread_mutex_lock(&registry_lock);
    for (struct lane_node **pp = &tls_nodes; *pp != NULL;) {
        struct lane_node *n = *pp;
        if (n->fork_gen != gen || !map_live(n->map, n->map_id)) {
            *pp = n->next;
            free(n);
        } else {
            pp = &n->next;
        }
    }
    pthread_mutex_unlock(&registry_lock);
}

/* The hot-path cache missed: find or make this thread's node for m. */
static __attribute__((noinline, cold)) struct lane_node *node_get(struct cb__map *m, unsigned gen)
{
    for (struct lane_node *n = tls_nodes; n != NULL; n = n->next) {
        if (n->map_id == m->id && n->fork_gen == gen)
            return tls_cur = n;
    }
    nodes_prune(gen);
    tls_cur = NULL;
    struct lane_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return NULL;
    n->map_id = m->id;
    n->fork_gen = gen;
    n->map = m;
    lane_claim(m, n);
    n->next = tls_nodes;
    tls_nodes = n;
    pthread_setspecific(thread_key, tls_nodes); /* on failure the daemon reclaims at process exit */
    return tls_cur = n;
}

static __attribute__((noinline, cold)) void no_lane(struct cb__map *m, struct lane_node *n)
{
    atomic_fetch_add_explicit(&m->lanes->no_lane_drops, 1, memory_order_relaxed);
    if (++n->misses % CLAIM_RETRY_EVERY == 0)
        lane_claim(m, n);
}

/* Appends one event; false if it was dropped. */
/*
 * The daemon read a lane's event slots when it drained them, so the line a
 * record writes is shared with the daemon's cache and the store must first
 * take ownership of it: a cross-core round trip per line of four events.
 * Asking for ownership eight lines ahead (PREFETCH_EVENTS) overlaps that
 * miss with the records in between. PREFETCHW decodes as a NOP on x86 CPUs without it.
 */
static inline void prefetch_for_write(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetchw %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p, 1, 3);
#endif
}

/* Appends one event, given as its two 8-byte halves (the layout of struct
 * cb_lane_event on a little-endian machine); false if it was dropped. */
static inline bool lane_append(struct lane_node *n, uint64_t ids, uint64_t what)
{
    struct cb_lane *l = n->lane;
    uint64_t tail = atomic_load_explicit(&l->tail, memory_order_relaxed); /* we are its only writer */
    if (tail - n->head_cache > n->mask) {
        /* Acquire pairs with the daemon's release store of head, made after
         * it read the events: the slots we reuse are free. */
        n->head_cache = atomic_load_explicit(&l->head, memory_order_acquire);
        if (tail - n->head_cache > n->mask) {
            atomic_fetch_add_explicit(&l->dropped, 1, memory_order_relaxed);
            return false;
        }
    }
    char *e = (char *)&n->events[tail & n->mask];
    /* PREFETCH_EVENTS ahead (less in a small ring); past the ring's end it
     * touches the next lane's first lines, once a lap: a prefetch never
     * faults. */
    prefetch_for_write((const void *)((uintptr_t)e + n->prefetch)); /* an address, maybe past the mapping */
    memcpy(e, &ids, 8);
    memcpy(e + 8, &what, 8);
    /* Release pairs with the daemon's acquire load of tail: the event's
     * plain stores above are visible before the new tail is. */
    atomic_store_explicit(&l->tail, tail + 1, memory_order_release);
    return true;
}

/* True if the bell's fd is still the FIFO it was opened on, checked once
 * per process: a prefork child that closed the descriptors it inherited
 * may have reused the number for a file of its own, which must never get
 * our byte. */
static bool bell_still_ours(struct cb__bell *b)
{
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed) + 1;
    /* Relaxed: a racing second check costs one more fstat, nothing else. */
    if (atomic_load_explicit(&b->checked_gen, memory_order_relaxed) == gen)
        return true;
    if (!cb__fd_is(b->fd, b->dev, b->ino))
        return false;
    atomic_store_explicit(&b->checked_gen, gen, memory_order_relaxed);
    return true;
}

static void doorbell_ring(struct cb__map *m)
{
    struct cb_lanes_header *lh = m->lanes;
    /* Full fence: our tail store must be visible before we look at the bell,
     * or a daemon that clears the bell and drains between the two could
     * miss the event until its next tick (it stores 0 and fences the other
     * way before it drains). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&lh->doorbell, memory_order_relaxed) != 0 ||
        atomic_exchange_explicit(&lh->doorbell, 1, memory_order_seq_cst) != 0)
        return; /* rung already: the daemon has yet to store 0 and drain */
    /* libcb leaves errno as the caller had it (cb.h). */
    int saved_errno = errno;
    /* Acquire pairs with the release store that published the FIFO (client.c). */
    struct cb__bell *b = atomic_load_explicit(&m->bell, memory_order_acquire);
    /* Relaxed generation: a restart we do not see yet costs one lost byte,
     * which the new daemon's drain tick makes up for. EAGAIN: the FIFO is
     * full, the daemon has bytes enough to wake for. */
    if (!(b != NULL && b->fd >= 0 && b->generation == atomic_load_explicit(&lh->generation, memory_order_relaxed) &&
          bell_still_ours(b) && (write(b->fd, "", 1) == 1 || errno == EAGAIN)))
        syscall(SYS_futex, (uint32_t *)&lh->doorbell, FUTEX_WAKE, 1, NULL, NULL, 0);
    errno = saved_errno;
}

/* The record memo missed: this thread's lane for c's word p, by the
 * client's current mapping, made the memo. False (the event is dropped)
 * for a bypass handle, one still bound to a retired segment, or no lane. */
static bool record_memo_fill(cb_circuit *c, const uint64_t *p)
{
    /* Acquire pairs with memo_invalidate_all(): the mapping we load next is
     * at least the one published before this generation. */
    unsigned memo = atomic_load_explicit(&memo_gen.value, memory_order_acquire);
    /* Acquire pairs with the release store that published the mapping. */
    struct cb__map *m = atomic_load_explicit(&c->client->map, memory_order_acquire);
    uint32_t slot;
    if (m == NULL || !cb__map_holds(m, p, &slot))
        return false;
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    struct lane_node *n = tls_cur;
    if ((n == NULL || n->map_id != m->id || n->fork_gen != gen) && (n = node_get(m, gen)) == NULL)
        return false;
    if (n->lane == NULL) {
        no_lane(m, n);
        return false;
    }
    tls_record = (struct record_memo){.records = m->records, .records_bytes = m->records_bytes, .gen = memo,
                                      .node = n};
    return true;
}

/* Appends the event of a ticket's outcome for the record at offset off of
 * the mapping memo r names to this thread's lane there, and rings the
 * doorbell for what may trip or close a circuit. */
static inline __attribute__((always_inline)) void record_append(const struct record_memo *r, uint64_t off, cb_ticket t,
                                                                unsigned outcome, unsigned kind, uint32_t latency_us)
{
    /* The event: slot, the ticket's epoch; outcome, kind, check, latency. */
    uint64_t slot = off / CB_SEG_RECORD_SIZE;
    uint64_t ids = slot | (t.word & ~CB__STATE_SLOW_MASK);
    uint64_t what = outcome | kind << 8 | (uint64_t)(CB_EVENT_CHECK ^ (slot & 0xffff)) << 16 |
                    (uint64_t)latency_us << 32;
    if (lane_append(r->node, ids, what) && (outcome == CB_FAILURE || kind == CB_TICKET_PROBE))
        doorbell_ring(r->node->map);
}

/* The record memo missed: make it, then append. Out of line, so that the
 * memo's path saves no registers. */
static __attribute__((noinline, cold)) void record_slow(cb_circuit *c, cb_ticket t, unsigned outcome, unsigned kind,
                                                         uint32_t latency_us)
{
    const uint64_t *p = cb__word_ptr(c);
    if (record_memo_fill(c, p))
        record_append(&tls_record, (uintptr_t)p - tls_record.records, t, outcome, kind, latency_us);
}

/* cb_record and cb_record_latency; inlined into both, so cb_record's
 * constant 0 costs nothing. */
static inline __attribute__((always_inline)) void record(cb_circuit *c, cb_ticket t, cb_outcome outcome,
                                                         uint32_t latency_us)
{
    unsigned kind = (unsigned)(t.word & 0xff);
    if ((kind != CB_TICKET_ALLOWED && kind != CB_TICKET_PROBE) || (unsigned)outcome > CB_IGNORED)
        return;
    const struct record_memo *r = &tls_record;
    uint64_t off = (uintptr_t)cb__word_ptr(c) - r->records; /* wraps to a huge value below records */
    if (__builtin_expect(off >= r->records_bytes ||
                             r->gen != atomic_load_explicit(&memo_gen.value, memory_order_relaxed), 0)) {
        record_slow(c, t, (unsigned)outcome, kind, latency_us);
        return;
    }
    record_append(r, off, t, (unsigned)outcome, kind, latency_us);
}

void cb_record(cb_circuit *c, cb_ticket t, cb_outcome outcome)
{
    record(c, t, outcome, 0);
}

void cb_record_latency(cb_circuit *c, cb_ticket t, cb_outcome outcome, uint64_t latency_ns)
{
    uint64_t us = latency_ns / 1000;
    record(c, t, outcome, us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
}

static cb_ticket ticket(uint64_t w, unsigned kind)
{
    cb_ticket t = {(w & ~CB__STATE_SLOW_MASK) | kind};
    return t;
}

/* True when the daemon's heartbeat is older than its limit at coarse
 * time now and its policy says to fail open. */
static bool fail_open(const struct cb_seg_header *h, int64_t now)
{
    return cb__heartbeat_stale_at(h, now) && h->stale_policy == CB_STALE_FAIL_OPEN;
}

/* HALF_OPEN: one probe permit of the word's epoch, or a rejection; *seen is
 * the permit word that gave none. */
static cb_ticket take_permit(const struct cb__map *m, uint32_t slot, uint64_t w, uint64_t *seen)
{
    _Atomic uint64_t *pw = &m->permits[slot]; /* slot < capacity: the handle points into m's records */
    uint32_t epoch = cb_seg_word_epoch(w);
    /* Relaxed throughout: the daemon stores a fresh permit word before its
     * release store of the HALF_OPEN state word, which cb_allow() loaded with
     * acquire; and the permit guards no other data - the RMWs on this one
     * word are totally ordered, which is all the probe bound needs. */
    uint64_t p = atomic_load_explicit(pw, memory_order_relaxed);
    while ((uint32_t)(p >> 32) == epoch && (uint32_t)p > 0) {
        if (atomic_compare_exchange_weak_explicit(pw, &p, p - 1, memory_order_relaxed, memory_order_relaxed))
            return ticket(w, CB_TICKET_PROBE);
    }
    *seen = p;
    return ticket(w, CB_TICKET_REJECTED);
}

/* OPEN and electable: say once per epoch that a call wants a probe (the
 * daemon competes for the fleet's lease only on demand); the call itself
 * is rejected. Relaxed: the bit guards no data; the doorbell's fence orders
 * it before the daemon's look. The permit word as it is now, in *seen. */
static void want_probe(struct cb__map *m, uint32_t slot, uint64_t w, uint64_t *seen)
{
    _Atomic uint64_t *pw = &m->permits[slot];
    uint64_t p = atomic_load_explicit(pw, memory_order_relaxed);
    while ((uint32_t)(p >> 32) == cb_seg_word_epoch(w) && !(p & CB_PERMIT_DEMAND)) {
        if (atomic_compare_exchange_weak_explicit(pw, &p, p | CB_PERMIT_DEMAND, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            p |= CB_PERMIT_DEMAND;
            doorbell_ring(m);
            break;
        }
    }
    *seen = p;
}

/*
 * A rejection or a probe permit (kind REJECTED or PROBE) of the circuit of
 * word w at slot, counted in this thread's lane (segment.h: call counts).
 * Off the CLOSED path only. A thread without a lane claims one here, as its
 * first cb_record would (a CAS; getpid/gettid syscalls once per thread and
 * mapping); with no lane free, or its three entries all holding counts the
 * daemon has not folded yet (a fourth circuit rejecting within one drain
 * interval), the call goes uncounted. Returns the counts word it added to,
 * or NULL.
 */
static _Atomic uint64_t *count_call(struct cb__map *m, uint32_t slot, uint64_t w, unsigned kind)
{
    unsigned gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);
    struct lane_node *n = tls_cur;
    if (__builtin_expect(n == NULL || n->map_id != m->id || n->fork_gen != gen, 0) && (n = node_get(m, gen)) == NULL)
        return NULL;
    struct cb_lane *l = n->lane;
    if (l == NULL)
        return NULL;
    bool taken;
    _Atomic uint64_t *counts = cb_lane_count_call(l, cb_lane_call_key(slot, cb_seg_word_incarnation(w)),
                                                  kind == CB_TICKET_PROBE ? CB_LANE_PROBE_ONE : 1, &taken);
    if (taken && tls_reject.counts == counts)
        tls_reject.word = NULL; /* the memo's entry names another circuit now */
    return counts;
}

/* A counted rejection of word w (record p, permit word *permit seen as
 * permit_seen) was decided with a clock read at coarse time now: remember
 * it for the calls that follow (see Memos above). */
static void reject_memo_fill(const uint64_t *p, uint64_t w, const _Atomic uint64_t *permit, uint64_t permit_seen,
                             _Atomic uint64_t *counts, unsigned memo, int64_t now)
{
    struct reject_memo *r = &tls_reject;
    uint32_t size = 1;
    if (r->word == p && r->checked_ns == now && r->size < REJECT_BUDGET_MAX)
        size = r->size * 2; /* the last budget was spent within this clock tick */
    else if (r->word == p && r->checked_ns == now)
        size = REJECT_BUDGET_MAX;
    *r = (struct reject_memo){.word = p, .w = w, .permit = permit, .permit_seen = permit_seen,
                              .counts = counts, .gen = memo, .size = size,
                              .counts_limit = atomic_load_explicit(counts, memory_order_relaxed) + size - 1,
                              .checked_ns = now};
}

/* What a call may do on word w of record p at slot in mapping m (NULL:
 * none); memo is memo_gen as loaded before m; live: the word is the
 * handle's live circuit (a refusal of it may be remembered). */
static cb_ticket decide(struct cb__map *m, const uint64_t *p, uint32_t slot, uint64_t w, unsigned memo, bool live)
{
    unsigned state = cb_seg_word_state(w);
    if (cb_seg_word_flags(w) & CB_SEG_F_DISABLED)
        return ticket(w, CB_TICKET_BYPASS);
    if (state == CB_CLOSED) /* forced closed, or flags a newer daemon added */
        return ticket(w, CB_TICKET_ALLOWED);
    if (m == NULL || (state != CB_OPEN && state != CB_HALF_OPEN))
        return ticket(w, CB_TICKET_BYPASS); /* a state we do not know is let through, uncounted */
    int64_t now = cb__clock_ns(CLOCK_MONOTONIC_COARSE);
    if (fail_open(m->hdr, now))
        return ticket(w, CB_TICKET_BYPASS);
    cb_ticket t = ticket(w, CB_TICKET_REJECTED);
    uint64_t permit_seen = atomic_load_explicit(&m->permits[slot], memory_order_relaxed);
    if (state == CB_OPEN && (cb_seg_word_flags(w) & CB_SEG_F_ELECTABLE))
        want_probe(m, slot, w, &permit_seen);
    else if (state == CB_HALF_OPEN)
        t = take_permit(m, slot, w, &permit_seen);
    bool rejected = (t.word & 0xff) == CB_TICKET_REJECTED;
    /* A shadow circuit lets through what it would reject, uncounted: only
     * its probes (PROBE tickets) feed its policy. */
    if (rejected && (cb_seg_word_flags(w) & CB_SEG_F_SHADOW))
        return ticket(w, CB_TICKET_BYPASS);
    _Atomic uint64_t *counts = m->call_counts ? count_call(m, slot, w, (unsigned)(t.word & 0xff)) : &tls_uncounted;
    if (rejected && counts != NULL && live)
        reject_memo_fill(p, w, &m->permits[slot], permit_seen, counts, memo, now);
    return t;
}

/* cb_allow's decision when the rejection memo does not answer. */
static __attribute__((noinline)) cb_ticket allow_decide(cb_circuit *c, uint64_t w)
{
    const uint64_t *p = cb__word_ptr(c);
    unsigned memo = atomic_load_explicit(&memo_gen.value, memory_order_acquire); /* pairs as in record_memo_fill */
    bool live = cb__word_live(w, __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE));
    if (!live) {
        /* Retired (the segment was replaced), removed, or the slot holds
         * another circuit now. Move the handle if that can be done without
         * waiting (circuit.c); else decide on what it points at. */
        if (cb__circuit_recover(c, false)) {
            p = cb__word_ptr(c);
            w = __atomic_load_n(p, __ATOMIC_ACQUIRE); /* pairs with the daemon's release store */
        }
        if ((cb_seg_word_flags(w) & CB_SEG_F_REMOVED) ||
            cb_seg_word_incarnation(w) << CB_SEG_INCARNATION_SHIFT != __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE))
            return ticket(w, CB_TICKET_BYPASS); /* the circuit is gone from here: nothing to go by */
        /* Still a retired record: the last state its daemon (gone now)
         * published, under that segment's staleness policy. */
    }
    uint32_t slot = 0;
    struct cb__map *m = cb__map_of(c->client, p, &slot);
    return decide(m, p, slot, w, memo, live);
}

cb_ticket cb__allow_slow(cb_circuit *c, uint64_t w)
{
    /* A refusal like the last one: the same word value, no permit come
     * back, budget left, no fork or mapping change since. Counted, no
     * clock read (see Memos above). */
    struct reject_memo *r = &tls_reject;
    uint64_t n;
    if (__builtin_expect(r->w == w && r->word == cb__word_ptr(c) &&
                             r->gen == atomic_load_explicit(&memo_gen.value, memory_order_relaxed) &&
                             atomic_load_explicit(r->permit, memory_order_relaxed) == r->permit_seen &&
                             (n = atomic_load_explicit(r->counts, memory_order_relaxed)) < r->counts_limit, 1)) {
        /* Release as in count_call: we are the counts word's only writer. */
        atomic_store_explicit(r->counts, n + 1, memory_order_release);
        return ticket(w, CB_TICKET_REJECTED);
    }
    return allow_decide(c, w);
}
