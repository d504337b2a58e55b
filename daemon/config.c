/*
 * config.c - the option table and everything derived from it.
 *
 * Design (Redis' config.c in miniature): every option is one row of
 * `options[]` - name, section, type, where it lives in struct cbd_config,
 * default, bounds, whether a reload may change it, and a help line. The
 * command line (`--name=value`, `--name value`, dashes for underscores), the
 * INI file (`-c FILE`, sections [daemon] and [defaults], parsed by libinih)
 * and `--help` all walk the same rows, so an option cannot exist in one
 * place and be missing in another. Defaults are written as text and go
 * through the same parser as user input, so a default can never be out of
 * its own bounds.
 *
 * Precedence, lowest first: built-in defaults, the environment
 * ($CB_INSTANCE picks the instance; $STATE_DIRECTORY, set by systemd's
 * StateDirectory=, moves the default state file), the file, the command line.
 * The socket and store defaults are derived from the instance once
 * everything else is known.
 *
 * Errors do not stop parsing: every bad line is reported, each as
 * "FILE:LINE: option 'x': <what is wrong> (expected ...)", so an operator
 * fixes a file in one pass. libinih gives its handler no line number, so the
 * reader callback counts lines itself.
 *
 * The circuit defaults are checked twice: against the table's bounds while
 * parsing (precise messages with line numbers) and by cb__config_check at the
 * end, which stays the single authority if the two ever disagree.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "store.h"

enum opt_type { OPT_UINT, OPT_MODE, OPT_STR, OPT_ENUM };

struct option_def {
    const char *name;
    const char *section;          /* "daemon" or "defaults" */
    enum opt_type type;
    size_t offset;                /* into struct cbd_config */
    size_t size;                  /* OPT_STR: buffer size */
    const char *def;              /* default as text; NULL: derived in finish() */
    uint64_t min, max;            /* OPT_UINT */
    int pow2;                     /* OPT_UINT: must be a power of two */
    const char *const *choices;   /* OPT_ENUM: NULL-terminated; the value is the index */
    const char *(*check)(const char *value, char *why, size_t size); /* OPT_STR */
    int reloadable;               /* a reload may change it without a restart */
    const char *help;
};

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

