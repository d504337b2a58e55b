/*
 * cbd.h - struct cbd: one daemon, its loop and its subsystems. No
 * subsystem takes it: each gets its own struct and the pointers and
 * callbacks it needs (cbd.c wires them), so each can be driven alone.
 * What is left here is the wiring and the actions that span several
 * subsystems: registration and removal, reload, start and stop.
 */
#ifndef CBD_CBD_H
#define CBD_CBD_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "circuits.h"
#include "config.h"
#include "control.h"
#include "doorbell.h"
#include "drain.h"
#include "hooks.h"
#include "metrics.h"
#include "notify.h"
#include "ops.h"
#include "policy.h"
#include "segment_owner.h"
#include "store.h"
#include "timers.h"

struct cbd {
    struct cbd_config cfg;
    uv_loop_t loop;
    struct cbd_segment seg;
    struct cbd_circuits circuits;     /* by slot, per uid, free slots, electable */
    uint64_t removals, expired;       /* circuits removed (by an operator or expiry), expired */
    uv_timer_t expiry;                /* circuit_expiry_s sweep */
    int expiry_started;
    uint32_t rolled[8], nrolled;      /* adopted transitions completed at start, to announce */
    struct cbd_policy_env env;        /* the policy's way back into the daemon */
    const struct cbd_store_ops *store_ops;
    struct cbd_store *store;
    struct cbd_drain drain;
    struct cbd_doorbell bell;
    struct cbd_timers timers;
    struct cbd_control control;
    struct cbd_ops ops;               /* what the control socket's requests do */
    struct cbd_hooks *hooks;          /* NULL once closed */
    struct cbd_notify notify;         /* sd_notify; a no-op outside systemd */
    struct cbd_metrics *metrics;      /* the /metrics endpoint; NULL: off (metrics_listen "") or stopped */
    uv_timer_t watchdog;
    int watchdog_started;
    uv_signal_t sigterm, sigint, sighup;
    struct cbd_counters counters;     /* transitions, reloads, start time */
    int store_health;                 /* -1 not reported yet, else the store's last online value */
    int restoring;                    /* store restore in progress: remote states are RESTORE */
    int ready;                        /* segment published, READY=1 sent */
    int reload_pending;               /* SIGHUP while starting: reload once ready */
    int stopping;
    int exit_code;
};

/* Runs a daemon with cfg until SIGTERM/SIGINT (0) or a failure (1; 2 for a
 * store URI the store rejects). The daemon takes over cfg's lists (hooks,
 * sections) and frees them: the caller must not use or free them. */
int cbd_run(const struct cbd_config *cfg);

/*
 * Finds or creates the circuit called name. owner_uid: the peer that asks
 * (CBD_OWNER_NONE: not counted); a new circuit past that uid's
 * max_circuits_per_uid quota is -EDQUOT. asked: the config the worker
 * asked for, of which the fields in asked_mask (bit i: cb__policy_fields[i])
 * count; the circuit runs with cbd_config_effective of it, and a reload
 * recomputes that. An existing circuit keeps its config (*created = 0).
 * Errors, with an operator-readable message in err: -EINVAL (bad name or
 * config field), -ENOSPC (segment full), -EDQUOT (quota), -ENOMEM.
 */
int cbd_circuit_register(struct cbd *d, const char *name, const cb_config *asked, unsigned asked_mask,
                         uint32_t owner_uid, uint32_t *slot, int *created, char *err, size_t errsize);

/*
 * An operator's change of the circuit's policy (cbctl set): the fields in
 * set_mask take set's values, over the config file and what the worker
 * asked for, until the daemon stops (reloads keep them). Applied at once
 * without a transition; the circuit keeps its state, streak and window
 * (cbd_policy_set_config). -ENOENT (no such circuit) or -EINVAL (the
 * resulting policy is out of bounds: nothing changes), with err.
 */
int cbd_circuit_configure(struct cbd *d, const char *name, const cb_config *set, unsigned set_mask,
                          char *err, size_t errsize);

/*
 * Removes the circuit called name: its record is retired (workers holding a
 * handle re-resolve it, and register it again if they still use it), its
 * name leaves the index and its slot is reused later. Refused with -EBUSY
 * (and a message naming the section) for a circuit a [circuit "NAME"]
 * section of the configuration declares. -ENOENT if there is no such
 * circuit.
 */
int cbd_circuit_remove(struct cbd *d, const char *name, char *err, size_t errsize);

/*
 * Step 1 of the start, for cbd_run and for a harness that drives a daemon
 * in-process: points d->env at the daemon's own callbacks (history, log,
 * store, hooks, subscribers, timers), opens or adopts the segment, puts
 * the deadline heap on d->loop and loads every adopted circuit. d->cfg,
 * d->loop and d->store_ops (NULL: none) are set. 0 or -errno.
 */
int cbd_open(struct cbd *d);

/*
 * Reads the configuration again (SIGHUP, op reload) and applies it; see
 * docs/configuration.md. Returns how many circuits got a new policy, or
 * -EINVAL with the first errors in err (everything is logged; nothing
 * changed).
 */
int cbd_reload(struct cbd *d, char *err, size_t errsize);

/* Begins a clean stop: no new connections, final drain, store flush. */
void cbd_stop(struct cbd *d, int exit_code);

#endif /* CBD_CBD_H */
