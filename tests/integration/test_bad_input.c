/*
 * test_bad_input.c - cbd facing garbage: malformed and hostile frames on
 * the control socket, invalid names and configs, random bytes written into
 * the lanes region, a full segment, and a worker killed mid-record.
 *
 * The promise under test: any input gives a clear error or is ignored and
 * counted; the daemon stays up, other clients notice nothing, and the
 * circuits keep their state and keep working.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void start(const struct tsup_daemon_opts *o) { tsup_fixture_start(&d, &cl, o); }

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(bad_input, .fini = stop, .timeout = 90);

static uint64_t rng_state = 0x2545f4914f6cdd1dull; /* fixed seed: failures reproduce */

static uint64_t rng(void)
{
    uint64_t x = rng_state; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static void random_bytes(void *p, size_t n)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)rng();
}

/* ---- frames --------------------------------------------------------------- */

/* One bad request: bytes to send as they are. */
struct bad_frame {
    const char *what;
    msgpack_sbuffer sb;
    int expect;     /* the error a reply must carry */
    bool malformed; /* broken below the operation level: frames_bad must count it */
};

static void raw(struct bad_frame *f, const void *bytes, size_t n)
{
    msgpack_sbuffer_write(&f->sb, bytes, n);
}

/* Appends a frame around the map packed by fill (length prefix first). */
static void framed(struct bad_frame *f, void (*fill)(msgpack_packer *))
{
    msgpack_sbuffer body;
    msgpack_packer pk;
    msgpack_sbuffer_init(&body);
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    fill(&pk);
    unsigned char len[4] = {(unsigned char)(body.size >> 24), (unsigned char)(body.size >> 16),
                            (unsigned char)(body.size >> 8), (unsigned char)body.size};
    raw(f, len, 4);
    raw(f, body.data, body.size);
    msgpack_sbuffer_destroy(&body);
}

static void op_number(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    cb__mp_pack_str(pk, "op");
    msgpack_pack_int(pk, 5);
}
static void op_unknown(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    cb__mp_kv_str(pk, "op", "frobnicate");
}
static void no_op(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    cb__mp_kv_str(pk, "name", "payments");
}
static void register_no_name(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    cb__mp_kv_str(pk, "op", "register");
}
static void register_numeric_name(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_u64(pk, "name", 7);
}
static void register_bad_name(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_str(pk, "name", "not utf-8 \xff");
}
static void register_nul_name(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_pack_str(pk, "name");
    msgpack_pack_str(pk, 3);
    msgpack_pack_str_body(pk, "a\0b", 3);
}
static void register_config_string(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_str(pk, "name", "x");
    cb__mp_kv_str(pk, "config", "fast");
}
static void register_threshold_string(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 3);
    cb__mp_kv_str(pk, "op", "register");
    cb__mp_kv_str(pk, "name", "x");
    cb__mp_pack_str(pk, "config");
    msgpack_pack_map(pk, 1);
    cb__mp_kv_str(pk, "failure_threshold", "five");
}
static void non_string_keys(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 1);
    msgpack_pack_int(pk, 1);
    msgpack_pack_int(pk, 2);
}
static void deeply_nested(msgpack_packer *pk)
{
    msgpack_pack_map(pk, 2);
    cb__mp_kv_str(pk, "op", "ping");
    cb__mp_pack_str(pk, "x");
    for (int i = 0; i < 40; i++)
        msgpack_pack_array(pk, 1);
    msgpack_pack_nil(pk);
}

enum { NCASES = 21 };

