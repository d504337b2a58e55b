/*
 * cbd.c - struct cbd: wiring the subsystems together, start, reload, stop.
 *
 * Owns the wiring (which subsystem's callback calls which) and what spans
 * several subsystems: registering and removing circuits (segment, registry,
 * policy, store, quota), expiry, reload, the fan-out of each transition,
 * the store's callbacks, and the start and stop order. It reaches into a
 * subsystem only through its interface; the subsystems never reach back
 * (none includes cbd.h).
 *
 * Start, in this order (each step needs the one before):
 *   1. open or adopt the segment (a fresh one is not ready yet; an adopted
 *      one stays ready: its records are valid and workers keep using them);
 *      load the daemon's view of every adopted circuit and arm its deadline;
 *   2. create the store and the hook runner, and restore from the store.
 *      Merge rule: with the local store, a circuit the adopted segment
 *      already has keeps the segment's state (it is at least as new as
 *      anything persisted). With a fleet store, other hosts went on while
 *      this daemon was down: the store's state is adopted, unless the
 *      segment holds an opening the fleet has not seen (the fleet has an
 *      older opening, or closed it before this opening), which is kept
 *      and written so the fleet learns it - an OPEN is never lost, and
 *      the store's compare-and-write settles a conflict. Adopted
 *      circuits the fleet store did not report are written if open, and
 *      every adopted circuit is tracked.
 *      Circuits only in the store are registered with their stored config
 *      and given their stored state;
 *   3. give every circuit the policy the configuration file says (its
 *      [circuit]/[prefix] section may have changed while it was down);
 *   4. listen on the control socket; start draining, the doorbell (FIFO and futex thread)
 *      and the heartbeat; publish ready = 1 (release); then READY=1 to the
 *      service manager and the watchdog pings; then the metrics endpoint
 *      (metrics_listen), which only observes: one that cannot listen is
 *      logged, and the daemon serves circuits without it.
 *
 * Reload (SIGHUP, op reload): parse the same sources again; if anything is
 * wrong keep everything as it is. Else swap the configuration and apply
 * what a reload may change: log level, drain timers, hook limits, the
 * admin group, and every circuit's policy - recomputed from what its worker
 * asked for (kept per circuit) under the new [defaults] and sections.
 * Circuit states, streaks and counters are never touched by a reload.
 *
 * Stop (SIGTERM/SIGINT, or a failure): STOPPING=1, stop accepting
 * connections and scrapes, stop the doorbell (FIFO and futex thread), drain every lane one last time,
 * kill running hooks, close timers, flush and close the store; when the
 * loop has no handles left, set daemon_pid = 0 and unmap. The shm objects
 * are kept on purpose: the next daemon adopts them, and workers keep their
 * mappings (they see daemon_pid 0 and, past the staleness limit, apply
 * stale_policy). A SIGKILL skips all of this and loses nothing: every state
 * a restart needs is already in shared memory.
 *
 * Each transition, whatever caused it, goes through on_transitioned():
 * count, history ring, one log line, the store (write-through; not for
 * states that came from the store itself), hooks, socket subscribers.
 *
 * The fleet (redis, dynamodb): what a fleet store reports through
 * on_remote is adopted as it is (its compare-and-write decided it is the
 * fleet's state), with source `remote`, so local hooks, history and
 * subscribers see other hosts' transitions. The probe lease is the
 * policy's (policy.c): one holder per opening across the fleet. Each
 * record's sync_state says how this host stands with the fleet: OK as of
 * synced_at (the store's last agreement, on_synced), PENDING while a
 * transition of this host is on its way, OFFLINE while the store is
 * unreachable (the host runs alone; synced_at shows for how long).
 */
#include "cbd.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"

#define ALL_FIELDS ((1u << CB_POLICY_NFIELDS) - 1)

/* What the worker asked for, with [defaults] in the fields it left out:
 * what the store keeps, so that a restored circuit counts it as asked. */
static cb_config asked_filled(const struct cbd *d, const struct cbd_circuit *c)
{
    cb_config out = d->cfg.defaults, asked = c->asked;
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (c->asked_mask & (1u << i))
            *cb__config_field(&out, i) = *cb__config_field(&asked, i);
    }
    return out;
}

/* CB_SYNC_* for the records, from the store's last health report. */
static unsigned sync_state(const struct cbd *d)
{
    if (!d->env.fleet)
        return CB_SYNC_LOCAL;
    return d->store_health < 0 ? CB_SYNC_PENDING : d->store_health ? CB_SYNC_OK : CB_SYNC_OFFLINE;
}

/* Tells the store the circuit's state (write-through; the store compares
 * before it writes, so a refusal comes back through on_remote). A fleet
 * record is PENDING until the store says it agrees (on_synced), or OFFLINE
 * while the store is unreachable. */
static void write_through(struct cbd *d, struct cbd_circuit *c, int64_t prev_opened_at)
{
    struct cbd_store_state st = {
        .state = c->state, .failure_count = c->trip_failure_count, .opened_at = c->opened_at,
        .opened_at_ns = c->opened_at_ns, .has_config = true, .config = asked_filled(d, c),
        /* the opening's real end (backoff); an operator's hold has none the fleet waits for */
        .open_until_ns = c->state == CB_OPEN && !(c->flags & CB_SEG_F_FORCED) ? c->open_until_ns : 0,
    };
    snprintf(st.name, sizeof st.name, "%s", c->rec->name);
    /* a shadow circuit's trial reaches a fleet store as its marker only */
    st.shadow = c->cfg.shadow && d->env.fleet;
    if (st.shadow) {
        d->store_ops->transition(d->store, &st, prev_opened_at);
        return;
    }
    /* HALF_OPEN: the election wrote it; the store's answer already agreed */
    if (d->env.fleet && d->store_health != 0 && c->state != CB_HALF_OPEN)
        cbd_policy_set_sync(c, CB_SYNC_PENDING, 0);
    d->store_ops->transition(d->store, &st, prev_opened_at);
}

