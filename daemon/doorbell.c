/*
 * doorbell.c - how a worker's ring reaches the loop: a FIFO the loop polls,
 * and a futex waiter thread for clients that cannot use the FIFO.
 *
 * Owns the FIFO, the thread and their two handles, and the doorbell word's
 * reset; a ring ends in the callback it was given (the drain). It must not
 * touch the lanes themselves or anything of the circuits.
 *
 * The doorbell word lives in the lanes region: 0 means "the daemon will
 * look soon", 1 means "rung". A worker that recorded a failure or a probe
 * result does: if load == 0 and exchange(1) == 0, wake the daemon. Only the
 * transition 0 -> 1 costs a syscall, so a burst of failures rings once.
 *
 * Two ways to wake it, because a trip's latency is mostly wakeups:
 *
 *   FIFO (one wakeup). We create a FIFO beside the control socket (its path
 *   plus ".bell", the socket's mode and group), open it O_RDWR|O_NONBLOCK so
 *   it never reads EOF, and uv_poll it on the loop. A worker writes one
 *   byte; the loop's epoll wakes, reads everything there is (until EAGAIN)
 *   and answers. A full FIFO (EAGAIN for the writer) means the loop has
 *   plenty of bytes to wake for already.
 *
 *   Futex (two wakeups). A worker that could not open the FIFO (no access,
 *   a daemon older than the FIFO when it mapped) FUTEX_WAKEs the word
 *   instead. A thread sleeps in FUTEX_WAIT (shared, not FUTEX_PRIVATE: the
 *   wakers are other processes); while the word is 0 it waits for 0 -> 1,
 *   when it sees 1 it uv_async_send()s the loop and then waits while the
 *   word stays 1, so it does not spin before the loop has reset it. That is
 *   worker -> thread -> loop: two cross-process wakeups per ring.
 *
 * Keeping both costs a thread that wakes every WAIT_MS and, now and then, a
 * duplicate drain (the thread's timed wait sees a bell a FIFO ringer set);
 * it buys compatibility with every client, and a FIFO that fails to appear
 * only costs latency, never lost outcomes.
 *
 * Lost wakeups. Either path answers the same way: discard the FIFO's bytes,
 * store 0 (seq_cst), a full fence, then drain. The worker publishes its
 * lane tail (release), fences (seq_cst), then loads the word. The two
 * fences order the pairs "our store of 0 / its load of the word" and "its
 * tail store / our tail loads" (Dekker): either its load sees our 0 and it
 * rings again, or our drain sees its event. The bytes are read before the 0
 * is stored, so a byte written for a ring after our store is never thrown
 * away unanswered: it makes the FIFO readable again. A missed wake (a client
 * writing into a FIFO we no longer poll) costs at most one drain tick.
 *
 * Stop: set the flag and FUTEX_WAKE. The thread may be between checking
 * the flag and entering FUTEX_WAIT when the wake comes, so waits carry a
 * timeout (WAIT_MS): the worst case for stopping is that, never a hang.
 * The FIFO is removed on stop (if it is still ours) and a stale one is
 * replaced on start: cbd_control_listen has already made sure that no
 * other daemon serves this socket.
 */
#include "doorbell.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
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
    struct cbd_doorbell *b = arg;
    _Atomic uint32_t *bell = b->word;
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) { /* pairs with cbd_doorbell_stop */
        /* Acquire pairs with the ringing worker's exchange: the lane tail it
         * published before ringing is visible to the drain we trigger. */
        uint32_t v = atomic_load_explicit(bell, memory_order_acquire);
        if (v == 0) {
            futex_wait(bell, 0);
        } else {
            uv_async_send(&b->async);
            futex_wait(bell, v); /* until the loop resets it (or a timeout) */
        }
    }
    return NULL;
}

/* Both paths end here, on the loop. */
static void answer(struct cbd_doorbell *b)
{
    /* seq_cst store and full fence, then drain: pairs with the fence in the
     * worker's doorbell_ring (see the design comment on lost wakeups). */
    atomic_store(b->word, 0);
    atomic_thread_fence(memory_order_seq_cst);
    b->ring(b->arg);
}

static void on_ring(uv_async_t *a)
{
    struct cbd_doorbell *b = a->data;
    b->rings_futex++;
    answer(b);
}

static void on_fifo(uv_poll_t *p, int status, int events)
{
    (void)status; /* an error on our own FIFO: answering is still right */
    (void)events;
    struct cbd_doorbell *b = p->data;
    char buf[256];
    /* Until EAGAIN (we hold a write end too: never EOF). An EINTR leaves
     * bytes behind, and the level-triggered poll brings us back for them. */
    while (read(b->fifo_fd, buf, sizeof buf) > 0)
        ;
    b->rings_fifo++;
    answer(b);
}

