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
 * Both objects are fully allocated when cbd creates them (posix_fallocate),
 * so a full /dev/shm is an error at start, never a SIGBUS later; a reader
 * maps an object only once its size covers what the header claims.
 *
 * State region, by offset (every offset and size is in the header, so a
 * reader never assumes them; minor versions only append fields or use
 * reserved words):
 *
 *   0                 struct cb_seg_header   (CB_SEG_HEADER_SIZE bytes)
 *   index_offset      uint32_t index[index_slots]: open addressing, linear
 *                     probing over cb__name_hash(name); 0 = empty,
 *                     CB_SEG_INDEX_TOMBSTONE = a removed name (keep probing),
 *                     else record slot + 1.
 *   records_offset    struct cb_seg_record[capacity], 512 bytes each,
 *                     cache-line aligned. Record n is circuit slot n.
 *   history_offset    struct cb_seg_history[history_capacity]: ring of
 *                     transitions, entry for sequence s at s % capacity.
 *
 * Cost per circuit: 512 bytes of record + 8 bytes of index (two slots per
 * circuit) + 8 bytes of permit word in the lanes region = 528 bytes.
 *
 * The state word (the only thing the hot path reads):
 *   bits  0-7   state (CB_CLOSED, CB_OPEN, CB_HALF_OPEN)
 *   bits  8-15  flags (CB_SEG_F_*)
 *   bits 16-31  incarnation of the slot: how many times the slot was given
 *               to a new circuit after a removal. A handle remembers the
 *               incarnation it was bound to; cb_allow's fast path compares
 *               the low 32 bits of the word with (incarnation << 16), so a
 *               handle of a removed circuit never reads the circuit that
 *               reused its slot: it goes to the slow path and re-resolves.
 *   bits 32-63  epoch: increases by one on every transition (and goes on
 *               increasing across incarnations, so tickets of a removed
 *               circuit are stale for the next one)
 *
 * Records are published in versions (the snapshot, struct cb_seg_version):
 * two copies per record, and the daemon always rewrites the older one, then
 * makes it current. The current copy is complete whatever moment the daemon
 * dies at, so a snapshot is always one published version and a record is
 * readable after any crash. A transition is committed when its version is
 * current; the daemon then stores the state word the version carries (a
 * daemon that adopts the segment completes a transition whose state word
 * was not stored yet). See cb_seg_version_publish / cb_seg_version_read.
 *
 * The policy fields (config) change rarely; they are read under their own
 * sequence counter (cfg_seq, odd while written); an adopting daemon makes
 * an odd counter even and rewrites the fields.
 */
#ifndef CB_SEGMENT_H
#define CB_SEGMENT_H

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cb.h"

#define CB_SEG_MAGIC "CBD-SEGMENT-v2"  /* layout major 2; at offset 0 of the state region */
#define CB_LANES_MAGIC "CBD-LANES-v2"  /* layout major 2; at offset 0 of the lanes region */
#define CB_SEG_MAJOR 2u
#define CB_SEG_MINOR 1u              /* 1: per-lane call counts (CB_SEG_FEATURE_CALL_COUNTS) */
#define CB_SEG_HEADER_SIZE 4096u
#define CB_SEG_RECORD_SIZE 512u
#define CB_SEG_CFG_WORDS 22u        /* policy words a record holds (CB_POLICY_FIELDS and room) */
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
#define CB_SEG_F_REMOVED 0x04u      /* no circuit here (removed, or the slot is being reused) */
#define CB_SEG_F_ELECTABLE 0x08u    /* OPEN past its recovery timeout on a fleet store: a call
                                     * registers demand for a probe (CB_PERMIT_DEMAND) */
#define CB_SEG_F_SHADOW 0x10u      /* shadow (metrics-only) circuit not CLOSED: a call the state
                                     * would reject gets a BYPASS ticket instead; never set on a
                                     * CLOSED word, so cb_allow's fast path is the same */
