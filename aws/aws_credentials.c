/*
 * aws_credentials.c - the AWS SDKs' credential chain, on cbd's loop.
 *
 * Design. The chain is resolved once, at create: the first configured
 * source wins, as in the SDKs (environment, web identity, shared files,
 * container endpoint, EC2 metadata). A source that was configured but is
 * broken (a profile asked for by name and missing, a container URI on a
 * host that is not allowed) is an error right away, not a silent fall
 * through to the next source: an operator who set AWS_PROFILE wants that
 * profile or a clear message.
 *
 * Static sources (environment, profile keys) are read once. Fetching
 * sources (STS web identity, container, IMDSv2) fetch through the shared
 * aws_http client, never blocking the loop, on the first get() and again
 * CBD_AWS_REFRESH_BEFORE_S before expiry: get() keeps answering with the
 * current credentials while a refresh runs, so requests never wait for a
 * refresh unless the credentials are actually about to expire. A failed
 * fetch backs off (full jitter, 1 s doubling to 60 s) so a missing metadata
 * service is not hammered by every sync.
 *
 * Parsing. Shared files go through libinih. Debian's libinih has a fixed
 * 200-byte line buffer, and session tokens are longer: a small reader cuts
 * long lines into inih continuation lines (leading blank), and the handler
 * glues the pieces of one value back together. JSON answers (container,
 * IMDS) go through jansson; STS's XML through cbd_aws_xml_text, which reads
 * flat machine-written tags and refuses anything else.
 *
 * Files (the shared files, token files) are small and local and read
 * synchronously: at create, and for token files once per fetch (hourly).
 */
#define _GNU_SOURCE /* memmem, timegm */
#include "aws_credentials.h"
#include "segment.h" /* cb__parse_bool */

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FILE_MAX (1u << 20)       /* bytes of a shared file or token file we read */
#define CONTAINER_HOST "http://169.254.170.2"
#define IMDS_DEFAULT "http://169.254.169.254"
#define IMDS_TOKEN_TTL_S "21600"
#define FETCH_TIMEOUT_MS 5000u    /* STS, container */
#define IMDS_TIMEOUT_MS 1000u     /* the SDKs' default: metadata answers fast or not at all */
#define BACKOFF_BASE_MS 1000u
#define BACKOFF_CAP_MS 60000u

enum source { SRC_NONE, SRC_STATIC, SRC_WEB_IDENTITY, SRC_CONTAINER, SRC_IMDS };
enum imds_step { IMDS_TOKEN, IMDS_ROLE, IMDS_CREDS };

struct cbd_aws_credentials {
    struct cbd_aws_http *http;
    void (*ready)(void *arg);
    void *arg;
    enum source kind;
    struct cbd_aws_creds cur;
    bool have;
    bool fetching, freed;
    int last_rc;
    uint32_t failures;
    uint64_t next_try_ms;  /* monotonic: no fetch before this after a failure */
    char why[768];
    /* web identity */
    char role_arn[256], token_file[1024], session_name[64], sts_url[512];
    /* container */
    char url[1024], auth_file[1024], auth[2048];
    /* IMDS */
    char imds[512], imds_token[1024], role[256];
    enum imds_step step;
};

/* What one profile of the shared files says. */
struct profile {
    char key_id[128], secret[128], token[4096], region[64];
    char role_arn[256], token_file[1024], session_name[64];
    bool found;
    const char *too_long; /* a value that did not fit */
};

static bool set(const char *s)
{
    return s && *s;
}

