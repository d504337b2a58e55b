/*
 * config.c - the option table and everything derived from it.
 *
 * Design (Redis' config.c in miniature): every option is one row of
 * `options[]` - name, section, type, where it lives, default, bounds,
 * whether a reload may change it, and a help line. The command line
 * (`--name=value`, `--name value`, dashes for underscores; [hooks] options
 * as --hook-NAME), the INI file (`-c FILE`, parsed by libinih), reload,
 * `--help` and `--help-config` (the Markdown of docs/configuration.md) all
 * walk the same rows, so an option cannot exist in one place and be missing
 * in another. Defaults are written as text and go through the same parser
 * as user input, so a default can never be out of its own bounds.
 *
 * Sections: [daemon], [defaults] (the circuit policy), [hooks] (global
 * transition hooks and their limits), and any number of [circuit "NAME"]
 * (exact name) and [prefix "PFX"] sections holding the policy fields and
 * `hook` lines for the circuits they match. Repeatable options (hook
 * commands) collect every value in file order; the command line adds to
 * the file's.
 *
 * Precedence, lowest first: built-in defaults, the environment
 * ($CB_INSTANCE picks the instance; $STATE_DIRECTORY, set by systemd's
 * StateDirectory=, moves the default state file), the file, the command line.
 * The socket, store and admin_group defaults are derived once everything
 * else is known. A reload reads the same file and command line again.
 *
 * Errors do not stop parsing: every bad line is reported, each as
 * "FILE:LINE: option 'x': <what is wrong> (expected ...)", so an operator
 * fixes a file in one pass. At start errors go to stderr; on reload to the
 * log, and the first ones into the reply. libinih gives its handler no line
 * number, truncates section names to 49 bytes (circuit names reach 127) and
 * splits lines longer than its 200-byte buffer; so the reader callback
 * counts lines, keeps the whole text of each section header itself, and
 * refuses over-long lines instead of letting them be split.
 *
 * The circuit defaults are checked twice: against the table's bounds while
 * parsing (precise messages with line numbers) and by cb__config_check at the
 * end, which stays the single authority if the two ever disagree.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "policy.h"
#include "store.h"

enum opt_type { OPT_UINT, OPT_MODE, OPT_STR, OPT_ENUM, OPT_LIST };
/* SEC_CIRCUIT: [circuit "NAME"] and [prefix "PFX"]; SEC_NONE: lines before
 * the first header; SEC_BAD: a section whose header was refused (its
 * options are skipped: one error is enough). */
enum opt_section { SEC_DAEMON, SEC_DEFAULTS, SEC_HOOKS, SEC_CIRCUIT, SEC_NONE, SEC_BAD };

struct option_def {
    const char *name;
    enum opt_section section;
    enum opt_type type;
    size_t offset;              /* into struct cbd_config; SEC_CIRCUIT rows: into struct cbd_override */
    size_t size;                /* OPT_STR: buffer size */
    const char *def;            /* default as text; NULL: none, or derived in finish() */
    const char *def_doc;        /* the default as documented, when def cannot say it */
    uint64_t min, max;          /* OPT_UINT */
    int pow2;                   /* OPT_UINT: must be a power of two */
    const char *const *choices; /* OPT_ENUM: NULL-terminated; the value is the index */
    const char *(*check)(const char *value, char *why, size_t size); /* OPT_STR, OPT_LIST */
    const char *accepts;        /* OPT_STR, OPT_LIST: what the check accepts, for the docs */
    int reloadable;             /* a reload applies it without a restart */
    int per_circuit;            /* SEC_DEFAULTS rows: also allowed in [circuit] and [prefix] */
    const char *help;
};

static const char *const section_names[] = {"daemon", "defaults", "hooks", "circuit"};
static const char *const stale_choices[] = {"fail-open", "keep-state", NULL}; /* CB_STALE_* order */
static const char *const level_choices[] = {"debug", "info", "warn", "error", NULL}; /* CBD_LOG_* order */

/* String checks: NULL if fine, else the whole complaint (with what is
 * expected) in why. */
static const char *check_instance(const char *v, char *why, size_t size)
{
    if (cb__instance_check(v) == 0)
        return NULL;
    snprintf(why, size, "'%.64s' is not a valid instance name (expected 1..32 of A-Z a-z 0-9 _ -)", v);
    return why;
}

static const char *check_socket(const char *v, char *why, size_t size)
{
    if (v[0] == '/')
        return NULL;
    snprintf(why, size, "'%.200s' is not an absolute path (expected /DIR/NAME.sock)", v);
    return why;
}

static const char *check_store(const char *v, char *why, size_t size)
{
    return cbd_store_uri_error(v, why, size);
}

static const char *check_group(const char *v, char *why, size_t size)
{
    unsigned gid;
    if (v[0] == '\0' || cbd_config_gid(v, &gid) == 0)
        return NULL;
    snprintf(why, size, "group '%.64s' does not exist on this host (expected a group name, or nothing for none)",
             v);
    return why;
}

static const char *check_command(const char *v, char *why, size_t size)
{
    if (v[0] != '\0')
        return NULL;
    snprintf(why, size, "empty command (expected a shell command line)");
    return why;
}

