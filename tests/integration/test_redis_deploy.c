/*
 * test_redis_deploy.c - cbd with the redis store as deployments run it:
 * behind peers that misbehave, with passwords and ACL users, behind Redis
 * Sentinel through a failover.
 *
 * Everything is real: the cbd binary, redis-server, redis-sentinel, on free
 * loopback ports (tests/support). A misbehaving peer is a proxy in front of
 * a real redis-server (tsup_redis_proxy) that answers a command twice or
 * says what the test tells it to; cbd must stay up, count the protocol
 * error in its stats (store_protocol_errors), log it naming the peer, and
 * work again once reconnected.
 *
 * Timing is never asserted; waits use liveness bounds (reconnecting can
 * take the store's backoff, up to 5 s).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

#define RECONNECT_MS 15000 /* a lost connection back: the backoff reaches 5 s */

static struct tsup_redis redis;
static struct tsup_redis_proxy proxy;
static struct tsup_daemon host;
static cb_client *client;
static char prefix[64];

static void stop_all(void)
{
    cb_client_close(client);
    client = NULL;
    if (host.pid != 0)
        cr_expect_eq(tsup_daemon_stop(&host), 0, "cbd did not exit 0 on SIGTERM");
    tsup_redis_proxy_stop(&proxy);
    tsup_redis_stop(&redis);
}

/* The daemon's "store_online" flag from the stats op. */
static bool store_online(const struct tsup_daemon *d)
{
    struct tsup_reply r;
    int online = 0;
    if (tsup_ctl_op(d, "stats", &r) != 1)
        return false;
    const msgpack_object *nested = cb__mp_get(r.map, "stats");
    cb__mp_get_bool(nested ? nested : r.map, "store_online", &online);
    tsup_reply_free(&r);
    return online;
}

/* The key of circuit name's hash. */
static const char *circuit_key(const char *name)
{
    static char key[256];
    snprintf(key, sizeof key, "%sc:%s", prefix, name);
    return key;
}

/* HGET on the real server (through redis-cli: no proxy between), "" if absent. */
static const char *field_of(const struct tsup_redis *r, const char *name, const char *field)
{
    static char value[256];
    char *out = NULL;
    cr_assert_eq(tsup_redis_cli(r, &out, "HGET", circuit_key(name), field, NULL), 0, "redis-cli HGET");
    snprintf(value, sizeof value, "%s", out);
    value[strcspn(value, "\r\n")] = '\0';
    free(out);
    return value;
}

/* redis-server, the proxy in front of it, and cbd using the proxy; one
 * circuit registered, so the store reads it every sync. */
static cb_circuit *start_behind_proxy(const char *circuit)
{
    char uri[256];
    cr_assert_eq(tsup_redis_start(&redis), 0, "cannot start redis-server");
    cr_assert_eq(tsup_redis_proxy_start(&proxy, &redis), 0, "cannot start the proxy");
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("dep"));
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d?prefix=%s&sync_ms=200", proxy.port, prefix);
    struct tsup_daemon_opts o = {.tag = "proxied", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &o), 0, "cbd did not start");
    client = tsup_client(&host);
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(client, circuit, &cfg);
    cr_assert(tsup_wait_until(store_online(&host), TSUP_LIVENESS_MS), "the store never came online");
    return c;
}

/* After a peer misbehaved: cbd is up, counted it, logged it naming the
 * peer and `what`, reconnected, and a trip reaches redis. */
static void survived(cb_circuit *c, const char *circuit, const char *what)
{
    char peer[64];
    snprintf(peer, sizeof peer, "127.0.0.1:%d", proxy.port);
    cr_assert(tsup_wait_until(!tsup_ping(&host) || tsup_stat(&host, "store_protocol_errors") >= 1, RECONNECT_MS));
    cr_assert(tsup_ping(&host), "cbd died when the store's peer misbehaved");
    cr_assert_geq(tsup_stat(&host, "store_protocol_errors"), 1, "the protocol error is counted");
    cr_assert(tsup_wait_until(tsup_log_count(&host, what) > 0, TSUP_LIVENESS_MS), "no log line says '%s'", what);
    cr_assert_gt(tsup_log_count(&host, peer), 0, "the log names the peer %s", peer);
    cr_assert(tsup_wait_until(store_online(&host), RECONNECT_MS), "the store did not come back online");
    tsup_record_n(c, CB_FAILURE, 3);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    cr_assert(tsup_wait_until(strcmp(field_of(&redis, circuit, "state"), "OPEN") == 0, RECONNECT_MS),
              "the trip after reconnecting never reached redis");
    cr_assert(tsup_ping(&host));
}

TestSuite(redis_deploy, .fini = stop_all, .timeout = 90);

Test(redis_deploy, a_command_answered_twice_is_a_protocol_error_not_a_crash)
{
    cb_circuit *c = start_behind_proxy("twice");
    tsup_redis_proxy_duplicate_next(&proxy); /* the next reconcile read is answered twice */
    survived(c, "twice", "unsolicited reply");
}

Test(redis_deploy, a_reply_nobody_asked_for_is_a_protocol_error_not_a_crash)
{
    cb_circuit *c = start_behind_proxy("unasked");
    static const char ok[] = "+OK\r\n";
    tsup_redis_proxy_inject(&proxy, ok, sizeof ok - 1, false); /* to the subscriber too */
    survived(c, "unasked", "protocol error");
}

Test(redis_deploy, a_pubsub_message_of_the_wrong_shape_is_a_protocol_error_not_a_crash)
{
    cb_circuit *c = start_behind_proxy("shape");
    /* a one-element "message": hiredis 0.14 asserts on it */
    static const char msg[] = "*1\r\n$7\r\nmessage\r\n";
    tsup_redis_proxy_inject(&proxy, msg, sizeof msg - 1, false);
    survived(c, "shape", "protocol error");
}

Test(redis_deploy, garbage_from_the_server_is_a_protocol_error)
{
    cb_circuit *c = start_behind_proxy("garbage");
    static const char junk[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
    tsup_redis_proxy_inject(&proxy, junk, sizeof junk - 1, false);
    survived(c, "garbage", "protocol error");
}

Test(redis_deploy, an_oversized_bulk_length_is_a_protocol_error)
{
    cb_circuit *c = start_behind_proxy("oversized");
    static const char huge[] = "*3\r\n$7\r\nmessage\r\n$99999999999\r\n";
    tsup_redis_proxy_inject(&proxy, huge, sizeof huge - 1, false);
    survived(c, "oversized", "bulk length");
}

Test(redis_deploy, a_connection_closed_mid_reply_is_counted_and_reconnected)
{
    cb_circuit *c = start_behind_proxy("cut");
    static const char part[] = "*3\r\n$7\r\nmessage\r\n$5\r\nab";
    tsup_redis_proxy_inject(&proxy, part, sizeof part - 1, true);
    survived(c, "cut", "mid-reply");
}
