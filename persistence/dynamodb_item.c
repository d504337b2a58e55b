/*
 * dynamodb_item.c - Powertools' circuit item <-> struct cbd_ddb_item
 * (dynamodb_item.h has the contract).
 *
 * Design. Decoding is two steps: read each attribute the layout names into
 * the struct (checking only its DynamoDB type and number syntax), then one
 * check of the struct's meaning (item_check) - the key and the TTL here,
 * what a state needs (ranges, owner bytes) in fleet.c's fleet_item_check,
 * which the redis transport's decoder runs too. Encoding runs the same
 * item_check before it builds anything, so the rules live once and what cbd
 * writes is what cbd (and a strict Powertools reader) accepts.
 *
 * Every message names the attribute by its configured name and quotes the
 * offending value (cut, escaped): it ends up in a log line an operator reads
 * next to the table in the AWS console.
 *
 * Numbers are whole and non-negative everywhere in this item (epoch seconds,
 * a count), so a number is accepted only as plain digits: DynamoDB returns
 * numbers normalised ("1.7E9" and "1700000000.0" come back "1700000000"),
 * so a sign, a fraction or an exponent in an answer is a value cbd cannot
 * hold (negative, fractional) or garbage. Leading zeros are harmless and
 * allowed; the value, not the digit count, is bounded.
 */
#include "dynamodb_item.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "fleet.h"

const struct cbd_ddb_layout cbd_ddb_default_layout = {
    .pk = "id", .sk = "", .static_pk = "circuit_breaker#", .state = "state", .failure_count = "failure_count",
    .opened_at = "opened_at", .owner = "half_open_owner", .lease = "probe_lease_expiry", .expiration = "expiration",
    .open_until = "cbd_open_until", .open_until_of = "cbd_open_until_of", .shadow_state = CBD_DDB_SHADOW_STATE,
    .shadow_since = CBD_DDB_SHADOW_SINCE, .shadow_host = CBD_DDB_SHADOW_HOST,
};

/* ---- attributes ------------------------------------------------------------------- */

/* Attribute attr of item, of DynamoDB type want ("S" or "N", both carried
 * as JSON strings): 1 found (*value), 0 absent, -EBADMSG with why set. */
static int attr_typed(const json_t *item, const char *attr, const char *want, json_t **value, char *why, size_t size)
{
    const json_t *a = json_object_get(item, attr);
    if (a == NULL)
        return 0;
    if (!json_is_object(a) || json_object_size(a) != 1)
        return fleet_fault(why, size, "attribute '%s' is not one DynamoDB attribute value (an object with one type tag)",
                   attr);
    void *it = json_object_iter((json_t *)a);
    const char *tag = json_object_iter_key(it);
    if (strcmp(tag, want) != 0)
        return fleet_fault(why, size, "attribute '%s' is %.8s, expected %s", attr, tag, want);
    *value = json_object_iter_value(it);
    if (!json_is_string(*value))
        return fleet_fault(why, size, "attribute '%s' is %s without a string%s", attr, want,
                   want[0] == 'N' ? " of digits" : "");
    return 1;
}

/* Attribute attr of item as a string of type S: 1 found (*s, *len),
 * 0 absent, -EBADMSG. */
static int attr_string(const json_t *item, const char *attr, const char **s, size_t *len, char *why, size_t size)
{
    json_t *v;
    int rc = attr_typed(item, attr, "S", &v, why, size);
    if (rc == 1) {
        *s = json_string_value(v);
        *len = json_string_length(v);
    }
    return rc;
}

/* Attribute attr of item as a whole number of type N in [0, max]: 1 found
 * (*out), 0 absent, -EBADMSG. above says what a larger value means. */
static int attr_number(const json_t *item, const char *attr, uint64_t max, const char *above, int64_t *out, char *why,
                       size_t size)
{
    json_t *v;
    uint64_t n = 0;
    int rc = attr_typed(item, attr, "N", &v, why, size);
    if (rc == 1 && (rc = fleet_parse_number("attribute", attr, json_string_value(v), json_string_length(v), max,
                                            above, &n, why, size)) == 0) {
        *out = (int64_t)n;
        rc = 1;
    }
    return rc;
}

static int attr_time(const json_t *item, const char *attr, int64_t *out, char *why, size_t size)
{
    return attr_number(item, attr, CBD_DDB_TIME_MAX, "after 2255-03-14 (epoch second 9000000000)", out, why, size);
}

/* ---- keys ------------------------------------------------------------------------- */

static const char *name_attr(const struct cbd_ddb_layout *l)
{
    return l->sk[0] ? l->sk : l->pk;
}

