/*
 * aws_http.c - libcurl's multi interface driven by the libuv loop.
 *
 * Design. This is the curl/libuv pattern: curl tells us which sockets to
 * watch (CURLMOPT_SOCKETFUNCTION) and when to wake it up
 * (CURLMOPT_TIMERFUNCTION); a uv_poll per socket and one uv_timer turn those
 * wishes into loop events, and every event is handed back with
 * curl_multi_socket_action(). Finished transfers are collected with
 * curl_multi_info_read() after each action. Nothing here blocks: connects,
 * TLS and transfers are non-blocking, and curl resolves names on its own
 * resolver thread (libcurl is built AsynchDNS).
 *
 * One easy handle per attempt, one multi handle per client: the multi
 * handle's connection cache keeps connections open between requests, so a
 * steady stream of DynamoDB calls costs one TLS handshake, not one each.
 * Creating an easy handle per attempt costs a few allocations and keeps the
 * retry logic free of curl's "reset a handle mid-flight" rules.
 *
 * Retries. An attempt whose answer is retryable (network error, timeout,
 * HTTP 5xx or 429, or an AWS throttling error) waits a full-jitter
 * exponential backoff and goes again, up to max_attempts. Waiting requests
 * sit on one list served by one uv_timer, so a request owns no loop handle
 * and can be freed at once. The caller sees one callback with the final
 * answer and the number of attempts.
 *
 * Signing. CURLOPT_AWS_SIGV4 signs each attempt afresh (new X-Amz-Date),
 * with the key and secret as CURLOPT_USERNAME/PASSWORD; a session token
 * travels in X-Amz-Security-Token. "Expect:" is cleared so curl never
 * inserts a 100-continue round trip into a signed POST.
 *
 * Closing is deferred to a loop turn (through the retry timer) because it
 * may be asked for from inside a request callback, which itself runs from
 * the multi handle's message loop.
 */
#define _GNU_SOURCE /* memmem */
#include "aws_http.h"

#include <curl/curl.h>
#include <errno.h>
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"

#define RESP_MAX (4u << 20)   /* bytes; DynamoDB answers for <= 100 small items are far below */
#define RETRY_BASE_MS 50u
#define RETRY_CAP_MS 2000u

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

struct poll_ctx {
    uv_poll_t poll;
    curl_socket_t fd;
    struct cbd_aws_http *h;
    struct poll_ctx *next, *prev;
};

struct req {
    struct req *next, *prev;
    struct cbd_aws_http *h;
    CURL *easy;                /* non-NULL while an attempt is in flight */
    struct curl_slist *headers;
    char *method, *url, *body, *sigv4;
    size_t body_len;
    struct cbd_aws_creds creds;
    uint32_t timeout_ms, connect_timeout_ms, max_attempts, attempt;
    bool insecure_tls;
    uint64_t due_ms;           /* waiting for a retry: loop time of the next attempt */
    char *resp;
    size_t resp_len, resp_cap;
    bool resp_overflow;
    char errbuf[CURL_ERROR_SIZE];
    cbd_aws_http_cb cb;
    void *arg;
};

struct cbd_aws_http {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer;  /* curl's own timeout */
    uv_timer_t retry_timer; /* backoff of waiting requests; also defers close */
    struct req *reqs;       /* every live request */
    struct poll_ctx *polls;
    unsigned handles;       /* open loop handles; h is freed when the last closes */
    bool closing;
    void (*close_done)(void *arg);
    void *close_arg;
    struct cbd_aws_http_stats stats;
};

static void check_done(struct cbd_aws_http *h);
static void schedule_retries(struct cbd_aws_http *h);

uint32_t cbd_aws_backoff_ms(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms)
{
    return cbd_backoff_ms(attempt, base_ms, cap_ms, (uint64_t)arc4random() << 32 | arc4random());
}

/* ---- small parsers of AWS answers ----------------------------------------- */

