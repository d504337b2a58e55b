/*
 * aws_credentials.h - AWS credentials and SDK settings, found the way the
 * AWS SDKs find them, fetched and refreshed on cbd's loop.
 *
 * The chain, first match wins (see aws_credentials.c for the details):
 *   1. environment: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY [+ AWS_SESSION_TOKEN]
 *   2. web identity: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN
 *      [+ AWS_ROLE_SESSION_NAME], exchanged at STS (AssumeRoleWithWebIdentity)
 *   3. shared files: AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials) and
 *      AWS_CONFIG_FILE (~/.aws/config), profile AWS_PROFILE (else "default"):
 *      static keys, or role_arn + web_identity_token_file
 *   4. container endpoint: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or
 *      AWS_CONTAINER_CREDENTIALS_FULL_URI, with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE
 *      or AWS_CONTAINER_AUTHORIZATION_TOKEN
 *   5. EC2 instance metadata (IMDSv2), unless AWS_EC2_METADATA_DISABLED=true;
 *      endpoint AWS_EC2_METADATA_SERVICE_ENDPOINT
 */
#ifndef CBD_AWS_CREDENTIALS_H
#define CBD_AWS_CREDENTIALS_H

#include <stddef.h>

#include "aws_http.h"

/* Refresh credentials this long before they expire; stop using them this
 * long before. */
#define CBD_AWS_REFRESH_BEFORE_S 300
#define CBD_AWS_EXPIRY_SLACK_S 10

struct cbd_aws_credentials;

/*
 * Pick the first source of the chain that is configured (this reads the
 * environment and the shared files, synchronously: small local files, read
 * once at startup). Fetching sources (web identity, container, IMDS) fetch
 * on the first cbd_aws_credentials_get(). region picks the STS endpoint.
 * ready(arg) runs on the loop each time a fetch ends, successful or not.
 * 0, or -EINVAL / -ENOENT with err naming the problem (a profile that was
 * asked for and is missing, a container URI on a host that is not allowed).
 * No source at all is not an error here: get() reports it.
 */
int cbd_aws_credentials_create(struct cbd_aws_credentials **out, struct cbd_aws_http *http,
                               const char *region, void (*ready)(void *arg), void *arg, char *err,
                               size_t errlen);

/*
 * Credentials to sign a request with, now.
 * 0: *out is valid for at least CBD_AWS_EXPIRY_SLACK_S more seconds (a
 *    background refresh starts when they expire within CBD_AWS_REFRESH_BEFORE_S).
 * -EAGAIN: a fetch is running; ready() follows.
 * -ENOKEY: no source is configured; *why says what was looked for.
 * -EIO / -EACCES / -EBADMSG: the last fetch failed (*why says how); the
 *    next get() after a backoff tries again.
 */
int cbd_aws_credentials_get(struct cbd_aws_credentials *p, struct cbd_aws_creds *out, const char **why);

/* Which source the chain picked ("environment", "profile default", ...). */
const char *cbd_aws_credentials_source(const struct cbd_aws_credentials *p);

/* Free p. A fetch in flight finishes (or is cancelled by closing the http
 * client) without calling ready. */
void cbd_aws_credentials_free(struct cbd_aws_credentials *p);

/* The SDK's region: AWS_REGION, AWS_DEFAULT_REGION, then the profile's
 * `region` in the config file. 0 or -ENOENT. */
int cbd_aws_default_region(char *buf, size_t len);

/* A service's endpoint the SDK way: AWS_ENDPOINT_URL_<SERVICE> (env_id is
 * "DYNAMODB", "STS"), then AWS_ENDPOINT_URL, then https://<service>.<region>.
 * amazonaws.com (.com.cn in China regions). 0 or -ENAMETOOLONG. */
int cbd_aws_endpoint(const char *env_id, const char *service, const char *region, char *buf, size_t len);

/* Epoch seconds of an ISO 8601 UTC time ("2024-05-01T12:00:00Z", optional
 * fraction, "Z" or a +hh:mm offset). 0 or -EINVAL. */
int cbd_aws_parse_time(const char *s, int64_t *out);

#endif /* CBD_AWS_CREDENTIALS_H */
