/*
 * ops.c - the control operations: each request, once the server (control.c)
 * has framed it, checked the peer's limits and, for an admin op, the
 * peer's rights, is mapped here to what it does, and its reply is filled.
 *
 * Anyone who can connect may register, list, show, subscribe, stats,
 * metrics, version and ping; the admin ops (force_open, force_closed, reset,
 * disable, enable, set, remove, reload) are marked so in the table, and the
 * server runs them for admins only. Admins' circuits do not count against
 * max_circuits_per_uid. Every admin action is logged with the peer's uid
 * and pid.
 *
 * list and metrics answer with as many circuits as fit in one frame and
 * say where to go on ("next"); show and list read the daemon's own view of a circuit.
 *
 * Owns nothing but the table: it reads the circuits registry, the segment
 * and the subsystems' counters it is given (struct cbd_ops), sends the
 * operator's actions to the policy, and asks the daemon (cbd.c) for what
 * touches several subsystems at once - registering, removing, reloading.
 * It must not touch connections, sockets or the store itself, and changes
 * nothing of what it reads for stats.
 */
#include "ops.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "log.h"

/* The request's "name": 0, or an error reply. */
static int get_name(const msgpack_object *req, char *name, struct cbd_reply *r)
{
    int rc = cb__mp_get_str(req, "name", name, CB_NAME_MAX + 1);
    if (rc == -ENOENT)
        return cbd_reply_fail(r, -EINVAL, "missing field 'name' (a circuit name)");
    if (rc == -ENAMETOOLONG)
        return cbd_reply_fail(r, -EINVAL, "field 'name' is longer than %u bytes", CB_NAME_MAX);
    if (rc < 0)
        return cbd_reply_fail(r, -EINVAL, "field 'name' must be a string");
    return 0;
}

/* The circuit the request names: 0 and *out, or an error reply. */
static int get_circuit(const struct cbd_ops *o, const msgpack_object *req, struct cbd_reply *r, struct cbd_circuit **out)
{
    char name[CB_NAME_MAX + 1];
    if (get_name(req, name, r) < 0)
        return r->err;
    if ((*out = cbd_circuits_find(o->circuits, name)) == NULL)
        return cbd_reply_fail(r, -ENOENT, "no circuit named '%s'", CB_NAME_SHOW(name));
    return 0;
}

/* The optional "config" map of register: the fields given go into *cfg and *mask. */
/* "failure_threshold, success_threshold, ..." */
#define POLICY_FIELD_NAME(n, d, lo, hi, h) ", " #n
#define POLICY_FIELD_LIST (&(CB_POLICY_FIELDS(POLICY_FIELD_NAME))[2]) /* without the first ", " */

static int parse_config(const msgpack_object *m, cb_config *cfg, unsigned *mask, struct cbd_reply *r)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return cbd_reply_fail(r, -EINVAL, "field 'config' must be a map");
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        unsigned f = 0;
        while (f < CB_POLICY_NFIELDS &&
               !(k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(cb__policy_fields[f].name) &&
                 memcmp(k->via.str.ptr, cb__policy_fields[f].name, k->via.str.size) == 0))
            f++;
        if (f == CB_POLICY_NFIELDS)
            return cbd_reply_fail(r, -EINVAL, "unknown field in 'config' (expected %s)", POLICY_FIELD_LIST);
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
            return cbd_reply_fail(r, -EINVAL, "field 'config.%s' must be an unsigned 32-bit integer", cb__policy_fields[f].name);
        *cb__config_field(cfg, f) = (uint32_t)v->via.u64;
        *mask |= 1u << f;
    }
    return 0;
}

