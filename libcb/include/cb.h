/*
 * cb.h - libcb, the worker side of cbd's shared-memory circuit breakers.
 *
 * A daemon (cbd) owns every circuit of a host in a POSIX shared-memory
 * segment. A worker process opens a client (which maps that segment
 * read-only), gets a handle per downstream, and asks the handle before each
 * call:
 *
 *     cb_client *cl;  cb_circuit *payments;
 *     cb_client_open(&cl, NULL);
 *     cb_circuit_get(cl, "payments", NULL, &payments);
 *     ...
 *     cb_ticket t = cb_allow(payments);
 *     if (!cb_permitted(t)) return fallback();
 *     int rc = call_payments();
 *     cb_record(payments, t, rc < 0 ? CB_FAILURE : CB_SUCCESS);
 *
 * cb_allow() is inline: on a CLOSED circuit it is one acquire load of the
 * circuit's state word and a branch - no call, no syscall, no clock, no
 * write. cb_record() appends one 16-byte event to the calling thread's own
 * single-producer lane; the daemon drains lanes, runs the policy and
 * publishes the next state word. Only the daemon changes a circuit's state:
 * the kernel enforces it (the state region is mapped PROT_READ).
 *
 * A worker never waits for the daemon on the hot path: when cbd is
 * restarted with another layout or capacity (it replaces the segment) or
 * removes a circuit, handles move to the new segment or registration by
 * themselves, each on its next calls, without a round trip in the
 * caller's path (see cb_allow). Only cb_client_open, cb_circuit_get and
 * cb_status may wait, each for a bounded time.
 *
 * Errors are negative errno values (or the cb-specific codes below);
 * cb_strerror() names them. libcb never sets or reads errno for its callers.
 * Only symbols starting with cb_ are exported; cb__ names are internal and
 * may change with any release.
 */
#ifndef CB_H
#define CB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CB_VERSION_MAJOR 0
#define CB_VERSION_MINOR 1
#define CB_VERSION_PATCH 0
#define CB_VERSION_STRING "0.1.0"

#if defined(__GNUC__)
#define CB_EXPORT __attribute__((visibility("default")))
#define CB__LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define CB_EXPORT
#define CB__LIKELY(x) (x)
#endif

/* ---- errors beyond errno ------------------------------------------------ */

/*
 * libcb's own error codes, declared once: X(name, value, text). Every other
 * error is a negative errno. cb_strerror() gives the text, cb_err_name() the
 * name; codes and names never change meaning.
 *   CB_EOPEN          cb_call() without an on_open fallback: the circuit rejected the call
 *   CB_EPROTO_DAEMON  the daemon answered with an error libcb cannot map to an errno
 *   CB_EDAMAGED       the segment's objects are smaller than their headers say (truncated)
 *                     or their sizes disagree; restarting cbd replaces such a segment
 */
#define CB_ERRORS(X)                                                                                         \
    X(CB_EOPEN, -20001, "circuit is open")                                                                 \
    X(CB_EPROTO_DAEMON, -20002,                                                                           \
      "cbd answered with an error libcb does not understand (library and daemon versions differ?)")       \
    X(CB_EDAMAGED, -20003,                                                                                \
      "cbd's shared memory is damaged: an object is smaller than its header says (truncated?) or its "    \
      "sizes disagree; restart cbd to replace it")

enum cb_error {
#define CB__ERROR_VALUE(name, value, text) name = (value),
    CB_ERRORS(CB__ERROR_VALUE)
#undef CB__ERROR_VALUE
};

/* ---- states and outcomes ------------------------------------------------ */

typedef enum cb_state {
    CB_CLOSED = 0,    /* calls flow; counted failures build a streak */
    CB_OPEN = 1,      /* calls are rejected until the recovery timeout passes */
    CB_HALF_OPEN = 2, /* a bounded number of probes decide: close or reopen */
} cb_state;

typedef enum cb_outcome {
    CB_SUCCESS = 0, /* resets the failure streak; counts towards closing a probe */
    CB_FAILURE = 1, /* counts towards a trip; one probe failure reopens */
    CB_IGNORED = 2, /* an uncounted error: leaves the streak alone */
} cb_outcome;

/* ---- configuration -------------------------------------------------------- */

/*
 * The policy fields, declared once: X(name, default, min, max, help).
 * cb_config, its defaults and bounds, the daemon's options ([defaults] and
 * per-circuit sections), the control protocol, the segment's record, the
 * local state file and cbctl's output all come from this list. Defaults
 * equal Powertools' CircuitBreakerConfig: the rules beyond it (rate
 * windows, slow calls, backoff, shadow) are off until a circuit asks for
 * them. Names follow resilience4j's where the meaning is the same
 * (docs/configuration.md has the table).
 */
