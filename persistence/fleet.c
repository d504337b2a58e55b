/*
 * fleet.c - the fleet layer: what a store shared by hosts does, written
 * once for every such store (docs/fleet.md; fleet.h has the interfaces).
 *
 * The write rules. fleet_write_applies / fleet_write_result state what each
 * conditional write (OPEN, CLOSE, ELECT, RENEW, RELEASE) does to the item;
 * transports encode exactly this atomically, so one rule decides on redis,
 * on DynamoDB and in the unit tests' in-memory store. A write never
 * clobbers a newer opening or another host's live lease, and a write about
 * an older opening never changes the item.
 *
 * Views. Per circuit the layer keeps `cur`, what the daemon holds as far as
 * the store knows (its transitions, and what it was told), and `known`,
 * what the store held when last read or written. The daemon is told
 * (hooks->remote) when an answer shows the fleet holding something that
 * matters to it (is_news): CLOSED against open, another opening, another
 * host's lease on the opening it probes (it lost the lease), or a new lease
 * of another host on the opening it has as OPEN (that changes nothing on
 * this host, where both mean "reject", but shows who probes). Not news: an
 * OPEN of the opening the daemon probes, our own lease in any copy (an
 * eventually consistent read from before our last renewal included), and
 * anything while a write, release or election of ours is queued (its own
 * answer is newer and will tell). An absent item reads as CLOSED - except for a circuit never
 * seen, where absence says nothing, and except for an opening younger than
 * any TTL the store could have given it (recovery timeout + 3600 s): that
 * item was lost (flushed, failed over), not expired, and is written again.
 * A restore reports every valid item it finds: the daemon's own state is
 * not known to the store yet. An opening's backoff deadline travels with it:
 * an OPEN write carries the daemon's open_until_ns in whole seconds rounded
 * up (no host reads it early), and a report gives the item's open_until
 * (0 unless it belongs to that opening) back in ns.
 *
 * Work. Per circuit at most one request is in flight; behind it wait at
 * most the latest unwritten transition (a newer one replaces it: memory is
 * bounded by the circuits however long an outage lasts), one release, one
 * election or renewal, and a read. They go in that order, so the daemon's
 * transitions land before anything that depends on them. Entry points only
 * record work and arm a 0 ms timer (the kick); every hook runs from a loop
 * callback, never inside the daemon's call. (Starting and restoring call
 * the transport's connect() at once; transports report up() or down() from
 * the loop, never inside it.) Reads go in batches of the
 * transport's size, at most FLEET_READ_WINDOW circuits at a time; writes
 * and elections at most FLEET_REQUESTS_MAX at a time.
 *
 * Agreement. hooks->synced follows every answer that leaves the store and
 * the daemon agreeing on a circuit - a write landed (or was refused by
 * what the daemon already has), an election or renewal was answered, a
 * read found the same state or reported the difference - unless a newer
 * transition of the circuit still waits to be written.
 *
 * Elections. try_probe sends ELECT, or RENEW when this host holds the
 * fleet's lease on that opening. Granted: the lease's expiry goes to the
 * daemon. Refused: the holder's expiry (when to ask again), 0 if none. An
 * election that takes over a lapsed lease of another opening than asked
 * is not a grant: the lease is given back at once. An election that fails
 * for another reason than a lost condition (an error answer, an invalid
 * item) is granted host-local: fail open, where Powertools would raise.
 *
 * Outage. A transport reports down() when a connection attempt fails or a
 * connection is lost; the layer reports health(false), keeps the work
 * queued and calls connect() again after a full-jitter backoff (backoff.h)
 * - unless the transport reconnects by itself (redis_link does, and knows
 * when a Sentinel failover makes waiting pointless).
 * Elections asked while offline are granted host-local once a connection
 * attempt failed while they waited: one asked while the store connects, or
 * just after a connection dropped, waits for that attempt, so a host that
 * restarts or was briefly hung does not probe beside the fleet's holder.
 * The fleet-wide probe bound cannot hold without the store; a circuit must
 * not stay OPEN forever because the store is away. Back up: health(true),
 * the queued writes, releases and elections in that order per circuit, and
 * a reconcile of every tracked circuit.
 *
 * Shadow. A shadow circuit's transitions (st->shadow) are a trial: they
 * write the item's shadow marker (FLEET_SHADOW: state, time, this host's
 * owner id) and nothing else - not cur, not the real state, version or
 * lease - unconditionally (last writer wins: a marker, not a state other
 * hosts obey). They go after the circuit's real work, one pending at a
 * time (a newer one replaces it), and are not flushed at close. Every
 * answer's marker is kept per circuit for the operator (fleet_shadow_of);
 * a bad one is counted (invalid_shadows) and ignored, never making the
 * item's real state unreadable.
 *
 * Traffic: transitions, elections, one read per push notification about a
 * tracked circuit, one read at registration, and the reconcile every
 * sync_ms - never per request.
 *
 * Read budget (settings.read_budget > 0, docs/fleet.md "Reads under a
 * budget"): the reconcile no longer reads every circuit. Each sync period
 * may send budget * sync_ms reads; the circuits the daemon used since the
 * last period (hooks.used) are queued first, and what they leave, less a
 * quarter for reads that arrive during the period, goes to a sweep over
 * the list of circuits (list[0..at) is the swept part of the round). Every
 * read but a restore's waits for the budget; a restore's reads are a debt
 * the next periods repay. O(busy + swept) work per period in this layer.
 */
#define _GNU_SOURCE /* gethostname, arc4random */
#include "fleet.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "log.h"
#include "segment.h"

#define FLEET_READ_WINDOW 256   /* circuits with a read in flight */
#define FLEET_REQUESTS_MAX 256  /* writes, releases and elections in flight */
#define FLEET_DEFAULT_RECOVERY_S 30
#define NS_PER_S 1000000000ll

/* ==== the write rules ========================================================== */

static bool has_owner(const struct fleet_item *b)
{
    return b->owner[0] != '\0';
}

bool fleet_write_applies(const struct fleet_item *b, const struct fleet_write *w, int64_t now_s)
{
    bool open = b->exists && b->state == CB_OPEN, half = b->exists && b->state == CB_HALF_OPEN;
    bool mine = half && strcmp(b->owner, w->owner) == 0, lapsed = half && b->lease_expiry <= now_s;
    bool same = (open || half) && b->opened_at == w->opened_at, older = b->opened_at < w->opened_at;
    switch (w->kind) {
    case FLEET_OPEN:
        return !b->exists || b->state == CB_CLOSED || (open && older) || (half && (mine || (lapsed && older)));
    case FLEET_CLOSE:
        return mine || (same && ((open && !has_owner(b)) || lapsed));
    case FLEET_ELECT:
        return (open && !has_owner(b) && same) || lapsed || mine;
    case FLEET_RENEW:
    case FLEET_RELEASE:
        return mine && same;
    case FLEET_SHADOW:
        return true;
    }
    return false;
}

void fleet_write_result(const struct fleet_item *b, const struct fleet_write *w, int64_t now_s,
                        struct fleet_item *after)
{
    *after = *b;
    if (w->kind == FLEET_SHADOW) { /* the marker alone: the real state, exists included, as it was */
        after->shadow = (struct fleet_shadow){.state = w->shadow_state, .since = w->shadow_since};
        snprintf(after->shadow.host, sizeof after->shadow.host, "%s", w->owner);
        after->shadow_invalid = false;
        return;
    }
    after->exists = true;
    after->updated_at = now_s;
    switch (w->kind) {
    case FLEET_OPEN:
        after->state = CB_OPEN;
        after->failure_count = w->failure_count;
        after->opened_at = w->opened_at;
        after->open_until = w->open_until;
        after->open_until_of = w->open_until != 0 ? w->opened_at : 0;
        break;
    case FLEET_CLOSE:
        after->state = CB_CLOSED;
        after->failure_count = 0;
        after->opened_at = 0;
        after->open_until = after->open_until_of = 0;
        break;
    case FLEET_ELECT:
        after->state = CB_HALF_OPEN;
        snprintf(after->owner, sizeof after->owner, "%s", w->owner);
        after->lease_expiry = now_s + w->lease_s;
        return;
    case FLEET_RENEW:
        after->lease_expiry = now_s + w->lease_s;
        return;
    case FLEET_RELEASE:
        after->state = CB_OPEN;
        break;
    case FLEET_SHADOW:
        return;
    }
    after->owner[0] = '\0';
    after->lease_expiry = 0;
}

