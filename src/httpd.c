/* httpd.c - see httpd.h.
 *
 * One struct httpd_conn per connection (inside the protocol's own struct,
 * conn_size bytes), created in on_open and freed in on_close. The request
 * loop (process) feeds the buffered bytes to the parser until a request
 * is complete, hands it out and goes on only once it is answered; what a
 * connection holds for requests not yet complete (unparsed input, the
 * parser's state) is charged to the partial-input budget after every
 * step, and the deadline follows the request's phase. */
#include "httpd.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "stats.h"

enum {
    DEADLINE_NONE = 0,    /* no request arriving */
    DEADLINE_HEADERS = 1, /* header_timeout_ms from the first byte */
    DEADLINE_BODY = 2,    /* body_timeout_ms from the end of headers */
};

/* Input buffers larger than this are freed once empty. */
#define IN_KEEP (4 * 1024)
#define TEXT_PLAIN "text/plain; charset=utf-8"

const char *httpd_status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}

/* The request's name in the metrics: the handler's, or "invalid" for one
 * that never reached it (malformed, too slow). */
static const char *request_route(const struct httpd_conn *hc)
{
    if (!hc->answering)
        return "invalid";
    return hc->route ? hc->route : "other";
}

/* A reply's head, assembled on the stack and written with one
 * conn_write (what does not fit goes out as it comes). */
struct head {
    struct conn *c; /* where it goes */
    size_t n;       /* bytes in b */
    char b[256];    /* the head so far */
};

static void head_put(struct head *h, const char *s, size_t n)
{
    if (n > sizeof h->b - h->n) {
        conn_write(h->c, h->b, h->n);
        h->n = 0;
        if (n > sizeof h->b) {
            conn_write(h->c, s, n);
            return;
        }
    }
    memcpy(h->b + h->n, s, n);
    h->n += n;
}

static void head_str(struct head *h, const char *s)
{
    head_put(h, s, strlen(s));
}

/* A number in decimal. */
static void head_u64(struct head *h, uint64_t v)
{
    char d[24];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    head_put(h, d + i, sizeof d - i);
}

/* Write one response; the connection closes after it when close. No
 * printf and one conn_write for the head on the path every answer
 * takes. */
static void write_reply(struct httpd_conn *hc, const struct httpd_reply *r,
                        bool close)
{
    struct head h;
    h.c = hc->c;
    h.n = 0;
    stats_request_http(hc->srv->ls.name, request_route(hc), r->status,
                       hc->answering ? hc->started_ns : 0);
    head_put(&h, "HTTP/1.1 ", 9);
    head_u64(&h, (uint64_t)r->status);
    head_put(&h, " ", 1);
    head_str(&h, httpd_status_text(r->status));
    if (r->status != 204) {
        head_str(&h, "\r\nContent-Type: ");
        head_str(&h, r->ctype ? r->ctype : TEXT_PLAIN);
        head_str(&h, "\r\nContent-Length: ");
        head_u64(&h, r->blen);
    }
    if (r->allow) {
        head_str(&h, "\r\nAllow: ");
        head_str(&h, r->allow);
    }
    if (r->has_revision) {
        head_str(&h, "\r\nX-Pyazdb-Revision: ");
        head_u64(&h, r->revision);
    }
    if (r->nothing_written)
        head_str(&h, "\r\nX-Pyazdb-Nothing-Written: 1");
    if (r->status == 401 && hc->srv->o.realm) {
        head_str(&h, "\r\nWWW-Authenticate: Bearer realm=\"");
        head_str(&h, hc->srv->o.realm);
        head_str(&h, "\"");
    }
    if (close)
        head_str(&h, "\r\nConnection: close");
    head_put(&h, "\r\n\r\n", 4);
    conn_write(h.c, h.b, h.n);
    if (r->status != 204 && !hc->head && r->blen)
        conn_write(h.c, r->body, r->blen);
}

static void write_text(struct httpd_conn *hc, int status, const char *line,
                       const char *allow, bool close)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%s\n", line);
    struct httpd_reply r = {
        .status = status,
        .ctype = TEXT_PLAIN,
        .body = body,
        .blen = (size_t)PZ_MIN(n, (int)sizeof body - 1),
        .allow = allow,
    };
    write_reply(hc, &r, close);
}

