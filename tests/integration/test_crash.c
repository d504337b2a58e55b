/*
 * test_crash.c - the segment's guarantees against the worst moments of a
 * daemon's death, with cbd_fi (cbd with its fault-injection points) and
 * SIGKILL at random moments under multi-process load:
 *
 *  - a snapshot is always one published version (never a state from one
 *    transition and fields from another), even while the daemon is paused
 *    between committing a transition and publishing its state word;
 *  - a record is readable after the daemon dies anywhere, and an adopting
 *    daemon completes a transition that was committed but not published;
 *  - a restart never admits a probe before the recovery timeout;
 *  - under hundreds of kills no circuit is lost, no OPEN regresses, no
 *    record is unreadable and every outcome a worker recorded is counted
 *    exactly once.
 *
 * CB_TEST_FAULT_SITE=SITE makes the kill storm use that one fault site.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void)
{
    unsetenv("CBD_FAULT");
    tsup_fixture_stop(&d, &cl);
}

TestSuite(crash, .fini = stop, .timeout = 240);

/* Starts cbd_fi with CBD_FAULT=fault (NULL: none) and a client. */
static void start_fi(const char *fault, struct tsup_daemon_opts *o)
{
    if (fault != NULL)
        setenv("CBD_FAULT", fault, 1);
    else
        unsetenv("CBD_FAULT");
    o->binary = tsup_cbd_fi_path();
    tsup_fixture_start(&d, &cl, o);
}

/* Restarts the killed daemon with CBD_FAULT=fault (NULL: none). */
static void restart_with(const char *fault)
{
    if (fault != NULL)
        setenv("CBD_FAULT", fault, 1);
    else
        unsetenv("CBD_FAULT");
    cr_assert_eq(tsup_daemon_restart(&d), 0, "cbd did not come back");
}

/* The process state letter of pid (R, S, T, Z, ...) from /proc. */
static char proc_state(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' ? p[2] : '?';
}

/* Transitions of name in the history since the client opened. */
static int count_transitions(cb_client *c, const char *name, cb_state to)
{
    cb_transition t;
    int n = 0, rc;
    while ((rc = cb_next_transition(c, &t)) == 1)
        n += strcmp(t.name, name) == 0 && t.to == to;
    cr_assert_geq(rc, 0, "history overrun");
    return n;
}

/* ---- one version per snapshot ------------------------------------------------ */

Test(crash, a_snapshot_is_one_version_while_the_daemon_pauses_between_commit_and_publish)
{
    struct tsup_daemon_opts o = {.tag = "pause"};
    start_fi("transition.committed:pause:1", &o);
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cb_client *watcher = tsup_client(&d);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 3), 3);
    cr_assert(tsup_wait_until(proc_state(d.pid) == 'T', TSUP_LIVENESS_MS),
              "cbd_fi did not stop at transition.committed");
    /* Committed, not published: workers still see CLOSED, a snapshot sees
     * the committed version whole - never CLOSED with an opening. */
    cr_assert(cb_permitted(cb_allow(c)));
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_OPEN);
    cr_assert_gt(i.opened_at, 0);
    cr_assert_eq(i.failure_count, 3);
    cr_assert_gt(i.open_until_ns, 0);
    /* The daemon dies there: the next one completes the transition. */
    tsup_daemon_kill9(&d);
    restart_with(NULL);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    cr_assert_not(cb_permitted(cb_allow(c)), "the adopted OPEN must reject");
    cr_assert_eq(count_transitions(watcher, "payments", CB_OPEN), 1, "the trip is in the history exactly once");
    cr_assert_eq(tsup_log_count(&d, "completed the transition of circuit=payments"), 1);
    cb_client_close(watcher);
}

/* Readers hammer cb_info_get while an operator flips the circuit: every
 * snapshot must be self-consistent. */
struct reader {
    cb_circuit *c;
    _Atomic int stop;
    uint64_t reads, torn, eagain;
};

