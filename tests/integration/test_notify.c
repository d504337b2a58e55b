/*
 * test_notify.c - the sd_notify protocol as systemd would see it: a
 * datagram socket named in $NOTIFY_SOCKET, read by a thread of the test
 * while cbd starts, reloads and stops.
 *
 * READY=1 must not come before the segment is ready: the listener looks at
 * the sender's segment the moment READY=1 arrives (cbd stores ready with
 * release before it sends; the datagram orders the rest). The sender is
 * known from the datagram's credentials (SO_PASSCRED), its instance from
 * its command line. RELOADING=1 and a new
 * READY=1 frame a reload, STOPPING=1 comes on SIGTERM, and with
 * $WATCHDOG_USEC set WATCHDOG=1 keeps coming.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tsup.h"

static struct tsup_daemon d;

/* What the listener saw, in arrival order. */
static struct {
    int fd;
    pthread_t thread;
    pthread_mutex_t lock;
    char log[65536];      /* every datagram, each followed by "\n--\n" */
    int ready_seen;       /* READY=1 datagrams */
    int ready_before_segment; /* READY=1 while the segment was not ready */
    atomic_int stop;
} L = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void stop(void)
{
    if (d.pid != 0)
        tsup_daemon_stop(&d);
    atomic_store(&L.stop, 1);
    if (L.thread)
        pthread_join(L.thread, NULL);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
}

TestSuite(notify, .fini = stop, .timeout = 60);

/* The value of the last --instance in pid's command line (tsup passes it). */
static int instance_of(pid_t pid, char *out, size_t size)
{
    char path[64], args[8192];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(args, 1, sizeof args - 1, f);
    fclose(f);
    args[n] = '\0';
    out[0] = '\0';
    for (size_t i = 0; i < n; i += strlen(args + i) + 1) {
        if (strcmp(args + i, "--instance") == 0 && i + 11 < n)
            snprintf(out, size, "%s", args + i + 11);
    }
    return out[0] ? 0 : -1;
}

/* Is the segment of the daemon with this pid published right now? */
static int segment_ready(pid_t pid)
{
    size_t size;
    char instance[CB_INSTANCE_MAX + 1];
    if (instance_of(pid, instance, sizeof instance) < 0)
        return 0;
    struct cb_seg_header *h = tsup_seg_map(instance, 0, &size);
    if (h == NULL)
        return 0;
    /* Acquire pairs with cbd's release store of ready. */
    int ok = atomic_load_explicit(&h->ready, memory_order_acquire) == 1;
    munmap(h, size);
    return ok;
}

static void *listen_main(void *arg)
{
    (void)arg;
    char buf[4096];
    while (!atomic_load(&L.stop)) {
        struct pollfd p = {.fd = L.fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(sizeof(struct ucred))];
        } ctl;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf - 1};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctl, .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(L.fd, &m, 0);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        if (n <= 0 || c == NULL || c->cmsg_type != SCM_CREDENTIALS)
            continue;
        struct ucred cred;
        memcpy(&cred, CMSG_DATA(c), sizeof cred);
        buf[n] = '\0';
        int ready = strstr(buf, "READY=1") != NULL;
        int seg = ready ? segment_ready(cred.pid) : 1;
        pthread_mutex_lock(&L.lock);
        L.ready_seen += ready;
        L.ready_before_segment += !seg;
        size_t used = strlen(L.log);
        snprintf(L.log + used, sizeof L.log - used, "%s\n--\n", buf);
        pthread_mutex_unlock(&L.lock);
    }
    return NULL;
}

/* Binds the listener, names it in $NOTIFY_SOCKET, starts reading. */
static void listen_start(void)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s/notify.sock", tsup_tmpdir());
    L.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(L.fd, 0);
    cr_assert_eq(bind(L.fd, (struct sockaddr *)&a, sizeof a), 0, "bind %s: %s", a.sun_path, strerror(errno));
    int on = 1;
    cr_assert_eq(setsockopt(L.fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on), 0);
    cr_assert_eq(setenv("NOTIFY_SOCKET", a.sun_path, 1), 0);
    cr_assert_eq(pthread_create(&L.thread, NULL, listen_main, NULL), 0);
}

/* Count of datagrams so far containing needle. */
static int seen(const char *needle)
{
    int n = 0;
    pthread_mutex_lock(&L.lock);
    for (const char *p = L.log; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    pthread_mutex_unlock(&L.lock);
    return n;
}

static void start(void)
{
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0, "cbd did not start");
}

Test(notify, ready_comes_only_once_the_segment_is_ready_with_a_status)
{
    listen_start();
    start();
    cr_assert(tsup_wait_until(seen("READY=1") >= 1, TSUP_LIVENESS_MS), "no READY=1:\n%s", L.log);
    cr_assert_eq(L.ready_before_segment, 0, "READY=1 came before the segment was ready");
    cr_assert_geq(seen("STATUS=serving 0 circuits"), 1, "READY=1 without a STATUS=:\n%s", L.log);
}

Test(notify, a_reload_is_framed_by_reloading_and_ready)
{
    listen_start();
    start();
    cr_assert(tsup_wait_until(seen("READY=1") == 1, TSUP_LIVENESS_MS));
    cr_assert_eq(kill(d.pid, SIGHUP), 0);
    cr_assert(tsup_wait_until(seen("READY=1") == 2, TSUP_LIVENESS_MS), "no READY=1 after the reload:\n%s", L.log);
    cr_assert_eq(seen("RELOADING=1"), 1, "%s", L.log);
    cr_assert_eq(seen("MONOTONIC_USEC="), 1, "%s", L.log);
    const char *reloading = strstr(L.log, "RELOADING=1"), *second = strstr(strstr(L.log, "READY=1") + 1, "READY=1");
    cr_assert(reloading < second, "READY=1 came before RELOADING=1:\n%s", L.log);
}

Test(notify, sigterm_sends_stopping)
{
    listen_start();
    start();
    cr_assert(tsup_wait_until(seen("READY=1") == 1, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_daemon_stop(&d), 0);
    cr_assert(tsup_wait_until(seen("STOPPING=1") == 1, TSUP_LIVENESS_MS), "no STOPPING=1:\n%s", L.log);
}

Test(notify, watchdog_pings_every_half_period)
{
    cr_assert_eq(setenv("WATCHDOG_USEC", "200000", 1), 0); /* 200 ms: a ping every 100 ms */
    listen_start();
    start();
    cr_assert(tsup_wait_until(seen("WATCHDOG=1") >= 3, TSUP_LIVENESS_MS), "WATCHDOG=1 did not keep coming:\n%s",
              L.log);
    cr_assert_eq(tsup_log_count(&d, "WATCHDOG=1 every 100 ms"), 1);
}

Test(notify, no_notify_socket_means_no_datagrams_and_no_harm)
{
    start(); /* NOTIFY_SOCKET unset: every send is a no-op */
    cr_assert(tsup_ping(&d));
}