static void process(struct httpd_conn *hc);

/* Start, switch or stop the request deadline to match where the request
 * in progress is: none while one is answered (or the client is not
 * reading its answers) or nothing of the next one arrived, the header
 * deadline from its first byte, the body deadline from the end of its
 * headers. A deadline is set once per phase, so bytes that trickle in
 * never move it. */
static void update_deadline(struct httpd_conn *hc)
{
    struct conn *c = hc->c;
    int want = DEADLINE_NONE;
    uint64_t ms = 0;
    if (!hc->answering && !hc->out_paused && !conn_is_closing(c) &&
        !(c->flags & CONN_CLOSE_AFTER)) {
        if (hc->p.phase == HTTP_PHASE_BODY) {
            want = DEADLINE_BODY;
            ms = hc->srv->o.body_timeout_ms;
        } else if (http_parser_started(&hc->p) || hc->in.len > 0) {
            want = DEADLINE_HEADERS;
            ms = hc->srv->o.header_timeout_ms;
        }
        if (ms == 0)
            want = DEADLINE_NONE;
    }
    if (want == hc->deadline)
        return;
    hc->deadline = want;
    conn_set_deadline(c, want == DEADLINE_NONE ? 0 : conn_now() + ms);
}

/* Charge what the connection holds for requests not yet complete: input
 * not parsed yet, and the parser's state while a request is arriving (a
 * request being answered is complete and not counted). False when that
 * would pass the budget. */
static bool account(struct httpd_conn *hc)
{
    if (hc->in.len == 0)
        pz_buf_trim(&hc->in, IN_KEEP);
    size_t held = hc->in.len;
    if (!hc->answering && hc->p.phase != HTTP_PHASE_DONE &&
        http_parser_started(&hc->p))
        held += http_parser_held(&hc->p);
    return conn_in_set(hc->c, held) == 0;
}

/* Let go of everything held for requests (the connection is closing). */
static void discard(struct httpd_conn *hc)
{
    http_parser_free(&hc->p);
    http_parser_init(&hc->p, &hc->srv->o.limits);
    pz_buf_free(&hc->in);
    conn_in_set(hc->c, 0);
    update_deadline(hc);
}

/* The request's bytes would pass max-partial-input: 503, close. */
static void refuse_busy(struct httpd_conn *hc)
{
    pz_debug("%s: %s: refused: %zu of %zu bytes of partial input in use",
             hc->srv->ls.name, hc->c->peer, conn_in_total(), conn_in_limit());
    write_text(hc, 503,
               "Server busy: too much request data in progress; retry later",
               NULL, true);
    conn_close_after_flush(hc->c);
    discard(hc);
}

/* Serve the requests buffered, then charge what is held and arm the next
 * deadline: after new input, a drained output, or an answer. */
static void serve(struct httpd_conn *hc)
{
    process(hc);
    if (!account(hc))
        refuse_busy(hc);
    update_deadline(hc);
}

/* The request is answered: get ready for the next one. */
static void finish(struct httpd_conn *hc, bool close)
{
    struct httpd *srv = hc->srv;
    hc->answering = false;
    hc->close_after = false;
    hc->head = false;
    hc->chunked = false;
    if (hc->held) {
        hc->held = false;
        hc->c->busy--;
    }
    if (srv->ops->on_done)
        srv->ops->on_done(hc);
    if (close) {
        conn_close_after_flush(hc->c);
        update_deadline(hc);
        return;
    }
    http_parser_next(&hc->p);
    conn_resume(hc->c);
    if (!hc->processing) {
        serve(hc); /* answered from the loop: serve what is buffered */
    }
}

void httpd_hold(struct httpd_conn *hc)
{
    pz_assert(hc->answering && !hc->held);
    hc->held = true;
    hc->c->busy++;
    conn_pause_soft(hc->c); /* the client usually waits for the answer */
}

void httpd_hold_until_eof(struct httpd_conn *hc)
{
    httpd_hold(hc);
    conn_eof_closes(hc->c, true);
}

void httpd_close_after(struct httpd_conn *hc)
{
    hc->close_after = true;
}