/* Builds bad frame number i (0..NCASES-1). */
static void bad_frame_case(int i, struct bad_frame *f)
{
    msgpack_sbuffer_init(&f->sb);
    f->malformed = i <= 10;
    f->expect = i <= 3 ? -EMSGSIZE : i <= 10 ? -EBADMSG : i == 14 ? -EOPNOTSUPP : -EINVAL;
    switch (i) {
    case 0: f->what = "length 0"; raw(f, "\0\0\0\0", 4); break;
    case 1: f->what = "length 2^31"; raw(f, "\x80\0\0\0", 4); break;
    case 2: f->what = "length 64 KiB + 1"; raw(f, "\0\x01\0\x01", 4); break;
    case 3: f->what = "length 2^32 - 1"; raw(f, "\xff\xff\xff\xff", 4); break;
    case 4: f->what = "array32 header declaring 2^32-1 elements"; raw(f, "\0\0\0\x05\xdd\xff\xff\xff\xff", 9); break;
    case 5: f->what = "map32 header declaring 2^32-1 pairs"; raw(f, "\0\0\0\x05\xdf\xff\xff\xff\xff", 9); break;
    case 6: f->what = "str32 declaring 4 GiB"; raw(f, "\0\0\0\x07\xdb\xff\xff\xff\xff" "ab", 11); break;
    case 7: f->what = "the never-used byte"; raw(f, "\0\0\0\x01\xc1", 5); break;
    case 8: f->what = "an array, not a map"; raw(f, "\0\0\0\x03\x92\x01\x02", 7); break;
    case 9: f->what = "two maps in one frame"; raw(f, "\0\0\0\x02\x80\x80", 6); break;
    case 10: f->what = "nesting deeper than 16"; framed(f, deeply_nested); break;
    case 11: f->what = "non-string keys"; framed(f, non_string_keys); break;
    case 12: f->what = "no op"; framed(f, no_op); break;
    case 13: f->what = "op is a number"; framed(f, op_number); break;
    case 14: f->what = "unknown op"; framed(f, op_unknown); break;
    case 15: f->what = "register without a name"; framed(f, register_no_name); break;
    case 16: f->what = "register with a numeric name"; framed(f, register_numeric_name); break;
    case 17: f->what = "register with a name containing NUL"; framed(f, register_nul_name); break;
    case 18: f->what = "register with a config that is a string"; framed(f, register_config_string); break;
    case 19: f->what = "register with an invalid name"; framed(f, register_bad_name); break;
    default: f->what = "register with a threshold that is a string"; framed(f, register_threshold_string); break;
    }
}

ParameterizedTestParameters(bad_input, each_bad_frame_gets_an_error_or_a_close_and_cbd_stays_up)
{
    static int cases[NCASES];
    for (int i = 0; i < NCASES; i++)
        cases[i] = i;
    return cr_make_param_array(int, cases, NCASES);
}

/* The bystanders a bad frame must not disturb. */
struct bystanders {
    int ctl_fd;
    cb_circuit *c;
};

static struct bystanders bystanders_start(void)
{
    struct bystanders b = {.ctl_fd = tsup_ctl_connect(&d)};
    cr_assert_geq(b.ctl_fd, 0);
    cb_config cfg = tsup_config(3, 1, 1, 600000);
    b.c = tsup_circuit(cl, "bystander", &cfg);
    cr_assert_eq(tsup_record_n(b.c, CB_FAILURE, 2), 2);
    return b;
}

static void bystanders_check(struct bystanders *b, const char *after)
{
    cr_assert(tsup_ping(&d), "cbd does not answer ping after %s", after);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, "ping", 1);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_call(b->ctl_fd, &sb, &r), 1, "another connection broke after %s", after);
    cr_assert(tsup_reply_ok(&r));
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert(tsup_wait_drained(b->c, 2));
    cr_assert_eq(tsup_info(b->c).failure_count, 2, "a bystander circuit changed after %s", after);
    cr_assert_eq(tsup_record_n(b->c, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(b->c, CB_OPEN), "a bystander circuit no longer trips after %s", after);
    close(b->ctl_fd);
}

/* Sends bytes on a fresh connection; checks the answer is an error reply
 * (with error expect, unless 0: any) or a close, never a success or
 * silence. */
static void send_bad(const char *what, const void *bytes, size_t len, int expect)
{
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    int rc = tsup_ctl_send_raw(fd, bytes, len);
    cr_assert(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "%s: send: %s", what, strerror(-rc));
    shutdown(fd, SHUT_WR); /* a frame waiting for more bytes ends here */
    struct tsup_reply r;
    rc = tsup_ctl_read(fd, &r);
    cr_assert(rc == 0 || rc == 1, "%s: cbd neither answered nor closed (%s)", what, strerror(-rc));
    if (rc == 1) {
        cr_assert(!tsup_reply_ok(&r), "%s: cbd said ok", what);
        cr_assert_lt(tsup_reply_error(&r), 0, "%s: an error reply without a negative errno", what);
        cr_assert(expect == 0 || tsup_reply_error(&r) == expect, "%s: error %lld, expected %d", what,
                  (long long)tsup_reply_error(&r), expect);
        cr_assert_not_null(cb__mp_get(r.map, "message"), "%s: an error reply without a message", what);
        tsup_reply_free(&r);
    }
    close(fd);
}

