/* etcd_gateway.c - etcd 3.4's v3 JSON gateway on the HTTP port
 * (etcd_gateway.h).
 *
 * KV, Cluster, Maintenance and Auth routes: as etcd's own gateway, which
 * dials its gRPC server, the request's JSON is decoded into the protobuf
 * request (pbjson_decode: 400 with the reason when it is not one) and sent
 * as a gRPC call to this node's own gRPC port over one kept loopback
 * connection (grpc_client.h); the call runs through the same handlers as
 * etcdctl's (etcd_kv.c, etcd_cluster.c), forwarding to the leader
 * included; its response is written back as JSON (pbjson_encode_wire), its
 * error as grpc-gateway writes one: {"error","message","code"} with the
 * HTTP status grpc-gateway gives the gRPC code (http_of_grpc).
 *
 * Lease routes: served here on PyazDB's leases (kv.h's lease table and
 * node_lease.h), which http.c's /lease routes use too: grants and revokes
 * are Raft entries proposed by the leader; keep-alives and time-to-live
 * are the leader's, after a ReadIndex round; a follower forwards the HTTP
 * request as it is to the leader's HTTP port (fwd.h) and relays the
 * answer. A keep-alive POST answers its one request as a stream line
 * ({"result":{...}}), as etcd's gateway does.
 *
 * Watch: POST /v3/watch with a create_request opens a stream on this
 * node's applied state (watch.h's hub): a ReadIndex round first, then the
 * watcher is registered and the reply is open-ended (no Content-Length,
 * ends with the connection); each line is {"result": WatchResponse}:
 * first the created response, then one per revision with matching events.
 * A watcher the hub cancels (too slow, or history compacted) gets a
 * canceled response, and the stream ends. Closing the connection cancels
 * the watch. */
#include "etcd_gateway.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "etcd.h"
#include "etcd_gw.pb-c.h"
#include "etcd_map.h"
#include "fwd.h"
#include "grpc_client.h"
#include "grpc_frame.h"
#include "http_parse.h"
#include "kv.h"
#include "log.h"
#include "node.h"
#include "node_lease.h"
#include "pbjson.h"
#include "tls_setup.h"
#include "watch.h"

#define MAX_RESTARTS 4        /* lease requests started over */
#define LEASE_KEYS_MAX 100000 /* keys listed by a time-to-live */
#define KEEPALIVES_MAX 1000   /* keep-alive requests in one POST */

enum route_kind { R_GRPC, R_LEASE, R_WATCH };
enum lease_op { L_GRANT, L_REVOKE, L_KEEPALIVE, L_TTL, L_LEASES };

struct route {
    const char *path;
    enum route_kind kind;
    const char *method; /* gRPC method (R_GRPC) */
    const ProtobufCMessageDescriptor *req, *resp;
    int lease; /* enum lease_op (R_LEASE) */
};

#define GRPC_ROUTE(p, m, rq, rs)                                               \
    {                                                                          \
        p, R_GRPC, m, &etcdserverpb__##rq##__descriptor,                       \
            &etcdserverpb__##rs##__descriptor, 0                               \
    }
#define LEASE_ROUTE(p, rq, op)                                                 \
    {                                                                          \
        p, R_LEASE, NULL, &etcdserverpb__##rq##__descriptor, NULL, op        \
    }

static const struct route routes[] = {
    GRPC_ROUTE("/v3/kv/range", "/etcdserverpb.KV/Range", range_request,
               range_response),
    GRPC_ROUTE("/v3/kv/put", "/etcdserverpb.KV/Put", put_request, put_response),
    GRPC_ROUTE("/v3/kv/deleterange", "/etcdserverpb.KV/DeleteRange",
               delete_range_request, delete_range_response),
    GRPC_ROUTE("/v3/kv/txn", "/etcdserverpb.KV/Txn", txn_request, txn_response),
    GRPC_ROUTE("/v3/kv/compaction", "/etcdserverpb.KV/Compact",
               compaction_request, compaction_response),
    GRPC_ROUTE("/v3/cluster/member/list", "/etcdserverpb.Cluster/MemberList",
               member_list_request, member_list_response),
    GRPC_ROUTE("/v3/maintenance/status", "/etcdserverpb.Maintenance/Status",
               status_request, status_response),
    GRPC_ROUTE("/v3/auth/status", "/etcdserverpb.Auth/AuthStatus",
               auth_status_request, auth_status_response),
    LEASE_ROUTE("/v3/lease/grant", lease_grant_request, L_GRANT),
    LEASE_ROUTE("/v3/lease/revoke", lease_revoke_request, L_REVOKE),
    LEASE_ROUTE("/v3/kv/lease/revoke", lease_revoke_request, L_REVOKE),
    LEASE_ROUTE("/v3/lease/keepalive", lease_keep_alive_request, L_KEEPALIVE),
    LEASE_ROUTE("/v3/lease/timetolive", lease_time_to_live_request, L_TTL),
    LEASE_ROUTE("/v3/kv/lease/timetolive", lease_time_to_live_request, L_TTL),
    LEASE_ROUTE("/v3/lease/leases", lease_leases_request, L_LEASES),
    {"/v3/watch", R_WATCH, NULL, &etcdserverpb__watch_request__descriptor,
     NULL, 0},
};

