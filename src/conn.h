/* conn.h - TCP connections on the loop: listeners, buffered output flushed
 * once per loop turn, backpressure, idle timeouts and a safe close protocol.
 * Protocols (HTTP, gRPC, mandi) sit on top through struct conn_ops.
 *
 * Happy path: a listener accepts, on_open() gives the protocol its state,
 * every read is handed to on_data() (the bytes are only valid during the
 * call), replies go through conn_write() into the connection's output
 * buffer, and conn_before_sleep() (called from the loop's prepare hook)
 * writes every buffer out: uv_try_write first, the rest by uv_write.
 * Failure modes: a peer that stops reading makes output pile up: past
 * conn-high-water the connection stops reading until it drains, past
 * conn-hard-limit it is closed, and so is one whose peer has taken none
 * of its output for the listener's send_timeout. A peer silent past
 * client-idle-timeout is closed unless the protocol marks the connection
 * busy. A read or write error closes. Closing is deferred: conn_close()
 * only flags the connection, and the reaping happens in
 * conn_before_sleep(), never inside a callback that may still use it
 * (Redis freeClientAsync).
 *
 * Hostile peers (a client that trickles bytes, holds half-sent requests or
 * opens connections until none is left) are bounded here by three means
 * the protocols opt into:
 *  - the partial-input budget: one process-wide count of the bytes held
 *    for requests not yet received completely (buffered input, parser
 *    state), charged to the connection that holds them
 *    (conn_in_reserve/release/set). A protocol refuses a request whose
 *    bytes would pass max-partial-input;
 *  - a deadline per connection (conn_set_deadline), which the protocol
 *    sets from the first byte of a request to the end of its headers, and
 *    from there to the end of its body: unlike the idle timeout, bytes that
 *    trickle in do not move it;
 *  - eviction instead of refusal at max_conns (conn_listener.evict, see
 *    on_connection in conn.c): a new client takes the place of the oldest
 *    connection that has not completed a request, or else of the one idle
 *    the longest or whose output has waited unread the longest, so slow
 *    connections cannot lock new clients out;
 *  - a send timeout (conn_listener.send_timeout): a peer that leaves its
 *    output unread, taking none of it, is closed, so that answers nobody
 *    reads are not held for ever;
 *  - one bound on the output waiting for all clients together
 *    (max_pending_output, conn_output_fits): past it, connections whose
 *    output has not moved for a second, or drains too slowly to be out
 *    within the send timeout, are closed, else the connection whose large
 *    answer would pass it. */
#ifndef PZ_CONN_H
#define PZ_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "pz.h"
#include "queue.h"

struct conn;
struct tls_slot;
struct tls_conn;

struct conn_ops {
    /* A connection was accepted; set c->proto. Return 0, or a negative
     * code to close it at once. */
    int (*on_open)(struct conn *c);
    /* Bytes arrived; valid only during the call. */
    void (*on_data)(struct conn *c, const char *data, size_t len);
    /* All output was written (optional): protocols that produce output
     * lazily (nghttp2) produce more here. */
    void (*on_drain)(struct conn *c);
    /* The connection is going away: release c->proto and anything that
     * points at c. Called exactly once, before the handle closes. */
    void (*on_close)(struct conn *c);
    /* The deadline set by conn_set_deadline() passed (optional: without
     * it the connection is closed). Called from conn_cron(), with the
     * deadline already cleared. */
    void (*on_deadline)(struct conn *c);
    /* The connection is evicted to make room for a new client (optional):
     * say why with conn_write(). It is closed right after, keeping only
     * what the socket takes at once. */
    void (*on_evict)(struct conn *c);
    /* TLS: the handshake completed (optional). The peer's certificate can
     * be checked now (tls_peer_names...), before the protocol writes
     * anything it should tell only the right peer; called before any
     * plaintext is handed to on_data. It may close c. */
    void (*on_tls_ready)(struct conn *c);
};

