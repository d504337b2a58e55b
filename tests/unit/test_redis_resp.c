/*
 * test_redis_resp.c - the bounded RESP reader (persistence/redis_resp.c):
 * replies come out whole however the bytes are split, in order, and any
 * byte sequence that is not a reply within the limits is one protocol
 * error naming what is wrong.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "redis_resp.h"

static struct cbd_resp_reader rd;

static void setup(void) { cr_assert_eq(cbd_resp_init(&rd), 0); }
static void teardown(void) { cbd_resp_free(&rd); }

TestSuite(redis_resp, .init = setup, .fini = teardown);

static void feed(const char *s) { cr_assert_eq(cbd_resp_feed(&rd, s, strlen(s)), 0); }

/* The next reply, failing the test if there is none. */
static redisReply *next_reply(void)
{
    redisReply *r = NULL;
    int rc = cbd_resp_next(&rd, &r);
    cr_assert_eq(rc, 1, "no reply (%d: %s)", rc, cbd_resp_error(&rd));
    return r;
}

Test(redis_resp, a_reply_fed_one_byte_at_a_time_comes_out_whole_once)
{
    static const char bytes[] = "*3\r\n$7\r\nmessage\r\n$3\r\nchn\r\n$5\r\nhe\r\no\r\n";
    redisReply *r = NULL;
    for (size_t i = 0; i + 1 < sizeof bytes; i++) {
        cr_assert_eq(cbd_resp_next(&rd, &r), 0, "a reply before byte %zu", i);
        cr_assert_eq(cbd_resp_feed(&rd, bytes + i, 1), 0);
    }
    r = next_reply();
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->elements, 3);
    cr_assert_eq(r->element[2]->len, 5);
    cr_assert(memcmp(r->element[2]->str, "he\r\no", 5) == 0, "CRLF inside a bulk string is data");
    freeReplyObject(r);
    cr_assert_eq(cbd_resp_pending(&rd), 0);
    cr_assert_eq(cbd_resp_next(&rd, &r), 0);
}

Test(redis_resp, pipelined_replies_come_out_in_order)
{
    feed("+OK\r\n:42\r\n-ERR no\r\n$-1\r\n*-1\r\n*0\r\n");
    static const int types[] = {REDIS_REPLY_STATUS, REDIS_REPLY_INTEGER, REDIS_REPLY_ERROR,
                                REDIS_REPLY_NIL, REDIS_REPLY_NIL, REDIS_REPLY_ARRAY};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        redisReply *r = next_reply();
        cr_assert_eq(r->type, types[i], "reply %zu", i);
        if (i == 1)
            cr_assert_eq(r->integer, 42);
        freeReplyObject(r);
    }
}

Test(redis_resp, arrays_nested_seven_deep_are_read)
{
    feed("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*2\r\n*1\r\n:1\r\n:2\r\n");
    redisReply *root = next_reply(), *r = root;
    for (int d = 0; d < 6; d++)
        r = r->element[0];
    cr_assert_eq(r->type, REDIS_REPLY_ARRAY);
    cr_assert_eq(r->element[0]->integer, 1);
    freeReplyObject(root);
}

Test(redis_resp, extreme_integers_are_read_exactly)
{
    feed(":9223372036854775807\r\n:-9223372036854775808\r\n");
    redisReply *a = next_reply(), *b = next_reply();
    cr_assert_eq(a->integer, 9223372036854775807ll);
    cr_assert_eq(b->integer, (-9223372036854775807ll - 1));
    freeReplyObject(a);
    freeReplyObject(b);
}

Test(redis_resp, a_declared_count_waits_for_its_elements_without_failing)
{
    redisReply *r = NULL;
    feed("*1000000\r\n$99999\r\n");
    cr_assert_eq(cbd_resp_next(&rd, &r), 0);
    cr_assert_eq(cbd_resp_pending(&rd), 18);
}

struct bad_reply {
    const char *bytes, *error;
};

static void assert_refused(const char *bytes, size_t len, const char *error)
{
    redisReply *r = NULL;
    cbd_resp_reset(&rd);
    cr_assert_eq(cbd_resp_feed(&rd, bytes, len), 0);
    int rc = cbd_resp_next(&rd, &r);
    cr_assert_eq(rc, -EPROTO, "'%s' was accepted (%d)", bytes, rc);
    cr_assert_null(r);
    cr_assert(strstr(cbd_resp_error(&rd), error) != NULL, "'%s': error '%s' does not say '%s'", bytes,
              cbd_resp_error(&rd), error);
}

Test(redis_resp, bytes_that_are_not_a_reply_within_the_limits_are_one_protocol_error)
{
    static const struct bad_reply cases[] = {
        {"HTTP/1.1 400 Bad Request\r\n", "bad reply type byte 0x48 in 'HTTP/1.1"},
        {"\x01\x02", "bad reply type byte 0x01"},
        {"$99999999999\r\n", "bulk length 99999999999 is over the 32 MiB limit"},
        {"$-2\r\n", "negative bulk length -2"},
        {"*-7\r\n", "negative array length -7"},
        {"$abc\r\n", "malformed bulk length 'abc'"},
        {"$\r\n", "malformed bulk length ''"},
        {"*2000000\r\n", "over the limit of 1048576 elements"},
        {":12a\r\n", "malformed integer '12a'"},
        {":9223372036854775808\r\n", "malformed integer"},
        {":-\r\n", "malformed integer"},
        {"$3\r\nabcd\r\n", "bulk string of 3 bytes not followed by CRLF"},
        {"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "nested more than 7 deep"},
        {"*2\r\n+OK\r\n!\r\n", "bad reply type byte 0x21"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_refused(cases[i].bytes, strlen(cases[i].bytes), cases[i].error);
    assert_refused("\0\r\n", 3, "bad reply type byte 0x00");
}

Test(redis_resp, a_line_without_crlf_is_refused_once_it_passes_the_line_limit)
{
    static char line[CBD_RESP_LINE_MAX + 16];
    redisReply *r = NULL;
    memset(line, 'x', sizeof line);
    line[0] = '+';
    cr_assert_eq(cbd_resp_feed(&rd, line, CBD_RESP_LINE_MAX), 0);
    cr_assert_eq(cbd_resp_next(&rd, &r), 0, "a long line is not an error yet");
    assert_refused(line, sizeof line, "without CRLF");
}

Test(redis_resp, an_error_is_sticky_until_reset)
{
    redisReply *r = NULL;
    feed("?\r\n");
    cr_assert_eq(cbd_resp_next(&rd, &r), -EPROTO);
    feed("+OK\r\n");
    cr_assert_eq(cbd_resp_next(&rd, &r), -EPROTO, "nothing after garbage is trusted");
    cbd_resp_reset(&rd);
    feed("+OK\r\n");
    r = next_reply();
    cr_assert_eq(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

Test(redis_resp, printable_copies_replace_control_bytes_and_mark_cuts)
{
    char out[8];
    cbd_redis_printable(out, sizeof out, "a\r\nb", 4);
    cr_assert_str_eq(out, "a??b");
    cbd_redis_printable(out, sizeof out, "abcdefghij", 10);
    cr_assert_str_eq(out, "abcd...");
}