/* ---- the policy's callbacks ----------------------------------------------- */

static const char *flags_name(unsigned flags)
{
    static const char *const names[] = {"-", "forced", "disabled", "forced,disabled"};
    return names[flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED)];
}

/* Hooks and subscribers: the global hooks first, then the circuit's own. */
static void announce(struct cbd *d, const struct cbd_circuit *c, cb_state from, cb_source source,
                     const struct cbd_now *now)
{
    struct cbd_hook_event ev = {
        .from = cb__state_name(from), .to = cb__state_name(c->state), .source = cb__source_name(source),
        .origin = source == CB_SOURCE_REMOTE || (source == CB_SOURCE_RESTORE && d->env.fleet) ? "fleet" : "local",
        .opened_at = c->opened_at, .failure_count = c->trip_failure_count, .epoch = c->epoch,
        .time_ns = now->real_ns,
    };
    snprintf(ev.circuit, sizeof ev.circuit, "%s", c->rec->name);
    for (size_t i = 0; d->hooks != NULL && i < d->cfg.hook_commands.n; i++)
        cbd_hooks_fire(d->hooks, d->cfg.hook_commands.v[i], &ev);
    for (size_t i = 0; d->hooks != NULL && c->override != NULL && i < c->override->hooks.n; i++)
        cbd_hooks_fire(d->hooks, c->override->hooks.v[i], &ev);
    cbd_control_publish(&d->control, &ev, c->flags);
}

/* Transitions the store must not be told of: states that came from it
 * (writing them back would echo), and a fleet probe lease that lapsed
 * (HALF_OPEN -> OPEN by the timer, same opening): this host stops probing,
 * the fleet keeps what it has - another holder, a close, or the lapsed
 * lease, which expires. Written, it would reopen an opening the fleet may
 * have closed meanwhile. */
static bool from_the_fleet(cb_state from, cb_state to, cb_source source)
{
    return source == CB_SOURCE_REMOTE || source == CB_SOURCE_RESTORE ||
           (source == CB_SOURCE_TIMER && from == CB_HALF_OPEN && to == CB_OPEN);
}

/* The daemon's count and the circuit's [from][to] count (metrics). */
static void count_transition(struct cbd *d, uint32_t slot, cb_state from, cb_state to)
{
    d->counters.transitions++;
    if ((unsigned)from < 3 && (unsigned)to < 3)
        d->circuits.by_slot[slot].transitions[from][to]++;
}

static void on_transitioned(void *arg, const struct cbd_circuit *c, cb_state from, int64_t prev_opened_at,
                            cb_source source, const struct cbd_now *now)
{
    struct cbd *d = arg;
    struct cbd_history_entry e = {
        .slot = c->slot, .epoch = c->epoch, .failure_count = c->trip_failure_count,
        .from = (uint8_t)from, .to = (uint8_t)c->state, .source = (uint8_t)source,
        .opened_at = c->opened_at, .time_ns = now->real_ns,
    };
    count_transition(d, c->slot, from, c->state);
    cbd_segment_history_append(&d->seg, &e);
    cbd_log(CBD_LOG_INFO, "transition circuit=%s from=%s to=%s epoch=%u failure_count=%u opened_at=%lld source=%s "
                          "flags=%s", CB_NAME_SHOW(c->rec->name), cb__state_name(from), cb__state_name(c->state), c->epoch,
            c->trip_failure_count, (long long)c->opened_at, cb__source_name(source), flags_name(c->flags));
    /* A shadow circuit's transitions are its own trial: the local state
     * file keeps them (with shadow in the config it stores); a fleet store
     * gets them as the item's shadow marker (write_through), which no
     * other host or Powertools function obeys. */
    if (!from_the_fleet(from, c->state, source))
        write_through(d, &d->circuits.by_slot[c->slot], prev_opened_at);
    announce(d, c, from, source, now);
}

static void on_try_probe(void *arg, const struct cbd_circuit *c, uint32_t lease_s)
{
    struct cbd *d = arg;
    cbd_log(CBD_LOG_DEBUG, "asking the store for the probe lease of circuit=%s opened_at=%lld", CB_NAME_SHOW(c->rec->name),
            (long long)c->opened_at);
    d->store_ops->try_probe(d->store, c->rec->name, c->opened_at, lease_s);
}

static void on_arm(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns)
{
    struct cbd *d = arg;
    cbd_timers_add(&d->timers, slot, epoch, at_ns);
}

/* A deadline the policy armed is due (entries for slots past the circuits
 * are dropped). */
static void on_deadline(void *arg, uint32_t slot, uint32_t epoch, uint64_t at_ns, const struct cbd_now *now)
{
    struct cbd *d = arg;
    if (slot < d->circuits.n)
        cbd_policy_on_deadline(&d->env, &d->circuits.by_slot[slot], epoch, at_ns, now);
}

static uint64_t on_history_next(void *arg)
{
    struct cbd *d = arg;
    return atomic_load_explicit(&d->seg.hdr->history_head, memory_order_relaxed); /* we are its only writer */
}

