/*
 * ddb_test_support.h - fixtures for the DynamoDB/AWS tests: a scriptable
 * loopback HTTP endpoint, dynalite on a free loopback port, raw DynamoDB
 * calls to it the way Powertools (boto3) makes them, and paths to the
 * helper scripts beside this file.
 *
 * Header-only (static functions) so each test that includes it links
 * without extra build wiring; children are started with tsup_spawn, so they
 * die with the test like every other fixture.
 *
 * The fake endpoint runs a thread per connection (curl keeps connections
 * alive and opens another one when it retries after a timeout). The test's
 * handler runs under one mutex, so it may keep plain counters; it picks the
 * status, body and an optional delay, or drops the connection unanswered.
 * The endpoint lives until the test process exits and may still answer a
 * request the client cancelled after the test body returned: the handler's
 * state must therefore be static, never on the test's stack.
 *
 * The raw calls speak HTTP/1.0 over a plain socket rather than through
 * libcurl, so a test that links only libcb (test_fleet_dynamodb) can use
 * them too; dynalite checks the Authorization header's shape, never its
 * signature, so a fixed one does.
 */
#ifndef DDB_TEST_SUPPORT_H
#define DDB_TEST_SUPPORT_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "tsup.h"

#define DDB_UNUSED __attribute__((unused))
#define DDB_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* ---- the environment ------------------------------------------------------------ */

/* A suite's .init for tests against dynalite: it wants a signed request,
 * not a valid one; nothing may reach EC2 metadata or a configured AWS. */
static DDB_UNUSED void ddb_test_env(void)
{
    setenv("AWS_ACCESS_KEY_ID", "AKIDTEST", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "test-secret", 1);
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
    unsetenv("AWS_SESSION_TOKEN");
    unsetenv("AWS_PROFILE");
    unsetenv("AWS_ENDPOINT_URL");
    unsetenv("AWS_ENDPOINT_URL_DYNAMODB");
}

/* ---- paths --------------------------------------------------------------------- */

/* tests/<file's dir>/../<rel>: the tests tree, found from the including
 * test's own source path (CMake compiles with absolute paths). */
#define ddb_tests_path(buf, rel) ddb__tests_path(buf, sizeof(buf), __FILE__, rel)
static DDB_UNUSED void ddb__tests_path(char *buf, size_t len, const char *file, const char *rel)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    int n = snprintf(buf, len, "%s/../%s", dir, rel);
    cr_assert(n > 0 && (size_t)n < len, "path too long: %s/../%s", dir, rel);
}

/* ---- the fake endpoint -------------------------------------------------------- */

struct fake_req {
    char method[16];
    char path[1024];
    char headers[16384]; /* raw header lines */
    char *body;
    size_t body_len;
};

struct fake_resp {
    int status;        /* default 200 */
    char body[16384];  /* default "{}" */
    char headers[512]; /* extra "Name: value\r\n" lines */
    int delay_ms;      /* wait before answering */
    bool drop;         /* close the connection without an answer */
};

typedef void (*fake_handler)(void *arg, const struct fake_req *rq, struct fake_resp *rs);

struct fake_http {
    int fd, port;
    int connections; /* accepted so far (under mu) */
    fake_handler handler;
    void *arg;
    pthread_mutex_t mu;
    pthread_t acceptor;
};

/* A request header's value (case-insensitive name) into buf; false if absent. */
static DDB_UNUSED bool fake_header(const struct fake_req *rq, const char *name, char *buf, size_t len)
{
    size_t n = strlen(name);
    for (const char *l = rq->headers; l && *l; l = strstr(l, "\r\n") ? strstr(l, "\r\n") + 2 : NULL) {
        if (strncasecmp(l, name, n) == 0 && l[n] == ':') {
            const char *v = l + n + 1, *e = strstr(v, "\r\n");
            while (*v == ' ')
                v++;
            snprintf(buf, len, "%.*s", (int)(e ? e - v : (ptrdiff_t)strlen(v)), v);
            return true;
        }
    }
    return false;
}

