/*
 * doorbell.h - wakes the loop when a worker rings the lanes region's
 * doorbell (a failure or probe result that should not wait for a tick).
 */
#ifndef CBD_DOORBELL_H
#define CBD_DOORBELL_H

#include <pthread.h>
#include <stdatomic.h>
#include <uv.h>

struct cbd;

struct cbd_doorbell {
    uv_async_t async;
    pthread_t thread;
    atomic_int stop;
    int started;
    uint64_t rings; /* async callbacks run (diagnostics) */
};

/* Starts the waiter thread; each ring runs a drain on the loop. */
int cbd_doorbell_start(struct cbd *d);
/* Stops and joins the thread, closes the async handle. */
void cbd_doorbell_stop(struct cbd *d);

#endif /* CBD_DOORBELL_H */
