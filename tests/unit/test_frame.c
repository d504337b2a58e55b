/*
 * test_frame.c - the control socket's wire format (frame.c): the bounded
 * msgpack checker that stands between hostile bytes and msgpack-c's
 * allocator, the typed map lookups, and frame I/O over a socketpair.
 *
 * The property that matters: whatever cb__mp_check accepts, msgpack-c can
 * unpack completely, and no container or string in it declares more
 * elements or bytes than the input holds - so msgpack-c never allocates
 * from a lie. The fuzz loop checks exactly that over 100k inputs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"

/* ---- building blocks ------------------------------------------------------- */

struct packed {
    msgpack_sbuffer sb;
    msgpack_packer pk;
};

static void packed_init(struct packed *p)
{
    msgpack_sbuffer_init(&p->sb);
    msgpack_packer_init(&p->pk, &p->sb, msgpack_sbuffer_write);
}

/* A register request as libcb sends it, with every scalar type appended. */
static void pack_request(struct packed *p)
{
    packed_init(p);
    msgpack_packer *pk = &p->pk;
    msgpack_pack_map(pk, 5);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_str(pk, "name", "payments");
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, 2);
    cb__mp_kv_u64(pk, "failure_threshold", 5);
    cb__mp_kv_u64(pk, "recovery_timeout_ms", 604800000);
    cb__mp_kv_i64(pk, "id", -42);
    cb__mp_pack_str(pk, "misc");
    msgpack_pack_array(pk, 12);
    msgpack_pack_nil(pk);
    msgpack_pack_true(pk);
    msgpack_pack_false(pk);
    msgpack_pack_uint64(pk, UINT64_MAX);
    msgpack_pack_int64(pk, INT64_MIN);
    msgpack_pack_float(pk, 1.5f);
    msgpack_pack_double(pk, -2.25);
    msgpack_pack_bin(pk, 3);
    msgpack_pack_bin_body(pk, "\0\1\2", 3);
    msgpack_pack_ext(pk, 4, 7);
    msgpack_pack_ext_body(pk, "abcd", 4);
    msgpack_pack_str(pk, 300);
    char big[300];
    memset(big, 's', sizeof big);
    msgpack_pack_str_body(pk, big, sizeof big);
    msgpack_pack_array(pk, 0);
    msgpack_pack_map(pk, 0);
}

static int check(const void *bytes, size_t len)
{
    return cb__mp_check(bytes, len);
}

/* A named input for the checker. */
struct bytes_case {
    const char *what;
    const char *bytes;
    size_t len;
};

/* check() gives want for every one of n cases. */
static void check_cases(const struct bytes_case *cases, size_t n, int want)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(check(cases[i].bytes, cases[i].len), want, "%s", cases[i].what);
}

/* ---- the checker --------------------------------------------------------------- */

