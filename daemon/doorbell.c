/*
 * doorbell.c - a futex waiter thread bridging workers to the loop.
 *
 * The doorbell word lives in the lanes region: 0 means "the daemon will
 * look soon", 1 means "rung". A worker that recorded a failure or a probe
 * result does: if load == 0 and exchange(1) == 0, FUTEX_WAKE one waiter.
 * Only the transition 0 -> 1 costs a syscall, so a burst of failures rings
 * once.
 *
 * The thread sleeps in FUTEX_WAIT (shared, not FUTEX_PRIVATE: the word is in
 * shared memory and the wakers are other processes). While the word is 0 it
 * waits for 0 -> 1; when it sees 1 it uv_async_send()s the loop and then
 * waits while the word stays 1, so it does not spin before the loop has
 * reset it. The loop's async callback stores 0 and only then drains: an
 * event published after the drain read its lane rings again (the worker
 * sees 0), and an event published before is drained now. A missed wake (the
 * seq_cst store of 0 races a worker's load) costs at most one drain tick.
 *
 * Stop: set the flag and FUTEX_WAKE. The thread may be between checking
 * the flag and entering FUTEX_WAIT when the wake comes, so waits carry a
 * timeout (WAIT_MS): the worst case for stopping is that, never a hang.
 */
#include "doorbell.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cbd.h"
#include "log.h"

#define WAIT_MS 200

static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
    struct timespec ts = {0, WAIT_MS * 1000000L};
    /* EAGAIN (word already changed), EINTR and ETIMEDOUT all mean: look again. */
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *waiter(void *arg)
{
    struct cbd *d = arg;
    _Atomic uint32_t *bell = &d->seg.lanes->doorbell;
    while (!atomic_load_explicit(&d->bell.stop, memory_order_acquire)) { /* pairs with cbd_doorbell_stop */
        /* Acquire pairs with the ringing worker's exchange: the lane tail it
         * published before ringing is visible to the drain we trigger. */
        uint32_t v = atomic_load_explicit(bell, memory_order_acquire);
        if (v == 0) {
            futex_wait(bell, 0);
        } else {
            uv_async_send(&d->bell.async);
            futex_wait(bell, v); /* until the loop resets it (or a timeout) */
        }
    }
    return NULL;
}

static void on_ring(uv_async_t *a)
{
    struct cbd *d = a->data;
    d->bell.rings++;
    /* seq_cst store, then drain: see the design comment on lost wakeups. */
    atomic_store(&d->seg.lanes->doorbell, 0);
    cbd_drain_all(d);
}

int cbd_doorbell_start(struct cbd *d)
{
    int rc = uv_async_init(&d->loop, &d->bell.async, on_ring);
    if (rc < 0)
        return rc;
    d->bell.async.data = d;
    atomic_store_explicit(&d->bell.stop, 0, memory_order_relaxed); /* before the thread exists */
    /* The thread inherits a full signal mask: signals are the loop's
     * (uv_signal), never this thread's. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&d->bell.thread, NULL, waiter, d);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        uv_close((uv_handle_t *)&d->bell.async, NULL);
        cbd_log(CBD_LOG_ERROR, "cannot start the doorbell thread: %s", strerror(rc));
        return -rc;
    }
    d->bell.started = 1;
    return 0;
}

void cbd_doorbell_stop(struct cbd *d)
{
    if (!d->bell.started)
        return;
    /* Release pairs with the thread's acquire load of stop. */
    atomic_store_explicit(&d->bell.stop, 1, memory_order_release);
    futex_wake(&d->seg.lanes->doorbell);
    pthread_join(d->bell.thread, NULL);
    uv_close((uv_handle_t *)&d->bell.async, NULL); /* after the join: no uv_async_send can follow */
    d->bell.started = 0;
}
