/*
 * test_aws_credentials.c - the SDK credential chain: environment, shared
 * files (with session tokens longer than libinih's line buffer), container
 * endpoint with an authorization token, IMDSv2, web identity through a fake
 * STS, and refresh before expiry. Every endpoint is a loopback fake; every
 * test starts from an environment without AWS variables and with EC2
 * metadata disabled, so nothing ever reaches 169.254.169.254.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../dynamo/ddb_test_support.h"
#include "aws_credentials.h"

static void clean_env(void)
{
    static const char *const vars[] = {
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION", "AWS_DEFAULT_REGION",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    };
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    setenv("HOME", tsup_tmpdir(), 1);
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
}

TestSuite(aws_credentials, .init = clean_env);

struct fx {
    uv_loop_t loop;
    struct cbd_aws_http *http;
    struct cbd_aws_credentials *p;
    bool ready;
};

static void on_ready(void *arg)
{
    ((struct fx *)arg)->ready = true;
}

static int fx_create(struct fx *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    uv_loop_init(&f->loop);
    cr_assert_eq(cbd_aws_http_create(&f->http, &f->loop), 0);
    return cbd_aws_credentials_create(&f->p, f->http, "eu-west-1", on_ready, f, err, errlen);
}

static void fx_init(struct fx *f)
{
    char err[512] = "";
    int rc = fx_create(f, err, sizeof err);
    cr_assert_eq(rc, 0, "create: %d %s", rc, err);
}

/* get(), waiting for a fetch if one starts. */
static int fx_get(struct fx *f, struct cbd_aws_creds *c, const char **why)
{
    f->ready = false;
    int rc = cbd_aws_credentials_get(f->p, c, why);
    if (rc == -EAGAIN) {
        cr_assert(ddb_run_until(&f->loop, &f->ready, 10000), "the fetch never ended");
        rc = cbd_aws_credentials_get(f->p, c, why);
    }
    return rc;
}

static void fx_fini(struct fx *f)
{
    cbd_aws_credentials_free(f->p);
    cbd_aws_http_close(f->http, NULL, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&f->loop), 0, "a handle was left open");
}

/* Creating the provider in this environment fails with rc, with an error
 * message that contains says. */
static void expect_create_error(int rc, const char *says)
{
    struct fx f;
    char err[512] = "";
    cr_assert_eq(fx_create(&f, err, sizeof err), rc);
    cr_assert(strstr(err, says), "%s", err);
    fx_fini(&f);
}

static const char *write_file(const char *name, const char *text)
{
    static char path[8][PATH_MAX];
    static int n;
    char *p = path[n++ % 8];
    snprintf(p, PATH_MAX, "%s/%s", tsup_tmpdir(), name);
    FILE *f = fopen(p, "w");
    cr_assert(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static void iso_time(int64_t t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
}

/* ---- static sources ------------------------------------------------------------ */

Test(aws_credentials, environment_keys_come_first)
{
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    setenv("AWS_SHARED_CREDENTIALS_FILE", write_file("creds", "[default]\naws_access_key_id = FILEKEY\n"
                                                              "aws_secret_access_key = filesecret\n"), 1);
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    setenv("AWS_SESSION_TOKEN", "envtoken", 1);
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0);
    cr_assert_str_eq(c.key_id, "ENVKEY");
    cr_assert_str_eq(c.secret, "envsecret");
    cr_assert_str_eq(c.token, "envtoken");
    cr_assert_eq(c.expiration, 0);
    cr_assert_str_eq(cbd_aws_credentials_source(f.p), "environment");
    fx_fini(&f);
}

Test(aws_credentials, half_set_environment_keys_are_an_error)
{
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    expect_create_error(-EINVAL, "AWS_SECRET_ACCESS_KEY");
}

Test(aws_credentials, profile_keys_and_a_session_token_longer_than_inih_lines)
{
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    static char text[8192], token[3001];
    memset(token, 'T', 3000);
    token[0] = 'A';
    token[2999] = 'Z';
    snprintf(text, sizeof text,
             "# a long comment %0300d\n[default]\naws_access_key_id = DEFAULTKEY\naws_secret_access_key = d\n\n"
             "[work]\naws_access_key_id = WORKKEY\naws_secret_access_key = work/secret+key\n"
             "aws_session_token = %s\nregion = eu-central-1\n", 0, token);
    setenv("AWS_SHARED_CREDENTIALS_FILE", write_file("creds", text), 1);
    setenv("AWS_PROFILE", "work", 1);
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0);
    cr_assert_str_eq(c.key_id, "WORKKEY");
    cr_assert_str_eq(c.secret, "work/secret+key");
    cr_assert_eq(strlen(c.token), 3000, "token cut to %zu bytes", strlen(c.token));
    cr_assert_str_eq(c.token, token);
    cr_assert_str_eq(cbd_aws_credentials_source(f.p), "profile work");
    fx_fini(&f);
}

