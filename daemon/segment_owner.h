/*
 * segment_owner.h - the daemon's side of the two shm regions: create or
 * adopt them, add circuit records, append history, beat the heart.
 */
#ifndef CBD_SEGMENT_OWNER_H
#define CBD_SEGMENT_OWNER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "segment.h"

struct cbd_segment {
    struct cb_seg_header *hdr;      /* state region, mapped RW */
    struct cb_lanes_header *lanes;  /* lanes region, mapped RW */
    size_t state_size, lanes_size;
    char state_name[CB_SHM_NAME_MAX], lanes_name[CB_SHM_NAME_MAX];
    int adopted;                    /* 1: records came from a previous daemon */
    int lanes_fd;                   /* kept to notice and undo a truncation of the lanes object */
    uint64_t lanes_restored;        /* times the lanes object was found truncated and restored */
    uv_timer_t heartbeat;
    int heartbeat_started;
};

/* Creates the regions, or adopts existing compatible ones (records, index,
 * history, lanes and permits kept; new generation). Not ready yet when
 * fresh: cbd_segment_publish does that. 0 or -errno (logged). */
int cbd_segment_open(struct cbd_segment *s, const struct cbd_config *cfg);

/* Stores ready = 1 (release) once state has been restored. */
void cbd_segment_publish(struct cbd_segment *s);

/* Starts the heartbeat timer (CLOCK_MONOTONIC ns every interval_ms). */
int cbd_segment_heartbeat_start(struct cbd_segment *s, uv_loop_t *loop, uint32_t interval_ms);

/* Fills a record for name and publishes it through the index (and
 * circuit_count): a new slot, or reuse (a removed circuit's slot, the next
 * incarnation; UINT32_MAX: a new one). 0 and *slot, or -ENOSPC when every
 * record is used. */
int cbd_segment_add(struct cbd_segment *s, const char *name, const cb_config *cfg, uint32_t owner_uid,
                    uint32_t reuse, uint32_t *slot);

/* Removes the circuit in slot: a REMOVED version with a new epoch, the word
 * published, the name out of the index. The slot may be reused later. */
void cbd_segment_remove(struct cbd_segment *s, uint32_t slot);

/* The live state word of slot (the daemon's own last store). */
uint64_t cbd_segment_slot_word(const struct cbd_segment *s, uint32_t slot);

/* After adoption: completes the transition the current version of slot
 * committed if the previous daemon died before publishing its state word or
 * its history entry. 1 if it did (*v: that version, to announce), else 0. */
int cbd_segment_roll_forward(struct cbd_segment *s, uint32_t slot, struct cb_seg_vdata *v);

/* One transition into the history ring. */
struct cbd_history_entry {
    uint32_t slot, epoch, failure_count;
    uint8_t from, to, source;
    int64_t opened_at, time_ns;
};
void cbd_segment_history_append(struct cbd_segment *s, const struct cbd_history_entry *e);

/* Undoes a truncation of the lanes object (by a worker of the group) and
 * logs one the SIGBUS handler undid: from the heartbeat and the drain. */
void cbd_segment_lanes_check(struct cbd_segment *s);

/* Clean shutdown: daemon_pid = 0, unmap. The shm objects stay so that the
 * next daemon adopts them. Stops the heartbeat first (close callback on
 * the loop: call before the loop's last run). */
void cbd_segment_stop_heartbeat(struct cbd_segment *s);
void cbd_segment_close(struct cbd_segment *s);

#endif /* CBD_SEGMENT_OWNER_H */
