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
