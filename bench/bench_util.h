/*
 * bench_util.h - what every benchmark program of bench/ shares: the clock,
 * sleeping, and one measured distribution (median, nearest-rank p99 and
 * 101 quantiles for the plots) with its JSON form. Header-only (static
 * inline) so each program stays one source file.
 */
#ifndef CB_BENCH_UTIL_H
#define CB_BENCH_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define N_QUANT 101 /* quantiles kept per result: 0%, 1%, ..., 100% */

/* One measured distribution: ns per call, or us per trip. */
struct result {
    const char *key, *label, *unit;
    double median, p99, q[N_QUANT];
    int samples;
    int ran;
};

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* CPU seconds (user + system, all threads) process pid has used, from
 * /proc/PID/stat, or -1. */
static inline double proc_cpu_s(pid_t pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces; state is the next field */
    unsigned long long ut, st;
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static inline int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median, nearest-rank p99 and the quantiles of n samples (sorts them). */
static inline void summarise(struct result *r, double *s, int n)
{
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    r->median = n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
    int rank = (99 * n + 99) / 100; /* ceil(0.99 n), nearest rank */
    r->p99 = s[rank - 1];
    for (int i = 0; i < N_QUANT; i++)
        r->q[i] = s[(size_t)i * (size_t)(n - 1) / (N_QUANT - 1)];
    r->samples = n;
    r->ran = 1;
}

static inline void json_result(FILE *f, const struct result *r, bool comma)
{
    fprintf(f, "    \"%s\": {\"label\": \"%s\", \"unit\": \"%s\", \"median\": %.6g, \"p99\": %.6g, \"samples\": %d, "
               "\"quantiles\": [",
            r->key, r->label, r->unit, r->median, r->p99, r->samples);
    for (int i = 0; i < N_QUANT; i++)
        fprintf(f, "%s%.6g", i ? ", " : "", r->q[i]);
    fprintf(f, "]}%s\n", comma ? "," : "");
}

#endif /* CB_BENCH_UTIL_H */
