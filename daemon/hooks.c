/*
 * hooks.c - run operator commands on every transition, off the loop.
 *
 * A hook is a shell command (/bin/sh -c) that gets the transition in its
 * environment:
 *
 *   CB_CIRCUIT CB_FROM CB_TO CB_SOURCE CB_ORIGIN CB_EPOCH CB_FAILURE_COUNT
 *   CB_OPENED_AT (epoch s, 0 when closed) CB_TIME (RFC 3339 UTC)
 *   CB_TIME_NS CB_INSTANCE, and PATH from the daemon.
 *
 * Hooks must never slow the circuits down, so the daemon only queues them:
 * uv_spawn starts the process, its stdout and stderr come back through
 * pipes on the loop and are logged line by line, and a timer kills the
 * whole process group (the child is a session leader: UV_PROCESS_DETACHED)
 * when it outlives its timeout.
 *
 * Starting a hook is uv_spawn, a fork of the daemon: about 1 ms here, more
 * as the daemon's memory grows. So cbd_hooks_fire only queues, and hooks
 * start from an idle callback, after the loop callback that made the
 * transitions has returned: a drain publishes every circuit it trips
 * before any of their hooks starts (twenty circuits tripped by one drain,
 * one hook each: started in the drain, the hooks held back the last
 * circuit's publication by 12-15 ms; now it follows the first by ~100 us).
 * Ordering and isolation: each circuit has its own FIFO queue and at most
 * one running hook, so one circuit's hooks see its transitions in order; a
 * circuit whose hook hangs delays only its own later hooks, and only until
 * the timeout. Circuits with work wait in a ready list for one of
 * max_running slots. A queue that grows past queue_max drops its oldest
 * waiting transition (counted and logged): memory stays bounded even when a
 * circuit flaps faster than its hook runs.
 */
#include "hooks.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "segment.h"

#define HOOK_ENV_COUNT 13
#define HOOK_LINE_MAX 1024
#define HOOK_ENV_MAX 1024 /* bytes per variable: a long $PATH must not be cut */

struct hook_job {
    struct hook_job *next;
    char *command;
    struct cbd_hook_event ev;
};

struct circuit_queue {
    char name[128];
    struct hook_job *head, *tail;
    unsigned waiting;
    bool running, in_ready;
    struct circuit_queue *next_ready;
    struct circuit_queue *next_bucket;
};

struct hook_output {
    uv_pipe_t pipe;
    struct running_hook *owner;
    const char *stream_name; /* "stdout" / "stderr" */
    char line[HOOK_LINE_MAX];
    size_t line_len;
};

struct running_hook {
    uv_process_t proc;
    uv_timer_t timer;
    struct hook_output out, err;
    struct cbd_hooks *hooks;
    struct circuit_queue *queue;
    struct hook_job *job;
    int open_handles;
    bool exited, timed_out;
    int64_t exit_status;
    int term_signal;
    struct running_hook *prev, *next; /* cbd_hooks.running_list */
    char read_buf[4096];
};

#define QUEUE_BUCKETS 256

struct cbd_hooks {
    uv_loop_t *loop;
    char instance[40];
    unsigned max_running, timeout_ms, queue_max, running;
    struct circuit_queue *buckets[QUEUE_BUCKETS];
    struct circuit_queue *ready_head, *ready_tail;
    struct running_hook *running_list; /* spawned and not yet finished */
    uv_idle_t starter;                 /* active while queued hooks wait to be started */
    struct cbd_hooks_stats stats;
    bool closing, starter_closed;
    void (*close_done)(void *);
    void *close_arg;
};

static unsigned bucket_of(const char *name)
{
    unsigned h = 2166136261u;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h % QUEUE_BUCKETS;
}

static struct circuit_queue *queue_get(struct cbd_hooks *h, const char *name, bool create)
{
    unsigned b = bucket_of(name);
    for (struct circuit_queue *q = h->buckets[b]; q; q = q->next_bucket)
        if (strcmp(q->name, name) == 0)
            return q;
    if (!create)
        return NULL;
    struct circuit_queue *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    snprintf(q->name, sizeof q->name, "%s", name);
    q->next_bucket = h->buckets[b];
    h->buckets[b] = q;
    return q;
}

/* A queue with nothing waiting and nothing running is freed. */
static void queue_release_if_idle(struct cbd_hooks *h, struct circuit_queue *q)
{
    if (q->running || q->head || q->in_ready)
        return;
    struct circuit_queue **pp = &h->buckets[bucket_of(q->name)];
    while (*pp != q)
        pp = &(*pp)->next_bucket;
    *pp = q->next_bucket;
    free(q);
}

