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

#endif /* CBD_STORE_DYNAMODB_H */
