/*
 * tsup_redis.c - a redis-server of the test's own, for the fleet tests.
 *
 * Each server listens on a free loopback port (or a unix socket in the
 * test's directory) and keeps nothing: --save '' and --appendonly no, so a
 * restart is an empty server, like a cache node that lost its data, and
 * --dir is the test's directory, so nothing lands anywhere else. It runs
 * through tsup_spawn: it dies with the test and its log is
 * <tmpdir>/<name>.log.
 *
 * The free port is found by binding port 0 and closing it again, so
 * another process may take it before redis binds it; a server that exits
 * during start is therefore retried on a new port. A restart reuses the
 * port (clients reconnect to the same address), which a parallel test
 * could have taken meanwhile - unlikely enough, and it fails loudly.
 *
 * Liveness is a raw PING over a socket (any answer, even NOAUTH, means the
 * server is up), so the support library needs no redis client; tests that
 * want to read or write data run redis-cli through tsup_redis_cli().
 */
#define _GNU_SOURCE
#include "tsup.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define REDIS_SERVER "/usr/bin/redis-server"
#define REDIS_CLI "/usr/bin/redis-cli"
#define REDIS_SENTINEL "/usr/bin/redis-sentinel" /* Debian: package redis-sentinel */
#define START_ATTEMPTS 3
#define CLI_ARGS_MAX 32

int tsup_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int port = -errno;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    else
        port = -errno;
    if (fd >= 0)
        close(fd);
    return port;
}

