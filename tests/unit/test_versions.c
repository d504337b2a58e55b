/*
 * test_versions.c - the segment's snapshot protocol (segment.h), in one
 * thread: a record's two version copies and its policy seqlock.
 *
 * The daemon publishes a version in three steps: begin (invalidate the
 * spare copy), fill, commit (stamp it and make it current). These tests
 * stop the writer between the steps - what a daemon killed at that moment
 * leaves behind - and read with cb_seg_version_try_read, as a worker, cbctl
 * or an adopting daemon does.
 *
 * A reader that overlaps a rewrite: try_read has no pause point between its
 * loads, so a single thread cannot stop it half-way. read_as_of() re-creates
 * what such a reader meets - it loaded the record's vseq before the
 * writer's last commit and follows it to a copy the writer has rewritten
 * since. The real interleavings run in tests/stress/tsan_stress.c.
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

static struct cb_seg_record *new_record(void)
{
    struct cb_seg_record *r = aligned_alloc(CB_CACHELINE, sizeof *r);
    cr_assert_not_null(r);
    memset(r, 0, sizeof *r);
    return r;
}

/* A version whose every field is derived from n, distinct from other n. */
static struct cb_seg_vdata version_of(uint64_t n)
{
    return (struct cb_seg_vdata){
        .word = cb_seg_state_word((unsigned)(n % 3), (unsigned)(n & 3), (uint32_t)(n * 7), (uint32_t)n),
        .opened_at_ns = (int64_t)(n * 1000000007ull),
        .open_until_ns = (int64_t)(n * 1000000007ull) + 30000000000ll,
        .last_transition_ns = -(int64_t)n,
        .trip_failure_count = (uint32_t)n * 3,
        .failure_streak = (uint32_t)n ^ 0x5a5a5a5au,
        .probe_successes = (uint32_t)n + 11,
        .sync_state = (uint32_t)(n % 4),
        .synced_at = (int64_t)n * 60,
        .total_successes = n * 5,
        .total_failures = ~n,
        .total_ignored = n << 20,
        .total_stale_events = n * n,
        .applied_pos = n + 1000,
        .applied_lane = (uint32_t)n % 257,
        .from = (uint8_t)(n % 3),
        .source = (uint8_t)(n % 5),
        .history_seq = n * 2,
    };
}

static void expect_version(const struct cb_seg_vdata *got, const struct cb_seg_vdata *want)
{
    cr_assert_eq(got->word, want->word);
    cr_assert_eq(got->opened_at_ns, want->opened_at_ns);
    cr_assert_eq(got->open_until_ns, want->open_until_ns);
    cr_assert_eq(got->last_transition_ns, want->last_transition_ns);
    cr_assert_eq(got->trip_failure_count, want->trip_failure_count);
    cr_assert_eq(got->failure_streak, want->failure_streak);
    cr_assert_eq(got->probe_successes, want->probe_successes);
    cr_assert_eq(got->sync_state, want->sync_state);
    cr_assert_eq(got->synced_at, want->synced_at);
    cr_assert_eq(got->total_successes, want->total_successes);
    cr_assert_eq(got->total_failures, want->total_failures);
    cr_assert_eq(got->total_ignored, want->total_ignored);
    cr_assert_eq(got->total_stale_events, want->total_stale_events);
    cr_assert_eq(got->applied_pos, want->applied_pos);
    cr_assert_eq(got->applied_lane, want->applied_lane);
    cr_assert_eq(got->from, want->from);
    cr_assert_eq(got->source, want->source);
    cr_assert_eq(got->history_seq, want->history_seq);
}

/* try_read by a reader that loaded the record's vseq when it was v_seen:
 * it goes on to copy v_seen & 1, whatever the writer did since. */
static int read_as_of(struct cb_seg_record *r, uint64_t v_seen, struct cb_seg_vdata *d)
{
    uint64_t current = atomic_load(&r->vseq);
    atomic_store(&r->vseq, v_seen);
    int rc = cb_seg_version_try_read(r, d, NULL);
    atomic_store(&r->vseq, current);
    return rc;
}

