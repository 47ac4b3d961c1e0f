/* node.c - the node: owns the state machine and orders every write through
 * it. On its own (no cluster configured yet) a write is applied as soon as
 * it is proposed and its callback runs on the next pass of the loop, so
 * callers see the same asynchronous contract the replicated node keeps. */
#include "node.h"

#include <string.h>
#include <sys/random.h>

#include "log.h"

struct node {
    uv_loop_t *loop;              /* the process loop */
    const struct pz_config *cfg;  /* borrowed from main */
    struct kv *kv;                /* the state machine */
    struct pz_queue done;         /* requests to call back */
    uint64_t applied;             /* entries applied */
    bool open;                    /* node_init succeeded */
};

static struct node node;

int node_init(uv_loop_t *loop, const struct pz_config *cfg, char *err,
              size_t errlen)
{
    uint64_t seed = 0;
    PZ_UNUSED(err);
    PZ_UNUSED(errlen);
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
        seed = (uint64_t)uv_hrtime();
    memset(&node, 0, sizeof node);
    node.loop = loop;
    node.cfg = cfg;
    node.kv = kv_new_seeded(seed);
    pz_queue_init(&node.done);
    node.open = true;
    return 0;
}

static void complete(struct node_req *req, int status)
{
    req->status = status;
    req->queued = true;
    pz_queue_push(&node.done, &req->q);
}

void node_close(void)
{
    if (!node.open)
        return;
    while (!pz_queue_empty(&node.done)) {
        struct node_req *r =
            container_of(pz_queue_head(&node.done), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, PZ_ESHUTDOWN);
    }
    kv_free(node.kv);
    node.kv = NULL;
    node.open = false;
}

int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb)
{
    pz_queue_init(&req->q);
    req->cb = cb;
    req->queued = false;
    int rv = kv_apply(node.kv, cmd, len, &req->res);
    if (rv < 0)
        return rv;
    node.applied++;
    complete(req, 0);
    return 0;
}

int node_read(struct node_req *req, bool stale, node_req_cb cb)
{
    PZ_UNUSED(stale);
    pz_queue_init(&req->q);
    req->cb = cb;
    req->queued = false;
    complete(req, 0);
    return 0;
}

void node_cancel(struct node_req *req)
{
    if (req->queued) {
        pz_queue_remove(&req->q);
        req->queued = false;
    }
}

struct kv *node_kv(void)
{
    return node.kv;
}

bool node_is_leader(void)
{
    return true;
}

const char *node_leader_http_addr(void)
{
    return NULL;
}

const char *node_leader_grpc_addr(void)
{
    return NULL;
}

void node_status(struct node_status *st)
{
    memset(st, 0, sizeof *st);
    st->id = node.cfg->node_id;
    st->role = "leader";
    st->leader = node.cfg->node_id;
    st->term = 1;
    st->commit_index = node.applied;
    st->applied_index = node.applied;
    st->last_index = node.applied;
    st->keys = kv_count(node.kv);
}

void node_before_sleep(void)
{
    /* Callbacks may propose again; those wait for the next turn. */
    struct pz_queue batch;
    pz_queue_init(&batch);
    while (!pz_queue_empty(&node.done)) {
        struct pz_queue *e = pz_queue_head(&node.done);
        pz_queue_remove(e);
        pz_queue_push(&batch, e);
    }
    while (!pz_queue_empty(&batch)) {
        struct node_req *r =
            container_of(pz_queue_head(&batch), struct node_req, q);
        pz_queue_remove(&r->q);
        r->queued = false;
        r->cb(r, r->status);
    }
}

bool node_has_work(void)
{
    return !pz_queue_empty(&node.done);
}
