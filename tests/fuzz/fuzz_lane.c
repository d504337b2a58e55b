/*
 * fuzz_lane.c - what a worker writes into its lane, through the daemon's
 * drain (daemon/drain.c): every byte of the lanes region is writable by any
 * worker of the group, so nothing in it is trusted.
 *
 * A real struct cbd (fuzz_daemon.h) with three circuits registered (one
 * whose threshold is 1, so events trip it, and one removed, so events for a
 * free slot come too). Input: bytes 0-7 the lane's head and bytes 8-15 its
 * tail as the worker leaves them (any values: behind, equal, far ahead),
 * then the lane's event slots, raw. The daemon drains it twice (a torn or
 * garbage lane must not make the second drain count again) and reclaims
 * it as a dead owner's.
 *
 * Properties, beyond the sanitizers': the daemon's circuits and index agree
 * (fuzz_daemon_check); every record is readable; the events counted in the
 * records never exceed the events the lane could hold; no transition of a
 * record that no valid event reached.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz.h"
#include "fuzz_daemon.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_daemon_init("fuzzlane", "[circuit \"trips\"]\nfailure_threshold = 1\n");
    return 0;
}

static uint64_t counted(struct cbd *d)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        struct cb_seg_snapshot s;
        int rc = cb__seg_snapshot(d->seg.hdr, i, &s);
        if (rc == -ENOENT && d->circuits.by_slot[i].removed)
            continue;
        if (rc < 0)
            abort(); /* a record the drain left unreadable */
        n += s.info.total_successes + s.info.total_failures + s.info.total_ignored + s.total_stale_events;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 16)
        return 0;
    struct cbd *d = fuzz_daemon_new();
    uint32_t slot;
    int created;
    char err[256];
    if (cbd_circuit_register(d, "trips", NULL, 0, CBD_OWNER_NONE, &slot, &created, err, sizeof err) < 0 ||
        cbd_circuit_register(d, "steady", NULL, 0, CBD_OWNER_NONE, &slot, &created, err, sizeof err) < 0 ||
        cbd_circuit_register(d, "gone", NULL, 0, CBD_OWNER_NONE, &slot, &created, err, sizeof err) < 0 ||
        cbd_circuit_remove(d, "gone", err, sizeof err) < 0 || cbd_drain_start(&d->drain) < 0)
        abort();
    struct cb_lanes_header *l = d->seg.lanes;
    struct cb_lane *lane = CB_LANES_LANE(l, 0);
    uint64_t head, tail;
    memcpy(&head, data, 8);
    memcpy(&tail, data + 8, 8);
    size_t room = (size_t)l->lane_capacity * sizeof(struct cb_lane_event);
    memcpy(CB_LANES_EVENTS(lane), data + 16, size - 16 < room ? size - 16 : room);
    atomic_store(&lane->head, head);
    atomic_store(&lane->tail, tail);
    atomic_store(&lane->owner, cb_lane_owner_word((uint32_t)getpid(), CB_LANE_OWNED));
    cbd_drain_all(&d->drain);
    uint64_t first = counted(d);
    if (first > l->lane_capacity)
        abort(); /* more events counted than the lane holds */
    cbd_drain_all(&d->drain); /* nothing new: nothing more is counted */
    if (counted(d) != first)
        abort();
    atomic_store(&lane->owner, cb_lane_owner_word(0x7fffffffu, CB_LANE_OWNED)); /* no such process */
    cbd_drain_all(&d->drain);
    fuzz_daemon_check(d);
    cbd_drain_stop(&d->drain);
    fuzz_daemon_free(d);
    return 0;
}
