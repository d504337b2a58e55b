/*
 * tsup.h - test support for cbd: fixtures that run the real daemon, unique
 * names, per-test directories, liveness waits, raw control-socket frames.
 *
 * Criterion runs every test in its own process and several at once, so
 * everything a test creates is named after the test process: shm instances,
 * sockets and directories carry the pid, the test's name and a counter
 * (tsup_unique). Each test gets one directory (tsup_tmpdir) holding the
 * daemons' logs, sockets and state files.
 *
 * Nothing a test starts may outlive it, even when an assertion aborts the
 * test half-way: every child (cbd, redis-server on a free loopback port,
 * dynalite) is started through tsup_spawn/tsup_fork, which set
 * PR_SET_PDEATHSIG so the kernel kills the child with its test, and record
 * it so an exit handler of the test process kills what is still running,
 * unlinks the shm objects of every daemon it started and removes the
 * directory (kept when $TSUP_KEEP is set, to read cbd.log after a failure).
 * What a crashed or timed-out test leaves is swept by the next test process.
 *
 * Timing: tests never assert how fast something happens. They wait for a
 * condition with a generous liveness bound (TSUP_LIVENESS_MS) and fail only
 * when it never holds.
 */
#ifndef TSUP_H
#define TSUP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cb.h"
#include "segment.h"

/* How long a test waits for anything that must happen "soon". */
#define TSUP_LIVENESS_MS 5000

/* ---- names, directories, children (tsup_env.c) ---------------------------- */

/* "<tag>-<test>-<pid>-<n>": unique across parallel tests and within one,
 * at most CB_INSTANCE_MAX bytes of [A-Za-z0-9_-] so it is a valid instance
 * and circuit name. The string lives until the test process exits. */
const char *tsup_unique(const char *tag);

/* This test's private directory (created on first use). */
const char *tsup_tmpdir(void);

/* fork() for children that run test code (workers): the child dies with the
 * test (PDEATHSIG) and is SIGKILLed at exit if still tracked. A child must
 * leave with _exit(), never return into criterion. */
pid_t tsup_fork(void);

/* Starts argv[0] with stdout/stderr appended to log_path: pid or -errno. */
pid_t tsup_spawn(char *const argv[], const char *log_path);

/* Forget a child that the test reaped itself. */
void tsup_untrack(pid_t pid);

/* Support-internal: remember an instance so its shm objects are unlinked
 * when the test process exits. */
void tsup__track_instance(const char *instance);

/* Unlink an instance's shm objects (what a reboot does to /dev/shm). */
void tsup_shm_unlink(const char *instance);

/* Map an instance's state region (or, with TSUP_MAP_LANES, its lanes
 * region) whole: PROT_READ as libcb maps the state region, or read-write
 * with TSUP_MAP_RW (tests run as root). NULL on failure; *size gets the
 * length (for munmap). */
#define TSUP_MAP_LANES 0x1u
#define TSUP_MAP_RW 0x2u
void *tsup_seg_map(const char *instance, unsigned flags, size_t *size);

/* The cbd or cbctl binary under test: $TSUP_CBD / $TSUP_CBCTL if set, else
 * the ones built with the tests (CBD_PATH, CBCTL_PATH). */
const char *tsup_cbd_path(void);
const char *tsup_cbctl_path(void);
/* cbd_fi: cbd with its fault-injection points (daemon/fault.h) compiled in. */
const char *tsup_cbd_fi_path(void);

/* Runs argv[0] (a path) to completion with its stdout (and its stderr when
 * with_stderr) in *out (malloc'd, NUL terminated; the caller frees it).
 * Returns its exit status, or -1 if it died of a signal. */
int tsup_run(char *const argv[], char **out, bool with_stderr);

/* Milliseconds on CLOCK_MONOTONIC. */
int64_t tsup_now_ms(void);

/* Polling support for tsup_wait_until. */
struct tsup_deadline {
    int64_t end_ms;
};
struct tsup_deadline tsup_deadline_in(int64_t timeout_ms);
/* Sleeps a little; false once the deadline has passed. */
bool tsup_deadline_wait(struct tsup_deadline *dl);

