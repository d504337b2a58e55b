/*
 * test_redis_link.c - how a redis transport reaches its server
 * (persistence/redis_link.c): the handshake each connection sends, the
 * master check, secrets read per connection, and the reconnection delay.
 *
 * The server is played by the test: a listening socket on loopback whose
 * accepted connections it reads (to see what the link sent) and answers
 * by hand. The link runs on a uv loop the test turns. The backoff is a
 * pure function: the test gives it its random input.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "redis_link.h"
#include "tsup.h"

#define PEERS 8

static uv_loop_t loop;
static int listener = -1, port;
static struct peer {
    int fd;
    char got[8192];
    size_t len;
} peers[PEERS];
static int npeers;

static struct {
    int online, offline, messages;
    bool attempt_failed, closed;
    char why[1024], message[64];
} seen;

static void on_online(void *arg, const char *why)
{
    (void)arg;
    seen.online++;
    snprintf(seen.why, sizeof seen.why, "%s", why);
}

static void on_offline(void *arg, int err, const char *why, bool attempt_failed)
{
    (void)arg, (void)err;
    seen.offline++;
    seen.attempt_failed = attempt_failed;
    snprintf(seen.why, sizeof seen.why, "%s", why);
}

static void on_message(void *arg, const char *payload, size_t len)
{
    (void)arg;
    seen.messages++;
    snprintf(seen.message, sizeof seen.message, "%.*s", (int)len, payload);
}

static void on_closed(void *arg)
{
    (void)arg;
    seen.closed = true;
}

/* Accept what connects and read what is there, without blocking. */
static void serve(void)
{
    int fd;
    while (npeers < PEERS && (fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
        peers[npeers++] = (struct peer){.fd = fd};
    for (int i = 0; i < npeers; i++) {
        ssize_t n;
        struct peer *p = &peers[i];
        while (p->fd >= 0 && p->len < sizeof p->got - 1 && (n = read(p->fd, p->got + p->len, sizeof p->got - 1 - p->len)) > 0)
            p->len += (size_t)n;
        p->got[p->len] = '\0';
    }
}

#define TURN_UNTIL(cond) \
    cr_assert(tsup_wait_until((uv_run(&loop, UV_RUN_NOWAIT), serve(), (cond)), TSUP_LIVENESS_MS), "never: %s", #cond)

/* The peer (from index from on) that received needle; -1 if none. */
static int peer_with(const char *needle, int from)
{
    for (int i = from; i < npeers; i++)
        if (peers[i].fd >= 0 && strstr(peers[i].got, needle) != NULL)
            return i;
    return -1;
}

static void answer(int i, const char *bytes)
{
    cr_assert_eq(write(peers[i].fd, bytes, strlen(bytes)), (ssize_t)strlen(bytes));
}

static void setup(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    memset(&seen, 0, sizeof seen);
    npeers = 0;
    cr_assert_eq(uv_loop_init(&loop), 0);
    listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(listener >= 0 && bind(listener, (struct sockaddr *)&a, sizeof a) == 0 && listen(listener, 8) == 0);
    cr_assert_eq(getsockname(listener, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
}

static void teardown(void)
{
    for (int i = 0; i < npeers; i++)
        if (peers[i].fd >= 0)
            close(peers[i].fd);
    close(listener);
    uv_run(&loop, UV_RUN_NOWAIT);
}

TestSuite(redis_link, .init = setup, .fini = teardown, .timeout = 30);

static const char *password_file(const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/redis.pass", tsup_tmpdir());
    FILE *f = fopen(path, "w");
    cr_assert(f != NULL && fputs(text, f) >= 0 && fclose(f) == 0);
    return path;
}

static struct cbd_redis_link *link_to(const char *options)
{
    char uri[512], why[512];
    struct cbd_redis_uri u;
    struct cbd_redis_link *link;
    struct cbd_redis_link_cbs cbs = {.online = on_online, .offline = on_offline, .message = on_message};
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d%s", port, options);
    cr_assert_eq(cbd_redis_uri_parse(uri, &u, NULL, NULL, NULL, why, sizeof why), 0, "%s", why);
    cr_assert_eq(cbd_redis_link_new(&link, &loop, &u, "chan", &cbs), 0);
    return link;
}

static void link_close(struct cbd_redis_link *link)
{
    cbd_redis_link_close(link, on_closed, NULL);
    TURN_UNTIL(seen.closed);
    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    cr_assert_eq(uv_loop_close(&loop), 0, "the link left handles on the loop");
}

#define MASTER "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"
#define SUBSCRIBED "*3\r\n$9\r\nsubscribe\r\n$4\r\nchan\r\n:1\r\n"

/* "?user=alice&password_file=<a file holding pw>" and the like. */
static const char *with_password(const char *before, const char *pw)
{
    static char opts[400];
    snprintf(opts, sizeof opts, "%s%spassword_file=%s", before, strchr(before, '?') ? "&" : "?", password_file(pw));
    return opts;
}

Test(redis_link, each_connection_authenticates_and_the_command_one_selects_and_checks_the_role)
{
    struct cbd_redis_link *link = link_to(with_password("/3?user=alice", "pw-1\n"));
    cbd_redis_link_start(link);
    TURN_UNTIL(peer_with("ROLE", 0) >= 0 && peer_with("SUBSCRIBE", 0) >= 0);
    int cmd = peer_with("ROLE", 0), sub = peer_with("SUBSCRIBE", 0);
    static const char auth[] = "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$4\r\npw-1\r\n";
    static const char select3[] = "*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n";
    char *a = strstr(peers[cmd].got, auth), *s = strstr(peers[cmd].got, select3), *r = strstr(peers[cmd].got, "ROLE");
    cr_assert(a != NULL && s != NULL && a < s && s < r, "command connection sent: %s", peers[cmd].got);
    cr_assert(strncmp(peers[sub].got, auth, strlen(auth)) == 0, "subscriber authenticates first: %s", peers[sub].got);
    cr_assert(strstr(peers[sub].got, "SELECT") == NULL, "pub/sub needs no database");
    cr_assert(strstr(peers[sub].got, "$4\r\nchan\r\n") != NULL);
    answer(cmd, "+OK\r\n+OK\r\n" MASTER);
    answer(sub, "+OK\r\n" SUBSCRIBED);
    TURN_UNTIL(seen.online == 1);
    cr_assert(strstr(seen.why, "connected to redis://127.0.0.1:") != NULL, "%s", seen.why);
    cr_assert(cbd_redis_link_is_online(link));
    answer(sub, "*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$8\r\npayments\r\n");
    TURN_UNTIL(seen.messages == 1);
    cr_assert_str_eq(seen.message, "payments");
    link_close(link);
}

Test(redis_link, a_replica_is_refused_and_the_next_attempt_reads_the_password_again)
{
    struct cbd_redis_link *link = link_to(with_password("", "old"));
    cbd_redis_link_start(link);
    TURN_UNTIL(peer_with("ROLE", 0) >= 0);
    password_file("new\n"); /* rotated before the next attempt */
    answer(peer_with("ROLE", 0), "+OK\r\n*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n");
    TURN_UNTIL(seen.offline == 1);
    cr_assert(seen.attempt_failed);
    cr_assert(strstr(seen.why, "is not the master (ROLE says 'slave'): point the URI at the master, or use "
                               "redis-sentinel://") != NULL, "%s", seen.why);
    cr_assert_eq(seen.online, 0);
    int first = npeers;
    TURN_UNTIL(peer_with("ROLE", first) >= 0);
    cr_assert(strstr(peers[peer_with("ROLE", first)].got, "$3\r\nnew\r\n") != NULL, "the new password is used");
    struct cbd_redis_link_stats st;
    cbd_redis_link_stats(link, &st);
    cr_assert_eq(st.reconnects, 1);
    link_close(link);
}

Test(redis_link, a_wrong_password_is_reported_and_retried)
{
    struct cbd_redis_link *link = link_to(with_password("", "wrong"));
    cbd_redis_link_start(link);
    TURN_UNTIL(peer_with("ROLE", 0) >= 0);
    answer(peer_with("ROLE", 0), "-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    TURN_UNTIL(seen.offline == 1);
    cr_assert(strstr(seen.why, "refused AUTH: WRONGPASS invalid username-password pair") != NULL, "%s", seen.why);
    int first = npeers;
    TURN_UNTIL(peer_with("AUTH", first) >= 0); /* it keeps trying */
    link_close(link);
}

Test(redis_link, an_unreadable_password_file_is_reported_naming_the_file)
{
    char opts[300];
    snprintf(opts, sizeof opts, "?password_file=%s/missing.pass", tsup_tmpdir());
    struct cbd_redis_link *link = link_to(opts);
    cbd_redis_link_start(link);
    TURN_UNTIL(seen.offline == 1);
    cr_assert(strstr(seen.why, "cannot read the password file") != NULL && strstr(seen.why, "missing.pass") != NULL,
              "%s", seen.why);
    cr_assert_eq(peer_with("AUTH", 0), -1, "nothing is sent without the password");
    link_close(link);
}

Test(redis_link, a_user_without_permission_for_role_is_accepted_unverified)
{
    struct cbd_redis_link *link = link_to("");
    cbd_redis_link_start(link);
    TURN_UNTIL(peer_with("ROLE", 0) >= 0 && peer_with("SUBSCRIBE", 0) >= 0);
    answer(peer_with("ROLE", 0), "-NOPERM this user has no permissions to run the 'role' command\r\n");
    answer(peer_with("SUBSCRIBE", 0), SUBSCRIBED);
    TURN_UNTIL(seen.online == 1);
    link_close(link);
}

Test(redis_link, a_protocol_error_is_counted_and_the_link_reconnects)
{
    struct cbd_redis_link *link = link_to("");
    struct cbd_redis_link_stats st;
    cbd_redis_link_start(link);
    TURN_UNTIL(peer_with("ROLE", 0) >= 0 && peer_with("SUBSCRIBE", 0) >= 0);
    answer(peer_with("ROLE", 0), MASTER);
    answer(peer_with("SUBSCRIBE", 0), SUBSCRIBED);
    TURN_UNTIL(seen.online == 1);
    answer(peer_with("ROLE", 0), "+OK\r\n"); /* nobody asked */
    TURN_UNTIL(seen.offline == 1);
    cr_assert_not(seen.attempt_failed, "an online link was lost");
    cr_assert(strstr(seen.why, "protocol error from 127.0.0.1:") != NULL, "%s", seen.why);
    cbd_redis_link_stats(link, &st);
    cr_assert_eq(st.protocol_errors, 1);
    int first = npeers;
    TURN_UNTIL(peer_with("ROLE", first) >= 0);
    link_close(link);
}

Test(redis_link, the_backoff_is_full_jitter_under_an_exponential_cap)
{
    for (unsigned attempt = 0; attempt < 40; attempt++) {
        uint64_t cap = attempt < 6 ? 100u << attempt : 5000u;
        if (cap > 5000)
            cap = 5000;
        cr_assert_eq(cbd_redis_backoff_ms(attempt, 0), 0, "the delay can be zero");
        cr_assert_eq(cbd_redis_backoff_ms(attempt, cap), cap, "the cap is reached");
        cr_assert_eq(cbd_redis_backoff_ms(attempt, cap + 1), 0, "and wraps: r is taken modulo cap + 1");
        uint64_t r = 1;
        for (int i = 0; i < 64; i++, r = r * 6364136223846793005ull + 1442695040888963407ull)
            cr_assert_leq(cbd_redis_backoff_ms(attempt, r), cap, "attempt %u r %llu", attempt, (unsigned long long)r);
    }
    cr_assert_eq(cbd_redis_backoff_ms(0, 100), 100, "attempt 0: up to 100 ms");
    cr_assert_eq(cbd_redis_backoff_ms(5, 3200), 3200, "attempt 5: up to 3.2 s");
    cr_assert_eq(cbd_redis_backoff_ms(6, 5000), 5000, "from attempt 6 on: up to 5 s");
}
