/*
 * redis_sentinel.c - the master's address from Redis Sentinel, and news of
 * failovers (see redis_sentinel.h).
 *
 * One connection at a time, to one sentinel. A round (ask, or watch to
 * check a known master) tries the sentinels in `order`, which puts the
 * last one that answered first; each failure (refused, timed out, AUTH
 * refused, "does not know this master", an answer that is not [ip, port])
 * is noted and the next one is tried; when all failed the round reports
 * every sentinel's reason at once, which is what an operator needs to see.
 *
 * The sentinel that answered is kept: its connection SUBSCRIBEs to
 * +switch-master, whose messages read "<name> <old-ip> <old-port>
 * <new-ip> <new-port>". One for our master name is a failover: the owner
 * is told at once (moved), and reconnects to ask again - the sentinels,
 * not the message, stay the authority on the address. A message that does
 * not parse is counted and ignored.
 *
 * stop() and a new round while connected end the connection through
 * cbd_redis_conn_drop; its down() is then expected (`stopping`) and starts
 * the next round if one is due, so no stale answer is ever reported.
 */
#include "redis_sentinel.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redis_resp.h"

#define SWITCH_CHANNEL "+switch-master"

enum sen_mode { S_IDLE, S_ASKING, S_CHECKING, S_WATCHING };

struct cbd_redis_sentinel {
    const struct cbd_redis_uri *uri;
    struct cbd_redis_sentinel_cbs cbs;
    struct cbd_redis_conn *conn;
    bool conn_open;  /* opened, down() not reported yet */
    bool stopping;   /* its down() was asked for: not news */
    bool round_due;  /* start the round once that down() came */
    enum sen_mode mode;
    unsigned order[CBD_REDIS_SENTINELS_MAX];
    unsigned tried, at; /* this round: sentinels tried; the one connected */
    struct cbd_redis_addr current;
    char failures[1024];
    char list[CBD_REDIS_SENTINELS_MAX * 64];
    struct cbd_redis_sentinel_stats stats;
    struct cbd_ratelimit rl;
    void (*close_done)(void *arg);
    void *close_arg;
};

static const char *peer(const struct cbd_redis_sentinel *s) { return cbd_redis_conn_peer(s->conn); }

static void open_next(struct cbd_redis_sentinel *s);

/* A round ended without an answer. */
static void round_failed(struct cbd_redis_sentinel *s)
{
    char why[sizeof s->failures + 128];
    enum sen_mode mode = s->mode;
    s->mode = S_IDLE;
    snprintf(why, sizeof why, "no sentinel named master '%s': %s", s->uri->master, s->failures);
    if (mode == S_ASKING)
        s->cbs.failed(s->cbs.arg, -EHOSTUNREACH, why);
    else
        s->cbs.unwatched(s->cbs.arg, -EHOSTUNREACH, why);
}

static void note_failure(struct cbd_redis_sentinel *s, const char *why)
{
    size_t n = strlen(s->failures);
    snprintf(s->failures + n, sizeof s->failures - n, "%s%s", n ? "; " : "", why);
}

static void open_next(struct cbd_redis_sentinel *s)
{
    if (s->tried == s->uri->nsentinels) {
        round_failed(s);
        return;
    }
    s->at = s->order[s->tried++];
    s->conn_open = cbd_redis_conn_open(s->conn, &s->uri->sentinels[s->at]) == 0;
}

static void start_round(struct cbd_redis_sentinel *s, enum sen_mode mode)
{
    s->mode = mode;
    s->tried = 0;
    s->failures[0] = '\0';
    if (s->conn_open) {
        s->stopping = s->round_due = true; /* on_down starts it */
        cbd_redis_conn_drop(s->conn, -ECANCELED, "asking the sentinels again");
        return;
    }
    open_next(s);
}

/* The sentinel that answered goes first next time. */
static void to_front(struct cbd_redis_sentinel *s, unsigned idx)
{
    unsigned i = 0;
    while (s->order[i] != idx)
        i++;
    memmove(s->order + 1, s->order, i * sizeof s->order[0]);
    s->order[0] = idx;
}

static bool same_addr(const struct cbd_redis_addr *a, const struct cbd_redis_addr *b)
{
    return a->port == b->port && strcmp(a->host, b->host) == 0;
}

/* "ip port" fields into a; false if they are not an address and a port. */
static bool parse_addr(const char *ip, size_t iplen, const char *port, size_t portlen, struct cbd_redis_addr *a)
{
    unsigned long p = 0;
    memset(a, 0, sizeof *a);
    if (iplen == 0 || iplen >= sizeof a->host || portlen == 0 || portlen > 5)
        return false;
    for (size_t i = 0; i < iplen; i++)
        if (ip[i] <= ' ' || ip[i] > '~')
            return false;
    for (size_t i = 0; i < portlen; i++) {
        if (port[i] < '0' || port[i] > '9')
            return false;
        p = p * 10 + (unsigned long)(port[i] - '0');
    }
    if (p == 0 || p > 65535)
        return false;
    memcpy(a->host, ip, iplen);
    a->port = (uint16_t)p;
    return true;
}

