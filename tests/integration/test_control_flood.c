/*
 * test_control_flood.c - no local user can lock others out of the control
 * socket: connection caps per uid and in total with a reserve for admins,
 * a frame that must be complete soon after its first byte, idle
 * connections closed (and libcb reconnecting on its own), and a flood of
 * connection attempts costing bounded memory and log lines.
 *
 * Peers run as other uids in forked children (setresuid: the tests run as
 * root) in the socket's group (nogroup), so the socket's mode lets them in
 * and only the daemon's limits decide. A "holder" opens connections and
 * keeps them until the test ends; it either stays silent from the start
 * (the attack) or first checks with a ping that each connection was
 * admitted (to fill the daemon up to an exact count).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(control_flood, .fini = stop, .timeout = 120);

enum { UID_A = 60001, UID_B = 60002, UID_C = 60003 };

static unsigned nogroup(void)
{
    struct group *g = getgrnam("nogroup");
    cr_assert_not_null(g, "this host has no group nogroup");
    return (unsigned)g->gr_gid;
}

/* cbd in the socket group nogroup with extra options (NULL terminated); the
 * directories on the way to its socket open to every user. */
static void start(const char *const *extra)
{
    struct tsup_daemon_opts o = {.extra = {"--socket-group", "nogroup"}};
    for (int i = 0; extra[i] != NULL; i++)
        o.extra[2 + i] = extra[i];
    tsup_fixture_start(&d, &cl, &o);
    cr_assert_eq(chmod(tsup_tmpdir(), 0711), 0);
    cr_assert_eq(chmod(d.dir, 0711), 0);
}

/* What a peer saw: rc 1 ok, 2 an error reply (err, msg), 0 closed without
 * a reply, < 0 an error of its own; hold and flood put in rc how many
 * connections they keep. */
struct peer_result {
    int rc;
    int64_t err;
    char msg[256];
};

/* ping on the connection fd. */
static struct peer_result ping_on(int fd)
{
    struct peer_result res = {0};
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct tsup_reply r;
    tsup_req_begin(&sb, &pk, "ping", 1);
    res.rc = tsup_ctl_call(fd, &sb, &r);
    msgpack_sbuffer_destroy(&sb);
    if (res.rc != 1)
        return res;
    res.rc = tsup_reply_ok(&r) ? 1 : 2;
    res.err = tsup_reply_error(&r);
    cb__mp_get_str(r.map, "message", res.msg, sizeof res.msg);
    tsup_reply_free(&r);
    return res;
}

/* Runs body(arg) in a child as uid (group nogroup) and returns what it
 * saw. With stay, the child then keeps the connections it opened until
 * the test ends. */
static struct peer_result as_uid(unsigned uid, struct peer_result (*body)(const void *), const void *arg, bool stay)
{
    int p[2];
    struct peer_result res = {.rc = -1};
    gid_t g = nogroup();
    cr_assert_eq(pipe(p), 0);
    pid_t pid = tsup_fork();
    if (pid == 0) {
        close(p[0]);
        if (setgroups(0, NULL) < 0 || setresgid(g, g, g) < 0 || setresuid(uid, uid, uid) < 0)
            _exit(99);
        res = body(arg);
        if (write(p[1], &res, sizeof res) != sizeof res)
            _exit(98);
        while (stay)
            pause();
        _exit(0);
    }
    close(p[1]);
    ssize_t n = read(p[0], &res, sizeof res);
    close(p[0]);
    cr_assert_eq(n, (ssize_t)sizeof res, "the peer as uid %u failed", uid);
    if (!stay) {
        waitpid(pid, NULL, 0);
        tsup_untrack(pid);
    }
    return res;
}

static struct peer_result ping_body(const void *arg)
{
    (void)arg;
    int fd = tsup_ctl_connect(&d);
    struct peer_result res = {.rc = fd};
    if (fd >= 0) {
        res = ping_on(fd);
        close(fd);
    }
    return res;
}

/* ping on a fresh connection as uid. */
static struct peer_result ping_as(unsigned uid)
{
    return as_uid(uid, ping_body, NULL, false);
}

struct hold_args {
    int n;
    bool silent;
};

static struct peer_result hold_body(const void *arg)
{
    const struct hold_args *a = arg;
    struct peer_result res = {0};
    struct tsup_deadline dl = tsup_deadline_in(TSUP_LIVENESS_MS);
    while (res.rc < a->n) {
        int fd = tsup_ctl_connect(&d);
        if (fd < 0)
            return res;
        if (a->silent || ping_on(fd).rc == 1) {
            res.rc++;
        } else {
            close(fd);
            if (!tsup_deadline_wait(&dl))
                return res;
        }
    }
    return res;
}

/* A child as uid holding n connections until the test ends. silent: it
 * sends nothing at all; otherwise it pings on each connection first and
 * retries until the daemon admits it (another peer's connection may still
 * be closing). Returns once the child holds them all. */
static void hold(unsigned uid, int n, bool silent)
{
    struct hold_args a = {.n = n, .silent = silent};
    cr_assert_eq(as_uid(uid, hold_body, &a, true).rc, n, "the holder as uid %u could not open its connections", uid);
}

