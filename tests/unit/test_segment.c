/*
 * test_segment.c - the layout helpers every side of the segment relies on
 * (segment.c): name and instance rules, the name hash, geometry, header
 * validation of a segment a reader did not create, the lock-free lookup,
 * the shared boolean parser and the config bounds.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

/* fn gives want for each string of the array in. */
#define EXPECT_EACH(fn, in, want) expect_each(#fn, fn, in, sizeof in / sizeof in[0], want)
static void expect_each(const char *fname, int (*fn)(const char *), const char *const *in, size_t n, int want)
{
    for (size_t i = 0; i < n; i++) {
        int rc = fn(in[i]);
        cr_assert_eq(rc, want, "%s(\"%s\") = %d, not %d", fname, in[i], rc, want);
    }
}

/* ---- names --------------------------------------------------------------- */

struct name_case {
    char name[160];
    int valid;
};

ParameterizedTestParameters(segment, circuit_name_rules_accept_and_reject_as_documented)
{
    /* Powertools accepts any string as a name and DynamoDB keys any UTF-8:
     * so does cbd, up to CB_NAME_MAX bytes. */
    static struct name_case cases[] = {
        {"a", 1},
        {"payments", 1},
        {"svc.payments:charge/eu@prod+blue=1-a_b", 1},
        {"a b", 1},
        {"orders#eu-west-1", 1},
        {"caf\xc3\xa9", 1},                  /* 2-byte UTF-8 */
        {"\xe2\x82\xac price", 1},          /* 3-byte */
        {"\xf0\x9f\x90\x8d python", 1},     /* 4-byte */
        {"quote\" back\\slash; semi", 1},
        {"tab\there", 1},                   /* a control character: shown escaped */
        {"", 0},
        {"\xff", 0},                        /* not UTF-8 */
        {"\xc3", 0},                        /* truncated sequence */
        {"\xc0\xaf", 0},                    /* overlong */
        {"\xed\xa0\x80", 0},                /* a surrogate */
        {"\xf4\x90\x80\x80", 0},            /* past U+10FFFF */
        {"a\x80", 0},                       /* a lone continuation byte */
    };
    return cr_make_param_array(struct name_case, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct name_case *c, segment, circuit_name_rules_accept_and_reject_as_documented)
{
    int rc = cb__name_check(c->name);
    cr_assert_eq(rc, c->valid ? 0 : -EINVAL, "cb__name_check(\"%s\") = %d", c->name, rc);
}

Test(segment, circuit_names_of_127_bytes_pass_and_128_bytes_fail)
{
    char name[CB_NAME_MAX + 2];
    memset(name, 'n', sizeof name);
    name[CB_NAME_MAX] = '\0';
    cr_assert_eq(cb__name_check(name), 0);
    name[CB_NAME_MAX] = 'n';
    name[CB_NAME_MAX + 1] = '\0';
    cr_assert_eq(cb__name_check(name), -EINVAL);
    cr_assert_eq(cb__name_check(NULL), -EINVAL);
    /* a character that would straddle the limit makes the name too long */
    memset(name, 'n', sizeof name);
    memcpy(name + CB_NAME_MAX - 1, "\xc3\xa9", 2);
    name[CB_NAME_MAX + 1] = '\0';
    cr_assert_eq(cb__name_check(name), -EINVAL);
}

Test(segment, a_plain_name_is_shown_as_it_is_and_any_other_quoted_and_escaped)
{
    char buf[CB_NAME_DISPLAY_MAX];
    const char *plain = "svc.payments:charge/eu@prod+blue=1-a_b";
    cr_assert_eq(cb__name_display(plain, buf), plain, "a plain name is not copied");
    cr_assert_str_eq(cb__name_display("a b", buf), "\"a b\"");
    cr_assert_str_eq(cb__name_display("say \"hi\"\\", buf), "\"say \\\"hi\\\"\\\\\"");
    cr_assert_str_eq(cb__name_display("line\nbreak\x7f", buf), "\"line\\x0abreak\\x7f\"", "control characters escaped");
    cr_assert_str_eq(cb__name_display("caf\xc3\xa9", buf), "\"caf\xc3\xa9\"", "UTF-8 shown as it is");
    cr_assert_str_eq(cb__name_display("c1\xc2\x85", buf), "\"c1\\xc2\\x85\"", "C1 controls escaped");
    char longest[CB_NAME_MAX + 1];
    memset(longest, '\x01', CB_NAME_MAX);
    longest[CB_NAME_MAX] = '\0';
    cr_assert_eq(strlen(cb__name_display(longest, buf)), 2 + 4 * CB_NAME_MAX, "the worst case fits");
}

Test(segment, instance_names_follow_their_own_stricter_rules)
{
    static const char *const good[] = {"default", "a", "A-b_9", "0123456789abcdef0123456789abcdef"};
    static const char *const bad[] = {"", "a.b", "a/b", "a b", "a:b", "0123456789abcdef0123456789abcdef0",
                                      "caf\xc3\xa9", "a\n"};
    EXPECT_EACH(cb__instance_check, good, 0);
    EXPECT_EACH(cb__instance_check, bad, -EINVAL);
    cr_assert_eq(cb__instance_check(NULL), -EINVAL);
}

Test(segment, shm_names_are_derived_from_the_instance)
{
    char state[CB_SHM_NAME_MAX], lanes[CB_SHM_NAME_MAX];
    cb__shm_names("0123456789abcdef0123456789abcdef", state, lanes);
    cr_assert_str_eq(state, "/cbd.0123456789abcdef0123456789abcdef");
    cr_assert_str_eq(lanes, "/cbd.0123456789abcdef0123456789abcdef.lanes");
}

/* ---- hash ------------------------------------------------------------------ */

#define NHASH 100000

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t *hash_names(const char *fmt)
{
    uint64_t *h = malloc(NHASH * sizeof *h);
    cr_assert_not_null(h);
    for (int i = 0; i < NHASH; i++) {
        char name[64];
        int n = snprintf(name, sizeof name, fmt, i);
        h[i] = cb__name_hash(name, (size_t)n);
    }
    return h;
}

Test(segment, name_hash_has_no_collisions_over_100k_similar_names)
{
    uint64_t *h = hash_names("svc-%d");
    qsort(h, NHASH, sizeof *h, cmp_u64);
    for (int i = 1; i < NHASH; i++)
        cr_assert_neq(h[i], h[i - 1], "two of 100k names hash to %016llx", (unsigned long long)h[i]);
    free(h);
}

Test(segment, name_hash_spreads_sequential_names_over_the_low_bits)
{
    /* The index uses hash & (slots - 1): sequential names must fill the
     * low bits about as a random function would. 100k keys into 2^16
     * buckets leave ~51.5k distinct buckets at random; a hash that ignored
     * part of the name or left low bits constant would fall far below. */
    uint64_t *h = hash_names("payments-eu-%d");
    static unsigned char seen[1 << 16];
    int distinct = 0, max_bucket = 0;
    static int count[1 << 10];
    for (int i = 0; i < NHASH; i++) {
        unsigned low16 = (unsigned)(h[i] & 0xffff);
        distinct += !seen[low16];
        seen[low16] = 1;
        int c = ++count[h[i] & 0x3ff];
        max_bucket = c > max_bucket ? c : max_bucket;
    }
    free(h);
    cr_assert_gt(distinct, 45000, "only %d distinct low-16-bit values over 100k names", distinct);
    /* mean bucket of 1024 is ~98: the largest stays far below 2x */
    cr_assert_lt(max_bucket, 196, "a low-10-bit bucket holds %d of 100k names", max_bucket);
}

Test(segment, name_hash_depends_on_length_and_every_byte)
{
    const char *n = "payments";
    uint64_t full = cb__name_hash(n, 8);
    cr_assert_neq(full, cb__name_hash(n, 7));
    cr_assert_neq(cb__name_hash("", 0), cb__name_hash("a", 1));
    for (int i = 0; i < 8; i++) {
        char m[9];
        memcpy(m, n, 9);
        m[i] ^= 1;
        cr_assert_neq(cb__name_hash(m, 8), full, "flipping byte %d kept the hash", i);
        cr_assert_neq(cb__name_hash(m, 8) & 0xffff, full & 0xffff, "flipping byte %d kept the low bits", i);
    }
}

/* ---- geometry ---------------------------------------------------------------- */

/* cb_allow reads the state word on every call: nothing written on every
 * drain (the version counter, the versions) may share its cache line, or
 * every publish would cost every worker a cache miss. */
Test(segment, nothing_written_on_every_drain_shares_the_state_words_cache_line)
{
    size_t word_line = offsetof(struct cb_seg_record, state_word) / CB_CACHELINE;
    cr_assert_eq(offsetof(struct cb_seg_record, state_word), 0, "the state word is frozen at offset 0");
    cr_assert_neq(offsetof(struct cb_seg_record, vseq) / CB_CACHELINE, word_line);
    for (int v = 0; v < 2; v++) {
        size_t first = (offsetof(struct cb_seg_record, version) + v * sizeof(struct cb_seg_version)) / CB_CACHELINE;
        size_t last = first + (sizeof(struct cb_seg_version) - 1) / CB_CACHELINE;
        cr_assert(word_line < first || word_line > last, "version %d shares the state word's line", v);
    }
    cr_assert_eq(_Alignof(struct cb_seg_record), CB_CACHELINE, "records start on a line");
}

static void check_geometry(uint32_t capacity, uint32_t lanes, uint32_t lane_cap, uint32_t hist)
{
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(capacity, lanes, lane_cap, hist, &g), 0, "capacity %u", capacity);
    cr_assert_eq(g.capacity, capacity);
    cr_assert_geq(g.index_slots, 2ull * capacity);
    cr_assert_eq(g.index_slots & (g.index_slots - 1), 0, "index slots are a power of two");
    cr_assert_geq(g.index_offset, CB_SEG_HEADER_SIZE);
    cr_assert_geq(g.records_offset, g.index_offset + 4ull * g.index_slots, "index overlaps records");
    cr_assert_eq(g.records_offset % CB_CACHELINE, 0);
    cr_assert_eq(g.history_offset, g.records_offset + (uint64_t)capacity * CB_SEG_RECORD_SIZE);
    cr_assert_eq(g.history_offset % CB_CACHELINE, 0);
    cr_assert_geq(g.state_size, g.history_offset + (uint64_t)hist * sizeof(struct cb_seg_history));
    cr_assert_eq(g.state_size % 4096, 0);
    cr_assert_geq(g.permits_offset, CB_LANES_HEADER_SIZE);
    cr_assert_eq(g.permits_offset % 8, 0);
    cr_assert_geq(g.lanes_offset, g.permits_offset + 8ull * capacity, "permits overlap lanes");
    cr_assert_eq(g.lanes_offset % CB_CACHELINE, 0);
    cr_assert_eq(g.lane_stride, CB_LANE_HEADER_SIZE + lane_cap * sizeof(struct cb_lane_event));
    cr_assert_eq(g.lane_stride % CB_CACHELINE, 0);
    cr_assert_geq(g.lanes_size, g.lanes_offset + (uint64_t)lanes * g.lane_stride);
    cr_assert_eq(g.lanes_size % 4096, 0);
}