const char *fleet_write_kind_name(enum fleet_write_kind kind)
{
    static const char *const names[] = {"OPEN", "CLOSE", "ELECT", "RENEW", "RELEASE", "SHADOW"};
    return (unsigned)kind < sizeof names / sizeof names[0] ? names[kind] : "?";
}

/* ==== validating items =========================================================== */

int fleet_parse_state(const char *s, size_t len, cb_state *out)
{
    for (cb_state st = CB_CLOSED; st <= CB_HALF_OPEN; st++) {
        const char *name = cb__state_name(st);
        if (len == strlen(name) && memcmp(s, name, len) == 0) {
            *out = st;
            return 0;
        }
    }
    return -EINVAL;
}

int fleet_fault(char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return -EBADMSG;
}

/* Length of the valid UTF-8 sequence of 2-4 bytes at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t need = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
    if (need == 0 || need > n)
        return 0;
    for (size_t i = 1; i < need; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return need;
}

const char *fleet_quote(const char *s, size_t len, char *buf, size_t size)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < len) {
        size_t seq = u[i] >= 0x80 ? utf8_seq(u + i, len - i) : 0;
        bool plain = u[i] >= 0x20 && u[i] < 0x7f && u[i] != '\'' && u[i] != '\\';
        size_t out = seq ? seq : plain ? 1 : 4;
        if (o + out + 4 > size) /* room for "..." and the NUL */
            break;
        if (seq || plain)
            memcpy(buf + o, s + i, out);
        else
            snprintf(buf + o, 5, "\\x%02x", u[i]);
        o += out;
        i += seq ? seq : 1;
    }
    if (i < len)
        memcpy(buf + o, "...", 3), o += 3;
    buf[o] = '\0';
    return buf;
}

int fleet_parse_number(const char *kind, const char *name, const char *v, size_t len, uint64_t max,
                       const char *above, uint64_t *out, char *why, size_t size)
{
    char q[48];
    uint64_t n = 0;
    fleet_quote(v, len, q, sizeof q);
    if (len == 0)
        return fleet_fault(why, size, "%s '%s' is an empty number", kind, name);
    if (v[0] == '-')
        return fleet_fault(why, size, "%s '%s' is negative ('%s')", kind, name, q);
    for (size_t i = 0; i < len; i++) {
        if (v[i] == '.' || v[i] == 'e' || v[i] == 'E')
            return fleet_fault(why, size, "%s '%s' is not a whole number ('%s')", kind, name, q);
        if (v[i] < '0' || v[i] > '9')
            return fleet_fault(why, size, "%s '%s' is not a number ('%s')", kind, name, q);
        unsigned d = (unsigned)(v[i] - '0');
        if (n > (max - d) / 10)
            return fleet_fault(why, size, "%s '%s' is %s ('%s')", kind, name, above, q);
        n = n * 10 + d;
    }
    *out = n;
    return 0;
}

int fleet_item_check(const struct fleet_item_names *n, const struct fleet_item *it, char *why, size_t size)
{
    if (it->state != CB_CLOSED && it->state != CB_OPEN && it->state != CB_HALF_OPEN)
        return fleet_fault(why, size, "state %d is not CLOSED, OPEN or HALF_OPEN", (int)it->state);
    if (it->state == CB_CLOSED)
        return 0;
    if (it->opened_at < 1 || it->opened_at > CB_TIME_MAX_S)
        return fleet_fault(why, size, "%s needs '%s' (epoch seconds, 1 to 9000000000)", cb__state_name(it->state),
                   n->opened_at);
    if (it->state == CB_OPEN)
        return 0;
    size_t owner = strnlen(it->owner, sizeof it->owner);
    if (owner == 0 || owner == sizeof it->owner)
        return fleet_fault(why, size, "HALF_OPEN needs '%s' (the probe holder's id, 1 to %d bytes)", n->owner,
                   FLEET_OWNER_MAX);
    if (it->lease_expiry < 0 || it->lease_expiry > CB_TIME_MAX_S)
        return fleet_fault(why, size, "HALF_OPEN needs '%s' (epoch seconds, 0 to 9000000000)", n->lease);
    return 0;
}

int fleet_item_deadline(const struct fleet_item_names *n, struct fleet_item *it, int64_t until, int64_t of,
                        char *why, size_t size)
{
    if ((until < 0) != (of < 0))
        return fleet_fault(why, size, "%s '%s' without '%s' (the opening's end and the opened_at it belongs to "
                           "come together)", n->kind, until < 0 ? n->open_until_of : n->open_until,
                           until < 0 ? n->open_until : n->open_until_of);
    it->open_until_of = of < 0 ? 0 : of;
    it->open_until = of >= 0 && it->state != CB_CLOSED && of == it->opened_at ? until : 0;
    return 0;
}

int fleet_item_shadow(const struct fleet_item_names *n, struct fleet_item *it, struct fleet_raw state,
                      struct fleet_raw since, struct fleet_raw host, char *why, size_t size)
{
    char q[48];
    uint64_t at = 0;
    int rc = 0;
    it->shadow = (struct fleet_shadow){.state = CB_CLOSED};
    it->shadow_invalid = false;
    if (!state.s && !since.s && !host.s)
        return 0;
    if (!state.s || !since.s || !host.s)
        rc = fleet_fault(why, size, "a shadow marker without %s '%s' (%s, %s and %s come together)", n->kind,
                         !state.s ? n->shadow_state : !since.s ? n->shadow_since : n->shadow_host, n->shadow_state,
                         n->shadow_since, n->shadow_host);
    else if (fleet_parse_state(state.s, state.len, &it->shadow.state) < 0)
        rc = fleet_fault(why, size, "%s '%s' is '%s', not CLOSED, OPEN or HALF_OPEN", n->kind, n->shadow_state,
                         fleet_quote(state.s, state.len, q, sizeof q));
    else if ((rc = fleet_parse_number(n->kind, n->shadow_since, since.s, since.len, CB_TIME_MAX_S,
                                      "after 2255-03-14 (epoch second 9000000000)", &at, why, size)) == 0 && at == 0)
        rc = fleet_fault(why, size, "%s '%s' is 0 (epoch seconds, 1 to 9000000000)", n->kind, n->shadow_since);
    else if (rc == 0 && (host.len == 0 || host.len > FLEET_OWNER_MAX || memchr(host.s, '\0', host.len) != NULL))
        rc = fleet_fault(why, size, "%s '%s' is not a host id of 1 to %d bytes without NUL ('%s')", n->kind,
                         n->shadow_host, FLEET_OWNER_MAX, fleet_quote(host.s, host.len, q, sizeof q));
    if (rc < 0) {
        it->shadow = (struct fleet_shadow){.state = CB_CLOSED};
        it->shadow_invalid = true;
        return rc;
    }
    it->shadow.since = (int64_t)at;
    memcpy(it->shadow.host, host.s, host.len);
    it->shadow.host[host.len] = '\0';
    return 0;
}

void fleet_owner_id(char *buf, size_t size, const char *instance)
{
    char host[65] = "";
    if (gethostname(host, sizeof host - 1) < 0 || host[0] == '\0')
        strcpy(host, "unknown-host");
    snprintf(buf, size, "%.40s:%.32s:%ld:%08x", host, instance != NULL ? instance : "default", (long)getpid(),
             arc4random());
}

/* ==== the store ===================================================================== */

/* What the daemon holds, as far as the store knows. */
struct fleet_view {
    cb_state state;
    uint32_t failure_count;
    int64_t opened_at;  /* 0 when CLOSED */
    int64_t open_until; /* OPEN: epoch s its wait ends at (backoff); 0 none */
};

enum fleet_busy { FLEET_IDLE, FLEET_BUSY_WRITE, FLEET_BUSY_READ };

/* The store's two FIFOs of circuits: work to send (fleet_send) and reads
 * waiting to go in a batch (send_reads). */
enum fleet_queue { Q_SEND, Q_READ, Q_COUNT };

