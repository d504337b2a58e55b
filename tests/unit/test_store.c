/*
 * test_store.c - which backend serves a store URI (persistence/store.h):
 * cbd_store_find by scheme, in any case, and cbd_store_uri_error, the
 * message cbd --check-config, the start and a reload show - the backend's
 * own reason for a URI it refuses, an unknown scheme with the forms this
 * cbd takes, and never a password of the URI. No store is created: only
 * the backends' check_uri run, which do no I/O.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

/* The dynamodb backend resolves a missing region from the environment. */
static void plain_env(void)
{
    static const char *const vars[] = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                                       "AWS_ENDPOINT_URL_DYNAMODB"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config", 1);
}

TestSuite(store, .init = plain_env);

Test(store, each_scheme_is_served_by_its_backend)
{
    cr_assert_eq(cbd_store_find("local:/var/lib/cbd/default.state"), &cbd_store_local_ops);
    cr_assert_eq(cbd_store_find("redis://127.0.0.1:6379"), &cbd_store_redis_ops);
    cr_assert_eq(cbd_store_find("unix:///run/redis/redis.sock"), &cbd_store_redis_ops);
    cr_assert_eq(cbd_store_find("redis-sentinel://10.0.0.1:26379/mymaster"), &cbd_store_redis_ops);
    cr_assert_eq(cbd_store_find("dynamodb://circuit-breakers"), &cbd_store_dynamodb_ops);
}

Test(store, schemes_match_in_any_case)
{
    cr_assert_eq(cbd_store_find("Local:/x"), &cbd_store_local_ops);
    cr_assert_eq(cbd_store_find("REDIS://db:6379"), &cbd_store_redis_ops);
    cr_assert_eq(cbd_store_find("Redis-Sentinel://s:26379/m"), &cbd_store_redis_ops);
    cr_assert_eq(cbd_store_find("DynamoDB://tbl"), &cbd_store_dynamodb_ops);
}

Test(store, each_backend_names_its_scheme)
{
    cr_assert_str_eq(cbd_store_local_ops.scheme, "local");
    cr_assert_str_eq(cbd_store_redis_ops.scheme, "redis");
    cr_assert_str_eq(cbd_store_dynamodb_ops.scheme, "dynamodb");
}

Test(store, a_uri_of_no_known_scheme_has_no_backend)
{
    static const char *const unknown[] = {"foo://x", "rediss://db:6380", "local", "/var/lib/cbd/state",
                                          "dynamodb:tbl", "redis:/db", ""};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        cr_assert_null(cbd_store_find(unknown[i]), "'%s'", unknown[i]);
    cr_assert_null(cbd_store_find(NULL));
}

Test(store, an_unknown_scheme_is_named_with_every_form_this_cbd_takes)
{
    char buf[512];
    const char *msg = cbd_store_uri_error("foo://x", buf, sizeof buf);
    cr_assert_eq(msg, buf);
    cr_assert_str_eq(msg, "unknown store 'foo://x' (expected local:PATH, redis://HOST:PORT, "
                          "unix:///PATH/redis.sock, redis-sentinel://HOST:26379/MASTER, dynamodb://TABLE)");
}

Test(store, no_uri_at_all_is_no_store_given)
{
    char buf[512];
    cr_assert_eq(strncmp(cbd_store_uri_error(NULL, buf, sizeof buf), "no store given (expected local:PATH, ", 37),
                 0, "%s", buf);
    cr_assert_eq(strncmp(cbd_store_uri_error("", buf, sizeof buf), "no store given (expected local:PATH, ", 37), 0,
                 "%s", buf);
}

Test(store, a_uri_its_backend_accepts_has_no_error)
{
    static const char *const good[] = {"local:/var/lib/cbd/default.state", "redis://127.0.0.1:6379",
                                       "redis://db.example.com:6379/2?prefix=cb:", "unix:///run/redis/redis.sock",
                                       "redis-sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
                                       "dynamodb://circuit-breakers?region=eu-west-1",
                                       "DynamoDB://circuit-breakers?region=eu-west-1", "REDIS://db:6379"};
    char buf[512];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        cr_assert_null(cbd_store_uri_error(good[i], buf, sizeof buf), "%s: %s", good[i], buf);
}

