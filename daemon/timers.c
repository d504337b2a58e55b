/*
 * timers.c - every circuit deadline in one binary min-heap of
 * (deadline, slot, epoch), served by a single uv_timer armed at the earliest.
 *
 * Owns the heap and its uv_timer, nothing else: a due entry goes to the
 * fire callback as it was added. It must not look into circuits or the
 * policy; what a (slot, epoch) means is the receiver's business.
 *
 * Why not one uv_timer per circuit: 65536 OPEN circuits would be 65536
 * handles, each closed asynchronously; a heap is one allocation and one
 * handle. Deletion is lazy (the receiver, the policy, compares the entry's
 * epoch and deadline with the circuit's and drops what it outgrew), so the
 * heap only ever pushes and pops; the policy keeps at most one live entry
 * per circuit, which bounds the heap by the number of waiting circuits plus
 * a few dead entries waiting to be popped.
 *
 * Deadlines are CLOCK_MONOTONIC nanoseconds read directly, not uv_now()
 * (which is cached per loop turn and in milliseconds): the uv_timer is only
 * the alarm, and rounds its delay up so it never fires early.
 */
#include "timers.h"

#include <stdlib.h>

#include "log.h"

static void swap(struct cbd_deadline *a, struct cbd_deadline *b)
{
    struct cbd_deadline t = *a;
    *a = *b;
    *b = t;
}

static void sift_up(struct cbd_deadline *h, size_t i)
{
    while (i > 0 && h[(i - 1) / 2].at_ns > h[i].at_ns) {
        swap(&h[(i - 1) / 2], &h[i]);
        i = (i - 1) / 2;
    }
}

static void sift_down(struct cbd_deadline *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l].at_ns < h[m].at_ns)
            m = l;
        if (r < n && h[r].at_ns < h[m].at_ns)
            m = r;
        if (m == i)
            return;
        swap(&h[m], &h[i]);
        i = m;
    }
}

static void on_timer(uv_timer_t *t);

/* Arms the uv_timer for the heap's earliest entry. */
static void rearm(struct cbd_timers *tm)
{
    if (tm->n == 0) {
        uv_timer_stop(&tm->timer);
        return;
    }
    struct cbd_now now;
    cbd_now(&now);
    uint64_t at = tm->heap[0].at_ns;
    uint64_t ms = at > now.mono_ns ? (at - now.mono_ns + 999999) / 1000000 : 0;
    uv_timer_start(&tm->timer, on_timer, ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct cbd_timers *tm = t->data;
    struct cbd_now now;
    cbd_now(&now);
    while (tm->n > 0 && tm->heap[0].at_ns <= now.mono_ns) {
        struct cbd_deadline e = tm->heap[0];
        tm->heap[0] = tm->heap[--tm->n];
        sift_down(tm->heap, tm->n, 0);
        tm->fire(tm->arg, e.slot, e.epoch, e.at_ns, &now); /* may push new entries: the heap is consistent here */
    }
    rearm(tm);
}

int cbd_timers_init(struct cbd_timers *tm, uv_loop_t *loop, cbd_deadline_fn *fire, void *arg)
{
    int rc = uv_timer_init(loop, &tm->timer);
    if (rc < 0)
        return rc;
    tm->timer.data = tm;
    tm->fire = fire;
    tm->arg = arg;
    tm->started = 1;
    return 0;
}

void cbd_timers_add(struct cbd_timers *tm, uint32_t slot, uint32_t epoch, uint64_t at_ns)
{
    if (tm->n == tm->cap) {
        size_t cap = tm->cap ? tm->cap * 2 : 64;
        struct cbd_deadline *h = realloc(tm->heap, cap * sizeof *h);
        if (h == NULL) {
            /* Without the entry the circuit would stay OPEN until a restart:
             * not survivable quietly. */
            cbd_log(CBD_LOG_ERROR, "out of memory for circuit deadlines (%zu pending)", tm->n);
            abort();
        }
        tm->heap = h;
        tm->cap = cap;
    }
    tm->heap[tm->n] = (struct cbd_deadline){at_ns, slot, epoch};
    sift_up(tm->heap, tm->n++);
    if (tm->heap[0].at_ns == at_ns && tm->started)
        rearm(tm);
}

void cbd_timers_close(struct cbd_timers *tm)
{
    if (tm->started)
        uv_close((uv_handle_t *)&tm->timer, NULL);
    tm->started = 0;
    free(tm->heap);
    tm->heap = NULL;
    tm->n = tm->cap = 0;
}