struct etcd_gw {
    struct httpd_conn *hc;
    const struct route *r;
    struct pz_buf wire;    /* the request, protobuf-encoded */
    struct grpc_call call; /* R_GRPC: the loopback call */
    bool call_inited;      /* grpc_call_init ran */
    bool calling;          /* call is active */
    struct node_req req;   /* node request (leases, watch start) */
    bool in_node;          /* req is with the node */
    struct fwd_req fwd;    /* lease request forwarded to the leader */
    bool forwarding;       /* fwd is in flight */
    int restarts;          /* lease request started over */
    char *cred;            /* the client's bearer token, or NULL: sent on
                              with the loopback call or the forward */
    ProtobufCMessage *msg; /* R_LEASE, R_WATCH: the unpacked request */
    int64_t *ids;          /* keep-alive: the leases of each request */
    size_t nids;
    /* watch */
    struct watcher w;
    bool registered; /* w is (or was: cancelled) registered */
    bool streaming;  /* the reply began */
    bool prev_kv, noput, nodelete;
    struct etcd_gw *prev_s, *next_s; /* every watch stream */
};

static struct {
    const struct pz_config *cfg;
    struct grpc_client *cl; /* to our own gRPC port, made at first use */
    char addr[300];         /* its address */
    struct etcd_gw *streams;
    bool draining;
} gw_state;

void etcd_gw_init(const struct pz_config *cfg)
{
    gw_state.cfg = cfg;
}

bool etcd_gw_match(const struct http_req *req)
{
    return (req->url.len >= 4 && memcmp(req->url.data, "/v3/", 4) == 0) ||
           (req->url.len >= 8 && memcmp(req->url.data, "/v3beta/", 8) == 0);
}

/* --- answers ---------------------------------------------------------------
 */

/* grpc-gateway's HTTP status for a gRPC code (its runtime.HTTPStatusFromCode
 * as of etcd 3.4). */
static int http_of_grpc(int code)
{
    static const int map[] = {
        200, /* OK */
        408, /* CANCELLED */
        500, /* UNKNOWN */
        400, /* INVALID_ARGUMENT */
        504, /* DEADLINE_EXCEEDED */
        404, /* NOT_FOUND */
        409, /* ALREADY_EXISTS */
        403, /* PERMISSION_DENIED */
        429, /* RESOURCE_EXHAUSTED */
        412, /* FAILED_PRECONDITION */
        409, /* ABORTED */
        400, /* OUT_OF_RANGE */
        501, /* UNIMPLEMENTED */
        500, /* INTERNAL */
        503, /* UNAVAILABLE */
        500, /* DATA_LOSS */
        401, /* UNAUTHENTICATED */
    };
    return code >= 0 && code < (int)PZ_ARRAY_SIZE(map) ? map[code] : 500;
}

/* Answer with grpc-gateway's error body for gRPC code and message. */
static void reply_error(struct httpd_conn *hc, int code, const char *msg)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "{\"error\":", 9);
    json_put_string(&b, msg, strlen(msg));
    pz_buf_append(&b, ",\"message\":", 11);
    json_put_string(&b, msg, strlen(msg));
    pz_buf_appendf(&b, ",\"code\":%d}", code);
    struct httpd_reply r = {.status = http_of_grpc(code),
                            .ctype = "application/json",
                            .body = b.data,
                            .blen = b.len};
    httpd_reply(hc, &r);
    pz_buf_free(&b);
}

/* Unary answers and errors end without a newline, as etcd's; stream
 * lines (keep-alive, watch) end with one. */
static void reply_json(struct httpd_conn *hc, struct pz_buf *b)
{
    struct httpd_reply r = {.status = 200,
                            .ctype = "application/json",
                            .body = b->data,
                            .blen = b->len};
    httpd_reply(hc, &r);
}

static void reply_msg(struct httpd_conn *hc, const ProtobufCMessage *m,
                      bool line)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pbjson_encode(m, &b);
    if (line)
        pz_buf_append(&b, "\n", 1);
    reply_json(hc, &b);
    pz_buf_free(&b);
}

/* A node error as etcd_node_error words it (etcd_kv.c). */
static void reply_node_error(struct httpd_conn *hc, int rv, bool write)
{
    switch (rv) {
    case PZ_ENOTLEADER:
    case PZ_ENOLEADER:
        reply_error(hc, GRPC_UNAVAILABLE, "etcdserver: no leader");
        break;
    case PZ_ETIMEDOUT:
        reply_error(hc, GRPC_UNAVAILABLE, "etcdserver: request timed out");
        break;
    case PZ_ELEADERCHANGE:
    case PZ_EBUSY:
        reply_error(hc, GRPC_UNAVAILABLE,
                    write ? "etcdserver: request timed out, possibly due to "
                            "previous leader failure"
                          : "etcdserver: leader changed");
        break;
    case PZ_ESHUTDOWN:
        reply_error(hc, GRPC_UNAVAILABLE, "etcdserver: server stopped");
        break;
    case PZ_ENOSPC:
        reply_error(hc, GRPC_RESOURCE_EXHAUSTED,
                    "etcdserver: mvcc: database space exceeded");
        break;
    default: {
        char m[160];
        snprintf(m, sizeof m, "etcdserver: %s failed: %s",
                 write ? "replication" : "read", pz_strerror(rv));
        reply_error(hc, write ? GRPC_INTERNAL : GRPC_UNAVAILABLE, m);
    }
    }
}

