/*
 * store_local.c - the embedded default store: one JSON state file per
 * instance, so registrations and open circuits survive a daemon restart and
 * a host reboot with no external service.
 *
 * URI "local:PATH", PATH absolute and naming a file; uri_path() is the one
 * parser of it, so check_uri() (cbd --check-config) accepts exactly what
 * create() accepts. The file:
 *
 *   {"format":"cbd-state","version":1,"written_at":<epoch s>,"circuits":[
 *   {"name":"payments","state":"OPEN","failure_count":5,"opened_at":1764240000,
 *    "opened_at_ns":1764240000123456789,"open_until_ns":1764240095000000000,"config":{...}},
 *   {"name":"search","state":"CLOSED","failure_count":0,"opened_at":0,"config":{...}}
 *   ]}
 *
 * "open_until_ns" (an OPEN circuit's end when backoff made it later than
 * opened_at + recovery_timeout_ms) is written only when set, so lines
 * without it keep the bytes earlier versions wrote, and their files load
 * unchanged (absent: the recovery timeout alone).
 *
 * One circuit per line, so an operator can grep and diff it; "config" holds
 * the policy fields of cb_config by name (CB_POLICY_FIELDS in cb.h): the
 * first five (Powertools' rules) always, the later ones (rate windows,
 * slow calls, backoff, shadow) only when they differ from their default, so
 * a circuit that uses none of them has the line earlier versions wrote. A
 * field the file leaves out reads as its default.
 *
 * The model. Memory is the budget here (10,000 circuits must fit the
 * daemon in 32 MiB with the segment), so each tracked circuit is one small
 * struct circuit (its line's fields and its name: ~80 bytes) in an array in
 * file order (first tracked first), found by name through an open-addressing
 * index of positions (cb__name_hash, linear probing, at most half full).
 * Both double as they grow. untrack() (a circuit removed by an operator or
 * expired) moves the last circuit into the freed position and deletes the
 * index entry by backward shift. track(), untrack() and transition()
 * update the model on the loop; a call that
 * changes no field (the daemon re-registering a restored circuit, say) does
 * not write. There is no JSON tree between writes: the text is printed
 * from the structs when a write is due, in the bytes jansson's compact dump
 * gave earlier versions, so the peak of a write is the model plus its text.
 *
 * Writes are atomic and off the loop. A change marks the store dirty and
 * arms a 0 ms timer, so a burst of transitions in one drain costs one write.
 * The timer prints the model to text on the loop (O(circuits): tens of
 * microseconds for hundreds of circuits, a few ms for tens of thousands - the
 * price of never sharing the model with a thread) and hands the text to
 * uv_queue_work, which writes PATH.tmp.<pid>, fsyncs it, renames it over
 * PATH and fsyncs the directory: a crash leaves the old file or the new one,
 * never a mix. At most one write is in flight; changes during a write leave
 * the store dirty and exactly one more write follows with the newest state,
 * so writes grow with fsync latency, never with the transition rate. Nor
 * may printing take the loop: a write starts no sooner after the previous
 * print ended than nine times that print took (PRINT_SHARE), so under a
 * storm of registrations with 100,000 circuits the loop spends at most a
 * tenth of its time printing and answers the rest of the time; the file
 * then lags by at most ten print times (capped at MAX_SPACING_MS). A failed
 * write reports hooks->health(online = false) with the step and errno, keeps
 * the store dirty and retries every second; the first success reports
 * online again. Temporary files of dead earlier daemons are removed at
 * restore.
 *
 * restore() reads the file synchronously and calls done() before it
 * returns: it runs once, before READY, and reading one small file at start
 * costs less than a thread hand-off would save. It creates PATH's directory
 * (0750, not its parents) if missing. A missing file is an empty store
 * (rc 0). Every field is checked (names by cb__name_check, configs by
 * cb__config_check, states, ranges); an invalid entry is skipped, counted and
 * named (file, index, circuit, field); each valid one goes to hooks->remote.
 * A file that is not a cbd state file (or of another version, or too big)
 * gives rc -EBADMSG and an empty start. Nothing read is lost: when restore
 * skipped anything, the file stays untouched until cbd next writes, and that
 * write first moves it to PATH.bad.<epoch s>. The file is parsed whole
 * into a jansson tree (~1.5 KiB a circuit: restore's peak, ~15 MiB for
 * 10,000), freed and handed back to the kernel with malloc_trim() before
 * READY. A write needs no trim: its text is one block, large enough that
 * glibc maps it and unmaps it when freed (trimming there measured ~20 KiB).
 *
 * Messages. The store contract carries no log hook, so restore's findings
 * (a bad file, skipped entries) reach the daemon's log through
 * hooks->health with online = true: the store works, the text is the news.
 *
 * The fleet calls are trivial on one host: try_probe() grants the lease
 * (now + lease_s) from a 0 ms timer, so the answer never runs inside the
 * call that asked for it; sync() has nothing to reconcile; transition() has
 * no one to compare against (this daemon is the file's only writer).
 *
 * close() drops unanswered probe requests, waits for a write in flight,
 * makes one last write if anything is dirty (a failure is reported, not
 * retried: the daemon is stopping), closes its timers, frees the store and
 * then calls done(). The store must not be used after close().
 */
