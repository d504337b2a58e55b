/*
 * fleet.pml - cbd's fleet protocol, checked by Spin: the fleet layer
 * (persistence/fleet.c) over a store with atomic conditional writes, the
 * daemon's "lease only while a probe runs" rules (policy.c), and a
 * Powertools client sharing the item. tests/model/README.md says what each
 * step mirrors, what is abstracted away and why, and the figures;
 * tests/model/check.sh runs every check.
 *
 * One circuit. NH cbd hosts, each two processes: host(h), the daemon's
 * policy (daemon/policy.c, daemon/cbd.c) and its workers (libcb lanes.c:
 * trips, demand, probe permits, results), and fleet(h), the fleet layer
 * (persistence/fleet.c: the coalesced transition write, the queued release
 * and election or renewal, one request at a time, reads, outages,
 * restore). A Powertools-like client (powertools), the store (store_apply:
 * one atomic conditional write by the rules of fleet_write_applies and
 * fleet_write_result), a coarse clock (clock), and the faults (chaos:
 * crash, restart, traffic stops; a lost request or answer is one of
 * fleet(h)'s alternatives). Every inline and step is named after the C
 * function it mirrors, and says so; README.md has the table.
 *
 * Time is counted down, never up: every deadline is the number of ticks
 * left (0: passed), so the state space is finite and time runs forever.
 * An opening's opened_at is a stamp: openings in one tick share it
 * (opened_at is whole seconds), later ticks get larger ones; recov[s] is
 * the number of ticks to opening s's recovery deadline.
 *
 * Properties:
 *   P1 assertion: never more than one probe call running fleet-wide
 *                 (half_open_max_probes = 1)
 *   P2 ltl p2:    (weak fairness) once some client wants a probe after the
 *                 recovery time, some client probes, or nobody wants one:
 *                 an idle host never blocks another's probe
 *   P3 ltl p3:    an opening the store holds reaches every live host,
 *                 unless the store moves on first
 *   P4 assertion: a write about an older opening never changes the store
 *
 * Switches (-D to spin -a):
 *   NH=1..3            cbd hosts (default 2)
 *   IDLE_HOSTS=n       hosts 0..n-1 may go idle for good (default 1); the
 *                      others call the circuit all the time
 *   MAXLOSS, MAXCRASH  fault budgets (default 1 each)
 *   NO_PT              no Powertools client
 *   BOUNDED_LATENCY    (liveness runs) a reachable store answers before the
 *                      next tick; SLOW_ANSWERS: an election or renewal up
 *                      to a tick later
 *   RELEASE_BEFORE_GRACE renew_lease gives an idle lease back at the
 *                      renewal time even when the grant came later and its
 *                      grace has not passed (policy.c before the fix).
 *                      With SLOW_ANSWERS it must violate P2.
 *   ELECT_AT_DEADLINE  the policy before probes on demand (still the local
 *                      store's): elect at the recovery deadline with or
 *                      without demand, renew halfway whatever runs. Must
 *                      violate P2.
 *   HOST_LOCAL_GRANTS  fleet.c's fail-open (grant_waiting): an election
 *                      waiting while offline is granted host-local once a
 *                      connection attempt failed. By design there is no
 *                      fleet-wide bound then (docs/fleet.md, Outages), so
 *                      the other runs leave it out. Violates P1.
 *   GRANT_IS_AGREEMENT probe_answer takes any applied ELECT as a grant,
 *                      also a takeover of another opening. Violates P4.
 *   PT_UNCONDITIONAL   Powertools' real writes: trip = PutItem and close /
 *                      reopen = UpdateItem without a condition, the trip
 *                      from a possibly stale cache. Violates P1.
 *   NO_P1, NO_P4       leave an assertion out (a run that looks for the
 *                      other one)
 */

#ifndef NH
#define NH 2
#endif
#ifndef IDLE_HOSTS
#define IDLE_HOSTS 1
#endif
#ifndef MAXS
#define MAXS 2                  /* openings (stamps) in a run */
#endif
#ifndef MAXLOSS
#define MAXLOSS 1               /* lost requests and answers */
#endif
#ifndef MAXCRASH
#define MAXCRASH 1              /* host crashes */
#endif
#define PT_ID (NH + 1)          /* owner id of the Powertools client; host h is h + 1 */

/* Time in ticks of a coarse clock. */
#ifndef REC
#define REC 2                   /* recovery_timeout */
#endif
#ifndef LEASE
#define LEASE 2                 /* probe_lease: a host trusts a grant for LEASE from its ask */
#endif
#define LEASE_S (LEASE + 1)     /* asked of the store: one more (policy.c ask_lease) */
#if REC > 0
#define PT_LEASE REC            /* Powertools: the lease is recovery_timeout */
#else
#define PT_LEASE 1              /* (a recovery_timeout under a tick) */
#endif
#define RENEW_AT (LEASE / 2)    /* renew when this much of the lease is left */
/* The grace after a grant, min(1 s, lease / 4), ends at the next tick. */

#define CLOSED 0
#define OPEN 1
#define HALF 2                  /* HALF_OPEN */

