/*
 * tsup_store.h - a store driven through its cbd_store_ops by a test that
 * plays the daemon: what the store's hooks were told, recorded, and the
 * store's counters as `cbctl stats` shows them.
 *
 * Header-only (static functions), for the tests that link the daemon's
 * code (cbd_core): test_fleet, test_store_redis, test_store_dynamodb.
 */
#ifndef TSUP_STORE_H
#define TSUP_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "segment.h"
#include "store.h"

#define TSUP_STORE_UNUSED __attribute__((unused))
#define TSUP_STORE_RING 256 /* hook calls kept, the latest ones */

/* What restore() and close() said (their done callbacks take one). */
struct tsup_store_done {
    bool restored, closed;
    int restore_rc;
};

static TSUP_STORE_UNUSED void tsup_store_restored(void *arg, int rc)
{
    struct tsup_store_done *d = arg;
    d->restored = true;
    d->restore_rc = rc;
}

static TSUP_STORE_UNUSED void tsup_store_closed(void *arg)
{
    ((struct tsup_store_done *)arg)->closed = true;
}

struct tsup_probe {
    char name[CB_NAME_MAX + 1];
    int64_t opened_at, lease;
    bool granted;
};

/* A host: one store and every hook call it made (rings of the latest). */
struct tsup_store_host {
    struct cbd_store *s;
    const struct cbd_store_ops *ops;
    int nremote, nprobe, nsynced, health_true, health_false;
    struct cbd_store_state remote[TSUP_STORE_RING];
    struct tsup_probe probe[TSUP_STORE_RING];
    char synced[TSUP_STORE_RING][CB_NAME_MAX + 1];
    int64_t synced_at; /* the last one's */
    bool online;
    char why[512];     /* the last health report's */
    struct tsup_store_done done;
};

static TSUP_STORE_UNUSED void tsup_store_on_remote(void *arg, const struct cbd_store_state *st)
{
    struct tsup_store_host *h = arg;
    h->remote[h->nremote++ % TSUP_STORE_RING] = *st;
}

static TSUP_STORE_UNUSED void tsup_store_on_probe(void *arg, const char *name, int64_t opened_at, bool granted,
                                                  int64_t lease)
{
    struct tsup_store_host *h = arg;
    struct tsup_probe *p = &h->probe[h->nprobe++ % TSUP_STORE_RING];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->opened_at = opened_at;
    p->granted = granted;
    p->lease = lease;
}

static TSUP_STORE_UNUSED void tsup_store_on_health(void *arg, bool online, const char *why)
{
    struct tsup_store_host *h = arg;
    h->online = online;
    online ? h->health_true++ : h->health_false++;
    snprintf(h->why, sizeof h->why, "%s", why);
}

static TSUP_STORE_UNUSED void tsup_store_on_synced(void *arg, const char *name, int64_t at_s)
{
    struct tsup_store_host *h = arg;
    snprintf(h->synced[h->nsynced++ % TSUP_STORE_RING], CB_NAME_MAX + 1, "%s", name);
    h->synced_at = at_s;
}

/* The hooks that record into h; instance may be NULL. */
static TSUP_STORE_UNUSED struct cbd_store_hooks tsup_store_hooks(struct tsup_store_host *h, uv_loop_t *loop,
                                                                 const char *instance)
{
    return (struct cbd_store_hooks){.loop = loop, .arg = h, .instance = instance, .remote = tsup_store_on_remote,
                                    .probe_result = tsup_store_on_probe, .health = tsup_store_on_health,
                                    .synced = tsup_store_on_synced};
}

/* The latest remote report about name (any circuit if NULL), or NULL. */
static TSUP_STORE_UNUSED const struct cbd_store_state *tsup_store_last_remote(const struct tsup_store_host *h,
                                                                              const char *name)
{
    for (int i = h->nremote - 1; i >= 0 && i >= h->nremote - TSUP_STORE_RING; i--)
        if (name == NULL || strcmp(h->remote[i % TSUP_STORE_RING].name, name) == 0)
            return &h->remote[i % TSUP_STORE_RING];
    return NULL;
}

/* The latest election answer, or NULL. */
static TSUP_STORE_UNUSED const struct tsup_probe *tsup_store_last_probe(const struct tsup_store_host *h)
{
    return h->nprobe > 0 ? &h->probe[(h->nprobe - 1) % TSUP_STORE_RING] : NULL;
}

/* Was agreement on name ever told (among the latest calls)? */
static TSUP_STORE_UNUSED bool tsup_store_was_synced(const struct tsup_store_host *h, const char *name)
{
    for (int i = 0; i < h->nsynced && i < TSUP_STORE_RING; i++)
        if (strcmp(h->synced[i], name) == 0)
            return true;
    return false;
}

struct tsup_stat_lookup {
    const char *name;
    uint64_t value;
    bool found;
};

static TSUP_STORE_UNUSED void tsup_stat_emit(void *arg, const char *name, uint64_t value)
{
    struct tsup_stat_lookup *l = arg;
    if (strcmp(name, l->name) == 0) {
        l->value = value;
        l->found = true;
    }
}

/* Counter name of store s as `cbctl stats` shows it (store_<name>); 0 if
 * the store has none (*found false). */
static TSUP_STORE_UNUSED uint64_t tsup_store_stat(const struct cbd_store_ops *ops, const struct cbd_store *s,
                                                  const char *name, bool *found)
{
    struct tsup_stat_lookup l = {.name = name};
    ops->stats(s, tsup_stat_emit, &l);
    if (found != NULL)
        *found = l.found;
    return l.value;
}

#endif /* TSUP_STORE_H */
