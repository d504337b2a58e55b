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
#include <criterion/parameterized.h>
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
    tsup_fixture_stop(&host, &client);
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
    snprintf(key, sizeof key, "%sc:{%s}", prefix, name);
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

TestSuite(redis_deploy, .fini = stop_all, .timeout = 180);

Test(redis_deploy, a_command_answered_twice_is_a_protocol_error_not_a_crash)
{
    cb_circuit *c = start_behind_proxy("twice");
    tsup_redis_proxy_duplicate_next(&proxy); /* the next reconcile read is answered twice */
    survived(c, "twice", "unsolicited reply");
}

/* What a misbehaving peer sends to both of cbd's connections, and what
 * the log line must say. */
struct bad_peer {
    char circuit[16];
    char bytes[64];
    bool then_close;
    char says[32];
};

ParameterizedTestParameters(redis_deploy, whatever_a_peer_sends_cbd_stays_up_counts_it_and_reconnects)
{
    static struct bad_peer cases[] = {
        {"unasked", "+OK\r\n", false, "protocol error"},                       /* a reply nobody asked for */
        {"shape", "*1\r\n$7\r\nmessage\r\n", false, "protocol error"}, /* hiredis 0.14 asserts on it */
        {"garbage", "HTTP/1.1 400 Bad Request\r\n\r\n", false, "bad reply type byte"},
        {"oversized", "*3\r\n$7\r\nmessage\r\n$99999999999\r\n", false, "bulk length"},
        {"cut", "*3\r\n$7\r\nmessage\r\n$5\r\nab", true, "mid-reply"},
    };
    return cr_make_param_array(struct bad_peer, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct bad_peer *bad, redis_deploy, whatever_a_peer_sends_cbd_stays_up_counts_it_and_reconnects,
                  .fini = stop_all)
{
    cb_circuit *c = start_behind_proxy(bad->circuit);
    tsup_redis_proxy_inject(&proxy, bad->bytes, strlen(bad->bytes), bad->then_close);
    survived(c, bad->circuit, bad->says);
}

/* ---- passwords and ACL users ---------------------------------------------------- */

#define DEFAULT_PASSWORD "s3cret-default"

/* A file in the test's directory holding text (mode 0600); its path. */
static const char *secret_file(const char *name, const char *text)
{
    static char path[4][256];
    static unsigned next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", tsup_tmpdir(), name);
    FILE *f = fopen(p, "w");
    cr_assert(f != NULL && fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", p);
    return p;
}

static const char *authed_field(const struct tsup_redis *r, const char *db, const char *name, const char *field)
{
    static char value[128];
    char *out = NULL;
    cr_assert_eq(tsup_redis_cli(r, &out, "-a", DEFAULT_PASSWORD, "--no-auth-warning", "-n", db, "HGET",
                                circuit_key(name), field, NULL), 0);
    snprintf(value, sizeof value, "%s", out);
    value[strcspn(value, "\r\n")] = '\0';
    free(out);
    return value;
}

static struct tsup_daemon second;
static cb_client *second_client;

static void stop_second(void)
{
    tsup_fixture_stop(&second, &second_client);
    stop_all();
}

Test(redis_deploy, a_password_file_and_an_acl_user_from_the_environment_authenticate_cbd, .fini = stop_second)
{
    static const char *const auth[] = {"--requirepass", DEFAULT_PASSWORD, NULL};
    char uri[512], keys[96], channels[96];
    cr_assert_eq(tsup_redis_start_with(&redis, false, auth), 0);
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("acl"));
    snprintf(keys, sizeof keys, "~%s*", prefix);
    snprintf(channels, sizeof channels, "&%s*", prefix);
    /* the least an ACL user of cbd needs (docs/store-redis.md) */
    char *out = NULL;
    int rc = tsup_redis_cli(&redis, &out, "-a", DEFAULT_PASSWORD, "--no-auth-warning", "ACL", "SETUSER", "cbd", "on",
                            ">cbd-pw", keys, channels, "+@hash", "+@scripting", "+@pubsub", "+time", "+scan",
                            "+select", "+role", "+ping", NULL);
    cr_assert(rc == 0 && strncmp(out, "OK", 2) == 0, "ACL SETUSER: %s", out);
    free(out);
    setenv("CBD_TEST_REDIS_PASSWORD", "cbd-pw", 1); /* cbd inherits it */
    snprintf(uri, sizeof uri, "redis://cbd@127.0.0.1:%d/2?prefix=%s&sync_ms=200&password_env=CBD_TEST_REDIS_PASSWORD",
             redis.port, prefix);
    struct tsup_daemon_opts o = {.tag = "acl", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &o), 0);
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/2?prefix=%s&sync_ms=200&password_file=%s", redis.port, prefix,
             secret_file("default.pass", DEFAULT_PASSWORD "\n"));
    struct tsup_daemon_opts o2 = {.tag = "pwfile", .store = uri};
    cr_assert_eq(tsup_daemon_start(&second, &o2), 0);
    client = tsup_client(&host);
    second_client = tsup_client(&second);
    cr_assert(tsup_wait_until(store_online(&host) && store_online(&second), TSUP_LIVENESS_MS),
              "not both online (see the cbd logs)");
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *a = tsup_circuit(client, "authed", &cfg), *b = tsup_circuit(second_client, "authed", &cfg);
    tsup_record_n(a, CB_FAILURE, 3);
    cr_assert(tsup_wait_state(b, CB_OPEN), "the ACL user's trip reached the host with the password file");
    cr_assert_str_eq(authed_field(&redis, "2", "authed", "state"), "OPEN", "written in database 2");
    cr_assert_eq(tsup_log_count(&host, "cbd-pw"), 0, "the password is never logged");
}