static int xml_decode(const char *s, const char *e, char *buf, size_t bufsize)
{
    static const struct { const char *ent; char c; } ents[] = {
        {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''},
    };
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\r' || e[-1] == '\t'))
        e--;
    size_t n = 0;
    while (s < e) {
        char c = *s++;
        if (c == '<')
            return -EBADMSG;
        if (c == '&') {
            size_t i;
            for (i = 0; i < sizeof ents / sizeof ents[0]; i++) {
                size_t l = strlen(ents[i].ent);
                if ((size_t)(e - s + 1) >= l && memcmp(s - 1, ents[i].ent, l) == 0) {
                    c = ents[i].c;
                    s += l - 1;
                    break;
                }
            }
            if (i == sizeof ents / sizeof ents[0])
                return -EBADMSG;
        }
        if (n + 1 >= bufsize)
            return -ENAMETOOLONG;
        buf[n++] = c;
    }
    buf[n] = '\0';
    return 0;
}

int cbd_aws_xml_text(const char *xml, size_t len, const char *tag, char *buf, size_t bufsize)
{
    char open[80], close[80];
    int ol = snprintf(open, sizeof open, "<%s>", tag);
    int cl = snprintf(close, sizeof close, "</%s>", tag);
    if (bufsize == 0 || ol < 0 || cl < 0 || (size_t)cl >= sizeof close)
        return -EINVAL;
    const char *s = memmem(xml, len, open, (size_t)ol);
    if (!s)
        return -ENOENT;
    s += ol;
    const char *e = memmem(s, len - (size_t)(s - xml), close, (size_t)cl);
    if (!e)
        return -EBADMSG;
    return xml_decode(s, e, buf, bufsize);
}

/* The AWS error name and message of a non-2xx answer: JSON protocols put
 * "namespace#Name" in __type, query protocols (STS) an <Error><Code>. */
static void aws_error(const char *body, size_t len, char *code, size_t codesz, char *msg, size_t msgsz)
{
    code[0] = msg[0] = '\0';
    json_t *j = json_loadb(body, len, 0, NULL);
    if (j) {
        const char *t = json_string_value(json_object_get(j, "__type"));
        if (!t)
            t = json_string_value(json_object_get(j, "code"));
        const char *m = json_string_value(json_object_get(j, "message"));
        if (!m)
            m = json_string_value(json_object_get(j, "Message"));
        if (t) {
            const char *hash = strrchr(t, '#');
            snprintf(code, codesz, "%s", hash ? hash + 1 : t);
        }
        if (m)
            snprintf(msg, msgsz, "%s", m);
        json_decref(j);
        return;
    }
    if (cbd_aws_xml_text(body, len, "Code", code, codesz) != 0)
        code[0] = '\0';
    if (cbd_aws_xml_text(body, len, "Message", msg, msgsz) != 0)
        msg[0] = '\0';
}

static bool is_throttle(long status, const char *code)
{
    static const char *const names[] = {
        "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
        "Throttling", "TooManyRequestsException",
    };
    if (status == 429)
        return true;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(code, names[i]) == 0)
            return true;
    return false;
}

/* ---- requests --------------------------------------------------------------- */

static void req_free(struct req *r)
{
    struct cbd_aws_http *h = r->h;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    curl_slist_free_all(r->headers);
    explicit_bzero(&r->creds, sizeof r->creds);
    free(r->method);
    free(r->url);
    free(r->body);
    free(r->sigv4);
    free(r->resp);
    free(r);
}

