/* conn.c - see conn.h. The one place accepted and outbound TCP sockets are
 * read and written, and where the limits every client connection shares
 * live: the partial-input budget, deadlines and eviction at max_conns. */
#include "conn.h"

#include <linux/sockios.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

#include "log.h"
#include "stats.h"
#include "tls.h"

#define READ_BUF_SIZE (64 * 1024)
/* Eviction looks at this many candidates at most per new connection, so
 * that a listener full of busy connections costs little to refuse at. */
#define EVICT_SCAN 64
/* What a connection's output buffer may keep allocated with nothing in it
 * (flush): what waits is counted in max-pending-output, not what is
 * allocated, and a 4 MB answer the kernel took whole left its connection
 * holding 4 MB for as long as it stayed open. */
#define OUT_KEEP_MAX (64 * 1024)

struct write_req {
    uv_write_t req;   /* libuv request; req.data unused */
    struct conn *c;   /* owner; alive until our callback (close waits) */
    char *mem;        /* buffer taken from c->out, freed here */
    size_t len;       /* bytes in this write */
};

static uv_loop_t *loop;
static struct conn_limits limits;
static struct pz_queue pending_q;  /* conns with output to write */
static struct pz_queue closing_q;  /* conns flagged CLOSE_ASAP */
static struct pz_queue outbound_q; /* conns from conn_connect */
static struct pz_queue turn_q;     /* conns flagged TURN_PAUSED */
static uint64_t turn_no;           /* loop turns (conn_before_sleep) */
static size_t n_live;              /* conns not yet freed */
static uint64_t client_input_at;   /* conn_client_input_at */
static size_t in_total;            /* partial input charged, all conns */
static size_t out_total;           /* output charged: client conns, counted
                                      outbound ones, detached holds */
static char read_buf[READ_BUF_SIZE];
/* conn_limits.turn_input's default. */
#define CONN_TURN_INPUT (4 * READ_BUF_SIZE)
static char plain_buf[READ_BUF_SIZE]; /* decrypted input, as read_buf */
static struct pz_queue listeners;  /* listening, for the idle sweep */
static const struct conn_ops no_ops; /* for conns with no protocol state */

void conn_set_idle_timeout(uint64_t ms)
{
    limits.idle_timeout = ms;
}

uv_loop_t *conn_loop(void)
{
    return loop;
}

void conn_setup(uv_loop_t *l, const struct conn_limits *lim)
{
    loop = l;
    limits = *lim;
    pz_queue_init(&pending_q);
    pz_queue_init(&closing_q);
    pz_queue_init(&outbound_q);
    pz_queue_init(&turn_q);
    pz_queue_init(&listeners);
}

size_t conn_count(void)
{
    return n_live;
}

uint64_t conn_client_input_at(void)
{
    return client_input_at;
}

bool conn_is_closing(const struct conn *c)
{
    return (c->flags & (CONN_CLOSE_ASAP | CONN_CLOSED)) != 0;
}

size_t conn_output_pending(const struct conn *c)
{
    return c->out.len + c->inflight + (c->tls ? tls_queued(c->tls) : 0);
}

/* Bytes handed to c's socket that are no answer the peer waits for: the
 * protocol's control frames, and over TLS the records' own bytes (a
 * 17-byte PING answer is some 40 on the wire). */
static uint64_t ctrl_bytes(const struct conn *c)
{
    return c->ctrl_sent + (c->tls ? tls_overhead(c->tls) : 0);
}

/* How long output has waited for c's peer with the peer taking none of
 * it: 0 when nothing waits (in c's buffers or held by its protocol) or
 * the peer acknowledged bytes since the last look. Progress is counted
 * in bytes the peer acknowledged (handed to the socket, less what its
 * send queue still holds), not in writes the socket took: a send buffer
 * of megabytes takes more only once half of it is gone, which a client
 * that reads slowly but steadily may take longer than the timeout to
 * free. Looked at every cron, so the figure is off by up to a cron
 * period. */
static uint64_t out_stalled(struct conn *c, uint64_t now)
{
    if (conn_output_pending(c) + c->out_held == 0) {
        /* Nothing waits (what the protocol holds counts: answers a gRPC
         * client gives no window for): no system call. */
        c->stall_sent = UINT64_MAX; /* the next look starts the clock */
        c->stall_ctrl = ctrl_bytes(c);
        c->stall_since = now;
        c->rate_at = 0;
        c->drain_rate = UINT64_MAX;
        return 0;
    }
    uint64_t sent =
        c->sent_now + c->sent_queued -
        uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
    uv_os_fd_t fd;
    int queued = 0;
    if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) == 0 &&
        ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0)
        sent -= PZ_MIN((uint64_t)queued, sent);
    /* The drain rate: bytes taken over each window while output waits. */
    if (c->rate_at == 0 || sent < c->rate_sent) {
        c->rate_at = now;
        c->rate_sent = sent;
    } else if (now - c->rate_at >= CONN_RATE_WINDOW_MS) {
        c->drain_rate = (sent - c->rate_sent) * 1000 / (now - c->rate_at);
        c->rate_at = now;
        c->rate_sent = sent;
    }
    if (sent != c->stall_sent) {
        /* Taking no more than the control frames written since the last
         * look (PING answers a client asks for while it opens no window
         * for the answers it holds up) is no progress. */
        uint64_t now_ctrl = ctrl_bytes(c);
        uint64_t ctrl = now_ctrl - c->stall_ctrl;
        bool moved = c->stall_sent == UINT64_MAX || sent < c->stall_sent ||
                     sent - c->stall_sent > ctrl;
        c->stall_sent = sent;
        c->stall_ctrl = now_ctrl;
        if (moved) {
            c->stall_since = now;
            return 0;
        }
    }
    return now - c->stall_since;
}