static void on_electable(void *arg, uint32_t slot, int on)
{
    struct cbd *d = arg;
    cbd_circuits_set_electable(&d->circuits, slot, on);
}

static void on_release(void *arg, const struct cbd_circuit *c)
{
    struct cbd *d = arg;
    cbd_log(CBD_LOG_DEBUG, "giving back the probe lease of circuit=%s opened_at=%lld: nobody probes here",
            CB_NAME_SHOW(c->rec->name), (long long)c->opened_at);
    if (d->store_ops->release != NULL)
        d->store_ops->release(d->store, c->rec->name, c->opened_at);
}

/* ---- the store's callbacks ------------------------------------------------ */

/*
 * At a restore over an adopted segment, does the segment's state of c beat
 * what the fleet store holds? The local store never holds anything newer
 * than the segment. A fleet store may: other hosts kept going while this
 * daemon was down. There the segment wins only with an opening the fleet
 * has not seen: the fleet has an older opening, or has it CLOSED since
 * before this opening (not known: the segment wins - never lose an OPEN; a
 * close in the same second is taken as older). The store's compare-and-
 * write settles the rest. Never while an operator holds the circuit (a
 * hold is this host's, written when it was made).
 */
static bool segment_wins(const struct cbd *d, const struct cbd_circuit *c, const struct cbd_store_state *st)
{
    if (!d->env.fleet)
        return true;
    if (c->state == CB_CLOSED || (c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED)))
        return false;
    return st->state == CB_CLOSED ? st->updated_at <= c->opened_at : st->opened_at < c->opened_at;
}

static void on_remote(void *arg, const struct cbd_store_state *st)
{
    struct cbd *d = arg;
    cb_source source = d->restoring ? CB_SOURCE_RESTORE : CB_SOURCE_REMOTE;
    struct cbd_circuit *c = cbd_circuits_find(&d->circuits, st->name);
    char err[256];
    if (c != NULL && d->restoring && c->slot < d->circuits.nadopted) {
        if (st->has_config) { /* what the worker asked for is the store's */
            c->asked = st->config;
            c->asked_mask = ALL_FIELDS;
        }
        c->restore_seen = 1;
        if (segment_wins(d, c, st)) {
            if (d->env.fleet) /* the fleet learns it */
                write_through(d, c, st->opened_at);
            return;
        }
    }
    if (c == NULL) {
        uint32_t slot;
        int created;
        if (cbd_circuit_register(d, st->name, st->has_config ? &st->config : NULL, st->has_config ? ALL_FIELDS : 0,
                                 CBD_OWNER_NONE, &slot, &created, err, sizeof err) < 0) {
            cbd_log(CBD_LOG_WARN, "store: cannot restore circuit %s: %s", CB_NAME_SHOW(st->name), err);
            return;
        }
        c = &d->circuits.by_slot[slot];
    }
    struct cbd_now now;
    cbd_now(&now);
    if (cbd_policy_apply(&d->env, c, st->state, c->flags, st->opened_at, st->opened_at_ns, st->failure_count,
                         st->lease_expiry, st->open_until_ns, source, &now) < 0)
        cbd_log(CBD_LOG_WARN, "store %s: circuit %s: opened_at %lld / lease %lld / open_until %lld ns are beyond "
                              "what cbd holds (epoch second %lld): ignored", d->cfg.store, CB_NAME_SHOW(st->name),
                (long long)st->opened_at, (long long)st->lease_expiry, (long long)st->open_until_ns,
                (long long)CB_TIME_MAX_S);
}

static void on_probe_result(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry)
{
    struct cbd *d = arg;
    struct cbd_circuit *c = cbd_circuits_find(&d->circuits, name);
    struct cbd_now now;
    if (c == NULL)
        return;
    cbd_now(&now);
    cbd_policy_on_probe_result(&d->env, c, opened_at, granted, lease_expiry, &now);
}

/* Online: every circuit counts as in sync from now (the store reconciles
 * next and reports differences through on_remote), and a HALF_OPEN circuit
 * renews its probe lease at once - one granted host-local during the outage
 * must become the fleet's or give way. Offline: OFFLINE, synced_at kept, so
 * the age of the last agreement shows. */
static void on_health(void *arg, bool online, const char *why)
{
    struct cbd *d = arg;
    struct cbd_now now;
    if (online)
        cbd_log(CBD_LOG_INFO, "store %s is reachable%s", d->cfg.store, d->store_health == 0 ? " again" : "");
    else
        cbd_log(CBD_LOG_WARN, "store %s: %s; running host-local meanwhile", d->cfg.store, why);
    d->store_health = online;
    cbd_now(&now);
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        if (d->circuits.by_slot[i].removed)
            continue;
        cbd_policy_set_sync(&d->circuits.by_slot[i], sync_state(d), online ? now.real_ns / 1000000000 : 0);
        if (online)
            cbd_policy_renew_now(&d->env, &d->circuits.by_slot[i], &now);
    }
}

static void on_synced(void *arg, const char *name, int64_t at_s)
{
    struct cbd *d = arg;
    struct cbd_circuit *c = cbd_circuits_find(&d->circuits, name);
    if (c != NULL && d->env.fleet && d->store_health != 0)
        cbd_policy_set_sync(c, CB_SYNC_OK, at_s);
}

/* The circuits with an outcome drained or a registration since *mark (a
 * CLOCK_MONOTONIC time; 0: since the start), for a store that reads busy
 * circuits first. */