ParameterizedTest(int *i, bad_input, each_bad_frame_gets_an_error_or_a_close_and_cbd_stays_up)
{
    start(NULL);
    struct bystanders b = bystanders_start();
    struct bad_frame f;
    bad_frame_case(*i, &f);
    uint64_t bad_before = tsup_stat(&d, "frames_bad");
    send_bad(f.what, f.sb.data, f.sb.size, f.expect);
    if (f.malformed)
        cr_assert(tsup_wait_until(tsup_stat(&d, "frames_bad") > bad_before, TSUP_LIVENESS_MS),
                  "%s: frames_bad did not grow", f.what);
    bystanders_check(&b, f.what);
    msgpack_sbuffer_destroy(&f.sb);
}

Test(bad_input, a_truncated_frame_then_close_leaves_cbd_serving)
{
    start(NULL);
    struct bystanders b = bystanders_start();
    for (int k = 0; k < 20; k++) {
        int fd = tsup_ctl_connect(&d);
        cr_assert_geq(fd, 0);
        cr_assert_eq(tsup_ctl_send_raw(fd, "\0\0\0\x64\x81\xa2op", 8), 0); /* 100 bytes promised, 4 sent */
        close(fd);
    }
    bystanders_check(&b, "truncated frames");
}

Test(bad_input, random_bytes_on_the_socket_are_refused_and_counted)
{
    start(NULL);
    struct bystanders b = bystanders_start();
    uint64_t bad_before = tsup_stat(&d, "frames_bad");
    for (int k = 0; k < 50; k++) {
        unsigned char buf[256];
        size_t len = 1 + (size_t)(rng() % sizeof buf);
        random_bytes(buf, len);
        if (k % 2 == 0 && len > 4) { /* half of them with a plausible length */
            uint32_t n = (uint32_t)(len - 4);
            buf[0] = 0, buf[1] = 0, buf[2] = (unsigned char)(n >> 8), buf[3] = (unsigned char)n;
        }
        send_bad("random bytes", buf, len, 0);
    }
    cr_assert(tsup_wait_until(tsup_stat(&d, "frames_bad") > bad_before, TSUP_LIVENESS_MS));
    bystanders_check(&b, "random bytes");
}

Test(bad_input, a_request_after_an_unknown_op_on_the_same_connection_is_still_answered)
{
    start(NULL);
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, "frobnicate", 1);
    struct tsup_reply r;
    int rc = tsup_ctl_call(fd, &sb, &r);
    msgpack_sbuffer_destroy(&sb);
    cr_assert_eq(rc, 1, "an unknown op got no error reply");
    cr_assert(!tsup_reply_ok(&r));
    cr_assert_lt(tsup_reply_error(&r), 0);
    tsup_reply_free(&r);
    tsup_req_begin(&sb, &pk, "version", 1);
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1, "the connection died after a well-formed unknown op");
    cr_assert(tsup_reply_ok(&r));
    char version[32];
    cr_assert_eq(cb__mp_get_str(r.map, "version", version, sizeof version), 0);
    cr_assert_str_eq(version, CB_VERSION_STRING);
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
}

/* ---- names and configs ------------------------------------------------------ */

Test(bad_input, invalid_circuit_names_are_refused_with_einval)
{
    start(NULL);
    char long_name[CB_NAME_MAX + 2];
    memset(long_name, 'n', CB_NAME_MAX + 1);
    long_name[CB_NAME_MAX + 1] = '\0';
    const char *bad[] = {"", long_name, "\xff", "a\x80", "caf\xc3", "\xed\xa0\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cb_circuit *c;
        int rc = cb_circuit_get(cl, bad[i], NULL, &c);
        cr_assert_eq(rc, -EINVAL, "name \"%s\": %s", bad[i], cb_strerror(rc));
    }
    cr_assert_eq(tsup_stat(&d, "circuits"), 0, "an invalid name was registered");
    long_name[CB_NAME_MAX] = '\0';
    tsup_circuit(cl, long_name, NULL); /* 127 bytes is fine */
}

