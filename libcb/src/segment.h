/*
 * segment.h - the shared-memory layout that cbd writes and libcb reads.
 *
 * This is the one description of the segment; the daemon, libcb, cbctl and
 * the tests all include it. Two POSIX shm objects per instance:
 *
 *   /cbd.<instance>        state region. Written only by cbd; workers map it
 *                          from an O_RDONLY fd with PROT_READ, so the kernel
 *                          refuses any write by a worker.
 *   /cbd.<instance>.lanes  lanes region. Written by workers (outcome lanes,
 *                          probe permits, doorbell) and drained by cbd, which
 *                          trusts nothing it reads there.
 *
 * State region, by offset (every offset and size is in the header, so a
 * reader never assumes them; minor versions only append fields or use
 * reserved words):
 *
 *   0                 struct cb_seg_header   (CB_SEG_HEADER_SIZE bytes)
 *   index_offset      uint32_t index[index_slots]: open addressing, linear
 *                     probing over cb__name_hash(name); 0 = empty, else
 *                     record slot + 1. Slots are only ever filled (circuits
 *                     are never deleted while the segment lives), so a
 *                     lock-free reader that meets an empty slot knows the
 *                     name is absent.
 *   records_offset    struct cb_seg_record[capacity], 256 bytes each,
 *                     cache-line aligned. Record n is circuit slot n.
 *   history_offset    struct cb_seg_history[history_capacity]: ring of
 *                     transitions, entry for sequence s at s % capacity.
 *
 * Cost per circuit: 256 bytes of record + 8 bytes of index (two slots per
 * circuit) + 8 bytes of permit word in the lanes region = 272 bytes, paid in
 * pages only once a circuit is used (the objects are sparse).
 *
 * The state word (the only thing the hot path reads):
 *   bits  0-7   state (CB_CLOSED, CB_OPEN, CB_HALF_OPEN)
 *   bits  8-15  flags (CB_SEG_F_*)
 *   bits 16-31  zero (reserved; a non-zero value sends readers to the slow path)
 *   bits 32-63  epoch: increases by one on every transition
 * A word with bits 0-31 all zero is a plain CLOSED circuit: cb_allow's fast
 * path. Everything else goes to the slow path.
 *
 * Publication order: the daemon fills a record, then (release) its index
 * slot, then (release) header.circuit_count. Readers acquire the index slot.
 * Snapshot fields (everything in a record but the state word) are written
 * inside seq_begin/seq_end (an odd seq means "being written") and read as
 * relaxed atomics between two acquire loads of seq (ck_sequence style).
 */
#ifndef CB_SEGMENT_H
#define CB_SEGMENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cb.h"

#define CB_SEG_MAGIC "CBD-SEGMENT-v1"  /* layout major 1; at offset 0 of the state region */
#define CB_LANES_MAGIC "CBD-LANES-v1"  /* layout major 1; at offset 0 of the lanes region */
#define CB_SEG_MAJOR 1u
#define CB_SEG_MINOR 0u
#define CB_SEG_HEADER_SIZE 4096u
#define CB_SEG_RECORD_SIZE 256u
#define CB_LANES_HEADER_SIZE 4096u
#define CB_CACHELINE 64u

#define CB_NAME_MAX 127u            /* bytes, without the NUL */
#define CB_INSTANCE_MAX 32u
#define CB_SOCKET_PATH_MAX 108u     /* sun_path */
#define CB_SHM_NAME_MAX 64u         /* "/cbd.<instance>.lanes" + NUL fits */

/* state word */
#define CB_SEG_STATE_MASK 0xffull
#define CB_SEG_FLAGS_SHIFT 8
#define CB_SEG_F_FORCED 0x01u       /* an operator holds this state (open or closed) */
#define CB_SEG_F_DISABLED 0x02u     /* bypass: every call allowed, nothing counted */
#define CB_SEG_F_RETIRED 0x80u      /* the segment was replaced: remap (set by a newer cbd) */
#define CB_SEG_EPOCH_SHIFT 32

