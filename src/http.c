/* http.c - the node's HTTP/1.1 API (COMPAT.md's, plus /health, /status,
 * /cluster and the admin endpoints): its routes and handlers, on the
 * request loop of httpd.c.
 *
 * Happy path: httpd hands over a complete request -> http_api_decode
 * (http_parse.h) says what it asks -> answered at once (/health, /status,
 * errors) or held while node_read, node_propose, a membership change or a
 * forward to the leader (fwd.c) runs -> callback -> reply -> httpd serves
 * the next pipelined request. Failure modes: an API error (404, 405, 400
 * on bad JSON, 401 without the cluster token) gets its reply and the
 * connection stays open; a node error gets 500 or 503, a failed forward
 * 502 or 504; a connection that closes while its request is held cancels
 * the node request or the forward.
 *
 * Hostile clients are httpd's: request deadlines (client-header-timeout,
 * client-body-timeout: 408), the partial-input budget (503), eviction at
 * max-clients, malformed requests (4xx and close). */
#include "http.h"

#include <cJSON.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "etcd_gateway.h"
#include "fwd.h"
#include "http_parse.h"
#include "http_watch.h"
#include "log.h"
#include "node.h"
#include "node_lease.h"
#include "snapshot.h"
#include "stats.h"
#include "tokens.h"

struct http_conn {
    struct httpd_conn hc; /* the request loop (httpd.h); first */
    struct http_op op;    /* request being served */
    struct node_req req;  /* its node request, when held */
    struct fwd_req fwd;   /* its forwarded copy, when forwarding */
    bool forwarding;      /* fwd is in flight */
    struct snapshot_reader *snap; /* GET /admin/snapshot: the file sent */
    uint64_t snap_off;    /* bytes of it sent */
    bool snap_slot;       /* holds a snapshot-max-streams slot */
    int restarts;         /* times the request started over because the
                             leader changed while forwarding */
    int leader_waits;     /* waits for a leader to forward to since the
                             last forward sent (forward) */
    struct kv_sink sink;  /* a transaction's results, as it applies */
    struct pz_buf out;    /* ... rendered as JSON so far */
    size_t n_ops;         /* operations reported so far */
    size_t n_items;       /* items of the current operation */
    uint64_t count;       /* count of the last operation */
    bool truncated;       /* results dropped: over OUT_MAX */
    bool wrote;           /* the transaction's branch has a write */
    struct watch_stream *ws; /* GET /watch: its stream (http_watch.h) */
    char *fwd_token;      /* the client's bearer token, forwarded */
    size_t fwd_held;      /* bytes kept for the forward, counted against
                             max-pending-output (conn_hold_detached) */
    size_t fwd_answer;    /* the leader's answer held (hold_answer), the
                             same way until it is written to the client */
    struct etcd_gw *gw;      /* /v3/...: etcd's JSON gateway */
};

/* Most bytes of results one answer holds (/range, /txn); past it a range
 * stops early (more: true) and a transaction's answer says truncated. */
#define OUT_MAX (16u << 20)

#define MAX_RESTARTS 4 /* then 502 Leader unreachable */

static struct http_api_limits api_limits;
static const char *cluster_token; /* borrowed from the config: "" none */
static uint64_t started_ms;       /* conn_now() when the server started */

static struct http_conn *conn_of(struct httpd_conn *hc)
{
    return container_of(hc, struct http_conn, hc);
}

/* Answer h's request. httpd may serve the next request from inside the
 * call: nothing of this one may be used after it. */
static void reply(struct http_conn *h, int status, const char *ctype,
                  const char *body, size_t blen, const char *allow)
{
    struct httpd_reply r = {.status = status,
                            .ctype = ctype,
                            .body = body,
                            .blen = blen,
                            .allow = allow};
    httpd_reply(&h->hc, &r);
}

static void reply_text(struct http_conn *h, int status, const char *line,
                       const char *allow)
{
    httpd_text(&h->hc, status, line, allow);
}

/* Answer with X-Pyazdb-Revision: rev. */
static void reply_rev(struct http_conn *h, int status, const char *ctype,
                      const char *body, size_t blen, uint64_t rev)
{
    struct httpd_reply r = {.status = status,
                            .ctype = ctype,
                            .body = body,
                            .blen = blen,
                            .has_revision = true,
                            .revision = rev};
    httpd_reply(&h->hc, &r);
}

/* --- JSON of keys and values ----------------------------------------------
 * Keys and values are bytes. Valid UTF-8 goes out as a JSON string
 * ("key", "value"), anything else as base64 ("key_b64", "value_b64"). */

static void put_bytes_field(struct pz_buf *b, const char *name, const void *p,
                            size_t n)
{
    if (pz_utf8_valid(p, n)) {
        pz_buf_appendf(b, "\"%s\":", name);
        http_json_str(b, p, n);
    } else {
        pz_buf_appendf(b, "\"%s_b64\":\"", name);
        http_b64_encode(b, p, n);
        pz_buf_append(b, "\"", 1);
    }
}

static void put_kv(struct pz_buf *b, const struct kv_view *v)
{
    pz_buf_append(b, "{", 1);
    put_bytes_field(b, "key", v->key, v->klen);
    if (v->value) {
        pz_buf_append(b, ",", 1);
        put_bytes_field(b, "value", v->value, v->vlen);
    }
    pz_buf_appendf(b,
                   ",\"create_revision\":%llu,\"mod_revision\":%llu,"
                   "\"version\":%llu,\"lease\":%llu}",
                   (unsigned long long)v->meta.create_revision,
                   (unsigned long long)v->meta.mod_revision,
                   (unsigned long long)v->meta.version,
                   (unsigned long long)v->meta.lease);
}

void http_put_kv(struct pz_buf *b, const struct kv_view *v)
{
    put_kv(b, v);
}

/* At least what put_kv writes for v, without looking at its bytes: a JSON
 * string takes at most 6 bytes a byte, base64 4 for 3; names, punctuation
 * and four 20-digit numbers take less than the rest. */
static size_t kv_json_max(const struct kv_view *v)
{
    return 6 * (v->klen + (v->value ? v->vlen : 0)) + 256;
}

/* Room in max-pending-output for est more bytes of h's answer, with the
 * built bytes of it so far counted as output its connection holds
 * (conn_hold_output): checked before each item of a range or a
 * transaction is rendered, since the answers of every request a batch of
 * writes applies exist at once before any is sent. */
