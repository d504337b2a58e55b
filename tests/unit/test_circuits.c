/*
 * test_circuits.c - the daemon's table of circuits (daemon/circuits.c)
 * without a daemon: registrations counted per uid against
 * max_circuits_per_uid, removed circuits' slots reused last first and
 * never past their last incarnation, and the list of electable circuits
 * (probes on demand), which must hold exactly the circuits the policy
 * listed whatever the order it lists and unlists them in, and must never
 * need memory on the policy's path.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "circuits.h"

TestSuite(circuits);

static struct cbd_circuits table(uint32_t n)
{
    struct cbd_circuits t;
    cbd_circuits_init(&t, NULL);
    cr_assert_eq(cbd_circuits_grow(&t, n), 0);
    memset(t.by_slot, 0, (size_t)n * sizeof *t.by_slot);
    t.n = n;
    return t;
}

Test(circuits, each_uid_counts_its_own_registrations_against_the_quota)
{
    struct cbd_circuits t = table(4);
    for (int i = 0; i < 3; i++)
        cbd_circuits_owner_count(&t, 1000, +1);
    cbd_circuits_owner_count(&t, 1001, +1);
    cr_assert(cbd_circuits_quota_reached(&t, 1000, 3), "uid 1000 holds 3 of 3");
    cr_assert_not(cbd_circuits_quota_reached(&t, 1001, 3), "uid 1001 holds 1 of 3");
    cr_assert_not(cbd_circuits_quota_reached(&t, 1002, 3), "a uid that registered nothing");
    cbd_circuits_owner_count(&t, 1000, -1); /* one removed */
    cr_assert_not(cbd_circuits_quota_reached(&t, 1000, 3), "a removal gives the uid room again");
    cr_assert_not(cbd_circuits_quota_reached(&t, 1000, 0), "max 0 is no quota");
    cbd_circuits_free(&t);
}

Test(circuits, circuits_of_the_store_the_file_and_admins_never_count)
{
    struct cbd_circuits t = table(4);
    for (int i = 0; i < 10; i++)
        cbd_circuits_owner_count(&t, CBD_OWNER_NONE, +1);
    cr_assert_eq(t.nowners, 0);
    cr_assert_not(cbd_circuits_quota_reached(&t, CBD_OWNER_NONE, 1));
    cbd_circuits_owner_count(&t, 1000, -1); /* a removal of a uid never counted changes nothing */
    cr_assert_eq(t.nowners, 0);
    cbd_circuits_free(&t);
}

Test(circuits, removed_slots_are_reused_last_first_and_never_at_their_last_incarnation)
{
    struct cbd_circuits t = table(8);
    cr_assert_eq(cbd_circuits_free_peek(&t), UINT32_MAX, "nothing removed: no slot to reuse");
    cbd_circuits_free_push(&t, 2, 1);
    cbd_circuits_free_push(&t, 5, 7);
    cbd_circuits_free_push(&t, 6, CB_SEG_INCARNATION_MAX); /* worn out: never handed out again */
    cr_assert_eq(cbd_circuits_free_peek(&t), 5);
    cbd_circuits_free_pop(&t);
    cr_assert_eq(cbd_circuits_free_peek(&t), 2);
    cbd_circuits_free_pop(&t);
    cr_assert_eq(cbd_circuits_free_peek(&t), UINT32_MAX, "slot 6 was worn out");
    cbd_circuits_free_pop(&t); /* popping an empty list is harmless */
    cr_assert_eq(t.nfree, 0);
    for (uint32_t s = 0; s < 200; s++) /* the list grows past its first allocation */
        cbd_circuits_free_push(&t, s % 8, 1);
    cr_assert_eq(t.nfree, 200);
    cbd_circuits_free(&t);
}

/* The list holds exactly the slots marked in want, each at the position its
 * circuit remembers. */
static void expect_list(const struct cbd_circuits *t, const bool *want, uint32_t n)
{
    uint32_t count = 0;
    for (uint32_t s = 0; s < n; s++)
        count += want[s];
    cr_assert_eq(t->nelectable, count, "%u listed, %u electable", t->nelectable, count);
    for (uint32_t i = 0; i < t->nelectable; i++) {
        uint32_t s = t->electable[i];
        cr_assert_lt(s, n);
        cr_assert(want[s], "slot %u is listed but not electable", s);
        cr_assert_eq(t->by_slot[s].electable_pos, i, "slot %u does not know its place in the list", s);
    }
}

Test(circuits, the_electable_list_holds_exactly_what_the_policy_listed_in_any_order)
{
    enum { N = 300, STEPS = 20000 };
    struct cbd_circuits t = table(N);
    bool want[N] = {0};
    unsigned seed = 20261206;
    for (int step = 0; step < STEPS; step++) {
        uint32_t s = (uint32_t)(rand_r(&seed) % N);
        /* The policy's contract: a circuit is listed once, then unlisted once. */
        cbd_circuits_set_electable(&t, s, !want[s]);
        want[s] = !want[s];
        if (step % 97 == 0)
            expect_list(&t, want, N);
    }
    expect_list(&t, want, N);
    for (uint32_t s = 0; s < N; s++) /* every circuit listed at once: the list has room */
        if (!want[s]) {
            cbd_circuits_set_electable(&t, s, 1);
            want[s] = true;
        }
    expect_list(&t, want, N);
    cbd_circuits_free(&t);
}

Test(circuits, the_electable_list_has_room_for_every_circuit_before_the_policy_lists_one)
{
    /* Listing runs on the policy's path, where an allocation failure would
     * lose a circuit's demand: the room comes with the table's growth. */
    struct cbd_circuits t = table(1000);
    cr_assert_geq(t.cap, 1000);
    cr_assert_not_null(t.electable, "the table's growth made room for the list");
    for (uint32_t s = 0; s < 1000; s++)
        cbd_circuits_set_electable(&t, s, 1);
    cr_assert_eq(t.nelectable, 1000);
    cbd_circuits_free(&t);
}
