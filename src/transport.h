/* transport.h - the Raft peer transport: sends struct raft_msg to other
 * nodes over TCP and hands received ones to a callback, on the process
 * loop.
 *
 * Connections are one-directional (as canonical/raft's uv transport): a
 * node dials each peer it has something to send to and only writes on that
 * connection; it accepts connections from peers on its listen address and
 * only reads from those. The dialer opens with a Handshake (protocol
 * version, cluster id, its node id and name, the node id it expects to
 * reach, an optional cluster token); the acceptor answers OK or refuses
 * with a reason and closes. Frames: 4-byte big-endian length + protobuf
 * (proto/raft.proto, src/raft_codec.h).
 *
 * Happy path: transport_send() encodes the message at once and queues the
 * bytes for peer m->to; the peer's connection is opened on demand, and
 * queued messages move into the connection's output while it has little
 * pending, refilled from the connection's drain callback. On the far side
 * each frame is decoded and passed to the receive callback.
 *
 * Failure modes: a connection that fails, is refused, or drops goes into
 * exponential backoff with jitter (50 ms doubling to 2 s by default) and is
 * retried while messages wait; meanwhile messages queue up to a count and a
 * byte cap, past which the OLDEST are dropped and counted (Raft retries).
 * Messages already handed to a connection that then breaks are lost as TCP
 * loses them. Inbound garbage, an oversize length (max_frame; 64 KiB
 * until the handshake is accepted), a message before the handshake or a
 * refused handshake closes that connection with a log line; nothing a peer
 * sends can crash the process. Inbound links are exempt from the conn
 * layer's idle timeout once their handshake is accepted, not before.
 *
 * Requires the conn layer: conn_setup() done on the same loop, and
 * conn_before_sleep() called from the loop's prepare hook (output is only
 * written, and closed connections only reaped, there).
 *
 * Thread safety: none; everything runs on the loop thread. */
#ifndef PZ_TRANSPORT_H
#define PZ_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "raft.h"
#include "raft_codec.h"

struct transport;

/* A message arrived from a peer whose handshake was accepted (m->from is
 * that peer's id). m, its entries and their data are valid only during
 * the call: copy what you keep (raft_step does). The callback may call
 * transport_send and transport_close. */
typedef void (*transport_recv_cb)(void *data, const struct raft_msg *m);
/* The outbound link to peer id came up (handshake accepted) or went down
 * (it was up before). Optional. */
typedef void (*transport_peer_cb)(void *data, uint64_t id, bool connected);
/* A peer told us its addresses in a handshake: as a dialer to us (Raft
 * listen address too), or as the acceptor of our link (raft_addr ""; we
 * dialed it). Optional. */
typedef void (*transport_peer_info_cb)(void *data, uint64_t id,
                                       const char *name,
                                       const char *raft_addr,
                                       const char *http_addr,
                                       const char *grpc_addr);
/* transport_close finished: every handle is closed, the transport freed. */
typedef void (*transport_close_cb)(void *data);

struct transport_config {
    const char *listen_addr;   /* "host:port" (port 0: any, see
                                  transport_port); copied */
    uint64_t id;               /* this node's id, non-zero */
    const char *name;          /* this node's name for logs; copied */
    uint64_t cluster_id;       /* peers must present the same id */
    const char *token;         /* cluster token: NULL or "" = none (a
                                  dialer's token is then not checked);
                                  copied */
    transport_recv_cb recv;    /* required */
    transport_peer_cb on_peer; /* optional */
    transport_peer_info_cb on_peer_info; /* optional */
    /* cluster_id 0 means "joining": the first peer that dials us with a
     * valid handshake gives us its cluster id, reported here (optional;
     * persist it). */
    void (*on_cluster_id)(void *data, uint64_t cluster_id);
    /* A snapshot chunk from peer `from` (data valid during the call). */
    void (*on_chunk)(void *data, uint64_t from,
                     const struct raft_snap_chunk *c);
    const char *http_addr;     /* ours, told to peers; copied (NULL: "") */
    const char *grpc_addr;     /* ours, told to peers; copied (NULL: "") */
    void *data;                /* passed to the callbacks */
    uint64_t seed;             /* backoff jitter PRNG seed (0: from the
                                  clock) */
    /* Tuning; 0 picks the default shown. */
    size_t max_queue_msgs;       /* per peer queue cap (4096) */
    size_t max_queue_bytes;      /* per peer queue cap (32 MiB) */
    size_t max_frame;            /* largest frame body, both ways
                                    (RAFT_FRAME_MAX, 65 MiB) */
    size_t out_low_water;        /* queue -> connection while the connection
                                    has less pending than this (256 KiB) */
    uint64_t backoff_min_ms;     /* first retry delay (50) */
    uint64_t backoff_max_ms;     /* retry delay cap (2000) */
    uint64_t connect_timeout_ms; /* connect + handshake deadline (5000) */
    size_t max_inbound;          /* accepted connections at most (1024) */
};