static bool out_room(struct http_conn *h, size_t built, size_t est)
{
    conn_hold_output(h->hc.c, built);
    return conn_output_room(h->hc.c, est);
}

static void reply_node_error(struct http_conn *h, int status)
{
    switch (status) {
    case PZ_ENOLEADER:
        reply_text(h, 503, FWD_NO_LEADER, NULL);
        break;
    case PZ_ENOTLEADER:
        reply_text(h, 503, FWD_NOT_LEADER, NULL);
        break;
    case PZ_EBUSY:
        reply_text(h, 503, "Leadership transfer in progress", NULL);
        break;
    case PZ_EOVERLOAD:
        reply_text(h, 503, "Too many writes waiting to commit; retry", NULL);
        break;
    case PZ_ELEADERCHANGE:
        reply_text(h, 503, "Leader changed before the write committed", NULL);
        break;
    case PZ_ESHUTDOWN:
        httpd_close_after(&h->hc);
        reply_text(h, 503, "Server is shutting down", NULL);
        break;
    case PZ_ETIMEDOUT:
        reply_text(h, 503, "Timed out waiting for the cluster", NULL);
        break;
    case PZ_ENOSPC: /* the NOSPACE alarm: GET /status says why */
        reply_text(h, 507, "no space left on device", NULL);
        break;
    default: {
        char line[128];
        snprintf(line, sizeof line, "Replication failed: %s",
                 pz_strerror(status));
        reply_text(h, 500, line, NULL);
    }
    }
}

static void on_read_ready(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    const uint8_t *val;
    size_t vlen;
    uint64_t rev = kv_revision(node_kv());
    if (kv_get(node_kv(), h->op.key, h->op.klen, &val, &vlen)) {
        reply_rev(h, 200, "text/plain", (const char *)val, vlen, rev);
    } else {
        static const char nf[] = "Key not found\n";
        reply_rev(h, 404, "text/plain", nf, sizeof nf - 1, rev);
    }
}

/* --- GET /range ------------------------------------------------------------
 */

/* An answer with no room in max-pending-output: nothing of it was made. */
static void reply_busy(struct http_conn *h)
{
    reply_text(h, 503,
               "Server busy: too many answers waiting for clients; retry "
               "later",
               NULL);
}

struct range_walk {
    struct http_conn *h;
    struct pz_buf *b;    /* the answer */
    uint64_t n;          /* keys counted or returned */
    bool more;           /* stopped before the end of the range */
    bool busy;           /* not even its first key had room */
    struct kv_view next; /* where: the first key not returned */
};

static int range_visit(void *arg, const struct kv_view *v)
{
    struct range_walk *w = arg;
    const struct http_op *op = &w->h->op;
    if (w->n >= op->limit || w->b->len > OUT_MAX) {
        w->more = true;
        w->next = *v;
        return 1;
    }
    /* With the key after it ("next") should the answer stop there. */
    size_t est = kv_json_max(v) + 6 * v->klen + 64;
    if (!out_room(w->h, w->b->len, est)) {
        /* Over max-pending-output: with keys already in it, the answer
         * stops here as at OUT_MAX (more, next: ask again from there);
         * without one, it is not made at all. */
        w->more = true;
        w->busy = w->n == 0;
        w->next = *v;
        return 1;
    }
    if (w->n)
        pz_buf_append(w->b, ",", 1);
    struct kv_view c = *v;
    if (op->keys_only)
        c.value = NULL;
    put_kv(w->b, &c);
    w->n++;
    return 0;
}

static void on_range_ready(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    uint64_t rev = kv_revision(node_kv());
    struct range_walk w = {.h = h, .b = &b};
    pz_buf_appendf(&b, "{\"revision\":%llu", (unsigned long long)rev);
    if (!h->op.count_only)
        pz_buf_append(&b, ",\"kvs\":[", 8);
    if (h->op.count_only) /* O(log n): no key visited */
        w.n = kv_range_count(node_kv(), h->op.key, h->op.klen, h->op.end,
                             h->op.elen, h->op.to_end);
    else
        kv_range(node_kv(), h->op.key, h->op.klen, h->op.end, h->op.elen,
                 h->op.to_end, range_visit, &w);
    conn_hold_output(h->hc.c, 0); /* the reply counts itself */
    if (w.busy) {
        pz_buf_free(&b);
        reply_busy(h);
        return;
    }
    if (!h->op.count_only)
        pz_buf_append(&b, "]", 1);
    pz_buf_appendf(&b, ",\"count\":%llu,\"more\":%s", (unsigned long long)w.n,
                   w.more ? "true" : "false");
    if (w.more) {
        pz_buf_append(&b, ",", 1);
        put_bytes_field(&b, "next", w.next.key, w.next.klen);
    }
    pz_buf_append(&b, "}\n", 2);
    reply_rev(h, 200, "application/json", b.data, b.len, rev);
    pz_buf_free(&b);
}

/* --- transactions ----------------------------------------------------------
 */

static const char *const op_names[] = {"",    "put",  "delete", "delete_range",
                                       "get", "range"};

static void sink_op_begin(void *arg, size_t i, const struct kv_op *op)
{
    struct http_conn *h = arg;
    (void)i;
    h->n_items = 0;
    bool read = op->type == KV_TOP_GET || op->type == KV_TOP_RANGE;
    if (!read)
        h->wrote = true;
    if (h->op.txn_kind != HTTP_TXN_JSON)
        return;
    if (h->n_ops++)
        pz_buf_append(&h->out, ",", 1);
    pz_buf_appendf(&h->out, "{\"op\":\"%s\",\"%s\":[", op_names[op->type],
                   read ? "kvs" : "prev_kvs");
}

static void sink_item(void *arg, const struct kv_view *v)
{
    struct http_conn *h = arg;
    if (h->op.txn_kind == HTTP_TXN_DELPREFIX)
        return; /* its answer is the count */
    if (h->truncated || h->out.len > OUT_MAX ||
        !out_room(h, h->out.len, kv_json_max(v))) {
        h->truncated = true;
        return;
    }
    if (h->n_items++)
        pz_buf_append(&h->out, ",", 1);
    put_kv(&h->out, v);
}

static void sink_op_end(void *arg, uint64_t count, bool more)
{
    struct http_conn *h = arg;
    h->count = count;
    if (h->op.txn_kind != HTTP_TXN_JSON)
        return;
    pz_buf_appendf(&h->out, "],\"count\":%llu,\"more\":%s}",
                   (unsigned long long)count, more ? "true" : "false");
}