struct fleet_circuit {
    struct cbd_store *store;
    struct fleet_circuit *hnext;  /* hash chain */
    struct fleet_circuit *qnext[Q_COUNT];
    bool queued[Q_COUNT];
    size_t pos;                   /* index in the store's list */
    bool tracked;                 /* false: untracked, kept until its work is done */
    bool restoring;               /* a read of the restore: reports what it finds */
    bool tell_synced;             /* agreement to tell from the kick */
    bool invalid_logged;          /* its item was invalid, and the log said so */
    char name[CB_NAME_MAX + 1];
    size_t len;
    uint32_t recovery_s;
    struct fleet_view cur;
    struct fleet_item known;      /* valid once seen */
    bool seen;
    /* the fleet's lease, as this host last held it */
    bool lease_held;
    int64_t lease_opened_at;
    /* work not sent yet */
    bool w_pending, w_hold;       /* hold: failed; sent again by the next reconcile or connection */
    enum fleet_write_kind w_kind; /* FLEET_OPEN or FLEET_CLOSE */
    int64_t w_opened_at;
    uint32_t w_failure_count;
    int64_t w_open_until;
    bool rel_pending;
    int64_t rel_opened_at;
    bool e_pending;
    int64_t e_opened_at;
    uint32_t e_lease_s;
    bool sh_pending, sh_hold;     /* a shadow marker to write (hold: failed; the next reconcile sends it) */
    cb_state sh_state;
    int64_t sh_since;
    struct fleet_shadow shadow;   /* the store's shadow marker, as last read or written */
    bool r_pending;
    uint64_t read_tick;           /* the budget's tick of its last read (budget_read) */
    /* the request in flight */
    enum fleet_busy busy;
    struct fleet_write sent;
};

enum fleet_link { LINK_DOWN, LINK_CONNECTING, LINK_UP };

struct cbd_store {
    const struct fleet_transport_ops *ops;
    struct fleet_transport *t;
    struct fleet_settings set;
    struct cbd_store_hooks hooks;
    const char *owner;
    struct fleet_clock clock;
    uint64_t rng;
    uv_timer_t kick, sync_timer, retry_timer, close_timer;
    enum fleet_link link;
    bool started;
    int health;                   /* -1 not reported yet, else the last reported value */
    unsigned attempt;             /* reconnection attempts since the last up */
    struct fleet_circuit **buckets, **list;
    size_t nbuckets, count, cap;
    struct fleet_circuit *qhead[Q_COUNT], *qtail[Q_COUNT];
    size_t qlen[Q_COUNT];
    unsigned requests, reads;     /* in flight */
    bool any_held;                /* a write may wait for the next reconcile (w_hold) */
    /* reads under a budget (settings.read_budget > 0): see budget_tick */
    struct {
        int64_t balance;          /* reads this period may still send (< 0: a restore's debt) */
        uint64_t tick;            /* periods so far */
        uint64_t used_mark;       /* the daemon's bookmark for hooks.used */
        size_t at;                /* the sweep's place in list: list[0..at) swept this round */
        size_t quota;             /* sweep reads left this period */
        size_t scanned;           /* circuits the sweep looked at this period */
    } budget;
    struct {
        void (*done)(void *arg, int rc);
        void *arg;
        bool started, listing;
        size_t left;              /* restore reads not answered yet */
    } restore;
    bool closing, tearing;
    unsigned close_pending;
    void (*close_done)(void *arg);
    void *close_arg;
    struct {
        uint64_t conditions_lost, invalid_items, errors, remote_reports, host_local_grants, rewrites;
        uint64_t shadow_writes, invalid_shadows; /* shadow markers written; bad ones read and ignored */
        uint64_t reads, busy_reads, sweeps; /* circuits read; of them busy ones at a sync; full sweeps */
    } st;
    struct cbd_ratelimit rl_offline, rl_err;
};

static void kick(struct cbd_store *s);
static void teardown(struct cbd_store *s);
static void restore_read_done(struct cbd_store *s);

static int64_t now_s(const struct cbd_store *s)
{
    return s->clock.now_s != NULL ? s->clock.now_s(s->clock.arg) : (int64_t)time(NULL);
}

static uint64_t random_bits(struct cbd_store *s)
{
    if (s->clock.random != NULL)
        return s->clock.random(s->clock.arg);
    s->rng ^= s->rng >> 12; /* xorshift64*: jitter only, not secrets */
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return s->rng * 0x2545F4914F6CDD1Dull;
}

void fleet_set_clock(struct cbd_store *s, const struct fleet_clock *clock)
{
    s->clock = *clock;
}

/* ---- circuits ------------------------------------------------------------------------ */

static struct fleet_circuit *find(const struct cbd_store *s, const char *name)
{
    size_t len = strlen(name);
    uint64_t h = cb__name_hash(name, len);
    for (struct fleet_circuit *c = s->buckets[h & (s->nbuckets - 1)]; c != NULL; c = c->hnext)
        if (c->len == len && memcmp(c->name, name, len) == 0)
            return c;
    return NULL;
}