#include "segment.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_FORMAT "cbd-state"
#define STATE_VERSION 1
#define RETRY_MS 1000                /* between attempts after a failed write ("every second") */
#define PRINT_SHARE 10               /* a print takes at most 1/PRINT_SHARE of the loop's time */
#define MAX_SPACING_MS 1000          /* the longest wait for a write that printing's share imposes */
#define STATE_FILE_MAX (64u << 20)   /* bytes restore() parses: ~200k circuits */
#define OPENED_AT_MAX CB_TIME_MAX_S /* times convert to int64 ns (segment.h) */
#define NOTICES_MAX 16               /* named skipped entries per restore; the rest are counted */
#define PATH_ROOM 64                 /* bytes kept free in PATH_MAX for ".tmp.<pid>", ".bad.<time>" */
#define INDEX_MIN 64                 /* slots of an empty store's name index */
#define TEXT_PER_CIRCUIT 256         /* bytes a line takes with a name of up to ~60 bytes (longer ones grow the text) */

/* A circuit as its line in the file says it. */
struct circuit_line {
    int64_t opened_at;
    int64_t opened_at_ns; /* the same opening at full precision; 0 if unknown (older files) */
    int64_t open_until_ns; /* OPEN: the end of its wait (backoff); 0: opened_at + recovery timeout */
    uint32_t failure_count;
    uint8_t state;      /* cb_state */
    bool has_config;
    cb_config config;   /* when has_config: the file's five fields, reserved[] zero */
};

/* One tracked circuit: ~50 bytes plus its name. */
struct circuit {
    struct circuit_line line;
    bool from_file;     /* restore() read it: another entry of this name in the file is a duplicate */
    char name[];        /* passed cb__name_check */
};

/* A probe lease waiting for the next loop turn. */
struct grant {
    struct grant *next;
    int64_t opened_at;
    uint32_t lease_s;
    char name[CB_NAME_MAX + 1];
};

/* One write, owned by the thread pool between queue and after_work. libuv's
 * queue lock orders the loop's stores to the job before write_work and
 * write_work's stores before write_after: no other synchronisation needed. */
struct write_job {
    uv_work_t req;
    struct cbd_store *s;       /* off the loop only its paths are read; they never change */
    char *text;                /* the snapshot, serialised on the loop */
    size_t len;
    bool keep_bad;             /* move the file restore skipped data of aside first */
    bool moved_bad;            /* it did (even if a later step failed) */
    int err;                   /* 0, or errno of the step that failed */
    const char *step;
};

struct cbd_store {
    struct cbd_store_hooks hooks;
    struct circuit **circuits; /* in file order: first tracked first */
    uint32_t count, list_cap;  /* circuits used, allocated */
    uint32_t *index;           /* by name: position in circuits + 1, 0 = free; at most half full */
    uint32_t index_mask;       /* index has index_mask + 1 slots, a power of two */
    char path[PATH_MAX - PATH_ROOM], dir_path[PATH_MAX - PATH_ROOM];
    char tmp_path[PATH_MAX], bad_path[PATH_MAX]; /* PATH.tmp.<pid>, PATH.bad.<time> */
    const char *base_name;     /* PATH's last component, inside path[] */
    uv_timer_t write_timer;    /* coalesce a burst (after the print spacing); RETRY_MS: after a failure */
    uint64_t print_ended_ns;   /* uv_hrtime when the last print of the file ended */
    uint64_t print_ns;         /* how long it took */
    uint64_t writes, print_ns_total; /* for stats */
    uv_timer_t grant_timer;    /* 0 ms: answer try_probe on a later turn */
    struct grant *grants, **grants_tail;
    bool restored;             /* restore() ran: the file may be replaced */
    bool dirty;                /* the model differs from the file */
    bool writing;              /* a write_job is in flight */
    bool keep_bad;             /* the next write first renames PATH to bad_path */
    bool online;               /* the last write reached the disk */
    int last_err;              /* errno of the last reported failure */
    bool closing, final_write, handles_closing;
    int open_handles;
    void (*close_done)(void *arg);
    void *close_arg;
};

/* The config's fields in the file, in file order: these always, the rest
 * when not at their default. */
#define FIELDS_ALWAYS_WRITTEN (CB_FIELD_probe_lease_ms + 1)
/* "config" holds the policy fields of cb.h (CB_POLICY_FIELDS), by name. */

