/*
 * dynamodb_uri.c - a dynamodb:// URI into struct cbd_ddb_opts: one table of
 * options (name, type, range), percent-decoding, and the checks an
 * operator needs named before any request goes out (table name, key
 * attributes, https unless the endpoint is loopback or allow_http says so).
 */
#include "dynamodb_uri.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aws_credentials.h"
#include "aws_http.h"
#include "pct_decode.h"
#include "segment.h" /* cb__parse_bool */

enum opt_type { OPT_STR, OPT_U32, OPT_BOOL };
static const struct opt {
    const char *name;
    enum opt_type type;
    size_t off, size;
    uint32_t min, max;
} opts_table[] = {
#define S(n, f) {n, OPT_STR, offsetof(struct cbd_ddb_opts, f), sizeof(((struct cbd_ddb_opts *)0)->f), 0, 0}
#define U(n, f, lo, hi) {n, OPT_U32, offsetof(struct cbd_ddb_opts, f), 0, lo, hi}
#define B(n, f) {n, OPT_BOOL, offsetof(struct cbd_ddb_opts, f), 0, 0, 0}
    S("region", region), S("endpoint", endpoint), S("pk", pk), S("sk", sk), S("static_pk", static_pk),
    S("attr_state", a_state), S("attr_failure_count", a_fc), S("attr_opened_at", a_oa),
    S("attr_owner", a_owner), S("attr_lease", a_lease), S("attr_expiration", a_exp),
    S("attr_open_until", a_until), S("attr_open_until_of", a_until_of), S("owner", owner),
    U("sync_ms", sync_ms, 0, 86400000), U("read_budget", read_budget, 0, 1000000000), U("timeout_ms", timeout_ms, 100, 60000),
    U("connect_timeout_ms", connect_timeout_ms, 100, 60000), U("attempts", attempts, 1, 10),
    U("backoff_max_ms", backoff_max_ms, 10, 300000), B("consistent", consistent),
    B("tls_verify", tls_verify), B("allow_http", allow_http),
#undef S
#undef U
#undef B
};

static char uri_err[512]; /* the message cbd_ddb_uri_parse returns: one thread only */

static const char *fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(uri_err, sizeof uri_err, fmt, ap);
    va_end(ap);
    return uri_err;
}

static void opts_defaults(struct cbd_ddb_opts *o)
{
    const char *fn = getenv("AWS_LAMBDA_FUNCTION_NAME");
    memset(o, 0, sizeof *o);
    strcpy(o->pk, "id");
    /* Powertools' own default: composite keys shared with a function by default */
    snprintf(o->static_pk, sizeof o->static_pk, "circuit_breaker#%.200s", fn != NULL ? fn : "");
    strcpy(o->a_state, "state");
    strcpy(o->a_fc, "failure_count");
    strcpy(o->a_oa, "opened_at");
    strcpy(o->a_owner, "half_open_owner");
    strcpy(o->a_lease, "probe_lease_expiry");
    strcpy(o->a_exp, "expiration");
    strcpy(o->a_until, "cbd_open_until"); /* cbd's own: Powertools ignores them */
    strcpy(o->a_until_of, "cbd_open_until_of");
    o->sync_ms = 1000;
    o->timeout_ms = 2000;
    o->connect_timeout_ms = 1000;
    o->attempts = 3;
    o->backoff_max_ms = 5000;
    o->tls_verify = true;
}

static const char *opt_set(struct cbd_ddb_opts *o, const char *k, const char *ke, const char *v, const char *ve)
{
    char key[40], val[512];
    if (!cbd_pct_decode(k, (size_t)(ke - k), key, sizeof key) || !cbd_pct_decode(v, (size_t)(ve - v), val, sizeof val))
        return fail("dynamodb URI: bad percent-encoding or over-long value near '%.40s'", k);
    for (size_t i = 0; i < sizeof opts_table / sizeof opts_table[0]; i++) {
        const struct opt *t = &opts_table[i];
        if (strcmp(key, t->name) != 0)
            continue;
        char *field = (char *)o + t->off, *end;
        if (t->type == OPT_STR) {
            if (strlen(val) >= t->size)
                return fail("dynamodb URI: value of '%s' is too long", t->name);
            strcpy(field, val);
        } else if (t->type == OPT_BOOL) {
            int b = cb__parse_bool(val);
            if (b < 0)
                return fail("dynamodb URI: '%s' must be true or false", t->name);
            *(bool *)field = b;
        } else {
            errno = 0;
            unsigned long n = strtoul(val, &end, 10);
            if (errno || end == val || *end || val[0] == '-' || n < t->min || n > t->max)
                return fail("dynamodb URI: '%s' is not a number in its range (see docs/store-dynamodb.md)",
                            t->name);
            *(uint32_t *)field = (uint32_t)n;
        }
        return NULL;
    }
    return fail("dynamodb URI: unknown option '%s' (see docs/store-dynamodb.md)", key);
}

