/*
 * test_dynamodb_item.c - the Powertools item codec (persistence/dynamodb_item.c):
 * the items Powertools writes decode to what they mean, a table of bad items
 * is refused with a message naming the fault, what cbd encodes decodes back
 * to itself, names are carried as any byte string a key holds, and the
 * GetItem / BatchGetItem answer parsers keep one odd item from spoiling the
 * others.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <string.h>

#include "dynamodb_item.h"

TestSuite(dynamodb_item);

#define PT_OWNER "4242#0f8fad5b-d9cb-469f-a165-70867728950e"

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_ALLOW_NUL | JSON_DECODE_ANY, &e);
    cr_assert_not_null(j, "test input is not JSON: %s (%s)", e.text, text);
    return j;
}

/* Decode text with layout l: the return code; *it and why filled. */
static int decode_with(const struct cbd_ddb_layout *l, const char *text, struct cbd_ddb_item *it, char *why,
                       size_t size)
{
    json_t *j = parse(text);
    why[0] = '\0';
    int rc = cbd_ddb_item_decode(l, j, it, why, size);
    json_decref(j);
    return rc;
}

static struct cbd_ddb_item decode_ok(const char *text)
{
    struct cbd_ddb_item it;
    char why[256];
    int rc = decode_with(&cbd_ddb_default_layout, text, &it, why, sizeof why);
    cr_assert_eq(rc, 0, "refused: %s\nitem: %s", why, text);
    return it;
}

/* ---- what Powertools writes ---------------------------------------------------------- */

Test(dynamodb_item, powertools_trip_item_decodes_as_open)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"payments\"},\"state\":{\"S\":\"OPEN\"},\"failure_count\":"
                                       "{\"N\":\"5\"},\"opened_at\":{\"N\":\"1700000000\"},\"expiration\":{\"N\":"
                                       "\"1700003630\"}}");
    cr_assert_str_eq(it.name, "payments");
    cr_assert_eq(it.name_len, 8);
    cr_assert_eq(it.state, CB_OPEN);
    cr_assert_eq(it.failure_count, 5);
    cr_assert_eq(it.opened_at, 1700000000);
    cr_assert_str_eq(it.owner, "");
    cr_assert_eq(it.lease_expiry, 0);
    cr_assert_eq(it.expiration, 1700003630);
}

Test(dynamodb_item, powertools_election_item_decodes_as_half_open_with_its_owner)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"payments\"},\"state\":{\"S\":\"HALF_OPEN\"},"
                                       "\"failure_count\":{\"N\":\"5\"},\"opened_at\":{\"N\":\"1700000000\"},"
                                       "\"half_open_owner\":{\"S\":\"" PT_OWNER "\"},\"probe_lease_expiry\":{\"N\":"
                                       "\"1700000060\"},\"expiration\":{\"N\":\"1700003660\"}}");
    cr_assert_eq(it.state, CB_HALF_OPEN);
    cr_assert_str_eq(it.owner, PT_OWNER);
    cr_assert_eq(it.lease_expiry, 1700000060);
    cr_assert_eq(it.opened_at, 1700000000);
}

Test(dynamodb_item, powertools_close_leaves_a_closed_item_without_opening)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"payments\"},\"state\":{\"S\":\"CLOSED\"},"
                                       "\"failure_count\":{\"N\":\"0\"},\"expiration\":{\"N\":\"1700003690\"}}");
    cr_assert_eq(it.state, CB_CLOSED);
    cr_assert_eq(it.opened_at, 0);
    cr_assert_eq(it.failure_count, 0);
}

Test(dynamodb_item, attributes_a_state_does_not_use_are_checked_then_dropped)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"CLOSED\"},\"opened_at\":{\"N\":"
                                       "\"1700000000\"},\"half_open_owner\":{\"S\":\"x\"},\"probe_lease_expiry\":"
                                       "{\"N\":\"1700000060\"}}");
    cr_assert_eq(it.opened_at, 0);
    cr_assert_str_eq(it.owner, "");
    cr_assert_eq(it.lease_expiry, 0);
    it = decode_ok("{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"1700000000\"},"
                   "\"probe_lease_expiry\":{\"N\":\"1700000060\"}}");
    cr_assert_eq(it.lease_expiry, 0);
}

Test(dynamodb_item, an_open_item_that_still_names_a_probe_owner_is_refused)
{
    /* The election's condition is attribute_not_exists(half_open_owner):
     * adopted as "OPEN, no owner", every host would ask for the lease and be
     * refused, forever. */
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&cbd_ddb_default_layout,
                             "{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":"
                             "\"1700000000\"},\"half_open_owner\":{\"S\":\"owner\"}}",
                             &it, why, sizeof why),
                 -EBADMSG);
    cr_assert(strstr(why, "an OPEN item with attribute 'half_open_owner'") != NULL, "%s", why);
}