#define D(f) offsetof(struct cbd_config, f)
#define C(f) (offsetof(struct cbd_config, defaults) + offsetof(cb_config, f))
#define CMD_ACCEPTS "a /bin/sh command line"
static const struct option_def options[] = {
    {.name = "instance", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(instance), .size = CB_INSTANCE_MAX + 1,
     .def_doc = "$CB_INSTANCE, else `default`", .check = check_instance, .accepts = "1..32 of A-Z a-z 0-9 _ -",
     .help = "instance name: names the segment /cbd.NAME and the default socket and state file"},
    {.name = "socket", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(socket), .size = CB_SOCKET_PATH_MAX,
     .def_doc = "/run/cbd/INSTANCE.sock", .check = check_socket, .accepts = "an absolute path, at most 107 bytes",
     .help = "control socket path"},
    {.name = "socket_mode", .section = SEC_DAEMON, .type = OPT_MODE, .offset = D(socket_mode), .def = "0660",
     .max = 0777, .help = "permissions of the control socket: who may connect (register, list, subscribe)"},
    {.name = "socket_group", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(socket_group),
     .size = CBD_GROUP_MAX, .def = "", .def_doc = "none (the daemon's group)", .check = check_group,
     .accepts = "an existing group name, or nothing",
     .help = "group of the control socket and both shm regions (the workers' group)"},
    {.name = "segment_mode", .section = SEC_DAEMON, .type = OPT_MODE, .offset = D(segment_mode), .def = "0640",
     .max = 0777, .help = "permissions of the state region /cbd.INSTANCE (workers map it read-only); the lanes "
                          "region gets these | 0060, so the group can report outcomes"},
    {.name = "admin_group", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(admin_group), .size = CBD_GROUP_MAX,
     .def_doc = "`cbd-admin` if that group exists, else none", .check = check_group,
     .accepts = "an existing group name, or nothing", .reloadable = 1,
     .help = "peers in this group may force, reset, disable and reload (root and the daemon's uid always may)"},
    {.name = "store", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(store), .size = CBD_STORE_URI_MAX,
     .def_doc = "local:$STATE_DIRECTORY/INSTANCE.state (else /var/lib/cbd/...)", .check = check_store,
     .accepts = "local:PATH, redis://HOST:PORT/..., dynamodb://TABLE?...",
     .help = "where circuits persist and how the fleet shares them"},
    {.name = "capacity", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(capacity), .def = "16384", .min = 1,
     .max = 16777216,
     .help = "circuits the segment holds (528 bytes of /dev/shm each, allocated at start so a full /dev/shm "
             "is an error then, never later)"},
    {.name = "lanes", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(lanes), .def = "256", .min = 1,
     .max = 65536, .help = "outcome lanes: worker threads that can report at once"},
    {.name = "lane_capacity", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(lane_capacity), .def = "1024",
     .min = 16, .max = 1048576, .pow2 = 1, .help = "events per lane before a worker drops"},
    {.name = "history_capacity", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(history_capacity),
     .def = "4096", .min = 16, .max = 1048576, .pow2 = 1, .help = "transitions kept in the history ring"},
    {.name = "heartbeat_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(heartbeat_ms), .def = "100",
     .min = 10, .max = 10000, .help = "how often the daemon proves it is alive in the segment"},
    {.name = "stale_limit_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(stale_limit_ms), .def = "3000",
     .min = 100, .max = 3600000,
     .help = "heartbeat age after which workers apply stale_policy (at least 2 x heartbeat_ms)"},
    {.name = "stale_policy", .section = SEC_DAEMON, .type = OPT_ENUM, .offset = D(stale_policy),
     .def = "fail-open", .choices = stale_choices,
     .help = "what workers do with non-CLOSED circuits while the daemon is stale"},
    {.name = "drain_interval_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(drain_interval_ms),
     .def = "10", .min = 1, .max = 1000, .reloadable = 1,
     .help = "lanes are drained at least this often (failures also wake the daemon at once)"},
    {.name = "reclaim_interval_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(reclaim_interval_ms),
     .def = "1000", .min = 10, .max = 60000, .reloadable = 1,
     .help = "how often lanes of exited threads and dead processes are reclaimed"},
    {.name = "log_level", .section = SEC_DAEMON, .type = OPT_ENUM, .offset = D(log_level), .def = "info",
     .choices = level_choices, .reloadable = 1, .help = "lowest level logged to stderr"},
    {.name = "max_connections", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(max_connections),
     .def = "1024", .min = 16, .max = 65536, .reloadable = 1,
     .help = "control connections open at once, all peers together"},
    {.name = "max_connections_per_uid", .section = SEC_DAEMON, .type = OPT_UINT,
     .offset = D(max_connections_per_uid), .def = "64", .min = 1, .max = 65536, .reloadable = 1,
     .help = "control connections one user (uid) may hold open at once; admins are not limited"},
    {.name = "admin_reserved_connections", .section = SEC_DAEMON, .type = OPT_UINT,
     .offset = D(admin_reserved_connections), .def = "8", .min = 0, .max = 1024, .reloadable = 1,
     .help = "of max_connections, kept for admins (root, the daemon's uid, admin_group) so a flood never locks "
             "them out"},
    {.name = "frame_timeout_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(frame_timeout_ms),
     .def = "5000", .min = 100, .max = 600000, .reloadable = 1,
     .help = "a connection must complete each request frame this soon after its first byte, or is closed"},
    {.name = "idle_timeout_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(idle_timeout_ms),
     .def = "600000", .min = 0, .max = 86400000, .reloadable = 1,
     .help = "a connection that sends no request for this long is closed (0: never; subscribers are exempt)"},
    {.name = "max_circuits_per_uid", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(max_circuits_per_uid),
     .def = "4096", .min = 0, .max = 16777216, .reloadable = 1,
     .help = "circuits one user (uid) may register over the socket (0: no quota); admins, the configuration "
             "file and the store are not counted"},
    {.name = "circuit_expiry_s", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(circuit_expiry_s),
     .def = "0", .min = 0, .max = 31536000, .reloadable = 1,
     .help = "a CLOSED circuit with no outcome and no registration for this long is removed (0: never); "
             "circuits named by a [circuit] section, forced or disabled ones never expire"},
    {.name = "failure_threshold", .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(failure_threshold),
     .def = "5", .min = 1, .max = 1000000, .reloadable = 1, .per_circuit = 1,
     .help = "consecutive counted failures that trip a circuit"},
    {.name = "success_threshold", .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(success_threshold),
     .def = "3", .min = 1, .max = 1000000, .reloadable = 1, .per_circuit = 1,
     .help = "consecutive probe successes that close a circuit"},
    {.name = "half_open_max_probes", .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(half_open_max_probes),
     .def = "1", .min = 1, .max = 1024, .reloadable = 1, .per_circuit = 1,
     .help = "probes admitted at once while HALF_OPEN"},
    {.name = "recovery_timeout_ms", .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(recovery_timeout_ms),
     .def = "30000", .min = 1, .max = 604800000, .reloadable = 1, .per_circuit = 1,
     .help = "how long a circuit stays OPEN before probing"},
    {.name = "probe_lease_ms", .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(probe_lease_ms),
     .def = "0", .min = 0, .max = 604800000, .reloadable = 1, .per_circuit = 1,
     .help = "a probe silent this long is reclaimed (0 = recovery_timeout_ms)"},
    {.name = "command", .section = SEC_HOOKS, .type = OPT_LIST, .offset = D(hook_commands),
     .def_doc = "none", .check = check_command, .accepts = CMD_ACCEPTS, .reloadable = 1,
     .help = "run for every transition of every circuit (repeatable: each line is one hook)"},
    {.name = "timeout_ms", .section = SEC_HOOKS, .type = OPT_UINT, .offset = D(hook_timeout_ms), .def = "10000",
     .min = 10, .max = 3600000, .reloadable = 1,
     .help = "a hook still running after this is killed with its whole process group"},
    {.name = "max_running", .section = SEC_HOOKS, .type = OPT_UINT, .offset = D(hook_max_running), .def = "16",
     .min = 1, .max = 1024, .reloadable = 1, .help = "hooks running at once, across all circuits"},
    {.name = "queue_max", .section = SEC_HOOKS, .type = OPT_UINT, .offset = D(hook_queue_max), .def = "64",
     .min = 1, .max = 65536, .reloadable = 1,
     .help = "transitions waiting for hooks per circuit; past it the oldest waiting one is dropped (logged)"},
    {.name = "hook", .section = SEC_CIRCUIT, .type = OPT_LIST, .offset = offsetof(struct cbd_override, hooks),
     .def_doc = "none", .check = check_command, .accepts = CMD_ACCEPTS, .reloadable = 1,
     .help = "run for every transition of the circuits this section matches, after the [hooks] commands "
             "(repeatable)"},
};
#undef D
#undef C
#define N_OPTIONS (sizeof options / sizeof options[0])

