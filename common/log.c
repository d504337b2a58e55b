/*
 * log.c - levelled log lines on stderr (see log.h).
 *
 * Design: format into a stack buffer (time, pid, level, message, newline)
 * and emit it with one write(2) to fd 2. No stdio buffering means a line is
 * out before a crash, and one write per line keeps lines whole when the
 * doorbell thread and the loop both log. Lines longer than the buffer are
 * truncated (with a trailing "...") rather than split.
 *
 * Time is CLOCK_REALTIME in UTC with milliseconds, the format operators
 * grep and journald shows next to its own stamps.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int cbd_log_threshold = CBD_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const level_tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};

int cbd_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    }
    return -EINVAL;
}

const char *cbd_log_level_name(int level)
{
    return (level >= CBD_LOG_DEBUG && level <= CBD_LOG_ERROR) ? level_names[level] : "?";
}

void cbd_log_write(int level, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ cbd[%d] %s ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     (int)getpid(), level_tags[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (size_t)(m < 0 ? 0 : m);
    if (len > sizeof line - 2) { /* truncated: mark it, keep the newline */
        len = sizeof line - 2;
        memcpy(line + len - 3, "...", 3);
    }
    line[len++] = '\n';
    /* One write per line; a failed or short write to stderr has nowhere to
     * be reported, so it is dropped. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

int cbd_ratelimit_pass(struct cbd_ratelimit *rl, uint64_t *suppressed)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (rl->last_ns != 0 && now - rl->last_ns < 1000000000u) {
        rl->suppressed++;
        return 0;
    }
    rl->last_ns = now;
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    return 1;
}