/* Mode and group of the control socket, on the FIFO (fchmod: the umask
 * does not apply). */
static int fifo_set_access(int fd, unsigned mode, const char *group)
{
    unsigned gid;
    if (fchmod(fd, mode) < 0)
        return -errno;
    if (group[0] == '\0')
        return 0;
    if (cbd_config_gid(group, &gid) < 0)
        return -ENOENT;
    return fchown(fd, (uid_t)-1, (gid_t)gid) < 0 ? -errno : 0;
}

/* Removes a stale FIFO (never anything else) at path. */
static int fifo_clear_stale(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISFIFO(st.st_mode)) {
        cbd_log(CBD_LOG_ERROR, "doorbell FIFO path %s exists and is not a FIFO: not removing it", path);
        return -EEXIST;
    }
    cbd_log(CBD_LOG_INFO, "replacing stale doorbell FIFO %s", path);
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

/* Creates, opens and polls the FIFO: 0 or -errno (nothing left behind). */
static int fifo_start(struct cbd_doorbell *b, uv_loop_t *loop, unsigned mode, const char *group)
{
    const char *path = b->fifo_path;
    int rc = fifo_clear_stale(path);
    if (rc < 0)
        return rc;
    if (mkfifo(path, 0600) < 0)
        return -errno;
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        rc = -errno;
    else if ((rc = fifo_set_access(fd, mode, group)) < 0)
        cbd_log(CBD_LOG_ERROR, "cannot give doorbell FIFO %s mode %04o and group '%s': %s", path, mode,
                group[0] ? group : "(unchanged)", strerror(-rc));
    else if ((rc = uv_poll_init(loop, &b->poll, fd)) == 0) {
        b->poll.data = b;
        if ((rc = uv_poll_start(&b->poll, UV_READABLE, on_fifo)) < 0)
            uv_close((uv_handle_t *)&b->poll, NULL);
    }
    if (rc < 0) {
        if (fd >= 0)
            close(fd);
        unlink(path);
        return rc;
    }
    b->fifo_fd = fd;
    return 0;
}

static void fifo_stop(struct cbd_doorbell *b)
{
    if (b->fifo_fd < 0)
        return;
    struct stat ours, now;
    /* Unlink only our own FIFO: once our socket is gone a new daemon may
     * already have put its FIFO there. */
    if (fstat(b->fifo_fd, &ours) == 0 && lstat(b->fifo_path, &now) == 0 && ours.st_dev == now.st_dev &&
        ours.st_ino == now.st_ino)
        unlink(b->fifo_path);
    uv_close((uv_handle_t *)&b->poll, NULL); /* stops polling the fd now, so closing it is safe */
    close(b->fifo_fd);
    b->fifo_fd = -1;
}

static int thread_start(struct cbd_doorbell *b, uv_loop_t *loop)
{
    int rc = uv_async_init(loop, &b->async, on_ring);
    if (rc < 0)
        return rc;
    b->async.data = b;
    atomic_store_explicit(&b->stop, 0, memory_order_relaxed); /* before the thread exists */
    /* The thread inherits a full signal mask: signals are the loop's
     * (uv_signal), never this thread's. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&b->thread, NULL, waiter, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        uv_close((uv_handle_t *)&b->async, NULL);
        cbd_log(CBD_LOG_ERROR, "cannot start the doorbell thread: %s", strerror(rc));
        return -rc;
    }
    return 0;
}

int cbd_doorbell_start(struct cbd_doorbell *b, uv_loop_t *loop, _Atomic uint32_t *word, const char *socket_path,
                       unsigned mode, const char *group, void (*ring)(void *arg), void *arg)
{
    b->word = word;
    b->ring = ring;
    b->arg = arg;
    b->fifo_fd = -1;
    int rc = thread_start(b, loop);
    if (rc < 0)
        return rc;
    b->started = 1;
    snprintf(b->fifo_path, sizeof b->fifo_path, "%s%s", socket_path, CBD_BELL_SUFFIX);
    if ((rc = fifo_start(b, loop, mode, group)) < 0)
        cbd_log(CBD_LOG_WARN, "no doorbell FIFO %s (%s): workers wake cbd through the futex thread (slower trips)",
                b->fifo_path, strerror(-rc));
    return 0;
}

void cbd_doorbell_stop(struct cbd_doorbell *b)
{
    if (!b->started)
        return;
    fifo_stop(b);
    /* Release pairs with the thread's acquire load of stop. */
    atomic_store_explicit(&b->stop, 1, memory_order_release);
    futex_wake(b->word);
    pthread_join(b->thread, NULL);
    uv_close((uv_handle_t *)&b->async, NULL); /* after the join: no uv_async_send can follow */
    b->started = 0;
}
