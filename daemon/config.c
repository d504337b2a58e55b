/*
 * config.c - the option table and everything derived from it.
 *
 * Design (Redis' config.c in miniature): every option is one row of
 * `options[]` - name, section, type, where it lives, default, bounds,
 * whether a reload may change it, and a help line. The command line
 * (`--name=value`, `--name value`, dashes for underscores; [hooks] options
 * as --hook-NAME), the INI file (`-c FILE`), reload, `--help` and
 * `--help-config` (the Markdown of docs/configuration.md) all walk the same
 * rows, so an option cannot exist in one place and be missing in another.
 * Defaults are written as text and go through the same parser as user
 * input, so a default can never be out of its own bounds.
 *
 * Sections: [daemon], [defaults] (the circuit policy), [hooks] (global
 * transition hooks and their limits), and any number of [circuit "NAME"]
 * (exact name) and [prefix "PFX"] sections holding the policy fields and
 * `hook` lines for the circuits they match. Repeatable options (hook
 * commands) collect every value in file order; the command line adds to
 * the file's. Each section is given once: a second [daemon] or
 * [circuit "x"] is an error, since its lines silently overriding the first
 * ones is what a copy-and-paste slip looks like.
 *
 * Precedence, lowest first: built-in defaults, the environment
 * ($CB_INSTANCE picks the instance; $STATE_DIRECTORY, set by systemd's
 * StateDirectory=, moves the default state file), the file, the command line.
 * The socket, store and admin_group defaults are derived once everything
 * else is known.
 *
 * One validation. cbd_config_load() is the only way in: `cbd
 * --check-config`, the daemon's start and every reload read the same
 * sources through it, so a file the check passes is a file the daemon
 * takes, and what the daemon refuses the check refuses first. It checks each
 * value against its row (with line numbers), then the rules between options
 * on the values the daemon would run with (stale_limit_ms at least 2 x
 * heartbeat_ms, admin_reserved_connections below max_connections, the
 * circuit defaults by cb__config_check, the single authority should the
 * table's bounds ever disagree). The store URI is judged by its backend's
 * check_uri, the parser its create() uses.
 *
 * Errors do not stop parsing: every bad line is reported, each as
 * "FILE:LINE: option 'x': <what is wrong> (expected ...)", so an operator
 * fixes a file in one pass (past ERRORS_SHOWN they are counted, so a binary
 * file given by mistake does not flood a terminal). At start errors go to
 * stderr; on reload to the log, and the first ones into the reply.
 *
 * The file is read whole (at most CBD_CONFIG_FILE_MAX bytes) and each of
 * its lines goes through libinih's ini_parse_stream on its own, handed over
 * by read_line. libinih says what a line is: blank, a comment (';' or '#'
 * first), a [section] (a ']' before any ' ;' comment), or a name and a value
 * (split at the first '=' or ':', blanks around both dropped, a ';' after a
 * blank starting a comment); anything else is its syntax error. One call
 * per line, because over a whole stream libinih returns only its first
 * syntax error, tells its handler nothing at a header and cuts section
 * names at 49 bytes (circuit names reach 127): here every line gets its own
 * verdict, and config.c keeps the section from the header lines libinih
 * takes, with its own rules on top (blanks inside the brackets do not
 * count, nothing but a comment may follow the ']', each section once). A
 * line parsed alone is never a continuation of the one above (libinih's
 * multi-line values), and read_line knows its number. read_line hands
 * libinih the bytes before the line's first control byte and at most its
 * buffer, CBD_CONFIG_LINE_MAX (4095) bytes, set at run time through the
 * variables of Debian's build (libinih_limits): a NUL or other control byte, or a
 * longer line (refused whole, never split), is the line's one error, named
 * with the option when libinih finds a name before the fault.
 *
 * Debian's libinih also exports its build options as variables
 * (ini_max_line, ini_stop_on_first_error, ini_allow_multiline, ...). cbd
 * leaves them alone: they are process-wide, and the AWS shared-file parser
 * (aws_credentials.c), which the DynamoDB URI check runs in the middle of
 * this parse, relies on their defaults.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "policy.h"
#include "policy_names.h"
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

/* Empty (no endpoint), or an address cbd_metrics_parse_listen takes. */
static const char *check_metrics_listen(const char *v, char *why, size_t size)
{
    struct sockaddr_storage addr;
    socklen_t len;
    if (v[0] == '\0' || cbd_metrics_parse_listen(v, &addr, &len, why, size) == 0)
        return NULL;
    snprintf(why, size, "'%.64s' is not a listen address (expected IPv4:PORT, [IPv6]:PORT or PORT, numeric, "
             "e.g. 127.0.0.1:9464)", v);
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
     .help = "lanes with traffic are drained at least this often; a lane quiet for 8 intervals ten times less "
             "often, and an idle daemon ticks at ten intervals (failures and probe results wake it at once)"},
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
             "them out; below max_connections"},
    {.name = "frame_timeout_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(frame_timeout_ms),
     .def = "5000", .min = 100, .max = 600000, .reloadable = 1,
     .help = "a connection must complete each request frame this soon after its first byte, or is closed"},
    {.name = "idle_timeout_ms", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(idle_timeout_ms),
     .def = "600000", .min = 0, .max = 86400000, .reloadable = 1,
     .help = "a connection that sends no request for this long is closed (0: never; subscribers are exempt)"},
    {.name = "max_circuits_per_uid", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(max_circuits_per_uid),
     .def = "4096", .min = 0, .max = 16777216, .reloadable = 1,
     .help = "circuits one user (uid) may register over the socket (0: no quota; above capacity: the capacity "
             "bounds it); admins, the configuration file and the store are not counted"},
    {.name = "circuit_expiry_s", .section = SEC_DAEMON, .type = OPT_UINT, .offset = D(circuit_expiry_s),
     .def = "0", .min = 0, .max = 31536000, .reloadable = 1,
     .help = "a CLOSED circuit with no outcome and no registration for this long is removed (0: never); "
             "circuits named by a [circuit] section, forced or disabled ones never expire"},
    {.name = "metrics_listen", .section = SEC_DAEMON, .type = OPT_STR, .offset = D(metrics_listen),
     .size = CBD_LISTEN_MAX, .def = "", .def_doc = "none (no endpoint, no socket)", .check = check_metrics_listen,
     .accepts = "IPv4:PORT, [IPv6]:PORT, or PORT (127.0.0.1:PORT); numeric, no names",
     .help = "serve Prometheus metrics at http://ADDRESS/metrics (docs/metrics.md); a change needs a restart"},
    /* [defaults] and the per-circuit sections: the policy fields (cb.h) */
