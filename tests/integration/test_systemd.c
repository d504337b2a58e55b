/*
 * test_systemd.c - the unit file and the example configuration as an
 * operator installs them.
 *
 * systemd is not PID 1 where the tests run, so the unit cannot be started;
 * what can be checked is what systemd itself checks before starting it:
 * `systemd-analyze verify` (syntax, unknown keys, executables) and the
 * hardening score of `systemd-analyze security --offline=true`. The unit
 * under test is the one CMake configured for installation, with ExecStart
 * pointed at the cbd built here so verify can check the binary.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tsup.h"

/* Writes the configured unit into this test's directory with ExecStart
 * naming the cbd under test; returns the copy's path. */
static const char *unit_copy(void)
{
    static char path[512];
    FILE *in = fopen(CB_BINARY_DIR "/cbd.service", "r");
    cr_assert_not_null(in, "the configured unit %s is missing", CB_BINARY_DIR "/cbd.service");
    snprintf(path, sizeof path, "%s/cbd.service", tsup_tmpdir());
    FILE *out = fopen(path, "w");
    cr_assert_not_null(out);
    char line[1024];
    while (fgets(line, sizeof line, in)) {
        if (strncmp(line, "ExecStart=", 10) == 0)
            fprintf(out, "ExecStart=%s -c %s/systemd/cbd.conf.example\n", tsup_cbd_path(), CB_SOURCE_DIR);
        else
            fputs(line, out);
    }
    fclose(in);
    fclose(out);
    return path;
}

Test(systemd, the_unit_passes_systemd_analyze_verify_without_unknown_keys)
{
    char *argv[] = {"/usr/bin/systemd-analyze", "verify", (char *)unit_copy(), NULL};
    char *out;
    int status = tsup_run(argv, &out, true);
    cr_expect_eq(status, 0, "systemd-analyze verify failed:\n%s", out);
    cr_expect_null(strstr(out, "Unknown"), "systemd-analyze verify warns:\n%s", out);
    cr_expect_null(strstr(out, "unknown"), "systemd-analyze verify warns:\n%s", out);
    free(out);
}

Test(systemd, the_unit_is_hardened_to_an_ok_exposure_level)
{
    char *argv[] = {"/usr/bin/systemd-analyze", "security", "--offline=true", "--no-pager", (char *)unit_copy(), NULL};
    char *out;
    tsup_run(argv, &out, true);
    const char *level = strstr(out, "Overall exposure level for cbd.service: ");
    cr_assert_not_null(level, "no exposure level in:\n%s", out);
    double exposure = strtod(level + strlen("Overall exposure level for cbd.service: "), NULL);
    /* systemd calls 0-1.9 "OK"; the README reports the figure. */
    cr_expect_lt(exposure, 2.0, "exposure %.1f is above systemd's OK band:\n%s", exposure, out);
    free(out);
}

Test(systemd, the_unit_is_type_notify_with_a_watchdog_and_keeps_the_segment)
{
    FILE *f = fopen(CB_BINARY_DIR "/cbd.service", "r");
    cr_assert_not_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    cr_expect_not_null(strstr(text, "\nType=notify\n"));
    cr_expect_not_null(strstr(text, "\nWatchdogSec="));
    cr_expect_not_null(strstr(text, "\nRuntimeDirectory=cbd\n"));
    cr_expect_not_null(strstr(text, "\nRemoveIPC=no\n"), "a restart must not lose the segment");
    cr_expect_null(strstr(text, "PrivateDevices=yes"), "a private /dev would hide /dev/shm from workers");
    cr_expect_null(strstr(text, "@CMAKE"), "unconfigured placeholders left in the unit");
}

Test(systemd, the_example_config_is_valid)
{
    /* Its groups come from the sysusers snippet at install time and cbd
     * checks that a group exists, so the copy checked here names none. */
    char path[512], line[1024];
    snprintf(path, sizeof path, "%s/cbd.conf", tsup_tmpdir());
    FILE *in = fopen(CB_SOURCE_DIR "/systemd/cbd.conf.example", "r"), *out = fopen(path, "w");
    cr_assert(in && out);
    int groups = 0;
    while (fgets(line, sizeof line, in)) {
        if (strncmp(line, "socket_group", 12) == 0 || strncmp(line, "admin_group", 11) == 0)
            groups++;
        else
            fputs(line, out);
    }
    fclose(in);
    fclose(out);
    cr_expect_eq(groups, 2, "the example should show socket_group and admin_group");
    char *argv[] = {(char *)tsup_cbd_path(), "--check-config", path, NULL};
    char *text;
    int status = tsup_run(argv, &text, true);
    cr_expect_eq(status, 0, "cbd --check-config of the example failed:\n%s", text);
    free(text);
}