Test(segment, geometry_lays_out_aligned_non_overlapping_regions)
{
    check_geometry(1, 1, 16, 16);
    check_geometry(4, 8, 64, 16);
    check_geometry(1000, 256, 1024, 4096);
    check_geometry(1u << 24, 65536, 16, 1u << 20);
}

Test(segment, a_million_circuits_fit_in_about_528_bytes_each)
{
    check_geometry(1000000, 1024, 256, 1024);
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(1000000, 1024, 256, 1024, &g), 0);
    /* record + index (2..4 slots of 4 bytes after rounding to a power of
     * two) + permit word; header and history are per segment */
    uint64_t per_circuit =
        (g.state_size - g.index_offset - (uint64_t)g.history_capacity * sizeof(struct cb_seg_history) +
         g.lanes_offset - g.permits_offset) / 1000000;
    cr_assert_leq(per_circuit, 512 + 16 + 8, "%llu bytes per circuit", (unsigned long long)per_circuit);
}

Test(segment, geometry_refuses_out_of_range_parameters)
{
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(0, 1, 16, 16, &g), -EINVAL, "no circuits");
    cr_assert_eq(cb__seg_geometry((1u << 24) + 1, 1, 16, 16, &g), -EINVAL, "too many circuits");
    cr_assert_eq(cb__seg_geometry(1, 0, 16, 16, &g), -EINVAL, "no lanes");
    cr_assert_eq(cb__seg_geometry(1, 65537, 16, 16, &g), -EINVAL, "too many lanes");
    cr_assert_eq(cb__seg_geometry(1, 1, 8, 16, &g), -EINVAL, "lanes too small");
    cr_assert_eq(cb__seg_geometry(1, 1, 100, 16, &g), -EINVAL, "lane capacity not a power of two");
    cr_assert_eq(cb__seg_geometry(1, 1, 16, 100, &g), -EINVAL, "history not a power of two");
    cr_assert_eq(cb__seg_geometry(1, 1, 16, 8, &g), -EINVAL, "history too small");
}