Test(aws_credentials, config_file_profile_section_gives_keys_and_region)
{
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    char region[64];
    setenv("AWS_CONFIG_FILE", write_file("config", "[default]\nregion = us-west-2\n[profile ops]\n"
                                                   "region = ap-south-1\naws_access_key_id = OPSKEY\n"
                                                   "aws_secret_access_key = ops\n"), 1);
    cr_assert_eq(cbd_aws_default_region(region, sizeof region), 0);
    cr_assert_str_eq(region, "us-west-2");
    setenv("AWS_PROFILE", "ops", 1);
    cr_assert_eq(cbd_aws_default_region(region, sizeof region), 0);
    cr_assert_str_eq(region, "ap-south-1");
    setenv("AWS_REGION", "sa-east-1", 1);
    cr_assert_eq(cbd_aws_default_region(region, sizeof region), 0);
    cr_assert_str_eq(region, "sa-east-1");
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0);
    cr_assert_str_eq(c.key_id, "OPSKEY");
    fx_fini(&f);
}

Test(aws_credentials, a_profile_asked_for_by_name_must_exist)
{
    setenv("AWS_SHARED_CREDENTIALS_FILE", write_file("creds", "[default]\naws_access_key_id = K\n"
                                                              "aws_secret_access_key = S\n"), 1);
    setenv("AWS_PROFILE", "nosuch", 1);
    expect_create_error(-ENOENT, "'nosuch' not found");
}

Test(aws_credentials, no_source_at_all_says_what_was_looked_for)
{
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    fx_init(&f);
    cr_assert_eq(cbd_aws_credentials_get(f.p, &c, &why), -ENOKEY);
    cr_assert(strstr(why, "no AWS credentials"), "%s", why);
    fx_fini(&f);
}

/* ---- the container endpoint ------------------------------------------------------ */

struct container {
    int calls;
    int64_t expires;   /* Expiration of the answer */
    int status;
    char auth[256];    /* the Authorization header seen */
};

static void container_handler(void *arg, const struct fake_req *rq, struct fake_resp *rs)
{
    struct container *c = arg;
    char exp[40];
    c->calls++;
    if (!fake_header(rq, "Authorization", c->auth, sizeof c->auth))
        c->auth[0] = '\0';
    iso_time(c->expires, exp, sizeof exp);
    rs->status = c->status ? c->status : 200;
    snprintf(rs->body, sizeof rs->body,
             "{\"AccessKeyId\":\"ASIA%d\",\"SecretAccessKey\":\"s%d\",\"Token\":\"tok%d\",\"Expiration\":\"%s\"}",
             c->calls, c->calls, c->calls, exp);
}

static void container_env(struct fake_http *srv)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v2/credentials/abc", srv->port);
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url, 1);
}

Test(aws_credentials, container_endpoint_with_authorization_token_file)
{
    static struct container st;
    st.expires = time(NULL) + 3600;
    struct fake_http *srv = fake_http_start(container_handler, &st);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    container_env(srv);
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "from-env", 1);
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", write_file("eks-token", "from-file\n"), 1);
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0, "%s", why);
    cr_assert_str_eq(c.key_id, "ASIA1");
    cr_assert_str_eq(c.token, "tok1");
    cr_assert_eq(c.expiration, st.expires);
    pthread_mutex_lock(&srv->mu);
    cr_assert_str_eq(st.auth, "from-file", "the token file wins over the variable");
    pthread_mutex_unlock(&srv->mu);
    cr_assert_eq(fx_get(&f, &c, &why), 0);
    cr_assert_eq(st.calls, 1, "fresh credentials are not fetched again");
    fx_fini(&f);
}