static void ready_push(struct cbd_hooks *h, struct circuit_queue *q)
{
    if (q->in_ready || q->running || q->head == NULL)
        return;
    q->in_ready = true;
    q->next_ready = NULL;
    if (h->ready_tail)
        h->ready_tail->next_ready = q;
    else
        h->ready_head = q;
    h->ready_tail = q;
}

static struct circuit_queue *ready_pop(struct cbd_hooks *h)
{
    struct circuit_queue *q = h->ready_head;
    if (q) {
        h->ready_head = q->next_ready;
        if (h->ready_head == NULL)
            h->ready_tail = NULL;
        q->in_ready = false;
    }
    return q;
}

static void job_free(struct hook_job *job)
{
    if (job) {
        free(job->command);
        free(job);
    }
}

int cbd_hooks_create(struct cbd_hooks **out, uv_loop_t *loop, const char *instance, unsigned max_running,
                     unsigned timeout_ms, unsigned queue_max)
{
    struct cbd_hooks *h = calloc(1, sizeof *h);
    if (h == NULL)
        return -ENOMEM;
    h->loop = loop;
    int rc = uv_idle_init(loop, &h->starter);
    if (rc < 0) {
        free(h);
        return rc;
    }
    h->starter.data = h;
    snprintf(h->instance, sizeof h->instance, "%s", instance);
    cbd_hooks_set_limits(h, max_running, timeout_ms, queue_max);
    *out = h;
    return 0;
}

void cbd_hooks_set_limits(struct cbd_hooks *h, unsigned max_running, unsigned timeout_ms, unsigned queue_max)
{
    h->max_running = max_running ? max_running : 1;
    h->timeout_ms = timeout_ms ? timeout_ms : 1;
    h->queue_max = queue_max ? queue_max : 1;
}

void cbd_hooks_stats_get(const struct cbd_hooks *h, struct cbd_hooks_stats *out)
{
    *out = h->stats;
}

/* ---- output: logged line by line --------------------------------------- */

static void output_flush_line(struct hook_output *o)
{
    if (o->line_len == 0)
        return;
    struct running_hook *r = o->owner;
    cbd_log(CBD_LOG_INFO, "hook[%d] circuit=%s %s: %.*s", r->proc.pid, r->job->ev.circuit, o->stream_name,
            (int)o->line_len, o->line);
    o->line_len = 0;
}

static void output_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct hook_output *o = handle->data;
    *buf = uv_buf_init(o->owner->read_buf, sizeof o->owner->read_buf);
}

static void running_handle_closed(uv_handle_t *handle);

static void output_read(uv_stream_t *stream, ssize_t n, const uv_buf_t *buf)
{
    struct hook_output *o = stream->data;
    for (ssize_t i = 0; i < n; i++) {
        char c = buf->base[i];
        if (c == '\n' || o->line_len == sizeof o->line) {
            output_flush_line(o);
            if (c == '\n')
                continue;
        }
        o->line[o->line_len++] = c;
    }
    if (n < 0) { /* EOF or error: the child closed its end */
        output_flush_line(o);
        uv_close((uv_handle_t *)stream, running_handle_closed);
    }
}

/* ---- lifecycle of one running hook ---------------------------------------- */

static void pump(struct cbd_hooks *h);
static void maybe_finish_close(struct cbd_hooks *h);

static void running_finish(struct running_hook *r)
{
    struct cbd_hooks *h = r->hooks;
    const struct cbd_hook_event *ev = &r->job->ev;
    if (r->timed_out) {
        h->stats.timed_out++;
        cbd_log(CBD_LOG_WARN, "hook for circuit=%s %s->%s killed after its %u ms timeout: %s", CB_NAME_SHOW(ev->circuit),
                ev->from, ev->to, h->timeout_ms, r->job->command);
    } else if (r->exited && r->exit_status == 0 && r->term_signal == 0) {
        h->stats.succeeded++;
        cbd_log(CBD_LOG_DEBUG, "hook for circuit=%s %s->%s exited 0", CB_NAME_SHOW(ev->circuit), ev->from, ev->to);
    } else if (r->exited) {
        h->stats.failed++;
        cbd_log(CBD_LOG_WARN, "hook for circuit=%s %s->%s failed (%s %lld): %s", CB_NAME_SHOW(ev->circuit), ev->from, ev->to,
                r->term_signal ? "signal" : "exit status",
                (long long)(r->term_signal ? r->term_signal : r->exit_status), r->job->command);
    }
    struct circuit_queue *q = r->queue;
    q->running = false;
    h->running--;
    if (r->prev)
        r->prev->next = r->next;
    else
        h->running_list = r->next;
    if (r->next)
        r->next->prev = r->prev;
    job_free(r->job);
    free(r);
    if (h->closing) {
        while (q->head) {
            struct hook_job *j = q->head;
            q->head = j->next;
            job_free(j);
        }
        q->tail = NULL;
    }
    ready_push(h, q);
    queue_release_if_idle(h, q);
    pump(h);
    maybe_finish_close(h);
}