/* ---- header validation ---------------------------------------------------------- */

/* The geometry of the regions these tests build: 8 circuits, 4 lanes. */
static struct cb_seg_geometry small_geometry(void)
{
    struct cb_seg_geometry g;
    cr_assert_eq(cb__seg_geometry(8, 4, 16, 16, &g), 0);
    return g;
}

/* A valid state region of small_geometry, as cbd would publish it. */
static struct cb_seg_header *make_state(size_t *size)
{
    struct cb_seg_geometry g = small_geometry();
    struct cb_seg_header *h = calloc(1, g.state_size);
    cr_assert_not_null(h);
    memcpy(h->magic, CB_SEG_MAGIC, sizeof CB_SEG_MAGIC);
    h->major = CB_SEG_MAJOR;
    h->minor = CB_SEG_MINOR;
    h->header_size = CB_SEG_HEADER_SIZE;
    h->record_size = CB_SEG_RECORD_SIZE;
    h->capacity = g.capacity;
    h->index_slots = g.index_slots;
    h->history_capacity = g.history_capacity;
    h->total_size = g.state_size;
    h->index_offset = g.index_offset;
    h->records_offset = g.records_offset;
    h->history_offset = g.history_offset;
    h->features = CB_SEG_FEATURES_USED;
    strcpy(h->instance, "test");
    strcpy(h->socket_path, "/run/cbd/test.sock");
    *size = g.state_size;
    return h;
}