static void on_used(void *arg, uint64_t *mark, void (*each)(void *each_arg, const char *name), void *each_arg)
{
    struct cbd *d = arg;
    struct cbd_now now;
    cbd_now(&now);
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        const struct cbd_circuit *c = &d->circuits.by_slot[i];
        if (!c->removed && c->last_used_ns >= *mark)
            each(each_arg, c->rec->name);
    }
    *mark = now.mono_ns;
}

/* ---- registration and per-circuit config ----------------------------------- */

/* The worker's fields over [defaults], checked: 0 or -EINVAL with err. */
static int check_asked(const struct cbd *d, const cb_config *asked, unsigned mask, cb_config *want, char *err,
                       size_t errsize)
{
    const char *field;
    cb_config a = asked ? *asked : d->cfg.defaults;
    *want = d->cfg.defaults;
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (mask & (1u << i))
            *cb__config_field(want, i) = *cb__config_field(&a, i);
    }
    if (cb__config_check(want, &field) == 0)
        return 0;
    snprintf(err, errsize, "config field %s is out of range", field);
    return -EINVAL;
}

/* A circuit named by a [circuit "NAME"] section exactly: the operator
 * declared it, so it is never removed or expired. */
static const struct cbd_override *declared(const struct cbd *d, const char *name)
{
    for (size_t i = 0; i < d->cfg.noverrides; i++) {
        if (!d->cfg.overrides[i].prefix && strcmp(d->cfg.overrides[i].name, name) == 0)
            return &d->cfg.overrides[i];
    }
    return NULL;
}

/* Takes the circuit out: segment, store, quota, free list. */
static void circuit_drop(struct cbd *d, struct cbd_circuit *c, const char *why)
{
    char name[CB_NAME_MAX + 1];
    snprintf(name, sizeof name, "%s", c->rec->name);
    cbd_segment_remove(&d->seg, c->slot);
    cbd_policy_unload(c);
    c->removed = 1;
    c->epoch = cb_seg_word_epoch(cbd_segment_slot_word(&d->seg, c->slot)); /* its timers are stale now */
    cbd_circuits_owner_count(&d->circuits, c->owner_uid, -1);
    cbd_circuits_free_push(&d->circuits, c->slot, c->incarnation + 1);
    if (d->store_ops->untrack != NULL)
        d->store_ops->untrack(d->store, name);
    d->removals++;
    cbd_log(CBD_LOG_INFO, "removed circuit=%s slot=%u (%s)", CB_NAME_SHOW(name), c->slot, why);
}

/* The circuit's policy: cbd_config_effective of what its worker asked for,
 * under what an operator set on it (cbctl set), which beats the file. */
static void effective(const struct cbd *d, struct cbd_circuit *c, const cb_config *set, unsigned set_mask,
                      cb_config *use)
{
    cbd_config_effective(&d->cfg, c->rec->name, &c->asked, c->asked_mask, use, &c->override);
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (set_mask & (1u << i))
            *cb__config_field(use, i) = *cb__config_field((cb_config *)set, i);
    }
}

int cbd_circuit_configure(struct cbd *d, const char *name, const cb_config *set, unsigned set_mask,
                          char *err, size_t errsize)
{
    struct cbd_circuit *c = cbd_circuits_find(&d->circuits, name);
    cb_config use, merged = c != NULL ? c->set : (cb_config){0};
    const char *bad;
    struct cbd_now now;
    if (c == NULL) {
        snprintf(err, errsize, "no circuit named %s", CB_NAME_SHOW(name));
        return -ENOENT;
    }
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (set_mask & (1u << i))
            *cb__config_field(&merged, i) = *cb__config_field((cb_config *)set, i);
    }
    effective(d, c, &merged, c->set_mask | set_mask, &use);
    if (cb__config_check(&use, &bad) != 0) {
        snprintf(err, errsize, "config field %s is out of range", bad);
        return -EINVAL;
    }
    c->set = merged;
    c->set_mask |= set_mask;
    cbd_now(&now);
    cbd_policy_set_config(&d->env, c, &use, &now);
    return 0;
}

int cbd_circuit_remove(struct cbd *d, const char *name, char *err, size_t errsize)
{
    struct cbd_circuit *c = cbd_circuits_find(&d->circuits, name);
    if (c == NULL) {
        snprintf(err, errsize, "no circuit named %s", CB_NAME_SHOW(name));
        return -ENOENT;
    }
    if (declared(d, name) != NULL) {
        snprintf(err, errsize, "circuit %s is declared by a [circuit \"%s\"] section of %s: remove the section and "
                 "reload first", CB_NAME_SHOW(name), CB_NAME_SHOW(name), d->cfg.file[0] ? d->cfg.file : "the configuration");
        return -EBUSY;
    }
    circuit_drop(d, c, "removed by an operator");
    return 0;
}

/* Removes CLOSED circuits nobody used for circuit_expiry_s (never forced,
 * disabled or declared ones). Runs every quarter of the expiry, at most
 * every minute. */
static void expire(uv_timer_t *t)
{
    struct cbd *d = t->data;
    struct cbd_now now;
    uint64_t limit = (uint64_t)d->cfg.circuit_expiry_s * 1000000000ull;
    if (limit == 0)
        return;
    cbd_now(&now);
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        struct cbd_circuit *c = &d->circuits.by_slot[i];
        if (c->removed || c->state != CB_CLOSED || c->flags != 0 || now.mono_ns - c->last_used_ns < limit ||
            declared(d, c->rec->name) != NULL)
            continue;
        circuit_drop(d, c, "unused for circuit_expiry_s");
        d->expired++;
    }
}

static void expiry_set_interval(struct cbd *d);

