/*
 * pct_decode.h - %XX-decoding of URI parts (RFC 3986), the one decoder
 * every store URI parser uses (redis_uri.c, store_dynamodb.c).
 *
 * Strict: a '%' must be followed by two hex digits, and %00 is refused - a
 * NUL would cut the value short where C strings carry it (a prefix, a
 * table name, a user). Header-only: the parsers it serves sit in different
 * layers.
 */
#ifndef CBD_PCT_DECODE_H
#define CBD_PCT_DECODE_H

#include <stdbool.h>
#include <stddef.h>

static inline int cbd_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* s[0..len) decoded into dst (size bytes, NUL terminated): false if an
 * escape is malformed or %00, or the result does not fit. */
static inline bool cbd_pct_decode(const char *s, size_t len, char *dst, size_t size)
{
    size_t n = 0;
    if (size == 0)
        return false; /* no room for the NUL the result ends with */
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len)
                return false;
            int hi = cbd_hex_digit(s[i + 1]), lo = cbd_hex_digit(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return false;
            c = hi * 16 + lo;
            i += 2;
        }
        if (n + 1 >= size)
            return false;
        dst[n++] = (char)c;
    }
    dst[n] = '\0';
    return true;
}

#endif /* CBD_PCT_DECODE_H */
