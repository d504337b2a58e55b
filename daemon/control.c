/*
 * control.c - the control socket server.
 *
 * Framing: a 4-byte big-endian length N (1..CB_FRAME_MAX) and N bytes of one
 * msgpack map. Bytes from libuv are appended to the connection's buffer and
 * every complete frame in it is answered in order. A length of 0 or above
 * CB_FRAME_MAX, or a payload that fails cb__mp_unpack_map (which walks the
 * bytes with bounded depth and refuses containers that declare more
 * elements than bytes remain, before msgpack-c allocates anything), gets an
 * error reply and the connection is shut down once that reply is out: the
 * stream can no longer be trusted to be in frame. A request with a bad
 * field gets an error reply and the connection stays open.
 *
 * Memory bounds per connection: the buffer never holds more than one
 * incomplete frame plus one read (the length is checked as soon as its four
 * bytes are in), so the "1 MiB without a complete frame" rule cannot even be
 * reached; a peer that stays silent in the middle of a frame for
 * CBD_CONTROL_IDLE_MS is closed; a peer that does not read its replies is
 * closed once CBD_CONTROL_MAX_QUEUED bytes wait to be written. At most
 * CBD_CONTROL_MAX_CONNECTIONS are open; more are accepted and closed at once
 * (with a rate-limited log line) so the backlog does not fill.
 *
 * Replies: {"ok": true, ...} or {"ok": false, "error": -errno, "message":
 * "..."}, echoing "id" when the request had one. An operation writes its
 * fields into a scratch buffer and counts them; the reply map's header is
 * written once the count is known.
 *
 * Who may do what: the peer's uid, gid and pid (SO_PEERCRED) and its
 * supplementary groups (SO_PEERGROUPS) are read once, at accept. Anyone who
 * can connect (socket_mode, socket_group) may register, list, show,
 * subscribe, stats, version and ping; the admin ops (force_open,
 * force_closed, reset, disable, enable, reload) need uid 0, the daemon's
 * own uid, or admin_group among the peer's groups, else -EPERM with a
 * message naming who may. The admin group's gid is looked up at start and
 * reload, never per request (NSS may block). Refusals and every admin
 * action are logged with the peer's uid and pid.
 *
 * Subscribers: after {"ok": true} to "subscribe", a connection receives one
 * frame per transition, in transition order (libuv writes in order), and
 * whatever it sends is ignored. One that stops reading is disconnected,
 * with a log line, once CBD_CONTROL_MAX_QUEUED bytes wait for it: a slow
 * watcher costs the daemon bounded memory and nobody else anything.
 *
 * list answers with as many circuits as fit in one frame and says where to
 * go on ("next"); show and list read the daemon's own view of a circuit.
 */
#define _GNU_SOURCE /* struct ucred */
#include "control.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cbd.h"

struct cbd_conn {
    uv_pipe_t pipe;
    uv_timer_t idle;
    struct cbd *d;
    struct cbd_conn *prev, *next;
    char *buf;
    size_t len, cap;
    int handles_open; /* pipe and timer: freed when both have closed */
    int closing;
    int subscribed;   /* receives transitions; its requests are ignored */
    uint32_t uid, gid; /* the peer (uid (uint32_t)-1 if unknown: never admin) */
    pid_t pid;
    gid_t *groups;    /* supplementary groups */
    int ngroups;
};

struct reply {
    int err;                /* 0: ok; else -errno */
    char message[1024];
    msgpack_sbuffer body;   /* the operation's fields */
    msgpack_packer pk;
    uint32_t nfields;
};

struct write_req {
    uv_write_t req;
    uv_buf_t buf;
};

static int fail(struct reply *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct reply *r, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    r->err = err;
    return err;
}

static void field_u64(struct reply *r, const char *key, uint64_t v)
{
    cb__mp_kv_u64(&r->pk, key, v);
    r->nfields++;
}

