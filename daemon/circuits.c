/*
 * circuits.c - the registry of the daemon's circuits.
 *
 * Owns the table of struct cbd_circuit by slot (the daemon's private view
 * of each record) and three small lists beside it: circuits registered per
 * uid, the slots of removed circuits, and the electable circuits. A slot is
 * the record's index in the segment, so the table only grows; a removed
 * circuit keeps its entry (removed = 1) until a registration reuses the
 * slot, last freed first. Names are found through the segment's own index,
 * never through a copy of it.
 *
 * It must not touch a circuit's state: loading, transitions and publishing
 * are the policy's (policy.c), adding and removing records the segment
 * owner's; what a registration or a removal means for the store, the quota
 * message or the configuration is cbd.c's, which calls in here for the
 * bookkeeping.
 */
#include "circuits.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>


void cbd_circuits_init(struct cbd_circuits *t, const struct cbd_segment *seg)
{
    memset(t, 0, sizeof *t);
    t->seg = seg;
}

void cbd_circuits_free(struct cbd_circuits *t)
{
    free(t->by_slot);
    free(t->owners);
    free(t->free_slots);
    free(t->electable);
    cbd_circuits_init(t, t->seg);
}

struct cbd_circuit *cbd_circuits_find(const struct cbd_circuits *t, const char *name)
{
    size_t len = strlen(name);
    int slot = cb__seg_lookup(t->seg->hdr, name, len, cb__name_hash(name, len), NULL);
    return slot >= 0 && (uint32_t)slot < t->n && !t->by_slot[slot].removed ? &t->by_slot[slot] : NULL;
}

int cbd_circuits_grow(struct cbd_circuits *t, uint32_t need)
{
    if (need <= t->cap)
        return 0;
    uint32_t cap = t->cap ? t->cap : 64;
    while (cap < need)
        cap *= 2;
    /* The electable list grows with the table, so that listing a circuit
     * (on the policy's path) never allocates and never fails. */
    uint32_t *e = realloc(t->electable, (size_t)cap * sizeof *e);
    if (e == NULL)
        return -ENOMEM;
    t->electable = e;
    struct cbd_circuit *p = realloc(t->by_slot, (size_t)cap * sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    t->by_slot = p;
    t->cap = cap;
    return 0;
}

/* A short list: a host has few uids that register circuits. */
void cbd_circuits_owner_count(struct cbd_circuits *t, uint32_t uid, int delta)
{
    if (uid == CBD_OWNER_NONE)
        return;
    for (size_t i = 0; i < t->nowners; i++) {
        if (t->owners[i].uid == uid) {
            t->owners[i].circuits += (uint32_t)delta;
            return;
        }
    }
    if (delta < 0)
        return;
    struct cbd_owner *p = realloc(t->owners, (t->nowners + 1) * sizeof *p);
    if (p == NULL)
        return; /* out of memory: this uid goes uncounted */
    t->owners = p;
    t->owners[t->nowners++] = (struct cbd_owner){.uid = uid, .circuits = (uint32_t)delta};
}

int cbd_circuits_quota_reached(const struct cbd_circuits *t, uint32_t uid, uint32_t max)
{
    if (uid == CBD_OWNER_NONE || max == 0)
        return 0;
    for (size_t i = 0; i < t->nowners; i++) {
        if (t->owners[i].uid == uid)
            return t->owners[i].circuits >= max;
    }
    return 0;
}

void cbd_circuits_free_push(struct cbd_circuits *t, uint32_t slot, uint32_t incarnation)
{
    if (incarnation >= CB_SEG_INCARNATION_MAX)
        return; /* worn out: a handle's incarnation could come round again */
    if (t->nfree == t->free_cap) {
        uint32_t cap = t->free_cap ? t->free_cap * 2 : 64;
        uint32_t *p = realloc(t->free_slots, (size_t)cap * sizeof *p);
        if (p == NULL)
            return; /* out of memory: the slot stays unused */
        t->free_slots = p;
        t->free_cap = cap;
    }
    t->free_slots[t->nfree++] = slot;
}

uint32_t cbd_circuits_free_peek(const struct cbd_circuits *t)
{
    return t->nfree > 0 ? t->free_slots[t->nfree - 1] : UINT32_MAX;
}

void cbd_circuits_free_pop(struct cbd_circuits *t)
{
    if (t->nfree > 0)
        t->nfree--;
}

/* The list lets a drain look at the permit words of electable circuits
 * only, not at every circuit's. The policy lists a circuit once and takes
 * it off once (c->electable). */
void cbd_circuits_set_electable(struct cbd_circuits *t, uint32_t slot, int on)
{
    struct cbd_circuit *c = &t->by_slot[slot];
    if (on) { /* room: the list has the table's capacity (cbd_circuits_grow) */
        c->electable_pos = t->nelectable;
        t->electable[t->nelectable++] = slot;
        return;
    }
    uint32_t pos = c->electable_pos, last = t->electable[--t->nelectable];
    t->electable[pos] = last;
    t->by_slot[last].electable_pos = pos;
}

void cbd_circuits_check_demand(struct cbd_circuits *t, const struct cbd_policy_env *env)
{
    struct cbd_now now;
    int have_now = 0;
    for (uint32_t i = 0; i < t->nelectable; i++) {
        struct cbd_circuit *c = &t->by_slot[t->electable[i]];
        /* Relaxed: the bit guards no data (libcb's want_probe). */
        if (!(atomic_load_explicit(c->permit, memory_order_relaxed) & CB_PERMIT_DEMAND) || c->probe_asked)
            continue;
        if (!have_now) {
            cbd_now(&now);
            have_now = 1;
        }
        cbd_policy_on_demand(env, c, &now);
    }
}