struct conn_listener {
    uv_tcp_t tcp;               /* listening socket */
    const struct conn_ops *ops; /* protocol of accepted connections */
    const char *name;           /* "http", "grpc", ... for logs */
    void *data;                 /* protocol-wide state */
    struct pz_queue conns;      /* accepted, not yet closed; least
                                   recently active first */
    size_t n_conns;             /* length of conns */
    size_t max_conns;           /* over this, evict one or refuse */
    size_t n_admitted;          /* conns given to the protocol (on_open),
                                   not refused, evicted or reaped: what
                                   max_conns bounds */
    /* Called for a connection over max_conns before it is closed, so the
     * protocol can say why (optional). */
    void (*on_refuse)(struct conn *c);
    /* At max_conns, make room by evicting a connection when one qualifies
     * (see conn.c) and refuse only when none does. Set after
     * conn_listen(). */
    bool evict;
    /* Output waiting for a connection's peer while the peer takes none of
     * it for this long (ms; 0: no limit) closes the connection. Set after
     * conn_listen(); a connection keeps the value in force when it was
     * accepted. */
    uint64_t send_timeout;
    /* Client-facing: its connections' output counts against
     * max_pending_output. Set after conn_listen(). */
    bool clients;
    struct pz_queue fresh;      /* admitted conns that have not completed
                                   a request yet, oldest first */
    uint64_t evictions;         /* conns evicted so far */
    bool listening;             /* tcp is open */
    struct pz_queue lq;         /* in the idle sweep's list of listeners */
    /* TLS (tls.h): when tls is on, every accepted connection speaks TLS
     * and the protocol sees only plaintext. Set after conn_listen(). A
     * handshake not done within handshake_ms (0 = no limit) closes. */
    const struct tls_slot *tls;
    uint64_t handshake_ms;
    /* Protected mode: a client from an address other than loopback
     * (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) gets refusal (refusal_len
     * bytes, may be NULL) and is closed. */
    bool loopback_only;
    const char *refusal;
    size_t refusal_len;
};

enum {
    CONN_CLOSE_ASAP = 1 << 0,   /* reap in conn_before_sleep */
    CONN_CLOSE_AFTER = 1 << 1,  /* close once output is written */
    CONN_PAUSED = 1 << 2,       /* protocol asked to stop reading */
    CONN_BACKPRESSURE = 1 << 3, /* output over high water: not reading */
    CONN_READING = 1 << 4,      /* uv_read_start is active */
    CONN_PENDING = 1 << 5,      /* on the pending-write list */
    CONN_CLOSED = 1 << 6,       /* uv_close called */
    CONN_OUTBOUND = 1 << 7,     /* made by conn_connect */
    CONN_LINGER = 1 << 8,       /* output done, write side shut down:
                                   reading and discarding until EOF */
    CONN_ADMITTED = 1 << 9,     /* counted in ls->n_admitted */
    CONN_SERVED = 1 << 10,      /* completed a request: not in ls->fresh */
    CONN_IDLE_PROTO = 1 << 11,  /* reads and writes are not activity: the
                                   protocol calls conn_touch() */
    CONN_COUNTED = 1 << 12,     /* in pyazdb_clients_connected (stats.h) */
    CONN_SOFT_PAUSED = 1 << 13, /* conn_pause_soft: pause at next input */
    CONN_TURN_PAUSED = 1 << 14, /* took its share of this loop turn's
                                   input: read again next turn */
    CONN_OWN_BOUNDS = 1 << 15,  /* the protocol bounds what it queues
                                   (Raft links): no hard_limit */
    CONN_EOF_CLOSES = 1 << 16,  /* conn_eof_closes: an EOF in a soft pause
                                   closes the connection */
    CONN_COUNT_OUT = 1 << 17,   /* outbound, yet its output counts against
                                   max_pending_output (conn_count_output) */
};

