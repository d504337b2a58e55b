/*
 * test_redis_conn.c - one redis connection (persistence/redis_conn.c)
 * against a peer the test plays itself: a listening socket on loopback in
 * the test process, whose accepted end the test writes replies to - right
 * ones, twice, of the wrong shape, cut off. The connection runs on a uv
 * loop the test turns by hand; nothing here depends on how long anything
 * takes (waits are liveness bounds).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "redis_conn.h"
#include "tsup.h"

static uv_loop_t loop;
static struct cbd_redis_conn *conn;
static int listener = -1, peer = -1, port;

/* What the connection told the test. */
static struct {
    int ups, downs, down_err;
    char why[1024];
    int replies, nulls, last_type;
    char last[128];
    bool null_before_down; /* every NULL reply came before down() */
    bool closed;
} seen;

static void on_up(void *arg, struct cbd_redis_conn *c)
{
    (void)arg, (void)c;
    seen.ups++;
}

static void on_down(void *arg, struct cbd_redis_conn *c, int err, const char *why)
{
    (void)arg, (void)c;
    seen.downs++;
    seen.down_err = err;
    snprintf(seen.why, sizeof seen.why, "%s", why);
}

static void on_reply(struct cbd_redis_conn *c, redisReply *r, void *priv)
{
    (void)c, (void)priv;
    if (r == NULL) {
        seen.nulls++;
        seen.null_before_down = seen.downs == 0;
        return;
    }
    seen.replies++;
    seen.last_type = r->type;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[2]->type == REDIS_REPLY_STRING)
        snprintf(seen.last, sizeof seen.last, "%.*s", (int)r->element[2]->len, r->element[2]->str);
    else if (r->str != NULL)
        snprintf(seen.last, sizeof seen.last, "%.*s", (int)r->len, r->str);
}

static void on_closed(void *arg)
{
    (void)arg;
    seen.closed = true;
}