/* enum fleet_write_kind */
#define W_NONE 0
#define W_OPEN 1
#define W_CLOSE 2
#define W_ELECT 3
#define W_RENEW 4
#define W_RELEASE 5

/* ---- the store's item (struct fleet_item; failure_count left out) ---- */
byte st_state = CLOSED;
byte st_op;                     /* opened_at stamp; 0 when CLOSED */
byte st_owner;                  /* HALF_OPEN: the holder (host h + 1, or PT_ID); else 0 */
byte st_lease;                  /* HALF_OPEN: ticks to lease_expiry; 0: lapsed */

/* ---- time ---- */
byte nstamps;                   /* stamps handed out */
bool stamp_now;                 /* the last one was handed out in this tick */
byte recov[MAXS + 1];           /* ticks to the recovery deadline of opening s */

/* ---- fault budgets ---- */
byte losses = MAXLOSS;
byte crashes = MAXCRASH;
#ifdef HOST_LOCAL_GRANTS
byte connfails = 1;
#endif

/* ---- cbd hosts: the daemon (policy.c) and its workers ---- */
byte hs[NH];                    /* the circuit's state on the host */
byte hop[NH];                   /* its opened_at stamp */
bool demand[NH];                /* the permit word's demand bit (per epoch) */
bool asking[NH];                /* probe_asked: an ELECT or RENEW not answered */
byte ask_left[NH];              /* asking: ticks left of LEASE since the ask */
byte lease_left[NH];            /* HALF_OPEN: ticks left of the lease the host trusts */
bool grace[NH];                 /* HALF_OPEN: within the grace after the grant */
byte wait_left[NH];             /* refused: ticks to the holder's lease expiry */
bool ticket[NH];                /* a probe ticket of this epoch is out */
bool calling[NH];               /* a worker's probe call runs (of this epoch or not) */
byte call_left[NH];             /* a call of an epoch gone: ticks it may still run */
bool live[NH];                  /* up (not crashed) */
bool busy[NH];                  /* its workers call the circuit (at least once a tick) */

/* ---- cbd hosts: fleet.c ---- */
bool online[NH];
bool restoring[NH];             /* fleet_restore's read not answered: not READY */
byte pw_kind[NH], pw_op[NH];    /* the latest unwritten transition (coalesced) */
byte pe_kind[NH], pe_op[NH];    /* the queued election or renewal */
byte prel_op[NH];               /* the queued release (0: none) */

/* ---- the Powertools-like client ---- */
#ifndef NO_PT
bool pt_busy = 1;
#else
bool pt_busy = 0;
#endif
bool pt_probing;
byte pt_op;                     /* the opening it probes */
byte pt_lease_left;             /* its probe ends with its lease */

/* ---- what the properties look at ---- */
#define READY(h) (live[h] && !restoring[h])
#if NH == 1
#define HOSTS_CALLING (calling[0])
#define SOME_BUSY_HOST (live[0] && busy[0])
#define ALL_KNOW(s) (KNOWS(0, s))
#elif NH == 2
#define HOSTS_CALLING (calling[0] + calling[1])
#define SOME_BUSY_HOST ((live[0] && busy[0]) || (live[1] && busy[1]))
#define ALL_KNOW(s) (KNOWS(0, s) && KNOWS(1, s))
#else
#define HOSTS_CALLING (calling[0] + calling[1] + calling[2])
#define SOME_BUSY_HOST ((live[0] && busy[0]) || (live[1] && busy[1]) || (live[2] && busy[2]))
#define ALL_KNOW(s) (KNOWS(0, s) && KNOWS(1, s) && KNOWS(2, s))
#endif
#define RUNNING (HOSTS_CALLING + pt_probing)
/* P2: the store's opening is past its recovery time and some client calls. */
#define WANT (st_state != CLOSED && recov[st_op] == 0 && (pt_busy || SOME_BUSY_HOST))
/* P3: host h is down or restoring, or holds opening s (or a newer one). */
#define KNOWS(h, s) (!READY(h) || (hs[h] != CLOSED && hop[h] >= s))

ltl p2 { [] (WANT -> <> (RUNNING > 0 || !WANT)) }
ltl p3 { [] ((st_op == 1 -> <> (st_op != 1 || ALL_KNOW(1))) &&
             (st_op == 2 -> <> (st_op != 2 || ALL_KNOW(2)))) }

/* ==== the store: fleet_write_applies / fleet_write_result (fleet.c; the
 * redis Lua script and the DynamoDB conditions encode them) ==== */

#define CAN_OPEN (stamp_now || nstamps < MAXS)

/* An opening now: this tick's stamp. */
inline new_opening(v)
{
    if
    :: !stamp_now -> nstamps++; recov[nstamps] = REC; stamp_now = 1
    :: else -> skip
    fi;
    v = nstamps
}

/* fleet_write_applies: would write (k, wop) by owner who apply to the item
 * now? mine: st_owner == who (an owner exists only in HALF_OPEN); lapsed:
 * st_lease == 0; an absent item is CLOSED here. */