#define CB_SEG_F_RETIRED 0x80u      /* the segment was replaced: remap (set by a newer cbd) */
#define CB_SEG_INCARNATION_SHIFT 16
#define CB_SEG_INCARNATION_MAX 0xffffu /* a slot at this incarnation is never reused again */
#define CB_SEG_EPOCH_SHIFT 32
#define CB_SEG_INDEX_TOMBSTONE 0xffffffffu

static inline uint64_t cb_seg_state_word(unsigned state, unsigned flags, uint32_t incarnation, uint32_t epoch)
{
    return ((uint64_t)epoch << CB_SEG_EPOCH_SHIFT) | ((uint64_t)(incarnation & 0xffff) << CB_SEG_INCARNATION_SHIFT) |
           ((uint64_t)(flags & 0xff) << CB_SEG_FLAGS_SHIFT) | (state & CB_SEG_STATE_MASK);
}
static inline unsigned cb_seg_word_state(uint64_t w) { return (unsigned)(w & CB_SEG_STATE_MASK); }
static inline unsigned cb_seg_word_flags(uint64_t w) { return (unsigned)((w >> CB_SEG_FLAGS_SHIFT) & 0xff); }
static inline uint32_t cb_seg_word_incarnation(uint64_t w) { return (uint32_t)((w >> CB_SEG_INCARNATION_SHIFT) & 0xffff); }
static inline uint32_t cb_seg_word_epoch(uint64_t w) { return (uint32_t)(w >> CB_SEG_EPOCH_SHIFT); }

/* The last epoch second cbd accepts anywhere (stores, state file, control
 * requests): 2255-03-14, short of where int64 nanoseconds end (2262), so
 * every time in seconds converts to CLOCK_REALTIME nanoseconds, plus a
 * recovery timeout, without overflow. */
#define CB_TIME_MAX_S 9000000000ll

/* Staleness policy: what workers do with non-CLOSED circuits when the
 * heartbeat is older than stale_limit_ms. */
#define CB_STALE_FAIL_OPEN 0u   /* default: allow (BYPASS tickets) */
#define CB_STALE_KEEP_STATE 1u  /* keep obeying the last published state */

/* What a segment offers beyond its major layout: a minor version that adds
 * something sets a bit, and a reader refuses a segment that lacks a bit it
 * uses (cb__seg_header_check: CB_SEG_FEATURES_USED). */
#define CB_SEG_FEATURE_HISTORY 0x1ull
#define CB_SEG_FEATURE_PERMITS 0x2ull
#define CB_SEG_FEATURES_USED (CB_SEG_FEATURE_HISTORY | CB_SEG_FEATURE_PERMITS)
/* Minor 1: the daemon folds each lane's call counts (struct cb_lane's
 * calls), so workers count rejections and probes there. A reader does not
 * need it (older daemons lack it: workers then count nothing). */
#define CB_SEG_FEATURE_CALL_COUNTS 0x4ull

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
    _Alignas(64) _Atomic uint32_t circuit_count; /* slots ever used: [0, count); removed ones carry REMOVED */
    _Atomic uint32_t circuits_live;              /* circuits in the index now */
    _Alignas(64) _Atomic uint64_t history_head;  /* next history sequence to write (== entries written) */
    _Alignas(64) _Atomic uint32_t ready;         /* 1 once everything above is valid; stored last, release */
};

/*
 * One published version of a circuit: everything a snapshot shows but the
 * name and the policy. Written only by the daemon, into the record's copy
 * that is not current; see cb_seg_version_publish.
 */