#define POLICY_OPTION(n, d, lo, hi, h)                                                                           \
    {.name = #n, .section = SEC_DEFAULTS, .type = OPT_UINT, .offset = C(n), .def = #d, .min = lo, .max = hi,       \
     .reloadable = 1, .per_circuit = 1, .help = h},
    CB_POLICY_FIELDS(POLICY_OPTION)
#undef POLICY_OPTION
    {.name = "command", .section = SEC_HOOKS, .type = OPT_LIST, .offset = D(hook_commands),
     .def_doc = "none", .check = check_command, .accepts = CMD_ACCEPTS, .reloadable = 1,
     .help = "run for every transition of every circuit (repeatable: each line is one hook)"},
    {.name = "timeout_ms", .section = SEC_HOOKS, .type = OPT_UINT, .offset = D(hook_timeout_ms), .def = "10000",
     .min = 10, .max = 3600000, .reloadable = 1,
     .help = "a hook still running after this is killed with its whole process group (under the shipped unit "
             "hooks run at cbd's SCHED_RR 1: keep them short)"},
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

#define ERRORS_SHOWN 100 /* errors reported one by one; past it only counted */

/* Where an option's value came from. */
struct origin {
    const char *where; /* file name or "command line"; NULL: not given (a default) */
    int line;          /* 0: no line */
};

/* One parse: where errors go and where each option was given. */
struct parse_ctx {
    struct cbd_config *cfg;
    const char *where;             /* file name, "command line" or "environment" */
    int line;                      /* 0: no line number */
    enum opt_section sec;          /* section of the line being parsed */
    size_t ovr;                    /* SEC_CIRCUIT: index into cfg->overrides */
    int section_line[SEC_CIRCUIT]; /* line of [daemon], [defaults], [hooks]; 0: not seen yet */
    cbd_config_report_fn *report;
    void *report_arg;
    int errors;
    struct origin given[N_OPTIONS]; /* outside [circuit] sections: where each option was set last */
    bool refused[N_OPTIONS];        /* its last value was refused: rules between options leave it out */
};

static void vreport(struct parse_ctx *px, const char *fmt, va_list ap)
{
    char msg[1024], line[1280];
    if (++px->errors > ERRORS_SHOWN || px->report == NULL)
        return; /* only counted */
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (px->line > 0)
        snprintf(line, sizeof line, "%s:%d: %s", px->where, px->line, msg);
    else
        snprintf(line, sizeof line, "%s: %s", px->where, msg);
    px->report(px->report_arg, line);
}

/* Whether the next error is shown: worth the cost of a suggestion. */
static bool next_error_shown(const struct parse_ctx *px)
{
    return px->errors < ERRORS_SHOWN && px->report != NULL;
}

static void report(struct parse_ctx *px, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct parse_ctx *px, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(px, fmt, ap);
    va_end(ap);
}

