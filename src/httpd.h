/* httpd.h - the server side of HTTP/1.1 on conn.c, shared by the node API
 * (http.c) and mandi (mandi.c): each of those keeps only its routes and
 * handlers.
 *
 * What it owns: the listener and its refusal or eviction of clients past
 * max_clients; per connection, the request loop (llhttp through
 * http_parse.h) with keep-alive and pipelining, strictly in order; the
 * request deadlines and the partial-input budget (conn.h); replies with
 * their status texts and headers; the bearer-token check; and draining at
 * shutdown.
 *
 * Happy path: bytes arrive -> the parser completes a request -> on_request
 * runs with it -> the handler answers with httpd_reply() or httpd_text(),
 * at once or, after httpd_hold(), later from the loop -> the next request
 * (already buffered, or when it arrives) is served. While a request is
 * held the connection reads nothing more and is exempt from the idle
 * timeout. A reply carries `Connection: close` when the client asked for
 * it, the server is draining, or the handler said so (httpd_close_after);
 * the connection then closes once the reply is written.
 *
 * Failure modes, all answered here and followed by a close: malformed
 * HTTP, a body or headers over the limits (400, 413, 414, 431, 505 from
 * http_parse.h); a request whose bytes would pass the partial-input budget
 * (503); a request not received within header_timeout_ms of its first
 * byte, or body_timeout_ms of the end of its headers, however its bytes
 * trickle in (408). A client that sends requests without reading the
 * replies is not served further while its unread output passes out_pause.
 * At max_clients a new client evicts a slow or idle one when `evict` is
 * set (conn.c), a client caught mid-request getting 503; otherwise, or
 * when none qualifies, the newcomer gets 503 and is closed. A connection
 * that closes while its request is held calls on_close, so the handler can
 * cancel what it started. */
#ifndef PZ_HTTPD_H
#define PZ_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "http_parse.h"
#include "pz.h"

struct httpd;
struct httpd_conn;

struct httpd_ops {
    /* A complete request is in hc->p.req. Answer it exactly once, with
     * httpd_reply() or httpd_text(), before returning, or call
     * httpd_hold() and answer later from the loop. */
    void (*on_request)(struct httpd_conn *hc);
    /* The request was answered (optional): release what was held for it,
     * before the next request is served. */
    void (*on_done)(struct httpd_conn *hc);
    /* The connection is going away (optional): cancel work in flight for
     * a held request, release per-connection state. hc is freed after. */
    void (*on_close)(struct httpd_conn *hc);
    /* A streamed reply (httpd_stream_begin) wants more of its body: write
     * some with httpd_stream_write, or end it (httpd_stream_end,
     * httpd_stream_abort). Called while the connection's unwritten output
     * is below HTTPD_STREAM_WANT bytes, and only then: a client that reads
     * slowly is sent no faster than it reads. Required by protocols that
     * stream. */
    void (*on_stream)(struct httpd_conn *hc);
};

struct httpd_opts {
    struct http_limits limits;  /* request line, headers, body */
    uint64_t header_timeout_ms; /* first byte to end of headers; 0: none */
    uint64_t body_timeout_ms;   /* end of headers to end of body; 0: none */
    size_t out_pause;           /* stop serving while unread output passes
                                   this; 0: never */
    size_t max_clients;         /* open connections at most */
    bool evict;                 /* at max_clients, evict rather than refuse */
    const char *busy_line;      /* 503 body line for a client refused or
                                   evicted at max_clients (borrowed;
                                   NULL: "Too many clients") */
    const char *realm;          /* WWW-Authenticate realm of 401 replies
                                   (borrowed; NULL: no such header) */
    size_t conn_size;           /* per-connection struct size: a protocol
                                   embeds struct httpd_conn first in its
                                   own; sizeof(struct httpd_conn) if not */
};

struct httpd {
    struct conn_listener ls;     /* accepts clients; ls.data == this */
    const struct httpd_ops *ops; /* the protocol's handlers */
    struct httpd_opts o;         /* copy of the options */
    void *data;                  /* the protocol's state, for handlers */
    bool started;                /* httpd_listen ran: ls is initialized */
    bool draining;               /* httpd_drain ran: no more keep-alive */
};

struct httpd_conn {
    struct httpd *srv;    /* owner */
    struct conn *c;       /* our connection */
    struct http_parser p; /* request parser; p.req: the request served */
    struct pz_buf in;     /* received bytes not yet parsed */
    bool answering;       /* a request was handed out, not yet answered */
    bool held;            /* ...and httpd_hold() was called */
    bool close_after;     /* httpd_close_after(): close after this reply */
    bool head;            /* a HEAD request: replies carry no body */
    bool processing;      /* inside the request loop: don't recurse */
    bool out_paused;      /* not serving until unread output drains */
    int deadline;         /* which request deadline c->deadline is */
    bool streaming;       /* a streamed reply's body is being sent */
    bool chunked;         /* ... in chunks (httpd_stream_chunked) */
    uint64_t stream_left; /* bytes of it still to come */
    const char *route;    /* metrics: the handler's name for the request
                             (static; NULL: "other") */
    uint64_t started_ns;  /* metrics: when it was handed out */
};

