/*
 * aws_http.h - HTTP requests to AWS endpoints on cbd's libuv loop.
 *
 * One client (struct cbd_aws_http) owns a libcurl multi handle driven by the
 * loop: curl's sockets are watched with uv_poll, its timeout with a
 * uv_timer, and nothing on the loop ever blocks (DNS runs on curl's resolver
 * thread). Connections stay in the multi handle's cache and are reused by
 * every request to the same endpoint.
 *
 * A request may be signed with SigV4 (libcurl's CURLOPT_AWS_SIGV4) and is
 * retried by the client, with exponential backoff and full jitter, when the
 * answer says "try again": throttling errors, HTTP 5xx, 429, timeouts and
 * network errors. Its callback runs once, on the loop, with the final answer.
 */
#ifndef CBD_AWS_HTTP_H
#define CBD_AWS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cbd_aws_http;

/* Credentials that sign a request. */
struct cbd_aws_creds {
    char key_id[128];
    char secret[128];
    char token[4096];   /* session token; "" for long-term keys */
    int64_t expiration; /* epoch seconds; 0 when they do not expire */
    char source[64];    /* where they came from, for logs ("environment", ...) */
};

/* The final answer to a request. Everything points into memory that lives
 * until the callback returns. */
struct cbd_aws_response {
    long status;            /* HTTP status; 0 when no response came (network, timeout, cancel) */
    const char *body;       /* NUL terminated (the response may hold NULs: use body_len) */
    size_t body_len;
    const char *error_code; /* AWS error name ("ThrottlingException"), "" if none */
    const char *why;        /* "" for 2xx; else what went wrong, for an operator */
    uint32_t attempts;      /* 1 + retries */
    bool timed_out;         /* the last attempt hit timeout_ms */
    bool cancelled;         /* the client closed before an answer came */
};

typedef void (*cbd_aws_http_cb)(void *arg, const struct cbd_aws_response *resp);

struct cbd_aws_request {
    const char *method;             /* "GET", "POST" or "PUT" */
    const char *url;
    const char *body;               /* POST/PUT payload (copied); NULL = empty */
    size_t body_len;
    const char *const *headers;     /* "Name: value" strings, NULL terminated (copied) */
    const char *sigv4;              /* "aws:amz:<region>:<service>", or NULL: unsigned */
    const struct cbd_aws_creds *creds; /* required with sigv4 (copied) */
    uint32_t timeout_ms;            /* per attempt, whole transfer */
    uint32_t connect_timeout_ms;
    uint32_t max_attempts;          /* >= 1; 1 means no retry */
    bool insecure_tls;              /* skip certificate verification (tests with self-signed endpoints) */
    cbd_aws_http_cb cb;
    void *arg;
};

struct cbd_aws_http_stats {
    uint64_t requests;  /* attempts sent, retries included */
    uint64_t retries;   /* attempts that were retries */
    uint64_t throttles; /* answers that said "slow down" */
    uint64_t timeouts;  /* attempts that hit their timeout */
    uint64_t errors;    /* requests whose final answer was not 2xx */
};

/* host (as a URL gives it: "localhost", "[::1]", "127.0.0.1") is this
 * machine by its name alone: localhost, [::1], or a dotted 127.x address
 * (not a name that merely starts with "127.", which resolves anywhere). */
bool cbd_aws_loopback_host(const char *host);

/* Prepare a client on loop: 0 or -ENOMEM. */
int cbd_aws_http_create(struct cbd_aws_http **out, uv_loop_t *loop);

/* Start a request. 0: r->cb will run once, on the loop, never inside this
 * call. -EINVAL (bad method, sigv4 without creds, no callback), -ESHUTDOWN
 * (the client is closing) or -ENOMEM: the callback will not run. */
int cbd_aws_http_send(struct cbd_aws_http *h, const struct cbd_aws_request *r);

void cbd_aws_http_stats(const struct cbd_aws_http *h, struct cbd_aws_http_stats *out);

/* Cancel what is in flight (those callbacks run with cancelled = true),
 * release connections and handles, free h, then done(arg) on the loop.
 * Safe to call from a request callback. */
void cbd_aws_http_close(struct cbd_aws_http *h, void (*done)(void *arg), void *arg);

/* Full-jitter exponential backoff: a uniform delay in
 * [0, min(cap_ms, base_ms * 2^attempt)]. */
uint32_t cbd_aws_backoff_ms(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms);

/* The text of the first <tag>...</tag> in xml (no attributes, no nesting
 * of the same tag), with the five predefined entities decoded, into buf.
 * 0; -ENOENT if absent; -EBADMSG for an unknown entity or markup inside;
 * -ENAMETOOLONG if it does not fit. Enough for STS and IMDS answers,
 * which are flat and machine-written; not a general XML parser. */
int cbd_aws_xml_text(const char *xml, size_t len, const char *tag, char *buf, size_t bufsize);

#endif /* CBD_AWS_HTTP_H */
