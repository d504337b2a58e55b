/*
 * fuzz_redis_reply.c - whatever a redis server (or anything posing as one)
 * sends to cbd: the input is the server's side of a connection.
 *
 * The harness listens on a unix socket of its own and plays the server for
 * real connections on a real uv loop, so the bytes go through the same
 * reads, reply scanner (redis_resp.c) and FIFO (redis_conn.c) as in cbd.
 * The first input byte picks the surface:
 *
 *   even: one connection. Byte 1 says how many commands wait for a reply
 *         (0..7) and whether the connection subscribes to "chan"; the rest
 *         is what the server answers, then it hangs up. Checked: down() is
 *         reported exactly once, after every reply callback ran exactly
 *         once (with a reply or NULL).
 *   odd:  a whole redis store (store_redis.c over redis_link.c). The
 *         harness answers the handshake as Redis would (ROLE master, a SHA1
 *         per SCRIPT LOAD, the SUBSCRIBE confirmation); byte 1 says what the
 *         store has to send once online (a queued trip's write, an
 *         election, a tracked circuit's read, the restore's SCAN always);
 *         byte 2 how many bytes of the rest go to the subscriber
 *         connection (pub/sub messages); the remainder answers the command
 *         connection, so the store decodes it as script results, SCAN
 *         pages and hashes - reading and migrating whatever keys they name.
 *         Then the server hangs up and the store is closed.
 *
 * Property: no crash, no leak, no abort, no hang (libFuzzer's timeout),
 * and the connection's callback contract above. Log lines are silenced.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "fuzz.h"
#include "log.h"
#include "redis_conn.h"
#include "store_redis.h"

#define MAX_TURNS 100000 /* loop turns before a run counts as hung */
#define MAX_BLOB 65536

static uv_loop_t loop;
static int listener = -1;
static char sock_path[108];

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_redis_reply: contract broken: %s\n", what);
        abort();
    }
}

static char sock_dir[64];

static void remove_socket(void)
{
    unlink(sock_path);
    rmdir(sock_dir);
}

static void init_once(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    cbd_log_threshold = CBD_LOG_ERROR + 1; /* silence: the store logs what it ignores */
    snprintf(sock_dir, sizeof sock_dir, "/tmp/fuzz-redis-XXXXXX");
    check(uv_loop_init(&loop) == 0 && mkdtemp(sock_dir) != NULL, "setup");
    snprintf(sock_path, sizeof sock_path, "%s/redis.sock", sock_dir);
    atexit(remove_socket);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
    listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    check(listener >= 0 && bind(listener, (struct sockaddr *)&a, sizeof a) == 0 && listen(listener, 16) == 0,
          "listen");
}

/* Turn the loop until cond holds; a run that never gets there is a hang. */
#define TURN_UNTIL(cond)                                                  \
    do {                                                                  \
        int turns_ = 0;                                                   \
        while (!(cond)) {                                                 \
            uv_run(&loop, UV_RUN_NOWAIT);                                 \
            check(++turns_ < MAX_TURNS, "no progress: " #cond);           \
        }                                                                 \
    } while (0)

static int accept_one(void) { return accept4(listener, NULL, NULL, SOCK_CLOEXEC); }

/* A reconnect of the previous run's store may wait in the backlog. */
static void drain_backlog(void)
{
    int fd;
    while ((fd = accept_one()) >= 0)
        close(fd);
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return; /* the client hung up: fine */
        p += w;
        n -= (size_t)w;
    }
}

/* ---- one connection ------------------------------------------------------------ */

static struct {
    int ups, downs;
    int calls[9];     /* per waiter: how many times its callback ran */
    bool after_down;  /* a callback ran after down() */
    bool closed;
} one;

static void one_up(void *arg, struct cbd_redis_conn *c) { (void)arg, (void)c, one.ups++; }
static void one_down(void *arg, struct cbd_redis_conn *c, int err, const char *why)
{
    (void)arg, (void)c, (void)err, (void)why;
    one.downs++;
}

static void one_reply(struct cbd_redis_conn *c, redisReply *r, void *priv)
{
    int *calls = priv;
    (void)c, (void)r;
    one.after_down |= one.downs > 0;
    (*calls)++; /* the subscriber's: once per message, and at the end */
}

static void one_closed(void *arg) { (void)arg, one.closed = true; }

