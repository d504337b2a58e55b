/*
 * redis_resp.h - the replies a redis server sends (RESP2), read with bounds.
 *
 * hiredis 0.14's reader trusts what it reads: it allocates an array from
 * the declared element count before the elements arrive, waits without
 * limit for a bulk string of any declared length or a line without CRLF,
 * and parses lengths and integers with unchecked overflow. This reader
 * keeps the bytes of the reply being received in its own buffer and scans
 * them first, frame by frame, against fixed limits; only a complete reply
 * that passed is handed to hiredis' reader to build the redisReply. So
 * hiredis allocates only for elements that are present, and any byte
 * sequence ends either in replies or in one protocol error that names what
 * was wrong.
 */
#ifndef CBD_REDIS_RESP_H
#define CBD_REDIS_RESP_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#define CBD_RESP_REPLY_MAX (64u << 20) /* bytes of one reply, nested ones included */
#define CBD_RESP_BULK_MAX (32u << 20)  /* bytes of one bulk string */
#define CBD_RESP_ELEMENTS_MAX (1u << 20) /* elements of one array */
#define CBD_RESP_DEPTH_MAX 7             /* arrays nested in arrays (hiredis 0.14's bound) */
#define CBD_RESP_LINE_MAX (64u << 10)    /* a status, error or header line */

struct cbd_resp_reader {
    char *buf;
    size_t start, len, cap; /* unconsumed bytes: buf[start .. start+len) */
    size_t scanned;         /* bytes of the current reply already checked */
    unsigned depth;         /* arrays open in the current reply */
    uint32_t left[CBD_RESP_DEPTH_MAX]; /* elements still to come per open array */
    int failed;             /* 0, or the error returned forever after */
    char error[160];
    void *reader;           /* hiredis' redisReader */
};

/* A reader with nothing buffered: 0 or -ENOMEM. */
int cbd_resp_init(struct cbd_resp_reader *r);
void cbd_resp_free(struct cbd_resp_reader *r);
/* Forget everything buffered and any error (a new connection). */
void cbd_resp_reset(struct cbd_resp_reader *r);

/* Room for at least want more bytes at *at (*size bytes in all): 0 or
 * -ENOMEM. Write into it and tell cbd_resp_wrote how much came. */
int cbd_resp_space(struct cbd_resp_reader *r, size_t want, char **at, size_t *size);
void cbd_resp_wrote(struct cbd_resp_reader *r, size_t n);
/* Copy n bytes in (cbd_resp_space + memcpy + cbd_resp_wrote): 0 or -ENOMEM. */
int cbd_resp_feed(struct cbd_resp_reader *r, const void *bytes, size_t n);

/*
 * The next complete reply: 1 with *out (the caller frees it with
 * freeReplyObject), 0 when its bytes have not all come yet, -EPROTO when
 * the bytes are not a reply within the limits (cbd_resp_error says what,
 * for an operator), -ENOMEM. After an error every call returns it again
 * until cbd_resp_reset.
 */
int cbd_resp_next(struct cbd_resp_reader *r, redisReply **out);
/* Why the last call failed: e.g. "bulk length 99999999999 is over the
 * 32 MiB limit". Valid until the reader changes. */
const char *cbd_resp_error(const struct cbd_resp_reader *r);
/* Bytes buffered for a reply that is not complete yet. */
size_t cbd_resp_pending(const struct cbd_resp_reader *r);

/* A printable copy of len bytes that came from a server, for log lines:
 * bytes outside ' '..'~' become '?', and "..." ends a cut copy. dst gets
 * at most size bytes, NUL included. */
void cbd_redis_printable(char *dst, size_t size, const char *src, size_t len);

#endif /* CBD_REDIS_RESP_H */
