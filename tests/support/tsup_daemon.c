/*
 * tsup_daemon.c - run the real cbd for a test.
 *
 * Each daemon gets a unique instance (so its shm objects are
 * /dev/shm/cbd.<instance>[.lanes]) and a directory <tmpdir>/<instance>
 * holding its socket, its local store and cbd.log, where stderr of every
 * start is appended so a test can grep transitions across restarts.
 *
 * "Ready" means what a worker needs: the state region is published by this
 * very process (header.daemon_pid, then the ready flag, which cbd stores
 * last) and the control socket answers ping. Checking the pid matters on a
 * restart, where the segment left by the previous daemon still says ready.
 *
 * The argument vector is built once and kept in struct tsup_daemon, so a
 * restart runs exactly the same command line, as an init system would.
 * The binary is the cbd built with the tests (CBD_PATH) unless $TSUP_CBD
 * names another one (a sanitizer build, an installed cbd).
 */
#define _GNU_SOURCE
#include "tsup.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define START_TIMEOUT_MS 15000 /* cbd start on a loaded 2-core machine */
#define STOP_TIMEOUT_MS 15000

/* Appends one argument (printf-style) to d's argument vector. */
static void add_arg(struct tsup_daemon *d, size_t *used, int *argc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(d->args + *used, sizeof d->args - *used, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof d->args - *used || *argc >= TSUP_ARGV_MAX - 1)
        cr_assert_fail("tsup: cbd's arguments do not fit in struct tsup_daemon");
    d->argv[(*argc)++] = d->args + *used;
    d->argv[*argc] = NULL;
    *used += (size_t)n + 1;
}

static void add_num(struct tsup_daemon *d, size_t *used, int *argc, const char *opt, uint32_t v)
{
    if (v == 0)
        return;
    add_arg(d, used, argc, "%s", opt);
    add_arg(d, used, argc, "%u", v);
}

static void build_argv(struct tsup_daemon *d, const struct tsup_daemon_opts *o)
{
    size_t used = 0;
    int argc = 0;
    add_arg(d, &used, &argc, "%s", tsup_cbd_path());
    add_arg(d, &used, &argc, "--instance");
    add_arg(d, &used, &argc, "%s", d->instance);
    add_arg(d, &used, &argc, "--socket");
    add_arg(d, &used, &argc, "%s", d->socket);
    add_arg(d, &used, &argc, "--store");
    add_arg(d, &used, &argc, "%s", d->store);
    add_num(d, &used, &argc, "--capacity", o->capacity);
    add_num(d, &used, &argc, "--lanes", o->lanes);
    add_num(d, &used, &argc, "--lane-capacity", o->lane_capacity);
    add_num(d, &used, &argc, "--history-capacity", o->history_capacity);
    add_num(d, &used, &argc, "--heartbeat-ms", o->heartbeat_ms);
    add_num(d, &used, &argc, "--stale-limit-ms", o->stale_limit_ms);
    add_num(d, &used, &argc, "--drain-interval-ms", o->drain_interval_ms);
    add_num(d, &used, &argc, "--reclaim-interval-ms", o->reclaim_interval_ms);
    if (o->stale_policy) {
        add_arg(d, &used, &argc, "--stale-policy");
        add_arg(d, &used, &argc, "%s", o->stale_policy);
    }
    for (int i = 0; i < (int)(sizeof o->extra / sizeof o->extra[0]) && o->extra[i]; i++)
        add_arg(d, &used, &argc, "%s", o->extra[i]);
}

static void print_log_tail(const struct tsup_daemon *d, const char *why)
{
    fprintf(stderr, "tsup: cbd %s %s; the end of %s:\n", d->instance, why, d->log);
    int fd = open(d->log, O_RDONLY);
    if (fd < 0)
        return;
    char buf[4096];
    off_t end = lseek(fd, 0, SEEK_END);
    ssize_t n = pread(fd, buf, sizeof buf - 1, end > (off_t)sizeof buf - 1 ? end - (off_t)sizeof buf + 1 : 0);
    close(fd);
    if (n > 0) {
        buf[n] = '\0';
        fprintf(stderr, "%s\n", buf);
    }
}