static int copy(char *dst, size_t len, const char *src)
{
    int n = snprintf(dst, len, "%s", src ? src : "");
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

/* ---- files ------------------------------------------------------------------ */

/* Read a whole small file into a malloc'd, NUL-terminated buffer. */
static int read_file(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = malloc(FILE_MAX + 1);
    size_t n = 0;
    ssize_t r = 0;
    while (buf && n < FILE_MAX && (r = read(fd, buf + n, FILE_MAX - n)) > 0)
        n += (size_t)r;
    int err = r < 0 ? -errno : 0;
    close(fd);
    if (!buf)
        return -ENOMEM;
    if (err < 0 || n == FILE_MAX) {
        free(buf);
        return err < 0 ? err : -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* env's path, "~/" expanded, else $HOME/<dflt>. */
static int shared_path(const char *env, const char *dflt, char *buf, size_t len)
{
    const char *v = getenv(env), *home = getenv("HOME");
    int n;
    if (set(v) && strncmp(v, "~/", 2) == 0)
        n = snprintf(buf, len, "%s/%s", home ? home : "", v + 2);
    else if (set(v))
        n = snprintf(buf, len, "%s", v);
    else
        n = snprintf(buf, len, "%s/%s", home ? home : "", dflt);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* inih with long lines: see the design note at the top. */
struct ini_ctx {
    const char *p, *end;
    bool cont_next; /* the next line handed out continues a cut line */
    bool cur_cont;  /* the line inih parses now is such a continuation */
    const char *want, *want2;
    struct profile *prof;
    char last_name[64];
};

static char *long_line_reader(char *str, int num, void *stream)
{
    struct ini_ctx *c = stream;
    if (c->p >= c->end || num < 8)
        return NULL;
    const char *nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
    size_t linelen = (size_t)((nl ? nl : c->end) - c->p);
    size_t off = c->cont_next ? 1 : 0, room = (size_t)num - 2 - off;
    bool comment = !c->cont_next && (c->p[strspn(c->p, " \t")] == ';' || c->p[strspn(c->p, " \t")] == '#');
    c->cur_cont = c->cont_next;
    str[0] = ' ';
    if (linelen > room) {
        memcpy(str + off, c->p, room);
        str[off + room] = '\n';
        str[off + room + 1] = '\0';
        c->p += comment ? linelen : room; /* a long comment's tail is dropped */
        c->cont_next = !comment;
    } else {
        memcpy(str + off, c->p, linelen);
        str[off + linelen] = '\n';
        str[off + linelen + 1] = '\0';
        c->p += linelen;
        c->cont_next = false;
    }
    if (c->p < c->end && *c->p == '\n' && !c->cont_next)
        c->p++;
    return str;
}

static char *profile_field(struct profile *p, const char *name, size_t *size)
{
    static const struct { const char *key; size_t off, size; } fields[] = {
        {"aws_access_key_id", offsetof(struct profile, key_id), sizeof p->key_id},
        {"aws_secret_access_key", offsetof(struct profile, secret), sizeof p->secret},
        {"aws_session_token", offsetof(struct profile, token), sizeof p->token},
        {"region", offsetof(struct profile, region), sizeof p->region},
        {"role_arn", offsetof(struct profile, role_arn), sizeof p->role_arn},
        {"web_identity_token_file", offsetof(struct profile, token_file), sizeof p->token_file},
        {"role_session_name", offsetof(struct profile, session_name), sizeof p->session_name},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strcmp(name, fields[i].key) == 0) {
            *size = fields[i].size;
            return (char *)p + fields[i].off;
        }
    return NULL;
}

static int profile_handler(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *c = user;
    if (strcmp(section, c->want) != 0 && (!c->want2 || strcmp(section, c->want2) != 0))
        return 1;
    c->prof->found = true;
    size_t size;
    char *dst = profile_field(c->prof, name, &size);
    if (!dst)
        return 1;
    size_t have = c->cur_cont && strcmp(name, c->last_name) == 0 ? strlen(dst) : 0;
    if (have + strlen(value) >= size)
        c->prof->too_long = profile_field(c->prof, name, &size) == c->prof->token ? "aws_session_token" : name;
    else
        memcpy(dst + have, value, strlen(value) + 1);
    copy(c->last_name, sizeof c->last_name, name);
    return 1;
}

/* Merge the profile's settings from one file into *prof. 0 also when the
 * file does not exist; -errno when it exists and cannot be read. */
static int ini_load(const char *path, const char *want, const char *want2, struct profile *prof)
{
    char *buf;
    size_t len;
    int rc = read_file(path, &buf, &len);
    if (rc == -ENOENT)
        return 0;
    if (rc < 0)
        return rc;
    struct ini_ctx c = {.p = buf, .end = buf + len, .want = want, .want2 = want2, .prof = prof};
    /* Lines inih cannot parse (the AWS CLI's nested s3 blocks, say) are
     * skipped, as the SDKs do; only the keys above matter. */
    rc = ini_parse_stream(long_line_reader, &c, profile_handler, &c);
    free(buf);
    return rc < 0 ? -ENOMEM : 0;
}

/* Load the profile from both files; the credentials file wins. */
static int profile_load(struct profile *prof, const char **name, bool *asked, char *err, size_t errlen)
{
    char cfg[1024], cred[1024], sect[160];
    *asked = set(getenv("AWS_PROFILE")) || set(getenv("AWS_DEFAULT_PROFILE"));
    *name = set(getenv("AWS_PROFILE")) ? getenv("AWS_PROFILE")
                                      : set(getenv("AWS_DEFAULT_PROFILE")) ? getenv("AWS_DEFAULT_PROFILE") : "default";
    memset(prof, 0, sizeof *prof);
    if (shared_path("AWS_CONFIG_FILE", ".aws/config", cfg, sizeof cfg) < 0 ||
        shared_path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials", cred, sizeof cred) < 0) {
        snprintf(err, errlen, "AWS shared file path too long");
        return -ENAMETOOLONG;
    }
    snprintf(sect, sizeof sect, "profile %s", *name);
    int rc = ini_load(cfg, sect, strcmp(*name, "default") == 0 ? "default" : NULL, prof);
    if (rc == 0)
        rc = ini_load(cred, *name, NULL, prof);
    if (rc < 0) {
        snprintf(err, errlen, "cannot read AWS shared files %s / %s: %s", cfg, cred, strerror(-rc));
        return rc;
    }
    if (prof->too_long) {
        snprintf(err, errlen, "AWS profile '%s': %s is too long", *name, prof->too_long);
        return -EINVAL;
    }
    if (*asked && !prof->found) {
        snprintf(err, errlen, "AWS profile '%s' not found in %s or %s", *name, cred, cfg);
        return -ENOENT;
    }
    return 0;
}

int cbd_aws_default_region(char *buf, size_t len)
{
    const char *r = set(getenv("AWS_REGION")) ? getenv("AWS_REGION") : getenv("AWS_DEFAULT_REGION");
    if (set(r))
        return copy(buf, len, r);
    struct profile prof;
    const char *name;
    bool asked;
    char err[256];
    if (profile_load(&prof, &name, &asked, err, sizeof err) == 0 && prof.region[0])
        return copy(buf, len, prof.region);
    return -ENOENT;
}

int cbd_aws_endpoint(const char *env_id, const char *service, const char *region, char *buf, size_t len)
{
    char var[64];
    snprintf(var, sizeof var, "AWS_ENDPOINT_URL_%s", env_id);
    const char *e = set(getenv(var)) ? getenv(var) : getenv("AWS_ENDPOINT_URL");
    int n;
    if (set(e))
        n = snprintf(buf, len, "%s", e);
    else if (set(region))
        n = snprintf(buf, len, "https://%s.%s.amazonaws.com%s", service, region,
                     strncmp(region, "cn-", 3) == 0 ? ".cn" : "");
    else
        n = snprintf(buf, len, "https://%s.amazonaws.com", service);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int cbd_aws_parse_time(const char *s, int64_t *out)
{
    int y, mo, d, h, mi, se, n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &se, &n) != 6 || n != 19)
        return -EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60 || y < 1970)
        return -EINVAL;
    const char *p = s + n;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++) {
        }
    long off = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om, k = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5)
            return -EINVAL;
        off = (oh * 3600L + om * 60L) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = se};
    *out = (int64_t)timegm(&tm) - off;
    return 0;
}