static bool grow(struct cbd_store *s)
{
    if (s->count == s->cap) {
        size_t cap = s->cap * 2;
        struct fleet_circuit **l = realloc(s->list, cap * sizeof *l);
        if (l == NULL)
            return false;
        s->list = l;
        s->cap = cap;
    }
    if (s->count < s->nbuckets)
        return true;
    size_t nb = s->nbuckets * 2;
    struct fleet_circuit **b = calloc(nb, sizeof *b);
    if (b == NULL)
        return true; /* longer chains, still correct */
    for (size_t i = 0; i < s->count; i++) {
        struct fleet_circuit *c = s->list[i];
        size_t at = cb__name_hash(c->name, c->len) & (nb - 1);
        c->hnext = b[at];
        b[at] = c;
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
    return true;
}

/* The circuit called name, added if new; *fresh: it was not tracked
 * before (new, or untracked). NULL for a name cbd cannot hold or no memory. */
static struct fleet_circuit *get(struct cbd_store *s, const char *name, bool *fresh)
{
    *fresh = false;
    if (cb__name_check(name) < 0) {
        cbd_log(CBD_LOG_WARN, "%s: '%.128s' is not a circuit name cbd accepts: not shared", s->set.log_name, name);
        return NULL;
    }
    struct fleet_circuit *c = find(s, name);
    if (c != NULL) {
        *fresh = !c->tracked;
        c->tracked = true;
        return c;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL || !grow(s)) {
        free(c);
        cbd_log(CBD_LOG_ERROR, "%s: out of memory tracking circuit '%s'", s->set.log_name, name);
        return NULL;
    }
    c->store = s;
    c->len = strlen(name);
    memcpy(c->name, name, c->len + 1);
    c->tracked = *fresh = true;
    c->recovery_s = FLEET_DEFAULT_RECOVERY_S;
    c->cur.state = CB_CLOSED;
    size_t at = cb__name_hash(name, c->len) & (s->nbuckets - 1);
    c->hnext = s->buckets[at];
    s->buckets[at] = c;
    c->pos = s->count;
    s->list[s->count++] = c;
    return c;
}

/* Work of ours queued: its answer will be newer than any read's. */
static bool has_work(const struct fleet_circuit *c)
{
    return c->w_pending || c->rel_pending || c->e_pending;
}

/* Work that goes before a read (a held write waits for a reconcile). */
static bool sendable_work(const struct fleet_circuit *c)
{
    return (c->w_pending && !c->w_hold) || c->rel_pending || c->e_pending || (c->sh_pending && !c->sh_hold);
}

/* An untracked circuit is forgotten once nothing of it is left to do. */
static void maybe_free(struct cbd_store *s, struct fleet_circuit *c)
{
    if (c->tracked || c->busy != FLEET_IDLE || c->w_pending || c->rel_pending || c->sh_pending || c->queued[Q_SEND] ||
        c->queued[Q_READ] || s->tearing)
        return;
    if (c->restoring) {
        c->restoring = false;
        restore_read_done(s);
    }
    struct fleet_circuit **pp = &s->buckets[cb__name_hash(c->name, c->len) & (s->nbuckets - 1)];
    while (*pp != c)
        pp = &(*pp)->hnext;
    *pp = c->hnext;
    if (c->pos < s->budget.at) { /* keep list[0..at) the swept part: its last one takes c's place */
        struct fleet_circuit *swept = s->list[--s->budget.at];
        s->list[c->pos] = swept;
        swept->pos = c->pos;
        c->pos = s->budget.at;
    }
    struct fleet_circuit *last = s->list[--s->count];
    s->list[c->pos] = last;
    last->pos = c->pos;
    free(c);
}

static void enqueue(struct cbd_store *s, enum fleet_queue q, struct fleet_circuit *c)
{
    if (c->queued[q])
        return;
    c->queued[q] = true;
    s->qlen[q]++;
    c->qnext[q] = NULL;
    if (s->qtail[q] != NULL)
        s->qtail[q]->qnext[q] = c;
    else
        s->qhead[q] = c;
    s->qtail[q] = c;
}

static struct fleet_circuit *dequeue(struct cbd_store *s, enum fleet_queue q)
{
    struct fleet_circuit *c = s->qhead[q];
    if (c == NULL)
        return NULL;
    s->qhead[q] = c->qnext[q];
    if (s->qhead[q] == NULL)
        s->qtail[q] = NULL;
    c->queued[q] = false;
    s->qlen[q]--;
    return c;
}

/* The circuit has work for fleet_send. */
static void mark_dirty(struct cbd_store *s, struct fleet_circuit *c)
{
    enqueue(s, Q_SEND, c);
    kick(s);
}

static void queue_read(struct cbd_store *s, struct fleet_circuit *c)
{
    c->r_pending = true;
    enqueue(s, Q_READ, c);
    kick(s);
}

/* ---- what the daemon is told ----------------------------------------------------------- */

/* Does the fleet holding it (before: what it held as last seen, valid if
 * seen) tell the daemon, holding cur, anything? */
static bool is_news(const struct cbd_store *s, const struct fleet_circuit *c, const struct fleet_item *it, bool seen,
                    const struct fleet_item *before)
{
    bool fleet_closed = !it->exists || it->state == CB_CLOSED;
    if (!it->exists && !seen)
        return false; /* absence says nothing about a circuit never seen */
    if (fleet_closed != (c->cur.state == CB_CLOSED))
        return true;
    if (fleet_closed)
        return false;
    if (it->opened_at != c->cur.opened_at)
        return true;
    if (it->state != CB_HALF_OPEN || strcmp(it->owner, s->owner) == 0)
        return false; /* the opening the daemon has, and no lease but ours */
    /* Another's lease on the daemon's opening: news to a prober (it lost
     * the lease); to a host that has the opening as OPEN only when it is a
     * new lease, which changes nothing there but shows it. */
    return c->cur.state == CB_HALF_OPEN || !seen || !before->exists || before->state != CB_HALF_OPEN ||
           before->lease_expiry != it->lease_expiry || strcmp(before->owner, it->owner) != 0;
}

static void report(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_item *it)
{
    struct cbd_store_state st = {.state = it->exists ? it->state : CB_CLOSED};
    memcpy(st.name, c->name, c->len + 1);
    if (st.state != CB_CLOSED) {
        st.failure_count = it->failure_count;
        st.opened_at = it->opened_at;
        st.open_until_ns = it->open_until * NS_PER_S; /* 0 unless it is this opening's */
    }
    if (st.state == CB_HALF_OPEN) {
        snprintf(st.probe_owner, sizeof st.probe_owner, "%s", it->owner);
        st.lease_expiry = it->lease_expiry;
    }
    st.updated_at = it->exists ? it->updated_at : 0;
    /* the daemon adopts it: OPEN (another's lease means "reject" here), or CLOSED */
    c->cur = (struct fleet_view){.state = st.state == CB_CLOSED ? CB_CLOSED : CB_OPEN,
                                 .failure_count = st.failure_count, .opened_at = st.opened_at,
                                 .open_until = st.state == CB_CLOSED ? 0 : it->open_until};
    if (!c->tracked || s->closing)
        return;
    s->st.remote_reports++;
    s->hooks.remote(s->hooks.arg, &st);
}

/* The store and the daemon agree on c, unless a transition of it still
 * waits to be written. */
static void agreed(struct cbd_store *s, const struct fleet_circuit *c)
{
    if (!c->w_pending && c->tracked && !s->closing && s->hooks.synced != NULL)
        s->hooks.synced(s->hooks.arg, c->name, now_s(s));
}

/* The fleet cannot decide: this host probes alone (fail open). */
static void grant_local(struct cbd_store *s, struct fleet_circuit *c, int64_t opened_at, uint32_t lease_s)
{
    if (!c->tracked || s->closing)
        return;
    s->st.host_local_grants++;
    cbd_log(CBD_LOG_DEBUG, "%s: probe of circuit '%s' granted host-local", s->set.log_name, c->name);
    s->hooks.probe_result(s->hooks.arg, c->name, opened_at, true, now_s(s) + lease_s);
}

/* Offline, and a connection attempt failed: every election that waited
 * is granted host-local. */
static void grant_waiting(struct cbd_store *s)
{
    for (size_t i = 0; i < s->count && !s->closing; i++) {
        struct fleet_circuit *c = s->list[i];
        if (c->e_pending && c->busy == FLEET_IDLE) {
            c->e_pending = false;
            grant_local(s, c, c->e_opened_at, c->e_lease_s);
        }
    }
}

/* ---- sending ----------------------------------------------------------------------------- */

static void on_write_answer(void *arg, const struct fleet_answer *a);

/* w (its name, owner and recovery_s filled in here) as c's request in flight. */
static int send_request(struct cbd_store *s, struct fleet_circuit *c, struct fleet_write w)
{
    w.name = c->name;
    w.owner = s->owner;
    w.recovery_s = c->recovery_s;
    c->sent = w;
    c->busy = FLEET_BUSY_WRITE;
    s->requests++;
    int rc = s->ops->write(s->t, &c->sent, on_write_answer, c);
    if (rc < 0) {
        c->busy = FLEET_IDLE;
        s->requests--;
    }
    return rc;
}

static int send_write(struct cbd_store *s, struct fleet_circuit *c, enum fleet_write_kind kind, int64_t opened_at,
                      uint32_t failure_count, int64_t open_until, uint32_t lease_s)
{
    return send_request(s, c, (struct fleet_write){.kind = kind, .opened_at = opened_at, .failure_count = failure_count,
                                                   .open_until = open_until, .lease_s = lease_s});
}

/* fleet_send: the circuit's next request, in the order writes, release,
 * election, read. Work that cannot go now stays queued: the next
 * connection (fleet_came_online) or reconcile sends it. */
static void fleet_send(struct cbd_store *s, struct fleet_circuit *c)
{
    if (c->busy != FLEET_IDLE)
        return;
    if (c->tell_synced) {
        c->tell_synced = false;
        agreed(s, c);
    }
    if (s->link != LINK_UP)
        return;
    if (c->w_pending && !c->w_hold) {
        if (send_write(s, c, c->w_kind, c->w_opened_at, c->w_failure_count, c->w_open_until, 0) == 0)
            c->w_pending = false;
        else
            c->w_hold = s->any_held = true;
        return;
    }
    if (s->closing)
        return;
    if (c->rel_pending) {
        if (send_write(s, c, FLEET_RELEASE, c->rel_opened_at, 0, 0, 0) == 0)
            c->rel_pending = false;
        return;
    }
    if (c->e_pending) {
        bool renew = c->lease_held && c->lease_opened_at == c->e_opened_at;
        if (send_write(s, c, renew ? FLEET_RENEW : FLEET_ELECT, c->e_opened_at, 0, 0, c->e_lease_s) == 0)
            c->e_pending = false;
        return;
    }
    if (c->sh_pending && !c->sh_hold) {
        if (send_request(s, c, (struct fleet_write){.kind = FLEET_SHADOW, .shadow_state = c->sh_state,
                                                    .shadow_since = c->sh_since}) == 0)
            c->sh_pending = false;
        else
            c->sh_hold = s->any_held = true;
        return;
    }
    if (c->r_pending)
        queue_read(s, c);
}

static void on_read_answer(void *arg, const char *name, const struct fleet_answer *a);

/* The queued read the budget lets go now: reads of a restore always go
 * (their cost is a debt the next periods repay), others while this
 * period's budget lasts. */
static struct fleet_circuit *next_queued_read(struct cbd_store *s)
{
    struct fleet_circuit *c = s->qhead[Q_READ];
    if (c == NULL || (s->set.read_budget > 0 && s->budget.balance <= 0 && !c->restoring))
        return NULL;
    return dequeue(s, Q_READ);
}

/* The sweep's next circuit to read this period under a budget: tracked,
 * idle, with no read queued or made this period. NULL when the period's
 * sweep quota is spent or every circuit was looked at. */
static struct fleet_circuit *next_swept(struct cbd_store *s)
{
    while (s->set.read_budget > 0 && s->budget.quota > 0 && s->budget.balance > 0 && s->budget.scanned < s->count) {
        if (s->budget.at >= s->count) {
            s->budget.at = 0;
            s->st.sweeps++;
        }
        struct fleet_circuit *c = s->list[s->budget.at++];
        s->budget.scanned++;
        if (c->tracked && c->busy == FLEET_IDLE && !c->queued[Q_READ] && !sendable_work(c) &&
            c->read_tick != s->budget.tick) {
            s->budget.quota--;
            c->r_pending = true;
            return c;
        }
    }
    return NULL;
}

/* Reads waiting in the queue, then the sweep's, in batches, while the
 * window (and the budget) has room. A queued circuit with a request in
 * flight or work queued is skipped: that request's answer carries its
 * item. */
static void send_reads(struct cbd_store *s)
{
    const char *names[FLEET_READ_BATCH_MAX];
    struct fleet_circuit *batch[FLEET_READ_BATCH_MAX];
    size_t max = s->set.read_batch;
    while (s->link == LINK_UP && !s->closing && s->reads < FLEET_READ_WINDOW) {
        size_t n = 0;
        struct fleet_circuit *c;
        while (n < max && ((c = next_queued_read(s)) != NULL || (c = next_swept(s)) != NULL)) {
            if (!c->r_pending || c->busy != FLEET_IDLE || sendable_work(c)) {
                if (c->busy == FLEET_IDLE && sendable_work(c))
                    mark_dirty(s, c);
                maybe_free(s, c);
                continue;
            }
            c->r_pending = false;
            c->busy = FLEET_BUSY_READ;
            c->read_tick = s->budget.tick;
            s->budget.balance--;
            s->st.reads++;
            batch[n] = c;
            names[n++] = c->name;
        }
        if (n == 0)
            break;
        int taken = s->ops->read(s->t, names, n, on_read_answer, s);
        for (size_t i = taken > 0 ? (size_t)taken : 0; i < n; i++) { /* going down: the next connection reads them */
            batch[i]->busy = FLEET_IDLE;
            s->budget.balance++;
            s->st.reads--;
        }
        if (taken > 0)
            s->reads += (unsigned)taken;
        if (taken < (int)n)
            break;
    }
}

static void restore_begin(struct cbd_store *s);

static bool restore_can_begin(const struct cbd_store *s)
{
    if (s->restore.done == NULL || s->restore.started)
        return false;
    if (s->link == LINK_UP)
        return true;
    for (size_t i = 0; i < s->count; i++) /* nothing to list or read: no need to wait for the store */
        if (s->list[i]->tracked)
            return false;
    return s->ops->list == NULL;
}

static unsigned sendable_writes(const struct cbd_store *s)
{
    unsigned n = 0;
    for (size_t i = 0; i < s->count; i++)
        n += s->list[i]->w_pending && !s->list[i]->w_hold;
    return n;
}

static void on_kick(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    if (restore_can_begin(s))
        restore_begin(s);
    struct fleet_circuit *c;
    while (s->requests < FLEET_REQUESTS_MAX && (c = dequeue(s, Q_SEND)) != NULL) {
        fleet_send(s, c);
        maybe_free(s, c);
    }
    send_reads(s);
    if (s->closing && s->requests == 0 && (s->link != LINK_UP || sendable_writes(s) == 0))
        teardown(s);
}

static void kick(struct cbd_store *s)
{
    if (!s->tearing && !uv_is_active((uv_handle_t *)&s->kick))
        uv_timer_start(&s->kick, on_kick, 0, 0);
}

/* ---- answers ----------------------------------------------------------------------------- */

static void invalid(struct cbd_store *s, struct fleet_circuit *c, const char *why)
{
    s->st.invalid_items++;
    if (c->invalid_logged)
        return;
    c->invalid_logged = true;
    cbd_log(CBD_LOG_WARN, "%s: circuit %s: ignoring its item in %s: %s; the circuit keeps its last state "
            "(counted in invalid_items, not logged again until its item is valid)", s->set.log_name, c->name,
            s->set.where, why);
}

/* The shadow marker an answer shows (a bad one counted, and kept out). */
static void shadow_seen(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_item *it)
{
    if (it->shadow_invalid) {
        s->st.invalid_shadows++;
        cbd_log(CBD_LOG_DEBUG, "%s: circuit %s: ignoring an invalid shadow marker in %s", s->set.log_name, c->name,
                s->set.where);
    }
    c->shadow = it->shadow;
}

/* An opening younger than any TTL its item can have had: its item was
 * lost, not expired. */
static bool young(const struct cbd_store *s, const struct fleet_circuit *c)
{
    return c->cur.opened_at + (int64_t)c->recovery_s + FLEET_TTL_MARGIN_S > now_s(s);
}

/* No item for c: an opening of the daemon that the store lost is written
 * again (true). */
static bool write_back_lost(struct cbd_store *s, struct fleet_circuit *c)
{
    if (c->cur.state == CB_CLOSED || c->w_pending || !young(s, c))
        return false;
    cbd_log(CBD_LOG_INFO, "%s: circuit '%s' is open here but missing in %s: writing it again", s->set.log_name,
            c->name, s->set.where);
    s->st.rewrites++;
    c->w_pending = true;
    c->w_hold = false;
    c->w_kind = FLEET_OPEN;
    c->w_opened_at = c->cur.opened_at;
    c->w_failure_count = c->cur.failure_count;
    c->w_open_until = c->cur.open_until;
    return true;
}

/* The fleet's lease as this host holds it, from an answer showing it (w:
 * its own write, answered consistently; NULL: a read, possibly an older
 * copy, which can show a lease but not its loss). */
static void lease_seen(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w,
                       const struct fleet_item *it)
{
    if (it->exists && it->state == CB_HALF_OPEN && strcmp(it->owner, s->owner) == 0) {
        c->lease_held = true;
        c->lease_opened_at = it->opened_at;
    } else if (w != NULL) {
        c->lease_held = false;
    }
}

/* The answer to an election or renewal, to the daemon. */
static void probe_answer(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w,
                         const struct fleet_answer *a)
{
    const struct fleet_item *it = &a->item;
    bool granted = a->applied && it->opened_at == w->opened_at;
    int64_t lease = granted || (it->exists && it->state == CB_HALF_OPEN) ? it->lease_expiry : 0;
    if (a->applied && !granted) {
        /* a lapsed lease of another opening than asked: nobody here probes it */
        c->rel_pending = true;
        c->rel_opened_at = it->opened_at;
        mark_dirty(s, c);
    }
    if (c->tracked && !s->closing)
        s->hooks.probe_result(s->hooks.arg, c->name, w->opened_at, granted, lease);
}

/* fleet_on_answer: what the store holds for c (w: the write answered, NULL
 * for a read) - agreement, news for the daemon, a grant or a refusal. */
static void fleet_on_answer(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w,
                            const struct fleet_answer *a, bool restoring)
{
    struct fleet_item it = a->item, before = c->known;
    bool was_seen = c->seen;
    if (a->status == FLEET_ABSENT) /* no real item; a shadow marker may be there alone */
        it = (struct fleet_item){.exists = false, .shadow = a->item.shadow, .shadow_invalid = a->item.shadow_invalid};
    if (c->invalid_logged) {
        c->invalid_logged = false;
        cbd_log(CBD_LOG_INFO, "%s: circuit %s: its item in %s is valid again", s->set.log_name, c->name,
                s->set.where);
    }
    c->r_pending = false; /* this answer is as fresh as a read */
    shadow_seen(s, c, &it);
    if (w != NULL && !a->applied)
        s->st.conditions_lost++;
    lease_seen(s, c, w, &it);
    c->known = it;
    c->seen = true;
    if (!it.exists && write_back_lost(s, c))
        mark_dirty(s, c);
    if (!has_work(c) && (restoring ? it.exists : is_news(s, c, &it, was_seen, &before)))
        report(s, c, &it);
    if (w != NULL && (w->kind == FLEET_ELECT || w->kind == FLEET_RENEW))
        probe_answer(s, c, w, a);
    agreed(s, c);
}

/* w got no usable answer (lost: the store went away before answering; the
 * request may have applied): queue it again, or decide here. */
static void requeue(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w, bool lost,
                    bool refused)
{
    switch (w->kind) {
    case FLEET_OPEN:
    case FLEET_CLOSE:
        if (refused) {
            cbd_log(CBD_LOG_ERROR, "%s: %s of circuit '%s' refused by the store as malformed: dropped",
                    s->set.log_name, fleet_write_kind_name(w->kind), c->name);
        } else if (!c->w_pending) { /* unless a newer transition replaced it */
            c->w_pending = c->w_hold = s->any_held = true;
            c->w_kind = w->kind;
            c->w_opened_at = w->opened_at;
            c->w_failure_count = w->failure_count;
            c->w_open_until = w->open_until;
        }
        break;
    case FLEET_RELEASE:
        if (lost && !c->rel_pending) { /* else the lease lapses */
            c->rel_pending = true;
            c->rel_opened_at = w->opened_at;
        }
        break;
    case FLEET_SHADOW:
        if (!refused && !c->sh_pending) { /* unless a newer shadow transition replaced it */
            c->sh_pending = c->sh_hold = s->any_held = true;
            c->sh_state = w->shadow_state;
            c->sh_since = w->shadow_since;
        }
        break;
    case FLEET_ELECT:
    case FLEET_RENEW:
        if (!lost) {
            grant_local(s, c, w->opened_at, w->lease_s);
        } else if (!c->e_pending) { /* the next connection attempt decides */
            c->e_pending = true;
            c->e_opened_at = w->opened_at;
            c->e_lease_s = w->lease_s;
        }
        break;
    }
}

/* A request the store did not answer (w NULL: a read, which the next
 * reconcile or connection does again). */
static void failed(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w,
                   const struct fleet_answer *a)
{
    uint64_t suppressed;
    bool lost = a->err == -ENOTCONN || s->link != LINK_UP;
    s->st.errors++;
    if (!lost && cbd_ratelimit_pass(&s->rl_err, &suppressed))
        cbd_log(CBD_LOG_WARN, "%s: %s of circuit '%s' failed: %s (%" PRIu64 " more suppressed)", s->set.log_name,
                w != NULL ? fleet_write_kind_name(w->kind) : "read", c->name, a->why ? a->why : "?", suppressed);
    if (w != NULL)
        requeue(s, c, w, lost, a->err == -EINVAL);
}

/* The circuit's request is answered: on to its next work. */
static void op_done(struct cbd_store *s, struct fleet_circuit *c)
{
    c->busy = FLEET_IDLE;
    if (sendable_work(c) || c->tell_synced)
        mark_dirty(s, c);
    else if (c->r_pending)
        queue_read(s, c);
    maybe_free(s, c);
    kick(s);
}


/* The store's answer to c's shadow marker: it landed (the item's real
 * state is no news of it: reads tell), or goes again. */
static void shadow_answer(struct cbd_store *s, struct fleet_circuit *c, const struct fleet_write *w,
                          const struct fleet_answer *a)
{
    if (a->status == FLEET_OK || a->status == FLEET_ABSENT) {
        s->st.shadow_writes++;
        shadow_seen(s, c, &a->item);
    } else if (a->status == FLEET_INVALID) {
        invalid(s, c, a->why ? a->why : "?"); /* the marker went in beside what is there */
    } else {
        failed(s, c, w, a);
    }
}

/* The store's answer to c's write. */
static void on_write_answer(void *arg, const struct fleet_answer *a)
{
    struct fleet_circuit *c = arg;
    struct cbd_store *s = c->store;
    struct fleet_write w = c->sent;
    bool restoring = c->restoring;
    s->requests--;
    c->busy = FLEET_IDLE;
    c->restoring = false;
    if (w.kind == FLEET_SHADOW) {
        shadow_answer(s, c, &w, a);
    } else if (a->status == FLEET_OK || a->status == FLEET_ABSENT) {
        fleet_on_answer(s, c, &w, a, restoring);
    } else if (a->status == FLEET_INVALID) {
        invalid(s, c, a->why ? a->why : "?");
        requeue(s, c, &w, false, false);
    } else {
        failed(s, c, &w, a);
    }
    if (restoring)
        restore_read_done(s);
    op_done(s, c);
}

/* The store's answer to one name of a read. */
static void on_read_answer(void *arg, const char *name, const struct fleet_answer *a)
{
    struct cbd_store *s = arg;
    struct fleet_circuit *c = find(s, name);
    if (c == NULL || c->busy != FLEET_BUSY_READ)
        return; /* no read of ours: a transport answering twice */
    bool restoring = c->restoring;
    s->reads--;
    c->busy = FLEET_IDLE;
    c->restoring = false;
    if (a->status == FLEET_OK || a->status == FLEET_ABSENT)
        fleet_on_answer(s, c, NULL, a, restoring);
    else if (a->status == FLEET_INVALID)
        invalid(s, c, a->why ? a->why : "?");
    else
        failed(s, c, NULL, a);
    if (restoring)
        restore_read_done(s);
    op_done(s, c);
}

/* ---- restore ------------------------------------------------------------------------------ */

static void restore_end(struct cbd_store *s, int rc)
{
    void (*done)(void *, int) = s->restore.done;
    if (done == NULL)
        return;
    s->restore.done = NULL;
    s->restore.started = s->restore.listing = false;
    s->restore.left = 0;
    for (size_t i = 0; i < s->count; i++)
        s->list[i]->restoring = false;
    done(s->restore.arg, rc);
}

static void restore_read_done(struct cbd_store *s)
{
    if (s->restore.done != NULL && s->restore.left > 0 && --s->restore.left == 0 && !s->restore.listing)
        restore_end(s, 0);
}

/* Every tracked circuit (the listed ones among them) is read; each valid
 * item found is reported. */
static void restore_read_all(struct cbd_store *s)
{
    for (size_t i = 0; i < s->count; i++) {
        struct fleet_circuit *c = s->list[i];
        if (c->tracked && !c->restoring) {
            c->restoring = true;
            s->restore.left++;
            queue_read(s, c);
        }
    }
    if (s->restore.left == 0)
        restore_end(s, 0);
}

static void restore_each(void *arg, const char *name)
{
    struct cbd_store *s = arg;
    bool fresh;
    if (s->restore.done != NULL && !s->closing)
        get(s, name, &fresh);
}

static void restore_listed(void *arg, int rc)
{
    struct cbd_store *s = arg;
    s->restore.listing = false;
    if (s->restore.done == NULL)
        return;
    if (rc < 0)
        restore_end(s, rc);
    else
        restore_read_all(s);
}

/* fleet_restore's work, from the kick: list what the store holds (if it
 * can), then read every circuit. */
static void restore_begin(struct cbd_store *s)
{
    s->restore.started = true;
    if (s->ops->list == NULL || s->link != LINK_UP) {
        restore_read_all(s);
        return;
    }
    s->restore.listing = true;
    int rc = s->ops->list(s->t, restore_each, restore_listed, s);
    if (rc < 0) {
        s->restore.listing = false;
        restore_end(s, rc);
    }
}

/* ---- the connection ------------------------------------------------------------------------ */

static void set_health(struct cbd_store *s, bool online, const char *why)
{
    uint64_t suppressed;
    if (s->health == (int)online) {
        if (!online && cbd_ratelimit_pass(&s->rl_offline, &suppressed))
            cbd_log(CBD_LOG_WARN, "%s: still offline: %s (%" PRIu64 " more suppressed)", s->set.log_name, why,
                    suppressed);
        return;
    }
    s->health = online;
    if (online)
        cbd_log(CBD_LOG_INFO, "%s: online: %s (%s, owner id '%s')", s->set.log_name, why, s->set.where, s->owner);
    else
        cbd_log(CBD_LOG_WARN, "%s: offline, running host-local and retrying: %s", s->set.log_name, why);
    if (!s->closing)
        s->hooks.health(s->hooks.arg, online, why);
}

static void connect_now(struct cbd_store *s)
{
    s->link = LINK_CONNECTING;
    s->ops->connect(s->t);
}

static void start(struct cbd_store *s)
{
    if (!s->started && !s->closing) {
        s->started = true;
        connect_now(s);
    }
}

static void on_retry(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    if (!s->closing && s->link == LINK_DOWN)
        connect_now(s);
}

static void on_sync_timer(uv_timer_t *t)
{
    fleet_reconcile(t->data);
}

/* fleet_came_online: queued work goes out (writes, releases, elections, in
 * that order per circuit), then every tracked circuit is read. */
static void fleet_came_online(void *arg, const char *why)
{
    struct cbd_store *s = arg;
    s->link = LINK_UP;
    s->attempt = 0;
    uv_timer_stop(&s->retry_timer);
    if (s->closing) { /* the writes close() waits for can go */
        for (size_t i = 0; i < s->count; i++)
            if (s->list[i]->w_pending)
                mark_dirty(s, s->list[i]);
        kick(s);
        return;
    }
    set_health(s, true, why);
    if (s->set.sync_ms > 0)
        uv_timer_start(&s->sync_timer, on_sync_timer, s->set.sync_ms, s->set.sync_ms);
    for (size_t i = 0; i < s->count; i++) {
        struct fleet_circuit *c = s->list[i];
        c->w_hold = c->sh_hold = false;
        if (has_work(c) || c->sh_pending)
            mark_dirty(s, c);
        if (c->tracked && s->restore.done == NULL && s->set.read_budget == 0) /* a restore reads everything; */
            queue_read(s, c);                                                  /* a budget's sweep goes on */
    }
    kick(s);
}

/* fleet_went_offline: host-local until the store is back. */
static void fleet_went_offline(void *arg, int err, const char *why)
{
    struct cbd_store *s = arg;
    bool attempt_failed = s->link != LINK_UP;
    s->link = LINK_DOWN;
    s->st.errors++;
    uv_timer_stop(&s->sync_timer);
    if (s->closing) {
        kick(s); /* nothing more will be written: finish the close */
        return;
    }
    set_health(s, false, why);
    restore_end(s, err < 0 ? err : -EIO);
    if (attempt_failed)
        grant_waiting(s);
    if (!s->set.reconnects && !uv_is_active((uv_handle_t *)&s->retry_timer))
        uv_timer_start(&s->retry_timer, on_retry,
                       cbd_backoff_ms(s->attempt++, s->set.backoff_base_ms, s->set.backoff_cap_ms, random_bits(s)), 0);
}

/* A push notification: read the circuit, if this host uses it. */
static void fleet_on_changed(void *arg, const char *name)
{
    struct cbd_store *s = arg;
    struct fleet_circuit *c = s->closing || cb__name_check(name) < 0 ? NULL : find(s, name);
    if (c != NULL && c->tracked)
        queue_read(s, c);
}

/* ---- the daemon's calls ---------------------------------------------------------------------- */

void fleet_restore(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg)
{
    s->restore.done = done;
    s->restore.arg = arg;
    s->restore.started = false;
    if (s->started && s->link == LINK_DOWN)
        connect_now(s); /* no need to wait out the backoff */
    start(s);
    kick(s);
}

void fleet_track(struct cbd_store *s, const char *name, const cb_config *cfg)
{
    bool fresh;
    struct fleet_circuit *c = s->closing ? NULL : get(s, name, &fresh);
    if (c == NULL)
        return;
    if (cfg != NULL)
        c->recovery_s = cfg->recovery_timeout_ms / 1000 + (cfg->recovery_timeout_ms % 1000 != 0);
    start(s);
    if (fresh)
        queue_read(s, c); /* a circuit open in the fleet opens here at registration */
}

void fleet_untrack(struct cbd_store *s, const char *name)
{
    struct fleet_circuit *c = cb__name_check(name) == 0 ? find(s, name) : NULL;
    if (c == NULL)
        return;
    c->tracked = false;
    c->e_pending = c->r_pending = c->sh_pending = false;
    maybe_free(s, c);
}

/* Does the store hold what the write would write, as last seen? */
static bool already_there(const struct fleet_circuit *c, enum fleet_write_kind kind, int64_t opened_at)
{
    const struct fleet_item *k = &c->known;
    if (!c->seen || c->busy != FLEET_IDLE || c->w_pending)
        return false;
    if (kind == FLEET_CLOSE)
        return !k->exists || k->state == CB_CLOSED;
    return k->exists && k->state == CB_OPEN && k->opened_at == opened_at && !has_owner(k);
}

/* fleet_transition: write-through of a local transition, coalesced with
 * any still waiting. HALF_OPEN needs no write: the election wrote it (or
 * granted it host-local). */
void fleet_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at)
{
    bool fresh;
    struct fleet_circuit *c = s->closing ? NULL : get(s, st->name, &fresh);
    if (c == NULL)
        return;
    start(s);
    if (st->shadow) { /* a trial: its marker only; cur, the real state as the store knows it, stays */
        c->sh_pending = true;
        c->sh_hold = false;
        c->sh_state = st->state;
        c->sh_since = now_s(s);
        mark_dirty(s, c);
        return;
    }
    bool closed = st->state == CB_CLOSED;
    /* Whole seconds rounded up: a host reading it never probes early. */
    int64_t until = st->state == CB_OPEN && st->open_until_ns > 0 ? (st->open_until_ns + NS_PER_S - 1) / NS_PER_S : 0;
    c->cur = (struct fleet_view){.state = st->state, .failure_count = closed ? 0 : st->failure_count,
                                 .opened_at = closed ? 0 : st->opened_at, .open_until = until};
    if (st->state == CB_HALF_OPEN)
        return;
    c->e_pending = false; /* a question about an opening the daemon has left */
    enum fleet_write_kind kind = closed ? FLEET_CLOSE : FLEET_OPEN;
    int64_t opening = closed ? prev_opened_at : st->opened_at;
    if (already_there(c, kind, opening)) {
        c->tell_synced = true;
    } else {
        c->w_pending = true;
        c->w_hold = false;
        c->w_kind = kind;
        c->w_opened_at = opening;
        c->w_failure_count = closed ? 0 : st->failure_count;
        c->w_open_until = until;
    }
    mark_dirty(s, c);
}

