/* node_reqs.c - the node's request lists (see node_internal.h): a request
 * waits in one list, is completed by moving it to nd->done with its
 * status, and is called back from node_before_sleep. */
#include <string.h>

#include "log.h"
#include "node_internal.h"

/* --- request lists ------------------------------------------------------- */

void reqs_link(struct pz_queue *list, struct node_req *req)
{
    req->queued = true;
    pz_queue_push(list, &req->q);
}

void reqs_done(struct node_req *req, int status)
{
    if (req->queued)
        pz_queue_remove(&req->q);
    if (status < 0 && req->term)
        node_metrics_proposal_failed(); /* an accepted write */
    req->status = status;
    reqs_link(&nd->done, req);
}

void reqs_prepare(struct node_req *req, node_req_cb cb)
{
    pz_queue_init(&req->q);
    req->cb = cb;
    req->queued = false;
    req->status = 0;
    req->index = req->term = req->ctx = req->member = 0;
    req->read_waits = false;
    req->backup = false;
    req->deadline = NIO(now) + (uint64_t)nd->cfg->request_timeout_ms;
    memset(&req->res, 0, sizeof req->res);
    req->sink = NULL;
}

void reqs_finish_all(struct pz_queue *list, int status)
{
    while (!pz_queue_empty(list))
        reqs_done(container_of(pz_queue_head(list), struct node_req, q),
                 status);
}

/* Fail the requests of list past their deadline. Lists are not always in
 * deadline order (writes are kept in index order), so all are looked at. */
void reqs_expire(struct pz_queue *list, int status)
{
    uint64_t now = NIO(now);
    struct pz_queue *e = list->next;
    while (e != list) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->deadline <= now)
            reqs_done(r, status);
    }
}

/* --- the client-facing API --------------------------------------------------- */

/* Wait for the entry at req->index/term to apply. The list stays in index
 * order (a new term may reuse lower indexes). */
void reqs_link_proposal(struct node_req *req)
{
    struct pz_queue *e = nd->proposals.prev;
    while (e != &nd->proposals &&
           container_of(e, struct node_req, q)->index > req->index)
        e = e->prev;
    req->queued = true;
    pz_queue_push(e->next, &req->q); /* insert before e->next */
}
