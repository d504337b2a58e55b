/*
 * segment.c - helpers over the shared layout in segment.h, linked into
 * libcb, cbd and cbctl alike: names and their hash, region geometry, header
 * validation, the lock-free name lookup, config bounds and boolean parsing.
 *
 * Validation here is what lets a reader map a segment it did not create
 * without trusting it: every offset and size a header claims is checked
 * against the size actually mapped before anything behind it is touched.
 */
#include "segment.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

uint64_t cb__name_hash(const char *name, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a over the bytes ... */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)name[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30; /* ... then splitmix64's finaliser, so the low bits that
                   * index the table depend on every input byte */
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* Length of the UTF-8 sequence at s (1..4) if it is well formed (shortest
 * form, no surrogate, at most U+10FFFF), else 0. */
static size_t utf8_sequence(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    size_t n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (n == 0 || s[0] > 0xf4 || (n == 2 && s[0] < 0xc2))
        return 0;
    uint32_t cp = s[0] & (0x7f >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

int cb__name_check(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    const unsigned char *s = (const unsigned char *)name;
    size_t n = 0;
    while (s[n] != '\0') {
        size_t k = utf8_sequence(s + n);
        if (k == 0 || n + k > CB_NAME_MAX)
            return -EINVAL;
        n += k;
    }
    return 0;
}

static bool plain_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("._:/@+=-", c) != NULL;
}

const char *cb__name_display(const char *name, char *buf)
{
    const unsigned char *s = (const unsigned char *)name;
    bool plain = s[0] != '\0';
    for (size_t i = 0; plain && s[i] != '\0'; i++)
        plain = plain_byte(s[i]);
    if (plain)
        return name;
    char *o = buf;
    *o++ = '"';
    for (size_t i = 0; s[i] != '\0' && o < buf + CB_NAME_DISPLAY_MAX - 10; i++) {
        /* C0 and C1 controls and DEL are escaped; other UTF-8 is shown as it is */
        bool c1 = s[i] == 0xc2 && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f;
        if (s[i] < 0x20 || s[i] == 0x7f || c1) {
            o += sprintf(o, "\\x%02x", s[i]);
            if (c1)
                o += sprintf(o, "\\x%02x", s[++i]);
        } else {
            if (s[i] == '"' || s[i] == '\\')
                *o++ = '\\';
            *o++ = (char)s[i];
        }
    }
    *o++ = '"';
    *o = '\0';
    return buf;
}

int cb__instance_check(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    size_t n = 0;
    for (; name[n] != '\0'; n++) {
        unsigned char c = (unsigned char)name[n];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                 c == '-';
        if (n >= CB_INSTANCE_MAX || !ok)
            return -EINVAL;
    }
    return 0;
}

void cb__shm_names(const char *instance, char *state_name, char *lanes_name)
{
    snprintf(state_name, CB_SHM_NAME_MAX, "/cbd.%s", instance);
    snprintf(lanes_name, CB_SHM_NAME_MAX, "/cbd.%s.lanes", instance);
}

static int is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

static uint32_t next_pow2(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return (uint32_t)p;
}

static uint64_t round_up(uint64_t v, uint64_t to) { return (v + to - 1) / to * to; }

int cb__seg_geometry(uint32_t capacity, uint32_t lane_count, uint32_t lane_capacity,
                     uint32_t history_capacity, struct cb_seg_geometry *g)
{
    if (capacity < 1 || capacity > (1u << 24) || lane_count < 1 || lane_count > 65536 ||
        lane_capacity < 16 || lane_capacity > (1u << 20) || !is_pow2(lane_capacity) ||
        history_capacity < 16 || history_capacity > (1u << 20) || !is_pow2(history_capacity))
        return -EINVAL;
    memset(g, 0, sizeof *g);
    g->capacity = capacity;
    g->index_slots = next_pow2((uint64_t)capacity * 2);
    g->history_capacity = history_capacity;
    g->lane_count = lane_count;
    g->lane_capacity = lane_capacity;
    g->lane_stride = CB_LANE_HEADER_SIZE + lane_capacity * (uint32_t)sizeof(struct cb_lane_event);
    g->index_offset = CB_SEG_HEADER_SIZE;
    g->records_offset = round_up(g->index_offset + (uint64_t)g->index_slots * 4, 4096);
    g->history_offset = g->records_offset + (uint64_t)capacity * CB_SEG_RECORD_SIZE;
    g->state_size = round_up(g->history_offset + (uint64_t)history_capacity * sizeof(struct cb_seg_history), 4096);
    g->permits_offset = CB_LANES_HEADER_SIZE;
    g->lanes_offset = round_up(g->permits_offset + (uint64_t)capacity * 8, 4096);
    g->lanes_size = round_up(g->lanes_offset + (uint64_t)lane_count * g->lane_stride, 4096);
    return 0;
}

int cb__seg_header_check(const struct cb_seg_header *h, uint64_t mapped_size)
{
    if (mapped_size < CB_SEG_HEADER_SIZE || memcmp(h->magic, "CBD-SEGMENT-v", 13) != 0)
        return -EPROTO;
    if (strncmp(h->magic, CB_SEG_MAGIC, sizeof h->magic) != 0 || h->major != CB_SEG_MAJOR ||
        (h->features & CB_SEG_FEATURES_USED) != CB_SEG_FEATURES_USED)
        return -EPROTO;
    struct cb_seg_geometry g;
    if (h->header_size != CB_SEG_HEADER_SIZE || h->record_size != CB_SEG_RECORD_SIZE ||
        cb__seg_geometry(h->capacity, 1, 16, h->history_capacity, &g) != 0)
        return -EBADMSG;
    if (h->index_slots != g.index_slots || h->index_offset != g.index_offset ||
        h->records_offset != g.records_offset || h->history_offset != g.history_offset ||
        h->total_size != g.state_size || h->total_size > mapped_size)
        return -EBADMSG;
    if (memchr(h->instance, '\0', sizeof h->instance) == NULL ||
        memchr(h->socket_path, '\0', sizeof h->socket_path) == NULL)
        return -EBADMSG;
    return 0;
}

int cb__lanes_header_check(const struct cb_lanes_header *h, uint64_t mapped_size)
{
    if (mapped_size < CB_LANES_HEADER_SIZE || strncmp(h->magic, CB_LANES_MAGIC, sizeof h->magic) != 0 ||
        h->major != CB_SEG_MAJOR)
        return -EPROTO;
    struct cb_seg_geometry g;
    if (h->header_size != CB_LANES_HEADER_SIZE ||
        cb__seg_geometry(h->capacity, h->lane_count, h->lane_capacity, 16, &g) != 0)
        return -EBADMSG;
    if (h->lane_stride != g.lane_stride || h->permits_offset != g.permits_offset ||
        h->lanes_offset != g.lanes_offset || h->total_size != g.lanes_size || h->total_size > mapped_size)
        return -EBADMSG;
    return 0;
}

/* The record's name into buf (NUL-terminated) if its length is sane. */
static int record_name(const struct cb_seg_record *r, char *buf)
{
    uint16_t len = atomic_load_explicit((_Atomic uint16_t *)&r->name_len, memory_order_relaxed);
    if (len == 0 || len > CB_NAME_MAX)
        return -EBADMSG;
    memcpy(buf, r->name, len);
    buf[len] = '\0';
    return len;
}

int cb__seg_lookup(const struct cb_seg_header *h, const char *name, size_t len, uint64_t hash,
                   uint32_t *incarnation)
{
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    uint32_t mask = h->index_slots - 1;
    for (uint32_t probe = 0; probe <= mask; probe++) {
        /* Acquire pairs with the daemon's release store of the slot: the
         * record it names is fully written before we read it. */
        uint32_t v = atomic_load_explicit(&index[(hash + probe) & mask], memory_order_acquire);
        if (v == 0)
            return -ENOENT;
        if (v == CB_SEG_INDEX_TOMBSTONE)
            continue;
        if (v > h->capacity)
            return -EBADMSG;
        const struct cb_seg_record *r = CB_SEG_RECORD(h, v - 1);
        /* Acquire pairs with the daemon's release fence after it marks a
         * record REMOVED to rewrite it: what we compare below is either the
         * old circuit's or we see the word change. */
        uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&r->state_word, memory_order_acquire);
        char have[CB_NAME_MAX + 1];
        if ((cb_seg_word_flags(w) & CB_SEG_F_REMOVED) ||
            atomic_load_explicit((_Atomic uint64_t *)&r->name_hash, memory_order_relaxed) != hash ||
            record_name(r, have) != (int)len || memcmp(have, name, len) != 0)
            continue;
        /* Acquire fence: the name was read before the word is read again. */
        atomic_thread_fence(memory_order_acquire);
        uint64_t again = atomic_load_explicit((_Atomic uint64_t *)&r->state_word, memory_order_relaxed);
        if ((cb_seg_word_flags(again) & CB_SEG_F_REMOVED) ||
            cb_seg_word_incarnation(again) != cb_seg_word_incarnation(w))
            continue; /* removed or reused while we compared: not this one */
        if (incarnation != NULL)
            *incarnation = cb_seg_word_incarnation(w);
        return (int)(v - 1);
    }
    return -ENOENT;
}

const struct cb_policy_field cb__policy_fields[CB_POLICY_NFIELDS] = {
#define FIELD_ROW(n, d, lo, hi, h) {.name = #n, .help = h, .def = d, .min = lo, .max = hi, .offset = offsetof(cb_config, n)},
    CB_POLICY_FIELDS(FIELD_ROW)
#undef FIELD_ROW
};

int cb__config_check(const struct cb_config *cfg, const char **field)
{
    /* "name (min..max)" for the first field out of its bounds */
    static const char *const bad_text[CB_POLICY_NFIELDS] = {
#define FIELD_BAD(n, d, lo, hi, h) #n " (" #lo ".." #hi ")",
        CB_POLICY_FIELDS(FIELD_BAD)
#undef FIELD_BAD
    };
    const char *bad = NULL;
    for (unsigned i = 0; i < CB_POLICY_NFIELDS && bad == NULL; i++) {
        uint32_t v = *cb__config_field((cb_config *)cfg, i);
        if (v < cb__policy_fields[i].min || v > cb__policy_fields[i].max)
            bad = bad_text[i];
    }
    if (field)
        *field = bad;
    return bad ? -EINVAL : 0;
}

const char *cb__state_name(unsigned state)
{
    static const char *const names[] = {[CB_CLOSED] = "CLOSED", [CB_OPEN] = "OPEN", [CB_HALF_OPEN] = "HALF_OPEN"};
    return state < sizeof names / sizeof names[0] ? names[state] : "?";
}

const char *cb__source_name(unsigned source)
{
    static const char *const names[] = {[CB_SOURCE_LOCAL] = "local", [CB_SOURCE_REMOTE] = "remote",
                                        [CB_SOURCE_OPERATOR] = "operator", [CB_SOURCE_TIMER] = "timer",
                                        [CB_SOURCE_RESTORE] = "restore"};
    return source < sizeof names / sizeof names[0] ? names[source] : "?";
}

const char *cb__sync_name(unsigned sync)
{
    static const char *const names[] = {[CB_SYNC_LOCAL] = "local", [CB_SYNC_OK] = "ok",
                                        [CB_SYNC_PENDING] = "pending", [CB_SYNC_OFFLINE] = "offline"};
    return sync < sizeof names / sizeof names[0] ? names[sync] : "?";
}

int cb__parse_bool(const char *s)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    if (s == NULL)
        return -EINVAL;
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return 1;
        if (strcasecmp(s, no[i]) == 0)
            return 0;
    }
    return -EINVAL;
}

