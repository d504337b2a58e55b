/*
 * circuit.c - circuit handles: lookup, registration with the daemon, the
 * per-client handle cache, rebinding after a remap, and cb_info_get().
 *
 * A handle is found by name once and then used for every call, so lookups
 * are allowed to be slow-ish: they take the client lock and walk a chained
 * hash table. A name already in the segment is found without the daemon
 * (the index is lock-free, see segment.h); only a new name costs a round
 * trip on the client's control connection. That connection is opened on
 * first need, shared by all threads under the client lock, and reopened
 * once if the daemon closed it (a restarted daemon resets it).
 *
 * The daemon answers a registration with a slot; we do not take its word
 * for it: the record at that slot in *our* mapping must carry the name. A
 * mismatch means our mapping is older than the daemon's segment, so we
 * remap and look again.
 *
 * cb_info_get() is the seqlock read segment.c shares with cbctl
 * (cb__seg_snapshot): bounded retries, then -EAGAIN rather than spinning
 * without bound while the daemon keeps rewriting the record.
 */
#define _GNU_SOURCE
#include "client.h"
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Sends req on the control connection and waits for the reply; connects on
 * first use and reconnects once if the daemon closed the connection. */
static int ctl_request(cb_client *cl, const msgpack_sbuffer *req, char **buf, msgpack_unpacked *res,
                       msgpack_object **reply)
{
    const char *path = atomic_load_explicit(&cl->map, memory_order_relaxed)->socket_path;
    int rc = -ECONNRESET;
    for (int attempt = 0; attempt < 2 && (rc == -EPIPE || rc == -ECONNRESET); attempt++) {
        if (cl->ctl_fd < 0) {
            int fd = cb__unix_connect(path);
            if (fd < 0)
                return fd;
            cl->ctl_fd = fd;
        }
        rc = cb__request(cl->ctl_fd, req->data, req->size, CB__REQUEST_TIMEOUT_MS, buf, res, reply);
        if (rc < 0) { /* a timed-out or broken exchange leaves the stream out of step */
            close(cl->ctl_fd);
            cl->ctl_fd = -1;
        }
    }
    return rc;
}

/* 0 for {"ok":true}, the daemon's -errno for {"ok":false}, else
 * CB_EPROTO_DAEMON. */
static int reply_status(const msgpack_object *reply)
{
    int ok;
    int64_t err;
    if (cb__mp_get_bool(reply, "ok", &ok) < 0)
        return CB_EPROTO_DAEMON;
    if (ok)
        return 0;
    if (cb__mp_get_i64(reply, "error", &err) < 0 || err >= 0 || err < -4095)
        return CB_EPROTO_DAEMON;
    return (int)err;
}

static void pack_register(msgpack_packer *pk, const char *name, const cb_config *cfg)
{
    msgpack_pack_map(pk, cfg != NULL ? 3 : 2);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_str(pk, "name", name);
    if (cfg == NULL)
        return;
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, 5);
    cb__mp_kv_u64(pk, "failure_threshold", cfg->failure_threshold);
    cb__mp_kv_u64(pk, "success_threshold", cfg->success_threshold);
    cb__mp_kv_u64(pk, "half_open_max_probes", cfg->half_open_max_probes);
    cb__mp_kv_u64(pk, "recovery_timeout_ms", cfg->recovery_timeout_ms);
    cb__mp_kv_u64(pk, "probe_lease_ms", cfg->probe_lease_ms);
}

/* Asks the daemon to find or create name; its slot into *slot. */
static int register_circuit(cb_client *cl, const char *name, const cb_config *cfg, uint64_t *slot)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    pack_register(&pk, name, cfg);
    char *buf = NULL;
    msgpack_unpacked res;
    msgpack_object *reply;
    int rc = sb.data != NULL ? ctl_request(cl, &sb, &buf, &res, &reply) : -ENOMEM;
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        return rc;
    rc = reply_status(reply);
    if (rc == 0 && cb__mp_get_u64(reply, "slot", slot) < 0)
        rc = CB_EPROTO_DAEMON;
    msgpack_unpacked_destroy(&res);
    free(buf);
    return rc;
}

/* Where a handle points: a state word and the incarnation it belongs to. */
struct binding {
    const uint64_t *word;
    uint32_t expect;
};

/* The binding of name in the current mapping, registering the circuit if it
 * is absent. -ESTALE: the daemon's slot is not this name in our mapping. */
static int resolve(cb_client *cl, const char *name, uint64_t hash, const cb_config *cfg, struct binding *b)
{
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    size_t len = strlen(name);
    uint32_t incarnation;
    int found = cb__seg_lookup(m->hdr, name, len, hash, &incarnation);
    if (found == -ENOENT) {
        uint64_t slot;
        int rc = register_circuit(cl, name, cfg, &slot);
        if (rc < 0)
            return rc;
        /* The daemon's word is not taken on trust: the name must be in our
         * mapping's index, at that slot. */
        found = cb__seg_lookup(m->hdr, name, len, hash, &incarnation);
        if (found >= 0 && (uint64_t)found != slot)
            return -ESTALE;
    }
    if (found == -ENOENT)
        return -ESTALE;
    if (found < 0)
        return -EPROTO; /* an index slot names a record past capacity: not a sane segment */
    b->word = (const uint64_t *)&CB_SEG_RECORD(m->hdr, found)->state_word;
    b->expect = incarnation << CB_SEG_INCARNATION_SHIFT;
    return 0;
}