static void running_handle_closed(uv_handle_t *handle)
{
    /* The process and timer handles point at their hook; the pipes at their
     * hook_output, which points at the hook. */
    struct running_hook *owner = handle->type == UV_NAMED_PIPE ? ((struct hook_output *)handle->data)->owner
                                                               : (struct running_hook *)handle->data;
    if (--owner->open_handles == 0)
        running_finish(owner);
}

static void running_exited(uv_process_t *proc, int64_t status, int term_signal)
{
    struct running_hook *r = proc->data;
    r->exited = true;
    r->exit_status = status;
    r->term_signal = term_signal;
    /* The group may still hold the pipes open (a backgrounded grandchild):
     * the hook is over when its shell is, so kill the rest of the group. */
    kill(-proc->pid, SIGKILL);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, running_handle_closed);
    uv_close((uv_handle_t *)proc, running_handle_closed);
}

static void running_timeout(uv_timer_t *timer)
{
    struct running_hook *r = timer->data;
    r->timed_out = true;
    kill(-r->proc.pid, SIGKILL); /* the whole process group: sh and what it started */
}

static void format_rfc3339(int64_t time_ns, char *buf, size_t len)
{
    time_t s = (time_t)(time_ns / 1000000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03dZ", (int)((time_ns / 1000000) % 1000));
}

/* Fills env (HOOK_ENV_COUNT entries + NULL) from storage. */
static void build_env(const struct cbd_hooks *h, const struct cbd_hook_event *ev, char storage[][HOOK_ENV_MAX],
                      char **env)
{
    char when[40];
    format_rfc3339(ev->time_ns, when, sizeof when);
    const char *path = getenv("PATH");
    int i = 0;
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_CIRCUIT=%s", ev->circuit);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_FROM=%s", ev->from);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_TO=%s", ev->to);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_SOURCE=%s", ev->source);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_ORIGIN=%s", ev->origin ? ev->origin : "local");
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_EPOCH=%u", ev->epoch);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_FAILURE_COUNT=%u", ev->failure_count);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_OPENED_AT=%lld", (long long)ev->opened_at);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_TIME=%s", when);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_TIME_NS=%lld", (long long)ev->time_ns);
    snprintf(storage[i++], HOOK_ENV_MAX, "CB_INSTANCE=%s", h->instance);
    snprintf(storage[i++], HOOK_ENV_MAX, "PATH=%s", path ? path : "/usr/local/bin:/usr/bin:/bin");
    snprintf(storage[i++], HOOK_ENV_MAX, "LANG=C.UTF-8");
    for (int k = 0; k < HOOK_ENV_COUNT; k++)
        env[k] = storage[k];
    env[HOOK_ENV_COUNT] = NULL;
}

static void output_init(struct running_hook *r, struct hook_output *o, const char *name)
{
    uv_pipe_init(r->hooks->loop, &o->pipe, 0);
    o->pipe.data = o;
    o->owner = r;
    o->stream_name = name;
}

