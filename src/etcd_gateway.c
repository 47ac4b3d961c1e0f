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
 * Lease routes go the same way, to etcd_lease.c's Lease calls, checks
 * and relaying to the leader included. A keep-alive POST carries
 * LeaseKeepAliveRequests one after the other; each is sent in turn as one
 * unary call of LeaseKeepAlive (as a follower relays them to the leader)
 * and the POST answers one stream line ({"result":{...}}) per request, as
 * etcd's gateway does.
 *
 * Watch: POST /v3/watch with a create_request opens a stream on this
 * node's applied state (watch.h's hub): a ReadIndex round first, then the
 * watcher is registered and the reply is open-ended (no Content-Length,
 * ends with the connection); each line is {"result": WatchResponse}:
 * first the created response, then one per revision with matching events.
 * A revision's line is written event by event as the client reads, never
 * from inside the hub's commit: the hub marks the stream ready, and an
 * idle pass writes the ready streams round robin, at most GW_TURN_BYTES
 * a loop turn (plus one event, or one line that fits what a stream may
 * have waiting: such a line goes whole, as one chunk), so that no number
 * of watchers and no size of revision holds the loop for long. Each
 * stream has at most HTTPD_STREAM_WANT bytes (plus one event) waiting in
 * its connection.
 * Until a revision is all out the stream keeps its place in the history
 * at the revision's first event (watch_set_cursor), so the history holds
 * what it still has to write. The idle pass is also what writes on as a
 * client drains its connection. A stream that falls more than
 * watch-max-buffer behind while its client reads nothing for
 * GW_STALL_MS is cancelled (etcd_gw_cron): a canceled response and the end
 * of the stream, or, with part of a revision out, once that revision is
 * out. The history dropping a revision under it (compacted) ends the
 * stream the same way, or cuts it if it was in the middle of one. Closing
 * the connection cancels the watch. */
#include "etcd_gateway.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "etcd.h"
#include "etcd_gw.pb-c.h"
#include "etcd_map.h"
#include "grpc_client.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "http_parse.h"
#include "http_watch.h"
#include "kv.h"
#include "log.h"
#include "node.h"
#include "pbjson.h"
#include "tls_setup.h"
#include "tokens.h"
#include "turns.h"
#include "watch.h"

#define KEEPALIVES_MAX 1000 /* keep-alive requests in one POST */
/* Watch output the idle pass writes in one loop turn (plus one event or
 * one line of at most HTTPD_STREAM_WANT). */
#define GW_TURN_BYTES (1024 * 1024)
#define GW_WATCH_NO_ROOM                                                      \
    "etcdserver: too many watch streams (at most half of max-clients)"
/* A watch stream behind by more than watch-max-buffer whose client
 * acknowledged none of its output for this long is cancelled. */
#define GW_STALL_MS 2000

enum route_kind { R_GRPC, R_KEEPALIVE, R_WATCH };

struct route {
    const char *path;
    enum route_kind kind;
    const char *method; /* gRPC method (R_GRPC, R_KEEPALIVE) */
    const ProtobufCMessageDescriptor *req, *resp;
};

#define GRPC_ROUTE(p, m, rq, rs)                                               \
    {                                                                          \
        p, R_GRPC, m, &etcdserverpb__##rq##__descriptor,                       \
            &etcdserverpb__##rs##__descriptor                                  \
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
    GRPC_ROUTE("/v3/lease/grant", "/etcdserverpb.Lease/LeaseGrant",
               lease_grant_request, lease_grant_response),
    GRPC_ROUTE("/v3/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke",
               lease_revoke_request, lease_revoke_response),
    GRPC_ROUTE("/v3/kv/lease/revoke", "/etcdserverpb.Lease/LeaseRevoke",
               lease_revoke_request, lease_revoke_response),
    GRPC_ROUTE("/v3/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive",
               lease_time_to_live_request, lease_time_to_live_response),
    GRPC_ROUTE("/v3/kv/lease/timetolive", "/etcdserverpb.Lease/LeaseTimeToLive",
               lease_time_to_live_request, lease_time_to_live_response),
    GRPC_ROUTE("/v3/lease/leases", "/etcdserverpb.Lease/LeaseLeases",
               lease_leases_request, lease_leases_response),
    {"/v3/lease/keepalive", R_KEEPALIVE, "/etcdserverpb.Lease/LeaseKeepAlive",
     &etcdserverpb__lease_keep_alive_request__descriptor,
     &pyazdb__etcdgw__lease_keep_alive_result__descriptor},
    {"/v3/watch", R_WATCH, NULL, &etcdserverpb__watch_request__descriptor,
     NULL},
};