Test(redis_deploy, a_wrong_password_is_logged_and_retried_until_the_file_is_fixed)
{
    static const char *const auth[] = {"--requirepass", DEFAULT_PASSWORD, NULL};
    char uri[512];
    cr_assert_eq(tsup_redis_start_with(&redis, false, auth), 0);
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("pw"));
    const char *file = secret_file("redis.pass", "not-the-password\n");
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d?prefix=%s&sync_ms=200&password_file=%s", redis.port, prefix,
             file);
    struct tsup_daemon_opts o = {.tag = "wrongpw", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &o), 0, "a wrong password does not stop cbd from starting");
    cr_assert(tsup_wait_until(tsup_log_count(&host, "refused AUTH: WRONGPASS") > 0, TSUP_LIVENESS_MS),
              "the log says the server refused the password");
    cr_assert(tsup_wait_until(tsup_stat(&host, "store_reconnects") >= 2, RECONNECT_MS), "cbd keeps retrying");
    cr_assert(tsup_ping(&host));
    cr_assert_not(store_online(&host));
    cr_assert_eq(tsup_log_count(&host, "not-the-password"), 0, "the password is never logged");
    secret_file("redis.pass", DEFAULT_PASSWORD "\n"); /* the operator fixes the file */
    cr_assert(tsup_wait_until(store_online(&host), RECONNECT_MS), "the fixed password is read on the next attempt");
    client = tsup_client(&host);
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(client, "fixed", &cfg);
    tsup_record_n(c, CB_FAILURE, 3);
    cr_assert(tsup_wait_until(strcmp(authed_field(&redis, "0", "fixed", "state"), "OPEN") == 0, TSUP_LIVENESS_MS));
}

Test(redis_deploy, a_password_in_the_uri_is_refused_at_start_and_never_logged)
{
    struct tsup_daemon_opts o = {.tag = "uripw", .store = "redis://cbd:hunter2@127.0.0.1:6379/0"};
    cr_assert_lt(tsup_daemon_start(&host, &o), 0, "cbd started with a password in its store URI");
    cr_assert_gt(tsup_log_count(&host, "a password in the URI is refused"), 0);
    cr_assert_gt(tsup_log_count(&host, "password_file=/path"), 0, "the message says what to use instead");
    cr_assert_eq(tsup_log_count(&host, "hunter2"), 0, "the refused password is not logged");
}

/* ---- Redis Sentinel ------------------------------------------------------------- */

#define MASTER_NAME "cbdmaster"

static struct tsup_redis replica, sentinel[2];
static int64_t t_zero;

/* One line of the failover timeline, in ms since the test started. */
static void mark(const char *what)
{
    fprintf(stderr, "timeline %s: +%lld ms %s\n", criterion_current_test->name,
            (long long)(tsup_now_ms() - t_zero), what);
}

static void stop_sentinel_setup(void)
{
    for (int i = 0; i < 2; i++)
        tsup_redis_stop(&sentinel[i]);
    tsup_redis_stop(&replica);
    stop_second();
}

/* The first line of a redis-cli answer from r (static buffer). */
static const char *cli_line(const struct tsup_redis *r, const char *a, const char *b, const char *c)
{
    static char line[256];
    char *out = NULL;
    tsup_redis_cli(r, &out, a, b, c, NULL);
    snprintf(line, sizeof line, "%s", out != NULL ? out : "");
    line[strcspn(line, "\r\n")] = '\0';
    free(out);
    return line;
}