/* ---- fetching ------------------------------------------------------------------ */

static void fetch_end(struct cbd_aws_credentials *p, int rc, bool notify)
{
    p->fetching = false;
    p->last_rc = rc;
    if (rc == 0) {
        p->failures = 0;
        p->why[0] = '\0';
    } else {
        p->next_try_ms = mono_ms() + cbd_aws_backoff_ms(p->failures++, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
    }
    if (notify)
        p->ready(p->arg);
}

/* Take a fetched set; every field is checked before any is used. */
static int take(struct cbd_aws_credentials *p, const char *what, const char *key, const char *secret,
                const char *token, const char *expiration)
{
    struct cbd_aws_creds c = {0};
    if (!set(key) || !set(secret) || copy(c.key_id, sizeof c.key_id, key) < 0 ||
        copy(c.secret, sizeof c.secret, secret) < 0 || copy(c.token, sizeof c.token, token) < 0 ||
        (set(expiration) && cbd_aws_parse_time(expiration, &c.expiration) < 0)) {
        snprintf(p->why, sizeof p->why, "%s: answer lacks usable AccessKeyId/SecretAccessKey/Token/Expiration", what);
        return -EBADMSG;
    }
    copy(c.source, sizeof c.source, p->cur.source);
    explicit_bzero(&p->cur, sizeof p->cur);
    p->cur = c;
    p->have = true;
    return 0;
}

/* A failed answer: the error to return, with p->why set. */
static int answer_error(struct cbd_aws_credentials *p, const char *what, const struct cbd_aws_response *r)
{
    if (r->status == 0)
        snprintf(p->why, sizeof p->why, "%s: cannot reach it: %s", what, r->why);
    else
        snprintf(p->why, sizeof p->why, "%s: %s", what, r->why);
    return r->status == 401 || r->status == 403 ? -EACCES : -EIO;
}

/* Container and IMDS answers: {"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}. */
static int take_json(struct cbd_aws_credentials *p, const char *what, const struct cbd_aws_response *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
    const char *code = json_string_value(json_object_get(j, "Code"));
    int rc;
    if (code && strcmp(code, "Success") != 0) {
        snprintf(p->why, sizeof p->why, "%s: answered Code %.64s", what, code);
        rc = -EIO;
    } else {
        rc = take(p, what, json_string_value(json_object_get(j, "AccessKeyId")),
                  json_string_value(json_object_get(j, "SecretAccessKey")),
                  json_string_value(json_object_get(j, "Token")),
                  json_string_value(json_object_get(j, "Expiration")));
    }
    json_decref(j);
    return rc;
}

static int fetch_send(struct cbd_aws_credentials *p, const char *method, const char *url, const char *body,
                const char *const *headers, uint32_t timeout_ms, cbd_aws_http_cb cb)
{
    struct cbd_aws_request q = {
        .method = method,
        .url = url,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .headers = headers,
        .timeout_ms = timeout_ms,
        .connect_timeout_ms = timeout_ms,
        .max_attempts = 2,
        .cb = cb,
        .arg = p,
    };
    int rc = cbd_aws_http_send(p->http, &q);
    if (rc < 0)
        snprintf(p->why, sizeof p->why, "cannot start a credentials request to %s: %s", url, strerror(-rc));
    return rc;
}

/* Every answer callback starts here: false when the answer must be dropped. */
static bool answer_wanted(struct cbd_aws_credentials *p, const struct cbd_aws_response *r)
{
    if (p->freed) {
        free(p);
        return false;
    }
    if (r->cancelled) {
        p->fetching = false;
        return false;
    }
    return true;
}

/* Web identity: exchange the token file's JWT at STS. */
static void on_sts(void *arg, const struct cbd_aws_response *r)
{
    struct cbd_aws_credentials *p = arg;
    if (!answer_wanted(p, r))
        return;
    static const char what[] = "STS AssumeRoleWithWebIdentity";
    int rc;
    char key[128], secret[128], token[4096], exp[64];
    if (r->status != 200)
        rc = answer_error(p, what, r);
    else if (cbd_aws_xml_text(r->body, r->body_len, "AccessKeyId", key, sizeof key) < 0 ||
             cbd_aws_xml_text(r->body, r->body_len, "SecretAccessKey", secret, sizeof secret) < 0 ||
             cbd_aws_xml_text(r->body, r->body_len, "SessionToken", token, sizeof token) < 0 ||
             cbd_aws_xml_text(r->body, r->body_len, "Expiration", exp, sizeof exp) < 0)
        rc = take(p, what, NULL, NULL, NULL, NULL);
    else
        rc = take(p, what, key, secret, token, exp);
    explicit_bzero(secret, sizeof secret);
    explicit_bzero(token, sizeof token);
    fetch_end(p, rc, true);
}

static int sts_fetch(struct cbd_aws_credentials *p)
{
    char *jwt;
    size_t len;
    int rc = read_file(p->token_file, &jwt, &len);
    if (rc < 0) {
        snprintf(p->why, sizeof p->why, "cannot read web identity token file %.500s: %s", p->token_file, strerror(-rc));
        return rc;
    }
    while (len && isspace((unsigned char)jwt[len - 1]))
        jwt[--len] = '\0';
    char *arn = curl_easy_escape(NULL, p->role_arn, 0), *sess = curl_easy_escape(NULL, p->session_name, 0);
    char *tok = curl_easy_escape(NULL, jwt, (int)len), *body = NULL;
    rc = -ENOMEM;
    if (arn && sess && tok &&
        asprintf(&body, "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=%s&RoleSessionName=%s"
                        "&WebIdentityToken=%s", arn, sess, tok) >= 0) {
        static const char *const hdrs[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
        rc = fetch_send(p, "POST", p->sts_url, body, hdrs, FETCH_TIMEOUT_MS, on_sts);
    } else {
        body = NULL;
        snprintf(p->why, sizeof p->why, "out of memory building the STS request");
    }
    curl_free(arn);
    curl_free(sess);
    curl_free(tok);
    free(body);
    free(jwt);
    return rc;
}

/* Container endpoint (ECS task role, EKS pod identity). */
static void on_container(void *arg, const struct cbd_aws_response *r)
{
    struct cbd_aws_credentials *p = arg;
    if (!answer_wanted(p, r))
        return;
    static const char what[] = "container credentials endpoint";
    fetch_end(p, r->status == 200 ? take_json(p, what, r) : answer_error(p, what, r), true);
}

static int container_fetch(struct cbd_aws_credentials *p)
{
    char auth[sizeof p->auth + 32] = "";
    const char *hdrs[] = {auth, NULL};
    if (p->auth_file[0]) {
        char *tok;
        size_t len;
        int rc = read_file(p->auth_file, &tok, &len);
        if (rc < 0) {
            snprintf(p->why, sizeof p->why, "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE %.500s: %s",
                     p->auth_file, strerror(-rc));
            return rc;
        }
        while (len && isspace((unsigned char)tok[len - 1]))
            tok[--len] = '\0';
        snprintf(auth, sizeof auth, "Authorization: %.2000s", tok);
        free(tok);
    } else if (p->auth[0]) {
        snprintf(auth, sizeof auth, "Authorization: %s", p->auth);
    }
    return fetch_send(p, "GET", p->url, NULL, auth[0] ? hdrs : NULL, FETCH_TIMEOUT_MS, on_container);
}

/* IMDSv2: PUT a session token, GET the role name, GET its credentials. */
static void on_imds(void *arg, const struct cbd_aws_response *r);

static int imds_next(struct cbd_aws_credentials *p)
{
    char url[1024], tokhdr[sizeof p->imds_token + 40];
    const char *hdrs[] = {tokhdr, NULL};
    snprintf(tokhdr, sizeof tokhdr, "X-aws-ec2-metadata-token: %s", p->imds_token);
    switch (p->step) {
    case IMDS_TOKEN: {
        static const char *const put_hdrs[] = {"X-aws-ec2-metadata-token-ttl-seconds: " IMDS_TOKEN_TTL_S, NULL};
        snprintf(url, sizeof url, "%s/latest/api/token", p->imds);
        return fetch_send(p, "PUT", url, "", put_hdrs, IMDS_TIMEOUT_MS, on_imds);
    }
    case IMDS_ROLE:
        snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/", p->imds);
        break;
    case IMDS_CREDS:
        snprintf(url, sizeof url, "%s/latest/meta-data/iam/security-credentials/%s", p->imds, p->role);
        break;
    }
    return fetch_send(p, "GET", url, NULL, hdrs, IMDS_TIMEOUT_MS, on_imds);
}

/* One IMDS step's answer: 0 to go on, 1 when the credentials are in, <0 error. */
static int imds_answer(struct cbd_aws_credentials *p, const struct cbd_aws_response *r)
{
    static const char *const what[] = {"EC2 metadata token (IMDSv2)", "EC2 metadata role name",
                                       "EC2 metadata credentials"};
    if (r->status != 200)
        return answer_error(p, what[p->step], r);
    switch (p->step) {
    case IMDS_TOKEN:
    case IMDS_ROLE: {
        char *dst = p->step == IMDS_TOKEN ? p->imds_token : p->role;
        size_t size = p->step == IMDS_TOKEN ? sizeof p->imds_token : sizeof p->role;
        size_t n = strcspn(r->body, "\r\n");
        if (n == 0 || n >= size || memchr(r->body, '/', n) || n != strspn(r->body, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                                       "abcdefghijklmnopqrstuvwxyz0123456789+=,.@_-")) {
            snprintf(p->why, sizeof p->why, "%s: unusable answer", what[p->step]);
            return -EBADMSG;
        }
        memcpy(dst, r->body, n);
        dst[n] = '\0';
        p->step++;
        return 0;
    }
    case IMDS_CREDS:
        break;
    }
    int rc = take_json(p, what[IMDS_CREDS], r);
    return rc < 0 ? rc : 1;
}

static void on_imds(void *arg, const struct cbd_aws_response *r)
{
    struct cbd_aws_credentials *p = arg;
    if (!answer_wanted(p, r))
        return;
    int rc = imds_answer(p, r);
    if (rc == 0)
        rc = imds_next(p);
    if (rc != 0)
        fetch_end(p, rc > 0 ? 0 : rc, true);
}

static void fetch_start(struct cbd_aws_credentials *p)
{
    int rc = -ENOKEY;
    p->fetching = true;
    switch (p->kind) {
    case SRC_WEB_IDENTITY:
        rc = sts_fetch(p);
        break;
    case SRC_CONTAINER:
        rc = container_fetch(p);
        break;
    case SRC_IMDS:
        p->step = IMDS_TOKEN;
        rc = imds_next(p);
        break;
    case SRC_NONE:
    case SRC_STATIC:
        break;
    }
    if (rc < 0)
        fetch_end(p, rc, false); /* get() reports it: a callback never runs inside the call */
}

int cbd_aws_credentials_get(struct cbd_aws_credentials *p, struct cbd_aws_creds *out, const char **why)
{
    *why = p->why;
    if (p->kind == SRC_NONE)
        return -ENOKEY;
    int64_t now = (int64_t)time(NULL);
    bool lasting = p->have && (p->cur.expiration == 0 || now + CBD_AWS_REFRESH_BEFORE_S < p->cur.expiration);
    bool usable = p->have && (p->cur.expiration == 0 || now + CBD_AWS_EXPIRY_SLACK_S < p->cur.expiration);
    if (!lasting && p->kind != SRC_STATIC && !p->fetching && mono_ms() >= p->next_try_ms)
        fetch_start(p);
    if (usable) {
        *out = p->cur;
        return 0;
    }
    if (p->fetching)
        return -EAGAIN;
    return p->last_rc < 0 ? p->last_rc : -ENOKEY;
}

const char *cbd_aws_credentials_source(const struct cbd_aws_credentials *p)
{
    return p->cur.source;
}

void cbd_aws_credentials_free(struct cbd_aws_credentials *p)
{
    if (!p)
        return;
    explicit_bzero(&p->cur, sizeof p->cur);
    if (p->fetching)
        p->freed = true; /* the answer's callback frees it */
    else
        free(p);
}

/* ---- choosing the source ---------------------------------------------------- */

static bool host_allowed(const char *url)
{
    static const char *const hosts[] = {"localhost", "169.254.170.2", "169.254.170.23", "[fd00:ec2::23]", "[::1]"};
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL;
    bool ok = false;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        ok = strcmp(scheme, "https") == 0 || cbd_aws_loopback_host(host);
        for (size_t i = 0; i < sizeof hosts / sizeof hosts[0] && !ok; i++)
            ok = strcmp(scheme, "http") == 0 && strcmp(host, hosts[i]) == 0;
    }
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

static int use_web_identity(struct cbd_aws_credentials *p, const char *arn, const char *file, const char *sess,
                            const char *region, char *err, size_t errlen)
{
    p->kind = SRC_WEB_IDENTITY;
    if (copy(p->role_arn, sizeof p->role_arn, arn) < 0 || copy(p->token_file, sizeof p->token_file, file) < 0 ||
        cbd_aws_endpoint("STS", "sts", region, p->sts_url, sizeof p->sts_url) < 0) {
        snprintf(err, errlen, "web identity: role ARN, token file path or STS endpoint too long");
        return -EINVAL;
    }
    if (set(sess))
        copy(p->session_name, sizeof p->session_name, sess);
    else
        snprintf(p->session_name, sizeof p->session_name, "cbd-%lld", (long long)time(NULL));
    return 0;
}

static int use_container(struct cbd_aws_credentials *p, char *err, size_t errlen)
{
    const char *rel = getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    const char *full = getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    p->kind = SRC_CONTAINER;
    copy(p->cur.source, sizeof p->cur.source, "container endpoint");
    if (set(rel))
        snprintf(p->url, sizeof p->url, "%s%s", CONTAINER_HOST, rel);
    else if (copy(p->url, sizeof p->url, full) < 0 || !host_allowed(full)) {
        snprintf(err, errlen,
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI %.200s: must be https, or http to a loopback or ECS/EKS "
                 "metadata address", full);
        return -EINVAL;
    }
    copy(p->auth_file, sizeof p->auth_file, getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"));
    if (copy(p->auth, sizeof p->auth, getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")) < 0) {
        snprintf(err, errlen, "AWS_CONTAINER_AUTHORIZATION_TOKEN is too long");
        return -EINVAL;
    }
    return 0;
}

static int use_static(struct cbd_aws_credentials *p, const char *source, const char *key, const char *secret,
                      const char *token, char *err, size_t errlen)
{
    p->kind = SRC_STATIC;
    copy(p->cur.source, sizeof p->cur.source, source);
    if (copy(p->cur.key_id, sizeof p->cur.key_id, key) < 0 || copy(p->cur.secret, sizeof p->cur.secret, secret) < 0 ||
        copy(p->cur.token, sizeof p->cur.token, token) < 0) {
        snprintf(err, errlen, "%s: access key, secret or session token too long", source);
        return -EINVAL;
    }
    p->have = true;
    return 0;
}

/* Steps 3-5 of the chain: shared files, container, IMDS. */
static int choose_late(struct cbd_aws_credentials *p, const char *region, char *err, size_t errlen)
{
    struct profile prof;
    const char *name;
    bool asked;
    int rc = profile_load(&prof, &name, &asked, err, errlen);
    if (rc < 0)
        return rc;
    char src[64];
    snprintf(src, sizeof src, "profile %.40s", name);
    if (prof.key_id[0] && prof.secret[0])
        rc = use_static(p, src, prof.key_id, prof.secret, prof.token, err, errlen);
    else if (prof.role_arn[0] && prof.token_file[0]) {
        snprintf(p->cur.source, sizeof p->cur.source, "profile %.40s (web identity)", name);
        rc = use_web_identity(p, prof.role_arn, prof.token_file, prof.session_name, region, err, errlen);
    } else if (prof.role_arn[0] && asked) {
        snprintf(err, errlen, "AWS profile '%s': role_arn without web_identity_token_file (source_profile, "
                 "credential_source) is not supported by cbd; use static keys or web identity", name);
        rc = -EINVAL;
    } else if (set(getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")) ||
               set(getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")))
        rc = use_container(p, err, errlen);
    else if (cb__parse_bool(getenv("AWS_EC2_METADATA_DISABLED")) == 1)
        snprintf(p->why, sizeof p->why, "no AWS credentials: none in the environment, profile '%s', "
                 "container endpoint, and EC2 metadata is disabled", name);
    else {
        p->kind = SRC_IMDS;
        copy(p->cur.source, sizeof p->cur.source, "EC2 instance metadata");
        const char *ep = getenv("AWS_EC2_METADATA_SERVICE_ENDPOINT");
        copy(p->imds, sizeof p->imds, set(ep) ? ep : IMDS_DEFAULT);
        size_t n = strlen(p->imds);
        if (n && p->imds[n - 1] == '/')
            p->imds[n - 1] = '\0';
    }
    explicit_bzero(&prof, sizeof prof);
    return rc;
}

int cbd_aws_credentials_create(struct cbd_aws_credentials **out, struct cbd_aws_http *http,
                               const char *region, void (*ready)(void *arg), void *arg, char *err,
                               size_t errlen)
{
    struct cbd_aws_credentials *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->http = http;
    p->ready = ready;
    p->arg = arg;
    const char *key = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    const char *wi_file = getenv("AWS_WEB_IDENTITY_TOKEN_FILE"), *wi_arn = getenv("AWS_ROLE_ARN");
    int rc;
    if (set(key) != set(secret)) {
        snprintf(err, errlen, "%s is set but %s is not", set(key) ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
                 set(key) ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
        rc = -EINVAL;
    } else if (set(key)) {
        rc = use_static(p, "environment", key, secret, getenv("AWS_SESSION_TOKEN"), err, errlen);
    } else if (set(wi_file) && set(wi_arn)) {
        copy(p->cur.source, sizeof p->cur.source, "web identity (environment)");
        rc = use_web_identity(p, wi_arn, wi_file, getenv("AWS_ROLE_SESSION_NAME"), region, err, errlen);
    } else {
        rc = choose_late(p, region, err, errlen);
    }
    if (rc < 0) {
        cbd_aws_credentials_free(p);
        return rc;
    }
    *out = p;
    return 0;
}
