/* httpc.c - see httpc.h.
 *
 * Happy path: a request is formatted once (kept for a resend; a borrowed
 * body is not copied), queued and written to the connection as it takes
 * them (conn.c buffers what is written while the connection is still
 * being made; on_drain writes more); answers are parsed with llhttp and
 * each one completes the oldest request. One timer is armed for the
 * oldest request's deadline: requests share one timeout and stay in the
 * order they were made, so the oldest always expires first.
 *
 * Failure modes: a failed connect fails every request waiting for it with
 * the connect error. A connection lost later (reset, EOF, the server's
 * idle timeout racing a new request) is dialled again and the unanswered
 * requests are written once more, up to max_attempts; past it they fail
 * with PZ_EIO. A request past its deadline fails with PZ_ETIMEDOUT, and if
 * it was waiting for its answer the connection is dropped (the server is
 * stuck or slow) and the others move to a new one (or fail with
 * PZ_ETIMEDOUT past max_attempts). A malformed answer fails the oldest
 * request with PZ_EPROTO and drops the connection the same way.
 *
 * The client's memory is freed only from its timer's close callback, so a
 * callback that frees the client while llhttp is still running on it
 * leaves the parser valid until it returns. */
#include "httpc.h"

#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "log.h"
#include "tls.h"
#include "pz.h"
#include "queue.h"

#define KEEP_BODY (64u * 1024) /* body buffer kept between answers */

struct hreq {
    struct pz_queue q;  /* in c->reqs, or a local list of finished ones */
    uint64_t id;        /* returned to the caller */
    struct pz_buf wire; /* the request bytes, kept for a resend (only
                           its head when the body is borrowed) */
    const char *body;   /* the borrowed body, or NULL */
    size_t blen;        /* its length */
    httpc_cb cb;        /* NULL once cancelled */
    void *data;         /* cb's argument */
    uint64_t deadline;  /* uv_now() past which it fails; 0: none */
    bool written;       /* written on c->c */
    int attempts;       /* connections it was written on */
    int err;            /* finished: the error to report */
};

struct httpc {
    uv_loop_t *loop;            /* borrowed */
    char addr[320];             /* host:port to dial */
    char name[384];             /* log prefix */
    struct httpc_opts o;        /* copy; o.log_name points to name */
    struct conn *c;             /* NULL when not connected */
    llhttp_t parser;            /* answers on c */
    llhttp_settings_t settings; /* its callbacks */
    struct pz_buf field;        /* header name being read */
    struct pz_buf value;        /* header value being read */
    char ctype[128];            /* Content-Type of the answer being read */
    char allow[64];             /* its Allow */
    char revision[24];          /* its X-Pyazdb-Revision */
    bool nothing_written;       /* its X-Pyazdb-Nothing-Written is 1 */
    struct pz_buf body;         /* its body */
    uint64_t announced;         /* its Content-Length, or UINT64_MAX */
    bool no_room;               /* o.hold refused its body: dropped */
    size_t granted;             /* what o.hold granted this answer */
    size_t head_bytes;          /* its status line and headers so far */
    const char *why;            /* set by a callback that stops llhttp */
    char whybuf[64];            /* room for a why that names a limit */
    struct pz_queue reqs;       /* struct hreq, oldest first */
    size_t n_live;              /* requests with a callback due */
    uint64_t next_id;           /* last id handed out */
    uv_timer_t timer;           /* the oldest deadline, or a dial error */
    int dial_err;               /* conn_connect failed at once */
    bool freeing;               /* httpc_free ran */
};

static void warn(struct httpc *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void warn(struct httpc *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->o.warn)
        c->o.warn(c->o.warn_data, msg);
    else
        pz_warn("%s: %s", c->name, msg);
}

/* "16 KiB", "4 MiB" or "100 bytes": a limit in a reason. */
static const char *limit_reason(struct httpc *c, const char *what, size_t n)
{
    if (n >= (1u << 20) && n % (1u << 20) == 0)
        snprintf(c->whybuf, sizeof c->whybuf, "%s over %zu MiB", what, n >> 20);
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(c->whybuf, sizeof c->whybuf, "%s over %zu KiB", what, n >> 10);
    else
        snprintf(c->whybuf, sizeof c->whybuf, "%s over %zu bytes", what, n);
    return c->whybuf;
}

