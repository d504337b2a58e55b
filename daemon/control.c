/*
 * control.c - the control socket server: the connection layer.
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
 * limit; and connections accepted but not freed yet are bounded (admitted,
 * lingering, and CBD_CONTROL_MAX_CLOSING more): at the bound the daemon
 * stops accepting and new peers wait in the kernel's backlog. So a flood
 * costs memory and log lines bounded by the configuration, not by its rate.
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
 * "..."}, echoing "id" when the request had one. An operation (ops.c) writes its
 * fields into a scratch buffer and counts them; the reply map's header is
 * written once the count is known.
 *
 * Who may do what: the peer's uid, gid and pid (SO_PEERCRED) and its
 * supplementary groups (SO_PEERGROUPS) are read once, at accept. A peer is
 * an admin with uid 0, the daemon's own uid, or admin_group among its
 * groups (the group's gid is looked up at start and reload, never per
 * request: NSS may block). Which operations need an admin, and what each
 * logs, is the operations table's (ops.c); a refusal is -EPERM with a
 * message naming who may.
 *
 * Subscribers: after {"ok": true} to "subscribe", a connection receives one
 * frame per transition, in transition order (libuv writes in order), and
 * whatever it sends is ignored. One that stops reading is disconnected,
 * with a log line, once CBD_CONTROL_MAX_QUEUED bytes wait for it: a slow
 * watcher costs the daemon bounded memory and nobody else anything.
 *
 * Owns the listening socket, the connections (buffers, timers, per-uid
 * counts, lingering refusals) and the decision of who may run an admin op.
 * What a request does is the operations table's (ops.c, given at
 * cbd_control_init): the server must not touch circuits, the policy, the
 * store or the configuration beyond the limits and the socket's own
 * options it reads.
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


struct cbd_conn {
    uv_pipe_t pipe;
    uv_timer_t timer;         /* its nearest deadline (conn_deadline) */
    struct cbd_control *ctl;
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


struct write_req {
    uv_write_t req;
    uv_buf_t buf;
};

int cbd_reply_fail(struct cbd_reply *r, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
    r->err = err;
    return err;
}

void cbd_reply_u64(struct cbd_reply *r, const char *key, uint64_t v)
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

static void on_connection(uv_stream_t *server, int status);

/* How many accepted connections may exist at once: every admitted one,
 * the lingering refusals, and a few more refused or ended but not freed
 * yet. Beyond it the daemon stops accepting, and connections wait in the
 * kernel's backlog: a flood of connection attempts costs memory bounded by
 * the configuration, not by the attempts' rate. */
static uint32_t alive_bound(const struct cbd_control *ctl)
{
    return ctl->cfg->max_connections + CBD_CONTROL_MAX_LINGERING + CBD_CONTROL_MAX_CLOSING;
}

static void conn_free(struct cbd_conn *c)
{
    struct cbd_control *ctl = c->ctl;
    int counted = !c->socketless;
    free(c->buf);
    free(c->groups);
    msgpack_sbuffer_destroy(&c->out);
    free(c);
    if (!counted)
        return;
    ctl->nalive--;
    if (ctl->accept_deferred && ctl->listening && ctl->nalive < alive_bound(ctl)) {
        ctl->accept_deferred = 0;
        on_connection((uv_stream_t *)&ctl->server, 0); /* the one libuv holds; it then polls again */
    }
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
    struct cbd_control *ctl = c->ctl;
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
static void send_reply(struct cbd_conn *c, struct cbd_reply *r, int has_id, uint64_t id)
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
    struct cbd_reply r = {0};
    cbd_reply_fail(&r, err, "%s", what);
    send_reply(c, &r, 0, 0);
    conn_finish(c, why);
}

/* The operation, if the peer may run it; else an -EPERM reply naming who may. */
static void run_op(struct cbd_conn *c, const struct cbd_control_op *op, const msgpack_object *req,
                   struct cbd_reply *r)
{
    struct cbd_control *ctl = c->ctl;
    uint64_t suppressed;
    struct cbd_peer peer = {.uid = c->uid, .gid = c->gid, .pid = c->pid, .admin = is_admin(ctl, c)};
    if (!op->admin || peer.admin) {
        op->run(ctl->ops_arg, &peer, req, r);
        return;
    }
    cbd_reply_fail(r, -EPERM, "permission denied: '%s' needs %s", op->name, ctl->admins);
    if (cbd_ratelimit_pass(&ctl->deny_warn, &suppressed))
        cbd_log(CBD_LOG_WARN, "control: refused '%s' to uid %u gid %u pid %d: not an admin (%s); %llu more "
                              "refusals since the last warning", op->name, c->uid, c->gid, (int)c->pid,
                ctl->admins, (unsigned long long)suppressed);
}

/* After the {"ok": true} reply to an op that asked for it, the connection
 * only receives transitions. */