/* A message for the daemon's log; see "Messages" above. */
__attribute__((format(printf, 2, 3))) static void notice(struct cbd_store *s, const char *fmt, ...)
{
    char msg[PATH_MAX * 2 + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->hooks.health(s->hooks.arg, s->online, msg);
}

/* ---- the model ------------------------------------------------------------ */

static void schedule_write(struct cbd_store *s);

/* Two views of a circuit are the same line of the file. config's unused
 * fields are zero (config_copy), so comparing its bytes compares the file's. */
static bool same_line(const struct circuit_line *a, const struct circuit_line *b)
{
    return a->state == b->state && a->failure_count == b->failure_count && a->opened_at == b->opened_at &&
           a->opened_at_ns == b->opened_at_ns && a->open_until_ns == b->open_until_ns &&
           a->has_config == b->has_config && (!a->has_config || memcmp(&a->config, &b->config, sizeof a->config) == 0);
}

/* The fields the file holds, nothing else (reserved stays zero). */
static cb_config config_copy(const cb_config *cfg)
{
    cb_config c = {0};
    for (size_t i = 0; i < CB_POLICY_NFIELDS; i++)
        *cb__config_field(&c, i) = *cb__config_field((cb_config *)cfg, i);
    return c;
}

/* The index slot holding name, or the free slot where it would go. The table
 * is never more than half full, so the probe ends. */
static uint32_t *index_slot(const struct cbd_store *s, const char *name)
{
    size_t i = cb__name_hash(name, strlen(name)) & s->index_mask;
    while (s->index[i] != 0 && strcmp(s->circuits[s->index[i] - 1]->name, name) != 0)
        i = (i + 1) & s->index_mask;
    return &s->index[i];
}

static struct circuit *model_get(const struct cbd_store *s, const char *name)
{
    uint32_t pos = *index_slot(s, name);
    return pos != 0 ? s->circuits[pos - 1] : NULL;
}

/* Room for one more circuit: the list grows by doubling, the index doubles
 * (and is rebuilt) before it is half full. 0 or -ENOMEM. */
static int model_reserve(struct cbd_store *s)
{
    if (s->count == s->list_cap) {
        uint32_t cap = s->list_cap ? s->list_cap * 2 : 64;
        struct circuit **list = cap > s->list_cap ? realloc(s->circuits, cap * sizeof *list) : NULL;
        if (list == NULL)
            return -ENOMEM;
        s->circuits = list;
        s->list_cap = cap;
    }
    if ((size_t)(s->count + 1) * 2 <= (size_t)s->index_mask + 1)
        return 0;
    size_t slots = ((size_t)s->index_mask + 1) * 2;
    uint32_t *index = slots <= UINT32_MAX ? calloc(slots, sizeof *index) : NULL;
    if (index == NULL)
        return -ENOMEM;
    free(s->index);
    s->index = index;
    s->index_mask = (uint32_t)(slots - 1);
    for (uint32_t pos = 0; pos < s->count; pos++)
        *index_slot(s, s->circuits[pos]->name) = pos + 1;
    return 0;
}

/* Append name (not in the model) with line; NULL (and said) when out of memory. */
static struct circuit *model_add(struct cbd_store *s, const char *name, const struct circuit_line *line)
{
    size_t len = strlen(name);
    struct circuit *c = model_reserve(s) == 0 ? malloc(offsetof(struct circuit, name) + len + 1) : NULL;
    if (c == NULL) {
        notice(s, "out of memory: circuit '%s' not saved to state file %s", name, s->path);
        return NULL;
    }
    c->line = *line;
    c->from_file = false;
    memcpy(c->name, name, len + 1);
    s->circuits[s->count++] = c;
    *index_slot(s, name) = s->count;
    return c;
}

/* Make line the model's view of name; a real change schedules a write. */
static void model_put(struct cbd_store *s, const char *name, const struct circuit_line *line)
{
    struct circuit *c = model_get(s, name);
    if (c != NULL && same_line(&c->line, line))
        return;
    if (c != NULL)
        c->line = *line;
    else if (model_add(s, name, line) == NULL)
        return;
    s->dirty = true;
    schedule_write(s);
}

/* Takes name out of the model: its index entry by backward-shift deletion
 * (linear probing needs no tombstones), its list position by the last
 * circuit, which moves into it (and so to that line of the file). */
static void model_remove(struct cbd_store *s, const char *name)
{
    uint32_t *slot = index_slot(s, name);
    uint32_t pos = *slot;
    if (pos == 0)
        return;
    size_t hole = (size_t)(slot - s->index);
    for (size_t j = (hole + 1) & s->index_mask; s->index[j] != 0; j = (j + 1) & s->index_mask) {
        const char *moved = s->circuits[s->index[j] - 1]->name;
        size_t home = cb__name_hash(moved, strlen(moved)) & s->index_mask;
        /* The entry at j may fill the hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            s->index[hole] = s->index[j];
            hole = j;
        }
    }
    s->index[hole] = 0;
    free(s->circuits[pos - 1]);
    if (pos != s->count) {
        s->circuits[pos - 1] = s->circuits[s->count - 1];
        *index_slot(s, s->circuits[pos - 1]->name) = pos;
    }
    s->count--;
    s->dirty = true;
    schedule_write(s);
}

static void local_untrack(struct cbd_store *s, const char *name)
{
    model_remove(s, name);
}

static void model_free(struct cbd_store *s)
{
    for (uint32_t pos = 0; pos < s->count; pos++)
        free(s->circuits[pos]);
    free(s->circuits);
    free(s->index);
}

static void local_track(struct cbd_store *s, const char *name, const cb_config *cfg)
{
    /* The daemon validated both; checking again keeps the file restorable. */
    if (cb__name_check(name) != 0 || cb__config_check(cfg, NULL) != 0)
        return;
    const struct circuit *old = model_get(s, name);
    struct circuit_line line = old ? old->line : (struct circuit_line){.state = CB_CLOSED};
    line.has_config = true;
    line.config = config_copy(cfg);
    model_put(s, name, &line);
}

static void local_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev_opened_at)
{
    (void)prev_opened_at; /* this daemon is the file's only writer: nothing to compare */
    if (cb__name_check(st->name) != 0 || (unsigned)st->state > CB_HALF_OPEN)
        return;
    const struct circuit *old = model_get(s, st->name);
    struct circuit_line line = {.state = (uint8_t)st->state, .failure_count = st->failure_count,
                                .opened_at = st->opened_at, .opened_at_ns = st->opened_at_ns,
                                .open_until_ns = st->state == CB_OPEN ? st->open_until_ns : 0};
    if (st->has_config || (old != NULL && old->line.has_config)) {
        line.has_config = true;
        line.config = config_copy(st->has_config ? &st->config : &old->line.config);
    }
    model_put(s, st->name, &line);
}

/* A growing text buffer; a failed allocation sticks in oom. */
struct text {
    char *p;
    size_t len, cap;
    bool oom;
};

/* Room for n more bytes and the NUL. */
static bool text_reserve(struct text *t, size_t n)
{
    if (!t->oom && t->len + n + 1 > t->cap) {
        size_t cap = t->cap * 2 > t->len + n + 1 ? t->cap * 2 : t->len + n + 1;
        char *p = realloc(t->p, cap);
        t->oom = p == NULL;
        t->p = p ? p : t->p;
        t->cap = p ? cap : t->cap;
    }
    return !t->oom;
}

__attribute__((format(printf, 2, 3))) static void text_printf(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = t->oom ? -1 : vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n >= t->cap - t->len && text_reserve(t, (size_t)n)) {
        va_start(ap, fmt);
        vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
    }
    t->len += n >= 0 && !t->oom ? (size_t)n : 0;
}

