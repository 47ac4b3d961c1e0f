/* transport.c - see transport.h. Owns the Raft listener, one outbound
 * connection per peer (dialed on demand, retried with backoff), the
 * per-peer send queues and the handshake on both sides. The conn layer
 * does the socket work: reading, buffered writing flushed once per loop
 * turn, and deferred closing.
 *
 * Outbound peer states:
 *   IDLE -> (something to send) CONNECTING -> (TCP up, Handshake written)
 *   HANDSHAKE -> (reply OK) READY
 * With peer TLS, CONNECTING -> (TCP up) TLS -> (TLS handshake done, the
 * acceptor's certificate names the member dialed: Handshake written)
 * HANDSHAKE: our Handshake, which carries the cluster token, goes to no
 * one else.
 * Any failure (connect error, refusal, no reply before the deadline, the
 * connection dropping) -> BACKOFF, whose timer reconnects if messages wait
 * or else returns to IDLE; the peer dialing us (it is back) ends the wait
 * at once (redial_now). The per-peer timer serves both as the
 * connect/handshake deadline and as the backoff delay.
 *
 * Connection ownership: a conn's proto points at its peer (outbound) or at
 * its struct inbound. To let go of an outbound conn we clear its proto and
 * flag it for closing, so no callback of ours ever sees it again. Inbound
 * conns belong to our listener (c->ls points into the transport), so the
 * transport is only freed after the conn layer has reaped every one of
 * them. */
#include "transport.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "queue.h"
#include "raft_codec.h"
#include "tls.h"

#define DEF_MAX_QUEUE_MSGS 4096
#define DEF_MAX_QUEUE_BYTES (32u << 20)
#define DEF_OUT_LOW_WATER (256u << 10)
#define DEF_BACKOFF_MIN_MS 50
#define DEF_BACKOFF_MAX_MS 2000
#define DEF_CONNECT_TIMEOUT_MS 5000
#define DEF_MAX_INBOUND 1024
#define DEF_HANDSHAKE_TIMEOUT_MS 5000
#define DEF_MAX_UNAUTH 64
#define DEF_MAX_STRANGERS 16
#define REPLY_MAX 4096          /* handshake frames (either way): names,
                                   a token and addresses fit in 1.3 KiB */
#define SWEEP_MS 250            /* handshake deadline check period */
#define LOUD_BURST 10           /* connection problems logged as warnings */
#define LOUD_WINDOW_MS 60000    /* ... per this window, then at debug */
#define SCRATCH_KEEP (4u << 20) /* encode buffer kept between sends */
#define NAME_LOG 64             /* bytes of a peer name kept for logs */
#define REFUSAL_QUIET_MS 60000  /* a repeated refusal is logged at debug */

enum peer_state {
    PEER_IDLE = 0,   /* no connection, nothing scheduled */
    PEER_CONNECTING, /* TCP connect in progress */
    PEER_TLS,        /* TCP up, TLS handshake in progress */
    PEER_HANDSHAKE,  /* Handshake sent, waiting for the reply */
    PEER_READY,      /* accepted: queued messages flow */
    PEER_BACKOFF,    /* waiting before the next attempt */
};

/* One encoded frame waiting in a peer queue. */
struct out_msg {
    struct pz_queue q; /* in peer->msgs */
    size_t len;        /* bytes in data */
    uint8_t data[];    /* length prefix + body */
};

struct peer {
    struct pz_queue q;              /* in t->peers */
    struct transport *t;            /* owner */
    uint64_t id;                    /* peer node id */
    char *addr;                     /* "host:port" (pz_malloc) */
    int state;                      /* enum peer_state */
    struct conn *conn;              /* outbound connection, NULL if none */
    uv_timer_t timer;               /* connect deadline or backoff */
    uint64_t backoff;               /* next backoff base in ms, 0: minimum */
    struct raft_frame_parser fp;    /* reads the handshake reply */
    struct pz_queue msgs;           /* struct out_msg, oldest first */
    size_t n_msgs;                  /* length of msgs */
    size_t bytes;                   /* bytes in msgs */
    bool failing;                   /* last attempt failed (quieter logs) */
    bool crc;                       /* the acceptor takes frame checksums */
    uint32_t last_refusal;          /* status of the last refusal, 0 none */
    bool removed;                   /* unlinked, timer closing */
    struct transport_peer_stats st; /* counters */
};

/* A budget of warnings (loud_level). */
struct loud {
    uint64_t start; /* uv_now() the log window began */
    unsigned n;     /* warnings in the window so far */
    unsigned quiet; /* lines logged at debug instead */
};

/* State of one accepted connection. */
struct inbound {
    struct pz_queue q;           /* in t->inbound */
    struct transport *t;         /* owner */
    struct conn *c;              /* the connection */
    struct raft_frame_parser fp; /* frames from the dialer */
    uint64_t peer_id;            /* from the handshake, 0 before */
    char name[NAME_LOG];         /* peer name, printable */
    bool accepted;               /* handshake accepted */
    bool done;                   /* refused or failed: ignore input */
    uint64_t opened_ms;          /* uv_now() at accept: handshake deadline */
    bool unauth;                 /* counted in t->n_unauth: no handshake
                                    accepted or refused yet */
    bool stranger;               /* accepted, not in the owner's
                                    configuration (or the owner is in none
                                    yet): counted in n_strangers */
    size_t stranger_held;        /* of t->stranger_in: this link's partial
                                    frame */
    uint64_t incarnation;        /* from the handshake: to ask check_peer */
    uint64_t member_since;       /* again for a stranger */
};

struct transport {
    uv_loop_t *loop;             /* the process loop */
    struct transport_config cfg; /* copy; strings below replace its own */
    char *listen_addr;           /* copied cfg.listen_addr */
    char *source_addr;           /* copied cfg.source_addr ("": any) */
    char *name;                  /* copied cfg.name */
    char *token;                 /* copied cfg.token ("" = none) */
    struct conn_listener ls;     /* accepts peers; ls.data == this */
    struct pz_queue peers;       /* struct peer */
    struct pz_queue inbound;     /* struct inbound */
    size_t n_inbound;            /* length of inbound */
    uint64_t rng;                /* backoff jitter PRNG state */
    struct pz_buf scratch;       /* encode buffer */
    struct transport_stats st;   /* counters */
    uint64_t refused_id;         /* node of the last refusal we logged */
    uint32_t refused_status;     /* its status */
    uint64_t refused_ms;         /* uv_now() when it was logged loudly */
    size_t n_unauth;             /* inbound still in their handshake */
    size_t n_strangers;          /* accepted inbound from unknown ids */
    size_t stranger_in;          /* partial-frame bytes they hold */
    uv_timer_t sweep;            /* closes handshakes past their deadline */
    struct loud in_loud;         /* inbound problems' warnings */
    struct loud out_loud;        /* our dials' first failures' */
    bool closing;                /* transport_close called */
    size_t closing_handles;      /* uv_close callbacks still to come */
    uv_timer_t fin[2];           /* never started; closed last to free */
    transport_close_cb close_cb; /* from transport_close */
};