/* --- KV, Cluster, Maintenance, Auth: the loopback gRPC call ---------------
 */

/* host:port of our gRPC listener as a client dials it: a wildcard host
 * becomes loopback. */
static void grpc_target(char *out, size_t cap)
{
    const char *a = gw_state.cfg->grpc_addr;
    const char *colon = strrchr(a, ':');
    if (colon == NULL) {
        snprintf(out, cap, "%s", a);
        return;
    }
    size_t hl = (size_t)(colon - a);
    if (hl == 0 || (hl == 7 && memcmp(a, "0.0.0.0", 7) == 0) ||
        (hl == 4 && memcmp(a, "[::]", 4) == 0) ||
        (hl == 2 && memcmp(a, "::", 2) == 0))
        snprintf(out, cap, "127.0.0.1%s", colon);
    else
        snprintf(out, cap, "%s", a);
}

static void on_call_done(struct grpc_call *call)
{
    struct etcd_gw *g = container_of(call, struct etcd_gw, call);
    struct httpd_conn *hc = g->hc;
    g->calling = false;
    if (call->status != GRPC_OK) {
        reply_error(hc, call->status, call->message);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    if (!call->has_resp ||
        pbjson_encode_wire(g->r->resp, (const uint8_t *)call->resp.data,
                           call->resp.len, &b) < 0) {
        pz_buf_free(&b);
        reply_error(hc, GRPC_INTERNAL, "malformed response from the server");
        return;
    }
    reply_json(hc, &b); /* may free g */
    pz_buf_free(&b);
}

static void start_grpc(struct etcd_gw *g)
{
    if (gw_state.draining) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    if (gw_state.cfg->grpc_addr[0] == 0) {
        reply_error(g->hc, GRPC_UNAVAILABLE,
                    "the etcd gateway needs the gRPC port (grpc-addr)");
        return;
    }
    if (gw_state.cl == NULL) {
        grpc_target(gw_state.addr, sizeof gw_state.addr);
        gw_state.cl = grpc_client_new(g->hc->c->tcp.loop, gw_state.addr,
                                      (size_t)gw_state.cfg->grpc_max_message);
        grpc_client_set_tls(gw_state.cl, &tls_grpc_client);
    }
    /* The client's token goes along: the gRPC side decides with it. */
    struct pz_buf bearer;
    pz_buf_init(&bearer);
    const char *md[] = {NULL, NULL, NULL};
    if (g->cred) {
        pz_buf_appendf(&bearer, "Bearer %s", g->cred);
        md[0] = "authorization";
        md[1] = bearer.data;
    }
    struct grpc_call_opts o = {
        .timeout_ms = 2 * (uint64_t)gw_state.cfg->request_timeout_ms + 1000,
        .metadata = md,
    };
    grpc_call_init(&g->call);
    g->call_inited = true;
    int rv = grpc_client_call(gw_state.cl, &g->call, g->r->method,
                              g->wire.data ? g->wire.data : "", g->wire.len, &o,
                              on_call_done);
    pz_buf_free(&bearer);
    if (rv == PZ_EINVAL) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "etcdserver: request is too large");
        return;
    }
    if (rv < 0) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    g->calling = true;
    httpd_hold(g->hc);
}

/* --- leases ---------------------------------------------------------------
 */

static void start_lease(struct etcd_gw *g);

static void header_now(Etcdserverpb__ResponseHeader *h)
{
    etcd_header(h, kv_revision(node_kv()), NULL);
}

static void on_lease_forwarded(struct fwd_req *f, int status)
{
    struct etcd_gw *g = container_of(f, struct etcd_gw, fwd);
    g->forwarding = false;
    if (status == PZ_ELEADERCHANGE && g->restarts++ < MAX_RESTARTS) {
        pz_buf_free(&g->fwd.body);
        start_lease(g);
        return;
    }
    if (status == PZ_ETIMEDOUT) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: request timed out");
    } else if (status < 0) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: leader unreachable");
    } else {
        struct httpd_reply r = {.status = f->http_status,
                                .ctype = f->content_type[0] ? f->content_type
                                                            : "text/plain",
                                .body = f->body.data,
                                .blen = f->body.len};
        httpd_reply(g->hc, &r); /* the body is freed with g */
    }
}

