/*
 * test_ctl.c - libcb's control connection (ctl.c) against a peer the test
 * drives byte by byte: replies are given to the registration whose id they
 * carry whatever their order, replies that answer nothing are dropped and
 * counted, a reply split across reads is assembled, an answer naming a slot
 * that is not the circuit's binds nothing, queuing never waits for a peer
 * that does not read, a waiting registration leaves the client lock free,
 * and a forked child never writes on its parent's connection.
 *
 * The client is built by hand around an in-memory segment (the geometry of
 * segment.h, a few records and their index entries), so the "daemon" here
 * is the test itself: it accepts on a unix socket in a private directory,
 * reads the requests and writes whatever replies the case needs.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "frame.h"

#define CAPACITY 8u

/* ---- a client around an in-memory segment ---------------------------------- */

static struct cb_seg_header *hdr;
static struct cb__map map;
static cb_client cl;
static int listener = -1;
static char dir[64];

static void seg_init(void)
{
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(CAPACITY, 1, 16, 16, &g), 0);
    hdr = aligned_alloc(4096, g.state_size);
    cr_assert_not_null(hdr);
    memset(hdr, 0, g.state_size);
    hdr->capacity = CAPACITY;
    hdr->index_slots = g.index_slots;
    hdr->index_offset = g.index_offset;
    hdr->records_offset = g.records_offset;
    hdr->history_offset = g.history_offset;
    hdr->history_capacity = g.history_capacity;
    map.hdr = hdr;
    map.capacity = CAPACITY;
    map.records = (uintptr_t)hdr + g.records_offset;
    map.records_bytes = (uint64_t)CAPACITY * CB_SEG_RECORD_SIZE;
}

/* What the daemon does before it answers a registration: the name gets a
 * record and an index entry. Returns the slot. */
static uint32_t seg_add(const char *name)
{
    uint32_t slot = atomic_load(&hdr->circuit_count);
    cr_assert_lt(slot, CAPACITY);
    struct cb_seg_record *r = CB_SEG_RECORD(hdr, slot);
    size_t len = strlen(name);
    uint64_t hash = cb__name_hash(name, len);
    memcpy(r->name, name, len + 1);
    atomic_store(&r->name_len, (uint16_t)len);
    atomic_store(&r->name_hash, hash);
    atomic_store(&r->state_word, cb_seg_state_word(CB_CLOSED, 0, 0, 1));
    _Atomic uint32_t *index = CB_SEG_INDEX(hdr);
    uint32_t mask = hdr->index_slots - 1, i = (uint32_t)hash & mask;
    while (atomic_load(&index[i]) != 0)
        i = (i + 1) & mask;
    atomic_store(&index[i], slot + 1);
    atomic_store(&hdr->circuit_count, slot + 1);
    return slot;
}

static void setup(void)
{
    seg_init();
    snprintf(dir, sizeof dir, "/tmp/cb-test-ctl-%d-XXXXXX", (int)getpid());
    cr_assert_not_null(mkdtemp(dir));
    snprintf(map.socket_path, sizeof map.socket_path, "%s/ctl.sock", dir);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strcpy(a.sun_path, map.socket_path);
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    cr_assert_eq(bind(listener, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(listener, 8), 0);
    pthread_mutex_init(&cl.lock, NULL);
    pthread_mutex_init(&cl.history_lock, NULL);
    cl.ctl.fd = -1;
    cl.ctl.next_id = 1;
    atomic_store(&cl.map, &map);
}

static void teardown(void)
{
    cb__ctl_free(&cl);
    close(listener);
    unlink(map.socket_path);
    rmdir(dir);
    free(hdr);
}

TestSuite(ctl, .init = setup, .fini = teardown, .timeout = 30);

static cb_circuit *handle(const char *name)
{
    cb_circuit *c = calloc(1, sizeof *c);
    c->client = &cl;
    c->head.state_word = &cb__unbound_word;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->hash = cb__name_hash(c->name, strlen(c->name));
    return c;
}

static bool bound_to(const cb_circuit *c, uint32_t slot)
{
    return c->head.state_word == (const uint64_t *)&CB_SEG_RECORD(hdr, slot)->state_word;
}

/* ---- the daemon's side ----------------------------------------------------- */

struct request {
    char name[CB_NAME_MAX + 1];
    uint64_t id;
};

/* Reads one request frame from fd (blocking). */
static struct request read_request(int fd)
{
    char *buf;
    size_t len;
    cr_assert_eq(cb__frame_read(fd, &buf, &len, 5000), 0);
    msgpack_unpacked u;
    msgpack_object *m;
    cr_assert_eq(cb__mp_unpack_map(buf, len, &u, &m), 0);
    struct request r;
    cr_assert_eq(cb__mp_get_str(m, "name", r.name, sizeof r.name), 0);
    cr_assert_eq(cb__mp_get_u64(m, "id", &r.id), 0, "a request without an id");
    msgpack_unpacked_destroy(&u);
    free(buf);
    return r;
}

/* A register reply: {"ok":true,"id":id,"slot":slot} (without the id when
 * with_id is false), framed, into out; its length. */
static size_t reply_frame(char *out, bool with_id, uint64_t id, uint64_t slot)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, with_id ? 3 : 2);
    cb__mp_kv_bool(&pk, "ok", 1);
    if (with_id)
        cb__mp_kv_u64(&pk, "id", id);
    cb__mp_kv_u64(&pk, "slot", slot);
    cb__frame_header((unsigned char *)out, sb.size);
    memcpy(out + CB_FRAME_HEADER, sb.data, sb.size);
    size_t n = CB_FRAME_HEADER + sb.size;
    msgpack_sbuffer_destroy(&sb);
    return n;
}

