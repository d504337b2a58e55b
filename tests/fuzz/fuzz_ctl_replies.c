/*
 * fuzz_ctl_replies.c - what libcb reads on its control connection
 * (libcb/src/ctl.c): the byte stream of replies, in arbitrary pieces.
 *
 * A hand-made client maps an in-memory segment holding three circuits and
 * has three registrations in flight (ids 1, 2, 3) on one end of a
 * socketpair; the input is written to the other end in pieces whose sizes
 * the input's first byte picks, with cb__ctl_pump reading after each, then
 * the peer closes. Property: no crash, no leak, no read outside what was
 * received, and a handle is only ever bound to the record of its own name
 * (whatever ids and slots the bytes claim), else the harness traps.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"
#include "fuzz.h"

#define CAPACITY 8u

static const char *const names[] = {"payments", "search", "inventory"};
enum { N = sizeof names / sizeof names[0] };

static struct cb_seg_header *hdr;
static struct cb__map map;
static cb_client cl;
static cb_circuit handles[N];

/* The records of names, as the daemon would have written them. */
static void segment_init(void)
{
    struct cb_seg_geometry g;
    if (cb__seg_geometry(CAPACITY, 1, 16, 16, &g) != 0 || (hdr = aligned_alloc(4096, g.state_size)) == NULL)
        abort();
    memset(hdr, 0, g.state_size);
    hdr->capacity = CAPACITY;
    hdr->index_slots = g.index_slots;
    hdr->index_offset = g.index_offset;
    hdr->records_offset = g.records_offset;
    _Atomic uint32_t *index = CB_SEG_INDEX(hdr);
    for (uint32_t slot = 0; slot < N; slot++) {
        struct cb_seg_record *r = CB_SEG_RECORD(hdr, slot);
        size_t len = strlen(names[slot]);
        uint64_t hash = cb__name_hash(names[slot], len);
        memcpy(r->name, names[slot], len + 1);
        atomic_store(&r->name_len, (uint16_t)len);
        atomic_store(&r->name_hash, hash);
        atomic_store(&r->state_word, cb_seg_state_word(CB_CLOSED, 0, 0, 1));
        uint32_t i = (uint32_t)hash & (hdr->index_slots - 1);
        while (atomic_load(&index[i]) != 0)
            i = (i + 1) & (hdr->index_slots - 1);
        atomic_store(&index[i], slot + 1);
    }
    atomic_store(&hdr->circuit_count, N);
    map.hdr = hdr;
    map.capacity = CAPACITY;
    map.records = (uintptr_t)hdr + g.records_offset;
    map.records_bytes = (uint64_t)CAPACITY * CB_SEG_RECORD_SIZE;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    segment_init();
    pthread_mutex_init(&cl.lock, NULL);
    cl.ctl.fd = -1;
    if ((cl.ctl.in = malloc(CB__CTL_IN_SIZE)) == NULL)
        abort();
    atomic_store(&cl.map, &map);
    return 0;
}

/* A connection with the three registrations in flight; the peer's end. */
static int connect_with_requests_in_flight(void)
{
    int sv[2];
    struct stat st;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0 || fstat(sv[0], &st) < 0)
        abort();
    cl.ctl.fd = sv[0];
    cl.ctl.pid = getpid();
    cl.ctl.dev = st.st_dev;
    cl.ctl.ino = st.st_ino;
    cl.ctl.next_id = N + 1;
    for (uint32_t i = 0; i < N; i++) {
        cb_circuit *c = &handles[i];
        memset(c, 0, sizeof *c);
        c->client = &cl;
        c->head.state_word = &cb__unbound_word;
        strcpy(c->name, names[i]);
        c->hash = cb__name_hash(c->name, strlen(c->name));
        c->reg_id = i + 1;
        if (i > 0)
            handles[i - 1].reg_next = c;
    }
    cl.ctl.head = &handles[0];
    cl.ctl.tail = &handles[N - 1];
    return sv[1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > 4 * CB_FRAME_MAX)
        return 0;
    if (hdr == NULL)
        LLVMFuzzerInitialize(NULL, NULL);
    size_t piece = (size_t)data[0] * 97 + 1; /* 1 .. 24736 bytes per read */
    data++;
    size--;
    int peer = connect_with_requests_in_flight();
    for (size_t off = 0; off < size && cl.ctl.fd >= 0;) {
        size_t n = size - off < piece ? size - off : piece;
        ssize_t w = write(peer, data + off, n);
        if (w > 0)
            off += (size_t)w;
        cb__ctl_pump(&cl); /* drains the socket: the next write finds room */
    }
    close(peer);
    cb__ctl_pump(&cl); /* the rest, then the end of the stream */
    for (uint32_t i = 0; i < N; i++) {
        const uint64_t *p = handles[i].head.state_word;
        if (p != &cb__unbound_word && p != (const uint64_t *)&CB_SEG_RECORD(hdr, i)->state_word)
            __builtin_trap(); /* bound to another circuit's record */
    }
    cb__ctl_drop(&cl, false);
    return 0;
}
