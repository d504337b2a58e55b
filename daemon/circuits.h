/*
 * circuits.h - the daemon's table of circuits by slot, and what it keeps
 * beside it: registrations per uid (max_circuits_per_uid), the slots of
 * removed circuits (reused by registrations) and the electable circuits
 * (probes on demand).
 */
#ifndef CBD_CIRCUITS_H
#define CBD_CIRCUITS_H

#include <stddef.h>
#include <stdint.h>

#include "policy.h"
#include "segment_owner.h"

/* owner_uid of circuits nobody registered over the socket (the store, the
 * configuration file) and of admins' registrations: never counted against
 * max_circuits_per_uid. */
#define CBD_OWNER_NONE UINT32_MAX

/* Circuits a uid registered over the socket (max_circuits_per_uid). */
struct cbd_owner {
    uint32_t uid, circuits;
};

struct cbd_circuits {
    const struct cbd_segment *seg;    /* its index finds circuits by name */
    struct cbd_circuit *by_slot;      /* [0, n) */
    uint32_t n, cap;
    uint32_t nadopted;                /* slots [0, nadopted) came with an adopted segment */
    struct cbd_owner *owners;         /* registrations per uid */
    size_t nowners;
    uint32_t *free_slots;             /* removed circuits' slots, reused by registrations (last first) */
    uint32_t nfree, free_cap;
    uint32_t *electable;              /* slots of electable circuits (probes on demand); cap entries */
    uint32_t nelectable;
};

/* An empty table whose names are looked up in seg's index. */
void cbd_circuits_init(struct cbd_circuits *t, const struct cbd_segment *seg);
/* Frees the table's memory (the records stay in the segment). */
void cbd_circuits_free(struct cbd_circuits *t);

/* The circuit called name, or NULL (a removed one is not found). */
struct cbd_circuit *cbd_circuits_find(const struct cbd_circuits *t, const char *name);

/* Room for slots [0, need): 0 or -ENOMEM. New entries are not zeroed. */
int cbd_circuits_grow(struct cbd_circuits *t, uint32_t need);

/* uid registered one circuit more (delta +1) or fewer (-1); CBD_OWNER_NONE
 * is not counted. Out of memory: the uid goes uncounted. */
void cbd_circuits_owner_count(struct cbd_circuits *t, uint32_t uid, int delta);
/* Whether uid holds max circuits (0: no quota) and may register no more. */
int cbd_circuits_quota_reached(const struct cbd_circuits *t, uint32_t uid, uint32_t max);

/* A removed circuit's slot, for a later registration, unless its
 * incarnation (the one it would have next) is worn out. */
void cbd_circuits_free_push(struct cbd_circuits *t, uint32_t slot, uint32_t incarnation);
/* The slot a registration reuses (UINT32_MAX: none); pop takes it. */
uint32_t cbd_circuits_free_peek(const struct cbd_circuits *t);
void cbd_circuits_free_pop(struct cbd_circuits *t);

/* The policy's env->electable: slot's circuit is electable (on) or not. */
void cbd_circuits_set_electable(struct cbd_circuits *t, uint32_t slot, int on);

/* After a drain: competes for the probe of every electable circuit whose
 * permit word says a worker wants one (policy.c: probes on demand). */
void cbd_circuits_check_demand(struct cbd_circuits *t, const struct cbd_policy_env *env);

#endif /* CBD_CIRCUITS_H */