/* The table's revision is at KV_REVISION_MAX: the write changed nothing,
 * and no write ever will on this table. */
static void reply_revision_max(struct http_conn *h)
{
    reply_text(h, 507,
               "The revision is at its maximum (2^62 - 1): the write was "
               "refused, nothing was done",
               NULL);
}

/* A /txn's JSON answer b. To a node that forwarded it, a branch that
 * only read says so (fwd.h): the node may have to drop the answer for
 * want of room, and must not then report a write. */
static void reply_txn(struct http_conn *h, const struct pz_buf *b, uint64_t rev)
{
    struct httpd_reply r = {
        .status = 200,
        .ctype = "application/json",
        .body = b->data,
        .blen = b->len,
        .has_revision = true,
        .revision = rev,
        .nothing_written =
            !h->wrote && http_req_header(&h->hc.p.req, "x-pyazdb-forwarded"),
    };
    httpd_reply(&h->hc, &r);
}

static void on_txn_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    conn_hold_output(h->hc.c, 0); /* the reply counts itself */
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    const struct kv_result *res = &req->res;
    if (res->status == KV_ELEASE_NOTFOUND) {
        reply_text(h, 404, "Lease not found", NULL);
        return;
    }
    if (res->status == KV_EREVISION) {
        reply_revision_max(h);
        return;
    }
    if (res->status == KV_ETXN_KEYS) {
        reply_text(h, 413,
                   "The transaction's ranges would read more than "
                   "txn-max-range-keys keys: nothing was done",
                   NULL);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    switch (h->op.txn_kind) {
    case HTTP_TXN_SET:
    case HTTP_TXN_DEL:
        if (res->succeeded) {
            reply_rev(h, 204, NULL, NULL, 0, res->revision);
            break;
        }
        if (h->truncated) { /* the current value had no room */
            reply_busy(h);
            break;
        }
        pz_buf_appendf(&b,
                       "{\"error\":\"Precondition failed\",\"revision\":%llu,"
                       "\"current\":%s",
                       (unsigned long long)res->revision,
                       h->out.len ? "" : "null");
        pz_buf_append(&b, h->out.data, h->out.len);
        pz_buf_append(&b, "}\n", 2);
        reply_rev(h, 412, "application/json", b.data, b.len, res->revision);
        break;
    case HTTP_TXN_DELPREFIX:
        pz_buf_appendf(&b, "{\"deleted\":%llu,\"revision\":%llu}\n",
                       (unsigned long long)h->count,
                       (unsigned long long)res->revision);
        reply_rev(h, 200, "application/json", b.data, b.len, res->revision);
        break;
    default:
        pz_buf_appendf(&b, "{\"succeeded\":%s,\"revision\":%llu,",
                       res->succeeded ? "true" : "false",
                       (unsigned long long)res->revision);
        if (h->truncated)
            pz_buf_append(&b, "\"truncated\":true,", 17);
        pz_buf_append(&b, "\"results\":[", 11);
        pz_buf_append(&b, h->out.data, h->out.len);
        pz_buf_append(&b, "]}\n", 3);
        reply_txn(h, &b, res->revision);
    }
    pz_buf_free(&b);
}

static void start_write(struct http_conn *h);

/* The answers of a refused membership request (removal, transfer), at
 * once or after a removal waited (node_remove_member). False if status is
 * not one of them. */
static bool reply_membership_refusal(struct http_conn *h, int status)
{
    bool remove = h->op.kind == HTTP_OP_REMOVE;
    if (status == PZ_ENOTFOUND)
        reply_text(h, 404, "No such member", NULL);
    else if (status == PZ_EBUSY &&
             (remove || h->op.kind == HTTP_OP_TRANSFER))
        reply_text(h, 409,
                   remove ? "Another membership change is in progress"
                          : "A leadership transfer is in progress",
                   NULL);
    else if (status == PZ_EINVAL)
        reply_text(h, 400,
                   remove ? "Cannot remove the last voter"
                          : "Member is not a voter",
                   NULL);
    else
        return false;
    return true;
}

static void on_write_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (h->op.kind == HTTP_OP_REMOVE) {
        if (status == PZ_ENOTLEADER || status == PZ_ENOLEADER) {
            /* The removal waited for a change in progress (a transfer,
             * say) and leadership moved meanwhile; nothing was proposed:
             * start over, which forwards it to the new leader or waits
             * for one. */
            start_write(h);
            return;
        }
        if (reply_membership_refusal(h, status))
            return;
    }
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    if (req->res.status == KV_ELEASE_NOTFOUND) {
        reply_text(h, 404, "Lease not found", NULL);
        return;
    }
    if (req->res.status == KV_EREVISION) {
        reply_revision_max(h);
        return;
    }
    reply(h, 204, NULL, NULL, 0, NULL);
}

/* --- leases ----------------------------------------------------------------
 * Grants and revokes are Raft entries; keep-alives and TTL queries are the
 * leader's (its clock decides expiry), answered after a ReadIndex round
 * confirms it still leads. A follower forwards all of them. */

static void on_lease_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    const struct kv_result *res = &req->res;
    switch (res->status) {
    case KV_ELEASE_NOTFOUND:
        reply_text(h, 404, "Lease not found", NULL);
        return;
    case KV_ELEASE_EXISTS:
        reply_text(h, 409, "Lease ID already exists", NULL);
        return;
    case KV_ELEASE_FULL:
        reply_text(h, 429, "Too many leases", NULL);
        return;
    case KV_EREVISION:
        reply_revision_max(h);
        return;
    default:
        break;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    if (h->op.kind == HTTP_OP_LEASE_GRANT)
        pz_buf_appendf(&b, "{\"id\":%llu,\"ttl\":%llu}\n",
                       (unsigned long long)h->op.lease_id,
                       (unsigned long long)h->op.lease_ttl);
    else
        pz_buf_appendf(&b, "{\"id\":%llu,\"revision\":%llu,\"deleted\":%llu}\n",
                       (unsigned long long)h->op.lease_id,
                       (unsigned long long)res->revision,
                       (unsigned long long)res->deleted);
    reply_rev(h, 200, "application/json", b.data, b.len, res->revision);
    pz_buf_free(&b);
}

struct lease_keys {
    struct pz_buf *b; /* the answer */
    uint64_t n;       /* keys written */
    bool more;        /* stopped at OUT_MAX */
};