inline fleet_write_applies(k, wop, who, ok)
{
    if
    :: k == W_OPEN ->
        ok = (st_state == CLOSED || (st_state == OPEN && st_op < wop) ||
              (st_state == HALF && (st_owner == who || (st_lease == 0 && st_op < wop))))
    :: k == W_CLOSE ->
        ok = ((st_state == HALF && st_owner == who) ||
              (st_op == wop && (st_state == OPEN || (st_state == HALF && st_lease == 0))))
    :: k == W_ELECT ->
        ok = ((st_state == OPEN && st_op == wop) || (st_state == HALF && (st_lease == 0 || st_owner == who)))
    :: k == W_RENEW || k == W_RELEASE ->
        ok = (st_state == HALF && st_owner == who && st_op == wop)
    fi
}

/* P4: a write about an older opening never changes the store. An OPEN is
 * about a new opening, which must be newer than the stored one; the others
 * are about the stored opening. A write that leaves the item as it was
 * changes nothing. ELECT is left out (P4_ELECT: in): fleet_write_applies
 * lets it take a lapsed lease over whatever opening the elector saw. b_*: the item before. */
#ifndef P4_ELECT
#define P4_EXEMPT(k) (k == W_ELECT)
#else
#define P4_EXEMPT(k) (false)
#endif
#define ITEM_CHANGED (st_state != b_st || st_op != b_op || st_owner != b_ow || st_lease != b_le)
#ifndef NO_P4
#define P4(k, wop) assert(!ITEM_CHANGED || P4_EXEMPT(k) || \
                          (k == W_OPEN && (b_st == CLOSED || b_op < wop)) || (k != W_OPEN && b_op == wop))
#else
#define P4(k, wop) skip
#endif
#ifndef NO_P1
#define P1 assert(RUNNING <= 1)
#else
#define P1 skip
#endif

/* fleet_write_result: the item after write (k, wop) by who applied. */
inline fleet_write_result(k, wop, who, lease_s)
{
    if
    :: k == W_OPEN -> st_state = OPEN; st_op = wop; st_owner = 0; st_lease = 0
    :: k == W_CLOSE -> st_state = CLOSED; st_op = 0; st_owner = 0; st_lease = 0
    :: k == W_ELECT -> st_state = HALF; st_owner = who; st_lease = lease_s
    :: k == W_RENEW -> st_lease = lease_s
    :: k == W_RELEASE -> st_state = OPEN; st_owner = 0; st_lease = 0   /* @unreached-in powertools */
    fi
}

/* For trails (spin -t): the item. */
inline print_item()
{
    if
    :: st_state == CLOSED -> printf("CLOSED")
    :: st_state == OPEN -> printf("OPEN opened_at %d", st_op)
    :: st_state == HALF -> printf("HALF_OPEN opened_at %d owner %d lease %d", st_op, st_owner, st_lease)
    fi
}

/* For trails: write (k, wop) by who, on the item as it is. */
inline print_write(k, wop, who)
{
    printf("      store: ");
    if
    :: who == PT_ID -> printf("powertools ")            /* @unreached-in fleet */
    :: else -> printf("host%d ", who - 1)               /* @unreached-in powertools */
    fi;
    if
    :: k == W_OPEN -> printf("OPEN")
    :: k == W_CLOSE -> printf("CLOSE")
    :: k == W_ELECT -> printf("ELECT")
    :: k == W_RENEW -> printf("RENEW")
    :: k == W_RELEASE -> printf("RELEASE")
    fi;
    printf("(opened_at %d) on ", wop); print_item()
}

/* The write applied: the item afterwards, and P4. */
inline store_write(k, wop, who, lease_s)
{
    b_st = st_state; b_op = st_op; b_ow = st_owner; b_le = st_lease;
    fleet_write_result(k, wop, who, lease_s);
    printf(": applied -> "); print_item(); printf("\n");
    P4(k, wop);
    b_st = 0; b_op = 0; b_ow = 0; b_le = 0
}

/* The store receives a write of owner who: one atomic conditional write
 * (redis: the Lua script; DynamoDB: UpdateItem with its ConditionExpression). */
inline store_apply(k, wop, who, lease_s, ok)
{
    print_write(k, wop, who);
    fleet_write_applies(k, wop, who, ok);
    if
    :: ok -> store_write(k, wop, who, lease_s)
    :: else -> printf(": refused\n")
    fi
}

/* ==== a cbd host: the daemon's policy (daemon/policy.c, daemon/cbd.c) ==== */

/* renew_lease gives a lease nobody uses (lease_idle: no permit out) back
 * at the renewal time, but only once the grace after the grant has passed
 * (c->grace_ns): a grant answered after the renewal time waits for its
 * grace. RELEASE_BEFORE_GRACE: the former code, which gave such a grant
 * back at once, before a worker could take its permit. */
#ifdef RELEASE_BEFORE_GRACE
#define RELEASE_AT_RENEWAL(h) (lease_left[h] <= RENEW_AT)
#else
#define RELEASE_AT_RENEWAL(h) (lease_left[h] <= RENEW_AT && !grace[h])
#endif