static void forward_lease(struct etcd_gw *g)
{
    const char *addr = node_leader_http_addr();
    struct http_req *req = &g->hc->p.req;
    if (http_req_header(req, "x-pyazdb-forwarded") || addr == NULL) {
        reply_node_error(g->hc, PZ_ENOLEADER, false);
        return;
    }
    g->fwd.auth = g->cred; /* the leader checks it again */
    g->fwd.idempotent = g->r->lease != L_GRANT && g->r->lease != L_REVOKE;
    int rv = fwd_send(&g->fwd, addr, "POST", req->url.data,
                      req->body.data ? req->body.data : "", req->body.len,
                      on_lease_forwarded);
    if (rv < 0) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: leader unreachable");
        return;
    }
    g->forwarding = true;
}

static void on_lease_leader(struct node_req *req, int status)
{
    struct etcd_gw *g = container_of(req, struct etcd_gw, req);
    g->in_node = false;
    if (status < 0)
        reply_node_error(g->hc, PZ_ENOLEADER, false);
    else
        start_lease(g);
}

static void on_lease_written(struct node_req *req, int status)
{
    struct etcd_gw *g = container_of(req, struct etcd_gw, req);
    g->in_node = false;
    if (status < 0) {
        reply_node_error(g->hc, status, true);
        return;
    }
    const struct kv_result *res = &req->res;
    if (res->status == KV_ELEASE_NOTFOUND) {
        reply_error(g->hc, GRPC_NOT_FOUND,
                    "etcdserver: requested lease not found");
        return;
    }
    if (res->status == KV_ELEASE_EXISTS) {
        reply_error(g->hc, GRPC_FAILED_PRECONDITION,
                    "etcdserver: lease already exists");
        return;
    }
    if (res->status == KV_ELEASE_FULL) {
        reply_error(g->hc, GRPC_RESOURCE_EXHAUSTED,
                    "etcdserver: too many leases");
        return;
    }
    Etcdserverpb__ResponseHeader h;
    etcd_header(&h, res->revision ? res->revision : kv_revision(node_kv()),
                NULL);
    if (g->r->lease == L_GRANT) {
        const Etcdserverpb__LeaseGrantRequest *rq = (const void *)g->msg;
        Etcdserverpb__LeaseGrantResponse resp =
            ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
        resp.header = &h;
        resp.id = rq->id; /* set by start_lease */
        resp.ttl = rq->ttl;
        reply_msg(g->hc, &resp.base, false);
    } else {
        Etcdserverpb__LeaseRevokeResponse resp =
            ETCDSERVERPB__LEASE_REVOKE_RESPONSE__INIT;
        resp.header = &h;
        reply_msg(g->hc, &resp.base, false);
    }
}

struct key_list {
    ProtobufCBinaryData *keys;
    size_t n, cap;
};

static int collect_key(void *arg, const struct kv_view *v)
{
    struct key_list *l = arg;
    if (l->n == LEASE_KEYS_MAX)
        return 1;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        l->keys = pz_realloc(l->keys, l->cap * sizeof *l->keys);
    }
    l->keys[l->n].data = (uint8_t *)v->key; /* borrowed from the table */
    l->keys[l->n].len = v->klen;
    l->n++;
    return 0;
}

static void on_lease_read(struct node_req *req, int status)
{
    struct etcd_gw *g = container_of(req, struct etcd_gw, req);
    g->in_node = false;
    if (status < 0) {
        reply_node_error(g->hc, status, false);
        return;
    }
    if (!node_is_leader()) {
        if (g->restarts++ < MAX_RESTARTS)
            start_lease(g);
        else
            reply_node_error(g->hc, PZ_ENOTLEADER, false);
        return;
    }
    struct kv *kv = node_kv();
    Etcdserverpb__ResponseHeader h;
    header_now(&h);
    struct kv_lease l;
    switch (g->r->lease) {
    case L_KEEPALIVE: {
        /* one result line per request of the body, in order */
        struct pz_buf b;
        pz_buf_init(&b);
        for (size_t i = 0; i < g->nids; i++) {
            Etcdserverpb__LeaseKeepAliveResponse resp =
                ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
            Pyazdb__Etcdgw__LeaseKeepAliveResult res =
                PYAZDB__ETCDGW__LEASE_KEEP_ALIVE_RESULT__INIT;
            uint64_t ttl = 0;
            resp.header = &h;
            resp.id = g->ids[i];
            if (g->ids[i] > 0 && kv_lease_get(kv, (uint64_t)g->ids[i], &l) &&
                node_lease_keepalive(l.id, &ttl))
                resp.ttl = (int64_t)ttl;
            res.result = &resp;
            pbjson_encode(&res.base, &b);
            pz_buf_append(&b, "\n", 1);
        }
        reply_json(g->hc, &b);
        pz_buf_free(&b);
        return;
    }
    case L_TTL: {
        const Etcdserverpb__LeaseTimeToLiveRequest *rq = (const void *)g->msg;
        Etcdserverpb__LeaseTimeToLiveResponse resp =
            ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
        struct key_list keys = {0};
        resp.header = &h;
        resp.id = rq->id;
        if (rq->id > 0 && kv_lease_get(kv, (uint64_t)rq->id, &l)) {
            uint64_t ms = 0;
            node_lease_remaining(l.id, &ms);
            resp.ttl = (int64_t)(ms / 1000);
            resp.grantedttl = (int64_t)l.ttl;
            if (rq->keys) {
                kv_lease_keys(kv, l.id, collect_key, &keys);
                resp.keys = keys.keys;
                resp.n_keys = keys.n;
            }
        } else {
            resp.ttl = -1;
        }
        reply_msg(g->hc, &resp.base, false);
        pz_free(keys.keys);
        return;
    }
    default: {
        Etcdserverpb__LeaseLeasesResponse resp =
            ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
        size_t n = kv_lease_count(kv);
        Etcdserverpb__LeaseStatus *st = pz_calloc(n + 1, sizeof *st);
        Etcdserverpb__LeaseStatus **sp = pz_calloc(n + 1, sizeof *sp);
        for (size_t i = 0; i < n; i++) {
            Etcdserverpb__LeaseStatus init =
                ETCDSERVERPB__LEASE_STATUS__INIT;
            st[i] = init;
            kv_lease_at(kv, i, &l);
            st[i].id = (int64_t)l.id;
            sp[i] = &st[i];
        }
        resp.header = &h;
        resp.leases = sp;
        resp.n_leases = n;
        reply_msg(g->hc, &resp.base, false);
        pz_free(sp);
        pz_free(st);
        return;
    }
    }
}