Test(frame, check_accepts_maps_arrays_strings_and_every_scalar)
{
    struct packed p;
    pack_request(&p);
    cr_assert_eq(check(p.sb.data, p.sb.size), 0);
    msgpack_sbuffer_destroy(&p.sb);

    static const struct bytes_case cases[] = {
        {"nil", "\xc0", 1},
        {"positive fixint", "\x7f", 1},
        {"negative fixint", "\xe0", 1},
        {"empty map", "\x80", 1},
        {"empty array", "\x90", 1},
        {"empty string", "\xa0", 1},
        {"array of two", "\x92\x01\x02", 3},
        {"fixstr", "\xa3" "abc", 4},
        {"str8", "\xd9\x03" "abc", 5},
        {"str16", "\xda\x00\x03" "abc", 6},
        {"str32", "\xdb\x00\x00\x00\x03" "abc", 8},
        {"array16", "\xdc\x00\x02\xc2\xc3", 5},
        {"array32", "\xdd\x00\x00\x00\x01\xc0", 6},
        {"map16", "\xde\x00\x01\xa1k\x01", 6},
        {"map32", "\xdf\x00\x00\x00\x01\xa1k\x01", 8},
        {"fixext1", "\xd4\x01\x02", 3},
        {"ext8", "\xc7\x02\x05xy", 5},
        {"uint64", "\xcf\x01\x02\x03\x04\x05\x06\x07\x08", 9},
        {"float64", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", 9},
    };
    check_cases(cases, sizeof cases / sizeof cases[0], 0);
}

Test(frame, check_rejects_containers_that_declare_more_than_the_bytes_present)
{
    static const struct bytes_case cases[] = {
        {"array32 of 2^32-1 in 5 bytes", "\xdd\xff\xff\xff\xff", 5},
        {"map32 of 2^32-1 in 5 bytes", "\xdf\xff\xff\xff\xff", 5},
        {"array16 of 65535", "\xdc\xff\xff\xc0\xc0", 5},
        {"map16 of 65535", "\xde\xff\xff\xc0\xc0", 5},
        {"fixarray of 15 with 2", "\x9f\xc0\xc0", 3},
        {"fixmap of 15 with one pair", "\x8f\xc0\xc0", 3},
        {"str32 of 4 GiB", "\xdb\xff\xff\xff\xff" "abc", 8},
        {"bin32 of 4 GiB", "\xc6\xff\xff\xff\xff" "abc", 8},
        {"ext32 of 4 GiB", "\xc9\xff\xff\xff\xff\x01" "ab", 8},
        {"nested array32 lie", "\x91\xdd\x7f\xff\xff\xff\xc0", 7},
        {"map with half a pair", "\x81\xa1k", 3},
    };
    check_cases(cases, sizeof cases / sizeof cases[0], -EBADMSG);
}

Test(frame, check_rejects_every_truncation_of_a_valid_request)
{
    struct packed p;
    pack_request(&p);
    for (size_t len = 0; len < p.sb.size; len++)
        cr_assert_eq(check(p.sb.data, len), -EBADMSG, "prefix of %zu of %zu bytes", len, p.sb.size);
    msgpack_sbuffer_destroy(&p.sb);
}

Test(frame, check_rejects_trailing_bytes_after_the_object)
{
    struct packed p;
    pack_request(&p);
    msgpack_pack_nil(&p.pk);
    cr_assert_eq(check(p.sb.data, p.sb.size), -EBADMSG, "a second object");
    cr_assert_eq(check("\xc0\x00", 2), -EBADMSG);
    cr_assert_eq(check("\x80\x80", 2), -EBADMSG);
    msgpack_sbuffer_destroy(&p.sb);
}

/* n nested one-element arrays around a nil: the nil sits at depth n. */
static size_t nest(unsigned char *buf, int n)
{
    memset(buf, 0x91, (size_t)n);
    buf[n] = 0xc0;
    return (size_t)n + 1;
}

Test(frame, check_allows_depth_16_and_rejects_deeper_nesting)
{
    unsigned char buf[64];
    size_t len = nest(buf, CB_FRAME_DEPTH_MAX);
    cr_assert_eq(check(buf, len), 0, "depth %d", CB_FRAME_DEPTH_MAX);
    len = nest(buf, CB_FRAME_DEPTH_MAX + 1);
    cr_assert_eq(check(buf, len), -EBADMSG, "depth %d", CB_FRAME_DEPTH_MAX + 1);
    len = nest(buf, 60);
    cr_assert_eq(check(buf, len), -EBADMSG, "depth 60");
}

Test(frame, check_rejects_the_never_used_byte_and_empty_input)
{
    cr_assert_eq(check("\xc1", 1), -EBADMSG);
    cr_assert_eq(check("\x91\xc1", 2), -EBADMSG);
    cr_assert_eq(check("\x81\xa1k\xc1", 4), -EBADMSG);
    cr_assert_eq(check("", 0), -EBADMSG);
}

/* ---- fuzz ------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull; /* fixed seed: failures reproduce */

static uint64_t rng(void)
{
    uint64_t x = rng_state; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Bytes that declare sizes: where a lenient checker would go wrong. */
static const unsigned char size_bytes[] = {0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8,
                                           0xc9, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x00, 0xc1};

static size_t random_input(unsigned char *buf, size_t cap, const struct packed *seed)
{
    uint64_t r = rng();
    size_t len;
    if (r % 2 == 0) { /* random bytes, biased towards size-declaring ones */
        len = (size_t)(rng() % 48);
        for (size_t i = 0; i < len; i++) {
            uint64_t b = rng();
            buf[i] = (b % 3 == 0) ? size_bytes[(b >> 8) % sizeof size_bytes] : (unsigned char)(b >> 16);
        }
    } else { /* a valid request with a few bytes changed and maybe cut */
        len = seed->sb.size < cap ? seed->sb.size : cap;
        memcpy(buf, seed->sb.data, len);
        for (int k = (int)(rng() % 4) + 1; k > 0; k--) {
            uint64_t b = rng();
            buf[b % len] = (b >> 32) % 2 ? size_bytes[(b >> 40) % sizeof size_bytes] : (unsigned char)(b >> 48);
        }
        if (rng() % 4 == 0)
            len = (size_t)(rng() % len);
    }
    return len;
}

/* Every container and string inside obj fits in limit bytes. */
static void assert_bounded(const msgpack_object *o, size_t limit)
{
    switch (o->type) {
    case MSGPACK_OBJECT_ARRAY:
        cr_assert_leq(o->via.array.size, limit, "array of %u passed the check", o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            assert_bounded(&o->via.array.ptr[i], limit);
        break;
    case MSGPACK_OBJECT_MAP:
        cr_assert_leq(2ull * o->via.map.size, limit, "map of %u passed the check", o->via.map.size);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            assert_bounded(&o->via.map.ptr[i].key, limit);
            assert_bounded(&o->via.map.ptr[i].val, limit);
        }
        break;
    case MSGPACK_OBJECT_STR:
        cr_assert_leq(o->via.str.size, limit);
        break;
    case MSGPACK_OBJECT_BIN:
        cr_assert_leq(o->via.bin.size, limit);
        break;
    case MSGPACK_OBJECT_EXT:
        cr_assert_leq(o->via.ext.size, limit);
        break;
    default:
        break;
    }
}

Test(frame, fuzzed_input_never_crashes_and_never_passes_an_oversized_container, .timeout = 120)
{
    struct packed seed;
    pack_request(&seed);
    unsigned char buf[1024];
    int accepted = 0, rejected = 0, maps = 0;
    for (int i = 0; i < 100000; i++) {
        size_t len = random_input(buf, sizeof buf, &seed);
        if (cb__mp_check((const char *)buf, len) != 0) {
            rejected++;
            continue;
        }
        accepted++;
        msgpack_unpacked u;
        msgpack_unpacked_init(&u);
        size_t off = 0;
        int rc = msgpack_unpack_next(&u, (const char *)buf, len, &off);
        cr_assert_eq(rc, MSGPACK_UNPACK_SUCCESS, "input %d passed the check but msgpack-c refused it", i);
        cr_assert_eq(off, len, "input %d: msgpack-c read %zu of %zu bytes", i, off, len);
        assert_bounded(&u.data, len);
        msgpack_unpacked_destroy(&u);

        msgpack_object *map;
        if (cb__mp_unpack_map((const char *)buf, len, &u, &map) == 0) {
            maps++;
            char name[16];
            uint64_t v;
            (void)cb__mp_get_str(map, "name", name, sizeof name);
            (void)cb__mp_get_u64(map, "failure_threshold", &v);
            msgpack_unpacked_destroy(&u);
        }
    }
    msgpack_sbuffer_destroy(&seed.sb);
    /* the loop must have exercised both sides of the check */
    cr_assert_gt(accepted, 1000, "only %d inputs accepted", accepted);
    cr_assert_gt(rejected, 10000, "only %d inputs rejected", rejected);
    cr_assert_gt(maps, 100, "only %d maps unpacked", maps);
}

/* ---- unpacking and typed lookups ---------------------------------------------------- */

Test(frame, unpack_map_accepts_only_a_map)
{
    msgpack_unpacked u;
    msgpack_object *map;
    cr_assert_eq(cb__mp_unpack_map("\x92\x01\x02", 3, &u, &map), -EBADMSG, "an array");
    cr_assert_eq(cb__mp_unpack_map("\xa1x", 2, &u, &map), -EBADMSG, "a string");
    cr_assert_eq(cb__mp_unpack_map("\xdf\xff\xff\xff\xff", 5, &u, &map), -EBADMSG, "a lying map32");
    cr_assert_eq(cb__mp_unpack_map("\x80", 1, &u, &map), 0, "an empty map");
    cr_assert_eq(map->type, MSGPACK_OBJECT_MAP);
    msgpack_unpacked_destroy(&u);
}

Test(frame, typed_lookups_report_missing_wrong_type_and_too_long)
{
    struct packed p;
    packed_init(&p);
    msgpack_pack_map(&p.pk, 7);
    cb__mp_kv_u64(&p.pk, "n", 7);
    cb__mp_kv_i64(&p.pk, "neg", -7);
    cb__mp_kv_str(&p.pk, "s", "payments");
    cb__mp_kv_bool(&p.pk, "b", 1);
    cb__mp_kv_u64(&p.pk, "huge", UINT64_MAX);
    cb__mp_pack_str(&p.pk, "nul");
    msgpack_pack_str(&p.pk, 3);
    msgpack_pack_str_body(&p.pk, "a\0b", 3);
    msgpack_pack_uint8(&p.pk, 1); /* a non-string key */
    msgpack_pack_uint8(&p.pk, 2);

    msgpack_unpacked u;
    msgpack_object *m;
    cr_assert_eq(cb__mp_unpack_map(p.sb.data, p.sb.size, &u, &m), 0);
    uint64_t u64;
    int64_t i64;
    int b;
    char buf[9];
    cr_assert_eq(cb__mp_get_u64(m, "n", &u64), 0);
    cr_assert_eq(u64, 7);
    cr_assert_eq(cb__mp_get_u64(m, "absent", &u64), -ENOENT);
    cr_assert_eq(cb__mp_get_u64(m, "s", &u64), -EINVAL);
    cr_assert_eq(cb__mp_get_u64(m, "neg", &u64), -EINVAL);
    cr_assert_eq(cb__mp_get_i64(m, "neg", &i64), 0);
    cr_assert_eq(i64, -7);
    cr_assert_eq(cb__mp_get_i64(m, "n", &i64), 0);
    cr_assert_eq(i64, 7);
    cr_assert_eq(cb__mp_get_i64(m, "huge", &i64), -EINVAL, "beyond INT64_MAX");
    cr_assert_eq(cb__mp_get_bool(m, "b", &b), 0);
    cr_assert(b);
    cr_assert_eq(cb__mp_get_bool(m, "n", &b), -EINVAL);
    cr_assert_eq(cb__mp_get_str(m, "s", buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "payments");
    cr_assert_eq(cb__mp_get_str(m, "s", buf, 8), -ENAMETOOLONG, "no room for the NUL");
    cr_assert_eq(cb__mp_get_str(m, "n", buf, sizeof buf), -EINVAL);
    cr_assert_eq(cb__mp_get_str(m, "nul", buf, sizeof buf), -EINVAL, "an embedded NUL");
    cr_assert_null(cb__mp_get(m, "absent"));
    cr_assert_null(cb__mp_get(NULL, "n"));
    msgpack_unpacked_destroy(&u);
    msgpack_sbuffer_destroy(&p.sb);
}

/* ---- frame I/O --------------------------------------------------------------------- */

static void pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

Test(frame, a_frame_written_is_read_back_whole)
{
    int sv[2];
    pair(sv);
    cr_assert_eq(cb__frame_write(sv[0], "\x81\xa2op\xa4ping", 9, 1000), 0);
    char *buf = NULL;
    size_t len = 0;
    cr_assert_eq(cb__frame_read(sv[1], &buf, &len, 1000), 0);
    cr_assert_eq(len, 9);
    cr_assert_eq(memcmp(buf, "\x81\xa2op\xa4ping", 9), 0);
    free(buf);
    close(sv[0]);
    close(sv[1]);
}

struct big_read {
    int fd;
    int rc;
    size_t len;
};

static void *read_big(void *arg)
{
    struct big_read *r = arg;
    char *buf = NULL;
    r->rc = cb__frame_read(r->fd, &buf, &r->len, 5000);
    free(buf);
    return NULL;
}

Test(frame, a_frame_of_the_maximum_size_passes_and_one_byte_more_does_not)
{
    int sv[2];
    pair(sv);
    char *big = calloc(1, CB_FRAME_MAX + 1);
    cr_assert_not_null(big);
    struct big_read r = {.fd = sv[1]};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, read_big, &r), 0);
    cr_assert_eq(cb__frame_write(sv[0], big, CB_FRAME_MAX, 5000), 0);
    pthread_join(th, NULL);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(r.len, CB_FRAME_MAX);
    cr_assert_eq(cb__frame_write(sv[0], big, CB_FRAME_MAX + 1, 1000), -EMSGSIZE);
    cr_assert_eq(cb__frame_write(sv[0], big, 0, 1000), -EMSGSIZE);
    free(big);
    close(sv[0]);
    close(sv[1]);
}

Test(frame, reading_an_oversized_or_empty_length_gives_emsgsize)
{
    static const unsigned char lengths[][4] = {
        {0x80, 0x00, 0x00, 0x00}, /* 2^31 */
        {0xff, 0xff, 0xff, 0xff},
        {0x00, 0x01, 0x00, 0x01}, /* CB_FRAME_MAX + 1 */
        {0x00, 0x00, 0x00, 0x00},
    };
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        int sv[2];
        pair(sv);
        cr_assert_eq(write(sv[0], lengths[i], 4), 4);
        char *buf = NULL;
        size_t len;
        cr_assert_eq(cb__frame_read(sv[1], &buf, &len, 1000), -EMSGSIZE, "length %02x%02x%02x%02x",
                     lengths[i][0], lengths[i][1], lengths[i][2], lengths[i][3]);
        cr_assert_null(buf);
        close(sv[0]);
        close(sv[1]);
    }
}

