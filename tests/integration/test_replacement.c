/*
 * test_replacement.c - a worker never waits for cbd when the daemon
 * replaces its segment or removes a circuit, and never maps an object it
 * cannot read whole.
 *
 * Replacement: cbd is SIGKILLed and a new one started with another
 * capacity, so it cannot adopt the segment: it retires every old record and
 * creates a new segment. Handles whose circuit the new daemon restored from
 * its store move to the new segment by its lock-free index; handles whose
 * circuit it does not know are registered again in the background, while
 * cb_allow goes on answering from the retired record. The new daemon is
 * kept SIGSTOPped while the worker calls: cb_allow must not notice. Whether
 * a handle is bound to the new segment shows in cb_info_get's counters (the
 * old record counted a success, a new one has counted nothing) and, in the
 * end, in trips that the new daemon makes from the worker's failures.
 *
 * Removal: a circuit removed by expiry (or by an operator, where cbd has
 * the 'remove' operation) is registered again by the next calls of a
 * worker that holds a handle to it.
 *
 * Damage: a state or lanes object truncated below what its header claims is
 * refused by cb_client_open with CB_EDAMAGED (mapping it would be a SIGBUS
 * on the first read past its end). Every worker of the group may write the
 * lanes region: one that overwrites its header's geometry must not make
 * another worker index out of it.
 *
 * No timing threshold: "without waiting" is measured as the ratio of all
 * calls' time to one control request timeout, which a single call that
 * waited for the daemon would exceed on its own.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "tsup.h"

#define REQUEST_TIMEOUT_NS 2000000000ll /* libcb's control request timeout (client.h) */

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void)
{
    if (d.pid != 0)
        kill(d.pid, SIGCONT);
    tsup_fixture_stop(&d, &cl);
}

TestSuite(replacement, .fini = stop, .timeout = 120);

/* failures recorded through c, and the daemon that counts them trips it */
static void trip(cb_circuit *c, int failures)
{
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, failures), failures);
    cr_assert(tsup_wait_state(c, CB_OPEN), "%d failures did not trip it: the daemon did not count them", failures);
}

/* A circuit of the fixture's client that trips at `failures`, tripped. */
static cb_circuit *open_circuit(const char *name, uint32_t failures)
{
    cb_config cfg = tsup_config(failures, 1, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, name, &cfg);
    trip(c, (int)failures);
    return c;
}

/* The next start of d runs with --capacity cap, so it cannot adopt the segment. */
static void set_capacity(const char *cap)
{
    for (int i = 0; d.argv[i] != NULL; i++) {
        if (strcmp(d.argv[i], "--capacity") == 0 && d.argv[i + 1] != NULL) {
            d.argv[i + 1] = (char *)cap;
            return;
        }
    }
    cr_assert_fail("cbd was started without --capacity");
}

/* The segment is published by d's current process with this capacity. */
static bool new_segment_ready(uint32_t capacity)
{
    size_t size;
    const struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
    if (h == NULL)
        return false;
    bool ok = atomic_load_explicit((_Atomic uint32_t *)&h->daemon_pid, memory_order_relaxed) == (uint32_t)d.pid &&
              /* Acquire pairs with cbd's release store of ready. */
              atomic_load_explicit((_Atomic uint32_t *)&h->ready, memory_order_acquire) == 1 &&
              h->capacity == capacity;
    munmap((void *)h, size);
    return ok;
}

/* Starts the replacement daemon and SIGSTOPs it as soon as its new segment
 * is published: it has its socket and segment, and answers nothing. */
static void start_stalled(const char *capacity)
{
    set_capacity(capacity);
    cr_assert_eq(tsup_daemon_spawn(&d), 0);
    cr_assert(tsup_wait_until(new_segment_ready((uint32_t)atoi(capacity)), 3 * TSUP_LIVENESS_MS),
              "the replacement cbd never published its segment");
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
}

static bool daemon_stopped(void)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)d.pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *state = strrchr(buf, ')');
    return state != NULL && state[1] == ' ' && state[2] == 'T';
}