static int lease_key_visit(void *arg, const struct kv_view *v)
{
    struct lease_keys *w = arg;
    if (w->b->len > OUT_MAX) {
        w->more = true;
        return 1;
    }
    if (w->n++)
        pz_buf_append(w->b, ",", 1);
    pz_buf_append(w->b, "{", 1);
    put_bytes_field(w->b, "key", v->key, v->klen);
    pz_buf_append(w->b, "}", 1);
    return 0;
}

/* {"id":..,"ttl":..,"remaining":..,"remaining_ms":..,"count":..} without
 * the closing brace. */
static void put_lease(struct pz_buf *b, const struct kv_lease *l)
{
    uint64_t ms = 0;
    node_lease_remaining(l->id, &ms);
    pz_buf_appendf(b,
                   "{\"id\":%llu,\"ttl\":%llu,\"remaining\":%llu,"
                   "\"remaining_ms\":%llu,\"count\":%llu",
                   (unsigned long long)l->id, (unsigned long long)l->ttl,
                   (unsigned long long)((ms + 999) / 1000),
                   (unsigned long long)ms, (unsigned long long)l->nkeys);
}

static void on_lease_read(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    if (!node_is_leader()) {
        /* Leadership moved during the round: ask the new leader. */
        if (h->restarts++ < MAX_RESTARTS)
            start_write(h);
        else
            reply_node_error(h, PZ_ENOTLEADER);
        return;
    }
    struct kv *kv = node_kv();
    uint64_t rev = kv_revision(kv);
    struct kv_lease l;
    uint64_t ttl = 0;
    struct pz_buf b;
    pz_buf_init(&b);
    if (h->op.kind == HTTP_OP_LEASE_LIST) {
        bool more = false;
        pz_buf_appendf(&b, "{\"revision\":%llu,\"leases\":[",
                       (unsigned long long)rev);
        for (size_t i = 0; i < kv_lease_count(kv); i++) {
            if (b.len > OUT_MAX) {
                more = true;
                break;
            }
            kv_lease_at(kv, i, &l);
            if (i)
                pz_buf_append(&b, ",", 1);
            put_lease(&b, &l);
            pz_buf_append(&b, "}", 1);
        }
        pz_buf_appendf(&b, "],\"count\":%llu,\"more\":%s}\n",
                       (unsigned long long)kv_lease_count(kv),
                       more ? "true" : "false");
        reply_rev(h, 200, "application/json", b.data, b.len, rev);
    } else if (!kv_lease_get(kv, h->op.lease_id, &l) ||
               (h->op.kind == HTTP_OP_LEASE_KEEPALIVE &&
                !node_lease_keepalive(l.id, &ttl))) {
        /* An expired lease whose revoke is in flight is gone too. */
        static const char nf[] = "Lease not found\n";
        reply_rev(h, 404, "text/plain", nf, sizeof nf - 1, rev);
    } else if (h->op.kind == HTTP_OP_LEASE_KEEPALIVE) {
        pz_buf_appendf(&b, "{\"id\":%llu,\"ttl\":%llu}\n",
                       (unsigned long long)l.id, (unsigned long long)ttl);
        reply_rev(h, 200, "application/json", b.data, b.len, rev);
    } else {
        put_lease(&b, &l);
        if (h->op.keys_only) {
            struct lease_keys w = {.b = &b};
            pz_buf_append(&b, ",\"keys\":[", 9);
            kv_lease_keys(kv, l.id, lease_key_visit, &w);
            pz_buf_appendf(&b, "],\"more\":%s", w.more ? "true" : "false");
        }
        pz_buf_append(&b, "}\n", 2);
        reply_rev(h, 200, "application/json", b.data, b.len, rev);
    }
    pz_buf_free(&b);
}

/* Start a lease request on the leader; PZ_ENOTLEADER when this node does
 * not lead, or another code to answer with. */
static int start_lease(struct http_conn *h)
{
    if (!node_is_leader())
        return PZ_ENOTLEADER; /* forward: sent, or waits for a leader */
    struct http_op *op = &h->op;
    struct pz_buf cmd;
    int rv;
    switch (op->kind) {
    case HTTP_OP_LEASE_GRANT: {
        struct kv_lease l;
        if (op->lease_ttl > node_lease_max_ttl()) {
            reply_text(h, 400, "ttl is over lease-max-ttl", NULL);
            return 0;
        }
        if (kv_lease_count(node_kv()) >= node_lease_max_count()) {
            reply_text(h, 429, "Too many leases (lease-max-count)", NULL);
            return 0;
        }
        if (op->lease_id == 0)
            op->lease_id = node_lease_new_id();
        else if (kv_lease_get(node_kv(), op->lease_id, &l)) {
            reply_text(h, 409, "Lease ID already exists", NULL);
            return 0;
        }
        pz_buf_init(&cmd);
        kv_encode_lease_grant(&cmd, op->lease_id, op->lease_ttl);
        rv = node_propose(&h->req, (const uint8_t *)cmd.data, cmd.len,
                          on_lease_done);
        pz_buf_free(&cmd);
        return rv;
    }
    case HTTP_OP_LEASE_REVOKE:
        pz_buf_init(&cmd);
        kv_encode_lease_revoke(&cmd, op->lease_id);
        rv = node_propose(&h->req, (const uint8_t *)cmd.data, cmd.len,
                          on_lease_done);
        pz_buf_free(&cmd);
        return rv;
    default:
        return node_read(&h->req, false, on_lease_read);
    }
}

/* Reply 200 with o (consumed) as one line of JSON. */
static void reply_json(struct http_conn *h, cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "%s\n", s);
    cJSON_free(s);
    reply(h, 200, "application/json", b.data, b.len, NULL);
    pz_buf_free(&b);
}

static void add_u64(cJSON *o, const char *name, uint64_t v)
{
    /* Raw numbers: cJSON's doubles would round 64-bit values. */
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    cJSON_AddRawToObject(o, name, num);
}

/* The members array of /status (cluster false) and /cluster (true): one
 * writer for both. The member's name is both "id" and "name" in each:
 * /status first said "name" and /cluster "id", and clients read both;
 * /cluster also says which member leads. Replication progress only where
 * it is known, on the leader. */
