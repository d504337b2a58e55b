/*
 * redis_uri.c - redis, unix and redis-sentinel URIs, and the secrets they
 * point to (see redis_uri.h for the forms and options).
 *
 * Parsing is strict and says what is wrong: every number has bounds, every
 * %-escape must be complete, every option must be known (to this layer or
 * to the owner's callback), and a password in the URI is refused with the
 * reason and the two ways to give one. Messages never quote the userinfo
 * or an option value that could be a secret.
 *
 * Secrets are read at connect time (cbd_redis_secret_load) from a file or
 * an environment variable. A file holds one line; the final newline an
 * editor or `echo` adds is dropped. The reading is a small open/read/close
 * on the loop thread: a local file, once per connection attempt.
 */
#define _GNU_SOURCE
#include "redis_uri.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pct_decode.h"

const char cbd_redis_uri_unknown[] = "unknown option";

#define REDIS_PORT 6379
#define SENTINEL_PORT 26379

#define PASSWORD_REFUSED                                                                                      \
    "a password in the URI is refused (a URI shows up in process lists, unit files and logs): put it in a "    \
    "file only cbd can read and give ?password_file=/path, or in an environment variable and give "           \
    "?password_env=NAME"

struct parse {
    struct cbd_redis_uri *u;
    const char *label; /* "redis URI", "unix URI", "redis-sentinel URI" */
    char *why;
    size_t size;
    cbd_redis_uri_option_fn *option;
    void *arg;
    const char *owner_options;
};

__attribute__((format(printf, 2, 3))) static int bad(struct parse *p, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(p->why, p->size, "%s: %s", p->label, what);
    return -EINVAL;
}

bool cbd_redis_parse_u32(const char *s, size_t len, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 10)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v < min || v > max)
        return false;
    *out = (uint32_t)v;
    return true;
}

static bool is_env_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return false;
    return true;
}

static bool is_user(const char *s)
{
    for (; *s != '\0'; s++)
        if (*s <= ' ' || *s > '~')
            return false;
    return true;
}

/* A secret reference option (name is for messages). */
static int secret_option(struct parse *p, const char *name, struct cbd_redis_secret_ref *ref,
                         enum cbd_redis_secret_from from, const char *val)
{
    if (ref->from != CBD_REDIS_SECRET_NONE && ref->from != from)
        return bad(p, "give %s_file or %s_env, not both", name, name);
    if (from == CBD_REDIS_SECRET_FILE && (val[0] != '/' || strlen(val) >= sizeof ref->where))
        return bad(p, "%s_file must be an absolute path of at most 255 bytes", name);
    if (from == CBD_REDIS_SECRET_ENV && !is_env_name(val))
        return bad(p, "%s_env must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 64)", name);
    ref->from = from;
    snprintf(ref->where, sizeof ref->where, "%s", val);
    return 0;
}

static bool name_is(const char *k, size_t klen, const char *name)
{
    return strlen(name) == klen && memcmp(k, name, klen) == 0;
}

static int user_option(struct parse *p, char *dst, size_t size, const char *name, const char *val)
{
    if (val[0] == '\0' || strlen(val) >= size || !is_user(val))
        return bad(p, "%s must be 1..127 printable characters without spaces", name);
    memcpy(dst, val, strlen(val) + 1);
    return 0;
}

static int timeout_option(struct parse *p, const char *name, const char *val, uint32_t *out)
{
    if (!cbd_redis_parse_u32(val, strlen(val), 10, 600000, out))
        return bad(p, "%s must be a number 10..600000", name);
    return 0;
}

