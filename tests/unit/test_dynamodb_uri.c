/*
 * test_dynamodb_uri.c - what a dynamodb:// URI says (aws/dynamodb_uri.h),
 * field by field: the defaults (Powertools' attribute names, its composite
 * key value "circuit_breaker#$AWS_LAMBDA_FUNCTION_NAME"), each option of
 * each type with the ends of its range, the table name and key rules, the
 * region and endpoint taken from the AWS SDK's environment and config file
 * when the URI leaves them out, and https unless the endpoint is loopback or
 * allow_http says so. The messages the store shows for a bad URI are in
 * test_store_dynamodb.c; here the parsed values are what count.
 *
 * Every test starts from an environment with no AWS region, endpoint,
 * profile or Lambda function name (criterion runs each test in its own
 * process, so setenv stays within the test).
 */
#include <criterion/criterion.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dynamodb_uri.h"

static void plain_env(void)
{
    static const char *const vars[] = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                                       "AWS_ENDPOINT_URL_DYNAMODB", "AWS_LAMBDA_FUNCTION_NAME"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config", 1);
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials", 1);
}

TestSuite(dynamodb_uri, .init = plain_env);

static struct cbd_ddb_opts o;

/* uri parsed into o: asserts it is accepted. */
static void parse_ok(const char *uri)
{
    const char *msg = cbd_ddb_uri_parse(&o, uri);
    cr_assert_null(msg, "%s: refused: %s", uri, msg);
}

/* uri refused: asserts the message says `says`. */
static void refuse(const char *uri, const char *says)
{
    struct cbd_ddb_opts scratch;
    const char *msg = cbd_ddb_uri_parse(&scratch, uri);
    cr_assert_not_null(msg, "%s: accepted", uri);
    cr_assert(strstr(msg, says) != NULL, "%s: the message is '%s', expected it to say '%s'", uri, msg, says);
}

Test(dynamodb_uri, what_the_uri_leaves_out_is_powertools_layout_and_the_documented_defaults)
{
    parse_ok("dynamodb://circuit-breakers?region=eu-west-1");
    cr_assert_str_eq(o.table, "circuit-breakers");
    cr_assert_str_eq(o.region, "eu-west-1");
    cr_assert_str_eq(o.endpoint, "https://dynamodb.eu-west-1.amazonaws.com");
    cr_assert_str_eq(o.pk, "id");
    cr_assert_str_eq(o.sk, "", "a simple key unless sk is given");
    cr_assert_str_eq(o.static_pk, "circuit_breaker#", "Powertools' value with no function name");
    cr_assert_str_eq(o.a_state, "state");
    cr_assert_str_eq(o.a_fc, "failure_count");
    cr_assert_str_eq(o.a_oa, "opened_at");
    cr_assert_str_eq(o.a_owner, "half_open_owner");
    cr_assert_str_eq(o.a_lease, "probe_lease_expiry");
    cr_assert_str_eq(o.a_exp, "expiration");
    cr_assert_str_eq(o.a_until, "cbd_open_until");
    cr_assert_str_eq(o.a_until_of, "cbd_open_until_of");
    cr_assert_str_eq(o.owner, "", "the fleet layer's owner id");
    cr_assert_eq(o.sync_ms, 1000);
    cr_assert_eq(o.timeout_ms, 2000);
    cr_assert_eq(o.connect_timeout_ms, 1000);
    cr_assert_eq(o.attempts, 3);
    cr_assert_eq(o.backoff_max_ms, 5000);
    cr_assert_not(o.consistent);
    cr_assert(o.tls_verify);
    cr_assert_not(o.allow_http);
}

Test(dynamodb_uri, the_composite_key_value_names_the_lambda_function_as_powertools_does)
{
    setenv("AWS_LAMBDA_FUNCTION_NAME", "checkout-api", 1);
    parse_ok("dynamodb://circuit-breakers?region=eu-west-1&sk=sk");
    cr_assert_str_eq(o.static_pk, "circuit_breaker#checkout-api");
    cr_assert_str_eq(o.sk, "sk");
}