static void subscribe(struct cbd_conn *c)
{
    c->subscribed = 1;
    c->ctl->nsubscribers++;
    cbd_log(CBD_LOG_DEBUG, "control: uid %u pid %d subscribed to transitions", c->uid, (int)c->pid);
}

/* Answers one well-formed request map. */
static void dispatch(struct cbd_conn *c, const msgpack_object *req)
{
    struct cbd_reply r = {0};
    char op[32];
    uint64_t id = 0;
    msgpack_sbuffer_init(&r.body);
    msgpack_packer_init(&r.pk, &r.body, msgpack_sbuffer_write);
    int id_rc = cb__mp_get_u64(req, "id", &id);
    int rc = cb__mp_get_str(req, "op", op, sizeof op);
    if (id_rc == -EINVAL)
        cbd_reply_fail(&r, -EINVAL, "field 'id' must be an unsigned integer");
    else if (rc == -ENOENT)
        cbd_reply_fail(&r, -EINVAL, "missing field 'op' (register, list, show, stats, ... : see docs/protocol.md)");
    else if (rc < 0)
        cbd_reply_fail(&r, -EINVAL, "field 'op' must be a short string");
    else {
        const struct cbd_control *ctl = c->ctl;
        size_t i = 0;
        while (i < ctl->nops && strcmp(ctl->ops[i].name, op) != 0)
            i++;
        if (i == ctl->nops)
            cbd_reply_fail(&r, -EOPNOTSUPP, "unknown op '%s'", op);
        else
            run_op(c, &ctl->ops[i], req, &r);
    }
    c->ctl->requests++;
    if (r.err == 0 && r.subscribe)
        subscribe(c);
    send_reply(c, &r, id_rc == 0, id);
    msgpack_sbuffer_destroy(&r.body);
}

/* ---- transitions to subscribers -------------------------------------------- */

void cbd_control_publish(struct cbd_control *ctl, const struct cbd_hook_event *ev, unsigned flags)
{
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
    struct cbd_control *ctl = c->ctl;
    const struct cbd_config *cfg = c->ctl->cfg;
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
    uint64_t at = conn_deadline(c, c->ctl->cfg, &why);
    if (at == UINT64_MAX)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_timer, at > now_ms ? at - now_ms : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct cbd_conn *c = t->data;
    uint64_t now = uv_now(c->ctl->loop);
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
            c->ctl->frames_bad++;
            send_last(c, -EMSGSIZE, what, CBD_CONN_BAD_FRAME);
            return -1;
        }
        if (c->len - off - 4 < n)
            break;
        msgpack_unpacked u;
        msgpack_object *req;
        if (cb__mp_unpack_map((const char *)p + 4, n, &u, &req) < 0) {
            c->ctl->frames_bad++;
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
    *buf = uv_buf_init(c->ctl->readbuf, sizeof c->ctl->readbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct cbd_conn *c = s->data;
    if (nread == 0 || c->closed)
        return;
    if (nread < 0) /* EOF or a reset: nothing more to answer (a lingering peer has read why) */
        conn_close(c, CBD_CONN_HANGUP);
    else if (!c->lingering)
        conn_feed(c, buf->base, (size_t)nread, uv_now(c->ctl->loop));
}

/* ---- accepting ------------------------------------------------------------- */

/* Refuses c (why): counted, logged with a rate limit, told why in one frame;
 * then it lingers (for its peer to send its request and read the answer)
 * if few others do, else it is closed once the frame is out. */
static void refuse(struct cbd_conn *c, enum cbd_conn_end why, uint64_t now_ms)
{
    struct cbd_control *ctl = c->ctl;
    char what[160];
    uint64_t suppressed;
    refusal_text(c->ctl->cfg, why, c->uid, what, sizeof what);
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
    struct cbd_reply r = {0};
    cbd_reply_fail(&r, -EUSERS, "%s", what);
    send_reply(c, &r, 0, 0);
    conn_finish(c, why);
}

/* A new connection, its peer's credentials read: admitted and served, or refused. */
static void conn_start(struct cbd_conn *c, uint64_t now_ms)
{
    struct cbd_control *ctl = c->ctl;
    c->next = ctl->conns;
    if (c->next)
        c->next->prev = c;
    ctl->conns = c;
    enum cbd_conn_end why = admit(ctl, c->ctl->cfg, c->uid, is_admin(ctl, c));
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
    struct cbd_control *ctl = server->data;
    uint64_t suppressed;
    if (status < 0) { /* EMFILE: libuv accepted and closed what was pending */
        ctl->accept_errors++;
        if (cbd_ratelimit_pass(&ctl->accept_warn, &suppressed))
            cbd_log(CBD_LOG_WARN, "control: accept failed: %s; %llu more failures since the last warning",
                    uv_strerror(status), (unsigned long long)suppressed);
        return;
    }
    if (ctl->nalive >= alive_bound(ctl)) {
        /* Not accepted: libuv keeps it and stops polling until conn_free
         * calls here again (uv_accept restarts the polling). */
        ctl->accept_deferred = 1;
        return;
    }
    struct cbd_conn *c = calloc(1, sizeof *c);
    if (c == NULL || uv_pipe_init(ctl->loop, &c->pipe, 0) < 0) {
        free(c);
        ctl->accept_errors++;
        ctl->accept_deferred = ctl->nalive > 0; /* libuv holds it: tried again when a connection is freed */
        cbd_log(CBD_LOG_WARN, "control: out of memory accepting a connection");
        return;
    }
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        ctl->accept_errors++;
        uv_close((uv_handle_t *)&c->pipe, free_unstarted);
        return;
    }
    ctl->nalive++;
    c->ctl = ctl;
    msgpack_sbuffer_init(&c->out);
    read_peer(c);
    c->pipe.data = c->timer.data = c;
    uv_timer_init(ctl->loop, &c->timer);
    c->handles_open = 2;
    conn_start(c, uv_now(ctl->loop));
}