static int op_register(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    char name[CB_NAME_MAX + 1];
    cb_config cfg = {0};
    unsigned mask = 0;
    uint32_t slot;
    int created;
    if (get_name(req, name, r) < 0)
        return r->err;
    const msgpack_object *m = cb__mp_get(req, "config");
    if (m != NULL && m->type != MSGPACK_OBJECT_NIL && parse_config(m, &cfg, &mask, r) < 0)
        return r->err;
    const struct cbd_ops *o = arg;
    uint32_t owner = p->admin ? CBD_OWNER_NONE : p->uid; /* admins have no quota */
    int rc = o->register_circuit(o->arg, name, &cfg, mask, owner, &slot, &created, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    cbd_reply_u64(r, "slot", slot);
    cb__mp_kv_bool(&r->pk, "created", created);
    r->nfields++;
    return 0;
}

static int op_version(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    (void)arg;
    (void)p;
    (void)req;
    cb__mp_kv_str(&r->pk, "version", CB_VERSION_STRING);
    cbd_reply_u64(r, "layout", CB_SEG_MAJOR);
    r->nfields++;
    return 0;
}

static int op_ping(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    (void)arg;
    (void)p;
    (void)req;
    (void)r;
    return 0;
}

static void kv_u64s(struct cbd_reply *r, const char *const *keys, const uint64_t *vals, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cbd_reply_u64(r, keys[i], vals[i]);
}

/* The store's own counters, as store_<name>. */
static void emit_store_stat(void *arg, const char *name, uint64_t value)
{
    struct cbd_reply *r = arg;
    char key[64];
    snprintf(key, sizeof key, "store_%s", name);
    cb__mp_kv_u64(&r->pk, key, value);
    r->nfields++;
}

static int op_stats(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    const struct cbd_control *ctl = o->control;
    const struct cbd_drain *dr = o->drain;
    const struct cbd_counters *n = o->counters;
    struct cbd_hooks_stats hs = {0};
    struct cbd_now now;
    (void)p;
    (void)req;
    if (*o->hooks != NULL)
        cbd_hooks_stats_get(*o->hooks, &hs);
    cbd_now(&now);
    static const char *const keys[] = {
        "circuits", "events_drained", "events_invalid", "events_stale", "lanes_in_use", "lanes_reclaimed",
        "lane_overruns", "lane_drops", "calls_unattributed", "frames_bad", "connections", "connections_total", "connections_refused",
        "connections_refused_per_uid", "connections_refused_admin_reserved", "connections_refused_max_connections",
        "connections_lingering", "connections_closed_frame_timeout", "connections_closed_idle",
        "connections_closed_bad_frame", "connections_closed_slow_reader", "accept_errors", "subscribers", "transitions", "hooks_started", "hooks_succeeded", "hooks_failed", "hooks_timed_out",
        "hooks_dropped", "hooks_spawn_errors", "reloads", "reloads_failed", "doorbell_fifo", "doorbell_futex",
        "uptime_s",
    };
    const uint64_t vals[] = {
        o->circuits->n, dr->events_drained, dr->events_invalid, dr->events_stale,
        cbd_drain_lanes_in_use(dr), dr->lanes_reclaimed, dr->lane_overruns, cbd_drain_lane_drops(dr),
        dr->calls_unattributed,
        ctl->frames_bad, ctl->nconns, ctl->connections_total, ctl->connections_refused,
        ctl->ends[CBD_CONN_REFUSED_PER_UID], ctl->ends[CBD_CONN_REFUSED_ADMIN_RESERVED],
        ctl->ends[CBD_CONN_REFUSED_MAX], ctl->nlingering, ctl->ends[CBD_CONN_FRAME_TIMEOUT],
        ctl->ends[CBD_CONN_IDLE], ctl->ends[CBD_CONN_BAD_FRAME], ctl->ends[CBD_CONN_SLOW_READER],
        ctl->accept_errors, ctl->nsubscribers, n->transitions, hs.started, hs.succeeded, hs.failed, hs.timed_out, hs.dropped,
        hs.spawn_errors, n->reloads, n->reloads_failed, o->bell->rings_fifo, o->bell->rings_futex,
        (now.mono_ns - n->start_ns) / 1000000000u,
    };
    _Static_assert(sizeof keys / sizeof keys[0] == sizeof vals / sizeof vals[0], "a stat without a name");
    kv_u64s(r, keys, vals, sizeof vals / sizeof vals[0]);
    cb__mp_kv_str(&r->pk, "store", (*o->store_ops)->scheme);
    cb__mp_kv_bool(&r->pk, "store_online", *o->store_health == 1); /* -1: not reported yet */
    r->nfields += 2;
    if ((*o->store_ops)->stats != NULL && *o->store != NULL)
        (*o->store_ops)->stats(*o->store, emit_store_stat, r);
    return 0;
}

/* ---- metrics ----------------------------------------------------------------- */

/* The store's error count, if it keeps one (its stats name it "errors"). */
static void take_store_errors(void *arg, const char *name, uint64_t value)
{
    struct cbd_metrics_store *st = arg;
    if (strcmp(name, "errors") == 0) {
        st->counts_errors = true;
        st->errors = value;
    }
}

static void fill_circuit(struct cbd_metrics_circuit *row, const struct cbd_circuit *c)
{
    memset(row, 0, sizeof *row);
    row->name = c->rec->name;
    row->state = c->state;
    row->forced = (c->flags & CB_SEG_F_FORCED) != 0;
    row->disabled = (c->flags & CB_SEG_F_DISABLED) != 0;
    row->consecutive_failures = c->state == CB_CLOSED ? c->streak : c->trip_failure_count;
    row->opened_at_ns = c->state == CB_CLOSED ? 0 : c->opened_at_ns;
    row->sync_state = c->pub.sync_state;
    row->synced_at = c->pub.synced_at;
    memcpy(row->transitions, c->transitions, sizeof row->transitions);
    row->calls[CBD_CALL_SUCCEEDED] = c->pub.total_successes;
    row->calls[CBD_CALL_FAILED] = c->pub.total_failures;
    row->calls[CBD_CALL_IGNORED] = c->pub.total_ignored;
    /* allowed: the calls whose outcome was recorded (probes' included);
     * an allowed call never recorded is not known to the daemon */
    row->calls[CBD_CALL_ALLOWED] = c->pub.total_successes + c->pub.total_failures + c->pub.total_ignored;
    row->calls[CBD_CALL_REJECTED] = c->rejected;
    row->calls[CBD_CALL_PROBES] = c->probes;
}

/* Everything but the circuits. */
static void fill_daemon(const struct cbd_ops *o, struct cbd_metrics_snapshot *s)
{
    const struct cbd_control *ctl = o->control;
    const struct cbd_drain *dr = o->drain;
    struct cbd_now now;
    cbd_now(&now);
    s->now_ns = now.real_ns;
    s->version = CB_VERSION_STRING;
    s->layout = CB_SEG_MAJOR;
    s->instance = o->seg->hdr->instance;
    s->start_time_ns = now.real_ns - (int64_t)(now.mono_ns - o->counters->start_ns);
    s->calls_counted = CBD_CALL_BIT(CBD_CALL_SUCCEEDED) | CBD_CALL_BIT(CBD_CALL_FAILED) | CBD_CALL_BIT(CBD_CALL_IGNORED) |
                       CBD_CALL_BIT(CBD_CALL_ALLOWED) | CBD_CALL_BIT(CBD_CALL_REJECTED) | CBD_CALL_BIT(CBD_CALL_PROBES);
    s->store.scheme = (*o->store_ops)->scheme;
    s->store.online = *o->store_health < 0 ? -1 : *o->store_health == 1;
    if ((*o->store_ops)->stats != NULL && *o->store != NULL)
        (*o->store_ops)->stats(*o->store, take_store_errors, &s->store);
    s->lanes = (struct cbd_metrics_lanes){
        .drained = dr->events_drained, .invalid = dr->events_invalid, .stale = dr->events_stale,
        .dropped = cbd_drain_lane_drops(dr), .reclaimed = dr->lanes_reclaimed,
        .in_use = (uint32_t)cbd_drain_lanes_in_use(dr),
    };
    if (*o->hooks != NULL)
        cbd_hooks_stats_get(*o->hooks, &s->hooks);
    s->control = (struct cbd_metrics_control){
        .open = ctl->nconns, .admitted = ctl->connections_total, .accept_errors = ctl->accept_errors,
    };
    memcpy(s->control.ends, ctl->ends, sizeof s->control.ends);
}

int cbd_ops_metrics_fill(void *arg, struct cbd_metrics_snapshot *s)
{
    const struct cbd_ops *o = arg;
    if (!*o->ready)
        return -EAGAIN;
    fill_daemon(o, s);
    for (uint32_t i = 0; i < o->circuits->n; i++) {
        struct cbd_metrics_circuit *row;
        if (o->circuits->by_slot[i].removed)
            continue;
        if ((row = cbd_metrics_snapshot_add_circuit(s)) == NULL)
            return -ENOMEM;
        fill_circuit(row, &o->circuits->by_slot[i]);
    }
    return 0;
}

/* The snapshot the endpoint would render, in pages: "daemon" (the numbers
 * of the whole daemon, with the endpoint's answers while it runs), the
 * circuits from "offset" on as many as fit in one frame, and "next" when
 * they did not all fit (docs/protocol.md). */
static int op_metrics(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    const struct cbd_circuits *t = o->circuits;
    struct cbd_metrics_snapshot s;
    uint64_t offset = 0;
    uint32_t i, n = 0;
    (void)p;
    if (cb__mp_get_u64(req, "offset", &offset) == -EINVAL)
        return cbd_reply_fail(r, -EINVAL, "field 'offset' must be an unsigned integer");
    if (!*o->ready)
        return cbd_reply_fail(r, -EAGAIN, "the daemon is starting: try again");
    cbd_metrics_snapshot_init(&s);
    fill_daemon(o, &s);
    if (*o->metrics != NULL) {
        s.has_http = true;
        cbd_metrics_responses(*o->metrics, s.http_responses);
    }
    cb__mp_pack_str(&r->pk, "daemon");
    cbd_metrics_pack_daemon(&r->pk, &s);
    r->nfields++;
    msgpack_sbuffer rows;
    msgpack_packer pk;
    msgpack_sbuffer_init(&rows);
    msgpack_packer_init(&pk, &rows, msgpack_sbuffer_write);
    for (i = offset < t->n ? (uint32_t)offset : t->n; i < t->n; i++) {
        struct cbd_metrics_circuit row;
        size_t before = rows.size;
        if (t->by_slot[i].removed)
            continue;
        fill_circuit(&row, &t->by_slot[i]);
        cbd_metrics_pack_circuit(&pk, &row);
        if (rows.size > CB_FRAME_MAX - 2048) { /* room for the daemon's numbers and the rest */
            rows.size = before;
            break;
        }
        n++;
    }
    cb__mp_pack_str(&r->pk, "circuits");
    msgpack_pack_array(&r->pk, n);
    msgpack_sbuffer_write(&r->body, rows.data, rows.size);
    msgpack_sbuffer_destroy(&rows);
    r->nfields++;
    if (i < t->n)
        cbd_reply_u64(r, "next", i);
    return 0;
}

/* One circuit as show and list give it: CIRCUIT_FIELDS pairs, from the
 * daemon's own view (the record's counters are its own stores). */
#define CIRCUIT_FIELDS 16
static void pack_circuit_fields(msgpack_packer *pk, const struct cbd_circuit *c)
{
    struct cb_seg_record *rec = c->rec;
    unsigned sync = c->pub.sync_state;
    cb_config cfg = c->cfg;
    cb__mp_kv_str(pk, "name", rec->name);
    cb__mp_kv_u64(pk, "slot", c->slot);
    cb__mp_kv_str(pk, "state", cb__state_name(c->state));
    cb__mp_kv_u64(pk, "epoch", c->epoch);
    cb__mp_kv_u64(pk, "failure_count", c->state == CB_CLOSED ? c->streak : c->trip_failure_count);
    cb__mp_kv_i64(pk, "opened_at", c->opened_at);
    cb__mp_kv_bool(pk, "forced", (c->flags & CB_SEG_F_FORCED) != 0);
    cb__mp_kv_bool(pk, "disabled", (c->flags & CB_SEG_F_DISABLED) != 0);
    cb__mp_kv_i64(pk, "forced_until", cbd_policy_forced_until_ms(c));
    cb__mp_kv_str(pk, "sync", cb__sync_name(sync));
    cb__mp_kv_i64(pk, "synced_at", c->pub.synced_at);
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, CB_POLICY_NFIELDS);
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        cb__mp_kv_u64(pk, cb__policy_fields[i].name, *cb__config_field(&cfg, i));
    cb__mp_kv_str(pk, "section", c->override ? c->override->name : "");
    cb__mp_kv_u64(pk, "total_successes", c->pub.total_successes);
    cb__mp_kv_u64(pk, "total_failures", c->pub.total_failures);
    cb__mp_kv_u64(pk, "total_ignored", c->pub.total_ignored);
}

