/* grpc.h - the gRPC API on a listener: HTTP/2 cleartext with prior
 * knowledge, kv.KVService (Get, Set, Delete), pyazdb.Cluster/Status,
 * grpc.health.v1.Health (Check, Watch) and server reflection (v1 and
 * v1alpha), with calls forwarded to the leader when this node is not it. */
#ifndef PZ_GRPC_H
#define PZ_GRPC_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include <protobuf-c/protobuf-c.h>

#include "config.h"
#include "conn.h"
#include "grpc_client.h"
#include "grpc_reflect.h"
#include "node.h"
#include "queue.h"

struct grpc_client;

/* The message of a forwarded call refused by a node that is not the leader
 * (it lost an election since the sender took it for the leader): nothing
 * was proposed, so the sender may send the call again to the next leader. */
#define GRPC_NOT_LEADER_MSG "not the leader (leadership is changing; retry)"
/* The messages of a call refused by a node that knew no leader (for
 * request-timeout, or when it asked): nothing was proposed either, and
 * the sender may send the call again to the next leader. Of a call a
 * node would relay, of a write, of an etcd call. */
#define GRPC_NO_LEADER_MSG "not the leader and no leader known"
#define GRPC_NO_LEADER_WRITE_MSG "no leader known"
#define GRPC_ETCD_NO_LEADER_MSG "etcdserver: no leader"
/* The message of a call a follower would relay to the leader, refused
 * because what relayed calls hold would pass max-pending-output (nothing
 * was sent); HTTP's 503 says the same. */
#define GRPC_RELAY_BUSY_MSG                                                    \
    "server busy: too many requests waiting for the leader; retry later"
/* What one message relayed on its own (grpc_stream_forward_call) holds
 * beside its bytes: the streams and header blocks on both sessions, the
 * call. Counted while it is with the leader, since such a message is a
 * few bytes (a LeaseKeepAlive's) and its bytes alone would let a flood
 * through a stalled leader grow memory unseen (about 3 kB a stream). */
#define GRPC_RELAY_COST 2048

/* How the server reaches the node. grpc_node_backend calls node_*; tests
 * substitute their own (e.g. a node that is never the leader). */
struct grpc_backend {
    int (*propose)(struct node_req *req, const uint8_t *cmd, size_t len,
                   node_req_cb cb);
    int (*read)(struct node_req *req, bool stale, node_req_cb cb);
    void (*cancel)(struct node_req *req);
    struct kv *(*kv)(void);
    /* Leader's gRPC address, NULL when this node leads or none is known. */
    const char *(*leader_grpc_addr)(void);
    void (*status)(struct node_status *st);
    /* True when the node serves linearizable requests now (Health
     * SERVING); NULL: while a leader is known. */
    bool (*health)(struct node_health *h);
    /* cb(0) once a leader is known, cb(< 0) when none comes in time (may
     * be NULL: "no leader" is then final). */
    void (*wait_leader)(struct node_req *req, node_req_cb cb);
    /* True while part of an entry is applied (node_applying): a held
     * answer is then built after it, through read(stale). NULL: never. */
    bool (*applying)(void);
};

extern const struct grpc_backend grpc_node_backend;

/* Counters, for tests and logs. */
struct grpc_stats {
    uint64_t calls;        /* streams that named a method */
    uint64_t forwarded;    /* calls relayed to the leader */
    uint64_t deadlines;    /* calls ended by DEADLINE_EXCEEDED */
    uint64_t streams_open; /* streams alive now */
    uint64_t timeouts;     /* requests or connections cut by
                              client-header-timeout or client-body-timeout */
    uint64_t refused_busy; /* streams refused for max-partial-input */
};

