/* fwd.c - see fwd.h.
 *
 * Happy path: fwd_send picks a client of the leader's address, the one
 * with the fewest requests waiting (a new one while all are busy, up to
 * FWD_LINKS of them), which writes the request on its kept-alive
 * connection (dialled if need be); the answer completes the request. The
 * leader answers a connection's requests one at a time, in order, so one
 * connection would hold every forwarded request behind the one before:
 * writes through a follower went at one commit at a time. Failure modes, from
 * httpc.h: an unreachable leader or a connection that breaks fails every
 * request on it (PZ_EIO), a malformed or oversized answer too (PZ_EPROTO),
 * an answer that does not come in time (PZ_ETIMEDOUT); the connection is
 * dropped and the next request dials again. A request that failed is
 * sent again when that is safe (fwd.h): at once, or after a pause on a
 * timer of its own (struct fwd_wait, freed by its close callback, so that
 * cancelling never waits for libuv). A cancelled request keeps its place,
 * with no owner, until its answer arrives, so that later answers still
 * match their requests.
 *
 * Clients of addresses that are no longer the leader's are freed once
 * nothing waits on them: at most the current leader's and those with
 * requests in flight are kept. */
#include "fwd.h"

#include <stdio.h>
#include <string.h>

#include "http_parse.h"
#include "httpc.h"
#include "log.h"
#include "queue.h"
#include "tls_setup.h"

struct fwd_link {
    struct pz_queue q;   /* in links */
    struct httpc *http;  /* the client of one leader address */
};

/* A retry waiting for its pause. */
struct fwd_wait {
    uv_timer_t timer;   /* the pause */
    struct pz_queue q;  /* in waits */
    struct fwd_req *r;  /* NULL once cancelled */
    int err;            /* the error that made it wait */
};

static struct pz_queue links = {&links, &links};
static struct pz_queue waits = {&waits, &waits};
static uv_loop_t *loop;
static uint64_t timeout;  /* ms a request may wait for its answer, 0: any */
static uint64_t retry_ms; /* retries start within this of fwd_send */
static const char *(*leader_addr)(void);

#define PAUSE_FIRST_MS 50
#define PAUSE_MAX_MS 400
/* Connections to one leader at most: as many forwarded requests are
 * answered at once (with 64 HTTP clients writing through a follower:
 * 2,500 writes/s on one connection, about the leader's own rate on 32). */
#define FWD_LINKS 32

void fwd_setup(uv_loop_t *l, uint64_t timeout_ms)
{
    loop = l;
    timeout = timeout_ms;
}

void fwd_set_retry(uint64_t ms, const char *(*addr)(void))
{
    retry_ms = ms;
    leader_addr = addr;
}

static int send_to(struct fwd_req *r, const char *addr);

static void on_wait_closed(uv_handle_t *h)
{
    pz_free(container_of((uv_timer_t *)h, struct fwd_wait, timer));
}

static void wait_end(struct fwd_wait *w)
{
    pz_queue_remove(&w->q);
    if (w->r)
        w->r->wait = NULL;
    w->r = NULL;
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
}

/* The pause is over: send again to the leader known now. */
static void on_wait(uv_timer_t *t)
{
    struct fwd_wait *w = container_of(t, struct fwd_wait, timer);
    struct fwd_req *r = w->r;
    int err = w->err;
    wait_end(w);
    const char *addr = leader_addr ? leader_addr() : NULL;
    if (addr == NULL) {
        r->cb(r, PZ_ELEADERCHANGE);
        return;
    }
    if (send_to(r, addr) < 0)
        r->cb(r, err);
}

/* r failed with err (PZ_ENOTLEADER: refused by a node that is not the
 * leader): true if it is sent again (now or after a pause). */
static bool retry(struct fwd_req *r, int err)
{
    bool lost = err == PZ_EIO;
    bool unsent = FWD_UNSENT(err) || err == PZ_ENOTLEADER;
    if (!unsent && !(lost && r->idempotent))
        return false;
    if (retry_ms == 0 || leader_addr == NULL ||
        uv_now(loop) >= r->retry_until)
        return false;
    if (r->pause == 0 && lost) {
        /* The kept-alive connection was dead: straight to a new one. */
        r->pause = PAUSE_FIRST_MS;
        const char *addr = leader_addr();
        if (addr == NULL) {
            r->cb(r, PZ_ELEADERCHANGE);
            return true;
        }
        if (send_to(r, addr) == 0)
            return true;
    }
    if (r->pause == 0)
        r->pause = PAUSE_FIRST_MS;
    struct fwd_wait *w = pz_calloc(1, sizeof *w);
    uv_timer_init(loop, &w->timer);
    w->r = r;
    w->err = err;
    pz_queue_push(&waits, &w->q);
    r->wait = w;
    uv_timer_start(&w->timer, on_wait, r->pause, 0);
    r->pause = PZ_MIN(r->pause * 2, (uint64_t)PAUSE_MAX_MS);
    pz_debug("forwarding %s %s: %s; trying again", r->method, r->target,
             pz_strerror(err));
    return true;
}

/* Is res's body the line text? */
static bool body_is(const struct httpc_result *res, const char *text)
{
    size_t n = strlen(text);
    return res->blen == n + 1 && memcmp(res->body, text, n) == 0 &&
           res->body[n] == '\n';
}

/* The answer is a refusal by a node that is not the leader, whether it
 * knows another or none (fwd.h): the request did nothing there. Any
 * other 503 (a timeout, an overload, a leader change) may follow a
 * proposal, and is the client's to see. */
static bool not_leader(const struct httpc_result *res)
{
    return res->status == 503 &&
           (body_is(res, FWD_NOT_LEADER) || body_is(res, FWD_NO_LEADER));
}