Test(segment, header_check_accepts_what_cbd_publishes)
{
    size_t size;
    struct cb_seg_header *h = make_state(&size);
    cr_assert_eq(cb__seg_header_check(h, size), 0);
    cr_assert_eq(cb__seg_header_check(h, size + 4096), 0, "a larger mapping is fine");
    h->minor = CB_SEG_MINOR + 7;
    cr_assert_eq(cb__seg_header_check(h, size), 0, "a newer minor only appends");
    free(h);
}

Test(segment, header_check_rejects_foreign_and_other_major_segments)
{
    size_t size;
    struct cb_seg_header *h = make_state(&size);
    memcpy(h->magic, "NOT-A-CBD-SEGMT", 16);
    cr_assert_eq(cb__seg_header_check(h, size), -EPROTO, "foreign magic");
    memset(h->magic, 0, sizeof h->magic);
    memcpy(h->magic, "CBD-SEGMENT-v1", 14);
    cr_assert_eq(cb__seg_header_check(h, size), -EPROTO, "magic of the previous major");
    memcpy(h->magic, CB_SEG_MAGIC, sizeof CB_SEG_MAGIC);
    h->major = CB_SEG_MAJOR + 1;
    cr_assert_eq(cb__seg_header_check(h, size), -EPROTO, "the next major in the major field");
    h->major = CB_SEG_MAJOR;
    h->features = CB_SEG_FEATURE_HISTORY;
    cr_assert_eq(cb__seg_header_check(h, size), -EPROTO, "a segment without a feature libcb uses");
    h->features = CB_SEG_FEATURES_USED | 0x100;
    cr_assert_eq(cb__seg_header_check(h, size), 0, "features libcb does not know are fine");
    cr_assert_eq(cb__seg_header_check(h, 100), -EPROTO, "mapping smaller than a header");
    free(h);
}

