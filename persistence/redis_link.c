/*
 * redis_link.c - endpoint, handshake, failover and reconnection of a redis
 * transport (see redis_link.h).
 *
 * Phases: IDLE (not started) -> DISCOVERING (redis-sentinel only: asking
 * the sentinels for the master) -> CONNECTING (both connections opening,
 * then the handshake, then the owner's preparation) -> ONLINE; any failure
 * -> DOWN, and from DOWN a retry timer starts the next attempt once both
 * data connections have reported down.
 *
 * The handshake, pipelined on each connection as soon as it is up:
 *   command:    [AUTH [user] password] [SELECT db] ROLE
 *   subscriber: [AUTH [user] password] SUBSCRIBE channel
 * ROLE must answer "master": a server that was demoted, a replica named in
 * the URI by mistake, or a sentinel's stale answer is refused with a
 * message that says so, and the next attempt asks again. A user without
 * permission for ROLE (NOPERM) is accepted unverified, with one warning:
 * READONLY answers still catch a replica later. Passwords are read from
 * their file or variable when each connection comes up, used for the AUTH
 * command and wiped.
 *
 * Sentinel: the sentinel that names the master stays subscribed to
 * +switch-master, also while the link is down (a dead master is the usual
 * reason for a failover). A failover announced there (or found by asking
 * again after that sentinel was lost) drops both data connections and
 * reconnects at once - the retry after a failover starts from attempt 0,
 * and one already waiting out a long backoff is brought forward - and the
 * reconnect asks the sentinels, which are the authority. Losing the
 * watching sentinel alone does not take the link offline: while online it
 * asks again on its own backoff.
 *
 * Protocol errors (-EPROTO from any connection: bytes that are not RESP, a
 * reply nobody asked for, a pub/sub frame of the wrong shape, a handshake
 * answer that makes no sense) are counted and logged, rate-limited, with
 * the peer's host:port and what was wrong; then the usual reconnection
 * follows. Nothing the peer sends can end the daemon.
 */
#include "redis_link.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "log.h"
#include "redis_resp.h"
#include "redis_sentinel.h"

enum link_phase { L_IDLE, L_DOWN, L_DISCOVERING, L_CONNECTING, L_ONLINE };

struct cbd_redis_link {
    uv_loop_t *loop;
    struct cbd_redis_uri uri;
    char *channel;
    struct cbd_redis_link_cbs cbs;
    struct cbd_redis_conn *cmd, *sub;
    struct cbd_redis_sentinel *sentinel; /* redis-sentinel URIs only */
    enum link_phase phase;
    bool cmd_open, sub_open;             /* opened, down() not reported yet */
    bool preparing, prepared, sub_ready;
    unsigned handshake_left;
    bool watching;                       /* a sentinel watches for failovers */
    struct cbd_redis_addr master;        /* where the data connections go */
    unsigned attempt, watch_attempt;
    uint64_t rng;
    uv_timer_t retry_timer, watch_timer;
    char endpoint[900];
    struct cbd_redis_link_stats stats;
    struct cbd_ratelimit rl_proto;
    bool role_warned;
    bool closing;
    unsigned close_pending;
    void (*close_done)(void *arg);
    void *close_arg;
};

uint32_t cbd_redis_backoff_ms(unsigned attempt, uint64_t r)
{
    return cbd_backoff_ms(attempt, CBD_REDIS_BACKOFF_BASE_MS, CBD_REDIS_BACKOFF_CAP_MS, r);
}

static uint64_t rng_next(struct cbd_redis_link *link)
{
    link->rng ^= link->rng >> 12; /* xorshift64*: jitter only, not secrets */
    link->rng ^= link->rng << 25;
    link->rng ^= link->rng >> 27;
    return link->rng * 0x2545F4914F6CDD1Dull;
}