/* uri's error must be "store 'uri': " and then its backend's own reason. */
static void refused_with_backends_reason(const char *uri)
{
    char buf[1024], why[512] = "", want[1100];
    const struct cbd_store_ops *ops = cbd_store_find(uri);
    cr_assert_not_null(ops, "%s", uri);
    cr_assert_neq(ops->check_uri(uri, why, sizeof why), 0, "%s: the backend accepts it", uri);
    const char *msg = cbd_store_uri_error(uri, buf, sizeof buf);
    cr_assert_not_null(msg, "%s: accepted", uri);
    snprintf(want, sizeof want, "store '%s': %s", uri, why);
    cr_assert_str_eq(msg, want);
}

Test(store, a_uri_its_backend_refuses_carries_the_backend_s_own_reason)
{
    refused_with_backends_reason("local:relative/path");
    refused_with_backends_reason("local:/var/lib/cbd/");
    refused_with_backends_reason("redis://127.0.0.1:99999");
    refused_with_backends_reason("redis://db:6379?colour=blue");
    refused_with_backends_reason("unix://relative.sock");
    refused_with_backends_reason("redis-sentinel://10.0.0.1:26379");
    refused_with_backends_reason("dynamodb://ab?region=eu-west-1");
    refused_with_backends_reason("dynamodb://tbl");
}

Test(store, the_local_store_s_reason_is_specific)
{
    char buf[512];
    const char *msg = cbd_store_uri_error("local:state.json", buf, sizeof buf);
    cr_assert_not_null(msg);
    cr_assert(strstr(msg, "store 'local:state.json': the local store's path must be absolute") == msg, "%s", msg);
}

Test(store, a_password_in_a_refused_uri_is_not_quoted)
{
    char buf[512];
    const char *msg = cbd_store_uri_error("redis://admin:s3cret@db:99999", buf, sizeof buf);
    cr_assert_not_null(msg);
    cr_assert_null(strstr(msg, "s3cret"), "the password is in the message: %s", msg);
    cr_assert(strncmp(msg, "store 'redis://...': ", 21) == 0, "%s", msg);
    msg = cbd_store_uri_error("rediss://admin:s3cret@db:6380", buf, sizeof buf);
    cr_assert_null(strstr(msg, "s3cret"), "%s", msg);
    cr_assert(strncmp(msg, "unknown store 'rediss://...'", 28) == 0, "%s", msg);
    msg = cbd_store_uri_error("foo:admin:s3cret@db", buf, sizeof buf);
    cr_assert_null(strstr(msg, "s3cret"), "without '://' the scheme is cut at its ':': %s", msg);
    cr_assert(strncmp(msg, "unknown store 'foo:...'", 23) == 0, "%s", msg);
}

Test(store, a_long_uri_is_quoted_up_to_200_bytes)
{
    char uri[400], buf[1024];
    strcpy(uri, "foo://");
    memset(uri + 6, 'h', 300);
    uri[306] = '\0';
    const char *msg = cbd_store_uri_error(uri, buf, sizeof buf);
    char want[260];
    snprintf(want, sizeof want, "unknown store '%.200s...' (expected", uri);
    cr_assert(strncmp(msg, want, strlen(want)) == 0, "%s", msg);
}

Test(store, the_message_is_cut_to_the_buffer_and_always_terminated)
{
    char buf[24];
    memset(buf, '#', sizeof buf);
    const char *msg = cbd_store_uri_error("foo://x", buf, sizeof buf);
    cr_assert_eq(strlen(msg), sizeof buf - 1);
    cr_assert_str_eq(msg, "unknown store 'foo://x'");
    memset(buf, '#', sizeof buf);
    msg = cbd_store_uri_error("local:relative", buf, sizeof buf);
    cr_assert_eq(strlen(msg), sizeof buf - 1);
}