uint64_t conn_output_stalled(const struct conn *c)
{
    uint64_t now = conn_now();
    if (conn_output_pending(c) + c->out_held == 0 || now < c->stall_since)
        return 0;
    return now - c->stall_since;
}

/* Count c's output (and what its protocol holds) in out_total as it is
 * now: nothing once c is closing (it is dropped at the reap). */
static void charge(struct conn *c)
{
    if (c->ls ? !c->ls->clients : !(c->flags & CONN_COUNT_OUT))
        return;
    size_t now = conn_is_closing(c) ? 0 : conn_output_pending(c) + c->out_held;
    out_total = out_total - c->out_charged + now;
    c->out_charged = now;
}

size_t conn_output_total(void)
{
    return out_total;
}

size_t conn_output_max(void)
{
    return limits.max_pending_output;
}

void conn_hold_output(struct conn *c, size_t bytes)
{
    c->out_held = bytes;
    charge(c);
}

void conn_count_output(struct conn *c)
{
    pz_assert(c->ls == NULL);
    c->flags |= CONN_COUNT_OUT;
    charge(c);
}

void conn_hold_detached(size_t *held, size_t bytes)
{
    pz_assert(*held <= out_total);
    out_total = out_total - *held + bytes;
    *held = bytes;
}

/* True when c's peer, at the rate it took its output over the last
 * window, would take longer than the send timeout to take what waits: a
 * client that reads a segment a second is never stalled, yet holds what
 * it asked for for hours. */
static bool out_too_slow(const struct conn *c)
{
    uint64_t t = c->send_timeout;
    if (t == 0 || c->drain_rate == UINT64_MAX)
        return false;
    uint64_t waits = conn_output_pending(c) + c->out_held;
    return waits > c->drain_rate * t / 1000;
}

/* Close the client connections over high water (but self) whose output
 * has not moved for CONN_EVICT_IDLE_MS or drains too slowly
 * (out_too_slow), until out_total is at most want. */
static void shed_stalled(struct conn *self, size_t want)
{
    uint64_t now = uv_now(loop);
    struct pz_queue *e, *f;
    PZ_QUEUE_FOREACH(e, &listeners)
    {
        struct conn_listener *ls = container_of(e, struct conn_listener, lq);
        if (!ls->clients)
            continue;
        PZ_QUEUE_FOREACH(f, &ls->conns)
        {
            if (out_total <= want)
                return;
            struct conn *c = container_of(f, struct conn, q);
            if (c == self || conn_is_closing(c) ||
                conn_output_pending(c) + c->out_held <= limits.high_water)
                continue;
            uint64_t stalled = out_stalled(c, now);
            if (stalled >= CONN_EVICT_IDLE_MS)
                pz_info("closing %s: %zu bytes of output not read for %llu "
                        "ms, and max-pending-output (%zu) is reached",
                        c->peer, conn_output_pending(c) + c->out_held,
                        (unsigned long long)stalled,
                        limits.max_pending_output);
            else if (out_too_slow(c))
                pz_info("closing %s: %zu bytes of output read at %llu "
                        "bytes/s, too slowly to be out within %llu ms, and "
                        "max-pending-output (%zu) is reached",
                        c->peer, conn_output_pending(c) + c->out_held,
                        (unsigned long long)c->drain_rate,
                        (unsigned long long)c->send_timeout,
                        limits.max_pending_output);
            else
                continue;
            conn_close(c);
        }
    }
}

/* conn_output_fits' rule without its last step: room for n more bytes of
 * output for c's peer, after closing the stalled connections if that
 * makes it; c itself is left open either way. */
static bool output_room(struct conn *c, size_t n)
{
    size_t max = limits.max_pending_output;
    if (max == 0 || c->ls == NULL || !c->ls->clients || conn_is_closing(c) ||
        !(c->flags & CONN_ADMITTED) || out_total + n <= max ||
        conn_output_pending(c) + c->out_held + n <= limits.high_water)
        return true;
    shed_stalled(c, max > n ? max - n : 0);
    return out_total + n <= max;
}

bool conn_output_room(struct conn *c, size_t n)
{
    return !conn_is_closing(c) && output_room(c, n);
}

bool conn_output_fits(struct conn *c, size_t n)
{
    size_t max = limits.max_pending_output;
    if (output_room(c, n))
        return true;
    pz_warn("closing %s: %zu more bytes of output would take what waits for "
            "clients (%zu bytes) past max-pending-output (%zu)",
            c->peer, n, out_total, max);
    conn_close(c);
    return false;
}

uint64_t conn_now(void)
{
    return uv_now(loop);
}

void conn_touch(struct conn *c)
{
    c->last_io = uv_now(loop);
    if (c->ls && !conn_is_closing(c)) {
        /* ls->conns stays ordered by activity, least recent first, which
         * is the order idle connections are evicted in. */
        pz_queue_remove(&c->q);
        pz_queue_push(&c->ls->conns, &c->q);
    }
}

/* Activity seen by the conn layer: counts unless the protocol decides. */
static void activity(struct conn *c)
{
    if (!(c->flags & CONN_IDLE_PROTO))
        conn_touch(c);
}

void conn_mark_served(struct conn *c)
{
    if (c->flags & CONN_SERVED)
        return;
    c->flags |= CONN_SERVED;
    pz_queue_remove(&c->fq);
}

void conn_set_deadline(struct conn *c, uint64_t at)
{
    c->deadline = at;
}