static int connect_to(const struct tsup_redis *r)
{
    int fd = socket(r->sock[0] ? AF_UNIX : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = -1;
    if (fd < 0)
        return -errno;
    if (r->sock[0]) {
        struct sockaddr_un u = {.sun_family = AF_UNIX};
        snprintf(u.sun_path, sizeof u.sun_path, "%s", r->sock);
        rc = connect(fd, (struct sockaddr *)&u, sizeof u);
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (rc < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

bool tsup_redis_ping(const struct tsup_redis *r)
{
    char buf[64];
    int fd = connect_to(r);
    if (fd < 0)
        return false;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    bool up = send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6 && poll(&p, 1, 1000) == 1 && read(fd, buf, sizeof buf) > 0;
    close(fd);
    return up;
}

/* The server's argument vector, from r's address and extra arguments. */
static void build_argv(const struct tsup_redis *r, char port[8], const char *argv[])
{
    int n = 0;
    snprintf(port, 8, "%d", r->port);
    if (r->conf[0]) { /* a sentinel: everything is in its file, which it rewrites */
        argv[n++] = REDIS_SENTINEL;
        argv[n++] = r->conf;
        argv[n] = NULL;
        return;
    }
    argv[n++] = REDIS_SERVER;
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = tsup_tmpdir();
    argv[n++] = "--port";
    argv[n++] = r->sock[0] ? "0" : port;
    if (r->sock[0]) {
        argv[n++] = "--unixsocket";
        argv[n++] = r->sock;
    } else {
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
    }
    for (int i = 0; i < TSUP_REDIS_EXTRA_MAX && r->extra[i] != NULL; i++)
        argv[n++] = r->extra[i];
    argv[n] = NULL;
}

/* Spawn and wait for PING: 0, -ECHILD if it exited, -ETIMEDOUT. */
static int spawn_and_wait(struct tsup_redis *r)
{
    const char *argv[16 + TSUP_REDIS_EXTRA_MAX];
    char port[8];
    build_argv(r, port, argv);
    pid_t pid = tsup_spawn((char *const *)argv, r->log);
    if (pid < 0)
        return pid;
    r->pid = pid;
    struct tsup_deadline dl = tsup_deadline_in(TSUP_LIVENESS_MS);
    do {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            tsup_untrack(pid);
            r->pid = 0;
            return -ECHILD;
        }
        if (tsup_redis_ping(r))
            return 0;
    } while (tsup_deadline_wait(&dl));
    return -ETIMEDOUT;
}

int tsup_redis_start_with(struct tsup_redis *r, bool unix_socket, const char *const *extra)
{
    int rc = -EINVAL;
    memset(r, 0, sizeof *r);
    for (int i = 0; extra != NULL && extra[i] != NULL; i++) {
        if (i == TSUP_REDIS_EXTRA_MAX)
            return -E2BIG;
        r->extra[i] = extra[i];
    }
    const char *name = tsup_unique("redis");
    snprintf(r->log, sizeof r->log, "%s/%s.log", tsup_tmpdir(), name);
    if (unix_socket && (size_t)snprintf(r->sock, sizeof r->sock, "%s/%s.sock", tsup_tmpdir(), name) >= sizeof r->sock)
        return -ENAMETOOLONG;
    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        if (!unix_socket && (r->port = tsup_free_port()) < 0)
            return r->port;
        if ((rc = spawn_and_wait(r)) != -ECHILD)
            break; /* up, or hung: another port would not help */
    }
    if (rc < 0)
        fprintf(stderr, "tsup: redis-server did not come up (%s); see %s\n", strerror(-rc), r->log);
    return rc;
}

int tsup_redis_start_replica(struct tsup_redis *r, const struct tsup_redis *master, const char *password,
                             const char *const *extra)
{
    /* the strings must outlive r: one set per test process is enough */
    static char port[4][8];
    static unsigned next;
    const char *args[TSUP_REDIS_EXTRA_MAX + 1] = {"--replicaof", "127.0.0.1", port[next % 4]};
    int n = 3;
    snprintf(port[next++ % 4], sizeof port[0], "%d", master->port);
    if (password != NULL) {
        args[n++] = "--masterauth";
        args[n++] = password;
    }
    for (int i = 0; extra != NULL && extra[i] != NULL && n < TSUP_REDIS_EXTRA_MAX; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    return tsup_redis_start_with(r, false, args);
}

/* The sentinel's configuration file for a start on r->port. */
static int write_sentinel_conf(const struct tsup_redis *s, const char *name, const struct tsup_redis *master,
                               const char *master_password, const char *sentinel_password)
{
    FILE *f = fopen(s->conf, "w");
    if (f == NULL)
        return -errno;
    fprintf(f, "port %d\nbind 127.0.0.1\ndir %s\n", s->port, tsup_tmpdir());
    fprintf(f, "sentinel monitor %s 127.0.0.1 %d 1\n", name, master->port);
    fprintf(f, "sentinel down-after-milliseconds %s 1000\n", name);
    fprintf(f, "sentinel failover-timeout %s 3000\n", name); /* a split election retries after 2x this */
    if (master_password != NULL)
        fprintf(f, "sentinel auth-pass %s %s\n", name, master_password);
    if (sentinel_password != NULL)
        fprintf(f, "requirepass %s\n", sentinel_password);
    return fclose(f) == 0 ? 0 : -errno;
}

int tsup_sentinel_start(struct tsup_redis *s, const char *name, const struct tsup_redis *master,
                        const char *master_password, const char *sentinel_password)
{
    int rc = -EINVAL;
    memset(s, 0, sizeof *s);
    const char *unique = tsup_unique("sentinel");
    snprintf(s->log, sizeof s->log, "%s/%s.log", tsup_tmpdir(), unique);
    snprintf(s->conf, sizeof s->conf, "%s/%s.conf", tsup_tmpdir(), unique);
    for (int attempt = 0; attempt < START_ATTEMPTS; attempt++) {
        if ((s->port = tsup_free_port()) < 0)
            return s->port;
        if ((rc = write_sentinel_conf(s, name, master, master_password, sentinel_password)) < 0 ||
            (rc = spawn_and_wait(s)) != -ECHILD)
            break;
    }
    if (rc < 0)
        fprintf(stderr, "tsup: redis-sentinel did not come up (%s); see %s\n", strerror(-rc), s->log);
    return rc;
}

int tsup_redis_start(struct tsup_redis *r)
{
    return tsup_redis_start_with(r, false, NULL);
}

int tsup_redis_restart(struct tsup_redis *r)
{
    if (r->pid != 0)
        return -EBUSY;
    int rc = spawn_and_wait(r);
    if (rc < 0)
        fprintf(stderr, "tsup: redis-server did not come back (%s); see %s\n", strerror(-rc), r->log);
    return rc;
}

void tsup_redis_kill(struct tsup_redis *r, int sig)
{
    if (r->pid == 0)
        return;
    kill(r->pid, sig);
    if (sig == SIGSTOP || sig == SIGCONT)
        return;
    kill(r->pid, SIGCONT); /* a stopped server acts on SIGTERM only once continued */
    waitpid(r->pid, NULL, 0);
    tsup_untrack(r->pid);
    r->pid = 0;
}

void tsup_redis_stop(struct tsup_redis *r)
{
    tsup_redis_kill(r, SIGKILL);
}

const char *tsup_redis_uri(const struct tsup_redis *r, const char *options)
{
    static char uris[4][512];
    static unsigned next;
    char *u = uris[next++ % 4];
    const char *sep = options != NULL && options[0] != '\0' ? "?" : "";
    if (r->sock[0])
        snprintf(u, sizeof uris[0], "unix://%s%s%s", r->sock, sep, sep[0] ? options : "");
    else
        snprintf(u, sizeof uris[0], "redis://127.0.0.1:%d%s%s", r->port, sep, sep[0] ? options : "");
    return u;
}

int tsup_redis_cli(const struct tsup_redis *r, char **out, ...)
{
    char *argv[CLI_ARGS_MAX], port[8];
    int n = 0;
    va_list ap;
    argv[n++] = REDIS_CLI;
    argv[n++] = r->sock[0] ? "-s" : "-p";
    snprintf(port, sizeof port, "%d", r->port);
    argv[n++] = r->sock[0] ? (char *)r->sock : port;
    va_start(ap, out);
    for (char *a; (a = va_arg(ap, char *)) != NULL;) {
        cr_assert_lt(n, CLI_ARGS_MAX - 1, "tsup_redis_cli: too many arguments");
        argv[n++] = a;
    }
    va_end(ap);
    argv[n] = NULL;
    char *text = NULL;
    int status = tsup_run(argv, &text, true);
    if (out != NULL)
        *out = text;
    else
        free(text);
    return status;
}

/* ---- a misbehaving proxy in front of a redis-server -------------------------- */

/*
 * The proxy is a child of the test (tsup_fork: it dies with the test) that
 * accepts clients on a free loopback port and relays each to the server.
 * The test steers it through a pipe, one order at a time:
 *   'D'                       the next chunk the server sends to any client
 *                             is delivered twice: a client that waits for
 *                             one reply gets a command answered twice;
 *   'I' <u32 len> <bytes>     the bytes go to every client now, as if the
 *                             server had sent them;
 *   'C' <u32 len> <bytes>     the same, then every client is disconnected
 *                             (a reply cut off mid-way);
 * and it acknowledges each order with one byte once it carried it out (for
 * 'D': once it received the order, since the chunk comes later).
 */
#define PROXY_PAIRS 32

struct proxy_pair {
    int client, server;
};

static void proxy_close_pair(struct proxy_pair *p)
{
    close(p->client);
    close(p->server);
    p->client = p->server = -1;
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *b = buf;
    while (len > 0) {
        ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        b += n;
        len -= (size_t)n;
    }
    return true;
}

static bool read_all(int fd, void *buf, size_t len)
{
    char *b = buf;
    while (len > 0) {
        ssize_t n = read(fd, b, len);
        if (n <= 0)
            return false;
        b += n;
        len -= (size_t)n;
    }
    return true;
}

static void proxy_accept(int lfd, int target_port, struct proxy_pair *pairs)
{
    int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;
    struct tsup_redis target = {.port = target_port};
    int s = connect_to(&target);
    for (int i = 0; s >= 0 && i < PROXY_PAIRS; i++)
        if (pairs[i].client < 0) {
            pairs[i] = (struct proxy_pair){c, s};
            return;
        }
    close(c);
    if (s >= 0)
        close(s);
}

/* One order from the test; false when the test went away. */
static bool proxy_order(int ctl, struct proxy_pair *pairs, bool *duplicate)
{
    char op, ack = 1;
    uint32_t len = 0;
    static char bytes[1 << 16];
    if (!read_all(ctl, &op, 1))
        return false;
    if (op == 'D') {
        *duplicate = true;
    } else {
        if (!read_all(ctl, &len, sizeof len) || len > sizeof bytes || !read_all(ctl, bytes, len))
            return false;
        for (int i = 0; i < PROXY_PAIRS; i++) {
            if (pairs[i].client < 0)
                continue;
            write_all(pairs[i].client, bytes, len);
            if (op == 'C')
                proxy_close_pair(&pairs[i]);
        }
    }
    return write(ctl, &ack, 1) == 1;
}

/* Relays what is readable on one side of pair i; false when it closed. */
static bool proxy_relay(struct proxy_pair *p, bool from_server, bool *duplicate)
{
    char buf[1 << 16];
    int from = from_server ? p->server : p->client, to = from_server ? p->client : p->server;
    ssize_t n = read(from, buf, sizeof buf);
    if (n <= 0 || !write_all(to, buf, (size_t)n))
        return false;
    if (from_server && *duplicate) {
        *duplicate = false;
        return write_all(to, buf, (size_t)n);
    }
    return true;
}

static _Noreturn void proxy_main(int lfd, int ctl, int target_port)
{
    struct proxy_pair pairs[PROXY_PAIRS];
    bool duplicate = false;
    for (int i = 0; i < PROXY_PAIRS; i++)
        pairs[i].client = pairs[i].server = -1;
    for (;;) {
        struct pollfd p[2 + 2 * PROXY_PAIRS] = {{.fd = lfd, .events = POLLIN}, {.fd = ctl, .events = POLLIN}};
        for (int i = 0; i < PROXY_PAIRS; i++) {
            p[2 + 2 * i] = (struct pollfd){.fd = pairs[i].client, .events = POLLIN};
            p[3 + 2 * i] = (struct pollfd){.fd = pairs[i].server, .events = POLLIN};
        }
        if (poll(p, 2 + 2 * PROXY_PAIRS, -1) < 0)
            continue;
        if (p[1].revents && !proxy_order(ctl, pairs, &duplicate))
            _exit(0);
        if (p[0].revents & POLLIN)
            proxy_accept(lfd, target_port, pairs);
        for (int i = 0; i < PROXY_PAIRS; i++) {
            if (pairs[i].client < 0)
                continue;
            bool ok = true;
            if (p[3 + 2 * i].revents)
                ok = proxy_relay(&pairs[i], true, &duplicate);
            if (ok && p[2 + 2 * i].revents)
                ok = proxy_relay(&pairs[i], false, &duplicate);
            if (!ok)
                proxy_close_pair(&pairs[i]);
        }
    }
}

int tsup_redis_proxy_start(struct tsup_redis_proxy *p, const struct tsup_redis *target)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int ctl[2];
    memset(p, 0, sizeof *p);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 16) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &len) < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) < 0) {
        int rc = -errno;
        if (lfd >= 0)
            close(lfd);
        return rc;
    }
    pid_t pid = tsup_fork();
    if (pid == 0) {
        close(ctl[0]);
        proxy_main(lfd, ctl[1], target->port);
    }
    close(lfd);
    close(ctl[1]);
    if (pid < 0) {
        close(ctl[0]);
        return -errno;
    }
    p->pid = pid;
    p->ctl = ctl[0];
    p->port = ntohs(a.sin_port);
    return 0;
}

/* Sends one order and waits for its acknowledgement. */
static void proxy_send(struct tsup_redis_proxy *p, char op, const void *bytes, size_t len)
{
    uint32_t n = (uint32_t)len;
    char ack;
    cr_assert(p->pid > 0, "tsup: the proxy is not running");
    cr_assert(len < (1u << 16), "tsup: at most 64 KiB per order");
    bool sent = write_all(p->ctl, &op, 1) && (op == 'D' || (write_all(p->ctl, &n, sizeof n) && write_all(p->ctl, bytes, len)));
    cr_assert(sent && read_all(p->ctl, &ack, 1), "tsup: the proxy went away");
}

void tsup_redis_proxy_duplicate_next(struct tsup_redis_proxy *p) { proxy_send(p, 'D', NULL, 0); }

void tsup_redis_proxy_inject(struct tsup_redis_proxy *p, const void *bytes, size_t len, bool then_close)
{
    proxy_send(p, then_close ? 'C' : 'I', bytes, len);
}

void tsup_redis_proxy_stop(struct tsup_redis_proxy *p)
{
    if (p->pid <= 0)
        return;
    close(p->ctl);
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    tsup_untrack(p->pid);
    p->pid = 0;
}
