/*
 * test_multiprocess.c - one circuit shared by many processes, the way a
 * prefork server uses cbd: the master opens the client and gets the handle,
 * then forks 16 workers of 4 threads each, all on the same circuit.
 *
 * Checked: a storm of failures from 64 threads trips the circuit exactly
 * once, at exactly the threshold, and every worker sees it OPEN; in
 * HALF_OPEN, no more probes are ever in flight at once than configured,
 * counted across all processes and threads through an atomic counter in a
 * MAP_SHARED page, and the probes' successes close the circuit.
 *
 * Workers report through exit codes and a pipe, never through criterion's
 * assertions (which belong to the test process alone).
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tsup.h"

enum { PROCS = 16, THREADS = 4 };

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(multiprocess, .fini = stop, .timeout = 120);

/* Shared by the test and every worker. */
struct shared {
    _Atomic int go;         /* start line: every thread begins at once */
    _Atomic int stop;
    _Atomic int probes_now; /* PROBE tickets held right now */
    _Atomic int probes_max;
    _Atomic long probes_total;
    _Atomic long bad_tickets; /* kinds a worker must never see here */
};

static struct shared *sh;
static cb_circuit *circuit;
static int report_fd; /* the write end of the workers' pipe */

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static void wait_for_go(void)
{
    while (!atomic_load(&sh->go))
        nap_us(100);
}

/* Fails until the circuit rejects. */
static void *fail_until_open(void *arg)
{
    (void)arg;
    wait_for_go();
    while (!atomic_load(&sh->stop)) {
        cb_ticket t = cb_allow(circuit);
        if (!cb_permitted(t))
            return NULL;
        if (tsup_ticket_kind(t) != CB_TICKET_ALLOWED)
            atomic_fetch_add(&sh->bad_tickets, 1);
        cb_record(circuit, t, CB_FAILURE);
    }
    return NULL;
}

static void hold_probe(cb_ticket t)
{
    int now = atomic_fetch_add(&sh->probes_now, 1) + 1;
    int max = atomic_load(&sh->probes_max);
    while (now > max && !atomic_compare_exchange_weak(&sh->probes_max, &max, now)) {
    }
    nap_us(3000); /* the protected call: long enough for probes to overlap */
    /* Released before reporting: cbd hands the permit back only after it
     * sees the report, so the counter never over-counts. */
    atomic_fetch_sub(&sh->probes_now, 1);
    atomic_fetch_add(&sh->probes_total, 1);
    cb_record(circuit, t, CB_SUCCESS);
}

/* Hammers cb_allow; holds and reports every probe it wins; ends when the
 * circuit lets a plain call through (closed) or the test says stop. */
static void *probe_until_closed(void *arg)
{
    (void)arg;
    wait_for_go();
    while (!atomic_load(&sh->stop)) {
        cb_ticket t = cb_allow(circuit);
        switch (tsup_ticket_kind(t)) {
        case CB_TICKET_PROBE:
            hold_probe(t);
            break;
        case CB_TICKET_REJECTED:
            nap_us(50);
            break;
        case CB_TICKET_ALLOWED:
            return NULL;
        default:
            atomic_fetch_add(&sh->bad_tickets, 1);
            return NULL;
        }
    }
    return NULL;
}

static void worker(void *(*fn)(void *))
{
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&th[i], NULL, fn, NULL) != 0)
            _exit(2);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    char done = 'x';
    _exit(write(report_fd, &done, 1) == 1 ? 0 : 3);
}

/* Starts cbd, opens the client and the circuit in the "master", maps the
 * shared page and forks the workers. */
static void start_workers(const cb_config *cfg, void *(*fn)(void *), pid_t pids[PROCS], int *reports)
{
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0, "cbd did not start");
    cl = tsup_client(&d);
    circuit = tsup_circuit(cl, "shared", cfg);
    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(sh, MAP_FAILED);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    report_fd = p[1];
    for (int i = 0; i < PROCS; i++) {
        pids[i] = tsup_fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            close(p[0]);
            worker(fn);
        }
    }
    close(p[1]);
    *reports = p[0];
}