static void add_members(cJSON *o, const struct node_status *st, bool cluster)
{
    cJSON *ms = cJSON_AddArrayToObject(o, "members");
    for (size_t i = 0; i < st->n_members; i++) {
        const struct node_member *m = &st->members[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "id", m->name);
        cJSON_AddStringToObject(j, "name", m->name);
        cJSON_AddStringToObject(j, "raft_addr", m->raft);
        cJSON_AddStringToObject(j, "http_addr", m->http);
        cJSON_AddStringToObject(j, "grpc_addr", m->grpc);
        cJSON_AddBoolToObject(j, "voter", m->voter);
        if (cluster)
            cJSON_AddBoolToObject(j, "leader",
                                  strcmp(m->name, st->leader) == 0);
        if (strcmp(st->role, "leader") == 0) {
            add_u64(j, "match_index", m->match);
            add_u64(j, "last_contact_ms", m->last_contact_ms);
            if (!cluster) {
                /* What a silent member said of itself (node_status). */
                cJSON *al = cJSON_AddArrayToObject(j, "alarms");
                if (m->nospace) {
                    cJSON_AddItemToArray(al, cJSON_CreateString("NOSPACE"));
                    cJSON_AddStringToObject(j, "alarm_reason",
                                            m->alarm_reason);
                }
            }
        }
        cJSON_AddItemToArray(ms, j);
    }
}

static void reply_status(struct http_conn *h)
{
    struct node_status st;
    node_status(&st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", st.id);
    cJSON_AddStringToObject(o, "role", st.role);
    cJSON_AddStringToObject(o, "leader", st.leader);
    cJSON_AddStringToObject(o, "version", PZ_VERSION);
    add_u64(o, "uptime_seconds", (conn_now() - started_ms) / 1000);
    add_u64(o, "keys", st.keys);
    add_u64(o, "revision", st.revision);
    add_u64(o, "term", st.term);
    add_u64(o, "commit_index", st.commit_index);
    add_u64(o, "applied_index", st.applied_index);
    add_u64(o, "last_index", st.last_index);
    add_u64(o, "persisted_index", st.persisted_index);
    add_u64(o, "uncommitted_bytes", st.uncommitted_bytes);
    add_u64(o, "fsyncs", st.fsyncs);
    uint64_t snap_index, snap_size;
    node_snapshot_info(&snap_index, &snap_size);
    add_u64(o, "snapshot_index", snap_index);
    add_u64(o, "snapshot_size", snap_size);
    /* Order-independent digest of the state machine: equal on nodes that
     * applied the same entries (compare at equal applied_index). Left out
     * for a client whose token may not read every key. */
    if (auth_http_sees_all(&h->hc.p.req)) {
        char dg[24];
        snprintf(dg, sizeof dg, "%016llx",
                 (unsigned long long)kv_digest(node_kv()));
        cJSON_AddStringToObject(o, "digest", dg);
    }
    add_u64(o, "fsync_entries", st.fsync_entries);
    add_u64(o, "partial_input", conn_in_total());
    add_u64(o, "pending_output", conn_output_total());
    cJSON *alarms = cJSON_AddArrayToObject(o, "alarms");
    if (st.nospace) {
        cJSON_AddItemToArray(alarms, cJSON_CreateString("NOSPACE"));
        cJSON_AddStringToObject(o, "alarm_reason", st.alarm_reason);
    }
    add_members(o, &st, false);
    reply_json(h, o);
}

/* GET /health: 200 with a line of JSON when this node can serve
 * linearizable requests now (node_health, the rule gRPC Health uses too),
 * else 503 with the reason. With serializable=true, liveness only: the
 * process answers and has loaded its state (the HTTP port opens after
 * that), so 200 whatever the cluster, saying whether it is linearizable. */
static void reply_health(struct http_conn *h)
{
    struct node_health nh;
    bool ok = node_health(&nh);
    if (!ok && !h->op.serializable) {
        char line[256];
        snprintf(line, sizeof line, "Not serving linearizable requests: %s",
                 nh.reason);
        reply_text(h, 503, line, NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "health", "ok");
    cJSON_AddStringToObject(o, "role", nh.role);
    cJSON_AddStringToObject(o, "leader", nh.leader);
    add_u64(o, "term", nh.term);
    cJSON_AddBoolToObject(o, "linearizable", ok);
    if (!ok)
        cJSON_AddStringToObject(o, "reason", nh.reason);
    reply_json(h, o);
}

static void on_snapshot_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_text(h, 500, "Snapshot failed (see the server log)", NULL);
        return;
    }
    uint64_t index, size;
    node_snapshot_info(&index, &size);
    cJSON *o = cJSON_CreateObject();
    add_u64(o, "snapshot_index", index);
    add_u64(o, "snapshot_size", size);
    reply_json(h, o);
}

/* GET /admin/snapshot (a backup): a linearizable read first, so that
 * the snapshot covers every write acknowledged before the request on any
 * node; then a snapshot of at least that index; then its file, streamed
 * as the client reads it (on_stream), from a descriptor that a prune
 * cannot take away. */
#define BACKUP_CHUNK (256 * 1024)

static void on_backup_snap(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    char err[SNAPSHOT_ERRMSG_SIZE];
    uint64_t index;
    if (status < 0) {
        reply_text(h, 500, "Snapshot failed (see the server log)", NULL);
        return;
    }
    if (node_snapshot_open(&h->snap, &index, err, sizeof err) < 0) {
        pz_warn("GET /admin/snapshot: %s", err);
        reply_text(h, 500, "Snapshot failed (see the server log)", NULL);
        return;
    }
    h->snap_off = 0;
    pz_info("streaming snapshot at index %llu (%llu bytes) to %s",
            (unsigned long long)index,
            (unsigned long long)snapshot_reader_size(h->snap), h->hc.c->peer);
    httpd_stream_begin(&h->hc, 200, "application/octet-stream",
                       snapshot_reader_size(h->snap));
}

static void on_backup_read(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    /* The read index: every write acknowledged before the request. */
    uint64_t retry_ms;
    int rv =
        node_snapshot_backup(&h->req, h->req.index, on_backup_snap, &retry_ms);
    if (rv == PZ_EBUSY) {
        char line[160];
        snprintf(line, sizeof line,
                 "A snapshot for backups was started less than "
                 "snapshot-backup-interval ago; retry in %llu s",
                 (unsigned long long)((retry_ms + 999) / 1000));
        reply_text(h, 503, line, NULL);
    } else if (rv < 0) {
        on_backup_snap(&h->req, PZ_EIO);
    }
}