int cbd_ddb_key_decode(const struct cbd_ddb_layout *l, const json_t *key, char *name, size_t size, size_t *len,
                       char *why, size_t why_size)
{
    const char *attr = name_attr(l), *s = NULL;
    size_t n = 0, max = l->sk[0] ? CBD_DDB_SK_MAX : CBD_DDB_PK_MAX;
    char q[64];
    int rc;
    *len = 0;
    name[0] = '\0';
    if (!json_is_object(key))
        return fleet_fault(why, why_size, "not an object of attributes");
    if (l->sk[0]) {
        rc = attr_string(key, l->pk, &s, &n, why, why_size);
        if (rc == 0)
            return fleet_fault(why, why_size, "no partition key attribute '%s'", l->pk);
        if (rc < 0)
            return rc;
        if (n != strlen(l->static_pk) || memcmp(s, l->static_pk, n) != 0)
            return fleet_fault(why, why_size, "partition key '%s' is '%s', not the circuits' '%s'", l->pk,
                       fleet_quote(s, n, q, sizeof q), l->static_pk);
    }
    rc = attr_string(key, attr, &s, &n, why, why_size);
    if (rc == 0)
        return fleet_fault(why, why_size, "no key attribute '%s'", attr);
    if (rc < 0)
        return rc;
    if (n == 0)
        return fleet_fault(why, why_size, "key attribute '%s' is empty", attr);
    if (n > max || n >= size)
        return fleet_fault(why, why_size, "key attribute '%s' is %zu bytes, more than %zu", attr, n,
                   n > max ? max : size - 1);
    memcpy(name, s, n);
    name[n] = '\0';
    *len = n;
    return 0;
}

json_t *cbd_ddb_s(const char *v)
{
    return json_pack("{s:s}", "S", v);
}

json_t *cbd_ddb_n(int64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)v);
    return json_pack("{s:s}", "N", b);
}

json_t *cbd_ddb_key(const struct cbd_ddb_layout *l, const char *name, size_t len)
{
    json_t *k = json_object(), *v = json_pack("{s:s%}", "S", name, len);
    if (l->sk[0])
        json_object_set_new(k, l->pk, cbd_ddb_s(l->static_pk));
    if (json_object_set_new(k, name_attr(l), v) < 0 || json_object_size(k) != (l->sk[0] ? 2u : 1u)) {
        json_decref(k);
        return NULL;
    }
    return k;
}

/* ---- the item ------------------------------------------------------------------------ */

/* What the item means, whichever way it travels: its key and TTL here,
 * what its state needs in fleet_item_check. 0 or -EBADMSG. */
/* How messages name the item's parts: the layout's attribute names. */
static struct fleet_item_names names_of(const struct cbd_ddb_layout *l)
{
    return (struct fleet_item_names){.kind = "attribute", .state = l->state, .failure_count = l->failure_count,
                                     .opened_at = l->opened_at, .owner = l->owner, .lease = l->lease,
                                     .open_until = l->open_until, .open_until_of = l->open_until_of,
                                     .shadow_state = l->shadow_state, .shadow_since = l->shadow_since,
                                     .shadow_host = l->shadow_host};
}

static int item_check(const struct cbd_ddb_layout *l, const struct cbd_ddb_item *it, char *why, size_t size)
{
    struct fleet_item_names names = names_of(l);
    size_t max = l->sk[0] ? CBD_DDB_SK_MAX : CBD_DDB_PK_MAX;
    if (it->name_len == 0 || it->name_len > max)
        return fleet_fault(why, size, "the circuit name is %zu bytes (1 to %zu)", it->name_len, max);
    if (it->expiration < 0 || it->expiration > CBD_DDB_TIME_MAX)
        return fleet_fault(why, size, "'%s' %lld is not epoch seconds from 0 to 9000000000", l->expiration,
                   (long long)it->expiration);
    if (it->open_until < 0 || it->open_until > CBD_DDB_TIME_MAX || it->open_until_of < 0 ||
        it->open_until_of > CBD_DDB_TIME_MAX || (it->open_until != 0 && it->open_until_of == 0))
        return fleet_fault(why, size, "'%s' %lld / '%s' %lld are not an opening's end and its opened_at",
                           l->open_until, (long long)it->open_until, l->open_until_of, (long long)it->open_until_of);
    if (it->marker_only && (it->shadow.since == 0 || it->state != CB_CLOSED || it->failure_count != 0))
        return fleet_fault(why, size, "an item without '%s' holds nothing but a shadow marker", l->state);
    struct fleet_item f = {.exists = true, .state = it->state, .failure_count = it->failure_count,
                           .opened_at = it->opened_at, .lease_expiry = it->lease_expiry};
    memcpy(f.owner, it->owner, sizeof f.owner);
    return fleet_item_check(&names, &f, why, size);
}

