/*
 * segment_owner.c - create, adopt and publish the two shm regions.
 *
 * Adopt or create. At start the daemon first tries to adopt what a
 * previous daemon left (after a crash, SIGKILL or a clean stop, which keeps
 * the objects on purpose): the state object must pass cb__seg_header_check,
 * the lanes object cb__lanes_header_check, their geometry must equal the
 * configured one (capacity, history_capacity, lanes, lane_capacity) and
 * every record in use must be sane. Then records, index, history, lanes
 * (heads and tails) and permit words are kept, so workers that have the
 * segment mapped keep going as if nothing happened; only the generation,
 * daemon_pid and heartbeat change (which libcb reports as RESTARTED).
 *
 * Otherwise (missing, foreign, another layout major, another geometry) the
 * old objects are replaced: if the old state object still looks like a cbd
 * segment of any major (magic prefix "CBD-SEGMENT-v" and sane capacity,
 * records_offset and record_size - the header prefix and the state word at
 * record offset 0 are frozen across layout majors for exactly this), every
 * old record's state word gets CB_SEG_F_RETIRED, which sends workers still
 * using it to the slow path and from there to remap. Then both names are
 * unlinked and fresh objects created; mappings held by workers stay valid
 * until they let go.
 *
 * A segment whose daemon_pid is a live process named cbd belongs to another
 * daemon of the same instance: refuse to start rather than steal it.
 *
 * Modes: the state region gets segment_mode (default 0640: workers of the
 * group map it read-only, and the kernel keeps them from writing it); the
 * lanes region segment_mode | 0060, because the group's workers write
 * their lanes. With socket_group set, both objects belong to that group
 * (the workers' group), else to the daemon's. Mode and group are set on
 * creation and again on adoption, so a changed configuration applies at
 * the next start; a daemon that may not set them refuses to start rather
 * than run with access the operator did not ask for.
 *
 * The lanes object is writable by the workers' group, so any of them can
 * ftruncate it: the next access to a page beyond the new size is a SIGBUS,
 * in the daemon as in every worker. The daemon keeps the object open and
 * undoes a truncation: a SIGBUS handler restores the size (ftruncate and
 * fallocate, both plain system calls) when the faulting address is in the
 * lanes mapping, so the faulting access succeeds when it is retried, and
 * every heartbeat checks the size, so workers are exposed for at most a
 * heartbeat. Events in the truncated pages are lost (the drain treats the
 * zeroed heads and tails as garbage); the log says it happened.
 *
 * Writes by the daemon into its own records use relaxed stores; what
 * publishes them is the release store named at each site.
 */