struct etcd_gw {
    struct httpd_conn *hc;
    const struct route *r;
    struct pz_buf wire;    /* the request, protobuf-encoded */
    struct grpc_call call; /* R_GRPC, R_KEEPALIVE: the loopback call */
    bool call_inited;      /* grpc_call_init ran */
    bool calling;          /* call is active */
    struct node_req req;   /* watch start */
    bool in_node;          /* req is with the node */
    char *cred;            /* the client's bearer token, or NULL: sent on
                              with the loopback call */
    ProtobufCMessage *msg; /* R_WATCH: the unpacked request */
    int64_t *ids;          /* keep-alive: the leases of each request */
    size_t nids;
    size_t ka_done;    /* keep-alive: requests answered */
    struct pz_buf out; /* keep-alive: the answer lines so far */
    /* watch */
    struct watcher w;
    bool registered; /* w is (or was: cancelled) registered */
    bool streaming;  /* the reply began */
    struct etcd_watch_opts o;
    struct etcd_gw *prev_s, *next_s; /* every watch stream */
    struct turn_item turn;           /* in gw_state.turns while ready */
    bool wait_drain; /* the next revision waits for the client to read
                        what waits (notifications ignored until then) */
    bool ending;     /* judged slow: cancelled once in_rev is out */
    bool in_rev;     /* writing revision rev, event by event */
    uint64_t rev;    /* ... */
    uint64_t seq;    /* ... its next event in the history */
    uint64_t end;    /* ... the end of its events */
    size_t n_out;    /* ... its events written */
};

static struct {
    const struct pz_config *cfg;
    struct grpc_client *cl; /* to our own gRPC port, made at first use */
    char addr[300];         /* its address */
    struct etcd_gw *streams;
    size_t n_streams; /* registered, not freed */
    bool draining;
    struct turns turns; /* watch streams with events to write take turns */
} gw_state;

static void on_turn(struct turn_item *it);

