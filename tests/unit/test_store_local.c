/*
 * test_store_local.c - the embedded local store and the store registry.
 *
 * Each test gets its own directory /tmp/cbd-store-<pid>-<test> (criterion
 * runs tests in parallel processes), a private libuv loop and a recorder of
 * every hook the store calls. Writes are counted from the outside with
 * inotify (one IN_MOVED_TO of the state file per completed write), so the
 * tests need nothing from the store beyond its ops.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw */
#endif
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "segment.h"
#include "store.h"
#include "store.h"

#define MAX_REMOTE 16

/* Everything the store told us, for one test. */
static struct {
    uv_loop_t loop;
    char dir[256], path[320], uri[330];
    struct cbd_store_hooks hooks;
    struct cbd_store *s;
    struct cbd_store_state remote[MAX_REMOTE];
    int remote_n;
    bool retrack; /* remote() answers like the daemon: track + transition */
    int probe_n;
    char probe_name[CB_NAME_MAX + 1];
    int64_t probe_opened_at, probe_expiry;
    bool probe_granted;
    bool online;
    char log[16384]; /* every health() message, one per line */
    int restore_rc, restore_calls, closed;
} T;

static const struct cbd_store_ops *ops = &cbd_store_local_ops;

static void on_remote(void *arg, const struct cbd_store_state *st)
{
    (void)arg;
    if (T.remote_n < MAX_REMOTE)
        T.remote[T.remote_n] = *st;
    T.remote_n++;
    if (T.retrack && st->has_config) {
        ops->track(T.s, st->name, &st->config);
        ops->transition(T.s, st, st->opened_at);
    }
}

static void on_probe(void *arg, const char *name, int64_t opened_at, bool granted, int64_t lease_expiry)
{
    (void)arg;
    T.probe_n++;
    snprintf(T.probe_name, sizeof T.probe_name, "%s", name);
    T.probe_opened_at = opened_at;
    T.probe_granted = granted;
    T.probe_expiry = lease_expiry;
}

static void on_health(void *arg, bool online, const char *why)
{
    (void)arg;
    T.online = online;
    size_t used = strlen(T.log);
    snprintf(T.log + used, sizeof T.log - used, "%s\n", why);
}

static void on_restored(void *arg, int rc)
{
    (void)arg;
    T.restore_rc = rc;
    T.restore_calls++;
}

static void on_closed(void *arg)
{
    (void)arg;
    T.closed++;
}

static int remove_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void setup(void)
{
    memset(&T, 0, sizeof T);
    T.online = true;
    umask(022);
    snprintf(T.dir, sizeof T.dir, "/tmp/cbd-store-%d-%s", (int)getpid(), criterion_current_test->name);
    nftw(T.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    cr_assert_eq(mkdir(T.dir, 0700), 0, "mkdir %s: %s", T.dir, strerror(errno));
    snprintf(T.path, sizeof T.path, "%s/state", T.dir);
    snprintf(T.uri, sizeof T.uri, "local:%s", T.path);
    cr_assert_eq(uv_loop_init(&T.loop), 0);
    T.hooks = (struct cbd_store_hooks){.loop = &T.loop, .remote = on_remote, .probe_result = on_probe,
                                       .health = on_health};
}

static void teardown(void)
{
    uv_loop_close(&T.loop);
    nftw(T.dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(store_local, .init = setup, .fini = teardown, .timeout = 30);

/* ---- helpers ----------------------------------------------------------------- */

static void open_store_at(const char *uri)
{
    const char *err = NULL;
    int rc = ops->create(&T.s, uri, &T.hooks, &err);
    cr_assert_eq(rc, 0, "create(%s) = %d: %s", uri, rc, err ? err : "");
}

static int open_and_restore(void)
{
    open_store_at(T.uri);
    T.restore_calls = 0;
    ops->restore(T.s, on_restored, NULL);
    cr_assert_eq(T.restore_calls, 1, "restore calls done() once, before it returns");
    return T.restore_rc;
}

static void close_store(void)
{
    int before = T.closed;
    ops->close(T.s, on_closed, NULL);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    cr_assert_eq(T.closed, before + 1, "close() calls done() once");
    T.s = NULL;
}

static cb_config test_config(void)
{
    cb_config c;
    cb_config_init(&c);
    c.failure_threshold = 7;
    c.success_threshold = 2;
    c.half_open_max_probes = 3;
    c.recovery_timeout_ms = 15000;
    c.probe_lease_ms = 4000;
    return c;
}

static struct cbd_store_state state_of(const char *name, cb_state state, uint32_t failures, int64_t opened_at)
{
    struct cbd_store_state st = {.state = state, .failure_count = failures, .opened_at = opened_at};
    snprintf(st.name, sizeof st.name, "%s", name);
    return st;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "fopen %s", path);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "fopen %s: %s", path, strerror(errno));
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* The state file, checked to be a complete cbd state file. */
static json_t *load_state(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(T.path, JSON_REJECT_DUPLICATES, &jerr);
    cr_assert_not_null(root, "%s: line %d: %s", T.path, jerr.line, jerr.text);
    cr_assert_str_eq(json_string_value(json_object_get(root, "format")), "cbd-state");
    cr_assert_eq(json_integer_value(json_object_get(root, "version")), 1);
    json_int_t written = json_integer_value(json_object_get(root, "written_at"));
    cr_assert(llabs(written - time(NULL)) <= 5, "written_at %lld is now", (long long)written);
    cr_assert(json_is_array(json_object_get(root, "circuits")));
    return root;
}

static json_t *circuit_in(json_t *root, const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "circuits"), i, c) {
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    }
    return NULL;
}

