/*
 * dynamodb_uri.h - what a dynamodb:// URI says: the table, where it is, its
 * key layout and attribute names, and how to talk to it
 * (docs/store-dynamodb.md lists every option); and one call of DynamoDB's
 * JSON API made the way the URI says. Used by the dynamodb store and by
 * cbctl's table creation, so both see one table the same way.
 */
#ifndef CBD_DYNAMODB_URI_H
#define CBD_DYNAMODB_URI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "aws_http.h"

#define CBD_DDB_URI_OWNER_MAX 95 /* bytes of the owner option: the fleet layer's FLEET_OWNER_MAX */
#define CBD_DDB_TARGET "DynamoDB_20120810." /* X-Amz-Target prefix of the JSON API */

/* A dynamodb:// URI, parsed, with the defaults of what it leaves out. */
struct cbd_ddb_opts {
    char table[256], region[64], endpoint[512];
    char pk[64], sk[64], static_pk[256];
    char a_state[64], a_fc[64], a_oa[64], a_owner[64], a_lease[64], a_exp[64], a_until[64], a_until_of[64];
    char owner[CBD_DDB_URI_OWNER_MAX + 1]; /* "": the fleet layer's */
    uint32_t sync_ms, read_budget, timeout_ms, connect_timeout_ms, attempts, backoff_max_ms;
    bool consistent, tls_verify, allow_http;
};

/*
 * cbd_ddb_uri_parse - o from uri: the defaults (Powertools' attribute
 * names; the composite key's static value Powertools' own,
 * "circuit_breaker#$AWS_LAMBDA_FUNCTION_NAME"), then the URI's options,
 * then region and endpoint from the AWS SDK's environment and files if the
 * URI leaves them out. NULL, or a message naming the fault for an operator
 * (valid until the next call; one thread only).
 */
const char *cbd_ddb_uri_parse(struct cbd_ddb_opts *o, const char *uri);

/*
 * cbd_ddb_send - one call of DynamoDB's JSON API: op ("GetItem",
 * "CreateTable", ...) with body (not consumed) to o's endpoint, signed
 * with creds for o's region, with o's timeouts and TLS setting, tried at
 * most max_attempts times. As cbd_aws_http_send: 0, and cb runs once on
 * the loop; or -errno, and it will not.
 */
int cbd_ddb_send(struct cbd_aws_http *http, const struct cbd_ddb_opts *o, const struct cbd_aws_creds *creds,
                 const char *op, const json_t *body, uint32_t max_attempts, cbd_aws_http_cb cb, void *arg);

#endif /* CBD_DYNAMODB_URI_H */