static void *read_snapshots(void *arg)
{
    struct reader *r = arg;
    while (!atomic_load(&r->stop)) {
        cb_info i;
        int rc = cb_info_get(r->c, &i);
        r->reads++;
        if (rc == -EAGAIN) {
            r->eagain++;
            continue;
        }
        cr_assert_eq(rc, 0);
        /* force_open for a minute: OPEN with an opening and its end;
         * force_closed: CLOSED with neither. */
        bool open = i.state == CB_OPEN;
        if (open != (i.opened_at != 0) || open != (i.open_until_ns != 0) || (i.state != CB_CLOSED && !open))
            r->torn++;
    }
    return NULL;
}

/* An operator op on name; for_ms > 0 adds it (force_open for a while). */
static void operator_op(const char *op, const char *name, uint64_t for_ms)
{
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, op, for_ms ? 3 : 2);
    cb__mp_kv_str(&pk, "name", name);
    if (for_ms)
        cb__mp_kv_u64(&pk, "for_ms", for_ms);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1);
    cr_assert(tsup_reply_ok(&r), "%s %s: %lld", op, name, (long long)tsup_reply_error(&r));
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
}

Test(crash, snapshots_stay_consistent_under_a_transition_storm)
{
    struct tsup_daemon_opts o = {.tag = "storm"};
    tsup_fixture_start(&d, &cl, &o);
    struct reader r = {.c = tsup_circuit(cl, "flapping", NULL)};
    pthread_t t[2];
    for (int k = 0; k < 2; k++)
        pthread_create(&t[k], NULL, read_snapshots, &r);
    for (int k = 0; k < 1500; k++)
        operator_op(k % 2 ? "force_closed" : "force_open", "flapping", k % 2 ? 0 : 60000);
    atomic_store(&r.stop, 1);
    for (int k = 0; k < 2; k++)
        pthread_join(t[k], NULL);
    cr_log_info("%llu snapshots, %llu torn, %llu retried", (unsigned long long)r.reads, (unsigned long long)r.torn,
                (unsigned long long)r.eagain);
    cr_assert_gt(r.reads, 1000);
    cr_assert_eq(r.torn, 0, "%llu of %llu snapshots mixed two transitions", (unsigned long long)r.torn,
                 (unsigned long long)r.reads);
}

/* ---- records readable after any death ---------------------------------------- */

/* True once the daemon process has died (a zombie until tsup reaps it). */
static bool daemon_dead(void)
{
    return kill(d.pid, 0) < 0 || proc_state(d.pid) == 'Z';
}

