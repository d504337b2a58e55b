/*
 * tsup_env.c - what every test process owns: unique names, its directory,
 * the children it started, and the exit handler that cleans them all up.
 *
 * The registry is per test process (criterion forks one per test). The
 * exit handler runs only in the process that registered it: a worker child
 * forked by a test inherits the handler but leaves with _exit(), and the
 * pid check below makes an accidental exit() in a child harmless.
 *
 * Children are killed twice over: PR_SET_PDEATHSIG makes the kernel kill
 * them if the test process dies without running exit handlers (criterion's
 * timeout SIGKILLs it, a crash kills it), and the exit handler SIGKILLs the
 * ones still tracked when the test ends normally or by a failed assertion.
 *
 * Files cannot die with their process, so a test that crashed or timed out
 * leaves its directory and shm objects behind. Each directory is named
 * /tmp/cbdt-<pid>-XXXXXX and holds one subdirectory per daemon, named after
 * its instance; the first test process to start afterwards sweeps the
 * directories of dead pids and the shm objects of the instances they list.
 * Nothing else is ever touched, so a developer's own cbd instances are safe.
 * With $TSUP_KEEP the directory is renamed /tmp/cbdk-... instead of removed.
 */
#define _GNU_SOURCE
#include "tsup.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 128
#define MAX_NAMES 256
#define MAX_INSTANCES 16

static struct {
    pid_t owner;              /* the test process; 0 until first use */
    pid_t children[MAX_CHILDREN];
    char instances[MAX_INSTANCES][CB_INSTANCE_MAX + 1];
    int ninstances;
    char names[MAX_NAMES][CB_INSTANCE_MAX + 1];
    int nnames;
    char tmpdir[96];
} env;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path) < 0 ? -1 : 0;
}

void tsup_shm_unlink(const char *instance)
{
    char state[CB_SHM_NAME_MAX], lanes[CB_SHM_NAME_MAX];
    cb__shm_names(instance, state, lanes);
    shm_unlink(state);
    shm_unlink(lanes);
}

static void cleanup_at_exit(void)
{
    if (env.owner != getpid())
        return; /* a forked worker that called exit(): not ours to clean */
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (env.children[i] > 0) {
            kill(env.children[i], SIGKILL);
            waitpid(env.children[i], NULL, 0);
        }
    }
    for (int i = 0; i < env.ninstances; i++)
        tsup_shm_unlink(env.instances[i]);
    if (env.tmpdir[0] != '\0' && getenv("TSUP_KEEP")) {
        char kept[sizeof env.tmpdir]; /* cbdt- -> cbdk-: out of the sweeper's reach */
        snprintf(kept, sizeof kept, "/tmp/cbdk-%s", env.tmpdir + strlen("/tmp/cbdt-"));
        fprintf(stderr, "tsup: kept %s\n", rename(env.tmpdir, kept) == 0 ? kept : env.tmpdir);
    } else if (env.tmpdir[0] != '\0') {
        nftw(env.tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
}

/* Removes what crashed or killed test processes left behind (see top). */
static void sweep_dead(void)
{
    DIR *tmp = opendir("/tmp");
    if (tmp == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(tmp)) != NULL) {
        int pid = 0, end = 0;
        if (sscanf(e->d_name, "cbdt-%d-%*6c%n", &pid, &end) != 1 || e->d_name[end] != '\0' || pid <= 0 ||
            kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char dir[300];
        snprintf(dir, sizeof dir, "/tmp/%s", e->d_name);
        DIR *instances = opendir(dir);
        struct dirent *i;
        while (instances != NULL && (i = readdir(instances)) != NULL) {
            if (i->d_name[0] != '.' && cb__instance_check(i->d_name) == 0)
                tsup_shm_unlink(i->d_name);
        }
        if (instances != NULL)
            closedir(instances);
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    closedir(tmp);
}

static void env_init(void)
{
    if (env.owner == getpid())
        return;
    /* First use in this process (or in a child that inherited a copy of
     * the parent's registry: start it afresh). */
    memset(&env, 0, sizeof env);
    env.owner = getpid();
    static bool registered; /* a forked child inherits the handler too */
    if (!registered) {
        registered = true;
        atexit(cleanup_at_exit);
        sweep_dead();
    }
}

static void track(pid_t pid)
{
    env_init();
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (env.children[i] == 0) {
            env.children[i] = pid;
            return;
        }
    }
    cr_assert_fail("tsup: more than %d children in one test", MAX_CHILDREN);
}

void tsup_untrack(pid_t pid)
{
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (env.children[i] == pid)
            env.children[i] = 0;
    }
}

void tsup__track_instance(const char *instance)
{
    env_init();
    for (int i = 0; i < env.ninstances; i++) {
        if (strcmp(env.instances[i], instance) == 0)
            return;
    }
    cr_assert_lt(env.ninstances, MAX_INSTANCES, "tsup: too many daemon instances in one test");
    snprintf(env.instances[env.ninstances++], CB_INSTANCE_MAX + 1, "%s", instance);
}

