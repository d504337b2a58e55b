/*
 * circuit.c - circuit handles: lookup, registration with the daemon, the
 * per-client handle cache, moving handles to a new segment or slot, and
 * cb_info_get().
 *
 * A handle is found by name once and then used for every call, so lookups
 * are allowed to be slow-ish: they take the client lock and walk a chained
 * hash table. A name already in the segment is found without the daemon
 * (the index is lock-free, see segment.h); only a new name costs a
 * registration on the client's control connection (ctl.c), which
 * cb_circuit_get() waits for, up to 2 s, with the client lock released.
 *
 * The daemon answers a registration with a slot; we do not take its word
 * for it: the record at that slot in *our* mapping must carry the name. A
 * mismatch means our mapping is older than the daemon's segment, so we
 * remap and look again.
 *
 * Moving. A handle points at one record of one mapping. When its word says
 * RETIRED (the segment was replaced), REMOVED or another incarnation (the
 * circuit was removed, the slot maybe reused), cb_allow's slow path calls
 * cb__circuit_recover(), which never waits: with trylock it remaps if the
 * new segment is ready, rebinds the handle by the current mapping's index,
 * and, if the name is not there, queues its registration (with the config
 * it was created with) and reads whatever answers have arrived; an answer
 * binds the handle. Until then the caller decides on what the handle
 * points at (lanes.c): a retired record's last state under the staleness
 * policy, or BYPASS for a removed circuit. The same recovery runs from
 * cb_info_get(), and cb_status() runs it for every handle.
 *
 * cb_info_get() is the seqlock read segment.c shares with cbctl
 * (cb__seg_snapshot): bounded retries, then -EAGAIN rather than spinning
 * without bound while the daemon keeps rewriting the record.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CACHE_MIN_BUCKETS 16

static struct cb_circuit *cache_find(cb_client *cl, const char *name, uint64_t hash)
{
    if (cl->nbuckets == 0)
        return NULL;
    for (struct cb_circuit *c = cl->buckets[hash & (cl->nbuckets - 1)]; c != NULL; c = c->next) {
        if (c->hash == hash && strcmp(c->name, name) == 0)
            return c;
    }
    return NULL;
}

/* Doubles the table when it is full: chains stay ~1 long. */
static int cache_grow(cb_client *cl)
{
    size_t n = cl->nbuckets ? cl->nbuckets * 2 : CACHE_MIN_BUCKETS;
    struct cb_circuit **b = calloc(n, sizeof *b);
    if (b == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < cl->nbuckets; i++) {
        struct cb_circuit *c = cl->buckets[i], *next;
        for (; c != NULL; c = next) {
            next = c->next;
            c->next = b[c->hash & (n - 1)];
            b[c->hash & (n - 1)] = c;
        }
    }
    free(cl->buckets);
    cl->buckets = b;
    cl->nbuckets = n;
    return 0;
}

static int cache_insert(cb_client *cl, struct cb_circuit *c)
{
    if (cl->ncircuits >= cl->nbuckets) {
        int rc = cache_grow(cl);
        if (rc < 0)
            return rc;
    }
    struct cb_circuit **head = &cl->buckets[c->hash & (cl->nbuckets - 1)];
    c->next = *head;
    *head = c;
    cl->ncircuits++;
    return 0;
}

void cb__circuits_free(cb_client *cl)
{
    for (size_t i = 0; i < cl->nbuckets; i++) {
        struct cb_circuit *c = cl->buckets[i], *next;
        for (; c != NULL; c = next) {
            next = c->next;
            free(c);
        }
    }
    free(cl->buckets);
    cl->buckets = NULL;
    cl->nbuckets = cl->ncircuits = 0;
}

/* Where a handle points: a state word and the incarnation it belongs to. */
struct binding {
    const uint64_t *word;
    uint32_t expect;
};

/* Points c at b: pointer first, then expect, both release; cb_allow loads
 * them in the other order (see cb.h), so it never pairs a new expect with
 * an old pointer. Release also pairs with the acquire in cb__word_ptr():
 * the mapping behind the word was published before. Client lock held: two
 * threads never interleave their stores. */
static void bind_handle(cb_circuit *c, const struct binding *b)
{
    __atomic_store_n(&c->head.state_word, b->word, __ATOMIC_RELEASE);
    __atomic_store_n(&c->head.expect, b->expect, __ATOMIC_RELEASE);
}

