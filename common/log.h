/*
 * log.h - cbd's levelled log lines on stderr.
 *
 * cbd_log(level, fmt, ...) checks the level before it formats anything, so
 * a debug line costs one compare when debug is off. Every line is
 *
 *     2026-11-27T10:50:21.123Z cbd[PID] INFO message
 *
 * written with a single write(2), so lines from the loop and the doorbell
 * thread never interleave mid-line. The threshold is process-wide (one
 * daemon per process; systemd/journald or the test harness captures stderr).
 */
#ifndef CBD_LOG_H
#define CBD_LOG_H

#include <stdint.h>

enum cbd_log_level { CBD_LOG_DEBUG = 0, CBD_LOG_INFO, CBD_LOG_WARN, CBD_LOG_ERROR };

/* Lines below this level are dropped before formatting. */
extern int cbd_log_threshold;

#define cbd_log(level, ...)                          \
    do {                                             \
        if ((int)(level) >= cbd_log_threshold)       \
            cbd_log_write((level), __VA_ARGS__);     \
    } while (0)

void cbd_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "debug", "info", "warn", "error" -> level, else -EINVAL. */
int cbd_log_level_parse(const char *name);
const char *cbd_log_level_name(int level);

/*
 * A rate limit for warnings a misbehaving peer could trigger in a loop
 * (garbage lane events, connection floods): at most one line per second;
 * the next line that passes reports how many were suppressed.
 */
struct cbd_ratelimit {
    uint64_t last_ns;     /* CLOCK_MONOTONIC of the last line let through */
    uint64_t suppressed;  /* lines dropped since then */
};
/* 1 if a line may be logged now (and *suppressed gets the count dropped
 * before it), 0 if it must be dropped. */
int cbd_ratelimit_pass(struct cbd_ratelimit *rl, uint64_t *suppressed);

#endif /* CBD_LOG_H */
