/*
 * test_backoff.c - the retry delay every store waits by (common/backoff.h):
 * attempt n waits r modulo (min(cap, base * 2^n) + 1), full jitter over
 * [0, ceiling]. The function is pure (the caller gives the random bits), so
 * each test picks r to reach the ends of the range or to sweep it.
 */
#include <criterion/criterion.h>
#include <stdint.h>

#include "backoff.h"

/* The largest delay attempt can draw: r = ceiling lands on it exactly, and
 * the range is [0, ceiling] only if ceiling + 1 wraps to 0. */
static uint32_t ceiling_of(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms)
{
    uint32_t top = 0;
    for (uint64_t r = 0; r < 70000; r++) {
        uint32_t d = cbd_backoff_ms(attempt, base_ms, cap_ms, r);
        if (d > top)
            top = d;
    }
    return top;
}

Test(backoff, the_first_retry_waits_at_most_the_base)
{
    cr_assert_eq(cbd_backoff_ms(0, 100, 5000, 100), 100, "r = base draws the base itself");
    cr_assert_eq(cbd_backoff_ms(0, 100, 5000, 101), 0, "r = base + 1 wraps to no wait");
    cr_assert_eq(ceiling_of(0, 100, 5000), 100);
}

Test(backoff, each_attempt_doubles_the_ceiling_until_the_cap)
{
    uint32_t expected[] = {200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000};
    for (uint32_t attempt = 0; attempt < sizeof expected / sizeof expected[0]; attempt++)
        cr_assert_eq(ceiling_of(attempt, 200, 30000), expected[attempt], "attempt %u", attempt);
}

Test(backoff, a_cap_between_two_doublings_is_the_ceiling_not_the_next_doubling)
{
    cr_assert_eq(ceiling_of(1, 100, 150), 150, "100 * 2 = 200 is cut to the cap, 150");
    cr_assert_eq(cbd_backoff_ms(1, 100, 150, 151), 0);
}

Test(backoff, a_cap_below_the_base_wins_from_the_first_attempt)
{
    /* store_dynamodb.c retries from a base of 200 ms under backoff_max_ms, which may be 10 */
    cr_assert_eq(ceiling_of(0, 200, 10), 10);
    cr_assert_eq(ceiling_of(7, 200, 10), 10);
}

Test(backoff, every_delay_of_the_range_is_drawn_equally_often)
{
    uint32_t seen[801] = {0};
    for (uint64_t r = 0; r < 801 * 5; r++)
        seen[cbd_backoff_ms(3, 100, 5000, r)]++;
    for (uint32_t d = 0; d <= 800; d++)
        cr_assert_eq(seen[d], 5, "delay %u ms drawn %u times out of 5 sweeps of [0, 800]", d, seen[d]);
}

Test(backoff, large_attempt_numbers_stay_at_the_cap_without_overflow)
{
    uint32_t attempts[] = {31, 32, 33, 63, 64, 65, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof attempts / sizeof attempts[0]; i++) {
        uint32_t a = attempts[i];
        cr_assert_eq(cbd_backoff_ms(a, 100, 5000, 5000), 5000, "attempt %u reaches the cap", a);
        cr_assert_eq(cbd_backoff_ms(a, 100, 5000, 5001), 0, "attempt %u goes no higher than the cap", a);
        cr_assert_leq(cbd_backoff_ms(a, 100, 5000, UINT64_MAX), 5000, "attempt %u", a);
    }
}

Test(backoff, the_widest_base_and_cap_still_draw_within_the_cap)
{
    cr_assert_eq(cbd_backoff_ms(0, UINT32_MAX, UINT32_MAX, UINT32_MAX), UINT32_MAX,
                 "ceiling + 1 is computed wide: r = 2^32 - 1 is drawn as itself");
    cr_assert_eq(cbd_backoff_ms(0, UINT32_MAX, UINT32_MAX, (uint64_t)UINT32_MAX + 1), 0);
    cr_assert_eq(cbd_backoff_ms(40, 1u << 31, UINT32_MAX, UINT32_MAX), UINT32_MAX,
                 "2^31 doubled is past a 32-bit cap: the cap, not a wrapped 0");
    cr_assert_eq(cbd_backoff_ms(1, 1u << 31, UINT32_MAX, 1ull << 31), 1u << 31);
}

Test(backoff, a_zero_base_never_waits)
{
    for (uint32_t attempt = 0; attempt < 40; attempt++)
        cr_assert_eq(cbd_backoff_ms(attempt, 0, 5000, 12345), 0, "attempt %u", attempt);
}
