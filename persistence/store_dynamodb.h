/*
 * store_dynamodb.h - the `dynamodb` store: Powertools' circuit breaker table,
 * shared by every cbd host and every Lambda function using Powertools. The
 * fleet layer (fleet.h) over the dynamodb transport of store_dynamodb.c.
 * See docs/store-dynamodb.md for the URI, the item layout and IAM.
 */
#ifndef CBD_STORE_DYNAMODB_H
#define CBD_STORE_DYNAMODB_H

#include <stddef.h>

#include "fleet.h"
#include "store.h"

extern const struct cbd_store_ops cbd_store_dynamodb_ops;

/* The transport alone, for tests that drive it without the fleet layer
 * (tests/integration/test_fleet_contract.c). */
extern const struct fleet_transport_ops cbd_dynamodb_transport_ops;

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
