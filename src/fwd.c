/* fwd.c - see fwd.h.
 *
 * Happy path: fwd_send finds (or makes) the client of the leader's
 * address, which writes the request on its kept-alive connection (dialled
 * if need be); the answer completes the request. Failure modes, from
 * httpc.h: an unreachable leader or a connection that breaks fails every
 * request on it (PZ_EIO), a malformed or oversized answer too (PZ_EPROTO),
 * an answer that does not come in time (PZ_ETIMEDOUT); the connection is
 * dropped and the next request dials again. Requests are never sent twice.
 * A cancelled request keeps its place, with no owner, until its answer
 * arrives, so that later answers still match their requests.
 *
 * Clients of addresses that are no longer the leader's are freed once
 * nothing waits on them: at most the current leader's and those with
 * requests in flight are kept. */
#include "fwd.h"

#include <stdio.h>
#include <string.h>

#include "httpc.h"
#include "queue.h"

struct fwd_link {
    struct pz_queue q;   /* in links */
    struct httpc *http;  /* the client of one leader address */
};

static struct pz_queue links = {&links, &links};
static uv_loop_t *loop;
static uint64_t timeout; /* ms a request may wait for its answer, 0: any */

void fwd_setup(uv_loop_t *l, uint64_t timeout_ms)
{
    loop = l;
    timeout = timeout_ms;
}

static void on_answer(const struct httpc_result *res, void *data)
{
    struct fwd_req *r = data;
    r->link = NULL;
    r->id = 0;
    if (res->err < 0) {
        r->cb(r, res->err == PZ_EPROTO || res->err == PZ_ETIMEDOUT ? res->err
                                                                  : PZ_EIO);
        return;
    }
    r->http_status = res->status;
    snprintf(r->content_type, sizeof r->content_type, "%s",
             res->content_type);
    snprintf(r->allow, sizeof r->allow, "%s", res->allow);
    pz_buf_reset(&r->body);
    pz_buf_append(&r->body, res->body, res->blen);
    r->cb(r, 0);
}

static void link_free(struct fwd_link *k)
{
    pz_queue_remove(&k->q);
    httpc_free(k->http);
    pz_free(k);
}

/* The client of addr, made if need be; idle clients of other addresses
 * go. */
static struct fwd_link *link_get(const char *addr)
{
    struct fwd_link *found = NULL;
    struct pz_queue *e = pz_queue_head(&links);
    while (e != &links) {
        struct fwd_link *k = container_of(e, struct fwd_link, q);
        e = e->next;
        if (strcmp(httpc_addr(k->http), addr) == 0)
            found = k;
        else if (httpc_pending(k->http) == 0)
            link_free(k);
    }
    if (found)
        return found;
    char name[300];
    snprintf(name, sizeof name, "forwarding to %s", addr);
    struct httpc_opts o = {
        .max_head = FWD_MAX_HEADER_BYTES,
        .max_body = FWD_MAX_BODY,
        .timeout_ms = timeout,
        .max_attempts = 1,
        .log_name = name,
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
    struct fwd_link *k = link_get(addr);
    char headers[512];
    pz_buf_init(&r->body);
    r->cb = cb;
    r->link = NULL;
    if (r->auth && r->auth[0])
        snprintf(headers, sizeof headers,
                 FWD_HEADER ": 1\r\nAuthorization: Bearer %s\r\n", r->auth);
    else
        snprintf(headers, sizeof headers, FWD_HEADER ": 1\r\n");
    r->id = httpc_request(k->http, method, target, headers, body, blen,
                          on_answer, r);
    if (r->id == 0)
        return PZ_ESHUTDOWN; /* not reached: links are freed unlinked */
    r->link = k;
    return 0;
}

void fwd_cancel(struct fwd_req *r)
{
    if (r->link) {
        httpc_cancel(r->link->http, r->id, NULL);
        r->link = NULL;
    }
}

void fwd_close_all(void)
{
    while (!pz_queue_empty(&links))
        link_free(container_of(pz_queue_head(&links), struct fwd_link, q));
}