struct conn {
    uv_tcp_t tcp;              /* the socket; tcp.data == this */
    struct conn_listener *ls;  /* owner, NULL for outbound connections */
    const struct conn_ops *ops;/* protocol callbacks */
    void *proto;               /* protocol state */
    struct pz_buf out;         /* output not yet handed to libuv */
    size_t inflight;           /* bytes in uv_write requests */
    unsigned flags;            /* CONN_* */
    int busy;                  /* > 0: work in flight, exempt from idle */
    uint64_t last_io;          /* uv_now() of the last activity: read,
                                  write or conn_touch() */
    uint64_t opened;           /* uv_now() when accepted or dialed */
    uint64_t deadline;         /* uv_now() ms for on_deadline, 0 = none */
    size_t in_held;            /* partial input charged to the budget */
    uint64_t sent_now;         /* bytes uv_try_write handed the socket */
    uint64_t sent_queued;      /* bytes handed to uv_write */
    uint64_t stall_sent;       /* what the peer had taken at stall_since */
    uint64_t ctrl_sent;        /* bytes of the protocol's control frames
                                  handed to c (HTTP/2: all but DATA):
                                  the peer taking those is no progress */
    uint64_t stall_ctrl;       /* ctrl_sent (with TLS's own bytes) at
                                  the last look */
    uint64_t stall_since;      /* uv_now() from which output waits unmoved */
    uint64_t rate_sent;        /* what the peer had taken at rate_at */
    uint64_t rate_at;          /* uv_now() of that sample, 0: none */
    uint64_t drain_rate;       /* bytes/s the peer took over the last
                                  CONN_RATE_WINDOW_MS, UINT64_MAX: not
                                  known yet */
    size_t out_held;           /* output the protocol holds for the peer
                                  outside c->out (conn_hold_output) */
    size_t out_charged;        /* what c counts in the output total */
    struct pz_queue q;         /* in ls->conns (least recently active
                                  first) or the outbound list */
    struct pz_queue fq;        /* in ls->fresh until CONN_SERVED */
    struct pz_queue pending;   /* in the pending-write or close list */
    struct pz_queue tq;        /* in the turn-paused list */
    uint64_t turn;             /* the loop turn turn_in counts in */
    size_t turn_in;            /* bytes read in that turn */
    char peer[64];             /* "ip:port" of the other end */
    uv_connect_t connect_req;  /* outbound: the connect request */
    uv_shutdown_t shutdown_req; /* lingering close */
    void (*connect_cb)(struct conn *c, int status); /* outbound */
    struct tls_conn *tls;      /* TLS state, NULL for plain text */
    uint64_t send_timeout;     /* accepted: ls->send_timeout then (ms) */
    uint64_t idle_timeout;     /* accepted: the idle timeout then (ms) */
};

struct conn_limits {
    size_t high_water;      /* pause reading past this much output */
    size_t hard_limit;      /* close past this much output */
    uint64_t idle_timeout;  /* ms; 0 = never */
    size_t max_partial_input; /* process-wide partial-input budget, bytes;
                                 0 = no limit */
    size_t max_pending_output; /* process-wide bound on output waiting for
                                  clients (conn_listener.clients), bytes;
                                  0 = no limit */
    size_t turn_input;         /* a client connection's input per loop turn
                                  before the other connections' turn, bytes;
                                  0 = 256 KiB */
};

/* When the listener evicts: a connection that has not completed a request
 * is evicted only once it is CONN_EVICT_FRESH_MS old (a client sends its
 * first request as it connects: this only keeps two newcomers from
 * evicting each other, and an attacker would have to open max_conns
 * connections within it to keep every slot out of reach); one that has is
 * evicted only once idle for CONN_EVICT_IDLE_MS. */
#define CONN_EVICT_FRESH_MS 100
#define CONN_EVICT_IDLE_MS 1000
/* How long a peer's reading is watched to tell its drain rate. */
#define CONN_RATE_WINDOW_MS 2000

/* Once per process, before any listener. */
void conn_setup(uv_loop_t *loop, const struct conn_limits *lim);
/* The loop conn_setup was given. */
uv_loop_t *conn_loop(void);
/* A new client-idle-timeout (ms, 0 = never) for the connections accepted
 * from now on (a reload); open ones keep theirs. */