/* Appends up to max bytes of s to out, keeping only [A-Za-z0-9_-]. */
static size_t put_sanitized(char *out, size_t at, const char *s, size_t max)
{
    for (size_t i = 0; s[i] != '\0' && max > 0; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-') {
            out[at++] = c;
            max--;
        }
    }
    return at;
}

const char *tsup_unique(const char *tag)
{
    env_init();
    cr_assert_lt(env.nnames, MAX_NAMES, "tsup: too many unique names in one test");
    char *out = env.names[env.nnames];
    const char *test = criterion_current_test ? criterion_current_test->name : "main";
    size_t at = put_sanitized(out, 0, tag, 8);
    out[at++] = '-';
    at = put_sanitized(out, at, test, 8);
    /* pid (at most 7 digits) and counter keep the name unique; the tag and
     * test prefix tell a human whose it is. 8+1+8+1+7+1+4 <= 32. */
    snprintf(out + at, CB_INSTANCE_MAX + 1 - at, "-%d-%d", (int)getpid(), ++env.nnames);
    return out;
}

const char *tsup_tmpdir(void)
{
    env_init();
    if (env.tmpdir[0] == '\0') {
        snprintf(env.tmpdir, sizeof env.tmpdir, "/tmp/cbdt-%d-XXXXXX", (int)getpid());
        cr_assert_not_null(mkdtemp(env.tmpdir), "tsup: mkdtemp %s: %s", env.tmpdir, strerror(errno));
    }
    return env.tmpdir;
}

/* In a new child: die with the test, start from a clean signal state. */
static void child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127); /* the test died before we could ask to die with it */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
}

pid_t tsup_fork(void)
{
    env_init();
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        child_setup(parent);
    else if (pid > 0)
        track(pid);
    return pid;
}

pid_t tsup_spawn(char *const argv[], const char *log_path)
{
    env_init();
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0)
        return -errno;
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        child_setup(parent);
        int null = open("/dev/null", O_RDONLY);
        if (null < 0 || dup2(null, 0) < 0 || dup2(log, 1) < 0 || dup2(log, 2) < 0)
            _exit(126);
        execv(argv[0], argv);
        dprintf(2, "tsup: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int err = -errno;
    close(log);
    if (pid < 0)
        return err;
    track(pid);
    return pid;
}

void *tsup_seg_map(const char *instance, unsigned flags, size_t *size)
{
    char state[CB_SHM_NAME_MAX], lanes[CB_SHM_NAME_MAX];
    cb__shm_names(instance, state, lanes);
    bool rw = flags & TSUP_MAP_RW;
    int fd = shm_open(flags & TSUP_MAP_LANES ? lanes : state, rw ? O_RDWR : O_RDONLY, 0);
    if (fd < 0)
        return NULL;
    struct stat st;
    void *p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        p = mmap(NULL, (size_t)st.st_size, rw ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return NULL;
    *size = (size_t)st.st_size;
    return p;
}

int64_t tsup_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct tsup_deadline tsup_deadline_in(int64_t timeout_ms)
{
    struct tsup_deadline dl = {tsup_now_ms() + timeout_ms};
    return dl;
}

bool tsup_deadline_wait(struct tsup_deadline *dl)
{
    if (tsup_now_ms() >= dl->end_ms)
        return false;
    struct timespec ts = {0, 2 * 1000 * 1000};
    nanosleep(&ts, NULL);
    return true;
}

const char *tsup_cbd_path(void)
{
    const char *e = getenv("TSUP_CBD"); /* another build of cbd, e.g. with sanitizers */
    return e != NULL && e[0] != '\0' ? e : CBD_PATH;
}

const char *tsup_cbd_fi_path(void)
{
    const char *e = getenv("TSUP_CBD_FI");
    return e != NULL && e[0] != '\0' ? e : CBD_FI_PATH;
}

const char *tsup_cbctl_path(void)
{
    const char *e = getenv("TSUP_CBCTL");
    return e != NULL && e[0] != '\0' ? e : CBCTL_PATH;
}

int tsup_run(char *const argv[], char **out, bool with_stderr)
{
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = tsup_fork();
    if (pid == 0) {
        dup2(p[1], 1);
        if (with_stderr)
            dup2(p[1], 2);
        close(p[0]);
        close(p[1]); /* a daemon it starts keeps only 1 and 2 (if they are ours) */
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    size_t used = 0, cap = 65536;
    char *buf = malloc(cap);
    cr_assert_not_null(buf);
    ssize_t n;
    while ((n = read(p[0], buf + used, cap - used - 1)) > 0) {
        used += (size_t)n;
        if (cap - used < 4096) {
            buf = realloc(buf, cap *= 2);
            cr_assert_not_null(buf);
        }
    }
    buf[used] = '\0';
    close(p[0]);
    int status;
    waitpid(pid, &status, 0);
    tsup_untrack(pid);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