/* "name old-ip old-port new-ip new-port": the new master if name is ours. */
static int parse_switch(const struct cbd_redis_sentinel *s, const char *msg, size_t len, struct cbd_redis_addr *to)
{
    const char *f[5];
    size_t flen[5], n = 0, i = 0;
    while (i < len && n < 5) {
        size_t j = i;
        while (j < len && msg[j] != ' ')
            j++;
        f[n] = msg + i;
        flen[n++] = j - i;
        i = j + 1;
    }
    if (n != 5 || i < len || !parse_addr(f[3], flen[3], f[4], flen[4], to))
        return -EINVAL;
    return flen[0] == strlen(s->uri->master) && memcmp(f[0], s->uri->master, flen[0]) == 0;
}

static void on_switch(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_sentinel *s = arg;
    struct cbd_redis_addr to;
    char shown[128], why[512];
    uint64_t suppressed;
    (void)conn;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || !(r->element[0]->len == 7 && !memcmp(r->element[0]->str, "message", 7))) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR) {
            snprintf(why, sizeof why, "sentinel %s refused SUBSCRIBE " SWITCH_CHANNEL ": %s", peer(s), r->str);
            cbd_redis_conn_drop(s->conn, -EIO, why);
        }
        return; /* the confirmation, or the end */
    }
    const redisReply *m = r->element[2];
    int ours = parse_switch(s, m->str, m->len, &to);
    if (ours < 0) {
        s->stats.protocol_errors++;
        cbd_redis_printable(shown, sizeof shown, m->str, m->len);
        if (cbd_ratelimit_pass(&s->rl, &suppressed))
            cbd_log(CBD_LOG_WARN, "redis sentinel %s: ignoring a malformed " SWITCH_CHANNEL " message '%s' (%" PRIu64
                    " more suppressed)", peer(s), shown, suppressed);
        return;
    }
    if (ours == 0)
        return; /* another master this sentinel watches */
    snprintf(why, sizeof why, "sentinel %s announced a failover of master '%s' to %s:%u", peer(s), s->uri->master,
             to.host, to.port);
    s->cbs.moved(s->cbs.arg, &to, why);
}

/* Keep this sentinel, subscribed to failover announcements. */
static void watch_here(struct cbd_redis_sentinel *s)
{
    s->mode = S_WATCHING;
    if (cbd_redis_conn_subscribe(s->conn, on_switch, s, SWITCH_CHANNEL) == 0)
        s->stats.commands_sent++;
}

static void on_master_addr(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_sentinel *s = arg;
    struct cbd_redis_addr a;
    char why[1024], got[64];
    (void)conn;
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_STRING &&
        r->element[1]->type == REDIS_REPLY_STRING &&
        parse_addr(r->element[0]->str, r->element[0]->len, r->element[1]->str, r->element[1]->len, &a)) {
        enum sen_mode mode = s->mode;
        to_front(s, s->at);
        watch_here(s);
        if (mode == S_ASKING) {
            s->cbs.found(s->cbs.arg, &a);
        } else if (!same_addr(&a, &s->current)) {
                    snprintf(why, sizeof why, "sentinel %s names %s:%u as master '%s' (was %s:%u)", peer(s), a.host, a.port,
                     s->uri->master, s->current.host, s->current.port);
            s->cbs.moved(s->cbs.arg, &a, why);
        }
        return;
    }
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(why, sizeof why, "%s does not know master '%s'", peer(s), s->uri->master);
    } else if (r->type == REDIS_REPLY_ERROR) {
        cbd_redis_printable(got, sizeof got, r->str, r->len);
        snprintf(why, sizeof why, "%s answered %s", peer(s), got);
    } else {
        snprintf(why, sizeof why, "%s answered something other than [ip, port]", peer(s));
    }
    cbd_redis_conn_drop(s->conn, -EIO, why);
}

static void on_auth(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_sentinel *s = arg;
    char why[512], got[96];
    if (r == NULL || r->type != REDIS_REPLY_ERROR)
        return;
    cbd_redis_printable(got, sizeof got, r->str, r->len);
    snprintf(why, sizeof why, "%s refused AUTH: %s", peer(s), got);
    cbd_redis_conn_drop(conn, -EACCES, why);
}