static void start(struct cbd_hooks *h, struct circuit_queue *q, struct hook_job *job)
{
    struct running_hook *r = calloc(1, sizeof *r);
    if (r == NULL) {
        h->stats.spawn_errors++;
        cbd_log(CBD_LOG_ERROR, "hook for circuit=%s not run: out of memory", job->ev.circuit);
        job_free(job);
        return;
    }
    r->hooks = h;
    r->queue = q;
    r->job = job;
    output_init(r, &r->out, "stdout");
    output_init(r, &r->err, "stderr");
    uv_timer_init(h->loop, &r->timer);
    r->timer.data = r;
    r->proc.data = r;
    r->open_handles = 4;

    char storage[HOOK_ENV_COUNT][HOOK_ENV_MAX], *env[HOOK_ENV_COUNT + 1];
    build_env(h, &job->ev, storage, env);
    char *args[] = {"/bin/sh", "-c", job->command, NULL};
    uv_stdio_container_t stdio[3] = {
        {.flags = UV_IGNORE},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->out.pipe},
        {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&r->err.pipe},
    };
    uv_process_options_t opts = {
        .exit_cb = running_exited, .file = "/bin/sh", .args = args, .env = env,
        .flags = UV_PROCESS_DETACHED, .stdio_count = 3, .stdio = stdio,
    };
    q->running = true;
    h->running++;
    h->stats.started++;
    r->next = h->running_list;
    if (r->next)
        r->next->prev = r;
    h->running_list = r;
    int rc = uv_spawn(h->loop, &r->proc, &opts);
    if (rc < 0) {
        h->stats.spawn_errors++;
        cbd_log(CBD_LOG_ERROR, "hook for circuit=%s could not start /bin/sh: %s", job->ev.circuit, uv_strerror(rc));
        r->exited = false;
        uv_close((uv_handle_t *)&r->proc, running_handle_closed);
        uv_close((uv_handle_t *)&r->timer, running_handle_closed);
        uv_close((uv_handle_t *)&r->out.pipe, running_handle_closed);
        uv_close((uv_handle_t *)&r->err.pipe, running_handle_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&r->out.pipe, output_alloc, output_read);
    uv_read_start((uv_stream_t *)&r->err.pipe, output_alloc, output_read);
    uv_timer_start(&r->timer, running_timeout, h->timeout_ms, 0);
}

static void pump(struct cbd_hooks *h)
{
    while (!h->closing && h->running < h->max_running) {
        struct circuit_queue *q = ready_pop(h);
        if (q == NULL)
            return;
        struct hook_job *job = q->head;
        if (job == NULL)
            continue;
        q->head = job->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->waiting--;
        start(h, q, job);
    }
}

static void on_starter(uv_idle_t *idle)
{
    uv_idle_stop(idle);
    pump(idle->data);
}

void cbd_hooks_fire(struct cbd_hooks *h, const char *command, const struct cbd_hook_event *ev)
{
    if (h->closing || command == NULL || command[0] == '\0')
        return;
    struct circuit_queue *q = queue_get(h, ev->circuit, true);
    struct hook_job *job = calloc(1, sizeof *job);
    char *cmd = strdup(command);
    if (q == NULL || job == NULL || cmd == NULL) {
        free(job);
        free(cmd);
        h->stats.dropped++;
        cbd_log(CBD_LOG_ERROR, "hook for circuit=%s dropped: out of memory", CB_NAME_SHOW(ev->circuit));
        return;
    }
    job->command = cmd;
    job->ev = *ev;
    if (q->waiting >= h->queue_max) {
        struct hook_job *oldest = q->head;
        q->head = oldest->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->waiting--;
        h->stats.dropped++;
        cbd_log(CBD_LOG_WARN, "hook queue of circuit=%s full (%u waiting): dropped the %s->%s hook (epoch %u)",
                CB_NAME_SHOW(ev->circuit), h->queue_max, oldest->ev.from, oldest->ev.to, oldest->ev.epoch);
        job_free(oldest);
    }
    if (q->tail)
        q->tail->next = job;
    else
        q->head = job;
    q->tail = job;
    q->waiting++;
    ready_push(h, q);
    uv_idle_start(&h->starter, on_starter); /* no-op when already active */
}

static void maybe_finish_close(struct cbd_hooks *h)
{
    if (!h->closing || h->running > 0 || !h->starter_closed || h->close_done == NULL)
        return;
    void (*done)(void *) = h->close_done;
    void *arg = h->close_arg;
    h->close_done = NULL;
    free(h);
    done(arg);
}

static void on_starter_closed(uv_handle_t *handle)
{
    struct cbd_hooks *h = handle->data;
    h->starter_closed = true;
    maybe_finish_close(h);
}

void cbd_hooks_close(struct cbd_hooks *h, void (*done)(void *arg), void *arg)
{
    h->closing = true;
    h->close_done = done;
    h->close_arg = arg;
    uv_close((uv_handle_t *)&h->starter, on_starter_closed);
    /* Drop what waits; kill what runs (their exit callbacks finish them). */
    struct circuit_queue *q;
    while ((q = ready_pop(h)) != NULL) {
        while (q->head) {
            struct hook_job *j = q->head;
            q->head = j->next;
            job_free(j);
        }
        q->tail = NULL;
        q->waiting = 0;
        queue_release_if_idle(h, q);
    }
    for (struct running_hook *r = h->running_list; r; r = r->next)
        if (!r->exited)
            kill(-r->proc.pid, SIGKILL); /* their exit callbacks finish them */
    maybe_finish_close(h);
}
