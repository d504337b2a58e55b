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
 * Peer credentials (SO_PEERCRED) and -EPERM come with the operator ops.
 */
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
};

struct reply {
    int err;                /* 0: ok; else -errno */
    char message[320];
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

static const char *const config_fields[] = {"failure_threshold", "success_threshold", "half_open_max_probes",
                                            "recovery_timeout_ms", "probe_lease_ms"};

/* The optional "config" map of register over the daemon's defaults. */
static int parse_config(const msgpack_object *m, cb_config *cfg, struct reply *r)
{
    uint32_t *dst[] = {&cfg->failure_threshold, &cfg->success_threshold, &cfg->half_open_max_probes,
                       &cfg->recovery_timeout_ms, &cfg->probe_lease_ms};
    if (m->type != MSGPACK_OBJECT_MAP)
        return fail(r, -EINVAL, "field 'config' must be a map");
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key, *v = &m->via.map.ptr[i].val;
        size_t f = 0;
        while (f < 5 && !(k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(config_fields[f]) &&
                          memcmp(k->via.str.ptr, config_fields[f], k->via.str.size) == 0))
            f++;
        if (f == 5)
            return fail(r, -EINVAL, "unknown field in 'config' (expected failure_threshold, success_threshold, "
                                    "half_open_max_probes, recovery_timeout_ms, probe_lease_ms)");
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
            return fail(r, -EINVAL, "field 'config.%s' must be an unsigned 32-bit integer", config_fields[f]);
        *dst[f] = (uint32_t)v->via.u64;
    }
    return 0;
}

static int op_register(struct cbd *d, const msgpack_object *req, struct reply *r)
{
    char name[CB_NAME_MAX + 1];
    int rc = cb__mp_get_str(req, "name", name, sizeof name);
    if (rc == -ENOENT)
        return fail(r, -EINVAL, "missing field 'name' (a circuit name)");
    if (rc == -ENAMETOOLONG)
        return fail(r, -EINVAL, "field 'name' is longer than %u bytes", CB_NAME_MAX);
    if (rc < 0)
        return fail(r, -EINVAL, "field 'name' must be a string");
    const msgpack_object *m = cb__mp_get(req, "config");
    cb_config cfg = d->cfg.defaults;
    if (m != NULL && m->type != MSGPACK_OBJECT_NIL && parse_config(m, &cfg, r) < 0)
        return r->err;
    uint32_t slot;
    int created;
    rc = cbd_circuit_register(d, name, m != NULL && m->type != MSGPACK_OBJECT_NIL ? &cfg : NULL, &slot, &created,
                              r->message, sizeof r->message);
    if (rc < 0)
        return r->err = rc;
    field_u64(r, "slot", slot);
    cb__mp_kv_bool(&r->pk, "created", created);
    r->nfields++;
    return 0;
}

static int op_version(struct cbd *d, const msgpack_object *req, struct reply *r)
{
    (void)d;
    (void)req;
    cb__mp_kv_str(&r->pk, "version", CB_VERSION_STRING);
    field_u64(r, "layout", CB_SEG_MAJOR);
    r->nfields++;
    return 0;
}

static int op_ping(struct cbd *d, const msgpack_object *req, struct reply *r)
{
    (void)d;
    (void)req;
    (void)r;
    return 0;
}

static int op_stats(struct cbd *d, const msgpack_object *req, struct reply *r)
{
    (void)req;
    cb__mp_pack_str(&r->pk, "stats");
    msgpack_pack_map(&r->pk, 13);
    r->nfields++;
    cb__mp_kv_u64(&r->pk, "circuits", d->ncircuits);
    cb__mp_kv_u64(&r->pk, "events_drained", d->drain.events_drained);
    cb__mp_kv_u64(&r->pk, "events_invalid", d->drain.events_invalid);
    cb__mp_kv_u64(&r->pk, "events_stale", d->drain.events_stale);
    cb__mp_kv_u64(&r->pk, "lanes_in_use", cbd_drain_lanes_in_use(d));
    cb__mp_kv_u64(&r->pk, "lanes_reclaimed", d->drain.lanes_reclaimed);
    cb__mp_kv_u64(&r->pk, "lane_overruns", d->drain.lane_overruns);
    cb__mp_kv_u64(&r->pk, "lane_drops", cbd_drain_lane_drops(d));
    cb__mp_kv_u64(&r->pk, "frames_bad", d->control.frames_bad);
    cb__mp_kv_u64(&r->pk, "connections", d->control.nconns);
    cb__mp_kv_u64(&r->pk, "connections_total", d->control.connections_total);
    cb__mp_kv_u64(&r->pk, "connections_refused", d->control.connections_refused);
    cb__mp_kv_u64(&r->pk, "transitions", d->transitions);
    return 0;
}

static const struct {
    const char *name;
    int (*run)(struct cbd *d, const msgpack_object *req, struct reply *r);
} ops[] = {
    {"register", op_register},
    {"version", op_version},
    {"ping", op_ping},
    {"stats", op_stats},
};

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
        fail(&r, -EINVAL, "missing field 'op' (register, version, ping or stats)");
    else if (rc < 0)
        fail(&r, -EINVAL, "field 'op' must be a short string");
    else {
        size_t i = 0;
        while (i < sizeof ops / sizeof ops[0] && strcmp(ops[i].name, op) != 0)
            i++;
        if (i == sizeof ops / sizeof ops[0])
            fail(&r, -EOPNOTSUPP, "unknown op '%s'", op);
        else
            ops[i].run(c->d, req, &r);
    }
    c->d->control.requests++;
    send_reply(c, &r, id_rc == 0, id);
    msgpack_sbuffer_destroy(&r.body);
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
    if ((rc = uv_pipe_bind(&ctl->server, path)) < 0 || (rc = chmod(path, d->cfg.socket_mode) < 0 ? -errno : 0) < 0 ||
        (rc = uv_listen((uv_stream_t *)&ctl->server, 128, on_connection)) < 0) {
        cbd_log(CBD_LOG_ERROR, "cannot listen on control socket %s: %s", path, strerror(-rc));
        return rc;
    }
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