Test(dynamodb_uri, a_function_name_too_long_for_static_pk_is_cut_not_overflowed)
{
    char fn[301];
    memset(fn, 'f', 300);
    fn[300] = '\0';
    setenv("AWS_LAMBDA_FUNCTION_NAME", fn, 1);
    parse_ok("dynamodb://circuit-breakers?region=eu-west-1");
    cr_assert_eq(strlen(o.static_pk), strlen("circuit_breaker#") + 200);
    cr_assert_eq(strncmp(o.static_pk, "circuit_breaker#ffff", 20), 0);
}

Test(dynamodb_uri, static_pk_in_the_uri_wins_over_the_function_name)
{
    setenv("AWS_LAMBDA_FUNCTION_NAME", "checkout-api", 1);
    parse_ok("dynamodb://circuit-breakers?region=eu-west-1&sk=sk&static_pk=circuit_breaker%23payments");
    cr_assert_str_eq(o.static_pk, "circuit_breaker#payments");
}

static const struct {
    const char *name;
    size_t off, size;
} string_opts[] = {
#define F(n, f) {n, offsetof(struct cbd_ddb_opts, f), sizeof(((struct cbd_ddb_opts *)0)->f)}
    F("pk", pk),
    F("sk", sk),
    F("static_pk", static_pk),
    F("attr_state", a_state),
    F("attr_failure_count", a_fc),
    F("attr_opened_at", a_oa),
    F("attr_owner", a_owner),
    F("attr_lease", a_lease),
    F("attr_expiration", a_exp),
    F("attr_open_until", a_until),
    F("attr_open_until_of", a_until_of),
    F("owner", owner),
#undef F
};

Test(dynamodb_uri, every_string_option_sets_its_own_field_percent_decoded)
{
    for (size_t i = 0; i < sizeof string_opts / sizeof string_opts[0]; i++) {
        char uri[256], want[64];
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=v%%23%s", string_opts[i].name,
                 string_opts[i].name);
        snprintf(want, sizeof want, "v#%s", string_opts[i].name);
        parse_ok(uri);
        cr_assert_str_eq((char *)&o + string_opts[i].off, want, "option %s", string_opts[i].name);
        for (size_t j = 0; j < sizeof string_opts / sizeof string_opts[0]; j++)
            cr_assert(j == i || strcmp((char *)&o + string_opts[j].off, want) != 0,
                      "option %s also set %s", string_opts[i].name, string_opts[j].name);
    }
}

Test(dynamodb_uri, a_string_value_one_byte_too_long_for_its_field_is_refused_naming_the_option)
{
    for (size_t i = 0; i < sizeof string_opts / sizeof string_opts[0]; i++) {
        char uri[512], value[300];
        size_t fits = string_opts[i].size - 1;
        memset(value, 'v', fits);
        value[fits] = '\0';
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&sk=other&pk=id&%s=%s", string_opts[i].name,
                 value);
        parse_ok(uri);
        cr_assert_str_eq((char *)&o + string_opts[i].off, value, "the longest value that fits is kept whole");
        strcat(uri, "v");
        char says[64];
        snprintf(says, sizeof says, "value of '%s' is too long", string_opts[i].name);
        refuse(uri, says);
    }
}

Test(dynamodb_uri, a_value_longer_than_any_field_is_refused_as_over_long)
{
    char uri[1024] = "dynamodb://tbl?region=eu-west-1&owner=";
    memset(uri + strlen(uri), 'x', 600);
    refuse(uri, "over-long value near 'owner=xxx");
}

static const struct {
    const char *name;
    size_t off;
    unsigned long min, max;
} number_opts[] = {
#define N(n, f, lo, hi) {n, offsetof(struct cbd_ddb_opts, f), lo, hi}
    N("sync_ms", sync_ms, 0, 86400000),
    N("timeout_ms", timeout_ms, 100, 60000),
    N("connect_timeout_ms", connect_timeout_ms, 100, 60000),
    N("attempts", attempts, 1, 10),
    N("backoff_max_ms", backoff_max_ms, 10, 300000),
#undef N
};

Test(dynamodb_uri, number_options_take_both_ends_of_their_range)
{
    for (size_t i = 0; i < sizeof number_opts / sizeof number_opts[0]; i++) {
        unsigned long ends[] = {number_opts[i].min, number_opts[i].max};
        for (int e = 0; e < 2; e++) {
            char uri[256];
            snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=%lu", number_opts[i].name, ends[e]);
            parse_ok(uri);
            cr_assert_eq(*(uint32_t *)((char *)&o + number_opts[i].off), ends[e], "%s", uri);
        }
    }
}

