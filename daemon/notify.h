/*
 * notify.h - systemd's sd_notify protocol, spoken without libsystemd.
 */
#ifndef CBD_NOTIFY_H
#define CBD_NOTIFY_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

struct cbd_notify {
    int fd;                     /* -1 when $NOTIFY_SOCKET is unset: every send is a no-op */
    struct sockaddr_un addr;
    socklen_t addr_len;
    uint64_t watchdog_usec;     /* $WATCHDOG_USEC for this pid, 0 when no watchdog */
};

/* Read $NOTIFY_SOCKET / $WATCHDOG_USEC / $WATCHDOG_PID. 0, or -errno if the
 * socket is set but unusable (the daemon logs it and goes on without). */
int cbd_notify_init(struct cbd_notify *n);
/* Send one datagram, e.g. "READY=1\nSTATUS=serving 12 circuits". 0 or -errno. */
int cbd_notify_send(struct cbd_notify *n, const char *state);
/* printf-style convenience for STATUS= lines and the like. */
int cbd_notify_sendf(struct cbd_notify *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Half the watchdog period in ms (how often to send WATCHDOG=1), 0 if none. */
uint64_t cbd_notify_watchdog_interval_ms(const struct cbd_notify *n);
void cbd_notify_close(struct cbd_notify *n);

#endif