Test(dynamodb_item, a_missing_failure_count_or_expiration_reads_as_zero)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":"
                                       "\"1700000000\"}}");
    cr_assert_eq(it.failure_count, 0);
    cr_assert_eq(it.expiration, 0);
}

Test(dynamodb_item, attributes_the_layout_does_not_name_are_ignored)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"CLOSED\"},\"note\":{\"M\":{}},"
                                       "\"version\":{\"N\":\"-1.5\"}}");
    cr_assert_eq(it.state, CB_CLOSED);
}

Test(dynamodb_item, the_largest_values_cbd_holds_decode)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"OPEN\"},\"failure_count\":"
                                       "{\"N\":\"4294967295\"},\"opened_at\":{\"N\":\"9000000000\"},"
                                       "\"expiration\":{\"N\":\"0009000000000\"}}");
    cr_assert_eq(it.failure_count, UINT32_MAX);
    cr_assert_eq(it.opened_at, CBD_DDB_TIME_MAX);
    cr_assert_eq(it.expiration, CBD_DDB_TIME_MAX, "leading zeros are harmless");
}

Test(dynamodb_item, configured_attribute_names_are_the_ones_read)
{
    const struct cbd_ddb_layout l = {.pk = "pk", .sk = "", .static_pk = "", .state = "st", .failure_count = "fc",
                                     .opened_at = "oa", .owner = "own", .lease = "le", .expiration = "ttl"};
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&l, "{\"pk\":{\"S\":\"p\"},\"st\":{\"S\":\"HALF_OPEN\"},\"oa\":{\"N\":\"10\"},"
                                 "\"own\":{\"S\":\"me\"},\"le\":{\"N\":\"40\"},\"state\":{\"N\":\"1\"}}",
                             &it, why, sizeof why), 0, "%s", why);
    cr_assert_eq(it.state, CB_HALF_OPEN);
    cr_assert_str_eq(it.owner, "me");
    cr_assert_eq(decode_with(&l, "{\"pk\":{\"S\":\"p\"},\"st\":{\"S\":\"OPEN\"},\"oa\":{\"S\":\"10\"}}", &it, why,
                             sizeof why), -EBADMSG);
    cr_assert(strstr(why, "attribute 'oa' is S, expected N"), "%s", why);
}

/* cbd's deadline attributes: Powertools never writes them and ignores them. */
Test(dynamodb_item, a_deadline_is_read_only_for_the_opening_it_belongs_to)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"pay\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":"
                                       "\"1700000000\"},\"cbd_open_until\":{\"N\":\"1700000095\"},"
                                       "\"cbd_open_until_of\":{\"N\":\"1700000000\"}}");
    cr_assert(it.open_until == 1700000095 && it.open_until_of == 1700000000);
    /* A Powertools function reopened it and left the pair of the opening before. */
    it = decode_ok("{\"id\":{\"S\":\"pay\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"1700000200\"},"
                   "\"cbd_open_until\":{\"N\":\"1700000095\"},\"cbd_open_until_of\":{\"N\":\"1700000000\"}}");
    cr_assert(it.open_until == 0 && it.open_until_of == 1700000000, "a stale deadline reads 0, and is valid");
    it = decode_ok("{\"id\":{\"S\":\"pay\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"1700000000\"}}");
    cr_assert(it.open_until == 0 && it.open_until_of == 0, "absent: none");
}

Test(dynamodb_item, configured_deadline_attribute_names_are_the_ones_read)
{
    struct cbd_ddb_layout l = cbd_ddb_default_layout;
    l.open_until = "until";
    l.open_until_of = "until_of";
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&l, "{\"id\":{\"S\":\"p\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":\"10\"},"
                                 "\"until\":{\"N\":\"95\"},\"until_of\":{\"N\":\"10\"},"
                                 "\"cbd_open_until\":{\"S\":\"x\"}}", &it, why, sizeof why), 0, "%s", why);
    cr_assert_eq(it.open_until, 95);
}

/* ---- names: any byte string a DynamoDB key holds -------------------------------------- */

Test(dynamodb_item, names_powertools_accepts_are_carried_byte_for_byte)
{
    static const struct { const char *json, *bytes; size_t len; } names[] = {
        {"checkout api", "checkout api", 12},
        {"orders#eu-west-1", "orders#eu-west-1", 16},
        {"zahlungsdienst-\\u00e9", "zahlungsdienst-\xc3\xa9", 17},
        {"\\u540d\\u524d", "\xe5\x90\x8d\xe5\x89\x8d", 6},
        {"a\\u0000b", "a\0b", 3},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, "{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"CLOSED\"}}", names[i].json);
        struct cbd_ddb_item it = decode_ok(text);
        cr_assert_eq(it.name_len, names[i].len, "%s: %zu bytes", names[i].json, it.name_len);
        cr_assert_eq(memcmp(it.name, names[i].bytes, names[i].len), 0, "%s", names[i].json);
        char why[128];
        json_t *enc = cbd_ddb_item_encode(&cbd_ddb_default_layout, &it, why, sizeof why);
        cr_assert_not_null(enc, "%s: %s", names[i].json, why);
        json_t *v = json_object_get(json_object_get(enc, "id"), "S");
        cr_assert_eq(json_string_length(v), names[i].len);
        cr_assert_eq(memcmp(json_string_value(v), names[i].bytes, names[i].len), 0);
        json_decref(enc);
    }
}