static void peer_connect(struct peer *p);
static void pump(struct peer *p);

/* --- helpers ------------------------------------------------------------ */

static void printable(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    dst[i] = '\0';
}

static struct peer *find_peer(const struct transport *t, uint64_t id)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &t->peers)
    {
        struct peer *p = container_of(e, struct peer, q);
        if (p->id == id)
            return p;
    }
    return NULL;
}

static void notify_peer(struct peer *p, bool connected)
{
    struct transport *t = p->t;
    if (t->cfg.on_peer && !t->closing && !p->removed)
        t->cfg.on_peer(t->cfg.data, p->id, connected);
}

static void free_queue(struct peer *p, bool count)
{
    while (!pz_queue_empty(&p->msgs)) {
        struct pz_queue *e = pz_queue_head(&p->msgs);
        pz_queue_remove(e);
        pz_free(container_of(e, struct out_msg, q));
        if (count)
            p->st.dropped++;
    }
    p->n_msgs = 0;
    p->bytes = 0;
}

/* --- closing ------------------------------------------------------------- */

static void on_fin_b(uv_handle_t *h)
{
    struct transport *t = h->data;
    transport_close_cb cb = t->close_cb;
    void *data = t->cfg.data;
    pz_buf_free(&t->scratch);
    pz_free(t->listen_addr);
    pz_free(t->source_addr);
    pz_free(t->name);
    pz_free(t->token);
    pz_free((char *)t->cfg.http_addr);
    pz_free((char *)t->cfg.grpc_addr);
    pz_free(t);
    if (cb)
        cb(data);
}

/* Two hops: a handle closed now may share a close pass with handles closed
 * just before it (and run first); the handle closed from its callback runs
 * in a later pass, after all of them. */
static void on_fin_a(uv_handle_t *h)
{
    struct transport *t = h->data;
    uv_close((uv_handle_t *)&t->fin[1], on_fin_b);
}

static void maybe_finish(struct transport *t)
{
    if (!t->closing || t->closing_handles > 0 || t->n_inbound > 0)
        return;
    if (uv_is_closing((uv_handle_t *)&t->fin[0]))
        return;
    uv_close((uv_handle_t *)&t->fin[0], on_fin_a);
}

static void on_listener_closed(uv_handle_t *h)
{
    struct transport *t = container_of((uv_tcp_t *)h, struct transport, ls.tcp);
    t->closing_handles--;
    maybe_finish(t);
}

static void on_sweep_closed(uv_handle_t *h)
{
    struct transport *t = h->data;
    t->closing_handles--;
    maybe_finish(t);
}

static void on_peer_timer_closed(uv_handle_t *h)
{
    struct peer *p = h->data;
    struct transport *t = p->t;
    raft_frame_parser_free(&p->fp);
    pz_free(p->addr);
    pz_free(p);
    t->closing_handles--;
    maybe_finish(t);
}

/* --- outbound ------------------------------------------------------------ */

static void out_data(struct conn *c, const char *data, size_t len);
static void out_drain(struct conn *c);
static void out_close(struct conn *c);
static void out_tls_ready(struct conn *c);

static const struct conn_ops out_ops = {
    .on_open = NULL,
    .on_data = out_data,
    .on_drain = out_drain,
    .on_close = out_close,
    .on_tls_ready = out_tls_ready,
};

/* Lets go of the connection (if any). Returns true if the link was up. */
static bool peer_drop_conn(struct peer *p)
{
    bool was_ready = p->state == PEER_READY;
    if (p->conn) {
        p->conn->proto = NULL;
        conn_close(p->conn);
        p->conn = NULL;
    }
    raft_frame_parser_free(&p->fp);
    if (!p->removed)
        uv_timer_stop(&p->timer);
    p->state = PEER_IDLE;
    p->st.connected = false;
    return was_ready;
}

static void on_peer_timer(uv_timer_t *h);

static void schedule_retry(struct peer *p)
{
    struct transport *t = p->t;
    if (p->removed || t->closing)
        return;
    uint64_t base = p->backoff ? p->backoff : t->cfg.backoff_min_ms;
    /* Jitter: uniform in [3/4 base, 5/4 base], so peers that failed
     * together do not retry in lockstep. */
    uint64_t span = base / 2;
    uint64_t delay =
        base - base / 4 + (span ? pz_rand_next(&t->rng) % (span + 1) : 0);
    p->backoff = PZ_MIN(base * 2, t->cfg.backoff_max_ms);
    p->state = PEER_BACKOFF;
    uv_timer_start(&p->timer, on_peer_timer, delay, 0);
}

/* Connection problems are logged as warnings LOUD_BURST times per
 * LOUD_WINDOW_MS, then at debug level, so a dialer that keeps failing (or
 * many of them), or strangers whose addresses we dial to answer them,
 * cannot flood the log; a summary says how many went quiet. */
static int loud_level(struct transport *t, struct loud *l, const char *what)
{
    uint64_t now = uv_now(t->loop);
    if (now - l->start >= LOUD_WINDOW_MS) {
        if (l->quiet > 0)
            pz_warn("raft: %u more %s in the last %d s were logged at debug "
                    "level",
                    l->quiet, what, LOUD_WINDOW_MS / 1000);
        l->start = now;
        l->n = 0;
        l->quiet = 0;
    }
    if (l->n < LOUD_BURST) {
        l->n++;
        return PZ_LOG_WARNING;
    }
    l->quiet++;
    return PZ_LOG_DEBUG;
}

/* The attempt or the link failed: log (loudly the first time in a row),
 * drop the connection and retry later. */