Test(bad_input, out_of_bounds_configs_are_refused_with_einval)
{
    start(NULL);
    struct {
        const char *what;
        cb_config cfg;
    } cases[] = {
        {"failure_threshold 0", tsup_config(0, 3, 1, 1000)},
        {"success_threshold 0", tsup_config(5, 0, 1, 1000)},
        {"half_open_max_probes 0", tsup_config(5, 3, 0, 1000)},
        {"half_open_max_probes 1025", tsup_config(5, 3, 1025, 1000)},
        {"recovery_timeout_ms 0", tsup_config(5, 3, 1, 0)},
        {"recovery_timeout_ms 10 days", tsup_config(5, 3, 1, 864000000u)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cb_circuit *c;
        int rc = cb_circuit_get(cl, "payments", &cases[i].cfg, &c);
        cr_assert_eq(rc, -EINVAL, "%s: %s", cases[i].what, cb_strerror(rc));
    }
    cr_assert_eq(tsup_stat(&d, "circuits"), 0, "an invalid config was registered");
}

/* What the daemon itself says to an out-of-bounds config, bypassing libcb:
 * -EINVAL and a message that names the field. */
static void register_raw(const char *field, int64_t value)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tsup_req_begin(&sb, &pk, "register", 3);
    cb__mp_kv_str(&pk, "name", "x");
    cb__mp_pack_str(&pk, "config");
    msgpack_pack_map(&pk, 1);
    cb__mp_kv_i64(&pk, field, value);
    int fd = tsup_ctl_connect(&d);
    cr_assert_geq(fd, 0);
    struct tsup_reply r;
    cr_assert_eq(tsup_ctl_call(fd, &sb, &r), 1, "%s %lld: no reply", field, (long long)value);
    cr_assert(!tsup_reply_ok(&r), "%s %lld: accepted", field, (long long)value);
    cr_assert_eq(tsup_reply_error(&r), -EINVAL, "%s %lld: error %lld", field, (long long)value,
                 (long long)tsup_reply_error(&r));
    char msg[256];
    cr_assert_eq(cb__mp_get_str(r.map, "message", msg, sizeof msg), 0);
    cr_assert_not_null(strstr(msg, field), "%s %lld: message \"%s\" does not name the field", field,
                       (long long)value, msg);
    tsup_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
}

Test(bad_input, the_daemon_itself_refuses_out_of_bounds_configs_and_names_the_field)
{
    start(NULL);
    register_raw("failure_threshold", 0);
    register_raw("failure_threshold", -1);
    register_raw("failure_threshold", 1ll << 40);
    register_raw("success_threshold", 0);
    register_raw("half_open_max_probes", 1025);
    register_raw("recovery_timeout_ms", 0);
    register_raw("recovery_timeout_ms", 864000000); /* 10 days */
    register_raw("probe_lease_ms", 604800001);
    cr_assert_eq(tsup_stat(&d, "circuits"), 0);
}

/* ---- the lanes region ----------------------------------------------------------- */

struct tripper {
    cb_circuit *c;
    bool opened;
};

/* A fresh thread (a fresh lane): fail one call at a time until OPEN. */
static void *trip_slowly(void *arg)
{
    struct tripper *t = arg;
    for (int k = 0; k < 50 && !t->opened; k++) {
        cb_ticket tk = cb_allow(t->c);
        if (!cb_permitted(tk))
            break;
        cb_record(t->c, tk, CB_FAILURE);
        struct tsup_deadline dl = tsup_deadline_in(200);
        while (!(t->opened = tsup_info(t->c).state == CB_OPEN) && tsup_deadline_wait(&dl)) {
        }
    }
    return NULL;
}

/* Garbage events and a tail claiming n of them past the head. */
static void scribble(struct cb_lanes_header *lh, struct cb_lane *lane, uint64_t n)
{
    random_bytes(CB_LANES_EVENTS(lane), (size_t)lh->lane_capacity * sizeof(struct cb_lane_event));
    uint64_t head = atomic_load(&lane->head);
    atomic_store(&lane->tail, head + n);
}