#define CB_POLICY_FIELDS(X)                                                                                  \
    X(failure_threshold, 5, 1, 1000000, "consecutive counted failures that trip a circuit")                 \
    X(success_threshold, 3, 1, 1000000, "consecutive probe successes that close a circuit")                 \
    X(half_open_max_probes, 1, 1, 1024, "probes admitted at once while HALF_OPEN")                           \
    X(recovery_timeout_ms, 30000, 1, 604800000, "how long a circuit stays OPEN before probing")             \
    X(probe_lease_ms, 0, 0, 604800000, "a probe silent this long is reclaimed (0 = recovery_timeout_ms)")   \
    X(sliding_window_type, 0, 0, 2,                                                                          \
      "what trips a circuit: 0 consecutive failures (failure_threshold), 1 rates over the last "             \
      "sliding_window_size calls, 2 rates over the last sliding_window_size seconds")                        \
    X(sliding_window_size, 100, 1, 10000, "calls (type 1) or seconds (type 2) the rate window covers")       \
    X(minimum_number_of_calls, 100, 1, 10000, "calls the window must hold before its rates are judged")      \
    X(failure_rate_threshold, 50, 1, 100, "percentage of failed calls in the window that trips a circuit")   \
    X(slow_call_duration_threshold_ms, 0, 0, 604800000,                                                      \
      "a call slower than this is slow (0 = no slow-call rule, and no clock read for it)")                   \
    X(slow_call_rate_threshold, 100, 1, 100, "percentage of slow calls in the window that trips a circuit")  \
    X(permitted_number_of_calls_in_half_open_state, 10, 1, 10000,                                            \
      "with a rate rule: probe results HALF_OPEN judges by rate before closing or reopening")                \
    X(open_backoff_multiplier_pct, 100, 100, 10000,                                                          \
      "each reopening without a stable close waits this percentage of the previous wait (100 = no backoff)") \
    X(open_backoff_max_ms, 0, 0, 604800000, "the longest wait in OPEN with backoff (0 = 7 days)")            \
    X(open_backoff_reset_ms, 60000, 0, 604800000, "CLOSED this long, a circuit's backoff starts over")       \
    X(shadow, 0, 0, 1, "1: the policy runs and transitions fire, but no call is ever rejected")

/* Per-circuit policy: one uint32_t per CB_POLICY_FIELDS entry, in order. */
typedef struct cb_config {
#define CB__CONFIG_MEMBER(name, def, min, max, help) uint32_t name;
    CB_POLICY_FIELDS(CB__CONFIG_MEMBER)
#undef CB__CONFIG_MEMBER
    uint32_t reserved[3]; /* zero */
} cb_config;

/*
 * cb_config_init - fill *cfg with the defaults above.
 * Thread safety: touches only *cfg.
 */
CB_EXPORT void cb_config_init(cb_config *cfg);

/* ---- client --------------------------------------------------------------- */

typedef struct cb_client cb_client;
typedef struct cb_circuit cb_circuit;

/*
 * cb_client_open - map instance's segment and connect the client.
 *
 * instance: NULL means $CB_INSTANCE, else "default". Names are 1..32 of
 * [A-Za-z0-9_-]. The daemon's control socket is found through the segment.
 *
 * If $CB_DISABLED (or Powertools' $POWERTOOLS_CIRCUIT_BREAKER_DISABLED) is a
 * true boolean (1, true, yes, on; any case) the client is a bypass: nothing is
 * mapped, every circuit permits every call, and a one-time warning goes to
 * stderr. A value that is not a boolean fails with -EINVAL and a message on
 * stderr naming the variable.
 *
 * Both shared-memory objects are checked before anything in them is read:
 * an object smaller than its header says (truncated) is refused, never
 * mapped into a SIGBUS.
 *
 * Returns 0 and sets *out, or:
 *   -ENOENT   no segment for this instance (cbd is not running)
 *   -EPROTO   the segment is not a cbd segment or its layout major differs
 *   CB_EDAMAGED an object is truncated or its sizes disagree (restart cbd)
 *   -ETIMEDOUT the segment never became ready within 2 s (daemon still starting)
 *   -EINVAL   bad instance name or bad $CB_DISABLED
 *   -EACCES   no permission to map the segment (join the daemon's group)
 *   -ENOMEM
 * Thread safety: the returned client may be used from any number of threads
 * and is inherited across fork(): a prefork master opens it (and may get
 * handles), children use it. Each process gets its own lanes on its first
 * cb_record and its own control connection on its first registration: a
 * child never reads or writes its parent's connection.
 */