/* Per-peer counters (outbound side). */
struct transport_peer_stats {
    uint64_t id;         /* peer id */
    bool connected;      /* handshake accepted, link up */
    size_t queued_msgs;  /* messages waiting in the transport queue */
    size_t queued_bytes; /* their encoded bytes */
    uint64_t sent_msgs;  /* messages handed to a connection */
    uint64_t sent_bytes; /* their bytes, framing included */
    uint64_t dropped;    /* messages dropped: queue cap (oldest
                            first), too big to send, peer changed */
    uint64_t connects;   /* handshakes accepted */
    uint64_t attempts;   /* connection attempts */
    uint64_t reconnects; /* attempts after the first one */
    uint64_t refused;    /* handshakes refused by the peer */
};

struct transport_stats {
    size_t peers;             /* configured peers */
    size_t inbound;           /* accepted connections open now */
    uint64_t recv_msgs;       /* messages delivered to the recv callback */
    uint64_t recv_bytes;      /* their frame bytes */
    uint64_t inbound_refused; /* handshakes we refused */
    uint64_t inbound_errors;  /* inbound connections closed for garbage,
                                 oversize frames or protocol errors */
    uint64_t unroutable;      /* transport_send to an unknown peer */
};

/* Creates the transport and starts listening. Returns NULL with a message
 * in err (bad config, cannot listen). */
struct transport *transport_new(uv_loop_t *loop,
                                const struct transport_config *cfg, char *err,
                                size_t errlen);

/* The port actually bound (useful with port 0), or -1. */
int transport_port(const struct transport *t);

/* Adds peer id at "host:port", or changes its address (the current
 * connection is closed, queued messages wait for the new one and backoff
 * restarts). No connection is made until there is something to send.
 * Returns 0, PZ_EINVAL (id 0, own id, bad address), PZ_ESHUTDOWN. */
int transport_set_peer(struct transport *t, uint64_t id, const char *addr);

/* Forgets peer id: closes its connection, drops its queue. Returns 0 or
 * PZ_ENOTFOUND. */
int transport_remove_peer(struct transport *t, uint64_t id);

/* Encodes m now (nothing of m is kept after the call) and queues it for
 * peer m->to, connecting if needed. Returns 0 (queued; delivery is not
 * guaranteed), PZ_ENOTFOUND (unknown peer), PZ_ETOOBIG (over max_frame;
 * counted as dropped), PZ_ESHUTDOWN (transport closing). */
int transport_send(struct transport *t, const struct raft_msg *m);

/* Queue a snapshot chunk to peer `to`, in order with its messages. The
 * queue drops the oldest frames past its caps like any message: senders
 * pace chunks on transport_peer_stats().queued_bytes. Returns as
 * transport_send. */
int transport_send_chunk(struct transport *t, uint64_t to,
                         const struct raft_snap_chunk *c);

/* Counters of peer id. Returns 0 or PZ_ENOTFOUND. */
int transport_peer_stats(const struct transport *t, uint64_t id,
                         struct transport_peer_stats *st);
void transport_stats(const struct transport *t, struct transport_stats *st);

/* Closes the listener and every connection, drops queued messages, and
 * calls cb(cfg.data) once every handle is closed and the transport is
 * freed (from a later loop iteration, never from inside this call). No
 * callback other than cb is called after this. cb may be NULL. */
void transport_close(struct transport *t, transport_close_cb cb);

#endif