Test(dynamodb_item, a_partition_key_of_2048_bytes_is_carried_and_one_more_is_refused)
{
    static char text[4096], name[CBD_DDB_PK_MAX + 2];
    struct cbd_ddb_item it;
    char why[256];
    memset(name, 'n', CBD_DDB_PK_MAX);
    snprintf(text, sizeof text, "{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"CLOSED\"}}", name);
    cr_assert_eq(decode_ok(text).name_len, CBD_DDB_PK_MAX);
    name[CBD_DDB_PK_MAX] = 'n';
    snprintf(text, sizeof text, "{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"CLOSED\"}}", name);
    cr_assert_eq(decode_with(&cbd_ddb_default_layout, text, &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "2049 bytes, more than 2048"), "%s", why);
}

/* ---- a table of bad items ---------------------------------------------------------------- */

/* Arrays, not pointers: criterion copies parameters into each test's process. */
struct bad_item {
    char what[64];
    char item[512];     /* JSON */
    char why[128];      /* what the message must say */
    bool name_known;    /* the key was valid: the message can be filed under the circuit */
};

#define ID "\"id\":{\"S\":\"pay\"},"
#define OA "\"opened_at\":{\"N\":\"1700000000\"},"
#define OWN "\"half_open_owner\":{\"S\":\"" PT_OWNER "\"},"
#define LEASE "\"probe_lease_expiry\":{\"N\":\"1700000060\"},"
#define OPEN "\"state\":{\"S\":\"OPEN\"}"
#define HALF "\"state\":{\"S\":\"HALF_OPEN\"}"
#define CLOSED "\"state\":{\"S\":\"CLOSED\"}"
#define O96 "oooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooooo"