static int expiry_start(struct cbd *d)
{
    int rc = uv_timer_init(&d->loop, &d->expiry);
    if (rc < 0)
        return rc;
    d->expiry.data = d;
    d->expiry_started = 1;
    expiry_set_interval(d);
    return 0;
}

static void expiry_set_interval(struct cbd *d)
{
    uint64_t ms = (uint64_t)d->cfg.circuit_expiry_s * 250;
    if (ms > 60000)
        ms = 60000;
    if (!d->expiry_started)
        return;
    if (ms == 0)
        uv_timer_stop(&d->expiry);
    else
        uv_timer_start(&d->expiry, expire, ms, ms);
}

int cbd_circuit_register(struct cbd *d, const char *name, const cb_config *asked, unsigned asked_mask,
                         uint32_t owner_uid, uint32_t *slot, int *created, char *err, size_t errsize)
{
    cb_config want, use;
    const struct cbd_override *section;
    struct cbd_circuit *c;
    if (cb__name_check(name) < 0) {
        snprintf(err, errsize, "invalid circuit name (expected 1..%u bytes of UTF-8)",
                 CB_NAME_MAX);
        return -EINVAL;
    }
    if (check_asked(d, asked, asked_mask, &want, err, errsize) < 0)
        return -EINVAL;
    if ((c = cbd_circuits_find(&d->circuits, name)) != NULL) {
        struct cbd_now now;
        cbd_now(&now);
        c->last_used_ns = now.mono_ns; /* asked for: in use */
        *slot = c->slot;
        *created = 0;
        return 0;
    }
    if (cbd_circuits_quota_reached(&d->circuits, owner_uid, d->cfg.max_circuits_per_uid)) {
        snprintf(err, errsize, "uid %u already registered %u circuits, its quota (raise the "
                 "`max_circuits_per_uid` option, or `cbctl remove` circuits it no longer uses)",
                 owner_uid, d->cfg.max_circuits_per_uid);
        return -EDQUOT;
    }
    if (cbd_circuits_grow(&d->circuits, d->circuits.n + 1) < 0) {
        snprintf(err, errsize, "out of memory registering a circuit");
        return -ENOMEM;
    }
    cbd_config_effective(&d->cfg, name, &want, asked_mask, &use, &section);
    uint32_t reuse = cbd_circuits_free_peek(&d->circuits);
    int rc = cbd_segment_add(&d->seg, name, &use, owner_uid, reuse, slot);
    if (rc < 0) {
        snprintf(err, errsize, "segment full: %u circuits (raise the `capacity` option, or `cbctl remove` "
                 "circuits no longer used, or set `circuit_expiry_s`)", d->seg.hdr->capacity);
        return rc;
    }
    if (reuse != UINT32_MAX)
        cbd_circuits_free_pop(&d->circuits);
    struct cbd_now now;
    cbd_now(&now);
    if (*slot >= d->circuits.n)
        d->circuits.n = *slot + 1;
    c = &d->circuits.by_slot[*slot];
    cbd_policy_load(&d->env, c, *slot, CB_SEG_RECORD(d->seg.hdr, *slot), CB_LANES_PERMIT(d->seg.lanes, *slot), &now);
    c->asked = want;
    c->asked_mask = asked_mask;
    c->override = section;
    c->owner_uid = owner_uid;
    c->last_used_ns = now.mono_ns;
    cbd_circuits_owner_count(&d->circuits, owner_uid, +1);
    cbd_policy_set_sync(c, sync_state(d), 0);
    *created = 1;
    cbd_log(CBD_LOG_INFO, "registered circuit=%s slot=%u failure_threshold=%u success_threshold=%u "
                          "half_open_max_probes=%u recovery_timeout_ms=%u probe_lease_ms=%u%s%s",
            CB_NAME_SHOW(name), *slot, use.failure_threshold, use.success_threshold, use.half_open_max_probes,
            use.recovery_timeout_ms, use.probe_lease_ms, section ? " section=" : "", section ? section->name : "");
    d->store_ops->track(d->store, name, &want);
    return 0;
}

/* Every circuit's policy from the configuration in force; how many changed. */
static uint32_t reconfigure_all(struct cbd *d)
{
    struct cbd_now now;
    uint32_t changed = 0;
    cbd_now(&now);
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        struct cbd_circuit *c = &d->circuits.by_slot[i];
        cb_config use;
        if (c->removed)
            continue;
        effective(d, c, &c->set, c->set_mask, &use);
        if (memcmp(&use, &c->cfg, sizeof use) == 0)
            continue;
        cbd_log(CBD_LOG_INFO, "reconfigured circuit=%s failure_threshold=%u success_threshold=%u "
                              "half_open_max_probes=%u recovery_timeout_ms=%u probe_lease_ms=%u",
                CB_NAME_SHOW(c->rec->name), use.failure_threshold, use.success_threshold, use.half_open_max_probes,
                use.recovery_timeout_ms, use.probe_lease_ms);
        cbd_policy_set_config(&d->env, c, &use, &now);
        changed++;
    }
    return changed;
}

/* The daemon's view of every circuit an adopted segment holds. Until the
 * store says otherwise, the record's policy counts as what was asked. */