/* s as a JSON string, escaped as jansson escapes it: '"', '\\' and control
 * characters; every name in the model is valid UTF-8 (cb__name_check), so
 * the rest goes as it is. */
static void text_json_string(struct text *t, const char *s)
{
    text_printf(t, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            text_printf(t, "\\%c", *p);
        else if (*p < 0x20)
            text_printf(t, "\\u%04x", *p);
        else
            text_printf(t, "%c", *p);
    }
    text_printf(t, "\"");
}

/* One circuit's line, in the byte layout jansson's JSON_COMPACT gave it (so
 * files stay diffable across versions). */
static void circuit_text(struct text *t, const struct circuit *c)
{
    const struct circuit_line *l = &c->line;
    text_printf(t, "{\"name\":");
    text_json_string(t, c->name);
    text_printf(t, ",\"state\":\"%s\",\"failure_count\":%" PRIu32 ",\"opened_at\":%" PRId64,
                cb__state_name(l->state), l->failure_count, l->opened_at);
    if (l->opened_at_ns != 0)
        text_printf(t, ",\"opened_at_ns\":%" PRId64, l->opened_at_ns);
    if (l->open_until_ns != 0)
        text_printf(t, ",\"open_until_ns\":%" PRId64, l->open_until_ns);
    for (size_t i = 0; l->has_config && i < CB_POLICY_NFIELDS; i++) {
        uint32_t v = *cb__config_field((cb_config *)&l->config, i);
        if (i >= FIELDS_ALWAYS_WRITTEN && v == cb__policy_fields[i].def)
            continue;
        text_printf(t, "%s\"%s\":%" PRIu32, i == 0 ? ",\"config\":{" : ",", cb__policy_fields[i].name, v);
    }
    text_printf(t, "%s", l->has_config ? "}}" : "}");
}

/* The whole file's text, one circuit per line (greppable, diffable), or
 * NULL when out of memory. Sized up front for typical names, so a write
 * usually costs one allocation: the text itself. */
static char *snapshot_text(const struct cbd_store *s)
{
    struct text t = {0};
    text_reserve(&t, 128 + (size_t)s->count * TEXT_PER_CIRCUIT);
    text_printf(&t, "{\"format\":\"%s\",\"version\":%d,\"written_at\":%lld,\"circuits\":[", STATE_FORMAT,
                STATE_VERSION, (long long)time(NULL));
    for (uint32_t pos = 0; pos < s->count; pos++) {
        text_printf(&t, "%s", pos == 0 ? "\n" : ",\n");
        circuit_text(&t, s->circuits[pos]);
    }
    text_printf(&t, "\n]}\n");
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    return t.p;
}

/* ---- writing, on the thread pool ------------------------------------------ */

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int err = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return err;
}

/* Sets j->step and returns errno of the first step that fails, else 0. */
static int write_steps(struct write_job *j)
{
    const struct cbd_store *s = j->s;
    j->step = "creating the temporary file";
    int fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno;
    j->step = "writing the temporary file";
    int err = write_all(fd, j->text, j->len);
    if (err == 0) {
        j->step = "syncing the temporary file";
        err = fsync(fd) == 0 ? 0 : errno;
    }
    if (close(fd) != 0 && err == 0)
        err = errno;
    if (err != 0)
        return err;
    j->step = "moving the previous state file aside";
    if (j->keep_bad && rename(s->path, s->bad_path) != 0 && errno != ENOENT)
        return errno;
    j->moved_bad = j->keep_bad; /* done (or gone already): never again, it would clobber bad_path */
    j->step = "renaming the temporary file over it";
    if (rename(s->tmp_path, s->path) != 0)
        return errno;
    j->step = "syncing its directory";
    return fsync_dir(s->dir_path);
}