/* The room hold() granted r's answer goes (no body comes with it). */
static void unhold(struct fwd_req *r)
{
    if (r->hold)
        r->hold(r, 0);
}

static void on_answer(const struct httpc_result *res, void *data)
{
    struct fwd_req *r = data;
    r->link = NULL;
    r->id = 0;
    /* Relayed to the client as it came, if it is a revision at all. */
    r->revision = 0;
    r->has_revision =
        http_parse_revision(res->revision, strlen(res->revision), &r->revision);
    r->nothing_written = res->nothing_written;
    if (res->err == PZ_ENOSPC) {
        /* Answered, but with no room for it: never sent again. */
        unhold(r);
        r->http_status = res->status;
        r->cb(r, PZ_ENOSPC);
        return;
    }
    if (res->err < 0) {
        unhold(r);
        /* httpc: a libuv code (or PZ_EINVAL) is a connection never made,
         * so nothing was sent; PZ_ECANCELED is a shutdown. */
        int err = res->err == PZ_ECANCELED ? PZ_EIO : res->err;
        if (retry(r, err))
            return;
        r->cb(r, err == PZ_EPROTO || err == PZ_ETIMEDOUT || FWD_UNSENT(err)
                     ? err
                     : PZ_EIO);
        return;
    }
    /* Refused before anything was proposed: to the next leader, as a
     * request that never got there (retry's PZ_ENOTLEADER). */
    if (not_leader(res)) {
        unhold(r);
        if (retry(r, PZ_ENOTLEADER))
            return;
    }
    r->http_status = res->status;
    snprintf(r->content_type, sizeof r->content_type, "%s",
             res->content_type);
    snprintf(r->allow, sizeof r->allow, "%s", res->allow);
    /* The body moves to r, still counted by hold(): not copied. */
    pz_buf_free(&r->body);
    r->body = *res->buf;
    pz_buf_init(res->buf);
    r->cb(r, 0);
}

static void link_free(struct fwd_link *k)
{
    pz_queue_remove(&k->q);
    httpc_free(k->http);
    pz_free(k);
}

/* httpc asks room for an answer's body: r's hold() grants it. */
static bool link_hold(void *data, size_t bytes)
{
    struct fwd_req *r = data;
    return r->hold == NULL || r->hold(r, bytes);
}

/* The client of addr with the fewest requests waiting, a new one if all
 * have some and there are fewer than FWD_LINKS; idle clients of other
 * addresses go. */
static struct fwd_link *link_get(const char *addr)
{
    struct fwd_link *best = NULL;
    size_t n = 0;
    struct pz_queue *e = pz_queue_head(&links);
    while (e != &links) {
        struct fwd_link *k = container_of(e, struct fwd_link, q);
        e = e->next;
        if (strcmp(httpc_addr(k->http), addr) == 0) {
            n++;
            if (best == NULL ||
                httpc_pending(k->http) < httpc_pending(best->http))
                best = k;
        } else if (httpc_pending(k->http) == 0) {
            link_free(k);
        }
    }
    if (best && (httpc_pending(best->http) == 0 || n >= FWD_LINKS))
        return best;
    char name[300];
    snprintf(name, sizeof name, "forwarding to %s", addr);
    struct httpc_opts o = {
        .max_head = FWD_MAX_HEADER_BYTES,
        .max_body = FWD_MAX_BODY,
        .timeout_ms = timeout,
        .max_attempts = 1,
        .log_name = name,
        .tls = &tls_http_client,
        .borrow_body = true,
        .count_output = true,
        .hold = link_hold,
    };
    struct fwd_link *k = pz_calloc(1, sizeof *k);
    k->http = httpc_new(loop, addr, &o);
    pz_queue_push(&links, &k->q);
    return k;
}

int fwd_send(struct fwd_req *r, const char *addr, const char *method,
             const char *target, const char *body, size_t blen, fwd_cb cb)
{
    pz_assert(loop != NULL);
    pz_buf_init(&r->body);
    r->cb = cb;
    r->link = NULL;
    r->wait = NULL;
    r->method = method;
    r->target = target;
    r->sbody = body;
    r->sblen = blen;
    r->retry_until = uv_now(loop) + retry_ms;
    r->pause = 0;
    r->nothing_written = false;
    return send_to(r, addr);
}

static int send_to(struct fwd_req *r, const char *addr)
{
    struct fwd_link *k = link_get(addr);
    char headers[512];
    if (r->auth && r->auth[0])
        snprintf(headers, sizeof headers,
                 FWD_HEADER ": 1\r\nAuthorization: Bearer %s\r\n", r->auth);
    else
        snprintf(headers, sizeof headers, FWD_HEADER ": 1\r\n");
    r->id = httpc_request(k->http, r->method, r->target, headers, r->sbody,
                          r->sblen, on_answer, r);
    if (r->id == 0)
        return PZ_ESHUTDOWN; /* not reached: links are freed unlinked */
    r->link = k;
    return 0;
}

void fwd_cancel(struct fwd_req *r)
{
    if (r->wait)
        wait_end(r->wait);
    if (r->link) {
        httpc_cancel(r->link->http, r->id, NULL);
        r->link = NULL;
    }
}

void fwd_close_all(void)
{
    while (!pz_queue_empty(&links))
        link_free(container_of(pz_queue_head(&links), struct fwd_link, q));
    while (!pz_queue_empty(&waits)) {
        struct fwd_wait *w =
            container_of(pz_queue_head(&waits), struct fwd_wait, q);
        struct fwd_req *r = w->r;
        int err = w->err;
        wait_end(w);
        r->cb(r, err);
    }
}
