/*
 * test_prefork.c - a prefork server's life with libcb: the master opens the
 * client and registers a circuit (so it has a control connection), then
 * forks workers that register circuits of their own, all at once.
 *
 * Each process must talk to cbd over a connection of its own: a child that
 * wrote on the master's inherited socket would read replies meant for its
 * siblings and bind a handle to another circuit's slot (or fail with a
 * protocol error). Checked: every registration of every child succeeds and
 * every handle it gets is the circuit it asked for (cb_info_get names it),
 * and the master's connection still works afterwards.
 *
 * Many prefork servers close every descriptor they inherited once they have
 * forked, and reuse the numbers for their own files. libcb's descriptors
 * (the segment's objects, the doorbell FIFO) then name someone else's file:
 * libcb must never write into it (a doorbell ring) nor close it
 * (cb_client_close).
 *
 * Children report through a MAP_SHARED page and their exit status, never
 * through criterion's assertions (which belong to the test process alone).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tsup.h"

enum { CHILDREN = 16, NAMES_PER_CHILD = 50 };

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(prefork, .fini = stop, .timeout = 120);

/* Shared by the test and every child. */
struct shared {
    _Atomic int ready;         /* children waiting at the start line */
    _Atomic int go;
    _Atomic int errors;        /* cb_circuit_get or cb_info_get failed */
    _Atomic int wrong_circuit; /* a handle named another circuit */
    _Atomic int first_error;   /* the first error code seen */
    char first_wrong[320];     /* "asked for X, got Y" for the first wrong handle */
};

static struct shared *sh;

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static void note_error(int rc)
{
    int none = 0;
    atomic_compare_exchange_strong(&sh->first_error, &none, rc);
    atomic_fetch_add(&sh->errors, 1);
}

/* A child: register NAMES_PER_CHILD new circuits through the inherited
 * client, each checked by name. */
static void child(int n)
{
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go))
        nap_us(50);
    for (int i = 0; i < NAMES_PER_CHILD; i++) {
        char name[64];
        snprintf(name, sizeof name, "worker%d.downstream%d", n, i);
        cb_circuit *c;
        int rc = cb_circuit_get(cl, name, NULL, &c);
        if (rc < 0) {
            note_error(rc);
            continue;
        }
        cb_info info;
        if ((rc = cb_info_get(c, &info)) < 0) {
            note_error(rc);
            continue;
        }
        if (strcmp(info.name, name) != 0 && atomic_fetch_add(&sh->wrong_circuit, 1) == 0)
            snprintf(sh->first_wrong, sizeof sh->first_wrong, "asked for %s, got %s", name, info.name);
    }
    _exit(0);
}