static bool loopback_url(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL;
    bool ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
              curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
              cbd_aws_loopback_host(host);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

#define TABLE_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"

static bool table_name_ok(const char *t)
{
    size_t n = strlen(t);
    return n >= 3 && n <= 255 &&
           strspn(t, TABLE_CHARS) == n;
}

/* Region and endpoint: the URI, else the SDK's environment and files. */
static const char *opts_resolve(struct cbd_ddb_opts *o)
{
    if (!o->region[0] && cbd_aws_default_region(o->region, sizeof o->region) < 0) {
        if (!o->endpoint[0] && !getenv("AWS_ENDPOINT_URL_DYNAMODB") && !getenv("AWS_ENDPOINT_URL"))
            return fail("dynamodb URI: no region: add ?region=... or set AWS_REGION");
        strcpy(o->region, "us-east-1"); /* a local endpoint ignores it, SigV4 needs one */
    }
    if (!o->endpoint[0] && cbd_aws_endpoint("DYNAMODB", "dynamodb", o->region, o->endpoint, sizeof o->endpoint) < 0)
        return fail("dynamodb endpoint from AWS_ENDPOINT_URL is too long");
    if (strncmp(o->endpoint, "https://", 8) != 0 && strncmp(o->endpoint, "http://", 7) != 0)
        return fail("dynamodb endpoint '%.300s' must start with https:// (or http:// for a local endpoint)",
                    o->endpoint);
    if (strncmp(o->endpoint, "http://", 7) == 0 && !o->allow_http && !loopback_url(o->endpoint))
        return fail("dynamodb endpoint '%.300s': plain http is only for loopback; add allow_http=true to mean it",
                    o->endpoint);
    return NULL;
}

const char *cbd_ddb_uri_parse(struct cbd_ddb_opts *o, const char *uri)
{
    static const char scheme[] = "dynamodb://";
    opts_defaults(o);
    if (strncasecmp(uri, scheme, sizeof scheme - 1) != 0) /* as persistence/store.c routes it */
        return fail("not a dynamodb URI: '%.200s' (expected dynamodb://TABLE?region=...)", uri);
    const char *t = uri + sizeof scheme - 1, *q = strchr(t, '?');
    const char *te = q ? q : t + strlen(t);
    if (!cbd_pct_decode(t, (size_t)(te - t), o->table, sizeof o->table))
        return fail("dynamodb URI: the table name has bad percent-encoding or is longer than 255 bytes");
    if (!table_name_ok(o->table)) {
        size_t ok = strspn(o->table, TABLE_CHARS);
        if (o->table[ok] != '\0') /* never quoted: the byte may be a newline or worse */
            return fail("dynamodb URI: the table name has byte 0x%02x at position %zu; a table name is 3-255 of "
                        "[A-Za-z0-9_.-]", (unsigned char)o->table[ok], ok + 1);
        return fail("dynamodb URI: table name '%s' must be 3-255 of [A-Za-z0-9_.-]", o->table);
    }
    for (const char *p = q ? q + 1 : te; *p;) {
        const char *amp = strchr(p, '&'), *end = amp ? amp : p + strlen(p), *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq)
            return fail("dynamodb URI: option '%.40s' has no '=value'", p);
        const char *msg = opt_set(o, p, eq, eq + 1, end);
        if (msg)
            return msg;
        p = amp ? amp + 1 : end;
    }
    const char *names[] = {o->pk, o->a_state, o->a_fc, o->a_oa, o->a_owner, o->a_lease, o->a_exp, o->a_until,
                           o->a_until_of};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!names[i][0])
            return fail("dynamodb URI: attribute names and pk must not be empty");
    if (strcmp(o->pk, o->sk) == 0)
        return fail("dynamodb URI: pk and sk must differ (both '%s')", o->pk);
    if (o->sk[0] && !o->static_pk[0])
        return fail("dynamodb URI: static_pk must not be empty with sk=%s", o->sk);
    return opts_resolve(o);
}

int cbd_ddb_send(struct cbd_aws_http *http, const struct cbd_ddb_opts *o, const struct cbd_aws_creds *creds,
                 const char *op, const json_t *body, uint32_t max_attempts, cbd_aws_http_cb cb, void *arg)
{
    char target[96], sigv4[128];
    snprintf(target, sizeof target, "X-Amz-Target: " CBD_DDB_TARGET "%s", op);
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:dynamodb", o->region);
    const char *hdrs[] = {"Content-Type: application/x-amz-json-1.0", target, NULL};
    char *text = json_dumps(body, JSON_COMPACT);
    if (text == NULL)
        return -ENOMEM;
    struct cbd_aws_request q = {
        .method = "POST", .url = o->endpoint, .body = text, .body_len = strlen(text), .headers = hdrs,
        .sigv4 = sigv4, .creds = creds, .timeout_ms = o->timeout_ms, .connect_timeout_ms = o->connect_timeout_ms,
        .max_attempts = max_attempts, .insecure_tls = !o->tls_verify, .cb = cb, .arg = arg,
    };
    int rc = cbd_aws_http_send(http, &q); /* copies what it keeps */
    free(text);
    return rc;
}