/* ---- connection lifetime -------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct cbd_conn *c = h->data;
    if (--c->handles_open == 0) {
        free(c->buf);
        free(c->groups);
        free(c);
    }
}

static void conn_close(struct cbd_conn *c)
{
    struct cbd_control *ctl = &c->d->control;
    if (c->closing)
        return;
    c->closing = 1;
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctl->nconns--;
    ctl->nsubscribers -= c->subscribed;
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
    uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status; /* closing either way */
    conn_close(req->handle->data);
    free(req);
}

/* Stop reading; close once the replies queued so far are written. */
static void conn_finish(struct cbd_conn *c)
{
    uv_shutdown_t *req = malloc(sizeof *req);
    uv_read_stop((uv_stream_t *)&c->pipe);
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0) {
        free(req);
        conn_close(c);
    }
}

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error and closes the connection */
    free(req->data);
}

/* Sends payload as one frame. */
static void send_frame(struct cbd_conn *c, const char *payload, size_t len)
{
    struct write_req *w = malloc(sizeof *w + 4 + len);
    if (w == NULL) {
        cbd_log(CBD_LOG_WARN, "control: out of memory for a %zu byte reply: closing the connection", len);
        conn_close(c);
        return;
    }
    unsigned char *p = (unsigned char *)(w + 1);
    p[0] = (unsigned char)(len >> 24);
    p[1] = (unsigned char)(len >> 16);
    p[2] = (unsigned char)(len >> 8);
    p[3] = (unsigned char)len;
    memcpy(p + 4, payload, len);
    w->buf = uv_buf_init((char *)p, (unsigned)(4 + len));
    w->req.data = w;
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &w->buf, 1, on_written) < 0) {
        free(w);
        conn_close(c);
    }
}

/* Packs and sends the reply to a request (with its id, if any). */
static void send_reply(struct cbd_conn *c, struct reply *r, int has_id, uint64_t id)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, (r->err ? 3 : 1 + r->nfields) + (has_id ? 1 : 0));
    cb__mp_kv_bool(&pk, "ok", r->err == 0);
    if (has_id)
        cb__mp_kv_u64(&pk, "id", id);
    if (r->err) {
        cb__mp_kv_i64(&pk, "error", r->err);
        cb__mp_kv_str(&pk, "message", r->message);
    } else if (r->body.size > 0) {
        msgpack_sbuffer_write(&sb, r->body.data, r->body.size);
    }
    send_frame(c, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* An error that ends the connection: bad framing or unparsable bytes. */
static void reject_frame(struct cbd_conn *c, int err, const char *what)
{
    struct reply r = {0};
    c->d->control.frames_bad++;
    fail(&r, err, "%s", what);
    send_reply(c, &r, 0, 0);
    conn_finish(c);
}

/* ---- operations ----------------------------------------------------------- */

/* The request's "name": 0, or an error reply. */
static int get_name(const msgpack_object *req, char *name, struct reply *r)
{
    int rc = cb__mp_get_str(req, "name", name, CB_NAME_MAX + 1);
    if (rc == -ENOENT)
        return fail(r, -EINVAL, "missing field 'name' (a circuit name)");
    if (rc == -ENAMETOOLONG)
        return fail(r, -EINVAL, "field 'name' is longer than %u bytes", CB_NAME_MAX);
    if (rc < 0)
        return fail(r, -EINVAL, "field 'name' must be a string");
    return 0;
}

/* The circuit the request names: 0 and *out, or an error reply. */
static int get_circuit(struct cbd *d, const msgpack_object *req, struct reply *r, struct cbd_circuit **out)
{
    char name[CB_NAME_MAX + 1];
    if (get_name(req, name, r) < 0)
        return r->err;
    if ((*out = cbd_circuit_find(d, name)) == NULL)
        return fail(r, -ENOENT, "no circuit named '%s'", name);
    return 0;
}

/* The optional "config" map of register: the fields given go into *cfg and *mask. */
static int parse_config(const msgpack_object *m, cb_config *cfg, unsigned *mask, struct reply *r)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return fail(r, -EINVAL, "field 'config' must be a map");
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        unsigned f = 0;
        while (f < CBD_POLICY_NFIELDS &&
               !(k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(cbd_policy_fields[f]) &&
                 memcmp(k->via.str.ptr, cbd_policy_fields[f], k->via.str.size) == 0))
            f++;
        if (f == CBD_POLICY_NFIELDS)
            return fail(r, -EINVAL, "unknown field in 'config' (expected failure_threshold, success_threshold, "
                                    "half_open_max_probes, recovery_timeout_ms, probe_lease_ms)");
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
            return fail(r, -EINVAL, "field 'config.%s' must be an unsigned 32-bit integer", cbd_policy_fields[f]);
        *cbd_policy_field(cfg, f) = (uint32_t)v->via.u64;
        *mask |= 1u << f;
    }
    return 0;
}