/* Spoils one thing of a valid header; returns what, or NULL past the last. */
static const char *spoil(struct cb_seg_header *x, int what)
{
    switch (what) {
    case 0: x->record_size = 128; return "record size";
    case 1: x->header_size = 8192; return "header size";
    case 2: x->capacity = 0; return "capacity 0";
    case 3: x->capacity = 1000; return "capacity disagrees with the index";
    case 4: x->index_slots = 4; return "index slots";
    case 5: x->history_capacity = 17; return "history capacity";
    case 6: x->index_offset = 0; return "index offset";
    case 7: x->records_offset += 64; return "records offset";
    case 8: x->history_offset = 1ull << 40; return "history offset";
    case 9: x->total_size += 4096; return "total size";
    case 10: memset(x->instance, 'a', sizeof x->instance); return "instance not terminated";
    case 11: memset(x->socket_path, 'a', sizeof x->socket_path); return "socket path not terminated";
    default: return NULL;
    }
}

Test(segment, header_check_rejects_inconsistent_sizes_and_offsets)
{
    size_t size;
    struct cb_seg_header *h = make_state(&size);
    struct cb_seg_header good = *h;
    const char *what;
    for (int i = 0; (what = spoil(h, i)) != NULL; i++) {
        cr_assert_eq(cb__seg_header_check(h, size), -EBADMSG, "%s", what);
        *h = good;
    }
    cr_assert_eq(cb__seg_header_check(h, size), 0);
    cr_assert_eq(cb__seg_header_check(h, size - 4096), -EBADMSG, "segment larger than the mapping");
    free(h);
}

/* A valid lanes region of small_geometry, as cbd would publish it. */
static struct cb_lanes_header *make_lanes(const struct cb_seg_geometry *g)
{
    struct cb_lanes_header *h = calloc(1, g->lanes_size);
    cr_assert_not_null(h);
    *h = (struct cb_lanes_header){.major = CB_SEG_MAJOR, .header_size = CB_LANES_HEADER_SIZE,
                                  .lane_count = g->lane_count, .lane_capacity = g->lane_capacity,
                                  .lane_stride = g->lane_stride, .capacity = g->capacity,
                                  .total_size = g->lanes_size, .permits_offset = g->permits_offset,
                                  .lanes_offset = g->lanes_offset};
    memcpy(h->magic, CB_LANES_MAGIC, sizeof CB_LANES_MAGIC);
    return h;
}

Test(segment, lanes_header_check_rejects_foreign_and_inconsistent_regions)
{
    struct cb_seg_geometry g = small_geometry();
    struct cb_lanes_header *h = make_lanes(&g);
    cr_assert_eq(cb__lanes_header_check(h, g.lanes_size), 0);
    h->lane_stride += 16;
    cr_assert_eq(cb__lanes_header_check(h, g.lanes_size), -EBADMSG, "stride");
    h->lane_stride = g.lane_stride;
    cr_assert_eq(cb__lanes_header_check(h, g.lanes_size - 4096), -EBADMSG, "larger than the mapping");
    h->major = CB_SEG_MAJOR + 1;
    cr_assert_eq(cb__lanes_header_check(h, g.lanes_size), -EPROTO, "other major");
    h->major = CB_SEG_MAJOR;
    h->magic[0] = 'X';
    cr_assert_eq(cb__lanes_header_check(h, g.lanes_size), -EPROTO, "foreign magic");
    free(h);
}

