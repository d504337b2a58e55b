/*
 * test_control.c - the control socket's admission and deadlines, driven
 * through socketless connections (cbd_control_conn_open/feed/tick) with
 * time as an input: per-uid and total caps, the admins' reserve, a frame
 * deadline counted from the frame's first byte, the idle timeout and who
 * is exempt, and the frame each refusal or timeout leaves for the peer.
 *
 * The server here is the connection layer alone, with its configuration
 * and the daemon's operations table: ping and subscribe, the operations
 * used, touch nothing else. The
 * tests run as root, so uid 0 is an admin (as is the daemon's own uid, also
 * 0); uids from 1000 on are not.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"
#include "frame.h"
#include "ops.h"

/* The server alone: its configuration and the daemon's operations table
 * (ping and subscribe, the only ops these tests send, read nothing of it). */
static struct {
    struct cbd_config cfg;
    struct cbd_control control;
    struct cbd_ops ops;
} *d;

static void setup(void)
{
    d = calloc(1, sizeof *d);
    cr_assert_not_null(d);
    cbd_control_init(&d->control, NULL, &d->cfg, cbd_ops_table, cbd_ops_count, &d->ops);
    d->cfg.max_connections = 16;
    d->cfg.max_connections_per_uid = 3;
    d->cfg.admin_reserved_connections = 4;
    d->cfg.frame_timeout_ms = 1000;
    d->cfg.idle_timeout_ms = 500;
    d->control.admin_gid = -1;
    cbd_log_threshold = CBD_LOG_ERROR;
}

static void teardown(void)
{
    free(d);
}

TestSuite(control, .init = setup, .fini = teardown);

static const char ping[] = "\0\0\0\x09\x81\xa2op\xa4ping"; /* {"op": "ping"}, framed */
#define PING_LEN (sizeof ping - 1)
static const char subscribe[] = "\0\0\0\x0e\x81\xa2op\xa9subscribe";
#define SUBSCRIBE_LEN (sizeof subscribe - 1)

/* The replies c has been sent. */
struct replies {
    int n;
    int64_t last_error; /* 0 if the last reply was ok */
    char last_message[256];
};

static struct replies replies_of(const struct cbd_conn *c)
{
    struct replies r = {0};
    size_t len, off = 0;
    const char *out = cbd_control_conn_output(c, &len);
    while (off < len) {
        cr_assert_geq(len - off, 4, "a torn frame header in the output");
        const unsigned char *p = (const unsigned char *)out + off;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        cr_assert_leq(n, len - off - 4, "a torn frame in the output");
        msgpack_unpacked u;
        msgpack_object *map;
        cr_assert_eq(cb__mp_unpack_map(out + off + 4, n, &u, &map), 0, "a reply that is not one msgpack map");
        r.n++;
        r.last_error = 0;
        r.last_message[0] = '\0';
        cb__mp_get_i64(map, "error", &r.last_error);
        cb__mp_get_str(map, "message", r.last_message, sizeof r.last_message);
        msgpack_unpacked_destroy(&u);
        off += 4 + n;
    }
    return r;
}

static struct cbd_conn *open_as(uint32_t uid, uint64_t now_ms)
{
    struct cbd_conn *c = cbd_control_conn_open(&d->control, uid, uid, 4242, now_ms);
    cr_assert_not_null(c);
    return c;
}

/* ---- admission ------------------------------------------------------------------- */

