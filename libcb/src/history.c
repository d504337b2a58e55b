/*
 * history.c - cb_next_transition(): reading the segment's transition ring.
 *
 * The daemon appends entry s at s % capacity: it first stores the
 * entry's seq = 0 (then a release fence), then the fields, then seq = s + 1
 * (release), then header.history_head = s + 1 (release). A reader needs no
 * lock and no socket; it only has to notice when the writer lapped it.
 *
 * Seqlock read (ck_sequence style): the entry at the cursor is intact if
 * its seq is cursor + 1 both before and after the relaxed field loads,
 * with an acquire fence between the loads and the re-check (pairing with
 * the writer's release fence after it invalidates seq). Any other seq of an
 * entry below head means the writer has lapped us.
 *
 * On an overrun the cursor jumps to head - capacity + 1, the oldest entry
 * that is surely intact, and the caller gets -EOVERFLOW once.
 *
 * Each entry carries its circuit's name (copied in by the daemon), so a
 * transition stays meaningful after its circuit was removed and the slot
 * reused; a name length past CB_NAME_MAX reads as an empty name.
 *
 * The cursor counts in one mapping: when the client has remapped (the
 * daemon replaced the segment) it starts again at 0 of the new segment,
 * whose history all happened while we were open. The cursor has its own
 * lock, never held while waiting, so a reader is never kept waiting by a
 * registration or a remap in another thread.
 */
#include "client.h"

#include <errno.h>
#include <string.h>

static int overrun(cb_client *cl, uint64_t head, uint64_t cap)
{
    cl->history_cursor = head >= cap ? head - cap + 1 : head;
    return -EOVERFLOW;
}

static void entry_name(const struct cb_seg_history *e, char *name)
{
    size_t n = atomic_load_explicit((_Atomic uint16_t *)&e->name_len, memory_order_relaxed);
    if (n > CB_NAME_MAX)
        n = 0;
    memcpy(name, e->name, n);
    name[n] = '\0';
}

/* Reads the entry at the cursor: 1, 0 (nothing new) or -EOVERFLOW. */
static int history_read(cb_client *cl, cb_transition *out)
{
    /* Acquire pairs with the release store that published the mapping. */
    const struct cb__map *m = atomic_load_explicit(&cl->map, memory_order_acquire);
    const struct cb_seg_header *h = m->hdr;
    if (cl->history_map != m->id) {
        cl->history_map = m->id;
        cl->history_cursor = 0;
    }
    uint64_t cap = h->history_capacity, cur = cl->history_cursor;
    /* Acquire pairs with the daemon's release store of history_head, made
     * after the entries below it were complete. */
    uint64_t head = atomic_load_explicit(&h->history_head, memory_order_acquire);
    if (cur == head)
        return 0;
    if (cur > head || head - cur > cap)
        return overrun(cl, head, cap);
    const struct cb_seg_history *e = CB_SEG_HISTORY(h, cur);
    /* Acquire pairs with the daemon's release store of seq after the fields. */
    uint64_t seq = atomic_load_explicit(&e->seq, memory_order_acquire);
    if (seq != cur + 1) /* 0: being overwritten; larger: overwritten */
        return overrun(cl, head, cap);
    cb_transition t = {.seq = cur};
    entry_name(e, t.name);
    t.from = (cb_state)atomic_load_explicit(&e->from, memory_order_relaxed);
    t.to = (cb_state)atomic_load_explicit(&e->to, memory_order_relaxed);
    t.source = (cb_source)atomic_load_explicit(&e->source, memory_order_relaxed);
    t.epoch = atomic_load_explicit(&e->epoch, memory_order_relaxed);
    t.failure_count = atomic_load_explicit(&e->failure_count, memory_order_relaxed);
    t.opened_at = atomic_load_explicit(&e->opened_at, memory_order_relaxed);
    t.time_ns = atomic_load_explicit(&e->time_ns, memory_order_relaxed);
    /* Acquire fence: the field loads above complete before seq is loaded
     * again (pairs with the writer's release fence after it zeroes seq). */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&e->seq, memory_order_relaxed) != seq)
        return overrun(cl, atomic_load_explicit(&h->history_head, memory_order_relaxed), cap);
    *out = t;
    cl->history_cursor = cur + 1;
    return 1;
}

int cb_next_transition(cb_client *cl, cb_transition *out)
{
    if (cl == NULL || out == NULL)
        return -EINVAL;
    if (cl->bypass)
        return 0;
    pthread_mutex_lock(&cl->history_lock);
    int rc = history_read(cl, out);
    pthread_mutex_unlock(&cl->history_lock);
    return rc;
}
