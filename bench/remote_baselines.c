/*
 * remote_baselines.c - cb_bench_remote: the shared breakers that pay a
 * network round trip per call, measured on the workload cb_bench gives
 * libcb, so the report can read libcb's figures as ratios to them.
 *
 *     cb_bench_remote [--quick] [--json FILE] [--redis-port P] [--dynamo-port P]
 *
 *   Redis-per-call: what Redis-backed breaker libraries do. The check reads
 *     the circuit's hash on every call (HMGET state opened_at); a failure
 *     writes its counter (HINCRBY). hiredis' blocking API, one connection
 *     per process, against a redis-server on 127.0.0.1:P. Per-call latency
 *     of each, and total checks per second from 1, 2, 4 and 8 processes.
 *   DynamoDB-per-call: what Powertools' breaker does with its cache off:
 *     one uncached (consistent) GetItem per check, a blocking libcurl POST
 *     signed with SigV4 (dummy credentials) against dynalite on
 *     127.0.0.1:P, over one kept-alive connection.
 * bench/run.sh starts both servers on free loopback ports; a part whose
 * port is not given is skipped. Each call is timed on its own (a round
 * trip is thousands of times a clock read) after a warm-up. Timings are
 * reported, never asserted; the exit status says whether everything that
 * was asked for ran.
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"

#define SCALE_POINTS 4
static const int scale_n[SCALE_POINTS] = {1, 2, 4, 8};

enum { R_REDIS_ALLOW, R_REDIS_RECORD, R_DYNAMO_ALLOW, R_COUNT };

struct remote {
    int quick, redis_port, dynamo_port;
    const char *json;
    char key[64];
    struct result r[R_COUNT];
    double scale[SCALE_POINTS][2]; /* Redis checks/s: median, lowest */
    bool scaled;
};

/* ---- Redis-per-call -------------------------------------------------------------------------- */

static redisContext *redis_connect(int port)
{
    struct timeval tv = {2, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "cb_bench_remote: cannot connect to redis on 127.0.0.1:%d: %s\n", port,
                rc ? rc->errstr : "out of memory");
        redisFree(rc);
        return NULL;
    }
    return rc;
}

/* The breaker's check: read the state, allow when it is closed. 1 allowed,
 * 0 rejected, -1 on an error. */
static int redis_allow(redisContext *rc, const char *key)
{
    redisReply *r = redisCommand(rc, "HMGET %s state opened_at", key);
    int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 ? r->element[0]->type == REDIS_REPLY_STRING &&
                                                                          strcmp(r->element[0]->str, "closed") == 0
                                                                    : -1;
    freeReplyObject(r);
    return ok;
}

static int redis_record_failure(redisContext *rc, const char *key)
{
    redisReply *r = redisCommand(rc, "HINCRBY %s failures 1", key);
    int ok = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    freeReplyObject(r);
    return ok;
}

static int time_redis(struct remote *m, redisContext *rc, int which, int n)
{
    double *s = calloc((size_t)n, sizeof *s);
    if (s == NULL)
        return -1;
    for (int i = -n / 10; i < n; i++) { /* the first tenth is the warm-up */
        int64_t t0 = mono_ns();
        int ok = which == R_REDIS_ALLOW ? redis_allow(rc, m->key) : redis_record_failure(rc, m->key);
        if (ok < 0) {
            fprintf(stderr, "cb_bench_remote: redis: %s\n", rc->err ? rc->errstr : "unexpected reply");
            free(s);
            return -1;
        }
        if (i >= 0)
            s[i] = (double)(mono_ns() - t0);
    }
    summarise(&m->r[which], s, n);
    free(s);
    return 0;
}

/* n processes, a connection each, checking for `ns`: total checks/s. */
static double redis_scale_once(struct remote *m, int n, int64_t ns)
{
    double *rates = mmap(NULL, sizeof *rates * (size_t)n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rates == MAP_FAILED)
        return -1;
    for (int w = 0; w < n; w++) {
        if (fork() != 0)
            continue;
        redisContext *rc = redis_connect(m->redis_port);
        uint64_t calls = 0;
        int64_t t0 = mono_ns(), t;
        while (rc && (t = mono_ns()) - t0 < ns && redis_allow(rc, m->key) >= 0)
            calls++;
        rates[w] = rc && !rc->err ? (double)calls * 1e9 / (double)(mono_ns() - t0) : -1e18; /* read after wait() */
        _exit(0);
    }
    while (wait(NULL) > 0)
        ;
    double total = 0;
    for (int w = 0; w < n; w++)
        total += rates[w];
    munmap(rates, sizeof *rates * (size_t)n);
    return total;
}