/* One parse: where errors go and which options were given explicitly. */
struct parse_ctx {
    struct cbd_config *cfg;
    const char *where;       /* file name, or "command line" */
    int line;                /* 0: no line number */
    FILE *file;              /* the INI file being read */
    int next_line;           /* file reader: number of the line read next */
    enum opt_section sec;    /* section of the line being parsed */
    size_t ovr;              /* SEC_CIRCUIT: index into cfg->overrides */
    int seen_value;          /* a name=value since the last header (libinih's continuation rule) */
    int to_log;              /* reload: errors go to the log, not stderr */
    char *errbuf;            /* reload: the first errors, for the reply */
    size_t errsize;
    int errors;
    int set[N_OPTIONS];
};

static void report(struct parse_ctx *px, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct parse_ctx *px, const char *fmt, ...)
{
    char msg[1024], line[1280];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (px->line > 0)
        snprintf(line, sizeof line, "%s:%d: %s", px->where, px->line, msg);
    else
        snprintf(line, sizeof line, "%s: %s", px->where, msg);
    if (px->to_log)
        cbd_log(CBD_LOG_ERROR, "%s", line);
    else
        fprintf(stderr, "%s\n", line);
    if (px->errbuf != NULL && px->errors < 3) { /* the reply gets the first few */
        size_t used = strlen(px->errbuf);
        snprintf(px->errbuf + used, px->errsize - used, "%s%s", used ? "; " : "", line);
    }
    px->errors++;
}

/* ---- finding options ------------------------------------------------------ */

/* s[0..len) equals want, with '-' in s accepted for '_' in want. */
static int same_name(const char *s, size_t len, const char *want)
{
    size_t k = 0;
    while (k < len && want[k] != '\0' && (want[k] == s[k] || (want[k] == '_' && s[k] == '-')))
        k++;
    return k == len && want[k] == '\0';
}

/* The option's command-line name with underscores ("" for file-only rows). */
static void cli_name(const struct option_def *o, char *buf, size_t size)
{
    if (o->section == SEC_CIRCUIT)
        buf[0] = '\0';
    else
        snprintf(buf, size, "%s%s", o->section == SEC_HOOKS ? "hook_" : "", o->name);
}

static int find_cli(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        char cli[64];
        cli_name(&options[i], cli, sizeof cli);
        if (cli[0] != '\0' && same_name(name, len, cli))
            return (int)i;
    }
    return -1;
}

/* Option name in section sec (a file line): index, or -1. */
static int find_in_section(enum opt_section sec, const char *name)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &options[i];
        int here = o->section == sec || (sec == SEC_CIRCUIT && o->per_circuit);
        if (here && same_name(name, strlen(name), o->name))
            return (int)i;
    }
    return -1;
}

/* Where option o lives for this parse: in cfg, or in the current section's override. */
static void *field_of(struct parse_ctx *px, const struct option_def *o)
{
    if (px->sec != SEC_CIRCUIT)
        return (char *)px->cfg + o->offset;
    struct cbd_override *ov = &px->cfg->overrides[px->ovr];
    if (o->section == SEC_CIRCUIT)
        return (char *)ov + o->offset;
    return (char *)&ov->cfg + (o->offset - offsetof(struct cbd_config, defaults)); /* a per_circuit policy field */
}

/* ---- values ---------------------------------------------------------------- */

/* What the option accepts, for "(expected ...)" and the docs. */
static void expected(const struct option_def *o, char *buf, size_t size)
{
    switch (o->type) {
    case OPT_UINT:
        snprintf(buf, size, "%s%llu..%llu", o->pow2 ? "a power of two " : "an integer ",
                 (unsigned long long)o->min, (unsigned long long)o->max);
        break;
    case OPT_MODE:
        snprintf(buf, size, "an octal mode such as 0660");
        break;
    case OPT_ENUM: {
        size_t n = 0;
        buf[0] = '\0';
        for (size_t i = 0; o->choices[i] != NULL && n < size; i++)
            n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? " | " : "one of ", o->choices[i]);
        break;
    }
    case OPT_STR:
    case OPT_LIST:
        snprintf(buf, size, "%s", o->accepts);
        break;
    }
}