/* One name=value of the query. */
static int parse_option(struct parse *p, const char *k, size_t klen, const char *v, size_t vlen)
{
    struct cbd_redis_uri *u = p->u;
    char name[40], val[300];
    snprintf(name, sizeof name, "%.*s", (int)(klen < 32 ? klen : 32), k);
    if (name_is(k, klen, "password") || name_is(k, klen, "sentinel_password"))
        return bad(p, "%s", PASSWORD_REFUSED);
    if (!cbd_pct_decode(v, vlen, val, sizeof val))
        return bad(p, "the value of option '%s' has a bad %%-escape or is too long", name);
    bool for_sentinel = strncmp(name, "sentinel_", 9) == 0;
    if (for_sentinel && !u->sentinel)
        return bad(p, "%s is for redis-sentinel:// URIs only", name);
    if (name_is(k, klen, "db")) {
        if (!cbd_redis_parse_u32(val, strlen(val), 0, 65535, &u->db))
            return bad(p, "db must be a number 0..65535");
        return 0;
    }
    if (name_is(k, klen, "user"))
        return user_option(p, u->user, sizeof u->user, name, val);
    if (name_is(k, klen, "sentinel_user"))
        return user_option(p, u->sentinel_user, sizeof u->sentinel_user, name, val);
    if (name_is(k, klen, "password_file") || name_is(k, klen, "password_env"))
        return secret_option(p, "password", &u->password, k[9] == 'f' ? CBD_REDIS_SECRET_FILE : CBD_REDIS_SECRET_ENV,
                             val);
    if (name_is(k, klen, "sentinel_password_file") || name_is(k, klen, "sentinel_password_env"))
        return secret_option(p, "sentinel_password", &u->sentinel_password,
                             k[18] == 'f' ? CBD_REDIS_SECRET_FILE : CBD_REDIS_SECRET_ENV, val);
    if (name_is(k, klen, "connect_timeout_ms"))
        return timeout_option(p, name, val, &u->connect_timeout_ms);
    if (name_is(k, klen, "command_timeout_ms"))
        return timeout_option(p, name, val, &u->command_timeout_ms);
    char key[40];
    snprintf(key, sizeof key, "%.*s", (int)(klen < sizeof key ? klen : sizeof key - 1), k);
    const char *e = p->option != NULL && klen < sizeof key ? p->option(p->arg, key, val) : cbd_redis_uri_unknown;
    if (e == cbd_redis_uri_unknown)
        return bad(p,
                   "unknown option '%s' (known: db, user, password_file, password_env, connect_timeout_ms, "
                   "command_timeout_ms%s%s%s)",
                   name, u->sentinel ? ", sentinel_user, sentinel_password_file, sentinel_password_env" : "",
                   p->owner_options != NULL ? ", " : "", p->owner_options != NULL ? p->owner_options : "");
    return e != NULL ? bad(p, "%s", e) : 0;
}

static int parse_query(struct parse *p, const char *q)
{
    while (*q != '\0') {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        if (len > 0) {
            if (eq == NULL)
                return bad(p, "option without '=value' (expected ?name=value&...)");
            int rc = parse_option(p, q, (size_t)(eq - q), eq + 1, len - (size_t)(eq - q) - 1);
            if (rc < 0)
                return rc;
        }
        q += len + (q[len] == '&');
    }
    return 0;
}

/* user@ before the host(s): a user only; user:password@ is refused. */
static int parse_userinfo(struct parse *p, const char *s, size_t len)
{
    char user[sizeof p->u->user];
    if (memchr(s, ':', len) != NULL)
        return bad(p, "%s", PASSWORD_REFUSED);
    if (!cbd_pct_decode(s, len, user, sizeof user))
        return bad(p, "the user has a bad %%-escape or is too long");
    return user_option(p, p->u->user, sizeof p->u->user, "the user", user);
}

/* host[:port] or [v6][:port] in s[0..len) into a. */
static int parse_hostport(struct parse *p, const char *s, size_t len, uint16_t default_port,
                          struct cbd_redis_addr *a)
{
    const char *host = s, *port = NULL;
    size_t hlen = len;
    if (len > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', len);
        if (rb == NULL)
            return bad(p, "unterminated [IPv6] host");
        host = s + 1;
        hlen = (size_t)(rb - s) - 1;
        if (rb + 1 < s + len && rb[1] != ':')
            return bad(p, "unexpected text after ]");
        port = rb + 1 < s + len ? rb + 2 : NULL;
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon != NULL) {
            hlen = (size_t)(colon - s);
            port = colon + 1;
        }
    }
    if (hlen == 0)
        return bad(p, "missing host");
    if (hlen >= sizeof a->host)
        return bad(p, "host name too long");
    for (size_t i = 0; i < hlen; i++)
        if (host[i] <= ' ' || host[i] > '~' || strchr("/?#@,%", host[i]) != NULL)
            return bad(p, "the host has a character that is not allowed in a host name");
    memcpy(a->host, host, hlen);
    a->host[hlen] = '\0';
    uint32_t n = default_port;
    if (port != NULL && !cbd_redis_parse_u32(port, (size_t)(s + len - port), 1, 65535, &n))
        return bad(p, "port must be a number 1..65535");
    a->port = (uint16_t)n;
    return 0;
}