static int run_redis(struct remote *m)
{
    redisContext *rc = redis_connect(m->redis_port);
    if (rc == NULL)
        return -1;
    snprintf(m->key, sizeof m->key, "cbbench:%d:payments", (int)getpid());
    redisReply *r = redisCommand(rc, "HSET %s state closed opened_at 0 failures 0", m->key);
    freeReplyObject(r);
    int n = m->quick ? 200 : 20000;
    int rcode = time_redis(m, rc, R_REDIS_ALLOW, n) | time_redis(m, rc, R_REDIS_RECORD, n);
    redisFree(rc);
    int reps = m->quick ? 1 : 3;
    for (int i = 0; rcode == 0 && i < SCALE_POINTS; i++) {
        double s[8];
        for (int k = 0; k < reps; k++)
            if ((s[k] = redis_scale_once(m, scale_n[i], m->quick ? 20000000 : 300000000)) < 0)
                rcode = -1;
        qsort(s, (size_t)reps, sizeof *s, cmp_double);
        m->scale[i][0] = s[reps / 2];
        m->scale[i][1] = s[0];
    }
    m->scaled = rcode == 0;
    return rcode;
}

/* ---- DynamoDB-per-call ----------------------------------------------------------------------- */

struct body {
    char buf[4096];
    size_t len;
};

static size_t body_write(char *p, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    size_t take = size * n;
    if (take > sizeof b->buf - 1 - b->len)
        take = sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, p, take);
    b->len += take;
    b->buf[b->len] = '\0';
    return size * n;
}

/* One signed DynamoDB JSON API request on the kept-alive handle. Returns
 * the HTTP status (body in *out), or -1 when the transfer failed. */
static long dynamo_post(CURL *h, struct curl_slist **hdrs, const char *op, const char *json, struct body *out)
{
    char target[96];
    snprintf(target, sizeof target, "X-Amz-Target: DynamoDB_20120810.%s", op);
    curl_slist_free_all(*hdrs);
    *hdrs = curl_slist_append(curl_slist_append(NULL, "Content-Type: application/x-amz-json-1.0"), target);
    out->len = 0;
    out->buf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, *hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    long status = -1;
    if (curl_easy_perform(h) != CURLE_OK || curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        return -1;
    return status;
}

static CURL *dynamo_handle(int port)
{
    static char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, "aws:amz:us-east-1:dynamodb");
    curl_easy_setopt(h, CURLOPT_USERPWD, "AKIDCBBENCH:cbbench-dummy-secret"); /* dynalite checks no signature */
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_write);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 5000L);
    return h;
}

/* The table and the circuit's item, as a Powertools user would have them. */
static int dynamo_prepare(CURL *h, struct curl_slist **hdrs, const char *table, const char *item)
{
    struct body b;
    char req[512];
    snprintf(req, sizeof req,
             "{\"TableName\":\"%s\",\"KeySchema\":[{\"AttributeName\":\"id\",\"KeyType\":\"HASH\"}],"
             "\"AttributeDefinitions\":[{\"AttributeName\":\"id\",\"AttributeType\":\"S\"}],"
             "\"ProvisionedThroughput\":{\"ReadCapacityUnits\":5,\"WriteCapacityUnits\":5}}",
             table);
    if (dynamo_post(h, hdrs, "CreateTable", req, &b) != 200) {
        fprintf(stderr, "cb_bench_remote: dynamodb CreateTable failed: %s\n", b.buf);
        return -1;
    }
    snprintf(req, sizeof req, "{\"TableName\":\"%s\"}", table);
    for (int i = 0; i < 100 && !strstr(b.buf, "\"TableStatus\":\"ACTIVE\""); i++) {
        sleep_us(50000);
        dynamo_post(h, hdrs, "DescribeTable", req, &b);
    }
    if (!strstr(b.buf, "\"TableStatus\":\"ACTIVE\""))
        return -1;
    snprintf(req, sizeof req,
             "{\"TableName\":\"%s\",\"Item\":{\"id\":{\"S\":\"%s\"},\"state\":{\"S\":\"closed\"},"
             "\"failure_count\":{\"N\":\"0\"}}}",
             table, item);
    return dynamo_post(h, hdrs, "PutItem", req, &b) == 200 ? 0 : -1;
}

