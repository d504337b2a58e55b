/*
 * test_redis_item.c - every hash read from redis is validated before the
 * fleet layer sees it (cbd_redis_item_decode, store_redis.c), as strictly
 * as DynamoDB items are (test_dynamodb_item.c): a table of hashes that are
 * not circuits, each with the reason an operator reads in the log, and the
 * hashes cbd and Powertools-shaped writers leave, which decode.
 *
 * Hashes are built as RESP text and parsed by hiredis' reader, so the
 * decoder sees exactly the replies HGETALL gives.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_redis.h"

/* The reply RESP text resp parses to. */
static redisReply *reply_of(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;
    cr_assert_eq(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    cr_assert(redisReaderGetReply(rd, &reply) == REDIS_OK && reply != NULL, "not one reply: %s", resp);
    redisReaderFree(rd);
    return reply;
}

/* The reply to HGETALL of a hash holding the n strings fv (field, value,
 * ...); lens[i] 0 means strlen. */
static redisReply *hash_reply(const char *const *fv, const size_t *lens, size_t n)
{
    size_t cap = 64, used = 0;
    for (size_t i = 0; i < n; i++)
        cap += 32 + (lens && lens[i] ? lens[i] : strlen(fv[i]));
    char *buf = malloc(cap);
    used += (size_t)snprintf(buf, cap, "*%zu\r\n", n);
    for (size_t i = 0; i < n; i++) {
        size_t len = lens && lens[i] ? lens[i] : strlen(fv[i]);
        used += (size_t)snprintf(buf + used, cap - used, "$%zu\r\n", len);
        memcpy(buf + used, fv[i], len);
        used += len;
        memcpy(buf + used, "\r\n", 2);
        used += 2;
    }
    redisReader *rd = redisReaderCreate();
    void *reply = NULL;
    cr_assert_eq(redisReaderFeed(rd, buf, used), REDIS_OK);
    cr_assert(redisReaderGetReply(rd, &reply) == REDIS_OK && reply != NULL);
    redisReaderFree(rd);
    free(buf);
    return reply;
}

static int decode(const char *const *fv, size_t n, struct fleet_item *it, char *why, size_t size)
{
    redisReply *r = hash_reply(fv, NULL, n);
    int rc = cbd_redis_item_decode(r->element, r->elements, it, why, size);
    freeReplyObject(r);
    return rc;
}

#define FV(...) ((const char *const[]){__VA_ARGS__}), sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *)

Test(redis_item, the_hashes_cbd_writes_decode_with_what_each_state_uses)
{
    struct fleet_item it;
    char why[300];
    cr_assert_eq(decode(FV("state", "OPEN", "failure_count", "5", "opened_at", "1700000000", "updated_ms",
                           "1700000000123", "version", "7"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.exists && it.state == CB_OPEN && it.failure_count == 5 && it.opened_at == 1700000000 &&
              it.updated_at == 1700000000 && it.owner[0] == '\0' && it.lease_expiry == 0);
    cr_assert_eq(decode(FV("state", "HALF_OPEN", "failure_count", "5", "opened_at", "1700000000", "half_open_owner",
                           "vm:A:12:0f", "probe_lease_expiry", "1700000031", "future_field", "anything"), &it, why,
                        sizeof why), 1, "%s", why);
    cr_assert(it.state == CB_HALF_OPEN && strcmp(it.owner, "vm:A:12:0f") == 0 && it.lease_expiry == 1700000031,
              "a field the layout does not name is ignored");
    cr_assert_eq(decode(FV("state", "CLOSED", "failure_count", "0", "opened_at", "1700000000"), &it, why,
                        sizeof why), 1, "%s", why);
    cr_assert(it.state == CB_CLOSED && it.opened_at == 0, "what the state does not use is dropped");
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "0001700000000"), &it, why, sizeof why), 1,
                 "leading zeros are harmless: %s", why);
    cr_assert_eq(it.failure_count, 0, "a missing failure_count reads as 0");
    cr_assert_eq(decode(NULL, 0, &it, why, sizeof why), 0, "no fields: no such hash");
    cr_assert_not(it.exists);
}