CB_EXPORT int cb_client_open(cb_client **out, const char *instance);

/*
 * cb_client_close - release lanes, unmap, free every circuit handle.
 * No cb_circuit from this client may be used afterwards. NULL is a no-op.
 */
CB_EXPORT void cb_client_close(cb_client *client);

/*
 * cb_circuit_get - find the circuit called name, registering it with the
 * daemon (with cfg, or the daemon's defaults when cfg is NULL) if it does not
 * exist. Handles are cached: asking twice for a name returns the same handle.
 * An existing circuit keeps the configuration it has (the daemon's config
 * file and operators decide); read it back with cb_info_get().
 *
 * Names are 1..127 bytes of UTF-8 (any text Powertools takes, but NUL). A name already in the
 * segment is found without the daemon; a new one is registered over the
 * control connection, waiting up to 2 s for the answer. If cbd later loses
 * the circuit (a replaced segment without it, a removal), the handle
 * registers it again by itself, with the same cfg.
 *
 * Returns 0 and sets *out, or:
 *   -EINVAL   bad name or a cfg value out of bounds (the daemon logs which)
 *   -ENOSPC   the segment is full (raise the daemon's `capacity` option)
 *   -EDQUOT   this user's registration quota is used up
 *   -ECONNREFUSED / -ENOENT  the daemon's socket does not answer
 *   -ECONNRESET the daemon closed the connection twice during the request
 *   -ETIMEDOUT the daemon did not answer within 2 s (a later call for the
 *             name returns the handle once a late answer arrived)
 *   -EPERM    the daemon refused this peer
 *   -ENOMEM
 * Thread safety: safe from any thread. A registration waits with no lock
 * held: other threads' calls on the client never wait behind it (a second
 * cb_circuit_get of the same name waits for the same answer).
 */
CB_EXPORT int cb_circuit_get(cb_client *client, const char *name, const cb_config *cfg,
                             cb_circuit **out);

/* ---- the hot path --------------------------------------------------------- */

/*
 * A ticket says whether a call may go ahead and, for cb_record(), which
 * epoch of the circuit it belongs to. Bits 0-7: kind (below); bits 32-63:
 * the circuit's epoch when the ticket was issued.
 */
typedef struct cb_ticket {
    uint64_t word;
} cb_ticket;

#define CB_TICKET_REJECTED 0u /* do not call; the circuit is open */
#define CB_TICKET_ALLOWED 1u  /* call; CLOSED circuit */
#define CB_TICKET_PROBE 2u    /* call; this is a HALF_OPEN probe - report it! */
#define CB_TICKET_BYPASS 3u   /* call; breaker bypassed (disabled, stale daemon); nothing is counted */

/* Internal layout knowledge needed by the inline fast path. */
struct cb__circuit_head {
    const uint64_t *state_word; /* in the read-only state region */
    uint32_t expect;            /* the low half of the word of a plain CLOSED circuit in the
                                 * incarnation of the slot this handle is bound to */
};
#define CB__STATE_SLOW_MASK 0xffffffffull /* state, flags, incarnation */
#define CB__EPOCH_SHIFT 32

CB_EXPORT cb_ticket cb__allow_slow(cb_circuit *c, uint64_t state_word);

/*
 * cb_allow - may a call to this circuit's downstream go ahead now?
 *
 * CLOSED: one acquire load of the state word, a compare and a branch. OPEN: rejected (the same load plus,
 * off the fast path, a per-thread memo of the last refusal: the rejection is counted with a load and a
 * store, and the daemon's heartbeat is judged by a coarse vDSO clock read at most every 64 refusals -
 * every refusal for a thread calling slower than one per clock tick; see libcb/src/lanes.c, Memos).
 * HALF_OPEN: one CAS on the circuit's permit word; the winner gets a PROBE
 * ticket, the rest are rejected. If the daemon's heartbeat is stale past its
 * limit, non-CLOSED circuits fail open (BYPASS tickets; see cb_status()).
 * In these states: no syscall, no lock, no allocation.
 *
 * When the daemon replaced the segment or removed the circuit, the calls
 * that notice move the handle, and never wait for the daemon or another
 * thread: a trylock of the client (taken: try on a later call), at most a
 * few non-blocking syscalls (fstat, shm_open and mmap of a new segment that
 * is ready already - one attempt per 100 ms -, a non-blocking send of the
 * circuit's registration, a non-blocking read of answers - one per clock
 * tick), and maybe an allocation. Until the handle is bound again a call
 * is decided on what it points at: a replaced segment's record by the
 * last state its daemon published, under that segment's staleness policy
 * (its daemon is gone, so with fail-open a non-CLOSED circuit gets BYPASS
 * once the heartbeat is stale); a removed circuit gets BYPASS.
 * Never blocks. Thread safety: any thread.
 */
