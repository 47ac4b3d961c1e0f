/* node.h - the replicated key-value node as the protocols see it: propose a
 * write, wait until a read is safe, look at the state machine.
 *
 * Requests are asynchronous. The caller embeds a struct node_req in its own
 * state, calls node_propose() or node_read(), and gets exactly one callback
 * later, from the loop (never from inside the call), unless it calls
 * node_cancel() first, after which no callback comes. A caller that goes
 * away (its connection closed) must cancel. */
#ifndef PZ_NODE_H
#define PZ_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "kv.h"
#include "queue.h"

struct node_req;
/* status: 0, or PZ_ENOTLEADER / PZ_ENOLEADER / PZ_ELEADERCHANGE /
 * PZ_ETIMEDOUT / PZ_ESHUTDOWN. */
typedef void (*node_req_cb)(struct node_req *req, int status);

struct node_req {
    struct pz_queue q;     /* in the node's waiting or done list */
    node_req_cb cb;        /* called once, unless cancelled */
    int status;            /* result, set before cb */
    bool queued;           /* q is linked */
    struct kv_result res;  /* writes: what apply did */
};

struct node_status {
    const char *id;         /* node-id */
    const char *role;       /* "leader", "follower", "candidate", ... */
    const char *leader;     /* leader's node-id, "" when unknown */
    uint64_t term;          /* current term */
    uint64_t commit_index;  /* highest committed log index */
    uint64_t applied_index; /* highest applied log index */
    uint64_t last_index;    /* last log index */
    size_t keys;            /* keys in the state machine */
};

/* Open the node (data directory, state machine). Returns 0 or a negative
 * code with a message in err. */
int node_init(uv_loop_t *loop, const struct pz_config *cfg, char *err,
              size_t errlen);
/* Fail every waiting request with PZ_ESHUTDOWN and release everything. */
void node_close(void);

/* Replicate an encoded kv command (kv_encode_*); cb once it is applied
 * here. Returns 0, or a negative code at once (cb never called). */
int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb);
/* cb once reading the local state machine is linearizable (stale: at the
 * next loop turn, without any check). */
int node_read(struct node_req *req, bool stale, node_req_cb cb);
/* Forget req: its callback will not be called. Idempotent. */
void node_cancel(struct node_req *req);

struct kv *node_kv(void);
/* True when this node is the leader (writes and linearizable reads are
 * served here). */
bool node_is_leader(void);
/* The known leader's HTTP or gRPC address ("host:port"), or NULL when this
 * node is the leader or no leader is known. Borrowed until the next loop
 * turn. Followers forward client requests there. */
const char *node_leader_http_addr(void);
const char *node_leader_grpc_addr(void);
void node_status(struct node_status *st);
/* Work to do before the loop sleeps: completes finished requests. */
void node_before_sleep(void);
/* True when node_before_sleep has work it could not finish this turn. */
bool node_has_work(void);

#endif