static inline uint64_t cb_seg_state_word(unsigned state, unsigned flags, uint32_t epoch)
{
    return ((uint64_t)epoch << CB_SEG_EPOCH_SHIFT) | ((uint64_t)(flags & 0xff) << CB_SEG_FLAGS_SHIFT) |
           (state & CB_SEG_STATE_MASK);
}
static inline unsigned cb_seg_word_state(uint64_t w) { return (unsigned)(w & CB_SEG_STATE_MASK); }
static inline unsigned cb_seg_word_flags(uint64_t w) { return (unsigned)((w >> CB_SEG_FLAGS_SHIFT) & 0xff); }
static inline uint32_t cb_seg_word_epoch(uint64_t w) { return (uint32_t)(w >> CB_SEG_EPOCH_SHIFT); }

/* Staleness policy: what workers do with non-CLOSED circuits when the
 * heartbeat is older than stale_limit_ms. */
#define CB_STALE_FAIL_OPEN 0u   /* default: allow (BYPASS tickets) */
#define CB_STALE_KEEP_STATE 1u  /* keep obeying the last published state */

#define CB_SEG_FEATURE_HISTORY 0x1ull
#define CB_SEG_FEATURE_PERMITS 0x2ull

/* ---- state region --------------------------------------------------------- */

/*
 * Frozen across layout majors: the header prefix from magic to
 * records_offset, record_size and capacity, and the state word at offset 0
 * of each record. A cbd that replaces a segment of another major relies on
 * exactly these to set CB_SEG_F_RETIRED in every old record, which sends
 * workers still mapping it to the slow path, where they remap.
 */

struct cb_seg_header {
    char magic[16];                 /* CB_SEG_MAGIC, NUL padded */
    uint32_t major, minor;
    uint32_t header_size;           /* CB_SEG_HEADER_SIZE */
    uint32_t record_size;           /* CB_SEG_RECORD_SIZE */
    uint32_t capacity;              /* records */
    uint32_t index_slots;           /* power of two, >= 2 * capacity */
    uint32_t history_capacity;      /* power of two */
    uint32_t stale_policy;          /* CB_STALE_* */
    uint64_t features;              /* CB_SEG_FEATURE_* */
    uint64_t total_size;            /* bytes of this object */
    uint64_t index_offset, records_offset, history_offset;
    uint32_t stale_limit_ms;        /* heartbeat age that counts as stale */
    uint32_t heartbeat_interval_ms;
    char instance[CB_INSTANCE_MAX + 1];
    char socket_path[CB_SOCKET_PATH_MAX]; /* the control socket clients register through */
    uint8_t reserved0[7];
    /* Below: live fields, each on its own cache line. */
    _Alignas(64) _Atomic uint32_t daemon_pid;
    _Atomic uint64_t generation;    /* (pid << 32) ^ start time; new on every daemon start */
    _Alignas(64) _Atomic uint64_t heartbeat_ns; /* CLOCK_MONOTONIC, refreshed every heartbeat_interval_ms */
    _Alignas(64) _Atomic uint32_t circuit_count; /* records in use: slots [0, count) */
    _Alignas(64) _Atomic uint64_t history_head;  /* next history sequence to write (== entries written) */
    _Alignas(64) _Atomic uint32_t ready;         /* 1 once everything above is valid; stored last, release */
};