/* make_electable (cbd_policy_on_deadline): OPEN on a fleet store, past the
 * recovery deadline (or the holder's lease expiry it waits for), no
 * election asked. */
#define ELECTABLE(h) (READY(h) && hs[h] == OPEN && recov[hop[h]] == 0 && wait_left[h] == 0 && !asking[h])

/* transition (policy.c): a new epoch and permit word. The demand bit and
 * the outstanding ticket go (a running call goes on; its result is stale:
 * cbd_policy_on_event counts it as such), so do the lease (lease_until_ns,
 * renew_ns, grace_ns), the question asked (probe_asked) and electable. */
inline transition(h, to, op)
{
    if  /* a call goes on, at most as long as the lease it was trusting */
    :: ticket[h] && calling[h] -> call_left[h] = lease_left[h]
    :: else -> skip
    fi;
    hs[h] = to; hop[h] = op;
    demand[h] = 0; asking[h] = 0; ask_left[h] = 0; ticket[h] = 0;
    lease_left[h] = 0; grace[h] = 0; wait_left[h] = 0
}

/* fleet_transition (fleet.c; from cbd.c on_transitioned -> write_through):
 * write-through of a local OPEN or CLOSE, coalesced with one still
 * waiting; an election or renewal queued for the opening left goes. */
inline fleet_transition(h, k, op)
{
    pw_kind[h] = k; pw_op[h] = op;
    pe_kind[h] = W_NONE; pe_op[h] = 0
}

/* ask_lease (policy.c) -> cbd.c on_try_probe -> fleet_try_probe (fleet.c):
 * the election (OPEN), or the renewal of the lease held (HALF_OPEN); the
 * host trusts a grant for LEASE from now (asked_ns). fleet_send sends RENEW
 * when the host holds the lease, ELECT otherwise: k says which. */
inline ask_lease(h, k)
{
    asking[h] = 1; ask_left[h] = LEASE;
    pe_kind[h] = k; pe_op[h] = hop[h]
}

/* fleet_release (fleet.c; from cbd.c on_release): RELEASE queued, and the
 * election or renewal queued goes. */
inline fleet_release(h, op)
{
    prel_op[h] = op;
    pe_kind[h] = W_NONE; pe_op[h] = 0
}

/* release_lease (policy.c): the lease back without a result; OPEN
 * electable on the same opening (a new epoch). */
inline release_lease(h, v)
{
    v = hop[h];
    fleet_release(h, v);
    transition(h, OPEN, v);
    v = 0
}

/* renew_lease (policy.c), HALF_OPEN at the renewal time (or at once when
 * the store comes back: cbd.c on_health -> cbd_policy_renew_now): renew
 * while a permit is out, else give the lease back (lease_idle). The
 * lease's end (now >= lease_until_ns: OPEN) is in clock. */
inline renew_lease(h, v)
{
    if
    :: ticket[h] -> ask_lease(h, W_RENEW); printf("host%d: renew_lease: RENEW\n", h)
    :: else -> release_lease(h, v); printf("host%d: renew_lease: idle, release\n", h)
    fi
}

/* cbd_policy_apply with an open item: OPEN on the store's opening, until
 * the holder's lease expiry at least (a holder's lease runs: asking
 * earlier is refused). */
inline cbd_policy_apply_open(h)
{
    transition(h, OPEN, st_op);
    wait_left[h] = st_lease
}

/* cbd_policy_apply (from cbd.c on_remote): news from the store, which
 * differs from the daemon's state (is_news). */
inline cbd_policy_apply(h)
{
    printf("host%d: cbd_policy_apply: news from the store\n", h);
    if
    :: st_state == CLOSED -> transition(h, CLOSED, 0)
    :: else -> cbd_policy_apply_open(h)
    fi
}

/* cbd_policy_on_probe_result (from cbd.c on_probe_result): the answer to
 * an ELECT or a RENEW (k) about opening op; ignored unless the circuit
 * still asks about op. */
inline cbd_policy_on_probe_result(h, k, op, granted, v)
{
    if
    :: asking[h] && k == W_ELECT && hs[h] == OPEN && hop[h] == op ->
        if
        :: granted && ask_left[h] > 0 ->   /* transition HALF_OPEN, hold_lease, grace_ns */
            v = ask_left[h];
            transition(h, HALF, op);
            lease_left[h] = v; grace[h] = 1; v = 0;
            printf("host%d: granted, HALF_OPEN, lease %d\n", h, lease_left[h])
        :: granted && ask_left[h] == 0 ->
            /* granted after the lease asked for: renew_lease finds it over */
            transition(h, OPEN, op);
            printf("host%d: granted too late\n", h)
        :: !granted && st_state == HALF ->
            wait_left[h] = st_lease;        /* stop_electable until the holder's lease expiry */
            printf("host%d: refused, waits %d\n", h, wait_left[h])
        :: !granted && st_state != HALF ->  /* (the store holds another opening or
                                             * CLOSED: report told the daemon first) */
            wait_left[h] = 1;               /* the store could not say: in a second */
            printf("host%d: refused, waits 1\n", h)   /* @unreached-in fleet */
        fi;
        asking[h] = 0; ask_left[h] = 0
    :: asking[h] && k == W_RENEW && hs[h] == HALF && hop[h] == op ->
        if
        :: granted -> lease_left[h] = ask_left[h]; printf("host%d: renewed, lease %d\n", h, lease_left[h])
        :: else -> printf("host%d: renewal refused\n", h)   /* @unreached-in fleet: see README */
        fi;
        asking[h] = 0; ask_left[h] = 0
    :: else -> skip                         /* a question no longer asked */
    fi
}