static int decode_state(const struct cbd_ddb_layout *l, const json_t *item, cb_state *out, char *why, size_t size)
{
    const char *s = NULL;
    size_t n = 0;
    char q[48];
    int rc = attr_string(item, l->state, &s, &n, why, size);
    if (rc == 0)
        return fleet_fault(why, size, "no '%s' attribute", l->state);
    if (rc < 0)
        return rc;
    if (fleet_parse_state(s, n, out) == 0)
        return 0;
    return fleet_fault(why, size, "attribute '%s' is '%s', not CLOSED, OPEN or HALF_OPEN", l->state,
               fleet_quote(s, n, q, sizeof q));
}

static int decode_owner(const struct cbd_ddb_layout *l, const json_t *item, char *owner, char *why, size_t size)
{
    const char *s = NULL;
    size_t n = 0;
    char q[48];
    int rc = attr_string(item, l->owner, &s, &n, why, size);
    if (rc <= 0)
        return rc;
    if (n > CBD_DDB_OWNER_MAX)
        return fleet_fault(why, size, "attribute '%s' is %zu bytes, more than the %d cbd holds ('%s')", l->owner, n,
                   CBD_DDB_OWNER_MAX, fleet_quote(s, n, q, sizeof q));
    if (memchr(s, '\0', n) != NULL)
        return fleet_fault(why, size, "attribute '%s' holds a NUL byte ('%s')", l->owner, fleet_quote(s, n, q, sizeof q));
    memcpy(owner, s, n);
    owner[n] = '\0';
    return 1;
}

/* The shadow marker's attributes into out (a bad marker dropped and
 * flagged: never a fault of the item). */
static void decode_shadow(const struct cbd_ddb_layout *l, const json_t *item, struct cbd_ddb_item *out)
{
    const char *attrs[] = {l->shadow_state, l->shadow_since, l->shadow_host}, *tags[] = {"S", "N", "S"};
    struct fleet_raw raw[3] = {{0}};
    struct fleet_item_names names = names_of(l);
    struct fleet_item f = {0};
    char why[200];
    bool bad = false;
    for (size_t i = 0; i < 3; i++) {
        json_t *v;
        int rc = attrs[i] != NULL ? attr_typed(item, attrs[i], tags[i], &v, why, sizeof why) : 0;
        bad |= rc < 0;
        if (rc == 1)
            raw[i] = (struct fleet_raw){.s = json_string_value(v), .len = json_string_length(v)};
    }
    if (!bad && fleet_item_shadow(&names, &f, raw[0], raw[1], raw[2], why, sizeof why) == 0)
        out->shadow = f.shadow;
    else
        out->shadow_invalid = true;
}

/* Does the item hold nothing but its key, a valid shadow marker and the
 * TTL? Then it is no circuit (a shadow trial's marker alone). */
static bool shadow_alone(const struct cbd_ddb_layout *l, const json_t *item, const struct cbd_ddb_item *out)
{
    const char *real[] = {l->state, l->failure_count, l->opened_at, l->owner, l->lease, l->open_until,
                          l->open_until_of};
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++)
        if (real[i] != NULL && json_object_get(item, real[i]) != NULL)
            return false;
    return out->shadow.since != 0;
}

int cbd_ddb_item_decode(const struct cbd_ddb_layout *l, const json_t *item, struct cbd_ddb_item *out, char *why,
                        size_t size)
{
    int64_t fc = 0, until = -1, of = -1;
    int rc;
    memset(out, 0, sizeof *out);
    out->state = CB_CLOSED;
    if (!json_is_object(item))
        return fleet_fault(why, size, "the item is not an object of attributes");
    if ((rc = cbd_ddb_key_decode(l, item, out->name, sizeof out->name, &out->name_len, why, size)) < 0)
        return rc;
    decode_shadow(l, item, out);
    if (shadow_alone(l, item, out)) {
        out->marker_only = true;
        return attr_time(item, l->expiration, &out->expiration, why, size) < 0 ? -EBADMSG
                                                                               : item_check(l, out, why, size);
    }
    if ((rc = decode_state(l, item, &out->state, why, size)) < 0 ||
        (rc = attr_number(item, l->failure_count, UINT32_MAX, "more than 4294967295", &fc, why, size)) < 0 ||
        (rc = attr_time(item, l->opened_at, &out->opened_at, why, size)) < 0 ||
        (rc = decode_owner(l, item, out->owner, why, size)) < 0 ||
        (rc = attr_time(item, l->lease, &out->lease_expiry, why, size)) < 0 ||
        (rc = attr_time(item, l->expiration, &out->expiration, why, size)) < 0 ||
        (rc = attr_time(item, l->open_until, &until, why, size)) < 0 ||
        (rc = attr_time(item, l->open_until_of, &of, why, size)) < 0)
        return rc;
    out->failure_count = (uint32_t)fc;
    /* The election's condition is attribute_not_exists(owner): over such an
     * item no host or function could ever elect, while the item reads as
     * OPEN without owner. Powertools and cbd remove it when they reopen. */
    if (out->state == CB_OPEN && json_object_get(item, l->owner) != NULL)
        return fleet_fault(why, size, "an OPEN item with attribute '%s' (a reopen removes it; no election could "
                           "succeed over it)", l->owner);
    if (out->state != CB_HALF_OPEN) { /* all of it: no stale bytes after the terminator */
        memset(out->owner, 0, sizeof out->owner);
        out->lease_expiry = 0;
    }
    if (out->state == CB_CLOSED)
        out->opened_at = 0;
    if (out->state == CB_HALF_OPEN && json_object_get(item, l->lease) == NULL)
        out->lease_expiry = -1; /* absent, where 0 is a valid (long expired) lease: item_check says so */
    struct fleet_item_names names = names_of(l);
    struct fleet_item f = {.state = out->state, .opened_at = out->opened_at};
    if ((rc = fleet_item_deadline(&names, &f, until, of, why, size)) < 0)
        return rc;
    out->open_until = f.open_until;
    out->open_until_of = f.open_until_of;
    return item_check(l, out, why, size);
}