/* Parses text into an unsigned integer in the given base; -EINVAL if it is
 * not wholly digits or overflows 64 bits. */
static int parse_u64(const char *s, int base, uint64_t *out)
{
    if (s[0] < '0' || s[0] > (base == 8 ? '7' : '9'))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, base);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

static int strlist_add(struct cbd_strlist *l, const char *v)
{
    char **p = realloc(l->v, (l->n + 1) * sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    l->v = p;
    if ((l->v[l->n] = strdup(v)) == NULL)
        return -ENOMEM;
    l->n++;
    return 0;
}

static void strlist_free(struct cbd_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* Text values: checked, then copied (OPT_STR) or appended (OPT_LIST). */
static const char *set_text(const struct option_def *o, void *field, const char *v, char *why, size_t whysize)
{
    if (o->type == OPT_STR && strlen(v) >= o->size) {
        snprintf(why, whysize, "value is %zu bytes (expected at most %zu)", strlen(v), o->size - 1);
        return why;
    }
    if (o->check != NULL && o->check(v, why, whysize) != NULL)
        return why;
    if (o->type == OPT_STR)
        memcpy(field, v, strlen(v) + 1);
    else if (strlist_add(field, v) < 0) {
        snprintf(why, whysize, "out of memory");
        return why;
    }
    return NULL;
}

/* Sets option o at field from text: NULL if fine, else the whole complaint in why. */
static const char *set_value(const struct option_def *o, void *field, const char *v, char *why, size_t whysize)
{
    char exp[256];
    uint64_t n;
    if (o->type == OPT_STR || o->type == OPT_LIST)
        return set_text(o, field, v, why, whysize);
    expected(o, exp, sizeof exp);
    if (o->type == OPT_ENUM) {
        for (uint32_t i = 0; o->choices[i] != NULL; i++) {
            if (strcmp(v, o->choices[i]) == 0) {
                *(uint32_t *)field = i;
                return NULL;
            }
        }
        snprintf(why, whysize, "'%.64s' is not a known value (expected %s)", v, exp);
    } else if (parse_u64(v, o->type == OPT_MODE ? 8 : 10, &n) < 0) {
        snprintf(why, whysize, "'%.64s' is not %s (expected %s)", v,
                 o->type == OPT_MODE ? "an octal number" : "a number", exp);
    } else if (n < o->min || n > o->max) {
        snprintf(why, whysize, "%s is out of range (expected %s)", v, exp);
    } else if (o->pow2 && (n & (n - 1)) != 0) {
        snprintf(why, whysize, "%s is not a power of two (expected %s)", v, exp);
    } else {
        *(uint32_t *)field = (uint32_t)n;
        return NULL;
    }
    return why;
}

/* Sets option i from user input, reporting a failure in context. */
static void apply(struct parse_ctx *px, int i, const char *value)
{
    char why[512];
    const struct option_def *o = &options[i];
    if (set_value(o, field_of(px, o), value, why, sizeof why) != NULL) {
        report(px, "option '%s': %s", o->name, why);
        return;
    }
    if (px->sec == SEC_CIRCUIT && o->per_circuit) { /* bit i: cbd_policy_fields[i] given */
        size_t field = (o->offset - offsetof(struct cbd_config, defaults)) / sizeof(uint32_t);
        px->cfg->overrides[px->ovr].set |= 1u << field;
    } else if (px->sec != SEC_CIRCUIT) {
        px->set[i] = 1;
    }
}

/* A running value as text, for reload warnings. */
static void format_value(const struct option_def *o, const struct cbd_config *cfg, char *buf, size_t size)
{
    const void *field = (const char *)cfg + o->offset;
    uint32_t v = *(const uint32_t *)field;
    if (o->type == OPT_STR)
        snprintf(buf, size, "'%s'", (const char *)field);
    else if (o->type == OPT_MODE)
        snprintf(buf, size, "%04o", v);
    else if (o->type == OPT_ENUM)
        snprintf(buf, size, "%s", o->choices[v]);
    else
        snprintf(buf, size, "%u", v);
}

/* ---- the INI file: sections ------------------------------------------------- */

/* The override for [circuit "name"] / [prefix "name"], made on first sight. */
static int override_index(struct cbd_config *cfg, const char *name, int prefix, size_t *out)
{
    for (size_t i = 0; i < cfg->noverrides; i++) {
        if (cfg->overrides[i].prefix == prefix && strcmp(cfg->overrides[i].name, name) == 0) {
            *out = i; /* a section given twice: one section, fields merged */
            return 0;
        }
    }
    struct cbd_override *p = realloc(cfg->overrides, (cfg->noverrides + 1) * sizeof *p);
    if (p == NULL)
        return -ENOMEM;
    cfg->overrides = p;
    memset(&p[cfg->noverrides], 0, sizeof *p);
    if ((p[cfg->noverrides].name = strdup(name)) == NULL)
        return -ENOMEM;
    p[cfg->noverrides].prefix = prefix;
    *out = cfg->noverrides++;
    return 0;
}

/* [circuit "NAME"] or [prefix "PFX"]: 0, or -EINVAL with why. */
static int circuit_section(struct parse_ctx *px, const char *text, char *why, size_t whysize)
{
    int prefix = strncmp(text, "prefix ", 7) == 0;
    if (!prefix && strncmp(text, "circuit ", 8) != 0)
        return -ENOENT;
    const char *q = text + (prefix ? 7 : 8);
    size_t len = strlen(q);
    char name[CB_NAME_MAX + 1];
    if (len < 2 || q[0] != '"' || q[len - 1] != '"' || len - 2 > CB_NAME_MAX) {
        snprintf(why, whysize, "expected [%s \"%s\"] with the %s in double quotes, at most %u bytes",
                 prefix ? "prefix" : "circuit", prefix ? "PREFIX" : "NAME", prefix ? "prefix" : "name", CB_NAME_MAX);
        return -EINVAL;
    }
    snprintf(name, sizeof name, "%.*s", (int)(len - 2), q + 1);
    if (cb__name_check(name) < 0) {
        snprintf(why, whysize, "'%s' is not a valid circuit %s (expected 1..%u of A-Z a-z 0-9 . _ : / @ + = -)",
                 name, prefix ? "name prefix" : "name", CB_NAME_MAX);
        return -EINVAL;
    }
    if (override_index(px->cfg, name, prefix, &px->ovr) < 0) {
        snprintf(why, whysize, "out of memory");
        return -EINVAL;
    }
    return 0;
}

/* A header line as libinih will see it: sets px->sec for the lines below. */
static void on_section(struct parse_ctx *px, const char *start)
{
    const char *end = strchr(start, ']');
    char text[256], why[512];
    if (end == NULL || (size_t)(end - start) >= sizeof text) {
        px->sec = SEC_BAD; /* libinih reports the syntax error */
        return;
    }
    snprintf(text, sizeof text, "%.*s", (int)(end - start - 1), start + 1);
    for (int s = SEC_DAEMON; s <= SEC_HOOKS; s++) {
        if (strcmp(text, section_names[s]) == 0) {
            px->sec = (enum opt_section)s;
            return;
        }
    }
    int rc = circuit_section(px, text, why, sizeof why);
    if (rc == 0) {
        px->sec = SEC_CIRCUIT;
        return;
    }
    px->sec = SEC_BAD;
    if (rc == -ENOENT)
        snprintf(why, sizeof why, "unknown section (expected [daemon], [defaults], [hooks], [circuit \"NAME\"] "
                                  "or [prefix \"PREFIX\"])");
    report(px, "section [%s]: %s", text, why);
}

/* libinih's line reader: fgets that numbers lines, follows section headers
 * and refuses lines that do not fit libinih's buffer. */
static char *read_line(char *str, int num, void *stream)
{
    struct parse_ctx *px = stream;
    px->line = px->next_line;
    char *r = fgets(str, num, px->file);
    if (r == NULL)
        return NULL;
    px->next_line++;
    if (strchr(r, '\n') == NULL) {
        int c = fgetc(px->file);
        if (c != EOF && c != '\n') { /* longer than libinih's buffer: skip the rest */
            while (c != EOF && c != '\n')
                c = fgetc(px->file);
            report(px, "line is longer than %d bytes (for a longer hook, run a script)", num - 2);
            snprintf(str, (size_t)num, ";\n"); /* a comment to libinih */
            return str;
        }
    }
    const char *p = str + (px->line == 1 && strncmp(str, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0);
    const char *start = p + strspn(p, " \t\r\n");
    /* libinih: an indented line after a value continues that value. */
    if (*start == '[' && (start == p || !px->seen_value)) {
        px->seen_value = 0;
        on_section(px, start);
    }
    return str;
}

static int on_ini_value(void *user, const char *section, const char *name, const char *value)
{
    struct parse_ctx *px = user;
    (void)section; /* truncated by libinih: read_line followed the header */
    px->seen_value = 1;
    if (px->sec == SEC_BAD)
        return 1; /* its header was reported */
    if (px->sec == SEC_NONE) {
        report(px, "option '%s': comes before any section (expected a [section] line above it)", name);
        return 1;
    }
    int i = find_in_section(px->sec, name);
    if (i >= 0) {
        apply(px, i, value);
        return 1; /* keep going: every error is reported */
    }
    for (size_t k = 0; k < N_OPTIONS; k++) {
        if (same_name(name, strlen(name), options[k].name)) {
            report(px, "option '%s': belongs in section [%s]%s", name, section_names[options[k].section],
                   options[k].per_circuit ? ", [circuit \"NAME\"] or [prefix \"PREFIX\"]" : "");
            return 1;
        }
    }
    report(px, "option '%s': unknown option in this section (see cbd --help-config)", name);
    return 1;
}

static void parse_file(struct parse_ctx *px, const char *path)
{
    px->file = fopen(path, "r");
    px->where = path;
    px->line = 0;
    if (px->file == NULL) {
        report(px, "cannot open configuration file: %s", strerror(errno));
        return;
    }
    px->next_line = 1;
    px->sec = SEC_NONE;
    px->seen_value = 0;
    int rc = ini_parse_stream(read_line, px, on_ini_value, px);
    if (rc > 0) {
        px->line = rc;
        report(px, "syntax error (expected 'name = value', '[section]' or a ';' comment)");
    } else if (rc < 0) {
        px->line = 0;
        report(px, "cannot parse configuration file: out of memory");
    }
    fclose(px->file);
    px->line = 0;
    px->sec = SEC_DAEMON; /* the command line names no section */
    px->where = "command line";
}

/* ---- help: --help (terse) and --help-config (Markdown) -------------------- */

/* "--lane-capacity N": the flag as typed, with a placeholder for its value. */
static void flag_text(const struct option_def *o, char *buf, size_t size)
{
    static const char *const placeholder[] = {"N", "MODE", NULL, "WORD", "CMD"}; /* by enum opt_type */
    char cli[64];
    cli_name(o, cli, sizeof cli);
    size_t n = (size_t)snprintf(buf, size, "--%s ", cli);
    for (size_t i = 2; i < n; i++)
        buf[i] = buf[i] == '_' ? '-' : buf[i];
    if (o->type != OPT_STR) {
        snprintf(buf + n, size - n, "%s", placeholder[o->type]);
        return;
    }
    for (size_t i = 0; o->name[i] != '\0' && n + 1 < size; i++) /* strings: the name in capitals */
        buf[n++] = (char)toupper((unsigned char)o->name[i]);
    buf[n] = '\0';
}

static const char *default_text(const struct option_def *o)
{
    return o->def_doc ? o->def_doc : o->def;
}

static void print_help(void)
{
    printf("Usage: cbd [-c FILE] [--OPTION=VALUE | --OPTION VALUE]...\n"
           "       cbd --check-config FILE | --help | --help-config | --version\n\n"
           "cbd owns a host's shared-memory circuit breakers; workers use libcb.\n\n"
           "  -c, --config FILE     read options from an INI file (see --help-config)\n"
           "  --check-config FILE   validate FILE (and any options given), print \"ok\", exit 0 or 2\n"
           "  --help-config         every option of the file, as Markdown (docs/configuration.md)\n"
           "  -h, --help            this text\n"
           "  -V, --version         print the version\n\n"
           "Options (command line: dashes; file: underscores; * = applied by a reload):\n");
    enum opt_section section = SEC_BAD;
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &options[i];
        char flag[64], exp[512];
        if (section != o->section) {
            section = o->section;
            if (section == SEC_CIRCUIT)
                printf("\n [circuit \"NAME\"] and [prefix \"PREFIX\"] (file only): the [defaults] options, and\n");
            else
                printf("\n [%s]\n", section_names[section]);
        }
        if (o->section == SEC_CIRCUIT)
            snprintf(flag, sizeof flag, "%s = CMD", o->name);
        else
            flag_text(o, flag, sizeof flag);
        expected(o, exp, sizeof exp);
        printf(" %c %-30s %s\n", o->reloadable ? '*' : ' ', flag, o->help);
        printf("   %-30s default %s; %s\n", "", default_text(o), exp);
    }
}

/* A Markdown table cell: '|' escaped. */
static void md_cell(const char *s)
{
    for (; *s; s++)
        printf(*s == '|' ? "\\|" : "%c", *s);
}

static const char md_intro[] =
    "# cbd configuration\n\n"
    "<!-- Generated by `cbd --help-config` from the option table in daemon/config.c: change the table, then\n"
    "     regenerate this file. A test checks that the two agree. -->\n\n"
    "cbd takes its options, lowest precedence first, from built-in defaults, the environment (`$CB_INSTANCE`\n"
    "picks the instance; `$STATE_DIRECTORY`, set by systemd's `StateDirectory=`, moves the default state\n"
    "file), an INI file (`cbd -c FILE`) and the command line (`--name=value` or `--name value`, dashes or\n"
    "underscores; `[hooks]` options as `--hook-NAME`; per-circuit sections exist only in the file).\n"
    "`cbd --check-config FILE` (or `cbctl check-config FILE`) validates a file together with any options\n"
    "given beside it: it prints `ok` and exits 0, or prints every error and exits 2.\n\n"
    "## File format\n\n"
    "- `[section]` lines, then `name = value` lines. Lines starting with `;` or `#` are comments, and so is\n"
    "  everything after ` ;` (a space, then a semicolon) in a value: a hook needing `;` runs a script.\n"
    "- A line holds at most 198 bytes; a longer one is refused, not split.\n"
    "- A repeatable option (`command`, `hook`) may be given on several lines, each one value, kept in\n"
    "  order; a section given twice is one section. Other options given twice keep the last value.\n"
    "- Every error is reported, each as `FILE:LINE: option 'x': what is wrong (expected ...)`.\n\n"
    "## Which policy a circuit gets\n\n"
    "Each of the five policy fields comes from the first of: the circuit's section in this file, the\n"
    "config the worker registered the circuit with (`cb_circuit_get`), `[defaults]`. The circuit's section\n"
    "is `[circuit \"NAME\"]` of exactly its name, else the `[prefix \"PREFIX\"]` with the longest prefix of\n"
    "its name; one section applies, and it decides only the fields it names. The daemon remembers what each\n"
    "worker asked for, so a reload recomputes every circuit's policy from the new file. The store keeps\n"
    "what the worker asked for (with `[defaults]` filled in), so after a restart that counts as the\n"
    "worker's registration.\n\n"
    "## Reload\n\n"
    "`SIGHUP` (`systemctl reload cbd`) or `cbctl reload` reads the same file and command line again.\n"
    "A file with any error changes nothing: each error is logged as `FILE:LINE: option 'x': ...` and\n"
    "`cbctl reload` fails with the first ones. A valid file is applied at once: options marked *reload: yes*\n"
    "take effect (every circuit's policy is recomputed; states, streaks, counters and running hooks are\n"
    "kept), while an option marked *no* whose value changed keeps its running value and the daemon logs a\n"
    "warning naming it (restart to apply). Under systemd the daemon reports `RELOADING=1`, then `READY=1`.\n\n"
    "## Hooks\n\n"
    "Every transition runs each `[hooks] command`, then each `hook` of the circuit's section, as\n"
    "`/bin/sh -c CMD` with the transition in the environment: `CB_CIRCUIT`, `CB_FROM`, `CB_TO`\n"
    "(`CLOSED`, `OPEN`, `HALF_OPEN`), `CB_SOURCE` (`local`, `remote`, `operator`, `timer`, `restore`),\n"
    "`CB_EPOCH`, `CB_FAILURE_COUNT`, `CB_OPENED_AT` (epoch seconds, 0 when closed), `CB_TIME` (RFC 3339,\n"
    "UTC), `CB_TIME_NS`, `CB_INSTANCE`, plus `PATH` and `LANG`. Hooks run off the daemon's loop: one\n"
    "circuit's hooks run one at a time in transition order, different circuits' hooks at once up to\n"
    "`max_running`; stdout and stderr go to the log line by line; a hook past `timeout_ms` is killed with\n"
    "its process group. A hook never delays a transition, a worker's check, or another circuit's hooks.\n";

static const char md_example[] =
    "## Example\n\n"
    "```ini\n"
    "[daemon]\n"
    "socket_group = cbd\n"
    "admin_group = cbd-admin\n"
    "store = redis://127.0.0.1:6379/0\n\n"
    "[defaults]\n"
    "failure_threshold = 5\n"
    "recovery_timeout_ms = 30000\n\n"
    "[hooks]\n"
    "command = /usr/local/lib/cbd/notify-chat\n"
    "timeout_ms = 5000\n\n"
    "[prefix \"payments.\"]\n"
    "failure_threshold = 3\n"
    "hook = /usr/local/lib/cbd/page-oncall\n\n"
    "[circuit \"payments.refunds\"]\n"
    "recovery_timeout_ms = 120000\n"
    "```\n";

static void print_md_section(enum opt_section sec)
{
    static const char *const titles[] = {
        "## [daemon]\n\n",
        "## [defaults]\n\nThe policy of every circuit, under what workers and per-circuit sections say. Each\n"
        "option here may also be given in `[circuit \"NAME\"]` and `[prefix \"PREFIX\"]`.\n\n",
        "## [hooks]\n\n",
        "## [circuit \"NAME\"] and [prefix \"PREFIX\"]\n\nAny of the five `[defaults]` options, and:\n\n",
    };
    printf("%s| option | default | accepted values | reload | meaning |\n|---|---|---|---|---|\n", titles[sec]);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &options[i];
        char exp[512];
        if (o->section != sec)
            continue;
        expected(o, exp, sizeof exp);
        printf("| `%s` | ", o->name);
        md_cell(default_text(o));
        printf(" | ");
        md_cell(exp);
        printf(" | %s | ", o->reloadable ? "yes" : "no");
        md_cell(o->help);
        printf(" |\n");
    }
    printf("\n");
}

static void print_help_config(void)
{
    printf("%s\n", md_intro);
    for (int s = SEC_DAEMON; s <= SEC_CIRCUIT; s++)
        print_md_section((enum opt_section)s);
    printf("%s", md_example);
}

/* ---- defaults, derived values ---------------------------------------------- */

/* The instance-dependent defaults, once the instance is known. */
static void finish(struct parse_ctx *px)
{
    struct cbd_config *cfg = px->cfg;
    const char *env = getenv("CB_INSTANCE");
    int instance = find_cli("instance", 8);
    unsigned gid;
    px->where = "environment";
    if (!px->set[instance] && env != NULL && env[0] != '\0') {
        char why[256];
        if (set_value(&options[instance], cfg->instance, env, why, sizeof why) != NULL)
            report(px, "CB_INSTANCE: %s", why);
    }
    if (!px->set[find_cli("socket", 6)])
        snprintf(cfg->socket, sizeof cfg->socket, "/run/cbd/%s.sock", cfg->instance);
    if (!px->set[find_cli("admin_group", 11)])
        snprintf(cfg->admin_group, sizeof cfg->admin_group, "%s",
                 cbd_config_gid("cbd-admin", &gid) == 0 ? "cbd-admin" : "");
    if (!px->set[find_cli("store", 5)]) {
        char dir[CBD_STORE_URI_MAX] = "/var/lib/cbd";
        const char *sd = getenv("STATE_DIRECTORY"); /* systemd: colon-separated, first is ours */
        if (sd != NULL && sd[0] == '/')
            snprintf(dir, sizeof dir, "%.*s", (int)strcspn(sd, ":"), sd);
        if (snprintf(cfg->store, sizeof cfg->store, "local:%s/%s.state", dir, cfg->instance) >=
            (int)sizeof cfg->store)
            report(px, "STATE_DIRECTORY: path too long for the store URI (at most %d bytes)",
                   CBD_STORE_URI_MAX - 64);
    }
    px->where = "configuration";
    const char *field;
    if (cb__config_check(&cfg->defaults, &field) < 0) /* field: "name (bounds)" */
        report(px, "option '%.*s': out of range (expected %s)", (int)strcspn(field, " "), field,
               field + strcspn(field, " ") + 1);
    if (cfg->stale_limit_ms < 2 * cfg->heartbeat_ms)
        report(px, "option 'stale_limit_ms': %u is below 2 x heartbeat_ms (%u) (expected at least %u, or a "
                   "shorter heartbeat_ms)", cfg->stale_limit_ms, cfg->heartbeat_ms, 2 * cfg->heartbeat_ms);
}

static void set_defaults(struct cbd_config *cfg)
{
    char why[256];
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->instance, "default");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].def != NULL && options[i].section != SEC_CIRCUIT)
            set_value(&options[i], (char *)cfg + options[i].offset, options[i].def, why, sizeof why);
    }
}