/* c no longer counts against its listener's max_conns: it is closing (or
 * only lingering to let its last reply reach the peer). */
static void unadmit(struct conn *c)
{
    if (!(c->flags & CONN_ADMITTED))
        return;
    c->flags &= ~(unsigned)CONN_ADMITTED;
    c->ls->n_admitted--;
    pz_queue_remove(&c->fq);
}

/* --- the partial-input budget ---------------------------------------- */

int conn_in_reserve(struct conn *c, size_t n)
{
    if (limits.max_partial_input && in_total + n > limits.max_partial_input)
        return PZ_ENOMEM;
    c->in_held += n;
    in_total += n;
    return 0;
}

void conn_in_release(struct conn *c, size_t n)
{
    pz_assert(n <= c->in_held && n <= in_total);
    c->in_held -= n;
    in_total -= n;
}

int conn_in_set(struct conn *c, size_t n)
{
    if (n > c->in_held)
        return conn_in_reserve(c, n - c->in_held);
    conn_in_release(c, c->in_held - n);
    return 0;
}

void conn_in_force(struct conn *c, size_t n)
{
    in_total = in_total - c->in_held + n;
    c->in_held = n;
}

size_t conn_in_total(void)
{
    return in_total;
}

size_t conn_in_limit(void)
{
    return limits.max_partial_input;
}

static void update_reading(struct conn *c);

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    PZ_UNUSED(h);
    PZ_UNUSED(hint);
    /* One thread, and on_data consumes synchronously: one buffer serves
     * every connection. */
    buf->base = read_buf;
    buf->len = sizeof read_buf;
}

static void mark_pending(struct conn *c);

/* The name of c's side for logs. */
static const char *side(const struct conn *c)
{
    return c->ls ? c->ls->name : "outbound";
}

/* TLS failures are said once per connection, as warnings at most
 * TLS_LOUD_BURST times a minute (anyone can make them), then at debug. */
#define TLS_LOUD_BURST 20
static struct pz_ratelimit tls_loud;

static enum pz_log_level tls_level(void)
{
    unsigned dropped;
    if (!pz_ratelimit(&tls_loud, uv_now(loop), 60000, TLS_LOUD_BURST,
                      &dropped))
        return PZ_LOG_DEBUG;
    if (dropped)
        pz_warn("%u TLS failures logged at debug level only", dropped);
    return PZ_LOG_WARNING;
}

/* A TLS failure on c: said once (never with key material), then closed. */
static void tls_fail(struct conn *c, const char *why)
{
    if (tls_got_input(c->tls))
        pz_log(tls_level(), "%s: TLS with %s failed: %s", side(c), c->peer,
               why);
    else
        pz_debug("%s: TLS with %s: closed before a handshake", side(c),
                 c->peer);
    conn_close(c);
}

/* Records waiting in c's TLS engine go to the socket's output. */
static void tls_output(struct conn *c)
{
    if (tls_take_output(c->tls, &c->out) > 0)
        mark_pending(c);
}

/* Decrypt what was fed and hand the plaintext to the protocol, until the
 * engine needs more input or the protocol pauses (what is left waits in
 * the engine, not read further from the socket, until conn_resume). */
static void tls_input(struct conn *c)
{
    bool was_done = tls_handshake_done(c->tls);
    while (!conn_is_closing(c) && !(c->flags & (CONN_PAUSED | CONN_LINGER))) {
        int n = tls_read(c->tls, plain_buf, sizeof plain_buf);
        tls_output(c);
        if (!was_done && tls_handshake_done(c->tls)) {
            was_done = true;
            tls_set_deadline(c->tls, 0);
            if (c->ops->on_tls_ready) {
                c->ops->on_tls_ready(c);
                if (conn_is_closing(c))
                    return;
            }
            if (tls_queued(c->tls))
                mark_pending(c); /* what the protocol wrote meanwhile */
        }
        if (n == UV_EOF) {
            conn_close(c);
            return;
        }
        if (n < 0) {
            tls_fail(c, tls_error(c->tls));
            return;
        }
        if (n == 0)
            return;
        activity(c);
        c->ops->on_data(c, plain_buf, (size_t)n);
    }
}

/* A client's share of a loop turn's input: libuv reads a readable
 * connection up to 32 times (2 MiB) in a row, so one client sending as
 * fast as it can (header blocks that are costly to decode, say) made
 * every other client wait for all of it each turn. Past CONN_TURN_INPUT
 * in one turn (conn_limits.turn_input), c is read again in the next one,
 * after the others. */