struct cb_seg_version {
    _Atomic uint64_t vseq;                /* version number; 0 while this copy is being rewritten */
    _Atomic uint64_t word;                /* the state word this version publishes */
    _Atomic int64_t opened_at_ns;         /* CLOCK_REALTIME of the last opening; 0 when CLOSED */
    _Atomic int64_t open_until_ns;        /* OPEN: CLOCK_REALTIME the recovery timeout ends at; else 0 */
    _Atomic int64_t last_transition_ns;   /* CLOCK_REALTIME */
    _Atomic uint32_t trip_failure_count;  /* failures counted when it last opened */
    _Atomic uint32_t failure_streak;      /* CLOSED: consecutive counted failures so far */
    _Atomic uint32_t probe_successes;     /* HALF_OPEN: consecutive probe successes so far */
    _Atomic uint32_t sync_state;          /* CB_SYNC_* of the fleet store */
    _Atomic int64_t synced_at;            /* epoch seconds of the last store agreement, 0 never */
    _Atomic uint64_t total_successes;
    _Atomic uint64_t total_failures;
    _Atomic uint64_t total_ignored;
    _Atomic uint64_t total_stale_events;  /* events from an older epoch, ignored */
    /* Drain checkpoint: every event of lane applied_lane - 1 before position
     * applied_pos is counted in this version (0: none). An adopting daemon
     * that drains that lane again skips them: no event is counted twice. */
    _Atomic uint64_t applied_pos;
    _Atomic uint32_t applied_lane;
    /* The transition this version made (epoch = the word's), for a daemon
     * that adopts the segment and completes it: the history sequence its
     * entry takes, where it came from and why. */
    _Atomic uint8_t from, source, reserved1[2];
    _Atomic uint64_t history_seq;
    _Atomic uint64_t reserved2;
};

struct cb_seg_record {
    /* line 0: read by every cb_allow; written on transitions and by a
     * change of policy (rare). */
    _Alignas(64) _Atomic uint64_t state_word;
    _Atomic uint64_t name_hash;
    _Atomic uint16_t name_len;
    _Atomic uint16_t reserved0;
    _Atomic uint32_t owner_uid;           /* who registered it over the socket (UINT32_MAX: nobody counted) */
    _Atomic uint32_t cfg_seq;             /* odd while the policy fields are written */
    _Atomic uint32_t reserved1;
    /* lines 0-1: the policy, CB_POLICY_FIELDS in order (room to grow), then
     * the current version's number (vseq of the current copy), alone at the
     * end of line 1: it changes on every publish, the policy rarely. */
    _Atomic uint32_t cfg[CB_SEG_CFG_WORDS];
    _Atomic uint64_t vseq;
    /* lines 2-5: the two copies; the current one is version[vseq & 1]. */
    _Alignas(64) struct cb_seg_version version[2];
    /* lines 6-7: the name, NUL terminated. */
    _Alignas(64) char name[CB_NAME_MAX + 1];
};

#define CB_SYNC_LOCAL 0u    /* host-local store (or none): always in sync */
#define CB_SYNC_OK 1u       /* agrees with the fleet store as of synced_at */
#define CB_SYNC_PENDING 2u  /* a write to the store is in flight or queued */
#define CB_SYNC_OFFLINE 3u  /* the store is unreachable; running host-local */

/* One transition. The name is copied in, so an entry stays meaningful
 * after its circuit is removed and the slot reused. */
struct cb_seg_history {
    _Atomic uint64_t seq;   /* sequence + 1 once written; 0 while never written or being
                             * rewritten (the daemon zeroes it, then writes the fields,
                             * then stores the new value with release) */
    _Atomic uint32_t slot;
    _Atomic uint32_t epoch;
    _Atomic uint8_t from, to, source, reserved;
    _Atomic uint32_t failure_count;
    _Atomic int64_t opened_at;  /* epoch seconds */
    _Atomic int64_t time_ns;
    _Atomic uint16_t name_len;
    _Atomic uint16_t reserved1[3];
    _Atomic uint64_t reserved2[2];
    char name[CB_NAME_MAX + 1];
};

_Static_assert(sizeof(struct cb_seg_header) <= CB_SEG_HEADER_SIZE, "header grew past its size");
_Static_assert(sizeof(struct cb_seg_version) == 128, "a version is two cache lines");
_Static_assert(sizeof(struct cb_seg_record) == CB_SEG_RECORD_SIZE, "record must be 512 bytes");
_Static_assert(offsetof(struct cb_seg_record, state_word) == 0, "the state word is frozen at offset 0");
_Static_assert(offsetof(struct cb_seg_record, version) == 128, "versions start on line 2");
_Static_assert(offsetof(struct cb_seg_record, vseq) == 120, "vseq is the last word of line 1");
_Static_assert(offsetof(cb_config, reserved) / sizeof(uint32_t) <= CB_SEG_CFG_WORDS, "the record holds every policy field");
_Static_assert(sizeof(struct cb_seg_history) == 192, "history entries are three cache lines");

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
    uint32_t latency_us;/* the call's duration (cb_record_latency, cb_call on a circuit with a
                         * slow-call rule), saturated; 0 when not measured */
};
#define CB_EVENT_CHECK 0xCB5Au

