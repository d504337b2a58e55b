/*
 * test_operator.c - the operator's side of the control socket: force open
 * (held, and for a while), force closed, reset, disable/enable, show,
 * list, subscribe, and the same through cbctl.
 *
 * Every effect is checked where it matters: in what cb_allow() hands a
 * worker (tickets) and what the history ring records (source operator or
 * timer, a new epoch even when the state stays), and in what an operator
 * reads back (cbctl list --json, parsed with jansson).
 *
 * cbctl is found next to the test's build tree (or $TSUP_CBCTL): the tests
 * CMake passes CBD_PATH to the support library only.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(operator, .fini = stop, .timeout = 90);

/* ---- helpers ----------------------------------------------------------------- */

/* {"op": op, "name": name[, key: val]} on a fresh connection (as tsup_ctl_read). */
static int ctl_named(const char *op, const char *name, const char *key, uint64_t val, struct tsup_reply *r)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    int fd = tsup_ctl_connect(&d);
    if (fd < 0)
        return fd;
    tsup_req_begin(&sb, &pk, op, 2 + (key != NULL));
    cb__mp_kv_str(&pk, "name", name);
    if (key != NULL)
        cb__mp_kv_u64(&pk, key, val);
    int rc = tsup_ctl_call(fd, &sb, r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    return rc;
}

/* An admin op that must succeed. */
static void op_ok(const char *op, const char *name)
{
    struct tsup_reply r;
    cr_assert_eq(ctl_named(op, name, NULL, 0, &r), 1, "%s %s: no reply", op, name);
    cr_assert(tsup_reply_ok(&r), "%s %s: error %lld", op, name, (long long)tsup_reply_error(&r));
    tsup_reply_free(&r);
}

/* cbctl --socket S --instance I args...: exit status, stdout in out. */
static int cbctl(char *out, size_t size, const char *a1, const char *a2, const char *a3, const char *a4)
{
    char *argv[] = {(char *)tsup_cbctl_path(), "--instance", d.instance, "--socket", d.socket,
                    (char *)a1, (char *)a2, (char *)a3, (char *)a4, NULL};
    char *text;
    int status = tsup_run(argv, &text, false);
    snprintf(out, size, "%s", text);
    free(text);
    return status;
}

static void start(void)
{
    cr_assert_eq(tsup_daemon_start(&d, NULL), 0, "cbd did not start");
    cl = tsup_client(&d);
}

/* ---- the operations, seen by a worker --------------------------------------- */

Test(operator, force_open_holds_the_circuit_open_whatever_outcomes_say)
{
    start();
    cb_config cfg = tsup_config(5, 1, 1, 100); /* a 100 ms recovery would probe at once if it were not held */
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    uint32_t epoch = tsup_info(c).epoch;
    op_ok("force_open", "payments");
    cb_info i = tsup_info(c);
    cr_assert_eq(i.state, CB_OPEN);
    cr_assert(i.forced, "the circuit is not marked forced");
    cr_assert_eq(i.epoch, epoch + 1);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED);
    usleep(400 * 1000); /* four recovery timeouts: still held, no probe */
    cr_assert_eq(tsup_info(c).state, CB_OPEN, "a forced OPEN went on to HALF_OPEN");
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_REJECTED);
    cb_transition t = tsup_next_transition(cl, "payments");
    cr_assert_eq(t.to, CB_OPEN);
    cr_assert_eq(t.source, CB_SOURCE_OPERATOR);
    op_ok("reset", "payments");
    i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED);
    cr_assert(!i.forced);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_ALLOWED);
}

