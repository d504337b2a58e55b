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
 * No local user can lock others out. Every peer that can connect is
 * somebody the daemon serves, so what one uid may hold is bounded by
 * options (docs/configuration.md, reloadable, read at each decision):
 *   - max_connections_per_uid connections per uid, admins exempt;
 *   - max_connections in all, of which the last admin_reserved_connections
 *     only admins (uid 0, the daemon's uid, admin_group) may take, so a
 *     flood from any number of uids still leaves root a way in;
 *   - frame_timeout_ms from the first byte of a frame to its last: a peer
 *     trickling one byte at a time does not push the deadline out;
 *   - idle_timeout_ms without a request (0: never; subscribers exempt).
 * These only hold while accept(2) works, so the soft RLIMIT_NOFILE is
 * raised to what max_connections needs (a warning says when the hard
 * limit does not allow it); an accept that fails anyway is counted and
 * logged with a rate limit.
 * A refused peer is accepted, told why in one error frame (-EUSERS, with
 * the option to raise) and closed. Closing at once would race the peer's
 * first write (it would see EPIPE instead of the reason), so the refused
 * connection lingers up to CBD_CONTROL_LINGER_MS with its input discarded,
 * its write side shut down after the frame; at most
 * CBD_CONTROL_MAX_LINGERING do at once, further refusals close at once. A
 * frame timeout is answered with -ETIMEDOUT before the close; an idle
 * connection is closed without a frame, because its peer (libcb's shared
 * connection) may be writing a request at that moment and must not take
 * a goodbye for the reply: it sees the close and reconnects. Every
 * refusal and close is counted by reason (stats), and logged with a rate
 * limit, so a flood costs bounded memory and log lines.
 *
 * Memory bounds per connection: the buffer never holds more than one
 * incomplete frame plus one read (the length is checked as soon as its four
 * bytes are in); a peer that does not read its replies is closed once
 * CBD_CONTROL_MAX_QUEUED bytes wait to be written.
 *
 * Time: each connection has one timer, armed for its nearest deadline
 * (conn_deadline), computed from the loop's clock; the decisions take the
 * time as an argument, so the socketless connections of the seam at the end
 * (unit tests, fuzzing) run the same code with time as an input.
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
 * force_closed, reset, disable, enable, remove, reload) need uid 0, the
 * daemon's own uid, or admin_group among the peer's groups, else -EPERM
 * with a message naming who may. The admin group's gid is looked up at
 * start and reload, never per request (NSS may block). Refusals and every
 * admin action are logged with the peer's uid and pid. Admins' circuits do
 * not count against max_circuits_per_uid.
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cbd.h"

