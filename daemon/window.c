/*
 * window.c - sliding windows of call outcomes; the design is in window.h.
 */
#include "window.h"

#include <stdlib.h>
#include <string.h>

#define NS_PER_S 1000000000ull

static struct cbd_window_bucket *buckets(struct cbd_window *w)
{
    return (struct cbd_window_bucket *)w->ring;
}

struct cbd_window *cbd_window_new(uint32_t type, uint32_t size)
{
    if ((type != CBD_WINDOW_COUNT && type != CBD_WINDOW_TIME) || size == 0)
        return NULL;
    uint32_t width = type == CBD_WINDOW_TIME ? (size + CBD_WINDOW_BUCKETS_MAX - 1) / CBD_WINDOW_BUCKETS_MAX : 0;
    uint32_t slots = type == CBD_WINDOW_TIME ? (size + width - 1) / width : size;
    size_t each = type == CBD_WINDOW_TIME ? sizeof(struct cbd_window_bucket) : 1;
    struct cbd_window *w = calloc(1, sizeof *w + (size_t)slots * each);
    if (w == NULL)
        return NULL;
    w->type = type;
    w->size = size;
    w->slots = slots;
    w->width_s = width;
    return w;
}

void cbd_window_clear(struct cbd_window *w)
{
    size_t each = w->type == CBD_WINDOW_TIME ? sizeof(struct cbd_window_bucket) : 1;
    memset(w->ring, 0, (size_t)w->slots * each);
    w->calls = w->failures = w->slow = 0;
    w->next = w->newest = 0;
}

static uint64_t bucket_number(const struct cbd_window *w, uint64_t mono_ns)
{
    return mono_ns / NS_PER_S / w->width_s;
}

void cbd_window_advance(struct cbd_window *w, uint64_t mono_ns)
{
    if (w->type != CBD_WINDOW_TIME)
        return;
    uint64_t now = bucket_number(w, mono_ns);
    if (now <= w->newest)
        return;
    if (now - w->newest >= w->slots) {
        /* Idle for the whole span: every bucket is out. The buckets keep
         * their old numbers, which no later step takes for live ones. */
        w->calls = w->failures = w->slow = 0;
        w->newest = now;
        return;
    }
    /* Each step expires the bucket whose place the next number takes (if
     * it still holds the number one span back: else it was out already). */
    while (w->newest < now) {
        uint64_t n = ++w->newest;
        struct cbd_window_bucket *b = &buckets(w)[n % w->slots];
        if (b->number + w->slots == n) {
            w->calls -= b->calls;
            w->failures -= b->failures;
            w->slow -= b->slow;
        }
        *b = (struct cbd_window_bucket){.number = n};
    }
}

void cbd_window_add(struct cbd_window *w, bool failed, bool slow, uint64_t mono_ns)
{
    if (w->type == CBD_WINDOW_TIME) {
        cbd_window_advance(w, mono_ns);
        struct cbd_window_bucket *b = &buckets(w)[w->newest % w->slots];
        if (b->number != w->newest) /* the first call ever, or after an idle span */
            *b = (struct cbd_window_bucket){.number = w->newest};
        b->calls++;
        b->failures += failed;
        b->slow += slow;
    } else {
        uint8_t *o = &w->ring[w->next % w->slots];
        if (w->next >= w->slots) { /* the oldest call leaves */
            w->calls--;
            w->failures -= (*o & CBD_WINDOW_FAILED) != 0;
            w->slow -= (*o & CBD_WINDOW_SLOW) != 0;
        }
        *o = (uint8_t)((failed ? CBD_WINDOW_FAILED : 0) | (slow ? CBD_WINDOW_SLOW : 0));
        w->next++;
    }
    w->calls++;
    w->failures += failed;
    w->slow += slow;
}

/* COUNT -> COUNT: the newest calls, oldest first. */
static void copy_calls(struct cbd_window *to, const struct cbd_window *from, uint64_t mono_ns)
{
    uint64_t held = from->next < from->slots ? from->next : from->slots;
    uint64_t keep = held < to->slots ? held : to->slots;
    for (uint64_t i = from->next - keep; i < from->next; i++) {
        uint8_t o = from->ring[i % from->slots];
        cbd_window_add(to, o & CBD_WINDOW_FAILED, o & CBD_WINDOW_SLOW, mono_ns);
    }
}

/* TIME -> TIME of the same width: the live buckets the new span holds. */
static void copy_buckets(struct cbd_window *to, struct cbd_window *from, uint64_t mono_ns)
{
    cbd_window_advance(from, mono_ns);
    to->newest = from->newest;
    for (uint32_t i = 0; i < from->slots; i++) {
        const struct cbd_window_bucket *b = &buckets(from)[i];
        if (b->number + from->slots <= from->newest || b->number + to->slots <= to->newest || b->calls == 0)
            continue; /* out of the old span or of the new one */
        buckets(to)[b->number % to->slots] = *b;
        to->calls += b->calls;
        to->failures += b->failures;
        to->slow += b->slow;
    }
}

struct cbd_window *cbd_window_reshape(struct cbd_window *w, uint32_t type, uint32_t size, uint64_t mono_ns)
{
    struct cbd_window *n = cbd_window_new(type, size);
    if (n == NULL)
        return NULL;
    if (w != NULL && w->type == CBD_WINDOW_COUNT && type == CBD_WINDOW_COUNT)
        copy_calls(n, w, mono_ns);
    else if (w != NULL && w->type == CBD_WINDOW_TIME && type == CBD_WINDOW_TIME && w->width_s == n->width_s)
        copy_buckets(n, w, mono_ns);
    free(w);
    return n;
}
