/*
 * test_pct_decode.c - the %XX decoder of every store URI part
 * (common/pct_decode.h): strict RFC 3986 escapes, %00 refused, only the
 * len bytes given are read, and the result fits dst with its NUL or the
 * call fails.
 */
#include <criterion/criterion.h>
#include <stdbool.h>
#include <string.h>

#include "pct_decode.h"

/* s decoded into a 64-byte buffer: true and out, or false. */
static bool decode(const char *s, char out[64])
{
    return cbd_pct_decode(s, strlen(s), out, 64);
}

Test(pct_decode, text_without_escapes_is_copied_as_it_is)
{
    char out[64];
    cr_assert(decode("circuit_breaker#checkout+eu", out));
    cr_assert_str_eq(out, "circuit_breaker#checkout+eu", "'+' is no space in a URI");
}

Test(pct_decode, escapes_decode_in_either_case_of_hex)
{
    char out[64];
    cr_assert(decode("circuit_breaker%23a%2fb%2Fc%3d", out));
    cr_assert_str_eq(out, "circuit_breaker#a/b/c=");
}

Test(pct_decode, a_decoded_percent_is_not_decoded_again)
{
    char out[64];
    cr_assert(decode("100%2541", out));
    cr_assert_str_eq(out, "100%41");
}

Test(pct_decode, escapes_reach_every_byte_but_nul)
{
    char out[64];
    cr_assert(decode("%01%0a%7F%80%ff", out));
    cr_assert_str_eq(out, "\x01\n\x7f\x80\xff");
}

Test(pct_decode, percent_00_is_refused_as_it_would_cut_the_value_short)
{
    char out[64];
    cr_assert_not(decode("user%00admin", out));
    cr_assert_not(decode("%00", out));
}

Test(pct_decode, an_escape_without_two_hex_digits_is_refused)
{
    static const char *const bad[] = {"%G1", "%1G", "% 1", "%-1", "a%zzb", "%%41", "%+1"};
    char out[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_not(decode(bad[i], out), "'%s' was accepted as '%s'", bad[i], out);
}

Test(pct_decode, an_escape_cut_by_the_end_of_the_input_is_refused)
{
    static const char *const bad[] = {"%", "%4", "abc%", "abc%4"};
    char out[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_not(decode(bad[i], out), "'%s' was accepted", bad[i]);
}

Test(pct_decode, only_the_given_length_is_read)
{
    char out[64];
    /* the parsers hand over a part of the URI: "table" of "table?region=..." */
    cr_assert(cbd_pct_decode("table?region=eu-west-1", 5, out, sizeof out));
    cr_assert_str_eq(out, "table");
    /* "%41" cut after "%4": the '1' beyond len must not complete it */
    cr_assert_not(cbd_pct_decode("x%41", 3, out, sizeof out));
}

Test(pct_decode, an_empty_part_decodes_to_an_empty_string)
{
    char out[4] = "xyz";
    cr_assert(cbd_pct_decode("", 0, out, sizeof out));
    cr_assert_str_eq(out, "");
}

Test(pct_decode, a_result_that_fits_with_its_nul_exactly_is_accepted)
{
    char out[4];
    cr_assert(cbd_pct_decode("abc", 3, out, sizeof out));
    cr_assert_str_eq(out, "abc");
    cr_assert(cbd_pct_decode("%61%62%63", 9, out, sizeof out), "the decoded length counts, not the encoded");
    cr_assert_str_eq(out, "abc");
}

Test(pct_decode, a_result_one_byte_too_long_is_refused_without_writing_past_dst)
{
    char buf[8];
    memset(buf, '#', sizeof buf);
    cr_assert_not(cbd_pct_decode("abcd", 4, buf, 4));
    for (size_t i = 4; i < sizeof buf; i++)
        cr_assert_eq(buf[i], '#', "byte %zu past dst was written", i);
}

Test(pct_decode, a_zero_size_destination_is_refused_and_left_untouched)
{
    char guard = '#';
    cr_assert_not(cbd_pct_decode("", 0, &guard, 0), "no room even for the NUL");
    cr_assert_eq(guard, '#', "the NUL was written into a zero-size dst");
    cr_assert_not(cbd_pct_decode("a", 1, &guard, 0));
    cr_assert_eq(guard, '#');
}

Test(pct_decode, hex_digits_are_read_by_value)
{
    const char *digits = "0123456789abcdefABCDEF";
    int values[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 10, 11, 12, 13, 14, 15};
    for (size_t i = 0; digits[i]; i++)
        cr_assert_eq(cbd_hex_digit(digits[i]), values[i], "'%c'", digits[i]);
    cr_assert_eq(cbd_hex_digit('g'), -1);
    cr_assert_eq(cbd_hex_digit('G'), -1);
    cr_assert_eq(cbd_hex_digit('/'), -1);
    cr_assert_eq(cbd_hex_digit(':'), -1);
    cr_assert_eq(cbd_hex_digit('@'), -1);
    cr_assert_eq(cbd_hex_digit('`'), -1);
    cr_assert_eq(cbd_hex_digit('\0'), -1);
}
