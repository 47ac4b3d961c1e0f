/* httpc.h - the one HTTP/1.1 client: forwarding to the leader (fwd.c),
 * the nodes' client of mandi (mandi_client.c) and pyazdb-cli (cli.c).
 *
 * One client talks to one address over one kept-alive connection, dialled
 * on the first request and again after it is lost. Requests are written
 * pipelined, in order, as the connection takes them (one more while less
 * than HTTPC_WRITE_AHEAD waits in its output, so that a request not
 * written yet holds nothing there and is dropped when cancelled), and
 * answered in order. Each has a deadline (timeout_ms after it was made)
 * and can be cancelled.
 *
 * Callbacks: each request's callback runs exactly once, from the loop and
 * never from inside the call that made the request, unless the request is
 * cancelled first (httpc_cancel: never called). The result says whether
 * the server answered (err == 0, with its status, whatever it is) or not
 * (err < 0):
 *   - a libuv code from connecting, e.g. UV_ECONNREFUSED: every request
 *     waiting for that connection fails with it; PZ_EINVAL when the address
 *     cannot be dialled at all;
 *   - PZ_EIO: the connection was lost with the request unanswered;
 *   - PZ_ETIMEDOUT: no answer before the deadline;
 *   - PZ_EPROTO: the answer was malformed: bad HTTP, a status line and
 *     headers over max_head, a body over max_body (an announced
 *     Content-Length over it fails at once), a status outside 100-599 or
 *     101 (interim 1xx answers are skipped), an answer to no request;
 *   - PZ_ECANCELED: httpc_free() ran with the request pending;
 *   - PZ_ENOSPC: opts.hold refused room for the answer's body, which was
 *     dropped: its status and headers are given, not its body; the
 *     connection goes on.
 * A connection that is lost, stuck (its oldest request timed out) or
 * answers badly is dropped; the requests written on it are written again
 * on a new one while they have been sent fewer than max_attempts times
 * (only idempotent requests should allow more than 1), else they fail
 * with the reason the connection was dropped. A cancelled request that
 * was already written stays queued, without a callback, so that later
 * answers still match their requests.
 * The result and everything it points to are valid during the callback
 * only. A callback may make new requests, cancel others, or call
 * httpc_free() (the other pending callbacks then run with PZ_ECANCELED).
 *
 * Whatever answers may be hostile: the bounds above cap what it can make
 * us hold, and nothing it sends reaches the log (reasons are ours or
 * llhttp's). Troubles are reported through opts.warn, connection events
 * at debug level.
 *
 * The loop must flush connections (conn_before_sleep() from its prepare
 * hook, conn_setup() done). */
#ifndef PZ_HTTPC_H
#define PZ_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct httpc;
struct pz_buf;
struct tls_slot;

/* Requests are written while less than this waits on the connection. */
#define HTTPC_WRITE_AHEAD (64 * 1024)

struct httpc_result {
    int err;                  /* 0: the server answered; < 0: see above */
    int status;               /* its status when err == 0 (or
                                 PZ_ENOSPC), else 0 */
    const char *content_type; /* its Content-Type, "" if none */
    const char *allow;        /* its Allow header, "" if none */
    const char *revision;     /* its X-Pyazdb-Revision, "" if none */
    bool nothing_written;     /* it sent X-Pyazdb-Nothing-Written: 1 */
    const char *body;         /* its body, NUL-terminated ("" if none) */
    size_t blen;              /* body length (it may hold NUL bytes) */
    /* The buffer body is in when err == 0, else NULL: the callback may
     * take it (move it out, leaving it initialized) instead of copying. */
    struct pz_buf *buf;
};

typedef void (*httpc_cb)(const struct httpc_result *res, void *data);

struct httpc_opts {
    size_t max_head;      /* status line and headers, bytes */
    size_t max_body;      /* body, bytes */
    uint64_t timeout_ms;  /* per request, from when it is made; 0: none */
    int max_attempts;     /* connections a request may be written on */
    const char *log_name; /* prefix of log lines, e.g. "mandi at h:p"
                             (copied) */
    /* Troubles (a bad answer, no answer, a refused connection), one line
     * without the prefix; NULL: pz_warn with the prefix. */
    void (*warn)(void *data, const char *msg);
    void *warn_data; /* warn's argument */
    bool quiet_dial; /* connections refused are logged at debug level
                        only (for a server that may well be down) */
    /* HTTPS (tls.h): the server's certificate must name the host of addr.
     * NULL or off: plain HTTP. Borrowed: it must outlive the client. */
    const struct tls_slot *tls;
    /* Request bodies are borrowed, not copied: the caller keeps each one
     * until its callback runs or it is cancelled. */
    bool borrow_body;
    /* What waits on the connection for the server to take counts against
     * max_pending_output (conn_count_output): the requests of clients. */
    bool count_output;
    /* NULL, or asked before the buffer of an answer's body grows (to its
     * whole Content-Length at once when one is announced): the answer to
     * the request with data would hold bytes in all. true: the caller
     * counts them (until it lets the body go: see httpc_result.buf);
     * false: the body is dropped as it arrives and the request fails
     * with PZ_ENOSPC, its status and headers given. Never called for a
     * cancelled request, whose answer's body is dropped too. */
    bool (*hold)(void *data, size_t bytes);
};

/* A client of addr ("host:port", host an IP address or localhost; ":port"
 * is the local host). opts is copied. */
struct httpc *httpc_new(uv_loop_t *loop, const char *addr,
                        const struct httpc_opts *opts);

/* Send method target with Host and, when body is not NULL, Content-Length
 * and the body; headers (may be NULL) are more header lines, each ending
 * in CRLF, sent as they are. Returns the request's id (> 0), for
 * httpc_cancel(), or 0 when the client is being freed (no callback
 * then). */
uint64_t httpc_request(struct httpc *c, const char *method, const char *target,
                       const char *headers, const void *body, size_t blen,
                       httpc_cb cb, void *data);

/* Forget request id: its callback will not run. Returns true, with its
 * data in *data (when data is not NULL), if it was pending; false when it
 * already completed or never existed. */
bool httpc_cancel(struct httpc *c, uint64_t id, void **data);
/* Requests whose callback is still due. */
size_t httpc_pending(const struct httpc *c);
/* The address given to httpc_new(). */
const char *httpc_addr(const struct httpc *c);

/* Close the connection and free the client. Pending callbacks run, inside
 * this call, with PZ_ECANCELED; requests made from them return 0. The
 * memory is released once the client's timer handle has closed, on a
 * later loop turn: run the loop before uv_loop_close(). */
void httpc_free(struct httpc *c);

#endif