#define D(f) offsetof(struct cbd_config, f)
#define C(f) (offsetof(struct cbd_config, defaults) + offsetof(cb_config, f))
static const struct option_def options[] = {
    {"instance", "daemon", OPT_STR, D(instance), CB_INSTANCE_MAX + 1, NULL, 0, 0, 0, NULL, check_instance, 0,
     "instance name: names the segment /cbd.NAME (default $CB_INSTANCE, else \"default\"; [A-Za-z0-9_-]{1,32})"},
    {"socket", "daemon", OPT_STR, D(socket), CB_SOCKET_PATH_MAX, NULL, 0, 0, 0, NULL, check_socket, 0,
     "control socket path (default /run/cbd/INSTANCE.sock; absolute, at most 107 bytes)"},
    {"socket_mode", "daemon", OPT_MODE, D(socket_mode), 0, "0660", 0, 0777, 0, NULL, NULL, 0,
     "permissions of the control socket (octal)"},
    {"store", "daemon", OPT_STR, D(store), CBD_STORE_URI_MAX, NULL, 0, 0, 0, NULL, check_store, 0,
     "where circuits persist (default local:$STATE_DIRECTORY or /var/lib/cbd, + /INSTANCE.state)"},
    {"capacity", "daemon", OPT_UINT, D(capacity), 0, "65536", 1, 16777216, 0, NULL, NULL, 0,
     "circuits the segment holds (272 bytes each, paid only when used)"},
    {"lanes", "daemon", OPT_UINT, D(lanes), 0, "256", 1, 65536, 0, NULL, NULL, 0,
     "outcome lanes: worker threads that can report at once"},
    {"lane_capacity", "daemon", OPT_UINT, D(lane_capacity), 0, "1024", 16, 1048576, 1, NULL, NULL, 0,
     "events per lane before a worker drops (power of two)"},
    {"history_capacity", "daemon", OPT_UINT, D(history_capacity), 0, "4096", 16, 1048576, 1, NULL, NULL, 0,
     "transitions kept in the history ring (power of two)"},
    {"heartbeat_ms", "daemon", OPT_UINT, D(heartbeat_ms), 0, "100", 10, 10000, 0, NULL, NULL, 0,
     "how often the daemon proves it is alive in the segment"},
    {"stale_limit_ms", "daemon", OPT_UINT, D(stale_limit_ms), 0, "3000", 100, 3600000, 0, NULL, NULL, 0,
     "heartbeat age after which workers apply stale_policy (at least 2 x heartbeat_ms)"},
    {"stale_policy", "daemon", OPT_ENUM, D(stale_policy), 0, "fail-open", 0, 0, 0, stale_choices, NULL, 0,
     "what workers do with non-CLOSED circuits while the daemon is stale"},
    {"drain_interval_ms", "daemon", OPT_UINT, D(drain_interval_ms), 0, "10", 1, 1000, 0, NULL, NULL, 1,
     "lanes are drained at least this often (failures also wake the daemon at once)"},
    {"reclaim_interval_ms", "daemon", OPT_UINT, D(reclaim_interval_ms), 0, "1000", 10, 60000, 0, NULL, NULL, 1,
     "how often lanes of exited threads and dead processes are reclaimed"},
    {"log_level", "daemon", OPT_ENUM, D(log_level), 0, "info", 0, 0, 0, level_choices, NULL, 1,
     "lowest level logged to stderr"},
    {"failure_threshold", "defaults", OPT_UINT, C(failure_threshold), 0, "5", 1, 1000000, 0, NULL, NULL, 1,
     "consecutive counted failures that trip a circuit"},
    {"success_threshold", "defaults", OPT_UINT, C(success_threshold), 0, "3", 1, 1000000, 0, NULL, NULL, 1,
     "consecutive probe successes that close a circuit"},
    {"half_open_max_probes", "defaults", OPT_UINT, C(half_open_max_probes), 0, "1", 1, 1024, 0, NULL, NULL, 1,
     "probes admitted at once while HALF_OPEN"},
    {"recovery_timeout_ms", "defaults", OPT_UINT, C(recovery_timeout_ms), 0, "30000", 1, 604800000, 0, NULL,
     NULL, 1, "how long a circuit stays OPEN before probing"},
    {"probe_lease_ms", "defaults", OPT_UINT, C(probe_lease_ms), 0, "0", 0, 604800000, 0, NULL, NULL, 1,
     "a probe silent this long is reclaimed (0 = recovery_timeout_ms)"},
};
#undef D
#undef C
#define N_OPTIONS (sizeof options / sizeof options[0])

/* One parse: where errors go and which options were given explicitly. */
struct parse_ctx {
    struct cbd_config *cfg;
    const char *where;   /* file name, or "command line" */
    int line;            /* 0: no line number */
    FILE *file;          /* the INI file being read */
    int next_line;       /* file reader: number of the line read next */
    int errors;
    int set[N_OPTIONS];
};

static void report(struct parse_ctx *px, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(struct parse_ctx *px, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (px->line > 0)
        fprintf(stderr, "%s:%d: %s\n", px->where, px->line, msg);
    else
        fprintf(stderr, "%s: %s\n", px->where, msg);
    px->errors++;
}

/* Option by name; dashes and underscores are interchangeable. */
static int find_option(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const char *o = options[i].name;
        size_t k = 0;
        while (k < len && o[k] != '\0' && (o[k] == name[k] || (o[k] == '_' && name[k] == '-')))
            k++;
        if (k == len && o[k] == '\0')
            return (int)i;
    }
    return -1;
}

/* Describes what the option accepts, for "(expected ...)". */
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
    case OPT_STR: /* each string option's check says what it expects */
        buf[0] = '\0';
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