/* Reads one report per worker; the number that arrived in time. */
static int collect_reports(int fd)
{
    int n = 0;
    struct tsup_deadline dl = tsup_deadline_in(20000);
    while (n < PROCS) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int left = (int)(dl.end_ms - tsup_now_ms());
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            break;
        char buf[PROCS];
        ssize_t got = read(fd, buf, sizeof buf);
        if (got <= 0)
            break;
        n += (int)got;
    }
    return n;
}

static void reap(pid_t pids[PROCS])
{
    for (int i = 0; i < PROCS; i++) {
        int status;
        cr_assert_eq(waitpid(pids[i], &status, 0), pids[i]);
        tsup_untrack(pids[i]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d ended with status 0x%x", i, status);
    }
}

Test(multiprocess, a_failure_storm_from_64_threads_trips_exactly_once_at_the_threshold)
{
    cb_config cfg = tsup_config(5, 3, 1, 600000);
    pid_t pids[PROCS];
    int reports;
    start_workers(&cfg, fail_until_open, pids, &reports);
    uint32_t epoch0 = tsup_info(circuit).epoch;
    atomic_store(&sh->go, 1);

    int seen = collect_reports(reports);
    atomic_store(&sh->stop, 1);
    cr_assert_eq(seen, PROCS, "only %d of %d workers saw the circuit OPEN", seen, PROCS);
    reap(pids);
    cr_assert_eq(atomic_load(&sh->bad_tickets), 0, "a worker got a ticket other than ALLOWED/REJECTED");

    cb_info i = tsup_info(circuit);
    cr_assert_eq(i.state, CB_OPEN);
    cr_assert_eq(i.failure_count, 5, "tripped with a failure count of %u", i.failure_count);
    cr_assert_eq(i.epoch, epoch0 + 1, "%u transitions instead of one", i.epoch - epoch0);
    cr_assert(tsup_wait_until(tsup_log_count(&d, "from=CLOSED to=OPEN") >= 1, TSUP_LIVENESS_MS),
              "no transition line in %s", d.log);
    cr_assert_eq(tsup_log_count(&d, "from=CLOSED to=OPEN"), 1, "more than one trip logged");
    cr_assert_eq(tsup_stat(&d, "transitions"), 1);
    cb_transition tr = tsup_next_transition(cl, "shared");
    cr_assert(tr.from == CB_CLOSED && tr.to == CB_OPEN && tr.failure_count == 5);
    cr_assert_eq(cb_next_transition(cl, &tr), 0, "a second transition in the history");
}

/* The HALF_OPEN scenario with max_probes concurrent probes. */
static void probes_stay_bounded(uint32_t max_probes)
{
    cb_config cfg = tsup_config(1, 30, max_probes, 200);
    pid_t pids[PROCS];
    int reports;
    start_workers(&cfg, probe_until_closed, pids, &reports);
    cr_assert_eq(tsup_record_n(circuit, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_until(tsup_info(circuit).state != CB_CLOSED, TSUP_LIVENESS_MS));
    atomic_store(&sh->go, 1);

    bool closed = tsup_wait_until(tsup_info(circuit).state == CB_CLOSED, 60000);
    atomic_store(&sh->stop, 1);
    cr_assert(closed, "probe successes never closed it (%ld probes so far)", atomic_load(&sh->probes_total));
    cr_assert_eq(collect_reports(reports), PROCS);
    reap(pids);
    cr_assert_eq(atomic_load(&sh->bad_tickets), 0, "a worker got a BYPASS ticket");
    cr_assert_eq(atomic_load(&sh->probes_max), (int)max_probes, "%d probes held at once at the most, configured %u (the bound is reached and never passed)",
                 atomic_load(&sh->probes_max), max_probes);
    cr_assert_geq(atomic_load(&sh->probes_total), 30);
}

Test(multiprocess, in_half_open_64_threads_reach_but_never_pass_one_probe_at_once)
{
    probes_stay_bounded(1);
}

Test(multiprocess, in_half_open_64_threads_reach_but_never_pass_three_probes_at_once_when_three_are_allowed)
{
    probes_stay_bounded(3);
}