Test(aws_credentials, container_full_uri_on_a_foreign_host_is_refused)
{
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://10.1.2.3/creds", 1);
    expect_create_error(-EINVAL, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
}

Test(aws_credentials, container_full_uri_on_a_host_named_like_loopback_is_refused)
{
    /* 127.evil.example resolves anywhere: only a dotted 127.x address is
     * loopback, or the token would travel over plain http to a remote host. */
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.evil.example/creds", 1);
    expect_create_error(-EINVAL, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://127.0.0.1.nip.io/creds", 1);
    expect_create_error(-EINVAL, "AWS_CONTAINER_CREDENTIALS_FULL_URI");
}

Test(aws_credentials, credentials_near_expiry_are_refreshed_in_the_background)
{
    static struct container st;
    st.expires = time(NULL) + CBD_AWS_REFRESH_BEFORE_S / 2;
    struct fake_http *srv = fake_http_start(container_handler, &st);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    container_env(srv);
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0, "%s", why);
    cr_assert_str_eq(c.key_id, "ASIA1");
    /* Inside the refresh window: still usable, so get() answers at once
     * with them and starts a refresh behind. */
    f.ready = false;
    cr_assert_eq(cbd_aws_credentials_get(f.p, &c, &why), 0);
    cr_assert_str_eq(c.key_id, "ASIA1");
    cr_assert(ddb_run_until(&f.loop, &f.ready, 10000), "no refresh started");
    cr_assert_eq(cbd_aws_credentials_get(f.p, &c, &why), 0);
    cr_assert_str_eq(c.key_id, "ASIA2");
    fx_fini(&f);
}

Test(aws_credentials, expired_credentials_are_not_used_and_a_failed_fetch_says_why)
{
    static struct container st;
    st.expires = time(NULL) + 5; /* inside the expiry slack */
    struct fake_http *srv = fake_http_start(container_handler, &st);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    container_env(srv);
    fx_init(&f);
    int rc = fx_get(&f, &c, &why);
    cr_assert_eq(rc, -EAGAIN, "credentials about to expire must not be handed out (rc %d)", rc);
    pthread_mutex_lock(&srv->mu);
    st.status = 500;
    pthread_mutex_unlock(&srv->mu);
    usleep(1100 * 1000); /* past the first backoff ceiling */
    rc = fx_get(&f, &c, &why);
    cr_assert_eq(rc, -EIO);
    cr_assert(strstr(why, "container credentials endpoint") && strstr(why, "HTTP 500"), "%s", why);
    fx_fini(&f);
}

/* ---- IMDSv2 ----------------------------------------------------------------------- */

struct imds {
    int puts, gets;
    bool bad_token;
};

static void imds_handler(void *arg, const struct fake_req *rq, struct fake_resp *rs)
{
    struct imds *m = arg;
    char v[64] = "", exp[40];
    if (strcmp(rq->method, "PUT") == 0 && strcmp(rq->path, "/latest/api/token") == 0) {
        m->puts++;
        bool ttl = fake_header(rq, "X-aws-ec2-metadata-token-ttl-seconds", v, sizeof v);
        rs->status = ttl ? 200 : 400;
        strcpy(rs->body, "IMDSTOKEN==");
        return;
    }
    m->gets++;
    if (!fake_header(rq, "X-aws-ec2-metadata-token", v, sizeof v) || strcmp(v, "IMDSTOKEN==") != 0) {
        m->bad_token = true;
        rs->status = 401;
        return;
    }
    iso_time(time(NULL) + 6 * 3600, exp, sizeof exp);
    if (strcmp(rq->path, "/latest/meta-data/iam/security-credentials/") == 0)
        strcpy(rs->body, "web-role\n");
    else if (strcmp(rq->path, "/latest/meta-data/iam/security-credentials/web-role") == 0)
        snprintf(rs->body, sizeof rs->body,
                 "{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAIMDS\",\"SecretAccessKey\":"
                 "\"imds/secret\",\"Token\":\"imdstoken\",\"Expiration\":\"%s\"}", exp);
    else
        rs->status = 404;
}

Test(aws_credentials, imdsv2_puts_a_token_then_reads_role_and_credentials)
{
    static struct imds m;
    struct fake_http *srv = fake_http_start(imds_handler, &m);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    char ep[64];
    snprintf(ep, sizeof ep, "http://127.0.0.1:%d/", srv->port);
    setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", ep, 1);
    unsetenv("AWS_EC2_METADATA_DISABLED");
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0, "%s", why);
    cr_assert_str_eq(c.key_id, "ASIAIMDS");
    cr_assert_str_eq(c.secret, "imds/secret");
    cr_assert_str_eq(c.token, "imdstoken");
    cr_assert_gt(c.expiration, time(NULL) + 3600);
    cr_assert_str_eq(cbd_aws_credentials_source(f.p), "EC2 instance metadata");
    cr_assert_eq(m.puts, 1);
    cr_assert_eq(m.gets, 2);
    cr_assert_not(m.bad_token);
    fx_fini(&f);
}

/* ---- web identity ------------------------------------------------------------------ */

struct sts {
    int calls;
    bool good_request;
    int status;
};