/* fleet_try_probe: the daemon wants the probe lease of (name, opened_at):
 * RENEW when this host holds it, else ELECT (fleet_send decides). */
void fleet_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s)
{
    bool fresh;
    struct fleet_circuit *c = s->closing ? NULL : get(s, name, &fresh);
    if (c == NULL)
        return;
    start(s);
    c->e_pending = true;
    c->e_opened_at = opened_at;
    c->e_lease_s = lease_s > 0 ? lease_s : c->recovery_s;
    mark_dirty(s, c);
}

/* fleet_release: the daemon gives the lease of (name, opened_at) back
 * without a result and is OPEN on that opening again. */
void fleet_release(struct cbd_store *s, const char *name, int64_t opened_at)
{
    bool fresh;
    struct fleet_circuit *c = s->closing ? NULL : get(s, name, &fresh);
    if (c == NULL)
        return;
    start(s);
    c->cur = (struct fleet_view){.state = CB_OPEN, .failure_count = c->cur.failure_count, .opened_at = opened_at,
                                 .open_until = c->cur.opened_at == opened_at ? c->cur.open_until : 0};
    c->e_pending = false;
    c->rel_pending = true;
    c->rel_opened_at = opened_at;
    mark_dirty(s, c);
}

/* A circuit the daemon used since the last period: read it first. */
static void budget_busy(void *arg, const char *name)
{
    struct cbd_store *s = arg;
    struct fleet_circuit *c = cb__name_check(name) == 0 ? find(s, name) : NULL;
    if (c != NULL && c->tracked) {
        s->st.busy_reads++;
        queue_read(s, c);
    }
}

