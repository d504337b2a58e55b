/*
 * test_notify.c - systemd's notify protocol as daemon/notify.h speaks it:
 * one datagram per send to $NOTIFY_SOCKET (a path, or '@' for an abstract
 * name), nothing at all without it, and the watchdog period from
 * $WATCHDOG_USEC when $WATCHDOG_PID is this process or unset.
 *
 * Each test binds its own datagram socket where systemd's would be and
 * reads what cbd sent; criterion runs each test in its own process, so
 * setenv stays within the test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "notify.h"

static char sock_path[sizeof ((struct sockaddr_un *)0)->sun_path];

static void plain_env(void)
{
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

static void remove_socket(void)
{
    if (sock_path[0] == '/')
        unlink(sock_path);
}

TestSuite(notify, .init = plain_env, .fini = remove_socket);

/* A datagram socket bound at name ("/path" or "@abstract"), as systemd's. */
static int bind_manager(const char *name)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(a.sun_path, name, len);
    if (name[0] == '@')
        a.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)), 0,
                 "bind %s: %s", name, strerror(errno));
    return fd;
}

/* The next datagram on fd (it must be there already), NUL terminated. */
static const char *next_datagram(int fd)
{
    static char buf[1024];
    ssize_t n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    cr_assert_geq(n, 0, "no datagram: %s", strerror(errno));
    buf[n] = '\0';
    return buf;
}

static void no_more_datagrams(int fd)
{
    char buf[16];
    cr_assert_lt(recv(fd, buf, sizeof buf, MSG_DONTWAIT), 0, "an extra datagram arrived");
}

static void path_socket(void)
{
    snprintf(sock_path, sizeof sock_path, "/tmp/cbd-test-notify-%d.sock", (int)getpid());
    unlink(sock_path);
}

Test(notify, without_notify_socket_every_send_is_a_silent_no_op)
{
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(n.fd, -1);
    cr_assert_eq(cbd_notify_send(&n, "READY=1"), 0);
    cr_assert_eq(cbd_notify_sendf(&n, "STATUS=serving %d circuits", 12), 0);
    cbd_notify_close(&n);
}

Test(notify, an_empty_notify_socket_is_the_same_as_none)
{
    setenv("NOTIFY_SOCKET", "", 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(n.fd, -1);
    cr_assert_eq(cbd_notify_send(&n, "READY=1"), 0);
}

Test(notify, each_send_is_one_datagram_to_a_path_socket)
{
    path_socket();
    int mgr = bind_manager(sock_path);
    setenv("NOTIFY_SOCKET", sock_path, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_send(&n, "READY=1\nSTATUS=serving 12 circuits"), 0);
    cr_assert_eq(cbd_notify_send(&n, "STOPPING=1"), 0);
    cr_assert_str_eq(next_datagram(mgr), "READY=1\nSTATUS=serving 12 circuits");
    cr_assert_str_eq(next_datagram(mgr), "STOPPING=1");
    no_more_datagrams(mgr);
    cbd_notify_close(&n);
    close(mgr);
}

Test(notify, an_at_sign_names_an_abstract_socket)
{
    char name[64];
    snprintf(name, sizeof name, "@cbd-test-notify-%d", (int)getpid());
    int mgr = bind_manager(name);
    setenv("NOTIFY_SOCKET", name, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_send(&n, "WATCHDOG=1"), 0);
    cr_assert_str_eq(next_datagram(mgr), "WATCHDOG=1");
    cbd_notify_close(&n);
    close(mgr);
}

Test(notify, sendf_formats_one_datagram)
{
    path_socket();
    int mgr = bind_manager(sock_path);
    setenv("NOTIFY_SOCKET", sock_path, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_sendf(&n, "STATUS=serving %d circuits, store %s", 12, "redis"), 0);
    cr_assert_str_eq(next_datagram(mgr), "STATUS=serving 12 circuits, store redis");
    no_more_datagrams(mgr);
    close(mgr);
    cbd_notify_close(&n);
}

Test(notify, a_relative_path_is_refused_as_unusable)
{
    setenv("NOTIFY_SOCKET", "run/notify.sock", 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), -EINVAL);
    cr_assert_eq(n.fd, -1, "the daemon goes on without: sends stay no-ops");
    cr_assert_eq(cbd_notify_send(&n, "READY=1"), 0);
}

Test(notify, a_path_too_long_for_a_unix_socket_is_refused)
{
    char path[sizeof sock_path + 8];
    memset(path, 'x', sizeof path - 1);
    path[0] = '/';
    path[sizeof path - 1] = '\0';
    setenv("NOTIFY_SOCKET", path, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), -EINVAL);
    cr_assert_eq(n.fd, -1);
}

Test(notify, a_send_nobody_receives_returns_the_error)
{
    path_socket(); /* named, never bound */
    setenv("NOTIFY_SOCKET", sock_path, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0, "init opens a socket only; it does not connect");
    int rc = cbd_notify_send(&n, "READY=1");
    cr_assert(rc == -ENOENT || rc == -ECONNREFUSED, "rc %d", rc);
    cbd_notify_close(&n);
}

Test(notify, close_makes_later_sends_no_ops_and_may_be_repeated)
{
    path_socket();
    int mgr = bind_manager(sock_path);
    setenv("NOTIFY_SOCKET", sock_path, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cbd_notify_close(&n);
    cr_assert_eq(cbd_notify_send(&n, "READY=1"), 0);
    no_more_datagrams(mgr);
    cbd_notify_close(&n);
    close(mgr);
}

Test(notify, the_watchdog_is_pinged_every_half_period)
{
    setenv("WATCHDOG_USEC", "30000000", 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(n.watchdog_usec, 30000000);
    cr_assert_eq(cbd_notify_watchdog_interval_ms(&n), 15000);
}

Test(notify, the_watchdog_applies_when_watchdog_pid_is_this_process)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_USEC", "2000000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_watchdog_interval_ms(&n), 1000);
}

Test(notify, a_watchdog_meant_for_another_process_is_ignored)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid() + 1);
    setenv("WATCHDOG_USEC", "2000000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_watchdog_interval_ms(&n), 0);
}

Test(notify, no_watchdog_usec_means_no_watchdog)
{
    struct cbd_notify n;
    cr_assert_eq(cbd_notify_init(&n), 0);
    cr_assert_eq(cbd_notify_watchdog_interval_ms(&n), 0);
}