/* Entries of the test directory whose name starts with prefix; the last
 * one's path goes to last (if not NULL). */
static int count_files(const char *prefix, char *last, size_t size)
{
    DIR *d = opendir(T.dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        n++;
        if (last != NULL)
            snprintf(last, size, "%s/%s", T.dir, e->d_name);
    }
    closedir(d);
    return n;
}

/* Completed writes: renames onto the state file since the watch started. */
static int count_renames(int ifd)
{
    char buf[65536] __attribute__((aligned(8)));
    int n = 0;
    ssize_t len;
    while ((len = read(ifd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + len;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if ((ev->mask & IN_MOVED_TO) && ev->len > 0 && strcmp(ev->name, "state") == 0)
                n++;
            p += sizeof *ev + ev->len;
        }
    }
    return n;
}

static int watch_dir(void)
{
    int ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    cr_assert_geq(ifd, 0);
    cr_assert_geq(inotify_add_watch(ifd, T.dir, IN_MOVED_TO), 0);
    return ifd;
}

/* ---- tests ------------------------------------------------------------------------ */

Test(store_local, transition_then_restore_round_trips_open_circuit)
{
    cr_assert_eq(open_and_restore(), 0, "a missing file is an empty store");
    cr_assert_eq(T.remote_n, 0);
    cb_config cfg = test_config(), defaults;
    cb_config_init(&defaults);
    ops->track(T.s, "payments", &cfg);
    ops->track(T.s, "search", &defaults);
    struct cbd_store_state open = state_of("payments", CB_OPEN, 7, 1764240000);
    ops->transition(T.s, &open, 0);
    cr_assert_eq(access(T.path, F_OK), -1, "nothing is written inside the call");
    close_store(); /* close flushes the pending write */

    json_t *root = load_state();
    json_t *c = circuit_in(root, "payments");
    cr_assert_not_null(c);
    cr_assert_str_eq(json_string_value(json_object_get(c, "state")), "OPEN");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(c, "config"), "probe_lease_ms")), 4000);
    json_decref(root);

    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 2);
    const struct cbd_store_state *p = &T.remote[0], *q = &T.remote[1];
    cr_assert_str_eq(p->name, "payments");
    cr_assert_eq(p->state, CB_OPEN);
    cr_assert_eq(p->failure_count, 7);
    cr_assert_eq(p->opened_at, 1764240000);
    cr_assert(p->has_config);
    cr_assert_eq(memcmp(&p->config, &cfg, sizeof cfg), 0, "the config round-trips exactly");
    cr_assert_str_eq(q->name, "search");
    cr_assert_eq(q->state, CB_CLOSED);
    cr_assert_eq(q->opened_at, 0);
    cr_assert_eq(memcmp(&q->config, &defaults, sizeof defaults), 0);
    cr_assert_eq(T.log[0], '\0', "a clean restore says nothing: %s", T.log);
    close_store();
}

