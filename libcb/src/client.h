/*
 * client.h - libcb's private structures and the cb__ calls between its files.
 *
 * A client owns a chain of mappings of its instance's segment: the current
 * one and every one it replaced. A mapping is never unmapped before
 * cb_client_close(), so a state-word pointer a thread loaded before a remap
 * stays readable (Varnish VSM style); the chain only ever grows at its head.
 *
 * A circuit handle's first member is the pointer cb_allow() loads. The slot
 * of a handle is not stored beside it: it is implied by where that pointer
 * points (record n of some mapping), so one atomic pointer store rebinds a
 * handle to a new segment and no reader can ever pair a pointer from one
 * segment with a slot from another.
 *
 * Lock order (outer first): the clients list (fork handlers), a client's
 * lock, the lanes registry (lanes.c). The hot path takes none of them.
 */
#ifndef CB_CLIENT_H
#define CB_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cb.h"
#include "segment.h"

#define CB__WAIT_READY_MS 2000  /* how long open waits for a starting daemon */
#define CB__REQUEST_TIMEOUT_MS 2000
#define CB__RETRY_NS 100000000ll /* a failed remap from the hot path is retried after 100 ms */

/* The doorbell FIFO of one daemon generation (lanes.c rings it). fd -1:
 * the FIFO could not be opened; ring through the futex. */
struct cb__bell {
    int fd;                           /* O_RDWR|O_NONBLOCK: never SIGPIPE */
    uint64_t generation;              /* lanes generation it was opened for */
    struct cb__bell *older;           /* replaced ones, kept open until the mapping is freed */
};
#define CB__BELL_SUFFIX ".bell"       /* the FIFO's path: the segment's socket_path plus this */

/* One mapping of both regions of a segment. Immutable once published but
 * for bell, which a restarted daemon's new FIFO replaces (client lock). */
struct cb__map {
    uint64_t id;                      /* unique in this process: keys the per-thread lane caches */
    const struct cb_seg_header *hdr;  /* state region, PROT_READ */
    size_t state_size;
    struct cb_lanes_header *lanes;    /* lanes region, read-write */
    size_t lanes_size;
    int state_fd, lanes_fd;           /* kept: st_nlink == 0 means the daemon replaced the segment */
    uintptr_t records;                /* address of record 0 */
    uint64_t records_bytes;           /* capacity * CB_SEG_RECORD_SIZE */
    uint32_t capacity;
    char socket_path[CB_SOCKET_PATH_MAX];
    _Atomic(struct cb__bell *) bell;  /* current doorbell FIFO, NULL: none tried yet */
    _Atomic uint8_t *mine;            /* per lane: claimed through this mapping (lanes.c) */
    struct cb__map *older;            /* the mapping this one replaced, or NULL */
    struct cb__map *live_next;        /* lanes.c's registry of mappings not yet closed */
};

struct cb_client {
    pthread_mutex_t lock;             /* handle cache, control connection, remap, history cursor */
    bool bypass;                      /* $CB_DISABLED: nothing mapped */
    bool remapped;                    /* a remap happened since cb_status() last said so */
    char instance[CB_INSTANCE_MAX + 1];
    _Atomic(struct cb__map *) map;    /* current mapping (NULL for a bypass client) */
    uint64_t seen_generation;         /* daemon generation cb_status() last reported */
    uint64_t history_cursor;          /* next history sequence cb_next_transition() reads */
    int ctl_fd;                       /* control connection, -1 until needed */
    _Atomic int64_t retry_after_ns;   /* hot-path remaps wait until then after a failure */
    struct cb_circuit **buckets;      /* handle cache: chained hash by name */
    size_t nbuckets, ncircuits;
    struct cb_client *next;           /* all open clients, for the fork handlers */
};

struct cb_circuit {
    struct cb__circuit_head head;     /* FIRST: cb_allow() casts the handle to it */
    cb_client *client;
    uint64_t hash;                    /* cb__name_hash of name */
    struct cb_circuit *next;          /* hash chain, under client->lock */
    bool has_cfg;                     /* cfg was given: re-sent if a new segment lacks the circuit */
    cb_config cfg;
    char name[CB_NAME_MAX + 1];
};

static inline int64_t cb__clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* True when the daemon's heartbeat is older than the segment's stale limit
 * (by the coarse vDSO clock: no syscall). */
bool cb__heartbeat_stale(const struct cb_seg_header *h);

/* The state word every handle of a bypass client points at. */
extern const uint64_t cb__bypass_word;

/* True if p points into m's records; then *slot is the record's slot. */
static inline bool cb__map_holds(const struct cb__map *m, const uint64_t *p, uint32_t *slot)
{
    uintptr_t off = (uintptr_t)p - m->records; /* wraps to a huge value below records */
    *slot = (uint32_t)(off / CB_SEG_RECORD_SIZE);
    return off < m->records_bytes;
}

/* The mapping holding the record p points into (current first, then older
 * ones) and its slot; NULL if none does (a bypass handle). Lock-free. */
static inline struct cb__map *cb__map_of(cb_client *cl, const uint64_t *p, uint32_t *slot)
{
    /* Acquire pairs with the release store that published a mapping in
     * client.c: its fields are initialised before we read them. */
    struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_acquire);
    for (; m != NULL; m = m->older) {
        if (cb__map_holds(m, p, slot))
            return m;
    }
    return NULL;
}

/* A handle's state-word pointer. Acquire pairs with the release store that
 * rebinds a handle (circuit.c), made after its mapping was published. */
static inline const uint64_t *cb__word_ptr(const cb_circuit *c)
{
    return __atomic_load_n(&c->head.state_word, __ATOMIC_ACQUIRE);
}

/* client.c */
/* If the segment was replaced, map the new one (waiting up to wait_ms for it
 * to become ready), then rebind handles left on older mappings. Client lock
 * held. 0, -EAGAIN (replaced but the new one is not there yet), or an error
 * of cb_client_open() or cb_circuit_get(). */
int cb__client_refresh_locked(cb_client *cl, int wait_ms);
/* The same from the hot path: trylock, no waiting, at most one failed attempt
 * per 100 ms. 0, -EBUSY (another thread holds the client), -EAGAIN. */
int cb__client_refresh(cb_client *cl);

/* circuit.c (client lock held) */
/* Rebind every handle that does not point into the current mapping. 0 or the
 * first error (handles that failed keep their old, still mapped, pointer). */
int cb__circuits_rebind(cb_client *cl);
/* True if a cached handle of mapping m carries CB_SEG_F_RETIRED. */
bool cb__circuits_retired(cb_client *cl, const struct cb__map *m);
/* Free every handle. */
void cb__circuits_free(cb_client *cl);
/* True if c points at a live record of the incarnation it expects. */
bool cb__circuit_bound(const cb_circuit *c);
/* From the hot path: rebind c by the lock-free index of the current mapping,
 * without a socket and without waiting for the client lock. 0 (bound now, or
 * already was), -EBUSY (lock taken: try again later), -ENOENT (the name is
 * not in the segment: it must be registered again), -EPROTO. */
int cb__circuit_rebind_lockfree(cb_circuit *c);

/* lanes.c */
/* Once per process: the thread-exit key and the fork handler. 0 or -errno. */
int cb__lanes_init(void);
/* Register a new mapping's lanes (0, -ENOMEM) / release every lane this
 * process claimed through it, before it is unmapped. */
int cb__lanes_attach(struct cb__map *m);
void cb__lanes_detach(struct cb__map *m);

#endif /* CB_CLIENT_H */
