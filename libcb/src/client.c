/*
 * client.c - opening and closing a client, mapping the segment, noticing a
 * restarted or replaced daemon, and the $CB_DISABLED bypass.
 *
 * Mapping. The state region is opened O_RDONLY and mapped PROT_READ, so the
 * kernel, not libcb, guarantees a worker never changes a circuit. Open
 * waits (1 ms steps, 2 s at most) for the daemon's release store of
 * header.ready, then validates every size and offset the header claims
 * against the mapped size before anything behind it is read. The lanes
 * region is mapped read-write and must carry the same generation; a daemon
 * that is adopting a segment writes the two generations one after the other,
 * so a mismatch is retried within the same deadline.
 *
 * Sizes. An object is mapped only once fstat says it holds everything its
 * header claims (cb__seg_header_check, cb__lanes_header_check against the
 * size): touching a page past the end of a shm object is SIGBUS, so a
 * truncated object is refused with CB_EDAMAGED instead. Size 0 is a daemon
 * that created the object and has yet to size it (it sizes it in one
 * ftruncate), so that alone is waited for.
 *
 * Restart vs. replacement. A daemon restart that adopts the segment changes
 * only the generation: mappings, handles and lanes stay valid, and
 * cb_status() reports RESTARTED once. A daemon that cannot adopt (another
 * layout or capacity) marks every old record CB_SEG_F_RETIRED, unlinks the
 * objects and creates new ones. We notice through the retired flag (a
 * handle's slow path, or record 0 for cb_status) or through st_nlink == 0
 * on the fd we kept, map the new segment and publish it as the client's
 * current mapping. Handles move over one at a time, each on its own next
 * slow path, by the new mapping's lock-free index (circuit.c); cb_status()
 * moves them all. Old mappings stay mapped until cb_client_close(): a
 * thread that loaded a pointer into one just reads a retired word. The
 * trade-off is address space (one extra mapping per replacement, a rare
 * operator event) for a hot path that never needs a reference count.
 *
 * Remaps are serialised by the client's lock. From the hot path they are
 * attempted with trylock and only if the new segment is ready now (a few
 * non-blocking syscalls: shm_open, fstat, mmap); a failure is retried at
 * most every 100 ms. cb_status() waits up to 2 s for a new segment, with
 * the lock released while it waits.
 *
 * Doorbell FIFO. Each mapping opens the FIFO beside the daemon's socket
 * (lanes.c rings it; doorbell.c in cbd explains the two wake paths). A
 * daemon that restarts and adopts the segment makes a new FIFO; lanes.c
 * notices the new generation and rings the futex until the next
 * cb_status() (or remap) opens the new FIFO here. Replaced FIFO fds stay
 * open until the mapping is freed, for the same reason old mappings do: a
 * ringing thread needs no reference count. The fds are inherited across
 * fork; a child's rings go to the same daemon, which is right.
 *
 * Fork. A prefork master opens the client and forks; the fork handlers hold
 * every client's locks across fork() so a child never inherits one held
 * mid-remap, and the child drops the inherited control connection (ctl.c):
 * it connects its own when it first needs one. Lanes (lanes.c) have their
 * own fork rule. Descriptors a child inherited are closed (at
 * cb_client_close) only while they are still what we opened: a child that
 * closed every descriptor after fork may use the numbers for its own files.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

const uint64_t cb__bypass_word = (uint64_t)CB_SEG_F_DISABLED << CB_SEG_FLAGS_SHIFT;
const uint64_t cb__unbound_word = (uint64_t)CB_SEG_F_REMOVED << CB_SEG_FLAGS_SHIFT;

static pthread_mutex_t clients_lock = PTHREAD_MUTEX_INITIALIZER;
static cb_client *clients; /* every open client, for the fork handlers */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t next_map_id = 1;

static void fork_prepare(void)
{
    pthread_mutex_lock(&clients_lock);
    for (cb_client *cl = clients; cl != NULL; cl = cl->next) {
        pthread_mutex_lock(&cl->lock);
        pthread_mutex_lock(&cl->history_lock);
    }
}