static int load_adopted(struct cbd *d)
{
    /* Relaxed: written by the daemon that made the segment, which has exited. */
    uint32_t n = atomic_load_explicit(&d->seg.hdr->circuit_count, memory_order_relaxed);
    struct cbd_now now;
    if (cbd_circuits_grow(&d->circuits, n) < 0)
        return -ENOMEM;
    cbd_now(&now);
    for (uint32_t i = 0; i < n; i++) {
        struct cbd_circuit *c = &d->circuits.by_slot[i];
        struct cb_seg_vdata v;
        if (cbd_segment_roll_forward(&d->seg, i, &v) && d->nrolled < sizeof d->rolled / sizeof d->rolled[0])
            d->rolled[d->nrolled++] = i;
        cbd_policy_load(&d->env, c, i, CB_SEG_RECORD(d->seg.hdr, i), CB_LANES_PERMIT(d->seg.lanes, i), &now);
        c->last_used_ns = now.mono_ns;
        if (c->flags & CB_SEG_F_REMOVED) {
            c->removed = 1;
            cbd_circuits_free_push(&d->circuits, i, c->incarnation + 1);
            continue;
        }
        c->asked = c->cfg;
        c->asked_mask = ALL_FIELDS;
        c->owner_uid = atomic_load_explicit(&c->rec->owner_uid, memory_order_relaxed);
        cbd_circuits_owner_count(&d->circuits, c->owner_uid, +1);
        if ((c->flags & CB_SEG_F_FORCED) && !(c->state == CB_OPEN && c->open_until_ns != 0))
            cbd_log(CBD_LOG_WARN, "circuit=%s is forced %s from before this start; it stays so until "
                                  "`cbctl reset %s`", CB_NAME_SHOW(c->rec->name), cb__state_name(c->state), CB_NAME_SHOW(c->rec->name));
    }
    d->circuits.n = d->circuits.nadopted = n;
    return 0;
}

/* After a fleet store's restore: an adopted circuit the store did not
 * report is written if it is open (the fleet lost it, or never got it
 * before this daemon died), and every adopted circuit is tracked, so the
 * fleet's changes reach it as they reach registered ones. */
static void fleet_adopt(struct cbd *d)
{
    for (uint32_t i = 0; i < d->circuits.nadopted; i++) {
        struct cbd_circuit *c = &d->circuits.by_slot[i];
        if (c->removed)
            continue;
        cb_config asked = asked_filled(d, c);
        if (d->env.fleet && !c->restore_seen && c->state != CB_CLOSED &&
            !(c->flags & (CB_SEG_F_FORCED | CB_SEG_F_DISABLED)))
            write_through(d, c, 0);
        d->store_ops->track(d->store, c->rec->name, &asked);
    }
}

/* A transition the previous daemon committed but did not finish: its state
 * word or history entry was written at adoption (cbd_segment_roll_forward);
 * here it is logged and told to the store and the hooks like any other. */
static void announce_rolled_forward(struct cbd *d)
{
    struct cbd_now now;
    cbd_now(&now);
    for (uint32_t k = 0; k < d->nrolled; k++) {
        struct cbd_circuit *c = &d->circuits.by_slot[d->rolled[k]];
        cb_state from = (cb_state)c->pub.from;
        cb_source source = (cb_source)c->pub.source;
        cbd_log(CBD_LOG_WARN, "completed the transition of circuit=%s from=%s to=%s epoch=%u that the previous "
                              "daemon committed but did not publish", CB_NAME_SHOW(c->rec->name), cb__state_name(from),
                cb__state_name(c->state), c->epoch);
        count_transition(d, c->slot, from, c->state);
        if (!c->removed && !from_the_fleet(from, c->state, source))
            write_through(d, c, 0);
        if (!c->removed)
            announce(d, c, from, source, &now);
    }
    d->nrolled = 0;
}

/* ---- reload ------------------------------------------------------------------ */

static uint64_t mono_us(void)
{
    struct cbd_now now;
    cbd_now(&now);
    return now.mono_ns / 1000;
}

static void send_ready(struct cbd *d)
{
    cbd_notify_sendf(&d->notify, "READY=1\nSTATUS=serving %u circuits (instance %s)", d->circuits.n,
                     d->cfg.instance);
}

/* What a reload may change, from d->cfg (the new configuration). */
static uint32_t apply_config(struct cbd *d)
{
    cbd_log_threshold = (int)d->cfg.log_level;
    cbd_drain_set_intervals(&d->drain);
    if (d->hooks != NULL)
        cbd_hooks_set_limits(d->hooks, d->cfg.hook_max_running, d->cfg.hook_timeout_ms, d->cfg.hook_queue_max);
    cbd_control_configure(&d->control);
    expiry_set_interval(d);
    return reconfigure_all(d);
}

int cbd_reload(struct cbd *d, char *err, size_t errsize)
{
    const char *file = d->cfg.file[0] ? d->cfg.file : "(no configuration file)";
    struct cbd_config next;
    /* MONOTONIC_USEC: what systemd's Type=notify-reload matches the reload with. */
    cbd_notify_sendf(&d->notify, "RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading %s",
                     (unsigned long long)mono_us(), file);
    int rc = cbd_config_reload(&d->cfg, &next, err, errsize);
    if (rc < 0) {
        d->counters.reloads_failed++;
        cbd_log(CBD_LOG_ERROR, "reload of %s refused: the running configuration stays", file);
    } else {
        struct cbd_config old = d->cfg;
        d->cfg = next;
        rc = (int)apply_config(d); /* repoints every circuit's section into the new cfg ... */
        cbd_config_free(&old);     /* ... before the old one goes */
        d->counters.reloads++;
        cbd_log(CBD_LOG_INFO, "reloaded %s: %d circuits reconfigured", file, rc);
    }
    send_ready(d);
    return rc;
}

