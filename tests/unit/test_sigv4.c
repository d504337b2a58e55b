/*
 * test_sigv4.c - requests signed by aws_http (libcurl's SigV4) are checked
 * by an endpoint that recomputes the signature from the secret with AWS's
 * reference algorithm (tests/dynamo/sigv4_endpoint.py, hmac + hashlib).
 * AWS's published test vectors cannot be fetched here; a verifier that
 * refuses a wrong secret and accepts the right one is the next best thing.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "../dynamo/ddb_test_support.h"
#include "aws_http.h"

#define KEY "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define TOKEN "IQoJb3JpZ2luX2VjEXAMPLE//token+with/slashes=="

/* Start the verifier for (region, service), optionally requiring token. */
static int verifier_start(const char *token)
{
    char script[PATH_MAX], pf[PATH_MAX], log[PATH_MAX];
    ddb_tests_path(script, "dynamo/sigv4_endpoint.py");
    snprintf(pf, sizeof pf, "%s/sigv4.port", tsup_tmpdir());
    snprintf(log, sizeof log, "%s/sigv4.log", tsup_tmpdir());
    char *argv[] = {"/usr/bin/python3", script, "--port-file", pf, "--key", KEY, "--secret", SECRET,
                    "--region", "eu-west-1", "--service", "dynamodb", "--token", (char *)(token ? token : ""),
                    NULL};
    cr_assert(tsup_spawn(argv, log) > 0);
    cr_assert(tsup_wait_until(access(pf, R_OK) == 0, 10000), "sigv4 endpoint did not start (see %s)", log);
    FILE *f = fopen(pf, "r");
    int port = 0;
    cr_assert(f && fscanf(f, "%d", &port) == 1);
    fclose(f);
    return port;
}

struct answer {
    bool done;
    long status;
    char code[128];
};

static void on_answer(void *arg, const struct cbd_aws_response *r)
{
    struct answer *a = arg;
    a->status = r->status;
    snprintf(a->code, sizeof a->code, "%s", r->error_code);
    a->done = true;
}

/* POST body to the verifier, signed with (secret, token): the answer. */
static struct answer signed_post(int port, const char *secret, const char *token, const char *body)
{
    uv_loop_t loop;
    struct cbd_aws_http *h;
    struct answer a = {0};
    struct cbd_aws_creds cr = {.key_id = KEY};
    char url[64];
    snprintf(cr.secret, sizeof cr.secret, "%s", secret);
    snprintf(cr.token, sizeof cr.token, "%s", token ? token : "");
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    const char *hdrs[] = {"Content-Type: application/x-amz-json-1.0", "X-Amz-Target: DynamoDB_20120810.GetItem",
                          NULL};
    struct cbd_aws_request q = {.method = "POST", .url = url, .body = body, .body_len = strlen(body),
                                .headers = hdrs, .sigv4 = "aws:amz:eu-west-1:dynamodb", .creds = &cr,
                                .timeout_ms = 5000, .connect_timeout_ms = 5000, .max_attempts = 1,
                                .cb = on_answer, .arg = &a};
    uv_loop_init(&loop);
    cr_assert_eq(cbd_aws_http_create(&h, &loop), 0);
    cr_assert_eq(cbd_aws_http_send(h, &q), 0);
    cr_assert(ddb_run_until(&loop, &a.done, 10000), "no answer from the verifier");
    cbd_aws_http_close(h, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&loop), 0);
    return a;
}

Test(sigv4, signed_request_verifies_against_reference_computation)
{
    int port = verifier_start(NULL);
    struct answer a = signed_post(port, SECRET, NULL, "{\"TableName\":\"circuits\",\"Key\":{\"id\":{\"S\":\"x\"}}}");
    cr_assert_eq(a.status, 200, "verifier said %ld %s", a.status, a.code);
}

Test(sigv4, wrong_secret_is_refused_by_the_verifier)
{
    int port = verifier_start(NULL);
    struct answer a = signed_post(port, "not-the-secret", NULL, "{}");
    cr_assert_eq(a.status, 403);
    cr_assert_str_eq(a.code, "InvalidSignatureException");
}

Test(sigv4, session_token_travels_in_x_amz_security_token)
{
    int port = verifier_start(TOKEN);
    struct answer a = signed_post(port, SECRET, TOKEN, "{}");
    cr_assert_eq(a.status, 200, "verifier said %ld %s", a.status, a.code);
}

Test(sigv4, missing_session_token_is_refused)
{
    int port = verifier_start(TOKEN);
    struct answer a = signed_post(port, SECRET, NULL, "{}");
    cr_assert_eq(a.status, 403);
    cr_assert_str_eq(a.code, "UnrecognizedClientException");
}

Test(sigv4, large_body_with_unicode_and_escapes_verifies)
{
    static char body[64 * 1024];
    int port = verifier_start(TOKEN);
    size_t n = (size_t)snprintf(body, sizeof body, "{\"TableName\":\"t\",\"Keys\":[");
    for (int i = 0; i < 400 && n < sizeof body - 200; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, "%s{\"id\":{\"S\":\"c\\u00e9-\xc3\xa9/%d \\\"q\\\" +&=\"}}",
                              i ? "," : "", i);
    snprintf(body + n, sizeof body - n, "]}");
    struct answer a = signed_post(port, SECRET, TOKEN, body);
    cr_assert_eq(a.status, 200, "verifier said %ld %s", a.status, a.code);
}