Test(frame, a_peer_that_closes_mid_frame_gives_econnreset)
{
    int sv[2];
    pair(sv);
    cr_assert_eq(write(sv[0], "\x00\x00\x00\x10" "abc", 7), 7);
    close(sv[0]);
    char *buf = NULL;
    size_t len;
    cr_assert_eq(cb__frame_read(sv[1], &buf, &len, 1000), -ECONNRESET);
    cr_assert_null(buf);
    close(sv[1]);
}

Test(frame, a_silent_peer_gives_etimedout)
{
    int sv[2];
    pair(sv);
    char *buf = NULL;
    size_t len;
    cr_assert_eq(cb__frame_read(sv[1], &buf, &len, 50), -ETIMEDOUT);
    close(sv[0]);
    close(sv[1]);
}

Test(frame, writing_to_a_closed_peer_fails_without_sigpipe)
{
    int sv[2];
    pair(sv);
    close(sv[1]);
    int rc = cb__frame_write(sv[0], "\x80", 1, 1000);
    cr_assert(rc == -EPIPE || rc == -ECONNRESET, "rc %d", rc);
    close(sv[0]);
}

Test(frame, request_sends_a_map_and_returns_the_reply_map)
{
    int sv[2];
    pair(sv);
    /* the reply is queued before the request: a socketpair buffers both */
    cr_assert_eq(cb__frame_write(sv[1], "\x81\xa2ok\xc3", 5, 1000), 0);
    char *reply_buf = NULL;
    msgpack_unpacked u;
    msgpack_object *reply;
    cr_assert_eq(cb__request(sv[0], "\x81\xa2op\xa4ping", 9, 1000, &reply_buf, &u, &reply), 0);
    int ok = 0;
    cr_assert_eq(cb__mp_get_bool(reply, "ok", &ok), 0);
    cr_assert(ok);
    msgpack_unpacked_destroy(&u);
    free(reply_buf);

    char *req = NULL;
    size_t len;
    cr_assert_eq(cb__frame_read(sv[1], &req, &len, 1000), 0);
    cr_assert_eq(len, 9);
    free(req);

    cr_assert_eq(cb__frame_write(sv[1], "\x91\xc0", 2, 1000), 0);
    reply_buf = NULL;
    cr_assert_eq(cb__request(sv[0], "\x80", 1, 1000, &reply_buf, &u, &reply), -EBADMSG, "a non-map reply");
    cr_assert_null(reply_buf);
    close(sv[0]);
    close(sv[1]);
}