void cb_config_init(cb_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (unsigned i = 0; i < CB_POLICY_NFIELDS; i++)
        *cb__config_field(cfg, i) = cb__policy_fields[i].def;
}

int cb__seg_snapshot(const struct cb_seg_header *h, uint32_t slot, struct cb_seg_snapshot *out)
{
    if (slot >= atomic_load_explicit((_Atomic uint32_t *)&h->circuit_count, memory_order_acquire))
        return -ENOENT;
    const struct cb_seg_record *r = CB_SEG_RECORD(h, slot);
    for (int attempt = 0; attempt < 100000; attempt++) {
        struct cb_seg_vdata d;
        uint32_t cfg_begin = cb_seg_cfg_read_begin(r);
        memset(out, 0, sizeof *out);
        cb_seg_cfg_load(r, &out->info.config);
        if (cb_seg_cfg_read_retry(r, cfg_begin) || cb_seg_version_try_read(r, &d, NULL) < 0)
            continue;
        /* The version's word, not the live one: the live word may lag the
         * version by one store (the daemon commits the version first). */
        unsigned flags = cb_seg_word_flags(d.word);
        if (flags & CB_SEG_F_REMOVED)
            return -ENOENT;
        /* The name after the version: a reused slot's name is written before
         * its first version is published (acquired above). A removal and
         * reuse while we copy it is noticed below: the incarnation moves. */
        int len = record_name(r, out->info.name);
        if (len < 0)
            return -EBADMSG;
        atomic_thread_fence(memory_order_acquire);
        uint64_t live = atomic_load_explicit((_Atomic uint64_t *)&r->state_word, memory_order_relaxed);
        if (cb_seg_word_incarnation(live) != cb_seg_word_incarnation(d.word))
            continue;
        cb_info *i = &out->info;
        i->state = (cb_state)cb_seg_word_state(d.word);
        i->forced = (flags & CB_SEG_F_FORCED) != 0;
        i->disabled = (flags & CB_SEG_F_DISABLED) != 0;
        i->epoch = cb_seg_word_epoch(d.word);
        i->opened_at = d.opened_at_ns / 1000000000;
        i->failure_count = i->state == CB_CLOSED ? d.failure_streak : d.trip_failure_count;
        i->total_successes = d.total_successes;
        i->total_failures = d.total_failures;
        i->total_ignored = d.total_ignored;
        i->open_until_ns = d.open_until_ns;
        out->incarnation = cb_seg_word_incarnation(d.word);
        out->opened_at_ns = d.opened_at_ns;
        out->open_until_ns = d.open_until_ns;
        out->last_transition_ns = d.last_transition_ns;
        out->synced_at = d.synced_at;
        out->sync_state = d.sync_state;
        out->total_stale_events = d.total_stale_events;
        return 0;
    }
    return -EAGAIN;
}
