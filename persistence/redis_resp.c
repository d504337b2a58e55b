/*
 * redis_resp.c - RESP2 replies read with bounds (see redis_resp.h).
 *
 * Design. The reader owns one buffer holding the unconsumed bytes: the
 * rest of the reply being received and whatever followed it. A scanner
 * walks that reply element by element, resuming where it stopped (it keeps
 * how far it got and, per open array, how many elements are still to
 * come), so a reply that arrives in many reads is scanned once. Each
 * element is checked before anything is allocated for it:
 *   - the type byte is one of + - : $ *;
 *   - lines end in CRLF within CBD_RESP_LINE_MAX bytes;
 *   - integers, bulk lengths and element counts are decimal numbers that
 *     fit a long long; -1 (nil) is the only negative length or count;
 *   - a bulk string is at most CBD_RESP_BULK_MAX bytes and is followed by
 *     CRLF; an array has at most CBD_RESP_ELEMENTS_MAX elements and arrays
 *     nest at most CBD_RESP_DEPTH_MAX deep;
 *   - the whole reply is at most CBD_RESP_REPLY_MAX bytes.
 * When the last element of the reply has passed, exactly its bytes go to
 * hiredis' reader, which then always returns that one reply: every array
 * count it allocates for is backed by elements already present (at least
 * 3 bytes each), so memory stays proportional to the bytes received.
 *
 * An error is sticky: the connection it came from is out of step for good
 * and must be dropped; the owner calls cbd_resp_reset for the next one.
 */
#define _GNU_SOURCE /* memmem */
#include "redis_resp.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cbd_redis_printable(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 4 < size; i++)
        dst[n++] = src[i] >= ' ' && src[i] <= '~' ? src[i] : '?';
    if (len > n && size >= 4)
        memcpy(dst + n, "...", 3), n += 3;
    if (size > 0)
        dst[n] = '\0';
}

int cbd_resp_init(struct cbd_resp_reader *r)
{
    memset(r, 0, sizeof *r);
    r->reader = redisReaderCreate();
    return r->reader != NULL ? 0 : -ENOMEM;
}

void cbd_resp_free(struct cbd_resp_reader *r)
{
    if (r->reader != NULL)
        redisReaderFree(r->reader);
    free(r->buf);
    memset(r, 0, sizeof *r);
}

void cbd_resp_reset(struct cbd_resp_reader *r)
{
    r->start = r->len = r->scanned = 0;
    r->depth = 0;
    r->failed = 0;
    r->error[0] = '\0';
    if (r->reader != NULL) {
        /* a fresh hiredis reader: the old one may hold half a reply */
        redisReaderFree(r->reader);
        r->reader = redisReaderCreate();
    }
}

int cbd_resp_space(struct cbd_resp_reader *r, size_t want, char **at, size_t *size)
{
    if (r->cap - r->start - r->len < want && r->start > 0) {
        memmove(r->buf, r->buf + r->start, r->len);
        r->start = 0;
    }
    if (r->cap - r->len < want) {
        size_t cap = r->cap ? r->cap * 2 : 16384;
        if (cap < r->len + want)
            cap = r->len + want;
        char *b = realloc(r->buf, cap);
        if (b == NULL)
            return -ENOMEM;
        r->buf = b;
        r->cap = cap;
    }
    *at = r->buf + r->start + r->len;
    *size = r->cap - r->start - r->len;
    return 0;
}

void cbd_resp_wrote(struct cbd_resp_reader *r, size_t n) { r->len += n; }

int cbd_resp_feed(struct cbd_resp_reader *r, const void *bytes, size_t n)
{
    char *at;
    size_t size;
    if (n == 0)
        return 0;
    int rc = cbd_resp_space(r, n, &at, &size);
    if (rc < 0)
        return rc;
    memcpy(at, bytes, n);
    cbd_resp_wrote(r, n);
    return 0;
}

const char *cbd_resp_error(const struct cbd_resp_reader *r) { return r->error; }

size_t cbd_resp_pending(const struct cbd_resp_reader *r) { return r->len; }

__attribute__((format(printf, 2, 3))) static int fail(struct cbd_resp_reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error, sizeof r->error, fmt, ap);
    va_end(ap);
    r->failed = -EPROTO;
    return -EPROTO;
}

/* A decimal long long in p[0..n): an optional '-', 1..19 digits, no overflow. */
static bool parse_ll(const char *p, size_t n, long long *out)
{
    bool neg = n > 0 && p[0] == '-';
    unsigned long long v = 0, limit = neg ? 9223372036854775808ull : 9223372036854775807ull;
    size_t i = neg;
    if (n == i || n - i > 19)
        return false;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    if (v > limit)
        return false;
    *out = neg ? (long long)(0 - v) : (long long)v;
    return true;
}

enum scanned_element { SC_MORE = 0, SC_DONE = 1, SC_OPENED = 2 };

