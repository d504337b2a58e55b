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

static int name_byte_ok(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("._:/@+=-", c) != NULL;
}

int cb__name_check(const char *name)
{
    if (name == NULL || name[0] == '\0')
        return -EINVAL;
    size_t n = 0;
    for (; name[n] != '\0'; n++) {
        if (n >= CB_NAME_MAX || !name_byte_ok((unsigned char)name[n]))
            return -EINVAL;
    }
    return 0;
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
    if (strncmp(h->magic, CB_SEG_MAGIC, sizeof h->magic) != 0 || h->major != CB_SEG_MAJOR)
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

int cb__seg_lookup(const struct cb_seg_header *h, const char *name, size_t len, uint64_t hash)
{
    _Atomic uint32_t *index = CB_SEG_INDEX(h);
    uint32_t mask = h->index_slots - 1;
    for (uint32_t probe = 0; probe <= mask; probe++) {
        /* Acquire pairs with the daemon's release store of the slot: the
         * record it names is fully written before we read it. */
        uint32_t v = atomic_load_explicit(&index[(hash + probe) & mask], memory_order_acquire);
        if (v == 0)
            return -ENOENT;
        if (v > h->capacity)
            return -EBADMSG;
        const struct cb_seg_record *r = CB_SEG_RECORD(h, v - 1);
        if (atomic_load_explicit(&r->name_hash, memory_order_relaxed) == hash &&
            atomic_load_explicit(&r->name_len, memory_order_relaxed) == len && memcmp(r->name, name, len) == 0)
            return (int)(v - 1);
    }
    return -ENOENT;
}

int cb__config_check(const struct cb_config *cfg, const char **field)
{
    const char *bad = NULL;
    if (cfg->failure_threshold < 1 || cfg->failure_threshold > 1000000)
        bad = "failure_threshold (1..1000000)";
    else if (cfg->success_threshold < 1 || cfg->success_threshold > 1000000)
        bad = "success_threshold (1..1000000)";
    else if (cfg->half_open_max_probes < 1 || cfg->half_open_max_probes > 1024)
        bad = "half_open_max_probes (1..1024)";
    else if (cfg->recovery_timeout_ms < 1 || cfg->recovery_timeout_ms > 604800000u)
        bad = "recovery_timeout_ms (1..604800000)";
    else if (cfg->probe_lease_ms > 604800000u)
        bad = "probe_lease_ms (0..604800000; 0 = recovery_timeout_ms)";
    if (field)
        *field = bad;
    return bad ? -EINVAL : 0;
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
    cfg->failure_threshold = 5;
    cfg->success_threshold = 3;
    cfg->half_open_max_probes = 1;
    cfg->recovery_timeout_ms = 30000;
    cfg->probe_lease_ms = 0;
}

int cb__seg_snapshot(const struct cb_seg_header *h, uint32_t slot, cb_info *out)
{
    if (slot >= atomic_load_explicit((_Atomic uint32_t *)&h->circuit_count, memory_order_acquire))
        return -ENOENT;
    const struct cb_seg_record *r = CB_SEG_RECORD(h, slot);
    for (int attempt = 0; attempt < 100000; attempt++) {
        uint32_t begin = cb_seg_read_begin(r);
        memset(out, 0, sizeof *out);
        uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&r->state_word, memory_order_acquire);
        unsigned flags = cb_seg_word_flags(w);
        out->state = (cb_state)cb_seg_word_state(w);
        out->forced = (flags & CB_SEG_F_FORCED) != 0;
        out->disabled = (flags & CB_SEG_F_DISABLED) != 0;
        out->epoch = cb_seg_word_epoch(w);
        out->opened_at = atomic_load_explicit(&r->opened_at, memory_order_relaxed);
        out->failure_count = out->state == CB_CLOSED ? atomic_load_explicit(&r->failure_streak, memory_order_relaxed)
                                                     : atomic_load_explicit(&r->trip_failure_count, memory_order_relaxed);
        out->config.failure_threshold = atomic_load_explicit(&r->failure_threshold, memory_order_relaxed);
        out->config.success_threshold = atomic_load_explicit(&r->success_threshold, memory_order_relaxed);
        out->config.half_open_max_probes = atomic_load_explicit(&r->half_open_max_probes, memory_order_relaxed);
        out->config.recovery_timeout_ms = atomic_load_explicit(&r->recovery_timeout_ms, memory_order_relaxed);
        out->config.probe_lease_ms = atomic_load_explicit(&r->probe_lease_ms, memory_order_relaxed);
        out->total_successes = atomic_load_explicit(&r->total_successes, memory_order_relaxed);
        out->total_failures = atomic_load_explicit(&r->total_failures, memory_order_relaxed);
        out->total_ignored = atomic_load_explicit(&r->total_ignored, memory_order_relaxed);
        /* The name is written once before the slot is published and never
         * changes, so it needs no retry; bound it anyway. */
        uint16_t len = atomic_load_explicit(&r->name_len, memory_order_relaxed);
        if (len > CB_NAME_MAX)
            return -EBADMSG;
        memcpy(out->name, r->name, len);
        out->name[len] = '\0';
        if (!cb_seg_read_retry(r, begin))
            return 0;
    }
    return -EAGAIN;
}
