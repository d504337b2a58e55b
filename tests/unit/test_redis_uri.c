/*
 * test_redis_uri.c - redis, unix and redis-sentinel URIs and the secrets
 * they point to (persistence/redis_uri.c): what each form yields, that a
 * password is never taken from the URI, that every bad URI gets a message
 * naming the fault, and how password files and variables are read.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_uri.h"
#include "tsup.h"

static int parse(const char *uri, struct cbd_redis_uri *u, char *why)
{
    return cbd_redis_uri_parse(uri, u, NULL, NULL, NULL, why, 512);
}

Test(redis_uri, a_redis_uri_gives_host_port_db_user_and_where_the_password_is)
{
    struct cbd_redis_uri u;
    char why[512];
    cr_assert_eq(parse("redis://alice@cache.example:6380/3?password_file=/run/secrets/redis&command_timeout_ms=250",
                       &u, why), 0, "%s", why);
    cr_assert_not(u.sentinel);
    cr_assert_str_eq(u.server.host, "cache.example");
    cr_assert_eq(u.server.port, 6380);
    cr_assert_eq(u.db, 3);
    cr_assert_str_eq(u.user, "alice");
    cr_assert_eq(u.password.from, CBD_REDIS_SECRET_FILE);
    cr_assert_str_eq(u.password.where, "/run/secrets/redis");
    cr_assert_eq(u.command_timeout_ms, 250);
    cr_assert_eq(u.connect_timeout_ms, 1000);
}

Test(redis_uri, defaults_are_port_6379_db_0_and_no_auth)
{
    struct cbd_redis_uri u;
    char why[512];
    cr_assert_eq(parse("REDIS://[::1]", &u, why), 0, "%s", why);
    cr_assert_str_eq(u.server.host, "::1");
    cr_assert_eq(u.server.port, 6379);
    cr_assert_eq(u.db, 0);
    cr_assert_eq(u.password.from, CBD_REDIS_SECRET_NONE);
    cr_assert_eq(parse("unix:///run/redis/redis.sock?db=2&password_env=REDIS_PASSWORD", &u, why), 0, "%s", why);
    cr_assert_str_eq(u.server.path, "/run/redis/redis.sock");
    cr_assert_eq(u.db, 2);
    cr_assert_eq(u.password.from, CBD_REDIS_SECRET_ENV);
}

Test(redis_uri, a_sentinel_uri_lists_the_sentinels_and_names_the_master)
{
    struct cbd_redis_uri u;
    char why[512];
    cr_assert_eq(parse("redis-sentinel://cbd@s1:26380,[fd00::7],10.0.0.9/payments-cache/4?password_env=RP&"
                       "sentinel_user=watch&sentinel_password_file=/etc/cbd/sentinel.pass",
                       &u, why), 0, "%s", why);
    cr_assert(u.sentinel);
    cr_assert_eq(u.nsentinels, 3);
    cr_assert_str_eq(u.sentinels[0].host, "s1");
    cr_assert_eq(u.sentinels[0].port, 26380);
    cr_assert_str_eq(u.sentinels[1].host, "fd00::7");
    cr_assert_eq(u.sentinels[1].port, 26379, "sentinels listen on 26379 by default");
    cr_assert_str_eq(u.sentinels[2].host, "10.0.0.9");
    cr_assert_str_eq(u.master, "payments-cache");
    cr_assert_eq(u.db, 4);
    cr_assert_str_eq(u.user, "cbd");
    cr_assert_str_eq(u.sentinel_user, "watch");
    cr_assert_eq(u.sentinel_password.from, CBD_REDIS_SECRET_FILE);
}

struct owner_seen {
    char prefix[64];
};

static const char *owner_option(void *arg, const char *name, const char *value)
{
    struct owner_seen *o = arg;
    if (strcmp(name, "prefix") != 0)
        return cbd_redis_uri_unknown;
    if (value[0] == '\0')
        return "prefix must not be empty";
    snprintf(o->prefix, sizeof o->prefix, "%s", value);
    return NULL;
}

Test(redis_uri, options_of_the_owner_go_to_its_callback_and_its_messages_come_back)
{
    struct cbd_redis_uri u;
    struct owner_seen o = {0};
    char why[512];
    cr_assert_eq(cbd_redis_uri_parse("redis://h?prefix=app%3A", &u, owner_option, &o, "prefix", why, sizeof why), 0);
    cr_assert_str_eq(o.prefix, "app:");
    cr_assert_eq(cbd_redis_uri_parse("redis://h?prefix=", &u, owner_option, &o, "prefix", why, sizeof why), -EINVAL);
    cr_assert_str_eq(why, "redis URI: prefix must not be empty");
    cr_assert_eq(cbd_redis_uri_parse("redis://h?bogus=1", &u, owner_option, &o, "prefix", why, sizeof why), -EINVAL);
    cr_assert(strstr(why, "unknown option 'bogus'") != NULL && strstr(why, ", prefix)") != NULL, "%s", why);
}

struct bad_case {
    char uri[128];
    char says[96];
};

ParameterizedTestParameters(redis_uri, a_bad_uri_is_refused_with_a_message_naming_the_fault)
{
    static struct bad_case cases[] = {
        {"http://h", "must start with redis://, redis-sentinel:// or unix://"},
        {"redis://user:secret@h", "a password in the URI is refused"},
        {"redis-sentinel://u:secret@h/m", "a password in the URI is refused"},
        {"redis://h?password=secret", "put it in a file only cbd can read"},
        {"redis-sentinel://h/m?sentinel_password=secret", "a password in the URI is refused"},
        {"redis://h:70000", "port must be a number 1..65535"},
        {"redis://h/x", "database number"},
        {"redis://h?db=65536", "db must be a number 0..65535"},
        {"redis://h#frag", "fragment"},
        {"redis://h,i", "not allowed in a host name"},
        {"redis://h?user=a%20b&password_env=P", "user must be 1..127 printable characters"},
        {"redis://h?connect_timeout_ms=5", "connect_timeout_ms must be a number 10..600000"},
        {"redis://h?password_env=A-B", "password_env must be an environment variable name"},
        {"redis-sentinel://h/m?sentinel_password_env=P&sentinel_password_file=/f", "not both"},
        {"redis-sentinel://h,,i/m", "missing sentinel host"},
        {"redis-sentinel://h/", "missing master name"},
        {"unix://", "must be absolute"},
    };
    return cr_make_param_array(struct bad_case, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct bad_case *c, redis_uri, a_bad_uri_is_refused_with_a_message_naming_the_fault)
{
    struct cbd_redis_uri u;
    char why[512];
    cr_assert_eq(parse(c->uri, &u, why), -EINVAL, "%s was accepted", c->uri);
    cr_assert(strstr(why, c->says) != NULL, "%s: '%s' does not say '%s'", c->uri, why, c->says);
    cr_assert(strstr(why, "secret") == NULL, "the message quotes the secret: %s", why);
}

/* A file in the test's directory holding text; its path. */
static const char *secret_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tsup_tmpdir(), name);
    FILE *f = fopen(path, "w");
    cr_assert(f != NULL && fwrite(text, 1, strlen(text), f) == strlen(text) && fclose(f) == 0);
    return path;
}