#define _GNU_SOURCE /* SEEK_DATA, SEEK_HOLE */
#include "segment_owner.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fault.h"
#include "log.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Maps an existing object RW: 0, or -errno. *size is its size. */
static int map_existing(const char *name, void **addr, size_t *size)
{
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0)
        rc = -errno;
    else if (st.st_size < (off_t)CB_SEG_HEADER_SIZE)
        rc = -EBADMSG;
    else if ((*addr = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        rc = -errno;
    *size = (size_t)st.st_size;
    close(fd);
    return rc;
}

/* Is pid a live (not zombie) process whose command is cbd? A daemon killed
 * with SIGKILL stays a zombie until its parent reaps it; that one is dead. */
static int live_cbd(uint32_t pid)
{
    char path[64], stat[128] = "";
    if (pid == 0 || pid > 0x7fffffffu || pid == (uint32_t)getpid() || kill((pid_t)pid, 0) < 0)
        return 0;
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    /* "PID (COMM) STATE ..." */
    int is = fgets(stat, sizeof stat, f) != NULL && strstr(stat, " (cbd) ") != NULL &&
             strstr(stat, " (cbd) Z") == NULL;
    fclose(f);
    return is;
}

/* Every record in use has a complete current version, and every live one a
 * valid name (policy fields are repaired, not refused: see repair_records). */
static int records_sane(const struct cb_seg_header *h, char *why, size_t whysize)
{
    /* Relaxed: the writer was a daemon that has exited; its stores are in the object. */
    uint32_t count = atomic_load_explicit(&((struct cb_seg_header *)h)->circuit_count, memory_order_relaxed);
    if (count > h->capacity) {
        snprintf(why, whysize, "circuit_count %u exceeds capacity %u", count, h->capacity);
        return 0;
    }
    for (uint32_t i = 0; i < count; i++) {
        struct cb_seg_record *r = CB_SEG_RECORD(h, i);
        struct cb_seg_vdata d;
        if (cb_seg_version_try_read(r, &d, NULL) < 0) {
            snprintf(why, whysize, "record %u has no complete version", i);
            return 0;
        }
        if (cb_seg_word_flags(d.word) & CB_SEG_F_REMOVED)
            continue;
        if (memchr(r->name, '\0', sizeof r->name) == NULL || cb__name_check(r->name) < 0 ||
            cb_seg_word_state(d.word) > CB_HALF_OPEN) {
            snprintf(why, whysize, "record %u is corrupt", i);
            return 0;
        }
    }
    return 1;
}

/* Why the existing regions cannot be adopted (into why), or "" if they can. */
static void adopt_check(const struct cbd_segment *s, const struct cbd_config *cfg, char *why, size_t whysize)
{
    const struct cb_seg_header *h = s->hdr;
    const struct cb_lanes_header *l = s->lanes;
    int rc = cb__seg_header_check(h, s->state_size);
    why[0] = '\0';
    if (rc == -EPROTO)
        snprintf(why, whysize, "it is not a cbd segment of layout major %u (magic '%.15s', major %u)", CB_SEG_MAJOR,
                 h->magic, h->major);
    else if (rc < 0)
        snprintf(why, whysize, "its header is inconsistent with its size");
    else if (h->capacity != cfg->capacity || h->history_capacity != cfg->history_capacity)
        snprintf(why, whysize, "its capacity %u / history_capacity %u differ from the configured %u / %u",
                 h->capacity, h->history_capacity, cfg->capacity, cfg->history_capacity);
    else if (l == NULL || cb__lanes_header_check(l, s->lanes_size) < 0)
        snprintf(why, whysize, "its lanes region %s is missing or invalid", s->lanes_name);
    else if (l->lane_count != cfg->lanes || l->lane_capacity != cfg->lane_capacity || l->capacity != h->capacity)
        snprintf(why, whysize, "its lanes %u x %u differ from the configured %u x %u", l->lane_count,
                 l->lane_capacity, cfg->lanes, cfg->lane_capacity);
    else
        records_sane(h, why, whysize);
}

/* Takes over adopted regions: new generation, pid, heartbeat; the header's
 * tunables follow the current configuration. */
static void adopt(struct cbd_segment *s, const struct cbd_config *cfg)
{
    struct cb_seg_header *h = s->hdr;
    uint64_t gen = ((uint64_t)getpid() << 32) ^ mono_ns();
    h->stale_policy = cfg->stale_policy;
    h->stale_limit_ms = cfg->stale_limit_ms;
    /* A minor-0 segment's lanes have zeroes where the call counts go (never
     * written): this daemon folds them, so workers may count there. Set
     * before the generation below, which libcb reads the header after. */
    if (h->minor < CB_SEG_MINOR) {
        h->minor = s->lanes->minor = CB_SEG_MINOR;
        h->features |= CB_SEG_FEATURE_CALL_COUNTS;
    }
    h->heartbeat_interval_ms = cfg->heartbeat_ms;
    if (strcmp(h->socket_path, cfg->socket) != 0)
        snprintf(h->socket_path, sizeof h->socket_path, "%s", cfg->socket);
    /* The previous daemon's doorbell state means nothing to this one. */
    atomic_store_explicit(&s->lanes->doorbell, 0, memory_order_relaxed);
    atomic_store_explicit(&h->heartbeat_ns, mono_ns(), memory_order_release); /* pairs with cb_status' acquire */
    /* Release pairs with cb_status' acquire load of daemon_pid. */
    atomic_store_explicit(&h->daemon_pid, (uint32_t)getpid(), memory_order_release);
    /* Lanes first: libcb accepts the pair once the lanes generation equals
     * the state generation it read (acquire on its side). */
    atomic_store_explicit(&s->lanes->generation, gen, memory_order_release);
    atomic_store_explicit(&h->generation, gen, memory_order_release);
    s->adopted = 1;
    cbd_log(CBD_LOG_INFO, "adopted segment %s with %u circuits", s->state_name,
            atomic_load_explicit(&h->circuit_count, memory_order_relaxed));
}

/* Sets RETIRED in the state word (record offset 0) of every record that
 * starts in [from, to) of the mapped object. Returns how many. */
static uint64_t retire_range(char *base, uint64_t first, uint64_t rs, uint64_t from, uint64_t to)
{
    uint64_t n = 0;
    for (uint64_t off = first + (from - first + rs - 1) / rs * rs; off < to; off += rs, n++)
        /* Release pairs with cb_allow's acquire load: a worker that sees
         * RETIRED goes to remap. */
        atomic_fetch_or_explicit((_Atomic uint64_t *)(base + off), (uint64_t)CB_SEG_F_RETIRED << CB_SEG_FLAGS_SHIFT,
                                 memory_order_release);
    return n;
}

/* Marks every record of a segment about to be replaced RETIRED. Only the
 * frozen prefix of the header is trusted (magic prefix, record_size,
 * capacity, records_offset), and only after checking it against the size.
 * Holes in the object (records never written) are skipped with SEEK_DATA,
 * so a large sparse segment is not paged in just to be thrown away. */
static void retire_records(const char *name)
{
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    struct stat st;
    char *base = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size >= (off_t)CB_SEG_HEADER_SIZE)
        base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const struct cb_seg_header *h = (const void *)base;
    uint64_t rs = 0, first = 0, end = 0, marked = 0;
    if (base != MAP_FAILED) {
        rs = h->record_size;
        first = h->records_offset;
        end = first + (uint64_t)h->capacity * rs;
    }
    if (base != MAP_FAILED && memcmp(h->magic, "CBD-SEGMENT-v", 13) == 0 && rs >= 8 && rs % 8 == 0 && first >= 64 &&
        first % 8 == 0 && h->capacity > 0 && end <= (uint64_t)st.st_size) {
        for (off_t pos = (off_t)first, data, hole; (uint64_t)pos < end; pos = hole) {
            if ((data = lseek(fd, pos, SEEK_DATA)) < 0 && errno == ENXIO)
                break; /* nothing but holes from here */
            if (data < 0) /* no SEEK_DATA on this filesystem: walk everything */
                data = pos, hole = (off_t)end;
            else if ((hole = lseek(fd, data, SEEK_HOLE)) < 0 || (uint64_t)hole > end)
                hole = (off_t)end;
            marked += retire_range(base, first, rs, (uint64_t)data, (uint64_t)hole);
        }
        cbd_log(CBD_LOG_INFO, "retired %llu records of the old segment %s", (unsigned long long)marked, name);
    }
    if (base != MAP_FAILED)
        munmap(base, (size_t)st.st_size);
    if (fd >= 0)
        close(fd);
}