static inline cb_ticket cb_allow(cb_circuit *c)
{
    /* A handle is rebound (to a new segment, or to a new slot after its
     * circuit was removed and registered again) pointer first, then
     * expect, with release; loading expect first (acquire), then the
     * pointer, never pairs a new expect with an old pointer. Each load
     * costs the same single mov as a plain one on x86-64. The state
     * word's acquire pairs with the daemon's release store when it
     * publishes a transition. */
    const struct cb__circuit_head *head = (const struct cb__circuit_head *)c;
    uint32_t expect = __atomic_load_n(&head->expect, __ATOMIC_ACQUIRE);
    const uint64_t *word = __atomic_load_n(&head->state_word, __ATOMIC_ACQUIRE);
    uint64_t w = __atomic_load_n(word, __ATOMIC_ACQUIRE);
    if (CB__LIKELY((uint32_t)w == expect)) {
        cb_ticket t = {(w & ~CB__STATE_SLOW_MASK) | CB_TICKET_ALLOWED};
        return t;
    }
    return cb__allow_slow(c, w);
}

/* cb_permitted - true when the ticket allows the call (ALLOWED, PROBE, BYPASS). */
static inline bool cb_permitted(cb_ticket t)
{
    return (t.word & 0xff) != CB_TICKET_REJECTED;
}

/* cb_ticket_is_probe - true when the ticket is a HALF_OPEN probe. */
static inline bool cb_ticket_is_probe(cb_ticket t)
{
    return (t.word & 0xff) == CB_TICKET_PROBE;
}

/*
 * cb_record - report the outcome of a permitted call.
 *
 * Appends one event to the calling thread's lane (a thread gets a lane on
 * its first record). Results of a ticket from an older epoch are ignored by
 * the daemon. A failure or a probe result wakes the daemon if it sleeps, so a
 * trip never waits for a tick. If the lane is full the event is dropped and
 * counted (visible in cbd's stats): a worker never waits for the daemon.
 * Recording a REJECTED or BYPASS ticket does nothing; nor does recording
 * through a handle still bound to a replaced segment. Thread safety: any
 * thread; never blocks, and allocates only on a thread's first call for a
 * segment (its lane).
 */
CB_EXPORT void cb_record(cb_circuit *c, cb_ticket ticket, cb_outcome outcome);

/*
 * cb_record_latency - cb_record() with the call's duration, measured by the
 * caller (nanoseconds; microseconds travel in the event, up to ~71 minutes).
 * A circuit with a slow-call rule (slow_call_duration_threshold_ms > 0)
 * counts the call as slow when it took longer than that; a circuit without
 * one ignores the duration. Costs what cb_record costs: the duration goes in
 * the event's word that cb_record leaves zero. Thread safety: as cb_record.
 */
CB_EXPORT void cb_record_latency(cb_circuit *c, cb_ticket ticket, cb_outcome outcome, uint64_t latency_ns);

/* ---- calls the Powertools way --------------------------------------------- */

typedef struct cb_info {
    char name[128];
    cb_state state;
    bool forced;            /* an operator forced this state */
    bool disabled;          /* breaker bypassed for this circuit */
    uint32_t failure_count; /* CLOSED: the current streak; OPEN/HALF_OPEN: failures at trip */
    int64_t opened_at;      /* epoch seconds of the last opening; 0 when CLOSED */
    uint32_t epoch;         /* increases on every transition */
    cb_config config;       /* the policy in force */
    uint64_t total_successes, total_failures, total_ignored;
    int64_t open_until_ns;  /* OPEN: CLOCK_REALTIME (ns) when the recovery timeout ends; else 0 */
} cb_info;

typedef int (*cb_fn)(void *arg);
/* Decides what a result of fn counts as. Default: < 0 is CB_FAILURE, else CB_SUCCESS. */
typedef cb_outcome (*cb_classify_fn)(int result, void *arg);
/* Called instead of fn when the circuit rejects; its return value becomes cb_call's. */
typedef int (*cb_on_open_fn)(const cb_info *info, void *arg);