/* ---- the command line ----------------------------------------------------- */

/* Value of argv[*i] for flag: after '=' or the next argument. */
static const char *take_value(struct parse_ctx *px, int argc, char **argv, int *i, const char *flag)
{
    const char *eq = strchr(argv[*i], '=');
    if (eq != NULL)
        return eq + 1;
    if (*i + 1 < argc)
        return argv[++*i];
    report(px, "option '%s' needs a value", flag);
    return NULL;
}

static int is_flag(const char *a, size_t len, const char *flag)
{
    return len == strlen(flag) && strncmp(a, flag, len) == 0;
}

/* Pass 1: -c / --check-config / --help / --help-config / --version. Returns
 * the file to read (or NULL); sets *action for the flags that end the run. */
static const char *scan_meta(struct parse_ctx *px, int argc, char **argv, int *check_only, int *action)
{
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t len = strcspn(a, "=");
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            print_help();
            *action = CBD_CONFIG_EXIT_OK;
        } else if (strcmp(a, "--help-config") == 0) {
            print_help_config();
            *action = CBD_CONFIG_EXIT_OK;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("cbd %s (segment layout %u.%u)\n", CB_VERSION_STRING, CB_SEG_MAJOR, CB_SEG_MINOR);
            *action = CBD_CONFIG_EXIT_OK;
        } else if (strcmp(a, "-c") == 0 || is_flag(a, len, "--config")) {
            file = take_value(px, argc, argv, &i, "--config");
        } else if (is_flag(a, len, "--check-config")) {
            file = take_value(px, argc, argv, &i, "--check-config");
            *check_only = 1;
        } else if (strncmp(a, "--", 2) == 0 && find_cli(a + 2, len - 2) >= 0 && strchr(a, '=') == NULL) {
            i++; /* "--name value": skip the value, pass 2 reads it */
        }
    }
    return file;
}