static void on_stream(struct httpd_conn *hc)
{
    static char buf[BACKUP_CHUNK];
    struct http_conn *h = conn_of(hc);
    char err[SNAPSHOT_ERRMSG_SIZE];
    size_t got = 0;
    if (h->ws) {
        http_watch_on_stream(h->ws);
        return;
    }
    if (h->gw) {
        etcd_gw_on_stream(h->gw);
        return;
    }
    size_t want = (size_t)PZ_MIN((uint64_t)sizeof buf, hc->stream_left);
    if (h->snap == NULL ||
        snapshot_reader_read(h->snap, h->snap_off, buf, want, &got, err,
                             sizeof err) < 0 ||
        got != want) {
        pz_warn("GET /admin/snapshot: %s",
                got != want ? "the file shrank" : err);
        httpd_stream_abort(hc);
        return;
    }
    h->snap_off += got;
    httpd_stream_write(hc, buf, got); /* may end the request: last */
}

static void reply_cluster(struct http_conn *h)
{
    struct node_status st;
    node_status(&st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "leader", st.leader);
    add_u64(o, "term", st.term);
    add_members(o, &st, true);
    reply_json(h, o);
}

static void start_cluster(struct http_conn *h);

/* The leader's answer to h's forward, as it arrives, would hold bytes in
 * all: room by the rule of the request (conn_output_room), else the
 * answer is dropped (on_forwarded says what then). Counted until it is
 * written to the client's connection, where it counts as its output. */
static bool hold_answer(struct fwd_req *f, size_t bytes)
{
    struct http_conn *h = container_of(f, struct http_conn, fwd);
    conn_hold_detached(&h->fwd_answer, 0); /* bytes is all of it */
    if (bytes && !conn_output_room(h->hc.c, bytes))
        return false;
    conn_hold_detached(&h->fwd_answer, bytes);
    return true;
}

/* The leader answered h's forward with status, but its body had no room
 * in max-pending-output and was dropped. A read is refused as a range
 * with no room is, and so is a transaction the leader says changed
 * nothing (its branch only read: fwd_req.nothing_written); a write the
 * leader applied (a 2xx answer) must not look refused, nor retried as
 * one: it says so, as etcd's Put does; any other answer keeps the
 * leader's status. */
static void reply_answer_no_room(struct http_conn *h, int status)
{
    char msg[200];
    if (h->hc.p.req.method == HTTP_GET ||
        (status >= 200 && status <= 299 && h->fwd.nothing_written)) {
        reply_busy(h);
        return;
    }
    if (status >= 200 && status <= 299 && h->fwd.revision) {
        snprintf(msg, sizeof msg,
                 "The write was applied at revision %llu, but its response "
                 "would take the answers waiting for clients past "
                 "max-pending-output (%zu bytes)",
                 (unsigned long long)h->fwd.revision, conn_output_max());
        status = 500;
    } else if (status >= 200 && status <= 299) {
        snprintf(msg, sizeof msg,
                 "The request was applied, but its response would take the "
                 "answers waiting for clients past max-pending-output (%zu "
                 "bytes)",
                 conn_output_max());
        status = 500;
    } else {
        snprintf(msg, sizeof msg,
                 "The leader's response would take the answers waiting for "
                 "clients past max-pending-output (%zu bytes)",
                 conn_output_max());
    }
    reply_text(h, status, msg, NULL);
}

static void on_forwarded(struct fwd_req *f, int status)
{
    struct http_conn *h = container_of(f, struct http_conn, fwd);
    h->forwarding = false;
    conn_hold_detached(&h->fwd_held, 0);
    /* The answer is written below (counted as the connection's output
     * from there), or dropped. */
    conn_hold_detached(&h->fwd_answer, 0);
    if (status == PZ_ELEADERCHANGE && h->restarts++ < MAX_RESTARTS) {
        /* fwd.c could not reach the leader and no other node leads now
         * (nothing unsafe was sent): start over, which proposes here if
         * this node won, or waits for an election. */
        pz_buf_free(&h->fwd.body);
        if (h->op.kind == HTTP_OP_CLUSTER)
            start_cluster(h);
        else
            start_write(h);
        return;
    }
    if (status == PZ_ENOSPC) {
        reply_answer_no_room(h, f->http_status);
    } else if (status == PZ_EPROTO) {
        reply_text(h, 502, "Bad response from the leader", NULL);
    } else if (status == PZ_ETIMEDOUT) {
        reply_text(h, 504, "The leader did not answer in time", NULL);
    } else if (status < 0 && h->hc.srv->draining) {
        /* Cut by our own shutdown (fwd_close_all), not by the leader; it
         * may or may not have been applied, as gRPC's cut calls. */
        reply_node_error(h, PZ_ESHUTDOWN);
    } else if (status < 0) {
        reply_text(h, 502, "Leader unreachable", NULL);
    } else {
        /* Relay the leader's answer as it is, X-Pyazdb-Revision too
         * (its body is freed once the answer is written: on_done). */
        struct httpd_reply r = {.status = f->http_status,
                                .ctype = f->content_type[0] ? f->content_type
                                                            : "text/plain",
                                .body = f->body.data,
                                .blen = f->body.len,
                                .allow = f->allow[0] ? f->allow : NULL,
                                .has_revision = f->has_revision,
                                .revision = f->revision};
        httpd_reply(&h->hc, &r);
    }
}

static void on_leader_known(struct node_req *req, int status);

/* A follower sends the write to the leader over the kept-alive
 * connection fwd.c holds for it. With no leader known, or not yet its
 * HTTP address (a founding member learns it from its first link to the
 * leader), it waits for one it can reach (node_wait_leader, bounded by
 * request-timeout) and starts over, as a write that finds no leader
 * does; not twice in a row with no forward sent between (the node says
 * a leader it can reach is known, yet its HTTP address is not). */