/* Waits until the daemon counts n connections besides the one asking. */
static bool connections_are(uint64_t n)
{
    return tsup_wait_until(tsup_stat(&d, "connections") == n + 1, TSUP_LIVENESS_MS);
}

/* ---- connection caps ---------------------------------------------------------- */

Test(control_flood, one_uid_holding_its_quota_of_silent_connections_locks_out_only_itself)
{
    static const char *const extra[] = {"--max-connections-per-uid=4", "--max-connections=64", NULL};
    start(extra);
    hold(UID_A, 4, true);
    cr_assert(connections_are(4), "the daemon does not hold the 4 silent connections");

    struct peer_result r = ping_as(UID_A);
    cr_assert_eq(r.rc, 2, "a 5th connection of uid %u was not refused with a reply (rc %d)", UID_A, r.rc);
    cr_assert_eq(r.err, -EUSERS, "error %lld", (long long)r.err);
    cr_assert_str_eq(r.msg, "too many connections from uid 60001 (max_connections_per_uid = 4)");

    r = ping_as(UID_B);
    cr_assert_eq(r.rc, 1, "another uid was locked out: rc %d %s", r.rc, r.msg);
    cr_assert(tsup_ping(&d), "root was locked out");
    cr_assert_eq(tsup_stat(&d, "connections_refused_per_uid"), 1);
    cr_assert_eq(tsup_stat(&d, "connections_refused"), 1);
    cr_assert_geq(tsup_log_count(&d, "too many connections from uid 60001"), 1, "the refusal was not logged");
}

Test(control_flood, connections_up_to_the_admin_reserve_leave_room_for_root_only)
{
    static const char *const extra[] = {"--max-connections=16", "--admin-reserved-connections=4",
                                        "--max-connections-per-uid=5", NULL};
    start(extra);
    hold(UID_A, 5, false);
    hold(UID_B, 5, false);
    hold(UID_C, 2, false);
    cr_assert(connections_are(12));

    struct peer_result r = ping_as(UID_C);
    cr_assert_eq(r.rc, 2, "uid %u got a connection of the admins' reserve (rc %d)", UID_C, r.rc);
    cr_assert_eq(r.err, -EUSERS);
    cr_assert_str_eq(r.msg, "the last 4 of 16 connections are reserved for admins (admin_reserved_connections = 4)");
    cr_assert(tsup_ping(&d), "root was locked out by connections of other users");

    /* Root fills the reserve; then even root is refused, by max_connections. */
    int fds[8], held = 0;
    struct peer_result last = {0};
    while (held < 8 && last.rc != 2) {
        fds[held] = tsup_ctl_connect(&d);
        cr_assert_geq(fds[held], 0);
        last = ping_on(fds[held++]);
        cr_assert(last.rc == 1 || last.rc == 2, "no reply to root's connection %d", held);
    }
    cr_assert_eq(held, 5, "root got %d connections beside 12 of others in 16 (expected 4, the 5th refused)", held);
    cr_assert_eq(last.err, -EUSERS);
    cr_assert_str_eq(last.msg, "cbd has 16 connections open, its limit (max_connections = 16)");
    close(fds[0]);
    cr_assert(tsup_wait_until(tsup_ping(&d), TSUP_LIVENESS_MS), "root cannot get the freed connection");
    for (int i = 1; i < held; i++)
        close(fds[i]);
    cr_assert_eq(tsup_stat(&d, "connections_refused_admin_reserved"), 1);
    cr_assert_geq(tsup_stat(&d, "connections_refused_max_connections"), 1);
}

/* ---- timeouts ------------------------------------------------------------------ */

Test(control_flood, a_frame_trickled_one_byte_at_a_time_is_cut_off_by_frame_timeout)
{
    static const char *const extra[] = {"--frame-timeout-ms=1000", NULL};
    start(extra);
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    cr_assert_eq(tsup_ctl_send_raw(fd, "\0\0\0\x64", 4), 0); /* 100 bytes promised */
    int64_t first = tsup_now_ms();
    int sent = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    /* One byte every 250 ms: each arrives well within the timeout of the
     * one before, so only a deadline from the first byte ends this. */
    while (poll(&p, 1, 250) == 0 && tsup_now_ms() - first < 3 * TSUP_LIVENESS_MS) {
        cr_assert_eq(tsup_ctl_send_raw(fd, "x", 1), 0, "the connection broke without a reply");
        sent++;
    }
    cr_assert(p.revents != 0, "a trickle of %d bytes kept the frame open for %lld ms", sent,
              (long long)(tsup_now_ms() - first));
    cr_assert_geq(sent, 3, "closed after %d bytes: before the frame timeout", sent);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_read(fd, &r), 1, "closed without saying why");
    cr_assert_eq(tsup_reply_error(&r), -ETIMEDOUT);
    char msg[256];
    cr_assert_eq(cb__mp_get_str(r.map, "message", msg, sizeof msg), 0);
    cr_assert_str_eq(msg, "request frame not complete within 1000 ms of its first byte (frame_timeout_ms = 1000)");
    tsup_reply_free(&r);
    cr_assert_eq(tsup_ctl_read(fd, &r), 0, "the connection stayed open after the timeout");
    close(fd);
    cr_assert_eq(tsup_stat(&d, "connections_closed_frame_timeout"), 1);
}