Test(store_local, write_is_atomic_no_tmp_left_behind)
{
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    char stale[400], alive[400];
    snprintf(stale, sizeof stale, "%s.tmp.%d", T.path, (int)child); /* its writer is dead */
    snprintf(alive, sizeof alive, "%s.tmp.1", T.path);              /* its writer is alive */
    write_text(stale, "{half a fi");
    write_text(alive, "{half a fi");

    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(access(stale, F_OK), -1, "a dead writer's temporary file is removed at restore");
    cr_assert_eq(access(alive, F_OK), 0, "a live writer's temporary file is left alone");
    unlink(alive);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    for (int i = 0; i < 50; i++) {
        struct cbd_store_state st = state_of("payments", i % 2 ? CB_CLOSED : CB_OPEN, 7, i % 2 ? 0 : 1000 + i);
        ops->transition(T.s, &st, 0);
        uv_run(&T.loop, UV_RUN_DEFAULT);
        json_decref(load_state()); /* always a whole file, never a partial one */
        cr_assert_eq(count_files("state", NULL, 0), 1, "only the state file: no temporary files");
    }
    struct stat sb;
    cr_assert_eq(stat(T.path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0640);
    close_store();
    cr_assert_eq(count_files("state", NULL, 0), 1);
}

Test(store_local, failed_write_reports_offline_and_retries)
{
    cr_assert_eq(mkdir(T.path, 0700), 0); /* a directory where the file belongs */
    cr_assert_eq(open_and_restore(), -EBADMSG);
    cr_assert(strstr(T.log, "not a regular file"), "%s", T.log);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    uv_run(&T.loop, UV_RUN_NOWAIT);
    for (int i = 0; i < 200 && T.online; i++)
        uv_run(&T.loop, UV_RUN_ONCE);
    cr_assert(!T.online, "a failed write reports the store offline");
    cr_assert(strstr(T.log, T.path) && strstr(T.log, "Is a directory"), "names file and errno: %s", T.log);
    cr_assert_eq(count_files("state.tmp", NULL, 0), 0, "a failed write leaves no temporary file");

    cr_assert_eq(rmdir(T.path), 0);
    while (!T.online)
        uv_run(&T.loop, UV_RUN_ONCE); /* the retry comes within a second */
    cr_assert(strstr(T.log, "works again"), "%s", T.log);
    json_t *root = load_state();
    cr_assert_not_null(circuit_in(root, "payments"));
    json_decref(root);
    close_store();
}

Test(store_local, corrupt_file_is_rejected_and_kept)
{
    const char *corrupt = "{\"format\": \"cbd-state\", \"version\": 1, \"circuits\": [{\"name\": \"pay";
    write_text(T.path, corrupt);
    cr_assert_eq(open_and_restore(), -EBADMSG);
    cr_assert_eq(T.remote_n, 0);
    cr_assert(strstr(T.log, T.path) && strstr(T.log, "line 1"), "names the file and where: %s", T.log);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    cr_assert_str_eq(read_text(T.path), corrupt, "untouched until cbd has something to write");

    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    json_t *root = load_state();
    cr_assert_not_null(circuit_in(root, "payments"));
    json_decref(root);
    char bad[600];
    cr_assert_eq(count_files("state.bad.", bad, sizeof bad), 1);
    cr_assert_str_eq(read_text(bad), corrupt, "the bad file is kept byte for byte");
    cr_assert(strstr(T.log, "kept the previous state file"), "%s", T.log);
    close_store();
}

Test(store_local, foreign_or_newer_files_are_rejected_with_the_reason)
{
    static const struct {
        const char *text, *reason;
    } cases[] = {
        {"", "line"},
        {"[1, 2]", "not a cbd state file"},
        {"{\"format\": \"something-else\", \"version\": 1}", "not a cbd state file"},
        {"{\"format\": \"cbd-state\", \"version\": 2, \"written_at\": 1, \"circuits\": []}", "version is not 1"},
        {"{\"format\": \"cbd-state\", \"version\": 1, \"written_at\": 1, \"circuits\": {}}", "must be an array"},
        {"{\"format\": \"cbd-state\", \"version\": 1, \"circuits\": []}", "written_at"},
        {"{\"format\": \"cbd-state\", \"format\": \"cbd-state\"}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        T.log[0] = '\0';
        write_text(T.path, cases[i].text);
        cr_assert_eq(open_and_restore(), -EBADMSG, "case %zu", i);
        cr_assert(strstr(T.log, cases[i].reason) && strstr(T.log, T.path), "case %zu: %s", i, T.log);
        cr_assert_eq(T.remote_n, 0);
        close_store();
        cr_assert_str_eq(read_text(T.path), cases[i].text, "case %zu: nothing to write, nothing replaced", i);
    }
}

Test(store_local, invalid_entries_are_skipped_and_counted)
{
    write_text(T.path,
               "{\"format\": \"cbd-state\", \"version\": 1, \"written_at\": 1764240000, \"circuits\": [\n"
               " {\"name\": \"good\", \"state\": \"OPEN\", \"failure_count\": 5, \"opened_at\": 1764240000,\n"
               "  \"config\": {\"failure_threshold\": 5, \"success_threshold\": 3, \"half_open_max_probes\": 1,\n"
               "             \"recovery_timeout_ms\": 30000, \"probe_lease_ms\": 0}},\n"
               " {\"name\": \"\", \"state\": \"CLOSED\", \"failure_count\": 0, \"opened_at\": 0},\n"
               " {\"name\": \"s1\", \"state\": \"AJAR\", \"failure_count\": 0, \"opened_at\": 0},\n"
               " {\"name\": \"s2\", \"state\": \"CLOSED\", \"failure_count\": -1, \"opened_at\": 0},\n"
               " {\"name\": \"s3\", \"state\": \"CLOSED\", \"failure_count\": 0, \"opened_at\": 0,\n"
               "  \"config\": {\"failure_threshold\": 0, \"success_threshold\": 3, \"half_open_max_probes\": 1,\n"
               "             \"recovery_timeout_ms\": 30000, \"probe_lease_ms\": 0}},\n"
               " {\"name\": \"good\", \"state\": \"CLOSED\", \"failure_count\": 0, \"opened_at\": 0},\n"
               " 42,\n"
               " {\"name\": \"s4\", \"state\": \"OPEN\", \"failure_count\": 5, \"opened_at\": 0},\n"
               " {\"name\": \"s5\", \"state\": \"CLOSED\", \"failure_count\": 0, \"opened_at\": 1.5},\n"
               " {\"name\": \"plain\", \"state\": \"CLOSED\", \"failure_count\": 0, \"opened_at\": 0}\n"
               "]}\n");
    cr_assert_eq(open_and_restore(), 0, "a readable file with bad entries still restores");
    cr_assert_eq(T.remote_n, 2);
    cr_assert_str_eq(T.remote[0].name, "good");
    cr_assert_eq(T.remote[0].state, CB_OPEN);
    cr_assert(T.remote[0].has_config);
    cr_assert_str_eq(T.remote[1].name, "plain");
    cr_assert(!T.remote[1].has_config, "an entry without config restores without one");
    static const char *const expected[] = {
        "circuits[1]: name must be",
        "circuits[2] 's1': state must be",
        "circuits[3] 's2': failure_count must be an integer in 0..4294967295",
        "circuits[4] 's3': config.failure_threshold (1..1000000) is out of range",
        "circuits[5] 'good': a circuit of this name came earlier",
        "circuits[6]: entry must be an object",
        "circuits[7] 's4': opened_at must be set",
        "circuits[8] 's5': opened_at must be an integer",
        "skipped 8 invalid entries",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        cr_assert(strstr(T.log, expected[i]), "missing \"%s\" in:\n%s", expected[i], T.log);
    cr_assert(strstr(T.log, T.path), "messages name the file");
    cr_assert(T.online, "notices do not take the store offline");

    cb_config cfg = test_config();
    ops->track(T.s, "good", &cfg);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    cr_assert_eq(count_files("state.bad.", NULL, 0), 1, "the file holding the skipped entries is kept");
    close_store();
}

Test(store_local, restoring_an_unchanged_file_does_not_rewrite_it)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    struct cbd_store_state open = state_of("payments", CB_OPEN, 7, 1764240000);
    ops->transition(T.s, &open, 0);
    close_store();

    int ifd = watch_dir();
    T.retrack = true; /* the daemon registers each restored circuit again */
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 1);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    ops->track(T.s, "payments", &cfg);
    ops->transition(T.s, &open, 0);
    close_store();
    cr_assert_eq(count_renames(ifd), 0, "no change, no write");
    close(ifd);
}

Test(store_local, many_transitions_coalesce_into_few_writes)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    int ifd = watch_dir();
    int64_t last_opened = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 200; i++) {
            last_opened = 1764240000 + round * 1000 + i;
            struct cbd_store_state st = state_of("payments", CB_OPEN, 7, last_opened);
            ops->transition(T.s, &st, 0);
        }
        /* round 0: the first write starts; later rounds (usually) land during it */
        uv_run(&T.loop, UV_RUN_NOWAIT);
        /* active_reqs counts uv_queue_work requests not yet completed */
        cr_assert_leq(T.loop.active_reqs.count, 1, "at most one write in flight");
    }
    uv_run(&T.loop, UV_RUN_DEFAULT);
    int writes = count_renames(ifd);
    cr_assert(writes >= 1 && writes <= 3, "600 transitions, %d writes", writes);
    cr_assert(T.online && T.log[0] == '\0', "no write failed: %s", T.log);
    json_t *root = load_state();
    cr_assert_eq(json_integer_value(json_object_get(circuit_in(root, "payments"), "opened_at")), last_opened,
                 "the last write holds the newest state");
    json_decref(root);
    close_store();
    close(ifd);
}