/* ---- lookup ------------------------------------------------------------------------ */

/* Publishes name in slot the way cbd does: record first, then index slot. */
static void publish(struct cb_seg_header *h, uint32_t slot, const char *name)
{
    struct cb_seg_record *r = CB_SEG_RECORD(h, slot);
    size_t len = strlen(name);
    uint64_t hash = cb__name_hash(name, len);
    atomic_store(&r->name_hash, hash);
    atomic_store(&r->name_len, (uint16_t)len);
    memcpy(r->name, name, len + 1);
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    for (uint32_t p = 0;; p++) {
        uint32_t i = (uint32_t)((hash + p) & (h->index_slots - 1));
        if (atomic_load(&index[i]) == 0) {
            atomic_store(&index[i], slot + 1);
            return;
        }
    }
}

static int lookup(struct cb_seg_header *h, const char *name)
{
    return cb__seg_lookup(h, name, strlen(name), cb__name_hash(name, strlen(name)), NULL);
}

Test(segment, lookup_finds_every_published_name_and_only_those)
{
    size_t size;
    struct cb_seg_header *h = make_state(&size);
    const char *names[] = {"a", "b", "payments", "search", "svc.x", "svc.y", "users", "z"};
    for (uint32_t i = 0; i < 8; i++) {
        cr_assert_eq(lookup(h, names[i]), -ENOENT, "%s before it was published", names[i]);
        publish(h, i, names[i]);
    }
    for (uint32_t i = 0; i < 8; i++)
        cr_assert_eq(lookup(h, names[i]), (int)i, "%s", names[i]);
    cr_assert_eq(lookup(h, "paymentz"), -ENOENT);
    cr_assert_eq(lookup(h, "pay"), -ENOENT);
    free(h);
}

Test(segment, lookup_refuses_an_index_entry_beyond_capacity)
{
    size_t size;
    struct cb_seg_header *h = make_state(&size);
    uint64_t hash = cb__name_hash("x", 1);
    atomic_store(&CB_SEG_INDEX(h)[hash & (h->index_slots - 1)], h->capacity + 1);
    cr_assert_eq(lookup(h, "x"), -EBADMSG);
    free(h);
}

/* ---- booleans and config ------------------------------------------------------------- */

Test(segment, parse_bool_knows_the_documented_spellings_in_any_case)
{
    static const char *const yes[] = {"1", "true", "TRUE", "True", "yes", "YES", "on", "On"};
    static const char *const no[] = {"0", "false", "FALSE", "no", "No", "off", "OFF"};
    static const char *const neither[] = {"", "maybe", "2", "-1", " true", "true ", "y", "n", "enable", "t"};
    EXPECT_EACH(cb__parse_bool, yes, 1);
    EXPECT_EACH(cb__parse_bool, no, 0);
    EXPECT_EACH(cb__parse_bool, neither, -EINVAL);
    cr_assert_eq(cb__parse_bool(NULL), -EINVAL);
}

Test(segment, config_init_equals_powertools_defaults)
{
    cb_config cfg;
    memset(&cfg, 0xa5, sizeof cfg);
    cb_config_init(&cfg);
    cr_assert_eq(cfg.failure_threshold, 5);
    cr_assert_eq(cfg.success_threshold, 3);
    cr_assert_eq(cfg.half_open_max_probes, 1);
    cr_assert_eq(cfg.recovery_timeout_ms, 30000);
    cr_assert_eq(cfg.probe_lease_ms, 0, "the lease defaults to the recovery timeout");
    for (int i = 0; i < 3; i++)
        cr_assert_eq(cfg.reserved[i], 0);
    const char *field = "untouched";
    cr_assert_eq(cb__config_check(&cfg, &field), 0);
    cr_assert_null(field);
}

