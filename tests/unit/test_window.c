/*
 * test_window.c - sliding windows of call outcomes (daemon/window.c) on a
 * virtual clock: what a count window and a time window hold at their
 * edges, bucket rollover, idle spans, reshaping, and the exact rate test.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "window.h"

#define SEC 1000000000ull
#define T0 (1000 * SEC) /* an arbitrary monotonic instant on a whole second */

static struct cbd_window *W;

static void teardown(void) { free(W); }

static void add(int n, bool failed, bool slow, uint64_t at)
{
    for (int i = 0; i < n; i++)
        cbd_window_add(W, failed, slow, at);
}

Test(window, a_count_window_holds_the_last_size_calls_and_the_oldest_leaves_first, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_COUNT, 4);
    cr_assert_not_null(W);
    add(2, true, false, T0);
    add(2, false, true, T0);
    cr_assert(W->calls == 4 && W->failures == 2 && W->slow == 2);
    add(1, false, false, T0); /* the first failure leaves */
    cr_assert(W->calls == 4 && W->failures == 1 && W->slow == 2);
    add(1, false, false, T0);
    cr_assert(W->calls == 4 && W->failures == 0 && W->slow == 2);
    add(2, false, false, T0);
    cr_assert(W->calls == 4 && W->failures == 0 && W->slow == 0);
}

Test(window, a_count_window_ignores_time, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_COUNT, 3);
    add(3, true, false, T0);
    cbd_window_advance(W, T0 + 3600 * SEC);
    add(1, false, false, T0 + 3600 * SEC);
    cr_assert(W->calls == 3 && W->failures == 2);
}

Test(window, a_call_in_a_time_window_counts_through_its_last_second_and_leaves_at_the_next, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_TIME, 10);
    cr_assert_eq(W->width_s, 1);
    cr_assert_eq(W->slots, 10);
    add(3, true, false, T0 + SEC / 2);                 /* second 1000 */
    cbd_window_advance(W, T0 + 9 * SEC + SEC - 1);       /* the last nanosecond of second 1009 */
    cr_assert_eq(W->calls, 3, "a call at second s still counts in second s + size - 1");
    cbd_window_advance(W, T0 + 10 * SEC);                /* second 1010 */
    cr_assert_eq(W->calls, 0, "and is gone at second s + size");
    cr_assert_eq(W->failures, 0);
}

Test(window, time_buckets_roll_over_one_second_at_a_time, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_TIME, 3);
    add(1, true, false, T0);            /* s0: F */
    add(2, false, true, T0 + SEC);      /* s1: 2 slow */
    add(4, false, false, T0 + 2 * SEC); /* s2: 4 */
    cr_assert(W->calls == 7 && W->failures == 1 && W->slow == 2);
    add(1, false, false, T0 + 3 * SEC); /* s3: s0 leaves */
    cr_assert(W->calls == 7 && W->failures == 0 && W->slow == 2);
    add(1, false, false, T0 + 4 * SEC); /* s4: s1 leaves */
    cr_assert(W->calls == 6 && W->slow == 0);
    cbd_window_advance(W, T0 + 6 * SEC); /* s6: only s4 is left */
    cr_assert_eq(W->calls, 1);
}

Test(window, an_idle_span_longer_than_the_window_empties_it_and_old_buckets_never_come_back, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_TIME, 5);
    add(5, true, false, T0);
    add(5, true, false, T0 + 2 * SEC);
    add(1, false, false, T0 + 100 * SEC);
    cr_assert(W->calls == 1 && W->failures == 0);
    /* the next steps pass places whose buckets hold the old numbers */
    for (uint64_t s = 101; s < 112; s++)
        add(1, false, false, T0 + s * SEC);
    cr_assert_eq(W->calls, 5, "the last five seconds, one call each");
    cr_assert_eq(W->failures, 0);
}

Test(window, a_time_window_longer_than_the_bucket_limit_uses_wider_buckets_and_covers_at_least_its_size,
     .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_TIME, 1000);
    cr_assert_eq(W->width_s, 4);
    cr_assert_eq(W->slots, 250);
    cr_assert_leq(W->slots, CBD_WINDOW_BUCKETS_MAX);
    uint64_t start = 4000 * SEC; /* the start of a bucket */
    add(1, true, false, start);
    cbd_window_advance(W, start + 1000 * SEC - 1);
    cr_assert_eq(W->calls, 1, "still in the window 1000 s later");
    cbd_window_advance(W, start + 1000 * SEC);
    cr_assert_eq(W->calls, 0);
    free(W);
    W = cbd_window_new(CBD_WINDOW_TIME, 1001);
    cr_assert_eq(W->width_s, 4);
    cr_assert_eq(W->slots, 251, "1004 s: at least the size, less than a bucket more");
}

Test(window, a_nonsense_shape_makes_no_window)
{
    cr_assert_null(cbd_window_new(0, 10));
    cr_assert_null(cbd_window_new(3, 10));
    cr_assert_null(cbd_window_new(CBD_WINDOW_COUNT, 0));
}

Test(window, a_smaller_count_window_keeps_the_newest_calls, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_COUNT, 6);
    add(3, true, false, T0);
    add(3, false, false, T0);
    W = cbd_window_reshape(W, CBD_WINDOW_COUNT, 4, T0);
    cr_assert_not_null(W);
    cr_assert(W->calls == 4 && W->failures == 1, "the newest four: one failure, three successes");
    W = cbd_window_reshape(W, CBD_WINDOW_COUNT, 10, T0);
    cr_assert(W->calls == 4 && W->failures == 1, "a larger window keeps all it had");
    add(6, false, false, T0);
    cr_assert(W->calls == 10 && W->failures == 1);
}

Test(window, a_time_window_reshaped_keeps_the_buckets_inside_its_new_span, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_TIME, 10);
    for (uint64_t s = 0; s < 10; s++)
        add(1, s < 5, false, T0 + s * SEC); /* failures in the first five seconds */
    W = cbd_window_reshape(W, CBD_WINDOW_TIME, 5, T0 + 9 * SEC);
    cr_assert(W->calls == 5 && W->failures == 0, "the last five seconds");
    add(1, true, false, T0 + 10 * SEC); /* second 5 leaves */
    cr_assert(W->calls == 5 && W->failures == 1);
}

Test(window, a_change_of_type_starts_empty, .fini = teardown)
{
    W = cbd_window_new(CBD_WINDOW_COUNT, 10);
    add(10, true, false, T0);
    W = cbd_window_reshape(W, CBD_WINDOW_TIME, 10, T0);
    cr_assert(W->calls == 0 && W->type == CBD_WINDOW_TIME);
}

Test(window, a_rate_is_reached_at_exactly_its_percentage_and_not_below)
{
    cr_assert(cbd_rate_reached(50, 100, 50));
    cr_assert(!cbd_rate_reached(49, 100, 50));
    cr_assert(cbd_rate_reached(1, 3, 33), "33.3% reaches 33");
    cr_assert(!cbd_rate_reached(1, 3, 34));
    cr_assert(cbd_rate_reached(7, 7, 100));
    cr_assert(!cbd_rate_reached(6, 7, 100));
    cr_assert(!cbd_rate_reached(0, 0, 1), "no calls: no rate");
    cr_assert(cbd_rate_reached(UINT32_MAX, UINT32_MAX, 100), "no overflow at the counters' range");
}