Test(store_local, try_probe_grants_on_a_later_loop_turn)
{
    cr_assert_eq(open_and_restore(), 0);
    ops->try_probe(T.s, "payments", 1764240000, 30);
    cr_assert_eq(T.probe_n, 0, "never answered inside the call");
    uv_run(&T.loop, UV_RUN_NOWAIT);
    cr_assert_eq(T.probe_n, 1);
    cr_assert(T.probe_granted);
    cr_assert_str_eq(T.probe_name, "payments");
    cr_assert_eq(T.probe_opened_at, 1764240000);
    int64_t expect = (int64_t)time(NULL) + 30;
    cr_assert(T.probe_expiry >= expect - 2 && T.probe_expiry <= expect, "lease until now + 30 s");
    ops->sync(T.s); /* host-local: nothing to reconcile, nothing reported */
    uv_run(&T.loop, UV_RUN_NOWAIT);
    cr_assert_eq(T.remote_n, 0);

    ops->try_probe(T.s, "search", 1764240001, 30);
    close_store();
    cr_assert_eq(T.probe_n, 1, "requests pending at close are dropped, not answered");
}

Test(store_local, unknown_scheme_gives_clear_error)
{
    char buf[512];
    cr_assert_null(cbd_store_find("foo://x"));
    const char *msg = cbd_store_uri_error("foo://x", buf, sizeof buf);
    cr_assert_not_null(msg);
    cr_assert(strstr(msg, "unknown store 'foo://x'") && strstr(msg, "local:PATH"), "%s", msg);
    cr_assert(strstr(cbd_store_uri_error(NULL, buf, sizeof buf), "no store given"));
    cr_assert(strstr(cbd_store_uri_error("", buf, sizeof buf), "no store given"));
    msg = cbd_store_uri_error("rediss://admin:s3cret@db:6380", buf, sizeof buf);
    cr_assert(strstr(msg, "'rediss://...'") && !strstr(msg, "s3cret"), "no password in logs: %s", msg);

    cr_assert_eq(cbd_store_find("local:/var/lib/cbd/default.state"), &cbd_store_local_ops);
    cr_assert_eq(cbd_store_find("LOCAL:/x"), &cbd_store_local_ops, "schemes are case-insensitive");
    cr_assert_null(cbd_store_uri_error("local:/x", buf, sizeof buf));
    cr_assert_str_eq(cbd_store_local_ops.scheme, "local");

    static const char *const fleet[] = {"redis://127.0.0.1:6379", "unix:///run/redis.sock", "dynamodb://cb"};
    for (size_t i = 0; i < 3; i++) {
        if (cbd_store_find(fleet[i]) != NULL)
            continue; /* this build has the backend */
        msg = cbd_store_uri_error(fleet[i], buf, sizeof buf);
        cr_assert(strstr(msg, fleet[i]) && strstr(msg, "not available"), "%s", msg);
        char with_password[128];
        snprintf(with_password, sizeof with_password, "%.*sme:pw@h", (int)(strstr(fleet[i], "://") - fleet[i] + 3),
                 fleet[i]);
        msg = cbd_store_uri_error(with_password, buf, sizeof buf);
        cr_assert(strstr(msg, "not available") && !strstr(msg, "pw"), "%s", msg);
    }
}

