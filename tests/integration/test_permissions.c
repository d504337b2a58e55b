/*
 * test_permissions.c - who may do what on the control socket, decided by
 * the peer's credentials (SO_PEERCRED, SO_PEERGROUPS), and who may map the
 * segment at all (socket_group, segment_mode), and how many circuits a
 * non-admin uid may register (max_circuits_per_uid).
 *
 * Peers run as other users in forked children (setgroups, setresgid,
 * setresuid: the tests run as root) and report through an exit code and a
 * pipe, never through criterion; cbctl runs under setpriv(1). Groups used:
 * nogroup (the workers' group here), users and staff, which Debian has.
 * The test's directories are opened for traversal so other users can
 * reach the socket at all: the socket's own mode and group must decide.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;

static void stop(void)
{
    if (d.pid != 0)
        cr_expect_eq(tsup_daemon_stop(&d), 0, "cbd did not exit 0 on SIGTERM");
}

TestSuite(permissions, .fini = stop, .timeout = 60);

static unsigned gid_of(const char *name)
{
    struct group *g = getgrnam(name);
    cr_assert_not_null(g, "this host has no group %s", name);
    return (unsigned)g->gr_gid;
}

static unsigned nobody(void)
{
    struct passwd *pw = getpwnam("nobody");
    cr_assert_not_null(pw, "this host has no user nobody");
    return (unsigned)pw->pw_uid;
}

/* cbd with extra options; the directories on the way to its socket open to all. */
static void start(const char *const *extra)
{
    struct tsup_daemon_opts o = {0};
    for (int i = 0; extra[i] != NULL; i++)
        o.extra[i] = extra[i];
    cr_assert_eq(tsup_daemon_start(&d, &o), 0, "cbd did not start");
    cr_assert_eq(chmod(tsup_tmpdir(), 0711), 0);
    cr_assert_eq(chmod(d.dir, 0711), 0);
}

/* What a peer saw: its exit code says how far it got, msg the daemon's words. */
struct peer_result {
    int code;       /* 0 ok; 1 connect failed (errno in err); 2 error reply (err); 3 no reply */
    int err;
    char msg[512];
};

/* In a child: become uid/gid with the given supplementary groups, then
 * send {"op": op, "name": name} and report through fd. */
