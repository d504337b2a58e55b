/*
 * cbctl - the operator's tool for cbd.
 *
 * Read-only commands (list, show, watch) read the shared-memory segment
 * directly, so they answer even when the daemon's socket is busy or the
 * daemon hangs: they map /cbd.<instance> read-only exactly as workers do.
 * Everything that changes a circuit or the daemon goes through the control
 * socket (docs/protocol.md), where the daemon checks the peer's credentials.
 *
 * Output is a human table by default and JSON with --json (`list --json` is
 * one array; `watch --json` one object per line), so scripts need not parse
 * tables. Exit codes are stable for scripts:
 *   0 done   1 the daemon refused or failed the operation   2 usage error
 *   3 cbd is not running / not reachable   4 no such circuit   5 permission denied
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cb.h"
#include "frame.h"
#include "metrics_text.h"
#include "policy_names.h"
#include "segment.h"
#include "dynamodb_table.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3, EXIT_NOT_FOUND = 4, EXIT_DENIED = 5 };

struct cbctl {
    const char *instance;
    const char *socket_path; /* --socket, else the segment's, else the default */
    bool json;
    int timeout_ms;
    const struct cb_seg_header *seg;
    size_t seg_size;
};


static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cbctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* ---- the segment, read-only ------------------------------------------------ */

static int seg_map(struct cbctl *c)
{
    char state_name_buf[CB_SHM_NAME_MAX], lanes_name[CB_SHM_NAME_MAX];
    cb__shm_names(c->instance, state_name_buf, lanes_name);
    int fd = shm_open(state_name_buf, O_RDONLY, 0);
    if (fd < 0)
        return errno == ENOENT ? fail(EXIT_UNREACHABLE, "cbd is not running for instance '%s' (no segment %s)",
                                      c->instance, state_name_buf)
                               : fail(EXIT_UNREACHABLE, "cannot open segment %s: %s", state_name_buf, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < CB_SEG_HEADER_SIZE) {
        close(fd);
        return fail(EXIT_UNREACHABLE, "segment %s is empty or unreadable (cbd starting?)", state_name_buf);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return fail(EXIT_UNREACHABLE, "cannot map segment %s: %s", state_name_buf, strerror(errno));
    int rc = cb__seg_header_check(p, (uint64_t)st.st_size);
    if (rc < 0) {
        munmap(p, (size_t)st.st_size);
        return fail(EXIT_UNREACHABLE, "segment %s is not a usable cbd segment (%s)", state_name_buf,
                    rc == -EPROTO ? "other layout version" : "inconsistent header");
    }
    c->seg = p;
    c->seg_size = (size_t)st.st_size;
    if (c->socket_path == NULL && c->seg->socket_path[0] != '\0')
        c->socket_path = c->seg->socket_path;
    return EXIT_OK;
}

struct circuit_row {
    cb_info info;
    unsigned sync_state;
    int64_t synced_at;
    int64_t last_transition_ns;
};

static int row_read(const struct cbctl *c, uint32_t slot, struct circuit_row *row)
{
    struct cb_seg_snapshot snap;
    int rc = cb__seg_snapshot(c->seg, slot, &snap);
    if (rc < 0)
        return rc;
    row->info = snap.info;
    row->sync_state = snap.sync_state;
    row->synced_at = snap.synced_at;
    row->last_transition_ns = snap.last_transition_ns;
    return 0;
}

/* The policy as a JSON object, one member per policy field. */
static json_t *config_json(const cb_config *cfg)
{
    json_t *o = json_object();
    for (unsigned k = 0; k < CB_POLICY_NFIELDS; k++)
        json_object_set_new(o, cb__policy_fields[k].name, json_integer(*cb__config_field((cb_config *)cfg, k)));
    return o;
}

static json_t *row_json(const struct circuit_row *row, bool detail)
{
    const cb_info *i = &row->info;
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:b, s:b, s:s}", "name", i->name, "state",
                          cb__state_name(i->state), "epoch", (json_int_t)i->epoch, "failure_count",
                          (json_int_t)i->failure_count, "opened_at", (json_int_t)i->opened_at, "forced", i->forced,
                          "disabled", i->disabled, "sync", cb__sync_name(row->sync_state));
    json_object_set_new(o, "synced_at", json_integer(row->synced_at));
    if (detail) {
        json_object_set_new(o, "config",
                            config_json(&i->config));
        json_object_set_new(o, "total_successes", json_integer((json_int_t)i->total_successes));
        json_object_set_new(o, "total_failures", json_integer((json_int_t)i->total_failures));
        json_object_set_new(o, "total_ignored", json_integer((json_int_t)i->total_ignored));
        json_object_set_new(o, "last_transition_ns", json_integer(row->last_transition_ns));
    }
    return o;
}

static void json_print(json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(j);
}

static const char *flags_text(const cb_info *i)
{
    return i->disabled ? "disabled" : i->forced ? "forced" : "-";
}

static int cmd_list(struct cbctl *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return fail(EXIT_USAGE, "usage: cbctl list");
    int rc = seg_map(c);
    if (rc)
        return rc;
    uint32_t n = atomic_load_explicit((_Atomic uint32_t *)&c->seg->circuit_count, memory_order_acquire);
    json_t *arr = c->json ? json_array() : NULL;
    if (!c->json)
        printf("%-40s %-9s %-8s %8s %8s %11s %s\n", "NAME", "STATE", "FLAGS", "EPOCH", "FAILURES", "OPENED_AT",
               "SYNC");
    for (uint32_t slot = 0; slot < n; slot++) {
        struct circuit_row row;
        if (row_read(c, slot, &row) < 0)
            continue;
        if (arr)
            json_array_append_new(arr, row_json(&row, false));
        else
            printf("%-40s %-9s %-8s %8u %8u %11lld %s\n", CB_NAME_SHOW(row.info.name), cb__state_name(row.info.state),
                   flags_text(&row.info), row.info.epoch, row.info.failure_count, (long long)row.info.opened_at,
                   cb__sync_name(row.sync_state));
    }
    if (arr)
        json_print(arr);
    return EXIT_OK;
}

