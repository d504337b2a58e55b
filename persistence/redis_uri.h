/*
 * redis_uri.h - where a redis transport connects, and as whom, from its URI;
 * and the secrets that URI points to.
 *
 *   redis://[user@]host[:port][/db][?option=value&...]
 *   unix:///path/to/redis.sock[?option=value&...]
 *   redis-sentinel://[user@]host[:port][,host[:port]...]/master[/db][?option=value&...]
 *
 * A redis-sentinel URI lists the sentinels (port 26379 by default; up to
 * CBD_REDIS_SENTINELS_MAX) and names the master they watch; `user@` is the
 * user on the master, as with redis://. Connection options, for every form:
 *
 *   db=N                       0..65535 (also the /db path)
 *   user=NAME                  ACL user on the server (Redis 6+)
 *   password_file=/PATH        the password is the file's content (one
 *   password_env=NAME          line) or the environment variable's value
 *   connect_timeout_ms=N       10..600000, default 1000
 *   command_timeout_ms=N       10..600000, default 1000
 *   sentinel_user=NAME         redis-sentinel:// only: how to authenticate
 *   sentinel_password_file=/P  to the sentinels, when they require it
 *   sentinel_password_env=NAME
 *
 * A password is never taken from the URI itself (user:password@ or
 * ?password=): a URI shows up in process lists, unit files, configuration
 * dumps and log lines. The parser refuses it and says what to use instead.
 * Secrets are read when a connection is made, not when the URI is parsed:
 * parsing does no I/O (cbd --check-config and the daemon agree), and a
 * rotated password file is picked up by the next connection.
 *
 * Options the connection layer does not know go to the owner's callback
 * (the store's prefix, sync_ms, ...), so one URI carries both.
 */
#ifndef CBD_REDIS_URI_H
#define CBD_REDIS_URI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis_conn.h"

#define CBD_REDIS_SENTINELS_MAX 8
#define CBD_REDIS_SECRET_MAX 512 /* bytes of a password */
#define CBD_REDIS_MASTER_MAX 64  /* bytes of a sentinel master name */

enum cbd_redis_secret_from { CBD_REDIS_SECRET_NONE, CBD_REDIS_SECRET_FILE, CBD_REDIS_SECRET_ENV };

/* Where a password is, not the password. */
struct cbd_redis_secret_ref {
    enum cbd_redis_secret_from from;
    char where[256]; /* the file's path or the variable's name */
};

struct cbd_redis_uri {
    bool sentinel;                 /* redis-sentinel:// */
    struct cbd_redis_addr server;  /* redis:// and unix:// */
    struct cbd_redis_addr sentinels[CBD_REDIS_SENTINELS_MAX];
    unsigned nsentinels;
    char master[CBD_REDIS_MASTER_MAX + 1];
    uint32_t db;
    char user[128];
    struct cbd_redis_secret_ref password;
    char sentinel_user[128];
    struct cbd_redis_secret_ref sentinel_password;
    uint32_t connect_timeout_ms, command_timeout_ms;
};

/* The owner's options: NULL when name=value was taken, else a message
 * (static storage) saying what is wrong with the value, or
 * cbd_redis_uri_unknown when name is not the owner's either. */
typedef const char *cbd_redis_uri_option_fn(void *arg, const char *name, const char *value);
extern const char cbd_redis_uri_unknown[];

/*
 * Parse uri into *out. Options not known here go to option(arg, ...)
 * (option may be NULL); owner_options lists the owner's option names for
 * the "unknown option" message (may be NULL). No I/O. 0, or -EINVAL with
 * why (size bytes, always NUL terminated) naming the fault for an
 * operator, e.g. "redis URI: port must be a number 1..65535". why never
 * quotes a secret.
 */
int cbd_redis_uri_parse(const char *uri, struct cbd_redis_uri *out, cbd_redis_uri_option_fn *option, void *arg,
                        const char *owner_options, char *why, size_t size);

/* A decimal number of len bytes at s (no sign, at most 10 digits) within
 * [min, max] into *out; false if it is not one. For owners' options too. */
bool cbd_redis_parse_u32(const char *s, size_t len, uint32_t min, uint32_t max, uint32_t *out);

/* true if uri starts with a scheme this parser takes. */
bool cbd_redis_uri_scheme(const char *uri);

/*
 * Read the secret ref points to, now: 0 with the secret in buf (NUL
 * terminated; wipe it with explicit_bzero when done), -ENOENT when ref is
 * NONE, or -errno with why naming the file or variable and the problem.
 * A file holds the password on one line (a final newline is dropped); an
 * empty secret, NUL bytes or more lines are refused.
 */
int cbd_redis_secret_load(const struct cbd_redis_secret_ref *ref, char *buf, size_t size, char *why, size_t whysize);

#endif /* CBD_REDIS_URI_H */
