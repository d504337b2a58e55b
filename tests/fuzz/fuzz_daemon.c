/*
 * fuzz_daemon.c - the struct cbd the harnesses drive (fuzz_daemon.h).
 */
#define _GNU_SOURCE
#include "fuzz_daemon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char dir[64], instance[CB_INSTANCE_MAX + 1], conf[128], sock[128], store_uri[128];
static char *args[32];
static int nargs;

/* ---- a store that accepts everything -------------------------------------------- */

static int null_create(struct cbd_store **out, const char *uri, const struct cbd_store_hooks *hooks,
                       const char **err)
{
    (void)uri, (void)hooks, (void)err;
    *out = NULL;
    return 0;
}
static void null_track(struct cbd_store *s, const char *name, const cb_config *cfg) { (void)s, (void)name, (void)cfg; }
static void null_transition(struct cbd_store *s, const struct cbd_store_state *st, int64_t prev)
{
    (void)s, (void)st, (void)prev;
}

static void null_try_probe(struct cbd_store *s, const char *name, int64_t opened_at, uint32_t lease_s)
{
    (void)s, (void)name, (void)opened_at, (void)lease_s;
}

static const struct cbd_store_ops null_store = {.scheme = "local", .create = null_create, .track = null_track,
                                                .transition = null_transition, .try_probe = null_try_probe};

/* ---- one daemon per input ------------------------------------------------------------- */

static void unlink_segment(void)
{
    char state[CB_SHM_NAME_MAX], lanes[CB_SHM_NAME_MAX];
    cb__shm_names(instance, state, lanes);
    shm_unlink(state);
    shm_unlink(lanes);
}

static void cleanup(void)
{
    unlink_segment();
    unlink(conf);
    rmdir(dir);
}

static void add_arg(const char *a)
{
    args[nargs++] = strdup(a);
}

void fuzz_daemon_init(const char *tag, const char *config_text)
{
    snprintf(dir, sizeof dir, "/tmp/fuzz_%s-XXXXXX", tag);
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(instance, sizeof instance, "%s-%d", tag, (int)getpid());
    snprintf(conf, sizeof conf, "%s/cbd.conf", dir);
    snprintf(sock, sizeof sock, "%s/ctl.sock", dir);
    snprintf(store_uri, sizeof store_uri, "local:%s/state", dir);
    FILE *f = fopen(conf, "w");
    if (f == NULL)
        abort();
    fputs(config_text, f);
    fclose(f);
    const char *const a[] = {"cbd",        "--instance",      instance, "--socket", sock,  "--store", store_uri,
                             "-c",         conf,              "--capacity=8", "--lanes=2", "--lane-capacity=16",
                             "--history-capacity=16", "--log-level=error"};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
        add_arg(a[i]);
    args[nargs] = NULL;
    atexit(cleanup);
}

struct cbd *fuzz_daemon_new(void)
{
    struct cbd *d = calloc(1, sizeof *d);
    if (d == NULL || cbd_config_parse_args(&d->cfg, nargs, args) != CBD_CONFIG_RUN)
        abort();
    cbd_log_threshold = (int)d->cfg.log_level;
    d->store_ops = &null_store;
    d->store_health = -1;
    unlink_segment(); /* each input starts from a fresh segment */
    /* the daemon's own transition handling: history, log, store, subscribers */
    if (uv_loop_init(&d->loop) < 0 || cbd_open(d) < 0)
        abort();
    cbd_control_configure(&d->control);
    return d;
}

/* The invariants between the daemon's view, the segment and the counters. */
void fuzz_daemon_check(struct cbd *d)
{
    const struct cbd_control *ctl = &d->control;
    if (ctl->conns != NULL || ctl->nconns != 0 || ctl->nsubscribers != 0 || ctl->nuids != 0 || ctl->nlingering != 0)
        abort(); /* a connection freed and still counted */
    if (atomic_load_explicit(&d->seg.hdr->circuit_count, memory_order_relaxed) != d->circuits.n ||
        d->circuits.n > d->cfg.capacity)
        abort();
    uint64_t owned = 0, counted = 0;
    for (uint32_t i = 0; i < d->circuits.n; i++) {
        struct cbd_circuit *c = &d->circuits.by_slot[i];
        if (c->slot != i)
            abort();
        if (c->removed) {
            if (cbd_circuits_find(&d->circuits, c->rec->name) == c)
                abort(); /* a removed circuit is still found by name */
            continue;
        }
        if (cbd_circuits_find(&d->circuits, c->rec->name) != c)
            abort(); /* the index does not lead back to the circuit */
        owned += c->owner_uid != CBD_OWNER_NONE;
    }
    for (size_t i = 0; i < d->circuits.nowners; i++)
        counted += d->circuits.owners[i].circuits;
    if (owned != counted)
        abort();
}

void fuzz_daemon_free(struct cbd *d)
{
    cbd_timers_close(&d->timers);
    uv_run(&d->loop, UV_RUN_NOWAIT); /* the timer's close callback */
    if (uv_loop_close(&d->loop) != 0)
        abort();
    cbd_segment_close(&d->seg);
    cbd_config_free(&d->cfg);
    cbd_circuits_free(&d->circuits);
    free(d);
}