static int load(enum cbd_redis_secret_from from, const char *where, char *buf, char *why)
{
    struct cbd_redis_secret_ref ref = {.from = from};
    snprintf(ref.where, sizeof ref.where, "%s", where);
    return cbd_redis_secret_load(&ref, buf, CBD_REDIS_SECRET_MAX + 1, why, 512);
}

Test(redis_uri, a_password_file_gives_its_line_without_the_final_newline)
{
    char buf[CBD_REDIS_SECRET_MAX + 1], why[512];
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("a", "p@ss word\n"), buf, why), 0, "%s", why);
    cr_assert_str_eq(buf, "p@ss word");
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("b", "crlf\r\n"), buf, why), 0, "%s", why);
    cr_assert_str_eq(buf, "crlf");
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("c", "no-newline"), buf, why), 0, "%s", why);
    cr_assert_str_eq(buf, "no-newline");
}

Test(redis_uri, an_unusable_password_file_is_refused_naming_the_file_and_the_problem)
{
    char buf[CBD_REDIS_SECRET_MAX + 1], why[512], big[CBD_REDIS_SECRET_MAX + 8], missing[256];
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("two", "one\ntwo\n"), buf, why), -EINVAL);
    cr_assert(strstr(why, "holds more than one line") != NULL, "%s", why);
    cr_assert_eq(buf[0], '\0', "nothing of a refused file is left in the buffer");
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("empty", "\n"), buf, why), -EINVAL);
    cr_assert(strstr(why, "is empty") != NULL, "%s", why);
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, secret_file("big", big), buf, why), -EINVAL);
    cr_assert(strstr(why, "at most 512 bytes") != NULL, "%s", why);
    snprintf(missing, sizeof missing, "%s/none", tsup_tmpdir());
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, missing, buf, why), -ENOENT);
    cr_assert(strstr(why, "cannot read the password file") != NULL && strstr(why, missing) != NULL, "%s", why);
    cr_assert_eq(load(CBD_REDIS_SECRET_FILE, tsup_tmpdir(), buf, why), -EINVAL, "a directory");
}

Test(redis_uri, a_password_variable_is_read_when_asked_not_when_parsed)
{
    char buf[CBD_REDIS_SECRET_MAX + 1], why[512];
    unsetenv("CBD_TEST_PW");
    cr_assert_eq(load(CBD_REDIS_SECRET_ENV, "CBD_TEST_PW", buf, why), -ENOENT);
    cr_assert(strstr(why, "environment variable CBD_TEST_PW") != NULL && strstr(why, "not set") != NULL, "%s", why);
    setenv("CBD_TEST_PW", "rotated", 1);
    cr_assert_eq(load(CBD_REDIS_SECRET_ENV, "CBD_TEST_PW", buf, why), 0, "%s", why);
    cr_assert_str_eq(buf, "rotated");
    setenv("CBD_TEST_PW", "", 1);
    cr_assert_eq(load(CBD_REDIS_SECRET_ENV, "CBD_TEST_PW", buf, why), -EINVAL);
}
