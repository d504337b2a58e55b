/*
 * dynamodb_item.h - Powertools' circuit item in DynamoDB JSON, to and from a
 * plain C struct, with strict validation both ways; and the GetItem and
 * BatchGetItem answers that carry items. The layout is the compatibility
 * contract of POWERTOOLS.md ("DynamoDB item"); docs/store-dynamodb.md lists
 * what makes an item invalid.
 *
 * The dynamodb transport (store_dynamodb.c) reads every item through
 * cbd_ddb_item_decode and writes every key through cbd_ddb_key; what a
 * state needs is fleet.c's fleet_item_check, the same for every store
 * (tests/fuzz/fuzz_dynamodb_item.c checks that decode(encode(x)) == x).
 *
 * Names. Powertools accepts any string as a circuit name, so the codec
 * carries any byte string a DynamoDB key holds (UTF-8, NUL included, up to
 * 2048 bytes in a partition key and 1024 in a sort key) with its length;
 * whether cbd can hold that name is the store's question, not the codec's.
 * Answers are parsed with JSON_ALLOW_NUL for the same reason: one odd string
 * in one item must not make a whole BatchGetItem answer unreadable.
 */
#ifndef CBD_DYNAMODB_ITEM_H
#define CBD_DYNAMODB_ITEM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "cb.h"
#include "fleet.h"
#include "segment.h"

#define CBD_DDB_PK_MAX 2048           /* bytes of a partition key value (DynamoDB's limit) */
#define CBD_DDB_SK_MAX 1024           /* bytes of a sort key value */
#define CBD_DDB_OWNER_MAX FLEET_OWNER_MAX /* bytes of a probe owner id */
#define CBD_DDB_TIME_MAX CB_TIME_MAX_S /* epoch seconds cbd can hold (segment.h: 2255-03-14) */

/* Attribute names: Powertools makes them configurable, so does the URI. */
struct cbd_ddb_layout {
    const char *pk;        /* partition key attribute */
    const char *sk;        /* sort key attribute; "" for simple keys */
    const char *static_pk; /* composite keys: the partition key value of every circuit */
    const char *state, *failure_count, *opened_at, *owner, *lease, *expiration;
    const char *open_until, *open_until_of; /* cbd's own: an opening's end under backoff (fleet.h) */
    const char *shadow_state, *shadow_since, *shadow_host; /* cbd's own: a shadow trial's marker (fleet.h) */
};

/* The shadow marker's attributes (not configurable: cbd's own, beside Powertools' item). */
#define CBD_DDB_SHADOW_STATE "cbd_shadow_state"
#define CBD_DDB_SHADOW_SINCE "cbd_shadow_since"
#define CBD_DDB_SHADOW_HOST "cbd_shadow_host"

/* Powertools' defaults: simple key "id", attributes as in POWERTOOLS.md. */
extern const struct cbd_ddb_layout cbd_ddb_default_layout;

/* One circuit's item. */
struct cbd_ddb_item {
    char name[CBD_DDB_PK_MAX + 1]; /* the circuit name: name_len bytes, any of them NUL, then a NUL */
    size_t name_len;
    cb_state state;
    uint32_t failure_count;        /* absent reads as 0 */
    int64_t opened_at;             /* OPEN, HALF_OPEN: 1..CBD_DDB_TIME_MAX; CLOSED: 0 */
    char owner[CBD_DDB_OWNER_MAX + 1]; /* HALF_OPEN: non-empty, no NUL; else "" */
    int64_t lease_expiry;          /* HALF_OPEN: 0..CBD_DDB_TIME_MAX; else 0 */
    int64_t expiration;            /* the TTL, 0..CBD_DDB_TIME_MAX; 0: absent (not written) */
    int64_t open_until;            /* the opening's end (backoff), 0..CBD_DDB_TIME_MAX: only when
                                    * open_until_of is this opened_at, else 0 (fleet_item_deadline) */
    int64_t open_until_of;         /* the opened_at the pair was written for; 0: absent (not written) */
    bool marker_only;              /* the item holds a shadow marker and no state: no circuit */
    struct fleet_shadow shadow;    /* the shadow marker (since 0: none) */
    bool shadow_invalid;           /* a bad marker was dropped */
};