/* Where c's name is in the current mapping: its slot (and *b), -ENOENT,
 * -ESTALE (the mapping is retired: a newer segment holds the circuit) or
 * -EPROTO (an index slot names a record past capacity: not a sane segment). */
static int lookup(cb_client *cl, const cb_circuit *c, struct binding *b)
{
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    uint32_t incarnation;
    int found = cb__seg_lookup(m->hdr, c->name, strlen(c->name), c->hash, &incarnation);
    if (found < 0)
        return found == -ENOENT ? -ENOENT : -EPROTO;
    const struct cb_seg_record *r = CB_SEG_RECORD(m->hdr, found);
    /* Acquire pairs with the release store by which a newer daemon retires the record. */
    if (cb_seg_word_flags(atomic_load_explicit((_Atomic uint64_t *)&r->state_word, memory_order_acquire)) &
        CB_SEG_F_RETIRED)
        return -ESTALE;
    b->word = (const uint64_t *)&r->state_word;
    b->expect = incarnation << CB_SEG_INCARNATION_SHIFT;
    return found;
}

/* True if c points at a live record of the current mapping, of the
 * incarnation it expects. */
static bool bound_in_current(cb_client *cl, const cb_circuit *c)
{
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    const uint64_t *p = cb__word_ptr(c);
    uint32_t slot;
    /* Acquire pairs with the daemon's release store of the word. */
    return cb__map_holds(m, p, &slot) &&
           cb__word_live(__atomic_load_n(p, __ATOMIC_ACQUIRE), __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE));
}

/* Binds c in the current mapping if its name is there, else queues its
 * registration (not before its retry time: the hot path must not resend
 * what the daemon refused a moment ago). */
static void rebind(cb_client *cl, cb_circuit *c, int64_t now_ns)
{
    struct binding b;
    int found = lookup(cl, c, &b);
    if (found >= 0)
        bind_handle(c, &b);
    else if (found == -ENOENT && now_ns >= c->reg_retry_ns &&
             !cb__map_retired(atomic_load_explicit(&cl->map, memory_order_relaxed)))
        cb__ctl_register(cl, c, true);
}

/* A handle a caller has: bound at least once (never-bound ones are those
 * whose cb_circuit_get failed) and not a bypass client's. */
static bool handed_out(const cb_circuit *c)
{
    return c->head.state_word != &cb__unbound_word && c->head.state_word != &cb__bypass_word;
}

void cb__circuits_rebind(cb_client *cl)
{
    int64_t now = cb__clock_ns(CLOCK_MONOTONIC_COARSE);
    for (size_t i = 0; i < cl->nbuckets; i++) {
        for (struct cb_circuit *c = cl->buckets[i]; c != NULL; c = c->next) {
            if (handed_out(c) && !bound_in_current(cl, c))
                rebind(cl, c, now);
        }
    }
}

void cb__circuit_registered(cb_circuit *c, int rc, uint64_t slot)
{
    cb_client *cl = c->client;
    int64_t now = cb__clock_ns(CLOCK_MONOTONIC_COARSE);
    struct binding b;
    if (rc == 0) {
        int found = lookup(cl, c, &b);
        if (found >= 0 && (uint64_t)found == slot) {
            bind_handle(c, &b);
        } else { /* the daemon's segment is not the one we map */
            rc = -ESTALE;
            cl->check_replaced = true;
        }
    }
    c->reg_err = rc;
    if (rc < 0)
        c->reg_retry_ns = now + (rc == -ESTALE ? CB__RETRY_NS : CB__REG_RETRY_NS);
}

bool cb__circuit_recover(cb_circuit *c, bool always_read)
{
    cb_client *cl = c->client;
    if (pthread_mutex_trylock(&cl->lock) != 0)
        return false; /* someone is at it: decide on what we have */
    int saved_errno = errno; /* libcb leaves errno as the caller had it (cb.h) */
    int64_t now = cb__clock_ns(CLOCK_MONOTONIC_COARSE);
    /* The daemon retires every record, the first one first: a handle that
     * saw its own record retired finds the first one retired too. */
    if (cl->check_replaced || cb__map_retired(atomic_load_explicit(&cl->map, memory_order_relaxed)))
        cb__client_remap_try(cl, now);
    if (!bound_in_current(cl, c))
        rebind(cl, c, now);
    if (always_read || cl->ctl.pumped_ns != now) {
        cl->ctl.pumped_ns = now;
        cb__ctl_pump(cl);
    }
    bool bound = bound_in_current(cl, c);
    pthread_mutex_unlock(&cl->lock);
    errno = saved_errno;
    return bound;
}