static void write_work(uv_work_t *req)
{
    struct write_job *j = req->data;
    j->err = write_steps(j);
    if (j->err != 0)
        unlink(j->s->tmp_path); /* a failed write leaves nothing behind */
}

/* ---- writing, on the loop --------------------------------------------------- */

static void close_step(struct cbd_store *s);
static void on_write_timer(uv_timer_t *t);

/* Account for the end of a write (err 0: done) and decide what comes next. */
static void write_done(struct cbd_store *s, int err, const char *step, bool moved_bad)
{
    if (err != 0) {
        s->dirty = true;
        if (s->online || err != s->last_err) {
            s->online = false;
            s->last_err = err;
            notice(s, "writing state file %s failed while %s: %s; %s", s->path, step, strerror(err),
                   s->closing ? "giving up, cbd is stopping" : "retrying every second");
        }
    }
    if (moved_bad) {
        s->keep_bad = false;
        notice(s, "kept the previous state file %s as %s", s->path, s->bad_path);
    }
    if (err == 0 && !s->online) {
        s->online = true;
        s->last_err = 0;
        notice(s, "writing state file %s works again", s->path);
    }
    if (s->closing)
        close_step(s);
    else if (err != 0)
        uv_timer_start(&s->write_timer, on_write_timer, RETRY_MS, 0);
    else
        schedule_write(s);
}

static void write_after(uv_work_t *req, int status)
{
    struct write_job *j = req->data;
    struct cbd_store *s = j->s;
    int err = status < 0 ? -status : j->err; /* status: UV_ECANCELED only */
    const char *step = status < 0 ? "waiting for a worker thread" : j->step;
    bool moved_bad = j->moved_bad;
    free(j->text);
    free(j);
    s->writing = false;
    write_done(s, err, step, moved_bad);
}

static void start_write(struct cbd_store *s)
{
    struct write_job *j = calloc(1, sizeof *j);
    uint64_t t0 = uv_hrtime();
    char *text = snapshot_text(s);
    s->print_ended_ns = uv_hrtime();
    s->print_ns = s->print_ended_ns - t0;
    s->print_ns_total += s->print_ns;
    s->writes++;
    if (j == NULL || text == NULL) {
        free(j);
        free(text);
        write_done(s, ENOMEM, "serialising the circuits", false);
        return;
    }
    *j = (struct write_job){.req.data = j, .s = s, .text = text, .len = strlen(text), .keep_bad = s->keep_bad};
    s->dirty = false;
    s->writing = true;
    uv_queue_work(s->hooks.loop, &j->req, write_work, write_after); /* fails only without a work_cb */
}

static void on_write_timer(uv_timer_t *t)
{
    start_write(t->data);
}

/* Write soon - on the next loop turn, or once printing's share of the
 * loop allows (see the design comment) - unless a write or a retry is
 * already on its way (it will see dirty) or the file has not been read yet
 * (it would be lost). */
static void schedule_write(struct cbd_store *s)
{
    if (!s->dirty || !s->restored || s->writing || s->closing || uv_is_active((uv_handle_t *)&s->write_timer))
        return;
    uint64_t next = s->print_ended_ns + (PRINT_SHARE - 1) * s->print_ns, now = uv_hrtime();
    uint64_t wait_ms = next > now ? (next - now + 999999) / 1000000 : 0;
    uv_timer_start(&s->write_timer, on_write_timer, wait_ms < MAX_SPACING_MS ? wait_ms : MAX_SPACING_MS, 0);
}

static void local_stats(const struct cbd_store *s, void (*emit)(void *arg, const char *name, uint64_t value),
                        void *arg)
{
    emit(arg, "writes", s->writes);
    emit(arg, "print_us_total", s->print_ns_total / 1000); /* the loop's time spent printing the file */
    emit(arg, "circuits", s->count);
}

/* ---- restore ---------------------------------------------------------------- */

static int ensure_dir(struct cbd_store *s)
{
    struct stat st;
    if (mkdir(s->dir_path, 0750) == 0 || (errno == EEXIST && stat(s->dir_path, &st) == 0 && S_ISDIR(st.st_mode)))
        return 0;
    int err = errno == EEXIST ? ENOTDIR : errno;
    notice(s, "cannot create state directory %s: %s", s->dir_path, strerror(err));
    return -err;
}

/* Remove PATH.tmp.<pid> files that daemons killed mid-write left behind. */
static void remove_stale_tmp(const struct cbd_store *s)
{
    DIR *d = opendir(s->dir_path);
    size_t base_len = strlen(s->base_name);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, s->base_name, base_len) != 0 || strncmp(e->d_name + base_len, ".tmp.", 5) != 0)
            continue;
        char *end;
        long pid = strtol(e->d_name + base_len + 5, &end, 10);
        if (*end == '\0' && pid > 0 && pid != getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    if (d != NULL)
        closedir(d);
}

