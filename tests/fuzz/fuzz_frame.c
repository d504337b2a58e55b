/*
 * fuzz_frame.c - the control protocol's frame codec (libcb/src/frame.c).
 *
 * The bytes of one frame payload go through cb__mp_unpack_map, as the
 * daemon and the clients do with everything they read from a socket, then
 * through every typed accessor with the keys the protocol uses. Property:
 * no crash, no leak, no read outside the input, and (the msgpack-c 4.0 trap)
 * no allocation larger than a small multiple of the input, which ASan's
 * malloc limit in scripts/fuzz.sh turns into a failure.
 */
#include <stdint.h>
#include <stdlib.h>

#include "frame.h"
#include "fuzz.h"

static const char *const keys[] = {"op", "name", "config", "slot", "ok", "error", "id", "message", "for_ms",
                                   "cursor", "next"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msgpack_unpacked res;
    msgpack_object *map;
    if (size > CB_FRAME_MAX || cb__mp_unpack_map((const char *)data, size, &res, &map) < 0)
        return 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        uint64_t u;
        int64_t s;
        int b;
        char str[128];
        cb__mp_get_u64(map, keys[i], &u);
        cb__mp_get_i64(map, keys[i], &s);
        cb__mp_get_bool(map, keys[i], &b);
        cb__mp_get_str(map, keys[i], str, sizeof str);
        const msgpack_object *sub = cb__mp_get(map, keys[i]);
        if (sub != NULL && sub->type == MSGPACK_OBJECT_MAP)
            cb__mp_get_u64(sub, "failure_threshold", &u);
    }
    msgpack_unpacked_destroy(&res);
    return 0;
}