struct cb_seg_record {
    /* line 0: read by every cb_allow; written only on transitions/config. */
    _Alignas(64) _Atomic uint64_t state_word;
    _Atomic uint64_t name_hash;
    _Atomic int64_t opened_at;            /* epoch seconds of the last opening, 0 when closed */
    _Atomic int64_t last_transition_ns;   /* CLOCK_REALTIME */
    _Atomic uint32_t trip_failure_count;  /* failures counted when it last tripped */
    _Atomic uint32_t failure_threshold;
    _Atomic uint32_t success_threshold;
    _Atomic uint32_t half_open_max_probes;
    _Atomic uint32_t recovery_timeout_ms;
    _Atomic uint32_t probe_lease_ms;
    _Atomic uint16_t name_len;
    _Atomic uint16_t reserved1;
    _Atomic uint32_t reserved2;
    /* line 1: counters the daemon updates on every drain, and the seqlock. */
    _Alignas(64) _Atomic uint32_t seq;    /* odd while the daemon writes the snapshot fields */
    _Atomic uint32_t failure_streak;      /* CLOSED: consecutive counted failures so far */
    _Atomic uint32_t probe_successes;     /* HALF_OPEN: consecutive probe successes so far */
    _Atomic uint32_t sync_state;          /* CB_SYNC_* of the fleet store */
    _Atomic uint64_t total_successes;
    _Atomic uint64_t total_failures;
    _Atomic uint64_t total_ignored;
    _Atomic uint64_t total_stale_events;  /* events from an older epoch, ignored */
    _Atomic int64_t synced_at;            /* epoch seconds of the last store agreement, 0 never */
    _Atomic uint64_t reserved3;
    /* lines 2-3: the name, NUL terminated. */
    _Alignas(64) char name[CB_NAME_MAX + 1];
};

#define CB_SYNC_LOCAL 0u    /* host-local store (or none): always in sync */
#define CB_SYNC_OK 1u       /* agrees with the fleet store as of synced_at */
#define CB_SYNC_PENDING 2u  /* a write to the store is in flight or queued */
#define CB_SYNC_OFFLINE 3u  /* the store is unreachable; running host-local */

struct cb_seg_history {
    _Atomic uint64_t seq;   /* sequence + 1 once written; 0 while never written or being
                             * rewritten (the daemon zeroes it, then writes the fields,
                             * then stores the new value with release) */
    _Atomic uint32_t slot;
    _Atomic uint32_t epoch;
    _Atomic uint8_t from, to, source, reserved;
    _Atomic uint32_t failure_count;
    _Atomic int64_t opened_at;
    _Atomic int64_t time_ns;
    _Atomic uint64_t reserved2[3];
};

_Static_assert(sizeof(struct cb_seg_header) <= CB_SEG_HEADER_SIZE, "header grew past its size");
_Static_assert(sizeof(struct cb_seg_record) == CB_SEG_RECORD_SIZE, "record must be 256 bytes");
_Static_assert(sizeof(struct cb_seg_history) == 64, "history entries are one cache line");

/* ---- lanes region --------------------------------------------------------- */

/*
 * One outcome event. Written by a worker with plain stores, published by the
 * release store of its lane's tail; the daemon validates every field.
 */
struct cb_lane_event {
    uint32_t slot;      /* circuit slot */
    uint32_t epoch;     /* the ticket's epoch */
    uint8_t outcome;    /* cb_outcome */
    uint8_t kind;       /* CB_TICKET_ALLOWED or CB_TICKET_PROBE */
    uint16_t check;     /* CB_EVENT_CHECK ^ (slot & 0xffff): catches torn or garbage events */
    uint32_t latency_us;/* 0 when not measured */
};
#define CB_EVENT_CHECK 0xCB5Au

/*
 * A single-producer/single-consumer ring. owner is claimed by a worker
 * thread with a CAS from 0; the daemon frees it when the owner process is
 * dead or the thread released it (state CB_LANE_RELEASED), after draining it.
 * head and tail count events since the segment was made and never reset, so
 * a lane passes from owner to owner without losing or replaying events.
 */
