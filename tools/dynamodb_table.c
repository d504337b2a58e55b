/*
 * dynamodb_table.c - table creation for cbctl, a client of DynamoDB like
 * any other: the same URI (dynamodb_uri.c), credentials chain and signed
 * HTTP (aws_http.c) as the daemon's store, none of the daemon.
 *
 * Steps, each one request on a private libuv loop: CreateTable (an
 * existing table is fine), DescribeTable every second until ACTIVE (its key
 * schema must be the URI's), UpdateTimeToLive on the expiration attribute,
 * as Powertools' table has it.
 */
#define _GNU_SOURCE /* explicit_bzero */
#include "dynamodb_table.h"

#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "aws_credentials.h"
#include "aws_http.h"
#include "dynamodb_uri.h"

#define CREATE_POLLS 300u /* DescribeTable polls, 1 s apart */

enum ct_step { CT_CREATE, CT_DESCRIBE, CT_TTL, CT_DONE };

struct ct {
    struct cbd_ddb_opts o;
    uv_loop_t loop;
    uv_timer_t timer;
    struct cbd_aws_http *http;
    struct cbd_aws_credentials *creds;
    enum ct_step step;
    unsigned polls;
    int rc;
    char *err;
    size_t errlen;
};

static void ct_next(struct ct *t);

static void ct_end(struct ct *t, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ct_end(struct ct *t, int rc, const char *fmt, ...)
{
    va_list ap;
    t->rc = rc;
    t->step = CT_DONE;
    va_start(ap, fmt);
    vsnprintf(t->err, t->errlen, fmt, ap);
    va_end(ap);
}

static json_t *ct_body(const struct ct *t)
{
    const struct cbd_ddb_opts *o = &t->o;
    if (t->step == CT_DESCRIBE)
        return json_pack("{s:s}", "TableName", o->table);
    if (t->step == CT_TTL)
        return json_pack("{s:s, s:{s:s, s:b}}", "TableName", o->table, "TimeToLiveSpecification", "AttributeName",
                         o->a_exp, "Enabled", 1);
    json_t *defs = json_pack("[{s:s, s:s}]", "AttributeName", o->pk, "AttributeType", "S");
    json_t *keys = json_pack("[{s:s, s:s}]", "AttributeName", o->pk, "KeyType", "HASH");
    if (o->sk[0]) {
        json_array_append_new(defs, json_pack("{s:s, s:s}", "AttributeName", o->sk, "AttributeType", "S"));
        json_array_append_new(keys, json_pack("{s:s, s:s}", "AttributeName", o->sk, "KeyType", "RANGE"));
    }
    return json_pack("{s:s, s:o, s:o, s:s}", "TableName", o->table, "AttributeDefinitions", defs, "KeySchema",
                     keys, "BillingMode", "PAY_PER_REQUEST");
}

/* The table's key schema equals the URI's: "" or what differs. */
static const char *ct_schema_differs(const struct ct *t, json_t *table)
{
    const char *hash = NULL, *range = NULL;
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(table, "KeySchema"), i, k) {
        const char *type = json_string_value(json_object_get(k, "KeyType"));
        const char *name = json_string_value(json_object_get(k, "AttributeName"));
        if (type && strcmp(type, "HASH") == 0)
            hash = name;
        else if (type && strcmp(type, "RANGE") == 0)
            range = name;
    }
    if (!hash || strcmp(hash, t->o.pk) != 0)
        return "partition key";
    if (strcmp(range ? range : "", t->o.sk) != 0)
        return "sort key";
    return "";
}

static void ct_on_timer(uv_timer_t *tm)
{
    ct_next(tm->data);
}

static void ct_describe(struct ct *t, const struct cbd_aws_response *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL), *table = json_object_get(j, "Table");
    const char *status = json_string_value(json_object_get(table, "TableStatus"));
    const char *diff = table ? ct_schema_differs(t, table) : "";
    if (!status)
        ct_end(t, -EBADMSG, "DescribeTable %s: answer without Table.TableStatus", t->o.table);
    else if (diff[0])
        ct_end(t, -EEXIST, "table %s exists with another %s than the URI's (pk/sk options)", t->o.table, diff);
    else if (strcmp(status, "ACTIVE") == 0) {
        t->step = CT_TTL;
        ct_next(t);
    } else if (++t->polls > CREATE_POLLS)
        ct_end(t, -ETIMEDOUT, "table %s still %s after 5 minutes", t->o.table, status);
    else
        uv_timer_start(&t->timer, ct_on_timer, 1000, 0);
    json_decref(j);
}