Test(operator, force_open_for_a_while_returns_to_closed_by_timer)
{
    start();
    cb_circuit *c = tsup_circuit(cl, "search", NULL);
    char out[4096];
    cr_assert_eq(cbctl(out, sizeof out, "open", "search", "--for", "300ms"), 0);
    cr_assert_eq(tsup_info(c).state, CB_OPEN);
    struct tsup_reply r;
    cr_assert_eq(ctl_named("show", "search", NULL, 0, &r), 1);
    int64_t until = 0;
    cr_assert_eq(cb__mp_get_i64(r.map, "forced_until", &until), 0);
    cr_assert_gt(until, 0, "show does not say when the forced OPEN ends");
    tsup_reply_free(&r);
    cr_assert(tsup_wait_state(c, CB_CLOSED), "open --for 300ms never expired");
    cb_info i = tsup_info(c);
    cr_assert(!i.forced, "the circuit stayed forced after its time");
    cb_transition t = tsup_next_transition(cl, "search");
    cr_assert_eq(t.source, CB_SOURCE_OPERATOR);
    t = tsup_next_transition(cl, "search");
    cr_assert_eq(t.to, CB_CLOSED);
    cr_assert_eq(t.source, CB_SOURCE_TIMER, "the expiry's source is %d, not timer", t.source);
}

Test(operator, force_closed_counts_failures_but_never_trips)
{
    start();
    cb_config cfg = tsup_config(2, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "ledger", &cfg);
    op_ok("force_closed", "ledger");
    cr_assert(tsup_info(c).forced);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 10), 10, "a forced CLOSED circuit rejected a call");
    cr_assert(tsup_wait_drained(c, 10), "the failures were not counted");
    cr_assert_eq(tsup_info(c).state, CB_CLOSED, "a forced CLOSED circuit tripped");
    cr_assert_eq(tsup_info(c).total_failures, 10);
    op_ok("reset", "ledger");
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_state(c, CB_OPEN), "after reset the policy does not trip again");
}

Test(operator, reset_clears_the_streak_and_bumps_the_epoch)
{
    start();
    cb_config cfg = tsup_config(3, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "mail", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2);
    cr_assert(tsup_wait_until(tsup_info(c).failure_count == 2, TSUP_LIVENESS_MS));
    uint32_t epoch = tsup_info(c).epoch;
    op_ok("reset", "mail");
    cb_info i = tsup_info(c);
    cr_assert_eq(i.failure_count, 0, "reset left a streak of %u", i.failure_count);
    cr_assert_eq(i.epoch, epoch + 1);
    cb_transition t = tsup_next_transition(cl, "mail");
    cr_assert_eq(t.from, CB_CLOSED);
    cr_assert_eq(t.to, CB_CLOSED, "a reset of a CLOSED circuit is a CLOSED -> CLOSED transition");
    cr_assert_eq(t.source, CB_SOURCE_OPERATOR);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2);
    usleep(100 * 1000);
    cr_assert_eq(tsup_info(c).state, CB_CLOSED, "the old streak survived the reset");
}

Test(operator, disable_bypasses_and_counts_nothing_until_enable)
{
    start();
    cb_config cfg = tsup_config(1, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "geo", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    op_ok("disable", "geo");
    cb_info i = tsup_info(c);
    cr_assert(i.disabled);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_BYPASS, "a disabled circuit does not bypass");
    uint64_t failures = i.total_failures;
    for (int k = 0; k < 20; k++)
        cb_record(c, cb_allow(c), CB_FAILURE);
    usleep(100 * 1000);
    cr_assert_eq(tsup_info(c).total_failures, failures, "a disabled circuit counted outcomes");
    cb_transition t = tsup_next_transition(cl, "geo"); /* the trip */
    t = tsup_next_transition(cl, "geo");
    cr_assert_eq(t.from, CB_OPEN);
    cr_assert_eq(t.to, CB_OPEN, "disable changed the state underneath");
    op_ok("enable", "geo");
    i = tsup_info(c);
    cr_assert_eq(i.state, CB_CLOSED);
    cr_assert(!i.disabled);
    cr_assert_eq(tsup_ticket_kind(cb_allow(c)), CB_TICKET_ALLOWED);
}