static void turn_share(struct conn *c, size_t n)
{
    if (c->turn != turn_no) {
        c->turn = turn_no;
        c->turn_in = 0;
    }
    c->turn_in += n;
    size_t share = limits.turn_input ? limits.turn_input : CONN_TURN_INPUT;
    if (c->turn_in < share || (c->flags & CONN_TURN_PAUSED))
        return;
    c->flags |= CONN_TURN_PAUSED;
    pz_queue_push(&turn_q, &c->tq);
    update_reading(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if ((c->flags & CONN_SOFT_PAUSED) && nread != 0 &&
        !(c->flags & CONN_LINGER)) {
        /* Input during a soft pause: pause for real. An EOF or error stays
         * in the socket (reading again after conn_resume sees it), as if
         * reading had stopped at conn_pause_soft. */
        if (nread == UV_EOF && (c->flags & CONN_EOF_CLOSES)) {
            conn_close(c); /* hung up on the answer it waited for */
            return;
        }
        c->flags &= ~(unsigned)CONN_SOFT_PAUSED;
        c->flags |= CONN_PAUSED;
        update_reading(c);
        if (nread < 0)
            return;
    }
    if (nread < 0) {
        if (nread != UV_EOF)
            pz_debug("%s: read from %s: %s", c->ls ? c->ls->name : "out",
                     c->peer, uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    if (nread == 0 || conn_is_closing(c))
        return;
    if (c->flags & CONN_LINGER)
        return; /* closing: what the peer still sends is dropped */
    /* Over TLS, once the handshake is done, only plaintext is activity
     * (tls_input): a client trickling a record that never completes is
     * idle, and evicted first at max-clients, as one trickling nothing
     * would be. */
    if (!c->tls || !tls_handshake_done(c->tls))
        activity(c);
    if (c->ls && c->ls->clients) {
        client_input_at = uv_now(loop);
        turn_share(c, (size_t)nread);
    }
    if (c->tls) {
        tls_feed(c->tls, buf->base, (size_t)nread);
        tls_input(c);
        return;
    }
    c->ops->on_data(c, buf->base, (size_t)nread);
}

static void update_reading(struct conn *c)
{
    if (c->flags & CONN_CLOSED)
        return;
    bool want = (c->flags & CONN_LINGER) ||
                !(c->flags & (CONN_PAUSED | CONN_BACKPRESSURE |
                              CONN_CLOSE_ASAP | CONN_TURN_PAUSED));
    if (want && !(c->flags & CONN_READING)) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->flags |= CONN_READING;
    } else if (!want && (c->flags & CONN_READING)) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->flags &= ~(unsigned)CONN_READING;
    }
}

void conn_pause(struct conn *c)
{
    c->flags |= CONN_PAUSED;
    update_reading(c);
}

void conn_pause_soft(struct conn *c)
{
    if (!(c->flags & CONN_PAUSED))
        c->flags |= CONN_SOFT_PAUSED;
}

void conn_eof_closes(struct conn *c, bool on)
{
    if (on)
        c->flags |= CONN_EOF_CLOSES;
    else
        c->flags &= ~(unsigned)CONN_EOF_CLOSES;
}

void conn_resume(struct conn *c)
{
    c->flags &= ~(unsigned)(CONN_PAUSED | CONN_SOFT_PAUSED | CONN_EOF_CLOSES);
    update_reading(c);
    if (c->tls && tls_has_input(c->tls))
        mark_pending(c); /* conn_before_sleep decrypts what is left */
}

static void mark_pending(struct conn *c)
{
    if (!(c->flags & CONN_PENDING)) {
        c->flags |= CONN_PENDING;
        pz_queue_push(&pending_q, &c->pending);
    }
}

void conn_write(struct conn *c, const void *p, size_t n)
{
    if (conn_is_closing(c) || n == 0 || !conn_output_fits(c, n))
        return;
    if (c->tls)
        tls_queue(c->tls, p, n); /* encrypted in flush() */
    else
        pz_buf_append(&c->out, p, n);
    charge(c);
    mark_pending(c);
}

void conn_close(struct conn *c)
{
    if (c->flags & (CONN_CLOSE_ASAP | CONN_CLOSED))
        return;
    unadmit(c);
    c->flags |= CONN_CLOSE_ASAP;
    charge(c); /* its output is dropped */
    if (c->flags & CONN_PENDING)
        pz_queue_remove(&c->pending);
    c->flags |= CONN_PENDING; /* the pending link now sits in closing_q */
    pz_queue_push(&closing_q, &c->pending);
    update_reading(c);
}

void conn_close_after_flush(struct conn *c)
{
    if (conn_is_closing(c))
        return;
    c->flags |= CONN_CLOSE_AFTER;
    mark_pending(c);
}

static void on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    pz_buf_free(&c->out);
    tls_conn_free(c->tls);
    pz_free(c);
    n_live--;
}

static void reap(struct conn *c)
{
    if (c->ops->on_close)
        c->ops->on_close(c);
    c->proto = NULL;
    /* What the protocol did not release goes back to the budget now. */
    in_total -= c->in_held;
    c->in_held = 0;
    out_total -= c->out_charged;
    c->out_charged = 0;
    if (c->ls)
        unadmit(c);
    pz_queue_remove(&c->q);
    pz_queue_remove(&c->fq);
    if (c->flags & CONN_TURN_PAUSED) {
        c->flags &= ~(unsigned)CONN_TURN_PAUSED;
        pz_queue_remove(&c->tq);
    }
    if (c->ls)
        c->ls->n_conns--;
    if (c->ls && (c->flags & CONN_COUNTED))
        stats_conn(c->ls->name, STATS_CONN_CLOSED);
    c->flags |= CONN_CLOSED;
    /* Pending writes are cancelled (UV_ECANCELED) before on_closed. */
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = container_of(req, struct write_req, req);
    struct conn *c = w->c;
    c->inflight -= w->len;
    pz_free(w->mem);
    pz_free(w);
    if (c->flags & CONN_CLOSED)
        return; /* UV_ECANCELED after close */
    if (status < 0) {
        pz_debug("write to %s: %s", c->peer, uv_strerror(status));
        conn_close(c);
        return;
    }
    activity(c);
    charge(c);
    mark_pending(c); /* re-check backpressure, close-after, drain */
}