struct grpc_server {
    struct conn_listener ls;       /* accepted connections */
    uv_loop_t *loop;               /* the process loop */
    const struct grpc_backend *be; /* the node */
    size_t max_message;            /* grpc-max-message */
    size_t max_key;                /* max-key-size */
    size_t max_value;              /* max-value-size */
    uint64_t header_timeout;       /* client-header-timeout, ms */
    uint64_t body_timeout;         /* client-body-timeout, ms */
    uint64_t fwd_timeout;          /* forwarded calls without a deadline
                                      of their own get this one, ms */
    struct grpc_reflect reflect;   /* descriptor index */
    struct pz_queue deadlines;     /* streams with a deadline, unsorted */
    uv_timer_t deadline_timer;     /* fires at the earliest deadline */
    uint64_t timer_due;            /* uv_now() it fires at, 0 = idle */
    size_t open_ended_conns;       /* connections holding a stream its
                                      client may keep open for good */
    size_t open_ended_streams;     /* such streams, at most twice
                                      max-clients */
    struct pz_queue watchers;      /* Health/Watch streams */
    uv_timer_t watch_timer;        /* polls serving state for them */
    uv_idle_t kick;                /* keeps poll from blocking on output */
    struct pz_queue retries;       /* forwarded writes that never reached
                                      the leader, waiting to go again */
    uv_timer_t retry_timer;        /* polls them while any wait */
    uint64_t retry_window;         /* ms after the first forward during
                                      which they go again */
    struct grpc_client *fwd;       /* connection to the leader */
    uint64_t start_ms;             /* uv_now() at start */
    struct grpc_stats stats;       /* counters */
    int handles;                   /* our uv handles not yet closed */
    bool draining;                 /* shutdown began */
    bool started;                  /* grpc_start succeeded */
};

/* Listen on cfg->grpc_addr (port 0 picks a free port: see
 * grpc_local_port). be NULL means grpc_node_backend. Returns 0 or a
 * negative code with a message in err; on error nothing needs closing. */
int grpc_start(struct grpc_server *gs, uv_loop_t *loop,
               const struct pz_config *cfg, const struct grpc_backend *be,
               char *err, size_t errlen);
/* The port the listener is bound to. */
int grpc_local_port(const struct grpc_server *gs);
/* Shutdown step 1: stop accepting, send GOAWAY on every connection,
 * close idle ones; calls in flight finish (forwarded ones fail with
 * UNAVAILABLE, Health/Watch streams end), then their connections close. */
void grpc_drain(struct grpc_server *gs);
/* True when no gRPC connection is left (or the server never started). */
bool grpc_quiet(const struct grpc_server *gs);
/* Shutdown step 2, once grpc_quiet(): close timers and the forwarding
 * client (the loop then runs until they are closed). */
void grpc_close(struct grpc_server *gs);

/* --- Calls served by other modules (etcd.h) -------------------------------
 * A module's call gets its stream at dispatch and must end it exactly once
 * (grpc_stream_reply or grpc_stream_fail, or grpc_stream_forward, which
 * ends it when the leader answers). Node requests use the stream's
 * node_req (grpc_stream_req), marked with grpc_stream_in_node(st, true)
 * while it is with the node, so that a reset stream cancels it; its
 * callback finds the stream with grpc_stream_of and, after ending it or
 * not, calls grpc_stream_flush last (the stream may be freed there). A
 * module's per-call state hangs on the stream (grpc_stream_set_ext) and is
 * freed with it. A forwarded call that never reached the leader is
 * dispatched again later (etcd_call). */
struct gstream;
struct grpc_server *grpc_stream_server(struct gstream *st);
/* The request message (never NULL) and its length. */
const uint8_t *grpc_stream_msg(struct gstream *st, size_t *len);
/* The request message as the call's token check already unpacked it
 * (auth_grpc_etcd_unpacked), if it did as desc: the caller's from then on,
 * to free with grpc_pb_allocator. NULL otherwise: unpack it. */
ProtobufCMessage *grpc_stream_unpacked(struct gstream *st,
                                       const ProtobufCMessageDescriptor *desc);
/* The call keeps its request unpacked, holding bytes (grpc_pb_counting),
 * for as long as it lives: that counts in max-partial-input with its raw
 * message (replacing what an earlier copy counted). False when the budget
 * has no room: the call ended with RESOURCE_EXHAUSTED. */
bool grpc_stream_hold_unpacked(struct gstream *st, size_t bytes);
struct node_req *grpc_stream_req(struct gstream *st);
struct gstream *grpc_stream_of(struct node_req *req);
void grpc_stream_in_node(struct gstream *st, bool in);
void grpc_stream_set_ext(struct gstream *st, void *ext,
                         void (*ext_free)(void *));
void *grpc_stream_ext(struct gstream *st);
/* True (and the call ended with DEADLINE_EXCEEDED) when its grpc-timeout
 * passed. */
bool grpc_stream_deadline_passed(struct gstream *st);
/* True once the call has ended (its status is set: by the module, its
 * deadline, a drain), though the stream may live on until its answer went:
 * work still pending for it is to be dropped. */