static bool is_master(const struct tsup_redis *r) { return strcmp(cli_line(r, "ROLE", NULL, NULL), "master") == 0; }

/* Master, replica, two sentinels; hosts A and B on the sentinel URI, with
 * circuit `before` tripped on A and seen on B. */
static void sentinel_fleet(cb_circuit **a_before, cb_circuit **b_before)
{
    char uri[512];
    t_zero = tsup_now_ms();
    static const char *const no_delay[] = {"--repl-diskless-sync-delay", "0", NULL}; /* a replica syncs at once */
    cr_assert_eq(tsup_redis_start_with(&redis, false, no_delay), 0);
    cr_assert_eq(tsup_redis_start_replica(&replica, &redis, NULL, NULL), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(tsup_sentinel_start(&sentinel[i], MASTER_NAME, &redis, NULL, NULL), 0);
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("sen"));
    snprintf(uri, sizeof uri, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/" MASTER_NAME "?prefix=%s&sync_ms=200",
             sentinel[0].port, sentinel[1].port, prefix);
    struct tsup_daemon_opts oa = {.tag = "hostA", .store = uri}, ob = {.tag = "hostB", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &oa), 0);
    cr_assert_eq(tsup_daemon_start(&second, &ob), 0);
    client = tsup_client(&host);
    second_client = tsup_client(&second);
    cr_assert(tsup_wait_until(store_online(&host) && store_online(&second), TSUP_LIVENESS_MS));
    mark("both hosts online through the sentinels");
    cb_config cfg = tsup_config(3, 1, 1, 600000);
    *a_before = tsup_circuit(client, "before", &cfg);
    *b_before = tsup_circuit(second_client, "before", &cfg);
    tsup_record_n(*a_before, CB_FAILURE, 3);
    cr_assert(tsup_wait_state(*b_before, CB_OPEN));
    cr_assert_str_eq(field_of(&redis, "before", "state"), "OPEN");
    mark("'before' tripped on A, OPEN on B and on the master");
}

/* After the failover: both hosts follow, nothing was lost, and a trip made
 * now reaches the new master and the other host. */
static void fleet_follows(cb_circuit *a_before, cb_circuit *b_before, const struct tsup_redis *new_master)
{
    char at[64];
    snprintf(at, sizeof at, "connected to redis-sentinel://" MASTER_NAME " at 127.0.0.1:%d/", new_master->port);
    cr_assert(tsup_wait_until(tsup_log_count(&host, at) > 0 && tsup_log_count(&second, at) > 0 &&
                                  store_online(&host) && store_online(&second),
                              3 * RECONNECT_MS), "the hosts are not online on the new master (%s)", at);
    mark("both hosts online again, on the new master");
    cr_assert(tsup_wait_until(strcmp(field_of(new_master, "before", "state"), "OPEN") == 0, RECONNECT_MS),
              "the OPEN circuit written before the failover is not OPEN on the new master");
    cr_assert_eq(tsup_info(a_before).state, CB_OPEN, "A lost its OPEN circuit");
    cr_assert_eq(tsup_info(b_before).state, CB_OPEN, "B lost its OPEN circuit");
    mark("'before' still OPEN on both hosts and on the new master");
    cb_config cfg = tsup_config(3, 1, 1, 600000);
    cb_circuit *a_after = tsup_circuit(client, "after", &cfg), *b_after = tsup_circuit(second_client, "after", &cfg);
    tsup_record_n(a_after, CB_FAILURE, 3);
    cr_assert(tsup_wait_state(a_after, CB_OPEN));
    mark("'after' tripped on A");
    cr_assert(tsup_wait_until(strcmp(field_of(new_master, "after", "state"), "OPEN") == 0, RECONNECT_MS),
              "the trip after the failover did not reach the new master");
    cr_assert(tsup_wait_state(b_after, CB_OPEN), "the trip after the failover did not reach host B");
    mark("'after' OPEN on the new master and on B");
    cr_assert(tsup_ping(&host) && tsup_ping(&second));
}