/* Bind addr ("host:port") and serve it with ops; name ("http", "mandi")
 * prefixes log lines. opts is copied (its strings are borrowed); data is
 * kept in srv->data for the handlers. Returns 0 or a negative code with a
 * message in err. */
int httpd_listen(struct httpd *srv, const char *addr,
                 const struct httpd_ops *ops, const struct httpd_opts *opts,
                 const char *name, void *data, char *err, size_t errlen);
/* Shutdown: stop accepting, close idle connections once their output is
 * written, and every other one after its current answer. Safe on an
 * httpd that never listened. */
void httpd_drain(struct httpd *srv);

/* The request is answered later: stop reading, exempt the connection
 * from the idle timeout until the answer. */
void httpd_hold(struct httpd_conn *hc);
/* httpd_hold for an answer that costs the server while it is prepared (a
 * snapshot for a backup): a client that hangs up (EOF) meanwhile closes
 * the connection at once, so on_close calls the work off, rather than the
 * EOF waiting in the socket until the answer is written. Ends when the
 * answer begins (httpd_stream_begin) or is sent. */
void httpd_hold_until_eof(struct httpd_conn *hc);
/* Close the connection after the coming answer, whatever the client
 * asked for. */
void httpd_close_after(struct httpd_conn *hc);

struct httpd_reply {
    int status;        /* HTTP status */
    const char *ctype; /* Content-Type (not sent with 204) */
    const char *body;  /* body bytes (not sent with 204 or to HEAD) */
    size_t blen;       /* their number, sent as Content-Length */
    const char *allow; /* Allow header (405), or NULL */
    bool has_revision; /* send X-Pyazdb-Revision: revision */
    uint64_t revision; /* the state machine's revision the answer saw */
    /* send X-Pyazdb-Nothing-Written: 1 (to a node that forwarded the
     * request: the request changed nothing, see fwd.h) */
    bool nothing_written;
};
/* Answer the request: the status line, Content-Type and Content-Length
 * (but for 204), Allow when given, `WWW-Authenticate: Bearer realm=...`
 * with a 401, `Connection: close` when the connection closes after it.
 * The bytes are copied. Then the next request is served (from inside
 * this call when the request was held): hc's request is gone. */
void httpd_reply(struct httpd_conn *hc, const struct httpd_reply *r);
/* Answer with one line of text (a newline is added), text/plain. */
void httpd_text(struct httpd_conn *hc, int status, const char *line,
                const char *allow);

/* --- streamed replies ------------------------------------------------------
 * A body too large to copy at once (a snapshot file) goes out in pieces as
 * the client reads it: httpd_stream_begin() writes the status line and
 * headers with Content-Length `length`; then on_stream is called whenever
 * less than HTTPD_STREAM_WANT bytes wait to be written, and the handler
 * writes the next piece with httpd_stream_write(). Once `length` bytes are
 * written the request is answered (as by httpd_reply: the next request is
 * served). httpd_stream_abort() gives up (a read error): the connection is
 * closed, so the client sees a short body, never a wrong one. A client
 * that reads nothing for body_timeout_ms meanwhile is closed the same
 * way. The request must be held (httpd_hold) while it streams. */
#define HTTPD_STREAM_WANT (512 * 1024)
void httpd_stream_begin(struct httpd_conn *hc, int status, const char *ctype,
                        uint64_t length);
/* Write n more body bytes (n at most what is left; copied). The last byte
 * ends the reply. */
void httpd_stream_write(struct httpd_conn *hc, const void *data, size_t n);
/* Close the connection with the body cut short. */
void httpd_stream_abort(struct httpd_conn *hc);
/* An open-ended stream (Server-Sent Events): length HTTPD_STREAM_OPEN
 * sends no Content-Length but `Cache-Control: no-cache` and
 * `Connection: close`; the body ends with the connection, when the
 * handler calls httpd_stream_end (the connection closes once the output
 * is written, or when it is not read within body_timeout_ms). Such a
 * stream is timed out only while output waits unread;
 * its connection is read meanwhile (input dropped), so that a client that
 * leaves is seen at once.
 * The handler may write whenever it has something (httpd_stream_kick asks
 * for on_stream now, if the client's unread output allows). */
#define HTTPD_STREAM_OPEN UINT64_MAX
void httpd_stream_kick(struct httpd_conn *hc);
void httpd_stream_end(struct httpd_conn *hc);
/* Call before httpd_stream_begin(HTTPD_STREAM_OPEN): the body goes with
 * `Transfer-Encoding: chunked`, each httpd_stream_write as one chunk (a
 * client reading chunk by chunk gets each write whole), and
 * httpd_stream_end writes the last chunk before the connection closes. */
void httpd_stream_chunked(struct httpd_conn *hc);

/* The request's Authorization header, when it is `Bearer <token>` with
 * token equal to the given one: true. The scheme is matched without
 * regard to case (RFC 7235 §2.1), blanks around the token are ignored,
 * and the token is compared in constant time (pz_token_equal). token ""
 * or NULL: no token is required (true). */
bool httpd_bearer_ok(const struct http_req *req, const char *token);

/* "OK", "Not Found", ... for a status; "Unknown" for one we never send. */
const char *httpd_status_text(int status);

#endif
