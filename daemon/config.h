/*
 * config.h - cbd's options: one declarative table (config.c) from which
 * the command line, the INI file (-c FILE), validation, reload, --help and
 * --help-config (docs/configuration.md) all come.
 */
#ifndef CBD_CONFIG_H
#define CBD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "cb.h"
#include "segment.h"

#define CBD_STORE_URI_MAX 1024
#define CBD_GROUP_MAX 64
#define CBD_PATH_MAX 4096
#define CBD_LISTEN_MAX 64 /* metrics_listen: "[IPv6]:PORT" fits */
/* Bytes of one line of the file, without its line end: what libinih's line
 * buffer holds (INI_MAX_LINE, 200 in Debian's build) less its NUL. */
#define CBD_CONFIG_LINE_MAX 4095
#define CBD_CONFIG_FILE_MAX (1 << 20) /* bytes of the whole file */

/* A repeatable option's values, in the order given. */
struct cbd_strlist {
    char **v;
    size_t n;
};

/* One [circuit "NAME"] (exact) or [prefix "PFX"] section. */
struct cbd_override {
    char *name;               /* the circuit name, or the prefix */
    int prefix;               /* 1: [prefix "..."] */
    unsigned set;             /* bit i: cb__policy_fields[i] given in cfg */
    cb_config cfg;
    struct cbd_strlist hooks; /* hook = CMD lines */
    int line;                 /* of its header in the file */
};

struct cbd_config {
    /* [daemon] */
    char instance[CB_INSTANCE_MAX + 1];
    char socket[CB_SOCKET_PATH_MAX];
    uint32_t socket_mode;
    char socket_group[CBD_GROUP_MAX];   /* "": the daemon's own group */
    uint32_t segment_mode;              /* state region; the lanes region adds 0060 */
    char admin_group[CBD_GROUP_MAX];    /* "": none (root and the daemon's uid are always admin) */
    char store[CBD_STORE_URI_MAX];
    uint32_t capacity, lanes, lane_capacity, history_capacity;
    uint32_t heartbeat_ms, stale_limit_ms, stale_policy; /* stale_policy: CB_STALE_* */
    uint32_t drain_interval_ms, reclaim_interval_ms;
    uint32_t log_level;                                   /* CBD_LOG_* */
    /* [daemon] limits: what one local user may take (control.c, cbd.c) */
    uint32_t max_connections, max_connections_per_uid, admin_reserved_connections;
    uint32_t frame_timeout_ms, idle_timeout_ms;           /* idle_timeout_ms 0: never */
    uint32_t max_circuits_per_uid;                        /* 0: no quota */
    uint32_t circuit_expiry_s;                            /* 0: circuits never expire */
    char metrics_listen[CBD_LISTEN_MAX];                  /* "": no metrics endpoint */
    /* [defaults]: the policy of circuits, under what workers and sections say */
    cb_config defaults;
    /* [hooks] */
    struct cbd_strlist hook_commands;
    uint32_t hook_timeout_ms, hook_max_running, hook_queue_max;
    /* [circuit "NAME"] and [prefix "PFX"] */
    struct cbd_override *overrides;
    size_t noverrides;
    /* Where it came from, so a reload reads the same sources again. */
    char file[CBD_PATH_MAX];            /* -c FILE; "" when none */
    int argc;
    char **argv;                        /* main's, alive for the whole run */
};

enum cbd_config_action {
    CBD_CONFIG_RUN = 0,   /* *cfg is complete and valid: start the daemon */
    CBD_CONFIG_EXIT_OK,   /* --help, --help-config, --version, --check-config that passed */
    CBD_CONFIG_EXIT_USAGE /* errors were printed to stderr: exit 2 */
};

/* Receives one error, the whole line: "FILE:LINE: option 'x': ...". */
typedef void cbd_config_report_fn(void *arg, const char *error);

/*
 * cbd_config_load - the one validation of cbd's configuration: what
 * --check-config, the daemon's start and a reload all run.
 * Fills *cfg from defaults, the environment, the file whose len bytes are
 * text (name: the file's name, in messages and cfg->file; NULL: no file)
 * and the options in argv[1..argc) (-c, --check-config and their values
 * are skipped); checks every value and every rule between options,
 * the store URI by its backend; hands each error to report_fn(arg, error)
 * (NULL: none are handed), the first 100 one by one, then a count.
 * Returns the number of errors: 0, and the caller owns *cfg
 * (cbd_config_free), or more, and *cfg holds nothing to free. Prints
 * nothing, never exits.
 */
int cbd_config_load(struct cbd_config *cfg, const char *name, const char *text, size_t len, int argc, char **argv,
                    cbd_config_report_fn *report_fn, void *arg);

/*
 * Fill *cfg from defaults, the environment ($CB_INSTANCE, $STATE_DIRECTORY),
 * the INI file named by -c, and the command line (in that order of
 * precedence, lowest first) through cbd_config_load. Prints --help/
 * --help-config/--version/--check-config output and every error found
 * (not just the first) itself.
 * On CBD_CONFIG_RUN the caller owns *cfg (cbd_config_free).
 */
enum cbd_config_action cbd_config_parse_args(struct cbd_config *cfg, int argc, char **argv);

/*
 * Reads the sources of *running again (same command line, same file)
 * through cbd_config_load into *next. Every error is logged as
 * "FILE:LINE: option 'x': ..."; then the result is -EINVAL, *next is
 * untouched and err holds the first error(s).
 * On 0, options a reload cannot change keep their running values (each
 * one that differs is logged as a warning) and the caller owns *next.
 */
int cbd_config_reload(const struct cbd_config *running, struct cbd_config *next, char *err, size_t errsize);

void cbd_config_free(struct cbd_config *cfg);

/*
 * The policy a circuit runs with: [defaults], then the fields the worker
 * asked for (asked_mask), then the fields its section sets - the
 * [circuit "NAME"] of exactly its name, else the [prefix] with the longest
 * matching prefix. *section gets that section or NULL.
 */
void cbd_config_effective(const struct cbd_config *cfg, const char *name, const cb_config *asked,
                          unsigned asked_mask, cb_config *out, const struct cbd_override **section);

/* The gid of a group option's value: 0 and *gid, or -ENOENT ("" or unknown). */
int cbd_config_gid(const char *group, unsigned *gid);

#endif /* CBD_CONFIG_H */