ParameterizedTestParameters(dynamodb_item, bad_items_are_refused_with_a_message_naming_the_fault)
{
    static struct bad_item bad[] = {
        {"state as N", "{" ID "\"state\":{\"N\":\"1\"}}", "attribute 'state' is N, expected S", true},
        {"state as BOOL", "{" ID "\"state\":{\"BOOL\":true}}", "attribute 'state' is BOOL, expected S", true},
        {"opened_at as S", "{" ID "\"opened_at\":{\"S\":\"1700000000\"}," OPEN "}",
         "attribute 'opened_at' is S, expected N", true},
        {"failure_count as S", "{" ID "\"failure_count\":{\"S\":\"5\"}," CLOSED "}",
         "attribute 'failure_count' is S, expected N", true},
        {"owner as N", "{" ID OA LEASE "\"half_open_owner\":{\"N\":\"7\"}," HALF "}",
         "attribute 'half_open_owner' is N, expected S", true},
        {"lease as S", "{" ID OA OWN "\"probe_lease_expiry\":{\"S\":\"1700000060\"}," HALF "}",
         "attribute 'probe_lease_expiry' is S, expected N", true},
        {"expiration as NULL", "{" ID "\"expiration\":{\"NULL\":true}," CLOSED "}",
         "attribute 'expiration' is NULL, expected N", true},
        {"id as N", "{\"id\":{\"N\":\"7\"}," CLOSED "}", "attribute 'id' is N, expected S", false},
        {"no id", "{" CLOSED "}", "no key attribute 'id'", false},
        {"empty id", "{\"id\":{\"S\":\"\"}," CLOSED "}", "key attribute 'id' is empty", false},
        {"no state", "{" ID OA "\"failure_count\":{\"N\":\"5\"}}", "no 'state' attribute", true},
        {"unknown state", "{" ID "\"state\":{\"S\":\"BANANA\"}}",
         "attribute 'state' is 'BANANA', not CLOSED, OPEN or HALF_OPEN", true},
        {"state in lower case", "{" ID "\"state\":{\"S\":\"open\"}}", "'open', not CLOSED", true},
        {"state with a NUL byte", "{" ID "\"state\":{\"S\":\"OPEN\\u0000\"}}", "'OPEN\\x00', not CLOSED", true},
        {"two type tags", "{" ID CLOSED ",\"failure_count\":{\"N\":\"5\",\"S\":\"5\"}}",
         "attribute 'failure_count' is not one DynamoDB attribute value", true},
        {"no type tag", "{" ID CLOSED ",\"expiration\":{}}", "attribute 'expiration' is not one DynamoDB", true},
        {"attribute value not an object", "{" ID CLOSED ",\"expiration\":1700000000}",
         "attribute 'expiration' is not one DynamoDB", true},
        {"N as a JSON number", "{" ID "\"opened_at\":{\"N\":1700000000}," OPEN "}",
         "attribute 'opened_at' is N without a string of digits", true},
        {"S as a JSON number", "{" ID "\"state\":{\"S\":1}}", "attribute 'state' is S without a string", true},
        {"negative opened_at", "{" ID "\"opened_at\":{\"N\":\"-5\"}," OPEN "}",
         "attribute 'opened_at' is negative ('-5')", true},
        {"negative failure_count", "{" ID "\"failure_count\":{\"N\":\"-1\"}," CLOSED "}",
         "attribute 'failure_count' is negative", true},
        {"opened_at beyond 2255", "{" ID "\"opened_at\":{\"N\":\"9000000001\"}," OPEN "}",
         "attribute 'opened_at' is after 2255-03-14 (epoch second 9000000000) ('9000000001')", true},
        {"lease beyond 2255", "{" ID OA OWN "\"probe_lease_expiry\":{\"N\":\"99999999999999999999\"}," HALF "}",
         "attribute 'probe_lease_expiry' is after 2255-03-14", true},
        {"expiration beyond 2255", "{" ID CLOSED ",\"expiration\":{\"N\":\"300000000000\"}}",
         "attribute 'expiration' is after 2255-03-14", true},
        {"fractional opened_at", "{" ID "\"opened_at\":{\"N\":\"1700000000.5\"}," OPEN "}",
         "attribute 'opened_at' is not a whole number ('1700000000.5')", true},
        {"opened_at with an exponent", "{" ID "\"opened_at\":{\"N\":\"1.7E9\"}," OPEN "}",
         "attribute 'opened_at' is not a whole number", true},
        {"fractional failure_count", "{" ID "\"failure_count\":{\"N\":\"2.5\"}," CLOSED "}",
         "attribute 'failure_count' is not a whole number", true},
        {"opened_at not a number", "{" ID "\"opened_at\":{\"N\":\"soon\"}," OPEN "}",
         "attribute 'opened_at' is not a number ('soon')", true},
        {"empty number", "{" ID "\"opened_at\":{\"N\":\"\"}," OPEN "}", "attribute 'opened_at' is an empty number",
         true},
        {"failure_count beyond 32 bits", "{" ID "\"failure_count\":{\"N\":\"4294967296\"}," CLOSED "}",
         "attribute 'failure_count' is more than 4294967295", true},
        {"more digits than fit", "{" ID "\"failure_count\":{\"N\":\"12345678901234567890123456789012345678\"}," CLOSED
         "}", "attribute 'failure_count' is more than 4294967295", true},
        {"OPEN without opened_at", "{" ID "\"failure_count\":{\"N\":\"5\"}," OPEN "}", "OPEN needs 'opened_at'", true},
        {"OPEN opened at 0", "{" ID "\"opened_at\":{\"N\":\"0\"}," OPEN "}", "OPEN needs 'opened_at'", true},
        {"HALF_OPEN without opened_at", "{" ID OWN LEASE HALF "}", "HALF_OPEN needs 'opened_at'", true},
        {"HALF_OPEN without owner", "{" ID OA LEASE HALF "}", "HALF_OPEN needs 'half_open_owner'", true},
        {"HALF_OPEN with an empty owner", "{" ID OA LEASE "\"half_open_owner\":{\"S\":\"\"}," HALF "}",
         "HALF_OPEN needs 'half_open_owner'", true},
        {"HALF_OPEN without lease", "{" ID OA OWN HALF "}", "HALF_OPEN needs 'probe_lease_expiry'", true},
        {"oversized owner", "{" ID OA LEASE "\"half_open_owner\":{\"S\":\"" O96 "\"}," HALF "}",
         "attribute 'half_open_owner' is 96 bytes, more than the 95 cbd holds", true},
        {"owner with a NUL byte", "{" ID OA LEASE "\"half_open_owner\":{\"S\":\"1#a\\u0000b\"}," HALF "}",
         "attribute 'half_open_owner' holds a NUL byte ('1#a\\x00b')", true},
        {"deadline not a number", "{" ID OA "\"cbd_open_until\":{\"N\":\"soon\"},\"cbd_open_until_of\":{\"N\":"
         "\"1700000000\"}," OPEN "}", "attribute 'cbd_open_until' is not a number ('soon')", true},
        {"deadline as S", "{" ID OA "\"cbd_open_until\":{\"S\":\"1700000095\"},\"cbd_open_until_of\":{\"N\":"
         "\"1700000000\"}," OPEN "}", "attribute 'cbd_open_until' is S, expected N", true},
        {"deadline's opening negative", "{" ID OA "\"cbd_open_until\":{\"N\":\"1700000095\"},\"cbd_open_until_of\":"
         "{\"N\":\"-1\"}," OPEN "}", "attribute 'cbd_open_until_of' is negative", true},
        {"deadline without its opening", "{" ID OA "\"cbd_open_until\":{\"N\":\"1700000095\"}," OPEN "}",
         "attribute 'cbd_open_until' without 'cbd_open_until_of'", true},
        {"deadline's opening alone", "{" ID OA "\"cbd_open_until_of\":{\"N\":\"1700000000\"}," OPEN "}",
         "attribute 'cbd_open_until_of' without 'cbd_open_until'", true},
        {"a number, not an item", "17", "not an object", false},
        {"an array, not an item", "[{" CLOSED "}]", "not an object", false},
    };
    return cr_make_param_array(struct bad_item, bad, sizeof bad / sizeof bad[0]);
}