static const char *default_socket(const struct cbctl *c, char *buf, size_t len);
static void pack_request(msgpack_sbuffer *sb, const char *op, const char *name, const char *extra_key,
                         uint64_t extra_val);

/* The fleet's shadow marker of name (the daemon's show op, "fleet_shadow"),
 * as a line "OPEN since 2026-12-07T00:12:31Z (host h)" or a JSON object:
 * false when there is none or the daemon does not answer (show reads the
 * segment; the marker is extra). */
static bool fleet_shadow(struct cbctl *c, const char *name, char *line, size_t size, json_t **json)
{
    char defbuf[128], state[16] = "", host[128] = "", when[32] = "?";
    int64_t since = 0;
    int fd = cb__unix_connect(c->socket_path ? c->socket_path : default_socket(c, defbuf, sizeof defbuf));
    if (fd < 0)
        return false;
    msgpack_sbuffer sb;
    pack_request(&sb, "show", name, NULL, 0);
    char *buf = NULL;
    msgpack_unpacked result;
    msgpack_object *reply;
    int rc = cb__request(fd, sb.data, sb.size, c->timeout_ms, &buf, &result, &reply);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    if (rc < 0)
        return false;
    const msgpack_object *m = cb__mp_get(reply, "fleet_shadow");
    bool found = m != NULL && cb__mp_get_str(m, "state", state, sizeof state) >= 0 &&
                 cb__mp_get_i64(m, "since", &since) >= 0 && cb__mp_get_str(m, "host", host, sizeof host) >= 0;
    if (found) {
        time_t t = (time_t)since;
        struct tm tm;
        if (gmtime_r(&t, &tm) != NULL)
            strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        snprintf(line, size, "%s since %s (host %s)", state, when, host);
        *json = json_pack("{s:s, s:I, s:s}", "state", state, "since", (json_int_t)since, "host", host);
    }
    msgpack_unpacked_destroy(&result);
    free(buf);
    return found;
}

static int cmd_show(struct cbctl *c, int argc, char **argv)
{
    if (argc != 1)
        return fail(EXIT_USAGE, "usage: cbctl show NAME");
    if (cb__name_check(argv[0]) < 0)
        return fail(EXIT_USAGE, "%s is not a valid circuit name (1..127 bytes of UTF-8)", CB_NAME_SHOW(argv[0]));
    int rc = seg_map(c);
    if (rc)
        return rc;
    size_t len = strlen(argv[0]);
    int slot = cb__seg_lookup(c->seg, argv[0], len, cb__name_hash(argv[0], len), NULL);
    struct circuit_row row;
    if (slot < 0 || row_read(c, (uint32_t)slot, &row) < 0)
        return fail(EXIT_NOT_FOUND, "no circuit named %s in instance '%s'", CB_NAME_SHOW(argv[0]), c->instance);
    char shadow[256];
    json_t *shadow_json = NULL;
    bool has_shadow = fleet_shadow(c, argv[0], shadow, sizeof shadow, &shadow_json);
    if (c->json) {
        json_t *j = row_json(&row, true);
        if (has_shadow)
            json_object_set_new(j, "fleet_shadow", shadow_json);
        json_print(j);
        return EXIT_OK;
    }
    json_decref(shadow_json);
    const cb_info *i = &row.info;
    printf("name:            %s\nstate:           %s%s\nepoch:           %u\nfailure_count:   %u\n", i->name,
           cb__state_name(i->state), i->disabled ? " (disabled)" : i->forced ? " (forced)" : "", i->epoch,
           i->failure_count);
    printf("opened_at:       %lld\nsync:            %s (synced_at %lld)\n", (long long)i->opened_at,
           cb__sync_name(row.sync_state), (long long)row.synced_at);
    printf("config:         ");
    for (unsigned k = 0; k < CB_POLICY_NFIELDS; k++)
        printf(" %s=%u", cb__policy_fields[k].name, *cb__config_field((cb_config *)&i->config, k));
    printf("\n");
    printf("totals:          successes=%llu failures=%llu ignored=%llu\n", (unsigned long long)i->total_successes,
           (unsigned long long)i->total_failures, (unsigned long long)i->total_ignored);
    if (has_shadow)
        printf("fleet shadow:    %s\n", shadow);
    return EXIT_OK;
}

/* ---- watch: the history ring through libcb ------------------------------- */

static volatile sig_atomic_t stop_watch;
static void on_stop(int sig) { (void)sig; stop_watch = 1; }

static void print_transition(const struct cbctl *c, const cb_transition *t)
{
    char when[40];
    time_t s = (time_t)(t->time_ns / 1000000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof when - n, ".%03dZ", (int)((t->time_ns / 1000000) % 1000));
    const char *src = cb__source_name(t->source);
    if (c->json) {
        json_print(json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "time", when, "name", t->name,
                             "from", cb__state_name(t->from), "to", cb__state_name(t->to), "source", src, "epoch",
                             (json_int_t)t->epoch, "failure_count", (json_int_t)t->failure_count, "opened_at",
                             (json_int_t)t->opened_at, "time_ns", (json_int_t)t->time_ns, "seq",
                             (json_int_t)t->seq));
    } else {
        printf("%s %s %s -> %s epoch=%u failure_count=%u source=%s\n", when, CB_NAME_SHOW(t->name), cb__state_name(t->from),
               cb__state_name(t->to), t->epoch, t->failure_count, src);
    }
    fflush(stdout);
}