void etcd_gw_init(const struct pz_config *cfg)
{
    gw_state.cfg = cfg;
    turns_init(&gw_state.turns, conn_loop(), GW_TURN_BYTES, on_turn);
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

/* A node error as the gRPC calls answer it (etcd_node_status). */
static void reply_node_error(struct httpd_conn *hc, int rv, bool write)
{
    char m[160];
    int code = etcd_node_status(rv, write, m, sizeof m);
    reply_error(hc, code, m);
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

static void start_call(struct etcd_gw *g, const void *msg, size_t len);

/* Keep-alive: the next request's call, or the answer once each had its. */
static void keepalive_next(struct etcd_gw *g)
{
    if (g->ka_done == g->nids) {
        reply_json(g->hc, &g->out); /* may free g */
        return;
    }
    Etcdserverpb__LeaseKeepAliveRequest q =
        ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
    q.id = g->ids[g->ka_done];
    uint8_t buf[32];
    size_t n = etcdserverpb__lease_keep_alive_request__pack(&q, buf);
    start_call(g, buf, n);
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
    bool ka = g->r->kind == R_KEEPALIVE;
    struct pz_buf b, wrap;
    pz_buf_init(&b);
    pz_buf_init(&wrap);
    if (ka) /* a LeaseKeepAliveResult holding the response */
        grpc_pb_put_bytes(&wrap, 1, call->resp.data, call->resp.len);
    const struct pz_buf *w = ka ? &wrap : &call->resp;
    int rv = call->has_resp
                 ? pbjson_encode_wire(g->r->resp, (const uint8_t *)w->data,
                                      w->len, ka ? &g->out : &b)
                 : PZ_EINVAL;
    pz_buf_free(&wrap);
    if (rv < 0) {
        pz_buf_free(&b);
        reply_error(hc, GRPC_INTERNAL, "malformed response from the server");
        return;
    }
    if (ka) {
        pz_buf_append(&g->out, "\n", 1);
        grpc_call_reset(call); /* before the next request reuses it */
        g->call_inited = false;
        g->ka_done++;
        keepalive_next(g);
        return;
    }
    reply_json(hc, &b); /* may free g */
    pz_buf_free(&b);
}

/* Send msg as a call of the route's method on the loopback connection. */
static void start_call(struct etcd_gw *g, const void *msg, size_t len)
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
    /* The client's token goes along: the gRPC side decides with it. One
     * message a call, keep-alives included: the server does not count
     * such a call as a stream held open (nor let it stay open). */
    struct pz_buf bearer;
    pz_buf_init(&bearer);
    const char *md[] = {"pyazdb-unary", "1", NULL, NULL, NULL};
    if (g->cred) {
        pz_buf_appendf(&bearer, "Bearer %s", g->cred);
        md[2] = "authorization";
        md[3] = bearer.data;
    }
    struct grpc_call_opts o = {
        .timeout_ms = 2 * (uint64_t)gw_state.cfg->request_timeout_ms + 1000,
        .metadata = md,
    };
    grpc_call_init(&g->call);
    g->call_inited = true;
    int rv = grpc_client_call(gw_state.cl, &g->call, g->r->method,
                              msg ? msg : "", len, &o, on_call_done);
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

/* Write a response with this node's revision, and end the stream if it
 * cancels the watch. */
static void write_simple(struct etcd_gw *g, int64_t id, bool created,
                         bool canceled, int64_t compact, const char *why)
{
    Etcdserverpb__ResponseHeader h;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    etcd_header(&h, kv_revision(node_kv()), NULL);
    r.header = &h;
    r.watch_id = id;
    r.created = created;
    r.canceled = canceled;
    r.compact_revision = compact;
    r.cancel_reason = (char *)(why ? why : "");
    write_result(g, &r);
    if (canceled) {
        g->streaming = false;
        httpd_stream_end(g->hc); /* on_done frees g */
    }
}

/* The stream has events to write: the idle pass writes them. */
static void make_ready(struct etcd_gw *g)
{
    turns_mark(&gw_state.turns, &g->turn);
}

/* {"result":{"header":...,"events":[ for revision rev: pbjson writes a
 * message's members in field order, and events (11) is WatchResponse's
 * last, so the line is the response without events, opened up. */
static void put_rev_start(struct pz_buf *b, uint64_t rev)
{
    Etcdserverpb__ResponseHeader h;
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    etcd_header(&h, rev, NULL);
    r.header = &h;
    Pyazdb__Etcdgw__WatchResult res = PYAZDB__ETCDGW__WATCH_RESULT__INIT;
    res.result = &r;
    size_t at = b->len;
    pbjson_encode(&res.base, b);
    pz_assert(b->len - at > 4 && memcmp(b->data + b->len - 2, "}}", 2) == 0);
    b->len -= 2;
    pz_buf_append(b, ",\"events\":[", 11);
}

/* Write what the stream has to write while its connection has less than
 * HTTPD_STREAM_WANT waiting and the idle pass's turn allows: revisions
 * event by event (httpd calls again as the client drains). */
static void pump(struct etcd_gw *g)
{
    const struct watch_hub *hub = node_watch();
    size_t pending = conn_output_pending(g->hc->c);
    if (!g->streaming || g->w.state != WATCH_LIVE ||
        pending >= HTTPD_STREAM_WANT)
        return;
    size_t room = HTTPD_STREAM_WANT - pending;
    size_t turn = turns_left(&gw_state.turns);
    size_t written = 0; /* bytes of b already written */
    bool whole = false; /* the revision begun here fits: at once */
    struct pz_buf b;
    pz_buf_init(&b);
    while (written + b.len < room && written + b.len < turn) {
        if (!g->in_rev && g->ending) {
            pz_buf_free(&b);
            watch_cancel(&g->w, WATCH_SLOW); /* writes why; frees g */
            return;
        }
        if (!g->in_rev) {
            uint64_t rev, begin, end, sent = g->w.sent_rev;
            if (!watch_next(&g->w, &rev, &begin, &end))
                break;
            /* Held in the history (and counted as unread) until out. */
            watch_set_cursor(&g->w, begin);
            bool all;
            size_t est = 300 + http_watch_rev_estimate(&g->w, g->o.prev_kv,
                                                       begin, end, &all);
            if ((pending || written) && est > room - written) {
                /* Whole once the client has read what waits, so that a
                 * stream is mostly between revisions, where it can be
                 * cancelled with a reason; in pieces only when it is
                 * larger than all it may have waiting. Not looked at
                 * again before then (etcd_gw_on_stream). */
                g->w.sent_rev = sent;
                g->wait_drain = true;
                break;
            }
            g->in_rev = true;
            g->rev = rev;
            g->seq = begin;
            g->end = end;
            g->n_out = 0;
            /* One that fits goes at once, past the turn if need be: a
             * line of at most HTTPD_STREAM_WANT is one chunk. */
            whole = est <= room - written;
        }
        while (g->seq < g->end &&
               (whole ||
                (written + b.len < room && written + b.len < turn))) {
            Mvccpb__Event ev;
            Mvccpb__KeyValue kvs[2];
            if (!etcd_watch_event_of(&g->w, &g->o,
                                     watch_event_at(hub, g->seq++), &ev, kvs))
                continue;
            if (g->n_out++ == 0)
                put_rev_start(&b, g->rev);
            else
                pz_buf_append(&b, ",", 1);
            pbjson_encode(&ev.base, &b);
        }
        if (g->seq < g->end)
            break;
        g->in_rev = false;
        watch_set_cursor(&g->w, g->end);
        if (g->n_out) {
            /* A line written whole is one chunk, as etcd's are. */
            pz_buf_append(&b, "]}}\n", 4);
            written += b.len;
            httpd_stream_write(g->hc, b.data, b.len);
            pz_buf_reset(&b);
        }
    }
    written += b.len;
    if (b.len)
        httpd_stream_write(g->hc, b.data, b.len);
    turns_spend(&gw_state.turns, written);
    /* Stopped by the turn, not by its client: next turn. */
    if (turn != SIZE_MAX && written >= turn &&
        (g->in_rev || !watch_caught_up(&g->w)))
        turns_starve(&gw_state.turns, &g->turn);
    pz_buf_free(&b);
}

/* The idle pass's turn for a ready stream: write, as httpd pumps. */
static void on_turn(struct turn_item *it)
{
    struct etcd_gw *g = container_of(it, struct etcd_gw, turn);
    httpd_stream_kick(g->hc); /* may free g */
}

static void on_watch_notify(void *arg, struct watcher *w)
{
    struct etcd_gw *g = arg;
    if (!g->streaming || !g->hc->streaming)
        return;
    if (w->state == WATCH_LIVE) {
        if (!g->wait_drain)
            make_ready(g);
        return;
    }
    /* cancelled: unregistered, but w still owns its range until
     * watch_remove (etcd_gw_free) */
    if (g->in_rev) {
        /* Part of a revision is out: nothing can follow it cleanly. The
         * client sees the stream cut, as when its connection breaks. */
        pz_info("etcd gateway watch from %s cut: %s", g->hc->c->peer,
                w->state == WATCH_SLOW ? "slow" : "compacted");
        g->streaming = false;
        httpd_stream_abort(g->hc);
        return;
    }
    int64_t compact;
    const char *why = etcd_watch_cancelled(w, &compact);
    write_simple(g, 0, false, true, compact, why);
}

void etcd_gw_cron(void)
{
    uint64_t max_lag = node_watch()->lim.max_lag;
    struct etcd_gw *next;
    for (struct etcd_gw *g = gw_state.streams; g; g = next) {
        next = g->next_s;
        /* Waiting for the idle pass's turn is not the client's doing. */
        if (!g->streaming || g->w.state != WATCH_LIVE || g->ending ||
            g->turn.starved || watch_lag(&g->w) <= max_lag ||
            conn_output_stalled(g->hc->c) <= GW_STALL_MS)
            continue;
        if (g->in_rev) {
            /* The revision begun goes out first, as it is read
             * (client-body-timeout closes a client that does not). */
            g->ending = true;
            watch_judged_slow(&g->w);
            continue;
        }
        watch_cancel(&g->w, WATCH_SLOW); /* frees g */
    }
}

/* One watch per stream, as a Watch call's first create_request: the same
 * keys, start and answers (etcd_watch.c), each as a stream line. */
static void watch_begin(struct etcd_gw *g)
{
    const Etcdserverpb__WatchRequest *wr = (const void *)g->msg;
    const Etcdserverpb__WatchCreateRequest *c = wr->create_request;
    struct watch_hub *hub = node_watch();
    if (gw_state.draining || g->hc->srv->draining) {
        reply_error(g->hc, GRPC_UNAVAILABLE, "etcdserver: server stopped");
        return;
    }
    if (!http_watch_room(g->hc)) {
        reply_error(g->hc, GRPC_UNAVAILABLE, GW_WATCH_NO_ROOM);
        return;
    }
    struct etcd_watch_keys keys;
    uint64_t start;
    int rv = PZ_ENOTFOUND;
    size_t max_key = (size_t)gw_state.cfg->max_key_size;
    bool big = c->key.len > max_key || c->range_end.len > max_key;
    bool empty =
        !big && etcd_watch_keys(c->key.data, c->key.len, c->range_end.data,
                                c->range_end.len, &keys) < 0;
    if (!big && !empty) {
        rv = etcd_watch_start(c->start_revision, kv_revision(node_kv()),
                              watch_hub_first_rev(hub), &start);
        if (rv == 0)
            rv = watch_add(hub, &g->w, keys.from, keys.flen, keys.to, keys.tlen,
                           start);
        etcd_watch_keys_free(&keys);
    }
    bool negative = rv == PZ_EINVAL;
    if (rv < 0 && rv != PZ_ENOTFOUND && rv != PZ_EBUSY && !negative) {
        reply_error(g->hc, GRPC_INTERNAL, "etcdserver: watch failed");
        return;
    }
    g->streaming = true;
    httpd_stream_chunked(g->hc);
    httpd_stream_begin(g->hc, 200, "application/json", HTTPD_STREAM_OPEN);
    if (big || empty || negative || rv == PZ_EBUSY) {
        write_simple(g, -1, true, true, 0,
                     big        ? ETCD_WATCH_KEY_TOO_LARGE
                     : empty    ? ETCD_WATCH_EMPTY
                     : negative ? ETCD_WATCH_NEGATIVE_START
                                : ETCD_WATCH_TOO_MANY);
        return;
    }
    write_simple(g, 0, true, false, 0, NULL);
    if (rv == PZ_ENOTFOUND) {
        write_simple(g, 0, false, true, etcd_rev(watch_hub_first_rev(hub)),
                     ETCD_WATCH_COMPACTED);
        return;
    }
    g->w.data = g;
    g->w.notify = on_watch_notify; /* called with w.data */
    g->w.owner_lag = true;         /* judged by etcd_gw_cron */
    g->registered = true;
    gw_state.n_streams++;
    g->prev_s = NULL;
    g->next_s = gw_state.streams;
    if (gw_state.streams)
        gw_state.streams->prev_s = g;
    gw_state.streams = g;
    if (!watch_caught_up(&g->w))
        make_ready(g);
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
    if (wr->request_union_case !=
        ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        reply_error(g->hc, GRPC_INVALID_ARGUMENT,
                    "the first watch request must be a create_request");
        return;
    }
    if (!http_watch_room(g->hc)) {
        reply_error(g->hc, GRPC_UNAVAILABLE, GW_WATCH_NO_ROOM);
        return;
    }
    etcd_watch_opts_of(wr->create_request, &g->o);
    /* A ReadIndex round first: the watch starts after every write this
     * client may have seen. */
    int rv = node_read(&g->req, false, on_watch_ready);
    if (rv < 0) {
        reply_node_error(g->hc, rv, false);
        return;
    }
    g->in_node = true;
}

void etcd_gw_on_stream(struct etcd_gw *g)
{
    if (!g->streaming)
        return;
    if (!turns_in_pass(&gw_state.turns)) {
        /* its client read what waited: written in the idle pass */
        g->wait_drain = false;
        make_ready(g);
    } else {
        pump(g);
    }
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
    turn_item_init(&g->turn);
    g->hc = hc;
    g->r = r;
    pz_buf_init(&g->wire);
    pz_buf_init(&g->out);
    *out = g;
    const char *av = http_req_header(req, "authorization");
    size_t an = av ? strlen(av) : 0;
    /* One longer than any token is an unknown one all the same: cut, so
     * that the call's metadata stays within the gRPC header limit. */
    if (av && http_bearer_value(&av, &an))
        g->cred = pz_strndup(av, PZ_MIN(an, TOKEN_MAX + 1));
    char err[256];
    if (r->kind == R_WATCH) {
        /* The watch runs here, not through a call: the Watch call's check
         * (auth_grpc_etcd). */
        int denied =
            auth_grpc_etcd(g->cred, ETCD_WATCH, NULL, 0, err, sizeof err);
        if (denied != AUTH_OK) {
            reply_error(hc,
                        denied == AUTH_DENIED ? GRPC_PERMISSION_DENIED
                                              : GRPC_UNAUTHENTICATED,
                        err);
            return;
        }
    }
    const char *body = req->body.data ? req->body.data : "";
    if (r->kind == R_KEEPALIVE) {
        if (read_keepalives(g, body, req->body.len) < 0)
            return;
        httpd_hold(hc);
        keepalive_next(g);
        return;
    }
    if (pbjson_decode(r->req, body, req->body.len, &g->wire, err, sizeof err) <
        0) {
        reply_error(hc, GRPC_INVALID_ARGUMENT, err);
        return;
    }
    httpd_hold(hc);
    if (r->kind == R_GRPC) {
        start_call(g, g->wire.data, g->wire.len);
        return;
    }
    g->msg = protobuf_c_message_unpack(r->req, NULL, g->wire.len,
                                       (const uint8_t *)g->wire.data);
    if (g->msg == NULL) {
        reply_error(hc, GRPC_INVALID_ARGUMENT, "malformed request");
        return;
    }
    start_watch(g);
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
    pz_free(g->cred);
    if (g->registered) {
        watch_remove(&g->w);
        gw_state.n_streams--;
    }
    turns_forget(&g->turn);
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
    pz_buf_free(&g->out);
    pz_free(g);
}

size_t etcd_gw_streams(void)
{
    return gw_state.n_streams;
}

void etcd_gw_close(void)
{
    turns_close(&gw_state.turns);
}

void etcd_gw_drain(void)
{
    gw_state.draining = true;
    struct etcd_gw *g = gw_state.streams;
    while (g) {
        struct etcd_gw *next = g->next_s;
        if (g->streaming && g->hc->streaming) {
            g->streaming = false;
            if (g->in_rev)
                httpd_stream_abort(g->hc); /* part of a line is out */
            else
                httpd_stream_end(g->hc); /* frees g */
        }
        g = next;
    }
    if (gw_state.cl) {
        grpc_client_close(gw_state.cl);
        gw_state.cl = NULL;
    }
}