/* Writes what it can; returns false if the connection was closed. */
static void flush(struct conn *c)
{
    if (c->tls && tls_queued(c->tls)) {
        if (tls_encrypt(c->tls) < 0) {
            tls_fail(c, tls_error(c->tls));
            return;
        }
        tls_take_output(c->tls, &c->out);
    }
    size_t off = 0; /* bytes of c->out the kernel took */
    if (c->out.len > 0 && c->inflight == 0) {
        uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            conn_close(c);
            return;
        }
        if (n > 0) {
            off = (size_t)n;
            c->sent_now += (uint64_t)n;
            activity(c);
        }
        if (off == c->out.len) {
            pz_buf_reset(&c->out);
            pz_buf_trim(&c->out, OUT_KEEP_MAX);
            off = 0;
        }
    }
    if (c->out.len > off && c->inflight == 0) {
        /* Hand the rest to libuv: the request takes the buffer over, and
         * writes from where the kernel stopped (nothing is moved). */
        struct write_req *w = pz_malloc(sizeof *w);
        w->c = c;
        w->len = c->out.len - off;
        char *base;
        if (c->out.cap > OUT_KEEP_MAX && w->len < c->out.cap / 4) {
            /* Only the rest of a big buffer the kernel took most of:
             * what waits is counted, the request holds its buffer until
             * the reader has taken it all. */
            w->mem = pz_malloc(w->len);
            memcpy(w->mem, c->out.data + off, w->len);
            pz_buf_free(&c->out);
            base = w->mem;
        } else {
            w->mem = c->out.data;
            base = c->out.data + off;
            pz_buf_init(&c->out);
        }
        uv_buf_t b = uv_buf_init(base, (unsigned)w->len);
        int rv = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
        if (rv < 0) {
            pz_free(w->mem);
            pz_free(w);
            conn_close(c);
            return;
        }
        c->inflight += w->len;
        c->sent_queued += w->len;
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (status < 0 && !(c->flags & CONN_CLOSED))
        conn_close(c);
}

/* Close once the reply is out, without resetting it: shut our side down
 * and drain the peer's until it closes (EOF) or LINGER_MS pass, so that
 * unread request bytes never turn the close into a reset that could
 * destroy the reply in flight (as web servers do). */
#define LINGER_MS 2000

static void linger(struct conn *c)
{
    if (c->flags & CONN_LINGER)
        return;
    c->flags |= CONN_LINGER;
    c->flags &= ~(unsigned)CONN_PAUSED;
    c->last_io = uv_now(loop);
    if (c->ls)
        unadmit(c); /* the reply is out: only discarding input is left */
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) <
        0) {
        conn_close(c);
        return;
    }
    update_reading(c);
}

static void before_sleep_one(struct conn *c)
{
    if (c->tls && !(c->flags & (CONN_PAUSED | CONN_LINGER)) &&
        tls_has_input(c->tls) && !conn_is_closing(c))
        tls_input(c); /* left in the engine by a pause */
    flush(c);
    charge(c);
    if (conn_is_closing(c))
        return;
    size_t pend = conn_output_pending(c);
    if (pend > limits.hard_limit && !(c->flags & CONN_OWN_BOUNDS)) {
        pz_warn("closing %s: %zu bytes of output not read by the peer",
                c->peer, pend);
        conn_close(c);
        return;
    }
    if (pend > limits.high_water) {
        c->flags |= CONN_BACKPRESSURE;
    } else if ((c->flags & CONN_BACKPRESSURE) && pend <= limits.high_water / 2) {
        c->flags &= ~(unsigned)CONN_BACKPRESSURE;
    }
    update_reading(c);
    if (pend == 0) {
        if (c->flags & CONN_CLOSE_AFTER) {
            /* A TLS peer is told first (close_notify), then the same. */
            if (c->tls && tls_close_notify(c->tls)) {
                tls_output(c);
                flush(c);
                if (conn_is_closing(c) || conn_output_pending(c))
                    return;
            }
            linger(c);
            return;
        }
        if (c->ops->on_drain)
            c->ops->on_drain(c);
    }
}

static void reap_all(void)
{
    while (!pz_queue_empty(&closing_q)) {
        struct pz_queue *e = pz_queue_head(&closing_q);
        struct conn *c = container_of(e, struct conn, pending);
        pz_queue_remove(e);
        c->flags &= ~(unsigned)CONN_PENDING;
        reap(c);
    }
}

void conn_before_sleep(void)
{
    /* Reaping first: a protocol's on_close may write to other
     * connections (a failed forward answers its client). */
    reap_all();
    turn_no++;
    while (!pz_queue_empty(&turn_q)) {
        struct pz_queue *e = pz_queue_head(&turn_q);
        struct conn *c = container_of(e, struct conn, tq);
        pz_queue_remove(e);
        c->flags &= ~(unsigned)CONN_TURN_PAUSED;
        update_reading(c);
    }
    /* on_drain may write again, re-queueing the conn: loop until stable,
     * but never spin on a conn whose writes are still in flight. */
    for (int round = 0; round < 4 && !pz_queue_empty(&pending_q); round++) {
        struct pz_queue batch;
        pz_queue_init(&batch);
        /* Move the list aside so re-queued conns wait for the next round. */
        while (!pz_queue_empty(&pending_q)) {
            struct pz_queue *e = pz_queue_head(&pending_q);
            pz_queue_remove(e);
            pz_queue_push(&batch, e);
        }
        while (!pz_queue_empty(&batch)) {
            struct pz_queue *e = pz_queue_head(&batch);
            struct conn *c = container_of(e, struct conn, pending);
            pz_queue_remove(e);
            c->flags &= ~(unsigned)CONN_PENDING;
            before_sleep_one(c);
        }
    }
    reap_all();
}

bool conn_has_work(void)
{
    return !pz_queue_empty(&pending_q) || !pz_queue_empty(&closing_q);
}