ParameterizedTest(struct bad_item *b, dynamodb_item, bad_items_are_refused_with_a_message_naming_the_fault)
{
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&cbd_ddb_default_layout, b->item, &it, why, sizeof why), -EBADMSG,
                 "%s: accepted %s", b->what, b->item);
    cr_assert(strstr(why, b->why), "%s: the message is '%s', expected it to say '%s'", b->what, why, b->why);
    cr_assert_eq(it.name_len > 0, b->name_known, "%s: name_len %zu", b->what, it.name_len);
    if (b->name_known)
        cr_assert_str_eq(it.name, "pay", "%s: the message can be filed under its circuit", b->what);
}

/* ---- composite keys ------------------------------------------------------------------- */

static const struct cbd_ddb_layout composite = {
    .pk = "id", .sk = "name", .static_pk = "circuit_breaker#orders", .state = "state",
    .failure_count = "failure_count", .opened_at = "opened_at", .owner = "half_open_owner",
    .lease = "probe_lease_expiry", .expiration = "expiration"};

Test(dynamodb_item, composite_items_carry_the_name_in_the_sort_key)
{
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&composite, "{\"id\":{\"S\":\"circuit_breaker#orders\"},\"name\":{\"S\":\"stock\"},"
                                         "\"state\":{\"S\":\"CLOSED\"}}", &it, why, sizeof why), 0, "%s", why);
    cr_assert_str_eq(it.name, "stock");
    json_t *key = cbd_ddb_key(&composite, "stock", 5), *want = parse("{\"id\":{\"S\":\"circuit_breaker#orders\"},"
                                                                    "\"name\":{\"S\":\"stock\"}}");
    cr_assert(json_equal(key, want), "key %s", json_dumps(key, JSON_COMPACT));
    json_decref(key);
    json_decref(want);
}

Test(dynamodb_item, a_composite_item_of_another_partition_is_refused)
{
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(decode_with(&composite, "{\"id\":{\"S\":\"circuit_breaker#billing\"},\"name\":{\"S\":\"stock\"},"
                                         "\"state\":{\"S\":\"CLOSED\"}}", &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "partition key 'id' is 'circuit_breaker#billing', not the circuits' "
                          "'circuit_breaker#orders'"), "%s", why);
    cr_assert_eq(it.name_len, 0);
    cr_assert_eq(decode_with(&composite, "{\"id\":{\"S\":\"circuit_breaker#orders\"},\"state\":{\"S\":\"CLOSED\"}}",
                             &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "no key attribute 'name'"), "%s", why);
}

Test(dynamodb_item, a_sort_key_holds_1024_bytes)
{
    static char text[4096], name[CBD_DDB_SK_MAX + 2];
    struct cbd_ddb_item it;
    char why[256];
    memset(name, 's', CBD_DDB_SK_MAX + 1);
    snprintf(text, sizeof text, "{\"id\":{\"S\":\"circuit_breaker#orders\"},\"name\":{\"S\":\"%s\"},\"state\":{"
             "\"S\":\"CLOSED\"}}", name);
    cr_assert_eq(decode_with(&composite, text, &it, why, sizeof why), -EBADMSG);
    cr_assert(strstr(why, "1025 bytes, more than 1024"), "%s", why);
}

/* ---- encoding ----------------------------------------------------------------------------- */

static struct cbd_ddb_item item(const char *name, cb_state st, int64_t opened_at, const char *owner, int64_t lease)
{
    struct cbd_ddb_item it = {.state = st, .failure_count = 5, .opened_at = opened_at, .lease_expiry = lease,
                              .expiration = 1700003630};
    it.name_len = strlen(name);
    memcpy(it.name, name, it.name_len);
    snprintf(it.owner, sizeof it.owner, "%s", owner);
    return it;
}