static void peer_fail(struct peer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void peer_fail(struct peer *p, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    pz_log(p->failing ? PZ_LOG_DEBUG
                      : loud_level(p->t, &p->t->out_loud,
                                   "outbound connection problems"),
           "raft: peer %" PRIu64 " at %s: %s", p->id, p->addr, why);
    p->failing = true;
    bool was_ready = peer_drop_conn(p);
    schedule_retry(p);
    if (was_ready)
        notify_peer(p, false);
}

static void on_peer_timer(uv_timer_t *h)
{
    struct peer *p = h->data;
    switch (p->state) {
    case PEER_BACKOFF:
        if (p->n_msgs > 0)
            peer_connect(p);
        else
            p->state = PEER_IDLE;
        break;
    case PEER_CONNECTING:
        peer_fail(p, "no connection within %" PRIu64 " ms",
                  p->t->cfg.connect_timeout_ms);
        break;
    case PEER_TLS:
        peer_fail(p, "no TLS handshake within %" PRIu64 " ms",
                  p->t->cfg.connect_timeout_ms);
        break;
    case PEER_HANDSHAKE:
        peer_fail(p, "no handshake reply within %" PRIu64 " ms",
                  p->t->cfg.connect_timeout_ms);
        break;
    default:
        break;
    }
}

/* With peer TLS: does c's verified certificate name node `name`, and is
 * that name node id's? The rule, the same as out_tls_ready's: a DNS
 * subjectAltName equal to the node name (node-id) byte for byte, whatever
 * the name looks like, which the cluster CA vouches for. name_to_id is
 * set whenever TLS can be on (transport_new). */
static bool cert_names(const struct transport *t, const struct conn *c,
                       const char *name, uint64_t id)
{
    if (name == NULL || name[0] == '\0' || !tls_peer_names(c->tls, name))
        return false;
    return t->cfg.name_to_id(name) == id;
}

/* Writes our Handshake on p's connection and waits for the reply. */
static void send_handshake(struct peer *p)
{
    struct transport *t = p->t;
    struct raft_handshake hs = {
        .version = RAFT_PROTO_VERSION,
        .cluster_id = t->cfg.cluster_id,
        .node_id = t->cfg.id,
        .target_id = p->id,
        .name = t->name,
        .token = t->token,
        .http_addr = t->cfg.http_addr,
        .grpc_addr = t->cfg.grpc_addr,
        .raft_addr = t->listen_addr,
        .incarnation = t->cfg.incarnation,
        .member_since =
            t->cfg.member_since ? t->cfg.member_since(t->cfg.data) : 0,
        .frame_crc = true,
    };
    pz_buf_reset(&t->scratch);
    if (raft_codec_encode_handshake(&t->scratch, &hs, REPLY_MAX) < 0) {
        peer_fail(p, "handshake too large (name or token too long)");
        return;
    }
    conn_write(p->conn, t->scratch.data, t->scratch.len);
    raft_frame_parser_init(&p->fp, REPLY_MAX);
    p->state = PEER_HANDSHAKE;
}

static void out_connected(struct conn *c, int status)
{
    struct peer *p = c->proto;
    if (p == NULL)
        return; /* we let go of this connection already */
    if (status < 0) {
        peer_fail(p, "connect: %s", uv_strerror(status));
        return;
    }
    /* With TLS the Handshake (and the cluster token in it) waits until
     * the acceptor's certificate shows it is the member we dialed
     * (out_tls_ready): whoever holds its address and some certificate of
     * the cluster's CA learns nothing. */
    if (c->tls) {
        p->state = PEER_TLS;
        return;
    }
    send_handshake(p);
}

/* The TLS handshake with the acceptor is done: our Handshake goes out
 * only if its verified certificate names the member we dialed (a DNS
 * subjectAltName whose id is p->id: we know the member by id only, so
 * this needs name_to_id, which transport_new requires with TLS); else
 * the link is dropped, counted as a refusal, without a byte of ours
 * sent. */
static void out_tls_ready(struct conn *c)
{
    struct peer *p = c->proto;
    if (p == NULL || p->state != PEER_TLS)
        return;
    struct transport *t = p->t;
    if (!tls_peer_names_id(c->tls, t->cfg.name_to_id, p->id)) {
        p->st.refused++;
        peer_fail(p,
                  "its TLS certificate does not name node %" PRIu64
                  ": not sending it our handshake",
                  p->id);
        return;
    }
    send_handshake(p);
}

static void handle_reply(struct peer *p, const struct raft_handshake_reply *r)
{
    struct transport *t = p->t;
    char name[NAME_LOG];
    /* With peer TLS the acceptor's certificate named the member we dialed
     * before we sent our Handshake (out_tls_ready): a refusal (REMOVED
     * stops this node) comes from that member, not from whoever holds
     * its address and some certificate of the cluster's CA. */
    if (r->status != RAFT_HS_OK) {
        char why[160];
        snprintf(why, sizeof why, "%s", raft_hs_status_str(r->status));
        if (r->status == RAFT_HS_REMOVED)
            snprintf(why, sizeof why,
                     "removed from the cluster (configuration entry "
                     "%" PRIu64 ")",
                     r->conf_index);
        p->st.refused++;
        /* Not being a member yet is normal for a moment (a change on its
         * way): say it at debug level. */
        bool quiet =
            p->last_refusal == r->status || r->status == RAFT_HS_NOT_MEMBER;
        pz_log(quiet ? PZ_LOG_DEBUG : PZ_LOG_WARNING,
               "raft: peer %s (node %" PRIu64 ") refused us: %s", p->addr,
               p->id, why);
        p->last_refusal = r->status;
        p->failing = true;
        peer_drop_conn(p);
        schedule_retry(p);
        if (r->status == RAFT_HS_REMOVED && t->cfg.on_removed && !t->closing)
            t->cfg.on_removed(t->cfg.data, p->id, r->conf_index,
                              r->conf_term);
        return;
    }
    if (r->node_id != p->id) {
        peer_fail(p, "answered as node %" PRIu64, r->node_id);
        return;
    }
    printable(name, sizeof name, r->name);
    if (p->conn->tls && !cert_names(t, p->conn, r->name, p->id)) {
        p->st.refused++;
        peer_fail(p, "its TLS certificate does not name '%s', node %" PRIu64,
                  name, p->id);
        return;
    }
    uint64_t ci = 0, ct = 0;
    int kind = t->cfg.check_peer
                   ? t->cfg.check_peer(t->cfg.data, p->id, r->incarnation,
                                       r->member_since, &ci, &ct)
                   : TRANSPORT_PEER_MEMBER;
    if (kind == TRANSPORT_PEER_OTHER_INCARNATION ||
        kind == TRANSPORT_PEER_REMOVED) {
        /* A node started with a new data dir under a member's name (it
         * forgot what that member acknowledged, so it must not stand in
         * for it: the member is removed first, then it joins anew), or
         * the removed incarnation answering at a member's address. */
        p->st.refused++;
        pz_log(p->last_refusal == RAFT_HS_OTHER_INCARNATION ? PZ_LOG_DEBUG
                                                            : PZ_LOG_WARNING,
               "raft: peer %s answers as '%s' with another data dir "
               "(incarnation %" PRIu64 "): not used until the member is "
               "removed and it joins again",
               p->addr, name, r->incarnation);
        p->last_refusal = RAFT_HS_OTHER_INCARNATION;
        p->failing = true;
        peer_drop_conn(p);
        schedule_retry(p);
        return;
    }
    pz_info("raft: connected to peer %" PRIu64 " '%s' at %s", p->id, name,
            p->addr);
    if (t->cfg.on_peer_info)
        t->cfg.on_peer_info(t->cfg.data, p->id, true, name, p->addr,
                            r->http_addr, r->grpc_addr);
    raft_frame_parser_free(&p->fp);
    uv_timer_stop(&p->timer);
    p->crc = r->frame_crc; /* an older acceptor leaves it out */
    p->state = PEER_READY;
    p->backoff = 0;
    p->failing = false;
    p->last_refusal = 0;
    p->st.connects++;
    p->st.connected = true;
    p->st.checksums = p->crc;
    pump(p);
    notify_peer(p, true);
}

static void out_data(struct conn *c, const char *data, size_t len)
{
    struct peer *p = c->proto;
    if (p == NULL)
        return;
    if (p->state != PEER_HANDSHAKE) {
        peer_fail(p, "unexpected %zu bytes from the acceptor", len);
        return;
    }
    const uint8_t *body;
    size_t blen, used;
    int r = raft_frame_parser_feed(&p->fp, (const uint8_t *)data, len, &used,
                                   &body, &blen);
    if (r == PZ_ETOOBIG) {
        peer_fail(p, "handshake reply of %zu bytes is too large",
                  p->fp.body_len);
        return;
    }
    if (r == RAFT_FRAME_NEED_MORE)
        return;
    struct raft_decoded d;
    int rv = raft_codec_decode(body, blen, &d);
    if (rv < 0 || d.kind != RAFT_FRAME_REPLY) {
        peer_fail(p, "bad handshake reply (%s)",
                  rv < 0 ? pz_strerror(rv) : "not a reply");
    } else if (used != len) {
        peer_fail(p, "unexpected data after the handshake reply");
    } else {
        handle_reply(p, &d.reply);
    }
    raft_decoded_free(&d);
}

static void out_drain(struct conn *c)
{
    struct peer *p = c->proto;
    if (p)
        pump(p);
}

static void out_close(struct conn *c)
{
    struct peer *p = c->proto;
    if (p == NULL)
        return;
    /* The conn layer closed it (EOF, read or write error, output limit). */
    peer_fail(p, "%s",
              p->state == PEER_READY
                  ? "connection lost"
                  : "connection closed during the handshake");
}

static void peer_connect(struct peer *p)
{
    struct transport *t = p->t;
    p->st.attempts++;
    if (p->st.attempts > 1)
        p->st.reconnects++;
    struct conn *c = conn_connect_from(p->addr, t->source_addr, &out_ops,
                                       NULL, out_connected);
    if (c == NULL) {
        peer_fail(p, "cannot start a connection%s%s",
                  t->source_addr[0] ? " from " : "", t->source_addr);
        return;
    }
    if (tls_slot_on(t->cfg.tls_out) &&
        conn_start_tls(c, t->cfg.tls_out, NULL,
                       t->cfg.connect_timeout_ms) < 0) {
        peer_fail(p, "cannot start TLS");
        return;
    }
    /* Set after the call: conn_connect never calls back synchronously, and
     * a conn it gives up on internally must not point at us. */
    c->proto = p;
    /* A frame goes to the connection only while less than out_low_water
     * waits, but one frame (a batch of entries and one of the largest)
     * may pass conn-hard-limit, which is meant for clients: the link
     * would close on every attempt and the follower never catch up. */
    c->flags |= CONN_OWN_BOUNDS;
    p->conn = c;
    p->state = PEER_CONNECTING;
    uv_timer_start(&p->timer, on_peer_timer, t->cfg.connect_timeout_ms, 0);
}

/* Writes one frame as queued (sealed with its checksum), without the
 * checksum for an acceptor that did not ask for it. */
static void peer_write(struct peer *p, const void *frame, size_t len)
{
    size_t n = p->crc ? len : len - RAFT_FRAME_CRC;
    conn_write(p->conn, frame, n);
    p->st.sent_msgs++;
    p->st.sent_bytes += n;
}

/* Moves queued frames into the connection while it has room. */
static void pump(struct peer *p)
{
    struct transport *t = p->t;
    while (p->state == PEER_READY && !pz_queue_empty(&p->msgs) &&
           !conn_is_closing(p->conn) &&
           conn_output_pending(p->conn) < t->cfg.out_low_water) {
        struct pz_queue *e = pz_queue_head(&p->msgs);
        struct out_msg *m = container_of(e, struct out_msg, q);
        pz_queue_remove(e);
        p->n_msgs--;
        p->bytes -= m->len;
        peer_write(p, m->data, m->len);
        pz_free(m);
    }
}

/* --- inbound ------------------------------------------------------------- */

static int in_open(struct conn *c);
static void in_data(struct conn *c, const char *data, size_t len);
static void in_close(struct conn *c);
static void in_recheck(struct inbound *in);

/* The link no longer counts among the strangers' (closed, or a member's
 * now). */
static void stranger_forget(struct inbound *in)
{
    if (!in->stranger)
        return;
    in->stranger = false;
    in->t->n_strangers--;
    in->t->stranger_in -= in->stranger_held;
    in->stranger_held = 0;
}

static const struct conn_ops in_ops = {
    .on_open = in_open,
    .on_data = in_data,
    .on_drain = NULL,
    .on_close = in_close,
};

static int inbound_level(struct transport *t)
{
    return loud_level(t, &t->in_loud, "inbound connection problems");
}

/* The handshake is over, one way or another: no longer counted among
 * those waiting for it. Idempotent. */
static void in_settle(struct inbound *in)
{
    if (in->unauth) {
        in->unauth = false;
        in->t->n_unauth--;
    }
}

static void in_fail(struct inbound *in, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void in_fail(struct inbound *in, const char *fmt, ...)
{
    char why[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    in_settle(in);
    int level = inbound_level(in->t);
    if (in->accepted)
        pz_log(level, "raft: closing connection from node %" PRIu64 " at %s: %s",
               in->peer_id, in->c->peer, why);
    else
        pz_log(level, "raft: closing connection from %s: %s", in->c->peer, why);
    in->t->st.inbound_errors++;
    in->done = true;
    conn_close(in->c);
}

static int in_open(struct conn *c)
{
    struct transport *t = c->ls->data;
    if (t->closing)
        return PZ_ESHUTDOWN;
    if (t->n_unauth >= t->cfg.max_unauth) {
        /* Make room: the oldest dialer still in its handshake goes (the
         * list is in accept order). */
        struct pz_queue *e;
        PZ_QUEUE_FOREACH(e, &t->inbound)
        {
            struct inbound *o = container_of(e, struct inbound, q);
            if (o->unauth) {
                t->st.inbound_evicted++;
                in_fail(o, "closed to make room (%zu connections waiting "
                           "for their handshake)",
                        t->cfg.max_unauth);
                break;
            }
        }
    }
    struct inbound *in = pz_calloc(1, sizeof *in);
    in->t = t;
    in->c = c;
    in->opened_ms = uv_now(t->loop);
    /* Until the handshake is accepted only a small frame is allowed: an
     * unknown dialer cannot make us buffer max_frame bytes. */
    raft_frame_parser_init(&in->fp, REPLY_MAX);
    pz_queue_push(&t->inbound, &in->q);
    t->n_inbound++;
    t->n_unauth++;
    in->unauth = true;
    c->proto = in;
    pz_debug("raft: inbound connection from %s", c->peer);
    return 0;
}

static void in_close(struct conn *c)
{
    struct inbound *in = c->proto;
    if (in == NULL)
        return;
    struct transport *t = in->t;
    if (in->accepted)
        pz_info("raft: inbound connection from node %" PRIu64
                " '%s' at %s closed",
                in->peer_id, in->name, c->peer);
    in_settle(in);
    stranger_forget(in);
    pz_queue_remove(&in->q);
    t->n_inbound--;
    raft_frame_parser_free(&in->fp);
    uint64_t id = in->accepted ? in->peer_id : 0;
    pz_free(in);
    c->proto = NULL;
    /* Told of every accepted link, and whether the peer has another (a
     * new link of the same peer replaced this one). */
    bool last = true;
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &t->inbound)
    {
        struct inbound *o = container_of(e, struct inbound, q);
        if (o->accepted && !o->done && o->peer_id == id)
            last = false;
    }
    if (id && t->cfg.on_inbound_closed && !t->closing)
        t->cfg.on_inbound_closed(t->cfg.data, id, last);
    maybe_finish(t);
}

/* Closes the accepted links from peer id except `keep`. */
static void close_inbound_from(struct transport *t, uint64_t id,
                               const struct inbound *keep)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &t->inbound)
    {
        struct inbound *o = container_of(e, struct inbound, q);
        if (o != keep && o->accepted && !o->done && o->peer_id == id) {
            o->done = true;
            conn_close(o->c);
        }
    }
}