static void sts_handler(void *arg, const struct fake_req *rq, struct fake_resp *rs)
{
    struct sts *s = arg;
    char exp[40];
    s->calls++;
    s->good_request = strcmp(rq->method, "POST") == 0 && strstr(rq->body, "Action=AssumeRoleWithWebIdentity") &&
                      strstr(rq->body, "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fcbd") &&
                      strstr(rq->body, "RoleSessionName=host-a") && strstr(rq->body, "WebIdentityToken=eyJ.jwt.sig");
    if (s->status) {
        rs->status = s->status;
        strcpy(rs->body, "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>Not "
                         "authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>");
        return;
    }
    iso_time(time(NULL) + 3600, exp, sizeof exp);
    snprintf(rs->body, sizeof rs->body,
             "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
             "  <AssumeRoleWithWebIdentityResult>\n    <Credentials>\n"
             "      <AccessKeyId>ASIASTS</AccessKeyId>\n      <SecretAccessKey>sts/secret&amp;x</SecretAccessKey>\n"
             "      <SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken>\n      <Expiration>%s</Expiration>\n"
             "    </Credentials>\n  </AssumeRoleWithWebIdentityResult>\n</AssumeRoleWithWebIdentityResponse>\n",
             exp);
}

static struct fake_http *sts_env(struct sts *s) /* s: static, see fake_http_start */
{
    struct fake_http *srv = fake_http_start(sts_handler, s);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv->port);
    setenv("AWS_ENDPOINT_URL_STS", url, 1);
    setenv("AWS_WEB_IDENTITY_TOKEN_FILE", write_file("jwt", "eyJ.jwt.sig\n"), 1);
    setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/cbd", 1);
    setenv("AWS_ROLE_SESSION_NAME", "host-a", 1);
    return srv;
}

Test(aws_credentials, web_identity_token_is_exchanged_at_sts)
{
    static struct sts s;
    struct fake_http *srv = sts_env(&s);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), 0, "%s", why);
    cr_assert_str_eq(c.key_id, "ASIASTS");
    cr_assert_str_eq(c.secret, "sts/secret&x");
    cr_assert_str_eq(c.token, "FwoGZXIvYXdzEXAMPLE");
    pthread_mutex_lock(&srv->mu);
    cr_assert(s.good_request, "the STS request lacked an expected parameter");
    pthread_mutex_unlock(&srv->mu);
    fx_fini(&f);
}

Test(aws_credentials, sts_refusal_is_reported_with_its_code)
{
    static struct sts s = {.status = 403};
    sts_env(&s);
    struct fx f;
    struct cbd_aws_creds c;
    const char *why;
    fx_init(&f);
    cr_assert_eq(fx_get(&f, &c, &why), -EACCES);
    cr_assert(strstr(why, "AccessDenied") && strstr(why, "Not authorized"), "%s", why);
    fx_fini(&f);
}

/* ---- time and XML parsing ---------------------------------------------------------- */

struct time_case {
    char text[40]; /* inline: criterion hands parameters to a re-executed worker */
    int rc;
    int64_t epoch;
};

ParameterizedTestParameters(aws_credentials, iso_8601_times_parse)
{
    static struct time_case cases[] = {
        {"2024-05-01T12:00:00Z", 0, 1714564800},      {"2024-05-01T12:00:00.123Z", 0, 1714564800},
        {"2024-05-01T14:00:00+02:00", 0, 1714564800}, {"2024-05-01T12:00:00", -EINVAL, 0},
        {"2024-13-01T12:00:00Z", -EINVAL, 0},         {"yesterday", -EINVAL, 0},
        {"2024-05-01T12:00:00Zjunk", -EINVAL, 0},     {"", -EINVAL, 0},
    };
    return cr_make_param_array(struct time_case, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct time_case *tc, aws_credentials, iso_8601_times_parse)
{
    int64_t t = 0;
    cr_assert_eq(cbd_aws_parse_time(tc->text, &t), tc->rc, "%s", tc->text);
    if (tc->rc == 0)
        cr_assert_eq(t, tc->epoch, "%s", tc->text);
}

Test(aws_credentials, xml_text_refuses_markup_and_unknown_entities)
{
    char buf[32];
    const char *ok = "<a><Code>Throttling</Code></a>", *nested = "<Code><b>x</b></Code>";
    const char *ent = "<Code>&#x41;</Code>", *big = "<Code>0123456789012345678901234567890123456789</Code>";
    cr_assert_eq(cbd_aws_xml_text(ok, strlen(ok), "Code", buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "Throttling");
    cr_assert_eq(cbd_aws_xml_text(ok, strlen(ok), "Message", buf, sizeof buf), -ENOENT);
    cr_assert_eq(cbd_aws_xml_text(nested, strlen(nested), "Code", buf, sizeof buf), -EBADMSG);
    cr_assert_eq(cbd_aws_xml_text(ent, strlen(ent), "Code", buf, sizeof buf), -EBADMSG);
    cr_assert_eq(cbd_aws_xml_text(big, strlen(big), "Code", buf, sizeof buf), -ENAMETOOLONG);
    cr_assert_eq(cbd_aws_xml_text(ok, 12, "Code", buf, sizeof buf), -EBADMSG, "a cut answer has no end tag");
}