static bool fake__read_req(int c, char *buf, size_t cap, size_t *have, struct fake_req *rq)
{
    char *end;
    buf[*have] = '\0';
    while (!(end = strstr(buf, "\r\n\r\n"))) {
        if (*have + 1 >= cap)
            return false;
        ssize_t r = read(c, buf + *have, cap - 1 - *have);
        if (r <= 0)
            return false;
        *have += (size_t)r;
        buf[*have] = '\0';
    }
    size_t head = (size_t)(end - buf) + 4, clen = 0;
    memset(rq, 0, sizeof *rq);
    if (sscanf(buf, "%15s %1023s", rq->method, rq->path) != 2)
        return false;
    const char *hl = strstr(buf, "\r\n") + 2;
    snprintf(rq->headers, sizeof rq->headers, "%.*s", (int)(head - 2 - (size_t)(hl - buf)), hl);
    char v[32];
    if (fake_header(rq, "Content-Length", v, sizeof v))
        clen = strtoul(v, NULL, 10);
    while (*have < head + clen) {
        if (head + clen + 1 > cap)
            return false;
        ssize_t r = read(c, buf + *have, cap - 1 - *have);
        if (r <= 0)
            return false;
        *have += (size_t)r;
    }
    rq->body = malloc(clen + 1);
    memcpy(rq->body, buf + head, clen);
    rq->body[clen] = '\0';
    rq->body_len = clen;
    memmove(buf, buf + head + clen, *have - head - clen);
    *have -= head + clen;
    return true;
}

struct fake__conn {
    struct fake_http *f;
    int fd;
};

static void *fake__serve(void *arg)
{
    struct fake__conn *cn = arg;
    static __thread char buf[1 << 20];
    size_t have = 0;
    struct fake_req rq;
    while (fake__read_req(cn->fd, buf, sizeof buf, &have, &rq)) {
        struct fake_resp *rs = calloc(1, sizeof *rs);
        rs->status = 200;
        strcpy(rs->body, "{}");
        pthread_mutex_lock(&cn->f->mu);
        cn->f->handler(cn->f->arg, &rq, rs);
        pthread_mutex_unlock(&cn->f->mu);
        free(rq.body);
        if (rs->delay_ms)
            usleep((useconds_t)rs->delay_ms * 1000);
        if (rs->drop) {
            free(rs);
            break;
        }
        char head[1024];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 %d X\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: %zu\r\n%s\r\n",
                         rs->status, strlen(rs->body), rs->headers);
        bool ok = send(cn->fd, head, (size_t)n, MSG_NOSIGNAL) == n &&
                  send(cn->fd, rs->body, strlen(rs->body), MSG_NOSIGNAL) == (ssize_t)strlen(rs->body);
        free(rs);
        if (!ok)
            break;
    }
    close(cn->fd);
    free(cn);
    return NULL;
}