/* Handshakes past their deadline: trickling bytes does not extend it. */
static void on_sweep(uv_timer_t *h)
{
    struct transport *t = h->data;
    if (t->n_unauth == 0)
        return;
    uint64_t now = uv_now(t->loop);
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &t->inbound)
    {
        struct inbound *in = container_of(e, struct inbound, q);
        if (in->unauth &&
            now - in->opened_ms >= t->cfg.handshake_timeout_ms) {
            t->st.inbound_timeouts++;
            in_fail(in, "no handshake within %" PRIu64 " ms",
                    t->cfg.handshake_timeout_ms);
        }
    }
}

static void refuse(struct inbound *in, uint32_t status, uint64_t conf_index,
                   uint64_t conf_term, uint64_t node_id, const char *detail)
{
    struct transport *t = in->t;
    /* The refusal says only what went wrong: nothing about us. */
    struct raft_handshake_reply r = {
        .status = status,
        .version = RAFT_PROTO_VERSION,
        .conf_index = conf_index,
        .conf_term = conf_term,
    };
    pz_buf_reset(&t->scratch);
    int rv = raft_codec_encode_reply(&t->scratch, &r, REPLY_MAX);
    pz_assert(rv == 0);
    conn_write(in->c, t->scratch.data, t->scratch.len);
    /* A misconfigured peer retries every couple of seconds: say it
     * loudly once a minute, not on every attempt. */
    uint64_t now = uv_now(t->loop);
    bool again = t->refused_id == node_id && t->refused_status == status &&
                 now - t->refused_ms < REFUSAL_QUIET_MS;
    if (!again) {
        t->refused_id = node_id;
        t->refused_status = status;
        t->refused_ms = now;
    }
    int level = again ? PZ_LOG_DEBUG : inbound_level(t);
    if (status == RAFT_HS_NOT_MEMBER && level == PZ_LOG_WARNING)
        level = PZ_LOG_INFO; /* also a member added a moment ago */
    pz_log(level, "raft: refusing %s (node %" PRIu64 " '%s'): %s%s",
           in->c->peer, node_id, in->name, raft_hs_status_str(status),
           detail);
    t->st.inbound_refused++;
    in_settle(in);
    in->done = true;
    conn_pause(in->c);
    conn_close_after_flush(in->c);
}