Test(prefork, children_of_a_registered_master_register_at_once_each_on_its_own_connection)
{
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    tsup_fixture_start(&d, &cl, NULL);
    cb_circuit *master = tsup_circuit(cl, "master.downstream", NULL); /* the master's connection exists now */

    pid_t pids[CHILDREN];
    for (int n = 0; n < CHILDREN; n++) {
        pids[n] = tsup_fork();
        cr_assert_geq(pids[n], 0, "fork failed");
        if (pids[n] == 0)
            child(n);
    }
    cr_assert(tsup_wait_until(atomic_load(&sh->ready) == CHILDREN, TSUP_LIVENESS_MS), "the children never started");
    atomic_store(&sh->go, 1);
    for (int n = 0; n < CHILDREN; n++) {
        int status;
        cr_assert_eq(waitpid(pids[n], &status, 0), pids[n]);
        tsup_untrack(pids[n]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d died (status 0x%x)", n, status);
    }

    cr_expect_eq(atomic_load(&sh->errors), 0, "%d of %d registrations failed; the first with %s",
                 atomic_load(&sh->errors), CHILDREN * NAMES_PER_CHILD, cb_strerror(atomic_load(&sh->first_error)));
    cr_expect_eq(atomic_load(&sh->wrong_circuit), 0, "%d handles are bound to another circuit; the first: %s",
                 atomic_load(&sh->wrong_circuit), sh->first_wrong);
    /* the master's own connection was left alone by its children */
    cb_circuit *later = tsup_circuit(cl, "master.registered-after-the-children", NULL);
    cr_assert_str_eq(tsup_info(later).name, "master.registered-after-the-children");
    cr_assert_str_eq(tsup_info(master).name, "master.downstream");
    munmap(sh, sizeof *sh);
}

/* The descriptors of this process whose target's path ends with suffix. */
static int fds_ending_with(const char *suffix, int *fds, int max)
{
    DIR *dir = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; dir != NULL && (e = readdir(dir)) != NULL && n < max;) {
        char target[512];
        ssize_t len = readlinkat(dirfd(dir), e->d_name, target, sizeof target - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        size_t sl = strlen(suffix);
        if ((size_t)len >= sl && strcmp(target + len - sl, suffix) == 0)
            fds[n++] = atoi(e->d_name);
    }
    if (dir != NULL)
        closedir(dir);
    return n;
}

enum { CHILD_OK = 0, CHILD_SETUP = 10, CHILD_WROTE = 11, CHILD_CLOSED = 12 };

/* A child that closes what it inherited and puts a file of its own at
 * every number libcb had; then records failures (each may ring the
 * doorbell) and closes the client. */
static int child_reusing_descriptors(cb_circuit *c, const char *own_path)
{
    char bell_suffix[256], state_suffix[64], lanes_suffix[64];
    snprintf(bell_suffix, sizeof bell_suffix, "%s.bell", d.socket);
    snprintf(state_suffix, sizeof state_suffix, "/cbd.%s", d.instance);
    snprintf(lanes_suffix, sizeof lanes_suffix, "/cbd.%s.lanes", d.instance);
    int fds[8], n = fds_ending_with(bell_suffix, fds, 8);
    n += fds_ending_with(state_suffix, fds + n, 8 - n);
    n += fds_ending_with(lanes_suffix, fds + n, 8 - n);
    if (n < 3)
        return CHILD_SETUP; /* not even a FIFO, a state and a lanes descriptor */
    int own = open(own_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (own < 0)
        return CHILD_SETUP;
    for (int fd = 3; fd < 1024; fd++) { /* what such servers do after fork */
        if (fd != own)
            close(fd);
    }
    for (int i = 0; i < n; i++) {
        if (dup2(own, fds[i]) != fds[i])
            return CHILD_SETUP;
    }
    for (int i = 0; i < 50; i++) {
        cb_ticket t = cb_allow(c);
        cb_record(c, t, CB_FAILURE);
        nap_us(2000); /* the daemon drains and lowers the doorbell: the next failure rings again */
    }
    struct stat st;
    if (fstat(own, &st) < 0 || st.st_size != 0)
        return CHILD_WROTE;
    cb_client_close(cl);
    for (int i = 0; i < n; i++) {
        if (fcntl(fds[i], F_GETFD) < 0)
            return CHILD_CLOSED;
    }
    return CHILD_OK;
}

Test(prefork, a_child_that_reuses_its_inherited_descriptor_numbers_keeps_its_files_untouched)
{
    tsup_fixture_start(&d, &cl, NULL);
    cb_config cfg = tsup_config(1000000, 1, 1, 600000); /* many failures, no trip */
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    char own_path[512];
    snprintf(own_path, sizeof own_path, "%s/child-file", tsup_tmpdir());
    pid_t pid = tsup_fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(child_reusing_descriptors(c, own_path));
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status), "the child died (status 0x%x)", status);
    int code = WEXITSTATUS(status);
    cr_assert_neq(code, CHILD_SETUP, "the child could not find libcb's descriptors or make its file");
    cr_assert_neq(code, CHILD_WROTE, "libcb rang the doorbell into the child's own file");
    cr_assert_neq(code, CHILD_CLOSED, "cb_client_close closed a file of the child's");
    cr_assert_eq(code, CHILD_OK);
    cr_assert(tsup_wait_drained(c, 50), "the child's failures were not counted");
}