static void forward(struct http_conn *h)
{
    const char *addr = node_leader_http_addr();
    struct http_req *req = &h->hc.p.req;
    if (http_req_header(req, "x-pyazdb-forwarded")) {
        /* It came from a node that took us for the leader: never forward
         * twice; the client retries once the cluster agrees. */
        reply_node_error(h, PZ_ENOTLEADER);
        return;
    }
    if (addr == NULL && h->leader_waits < 2) {
        h->leader_waits++;
        node_wait_leader(&h->req, on_leader_known);
        return;
    }
    if (addr == NULL) {
        reply_text(h, 503, "Leader address not known yet", NULL);
        return;
    }
    /* What the request keeps until the leader answers (its body, which
     * fwd.c sends without a copy, and what was decoded from it) counts
     * with the answers waiting for clients: a slow leader must not make
     * a follower hold every large request sent to it meanwhile. */
    size_t held = req->body.cap + h->op.cmd.cap;
    if (!conn_output_room(h->hc.c, held)) {
        reply_text(h, 503,
                   "Server busy: too many requests waiting for the leader; "
                   "retry later",
                   NULL);
        return;
    }
    conn_hold_detached(&h->fwd_held, held);
    /* The request passed our checks: the leader gets our token, or with
     * client tokens the client's own, which it checks again (auth.h).
     * Reads may be sent again if the connection is lost (fwd.h). */
    h->fwd.auth = cluster_token;
    const char *tok = http_req_header(req, "authorization");
    size_t toklen = tok ? strlen(tok) : 0;
    if (auth_on() && tok && http_bearer_value(&tok, &toklen) &&
        toklen <= TOKEN_MAX) {
        pz_free(h->fwd_token);
        h->fwd_token = pz_memdup(tok, toklen + 1);
        h->fwd_token[toklen] = '\0';
        h->fwd.auth = h->fwd_token;
    }
    h->fwd.idempotent = req->method == HTTP_GET;
    h->fwd.hold = hold_answer;
    int rv = fwd_send(&h->fwd, addr, llhttp_method_name(req->method),
                      req->url.data, req->body.data ? req->body.data : "",
                      req->body.len, on_forwarded);
    if (rv < 0) {
        conn_hold_detached(&h->fwd_held, 0);
        reply_text(h, 502, "Leader unreachable", NULL);
        return;
    }
    h->forwarding = true;
    h->leader_waits = 0;
}

static void on_leader_known(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status == PZ_ETIMEDOUT) { /* a leader, but not its address */
        reply_text(h, 503, "Leader address not known yet", NULL);
        return;
    }
    if (status < 0) {
        reply_node_error(h, status);
        return;
    }
    if (h->op.kind == HTTP_OP_CLUSTER)
        start_cluster(h);
    else
        start_write(h);
}

/* GET /cluster (held): replication progress is the leader's to tell, so
 * a follower forwards it; answered here when this node leads, was itself
 * forwarded to, or when no leader is known before request-timeout. */
static void start_cluster(struct http_conn *h)
{
    if (node_is_leader() ||
        http_req_header(&h->hc.p.req, "x-pyazdb-forwarded")) {
        reply_cluster(h);
    } else if (node_leader_http_addr()) {
        forward(h);
    } else if (h->restarts > 0) {
        /* came back from a lost forward: wait for the next leader */
        node_wait_leader(&h->req, on_leader_known);
    } else {
        reply_cluster(h);
    }
}

static void on_transfer_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status == 0)
        reply(h, 204, NULL, NULL, 0, NULL);
    else if (status == PZ_ELEADERCHANGE)
        reply_text(h, 409, "Another node won the election", NULL);
    else if (status == PZ_ETIMEDOUT)
        reply_text(h, 503, "Leadership transfer did not complete", NULL);
    else
        reply_node_error(h, status);
}

/* Run a request that needs the leader (writes, membership changes) here
 * if this node leads, forward it if another does, wait (bounded) for an
 * election if none does. h's request is held. */
static void start_write(struct http_conn *h)
{
    struct pz_buf cmd;
    int rv;
    pz_buf_init(&cmd);
    switch (h->op.kind) {
    case HTTP_OP_SET:
    case HTTP_OP_DEL:
        if (h->op.kind == HTTP_OP_SET)
            rv = kv_encode_set_lease(&cmd, h->op.key, h->op.klen, h->op.value,
                                     h->op.vlen, h->op.lease);
        else
            rv = kv_encode_del(&cmd, h->op.key, h->op.klen);
        if (rv == 0)
            rv = node_propose(&h->req, (const uint8_t *)cmd.data, cmd.len,
                              on_write_done);
        break;
    case HTTP_OP_TXN:
        pz_buf_reset(&h->out);
        h->n_ops = h->n_items = 0;
        h->count = 0;
        h->truncated = false;
        h->wrote = false;
        h->sink = (struct kv_sink){.op_begin = sink_op_begin,
                                   .item = sink_item,
                                   .op_end = sink_op_end,
                                   .arg = h};
        rv = node_propose_sink(&h->req, (const uint8_t *)h->op.cmd.data,
                               h->op.cmd.len, &h->sink, on_txn_done);
        break;
    case HTTP_OP_REMOVE:
        rv = node_remove_member(&h->req, h->op.key, on_write_done);
        break;
    case HTTP_OP_TRANSFER:
        rv = node_transfer(&h->req, h->op.key, on_transfer_done);
        break;
    case HTTP_OP_LEASE_GRANT:
    case HTTP_OP_LEASE_KEEPALIVE:
    case HTTP_OP_LEASE_REVOKE:
    case HTTP_OP_LEASE_GET:
    case HTTP_OP_LEASE_LIST:
        rv = start_lease(h);
        break;
    default:
        pz_assert(0);
    }
    pz_buf_free(&cmd);
    if (rv == PZ_ETOOBIG) {
        reply_text(h, 413, "Request too large", NULL);
    } else if (reply_membership_refusal(h, rv)) {
        /* answered */
    } else if (rv == PZ_ENOTLEADER) {
        forward(h);
    } else if (rv == PZ_ENOLEADER) {
        node_wait_leader(&h->req, on_leader_known);
    } else if (rv < 0) {
        reply_node_error(h, rv);
    }
}

/* The request's method label in pyazdb_requests_total: a fixed name per
 * route, never client text. */
static const char *op_route(enum http_op_kind kind)
{
    switch (kind) {
    case HTTP_OP_ERROR:
        return "error";
    case HTTP_OP_GET:
        return "get";
    case HTTP_OP_SET:
        return "set";
    case HTTP_OP_DEL:
        return "delete";
    case HTTP_OP_HEALTH:
        return "health";
    case HTTP_OP_STATUS:
        return "status";
    case HTTP_OP_CLUSTER:
        return "cluster";
    case HTTP_OP_REMOVE:
        return "remove_member";
    case HTTP_OP_TRANSFER:
        return "transfer";
    case HTTP_OP_SNAPSHOT:
        return "snapshot";
    case HTTP_OP_BACKUP:
        return "backup";
    case HTTP_OP_METRICS:
        return "metrics";
    case HTTP_OP_RANGE:
        return "range";
    case HTTP_OP_TXN:
        return "txn";
    case HTTP_OP_WATCH:
        return "watch";
    case HTTP_OP_LEASE_GRANT:
        return "lease_grant";
    case HTTP_OP_LEASE_KEEPALIVE:
        return "lease_keepalive";
    case HTTP_OP_LEASE_REVOKE:
        return "lease_revoke";
    case HTTP_OP_LEASE_GET:
        return "lease";
    case HTTP_OP_LEASE_LIST:
        return "leases";
    }
    return "other";
}

