/*
 * test_history.c - cb_next_transition (libcb/src/history.c) over a
 * segment held in memory, written the way the daemon writes its ring
 * (common/segment.h: seq 0, the fields, seq + 1, then the head): entries
 * in order with their fields, nothing before the reader opened, one
 * -EOVERFLOW when the writer laps the reader and then the oldest entry
 * that is surely intact, an entry being rewritten never read, and a name
 * length no daemon writes read as an empty name.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

#define HISTORY 8u /* entries in the ring */

static struct cb_seg_header *hdr;
static struct cb__map map = {.id = 1};
static cb_client cl;

static void setup(void)
{
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(16, 1, 16, 16, &g), 0);
    hdr = aligned_alloc(4096, (g.state_size + 4095) / 4096 * 4096);
    cr_assert_not_null(hdr);
    memset(hdr, 0, g.state_size);
    hdr->capacity = 16;
    hdr->history_capacity = HISTORY;
    hdr->history_offset = g.history_offset;
    cr_assert_geq(g.history_capacity, HISTORY, "the region has room for the ring the test uses");
    map.hdr = hdr;
    memset(&cl, 0, sizeof cl);
    pthread_mutex_init(&cl.history_lock, NULL);
    atomic_store(&cl.map, &map);
    cl.history_map = map.id; /* a reader opened now: its cursor is at the head, 0 */
}

static void teardown(void)
{
    pthread_mutex_destroy(&cl.history_lock);
    free(hdr);
}

TestSuite(history, .init = setup, .fini = teardown);

/* Appends transition seq the way the daemon does. */
static void append(uint64_t seq, const char *name, cb_state from, cb_state to, uint32_t epoch)
{
    struct cb_seg_history *e = CB_SEG_HISTORY(hdr, seq);
    atomic_store_explicit(&e->seq, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e->from, (uint8_t)from, memory_order_relaxed);
    atomic_store_explicit(&e->to, (uint8_t)to, memory_order_relaxed);
    atomic_store_explicit(&e->source, CB_SOURCE_LOCAL, memory_order_relaxed);
    atomic_store_explicit(&e->epoch, epoch, memory_order_relaxed);
    atomic_store_explicit(&e->failure_count, to == CB_OPEN ? 5 : 0, memory_order_relaxed);
    atomic_store_explicit(&e->opened_at, to == CB_OPEN ? 1765000000 : 0, memory_order_relaxed);
    atomic_store_explicit(&e->time_ns, 1765000000000000000ll + (int64_t)seq, memory_order_relaxed);
    size_t n = strlen(name);
    memcpy(e->name, name, n + 1);
    atomic_store_explicit(&e->name_len, (uint16_t)n, memory_order_relaxed);
    atomic_store_explicit(&e->seq, seq + 1, memory_order_release);
    atomic_store_explicit(&hdr->history_head, seq + 1, memory_order_release);
}

Test(history, transitions_come_in_order_with_their_fields_then_nothing)
{
    cb_transition t;
    cr_assert_eq(cb_next_transition(&cl, &t), 0, "nothing happened yet");
    append(0, "payments", CB_CLOSED, CB_OPEN, 1);
    append(1, "payments", CB_OPEN, CB_HALF_OPEN, 2);
    cr_assert_eq(cb_next_transition(&cl, &t), 1);
    cr_assert_eq(t.seq, 0);
    cr_assert_str_eq(t.name, "payments");
    cr_assert(t.from == CB_CLOSED && t.to == CB_OPEN && t.epoch == 1 && t.failure_count == 5);
    cr_assert_eq(t.opened_at, 1765000000);
    cr_assert_eq(cb_next_transition(&cl, &t), 1);
    cr_assert(t.seq == 1 && t.from == CB_OPEN && t.to == CB_HALF_OPEN && t.epoch == 2);
    cr_assert_eq(cb_next_transition(&cl, &t), 0, "read up to the head");
}

Test(history, a_reader_lapped_by_the_writer_is_told_once_and_goes_on_from_the_oldest_intact_entry)
{
    cb_transition t;
    for (uint64_t s = 0; s < 3 * HISTORY; s++)
        append(s, "search", s % 2 ? CB_OPEN : CB_CLOSED, s % 2 ? CB_CLOSED : CB_OPEN, (uint32_t)s + 1);
    cr_assert_eq(cb_next_transition(&cl, &t), -EOVERFLOW, "entries 0.. were overwritten");
    uint64_t expect = 3 * HISTORY - HISTORY + 1; /* head - capacity + 1 */
    int got;
    while ((got = cb_next_transition(&cl, &t)) == 1) {
        cr_assert_eq(t.seq, expect, "read %llu, expected %llu", (unsigned long long)t.seq, (unsigned long long)expect);
        cr_assert_eq(t.epoch, (uint32_t)t.seq + 1, "the fields are entry %llu's", (unsigned long long)t.seq);
        expect++;
    }
    cr_assert_eq(got, 0, "one overflow, then entries in order");
    cr_assert_eq(expect, 3 * HISTORY, "every intact entry was read");
}

Test(history, an_entry_being_rewritten_is_not_read)
{
    cb_transition t;
    append(0, "mail", CB_CLOSED, CB_OPEN, 1);
    /* The daemon began rewriting the slot for a later sequence (seq 0) but
     * the head still says entry 0 is there: the reader must not take the
     * half-written fields for entry 0. */
    atomic_store(&CB_SEG_HISTORY(hdr, 0)->seq, 0);
    int rc = cb_next_transition(&cl, &t);
    cr_assert(rc == -EOVERFLOW || rc == 0, "a half-written entry was read (rc %d)", rc);
}

Test(history, a_name_length_no_daemon_writes_reads_as_an_empty_name)
{
    cb_transition t;
    append(0, "geo", CB_CLOSED, CB_OPEN, 1);
    atomic_store(&CB_SEG_HISTORY(hdr, 0)->name_len, CB_NAME_MAX + 1);
    cr_assert_eq(cb_next_transition(&cl, &t), 1);
    cr_assert_str_eq(t.name, "", "an impossible length was read as a name");
}