static void on_sighup(uv_signal_t *s, int signum)
{
    struct cbd *d = s->data;
    char err[1024];
    (void)signum;
    if (!d->ready) {
        cbd_log(CBD_LOG_INFO, "received SIGHUP while starting: reloading once ready");
        d->reload_pending = 1;
        return;
    }
    cbd_log(CBD_LOG_INFO, "received SIGHUP: reloading");
    cbd_reload(d, err, sizeof err);
}

/* ---- start and stop ------------------------------------------------------- */

static void on_store_closed(void *arg)
{
    struct cbd *d = arg;
    cbd_log(CBD_LOG_DEBUG, "store closed");
    d->store = NULL;
}

static void on_hooks_closed(void *arg)
{
    struct cbd *d = arg;
    d->hooks = NULL;
}

void cbd_stop(struct cbd *d, int exit_code)
{
    if (d->stopping)
        return;
    d->stopping = 1;
    d->exit_code = exit_code;
    cbd_notify_send(&d->notify, "STOPPING=1");
    cbd_control_close(&d->control);
    cbd_metrics_stop(d->metrics); /* a scrape waiting for the loop is answered 503 */
    d->metrics = NULL;
    cbd_doorbell_stop(&d->bell);
    if (d->drain.started)
        cbd_drain_all(&d->drain); /* the final drain: outcomes recorded up to now count */
    cbd_drain_stop(&d->drain);
    if (d->hooks != NULL)
        cbd_hooks_close(d->hooks, on_hooks_closed, d);
    cbd_timers_close(&d->timers);
    cbd_segment_stop_heartbeat(&d->seg);
    if (d->watchdog_started)
        uv_close((uv_handle_t *)&d->watchdog, NULL);
    d->watchdog_started = 0;
    if (d->expiry_started)
        uv_close((uv_handle_t *)&d->expiry, NULL);
    d->expiry_started = 0;
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
    if (d->store != NULL)
        d->store_ops->close(d->store, on_store_closed, d);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct cbd *d = s->data;
    cbd_log(CBD_LOG_INFO, "received %s: stopping", strsignal(signum));
    cbd_stop(d, 0);
}

static void on_watchdog(uv_timer_t *t)
{
    struct cbd *d = t->data;
    cbd_notify_send(&d->notify, "WATCHDOG=1");
}

/* WATCHDOG=1 every half of $WATCHDOG_USEC, from a loop turn: a hung loop stops the pings. */
static int watchdog_start(struct cbd *d)
{
    uint64_t ms = cbd_notify_watchdog_interval_ms(&d->notify);
    if (ms == 0)
        return 0;
    int rc = uv_timer_init(&d->loop, &d->watchdog);
    if (rc < 0)
        return rc;
    d->watchdog.data = d;
    d->watchdog_started = 1;
    cbd_log(CBD_LOG_INFO, "systemd watchdog: WATCHDOG=1 every %llu ms", (unsigned long long)ms);
    on_watchdog(&d->watchdog);
    return uv_timer_start(&d->watchdog, on_watchdog, ms, ms);
}

/* A worker rang: drain now. */
static void on_doorbell(void *arg)
{
    cbd_drain_all(arg);
}

static int doorbell_start(struct cbd *d)
{
    return cbd_doorbell_start(&d->bell, &d->loop, &d->seg.lanes->doorbell, d->cfg.socket, d->cfg.socket_mode,
                              d->cfg.socket_group, on_doorbell, &d->drain);
}

/* The /metrics endpoint, once the daemon serves. It is an observer: an
 * address that cannot be bound is logged and the daemon serves circuits
 * without it. */
static void metrics_start(struct cbd *d)
{
    char why[256];
    if (d->cfg.metrics_listen[0] == '\0')
        return;
    int rc = cbd_metrics_start(&d->metrics, &d->loop, d->cfg.metrics_listen, cbd_ops_metrics_fill, &d->ops, why,
                               sizeof why);
    if (rc < 0) {
        d->metrics = NULL;
        cbd_log(CBD_LOG_ERROR, "%s: serving circuits without the metrics endpoint", why);
    }
}

static void on_restored(void *arg, int rc)
{
    struct cbd *d = arg;
    char err[1024];
    d->restoring = 0;
    if (rc < 0)
        cbd_log(CBD_LOG_WARN, "store %s could not be read (%s): starting with the segment's circuits only",
                d->cfg.store, strerror(-rc));
    if (d->stopping)
        return;
    fleet_adopt(d);
    reconfigure_all(d);
    if (cbd_control_listen(&d->control) < 0 || cbd_drain_start(&d->drain) < 0 || doorbell_start(d) < 0 ||
        cbd_segment_heartbeat_start(&d->seg, &d->loop, d->cfg.heartbeat_ms) < 0 || watchdog_start(d) < 0 ||
        expiry_start(d) < 0) {
        cbd_log(CBD_LOG_ERROR, "startup failed: stopping");
        cbd_stop(d, 1);
        return;
    }
    cbd_segment_publish(&d->seg);
    d->ready = 1;
    send_ready(d);
    metrics_start(d);
    cbd_log(CBD_LOG_INFO, "ready: instance=%s segment=%s capacity=%u socket=%s store=%s circuits=%u",
            d->cfg.instance, d->seg.state_name, d->cfg.capacity, d->cfg.socket, d->cfg.store, d->circuits.n);
    if (d->reload_pending)
        cbd_reload(d, err, sizeof err);
}

static void start_signals(struct cbd *d)
{
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sighup);
    d->sigterm.data = d->sigint.data = d->sighup.data = d;
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sighup, on_sighup, SIGHUP);
}

/* ---- the control socket's operations ---------------------------------------- */