void httpd_reply(struct httpd_conn *hc, const struct httpd_reply *r)
{
    pz_assert(hc->answering);
    bool close = hc->close_after || !hc->p.req.keep_alive || hc->srv->draining;
    write_reply(hc, r, close);
    finish(hc, close);
}

void httpd_text(struct httpd_conn *hc, int status, const char *line,
                const char *allow)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%s\n", line);
    struct httpd_reply r = {
        .status = status,
        .ctype = TEXT_PLAIN,
        .body = body,
        .blen = (size_t)PZ_MIN(n, (int)sizeof body - 1),
        .allow = allow,
    };
    httpd_reply(hc, &r);
}

void httpd_stream_begin(struct httpd_conn *hc, int status, const char *ctype,
                        uint64_t length)
{
    pz_assert(hc->answering && hc->held && !hc->streaming);
    conn_eof_closes(hc->c, false); /* a stream ends as it always did */
    bool close = hc->close_after || !hc->p.req.keep_alive || hc->srv->draining;
    stats_request_http(hc->srv->ls.name, request_route(hc), status,
                       hc->started_ns);
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n", status,
                   httpd_status_text(status), ctype ? ctype : TEXT_PLAIN);
    if (length == HTTPD_STREAM_OPEN) {
        /* Ends when the connection does. */
        close = true;
        pz_buf_append(&b, "Cache-Control: no-cache\r\n", 25);
        if (hc->chunked)
            pz_buf_appendf(&b, "Transfer-Encoding: chunked\r\n");
    } else {
        pz_buf_appendf(&b, "Content-Length: %llu\r\n",
                       (unsigned long long)length);
    }
    if (close)
        pz_buf_append(&b, "Connection: close\r\n", 19);
    pz_buf_append(&b, "\r\n", 2);
    conn_write(hc->c, b.data, b.len);
    pz_buf_free(&b);
    if (hc->head || length == 0) {
        finish(hc, close);
        return;
    }
    hc->close_after = close;
    hc->streaming = true;
    hc->stream_left = length;
    if (length == HTTPD_STREAM_OPEN)
        conn_resume(hc->c); /* to see the client leave (input dropped) */
    if (hc->srv->o.body_timeout_ms)
        conn_set_deadline(hc->c, conn_now() + hc->srv->o.body_timeout_ms);
    /* The body follows from on_drain, as the client reads. */
}

void httpd_stream_write(struct httpd_conn *hc, const void *data, size_t n)
{
    pz_assert(hc->streaming && n <= hc->stream_left);
    if (hc->chunked && hc->stream_left == HTTPD_STREAM_OPEN) {
        char size[24];
        if (n == 0)
            return; /* an empty chunk would end the body */
        int sl = snprintf(size, sizeof size, "%zx\r\n", n);
        conn_write(hc->c, size, (size_t)sl);
        conn_write(hc->c, data, n);
        conn_write(hc->c, "\r\n", 2);
        return;
    }
    conn_write(hc->c, data, n);
    if (hc->stream_left == HTTPD_STREAM_OPEN)
        return;
    hc->stream_left -= n;
    if (hc->stream_left == 0) {
        hc->streaming = false;
        conn_set_deadline(hc->c, 0);
        finish(hc, hc->close_after);
    }
}

void httpd_stream_abort(struct httpd_conn *hc)
{
    hc->streaming = false;
    conn_close(hc->c);
}

/* Ask the handler for more of a streamed body while little is waiting.
 * A client that reads none of it for body_timeout_ms is dropped (its
 * stream holds resources: a file, say). */
static void stream_pump(struct httpd_conn *hc)
{
    while (hc->streaming && !conn_is_closing(hc->c) &&
           conn_output_pending(hc->c) < HTTPD_STREAM_WANT) {
        uint64_t before = hc->stream_left;
        hc->srv->ops->on_stream(hc);
        if (hc->streaming && hc->stream_left == before)
            break; /* nothing written: the handler comes back later */
    }
    if (hc->streaming && hc->srv->o.body_timeout_ms) {
        /* An open stream may have nothing to send for long: only a
         * client that leaves output unread is timed. */
        if (hc->stream_left == HTTPD_STREAM_OPEN &&
            conn_output_pending(hc->c) == 0)
            conn_set_deadline(hc->c, 0);
        else
            conn_set_deadline(hc->c,
                              conn_now() + hc->srv->o.body_timeout_ms);
    }
}