static void describe_endpoint(struct cbd_redis_link *link)
{
    const struct cbd_redis_uri *u = &link->uri;
    const char *fmt = strchr(link->master.host, ':') ? "[%s]:%u" : "%s:%u";
    char at[300] = "";
    if (u->sentinel) {
        if (link->master.port != 0) {
            snprintf(at, sizeof at, " at ");
            snprintf(at + 4, sizeof at - 4, fmt, link->master.host, link->master.port);
        }
        snprintf(link->endpoint, sizeof link->endpoint, "redis-sentinel://%s%s/%u (sentinels %s)", u->master, at, u->db,
                 cbd_redis_sentinel_list(link->sentinel));
    } else if (u->server.path[0] != '\0') {
        snprintf(link->endpoint, sizeof link->endpoint, "unix://%s (db %u)", u->server.path, u->db);
    } else {
        snprintf(at, sizeof at, fmt, u->server.host, u->server.port);
        snprintf(link->endpoint, sizeof link->endpoint, "redis://%s/%u", at, u->db);
    }
}

/* ---- down, retry ------------------------------------------------------------- */

static void connect_now(struct cbd_redis_link *link);

static void on_retry(uv_timer_t *t)
{
    struct cbd_redis_link *link = t->data;
    link->stats.reconnects++;
    connect_now(link);
}

/* Offline and both data connections gone: the next attempt, after a delay. */
static void maybe_retry(struct cbd_redis_link *link)
{
    if (link->closing || link->phase != L_DOWN || link->cmd_open || link->sub_open ||
        uv_is_active((uv_handle_t *)&link->retry_timer))
        return;
    uv_timer_start(&link->retry_timer, on_retry, cbd_redis_backoff_ms(link->attempt++, rng_next(link)), 0);
}

/* Whatever failed, the link goes down once: both connections dropped,
 * the sentinel stopped, offline() told. */
static void went_offline(struct cbd_redis_link *link, int err, const char *why)
{
    char msg[sizeof link->endpoint + 1100];
    if (link->closing || link->phase == L_DOWN || link->phase == L_IDLE)
        return;
    bool attempt_failed = link->phase != L_ONLINE;
    link->phase = L_DOWN;
    link->preparing = false;
    cbd_redis_conn_drop(link->cmd, err, why);
    cbd_redis_conn_drop(link->sub, err, why);
    uv_timer_stop(&link->watch_timer); /* a sentinel still watching keeps watching: see on_master_moved */
    snprintf(msg, sizeof msg, "%s: %s", link->endpoint, why);
    link->cbs.offline(link->cbs.arg, err, msg, attempt_failed);
    maybe_retry(link);
}

static void count_protocol_error(struct cbd_redis_link *link, const char *why)
{
    uint64_t suppressed;
    link->stats.protocol_errors++;
    if (cbd_ratelimit_pass(&link->rl_proto, &suppressed))
        cbd_log(CBD_LOG_WARN, "redis: %s; dropping the connection and reconnecting (%" PRIu64 " more suppressed)", why,
                suppressed);
}

static void on_down(void *arg, struct cbd_redis_conn *conn, int err, const char *why)
{
    struct cbd_redis_link *link = arg;
    if (conn == link->cmd)
        link->cmd_open = link->preparing = link->prepared = false;
    else
        link->sub_open = link->sub_ready = false;
    if (link->closing)
        return;
    if (err == -EPROTO)
        count_protocol_error(link, why);
    went_offline(link, err, why);
    maybe_retry(link);
}

/* ---- online -------------------------------------------------------------------- */

static void on_watch_timer(uv_timer_t *t)
{
    struct cbd_redis_link *link = t->data;
    if (link->phase == L_ONLINE && !link->watching)
        cbd_redis_sentinel_watch(link->sentinel, &link->master);
}

static void maybe_online(struct cbd_redis_link *link)
{
    char why[sizeof link->endpoint + 16];
    if (link->phase != L_CONNECTING || !link->prepared || !link->sub_ready)
        return;
    link->phase = L_ONLINE;
    link->attempt = 0;
    if (link->sentinel != NULL && !link->watching)
        uv_timer_start(&link->watch_timer, on_watch_timer, 0, 0);
    snprintf(why, sizeof why, "connected to %s", link->endpoint);
    link->cbs.online(link->cbs.arg, why);
}

void cbd_redis_link_prepared(struct cbd_redis_link *link)
{
    if (link->phase != L_CONNECTING || !link->preparing)
        return;
    link->prepared = true;
    maybe_online(link);
}

/* ---- the handshake ------------------------------------------------------------------ */