struct bound_case {
    char field[32];
    size_t offset;
    uint32_t value;
    int valid;
};

#define BOUND(f, v, ok) {#f, offsetof(cb_config, f), (v), (ok)}

ParameterizedTestParameters(segment, config_check_enforces_each_bound_and_names_the_field)
{
    static struct bound_case cases[] = {
        BOUND(failure_threshold, 0, 0),           BOUND(failure_threshold, 1, 1),
        BOUND(failure_threshold, 1000000, 1),     BOUND(failure_threshold, 1000001, 0),
        BOUND(success_threshold, 0, 0),           BOUND(success_threshold, 1000000, 1),
        BOUND(success_threshold, 1000001, 0),     BOUND(half_open_max_probes, 0, 0),
        BOUND(half_open_max_probes, 1024, 1),     BOUND(half_open_max_probes, 1025, 0),
        BOUND(recovery_timeout_ms, 0, 0),         BOUND(recovery_timeout_ms, 1, 1),
        BOUND(recovery_timeout_ms, 604800000, 1), BOUND(recovery_timeout_ms, 604800001, 0),
        BOUND(recovery_timeout_ms, 864000000, 0), /* 10 days */
        BOUND(recovery_timeout_ms, UINT32_MAX, 0), BOUND(probe_lease_ms, 0, 1),
        BOUND(probe_lease_ms, 604800000, 1),      BOUND(probe_lease_ms, 604800001, 0),
        BOUND(probe_lease_ms, UINT32_MAX, 0),
    };
    return cr_make_param_array(struct bound_case, cases, sizeof cases / sizeof cases[0]);
}

ParameterizedTest(struct bound_case *c, segment, config_check_enforces_each_bound_and_names_the_field)
{
    cb_config cfg;
    cb_config_init(&cfg);
    memcpy((char *)&cfg + c->offset, &c->value, sizeof c->value);
    const char *field = NULL;
    int rc = cb__config_check(&cfg, &field);
    cr_assert_eq(rc, c->valid ? 0 : -EINVAL, "%s = %u: %d", c->field, c->value, rc);
    if (c->valid) {
        cr_assert_null(field);
    } else {
        cr_assert_not_null(field);
        cr_assert_not_null(strstr(field, c->field), "message \"%s\" does not name %s", field, c->field);
    }
}

Test(segment, state_word_packs_state_flags_incarnation_and_epoch)
{
    uint64_t w = cb_seg_state_word(CB_HALF_OPEN, CB_SEG_F_FORCED, 0xabcd, 0xfffffffeu);
    cr_assert_eq(cb_seg_word_state(w), CB_HALF_OPEN);
    cr_assert_eq(cb_seg_word_flags(w), CB_SEG_F_FORCED);
    cr_assert_eq(cb_seg_word_incarnation(w), 0xabcd);
    cr_assert_eq(cb_seg_word_epoch(w), 0xfffffffeu);
    cr_assert_eq((uint32_t)cb_seg_state_word(CB_CLOSED, 0, 7, 77), 7u << CB_SEG_INCARNATION_SHIFT,
                 "a plain CLOSED word's low half is what a handle of incarnation 7 expects");
    cr_assert_neq((uint32_t)cb_seg_state_word(CB_CLOSED, 0, 8, 77), 7u << CB_SEG_INCARNATION_SHIFT,
                  "the next incarnation of the slot does not match a handle of the old one");
    cr_assert_neq((uint32_t)cb_seg_state_word(CB_CLOSED, CB_SEG_F_DISABLED, 7, 77), 7u << CB_SEG_INCARNATION_SHIFT,
                  "a flagged CLOSED word takes the slow path");
}