struct bad_hash {
    char what[64];
    char fv[8][160]; /* field, value, ...: copied, as criterion passes parameters by value */
    size_t n;
    char why[128];
};

ParameterizedTestParameters(redis_item, hashes_that_are_not_circuits_are_refused_with_the_reason)
{
    static struct bad_hash cases[] = {
        {"no state", {"opened_at", "1700000000"}, 2, "no 'state' field"},
        {"an unknown state", {"state", "BANANA"}, 2, "field 'state' is 'BANANA', not CLOSED, OPEN or HALF_OPEN"},
        {"a state in lowercase", {"state", "open", "opened_at", "1"}, 4, "field 'state' is 'open'"},
        {"OPEN without opened_at", {"state", "OPEN", "failure_count", "5"}, 4,
         "OPEN needs 'opened_at' (epoch seconds, 1 to 9000000000)"},
        {"OPEN at 0", {"state", "OPEN", "opened_at", "0"}, 4, "OPEN needs 'opened_at'"},
        {"opened_at not a number", {"state", "OPEN", "opened_at", "soon"}, 4,
         "field 'opened_at' is not a number ('soon')"},
        {"opened_at with a sign", {"state", "OPEN", "opened_at", "+1700000000"}, 4,
         "field 'opened_at' is not a number ('+1700000000')"},
        {"opened_at negative", {"state", "OPEN", "opened_at", "-5"}, 4, "field 'opened_at' is negative ('-5')"},
        {"opened_at with a fraction", {"state", "OPEN", "opened_at", "1700000000.5"}, 4,
         "field 'opened_at' is not a whole number"},
        {"opened_at in 2255", {"state", "OPEN", "opened_at", "9000000001"}, 4,
         "field 'opened_at' is after 2255-03-14 (epoch second 9000000000)"},
        {"an empty number", {"state", "OPEN", "opened_at", ""}, 4, "field 'opened_at' is an empty number"},
        {"failure_count beyond 32 bits", {"state", "CLOSED", "failure_count", "4294967296"}, 4,
         "field 'failure_count' is more than 4294967295"},
        {"HALF_OPEN without owner", {"state", "HALF_OPEN", "opened_at", "1700000000", "probe_lease_expiry", "1700000030"},
         6, "HALF_OPEN needs 'half_open_owner' (the probe holder's id, 1 to 95 bytes)"},
        {"HALF_OPEN with an empty owner", {"state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner", "",
                                           "probe_lease_expiry", "1700000030"}, 8, "HALF_OPEN needs 'half_open_owner'"},
        {"HALF_OPEN without lease", {"state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner", "h:A:1"}, 6,
         "HALF_OPEN needs 'probe_lease_expiry' (epoch seconds, 0 to 9000000000)"},
        {"a lease in 5138", {"state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner", "h:A:1",
                             "probe_lease_expiry", "99999999999"}, 8, "field 'probe_lease_expiry' is after 2255-03-14"},
        {"an owner longer than cbd holds", {"state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner",
                                            "0123456789012345678901234567890123456789012345678901234567890123456789"
                                            "01234567890123456789012345678901234567890123456789",
                                            "probe_lease_expiry", "1"}, 8,
         "field 'half_open_owner' is 120 bytes, more than the 95 cbd holds"},
        {"version not a number", {"state", "CLOSED", "version", "v1"}, 4, "field 'version' is not a number ('v1')"},
        {"version beyond 2^53", {"state", "CLOSED", "version", "9007199254740993"}, 4,
         "field 'version' is more than 9007199254740992"},
        {"updated_ms not a number", {"state", "CLOSED", "updated_ms", "x"}, 4, "field 'updated_ms' is not a number"},
        {"updated_ms in 2255", {"state", "CLOSED", "updated_ms", "9000000000001"}, 4,
         "field 'updated_ms' is after 2255-03-14"},
        {"an odd list", {"state", "OPEN", "opened_at"}, 3, "an odd field/value list (3 elements)"},
        {"a field twice", {"state", "OPEN", "opened_at", "1", "state", "CLOSED"}, 6, "field 'state' appears twice"},
        {"open_until not a number", {"state", "OPEN", "opened_at", "1700000000", "open_until", "soon",
                                     "open_until_of", "1700000000"}, 8, "field 'open_until' is not a number ('soon')"},
        {"open_until_of negative", {"state", "OPEN", "opened_at", "1700000000", "open_until", "1700000095",
                                    "open_until_of", "-1"}, 8, "field 'open_until_of' is negative ('-1')"},
        {"open_until in 2255", {"state", "OPEN", "opened_at", "1700000000", "open_until", "9000000001",
                                "open_until_of", "1700000000"}, 8, "field 'open_until' is after 2255-03-14"},
        {"open_until without its opening", {"state", "OPEN", "opened_at", "1700000000", "open_until", "1700000095"},
         6, "field 'open_until' without 'open_until_of'"},
        {"open_until_of without open_until", {"state", "OPEN", "opened_at", "1700000000", "open_until_of",
                                              "1700000000"}, 6, "field 'open_until_of' without 'open_until'"},
    };
    return cr_make_param_array(struct bad_hash, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct bad_hash *b, redis_item, hashes_that_are_not_circuits_are_refused_with_the_reason)
{
    struct fleet_item it;
    char why[300] = "";
    const char *fv[8];
    for (size_t i = 0; i < b->n; i++)
        fv[i] = b->fv[i];
    cr_assert_eq(decode(fv, b->n, &it, why, sizeof why), -EBADMSG, "%s: accepted", b->what);
    cr_assert(strstr(why, b->why) != NULL, "%s: '%s' does not say '%s'", b->what, why, b->why);
}

Test(redis_item, a_deadline_is_read_only_for_the_opening_it_belongs_to)
{
    struct fleet_item it;
    char why[300];
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000", "open_until", "1700000095", "open_until_of",
                           "1700000000"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.open_until == 1700000095 && it.open_until_of == 1700000000);
    cr_assert_eq(decode(FV("state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner", "h:A:1",
                           "probe_lease_expiry", "1700000130", "open_until", "1700000095", "open_until_of",
                           "1700000000"), &it, why, sizeof why), 1, "%s", why);
    cr_assert_eq(it.open_until, 1700000095, "an election keeps it");
    /* Powertools reopened it: the pair of the earlier opening stays behind. */
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000200", "open_until", "1700000095", "open_until_of",
                           "1700000000"), &it, why, sizeof why), 1, "stale is valid: %s", why);
    cr_assert(it.open_until == 0 && it.open_until_of == 1700000000, "a stale deadline reads 0");
    cr_assert_eq(decode(FV("state", "CLOSED", "open_until", "1700000095", "open_until_of", "1700000000"), &it, why,
                        sizeof why), 1, "%s", why);
    cr_assert_eq(it.open_until, 0);
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.open_until == 0 && it.open_until_of == 0, "absent: none");
}

