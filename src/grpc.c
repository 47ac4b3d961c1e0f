/* grpc.c - the gRPC server: nghttp2 server sessions on conn.c connections,
 * gRPC framing from grpc_frame.c, the node through a grpc_backend.
 *
 * Happy path: a connection sends the HTTP/2 preface; we answer with our
 * SETTINGS at once. Each request stream names a method in :path; its DATA
 * is fed to a message reader; at END_STREAM a unary call is decoded and
 * handed to the node (node_read / node_propose); the node's callback
 * writes response HEADERS, the message (through a data provider) and, when
 * the provider runs dry, the trailers with grpc-status. Reflection streams
 * answer each request message as it arrives; etcd's bidirectional calls
 * (Watch, LeaseKeepAlive) get each request message as it arrives
 * (etcd_stream_message) and decide when to end; Health/Watch streams stay
 * open and get a message whenever serving state changes.
 * Output: nghttp2_session_mem_send() is drained into the connection's
 * buffer (copied: nghttp2 reuses its buffer) until 64 KiB are pending;
 * past that the connection stops reading until on_drain, so a client that
 * does not read cannot make us buffer without bound.
 * Failure modes: protocol errors are nghttp2's (GOAWAY, RST_STREAM); bad
 * preface or a fatal nghttp2 error closes the connection; gRPC errors end
 * the stream with a status (the README's "Status codes" table), as a
 * Trailers-Only response when nothing was sent yet; a stream the client
 * resets, or a connection that vanishes, cancels the node request or the
 * forwarded call and frees the stream, nothing else is affected. A call
 * this node cannot serve because it is not the leader is forwarded over one
 * persistent connection to the leader (grpc_client.c). A fatal HTTP/2
 * error found by nghttp2 (too many CONTINUATION frames, a flood) gets a
 * GOAWAY before the connection closes.
 *
 * Hostile clients. Each call charges the process-wide partial-input budget
 * (conn.h) for its state and its request message (partial or whole) for
 * as long as it holds them; a stream that would pass the budget ends with
 * RESOURCE_EXHAUSTED, the connection and its other streams go on. A stream
 * its client may keep open is charged only while a message of it arrives:
 * such streams are capped instead (hold_open_ended). Time limits that
 * trickled bytes
 * cannot extend: the preface and first SETTINGS, and every header block
 * (HEADERS + CONTINUATION), must arrive within client-header-timeout
 * (else GOAWAY and close); a stream's request message within
 * client-body-timeout from the end of its headers (a unary call: until
 * END_STREAM; a client-streaming call: each message from its first byte),
 * else DEADLINE_EXCEEDED on that stream. Time the node takes, Health/Watch
 * streams and a reflection stream waiting for its next request are not
 * limited. A connection's idle time counts from its last stream, not its
 * last byte (PINGs do not keep it), and at max-clients a new client may
 * evict a connection that is slow or idle (conn.c). */
#include "grpc.h"

#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "cluster.pb-c.h"
#include "etcd.h"
#include "etcd_map.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc_client.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "http_parse.h"
#include "kv.h"
#include "log.h"
#include "tls_setup.h"
#include "stats.h"
#include "tokens.h"

#define SEND_HIGH (64 * 1024)        /* stop producing output past this */
#define MAX_STREAMS 1000             /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define MAX_HEADER_BYTES (16 * 1024) /* request header list, bytes */
#define MAX_STATUS_MESSAGE 1024      /* encoded grpc-message, bytes */
#define STREAM_WINDOW (1 << 20)      /* least per-stream receive window */
#define CONN_WINDOW (16 << 20)       /* least connection receive window */
/* Beyond the largest message, a stream's window holds its 5-byte gRPC
 * prefix and room for a trailing empty DATA frame or padding. */
#define WINDOW_SLACK 1024
#define WATCH_POLL_MS 100            /* Health/Watch state poll */
/* A request refused on its headers alone is answered once the client has
 * sent the rest (at most this long): curl, for one, stalls when the answer
 * arrives while it is still uploading. Its body is dropped meanwhile. */
#define REFUSE_WAIT_MS 100
/* Request bytes one connection may hold in partial messages (at least four
 * maximal messages): HTTP/2 flow control does not bound this, since
 * nghttp2 reopens the window as soon as we copy the bytes out. */
#define SESSION_BUFFER_MAX ((size_t)64 << 20)
/* Response bytes one connection may hold before calls wait: flow control
 * stops a client from receiving, not us from producing, so past this new
 * calls are not dispatched and finished reads do not copy their value
 * until the client reads (a read served later than its read point is still
 * linearizable). Reading goes on: the WINDOW_UPDATEs that drain it arrive
 * that way. */
#define SESSION_OUT_MAX ((size_t)16 << 20)
/* Budget charged for a stream's state (stream_charge): ours and
 * nghttp2's (20,000 idle LeaseKeepAlive streams on 20 connections took
 * 2.3 KiB of RSS each). */
#define STREAM_COST (sizeof(struct gstream) + 1024)

enum method_kind {
    M_KV_GET,
    M_KV_SET,
    M_KV_DEL,
    M_STATUS,
    M_HEALTH_CHECK,
    M_HEALTH_WATCH,
    M_REFLECT,
    M_ETCD, /* etcd's v3 API (etcd.h): sub is the enum etcd_call */
};

struct method {
    const char *path;   /* :path */
    int kind;           /* enum method_kind */
    bool client_stream; /* request messages are handled one by one */
    int sub;            /* M_ETCD: enum etcd_call */
    bool outlives;      /* the call goes on after the client's side ends,
                           for as long as the client likes (a watch) */
};

static const struct method methods[] = {
    {"/kv.KVService/Get", M_KV_GET, false},
    {"/kv.KVService/Set", M_KV_SET, false},
    {"/kv.KVService/Delete", M_KV_DEL, false},
    {"/pyazdb.Cluster/Status", M_STATUS, false},
    {"/grpc.health.v1.Health/Check", M_HEALTH_CHECK, false},
    {"/grpc.health.v1.Health/Watch", M_HEALTH_WATCH, false, 0, true},
    {"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", M_REFLECT,
     true},
    {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
     M_REFLECT, true},
#define ETCD(svc, name, sub) {"/etcdserverpb." svc "/" name, M_ETCD, false, sub}
    ETCD("KV", "Range", ETCD_RANGE),
    ETCD("KV", "Put", ETCD_PUT),
    ETCD("KV", "DeleteRange", ETCD_DELETE_RANGE),
    ETCD("KV", "Txn", ETCD_TXN),
    ETCD("KV", "Compact", ETCD_COMPACT),
    ETCD("Cluster", "MemberAdd", ETCD_MEMBER_ADD),
    ETCD("Cluster", "MemberRemove", ETCD_MEMBER_REMOVE),
    ETCD("Cluster", "MemberUpdate", ETCD_MEMBER_UPDATE),
    ETCD("Cluster", "MemberList", ETCD_MEMBER_LIST),
    ETCD("Cluster", "MemberPromote", ETCD_MEMBER_PROMOTE),
    ETCD("Maintenance", "Alarm", ETCD_ALARM),
    ETCD("Maintenance", "Status", ETCD_STATUS),
    ETCD("Maintenance", "Defragment", ETCD_DEFRAGMENT),
    ETCD("Maintenance", "Hash", ETCD_HASH),
    ETCD("Maintenance", "HashKV", ETCD_HASHKV),
    ETCD("Maintenance", "Snapshot", ETCD_SNAPSHOT),
    ETCD("Maintenance", "MoveLeader", ETCD_MOVE_LEADER),
    ETCD("Lease", "LeaseGrant", ETCD_LEASE_GRANT),
    ETCD("Lease", "LeaseRevoke", ETCD_LEASE_REVOKE),
    ETCD("Lease", "LeaseTimeToLive", ETCD_LEASE_TTL),
    ETCD("Lease", "LeaseLeases", ETCD_LEASE_LEASES),
    /* Bidirectional: each request message goes to etcd_stream_message. */
    {"/etcdserverpb.Watch/Watch", M_ETCD, true, ETCD_WATCH, true},
    {"/etcdserverpb.Lease/LeaseKeepAlive", M_ETCD, true, ETCD_LEASE_KEEPALIVE},
    ETCD("Auth", "AuthStatus", ETCD_AUTH_STATUS),
    ETCD("Auth", "AuthEnable", ETCD_AUTH_OTHER),
    ETCD("Auth", "AuthDisable", ETCD_AUTH_OTHER),
    ETCD("Auth", "Authenticate", ETCD_AUTHENTICATE),
#undef ETCD
};

struct gsession;

enum {
    REFUSE_NONE = 0, /* not refused */
    REFUSE_HTTP = 1, /* plain HTTP error (405, 415) */
    REFUSE_GRPC = 2, /* gRPC status */
};

enum {
    HOLD_NONE = 0,     /* not held */
    HOLD_DISPATCH = 1, /* request complete, not yet given to the node */
    HOLD_REPLY = 2,    /* read done, value not yet copied out */
};

struct gstream {
    struct gsession *s;     /* owner */
    int32_t id;             /* HTTP/2 stream id */
    struct pz_queue q;      /* in s->streams */
    const struct method *m; /* from :path, NULL when unknown */
    char path[128];         /* :path as sent (cut), for messages */
    size_t hdr_bytes;       /* bytes so far of the header list arriving
                               (request headers, then trailers) */
    bool post;              /* :method is POST */
    bool ctype_ok;          /* content-type is application/grpc... */
    bool was_forwarded;     /* pyazdb-forwarded header present */
    bool one_message;       /* pyazdb-unary header present: a
                               client-streaming method called with one
                               message (the etcd gateway's keep-alives) */
    ProtobufCMessage *unpacked; /* the request as its check unpacked it,
                                   until etcd_unpack takes it (or NULL) */
    size_t unpacked_bytes;      /* what the call's unpacked request holds
                                   (charged with the stream) */
    char *cred;             /* credential sent: the X of "authorization:
                               Bearer X" or of etcd's "token: X"; NULL */
    int timeout_state;      /* 0 none, 1 valid, -1 malformed */
    uint64_t timeout_ms;    /* grpc-timeout */
    struct grpc_reader rd;  /* request messages */
    size_t rd_counted;      /* rd.msg.cap counted in s->buffered */
    bool headers_done;      /* request headers were checked */
    /* response */
    bool responded;       /* response HEADERS submitted */
    bool ended;           /* final status set */
    bool deferred;        /* data provider is waiting for output */
    bool http_error;      /* plain HTTP error reply: no trailers */
    bool reset_after;     /* RST_STREAM once the reply is out */
    bool open_ended;      /* counted in s->n_open_ended */
    bool req_ended;       /* END_STREAM received */
    int refused;          /* REFUSE_*: answer waiting for END_STREAM */
    int refuse_status;    /* gRPC status, or HTTP status */
    char refuse_msg[200]; /* its message or body */
    struct pz_buf out;    /* response bytes not yet given to nghttp2 */
    size_t out_off;       /* bytes of out already given */
    uint64_t out_moved;   /* conn_now() nghttp2 last took some of out, or
                             out began to fill */
    size_t msg_left;      /* bytes of a message written in pieces still to
                             come (grpc_stream_send_begin) */
    int status;           /* grpc-status */
    struct pz_buf msg;    /* percent-encoded grpc-message */
    /* asynchronous work */
    struct grpc_kv_req kreq; /* decoded kv request (borrows rd.msg) */
    struct node_req req;     /* node request */
    bool in_node;            /* req is with the node */
    struct grpc_call call;   /* forwarded call */
    bool call_used;          /* call was started once: reset it at the end */
    bool in_fwd;             /* call is with the leader */
    size_t fwd_held;         /* its request kept for the call with the
                                leader, and */
    size_t call_held;        /* what the call holds (grpc_call_opts.held),
                                both counted against max-pending-output */
    int leader_waits;        /* waits for a leader to forward to since the
                                last forward sent (forward) */
    bool has_deadline;       /* grpc-timeout given */
    uint64_t started_ns;     /* stats_now_ns() when the stream opened */
    uint64_t deadline;       /* uv_now() ms when it expires */
    struct pz_queue dq;      /* in gs->deadlines while has_deadline */
    bool in_dq;              /* dq is linked */
    struct pz_queue rq;      /* in gs->retries while in_rq */
    bool in_rq;              /* a forward waits to be sent again */
    uint64_t retry_at;       /* uv_now() when it goes */
    uint64_t retry_until;    /* no retry starts after this, 0: unset */
    uint64_t retry_pause;    /* next pause, ms */
    struct pz_queue wq;      /* in gs->watchers */
    bool in_wq;              /* wq is linked */
    struct pz_queue hq;      /* in s->held */
    int held;                /* HOLD_*: waiting for output room */
    void (*resume)(struct gstream *st); /* HOLD_REPLY: builds the answer */
    size_t charged;          /* partial-input budget charged for it */
    size_t queued;           /* its part of s->out_queued */
    bool over_budget;        /* no budget for it: refused at headers */
    struct pz_queue bq;      /* in s->body_q while in_bq */
    bool in_bq;              /* its request message is arriving */
    uint64_t body_due;       /* uv_now() by which it must be in */
    int watch_last;          /* last ServingStatus sent */
    char watch_service[128]; /* service watched */
    void *ext;               /* a service module's state (etcd.h) */
    void (*pump)(struct gstream *st); /* refills a drained server stream */
    void (*ext_free)(void *ext); /* frees it with the stream */
};