static void fork_parent(void)
{
    for (cb_client *cl = clients; cl != NULL; cl = cl->next) {
        pthread_mutex_unlock(&cl->history_lock);
        pthread_mutex_unlock(&cl->lock);
    }
    pthread_mutex_unlock(&clients_lock);
}

static void fork_child(void)
{
    /* The connection is the parent's: close our copy of the descriptor
     * (nothing in the child can have reused it yet) and forget what was in
     * flight on it; the child's registrations go over its own. */
    for (cb_client *cl = clients; cl != NULL; cl = cl->next)
        cb__ctl_drop(cl, true);
    fork_parent();
}

static void fork_handlers_install(void)
{
    /* Registered after lanes.c's handlers, so (prepare handlers run in
     * reverse order) client locks are taken before the lanes registry's,
     * as the lock order in client.h says. */
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

bool cb__fd_is(int fd, dev_t dev, ino_t ino)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino;
}

static void close_if_ours(int fd, dev_t dev, ino_t ino)
{
    if (cb__fd_is(fd, dev, ino))
        close(fd);
}

/* 1 if a disable variable is true, 0 if none is set, -EINVAL if one is not
 * a boolean. A variable set to the empty string reads as unset, as
 * container and compose files often leave them. */
static int env_disabled(void)
{
    static const char *const vars[] = {"CB_DISABLED", "POWERTOOLS_CIRCUIT_BREAKER_DISABLED"};
    static atomic_flag warned = ATOMIC_FLAG_INIT;
    const char *set_by = NULL;
    for (size_t i = 0; i < 2; i++) {
        const char *v = getenv(vars[i]);
        if (v == NULL || v[0] == '\0')
            continue;
        int b = cb__parse_bool(v);
        if (b < 0) {
            fprintf(stderr, "cbd: %s='%s' is not a boolean (use 1/0, true/false, yes/no, on/off)\n", vars[i], v);
            return -EINVAL;
        }
        if (b && set_by == NULL)
            set_by = vars[i];
    }
    if (set_by != NULL && !atomic_flag_test_and_set(&warned))
        fprintf(stderr, "cbd: %s is set: circuit breakers are bypassed (all calls allowed)\n", set_by);
    return set_by != NULL;
}

static void sleep_1ms(void)
{
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
}

/* The size of the object behind fd (recording what it is in *dev, *ino):
 * 0 and *size, -EAGAIN while it is empty (created, not yet sized by the
 * daemon), CB_EDAMAGED when it is too small to hold a header of
 * header_size bytes (the daemon sizes an object in one step: something
 * truncated it), or -errno. */
static int object_size(int fd, uint64_t header_size, dev_t *dev, ino_t *ino, size_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    *dev = st.st_dev;
    *ino = st.st_ino;
    *size = (size_t)st.st_size;
    if (st.st_size == 0)
        return -EAGAIN;
    return (uint64_t)st.st_size < header_size ? CB_EDAMAGED : 0;
}

/* What a header check's verdict means to a client: another layout or not
 * cbd's (-EPROTO), or sizes that do not hold together, a truncated object
 * among them (CB_EDAMAGED). */
static int header_verdict(int rc)
{
    return rc == -EBADMSG ? CB_EDAMAGED : rc < 0 ? -EPROTO : 0;
}

/* One attempt at mapping a ready state region: 0, -EAGAIN (not sized or not
 * ready yet), -EPROTO (not a cbd segment of our layout), CB_EDAMAGED or
 * -errno. */
static int state_try_map(struct cb__map *m)
{
    size_t size = 0;
    int rc = object_size(m->state_fd, CB_SEG_HEADER_SIZE, &m->state_dev, &m->state_ino, &size);
    if (rc < 0)
        return rc;
    void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, m->state_fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    const struct cb_seg_header *h = p;
    /* Acquire pairs with the daemon's release store of ready, made after
     * every other header field: the checks below read a complete header,
     * and nothing past it is touched before they passed. */
    rc = atomic_load_explicit(&h->ready, memory_order_acquire) == 1 ? 0 : -EAGAIN;
    if (rc == 0)
        rc = header_verdict(cb__seg_header_check(h, size));
    if (rc < 0) {
        munmap(p, size);
        return rc;
    }
    m->hdr = h;
    m->state_size = size;
    m->capacity = h->capacity;
    m->records = (uintptr_t)h + h->records_offset;
    m->records_bytes = (uint64_t)h->capacity * CB_SEG_RECORD_SIZE;
    memcpy(m->socket_path, h->socket_path, sizeof m->socket_path);
    return 0;
}