/* op on circuit "nosuch" over the socket is -ENOENT naming it, and cbctl
 * command on it exits 4. */
static void expect_no_such_circuit(const char *op, const char *command)
{
    struct tsup_reply r;
    cr_assert_eq(ctl_named(op, "nosuch", NULL, 0, &r), 1);
    cr_assert_eq(tsup_reply_error(&r), -ENOENT, "%s: error %lld", op, (long long)tsup_reply_error(&r));
    char msg[256];
    cr_assert_eq(cb__mp_get_str(r.map, "message", msg, sizeof msg), 0);
    cr_assert_str_eq(msg, "no circuit named 'nosuch'");
    tsup_reply_free(&r);
    char out[4096];
    cr_assert_eq(cbctl(out, sizeof out, command, "nosuch", NULL, NULL), 4, "cbctl %s: exit for no such circuit",
                 command);
}

Test(operator, an_unknown_circuit_is_enoent_naming_it)
{
    start();
    expect_no_such_circuit("force_open", "reset");
}

Test(operator, force_open_for_ms_out_of_bounds_is_einval)
{
    start();
    tsup_circuit(cl, "x", NULL);
    struct tsup_reply r;
    cr_assert_eq(ctl_named("force_open", "x", "for_ms", 0, &r), 1);
    cr_assert_eq(tsup_reply_error(&r), -EINVAL);
    tsup_reply_free(&r);
    cr_assert_eq(ctl_named("force_open", "x", "for_ms", 700000000ull, &r), 1);
    cr_assert_eq(tsup_reply_error(&r), -EINVAL);
    tsup_reply_free(&r);
}

/* ---- every worker at once ------------------------------------------------------ */

enum { WORKERS = 8 };