Test(dynamodb_uri, number_options_refuse_one_past_either_end_and_what_is_not_a_number)
{
    for (size_t i = 0; i < sizeof number_opts / sizeof number_opts[0]; i++) {
        char below[32], above[32];
        if (number_opts[i].min > 0)
            snprintf(below, sizeof below, "%lu", number_opts[i].min - 1);
        else
            snprintf(below, sizeof below, "-1");
        snprintf(above, sizeof above, "%lu", number_opts[i].max + 1);
        const char *values[] = {below, above, "", "ten", "12ms", "1.5", "99999999999999999999999"};
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            char uri[256], says[96];
            snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=%s", number_opts[i].name, values[v]);
            snprintf(says, sizeof says, "'%s' is not a number in its range", number_opts[i].name);
            refuse(uri, says);
        }
    }
}

Test(dynamodb_uri, bool_options_take_the_words_every_cbd_setting_takes)
{
    static const char *const yes[] = {"true", "TRUE", "yes", "on", "1"}, *const no[] = {"false", "No", "off", "0"};
    static const char *const names[] = {"consistent", "tls_verify", "allow_http"};
    size_t offs[] = {offsetof(struct cbd_ddb_opts, consistent), offsetof(struct cbd_ddb_opts, tls_verify),
                     offsetof(struct cbd_ddb_opts, allow_http)};
    for (size_t n = 0; n < 3; n++) {
        for (size_t i = 0; i < 5; i++) {
            char uri[256];
            snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=%s", names[n], yes[i]);
            parse_ok(uri);
            cr_assert(*(bool *)((char *)&o + offs[n]), "%s", uri);
        }
        for (size_t i = 0; i < 4; i++) {
            char uri[256];
            snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=%s", names[n], no[i]);
            parse_ok(uri);
            cr_assert_not(*(bool *)((char *)&o + offs[n]), "%s", uri);
        }
        char uri[256], says[64];
        snprintf(says, sizeof says, "'%s' must be true or false", names[n]);
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=maybe", names[n]);
        refuse(uri, says);
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=", names[n]);
        refuse(uri, says);
    }
}

Test(dynamodb_uri, an_unknown_option_is_refused_by_its_decoded_name)
{
    refuse("dynamodb://tbl?region=eu-west-1&colour=blue", "unknown option 'colour'");
    refuse("dynamodb://tbl?region=eu-west-1&col%6Fur=blue", "unknown option 'colour'");
}

Test(dynamodb_uri, option_names_are_percent_decoded_like_their_values)
{
    parse_ok("dynamodb://tbl?region=eu-west-1&sync%5Fms=5");
    cr_assert_eq(o.sync_ms, 5);
}

Test(dynamodb_uri, bad_percent_encoding_in_a_name_or_a_value_is_refused)
{
    refuse("dynamodb://tbl?region=eu-west-1&owner=a%zzb", "bad percent-encoding");
    refuse("dynamodb://tbl?region=eu-west-1&owner=a%2", "bad percent-encoding");
    refuse("dynamodb://tbl?region=eu-west-1&owner=a%00b", "bad percent-encoding");
    refuse("dynamodb://tbl?region=eu-west-1&own%xer=a", "bad percent-encoding");
}

Test(dynamodb_uri, table_names_are_3_to_255_of_dynamodb_s_characters)
{
    char uri[600], name[300];
    parse_ok("dynamodb://a_b?region=eu-west-1");
    parse_ok("dynamodb://A.b-9?region=eu-west-1");
    memset(name, 't', 255);
    name[255] = '\0';
    snprintf(uri, sizeof uri, "dynamodb://%s?region=eu-west-1", name);
    parse_ok(uri);
    cr_assert_eq(strlen(o.table), 255);
    refuse("dynamodb://ab?region=eu-west-1", "table name 'ab' must be 3-255");
    refuse("dynamodb://?region=eu-west-1", "table name '' must be 3-255");
    refuse("dynamodb://tbl/x?region=eu-west-1", "the table name has byte 0x2f at position 4");
    refuse("dynamodb://tb l?region=eu-west-1", "byte 0x20 at position 3");
    /* a decoded control byte is named, never copied into the message (a log line) */
    refuse("dynamodb://cb%0Ax?region=eu-west-1", "byte 0x0a at position 3");
    cr_assert_null(strchr(cbd_ddb_uri_parse(&o, "dynamodb://cb%0Ax?region=eu-west-1"), '\n'));
    name[255] = 't';
    name[256] = '\0';
    snprintf(uri, sizeof uri, "dynamodb://%s?region=eu-west-1", name);
    refuse(uri, "longer than 255 bytes");
}

