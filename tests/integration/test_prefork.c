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
 * Children report through a MAP_SHARED page and their exit status, never
 * through criterion's assertions (which belong to the test process alone).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
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