struct cb_lane {
    _Alignas(64) _Atomic uint64_t owner;   /* 0 free; else (pid << 32) | lane state */
    _Atomic uint64_t claims;               /* times claimed (diagnostics) */
    /* producer's line */
    _Alignas(64) _Atomic uint64_t tail;    /* next event index to write; release by producer */
    _Atomic uint64_t dropped;              /* events dropped because the lane was full */
    /* consumer's line */
    _Alignas(64) _Atomic uint64_t head;    /* next event index to read; release by the daemon */
    /* events follow: struct cb_lane_event[lane_capacity] at lane + CB_LANE_HEADER_SIZE */
};
#define CB_LANE_HEADER_SIZE 192u
#define CB_LANE_OWNED 1u
#define CB_LANE_RELEASED 2u
static inline uint64_t cb_lane_owner_word(uint32_t pid, unsigned state) { return ((uint64_t)pid << 32) | state; }
_Static_assert(sizeof(struct cb_lane) == CB_LANE_HEADER_SIZE, "lane header is three cache lines");

/*
 * Half-open permit word, one per circuit slot: (epoch << 32) | permits left.
 * The daemon stores a fresh word when a circuit enters HALF_OPEN and adds a
 * permit back when a probe reports; a worker takes one with a CAS that keeps
 * the epoch and decrements the count. A word whose epoch is not the state
 * word's epoch grants nothing.
 */
static inline uint64_t cb_permit_word(uint32_t epoch, uint32_t permits) { return ((uint64_t)epoch << 32) | permits; }

struct cb_lanes_header {
    char magic[16];                 /* CB_LANES_MAGIC */
    uint32_t major, minor;
    uint32_t header_size;           /* CB_LANES_HEADER_SIZE */
    uint32_t lane_count;
    uint32_t lane_capacity;         /* events per lane, power of two */
    uint32_t lane_stride;           /* bytes per lane: CB_LANE_HEADER_SIZE + capacity * 16 */
    uint32_t capacity;              /* circuits: permit words */
    uint32_t reserved0;
    uint64_t total_size;
    uint64_t permits_offset, lanes_offset;
    _Atomic uint64_t generation;    /* equals the state region's generation once ready */
    /* doorbell: 0 = the daemon will look soon; 1 = rung. A worker that sees 0
     * after a failure exchanges 1 and, if it was 0, wakes the daemon: one
     * byte into the FIFO at socket_path + ".bell" that the daemon's loop
     * polls, or, without that FIFO, FUTEX_WAKE on this word for the daemon's
     * waiter thread. The daemon stores 0 (and fences) before it drains. */
    _Alignas(64) _Atomic uint32_t doorbell;
    _Alignas(64) _Atomic uint64_t no_lane_drops; /* events dropped because every lane was taken */
};
_Static_assert(sizeof(struct cb_lanes_header) <= CB_LANES_HEADER_SIZE, "lanes header grew past its size");

/* ---- helpers shared by daemon, library and tools (segment.c) -------------- */

/* The record for slot, the history entry for seq, lane n, permit word of slot. */
#define CB_SEG_RECORD(hdr, slot) \
    ((struct cb_seg_record *)((char *)(hdr) + (hdr)->records_offset + (size_t)(slot) * CB_SEG_RECORD_SIZE))
#define CB_SEG_INDEX(hdr) ((_Atomic uint32_t *)((char *)(hdr) + (hdr)->index_offset))
#define CB_SEG_HISTORY(hdr, seq) \
    ((struct cb_seg_history *)((char *)(hdr) + (hdr)->history_offset) + ((seq) & ((hdr)->history_capacity - 1)))
#define CB_LANES_LANE(lh, n) ((struct cb_lane *)((char *)(lh) + (lh)->lanes_offset + (size_t)(n) * (lh)->lane_stride))
#define CB_LANES_EVENTS(lane) ((struct cb_lane_event *)((char *)(lane) + CB_LANE_HEADER_SIZE))
#define CB_LANES_PERMIT(lh, slot) ((_Atomic uint64_t *)((char *)(lh) + (lh)->permits_offset) + (slot))

