/*
 * test_config.c - cbd's option table in-process: defaults, the INI file's
 * sections, what libinih would get wrong on its own (section names past 49
 * bytes, lines past its buffer), and which policy a circuit gets.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "policy.h"
#include "tsup.h"

static struct cbd_config cfg;

static void fini(void)
{
    cbd_config_free(&cfg);
}

TestSuite(config, .fini = fini);

/* Parses "cbd -c FILE" with FILE holding text. */
static enum cbd_config_action parse_text(const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/cbd.conf", tsup_tmpdir());
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    char *argv[] = {"cbd", "-c", path, NULL};
    return cbd_config_parse_args(&cfg, 3, argv);
}

Test(config, every_default_is_within_its_bounds)
{
    char *argv[] = {"cbd", NULL};
    cr_assert_eq(cbd_config_parse_args(&cfg, 1, argv), CBD_CONFIG_RUN);
    cr_assert_eq(cfg.defaults.failure_threshold, 5);
    cr_assert_eq(cfg.defaults.recovery_timeout_ms, 30000);
    cr_assert_eq(cfg.segment_mode, 0640);
    cr_assert_eq(cfg.socket_mode, 0660);
    cr_assert_eq(cfg.hook_timeout_ms, 10000);
    cr_assert_eq(cfg.hook_max_running, 16);
    cr_assert_eq(cfg.hook_queue_max, 64);
    cr_assert_str_eq(cfg.socket_group, "");
    cr_assert_eq(cfg.hook_commands.n, 0);
}

Test(config, command_line_hooks_add_to_the_files)
{
    char path[512];
    snprintf(path, sizeof path, "%s/h.conf", tsup_tmpdir());
    FILE *f = fopen(path, "w");
    fputs("[hooks]\ncommand = one\ncommand = two\nmax_running = 2\n", f);
    fclose(f);
    char *argv[] = {"cbd", "-c", path, "--hook-command", "three", "--hook-max-running=4", NULL};
    cr_assert_eq(cbd_config_parse_args(&cfg, 6, argv), CBD_CONFIG_RUN);
    cr_assert_eq(cfg.hook_commands.n, 3);
    cr_assert_str_eq(cfg.hook_commands.v[0], "one");
    cr_assert_str_eq(cfg.hook_commands.v[2], "three");
    cr_assert_eq(cfg.hook_max_running, 4, "the command line did not beat the file");
}

Test(config, a_long_circuit_name_keeps_its_whole_section)
{
    char text[512], name[128];
    memset(name, 'n', 100);
    name[100] = '\0';
    snprintf(text, sizeof text, "[circuit \"%s\"]\nfailure_threshold = 2\nhook = true\n", name);
    cr_assert_eq(parse_text(text), CBD_CONFIG_RUN);
    cr_assert_eq(cfg.noverrides, 1);
    cr_assert_str_eq(cfg.overrides[0].name, name, "libinih's 49-byte section name leaked through");
    cr_assert_eq(cfg.overrides[0].hooks.n, 1);
}

Test(config, an_over_long_line_is_refused_not_split)
{
    char text[1024];
    snprintf(text, sizeof text, "[hooks]\ncommand = %0300d\n", 7);
    cr_assert_eq(parse_text(text), CBD_CONFIG_EXIT_USAGE);
}

Test(config, a_section_given_twice_is_one_section)
{
    cr_assert_eq(parse_text("[prefix \"a\"]\nfailure_threshold = 2\n[prefix \"a\"]\nsuccess_threshold = 4\n"),
                 CBD_CONFIG_RUN);
    cr_assert_eq(cfg.noverrides, 1);
    cr_assert_eq(cfg.overrides[0].cfg.failure_threshold, 2);
    cr_assert_eq(cfg.overrides[0].cfg.success_threshold, 4);
}

Test(config, a_section_over_what_was_asked_over_defaults_field_by_field)
{
    cr_assert_eq(parse_text("[defaults]\nfailure_threshold = 9\nsuccess_threshold = 8\nrecovery_timeout_ms = 7\n"
                            "[prefix \"pay\"]\nfailure_threshold = 3\n"
                            "[prefix \"payments.\"]\nfailure_threshold = 4\n"
                            "[circuit \"payments.eu\"]\nsuccess_threshold = 6\n"),
                 CBD_CONFIG_RUN);
    cb_config asked = {.failure_threshold = 1, .success_threshold = 2, .recovery_timeout_ms = 5000};
    unsigned mask = 1u << 1 | 1u << 3; /* success_threshold, recovery_timeout_ms */
    cb_config out;
    const struct cbd_override *sec;
    cbd_config_effective(&cfg, "payments.us", &asked, mask, &out, &sec);
    cr_assert_str_eq(sec->name, "payments.", "the longest prefix did not win");
    cr_assert_eq(out.failure_threshold, 4);
    cr_assert_eq(out.success_threshold, 2, "what the worker asked for lost to [defaults]");
    cr_assert_eq(out.recovery_timeout_ms, 5000);
    cbd_config_effective(&cfg, "payments.eu", &asked, mask, &out, &sec);
    cr_assert(sec != NULL && !sec->prefix, "the exact section did not beat the prefixes");
    cr_assert_eq(out.failure_threshold, 9, "a field the exact section does not name came from a prefix");
    cr_assert_eq(out.success_threshold, 6);
    cbd_config_effective(&cfg, "search", NULL, 0, &out, &sec);
    cr_assert_null(sec);
    cr_assert_eq(out.failure_threshold, 9);
    cr_assert_eq(out.recovery_timeout_ms, 7);
}
