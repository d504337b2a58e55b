/*
 * ctl.c - the client's control connection to cbd: one per process,
 * replies matched to requests by id, and registrations that are sent and
 * answered without the hot path ever waiting for them.
 *
 * One connection per process. A prefork master that registered a circuit
 * has a connection when it forks; children that went on using the
 * inherited socket would read each other's replies (and the master's) and
 * bind handles to circuits they did not ask for. So the connection
 * remembers the pid that connected it and is never read or written by
 * another process: the fork child handler (client.c) drops the inherited
 * one at once, closing only the child's copy of the descriptor (the
 * parent's connection is untouched), and where no handler ran (a raw
 * clone) the pid check here notices. A descriptor is closed only while it
 * is still the socket we connected (st_dev, st_ino): a process that closes
 * descriptors it did not open may have reused the number.
 *
 * Ids. Every request carries an "id" from a per-client counter and cbd
 * echoes it. A reply is given to the queued request with its id; a reply
 * no request is waiting for (one given up on, a confused peer) is dropped
 * and counted. cbd answers one connection's requests in order, so the
 * match is at the head of the queue, but nothing depends on it.
 *
 * Never waiting. The socket is non-blocking, connect included (a stopped
 * daemon whose backlog is full is -EAGAIN, not a hang). A registration is
 * packed into the out buffer and its handle queued; cb__ctl_pump sends what
 * the socket takes and reads what has arrived. Whoever holds the client
 * lock pumps: the hot path's slow branch (with trylock, at most once per
 * coarse clock tick), cb_status, cb_circuit_get and cb_info_get. Only
 * cb_circuit_get waits for an answer (cb__ctl_wait): it polls the socket
 * with the client lock released, in slices of 10 ms, so an answer another
 * thread read for it is noticed soon and no other call waits behind it.
 *
 * A connection that fails (EOF, reset, a bad frame length) is dropped: its
 * registrations in flight go back to unsent and are sent again on the next
 * connection, made at the earliest 100 ms later from the hot path.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define CTL_OUT_MAX (256u * 1024u) /* unsent bytes: beyond, the daemon is not reading; queue later */
#define CTL_WAIT_SLICE_MS 10
#define CTL_DROPS_MAX 2 /* a registration waited for gives up after the connection failed twice */

void cb__ctl_drop(cb_client *cl, bool inherited_fd_is_ours)
{
    struct cb__ctl *x = &cl->ctl;
    if (x->fd >= 0) {
        if (inherited_fd_is_ours || cb__fd_is(x->fd, x->dev, x->ino))
            close(x->fd);
        x->fd = -1;
        x->drops++;
    }
    x->out_len = x->out_sent = 0;
    x->in_len = 0;
    for (cb_circuit *c = x->head, *next; c != NULL; c = next) {
        next = c->reg_next;
        c->reg_id = 0;
        c->reg_next = NULL;
    }
    x->head = x->tail = NULL;
}

void cb__ctl_free(cb_client *cl)
{
    cb__ctl_drop(cl, false);
    free(cl->ctl.out);
    free(cl->ctl.in);
    cl->ctl.out = cl->ctl.in = NULL;
}

/* A connection of this process to the current mapping's daemon: 0, or
 * -errno (with backoff, a failure less than 100 ms ago is -EAGAIN). */
static int ctl_connect(cb_client *cl, bool backoff)
{
    struct cb__ctl *x = &cl->ctl;
    if (x->fd >= 0 && x->pid == getpid())
        return 0;
    if (x->fd >= 0)
        cb__ctl_drop(cl, false); /* inherited: the parent's to use */
    int64_t now = cb__clock_ns(CLOCK_MONOTONIC_COARSE);
    if (backoff && now < x->retry_ns)
        return -EAGAIN;
    if (x->in == NULL && (x->in = malloc(CB__CTL_IN_SIZE)) == NULL)
        return -ENOMEM;
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_relaxed);
    int fd = cb__unix_connect_nonblock(m->socket_path);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) < 0) {
        int err = -errno;
        close(fd);
        fd = err;
    }
    if (fd < 0) {
        x->retry_ns = now + CB__RETRY_NS;
        return fd;
    }
    x->fd = fd;
    x->pid = getpid();
    x->dev = st.st_dev;
    x->ino = st.st_ino;
    return 0;
}