/* 64-bit hash of a name (FNV-1a folded through a splitmix64 finaliser). */
uint64_t cb__name_hash(const char *name, size_t len);
/* 0 if name is a valid circuit name, else -EINVAL (empty, too long, bad byte). */
int cb__name_check(const char *name);
/* 0 if name is a valid instance name ([A-Za-z0-9_-], 1..32), else -EINVAL. */
int cb__instance_check(const char *name);
/* "/cbd.<instance>" and "/cbd.<instance>.lanes" into buf (CB_SHM_NAME_MAX). */
void cb__shm_names(const char *instance, char *state_name, char *lanes_name);
/* Sizes and offsets of both regions for a capacity; fills a header template. */
struct cb_seg_geometry {
    uint32_t capacity, index_slots, history_capacity, lane_count, lane_capacity, lane_stride;
    uint64_t index_offset, records_offset, history_offset, state_size;
    uint64_t permits_offset, lanes_offset, lanes_size;
};
int cb__seg_geometry(uint32_t capacity, uint32_t lane_count, uint32_t lane_capacity,
                     uint32_t history_capacity, struct cb_seg_geometry *g);
/* Check a mapped state header against its mapped size: 0, -EPROTO (foreign or
 * other major layout), -EBADMSG (inconsistent sizes/offsets). */
int cb__seg_header_check(const struct cb_seg_header *h, uint64_t mapped_size);
int cb__lanes_header_check(const struct cb_lanes_header *h, uint64_t mapped_size);
/* Lock-free lookup: slot of name, or -ENOENT. */
int cb__seg_lookup(const struct cb_seg_header *h, const char *name, size_t len, uint64_t hash);
/* A consistent snapshot of record slot (seqlock read, retried for a bounded
 * time): 0, -ENOENT (slot not in use), -EAGAIN (writer kept busy),
 * -EBADMSG (corrupt record). Used by cb_info_get and cbctl. */
int cb__seg_snapshot(const struct cb_seg_header *h, uint32_t slot, cb_info *out);
/* Bounds of cb_config fields; 0 or -EINVAL with *field set to the bad field's name. */
int cb__config_check(const struct cb_config *cfg, const char **field);
/* The shared 'is this a boolean' parser for env vars and config values:
 * 1/true/yes/on -> 1, 0/false/no/off -> 0, else -EINVAL. Case-insensitive. */
int cb__parse_bool(const char *s);

/* Seqlock helpers (writer is the daemon alone). */
static inline void cb_seg_seq_begin(struct cb_seg_record *r)
{
    uint32_t s = atomic_load_explicit(&r->seq, memory_order_relaxed);
    atomic_store_explicit(&r->seq, s + 1, memory_order_relaxed);
    /* Release fence: the odd seq is visible before any field store below
     * (pairs with the reader's acquire fence after its field loads). */
    atomic_thread_fence(memory_order_release);
}
static inline void cb_seg_seq_end(struct cb_seg_record *r)
{
    uint32_t s = atomic_load_explicit(&r->seq, memory_order_relaxed);
    /* Release: the field stores above happen before the even seq (pairs
     * with the reader's acquire load of seq at the start of its read). */
    atomic_store_explicit(&r->seq, s + 1, memory_order_release);
}
/* Reader side: returns the seq to pass to cb_seg_read_retry (odd = writer busy). */
static inline uint32_t cb_seg_read_begin(const struct cb_seg_record *r)
{
    return atomic_load_explicit((_Atomic uint32_t *)&r->seq, memory_order_acquire);
}
static inline int cb_seg_read_retry(const struct cb_seg_record *r, uint32_t begin)
{
    /* Acquire fence: the relaxed field loads above complete before seq is
     * re-read (pairs with the writer's release fence in seq_begin). */
    atomic_thread_fence(memory_order_acquire);
    return (begin & 1) || atomic_load_explicit((_Atomic uint32_t *)&r->seq, memory_order_relaxed) != begin;
}

#endif /* CB_SEGMENT_H */