struct gsession {
    struct grpc_server *gs;   /* owner */
    struct conn *c;           /* the connection */
    nghttp2_session *ng;      /* HTTP/2 state */
    struct pz_queue streams;  /* struct gstream */
    size_t n_streams;         /* length of streams */
    size_t n_open_ended;      /* of which open for as long as the client
                                 likes (open_ended) */
    size_t buffered;          /* request bytes held by readers */
    size_t out_bytes;         /* response bytes not yet given to nghttp2 */
    size_t out_queued;        /* answers the streams' modules queue
                                 themselves (grpc_stream_charge) */
    struct pz_queue held;     /* complete calls waiting for out_bytes */
    int in_recv;              /* inside mem_recv: no mem_send now */
    struct grpc_h2_scan scan; /* frame boundaries of the input */
    uint64_t preface_due;     /* uv_now() by which the preface must be in */
    uint64_t block_due;       /* ... and the open header block, 0: none */
    struct pz_queue body_q;   /* streams receiving a request message, by
                                 body_due (FIFO: one timeout for all) */
    bool dead;                /* fatal error: GOAWAY sent, input ignored */
    bool blocked;             /* output over SEND_HIGH: not reading */
    bool dirty;               /* on the dirty list: flush soon */
    struct gstream *last_st;  /* stream_get's last answer, or NULL */
    struct pz_queue dirty_q;  /* in the dirty list */
};

static nghttp2_session_callbacks *callbacks; /* shared by all sessions */
static nghttp2_option *ng_options;           /* ... and their options */
static int callbacks_refs;                   /* servers using callbacks */
static struct pz_queue dirty_list;           /* sessions to flush */

/* --- backend on the real node ---------------------------------------- */

const struct grpc_backend grpc_node_backend = {
    .propose = node_propose,
    .read = node_read,
    .cancel = node_cancel,
    .kv = node_kv,
    .leader_grpc_addr = node_leader_grpc_addr,
    .status = node_status,
    .health = node_health,
    .wait_leader = node_wait_leader,
    .applying = node_applying,
};

/* --- output ---------------------------------------------------------- */

static void on_kick(uv_idle_t *h)
{
    uv_idle_stop(h);
}

static void kick(struct grpc_server *gs)
{
    /* Output written while conn_before_sleep runs (on_drain, a reaped
     * connection's callbacks) may miss this turn's flush: make sure the
     * next poll does not block before it goes out. */
    if (!uv_is_closing((uv_handle_t *)&gs->kick))
        uv_idle_start(&gs->kick, on_kick);
}

static void dispatch(struct gstream *st);
static void read_reply(struct gstream *st);

static bool out_full(const struct gsession *s)
{
    return s->out_bytes > SESSION_OUT_MAX;
}

static void hold(struct gstream *st, int why)
{
    st->held = why;
    pz_queue_push(&st->s->held, &st->hq);
}

/* A finished read waits for room; resume(st) answers it then. */
static void hold_reply(struct gstream *st, void (*resume)(struct gstream *st))
{
    st->resume = resume;
    hold(st, HOLD_REPLY);
}

static void node_error(struct gstream *st, int rv, bool write);
static bool session_flush(struct gsession *s);

/* A held answer whose entry's end it waited for (node_read, stale):
 * built now, or held again. */
static void on_held_read(struct node_req *req, int status)
{
    struct gstream *st = container_of(req, struct gstream, req);
    struct gsession *s = st->s;
    st->in_node = false;
    if (status < 0)
        node_error(st, status, false);
    else if (out_full(s))
        hold_reply(st, st->resume);
    else
        st->resume(st);
    session_flush(s);
}

/* Go on with held calls, in order, while there is room for output. An
 * answer (it reads the table) is not built while part of an entry is
 * applied: it waits for the entry's end through a stale read, whose
 * callback runs only then. */
static void release_held(struct gsession *s)
{
    while (!pz_queue_empty(&s->held) && !out_full(s) &&
           !conn_is_closing(s->c)) {
        struct gstream *st =
            container_of(pz_queue_head(&s->held), struct gstream, hq);
        pz_queue_remove(&st->hq);
        int why = st->held;
        st->held = HOLD_NONE;
        const struct grpc_backend *be = s->gs->be;
        if (why == HOLD_DISPATCH) {
            dispatch(st);
        } else if (be->applying && be->applying()) {
            st->in_node = true;
            int rv = be->read(&st->req, true, on_held_read);
            if (rv < 0) {
                st->in_node = false;
                node_error(st, rv, false);
            }
        } else {
            st->resume(st);
        }
    }
}

/* Hand nghttp2's output to the connection, up to SEND_HIGH pending, and
 * go on with held calls when there is room. Returns true if anything was
 * written. A no-op inside mem_recv (nghttp2 forbids sending from its
 * callbacks): on_data flushes once mem_recv returns. */
static bool session_flush(struct gsession *s)
{
    bool wrote = false;
    if (s->in_recv || conn_is_closing(s->c))
        return false;
    release_held(s);
    while (conn_output_pending(s->c) < SEND_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(s->ng, &data);
        if (n < 0) {
            pz_debug("grpc: %s: send: %s", s->c->peer,
                     nghttp2_strerror((int)n));
            conn_close(s->c);
            return wrote;
        }
        if (n == 0) {
            /* Sending may have made room for held calls. */
            size_t before = s->out_bytes;
            if (pz_queue_empty(&s->held) || out_full(s))
                break;
            release_held(s);
            if (!nghttp2_session_want_write(s->ng) && s->out_bytes == before)
                break;
            continue;
        }
        conn_write(s->c, data, (size_t)n);
        wrote = true;
    }
    bool over = conn_output_pending(s->c) >= SEND_HIGH;
    if (over && !s->blocked) {
        s->blocked = true;
        conn_pause(s->c);
    } else if (!over && s->blocked) {
        s->blocked = false;
        conn_resume(s->c);
    }
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        conn_close_after_flush(s->c);
    return wrote;
}

static void mark_dirty(struct gsession *s)
{
    if (!s->dirty) {
        s->dirty = true;
        pz_queue_push(&dirty_list, &s->dirty_q);
    }
}

static void flush_dirty(void)
{
    while (!pz_queue_empty(&dirty_list)) {
        struct pz_queue *e = pz_queue_head(&dirty_list);
        struct gsession *s = container_of(e, struct gsession, dirty_q);
        pz_queue_remove(e);
        s->dirty = false;
        session_flush(s);
    }
}

/* --- response -------------------------------------------------------- */

/* The decimal text of a grpc-status into code[8] (snprintf's "%d",
 * without its cost on every answer). */
static void status_text(char code[8], int status)
{
    if (status >= 0 && status < 100) {
        size_t n = 0;
        if (status >= 10)
            code[n++] = (char)('0' + status / 10);
        code[n++] = (char)('0' + status % 10);
        code[n] = '\0';
    } else {
        snprintf(code, 8, "%d", status);
    }
}

#define NV(n, v)                                                               \
    {                                                                          \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v),              \
            NGHTTP2_NV_FLAG_NO_COPY_NAME                                       \
    }

static ssize_t read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf,
                       size_t length, uint32_t *flags, nghttp2_data_source *src,
                       void *ud);

static void deadline_remove(struct gstream *st);
static void watch_remove(struct gstream *st);
static void retry_remove(struct gstream *st);

static int stream_charge(struct gstream *st);
static void update_body_deadline(struct gstream *st);

/* The request message's bytes, never NULL (an empty message has no
 * buffer, and decoders must not do arithmetic on a null pointer). */
static uint8_t *msg_bytes(struct gstream *st)
{
    static uint8_t none[1];
    return st->rd.msg.data ? (uint8_t *)st->rd.msg.data : none;
}

/* The encoded grpc-message, "" when there is none (a pz_buf with data
 * is NUL-terminated, and the encoding has no NUL). */
static const char *msg_text(const struct gstream *st)
{
    return st->msg.len ? st->msg.data : "";
}

/* Buffers for encoding a message that is copied at once into a stream's
 * output or a proposal, kept between calls so that the common small ones
 * do not cost an allocation each; one that grew past SCRATCH_KEEP is
 * given back. Two, so that a reply encoded from inside a proposal cannot
 * overwrite the command being proposed. */
#define SCRATCH_KEEP 4096
static struct pz_buf reply_scratch, cmd_scratch;

static struct pz_buf *scratch_take(struct pz_buf *b)
{
    pz_buf_reset(b);
    return b;
}

static void scratch_done(struct pz_buf *b)
{
    pz_buf_trim(b, SCRATCH_KEEP);
}

static void release_reader(struct gstream *st)
{
    st->s->buffered -= st->rd_counted;
    st->rd_counted = 0;
    grpc_reader_free(&st->rd);
    grpc_reader_init(&st->rd, 0);
    stream_charge(st);
    update_body_deadline(st);
}

/* Set the final status and get it on the wire: as Trailers-Only when no
 * response HEADERS went out, else as trailers after the pending output.
 * Stops any work in flight. Does not flush. */