void httpd_stream_kick(struct httpd_conn *hc)
{
    if (hc->streaming)
        stream_pump(hc);
}

void httpd_stream_chunked(struct httpd_conn *hc)
{
    hc->chunked = true;
}

void httpd_stream_end(struct httpd_conn *hc)
{
    pz_assert(hc->streaming);
    if (hc->chunked) {
        conn_write(hc->c, "0\r\n\r\n", 5);
        hc->chunked = false;
    }
    hc->streaming = false;
    conn_set_deadline(hc->c, 0);
    finish(hc, true);
    /* What is left must be read in time too (on_deadline closes). */
    if (hc->srv->o.body_timeout_ms && !conn_is_closing(hc->c))
        conn_set_deadline(hc->c, conn_now() + hc->srv->o.body_timeout_ms);
}

bool httpd_bearer_ok(const struct http_req *req, const char *token)
{
    if (token == NULL || token[0] == '\0')
        return true;
    const char *h = http_req_header(req, "authorization");
    size_t n = h ? strlen(h) : 0;
    return h != NULL && http_bearer_value(&h, &n) &&
           pz_token_equal(token, strlen(token), h, n);
}

/* Hand the complete request in hc->p.req to the protocol. */
static void dispatch(struct httpd_conn *hc)
{
    conn_mark_served(hc->c);
    hc->answering = true;
    hc->route = NULL;
    hc->started_ns = stats_now_ns();
    hc->head = hc->p.req.method == HTTP_HEAD;
    hc->srv->ops->on_request(hc);
    pz_assert(!hc->answering || hc->held);
}

static void process(struct httpd_conn *hc)
{
    struct conn *c = hc->c;
    size_t pause = hc->srv->o.out_pause;
    hc->processing = true;
    while (!hc->answering && !conn_is_closing(c) &&
           !(c->flags & CONN_CLOSE_AFTER) && hc->in.len > 0) {
        if (pause && conn_output_pending(c) > pause) {
            /* Serve the rest once the client has read this. */
            hc->out_paused = true;
            conn_pause(c);
            break;
        }
        size_t used;
        int r = http_parser_feed(&hc->p, hc->in.data, hc->in.len, &used);
        pz_buf_consume(&hc->in, used);
        if (r == HTTP_PARSE_NEED_MORE)
            break;
        if (r == HTTP_PARSE_ERROR) {
            write_text(hc, hc->p.err_status, hc->p.err_reason, NULL, true);
            conn_close_after_flush(c);
            discard(hc);
            break;
        }
        account(hc); /* complete: only shrinks (what follows it is in) */
        dispatch(hc);
    }
    hc->processing = false;
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct httpd_conn *hc = c->proto;
    if (hc == NULL || (c->flags & CONN_CLOSE_AFTER))
        return; /* replying to a fatal error: ignore the rest */
    if (hc->streaming && hc->stream_left == HTTPD_STREAM_OPEN)
        return; /* an open stream ends with the connection: no requests */
    /* The bytes are charged before they are held; what the parser keeps
     * of them is charged instead once they are parsed. */
    if (conn_in_reserve(c, len) < 0) {
        if (!hc->answering) {
            refuse_busy(hc);
            return;
        }
        /* What a client sends while its request is held is kept past the
         * budget: refusing would free the request being answered (a
         * forward to the leader reads it again on each retry) and answer
         * it twice. It is one read at most: reading pauses while a
         * request is held (httpd_hold). account() only shrinks it. */
        conn_in_force(c, c->in_held + len);
    }
    pz_buf_append(&hc->in, data, len);
    serve(hc);
}

/* The client read its answers: serve what it sent meanwhile. */
static void on_drain(struct conn *c)
{
    struct httpd_conn *hc = c->proto;
    if (hc && hc->streaming) {
        stream_pump(hc);
        return;
    }
    if (hc == NULL || !hc->out_paused)
        return;
    hc->out_paused = false;
    conn_resume(c);
    serve(hc);
}