static void fuzz_connection(uint8_t flags, const uint8_t *blob, size_t n)
{
    struct cbd_redis_conn *conn;
    struct cbd_redis_conn_cbs cbs = {.up = one_up, .down = one_down};
    struct cbd_redis_addr addr = {0};
    int fd = -1, waiters = flags & 7;
    memset(&one, 0, sizeof one);
    snprintf(addr.path, sizeof addr.path, "%s", sock_path);
    check(cbd_redis_conn_new(&conn, &loop, &cbs, 60000, 60000) == 0, "new");
    check(cbd_redis_conn_open(conn, &addr) == 0, "open");
    TURN_UNTIL((fd >= 0 || (fd = accept_one()) >= 0) && one.ups + one.downs > 0);
    for (int i = 0; i < waiters && one.downs == 0; i++) {
        const char *argv[1] = {"PING"};
        size_t len[1] = {4};
        check(cbd_redis_conn_command(conn, one_reply, &one.calls[i], 1, argv, len) == 0, "command");
    }
    if ((flags & 8) && one.downs == 0)
        check(cbd_redis_conn_subscribe(conn, one_reply, &one.calls[8], "chan") == 0, "subscribe");
    write_all(fd, blob, n);
    shutdown(fd, SHUT_WR);
    TURN_UNTIL(one.downs > 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    check(one.downs == 1, "exactly one down() per open()");
    check(!one.after_down, "a reply callback after down()");
    for (int i = 0; i < waiters; i++)
        check(one.calls[i] == 1, "every command's callback runs exactly once");
    check(!(flags & 8) || one.calls[8] >= 1, "the subscriber hears of the end");
    close(fd);
    cbd_redis_conn_close(conn, one_closed, NULL);
    TURN_UNTIL(one.closed);
}

/* ---- a whole store ------------------------------------------------------------- */

static struct {
    int online, offline;
    bool restored, closed;
} st;

static void st_remote(void *arg, const struct cbd_store_state *s) { (void)arg, (void)s; }
static void st_probe(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease)
{
    (void)arg, (void)name, (void)opened_at, (void)granted, (void)lease;
}
static void st_health(void *arg, bool online, const char *why)
{
    (void)arg, (void)why;
    online ? st.online++ : st.offline++;
}
static void st_restored(void *arg, int rc) { (void)arg, (void)rc, st.restored = true; }
static void st_closed(void *arg) { (void)arg, st.closed = true; }

/* The server side of one of the store's connections, as read so far. */
struct side {
    int fd;
    char got[16384];
    size_t len;
};

static void pump(struct side *s)
{
    ssize_t r;
    if (s->fd < 0)
        return;
    while (s->len < sizeof s->got - 1 && (r = recv(s->fd, s->got + s->len, sizeof s->got - 1 - s->len, MSG_DONTWAIT)) > 0)
        s->len += (size_t)r;
    s->got[s->len] = '\0';
}

static size_t count(const struct side *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = s->got; (p = memmem(p, s->len - (size_t)(p - s->got), needle, strlen(needle))) != NULL;
         p++)
        n++;
    return n;
}

/* Accept both connections and tell them apart by what they send. */
static void handshake(struct side *cmd, struct side *sub)
{
    struct side a = {.fd = -1}, b = {.fd = -1};
    TURN_UNTIL(((a.fd >= 0 || (a.fd = accept_one()) >= 0) && (b.fd >= 0 || (b.fd = accept_one()) >= 0) &&
                (pump(&a), pump(&b), (count(&a, "ROLE") || count(&b, "ROLE")) &&
                                         (count(&a, "SUBSCRIBE") || count(&b, "SUBSCRIBE")))));
    bool a_is_cmd = count(&a, "ROLE") > 0;
    *cmd = a_is_cmd ? a : b;
    *sub = a_is_cmd ? b : a;
    static const char master[] = "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";
    static const char subscribed[] = "*3\r\n$9\r\nsubscribe\r\n$13\r\nf:transitions\r\n:1\r\n";
    write_all(cmd->fd, (const uint8_t *)master, sizeof master - 1);
    write_all(sub->fd, (const uint8_t *)subscribed, sizeof subscribed - 1);
    TURN_UNTIL((pump(cmd), count(cmd, "LOAD") == 2));
    for (int i = 0; i < 2; i++) {
        char sha[64];
        int len = snprintf(sha, sizeof sha, "$40\r\n%040d\r\n", i);
        write_all(cmd->fd, (const uint8_t *)sha, (size_t)len);
    }
}

static void fuzz_store(uint8_t flags, size_t to_sub, const uint8_t *blob, size_t n)
{
    struct cbd_store *store;
    struct cbd_store_hooks hooks = {.loop = &loop, .remote = st_remote, .probe_result = st_probe,
                                    .health = st_health, .instance = "fuzz"};
    char uri[256];
    const char *err = NULL;
    struct side cmd, sub;
    memset(&st, 0, sizeof st);
    snprintf(uri, sizeof uri, "unix://%s?prefix=f:&sync_ms=3600000", sock_path);
    check(cbd_store_redis_ops.create(&store, uri, &hooks, &err) == 0, "create");
    if (flags & 1) { /* a trip queued while connecting: its write goes first */
        struct cbd_store_state s = {.name = "trip", .state = CB_OPEN, .opened_at = 1700000000, .failure_count = 5};
        cbd_store_redis_ops.transition(store, &s, 0);
    }
    if (flags & 2)
        cbd_store_redis_ops.try_probe(store, "vote", 1700000000, 30);
    if (flags & 4)
        cbd_store_redis_ops.track(store, "tracked", NULL);
    cbd_store_redis_ops.restore(store, st_restored, NULL);
    handshake(&cmd, &sub);
    TURN_UNTIL(st.online > 0 || st.offline > 0);
    to_sub = to_sub < n ? to_sub : n;
    write_all(sub.fd, blob, to_sub);
    write_all(cmd.fd, blob + to_sub, n - to_sub);
    shutdown(cmd.fd, SHUT_WR);
    shutdown(sub.fd, SHUT_WR);
    TURN_UNTIL(st.offline > 0);
    close(cmd.fd);
    close(sub.fd);
    cbd_store_redis_ops.close(store, st_closed, NULL);
    TURN_UNTIL(st.closed);
    uv_run(&loop, UV_RUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3 || size > MAX_BLOB)
        return 0;
    init_once();
    drain_backlog();
    if (data[0] % 2 == 0)
        fuzz_connection(data[1], data + 2, size - 2);
    else
        fuzz_store(data[1], data[2], data + 3, size - 3);
    return 0;
}