static int send_hs(struct cbd_redis_link *link, struct cbd_redis_conn *conn, cbd_redis_reply_fn *fn, int argc,
                const char **argv)
{
    size_t len[4];
    for (int i = 0; i < argc; i++)
        len[i] = strlen(argv[i]);
    int rc = cbd_redis_conn_command(conn, fn, link, argc, argv, len);
    if (rc == 0)
        link->stats.commands_sent++;
    return rc;
}

/* A handshake answer refused: drop that connection, saying why. */
static void refused(struct cbd_redis_conn *conn, int err, const char *what, const redisReply *r)
{
    char why[600], got[300];
    cbd_redis_printable(got, sizeof got, r->str, r->len);
    snprintf(why, sizeof why, "%s refused %s: %s", cbd_redis_conn_peer(conn), what, got);
    cbd_redis_conn_drop(conn, err, why);
}

static void handshake_step(struct cbd_redis_link *link)
{
    if (--link->handshake_left > 0)
        return;
    link->preparing = true;
    if (link->cbs.prepare != NULL)
        link->cbs.prepare(link->cbs.arg, link);
    else
        cbd_redis_link_prepared(link);
}

static void on_auth(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_link *link = arg;
    char what[200];
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        if (link->uri.user[0] != '\0')
            snprintf(what, sizeof what, "AUTH as user '%s'", link->uri.user);
        else
            snprintf(what, sizeof what, "AUTH");
        refused(conn, -EACCES, what, r);
    } else if (conn == link->cmd) {
        handshake_step(link);
    }
}

static void on_select(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_link *link = arg;
    char what[32];
    if (r == NULL)
        return;
    snprintf(what, sizeof what, "SELECT %u", link->uri.db);
    if (r->type == REDIS_REPLY_ERROR)
        refused(conn, -EIO, what, r);
    else
        handshake_step(link);
}

static void on_role(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_link *link = arg;
    char why[600], role[32];
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOPERM", 6) == 0) {
        if (!link->role_warned)
            cbd_log(CBD_LOG_WARN, "redis: cannot check that %s is the master: ROLE is not permitted (%s); grant the "
                    "user +role, until then a replica is noticed only when it refuses a write",
                    cbd_redis_conn_peer(conn), r->str);
        link->role_warned = true;
        handshake_step(link);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        refused(conn, -EIO, "ROLE", r);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(why, sizeof why, "protocol error from %s: ROLE answered something other than [role, ...]",
                 cbd_redis_conn_peer(conn));
        cbd_redis_conn_drop(conn, -EPROTO, why);
        return;
    }
    if (r->element[0]->len == 6 && memcmp(r->element[0]->str, "master", 6) == 0) {
        handshake_step(link);
        return;
    }
    cbd_redis_printable(role, sizeof role, r->element[0]->str, r->element[0]->len);
    snprintf(why, sizeof why, "%s is not the master (ROLE says '%s')%s", cbd_redis_conn_peer(conn), role,
             link->uri.sentinel ? ": the sentinels' answer is out of date; asking again"
                                : ": point the URI at the master, or use redis-sentinel://");
    cbd_redis_conn_drop(conn, -EIO, why);
}

static void on_subscribed(struct cbd_redis_conn *conn, redisReply *r, void *arg)
{
    struct cbd_redis_link *link = arg;
    char what[160];
    if (r == NULL)
        return;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(what, sizeof what, "SUBSCRIBE %.100s", link->channel);
        refused(conn, -EACCES, what, r);
    } else if (r->element[0]->str[0] == 's') { /* the confirmation; the connection checked its shape */
        link->sub_ready = true;
        maybe_online(link);
    } else {
        link->cbs.message(link->cbs.arg, r->element[2]->str, r->element[2]->len);
    }
}

/* AUTH first, if the URI has a password; false if the connection is being
 * dropped (the secret could not be read). */
static bool auth(struct cbd_redis_link *link, struct cbd_redis_conn *conn)
{
    char secret[CBD_REDIS_SECRET_MAX + 1], why[400];
    if (link->uri.password.from == CBD_REDIS_SECRET_NONE)
        return true;
    int rc = cbd_redis_secret_load(&link->uri.password, secret, sizeof secret, why, sizeof why);
    if (rc < 0) {
        cbd_redis_conn_drop(conn, -EACCES, why);
        return false;
    }
    bool acl = link->uri.user[0] != '\0'; /* Redis 6 ACL: AUTH user password */
    const char *argv[3] = {"AUTH", acl ? link->uri.user : secret, secret};
    rc = send_hs(link, conn, on_auth, acl ? 3 : 2, argv);
    explicit_bzero(secret, sizeof secret);
    link->handshake_left += rc == 0 && conn == link->cmd;
    return rc == 0;
}