Test(operator, forced_open_rejects_in_every_worker)
{
    start();
    cb_circuit *c = tsup_circuit(cl, "shared", NULL);
    _Atomic int *rejected = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(rejected, MAP_FAILED);
    pid_t pids[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        if ((pids[w] = tsup_fork()) == 0) { /* a prefork child: the master's handle */
            struct tsup_deadline dl = tsup_deadline_in(3 * TSUP_LIVENESS_MS);
            while (tsup_ticket_kind(cb_allow(c)) != CB_TICKET_REJECTED)
                if (!tsup_deadline_wait(&dl))
                    _exit(1);
            rejected[w] = 1;
            _exit(0);
        }
    }
    usleep(100 * 1000);
    op_ok("force_open", "shared");
    for (int w = 0; w < WORKERS; w++) {
        int status;
        cr_assert_eq(waitpid(pids[w], &status, 0), pids[w]);
        tsup_untrack(pids[w]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d never saw the forced OPEN", w);
        cr_assert_eq(rejected[w], 1);
    }
    munmap(rejected, 4096);
}

/* ---- what an operator reads ------------------------------------------------------ */

Test(operator, cbctl_list_json_shows_forced_and_disabled)
{
    start();
    tsup_circuit(cl, "a", NULL);
    tsup_circuit(cl, "b", NULL);
    tsup_circuit(cl, "c", NULL);
    char out[16384];
    cr_assert_eq(cbctl(out, sizeof out, "open", "a", NULL, NULL), 0);
    cr_assert_eq(cbctl(out, sizeof out, "disable", "b", NULL, NULL), 0);
    cr_assert_eq(cbctl(out, sizeof out, "list", "--json", NULL, NULL), 0);
    json_error_t jerr;
    json_t *arr = json_loads(out, 0, &jerr);
    cr_assert_not_null(arr, "cbctl list --json is not JSON: %s: %s", jerr.text, out);
    cr_assert(json_is_array(arr));
    cr_assert_eq(json_array_size(arr), 3);
    size_t i;
    json_t *row;
    json_array_foreach(arr, i, row) {
        const char *name = json_string_value(json_object_get(row, "name"));
        const char *state = json_string_value(json_object_get(row, "state"));
        int forced = json_is_true(json_object_get(row, "forced"));
        int disabled = json_is_true(json_object_get(row, "disabled"));
        cr_assert_not_null(name);
        if (strcmp(name, "a") == 0)
            cr_assert(strcmp(state, "OPEN") == 0 && forced && !disabled, "a: %s forced=%d", state, forced);
        else if (strcmp(name, "b") == 0)
            cr_assert(strcmp(state, "CLOSED") == 0 && disabled, "b: %s disabled=%d", state, disabled);
        else
            cr_assert(strcmp(state, "CLOSED") == 0 && !forced && !disabled);
    }
    json_decref(arr);
}

Test(operator, show_and_list_over_the_socket)
{
    start();
    cb_config cfg = tsup_config(7, 2, 1, 60000);
    tsup_circuit(cl, "inventory", &cfg);
    tsup_circuit(cl, "billing", NULL);
    struct tsup_reply r;
    cr_assert_eq(ctl_named("show", "inventory", NULL, 0, &r), 1);
    cr_assert(tsup_reply_ok(&r));
    char state[16];
    uint64_t ft = 0;
    cr_assert_eq(cb__mp_get_str(r.map, "state", state, sizeof state), 0);
    cr_assert_str_eq(state, "CLOSED");
    cr_assert_eq(cb__mp_get_u64(cb__mp_get(r.map, "config"), "failure_threshold", &ft), 0);
    cr_assert_eq(ft, 7);
    tsup_reply_free(&r);
    cr_assert_eq(tsup_ctl_op(&d, "list", &r), 1);
    const msgpack_object *circuits = cb__mp_get(r.map, "circuits");
    cr_assert(circuits != NULL && circuits->type == MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(circuits->via.array.size, 2);
    cr_assert_null(cb__mp_get(r.map, "next"), "two circuits did not fit in one list reply");
    tsup_reply_free(&r);
}

Test(operator, list_pages_when_circuits_do_not_fit_one_frame)
{
    start();
    char name[32];
    for (int i = 0; i < 400; i++) {
        snprintf(name, sizeof name, "svc-%03d", i);
        tsup_circuit(cl, name, NULL);
    }
    uint64_t offset = 0, seen = 0, total = 0;
    for (int pages = 0; pages < 20; pages++) {
        int fd = tsup_ctl_connect(&d);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct tsup_reply r;
        tsup_req_begin(&sb, &pk, "list", 2);
        cb__mp_kv_u64(&pk, "offset", offset);
        cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1);
        msgpack_sbuffer_destroy(&sb);
        close(fd);
        seen += cb__mp_get(r.map, "circuits")->via.array.size;
        cr_assert_eq(cb__mp_get_u64(r.map, "total", &total), 0);
        int more = cb__mp_get_u64(r.map, "next", &offset) == 0;
        tsup_reply_free(&r);
        if (!more)
            break;
    }
    cr_assert_eq(total, 400);
    cr_assert_eq(seen, 400, "paging through list saw %llu of 400 circuits", (unsigned long long)seen);
}

/* ---- subscribe ---------------------------------------------------------------------- */

/* The next frame on a subscribed connection: its "to" and "source". */
static void next_event(int fd, const char *name, const char *to, const char *source)
{
    struct tsup_reply r;
    char got[64], v[64];
    cr_assert_eq(tsup_ctl_read(fd, &r), 1, "no transition frame for %s -> %s", name, to);
    cr_assert_eq(cb__mp_get_str(r.map, "event", v, sizeof v), 0);
    cr_assert_str_eq(v, "transition");
    cr_assert_eq(cb__mp_get_str(r.map, "name", got, sizeof got), 0);
    cr_assert_str_eq(got, name);
    cr_assert_eq(cb__mp_get_str(r.map, "to", v, sizeof v), 0);
    cr_assert_str_eq(v, to);
    cr_assert_eq(cb__mp_get_str(r.map, "source", v, sizeof v), 0);
    cr_assert_str_eq(v, source);
    tsup_reply_free(&r);
}

Test(operator, subscribe_streams_every_transition_in_order)
{
    start();
    cb_config cfg = tsup_config(1, 1, 1, 60000);
    cb_circuit *c = tsup_circuit(cl, "orders", &cfg);
    int fd = tsup_ctl_connect(&d);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct tsup_reply r;
    tsup_req_begin(&sb, &pk, "subscribe", 1);
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1);
    cr_assert(tsup_reply_ok(&r));
    tsup_reply_free(&r);
    cr_assert_eq(tsup_ctl_send_raw(fd, "\0\0\0\1\x80", 5), 0); /* a request: ignored, not answered */
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(c, CB_OPEN));
    op_ok("reset", "orders");
    op_ok("disable", "orders");
    op_ok("enable", "orders");
    next_event(fd, "orders", "OPEN", "local");
    next_event(fd, "orders", "CLOSED", "operator");
    next_event(fd, "orders", "CLOSED", "operator");
    next_event(fd, "orders", "CLOSED", "operator");
    cr_assert_eq(tsup_stat(&d, "subscribers"), 1);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
}