/* GET /metrics: the Prometheus text format (stats.h). Like /status, it
 * needs no token: it shows no keys or values. */
static void reply_metrics(struct http_conn *h)
{
    struct pz_buf b;
    pz_buf_init(&b);
    stats_render(&b);
    reply(h, 200, STATS_CONTENT_TYPE, b.data, b.len, NULL);
    pz_buf_free(&b);
}

/* Serve a complete request (httpd_ops.on_request). */
static void on_request(struct httpd_conn *hc)
{
    struct http_conn *h = conn_of(hc);
    int rv;
    h->restarts = 0;
    h->leader_waits = 0;
    if (etcd_gw_match(&hc->p.req)) {
        hc->route = "etcd_gateway";
        etcd_gw_start(hc, &h->gw);
        return;
    }
    http_api_decode(&hc->p.req, &api_limits, &h->op);
    hc->route = op_route(h->op.kind);
    /* Tokens (auth.h), and the cluster token of the admin routes. */
    char why[256];
    int denied = auth_http(&hc->p.req, &h->op, why, sizeof why);
    if (denied != AUTH_OK) {
        reply_text(h, denied, why, NULL);
        return;
    }
    switch (h->op.kind) {
    case HTTP_OP_ERROR:
        reply_text(h, h->op.status, h->op.reason, h->op.allow);
        return;
    case HTTP_OP_HEALTH:
        reply_health(h);
        return;
    case HTTP_OP_STATUS:
        reply_status(h);
        return;
    case HTTP_OP_METRICS:
        reply_metrics(h);
        return;
    case HTTP_OP_GET:
        httpd_hold(hc);
        rv = node_read(&h->req, h->op.stale, on_read_ready);
        break;
    case HTTP_OP_RANGE:
        httpd_hold(hc);
        rv = node_read(&h->req, h->op.stale, on_range_ready);
        break;
    case HTTP_OP_SET:
    case HTTP_OP_DEL:
    case HTTP_OP_TXN:
    case HTTP_OP_REMOVE:
    case HTTP_OP_TRANSFER:
    case HTTP_OP_LEASE_GRANT:
    case HTTP_OP_LEASE_KEEPALIVE:
    case HTTP_OP_LEASE_REVOKE:
    case HTTP_OP_LEASE_GET:
    case HTTP_OP_LEASE_LIST:
        httpd_hold(hc);
        start_write(h);
        return;
    case HTTP_OP_SNAPSHOT:
        httpd_hold(hc);
        if (node_snapshot_now(&h->req, on_snapshot_done) < 0)
            on_snapshot_done(&h->req, PZ_EIO);
        return;
    case HTTP_OP_BACKUP:
        if (!node_snapshot_stream_get()) {
            reply_text(h, 503,
                       "Too many snapshots being sent "
                       "(snapshot-max-streams); retry later",
                       NULL);
            return;
        }
        h->snap_slot = true;
        httpd_hold_until_eof(hc); /* a client gone calls its snapshot off */
        rv = node_read(&h->req, false, on_backup_read);
        break;
    case HTTP_OP_CLUSTER:
        httpd_hold(hc);
        start_cluster(h);
        return;
    case HTTP_OP_WATCH:
        http_watch_start(hc, &h->ws);
        return;
    default:
        pz_assert(0);
    }
    if (rv < 0)
        reply_node_error(h, rv);
}

/* The request is answered: what it held goes. */
static void on_done(struct httpd_conn *hc)
{
    struct http_conn *h = conn_of(hc);
    http_op_free(&h->op);
    pz_buf_free(&h->fwd.body);
    pz_buf_free(&h->out);
    snapshot_reader_close(h->snap);
    h->snap = NULL;
    if (h->snap_slot)
        node_snapshot_stream_put();
    h->snap_slot = false;
    http_watch_free(&h->ws);
    pz_free(h->fwd_token);
    h->fwd_token = NULL;
    etcd_gw_free(&h->gw);
}

/* The connection goes: what is in flight is called off, then as above. */
static void on_close(struct httpd_conn *hc)
{
    struct http_conn *h = conn_of(hc);
    if (hc->held)
        node_cancel(&h->req);
    if (h->forwarding)
        fwd_cancel(&h->fwd);
    h->forwarding = false;
    conn_hold_detached(&h->fwd_held, 0);
    conn_hold_detached(&h->fwd_answer, 0);
    on_done(hc);
}

static const struct httpd_ops http_ops = {
    .on_request = on_request,
    .on_done = on_done,
    .on_close = on_close,
    .on_stream = on_stream,
};

int http_start(struct httpd *srv, const struct pz_config *cfg,
               uint64_t started, char *err, size_t errlen)
{
    cluster_token = cfg->cluster_token;
    started_ms = started;
    /* A forward that cannot reach the leader is tried again, to the
     * leader known then, for as long as a write waits for an election. */
    fwd_set_retry((uint64_t)cfg->request_timeout_ms, node_leader_http_addr);
    api_limits.max_key = (size_t)cfg->max_key_size;
    api_limits.max_value = (size_t)cfg->max_value_size;
    struct httpd_opts o = {
        .limits =
            {
                .max_header_bytes = (size_t)cfg->http_max_header_size,
                .max_headers = (size_t)cfg->http_max_headers,
                .max_body = (size_t)cfg->http_max_body,
            },
        .header_timeout_ms = (uint64_t)cfg->client_header_timeout_ms,
        .body_timeout_ms = (uint64_t)cfg->client_body_timeout_ms,
        .out_pause = (size_t)cfg->conn_high_water,
        .max_clients = (size_t)cfg->max_clients,
        .evict = true,
        .busy_line = "Too many clients",
        .realm = "pyazdb",
        .conn_size = sizeof(struct http_conn),
    };
    http_watch_init(cfg);
    etcd_gw_init(cfg);
    return httpd_listen(srv, cfg->http_addr, &http_ops, &o, "http", NULL, err,
                        errlen);
}

void http_drain(struct httpd *srv)
{
    http_watch_drain();
    etcd_gw_drain();
    httpd_drain(srv);
}
