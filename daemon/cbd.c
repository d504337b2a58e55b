/*
 * cbd.c - struct cbd: wiring the subsystems together, start and stop.
 *
 * Start, in this order (each step needs the one before):
 *   1. open or adopt the segment (a fresh one is not ready yet; an adopted
 *      one stays ready: its records are valid and workers keep using them);
 *      load the daemon's view of every adopted circuit and arm its deadline;
 *   2. create the store and restore from it. Merge rule: a circuit the
 *      adopted segment already has keeps the segment's state (it is at least
 *      as new as anything persisted); circuits only in the store are
 *      registered with their stored config and given their stored state;
 *   3. listen on the control socket;
 *   4. start draining, the doorbell thread and the heartbeat; publish
 *      ready = 1 (release); tell the service manager (notify hook).
 *
 * Stop (SIGTERM/SIGINT, or a failure): stop accepting connections, stop the
 * doorbell thread, drain every lane one last time, close timers, flush and
 * close the store; when the loop has no handles left, set daemon_pid = 0 and
 * unmap. The shm objects are kept on purpose: the next daemon adopts them,
 * and workers keep their mappings (they see daemon_pid 0 and, past the
 * staleness limit, apply stale_policy). A SIGKILL skips all of this and
 * loses nothing: every state a restart needs is already in shared memory.
 *
 * Each transition, whatever caused it, goes through transitioned(): count,
 * history ring, one log line, then the store (write-through; not for
 * states that came from the store itself).
 */
#include "cbd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* The service manager hook: sd_notify goes here (READY=1, STOPPING=1). */
static void notify(struct cbd *d, const char *state)
{
    (void)d;
    cbd_log(CBD_LOG_DEBUG, "notify: %s", state);
}

static struct cbd_circuit *by_name(struct cbd *d, const char *name)
{
    size_t len = strlen(name);
    int slot = cb__seg_lookup(d->seg.hdr, name, len, cb__name_hash(name, len));
    return slot >= 0 && (uint32_t)slot < d->ncircuits ? &d->circuits[slot] : NULL;
}

/* ---- the policy's callbacks ----------------------------------------------- */

static void on_transitioned(void *arg, const struct cbd_circuit *c, cb_state from, int64_t prev_opened_at,
                            cb_source source, const struct cbd_now *now)
{
    struct cbd *d = arg;
    struct cbd_history_entry e = {
        .slot = c->slot, .epoch = c->epoch, .failure_count = c->trip_failure_count,
        .from = (uint8_t)from, .to = (uint8_t)c->state, .source = (uint8_t)source,
        .opened_at = c->opened_at, .time_ns = now->real_ns,
    };
    d->transitions++;
    cbd_segment_history_append(&d->seg, &e);
    cbd_log(CBD_LOG_INFO, "transition circuit=%s from=%s to=%s epoch=%u failure_count=%u opened_at=%lld source=%s",
            c->rec->name, cbd_state_name(from), cbd_state_name(c->state), c->epoch, c->trip_failure_count,
            (long long)c->opened_at, cbd_source_name(source));
    if (source == CB_SOURCE_REMOTE || source == CB_SOURCE_RESTORE)
        return; /* it came from the store: writing it back would echo */
    struct cbd_store_state st = {
        .state = c->state, .failure_count = c->trip_failure_count, .opened_at = c->opened_at,
        .has_config = true, .config = c->cfg,
    };
    snprintf(st.name, sizeof st.name, "%s", c->rec->name);
    d->store_ops->transition(d->store, &st, prev_opened_at);
}

static void on_try_probe(void *arg, const struct cbd_circuit *c, uint32_t lease_s)
{
    struct cbd *d = arg;
    cbd_log(CBD_LOG_DEBUG, "asking the store for the probe lease of circuit=%s opened_at=%lld", c->rec->name,
            (long long)c->opened_at);
    d->store_ops->try_probe(d->store, c->rec->name, c->opened_at, lease_s);
}

static void on_arm(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns)
{
    cbd_timers_add(arg, slot, epoch, at_ns);
}

/* ---- the store's callbacks ------------------------------------------------ */