Test(redis_item, an_open_hash_that_still_has_an_owner_field_is_refused)
{
    /* The script elects only where the field is absent (an empty value
     * counts as present in Lua): adopted as "OPEN, no owner", every host
     * would ask for the lease and be refused, forever. */
    struct fleet_item it;
    char why[300] = "";
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000", "half_open_owner", ""), &it, why, sizeof why),
                 -EBADMSG);
    cr_assert(strstr(why, "an OPEN hash with field 'half_open_owner'") != NULL, "%s", why);
}

Test(redis_item, a_one_megabyte_version_field_is_refused_quoted_short)
{
    struct fleet_item it;
    char why[300] = "";
    char *huge = malloc((1 << 20) + 1);
    memset(huge, '7', 1 << 20);
    huge[1 << 20] = '\0';
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000", "version", huge), &it, why, sizeof why),
                 -EBADMSG, "a hash with a 1 MB version was adopted");
    cr_assert(strstr(why, "field 'version' is more than 9007199254740992 ('7777777777") != NULL, "%s", why);
    cr_assert(strstr(why, "...')") != NULL, "the value is quoted cut: %s", why);
    free(huge);
}

Test(redis_item, values_that_are_not_strings_and_nul_bytes_in_the_owner_are_refused)
{
    struct fleet_item it;
    char why[300];
    const char *fv[] = {"state", "HALF_OPEN", "opened_at", "1700000000", "half_open_owner", "a\0b",
                        "probe_lease_expiry", "1700000030"};
    size_t lens[] = {0, 0, 0, 0, 0, 3, 0, 0};
    redisReply *r = hash_reply(fv, lens, 8);
    cr_assert_eq(cbd_redis_item_decode(r->element, r->elements, &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "field 'half_open_owner' holds a NUL byte ('a\\x00b')"), "%s", why);
    freeReplyObject(r);
    /* a script answer can hold integers where strings belong */
    r = reply_of("*4\r\n$5\r\nstate\r\n$4\r\nOPEN\r\n$9\r\nopened_at\r\n:1700000000\r\n");
    cr_assert_eq(cbd_redis_item_decode(r->element, r->elements, &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "field 'opened_at' is not a string"), "%s", why);
    freeReplyObject(r);
    r = reply_of("*2\r\n:1\r\n$4\r\nOPEN\r\n");
    cr_assert_eq(cbd_redis_item_decode(r->element, r->elements, &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "a field name that is not a string"), "%s", why);
    freeReplyObject(r);
}

