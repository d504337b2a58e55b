/*
 * store.c - which backend serves a store URI.
 *
 * One table maps a URI prefix to a backend's ops. A backend plugs in with
 * one line; a scheme that cbd knows but that this build does not carry yet
 * stays in the table with NULL ops, so the operator reads "not available in
 * this cbd" rather than "unknown store" for a correctly spelt URI. Schemes
 * compare case-insensitively (RFC 3986); what follows the prefix is the
 * backend's to parse, in its create() and, without side effects, in its
 * check_uri(), which cbd_store_uri_error() asks: so the configuration check
 * (cbd --check-config, the start, a reload) refuses every URI the store
 * would refuse, with the store's own reason. A backend without check_uri
 * is checked for its scheme only. Messages quote a URI that may carry a
 * password (user:password@host) only up to its scheme: they end up in logs.
 */
#include "store.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const struct backend {
    const char *prefix; /* how the backend's URIs start */
    const char *usage;  /* the form an operator writes, for error messages */
    const char *name;   /* the backend, for error messages */
    const struct cbd_store_ops *ops; /* NULL: known scheme, not in this build */
} backends[] = {
    {"local:", "local:PATH", "local", &cbd_store_local_ops},
    {"redis://", "redis://HOST:PORT", "redis", &cbd_store_redis_ops},
    {"unix://", "unix:///PATH/redis.sock", "redis", &cbd_store_redis_ops},
    {"redis-sentinel://", "redis-sentinel://HOST:26379/MASTER", "redis", &cbd_store_redis_ops},
    {"dynamodb://", "dynamodb://TABLE", "dynamodb", &cbd_store_dynamodb_ops},
};
#define BACKENDS (sizeof backends / sizeof backends[0])

static const struct backend *backend_of(const char *uri)
{
    for (size_t i = 0; uri != NULL && i < BACKENDS; i++) {
        if (strncasecmp(uri, backends[i].prefix, strlen(backends[i].prefix)) == 0)
            return &backends[i];
    }
    return NULL;
}

const struct cbd_store_ops *cbd_store_find(const char *uri)
{
    const struct backend *b = backend_of(uri);
    return b ? b->ops : NULL;
}

/* "local:PATH, redis://HOST:PORT": the forms this build accepts. */
static void expected_forms(char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < BACKENDS && used < size; i++) {
        if (backends[i].ops == NULL)
            continue;
        int n = snprintf(buf + used, size - used, "%s%s", used ? ", " : "", backends[i].usage);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/* How many bytes of uri a message may quote; "..." follows when cut. */
static int quotable(const char *uri, const char **ellipsis)
{
    const char *rest = strstr(uri, "://");
    size_t len = strlen(uri);
    size_t cut = strchr(uri, '@') == NULL ? len : rest ? (size_t)(rest - uri) + 3 : strcspn(uri, ":") + 1;
    cut = cut > 200 ? 200 : cut;
    *ellipsis = cut < len ? "..." : "";
    return (int)cut;
}

const char *cbd_store_uri_error(const char *uri, char *buf, size_t size)
{
    const struct backend *b = backend_of(uri);
    const char *more;
    char forms[256], why[512];

    if (b != NULL && b->ops != NULL) {
        if (b->ops->check_uri == NULL || b->ops->check_uri(uri, why, sizeof why) == 0)
            return NULL;
        int n = quotable(uri, &more);
        snprintf(buf, size, "store '%.*s%s': %s", n, uri, more, why);
        return buf;
    }
    expected_forms(forms, sizeof forms);
    if (uri == NULL || uri[0] == '\0') {
        snprintf(buf, size, "no store given (expected %s)", forms);
        return buf;
    }
    int n = quotable(uri, &more);
    if (b != NULL)
        snprintf(buf, size, "store '%.*s%s' is not available: this cbd has no %s backend (expected %s)", n, uri,
                 more, b->name, forms);
    else
        snprintf(buf, size, "unknown store '%.*s%s' (expected %s)", n, uri, more, forms);
    return buf;
}