Test(store_local, relative_path_is_rejected)
{
    static const struct {
        const char *uri, *reason;
    } cases[] = {
        {"local:var/lib/cbd/default.state", "absolute"},
        {"local:./state", "absolute"},
        {"local:", "needs a file"},
        {"local:/var/lib/cbd/", "names a directory"},
        {"redis://x", "not a local store URI"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct cbd_store *s = NULL;
        const char *err = NULL;
        cr_assert_eq(ops->create(&s, cases[i].uri, &T.hooks, &err), -EINVAL, "%s", cases[i].uri);
        cr_assert_null(s);
        cr_assert(err && strstr(err, cases[i].reason), "%s: %s", cases[i].uri, err ? err : "(none)");
    }
    char long_uri[5000] = "local:/";
    memset(long_uri + 7, 'a', 4500);
    struct cbd_store *s = NULL;
    const char *err = NULL;
    cr_assert_eq(ops->create(&s, long_uri, &T.hooks, &err), -EINVAL);
    cr_assert(strstr(err, "too long"), "%s", err);
}

Test(store_local, missing_directory_is_created_0750_but_not_its_parents)
{
    char uri[400];
    snprintf(uri, sizeof uri, "local:%s/sub/state", T.dir);
    open_store_at(uri);
    ops->restore(T.s, on_restored, NULL);
    cr_assert_eq(T.restore_rc, 0);
    char sub[300];
    snprintf(sub, sizeof sub, "%s/sub", T.dir);
    struct stat sb;
    cr_assert_eq(stat(sub, &sb), 0);
    cr_assert(S_ISDIR(sb.st_mode));
    cr_assert_eq(sb.st_mode & 0777, 0750);
    close_store();

    snprintf(uri, sizeof uri, "local:%s/no/such/state", T.dir);
    open_store_at(uri);
    ops->restore(T.s, on_restored, NULL);
    cr_assert_eq(T.restore_rc, -ENOENT);
    cr_assert(strstr(T.log, "cannot create state directory") && strstr(T.log, "/no/such"), "%s", T.log);
    close_store();
}

Test(store_local, a_fifo_in_place_of_the_file_does_not_hang_the_start)
{
    cr_assert_eq(mkfifo(T.path, 0600), 0);
    cr_assert_eq(open_and_restore(), -EBADMSG);
    cr_assert(strstr(T.log, "not a regular file"), "%s", T.log);
    close_store();
}

Test(store_local, lines_keep_their_bytes_and_order_across_many_circuits)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config(), defaults;
    cb_config_init(&defaults);
    enum { N = 3000 }; /* grows the model's array and index many times */
    char name[64];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "svc-%04d.example/api", i);
        ops->track(T.s, name, i % 2 ? &cfg : &defaults);
    }
    struct cbd_store_state open = state_of("svc-0007.example/api", CB_OPEN, 7, 1764240000);
    ops->transition(T.s, &open, 0);
    struct cbd_store_state bare = state_of("no-config", CB_HALF_OPEN, 0, 1764240001); /* never tracked */
    ops->transition(T.s, &bare, 0);
    close_store();

    /* Byte for byte what earlier versions wrote (jansson's compact dump). */
    const char *text = read_text(T.path);
    cr_assert(strstr(text, "\"circuits\":[\n{\"name\":\"svc-0000.example/api\",\"state\":\"CLOSED\",\"failure_count\":0,"
                           "\"opened_at\":0,\"config\":{\"failure_threshold\":5,\"success_threshold\":3,"
                           "\"half_open_max_probes\":1,\"recovery_timeout_ms\":30000,\"probe_lease_ms\":0}},\n"
                           "{\"name\":\"svc-0001.example/api\""),
              "first lines: %.400s", text);
    json_t *root = load_state();
    json_t *list = json_object_get(root, "circuits");
    cr_assert_eq(json_array_size(list), N + 1);
    for (int i = 0; i < N; i += 499) {
        snprintf(name, sizeof name, "svc-%04d.example/api", i);
        cr_assert_str_eq(json_string_value(json_object_get(json_array_get(list, (size_t)i), "name")), name,
                         "file order is the order circuits were first tracked");
    }
    char *line = json_dumps(circuit_in(root, "svc-0007.example/api"), JSON_COMPACT);
    cr_assert_str_eq(line, "{\"name\":\"svc-0007.example/api\",\"state\":\"OPEN\",\"failure_count\":7,"
                           "\"opened_at\":1764240000,\"config\":{\"failure_threshold\":7,\"success_threshold\":2,"
                           "\"half_open_max_probes\":3,\"recovery_timeout_ms\":15000,\"probe_lease_ms\":4000}}");
    free(line);
    line = json_dumps(json_array_get(list, N), JSON_COMPACT);
    cr_assert_str_eq(line, "{\"name\":\"no-config\",\"state\":\"HALF_OPEN\",\"failure_count\":0,"
                           "\"opened_at\":1764240001}", "a circuit without config has no \"config\"");
    free(line);
    json_decref(root);

    int ifd = watch_dir();
    T.retrack = true; /* every restored circuit registered again: found by name, unchanged */
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, N + 1);
    cr_assert_eq(T.log[0], '\0', "%s", T.log);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    close_store();
    cr_assert_eq(count_renames(ifd), 0, "no change, no write");
    close(ifd);
}