/* A member just dialed us and passed the handshake: it is up. Our own
 * link to it, if waiting out a backoff from when it was down, is tried
 * at once rather than up to backoff_max_ms later: a restarted follower
 * hears from its leader (whose messages go on this link) as soon as it
 * is back. A peer that refused us keeps its backoff (it would refuse
 * again), and one that keeps dialing us costs at most one attempt of
 * ours per handshake of its own. */
static void redial_now(struct transport *t, uint64_t id)
{
    struct peer *p = find_peer(t, id);
    if (p == NULL || p->state != PEER_BACKOFF || p->last_refusal != 0)
        return;
    uv_timer_stop(&p->timer);
    p->backoff = 0;
    if (p->n_msgs > 0)
        peer_connect(p);
    else
        p->state = PEER_IDLE;
}

/* Whether addr, the raft address a dialer gives for itself, is on the
 * host its connection c comes from. The address of a dialer that is not
 * in the configuration is dialed back only then: anyone who reaches the
 * port could otherwise make the node open connections to any host and
 * port it can reach, one per handshake. */
static bool addr_on_source(struct conn *c, const char *addr)
{
    char host[64];
    int port;
    if (pz_split_hostport(addr, host, sizeof host, &port) != 0)
        return false;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return false;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) {
        if (ss.ss_family == AF_INET)
            return memcmp(&((struct sockaddr_in *)&ss)->sin_addr, &a4, 4) == 0;
        const struct in6_addr *p = &((struct sockaddr_in6 *)&ss)->sin6_addr;
        return ss.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(p) &&
               memcmp(p->s6_addr + 12, &a4, 4) == 0;
    }
    return inet_pton(AF_INET6, host, &a6) == 1 && ss.ss_family == AF_INET6 &&
           memcmp(&((struct sockaddr_in6 *)&ss)->sin6_addr, &a6, 16) == 0;
}

