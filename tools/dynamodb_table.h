/*
 * dynamodb_table.h - `cbctl dynamodb create-table`: the table a dynamodb://
 * URI names, made ready for cbd hosts and Powertools functions alike.
 */
#ifndef CBCTL_DYNAMODB_TABLE_H
#define CBCTL_DYNAMODB_TABLE_H

#include <stddef.h>

/*
 * dynamodb_table_create - create the table uri names: on-demand capacity
 * (PAY_PER_REQUEST), the key schema of the URI's mode (pk, or pk + sk),
 * wait until it is ACTIVE, then enable TTL on the expiration attribute. A
 * table that already exists with the right key schema is fine. Blocks (runs
 * its own loop) for up to ~5 minutes.
 *
 * Returns 0 when the table is ready with TTL on; 1 when the table is ready
 * but TTL could not be enabled (err says why, e.g. dynalite does not know
 * UpdateTimeToLive: expired items then stay until deleted); a negative errno
 * with err set to an operator-readable message otherwise.
 */
int dynamodb_table_create(const char *uri, char *err, size_t errlen);

#endif /* CBCTL_DYNAMODB_TABLE_H */