static char *state_file(void)
{
    static char path[320];
    snprintf(path, sizeof path, "%s/state", d.dir);
    return path;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, '\0', f);
    fclose(f);
    if (n < 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* Circuits named in the local store's file (one per line). */
static int stored_circuits(const char *prefix)
{
    char *text = read_file(state_file());
    char needle[64];
    snprintf(needle, sizeof needle, "{\"name\":\"%s", prefix);
    int n = 0;
    for (const char *p = text; p != NULL && (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(text);
    return n;
}

/* Rewrites the store's file without the circuits drop() names: what a
 * daemon finds when those were never written to its store. */
static void drop_from_store(bool (*drop)(const char *line))
{
    char *text = read_file(state_file());
    cr_assert_not_null(text, "no state file at %s", state_file());
    char *out = malloc(strlen(text) + 1), *o = out;
    size_t kept = 0;
    for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        size_t len = strlen(line);
        if (strncmp(line, "{\"name\":", 8) != 0) { /* the opening and closing lines */
            o += sprintf(o, "%s%s\n", strncmp(line, "]}", 2) == 0 && kept > 0 ? "\n" : "", line);
            continue;
        }
        if (line[len - 1] == ',')
            line[--len] = '\0';
        if (drop(line))
            continue;
        o += sprintf(o, "%s%s", kept++ > 0 ? ",\n" : "", line);
    }
    FILE *f = fopen(state_file(), "w");
    cr_assert_not_null(f);
    fputs(out, f);
    fclose(f);
    free(out);
    free(text);
}

static int name_index(const char *line)
{
    const char *p = strstr(line, "\"svc.");
    return p != NULL ? atoi(p + 5) : -1;
}

static bool odd_name(const char *line) { return name_index(line) % 2 == 1; }

enum { HANDLES = 200, ROUNDS = 1000 };

struct caller {
    cb_circuit **cs;
    _Atomic int done;
    int64_t elapsed_ns;
    long kinds[4];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* ROUNDS x HANDLES calls of cb_allow, and cb_record of the permitted ones
 * as CB_IGNORED: counted apart, so total_successes still tells which
 * record a handle reads. */
static void *call_all(void *arg)
{
    struct caller *k = arg;
    int64_t t0 = now_ns();
    for (int r = 0; r < ROUNDS; r++) {
        for (int i = 0; i < HANDLES; i++) {
            cb_ticket t = cb_allow(k->cs[i]);
            k->kinds[tsup_ticket_kind(t) & 3]++;
            if (cb_permitted(t))
                cb_record(k->cs[i], t, CB_IGNORED);
        }
    }
    k->elapsed_ns = now_ns() - t0;
    atomic_store(&k->done, 1);
    return NULL;
}

/* Every handle counted one success in the old segment; one bound to the
 * new segment shows a record that counted none yet. */
static bool bound_to_new_segment(cb_circuit *c)
{
    cb_info info;
    return cb_info_get(c, &info) == 0 && info.total_successes == 0;
}

static bool all_bound_to_new_segment(cb_circuit **cs)
{
    for (int i = 0; i < HANDLES; i++) {
        if (!bound_to_new_segment(cs[i]))
            return false;
    }
    return true;
}

Test(replacement, a_stalled_replacement_daemon_never_makes_cb_allow_wait_and_every_handle_moves_over)
{
    static const struct tsup_daemon_opts o = {.capacity = 256};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(3, 1, 1, 600000);
    static cb_circuit *cs[HANDLES];
    for (int i = 0; i < HANDLES; i++) {
        char name[32];
        snprintf(name, sizeof name, "svc.%d", i);
        cs[i] = tsup_circuit(cl, name, &cfg);
        cr_assert_eq(tsup_record_n(cs[i], CB_SUCCESS, 1), 1);
    }
    for (int i = 0; i < HANDLES; i++)
        cr_assert(tsup_wait_drained(cs[i], 1), "svc.%d: its success was never counted", i);
    cr_assert(tsup_wait_until(stored_circuits("svc.") == HANDLES, TSUP_LIVENESS_MS), "the store never held them all");

    /* The new daemon restores the even circuits from its store and has
     * never heard of the odd ones. */
    tsup_daemon_kill9(&d);
    drop_from_store(odd_name);
    cr_assert_eq(stored_circuits("svc."), HANDLES / 2);
    start_stalled("512");

    struct caller k = {.cs = cs};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, call_all, &k), 0);
    bool done = tsup_wait_until(atomic_load(&k.done), 5 * REQUEST_TIMEOUT_NS / 1000000);
    cr_assert(done, "%d x %d calls of cb_allow did not complete in 5 request timeouts: cb_allow waits for the "
                    "stopped daemon", ROUNDS, HANDLES);
    pthread_join(th, NULL);
    double ratio = (double)k.elapsed_ns / (double)REQUEST_TIMEOUT_NS;
    cr_log_info("%d calls of cb_allow took %.4f request timeouts (%lld ns); kinds: rejected %ld, allowed %ld, "
                "probe %ld, bypass %ld", ROUNDS * HANDLES, ratio, (long long)k.elapsed_ns, k.kinds[0], k.kinds[1],
                k.kinds[2], k.kinds[3]);
    cr_assert_lt(ratio, 1.0, "all %d calls together took %.2f request timeouts: some call waited for the daemon",
                 ROUNDS * HANDLES, ratio);
    cr_assert(daemon_stopped(), "the daemon ran during the calls: the test proves nothing");
    cr_assert_eq(k.kinds[CB_TICKET_REJECTED] + k.kinds[CB_TICKET_PROBE], 0, "CLOSED circuits were not permitted");
    /* Without the daemon, by the new segment's index alone: */
    for (int i = 0; i < HANDLES; i += 2)
        cr_assert(bound_to_new_segment(cs[i]), "svc.%d is in the new segment but its handle did not move", i);

    cr_assert_eq(kill(d.pid, SIGCONT), 0);
    cr_assert(tsup_wait_until(all_bound_to_new_segment(cs), TSUP_LIVENESS_MS),
              "not every handle moved to the new segment once the daemon answered");
    for (int i = 0; i < HANDLES; i++) {
        cb_info info = tsup_info(cs[i]);
        char name[32];
        snprintf(name, sizeof name, "svc.%d", i);
        cr_assert_str_eq(info.name, name);
        cr_assert_eq(info.config.failure_threshold, 3, "svc.%d lost its config", i);
        cr_assert_eq(tsup_record_n(cs[i], CB_FAILURE, 3), 3);
    }
    for (int i = 0; i < HANDLES; i++) {
        cr_assert(tsup_wait_state(cs[i], CB_OPEN), "svc.%d: the new daemon never saw its failures", i);
        cr_assert_eq(tsup_ticket_kind(cb_allow(cs[i])), CB_TICKET_REJECTED);
    }
    cr_assert(cb_status(cl) & CB_STATUS_REMAPPED);
}

/* The new daemon will know no circuit: what a host whose store was lost
 * (or never written: cbd writes it shortly after a change) starts with. */
static void forget_store(void)
{
    cr_assert(unlink(state_file()) == 0 || errno == ENOENT, "unlink %s: %s", state_file(), strerror(errno));
}

Test(replacement, a_name_the_new_segment_lacks_is_registered_again_in_the_background_with_its_config)
{
    /* A long staleness limit: the dead daemon's OPEN record keeps rejecting
     * for the whole test, so what the handle answers says which record it
     * reads. */
    static const struct tsup_daemon_opts o = {.capacity = 64, .stale_limit_ms = 600000};
    tsup_fixture_start(&d, &cl, &o);
    cb_circuit *c = open_circuit("payments", 2);
    tsup_daemon_kill9(&d);
    forget_store();
    start_stalled("128");

    /* The first call notices the replacement, finds no "payments" in the
     * new segment, sends its registration and answers from the retired
     * record: OPEN, its daemon gone but not stale yet. */
    int64_t t0 = now_ns();
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED, "call %d", i);
    cr_assert_lt((double)(now_ns() - t0) / REQUEST_TIMEOUT_NS, 1.0);
    cr_assert_eq(tsup_info(c).state, CB_OPEN, "the retired record's last state");

    cr_assert_eq(kill(d.pid, SIGCONT), 0);
    cb_ticket t;
    cr_assert(tsup_wait_until(tsup_ticket_kind(t = cb_allow(c)) == CB_TICKET_ALLOWED, TSUP_LIVENESS_MS),
              "the handle never moved to the circuit registered in the new segment (ticket kind %u)",
              tsup_ticket_kind(t));
    cb_info info = tsup_info(c);
    cr_assert_eq(info.state, CB_CLOSED);
    cr_assert_eq(info.config.failure_threshold, 2, "the registration did not carry the handle's config");
    trip(c, 2);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED);
}