Test(dynamodb_uri, the_table_name_is_percent_decoded_before_it_is_checked)
{
    parse_ok("dynamodb://cb%2Dtable?region=eu-west-1");
    cr_assert_str_eq(o.table, "cb-table");
    refuse("dynamodb://cb%2Ftable?region=eu-west-1", "byte 0x2f at position 3"); /* decoded: %2F is the byte */
}

Test(dynamodb_uri, a_uri_of_another_scheme_is_not_a_dynamodb_uri)
{
    refuse("redis://127.0.0.1:6379", "not a dynamodb URI");
    refuse("dynamodb:tbl", "not a dynamodb URI");
    refuse("", "not a dynamodb URI");
}

Test(dynamodb_uri, the_scheme_is_case_insensitive_as_every_store_uri_s_is)
{
    /* persistence/store.c routes DYNAMODB:// here (RFC 3986: schemes are
     * case-insensitive), so the parser must take it too */
    parse_ok("DynamoDB://circuit-breakers?region=eu-west-1");
    cr_assert_str_eq(o.table, "circuit-breakers");
}

Test(dynamodb_uri, pk_and_sk_must_differ)
{
    refuse("dynamodb://tbl?region=eu-west-1&sk=id", "pk and sk must differ (both 'id')");
    refuse("dynamodb://tbl?region=eu-west-1&pk=key&sk=key", "pk and sk must differ (both 'key')");
    parse_ok("dynamodb://tbl?region=eu-west-1&pk=key&sk=sort");
    cr_assert_str_eq(o.pk, "key");
    cr_assert_str_eq(o.sk, "sort");
}

Test(dynamodb_uri, a_composite_key_needs_a_static_pk_and_a_simple_key_does_not)
{
    refuse("dynamodb://tbl?region=eu-west-1&sk=sk&static_pk=", "static_pk must not be empty with sk=sk");
    parse_ok("dynamodb://tbl?region=eu-west-1&static_pk=");
    cr_assert_str_eq(o.static_pk, "");
}

Test(dynamodb_uri, an_empty_pk_or_attribute_name_is_refused)
{
    static const char *const names[] = {"pk", "attr_state", "attr_failure_count", "attr_opened_at",
                                        "attr_owner", "attr_lease", "attr_expiration", "attr_open_until",
                                        "attr_open_until_of"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char uri[128];
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&%s=", names[i]);
        refuse(uri, "attribute names and pk must not be empty");
    }
}

Test(dynamodb_uri, an_option_without_a_value_is_refused)
{
    refuse("dynamodb://tbl?region=eu-west-1&consistent", "option 'consistent' has no '=value'");
}

Test(dynamodb_uri, the_region_comes_from_aws_region_then_aws_default_region)
{
    setenv("AWS_DEFAULT_REGION", "us-west-2", 1);
    parse_ok("dynamodb://tbl");
    cr_assert_str_eq(o.region, "us-west-2");
    cr_assert_str_eq(o.endpoint, "https://dynamodb.us-west-2.amazonaws.com");
    setenv("AWS_REGION", "eu-central-1", 1);
    parse_ok("dynamodb://tbl");
    cr_assert_str_eq(o.region, "eu-central-1", "AWS_REGION wins over AWS_DEFAULT_REGION");
    parse_ok("dynamodb://tbl?region=ap-south-1");
    cr_assert_str_eq(o.region, "ap-south-1", "the URI wins over the environment");
    cr_assert_str_eq(o.endpoint, "https://dynamodb.ap-south-1.amazonaws.com");
}