/* Fill why for the operator; returns -EINVAL for the caller to pass on. */
__attribute__((format(printf, 3, 4))) static int invalid(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* obj[key] as an integer in [min, max], else -EINVAL with why filled. */
static int int_field(const json_t *obj, const char *prefix, const char *key, long long min, long long max,
                     long long *out, char *why, size_t n)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return invalid(why, n, "%s%s must be an integer in %lld..%lld", prefix, key, min, max);
    *out = json_integer_value(v);
    return 0;
}

static int parse_config(const json_t *c, cb_config *cfg, char *why, size_t n)
{
    const char *bad;
    long long v;
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(c))
        return invalid(why, n, "config must be an object");
    for (size_t i = 0; i < CB_POLICY_NFIELDS; i++) {
        if (i >= FIELDS_ALWAYS_WRITTEN && json_object_get(c, cb__policy_fields[i].name) == NULL)
            v = cb__policy_fields[i].def; /* left out at its default (or by an earlier version) */
        else if (int_field(c, "config.", cb__policy_fields[i].name, 0, UINT32_MAX, &v, why, n) != 0)
            return -EINVAL;
        *cb__config_field(cfg, i) = (uint32_t)v;
    }
    if (cb__config_check(cfg, &bad) != 0)
        return invalid(why, n, "config.%s is out of range", bad);
    return 0;
}

static int parse_state(const char *s, cb_state *out)
{
    for (unsigned k = CB_CLOSED; s != NULL && k <= CB_HALF_OPEN; k++) {
        if (strcmp(s, cb__state_name(k)) == 0) {
            *out = (cb_state)k;
            return 0;
        }
    }
    return -EINVAL;
}

/* One entry of "circuits" into *st; -EINVAL with why naming the field. st->name
 * is filled as soon as it is known valid, so the caller can name the circuit. */
static int parse_circuit(const json_t *e, struct cbd_store_state *st, char *why, size_t n)
{
    const char *name = json_string_value(json_object_get(e, "name"));
    long long failures, opened;
    memset(st, 0, sizeof *st);
    if (!json_is_object(e))
        return invalid(why, n, "entry must be an object");
    if (cb__name_check(name) != 0)
        return invalid(why, n, "name must be a string of 1..%u bytes of UTF-8", CB_NAME_MAX);
    snprintf(st->name, sizeof st->name, "%s", name);
    if (parse_state(json_string_value(json_object_get(e, "state")), &st->state) != 0)
        return invalid(why, n, "state must be \"CLOSED\", \"OPEN\" or \"HALF_OPEN\"");
    if (int_field(e, "", "failure_count", 0, UINT32_MAX, &failures, why, n) != 0 ||
        int_field(e, "", "opened_at", 0, OPENED_AT_MAX, &opened, why, n) != 0)
        return -EINVAL;
    if (st->state != CB_CLOSED && opened == 0)
        return invalid(why, n, "opened_at must be set (> 0) when state is %s", cb__state_name(st->state));
    st->failure_count = (uint32_t)failures;
    st->opened_at = opened;
    /* Optional: the opening at full precision, within opened_at's second
     * (so the recovery deadline survives a reboot exactly). */
    long long ns;
    if (json_object_get(e, "opened_at_ns") != NULL) {
        if (int_field(e, "", "opened_at_ns", opened * 1000000000ll, opened * 1000000000ll + 999999999, &ns, why,
                      n) != 0)
            return -EINVAL;
        st->opened_at_ns = opened != 0 ? ns : 0;
    }
    /* Optional: an OPEN circuit's end when its backoff made it later. */
    if (json_object_get(e, "open_until_ns") != NULL) {
        if (st->state != CB_OPEN)
            return invalid(why, n, "open_until_ns is only for an OPEN circuit (this one is %s)",
                           cb__state_name(st->state));
        if (int_field(e, "", "open_until_ns", 0, OPENED_AT_MAX * 1000000000ll + 999999999, &ns, why, n) != 0)
            return -EINVAL;
        st->open_until_ns = ns;
    }
    st->has_config = json_object_get(e, "config") != NULL;
    return st->has_config ? parse_config(json_object_get(e, "config"), &st->config, why, n) : 0;
}

/* The file's data is to survive the next write: name where it will go. */
static void keep_file(struct cbd_store *s)
{
    s->keep_bad = true;
    snprintf(s->bad_path, sizeof s->bad_path, "%s.bad.%lld", s->path, (long long)time(NULL));
}

