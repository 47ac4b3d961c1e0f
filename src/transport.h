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
 * and closes. Frames: 4-byte big-endian length + protobuf
 * (proto/raft.proto, src/raft_codec.h).
 *
 * Who may connect: a dialer is accepted only if it presents the cluster
 * token (when one is set), the cluster id and a non-zero id other than
 * ours, and the owner does not say it was removed (check_peer). A member
 * removed from the committed configuration is told so in the refusal
 * (status REMOVED with the index and term of that configuration), which is
 * how a removed node learns it must stop. Ids the owner does not know are
 * accepted, as etcd's peer handler accepts them: a node whose log is
 * behind does not know the members added since, the leader among them;
 * the token is what authorizes a peer (a node starts without one only on
 * loopback addresses, or with an explicit `cluster-token none`: config.c),
 * and at most max_strangers such links are open at once. Peer TLS adds
 * authentication: a dialer's certificate must name the node it claims,
 * and a dialer sends its handshake (and token) only once the acceptor's
 * certificate names the member it dialed: whoever else answers at that
 * address learns nothing. A refusal carries its status and
 * nothing else: no cluster id, no node id, no name, no addresses.
 * Addresses travel from an acceptor to a dialer (the dialer reached it at
 * the member's configured address); what a dialer says of its own Raft
 * address is passed on only for an id the owner has no address for
 * (on_peer_info, dialed false), so that it can answer.
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
 * loses them. Inbound garbage, an oversize length (max_frame; 4 KiB until
 * the handshake is accepted), a message before the handshake, a refused
 * handshake, a handshake not complete within handshake_timeout_ms of the
 * accept (trickling does not extend it), or a message or chunk the owner's
 * callback calls invalid closes that connection, counted and logged (a
 * burst of such lines is cut short, with a summary); nothing a peer sends
 * can crash the process. At most max_unauth connections may be waiting
 * for their handshake: one more closes the oldest of them, so dialers that
 * never finish cannot lock members out. Inbound links are exempt from the
 * conn layer's idle timeout once their handshake is accepted, not before.
 * Memory held for a peer: one partial frame of at most max_frame bytes
 * per accepted link (one link per member), 4 KiB per link still in its
 * handshake; both count in the conn layer's partial-input budget
 * (max-partial-input), which a member's frame never waits for. A frame
 * that does not fit closes the link of a dialer in its handshake, and of
 * a dialer whose id is not in our configuration (or any but the first
 * contact while we are in none): those may hold a quarter of the budget
 * together, so that they cannot lock clients out.
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
 * the call: copy what you keep (raft_step does). Return NULL, or why the
 * message is invalid (no correct peer sends it): the link is then closed
 * and the reason logged. The callback may call transport_send and
 * transport_close. */
typedef const char *(*transport_recv_cb)(void *data, const struct raft_msg *m);
/* The outbound link to peer id came up (handshake accepted) or went down
 * (it was up before). Optional. */
typedef void (*transport_peer_cb)(void *data, uint64_t id, bool connected);
/* A peer's addresses. dialed: from the reply of peer id, which we reached
 * at its configured address (raft_addr is that address); else from the
 * handshake of a dialer claiming to be id (only its Raft listen address),
 * reported only for ids check_peer did not call members. Optional. */
typedef void (*transport_peer_info_cb)(void *data, uint64_t id, bool dialed,
                                       const char *name,
                                       const char *raft_addr,
                                       const char *http_addr,
                                       const char *grpc_addr);
/* transport_close finished: every handle is closed, the transport freed. */
typedef void (*transport_close_cb)(void *data);

/* The owner's verdict on a dialer's node id (check_peer). */
enum transport_peer_kind {
    TRANSPORT_PEER_STRANGER = 0,      /* not in our configuration: accepted
                                         (a node whose log is behind does not
                                         know members added since, among them
                                         maybe the leader), at most
                                         max_strangers such links at once;
                                         refused with peer TLS and no token */
    TRANSPORT_PEER_MEMBER,            /* a member, or one being added */
    TRANSPORT_PEER_JOINING,           /* we are in no configuration yet (a new
                                         node): any dialer that passed the
                                         token and cluster checks (with peer
                                         TLS and no token: only the first
                                         contact since we started) */
    TRANSPORT_PEER_REMOVED,           /* removed by a committed configuration:
                                         refused with REMOVED, *conf_index and
                                         *conf_term */
    TRANSPORT_PEER_OTHER_INCARNATION, /* a member of that id has another
                                         data dir: refused, and an acceptor
                                         answering so is not used */
};

struct transport_config {
    const char *listen_addr;   /* "host:port" (port 0: any, see
                                  transport_port); copied */
    uint64_t id;               /* this node's id, non-zero */
    uint64_t incarnation;      /* this node's data dir, sent both ways */
    /* The configuration entry from which this node knows itself a
     * member (0: not yet), sent both ways; read at each handshake.
     * Optional. */
    uint64_t (*member_since)(void *data);
    const char *source_addr;   /* local IP to dial peers from; NULL or ""
                                  lets the system choose; copied */
    const char *name;          /* this node's name for logs; copied */
    uint64_t cluster_id;       /* peers must present the same id */
    const char *token;         /* cluster token: NULL or "" = none (a
                                  dialer's token is then not checked);
                                  copied */
    /* Mutual TLS (tls.h), optional: with tls_in on, dialers must speak
     * TLS and show a certificate that chains to its CA and names, as a
     * DNS subjectAltName byte for byte (whatever the name looks like: an
     * IP subjectAltName never names a node), the node name they claim in
     * the handshake, whose id must be name_to_id(name); with tls_out on,
     * we dial with TLS and require the same of the acceptor's certificate
     * and reply, and send our handshake only once its certificate names
     * (name_to_id) the id we dialed. Borrowed: they must outlive the
     * transport. */
    const struct tls_slot *tls_in, *tls_out;
    /* A node name's id (the node's own mapping). Required when tls_in or
     * tls_out is given (transport_new refuses the config otherwise): we
     * know a member we dial by id only, and a certificate carries names,
     * so neither check can be made without it. Unused without TLS. */
    uint64_t (*name_to_id)(const char *name);
    transport_recv_cb recv;    /* required */
    transport_peer_cb on_peer; /* optional */
    transport_peer_info_cb on_peer_info; /* optional */
    /* Who is dialing us, or answering our dial (enum
     * transport_peer_kind), by id, incarnation and the entry it is a
     * member from; for REMOVED also the index and term of the committed
     * configuration entry without id. Optional: without it every peer
     * that passes the other checks is a member. */
    int (*check_peer)(void *data, uint64_t id, uint64_t incarnation,
                      uint64_t member_since, uint64_t *conf_index,
                      uint64_t *conf_term);
    /* Peer id, which we dialed, says the committed configuration entry
     * (conf_index, conf_term) no longer has us. Unauthenticated beyond the
     * peer's address: weigh it (node.c). Optional. */
    void (*on_removed)(void *data, uint64_t id, uint64_t conf_index,
                       uint64_t conf_term);
    /* An accepted link from peer id closed (a snapshot transfer on it is
     * over); last is false when another link of the same id remains (a
     * new one replaced it). Optional. */
    void (*on_inbound_closed)(void *data, uint64_t id, bool last);
    /* cluster_id 0 means "joining": the first peer that dials us with a
     * valid handshake gives us its cluster id, reported here (optional;
     * persist it). */
    void (*on_cluster_id)(void *data, uint64_t cluster_id);
    /* A snapshot chunk from peer `from` (data valid during the call).
     * Returns NULL or why it is invalid (the link is closed). */
    const char *(*on_chunk)(void *data, uint64_t from,
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
    uint64_t handshake_timeout_ms; /* inbound: accept to handshake (5000) */
    size_t max_unauth;           /* inbound links still in their handshake
                                    (64); one more closes the oldest */
    size_t max_strangers;        /* accepted links from ids not in our
                                    configuration, or any while we are in
                                    none (16); one more closes the
                                    oldest */
    size_t stranger_frame;       /* those links together may hold a
                                    quarter of max-partial-input in
                                    partial frames, and at least this
                                    (the largest frame a member we do
                                    not know yet may need to send) */
};

/* Per-peer counters (outbound side). */
struct transport_peer_stats {
    uint64_t id;         /* peer id */
    bool connected;      /* handshake accepted, link up */
    bool checksums;      /* the link's frames carry a CRC-32C */
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
    uint64_t inbound_invalid; /* of those: messages or chunks the owner
                                 called invalid */
    uint64_t inbound_corrupt; /* of those: frames whose checksum failed */
    uint64_t inbound_timeouts; /* handshakes not done in time */
    uint64_t inbound_evicted; /* closed to make room (max_unauth) */
    uint64_t unroutable;      /* transport_send to an unknown peer */
};

/* Creates the transport and starts listening. Returns NULL with a message
 * in err (bad config: id 0, no recv, no listen_addr, tls_in or tls_out
 * without name_to_id; cannot listen). */
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

/* Opens the link to peer id if it has none and nothing to send (only the
 * handshake: a removed node learns it so). Returns 0 or PZ_ENOTFOUND. */
int transport_probe(struct transport *t, uint64_t id);

/* Forgets peer id: closes its connection, drops its queue, and closes the
 * link it dialed to us, if any (a removed member redials and is told).
 * Returns 0 or PZ_ENOTFOUND (no outbound peer; its inbound link is
 * closed all the same). */
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