typedef struct cb_call_opts {
    cb_classify_fn classify; /* NULL: the default above */
    cb_on_open_fn on_open;   /* NULL: cb_call returns CB_EOPEN when rejected */
    void *arg;               /* passed to classify and on_open */
} cb_call_opts;

/*
 * cb_call - run fn(fn_arg) through the breaker, as Powertools' decorator does.
 * Returns fn's result when the call was permitted (and records its outcome
 * as classify says), else on_open's result, else CB_EOPEN.
 * Thread safety: any thread.
 */
CB_EXPORT int cb_call(cb_circuit *c, cb_fn fn, void *fn_arg, const cb_call_opts *opts);

/*
 * cb_info_get - a consistent snapshot of the circuit: one version the
 * daemon published, read without a lock (segment.h). A handle that has to
 * move (see cb_allow) is moved first if that can be done without waiting;
 * until it has moved, the snapshot is the replaced segment's last version.
 * Returns 0, -EAGAIN if the daemon kept rewriting the record for ~1 ms,
 * -ENOENT if the circuit was removed and is not registered again yet, or
 * -EBADMSG if the record is corrupt. Never waits for the daemon.
 */
CB_EXPORT int cb_info_get(cb_circuit *c, cb_info *info);

/* ---- observing transitions ------------------------------------------------ */

typedef enum cb_source {
    CB_SOURCE_LOCAL = 0,    /* this host's outcomes */
    CB_SOURCE_REMOTE = 1,   /* another host, through the store */
    CB_SOURCE_OPERATOR = 2, /* cbctl / control socket */
    CB_SOURCE_TIMER = 3,    /* recovery timeout or probe lease */
    CB_SOURCE_RESTORE = 4,  /* restored at daemon start */
} cb_source;

typedef struct cb_transition {
    uint64_t seq; /* position in the history; consecutive unless overrun */
    char name[128];
    cb_state from, to;
    cb_source source;
    uint32_t epoch;
    uint32_t failure_count;
    int64_t opened_at; /* epoch seconds; 0 when closed */
    int64_t time_ns;   /* CLOCK_REALTIME of the transition */
} cb_transition;

/*
 * cb_next_transition - read the next transition from the segment's history
 * ring, in order. Each client keeps its own cursor, which starts at the
 * newest entry when the client is opened: a fresh client sees only what
 * happens after it opened.
 *
 * Returns 1 and fills *out; 0 when there is nothing new; -EOVERFLOW when the
 * reader fell behind and entries were overwritten (the cursor jumps to the
 * oldest entry that cannot be overwritten while it is read, head -
 * capacity + 1, so the next call goes on from there). Entries carry the
 * circuit's name, so they stay meaningful after the circuit is removed.
 * After a segment replacement the cursor starts at the new segment's first
 * entry. Never waits for the daemon or for another thread's registration.
 * Thread safety: one reader per client at a time.
 */
CB_EXPORT int cb_next_transition(cb_client *client, cb_transition *out);

/* ---- status and versions -------------------------------------------------- */

#define CB_STATUS_RUNNING 0x1u   /* a daemon is publishing heartbeats */
#define CB_STATUS_RESTARTED 0x2u /* the daemon restarted since the last cb_status() */
#define CB_STATUS_STALE 0x4u     /* heartbeat older than the staleness limit: failing open */
#define CB_STATUS_DISABLED 0x8u  /* $CB_DISABLED bypass */
#define CB_STATUS_REMAPPED 0x10u /* the segment was replaced and remapped */

/*
 * cb_status - what the client knows about its daemon. Checks the heartbeat
 * and generation. If the daemon replaced the segment (another layout or
 * capacity), waits up to 2 s for the new one to become ready, maps it and
 * moves every handle to it, sending registrations for circuits it lacks
 * (their answers are picked up by later calls, never waited for). May
 * wait: call it from a timer or a health check, not on a request's path.
 * Thread safety: any thread.
 */
CB_EXPORT unsigned cb_status(cb_client *client);

/* cb_strerror - a static, human-readable text for a libcb error code (what
 * is wrong with the deployment, for an operator). "unknown error" if none. */
CB_EXPORT const char *cb_strerror(int err);

/* cb_err_name - the code's stable name: "CB_EOPEN", "ENOENT", ...; for
 * logs and metrics labels. "unknown" if none. */
CB_EXPORT const char *cb_err_name(int err);

/* cb_version - the runtime library's version as CB_VERSION_STRING. */
CB_EXPORT const char *cb_version(void);

#ifdef __cplusplus
}
#endif
#endif /* CB_H */