static void finish(struct gstream *st, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(struct gstream *st, int status, const char *fmt, ...)
{
    struct grpc_server *gs = st->s->gs;
    if (st->ended)
        return;
    st->ended = true;
    st->status = status;
    stats_request("grpc", st->m ? st->m->path : "unknown",
                  grpc_status_name(status), st->started_ns);
    if (fmt) {
        char text[MAX_STATUS_MESSAGE];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        if (n < 0)
            n = 0;
        grpc_message_encode(&st->msg, text, PZ_MIN((size_t)n, sizeof text - 1),
                            MAX_STATUS_MESSAGE);
    }
    deadline_remove(st);
    watch_remove(st);
    retry_remove(st);
    if (st->held) {
        pz_queue_remove(&st->hq);
        st->held = HOLD_NONE;
    }
    if (st->in_node) {
        gs->be->cancel(&st->req);
        st->in_node = false;
    }
    if (st->in_fwd) {
        grpc_client_cancel(&st->call);
        st->in_fwd = false;
    }
    conn_hold_detached(&st->fwd_held, 0);
    release_reader(st);
    if (status != GRPC_OK)
        pz_debug("grpc: %s %s: %s %.*s", st->s->c->peer, st->path,
                 grpc_status_name(status), (int)st->msg.len,
                 st->msg.data ? st->msg.data : "");
    if (!st->responded) {
        st->responded = true;
        if (st->out.len == st->out_off) {
            char code[8];
            status_text(code, status);
            nghttp2_nv nva[] = {
                NV(":status", "200"),
                NV("content-type", "application/grpc"),
                NV("grpc-status", code),
                NV("grpc-message", msg_text(st)),
            };
            nghttp2_submit_response(st->s->ng, st->id, nva,
                                    st->msg.len ? 4 : 3, NULL);
        } else {
            nghttp2_nv nva[] = {
                NV(":status", "200"),
                NV("content-type", "application/grpc"),
            };
            nghttp2_data_provider dp = {.source.ptr = st,
                                        .read_callback = read_cb};
            nghttp2_submit_response(st->s->ng, st->id, nva, 2, &dp);
        }
    } else if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
    if (st->msg_left) {
        /* A message is part-way out: trailers after it would leave the
         * client a length prefix its bytes never fill. */
        st->msg_left = 0;
        nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id,
                                  NGHTTP2_CANCEL);
        mark_dirty(st->s);
    }
}

/* What the session holds for its client, counted with the connection's
 * output against max-pending-output. */
static void out_count(struct gsession *s)
{
    conn_hold_output(s->c, s->out_bytes + s->out_queued);
}

/* Frame a message into the stream's output, counted per session and
 * with the connection's output (max-pending-output: past it, the
 * connection is closed and the message dropped). */
static void out_append(struct gstream *st, const void *msg, size_t len)
{
    if (!conn_output_fits(st->s->c, len + GRPC_FRAME_HEADER))
        return;
    size_t before = st->out.len;
    if (before == st->out_off)
        st->out_moved = conn_now();
    grpc_frame_append(&st->out, msg, len);
    st->s->out_bytes += st->out.len - before;
    out_count(st->s);
}

/* Output is waiting: submit the response headers with a data provider
 * the first time, else wake the provider if it ran dry. */
static void output_ready(struct gstream *st)
{
    if (!st->responded) {
        st->responded = true;
        nghttp2_nv nva[] = {
            NV(":status", "200"),
            NV("content-type", "application/grpc"),
        };
        nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_cb};
        nghttp2_submit_response(st->s->ng, st->id, nva, 2, &dp);
    } else if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(st->s->ng, st->id);
    }
}

/* Queue one response message on a stream that stays open. */
static void send_message(struct gstream *st, const void *msg, size_t len)
{
    if (st->ended)
        return;
    out_append(st, msg, len);
    output_ready(st);
}

/* A unary call's one response message and OK. */
static void reply(struct gstream *st, const void *msg, size_t len)
{
    if (st->ended)
        return;
    out_append(st, msg, len);
    finish(st, GRPC_OK, NULL);
}

/* A plain HTTP error (not gRPC): 405, 415. */
static void http_error(struct gstream *st, const char *status, const char *text)
{
    st->http_error = true;
    st->ended = true;
    st->responded = true;
    release_reader(st);
    pz_buf_append(&st->out, text, strlen(text));
    st->s->out_bytes += strlen(text);
    out_count(st->s);
    nghttp2_nv nva[] = {
        NV(":status", status),
        NV("content-type", "text/plain; charset=utf-8"),
    };
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_cb};
    nghttp2_submit_response(st->s->ng, st->id, nva, 2, &dp);
    pz_debug("grpc: %s %s: HTTP %s", st->s->c->peer, st->path, status);
}

