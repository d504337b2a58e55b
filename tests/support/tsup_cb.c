/*
 * tsup_cb.c - small conveniences over the public libcb API, so tests read
 * as the scenario they check. Everything here goes through cb.h only: the
 * tests observe cbd the way a worker would.
 */
#include "tsup.h"

#include <criterion/criterion.h>
#include <string.h>

cb_info tsup_info(cb_circuit *c)
{
    cb_info info;
    int rc = cb_info_get(c, &info);
    cr_assert_eq(rc, 0, "cb_info_get: %s", cb_strerror(rc));
    return info;
}

cb_config tsup_config(uint32_t failure_threshold, uint32_t success_threshold, uint32_t max_probes,
                      uint32_t recovery_timeout_ms)
{
    cb_config cfg;
    cb_config_init(&cfg);
    cfg.failure_threshold = failure_threshold;
    cfg.success_threshold = success_threshold;
    cfg.half_open_max_probes = max_probes;
    cfg.recovery_timeout_ms = recovery_timeout_ms;
    cfg.probe_lease_ms = 60000;
    return cfg;
}

int tsup_record_n(cb_circuit *c, cb_outcome outcome, int n)
{
    int recorded = 0;
    for (int i = 0; i < n; i++) {
        cb_ticket t = cb_allow(c);
        if (cb_permitted(t)) {
            cb_record(c, t, outcome);
            recorded++;
        }
    }
    return recorded;
}

unsigned tsup_ticket_kind(cb_ticket t)
{
    return (unsigned)(t.word & 0xff);
}

uint32_t tsup_ticket_epoch(cb_ticket t)
{
    return (uint32_t)(t.word >> CB__EPOCH_SHIFT);
}

bool tsup_wait_state(cb_circuit *c, cb_state state)
{
    return tsup_wait_until(tsup_info(c).state == state, TSUP_LIVENESS_MS);
}

bool tsup_electable(cb_circuit *c)
{
    const struct cb__circuit_head *head = (const struct cb__circuit_head *)c;
    /* Acquire: pairs with the daemon's release store of the word (as cb_allow). */
    uint64_t w = __atomic_load_n(__atomic_load_n(&head->state_word, __ATOMIC_ACQUIRE), __ATOMIC_ACQUIRE);
    return cb_seg_word_state(w) == CB_OPEN && (cb_seg_word_flags(w) & CB_SEG_F_ELECTABLE) != 0;
}

bool tsup_wait_drained(cb_circuit *c, uint64_t n)
{
    return tsup_wait_until(({
                               cb_info i = tsup_info(c);
                               i.total_successes + i.total_failures + i.total_ignored >= n;
                           }),
                           TSUP_LIVENESS_MS);
}

cb_client *tsup_client(const struct tsup_daemon *d)
{
    cb_client *cl = NULL;
    int rc = cb_client_open(&cl, d->instance);
    cr_assert_eq(rc, 0, "cb_client_open(%s): %s", d->instance, cb_strerror(rc));
    return cl;
}

cb_circuit *tsup_circuit(cb_client *cl, const char *name, const cb_config *cfg)
{
    cb_circuit *c = NULL;
    int rc = cb_circuit_get(cl, name, cfg, &c);
    cr_assert_eq(rc, 0, "cb_circuit_get(%s): %s", name, cb_strerror(rc));
    return c;
}

cb_ticket tsup_probe(cb_circuit *c)
{
    cb_ticket t = {0};
    bool got = tsup_wait_until(({
                                   t = cb_allow(c);
                                   cr_assert(!cb_permitted(t) || cb_ticket_is_probe(t),
                                             "waiting for a probe, got ticket kind %u", tsup_ticket_kind(t));
                                   cb_permitted(t);
                               }),
                               TSUP_LIVENESS_MS);
    cr_assert(got, "no probe ticket within %d ms (state %d)", TSUP_LIVENESS_MS, tsup_info(c).state);
    return t;
}

cb_transition tsup_next_transition(cb_client *cl, const char *name)
{
    cb_transition tr;
    int rc = 0;
    bool got = tsup_wait_until(({
                                   while ((rc = cb_next_transition(cl, &tr)) == 1 && strcmp(tr.name, name) != 0) {
                                   }
                                   rc != 0;
                               }),
                               TSUP_LIVENESS_MS);
    cr_assert(got, "no transition of %s within %d ms", name, TSUP_LIVENESS_MS);
    cr_assert_eq(rc, 1, "cb_next_transition: %s", cb_strerror(rc));
    return tr;
}

void tsup_fixture_start(struct tsup_daemon *d, cb_client **cl, const struct tsup_daemon_opts *o)
{
    cr_assert_eq(tsup_daemon_start(d, o), 0, "cbd did not start");
    *cl = tsup_client(d);
}

void tsup_fixture_stop(struct tsup_daemon *d, cb_client **cl)
{
    cb_client_close(*cl);
    *cl = NULL;
    if (d->pid != 0)
        cr_expect_eq(tsup_daemon_stop(d), 0, "cbd did not exit 0 on SIGTERM");
}