json_t *cbd_ddb_item_encode(const struct cbd_ddb_layout *l, const struct cbd_ddb_item *it, char *why, size_t size)
{
    if (item_check(l, it, why, size) < 0)
        return NULL;
    json_t *item = cbd_ddb_key(l, it->name, it->name_len);
    if (item == NULL)
        goto nomem;
    /* a shadow marker alone, no state (decode reads it back as no circuit) */
    bool ok = it->marker_only || (json_object_set_new(item, l->state, cbd_ddb_s(cb__state_name(it->state))) == 0 &&
                              json_object_set_new(item, l->failure_count, cbd_ddb_n(it->failure_count)) == 0);
    if (it->state != CB_CLOSED)
        ok = ok && json_object_set_new(item, l->opened_at, cbd_ddb_n(it->opened_at)) == 0;
    if (it->state == CB_HALF_OPEN)
        ok = ok && json_object_set_new(item, l->owner, cbd_ddb_s(it->owner)) == 0 &&
             json_object_set_new(item, l->lease, cbd_ddb_n(it->lease_expiry)) == 0;
    if (it->expiration > 0)
        ok = ok && json_object_set_new(item, l->expiration, cbd_ddb_n(it->expiration)) == 0;
    if (it->open_until_of > 0)
        ok = ok && json_object_set_new(item, l->open_until, cbd_ddb_n(it->open_until)) == 0 &&
             json_object_set_new(item, l->open_until_of, cbd_ddb_n(it->open_until_of)) == 0;
    if (it->shadow.since > 0 && l->shadow_state != NULL)
        ok = ok && json_object_set_new(item, l->shadow_state, cbd_ddb_s(cb__state_name(it->shadow.state))) == 0 &&
             json_object_set_new(item, l->shadow_since, cbd_ddb_n(it->shadow.since)) == 0 &&
             json_object_set_new(item, l->shadow_host, cbd_ddb_s(it->shadow.host)) == 0;
    if (ok)
        return item;
    json_decref(item);
nomem:
    fleet_fault(why, size, "out of memory");
    return NULL;
}

/* ---- answers -------------------------------------------------------------------------- */

int cbd_ddb_answer_get(const char *body, size_t len, json_t **root, json_t **item)
{
    json_t *j = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    json_t *it = json_object_get(j, "Item");
    if (!json_is_object(j) || (it != NULL && !json_is_object(it))) {
        json_decref(j);
        return -EBADMSG;
    }
    *root = j;
    *item = it;
    return 0;
}

int cbd_ddb_answer_batch(const char *body, size_t len, const char *table, json_t **root, json_t **items,
                         json_t **unprocessed)
{
    json_t *j = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    json_t *resp = json_object_get(j, "Responses"), *un = json_object_get(j, "UnprocessedKeys");
    json_t *mine = json_object_get(resp, table), *un_mine = json_object_get(un, table);
    json_t *keys = json_object_get(un_mine, "Keys");
    if (!json_is_object(j) || !json_is_object(resp) || (mine && !json_is_array(mine)) ||
        (un && !json_is_object(un)) || (un_mine && !json_is_object(un_mine)) || (keys && !json_is_array(keys))) {
        json_decref(j);
        return -EBADMSG;
    }
    if (mine == NULL) { /* no item of this table: an empty list, for the caller's loop */
        mine = json_array();
        if (mine == NULL || json_object_set_new(resp, table, mine) < 0) {
            json_decref(j);
            return -EBADMSG;
        }
    }
    *root = j;
    *items = mine;
    *unprocessed = keys;
    return 0;
}
