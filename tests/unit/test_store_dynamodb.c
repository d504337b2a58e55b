/*
 * test_store_dynamodb.c - the dynamodb store's URI check (check_uri): it
 * accepts what create() accepts and refuses what create() refuses, with
 * create()'s own message, and it needs no endpoint to answer. The store's
 * behaviour against a table is in tests/integration/test_store_dynamodb.c.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store_dynamodb.h"

/* Only the URI decides: no region, endpoint or profile from the machine. */
static void plain_env(void)
{
    static const char *const vars[] = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                                       "AWS_ENDPOINT_URL_DYNAMODB", "AWS_SESSION_TOKEN"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config", 1);
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials", 1);
    setenv("AWS_ACCESS_KEY_ID", "AKIDTEST", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "test-secret", 1);
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
}

TestSuite(store_dynamodb_uri, .init = plain_env);

static void ignore_remote(void *arg, const struct cbd_store_state *st)
{
    (void)arg;
    (void)st;
}

static void ignore_probe(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry)
{
    (void)arg;
    (void)name;
    (void)opened_at;
    (void)granted;
    (void)lease_expiry;
}

static void ignore_health(void *arg, bool online, const char *why)
{
    (void)arg;
    (void)online;
    (void)why;
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

/* create() on uri: its return code, its message in err; a created store
 * is closed again. */
static int create(const char *uri, char *err, size_t size)
{
    uv_loop_t loop;
    struct cbd_store *s = NULL;
    const char *msg = NULL;
    bool closed = false;
    uv_loop_init(&loop);
    struct cbd_store_hooks hooks = {.loop = &loop, .remote = ignore_remote, .probe_result = ignore_probe,
                                    .health = ignore_health};
    int rc = cbd_store_dynamodb_ops.create(&s, uri, &hooks, &msg);
    snprintf(err, size, "%s", rc < 0 && msg ? msg : "");
    if (rc == 0) {
        cbd_store_dynamodb_ops.close(s, on_closed, &closed);
        uv_run(&loop, UV_RUN_DEFAULT);
        cr_assert(closed);
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
    return rc;
}

Test(store_dynamodb_uri, the_dynamodb_store_has_a_uri_check)
{
    cr_assert_not_null(cbd_store_dynamodb_ops.check_uri);
}

Test(store_dynamodb_uri, uris_create_accepts_pass_without_a_request)
{
    static const char *const good[] = {
        "dynamodb://circuit-breakers?region=eu-west-1",
        "dynamodb://shared-table?region=us-east-1&sk=sk&pk=pk&static_pk=circuit_breaker%23checkout",
        "dynamodb://cbd-test?endpoint=http://127.0.0.1:1&sync_ms=0&consistent=true", /* nobody listens there */
        "dynamodb://t.b_l-e?region=eu-west-1&attr_state=st&attr_owner=own&owner=me%231&attempts=10",
        "dynamodb://cbd?endpoint=http://10.0.0.5:8000&allow_http=true",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char why[512] = "", err[512];
        cr_assert_eq(cbd_store_dynamodb_ops.check_uri(good[i], why, sizeof why), 0, "%s: %s", good[i], why);
        cr_assert_eq(create(good[i], err, sizeof err), 0, "%s: create() refused it: %s", good[i], err);
    }
}

/* Arrays, not pointers: criterion copies parameters into each test's process. */
struct bad_uri {
    char uri[256];
    char why[128]; /* what the message must say */
};

ParameterizedTestParameters(store_dynamodb_uri, a_bad_uri_is_refused_with_create_s_own_message)
{
    static struct bad_uri bad[] = {
        {"redis://127.0.0.1:6379", "not a dynamodb URI"},
        {"dynamodb://ab?region=eu-west-1", "table name 'ab' must be 3-255 of [A-Za-z0-9_.-]"},
        {"dynamodb://tables!?region=eu-west-1", "the table name has byte 0x21 at position 7"},
        {"dynamodb://tbl?region=eu-west-1&colour=blue", "unknown option 'colour'"},
        {"dynamodb://tbl?region=eu-west-1&timeout_ms", "option 'timeout_ms' has no '=value'"},
        {"dynamodb://tbl?region=eu-west-1&sync_ms=-1", "'sync_ms' is not a number in its range"},
        {"dynamodb://tbl?region=eu-west-1&attempts=11", "'attempts' is not a number in its range"},
        {"dynamodb://tbl?region=eu-west-1&consistent=maybe", "'consistent' must be true or false"},
        {"dynamodb://tbl?region=eu-west-1&owner=%zz", "bad percent-encoding"},
        {"dynamodb://tbl?region=eu-west-1&attr_state=", "must not be empty"},
        {"dynamodb://tbl?region=eu-west-1&sk=id", "pk and sk must differ (both 'id')"},
        {"dynamodb://tbl?region=eu-west-1&sk=name&static_pk=", "static_pk must not be empty with sk=name"},
        {"dynamodb://tbl", "no region: add ?region=... or set AWS_REGION"},
        {"dynamodb://tbl?region=eu-west-1&endpoint=ftp://example.com", "must start with https://"},
        {"dynamodb://tbl?region=eu-west-1&endpoint=http://10.0.0.5:8000", "plain http is only for loopback"},
    };
    return cr_make_param_array(struct bad_uri, bad, sizeof bad / sizeof bad[0]);
}

ParameterizedTest(struct bad_uri *b, store_dynamodb_uri, a_bad_uri_is_refused_with_create_s_own_message)
{
    char why[512] = "", err[512];
    cr_assert_eq(cbd_store_dynamodb_ops.check_uri(b->uri, why, sizeof why), -EINVAL, "%s: accepted", b->uri);
    cr_assert(strstr(why, b->why), "%s: the message is '%s', expected it to say '%s'", b->uri, why, b->why);
    cr_assert_eq(create(b->uri, err, sizeof err), -EINVAL, "%s: create() accepted it", b->uri);
    cr_assert_str_eq(why, err, "check_uri and create() disagree on %s", b->uri);
}

Test(store_dynamodb_uri, no_uri_is_refused)
{
    char why[128] = "";
    cr_assert_eq(cbd_store_dynamodb_ops.check_uri(NULL, why, sizeof why), -EINVAL);
    cr_assert_str_eq(why, "no dynamodb URI given");
}

Test(store_dynamodb_uri, a_short_buffer_gets_a_cut_message)
{
    char why[16];
    cr_assert_eq(cbd_store_dynamodb_ops.check_uri("dynamodb://tbl?colour=blue", why, sizeof why), -EINVAL);
    cr_assert_eq(strlen(why), sizeof why - 1);
}