/* Sets option o from text: NULL if fine, else the whole complaint in why. */
static const char *set_value(struct cbd_config *cfg, const struct option_def *o, const char *v, char *why,
                             size_t whysize)
{
    char *field = (char *)cfg + o->offset;
    char exp[256];
    uint64_t n;
    if (o->type == OPT_STR) {
        if (strlen(v) >= o->size) {
            snprintf(why, whysize, "value is %zu bytes (expected at most %zu)", strlen(v), o->size - 1);
            return why;
        }
        if (o->check != NULL && o->check(v, why, whysize) != NULL)
            return why;
        memcpy(field, v, strlen(v) + 1);
        return NULL;
    }
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
    if (set_value(px->cfg, &options[i], value, why, sizeof why) != NULL) {
        report(px, "option '%s': %s", options[i].name, why);
        return;
    }
    px->set[i] = 1;
}

/* ---- the INI file -------------------------------------------------------- */

/* libinih's line reader: fgets that remembers which line it returned. */
static char *count_lines(char *str, int num, void *stream)
{
    struct parse_ctx *px = stream;
    px->line = px->next_line;
    char *r = fgets(str, num, px->file);
    if (r != NULL && strchr(r, '\n') != NULL)
        px->next_line++;
    return r;
}

static int on_ini_value(void *user, const char *section, const char *name, const char *value)
{
    struct parse_ctx *px = user;
    if (strcmp(section, "daemon") != 0 && strcmp(section, "defaults") != 0) {
        report(px, "option '%s': unknown section [%s] (expected [daemon] or [defaults])", name, section);
        return 1;
    }
    int i = find_option(name, strlen(name));
    if (i < 0)
        report(px, "option '%s': unknown option in [%s] (see cbd --help)", name, section);
    else if (strcmp(options[i].section, section) != 0)
        report(px, "option '%s': belongs in section [%s], not [%s]", options[i].name, options[i].section, section);
    else
        apply(px, i, value);
    return 1; /* keep going: every error is reported */
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
    int rc = ini_parse_stream(count_lines, px, on_ini_value, px);
    if (rc > 0) {
        px->line = rc;
        report(px, "syntax error (expected 'name = value', '[section]' or a ';' comment)");
    } else if (rc < 0) {
        px->line = 0;
        report(px, "cannot parse configuration file: out of memory");
    }
    fclose(px->file);
    px->line = 0;
    px->where = "command line";
}

/* ---- help, defaults, derived values -------------------------------------- */

/* "--lane-capacity N": the flag as typed, with a placeholder for its value. */
static void flag_text(const struct option_def *o, char *buf, size_t size)
{
    static const char *const placeholder[] = {"N", "MODE", NULL, "WORD"}; /* by enum opt_type */
    size_t n = (size_t)snprintf(buf, size, "--%s ", o->name);
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

static void print_help(void)
{
    printf("Usage: cbd [-c FILE] [--OPTION=VALUE | --OPTION VALUE]...\n"
           "       cbd --check-config FILE | --help | --version\n\n"
           "cbd owns a host's shared-memory circuit breakers; workers use libcb.\n\n"
           "  -c, --config FILE     read options from an INI file ([daemon] and [defaults] sections)\n"
           "  --check-config FILE   validate FILE (and any options given), print \"ok\", exit 0 or 2\n"
           "  -h, --help            this text\n"
           "  -V, --version         print the version\n\n"
           "Options (command line: dashes; file: underscores; * = changeable by a reload):\n");
    const char *section = "";
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct option_def *o = &options[i];
        char flag[64], exp[512];
        if (strcmp(section, o->section) != 0) {
            section = o->section;
            printf("\n [%s]%s\n", section,
                   strcmp(section, "defaults") == 0 ? " circuits registered without a config" : "");
        }
        flag_text(o, flag, sizeof flag);
        printf(" %c %-30s %s\n", o->reloadable ? '*' : ' ', flag, o->help);
        if (o->type != OPT_STR) {
            expected(o, exp, sizeof exp);
            printf("   %-30s default %s; %s\n", "", o->def, exp);
        }
    }
}

