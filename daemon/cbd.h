/*
 * cbd.h - struct cbd: one daemon, its loop and its subsystems. Passed to
 * every subsystem (no global singleton), so each can be driven alone.
 */
#ifndef CBD_CBD_H
#define CBD_CBD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "control.h"
#include "doorbell.h"
#include "drain.h"
#include "policy.h"
#include "segment_owner.h"
#include "store.h"
#include "timers.h"

struct cbd {
    struct cbd_config cfg;
    uv_loop_t loop;
    struct cbd_segment seg;
    struct cbd_circuit *circuits;     /* by slot: [0, ncircuits) */
    uint32_t ncircuits, circuits_cap;
    struct cbd_policy_env env;        /* the policy's way back into the daemon */
    const struct cbd_store_ops *store_ops;
    struct cbd_store *store;
    struct cbd_drain drain;
    struct cbd_doorbell bell;
    struct cbd_timers timers;
    struct cbd_control control;
    uv_signal_t sigterm, sigint;
    uint64_t transitions;             /* since start */
    int restoring;                    /* store restore in progress: remote states are RESTORE */
    int stopping;
    int exit_code;
};

/* Runs a daemon with cfg until SIGTERM/SIGINT (0) or a failure (1; 2 for a
 * store URI the store rejects). */
int cbd_run(const struct cbd_config *cfg);

/*
 * Finds or creates the circuit called name. cfg NULL: the [defaults]
 * policy. An existing circuit keeps its config (*created = 0). Errors, with
 * an operator-readable message in err: -EINVAL (bad name or config field),
 * -ENOSPC (segment full), -ENOMEM.
 */
int cbd_circuit_register(struct cbd *d, const char *name, const cb_config *cfg, uint32_t *slot, int *created,
                         char *err, size_t errsize);

/* Begins a clean stop: no new connections, final drain, store flush. */
void cbd_stop(struct cbd *d, int exit_code);

#endif /* CBD_CBD_H */