/*
 * A single-producer/single-consumer ring. owner is claimed by a worker
 * thread with a CAS from 0; the daemon frees it when the owner process is
 * dead or the thread released it (state CB_LANE_RELEASED), after draining it.
 * head and tail count events since the segment was made and never reset, so
 * a lane passes from owner to owner without losing or replaying events.
 */
/*
 * Call counts (minor 1, CB_SEG_FEATURE_CALL_COUNTS): what cb_allow decided
 * off the CLOSED path, counted by the thread that owns the lane in words
 * only it writes, and folded by the daemon as it drains the lane. Entry i
 * is a circuit (key: cb_lane_call_key; 0 none) and a counts word:
 * rejections in the low CB_LANE_REJECTED_BITS, probe permits taken above.
 * The counts word only grows, across keys and owners; the daemon adds
 * counts - calls_seen[i] to the circuit the key names and then stores
 * counts into calls_seen[i]. A thread takes entry i for another circuit
 * only when counts == calls_seen[i] (all of it folded): key first, then
 * counts with release, so a fold that loads the new counts (acquire) reads
 * the new key. Space that minor 0 left as padding: the lane header keeps
 * its size, and an older reader never looks there.
 */
#define CB_LANE_CALL_ENTRIES 3
#define CB_LANE_REJECTED_BITS 40
#define CB_LANE_PROBE_ONE (1ull << CB_LANE_REJECTED_BITS)
struct cb_lane_calls {
    _Atomic uint64_t key;
    _Atomic uint64_t counts;
};
static inline uint64_t cb_lane_call_key(uint32_t slot, uint32_t incarnation)
{
    return (uint64_t)incarnation << 32 | ((uint64_t)slot + 1);
}

struct cb_lane {
    _Alignas(64) _Atomic uint64_t owner;   /* 0 free; else (pid << 32) | lane state */
    uint64_t reserved0;
    /* producer's line */
    _Alignas(64) _Atomic uint64_t tail;    /* next event index to write; release by producer */
    _Atomic uint64_t dropped;              /* events dropped because the lane was full */
    struct cb_lane_calls calls[CB_LANE_CALL_ENTRIES]; /* minor 1: counted by the producer */
    /* consumer's line */
    _Alignas(64) _Atomic uint64_t head;    /* next event index to read; release by the daemon */
    _Atomic uint64_t calls_seen[CB_LANE_CALL_ENTRIES]; /* minor 1: the counts the daemon folded */
    /* events follow: struct cb_lane_event[lane_capacity] at lane + CB_LANE_HEADER_SIZE */
};
#define CB_LANE_HEADER_SIZE 192u
#define CB_LANE_OWNED 1u
#define CB_LANE_RELEASED 2u
static inline uint64_t cb_lane_owner_word(uint32_t pid, unsigned state) { return ((uint64_t)pid << 32) | state; }
_Static_assert(sizeof(struct cb_lane) == CB_LANE_HEADER_SIZE, "lane header is three cache lines");

/* The producer's side of the call counts (see struct cb_lane_calls): adds
 * add to the entry of key in lane l, taking an entry the daemon has folded
 * whole when none holds key (*taken then true). Only the lane's owner
 * thread calls it. The entry's counts word, or NULL when every entry holds
 * counts not folded yet (the call goes uncounted). */