/* Sends what the socket takes: 0 (all sent, or the rest must wait) or -errno. */
static int ctl_flush(struct cb__ctl *x)
{
    while (x->out_sent < x->out_len) {
        ssize_t n = send(x->fd, x->out + x->out_sent, x->out_len - x->out_sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0)
            x->out_sent += (size_t)n;
        else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        else if (n == 0 || errno != EINTR)
            return n == 0 ? -EPIPE : -errno;
    }
    x->out_len = x->out_sent = 0;
    return 0;
}

/* Appends one framed request to the out buffer: 0, -EAGAIN (the daemon has
 * not read what is there), -ENOMEM or -EMSGSIZE. */
static int ctl_append(struct cb__ctl *x, const char *payload, size_t len)
{
    if (len == 0 || len > CB_FRAME_MAX)
        return -EMSGSIZE;
    if (x->out_len - x->out_sent > CTL_OUT_MAX)
        return -EAGAIN;
    if (x->out_sent > 0) { /* reclaim what was sent */
        memmove(x->out, x->out + x->out_sent, x->out_len - x->out_sent);
        x->out_len -= x->out_sent;
        x->out_sent = 0;
    }
    char *out = realloc(x->out, x->out_len + CB_FRAME_HEADER + len);
    if (out == NULL)
        return -ENOMEM;
    cb__frame_header((unsigned char *)out + x->out_len, len);
    memcpy(out + x->out_len + CB_FRAME_HEADER, payload, len);
    x->out = out;
    x->out_len += CB_FRAME_HEADER + len;
    return 0;
}

static void pack_register(msgpack_packer *pk, uint64_t id, const cb_circuit *c)
{
    msgpack_pack_map(pk, c->has_cfg ? 4 : 3);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_u64(pk, "id", id);
    cb__mp_kv_str(pk, "name", c->name);
    if (!c->has_cfg)
        return;
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, CB_POLICY_NFIELDS); /* every field of CB_POLICY_FIELDS, by name */
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        cb__mp_kv_u64(pk, cb__policy_fields[i].name, *cb__config_field((cb_config *)&c->cfg, i));
}

/* The connection failed: drop it, and connect again no sooner than 100 ms
 * from now (a daemon that closes every connection is not hammered). */
static void ctl_failed(cb_client *cl)
{
    cb__ctl_drop(cl, false);
    cl->ctl.retry_ns = cb__clock_ns(CLOCK_MONOTONIC_COARSE) + CB__RETRY_NS;
}

int cb__ctl_register(cb_client *cl, cb_circuit *c, bool backoff)
{
    struct cb__ctl *x = &cl->ctl;
    if (c->reg_id != 0)
        return 0; /* in flight */
    int rc = ctl_connect(cl, backoff);
    if (rc < 0)
        return rc;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    uint64_t id = x->next_id++;
    pack_register(&pk, id, c);
    rc = sb.data != NULL ? ctl_append(x, sb.data, sb.size) : -ENOMEM;
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        return rc;
    c->reg_id = id;
    c->reg_next = NULL;
    if (x->tail != NULL)
        x->tail->reg_next = c;
    else
        x->head = c;
    x->tail = c;
    if (ctl_flush(x) < 0)
        ctl_failed(cl); /* c goes back to unsent */
    return 0;
}

/* The queued registration with this id, taken off the queue, or NULL. */
static cb_circuit *queue_take(struct cb__ctl *x, uint64_t id)
{
    cb_circuit *prev = NULL;
    for (cb_circuit *c = x->head; c != NULL; prev = c, c = c->reg_next) {
        if (c->reg_id != id)
            continue;
        if (prev != NULL)
            prev->reg_next = c->reg_next;
        else
            x->head = c->reg_next;
        if (x->tail == c)
            x->tail = prev;
        c->reg_id = 0;
        c->reg_next = NULL;
        return c;
    }
    return NULL;
}

/* 0 for {"ok":true}, the daemon's -errno for {"ok":false}, else
 * CB_EPROTO_DAEMON. */