/* ---- a shadow trial's marker ------------------------------------------------------------ */

Test(redis_item, a_shadow_marker_beside_the_item_is_read_and_changes_nothing_real)
{
    struct fleet_item it;
    char why[300];
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000", "shadow_state", "CLOSED", "shadow_since",
                           "1700000009", "shadow_host", "vm:A:12:0f"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.exists && it.state == CB_OPEN && it.opened_at == 1700000000);
    cr_assert(it.shadow.state == CB_CLOSED && it.shadow.since == 1700000009 && strcmp(it.shadow.host, "vm:A:12:0f") == 0);
}

Test(redis_item, a_hash_holding_only_a_shadow_marker_is_no_item)
{
    struct fleet_item it;
    char why[300];
    cr_assert_eq(decode(FV("shadow_state", "OPEN", "shadow_since", "1700000009", "shadow_host", "h"), &it, why,
                        sizeof why), 0, "%s", why);
    cr_assert(!it.exists && it.shadow.state == CB_OPEN && it.shadow.since == 1700000009);
    cr_assert_eq(decode(FV("shadow_state", "OPEN", "shadow_host", "h"), &it, why, sizeof why), -EBADMSG,
                 "a bad marker alone is no hash of any kind");
    cr_assert_str_eq(why, "no 'state' field");
}

Test(redis_item, a_bad_shadow_marker_is_dropped_and_flagged_and_the_hash_stays_valid)
{
    struct fleet_item it;
    char why[300];
    cr_assert_eq(decode(FV("state", "OPEN", "opened_at", "1700000000", "shadow_state", "OPEN", "shadow_since", "soon",
                           "shadow_host", "h"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.state == CB_OPEN && it.shadow_invalid && it.shadow.since == 0);
    cr_assert_eq(decode(FV("state", "CLOSED", "shadow_state", "OPEN", "shadow_since", "5", "shadow_host", "h",
                           "shadow_host", "g"), &it, why, sizeof why), 1, "%s", why);
    cr_assert(it.shadow_invalid, "a part written twice");
}