static ssize_t read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf,
                       size_t length, uint32_t *flags, nghttp2_data_source *src,
                       void *ud)
{
    struct gstream *st = src->ptr;
    PZ_UNUSED(ud);
    if (st->pump && !st->ended && st->out.len == st->out_off)
        st->pump(st); /* the next message of a server stream */
    size_t avail = st->out.len - st->out_off;
    size_t n = PZ_MIN(avail, length);
    if (n) {
        memcpy(buf, st->out.data + st->out_off, n);
        st->out_moved = conn_now();
    }
    st->out_off += n;
    st->s->out_bytes -= n;
    out_count(st->s);
    if (st->out_off == st->out.len) {
        pz_buf_reset(&st->out);
        st->out_off = 0;
    }
    if (n == avail && st->ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!st->http_error) {
            /* gRPC trailers go out after the last DATA frame. */
            char code[8];
            status_text(code, st->status);
            nghttp2_nv nva[] = {
                NV("grpc-status", code),
                NV("grpc-message", msg_text(st)),
            };
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(ng, id, nva, st->msg.len ? 2 : 1);
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* --- deadlines --------------------------------------------------------- */

static void on_deadline(uv_timer_t *t);
static void send_refusal(struct gstream *st);

static void arm_deadline(struct grpc_server *gs, uint64_t due)
{
    if (gs->timer_due != 0 && gs->timer_due <= due)
        return;
    uint64_t now = uv_now(gs->loop);
    gs->timer_due = due ? due : 1;
    uv_timer_start(&gs->deadline_timer, on_deadline, due > now ? due - now : 0,
                   0);
}

static void deadline_add(struct gstream *st, uint64_t due)
{
    st->has_deadline = true;
    st->deadline = due;
    st->in_dq = true;
    pz_queue_push(&st->s->gs->deadlines, &st->dq);
    arm_deadline(st->s->gs, due);
}

static void deadline_remove(struct gstream *st)
{
    if (st->in_dq) {
        pz_queue_remove(&st->dq);
        st->in_dq = false;
    }
}

static void on_deadline(uv_timer_t *t)
{
    struct grpc_server *gs = t->data;
    uint64_t now = uv_now(gs->loop);
    struct pz_queue expired, *e;
    gs->timer_due = 0;
    pz_queue_init(&expired);
    for (e = pz_queue_head(&gs->deadlines); e != &gs->deadlines;) {
        struct gstream *st = container_of(e, struct gstream, dq);
        e = e->next;
        if (st->deadline <= now) {
            pz_queue_remove(&st->dq);
            pz_queue_push(&expired, &st->dq);
        }
    }
    /* finish() does not free streams (only a flush can): end them all,
     * then flush their sessions. */
    while (!pz_queue_empty(&expired)) {
        struct gstream *st =
            container_of(pz_queue_head(&expired), struct gstream, dq);
        pz_queue_remove(&st->dq);
        st->in_dq = false;
        /* The client is still sending: stop it once we have answered. */
        st->reset_after = !st->req_ended;
        if (st->refused) {
            send_refusal(st);
        } else {
            gs->stats.deadlines++;
            finish(st, GRPC_DEADLINE_EXCEEDED, "deadline exceeded (%llu ms)",
                   (unsigned long long)st->timeout_ms);
        }
        mark_dirty(st->s);
    }
    uint64_t next = 0;
    PZ_QUEUE_FOREACH(e, &gs->deadlines)
    {
        struct gstream *st = container_of(e, struct gstream, dq);
        if (next == 0 || st->deadline < next)
            next = st->deadline;
    }
    if (next)
        arm_deadline(gs, next);
    flush_dirty();
}

static bool deadline_passed(struct gstream *st)
{
    return st->has_deadline && st->deadline <= uv_now(st->s->gs->loop);
}

/* --- forwarding ------------------------------------------------------------
 * Only writes are forwarded (reads are served here, ReadIndex). One that
 * never reached the leader (grpc_call.unsent: no connection, or a refused
 * stream), or that the node we took for the leader refused because it is
 * not the leader any more (GRPC_NOT_LEADER_MSG: it restarted, or lost an
 * election, and proposed nothing), goes again after a pause (50 ms
 * doubling to 400 ms), through start_write: to the leader known then,
 * proposed here if this node won, or waiting for an election; for up to
 * request-timeout after the first forward, and within the call's
 * deadline. A write lost after it was sent (a broken connection, a
 * timeout, any other answer) is not sent again: it may have been
 * applied. What a relayed call holds (its request, the copy for the
 * leader, the leader's answer) counts against max-pending-output while
 * it is with the leader; one with no room is refused before it is sent
 * (GRPC_RELAY_BUSY_MSG). */

#define RETRY_POLL_MS 25
#define RETRY_FIRST_MS 50
#define RETRY_MAX_MS 400

static void retry_remove(struct gstream *st)
{
    if (!st->in_rq)
        return;
    pz_queue_remove(&st->rq);
    st->in_rq = false;
    if (pz_queue_empty(&st->s->gs->retries))
        uv_timer_stop(&st->s->gs->retry_timer);
}

static void start_write(struct gstream *st);
static void forward(struct gstream *st);
static void node_error(struct gstream *st, int rv, bool write);

/* Run st's call again, from where it is forwarded or proposed (it never
 * reached the leader, or it waited for one). */
static void call_again(struct gstream *st)
{
    if (st->m->kind == M_KV_GET)
        forward(st); /* a read forwarded by a backend that cannot read
                        here (tests) */
    else if (st->m->kind == M_ETCD)
        etcd_call(st, st->m->sub); /* decoded and tried again */
    else
        start_write(st);
}

static void on_retry_timer(uv_timer_t *t)
{
    struct grpc_server *gs = t->data;
    uint64_t now = uv_now(gs->loop);
    bool again = true;
    while (again) {
        again = false;
        struct pz_queue *e;
        PZ_QUEUE_FOREACH(e, &gs->retries)
        {
            struct gstream *st = container_of(e, struct gstream, rq);
            if (st->retry_at > now)
                continue;
            retry_remove(st);
            call_again(st);
            session_flush(st->s);
            again = true; /* the queue changed: scan it again */
            break;
        }
    }
    flush_dirty();
}

/* st's forward did nothing on the leader (forward_unsent): true if it
 * goes again later. */
static bool retry_forward(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    uint64_t now = uv_now(gs->loop);
    if (gs->draining || now >= st->retry_until)
        return false;
    if (st->retry_pause == 0)
        st->retry_pause = RETRY_FIRST_MS;
    if (st->has_deadline && now + st->retry_pause >= st->deadline)
        return false;
    st->retry_at = now + st->retry_pause;
    st->retry_pause = PZ_MIN(st->retry_pause * 2, (uint64_t)RETRY_MAX_MS);
    if (pz_queue_empty(&gs->retries))
        uv_timer_start(&gs->retry_timer, on_retry_timer, RETRY_POLL_MS,
                       RETRY_POLL_MS);
    pz_queue_push(&gs->retries, &st->rq);
    st->in_rq = true;
    return true;
}

/* True when the forwarded call surely did nothing on the leader: it never
 * got there, or the node refused it for not being the leader, whether it
 * knew another or none (before anything was proposed). Safe to send
 * again, even a write. Any other UNAVAILABLE (a timeout, an overload, a
 * leader change) may follow a proposal, and is the client's to see. */
static bool forward_unsent(const struct grpc_call *call)
{
    if (call->status != GRPC_UNAVAILABLE)
        return false;
    return call->unsent || strcmp(call->message, GRPC_NOT_LEADER_MSG) == 0 ||
           strcmp(call->message, GRPC_NO_LEADER_MSG) == 0 ||
           strcmp(call->message, GRPC_NO_LEADER_WRITE_MSG) == 0 ||
           strcmp(call->message, GRPC_ETCD_NO_LEADER_MSG) == 0;
}

static void on_forward_done(struct grpc_call *call)
{
    struct gstream *st = container_of(call, struct gstream, call);
    struct gsession *s = st->s;
    st->in_fwd = false;
    conn_hold_detached(&st->fwd_held, 0); /* forward() counts it again */
    if (forward_unsent(call) && retry_forward(st)) {
        pz_debug("grpc: forwarding %s: %s; trying again", st->path,
                 call->message);
        grpc_call_reset(call);
        return;
    }
    if (call->status == GRPC_OK && call->has_resp) {
        /* The answer moves to the stream's output, counted there. */
        conn_hold_detached(&st->call_held, 0);
        out_append(st, call->resp.data, call->resp.len);
    }
    if (call->status == GRPC_CANCELLED && s->gs->draining)
        finish(st, GRPC_UNAVAILABLE, "server is shutting down");
    else
        finish(st, call->status, "%s", call->message);
    grpc_call_reset(call);
    if (session_flush(s))
        kick(s->gs);
}

/* The client to the leader at addr: made at first use, made anew when
 * the leader moved (calls on the old one finish there). */
static struct grpc_client *leader_client(struct grpc_server *gs,
                                         const char *addr)
{
    if (gs->fwd && strcmp(grpc_client_addr(gs->fwd), addr) != 0) {
        pz_info("grpc: leader moved to %s: forwarding there", addr);
        grpc_client_close(gs->fwd);
        gs->fwd = NULL;
    }
    if (gs->fwd == NULL) {
        gs->fwd = grpc_client_new(gs->loop, addr, gs->max_message);
        grpc_client_set_tls(gs->fwd, &tls_grpc_client);
        grpc_client_count_output(gs->fwd);
    }
    return gs->fwd;
}

/* A forwarded call's metadata: marked as forwarded, and the client's
 * credential goes along (the leader checks it too). bearer holds it. */
static void forward_metadata(const struct gstream *st, char *bearer, size_t cap,
                             const char *md[5])
{
    md[0] = "pyazdb-forwarded";
    md[1] = "1";
    md[2] = md[3] = md[4] = NULL;
    if (st->cred) {
        snprintf(bearer, cap, "Bearer %s", st->cred);
        md[2] = "authorization";
        md[3] = bearer;
    }
}

/* End st: there is no leader to forward it to, or not its address (an
 * etcd call in etcd's words, which its clients match on). */
static void no_leader(struct gstream *st)
{
    struct node_status ns;
    if (st->m->kind == M_ETCD) {
        char m[160];
        finish(st, etcd_node_status(PZ_ENOLEADER, true, m, sizeof m), "%s", m);
        return;
    }
    st->s->gs->be->status(&ns);
    if (ns.leader && ns.leader[0])
        finish(st, GRPC_UNAVAILABLE,
               "the leader's (%s) gRPC address is not known yet", ns.leader);
    else
        finish(st, GRPC_UNAVAILABLE, GRPC_NO_LEADER_MSG);
}

/* The wait forward() started is over: run the call again, or end it. */
static void on_forward_leader(struct node_req *req, int status)
{
    struct gstream *st = container_of(req, struct gstream, req);
    struct gsession *s = st->s;
    st->in_node = false;
    if (status == PZ_ESHUTDOWN)
        node_error(st, status, false);
    else if (status < 0)
        no_leader(st);
    else
        call_again(st); /* here, or forwarded to the leader */
    if (session_flush(s))
        kick(s->gs);
}

/* Send st to the leader. With none known, or not yet its gRPC address (a
 * follower just started, whose leader died, a candidate), the call waits
 * (bounded by the node's request-timeout and the call's deadline) for one
 * it can reach, then runs again (call_again), as writes that find no
 * leader do: every call a follower relays waits alike, and so does one
 * forwarded to this node, which may win the election (HTTP's do too). A
 * second wait in a row, with no forward sent between, is not made: the
 * node says a leader it can reach is known, yet its gRPC address is not.
 * A call forwarded to us goes no further (one hop). */
static void forward(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    const char *addr = gs->be->leader_grpc_addr();
    if (addr == NULL || addr[0] == '\0') {
        if (gs->be->wait_leader && st->leader_waits < 2) {
            st->leader_waits++;
            st->in_node = true;
            gs->be->wait_leader(&st->req, on_forward_leader);
            return;
        }
        no_leader(st);
        return;
    }
    if (st->was_forwarded) {
        /* Forwarded to us as the leader, and we are not: one hop only. */
        finish(st, GRPC_UNAVAILABLE, GRPC_NOT_LEADER_MSG);
        return;
    }
    /* What the call keeps until the leader answers (its request, the
     * copy written to the leader, then the leader's answer) counts with
     * the answers waiting for clients, as an HTTP forward's does: a slow
     * leader must not make a follower hold every large call sent to it
     * meanwhile. */
    size_t held = st->rd.msg.cap + st->rd.msg.len + GRPC_FRAME_HEADER;
    if (!conn_output_room(st->s->c, held)) {
        finish(st, GRPC_UNAVAILABLE, GRPC_RELAY_BUSY_MSG);
        return;
    }
    struct grpc_client *cl = leader_client(gs, addr);
    if (st->retry_until == 0)
        st->retry_until = uv_now(gs->loop) + gs->retry_window;
    char bearer[8 + MAX_HEADER_BYTES];
    const char *md[5];
    forward_metadata(st, bearer, sizeof bearer, md);
    /* The leader answers within request-timeout; one that does not is
     * broken, and the call must not wait on it for ever. */
    struct grpc_call_opts opts = {
        .metadata = md, .timeout_ms = gs->fwd_timeout, .held = &st->call_held};
    if (st->has_deadline) {
        uint64_t now = uv_now(gs->loop);
        opts.timeout_ms = st->deadline > now ? st->deadline - now : 1;
    }
    st->call_used = true;
    int rv = grpc_client_call(cl, &st->call, st->m->path, msg_bytes(st),
                              st->rd.msg.len, &opts, on_forward_done);
    if (rv < 0) {
        finish(st, GRPC_UNAVAILABLE, "cannot forward to the leader at %s: %s",
               addr, pz_strerror(rv));
        return;
    }
    st->in_fwd = true;
    conn_hold_detached(&st->fwd_held, st->rd.msg.cap);
    st->leader_waits = 0;
    gs->stats.forwarded++;
}

/* --- node results ------------------------------------------------------ */

static void node_error(struct gstream *st, int rv, bool write)
{
    switch (rv) {
    case PZ_ENOTLEADER:
        forward(st);
        break;
    case PZ_ENOLEADER:
        finish(st, GRPC_UNAVAILABLE, GRPC_NO_LEADER_WRITE_MSG);
        break;
    case PZ_ESHUTDOWN:
        finish(st, GRPC_UNAVAILABLE, "server is shutting down");
        break;
    case PZ_ETIMEDOUT:
        finish(st, GRPC_UNAVAILABLE, "timed out waiting for the cluster");
        break;
    case PZ_EBUSY:
        finish(st, GRPC_UNAVAILABLE, "leadership transfer in progress; retry");
        break;
    case PZ_EOVERLOAD: /* nothing was proposed: safe to send again */
        finish(st, GRPC_UNAVAILABLE, "too many writes waiting to commit; retry");
        break;
    case PZ_ELEADERCHANGE:
        if (write)
            finish(st, GRPC_INTERNAL,
                   "replication failed: leadership changed before the write "
                   "committed (it may or may not be applied)");
        else
            finish(st, GRPC_UNAVAILABLE, "leadership changed; retry");
        break;
    case PZ_ETOOBIG:
        finish(st, GRPC_INVALID_ARGUMENT, "request too large");
        break;
    case PZ_ENOSPC:
        finish(st, GRPC_RESOURCE_EXHAUSTED, "no space left on device");
        break;
    default:
        finish(st, write ? GRPC_INTERNAL : GRPC_UNAVAILABLE, "%s failed: %s",
               write ? "replication" : "read", pz_strerror(rv));
    }
}

/* The read is safe: copy the value out. */
static void read_reply(struct gstream *st)
{
    const uint8_t *val = NULL;
    size_t vlen = 0;
    bool found =
        kv_get(st->s->gs->be->kv(), st->kreq.key, st->kreq.klen, &val, &vlen);
    struct pz_buf *b = scratch_take(&reply_scratch);
    grpc_kv_get_resp_encode(b, val, vlen, found);
    reply(st, b->data, b->len);
    scratch_done(b);
}

static void on_read_done(struct node_req *req, int status)
{
    container_of(req, struct gstream, req)->resume = read_reply;
    on_held_read(req, status);
}

static void on_write_done(struct node_req *req, int status)
{
    struct gstream *st = container_of(req, struct gstream, req);
    struct gsession *s = st->s;
    st->in_node = false;
    if (status < 0) {
        node_error(st, status, true);
    } else if (req->res.status == KV_EREVISION) {
        /* Refused on every node as it applied: nothing was written. */
        finish(st, GRPC_RESOURCE_EXHAUSTED,
               "the revision is at its maximum (2^62 - 1): the write was "
               "refused, nothing was done");
    } else {
        struct pz_buf *b = scratch_take(&reply_scratch);
        grpc_kv_ok_resp_encode(b, true);
        reply(st, b->data, b->len);
        scratch_done(b);
    }
    session_flush(s);
}

/* --- methods ------------------------------------------------------------ */

static const char *const kv_msg_names[] = {
    [M_KV_GET] = "kv.GetRequest",
    [M_KV_SET] = "kv.SetRequest",
    [M_KV_DEL] = "kv.DeleteRequest",
};

static void on_leader_known(struct node_req *req, int status)
{
    struct gstream *st = container_of(req, struct gstream, req);
    struct gsession *s = st->s;
    st->in_node = false;
    if (status == PZ_ETIMEDOUT) /* a leader, but not its address */
        no_leader(st);
    else if (status < 0)
        node_error(st, status, true);
    else
        start_write(st); /* here, or forwarded to the new leader */
    session_flush(s);
}

/* Propose the write here if this node leads, forward it if another node
 * does, wait (bounded by the node) for an election if none does. */
static void start_write(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    struct grpc_kv_req *r = &st->kreq;
    struct pz_buf *cmd = scratch_take(&cmd_scratch);
    int rv;
    if (st->m->kind == M_KV_SET)
        rv = kv_encode_set(cmd, r->key, r->klen, r->value, r->vlen);
    else
        rv = kv_encode_del(cmd, r->key, r->klen);
    if (rv == 0) {
        st->in_node = true;
        rv = gs->be->propose(&st->req, (uint8_t *)cmd->data, cmd->len,
                             on_write_done);
        if (rv < 0)
            st->in_node = false;
    }
    scratch_done(cmd);
    if (rv == PZ_ENOLEADER && gs->be->wait_leader) {
        st->in_node = true;
        gs->be->wait_leader(&st->req, on_leader_known);
    } else if (rv < 0) {
        node_error(st, rv, true);
    }
}

static void call_kv(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    static const int kinds[] = {[M_KV_GET] = GRPC_KV_GET,
                                [M_KV_SET] = GRPC_KV_SET,
                                [M_KV_DEL] = GRPC_KV_DEL};
    struct grpc_kv_req *r = &st->kreq;
    int rv;
    if (grpc_kv_req_decode(kinds[st->m->kind], msg_bytes(st), st->rd.msg.len,
                           r) < 0) {
        finish(st, GRPC_INVALID_ARGUMENT, "request is not a valid %s message",
               kv_msg_names[st->m->kind]);
        return;
    }
    if (r->klen == 0) {
        finish(st, GRPC_INVALID_ARGUMENT, "key is required");
        return;
    }
    if (r->klen > gs->max_key) {
        finish(st, GRPC_INVALID_ARGUMENT,
               "key too large: %zu bytes (max-key-size %zu)", r->klen,
               gs->max_key);
        return;
    }
    if (r->vlen > gs->max_value) {
        finish(st, GRPC_INVALID_ARGUMENT,
               "value too large: %zu bytes (max-value-size %zu)", r->vlen,
               gs->max_value);
        return;
    }
    char why[256];
    int denied = auth_grpc_key(st->cred, st->m->kind != M_KV_GET, r->key,
                               r->klen, why, sizeof why);
    if (denied != AUTH_OK) {
        finish(st, denied == AUTH_DENIED ? GRPC_PERMISSION_DENIED
                                         : GRPC_UNAUTHENTICATED,
               "%s", why);
        return;
    }
    if (deadline_passed(st)) {
        gs->stats.deadlines++;
        finish(st, GRPC_DEADLINE_EXCEEDED, "deadline exceeded (%llu ms)",
               (unsigned long long)st->timeout_ms);
        return;
    }
    if (st->m->kind == M_KV_GET) {
        st->in_node = true;
        rv = gs->be->read(&st->req, r->stale, on_read_done);
        if (rv < 0) {
            st->in_node = false;
            node_error(st, rv, false);
        }
        return;
    }
    start_write(st);
}

/* True when the bytes parse as a protobuf message (any fields). */
static bool valid_pb(const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    struct grpc_pb_field f;
    int rv;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1)
        ;
    return rv == 0;
}

static void call_status(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    if (!valid_pb(msg_bytes(st), st->rd.msg.len)) {
        finish(st, GRPC_INVALID_ARGUMENT,
               "request is not a valid pyazdb.StatusRequest message");
        return;
    }
    struct node_status ns;
    gs->be->status(&ns);
    const char *leader_addr = gs->be->leader_grpc_addr();
    for (size_t i = 0; leader_addr == NULL && i < ns.n_members; i++)
        if (ns.leader && strcmp(ns.members[i].name, ns.leader) == 0 &&
            ns.members[i].grpc[0])
            leader_addr = ns.members[i].grpc; /* this node leads */
    Pyazdb__StatusResponse r = PYAZDB__STATUS_RESPONSE__INIT;
    r.id = (char *)(ns.id ? ns.id : "");
    r.role = (char *)(ns.role ? ns.role : "");
    r.leader = (char *)(ns.leader ? ns.leader : "");
    r.term = ns.term;
    r.commit_index = ns.commit_index;
    r.applied_index = ns.applied_index;
    r.last_index = ns.last_index;
    r.keys = ns.keys;
    r.version = PZ_VERSION;
    r.uptime_seconds = (uv_now(gs->loop) - gs->start_ms) / 1000;
    r.leader_grpc_addr = (char *)(leader_addr ? leader_addr : "");
    Pyazdb__Member *mem = pz_calloc(ns.n_members + 1, sizeof *mem);
    Pyazdb__Member **memp = pz_calloc(ns.n_members + 1, sizeof *memp);
    for (size_t i = 0; i < ns.n_members; i++) {
        const struct node_member *m = &ns.members[i];
        Pyazdb__Member init = PYAZDB__MEMBER__INIT;
        mem[i] = init;
        mem[i].id = (char *)(m->name ? m->name : "");
        mem[i].raft_addr = (char *)(m->raft ? m->raft : "");
        mem[i].grpc_addr = (char *)(m->grpc ? m->grpc : "");
        mem[i].voter = m->voter;
        memp[i] = &mem[i];
    }
    r.n_members = ns.n_members;
    r.members = memp;
    size_t n = pyazdb__status_response__get_packed_size(&r);
    uint8_t *b = pz_malloc(n + 1);
    pyazdb__status_response__pack(&r, b);
    reply(st, b, n);
    pz_free(b);
    pz_free(memp);
    pz_free(mem);
}

/* grpc.health.v1.HealthCheckResponse.ServingStatus, shortened. */
#define HEALTH(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

/* The backend's health rule (node_health for a node: the rule of HTTP
 * GET /health too); a backend without one serves while a leader is
 * known. */
static bool serving(struct grpc_server *gs)
{
    if (gs->be->health) {
        struct node_health h;
        return gs->be->health(&h);
    }
    struct node_status ns;
    gs->be->status(&ns);
    return ns.leader != NULL && ns.leader[0] != '\0';
}

static bool known_service(struct grpc_server *gs, const char *name)
{
    if (name[0] == '\0')
        return true;
    const struct grpc_reflect_symbol *sym =
        grpc_reflect_find(&gs->reflect, name);
    return sym && sym->kind == GRPC_REFLECT_SERVICE;
}

static int health_now(struct grpc_server *gs, const char *service)
{
    if (!known_service(gs, service))
        return HEALTH(SERVICE_UNKNOWN);
    return serving(gs) ? HEALTH(SERVING) : HEALTH(NOT_SERVING);
}

static void health_message(struct pz_buf *b, int status)
{
    Grpc__Health__V1__HealthCheckResponse r =
        GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = status;
    size_t n = grpc__health__v1__health_check_response__get_packed_size(&r);
    pz_buf_reserve(b, n);
    grpc__health__v1__health_check_response__pack(&r,
                                                  (uint8_t *)b->data + b->len);
    b->len += n;
}

static void on_watch_poll(uv_timer_t *t);

static void watch_remove(struct gstream *st)
{
    if (st->in_wq) {
        pz_queue_remove(&st->wq);
        st->in_wq = false;
        if (pz_queue_empty(&st->s->gs->watchers))
            uv_timer_stop(&st->s->gs->watch_timer);
    }
}

static void watch_send(struct gstream *st, int status)
{
    struct pz_buf b;
    pz_buf_init(&b);
    health_message(&b, status);
    send_message(st, b.data, b.len);
    pz_buf_free(&b);
    st->watch_last = status;
}

static void on_watch_poll(uv_timer_t *t)
{
    struct grpc_server *gs = t->data;
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &gs->watchers)
    {
        struct gstream *st = container_of(e, struct gstream, wq);
        int now = health_now(gs, st->watch_service);
        if (now != st->watch_last) {
            watch_send(st, now);
            mark_dirty(st->s);
        }
    }
    flush_dirty();
}