/* A whole decimal number in [lo, hi] -> *out; false if s is anything else. */
static bool parse_whole(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int cmd_watch(struct cbctl *c, int argc, char **argv)
{
    long count = -1; /* --count N: exit after N transitions (scripts, tests) */
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            if (!parse_whole(argv[++i], 1, LONG_MAX, &count))
                return fail(EXIT_USAGE, "watch: --count '%s' is not a number of transitions (1 or more)",
                            argv[i]);
        } else
            return fail(EXIT_USAGE, "usage: cbctl watch [--count N]");
    }
    cb_client *cl;
    int rc = cb_client_open(&cl, c->instance);
    if (rc < 0)
        return fail(EXIT_UNREACHABLE, "cannot watch instance '%s': %s", c->instance, cb_strerror(rc));
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (!stop_watch && count != 0) {
        cb_transition t;
        rc = cb_next_transition(cl, &t);
        if (rc == 1) {
            print_transition(c, &t);
            if (count > 0)
                count--;
        } else if (rc == -EOVERFLOW) {
            fprintf(stderr, "cbctl: watch fell behind; some transitions were overwritten in the history ring\n");
        } else {
            unsigned st = cb_status(cl);
            if (st & CB_STATUS_REMAPPED)
                fprintf(stderr, "cbctl: cbd replaced its segment; following the new one\n");
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    cb_client_close(cl);
    return EXIT_OK;
}

/* ---- socket commands ------------------------------------------------------- */

/* Maps a daemon error code to cbctl's exit codes. */
static int exit_for_error(int64_t err)
{
    if (err == -EPERM || err == -EACCES)
        return EXIT_DENIED;
    if (err == -ENOENT)
        return EXIT_NOT_FOUND;
    return EXIT_FAILED; /* includes -EINVAL: a refused reload is a failed operation, not a usage error */
}

static json_t *mp_to_json(const msgpack_object *o);

static json_t *mp_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return json_real(o->via.f64);
    case MSGPACK_OBJECT_STR: return json_stringn(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; i < o->via.array.size; i++)
            json_array_append_new(a, mp_to_json(&o->via.array.ptr[i]));
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR)
                continue;
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)k->via.str.size, k->via.str.ptr);
            json_object_set_new(m, key, mp_to_json(&o->via.map.ptr[i].val));
        }
        return m;
    }
    default: return json_null();
    }
}

static const char *default_socket(const struct cbctl *c, char *buf, size_t len)
{
    snprintf(buf, len, "/run/cbd/%s.sock", c->instance);
    return buf;
}

/*
 * Sends {op, name?, extra} and prints the reply. `print` decides the human
 * output of a successful reply (NULL: "ok").
 */
/* A connection to the daemon's socket (--socket, else the segment's, else
 * the default): EXIT_OK with *fd and *path, or EXIT_UNREACHABLE (said). */
static int connect_daemon(struct cbctl *c, int *fd, const char **path, char *defbuf, size_t deflen)
{
    if (c->socket_path == NULL && seg_map(c) != EXIT_OK)
        fprintf(stderr, "cbctl: trying the default socket path\n");
    *path = c->socket_path ? c->socket_path : default_socket(c, defbuf, deflen);
    if ((*fd = cb__unix_connect(*path)) < 0)
        return fail(EXIT_UNREACHABLE, "cannot reach cbd at %s: %s", *path, strerror(-*fd));
    return EXIT_OK;
}

/* A reply that is not ok: its message said, its exit code returned. */
static int refusal(const msgpack_object *reply, const char *op)
{
    int64_t err = -EPROTO;
    char msg[512] = "no message";
    cb__mp_get_i64(reply, "error", &err);
    cb__mp_get_str(reply, "message", msg, sizeof msg);
    return fail(exit_for_error(err), "%s failed: %s", op, msg);
}

/* Sends the request packed in sb (and destroys sb), prints the reply. */
static int send_request(struct cbctl *c, const char *op, msgpack_sbuffer *sb,
                        void (*print)(const struct cbctl *, const msgpack_object *))
{
    char defbuf[128];
    const char *path;
    int fd;
    if (connect_daemon(c, &fd, &path, defbuf, sizeof defbuf) != EXIT_OK) {
        msgpack_sbuffer_destroy(sb);
        return EXIT_UNREACHABLE;
    }
    char *buf = NULL;
    msgpack_unpacked result;
    msgpack_object *reply;
    int rc = cb__request(fd, sb->data, sb->size, c->timeout_ms, &buf, &result, &reply);
    msgpack_sbuffer_destroy(sb);
    close(fd);
    if (rc < 0)
        return fail(EXIT_UNREACHABLE, "no valid answer from cbd at %s: %s", path, strerror(-rc));

    int ok = 0, code = EXIT_OK;
    cb__mp_get_bool(reply, "ok", &ok);
    if (!ok) {
        if (c->json)
            json_print(mp_to_json(reply));
        code = refusal(reply, op);
    } else if (c->json) {
        json_print(mp_to_json(reply));
    } else if (print) {
        print(c, reply);
    } else {
        printf("ok\n");
    }
    msgpack_unpacked_destroy(&result);
    free(buf);
    return code;
}

static void print_map(const struct cbctl *c, const msgpack_object *reply)
{
    (void)c;
    for (uint32_t i = 0; i < reply->via.map.size; i++) {
        const msgpack_object *k = &reply->via.map.ptr[i].key, *v = &reply->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || (k->via.str.size == 2 && memcmp(k->via.str.ptr, "ok", 2) == 0))
            continue;
        json_t *j = mp_to_json(v);
        char *s = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
        printf("%-24.*s %s\n", (int)k->via.str.size, k->via.str.ptr, s);
        free(s);
        json_decref(j);
    }
}