struct cbd_conn {
    uv_pipe_t pipe;
    uv_timer_t timer;         /* its nearest deadline (conn_deadline) */
    struct cbd *d;
    struct cbd_conn *prev, *next;
    char *buf;
    size_t len, cap;
    int socketless;           /* cbd_control_conn_open: no handles; frames go to out */
    msgpack_sbuffer out;
    int handles_open;         /* pipe and timer: freed when both have closed */
    enum cbd_conn_end end;    /* CBD_CONN_OPEN while it is served; then why it ended or was refused */
    int admitted;             /* counted in nconns and uids until closed */
    int lingering;            /* refused, counted in nlingering: input discarded until linger_until_ms */
    int closed;               /* unlinked, uncounted; handles closing */
    int subscribed;           /* receives transitions; its requests are ignored */
    uint64_t frame_start_ms;  /* when the first byte of the incomplete frame in buf came (len > 0) */
    uint64_t last_request_ms; /* when it was accepted or its last request answered */
    uint64_t linger_until_ms;
    uint32_t uid, gid;        /* the peer (uid (uint32_t)-1 if unknown: never admin) */
    pid_t pid;
    gid_t *groups;            /* supplementary groups */
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

/* ---- connections per uid ---------------------------------------------------- */

static struct cbd_uid_conns *uid_entry(const struct cbd_control *ctl, uint32_t uid)
{
    for (size_t i = 0; i < ctl->nuids; i++) {
        if (ctl->uids[i].uid == uid)
            return &ctl->uids[i];
    }
    return NULL;
}

/* One more connection of uid: 0 or -ENOMEM. */
static int uid_hold(struct cbd_control *ctl, uint32_t uid)
{
    struct cbd_uid_conns *e = uid_entry(ctl, uid);
    if (e == NULL) {
        if (ctl->nuids == ctl->uids_cap) {
            size_t cap = ctl->uids_cap ? ctl->uids_cap * 2 : 16;
            struct cbd_uid_conns *p = realloc(ctl->uids, cap * sizeof *p);
            if (p == NULL)
                return -ENOMEM;
            ctl->uids = p;
            ctl->uids_cap = cap;
        }
        e = &ctl->uids[ctl->nuids++];
        *e = (struct cbd_uid_conns){.uid = uid};
    }
    e->n++;
    return 0;
}

/* One connection of uid fewer; the table shrinks to nothing with the last. */
static void uid_release(struct cbd_control *ctl, uint32_t uid)
{
    struct cbd_uid_conns *e = uid_entry(ctl, uid);
    if (e == NULL || --e->n > 0)
        return;
    *e = ctl->uids[--ctl->nuids];
    if (ctl->nuids == 0) {
        free(ctl->uids);
        ctl->uids = NULL;
        ctl->uids_cap = 0;
    }
}

/* Whether a new peer gets a connection now: CBD_CONN_OPEN, or why not. */
static enum cbd_conn_end admit(const struct cbd_control *ctl, const struct cbd_config *cfg, uint32_t uid, int admin)
{
    uint32_t max = cfg->max_connections;
    uint32_t reserved = cfg->admin_reserved_connections < max ? cfg->admin_reserved_connections : max;
    const struct cbd_uid_conns *e = uid_entry(ctl, uid);
    if (ctl->nconns >= max)
        return CBD_CONN_REFUSED_MAX;
    if (admin)
        return CBD_CONN_OPEN;
    if (e != NULL && e->n >= cfg->max_connections_per_uid)
        return CBD_CONN_REFUSED_PER_UID;
    if (ctl->nconns >= max - reserved)
        return CBD_CONN_REFUSED_ADMIN_RESERVED;
    return CBD_CONN_OPEN;
}

/* The refusal as the peer and the log read it. */
static void refusal_text(const struct cbd_config *cfg, enum cbd_conn_end why, uint32_t uid, char *buf, size_t size)
{
    uint32_t max = cfg->max_connections;
    uint32_t reserved = cfg->admin_reserved_connections < max ? cfg->admin_reserved_connections : max;
    if (why == CBD_CONN_REFUSED_PER_UID)
        snprintf(buf, size, "too many connections from uid %u (max_connections_per_uid = %u)", uid,
                 cfg->max_connections_per_uid);
    else if (why == CBD_CONN_REFUSED_ADMIN_RESERVED)
        snprintf(buf, size, "the last %u of %u connections are reserved for admins (admin_reserved_connections = %u)",
                 reserved, max, cfg->admin_reserved_connections);
    else
        snprintf(buf, size, "cbd has %u connections open, its limit (max_connections = %u)", max, max);
}

/* ---- connection lifetime -------------------------------------------------- */

static void conn_free(struct cbd_conn *c)
{
    free(c->buf);
    free(c->groups);
    msgpack_sbuffer_destroy(&c->out);
    free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cbd_conn *c = h->data;
    if (--c->handles_open == 0)
        conn_free(c);
}

/* Ends c now (why: CBD_CONN_*, unless it already has a reason): uncounted
 * and unlinked at once, its handles closed (then freed). A socketless
 * connection stays allocated until cbd_control_conn_free. */
static void conn_close(struct cbd_conn *c, enum cbd_conn_end why)
{
    struct cbd_control *ctl = &c->d->control;
    if (c->closed)
        return;
    c->closed = 1;
    if (c->end == CBD_CONN_OPEN)
        c->end = why;
    if (c->admitted) {
        ctl->ends[c->end]++;
        ctl->nconns--;
        ctl->nsubscribers -= c->subscribed;
        uid_release(ctl, c->uid);
        c->admitted = 0;
    }
    if (c->lingering) {
        ctl->nlingering--;
        c->lingering = 0;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    if (c->socketless)
        return;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->pipe, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct cbd_conn *c = req->handle->data;
    (void)status; /* closing either way */
    if (!c->lingering) /* a lingering one waits for the peer's hang-up or its timer */
        conn_close(c, CBD_CONN_HANGUP);
    free(req);
}

/* No more requests (why); close once the frames queued so far are written
 * (a lingering connection: once the peer hangs up or lingering ends). */
static void conn_finish(struct cbd_conn *c, enum cbd_conn_end why)
{
    if (c->closed)
        return;
    if (c->end == CBD_CONN_OPEN)
        c->end = why;
    if (c->socketless) {
        conn_close(c, why);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!c->lingering) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        uv_timer_stop(&c->timer);
    }
    if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0) {
        free(req);
        conn_close(c, why);
    }
}

