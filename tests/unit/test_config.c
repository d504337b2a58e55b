/*
 * test_config.c - cbd's option table in-process: defaults, the INI file's
 * sections and lines, every error cbd_config_load (the one validation
 * behind --check-config, the start and reload) reports and how it words
 * it, the store URIs it hands to their backends, and which policy a
 * circuit gets.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "policy.h"
#include "store.h"
#include "tsup.h"

static struct cbd_config cfg;

static void fini(void)
{
    cbd_config_free(&cfg);
}

TestSuite(config, .fini = fini);

/* What cbd_config_load reported: each error on its own line. */
struct errors {
    char text[32768];
    int n;
};

static void collect(void *arg, const char *error)
{
    struct errors *e = arg;
    size_t used = strlen(e->text);
    snprintf(e->text + used, sizeof e->text - used, "%s\n", error);
    e->n++;
}

static struct errors errs;

/* Loads len bytes of text as the file "cbd.conf" (and argv's options):
 * the number of errors, their lines in errs. */
static int load_n(const char *text, size_t len, int argc, char **argv)
{
    cbd_config_free(&cfg); /* what an earlier load of the test kept */
    memset(&errs, 0, sizeof errs);
    int n = cbd_config_load(&cfg, "cbd.conf", text, len, argc, argv, collect, &errs);
    cr_assert_eq(n, errs.n, "%d errors counted, %d reported:\n%s", n, errs.n, errs.text);
    return n;
}

static int load(const char *text)
{
    return load_n(text, strlen(text), 0, NULL);
}

/* The file text gives exactly one error: "cbd.conf:" followed by want. */
static void refused(const char *text, const char *want)
{
    char line[1024];
    snprintf(line, sizeof line, "cbd.conf:%s", want);
    cr_expect_eq(load(text), 1, "for\n%s\nwanted one error, got:\n%s", text, errs.text);
    cr_expect_not_null(strstr(errs.text, line), "for\n%s\nwanted\n%s\ngot\n%s", text, line, errs.text);
}

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
    cr_assert_str_eq(cfg.overrides[0].name, name, "the section name was cut");
    cr_assert_eq(cfg.overrides[0].hooks.n, 1);
}

/* A line holds CBD_CONFIG_LINE_MAX bytes (libinih's buffer, set at run
 * time, less its NUL); a longer line is refused whole: its tail, a line of
 * its own if it were split, is never read. */
Test(config, a_line_of_the_longest_length_is_taken_and_a_longer_one_refused_not_split)
{
    static char text[10000];
    int value = CBD_CONFIG_LINE_MAX - 10; /* "command = " and the value */
    cr_assert_eq(CBD_CONFIG_LINE_MAX, 4095);
    snprintf(text, sizeof text, "[hooks]\ncommand = %0*d\n", value, 7);
    cr_assert_eq(load(text), 0, "%s", errs.text);
    cr_assert_eq(strlen(cfg.hook_commands.v[0]), (size_t)value);
    int n = snprintf(text, sizeof text, "[hooks]\ncommand = %0*dtimeout_ms = 1\r\ntimeout_ms = 99999999\n", value, 7);
    cr_assert_eq(load_n(text, (size_t)n, 0, NULL), 2, "%s", errs.text);
    cr_assert_not_null(strstr(errs.text, "cbd.conf:2: option 'command': line is 4109 bytes (expected at most 4095; "
                                         "for a longer hook, run a script; give a longer value on the command "
                                         "line)"), "%s", errs.text);
    cr_assert_null(strstr(errs.text, "'timeout_ms': 1 "), "the long line was split: %s", errs.text);
    cr_assert_not_null(strstr(errs.text, "cbd.conf:3: option 'timeout_ms': 99999999 is out of range"),
                       "the line after the long one was lost: %s", errs.text);
}

/* Where libinih's rules are not the ones cbd had: ':' also ends a name,
 * an indented line is a line of its own (each line is parsed alone, so
 * never a continuation), and a ' ;' inside a header's brackets starts a
 * comment. */
