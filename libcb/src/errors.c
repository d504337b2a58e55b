/*
 * errors.c - cb_strerror() and cb_version().
 *
 * The texts are written for the operator who finds them in a worker's log:
 * they name what is wrong with the deployment (daemon not running, group
 * membership, capacity) rather than repeat the errno's generic wording.
 * Every string is static, so the function is safe from any thread.
 */
#include "cb.h"

#include <errno.h>

struct cb_error_text {
    int code;
    const char *text;
};

static const struct cb_error_text texts[] = {
    {0, "success"},
    {CB_EOPEN, "circuit is open"},
    {CB_EPROTO_DAEMON, "cbd answered with an error libcb does not understand (library and daemon versions differ?)"},
    {CB_EDAMAGED, "cbd's shared memory is damaged: an object is smaller than its header says (truncated?) or its "
                  "sizes disagree; restart cbd to replace it"},
    {-ENOENT, "cbd is not running for this instance (no segment or control socket)"},
    {-EPROTO, "not a cbd segment, or cbd and libcb use different layout versions"},
    {-ETIMEDOUT, "cbd did not answer in time (still starting, or hung)"},
    {-EINVAL, "invalid argument (circuit name, instance name, configuration value or $CB_DISABLED)"},
    {-EACCES, "permission denied mapping the cbd segment (add this user to the daemon's group)"},
    {-EPERM, "cbd refused this operation for this user"},
    {-ENOMEM, "out of memory"},
    {-ENOSPC, "cbd's segment is full (raise the daemon's `capacity` option)"},
    {-EUSERS, "cbd refused the connection: this user holds as many as `max_connections_per_uid` allows"},
    {-EDQUOT, "this user registered as many circuits as cbd's `max_circuits_per_uid` allows"},
    {-ECONNREFUSED, "cbd's control socket refuses connections (daemon not running?)"},
    {-ECONNRESET, "cbd closed the control connection"},
    {-EPIPE, "cbd closed the control connection"},
    {-EAGAIN, "the circuit changed too often to be read consistently; try again"},
    {-EOVERFLOW, "fell behind the transition history; some transitions were overwritten"},
    {-EBADMSG, "malformed message on the control socket"},
    {-EMSGSIZE, "control message too large"},
    {-ENAMETOOLONG, "the control socket path is too long"},
};

const char *cb_strerror(int err)
{
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (texts[i].code == err)
            return texts[i].text;
    }
    return "unknown error";
}

const char *cb_version(void)
{
    return CB_VERSION_STRING;
}