/* The [user@] that may start the authority in *s (len bytes): parsed,
 * and *s, *len moved past it. */
static int strip_user(struct parse *p, const char **s, size_t *len)
{
    const char *at = NULL;
    for (size_t i = 0; i < *len; i++)
        if ((*s)[i] == '@')
            at = *s + i; /* the last '@' */
    if (at == NULL)
        return 0;
    int rc = parse_userinfo(p, *s, (size_t)(at - *s));
    *len -= (size_t)(at + 1 - *s);
    *s = at + 1;
    return rc;
}

static int parse_db_path(struct parse *p, const char *s, size_t len)
{
    if (len > 0 && !cbd_redis_parse_u32(s, len, 0, 65535, &p->u->db))
        return bad(p, "the path must be a database number 0..65535 (redis://HOST:PORT/DB)");
    return 0;
}

static int parse_redis(struct parse *p, const char *s, size_t len)
{
    int rc = strip_user(p, &s, &len);
    if (rc < 0)
        return rc;
    const char *slash = memchr(s, '/', len);
    size_t hp = slash != NULL ? (size_t)(slash - s) : len;
    if (hp == 0)
        return bad(p, "missing host (redis://HOST:PORT)");
    if ((rc = parse_hostport(p, s, hp, REDIS_PORT, &p->u->server)) < 0)
        return rc;
    return slash != NULL ? parse_db_path(p, slash + 1, len - hp - 1) : 0;
}