static void on_up(void *arg, struct cbd_redis_conn *conn)
{
    struct cbd_redis_sentinel *s = arg;
    char secret[CBD_REDIS_SECRET_MAX + 1], why[400];
    if (s->uri->sentinel_password.from != CBD_REDIS_SECRET_NONE) {
        int rc = cbd_redis_secret_load(&s->uri->sentinel_password, secret, sizeof secret, why, sizeof why);
        if (rc < 0) {
            cbd_redis_conn_drop(conn, -EACCES, why);
            return;
        }
        bool acl = s->uri->sentinel_user[0] != '\0';
        const char *argv[3] = {"AUTH", acl ? s->uri->sentinel_user : secret, secret};
        size_t len[3] = {4, strlen(argv[1]), strlen(secret)};
        if (cbd_redis_conn_command(conn, on_auth, s, acl ? 3 : 2, argv, len) == 0)
            s->stats.commands_sent++;
        explicit_bzero(secret, sizeof secret);
    }
    const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", s->uri->master};
    size_t len[3] = {8, 23, strlen(s->uri->master)};
    if (cbd_redis_conn_command(conn, on_master_addr, s, 3, argv, len) == 0)
        s->stats.commands_sent++;
}

static void on_down(void *arg, struct cbd_redis_conn *conn, int err, const char *why)
{
    struct cbd_redis_sentinel *s = arg;
    uint64_t suppressed;
    (void)conn;
    s->conn_open = false;
    if (err == -EPROTO) {
        s->stats.protocol_errors++;
        if (cbd_ratelimit_pass(&s->rl, &suppressed))
            cbd_log(CBD_LOG_WARN, "redis sentinel: %s; dropping the connection (%" PRIu64 " more suppressed)", why,
                    suppressed);
    }
    if (s->stopping) {
        s->stopping = false;
        if (s->round_due) {
            s->round_due = false;
            open_next(s);
        }
        return;
    }
    switch (s->mode) {
    case S_ASKING:
    case S_CHECKING:
        note_failure(s, why);
        open_next(s);
        break;
    case S_WATCHING:
        s->mode = S_IDLE;
        s->cbs.unwatched(s->cbs.arg, err, why);
        break;
    case S_IDLE:
        break;
    }
}

int cbd_redis_sentinel_new(struct cbd_redis_sentinel **out, uv_loop_t *loop, const struct cbd_redis_uri *uri,
                           const struct cbd_redis_sentinel_cbs *cbs)
{
    struct cbd_redis_sentinel *s = calloc(1, sizeof *s);
    struct cbd_redis_conn_cbs ccbs = {.arg = s, .up = on_up, .down = on_down};
    if (s == NULL || cbd_redis_conn_new(&s->conn, loop, &ccbs, uri->connect_timeout_ms, uri->command_timeout_ms) < 0) {
        free(s);
        return -ENOMEM;
    }
    s->uri = uri;
    s->cbs = *cbs;
    for (unsigned i = 0; i < uri->nsentinels; i++) {
        size_t n = strlen(s->list);
        s->order[i] = i;
        snprintf(s->list + n, sizeof s->list - n, strchr(uri->sentinels[i].host, ':') ? "%s[%s]:%u" : "%s%s:%u",
                 i ? "," : "", uri->sentinels[i].host, uri->sentinels[i].port);
    }
    *out = s;
    return 0;
}

void cbd_redis_sentinel_ask(struct cbd_redis_sentinel *s) { start_round(s, S_ASKING); }

void cbd_redis_sentinel_watch(struct cbd_redis_sentinel *s, const struct cbd_redis_addr *current)
{
    s->current = *current;
    start_round(s, S_CHECKING);
}

void cbd_redis_sentinel_stop(struct cbd_redis_sentinel *s)
{
    s->mode = S_IDLE;
    s->round_due = false;
    if (s->conn_open && !s->stopping) {
        s->stopping = true;
        cbd_redis_conn_drop(s->conn, -ECANCELED, "stopped");
    }
}

const char *cbd_redis_sentinel_list(const struct cbd_redis_sentinel *s) { return s->list; }

void cbd_redis_sentinel_stats(const struct cbd_redis_sentinel *s, struct cbd_redis_sentinel_stats *out)
{
    *out = s->stats;
}

static void on_conn_closed(void *arg)
{
    struct cbd_redis_sentinel *s = arg;
    void (*done)(void *) = s->close_done;
    void *done_arg = s->close_arg;
    free(s);
    if (done != NULL)
        done(done_arg);
}

void cbd_redis_sentinel_close(struct cbd_redis_sentinel *s, void (*done)(void *arg), void *arg)
{
    s->mode = S_IDLE;
    s->close_done = done;
    s->close_arg = arg;
    cbd_redis_conn_close(s->conn, on_conn_closed, s);
}