/* Points c at b: pointer first, then expect, both release; cb_allow loads
 * them in the other order (see cb.h), so it never pairs a new expect with
 * an old pointer. Release also pairs with the acquire in cb__word_ptr():
 * the mapping behind the word was published before. */
static void bind_handle(cb_circuit *c, const struct binding *b)
{
    __atomic_store_n(&c->head.state_word, b->word, __ATOMIC_RELEASE);
    __atomic_store_n(&c->head.expect, b->expect, __ATOMIC_RELEASE);
}

int cb__circuits_rebind(cb_client *cl)
{
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    int first_err = 0;
    uint32_t slot;
    for (size_t i = 0; i < cl->nbuckets; i++) {
        for (struct cb_circuit *c = cl->buckets[i]; c != NULL; c = c->next) {
            struct binding b;
            if (c->head.state_word == &cb__bypass_word || (cb__map_holds(m, c->head.state_word, &slot) &&
                                                           cb__circuit_bound(c)))
                continue;
            int rc = resolve(cl, c->name, c->hash, c->has_cfg ? &c->cfg : NULL, &b);
            if (rc == 0)
                bind_handle(c, &b);
            else if (first_err == 0)
                first_err = rc == -ESTALE ? CB_EPROTO_DAEMON : rc;
        }
    }
    return first_err;
}

bool cb__circuits_retired(cb_client *cl, const struct cb__map *m)
{
    uint32_t slot;
    for (size_t i = 0; i < cl->nbuckets; i++) {
        for (struct cb_circuit *c = cl->buckets[i]; c != NULL; c = c->next) {
            if (!cb__map_holds(m, c->head.state_word, &slot))
                continue;
            /* Acquire pairs with the release store by which a newer daemon
             * retires the record. */
            uint64_t w = __atomic_load_n(c->head.state_word, __ATOMIC_ACQUIRE);
            if (cb_seg_word_flags(w) & CB_SEG_F_RETIRED)
                return true;
        }
    }
    return false;
}

/* resolve(), remapping once if the daemon's segment is newer than ours. */
static int resolve_current(cb_client *cl, const char *name, uint64_t hash, const cb_config *cfg,
                           struct binding *b)
{
    int rc = resolve(cl, name, hash, cfg, b);
    if (rc == -ESTALE && cb__client_refresh_locked(cl, CB__WAIT_READY_MS) == 0)
        rc = resolve(cl, name, hash, cfg, b);
    return rc == -ESTALE ? CB_EPROTO_DAEMON : rc;
}

bool cb__circuit_bound(const cb_circuit *c)
{
    /* Acquire pairs with the daemon's release store of the word. */
    uint64_t w = __atomic_load_n(cb__word_ptr(c), __ATOMIC_ACQUIRE);
    return !(cb_seg_word_flags(w) & CB_SEG_F_REMOVED) &&
           cb_seg_word_incarnation(w) << CB_SEG_INCARNATION_SHIFT == __atomic_load_n(&c->head.expect, __ATOMIC_ACQUIRE);
}

int cb__circuit_rebind_lockfree(cb_circuit *c)
{
    cb_client *cl = c->client;
    if (pthread_mutex_trylock(&cl->lock) != 0)
        return -EBUSY;
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    uint32_t incarnation;
    int rc = 0;
    if (!cb__circuit_bound(c)) {
        int found = cb__seg_lookup(m->hdr, c->name, strlen(c->name), c->hash, &incarnation);
        if (found >= 0) {
            struct binding b = {(const uint64_t *)&CB_SEG_RECORD(m->hdr, found)->state_word,
                                incarnation << CB_SEG_INCARNATION_SHIFT};
            bind_handle(c, &b);
        } else {
            rc = found == -ENOENT ? -ENOENT : -EPROTO;
        }
    }
    pthread_mutex_unlock(&cl->lock);
    return rc;
}

static int circuit_new(cb_client *cl, const char *name, uint64_t hash, const cb_config *cfg, cb_circuit **out)
{
    struct binding b = {&cb__bypass_word, 0};
    int rc = cl->bypass ? 0 : resolve_current(cl, name, hash, cfg, &b);
    if (rc < 0)
        return rc;
    cb_circuit *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->head.state_word = b.word;
    c->head.expect = b.expect;
    c->client = cl;
    c->hash = hash;
    c->has_cfg = cfg != NULL;
    if (cfg != NULL)
        c->cfg = *cfg;
    strcpy(c->name, name);
    rc = cache_insert(cl, c);
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
    pthread_mutex_unlock(&cl->lock);
    if (rc == 0)
        *out = c;
    return rc;
}

int cb_info_get(cb_circuit *c, cb_info *info)
{
    if (c == NULL || info == NULL)
        return -EINVAL;
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