static void ct_answer(void *arg, const struct cbd_aws_response *r)
{
    struct ct *t = arg;
    bool ok = r->status >= 200 && r->status <= 299;
    int err = r->status == 400 || r->status == 403 ? -EACCES : -EIO;
    if (r->cancelled)
        return;
    if (t->step == CT_CREATE) {
        if (ok || strcmp(r->error_code, "ResourceInUseException") == 0) {
            t->step = CT_DESCRIBE;
            ct_next(t);
        } else {
            ct_end(t, err, "CreateTable %s: %s", t->o.table, r->why);
        }
    } else if (t->step == CT_DESCRIBE) {
        if (ok)
            ct_describe(t, r);
        else
            ct_end(t, err, "DescribeTable %s: %s", t->o.table, r->why);
    } else if (ok || strstr(r->body, "already enabled")) {
        ct_end(t, 0, "table %s ready, TTL on attribute %s", t->o.table, t->o.a_exp);
    } else if (strcmp(r->error_code, "UnknownOperationException") == 0) {
        ct_end(t, 1, "table %s ready; warning: the endpoint does not support UpdateTimeToLive (a local emulator?), "
               "so expired items are not deleted (%s)", t->o.table, r->why);
    } else {
        ct_end(t, 1, "table %s ready; warning: could not enable TTL: %s", t->o.table, r->why);
    }
}

static void ct_next(struct ct *t)
{
    static const char *const ops[] = {"CreateTable", "DescribeTable", "UpdateTimeToLive"};
    struct cbd_aws_creds cr;
    const char *why;
    if (t->step == CT_DONE)
        return;
    int rc = cbd_aws_credentials_get(t->creds, &cr, &why);
    if (rc == -EAGAIN)
        return; /* ct_next again when they are in */
    if (rc < 0) {
        ct_end(t, rc, "AWS credentials: %s", why[0] ? why : "none found (environment, profile, container, "
               "EC2 metadata)");
        return;
    }
    json_t *body = ct_body(t);
    rc = body != NULL ? cbd_ddb_send(t->http, &t->o, &cr, ops[t->step], body, t->o.attempts + 2, ct_answer, t)
                      : -ENOMEM;
    json_decref(body);
    explicit_bzero(&cr, sizeof cr);
    if (rc < 0)
        ct_end(t, rc, "cannot send %s: %s", ops[t->step], strerror(-rc));
}

static void ct_on_creds(void *arg)
{
    ct_next(arg);
}

int dynamodb_table_create(const char *uri, char *err, size_t errlen)
{
    struct ct *t = calloc(1, sizeof *t);
    char cerr[256];
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->err = err;
    t->errlen = errlen;
    const char *msg = cbd_ddb_uri_parse(&t->o, uri);
    if (msg) {
        snprintf(err, errlen, "%s", msg);
        free(t);
        return -EINVAL;
    }
    uv_loop_init(&t->loop);
    uv_timer_init(&t->loop, &t->timer);
    t->timer.data = t;
    int rc = cbd_aws_http_create(&t->http, &t->loop);
    if (rc < 0) {
        snprintf(err, errlen, "out of memory");
    } else if ((rc = cbd_aws_credentials_create(&t->creds, t->http, t->o.region, ct_on_creds, t, cerr,
                                                sizeof cerr)) < 0) {
        ct_end(t, rc, "AWS credentials: %s", cerr);
    } else {
        ct_next(t);
        uv_run(&t->loop, UV_RUN_DEFAULT); /* until no request or poll timer is left */
        if (t->step != CT_DONE)
            ct_end(t, -EIO, "create-table of %s stopped before it finished", t->o.table);
        rc = t->rc;
    }
    cbd_aws_credentials_free(t->creds);
    if (t->http)
        cbd_aws_http_close(t->http, NULL, NULL);
    uv_close((uv_handle_t *)&t->timer, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->loop);
    free(t);
    return rc;
}
