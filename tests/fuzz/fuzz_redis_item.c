/*
 * fuzz_redis_item.c - what the redis transport reads about a circuit: the
 * bytes of one reply, read as cbd reads a server's replies (redis_resp.c's
 * bounded reader), then decoded as store_redis.c decodes them - an HGETALL
 * answer (the whole array as a field/value list) and a write script's
 * answer ({applied, second, field, value, ...}) - by cbd_redis_item_decode.
 *
 * Properties: no crash, no leak, no read outside the input; a refusal names
 * its fault; and every hash that decodes is an item the fleet layer can
 * hold (fleet_item_check passes) which, written back the way the write
 * script writes it, decodes to the same item.
 */
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet.h"
#include "fuzz.h"
#include "redis_resp.h"
#include "segment.h"
#include "store_redis.h"

static const struct fleet_item_names names = {
    .kind = "field", .state = "state", .failure_count = "failure_count", .opened_at = "opened_at",
    .owner = "half_open_owner", .lease = "probe_lease_expiry", .open_until = "open_until",
    .open_until_of = "open_until_of",
};

/* The item as the write script leaves it, as RESP, decoded again. */
static void round_trip(const struct fleet_item *it)
{
    char resp[640], n[5][24];
    int len, fields = it->state == CB_CLOSED ? 2 : it->state == CB_OPEN ? 3 : 5;
    bool deadline = it->open_until_of != 0; /* written, or left by a Powertools reopen */
    snprintf(n[0], sizeof n[0], "%" PRIu32, it->failure_count);
    snprintf(n[1], sizeof n[1], "%" PRId64, it->opened_at);
    snprintf(n[2], sizeof n[2], "%" PRId64, it->lease_expiry);
    snprintf(n[3], sizeof n[3], "%" PRId64, it->open_until);
    snprintf(n[4], sizeof n[4], "%" PRId64, it->open_until_of);
    const char *st = cb__state_name(it->state);
    len = snprintf(resp, sizeof resp, "*%d\r\n$5\r\nstate\r\n$%zu\r\n%s\r\n$13\r\nfailure_count\r\n$%zu\r\n%s\r\n",
                   2 * (fields + (deadline ? 2 : 0)), strlen(st), st, strlen(n[0]), n[0]);
    if (fields > 2)
        len += snprintf(resp + len, sizeof resp - (size_t)len, "$9\r\nopened_at\r\n$%zu\r\n%s\r\n", strlen(n[1]), n[1]);
    if (fields > 3)
        len += snprintf(resp + len, sizeof resp - (size_t)len,
                        "$15\r\nhalf_open_owner\r\n$%zu\r\n%s\r\n$18\r\nprobe_lease_expiry\r\n$%zu\r\n%s\r\n",
                        strlen(it->owner), it->owner, strlen(n[2]), n[2]);
    if (deadline)
        len += snprintf(resp + len, sizeof resp - (size_t)len, "$10\r\nopen_until\r\n$%zu\r\n%s\r\n"
                        "$13\r\nopen_until_of\r\n$%zu\r\n%s\r\n", strlen(n[3]), n[3], strlen(n[4]), n[4]);
    struct cbd_resp_reader rd;
    redisReply *r = NULL;
    struct fleet_item back;
    char why[300];
    if (cbd_resp_init(&rd) < 0)
        return;
    if (cbd_resp_feed(&rd, resp, (size_t)len) < 0 || cbd_resp_next(&rd, &r) != 1)
        abort(); /* cbd's own writing is a reply */
    if (cbd_redis_item_decode(r->element, r->elements, &back, why, sizeof why) != 1 ||
        back.state != it->state || back.failure_count != it->failure_count || back.opened_at != it->opened_at ||
        strcmp(back.owner, it->owner) != 0 || back.lease_expiry != it->lease_expiry ||
        back.open_until != it->open_until || back.open_until_of != it->open_until_of)
        abort(); /* and comes back the same */
    freeReplyObject(r);
    cbd_resp_free(&rd);
}

static void decode(redisReply *const *el, size_t n)
{
    static struct fleet_item it;
    char why[300];
    why[0] = '\0';
    int rc = cbd_redis_item_decode(el, n, &it, why, sizeof why);
    if (rc < 0 && why[0] == '\0')
        abort(); /* a refusal names its fault */
    if (rc == 1 && fleet_item_check(&names, &it, why, sizeof why) != 0)
        abort(); /* what decodes is an item */
    if (rc == 0 && n > 0 && (it.exists || it.shadow.since < 1 || it.shadow.since > CB_TIME_MAX_S || !it.shadow.host[0]))
        abort(); /* a hash that is no item holds a valid shadow marker alone */
    if (rc == 1)
        round_trip(&it);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cbd_resp_reader rd;
    redisReply *r = NULL;
    if (size > 1 << 20 || cbd_resp_init(&rd) < 0)
        return 0;
    if (cbd_resp_feed(&rd, data, size) == 0) {
        while (cbd_resp_next(&rd, &r) == 1) {
            if (r->type == REDIS_REPLY_ARRAY) {
                decode(r->element, r->elements);
                if (r->elements >= 2 && r->element[0]->type == REDIS_REPLY_INTEGER)
                    decode(r->element + 2, r->elements - 2);
            }
            freeReplyObject(r);
        }
    }
    cbd_resp_free(&rd);
    return 0;
}