static void call_health(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    Grpc__Health__V1__HealthCheckRequest *q =
        grpc__health__v1__health_check_request__unpack(
            &grpc_pb_allocator, st->rd.msg.len, msg_bytes(st));
    if (q == NULL) {
        finish(st, GRPC_INVALID_ARGUMENT,
               "request is not a valid grpc.health.v1.HealthCheckRequest");
        return;
    }
    int status = health_now(gs, q->service);
    if (st->m->kind == M_HEALTH_CHECK) {
        if (status == HEALTH(SERVICE_UNKNOWN)) {
            finish(st, GRPC_NOT_FOUND, "unknown service %.100s", q->service);
        } else {
            struct pz_buf b;
            pz_buf_init(&b);
            health_message(&b, status);
            reply(st, b.data, b.len);
            pz_buf_free(&b);
        }
    } else {
        snprintf(st->watch_service, sizeof st->watch_service, "%s", q->service);
        watch_send(st, status);
        if (pz_queue_empty(&gs->watchers))
            uv_timer_start(&gs->watch_timer, on_watch_poll, WATCH_POLL_MS,
                           WATCH_POLL_MS);
        st->in_wq = true;
        pz_queue_push(&gs->watchers, &st->wq);
    }
    grpc__health__v1__health_check_request__free_unpacked(q,
                                                          &grpc_pb_allocator);
    if (st->m->kind == M_HEALTH_WATCH)
        release_reader(st); /* the stream stays open: keep nothing */
}

/* One reflection request message on a bidirectional stream. Answers
 * are queued as requests come, so a client that sends them without
 * reading the answers is stopped once SESSION_OUT_MAX wait. */
static void reflect_message(struct gstream *st)
{
    if (out_full(st->s)) {
        finish(st, GRPC_RESOURCE_EXHAUSTED,
               "more than %zu bytes of answers waiting for this client",
               SESSION_OUT_MAX);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    if (grpc_reflect_answer(&st->s->gs->reflect, msg_bytes(st), st->rd.msg.len,
                            &b) < 0)
        finish(st, GRPC_INVALID_ARGUMENT,
               "request is not a valid ServerReflectionRequest");
    else
        send_message(st, b.data, b.len);
    pz_buf_free(&b);
}

/* The call's token against etcd's rules (auth_grpc_etcd) for the request
 * message at hand: false once it ended st. */
static bool etcd_allowed(struct gstream *st)
{
    char why[256];
    /* A unary request the check unpacked is kept for the call. */
    bool keep = !st->m->client_stream && st->unpacked == NULL;
    size_t held = 0;
    int denied = auth_grpc_etcd_unpacked(st->cred, st->m->sub, msg_bytes(st),
                                         st->rd.msg.len, why, sizeof why,
                                         keep ? &st->unpacked : NULL, &held);
    if (denied == AUTH_OK)
        return st->unpacked == NULL || grpc_stream_hold_unpacked(st, held);
    finish(st,
           denied == AUTH_DENIED ? GRPC_PERMISSION_DENIED
                                 : GRPC_UNAUTHENTICATED,
           "%s", why);
    return false;
}

/* A unary (or server-streaming) request is complete. */
static void dispatch(struct gstream *st)
{
    st->s->gs->stats.calls++;
    switch (st->m->kind) {
    case M_KV_GET:
    case M_KV_SET:
    case M_KV_DEL:
        call_kv(st);
        break;
    case M_STATUS:
        call_status(st);
        break;
    case M_HEALTH_CHECK:
    case M_HEALTH_WATCH:
        call_health(st);
        break;
    case M_ETCD:
        if (etcd_allowed(st))
            etcd_call(st, st->m->sub);
        break;
    default:
        pz_assert(0);
    }
}

/* --- request side --------------------------------------------------------- */

/* Request messages handled one by one for as long as the client likes:
 * a client-streaming method, unless called with one message (relayed by
 * a follower, or by the etcd gateway), which then ends as a unary call's
 * request must (client-body-timeout). The markers are the client's word:
 * they count only for a method whose call ends with its request
 * (LeaseKeepAlive). A Watch outlives its request: a marked one would be
 * held open outside the caps on such streams (hold_open_ended). */
static bool streaming_request(const struct gstream *st)
{
    return st->m->client_stream &&
           (st->m->outlives || (!st->was_forwarded && !st->one_message));
}

/* True while the stream's request is still arriving: its headers, or its
 * message (unary: until END_STREAM; client-streaming: a message begun). A
 * stream the server is working on or answering is not. */
static bool receiving(const struct gstream *st)
{
    if (st->ended || st->refused || st->over_budget)
        return false;
    if (!st->headers_done)
        return true;
    if (st->m == NULL)
        return false;
    return streaming_request(st) ? grpc_reader_partial(&st->rd)
                                 : !st->req_ended;
}

/* Move the stream's charge to what it holds: its state and credential,
 * and its request message for as long as it keeps it (a call waiting on
 * the cluster keeps its request until it ends). Calls waiting on the
 * cluster (while there is no leader, say) held gigabytes before their
 * state was charged for as long as they live. An open-ended stream
 * waiting for its client's next message holds no message, and its state
 * counts against the open-stream cap instead (hold_open_ended): charged
 * here, it would hold the budget for good. Growth may fail (PZ_ENOMEM:
 * nothing charged beyond the old amount); shrinking never does. A stream
 * refused or ended never grows again. */
static int stream_charge(struct gstream *st)
{
    bool waits = st->open_ended && !receiving(st);
    size_t want = st->rd.msg.cap;
    if (!waits)
        want += STREAM_COST + (st->cred ? strlen(st->cred) : 0) +
                st->unpacked_bytes;
    if (st->over_budget || st->refused || st->ended)
        want = PZ_MIN(want, st->charged);
    if (want > st->charged) {
        if (conn_in_reserve(st->s->c, want - st->charged) < 0)
            return PZ_ENOMEM;
    } else {
        conn_in_release(st->s->c, st->charged - want);
    }
    st->charged = want;
    return 0;
}

/* Start or stop the stream's body deadline: it runs while a request
 * message is arriving, from the end of the headers (unary) or the first
 * byte of the message (client-streaming). */
static void update_body_deadline(struct gstream *st)
{
    struct gsession *s = st->s;
    bool want = st->headers_done && receiving(st);
    if (want == st->in_bq)
        return;
    st->in_bq = want;
    if (want) {
        st->body_due = uv_now(s->gs->loop) + s->gs->body_timeout;
        pz_queue_push(&s->body_q, &st->bq);
    } else {
        pz_queue_remove(&st->bq);
    }
}

/* The connection's deadline: the earliest of the preface, the open
 * header block and the oldest request message still arriving. */
static void session_deadline(struct gsession *s)
{
    uint64_t due = 0;
    if (s->dead) {
        conn_set_deadline(s->c, 0);
        return;
    }
    if (grpc_h2_scan_in_preface(&s->scan))
        due = s->preface_due;
    if (s->block_due && (due == 0 || s->block_due < due))
        due = s->block_due;
    if (!pz_queue_empty(&s->body_q)) {
        struct gstream *st =
            container_of(pz_queue_head(&s->body_q), struct gstream, bq);
        if (due == 0 || st->body_due < due)
            due = st->body_due;
    }
    conn_set_deadline(s->c, due);
}

/* End the connection over a protocol failure or a timeout: GOAWAY with
 * code and a reason, then close once it is written. */
static void session_fail(struct gsession *s, uint32_t code, const char *why)
{
    if (s->dead)
        return;
    s->dead = true;
    pz_debug("grpc: %s: GOAWAY (%s): %s", s->c->peer,
             nghttp2_http2_strerror(code), why);
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(s->ng), code,
                          (const uint8_t *)why, strlen(why));
    session_flush(s);
    conn_close_after_flush(s->c);
    session_deadline(s);
}