/* Reads a period of the budget allows: budget * sync_ms (a second without
 * a sync timer, when only sync() calls make periods), at least 1. */
static int64_t budget_per_period(const struct cbd_store *s)
{
    int64_t per = (int64_t)s->set.read_budget * (s->set.sync_ms > 0 ? s->set.sync_ms : 1000) / 1000;
    return per > 0 ? per : 1;
}

/* A period of the read budget begins (every sync): the period's reads
 * (budget * period; a debt left by a restore first paid), the circuits
 * the daemon used since the last period queued first, and what they leave
 * of it, less a quarter kept for reads that come during the period (a
 * registration, a push notification), for the sweep. */
static void budget_tick(struct cbd_store *s)
{
    int64_t per = budget_per_period(s);
    s->budget.tick++;
    s->budget.balance = s->budget.balance + per < per ? s->budget.balance + per : per;
    s->budget.scanned = 0;
    if (s->hooks.used != NULL)
        s->hooks.used(s->hooks.arg, &s->budget.used_mark, budget_busy, s);
    int64_t left = s->budget.balance - (int64_t)s->qlen[Q_READ];
    s->budget.quota = left > 0 ? (size_t)(left - left / 4) : 0;
    kick(s);
}

/* fleet_reconcile: read every tracked circuit (under a budget: the busy
 * ones and a part of the sweep), and send again the writes that failed. */