static void on_up(void *arg, struct cbd_redis_conn *conn)
{
    struct cbd_redis_link *link = arg;
    char db[12];
    if (!auth(link, conn))
        return;
    if (conn == link->sub) {
        if (cbd_redis_conn_subscribe(conn, on_subscribed, link, link->channel) == 0)
            link->stats.commands_sent++;
        return;
    }
    if (link->uri.db != 0) {
        const char *select[2] = {"SELECT", db};
        snprintf(db, sizeof db, "%u", link->uri.db);
        link->handshake_left += send_hs(link, conn, on_select, 2, select) == 0;
    }
    const char *role[1] = {"ROLE"};
    link->handshake_left += send_hs(link, conn, on_role, 1, role) == 0;
}

/* ---- connecting ---------------------------------------------------------------------- */

static void open_data(struct cbd_redis_link *link)
{
    link->phase = L_CONNECTING;
    link->preparing = link->prepared = link->sub_ready = false;
    link->handshake_left = 0;
    describe_endpoint(link);
    /* both were down (we only get here then), so neither open can refuse */
    link->cmd_open = cbd_redis_conn_open(link->cmd, &link->master) == 0;
    link->sub_open = cbd_redis_conn_open(link->sub, &link->master) == 0;
}

static void connect_now(struct cbd_redis_link *link)
{
    if (link->sentinel == NULL) {
        open_data(link);
        return;
    }
    link->phase = L_DISCOVERING;
    cbd_redis_sentinel_ask(link->sentinel);
}

static void on_master_found(void *arg, const struct cbd_redis_addr *master)
{
    struct cbd_redis_link *link = arg;
    if (link->phase != L_DISCOVERING)
        return;
    link->master = *master;
    link->watching = true;
    open_data(link);
}

static void on_master_unknown(void *arg, int err, const char *why)
{
    struct cbd_redis_link *link = arg;
    if (link->phase == L_DISCOVERING)
        went_offline(link, err, why);
}

static void on_master_moved(void *arg, const struct cbd_redis_addr *master, const char *why)
{
    struct cbd_redis_link *link = arg;
    (void)master;
    link->stats.failovers++;
    cbd_log(CBD_LOG_INFO, "redis: %s; reconnecting", why);
    link->attempt = 0; /* the new master is ready: come back at once */
    if (link->phase == L_CONNECTING || link->phase == L_ONLINE) {
        went_offline(link, -ECONNRESET, why);
    } else if (link->phase == L_DOWN && uv_is_active((uv_handle_t *)&link->retry_timer)) {
        /* offline since the old master died: no need to wait out the backoff */
        uv_timer_start(&link->retry_timer, on_retry, cbd_redis_backoff_ms(0, rng_next(link)), 0);
    }
}

static void on_unwatched(void *arg, int err, const char *why)
{
    struct cbd_redis_link *link = arg;
    (void)err;
    link->watching = false;
    if (link->phase != L_ONLINE)
        return;
    cbd_log(CBD_LOG_INFO, "redis: lost the sentinel watching for failovers (%s); asking again", why);
    uv_timer_start(&link->watch_timer, on_watch_timer, cbd_redis_backoff_ms(link->watch_attempt++, rng_next(link)), 0);
}

/* ---- public ------------------------------------------------------------------------------ */