/* The budget has no room for this stream's request: it ends, the
 * connection's other streams go on. */
static void refuse_busy(struct gstream *st)
{
    st->s->gs->stats.refused_busy++;
    st->reset_after = true;
    finish(st, GRPC_RESOURCE_EXHAUSTED,
           "server busy: too much request data in progress "
           "(max-partial-input %zu bytes); retry later",
           conn_in_limit());
}

static void send_refusal(struct gstream *st)
{
    int kind = st->refused;
    st->refused = REFUSE_NONE;
    deadline_remove(st);
    if (kind == REFUSE_HTTP) {
        char code[8];
        snprintf(code, sizeof code, "%d", st->refuse_status);
        http_error(st, code, st->refuse_msg);
    } else {
        finish(st, st->refuse_status, "%s", st->refuse_msg);
    }
}

/* Refuse a request on its headers: at END_STREAM, or after REFUSE_WAIT_MS
 * if the client is still sending (see REFUSE_WAIT_MS). */
static void refuse(struct gstream *st, int kind, int status, const char *fmt,
                   ...) __attribute__((format(printf, 4, 5)));
static void refuse(struct gstream *st, int kind, int status, const char *fmt,
                   ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->refuse_msg, sizeof st->refuse_msg, fmt, ap);
    va_end(ap);
    st->refused = kind;
    st->refuse_status = status;
    release_reader(st);
    deadline_add(st, uv_now(st->s->gs->loop) + REFUSE_WAIT_MS);
}

/* A call its client may keep open for as long as it likes (a watch, a
 * keep-alive or reflection stream) keeps its connection from being
 * evicted (conn.c: busy). Connections holding one take at most half of
 * max-clients, so that they cannot keep every other client out; and such
 * streams, whose state counts in no budget while they wait for their
 * client (stream_charge: they would hold it for good), are at most twice
 * max-clients in all (a watch and a keep-alive a client). NULL, or why st
 * may not be one. */
static const char *hold_open_ended(struct gstream *st)
{
    struct gsession *s = st->s;
    struct grpc_server *gs = s->gs;
    if (!streaming_request(st) && !st->m->outlives)
        return NULL;
    if (gs->open_ended_streams >= 2 * gs->ls.max_conns)
        return "too many open streams (at most twice max-clients)";
    if (s->n_open_ended == 0) {
        if (gs->open_ended_conns >= PZ_MAX(gs->ls.max_conns / 2, (size_t)1))
            return "too many connections hold open streams (at most half "
                   "of max-clients)";
        gs->open_ended_conns++;
    }
    s->n_open_ended++;
    gs->open_ended_streams++;
    st->open_ended = true;
    return NULL;
}

static void headers_done(struct gstream *st)
{
    struct grpc_server *gs = st->s->gs;
    st->headers_done = true;
    if (!st->post) {
        refuse(st, REFUSE_HTTP, 405, "gRPC requests use POST\n");
        return;
    }
    if (!st->ctype_ok) {
        refuse(st, REFUSE_HTTP, 415,
               "unsupported content-type: gRPC wants application/grpc\n");
        return;
    }
    if (st->m == NULL) {
        refuse(st, REFUSE_GRPC, GRPC_UNIMPLEMENTED, "unknown method %s",
               st->path);
        return;
    }
    if (st->timeout_state < 0) {
        refuse(st, REFUSE_GRPC, GRPC_INTERNAL, "malformed grpc-timeout header");
        return;
    }
    if (gs->draining) {
        refuse(st, REFUSE_GRPC, GRPC_UNAVAILABLE, "server is shutting down");
        return;
    }
    if (st->over_budget) {
        gs->stats.refused_busy++;
        refuse(st, REFUSE_GRPC, GRPC_RESOURCE_EXHAUSTED,
               "server busy: too much request data in progress "
               "(max-partial-input %zu bytes); retry later",
               conn_in_limit());
        return;
    }
    const char *why = hold_open_ended(st);
    if (why != NULL) {
        refuse(st, REFUSE_GRPC, GRPC_RESOURCE_EXHAUSTED, "%s; retry later",
               why);
        return;
    }
    if (st->timeout_state > 0)
        deadline_add(st, uv_now(gs->loop) + st->timeout_ms);
    if (st->m->client_stream)
        st->s->gs->stats.calls++;
    update_body_deadline(st);
    stream_charge(st); /* an open-ended stream waits: its charge drops */
}

/* END_STREAM from the client. */
static void request_end(struct gstream *st)
{
    st->req_ended = true;
    if (st->ended || !st->headers_done)
        return;
    conn_mark_served(st->s->c);
    update_body_deadline(st);
    stream_charge(st);
    if (st->refused) {
        send_refusal(st);
        return;
    }
    if (grpc_reader_partial(&st->rd)) {
        finish(st, GRPC_INVALID_ARGUMENT,
               "truncated request: the stream ended inside a message");
        return;
    }
    if (st->m->client_stream) {
        if (st->m->kind == M_ETCD)
            etcd_stream_end(st, st->m->sub); /* it decides when to end */
        else
            finish(st, GRPC_OK, NULL);
        return;
    }
    if (!st->rd.ready) {
        finish(st, GRPC_INVALID_ARGUMENT, "missing request message");
        return;
    }
    if (out_full(st->s) || !pz_queue_empty(&st->s->held)) {
        hold(st, HOLD_DISPATCH); /* in order, once the client reads */
        return;
    }
    dispatch(st);
}

static void request_data(struct gstream *st, const uint8_t *data, size_t len)
{
    struct gsession *s = st->s;
    struct grpc_server *gs = s->gs;
    /* Charged before they are held; trued up to what the reader keeps. */
    if (conn_in_reserve(s->c, len) < 0) {
        refuse_busy(st);
        return;
    }
    st->charged += len;
    while (len > 0 && !st->ended) {
        if (!st->m->client_stream && st->rd.ready) {
            finish(st, GRPC_INVALID_ARGUMENT,
                   "more than one request message for a unary method");
            return;
        }
        size_t used;
        int rv = grpc_reader_feed(&st->rd, data, len, &used);
        data += used;
        len -= used;
        s->buffered += st->rd.msg.cap - st->rd_counted;
        st->rd_counted = st->rd.msg.cap;
        if (rv == GRPC_READ_TOO_BIG) {
            st->reset_after = true;
            finish(st, GRPC_RESOURCE_EXHAUSTED,
                   "message of %lu bytes is larger than grpc-max-message "
                   "(%zu bytes)",
                   (unsigned long)st->rd.len, gs->max_message);
            return;
        }
        if (st->rd.hdr_have == GRPC_FRAME_HEADER && st->rd.compressed) {
            finish(st, GRPC_UNIMPLEMENTED,
                   "compressed messages are not supported "
                   "(grpc-encoding: identity only)");
            return;
        }
        if (s->buffered > PZ_MAX(SESSION_BUFFER_MAX, 4 * gs->max_message)) {
            st->reset_after = true;
            finish(st, GRPC_RESOURCE_EXHAUSTED,
                   "too much request data buffered on this connection");
            return;
        }
        if (rv == GRPC_READ_MORE)
            break;
        if (st->m->client_stream) {
            conn_mark_served(s->c);
            if (st->m->kind != M_ETCD)
                reflect_message(st);
            else if (etcd_allowed(st))
                etcd_stream_message(st, st->m->sub);
            if (!st->ended) {
                grpc_reader_next(&st->rd);
                s->buffered -= st->rd_counted - st->rd.msg.cap;
                st->rd_counted = st->rd.msg.cap;
                update_body_deadline(st); /* the next one gets its time */
            }
        }
    }
    if (stream_charge(st) < 0)
        refuse_busy(st);
    update_body_deadline(st);
}

/* --- nghttp2 callbacks -------------------------------------------------- */

/* The stream of id; ud is its session. The callbacks of one frame ask for
 * the same stream several times (one on_header per field), so the last
 * one found is remembered (stream_free forgets it). */
static struct gstream *stream_get(nghttp2_session *ng, void *ud, int32_t id)
{
    struct gsession *s = ud;
    if (s->last_st && s->last_st->id == id)
        return s->last_st;
    struct gstream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st)
        s->last_st = st;
    return st;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame,
                            void *ud)
{
    struct gsession *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailers: a header list of their own, with its own limit. */
        struct gstream *st = stream_get(ng, ud, frame->hd.stream_id);
        if (st)
            st->hdr_bytes = 0;
        return 0;
    }
    struct gstream *st = pz_cache_calloc(1, sizeof *st);
    st->s = s;
    st->id = frame->hd.stream_id;
    grpc_reader_init(&st->rd, s->gs->max_message);
    pz_buf_init(&st->out);
    pz_buf_init(&st->msg);
    grpc_call_init(&st->call);
    pz_queue_init(&st->dq);
    pz_queue_init(&st->wq);
    pz_queue_init(&st->hq);
    pz_queue_init(&st->bq);
    memcpy(st->path, "(no path)", sizeof "(no path)");
    st->started_ns = stats_now_ns();
    pz_queue_push(&s->streams, &st->q);
    s->n_streams++;
    s->c->busy++; /* no idle timeout while a stream is open (Watch) */
    conn_touch(s->c);
    s->gs->stats.streams_open++;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    if (stream_charge(st) < 0)
        st->over_budget = true; /* answered once its headers are in */
    return 0;
}