Test(store_local, an_opening_keeps_its_nanoseconds_across_a_restore)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    struct cbd_store_state open = state_of("payments", CB_OPEN, 7, 1764240000);
    open.opened_at_ns = 1764240000987654321ll;
    ops->transition(T.s, &open, 0);
    close_store();
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 1);
    cr_assert_eq(T.remote[0].opened_at, 1764240000);
    cr_assert_eq(T.remote[0].opened_at_ns, 1764240000987654321ll,
                 "the recovery deadline after a reboot is counted from the exact opening");
    close_store();
}

Test(store_local, an_opening_ns_outside_its_second_is_refused)
{
    write_text(T.path, "{\"format\":\"cbd-state\",\"version\":1,\"written_at\":0,\"circuits\":["
                       "{\"name\":\"a\",\"state\":\"OPEN\",\"failure_count\":1,\"opened_at\":1764240000,"
                       "\"opened_at_ns\":1764240005000000000}]}");
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 0, "an inconsistent entry is skipped");
    cr_assert_not_null(strstr(T.log, "opened_at_ns"), "the skip names the field: %s", T.log);
    close_store();
}

Test(store_local, a_backoff_deadline_survives_a_restore)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    ops->track(T.s, "payments", &cfg);
    struct cbd_store_state open = state_of("payments", CB_OPEN, 7, 1764240000);
    open.opened_at_ns = 1764240000987654321ll;
    open.open_until_ns = 1764240095123456789ll; /* a reopening's backoff: 95 s, past the 15 s timeout */
    ops->transition(T.s, &open, 0);
    close_store();
    json_t *root = load_state();
    cr_assert_eq(json_integer_value(json_object_get(circuit_in(root, "payments"), "open_until_ns")),
                 1764240095123456789ll);
    json_decref(root);
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 1);
    cr_assert_eq(T.remote[0].open_until_ns, 1764240095123456789ll, "the deadline after a reboot is the real one");
    close_store();
}

