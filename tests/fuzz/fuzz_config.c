/*
 * fuzz_config.c - the configuration file (daemon/config.c).
 *
 * The bytes are a configuration file, read by cbd_config_load: the one
 * validation `cbd --check-config FILE`, the daemon's start and a reload
 * run, in-process, with its errors handed to a callback instead of printed
 * (it never prints, never exits). Properties: no crash, no leak, no read
 * outside the input, no allocation the input does not pay for (ASan's
 * malloc limit in scripts/fuzz.sh); every error is one line that starts
 * with the file's name and, when it has one, a line number the input has;
 * the count returned is the errors handed over (the first 100, then one
 * line with the rest counted); and a file that passes is one the daemon
 * runs with: the rules between options hold on the result and its store
 * URI is one the store's backend takes.
 */
#include <nss.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "segment.h"
#include "store.h"

#define NAME "fuzz.conf"

struct seen {
    size_t lines; /* in the input: a line number is at most this */
    int errors;   /* handed to on_error */
};

static void on_error(void *arg, const char *error)
{
    struct seen *s = arg;
    const char *p = error + strlen(NAME);
    s->errors++;
    if (strncmp(error, NAME, strlen(NAME)) != 0 || (p[0] != ':') || strchr(error, '\n') != NULL)
        abort(); /* not "FILE:LINE: ..." or "FILE: ...", or more than one line */
    if (p[1] != ' ') {
        char *end;
        unsigned long line = strtoul(p + 1, &end, 10);
        if (line == 0 || line > s->lines || end[0] != ':' || end[1] != ' ')
            abort();
    }
}

/* What the daemon relies on in a configuration that passed. */
static void check_result(const struct cbd_config *cfg)
{
    char why[1024];
    if (cfg->stale_limit_ms < 2 * cfg->heartbeat_ms || cfg->admin_reserved_connections >= cfg->max_connections ||
        cb__config_check(&cfg->defaults, NULL) < 0 || cbd_store_uri_error(cfg->store, why, sizeof why) != NULL ||
        cb__instance_check(cfg->instance) < 0 || cfg->socket[0] != '/')
        abort();
    for (size_t h = 0; h < cfg->hook_commands.n; h++)
        if (cfg->hook_commands.v[h][0] == '\0')
            abort();
    for (size_t i = 0; i < cfg->noverrides; i++) {
        if (cb__name_check(cfg->overrides[i].name) < 0)
            abort();
        for (size_t h = 0; h < cfg->overrides[i].hooks.n; h++)
            if (cfg->overrides[i].hooks.v[h][0] == '\0')
                abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    unsetenv("CB_INSTANCE"); /* the input alone decides */
    unsetenv("STATE_DIRECTORY");
    /* Group options are looked up in /etc/group only: systemd's NSS module
     * would ask userdb over a socket, ten times slower, for nothing. */
    __nss_configure_lookup("group", "files");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cbd_config cfg;
    struct seen seen = {.lines = 1};
    for (size_t i = 0; i < size; i++)
        seen.lines += data[i] == '\n';
    int errors = cbd_config_load(&cfg, NAME, (const char *)data, size, 0, NULL, on_error, &seen);
    if (seen.errors != (errors > 100 ? 101 : errors))
        abort();
    if (errors == 0) {
        check_result(&cfg);
        cbd_config_free(&cfg);
    }
    return 0;
}
