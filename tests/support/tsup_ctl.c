/*
 * tsup_ctl.c - talk to cbd's control socket the way a test needs to: well
 * formed requests through frame.h's helpers (the same code libcb uses), and
 * raw bytes for the tests that feed the daemon garbage.
 *
 * A read distinguishes the two acceptable answers to bad input - an error
 * reply, or the daemon closing the connection - from the one unacceptable
 * answer: silence until the liveness bound (a daemon stuck on a frame).
 */
#include "tsup.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"

int tsup_ctl_connect(const struct tsup_daemon *d)
{
    return cb__unix_connect(d->socket);
}

int tsup_ctl_send_raw(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        }
    }
    return 0;
}

int tsup_ctl_read(int fd, struct tsup_reply *r)
{
    memset(r, 0, sizeof *r);
    size_t len;
    int rc = cb__frame_read(fd, &r->buf, &len, TSUP_LIVENESS_MS);
    if (rc == -ECONNRESET || rc == -EPIPE)
        return 0;
    if (rc == -EMSGSIZE)
        return -EBADMSG;
    if (rc < 0)
        return rc;
    rc = cb__mp_unpack_map(r->buf, len, &r->result, &r->map);
    if (rc < 0) {
        free(r->buf);
        r->buf = NULL;
        return rc;
    }
    return 1;
}

int tsup_ctl_call(int fd, const msgpack_sbuffer *req, struct tsup_reply *r)
{
    memset(r, 0, sizeof *r);
    int rc = cb__frame_write(fd, req->data, req->size, TSUP_LIVENESS_MS);
    if (rc == -EPIPE || rc == -ECONNRESET)
        return 0;
    return rc < 0 ? rc : tsup_ctl_read(fd, r);
}

void tsup_req_begin(msgpack_sbuffer *sb, msgpack_packer *pk, const char *op, uint32_t n)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, n);
    cb__mp_kv_str(pk, "op", op);
}

int tsup_ctl_op(const struct tsup_daemon *d, const char *op, struct tsup_reply *r)
{
    memset(r, 0, sizeof *r);
    int fd = tsup_ctl_connect(d);
    if (fd < 0)
        return fd;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, op, 1);
    int rc = tsup_ctl_call(fd, &sb, r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    return rc;
}

void tsup_reply_free(struct tsup_reply *r)
{
    if (r->buf) {
        msgpack_unpacked_destroy(&r->result);
        free(r->buf);
        r->buf = NULL;
    }
}

bool tsup_reply_ok(const struct tsup_reply *r)
{
    int ok = 0;
    return r->buf && cb__mp_get_bool(r->map, "ok", &ok) == 0 && ok;
}

int64_t tsup_reply_error(const struct tsup_reply *r)
{
    int64_t err = 0;
    if (r->buf == NULL || cb__mp_get_i64(r->map, "error", &err) < 0)
        return 0;
    return err;
}

int tsup_ctl_named_op(const struct tsup_daemon *d, const char *op, const char *name)
{
    int fd = tsup_ctl_connect(d);
    cr_assert_geq(fd, 0, "%s %s: cannot connect to %s", op, name, d->socket);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, op, 2);
    cb__mp_kv_str(&pk, "name", name);
    struct tsup_reply r;
    int got = tsup_ctl_call(fd, &sb, &r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    cr_assert_eq(got, 1, "%s %s: no reply (%d)", op, name, got);
    int rc = tsup_reply_ok(&r) ? 0 : (int)tsup_reply_error(&r);
    tsup_reply_free(&r);
    return rc;
}

void tsup_ctl_named_op_ok(const struct tsup_daemon *d, const char *op, const char *name)
{
    int rc = tsup_ctl_named_op(d, op, name);
    cr_assert_eq(rc, 0, "%s %s: error %d (%s)", op, name, rc, cb_strerror(rc));
}

long tsup_proc_status_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    size_t n = strlen(field);
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot read %s", path);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':' && sscanf(line + n + 1, "%ld kB", &kib) == 1)
            break;
    fclose(f);
    cr_assert_geq(kib, 0, "%s has no %s line", path, field);
    return kib;
}

long tsup_proc_anon_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "cannot read %s", path);
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Anonymous: %ld kB", &kib) == 1)
            break;
    fclose(f);
    cr_assert_geq(kib, 0, "%s has no Anonymous line", path);
    return kib;
}

bool tsup_ping(const struct tsup_daemon *d)
{
    struct tsup_reply r;
    bool ok = tsup_ctl_op(d, "ping", &r) == 1 && tsup_reply_ok(&r);
    tsup_reply_free(&r);
    return ok;
}

uint64_t tsup_stat(const struct tsup_daemon *d, const char *field)
{
    struct tsup_reply r;
    int rc = tsup_ctl_op(d, "stats", &r);
    cr_assert_eq(rc, 1, "stats on %s: no reply (%d)", d->socket, rc);
    cr_assert(tsup_reply_ok(&r), "stats on %s: error %lld", d->socket, (long long)tsup_reply_error(&r));
    /* Counters sit in a "stats" map (cbd 0.1) or beside "ok" (as
     * docs/protocol.md has it): read either. */
    const msgpack_object *nested = cb__mp_get(r.map, "stats");
    uint64_t v = 0;
    rc = cb__mp_get_u64(nested ? nested : r.map, field, &v);
    tsup_reply_free(&r);
    cr_assert_eq(rc, 0, "stats has no counter '%s' (%d)", field, rc);
    return v;
}