Test(store_local, a_file_without_deadlines_loads_with_none)
{
    write_text(T.path, "{\"format\":\"cbd-state\",\"version\":1,\"written_at\":0,\"circuits\":["
                       "{\"name\":\"a\",\"state\":\"OPEN\",\"failure_count\":1,\"opened_at\":1764240000,"
                       "\"opened_at_ns\":1764240000500000000}]}");
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 1);
    cr_assert_eq(T.remote[0].open_until_ns, 0, "absent: opened_at + recovery timeout");
    cr_assert_eq(T.log[0], '\0', "%s", T.log);
    close_store();
}

Test(store_local, a_deadline_that_is_no_number_or_not_on_an_open_circuit_is_refused)
{
    write_text(T.path, "{\"format\":\"cbd-state\",\"version\":1,\"written_at\":0,\"circuits\":["
                       "{\"name\":\"a\",\"state\":\"OPEN\",\"failure_count\":1,\"opened_at\":1764240000,"
                       "\"open_until_ns\":\"soon\"},\n"
                       "{\"name\":\"b\",\"state\":\"CLOSED\",\"failure_count\":0,\"opened_at\":0,"
                       "\"open_until_ns\":1764240095000000000},\n"
                       "{\"name\":\"c\",\"state\":\"OPEN\",\"failure_count\":1,\"opened_at\":1764240000,"
                       "\"open_until_ns\":-5}]}");
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 0, "each entry is skipped");
    cr_assert_not_null(strstr(T.log, "circuits[0] 'a': open_until_ns must be an integer"), "%s", T.log);
    cr_assert_not_null(strstr(T.log, "open_until_ns is only for an OPEN circuit (this one is CLOSED)"), "%s", T.log);
    cr_assert_not_null(strstr(T.log, "circuits[2] 'c': open_until_ns"), "%s", T.log);
    close_store();
}