/* "90", "90s", "500ms", "1.5m", "2h", "1d" -> ms; -1 if not a duration
 * (decimal digits with at most one point, then the unit: no sign,
 * exponent, hex, inf or nan, which strtod alone would take). */
static int64_t parse_duration_ms(const char *s)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0)
        return -1;
    if (s[n] == '.') {
        size_t frac = strspn(s + n + 1, "0123456789");
        if (frac == 0)
            return -1;
        n += 1 + frac;
    }
    char number[32];
    if (n >= sizeof number)
        return -1;
    memcpy(number, s, n);
    number[n] = '\0';
    double v = strtod(number, NULL);
    const char *end = s + n;
    double mult = 1000;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0)
        mult = 86400000;
    else
        return -1;
    double ms = v * mult;
    return ms > 604800000.0 ? -1 : (int64_t)ms;
}

/* {"op": op, "name": name, extra_key: extra_val}, the last two optional,
 * packed into sb (initialised here; the caller destroys it). */
static void pack_request(msgpack_sbuffer *sb, const char *op, const char *name, const char *extra_key,
                         uint64_t extra_val)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1 + (name != NULL) + (extra_key != NULL));
    cb__mp_kv_str(&pk, "op", op);
    if (name)
        cb__mp_kv_str(&pk, "name", name);
    if (extra_key)
        cb__mp_kv_u64(&pk, extra_key, extra_val);
}

/* {"op": op, "name": name, extra_key: extra_val}, the last two optional, sent; the reply printed. */
static int request(struct cbctl *c, const char *op, const char *name, const char *extra_key, uint64_t extra_val,
                   void (*print)(const struct cbctl *, const msgpack_object *))
{
    msgpack_sbuffer sb;
    pack_request(&sb, op, name, extra_key, extra_val);
    return send_request(c, op, &sb, print);
}

static int name_arg(int argc, char **argv, const char *usage)
{
    if (argc < 1)
        return fail(EXIT_USAGE, "usage: %s", usage);
    if (cb__name_check(argv[0]) < 0)
        return fail(EXIT_USAGE, "%s is not a valid circuit name (1..127 bytes of UTF-8)", CB_NAME_SHOW(argv[0]));
    return EXIT_OK;
}

static int cmd_open(struct cbctl *c, int argc, char **argv)
{
    const char *usage = "cbctl open NAME [--for DURATION]   (DURATION: 90s, 5m, 2h, 500ms; max 7d)";
    int rc = name_arg(argc, argv, usage);
    if (rc)
        return rc;
    if (argc == 1)
        return request(c, "force_open", argv[0], NULL, 0, NULL);
    int64_t ms;
    if (argc != 3 || strcmp(argv[1], "--for") != 0 || (ms = parse_duration_ms(argv[2])) <= 0)
        return fail(EXIT_USAGE, "usage: %s", usage);
    return request(c, "force_open", argv[0], "for_ms", (uint64_t)ms, NULL);
}

static int cmd_simple_named(struct cbctl *c, int argc, char **argv, const char *op, const char *usage)
{
    int rc = name_arg(argc, argv, usage);
    if (rc)
        return rc;
    if (argc != 1)
        return fail(EXIT_USAGE, "usage: %s", usage);
    return request(c, op, argv[0], NULL, 0, NULL);
}

static int cmd_close(struct cbctl *c, int argc, char **argv)
{
    return cmd_simple_named(c, argc, argv, "force_closed", "cbctl close NAME");
}
static int cmd_reset(struct cbctl *c, int argc, char **argv)
{
    return cmd_simple_named(c, argc, argv, "reset", "cbctl reset NAME");
}
static int cmd_disable(struct cbctl *c, int argc, char **argv)
{
    return cmd_simple_named(c, argc, argv, "disable", "cbctl disable NAME");
}
static int cmd_enable(struct cbctl *c, int argc, char **argv)
{
    return cmd_simple_named(c, argc, argv, "enable", "cbctl enable NAME");
}

/* The policy now in force, as cbctl show prints it. */
static void print_config(const struct cbctl *c, const msgpack_object *reply)
{
    const msgpack_object *m = cb__mp_get(reply, "config");
    (void)c;
    for (unsigned k = 0; k < CB_POLICY_NFIELDS; k++) {
        uint64_t v = 0;
        if (m != NULL)
            cb__mp_get_u64(m, cb__policy_fields[k].name, &v);
        printf("%s%s=%llu", k ? " " : "", cb__policy_fields[k].name, (unsigned long long)v);
    }
    printf("\n");
}