/* Evaluates cond until it is true or timeout_ms passed; the last value. */
#define tsup_wait_until(cond, timeout_ms)                                   \
    ({                                                                      \
        struct tsup_deadline tsup__dl = tsup_deadline_in(timeout_ms);       \
        bool tsup__ok;                                                      \
        while (!(tsup__ok = (cond)) && tsup_deadline_wait(&tsup__dl)) {     \
        }                                                                   \
        tsup__ok;                                                           \
    })

/* ---- the daemon (tsup_daemon.c) ------------------------------------------- */

/* What to start cbd with; zero/NULL fields leave cbd's default. */
struct tsup_daemon_opts {
    const char *tag;          /* names the instance (tsup_unique(tag)); NULL = "cbd" */
    uint32_t capacity, lanes, lane_capacity, history_capacity;
    uint32_t heartbeat_ms, stale_limit_ms, drain_interval_ms, reclaim_interval_ms;
    const char *stale_policy; /* "fail-open" or "keep-state" */
    const char *store;        /* store URI; NULL = local:<dir>/state */
    const char *binary;       /* the daemon to run; NULL = tsup_cbd_path() (tsup_cbd_fi_path():
                               * the build with fault-injection points, $CBD_FAULT) */
    const char *extra[9];     /* more arguments, NULL terminated */
};

#define TSUP_ARGV_MAX 48
struct tsup_daemon {
    pid_t pid;                /* 0 when not running */
    char instance[CB_INSTANCE_MAX + 1];
    char dir[192];            /* <tmpdir>/<instance>: log, socket, state */
    char socket[CB_SOCKET_PATH_MAX];
    char log[256];
    char store[256];
    char *argv[TSUP_ARGV_MAX]; /* kept for restart */
    char args[4096];
};

/* Start cbd and wait until it is ready: its segment is published by this
 * pid and it answers ping. 0, or -errno after printing the log's tail. */
int tsup_daemon_start(struct tsup_daemon *d, const struct tsup_daemon_opts *opts);
/* SIGTERM (after a SIGCONT only if it is stopped: never SIGCONT after
 * SIGTERM, which hangs a sanitizer build's leak check) and reap: its exit
 * status as from waitpid, or -ETIMEDOUT when it did not exit in time - then
 * its threads are dumped to stderr, it is SIGKILLed and the test fails. */
int tsup_daemon_stop(struct tsup_daemon *d);
/* SIGKILL and reap: a crash, leaving segment and socket file behind. */
void tsup_daemon_kill9(struct tsup_daemon *d);
/* The state letter of /proc/<pid>/stat: 'R' running, 'S' sleeping, 'T'
 * stopped by a signal, 't' stopped by a tracer, 'Z'...; '?' if unreadable. */
char tsup_proc_state(pid_t pid);
/* Start a stopped or killed daemon again with the same arguments. */
int tsup_daemon_restart(struct tsup_daemon *d);
/* The same without waiting until it is ready (it may die starting). */
int tsup_daemon_spawn(struct tsup_daemon *d);
/* Lines of cbd.log containing needle. */
int tsup_log_count(const struct tsup_daemon *d, const char *needle);

/* ---- redis-server (tsup_redis.c) ------------------------------------------ */

/* A redis-server of the test's own: no persistence (--save '', --appendonly
 * no), so a restart comes back empty; it dies with the test. */
#define TSUP_REDIS_EXTRA_MAX 8
struct tsup_redis {
    pid_t pid;          /* 0 when not running */
    int port;           /* loopback TCP port; 0 with a unix socket */
    char sock[108];     /* unix socket path, or "" */
    char log[256];      /* its stdout/stderr, appended across restarts */
    const char *extra[TSUP_REDIS_EXTRA_MAX + 1]; /* more arguments, kept for restarts */
    char conf[256];     /* a sentinel's configuration file, or "" for a server */
};

/* Start on a free loopback port and wait until it answers: 0 or -errno
 * (the reason and the log's path go to stderr). */
int tsup_redis_start(struct tsup_redis *r);
/* The same on a unix socket in the test's directory when unix_socket, with
 * extra redis-server arguments (NULL-terminated, at most
 * TSUP_REDIS_EXTRA_MAX; the strings must outlive r). */