static bool name_is(const uint8_t *name, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

/* The method of a :path, or NULL (lengths measured once). */
static const struct method *method_find(const uint8_t *path, size_t len)
{
    static size_t lens[PZ_ARRAY_SIZE(methods)];
    if (lens[0] == 0)
        for (size_t i = 0; i < PZ_ARRAY_SIZE(methods); i++)
            lens[i] = strlen(methods[i].path);
    for (size_t i = 0; i < PZ_ARRAY_SIZE(methods); i++)
        if (lens[i] == len && memcmp(path, methods[i].path, len) == 0)
            return &methods[i];
    return NULL;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *ud)
{
    PZ_UNUSED(flags);
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct gstream *st = stream_get(ng, ud, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    /* Counted as SETTINGS_MAX_HEADER_LIST_SIZE counts (32 bytes a field
     * beyond its name and value, so a list holds at most some 500 fields),
     * request trailers too: nghttp2 checks every field it hands over, and
     * a 1-byte reference to a 4 KiB field in the HPACK table has it check
     * 4 KiB. Past the limit it decodes the rest of the block without
     * handing fields over, at little cost. */
    st->hdr_bytes += namelen + valuelen + 32;
    if (st->hdr_bytes > MAX_HEADER_BYTES)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* request trailers carry nothing we use */
    const char *v = (const char *)value;
    /* By length first: most names a client sends are none we use, and
     * this runs for every header of every request. */
    switch (namelen) {
    case 5:
        if (name_is(name, namelen, ":path")) {
            size_t n = PZ_MIN(valuelen, sizeof st->path - 1);
            memcpy(st->path, v, n);
            st->path[n] = '\0';
            st->m = method_find(value, valuelen);
        } else if (name_is(name, namelen, "token")) {
            pz_free(st->cred); /* longer than any token: matches none */
            st->cred = pz_strndup(v, PZ_MIN(valuelen, TOKEN_MAX + 1));
        }
        break;
    case 7:
        if (name_is(name, namelen, ":method"))
            st->post = valuelen == 4 && memcmp(v, "POST", 4) == 0;
        break;
    case 12:
        if (name_is(name, namelen, "content-type"))
            st->ctype_ok = grpc_content_type_ok(v, valuelen);
        else if (name_is(name, namelen, "grpc-timeout"))
            st->timeout_state =
                grpc_timeout_parse(v, valuelen, &st->timeout_ms) == 0 ? 1 : -1;
        else if (name_is(name, namelen, "pyazdb-unary"))
            st->one_message = true;
        break;
    case 13:
        if (name_is(name, namelen, "authorization")) {
            size_t n = valuelen;
            if (!http_bearer_value(&v, &n))
                return 0; /* not a bearer credential: none */
            pz_free(st->cred);
            st->cred = pz_strndup(v, PZ_MIN(n, TOKEN_MAX + 1));
        }
        break;
    case 16:
        if (name_is(name, namelen, "pyazdb-forwarded"))
            st->was_forwarded = true;
        break;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame,
                         void *ud)
{
    struct gstream *st;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        st = stream_get(ng, ud, frame->hd.stream_id);
        if (st == NULL)
            return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            headers_done(st);
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            request_end(st);
        break;
    case NGHTTP2_DATA:
        st = stream_get(ng, ud, frame->hd.stream_id);
        if (st && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            request_end(st);
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id,
                         const uint8_t *data, size_t len, void *ud)
{
    PZ_UNUSED(flags);
    struct gstream *st = stream_get(ng, ud, id);
    if (st && st->headers_done && !st->ended && !st->refused)
        request_data(st, data, len);
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame,
                         void *ud)
{
    struct gsession *s = ud;
    if (frame->hd.type != NGHTTP2_DATA)
        s->c->ctrl_sent += 9 + frame->hd.length; /* 9: frame header */
    /* Our reply is complete but the client is still sending a message we
     * refused for its size: ask it to stop (RST_STREAM NO_ERROR, RFC 9113
     * 8.1). Only then: curl, for one, treats that reset as an error, and
     * for other early errors the rest of the body is small and ignored. */
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        struct gstream *st = stream_get(ng, ud, frame->hd.stream_id);
        if (st && st->reset_after &&
            nghttp2_session_get_stream_remote_close(ng, st->id) == 0)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id,
                                      NGHTTP2_NO_ERROR);
    }
    return 0;
}

static void stream_free(struct gstream *st)
{
    struct gsession *s = st->s;
    struct grpc_server *gs = s->gs;
    deadline_remove(st);
    watch_remove(st);
    retry_remove(st);
    if (st->held)
        pz_queue_remove(&st->hq);
    s->out_bytes -= st->out.len - st->out_off;
    s->out_queued -= st->queued;
    out_count(s);
    if (st->in_node)
        gs->be->cancel(&st->req);
    if (st->in_fwd)
        grpc_client_cancel(&st->call);
    if (st->call_used)
        grpc_call_reset(&st->call);
    conn_hold_detached(&st->fwd_held, 0);
    s->buffered -= st->rd_counted;
    grpc_reader_free(&st->rd);
    conn_in_release(s->c, st->charged);
    if (st->in_bq) {
        pz_queue_remove(&st->bq);
        st->in_bq = false;
        session_deadline(s);
    }
    if (st->ext_free)
        st->ext_free(st->ext);
    if (st->unpacked)
        protobuf_c_message_free_unpacked(st->unpacked, &grpc_pb_allocator);
    pz_buf_free(&st->out);
    pz_buf_free(&st->msg);
    pz_free(st->cred);
    pz_queue_remove(&st->q);
    if (s->last_st == st)
        s->last_st = NULL;
    s->n_streams--;
    s->c->busy--;
    if (st->open_ended) {
        gs->open_ended_streams--;
        if (--s->n_open_ended == 0)
            gs->open_ended_conns--;
    }
    if (s->n_streams == 0)
        conn_touch(s->c); /* idle from now on */
    gs->stats.streams_open--;
    pz_cache_free(st);
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error,
                           void *ud)
{
    struct gstream *st = stream_get(ng, ud, id);
    if (st == NULL)
        return 0;
    if (error != NGHTTP2_NO_ERROR && !st->ended)
        pz_debug("grpc: %s %s: stream reset (%s)", st->s->c->peer, st->path,
                 nghttp2_http2_strerror(error));
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    stream_free(st);
    return 0;
}


/* --- connections -------------------------------------------------------- */

/* The initial window of each request stream: the largest message with its
 * framing fits, so a client sends a whole request without waiting for a
 * WINDOW_UPDATE. nghttp2 sends one once half the window is consumed, but
 * only when output is flushed, at the end of the loop turn that read the
 * bytes: a 1 MiB message behind a 1 MiB window waited a round trip for its
 * last bytes. This bounds no memory (nghttp2 reopens the window as soon as
 * we copy the bytes out): the partial-input budget and the session cap
 * SESSION_BUFFER_MAX do. */
static size_t stream_window(size_t max_message)
{
    size_t w = max_message + GRPC_FRAME_HEADER + WINDOW_SLACK;
    return PZ_MIN(PZ_MAX(w, (size_t)STREAM_WINDOW),
                  (size_t)NGHTTP2_MAX_WINDOW_SIZE);
}

static int on_open(struct conn *c)
{
    struct grpc_server *gs = c->ls->data;
    struct gsession *s = pz_calloc(1, sizeof *s);
    s->gs = gs;
    s->c = c;
    pz_queue_init(&s->streams);
    pz_queue_init(&s->dirty_q);
    pz_queue_init(&s->held);
    if (nghttp2_session_server_new3(&s->ng, callbacks, s, ng_options,
                                    grpc_nghttp2_mem()) != 0) {
        pz_free(s);
        return PZ_ENOMEM;
    }
    c->proto = s;
    /* Idle time counts from the last stream, not the last byte. */
    c->flags |= CONN_IDLE_PROTO;
    grpc_h2_scan_init(&s->scan);
    pz_queue_init(&s->body_q);
    s->preface_due = uv_now(gs->loop) + gs->header_timeout;
    conn_set_deadline(c, s->preface_due);
    size_t window = stream_window(gs->max_message);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, PZ_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(
        s->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)PZ_MAX(window, CONN_WINDOW));
    session_flush(s); /* our SETTINGS go first, or clients wait */
    return 0;
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct gsession *s = c->proto;
    if (s->dead)
        return; /* a GOAWAY is on its way: nothing more is read */
    /* A header block's time runs from the read that opened it. */
    uint64_t blocks = s->scan.blocks;
    grpc_h2_scan_feed(&s->scan, (const uint8_t *)data, len);
    if (!grpc_h2_scan_in_headers(&s->scan))
        s->block_due = 0;
    else if (s->scan.blocks != blocks)
        s->block_due = uv_now(s->gs->loop) + s->gs->header_timeout;
    s->in_recv++;
    ssize_t rv = nghttp2_session_mem_recv(s->ng, (const uint8_t *)data, len);
    s->in_recv--;
    if (rv < 0) {
        pz_debug("grpc: %s: %s", c->peer, nghttp2_strerror((int)rv));
        if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC) {
            conn_close(c); /* not HTTP/2: nobody to tell */
            return;
        }
        /* nghttp2 stops here without telling the client (too many
         * CONTINUATION frames, a flood, ...): say why before closing. */
        session_fail(s,
                     rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ||
                             rv == NGHTTP2_ERR_FLOODED
                         ? NGHTTP2_ENHANCE_YOUR_CALM
                         : NGHTTP2_PROTOCOL_ERROR,
                     nghttp2_strerror((int)rv));
        return;
    }
    session_flush(s);
    session_deadline(s);
}

/* The connection's deadline passed: the preface or a header block is
 * late (GOAWAY, close), or request messages are (those streams end). */
static void on_conn_deadline(struct conn *c)
{
    struct gsession *s = c->proto;
    struct grpc_server *gs = s->gs;
    uint64_t now = uv_now(gs->loop);
    if (s->dead)
        return;
    if (grpc_h2_scan_in_preface(&s->scan) && now >= s->preface_due) {
        gs->stats.timeouts++;
        if (s->scan.preface_left > 0) {
            pz_debug("grpc: %s: no HTTP/2 preface in time", c->peer);
            conn_close(c);
            return;
        }
        session_fail(s, NGHTTP2_ENHANCE_YOUR_CALM,
                     "connection preface and SETTINGS not received within "
                     "client-header-timeout");
        return;
    }
    if (s->block_due && now >= s->block_due) {
        gs->stats.timeouts++;
        session_fail(s, NGHTTP2_ENHANCE_YOUR_CALM,
                     "request headers not received within "
                     "client-header-timeout");
        return;
    }
    while (!pz_queue_empty(&s->body_q)) {
        struct gstream *st =
            container_of(pz_queue_head(&s->body_q), struct gstream, bq);
        if (st->body_due > now)
            break;
        gs->stats.timeouts++;
        st->reset_after = !st->req_ended; /* stop its upload once answered */
        finish(st, GRPC_DEADLINE_EXCEEDED,
               "request message not received within client-body-timeout "
               "(%llu ms)",
               (unsigned long long)gs->body_timeout);
        if (st->in_bq) /* finish() took it off; never loop on it */
            update_body_deadline(st);
    }
    session_flush(s);
    session_deadline(s);
}

/* Evicted at max-clients: tell the client to go elsewhere (or come back)
 * with a GOAWAY that refuses no stream it already sent. */
static void on_evict(struct conn *c)
{
    struct gsession *s = c->proto;
    if (s == NULL || s->dead)
        return;
    s->dead = true;
    static const char why[] = "too many clients";
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, (const uint8_t *)why,
                          sizeof why - 1);
    session_flush(s);
}

static void on_drain(struct conn *c)
{
    struct gsession *s = c->proto;
    if (session_flush(s))
        kick(s->gs);
}

static void on_close(struct conn *c)
{
    struct gsession *s = c->proto;
    if (s == NULL)
        return;
    while (!pz_queue_empty(&s->streams)) {
        struct gstream *st =
            container_of(pz_queue_head(&s->streams), struct gstream, q);
        stream_free(st);
    }
    if (s->dirty)
        pz_queue_remove(&s->dirty_q);
    nghttp2_session_del(s->ng);
    pz_free(s);
    c->proto = NULL;
}

static const struct conn_ops grpc_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
    .on_deadline = on_conn_deadline,
    .on_evict = on_evict,
};