Test(versions, a_published_version_reads_back_field_for_field)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata want = version_of(12345), got;
    want.total_failures = UINT64_MAX;
    want.opened_at_ns = INT64_MIN;
    want.open_until_ns = INT64_MAX;
    uint64_t v = cb_seg_version_publish(r, &want), seen = 0;
    cr_assert_eq(cb_seg_version_try_read(r, &got, &seen), 0);
    cr_assert_eq(seen, v, "try_read names the version it read (%llu), the one published (%llu)",
                 (unsigned long long)seen, (unsigned long long)v);
    expect_version(&got, &want);
    free(r);
}

Test(versions, each_publication_is_numbered_one_higher_and_alternates_the_copies)
{
    struct cb_seg_record *r = new_record();
    for (uint64_t n = 1; n <= 1000; n++) {
        struct cb_seg_vdata want = version_of(n), got;
        uint64_t seen;
        cr_assert_eq(cb_seg_version_publish(r, &want), n);
        cr_assert_eq(atomic_load(&r->vseq), n);
        cr_assert_eq(atomic_load(&r->version[n & 1].vseq), n, "version %llu lives in copy %llu",
                     (unsigned long long)n, (unsigned long long)(n & 1));
        cr_assert_eq(atomic_load(&r->version[(n + 1) & 1].vseq), n - 1, "the other copy keeps the previous version");
        cr_assert_eq(cb_seg_version_try_read(r, &got, &seen), 0);
        cr_assert_eq(seen, n);
        expect_version(&got, &want);
    }
    free(r);
}

Test(versions, a_writer_stopped_after_begin_leaves_the_current_version_whole)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata v1 = version_of(1), v2 = version_of(2), got;
    cb_seg_version_publish(r, &v1);
    cb_seg_version_publish(r, &v2);
    uint64_t next, seen;
    struct cb_seg_version *spare = cb_seg_version_begin(r, &next);
    cr_assert_eq(next, 3);
    cr_assert_eq(spare, &r->version[1], "the rewrite goes to the copy that is not current");
    cr_assert_eq(cb_seg_version_try_read(r, &got, &seen), 0, "the current copy is untouched");
    cr_assert_eq(seen, 2);
    expect_version(&got, &v2);
    free(r);
}

Test(versions, a_writer_stopped_after_fill_leaves_the_current_version_whole)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata v1 = version_of(1), v3 = version_of(3), got;
    cb_seg_version_publish(r, &v1);
    uint64_t next, seen;
    struct cb_seg_version *spare = cb_seg_version_begin(r, &next);
    cb_seg_version_fill(spare, &v3);
    cr_assert_eq(cb_seg_version_try_read(r, &got, &seen), 0);
    cr_assert_eq(seen, 1, "a filled, uncommitted copy is not a version");
    expect_version(&got, &v1);
    free(r);
}

Test(versions, the_writer_after_an_abandoned_rewrite_publishes_the_next_number)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata v1 = version_of(1), junk = version_of(99), v2 = version_of(2), got;
    cb_seg_version_publish(r, &v1);
    uint64_t next, seen;
    cb_seg_version_fill(cb_seg_version_begin(r, &next), &junk); /* the daemon dies here */
    cr_assert_eq(cb_seg_version_publish(r, &v2), 2, "the adopting daemon numbers on from the current version");
    cr_assert_eq(cb_seg_version_try_read(r, &got, &seen), 0);
    cr_assert_eq(seen, 2);
    expect_version(&got, &v2);
    free(r);
}

Test(versions, a_reader_that_loaded_an_older_vseq_gets_eagain_while_its_copy_is_rewritten)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata v1 = version_of(1), v2 = version_of(2), v3 = version_of(3), got;
    cb_seg_version_publish(r, &v1);
    cb_seg_version_publish(r, &v2);
    cr_assert_eq(read_as_of(r, 1, &got), 0, "version 1 is still intact in its copy");
    expect_version(&got, &v1);
    uint64_t next;
    struct cb_seg_version *x = cb_seg_version_begin(r, &next); /* rewrites version 1's copy */
    cr_assert_eq(read_as_of(r, 1, &got), -EAGAIN, "after begin");
    cb_seg_version_fill(x, &v3);
    cr_assert_eq(read_as_of(r, 1, &got), -EAGAIN, "after fill");
    cb_seg_version_commit(r, x, next);
    cr_assert_eq(read_as_of(r, 1, &got), -EAGAIN, "after commit the copy holds version 3, not 1");
    cr_assert_eq(read_as_of(r, 3, &got), 0);
    expect_version(&got, &v3);
    free(r);
}