/* show: the circuit, and the fleet's shadow marker of it when its store
 * has one ("fleet_shadow": {state, since, host}: what a host that runs it
 * in shadow last wrote; nobody obeys it). */
static int op_show(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    struct cbd_circuit *circuit;
    struct cbd_store_shadow sh;
    (void)p;
    if (get_circuit(arg, req, r, &circuit) < 0)
        return r->err;
    pack_circuit_fields(&r->pk, circuit);
    r->nfields += CIRCUIT_FIELDS;
    if ((*o->store_ops)->shadow != NULL && *o->store != NULL &&
        (*o->store_ops)->shadow(*o->store, circuit->rec->name, &sh) == 1) {
        cb__mp_pack_str(&r->pk, "fleet_shadow");
        msgpack_pack_map(&r->pk, 3);
        cb__mp_kv_str(&r->pk, "state", cb__state_name(sh.state));
        cb__mp_kv_i64(&r->pk, "since", sh.since);
        cb__mp_kv_str(&r->pk, "host", sh.host);
        r->nfields++;
    }
    return 0;
}

/* Circuits from "offset" on, as many as fit in one frame; "next" says where
 * to go on when they did not all fit. */
static int op_list(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    const struct cbd_circuits *t = o->circuits;
    uint64_t offset = 0;
    uint32_t i, n = 0;
    (void)p;
    if (cb__mp_get_u64(req, "offset", &offset) == -EINVAL)
        return cbd_reply_fail(r, -EINVAL, "field 'offset' must be an unsigned integer");
    msgpack_sbuffer items;
    msgpack_packer pk;
    msgpack_sbuffer_init(&items);
    msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
    for (i = offset < t->n ? (uint32_t)offset : t->n; i < t->n; i++) {
        size_t before = items.size;
        if (t->by_slot[i].removed)
            continue;
        msgpack_pack_map(&pk, CIRCUIT_FIELDS);
        pack_circuit_fields(&pk, &t->by_slot[i]);
        if (items.size > CB_FRAME_MAX - 1024) { /* room for the rest of the reply */
            items.size = before;
            break;
        }
        n++;
    }
    cb__mp_pack_str(&r->pk, "circuits");
    msgpack_pack_array(&r->pk, n);
    msgpack_sbuffer_write(&r->body, items.data, items.size);
    msgpack_sbuffer_destroy(&items);
    r->nfields++;
    cbd_reply_u64(r, "total", atomic_load_explicit(&o->seg->hdr->circuits_live, memory_order_relaxed));
    if (i < t->n)
        cbd_reply_u64(r, "next", i);
    return 0;
}