Test(store_local, untracked_circuits_leave_the_file_and_the_others_stay_findable)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    char name[32];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "c%03d", i);
        ops->track(T.s, name, &cfg);
    }
    for (int i = 0; i < 300; i += 3) { /* every third one goes, from all over the index */
        snprintf(name, sizeof name, "c%03d", i);
        ops->untrack(T.s, name);
    }
    ops->untrack(T.s, "never-tracked");
    struct cbd_store_state open = state_of("c299", CB_OPEN, 2, 1764240000);
    ops->transition(T.s, &open, 0); /* found after the removals moved it */
    close_store();
    json_t *root = load_state();
    cr_assert_eq(json_array_size(json_object_get(root, "circuits")), 200);
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "c%03d", i);
        if (i % 3 == 0)
            cr_assert_null(circuit_in(root, name), "%s was untracked", name);
        else
            cr_assert_not_null(circuit_in(root, name), "%s was lost", name);
    }
    cr_assert_str_eq(json_string_value(json_object_get(circuit_in(root, "c299"), "state")), "OPEN");
    json_decref(root);
    cr_assert_eq(open_and_restore(), 0);
    cr_assert_eq(T.remote_n, 200, "every remaining circuit is restored once");
    close_store();
}

/* ---- printing the file never takes the loop ----------------------------------------------- */

struct storm {
    uv_timer_t timer;
    int n, next, ticks;
    uint64_t started_ns, ended_ns;
};

static void stat_of(void *arg, const char *name, uint64_t value)
{
    uint64_t *out = arg;
    if (strcmp(name, "print_us_total") == 0)
        out[0] = value;
    else if (strcmp(name, "writes") == 0)
        out[1] = value;
}

/* A transition every millisecond, for a second: each makes the store dirty. */
static void storm_tick(uv_timer_t *t)
{
    struct storm *st = t->data;
    char name[32];
    snprintf(name, sizeof name, "c%06d", st->next++ % st->n);
    struct cbd_store_state s = state_of(name, st->ticks % 2 ? CB_CLOSED : CB_OPEN, 1, st->ticks % 2 ? 0 : 1700000000);
    ops->transition(T.s, &s, 0);
    if (++st->ticks == 1000) {
        st->ended_ns = uv_hrtime();
        uv_timer_stop(t);
        uv_close((uv_handle_t *)t, NULL);
    }
}

/* With tens of thousands of circuits a print of the file takes
 * milliseconds on the loop; back to back under a storm of changes (a
 * registration storm, say), it would leave the loop little time to answer
 * workers. The store spaces its writes so printing takes at most a tenth
 * of the loop's time, and still writes the newest state. */
Test(store_local, under_a_storm_of_changes_printing_the_file_takes_a_tenth_of_the_loop_at_most)
{
    cr_assert_eq(open_and_restore(), 0);
    cb_config cfg = test_config();
    struct storm st = {.n = 50000};
    char name[32];
    for (int i = 0; i < st.n; i++) {
        snprintf(name, sizeof name, "c%06d", i);
        ops->track(T.s, name, &cfg);
    }
    uv_run(&T.loop, UV_RUN_NOWAIT); /* the first write starts */
    uint64_t before[2] = {0, 0}, after[2] = {0, 0};
    ops->stats(T.s, stat_of, before);
    uv_timer_init(&T.loop, &st.timer);
    st.timer.data = &st;
    st.started_ns = uv_hrtime();
    uv_timer_start(&st.timer, storm_tick, 1, 1);
    while (st.ended_ns == 0)
        uv_run(&T.loop, UV_RUN_ONCE);
    ops->stats(T.s, stat_of, after);
    double printing = (double)(after[0] - before[0]) * 1000.0, storm_ns = (double)(st.ended_ns - st.started_ns);
    cr_assert_gt(after[1], before[1], "nothing was written during the storm");
    cr_assert_leq(printing / storm_ns, 0.2, "printing took %.0f%% of the loop over the storm (%" PRIu64 " writes)",
                  100.0 * printing / storm_ns, after[1] - before[1]);
    close_store();
    json_t *root = load_state();
    snprintf(name, sizeof name, "c%06d", (st.next - 1) % st.n);
    json_t *last = circuit_in(root, name);
    cr_assert_str_eq(json_string_value(json_object_get(last, "state")), st.ticks % 2 ? "OPEN" : "CLOSED",
                     "the file holds the newest state");
    json_decref(root);
}