void conn_set_idle_timeout(uint64_t ms);
/* The fewest client connections a port may be left by conn_fit_fds. */
#define CONN_MIN_CLIENTS 16
/* Fit `want` client connections on each of `ports` listeners, and
 * `reserve` descriptors for everything else the process opens, in its
 * open-files limit (RLIMIT_NOFILE). Past that limit accept() fails and
 * libuv closes the waiting connections unseen: new clients would be locked
 * out whatever max-clients says (its evictions never start), and the
 * process could open no file and accept no peer. So the soft limit is
 * first raised toward what is needed (never above the hard limit, as any
 * process may), and if that is not enough the clients a port may hold are
 * lowered, with a warning. *per gets the count (want or less). Returns 0,
 * or PZ_ECONFIG with a message in err when fewer than CONN_MIN_CLIENTS
 * fit. */
int conn_fit_fds(size_t want, size_t ports, size_t reserve, size_t *per,
                 char *err, size_t errlen);
/* Bind and listen on "host:port". Returns 0 or a negative code with a
 * message in err. */
int conn_listen(struct conn_listener *ls, const char *addr,
                const struct conn_ops *ops, const char *name, size_t max_conns,
                char *err, size_t errlen);
/* Stop accepting: the handle closes (cb, may be NULL, when it is closed);
 * existing connections stay. Idempotent. */
void conn_listener_stop(struct conn_listener *ls, uv_close_cb cb);
/* Flag every connection of ls for closing. */
void conn_listener_close_all(struct conn_listener *ls);

/* Connect out to "host:port"; cb(c, status) on completion (status < 0: the
 * connection is closed right after cb). ops->on_open is not called. */
struct conn *conn_connect(const char *addr, const struct conn_ops *ops,
                          void *proto,
                          void (*cb)(struct conn *c, int status));
/* The same from a given local address (an IP, any port): NULL or "" lets
 * the system choose. NULL also when source is not an IP it can bind. */
struct conn *conn_connect_from(const char *addr, const char *source,
                               const struct conn_ops *ops, void *proto,
                               void (*cb)(struct conn *c, int status));

/* Speak TLS on outbound c (right after conn_connect*, before it connects):
 * the server's certificate must chain to s's CA and name host (a name or
 * an IP; NULL: the chain only). What the protocol writes waits for the
 * handshake (and is sent to whoever completes it: a protocol that must
 * check the certificate first writes from ops->on_tls_ready); a failed
 * handshake closes c (logged once). Returns 0 or PZ_ENOMEM (c is
 * closed). */
int conn_start_tls(struct conn *c, const struct tls_slot *s, const char *host,
                   uint64_t handshake_ms);
/* The same, the server's certificate naming the host of addr ("host:port";
 * an empty, 0.0.0.0 or localhost host is 127.0.0.1, as conn_connect dials
 * it). */
int conn_start_tls_addr(struct conn *c, const struct tls_slot *s,
                        const char *addr, uint64_t handshake_ms);

void conn_write(struct conn *c, const void *p, size_t n);
/* Output the protocol holds for c's peer outside conn_write (answers
 * nghttp2 has not taken yet): counted with c's output against
 * max_pending_output. */
void conn_hold_output(struct conn *c, size_t bytes);
/* Outbound c carries what clients asked for (a follower's requests
 * forwarded to the leader): its output not yet taken by the peer counts
 * against max_pending_output like a client connection's, and so makes
 * the room conn_output_room() finds for clients. */
void conn_count_output(struct conn *c);
/* Bytes held for clients outside any connection's output (a forwarded
 * request's body, kept until the leader answers): *held, the holder's
 * count (0 at first), becomes bytes, counted against max_pending_output.
 * The holder sets it back to 0 when it lets them go. */
void conn_hold_detached(size_t *held, size_t bytes);
/* Room for n more bytes of output for c's peer: false when they would take
 * the output waiting for all clients past max_pending_output while c
 * itself holds more than high_water with them; c is then closed (after
 * closing, if that does not make the room, the client connections over
 * high_water whose output has not moved for CONN_EVICT_IDLE_MS or drains
 * too slowly to be out within the listener's send_timeout). */
