/*
 * notify.c - sd_notify over a datagram socket, written from the protocol.
 *
 * systemd passes $NOTIFY_SOCKET (a filesystem path, or '@' for an abstract
 * name) to Type=notify services; each state change is one datagram of
 * newline-separated KEY=VALUE lines. cbd sends READY=1 once the segment is
 * published and the store restored, STATUS= lines, RELOADING=1 / READY=1
 * around a reload, WATCHDOG=1 every half $WATCHDOG_USEC, and STOPPING=1.
 * Depending on libsystemd for ~60 lines would tie the daemon to it in
 * containers that do not ship it; the protocol is stable and documented
 * (sd_notify(3)). Outside systemd every call is a cheap no-op.
 */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cbd_notify_init(struct cbd_notify *n)
{
    memset(n, 0, sizeof *n);
    n->fd = -1;
    const char *wd = getenv("WATCHDOG_USEC"), *wd_pid = getenv("WATCHDOG_PID");
    if (wd != NULL && (wd_pid == NULL || strtol(wd_pid, NULL, 10) == (long)getpid()))
        n->watchdog_usec = strtoull(wd, NULL, 10);

    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof n->addr.sun_path)
        return -EINVAL;
    n->addr.sun_family = AF_UNIX;
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0'; /* abstract namespace */
    n->addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    return n->fd < 0 ? -errno : 0;
}

int cbd_notify_send(struct cbd_notify *n, const char *state)
{
    if (n->fd < 0)
        return 0;
    ssize_t rc = sendto(n->fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&n->addr, n->addr_len);
    return rc < 0 ? -errno : 0;
}

int cbd_notify_sendf(struct cbd_notify *n, const char *fmt, ...)
{
    if (n->fd < 0)
        return 0;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return cbd_notify_send(n, buf);
}

uint64_t cbd_notify_watchdog_interval_ms(const struct cbd_notify *n)
{
    return n->watchdog_usec / 2000;
}

void cbd_notify_close(struct cbd_notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
