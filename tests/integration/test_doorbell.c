/*
 * test_doorbell.c - a failure wakes the daemon, whichever way the worker
 * can ring.
 *
 * The daemon drains lanes on a tick; a failure (or a probe result) must
 * not wait for it. Workers ring by writing a byte to <socket>.bell, a FIFO
 * the daemon's loop polls; a worker that cannot open the FIFO rings the
 * futex word in the lanes region, which the daemon's waiter thread
 * forwards. These tests slow the daemon's tick to its longest (1 s) and
 * read from `stats` which path answered the ring.
 */
#include <criterion/criterion.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(doorbell, .fini = stop, .timeout = 60);

/* A daemon whose drain tick is as slow as it gets. */
static void start_slow_tick(void)
{
    struct tsup_daemon_opts o = {.tag = "bell", .drain_interval_ms = 1000};
    tsup_fixture_start(&d, &cl, &o);
}

/* Five failures through a fresh circuit trip it. */
static void trip_by_ring(cb_client *client, const char *name)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.recovery_timeout_ms = 60000;
    cb_circuit *c = tsup_circuit(client, name, &cfg);
    for (int i = 0; i < 5; i++)
        cb_record(c, cb_allow(c), CB_FAILURE);
    cr_assert(tsup_wait_until(!cb_permitted(cb_allow(c)), TSUP_LIVENESS_MS),
              "'%s' did not trip", name);
}

Test(doorbell, the_daemon_creates_the_fifo_beside_its_socket_with_the_sockets_mode)
{
    start_slow_tick();
    char bell[sizeof d.socket + 8];
    snprintf(bell, sizeof bell, "%s.bell", d.socket);
    struct stat st, sock;
    cr_assert_eq(stat(bell, &st), 0, "no doorbell FIFO at %s", bell);
    cr_assert_eq(stat(d.socket, &sock), 0);
    cr_expect(S_ISFIFO(st.st_mode), "%s is not a FIFO", bell);
    cr_expect_eq(st.st_mode & 07777, sock.st_mode & 07777, "FIFO mode %o, socket mode %o", st.st_mode & 07777,
                 sock.st_mode & 07777);
    cr_expect_eq(st.st_gid, sock.st_gid);
}

Test(doorbell, a_failure_wakes_the_daemon_through_the_fifo)
{
    start_slow_tick();
    trip_by_ring(cl, "bell-fifo");
    cr_expect_geq(tsup_stat(&d, "doorbell_fifo"), 1, "the trip was not answered through the FIFO");
}

Test(doorbell, a_worker_without_the_fifo_rings_the_futex_instead)
{
    start_slow_tick();
    /* A client that maps the segment after the FIFO is gone cannot open it. */
    char bell[sizeof d.socket + 8];
    snprintf(bell, sizeof bell, "%s.bell", d.socket);
    cr_assert_eq(unlink(bell), 0);
    cb_client *late = tsup_client(&d);
    trip_by_ring(late, "bell-futex");
    cr_expect_geq(tsup_stat(&d, "doorbell_futex"), 1, "the trip was not answered through the futex thread");
    cr_expect_eq(tsup_stat(&d, "doorbell_fifo"), 0, "nothing could have rung the removed FIFO");
    cb_client_close(late);
}