/* Run the lease request here if this node leads, forward it if another
 * does, wait (bounded) for an election if none does. */
static void start_lease(struct etcd_gw *g)
{
    if (!node_is_leader()) {
        if (node_leader_http_addr()) {
            forward_lease(g);
        } else if (g->restarts++ < MAX_RESTARTS) {
            g->in_node = true;
            node_wait_leader(&g->req, on_lease_leader);
        } else {
            reply_node_error(g->hc, PZ_ENOLEADER, false);
        }
        return;
    }
    struct pz_buf cmd;
    struct kv_lease l;
    int rv;
    pz_buf_init(&cmd);
    switch (g->r->lease) {
    case L_GRANT: {
        Etcdserverpb__LeaseGrantRequest *rq = (void *)g->msg;
        if (rq->ttl <= 0) {
            reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                        "etcdserver: lease TTL must be positive");
            return;
        }
        if ((uint64_t)rq->ttl > node_lease_max_ttl()) {
            reply_error(g->hc, GRPC_OUT_OF_RANGE,
                        "etcdserver: too large lease TTL");
            return;
        }
        if (rq->id < 0) {
            reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                        "etcdserver: negative lease ID");
            return;
        }
        if (kv_lease_count(node_kv()) >= node_lease_max_count()) {
            reply_error(g->hc, GRPC_RESOURCE_EXHAUSTED,
                        "etcdserver: too many leases (lease-max-count)");
            return;
        }
        if (rq->id == 0)
            rq->id = (int64_t)node_lease_new_id();
        else if (kv_lease_get(node_kv(), (uint64_t)rq->id, &l)) {
            reply_error(g->hc, GRPC_FAILED_PRECONDITION,
                        "etcdserver: lease already exists");
            return;
        }
        kv_encode_lease_grant(&cmd, (uint64_t)rq->id, (uint64_t)rq->ttl);
        rv = node_propose(&g->req, (const uint8_t *)cmd.data, cmd.len,
                          on_lease_written);
        break;
    }
    case L_REVOKE: {
        const Etcdserverpb__LeaseRevokeRequest *rq = (const void *)g->msg;
        if (rq->id <= 0) {
            reply_error(g->hc, GRPC_NOT_FOUND,
                        "etcdserver: requested lease not found");
            return;
        }
        kv_encode_lease_revoke(&cmd, (uint64_t)rq->id);
        rv = node_propose(&g->req, (const uint8_t *)cmd.data, cmd.len,
                          on_lease_written);
        break;
    }
    default:
        rv = node_read(&g->req, false, on_lease_read);
        break;
    }
    pz_buf_free(&cmd);
    if (rv == PZ_ENOTLEADER || rv == PZ_ENOLEADER || rv == PZ_EBUSY) {
        if (g->restarts++ < MAX_RESTARTS) {
            g->in_node = true;
            node_wait_leader(&g->req, on_lease_leader);
        } else {
            reply_node_error(g->hc, rv, true);
        }
        return;
    }
    if (rv < 0) {
        reply_node_error(g->hc, rv, true);
        return;
    }
    g->in_node = true;
}

/* --- watch -----------------------------------------------------------------
 */

static void write_result(struct etcd_gw *g, Etcdserverpb__WatchResponse *r)
{
    Pyazdb__Etcdgw__WatchResult res = PYAZDB__ETCDGW__WATCH_RESULT__INIT;
    res.result = r;
    struct pz_buf b;
    pz_buf_init(&b);
    pbjson_encode(&res.base, &b);
    pz_buf_append(&b, "\n", 1);
    httpd_stream_write(g->hc, b.data, b.len);
    pz_buf_free(&b);
}

