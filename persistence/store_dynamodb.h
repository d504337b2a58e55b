/*
 * store_dynamodb.h - the `dynamodb` store: Powertools' circuit breaker table,
 * shared by every cbd host and every Lambda function using Powertools.
 * See docs/store-dynamodb.md for the URI, the item layout and IAM.
 */
#ifndef CBD_STORE_DYNAMODB_H
#define CBD_STORE_DYNAMODB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

extern const struct cbd_store_ops cbd_store_dynamodb_ops;

/* Counters for cbd's stats, since the store was created. */
struct cbd_dynamodb_stats {
    uint64_t requests;           /* HTTP attempts sent, retries included */
    uint64_t retries;            /* attempts that repeated a failed one */
    uint64_t throttles;          /* answers that said "slow down" */
    uint64_t timeouts;           /* attempts that hit timeout_ms */
    uint64_t errors;             /* requests that failed after their retries */
    uint64_t conditions_lost;    /* conditional writes refused: the fleet had newer state */
    uint64_t malformed;          /* answers that are not DynamoDB JSON */
    uint64_t invalid_items;      /* items read and not adopted (every read of one counts) */
    uint64_t unprocessed_keys;   /* BatchGetItem keys DynamoDB asked us to retry */
    uint64_t remote_reports;     /* hooks->remote calls */
    uint32_t circuits;           /* tracked */
    uint32_t pending_writes;     /* queued, not yet acknowledged by DynamoDB */
    bool online;                 /* the last request reached DynamoDB */
};

/* s must come from cbd_store_dynamodb_ops.create. */
void cbd_dynamodb_stats(const struct cbd_store *s, struct cbd_dynamodb_stats *out);

/*
 * cbd_dynamodb_create_table - create the table a dynamodb:// URI names, for
 * `cbctl`: on-demand capacity (PAY_PER_REQUEST), the key schema of the URI's
 * mode (pk, or pk + sk), waits until it is ACTIVE, then enables TTL on the
 * expiration attribute. A table that already exists with the right key
 * schema is fine. Blocks (runs its own loop) for up to ~5 minutes.
 *
 * Returns 0 when the table is ready with TTL on; 1 when the table is ready
 * but TTL could not be enabled (err says why, e.g. dynalite does not know
 * UpdateTimeToLive: expired items then stay until deleted); a negative errno
 * with err set to an operator-readable message otherwise.
 */
int cbd_dynamodb_create_table(const char *uri, char *err, size_t errlen);

#endif /* CBD_STORE_DYNAMODB_H */