/* Pass 2: every table option, overriding the file. */
static void scan_options(struct parse_ctx *px, int argc, char **argv)
{
    static const char *const meta[] = {"-h", "--help", "--help-config", "-V", "--version"};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t len = strcspn(a, "="), m = 0;
        int opt = strncmp(a, "--", 2) == 0 ? find_cli(a + 2, len - 2) : -1;
        while (m < sizeof meta / sizeof meta[0] && strcmp(a, meta[m]) != 0)
            m++;
        if (opt >= 0) {
            const char *v = take_value(px, argc, argv, &i, a);
            if (v != NULL)
                apply(px, opt, v);
        } else if (strcmp(a, "-c") == 0 || is_flag(a, len, "--config") || is_flag(a, len, "--check-config")) {
            i += strchr(a, '=') == NULL; /* handled in pass 1 */
        } else if (m == sizeof meta / sizeof meta[0]) {
            report(px, "unknown option '%s' (see cbd --help)", a);
        }
    }
}

/* Everything but pass 1: defaults, file, command line, derived values. */
static void parse_sources(struct parse_ctx *px, const char *file, int argc, char **argv)
{
    struct cbd_config *cfg = px->cfg;
    set_defaults(cfg);
    px->where = "command line";
    px->sec = SEC_DAEMON;
    if (file != NULL) {
        snprintf(cfg->file, sizeof cfg->file, "%s", file);
        parse_file(px, file);
    }
    scan_options(px, argc, argv);
    if (px->errors == 0)
        finish(px);
    cfg->argc = argc;
    cfg->argv = argv;
}