static void in_handshake(struct inbound *in, const struct raft_handshake *hs)
{
    if (in->c->tls && !cert_names(in->t, in->c, hs->name, hs->node_id)) {
        printable(in->name, sizeof in->name, hs->name);
        refuse(in, RAFT_HS_BAD_TOKEN, 0, 0, hs->node_id,
               " (its TLS certificate does not name the node it claims)");
        return;
    }
    struct transport *t = in->t;
    char why[200] = "";
    uint64_t conf_index = 0, conf_term = 0;
    printable(in->name, sizeof in->name, hs->name);
    if (hs->version != RAFT_PROTO_VERSION) {
        snprintf(why, sizeof why, " (theirs %" PRIu32 ", ours %d)", hs->version,
                 RAFT_PROTO_VERSION);
        refuse(in, RAFT_HS_BAD_VERSION, 0, 0, hs->node_id, why);
        return;
    }
    if (t->token[0] && !pz_token_equal(t->token, strlen(t->token), hs->token,
                                       strlen(hs->token))) {
        refuse(in, RAFT_HS_BAD_TOKEN, 0, 0, hs->node_id, "");
        return;
    }
    if (hs->node_id == 0) {
        refuse(in, RAFT_HS_BAD_HANDSHAKE, 0, 0, 0, " (node id 0)");
        return;
    }
    if (hs->node_id == t->cfg.id) {
        snprintf(why, sizeof why, " (it uses our id %" PRIu64 ")", t->cfg.id);
        refuse(in, RAFT_HS_DUPLICATE_ID, 0, 0, hs->node_id, why);
        return;
    }
    if (hs->target_id != 0 && hs->target_id != t->cfg.id) {
        snprintf(why, sizeof why,
                 " (it wants node %" PRIu64 ", we are %" PRIu64 ")",
                 hs->target_id, t->cfg.id);
        refuse(in, RAFT_HS_WRONG_NODE, 0, 0, hs->node_id, why);
        return;
    }
    /* A node that is still joining has cluster id 0 and takes the id of
     * the first member that dials it (below). */
    if (hs->cluster_id == 0 ||
        (t->cfg.cluster_id != 0 && hs->cluster_id != t->cfg.cluster_id)) {
        snprintf(why, sizeof why,
                 " (theirs %016" PRIx64 ", ours %016" PRIx64 ")",
                 hs->cluster_id, t->cfg.cluster_id);
        refuse(in, RAFT_HS_CLUSTER_MISMATCH, 0, 0, hs->node_id, why);
        return;
    }
    int kind = t->cfg.check_peer
                   ? t->cfg.check_peer(t->cfg.data, hs->node_id,
                                       hs->incarnation, hs->member_since,
                                       &conf_index, &conf_term)
                   : TRANSPORT_PEER_MEMBER;
    if (kind == TRANSPORT_PEER_OTHER_INCARNATION) {
        snprintf(why, sizeof why,
                 " (incarnation %" PRIu64 ": a member of that id has another "
                 "data dir)",
                 hs->incarnation);
        refuse(in, RAFT_HS_OTHER_INCARNATION, 0, 0, hs->node_id, why);
        return;
    }
    if (kind == TRANSPORT_PEER_REMOVED) {
        snprintf(why, sizeof why, " (configuration entry %" PRIu64 ")",
                 conf_index);
        refuse(in, RAFT_HS_REMOVED, conf_index, conf_term, hs->node_id, why);
        return;
    }
    /* A node still joining trusts no dialer more than a stranger (any
     * peer that knows the cluster id and token may dial it), but the one
     * whose cluster it joins: the first contact, its leader. */
    bool stranger = kind == TRANSPORT_PEER_STRANGER ||
                    (kind == TRANSPORT_PEER_JOINING && t->cfg.cluster_id != 0);
    if (stranger && t->n_strangers >= t->cfg.max_strangers) {
        /* Make room: the oldest link from an id we do not know goes. */
        struct pz_queue *e, *next;
        for (e = t->inbound.next; e != &t->inbound; e = next) {
            next = e->next;
            struct inbound *o = container_of(e, struct inbound, q);
            in_recheck(o); /* one our configuration names now stays */
            if (o->stranger && !o->done) {
                t->st.inbound_evicted++;
                in_fail(o, "closed to make room (%zu links from ids not in "
                           "the configuration)",
                        t->cfg.max_strangers);
                break;
            }
        }
    }
    struct raft_handshake_reply r = {
        .status = RAFT_HS_OK,
        .version = RAFT_PROTO_VERSION,
        .node_id = t->cfg.id,
        .name = t->name,
        .http_addr = t->cfg.http_addr,
        .grpc_addr = t->cfg.grpc_addr,
        .incarnation = t->cfg.incarnation,
        .member_since =
            t->cfg.member_since ? t->cfg.member_since(t->cfg.data) : 0,
        .frame_crc = hs->frame_crc,
    };
    pz_buf_reset(&t->scratch);
    int rv = raft_codec_encode_reply(&t->scratch, &r, REPLY_MAX);
    pz_assert(rv == 0);
    conn_write(in->c, t->scratch.data, t->scratch.len);
    if (t->cfg.cluster_id == 0) {
        t->cfg.cluster_id = hs->cluster_id;
        pz_info("raft: joined cluster %016" PRIx64 " (first contact from "
                "node '%s')",
                hs->cluster_id, in->name);
        if (t->cfg.on_cluster_id)
            t->cfg.on_cluster_id(t->cfg.data, hs->cluster_id);
    }
    in_settle(in);
    in->accepted = true;
    in->incarnation = hs->incarnation;
    in->member_since = hs->member_since;
    if (stranger) {
        in->stranger = true;
        t->n_strangers++;
    }
    /* What a dialer says of itself counts only for an id the owner has no
     * configured address for (it is joining, or the dialer is not in its
     * configuration yet), so that it can answer; a stranger's address,
     * only on the host it dials from. */
    if (t->cfg.on_peer_info && kind != TRANSPORT_PEER_MEMBER &&
        (!stranger || addr_on_source(in->c, hs->raft_addr)))
        t->cfg.on_peer_info(t->cfg.data, hs->node_id, false, in->name,
                            hs->raft_addr, "", "");
    in->peer_id = hs->node_id;
    in->fp.max = t->cfg.max_frame;
    in->fp.crc = hs->frame_crc; /* from the next frame on */
    in->c->busy = 1; /* a quiet peer link is not an idle client */
    /* One inbound link per peer: a new one (the peer restarted, or
     * reconnected before we saw the old one die) replaces the old. */
    close_inbound_from(t, in->peer_id, in);
    pz_info("raft: accepted node %" PRIu64 " '%s' from %s%s", in->peer_id,
            in->name, in->c->peer,
            stranger ? " (not in our configuration: a member we have not "
                       "heard of yet?)"
                     : "");
    redial_now(t, in->peer_id);
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case RAFT_FRAME_HANDSHAKE:
        return "handshake";
    case RAFT_FRAME_REPLY:
        return "handshake reply";
    case RAFT_FRAME_MESSAGE:
        return "raft message";
    case RAFT_FRAME_CHUNK:
        return "snapshot chunk";
    default:
        return "unknown frame";
    }
}

static void in_frame(struct inbound *in, const uint8_t *body, size_t len)
{
    struct transport *t = in->t;
    struct raft_decoded d;
    int rv = raft_codec_decode(body, len, &d);
    if (rv < 0) {
        in_fail(in, "undecodable frame of %zu bytes (%s)", len,
                pz_strerror(rv));
        return;
    }
    if (!in->accepted) {
        if (d.kind == RAFT_FRAME_HANDSHAKE)
            in_handshake(in, &d.hs);
        else
            in_fail(in, "%s before the handshake", kind_name(d.kind));
    } else if (d.kind == RAFT_FRAME_CHUNK) {
        const char *why = NULL;
        if (t->cfg.on_chunk && !t->closing)
            why = t->cfg.on_chunk(t->cfg.data, in->peer_id, &d.chunk);
        if (why != NULL) {
            t->st.inbound_invalid++;
            in_fail(in, "%s", why);
        }
    } else if (d.kind != RAFT_FRAME_MESSAGE) {
        in_fail(in, "unexpected %s", kind_name(d.kind));
    } else if (d.msg.from != in->peer_id) {
        in_fail(in, "message from node %" PRIu64 " on this link", d.msg.from);
    } else if (d.msg.to != t->cfg.id) {
        pz_debug("raft: dropping a message for node %" PRIu64
                 " from node %" PRIu64,
                 d.msg.to, in->peer_id);
    } else if (!t->closing) {
        t->st.recv_msgs++;
        t->st.recv_bytes +=
            RAFT_FRAME_HDR + len + (in->fp.crc ? RAFT_FRAME_CRC : 0);
        const char *why = t->cfg.recv(t->cfg.data, &d.msg);
        if (why != NULL) {
            t->st.inbound_invalid++;
            in_fail(in, "%s", why);
        }
    }
    raft_decoded_free(&d);
}