/* An error about option i, at the place that gave its value. */
static void report_at(struct parse_ctx *px, int i, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void report_at(struct parse_ctx *px, int i, const char *fmt, ...)
{
    const char *where = px->where;
    int line = px->line;
    va_list ap;
    px->where = px->given[i].where != NULL ? px->given[i].where : "configuration";
    px->line = px->given[i].line;
    va_start(ap, fmt);
    vreport(px, fmt, ap);
    va_end(ap);
    px->where = where;
    px->line = line;
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

/* An option of any section named s[0..len): index, or -1. */
static int find_option(const char *s, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (same_name(s, len, options[i].name))
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

/* The names a policy option's value may be written with (policy_names.h), or NULL. */
static const struct cb_value_name *value_names(const struct option_def *o)
{
    return o->section == SEC_DEFAULTS ? cb__policy_value_names(o->name) : NULL;
}

/* What the option accepts, for "(expected ...)" and the docs. */
static void expected(const struct option_def *o, char *buf, size_t size)
{
    char names[128];
    switch (o->type) {
    case OPT_UINT:
        snprintf(buf, size, "%s%llu..%llu%s%s%s", o->pow2 ? "a power of two " : "an integer ",
                 (unsigned long long)o->min, (unsigned long long)o->max, value_names(o) ? ", or " : "",
                 cb__policy_value_list(value_names(o), names, sizeof names), value_names(o) ? " (any case)" : "");
        break;
    case OPT_MODE:
        snprintf(buf, size, "an octal mode %04llo..%04llo, such as 0660", (unsigned long long)o->min,
                 (unsigned long long)o->max);
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

/* Why v is no value of the integer option o (exp: what o accepts), or
 * NULL with the value in *out. Digits only: no sign, no unit (the unit is
 * in the option's name), no base prefix; an OPT_MODE is octal. */
static const char *number_error(const struct option_def *o, const char *v, const char *exp, uint64_t *out,
                                char *why, size_t size)
{
    int octal = o->type == OPT_MODE;
    size_t digits = strspn(v, octal ? "01234567" : "0123456789");
    uint64_t n = 0;
    if (v[0] == '-' && isdigit((unsigned char)v[1]))
        snprintf(why, size, "%.64s is negative (expected %s)", v, exp);
    else if (octal && isdigit((unsigned char)v[digits]))
        snprintf(why, size, "'%.64s' is not an octal mode: %c is not an octal digit (expected %s)", v, v[digits],
                 exp);
    else if (octal && (digits == 0 || v[digits] != '\0'))
        snprintf(why, size, "'%.64s' is not an octal mode (expected %s)", v, exp);
    else if (digits == 0)
        snprintf(why, size, "'%.64s' is not a number (expected %s)", v, exp);
    else if (v[digits] != '\0')
        snprintf(why, size, "'%.64s' has '%.32s' after the number (expected %s)", v, v + digits, exp);
    else {
        for (size_t i = 0; i < digits; i++) /* saturates: anything past 64 bits is out of range all the same */
            n = n > (UINT64_MAX - 9) / 10 ? UINT64_MAX : n * (octal ? 8 : 10) + (uint64_t)(v[i] - '0');
        if (n < o->min || n > o->max)
            snprintf(why, size, "%.64s is out of range (expected %s)", v, exp);
        else if (o->pow2 && (n & (n - 1)) != 0)
            snprintf(why, size, "%.64s is not a power of two (expected %s)", v, exp);
        else {
            *out = n;
            return NULL;
        }
    }
    return why;
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
    if (v[0] == '\0') {
        snprintf(why, whysize, "no value (expected %s)", exp);
        return why;
    }
    if (o->type == OPT_ENUM) {
        for (uint32_t i = 0; o->choices[i] != NULL; i++) {
            if (strcmp(v, o->choices[i]) == 0) {
                *(uint32_t *)field = i;
                return NULL;
            }
        }
        snprintf(why, whysize, "'%.64s' is not a known value (expected %s)", v, exp);
        return why;
    }
    uint32_t named;
    if (!isdigit((unsigned char)v[0]) && cb__policy_value_parse(value_names(o), v, &named) == 0) {
        *(uint32_t *)field = named;
        return NULL;
    }
    if (value_names(o) != NULL && !isdigit((unsigned char)v[0]) && v[0] != '-') {
        snprintf(why, whysize, "'%.64s' is not a number or a name of one (expected %s)", v, exp);
        return why;
    }
    if (number_error(o, v, exp, &n, why, whysize) != NULL)
        return why;
    *(uint32_t *)field = (uint32_t)n;
    return NULL;
}

/* Sets option i from user input, reporting a failure in context. */
static void apply(struct parse_ctx *px, int i, const char *value)
{
    char why[512];
    const struct option_def *o = &options[i];
    int in_section = px->sec == SEC_CIRCUIT;
    if (set_value(o, field_of(px, o), value, why, sizeof why) != NULL) {
        report(px, "option '%s': %s", o->name, why);
        px->refused[i] |= !in_section;
        return;
    }
    if (in_section && o->per_circuit) { /* bit i: cb__policy_fields[i].name given */
        size_t field = (o->offset - offsetof(struct cbd_config, defaults)) / sizeof(uint32_t);
        px->cfg->overrides[px->ovr].set |= 1u << field;
    } else if (!in_section) {
        px->given[i] = (struct origin){.where = px->where, .line = px->line};
        px->refused[i] = false;
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

/* ---- the file ------------------------------------------------------------- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s without its leading and trailing blanks (cut in place). */
static char *trim(char *s)
{
    while (is_blank(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_blank(s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Edits (insertions, deletions, substitutions) that turn a into b, '-'
 * matching '_' as in option names, or limit + 1 once it is surely more
 * than limit; b is shorter than 64 bytes. */
static size_t edit_distance(const char *a, const char *b, size_t limit)
{
    size_t lb = strlen(b), row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; a[i - 1] != '\0'; i++) {
        size_t diag = row[0], row_min;
        row_min = row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j], same = a[i - 1] == b[j - 1] || (a[i - 1] == '-' && b[j - 1] == '_');
            size_t best = diag + !same;
            best = up + 1 < best ? up + 1 : best;
            row[j] = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
            row_min = row[j] < row_min ? row[j] : row_min;
            diag = up;
        }
        if (row_min > limit) /* no later row goes below this one's minimum */
            return limit + 1;
    }
    return row[lb];
}

/* The one of names[0..n) that word is a likely typo of (1 edit, 2 for
 * names of 6 bytes or more), or NULL. A name whose length differs by more
 * than that cannot be one. */
static const char *closest(const char *word, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t best_edits = SIZE_MAX, len = strlen(word);
    for (size_t i = 0; i < n; i++) {
        size_t other = strlen(names[i]), limit = other >= 6 ? 2 : 1;
        size_t edits = other < 64 && other + limit >= len && len + limit >= other
                           ? edit_distance(word, names[i], limit)
                           : SIZE_MAX;
        if (edits <= limit && edits < best_edits) {
            best = names[i];
            best_edits = edits;
        }
    }
    return best;
}

/* The override for [circuit "name"] / [prefix "name"], made on first sight
 * at line: 0 (new), 1 (seen before: *out is the first one), or -ENOMEM. */
static int override_index(struct cbd_config *cfg, const char *name, int prefix, int line, size_t *out)
{
    for (size_t i = 0; i < cfg->noverrides; i++) {
        if (cfg->overrides[i].prefix == prefix && strcmp(cfg->overrides[i].name, name) == 0) {
            *out = i;
            return 1;
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
    p[cfg->noverrides].line = line;
    *out = cfg->noverrides++;
    return 0;
}

/* [circuit "NAME"] or [prefix "PFX"] (text: what the brackets hold): 0;
 * -EEXIST when given before, -EINVAL when malformed (why says both);
 * -ENOENT when it is neither. */
static int circuit_section(struct parse_ctx *px, const char *text, char *why, size_t whysize)
{
    int prefix = strncmp(text, "prefix", 6) == 0 && is_blank(text[6]);
    if (!prefix && !(strncmp(text, "circuit", 7) == 0 && is_blank(text[7])))
        return -ENOENT;
    const char *q = text + (prefix ? 6 : 7);
    while (is_blank(*q))
        q++;
    size_t len = strlen(q);
    char name[CB_NAME_MAX + 1];
    if (len < 2 || q[0] != '"' || q[len - 1] != '"' || len - 2 > CB_NAME_MAX) {
        snprintf(why, whysize, "expected [%s \"%s\"] with the %s in double quotes, at most %u bytes",
                 prefix ? "prefix" : "circuit", prefix ? "PREFIX" : "NAME", prefix ? "prefix" : "name", CB_NAME_MAX);
        return -EINVAL;
    }
    snprintf(name, sizeof name, "%.*s", (int)(len - 2), q + 1);
    if (cb__name_check(name) < 0) {
        snprintf(why, whysize, "%s is not a valid circuit %s (expected 1..%u bytes of UTF-8)", CB_NAME_SHOW(name),
                 prefix ? "name prefix" : "name", CB_NAME_MAX);
        return -EINVAL;
    }
    int rc = override_index(px->cfg, name, prefix, px->line, &px->ovr);
    if (rc < 0) {
        snprintf(why, whysize, "out of memory");
        return -EINVAL;
    }
    if (rc > 0) {
        snprintf(why, whysize, "given twice (first at line %d; expected each section once: merge them)",
                 px->cfg->overrides[px->ovr].line);
        return -EEXIST;
    }
    return 0;
}

/* "unknown section (did you mean [daemon]? expected ...)" for text. */
static void unknown_section(const char *text, char *why, size_t size)
{
    static const char *const headers[] = {"daemon", "defaults", "hooks", "circuit", "prefix"};
    char word[64];
    size_t len = strcspn(text, " \t");
    snprintf(word, sizeof word, "%.*s", (int)(len < sizeof word ? len : sizeof word - 1), text);
    const char *near = len < sizeof word ? closest(word, headers, sizeof headers / sizeof headers[0]) : NULL;
    size_t n = (size_t)snprintf(why, size, "unknown section (");
    if (near != NULL && n < size)
        n += (size_t)snprintf(why + n, size - n, "did you mean [%s%.140s]? ", near, text + len);
    if (n < size)
        snprintf(why + n, size - n, "expected [daemon], [defaults], [hooks], [circuit \"NAME\"] or "
                                    "[prefix \"PREFIX\"])");
}

/* A header line libinih took (start: its '[', so a ']' follows): sets
 * px->sec for the lines below. libinih ignores what follows the ']' and
 * keeps the blanks inside the brackets; cbd refuses the one and drops the
 * other. */
static void on_section(struct parse_ctx *px, char *start)
{
    char why[512] = "";
    char *end = strchr(start, ']');
    px->sec = SEC_BAD; /* unless it is fine: its options are skipped, one error is enough */
    *end = '\0';
    char *text = trim(start + 1), *after = end + 1;
    while (is_blank(*after))
        after++;
    if (*after != '\0' && *after != ';' && *after != '#') {
        report(px, "section [%.140s]: '%.64s' after ']' (expected nothing, or a ';' comment)", text, after);
        return;
    }
    for (int s = SEC_DAEMON; s <= SEC_HOOKS; s++) {
        if (strcmp(text, section_names[s]) == 0) {
            px->sec = (enum opt_section)s;
            if (px->section_line[s] != 0)
                report(px, "section [%s]: given twice (first at line %d; expected each section once: merge them)",
                       text, px->section_line[s]);
            else
                px->section_line[s] = px->line;
            return;
        }
    }
    int rc = circuit_section(px, text, why, sizeof why);
    if (rc == 0 || rc == -EEXIST)
        px->sec = SEC_CIRCUIT; /* a repeated one is still read: its lines get their own errors */
    if (rc == -ENOENT && next_error_shown(px))
        unknown_section(text, why, sizeof why);
    if (rc != 0)
        report(px, "section [%.140s]: %s", text, why);
}

/* "[daemon]", or the header of the [circuit]/[prefix] being read. */
static void section_title(const struct parse_ctx *px, char *buf, size_t size)
{
    if (px->sec != SEC_CIRCUIT) {
        snprintf(buf, size, "[%s]", section_names[px->sec]);
        return;
    }
    const struct cbd_override *o = &px->cfg->overrides[px->ovr];
    snprintf(buf, size, "[%s \"%s\"]", o->prefix ? "prefix" : "circuit", o->name);
}

/* An option this section does not have: elsewhere, or a typo? */
static void misplaced(struct parse_ctx *px, const char *name)
{
    const char *names[N_OPTIONS];
    char title[CB_NAME_MAX + 16];
    size_t n = 0;
    int k = find_option(name, strlen(name));
    if (k >= 0) {
        const struct option_def *o = &options[k];
        if (o->section == SEC_CIRCUIT || o->per_circuit)
            report(px, "option '%s': belongs in section %s[circuit \"NAME\"] or [prefix \"PREFIX\"]", name,
                   o->per_circuit ? "[defaults], " : "");
        else
            report(px, "option '%s': belongs in section [%s]", name, section_names[o->section]);
        return;
    }
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].section == px->sec || (px->sec == SEC_CIRCUIT && options[i].per_circuit))
            names[n++] = options[i].name;
    }
    const char *near = next_error_shown(px) ? closest(name, names, n) : NULL;
    section_title(px, title, sizeof title);
    report(px, "option '%.64s': unknown in section %s (%s%s%ssee cbd --help-config)", name, title,
           near ? "did you mean '" : "", near ? near : "", near ? "'? " : "");
}

/* A "name = value" line, in section px->sec. */
static void on_assignment(struct parse_ctx *px, const char *name, const char *value)
{
    if (px->sec == SEC_BAD)
        return; /* its header was reported */
    if (px->sec == SEC_NONE) {
        report(px, "option '%.64s': comes before any section (expected a [section] line above it)", name);
        return;
    }
    int i = find_in_section(px->sec, name);
    if (i >= 0)
        apply(px, i, value); /* and keep going: every error is reported */
    else
        misplaced(px, name);
}

/* Debian's libinih takes its line limit at run time (ini.h: ini_max_line
 * and the heap buffer options); the library's default is 199 bytes, too
 * short for a long store URI or hook command. Process-wide, and harmless
 * to the library's other user here (the AWS shared config files). */
static void libinih_limits(void)
{
    ini_use_stack = false;
    ini_allow_realloc = true;
    ini_initial_alloc = CBD_CONFIG_LINE_MAX + 1;
    ini_max_line = CBD_CONFIG_LINE_MAX + 1;
}

/* One line of the file, as one ini_parse_stream reads it. */
struct ini_line {
    struct parse_ctx *px;
    const char *text; /* the line, without its end */
    size_t len;
    size_t handed;    /* bytes of it libinih got: those before its fault */
    char fault[160];  /* what is wrong with its bytes, or "" */
    bool read;        /* read_line handed it out */
    bool named;       /* libinih called on_name_value for it */
};

/* Index of the first control byte (any but tab) of s[0..n), or n. */
static size_t control_byte(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && ((unsigned char)s[i] >= 0x20 || s[i] == '\t') && s[i] != 0x7f)
        i++;
    return i;
}

/* libinih's reader: the line once, then the end of the stream. libinih
 * gets the bytes before its first control byte, and at most num - 1 (its
 * buffer holds num with the NUL), so a long line is never split; a fault
 * is recorded to be the line's one error. */
static char *read_line(char *str, int num, void *stream)
{
    struct ini_line *l = stream;
    if (l->read || num < 1)
        return NULL;
    size_t room = (size_t)num - 1 < CBD_CONFIG_LINE_MAX ? (size_t)num - 1 : CBD_CONFIG_LINE_MAX;
    size_t bad = control_byte(l->text, l->len);
    unsigned char c = bad < l->len ? (unsigned char)l->text[bad] : 0;
    l->read = true;
    if (l->len > room)
        snprintf(l->fault, sizeof l->fault, "line is %zu bytes (expected at most %zu; for a longer hook, run a "
                 "script; give a longer value on the command line)", l->len, room);
    else if (bad < l->len)
        snprintf(l->fault, sizeof l->fault, "control byte 0x%02x%s at column %zu (expected text: tab is the only "
                 "control character allowed)", c, c == 0 ? " (NUL)" : c == '\r' ? " (carriage return)" : "", bad + 1);
    l->handed = bad < room ? bad : room;
    memcpy(str, l->text, l->handed);
    str[l->handed] = '\0';
    return str;
}

/* What libinih got of the line, in buf, without its leading and trailing blanks. */
static char *line_text(const struct ini_line *l, char buf[CBD_CONFIG_LINE_MAX + 1])
{
    memcpy(buf, l->text, l->handed);
    buf[l->handed] = '\0';
    return trim(buf);
}

/* libinih's handler, for a line it split into name and value (both
 * trimmed). Its errors are reported here and it returns 1, so a refusal
 * from ini_parse_stream is one of libinih's own syntax errors. section is
 * always "": each line is parsed alone (px->sec holds the section). */
static int on_name_value(void *user, const char *section, const char *name, const char *value)
{
    struct ini_line *l = user;
    char text[CBD_CONFIG_LINE_MAX + 1];
    (void)section;
    l->named = true;
    if (l->fault[0] != '\0' && name[0] != '\0')
        report(l->px, "option '%.64s': %s", name, l->fault);
    else if (l->fault[0] != '\0')
        report(l->px, "%s", l->fault);
    else if (name[0] == '\0')
        report(l->px, "'%.64s' has no option name (expected 'name = value')", line_text(l, text));
    else
        on_assignment(l->px, name, value);
    return 1;
}

/* A line libinih refused (start: its first non-blank byte): a header
 * without ']' (a ' ;' inside starts a comment), or no '=' nor ':'. */
static void syntax_error(struct parse_ctx *px, const char *start)
{
    size_t word = strcspn(start, " \t");
    if (start[0] == '[') {
        px->sec = SEC_BAD; /* its options are skipped: one error is enough */
        report(px, "section header '%.64s' has no ']'%s (expected [daemon], [defaults], [hooks], [circuit \"NAME\"] "
                   "or [prefix \"PREFIX\"])", start, strchr(start, ']') ? " before ' ;', which starts a comment" : "");
    } else if (find_option(start, word) >= 0) {
        report(px, "option '%.*s': no '=' after the name (expected '%.*s = VALUE')", (int)word, start, (int)word,
               start);
    } else {
        report(px, "'%.64s' has no '=' (expected 'name = value', a [section] or a ';' comment)", start);
    }
}

/* Line px->line, s[0..n) without its '\n', through libinih. */
static void parse_line(struct parse_ctx *px, const char *s, size_t n)
{
    char text[CBD_CONFIG_LINE_MAX + 1];
    if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) { /* a UTF-8 byte order mark, as libinih skips one */
        s += 3;
        n -= 3;
    }
    if (n > 0 && s[n - 1] == '\r')
        n--; /* CRLF line ends */
    struct ini_line l = {.px = px, .text = s, .len = n};
    libinih_limits();
    int rc = ini_parse_stream(read_line, &l, on_name_value, &l);
    if (rc < 0) {
        report(px, "out of memory reading the line");
        return;
    }
    if (l.named)
        return; /* on_name_value said what was wrong, if anything */
    char *start = line_text(&l, text);
    if (l.fault[0] != '\0') {
        report(px, "%s", l.fault);
        if (start[0] == '[')
            px->sec = SEC_BAD; /* a header with a fault: its options are skipped */
    } else if (rc > 0) {
        syntax_error(px, start);
    } else if (start[0] == '[') {
        on_section(px, start);
    } /* else a blank line or a comment */
}

/* The file's bytes, line by line; lines end with '\n'. */
static void parse_text(struct parse_ctx *px, const char *text, size_t len)
{
    px->sec = SEC_NONE;
    px->line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - (text + pos)) : len - pos;
        px->line++;
        parse_line(px, text + pos, n);
        pos += n + 1;
    }
    px->line = 0;
    px->sec = SEC_DAEMON; /* the command line names no section */
}

/* The whole file at path (at most one byte more than CBD_CONFIG_FILE_MAX,
 * so a larger one shows): 0 with *text (malloc'd) and *len, or -errno. */
static int read_file(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -errno;
    size_t cap = 4096, used = 0, n;
    char *buf = malloc(cap);
    while (buf != NULL && used <= CBD_CONFIG_FILE_MAX && (n = fread(buf + used, 1, cap - used, f)) > 0) {
        used += n;
        if (used == cap) {
            char *p = realloc(buf, cap *= 2);
            if (p == NULL)
                free(buf);
            buf = p;
        }
    }
    int err = ferror(f) ? (errno != 0 ? errno : EIO) : 0;
    fclose(f);
    if (buf == NULL)
        return -ENOMEM;
    if (err != 0) {
        free(buf);
        return -err;
    }
    *text = buf;
    *len = used;
    return 0;
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

#define TEXT_OF(n) #n
#define NUMBER_TEXT(n) TEXT_OF(n)
#define LINE_MAX_TEXT NUMBER_TEXT(CBD_CONFIG_LINE_MAX)
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
    "The file is read by libinih, one line at a time, with cbd's own checks on top.\n\n"
    "- `[section]` lines, then `name = value` lines; libinih also takes `name: value`, as Python's\n"
    "  configparser does (the first `=` or `:` ends the name). Blanks around names, values and section\n"
    "  names do not count, and an indented line is a line like any other (no continuation lines). Values\n"
    "  are taken as written, quotes included.\n"
    "- Lines starting with `;` or `#` are comments, and so is everything from ` ;` (a blank, then a\n"
    "  semicolon) on, in a value or in a section line: a hook needing ` ;` runs a script. `#` and a `;`\n"
    "  after another character are text. After a section's `]` only a comment may follow.\n"
    "- A line holds at most " LINE_MAX_TEXT " bytes, libinih's line buffer: a longer one is refused, not split\n"
    "  (a longer hook runs a script; a longer store URI goes on the command line, `--store`). No control\n"
    "  character but tab (CRLF line ends are fine, a UTF-8 byte order mark starting a line is skipped).\n"
    "  The file holds at most 1 MiB.\n"
    "- Numbers are decimal digits only: no sign and no unit (the unit is in the option's name). Modes are\n"
    "  octal, as for chmod (`0660`).\n"
    "- Each section is given once: a second `[daemon]` or `[circuit \"x\"]` is an error (merge them).\n"
    "  A repeatable option (`command`, `hook`) may be given on several lines, each one value, kept in\n"
    "  order. Other options given twice keep the last value.\n"
    "- Every error is reported, each as `FILE:LINE: option 'x': what is wrong (expected ...)` (past 100,\n"
    "  they are counted). Rules between options are checked on the values cbd would run with, with the\n"
    "  line of the value that breaks them: `stale_limit_ms` is at least 2 x `heartbeat_ms`,\n"
    "  `admin_reserved_connections` is below `max_connections`. The store's backend checks its URI as it\n"
    "  would at the start. `--check-config`, the start and a reload run the same checks: a file that\n"
    "  passes the check is one cbd takes.\n\n"
    "## Which policy a circuit gets\n\n"
    "Each policy field comes from the first of: an operator's `cbctl set NAME FIELD=VALUE` (kept across\n"
    "reloads until the daemon stops), the circuit's section in this file, the\n"
    "config the worker registered the circuit with (`cb_circuit_get`), `[defaults]`. The circuit's section\n"
    "is `[circuit \"NAME\"]` of exactly its name, else the `[prefix \"PREFIX\"]` with the longest prefix of\n"
    "its name; one section applies, and it decides only the fields it names. The daemon remembers what each\n"
    "worker asked for, so a reload recomputes every circuit's policy from the new file. The store keeps\n"
    "what the worker asked for (with `[defaults]` filled in), so after a restart that counts as the\n"
    "worker's registration.\n\n"
    "## Rules beyond Powertools\n\n"
    "With the defaults a circuit follows Powertools: `failure_threshold` consecutive failures trip it,\n"
    "`success_threshold` consecutive probe successes close it. Each rule below is opt-in per circuit and\n"
    "judged host-wide, over every worker's calls:\n\n"
    "- **Rates over a window** (`sliding_window_type` 1: the last `sliding_window_size` calls; 2: the last\n"
    "  `sliding_window_size` seconds, one bucket per second up to 256 s, wider buckets beyond). Once the window\n"
    "  holds `minimum_number_of_calls` (a count window: at most its size), the circuit trips when failed calls\n"
    "  reach `failure_rate_threshold` percent, or slow calls reach `slow_call_rate_threshold` percent (judged\n"
    "  apart, as resilience4j does). IGNORED outcomes are in no window. `failure_threshold` no longer applies.\n"
    "  HALF_OPEN then waits for `permitted_number_of_calls_in_half_open_state` probe results (still at most\n"
    "  `half_open_max_probes` at once, on this host and across the fleet) and closes unless their rates reach\n"
    "  a threshold. Windows live in the daemon's memory (a count window 1 byte per call, a time window at most\n"
    "  8 KiB), start empty after a daemon restart and after every transition, and keep their calls across a\n"
    "  reload or `cbctl set` (a smaller count window keeps the newest calls; a change of type starts empty).\n"
    "- **Slow calls** (`slow_call_duration_threshold_ms` > 0, with a window): a call that took longer is slow.\n"
    "  `cb_call` times calls only for circuits with this rule; a caller of `cb_record` passes the duration\n"
    "  with `cb_record_latency`.\n"
    "- **Backoff** (`open_backoff_multiplier_pct` > 100): each reopening without a stable close (a failed\n"
    "  probe, or a trip less than `open_backoff_reset_ms` after the last close) waits a draw uniformly\n"
    "  between `recovery_timeout_ms` and `recovery_timeout_ms` x multiplier^n, capped at `open_backoff_max_ms`,\n"
    "  so hosts do not probe in step. The end shown by `cbctl show`, kept in the record and written to the\n"
    "  store is the drawn one: an opening from a fleet store waits until the later of `recovery_timeout_ms`\n"
    "  and the deadline the opening host wrote with it (Powertools functions wait their own timeout).\n"
    "- **Shadow** (`shadow` 1): transitions happen, are logged, reach hooks, subscribers and the history, but\n"
    "  a call the state would reject is let through uncounted; probes still run. Forced open still rejects;\n"
    "  disabled still bypasses. The local state file keeps it with `shadow` in its config. A fleet store\n"
    "  (Redis, DynamoDB) gets a shadow circuit's transitions marked as shadow: the item's shadow marker\n"
    "  (its state, since when, the writing host), written beside the real state and never over it, so other\n"
    "  hosts and Powertools functions never obey a trial; `cbctl show` on any host prints the marker as\n"
    "  `fleet shadow:` (docs/fleet.md, \"Shadow markers\"). A trial probes on its own host, never through\n"
    "  the fleet's election; turning `shadow` off makes a trial's OPEN or HALF_OPEN a real opening the fleet\n"
    "  is told of (HALF_OPEN -> OPEN, source operator), turning it on gives back a probe lease the host held.\n\n"
    "The names follow resilience4j's `CircuitBreakerConfig` where the meaning is the same:\n\n"
    "| resilience4j | cbd | note |\n"
    "|---|---|---|\n"
    "| `slidingWindowType` | `sliding_window_type` | `COUNT_BASED` (1), `TIME_BASED` (2), or `CONSECUTIVE` (0, "
    "Powertools' streak): the names or the numbers, in any case, in the file and in `cbctl set` |\n"
    "| `slidingWindowSize` | `sliding_window_size` | calls, or seconds |\n"
    "| `minimumNumberOfCalls` | `minimum_number_of_calls` | |\n"
    "| `failureRateThreshold` | `failure_rate_threshold` | whole percent; reached at `>=` |\n"
    "| `slowCallDurationThreshold` | `slow_call_duration_threshold_ms` | 0 (the default) turns the rule off |\n"
    "| `slowCallRateThreshold` | `slow_call_rate_threshold` | whole percent |\n"
    "| `waitDurationInOpenState` | `recovery_timeout_ms` | Powertools' name |\n"
    "| `permittedNumberOfCallsInHalfOpenState` | `permitted_number_of_calls_in_half_open_state` | with a window; "
    "`half_open_max_probes` bounds how many run at once |\n"
    "| `waitIntervalFunctionInOpenState` (exponential random backoff) | `open_backoff_multiplier_pct`, "
    "`open_backoff_max_ms` | the multiplier in percent |\n"
    "| `transitionToMetricsOnlyState()` | `shadow` | per circuit, from the configuration |\n\n"
    "For example, a circuit that trips when half of the last 100 calls fail or a fifth of them take\n"
    "over two seconds, with backoff, tried first in shadow:\n\n"
    "```ini\n"
    "[circuit \"payments\"]\n"
    "sliding_window_type = 1\n"
    "sliding_window_size = 100\n"
    "minimum_number_of_calls = 20\n"
    "failure_rate_threshold = 50\n"
    "slow_call_duration_threshold_ms = 2000\n"
    "slow_call_rate_threshold = 20\n"
    "open_backoff_multiplier_pct = 200\n"
    "open_backoff_max_ms = 600000\n"
    "shadow = 1\n"
    "```\n\n"
    "and, once the trial looks right, `cbctl set payments shadow=0` (then the same in the file).\n\n"
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
    "`CB_ORIGIN` (`local` when the transition started on this host, `fleet` when it came through the\n"
    "store from another host or a Powertools function: a hook that acts once per fleet checks it),\n"
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
        ("## [defaults]\n\nThe policy of every circuit, under what workers and per-circuit sections say. Each\n"
         "option here may also be given in `[circuit \"NAME\"]` and `[prefix \"PREFIX\"]`.\n\n"),
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
static void derive(struct parse_ctx *px)
{
    struct cbd_config *cfg = px->cfg;
    const char *env = getenv("CB_INSTANCE");
    int instance = find_cli("instance", 8);
    unsigned gid;
    px->where = "environment";
    if (px->given[instance].where == NULL && env != NULL && env[0] != '\0') {
        char why[256];
        if (set_value(&options[instance], cfg->instance, env, why, sizeof why) != NULL)
            report(px, "CB_INSTANCE: %s", why);
    }
    if (px->given[find_cli("socket", 6)].where == NULL)
        snprintf(cfg->socket, sizeof cfg->socket, "/run/cbd/%s.sock", cfg->instance);
    if (px->given[find_cli("admin_group", 11)].where == NULL)
        snprintf(cfg->admin_group, sizeof cfg->admin_group, "%s",
                 cbd_config_gid("cbd-admin", &gid) == 0 ? "cbd-admin" : "");
    if (px->given[find_cli("store", 5)].where == NULL) {
        char dir[CBD_STORE_URI_MAX] = "/var/lib/cbd";
        const char *sd = getenv("STATE_DIRECTORY"); /* systemd: colon-separated, first is ours */
        if (sd != NULL && sd[0] == '/')
            snprintf(dir, sizeof dir, "%.*s", (int)strcspn(sd, ":"), sd);
        if (snprintf(cfg->store, sizeof cfg->store, "local:%s/%s.state", dir, cfg->instance) >=
            (int)sizeof cfg->store)
            report(px, "STATE_DIRECTORY: path too long for the store URI (at most %d bytes)",
                   CBD_STORE_URI_MAX - 64);
    }
    px->where = "command line";
}

/* Rules between options, judged on the values the daemon would run with,
 * each reported where the value that breaks it was given. An option whose
 * own value was refused is left out: its error is reported already. */
static void check_rules(struct parse_ctx *px)
{
    const struct cbd_config *cfg = px->cfg;
    int heartbeat = find_cli("heartbeat_ms", 12), stale = find_cli("stale_limit_ms", 14);
    int max_conn = find_cli("max_connections", 15), reserved = find_cli("admin_reserved_connections", 26);
    const char *field;
    if (cb__config_check(&cfg->defaults, &field) < 0) { /* field: "name (bounds)" */
        size_t len = strcspn(field, " ");
        int i = find_cli(field, len);
        if (i >= 0)
            report_at(px, i, "option '%.*s': out of range (expected %s)", (int)len, field, field + len + 1);
        else
            report(px, "circuit defaults: %s out of range", field);
    }
    if (!px->refused[heartbeat] && !px->refused[stale] && cfg->stale_limit_ms < 2 * cfg->heartbeat_ms) {
        if (px->given[stale].where != NULL)
            report_at(px, stale, "option 'stale_limit_ms': %u is below 2 x heartbeat_ms (%u) (expected at least %u, "
                                 "or a shorter heartbeat_ms)", cfg->stale_limit_ms, cfg->heartbeat_ms,
                      2 * cfg->heartbeat_ms);
        else
            report_at(px, heartbeat, "option 'heartbeat_ms': %u is more than half of stale_limit_ms (%u) (expected "
                                     "at most %u, or a longer stale_limit_ms)", cfg->heartbeat_ms,
                      cfg->stale_limit_ms, cfg->stale_limit_ms / 2);
    }
    if (!px->refused[max_conn] && !px->refused[reserved] &&
        cfg->admin_reserved_connections >= cfg->max_connections) /* the table's bounds: only if reserved was given */
        report_at(px, reserved, "option 'admin_reserved_connections': %u leaves none of max_connections (%u) to "
                                "other users (expected at most %u)", cfg->admin_reserved_connections,
                  cfg->max_connections, cfg->max_connections - 1);
    /* max_circuits_per_uid above capacity is fine: the quota is then the capacity. */
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

int cbd_config_load(struct cbd_config *cfg, const char *name, const char *text, size_t len, int argc, char **argv,
                    cbd_config_report_fn *report_fn, void *arg)
{
    struct parse_ctx px = {.cfg = cfg, .where = "command line", .sec = SEC_DAEMON, .report = report_fn,
                           .report_arg = arg};
    set_defaults(cfg);
    if (name != NULL) {
        snprintf(cfg->file, sizeof cfg->file, "%s", name);
        px.where = name;
        if (len > CBD_CONFIG_FILE_MAX)
            report(&px, "the file is larger than %d bytes (expected a configuration file)", CBD_CONFIG_FILE_MAX);
        else
            parse_text(&px, text, len);
        px.where = "command line";
    }
    scan_options(&px, argc, argv);
    derive(&px);
    check_rules(&px);
    cfg->argc = argc;
    cfg->argv = argv;
    if (px.errors > ERRORS_SHOWN && report_fn != NULL) {
        char line[CBD_PATH_MAX + 64];
        snprintf(line, sizeof line, "%s: %d more errors not shown", name ? name : "configuration",
                 px.errors - ERRORS_SHOWN);
        report_fn(arg, line);
    }
    if (px.errors > 0)
        cbd_config_free(cfg);
    return px.errors;
}

/* cbd_config_load with the file (NULL: none) read from disk. */
static int load_sources(struct cbd_config *cfg, const char *file, int argc, char **argv,
                        cbd_config_report_fn *report_fn, void *arg)
{
    char *text = NULL;
    size_t len = 0;
    int rc = file != NULL ? read_file(file, &text, &len) : 0;
    if (rc < 0) {
        char line[CBD_PATH_MAX + 128];
        snprintf(line, sizeof line, "%s: cannot read the configuration file: %s", file, strerror(-rc));
        report_fn(arg, line);
    }
    int errors = cbd_config_load(cfg, rc < 0 ? NULL : file, text, len, argc, argv, report_fn, arg);
    free(text);
    if (rc < 0 && errors++ == 0)
        cbd_config_free(cfg);
    return errors;
}

static void print_error(void *arg, const char *error)
{
    (void)arg;
    fprintf(stderr, "%s\n", error);
}

enum cbd_config_action cbd_config_parse_args(struct cbd_config *cfg, int argc, char **argv)
{
    struct parse_ctx px = {.cfg = cfg, .where = "command line", .report = print_error};
    int check_only = 0, action = CBD_CONFIG_RUN;
    memset(cfg, 0, sizeof *cfg);
    const char *file = scan_meta(&px, argc, argv, &check_only, &action);
    if (px.errors > 0)
        return CBD_CONFIG_EXIT_USAGE;
    if (action == CBD_CONFIG_EXIT_OK)
        return CBD_CONFIG_EXIT_OK;
    if (load_sources(cfg, file, argc, argv, print_error, NULL) > 0)
        return CBD_CONFIG_EXIT_USAGE;
    if (check_only) {
        cbd_config_free(cfg);
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

/* A reload's errors: each to the log, the first few into the reply. */
struct reload_errors {
    char *buf;
    size_t size;
    int n;
};

static void log_error(void *arg, const char *error)
{
    struct reload_errors *e = arg;
    cbd_log(CBD_LOG_ERROR, "%s", error);
    if (e->n++ < 3) {
        size_t used = strlen(e->buf);
        snprintf(e->buf + used, e->size - used, "%s%s", used ? "; " : "", error);
    }
}

int cbd_config_reload(const struct cbd_config *running, struct cbd_config *next, char *err, size_t errsize)
{
    struct cbd_config tmp;
    struct reload_errors e = {.buf = err, .size = errsize};
    err[0] = '\0';
    if (load_sources(&tmp, running->file[0] ? running->file : NULL, running->argc, running->argv, log_error, &e) > 0)
        return -EINVAL;
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
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (sect_mask & (1u << i))
            *cb__config_field(out, i) = *cb__config_field(&sect, i);
        else if (asked_mask & (1u << i))
            *cb__config_field(out, i) = *cb__config_field(&want, i);
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