int cbd_redis_link_new(struct cbd_redis_link **out, uv_loop_t *loop, const struct cbd_redis_uri *uri,
                       const char *channel, const struct cbd_redis_link_cbs *cbs)
{
    struct cbd_redis_link *link = calloc(1, sizeof *link);
    struct cbd_redis_conn_cbs ccbs = {.arg = link, .up = on_up, .down = on_down};
    struct cbd_redis_sentinel_cbs scbs = {.arg = link, .found = on_master_found, .failed = on_master_unknown,
                                          .moved = on_master_moved, .unwatched = on_unwatched};
    if (link == NULL)
        return -ENOMEM;
    link->loop = loop;
    link->uri = *uri;
    link->cbs = *cbs;
    link->master = uri->server;
    link->channel = strdup(channel);
    if (link->channel == NULL ||
        cbd_redis_conn_new(&link->cmd, loop, &ccbs, uri->connect_timeout_ms, uri->command_timeout_ms) < 0 ||
        cbd_redis_conn_new(&link->sub, loop, &ccbs, uri->connect_timeout_ms, uri->command_timeout_ms) < 0 ||
        (uri->sentinel && cbd_redis_sentinel_new(&link->sentinel, loop, &link->uri, &scbs) < 0)) {
        /* handles are closed on the loop; the little memory they hold goes with it */
        if (link->cmd != NULL)
            cbd_redis_conn_close(link->cmd, NULL, NULL);
        if (link->sub != NULL)
            cbd_redis_conn_close(link->sub, NULL, NULL);
        free(link->channel);
        free(link);
        return -ENOMEM;
    }
    if (uri->sentinel)
        memset(&link->master, 0, sizeof link->master);
    cbd_redis_conn_set_data(link->cmd, cbs->arg);
    cbd_redis_conn_set_data(link->sub, cbs->arg);
    uv_timer_init(loop, &link->retry_timer);
    uv_timer_init(loop, &link->watch_timer);
    link->retry_timer.data = link->watch_timer.data = link;
    link->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)link;
    link->rng = link->rng != 0 ? link->rng : 1;
    describe_endpoint(link);
    *out = link;
    return 0;
}

void cbd_redis_link_start(struct cbd_redis_link *link)
{
    if (link->phase == L_IDLE && !link->closing)
        connect_now(link);
}

void cbd_redis_link_retry_now(struct cbd_redis_link *link)
{
    if (link->phase != L_DOWN || link->cmd_open || link->sub_open || link->closing)
        return;
    uv_timer_stop(&link->retry_timer); /* no need to wait out the backoff */
    connect_now(link);
}

bool cbd_redis_link_is_online(const struct cbd_redis_link *link) { return link->phase == L_ONLINE; }

int cbd_redis_link_command(struct cbd_redis_link *link, cbd_redis_reply_fn *fn, void *privdata, int argc,
                           const char **argv, const size_t *argvlen)
{
    if (link->phase != L_ONLINE && !(link->phase == L_CONNECTING && link->preparing))
        return -ENOTCONN;
    int rc = cbd_redis_conn_command(link->cmd, fn, privdata, argc, argv, argvlen);
    if (rc == 0)
        link->stats.commands_sent++;
    return rc;
}

void cbd_redis_link_drop(struct cbd_redis_link *link, int err, const char *why)
{
    cbd_redis_conn_drop(link->cmd, err, why);
}

const char *cbd_redis_link_endpoint(const struct cbd_redis_link *link) { return link->endpoint; }

void cbd_redis_link_stats(const struct cbd_redis_link *link, struct cbd_redis_link_stats *out)
{
    *out = link->stats;
    if (link->sentinel != NULL) {
        struct cbd_redis_sentinel_stats s;
        cbd_redis_sentinel_stats(link->sentinel, &s);
        out->commands_sent += s.commands_sent;
        out->protocol_errors += s.protocol_errors;
    }
}

static void on_part_closed(void *arg)
{
    struct cbd_redis_link *link = arg;
    if (--link->close_pending > 0)
        return;
    void (*done)(void *) = link->close_done;
    void *done_arg = link->close_arg;
    free(link->channel);
    free(link);
    if (done != NULL)
        done(done_arg);
}

static void on_timer_closed(uv_handle_t *h) { on_part_closed(h->data); }

void cbd_redis_link_close(struct cbd_redis_link *link, void (*done)(void *arg), void *arg)
{
    link->closing = true;
    link->close_done = done;
    link->close_arg = arg;
    link->close_pending = 4 + (link->sentinel != NULL);
    cbd_redis_conn_close(link->cmd, on_part_closed, link);
    cbd_redis_conn_close(link->sub, on_part_closed, link);
    if (link->sentinel != NULL)
        cbd_redis_sentinel_close(link->sentinel, on_part_closed, link);
    uv_close((uv_handle_t *)&link->retry_timer, on_timer_closed);
    uv_close((uv_handle_t *)&link->watch_timer, on_timer_closed);
}
