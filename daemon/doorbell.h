/*
 * doorbell.h - wakes the loop when a worker rings the lanes region's
 * doorbell (a failure or probe result that should not wait for a tick):
 * each ring becomes one call of a callback on the loop (the drain).
 */
#ifndef CBD_DOORBELL_H
#define CBD_DOORBELL_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

#include "segment.h"

#define CBD_BELL_SUFFIX ".bell" /* the FIFO is the control socket's path plus this */

struct cbd_doorbell {
    _Atomic uint32_t *word;     /* the lanes region's doorbell word */
    void (*ring)(void *arg);    /* what a ring runs, on the loop */
    void *arg;
    uv_async_t async;           /* futex path: the waiter thread's way into the loop */
    pthread_t thread;
    atomic_int stop;
    int started;
    uv_poll_t poll;             /* FIFO path: the loop polls the FIFO itself */
    int fifo_fd;                /* -1: no FIFO (every client uses the futex path) */
    char fifo_path[CB_SOCKET_PATH_MAX + sizeof CBD_BELL_SUFFIX];
    uint64_t rings_fifo;        /* rings answered through the FIFO (stats: doorbell_fifo) */
    uint64_t rings_futex;       /* ... through the futex waiter thread (stats: doorbell_futex) */
};

/* Creates the FIFO at socket_path + CBD_BELL_SUFFIX with the control
 * socket's mode and group ("": unchanged; a failure only logs: clients
 * then use the futex) and starts the futex waiter thread on word; each
 * ring runs ring(arg) on loop. 0 or -errno (nothing started). */
int cbd_doorbell_start(struct cbd_doorbell *b, uv_loop_t *loop, _Atomic uint32_t *word, const char *socket_path,
                       unsigned mode, const char *group, void (*ring)(void *arg), void *arg);
/* Stops and joins the thread, closes both handles, removes the FIFO. */
void cbd_doorbell_stop(struct cbd_doorbell *b);

#endif /* CBD_DOORBELL_H */
