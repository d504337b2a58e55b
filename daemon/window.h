/*
 * window.h - a circuit's sliding window of call outcomes (resilience4j's
 * COUNT_BASED and TIME_BASED windows), host-wide: every worker's calls of
 * the circuit land in the one window the daemon keeps.
 *
 * Pure: time comes in as a monotonic instant. Each call costs O(1) whatever
 * the window's size; a time window also costs O(1) per bucket that expires,
 * which happens at most once per bucket width, never per call.
 *
 *   COUNT  the last `size` calls, one byte each (failed, slow) in a ring;
 *          totals kept as calls enter and leave.
 *   TIME   the last `size` seconds in buckets. Up to CBD_WINDOW_BUCKETS_MAX
 *          seconds: one bucket per second of CLOCK_MONOTONIC, as
 *          resilience4j has one per epoch second (a call at second s
 *          counts through second s + size - 1). Longer windows use
 *          ceil(size / CBD_WINDOW_BUCKETS_MAX)-second buckets, so a window
 *          covers at least size seconds and less than one bucket more.
 *          A bucket expires lazily: each carries its number, so a window
 *          idle longer than it spans is emptied by zeroing its totals.
 *
 * Memory: COUNT size bytes (at most 10000: the sliding_window_size bound),
 * TIME at most CBD_WINDOW_BUCKETS_MAX x 32 bytes (8 KiB), plus the header;
 * allocated when a circuit with a rate rule sees its first call, in the
 * daemon's memory only (a daemon restart starts its windows empty).
 */
#ifndef CBD_WINDOW_H
#define CBD_WINDOW_H

#include <stdbool.h>
#include <stdint.h>

#define CBD_WINDOW_COUNT 1u /* sliding_window_type values (0: no window) */
#define CBD_WINDOW_TIME 2u
#define CBD_WINDOW_BUCKETS_MAX 256u

struct cbd_window_bucket {
    uint64_t number; /* monotonic seconds / width of the span it holds */
    uint64_t calls, failures, slow;
};

struct cbd_window {
    uint32_t type, size; /* as configured: CBD_WINDOW_*, calls or seconds */
    uint32_t slots;      /* ring entries: calls (COUNT) or buckets (TIME) */
    uint32_t width_s;    /* TIME: seconds per bucket */
    uint64_t calls, failures, slow; /* totals of what the window holds now */
    uint64_t next;       /* COUNT: calls ever added (the ring position) */
    uint64_t newest;     /* TIME: number of the newest bucket */
    /* COUNT: uint8_t per call (CBD_WINDOW_FAILED | CBD_WINDOW_SLOW);
     * TIME: struct cbd_window_bucket per bucket. */
    _Alignas(8) unsigned char ring[];
};
#define CBD_WINDOW_FAILED 0x1u
#define CBD_WINDOW_SLOW 0x2u

/* A new, empty window (malloc'd; free with free()), or NULL: out of
 * memory, or a type/size out of range. */
struct cbd_window *cbd_window_new(uint32_t type, uint32_t size);

/* The same window under another type or size, keeping what it can: the
 * newest min(old, new) calls of a COUNT window, the buckets of a TIME
 * window still inside the new span when the bucket width stays. A change
 * of type starts empty. Returns the new window and frees w, or NULL (w is
 * left as it was). */
struct cbd_window *cbd_window_reshape(struct cbd_window *w, uint32_t type, uint32_t size, uint64_t mono_ns);

/* Drops every call. */
void cbd_window_clear(struct cbd_window *w);

/* One call's outcome at mono_ns. */
void cbd_window_add(struct cbd_window *w, bool failed, bool slow, uint64_t mono_ns);

/* Expires buckets older than the span ending at mono_ns (TIME; COUNT: no-op). */
void cbd_window_advance(struct cbd_window *w, uint64_t mono_ns);

/* part/whole >= pct/100, in integers: what resilience4j's
 * `rate >= threshold` says for rates computed exactly. */
static inline bool cbd_rate_reached(uint64_t part, uint64_t whole, uint32_t pct)
{
    return whole > 0 && part * 100 >= (uint64_t)pct * whole;
}

#endif /* CBD_WINDOW_H */