static void peer_main(int fd, unsigned uid, unsigned gid, const gid_t *groups, int ngroups, const char *op,
                      const char *name)
{
    struct peer_result res = {0};
    if (setgroups((size_t)ngroups, groups) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
        _exit(99);
    int s = tsup_ctl_connect(&d);
    if (s < 0) {
        res.code = 1;
        res.err = -s;
    } else {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct tsup_reply r;
        tsup_req_begin(&sb, &pk, op, 2);
        cb__mp_kv_str(&pk, "name", name);
        if (tsup_ctl_call(s, &sb, &r) != 1) {
            res.code = 3;
        } else if (!tsup_reply_ok(&r)) {
            res.code = 2;
            res.err = (int)tsup_reply_error(&r);
            cb__mp_get_str(r.map, "message", res.msg, sizeof res.msg);
        }
    }
    _exit(write(fd, &res, sizeof res) == sizeof res ? 0 : 98);
}

static struct peer_result as_peer(unsigned uid, unsigned gid, const gid_t *groups, int ngroups, const char *op,
                                  const char *name)
{
    int p[2];
    struct peer_result res = {.code = -1};
    cr_assert_eq(pipe(p), 0);
    pid_t pid = tsup_fork();
    if (pid == 0) {
        close(p[0]);
        peer_main(p[1], uid, gid, groups, ngroups, op, name);
    }
    close(p[1]);
    int status;
    ssize_t n = read(p[0], &res, sizeof res);
    close(p[0]);
    waitpid(pid, &status, 0);
    tsup_untrack(pid);
    cr_assert(n == sizeof res && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the peer failed before asking (exit %d)", WEXITSTATUS(status));
    return res;
}

Test(permissions, a_worker_in_the_socket_group_registers_but_may_not_reset)
{
    static const char *const extra[] = {"--socket-group", "nogroup", "--admin-group", "staff", NULL};
    start(extra);
    struct peer_result r = as_peer(nobody(), gid_of("nogroup"), NULL, 0, "register", "payments");
    cr_assert_eq(r.code, 0, "register from the socket's group failed: code %d err %d %s", r.code, r.err, r.msg);
    r = as_peer(nobody(), gid_of("nogroup"), NULL, 0, "reset", "payments");
    cr_assert_eq(r.code, 2, "a worker was allowed to reset (code %d)", r.code);
    cr_assert_eq(r.err, -EPERM);
    cr_assert_not_null(strstr(r.msg, "permission denied: 'reset' needs root"), "message: %s", r.msg);
    cr_assert_not_null(strstr(r.msg, "group 'staff'"), "the message does not name the admin group: %s", r.msg);
    cr_assert_geq(tsup_log_count(&d, "refused 'reset' to uid"), 1, "the refusal was not logged");
}

Test(permissions, a_member_of_the_admin_group_may_force_and_reset)
{
    static const char *const extra[] = {"--socket-group", "nogroup", "--admin-group", "staff", NULL};
    start(extra);
    cr_assert_eq(as_peer(0, 0, NULL, 0, "register", "ledger").code, 0);
    gid_t staff = gid_of("staff");
    struct peer_result r = as_peer(nobody(), gid_of("nogroup"), &staff, 1, "force_open", "ledger");
    cr_assert_eq(r.code, 0, "an admin-group member was refused: %d %s", r.err, r.msg);
    r = as_peer(nobody(), gid_of("nogroup"), &staff, 1, "reset", "ledger");
    cr_assert_eq(r.code, 0, "an admin-group member was refused: %d %s", r.err, r.msg);
}

Test(permissions, a_peer_outside_the_socket_group_cannot_connect)
{
    static const char *const extra[] = {"--socket-group", "nogroup", NULL};
    start(extra);
    struct stat st;
    cr_assert_eq(stat(d.socket, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "socket mode %o", st.st_mode & 0777);
    cr_assert_eq(st.st_gid, gid_of("nogroup"));
    struct peer_result r = as_peer(nobody(), gid_of("users"), NULL, 0, "register", "x");
    cr_assert_eq(r.code, 1, "a peer outside the socket's group connected (code %d)", r.code);
    cr_assert_eq(r.err, EACCES);
}

/* The whole worker path as another user: map the segment, register, report. */
static int worker_main(unsigned uid, unsigned gid, const char *instance)
{
    cb_client *cl;
    cb_circuit *c;
    if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
        return 10;
    if (cb_client_open(&cl, instance) < 0)
        return 11;
    if (cb_circuit_get(cl, "shop", NULL, &c) < 0)
        return 12;
    cb_ticket t = cb_allow(c);
    if (!cb_permitted(t))
        return 13;
    cb_record(c, t, CB_FAILURE);
    cb_client_close(cl);
    return 0;
}

Test(permissions, the_segment_belongs_to_the_socket_group_and_its_workers_use_it)
{
    static const char *const extra[] = {"--socket-group", "nogroup", NULL};
    start(extra);
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/cbd.%s", d.instance);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0640, "state region mode %o", st.st_mode & 0777);
    cr_assert_eq(st.st_gid, gid_of("nogroup"));
    snprintf(path, sizeof path, "/dev/shm/cbd.%s.lanes", d.instance);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0660, "lanes region mode %o", st.st_mode & 0777);
    pid_t pid = tsup_fork();
    if (pid == 0)
        _exit(worker_main(nobody(), gid_of("nogroup"), d.instance));
    int status;
    waitpid(pid, &status, 0);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the worker of the group failed at step %d",
              WEXITSTATUS(status));
    cb_client *cl = tsup_client(&d);
    cb_circuit *c = tsup_circuit(cl, "shop", NULL);
    cr_assert(tsup_wait_drained(c, 1), "the other user's outcome never arrived");
    cb_client_close(cl);
}

Test(permissions, cbctl_as_another_user_exits_permission_denied)
{
    static const char *const extra[] = {"--socket-group", "nogroup", NULL};
    start(extra);
    cr_assert_eq(as_peer(0, 0, NULL, 0, "register", "api").code, 0);
    char *argv[] = {"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    (char *)tsup_cbctl_path(), "--socket", d.socket, "--instance", d.instance, "reset", "api", NULL};
    pid_t pid = tsup_fork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status));
    if (WEXITSTATUS(status) == 126 || WEXITSTATUS(status) == 127) /* a private build tree */
        cr_skip_test("nobody cannot run %s (setpriv exit %d)", argv[4], WEXITSTATUS(status));
    cr_assert_eq(WEXITSTATUS(status), 5, "cbctl reset as nobody exited %d, not 5 (permission denied)",
                 WEXITSTATUS(status));
}

/* ---- the registration quota (max_circuits_per_uid) ------------------------------ */

/* In a child as uid (group nogroup): cb_circuit_get of name through libcb;
 * its return value through the exit code (0, or 100 + -errno). */
