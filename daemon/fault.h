/*
 * fault.h - named fault-injection points, compiled only into test builds.
 *
 * CBD_FAULT("site") marks a moment where a crash or a pause would hurt the
 * most (between committing a transition and publishing it, between
 * applying events and advancing a lane's head, ...). In the daemon built
 * for crash tests (cbd_fi, -DCBD_FAULT_INJECTION) the environment picks a
 * site and what happens there:
 *
 *   CBD_FAULT=SITE:ACTION[:N]   at the N-th time (default 1) SITE is reached:
 *                               crash  - raise SIGKILL (nothing is flushed)
 *                               pause  - raise SIGSTOP (a test inspects the
 *                                        segment, then SIGCONTs or kills)
 *   CBD_FAULT_LIST=1            print every site reached (once each) to stderr
 *
 * In every other build CBD_FAULT() is nothing at all. The list of sites is
 * in docs/guarantees.md; tests walk every one of them.
 */
#ifndef CBD_FAULT_H
#define CBD_FAULT_H

#ifdef CBD_FAULT_INJECTION
void cbd_fault(const char *site);
#define CBD_FAULT(site) cbd_fault(site)
#else
#define CBD_FAULT(site) ((void)0)
#endif

#endif /* CBD_FAULT_H */
