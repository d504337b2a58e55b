/*
 * test_removal.c - circuits leave the segment (cbctl remove, expiry) and
 * their slots are reused without a handle ever reading another circuit.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "frame.h"
#include "tsup.h"

static struct tsup_daemon d;
static cb_client *cl;

static void stop(void) { tsup_fixture_stop(&d, &cl); }

TestSuite(removal, .fini = stop, .timeout = 60);

/* The slot and incarnation of name in the segment, as a tool sees them. */
static int slot_of(const char *name, uint32_t *incarnation)
{
    size_t size, len = strlen(name);
    struct cb_seg_header *h = tsup_seg_map(d.instance, 0, &size);
    cr_assert_not_null(h);
    int slot = cb__seg_lookup(h, name, len, cb__name_hash(name, len), incarnation);
    munmap(h, size);
    return slot;
}

Test(removal, a_reused_slot_never_answers_for_the_removed_circuit)
{
    struct tsup_daemon_opts o = {.tag = "reuse", .capacity = 4};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(1, 1, 1, 60000);
    cb_circuit *a = tsup_circuit(cl, "alpha", &cfg);
    uint32_t inc_a, inc_b;
    int slot_a = slot_of("alpha", &inc_a);
    cr_assert_geq(slot_a, 0);
    cr_assert_eq(tsup_ctl_named_op(&d, "remove", "alpha"), 0);
    cr_assert_lt(slot_of("alpha", NULL), 0, "a removed name leaves the index");
    /* beta takes alpha's slot, one incarnation later, and trips */
    cb_client *other = tsup_client(&d);
    cb_circuit *b = tsup_circuit(other, "beta", &cfg);
    cr_assert_eq(slot_of("beta", &inc_b), slot_a, "the removed circuit's slot is reused");
    cr_assert_eq(inc_b, inc_a + 1);
    cr_assert_eq(tsup_record_n(b, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(b, CB_OPEN));
    /* alpha's handle still points into that slot: it must not see beta's
     * OPEN (it is bypassed, or bound to alpha registered again elsewhere) */
    for (int i = 0; i < 100; i++) {
        cb_ticket t = cb_allow(a);
        cr_assert(cb_permitted(t), "alpha's handle answered with beta's state");
        cb_record(a, t, CB_SUCCESS); /* counts for alpha if it is back, never for beta */
    }
    usleep(50000); /* a drain or more */
    cb_info ib = tsup_info(b);
    cr_assert_eq(ib.total_successes, 0, "beta counted alpha's outcomes");
    cr_assert_eq(ib.total_failures, 1);
    cb_info ia;
    int rc = cb_info_get(a, &ia);
    cr_assert(rc == -ENOENT || (rc == 0 && strcmp(ia.name, "alpha") == 0),
              "cb_info_get on alpha's handle: %d %s", rc, rc == 0 ? ia.name : "");
    cb_client_close(other);
}

Test(removal, removal_is_refused_for_a_declared_circuit_and_unknown_names)
{
    char conf[256];
    snprintf(conf, sizeof conf, "%s/cbd.conf", tsup_tmpdir());
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("[circuit \"declared\"]\nfailure_threshold = 2\n", f);
    fclose(f);
    struct tsup_daemon_opts o = {.tag = "decl", .extra = {"-c", conf}};
    tsup_fixture_start(&d, &cl, &o);
    tsup_circuit(cl, "declared", NULL);
    cr_assert_eq(tsup_ctl_named_op(&d, "remove", "declared"), -EBUSY);
    cr_assert_geq(slot_of("declared", NULL), 0);
    cr_assert_eq(tsup_ctl_named_op(&d, "remove", "nosuch"), -ENOENT);
}

Test(removal, unused_closed_circuits_expire_and_the_rest_stay)
{
    char conf[256];
    snprintf(conf, sizeof conf, "%s/cbd.conf", tsup_tmpdir());
    FILE *f = fopen(conf, "w");
    cr_assert_not_null(f);
    fputs("[circuit \"declared\"]\nfailure_threshold = 2\n", f);
    fclose(f);
    struct tsup_daemon_opts o = {.tag = "expiry", .extra = {"-c", conf, "--circuit-expiry-s", "1"}};
    tsup_fixture_start(&d, &cl, &o);
    cb_config cfg = tsup_config(1, 1, 1, 600000);
    tsup_circuit(cl, "idle", &cfg);
    tsup_circuit(cl, "declared", &cfg);
    cb_circuit *open = tsup_circuit(cl, "open", &cfg);
    cb_circuit *busy = tsup_circuit(cl, "busy", &cfg);
    cr_assert_eq(tsup_record_n(open, CB_FAILURE, 1), 1);
    cr_assert(tsup_wait_state(open, CB_OPEN));
    /* busy keeps reporting; idle says nothing for more than a second */
    cr_assert(tsup_wait_until((tsup_record_n(busy, CB_SUCCESS, 1), slot_of("idle", NULL) < 0), TSUP_LIVENESS_MS),
              "an idle CLOSED circuit did not expire");
    cr_assert_geq(slot_of("busy", NULL), 0, "a circuit in use expired");
    cr_assert_geq(slot_of("declared", NULL), 0, "a declared circuit expired");
    cr_assert_geq(slot_of("open", NULL), 0, "an OPEN circuit expired");
    /* the log line follows the removal the workers see: wait for it */
    cr_assert(tsup_wait_until(tsup_log_count(&d, "removed circuit=idle") >= 1, TSUP_LIVENESS_MS),
              "the expiry was not logged");
}
