/*
 * fuzz_control.c - what a peer sends on a control connection, through the
 * daemon's framing, cb__mp_unpack_map and every operation (control.c, ops.c), on a
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
#include "fuzz_daemon.h"


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
    struct cbd *d = fuzz_daemon_new();
    struct cbd_conn *sub = NULL, *c;
    if (data[0] & 2) {
        static const char subscribe[] = "\0\0\0\x0e\x81\xa2op\xa9subscribe";
        sub = cbd_control_conn_open(&d->control, 1001, 1001, 1, now);
        if (sub != NULL)
            cbd_control_conn_feed(sub, subscribe, sizeof subscribe - 1, now);
    }
    c = cbd_control_conn_open(&d->control, uid, uid, 2, now);
    for (size_t off = 2; off < size && c != NULL; off += chunk, now += step_ms) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (cbd_control_conn_tick(c, now) == CBD_CONN_OPEN &&
            cbd_control_conn_feed(c, data + off, n, now) == CBD_CONN_OPEN)
            continue;
        conn_done(c); /* ended: the rest of the bytes go to a new connection */
        c = cbd_control_conn_open(&d->control, uid, uid, 2, now);
    }
    conn_done(c);
    conn_done(sub);
    fuzz_daemon_check(d);
    fuzz_daemon_free(d);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz_daemon_init("fuzzctl",
                     "[daemon]\nmax_circuits_per_uid = 4\nframe_timeout_ms = 1000\nidle_timeout_ms = 3000\n"
                     "max_connections = 16\nmax_connections_per_uid = 2\nadmin_reserved_connections = 2\n"
                     "[circuit \"fixed\"]\nfailure_threshold = 2\n[prefix \"pay\"]\nrecovery_timeout_ms = 100\n");
    return 0;
}