static int reserve(int fd, uint64_t size);
static void repair_records(struct cbd_segment *s);

/* The access the configuration asks for: fchmod (the umask does not
 * apply), and the group when one is configured (gid -1: keep). */
static int set_access(int fd, mode_t mode, long gid)
{
    if (fchmod(fd, mode) < 0 || (gid >= 0 && fchown(fd, (uid_t)-1, (gid_t)gid) < 0))
        return -errno;
    return 0;
}

/* The configured modes and group: *state_mode, *lanes_mode, *gid (-1: none). */
static void access_of(const struct cbd_config *cfg, mode_t *state_mode, mode_t *lanes_mode, long *gid)
{
    unsigned g;
    *state_mode = (mode_t)cfg->segment_mode;
    *lanes_mode = (mode_t)(cfg->segment_mode | 0060);
    *gid = cbd_config_gid(cfg->socket_group, &g) == 0 ? (long)g : -1;
}

/* Re-applies mode and group to an adopted object and allocates every page
 * of it (a previous daemon may have left it sparse); logs what failed. */
static int reset_access(const char *name, mode_t mode, long gid, const char *group, uint64_t size)
{
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    int rc = fd < 0 ? -errno : set_access(fd, mode, gid);
    if (rc < 0)
        cbd_log(CBD_LOG_ERROR, "cannot give segment %s mode %04o%s%s: %s", name, (unsigned)mode,
                gid >= 0 ? " and group " : "", gid >= 0 ? group : "", strerror(-rc));
    else if ((rc = reserve(fd, size)) < 0)
        cbd_log(CBD_LOG_ERROR, "cannot allocate the %llu bytes of segment %s: %s%s", (unsigned long long)size, name,
                strerror(-rc), rc == -ENOSPC ? " (/dev/shm is full: free it)" : "");
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Allocates every page of the object now: a full /dev/shm (world-writable:
 * anyone can fill it) is an error here, at start, instead of a SIGBUS the
 * first time the daemon touches a page of a sparse object. 0 or -errno. */
static int reserve(int fd, uint64_t size)
{
    CBD_FAULT("segment.reserve");
    int rc = posix_fallocate(fd, 0, (off_t)size); /* returns the error, does not set errno */
    return rc == EINTR ? reserve(fd, size) : -rc;
}

/* Creates one object of size bytes with mode and group, mapped RW into *addr. */
static int create_object(const char *name, uint64_t size, mode_t mode, long gid, void **addr)
{
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int rc = set_access(fd, mode, gid);
    if (rc == 0 && ftruncate(fd, (off_t)size) < 0)
        rc = -errno;
    if (rc == 0)
        rc = reserve(fd, size);
    if (rc == 0 && (*addr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        rc = -errno;
    close(fd);
    if (rc < 0)
        shm_unlink(name);
    return rc;
}

static void fill_headers(struct cbd_segment *s, const struct cbd_config *cfg, const struct cb_seg_geometry *g)
{
    struct cb_seg_header *h = s->hdr;
    struct cb_lanes_header *l = s->lanes;
    uint64_t gen = ((uint64_t)getpid() << 32) ^ mono_ns();
    memcpy(h->magic, CB_SEG_MAGIC, sizeof CB_SEG_MAGIC);
    h->major = CB_SEG_MAJOR;
    h->minor = CB_SEG_MINOR;
    h->header_size = CB_SEG_HEADER_SIZE;
    h->record_size = CB_SEG_RECORD_SIZE;
    h->capacity = g->capacity;
    h->index_slots = g->index_slots;
    h->history_capacity = g->history_capacity;
    h->stale_policy = cfg->stale_policy;
    h->features = CB_SEG_FEATURES_USED | CB_SEG_FEATURE_CALL_COUNTS;
    h->total_size = g->state_size;
    h->index_offset = g->index_offset;
    h->records_offset = g->records_offset;
    h->history_offset = g->history_offset;
    h->stale_limit_ms = cfg->stale_limit_ms;
    h->heartbeat_interval_ms = cfg->heartbeat_ms;
    snprintf(h->instance, sizeof h->instance, "%s", cfg->instance);
    snprintf(h->socket_path, sizeof h->socket_path, "%s", cfg->socket);
    atomic_store_explicit(&h->daemon_pid, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&h->generation, gen, memory_order_relaxed);
    atomic_store_explicit(&h->heartbeat_ns, mono_ns(), memory_order_relaxed);
    memcpy(l->magic, CB_LANES_MAGIC, sizeof CB_LANES_MAGIC);
    l->major = CB_SEG_MAJOR;
    l->minor = CB_SEG_MINOR;
    l->header_size = CB_LANES_HEADER_SIZE;
    l->lane_count = g->lane_count;
    l->lane_capacity = g->lane_capacity;
    l->lane_stride = g->lane_stride;
    l->capacity = g->capacity;
    l->total_size = g->lanes_size;
    l->permits_offset = g->permits_offset;
    l->lanes_offset = g->lanes_offset;
    /* Release: the lanes header above is complete before a client that
     * matched generations (acquire) reads it; ready in the state region is
     * the final publication. */
    atomic_store_explicit(&l->generation, gen, memory_order_release);
}

static int create_fresh(struct cbd_segment *s, const struct cbd_config *cfg, const struct cb_seg_geometry *g)
{
    void *state = NULL, *lanes = NULL;
    mode_t state_mode, lanes_mode;
    long gid;
    access_of(cfg, &state_mode, &lanes_mode, &gid);
    int rc = create_object(s->state_name, g->state_size, state_mode, gid, &state);
    if (rc == 0 && (rc = create_object(s->lanes_name, g->lanes_size, lanes_mode, gid, &lanes)) < 0) {
        munmap(state, g->state_size);
        shm_unlink(s->state_name);
    }
    if (rc < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot create segment %s (%llu bytes, mode %04o) / %s (%llu bytes, mode %04o)%s%s: "
                               "%s%s", s->state_name, (unsigned long long)g->state_size, (unsigned)state_mode,
                s->lanes_name, (unsigned long long)g->lanes_size, (unsigned)lanes_mode,
                gid >= 0 ? " for group " : "", gid >= 0 ? cfg->socket_group : "", strerror(-rc),
                rc == -ENOSPC ? " (/dev/shm is full: free it, or lower `capacity`, `lanes` or `lane_capacity`)" : "");
        return rc;
    }
    s->hdr = state;
    s->lanes = lanes;
    s->state_size = g->state_size;
    s->lanes_size = g->lanes_size;
    fill_headers(s, cfg, g);
    return 0;
}

static void unmap_all(struct cbd_segment *s)
{
    if (s->hdr != NULL)
        munmap(s->hdr, s->state_size);
    if (s->lanes != NULL)
        munmap(s->lanes, s->lanes_size);
    s->hdr = NULL;
    s->lanes = NULL;
}

static int segment_open(struct cbd_segment *s, const struct cbd_config *cfg)
{
    struct cb_seg_geometry g;
    char why[256];
    memset(s, 0, sizeof *s);
    cb__shm_names(cfg->instance, s->state_name, s->lanes_name);
    if (cb__seg_geometry(cfg->capacity, cfg->lanes, cfg->lane_capacity, cfg->history_capacity, &g) < 0)
        return -EINVAL; /* config.c keeps the options within these bounds */
    int rc = map_existing(s->state_name, (void **)&s->hdr, &s->state_size);
    if (rc == -ENOENT) {
        cbd_log(CBD_LOG_INFO, "creating segment %s: none exists yet", s->state_name);
        shm_unlink(s->lanes_name); /* an orphan lanes object has nothing to keep */
        return create_fresh(s, cfg, &g);
    }
    if (rc == 0 && live_cbd(atomic_load_explicit(&s->hdr->daemon_pid, memory_order_relaxed))) {
        cbd_log(CBD_LOG_ERROR, "segment %s belongs to cbd pid %u, which is running: one daemon per instance",
                s->state_name, atomic_load_explicit(&s->hdr->daemon_pid, memory_order_relaxed));
        unmap_all(s);
        return -EBUSY;
    }
    if (rc == 0) {
        if (map_existing(s->lanes_name, (void **)&s->lanes, &s->lanes_size) < 0)
            s->lanes = NULL;
        adopt_check(s, cfg, why, sizeof why);
        if (why[0] == '\0') {
            mode_t state_mode, lanes_mode;
            long gid;
            access_of(cfg, &state_mode, &lanes_mode, &gid);
            if ((rc = reset_access(s->state_name, state_mode, gid, cfg->socket_group, s->state_size)) < 0 ||
                (rc = reset_access(s->lanes_name, lanes_mode, gid, cfg->socket_group, s->lanes_size)) < 0) {
                unmap_all(s);
                return rc;
            }
            adopt(s, cfg);
            repair_records(s);
            return 0;
        }
    } else {
        snprintf(why, sizeof why, "it cannot be mapped (%s)", strerror(-rc));
    }
    unmap_all(s);
    cbd_log(CBD_LOG_WARN, "replacing segment %s: %s; workers will remap", s->state_name, why);
    retire_records(s->state_name);
    shm_unlink(s->state_name);
    shm_unlink(s->lanes_name);
    return create_fresh(s, cfg, &g);
}

/* ---- the lanes object's size, guarded ---------------------------------------- */

/* The one lanes mapping of this process the SIGBUS handler may restore. */
static struct {
    char *base;
    size_t size;
    int fd;
    volatile sig_atomic_t restored;
} guard = {.fd = -1};

static int restore_size(int fd, size_t size)
{
    /* ftruncate and fallocate: system calls, safe in a signal handler */
    if (ftruncate(fd, (off_t)size) < 0 || fallocate(fd, 0, 0, (off_t)size) < 0)
        return -errno;
    return 0;
}

static void on_sigbus(int sig, siginfo_t *si, void *uctx)
{
    (void)uctx;
    char *p = si->si_addr;
    int saved = errno;
    if (guard.base != NULL && p >= guard.base && p < guard.base + guard.size &&
        restore_size(guard.fd, guard.size) == 0) {
        guard.restored++;
        errno = saved;
        return; /* the access is retried on a page that exists again */
    }
    signal(sig, SIG_DFL); /* not ours to mend: die as without the handler */
    raise(sig);
}

/* Opens the lanes object again to keep, and guards its mapping. */
static void guard_lanes(struct cbd_segment *s)
{
    s->lanes_fd = shm_open(s->lanes_name, O_RDWR | O_CLOEXEC, 0);
    if (s->lanes_fd < 0) {
        cbd_log(CBD_LOG_WARN, "cannot keep %s open (%s): a truncation of it by a worker would not be undone",
                s->lanes_name, strerror(errno));
        return;
    }
    guard.fd = s->lanes_fd;
    guard.size = s->lanes_size;
    guard.base = (char *)s->lanes;
    struct sigaction sa = {.sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO | SA_NODEFER};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

void cbd_segment_lanes_check(struct cbd_segment *s)
{
    struct stat st;
    uint64_t by_signal = (uint64_t)guard.restored;
    if (s->lanes_fd >= 0 && fstat(s->lanes_fd, &st) == 0 && (uint64_t)st.st_size < s->lanes_size) {
        int rc = restore_size(s->lanes_fd, s->lanes_size);
        cbd_log(rc == 0 ? CBD_LOG_WARN : CBD_LOG_ERROR, "lanes region %s was truncated to %lld bytes by a local "
                "user with write access to it: %s%s", s->lanes_name, (long long)st.st_size,
                rc == 0 ? "restored (events in the truncated part are lost)" : "cannot restore it: ",
                rc == 0 ? "" : strerror(-rc));
        s->lanes_restored++;
    }
    if (by_signal != 0) {
        guard.restored = 0;
        s->lanes_restored += by_signal;
        cbd_log(CBD_LOG_WARN, "lanes region %s was truncated by a local user with write access to it: restored "
                              "when the daemon touched it (events in the truncated part are lost)", s->lanes_name);
    }
}

int cbd_segment_open(struct cbd_segment *s, const struct cbd_config *cfg)
{
    int rc = segment_open(s, cfg);
    s->lanes_fd = -1;
    if (rc == 0)
        guard_lanes(s);
    return rc;
}

void cbd_segment_publish(struct cbd_segment *s)
{
    /* Release pairs with cb_client_open's acquire load of ready: every
     * header field, record and index slot written so far is visible. */
    atomic_store_explicit(&s->hdr->ready, 1, memory_order_release);
}

static void beat(uv_timer_t *t)
{
    struct cbd_segment *s = t->data;
    cbd_segment_lanes_check(s);
    /* Release pairs with libcb's acquire load in its staleness check. */
    atomic_store_explicit(&s->hdr->heartbeat_ns, mono_ns(), memory_order_release);
}

int cbd_segment_heartbeat_start(struct cbd_segment *s, uv_loop_t *loop, uint32_t interval_ms)
{
    int rc = uv_timer_init(loop, &s->heartbeat);
    if (rc < 0)
        return rc;
    s->heartbeat.data = s;
    s->heartbeat_started = 1;
    beat(&s->heartbeat);
    return uv_timer_start(&s->heartbeat, beat, interval_ms, interval_ms);
}

void cbd_segment_stop_heartbeat(struct cbd_segment *s)
{
    if (s->heartbeat_started)
        uv_close((uv_handle_t *)&s->heartbeat, NULL);
    s->heartbeat_started = 0;
}

/* The index position holding slot + 1 for a name of this hash, or -1. */
static int64_t index_find(const struct cb_seg_header *h, uint64_t hash, uint32_t slot)
{
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    uint32_t mask = h->index_slots - 1;
    for (uint32_t p = 0; p <= mask; p++) {
        uint32_t v = atomic_load_explicit(&index[(hash + p) & mask], memory_order_relaxed); /* only writer */
        if (v == 0)
            return -1;
        if (v == slot + 1)
            return (int64_t)((hash + p) & mask);
    }
    return -1;
}

/* Puts slot + 1 at the first empty or removed position of hash's probe
 * sequence. The index has at least twice as many positions as records, so
 * there always is one. */
static void index_insert(struct cb_seg_header *h, uint64_t hash, uint32_t slot)
{
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    uint32_t mask = h->index_slots - 1;
    for (uint32_t p = 0; p <= mask; p++) {
        _Atomic uint32_t *e = &index[(hash + p) & mask];
        uint32_t v = atomic_load_explicit(e, memory_order_relaxed);
        if (v == 0 || v == CB_SEG_INDEX_TOMBSTONE) {
            /* Release pairs with cb__seg_lookup's acquire load of the slot:
             * the record is complete before a reader follows it. */
            atomic_store_explicit(e, slot + 1, memory_order_release);
            return;
        }
    }
}

/* Marks position pos removed, then turns removed positions back into empty
 * ones from the end of their run: a removed position followed by an empty
 * one ends every probe sequence that reaches it anyway, so probe lengths
 * do not grow with removals. */
static void index_remove(struct cb_seg_header *h, uint32_t pos)
{
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    uint32_t mask = h->index_slots - 1;
    /* Release: lookups that still reach the record see it REMOVED first
     * (its state word was stored before). */
    atomic_store_explicit(&index[pos], CB_SEG_INDEX_TOMBSTONE, memory_order_release);
    while (atomic_load_explicit(&index[(pos + 1) & mask], memory_order_relaxed) == 0 &&
           atomic_load_explicit(&index[pos], memory_order_relaxed) == CB_SEG_INDEX_TOMBSTONE) {
        atomic_store_explicit(&index[pos], 0, memory_order_release);
        pos = (pos - 1) & mask;
    }
}

uint64_t cbd_segment_slot_word(const struct cbd_segment *s, uint32_t slot)
{
    return atomic_load_explicit(&CB_SEG_RECORD(s->hdr, slot)->state_word, memory_order_relaxed); /* own store */
}

int cbd_segment_add(struct cbd_segment *s, const char *name, const cb_config *cfg, uint32_t owner_uid,
                    uint32_t reuse, uint32_t *slot)
{
    struct cb_seg_header *h = s->hdr;
    uint32_t count = atomic_load_explicit(&h->circuit_count, memory_order_relaxed); /* we are the only writer */
    uint32_t n = reuse != UINT32_MAX ? reuse : count;
    if (n >= h->capacity)
        return -ENOSPC;
    struct cb_seg_record *r = CB_SEG_RECORD(h, n);
    uint32_t incarnation = 0, epoch = 0;
    if (n < count) {
        /* A removed circuit's slot: the next incarnation, the epoch going on
         * (tickets of the old circuit are stale for the new one). The word
         * stays REMOVED while the record is rewritten; the release fence
         * orders it before the rewrite (pairs with the acquire fence of a
         * lookup that compares the old name). */
        uint64_t old = atomic_load_explicit(&r->state_word, memory_order_relaxed);
        incarnation = cb_seg_word_incarnation(old) + 1;
        epoch = cb_seg_word_epoch(old) + 1;
        atomic_store_explicit(&r->state_word, cb_seg_state_word(CB_CLOSED, CB_SEG_F_REMOVED, incarnation, epoch),
                              memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
    } else {
        /* Never published, but a daemon killed mid-registration may have
         * left bytes in it: start from zero. */
        memset(r, 0, sizeof *r);
    }
    size_t len = strlen(name);
    uint64_t hash = cb__name_hash(name, len);
    memset(r->name, 0, sizeof r->name);
    memcpy(r->name, name, len);
    atomic_store_explicit(&r->name_hash, hash, memory_order_relaxed);
    atomic_store_explicit(&r->name_len, (uint16_t)len, memory_order_relaxed);
    atomic_store_explicit(&r->owner_uid, owner_uid, memory_order_relaxed);
    cb_seg_cfg_begin(r);
    cb_seg_cfg_store(r, cfg);
    cb_seg_cfg_end(r);
    struct cb_seg_vdata v = {.word = cb_seg_state_word(CB_CLOSED, 0, incarnation, epoch), .history_seq = UINT64_MAX};
    cb_seg_version_publish(r, &v);
    atomic_store_explicit(CB_LANES_PERMIT(s->lanes, n), 0, memory_order_relaxed);
    CBD_FAULT("segment.add.before_index");
    index_insert(h, hash, n);
    /* Release pairs with cb_allow's acquire load: a handle that finds the
     * new incarnation sees the record complete. */
    atomic_store_explicit(&r->state_word, v.word, memory_order_release);
    if (n >= count) /* release pairs with the acquire load of circuit_count by listings */
        atomic_store_explicit(&h->circuit_count, n + 1, memory_order_release);
    atomic_fetch_add_explicit(&h->circuits_live, 1, memory_order_relaxed);
    *slot = n;
    return 0;
}

void cbd_segment_remove(struct cbd_segment *s, uint32_t slot)
{
    struct cb_seg_header *h = s->hdr;
    struct cb_seg_record *r = CB_SEG_RECORD(h, slot);
    struct cb_seg_vdata v;
    cb_seg_version_try_read(r, &v, NULL); /* our own last version */
    if (cb_seg_word_flags(v.word) & CB_SEG_F_REMOVED)
        return;
    /* A new epoch, so the removed circuit's tickets are stale whatever
     * comes next in this slot. Committed by its version, then published. */
    v.word = cb_seg_state_word(CB_CLOSED, CB_SEG_F_REMOVED, cb_seg_word_incarnation(v.word),
                               cb_seg_word_epoch(v.word) + 1);
    cb_seg_version_publish(r, &v);
    /* Release pairs with cb_allow's acquire load: handles go to the slow
     * path and re-resolve the name. */
    atomic_store_explicit(&r->state_word, v.word, memory_order_release);
    CBD_FAULT("segment.remove.before_index");
    int64_t pos = index_find(h, atomic_load_explicit(&r->name_hash, memory_order_relaxed), slot);
    if (pos >= 0)
        index_remove(h, (uint32_t)pos);
    atomic_fetch_sub_explicit(&h->circuits_live, 1, memory_order_relaxed);
}

/*
 * After adoption: every record is brought to a state a reader can use and
 * the index agrees with the records, whatever moment the previous daemon
 * died at.
 *  - policy fields left mid-write (odd cfg_seq): the fields are each whole
 *    (atomic) and are recomputed from the configuration right after; the
 *    counter is made even so readers stop retrying;
 *  - a record whose version is live but that the index does not find (a
 *    registration that died before its index entry) is removed;
 *  - an index entry that points at a removed record (a removal that died
 *    before its index entry) is removed.
 * The transition a version committed but did not publish is completed by
 * the daemon (cbd_segment_roll_forward), which also announces it.
 */
static void repair_records(struct cbd_segment *s)
{
    struct cb_seg_header *h = s->hdr;
    uint32_t count = atomic_load_explicit(&h->circuit_count, memory_order_relaxed), live = 0;
    for (uint32_t i = 0; i < count; i++) {
        struct cb_seg_record *r = CB_SEG_RECORD(h, i);
        uint32_t seq = atomic_load_explicit(&r->cfg_seq, memory_order_relaxed);
        if (seq & 1) {
            cbd_log(CBD_LOG_WARN, "record %u (%s): policy fields were being written when the previous daemon "
                                  "stopped; repaired", i, CB_NAME_SHOW(r->name));
            atomic_store_explicit(&r->cfg_seq, seq + 1, memory_order_release);
        }
        struct cb_seg_vdata v;
        cb_seg_version_try_read(r, &v, NULL); /* records_sane checked it is complete */
        uint64_t hash = atomic_load_explicit(&r->name_hash, memory_order_relaxed);
        int64_t pos = index_find(h, hash, i);
        if (cb_seg_word_flags(v.word) & CB_SEG_F_REMOVED) {
            if (pos >= 0) {
                cbd_log(CBD_LOG_WARN, "record %u: removed, but still indexed; index entry removed", i);
                index_remove(h, (uint32_t)pos);
            }
            /* The version says removed: so does the word (a removal that
             * died between the two is completed). */
            atomic_store_explicit(&r->state_word, v.word, memory_order_release);
            continue;
        }
        if (pos < 0) {
            cbd_log(CBD_LOG_WARN, "record %u (%s): its registration did not complete; removed", i, CB_NAME_SHOW(r->name));
            v.word = cb_seg_state_word(CB_CLOSED, CB_SEG_F_REMOVED, cb_seg_word_incarnation(v.word),
                                       cb_seg_word_epoch(v.word) + 1);
            cb_seg_version_publish(r, &v);
            atomic_store_explicit(&r->state_word, v.word, memory_order_release);
            continue;
        }
        live++;
    }
    atomic_store_explicit(&h->circuits_live, live, memory_order_relaxed);
}

int cbd_segment_roll_forward(struct cbd_segment *s, uint32_t slot, struct cb_seg_vdata *v)
{
    struct cb_seg_header *h = s->hdr;
    struct cb_seg_record *r = CB_SEG_RECORD(h, slot);
    int done = 0;
    cb_seg_version_try_read(r, v, NULL);
    if (atomic_load_explicit(&r->state_word, memory_order_relaxed) != v->word) {
        /* Committed, not published: publish (release pairs with cb_allow). */
        atomic_store_explicit(&r->state_word, v->word, memory_order_release);
        done = 1;
    }
    if (v->history_seq != UINT64_MAX && v->history_seq == atomic_load_explicit(&h->history_head, memory_order_relaxed)) {
        struct cbd_history_entry e = {
            .slot = slot, .epoch = cb_seg_word_epoch(v->word), .failure_count = v->trip_failure_count,
            .from = v->from, .to = (uint8_t)cb_seg_word_state(v->word), .source = v->source,
            .opened_at = v->opened_at_ns / 1000000000, .time_ns = v->last_transition_ns,
        };
        cbd_segment_history_append(s, &e);
        done = 1;
    }
    return done;
}

void cbd_segment_history_append(struct cbd_segment *s, const struct cbd_history_entry *e)
{
    struct cb_seg_header *h = s->hdr;
    uint64_t seq = atomic_load_explicit(&h->history_head, memory_order_relaxed); /* only writer */
    struct cb_seg_history *x = CB_SEG_HISTORY(h, seq);
    const struct cb_seg_record *r = CB_SEG_RECORD(h, e->slot);
    uint16_t len = atomic_load_explicit(&r->name_len, memory_order_relaxed);
    /* Invalidate first: a reader still on the entry this one overwrites
     * sees its seq change and retries (release fence pairs with the
     * reader's acquire fence before it re-checks seq). */
    atomic_store_explicit(&x->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&x->slot, e->slot, memory_order_relaxed);
    atomic_store_explicit(&x->epoch, e->epoch, memory_order_relaxed);
    atomic_store_explicit(&x->from, e->from, memory_order_relaxed);
    atomic_store_explicit(&x->to, e->to, memory_order_relaxed);
    atomic_store_explicit(&x->source, e->source, memory_order_relaxed);
    atomic_store_explicit(&x->failure_count, e->failure_count, memory_order_relaxed);
    atomic_store_explicit(&x->opened_at, e->opened_at, memory_order_relaxed);
    atomic_store_explicit(&x->time_ns, e->time_ns, memory_order_relaxed);
    atomic_store_explicit(&x->name_len, len, memory_order_relaxed);
    memcpy(x->name, r->name, len <= CB_NAME_MAX ? len : 0);
    /* Release pairs with cb_next_transition's acquire load of seq. */
    atomic_store_explicit(&x->seq, seq + 1, memory_order_release);
    /* Release pairs with the reader's acquire load of history_head. */
    atomic_store_explicit(&h->history_head, seq + 1, memory_order_release);
}

void cbd_segment_close(struct cbd_segment *s)
{
    if (guard.fd == s->lanes_fd) {
        guard.base = NULL;
        guard.fd = -1;
    }
    if (s->lanes_fd >= 0)
        close(s->lanes_fd);
    s->lanes_fd = -1;
    if (s->hdr != NULL) /* release pairs with cb_status' acquire load: no daemon now */
        atomic_store_explicit(&s->hdr->daemon_pid, 0, memory_order_release);
    unmap_all(s);
}
