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
#include <dirent.h>
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
    add_arg(d, &used, &argc, "%s", o->binary != NULL ? o->binary : tsup_cbd_path());
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

int tsup_daemon_spawn(struct tsup_daemon *d)
{
    if (d->pid != 0)
        return -EBUSY;
    pid_t pid = tsup_spawn(d->argv, d->log);
    if (pid < 0)
        return pid;
    d->pid = pid;
    return 0;
}

int tsup_daemon_restart(struct tsup_daemon *d)
{
    int rc = tsup_daemon_spawn(d);
    return rc < 0 ? rc : wait_ready(d);
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

/* The state letter of a /proc/.../stat file. */
static char proc_state(const char *stat_path)
{
    char buf[512];
    int fd = open(stat_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    const char *paren = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    return paren != NULL && paren[1] == ' ' && paren[2] != '\0' ? paren[2] : '?';
}

char tsup_proc_state(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    return proc_state(path);
}

/* A SIGSTOP sent to pid that no thread has acted on yet: kill() returns
 * before the target stops, and a test may stop a daemon right after. */
static bool stop_pending(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    bool pending = false;
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        unsigned long long mask;
        if ((sscanf(line, "SigPnd: %llx", &mask) == 1 || sscanf(line, "ShdPnd: %llx", &mask) == 1) &&
            (mask & 1ull << (SIGSTOP - 1)) != 0)
            pending = true;
    }
    if (f != NULL)
        fclose(f);
    return pending;
}

/* A small /proc file of a task, without its trailing newline, into buf. */
static const char *proc_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, size - 1);
    if (fd >= 0)
        close(fd);
    buf[n > 0 ? n : 0] = '\0';
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    return n > 0 ? buf : "?";
}

/* Every thread of pid with its state, where it waits in the kernel and,
 * when the kernel shows it, its kernel stack. */
static void dump_tasks(pid_t pid)
{
    char dir[64], path[384], comm[64], wchan[128];
    static char stack[8192];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *tasks = opendir(dir);
    if (tasks == NULL)
        return;
    for (struct dirent *t; (t = readdir(tasks)) != NULL;) {
        if (t->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s/stat", dir, t->d_name);
        char state = proc_state(path); /* 'T' stopped by a signal, 't' by a tracer */
        snprintf(path, sizeof path, "%s/%s/comm", dir, t->d_name);
        proc_text(path, comm, sizeof comm);
        snprintf(path, sizeof path, "%s/%s/wchan", dir, t->d_name);
        proc_text(path, wchan, sizeof wchan);
        snprintf(path, sizeof path, "%s/%s/stack", dir, t->d_name);
        fprintf(stderr, "  thread %s (%s) state %c wchan %s\n%s\n", t->d_name, comm, state, wchan,
                proc_text(path, stack, sizeof stack));
    }
    closedir(tasks);
}

/* Into the test's log: what every thread of a daemon that will not stop is
 * doing - the kernel's view, then gdb's backtraces when gdb is installed. */
static void dump_threads(const struct tsup_daemon *d)
{
    static const char gdb[] = "/usr/bin/gdb";
    char pid[16], *out = NULL;
    snprintf(pid, sizeof pid, "%d", (int)d->pid);
    fprintf(stderr, "tsup: cbd %s (pid %s) still runs %d ms after SIGTERM; its threads:\n", d->instance, pid,
            STOP_TIMEOUT_MS);
    dump_tasks(d->pid);
    if (access(gdb, X_OK) != 0) {
        fprintf(stderr, "tsup: no %s for backtraces\n", gdb);
        return;
    }
    char *argv[] = {"/usr/bin/timeout", "60", (char *)gdb, "-nx", "-batch", "-p", pid, "-ex", "thread apply all bt",
                    NULL};
    int rc = tsup_run(argv, &out, true);
    fprintf(stderr, "tsup: gdb -p %s -batch -ex 'thread apply all bt' (exit %d):\n%s\n", pid, rc, out);
    free(out);
}

/* SIGTERM alone, never followed by SIGCONT: a sanitizer build's
 * LeakSanitizer stops every thread at exit (ptrace's SIGSTOP) to scan them,
 * and a SIGCONT then discards those stops and leaves the process hung. A
 * daemon a test stopped (SIGSTOP: state 'T') acts on SIGTERM only once
 * continued, so it gets its SIGCONT first - after the test's SIGSTOP took
 * effect, since a SIGCONT also discards a pending SIGSTOP, which would then
 * stop the daemon with our SIGTERM pending. */
int tsup_daemon_stop(struct tsup_daemon *d)
{
    if (d->pid == 0)
        return -ESRCH;
    tsup_wait_until(!stop_pending(d->pid), STOP_TIMEOUT_MS);
    if (tsup_proc_state(d->pid) == 'T')
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
        print_log_tail(d, "did not exit on SIGTERM");
        dump_threads(d);
        kill(d->pid, SIGKILL);
        waitpid(d->pid, NULL, 0);
        cr_expect_fail("cbd %s did not exit within %d ms of SIGTERM: its threads are dumped in the test's log, "
                       "then it was killed with SIGKILL", d->instance, STOP_TIMEOUT_MS);
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