/* open_now (policy.c): an opening by this host's outcomes, written through. */
inline open_now(h, v)
{
    new_opening(v);
    transition(h, OPEN, v); fleet_transition(h, W_OPEN, v)
}

/* on_half_open (policy.c, from the drain's cbd_policy_on_event): the
 * probe's result of this epoch; success closes (success_threshold 1) ... */
inline on_half_open_success(h, v)
{
    calling[h] = 0; v = hop[h];
    transition(h, CLOSED, 0); fleet_transition(h, W_CLOSE, v);
    printf("host%d: probe succeeded, CLOSED\n", h); v = 0
}

/* ... failure reopens (open_now). */
inline on_half_open_failure(h, v)
{
    calling[h] = 0; open_now(h, v);
    printf("host%d: probe failed, OPEN opened_at %d\n", h, v); v = 0
}

proctype host(byte h)
{
    byte v;
    do
    /* on_closed (policy.c): a failure streak reaches the threshold: open_now */
    :: atomic { READY(h) && busy[h] && hs[h] == CLOSED && CAN_OPEN ->
                open_now(h, v); printf("host%d: trips, OPEN opened_at %d\n", h, v); v = 0 }
    /* want_probe (libcb lanes.c decide): a call on an electable OPEN
     * circuit is rejected and sets the demand bit */
    :: atomic { busy[h] && ELECTABLE(h) && !demand[h] -> demand[h] = 1; printf("host%d: demand\n", h) }
    /* take_permit (libcb lanes.c): HALF_OPEN, the permit; the probe call starts */
    :: atomic { READY(h) && busy[h] && hs[h] == HALF && !ticket[h] ->
                ticket[h] = 1; calling[h] = 1; printf("host%d: PROBE starts (opened_at %d)\n", h, hop[h]);
                P1 }
    /* cbd_policy_on_event -> on_half_open: the probe's result */
    :: atomic { ticket[h] -> on_half_open_success(h, v) }
    :: atomic { ticket[h] && CAN_OPEN -> on_half_open_failure(h, v) }
    /* a call of an epoch gone ends; cbd_policy_on_event finds its result
     * stale (never while the holder's lease is live in the store: only
     * PT_UNCONDITIONAL takes a live lease away) */
    :: atomic { calling[h] && !ticket[h] ->     /* @unreached-in host */
                calling[h] = 0; call_left[h] = 0;           /* @unreached-in host */
                printf("host%d: stale probe call ends\n", h) }   /* @unreached-in host */
#ifndef ELECT_AT_DEADLINE
    /* cbd_circuits_check_demand (circuits.c, after a drain) -> cbd_policy_on_demand:
     * demand on an electable circuit: ask_lease (ELECT) */
    :: atomic { ELECTABLE(h) && demand[h] -> ask_lease(h, W_ELECT); printf("host%d: cbd_policy_on_demand: ELECT\n", h) }
    /* cbd_policy_on_deadline, grace_ns: no permit out when the grace
     * ends (lease_idle): release_lease */
    :: atomic { hs[h] == HALF && !ticket[h] && !asking[h] && !grace[h] ->
                release_lease(h, v); printf("host%d: grace over, idle: release\n", h) }
    /* cbd_policy_on_deadline, renew_ns: renew_lease */
    :: atomic { hs[h] == HALF && (ticket[h] || RELEASE_AT_RENEWAL(h)) && !asking[h] && lease_left[h] <= RENEW_AT ->
                renew_lease(h, v) }
#else
    /* before probes on demand: the election at the recovery deadline,
     * demand or not */
    :: atomic { ELECTABLE(h) -> ask_lease(h, W_ELECT); printf("host%d: ELECT at the deadline\n", h) }
    /* before probes on demand: renew halfway while HALF_OPEN, probing or not */
    :: atomic { hs[h] == HALF && !asking[h] && lease_left[h] <= RENEW_AT ->
                ask_lease(h, W_RENEW); printf("host%d: RENEW\n", h) }
#endif
    od
}

/* ==== a cbd host: the fleet layer (persistence/fleet.c) ==== */

/* has_work: something of ours queued, whose answer will tell: no news
 * meanwhile. */
#define has_work(h) (pw_kind[h] != W_NONE || prel_op[h] != 0 || pe_kind[h] != W_NONE)