/* ---- remove ---------------------------------------------------------------------- */

Test(operator, removing_an_unknown_circuit_is_enoent_naming_it)
{
    start();
    expect_no_such_circuit("remove", "remove");
    char out[4096];
    cr_assert_eq(cbctl(out, sizeof out, "remove", "not utf-8 \xff", NULL, NULL), 2, "cbctl's exit for a bad name");
    cr_assert_eq(cbctl(out, sizeof out, "remove", NULL, NULL, NULL), 2, "cbctl's exit without a name");
}

/* Enabled by itself once cbd_circuit_remove exists: until then the daemon
 * answers -ENOSYS and the test is skipped. */
Test(operator, a_removed_circuit_is_gone_from_show_and_list)
{
    start();
    tsup_circuit(cl, "payments", NULL);
    tsup_circuit(cl, "orders", NULL);
    tsup_circuit(cl, "search", NULL);
    struct tsup_reply r;
    cr_assert_eq(ctl_named("remove", "orders", NULL, 0, &r), 1);
    if (tsup_reply_error(&r) == -ENOSYS) {
        tsup_reply_free(&r);
        cr_skip_test("this cbd cannot remove circuits yet (remove answers -ENOSYS)");
    }
    cr_assert(tsup_reply_ok(&r), "remove orders: error %lld", (long long)tsup_reply_error(&r));
    char v[64];
    cr_assert_eq(cb__mp_get_str(r.map, "name", v, sizeof v), 0);
    cr_assert_str_eq(v, "orders");
    cr_assert_eq(cb__mp_get_str(r.map, "state", v, sizeof v), 0);
    cr_assert_str_eq(v, "CLOSED");
    tsup_reply_free(&r);

    char out[16384];
    cr_assert_eq(cbctl(out, sizeof out, "remove", "payments", NULL, NULL), 0, "cbctl remove: %s", out);
    cr_assert_not_null(strstr(out, "removed circuit payments (slot 0, was CLOSED)"), "cbctl remove said: %s", out);
    cr_assert_eq(cbctl(out, sizeof out, "remove", "search", "--json", NULL), 0);
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    cr_assert_not_null(j, "cbctl remove --json is not JSON: %s", out);
    cr_assert_str_eq(json_string_value(json_object_get(j, "name")), "search");
    json_decref(j);

    cr_assert_eq(cbctl(out, sizeof out, "show", "payments", NULL, NULL), 4, "cbctl show finds a removed circuit");
    cr_assert_eq(cbctl(out, sizeof out, "list", "--json", NULL, NULL), 0);
    json_t *arr = json_loads(out, 0, &jerr);
    cr_assert(json_is_array(arr), "cbctl list --json: %s", out);
    cr_assert_eq(json_array_size(arr), 0, "cbctl list still lists removed circuits: %s", out);
    json_decref(arr);
    cr_assert_eq(cbctl(out, sizeof out, "remove", "payments", NULL, NULL), 4, "a second remove found it");
}