int tsup_redis_start_with(struct tsup_redis *r, bool unix_socket, const char *const *extra);
/* A replica of master (--replicaof 127.0.0.1 PORT, with --masterauth
 * password when not NULL; extra as for tsup_redis_start_with): 0 or -errno. */
int tsup_redis_start_replica(struct tsup_redis *r, const struct tsup_redis *master, const char *password,
                             const char *const *extra);
/* A redis-sentinel watching master as `name` (quorum 1; down after 1 s
 * without an answer; failover timeout 3 s), authenticating to the
 * servers with master_password when not NULL; its own requirepass when
 * sentinel_password is not NULL. Same struct, same kill/stop/ping/cli as
 * a server. 0 or -errno. */
int tsup_sentinel_start(struct tsup_redis *s, const char *name, const struct tsup_redis *master,
                        const char *master_password, const char *sentinel_password);
/* Start a killed or stopped server again on the same address: 0 or -errno. */
int tsup_redis_restart(struct tsup_redis *r);
/* Send sig; unless it is SIGSTOP or SIGCONT, reap the server (pid 0). */
void tsup_redis_kill(struct tsup_redis *r, int sig);
/* SIGKILL and reap: a crash, losing every key. */
void tsup_redis_stop(struct tsup_redis *r);
/* A loopback TCP port nobody listens on right now (bound, then closed), or
 * -errno: where a server can go, or where a client is refused. */
int tsup_free_port(void);
/* true when it answers PING (or anything) within a second. */
bool tsup_redis_ping(const struct tsup_redis *r);
/* "redis://127.0.0.1:PORT?options" or "unix://PATH?options" (options may
 * be NULL); one of four rotating static buffers. */
const char *tsup_redis_uri(const struct tsup_redis *r, const char *options);
/* Runs redis-cli against it with the NULL-terminated arguments after out:
 * its exit status; the reply (raw format, stderr included) in *out
 * (malloc'd; the caller frees it) unless out is NULL. */
int tsup_redis_cli(const struct tsup_redis *r, char **out, ...) __attribute__((sentinel));

/* A proxy in front of a redis-server that misbehaves on request, as a
 * broken server or middlebox would: a child process of the test on a free
 * loopback port (redis://127.0.0.1:<port>), relaying every client it
 * accepts to the server until told otherwise. */
struct tsup_redis_proxy {
    pid_t pid;  /* 0 when not running */
    int port;   /* where clients connect */
    int ctl;    /* the test's end of the order pipe */
};
/* Start relaying to target (a TCP server): 0 or -errno. */
int tsup_redis_proxy_start(struct tsup_redis_proxy *p, const struct tsup_redis *target);
/* The next chunk the server sends to any client is delivered twice: a
 * client waiting for one reply gets its command answered twice. */
void tsup_redis_proxy_duplicate_next(struct tsup_redis_proxy *p);
/* Send len bytes (< 64 KiB) to every client as if the server had; then
 * disconnect them all when then_close. Returns once done. */
void tsup_redis_proxy_inject(struct tsup_redis_proxy *p, const void *bytes, size_t len, bool then_close);
void tsup_redis_proxy_stop(struct tsup_redis_proxy *p);

/* ---- the control socket (tsup_ctl.c) -------------------------------------- */

struct tsup_reply {
    char *buf;
    msgpack_unpacked result;
    msgpack_object *map;
};

/* Connected, blocking socket to the daemon: fd or -errno. */
int tsup_ctl_connect(const struct tsup_daemon *d);
/* Send bytes as they are (no framing): 0 or -errno. */
int tsup_ctl_send_raw(int fd, const void *buf, size_t len);
/* Read one reply frame: 1 (fill *r; tsup_reply_free it), 0 when the daemon
 * closed the connection, -ETIMEDOUT, or -EBADMSG for a malformed reply. */
int tsup_ctl_read(int fd, struct tsup_reply *r);
/* Frame and send a packed request, then read its reply (as tsup_ctl_read). */
int tsup_ctl_call(int fd, const msgpack_sbuffer *req, struct tsup_reply *r);
/* One-shot {"op": op} on a fresh connection (as tsup_ctl_read). */
int tsup_ctl_op(const struct tsup_daemon *d, const char *op, struct tsup_reply *r);
void tsup_reply_free(struct tsup_reply *r);
/* true when the reply says "ok": true. */
bool tsup_reply_ok(const struct tsup_reply *r);
/* The reply's "error" (a negative errno), or 0 if it has none. */
int64_t tsup_reply_error(const struct tsup_reply *r);