static int is_admin(const struct cbd_control *ctl, const struct cbd_conn *c);

static int op_register(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
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
    int rc = cbd_circuit_register(c->d, name, &cfg, mask, is_admin(&c->d->control, c) ? CBD_OWNER_NONE : c->uid, &slot, &created, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    field_u64(r, "slot", slot);
    cb__mp_kv_bool(&r->pk, "created", created);
    r->nfields++;
    return 0;
}

static int op_version(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    (void)c;
    (void)req;
    cb__mp_kv_str(&r->pk, "version", CB_VERSION_STRING);
    field_u64(r, "layout", CB_SEG_MAJOR);
    r->nfields++;
    return 0;
}

static int op_ping(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    (void)c;
    (void)req;
    (void)r;
    return 0;
}

static void kv_u64s(struct reply *r, const char *const *keys, const uint64_t *vals, size_t n)
{
    for (size_t i = 0; i < n; i++)
        field_u64(r, keys[i], vals[i]);
}

/* The store's own counters, as store_<name>. */
static void emit_store_stat(void *arg, const char *name, uint64_t value)
{
    struct reply *r = arg;
    char key[64];
    snprintf(key, sizeof key, "store_%s", name);
    cb__mp_kv_u64(&r->pk, key, value);
    r->nfields++;
}

static int op_stats(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    struct cbd *d = c->d;
    struct cbd_hooks_stats hs = {0};
    struct cbd_now now;
    (void)req;
    if (d->hooks != NULL)
        cbd_hooks_stats_get(d->hooks, &hs);
    cbd_now(&now);
    static const char *const keys[] = {
        "circuits", "events_drained", "events_invalid", "events_stale", "lanes_in_use", "lanes_reclaimed",
        "lane_overruns", "lane_drops", "frames_bad", "connections", "connections_total", "connections_refused",
        "subscribers", "transitions", "hooks_started", "hooks_succeeded", "hooks_failed", "hooks_timed_out",
        "hooks_dropped", "hooks_spawn_errors", "reloads", "reloads_failed", "doorbell_fifo", "doorbell_futex",
        "uptime_s",
    };
    const uint64_t vals[] = {
        d->ncircuits, d->drain.events_drained, d->drain.events_invalid, d->drain.events_stale,
        cbd_drain_lanes_in_use(d), d->drain.lanes_reclaimed, d->drain.lane_overruns, cbd_drain_lane_drops(d),
        d->control.frames_bad, d->control.nconns, d->control.connections_total, d->control.connections_refused,
        d->control.nsubscribers, d->transitions, hs.started, hs.succeeded, hs.failed, hs.timed_out, hs.dropped,
        hs.spawn_errors, d->reloads, d->reloads_failed, d->bell.rings_fifo, d->bell.rings_futex,
        (now.mono_ns - d->start_ns) / 1000000000u,
    };
    _Static_assert(sizeof keys / sizeof keys[0] == sizeof vals / sizeof vals[0], "a stat without a name");
    kv_u64s(r, keys, vals, sizeof vals / sizeof vals[0]);
    cb__mp_kv_str(&r->pk, "store", d->store_ops->scheme);
    cb__mp_kv_bool(&r->pk, "store_online", d->store_health != 0);
    r->nfields += 2;
    if (d->store_ops->stats != NULL && d->store != NULL)
        d->store_ops->stats(d->store, emit_store_stat, r);
    return 0;
}

/* One circuit as show and list give it: CIRCUIT_FIELDS pairs, from the
 * daemon's own view (the record's counters are its own stores). */
#define CIRCUIT_FIELDS 16
static void pack_circuit_fields(msgpack_packer *pk, const struct cbd_circuit *c)
{
    static const char *const sync_names[] = {"local", "ok", "pending", "offline"};
    struct cb_seg_record *rec = c->rec;
    unsigned sync = c->pub.sync_state;
    cb_config cfg = c->cfg;
    cb__mp_kv_str(pk, "name", rec->name);
    cb__mp_kv_u64(pk, "slot", c->slot);
    cb__mp_kv_str(pk, "state", cbd_state_name(c->state));
    cb__mp_kv_u64(pk, "epoch", c->epoch);
    cb__mp_kv_u64(pk, "failure_count", c->state == CB_CLOSED ? c->streak : c->trip_failure_count);
    cb__mp_kv_i64(pk, "opened_at", c->opened_at);
    cb__mp_kv_bool(pk, "forced", (c->flags & CB_SEG_F_FORCED) != 0);
    cb__mp_kv_bool(pk, "disabled", (c->flags & CB_SEG_F_DISABLED) != 0);
    cb__mp_kv_i64(pk, "forced_until", cbd_policy_forced_until_ms(c));
    cb__mp_kv_str(pk, "sync", sync < 4 ? sync_names[sync] : "?");
    cb__mp_kv_i64(pk, "synced_at", c->pub.synced_at);
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, CBD_POLICY_NFIELDS);
    for (unsigned i = 0; i < CBD_POLICY_NFIELDS; i++)
        cb__mp_kv_u64(pk, cbd_policy_fields[i], *cbd_policy_field(&cfg, i));
    cb__mp_kv_str(pk, "section", c->override ? c->override->name : "");
    cb__mp_kv_u64(pk, "total_successes", c->pub.total_successes);
    cb__mp_kv_u64(pk, "total_failures", c->pub.total_failures);
    cb__mp_kv_u64(pk, "total_ignored", c->pub.total_ignored);
}