#define TURN_UNTIL(cond) \
    cr_assert(tsup_wait_until((uv_run(&loop, UV_RUN_NOWAIT), (cond)), TSUP_LIVENESS_MS), "never: %s", #cond)

static void setup(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    memset(&seen, 0, sizeof seen);
    cr_assert_eq(uv_loop_init(&loop), 0);
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(listener >= 0 && bind(listener, (struct sockaddr *)&a, sizeof a) == 0 && listen(listener, 4) == 0);
    cr_assert_eq(getsockname(listener, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    struct cbd_redis_conn_cbs cbs = {.up = on_up, .down = on_down};
    cr_assert_eq(cbd_redis_conn_new(&conn, &loop, &cbs, 2000, 2000), 0);
}

static void teardown(void)
{
    if (peer >= 0)
        close(peer);
    close(listener);
    cbd_redis_conn_close(conn, on_closed, NULL);
    TURN_UNTIL(seen.closed);
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(&loop), 0, "the connection left handles on the loop");
}

TestSuite(redis_conn, .init = setup, .fini = teardown, .timeout = 30);

/* Connect to the test's listener, accept, wait for up(). */
static void connect_up(void)
{
    struct cbd_redis_addr addr = {.port = (uint16_t)port};
    int ups = seen.ups;
    strcpy(addr.host, "127.0.0.1");
    if (peer >= 0)
        close(peer);
    peer = -1;
    cr_assert_eq(cbd_redis_conn_open(conn, &addr), 0);
    TURN_UNTIL((peer >= 0 || (peer = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) >= 0) && seen.ups == ups + 1);
}

/* Replace the connection by one with these timeouts. */
static void recreate(uint32_t connect_timeout_ms, uint32_t command_timeout_ms)
{
    struct cbd_redis_conn_cbs cbs = {.up = on_up, .down = on_down};
    cbd_redis_conn_close(conn, on_closed, NULL);
    TURN_UNTIL(seen.closed);
    seen.closed = false;
    cr_assert_eq(cbd_redis_conn_new(&conn, &loop, &cbs, connect_timeout_ms, command_timeout_ms), 0);
}

/* The peer says s. */
static void say(const char *s)
{
    cr_assert_eq(write(peer, s, strlen(s)), (ssize_t)strlen(s));
}

static void send_cmd(const char *word)
{
    const char *argv[1] = {word};
    size_t len[1] = {strlen(word)};
    cr_assert_eq(cbd_redis_conn_command(conn, on_reply, NULL, 1, argv, len), 0);
}

static void assert_down(int err, const char *what)
{
    TURN_UNTIL(seen.downs > 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(seen.downs, 1, "exactly one down() per open()");
    cr_assert_eq(seen.down_err, err, "down(%d, %s)", seen.down_err, seen.why);
    cr_assert(strstr(seen.why, what) != NULL, "why '%s' does not say '%s'", seen.why, what);
}

Test(redis_conn, pipelined_replies_reach_their_commands_in_order)
{
    connect_up();
    send_cmd("PING");
    send_cmd("ECHO");
    say("+PONG\r\n$2\r\nhi");
    TURN_UNTIL(seen.replies == 1);
    cr_assert_str_eq(seen.last, "PONG");
    say("\r\n");
    TURN_UNTIL(seen.replies == 2);
    cr_assert_str_eq(seen.last, "hi");
    cr_assert_eq(seen.downs, 0);
}

Test(redis_conn, a_command_answered_twice_ends_the_connection_as_a_protocol_error)
{
    char peer_name[32];
    connect_up();
    send_cmd("GET");
    say("$1\r\na\r\n$1\r\na\r\n");
    snprintf(peer_name, sizeof peer_name, "127.0.0.1:%d", port);
    assert_down(-EPROTO, "unsolicited reply");
    cr_assert(strstr(seen.why, peer_name) != NULL, "why names the peer: %s", seen.why);
    cr_assert_eq(seen.replies, 1, "the first answer is delivered");
}

Test(redis_conn, commands_without_an_answer_get_null_before_down)
{
    connect_up();
    send_cmd("GET");
    send_cmd("GET");
    say("?garbage\r\n");
    assert_down(-EPROTO, "bad reply type byte");
    cr_assert_eq(seen.nulls, 2);
    cr_assert(seen.null_before_down);
}

Test(redis_conn, a_connection_closed_mid_reply_is_a_protocol_error)
{
    connect_up();
    send_cmd("GET");
    say("$10\r\nabc");
    close(peer);
    peer = -1;
    assert_down(-EPROTO, "closed mid-reply (8 bytes of an unfinished reply)");
}

Test(redis_conn, a_connection_closed_between_replies_is_a_reset)
{
    connect_up();
    close(peer);
    peer = -1;
    assert_down(-ECONNRESET, "connection closed by 127.0.0.1");
}

Test(redis_conn, an_error_with_no_command_waiting_is_the_server_hanging_up)
{
    connect_up();
    say("-ERR max number of clients reached\r\n");
    assert_down(-ECONNRESET, "said error 'ERR max number of clients reached'");
}

Test(redis_conn, messages_on_the_subscribed_channel_reach_the_subscriber)
{
    connect_up();
    cr_assert_eq(cbd_redis_conn_subscribe(conn, on_reply, NULL, "news"), 0);
    const char *argv[1] = {"PING"};
    size_t len[1] = {4};
    cr_assert_eq(cbd_redis_conn_command(conn, on_reply, NULL, 1, argv, len), -EBUSY, "no command once subscribing");
    say("*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
    TURN_UNTIL(seen.replies == 1);
    say("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    TURN_UNTIL(seen.replies == 2);
    cr_assert_str_eq(seen.last, "hello");
    close(peer);
    peer = -1;
    TURN_UNTIL(seen.downs == 1);
    cr_assert_eq(seen.nulls, 1, "the subscriber gets NULL when the connection ends");
    cr_assert(seen.null_before_down);
}

struct bad_frame {
    const char *bytes, *why;
};

Test(redis_conn, pubsub_frames_of_the_wrong_shape_are_protocol_errors)
{
    static const struct bad_frame cases[] = {
        {"*1\r\n$7\r\nmessage\r\n", "got an array of 1 elements"},
        {"*3\r\n:1\r\n$4\r\nnews\r\n$1\r\nx\r\n", "starting with integer 1"},
        {"*3\r\n$7\r\nmessage\r\n$5\r\nother\r\n$1\r\nx\r\n", "pub/sub frame of unexpected shape"},
        {"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n:5\r\n", "expected ['message', channel, payload]"},
        {"+OK\r\n", "got status 'OK'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(&seen, 0, sizeof seen);
        connect_up();
        cr_assert_eq(cbd_redis_conn_subscribe(conn, on_reply, NULL, "news"), 0);
        say("*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n");
        TURN_UNTIL(seen.replies == 1);
        say(cases[i].bytes);
        assert_down(-EPROTO, cases[i].why);
    }
}

Test(redis_conn, a_subscribe_confirmation_of_the_wrong_shape_is_a_protocol_error)
{
    connect_up();
    cr_assert_eq(cbd_redis_conn_subscribe(conn, on_reply, NULL, "news"), 0);
    say("*3\r\n$9\r\nsubscribe\r\n$4\r\nolds\r\n:1\r\n");
    assert_down(-EPROTO, "SUBSCRIBE answered with");
    cr_assert_eq(seen.nulls, 1);
}

Test(redis_conn, a_refused_connection_reports_down_after_open_returns)
{
    struct cbd_redis_addr addr = {.port = (uint16_t)tsup_free_port()};
    strcpy(addr.host, "127.0.0.1");
    cr_assert_eq(cbd_redis_conn_open(conn, &addr), 0);
    cr_assert_eq(seen.downs, 0, "down() never runs inside the owner's call");
    cr_assert_eq(cbd_redis_conn_open(conn, &addr), -EBUSY);
    assert_down(-ECONNREFUSED, "cannot connect to 127.0.0.1");
}

Test(redis_conn, a_silent_server_times_out)
{
    recreate(2000, 50);
    connect_up();
    send_cmd("PING");
    assert_down(-ETIMEDOUT, "sent no reply within 50 ms");
    cr_assert_eq(seen.nulls, 1);
}

static void drop_in_reply(struct cbd_redis_conn *c, redisReply *r, void *priv)
{
    on_reply(c, r, priv);
    if (r != NULL)
        cbd_redis_conn_drop(c, -EIO, "dropped by its owner");
}

Test(redis_conn, a_drop_from_a_reply_callback_stops_delivery_and_reports_its_reason)
{
    connect_up();
    const char *argv[1] = {"GET"};
    size_t len[1] = {3};
    cr_assert_eq(cbd_redis_conn_command(conn, drop_in_reply, NULL, 1, argv, len), 0);
    send_cmd("GET");
    say("+A\r\n+B\r\n");
    assert_down(-EIO, "dropped by its owner");
    cr_assert_eq(seen.replies, 1, "no reply is delivered once a drop is due");
    cr_assert_eq(seen.nulls, 1);
}

Test(redis_conn, a_connection_opens_again_after_down)
{
    connect_up();
    close(peer);
    peer = -1;
    TURN_UNTIL(seen.downs == 1);
    connect_up();
    send_cmd("PING");
    say("+PONG\r\n");
    TURN_UNTIL(seen.replies == 1);
    cr_assert_eq(seen.ups, 2);
}