static void *fake__accept(void *arg)
{
    struct fake_http *f = arg;
    for (;;) {
        int c = accept(f->fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        pthread_mutex_lock(&f->mu);
        f->connections++;
        pthread_mutex_unlock(&f->mu);
        struct fake__conn *cn = malloc(sizeof *cn);
        cn->f = f;
        cn->fd = c;
        pthread_t t;
        pthread_create(&t, NULL, fake__serve, cn);
        pthread_detach(t);
    }
}

/* Listen on 127.0.0.1, a free port; serve until the test process ends. */
static DDB_UNUSED struct fake_http *fake_http_start(fake_handler handler, void *arg)
{
    struct fake_http *f = calloc(1, sizeof *f);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    f->handler = handler;
    f->arg = arg;
    pthread_mutex_init(&f->mu, NULL);
    f->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(f->fd >= 0 && bind(f->fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(f->fd, 64) == 0 &&
              getsockname(f->fd, (struct sockaddr *)&a, &al) == 0, "fake endpoint: %s", strerror(errno));
    f->port = ntohs(a.sin_port);
    pthread_create(&f->acceptor, NULL, fake__accept, f);
    return f;
}

/* ---- dynalite ----------------------------------------------------------------------- */

struct dynalite {
    pid_t pid;
    int port;
    char endpoint[64];
};

static DDB_UNUSED int ddb_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
              getsockname(fd, (struct sockaddr *)&a, &al) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

static bool ddb__port_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Start dynalite (in memory) on port, or a free port when 0, and wait until
 * it accepts connections. $CBD_DYNALITE_DIR overrides tests/dynalite. */
#define dynalite_start(d, port) ddb__dynalite_start(d, port, __FILE__)
static DDB_UNUSED void ddb__dynalite_start(struct dynalite *d, int port, const char *file)
{
    char cli[PATH_MAX], portbuf[16], log[PATH_MAX];
    const char *dir = getenv("CBD_DYNALITE_DIR");
    if (dir)
        snprintf(cli, sizeof cli, "%s/node_modules/dynalite/cli.js", dir);
    else
        ddb__tests_path(cli, sizeof cli, file, "dynalite/node_modules/dynalite/cli.js");
    cr_assert(access(cli, R_OK) == 0, "dynalite not installed at %s: run `npm ci --prefix tests/dynalite`", cli);
    d->port = port ? port : ddb_free_port();
    snprintf(portbuf, sizeof portbuf, "%d", d->port);
    snprintf(log, sizeof log, "%s/dynalite-%d.log", tsup_tmpdir(), d->port);
    char *argv[] = {"/usr/bin/env", "node", cli, "--port", portbuf, "--createTableMs", "0", NULL};
    d->pid = tsup_spawn(argv, log);
    cr_assert(d->pid > 0, "cannot start dynalite: %s", strerror((int)-d->pid));
    snprintf(d->endpoint, sizeof d->endpoint, "http://127.0.0.1:%d", d->port);
    cr_assert(tsup_wait_until(ddb__port_open(d->port), 15000), "dynalite did not listen on %d (see %s)", d->port,
              log);
}

static DDB_UNUSED void dynalite_kill(struct dynalite *d)
{
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    tsup_untrack(d->pid);
    d->pid = 0;
}

/* ---- the table, the way Powertools (boto3) talks to it ----------------------------- */

/* One DynamoDB call (op, a JSON body from fmt) to dynalite on port over
 * HTTP/1.0, so the answer is never chunked; the answer with "__status". */
static DDB_UNUSED DDB_PRINTF(3, 4) json_t *ddb_raw(int port, const char *op, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int blen = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    cr_assert(blen > 0);
    char *body = malloc((size_t)blen + 1);
    vsnprintf(body, (size_t)blen + 1, fmt, again);
    va_end(again);
    char head[1024];
    int hlen = snprintf(head, sizeof head,
                        "POST / HTTP/1.0\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-amz-json-1.0\r\n"
                        "X-Amz-Target: DynamoDB_20120810.%s\r\nX-Amz-Date: 20260101T000000Z\r\n"
                        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDTEST/20260101/us-east-1/dynamodb/aws4_request, "
                        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=00\r\n"
                        "Content-Length: %d\r\n\r\n",
                        port, op, blen);
    cr_assert(hlen > 0 && (size_t)hlen < sizeof head);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect to dynalite: %s",
              strerror(errno));
    cr_assert_eq(send(fd, head, (size_t)hlen, MSG_NOSIGNAL), hlen);
    cr_assert_eq(send(fd, body, (size_t)blen, MSG_NOSIGNAL), blen);
    free(body);
    size_t used = 0, cap = 65536;
    char *ans = malloc(cap);
    ssize_t r;
    while ((r = read(fd, ans + used, cap - 1 - used)) > 0)
        used += (size_t)r;
    ans[used] = '\0';
    close(fd);
    int status = 0;
    char *json = strstr(ans, "\r\n\r\n");
    cr_assert(sscanf(ans, "HTTP/%*s %d", &status) == 1 && json, "not an HTTP answer: %s", ans);
    json_t *j = json_loads(json[4] ? json + 4 : "{}", 0, NULL);
    cr_assert(j, "not JSON: %s", json + 4);
    json_object_set_new(j, "__status", json_integer(status));
    free(ans);
    return j;
}

/* The HTTP status of a ddb_raw answer. */
static DDB_UNUSED long ddb_status(json_t *ans)
{
    return (long)json_integer_value(json_object_get(ans, "__status"));
}

/* GetItem as Powertools reads: eventually consistent, simple key "id". */
static DDB_UNUSED json_t *ddb_pt_get(int port, const char *table, const char *name)
{
    json_t *j = ddb_raw(port, "GetItem", "{\"TableName\":\"%s\",\"Key\":{\"id\":{\"S\":\"%s\"}}}", table, name);
    cr_assert_eq(ddb_status(j), 200, "GetItem: %s", json_dumps(j, 0));
    return j;
}

/* Powertools' trip (recovery_timeout 30 s): an unconditional PutItem of the
 * whole OPEN item. */
static DDB_UNUSED void ddb_pt_trip(int port, const char *table, const char *name, int64_t opened_at)
{
    json_t *r = ddb_raw(port, "PutItem",
                        "{\"TableName\":\"%s\",\"Item\":{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"OPEN\"},"
                        "\"failure_count\":{\"N\":\"5\"},\"opened_at\":{\"N\":\"%lld\"},"
                        "\"expiration\":{\"N\":\"%lld\"}}}",
                        table, name, (long long)opened_at, (long long)time(NULL) + 30 + 3600);
    cr_assert_eq(ddb_status(r), 200, "PutItem: %s", json_dumps(r, 0));
    json_decref(r);
}

/* A Powertools function's probe owner id ("<pid>#<uuid>"). */
#define DDB_PT_OWNER "4242#0f8fad5b-d9cb-469f-a165-70867728950e"

/* Powertools' election: PutItem of the HALF_OPEN item (lease 30 s) with its
 * condition; the HTTP status (400 = ConditionalCheckFailedException). */
static DDB_UNUSED long ddb_pt_elect(int port, const char *table, const char *name, int64_t opened_at)
{
    int64_t now = time(NULL);
    json_t *r = ddb_raw(port, "PutItem",
                        "{\"TableName\":\"%s\",\"Item\":{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"HALF_OPEN\"},"
                        "\"failure_count\":{\"N\":\"5\"},\"opened_at\":{\"N\":\"%lld\"},\"half_open_owner\":{\"S\":\""
                        DDB_PT_OWNER "\"},\"probe_lease_expiry\":{\"N\":\"%lld\"},\"expiration\":{\"N\":\"%lld\"}},"
                        "\"ConditionExpression\":\"(#state = :open AND attribute_not_exists(#owner) AND #opened_at = "
                        ":opened_at) OR (#state = :half_open AND #lease <= :now)\",\"ExpressionAttributeNames\":{"
                        "\"#state\":\"state\",\"#owner\":\"half_open_owner\",\"#opened_at\":\"opened_at\",\"#lease\":"
                        "\"probe_lease_expiry\"},\"ExpressionAttributeValues\":{\":open\":{\"S\":\"OPEN\"},"
                        "\":opened_at\":{\"N\":\"%lld\"},\":half_open\":{\"S\":\"HALF_OPEN\"},\":now\":{\"N\":\"%lld\"}}}",
                        table, name, (long long)opened_at, (long long)now + 30, (long long)now + 30 + 3600,
                        (long long)opened_at, (long long)now);
    long st = ddb_status(r);
    if (st != 200)
        cr_assert_str_eq(json_string_value(json_object_get(r, "__type")),
                         "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException");
    json_decref(r);
    return st;
}

/* Powertools' close (reopen false) and reopen at opened_at t: UpdateItems. */
static DDB_UNUSED void ddb_pt_update(int port, const char *table, const char *name, bool reopen, int64_t t)
{
    json_t *r;
    long long exp = (long long)time(NULL) + 3630;
    if (reopen)
        r = ddb_raw(port, "UpdateItem", "{\"TableName\":\"%s\",\"Key\":{\"id\":{\"S\":\"%s\"}},\"UpdateExpression\":"
                    "\"SET #state = :open, failure_count = :zero, opened_at = :oa, expiration = :exp REMOVE "
                    "half_open_owner, probe_lease_expiry\",\"ExpressionAttributeNames\":{\"#state\":\"state\"},"
                    "\"ExpressionAttributeValues\":{\":open\":{\"S\":\"OPEN\"},\":zero\":{\"N\":\"0\"},\":oa\":{\"N\":"
                    "\"%lld\"},\":exp\":{\"N\":\"%lld\"}}}", table, name, (long long)t, exp);
    else
        r = ddb_raw(port, "UpdateItem", "{\"TableName\":\"%s\",\"Key\":{\"id\":{\"S\":\"%s\"}},\"UpdateExpression\":"
                    "\"SET #state = :closed, failure_count = :zero, expiration = :exp REMOVE opened_at, "
                    "half_open_owner, probe_lease_expiry\",\"ExpressionAttributeNames\":{\"#state\":\"state\"},"
                    "\"ExpressionAttributeValues\":{\":closed\":{\"S\":\"CLOSED\"},\":zero\":{\"N\":\"0\"},\":exp\":{"
                    "\"N\":\"%lld\"}}}", table, name, exp);
    cr_assert_eq(ddb_status(r), 200, "%s", json_dumps(r, 0));
    json_decref(r);
}

/* A string attribute of a GetItem answer's item, or NULL when absent. */
static DDB_UNUSED const char *ddb_item_s(json_t *ans, const char *attr)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(ans, "Item"), attr), "S"));
}

/* A number attribute, or -1 when absent. */
static DDB_UNUSED int64_t ddb_item_n(json_t *ans, const char *attr)
{
    const char *v = json_string_value(json_object_get(json_object_get(json_object_get(ans, "Item"), attr), "N"));
    return v ? strtoll(v, NULL, 10) : -1;
}

static DDB_UNUSED bool ddb_item_has(json_t *ans, const char *attr)
{
    return json_object_get(json_object_get(ans, "Item"), attr) != NULL;
}

/* ---- the loop --------------------------------------------------------------------- */

/* Run loop until *flag or timeout_ms: the value of *flag. */
static DDB_UNUSED bool ddb_run_until(uv_loop_t *loop, const volatile bool *flag, int64_t timeout_ms)
{
    int64_t end = tsup_now_ms() + timeout_ms;
    while (!*flag && tsup_now_ms() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        if (!*flag)
            usleep(1000);
    }
    return *flag;
}

#endif /* DDB_TEST_SUPPORT_H */
