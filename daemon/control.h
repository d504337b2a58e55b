/*
 * control.h - the control socket: length-prefixed msgpack maps over a Unix
 * stream socket (docs/protocol.md).
 */
#ifndef CBD_CONTROL_H
#define CBD_CONTROL_H

#include <stdint.h>
#include <uv.h>

#include "frame.h"
#include "hooks.h"
#include "log.h"

#define CBD_CONTROL_MAX_CONNECTIONS 1024
#define CBD_CONTROL_IDLE_MS 10000          /* mid-frame silence that closes a connection */
#define CBD_CONTROL_MAX_QUEUED (1u << 20)  /* unread replies that close a connection */

struct cbd;
struct cbd_conn;

struct cbd_control {
    uv_pipe_t server;
    int listening;
    struct cbd_conn *conns;      /* open connections, doubly linked */
    uint32_t nconns;
    uint64_t connections_total;  /* accepted since start */
    uint64_t connections_refused;/* over the limit */
    uint64_t frames_bad;         /* bad length or malformed msgpack */
    uint64_t requests;           /* frames answered */
    uint32_t nsubscribers;       /* connections receiving transitions */
    long admin_gid;              /* admin_group's gid; -1: none */
    char admins[192];            /* who may use admin ops, for -EPERM messages */
    struct cbd_ratelimit refuse_warn, deny_warn;
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

#endif /* CBD_CONTROL_H */