static void fill_kv(Mvccpb__KeyValue *kv, const uint8_t *key, size_t klen,
                    const uint8_t *val, size_t vlen, const struct kv_meta *m)
{
    Mvccpb__KeyValue init = MVCCPB__KEY_VALUE__INIT;
    *kv = init;
    kv->key.data = (uint8_t *)key;
    kv->key.len = klen;
    kv->value.data = (uint8_t *)val;
    kv->value.len = val ? vlen : 0;
    kv->create_revision = (int64_t)m->create_revision;
    kv->mod_revision = (int64_t)m->mod_revision;
    kv->version = (int64_t)m->version;
    kv->lease = (int64_t)m->lease;
}

/* Write the revisions w has pending while the client's unread output
 * stays under HTTPD_STREAM_WANT (httpd calls again as it drains). */
static void pump(struct etcd_gw *g)
{
    struct watch_hub *hub = node_watch();
    uint64_t rev, begin, end;
    while (g->streaming && conn_output_pending(g->hc->c) < HTTPD_STREAM_WANT) {
        if (!watch_next(&g->w, &rev, &begin, &end))
            return;
        size_t n = 0, cap = (size_t)(end - begin);
        Mvccpb__Event *ev = pz_calloc(cap + 1, sizeof *ev);
        Mvccpb__Event **evp = pz_calloc(cap + 1, sizeof *evp);
        Mvccpb__KeyValue *kvs = pz_calloc(2 * cap + 1, sizeof *kvs);
        for (uint64_t s = begin; s < end; s++) {
            const struct watch_event *e = watch_event_at(hub, s);
            if (!watch_matches(&g->w, e))
                continue;
            bool put = e->type == KV_TOP_PUT;
            if ((put && g->noput) || (!put && g->nodelete))
                continue;
            Mvccpb__Event init = MVCCPB__EVENT__INIT;
            Mvccpb__Event *x = &ev[n];
            *x = init;
            x->type = put ? MVCCPB__EVENT__EVENT_TYPE__PUT
                          : MVCCPB__EVENT__EVENT_TYPE__DELETE;
            fill_kv(&kvs[2 * n], e->key, e->klen, put ? e->value : NULL,
                    e->vlen, &e->meta);
            x->kv = &kvs[2 * n];
            if (g->prev_kv && e->has_prev) {
                fill_kv(&kvs[2 * n + 1], e->key, e->klen, e->prev, e->plen,
                        &e->pmeta);
                x->prev_kv = &kvs[2 * n + 1];
            }
            evp[n] = x;
            n++;
        }
        if (n) {
            Etcdserverpb__ResponseHeader h;
            Etcdserverpb__WatchResponse r =
                ETCDSERVERPB__WATCH_RESPONSE__INIT;
            etcd_header(&h, rev, NULL);
            r.header = &h;
            r.events = evp;
            r.n_events = n;
            write_result(g, &r);
        }
        pz_free(kvs);
        pz_free(evp);
        pz_free(ev);
    }
}

static void end_stream(struct etcd_gw *g)
{
    g->streaming = false;
    httpd_stream_end(g->hc); /* on_done frees g */
}

static void write_canceled(struct etcd_gw *g, const char *why, uint64_t compact)
{
    Etcdserverpb__ResponseHeader h;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    header_now(&h);
    r.header = &h;
    r.canceled = true;
    r.cancel_reason = (char *)why;
    r.compact_revision = (int64_t)compact;
    write_result(g, &r);
}

static void on_watch_notify(void *arg, struct watcher *w)
{
    struct etcd_gw *g = arg;
    PZ_UNUSED(w);
    if (!g->streaming || !g->hc->streaming)
        return;
    if (g->w.state == WATCH_LIVE) {
        httpd_stream_kick(g->hc);
        return;
    }
    /* cancelled: unregistered, but w still owns its range until
     * watch_remove (etcd_gw_free) */
    if (g->w.state == WATCH_SLOW)
        write_canceled(g,
                       "etcdserver: mvcc: watcher fell more than "
                       "watch-max-buffer behind",
                       0);
    else
        write_canceled(g,
                       "etcdserver: mvcc: required revision has been "
                       "compacted",
                       watch_hub_first_rev(node_watch()));
    end_stream(g);
}

