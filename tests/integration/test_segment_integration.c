/*
 * test_segment_integration.c - the segment's promises with a real cbd:
 * workers cannot write circuit state, a daemon crash loses nothing and a
 * restarted daemon adopts the segment, a layout change makes clients remap,
 * a hung daemon makes workers fail open, and OPEN circuits survive a reboot
 * through the local store.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void start(const struct tsup_daemon_opts *o) { tsup_fixture_start(&d, &cl, o); }

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(segment_integration, .fini = stop, .timeout = 90);

static void trip(cb_circuit *c, int failures)
{
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, failures), failures);
    cr_assert(tsup_wait_state(c, CB_OPEN), "%d failures did not trip it", failures);
}

/* The daemon's generation, read from the segment as a tool would. */
static uint64_t generation(void)
{
    size_t size;
    const struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
    cr_assert_not_null(h, "no segment for %s", d.instance);
    uint64_t g = atomic_load_explicit((_Atomic uint64_t *)&h->generation, memory_order_relaxed);
    munmap((void *)h, size);
    return g;
}

/* A register request straight to the socket: was the circuit created? */
static bool register_created(const char *name)
{
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, "register", 2);
    cb__mp_kv_str(&pk, "name", name);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1);
    cr_assert(tsup_reply_ok(&r), "register %s: error %lld", name, (long long)tsup_reply_error(&r));
    int created = -1;
    cr_assert_eq(cb__mp_get_bool(r.map, "created", &created), 0, "register's reply has no 'created'");
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    return created;
}

/* Runs in a child: store through a pointer into a read-only mapping. */
static void write_and_exit(volatile uint64_t *p)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would turn the fault into exit(1) */
    *p = 0xdeadbeef;
    _exit(0); /* reached only if the write went through */
}

static int child_signal(pid_t pid)
{
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

Test(segment_integration, a_worker_that_writes_a_state_word_dies_by_sigsegv)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cb_info before = tsup_info(c);

    /* through the very pointer cb_allow() loads */
    pid_t pid = tsup_fork();
    if (pid == 0)
        write_and_exit((volatile uint64_t *)((struct cb__circuit_head *)c)->state_word);
    cr_assert_eq(child_signal(pid), SIGSEGV, "a worker wrote a circuit's state word");

    /* through a mapping made the way libcb makes it */
    pid = tsup_fork();
    if (pid == 0) {
        size_t size;
        struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
        if (h == NULL)
            _exit(3);
        write_and_exit((volatile uint64_t *)&CB_SEG_RECORD(h, 0)->state_word);
    }
    cr_assert_eq(child_signal(pid), SIGSEGV, "a read-only mapping of the state region took a write");

    cb_info after = tsup_info(c);
    cr_assert_eq(after.state, before.state);
    cr_assert_eq(after.epoch, before.epoch);
    trip(c, 5);
}

/* Workers for the adoption test: record successes until told to stop. */
enum { ADOPT_CIRCUITS = 8, ADOPT_WORKERS = 2 };

struct loop_shared { /* MAP_SHARED: seen by the test and its workers */
    _Atomic int stop;
    _Atomic uint64_t records;
};

struct record_loops {
    struct loop_shared *sh;
    pid_t pids[ADOPT_WORKERS];
};

static void record_loop(struct loop_shared *sh, cb_circuit **cs, int n)
{
    while (!atomic_load(&sh->stop)) {
        for (int i = 0; i < n; i++)
            cb_record(cs[i], cb_allow(cs[i]), CB_SUCCESS);
        atomic_fetch_add(&sh->records, 1);
    }
    _exit(0);
}