/* One attempt at mapping the lanes region that belongs to m's state region:
 * 0, -EAGAIN (not matching yet), -EPROTO or -errno. */
static int lanes_try_map(struct cb__map *m)
{
    size_t size = 0;
    int rc = object_size(m->lanes_fd, CB_LANES_HEADER_SIZE, &m->lanes_dev, &m->lanes_ino, &size);
    if (rc < 0)
        return rc;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, m->lanes_fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    struct cb_lanes_header *lh = p, geo;
    /* Checked and used from one copy: any worker may rewrite the header
     * meanwhile. It is complete before the state region is ready. */
    memcpy(&geo, lh, sizeof geo);
    rc = header_verdict(cb__lanes_header_check(&geo, size));
    if (rc == 0 && geo.capacity != m->capacity)
        rc = -EPROTO;
    /* Acquire pairs with the daemon's store of the generations; the state
     * header's was read after its ready flag. */
    if (rc == 0 && atomic_load_explicit(&lh->generation, memory_order_acquire) !=
                       atomic_load_explicit(&m->hdr->generation, memory_order_acquire))
        rc = -EAGAIN; /* an adopting daemon has not stamped the lanes yet */
    if (rc < 0) {
        munmap(p, size);
        return rc;
    }
    m->lanes = lh;
    m->lanes_size = size;
    m->lane_count = geo.lane_count;
    m->lane_capacity = geo.lane_capacity;
    m->lane_stride = geo.lane_stride;
    m->lane0 = (char *)lh + geo.lanes_offset;
    m->permits = (_Atomic uint64_t *)((char *)lh + geo.permits_offset);
    m->call_counts = (m->hdr->features & CB_SEG_FEATURE_CALL_COUNTS) != 0;
    return 0;
}

/* Retries try(m) in 1 ms steps until deadline; a lasting -EAGAIN becomes
 * timeout_err. */
static int retry_until(int (*try)(struct cb__map *), struct cb__map *m, int64_t deadline, int timeout_err)
{
    for (;;) {
        int rc = try(m);
        if (rc != -EAGAIN)
            return rc;
        if (cb__clock_ns(CLOCK_MONOTONIC) >= deadline)
            return timeout_err;
        sleep_1ms();
    }
}

/* An fd on the doorbell FIFO beside the socket at socket_path (and the
 * FIFO's identity in *st), or -1. */