static const char *const action_names[] = {"force_open", "force_closed", "reset", "disable", "enable"};

static int operator_op(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r,
                       enum cbd_operator_action action)
{
    const struct cbd_ops *o = arg;
    struct cbd_circuit *circuit;
    uint64_t for_ms = 0;
    struct cbd_now now;
    if (get_circuit(arg, req, r, &circuit) < 0)
        return r->err;
    int rc = action == CBD_FORCE_OPEN ? cb__mp_get_u64(req, "for_ms", &for_ms) : -ENOENT;
    if (rc == -EINVAL || (rc == 0 && (for_ms < 1 || for_ms > 604800000)))
        return cbd_reply_fail(r, -EINVAL, "field 'for_ms' must be an integer 1..604800000 (7 days)");
    cbd_log(CBD_LOG_INFO, "operator: %s circuit=%s%s%.0llu by uid %u pid %d", action_names[action],
            CB_NAME_SHOW(circuit->rec->name), for_ms ? " for_ms=" : "", (unsigned long long)for_ms, p->uid, (int)p->pid);
    cbd_now(&now);
    cbd_policy_operator(o->env, circuit, action, (uint32_t)for_ms, &now);
    cb__mp_kv_str(&r->pk, "state", cb__state_name(circuit->state));
    cbd_reply_u64(r, "epoch", circuit->epoch);
    cb__mp_kv_i64(&r->pk, "forced_until", cbd_policy_forced_until_ms(circuit));
    r->nfields += 2;
    return 0;
}

