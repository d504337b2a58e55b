/*
 * control.h - the control socket: length-prefixed msgpack maps over a Unix
 * stream socket (docs/protocol.md), with per-uid and total connection
 * limits, frame and idle timeouts and the admin check (control.c explains
 * them). What each request does is not the socket's: it runs the
 * operations of a table it is given (ops.c), each with the peer it came
 * from and a reply to fill.
 */
#ifndef CBD_CONTROL_H
#define CBD_CONTROL_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "config.h"
#include "frame.h"
#include "hooks.h"
#include "log.h"
#include "metrics_text.h" /* enum cbd_conn_end: how connections end, as counted */

#define CBD_CONTROL_MAX_QUEUED (1u << 20)  /* unread replies that close a connection */
#define CBD_CONTROL_LINGER_MS 1000         /* a refused peer's time to send its request and read why */
#define CBD_CONTROL_MAX_LINGERING 32       /* refused connections lingering at once; more close at once */
#define CBD_CONTROL_MAX_CLOSING 64         /* connections refused or ended, not freed yet, beyond those two */

struct cbd_conn;

/* Who sent a request, as SO_PEERCRED read it at accept. */
struct cbd_peer {
    uint32_t uid, gid;  /* uid (uint32_t)-1 if unknown */
    pid_t pid;
    int admin;          /* root, the daemon's uid or admin_group: no quota */
};

/* What an operation answers: {"ok": true, fields...} or, once err is set,
 * {"ok": false, "error": err, "message": message}. An operation packs its
 * fields into pk and counts them in nfields. */
struct cbd_reply {
    int err;                /* 0: ok; else -errno */
    char message[1024];
    msgpack_sbuffer body;   /* the operation's fields */
    msgpack_packer pk;
    uint32_t nfields;
    int subscribe;          /* set by an op: after an ok reply, the connection receives transitions */
};

/* Sets r's error and message; returns err. */
int cbd_reply_fail(struct cbd_reply *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* One unsigned field. */
void cbd_reply_u64(struct cbd_reply *r, const char *key, uint64_t v);

/* An operation the socket answers: "op" names it; admin ones are refused
 * with -EPERM to a peer that is not an admin, without running. run gets
 * the table's arg; its return is r->err. */
struct cbd_control_op {
    const char *name;
    int admin;
    int (*run)(void *arg, const struct cbd_peer *peer, const msgpack_object *req, struct cbd_reply *r);
};

/* Connections one uid holds (max_connections_per_uid). */
struct cbd_uid_conns {
    uint32_t uid, n;
};

struct cbd_control {
    uv_loop_t *loop;
    const struct cbd_config *cfg;        /* limits and timeouts, read at each decision */
    const struct cbd_control_op *ops;    /* what requests run */
    size_t nops;
    void *ops_arg;
    uv_pipe_t server;
    int listening;
    struct cbd_conn *conns;      /* open and lingering connections, doubly linked */
    uint32_t nconns;             /* admitted and open */
    uint32_t nlingering;         /* refused, waiting (CBD_CONTROL_LINGER_MS) for the peer to read why */
    uint32_t nalive;             /* accepted and not freed yet: admitted, lingering or closing */
    int accept_deferred;         /* nalive at its bound: the next connection waits in the backlog */
    struct cbd_uid_conns *uids;  /* admitted connections per uid; entries at 0 are removed */
    size_t nuids, uids_cap;
    uint64_t connections_total;  /* admitted since start */
    uint64_t connections_refused;/* refused since start, all reasons */
    uint64_t ends[CBD_CONN_NENDS]; /* refusals and closes by reason */
    uint64_t accept_errors;      /* accept(2) failed (EMFILE, ...) */
    uint64_t frames_bad;         /* bad length or malformed msgpack */
    uint64_t requests;           /* frames answered */
    uint32_t nsubscribers;       /* connections receiving transitions */
    long admin_gid;              /* admin_group's gid; -1: none */
    char admins[192];            /* who may use admin ops, for -EPERM messages */
    struct cbd_ratelimit refuse_warn, close_warn, deny_warn, accept_warn;
    char readbuf[4 + CB_FRAME_MAX]; /* libuv reads land here, then move to the connection */
};

/* A server on loop with the configuration cfg (socket path, mode, group,
 * limits; the pointer outlives ctl, its contents may change at a reload)
 * that answers with ops[0..nops), called with ops_arg. Nothing opens yet. */
void cbd_control_init(struct cbd_control *ctl, uv_loop_t *loop, const struct cbd_config *cfg,
                      const struct cbd_control_op *ops, size_t nops, void *ops_arg);
/* Creates the socket's directory if needed, replaces a stale socket file
 * (only if nobody answers on it), binds, chmods and listens. 0 or -errno
 * (logged). */
int cbd_control_listen(struct cbd_control *ctl);
/* Stops listening, closes every connection, removes the socket file. */
void cbd_control_close(struct cbd_control *ctl);
/* Looks up the admin group of the configuration (listen and reload). */
void cbd_control_configure(struct cbd_control *ctl);
/* One transition to every subscriber (flags: CB_SEG_F_* of its state word). */
void cbd_control_publish(struct cbd_control *ctl, const struct cbd_hook_event *ev, unsigned flags);

/*
 * A connection without a socket, for unit tests and the fuzz harness: the
 * same admission, framing, timeouts and operations as an accepted
 * connection, with time given as an input (ms on any monotonic clock) and
 * the frames the daemon sends kept in memory.
 *
 * cbd_control_conn_open admits (or refuses) a peer with these credentials
 * as on_connection would; NULL only when out of memory. A refused one is
 * already ended, its refusal in its output. cbd_control_conn_feed gives it
 * bytes that arrived at now_ms (a deadline passed before now_ms ends it
 * first, as the timer would have); cbd_control_conn_tick applies the
 * deadlines at now_ms alone. Both return its end (CBD_CONN_OPEN while
 * open). cbd_control_conn_free ends it (as a hang-up) if it is open, and
 * frees it.
 */
struct cbd_conn *cbd_control_conn_open(struct cbd_control *ctl, uint32_t uid, uint32_t gid, pid_t pid, uint64_t now_ms);
enum cbd_conn_end cbd_control_conn_feed(struct cbd_conn *c, const void *bytes, size_t n, uint64_t now_ms);
enum cbd_conn_end cbd_control_conn_tick(struct cbd_conn *c, uint64_t now_ms);
/* The frames sent to c so far (length-prefixed, as on the wire). */
const char *cbd_control_conn_output(const struct cbd_conn *c, size_t *len);
void cbd_control_conn_free(struct cbd_conn *c);

#endif /* CBD_CONTROL_H */