static int reply_status(const msgpack_object *reply)
{
    int ok;
    int64_t err;
    if (cb__mp_get_bool(reply, "ok", &ok) < 0)
        return CB_EPROTO_DAEMON;
    if (ok)
        return 0;
    if (cb__mp_get_i64(reply, "error", &err) < 0 || err >= 0 || err < -4095)
        return CB_EPROTO_DAEMON;
    return (int)err;
}

/* One reply: to the registration whose id it carries, or dropped. */
static void ctl_reply(cb_client *cl, const char *payload, size_t len)
{
    struct cb__ctl *x = &cl->ctl;
    msgpack_unpacked res;
    msgpack_object *reply;
    uint64_t id, slot = 0;
    if (cb__mp_unpack_map(payload, len, &res, &reply) < 0) {
        x->unmatched++;
        return;
    }
    cb_circuit *c = cb__mp_get_u64(reply, "id", &id) == 0 ? queue_take(x, id) : NULL;
    if (c == NULL) {
        x->unmatched++;
    } else {
        int rc = reply_status(reply);
        if (rc == 0 && cb__mp_get_u64(reply, "slot", &slot) < 0)
            rc = CB_EPROTO_DAEMON;
        c->reg_answers++;
        cb__circuit_registered(c, rc, slot);
    }
    msgpack_unpacked_destroy(&res);
}

/* Answers every whole frame in the in buffer: 0, or -EMSGSIZE (a length
 * that is no frame: the stream is lost). */
static int ctl_replies(cb_client *cl)
{
    struct cb__ctl *x = &cl->ctl;
    size_t off = 0, n;
    int whole;
    while ((whole = cb__frame_peek(x->in + off, x->in_len - off, &n)) == 1) {
        ctl_reply(cl, x->in + off + CB_FRAME_HEADER, n);
        off += CB_FRAME_HEADER + n;
    }
    memmove(x->in, x->in + off, x->in_len - off);
    x->in_len -= off;
    return whole < 0 ? whole : 0;
}

void cb__ctl_pump(cb_client *cl)
{
    struct cb__ctl *x = &cl->ctl;
    if (x->fd < 0)
        return;
    if (x->pid != getpid()) {
        cb__ctl_drop(cl, false); /* a parent's connection: never read */
        return;
    }
    int rc = ctl_flush(x);
    while (rc == 0 && x->in_len < CB__CTL_IN_SIZE) {
        ssize_t n = recv(x->fd, x->in + x->in_len, CB__CTL_IN_SIZE - x->in_len, MSG_DONTWAIT);
        if (n > 0) {
            x->in_len += (size_t)n;
            rc = ctl_replies(cl);
        } else if (n == 0) {
            rc = -ECONNRESET;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            break;
        } else if (errno != EINTR) {
            rc = -errno;
        }
    }
    if (rc < 0)
        ctl_failed(cl);
}

int cb__ctl_wait(cb_client *cl, cb_circuit *c, uint32_t answers_before, int64_t deadline_ns)
{
    struct cb__ctl *x = &cl->ctl;
    uint32_t drops_before = x->drops;
    for (;;) {
        cb__ctl_pump(cl);
        if (c->reg_answers != answers_before)
            return c->reg_err;
        if (x->drops - drops_before >= CTL_DROPS_MAX)
            return -ECONNRESET;
        if (c->reg_id == 0) { /* not sent yet, or the connection failed before the answer */
            int rc = cb__ctl_register(cl, c, false);
            if (rc < 0 && rc != -EAGAIN)
                return rc;
        }
        int64_t left_ms = (deadline_ns - cb__clock_ns(CLOCK_MONOTONIC)) / 1000000;
        if (left_ms <= 0)
            return -ETIMEDOUT; /* still in flight: a late answer binds the handle */
        struct pollfd p = {.fd = x->fd, .events = POLLIN | (x->out_sent < x->out_len ? POLLOUT : 0)};
        int slice = left_ms < CTL_WAIT_SLICE_MS ? (int)left_ms : CTL_WAIT_SLICE_MS;
        pthread_mutex_unlock(&cl->lock);
        if (p.fd >= 0)
            poll(&p, 1, slice);
        else /* no connection yet (the daemon's backlog is full): try again in a moment */
            nanosleep(&(struct timespec){0, 1000000}, NULL);
        pthread_mutex_lock(&cl->lock);
    }
}