static inline _Atomic uint64_t *cb_lane_count_call(struct cb_lane *l, uint64_t key, uint64_t add, bool *taken)
{
    struct cb_lane_calls *take = NULL;
    *taken = false;
    for (unsigned i = 0; i < CB_LANE_CALL_ENTRIES; i++) {
        struct cb_lane_calls *e = &l->calls[i];
        /* Relaxed loads of our own words; calls_seen is the daemon's (relaxed:
         * a stale value only makes an entry look busy). */
        uint64_t counts = atomic_load_explicit(&e->counts, memory_order_relaxed);
        if (atomic_load_explicit(&e->key, memory_order_relaxed) == key) {
            /* Release pairs with the daemon's acquire load of counts: a fold
             * that sees this count sees the key it belongs to. */
            atomic_store_explicit(&e->counts, counts + add, memory_order_release);
            return &e->counts;
        }
        if (take == NULL && counts == atomic_load_explicit(&l->calls_seen[i], memory_order_relaxed))
            take = e;
    }
    if (take == NULL)
        return NULL;
    *taken = true;
    atomic_store_explicit(&take->key, key, memory_order_relaxed);
    atomic_store_explicit(&take->counts, atomic_load_explicit(&take->counts, memory_order_relaxed) + add,
                          memory_order_release); /* pairs as above: the new key is read with this count */
    return &take->counts;
}
_Static_assert(offsetof(struct cb_lane, head) == 128, "the call counts fit the producer's line");

/*
 * Half-open permit word, one per circuit slot: (epoch << 32) | permits left.
 * The daemon stores a fresh word when a circuit enters HALF_OPEN and adds a
 * permit back when a probe reports; a worker takes one with a CAS that keeps
 * the epoch and decrements the count. A word whose epoch is not the state
 * word's epoch grants nothing.
 */
static inline uint64_t cb_permit_word(uint32_t epoch, uint32_t permits) { return ((uint64_t)epoch << 32) | permits; }
/* In the permit word of an electable OPEN epoch: a worker's call wants a
 * probe. Set once per epoch by the first such call, which rings the
 * doorbell; the daemon then competes for the fleet's probe lease. A host
 * whose workers do not call the circuit never competes. */
#define CB_PERMIT_DEMAND 0x80000000u

#define CB_LANE_GROUP 64u                                 /* lanes per bit of claimed_groups */
#define CB_LANE_GROUP_WORDS (65536u / CB_LANE_GROUP / 64u) /* for the most lanes a segment has */
static inline void cb_lane_group_of(uint32_t lane, uint32_t *word, uint64_t *bit)
{
    *word = lane / CB_LANE_GROUP / 64u;
    *bit = 1ull << (lane / CB_LANE_GROUP % 64u);
}

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
    /* Minor 1: bit g of word g / 64 is set by a worker that claims a lane
     * of group g (lanes g * CB_LANE_GROUP ...), after its claim (release);
     * the daemon's drain tick visits only the lanes of groups whose bit is
     * set, and clears a bit once every lane of its group is free, then
     * looks at their owners again (acquire), so a claim is never missed.
     * A worker that does not set it (libcb of minor 0) is found by the
     * daemon's full passes (doorbell, reclaim). In minor 0's padding. */
    _Alignas(64) _Atomic uint64_t claimed_groups[CB_LANE_GROUP_WORDS];
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
/* 0 if name is a valid circuit name: 1..CB_NAME_MAX bytes of well-formed
 * UTF-8 (any character but NUL, as DynamoDB keys and Powertools names
 * allow), else -EINVAL. */
int cb__name_check(const char *name);
/* name as a log line, a table or an error message shows it: as it is when
 * it is only [A-Za-z0-9._:/@+=-], else in double quotes with '"' and '\'
 * escaped and control characters as \xNN, written into buf. Returns name or
 * buf. CB_NAME_SHOW(name) gives a buffer that lives to the end of the
 * enclosing block, for use right in a printf-style argument list. */
#define CB_NAME_DISPLAY_MAX (4 * CB_NAME_MAX + 8)
const char *cb__name_display(const char *name, char *buf);
#define CB_NAME_SHOW(name) cb__name_display((name), (char[CB_NAME_DISPLAY_MAX]){0})
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
/* Lock-free lookup: slot of name (and, if incarnation is not NULL, the
 * slot's incarnation it was found in), -ENOENT, or -EBADMSG when the index
 * names a record past capacity. A record being removed or reused is
 * noticed through its state word and never matched half-written. */
