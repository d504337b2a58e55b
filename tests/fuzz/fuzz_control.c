/*
 * fuzz_control.c - what a peer sends on a control connection, through the
 * daemon's framing, cb__mp_unpack_map and every operation (control.c), on a
 * real struct cbd: a fresh segment of its own instance, the configuration
 * parsed from a file with a [circuit] and a [prefix] section (so reload,
 * quotas and sections run for real), the policy and its timers. The store
 * is a stub that accepts everything: stores have their own tests.
 *
 * Input: byte 0 picks the peer (bit 0: root, an admin; else uid 1000),
 * whether a subscriber (uid 1001) listens first (bit 1), and the read size
 * (bits 2-7: 1..64 bytes); byte 1 the time between reads (x 20 ms, so the
 * frame and idle timeouts are reached); the rest is the byte stream. A
 * connection that ends is replaced by a new one for the rest of the bytes.
 *
 * Properties, beyond ASan/UBSan/LSan's: every frame the daemon sends is at
 * most CB_FRAME_MAX and one msgpack map with "ok" (or a transition event);
 * after the connections are freed nothing is counted as open; the daemon's
 * circuits and the segment's index agree; the per-uid registration counts
 * add up to the circuits registered by non-admins.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cbd.h"
#include "frame.h"
#include "fuzz.h"

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

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    snprintf(dir, sizeof dir, "/tmp/fuzz_control-XXXXXX");
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(instance, sizeof instance, "fuzzctl-%d", (int)getpid());
    snprintf(conf, sizeof conf, "%s/cbd.conf", dir);
    snprintf(sock, sizeof sock, "%s/ctl.sock", dir);
    snprintf(store_uri, sizeof store_uri, "local:%s/state", dir);
    FILE *f = fopen(conf, "w");
    if (f == NULL)
        abort();
    fputs("[daemon]\nmax_circuits_per_uid = 4\nframe_timeout_ms = 1000\nidle_timeout_ms = 3000\n"
          "max_connections = 16\nmax_connections_per_uid = 2\nadmin_reserved_connections = 2\n"
          "[circuit \"fixed\"]\nfailure_threshold = 2\n[prefix \"pay\"]\nrecovery_timeout_ms = 100\n",
          f);
    fclose(f);
    const char *const a[] = {"cbd",        "--instance",      instance, "--socket", sock,  "--store", store_uri,
                             "-c",         conf,              "--capacity=8", "--lanes=2", "--lane-capacity=16",
                             "--history-capacity=16", "--log-level=error"};
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++)
        add_arg(a[i]);
    args[nargs] = NULL;
    atexit(cleanup);
    return 0;
}

static struct cbd *daemon_new(void)
{
    struct cbd *d = calloc(1, sizeof *d);
    if (d == NULL || cbd_config_parse_args(&d->cfg, nargs, args) != CBD_CONFIG_RUN)
        abort();
    cbd_log_threshold = (int)d->cfg.log_level;
    cbd_env_init(d); /* the daemon's own transition handling: history, log, store, subscribers */
    d->store_ops = &null_store;
    d->store_health = -1;
    unlink_segment(); /* each input starts from a fresh segment */
    if (uv_loop_init(&d->loop) < 0 || cbd_segment_open(&d->seg, &d->cfg) < 0 || cbd_timers_init(d) < 0)
        abort();
    cbd_control_configure(d);
    return d;
}

/* The invariants between the daemon's view, the segment and the counters. */
static void daemon_check(struct cbd *d)
{
    const struct cbd_control *ctl = &d->control;
    if (ctl->conns != NULL || ctl->nconns != 0 || ctl->nsubscribers != 0 || ctl->nuids != 0 || ctl->nlingering != 0)
        abort(); /* a connection freed and still counted */
    if (atomic_load_explicit(&d->seg.hdr->circuit_count, memory_order_relaxed) != d->ncircuits ||
        d->ncircuits > d->cfg.capacity)
        abort();
    uint64_t owned = 0, counted = 0;
    for (uint32_t i = 0; i < d->ncircuits; i++) {
        struct cbd_circuit *c = &d->circuits[i];
        if (c->slot != i)
            abort();
        if (c->removed) {
            if (cbd_circuit_find(d, c->rec->name) == c)
                abort(); /* a removed circuit is still found by name */
            continue;
        }
        if (cbd_circuit_find(d, c->rec->name) != c)
            abort(); /* the index does not lead back to the circuit */
        owned += c->owner_uid != CBD_OWNER_NONE;
    }
    for (size_t i = 0; i < d->nowners; i++)
        counted += d->owners[i].circuits;
    if (owned != counted)
        abort();
}

static void daemon_free(struct cbd *d)
{
    cbd_timers_close(d);
    uv_run(&d->loop, UV_RUN_NOWAIT); /* the timer's close callback */
    if (uv_loop_close(&d->loop) != 0)
        abort();
    cbd_segment_close(&d->seg);
    cbd_config_free(&d->cfg);
    free(d->circuits);
    free(d->owners);
    free(d->free_slots);
    free(d);
}

/* Every frame c was sent is whole, within CB_FRAME_MAX, and one map with
 * "ok" (a reply) or "event" (a transition). */
static void check_output(const struct cbd_conn *c)
{
    size_t len, off = 0;
    const char *out = cbd_control_conn_output(c, &len);
    while (off < len) {
        if (len - off < 4)
            abort();
        const unsigned char *p = (const unsigned char *)out + off;
        size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (n == 0 || n > CB_FRAME_MAX || n > len - off - 4)
            abort();
        msgpack_unpacked u;
        msgpack_object *map;
        int ok;
        char event[16];
        if (cb__mp_unpack_map(out + off + 4, n, &u, &map) < 0)
            abort();
        if (cb__mp_get_bool(map, "ok", &ok) < 0 && cb__mp_get_str(map, "event", event, sizeof event) < 0)
            abort();
        msgpack_unpacked_destroy(&u);
        off += 4 + n;
    }
}

static void conn_done(struct cbd_conn *c)
{
    if (c == NULL)
        return;
    check_output(c);
    cbd_control_conn_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t uid = data[0] & 1 ? 0 : 1000;
    size_t chunk = (size_t)(data[0] >> 2) + 1;
    uint64_t step_ms = (uint64_t)data[1] * 20, now = 1000;
    struct cbd *d = daemon_new();
    struct cbd_conn *sub = NULL, *c;
    if (data[0] & 2) {
        static const char subscribe[] = "\0\0\0\x0e\x81\xa2op\xa9subscribe";
        sub = cbd_control_conn_open(d, 1001, 1001, 1, now);
        if (sub != NULL)
            cbd_control_conn_feed(sub, subscribe, sizeof subscribe - 1, now);
    }
    c = cbd_control_conn_open(d, uid, uid, 2, now);
    for (size_t off = 2; off < size && c != NULL; off += chunk, now += step_ms) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (cbd_control_conn_tick(c, now) == CBD_CONN_OPEN &&
            cbd_control_conn_feed(c, data + off, n, now) == CBD_CONN_OPEN)
            continue;
        conn_done(c); /* ended: the rest of the bytes go to a new connection */
        c = cbd_control_conn_open(d, uid, uid, 2, now);
    }
    conn_done(c);
    conn_done(sub);
    daemon_check(d);
    daemon_free(d);
    return 0;
}