/* is_news: does the item differ from the daemon in a way that matters?
 * CLOSED against open, another opening, another's lease on the opening the
 * daemon probes. (A new lease of another on the opening the daemon has as
 * OPEN is news in fleet.c too, but cbd_policy_apply changes nothing for
 * it: left out.) */
#define is_news(h) ((st_state == CLOSED) != (hs[h] == CLOSED) || \
                    (st_state != CLOSED && st_op != hop[h]) || \
                    (hs[h] == HALF && st_state == HALF && st_owner != h + 1))

/* fleet_send: the circuit's next request, in the order transition write,
 * release, election or renewal. */
inline fleet_send(h, k, op)
{
    if
    :: pw_kind[h] != W_NONE ->
        k = pw_kind[h]; op = pw_op[h]; pw_kind[h] = W_NONE; pw_op[h] = 0
    :: pw_kind[h] == W_NONE && prel_op[h] != 0 ->
        k = W_RELEASE; op = prel_op[h]; prel_op[h] = 0
    :: pw_kind[h] == W_NONE && prel_op[h] == 0 ->
        k = pe_kind[h]; op = pe_op[h]; pe_kind[h] = W_NONE; pe_op[h] = 0
    fi
}

/* report (fleet.c) -> cbd.c on_remote -> cbd_policy_apply. */
inline report(h)
{
    cbd_policy_apply(h)
}

/* probe_answer: the answer to an ELECT or RENEW (k, op), to the daemon.
 * Granted only on the opening asked for: an ELECT that took over a lapsed
 * lease of another opening (fleet_write_applies lets it) is no grant, and
 * that lease is given back at once (RELEASE). GRANT_IS_AGREEMENT: any
 * applied ELECT is a grant, and the daemon probes the opening it asked for. */
#ifndef GRANT_IS_AGREEMENT
#define GRANTED(k, op, ok) (ok && st_op == op)
#define ANSWER_NEWS(h, k, ok) is_news(h)
#else
#define GRANTED(k, op, ok) (ok)
#define ANSWER_NEWS(h, k, ok) (is_news(h) && !(k == W_ELECT && ok))
#endif
inline probe_answer(h, k, op, ok, v)
{
    if
    :: ok && !GRANTED(k, op, ok) ->
        prel_op[h] = st_op; printf("host%d: probe_answer: a lease on another opening: release\n", h)
    :: else -> skip
    fi;
    cbd_policy_on_probe_result(h, k, op, GRANTED(k, op, ok), v)
}

/* fleet_on_answer: the answer to write (k, op) with the item as stored
 * afterwards: news (report) unless more of ours is queued, then the
 * election's or renewal's answer (probe_answer). */
inline fleet_on_answer(h, k, op, ok, v)
{
    if
    :: !has_work(h) && ANSWER_NEWS(h, k, ok) -> report(h)
    :: else -> skip
    fi;
    if
    :: k == W_ELECT || k == W_RENEW -> probe_answer(h, k, op, ok, v)
    :: else -> skip
    fi
}

/* requeue (fleet.c, from failed): write (k, op) got no answer (the request
 * or its answer lost; it may have applied). It is queued again unless
 * something newer replaced it. */
inline requeue(h, k, op)
{
    if
    :: (k == W_OPEN || k == W_CLOSE) && pw_kind[h] == W_NONE -> pw_kind[h] = k; pw_op[h] = op
    :: k == W_RELEASE && prel_op[h] == 0 -> prel_op[h] = op
    :: (k == W_ELECT || k == W_RENEW) && pe_kind[h] == W_NONE -> pe_kind[h] = k; pe_op[h] = op
    :: else -> skip
    fi
}

/* fleet_went_offline: the connection is lost: host-local until it is back,
 * the work stays queued. */
inline fleet_went_offline(h)
{
    online[h] = 0; printf("host%d: fleet_went_offline\n", h)
}

/* fleet_came_online: health(true) -> cbd.c on_health ->
 * cbd_policy_renew_now: a lease held is renewed (or given back, idle) at
 * once; then the queued work goes out (fleet_send's order) and every
 * circuit is read. */
inline fleet_came_online(h, v)
{
    online[h] = 1; printf("host%d: fleet_came_online\n", h);
    if
    :: hs[h] == HALF && !asking[h] -> renew_lease(h, v)
    :: else -> skip
    fi
}

/* fleet_restore: read the item before READY; an opening is adopted
 * (report -> cbd_policy_apply; the host after a crash holds CLOSED, so a
 * CLOSED item changes nothing). */
inline fleet_restore(h)
{
    if
    :: st_state != CLOSED ->
        printf("host%d: report: restored\n", h); cbd_policy_apply_open(h)
    :: else -> skip
    fi;
    restoring[h] = 0;
    printf("host%d: fleet_restore done, READY\n", h)
}

#define CAN_WRITE(h) (live[h] && online[h] && !restoring[h] && has_work(h))