Test(control, a_uid_holding_max_connections_per_uid_is_refused_and_told_the_option)
{
    struct cbd_conn *held[3], *c;
    for (int i = 0; i < 3; i++) {
        held[i] = open_as(1000, 0);
        cr_assert_eq(cbd_control_conn_tick(held[i], 0), CBD_CONN_OPEN);
    }
    c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 0), CBD_CONN_REFUSED_PER_UID);
    struct replies r = replies_of(c);
    cr_assert_eq(r.n, 1, "a refusal without exactly one frame (%d)", r.n);
    cr_assert_eq(r.last_error, -EUSERS);
    cr_assert_str_eq(r.last_message, "too many connections from uid 1000 (max_connections_per_uid = 3)");
    cbd_control_conn_free(c);

    struct cbd_conn *other = open_as(1001, 0), *root = open_as(0, 0);
    cr_assert_eq(cbd_control_conn_tick(other, 0), CBD_CONN_OPEN, "another uid was refused");
    cr_assert_eq(cbd_control_conn_tick(root, 0), CBD_CONN_OPEN, "root was refused");
    cr_assert_eq(d->control.ends[CBD_CONN_REFUSED_PER_UID], 1);
    cr_assert_eq(d->control.connections_refused, 1);
    cr_assert_eq(d->control.nconns, 5);

    cbd_control_conn_free(held[0]); /* a connection closed gives its place back */
    c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 0), CBD_CONN_OPEN, "a freed place was not given back");
    cbd_control_conn_free(c);
    for (int i = 1; i < 3; i++)
        cbd_control_conn_free(held[i]);
    cbd_control_conn_free(other);
    cbd_control_conn_free(root);
    cr_assert_eq(d->control.nconns, 0);
    cr_assert_eq(d->control.nuids, 0, "the per-uid table kept entries of closed connections");
}

Test(control, the_last_admin_reserved_connections_go_to_admins_only)
{
    struct cbd_conn *conns[20];
    int n = 0;
    for (uint32_t uid = 2000; n < 12; uid++) /* 12 of 16: 3 for each of 4 uids */
        for (int k = 0; k < 3 && n < 12; k++)
            cr_assert_eq(cbd_control_conn_tick(conns[n++] = open_as(uid, 0), 0), CBD_CONN_OPEN);
    struct cbd_conn *c = open_as(3000, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 0), CBD_CONN_REFUSED_ADMIN_RESERVED);
    cr_assert_str_eq(replies_of(c).last_message,
                     "the last 4 of 16 connections are reserved for admins (admin_reserved_connections = 4)");
    cbd_control_conn_free(c);
    for (int k = 0; k < 4; k++)
        cr_assert_eq(cbd_control_conn_tick(conns[n++] = open_as(0, 0), 0), CBD_CONN_OPEN, "root was refused");
    c = open_as(0, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 0), CBD_CONN_REFUSED_MAX);
    cr_assert_str_eq(replies_of(c).last_message, "cbd has 16 connections open, its limit (max_connections = 16)");
    cbd_control_conn_free(c);
    for (int i = 0; i < n; i++)
        cbd_control_conn_free(conns[i]);
}

Test(control, a_reserve_larger_than_max_connections_leaves_everything_to_admins)
{
    d->cfg.admin_reserved_connections = 64;
    struct cbd_conn *c = open_as(1000, 0), *root = open_as(0, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 0), CBD_CONN_REFUSED_ADMIN_RESERVED);
    cr_assert_eq(cbd_control_conn_tick(root, 0), CBD_CONN_OPEN);
    cbd_control_conn_free(c);
    cbd_control_conn_free(root);
}

/* ---- the frame deadline ------------------------------------------------------------ */

Test(control, a_trickled_frame_ends_frame_timeout_ms_after_its_first_byte)
{
    struct cbd_conn *c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_feed(c, "\0\0\0\x64", 4, 100), CBD_CONN_OPEN); /* 100 bytes promised */
    for (uint64_t t = 300; t < 1100; t += 200) /* a byte every 200 ms: each well within the timeout */
        cr_assert_eq(cbd_control_conn_feed(c, "x", 1, t), CBD_CONN_OPEN, "ended at %llu ms", (unsigned long long)t);
    cr_assert_eq(cbd_control_conn_tick(c, 1099), CBD_CONN_OPEN);
    cr_assert_eq(cbd_control_conn_tick(c, 1100), CBD_CONN_FRAME_TIMEOUT, "the trickle extended the deadline");
    struct replies r = replies_of(c);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.last_error, -ETIMEDOUT);
    cr_assert_str_eq(r.last_message,
                     "request frame not complete within 1000 ms of its first byte (frame_timeout_ms = 1000)");
    cr_assert_eq(d->control.ends[CBD_CONN_FRAME_TIMEOUT], 1);
    cbd_control_conn_free(c);
}

Test(control, bytes_arriving_after_the_deadline_do_not_complete_the_frame)
{
    struct cbd_conn *c = open_as(1000, 0);
    cbd_control_conn_feed(c, ping, 3, 0);
    cr_assert_eq(cbd_control_conn_feed(c, ping + 3, PING_LEN - 3, 1000), CBD_CONN_FRAME_TIMEOUT);
    struct replies r = replies_of(c);
    cr_assert_eq(r.n, 1, "the late frame was answered too");
    cr_assert_eq(r.last_error, -ETIMEDOUT);
    cbd_control_conn_free(c);
}