Test(config, libinih_takes_name_colon_value_and_no_continuation_lines)
{
    cr_assert_eq(load("[daemon]\nlanes: 8\ninstance = a\n    capacity = 100\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.lanes, 8);
    cr_assert_str_eq(cfg.instance, "a", "an indented line continued the value above it");
    cr_assert_eq(cfg.capacity, 100);
    refused("[daemon ; lanes]\nlanes = 8\n", "1: section header '[daemon ; lanes]' has no ']' before ' ;', which "
                                             "starts a comment (expected [daemon], [defaults]");
}

Test(config, a_section_given_twice_is_refused_naming_the_first_one)
{
    refused("[prefix \"a\"]\nfailure_threshold = 2\n[prefix \"a\"]\nsuccess_threshold = 4\n",
            "3: section [prefix \"a\"]: given twice (first at line 1; expected each section once: merge them)");
    refused("[hooks]\n[defaults]\n\n[hooks]\n", "4: section [hooks]: given twice (first at line 1; expected each "
                                                "section once: merge them)");
    cr_assert_eq(load("[prefix \"a\"]\n[circuit \"a\"]\n"), 0, "a prefix and a circuit of one name are two "
                                                                "sections: %s", errs.text);
    cr_assert_eq(load("[prefix \"a\"]\nfailure_threshold = 2\n[prefix \"a\"]\nsuccess_threshold = x\n"), 2,
                 "the options of a repeated section are checked too: %s", errs.text);
}

Test(config, control_bytes_are_named_with_their_column)
{
    static const char nul[] = "[daemon]\nlanes = 8\0\n";
    cr_assert_eq(load_n(nul, sizeof nul - 1, 0, NULL), 1);
    cr_assert_str_eq(errs.text, "cbd.conf:2: option 'lanes': control byte 0x00 (NUL) at column 10 (expected text: "
                                "tab is the only control character allowed)\n");
    refused("[daemon]\n\x1b[31mlanes = 8\n", "2: control byte 0x1b at column 1 (expected text");
    refused("[hooks]\ncommand = a\rb\n", "2: option 'command': control byte 0x0d (carriage return) at column 12");
    refused("[hooks]\ncommand = a\x7f\n", "2: option 'command': control byte 0x7f at column 12");
    cr_assert_eq(load("\xEF\xBB\xBF[daemon]\r\nlanes =\t8\r\n[hooks]\ncommand = printf '\xc3\xa9'\n"), 0,
                 "a byte order mark, CRLF, a tab or UTF-8 text refused: %s", errs.text);
    cr_assert_eq(cfg.lanes, 8);
}

/* Numbers: digits only, in bounds; each other case says what it is. */
Test(config, each_bad_number_says_what_is_wrong_and_the_bounds)
{
    static const struct {
        const char *value, *want;
    } cases[] = {
        {"99999999999999999999", "99999999999999999999 is out of range (expected an integer 1..16777216)"},
        {"18446744073709551616", "18446744073709551616 is out of range"},
        {"16777217", "16777217 is out of range (expected an integer 1..16777216)"},
        {"0", "0 is out of range"},
        {"-5", "-5 is negative (expected an integer 1..16777216)"},
        {"10k", "'10k' has 'k' after the number (expected an integer 1..16777216)"},
        {"0x10", "'0x10' has 'x10' after the number"},
        {"1e3", "'1e3' has 'e3' after the number"},
        {"+5", "'+5' is not a number (expected an integer 1..16777216)"},
        {"lots", "'lots' is not a number"},
        {"", "no value (expected an integer 1..16777216)"},
        {"1 000", "'1 000' has ' 000' after the number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[256], want[256];
        snprintf(text, sizeof text, "[daemon]\ncapacity = %s\n", cases[i].value);
        snprintf(want, sizeof want, "2: option 'capacity': %s", cases[i].want);
        refused(text, want);
    }
    refused("[daemon]\nlane_capacity = 100\n", "2: option 'lane_capacity': 100 is not a power of two (expected a "
                                                "power of two 16..1048576)");
    cr_assert_eq(load("[daemon]\ncapacity = 016777216\n"), 0, "leading zeros: %s", errs.text);
    cr_assert_eq(cfg.capacity, 16777216);
}

Test(config, modes_are_octal_and_say_so)
{
    refused("[daemon]\nsocket_mode = 0680\n", "2: option 'socket_mode': '0680' is not an octal mode: 8 is not an "
                                              "octal digit (expected an octal mode 0000..0777, such as 0660)");
    refused("[daemon]\nsocket_mode = rw-rw----\n", "2: option 'socket_mode': 'rw-rw----' is not an octal mode "
                                                   "(expected an octal mode 0000..0777, such as 0660)");
    refused("[daemon]\nsegment_mode = 0o640\n", "2: option 'segment_mode': '0o640' is not an octal mode");
    refused("[daemon]\nsegment_mode = 01777\n", "2: option 'segment_mode': 01777 is out of range (expected an "
                                                "octal mode 0000..0777");
    refused("[daemon]\nsegment_mode = -0640\n", "2: option 'segment_mode': -0640 is negative");
    cr_assert_eq(load("[daemon]\nsocket_mode = 660\nsegment_mode = 0600\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.socket_mode, 0660, "a mode without its leading 0 is still octal, as for chmod");
    cr_assert_eq(cfg.segment_mode, 0600);
}

Test(config, enum_values_list_the_choices)
{
    refused("[daemon]\nstale_policy = open\n", "2: option 'stale_policy': 'open' is not a known value (expected "
                                               "one of fail-open | keep-state)");
    refused("[daemon]\nlog_level =\n", "2: option 'log_level': no value (expected one of debug | info | warn | "
                                       "error)");
}

Test(config, an_unknown_option_or_section_suggests_the_closest_known_one)
{
    refused("[defaults]\nfailure_treshold = 3\n", "2: option 'failure_treshold': unknown in section [defaults] "
                                                  "(did you mean 'failure_threshold'? see cbd --help-config)");
    refused("[hooks]\ncommands = x\n", "2: option 'commands': unknown in section [hooks] (did you mean 'command'?");
    refused("[circuit \"db\"]\nhok = x\n", "2: option 'hok': unknown in section [circuit \"db\"] (did you mean "
                                          "'hook'?");
    refused("[daemon]\nwhatever = 1\n", "2: option 'whatever': unknown in section [daemon] (see cbd --help-config)");
    refused("[daemon]\nfailure_threshold = 1\n", "2: option 'failure_threshold': belongs in section [defaults], "
                                                 "[circuit \"NAME\"] or [prefix \"PREFIX\"]");
    refused("[circuit \"db\"]\ncommand = x\n", "2: option 'command': belongs in section [hooks]");
    refused("[deamon]\nlanes = 8\n", "1: section [deamon]: unknown section (did you mean [daemon]? expected "
                                     "[daemon], [defaults], [hooks], [circuit \"NAME\"] or [prefix \"PREFIX\"])");
    refused("[circut \"db\"]\n", "1: section [circut \"db\"]: unknown section (did you mean [circuit \"db\"]?");
    refused("[nonsense]\n", "1: section [nonsense]: unknown section (expected [daemon]");
}

/* Every malformed line has its own error, not only the first one. */
Test(config, every_malformed_line_is_reported)
{
    cr_assert_eq(load("lanes = 8\n[daemon]\nlanes 8\n= 8\n[daemon\n[hooks] x\njunk\n"), 6, "%s", errs.text);
    static const char *const want[] = {
        "cbd.conf:1: option 'lanes': comes before any section (expected a [section] line above it)",
        "cbd.conf:3: option 'lanes': no '=' after the name (expected 'lanes = VALUE')",
        "cbd.conf:4: '= 8' has no option name (expected 'name = value')",
        "cbd.conf:5: section header '[daemon' has no ']'",
        "cbd.conf:6: section [hooks]: 'x' after ']' (expected nothing, or a ';' comment)",
        "cbd.conf:7: 'junk' has no '=' (expected 'name = value', a [section] or a ';' comment)",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect_not_null(strstr(errs.text, want[i]), "missing %s in\n%s", want[i], errs.text);
    cr_assert_eq(load("[daemon] ; comment\n  lanes = 8 ; eight\n# comment\n[ hooks ]\ncommand = a;b ; c\n"), 0,
                 "%s", errs.text);
    cr_assert_eq(cfg.lanes, 8);
    cr_assert_str_eq(cfg.hook_commands.v[0], "a;b", "a ';' after a blank starts a comment, others do not");
}

Test(config, past_a_hundred_errors_the_rest_are_counted)
{
    size_t size = 150 * 16 + 16, used = 0;
    char *text = malloc(size);
    used += (size_t)snprintf(text, size, "[daemon]\n");
    for (int i = 0; i < 150; i++)
        used += (size_t)snprintf(text + used, size - used, "lanes = x%d\n", i);
    memset(&errs, 0, sizeof errs);
    cr_assert_eq(cbd_config_load(&cfg, "cbd.conf", text, used, 0, NULL, collect, &errs), 150);
    cr_assert_eq(errs.n, 101, "100 errors and a count");
    cr_assert_not_null(strstr(errs.text, "cbd.conf: 50 more errors not shown\n"), "%s", errs.text);
    free(text);
}

Test(config, a_file_larger_than_a_mebibyte_is_refused)
{
    size_t len = CBD_CONFIG_FILE_MAX + 1;
    char *text = malloc(len);
    memset(text, '\n', len);
    cr_assert_eq(load_n(text, len, 0, NULL), 1);
    cr_assert_str_eq(errs.text, "cbd.conf: the file is larger than 1048576 bytes (expected a configuration file)\n");
    free(text);
}

/* ---- rules between options ------------------------------------------------------ */

Test(config, a_stale_limit_under_two_heartbeats_is_reported_where_it_was_given)
{
    refused("[daemon]\nheartbeat_ms = 100\nstale_limit_ms = 150\n",
            "3: option 'stale_limit_ms': 150 is below 2 x heartbeat_ms (100) (expected at least 200, or a shorter "
            "heartbeat_ms)");
    refused("[daemon]\n\nheartbeat_ms = 2000\n", "3: option 'heartbeat_ms': 2000 is more than half of "
                                                  "stale_limit_ms (3000) (expected at most 1500, or a longer "
                                                  "stale_limit_ms)");
    char *argv[] = {"cbd", "--stale-limit-ms", "300", NULL};
    static const char text[] = "[daemon]\nheartbeat_ms = 200\n";
    cr_assert_eq(load_n(text, sizeof text - 1, 3, argv), 1);
    cr_assert_str_eq(errs.text, "command line: option 'stale_limit_ms': 300 is below 2 x heartbeat_ms (200) "
                                "(expected at least 400, or a shorter heartbeat_ms)\n");
    cr_assert_eq(load("[daemon]\nheartbeat_ms = 2000\nstale_limit_ms = 4000\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.stale_limit_ms, 4000);
}

Test(config, a_refused_value_is_left_out_of_the_rules)
{
    refused("[daemon]\nheartbeat_ms = 2000x\nstale_limit_ms = 150\n", "2: option 'heartbeat_ms'");
}

Test(config, admins_may_reserve_all_but_one_connection)
{
    refused("[daemon]\nmax_connections = 16\nadmin_reserved_connections = 16\n",
            "3: option 'admin_reserved_connections': 16 leaves none of max_connections (16) to other users "
            "(expected at most 15)");
    cr_assert_eq(load("[daemon]\nmax_connections = 16\nadmin_reserved_connections = 15\n"), 0, "%s", errs.text);
}

Test(config, a_circuit_quota_above_the_capacity_is_fine)
{
    cr_assert_eq(load("[daemon]\ncapacity = 100\nmax_circuits_per_uid = 16777216\nmax_connections_per_uid = "
                      "65536\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.max_circuits_per_uid, 16777216);
}

Test(config, the_new_daemon_limits_take_their_values)
{
    cr_assert_eq(load("[daemon]\nmax_connections = 100\nmax_connections_per_uid = 10\nadmin_reserved_connections "
                      "= 0\nframe_timeout_ms = 100\nidle_timeout_ms = 0\nmax_circuits_per_uid = 0\n"
                      "circuit_expiry_s = 31536000\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.max_connections, 100);
    cr_assert_eq(cfg.max_connections_per_uid, 10);
    cr_assert_eq(cfg.admin_reserved_connections, 0);
    cr_assert_eq(cfg.frame_timeout_ms, 100);
    cr_assert_eq(cfg.idle_timeout_ms, 0);
    cr_assert_eq(cfg.max_circuits_per_uid, 0);
    cr_assert_eq(cfg.circuit_expiry_s, 31536000);
}

/* ---- the store URI, judged by its backend --------------------------------------- */

static void on_store_closed(void *arg)
{
    (*(int *)arg)++;
}

/* What the local store's create() refuses, the check refuses with the
 * store's own reason; what it accepts, the check accepts. */
Test(config, the_check_takes_exactly_the_local_store_uris_the_store_takes)
{
    static const char *const uris[] = {
        "local:", "local:state.json", "local:./state", "local:/var/lib/cbd/", "local:/", "local:/s",
        "LOCAL:/var/lib/cbd/x.state", "local:/a b/c", "local:~/state", "local://x",
    };
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct cbd_store_hooks hooks = {.loop = &loop};
    for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
        struct cbd_store *s = NULL;
        const char *err = NULL;
        char text[256];
        int created = cbd_store_local_ops.create(&s, uris[i], &hooks, &err) == 0;
        snprintf(text, sizeof text, "[daemon]\nstore = %s\n", uris[i]);
        int errors = load(text);
        cr_expect_eq(errors == 0, created, "%s: create() %s, the check %s", uris[i], created ? "takes it" : err,
                     errors ? errs.text : "takes it");
        if (!created)
            cr_expect(strstr(errs.text, "cbd.conf:2: option 'store': store '") && strstr(errs.text, err),
                      "%s: the check's message lacks the store's reason '%s': %s", uris[i], err, errs.text);
        if (s != NULL) {
            int closed = 0;
            cbd_store_local_ops.close(s, on_store_closed, &closed);
            uv_run(&loop, UV_RUN_DEFAULT);
            cr_assert_eq(closed, 1);
        }
    }
    cr_assert_eq(uv_loop_close(&loop), 0);
}

/* A fleet store URI its create() refuses is refused by the check. These
 * need the backend's check_uri: until a build has it, only the scheme is
 * checked and the test is skipped (and says so). */
static void fleet_uri_refused(const struct cbd_store_ops *ops, const char *uri)
{
    struct cbd_store *s = NULL;
    const char *err = NULL;
    char text[256], want[256];
    uv_loop_t loop;
    cr_assert_eq(uv_loop_init(&loop), 0);
    struct cbd_store_hooks hooks = {.loop = &loop};
    cr_assert_lt(ops->create(&s, uri, &hooks, &err), 0, "%s: create() took it", uri);
    cr_assert_null(s);
    uv_loop_close(&loop);
    snprintf(text, sizeof text, "[daemon]\nstore = %s\n", uri);
    snprintf(want, sizeof want, "cbd.conf:2: option 'store': store '%s': ", uri);
    cr_assert_eq(load(text), 1, "%s: create() says '%s', the check: %s", uri, err, errs.text);
    cr_assert_not_null(strstr(errs.text, want), "%s", errs.text);
}

Test(config, a_redis_uri_without_a_host_fails_the_check_as_it_fails_the_store)
{
    if (cbd_store_redis_ops.check_uri == NULL)
        cr_skip_test("the redis store has no check_uri in this build: only its scheme is checked");
    fleet_uri_refused(&cbd_store_redis_ops, "redis://");
    fleet_uri_refused(&cbd_store_redis_ops, "unix://relative.sock");
}

Test(config, a_dynamodb_uri_without_a_table_fails_the_check_as_it_fails_the_store)
{
    if (cbd_store_dynamodb_ops.check_uri == NULL)
        cr_skip_test("the dynamodb store has no check_uri in this build: only its scheme is checked");
    fleet_uri_refused(&cbd_store_dynamodb_ops, "dynamodb://");
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

/* ---- resilience4j's names for the window type ------------------------------------------------ */

Test(config, the_window_type_takes_resilience4js_names_in_any_case_and_the_numbers)
{
    cr_assert_eq(load("[defaults]\nsliding_window_type = TIME_BASED\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.defaults.sliding_window_type, 2);
    cr_assert_eq(load("[defaults]\nsliding_window_type = count_based\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.defaults.sliding_window_type, 1);
    cr_assert_eq(load("[defaults]\nsliding_window_type = Consecutive\n"), 0, "%s", errs.text);
    cr_assert_eq(cfg.defaults.sliding_window_type, 0);
    cr_assert_eq(load("[defaults]\nsliding_window_type = 2\n[circuit \"pay\"]\nsliding_window_type = COUNT_BASED\n"), 0,
                 "%s", errs.text);
    cr_assert_eq(cfg.defaults.sliding_window_type, 2);
    cr_assert(cfg.noverrides == 1 && cfg.overrides[0].cfg.sliding_window_type == 1, "a section takes the name too");
    char *argv[] = {"cbd", "--sliding-window-type=time_based", NULL};
    cr_assert_eq(load_n("", 0, 2, argv), 0, "%s", errs.text);
    cr_assert_eq(cfg.defaults.sliding_window_type, 2, "the command line takes the name too");
}

Test(config, another_window_type_word_is_refused_naming_the_line_and_the_accepted_values)
{
    refused("[defaults]\nsliding_window_type = SLIDING\n",
            "2: option 'sliding_window_type': 'SLIDING' is not a number or a name of one (expected an integer 0..2, "
            "or CONSECUTIVE | COUNT_BASED | TIME_BASED (any case))");
    refused("[defaults]\nsliding_window_type = 3\n",
            "2: option 'sliding_window_type': 3 is out of range (expected an integer 0..2, or CONSECUTIVE | "
            "COUNT_BASED | TIME_BASED (any case))");
    refused("[defaults]\nsliding_window_type = TIME_BASED_\n", "2: option 'sliding_window_type': 'TIME_BASED_' is not");
    refused("[defaults]\nfailure_threshold = TIME_BASED\n",
            "2: option 'failure_threshold': 'TIME_BASED' is not a number (expected an integer 1..1000000)");
}
