/*
 * frame.c - control socket framing and bounded msgpack handling (frame.h).
 *
 * The checker is a small recursive walk over msgpack's type bytes. It
 * allocates nothing and reads each byte at most once; its only job is to
 * prove, before msgpack-c sees the bytes, that every length and element
 * count is backed by bytes actually present.
 */
#include "frame.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static uint64_t be_read(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Walks one object at *pos; returns 0 and advances *pos, or -EBADMSG. */
static int mp_walk(const unsigned char *b, size_t len, size_t *pos, int depth)
{
    if (depth > CB_FRAME_DEPTH_MAX || *pos >= len)
        return -EBADMSG;
    unsigned char t = b[(*pos)++];
    size_t left = len - *pos;
    uint64_t skip = 0, count = 0; /* payload bytes to skip, child objects to walk */
    int lenbytes = 0;

    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3)
        return 0;
    if (t >= 0x80 && t <= 0x8f)
        count = (uint64_t)(t & 0x0f) * 2;
    else if (t >= 0x90 && t <= 0x9f)
        count = t & 0x0f;
    else if (t >= 0xa0 && t <= 0xbf)
        skip = t & 0x1f;
    else {
        switch (t) {
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xc4: case 0xd9: lenbytes = 1; break;
        case 0xc5: case 0xda: lenbytes = 2; break;
        case 0xc6: case 0xdb: lenbytes = 4; break;
        case 0xc7: lenbytes = 1; skip = 1; break; /* ext: + type byte */
        case 0xc8: lenbytes = 2; skip = 1; break;
        case 0xc9: lenbytes = 4; skip = 1; break;
        case 0xdc: case 0xdd: case 0xde: case 0xdf: {
            int n = (t == 0xdc || t == 0xde) ? 2 : 4;
            if (left < (size_t)n)
                return -EBADMSG;
            count = be_read(b + *pos, n) * ((t >= 0xde) ? 2 : 1);
            *pos += n;
            left -= n;
            break;
        }
        default: /* 0xc1 is never used */
            return -EBADMSG;
        }
    }
    if (lenbytes) {
        if (left < (size_t)lenbytes)
            return -EBADMSG;
        skip += be_read(b + *pos, lenbytes);
        *pos += lenbytes;
        left -= lenbytes;
    }
    if (skip > left)
        return -EBADMSG;
    *pos += skip;
    /* Every child takes at least one byte: a count above the bytes left is
     * a lie, and exactly what would make msgpack-c over-allocate. */
    if (count > len - *pos)
        return -EBADMSG;
    for (uint64_t i = 0; i < count; i++) {
        int rc = mp_walk(b, len, pos, depth + 1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int cb__mp_check(const char *buf, size_t len)
{
    size_t pos = 0;
    int rc = mp_walk((const unsigned char *)buf, len, &pos, 0);
    if (rc < 0)
        return rc;
    return pos == len ? 0 : -EBADMSG;
}

int cb__mp_unpack_map(const char *buf, size_t len, msgpack_unpacked *result, msgpack_object **out)
{
    if (cb__mp_check(buf, len) < 0)
        return -EBADMSG;
    msgpack_unpacked_init(result);
    size_t off = 0;
    if (msgpack_unpack_next(result, buf, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        result->data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(result);
        return -EBADMSG;
    }
    *out = &result->data;
    return 0;
}

const msgpack_object *cb__mp_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen && memcmp(k->via.str.ptr, key, klen) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

int cb__mp_get_u64(const msgpack_object *map, const char *key, uint64_t *out)
{
    const msgpack_object *v = cb__mp_get(map, key);
    if (v == NULL)
        return -ENOENT;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -EINVAL;
    *out = v->via.u64;
    return 0;
}

int cb__mp_get_i64(const msgpack_object *map, const char *key, int64_t *out)
{
    const msgpack_object *v = cb__mp_get(map, key);
    if (v == NULL)
        return -ENOENT;
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        *out = v->via.i64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
        *out = (int64_t)v->via.u64;
    else
        return -EINVAL;
    return 0;
}

int cb__mp_get_bool(const msgpack_object *map, const char *key, int *out)
{
    const msgpack_object *v = cb__mp_get(map, key);
    if (v == NULL)
        return -ENOENT;
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return -EINVAL;
    *out = v->via.boolean;
    return 0;
}

int cb__mp_get_str(const msgpack_object *map, const char *key, char *buf, size_t bufsize)
{
    const msgpack_object *v = cb__mp_get(map, key);
    if (v == NULL)
        return -ENOENT;
    if (v->type != MSGPACK_OBJECT_STR)
        return -EINVAL;
    if (v->via.str.size >= bufsize)
        return -ENAMETOOLONG;
    if (memchr(v->via.str.ptr, '\0', v->via.str.size) != NULL)
        return -EINVAL;
    memcpy(buf, v->via.str.ptr, v->via.str.size);
    buf[v->via.str.size] = '\0';
    return 0;
}

void cb__mp_pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void cb__mp_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    cb__mp_pack_str(pk, key);
    cb__mp_pack_str(pk, val);
}

void cb__mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t val)
{
    cb__mp_pack_str(pk, key);
    msgpack_pack_uint64(pk, val);
}

void cb__mp_kv_i64(msgpack_packer *pk, const char *key, int64_t val)
{
    cb__mp_pack_str(pk, key);
    msgpack_pack_int64(pk, val);
}

void cb__mp_kv_bool(msgpack_packer *pk, const char *key, int val)
{
    cb__mp_pack_str(pk, key);
    if (val)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline; 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

static int write_all(int fd, const char *p, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(fd, POLLOUT, deadline);
            if (rc < 0)
                return rc;
        } else if (n < 0 && errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

static int read_all(int fd, char *p, size_t len, int64_t deadline)
{
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == 0) {
            return -ECONNRESET;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_fd(fd, POLLIN, deadline);
            if (rc < 0)
                return rc;
        } else if (errno != EINTR) {
            return -errno;
        }
    }
    return 0;
}

void cb__frame_header(unsigned char hdr[CB_FRAME_HEADER], size_t len)
{
    hdr[0] = (unsigned char)(len >> 24);
    hdr[1] = (unsigned char)(len >> 16);
    hdr[2] = (unsigned char)(len >> 8);
    hdr[3] = (unsigned char)len;
}

int cb__frame_peek(const char *buf, size_t len, size_t *payload_len)
{
    if (len < CB_FRAME_HEADER)
        return 0;
    size_t n = (size_t)be_read((const unsigned char *)buf, CB_FRAME_HEADER);
    if (n == 0 || n > CB_FRAME_MAX)
        return -EMSGSIZE;
    *payload_len = n;
    return len - CB_FRAME_HEADER >= n;
}

int cb__frame_write(int fd, const char *payload, size_t len, int timeout_ms)
{
    if (len == 0 || len > CB_FRAME_MAX)
        return -EMSGSIZE;
    int64_t deadline = now_ms() + timeout_ms;
    unsigned char hdr[CB_FRAME_HEADER];
    cb__frame_header(hdr, len);
    int rc = write_all(fd, (const char *)hdr, CB_FRAME_HEADER, deadline);
    return rc < 0 ? rc : write_all(fd, payload, len, deadline);
}

int cb__frame_read(int fd, char **payload, size_t *len, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    char hdr[CB_FRAME_HEADER];
    size_t n;
    int rc = read_all(fd, hdr, CB_FRAME_HEADER, deadline);
    if (rc < 0)
        return rc;
    if ((rc = cb__frame_peek(hdr, CB_FRAME_HEADER, &n)) < 0)
        return rc;
    char *buf = malloc(n);
    if (buf == NULL)
        return -ENOMEM;
    rc = read_all(fd, buf, n, deadline);
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *payload = buf;
    *len = n;
    return 0;
}

static int unix_connect(const char *path, int type_flags)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | type_flags, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int cb__unix_connect(const char *path)
{
    return unix_connect(path, 0);
}

int cb__unix_connect_nonblock(const char *path)
{
    return unix_connect(path, SOCK_NONBLOCK);
}

int cb__request(int fd, const char *req, size_t req_len, int timeout_ms, char **reply_buf,
                msgpack_unpacked *result, msgpack_object **reply)
{
    int rc = cb__frame_write(fd, req, req_len, timeout_ms);
    if (rc < 0)
        return rc;
    size_t len;
    rc = cb__frame_read(fd, reply_buf, &len, timeout_ms);
    if (rc < 0)
        return rc;
    rc = cb__mp_unpack_map(*reply_buf, len, result, reply);
    if (rc < 0) {
        free(*reply_buf);
        *reply_buf = NULL;
    }
    return rc;
}