int cb__seg_lookup(const struct cb_seg_header *h, const char *name, size_t len, uint64_t hash,
                   uint32_t *incarnation);
/* One published version of a record, with its name and policy. */
struct cb_seg_snapshot {
    cb_info info;                 /* what cb_info_get() returns */
    uint32_t incarnation;
    int64_t opened_at_ns, open_until_ns, last_transition_ns, synced_at;
    uint32_t sync_state;
    uint64_t total_stale_events;
};
/* A consistent snapshot of record slot (one version, its policy and name,
 * retried for a bounded time): 0, -ENOENT (slot not in use or removed),
 * -EAGAIN (writer kept busy), -EBADMSG (corrupt record). Used by
 * cb_info_get and cbctl. */
int cb__seg_snapshot(const struct cb_seg_header *h, uint32_t slot, struct cb_seg_snapshot *out);
/* Bounds of cb_config fields; 0 or -EINVAL with *field set to the bad field's name. */
int cb__config_check(const struct cb_config *cfg, const char **field);
/* The shared 'is this a boolean' parser for env vars and config values:
 * 1/true/yes/on -> 1, 0/false/no/off -> 0, else -EINVAL. Case-insensitive. */
int cb__parse_bool(const char *s);

/* The names every log line, reply, file and cbctl output spells: a
 * cb_state ("CLOSED", "OPEN", "HALF_OPEN"), a cb_source ("local",
 * "remote", "operator", "timer", "restore"), a CB_SYNC_* ("local", "ok",
 * "pending", "offline"); "?" for a value out of range. */
const char *cb__state_name(unsigned state);
const char *cb__source_name(unsigned source);
const char *cb__sync_name(unsigned sync);

/* ---- versions: the snapshot protocol (writer is the daemon alone) --------- */

/* A version's fields as plain values (struct cb_seg_version without vseq). */
struct cb_seg_vdata {
    uint64_t word;
    int64_t opened_at_ns, open_until_ns, last_transition_ns;
    uint32_t trip_failure_count, failure_streak, probe_successes, sync_state;
    int64_t synced_at;
    uint64_t total_successes, total_failures, total_ignored, total_stale_events;
    uint64_t applied_pos;
    uint32_t applied_lane;
    uint8_t from, source;
    uint64_t history_seq;
};

/*
 * Publishing a version: begin invalidates the copy that is not current and
 * returns it (and its version number in *v), fill writes the fields, commit
 * stamps it and makes it current. A reader that sees the new vseq sees every
 * field; one that was reading the copy being rewritten notices its stamp
 * changed. Whenever the writer dies, version[vseq & 1] is a complete
 * version. cb_seg_version_publish does all three.
 */
static inline struct cb_seg_version *cb_seg_version_begin(struct cb_seg_record *r, uint64_t *v)
{
    *v = atomic_load_explicit(&r->vseq, memory_order_relaxed) + 1; /* single writer */
    struct cb_seg_version *x = &r->version[*v & 1];
    atomic_store_explicit(&x->vseq, 0, memory_order_relaxed);
    /* Release fence: the 0 is visible before any field store that follows
     * (pairs with the reader's acquire fence after its field loads). */
    atomic_thread_fence(memory_order_release);
    return x;
}

static inline void cb_seg_version_fill(struct cb_seg_version *x, const struct cb_seg_vdata *d)
{
    atomic_store_explicit(&x->word, d->word, memory_order_relaxed);
    atomic_store_explicit(&x->opened_at_ns, d->opened_at_ns, memory_order_relaxed);
    atomic_store_explicit(&x->open_until_ns, d->open_until_ns, memory_order_relaxed);
    atomic_store_explicit(&x->last_transition_ns, d->last_transition_ns, memory_order_relaxed);
    atomic_store_explicit(&x->trip_failure_count, d->trip_failure_count, memory_order_relaxed);
    atomic_store_explicit(&x->failure_streak, d->failure_streak, memory_order_relaxed);
    atomic_store_explicit(&x->probe_successes, d->probe_successes, memory_order_relaxed);
    atomic_store_explicit(&x->sync_state, d->sync_state, memory_order_relaxed);
    atomic_store_explicit(&x->synced_at, d->synced_at, memory_order_relaxed);
    atomic_store_explicit(&x->total_successes, d->total_successes, memory_order_relaxed);
    atomic_store_explicit(&x->total_failures, d->total_failures, memory_order_relaxed);
    atomic_store_explicit(&x->total_ignored, d->total_ignored, memory_order_relaxed);
    atomic_store_explicit(&x->total_stale_events, d->total_stale_events, memory_order_relaxed);
    atomic_store_explicit(&x->applied_pos, d->applied_pos, memory_order_relaxed);
    atomic_store_explicit(&x->applied_lane, d->applied_lane, memory_order_relaxed);
    atomic_store_explicit(&x->from, d->from, memory_order_relaxed);
    atomic_store_explicit(&x->source, d->source, memory_order_relaxed);
    atomic_store_explicit(&x->history_seq, d->history_seq, memory_order_relaxed);
}