static int bell_fd(const char *socket_path, struct stat *st)
{
    char path[CB_SOCKET_PATH_MAX + sizeof CB__BELL_SUFFIX];
    if (socket_path[0] == '\0')
        return -1;
    snprintf(path, sizeof path, "%.*s%s", (int)CB_SOCKET_PATH_MAX, socket_path, CB__BELL_SUFFIX);
    /* A write-only open fails (ENXIO) unless someone reads: that skips the
     * FIFO of a daemon that died. The fd we keep is O_RDWR: with ourselves
     * as a reader, a ring after the daemon exits is a lost byte, never
     * EPIPE and a SIGPIPE that would kill the worker. */
    int probe = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (probe < 0)
        return -1; /* ENOENT (a daemon without the FIFO), EACCES, ENXIO: ring the futex */
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    close(probe);
    if (fd >= 0 && (fstat(fd, st) < 0 || !S_ISFIFO(st->st_mode))) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Opens the FIFO of the daemon generation the lanes region carries, unless
 * m already has it. Before m is published, or with the client lock held: the
 * only writer of m->bell. Failing is fine: lanes.c then rings the futex. */
static void bell_open(struct cb__map *m)
{
    struct cb__bell *cur = atomic_load_explicit(&m->bell, memory_order_relaxed);
    /* Acquire pairs with the daemon's store of the lanes generation. */
    uint64_t gen = atomic_load_explicit(&m->lanes->generation, memory_order_acquire);
    if (cur != NULL && cur->generation == gen && cur->fd >= 0)
        return;
    struct stat st = {0};
    int fd = bell_fd(m->socket_path, &st);
    if (cur != NULL && cur->generation == gen && fd < 0)
        return; /* still no FIFO for this daemon */
    struct cb__bell *b = malloc(sizeof *b);
    if (b == NULL) {
        if (fd >= 0)
            close(fd);
        return;
    }
    b->fd = fd;
    b->dev = st.st_dev;
    b->ino = st.st_ino;
    atomic_init(&b->checked_gen, 0); /* lanes.c checks it before its first ring */
    b->generation = gen;
    b->older = cur; /* a ringing thread may still hold cur: freed with m */
    /* Release pairs with the acquire load in doorbell_ring (lanes.c). */
    atomic_store_explicit(&m->bell, b, memory_order_release);
}

static void map_free(struct cb__map *m)
{
    struct cb__bell *b = atomic_load_explicit(&m->bell, memory_order_relaxed);
    while (b != NULL) {
        struct cb__bell *older = b->older;
        close_if_ours(b->fd, b->dev, b->ino);
        free(b);
        b = older;
    }
    if (m->hdr != NULL)
        munmap((void *)m->hdr, m->state_size);
    if (m->lanes != NULL)
        munmap(m->lanes, m->lanes_size);
    close_if_ours(m->state_fd, m->state_dev, m->state_ino);
    close_if_ours(m->lanes_fd, m->lanes_dev, m->lanes_ino);
    free(m);
}

/* Maps instance's segment, waiting up to wait_ms for it to become ready.
 * With `old`, a segment that is still old's object is -EAGAIN. */
static int map_open(const char *instance, int wait_ms, const struct cb__map *old, struct cb__map **out)
{
    char state_name[CB_SHM_NAME_MAX], lanes_name[CB_SHM_NAME_MAX];
    cb__shm_names(instance, state_name, lanes_name);
    struct cb__map *m = calloc(1, sizeof *m);
    if (m == NULL)
        return -ENOMEM;
    m->state_fd = m->lanes_fd = -1;
    m->id = atomic_fetch_add_explicit(&next_map_id, 1, memory_order_relaxed);
    int64_t deadline = cb__clock_ns(CLOCK_MONOTONIC) + (int64_t)wait_ms * 1000000;
    int rc = 0;
    m->state_fd = shm_open(state_name, O_RDONLY | O_CLOEXEC, 0);
    if (m->state_fd < 0)
        rc = -errno;
    else if (old != NULL && cb__fd_is(m->state_fd, old->state_dev, old->state_ino))
        rc = -EAGAIN; /* still the one we have (retired, not yet unlinked: the new daemon is starting) */
    if (rc == 0)
        rc = retry_until(state_try_map, m, deadline, -ETIMEDOUT);
    if (rc == 0 && (m->lanes_fd = shm_open(lanes_name, O_RDWR | O_CLOEXEC, 0)) < 0)
        rc = -errno;
    if (rc == 0)
        rc = retry_until(lanes_try_map, m, deadline, -ETIMEDOUT);
    if (rc == 0)
        bell_open(m);
    if (rc < 0) {
        map_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static void clients_add(cb_client *cl)
{
    pthread_mutex_lock(&clients_lock);
    cl->next = clients;
    clients = cl;
    pthread_mutex_unlock(&clients_lock);
}

static void clients_remove(cb_client *cl)
{
    pthread_mutex_lock(&clients_lock);
    for (cb_client **pp = &clients; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == cl) {
            *pp = cl->next;
            break;
        }
    }
    pthread_mutex_unlock(&clients_lock);
}

/* Maps the segment into a fresh client (not yet visible to other threads). */
static int client_map(cb_client *cl)
{
    struct cb__map *m;
    int rc = map_open(cl->instance, CB__WAIT_READY_MS, NULL, &m);
    if (rc == 0 && (rc = cb__lanes_attach(m)) < 0)
        map_free(m);
    if (rc < 0)
        return rc;
    atomic_store_explicit(&cl->map, m, memory_order_relaxed); /* published by cb_client_open's return */
    /* Acquire pairs with the daemon's release stores of the generation and
     * of history_head. */
    cl->seen_generation = atomic_load_explicit(&m->hdr->generation, memory_order_acquire);
    cl->history_map = m->id;
    cl->history_cursor = atomic_load_explicit(&m->hdr->history_head, memory_order_acquire);
    return 0;
}

int cb_client_open(cb_client **out, const char *instance)
{
    if (out == NULL)
        return -EINVAL;
    if (instance == NULL) {
        const char *env = getenv("CB_INSTANCE");
        instance = (env != NULL && env[0] != '\0') ? env : "default";
    }
    if (cb__instance_check(instance) < 0)
        return -EINVAL;
    int disabled = env_disabled();
    if (disabled < 0)
        return disabled;
    /* lanes.c's fork handlers first, then ours: see fork_handlers_install. */
    int rc = cb__lanes_init();
    if (rc < 0)
        return rc;
    pthread_once(&fork_once, fork_handlers_install);
    cb_client *cl = calloc(1, sizeof *cl);
    if (cl == NULL)
        return -ENOMEM;
    pthread_mutex_init(&cl->lock, NULL);
    pthread_mutex_init(&cl->history_lock, NULL);
    cl->ctl.fd = -1;
    cl->ctl.next_id = 1;
    cl->bypass = disabled;
    strcpy(cl->instance, instance);
    rc = disabled ? 0 : client_map(cl);
    if (rc < 0) {
        pthread_mutex_destroy(&cl->history_lock);
        pthread_mutex_destroy(&cl->lock);
        free(cl);
        return rc;
    }
    clients_add(cl);
    *out = cl;
    return 0;
}

void cb_client_close(cb_client *cl)
{
    if (cl == NULL)
        return;
    clients_remove(cl);
    pthread_mutex_lock(&cl->lock);
    struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    while (m != NULL) {
        struct cb__map *older = m->older;
        cb__lanes_detach(m);
        map_free(m);
        m = older;
    }
    cb__ctl_free(cl);
    cb__circuits_free(cl);
    pthread_mutex_unlock(&cl->lock);
    pthread_mutex_destroy(&cl->history_lock);
    pthread_mutex_destroy(&cl->lock);
    free(cl);
}

/* Maps the segment that replaced the current one and makes it current;
 * with wait_ms, waits for it to become ready with the lock released. */
static int remap_locked(cb_client *cl, int wait_ms)
{
    struct cb__map *old = atomic_load_explicit(&cl->map, memory_order_relaxed);
    struct cb__map *m;
    int rc;
    if (wait_ms > 0) {
        pthread_mutex_unlock(&cl->lock); /* old stays mapped until cb_client_close */
        rc = map_open(cl->instance, wait_ms, old, &m);
        pthread_mutex_lock(&cl->lock);
        if (rc == 0 && atomic_load_explicit(&cl->map, memory_order_relaxed) != old) {
            map_free(m); /* another thread remapped meanwhile */
            return 0;
        }
    } else {
        rc = map_open(cl->instance, 0, old, &m);
    }
    if (rc == 0 && (rc = cb__lanes_attach(m)) < 0)
        map_free(m);
    if (rc < 0)
        return rc;
    m->older = old;
    /* Release pairs with the acquire load in cb__map_of() and cb_record():
     * whoever sees the new mapping sees its fields initialised. */
    atomic_store_explicit(&cl->map, m, memory_order_release);
    cb__memos_invalidate(); /* threads' memos name the old mapping's lanes */
    cb__ctl_drop(cl, false); /* registrations in flight go to the new daemon, which may listen elsewhere */
    cl->remapped = true;
    cl->check_replaced = false;
    return 0;
}

bool cb__map_retired(const struct cb__map *m)
{
    /* Acquire pairs with the daemon's release stores of circuit_count and
     * of the retired word (segment_owner.c retires every record). */
    if (atomic_load_explicit((_Atomic uint32_t *)&m->hdr->circuit_count, memory_order_acquire) == 0)
        return false;
    uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&CB_SEG_RECORD(m->hdr, 0)->state_word, memory_order_acquire);
    return (cb_seg_word_flags(w) & CB_SEG_F_RETIRED) != 0;
}

/* The daemon replaced m: it retired its records, or unlinked the object. */
static bool replaced(const struct cb__map *m)
{
    struct stat st;
    return cb__map_retired(m) || (fstat(m->state_fd, &st) == 0 && st.st_dev == m->state_dev &&
                                  st.st_ino == m->state_ino && st.st_nlink == 0);
}

int cb__client_refresh_locked(cb_client *cl, int wait_ms)
{
    if (!cl->check_replaced && !replaced(atomic_load_explicit(&cl->map, memory_order_relaxed)))
        return 0;
    int rc = remap_locked(cl, wait_ms);
    if (rc == -EAGAIN)
        cl->check_replaced = false; /* the segment we have is still the instance's */
    return rc;
}

void cb__client_remap_try(cb_client *cl, int64_t now_ns)
{
    if (now_ns < atomic_load_explicit(&cl->retry_after_ns, memory_order_relaxed))
        return;
    if (cb__client_refresh_locked(cl, 0) < 0)
        atomic_store_explicit(&cl->retry_after_ns, now_ns + CB__RETRY_NS, memory_order_relaxed);
}

static bool daemon_alive(const struct cb_seg_header *h)
{
    /* Acquire pairs with the daemon's release store of 0 when it stops. */
    return atomic_load_explicit(&h->daemon_pid, memory_order_acquire) != 0;
}

unsigned cb_status(cb_client *cl)
{
    if (cl == NULL)
        return 0;
    if (cl->bypass)
        return CB_STATUS_DISABLED;
    unsigned st = 0;
    pthread_mutex_lock(&cl->lock);
    cb__client_refresh_locked(cl, CB__WAIT_READY_MS); /* on failure we report on the mapping we have */
    bell_open(atomic_load_explicit(&cl->map, memory_order_relaxed)); /* a restarted daemon's new FIFO */
    cb__circuits_rebind(cl);
    cb__ctl_pump(cl);
    if (cl->remapped)
        st |= CB_STATUS_REMAPPED;
    cl->remapped = false;
    const struct cb_seg_header *h = atomic_load_explicit(&cl->map, memory_order_relaxed)->hdr;
    /* Acquire pairs with the release store of a restarted daemon's generation. */
    uint64_t gen = atomic_load_explicit(&h->generation, memory_order_acquire);
    if (gen != cl->seen_generation)
        st |= CB_STATUS_RESTARTED;
    cl->seen_generation = gen;
    if (cb__heartbeat_stale(h))
        st |= CB_STATUS_STALE;
    else if (daemon_alive(h))
        st |= CB_STATUS_RUNNING;
    pthread_mutex_unlock(&cl->lock);
    return st;
}

bool cb__heartbeat_stale_at(const struct cb_seg_header *h, int64_t now)
{
    /* Relaxed: the heartbeat is a lone timestamp that publishes nothing else. */
    return now - (int64_t)atomic_load_explicit(&h->heartbeat_ns, memory_order_relaxed) >
           (int64_t)h->stale_limit_ms * 1000000;
}

bool cb__heartbeat_stale(const struct cb_seg_header *h)
{
    /* CLOCK_MONOTONIC_COARSE is read in the vDSO without a syscall; it lags
     * the daemon's CLOCK_MONOTONIC by at most a tick, which can only make us
     * later to call the daemon stale. cb_status and the hot path's fail-open
     * both ask here, so STALE always means calls are let through. */
    return cb__heartbeat_stale_at(h, cb__clock_ns(CLOCK_MONOTONIC_COARSE));
}