void fleet_reconcile(struct cbd_store *s)
{
    if (s->closing)
        return;
    start(s);
    if (s->link != LINK_UP)
        return;
    for (size_t i = 0; (s->any_held || s->set.read_budget == 0) && i < s->count; i++) {
        struct fleet_circuit *c = s->list[i];
        c->w_hold = c->sh_hold = false;
        if (has_work(c) || c->sh_pending)
            mark_dirty(s, c);
        if (c->tracked && s->set.read_budget == 0)
            queue_read(s, c);
    }
    s->any_held = false;
    if (s->set.read_budget > 0)
        budget_tick(s);
}

/* ---- create, close, stats -------------------------------------------------------------------- */

static void free_store(struct cbd_store *s)
{
    for (size_t i = 0; i < s->count; i++)
        free(s->list[i]);
    free(s->list);
    free(s->buckets);
    free(s);
}

static void on_part_closed(void *arg)
{
    struct cbd_store *s = arg;
    if (--s->close_pending > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *done_arg = s->close_arg;
    free_store(s);
    if (done != NULL)
        done(done_arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    on_part_closed(h->data);
}

static bool writing(const struct fleet_circuit *c)
{
    return c->w_pending ||
           (c->busy == FLEET_BUSY_WRITE && (c->sent.kind == FLEET_OPEN || c->sent.kind == FLEET_CLOSE));
}

static void teardown(struct cbd_store *s)
{
    if (s->tearing)
        return;
    s->tearing = true;
    unsigned lost = 0;
    for (size_t i = 0; i < s->count; i++)
        lost += writing(s->list[i]);
    if (lost > 0)
        cbd_log(CBD_LOG_WARN, "%s: closing with %u transition(s) not written to %s; the fleet keeps its last "
                "state for them", s->set.log_name, lost, s->set.where);
    uv_timer_t *timers[] = {&s->kick, &s->sync_timer, &s->retry_timer, &s->close_timer};
    s->close_pending = 1 + sizeof timers / sizeof timers[0];
    s->ops->close(s->t, on_part_closed, s);
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        uv_timer_stop(timers[i]);
        uv_close((uv_handle_t *)timers[i], on_timer_closed);
    }
}

static void on_close_deadline(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    cbd_log(CBD_LOG_WARN, "%s: %u request(s) still unanswered at close; cancelling them", s->set.log_name,
            s->requests);
    teardown(s);
}

/* Flush the queued transitions while the store is reachable (bounded by
 * close_wait_ms), then release everything. No hook runs once close() is
 * called. */
void fleet_close(struct cbd_store *s, void (*done)(void *arg), void *arg)
{
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->sync_timer);
    uv_timer_stop(&s->retry_timer);
    restore_end(s, -ECANCELED);
    while (dequeue(s, Q_READ) != NULL) { /* reads are of no use any more */
    }
    if (s->link != LINK_UP || (s->requests == 0 && sendable_writes(s) == 0)) {
        teardown(s);
        return;
    }
    for (size_t i = 0; i < s->count; i++)
        if (s->list[i]->w_pending)
            mark_dirty(s, s->list[i]);
    uv_timer_start(&s->close_timer, on_close_deadline, s->set.close_wait_ms, 0);
    kick(s);
}