/* Load the valid entries into the model and tell the daemon; returns how many were skipped. */
static size_t restore_circuits(struct cbd_store *s, const json_t *list)
{
    size_t skipped = 0, i;
    json_t *e;
    json_array_foreach(list, i, e) {
        struct cbd_store_state st;
        char why[256];
        int rc = parse_circuit(e, &st, why, sizeof why);
        struct circuit *c = rc == 0 ? model_get(s, st.name) : NULL;
        if (c != NULL && c->from_file)
            rc = invalid(why, sizeof why, "a circuit of this name came earlier in the file");
        if (rc != 0) {
            if (++skipped <= NOTICES_MAX)
                notice(s, "state file %s: circuits[%zu]%s%s%s: %s; entry skipped", s->path, i,
                       st.name[0] ? " '" : "", st.name, st.name[0] ? "'" : "", why);
            continue;
        }
        struct circuit_line line = {.state = (uint8_t)st.state, .failure_count = st.failure_count,
                                    .opened_at = st.opened_at, .opened_at_ns = st.opened_at_ns,
                                    .open_until_ns = st.open_until_ns, .has_config = st.has_config};
        if (st.has_config)
            line.config = config_copy(&st.config);
        /* What the file holds does not need writing back; only a circuit
         * tracked before the restore can make a difference here. */
        if (c != NULL)
            model_put(s, st.name, &line);
        else
            c = model_add(s, st.name, &line);
        if (c != NULL)
            c->from_file = true;
        s->hooks.remote(s->hooks.arg, &st);
    }
    return skipped;
}

/* Check the envelope; -EINVAL with why filled if this is not our file. */
static int check_envelope(const json_t *root, char *why, size_t n)
{
    const char *format = json_string_value(json_object_get(root, "format"));
    json_t *version = json_object_get(root, "version");
    long long v;
    if (format == NULL || strcmp(format, STATE_FORMAT) != 0)
        return invalid(why, n, "it is not a cbd state file: no \"format\": \"%s\"", STATE_FORMAT);
    if (!json_is_integer(version) || json_integer_value(version) != STATE_VERSION)
        return invalid(why, n, "its version is not %d, the one this cbd reads", STATE_VERSION);
    if (int_field(root, "", "written_at", 0, OPENED_AT_MAX, &v, why, n) != 0)
        return -EINVAL;
    if (!json_is_array(json_object_get(root, "circuits")))
        return invalid(why, n, "\"circuits\" must be an array");
    return 0;
}

/* Parse the open state file; the circuits go to the model and hooks->remote. */
static int restore_fd(struct cbd_store *s, int fd)
{
    struct stat sb;
    json_error_t jerr;
    char why[300];
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        notice(s, "state file %s is not a regular file; cbd will not read it", s->path);
        return -EBADMSG;
    }
    if (sb.st_size > STATE_FILE_MAX) {
        keep_file(s);
        notice(s, "state file %s is %lld bytes, more than the %u cbd reads; starting with no stored circuits (the "
                  "file will be kept as %s)", s->path, (long long)sb.st_size, STATE_FILE_MAX, s->bad_path);
        return -EBADMSG;
    }
    json_t *root = json_loadfd(fd, JSON_REJECT_DUPLICATES, &jerr);
    int rc = root == NULL || check_envelope(root, why, sizeof why) != 0 ? -EBADMSG : 0;
    if (root == NULL)
        snprintf(why, sizeof why, "line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    size_t skipped = rc == 0 ? restore_circuits(s, json_object_get(root, "circuits")) : 0;
    json_decref(root);
    /* The parse tree (~1.5 KiB a circuit) is gone, but glibc keeps the
     * freed heap pages: give them back, or restoring 10,000 circuits
     * leaves ~16 MiB resident for good. Once per start, a few ms. */
    malloc_trim(0);
    if (rc != 0 || skipped > 0)
        keep_file(s);
    if (rc != 0)
        notice(s, "state file %s is unusable (%s); starting with no stored circuits (the file will be kept as %s)",
               s->path, why, s->bad_path);
    else if (skipped > 0)
        notice(s, "state file %s: skipped %zu invalid entries (the file will be kept as %s)", s->path, skipped,
               s->bad_path);
    return rc;
}

static int restore_file(struct cbd_store *s)
{
    int rc = ensure_dir(s);
    if (rc != 0)
        return rc;
    remove_stale_tmp(s);
    int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO there must not hang the start */
    if (fd < 0 && errno == ENOENT)
        return 0; /* first start: nothing stored yet */
    if (fd < 0) {
        rc = -errno;
        notice(s, "cannot read state file %s: %s", s->path, strerror(-rc));
        return rc;
    }
    rc = restore_fd(s, fd);
    close(fd);
    return rc;
}

/* Synchronous: done() runs before restore() returns (see the top). */
static void local_restore(struct cbd_store *s, void (*done)(void *arg, int rc), void *arg)
{
    int rc = restore_file(s);
    s->restored = true;
    schedule_write(s); /* anything tracked during the restore */
    done(arg, rc);
}

/* ---- fleet calls: trivial on one host ---------------------------------------- */

static void on_grant_timer(uv_timer_t *t)
{
    struct cbd_store *s = t->data;
    struct grant *g = s->grants; /* detached: a request made by a callback waits for the next turn */
    s->grants = NULL;
    s->grants_tail = &s->grants;
    int64_t now = time(NULL);
    while (g != NULL) {
        struct grant *next = g->next;
        if (!s->closing)
            s->hooks.probe_result(s->hooks.arg, g->name, g->opened_at, true, now + g->lease_s);
        free(g);
        g = next;
    }
}