Test(bad_input, random_bytes_in_the_lanes_are_counted_and_change_no_circuit)
{
    static const struct tsup_daemon_opts o = {.lanes = 8, .lane_capacity = 64, .reclaim_interval_ms = 100};
    start(&o);
    cb_config cfg = tsup_config(5, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 2), 2); /* this thread claims a lane */
    cr_assert(tsup_wait_drained(c, 2));
    cb_info before = tsup_info(c);

    size_t size;
    struct cb_lanes_header *lh = tsup_seg_map(d.instance, TSUP_MAP_LANES | TSUP_MAP_RW, &size);
    cr_assert_not_null(lh, "cannot map the lanes of %s", d.instance);
    struct cb_lane *claimed = NULL;
    for (uint32_t i = 0; i < lh->lane_count; i++) {
        struct cb_lane *lane = CB_LANES_LANE(lh, i);
        if (atomic_load(&lane->owner) != 0 && claimed == NULL)
            claimed = lane;
        else
            scribble(lh, lane, rng() % (4ull * lh->lane_capacity));
    }
    cr_assert_not_null(claimed, "no lane is claimed after this thread recorded");

    uint64_t invalid = tsup_stat(&d, "events_invalid"), overruns = tsup_stat(&d, "lane_overruns");
    scribble(lh, claimed, lh->lane_capacity / 2);
    cr_assert(tsup_wait_until(tsup_stat(&d, "events_invalid") > invalid, TSUP_LIVENESS_MS),
              "garbage events in a claimed lane were not counted invalid");
    scribble(lh, claimed, 1000ull * lh->lane_capacity);
    cr_assert(tsup_wait_until(tsup_stat(&d, "lane_overruns") > overruns, TSUP_LIVENESS_MS),
              "a tail far past the head was not counted as an overrun");
    munmap(lh, size);

    cr_assert(tsup_ping(&d), "cbd stopped answering after garbage in the lanes");
    cb_info after = tsup_info(c);
    cr_assert_eq(after.state, before.state);
    cr_assert_eq(after.epoch, before.epoch, "garbage events caused a transition");
    cr_assert_eq(after.failure_count, before.failure_count, "garbage events changed the streak");

    struct tripper t = {.c = c};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, trip_slowly, &t), 0);
    pthread_join(th, NULL);
    cr_assert(t.opened, "the circuit no longer trips after garbage in the lanes");
    cr_assert_eq(tsup_info(c).failure_count, 5);
}

/* ---- capacity and dead workers ----------------------------------------------------- */

Test(bad_input, a_full_segment_refuses_a_new_circuit_with_enospc)
{
    static const struct tsup_daemon_opts o = {.capacity = 4};
    start(&o);
    cb_circuit *cs[4];
    const char *names[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        cs[i] = tsup_circuit(cl, names[i], NULL);
    cb_circuit *e;
    int rc = cb_circuit_get(cl, "e", NULL, &e);
    cr_assert_eq(rc, -ENOSPC, "a 5th circuit in a segment of 4: %s", cb_strerror(rc));
    cr_assert_eq(tsup_circuit(cl, "d", NULL), cs[3], "an existing name still resolves");
    cr_assert_eq(tsup_stat(&d, "circuits"), 4);
    cr_assert_eq(tsup_record_n(cs[0], CB_FAILURE, 5), 5);
    cr_assert(tsup_wait_state(cs[0], CB_OPEN), "a circuit of a full segment does not trip");
}

Test(bad_input, a_worker_killed_mid_record_has_its_lane_reclaimed)
{
    static const struct tsup_daemon_opts o = {.reclaim_interval_ms = 100};
    start(&o);
    cb_config cfg = tsup_config(5, 3, 1, 600000);
    cb_circuit *c = tsup_circuit(cl, "payments", &cfg);
    uint64_t reclaimed = tsup_stat(&d, "lanes_reclaimed");
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = tsup_fork();
    if (pid == 0) {
        for (long k = 0;; k++) {
            cb_record(c, cb_allow(c), CB_SUCCESS);
            if (k == 1000 && write(p[1], "x", 1) != 1)
                _exit(3);
        }
    }
    char x;
    cr_assert_eq(read(p[0], &x, 1), 1, "the worker never recorded");
    cr_assert(tsup_wait_until(tsup_stat(&d, "lanes_in_use") >= 1, TSUP_LIVENESS_MS));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    tsup_untrack(pid);

    cr_assert(tsup_wait_until(tsup_stat(&d, "lanes_reclaimed") > reclaimed, TSUP_LIVENESS_MS),
              "the dead worker's lane was never reclaimed");
    cr_assert(tsup_wait_until(tsup_stat(&d, "lanes_in_use") == 0, TSUP_LIVENESS_MS));
    cr_assert_eq(tsup_info(c).state, CB_CLOSED);
    cr_assert_eq(tsup_record_n(c, CB_FAILURE, 5), 5);
    cr_assert(tsup_wait_state(c, CB_OPEN), "the circuit does not trip after a worker died mid-record");
}