enum cbd_config_action cbd_config_parse_args(struct cbd_config *cfg, int argc, char **argv)
{
    struct parse_ctx px = {.cfg = cfg, .where = "command line"};
    int check_only = 0, action = CBD_CONFIG_RUN;
    memset(cfg, 0, sizeof *cfg);
    const char *file = scan_meta(&px, argc, argv, &check_only, &action);
    if (action == CBD_CONFIG_EXIT_OK && px.errors == 0)
        return CBD_CONFIG_EXIT_OK;
    if (px.errors == 0)
        parse_sources(&px, file, argc, argv);
    if (px.errors > 0 || check_only)
        cbd_config_free(cfg);
    if (px.errors > 0)
        return CBD_CONFIG_EXIT_USAGE;
    if (check_only) {
        printf("ok\n");
        return CBD_CONFIG_EXIT_OK;
    }
    cbd_log_threshold = (int)cfg->log_level;
    return CBD_CONFIG_RUN;
}

/* ---- reload ----------------------------------------------------------------- */

/* Options a reload cannot change keep their running values, with a warning. */
static void keep_fixed(const struct cbd_config *running, struct cbd_config *next)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &options[i];
        const char *was = (const char *)running + o->offset;
        char *now = (char *)next + o->offset;
        size_t size = o->type == OPT_STR ? o->size : sizeof(uint32_t);
        char a[CBD_STORE_URI_MAX + 8], b[CBD_STORE_URI_MAX + 8];
        if (o->reloadable || o->section == SEC_CIRCUIT ||
            (o->type == OPT_STR ? strcmp(was, now) == 0 : memcmp(was, now, size) == 0))
            continue;
        format_value(o, running, a, sizeof a);
        format_value(o, next, b, sizeof b);
        cbd_log(CBD_LOG_WARN, "reload: option '%s' changed from %s to %s, but only a restart applies it: "
                              "keeping %s", o->name, a, b, a);
        memcpy(now, was, size);
    }
}