static bool is_master_name(const char *s, size_t len)
{
    if (len == 0 || len > CBD_REDIS_MASTER_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!(s[i] == '.' || s[i] == '_' || s[i] == '-' || s[i] == ':' || (s[i] >= '0' && s[i] <= '9') ||
              (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z')))
            return false;
    return true;
}

/* [user@]h1[:p1][,h2[:p2]...]/master[/db] */
static int parse_sentinel(struct parse *p, const char *s, size_t len)
{
    struct cbd_redis_uri *u = p->u;
    int rc = strip_user(p, &s, &len);
    if (rc < 0)
        return rc;
    const char *slash = memchr(s, '/', len);
    size_t hosts = slash != NULL ? (size_t)(slash - s) : len;
    for (size_t at = 0; at < hosts || at == 0;) {
        size_t n = strcspn(s + at, ",/");
        if (n > hosts - at)
            n = hosts - at;
        if (u->nsentinels == CBD_REDIS_SENTINELS_MAX)
            return bad(p, "more than %d sentinels", CBD_REDIS_SENTINELS_MAX);
        if (n == 0)
            return bad(p, "missing sentinel host (redis-sentinel://HOST:26379,HOST:26379/MASTER)");
        if ((rc = parse_hostport(p, s + at, n, SENTINEL_PORT, &u->sentinels[u->nsentinels++])) < 0)
            return rc;
        at += n + 1;
    }
    if (hosts > 0 && s[hosts - 1] == ',')
        return bad(p, "missing sentinel host after ','");
    const char *name = slash != NULL ? slash + 1 : s + len;
    size_t rest = (size_t)(s + len - name);
    const char *db = memchr(name, '/', rest);
    size_t nlen = db != NULL ? (size_t)(db - name) : rest;
    if (nlen == 0)
        return bad(p, "missing master name (redis-sentinel://HOST:26379,HOST:26379/MASTER)");
    if (!is_master_name(name, nlen))
        return bad(p, "the master name must be 1..%d characters of [A-Za-z0-9._:-]", CBD_REDIS_MASTER_MAX);
    memcpy(u->master, name, nlen);
    u->master[nlen] = '\0';
    return db != NULL ? parse_db_path(p, db + 1, rest - nlen - 1) : 0;
}

static int parse_unix(struct parse *p, const char *s, size_t len)
{
    if (len == 0 || s[0] != '/')
        return bad(p, "the socket path must be absolute (unix:///path/to/redis.sock)");
    if (len >= sizeof p->u->server.path)
        return bad(p, "the socket path is too long (at most 107 bytes)");
    memcpy(p->u->server.path, s, len);
    p->u->server.path[len] = '\0';
    return 0;
}

static const struct scheme {
    const char *prefix, *label;
    int (*parse)(struct parse *p, const char *s, size_t len);
    bool sentinel;
} schemes[] = {
    {"redis://", "redis URI", parse_redis, false},
    {"unix://", "unix URI", parse_unix, false},
    {"redis-sentinel://", "redis-sentinel URI", parse_sentinel, true},
};

static const struct scheme *scheme_of(const char *uri)
{
    for (size_t i = 0; uri != NULL && i < sizeof schemes / sizeof schemes[0]; i++)
        if (strncasecmp(uri, schemes[i].prefix, strlen(schemes[i].prefix)) == 0)
            return &schemes[i];
    return NULL;
}

bool cbd_redis_uri_scheme(const char *uri) { return scheme_of(uri) != NULL; }

int cbd_redis_uri_parse(const char *uri, struct cbd_redis_uri *out, cbd_redis_uri_option_fn *option, void *arg,
                        const char *owner_options, char *why, size_t size)
{
    const struct scheme *sc = scheme_of(uri);
    struct parse p = {.u = out, .label = "redis URI", .why = why, .size = size, .option = option, .arg = arg,
                      .owner_options = owner_options};
    *out = (struct cbd_redis_uri){.connect_timeout_ms = 1000, .command_timeout_ms = 1000};
    if (size > 0)
        why[0] = '\0';
    if (sc == NULL)
        return bad(&p, "the URI must start with redis://, redis-sentinel:// or unix://");
    p.label = sc->label;
    out->sentinel = sc->sentinel;
    const char *s = uri + strlen(sc->prefix), *q = strchr(s, '?');
    size_t len = q != NULL ? (size_t)(q - s) : strlen(s);
    if (memchr(s, '#', len) != NULL)
        return bad(&p, "a fragment (#...) is not allowed");
    int rc = sc->parse(&p, s, len);
    if (rc == 0 && q != NULL)
        rc = parse_query(&p, q + 1);
    if (rc == 0 && out->user[0] != '\0' && out->password.from == CBD_REDIS_SECRET_NONE)
        return bad(&p, "user '%s' needs password_file= or password_env= (ACL users authenticate with a password)",
                   out->user);
    if (rc == 0 && out->sentinel_user[0] != '\0' && out->sentinel_password.from == CBD_REDIS_SECRET_NONE)
        return bad(&p, "sentinel_user needs sentinel_password_file= or sentinel_password_env=");
    return rc;
}

/* ---- secrets ------------------------------------------------------------------ */

__attribute__((format(printf, 4, 5))) static int secret_error(int err, char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return err;
}

static int read_secret_file(const char *path, char *buf, size_t size, char *why, size_t whysize)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return secret_error(-errno, why, whysize, "cannot read the password file %s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size >= (off_t)size) {
        close(fd);
        return secret_error(-EINVAL, why, whysize, "the password file %s is not a regular file of at most %zu bytes",
                            path, size - 1);
    }
    ssize_t n = read(fd, buf, (size_t)st.st_size);
    int err = errno;
    close(fd);
    if (n < 0)
        return secret_error(-err, why, whysize, "cannot read the password file %s: %s", path, strerror(err));
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '\r')
        buf[--n] = '\0';
    if ((size_t)n != strlen(buf) || strpbrk(buf, "\r\n") != NULL) {
        explicit_bzero(buf, size);
        return secret_error(-EINVAL, why, whysize, "the password file %s holds more than one line (or a NUL byte)", path);
    }
    return 0;
}

int cbd_redis_secret_load(const struct cbd_redis_secret_ref *ref, char *buf, size_t size, char *why, size_t whysize)
{
    int rc;
    buf[0] = '\0';
    switch (ref->from) {
    case CBD_REDIS_SECRET_NONE:
        return -ENOENT;
    case CBD_REDIS_SECRET_FILE:
        if ((rc = read_secret_file(ref->where, buf, size, why, whysize)) < 0)
            return rc;
        break;
    case CBD_REDIS_SECRET_ENV: {
        const char *v = getenv(ref->where);
        if (v == NULL)
            return secret_error(-ENOENT, why, whysize, "environment variable %s (the password) is not set",
                                ref->where);
        if (strlen(v) >= size)
            return secret_error(-EFBIG, why, whysize, "environment variable %s holds more than %zu bytes",
                                ref->where, size - 1);
        memcpy(buf, v, strlen(v) + 1);
        break;
    }
    }
    if (buf[0] == '\0')
        return secret_error(-EINVAL, why, whysize, "the password in %s %s is empty",
                            ref->from == CBD_REDIS_SECRET_FILE ? "file" : "environment variable", ref->where);
    return 0;
}