static void free_req(struct hreq *r)
{
    pz_buf_free(&r->wire);
    pz_free(r);
}

static struct hreq *head(struct httpc *c)
{
    if (pz_queue_empty(&c->reqs))
        return NULL;
    return container_of(pz_queue_head(&c->reqs), struct hreq, q);
}

/* Unlink r into the finished list with err, or drop it if cancelled. */
static void finish_req(struct httpc *c, struct hreq *r, int err,
                       struct pz_queue *done)
{
    pz_queue_remove(&r->q);
    if (r->cb == NULL) {
        free_req(r);
        return;
    }
    c->n_live--;
    r->err = err;
    pz_queue_push(done, &r->q);
}

/* Run the callbacks of finished requests (detached from c, so callbacks
 * may do anything, httpc_free included). */
static void run_done(struct pz_queue *done)
{
    while (!pz_queue_empty(done)) {
        struct hreq *r = container_of(pz_queue_head(done), struct hreq, q);
        pz_queue_remove(&r->q);
        struct httpc_result res = {.err = r->err,
                                   .content_type = "",
                                   .allow = "",
                                   .revision = "",
                                   .body = ""};
        r->cb(&res, r->data);
        free_req(r);
    }
}

static void on_timer(uv_timer_t *t);

static void arm(struct httpc *c)
{
    if (c->freeing)
        return;
    struct hreq *r = head(c);
    if (c->dial_err) {
        uv_timer_start(&c->timer, on_timer, 0, 0);
    } else if (r == NULL || r->deadline == 0) {
        uv_timer_stop(&c->timer);
    } else {
        uint64_t now = uv_now(c->loop);
        uv_timer_start(&c->timer, on_timer,
                       r->deadline > now ? r->deadline - now : 0, 0);
    }
}

static const struct conn_ops client_ops;

static void on_connect(struct conn *conn, int status);

/* Empty the body buffer for the next answer; one that grew past
 * KEEP_BODY goes (an answer cut short by a broken connection or a timeout
 * left it at its size), and nothing is granted for it any more. */
static void body_trim(struct httpc *c)
{
    pz_buf_trim(&c->body, KEEP_BODY);
    c->granted = 0;
}

/* Write every request not yet on the connection, dialling if needed. */
static void send_pending(struct httpc *c)
{
    struct pz_queue *q;
    bool any = false;
    PZ_QUEUE_FOREACH(q, &c->reqs)
    any = any || !container_of(q, struct hreq, q)->written;
    if (!any || c->dial_err || c->freeing)
        return;
    if (c->c && conn_is_closing(c->c))
        return; /* on_close comes, then a new connection takes them */
    if (c->c == NULL) {
        llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
        body_trim(c);
        c->why = NULL;
        c->c = conn_connect(c->addr, &client_ops, c, on_connect);
        if (c->c == NULL) {
            c->dial_err = PZ_EINVAL; /* reported from the timer */
            return;
        }
        if (c->o.count_output)
            conn_count_output(c->c);
        if (tls_slot_on(c->o.tls) &&
            conn_start_tls_addr(c->c, c->o.tls, c->addr,
                                c->o.timeout_ms) < 0)
            return; /* closed: on_close fails what waits */
    }
    PZ_QUEUE_FOREACH(q, &c->reqs)
    {
        struct hreq *r = container_of(q, struct hreq, q);
        if (r->written)
            continue;
        if (conn_output_pending(c->c) >= HTTPC_WRITE_AHEAD)
            break; /* the rest once it drains (on_drain) */
        conn_write(c->c, r->wire.data, r->wire.len);
        if (r->body)
            conn_write(c->c, r->body, r->blen);
        r->written = true;
        r->attempts++;
    }
}

/* Drop the connection. The oldest request fails with head_err if it was
 * waiting on it (head_err 0: it goes with the others); the others written
 * on it go out again on a new one, or fail with err once sent
 * max_attempts times. */