int cbd_config_reload(const struct cbd_config *running, struct cbd_config *next, char *err, size_t errsize)
{
    struct cbd_config tmp;
    struct parse_ctx px = {.cfg = &tmp, .to_log = 1, .errbuf = err, .errsize = errsize};
    err[0] = '\0';
    parse_sources(&px, running->file[0] ? running->file : NULL, running->argc, running->argv);
    if (px.errors > 0) {
        cbd_config_free(&tmp);
        return -EINVAL;
    }
    keep_fixed(running, &tmp);
    *next = tmp;
    return 0;
}

void cbd_config_free(struct cbd_config *cfg)
{
    strlist_free(&cfg->hook_commands);
    for (size_t i = 0; i < cfg->noverrides; i++) {
        free(cfg->overrides[i].name);
        strlist_free(&cfg->overrides[i].hooks);
    }
    free(cfg->overrides);
    cfg->overrides = NULL;
    cfg->noverrides = 0;
}

/* ---- what a circuit gets ------------------------------------------------------ */

static const struct cbd_override *section_for(const struct cbd_config *cfg, const char *name)
{
    const struct cbd_override *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < cfg->noverrides; i++) {
        const struct cbd_override *o = &cfg->overrides[i];
        size_t len = strlen(o->name);
        if (!o->prefix && strcmp(o->name, name) == 0)
            return o; /* exact beats any prefix */
        if (o->prefix && len > best_len && strncmp(o->name, name, len) == 0) {
            best = o;
            best_len = len;
        }
    }
    return best;
}

void cbd_config_effective(const struct cbd_config *cfg, const char *name, const cb_config *asked,
                          unsigned asked_mask, cb_config *out, const struct cbd_override **section)
{
    const struct cbd_override *o = section_for(cfg, name);
    cb_config want = asked ? *asked : cfg->defaults, sect = o ? o->cfg : cfg->defaults;
    unsigned sect_mask = o ? o->set : 0;
    *out = cfg->defaults;
    for (unsigned i = 0; i < CBD_POLICY_NFIELDS; i++) {
        if (sect_mask & (1u << i))
            *cbd_policy_field(out, i) = *cbd_policy_field(&sect, i);
        else if (asked_mask & (1u << i))
            *cbd_policy_field(out, i) = *cbd_policy_field(&want, i);
    }
    *section = o;
}

int cbd_config_gid(const char *group, unsigned *gid)
{
    if (group == NULL || group[0] == '\0')
        return -ENOENT;
    const struct group *g = getgrnam(group);
    if (g == NULL)
        return -ENOENT;
    *gid = (unsigned)g->gr_gid;
    return 0;
}
