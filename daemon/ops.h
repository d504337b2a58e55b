/*
 * ops.h - what each control request does: the operations table the control
 * server runs (register, list, show, stats, the operator's actions,
 * remove, reload, metrics, ...), over the pieces of the daemon they read or act on.
 */
#ifndef CBD_OPS_H
#define CBD_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "circuits.h"
#include "control.h"
#include "doorbell.h"
#include "drain.h"
#include "hooks.h"
#include "metrics.h"
#include "policy.h"
#include "segment_owner.h"
#include "store.h"

/* What the daemon counts itself (stats). */
struct cbd_counters {
    uint64_t transitions;             /* since start */
    uint64_t reloads, reloads_failed;
    uint64_t start_ns;                /* CLOCK_MONOTONIC at start, for uptime */
};

/* The operations' view of the daemon. The pointers outlive it; what they
 * point at is read when a request comes. */
struct cbd_ops {
    struct cbd_circuits *circuits;        /* found by name, listed */
    const struct cbd_segment *seg;        /* circuits_live */
    const struct cbd_policy_env *env;     /* the operator's actions go to the policy */
    /* stats only: */
    const struct cbd_control *control;
    const struct cbd_drain *drain;
    const struct cbd_doorbell *bell;
    struct cbd_hooks *const *hooks;       /* *hooks NULL once closed */
    const struct cbd_store_ops *const *store_ops;
    struct cbd_store *const *store;       /* *store NULL once closed */
    const int *store_health;              /* -1 not reported yet, else the store's last online value */
    const struct cbd_counters *counters;
    const int *ready;                     /* the daemon is serving (metrics: -EAGAIN before) */
    struct cbd_metrics *const *metrics;   /* the /metrics endpoint; *metrics NULL: not running */
    /* What the daemon does for them (cbd.c): the same contracts as
     * cbd_circuit_register, cbd_circuit_remove, cbd_circuit_configure and
     * cbd_reload, with arg. */
    int (*register_circuit)(void *arg, const char *name, const cb_config *asked, unsigned asked_mask,
                            uint32_t owner_uid, uint32_t *slot, int *created, char *err, size_t errsize);
    int (*remove_circuit)(void *arg, const char *name, char *err, size_t errsize);
    int (*configure_circuit)(void *arg, const char *name, const cb_config *set, unsigned set_mask, char *err,
                             size_t errsize);
    int (*reload)(void *arg, char *err, size_t errsize);
    void *arg;
};

/*
 * cbd_ops_metrics_fill - the endpoint's fill callback (metrics.h), arg a
 * struct cbd_ops: the daemon's numbers into s as they are now, circuit
 * names pointing into the segment. 0, -EAGAIN while the daemon is not
 * serving yet, or -ENOMEM.
 */
int cbd_ops_metrics_fill(void *arg, struct cbd_metrics_snapshot *s);

/* The table for cbd_control_init, whose ops_arg is a struct cbd_ops. */
extern const struct cbd_control_op cbd_ops_table[];
extern const size_t cbd_ops_count;

#endif /* CBD_OPS_H */