static void drop_conn(struct httpc *c, int head_err, int err,
                      struct pz_queue *done)
{
    if (c->c) {
        c->c->proto = NULL;
        conn_close(c->c);
        c->c = NULL;
    }
    body_trim(c); /* of an answer cut short: nobody counts it now */
    struct hreq *h = head(c);
    if (head_err && h && h->written)
        finish_req(c, h, head_err, done);
    struct pz_queue *q = pz_queue_head(&c->reqs);
    while (q != &c->reqs) {
        struct hreq *r = container_of(q, struct hreq, q);
        q = q->next;
        if (!r->written)
            continue;
        r->written = false;
        if (r->cb == NULL || r->attempts >= c->o.max_attempts)
            finish_req(c, r, err, done);
    }
    send_pending(c);
}

static void on_connect(struct conn *conn, int status)
{
    struct httpc *c = conn->proto;
    if (c == NULL || status == 0)
        return;
    if (c->o.quiet_dial)
        pz_debug("%s: cannot connect: %s", c->name, uv_strerror(status));
    else
        warn(c, "cannot connect: %s", uv_strerror(status));
    /* conn.c closes conn right after this. */
    conn->proto = NULL;
    c->c = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    /* Those not written yet waited for this connection too. */
    while (head(c))
        finish_req(c, head(c), status, &done);
    arm(c);
    run_done(&done);
}

static void on_close(struct conn *conn)
{
    struct httpc *c = conn->proto;
    if (c == NULL)
        return;
    pz_debug("%s: connection closed", c->name);
    conn->proto = NULL;
    c->c = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    drop_conn(c, 0, PZ_EIO, &done);
    arm(c);
    run_done(&done);
}

static void on_data(struct conn *conn, const char *data, size_t len)
{
    struct httpc *c = conn->proto;
    if (c == NULL)
        return;
    llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
    if (c->freeing || conn->proto != c || e == HPE_OK)
        return;
    /* Reasons are ours or llhttp's: never text from the answer. */
    warn(c, "bad response (%s)",
         c->why ? c->why : llhttp_get_error_reason(&c->parser));
    c->why = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    drop_conn(c, PZ_EPROTO, PZ_EPROTO, &done);
    arm(c);
    run_done(&done);
}

/* The connection took what was written: write the requests that wait. */
static void on_drain(struct conn *conn)
{
    struct httpc *c = conn->proto;
    if (c != NULL)
        send_pending(c);
}

static const struct conn_ops client_ops = {
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
};

/* --- reading answers ------------------------------------------------------ */

static struct httpc *client_of(llhttp_t *p)
{
    return container_of(p, struct httpc, parser);
}

static int on_message_begin(llhttp_t *p)
{
    struct httpc *c = client_of(p);
    c->head_bytes = 0;
    c->ctype[0] = c->allow[0] = c->revision[0] = '\0';
    c->nothing_written = false;
    c->announced = UINT64_MAX;
    c->no_room = false;
    body_trim(c);
    pz_buf_reset(&c->field);
    pz_buf_reset(&c->value);
    return 0;
}

