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
 * conn-hard-limit it is closed. A peer silent past client-idle-timeout is
 * closed unless the protocol marks the connection busy. A read or write
 * error closes. Closing is deferred: conn_close() only flags the
 * connection, and the reaping happens in conn_before_sleep(), never inside
 * a callback that may still use it (Redis freeClientAsync). */
#ifndef PZ_CONN_H
#define PZ_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "pz.h"
#include "queue.h"

struct conn;

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
};

struct conn_listener {
    uv_tcp_t tcp;               /* listening socket */
    const struct conn_ops *ops; /* protocol of accepted connections */
    const char *name;           /* "http", "grpc", ... for logs */
    void *data;                 /* protocol-wide state */
    struct pz_queue conns;      /* accepted, not yet closed */
    size_t n_conns;             /* length of conns */
    size_t max_conns;           /* over this, accept and close at once */
    /* Called for a connection over max_conns before it is closed, so the
     * protocol can say why (optional). */
    void (*on_refuse)(struct conn *c);
    bool listening;             /* tcp is open */
    struct pz_queue lq;         /* in the idle sweep's list of listeners */
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
    uint64_t last_io;          /* uv_now() of the last read or write */
    struct pz_queue q;         /* in ls->conns or the outbound list */
    struct pz_queue pending;   /* in the pending-write or close list */
    char peer[64];             /* "ip:port" of the other end */
    uv_connect_t connect_req;  /* outbound: the connect request */
    uv_shutdown_t shutdown_req; /* lingering close */
    void (*connect_cb)(struct conn *c, int status); /* outbound */
};

struct conn_limits {
    size_t high_water;      /* pause reading past this much output */
    size_t hard_limit;      /* close past this much output */
    uint64_t idle_timeout;  /* ms; 0 = never */
};

/* Once per process, before any listener. */
void conn_setup(uv_loop_t *loop, const struct conn_limits *lim);
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

void conn_write(struct conn *c, const void *p, size_t n);
/* Output waiting in libuv or in c->out. */
size_t conn_output_pending(const struct conn *c);
/* Close now, dropping output not yet written. Idempotent. */
void conn_close(struct conn *c);
/* Close once everything written so far is out. */
void conn_close_after_flush(struct conn *c);
/* Protocol-level read pause (e.g. a pipelined request waits). */
void conn_pause(struct conn *c);
void conn_resume(struct conn *c);
bool conn_is_closing(const struct conn *c);

/* From the prepare hook, once per loop turn: write pending output, apply
 * backpressure, reap closed connections. */
void conn_before_sleep(void);
/* True when output or closes wait for the next conn_before_sleep (the
 * loop must not block in poll). */
bool conn_has_work(void);
/* From a 1 s timer: close idle connections. */
void conn_cron(void);
/* Flag every outbound connection for closing (shutdown). */
void conn_close_outbound(void);
/* Connections not yet freed (all listeners and outbound). */
size_t conn_count(void);

#endif