static void on_remote(void *arg, const struct cbd_store_state *st)
{
    struct cbd *d = arg;
    cb_source source = d->restoring ? CB_SOURCE_RESTORE : CB_SOURCE_REMOTE;
    struct cbd_circuit *c = by_name(d, st->name);
    char err[256];
    if (c != NULL && d->restoring && d->seg.adopted)
        return; /* merge rule: the adopted segment is newer than the store */
    if (c == NULL) {
        uint32_t slot;
        int created;
        if (cbd_circuit_register(d, st->name, st->has_config ? &st->config : NULL, &slot, &created, err,
                                 sizeof err) < 0) {
            cbd_log(CBD_LOG_WARN, "store: cannot restore circuit %s: %s", st->name, err);
            return;
        }
        c = &d->circuits[slot];
    }
    struct cbd_now now;
    cbd_now(&now);
    cbd_policy_apply(&d->env, c, st->state, c->flags, st->opened_at, st->failure_count, source, &now);
}

static void on_probe_result(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry)
{
    struct cbd *d = arg;
    struct cbd_circuit *c = by_name(d, name);
    struct cbd_now now;
    if (c == NULL)
        return;
    cbd_now(&now);
    cbd_policy_on_probe_result(&d->env, c, opened_at, granted, lease_expiry, &now);
}

static void on_health(void *arg, bool online, const char *why)
{
    struct cbd *d = arg;
    if (online)
        cbd_log(CBD_LOG_INFO, "store %s is reachable again", d->cfg.store);
    else
        cbd_log(CBD_LOG_WARN, "store %s: %s; running host-local meanwhile", d->cfg.store, why);
}

/* ---- registration --------------------------------------------------------- */