/* Once our configuration names a stranger's id (our log caught up), its
 * link is a member's. */
static void in_recheck(struct inbound *in)
{
    struct transport *t = in->t;
    uint64_t ci = 0, ct = 0;
    if (!in->stranger || t->cfg.check_peer == NULL ||
        t->cfg.check_peer(t->cfg.data, in->peer_id, in->incarnation,
                          in->member_since, &ci, &ct) != TRANSPORT_PEER_MEMBER)
        return;
    stranger_forget(in);
    pz_info("raft: node %" PRIu64 " '%s' is in our configuration now",
            in->peer_id, in->name);
}

/* Counts the link's partial frame in the process's partial-input budget
 * (max-partial-input). A member's always: Raft must not starve behind
 * clients, which meet the budget first. A dialer still in its handshake
 * only while it fits. Links from ids not in our configuration only while
 * it fits and all of theirs together stay within a quarter of the budget
 * (at least stranger_frame): dialers that merely know the cluster id cannot
 * take the budget from clients. False: over. */
static bool in_charge(struct inbound *in)
{
    struct transport *t = in->t;
    size_t n = in->fp.cap;
    in_recheck(in);
    if (!in->accepted)
        return conn_in_set(in->c, n) == 0;
    if (!in->stranger) {
        conn_in_force(in->c, n);
        return true;
    }
    size_t others = t->stranger_in - in->stranger_held;
    size_t limit = conn_in_limit(); /* 0: none */
    size_t cap = limit ? PZ_MAX(limit / 4, t->cfg.stranger_frame) : SIZE_MAX;
    if (n > in->stranger_held && others + n > cap)
        return false;
    if (conn_in_set(in->c, n) < 0)
        return false;
    t->stranger_in = others + n;
    in->stranger_held = n;
    return true;
}

static void in_data(struct conn *c, const char *data, size_t len)
{
    struct inbound *in = c->proto;
    const uint8_t *p = (const uint8_t *)data;
    size_t off = 0;
    while (in && off < len && !in->done && !conn_is_closing(c)) {
        const uint8_t *body;
        size_t blen, used;
        int r = raft_frame_parser_feed(&in->fp, p + off, len - off, &used,
                                       &body, &blen);
        off += used;
        if (r == PZ_ETOOBIG) {
            in_fail(in, "frame of %zu bytes exceeds the limit of %zu",
                    in->fp.body_len, in->fp.max);
            return;
        }
        if (r == PZ_ECORRUPT) {
            in->t->st.inbound_corrupt++;
            in_fail(in, "frame checksum mismatch (damaged on the way)");
            return;
        }
        if (!in_charge(in)) {
            in_fail(in, "%s",
                    in->accepted ? "over the partial input allowed to links "
                                   "from ids not in the configuration"
                                 : "over max-partial-input");
            return;
        }
        if (r == RAFT_FRAME_NEED_MORE)
            return;
        in_frame(in, body, blen);
    }
}

/* --- public API ---------------------------------------------------------- */