/* Binds a handle nobody has yet: by the index, or by registering the name
 * and waiting up to 2 s for the answer (client lock released meanwhile).
 * A segment newer than ours is mapped (waiting for it too) and looked at
 * once more. */
static int bind_new(cb_client *cl, cb_circuit *c)
{
    int64_t deadline = cb__clock_ns(CLOCK_MONOTONIC) + (int64_t)CB__REQUEST_TIMEOUT_MS * 1000000;
    for (bool refreshed = false;; refreshed = true) {
        struct binding b;
        int rc = lookup(cl, c, &b);
        if (rc >= 0) {
            bind_handle(c, &b);
            return 0;
        }
        if (rc == -ENOENT) {
            uint32_t answers = c->reg_answers;
            rc = cb__ctl_register(cl, c, false);
            if (rc == 0 || rc == -EAGAIN)
                rc = cb__ctl_wait(cl, c, answers, deadline); /* 0: answered and bound */
        }
        if (rc != -ESTALE)
            return rc;
        if (refreshed)
            return CB_EPROTO_DAEMON; /* the daemon names slots that are not this name in its segment */
        cl->check_replaced = true;
        if ((rc = cb__client_refresh_locked(cl, CB__WAIT_READY_MS)) < 0 && rc != -EAGAIN)
            return rc;
    }
}

static int circuit_new(cb_client *cl, const char *name, uint64_t hash, const cb_config *cfg, cb_circuit **out)
{
    cb_circuit *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->head.state_word = cl->bypass ? &cb__bypass_word : &cb__unbound_word;
    c->client = cl;
    c->hash = hash;
    c->has_cfg = cfg != NULL;
    if (cfg != NULL)
        c->cfg = *cfg;
    strcpy(c->name, name);
    int rc = cache_insert(cl, c);
    if (rc < 0) {
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int cb_circuit_get(cb_client *cl, const char *name, const cb_config *cfg, cb_circuit **out)
{
    if (cl == NULL || out == NULL || cb__name_check(name) < 0 || (cfg != NULL && cb__config_check(cfg, NULL) < 0))
        return -EINVAL;
    uint64_t hash = cb__name_hash(name, strlen(name));
    pthread_mutex_lock(&cl->lock);
    cb_circuit *c = cache_find(cl, name, hash);
    int rc = c != NULL ? 0 : circuit_new(cl, name, hash, cfg, &c);
    /* A handle another thread is registering, or whose registration failed
     * before, is bound (or its registration waited for) here. */
    if (rc == 0 && c->head.state_word == &cb__unbound_word)
        rc = bind_new(cl, c);
    pthread_mutex_unlock(&cl->lock);
    if (rc == 0)
        *out = c;
    return rc;
}

int cb_info_get(cb_circuit *c, cb_info *info)
{
    if (c == NULL || info == NULL)
        return -EINVAL;
    /* Acquire pairs with the daemon's release store of the word. */
    if (c->head.state_word != &cb__bypass_word &&
        !cb__word_live(__atomic_load_n(cb__word_ptr(c), __ATOMIC_ACQUIRE), __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE)))
        cb__circuit_recover(c, true); /* moved, removed: rebind if we can, without waiting */
    uint32_t slot;
    const struct cb__map *m = cb__map_of(c->client, cb__word_ptr(c), &slot);
    if (m == NULL || c->head.state_word == &cb__bypass_word) { /* a bypass handle */
        memset(info, 0, sizeof *info);
        strcpy(info->name, c->name);
        info->state = CB_CLOSED;
        info->disabled = true;
        if (c->has_cfg)
            info->config = c->cfg;
        else
            cb_config_init(&info->config);
        return 0;
    }
    struct cb_seg_snapshot snap;
    int rc = cb__seg_snapshot(m->hdr, slot, &snap);
    if (rc == 0 && snap.incarnation << CB_SEG_INCARNATION_SHIFT != __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE))
        rc = -ENOENT; /* the slot holds another circuit now: this one was removed */
    if (rc == 0)
        *info = snap.info;
    return rc;
}
