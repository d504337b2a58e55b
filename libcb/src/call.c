/*
 * call.c - cb_call(): the breaker around one call, the way Powertools'
 * decorator wraps a function.
 *
 * allow, run, classify, record - or, when the circuit rejects, hand the
 * caller's fallback a snapshot of the circuit (Powertools passes
 * CircuitInfo to on_circuit_open). The fallback is off the hot path, so a
 * seqlock read for it is fine; if that read gives up (-EAGAIN) the fallback
 * still gets the name and the state the ticket was decided on.
 */
#include "client.h"

#include <errno.h>
#include <string.h>

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

int cb_call(cb_circuit *c, cb_fn fn, void *fn_arg, const cb_call_opts *opts)
{
    if (c == NULL || fn == NULL)
        return -EINVAL;
    cb_ticket t = cb_allow(c);
    if (!cb_permitted(t))
        return rejected(c, opts);
    int result = fn(fn_arg);
    cb_outcome outcome;
    if (opts != NULL && opts->classify != NULL)
        outcome = opts->classify(result, opts->arg);
    else
        outcome = result < 0 ? CB_FAILURE : CB_SUCCESS;
    cb_record(c, t, outcome);
    return result;
}