/* cbctl set NAME key=value...: the policy fields named, live. */
static int cmd_set(struct cbctl *c, int argc, char **argv)
{
    const char *usage = "cbctl set NAME FIELD=VALUE...   (FIELD: a policy field, as in [defaults]; "
                        "sliding_window_type also takes CONSECUTIVE, COUNT_BASED, TIME_BASED)";
    int rc = name_arg(argc, argv, usage);
    if (rc)
        return rc;
    if (argc < 2 || argc - 1 > CB_POLICY_NFIELDS)
        return fail(EXIT_USAGE, "usage: %s", usage);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    cb__mp_kv_str(&pk, "op", "set");
    cb__mp_kv_str(&pk, "name", argv[0]);
    cb__mp_pack_str(&pk, "config");
    msgpack_pack_map(&pk, (size_t)argc - 1);
    for (int i = 1; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        unsigned k = 0;
        char *end;
        while (eq != NULL && k < CB_POLICY_NFIELDS &&
               !(strlen(cb__policy_fields[k].name) == (size_t)(eq - argv[i]) &&
                 strncmp(cb__policy_fields[k].name, argv[i], (size_t)(eq - argv[i])) == 0))
            k++;
        const struct cb_value_name *names = k < CB_POLICY_NFIELDS ? cb__policy_value_names(cb__policy_fields[k].name)
                                                                   : NULL;
        uint32_t named;
        char list[128];
        errno = 0;
        unsigned long long v = eq != NULL ? strtoull(eq + 1, &end, 10) : 0;
        if (eq != NULL && names != NULL && !isdigit((unsigned char)eq[1])) {
            if (cb__policy_value_parse(names, eq + 1, &named) < 0) {
                msgpack_sbuffer_destroy(&sb);
                return fail(EXIT_USAGE, "'%s': %s is a number or one of %s (any case)", argv[i],
                            cb__policy_fields[k].name, cb__policy_value_list(names, list, sizeof list));
            }
            v = named;
        } else if (eq == NULL || k == CB_POLICY_NFIELDS || eq[1] == '\0' || *end != '\0' || errno != 0 ||
                   eq[1] == '-' || v > UINT32_MAX) {
            msgpack_sbuffer_destroy(&sb);
            return fail(EXIT_USAGE, "'%s' is not FIELD=VALUE with a policy field (cbctl show lists them) and an "
                        "unsigned integer%s", argv[i], names != NULL ? " or a name of one" : "");
        }
        cb__mp_kv_u64(&pk, cb__policy_fields[k].name, v);
    }
    return send_request(c, "set", &sb, print_config);
}

/* "removed circuit NAME (slot S, was STATE)": what went, as the daemon saw it. */
static void print_removed(const struct cbctl *c, const msgpack_object *reply)
{
    char name[CB_NAME_MAX + 1] = "?", state[16] = "?";
    uint64_t slot = 0;
    cb__mp_get_str(reply, "name", name, sizeof name);
    cb__mp_get_str(reply, "state", state, sizeof state);
    cb__mp_get_u64(reply, "slot", &slot);
    printf("removed circuit %s (slot %llu, was %s) from instance '%s'\n", CB_NAME_SHOW(name), (unsigned long long)slot, state,
           c->instance);
}

static int cmd_remove(struct cbctl *c, int argc, char **argv)
{
    const char *usage = "cbctl remove NAME";
    int rc = name_arg(argc, argv, usage);
    if (rc)
        return rc;
    if (argc != 1)
        return fail(EXIT_USAGE, "usage: %s", usage);
    return request(c, "remove", argv[0], NULL, 0, print_removed);
}

static int cmd_no_args(struct cbctl *c, int argc, const char *op,
                       void (*print)(const struct cbctl *, const msgpack_object *))
{
    if (argc != 0)
        return fail(EXIT_USAGE, "usage: cbctl %s", op);
    return request(c, op, NULL, NULL, 0, print);
}

static int cmd_stats(struct cbctl *c, int argc, char **argv)
{
    (void)argv;
    return cmd_no_args(c, argc, "stats", print_map);
}
static int cmd_reload(struct cbctl *c, int argc, char **argv)
{
    (void)argv;
    return cmd_no_args(c, argc, "reload", NULL);
}

static int cmd_version(struct cbctl *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return fail(EXIT_USAGE, "usage: cbctl version");
    if (!c->json)
        printf("cbctl %s (libcb %s, segment layout %u)\n", CB_VERSION_STRING, cb_version(), CB_SEG_MAJOR);
    return request(c, "version", NULL, NULL, 0, print_map);
}

/* The daemon's own parser is the one truth about config files: run it. */
static int cmd_check_config(struct cbctl *c, int argc, char **argv)
{
    (void)c;
    if (argc != 1)
        return fail(EXIT_USAGE, "usage: cbctl check-config FILE");
    char self[PATH_MAX], cbd[PATH_MAX + 8];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        *slash = '\0';
        snprintf(cbd, sizeof cbd, "%s/cbd", self);
        if (access(cbd, X_OK) == 0)
            execl(cbd, "cbd", "--check-config", argv[0], (char *)NULL);
    }
    execlp("cbd", "cbd", "--check-config", argv[0], (char *)NULL);
    return fail(EXIT_FAILED, "cannot run cbd --check-config: %s", strerror(errno));
}

static int cmd_dynamodb(struct cbctl *c, int argc, char **argv)
{
    (void)c;
    if (argc != 2 || strcmp(argv[0], "create-table") != 0)
        return fail(EXIT_USAGE, "usage: cbctl dynamodb create-table 'dynamodb://TABLE?region=R[&endpoint=URL]'");
    char err[512] = "";
    int rc = dynamodb_table_create(argv[1], err, sizeof err);
    if (rc < 0)
        return fail(rc == -EINVAL ? EXIT_USAGE : EXIT_FAILED, "create-table failed: %s", err);
    printf("%s\n", err[0] ? err : "table is ACTIVE");
    return EXIT_OK;
}

/* ---- metrics ---------------------------------------------------------------- */

/* One page of the `metrics` op into s: EXIT_OK and *next (0: the last
 * page), or an exit code (said). */