Test(control, each_frame_gets_its_own_deadline_from_its_own_first_byte)
{
    struct cbd_conn *c = open_as(1000, 0);
    cbd_control_conn_feed(c, ping, 5, 0);
    /* The rest of the ping and the start of the next one, in one read. */
    char buf[2 * PING_LEN];
    memcpy(buf, ping + 5, PING_LEN - 5);
    memcpy(buf + PING_LEN - 5, ping, 6);
    cr_assert_eq(cbd_control_conn_feed(c, buf, PING_LEN - 5 + 6, 999), CBD_CONN_OPEN);
    cr_assert_eq(replies_of(c).n, 1);
    cr_assert_eq(replies_of(c).last_error, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 1998), CBD_CONN_OPEN, "the second frame inherited the first's deadline");
    cr_assert_eq(cbd_control_conn_tick(c, 1999), CBD_CONN_FRAME_TIMEOUT);
    cbd_control_conn_free(c);
}

/* ---- idleness ------------------------------------------------------------------------- */

Test(control, a_connection_without_a_request_for_idle_timeout_ms_is_closed_without_a_frame)
{
    struct cbd_conn *c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 499), CBD_CONN_OPEN);
    cr_assert_eq(cbd_control_conn_feed(c, ping, PING_LEN, 499), CBD_CONN_OPEN); /* a request restarts it */
    cr_assert_eq(cbd_control_conn_tick(c, 998), CBD_CONN_OPEN);
    cr_assert_eq(cbd_control_conn_tick(c, 999), CBD_CONN_IDLE);
    struct replies r = replies_of(c);
    cr_assert_eq(r.n, 1, "an idle close sent a frame: a client could take it for its reply");
    cr_assert_eq(r.last_error, 0);
    cr_assert_eq(d->control.ends[CBD_CONN_IDLE], 1);
    cbd_control_conn_free(c);
}

Test(control, a_frame_in_progress_is_not_idle)
{
    struct cbd_conn *c = open_as(1000, 0);
    cbd_control_conn_feed(c, ping, 2, 400);
    cr_assert_eq(cbd_control_conn_tick(c, 1399), CBD_CONN_OPEN, "a request being sent was taken for idleness");
    cr_assert_eq(cbd_control_conn_tick(c, 1400), CBD_CONN_FRAME_TIMEOUT);
    cbd_control_conn_free(c);
}

Test(control, subscribers_and_idle_timeout_0_are_never_idle)
{
    struct cbd_conn *sub = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_feed(sub, subscribe, SUBSCRIBE_LEN, 0), CBD_CONN_OPEN);
    cr_assert_eq(cbd_control_conn_tick(sub, 86400000), CBD_CONN_OPEN, "a subscriber was closed as idle");
    cr_assert_eq(d->control.nsubscribers, 1);
    cbd_control_conn_free(sub);
    cr_assert_eq(d->control.nsubscribers, 0);

    d->cfg.idle_timeout_ms = 0;
    struct cbd_conn *c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_tick(c, 86400000), CBD_CONN_OPEN, "idle_timeout_ms 0 closed a connection");
    cbd_control_conn_free(c);
}

/* ---- bad frames ------------------------------------------------------------------------- */

Test(control, a_bad_length_is_answered_then_ends_the_connection)
{
    struct cbd_conn *c = open_as(1000, 0);
    cr_assert_eq(cbd_control_conn_feed(c, "\xff\xff\xff\xff", 4, 0), CBD_CONN_BAD_FRAME);
    struct replies r = replies_of(c);
    cr_assert_eq(r.n, 1);
    cr_assert_eq(r.last_error, -EMSGSIZE);
    cr_assert_eq(cbd_control_conn_feed(c, ping, PING_LEN, 1), CBD_CONN_BAD_FRAME);
    cr_assert_eq(replies_of(c).n, 1, "an ended connection answered a request");
    cr_assert_eq(d->control.frames_bad, 1);
    cr_assert_eq(d->control.ends[CBD_CONN_BAD_FRAME], 1);
    cbd_control_conn_free(c);
}