static void setup_callbacks(void)
{
    if (callbacks_refs++ > 0)
        return;
    pz_queue_init(&dirty_list);
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks,
                                                            on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                              on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks,
                                                         on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks,
                                                           on_stream_close);
    /* nghttp2 keeps up to SETTINGS_MAX_CONCURRENT_STREAMS closed streams
     * per connection for RFC 7540 priorities, which gRPC does not use:
     * without this a busy connection held 1000 dead streams (a few hundred
     * bytes each) and every request paid for the bookkeeping. Frames for
     * a closed stream are still told from frames for an idle one by the
     * stream ids already seen. */
    if (nghttp2_option_new(&ng_options) == 0)
        nghttp2_option_set_no_closed_streams(ng_options, 1);
}

static void release_callbacks(void)
{
    if (--callbacks_refs == 0) {
        nghttp2_session_callbacks_del(callbacks);
        callbacks = NULL;
        nghttp2_option_del(ng_options);
        ng_options = NULL;
        pz_buf_free(&reply_scratch);
        pz_buf_free(&cmd_scratch);
        pz_cache_trim();
    }
}

int grpc_start(struct grpc_server *gs, uv_loop_t *loop,
               const struct pz_config *cfg, const struct grpc_backend *be,
               char *err, size_t errlen)
{
    memset(gs, 0, sizeof *gs);
    gs->loop = loop;
    gs->be = be ? be : &grpc_node_backend;
    gs->max_message = (size_t)cfg->grpc_max_message;
    gs->max_key = (size_t)cfg->max_key_size;
    gs->max_value = (size_t)cfg->max_value_size;
    gs->header_timeout = (uint64_t)cfg->client_header_timeout_ms;
    gs->body_timeout = (uint64_t)cfg->client_body_timeout_ms;
    gs->fwd_timeout = 2 * (uint64_t)cfg->request_timeout_ms + 1000;
    gs->retry_window = (uint64_t)cfg->request_timeout_ms;
    pz_queue_init(&gs->deadlines);
    pz_queue_init(&gs->watchers);
    pz_queue_init(&gs->retries);
    if (grpc_reflect_init(&gs->reflect, grpc_descriptor_set,
                          grpc_descriptor_set_len) < 0) {
        snprintf(err, errlen, "grpc: embedded descriptor set is corrupt");
        return PZ_ECORRUPT;
    }
    setup_callbacks();
    int rv = conn_listen(&gs->ls, cfg->grpc_addr, &grpc_ops, "grpc",
                         (size_t)cfg->max_clients, err, errlen);
    if (rv < 0) {
        grpc_reflect_free(&gs->reflect);
        release_callbacks();
        return rv;
    }
    gs->ls.data = gs;
    gs->ls.evict = true;
    gs->ls.send_timeout = gs->body_timeout;
    gs->ls.clients = true;
    uv_timer_init(loop, &gs->deadline_timer);
    uv_timer_init(loop, &gs->watch_timer);
    uv_timer_init(loop, &gs->retry_timer);
    uv_idle_init(loop, &gs->kick);
    gs->deadline_timer.data = gs;
    gs->watch_timer.data = gs;
    gs->retry_timer.data = gs;
    gs->kick.data = gs;
    gs->start_ms = uv_now(loop);
    gs->started = true;
    etcd_watch_setup(loop, (size_t)cfg->etcd_watch_max_per_stream,
                     (uint64_t)cfg->watch_progress_interval_ms);
    return 0;
}

bool grpc_quiet(const struct grpc_server *gs)
{
    return !gs->started || gs->ls.n_conns == 0;
}

int grpc_local_port(const struct grpc_server *gs)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getsockname(&gs->ls.tcp, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

void grpc_drain(struct grpc_server *gs)
{
    struct pz_queue *e;
    if (!gs->started || gs->draining)
        return;
    gs->draining = true;
    conn_listener_stop(&gs->ls, NULL);
    if (gs->fwd) {
        /* Forwarded calls fail now (UNAVAILABLE), as HTTP's do. */
        grpc_client_abort(gs->fwd);
        gs->fwd = NULL;
    }
    PZ_QUEUE_FOREACH(e, &gs->ls.conns)
    {
        struct conn *c = container_of(e, struct conn, q);
        struct gsession *s = c->proto;
        if (s == NULL)
            continue;
        /* Watch streams never end on their own. */
        struct pz_queue *f;
        PZ_QUEUE_FOREACH(f, &s->streams)
        {
            struct gstream *st = container_of(f, struct gstream, q);
            if (st->in_wq || st->in_rq ||
                (st->m && st->m->kind == M_ETCD && st->m->client_stream))
                finish(st, GRPC_UNAVAILABLE, "server is shutting down");
        }
        nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(s->ng),
                              NGHTTP2_NO_ERROR, NULL, 0);
        if (s->n_streams == 0)
            conn_close_after_flush(c);
        session_flush(s);
    }
}

void grpc_close(struct grpc_server *gs)
{
    if (!gs->started)
        return;
    gs->started = false;
    uv_close((uv_handle_t *)&gs->deadline_timer, NULL);
    uv_close((uv_handle_t *)&gs->watch_timer, NULL);
    uv_close((uv_handle_t *)&gs->retry_timer, NULL);
    uv_close((uv_handle_t *)&gs->kick, NULL);
    etcd_watch_close();
    if (gs->fwd) {
        grpc_client_abort(gs->fwd);
        gs->fwd = NULL;
    }
    grpc_reflect_free(&gs->reflect);
    release_callbacks();
}

/* --- for service modules (grpc.h: "Calls served by other modules") ---- */

struct grpc_server *grpc_stream_server(struct gstream *st)
{
    return st->s->gs;
}

ProtobufCMessage *grpc_stream_unpacked(struct gstream *st,
                                       const ProtobufCMessageDescriptor *desc)
{
    ProtobufCMessage *m = st->unpacked;
    if (m == NULL || m->descriptor != desc)
        return NULL;
    st->unpacked = NULL;
    return m;
}

const uint8_t *grpc_stream_msg(struct gstream *st, size_t *len)
{
    *len = st->rd.msg.len;
    return msg_bytes(st);
}

struct node_req *grpc_stream_req(struct gstream *st)
{
    return &st->req;
}

struct gstream *grpc_stream_of(struct node_req *req)
{
    return container_of(req, struct gstream, req);
}

void grpc_stream_in_node(struct gstream *st, bool in)
{
    st->in_node = in;
}

void grpc_stream_set_ext(struct gstream *st, void *ext, void (*ext_free)(void *))
{
    if (st->ext_free)
        st->ext_free(st->ext);
    st->ext = ext;
    st->ext_free = ext_free;
}

void *grpc_stream_ext(struct gstream *st)
{
    return st->ext;
}

bool grpc_stream_deadline_passed(struct gstream *st)
{
    if (!deadline_passed(st))
        return false;
    st->s->gs->stats.deadlines++;
    finish(st, GRPC_DEADLINE_EXCEEDED, "context deadline exceeded");
    return true;
}

bool grpc_stream_ended(const struct gstream *st)
{
    return st->ended;
}

bool grpc_stream_hold_unpacked(struct gstream *st, size_t bytes)
{
    st->unpacked_bytes = bytes;
    if (stream_charge(st) == 0)
        return true;
    refuse_busy(st);
    return false;
}

bool grpc_stream_charge(struct gstream *st, size_t add, size_t sub)
{
    struct gsession *s = st->s;
    pz_assert(sub <= st->queued + add);
    if (add > sub && !conn_output_fits(s->c, add - sub))
        return false;
    st->queued = st->queued + add - sub;
    s->out_queued = s->out_queued + add - sub;
    out_count(s);
    return true;
}

bool grpc_stream_fits(struct gstream *st, size_t len)
{
    return st->ended || conn_output_fits(st->s->c, len + GRPC_FRAME_HEADER);
}

bool grpc_stream_reserve(struct gstream *st, size_t add)
{
    struct gsession *s = st->s;
    if (!conn_output_room(s->c, add))
        return false;
    st->queued += add;
    s->out_queued += add;
    out_count(s);
    return true;
}

bool grpc_stream_hold_read(struct gstream *st,
                           void (*resume)(struct gstream *st))
{
    if (!out_full(st->s) && pz_queue_empty(&st->s->held))
        return false;
    hold_reply(st, resume);
    return true;
}

void grpc_stream_reply(struct gstream *st, const void *msg, size_t len)
{
    reply(st, msg, len);
}

void grpc_stream_send(struct gstream *st, const void *msg, size_t len)
{
    send_message(st, msg, len);
}

void grpc_stream_send_begin(struct gstream *st, size_t len)
{
    uint8_t hdr[GRPC_FRAME_HEADER];
    pz_assert(len <= UINT32_MAX && st->msg_left == 0);
    grpc_frame_header(hdr, false, (uint32_t)len);
    grpc_stream_send_more(st, hdr, sizeof hdr);
    st->msg_left = len;
}

void grpc_stream_send_more(struct gstream *st, const void *p, size_t n)
{
    if (st->ended || !conn_output_fits(st->s->c, n))
        return;
    st->msg_left -= PZ_MIN(n, st->msg_left);
    if (st->out.len == st->out_off)
        st->out_moved = conn_now();
    pz_buf_append(&st->out, p, n);
    st->s->out_bytes += n;
    out_count(st->s);
    output_ready(st);
}

size_t grpc_stream_out_pending(const struct gstream *st)
{
    return st->out.len - st->out_off;
}

void grpc_stream_fail(struct gstream *st, int status, const char *fmt, ...)
{
    char text[MAX_STATUS_MESSAGE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    finish(st, status, "%s", text);
}

void grpc_stream_reset(struct gstream *st)
{
    if (st->ended && !st->responded)
        return;
    st->msg_left = 0; /* reset here, not by finish */
    finish(st, GRPC_CANCELLED, "stalled");
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id,
                              NGHTTP2_CANCEL);
    mark_dirty(st->s);
}

void grpc_stream_pump(struct gstream *st, void (*pump)(struct gstream *st))
{
    st->pump = pump;
    if (st->ended)
        return;
    output_ready(st);
}

void grpc_stream_forward(struct gstream *st)
{
    forward(st);
}

int grpc_stream_forward_call(struct gstream *st, struct grpc_call *call,
                             const void *msg, size_t len, uint64_t timeout_ms,
                             size_t *held, grpc_call_cb cb)
{
    struct grpc_server *gs = st->s->gs;
    const char *addr = gs->be->leader_grpc_addr();
    if (addr == NULL || addr[0] == '\0' || st->was_forwarded || gs->draining)
        return PZ_ENOLEADER;
    /* Counted as forward() counts a relayed call, and its cost with the
     * stream's output (grpc_stream_reserve: the connection's share): with
     * a stopped leader, a flood of them must meet max-pending-output, not
     * grow the follower's memory. */
    if (!conn_output_room(st->s->c, len + GRPC_FRAME_HEADER) ||
        !grpc_stream_reserve(st, GRPC_RELAY_COST))
        return PZ_EOVERLOAD;
    char bearer[8 + MAX_HEADER_BYTES];
    const char *md[5];
    forward_metadata(st, bearer, sizeof bearer, md);
    struct grpc_call_opts opts = {
        .metadata = md, .timeout_ms = timeout_ms, .held = held};
    int rv = grpc_client_call(leader_client(gs, addr), call, st->m->path, msg,
                              len, &opts, cb);
    if (rv == 0)
        gs->stats.forwarded++;
    else
        grpc_stream_charge(st, 0, GRPC_RELAY_COST);
    return rv;
}

uint64_t grpc_stream_output_moved(const struct gstream *st)
{
    return st->out_moved;
}

void grpc_stream_flush(struct gstream *st)
{
    struct gsession *s = st->s;
    if (s->in_recv)
        return; /* on_data flushes once nghttp2 returns */
    if (session_flush(s))
        kick(s->gs);
}
