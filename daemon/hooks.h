/*
 * hooks.h - transition hook commands, run off the loop.
 */
#ifndef CBD_HOOKS_H
#define CBD_HOOKS_H

#include <stdint.h>
#include <uv.h>

#include "metrics_text.h" /* struct cbd_hooks_stats */

/* What a hook is told about one transition (copied; the caller keeps nothing). */
struct cbd_hook_event {
    char circuit[128];
    const char *from, *to, *source; /* static strings: "CLOSED", "local", ... */
    const char *origin;             /* "local": it started on this host; "fleet": on another host
                                     * (or a Powertools function), through the store */
    int64_t opened_at;              /* epoch seconds, 0 when closed */
    uint32_t failure_count;
    uint32_t epoch;
    int64_t time_ns;                /* CLOCK_REALTIME of the transition */
};

struct cbd_hooks;

/* max_running: hooks running at once across all circuits (1..1024);
 * timeout_ms: a hook still running after this is killed (SIGKILL to its
 * process group); queue_max: transitions waiting per circuit before the
 * oldest waiting one is dropped (counted and logged). instance goes into
 * CB_INSTANCE. Returns 0 or a negative errno. */
int cbd_hooks_create(struct cbd_hooks **out, uv_loop_t *loop, const char *instance, unsigned max_running,
                     unsigned timeout_ms, unsigned queue_max);
/* Limits may change on reload; running hooks keep their old timeout. */
void cbd_hooks_set_limits(struct cbd_hooks *h, unsigned max_running, unsigned timeout_ms, unsigned queue_max);
/* Queue `command` (run with /bin/sh -c) for ev. Never blocks, never starts
 * a hook itself: queued hooks start on the loop's next idle turn, after the
 * caller's callback has returned. Hooks of one circuit run one at a time in
 * transition order, hooks of different circuits run concurrently up to
 * max_running. */
void cbd_hooks_fire(struct cbd_hooks *h, const char *command, const struct cbd_hook_event *ev);
void cbd_hooks_stats_get(const struct cbd_hooks *h, struct cbd_hooks_stats *out);
/* Kill what runs, drop what waits, close handles; done(arg) once all closed. */
void cbd_hooks_close(struct cbd_hooks *h, void (*done)(void *arg), void *arg);

#endif