static void send_reply(int fd, bool with_id, uint64_t id, uint64_t slot)
{
    char buf[128];
    size_t n = reply_frame(buf, with_id, id, slot);
    cr_assert_eq(write(fd, buf, n), (ssize_t)n);
}

static int accept_one(void)
{
    struct pollfd p = {.fd = listener, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 5000), 1, "no connection came");
    int fd = accept(listener, NULL, NULL);
    cr_assert_geq(fd, 0);
    return fd;
}

static void register_locked(cb_circuit *c)
{
    pthread_mutex_lock(&cl.lock);
    cr_assert_eq(cb__ctl_register(&cl, c, false), 0);
    pthread_mutex_unlock(&cl.lock);
}

/* c's registration as the daemon receives it on a new connection (*fd). */
static struct request registered(cb_circuit *c, int *fd)
{
    register_locked(c);
    *fd = accept_one();
    return read_request(*fd);
}

static void pump(void)
{
    pthread_mutex_lock(&cl.lock);
    cb__ctl_pump(&cl);
    pthread_mutex_unlock(&cl.lock);
}

/* Pumps until cond or 5 s (a liveness bound, not a timing assertion). */
#define pump_until(cond)                                                                                 \
    ({                                                                                                   \
        int tries = 0;                                                                                   \
        while (!(cond) && tries++ < 5000) {                                                              \
            pump();                                                                                      \
            usleep(1000);                                                                                \
        }                                                                                                \
        (cond);                                                                                          \
    })

/* ---- cases ------------------------------------------------------------------ */

Test(ctl, replies_go_to_the_registration_with_their_id_and_the_rest_are_dropped)
{
    cb_circuit *a = handle("payments"), *b = handle("search");
    register_locked(a);
    register_locked(b);
    int fd = accept_one();
    struct request ra = read_request(fd), rb = read_request(fd);
    cr_assert_str_eq(ra.name, "payments");
    cr_assert_str_eq(rb.name, "search");
    cr_assert_neq(ra.id, rb.id, "two requests share an id");
    uint32_t sa = seg_add("payments"), sb = seg_add("search");
    /* Stray replies name the slot of the circuit queued second: given to
     * the head of the queue, they would bind it to the wrong circuit. */
    send_reply(fd, true, rb.id + ra.id + 100, sb); /* answers no request */
    send_reply(fd, false, 0, sb);                  /* carries no id */
    send_reply(fd, true, rb.id, sb);               /* out of order */
    send_reply(fd, true, ra.id, sa);
    cr_assert(pump_until(bound_to(a, sa) && bound_to(b, sb)), "the answers were not given to their requests");
    cr_assert_eq(cl.ctl.unmatched, 2);
    cr_assert_eq(a->reg_id, 0);
    cr_assert_eq(b->reg_id, 0);
    cr_assert_null(cl.ctl.head, "answered registrations are still queued");
    close(fd);
    free(a);
    free(b);
}

Test(ctl, a_reply_split_across_reads_is_assembled)
{
    cb_circuit *c = handle("payments");
    int fd;
    struct request r = registered(c, &fd);
    uint32_t slot = seg_add("payments");
    char buf[128];
    size_t n = reply_frame(buf, true, r.id, slot);
    for (size_t i = 0; i < n; i++) {
        cr_assert(!bound_to(c, slot), "bound before the reply's byte %zu of %zu arrived", i, n);
        cr_assert_eq(write(fd, buf + i, 1), 1);
        pump_until(cl.ctl.in_len == i + 1 || bound_to(c, slot));
    }
    cr_assert(pump_until(bound_to(c, slot)));
    close(fd);
    free(c);
}

Test(ctl, an_answer_naming_a_slot_that_is_not_the_circuit_binds_nothing)
{
    cb_circuit *c = handle("payments");
    int fd;
    struct request r = registered(c, &fd);
    uint32_t other = seg_add("search");
    seg_add("payments");
    send_reply(fd, true, r.id, other);
    cr_assert(pump_until(c->reg_answers == 1));
    cr_assert_eq(c->reg_err, -ESTALE);
    cr_assert_eq(c->head.state_word, &cb__unbound_word);
    cr_assert(cl.check_replaced, "the client was not told its mapping may be older than the daemon's");
    close(fd);
    free(c);
}