/* A request did not arrive in time: 408, close. */
static void on_deadline(struct conn *c)
{
    struct httpd_conn *hc = c->proto;
    if (hc == NULL)
        return;
    if (hc->streaming ||
        ((c->flags & CONN_CLOSE_AFTER) && conn_output_pending(c) > 0)) {
        /* A stream, or the end of one, the client does not read. */
        pz_debug("%s: %s: streamed reply not read in time", hc->srv->ls.name,
                 c->peer);
        httpd_stream_abort(hc);
        return;
    }
    int which = hc->deadline;
    hc->deadline = DEADLINE_NONE;
    if (which == DEADLINE_NONE || hc->answering ||
        (c->flags & CONN_CLOSE_AFTER))
        return;
    pz_debug("%s: %s: request %s not received in time", hc->srv->ls.name,
             c->peer, which == DEADLINE_BODY ? "body" : "headers");
    write_text(hc, 408,
               which == DEADLINE_BODY ? "Request body not received in time"
                                      : "Request headers not received in time",
               NULL, true);
    conn_close_after_flush(c);
    discard(hc);
}

/* Evicted at max_clients: a client caught mid-request is told why. */
static void on_evict(struct conn *c)
{
    struct httpd_conn *hc = c->proto;
    if (hc && !hc->answering && http_parser_started(&hc->p))
        write_text(hc, 503, hc->srv->o.busy_line, NULL, true);
}

static int on_open(struct conn *c)
{
    struct httpd *srv = c->ls->data;
    struct httpd_conn *hc = pz_calloc(1, srv->o.conn_size);
    hc->srv = srv;
    hc->c = c;
    http_parser_init(&hc->p, &srv->o.limits);
    pz_buf_init(&hc->in);
    c->proto = hc;
    return 0;
}

static void on_close(struct conn *c)
{
    struct httpd_conn *hc = c->proto;
    if (hc == NULL)
        return;
    if (hc->srv->ops->on_close)
        hc->srv->ops->on_close(hc);
    http_parser_free(&hc->p);
    pz_buf_free(&hc->in);
    pz_free(hc);
}

/* Past max_clients with no connection to evict: 503, close. */
static void on_refuse(struct conn *c)
{
    struct httpd *srv = c->ls->data;
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b,
                   "HTTP/1.1 503 Service Unavailable\r\n"
                   "Content-Type: " TEXT_PLAIN "\r\n"
                   "Content-Length: %zu\r\n"
                   "Connection: close\r\n\r\n%s\n",
                   strlen(srv->o.busy_line) + 1, srv->o.busy_line);
    conn_write(c, b.data, b.len);
    pz_buf_free(&b);
}

static const struct conn_ops httpd_conn_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
    .on_deadline = on_deadline,
    .on_evict = on_evict,
};

int httpd_listen(struct httpd *srv, const char *addr,
                 const struct httpd_ops *ops, const struct httpd_opts *opts,
                 const char *name, void *data, char *err, size_t errlen)
{
    srv->ops = ops;
    srv->o = *opts;
    if (srv->o.conn_size < sizeof(struct httpd_conn))
        srv->o.conn_size = sizeof(struct httpd_conn);
    if (srv->o.busy_line == NULL)
        srv->o.busy_line = "Too many clients";
    srv->data = data;
    srv->draining = false;
    /* conn_listen may fail before it sets up the listener: make it one
     * that httpd_drain can walk either way. */
    memset(&srv->ls, 0, sizeof srv->ls);
    pz_queue_init(&srv->ls.conns);
    pz_queue_init(&srv->ls.fresh);
    pz_queue_init(&srv->ls.lq);
    srv->started = true;
    int rv = conn_listen(&srv->ls, addr, &httpd_conn_ops, name,
                         opts->max_clients, err, errlen);
    if (rv == 0) {
        srv->ls.data = srv;
        srv->ls.on_refuse = on_refuse;
        srv->ls.evict = opts->evict;
        srv->ls.send_timeout = opts->body_timeout_ms;
        srv->ls.clients = true;
    }
    return rv;
}

void httpd_drain(struct httpd *srv)
{
    if (!srv->started)
        return;
    srv->draining = true;
    conn_listener_stop(&srv->ls, NULL);
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &srv->ls.conns)
    {
        struct conn *c = container_of(e, struct conn, q);
        struct httpd_conn *hc = c->proto;
        if (hc == NULL || !hc->answering)
            conn_close_after_flush(c); /* a reply may still be going out */
    }
}
