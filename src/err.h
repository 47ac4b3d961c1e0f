/* err.h - PyazDB error codes.
 *
 * Functions return 0 on success or a negative code. Our own codes live in
 * one X-macro list below, which builds both the enum and pz_strerror(), so a
 * code and its message can never drift apart. libuv's negative UV_E* codes
 * pass through unchanged; pz_strerror() falls back to uv_strerror() style
 * text for them (strerror of the positive errno). */
#ifndef PZ_ERR_H
#define PZ_ERR_H

#define PZ_ERRORS(X)                                                         \
    X(PZ_ENOMEM, -10001, "out of memory")                                    \
    X(PZ_EINVAL, -10002, "invalid argument")                                 \
    X(PZ_ECONFIG, -10003, "configuration error")                             \
    X(PZ_ENOTFOUND, -10004, "not found")                                     \
    X(PZ_ETOOBIG, -10005, "too large")                                       \
    X(PZ_ENOTLEADER, -10006, "not the leader")                               \
    X(PZ_ENOLEADER, -10007, "no leader known")                               \
    X(PZ_ESHUTDOWN, -10008, "shutting down")                                 \
    X(PZ_EIO, -10009, "I/O error")                                           \
    X(PZ_ECORRUPT, -10010, "corrupt data")                                   \
    X(PZ_EPROTO, -10011, "protocol error")                                   \
    X(PZ_ECANCELED, -10012, "canceled")                                      \
    X(PZ_ETIMEDOUT, -10013, "timed out")                                     \
    X(PZ_EBUSY, -10014, "busy")                                              \
    X(PZ_ELEADERCHANGE, -10015, "leadership changed")                        \
    X(PZ_ENOSPC, -10016, "no space left on device")                          \
    X(PZ_EOVERLOAD, -10017, "too many writes waiting to commit")

enum pz_error {
#define PZ_ERR_ENUM(name, code, msg) name = code,
    PZ_ERRORS(PZ_ERR_ENUM)
#undef PZ_ERR_ENUM
};

/* Message for any code: ours, a libuv/errno code, or 0 ("ok"). Never NULL. */
const char *pz_strerror(int code);

#endif
