/*
 * main.c - cbd's entry point: options, then the daemon.
 *
 * Exit codes: 0 clean stop (SIGTERM/SIGINT, --help, --version, a passing
 * --check-config), 1 a runtime failure (logged), 2 a usage or
 * configuration error (printed). The configuration is validated whole
 * before anything is created - the same validation --check-config runs
 * (cbd_config_load) - so a start refused for its configuration leaves no
 * segment, socket or state file behind.
 */
#include <stdlib.h>

#include "cbd.h"
#include "config.h"

int main(int argc, char **argv)
{
    static struct cbd_config cfg;
    switch (cbd_config_parse_args(&cfg, argc, argv)) {
    case CBD_CONFIG_EXIT_OK:
        return 0;
    case CBD_CONFIG_EXIT_USAGE:
        return 2;
    case CBD_CONFIG_RUN:
        break;
    }
    return cbd_run(&cfg);
}