static void local_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s)
{
    if (s->closing)
        return; /* the daemon is stopping: nobody waits for the answer */
    struct grant *g = malloc(sizeof *g);
    if (g == NULL) {
        notice(s, "out of memory: probe lease for circuit '%s' not granted", name);
        return;
    }
    *g = (struct grant){.opened_at = opened_at, .lease_s = lease_s};
    snprintf(g->name, sizeof g->name, "%s", name);
    *s->grants_tail = g;
    s->grants_tail = &g->next;
    if (!uv_is_active((uv_handle_t *)&s->grant_timer))
        uv_timer_start(&s->grant_timer, on_grant_timer, 0, 0);
}

static void local_sync(struct cbd_store *s)
{
    (void)s; /* one host, one writer: the daemon's view is the store's */
}

/* ---- lifecycle ---------------------------------------------------------------- */

static void free_grants(struct cbd_store *s)
{
    while (s->grants != NULL) {
        struct grant *next = s->grants->next;
        free(s->grants);
        s->grants = next;
    }
    s->grants_tail = &s->grants;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cbd_store *s = h->data;
    if (--s->open_handles > 0)
        return;
    void (*done)(void *) = s->close_done;
    void *arg = s->close_arg;
    model_free(s);
    free(s);
    if (done != NULL)
        done(arg);
}

/* Advance a close: wait for the write in flight, make the last write, close. */
static void close_step(struct cbd_store *s)
{
    if (s->writing || s->handles_closing)
        return;
    if (s->dirty && s->restored && !s->final_write) {
        s->final_write = true;
        start_write(s);
        return;
    }
    s->handles_closing = true;
    uv_close((uv_handle_t *)&s->write_timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->grant_timer, on_handle_closed);
}

static void local_close(struct cbd_store *s, void (*done)(void *arg), void *arg)
{
    s->closing = true;
    s->close_done = done;
    s->close_arg = arg;
    uv_timer_stop(&s->write_timer);
    uv_timer_stop(&s->grant_timer);
    free_grants(s);
    close_step(s);
}

#define LOCAL_PATH_MAX (PATH_MAX - PATH_ROOM - 1) /* bytes of PATH that fit path[] */
#define LOCAL_EXAMPLE "local:/var/lib/cbd/default.state"

/* The one parser of a local store URI, for create() and check_uri() alike:
 * PATH of "local:PATH" if create() accepts it, else NULL with a static
 * message (what is wrong, expected what) in *err. */
static const char *uri_path(const char *uri, const char **err)
{
    if (strncasecmp(uri, "local:", strlen("local:")) != 0) {
        *err = "not a local store URI (expected local:PATH)";
        return NULL;
    }
    const char *path = uri + strlen("local:");
    size_t len = strlen(path);
    if (path[0] == '\0')
        *err = "the local store needs a file (expected local:/ABSOLUTE/PATH, e.g. " LOCAL_EXAMPLE ")";
    else if (path[0] != '/')
        *err = "the local store's path must be absolute (expected local:/ABSOLUTE/PATH, e.g. " LOCAL_EXAMPLE ")";
    else if (path[len - 1] == '/')
        *err = "the local store's path names a directory (expected a file in it, e.g. " LOCAL_EXAMPLE ")";
    else if (len > LOCAL_PATH_MAX)
        *err = "the local store's path is too long (expected at most 4031 bytes)";
    else
        return path;
    return NULL;
}
_Static_assert(LOCAL_PATH_MAX == 4031, "the message above says 4031");

static int local_check_uri(const char *uri, char *why, size_t size)
{
    const char *err = NULL;
    if (uri_path(uri, &err) != NULL)
        return 0;
    snprintf(why, size, "%s", err);
    return -EINVAL;
}

/* The paths the store uses, from an accepted PATH. */
static void set_paths(struct cbd_store *s, const char *path)
{
    size_t len = strlen(path);
    memcpy(s->path, path, len + 1);
    snprintf(s->tmp_path, sizeof s->tmp_path, "%s.tmp.%ld", path, (long)getpid());
    size_t dir_len = (size_t)(strrchr(path, '/') - path);
    memcpy(s->dir_path, path, dir_len ? dir_len : 1);
    s->base_name = s->path + dir_len + 1;
}

static int local_create(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks,
                        const char **err)
{
    const char *path = uri_path(uri, err);
    if (path == NULL)
        return -EINVAL;
    struct cbd_store *s = calloc(1, sizeof *s);
    if (s == NULL || (s->index = calloc(INDEX_MIN, sizeof *s->index)) == NULL) {
        free(s);
        *err = "out of memory";
        return -ENOMEM;
    }
    set_paths(s, path);
    s->hooks = *hooks;
    s->index_mask = INDEX_MIN - 1;
    s->online = true;
    s->grants_tail = &s->grants;
    uv_timer_init(hooks->loop, &s->write_timer);
    uv_timer_init(hooks->loop, &s->grant_timer);
    s->write_timer.data = s->grant_timer.data = s;
    s->open_handles = 2;
    *out = s;
    return 0;
}

const struct cbd_store_ops cbd_store_local_ops = {
    .scheme = "local",
    .create = local_create,
    .check_uri = local_check_uri,
    .restore = local_restore,
    .track = local_track,
    .untrack = local_untrack,
    .transition = local_transition,
    .try_probe = local_try_probe,
    .sync = local_sync,
    .close = local_close,
    .stats = local_stats,
};