Test(dynamodb_item, cbd_writes_the_trip_item_powertools_writes)
{
    struct cbd_ddb_item it = item("payments", CB_OPEN, 1700000000, "", 0);
    char why[128];
    json_t *enc = cbd_ddb_item_encode(&cbd_ddb_default_layout, &it, why, sizeof why);
    json_t *pt = parse("{\"id\":{\"S\":\"payments\"},\"state\":{\"S\":\"OPEN\"},\"failure_count\":{\"N\":\"5\"},"
                       "\"opened_at\":{\"N\":\"1700000000\"},\"expiration\":{\"N\":\"1700003630\"}}");
    cr_assert(json_equal(enc, pt), "cbd wrote %s", json_dumps(enc, JSON_COMPACT));
    json_decref(enc);
    json_decref(pt);
}

Test(dynamodb_item, a_closed_item_is_written_without_opening_owner_or_lease)
{
    struct cbd_ddb_item it = item("payments", CB_CLOSED, 1700000000, "me", 1700000060);
    char why[128];
    json_t *enc = cbd_ddb_item_encode(&cbd_ddb_default_layout, &it, why, sizeof why);
    cr_assert_not_null(enc, "%s", why);
    cr_assert_null(json_object_get(enc, "opened_at"));
    cr_assert_null(json_object_get(enc, "half_open_owner"));
    cr_assert_null(json_object_get(enc, "probe_lease_expiry"));
    json_decref(enc);
}

Test(dynamodb_item, what_cbd_encodes_decodes_back_to_itself)
{
    struct cbd_ddb_item items[] = {
        item("payments", CB_OPEN, 1700000000, "", 0),
        item("payments", CB_HALF_OPEN, 1700000000, PT_OWNER, 1700000060),
        item("payments", CB_HALF_OPEN, CBD_DDB_TIME_MAX, "o", 0),
        item("checkout api#\xc3\xa9", CB_CLOSED, 0, "", 0),
        item("payments", CB_OPEN, 1700000000, "", 0),
        item("payments", CB_OPEN, 1700000200, "", 0),
    };
    items[4].open_until = 1700000095; /* this opening's */
    items[4].open_until_of = 1700000000;
    items[5].open_until_of = 1700000000; /* the pair of an earlier one: kept, reading 0 */
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        char why[128];
        struct cbd_ddb_item back;
        json_t *enc = cbd_ddb_item_encode(&cbd_ddb_default_layout, &items[i], why, sizeof why);
        cr_assert_not_null(enc, "item %zu: %s", i, why);
        cr_assert_eq(cbd_ddb_item_decode(&cbd_ddb_default_layout, enc, &back, why, sizeof why), 0, "item %zu: %s", i,
                     why);
        cr_assert_eq(memcmp(&back, &items[i], sizeof back), 0, "item %zu changed on the way", i);
        json_decref(enc);
    }
}

Test(dynamodb_item, an_item_decode_would_refuse_is_never_encoded)
{
    const struct { struct cbd_ddb_item it; const char *why; } bad[] = {
        {item("p", CB_OPEN, 0, "", 0), "OPEN needs 'opened_at'"},
        {item("p", CB_HALF_OPEN, 1700000000, "", 1700000060), "HALF_OPEN needs 'half_open_owner'"},
        {item("p", CB_HALF_OPEN, 1700000000, "me", -1), "HALF_OPEN needs 'probe_lease_expiry'"},
        {item("p", CB_OPEN, CBD_DDB_TIME_MAX + 1, "", 0), "OPEN needs 'opened_at'"},
        {item("", CB_CLOSED, 0, "", 0), "the circuit name is 0 bytes"},
        {item("p", (cb_state)7, 0, "", 0), "state 7 is not CLOSED, OPEN or HALF_OPEN"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char why[128] = "";
        cr_assert_null(cbd_ddb_item_encode(&cbd_ddb_default_layout, &bad[i].it, why, sizeof why), "item %zu", i);
        cr_assert(strstr(why, bad[i].why), "item %zu: '%s'", i, why);
    }
}

/* ---- answers -------------------------------------------------------------------------------- */

static int get_answer(const char *body, json_t **root, json_t **item)
{
    return cbd_ddb_answer_get(body, strlen(body), root, item);
}

Test(dynamodb_item, a_get_answer_has_an_item_or_none)
{
    json_t *root, *it;
    cr_assert_eq(get_answer("{}", &root, &it), 0);
    cr_assert_null(it, "no Item: the table has none");
    json_decref(root);
    cr_assert_eq(get_answer("{\"Item\":{\"id\":{\"S\":\"x\"}}}", &root, &it), 0);
    cr_assert(json_is_object(it));
    json_decref(root);
    const char *garbage[] = {"", "{{{ not json", "[1,2,3]", "{\"Item\":17}", "{\"Item\":[]}", "\"Item\""};
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        cr_assert_eq(get_answer(garbage[i], &root, &it), -EBADMSG, "accepted '%s'", garbage[i]);
}

static int batch_answer(const char *body, json_t **root, json_t **items, json_t **unproc)
{
    return cbd_ddb_answer_batch(body, strlen(body), "cbd-circuits", root, items, unproc);
}

Test(dynamodb_item, a_batch_answer_gives_the_table_s_items_and_unprocessed_keys)
{
    json_t *root, *items, *unproc;
    cr_assert_eq(batch_answer("{\"Responses\":{\"cbd-circuits\":[{\"id\":{\"S\":\"a\"}}]},\"UnprocessedKeys\":{"
                              "\"cbd-circuits\":{\"Keys\":[{\"id\":{\"S\":\"b\"}}]}}}", &root, &items, &unproc), 0);
    cr_assert_eq(json_array_size(items), 1);
    cr_assert_eq(json_array_size(unproc), 1);
    json_decref(root);
    cr_assert_eq(batch_answer("{\"Responses\":{},\"UnprocessedKeys\":{}}", &root, &items, &unproc), 0);
    cr_assert(json_is_array(items) && json_array_size(items) == 0, "no item of the table: an empty list");
    cr_assert_null(unproc);
    json_decref(root);
    const char *garbage[] = {
        "{{{", "[]", "{}", "{\"Responses\":[]}", "{\"Responses\":{\"cbd-circuits\":{}}}",
        "{\"Responses\":{},\"UnprocessedKeys\":[]}", "{\"Responses\":{},\"UnprocessedKeys\":{\"cbd-circuits\":[]}}",
        "{\"Responses\":{},\"UnprocessedKeys\":{\"cbd-circuits\":{\"Keys\":{}}}}",
    };
    for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++)
        cr_assert_eq(batch_answer(garbage[i], &root, &items, &unproc), -EBADMSG, "accepted '%s'", garbage[i]);
}