proctype fleet(byte h)
{
    bool ok, lost;
    byte k, op, v;
    byte b_st, b_op, b_ow, b_le;
    do
    /* fleet_send -> the transport's write -> on_write_answer: the store
     * applies it and answers (fleet_on_answer), or the request is lost on
     * the way there, or its answer on the way back (failed -> requeue, and
     * the link is down: fleet_went_offline) */
    :: atomic { CAN_WRITE(h) ->
                fleet_send(h, k, op);
                if
                :: losses > 0 -> losses--; lost = 1; printf("host%d: request lost\n", h)
                :: true ->
                    store_apply(k, op, h + 1, LEASE_S, ok);
                    if
                    :: losses > 0 -> losses--; lost = 1; printf("host%d: answer lost\n", h)
                    :: true -> skip
                    fi
                fi;
                if
                :: lost -> requeue(h, k, op); fleet_went_offline(h)
                :: else -> fleet_on_answer(h, k, op, ok, v)
                fi;
                k = 0; op = 0; ok = 0; lost = 0 }
    /* fleet_went_offline: the connection drops between requests */
    :: atomic { live[h] && online[h] && !CAN_WRITE(h) && losses > 0 ->
                losses--; fleet_went_offline(h) }
    /* a read (fleet_reconcile, or fleet_on_changed; a lost notification is
     * a later read) -> on_read_answer -> fleet_on_answer: news */
    :: atomic { live[h] && online[h] && !restoring[h] && !has_work(h) && is_news(h) -> report(h) }
    /* fleet_restore: read, adopt, then READY */
    :: atomic { live[h] && online[h] && restoring[h] -> fleet_restore(h) }
    :: atomic { live[h] && !online[h] -> fleet_came_online(h, v) }
#ifdef HOST_LOCAL_GRANTS
    /* fleet_went_offline -> grant_waiting -> grant_local: offline, a
     * connection attempt failed while an election or renewal waited:
     * granted host-local (fail open) */
    :: atomic { live[h] && !online[h] && pe_kind[h] != W_NONE && connfails > 0 ->
                connfails--; k = pe_kind[h]; op = pe_op[h]; pe_kind[h] = W_NONE; pe_op[h] = 0;
                printf("host%d: grant_local\n", h);
                cbd_policy_on_probe_result(h, k, op, 1, v);
                k = 0; op = 0 }
#endif
    od
}

/* ==== the Powertools-like client (a Lambda function with Powertools'
 * circuit breaker on the same item, docs/fleet.md) ==== */

/* It acts on its cached read of the item: at once when the item is OPEN
 * past recovery_timeout or its lease lapsed, or whenever an older read
 * says so (a trip, or an election on the opening it saw). */
#define PT_CAN_ELECT ((st_state == OPEN && recov[st_op] == 0) || (st_state == HALF && st_lease == 0))

/* Its write (k, wop), straight to the store (its own round trip): the
 * conditions of fleet_write_applies, or Powertools' own (PT_UNCONDITIONAL). */
inline pt_write(k, wop, ok)
{
#ifndef PT_UNCONDITIONAL
    store_apply(k, wop, PT_ID, PT_LEASE, ok)
#else
    if  /* trip = PutItem, close / reopen = UpdateItem: no condition */
    :: k == W_OPEN || k == W_CLOSE ->
        print_write(k, wop, PT_ID); printf(" (unconditional)"); ok = 1; store_write(k, wop, PT_ID, PT_LEASE)
    :: else -> store_apply(k, wop, PT_ID, PT_LEASE, ok)
    fi
#endif
}

proctype powertools()
{
    bool ok, probe;
    byte k, op;
    byte b_st, b_op, b_ow, b_le;
    do
    :: atomic {
        if
        /* CLOSED: a failure streak trips it */
        :: pt_busy && !pt_probing && CAN_OPEN -> k = W_OPEN; new_opening(op)
        /* the election, or a takeover of a lapsed lease */
        :: pt_busy && !pt_probing && st_state != CLOSED && recov[st_op] == 0 -> k = W_ELECT; op = st_op
        /* the probe's result: the owner closes, or reopens */
        :: pt_probing -> k = W_CLOSE; op = pt_op
        :: pt_probing && CAN_OPEN -> k = W_OPEN; new_opening(op)
        fi;
        probe = pt_probing;
        pt_write(k, op, ok);
        if
        :: probe ->                         /* a result, written or not */
            pt_probing = 0; pt_op = 0; pt_lease_left = 0
        :: !probe && k == W_ELECT && ok ->
            pt_probing = 1; pt_op = op; pt_lease_left = PT_LEASE;
            printf("powertools: PROBE starts (opened_at %d)\n", op);
            P1
        :: else -> skip
        fi;
        k = 0; op = 0; ok = 0; probe = 0
    }
    od
}

/* ==== the clock ==== */

/* A busy caller calls at least once a tick: time waits for its call. */
#define HOST_URGENT(h) (busy[h] && ((ELECTABLE(h) && !demand[h]) || (READY(h) && hs[h] == HALF && !ticket[h])))
#define PT_URGENT (pt_busy && !pt_probing && PT_CAN_ELECT)
/* BOUNDED_LATENCY (the liveness runs): while the store is reachable, a
 * write, release, election or renewal is answered before the next tick
 * (with SLOW_ANSWERS, an election or renewal within the tick after). */