static int op_show(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    struct cbd_circuit *circuit;
    if (get_circuit(c->d, req, r, &circuit) < 0)
        return r->err;
    pack_circuit_fields(&r->pk, circuit);
    r->nfields += CIRCUIT_FIELDS;
    return 0;
}

/* Circuits from "offset" on, as many as fit in one frame; "next" says where
 * to go on when they did not all fit. */
static int op_list(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    struct cbd *d = c->d;
    uint64_t offset = 0;
    uint32_t i, n = 0;
    if (cb__mp_get_u64(req, "offset", &offset) == -EINVAL)
        return fail(r, -EINVAL, "field 'offset' must be an unsigned integer");
    msgpack_sbuffer items;
    msgpack_packer pk;
    msgpack_sbuffer_init(&items);
    msgpack_packer_init(&pk, &items, msgpack_sbuffer_write);
    for (i = offset < d->ncircuits ? (uint32_t)offset : d->ncircuits; i < d->ncircuits; i++) {
        size_t before = items.size;
        if (d->circuits[i].removed)
            continue;
        msgpack_pack_map(&pk, CIRCUIT_FIELDS);
        pack_circuit_fields(&pk, &d->circuits[i]);
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
    field_u64(r, "total", atomic_load_explicit(&d->seg.hdr->circuits_live, memory_order_relaxed));
    if (i < d->ncircuits)
        field_u64(r, "next", i);
    return 0;
}

static const char *const action_names[] = {"force_open", "force_closed", "reset", "disable", "enable"};

static int operator_op(struct cbd_conn *c, const msgpack_object *req, struct reply *r,
                       enum cbd_operator_action action)
{
    struct cbd_circuit *circuit;
    uint64_t for_ms = 0;
    struct cbd_now now;
    if (get_circuit(c->d, req, r, &circuit) < 0)
        return r->err;
    int rc = action == CBD_FORCE_OPEN ? cb__mp_get_u64(req, "for_ms", &for_ms) : -ENOENT;
    if (rc == -EINVAL || (rc == 0 && (for_ms < 1 || for_ms > 604800000)))
        return fail(r, -EINVAL, "field 'for_ms' must be an integer 1..604800000 (7 days)");
    cbd_log(CBD_LOG_INFO, "operator: %s circuit=%s%s%.0llu by uid %u pid %d", action_names[action],
            circuit->rec->name, for_ms ? " for_ms=" : "", (unsigned long long)for_ms, c->uid, (int)c->pid);
    cbd_now(&now);
    cbd_policy_operator(&c->d->env, circuit, action, (uint32_t)for_ms, &now);
    cb__mp_kv_str(&r->pk, "state", cbd_state_name(circuit->state));
    field_u64(r, "epoch", circuit->epoch);
    cb__mp_kv_i64(&r->pk, "forced_until", cbd_policy_forced_until_ms(circuit));
    r->nfields += 2;
    return 0;
}

static int op_force_open(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    return operator_op(c, req, r, CBD_FORCE_OPEN);
}
static int op_force_closed(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    return operator_op(c, req, r, CBD_FORCE_CLOSED);
}
static int op_reset(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    return operator_op(c, req, r, CBD_RESET);
}
static int op_disable(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    return operator_op(c, req, r, CBD_DISABLE);
}
static int op_enable(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    return operator_op(c, req, r, CBD_ENABLE);
}

/* After the {"ok": true} reply the connection only receives transitions. */
static int op_subscribe(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    (void)req;
    (void)r;
    c->subscribed = 1;
    c->d->control.nsubscribers++;
    cbd_log(CBD_LOG_DEBUG, "control: uid %u pid %d subscribed to transitions", c->uid, (int)c->pid);
    return 0;
}

static int op_reload(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    (void)req;
    cbd_log(CBD_LOG_INFO, "operator: reload by uid %u pid %d", c->uid, (int)c->pid);
    int rc = cbd_reload(c->d, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    field_u64(r, "circuits_reconfigured", (uint64_t)rc);
    return 0;
}

static const struct {
    const char *name;
    int admin; /* needs root, the daemon's uid or admin_group */
    int (*run)(struct cbd_conn *c, const msgpack_object *req, struct reply *r);
} ops[] = {
    {"register", 0, op_register},   {"version", 0, op_version},   {"ping", 0, op_ping},
    {"stats", 0, op_stats},         {"list", 0, op_list},         {"show", 0, op_show},
    {"subscribe", 0, op_subscribe}, {"force_open", 1, op_force_open}, {"force_closed", 1, op_force_closed},
    {"reset", 1, op_reset},         {"disable", 1, op_disable},   {"enable", 1, op_enable},
    {"reload", 1, op_reload},
};

/* Root, the daemon's own uid, or a member of admin_group (primary or supplementary). */
static int is_admin(const struct cbd_control *ctl, const struct cbd_conn *c)
{
    if (c->uid == 0 || c->uid == (uint32_t)geteuid())
        return 1;
    if (ctl->admin_gid < 0)
        return 0;
    if (c->gid == (uint32_t)ctl->admin_gid)
        return 1;
    for (int i = 0; i < c->ngroups; i++) {
        if (c->groups[i] == (gid_t)ctl->admin_gid)
            return 1;
    }
    return 0;
}

static void run_op(struct cbd_conn *c, size_t i, const msgpack_object *req, struct reply *r)
{
    struct cbd_control *ctl = &c->d->control;
    uint64_t suppressed;
    if (!ops[i].admin || is_admin(ctl, c)) {
        ops[i].run(c, req, r);
        return;
    }
    fail(r, -EPERM, "permission denied: '%s' needs %s", ops[i].name, ctl->admins);
    if (cbd_ratelimit_pass(&ctl->deny_warn, &suppressed))
        cbd_log(CBD_LOG_WARN, "control: refused '%s' to uid %u gid %u pid %d: not an admin (%s); %llu more "
                              "refusals since the last warning", ops[i].name, c->uid, c->gid, (int)c->pid,
                ctl->admins, (unsigned long long)suppressed);
}

/* Answers one well-formed request map. */
static void dispatch(struct cbd_conn *c, const msgpack_object *req)
{
    struct reply r = {0};
    char op[32];
    uint64_t id = 0;
    msgpack_sbuffer_init(&r.body);
    msgpack_packer_init(&r.pk, &r.body, msgpack_sbuffer_write);
    int id_rc = cb__mp_get_u64(req, "id", &id);
    int rc = cb__mp_get_str(req, "op", op, sizeof op);
    if (id_rc == -EINVAL)
        fail(&r, -EINVAL, "field 'id' must be an unsigned integer");
    else if (rc == -ENOENT)
        fail(&r, -EINVAL, "missing field 'op' (register, list, show, stats, ... : see docs/protocol.md)");
    else if (rc < 0)
        fail(&r, -EINVAL, "field 'op' must be a short string");
    else {
        size_t i = 0;
        while (i < sizeof ops / sizeof ops[0] && strcmp(ops[i].name, op) != 0)
            i++;
        if (i == sizeof ops / sizeof ops[0])
            fail(&r, -EOPNOTSUPP, "unknown op '%s'", op);
        else
            run_op(c, i, req, &r);
    }
    c->d->control.requests++;
    send_reply(c, &r, id_rc == 0, id);
    msgpack_sbuffer_destroy(&r.body);
}

/* ---- transitions to subscribers -------------------------------------------- */

void cbd_control_publish(struct cbd *d, const struct cbd_hook_event *ev, unsigned flags)
{
    struct cbd_control *ctl = &d->control;
    if (ctl->nsubscribers == 0)
        return;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 11);
    cb__mp_kv_str(&pk, "event", "transition");
    cb__mp_kv_str(&pk, "name", ev->circuit);
    cb__mp_kv_str(&pk, "from", ev->from);
    cb__mp_kv_str(&pk, "to", ev->to);
    cb__mp_kv_str(&pk, "source", ev->source);
    cb__mp_kv_u64(&pk, "epoch", ev->epoch);
    cb__mp_kv_u64(&pk, "failure_count", ev->failure_count);
    cb__mp_kv_i64(&pk, "opened_at", ev->opened_at);
    cb__mp_kv_i64(&pk, "time_ns", ev->time_ns);
    cb__mp_kv_bool(&pk, "forced", (flags & CB_SEG_F_FORCED) != 0);
    cb__mp_kv_bool(&pk, "disabled", (flags & CB_SEG_F_DISABLED) != 0);
    for (struct cbd_conn *c = ctl->conns, *next; c != NULL; c = next) {
        next = c->next; /* conn_close unlinks c only */
        if (!c->subscribed || c->closing)
            continue;
        send_frame(c, sb.data, sb.size);
        size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
        if (!c->closing && queued > CBD_CONTROL_MAX_QUEUED) {
            cbd_log(CBD_LOG_WARN, "control: disconnecting subscriber uid %u pid %d: it left %zu bytes of "
                                  "transitions unread (the limit is %u)", c->uid, (int)c->pid, queued,
                    CBD_CONTROL_MAX_QUEUED);
            conn_close(c);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ---- reading frames ------------------------------------------------------- */

/* Answers every complete frame in the buffer; returns -1 if the connection
 * was given up. */
static int process_frames(struct cbd_conn *c)
{
    size_t off = 0;
    while (c->len - off >= 4) {
        const unsigned char *p = (const unsigned char *)c->buf + off;
        uint32_t n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (n == 0 || n > CB_FRAME_MAX) {
            char what[96];
            if (n == 0)
                snprintf(what, sizeof what, "frame length 0 is invalid (expected 1..%u)", CB_FRAME_MAX);
            else
                snprintf(what, sizeof what, "frame length %u exceeds %u", n, CB_FRAME_MAX);
            reject_frame(c, -EMSGSIZE, what);
            return -1;
        }
        if (c->len - off - 4 < n)
            break;
        msgpack_unpacked u;
        msgpack_object *req;
        if (cb__mp_unpack_map((const char *)p + 4, n, &u, &req) < 0) {
            reject_frame(c, -EBADMSG, "malformed msgpack frame");
            return -1;
        }
        dispatch(c, req);
        msgpack_unpacked_destroy(&u);
        off += 4 + (size_t)n;
        if (c->closing)
            return -1;
        if (c->subscribed) { /* what follows subscribe is ignored */
            c->len = 0;
            return 0;
        }
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct cbd_conn *c = h->data;
    (void)suggested;
    /* One loop thread, and every read is consumed before the next alloc:
     * all connections can share one read buffer. */
    *buf = uv_buf_init(c->d->control.readbuf, sizeof c->d->control.readbuf);
}

static void on_idle(uv_timer_t *t)
{
    struct cbd_conn *c = t->data;
    cbd_log(CBD_LOG_INFO, "control: closing a connection silent for %d s in the middle of a frame (%zu bytes "
                          "buffered)", CBD_CONTROL_IDLE_MS / 1000, c->len);
    conn_close(c);
}

/* Appends n bytes to the connection's buffer. */
static int append(struct cbd_conn *c, const char *data, size_t n)
{
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + n)
            cap *= 2;
        char *p = realloc(c->buf, cap);
        if (p == NULL)
            return -ENOMEM;
        c->buf = p;
        c->cap = cap;
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct cbd_conn *c = s->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) { /* EOF or a reset: nothing more to answer */
        conn_close(c);
        return;
    }
    if (c->subscribed)
        return; /* a subscriber's requests are ignored */
    if (append(c, buf->base, (size_t)nread) < 0) {
        cbd_log(CBD_LOG_WARN, "control: out of memory buffering a request: closing the connection");
        conn_close(c);
        return;
    }
    if (process_frames(c) < 0)
        return;
    if (uv_stream_get_write_queue_size(s) > CBD_CONTROL_MAX_QUEUED) {
        cbd_log(CBD_LOG_WARN, "control: closing a connection that does not read its replies (%zu bytes queued)",
                uv_stream_get_write_queue_size(s));
        conn_close(c);
    } else if (c->len > 0) {
        uv_timer_start(&c->idle, on_idle, CBD_CONTROL_IDLE_MS, 0);
    } else {
        uv_timer_stop(&c->idle);
    }
}

/* Close callback of a connection that never got going (pipe is its first member). */
static void free_conn(uv_handle_t *h)
{
    free(h);
}

static void refuse(struct cbd *d, uv_pipe_t *pipe)
{
    uint64_t suppressed;
    d->control.connections_refused++;
    if (cbd_ratelimit_pass(&d->control.refuse_warn, &suppressed))
        cbd_log(CBD_LOG_WARN, "control: refusing a connection: %u connections are open, the limit; "
                              "%llu more refused since the last warning", CBD_CONTROL_MAX_CONNECTIONS,
                (unsigned long long)suppressed);
    uv_close((uv_handle_t *)pipe, free_conn);
}

/* The peer's credentials and groups, as the kernel recorded them at connect. */
static void read_peer(struct cbd_conn *c)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    int fd;
    c->uid = c->gid = (uint32_t)-1;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
        return;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->pid = cred.pid;
    }
    len = 0;
    /* First call asks for the size (ERANGE), the second fills the list. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, NULL, &len) < 0 && errno == ERANGE && len > 0 &&
        (c->groups = malloc(len)) != NULL) {
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, c->groups, &len) == 0)
            c->ngroups = (int)(len / sizeof(gid_t));
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct cbd *d = server->data;
    if (status < 0) {
        cbd_log(CBD_LOG_WARN, "control: accept failed: %s", uv_strerror(status));
        return;
    }
    struct cbd_conn *c = calloc(1, sizeof *c);
    if (c == NULL || uv_pipe_init(&d->loop, &c->pipe, 0) < 0) {
        free(c);
        cbd_log(CBD_LOG_WARN, "control: out of memory accepting a connection");
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        uv_close((uv_handle_t *)&c->pipe, free_conn);
        return;
    }
    if (d->control.nconns >= CBD_CONTROL_MAX_CONNECTIONS) {
        refuse(d, &c->pipe);
        return;
    }
    c->d = d;
    read_peer(c);
    c->pipe.data = c->idle.data = c;
    uv_timer_init(&d->loop, &c->idle);
    c->handles_open = 2;
    c->next = d->control.conns;
    if (c->next)
        c->next->prev = c;
    d->control.conns = c;
    d->control.nconns++;
    d->control.connections_total++;
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

/* ---- the listening socket ------------------------------------------------- */

/* mkdir -p of path's directory, 0755 for what it creates. */
static int make_parent(const char *path)
{
    char dir[CB_SOCKET_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -errno;
            *p = c;
            if (c == '\0')
                return 0;
        }
    }
}

/* Removes a socket file nobody answers on; refuses to touch anything else. */
static int clear_stale(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        cbd_log(CBD_LOG_ERROR, "control socket path %s exists and is not a socket: not removing it", path);
        return -EEXIST;
    }
    int fd = cb__unix_connect(path);
    if (fd >= 0) {
        close(fd);
        cbd_log(CBD_LOG_ERROR, "another cbd is listening on %s: one daemon per socket", path);
        return -EADDRINUSE;
    }
    cbd_log(CBD_LOG_INFO, "removing stale control socket %s", path);
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

void cbd_control_configure(struct cbd *d)
{
    struct cbd_control *ctl = &d->control;
    const struct passwd *pw = getpwuid(geteuid());
    char self[96] = "";
    unsigned gid;
    ctl->admin_gid = cbd_config_gid(d->cfg.admin_group, &gid) == 0 ? (long)gid : -1;
    if (geteuid() != 0)
        snprintf(self, sizeof self, ", uid %u (%s)", (unsigned)geteuid(), pw ? pw->pw_name : "?");
    if (ctl->admin_gid >= 0)
        snprintf(ctl->admins, sizeof ctl->admins, "root%s or group '%s'", self, d->cfg.admin_group);
    else
        snprintf(ctl->admins, sizeof ctl->admins, "root%s (no admin_group is configured)", self);
    if (d->cfg.admin_group[0] != '\0' && ctl->admin_gid < 0)
        cbd_log(CBD_LOG_WARN, "admin_group '%s' does not exist (any more): only %s may use admin operations",
                d->cfg.admin_group, ctl->admins);
}

/* Gives the socket file its mode and group. */
static int set_socket_owner(struct cbd *d, const char *path)
{
    unsigned gid;
    if (chmod(path, d->cfg.socket_mode) < 0)
        return -errno;
    if (d->cfg.socket_group[0] == '\0')
        return 0;
    if (cbd_config_gid(d->cfg.socket_group, &gid) < 0)
        return -ENOENT;
    return chown(path, (uid_t)-1, (gid_t)gid) < 0 ? -errno : 0;
}

int cbd_control_listen(struct cbd *d)
{
    struct cbd_control *ctl = &d->control;
    const char *path = d->cfg.socket;
    int rc = make_parent(path);
    if (rc < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot create the directory of control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    if ((rc = clear_stale(path)) < 0)
        return rc;
    if ((rc = uv_pipe_init(&d->loop, &ctl->server, 0)) < 0)
        return rc;
    ctl->server.data = d;
    ctl->listening = 1;
    /* Mode and group before listen: nobody connects through the umask's mode. */
    if ((rc = uv_pipe_bind(&ctl->server, path)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot bind control socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    if ((rc = set_socket_owner(d, path)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot give control socket %s mode %04o and group '%s': %s", path,
                d->cfg.socket_mode, d->cfg.socket_group[0] ? d->cfg.socket_group : "(unchanged)", strerror(-rc));
        return rc;
    }
    if ((rc = uv_listen((uv_stream_t *)&ctl->server, 128, on_connection)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot listen on control socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    cbd_control_configure(d);
    return 0;
}

void cbd_control_close(struct cbd *d)
{
    struct cbd_control *ctl = &d->control;
    if (!ctl->listening)
        return;
    ctl->listening = 0;
    uv_close((uv_handle_t *)&ctl->server, NULL);
    unlink(d->cfg.socket);
    while (ctl->conns != NULL)
        conn_close(ctl->conns);
}