/* Fire c's deadline if it passed. True if it did. */
static bool cron_deadline(struct conn *c, uint64_t now)
{
    if (c->tls && tls_deadline(c->tls) && now >= tls_deadline(c->tls) &&
        !conn_is_closing(c)) {
        pz_log(tls_level(), "%s: TLS with %s: no handshake within %llu ms: "
               "closing", side(c), c->peer,
               (unsigned long long)(now - c->opened));
        conn_close(c);
        return true;
    }
    if (c->deadline == 0 || now < c->deadline || conn_is_closing(c))
        return false;
    c->deadline = 0;
    if (c->ops->on_deadline) {
        c->ops->on_deadline(c);
    } else {
        pz_debug("closing %s: deadline passed", c->peer);
        conn_close(c);
    }
    return true;
}

static void cron_list(struct pz_queue *head, uint64_t now)
{
    struct pz_queue *e, *next;
    /* on_deadline may move c (conn_touch) within the list, never free it:
     * go on from the element that followed it. */
    for (e = head->next; e != head; e = next) {
        struct conn *c = container_of(e, struct conn, q);
        next = e->next;
        if ((c->flags & CONN_LINGER) && !conn_is_closing(c) &&
            now - c->last_io > LINGER_MS) {
            conn_close(c);
            continue;
        }
        if (cron_deadline(c, now))
            continue;
        uint64_t stalled = out_stalled(c, now);
        if (c->send_timeout && stalled > c->send_timeout &&
            !conn_is_closing(c)) {
            pz_info("closing %s: %zu bytes of output not read for %llu ms",
                    c->peer, conn_output_pending(c) + c->out_held,
                    (unsigned long long)stalled);
            conn_close(c);
            continue;
        }
        if (c->busy > 0 || conn_is_closing(c) || conn_output_pending(c) ||
            c->idle_timeout == 0)
            continue;
        if (now - c->last_io > c->idle_timeout) {
            pz_debug("closing idle connection from %s", c->peer);
            conn_close(c);
        }
    }
}

void conn_cron(void)
{
    /* Only accepted connections idle out; outbound ones are ours, but
     * their protocol may give them deadlines. */
    uint64_t now = uv_now(loop);
    struct pz_queue *e, *next;
    PZ_QUEUE_FOREACH(e, &listeners)
    cron_list(&container_of(e, struct conn_listener, lq)->conns, now);
    for (e = outbound_q.next; e != &outbound_q; e = next) {
        next = e->next;
        cron_deadline(container_of(e, struct conn, q), now);
    }
}