Test(dynamodb_item, a_nul_byte_in_one_item_leaves_the_other_items_of_the_answer_readable)
{
    json_t *root, *items, *unproc;
    const char *body = "{\"Responses\":{\"cbd-circuits\":[{\"id\":{\"S\":\"a\"},\"state\":{\"S\":\"HALF_OPEN\"},"
                       "\"opened_at\":{\"N\":\"10\"},\"half_open_owner\":{\"S\":\"x\\u0000y\"},"
                       "\"probe_lease_expiry\":{\"N\":\"40\"}},{\"id\":{\"S\":\"b\"},\"state\":{\"S\":\"OPEN\"},"
                       "\"opened_at\":{\"N\":\"10\"}}]}}";
    cr_assert_eq(batch_answer(body, &root, &items, &unproc), 0, "the answer is read");
    struct cbd_ddb_item it;
    char why[256];
    cr_assert_eq(cbd_ddb_item_decode(&cbd_ddb_default_layout, json_array_get(items, 0), &it, why, sizeof why),
                 -EBADMSG);
    cr_assert_eq(cbd_ddb_item_decode(&cbd_ddb_default_layout, json_array_get(items, 1), &it, why, sizeof why), 0,
                 "%s", why);
    cr_assert_eq(it.state, CB_OPEN);
    json_decref(root);
}

Test(dynamodb_item, keys_decode_to_the_circuit_they_name)
{
    char name[128], why[256];
    size_t len;
    json_t *k = parse("{\"id\":{\"S\":\"pay\"}}");
    cr_assert_eq(cbd_ddb_key_decode(&cbd_ddb_default_layout, k, name, sizeof name, &len, why, sizeof why), 0);
    cr_assert_str_eq(name, "pay");
    json_decref(k);
    k = parse("{\"id\":{\"S\":\"" O96 O96 "\"}}");
    cr_assert_eq(cbd_ddb_key_decode(&cbd_ddb_default_layout, k, name, sizeof name, &len, why, sizeof why), -EBADMSG,
                 "a name longer than the caller's buffer");
    cr_assert(strstr(why, "more than 127"), "%s", why);
    json_decref(k);
}

/* ---- log quoting -------------------------------------------------------------------------- */

Test(dynamodb_item, quoting_keeps_text_and_utf8_and_escapes_the_rest)
{
    char q[64];
    cr_assert_str_eq(fleet_quote("a b'c\\d\x01\xc3\xa9\xff", 11, q, sizeof q), "a b\\x27c\\x5cd\\x01\xc3\xa9\\xff");
    cr_assert_str_eq(fleet_quote("a\0b", 3, q, sizeof q), "a\\x00b");
    cr_assert_str_eq(fleet_quote("0123456789", 10, q, 10), "012345...");
    cr_assert_str_eq(fleet_quote("\xc3\xa9\xc3\xa9\xc3\xa9", 6, q, 9), "\xc3\xa9\xc3\xa9...",
                     "never cut inside a character");
}

/* ---- a shadow trial's marker ------------------------------------------------------------ */