/* The segment says this pid published it and is ready. */
static bool segment_ready(const struct tsup_daemon *d)
{
    size_t size;
    struct cb_seg_header *h = tsup_seg_map(d->instance, 0, &size);
    if (h == NULL)
        return false;
    bool ok = size >= sizeof *h &&
              atomic_load_explicit(&h->daemon_pid, memory_order_relaxed) == (uint32_t)d->pid &&
              /* Acquire pairs with cbd's release store of ready (stored last). */
              atomic_load_explicit(&h->ready, memory_order_acquire) == 1;
    munmap(h, size);
    return ok;
}

/* Waits for readiness; fails early if cbd exits. */
static int wait_ready(struct tsup_daemon *d)
{
    struct tsup_deadline dl = tsup_deadline_in(START_TIMEOUT_MS);
    do {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            tsup_untrack(d->pid);
            d->pid = 0;
            print_log_tail(d, WIFEXITED(status) ? "exited during start" : "died during start");
            return -ECHILD;
        }
        if (segment_ready(d) && tsup_ping(d))
            return 0;
    } while (tsup_deadline_wait(&dl));
    print_log_tail(d, "was not ready in time");
    return -ETIMEDOUT;
}

int tsup_daemon_restart(struct tsup_daemon *d)
{
    if (d->pid != 0)
        return -EBUSY;
    pid_t pid = tsup_spawn(d->argv, d->log);
    if (pid < 0)
        return pid;
    d->pid = pid;
    return wait_ready(d);
}

int tsup_daemon_start(struct tsup_daemon *d, const struct tsup_daemon_opts *opts)
{
    static const struct tsup_daemon_opts defaults;
    const struct tsup_daemon_opts *o = opts ? opts : &defaults;
    memset(d, 0, sizeof *d);
    snprintf(d->instance, sizeof d->instance, "%s", tsup_unique(o->tag ? o->tag : "cbd"));
    snprintf(d->dir, sizeof d->dir, "%s/%s", tsup_tmpdir(), d->instance);
    if (mkdir(d->dir, 0700) < 0)
        return -errno;
    if (strlen(d->dir) + sizeof "/ctl.sock" > sizeof d->socket)
        return -ENAMETOOLONG; /* sun_path holds 107 bytes */
    snprintf(d->socket, sizeof d->socket, "%.*s/ctl.sock", (int)(sizeof d->socket - sizeof "/ctl.sock"), d->dir);
    snprintf(d->log, sizeof d->log, "%s/cbd.log", d->dir);
    if (o->store)
        snprintf(d->store, sizeof d->store, "%s", o->store);
    else
        snprintf(d->store, sizeof d->store, "local:%s/state", d->dir);
    build_argv(d, o);
    tsup__track_instance(d->instance);
    return tsup_daemon_restart(d);
}

int tsup_daemon_stop(struct tsup_daemon *d)
{
    if (d->pid == 0)
        return -ESRCH;
    /* SIGCONT first (a stopped daemon acts on SIGTERM only once continued):
     * one that arrives after SIGTERM can hit a sanitized cbd while
     * LeakSanitizer stops the world at exit, which then never ends. */
    kill(d->pid, SIGCONT);
    kill(d->pid, SIGTERM);
    struct tsup_deadline dl = tsup_deadline_in(STOP_TIMEOUT_MS);
    int status = 0, rc = -ETIMEDOUT;
    do {
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            rc = status;
            break;
        }
    } while (tsup_deadline_wait(&dl));
    if (rc == -ETIMEDOUT) {
        print_log_tail(d, "ignored SIGTERM");
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
    }
    tsup_untrack(d->pid);
    d->pid = 0;
    return rc;
}

void tsup_daemon_kill9(struct tsup_daemon *d)
{
    if (d->pid == 0)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    tsup_untrack(d->pid);
    d->pid = 0;
}

int tsup_log_count(const struct tsup_daemon *d, const char *needle)
{
    FILE *f = fopen(d->log, "r");
    if (f == NULL)
        return 0;
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0) {
        if (strstr(line, needle))
            n++;
    }
    free(line);
    fclose(f);
    return n;
}