Test(control_flood, an_idle_client_connection_is_closed_and_libcb_reconnects_on_its_next_request)
{
    static const char *const extra[] = {"--idle-timeout-ms=300", NULL};
    start(extra);
    int sub = tsup_ctl_connect(&d);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct tsup_reply r;
    tsup_req_begin(&sb, &pk, "subscribe", 1);
    cr_assert_eq(tsup_ctl_call(sub, &sb, &r), 1);
    cr_assert(tsup_reply_ok(&r));
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);

    cb_config cfg = tsup_config(1, 1, 1, 60000);
    tsup_circuit(cl, "first", &cfg); /* opens libcb's control connection */
    cr_assert(tsup_wait_until(tsup_stat(&d, "connections_closed_idle") >= 1, TSUP_LIVENESS_MS),
              "the idle libcb connection was never closed");
    cb_circuit *second = tsup_circuit(cl, "second", &cfg); /* a new name: a request on the closed connection */
    cr_assert_eq(tsup_stat(&d, "circuits"), 2);

    /* The subscriber was idle all along, and still hears transitions. */
    cr_assert_eq(tsup_record_n(second, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(second, CB_OPEN));
    cr_assert_eq(tsup_ctl_read(sub, &r), 1, "the idle subscriber was disconnected");
    char name[64];
    cr_assert_eq(cb__mp_get_str(r.map, "name", name, sizeof name), 0);
    cr_assert_str_eq(name, "second");
    tsup_reply_free(&r);
    close(sub);
}

/* ---- a flood ------------------------------------------------------------------- */

static struct peer_result flood_body(const void *arg)
{
    struct peer_result res = {0};
    for (int i = 0; i < *(const int *)arg; i++)
        res.rc += tsup_ctl_connect(&d) >= 0;
    return res;
}

/* A child as uid connecting n times as fast as it can and keeping every
 * connection (the daemon closes the ones it refuses); returns once it is
 * done. */
static void flood(unsigned uid, int n)
{
    int connected = as_uid(uid, flood_body, &n, true).rc;
    cr_assert_eq(connected, n, "the flooding peer as uid %u connected %d times of %d", uid, connected, n);
}

Test(control_flood, ten_thousand_connection_attempts_cost_bounded_memory_and_log_lines)
{
    enum { ATTEMPTS = 10000, PER_UID = 64 };
    static const char *const extra[] = {NULL}; /* the defaults: 64 per uid, 1024 in all */
    start(extra);
    /* A first flood of the same size touches the pages the daemon needs at
     * the peak of any flood (connections accepted and not yet closed); the
     * second must cost nothing more: nothing is kept per attempt. */
    flood(UID_C, ATTEMPTS);
    cr_assert(tsup_wait_until(tsup_stat(&d, "connections_refused_per_uid") == ATTEMPTS - PER_UID, TSUP_LIVENESS_MS));
    /* The daemon's anonymous memory: what its heap and stacks hold. The
     * shared segment's pages are left out: the segment has a fixed size,
     * and when a periodic pass first touches them does not depend on the
     * flood. */
    long rss_before = tsup_proc_anon_kib(d.pid);
    int lines_before = tsup_log_count(&d, "control:");
    int64_t t0 = tsup_now_ms();
    flood(UID_A, ATTEMPTS);
    uint64_t refused = 0;
    cr_assert(tsup_wait_until((refused = tsup_stat(&d, "connections_refused_per_uid") - (ATTEMPTS - PER_UID)) ==
                                  ATTEMPTS - PER_UID,
                              TSUP_LIVENESS_MS),
              "%llu of %d attempts refused, expected %d", (unsigned long long)refused, ATTEMPTS,
              ATTEMPTS - PER_UID);
    int64_t elapsed_s = (tsup_now_ms() - t0) / 1000;
    long rss_after = tsup_proc_anon_kib(d.pid);
    int lines = tsup_log_count(&d, "control:") - lines_before;
    fprintf(stderr, "flood: %d attempts from uid %u, %llu refused (max_connections_per_uid), %d held; cbd anonymous resident "
                    "%ld KiB before, %ld KiB after; %d log lines in %lld s\n", ATTEMPTS, UID_A,
            (unsigned long long)refused, PER_UID, rss_before, rss_after, lines, (long long)elapsed_s);
    cr_assert_leq(lines, elapsed_s + 3, "%d log lines about the control socket in %lld s", lines,
                  (long long)elapsed_s);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    (void)rss_after; /* a sanitizer build's resident size is mostly shadow memory */
#else
    cr_assert_lt(rss_after - rss_before, 1024, "cbd grew by %ld KiB under the flood", rss_after - rss_before);
#endif
    cr_assert(tsup_ping(&d), "root was locked out after the flood");
    struct peer_result r = ping_as(UID_B);
    cr_assert_eq(r.rc, 1, "another uid was locked out after the flood: %s", r.msg);
}