/* The length or count line of a $ or * element, checked. */
static int scan_length(struct cbd_resp_reader *r, const char *line, size_t n, char type, long long *v)
{
    char shown[32];
    const char *what = type == '$' ? "bulk length" : "array length";
    if (!parse_ll(line, n, v)) {
        cbd_redis_printable(shown, sizeof shown, line, n);
        return fail(r, "malformed %s '%s'", what, shown);
    }
    if (*v < -1)
        return fail(r, "negative %s %lld", what, *v);
    if (type == '$' && *v > (long long)CBD_RESP_BULK_MAX)
        return fail(r, "bulk length %lld is over the %u MiB limit", *v, CBD_RESP_BULK_MAX >> 20);
    if (type == '*' && *v > (long long)CBD_RESP_ELEMENTS_MAX)
        return fail(r, "array length %lld is over the limit of %u elements", *v, CBD_RESP_ELEMENTS_MAX);
    return 0;
}

/* One element at *pos of d[0..avail): SC_MORE (its bytes have not all
 * come), SC_DONE (a whole scalar, nil or empty array: *pos after it),
 * SC_OPENED (an array header: pushed, *pos after it) or -EPROTO. */
static int scan_element(struct cbd_resp_reader *r, const char *d, size_t avail, size_t *pos)
{
    size_t at = *pos, window = avail - at;
    if (window == 0)
        return SC_MORE;
    if (window > CBD_RESP_LINE_MAX + 3)
        window = CBD_RESP_LINE_MAX + 3;
    const char *crlf = memmem(d + at, window, "\r\n", 2);
    if (crlf == NULL) {
        if (window >= CBD_RESP_LINE_MAX + 3)
            return fail(r, "a line of more than %u KiB without CRLF", CBD_RESP_LINE_MAX >> 10);
        if (memchr("+-:$*", d[at], 5) != NULL)
            return SC_MORE;
    }
    char type = d[at];
    const char *line = d + at + 1;
    size_t n = crlf != NULL ? (size_t)(crlf - line) : 0, next = crlf != NULL ? (size_t)(crlf + 2 - d) : 0;
    long long v;
    switch (type) {
    case '+':
    case '-':
        *pos = next;
        return SC_DONE;
    case ':':
        if (!parse_ll(line, n, &v)) {
            char shown[32];
            cbd_redis_printable(shown, sizeof shown, line, n);
            return fail(r, "malformed integer '%s'", shown);
        }
        *pos = next;
        return SC_DONE;
    case '$':
        if (scan_length(r, line, n, type, &v) < 0)
            return -EPROTO;
        if (v < 0) {
            *pos = next;
            return SC_DONE;
        }
        if (next + (size_t)v + 2 > CBD_RESP_REPLY_MAX)
            return fail(r, "reply longer than %u MiB", CBD_RESP_REPLY_MAX >> 20);
        if (next + (size_t)v + 2 > avail)
            return SC_MORE;
        if (d[next + (size_t)v] != '\r' || d[next + (size_t)v + 1] != '\n')
            return fail(r, "bulk string of %lld bytes not followed by CRLF", v);
        *pos = next + (size_t)v + 2;
        return SC_DONE;
    case '*':
        if (scan_length(r, line, n, type, &v) < 0)
            return -EPROTO;
        *pos = next;
        if (v <= 0)
            return SC_DONE;
        if (r->depth == CBD_RESP_DEPTH_MAX)
            return fail(r, "arrays nested more than %d deep", CBD_RESP_DEPTH_MAX);
        r->left[r->depth++] = (uint32_t)v;
        return SC_OPENED;
    default: {
        char shown[32];
        cbd_redis_printable(shown, sizeof shown, d + at, avail - at);
        return fail(r, "bad reply type byte 0x%02x in '%s'", (unsigned char)type, shown);
    }
    }
}

/* The reply in buf[start .. start+size) passed: hiredis builds it. */
static int build(struct cbd_resp_reader *r, size_t size, redisReply **out)
{
    void *reply = NULL;
    if (redisReaderFeed(r->reader, r->buf + r->start, size) != REDIS_OK ||
        redisReaderGetReply(r->reader, &reply) != REDIS_OK || reply == NULL) {
        if (reply != NULL)
            freeReplyObject(reply);
        if (((redisReader *)r->reader)->err == REDIS_ERR_OOM)
            return -ENOMEM;
        return fail(r, "reply not accepted by hiredis: %s", ((redisReader *)r->reader)->errstr);
    }
    r->start += size;
    r->len -= size;
    r->scanned = 0;
    *out = reply;
    return 1;
}

int cbd_resp_next(struct cbd_resp_reader *r, redisReply **out)
{
    *out = NULL;
    if (r->failed)
        return r->failed;
    if (r->len == 0)
        return 0; /* nothing buffered yet (and no buffer: buf may be NULL) */
    const char *d = r->buf + r->start;
    for (;;) {
        size_t pos = r->scanned;
        int rc = scan_element(r, d, r->len, &pos);
        if (rc <= 0)
            return rc;
        r->scanned = pos;
        if (pos > CBD_RESP_REPLY_MAX)
            return fail(r, "reply longer than %u MiB", CBD_RESP_REPLY_MAX >> 20);
        if (rc == SC_OPENED)
            continue;
        while (r->depth > 0 && --r->left[r->depth - 1] == 0)
            r->depth--; /* that array is complete: one element of its parent */
        if (r->depth == 0)
            return build(r, pos, out);
    }
}