Test(replacement, cb_status_alone_moves_handles_whose_name_the_new_segment_lacks)
{
    static const struct tsup_daemon_opts o = {.capacity = 64};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(2, 1, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "search", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 1), 1);
    cr_assert(tsup_wait_drained(c, 1));
    tsup_daemon_kill9(&d);
    forget_store();
    set_capacity("128");
    cr_assert_eq(tsup_daemon_restart(&d), 0);

    cr_assert(tsup_wait_until(cb_status(cl) & CB_STATUS_REMAPPED, TSUP_LIVENESS_MS));
    cr_assert(tsup_wait_until((cb_status(cl), bound_to_new_segment(c)), TSUP_LIVENESS_MS),
              "cb_status did not register the handle's circuit in the new segment");
    cr_assert_eq(tsup_info(c).config.failure_threshold, 2);
    trip(c, 2);
    /* the transition history is the new segment's */
    cb_transition tr = tsup_next_transition(cl, "search");
    cr_assert_eq(tr.from, CB_CLOSED);
    cr_assert_eq(tr.to, CB_OPEN);
}

struct reader {
    _Atomic int done;
    int rc;
};

static void *read_history(void *arg)
{
    struct reader *r = arg;
    cb_transition t;
    r->rc = cb_next_transition(cl, &t);
    atomic_store(&r->done, 1);
    return NULL;
}

