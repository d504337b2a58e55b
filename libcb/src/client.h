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
 * lock, its history lock, the lanes registry (lanes.c). The hot path
 * takes none of them but with trylock, and nothing holds a client's lock
 * while it waits for the daemon: a wait (a registration's reply, a new
 * segment becoming ready) releases it, so every call that only needs the
 * lock for a moment gets it in a moment.
 */
#ifndef CB_CLIENT_H
#define CB_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "cb.h"
#include "frame.h"
#include "segment.h"

#define CB__WAIT_READY_MS 2000  /* how long open waits for a starting daemon */
#define CB__REQUEST_TIMEOUT_MS 2000
#define CB__RETRY_NS 100000000ll /* a failed remap or connect from the hot path is retried after 100 ms */
#define CB__REG_RETRY_NS 1000000000ll /* a registration the daemon refused is sent again after 1 s */

/* The doorbell FIFO of one daemon generation (lanes.c rings it). fd -1:
 * the FIFO could not be opened; ring through the futex. */
struct cb__bell {
    int fd;                           /* O_RDWR|O_NONBLOCK: never SIGPIPE */
    dev_t dev;                        /* the FIFO fd was opened on */
    ino_t ino;
    _Atomic unsigned checked_gen;     /* fork generation + 1 in which fd was last seen to be it */
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
    /* The lanes region's geometry as checked when it was mapped. Every
     * worker of the group may write the lanes header, so nothing that
     * decides an address is ever read from it again. */
    uint32_t lane_count, lane_capacity, lane_stride;
    char *lane0;                      /* lane 0; lane n is lane_stride bytes further each */
    _Atomic uint64_t *permits;        /* permit word of slot 0 (capacity of them) */
    bool call_counts;                 /* the daemon folds lanes' call counts (CB_SEG_FEATURE_CALL_COUNTS) */
    int state_fd, lanes_fd;           /* kept: st_nlink == 0 means the daemon replaced the segment */
    uintptr_t records;                /* address of record 0 */
    uint64_t records_bytes;           /* capacity * CB_SEG_RECORD_SIZE */
    uint32_t capacity;
    char socket_path[CB_SOCKET_PATH_MAX];
    _Atomic(struct cb__bell *) bell;  /* current doorbell FIFO, NULL: none tried yet */
    dev_t state_dev, lanes_dev;       /* the objects mapped: st_dev and st_ino of the fds */
    ino_t state_ino, lanes_ino;
    _Atomic uint8_t *mine;            /* per lane: claimed through this mapping (lanes.c) */
    struct cb__map *older;            /* the mapping this one replaced, or NULL */
    struct cb__map *live_next;        /* lanes.c's registry of mappings not yet closed */
};

/*
 * The client's control connection (ctl.c), under the client lock. It
 * belongs to the process that connected it: a forked child never reads or
 * writes its parent's, it connects its own. Requests carry an id and the
 * daemon echoes it, so a reply is given to the request it answers.
 * Registrations are queued and sent without waiting; whoever holds the
 * lock next reads what has arrived (cb__ctl_pump).
 */
#define CB__CTL_IN_SIZE (CB_FRAME_HEADER + CB_FRAME_MAX) /* one whole frame at most */
struct cb__ctl {
    int fd;                           /* non-blocking; -1 until needed */
    pid_t pid;                        /* the process that connected fd */
    dev_t dev;                        /* fd's socket: a child closes fd only while it is still that */
    ino_t ino;
    uint64_t next_id;                 /* ids of this client's requests (never 0) */
    char *out;                        /* framed requests not yet sent: out[sent..len) */
    size_t out_len, out_sent;
    char *in;                         /* CB__CTL_IN_SIZE bytes: received, not yet a whole frame */
    size_t in_len;
    struct cb_circuit *head, *tail;   /* handles whose registration is queued or sent, oldest first */
    int64_t retry_ns;                 /* no new connection before (coarse monotonic) after a failure */
    int64_t pumped_ns;                /* coarse time the hot path last read the connection */
    uint32_t drops;                   /* connections dropped so far */
    uint64_t unmatched;               /* replies that answered no request in flight, dropped */
};

struct cb_client {
    pthread_mutex_t lock;             /* handle cache, control connection, registrations, remap */
    bool bypass;                      /* $CB_DISABLED: nothing mapped */
    bool remapped;                    /* a remap happened since cb_status() last said so */
    bool check_replaced;              /* the daemon answered for a segment we may not have mapped */
    char instance[CB_INSTANCE_MAX + 1];
    _Atomic(struct cb__map *) map;    /* current mapping (NULL for a bypass client) */
    uint64_t seen_generation;         /* daemon generation cb_status() last reported */
    pthread_mutex_t history_lock;     /* the history cursor (never held while waiting) */
    uint64_t history_map;             /* id of the mapping the cursor counts in */
    uint64_t history_cursor;          /* next history sequence cb_next_transition() reads */
    struct cb__ctl ctl;
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
    /* Its registration (client lock): */
    uint64_t reg_id;                  /* the request in flight, 0: none */
    struct cb_circuit *reg_next;      /* the connection's queue of registrations */
    uint32_t reg_answers;             /* replies received so far: a waiter sees one arrive */
    int reg_err;                      /* the last reply: 0, the daemon's -errno, -ESTALE (not in our mapping) */
    int64_t reg_retry_ns;             /* the hot path sends no new one before (coarse monotonic) */
    char name[CB_NAME_MAX + 1];
};