static int libcb_register_as(unsigned uid, const char *name)
{
    unsigned g = gid_of("nogroup");
    pid_t pid = tsup_fork();
    if (pid == 0) {
        cb_client *cl;
        cb_circuit *c;
        if (setgroups(0, NULL) < 0 || setresgid(g, g, g) < 0 || setresuid(uid, uid, uid) < 0)
            _exit(99);
        int rc = cb_client_open(&cl, d.instance);
        if (rc == 0)
            rc = cb_circuit_get(cl, name, NULL, &c);
        _exit(rc == 0 ? 0 : 100 + (-rc & 0x7f));
    }
    int status;
    waitpid(pid, &status, 0);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) != 99, "the worker as uid %u did not run", uid);
    return WEXITSTATUS(status) == 0 ? 0 : -(WEXITSTATUS(status) - 100);
}

Test(permissions, a_uid_past_its_circuit_quota_is_refused_new_names_and_keeps_its_own)
{
    static const char *const extra[] = {"--socket-group", "nogroup", "--max-circuits-per-uid=3", NULL};
    start(extra);
    unsigned gid = gid_of("nogroup");
    const char *names[] = {"q1", "q2", "q3"};
    for (int i = 0; i < 3; i++) {
        struct peer_result r = as_peer(nobody(), gid, NULL, 0, "register", names[i]);
        cr_assert_eq(r.code, 0, "registration %d of a quota of 3 failed: %d %s", i + 1, r.err, r.msg);
    }
    struct peer_result r = as_peer(nobody(), gid, NULL, 0, "register", "q4");
    cr_assert_eq(r.code, 2, "a 4th circuit on a quota of 3 was registered (code %d)", r.code);
    cr_assert_eq(r.err, -EDQUOT);
    cr_assert_not_null(strstr(r.msg, "max_circuits_per_uid"), "the message does not name the option: %s", r.msg);
    cr_assert_eq(libcb_register_as(nobody(), "q5"), -EDQUOT, "libcb does not pass the quota's error on");

    r = as_peer(nobody(), gid, NULL, 0, "register", "q2");
    cr_assert_eq(r.code, 0, "an existing name no longer resolves past the quota: %d %s", r.err, r.msg);
    cr_assert_eq(libcb_register_as(nobody(), "q3"), 0, "libcb cannot use its own circuit past the quota");
    r = as_peer(65533, gid, NULL, 0, "register", "other-user");
    cr_assert_eq(r.code, 0, "another uid is limited by this uid's quota: %d %s", r.err, r.msg);

    const char *root_names[] = {"r1", "r2", "r3", "r4", "r5"};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(as_peer(0, 0, NULL, 0, "register", root_names[i]).code, 0, "root is limited by a quota");
    cr_assert_eq(tsup_stat(&d, "circuits"), 9);
}

Test(permissions, circuits_of_an_admin_group_member_do_not_count_against_a_quota)
{
    static const char *const extra[] = {"--socket-group", "nogroup", "--admin-group", "staff",
                                        "--max-circuits-per-uid=1", NULL};
    start(extra);
    gid_t staff = gid_of("staff");
    const char *names[] = {"a1", "a2", "a3"};
    for (int i = 0; i < 3; i++) {
        struct peer_result r = as_peer(nobody(), gid_of("nogroup"), &staff, 1, "register", names[i]);
        cr_assert_eq(r.code, 0, "an admin's registration %d was refused: %d %s", i + 1, r.err, r.msg);
    }
    struct peer_result r = as_peer(nobody(), gid_of("nogroup"), NULL, 0, "register", "w1");
    cr_assert_eq(r.code, 0, "the same uid without the admin group has used its quota of 1 already: %s", r.msg);
}

Test(permissions, a_worker_may_not_remove_a_circuit_and_is_told_who_may)
{
    static const char *const extra[] = {"--socket-group", "nogroup", "--admin-group", "staff", NULL};
    start(extra);
    cr_assert_eq(as_peer(0, 0, NULL, 0, "register", "payments").code, 0);
    struct peer_result r = as_peer(nobody(), gid_of("nogroup"), NULL, 0, "remove", "payments");
    cr_assert_eq(r.code, 2, "a worker was allowed to remove a circuit (code %d)", r.code);
    cr_assert_eq(r.err, -EPERM);
    cr_assert_not_null(strstr(r.msg, "permission denied: 'remove' needs root"), "message: %s", r.msg);
    cr_assert_not_null(strstr(r.msg, "group 'staff'"), "the message does not name the admin group: %s", r.msg);
    cr_assert_eq(tsup_stat(&d, "circuits"), 1, "the refused remove removed something");
    r = as_peer(0, 0, NULL, 0, "show", "payments");
    cr_assert_eq(r.code, 0, "the circuit is gone after a refused remove: %d %s", r.err, r.msg);
}
