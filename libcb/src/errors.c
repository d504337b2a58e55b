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
    const char *name, *text;
};

#define CB_ERROR_ROW(name, value, text) {name, #name, text},
#define ERRNO_ROW(e, text) {-e, #e, text},
static const struct cb_error_text texts[] = {
    {0, "OK", "success"},
    CB_ERRORS(CB_ERROR_ROW)
    ERRNO_ROW(ENOENT, "cbd is not running for this instance (no segment or control socket)")
    ERRNO_ROW(EPROTO, "not a cbd segment, or cbd and libcb use different layout versions")
    ERRNO_ROW(ETIMEDOUT, "cbd did not answer in time (still starting, or hung)")
    ERRNO_ROW(EINVAL, "invalid argument (circuit name, instance name, configuration value or $CB_DISABLED)")
    ERRNO_ROW(EACCES, "permission denied mapping the cbd segment (add this user to the daemon's group)")
    ERRNO_ROW(EPERM, "cbd refused this operation for this user")
    ERRNO_ROW(ENOMEM, "out of memory")
    ERRNO_ROW(ENOSPC, "cbd's segment is full (raise the daemon's `capacity` option)")
    ERRNO_ROW(EUSERS, "cbd refused the connection: this user holds as many as `max_connections_per_uid` allows")
    ERRNO_ROW(EDQUOT, "this user registered as many circuits as cbd's `max_circuits_per_uid` allows")
    ERRNO_ROW(ECONNREFUSED, "cbd's control socket refuses connections (daemon not running?)")
    ERRNO_ROW(ECONNRESET, "cbd closed the control connection")
    ERRNO_ROW(EPIPE, "cbd closed the control connection")
    ERRNO_ROW(EAGAIN, "the circuit changed too often to be read consistently; try again")
    ERRNO_ROW(EOVERFLOW, "fell behind the transition history; some transitions were overwritten")
    ERRNO_ROW(EBADMSG, "malformed message on the control socket")
    ERRNO_ROW(EMSGSIZE, "control message too large")
    ERRNO_ROW(ENAMETOOLONG, "the control socket path is too long")
    ERRNO_ROW(EBUSY, "cbd refused: the circuit is held by the configuration (a [circuit] section)")
};
#undef CB_ERROR_ROW
#undef ERRNO_ROW

static const struct cb_error_text *find(int err)
{
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (texts[i].code == err)
            return &texts[i];
    }
    return NULL;
}

const char *cb_strerror(int err)
{
    const struct cb_error_text *t = find(err);
    return t ? t->text : "unknown error";
}

const char *cb_err_name(int err)
{
    const struct cb_error_text *t = find(err);
    return t ? t->name : "unknown";
}

const char *cb_version(void)
{
    return CB_VERSION_STRING;
}
