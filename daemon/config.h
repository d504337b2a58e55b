/*
 * config.h - cbd's options: one declarative table (config.c) from which
 * the command line, the INI file (-c FILE), validation and --help all come.
 */
#ifndef CBD_CONFIG_H
#define CBD_CONFIG_H

#include <stdint.h>

#include "cb.h"
#include "segment.h"

#define CBD_STORE_URI_MAX 1024

struct cbd_config {
    /* [daemon] */
    char instance[CB_INSTANCE_MAX + 1];
    char socket[CB_SOCKET_PATH_MAX];
    uint32_t socket_mode;
    char store[CBD_STORE_URI_MAX];
    uint32_t capacity, lanes, lane_capacity, history_capacity;
    uint32_t heartbeat_ms, stale_limit_ms, stale_policy; /* stale_policy: CB_STALE_* */
    uint32_t drain_interval_ms, reclaim_interval_ms;
    uint32_t log_level;                                   /* CBD_LOG_* */
    /* [defaults]: the policy of circuits registered without a config */
    cb_config defaults;
};

enum cbd_config_action {
    CBD_CONFIG_RUN = 0,   /* *cfg is complete and valid: start the daemon */
    CBD_CONFIG_EXIT_OK,   /* --help, --version, --check-config that passed */
    CBD_CONFIG_EXIT_USAGE /* errors were printed to stderr: exit 2 */
};

/*
 * Fill *cfg from defaults, the environment ($CB_INSTANCE, $STATE_DIRECTORY),
 * the INI file named by -c, and the command line (in that order of
 * precedence, lowest first). Prints --help/--version/--check-config output
 * and every error found (not just the first) itself.
 */
enum cbd_config_action cbd_config_parse_args(struct cbd_config *cfg, int argc, char **argv);

#endif /* CBD_CONFIG_H */