static inline int64_t cb__clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* True when the daemon's heartbeat is older than the segment's stale limit
 * (by the coarse vDSO clock: no syscall); _at: at coarse time now. */
bool cb__heartbeat_stale(const struct cb_seg_header *h);
bool cb__heartbeat_stale_at(const struct cb_seg_header *h, int64_t now);

/* The state word every handle of a bypass client points at. */
extern const uint64_t cb__bypass_word;
/* The state word of a handle that was never bound (its registration has
 * not been answered yet): REMOVED, so nothing is counted for it. */
extern const uint64_t cb__unbound_word;

/* True if w is the state word of a live circuit in the incarnation expect
 * names: not removed, not retired. */
static inline bool cb__word_live(uint64_t w, uint32_t expect)
{
    return !(cb_seg_word_flags(w) & (CB_SEG_F_REMOVED | CB_SEG_F_RETIRED)) &&
           cb_seg_word_incarnation(w) << CB_SEG_INCARNATION_SHIFT == expect;
}

/* True if p points into m's records; then *slot is the record's slot. */
static inline bool cb__map_holds(const struct cb__map *m, const uint64_t *p, uint32_t *slot)
{
    uintptr_t off = (uintptr_t)p - m->records; /* wraps to a huge value below records */
    *slot = (uint32_t)(off / CB_SEG_RECORD_SIZE);
    return off < m->records_bytes;
}

/* True if fd is still the object (st_dev, st_ino) we opened: a process
 * that closes descriptors it did not open (a child after fork, say) may
 * have reused the number for something of its own. */
bool cb__fd_is(int fd, dev_t dev, ino_t ino);

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

/* client.c (client lock held) */
/* If the segment was replaced, map the new one and make it current, waiting
 * up to wait_ms for it to become ready (with the client lock released while
 * it waits). 0 (nothing to do, or remapped), -EAGAIN (replaced, the new one
 * is not ready yet), or an error of cb_client_open(). */
int cb__client_refresh_locked(cb_client *cl, int wait_ms);
/* From the hot path, when a record of the current mapping says RETIRED:
 * map the new segment if it is ready now, without waiting; a failure is
 * retried at most every 100 ms. */
void cb__client_remap_try(cb_client *cl, int64_t now_ns);
/* True if the daemon retired mapping m (its first record says so). */
bool cb__map_retired(const struct cb__map *m);

/* circuit.c (client lock held) */
/* Rebinds every handle that is not bound in the current mapping, by the
 * lock-free index, and queues a registration for those whose name is not
 * there (never waits for its answer). */
void cb__circuits_rebind(cb_client *cl);
/* Free every handle. */
void cb__circuits_free(cb_client *cl);
/* The daemon answered c's registration: rc 0 and the slot it gave, or its
 * error. Binds c when the slot is the name's in the current mapping. */
void cb__circuit_registered(cb_circuit *c, int rc, uint64_t slot);
/* For the hot path and cb_info_get (no lock held): c's word is retired,
 * removed or of another incarnation. With trylock and without waiting:
 * remap if the segment was replaced, rebind c by the lock-free index, queue
 * its registration if the name is gone, and read what the daemon answered
 * (at most once per coarse clock tick unless always_read). True if c is
 * bound to a live record now. */
bool cb__circuit_recover(cb_circuit *c, bool always_read);

/* ctl.c (client lock held) */
/* Queues c's registration (unless one is in flight) and sends what the
 * socket takes now. 0, or -errno when it could not be queued: no
 * connection (with backoff, none is tried within 100 ms of a failure) or
 * -EAGAIN (the daemon has not read what was sent). */
int cb__ctl_register(cb_client *cl, cb_circuit *c, bool backoff);
/* Sends what is queued and reads what has arrived, without waiting; gives
 * each reply to the registration it answers. */
void cb__ctl_pump(cb_client *cl);
/* Waits until c's registration is answered (its reg_answers moves past
 * answers_before) or deadline_ns (CLOCK_MONOTONIC), releasing the client
 * lock while it waits. 0, the daemon's error, -ETIMEDOUT, or a connection
 * error. */
int cb__ctl_wait(cb_client *cl, cb_circuit *c, uint32_t answers_before, int64_t deadline_ns);
/* Drops the connection: registrations in flight go back to unsent. The fd
 * is closed if it is this process's own (or, in a fork child handler,
 * inherited: inherited_fd_is_ours). */
void cb__ctl_drop(cb_client *cl, bool inherited_fd_is_ours);
/* Frees the buffers (cb_client_close). */
void cb__ctl_free(cb_client *cl);

/* lanes.c */
/* Once per process: the thread-exit key and the fork handler. 0 or -errno. */
int cb__lanes_init(void);
/* Register a new mapping's lanes (0, -ENOMEM) / release every lane this
 * process claimed through it, before it is unmapped. */
int cb__lanes_attach(struct cb__map *m);
void cb__lanes_detach(struct cb__map *m);
/* Every thread's hot-path memos (lanes.c: Memos) are to be made again: a
 * new mapping was published. */
void cb__memos_invalidate(void);

#endif /* CB_CLIENT_H */