Test(crash, a_record_is_readable_after_the_daemon_dies_with_a_version_half_written)
{
    struct tsup_daemon_opts o = {.tag = "half"};
    /* The 6th version the daemon writes: the registration's, then those of
     * the drains and the trip below. */
    start_fi("version.filled:crash:6", &o);
    cb_config cfg = tsup_config(4, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "orders", &cfg);
    for (int k = 0; k < 200 && !daemon_dead(); k++) {
        tsup_record_n(c, k % 3 ? CB_SUCCESS : CB_FAILURE, 1);
        usleep(5000);
    }
    cr_assert(tsup_wait_until(daemon_dead(), TSUP_LIVENESS_MS), "cbd_fi did not crash at version.filled");
    tsup_daemon_kill9(&d); /* reap it */
    cb_info i;
    cr_assert_eq(cb_info_get(c, &i), 0, "the record must be readable with the daemon dead");
    cr_assert_str_eq(i.name, "orders");
    restart_with(NULL);
    cr_assert_eq(cb_info_get(c, &i), 0);
    cr_assert(tsup_ping(&d));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

Test(crash, policy_fields_left_mid_write_are_repaired_at_adoption)
{
    char conf[256];
    snprintf(conf, sizeof conf, "%s/cbd.conf", tsup_tmpdir());
    write_file(conf, "[defaults]\nfailure_threshold = 4\n");
    struct tsup_daemon_opts o = {.tag = "cfg", .extra = {"-c", conf}};
    start_fi("config.written:crash:1", &o);
    cb_circuit *c = tsup_circuit(cl, "search", NULL);
    cr_assert_eq(tsup_info(c).config.failure_threshold, 4);
    /* A reload rewrites the circuit's policy; the daemon dies half-way, with
     * the record's policy sequence odd. */
    write_file(conf, "[defaults]\nfailure_threshold = 4\n[circuit \"search\"]\nfailure_threshold = 9\n");
    kill(d.pid, SIGHUP);
    cr_assert(tsup_wait_until(daemon_dead(), TSUP_LIVENESS_MS), "cbd_fi did not crash at config.written");
    tsup_daemon_kill9(&d);
    restart_with(NULL);
    cb_info i;
    cr_assert_eq(cb_info_get(c, &i), 0, "the record must be readable after adoption");
    cr_assert_eq(i.config.failure_threshold, 9, "the restarted daemon applies the file it reads");
    char *out = NULL;
    char *argv[] = {(char *)tsup_cbctl_path(), "--instance", d.instance, "show", "search", NULL};
    cr_assert_eq(tsup_run(argv, &out, true), 0, "cbctl show: %s", out);
    cr_assert_not_null(strstr(out, "failure_threshold=9"), "%s", out);
    free(out);
}

/* ---- no early probe after a restart ------------------------------------------ */

Test(crash, a_restart_never_admits_a_probe_before_the_recovery_timeout)
{
    struct tsup_daemon_opts o = {.tag = "early"};
    start_fi(NULL, &o);
    cb_config cfg = tsup_config(1, 1, 1, 1200);
    srand((unsigned)getpid());
    for (int round = 0; round < 8; round++) {
        char name[32];
        snprintf(name, sizeof name, "early%d", round);
        cb_circuit *c = tsup_circuit(cl, name, &cfg);
        cb_client *watcher = tsup_client(&d);
        cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
        cr_assert(tsup_wait_state(c, CB_OPEN));
        int64_t until = tsup_info(c).open_until_ns;
        cr_assert_gt(until, 0);
        usleep((useconds_t)(rand() % 1000) * 1000); /* die anywhere within the timeout */
        tsup_daemon_kill9(&d);
        restart_with(NULL);
        cr_assert(tsup_wait_state(c, CB_HALF_OPEN), "round %d: never probed", round);
        cb_transition t;
        do
            t = tsup_next_transition(watcher, name);
        while (t.to != CB_HALF_OPEN);
        cr_assert_geq(t.time_ns, until, "round %d: a probe %lld ms before the recovery timeout ended", round,
                      (long long)(until - t.time_ns) / 1000000);
        cb_client_close(watcher);
    }
}

/* ---- hundreds of kills under load --------------------------------------------- */

#define STORM_CIRCUITS 4
#define STORM_PROCS 4
#define STORM_THREADS 2
#define STORM_RECOVERY_MS 150

/* Shared with the worker processes (MAP_SHARED | MAP_ANONYMOUS). */
struct storm {
    _Atomic int stop;
    _Atomic uint64_t recorded[STORM_CIRCUITS]; /* cb_record calls with a countable ticket */
};

static const char *storm_name(int i)
{
    static const char *const names[STORM_CIRCUITS] = {"storm.a", "storm.b", "storm.c", "storm.d"};
    return names[i];
}

struct storm_thread {
    struct storm *s;
    cb_circuit *c[STORM_CIRCUITS];
    unsigned seed;
};

static void *storm_work(void *arg)
{
    struct storm_thread *t = arg;
    while (!atomic_load(&t->s->stop)) {
        int i = rand_r(&t->seed) % STORM_CIRCUITS;
        cb_ticket k = cb_allow(t->c[i]);
        unsigned kind = tsup_ticket_kind(k);
        if (kind == CB_TICKET_ALLOWED || kind == CB_TICKET_PROBE) {
            /* circuit i fails 20% + 20% * i of its calls */
            cb_outcome o = rand_r(&t->seed) % 100 < 20 + 20 * i ? CB_FAILURE : CB_SUCCESS;
            if (rand_r(&t->seed) % 10 == 0)
                o = CB_IGNORED;
            cb_record(t->c[i], k, o);
            atomic_fetch_add(&t->s->recorded[i], 1);
        }
        usleep(300);
    }
    return NULL;
}

/* A worker process: STORM_THREADS threads on one client opened after fork. */
static void storm_worker(struct storm *s, const char *instance)
{
    cb_client *c;
    if (cb_client_open(&c, instance) < 0)
        _exit(2);
    struct storm_thread th[STORM_THREADS];
    pthread_t tid[STORM_THREADS];
    cb_config cfg = tsup_config(3, 2, 1, STORM_RECOVERY_MS);
    for (int k = 0; k < STORM_THREADS; k++) {
        th[k] = (struct storm_thread){.s = s, .seed = (unsigned)getpid() * 31u + (unsigned)k};
        for (int i = 0; i < STORM_CIRCUITS; i++) {
            if (cb_circuit_get(c, storm_name(i), &cfg, &th[k].c[i]) < 0)
                _exit(3);
        }
        pthread_create(&tid[k], NULL, storm_work, &th[k]);
    }
    for (int k = 0; k < STORM_THREADS; k++)
        pthread_join(tid[k], NULL);
    cb_client_close(c); /* releases the lanes: the daemon drains them */
    _exit(0);
}

/* What every circuit looked like before a kill. */
struct seen {
    uint32_t epoch;
    cb_state state;
};

static void observe(cb_circuit **c, struct seen *seen)
{
    for (int i = 0; i < STORM_CIRCUITS; i++) {
        cb_info info;
        int rc = cb_info_get(c[i], &info);
        cr_assert_eq(rc, 0, "%s unreadable: %s", storm_name(i), cb_strerror(rc));
        seen[i] = (struct seen){info.epoch, info.state};
    }
}

/* After a restart: every circuit is there and readable, and none went back
 * in time (an epoch never decreases; an OPEN seen before is not replaced by
 * another state of the same epoch). */
static void check_after_restart(cb_circuit **c, const struct seen *before, int kill_no)
{
    for (int i = 0; i < STORM_CIRCUITS; i++) {
        cb_info info;
        int rc = cb_info_get(c[i], &info);
        cr_assert_eq(rc, 0, "kill %d: %s unreadable: %s", kill_no, storm_name(i), cb_strerror(rc));
        cr_assert_geq(info.epoch, before[i].epoch, "kill %d: %s went from epoch %u back to %u", kill_no,
                      storm_name(i), before[i].epoch, info.epoch);
        cr_assert(info.epoch != before[i].epoch || info.state == before[i].state,
                  "kill %d: %s changed state in epoch %u", kill_no, storm_name(i), info.epoch);
    }
}

/* Reads new transitions: a HALF_OPEN never comes sooner than the recovery
 * timeout after the opening before it. */
static void check_history(cb_client *watcher, int64_t *opened_ns, uint64_t *probes)
{
    cb_transition t;
    int rc;
    while ((rc = cb_next_transition(watcher, &t)) == 1) {
        for (int i = 0; i < STORM_CIRCUITS; i++) {
            if (strcmp(t.name, storm_name(i)) != 0)
                continue;
            if (t.to == CB_OPEN)
                opened_ns[i] = t.time_ns;
            else if (t.to == CB_HALF_OPEN && t.from == CB_OPEN) {
                (*probes)++;
                cr_assert(opened_ns[i] == 0 || t.time_ns - opened_ns[i] >= STORM_RECOVERY_MS * 1000000ll,
                          "%s probed %lld ms after opening (recovery %d ms)", t.name,
                          (long long)(t.time_ns - opened_ns[i]) / 1000000, STORM_RECOVERY_MS);
            }
        }
    }
    cr_assert_eq(rc, 0, "the history overran its reader");
}

/* Every lane drained (head == tail), and the events dropped for want of room. */
static bool lanes_idle(const char *instance, uint64_t *dropped)
{
    size_t size;
    struct cb_lanes_header *l = tsup_seg_map(instance, TSUP_MAP_LANES, &size);
    cr_assert_not_null(l);
    bool idle = true;
    *dropped = atomic_load(&l->no_lane_drops);
    for (uint32_t i = 0; i < l->lane_count; i++) {
        struct cb_lane *lane = CB_LANES_LANE(l, i);
        idle &= atomic_load(&lane->head) == atomic_load(&lane->tail) && atomic_load(&lane->owner) == 0;
        *dropped += atomic_load(&lane->dropped);
    }
    munmap(l, size);
    return idle;
}

static const char *const storm_sites[] = {"transition.committed", "transition.published", "version.filled",
                                          "drain.before_head"};

Test(crash, two_hundred_kills_under_load_lose_nothing_and_count_every_event_once)
{
    int kills = getenv("CB_TEST_SANITIZER") ? 60 : 240;
    const char *site_override = getenv("CB_TEST_FAULT_SITE"); /* to hammer one site while debugging */
    struct tsup_daemon_opts o = {.tag = "kills", .lanes = 64, .history_capacity = 65536,
                                 .reclaim_interval_ms = 100, .stale_limit_ms = 2000};
    start_fi(NULL, &o);
    struct storm *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(s, MAP_FAILED);
    memset(s, 0, sizeof *s);
    cb_config cfg = tsup_config(3, 2, 1, STORM_RECOVERY_MS);
    cb_circuit *c[STORM_CIRCUITS];
    for (int i = 0; i < STORM_CIRCUITS; i++)
        c[i] = tsup_circuit(cl, storm_name(i), &cfg);
    cb_client *watcher = tsup_client(&d);
    pid_t workers[STORM_PROCS];
    for (int p = 0; p < STORM_PROCS; p++) {
        if ((workers[p] = tsup_fork()) == 0)
            storm_worker(s, d.instance);
    }
    int64_t opened_ns[STORM_CIRCUITS] = {0};
    uint64_t probes = 0;
    struct seen before[STORM_CIRCUITS];
    unsigned seed = (unsigned)getpid();
    int site_kills = 0;
    for (int k = 0; k < kills; k++) {
        usleep(5000 + (useconds_t)(rand_r(&seed) % 40000));
        check_history(watcher, opened_ns, &probes);
        observe(c, before);
        tsup_daemon_kill9(&d);
        if (k % 4 == 3) { /* the next daemon dies at one of its fault sites (or is killed) */
            char fault[64];
            snprintf(fault, sizeof fault, "%s:crash:%u", site_override ? site_override : storm_sites[(k / 4) % 4], 1 + rand_r(&seed) % 8);
            setenv("CBD_FAULT", fault, 1); /* it may die while it starts, adopting */
            cr_assert_eq(tsup_daemon_spawn(&d), 0);
            if (tsup_wait_until(daemon_dead(), 300))
                site_kills++;
            tsup_daemon_kill9(&d);
        }
        restart_with(NULL);
        check_after_restart(c, before, k);
    }
    /* The workers stop and let go of their lanes; the daemon drains them. */
    atomic_store(&s->stop, 1);
    for (int p = 0; p < STORM_PROCS; p++) {
        int status;
        cr_assert_eq(waitpid(workers[p], &status, 0), workers[p]);
        tsup_untrack(workers[p]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d failed: %d", p, status);
    }
    uint64_t dropped = 0;
    cr_assert(tsup_wait_until(lanes_idle(d.instance, &dropped), TSUP_LIVENESS_MS), "lanes never drained");
    check_history(watcher, opened_ns, &probes);
    uint64_t recorded = 0, counted = 0;
    for (int i = 0; i < STORM_CIRCUITS; i++) {
        struct cb_seg_snapshot snap;
        size_t size, len = strlen(storm_name(i));
        struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
        int slot = cb__seg_lookup(h, storm_name(i), len, cb__name_hash(storm_name(i), len), NULL);
        cr_assert_geq(slot, 0, "%s was lost", storm_name(i));
        cr_assert_eq(cb__seg_snapshot(h, (uint32_t)slot, &snap), 0);
        munmap(h, size);
        recorded += atomic_load(&s->recorded[i]);
        counted += snap.info.total_successes + snap.info.total_failures + snap.info.total_ignored +
                   snap.total_stale_events;
    }
    cr_log_info("%d kills (%d at fault sites), %llu events recorded, %llu dropped, %llu counted, %llu probes",
                kills, site_kills, (unsigned long long)recorded, (unsigned long long)dropped,
                (unsigned long long)counted, (unsigned long long)probes);
    fprintf(stderr, "crash storm: %d kills (%d at fault sites), %llu events recorded, %llu dropped, %llu counted, "
                    "%llu probes\n", kills, site_kills, (unsigned long long)recorded, (unsigned long long)dropped,
            (unsigned long long)counted, (unsigned long long)probes);
    cr_assert_eq(counted, recorded - dropped, "events recorded %llu - dropped %llu != counted %llu",
                 (unsigned long long)recorded, (unsigned long long)dropped, (unsigned long long)counted);
    cr_assert_gt(probes, 0, "the storm never reached a probe: it tested too little");
    cb_client_close(watcher);
    munmap(s, sizeof *s);
}