/* Bytes queued to c and not yet written. */
static size_t conn_queued(struct cbd_conn *c)
{
    return c->socketless ? 0 : uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error and closes the connection */
    free(req->data);
}

/* Sends payload as one frame. */
static void send_frame(struct cbd_conn *c, const char *payload, size_t len)
{
    unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                            (unsigned char)len};
    if (c->socketless) {
        msgpack_sbuffer_write(&c->out, (const char *)hdr, 4);
        msgpack_sbuffer_write(&c->out, payload, len);
        return;
    }
    struct write_req *w = malloc(sizeof *w + 4 + len);
    if (w == NULL) {
        cbd_log(CBD_LOG_WARN, "control: out of memory for a %zu byte reply: closing the connection", len);
        conn_close(c, CBD_CONN_HANGUP);
        return;
    }
    unsigned char *p = (unsigned char *)(w + 1);
    memcpy(p, hdr, 4);
    memcpy(p + 4, payload, len);
    w->buf = uv_buf_init((char *)p, (unsigned)(4 + len));
    w->req.data = w;
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &w->buf, 1, on_written) < 0) {
        free(w);
        conn_close(c, CBD_CONN_HANGUP);
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

/* An error reply that ends the connection (why) once it is written. */
static void send_last(struct cbd_conn *c, int err, const char *what, enum cbd_conn_end why)
{
    struct reply r = {0};
    fail(&r, err, "%s", what);
    send_reply(c, &r, 0, 0);
    conn_finish(c, why);
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
    if ((*out = cbd_circuits_find(&d->circuits, name)) == NULL)
        return fail(r, -ENOENT, "no circuit named '%s'", CB_NAME_SHOW(name));
    return 0;
}

/* The optional "config" map of register: the fields given go into *cfg and *mask. */
/* "failure_threshold, success_threshold, ..." */
#define POLICY_FIELD_NAME(n, d, lo, hi, h) ", " #n
#define POLICY_FIELD_LIST (CB_POLICY_FIELDS(POLICY_FIELD_NAME) + 2)

static int parse_config(const msgpack_object *m, cb_config *cfg, unsigned *mask, struct reply *r)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return fail(r, -EINVAL, "field 'config' must be a map");
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        unsigned f = 0;
        while (f < CB_POLICY_NFIELDS &&
               !(k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(cb__policy_fields[f].name) &&
                 memcmp(k->via.str.ptr, cb__policy_fields[f].name, k->via.str.size) == 0))
            f++;
        if (f == CB_POLICY_NFIELDS)
            return fail(r, -EINVAL, "unknown field in 'config' (expected %s)", POLICY_FIELD_LIST);
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
            return fail(r, -EINVAL, "field 'config.%s' must be an unsigned 32-bit integer", cb__policy_fields[f].name);
        *cb__config_field(cfg, f) = (uint32_t)v->via.u64;
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
    uint32_t owner = is_admin(&c->d->control, c) ? CBD_OWNER_NONE : c->uid; /* admins have no quota */
    int rc = cbd_circuit_register(c->d, name, &cfg, mask, owner, &slot, &created, r->message, sizeof r->message);
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
        "connections_refused_per_uid", "connections_refused_admin_reserved", "connections_refused_max_connections",
        "connections_lingering", "connections_closed_frame_timeout", "connections_closed_idle",
        "connections_closed_bad_frame", "connections_closed_slow_reader", "accept_errors", "subscribers", "transitions", "hooks_started", "hooks_succeeded", "hooks_failed", "hooks_timed_out",
        "hooks_dropped", "hooks_spawn_errors", "reloads", "reloads_failed", "doorbell_fifo", "doorbell_futex",
        "uptime_s",
    };
    const uint64_t vals[] = {
        d->circuits.n, d->drain.events_drained, d->drain.events_invalid, d->drain.events_stale,
        cbd_drain_lanes_in_use(&d->drain), d->drain.lanes_reclaimed, d->drain.lane_overruns, cbd_drain_lane_drops(&d->drain),
        d->control.frames_bad, d->control.nconns, d->control.connections_total, d->control.connections_refused,
        d->control.ends[CBD_CONN_REFUSED_PER_UID], d->control.ends[CBD_CONN_REFUSED_ADMIN_RESERVED],
        d->control.ends[CBD_CONN_REFUSED_MAX], d->control.nlingering, d->control.ends[CBD_CONN_FRAME_TIMEOUT],
        d->control.ends[CBD_CONN_IDLE], d->control.ends[CBD_CONN_BAD_FRAME], d->control.ends[CBD_CONN_SLOW_READER],
        d->control.accept_errors, d->control.nsubscribers, d->transitions, hs.started, hs.succeeded, hs.failed, hs.timed_out, hs.dropped,
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
    msgpack_pack_map(pk, CB_POLICY_NFIELDS);
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        cb__mp_kv_u64(pk, cb__policy_fields[i].name, *cb__config_field(&cfg, i));
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
    for (i = offset < d->circuits.n ? (uint32_t)offset : d->circuits.n; i < d->circuits.n; i++) {
        size_t before = items.size;
        if (d->circuits.by_slot[i].removed)
            continue;
        msgpack_pack_map(&pk, CIRCUIT_FIELDS);
        pack_circuit_fields(&pk, &d->circuits.by_slot[i]);
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
    if (i < d->circuits.n)
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
            CB_NAME_SHOW(circuit->rec->name), for_ms ? " for_ms=" : "", (unsigned long long)for_ms, c->uid, (int)c->pid);
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

/* Reply: what was removed (name, slot, state), read before it goes. */
static int op_remove(struct cbd_conn *c, const msgpack_object *req, struct reply *r)
{
    struct cbd_circuit *circuit;
    if (get_circuit(c->d, req, r, &circuit) < 0)
        return r->err;
    char name[CB_NAME_MAX + 1];
    uint32_t slot = circuit->slot;
    const char *state = cbd_state_name(circuit->state);
    snprintf(name, sizeof name, "%s", circuit->rec->name);
    int rc = cbd_circuit_remove(c->d, name, r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    cbd_log(CBD_LOG_INFO, "operator: remove circuit=%s slot=%u state=%s by uid %u pid %d", CB_NAME_SHOW(name), slot, state, c->uid,
            (int)c->pid);
    cb__mp_kv_str(&r->pk, "name", name);
    field_u64(r, "slot", slot);
    cb__mp_kv_str(&r->pk, "state", state);
    r->nfields += 2;
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
    {"remove", 1, op_remove},       {"reload", 1, op_reload},
};


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
    msgpack_pack_map(&pk, 12);
    cb__mp_kv_str(&pk, "event", "transition");
    cb__mp_kv_str(&pk, "name", ev->circuit);
    cb__mp_kv_str(&pk, "from", ev->from);
    cb__mp_kv_str(&pk, "to", ev->to);
    cb__mp_kv_str(&pk, "source", ev->source);
    cb__mp_kv_str(&pk, "origin", ev->origin ? ev->origin : "local");
    cb__mp_kv_u64(&pk, "epoch", ev->epoch);
    cb__mp_kv_u64(&pk, "failure_count", ev->failure_count);
    cb__mp_kv_i64(&pk, "opened_at", ev->opened_at);
    cb__mp_kv_i64(&pk, "time_ns", ev->time_ns);
    cb__mp_kv_bool(&pk, "forced", (flags & CB_SEG_F_FORCED) != 0);
    cb__mp_kv_bool(&pk, "disabled", (flags & CB_SEG_F_DISABLED) != 0);
    for (struct cbd_conn *c = ctl->conns, *next; c != NULL; c = next) {
        next = c->next; /* conn_close unlinks c only */
        if (!c->subscribed || c->end != CBD_CONN_OPEN)
            continue;
        send_frame(c, sb.data, sb.size);
        size_t queued = conn_queued(c);
        if (!c->closed && queued > CBD_CONTROL_MAX_QUEUED) {
            cbd_log(CBD_LOG_WARN, "control: disconnecting subscriber uid %u pid %d: it left %zu bytes of "
                                  "transitions unread (the limit is %u)", c->uid, (int)c->pid, queued,
                    CBD_CONTROL_MAX_QUEUED);
            conn_close(c, CBD_CONN_SLOW_READER);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}


/* ---- deadlines ------------------------------------------------------------- */

/* When c must end, on the clock of its times, and why (*why); UINT64_MAX:
 * never. A frame in progress has only its frame deadline: the peer is
 * sending a request, so it is not idle. */
static uint64_t conn_deadline(const struct cbd_conn *c, const struct cbd_config *cfg, enum cbd_conn_end *why)
{
    if (c->lingering) {
        *why = c->end;
        return c->linger_until_ms;
    }
    if (c->len > 0) {
        *why = CBD_CONN_FRAME_TIMEOUT;
        return c->frame_start_ms + cfg->frame_timeout_ms;
    }
    if (c->subscribed || cfg->idle_timeout_ms == 0)
        return UINT64_MAX;
    *why = CBD_CONN_IDLE;
    return c->last_request_ms + cfg->idle_timeout_ms;
}

/* Ends c if a deadline passed by now_ms: a frame timeout with an error
 * reply, an idle connection without one (see the top of the file). */
static void conn_expire(struct cbd_conn *c, uint64_t now_ms)
{
    struct cbd_control *ctl = &c->d->control;
    const struct cbd_config *cfg = &c->d->cfg;
    enum cbd_conn_end why = CBD_CONN_OPEN;
    uint64_t suppressed;
    if (c->closed || (c->end != CBD_CONN_OPEN && !c->lingering) || now_ms < conn_deadline(c, cfg, &why))
        return;
    if (c->lingering) {
        conn_close(c, why);
    } else if (why == CBD_CONN_FRAME_TIMEOUT) {
        char what[160];
        snprintf(what, sizeof what, "request frame not complete within %u ms of its first byte (frame_timeout_ms = %u)",
                 cfg->frame_timeout_ms, cfg->frame_timeout_ms);
        if (cbd_ratelimit_pass(&ctl->close_warn, &suppressed))
            cbd_log(CBD_LOG_INFO, "control: closing a connection of uid %u pid %d: %s, %zu bytes buffered; %llu more "
                                  "closed since the last line", c->uid, (int)c->pid, what, c->len,
                    (unsigned long long)suppressed);
        send_last(c, -ETIMEDOUT, what, why);
    } else {
        cbd_log(CBD_LOG_DEBUG, "control: closing a connection of uid %u pid %d: no request for %u ms "
                               "(idle_timeout_ms)", c->uid, (int)c->pid, cfg->idle_timeout_ms);
        conn_close(c, why);
    }
}

static void on_timer(uv_timer_t *t);

/* Arms c's timer for its nearest deadline (a socketless one is ticked). */
static void conn_arm(struct cbd_conn *c, uint64_t now_ms)
{
    enum cbd_conn_end why;
    if (c->socketless || c->closed || (c->end != CBD_CONN_OPEN && !c->lingering))
        return;
    uint64_t at = conn_deadline(c, &c->d->cfg, &why);
    if (at == UINT64_MAX)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, at > now_ms ? at - now_ms : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct cbd_conn *c = t->data;
    uint64_t now = uv_now(&c->d->loop);
    conn_expire(c, now);
    conn_arm(c, now); /* still open: a reload moved the deadline */
}

/* ---- reading frames ------------------------------------------------------- */

/* Answers every complete frame in the buffer, which holds bytes that came
 * by now_ms; returns -1 if the connection was given up. */
static int process_frames(struct cbd_conn *c, uint64_t now_ms)
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
            c->d->control.frames_bad++;
            send_last(c, -EMSGSIZE, what, CBD_CONN_BAD_FRAME);
            return -1;
        }
        if (c->len - off - 4 < n)
            break;
        msgpack_unpacked u;
        msgpack_object *req;
        if (cb__mp_unpack_map((const char *)p + 4, n, &u, &req) < 0) {
            c->d->control.frames_bad++;
            send_last(c, -EBADMSG, "malformed msgpack frame", CBD_CONN_BAD_FRAME);
            return -1;
        }
        dispatch(c, req);
        msgpack_unpacked_destroy(&u);
        off += 4 + (size_t)n;
        c->last_request_ms = now_ms;
        if (c->end != CBD_CONN_OPEN)
            return -1;
        if (c->subscribed) { /* what follows subscribe is ignored */
            c->len = 0;
            return 0;
        }
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
    if (off > 0 && c->len > 0) /* the next frame began in this read */
        c->frame_start_ms = now_ms;
    return 0;
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

/* n bytes from the peer, read at now_ms: answer what is complete, then
 * re-arm the deadlines. A deadline that passed before them ends c first,
 * as its timer would have. */
static void conn_feed(struct cbd_conn *c, const char *data, size_t n, uint64_t now_ms)
{
    conn_expire(c, now_ms);
    if (c->end != CBD_CONN_OPEN || c->subscribed || n == 0)
        return; /* ended, or a subscriber, whose requests are ignored */
    if (c->len == 0)
        c->frame_start_ms = now_ms;
    if (append(c, data, n) < 0) {
        cbd_log(CBD_LOG_WARN, "control: out of memory buffering a request: closing the connection");
        conn_close(c, CBD_CONN_HANGUP);
        return;
    }
    if (process_frames(c, now_ms) < 0)
        return;
    size_t queued = conn_queued(c);
    if (queued > CBD_CONTROL_MAX_QUEUED) {
        cbd_log(CBD_LOG_WARN, "control: closing a connection of uid %u pid %d that does not read its replies (%zu "
                              "bytes queued)", c->uid, (int)c->pid, queued);
        conn_close(c, CBD_CONN_SLOW_READER);
        return;
    }
    conn_arm(c, now_ms);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct cbd_conn *c = h->data;
    (void)suggested;
    /* One loop thread, and every read is consumed before the next alloc:
     * all connections can share one read buffer. */
    *buf = uv_buf_init(c->d->control.readbuf, sizeof c->d->control.readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct cbd_conn *c = s->data;
    if (nread == 0 || c->closed)
        return;
    if (nread < 0) /* EOF or a reset: nothing more to answer (a lingering peer has read why) */
        conn_close(c, CBD_CONN_HANGUP);
    else if (!c->lingering)
        conn_feed(c, buf->base, (size_t)nread, uv_now(&c->d->loop));
}

/* ---- accepting ------------------------------------------------------------- */

/* Refuses c (why): counted, logged with a rate limit, told why in one frame;
 * then it lingers (for its peer to send its request and read the answer)
 * if few others do, else it is closed once the frame is out. */
static void refuse(struct cbd_conn *c, enum cbd_conn_end why, uint64_t now_ms)
{
    struct cbd_control *ctl = &c->d->control;
    char what[160];
    uint64_t suppressed;
    refusal_text(&c->d->cfg, why, c->uid, what, sizeof what);
    ctl->ends[why]++;
    ctl->connections_refused++;
    if (cbd_ratelimit_pass(&ctl->refuse_warn, &suppressed))
        cbd_log(CBD_LOG_WARN, "control: refused a connection of uid %u pid %d: %s; %llu more refused since the last "
                              "warning", c->uid, (int)c->pid, what, (unsigned long long)suppressed);
    c->end = why;
    if (!c->socketless && ctl->nlingering < CBD_CONTROL_MAX_LINGERING) {
        c->lingering = 1;
        ctl->nlingering++;
        c->linger_until_ms = now_ms + CBD_CONTROL_LINGER_MS;
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
        conn_arm(c, now_ms);
    }
    struct reply r = {0};
    fail(&r, -EUSERS, "%s", what);
    send_reply(c, &r, 0, 0);
    conn_finish(c, why);
}

/* A new connection, its peer's credentials read: admitted and served, or refused. */
static void conn_start(struct cbd_conn *c, uint64_t now_ms)
{
    struct cbd_control *ctl = &c->d->control;
    c->next = ctl->conns;
    if (c->next)
        c->next->prev = c;
    ctl->conns = c;
    enum cbd_conn_end why = admit(ctl, &c->d->cfg, c->uid, is_admin(ctl, c));
    if (why != CBD_CONN_OPEN) {
        refuse(c, why, now_ms);
        return;
    }
    if (uid_hold(ctl, c->uid) < 0) {
        cbd_log(CBD_LOG_WARN, "control: out of memory accepting a connection of uid %u", c->uid);
        conn_close(c, CBD_CONN_HANGUP);
        return;
    }
    c->admitted = 1;
    ctl->nconns++;
    ctl->connections_total++;
    c->last_request_ms = now_ms;
    if (!c->socketless)
        uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    conn_arm(c, now_ms);
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

/* Close callback of a connection that never got going (pipe is its first member). */
static void free_unstarted(uv_handle_t *h)
{
    free(h);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct cbd *d = server->data;
    uint64_t suppressed;
    if (status < 0) { /* EMFILE: libuv accepted and closed what was pending */
        d->control.accept_errors++;
        if (cbd_ratelimit_pass(&d->control.accept_warn, &suppressed))
            cbd_log(CBD_LOG_WARN, "control: accept failed: %s; %llu more failures since the last warning",
                    uv_strerror(status), (unsigned long long)suppressed);
        return;
    }
    struct cbd_conn *c = calloc(1, sizeof *c);
    if (c == NULL || uv_pipe_init(&d->loop, &c->pipe, 0) < 0) {
        free(c);
        d->control.accept_errors++;
        cbd_log(CBD_LOG_WARN, "control: out of memory accepting a connection");
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        d->control.accept_errors++;
        uv_close((uv_handle_t *)&c->pipe, free_unstarted);
        return;
    }
    c->d = d;
    msgpack_sbuffer_init(&c->out);
    read_peer(c);
    c->pipe.data = c->timer.data = c;
    uv_timer_init(&d->loop, &c->timer);
    c->handles_open = 2;
    conn_start(c, uv_now(&d->loop));
}

/* ---- connections without a socket (control.h) ------------------------------ */

struct cbd_conn *cbd_control_conn_open(struct cbd *d, uint32_t uid, uint32_t gid, pid_t pid, uint64_t now_ms)
{
    struct cbd_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->d = d;
    c->socketless = 1;
    msgpack_sbuffer_init(&c->out);
    c->uid = uid;
    c->gid = gid;
    c->pid = pid;
    conn_start(c, now_ms);
    return c;
}

enum cbd_conn_end cbd_control_conn_feed(struct cbd_conn *c, const void *bytes, size_t n, uint64_t now_ms)
{
    conn_feed(c, bytes, n, now_ms);
    return c->end;
}

enum cbd_conn_end cbd_control_conn_tick(struct cbd_conn *c, uint64_t now_ms)
{
    conn_expire(c, now_ms);
    return c->end;
}

const char *cbd_control_conn_output(const struct cbd_conn *c, size_t *len)
{
    *len = c->out.size;
    return c->out.data;
}

void cbd_control_conn_free(struct cbd_conn *c)
{
    conn_close(c, CBD_CONN_HANGUP);
    conn_free(c);
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

/* Descriptors the daemon needs besides its connections: segment, store,
 * hooks, log, loop. */
#define FDS_BESIDES_CONNECTIONS 64

/* Raises the soft limit of open files so that max_connections can all be
 * open (with the lingering refusals): out of descriptors, accept fails
 * before any limit of ours applies and admins are locked out with
 * everyone else. Warns when the hard limit is too low. */
static void make_room_for_connections(const struct cbd_config *cfg)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)cfg->max_connections + CBD_CONTROL_MAX_LINGERING + FDS_BESIDES_CONNECTIONS;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
        rl.rlim_cur = was;
    if (rl.rlim_cur < need)
        cbd_log(CBD_LOG_WARN, "max_connections = %u needs %llu open files but the limit is %llu (raise LimitNOFILE= "
                              "or ulimit -n): past it, connections fail before admins' reserve applies",
                cfg->max_connections, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
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
    make_room_for_connections(&d->cfg);
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
    if (ctl->listening) {
        ctl->listening = 0;
        uv_close((uv_handle_t *)&ctl->server, NULL);
        unlink(d->cfg.socket);
    }
    while (ctl->conns != NULL)
        conn_close(ctl->conns, CBD_CONN_HANGUP);
}