Test(dynamodb_uri, the_region_comes_from_the_profile_s_config_file)
{
    char path[] = "/tmp/cbd-test-aws-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "[default]\nregion = sa-east-1\n\n[profile other]\nregion = eu-north-1\n";
    cr_assert_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    setenv("AWS_CONFIG_FILE", path, 1);
    parse_ok("dynamodb://tbl");
    cr_assert_str_eq(o.region, "sa-east-1");
    setenv("AWS_PROFILE", "other", 1);
    parse_ok("dynamodb://tbl");
    cr_assert_str_eq(o.region, "eu-north-1");
    unlink(path);
}

Test(dynamodb_uri, a_china_region_s_endpoint_is_under_amazonaws_com_cn)
{
    parse_ok("dynamodb://tbl?region=cn-north-1");
    cr_assert_str_eq(o.endpoint, "https://dynamodb.cn-north-1.amazonaws.com.cn");
}

Test(dynamodb_uri, no_region_anywhere_is_refused_saying_where_to_give_one)
{
    refuse("dynamodb://tbl", "no region: add ?region=... or set AWS_REGION");
    refuse("dynamodb://tbl?sync_ms=5", "no region");
}

Test(dynamodb_uri, a_local_endpoint_without_a_region_signs_for_us_east_1)
{
    parse_ok("dynamodb://tbl?endpoint=http://127.0.0.1:8000");
    cr_assert_str_eq(o.region, "us-east-1");
    cr_assert_str_eq(o.endpoint, "http://127.0.0.1:8000");
    setenv("AWS_ENDPOINT_URL", "http://localhost:4566", 1);
    parse_ok("dynamodb://tbl");
    cr_assert_str_eq(o.region, "us-east-1");
    cr_assert_str_eq(o.endpoint, "http://localhost:4566");
}

Test(dynamodb_uri, the_endpoint_comes_from_the_uri_then_the_service_variable_then_the_general_one)
{
    setenv("AWS_ENDPOINT_URL", "http://localhost:4566", 1);
    setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://localhost:8000", 1);
    parse_ok("dynamodb://tbl?region=eu-west-1");
    cr_assert_str_eq(o.endpoint, "http://localhost:8000");
    unsetenv("AWS_ENDPOINT_URL_DYNAMODB");
    parse_ok("dynamodb://tbl?region=eu-west-1");
    cr_assert_str_eq(o.endpoint, "http://localhost:4566");
    parse_ok("dynamodb://tbl?region=eu-west-1&endpoint=https://ddb.example.com");
    cr_assert_str_eq(o.endpoint, "https://ddb.example.com");
}

Test(dynamodb_uri, plain_http_is_taken_for_loopback_endpoints)
{
    static const char *const loopback[] = {"http://localhost:8000", "http://127.0.0.1:8000", "http://127.1.2.3",
                                           "http://[::1]:8000/"};
    for (size_t i = 0; i < sizeof loopback / sizeof loopback[0]; i++) {
        char uri[256];
        snprintf(uri, sizeof uri, "dynamodb://tbl?endpoint=%s", loopback[i]);
        parse_ok(uri);
        cr_assert_str_eq(o.endpoint, loopback[i]);
    }
}

Test(dynamodb_uri, plain_http_to_another_host_is_refused_unless_allow_http_says_so)
{
    static const char *const remote[] = {"http://10.0.0.5:8000", "http://dynamodb.example.com",
                                         "http://localhost.example.com", "http://127.example.com",
                                         "http://127.0.0.1.nip.io:8000"};
    for (size_t i = 0; i < sizeof remote / sizeof remote[0]; i++) {
        char uri[256];
        snprintf(uri, sizeof uri, "dynamodb://tbl?region=eu-west-1&endpoint=%s", remote[i]);
        refuse(uri, "plain http is only for loopback; add allow_http=true");
        strcat(uri, "&allow_http=true");
        parse_ok(uri);
        cr_assert(o.allow_http);
    }
}

Test(dynamodb_uri, an_endpoint_neither_https_nor_http_is_refused)
{
    refuse("dynamodb://tbl?region=eu-west-1&endpoint=ftp://example.com", "must start with https://");
    refuse("dynamodb://tbl?region=eu-west-1&endpoint=dynamodb.eu-west-1.amazonaws.com", "must start with https://");
}
