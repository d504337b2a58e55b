/*
 * policy_names.h - the names a policy field's value may be written with,
 * besides its number: resilience4j's for the window type. Header only,
 * shared by the configuration file (daemon/config.c) and `cbctl set`
 * (tools/cbctl.c), so both accept exactly the same words. Only the number
 * travels: cb_config, the control protocol and the segment hold it.
 */
#ifndef CB_POLICY_NAMES_H
#define CB_POLICY_NAMES_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

struct cb_value_name {
    const char *name;
    uint32_t value;
};

/* sliding_window_type: 0 Powertools' consecutive failures, then
 * resilience4j's slidingWindowType values. */
static const struct cb_value_name cb__window_type_names[] = {
    {"CONSECUTIVE", 0}, {"COUNT_BASED", 1}, {"TIME_BASED", 2}, {NULL, 0},
};

/* The names field's value may be written with (NULL-terminated), or NULL
 * when it has none. */
static inline const struct cb_value_name *cb__policy_value_names(const char *field)
{
    return strcmp(field, "sliding_window_type") == 0 ? cb__window_type_names : NULL;
}

/* The value of name (compared without case) in names: 0 with *out, or -1. */
static inline int cb__policy_value_parse(const struct cb_value_name *names, const char *name, uint32_t *out)
{
    for (size_t i = 0; names != NULL && names[i].name != NULL; i++) {
        if (strcasecmp(names[i].name, name) == 0) {
            *out = names[i].value;
            return 0;
        }
    }
    return -1;
}

/* "CONSECUTIVE | COUNT_BASED | TIME_BASED": the names, for messages
 * (size bytes of buf, always terminated). Returns buf. */
static inline const char *cb__policy_value_list(const struct cb_value_name *names, char *buf, size_t size)
{
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; names != NULL && names[i].name != NULL && n < size; i++) {
        int w = snprintf(buf + n, size - n, "%s%s", i ? " | " : "", names[i].name);
        n += w > 0 ? (size_t)w : 0;
    }
    return buf;
}

#endif /* CB_POLICY_NAMES_H */