/* The text of address ss ("?:0" when rv, the lookup's result, failed). */
static void format_addr(const struct sockaddr_storage *ss, int rv, char *out,
                        size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (rv == 0 && ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (rv == 0 && ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    snprintf(out, len, "%s:%d", ip, port);
}

static void format_peer(uv_tcp_t *t, char *out, size_t len, bool local)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    int rv = local ? uv_tcp_getsockname(t, (struct sockaddr *)&ss, &sl)
                   : uv_tcp_getpeername(t, (struct sockaddr *)&ss, &sl);
    format_addr(&ss, rv, out, len);
}

static bool addr_is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a =
            &((const struct sockaddr_in6 *)ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

static struct conn *conn_alloc(const struct conn_ops *ops)
{
    struct conn *c = pz_calloc(1, sizeof *c);
    c->ops = ops;
    pz_buf_init(&c->out);
    pz_queue_init(&c->q);
    pz_queue_init(&c->pending);
    pz_queue_init(&c->fq);
    c->tcp.data = c;
    c->last_io = uv_now(loop);
    c->opened = c->last_io;
    c->stall_since = c->last_io;
    c->stall_sent = UINT64_MAX; /* no look yet */
    c->drain_rate = UINT64_MAX;
    n_live++;
    return c;
}

/* Make room on ls for the new connection self: evict the connection
 * that has been open longest without completing a request, if it is
 * CONN_EVICT_FRESH_MS old (a slow or silent client: trickling bytes
 * cannot keep new clients out, and a new client, which sends its request
 * as it connects, is only at risk once max_conns connections arrived after
 * it); else the least recently active connection with nothing in flight
 * (no request, no partial input, no output), if it has been idle for
 * CONN_EVICT_IDLE_MS (a kept-alive client reconnects when it needs to, as
 * web servers reuse idle keep-alive connections when they run out), or
 * whose output its client has left unread as long, whatever else it
 * holds (answers pipelined behind it, a request in flight).
 * Returns false when no connection qualifies: self is refused. */
static bool evict_one(struct conn_listener *ls, struct conn *self, uint64_t now)
{
    struct conn *victim = NULL;
    bool stalled = false;
    struct pz_queue *e;
    int n = 0;
    for (e = ls->fresh.next; e != &ls->fresh && n < EVICT_SCAN;
         e = e->next, n++) {
        struct conn *c = container_of(e, struct conn, fq);
        if (c == self || (c->flags & CONN_CLOSE_AFTER))
            continue;
        if (now - c->opened >= CONN_EVICT_FRESH_MS)
            victim = c;
        break; /* oldest first: the next ones are younger */
    }
    n = 0;
    for (e = ls->conns.next;
         victim == NULL && e != &ls->conns && n < EVICT_SCAN;
         e = e->next, n++) {
        struct conn *c = container_of(e, struct conn, q);
        if (c == self || !(c->flags & CONN_ADMITTED))
            continue;
        /* Output its client has left unread that long: whatever it was
         * doing, it waits for that client (last_io is as old). */
        stalled = out_stalled(c, now) >= CONN_EVICT_IDLE_MS;
        if (!stalled && ((c->flags & CONN_CLOSE_AFTER) || c->busy > 0 ||
                         c->in_held || c->deadline || conn_output_pending(c)))
            continue;
        if (now - c->last_io < CONN_EVICT_IDLE_MS)
            break; /* least recent first: the next ones are more recent */
        victim = c;
    }
    if (victim == NULL)
        return false;
    pz_debug("%s: max-clients (%zu) reached: evicting %s (%s) for %s", ls->name,
             ls->max_conns, victim->peer,
             stalled                         ? "output not read"
             : (victim->flags & CONN_SERVED) ? "idle"
                                             : "no request completed",
             self->peer);
    ls->evictions++;
    stats_conn(ls->name, STATS_CONN_EVICTED);
    unadmit(victim);
    if (victim->ops->on_evict) {
        victim->ops->on_evict(victim);
        flush(victim); /* what the socket takes now; the rest is dropped */
    }
    conn_close(victim);
    return true;
}

static void on_connection(uv_stream_t *server, int status)
{
    struct conn_listener *ls = server->data;
    if (status < 0) {
        pz_warn("%s: accept: %s", ls->name, uv_strerror(status));
        return;
    }
    struct conn *c = conn_alloc(ls->ops);
    uv_tcp_init(loop, &c->tcp);
    c->ls = ls;
    /* The limits in force now: a reload that lowers them does not cut
     * off an answer being sent or a connection already idle. */
    c->send_timeout = ls->send_timeout;
    c->idle_timeout = limits.idle_timeout;
    pz_queue_push(&ls->conns, &c->q);
    ls->n_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->ops = &no_ops;
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    /* One lookup gives the peer's name and decides protected mode: a
     * client that reset its connection before we accepted it has no
     * address any more, and is neither logged nor counted as refused. */
    struct sockaddr_storage ss = {0};
    int sl = sizeof ss;
    int prv = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl);
    format_addr(&ss, prv, c->peer, sizeof c->peer);
    if (prv != 0) {
        c->ops = &no_ops;
        conn_close(c);
        return;
    }
    if (ls->loopback_only && !addr_is_loopback(&ss)) {
        static struct pz_ratelimit rl;
        unsigned dropped;
        if (pz_ratelimit(&rl, uv_now(loop), 60000, 10, &dropped))
            pz_warn("%s: refusing %s: protected mode serves loopback "
                    "clients only (%u more refused before)",
                    ls->name, c->peer, dropped);
        c->ops = &no_ops;
        if (ls->refusal) {
            pz_buf_append(&c->out, ls->refusal, ls->refusal_len);
            mark_pending(c);
            conn_close_after_flush(c);
        } else {
            conn_close(c);
        }
        return;
    }
    if (ls->n_admitted >= ls->max_conns &&
        !(ls->evict && evict_one(ls, c, uv_now(loop)))) {
        pz_warn("%s: refusing %s: max-clients (%zu) reached", ls->name,
                c->peer, ls->max_conns);
        c->ops = &no_ops; /* no protocol state to release */
        stats_conn(ls->name, STATS_CONN_REFUSED);
        if (ls->on_refuse && !tls_slot_on(ls->tls)) {
            ls->on_refuse(c);
            conn_close_after_flush(c);
        } else {
            conn_close(c);
        }
        return;
    }
    if (tls_slot_on(ls->tls)) {
        c->tls = tls_conn_new(ls->tls, NULL);
        if (c->tls == NULL) {
            pz_warn("%s: refusing %s: out of memory for TLS", ls->name,
                    c->peer);
            c->ops = &no_ops;
            conn_close(c);
            return;
        }
        if (ls->handshake_ms)
            tls_set_deadline(c->tls, uv_now(loop) + ls->handshake_ms);
    }
    c->flags |= CONN_ADMITTED | CONN_COUNTED;
    stats_conn(ls->name, STATS_CONN_ACCEPTED);
    ls->n_admitted++;
    pz_queue_push(&ls->fresh, &c->fq);
    if (c->ops->on_open && c->ops->on_open(c) < 0) {
        c->ops = &no_ops;
        conn_close(c);
        return;
    }
    update_reading(c);
}

int conn_fit_fds(size_t want, size_t ports, size_t reserve, size_t *per,
                 char *err, size_t errlen)
{
    static bool raised;
    struct rlimit rl;
    *per = want;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    uint64_t need = (uint64_t)want * ports + reserve;
    rlim_t old = rl.rlim_cur;
    if (rl.rlim_cur < need && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || need < rl.rlim_max
                          ? (rlim_t)need
                          : rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            rl.rlim_cur = old; /* fs.nr_open below the hard limit */
        else if (!raised)
            pz_info("open-files limit raised from %llu to %llu",
                    (unsigned long long)old, (unsigned long long)rl.rlim_cur);
        raised = raised || rl.rlim_cur != old;
    }
    if (rl.rlim_cur >= need)
        return 0;
    uint64_t fit = rl.rlim_cur > reserve ? (rl.rlim_cur - reserve) / ports : 0;
    if (fit < CONN_MIN_CLIENTS) {
        snprintf(err, errlen,
                 "the open-files limit (%llu, hard limit %llu) leaves room "
                 "for %llu client connections per port, fewer than %d: "
                 "raise it (ulimit -n, LimitNOFILE= in a systemd unit) to "
                 "at least %llu",
                 (unsigned long long)rl.rlim_cur,
                 (unsigned long long)rl.rlim_max, (unsigned long long)fit,
                 CONN_MIN_CLIENTS,
                 (unsigned long long)(CONN_MIN_CLIENTS * ports + reserve));
        return PZ_ECONFIG;
    }
    *per = (size_t)fit;
    pz_warn("max-clients %zu lowered to %zu: the open-files limit is %llu "
            "(hard limit %llu) and %zu descriptors are kept for the process "
            "itself; raise it (ulimit -n, LimitNOFILE= in a systemd unit) "
            "to at least %llu to serve %zu clients per port",
            want, *per, (unsigned long long)rl.rlim_cur,
            (unsigned long long)rl.rlim_max, reserve, (unsigned long long)need,
            want);
    return 0;
}

int conn_listen(struct conn_listener *ls, const char *addr,
                const struct conn_ops *ops, const char *name, size_t max_conns,
                char *err, size_t errlen)
{
    char host[256];
    int port, rv;
    struct sockaddr_storage ss;
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "%s: bad address '%s'", name, addr);
        return PZ_EINVAL;
    }
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        snprintf(err, errlen, "%s: '%s' is not an IP address", name, host);
        return PZ_EINVAL;
    }
    memset(ls, 0, sizeof *ls);
    pz_queue_init(&ls->lq);
    ls->ops = ops;
    ls->name = name;
    ls->max_conns = max_conns;
    pz_queue_init(&ls->conns);
    pz_queue_init(&ls->fresh);
    uv_tcp_init(loop, &ls->tcp);
    ls->tcp.data = ls;
    ls->listening = true;
    rv = uv_tcp_bind(&ls->tcp, (struct sockaddr *)&ss, 0);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&ls->tcp, 511, on_connection);
    if (rv < 0) {
        snprintf(err, errlen, "%s: cannot listen on %s: %s", name, addr,
                 uv_strerror(rv));
        uv_close((uv_handle_t *)&ls->tcp, NULL);
        ls->listening = false;
        return rv;
    }
    pz_queue_push(&listeners, &ls->lq);
    return 0;
}