Test(replacement, reading_transitions_never_waits_for_a_thread_that_holds_the_client)
{
    tsup_fixture_start(&d, &cl, NULL);
    open_circuit("payments", 1);
    /* Another thread in the middle of something on the client (moving
     * every handle in cb_status, say): */
    pthread_mutex_lock(&cl->lock);
    struct reader r = {0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, read_history, &r), 0);
    bool done = tsup_wait_until(atomic_load(&r.done), TSUP_LIVENESS_MS);
    pthread_mutex_unlock(&cl->lock);
    pthread_join(th, NULL);
    cr_assert(done, "cb_next_transition waited for the client lock");
    cr_assert_eq(r.rc, 1, "the OPEN transition was not read");
}

/* name is in the daemon's segment (its index, as libcb reads it). */
static bool in_segment(const char *name)
{
    size_t size;
    const struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
    cr_assert_not_null(h);
    int slot = cb__seg_lookup(h, name, strlen(name), cb__name_hash(name, strlen(name)), NULL);
    munmap((void *)h, size);
    return slot >= 0;
}

Test(replacement, a_circuit_removed_by_expiry_is_registered_again_by_a_worker_that_uses_it)
{
    /* circuit_expiry_s 1: a CLOSED circuit nobody used for a second goes */
    static const struct tsup_daemon_opts o = {.extra = {"--circuit-expiry-s", "1"}};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(2, 1, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "inventory", &cfg);
    cr_assert(tsup_wait_until(!in_segment("inventory"), 3 * TSUP_LIVENESS_MS), "the idle circuit never expired");

    /* Until the registration it sends is answered (the daemon is stopped),
     * the handle knows nothing of its circuit: calls are let through
     * uncounted, and never wait. */
    cr_assert_eq(kill(d.pid, SIGSTOP), 0);
    int64_t t0 = now_ns();
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_BYPASS, "call %d", i);
    cr_assert_lt((double)(now_ns() - t0) / REQUEST_TIMEOUT_NS, 1.0);
    cr_assert_eq(cb_info_get(c, &(cb_info){0}), -ENOENT, "a removed circuit still has a snapshot");
    cr_assert_eq(kill(d.pid, SIGCONT), 0);

    cb_ticket t;
    cr_assert(tsup_wait_until(tsup_ticket_kind(t = cb_allow(c)) == CB_TICKET_ALLOWED, TSUP_LIVENESS_MS),
              "the handle of an expired circuit never moved to its new registration (ticket kind %u)",
              tsup_ticket_kind(t));
    trip(c, 2); /* before it could expire again */
    cb_info info = tsup_info(c);
    cr_assert_str_eq(info.name, "inventory");
    cr_assert_eq(info.config.failure_threshold, 2, "the registration did not carry the handle's config");
}

Test(replacement, a_removed_circuit_is_registered_again_by_the_workers_that_use_it)
{
    tsup_fixture_start(&d, &cl, NULL);
    cb_circuit *c = open_circuit("inventory", 2);
    int rc = tsup_ctl_named_op(&d, "remove", "inventory");
    if (rc == -EOPNOTSUPP)
        cr_skip_test("this cbd has no 'remove' operation (removal by circuit_expiry_s is tested above)");
    cr_assert_eq(rc, 0, "remove: %s", strerror(-rc));

    /* The handle's record says REMOVED: calls are let through uncounted
     * until the registration they sent is answered, then the new circuit
     * (CLOSED, with the handle's config) decides. */
    cb_ticket t;
    cr_assert(tsup_wait_until(tsup_ticket_kind(t = cb_allow(c)) == CB_TICKET_ALLOWED, TSUP_LIVENESS_MS),
              "the handle of a removed circuit never moved to its new registration (ticket kind %u)",
              tsup_ticket_kind(t));
    cb_info info = tsup_info(c);
    cr_assert_str_eq(info.name, "inventory");
    cr_assert_eq(info.state, CB_CLOSED);
    cr_assert_eq(info.config.failure_threshold, 2);
    trip(c, 2);
}