Test(dynamodb_item, a_shadow_marker_beside_powertools_item_is_read_and_changes_nothing_real)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"payments\"},\"state\":{\"S\":\"CLOSED\"},\"failure_count\":"
                                       "{\"N\":\"0\"},\"expiration\":{\"N\":\"1700003630\"},\"cbd_shadow_state\":"
                                       "{\"S\":\"OPEN\"},\"cbd_shadow_since\":{\"N\":\"1700000007\"},"
                                       "\"cbd_shadow_host\":{\"S\":\"vm:A:12:0f\"}}");
    cr_assert(!it.marker_only && it.state == CB_CLOSED && it.opened_at == 0, "the real state is CLOSED");
    cr_assert(it.shadow.state == CB_OPEN && it.shadow.since == 1700000007 && strcmp(it.shadow.host, "vm:A:12:0f") == 0);
    cr_assert_not(it.shadow_invalid);
}

Test(dynamodb_item, an_item_holding_only_a_shadow_marker_is_no_circuit)
{
    struct cbd_ddb_item it = decode_ok("{\"id\":{\"S\":\"payments\"},\"cbd_shadow_state\":{\"S\":\"HALF_OPEN\"},"
                                       "\"cbd_shadow_since\":{\"N\":\"1700000007\"},\"cbd_shadow_host\":{\"S\":\"h\"}}");
    cr_assert(it.marker_only && it.state == CB_CLOSED && it.shadow.state == CB_HALF_OPEN);
    struct cbd_ddb_item bad;
    char why[256];
    cr_assert_eq(decode_with(&cbd_ddb_default_layout, "{\"id\":{\"S\":\"p\"},\"cbd_shadow_state\":{\"S\":\"OPEN\"}}",
                             &bad, why, sizeof why), -EBADMSG, "a bad marker alone is no item of any kind");
    cr_assert_str_eq(why, "no 'state' attribute");
}

Test(dynamodb_item, a_bad_shadow_marker_is_dropped_and_flagged_and_the_item_stays_valid)
{
    static const char *const markers[] = {
        "\"cbd_shadow_state\":{\"S\":\"OPEN\"},\"cbd_shadow_since\":{\"S\":\"1700000007\"},\"cbd_shadow_host\":{\"S\":\"h\"}",
        "\"cbd_shadow_state\":{\"S\":\"SHUT\"},\"cbd_shadow_since\":{\"N\":\"1700000007\"},\"cbd_shadow_host\":{\"S\":\"h\"}",
        "\"cbd_shadow_state\":{\"S\":\"OPEN\"},\"cbd_shadow_since\":{\"N\":\"1.5\"},\"cbd_shadow_host\":{\"S\":\"h\"}",
        "\"cbd_shadow_state\":{\"S\":\"OPEN\"},\"cbd_shadow_host\":{\"S\":\"h\"}",
        "\"cbd_shadow_state\":{\"S\":\"OPEN\"},\"cbd_shadow_since\":{\"N\":\"1\"},\"cbd_shadow_host\":{\"S\":\"\"}",
    };
    for (size_t i = 0; i < sizeof markers / sizeof markers[0]; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"id\":{\"S\":\"pay\"},\"state\":{\"S\":\"OPEN\"},\"opened_at\":{\"N\":"
                                    "\"1700000000\"},%s}", markers[i]);
        struct cbd_ddb_item it = decode_ok(text);
        cr_assert(it.state == CB_OPEN && it.opened_at == 1700000000, "marker %zu: the real state is read", i);
        cr_assert(it.shadow_invalid && it.shadow.since == 0, "marker %zu: dropped and flagged", i);
    }
}

Test(dynamodb_item, a_shadow_marker_encodes_and_decodes_back_to_itself)
{
    struct cbd_ddb_item items[] = {item("payments", CB_OPEN, 1700000000, "", 0), item("payments", CB_CLOSED, 0, "", 0)};
    items[0].shadow = (struct fleet_shadow){.state = CB_CLOSED, .since = 1700000009, .host = "vm:B:7:aa"};
    items[1] = (struct cbd_ddb_item){.name = "payments", .name_len = 8, .marker_only = true,
                                     .shadow = {.state = CB_OPEN, .since = 1700000009, .host = "vm:B:7:aa"}};
    for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
        char why[128];
        struct cbd_ddb_item back;
        json_t *enc = cbd_ddb_item_encode(&cbd_ddb_default_layout, &items[i], why, sizeof why);
        cr_assert_not_null(enc, "item %zu: %s", i, why);
        cr_assert_eq(cbd_ddb_item_decode(&cbd_ddb_default_layout, enc, &back, why, sizeof why), 0, "%s", why);
        cr_assert_eq(memcmp(&back, &items[i], sizeof back), 0, "item %zu changed on the way", i);
        cr_assert_eq(json_object_get(enc, "state") == NULL, items[i].marker_only);
        json_decref(enc);
    }
}