Test(ctl, queuing_registrations_never_waits_for_a_peer_that_does_not_read)
{
    enum { N = 20000 };
    static cb_circuit *cs[N];
    int queued = 0, refused = 0;
    pthread_mutex_lock(&cl.lock);
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "downstream.%d", i);
        cs[i] = handle(name);
        int rc = cb__ctl_register(&cl, cs[i], false);
        cr_assert(rc == 0 || rc == -EAGAIN, "register %d: %d", i, rc);
        rc == 0 ? queued++ : refused++;
    }
    pthread_mutex_unlock(&cl.lock);
    /* The socket buffer filled, then the out buffer reached its bound:
     * the rest were refused at once, to be tried again later. */
    cr_assert_gt(queued, 0);
    cr_assert_gt(refused, 0, "%d registrations queued without bound", queued);
    cr_assert_leq(cl.ctl.out_len - cl.ctl.out_sent, 256u * 1024u + 4096u);
    cb__ctl_drop(&cl, false);
    for (int i = 0; i < N; i++) {
        cr_assert_eq(cs[i]->reg_id, 0, "a dropped connection left a registration in flight");
        free(cs[i]);
    }
}

struct waiter {
    cb_circuit *c;
    int rc;
};

static void *wait_registered(void *arg)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&cl.lock);
    uint32_t answers = w->c->reg_answers;
    cr_assert_eq(cb__ctl_register(&cl, w->c, false), 0);
    w->rc = cb__ctl_wait(&cl, w->c, answers, cb__clock_ns(CLOCK_MONOTONIC) + 10000000000ll);
    pthread_mutex_unlock(&cl.lock);
    return NULL;
}

Test(ctl, a_registration_waited_for_leaves_the_client_lock_free)
{
    struct waiter w = {.c = handle("payments"), .rc = 1};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wait_registered, &w), 0);
    int fd = accept_one();
    struct request r = read_request(fd);
    /* The waiter has sent its request and waits for the answer: the lock
     * is free for everyone else meanwhile. */
    bool taken = false;
    for (int i = 0; i < 5000 && !taken; i++) {
        taken = pthread_mutex_trylock(&cl.lock) == 0;
        if (!taken)
            usleep(1000);
    }
    cr_assert(taken, "the client lock stayed held while a registration waited for its answer");
    pthread_mutex_unlock(&cl.lock);
    uint32_t slot = seg_add("payments");
    send_reply(fd, true, r.id, slot);
    pthread_join(th, NULL);
    cr_assert_eq(w.rc, 0);
    cr_assert(bound_to(w.c, slot));
    close(fd);
    free(w.c);
}

Test(ctl, a_forked_child_connects_its_own_and_never_writes_on_its_parent_s)
{
    cb_circuit *a = handle("payments"), *b = handle("search");
    register_locked(a);
    int parent_conn = accept_one();
    cr_assert_str_eq(read_request(parent_conn).name, "payments");

    /* No fork handler runs for this hand-made client: the pid check alone
     * keeps the child off the inherited connection. */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        pthread_mutex_lock(&cl.lock);
        int rc = cb__ctl_register(&cl, b, false);
        pthread_mutex_unlock(&cl.lock);
        _exit(rc == 0 ? 0 : 1);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int child_conn = accept_one();
    cr_assert_str_eq(read_request(child_conn).name, "search", "the child's request is not on its own connection");
    struct pollfd p = {.fd = parent_conn, .events = POLLIN};
    cr_assert_eq(poll(&p, 1, 0), 0, "the child wrote on its parent's connection");

    /* The parent's connection is as it was. */
    send_reply(parent_conn, true, a->reg_id, seg_add("payments"));
    cr_assert(pump_until(a->reg_answers == 1));
    cr_assert_eq(a->reg_err, 0);
    close(child_conn);
    close(parent_conn);
    free(a);
    free(b);
}

Test(ctl, frames_are_recognised_only_when_whole)
{
    char buf[CB_FRAME_HEADER + 3];
    size_t n;
    cb__frame_header((unsigned char *)buf, 3);
    memcpy(buf + CB_FRAME_HEADER, "\x81\xa1x", 3); /* whatever: peek does not parse the payload */
    for (size_t len = 0; len < sizeof buf; len++) {
        n = 0;
        cr_assert_eq(cb__frame_peek(buf, len, &n), 0, "%zu bytes taken for a whole frame", len);
    }
    cr_assert_eq(cb__frame_peek(buf, sizeof buf, &n), 1);
    cr_assert_eq(n, 3);
    cb__frame_header((unsigned char *)buf, 0);
    cr_assert_eq(cb__frame_peek(buf, CB_FRAME_HEADER, &n), -EMSGSIZE);
    cb__frame_header((unsigned char *)buf, CB_FRAME_MAX + 1);
    cr_assert_eq(cb__frame_peek(buf, CB_FRAME_HEADER, &n), -EMSGSIZE);
}