static void watch_begin(struct etcd_gw *g)
{
    const Etcdserverpb__WatchRequest *wr = (const void *)g->msg;
    const Etcdserverpb__WatchCreateRequest *c = wr->create_request;
    struct watch_hub *hub = node_watch();
    struct etcd_range rg;
    if (gw_state.draining || g->hc->srv->draining) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    /* an empty key is "\0", as etcd's watch takes it */
    static const uint8_t zero[1] = {0};
    const uint8_t *key = c->key.len ? c->key.data : zero;
    if (etcd_range_decode(key, c->key.len ? c->key.len : 1, c->range_end.data,
                          c->range_end.len, &rg) < 0) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "etcdserver: key is not provided");
        return;
    }
    uint64_t cur = kv_revision(node_kv());
    uint64_t start =
        c->start_revision > 0 ? (uint64_t)c->start_revision : cur + 1;
    uint64_t first = watch_hub_first_rev(hub);
    bool compacted = start < first;
    int rv = 0;
    if (!compacted) {
        struct pz_buf to;
        pz_buf_init(&to);
        if (rg.single) {
            pz_buf_append(&to, rg.key, rg.klen);
            pz_buf_append(&to, "", 1);
        } else if (!rg.to_end) {
            /* an empty range names nothing: [key, key) */
            pz_buf_append(&to, rg.empty ? rg.key : rg.end,
                          rg.empty ? rg.klen : rg.elen);
        }
        rv = watch_add(hub, &g->w, rg.key, rg.klen,
                       rg.to_end ? NULL : (to.data ? to.data : ""),
                       rg.to_end ? 0 : to.len, start);
        pz_buf_free(&to);
        if (rv == PZ_EBUSY) {
            reply_error(g->hc, GRPC_RESOURCE_EXHAUSTED,
                        "etcdserver: too many watchers (max-watchers)");
            return;
        }
        if (rv == PZ_ENOTFOUND) {
            compacted = true;
        } else if (rv < 0) {
            reply_error(g->hc, GRPC_INTERNAL, "etcdserver: watch failed");
            return;
        } else {
            g->w.data = g;
            g->w.notify = on_watch_notify; /* called with w.data */
            g->registered = true;
        }
    }
    g->streaming = true;
    httpd_stream_chunked(g->hc);
    httpd_stream_begin(g->hc, 200, "application/json", HTTPD_STREAM_OPEN);
    Etcdserverpb__ResponseHeader h;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    etcd_header(&h, cur, NULL);
    r.header = &h;
    r.created = true;
    write_result(g, &r);
    if (compacted) {
        write_canceled(g,
                       "etcdserver: mvcc: required revision has been "
                       "compacted",
                       first);
        end_stream(g);
        return;
    }
    g->prev_s = NULL;
    g->next_s = gw_state.streams;
    if (gw_state.streams)
        gw_state.streams->prev_s = g;
    gw_state.streams = g;
    if (!watch_caught_up(&g->w))
        httpd_stream_kick(g->hc);
}

static void on_watch_ready(struct node_req *req, int status)
{
    struct etcd_gw *g = container_of(req, struct etcd_gw, req);
    g->in_node = false;
    if (status < 0)
        reply_node_error(g->hc, status, false);
    else
        watch_begin(g);
}

static void start_watch(struct etcd_gw *g)
{
    const Etcdserverpb__WatchRequest *wr = (const void *)g->msg;
    /* create_request shares a union with the other members */
    const Etcdserverpb__WatchCreateRequest *c =
        wr->request_union_case ==
                ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST
            ? wr->create_request
            : NULL;
    if (c == NULL) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "the first watch request must be a create_request");
        return;
    }
    if (c->start_revision < 0) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "etcdserver: negative start_revision");
        return;
    }
    for (size_t i = 0; i < c->n_filters; i++) {
        if (c->filters[i] ==
            ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
            g->noput = true;
        else if (c->filters[i] ==
                 ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
            g->nodelete = true;
    }
    g->prev_kv = c->prev_kv;
    httpd_hold(g->hc);
    int rv = node_read(&g->req, false, on_watch_ready);
    if (rv < 0) {
        reply_node_error(g->hc, rv, false);
        return;
    }
    g->in_node = true;
}

void etcd_gw_on_stream(struct etcd_gw *g)
{
    pump(g);
}

/* --- dispatch --------------------------------------------------------------
 */

/* The requests of a keep-alive body: JSON objects one after the other, as
 * etcd's gateway reads a client stream. Returns 0 or answers (PZ_EINVAL):
 * unlike etcd's, which answers the requests before a bad one and drops
 * the rest, a body with anything bad is refused whole. */
static int read_keepalives(struct etcd_gw *g, const char *body, size_t len)
{
    size_t off = 0, start = 0, vlen = 0;
    char err[256];
    int rv;
    /* no object at all: no request, an empty answer (as etcd's) */
    while ((rv = pbjson_next_object(body, len, &off, &start, &vlen)) > 0) {
        if (g->nids == KEEPALIVES_MAX) {
            reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                        "more than 1000 keep-alive requests in one body");
            return PZ_EINVAL;
        }
        struct pz_buf w;
        pz_buf_init(&w);
        if (pbjson_decode(g->r->req, body + start, vlen, &w, err, sizeof err) <
            0) {
            pz_buf_free(&w);
            reply_error(g->hc, GRPC_INVALID_ARGUMENT, err);
            return PZ_EINVAL;
        }
        Etcdserverpb__LeaseKeepAliveRequest *rq =
            etcdserverpb__lease_keep_alive_request__unpack(
                NULL, w.len, (const uint8_t *)(w.data ? w.data : ""));
        pz_buf_free(&w);
        if (rq == NULL) {
            reply_error(g->hc, GRPC_INVALID_ARGUMENT, "malformed request");
            return PZ_EINVAL;
        }
        g->ids = pz_realloc(g->ids, (g->nids + 1) * sizeof *g->ids);
        g->ids[g->nids++] = rq->id;
        etcdserverpb__lease_keep_alive_request__free_unpacked(rq, NULL);
    }
    if (rv < 0) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "the body is not a sequence of JSON objects");
        return PZ_EINVAL;
    }
    return 0;
}