static int run_dynamo(struct remote *m)
{
    struct curl_slist *hdrs = NULL;
    struct body b;
    char table[64], get[256];
    snprintf(table, sizeof table, "cbbench-%d", (int)getpid());
    snprintf(get, sizeof get, "{\"TableName\":\"%s\",\"Key\":{\"id\":{\"S\":\"payments\"}},\"ConsistentRead\":true}",
             table);
    CURL *h = dynamo_handle(m->dynamo_port);
    int n = m->quick ? 20 : 2000, rc = h && dynamo_prepare(h, &hdrs, table, "payments") == 0 ? 0 : -1;
    double *s = calloc((size_t)n, sizeof *s);
    for (int i = -n / 10; rc == 0 && s && i < n; i++) { /* the first tenth is the warm-up */
        int64_t t0 = mono_ns();
        if (dynamo_post(h, &hdrs, "GetItem", get, &b) != 200 || strstr(b.buf, "\"closed\"") == NULL) {
            fprintf(stderr, "cb_bench_remote: dynamodb GetItem failed: %s\n", b.buf);
            rc = -1;
        } else if (i >= 0) {
            s[i] = (double)(mono_ns() - t0);
        }
    }
    if (rc == 0 && s)
        summarise(&m->r[R_DYNAMO_ALLOW], s, n);
    free(s);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    return rc == 0 && s ? 0 : -1;
}

/* ---- report and main ------------------------------------------------------------------------- */

static int write_json(const struct remote *m)
{
    FILE *f = fopen(m->json, "w");
    if (f == NULL) {
        perror("cb_bench_remote: json");
        return -1;
    }
    fprintf(f, "{\n  \"quick\": %s,\n", m->quick ? "true" : "false");
    if (m->scaled) {
        fprintf(f, "  \"redis_scaling\": [");
        for (int i = 0; i < SCALE_POINTS; i++)
            fprintf(f, "%s{\"processes\": %d, \"median\": %.6g, \"lowest\": %.6g}", i ? ", " : "", scale_n[i],
                    m->scale[i][0], m->scale[i][1]);
        fprintf(f, "],\n");
    }
    fprintf(f, "  \"results\": {\n");
    int last = R_COUNT - 1;
    while (last > 0 && !m->r[last].ran)
        last--;
    for (int i = 0; i <= last; i++)
        if (m->r[i].ran)
            json_result(f, &m->r[i], i != last);
    fprintf(f, "  }\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

static int port_arg(const char *s)
{
    int p = atoi(s);
    if (p <= 0 || p > 65535) {
        fprintf(stderr, "cb_bench_remote: '%s' is not a TCP port\n", s);
        exit(2);
    }
    return p;
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"quick", no_argument, NULL, 'q'},          {"json", required_argument, NULL, 'j'},
        {"redis-port", required_argument, NULL, 'r'}, {"dynamo-port", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    static struct remote m = {
        .r = {[R_REDIS_ALLOW] = {.key = "redis_allow", .label = "Redis-per-call breaker: check (HMGET)", .unit = "ns"},
              [R_REDIS_RECORD] = {.key = "redis_record", .label = "Redis-per-call breaker: failure (HINCRBY)",
                                  .unit = "ns"},
              [R_DYNAMO_ALLOW] = {.key = "dynamo_allow", .label = "DynamoDB-per-call breaker: check (GetItem)",
                                  .unit = "ns"}},
    };
    for (int c; (c = getopt_long(argc, argv, "qj:r:d:", longs, NULL)) != -1;) {
        switch (c) {
        case 'q': m.quick = 1; break;
        case 'j': m.json = optarg; break;
        case 'r': m.redis_port = port_arg(optarg); break;
        case 'd': m.dynamo_port = port_arg(optarg); break;
        default:
            fprintf(stderr, "usage: cb_bench_remote [--quick] [--json FILE] [--redis-port P] [--dynamo-port P]\n");
            return 2;
        }
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = 0;
    if (m.redis_port)
        rc |= run_redis(&m);
    if (m.dynamo_port)
        rc |= run_dynamo(&m);
    for (int i = 0; i < R_COUNT; i++)
        if (m.r[i].ran)
            printf("%s: median %.1f us, p99 %.1f us (%d calls)\n", m.r[i].label, m.r[i].median / 1000,
                   m.r[i].p99 / 1000, m.r[i].samples);
    for (int i = 0; m.scaled && i < SCALE_POINTS; i++)
        printf("Redis-per-call, %d process%s: %.0f checks/s\n", scale_n[i], scale_n[i] > 1 ? "es" : "",
               m.scale[i][0]);
    if (m.json && write_json(&m) < 0)
        rc = -1;
    curl_global_cleanup();
    return rc == 0 ? 0 : 1;
}