void fleet_stats(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value), void *arg)
{
    uint64_t circuits = 0, queued = 0;
    for (size_t i = 0; i < s->count; i++) {
        circuits += s->list[i]->tracked;
        queued += writing(s->list[i]);
    }
    emit(arg, "circuits", circuits);
    emit(arg, "queued", queued);
    emit(arg, "conditions_lost", s->st.conditions_lost);
    emit(arg, "invalid_items", s->st.invalid_items);
    emit(arg, "errors", s->st.errors);
    emit(arg, "remote_reports", s->st.remote_reports);
    emit(arg, "host_local_grants", s->st.host_local_grants);
    emit(arg, "rewrites", s->st.rewrites);
    emit(arg, "reads", s->st.reads);
    emit(arg, "busy_reads", s->st.busy_reads);
    emit(arg, "sweeps", s->st.sweeps);
    emit(arg, "shadow_writes", s->st.shadow_writes);
    emit(arg, "invalid_shadows", s->st.invalid_shadows);
    s->ops->stats(s->t, emit, arg);
}

int fleet_shadow_of(const struct cbd_store *s, const char *name, struct cbd_store_shadow *out)
{
    const struct fleet_circuit *c = cb__name_check(name) == 0 ? find(s, name) : NULL;
    if (c == NULL || !c->tracked || c->shadow.since == 0)
        return 0;
    *out = (struct cbd_store_shadow){.state = c->shadow.state, .since = c->shadow.since};
    snprintf(out->host, sizeof out->host, "%s", c->shadow.host);
    return 1;
}

int fleet_store_create(const struct fleet_transport_ops *ops, struct cbd_store **out, const char *uri,
                       const struct cbd_store_hooks *hooks, const char **err)
{
    static char create_error[512]; /* *err: the loop thread reads it at once */
    char owner[FLEET_OWNER_MAX + 1];
    const char *instance = hooks->instance, *env = getenv("CB_INSTANCE");
    struct cbd_store *s = calloc(1, sizeof *s);
    if (s == NULL || !(s->buckets = calloc(64, sizeof *s->buckets)) || !(s->list = calloc(64, sizeof *s->list))) {
        if (s != NULL)
            free(s->buckets);
        free(s);
        *err = "out of memory creating the store";
        return -ENOMEM;
    }
    s->nbuckets = s->cap = 64;
    s->ops = ops;
    s->hooks = *hooks;
    s->health = -1;
    if (instance == NULL || cb__instance_check(instance) < 0)
        instance = env != NULL && cb__instance_check(env) == 0 ? env : "default";
    fleet_owner_id(owner, sizeof owner, instance);
    struct fleet_transport_cbs cbs = {.arg = s, .up = fleet_came_online, .down = fleet_went_offline,
                                      .changed = fleet_on_changed};
    int rc = ops->create(&s->t, hooks->loop, uri, owner, &cbs, create_error, sizeof create_error);
    if (rc < 0) {
        free_store(s);
        *err = create_error;
        return rc;
    }
    s->owner = ops->owner(s->t);
    ops->settings(s->t, &s->set);
    if (s->set.read_batch == 0 || s->set.read_batch > FLEET_READ_BATCH_MAX)
        s->set.read_batch = FLEET_READ_BATCH_MAX;
    s->budget.balance = budget_per_period(s); /* the first period: registrations read at once */
    s->rng = ((uint64_t)arc4random() << 32 | arc4random()) | 1;
    uv_timer_t *timers[] = {&s->kick, &s->sync_timer, &s->retry_timer, &s->close_timer};
    for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++) {
        uv_timer_init(hooks->loop, timers[i]);
        timers[i]->data = s;
    }
    *out = s;
    return 0;
}