bool grpc_stream_ended(const struct gstream *st);
/* A module that queues answers itself (a watch, keep-alives) counts
 * them with the connection's output: add bytes queued, sub bytes taken
 * off the queue (sent, or dropped). False, and nothing counted, when the
 * added bytes do not fit in max-pending-output: the connection is being
 * closed (conn_output_fits), the answer is to be dropped. What a stream
 * still counts when it is freed is released with it. */
bool grpc_stream_charge(struct gstream *st, size_t add, size_t sub);
/* A call building a large answer (a Txn's reads, as it applies) counts
 * each piece before making it: add bytes as grpc_stream_charge, but false
 * when they have no room (conn_output_room) leaves the connection open,
 * for the call to fail instead. Given back with grpc_stream_charge(st, 0,
 * bytes) before the answer is sent, or with the stream. */
bool grpc_stream_reserve(struct gstream *st, size_t add);
/* A read finished (its read point passed): when answers already wait for
 * the client beyond what a connection may hold, or other calls wait for
 * room before it, hold the stream (true) and call resume(st) once there
 * is room, in order, to build the answer then (from the state as it is
 * then: still linearizable); false: answer now. */
bool grpc_stream_hold_read(struct gstream *st,
                           void (*resume)(struct gstream *st));
/* Room for a response message of len bytes (conn_output_fits, with its
 * framing): checked before the message is made, so that an answer the
 * connection is closed for is never built. False: the connection is
 * closing; end the call without it. */
bool grpc_stream_fits(struct gstream *st, size_t len);
/* One response message and OK. */
void grpc_stream_reply(struct gstream *st, const void *msg, size_t len);
/* One message of a server stream (the call goes on). */
void grpc_stream_send(struct gstream *st, const void *msg, size_t len);
/* One message of a server stream written in pieces: its length-prefix
 * for len bytes, then exactly len bytes in grpc_stream_send_more calls,
 * nothing else on the stream in between (a pump writes the next piece
 * once the output has gone to nghttp2). A piece over max-pending-output
 * is dropped: the connection is being closed. */
void grpc_stream_send_begin(struct gstream *st, size_t len);
void grpc_stream_send_more(struct gstream *st, const void *p, size_t n);
/* Bytes of st's output not yet taken by nghttp2. */
size_t grpc_stream_out_pending(const struct gstream *st);
/* End the call with status and a message (grpc-message). */
void grpc_stream_fail(struct gstream *st, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Start a server stream whose messages pump makes one at a time: it is
 * called whenever the stream's output has gone to nghttp2 (the client
 * reads), adds the next message with grpc_stream_send, or the last one
 * with grpc_stream_reply (or ends the call with grpc_stream_fail). It
 * runs inside nghttp2's data callback: it must not flush. */
void grpc_stream_pump(struct gstream *st, void (*pump)(struct gstream *st));
/* Relay the call, as received, to the leader; its answer is ours. */
void grpc_stream_forward(struct gstream *st);
/* End the call at once with RST_STREAM (CANCEL), dropping any output it
 * still holds (a client that stopped reading); flush afterwards. */
void grpc_stream_reset(struct gstream *st);
/* A bidirectional call's one message, sent on its own to the leader as a
 * unary call of the same method (the leader answers it with one message
 * and OK once the request ends). What the call holds counts in *held
 * (grpc_call_opts.held: the caller's, 0 at first, back to 0 once the call
 * is reset or cancelled), against max-pending-output as any relayed
 * call's, and GRPC_RELAY_COST with st's output (grpc_stream_reserve),
 * which the caller gives back (grpc_stream_charge) in cb. 0 and cb later
 * (cancel call with grpc_client_cancel), or at once PZ_ENOLEADER (no leader
 * known, or st itself was forwarded: one hop only), PZ_EOVERLOAD (no room in
 * max-pending-output for it: answer GRPC_RELAY_BUSY_MSG; nothing was sent) or
 * another code. */
int grpc_stream_forward_call(struct gstream *st, struct grpc_call *call,
                             const void *msg, size_t len, uint64_t timeout_ms,
                             size_t *held, grpc_call_cb cb);
/* Put pending output on the wire; st may be freed here. */
void grpc_stream_flush(struct gstream *st);
/* conn_now() when nghttp2 last took some of st's output, or when output
 * began to wait (0: never). */
uint64_t grpc_stream_output_moved(const struct gstream *st);

#endif
