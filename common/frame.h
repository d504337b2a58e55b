/*
 * frame.h - the control socket's wire format, shared by libcb, cbd and cbctl.
 *
 * A frame is a 4-byte big-endian length N (1..CB_FRAME_MAX) followed by N
 * bytes holding exactly one msgpack map with string keys. See
 * docs/protocol.md for the operations.
 *
 * msgpack-c 4.0 allocates a container's storage from its declared count
 * before it reads a single element, so 5 hostile bytes can ask for 512 MiB.
 * cb__mp_check() therefore walks the bytes first, with bounded depth, and
 * refuses any container that declares more elements than bytes remain; only
 * a frame that passes is handed to msgpack_unpack_next().
 */
#ifndef CB_FRAME_H
#define CB_FRAME_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#define CB_FRAME_MAX (64u * 1024u) /* bytes of payload in one frame */
#define CB_FRAME_HEADER 4u          /* the big-endian length before the payload */
#define CB_FRAME_DEPTH_MAX 16

/* 0 if buf[0..len) is exactly one well-formed msgpack object whose
 * containers fit in the bytes present, within CB_FRAME_DEPTH_MAX; else
 * -EBADMSG (malformed, trailing bytes, too deep, oversized container). */
int cb__mp_check(const char *buf, size_t len);

/* Check then unpack one map. On 0, *out is the map (owned by *result; free
 * with msgpack_unpacked_destroy). -EBADMSG if not valid or not a map. */
int cb__mp_unpack_map(const char *buf, size_t len, msgpack_unpacked *result, msgpack_object **out);

/* Lookups in a map with string keys: NULL if absent. */
const msgpack_object *cb__mp_get(const msgpack_object *map, const char *key);
/* Typed lookups: 0, -ENOENT if absent, -EINVAL if the wrong type/range. */
int cb__mp_get_u64(const msgpack_object *map, const char *key, uint64_t *out);
int cb__mp_get_i64(const msgpack_object *map, const char *key, int64_t *out);
int cb__mp_get_bool(const msgpack_object *map, const char *key, int *out);
/* Copies a string value into buf (NUL-terminated); -ENAMETOOLONG if it does not fit. */
int cb__mp_get_str(const msgpack_object *map, const char *key, char *buf, size_t bufsize);

/* Packing helpers: a key and a value in one call. */
void cb__mp_pack_str(msgpack_packer *pk, const char *s);
void cb__mp_kv_str(msgpack_packer *pk, const char *key, const char *val);
void cb__mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);
void cb__mp_kv_i64(msgpack_packer *pk, const char *key, int64_t val);
void cb__mp_kv_bool(msgpack_packer *pk, const char *key, int val);

/* Frame I/O on a blocking fd (clients and cbctl; the daemon frames on its
 * loop). Writes the length prefix + payload; reads one whole frame into a
 * malloc'd buffer. Both honour a deadline in ms (poll); -ETIMEDOUT, -EPIPE,
 * -ECONNRESET, -EMSGSIZE (length 0 or > CB_FRAME_MAX), or -errno. */
int cb__frame_write(int fd, const char *payload, size_t len, int timeout_ms);
int cb__frame_read(int fd, char **payload, size_t *len, int timeout_ms);

/* Incremental framing, for a reader that gathers bytes without waiting:
 * the length prefix of a len-byte payload; and whether buf[0..len) starts
 * with a whole frame: 1 (its payload is buf + CB_FRAME_HEADER, *payload_len
 * bytes), 0 (not yet), -EMSGSIZE (a length of 0 or above CB_FRAME_MAX). */
void cb__frame_header(unsigned char hdr[CB_FRAME_HEADER], size_t len);
int cb__frame_peek(const char *buf, size_t len, size_t *payload_len);

/* Connect a SOCK_STREAM unix socket (CLOEXEC) to path: fd or -errno. */
int cb__unix_connect(const char *path);
/* The same with a non-blocking socket: connect() never waits either; a
 * listener whose backlog is full (a stopped daemon) is -EAGAIN. */
int cb__unix_connect_nonblock(const char *path);

/* Send one request map and wait for its reply map: the common client round
 * trip. req/req_len is a packed map; on 0 the caller owns *reply_buf and
 * must msgpack_unpacked_destroy(result) and free(*reply_buf). */
int cb__request(int fd, const char *req, size_t req_len, int timeout_ms, char **reply_buf,
                msgpack_unpacked *result, msgpack_object **reply);

#endif /* CB_FRAME_H */