Test(redis_deploy, a_sentinel_failover_loses_no_circuit_and_both_hosts_follow_it, .fini = stop_sentinel_setup)
{
    cb_circuit *a_before, *b_before;
    sentinel_fleet(&a_before, &b_before);
    /* the replica must be known to the sentinel and in sync before it can be promoted */
    cr_assert(tsup_wait_until(strcmp(cli_line(&sentinel[0], "SENTINEL", "FAILOVER", MASTER_NAME), "OK") == 0,
                              3 * RECONNECT_MS), "SENTINEL FAILOVER never accepted");
    mark("SENTINEL FAILOVER accepted");
    cr_assert(tsup_wait_until(is_master(&replica), 3 * RECONNECT_MS), "the replica was never promoted");
    mark("the replica is the master");
    fleet_follows(a_before, b_before, &replica);
    cr_assert_geq(tsup_stat(&host, "store_failovers") + tsup_stat(&second, "store_failovers"), 1,
                  "no host heard of the failover from a sentinel");
}

Test(redis_deploy, a_killed_master_is_replaced_and_both_hosts_follow, .fini = stop_sentinel_setup)
{
    cb_circuit *a_before, *b_before;
    sentinel_fleet(&a_before, &b_before);
    /* the replica has the circuit before the master dies */
    cr_assert(tsup_wait_until(strcmp(field_of(&replica, "before", "state"), "OPEN") == 0, TSUP_LIVENESS_MS));
    tsup_redis_kill(&redis, SIGKILL);
    mark("master killed");
    cr_assert(tsup_wait_until(is_master(&replica), 6 * RECONNECT_MS), "the sentinels never promoted the replica");
    mark("the replica is the master");
    fleet_follows(a_before, b_before, &replica);
}

Test(redis_deploy, sentinels_and_servers_behind_passwords_are_reached_with_their_own_secrets,
     .fini = stop_sentinel_setup)
{
    static const char *const auth[] = {"--requirepass", DEFAULT_PASSWORD, NULL};
    char uri[768];
    cr_assert_eq(tsup_redis_start_with(&redis, false, auth), 0);
    cr_assert_eq(tsup_redis_start_replica(&replica, &redis, DEFAULT_PASSWORD, auth), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(tsup_sentinel_start(&sentinel[i], MASTER_NAME, &redis, DEFAULT_PASSWORD, "sentinel-pw"), 0);
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("senpw"));
    snprintf(uri, sizeof uri,
             "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/" MASTER_NAME "?prefix=%s&password_file=%s"
             "&sentinel_password_file=%s",
             sentinel[0].port, sentinel[1].port, prefix, secret_file("server.pass", DEFAULT_PASSWORD "\n"),
             secret_file("sentinel.pass", "sentinel-pw\n"));
    struct tsup_daemon_opts o = {.tag = "senpw", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &o), 0);
    cr_assert(tsup_wait_until(store_online(&host), TSUP_LIVENESS_MS), "not online through password-protected sentinels");
    client = tsup_client(&host);
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(client, "guarded", &cfg);
    tsup_record_n(c, CB_FAILURE, 3);
    cr_assert(tsup_wait_until(strcmp(authed_field(&redis, "0", "guarded", "state"), "OPEN") == 0, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_log_count(&host, "sentinel-pw"), 0, "the password is never logged");
}

Test(redis_deploy, a_wrong_sentinel_password_is_reported_naming_each_sentinel, .fini = stop_sentinel_setup)
{
    char uri[768];
    cr_assert_eq(tsup_redis_start(&redis), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(tsup_sentinel_start(&sentinel[i], MASTER_NAME, &redis, NULL, "sentinel-pw"), 0);
    snprintf(prefix, sizeof prefix, "%s:", tsup_unique("senbad"));
    snprintf(uri, sizeof uri, "redis-sentinel://127.0.0.1:%d,127.0.0.1:%d/" MASTER_NAME "?prefix=%s"
             "&sentinel_password_file=%s", sentinel[0].port, sentinel[1].port, prefix,
             secret_file("sentinel.pass", "wrong\n"));
    struct tsup_daemon_opts o = {.tag = "senbad", .store = uri};
    cr_assert_eq(tsup_daemon_start(&host, &o), 0);
    char first[64], other[64];
    snprintf(first, sizeof first, "127.0.0.1:%d refused AUTH", sentinel[0].port);
    snprintf(other, sizeof other, "127.0.0.1:%d refused AUTH", sentinel[1].port);
    cr_assert(tsup_wait_until(tsup_log_count(&host, "no sentinel named master '" MASTER_NAME "'") > 0,
                              TSUP_LIVENESS_MS));
    cr_assert(tsup_log_count(&host, first) > 0 && tsup_log_count(&host, other) > 0, "each sentinel's reason is logged");
    cr_assert(tsup_wait_until(tsup_stat(&host, "store_reconnects") >= 1, RECONNECT_MS) && tsup_ping(&host));
}