/* One-shot {"op": op, "name": name} on a fresh connection: 0 when the
 * reply says ok, else its error (a negative errno); fails the test when no
 * reply comes. */
int tsup_ctl_named_op(const struct tsup_daemon *d, const char *op, const char *name);
/* tsup_ctl_named_op that must succeed. */
void tsup_ctl_named_op_ok(const struct tsup_daemon *d, const char *op, const char *name);

/* true when the daemon answers ping on a fresh connection. */
bool tsup_ping(const struct tsup_daemon *d);
/* A counter from the stats op; fails the test if the op or field is missing. */
uint64_t tsup_stat(const struct tsup_daemon *d, const char *field);

/* A "<field>: N kB" line of /proc/<pid>/status (VmRSS, RssAnon, ...), in
 * KiB; fails the test when the process or the field is missing. */
long tsup_proc_status_kib(pid_t pid, const char *field);
/* The anonymous memory pid has resident, in KiB, summed exactly over its
 * mappings (/proc/PID/smaps_rollup "Anonymous"): unlike status' RssAnon,
 * which the kernel updates lazily per thread, it is the same whenever it
 * is read. Fails the test when it cannot be read. */
long tsup_proc_anon_kib(pid_t pid);

/* Start a request map of n entries with "op": op (n counts it). */
void tsup_req_begin(msgpack_sbuffer *sb, msgpack_packer *pk, const char *op, uint32_t n);

/* ---- libcb conveniences (tsup_cb.c) --------------------------------------- */

/* cb_client_open on d's instance / cb_circuit_get, failing the test on error. */
cb_client *tsup_client(const struct tsup_daemon *d);

cb_circuit *tsup_circuit(cb_client *cl, const char *name, const cb_config *cfg);
/* cb_info_get, failing the test on error. */
cb_info tsup_info(cb_circuit *c);

/* The usual fixture of a test file: one daemon and one client of it.
 * start fails the test if cbd does not start; stop closes the client and
 * expects cbd to exit 0 on SIGTERM (nothing to do when it is not running). */
void tsup_fixture_start(struct tsup_daemon *d, cb_client **cl, const struct tsup_daemon_opts *o);
void tsup_fixture_stop(struct tsup_daemon *d, cb_client **cl);
/* A config with Powertools' defaults but these thresholds/timeouts, and a
 * probe lease of a minute, so no test sees a lease expire unless it sets a
 * shorter one itself. */
cb_config tsup_config(uint32_t failure_threshold, uint32_t success_threshold, uint32_t max_probes,
                      uint32_t recovery_timeout_ms);
/* n times: cb_allow and, if permitted, cb_record(outcome); the number recorded. */
int tsup_record_n(cb_circuit *c, cb_outcome outcome, int n);
/* The ticket's kind (CB_TICKET_*) and epoch. */
unsigned tsup_ticket_kind(cb_ticket t);
uint32_t tsup_ticket_epoch(cb_ticket t);
/* Waits until the circuit is in state; false after TSUP_LIVENESS_MS. */
bool tsup_wait_state(cb_circuit *c, cb_state state);
/* OPEN past its recovery timeout on a fleet store, waiting for a call that
 * wants a probe (the state word's CB_SEG_F_ELECTABLE), as a worker sees it. */
bool tsup_electable(cb_circuit *c);
/* Waits until cb_allow hands out a PROBE ticket; fails the test if it hands
 * out another permitting kind, or none within TSUP_LIVENESS_MS. */
cb_ticket tsup_probe(cb_circuit *c);
/* The next transition of circuit name in cl's history (others skipped),
 * waiting up to TSUP_LIVENESS_MS; fails the test on overrun or timeout. */
cb_transition tsup_next_transition(cb_client *cl, const char *name);
/* Waits until the daemon has drained n events of this circuit in total
 * (successes + failures + ignored); false after TSUP_LIVENESS_MS. */
bool tsup_wait_drained(cb_circuit *c, uint64_t n);

#endif /* TSUP_H */
