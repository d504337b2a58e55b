/*
 * control.h - the control socket: length-prefixed msgpack maps over a Unix
 * stream socket (docs/protocol.md), with per-uid and total connection
 * limits and frame and idle timeouts (control.c explains them).
 */
#ifndef CBD_CONTROL_H
#define CBD_CONTROL_H

#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "frame.h"
#include "hooks.h"
#include "log.h"

#define CBD_CONTROL_MAX_QUEUED (1u << 20)  /* unread replies that close a connection */
#define CBD_CONTROL_LINGER_MS 1000         /* a refused peer's time to send its request and read why */
#define CBD_CONTROL_MAX_LINGERING 32       /* refused connections lingering at once; more close at once */

struct cbd;
struct cbd_conn;

/* How a connection ended, or why it was refused (stats, logs, the seam). */
enum cbd_conn_end {
    CBD_CONN_OPEN = 0,               /* not ended */
    CBD_CONN_REFUSED_PER_UID,        /* its uid holds max_connections_per_uid */
    CBD_CONN_REFUSED_ADMIN_RESERVED, /* only admin_reserved_connections are left */
    CBD_CONN_REFUSED_MAX,            /* max_connections are open */
    CBD_CONN_FRAME_TIMEOUT,          /* a frame not complete frame_timeout_ms after its first byte */
    CBD_CONN_IDLE,                   /* no request for idle_timeout_ms */
    CBD_CONN_BAD_FRAME,              /* bad length or msgpack: the stream is out of step */
    CBD_CONN_SLOW_READER,            /* CBD_CONTROL_MAX_QUEUED bytes of replies or transitions unread */
    CBD_CONN_HANGUP,                 /* the peer closed, an I/O error, out of memory, or the daemon stops */
    CBD_CONN_NENDS
};

/* Connections one uid holds (max_connections_per_uid). */
struct cbd_uid_conns {
    uint32_t uid, n;
};

struct cbd_control {
    uv_pipe_t server;
    int listening;
    struct cbd_conn *conns;      /* open and lingering connections, doubly linked */
    uint32_t nconns;             /* admitted and open */
    uint32_t nlingering;         /* refused, waiting (CBD_CONTROL_LINGER_MS) for the peer to read why */
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

/* Creates the socket's directory if needed, replaces a stale socket file
 * (only if nobody answers on it), binds, chmods and listens. 0 or -errno
 * (logged). */
int cbd_control_listen(struct cbd *d);
/* Stops listening, closes every connection, removes the socket file. */
void cbd_control_close(struct cbd *d);
/* Looks up the admin group of d->cfg (listen and reload). */
void cbd_control_configure(struct cbd *d);
/* One transition to every subscriber (flags: CB_SEG_F_* of its state word). */
void cbd_control_publish(struct cbd *d, const struct cbd_hook_event *ev, unsigned flags);

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
struct cbd_conn *cbd_control_conn_open(struct cbd *d, uint32_t uid, uint32_t gid, pid_t pid, uint64_t now_ms);
enum cbd_conn_end cbd_control_conn_feed(struct cbd_conn *c, const void *bytes, size_t n, uint64_t now_ms);
enum cbd_conn_end cbd_control_conn_tick(struct cbd_conn *c, uint64_t now_ms);
/* The frames sent to c so far (length-prefixed, as on the wire). */
const char *cbd_control_conn_output(const struct cbd_conn *c, size_t *len);
void cbd_control_conn_free(struct cbd_conn *c);

#endif /* CBD_CONTROL_H */
