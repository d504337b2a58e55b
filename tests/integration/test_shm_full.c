/*
 * test_shm_full.c - a full /dev/shm is an error at start, never a signal.
 *
 * /dev/shm is world-writable: any local user can fill it. cbd allocates
 * every page of its segment when it creates or adopts it, so a full device
 * stops a start with a message naming the cause, and a device filled later
 * cannot make the daemon die of SIGBUS when it first touches a page.
 *
 * Each test runs in a child with a mount namespace of its own and a small
 * tmpfs on /dev/shm (tests run as root), so the host's /dev/shm is never
 * filled. The child reports through its exit status: 0 is success, any
 * other value names the step that failed (see the enums).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tsup.h"

TestSuite(shm_full, .timeout = 120);

/* Moves the calling process into a mount namespace of its own with a tmpfs
 * of size_kib on /dev/shm. */
static int private_dev_shm(unsigned size_kib)
{
    char opts[64];
    snprintf(opts, sizeof opts, "size=%uk", size_kib);
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("tmpfs", "/dev/shm", "tmpfs", 0, opts) < 0)
        return -errno;
    return 0;
}

/* Writes a file into /dev/shm until the device is full. */
static void fill_dev_shm(void)
{
    static char block[1 << 16];
    int fd = open("/dev/shm/filler", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return;
    while (write(fd, block, sizeof block) > 0) {
    }
    close(fd);
}

/* The exit status of a test child, failing the test on a signal. */
static int child_status(pid_t pid)
{
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status), "the child died of signal %d", WTERMSIG(status));
    return WEXITSTATUS(status);
}

enum { START_NS = 10, START_SPAWN, START_SIGNAL, START_EXIT_CODE };

Test(shm_full, a_segment_that_does_not_fit_is_a_clear_error_at_start)
{
    char log[256];
    snprintf(log, sizeof log, "%s/cbd.log", tsup_tmpdir());
    pid_t pid = tsup_fork();
    if (pid == 0) {
        if (private_dev_shm(1024) < 0)
            _exit(START_NS);
        char sock[200], store[220];
        snprintf(sock, sizeof sock, "%s/ctl.sock", tsup_tmpdir());
        snprintf(store, sizeof store, "local:%s/state", tsup_tmpdir());
        /* 16384 circuits are 8 MiB of records: more than the 1 MiB device */
        char *argv[] = {(char *)tsup_cbd_path(), "--instance", (char *)tsup_unique("full"), "--socket", sock,
                        "--store", store, "--capacity", "16384", NULL};
        pid_t cbd = tsup_spawn(argv, log);
        if (cbd < 0)
            _exit(START_SPAWN);
        int status;
        waitpid(cbd, &status, 0);
        if (!WIFEXITED(status))
            _exit(START_SIGNAL);
        _exit(WEXITSTATUS(status) == 1 ? 0 : START_EXIT_CODE);
    }
    int rc = child_status(pid);
    cr_assert_neq(rc, START_NS, "no private /dev/shm (unshare/mount failed)");
    cr_assert_neq(rc, START_SIGNAL, "cbd died of a signal instead of refusing to start");
    cr_assert_eq(rc, 0, "cbd did not exit with status 1 (step %d)", rc);
    FILE *f = fopen(log, "r");
    cr_assert_not_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cr_assert_not_null(strstr(buf, "No space left on device"), "log: %s", buf);
    cr_assert_not_null(strstr(buf, "/dev/shm is full"), "the error must say what to do: %s", buf);
}

enum { FILL_NS = 10, FILL_START, FILL_CLIENT, FILL_REGISTER, FILL_DIED, FILL_PING, FILL_STATE };

Test(shm_full, a_dev_shm_filled_after_start_never_kills_the_daemon)
{
    pid_t pid = tsup_fork();
    if (pid == 0) {
        if (private_dev_shm(16 * 1024) < 0)
            _exit(FILL_NS);
        struct tsup_daemon d;
        struct tsup_daemon_opts o = {.tag = "fill", .capacity = 4096, .lanes = 16};
        if (tsup_daemon_start(&d, &o) < 0)
            _exit(FILL_START);
        /* Someone fills /dev/shm; then circuits are registered into pages
         * of the segment nobody touched before. */
        fill_dev_shm();
        cb_client *cl;
        if (cb_client_open(&cl, d.instance) < 0)
            _exit(FILL_CLIENT);
        cb_config cfg;
        cb_config_init(&cfg);
        cfg.failure_threshold = 1;
        for (int i = 0; i < 4000; i++) {
            char name[32];
            cb_circuit *c;
            snprintf(name, sizeof name, "c%04d", i);
            if (cb_circuit_get(cl, name, &cfg, &c) < 0)
                _exit(FILL_REGISTER);
            if (i % 100 == 0)
                cb_record(c, cb_allow(c), CB_FAILURE); /* trips: a transition, a history entry */
            if (kill(d.pid, 0) < 0)
                _exit(FILL_DIED);
        }
        if (!tsup_ping(&d))
            _exit(FILL_PING);
        cb_circuit *c;
        if (cb_circuit_get(cl, "c3900", &cfg, &c) < 0 || !tsup_wait_state(c, CB_OPEN))
            _exit(FILL_STATE);
        cb_client_close(cl);
        tsup_daemon_stop(&d);
        _exit(0);
    }
    int rc = child_status(pid);
    cr_assert_neq(rc, FILL_NS, "no private /dev/shm (unshare/mount failed)");
    cr_assert_eq(rc, 0, "step %d failed (FILL_DIED = %d: the daemon died)", rc, FILL_DIED);
}

/* Any worker of the group may write the lanes object, so it may also
 * ftruncate it: the daemon must not die of the SIGBUS that follows. */
Test(shm_full, a_worker_that_truncates_the_lanes_object_stops_nobody)
{
    struct tsup_daemon d;
    cb_client *cl;
    /* A slow heartbeat and drain tick (both check the object's size), and
     * the doorbell rung right after the truncation: the doorbell's drain
     * visits every lane, so the daemon touches the truncated part (SIGBUS,
     * restored by its guard) before a size check finds it - or, if a tick
     * comes first, the size check restores it. Either way it is undone. */
    struct tsup_daemon_opts o = {.tag = "trunc", .heartbeat_ms = 10000, .stale_limit_ms = 30000,
                                 .drain_interval_ms = 1000};
    tsup_fixture_start(&d, &cl, &o);
    char state[CB_SHM_NAME_MAX], lanes[CB_SHM_NAME_MAX], bell[CB_SOCKET_PATH_MAX + 8];
    cb__shm_names(d.instance, state, lanes);
    int fd = shm_open(lanes, O_RDWR, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 4096), 0);
    close(fd);
    snprintf(bell, sizeof bell, "%s.bell", d.socket);
    if ((fd = open(bell, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) >= 0) {
        cr_assert_eq(write(fd, "", 1), 1);
        close(fd);
    }
    cr_assert(tsup_wait_until(tsup_log_count(&d, "was truncated") >= 1, TSUP_LIVENESS_MS),
              "the daemon did not undo the truncation");
    cr_assert(tsup_ping(&d), "the daemon died");
    cb_config cfg = tsup_config(2, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "after", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_state(c, CB_OPEN), "the lanes do not work after the restoration");
    tsup_fixture_stop(&d, &cl);
}