Test(versions, a_reader_of_the_current_copy_is_not_disturbed_by_a_rewrite_of_the_other)
{
    struct cb_seg_record *r = new_record();
    struct cb_seg_vdata v1 = version_of(1), v2 = version_of(2), v3 = version_of(3), got;
    cb_seg_version_publish(r, &v1);
    cb_seg_version_publish(r, &v2);
    uint64_t next;
    struct cb_seg_version *x = cb_seg_version_begin(r, &next);
    cb_seg_version_fill(x, &v3);
    cr_assert_eq(read_as_of(r, 2, &got), 0);
    expect_version(&got, &v2);
    free(r);
}

static void store_cfg(struct cb_seg_record *r, uint32_t n)
{
    cb_config cfg = {.failure_threshold = n, .success_threshold = n + 1, .half_open_max_probes = n + 2,
                     .recovery_timeout_ms = n + 3, .probe_lease_ms = n + 4};
    cb_seg_cfg_begin(r);
    cb_seg_cfg_store(r, &cfg);
    cb_seg_cfg_end(r);
}

Test(versions, policy_fields_read_back_with_reserved_fields_zero)
{
    struct cb_seg_record *r = new_record();
    store_cfg(r, 40);
    cb_config got;
    memset(&got, 0xff, sizeof got);
    uint32_t seq = cb_seg_cfg_read_begin(r);
    cb_seg_cfg_load(r, &got);
    cr_assert_not(cb_seg_cfg_read_retry(r, seq), "no writer in between: the read stands");
    cr_assert_eq(got.failure_threshold, 40);
    cr_assert_eq(got.success_threshold, 41);
    cr_assert_eq(got.half_open_max_probes, 42);
    cr_assert_eq(got.recovery_timeout_ms, 43);
    cr_assert_eq(got.probe_lease_ms, 44);
    for (size_t i = 0; i < sizeof got.reserved / sizeof got.reserved[0]; i++)
        cr_assert_eq(got.reserved[i], 0);
    cr_assert_eq(atomic_load(&r->cfg_seq), 2, "one write moves the counter by two");
    free(r);
}

Test(versions, a_policy_read_overlapping_a_write_is_retried)
{
    struct cb_seg_record *r = new_record();
    store_cfg(r, 1);
    cb_config got;
    uint32_t before = cb_seg_cfg_read_begin(r); /* the reader starts ... */
    cb_seg_cfg_begin(r);                        /* ... the writer starts */
    cb_seg_cfg_load(r, &got);
    cr_assert(cb_seg_cfg_read_retry(r, before), "the writer is still busy");
    cb_seg_cfg_end(r);
    cr_assert(cb_seg_cfg_read_retry(r, before), "the writer finished after the read began");
    uint32_t during = cb_seg_cfg_read_begin(r);
    cr_assert_not(cb_seg_cfg_read_retry(r, during));
    cb_seg_cfg_begin(r);
    uint32_t odd = cb_seg_cfg_read_begin(r);
    cr_assert(odd & 1, "an odd counter tells the reader a write is under way");
    cr_assert(cb_seg_cfg_read_retry(r, odd), "a read that began during a write is retried even if nothing moved");
    free(r);
}

Test(versions, an_odd_policy_counter_left_by_a_dead_writer_becomes_even_at_the_next_write)
{
    struct cb_seg_record *r = new_record();
    store_cfg(r, 1);
    cb_seg_cfg_begin(r); /* the daemon dies here: the counter stays odd */
    uint32_t left = atomic_load(&r->cfg_seq);
    cr_assert(left & 1);
    cb_seg_cfg_begin(r);
    cr_assert_eq(atomic_load(&r->cfg_seq), left, "begin keeps an odd counter odd");
    cb_seg_cfg_store(r, &(cb_config){.failure_threshold = 9, .success_threshold = 9, .half_open_max_probes = 9,
                                     .recovery_timeout_ms = 9, .probe_lease_ms = 9});
    cb_seg_cfg_end(r);
    uint32_t now = atomic_load(&r->cfg_seq);
    cr_assert_eq(now, left + 1, "end makes it even, past every value a reader saw");
    cb_config got;
    uint32_t seq = cb_seg_cfg_read_begin(r);
    cb_seg_cfg_load(r, &got);
    cr_assert_not(cb_seg_cfg_read_retry(r, seq));
    cr_assert_eq(got.failure_threshold, 9);
    free(r);
}
