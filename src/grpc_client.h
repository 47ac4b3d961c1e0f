/* grpc_client.h - unary gRPC calls over one persistent HTTP/2 connection
 * (nghttp2 client session on an outbound conn). Used by pyazdb-cli and by a
 * follower's server to forward calls to the leader.
 *
 * Happy path: grpc_client_new() names the peer; the connection is opened
 * by the first call and kept for the next ones; every call is one stream
 * (HEADERS with grpc-timeout, one framed request message, END_STREAM), and
 * its callback gets the grpc-status, the decoded grpc-message and the first
 * response message. Many calls may be in flight at once on the connection.
 * Failure modes: connect errors, a reset stream, a lost connection or a
 * GOAWAY that refuses the stream complete the call with UNAVAILABLE; a call
 * whose timeout passes completes with DEADLINE_EXCEEDED (the stream is
 * reset with CANCEL); a response without grpc-status gets the status the
 * gRPC HTTP mapping gives its :status; an oversize or malformed response
 * message gets RESOURCE_EXHAUSTED or INTERNAL, and so does a response
 * whose header fields (all its HEADERS frames together) pass
 * GRPC_CLIENT_MAX_HEADER_BYTES. A connection that was lost
 * or told to go away is replaced by a new one at the next call; calls still
 * running on the old one finish there.
 *
 * Callbacks run from the loop (reads, timers, connection close), never from
 * inside grpc_client_call(). A callback may start new calls, cancel others
 * or close the client. */
#ifndef PZ_GRPC_CLIENT_H
#define PZ_GRPC_CLIENT_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "grpc_frame.h"
#include "pz.h"
#include "queue.h"

struct grpc_client;
struct grpc_call;

/* Header bytes (name + value + 32 each, as HTTP/2 counts them) one
 * response may carry over all its HEADERS frames; also advertised as
 * SETTINGS_MAX_HEADER_LIST_SIZE. */
#define GRPC_CLIENT_MAX_HEADER_BYTES (64 * 1024)

typedef void (*grpc_call_cb)(struct grpc_call *call);

/* One call. Embed it in the caller's state; results are valid from the
 * callback on, until grpc_call_reset() or the next grpc_client_call() on
 * it. Fields below `private` belong to the client. */
struct grpc_call {
    int status;         /* grpc-status (GRPC_*) */
    char *message;      /* decoded grpc-message, never NULL in the cb */
    struct pz_buf resp; /* first response message (payload only) */
    bool has_resp;      /* a response message arrived */
    bool unsent;        /* failed before the server saw it: its connection
                           was never made, or the stream was refused
                           (REFUSED_STREAM); safe to send again */
    /* private */
    grpc_call_cb cb;        /* completion callback */
    struct grpc_client *cl; /* client, while active */
    void *conn;             /* struct gc_conn carrying the stream, or
                               NULL once completed */
    int32_t stream_id;      /* its stream, -1 when none */
    struct pz_queue q;      /* in the conn's calls or the done list */
    struct pz_buf req;      /* framed request not yet sent */
    size_t req_off;         /* bytes of req already handed to nghttp2 */
    struct grpc_reader rd;  /* response message reader */
    int http_status;        /* :status of the response, 0 before */
    int grpc_status;        /* grpc-status header, -1 before */
    int local_status;       /* error found here, -1 when none */
    size_t header_bytes;    /* response header bytes so far */
    struct pz_buf grpc_msg; /* raw grpc-message header value */
    uint64_t deadline;      /* uv_now() ms, 0 = none */
    bool active;            /* started, callback not yet called */
    bool queued;            /* q is linked */
    size_t *held;           /* grpc_call_opts.held */
};

/* Extra request headers: lowercase names, NULL-terminated list of pairs
 * {name, value, name, value, ..., NULL}. */
struct grpc_call_opts {
    uint64_t timeout_ms;         /* 0 = no deadline */
    const char *const *metadata; /* may be NULL */
    /* NULL, or where the bytes the call holds (its request until it is
     * written, the response so far) are counted against
     * max-pending-output (conn_hold_detached): a server relaying its
     * clients' calls. Back to 0 once cancelled or reset. */
    size_t *held;
};

/* A client for "host:port" on loop. max_message bounds response messages.
 * Nothing is connected until the first call. Never NULL. */
struct tls_slot;
struct grpc_client *grpc_client_new(uv_loop_t *loop, const char *addr,
                                    size_t max_message);
/* Stop the client: no new calls; calls in flight finish normally (or
 * fail if their connection goes); the client frees itself, timer
 * included, once nothing is left. Safe from a callback. */
void grpc_client_close(struct grpc_client *cl);
/* Dial over TLS (ALPN h2 from s's context), the server's certificate
 * naming the host of the client's address; NULL or off: h2c. Borrowed:
 * s must outlive the client. Applies to connections made after. */
void grpc_client_set_tls(struct grpc_client *cl, const struct tls_slot *s);
/* What the client's connections hold to send (the requests of a server
 * relaying its clients' calls) counts against max-pending-output
 * (conn_count_output). Applies to connections made after. */
void grpc_client_count_output(struct grpc_client *cl);
/* Same, but fail every call in flight with CANCELLED first (their
 * callbacks run inside this call) and close the connection. */
void grpc_client_abort(struct grpc_client *cl);
const char *grpc_client_addr(const struct grpc_client *cl);

void grpc_call_init(struct grpc_call *call);
/* Release results and buffers. The call must not be active. */
void grpc_call_reset(struct grpc_call *call);

/* Start a unary call of path ("/pkg.Service/Method") with the serialized
 * request msg (copied). Returns 0, then cb is called exactly once unless
 * the call is cancelled; or a negative code at once (PZ_ESHUTDOWN: the
 * client is closed; PZ_EINVAL: message too big; PZ_EIO: no connection
 * could be opened, a bad address among the reasons) and cb is never
 * called. */
int grpc_client_call(struct grpc_client *cl, struct grpc_call *call,
                     const char *path, const void *msg, size_t len,
                     const struct grpc_call_opts *opts, grpc_call_cb cb);
/* Forget an active call: its stream is reset (CANCEL), its callback never
 * runs. Idempotent; fine on an inactive call. */
void grpc_client_cancel(struct grpc_call *call);

/* Calls started and not yet completed or cancelled (for tests). */
size_t grpc_client_active(const struct grpc_client *cl);
/* Connections ever opened by this client (for tests). */
uint64_t grpc_client_connects(const struct grpc_client *cl);

/* nghttp2's allocator, through pz_malloc (abort on OOM, fault injection):
 * for every nghttp2 session of the process, client or server. */
nghttp2_mem *grpc_nghttp2_mem(void);

#endif
