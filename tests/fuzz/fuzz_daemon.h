/*
 * fuzz_daemon.h - a real struct cbd for fuzz harnesses: a fresh segment of
 * the harness's own instance per input, the configuration parsed from a
 * file, the daemon's own transition handling (cbd_open), the policy
 * and its timers; a store that accepts everything (stores have their own
 * harnesses), and no socket: harnesses feed the daemon directly.
 */
#ifndef CB_FUZZ_DAEMON_H
#define CB_FUZZ_DAEMON_H

#include "cbd.h"

/* Once, from LLVMFuzzerInitialize: an instance "<tag>-<pid>", a temporary
 * directory with config_text as its cbd.conf (removed at exit). */
void fuzz_daemon_init(const char *tag, const char *config_text);

/* A daemon over a fresh segment; aborts if it cannot be made. */
struct cbd *fuzz_daemon_new(void);

/* Aborts unless the daemon's circuits, the segment's index and the quota
 * counts agree (a removed circuit is not found by name; every other one is
 * found at its own slot). */
void fuzz_daemon_check(struct cbd *d);

void fuzz_daemon_free(struct cbd *d);

#endif /* CB_FUZZ_DAEMON_H */