/* cbctl a1 a2 a3 must fail with a usage error (2) whose message says
 * expect. */
static void usage_error(const char *a1, const char *a2, const char *a3, const char *expect)
{
    char *argv[] = {(char *)tsup_cbctl_path(), "--instance", d.instance, "--socket", d.socket,
                    (char *)a1, (char *)a2, (char *)a3, NULL};
    char *text = NULL;
    cr_assert_eq(tsup_run(argv, &text, true), 2, "cbctl %s %s %s: %s", a1, a2, a3, text);
    cr_assert_not_null(strstr(text, expect), "cbctl %s %s %s: %s", a1, a2, a3, text);
    free(text);
}

/* cbctl set takes resilience4j's names for the window type; only the
 * number travels, and a word it does not know is refused before sending. */
Test(operator, cbctl_set_takes_the_window_types_resilience4j_names)
{
    char out[4096];
    start();
    cb_config cfg = tsup_config(5, 1, 1, 30000);
    cb_circuit *c = tsup_circuit(cl, "search", &cfg);
    cr_assert_eq(cbctl(out, sizeof out, "set", "search", "sliding_window_type=TIME_BASED", NULL), 0, "%s", out);
    cr_assert_eq(tsup_info(c).config.sliding_window_type, 2, "the circuit runs a time window");
    cr_assert_eq(cbctl(out, sizeof out, "set", "search", "sliding_window_type=count_based", NULL), 0, "%s", out);
    cr_assert_eq(tsup_info(c).config.sliding_window_type, 1);
    usage_error("set", "search", "sliding_window_type=SLIDING",
                "'sliding_window_type=SLIDING': sliding_window_type is a number or one of "
                "CONSECUTIVE | COUNT_BASED | TIME_BASED (any case)");
    cr_assert_eq(tsup_info(c).config.sliding_window_type, 1, "nothing was sent");
}

/* Numbers that are not plain decimals are usage errors naming what was
 * wrong, and nothing is sent: strtod alone takes nan, hex and exponents. */
Test(operator, cbctl_refuses_durations_and_counts_that_are_not_plain_numbers)
{
    char out[4096];
    start();
    cb_config cfg = tsup_config(5, 1, 1, 30000);
    cb_circuit *c = tsup_circuit(cl, "search", &cfg);
    static const char *const bad_for[] = {"nan", "inf", "0x10", "1e3", "-5s", "1.", ".5s", "5 s", "5w"};
    for (size_t i = 0; i < sizeof bad_for / sizeof *bad_for; i++) {
        cr_assert_eq(cbctl(out, sizeof out, "open", "search", "--for", bad_for[i]), 2, "--for %s: %s", bad_for[i],
                     out);
        cr_assert_eq(tsup_info(c).state, CB_CLOSED, "--for %s forced the circuit open", bad_for[i]);
    }
    cr_assert_eq(cbctl(out, sizeof out, "open", "search", "--for", "1.5s"), 0, "%s", out);
    cr_assert_eq(tsup_info(c).state, CB_OPEN);
    static const char *const bad_count[] = {"x", "0", "-1", "3x", ""};
    for (size_t i = 0; i < sizeof bad_count / sizeof *bad_count; i++)
        usage_error("watch", "--count", bad_count[i], "is not a number of transitions");
    usage_error("top", "--interval", "50", "--interval '50' is not a number of milliseconds from 100");
    usage_error("--timeout", "abc", "list", "--timeout 'abc' is not a number of milliseconds");
}