static struct record_loops start_record_loops(cb_circuit **cs, int n)
{
    struct record_loops rl;
    rl.sh = mmap(NULL, sizeof *rl.sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(rl.sh, MAP_FAILED);
    for (int w = 0; w < ADOPT_WORKERS; w++) {
        rl.pids[w] = tsup_fork();
        if (rl.pids[w] == 0)
            record_loop(rl.sh, cs, n);
    }
    cr_assert(tsup_wait_until(atomic_load(&rl.sh->records) > 1000, TSUP_LIVENESS_MS));
    return rl;
}

/* Stops the workers; each must have exited normally: never blocked or crashed. */
static void stop_record_loops(struct record_loops *rl)
{
    atomic_store(&rl->sh->stop, 1);
    for (int w = 0; w < ADOPT_WORKERS; w++) {
        int status;
        cr_assert_eq(waitpid(rl->pids[w], &status, 0), rl->pids[w]);
        tsup_untrack(rl->pids[w]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d ended with status 0x%x", w, status);
    }
}

static const char *svc_name(int i)
{
    static char name[16];
    snprintf(name, sizeof name, "svc-%d", i);
    return name;
}

Test(segment_integration, a_daemon_killed_under_load_is_adopted_with_every_circuit_and_state)
{
    static const struct tsup_daemon_opts o = {.reclaim_interval_ms = 100};
    start(&o);
    cb_circuit *cs[ADOPT_CIRCUITS];
    cb_config cfg = tsup_config(5, 3, 1, 600000);
    for (int i = 0; i < ADOPT_CIRCUITS; i++)
        cs[i] = tsup_circuit(cl, svc_name(i), &cfg);
    trip(cs[0], 5);
    cb_info open_before = tsup_info(cs[0]);
    (void)cb_status(cl); /* consume anything already reported */
    uint64_t gen_before = generation();
    struct record_loops rl = start_record_loops(cs + 1, ADOPT_CIRCUITS - 1);

    tsup_daemon_kill9(&d);
    uint64_t at_kill = atomic_load(&rl.sh->records);
    cr_assert(tsup_wait_until(atomic_load(&rl.sh->records) > at_kill + 1000, TSUP_LIVENESS_MS),
              "workers stopped recording while the daemon was dead");
    cr_assert_eq(tsup_daemon_restart(&d), 0, "cbd did not restart on the old segment");

    cr_assert_neq(generation(), gen_before, "the generation did not change");
    unsigned st = cb_status(cl);
    cr_assert(st & CB_STATUS_RESTARTED, "cb_status 0x%x lacks RESTARTED", st);
    cr_assert(st & CB_STATUS_RUNNING, "cb_status 0x%x lacks RUNNING", st);
    cr_assert(!(st & CB_STATUS_REMAPPED), "an adopted segment was replaced (0x%x)", st);
    cr_assert_eq(tsup_stat(&d, "circuits"), ADOPT_CIRCUITS);
    for (int i = 0; i < ADOPT_CIRCUITS; i++)
        cr_assert(!register_created(svc_name(i)), "%s was lost and created anew", svc_name(i));
    cb_info open_after = tsup_info(cs[0]);
    cr_assert_eq(open_after.state, CB_OPEN, "the OPEN circuit is %d after the restart", open_after.state);
    cr_assert_eq(open_after.opened_at, open_before.opened_at);
    cr_assert_eq(open_after.epoch, open_before.epoch);
    cr_assert_eq(tsup_ticket_kind(cb_allow(cs[0])), CB_TICKET_REJECTED);

    uint64_t drained = tsup_info(cs[1]).total_successes;
    cr_assert(tsup_wait_until(tsup_info(cs[1]).total_successes > drained + 100, TSUP_LIVENESS_MS),
              "the restarted daemon does not drain the workers' lanes");
    stop_record_loops(&rl);
}

Test(segment_integration, a_layout_change_makes_open_clients_remap_and_keep_working)
{
    start(NULL);
    cb_config cfg = tsup_config(5, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 1), 1);
    cr_assert(tsup_wait_drained(c, 1));
    cr_assert_eq(tsup_daemon_stop(&d), 0);

    /* what an older or newer cbd would have left behind */
    size_t size;
    struct cb_seg_header *h = tsup_seg_map(d.instance, TSUP_MAP_RW, &size);
    cr_assert_not_null(h);
    h->major = CB_SEG_MAJOR + 1;
    munmap(h, size);

    cr_assert_eq(tsup_daemon_restart(&d), 0, "cbd did not start over a segment of another layout");
    cr_assert(tsup_wait_until(cb_status(cl) & CB_STATUS_REMAPPED, TSUP_LIVENESS_MS),
              "the client never reported REMAPPED");
    h = tsup_seg_map(d.instance, 0, &size);
    cr_assert_not_null(h, "no new segment");
    cr_assert_eq(h->major, CB_SEG_MAJOR, "the new segment has major %u", h->major);
    munmap(h, size);

    /* the old handle now works on the new segment */
    trip(c, 5);
    cb_client *fresh = tsup_client(&d);
    cb_circuit *c2 = tsup_circuit(fresh, "payments", NULL);
    cr_assert_eq(tsup_info(c2).state, CB_OPEN, "a fresh client does not see what the remapped handle did");
    cr_assert_eq(tsup_info(c2).config.failure_threshold, 5);
    cb_client_close(fresh);
}

static bool running(void)
{
    unsigned st = cb_status(cl);
    return (st & CB_STATUS_RUNNING) && !(st & CB_STATUS_STALE);
}

Test(segment_integration, a_hung_daemon_is_stale_and_open_circuits_fail_open)
{
    static const struct tsup_daemon_opts o = {.stale_limit_ms = 300};
    start(&o);
    cb_config cfg = tsup_config(1, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    trip(c, 1);
    cr_assert(tsup_wait_until(running(), TSUP_LIVENESS_MS), "a live daemon is not RUNNING");

    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    cr_assert(tsup_wait_until(cb_status(cl) & CB_STATUS_STALE, TSUP_LIVENESS_MS), "a stopped daemon never went stale");
    /* cb_allow reads a coarse clock (no syscall) that may lag cb_status's
     * by a tick: it may call the daemon stale a few ms later */
    cb_ticket t;
    cr_assert(tsup_wait_until(tsup_ticket_kind(t = cb_allow(c)) == CB_TICKET_BYPASS, TSUP_LIVENESS_MS),
              "an OPEN circuit of a stale daemon gives ticket kind %u", tsup_ticket_kind(t));
    cr_assert(cb_permitted(t));
    cb_record(c, t, CB_FAILURE); /* nothing is counted */

    cr_assert_eq(kill(d.pid, SIGCONT), 0);
    cr_assert(tsup_wait_until(running(), TSUP_LIVENESS_MS), "the resumed daemon is not RUNNING again");
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "the OPEN circuit no longer rejects");
}

Test(segment_integration, with_keep_state_a_stale_daemon_s_open_circuits_stay_open)
{
    static const struct tsup_daemon_opts o = {.stale_limit_ms = 300, .stale_policy = "keep-state"};
    start(&o);
    cb_config cfg = tsup_config(1, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    trip(c, 1);
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    cr_assert(tsup_wait_until(cb_status(cl) & CB_STATUS_STALE, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "keep-state failed open");
    cr_assert_eq(kill(d.pid, SIGCONT), 0);
}

Test(segment_integration, an_open_circuit_survives_a_reboot_through_the_local_store)
{
    start(NULL);
    cb_config cfg = tsup_config(2, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    trip(c, 2);
    cb_info before = tsup_info(c);
    cb_client_close(cl);
    cl = NULL;
    cr_assert_eq(tsup_daemon_stop(&d), 0);
    tsup_shm_unlink(d.instance); /* /dev/shm does not survive a reboot */

    cr_assert_eq(tsup_daemon_restart(&d), 0);
    cl = tsup_client(&d);
    c = tsup_circuit(cl, "payments", NULL);
    cb_info after = tsup_info(c);
    cr_assert_eq(after.state, CB_OPEN, "the circuit is %d after a reboot", after.state);
    cr_assert_eq(after.opened_at, before.opened_at);
    cr_assert_eq(after.failure_count, 2);
    cr_assert_eq(after.config.failure_threshold, 2, "the registered policy was not restored");
    cr_assert_eq(after.config.recovery_timeout_ms, 600000);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED);
}
