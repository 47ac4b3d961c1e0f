/* mandi_client.h - the nodes' asynchronous client of mandi (mandi.h), on
 * mandi's wire types and codec (mandi_codec.h), not on its server.
 *
 * One client talks to one mandi over one kept-alive HTTP/1.1 connection
 * (httpc.h), dialled on the first request and again after it is lost.
 * Requests are written at once, pipelined, and answered in order. Every
 * request has a deadline (timeout_ms after it was made) and can be
 * cancelled.
 *
 * Callbacks: each request's callback runs exactly once, from the loop and
 * never from inside the call that made the request, unless the request is
 * cancelled first (mandi_cancel: never called). The result says whether
 * mandi answered (err == 0, http_status is its status, whatever it is:
 * 204, 200, 404, 401, 409, 400, 503...) or not (err < 0):
 *   - a libuv code from connecting, e.g. UV_ECONNREFUSED: every request
 *     waiting on that connection fails with it;
 *   - PZ_ETIMEDOUT: no answer before the deadline;
 *   - PZ_EIO: the connection was lost twice with the request unanswered
 *     (a request written on a connection that breaks is sent once more on
 *     a new one: every mandi request is idempotent); a request already
 *     sent twice whose connection is dropped for another reason fails
 *     with that reason (PZ_ETIMEDOUT: an earlier request got no answer;
 *     PZ_EPROTO: an earlier answer was malformed);
 *   - PZ_EPROTO: the answer was malformed: bad HTTP, a status line and
 *     headers over 16 KiB, a body over 4 MiB, a status mandi never sends
 *     (1xx answers are skipped), a 200 whose LeaderInfo fails
 *     mandi_parse_leader() or whose join list is not a well-formed JSON
 *     array;
 *   - PZ_ECANCELED: mandi_client_free() ran with the request pending.
 * The result and everything it points to are valid during the callback
 * only. A callback may make new requests and may cancel others; it may
 * call mandi_client_free() too (the rest of the pending callbacks then run
 * with PZ_ECANCELED).
 *
 * Nothing mandi says is trusted: what reaches the caller passed mandi's
 * own rules (ids printable, addresses host:port: mandi_codec.h) or was
 * left out, and text is escaped. Problems with mandi's answers are logged
 * as warnings, at most 5 a minute per client.
 *
 * The loop must flush connections (conn_before_sleep() from its prepare
 * hook, conn_setup() done), as the server's loop does. */
#ifndef PZ_MANDI_CLIENT_H
#define PZ_MANDI_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "mandi_codec.h"

struct mandi_client;

struct mandi_result {
    int err;         /* 0: mandi answered; < 0: see above */
    int http_status; /* mandi's status when err == 0, else 0 */
    /* First line of the body of a non-2xx answer ("stale term",
     * "unauthorized", "leader not available"), "" otherwise; escaped with
     * pz_escape() (printable ASCII, safe to log) and cut to fewer than
     * PZ_ESCAPED_MAX characters. */
    const char *message;
    /* mandi_get_leader with status 200: the LeaderInfo; NULL otherwise. */
    const struct mandi_leader *leader;
    /* mandi_get_joins with status 200: the pending join requests, oldest
     * first (joins may be NULL when n_joins is 0). Entries that fail
     * mandi_parse_join() are left out, and only the first 1024 valid ones
     * are given (both with a warning). */
    const struct mandi_join *joins;
    size_t n_joins; /* entries in joins */
};

typedef void (*mandi_client_cb)(const struct mandi_result *res, void *data);

struct tls_slot;

/* The TLS context for https:// mandi URLs (tls.h), borrowed: set once
 * before mandi_client_new() is given one. */
void mandi_client_https(const struct tls_slot *s);

/* A client of the mandi at url ("http://host:port", or "https://host:port"
 * after mandi_client_https(), host an IP address or localhost). token: "" or NULL for none, else sent as
 * `Authorization: Bearer <token>` on every request (copied; printable
 * ASCII without blanks). timeout_ms > 0 bounds each request. Returns NULL
 * with a message in err for a bad url or token. */
struct mandi_client *mandi_client_new(uv_loop_t *loop, const char *url,
                                      const char *token, uint64_t timeout_ms,
                                      char *err, size_t errlen);

/* Each request returns its id (> 0), for mandi_cancel(), or 0 if the
 * client is being freed (no callback then). */

/* PUT /leader with info (updated_at is not sent; mandi sets it). 204 on
 * success; 409 when mandi holds a newer term; 401 with a wrong token. */
uint64_t mandi_put_leader(struct mandi_client *mc,
                          const struct mandi_leader *info, mandi_client_cb cb,
                          void *data);
/* GET /leader: 200 with res->leader, or 404 when none is known. */
uint64_t mandi_get_leader(struct mandi_client *mc, mandi_client_cb cb,
                          void *data);
/* POST /join-requests with j's id, addr, http_addr and grpc_addr
 * (started_at is not sent). 204 on success. */
uint64_t mandi_post_join(struct mandi_client *mc, const struct mandi_join *j,
                         mandi_client_cb cb, void *data);
/* GET /join-requests: 200 with res->joins. */
uint64_t mandi_get_joins(struct mandi_client *mc, mandi_client_cb cb,
                         void *data);
/* DELETE /join-requests?id=<id>: 204, also when mandi had none. */
uint64_t mandi_delete_join(struct mandi_client *mc, const char *id,
                           mandi_client_cb cb, void *data);

/* Forget request id: its callback will not run. Returns true when it was
 * pending, false when it already completed or never existed (so a stale
 * id is harmless). An answer still due on the connection is read and
 * discarded. */
bool mandi_cancel(struct mandi_client *mc, uint64_t id);
/* Requests whose callback is still due. */
size_t mandi_client_pending(const struct mandi_client *mc);

/* Close the connection and free the client. Pending callbacks run, inside
 * this call, with err PZ_ECANCELED; requests made from them return 0. The
 * memory is released once the client's timer handle has closed, on a
 * later loop turn: run the loop before uv_loop_close(). Free the client
 * before conn_close_outbound() at shutdown, or it would dial again to
 * resend what the closed connection carried. */
void mandi_client_free(struct mandi_client *mc);

#endif
