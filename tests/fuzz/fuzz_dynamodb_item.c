/*
 * fuzz_dynamodb_item.c - what the dynamodb store reads from DynamoDB: the
 * bytes of one HTTP answer body, taken both as a GetItem answer and as a
 * BatchGetItem answer, go through the parsers and the item codec
 * (persistence/dynamodb_item.c) exactly as store_dynamodb.c calls them -
 * jansson with JSON_ALLOW_NUL, then cbd_ddb_item_decode of every item and
 * cbd_ddb_key_decode of every unprocessed key - with Powertools' default
 * layout and with composite keys.
 *
 * Properties: no crash, no leak, no read outside the input, and every item
 * that decodes encodes again and decodes back to the same struct (what cbd
 * accepts, it can write, and what it writes, it accepts). A refused item
 * always comes with a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dynamodb_item.h"
#include "fuzz.h"

#define TABLE "cbd-circuits"

static const struct cbd_ddb_layout composite = {
    .pk = "id", .sk = "name", .static_pk = "circuit_breaker#orders", .state = "state",
    .failure_count = "failure_count", .opened_at = "opened_at", .owner = "half_open_owner",
    .lease = "probe_lease_expiry", .expiration = "expiration"};

static void round_trip(const struct cbd_ddb_layout *l, const struct cbd_ddb_item *it)
{
    static struct cbd_ddb_item back, want;
    char why[256];
    json_t *enc = cbd_ddb_item_encode(l, it, why, sizeof why);
    if (enc == NULL)
        abort(); /* decoded, so it must encode */
    want = *it;
    want.shadow_invalid = false; /* a bad shadow marker was dropped: it is not written back */
    if (cbd_ddb_item_decode(l, enc, &back, why, sizeof why) != 0 || memcmp(&back, &want, sizeof back) != 0)
        abort(); /* and come back the same */
    json_decref(enc);
}

static void item(const struct cbd_ddb_layout *l, const json_t *v)
{
    static struct cbd_ddb_item it;
    char why[256], q[64];
    why[0] = '\0';
    if (cbd_ddb_item_decode(l, v, &it, why, sizeof why) == 0)
        round_trip(l, &it);
    else if (why[0] == '\0')
        abort(); /* a refusal names its fault */
    fleet_quote(it.name, it.name_len, q, sizeof q);
}

static void layout(const struct cbd_ddb_layout *l, const uint8_t *data, size_t size)
{
    json_t *root, *v, *items, *unprocessed;
    size_t i;
    if (cbd_ddb_answer_get((const char *)data, size, &root, &v) == 0) {
        if (v != NULL)
            item(l, v);
        json_decref(root);
    }
    if (cbd_ddb_answer_batch((const char *)data, size, TABLE, &root, &items, &unprocessed) == 0) {
        json_array_foreach(items, i, v)
            item(l, v);
        json_array_foreach(unprocessed, i, v) {
            char name[128], why[256];
            size_t len;
            cbd_ddb_key_decode(l, v, name, sizeof name, &len, why, sizeof why);
        }
        json_decref(root);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0; /* aws_http caps answers far below this */
    layout(&cbd_ddb_default_layout, data, size);
    layout(&composite, data, size);
    return 0;
}