/* Run the callback with the final answer and forget the request. */
static void finish(struct req *r, long status, const char *code, const char *why, bool timed_out,
                   bool cancelled)
{
    struct cbd_aws_response resp = {
        .status = status,
        .body = r->resp ? r->resp : "",
        .body_len = r->resp_len,
        .error_code = code,
        .why = why,
        .attempts = r->attempt,
        .timed_out = timed_out,
        .cancelled = cancelled,
    };
    if (status < 200 || status > 299)
        r->h->stats.errors++;
    r->cb(r->arg, &resp);
    req_free(r);
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct req *r = arg;
    size_t len = size * n;
    if (r->resp_len + len + 1 > RESP_MAX) {
        r->resp_overflow = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->resp_len + len + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 1024;
        while (cap < r->resp_len + len + 1)
            cap *= 2;
        char *nb = realloc(r->resp, cap);
        if (!nb)
            return 0;
        r->resp = nb;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, p, len);
    r->resp_len += len;
    r->resp[r->resp_len] = '\0';
    return len;
}

static int attempt_setup(struct req *r, CURL *e)
{
    CURLcode rc = CURLE_OK;
#define SET(opt, val) if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)r->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)r->connect_timeout_ms);
    SET(CURLOPT_HTTPHEADER, r->headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    if (r->insecure_tls) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (strcmp(r->method, "GET") != 0) {
        SET(CURLOPT_POSTFIELDSIZE, (long)r->body_len);
        SET(CURLOPT_POSTFIELDS, r->body ? r->body : "");
        if (strcmp(r->method, "PUT") == 0)
            SET(CURLOPT_CUSTOMREQUEST, "PUT");
    }
    if (r->sigv4) {
        SET(CURLOPT_AWS_SIGV4, r->sigv4);
        SET(CURLOPT_USERNAME, r->creds.key_id);
        SET(CURLOPT_PASSWORD, r->creds.secret);
    }
#undef SET
    return rc == CURLE_OK ? 0 : -EINVAL;
}

/* Start the next attempt: 0, or -errno (then nothing is in flight). */
static int attempt_start(struct req *r)
{
    CURL *e = curl_easy_init();
    if (!e)
        return -ENOMEM;
    r->errbuf[0] = '\0';
    r->resp_len = 0;
    r->resp_overflow = false;
    if (attempt_setup(r, e) < 0 || curl_multi_add_handle(r->h->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return -ENOMEM;
    }
    r->easy = e;
    r->attempt++;
    r->h->stats.requests++;
    if (r->attempt > 1)
        r->h->stats.retries++;
    return 0;
}

static struct curl_slist *build_headers(const struct cbd_aws_request *q)
{
    struct curl_slist *l = NULL, *t;
    char tok[sizeof q->creds->token + 32];
    /* curl would send "Expect: 100-continue" for a large POST: an extra
     * round trip that adds nothing for DynamoDB. */
    if (!(l = curl_slist_append(NULL, "Expect:")))
        return NULL;
    for (const char *const *hp = q->headers; hp && *hp; hp++) {
        if (!(t = curl_slist_append(l, *hp)))
            goto fail;
        l = t;
    }
    if (q->sigv4 && q->creds->token[0]) {
        snprintf(tok, sizeof tok, "X-Amz-Security-Token: %s", q->creds->token);
        t = curl_slist_append(l, tok);
        explicit_bzero(tok, sizeof tok);
        if (!t)
            goto fail;
        l = t;
    }
    return l;
fail:
    curl_slist_free_all(l);
    return NULL;
}

static char *dup_or_null(const char *s, size_t len)
{
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

int cbd_aws_http_send(struct cbd_aws_http *h, const struct cbd_aws_request *q)
{
    if (h->closing)
        return -ESHUTDOWN;
    if (!q->cb || !q->url || !q->method || q->max_attempts == 0 || (q->sigv4 && !q->creds) ||
        (strcmp(q->method, "GET") && strcmp(q->method, "POST") && strcmp(q->method, "PUT")))
        return -EINVAL;
    struct req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->h = h;
    r->method = strdup(q->method);
    r->url = strdup(q->url);
    r->body_len = q->body ? q->body_len : 0;
    r->body = q->body ? dup_or_null(q->body, q->body_len) : NULL;
    r->sigv4 = q->sigv4 ? strdup(q->sigv4) : NULL;
    if (q->sigv4)
        r->creds = *q->creds;
    r->headers = build_headers(q);
    r->timeout_ms = q->timeout_ms;
    r->connect_timeout_ms = q->connect_timeout_ms;
    r->max_attempts = q->max_attempts;
    r->insecure_tls = q->insecure_tls;
    r->cb = q->cb;
    r->arg = q->arg;
    r->next = h->reqs;
    if (h->reqs)
        h->reqs->prev = r;
    h->reqs = r;
    int rc = -ENOMEM;
    if (r->method && r->url && (r->body || !q->body) && (r->sigv4 || !q->sigv4) && r->headers)
        rc = attempt_start(r);
    if (rc < 0)
        req_free(r);
    return rc;
}

/* An attempt ended: retry it later, or hand the answer to the caller. */
static void attempt_done(struct req *r, CURLcode cc, long status)
{
    char code[128] = "", msg[512] = "", why[1024] = "";
    bool timed_out = cc == CURLE_OPERATION_TIMEDOUT;
    bool retry;
    if (timed_out)
        r->h->stats.timeouts++;
    if (cc != CURLE_OK) {
        status = 0;
        if (r->resp_overflow)
            snprintf(why, sizeof why, "%s %s: answer larger than %u bytes", r->method, r->url, RESP_MAX);
        else
            snprintf(why, sizeof why, "%s %s: %s", r->method, r->url,
                     r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc));
        retry = !r->resp_overflow;
    } else if (status >= 200 && status <= 299) {
        finish(r, status, "", "", false, false);
        return;
    } else {
        aws_error(r->resp ? r->resp : "", r->resp_len, code, sizeof code, msg, sizeof msg);
        snprintf(why, sizeof why, "%s %s: HTTP %ld%s%s%s%s", r->method, r->url, status, code[0] ? " " : "",
                 code, msg[0] ? ": " : "", msg);
        bool throttled = is_throttle(status, code);
        if (throttled)
            r->h->stats.throttles++;
        retry = throttled || status >= 500;
    }
    if (retry && r->attempt < r->max_attempts) {
        r->due_ms = uv_now(r->h->loop) + cbd_aws_backoff_ms(r->attempt - 1, RETRY_BASE_MS, RETRY_CAP_MS);
        schedule_retries(r->h);
        return;
    }
    finish(r, status, code, why, timed_out, false);
}

static void check_done(struct cbd_aws_http *h)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(h->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *e = m->easy_handle;
        CURLcode cc = m->data.result;
        struct req *r = NULL;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(h->multi, e);
        curl_easy_cleanup(e);
        r->easy = NULL;
        attempt_done(r, cc, status);
    }
}

/* ---- curl <-> loop ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *hd)
{
    struct cbd_aws_http *h = hd->data;
    if (hd->type == UV_POLL)
        free(container_of((uv_poll_t *)hd, struct poll_ctx, poll));
    if (--h->handles == 0) {
        void (*done)(void *) = h->close_done;
        void *arg = h->close_arg;
        free(h);
        if (done)
            done(arg);
    }
}

static void poll_close(struct poll_ctx *pc)
{
    struct cbd_aws_http *h = pc->h;
    if (pc->prev)
        pc->prev->next = pc->next;
    else
        h->polls = pc->next;
    if (pc->next)
        pc->next->prev = pc->prev;
    uv_close((uv_handle_t *)&pc->poll, on_handle_closed);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct poll_ctx *pc = container_of(p, struct poll_ctx, poll);
    struct cbd_aws_http *h = pc->h;
    int flags = 0, running;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else
        flags = ((events & UV_READABLE) ? CURL_CSELECT_IN : 0) | ((events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(h->multi, pc->fd, flags, &running);
    check_done(h);
}

static int on_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct cbd_aws_http *h = userp;
    struct poll_ctx *pc = socketp;
    (void)e;
    if (h->closing && !h->multi)
        return 0; /* teardown: the poll handles are already closed */
    if (what == CURL_POLL_REMOVE) {
        if (pc) {
            curl_multi_assign(h->multi, fd, NULL);
            poll_close(pc);
        }
        return 0;
    }
    if (!pc) {
        pc = calloc(1, sizeof *pc);
        if (!pc || uv_poll_init_socket(h->loop, &pc->poll, fd) < 0) {
            free(pc);
            return -1;
        }
        pc->fd = fd;
        pc->h = h;
        pc->poll.data = h;
        pc->next = h->polls;
        if (h->polls)
            h->polls->prev = pc;
        h->polls = pc;
        h->handles++;
        curl_multi_assign(h->multi, fd, pc);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    return uv_poll_start(&pc->poll, ev, on_poll) < 0 ? -1 : 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
    struct cbd_aws_http *h = t->data;
    int running;
    curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(h);
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct cbd_aws_http *h = userp;
    (void)m;
    if (timeout_ms < 0)
        uv_timer_stop(&h->curl_timer);
    else
        uv_timer_start(&h->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- retries and closing -------------------------------------------------- */

static void teardown(struct cbd_aws_http *h)
{
    while (h->reqs) {
        struct req *r = h->reqs;
        if (r->easy) {
            curl_multi_remove_handle(h->multi, r->easy);
            curl_easy_cleanup(r->easy);
            r->easy = NULL;
        }
        r->resp_len = 0;
        finish(r, 0, "", "cancelled: the store is closing", false, true);
    }
    while (h->polls)
        poll_close(h->polls);
    CURLM *m = h->multi;
    h->multi = NULL; /* on_socket ignores what cleanup reports now */
    curl_multi_cleanup(m);
    uv_close((uv_handle_t *)&h->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&h->retry_timer, on_handle_closed);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct cbd_aws_http *h = t->data;
    if (h->closing) {
        teardown(h);
        return;
    }
    uint64_t now = uv_now(h->loop);
    struct req *r = h->reqs, *next;
    for (; r; r = next) {
        next = r->next;
        if (r->easy || r->due_ms > now)
            continue;
        int rc = attempt_start(r);
        if (rc < 0)
            finish(r, 0, "", "out of memory starting a retry", false, false);
    }
    schedule_retries(h);
}

static void schedule_retries(struct cbd_aws_http *h)
{
    uint64_t now = uv_now(h->loop), due = UINT64_MAX;
    for (struct req *r = h->reqs; r; r = r->next)
        if (!r->easy && r->due_ms < due)
            due = r->due_ms;
    if (due == UINT64_MAX)
        uv_timer_stop(&h->retry_timer);
    else
        uv_timer_start(&h->retry_timer, on_retry_timer, due > now ? due - now : 0, 0);
}

void cbd_aws_http_close(struct cbd_aws_http *h, void (*done)(void *arg), void *arg)
{
    if (h->closing)
        return;
    h->closing = true;
    h->close_done = done;
    h->close_arg = arg;
    uv_timer_start(&h->retry_timer, on_retry_timer, 0, 0);
}

/* curl's global state, once per process; a failure shows as a failing
 * curl_multi_init below. */
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

bool cbd_aws_loopback_host(const char *host)
{
    return strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
           (strncmp(host, "127.", 4) == 0 && host[strspn(host, "0123456789.")] == '\0');
}

int cbd_aws_http_create(struct cbd_aws_http **out, uv_loop_t *loop)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, curl_init_once);
    struct cbd_aws_http *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->loop = loop;
    h->multi = curl_multi_init();
    if (!h->multi) {
        free(h);
        return -ENOMEM;
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    uv_timer_init(loop, &h->curl_timer);
    uv_timer_init(loop, &h->retry_timer);
    h->curl_timer.data = h->retry_timer.data = h;
    h->handles = 2;
    *out = h;
    return 0;
}

void cbd_aws_http_stats(const struct cbd_aws_http *h, struct cbd_aws_http_stats *out)
{
    *out = h->stats;
}
