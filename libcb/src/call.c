/*
 * call.c - cb_call(): the breaker around one call, the way Powertools'
 * decorator wraps a function.
 *
 * allow, run, classify, record - or, when the circuit rejects, hand the
 * caller's fallback a snapshot of the circuit (Powertools passes
 * CircuitInfo to on_circuit_open). The fallback is off the hot path, so a
 * seqlock read for it is fine; if that read gives up (-EAGAIN) the fallback
 * still gets the name and the state the ticket was decided on.
 *
 * Latency: only a circuit with a slow-call rule pays for the two clock
 * reads around fn; whether it has one is the record's policy word, read
 * after the call was allowed (one relaxed load of a line cb_allow just
 * read; a ticket that records nothing never times). A rule set while fn runs counts from the next call.
 */
#include "client.h"

#include <errno.h>
#include <string.h>
#include <time.h>

static int rejected(cb_circuit *c, const cb_call_opts *opts)
{
    if (opts == NULL || opts->on_open == NULL)
        return CB_EOPEN;
    cb_info info;
    if (cb_info_get(c, &info) < 0) {
        memset(&info, 0, sizeof info);
        strcpy(info.name, c->name);
        /* Acquire pairs with the daemon's release store of the state word. */
        info.state = (cb_state)cb_seg_word_state(__atomic_load_n(cb__word_ptr(c), __ATOMIC_ACQUIRE));
    }
    return opts->on_open(&info, opts->arg);
}

/* The circuit's record (the state word is its first field) has a
 * slow-call rule. Relaxed: one word of the policy, written by the daemon
 * alone; a stale read only times one call more or less. */
static bool slow_call_rule(const cb_circuit *c, cb_ticket t)
{
    unsigned kind = (unsigned)(t.word & 0xff);
    const uint64_t *w = cb__word_ptr(c);
    if ((kind != CB_TICKET_ALLOWED && kind != CB_TICKET_PROBE) || w == &cb__bypass_word || w == &cb__unbound_word)
        return false; /* nothing is recorded, or no record to read */
    const struct cb_seg_record *r = (const struct cb_seg_record *)w;
    return atomic_load_explicit((_Atomic uint32_t *)&r->cfg[CB_FIELD_slow_call_duration_threshold_ms],
                                memory_order_relaxed) != 0;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int cb_call(cb_circuit *c, cb_fn fn, void *fn_arg, const cb_call_opts *opts)
{
    if (c == NULL || fn == NULL)
        return -EINVAL;
    cb_ticket t = cb_allow(c);
    if (!cb_permitted(t))
        return rejected(c, opts);
    bool timed = slow_call_rule(c, t);
    uint64_t start = timed ? mono_ns() : 0;
    int result = fn(fn_arg);
    uint64_t latency = timed ? mono_ns() - start : 0;
    cb_outcome outcome;
    if (opts != NULL && opts->classify != NULL)
        outcome = opts->classify(result, opts->arg);
    else
        outcome = result < 0 ? CB_FAILURE : CB_SUCCESS;
    if (timed)
        cb_record_latency(c, t, outcome, latency);
    else
        cb_record(c, t, outcome);
    return result;
}