struct transport *transport_new(uv_loop_t *loop,
                                const struct transport_config *cfg, char *err,
                                size_t errlen)
{
    /* Peer TLS checks names against ids both ways (cert_names,
     * out_tls_ready): without name_to_id no certificate could name the
     * member we dial, and a dialer's would name whatever id it claims.
     * Whether a slot is on is read at each connection, so a slot given
     * at all needs it. */
    bool tls = cfg->tls_in != NULL || cfg->tls_out != NULL;
    if (cfg->id == 0 || cfg->recv == NULL || cfg->listen_addr == NULL ||
        (tls && cfg->name_to_id == NULL)) {
        snprintf(err, errlen, "raft transport: %s",
                 cfg->id == 0               ? "node id 0"
                 : cfg->recv == NULL        ? "no receive callback"
                 : cfg->listen_addr == NULL ? "no listen address"
                                            : "peer TLS without name_to_id");
        return NULL;
    }
    struct transport *t = pz_calloc(1, sizeof *t);
    t->loop = loop;
    t->cfg = *cfg;
    t->listen_addr = pz_strdup(cfg->listen_addr);
    t->source_addr = pz_strdup(cfg->source_addr ? cfg->source_addr : "");
    t->cfg.source_addr = t->source_addr;
    t->name = pz_strdup(cfg->name ? cfg->name : "");
    t->token = pz_strdup(cfg->token ? cfg->token : "");
    t->cfg.http_addr = pz_strdup(cfg->http_addr ? cfg->http_addr : "");
    t->cfg.grpc_addr = pz_strdup(cfg->grpc_addr ? cfg->grpc_addr : "");
    t->cfg.listen_addr = t->listen_addr;
    t->cfg.name = t->name;
    t->cfg.token = t->token;
#define DEF(f, v)                                                              \
    do {                                                                       \
        if (t->cfg.f == 0)                                                     \
            t->cfg.f = (v);                                                    \
    } while (0)
    DEF(max_queue_msgs, DEF_MAX_QUEUE_MSGS);
    DEF(max_queue_bytes, DEF_MAX_QUEUE_BYTES);
    DEF(max_frame, RAFT_FRAME_MAX);
    DEF(out_low_water, DEF_OUT_LOW_WATER);
    DEF(backoff_min_ms, DEF_BACKOFF_MIN_MS);
    DEF(backoff_max_ms, DEF_BACKOFF_MAX_MS);
    DEF(connect_timeout_ms, DEF_CONNECT_TIMEOUT_MS);
    DEF(max_inbound, DEF_MAX_INBOUND);
    DEF(handshake_timeout_ms, DEF_HANDSHAKE_TIMEOUT_MS);
    DEF(max_unauth, DEF_MAX_UNAUTH);
    DEF(max_strangers, DEF_MAX_STRANGERS);
#undef DEF
    if (t->cfg.max_frame > UINT32_MAX)
        t->cfg.max_frame = UINT32_MAX;
    if (t->cfg.backoff_max_ms < t->cfg.backoff_min_ms)
        t->cfg.backoff_max_ms = t->cfg.backoff_min_ms;
    t->rng = cfg->seed ? cfg->seed : pz_seed() ^ cfg->id;
    pz_queue_init(&t->peers);
    pz_queue_init(&t->inbound);
    pz_buf_init(&t->scratch);
    for (int i = 0; i < 2; i++) {
        uv_timer_init(loop, &t->fin[i]);
        t->fin[i].data = t;
    }
    uv_timer_init(loop, &t->sweep);
    t->sweep.data = t;
    t->in_loud.start = t->out_loud.start = uv_now(loop);
    int rv = conn_listen(&t->ls, t->listen_addr, &in_ops, "raft",
                         t->cfg.max_inbound, err, errlen);
    if (rv < 0) {
        /* conn_listen may have a handle of t->ls closing: free t from the
         * loop, after it (the caller runs the loop to finish). */
        t->closing = true;
        t->closing_handles++;
        uv_close((uv_handle_t *)&t->sweep, on_sweep_closed);
        return NULL;
    }
    uv_timer_start(&t->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    t->ls.data = t;
    t->ls.tls = t->cfg.tls_in;
    t->ls.handshake_ms = t->cfg.handshake_timeout_ms;
    pz_info("raft: listening on %s, port %d (node %" PRIu64 " '%s', "
            "cluster %016" PRIx64 ")",
            t->listen_addr, transport_port(t), t->cfg.id, t->name,
            t->cfg.cluster_id);
    return t;
}

int transport_port(const struct transport *t)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (!t->ls.listening ||
        uv_tcp_getsockname(&t->ls.tcp, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int transport_set_peer(struct transport *t, uint64_t id, const char *addr)
{
    char host[256];
    int port;
    if (t->closing)
        return PZ_ESHUTDOWN;
    if (id == 0 || id == t->cfg.id || addr == NULL ||
        pz_split_hostport(addr, host, sizeof host, &port) < 0 || port == 0)
        return PZ_EINVAL;
    struct peer *p = find_peer(t, id);
    if (p) {
        if (strcmp(p->addr, addr) == 0)
            return 0;
        pz_info("raft: peer %" PRIu64 " moves from %s to %s", id, p->addr,
                addr);
        pz_free(p->addr);
        p->addr = pz_strdup(addr);
        bool was_ready = peer_drop_conn(p);
        p->backoff = 0;
        p->failing = false;
        p->last_refusal = 0;
        if (p->n_msgs > 0)
            peer_connect(p);
        if (was_ready)
            notify_peer(p, false);
        return 0;
    }
    p = pz_calloc(1, sizeof *p);
    p->t = t;
    p->id = id;
    p->st.id = id;
    p->addr = pz_strdup(addr);
    pz_queue_init(&p->msgs);
    raft_frame_parser_init(&p->fp, REPLY_MAX);
    uv_timer_init(t->loop, &p->timer);
    p->timer.data = p;
    pz_queue_push(&t->peers, &p->q);
    t->st.peers++;
    return 0;
}

static void peer_release(struct peer *p)
{
    struct transport *t = p->t;
    pz_queue_remove(&p->q);
    t->st.peers--;
    peer_drop_conn(p);
    p->removed = true;
    free_queue(p, true);
    t->closing_handles++;
    uv_close((uv_handle_t *)&p->timer, on_peer_timer_closed);
}

int transport_probe(struct transport *t, uint64_t id)
{
    struct peer *p = find_peer(t, id);
    if (p == NULL)
        return PZ_ENOTFOUND;
    if (p->state == PEER_IDLE && !t->closing)
        peer_connect(p);
    return 0;
}

int transport_remove_peer(struct transport *t, uint64_t id)
{
    close_inbound_from(t, id, NULL);
    struct peer *p = find_peer(t, id);
    if (p == NULL)
        return PZ_ENOTFOUND;
    peer_release(p);
    return 0;
}

static int send_frame(struct transport *t, uint64_t to,
                      const struct raft_msg *m,
                      const struct raft_snap_chunk *chunk)
{
    if (t->closing)
        return PZ_ESHUTDOWN;
    struct peer *p = find_peer(t, to);
    if (p == NULL) {
        t->st.unroutable++;
        return PZ_ENOTFOUND;
    }
    struct pz_buf *b = &t->scratch;
    pz_buf_trim(b, SCRATCH_KEEP);
    int rv = m ? raft_codec_encode_msg(b, m, t->cfg.max_frame)
               : raft_codec_encode_chunk(b, chunk, t->cfg.max_frame);
    if (rv < 0) {
        p->st.dropped++;
        pz_warn("raft: dropping a message to peer %" PRIu64
                ": larger than the frame limit of %zu bytes",
                p->id, t->cfg.max_frame);
        return rv;
    }
    /* Sealed here, before the handshake may have said whether the
     * acceptor takes checksums: peer_write leaves it out if not. */
    raft_codec_seal(b, 0);
    if (p->state == PEER_READY && pz_queue_empty(&p->msgs) &&
        conn_output_pending(p->conn) < t->cfg.out_low_water) {
        /* Fast path: nothing waits, the connection has room. */
        peer_write(p, b->data, b->len);
        return 0;
    }
    struct out_msg *om = pz_malloc(sizeof *om + b->len);
    om->len = b->len;
    memcpy(om->data, b->data, b->len);
    pz_queue_push(&p->msgs, &om->q);
    p->n_msgs++;
    p->bytes += om->len;
    /* Over the cap: drop the oldest, keeping at least the newest. */
    while (p->n_msgs > 1 && (p->n_msgs > t->cfg.max_queue_msgs ||
                             p->bytes > t->cfg.max_queue_bytes)) {
        struct pz_queue *e = pz_queue_head(&p->msgs);
        struct out_msg *old = container_of(e, struct out_msg, q);
        pz_queue_remove(e);
        p->n_msgs--;
        p->bytes -= old->len;
        p->st.dropped++;
        pz_free(old);
    }
    if (p->state == PEER_IDLE)
        peer_connect(p);
    else if (p->state == PEER_READY)
        pump(p);
    return 0;
}

int transport_send(struct transport *t, const struct raft_msg *m)
{
    return send_frame(t, m->to, m, NULL);
}

int transport_send_chunk(struct transport *t, uint64_t to,
                         const struct raft_snap_chunk *c)
{
    return send_frame(t, to, NULL, c);
}

int transport_peer_stats(const struct transport *t, uint64_t id,
                         struct transport_peer_stats *st)
{
    const struct peer *p = find_peer(t, id);
    if (p == NULL)
        return PZ_ENOTFOUND;
    *st = p->st;
    st->queued_msgs = p->n_msgs;
    st->queued_bytes = p->bytes;
    return 0;
}

void transport_stats(const struct transport *t, struct transport_stats *st)
{
    *st = t->st;
    st->inbound = t->n_inbound;
}

void transport_close(struct transport *t, transport_close_cb cb)
{
    pz_assert(!t->closing);
    t->closing = true;
    t->close_cb = cb;
    t->closing_handles++;
    uv_close((uv_handle_t *)&t->sweep, on_sweep_closed);
    if (t->ls.listening) {
        t->closing_handles++;
        conn_listener_stop(&t->ls, on_listener_closed);
    }
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &t->inbound)
    {
        struct inbound *in = container_of(e, struct inbound, q);
        in->done = true;
    }
    conn_listener_close_all(&t->ls);
    while (!pz_queue_empty(&t->peers))
        peer_release(container_of(pz_queue_head(&t->peers), struct peer, q));
    maybe_finish(t);
}