/* Truncates an instance's shm object (the state region, or the lanes
 * region with lanes) to size bytes, as root can. */
static void truncate_object(bool lanes, off_t size)
{
    char state_name[CB_SHM_NAME_MAX], lanes_name[CB_SHM_NAME_MAX];
    cb__shm_names(d.instance, state_name, lanes_name);
    int fd = shm_open(lanes ? lanes_name : state_name, O_RDWR, 0);
    cr_assert_geq(fd, 0, "shm_open: %s", strerror(errno));
    cr_assert_eq(ftruncate(fd, size), 0, "ftruncate: %s", strerror(errno));
    close(fd);
}

static off_t object_size(bool lanes)
{
    size_t size;
    void *p = tsup_seg_map(d.instance, lanes ? TSUP_MAP_LANES : 0, &size);
    cr_assert_not_null(p);
    munmap(p, size);
    return (off_t)size;
}

static void expect_refused(const char *what)
{
    cb_client *other = NULL;
    int rc = cb_client_open(&other, d.instance);
    cr_assert_eq(rc, CB_EDAMAGED, "%s: cb_client_open gave %d (%s)", what, rc, cb_strerror(rc));
    cr_assert_null(other);
    cr_assert(strstr(cb_strerror(rc), "truncated") != NULL, "the error does not say what is wrong: %s",
              cb_strerror(rc));
}

Test(replacement, truncated_segment_objects_are_refused_with_a_clear_error_not_a_sigbus)
{
    tsup_fixture_start(&d, &cl, NULL);
    tsup_circuit(cl, "payments", NULL);
    cr_assert_eq(tsup_daemon_stop(&d), 0); /* cbd keeps the objects for its next start */
    cb_client_close(cl);
    cl = NULL;
    off_t state = object_size(false), lanes = object_size(true);

    truncate_object(true, lanes / 2);
    expect_refused("lanes region cut in half");
    truncate_object(true, 100);
    expect_refused("lanes region shorter than its header");
    truncate_object(true, lanes);

    truncate_object(false, state / 2);
    expect_refused("state region cut in half");
    truncate_object(false, 100);
    int64_t t0 = now_ns();
    expect_refused("state region shorter than its header");
    cr_assert_lt((double)(now_ns() - t0) / REQUEST_TIMEOUT_NS, 1.0, "a truncated header was waited for");
}

struct scribbled {
    cb_circuit *c;
    int kind;
};

/* A thread new to the mapping: its first cb_record claims a lane. */
static void *allow_and_record(void *arg)
{
    struct scribbled *s = arg;
    cb_ticket t = cb_allow(s->c);
    s->kind = (int)tsup_ticket_kind(t);
    cb_record(s->c, t, CB_SUCCESS);
    return NULL;
}

Test(replacement, a_worker_that_overwrites_the_lanes_header_crashes_no_other_worker)
{
    static const struct tsup_daemon_opts o = {.stale_limit_ms = 600000};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(1, 1, 1, 100);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_HALF_OPEN), "the circuit never reached HALF_OPEN");
    cr_assert_eq(tsup_daemon_stop(&d), 0); /* the lanes as the workers see them, nobody fixing them */

    size_t size;
    struct cb_lanes_header *lh = tsup_seg_map(d.instance, TSUP_MAP_LANES | TSUP_MAP_RW, &size);
    cr_assert_not_null(lh);
    lh->lane_count = UINT32_MAX;
    lh->lane_capacity = 1u << 31;
    lh->lane_stride = UINT32_MAX;
    lh->lanes_offset = UINT64_MAX / 2;
    lh->permits_offset = UINT64_MAX / 2;
    munmap(lh, size);

    pid_t pid = tsup_fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) { /* another worker: a probe permit, a new lane, then close */
        struct scribbled s = {.c = c};
        pthread_t th;
        if (pthread_create(&th, NULL, allow_and_record, &s) != 0 || pthread_join(th, NULL) != 0)
            _exit(10);
        cb_client_close(cl);
        _exit(s.kind == CB_TICKET_PROBE ? 0 : 11);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status), "the worker died of signal %d", WTERMSIG(status));
    cr_assert_eq(WEXITSTATUS(status), 0, "the worker got no probe permit (exit %d)", WEXITSTATUS(status));
}