static int op_force_open(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    return operator_op(arg, p, req, r, CBD_FORCE_OPEN);
}
static int op_force_closed(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    return operator_op(arg, p, req, r, CBD_FORCE_CLOSED);
}
static int op_reset(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    return operator_op(arg, p, req, r, CBD_RESET);
}
static int op_disable(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    return operator_op(arg, p, req, r, CBD_DISABLE);
}
static int op_enable(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    return operator_op(arg, p, req, r, CBD_ENABLE);
}

/* After the {"ok": true} reply the connection only receives transitions
 * (the server's part: cbd_reply.subscribe). */
static int op_subscribe(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    (void)arg;
    (void)p;
    (void)req;
    r->subscribe = 1;
    return 0;
}

/* Reply: what was removed (name, slot, state), read before it goes. */
static int op_remove(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    struct cbd_circuit *circuit;
    if (get_circuit(arg, req, r, &circuit) < 0)
        return r->err;
    char name[CB_NAME_MAX + 1];
    uint32_t slot = circuit->slot;
    const char *state = cb__state_name(circuit->state);
    snprintf(name, sizeof name, "%s", circuit->rec->name);
    int rc = o->remove_circuit(o->arg, name, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    cbd_log(CBD_LOG_INFO, "operator: remove circuit=%s slot=%u state=%s by uid %u pid %d", CB_NAME_SHOW(name), slot, state, p->uid,
            (int)p->pid);
    cb__mp_kv_str(&r->pk, "name", name);
    cbd_reply_u64(r, "slot", slot);
    cb__mp_kv_str(&r->pk, "state", state);
    r->nfields += 2;
    return 0;
}

/* An operator's policy fields for one circuit ("config": the fields to
 * change); the reply carries the whole policy now in force. */
static int op_set(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    struct cbd_circuit *circuit;
    cb_config cfg = {0};
    unsigned mask = 0;
    if (get_circuit(arg, req, r, &circuit) < 0)
        return r->err;
    const msgpack_object *m = cb__mp_get(req, "config");
    if (m == NULL)
        return cbd_reply_fail(r, -EINVAL, "missing field 'config' (a map of policy fields: %s)", POLICY_FIELD_LIST);
    if (parse_config(m, &cfg, &mask, r) < 0)
        return r->err;
    if (mask == 0)
        return cbd_reply_fail(r, -EINVAL, "field 'config' names no policy field (expected %s)", POLICY_FIELD_LIST);
    int rc = o->configure_circuit(o->arg, circuit->rec->name, &cfg, mask, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    cbd_log(CBD_LOG_INFO, "operator: set circuit=%s (%u fields) by uid %u pid %d", CB_NAME_SHOW(circuit->rec->name),
            (unsigned)__builtin_popcount(mask), p->uid, (int)p->pid);
    cb__mp_pack_str(&r->pk, "config");
    msgpack_pack_map(&r->pk, CB_POLICY_NFIELDS);
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        cb__mp_kv_u64(&r->pk, cb__policy_fields[i].name, *cb__config_field(&circuit->cfg, i));
    r->nfields++;
    return 0;
}

static int op_reload(void *arg, const struct cbd_peer *p, const msgpack_object *req, struct cbd_reply *r)
{
    const struct cbd_ops *o = arg;
    (void)req;
    cbd_log(CBD_LOG_INFO, "operator: reload by uid %u pid %d", p->uid, (int)p->pid);
    int rc = o->reload(o->arg, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    cbd_reply_u64(r, "circuits_reconfigured", (uint64_t)rc);
    return 0;
}


const struct cbd_control_op cbd_ops_table[] = {
    {"register", 0, op_register},   {"version", 0, op_version},   {"ping", 0, op_ping},
    {"stats", 0, op_stats},         {"list", 0, op_list},         {"show", 0, op_show},
    {"subscribe", 0, op_subscribe}, {"force_open", 1, op_force_open}, {"force_closed", 1, op_force_closed},
    {"reset", 1, op_reset},         {"disable", 1, op_disable},   {"enable", 1, op_enable},
    {"remove", 1, op_remove},       {"reload", 1, op_reload},     {"set", 1, op_set},
    {"metrics", 0, op_metrics},
};

const size_t cbd_ops_count = sizeof cbd_ops_table / sizeof cbd_ops_table[0];
