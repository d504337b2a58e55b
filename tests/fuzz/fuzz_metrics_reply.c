/*
 * fuzz_metrics_reply.c - what `cbctl metrics` reads from the daemon's
 * `metrics` op (tools/cbctl.c, common/metrics_text.c): a reply map whose
 * "daemon" array and each array of "circuits" are unpacked into one
 * snapshot, which is then rendered as Prometheus text.
 *
 * Property: no crash, no leak, no read outside the input, whatever the
 * bytes claim; what unpacks renders.
 */
#include <stdint.h>
#include <stdlib.h>

#include "frame.h"
#include "fuzz.h"
#include "metrics_text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msgpack_unpacked result;
    msgpack_object *reply;
    if (cb__mp_unpack_map((const char *)data, size, &result, &reply) < 0)
        return 0;
    struct cbd_metrics_snapshot s;
    cbd_metrics_snapshot_init(&s);
    const msgpack_object *daemon = cb__mp_get(reply, "daemon"), *circuits = cb__mp_get(reply, "circuits");
    int rc = daemon != NULL ? cbd_metrics_unpack_daemon(daemon, &s) : -1;
    for (uint32_t i = 0; rc == 0 && circuits != NULL && circuits->type == MSGPACK_OBJECT_ARRAY &&
                         i < circuits->via.array.size;
         i++)
        rc = cbd_metrics_unpack_circuit(&circuits->via.array.ptr[i], &s);
    if (rc == 0) {
        char *text;
        size_t len;
        if (cbd_metrics_render(&s, &text, &len) == 0)
            free(text);
    }
    cbd_metrics_snapshot_free(&s);
    msgpack_unpacked_destroy(&result);
    return 0;
}