/* ---- connections without a socket (control.h) ------------------------------ */

struct cbd_conn *cbd_control_conn_open(struct cbd_control *ctl, uint32_t uid, uint32_t gid, pid_t pid, uint64_t now_ms)
{
    struct cbd_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->ctl = ctl;
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

void cbd_control_init(struct cbd_control *ctl, uv_loop_t *loop, const struct cbd_config *cfg,
                      const struct cbd_control_op *ops, size_t nops, void *ops_arg)
{
    memset(ctl, 0, sizeof *ctl);
    ctl->loop = loop;
    ctl->cfg = cfg;
    ctl->ops = ops;
    ctl->nops = nops;
    ctl->ops_arg = ops_arg;
    ctl->admin_gid = -1;
}

void cbd_control_configure(struct cbd_control *ctl)
{
    const struct passwd *pw = getpwuid(geteuid());
    char self[96] = "";
    unsigned gid;
    ctl->admin_gid = cbd_config_gid(ctl->cfg->admin_group, &gid) == 0 ? (long)gid : -1;
    if (geteuid() != 0)
        snprintf(self, sizeof self, ", uid %u (%s)", (unsigned)geteuid(), pw ? pw->pw_name : "?");
    if (ctl->admin_gid >= 0)
        snprintf(ctl->admins, sizeof ctl->admins, "root%s or group '%s'", self, ctl->cfg->admin_group);
    else
        snprintf(ctl->admins, sizeof ctl->admins, "root%s (no admin_group is configured)", self);
    if (ctl->cfg->admin_group[0] != '\0' && ctl->admin_gid < 0)
        cbd_log(CBD_LOG_WARN, "admin_group '%s' does not exist (any more): only %s may use admin operations",
                ctl->cfg->admin_group, ctl->admins);
    make_room_for_connections(ctl->cfg);
}

/* Gives the socket file its mode and group. */
static int set_socket_owner(const struct cbd_config *cfg, const char *path)
{
    unsigned gid;
    if (chmod(path, cfg->socket_mode) < 0)
        return -errno;
    if (cfg->socket_group[0] == '\0')
        return 0;
    if (cbd_config_gid(cfg->socket_group, &gid) < 0)
        return -ENOENT;
    return chown(path, (uid_t)-1, (gid_t)gid) < 0 ? -errno : 0;
}

int cbd_control_listen(struct cbd_control *ctl)
{
    const char *path = ctl->cfg->socket;
    int rc = make_parent(path);
    if (rc < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot create the directory of control socket %s: %s", path, strerror(-rc));
        return rc;
    }
    if ((rc = clear_stale(path)) < 0)
        return rc;
    if ((rc = uv_pipe_init(ctl->loop, &ctl->server, 0)) < 0)
        return rc;
    ctl->server.data = ctl;
    ctl->listening = 1;
    /* Mode and group before listen: nobody connects through the umask's mode. */
    if ((rc = uv_pipe_bind(&ctl->server, path)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot bind control socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    if ((rc = set_socket_owner(ctl->cfg, path)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot give control socket %s mode %04o and group '%s': %s", path,
                ctl->cfg->socket_mode, ctl->cfg->socket_group[0] ? ctl->cfg->socket_group : "(unchanged)", strerror(-rc));
        return rc;
    }
    if ((rc = uv_listen((uv_stream_t *)&ctl->server, 128, on_connection)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot listen on control socket %s: %s", path, uv_strerror(rc));
        return rc;
    }
    cbd_control_configure(ctl);
    return 0;
}


void cbd_control_close(struct cbd_control *ctl)
{
    if (ctl->listening) {
        ctl->listening = 0;
        uv_close((uv_handle_t *)&ctl->server, NULL);
        unlink(ctl->cfg->socket);
    }
    while (ctl->conns != NULL)
        conn_close(ctl->conns, CBD_CONN_HANGUP);
}