void etcd_gw_start(struct httpd_conn *hc, struct etcd_gw **out)
{
    const struct http_req *req = &hc->p.req;
    const struct route *r = NULL;
    size_t plen = req->url.len;
    const char *q = memchr(req->url.data, '?', plen);
    if (q)
        plen = (size_t)(q - req->url.data);
    /* the path after /v3 (or /v3beta, which etcd 3.4 serves alike) */
    const char *rest = req->url.data + 3;
    size_t rlen = plen - 3;
    if (plen >= 8 && memcmp(req->url.data, "/v3beta/", 8) == 0) {
        rest = req->url.data + 7;
        rlen = plen - 7;
    }
    for (size_t i = 0; i < PZ_ARRAY_SIZE(routes); i++)
        if (strlen(routes[i].path + 3) == rlen &&
            memcmp(routes[i].path + 3, rest, rlen) == 0)
            r = &routes[i];
    if (r == NULL) {
        httpd_text(hc, 404, "Not Found", NULL);
        return;
    }
    if (req->method != HTTP_POST) {
        httpd_text(hc, 405, "Method Not Allowed", "POST");
        return;
    }
    struct etcd_gw *g = pz_calloc(1, sizeof *g);
    g->hc = hc;
    g->r = r;
    pz_buf_init(&g->wire);
    pz_buf_init(&g->fwd.body);
    *out = g;
    const char *av = http_req_header(req, "authorization");
    size_t an = av ? strlen(av) : 0;
    if (av && http_bearer_value(&av, &an))
        g->cred = pz_strndup(av, an);
    /* With client tokens, the lease and watch routes, which run here and
     * not through the gRPC calls' checks, take an rw token without
     * prefixes (a lease may hold any key). */
    if (auth_on() && r->kind != R_GRPC && !auth_admin_token(g->cred)) {
        reply_error(hc, g->cred ? GRPC_PERMISSION_DENIED : GRPC_UNAUTHENTICATED,
                    g->cred ? "this route needs an rw token without prefixes "
                              "(client-token-file)"
                            : "a bearer token is required "
                              "(client-token-file)");
        return;
    }
    char err[256];
    if ((r->kind != R_LEASE || r->lease != L_KEEPALIVE) &&
        pbjson_decode(r->req, req->body.data ? req->body.data : "",
                      req->body.len, &g->wire, err, sizeof err) < 0) {
        reply_error(hc, GRPC_INVALID_ARGUMENT, err);
        return;
    }
    if (r->kind == R_GRPC) {
        start_grpc(g);
        return;
    }
    if (r->kind == R_LEASE && r->lease == L_KEEPALIVE) {
        if (read_keepalives(g, req->body.data ? req->body.data : "",
                            req->body.len) < 0)
            return;
        httpd_hold(hc);
        start_lease(g);
        return;
    }
    g->msg = protobuf_c_message_unpack(r->req, NULL, g->wire.len,
                                       (const uint8_t *)g->wire.data);
    if (g->msg == NULL) {
        reply_error(hc, GRPC_INVALID_ARGUMENT, "malformed request");
        return;
    }
    if (r->kind == R_WATCH) {
        start_watch(g);
        return;
    }
    httpd_hold(hc);
    start_lease(g);
}

void etcd_gw_free(struct etcd_gw **gp)
{
    struct etcd_gw *g = *gp;
    if (g == NULL)
        return;
    *gp = NULL;
    if (g->calling)
        grpc_client_cancel(&g->call);
    if (g->call_inited)
        grpc_call_reset(&g->call);
    if (g->in_node)
        node_cancel(&g->req);
    if (g->forwarding)
        fwd_cancel(&g->fwd);
    pz_buf_free(&g->fwd.body);
    pz_free(g->cred);
    if (g->registered)
        watch_remove(&g->w);
    if (g->prev_s)
        g->prev_s->next_s = g->next_s;
    else if (gw_state.streams == g)
        gw_state.streams = g->next_s;
    if (g->next_s)
        g->next_s->prev_s = g->prev_s;
    if (g->msg)
        protobuf_c_message_free_unpacked(g->msg, NULL);
    pz_free(g->ids);
    pz_buf_free(&g->wire);
    pz_free(g);
}

void etcd_gw_drain(void)
{
    gw_state.draining = true;
    struct etcd_gw *g = gw_state.streams;
    while (g) {
        struct etcd_gw *next = g->next_s;
        if (g->streaming && g->hc->streaming)
            end_stream(g); /* frees g */
        g = next;
    }
    if (gw_state.cl) {
        grpc_client_close(gw_state.cl);
        gw_state.cl = NULL;
    }
}