void conn_listener_stop(struct conn_listener *ls, uv_close_cb cb)
{
    if (!ls->listening)
        return;
    ls->listening = false;
    pz_queue_remove(&ls->lq);
    uv_close((uv_handle_t *)&ls->tcp, cb);
}

void conn_listener_close_all(struct conn_listener *ls)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &ls->conns)
    conn_close(container_of(e, struct conn, q));
}

void conn_close_outbound(void)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &outbound_q)
    conn_close(container_of(e, struct conn, q));
}

static void on_connect(uv_connect_t *req, int status)
{
    struct conn *c = container_of(req, struct conn, connect_req);
    if (c->flags & CONN_CLOSED)
        return;
    if (status == 0 && !conn_is_closing(c)) {
        uv_tcp_nodelay(&c->tcp, 1);
        format_peer(&c->tcp, c->peer, sizeof c->peer, false);
        c->last_io = uv_now(loop);
        update_reading(c);
        if (c->tls) {
            if (tls_start(c->tls) < 0)
                tls_fail(c, tls_error(c->tls));
            else
                tls_output(c); /* the ClientHello */
        }
    }
    if (c->connect_cb)
        c->connect_cb(c, conn_is_closing(c) && status == 0 ? UV_ECANCELED
                                                           : status);
    if (status < 0)
        conn_close(c);
    else if (!conn_is_closing(c) && conn_output_pending(c))
        mark_pending(c);
}

int conn_start_tls(struct conn *c, const struct tls_slot *s, const char *host,
                   uint64_t handshake_ms)
{
    c->tls = tls_conn_new(s, host);
    if (c->tls == NULL) {
        pz_warn("outbound: TLS to %s: out of memory", c->peer);
        conn_close(c);
        return PZ_ENOMEM;
    }
    if (handshake_ms)
        tls_set_deadline(c->tls, uv_now(loop) + handshake_ms);
    return 0;
}

int conn_start_tls_addr(struct conn *c, const struct tls_slot *s,
                        const char *addr, uint64_t handshake_ms)
{
    char host[256];
    tls_addr_host(addr, host, sizeof host);
    return conn_start_tls(c, s, host, handshake_ms);
}

struct conn *conn_connect(const char *addr, const struct conn_ops *ops,
                          void *proto,
                          void (*cb)(struct conn *c, int status))
{
    return conn_connect_from(addr, NULL, ops, proto, cb);
}

struct conn *conn_connect_from(const char *addr, const char *source,
                               const struct conn_ops *ops, void *proto,
                               void (*cb)(struct conn *c, int status))
{
    char host[256];
    int port;
    struct sockaddr_storage ss;
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0)
        return NULL;
    if (strcmp(host, "localhost") == 0 || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return NULL;
    struct sockaddr_storage src;
    if (source != NULL && source[0] != '\0' &&
        uv_ip4_addr(source, 0, (struct sockaddr_in *)&src) != 0 &&
        uv_ip6_addr(source, 0, (struct sockaddr_in6 *)&src) != 0)
        return NULL;
    struct conn *c = conn_alloc(ops);
    uv_tcp_init(loop, &c->tcp);
    c->proto = proto;
    c->connect_cb = cb;
    c->flags |= CONN_OUTBOUND;
    snprintf(c->peer, sizeof c->peer, "%s", addr);
    pz_queue_push(&outbound_q, &c->q);
    if (source != NULL && source[0] != '\0' &&
        uv_tcp_bind(&c->tcp, (struct sockaddr *)&src, 0) < 0) {
        c->connect_cb = NULL;
        conn_close(c);
        return NULL;
    }
    int rv = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&ss,
                            on_connect);
    if (rv < 0) {
        c->connect_cb = NULL;
        conn_close(c);
        return NULL;
    }
    return c;
}