#if defined(BOUNDED_LATENCY) && !defined(SLOW_ANSWERS)
#define WRITE_URGENT(h) CAN_WRITE(h)
#elif defined(BOUNDED_LATENCY)
/* SLOW_ANSWERS: an election or renewal may take up to a tick more. */
#define WRITE_URGENT(h) (CAN_WRITE(h) && !(pw_kind[h] == W_NONE && prel_op[h] == 0 && ask_left[h] == LEASE))
#else
#define WRITE_URGENT(h) (false)
#endif
#if NH == 1
#define URGENT (PT_URGENT || HOST_URGENT(0) || WRITE_URGENT(0))
#elif NH == 2
#define URGENT (PT_URGENT || HOST_URGENT(0) || HOST_URGENT(1) || WRITE_URGENT(0) || WRITE_URGENT(1))
#else
#define URGENT (PT_URGENT || HOST_URGENT(0) || HOST_URGENT(1) || HOST_URGENT(2) || \
                WRITE_URGENT(0) || WRITE_URGENT(1) || WRITE_URGENT(2))
#endif

#define DOWN(x) if :: x > 0 -> x-- :: else -> skip fi

/* A tick. A host whose trusted lease ends without a renewal goes OPEN on
 * the same opening (renew_lease: now >= lease_until_ns), and its probe
 * call ends with it: calls are assumed to end within the lease (the
 * downstream's timeout is shorter). The grace (grace_ns) ends at the next
 * tick; a refused host's wait (stop_electable until the holder's lease
 * expiry) and the recovery deadlines count down. */
proctype clock()
{
    byte i;
    do
    :: d_step { !URGENT ->
        stamp_now = 0; printf("-- tick\n");
        for (i : 1 .. MAXS) { DOWN(recov[i]) }
        DOWN(st_lease);
        for (i : 0 .. NH - 1) {
            DOWN(ask_left[i]); DOWN(wait_left[i]);
            if  /* calls end within the lease */
            :: call_left[i] == 1 -> call_left[i] = 0; calling[i] = 0
            :: else -> DOWN(call_left[i])
            fi;
            grace[i] = 0;
            if
            :: lease_left[i] > 0 ->
                lease_left[i]--;
                if
                :: lease_left[i] == 0 ->
                    if
                    :: ticket[i] -> calling[i] = 0
                    :: else -> skip
                    fi;
                    transition(i, OPEN, hop[i]); printf("host%d: its lease is over, OPEN\n", i)
                :: else -> skip
                fi
            :: else -> skip
            fi
        }
        i = 0;
        if
        :: pt_lease_left > 0 ->
            pt_lease_left--;
            if
            :: pt_lease_left == 0 -> pt_probing = 0; pt_op = 0; printf("powertools: its lease is over\n")
            :: else -> skip
            fi
        :: else -> skip
        fi
    }
    od
}

/* ==== faults and traffic ==== */

/* A host crash (the machine: the daemon, its shared memory, its workers and
 * the fleet layer lose everything); the store keeps its item. */
inline host_crash(h)
{
    live[h] = 0; online[h] = 0; restoring[h] = 0;
    transition(h, CLOSED, 0); calling[h] = 0; call_left[h] = 0;
    pw_kind[h] = W_NONE; pw_op[h] = 0; pe_kind[h] = W_NONE; pe_op[h] = 0; prel_op[h] = 0
}

/* A restart: cbd starts (fleet_restore reads the item before READY). */
inline host_restart(h)
{
    live[h] = 1; online[h] = 1; restoring[h] = 1
}

#define HOST_FAULTS(h) \
    :: atomic { crashes > 0 && live[h] -> crashes--; host_crash(h); printf("host%d: CRASH\n", h) } \
    :: atomic { !live[h] -> host_restart(h); printf("host%d: restarts\n", h) }
#define HOST_IDLE(h) \
    :: atomic { busy[h] -> busy[h] = 0; printf("host%d: goes idle\n", h) }

proctype chaos()
{
    do
    HOST_FAULTS(0)
#if NH > 1
    HOST_FAULTS(1)
#endif
#if NH > 2
    HOST_FAULTS(2)
#endif
#if IDLE_HOSTS > 0
    HOST_IDLE(0)
#endif
#if IDLE_HOSTS > 1 && NH > 1
    HOST_IDLE(1)
#endif
#if IDLE_HOSTS > 2 && NH > 2
    HOST_IDLE(2)
#endif
#ifndef NO_PT
    :: atomic { pt_busy -> pt_busy = 0; printf("powertools: goes idle\n") }
#endif
    :: break
    od
}

init
{
    byte h;
    atomic {
        for (h : 0 .. NH - 1) {
            live[h] = 1; busy[h] = 1; online[h] = 1
        }
        for (h : 0 .. NH - 1) {
            run host(h); run fleet(h)
        }
        h = 0;
#ifndef NO_PT
        run powertools();
#endif
        run clock(); run chaos()
    }
}