/* Count n more bytes of status line and headers; -1 past the limit. */
static int count_head(struct httpc *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes <= c->o.max_head)
        return 0;
    c->why = limit_reason(c, "response headers", c->o.max_head);
    return -1;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    PZ_UNUSED(at);
    return count_head(client_of(p), n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct httpc *c = client_of(p);
    if (count_head(c, n))
        return -1;
    pz_buf_append(&c->field, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct httpc *c = client_of(p);
    if (count_head(c, n))
        return -1;
    pz_buf_append(&c->value, at, n);
    return 0;
}

/* Keep the headers callers want (Content-Type, Allow, PyazDB's own). */
static int on_header_value_complete(llhttp_t *p)
{
    struct httpc *c = client_of(p);
    const char *v = c->value.data ? c->value.data : "";
    if (c->field.len == 12 && strcasecmp(c->field.data, "content-type") == 0)
        snprintf(c->ctype, sizeof c->ctype, "%s", v);
    else if (c->field.len == 5 && strcasecmp(c->field.data, "allow") == 0)
        snprintf(c->allow, sizeof c->allow, "%s", v);
    else if (c->field.len == 17 &&
             strcasecmp(c->field.data, "x-pyazdb-revision") == 0)
        snprintf(c->revision, sizeof c->revision, "%s", v);
    else if (c->field.len == 24 &&
             strcasecmp(c->field.data, "x-pyazdb-nothing-written") == 0)
        c->nothing_written = strcmp(v, "1") == 0;
    pz_buf_reset(&c->field);
    pz_buf_reset(&c->value);
    return count_head(c, 4); /* ": " and CRLF */
}

/* Room in c->body for n more bytes of the answer to r (the oldest
 * request): false when they are to be dropped, the answer's request
 * cancelled or o.hold refusing the room (c->no_room; what arrived of the
 * body goes at once). With o.hold the buffer grows to exactly what was
 * granted: the whole announced Content-Length at once, else doubling. */
static bool body_room(struct httpc *c, struct hreq *r, size_t n)
{
    if (c->no_room)
        return false;
    if (r && r->written && r->cb == NULL) {
        pz_buf_free(&c->body); /* cancelled: nobody wants it */
        return false;
    }
    size_t want = c->body.len + n + 1; /* and the NUL */
    bool asks = c->o.hold && r && r->written;
    /* What the buffer holds is granted before the answer uses it, the
     * capacity an earlier answer left in it included. */
    if (want <= c->body.cap && (!asks || c->granted >= c->body.cap))
        return true;
    if (!asks) {
        pz_buf_reserve(&c->body, n); /* no request: it fails at the end */
        return true;
    }
    size_t cap = c->body.cap ? c->body.cap : 64;
    if (c->announced != UINT64_MAX && c->announced + 1 >= want)
        cap = (size_t)c->announced + 1;
    while (cap < want)
        cap *= 2;
    if (cap < c->body.cap)
        cap = c->body.cap; /* what it holds already */
    if (!c->o.hold(r->data, cap)) {
        c->no_room = true;
        pz_buf_free(&c->body);
        return false;
    }
    c->granted = cap;
    if (cap > c->body.cap) {
        c->body.data = pz_realloc(c->body.data, cap);
        c->body.cap = cap;
        c->body.data[c->body.len] = '\0';
    }
    return true;
}

static int on_headers_complete(llhttp_t *p)
{
    struct httpc *c = client_of(p);
    int status = llhttp_get_status_code(p);
    if (status < 100 || status > 599 || status == 101) {
        c->why = "a status never asked for";
        return -1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->o.max_body) {
        c->why = limit_reason(c, "Content-Length", c->o.max_body);
        return -1;
    }
    /* llhttp counts content_length down as the body arrives. */
    if ((p->flags & F_CONTENT_LENGTH) && status > 199) {
        c->announced = p->content_length;
        if (c->announced > 0)
            body_room(c, head(c), (size_t)c->announced); /* asked once */
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct httpc *c = client_of(p);
    if (c->body.len + n > c->o.max_body) {
        c->why = limit_reason(c, "response body", c->o.max_body);
        return -1;
    }
    if (body_room(c, head(c), n))
        pz_buf_append(&c->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct httpc *c = client_of(p);
    struct hreq *r = head(c);
    int status = llhttp_get_status_code(p);
    if (c->freeing || r == NULL || !r->written) {
        c->why = "an answer to no request";
        return -1;
    }
    if (status <= 199)
        return 0; /* interim: the answer follows */
    pz_queue_remove(&r->q);
    arm(c);
    if (r->cb) {
        struct httpc_result res = {
            .err = c->no_room ? PZ_ENOSPC : 0,
            .status = status,
            .content_type = c->ctype,
            .allow = c->allow,
            .revision = c->revision,
            .nothing_written = c->nothing_written,
            .body = c->body.data && !c->no_room ? c->body.data : "",
            .blen = c->no_room ? 0 : c->body.len,
            .buf = c->no_room ? NULL : &c->body,
        };
        c->n_live--;
        r->cb(&res, r->data);
    }
    free_req(r);
    body_trim(c);
    return c->freeing ? -1 : 0; /* freed by the callback: stop parsing */
}

static void on_timer(uv_timer_t *t)
{
    struct httpc *c = t->data;
    struct pz_queue done;
    pz_queue_init(&done);
    if (c->dial_err) {
        int err = c->dial_err;
        c->dial_err = 0;
        pz_debug("%s: cannot dial this address", c->name);
        while (head(c))
            finish_req(c, head(c), err, &done);
    }
    uint64_t now = uv_now(c->loop);
    bool stuck = false;
    struct hreq *r;
    while ((r = head(c)) != NULL && r->deadline && r->deadline <= now) {
        stuck = stuck || r->written;
        finish_req(c, r, PZ_ETIMEDOUT, &done);
    }
    if (stuck && c->c) {
        warn(c, "no answer in %llu ms", (unsigned long long)c->o.timeout_ms);
        drop_conn(c, 0, PZ_ETIMEDOUT, &done);
    }
    arm(c);
    run_done(&done);
}

/* --- the API -------------------------------------------------------------- */

struct httpc *httpc_new(uv_loop_t *loop, const char *addr,
                        const struct httpc_opts *opts)
{
    struct httpc *c = pz_calloc(1, sizeof *c);
    c->loop = loop;
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    snprintf(c->name, sizeof c->name, "%s",
             opts->log_name ? opts->log_name : addr);
    c->o = *opts;
    c->o.log_name = c->name;
    if (c->o.max_attempts < 1)
        c->o.max_attempts = 1;
    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = on_message_begin;
    c->settings.on_status = on_status;
    c->settings.on_header_field = on_header_field;
    c->settings.on_header_value = on_header_value;
    c->settings.on_header_value_complete = on_header_value_complete;
    c->settings.on_headers_complete = on_headers_complete;
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_message_complete;
    pz_buf_init(&c->field);
    pz_buf_init(&c->value);
    pz_buf_init(&c->body);
    pz_queue_init(&c->reqs);
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    return c;
}

uint64_t httpc_request(struct httpc *c, const char *method, const char *target,
                       const char *headers, const void *body, size_t blen,
                       httpc_cb cb, void *data)
{
    pz_assert(cb != NULL);
    if (c->freeing)
        return 0;
    struct hreq *r = pz_calloc(1, sizeof *r);
    r->id = ++c->next_id;
    r->cb = cb;
    r->data = data;
    if (c->o.timeout_ms)
        r->deadline = uv_now(c->loop) + c->o.timeout_ms;
    pz_buf_init(&r->wire);
    pz_buf_appendf(&r->wire, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target,
                   c->addr);
    if (headers)
        pz_buf_append(&r->wire, headers, strlen(headers));
    if (body)
        pz_buf_appendf(&r->wire, "Content-Length: %zu\r\n", blen);
    pz_buf_append(&r->wire, "\r\n", 2);
    if (body && c->o.borrow_body) {
        r->body = body;
        r->blen = blen;
    } else if (body) {
        pz_buf_append(&r->wire, body, blen);
    }
    pz_queue_push(&c->reqs, &r->q);
    c->n_live++;
    send_pending(c);
    arm(c);
    return r->id;
}

bool httpc_cancel(struct httpc *c, uint64_t id, void **data)
{
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &c->reqs)
    {
        struct hreq *r = container_of(q, struct hreq, q);
        if (r->id != id || r->cb == NULL)
            continue;
        if (data)
            *data = r->data;
        r->cb = NULL;
        c->n_live--;
        if (r == head(c) && r->written)
            pz_buf_free(&c->body); /* its answer's, if it was arriving */
        if (!r->written) {
            pz_queue_remove(&r->q);
            free_req(r);
            arm(c);
        }
        return true;
    }
    return false;
}

size_t httpc_pending(const struct httpc *c)
{
    return c->n_live;
}

const char *httpc_addr(const struct httpc *c)
{
    return c->addr;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct httpc *c = h->data;
    pz_buf_free(&c->field);
    pz_buf_free(&c->value);
    pz_buf_free(&c->body);
    pz_free(c);
}

void httpc_free(struct httpc *c)
{
    if (c == NULL || c->freeing)
        return;
    c->freeing = true;
    if (c->c) {
        c->c->proto = NULL;
        conn_close(c->c);
        c->c = NULL;
    }
    struct pz_queue done;
    pz_queue_init(&done);
    while (head(c))
        finish_req(c, head(c), PZ_ECANCELED, &done);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    run_done(&done);
}