static int metrics_page(int fd, const char *path, int timeout_ms, uint64_t offset, struct cbd_metrics_snapshot *s,
                        uint64_t *next)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    cb__mp_kv_str(&pk, "op", "metrics");
    cb__mp_kv_u64(&pk, "offset", offset);
    char *buf = NULL;
    msgpack_unpacked result;
    msgpack_object *reply;
    int rc = cb__request(fd, sb.data, sb.size, timeout_ms, &buf, &result, &reply), code = EXIT_OK, ok = 0;
    msgpack_sbuffer_destroy(&sb);
    if (rc < 0)
        return fail(EXIT_UNREACHABLE, "no valid answer from cbd at %s: %s", path, strerror(-rc));
    const msgpack_object *circuits = cb__mp_get(reply, "circuits");
    cb__mp_get_bool(reply, "ok", &ok);
    *next = 0;
    if (!ok) {
        code = refusal(reply, "metrics");
    } else if (offset == 0 && cbd_metrics_unpack_daemon(cb__mp_get(reply, "daemon"), s) < 0) {
        code = fail(EXIT_FAILED, "metrics: the daemon's numbers are not in the form this cbctl knows");
    } else if (circuits == NULL || circuits->type != MSGPACK_OBJECT_ARRAY) {
        code = fail(EXIT_FAILED, "metrics: the reply has no circuits");
    } else {
        for (uint32_t i = 0; i < circuits->via.array.size && code == EXIT_OK; i++)
            if ((rc = cbd_metrics_unpack_circuit(&circuits->via.array.ptr[i], s)) < 0)
                code = fail(EXIT_FAILED, "metrics: a circuit's numbers are not in the form this cbctl knows");
        if (cb__mp_get_u64(reply, "next", next) == 0 && *next <= offset)
            code = fail(EXIT_FAILED, "metrics: the daemon's pages do not move on");
    }
    msgpack_unpacked_destroy(&result);
    free(buf);
    return code;
}

/* Every page of the `metrics` op into s (cbd_metrics_snapshot_free it):
 * what the daemon's /metrics endpoint would render now. */
static int metrics_fetch(struct cbctl *c, struct cbd_metrics_snapshot *s)
{
    char defbuf[128];
    const char *path;
    int fd, code;
    uint64_t offset = 0, next;
    cbd_metrics_snapshot_init(s);
    if ((code = connect_daemon(c, &fd, &path, defbuf, sizeof defbuf)) != EXIT_OK)
        return code;
    while ((code = metrics_page(fd, path, c->timeout_ms, offset, s, &next)) == EXIT_OK && next != 0)
        offset = next;
    close(fd);
    return code;
}

/* The Prometheus text the daemon's /metrics endpoint serves, without HTTP. */
static int cmd_metrics(struct cbctl *c, int argc, char **argv)
{
    struct cbd_metrics_snapshot s;
    char *text;
    size_t len;
    (void)argv;
    if (argc != 0)
        return fail(EXIT_USAGE, "usage: cbctl metrics");
    int code = metrics_fetch(c, &s);
    if (code == EXIT_OK && cbd_metrics_render(&s, &text, &len) < 0)
        code = fail(EXIT_FAILED, "metrics: out of memory");
    if (code == EXIT_OK) {
        fwrite(text, 1, len, stdout);
        free(text);
    }
    cbd_metrics_snapshot_free(&s);
    return code;
}

/* ---- top ------------------------------------------------------------------------ */

/*
 * `cbctl top`: the circuits live. Every interval it takes the `metrics`
 * op's numbers (what a scrape would show) and, from the segment, when each
 * circuit last changed state; rates are the counters' change since the
 * previous refresh over the time between the two. Redrawn in place (clear,
 * home); on a terminal, keys are read raw: s sorts by the next column, q
 * (or ^C) quits.
 */
enum top_sort { SORT_NAME, SORT_STATE, SORT_ALLOWED, SORT_REJECTED, SORT_FAILURE, SORT_IN_STATE, TOP_NSORTS };
static const char *const top_sort_names[TOP_NSORTS] = {"name", "state", "allowed", "rejected", "failure", "in_state"};

struct top_row {
    const char *name;
    cb_state state;
    double allowed_s, rejected_s, failure_pct; /* failure_pct < 0: no outcome in the interval */
    int64_t in_state_ns, sync_age_ns;          /* sync_age_ns < 0: local store, or never synced */
    uint32_t sync_state;
};

static enum top_sort top_sort_key;

static int top_cmp(const void *a, const void *b)
{
    const struct top_row *x = a, *y = b;
    double d = 0;
    switch (top_sort_key) {
    case SORT_STATE: d = (double)y->state - (double)x->state; break; /* open first */
    case SORT_ALLOWED: d = y->allowed_s - x->allowed_s; break;
    case SORT_REJECTED: d = y->rejected_s - x->rejected_s; break;
    case SORT_FAILURE: d = y->failure_pct - x->failure_pct; break;
    case SORT_IN_STATE: d = (double)(y->in_state_ns - x->in_state_ns); break;
    default: break;
    }
    return d < 0 ? -1 : d > 0 ? 1 : strcmp(x->name, y->name);
}