static int ops_register(void *arg, const char *name, const cb_config *asked, unsigned asked_mask,
                        uint32_t owner_uid, uint32_t *slot, int *created, char *err, size_t errsize)
{
    return cbd_circuit_register(arg, name, asked, asked_mask, owner_uid, slot, created, err, errsize);
}

static int ops_configure(void *arg, const char *name, const cb_config *set, unsigned set_mask, char *err,
                         size_t errsize)
{
    return cbd_circuit_configure(arg, name, set, set_mask, err, errsize);
}

static int ops_remove(void *arg, const char *name, char *err, size_t errsize)
{
    return cbd_circuit_remove(arg, name, err, errsize);
}

static int ops_reload(void *arg, char *err, size_t errsize)
{
    return cbd_reload(arg, err, errsize);
}

static void control_init(struct cbd *d)
{
    d->ops = (struct cbd_ops){
        .circuits = &d->circuits, .seg = &d->seg, .env = &d->env, .control = &d->control, .drain = &d->drain,
        .bell = &d->bell, .hooks = &d->hooks, .store_ops = &d->store_ops, .store = &d->store,
        .store_health = &d->store_health, .counters = &d->counters, .ready = &d->ready, .metrics = &d->metrics,
        .register_circuit = ops_register,
        .remove_circuit = ops_remove, .configure_circuit = ops_configure, .reload = ops_reload, .arg = d,
    };
    cbd_control_init(&d->control, &d->loop, &d->cfg, cbd_ops_table, cbd_ops_count, &d->ops);
}

/* The jitter of backoff waits: the kernel's random bits (one call per
 * opening with backoff; never blocks once the pool was initialised at
 * boot). */
static uint64_t random64(void *arg)
{
    uint64_t r = 0;
    (void)arg;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)rand() << 32 ^ (uint64_t)rand(); /* early boot: any spread will do */
    return r;
}

int cbd_open(struct cbd *d)
{
    int rc;
    d->env = (struct cbd_policy_env){.arg = d, .transitioned = on_transitioned, .try_probe = on_try_probe,
                                     .arm = on_arm, .history_next = on_history_next,
                                     .electable = on_electable, .release = on_release, .random = random64};
    d->env.fleet = d->store_ops != NULL && strcmp(d->store_ops->scheme, "local") != 0;
    cbd_circuits_init(&d->circuits, &d->seg);
    cbd_drain_init(&d->drain, &d->loop, &d->seg, &d->circuits, &d->env, &d->cfg);
    control_init(d);
    if ((rc = cbd_segment_open(&d->seg, &d->cfg)) < 0 ||
        (rc = cbd_timers_init(&d->timers, &d->loop, on_deadline, d)) < 0)
        return rc;
    return load_adopted(d);
}

/* Steps 1-2 of the start; 0, or the exit code. */
static int start(struct cbd *d)
{
    const char *err = NULL;
    struct cbd_store_hooks hooks = {.loop = &d->loop, .arg = d, .instance = d->cfg.instance, .remote = on_remote,
                                    .probe_result = on_probe_result, .health = on_health, .synced = on_synced,
                                    .used = on_used};
    d->store_ops = cbd_store_find(d->cfg.store);
    if (cbd_open(d) < 0)
        return 1;
    if (d->store_ops == NULL || d->store_ops->create(&d->store, d->cfg.store, &hooks, &err) < 0) {
        /* not the URI: a refused one may carry a password */
        cbd_log(CBD_LOG_ERROR, "cannot use the store: %s", err ? err : "unknown store scheme");
        return 2;
    }
    /* The local store starts online (its state file's directory is ours)
     * and reports only a change: a fleet store's health is unknown (-1)
     * until its first report. */
    if (!d->env.fleet)
        d->store_health = 1;
    if (cbd_hooks_create(&d->hooks, &d->loop, d->cfg.instance, d->cfg.hook_max_running, d->cfg.hook_timeout_ms,
                         d->cfg.hook_queue_max) < 0) {
        cbd_log(CBD_LOG_ERROR, "out of memory creating the hook runner");
        return 1;
    }
    start_signals(d);
    announce_rolled_forward(d);
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
    d->cfg = *cfg; /* the lists in cfg are the daemon's from here on */
    d->store_health = -1;
    d->counters.start_ns = mono_us() * 1000;
    signal(SIGPIPE, SIG_IGN); /* a client that hangs up is a write error, not a death */
    int rc = cbd_notify_init(&d->notify);
    if (rc < 0)
        cbd_log(CBD_LOG_WARN, "NOTIFY_SOCKET is set but unusable (%s): not telling systemd anything",
                strerror(-rc));
    if ((rc = uv_loop_init(&d->loop)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot create the event loop: %s", uv_strerror(rc));
        free(d);
        return 1;
    }
    rc = start(d);
    if (rc != 0) {
        d->exit_code = rc;
        d->stopping = 1;
        cbd_timers_close(&d->timers);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
    rc = d->exit_code;
    cbd_segment_close(&d->seg);
    if (uv_loop_close(&d->loop) != 0)
        cbd_log(CBD_LOG_WARN, "event loop closed with handles still open");
    cbd_log(CBD_LOG_INFO, "stopped (exit code %d)", rc);
    cbd_notify_close(&d->notify);
    cbd_config_free(&d->cfg);
    for (uint32_t i = 0; i < d->circuits.n; i++)
        cbd_policy_unload(&d->circuits.by_slot[i]);
    cbd_circuits_free(&d->circuits);
    free(d);
    return rc;
}