/* The instance-dependent defaults, once the instance is known. */
static void finish(struct parse_ctx *px)
{
    struct cbd_config *cfg = px->cfg;
    const char *env = getenv("CB_INSTANCE");
    int instance = find_option("instance", 8);
    px->where = "environment";
    if (!px->set[instance] && env != NULL && env[0] != '\0') {
        char why[256];
        if (set_value(cfg, &options[instance], env, why, sizeof why) != NULL)
            report(px, "CB_INSTANCE: %s", why);
    }
    if (!px->set[find_option("socket", 6)])
        snprintf(cfg->socket, sizeof cfg->socket, "/run/cbd/%s.sock", cfg->instance);
    if (!px->set[find_option("store", 5)]) {
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
        if (options[i].def != NULL)
            set_value(cfg, &options[i], options[i].def, why, sizeof why);
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

/* Pass 1: -c / --check-config / --help / --version. Returns the file to
 * read (or NULL); sets *action for the flags that end the run. */
static const char *scan_meta(struct parse_ctx *px, int argc, char **argv, int *check_only, int *action)
{
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t len = strcspn(a, "=");
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            print_help();
            *action = CBD_CONFIG_EXIT_OK;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("cbd %s (segment layout %u.%u)\n", CB_VERSION_STRING, CB_SEG_MAJOR, CB_SEG_MINOR);
            *action = CBD_CONFIG_EXIT_OK;
        } else if (strcmp(a, "-c") == 0 || (len == 8 && strncmp(a, "--config", 8) == 0)) {
            file = take_value(px, argc, argv, &i, "--config");
        } else if (len == 14 && strncmp(a, "--check-config", 14) == 0) {
            file = take_value(px, argc, argv, &i, "--check-config");
            *check_only = 1;
        } else if (strncmp(a, "--", 2) == 0 && find_option(a + 2, len - 2) >= 0 && strchr(a, '=') == NULL) {
            i++; /* "--name value": skip the value, pass 2 reads it */
        }
    }
    return file;
}

/* Pass 2: every table option, overriding the file. */
static void scan_options(struct parse_ctx *px, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        size_t len = strcspn(a, "=");
        int opt = strncmp(a, "--", 2) == 0 ? find_option(a + 2, len - 2) : -1;
        if (opt >= 0) {
            const char *v = take_value(px, argc, argv, &i, a);
            if (v != NULL)
                apply(px, opt, v);
        } else if (strcmp(a, "-c") == 0 || (len == 8 && strncmp(a, "--config", 8) == 0) ||
                   (len == 14 && strncmp(a, "--check-config", 14) == 0)) {
            i += strchr(a, '=') == NULL; /* handled in pass 1 */
        } else if (strcmp(a, "-h") != 0 && strcmp(a, "--help") != 0 && strcmp(a, "-V") != 0 &&
                   strcmp(a, "--version") != 0) {
            report(px, "unknown option '%s' (see cbd --help)", a);
        }
    }
}

enum cbd_config_action cbd_config_parse_args(struct cbd_config *cfg, int argc, char **argv)
{
    struct parse_ctx px = {.cfg = cfg, .where = "command line"};
    int check_only = 0, action = CBD_CONFIG_RUN;
    set_defaults(cfg);
    const char *file = scan_meta(&px, argc, argv, &check_only, &action);
    if (action == CBD_CONFIG_EXIT_OK && px.errors == 0)
        return CBD_CONFIG_EXIT_OK;
    if (file != NULL)
        parse_file(&px, file);
    scan_options(&px, argc, argv);
    if (px.errors == 0)
        finish(&px);
    if (px.errors > 0)
        return CBD_CONFIG_EXIT_USAGE;
    cbd_log_threshold = (int)cfg->log_level;
    if (check_only) {
        printf("ok\n");
        return CBD_CONFIG_EXIT_OK;
    }
    return CBD_CONFIG_RUN;
}