/*
 * cbd_ddb_item_decode - an item (one element of GetItem's Item or
 * BatchGetItem's Responses) into *out.
 *
 * Every attribute the layout names must have its type (one DynamoDB type
 * tag: S or N) and, for numbers, be a whole number in range written as
 * digits only: no sign, no fraction, no exponent (DynamoDB returns numbers
 * normalised, and Powertools writes whole seconds). The state decides what
 * must be present: OPEN needs opened_at; HALF_OPEN needs opened_at,
 * half_open_owner and probe_lease_expiry. Attributes the state does not use
 * are checked and then dropped (a CLOSED item reads with opened_at 0).
 * open_until and open_until_of come together or not at all; open_until
 * reads 0 unless open_until_of is the item's opened_at (fleet_item_deadline).
 * Attributes the layout does not name are ignored. In composite mode the
 * partition key must hold static_pk. The shadow marker (fleet_item_shadow)
 * never makes the item invalid: a bad one is dropped with shadow_invalid
 * set; an item with a marker and no state attribute at all decodes with
 * marker_only (no circuit for real purposes).
 *
 * Returns 0, or -EBADMSG with why (size bytes, always terminated) naming the
 * fault the way an operator reads it ("attribute 'opened_at' is S, expected
 * N"). Either way, out->name_len > 0 when the item's key itself was valid:
 * out->name then says which circuit the bad item is about.
 */
int cbd_ddb_item_decode(const struct cbd_ddb_layout *l, const json_t *item, struct cbd_ddb_item *out, char *why,
                        size_t size);

/*
 * cbd_ddb_item_encode - the whole item for a PutItem: the key, state,
 * failure_count, opened_at (OPEN, HALF_OPEN), half_open_owner and
 * probe_lease_expiry (HALF_OPEN), expiration (when non-zero) and
 * open_until with open_until_of (when open_until_of is non-zero), the
 * shadow marker (when shadow.since is non-zero; a marker_only item is its
 * key, marker and expiration alone). The item
 * must pass the checks decode applies: NULL with why set otherwise (and on
 * allocation failure).
 */
json_t *cbd_ddb_item_encode(const struct cbd_ddb_layout *l, const struct cbd_ddb_item *it, char *why, size_t size);

/* The key of circuit name (len bytes): {pk: name} or {pk: static_pk, sk:
 * name}. NULL only when out of memory. */
json_t *cbd_ddb_key(const struct cbd_ddb_layout *l, const char *name, size_t len);

/* The circuit a key (or an item, by its key attributes) names, into name
 * (size bytes, terminated) and *len: 0, or -EBADMSG with why set. */
int cbd_ddb_key_decode(const struct cbd_ddb_layout *l, const json_t *key, char *name, size_t size, size_t *len,
                       char *why, size_t why_size);

/* Attribute values for request bodies: {"S": v}, {"N": "v"}. */
json_t *cbd_ddb_s(const char *v);
json_t *cbd_ddb_n(int64_t v);

/*
 * cbd_ddb_answer_get - parse a GetItem answer body: 0 with *root (the caller
 * json_decref()s it) and *item (borrowed from *root; NULL when the table has
 * no such item), or -EBADMSG (nothing to free) when the body is not JSON, not
 * an object, or its Item is not an object.
 */
int cbd_ddb_answer_get(const char *body, size_t len, json_t **root, json_t **item);

/*
 * cbd_ddb_answer_batch - parse a BatchGetItem answer body for table: 0 with
 * *root (the caller json_decref()s it), *items (Responses.<table>: an array,
 * possibly empty, borrowed from *root) and *unprocessed (UnprocessedKeys.
 * <table>.Keys: an array, or NULL when there is none), or -EBADMSG (nothing
 * to free) when the body is not an object with an object Responses, or one
 * of those members has another type. The items themselves are not checked.
 */
int cbd_ddb_answer_batch(const char *body, size_t len, const char *table, json_t **root, json_t **items,
                         json_t **unprocessed);

#endif /* CBD_DYNAMODB_ITEM_H */