static int grow_circuits(struct cbd *d, uint32_t need)
{
    if (need <= d->circuits_cap)
        return 0;
    uint32_t cap = d->circuits_cap ? d->circuits_cap : 64;
    while (cap < need)
        cap *= 2;
    struct cbd_circuit *p = realloc(d->circuits, (size_t)cap * sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    d->circuits = p;
    d->circuits_cap = cap;
    return 0;
}

int cbd_circuit_register(struct cbd *d, const char *name, const cb_config *cfg, uint32_t *slot, int *created,
                         char *err, size_t errsize)
{
    const char *field;
    const cb_config *use = cfg ? cfg : &d->cfg.defaults;
    struct cbd_circuit *c;
    if (cb__name_check(name) < 0) {
        snprintf(err, errsize, "invalid circuit name (expected 1..%u bytes of A-Z a-z 0-9 . _ : / @ + = -)",
                 CB_NAME_MAX);
        return -EINVAL;
    }
    if (cb__config_check(use, &field) < 0) {
        snprintf(err, errsize, "config field %s is out of range", field);
        return -EINVAL;
    }
    if ((c = by_name(d, name)) != NULL) {
        *slot = c->slot;
        *created = 0;
        return 0;
    }
    if (grow_circuits(d, d->ncircuits + 1) < 0) {
        snprintf(err, errsize, "out of memory registering a circuit");
        return -ENOMEM;
    }
    int rc = cbd_segment_add(&d->seg, name, use, slot);
    if (rc < 0) {
        snprintf(err, errsize, "segment full: %u circuits (raise the `capacity` option)", d->seg.hdr->capacity);
        return rc;
    }
    struct cbd_now now;
    cbd_now(&now);
    d->ncircuits = *slot + 1;
    cbd_policy_load(&d->env, &d->circuits[*slot], *slot, CB_SEG_RECORD(d->seg.hdr, *slot),
                    CB_LANES_PERMIT(d->seg.lanes, *slot), &now);
    *created = 1;
    cbd_log(CBD_LOG_INFO, "registered circuit=%s slot=%u failure_threshold=%u success_threshold=%u "
                          "half_open_max_probes=%u recovery_timeout_ms=%u probe_lease_ms=%u",
            name, *slot, use->failure_threshold, use->success_threshold, use->half_open_max_probes,
            use->recovery_timeout_ms, use->probe_lease_ms);
    d->store_ops->track(d->store, name, use);
    return 0;
}

/* The daemon's view of every circuit an adopted segment holds. */
static int load_adopted(struct cbd *d)
{
    /* Relaxed: written by the daemon that made the segment, which has exited. */
    uint32_t n = atomic_load_explicit(&d->seg.hdr->circuit_count, memory_order_relaxed);
    struct cbd_now now;
    if (grow_circuits(d, n) < 0)
        return -ENOMEM;
    cbd_now(&now);
    for (uint32_t i = 0; i < n; i++)
        cbd_policy_load(&d->env, &d->circuits[i], i, CB_SEG_RECORD(d->seg.hdr, i), CB_LANES_PERMIT(d->seg.lanes, i),
                        &now);
    d->ncircuits = n;
    return 0;
}

/* ---- start and stop ------------------------------------------------------- */

static void on_store_closed(void *arg)
{
    struct cbd *d = arg;
    cbd_log(CBD_LOG_DEBUG, "store closed");
    d->store = NULL;
}

void cbd_stop(struct cbd *d, int exit_code)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    d->exit_code = exit_code;
    notify(d, "STOPPING=1");
    cbd_control_close(d);
    cbd_doorbell_stop(d);
    if (d->drain.started)
        cbd_drain_all(d); /* the final drain: outcomes recorded up to now count */
    cbd_drain_stop(d);
    cbd_timers_close(d);
    cbd_segment_stop_heartbeat(&d->seg);
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    if (d->store != NULL)
        d->store_ops->close(d->store, on_store_closed, d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct cbd *d = s->data;
    cbd_log(CBD_LOG_INFO, "received %s: stopping", strsignal(signum));
    cbd_stop(d, 0);
}

static void on_restored(void *arg, int rc)
{
    struct cbd *d = arg;
    d->restoring = 0;
    if (rc < 0)
        cbd_log(CBD_LOG_WARN, "store %s could not be read (%s): starting with the segment's circuits only",
                d->cfg.store, strerror(-rc));
    if (d->stopping)
        return;
    if (cbd_control_listen(d) < 0 || cbd_drain_start(d) < 0 || cbd_doorbell_start(d) < 0 ||
        cbd_segment_heartbeat_start(&d->seg, &d->loop, d->cfg.heartbeat_ms) < 0) {
        cbd_log(CBD_LOG_ERROR, "startup failed: stopping");
        cbd_stop(d, 1);
        return;
    }
    cbd_segment_publish(&d->seg);
    notify(d, "READY=1");
    cbd_log(CBD_LOG_INFO, "ready: instance=%s segment=%s capacity=%u socket=%s store=%s", d->cfg.instance,
            d->seg.state_name, d->cfg.capacity, d->cfg.socket, d->cfg.store);
}

/* Steps 1-2 of the start; 0, or the exit code. */
static int start(struct cbd *d)
{
    const char *err = NULL;
    struct cbd_store_hooks hooks = {.loop = &d->loop, .arg = d, .remote = on_remote,
                                    .probe_result = on_probe_result, .health = on_health};
    if (cbd_segment_open(&d->seg, &d->cfg) < 0 || cbd_timers_init(d) < 0 || load_adopted(d) < 0)
        return 1;
    d->store_ops = cbd_store_find(d->cfg.store);
    if (d->store_ops == NULL || d->store_ops->create(&d->store, d->cfg.store, &hooks, &err) < 0) {
        cbd_log(CBD_LOG_ERROR, "store %s: %s", d->cfg.store, err ? err : "unknown store scheme");
        return 2;
    }
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    d->sigterm.data = d->sigint.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    d->restoring = 1;
    d->store_ops->restore(d->store, on_restored, d);
    return 0;
}

int cbd_run(const struct cbd_config *cfg)
{
    struct cbd *d = calloc(1, sizeof *d);
    if (d == NULL) {
        cbd_log(CBD_LOG_ERROR, "out of memory");
        return 1;
    }
    d->cfg = *cfg;
    d->env = (struct cbd_policy_env){.arg = d, .transitioned = on_transitioned, .try_probe = on_try_probe,
                                     .arm = on_arm};
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is a write error, not a death */
    int rc = uv_loop_init(&d->loop);
    if (rc < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot create the event loop: %s", uv_strerror(rc));
        free(d);
        return 1;
    }
    rc = start(d);
    if (rc != 0) {
        d->exit_code = rc;
        d->stopping = 1;
        cbd_timers_close(d);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    rc = d->exit_code;
    cbd_segment_close(&d->seg);
    if (uv_loop_close(&d->loop) != 0)
        cbd_log(CBD_LOG_WARN, "event loop closed with handles still open");
    cbd_log(CBD_LOG_INFO, "stopped (exit code %d)", rc);
    free(d->circuits);
    free(d);
    return rc;
}