/* "850ms", "42s", "7m03s", "5h12m", "3d04h" into buf. */
static const char *age_text(int64_t ns, char *buf, size_t len)
{
    int64_t s = ns / 1000000000;
    if (ns < 0)
        snprintf(buf, len, "-");
    else if (s < 1)
        snprintf(buf, len, "%lldms", (long long)(ns / 1000000));
    else if (s < 60)
        snprintf(buf, len, "%llds", (long long)s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%02llds", (long long)(s / 60), (long long)(s % 60));
    else if (s < 86400)
        snprintf(buf, len, "%lldh%02lldm", (long long)(s / 3600), (long long)(s / 60 % 60));
    else
        snprintf(buf, len, "%lldd%02lldh", (long long)(s / 86400), (long long)(s / 3600 % 24));
    return buf;
}

/* The row in prev with name (slot order rarely changes: try i first). */
static const struct cbd_metrics_circuit *top_prev(const struct cbd_metrics_snapshot *prev, size_t i, const char *name)
{
    if (i < prev->ncircuits && strcmp(prev->circuits[i].name, name) == 0)
        return &prev->circuits[i];
    for (size_t k = 0; k < prev->ncircuits; k++)
        if (strcmp(prev->circuits[k].name, name) == 0)
            return &prev->circuits[k];
    return NULL;
}

/* The rows of cur, rates against prev (NULL: the first refresh, no rate). */
static void top_rows(const struct cbctl *c, const struct cbd_metrics_snapshot *cur,
                     const struct cbd_metrics_snapshot *prev, struct top_row *rows)
{
    double secs = prev != NULL && cur->now_ns > prev->now_ns ? (double)(cur->now_ns - prev->now_ns) / 1e9 : 0;
    for (size_t i = 0; i < cur->ncircuits; i++) {
        const struct cbd_metrics_circuit *x = &cur->circuits[i], *p = prev ? top_prev(prev, i, x->name) : NULL;
        struct top_row *r = &rows[i];
        uint64_t d[CBD_METRICS_NCALLS] = {0};
        for (unsigned k = 0; p != NULL && k < CBD_METRICS_NCALLS; k++)
            d[k] = x->calls[k] >= p->calls[k] ? x->calls[k] - p->calls[k] : 0;
        *r = (struct top_row){.name = x->name, .state = x->state, .sync_state = x->sync_state, .sync_age_ns = -1,
                              .in_state_ns = -1, .failure_pct = -1};
        if (secs > 0) {
            r->allowed_s = (double)d[CBD_CALL_ALLOWED] / secs;
            r->rejected_s = (double)d[CBD_CALL_REJECTED] / secs;
        }
        if (d[CBD_CALL_SUCCEEDED] + d[CBD_CALL_FAILED] > 0)
            r->failure_pct = 100.0 * (double)d[CBD_CALL_FAILED] / (double)(d[CBD_CALL_SUCCEEDED] + d[CBD_CALL_FAILED]);
        if (x->sync_state != CB_SYNC_LOCAL && x->synced_at > 0)
            r->sync_age_ns = cur->now_ns - x->synced_at * 1000000000;
        size_t len = strlen(x->name);
        struct circuit_row seg;
        int slot = c->seg != NULL ? cb__seg_lookup(c->seg, x->name, len, cb__name_hash(x->name, len), NULL) : -1;
        if (slot >= 0 && row_read(c, (uint32_t)slot, &seg) == 0 && seg.last_transition_ns > 0)
            r->in_state_ns = cur->now_ns - seg.last_transition_ns;
    }
}

static void top_draw(const struct cbctl *c, const struct cbd_metrics_snapshot *cur, struct top_row *rows,
                     unsigned height)
{
    char in_state[32], sync[32], fail_pct[16];
    qsort(rows, cur->ncircuits, sizeof *rows, top_cmp);
    printf("\033[H\033[2J"); /* home, clear */
    printf("cbctl top - instance %s - %zu circuits - sorted by %s (s: sort, q: quit)\r\n", c->instance,
           cur->ncircuits, top_sort_names[top_sort_key]);
    printf("%-40s %-9s %11s %11s %7s %9s %9s\r\n", "NAME", "STATE", "ALLOWED/s", "REJECTED/s", "FAIL%",
           "IN_STATE", "SYNC_AGE");
    for (size_t i = 0; i < cur->ncircuits && i + 3 < height; i++) {
        const struct top_row *r = &rows[i];
        if (r->failure_pct < 0)
            snprintf(fail_pct, sizeof fail_pct, "-");
        else
            snprintf(fail_pct, sizeof fail_pct, "%.1f", r->failure_pct);
        if (r->sync_state == CB_SYNC_LOCAL)
            snprintf(sync, sizeof sync, "local");
        else
            age_text(r->sync_age_ns, sync, sizeof sync);
        printf("%-40.40s %-9s %11.1f %11.1f %7s %9s %9s\r\n", CB_NAME_SHOW(r->name), cb__state_name(r->state),
               r->allowed_s, r->rejected_s, fail_pct, age_text(r->in_state_ns, in_state, sizeof in_state), sync);
    }
    fflush(stdout);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits up to ms, reading keys when keys: 'q' (^C, end of input) -> false;
 * 's' -> the next sort, redrawn at once. */
static bool top_wait(int ms, bool keys)
{
    struct pollfd p = {.fd = keys ? STDIN_FILENO : -1, .events = POLLIN};
    int64_t end = mono_ms() + ms;
    for (int64_t left = ms; left > 0 && !stop_watch; left = end - mono_ms()) {
        if (poll(&p, 1, (int)left) <= 0)
            continue;
        char k;
        if (read(STDIN_FILENO, &k, 1) != 1 || k == 'q' || k == 3)
            return false;
        if (k == 's') {
            top_sort_key = (top_sort_key + 1) % TOP_NSORTS;
            return true;
        }
    }
    return !stop_watch;
}

static int cmd_top(struct cbctl *c, int argc, char **argv)
{
    int interval_ms = 1000;
    for (int i = 0; i < argc; i++) {
        long ms;
        if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc) {
            if (!parse_whole(argv[++i], 100, 3600000, &ms))
                return fail(EXIT_USAGE, "top: --interval '%s' is not a number of milliseconds from 100 to "
                            "3600000", argv[i]);
            interval_ms = (int)ms;
        } else if (strcmp(argv[i], "--sort") == 0 && i + 1 < argc) {
            const char *key = argv[++i];
            top_sort_key = TOP_NSORTS;
            for (unsigned k = 0; k < TOP_NSORTS; k++)
                if (strcmp(key, top_sort_names[k]) == 0)
                    top_sort_key = k;
            if (top_sort_key == TOP_NSORTS)
                return fail(EXIT_USAGE, "--sort %s: expected name, state, allowed, rejected, failure or in_state", key);
        } else
            return fail(EXIT_USAGE, "usage: cbctl top [--interval MS (>= 100)] [--sort KEY]");
    }
    if (seg_map(c) != EXIT_OK)
        return EXIT_UNREACHABLE;
    struct termios saved, raw;
    bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved) == 0;
    if (tty) {
        raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    signal(SIGINT, on_stop);
    signal(SIGTERM, on_stop);
    struct cbd_metrics_snapshot snaps[2];
    int code = EXIT_OK, cur = 0;
    bool have_prev = false;
    struct top_row *rows = NULL;
    do {
        struct winsize ws;
        unsigned height = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 3 ? ws.ws_row : 24;
        if ((code = metrics_fetch(c, &snaps[cur])) != EXIT_OK)
            break;
        struct top_row *grown = realloc(rows, (snaps[cur].ncircuits + 1) * sizeof *rows);
        if (grown == NULL) {
            code = fail(EXIT_FAILED, "top: out of memory");
            cbd_metrics_snapshot_free(&snaps[cur]);
            break;
        }
        rows = grown;
        top_rows(c, &snaps[cur], have_prev ? &snaps[!cur] : NULL, rows);
        top_draw(c, &snaps[cur], rows, height);
        if (have_prev)
            cbd_metrics_snapshot_free(&snaps[!cur]);
        have_prev = true;
        cur = !cur;
    } while (top_wait(interval_ms, tty));
    if (have_prev)
        cbd_metrics_snapshot_free(&snaps[!cur]);
    free(rows);
    if (tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    printf("\r\n");
    return code;
}

static const struct command {
    const char *name;
    int (*run)(struct cbctl *, int, char **);
    const char *help;
} commands[] = {
    {"list", cmd_list, "list                     every circuit (from the segment)"},
    {"show", cmd_show, "show NAME                one circuit in detail (from the segment)"},
    {"open", cmd_open, "open NAME [--for DUR]    force OPEN (until reset/close, or for DUR: 90s, 5m, 2h)"},
    {"close", cmd_close, "close NAME               force CLOSED (failures are not counted until reset)"},
    {"reset", cmd_reset, "reset NAME               back to CLOSED under normal policy, streak cleared"},
    {"disable", cmd_disable, "disable NAME             bypass the breaker for NAME (every call allowed)"},
    {"enable", cmd_enable, "enable NAME              undo disable"},
    {"remove", cmd_remove, "remove NAME              delete the circuit (workers using it register it again)"},
    {"set", cmd_set, "set NAME FIELD=VALUE...  change policy fields live (state and window kept)"},
    {"watch", cmd_watch, "watch [--count N]        print transitions as they happen (like tail -f)"},
    {"stats", cmd_stats, "stats                    the daemon's counters"},
    {"metrics", cmd_metrics, "metrics                  the Prometheus metrics /metrics serves (no HTTP needed)"},
    {"top", cmd_top, "top [--sort KEY] [--interval MS]  circuits live: rates, failure %, time in state (s, q)"},
    {"reload", cmd_reload, "reload                   re-read the configuration file (like SIGHUP)"},
    {"check-config", cmd_check_config, "check-config FILE        validate a configuration file"},
    {"version", cmd_version, "version                  versions of cbctl, libcb and the daemon"},
    {"dynamodb", cmd_dynamodb, "dynamodb create-table URI  create a Powertools-compatible table"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: cbctl [--instance NAME] [--socket PATH] [--json] [--timeout MS] COMMAND [ARGS]\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %s\n", commands[i].help);
    fprintf(out, "\nexit codes: 0 ok, 1 operation failed, 2 usage, 3 cbd unreachable, 4 no such circuit, "
                 "5 permission denied\n");
}

int main(int argc, char **argv)
{
    struct cbctl c = {.timeout_ms = 5000};
    c.instance = getenv("CB_INSTANCE") ? getenv("CB_INSTANCE") : "default";
    static const struct option opts[] = {
        {"instance", required_argument, NULL, 'i'}, {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},           {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "+i:s:jt:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'i': c.instance = optarg; break;
        case 's': c.socket_path = optarg; break;
        case 'j': c.json = true; break;
        case 't': {
            long ms;
            if (!parse_whole(optarg, 1, 3600000, &ms))
                return fail(EXIT_USAGE, "--timeout '%s' is not a number of milliseconds from 1 to 3600000",
                            optarg);
            c.timeout_ms = (int)ms;
            break;
        }
        case 'h': usage(stdout); return EXIT_OK;
        default: usage(stderr); return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[optind];
    /* Options may also follow the command: `cbctl list --json`. */
    int nargs = 0;
    char **args = calloc((size_t)argc, sizeof *args);
    for (int i = optind + 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c.json = true;
        else if (strcmp(argv[i], "--instance") == 0 && i + 1 < argc)
            c.instance = argv[++i];
        else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc)
            c.socket_path = argv[++i];
        else
            args[nargs++] = argv[i];
    }
    if (cb__instance_check(c.instance) < 0) {
        free(args);
        return fail(EXIT_USAGE, "'%s' is not a valid instance name (1..32 of A-Z a-z 0-9 _ -)", c.instance);
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0) {
            int rc = commands[i].run(&c, nargs, args);
            free(args);
            return rc;
        }
    free(args);
    fprintf(stderr, "cbctl: unknown command '%s'\n", name);
    usage(stderr);
    return EXIT_USAGE;
}
