/*
 * test_lane_groups.c - the drain tick visits only the lanes of claimed
 * groups (the lanes header's claimed_groups): a worker's claim sets its
 * group's bit, a reclaim of the group's last lane clears it, and a lane
 * whose bit is missing (a worker of layout minor 0 sets none) is still
 * drained, found by the reclaim pass. Read and changed where a worker
 * would: the real lanes region, mapped as the tests' root may.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(lane_groups, .fini = stop, .timeout = 60);

static struct cb_lanes_header *lanes_map(size_t *size)
{
    struct cb_lanes_header *l = tsup_seg_map(d.instance, TSUP_MAP_LANES | TSUP_MAP_RW, size);
    cr_assert_not_null(l, "cannot map the lanes region");
    return l;
}

static uint64_t groups_set(const struct cb_lanes_header *l)
{
    uint64_t n = 0;
    for (unsigned w = 0; w < CB_LANE_GROUP_WORDS; w++)
        n += (uint64_t)__builtin_popcountll(atomic_load(&l->claimed_groups[w]));
    return n;
}

/* A worker process: n successes on circuit name, then exits (its lanes are
 * reclaimed). */
static void successes_in_a_child(const char *name, int n)
{
    pid_t pid = tsup_fork();
    if (pid == 0) {
        cb_client *c = NULL;
        cb_circuit *h = NULL;
        if (cb_client_open(&c, d.instance) < 0 || cb_circuit_get(c, name, NULL, &h) < 0)
            _exit(10);
        _exit(tsup_record_n(h, CB_SUCCESS, n) == n ? 0 : 11);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    tsup_untrack(pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker status %#x", status);
}

Test(lane_groups, a_claim_sets_its_group_and_the_last_reclaim_clears_it)
{
    struct tsup_daemon_opts o = {.tag = "groups", .lanes = 300, .reclaim_interval_ms = 50};
    tsup_fixture_start(&d, &cl, &o);
    size_t size;
    struct cb_lanes_header *l = lanes_map(&size);
    cr_assert_eq(groups_set(l), 0, "no worker holds a lane yet");
    cb_circuit *c = tsup_circuit(cl, "grouped", NULL);
    successes_in_a_child("grouped", 10);
    cr_assert(tsup_wait_drained(c, 10), "a worker's successes were not drained (no doorbell rings for them)");
    cr_assert(tsup_wait_until(groups_set(l) == 0, TSUP_LIVENESS_MS),
              "the exited worker's lane was reclaimed, but its group stays marked");
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 1), 1); /* this process claims a lane */
    cr_assert_eq(groups_set(l), 1, "a claim marks exactly its group");
    cr_assert(tsup_wait_drained(c, 11));
    munmap(l, size);
}

Test(lane_groups, a_lane_whose_group_is_not_marked_is_still_drained)
{
    struct tsup_daemon_opts o = {.tag = "unmarked", .lanes = 300, .reclaim_interval_ms = 200};
    tsup_fixture_start(&d, &cl, &o);
    size_t size;
    struct cb_lanes_header *l = lanes_map(&size);
    cb_circuit *c = tsup_circuit(cl, "unmarked", NULL);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 1), 1);
    cr_assert(tsup_wait_drained(c, 1));
    for (unsigned w = 0; w < CB_LANE_GROUP_WORDS; w++) /* what a worker of minor 0 leaves: no bit */
        atomic_store(&l->claimed_groups[w], 0);
    cr_assert_eq(tsup_record_n(c, CB_SUCCESS, 5), 5);
    cr_assert(tsup_wait_drained(c, 6), "successes in a lane of an unmarked group were never drained");
    cr_assert(tsup_wait_until(groups_set(l) == 1, TSUP_LIVENESS_MS),
              "the reclaim pass marks the group of an owned lane again");
    munmap(l, size);
}