static inline void cb_seg_version_commit(struct cb_seg_record *r, struct cb_seg_version *x, uint64_t v)
{
    /* Release: the fields are complete before the copy's stamp and the
     * record's vseq (pairs with the reader's acquire loads of both). */
    atomic_store_explicit(&x->vseq, v, memory_order_release);
    atomic_store_explicit(&r->vseq, v, memory_order_release);
}

static inline uint64_t cb_seg_version_publish(struct cb_seg_record *r, const struct cb_seg_vdata *d)
{
    uint64_t v;
    struct cb_seg_version *x = cb_seg_version_begin(r, &v);
    cb_seg_version_fill(x, d);
    cb_seg_version_commit(r, x, v);
    return v;
}

/* The record's current version into *d, without retrying: 0 and the vseq
 * in *vseq_out, or -EAGAIN if the writer overtook this read (retry). */
static inline int cb_seg_version_try_read(const struct cb_seg_record *r, struct cb_seg_vdata *d, uint64_t *vseq_out)
{
    /* Acquire pairs with the writer's release store of vseq. */
    uint64_t v = atomic_load_explicit((_Atomic uint64_t *)&r->vseq, memory_order_acquire);
    const struct cb_seg_version *x = &r->version[v & 1];
    if (atomic_load_explicit((_Atomic uint64_t *)&x->vseq, memory_order_acquire) != v)
        return -EAGAIN;
    d->word = atomic_load_explicit((_Atomic uint64_t *)&x->word, memory_order_relaxed);
    d->opened_at_ns = atomic_load_explicit((_Atomic int64_t *)&x->opened_at_ns, memory_order_relaxed);
    d->open_until_ns = atomic_load_explicit((_Atomic int64_t *)&x->open_until_ns, memory_order_relaxed);
    d->last_transition_ns = atomic_load_explicit((_Atomic int64_t *)&x->last_transition_ns, memory_order_relaxed);
    d->trip_failure_count = atomic_load_explicit((_Atomic uint32_t *)&x->trip_failure_count, memory_order_relaxed);
    d->failure_streak = atomic_load_explicit((_Atomic uint32_t *)&x->failure_streak, memory_order_relaxed);
    d->probe_successes = atomic_load_explicit((_Atomic uint32_t *)&x->probe_successes, memory_order_relaxed);
    d->sync_state = atomic_load_explicit((_Atomic uint32_t *)&x->sync_state, memory_order_relaxed);
    d->synced_at = atomic_load_explicit((_Atomic int64_t *)&x->synced_at, memory_order_relaxed);
    d->total_successes = atomic_load_explicit((_Atomic uint64_t *)&x->total_successes, memory_order_relaxed);
    d->total_failures = atomic_load_explicit((_Atomic uint64_t *)&x->total_failures, memory_order_relaxed);
    d->total_ignored = atomic_load_explicit((_Atomic uint64_t *)&x->total_ignored, memory_order_relaxed);
    d->total_stale_events = atomic_load_explicit((_Atomic uint64_t *)&x->total_stale_events, memory_order_relaxed);
    d->applied_pos = atomic_load_explicit((_Atomic uint64_t *)&x->applied_pos, memory_order_relaxed);
    d->applied_lane = atomic_load_explicit((_Atomic uint32_t *)&x->applied_lane, memory_order_relaxed);
    d->from = atomic_load_explicit((_Atomic uint8_t *)&x->from, memory_order_relaxed);
    d->source = atomic_load_explicit((_Atomic uint8_t *)&x->source, memory_order_relaxed);
    d->history_seq = atomic_load_explicit((_Atomic uint64_t *)&x->history_seq, memory_order_relaxed);
    /* Acquire fence: the field loads above complete before the stamp is
     * loaded again (pairs with the writer's release fence after it zeroed
     * the stamp of the copy it rewrites). */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit((_Atomic uint64_t *)&x->vseq, memory_order_relaxed) != v)
        return -EAGAIN;
    if (vseq_out != NULL)
        *vseq_out = v;
    return 0;
}