bool conn_output_fits(struct conn *c, size_t n);
/* The same rule for an answer being built, checked before each piece of
 * it is made (what is built so far already counted, conn_hold_output or
 * grpc_stream_reserve): false when the n more bytes have no room (or c is
 * closing), c left open so that the call can fail with an error. */
bool conn_output_room(struct conn *c, size_t n);
/* Output waiting for clients, all connections together. */
size_t conn_output_total(void);
/* max_pending_output, for messages (0: no bound). */
size_t conn_output_max(void);
/* Output waiting in libuv or in c->out. */
size_t conn_output_pending(const struct conn *c);
/* Close now, dropping output not yet written. Idempotent. */
void conn_close(struct conn *c);
/* Close once everything written so far is out. */
void conn_close_after_flush(struct conn *c);
/* Protocol-level read pause (e.g. a pipelined request waits). */
void conn_pause(struct conn *c);
/* The same for a pause that usually ends before the peer sends more (a
 * client waiting for its answer): reading stays armed, so the pause and
 * its end cost no system call; the first input that arrives meanwhile
 * makes it a conn_pause (bytes are still delivered; an EOF or read error
 * is left in the socket and seen after conn_resume). */
void conn_pause_soft(struct conn *c);
/* While on: an EOF that arrives during a soft pause closes the connection
 * (the peer hung up on an answer it waits for) instead of waiting in the
 * socket. conn_resume turns it off. */
void conn_eof_closes(struct conn *c, bool on);
void conn_resume(struct conn *c);
bool conn_is_closing(const struct conn *c);

/* Activity that resets the idle clock (and the eviction order). Reads and
 * writes count as activity unless c has CONN_IDLE_PROTO. */
void conn_touch(struct conn *c);
/* c completed a request: it is no longer evicted as a slow newcomer. */
void conn_mark_served(struct conn *c);
/* Call ops->on_deadline (or close) once uv_now() reaches at; 0 clears.
 * Checked by conn_cron(), so it fires up to one cron period late. */
void conn_set_deadline(struct conn *c, uint64_t at);
/* uv_now() of the process loop. */
uint64_t conn_now(void);
/* How long (ms) c's output has waited with none of it acknowledged by
 * the peer, as of the last conn_cron; 0 when nothing waits. */
uint64_t conn_output_stalled(const struct conn *c);

/* --- the partial-input budget ---------------------------------------------
 * Bytes a protocol holds for requests (or peer messages) it has not
 * received completely: input buffered before parsing, a partial body or
 * message, parser state. All connections of the process share one budget
 * (conn_limits.max_partial_input); each connection's share is c->in_held,
 * released by the conn layer when the connection is reaped.
 * conn_in_reserve() charges n more bytes to c, or returns PZ_ENOMEM and
 * charges nothing when that would pass the budget; conn_in_set() moves c's
 * charge to n (growth may fail the same way, shrinking never fails). */
int conn_in_reserve(struct conn *c, size_t n);
void conn_in_release(struct conn *c, size_t n);
int conn_in_set(struct conn *c, size_t n);
/* conn_in_set that never fails: for input that must not be refused (a
 * member's Raft frames), counted so that clients meet the budget first. */
void conn_in_force(struct conn *c, size_t n);
/* Bytes charged now, over all connections; the budget (0: none). */
size_t conn_in_total(void);
size_t conn_in_limit(void);

/* From the prepare hook, once per loop turn: write pending output, apply
 * backpressure, reap closed connections. */
void conn_before_sleep(void);
/* True when output or closes wait for the next conn_before_sleep (the
 * loop must not block in poll). */
bool conn_has_work(void);
/* From a timer (every 250 ms to 1 s): close idle and lingering
 * connections, fire passed deadlines. */
void conn_cron(void);
/* Flag every outbound connection for closing (shutdown). */
void conn_close_outbound(void);
/* Connections not yet freed (all listeners and outbound). */
size_t conn_count(void);
/* Loop time (ms) of the latest input read from a connection of a
 * client-facing listener (ls.clients), 0 before any. */
uint64_t conn_client_input_at(void);

#endif