/* Policy fields: a plain seqlock on cfg_seq (writer is the daemon alone). */
static inline void cb_seg_cfg_begin(struct cb_seg_record *r)
{
    uint32_t s = atomic_load_explicit(&r->cfg_seq, memory_order_relaxed);
    atomic_store_explicit(&r->cfg_seq, s | 1, memory_order_relaxed); /* odd (an adopted odd one stays odd) */
    /* Release fence: the odd seq is visible before any field store below
     * (pairs with the reader's acquire fence after its field loads). */
    atomic_thread_fence(memory_order_release);
}
static inline void cb_seg_cfg_end(struct cb_seg_record *r)
{
    uint32_t s = atomic_load_explicit(&r->cfg_seq, memory_order_relaxed);
    /* Release: the field stores above happen before the even seq (pairs
     * with the reader's acquire load of seq at the start of its read). */
    atomic_store_explicit(&r->cfg_seq, (s | 1) + 1, memory_order_release);
}
/* Reader side: returns the seq to pass to cb_seg_cfg_read_retry (odd = writer busy). */
static inline uint32_t cb_seg_cfg_read_begin(const struct cb_seg_record *r)
{
    return atomic_load_explicit((_Atomic uint32_t *)&r->cfg_seq, memory_order_acquire);
}
static inline int cb_seg_cfg_read_retry(const struct cb_seg_record *r, uint32_t begin)
{
    /* Acquire fence: the relaxed field loads above complete before seq is
     * re-read (pairs with the writer's release fence in cfg_begin). */
    atomic_thread_fence(memory_order_acquire);
    return (begin & 1) || atomic_load_explicit((_Atomic uint32_t *)&r->cfg_seq, memory_order_relaxed) != begin;
}

/* ---- the policy fields: CB_POLICY_FIELDS as a table ------------------------ */

struct cb_policy_field {
    const char *name, *help;
    uint32_t def, min, max;
    size_t offset; /* in cb_config */
};
enum {
#define CB__FIELD_INDEX(name, def, min, max, help) CB_FIELD_##name,
    CB_POLICY_FIELDS(CB__FIELD_INDEX)
#undef CB__FIELD_INDEX
    CB_POLICY_NFIELDS
};
extern const struct cb_policy_field cb__policy_fields[CB_POLICY_NFIELDS];

/* Field i of cfg. */
static inline uint32_t *cb__config_field(cb_config *cfg, unsigned i)
{
    return (uint32_t *)((char *)cfg + cb__policy_fields[i].offset);
}

/* The policy fields of a record (relaxed loads; between cfg read_begin/retry). */
static inline void cb_seg_cfg_load(const struct cb_seg_record *r, cb_config *cfg)
{
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        *cb__config_field(cfg, i) = atomic_load_explicit((_Atomic uint32_t *)&r->cfg[i], memory_order_relaxed);
    for (size_t i = 0; i < sizeof cfg->reserved / sizeof cfg->reserved[0]; i++)
        cfg->reserved[i] = 0;
}
static inline void cb_seg_cfg_store(struct cb_seg_record *r, const cb_config *cfg)
{
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        atomic_store_explicit(&r->cfg[i], *cb__config_field((cb_config *)cfg, i), memory_order_relaxed);
}

#endif /* CB_SEGMENT_H */
