/* http.c - the HTTP/1.1 API on top of conn.c: one parser per connection,
 * requests served strictly in order (a pipelined request waits, and the
 * connection stops reading, while the one before it is in flight).
 *
 * Happy path: bytes -> http_parser_feed -> http_api_decode -> node_read or
 * node_propose -> callback -> reply into the connection's output buffer ->
 * next request. Failure modes: a protocol error gets its 4xx and the
 * connection closes after the reply; an API error (404, 405, 400 on bad
 * JSON) gets its reply and the connection stays open; a connection that
 * closes while its request is in flight cancels the node request.
 *
 * Hostile clients: the bytes of a request not yet complete (unparsed input
 * and what the parser holds) are charged to the process-wide partial-input
 * budget (conn.h); a request that would pass it gets 503 and the
 * connection closes. A request has client-header-timeout from its first
 * byte to the end of its headers and client-body-timeout from there to the
 * end of its body, however its bytes trickle in: past either it gets 408
 * and the connection closes. At max-clients a new client evicts a slow or
 * idle connection (conn.c) rather than being refused. */
#include "http.h"

#include <cJSON.h>
#include <stdio.h>
#include <string.h>

#include "fwd.h"
#include "http_parse.h"
#include "log.h"
#include "node.h"
#include "server.h"

struct http_conn {
    struct conn *c;          /* our connection */
    struct http_parser p;    /* request parser */
    struct pz_buf in;        /* received bytes not yet parsed */
    struct http_op op;       /* request being served */
    struct node_req req;     /* its node request, when in flight */
    struct fwd_req fwd;      /* its forwarded copy, when forwarding */
    bool in_flight;          /* waiting for the node or the leader */
    bool forwarding;         /* fwd is in flight */
    bool draining;           /* shutdown: close after this reply */
    bool processing;         /* inside process(): don't recurse */
    int deadline;            /* DEADLINE_*: which one c->deadline is */
};

enum {
    DEADLINE_NONE = 0,    /* no request arriving */
    DEADLINE_HEADERS = 1, /* client-header-timeout from the first byte */
    DEADLINE_BODY = 2,    /* client-body-timeout from the end of headers */
};

/* Input buffers larger than this are freed once empty. */
#define IN_KEEP (4 * 1024)

static struct http_limits parse_limits;
static struct http_api_limits api_limits;
static uint64_t header_timeout; /* client-header-timeout, ms */
static uint64_t body_timeout;   /* client-body-timeout, ms */

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Write one response. A body is sent with Content-Length; 204 has none. */
static void reply(struct http_conn *h, int status, const char *ctype,
                  const char *body, size_t blen, const char *allow,
                  bool close)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "HTTP/1.1 %d %s\r\n", status, status_text(status));
    if (status != 204)
        pz_buf_appendf(&b, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                       ctype, blen);
    if (allow)
        pz_buf_appendf(&b, "Allow: %s\r\n", allow);
    if (close)
        pz_buf_append(&b, "Connection: close\r\n", 19);
    pz_buf_append(&b, "\r\n", 2);
    if (status != 204 && blen)
        pz_buf_append(&b, body, blen);
    conn_write(h->c, b.data, b.len);
    pz_buf_free(&b);
}

static void reply_text(struct http_conn *h, int status, const char *line,
                       const char *allow, bool close)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%s\n", line);
    reply(h, status, "text/plain; charset=utf-8", body,
          (size_t)PZ_MIN(n, (int)sizeof body - 1), allow, close);
}

static void process(struct http_conn *h);

/* Start, switch or stop the request deadline to match where the request
 * in progress is: none while it is served or nothing of the next one
 * arrived, the header deadline from its first byte, the body deadline
 * from the end of its headers. A deadline is set once per phase, so bytes
 * that trickle in never move it. */
static void update_deadline(struct http_conn *h)
{
    int want = DEADLINE_NONE;
    if (!h->in_flight && !conn_is_closing(h->c) &&
        !(h->c->flags & CONN_CLOSE_AFTER)) {
        if (h->p.phase == HTTP_PHASE_BODY)
            want = DEADLINE_BODY;
        else if (http_parser_started(&h->p) || h->in.len > 0)
            want = DEADLINE_HEADERS;
    }
    if (want == h->deadline)
        return;
    h->deadline = want;
    conn_set_deadline(h->c, want == DEADLINE_NONE ? 0
                            : want == DEADLINE_BODY
                                ? conn_now() + body_timeout
                                : conn_now() + header_timeout);
}

/* Charge what the connection holds for requests not yet complete: input
 * not parsed yet, and the parser's state while a request is arriving (a
 * request being served is complete and not counted). False when that
 * would pass the budget. */
static bool account(struct http_conn *h)
{
    if (h->in.len == 0 && h->in.cap > IN_KEEP)
        pz_buf_free(&h->in);
    size_t held = h->in.len;
    if (!h->in_flight && h->p.phase != HTTP_PHASE_DONE &&
        http_parser_started(&h->p))
        held += http_parser_held(&h->p);
    return conn_in_set(h->c, held) == 0;
}

/* Let go of everything held for requests (the connection is closing). */
static void discard(struct http_conn *h)
{
    http_parser_free(&h->p);
    http_parser_init(&h->p, &parse_limits);
    pz_buf_free(&h->in);
    conn_in_set(h->c, 0);
    update_deadline(h);
}

/* The request's bytes would pass max-partial-input: 503, close. */
static void refuse_busy(struct http_conn *h)
{
    pz_debug("http: %s: refused: %zu of %zu bytes of partial input in use",
             h->c->peer, conn_in_total(), conn_in_limit());
    reply_text(h, 503,
               "Server busy: too much request data in progress; "
               "retry later",
               NULL, true);
    conn_close_after_flush(h->c);
    discard(h);
}

/* The request is answered: get ready for the next one. */
static void finish(struct http_conn *h, bool close)
{
    http_op_free(&h->op);
    if (h->in_flight) {
        h->in_flight = false;
        h->c->busy--;
    }
    if (close || h->draining || server_shutting_down()) {
        conn_close_after_flush(h->c);
        update_deadline(h);
        return;
    }
    http_parser_next(&h->p);
    conn_resume(h->c);
    if (!h->processing) {
        process(h); /* an asynchronous reply: serve what is buffered */
        if (!account(h))
            refuse_busy(h);
        update_deadline(h);
    }
}

static bool keep_alive(struct http_conn *h)
{
    return h->p.req.keep_alive && !h->draining && !server_shutting_down();
}

static void reply_node_error(struct http_conn *h, int status)
{
    bool ka = keep_alive(h);
    switch (status) {
    case PZ_ENOLEADER:
        reply_text(h, 503, "Not leader and no leader known", NULL, !ka);
        break;
    case PZ_ENOTLEADER:
        reply_text(h, 503, "Not the leader", NULL, !ka);
        break;
    case PZ_EBUSY:
        reply_text(h, 503, "Leadership transfer in progress", NULL, !ka);
        break;
    case PZ_ELEADERCHANGE:
        reply_text(h, 503, "Leader changed before the write committed",
                   NULL, !ka);
        break;
    case PZ_ESHUTDOWN:
        reply_text(h, 503, "Server is shutting down", NULL, true);
        ka = false;
        break;
    case PZ_ETIMEDOUT:
        reply_text(h, 503, "Timed out waiting for the cluster", NULL, !ka);
        break;
    default: {
        char line[128];
        snprintf(line, sizeof line, "Replication failed: %s",
                 pz_strerror(status));
        reply_text(h, 500, line, NULL, !ka);
    }
    }
    finish(h, !ka);
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
    bool ka = keep_alive(h);
    if (kv_get(node_kv(), h->op.key, h->op.klen, &val, &vlen))
        reply(h, 200, "text/plain", (const char *)val, vlen, NULL, !ka);
    else
        reply_text(h, 404, "Key not found", NULL, !ka);
    finish(h, !ka);
}

static void start_write(struct http_conn *h);

/* The answers of a refused membership request (removal, transfer), at
 * once or after a removal waited (node_remove_member). False if status is
 * not one of them. */
static bool reply_membership_refusal(struct http_conn *h, int status)
{
    bool ka = keep_alive(h);
    bool remove = h->op.kind == HTTP_OP_REMOVE;
    if (status == PZ_ENOTFOUND)
        reply_text(h, 404, "No such member", NULL, !ka);
    else if (status == PZ_EBUSY && h->op.kind != HTTP_OP_SET &&
             h->op.kind != HTTP_OP_DEL)
        reply_text(h, 409,
                   remove ? "Another membership change is in progress"
                          : "A leadership transfer is in progress",
                   NULL, !ka);
    else if (status == PZ_EINVAL)
        reply_text(h, 400,
                   remove ? "Cannot remove the last voter"
                          : "Member is not a voter",
                   NULL, !ka);
    else
        return false;
    finish(h, !ka);
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
    bool ka = keep_alive(h);
    reply(h, 204, NULL, NULL, 0, NULL, !ka);
    finish(h, !ka);
}

/* Reply 200 with o (consumed) as one line of JSON. */
static void reply_json(struct http_conn *h, cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    bool ka = keep_alive(h);
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "%s\n", s);
    cJSON_free(s);
    reply(h, 200, "application/json", b.data, b.len, NULL, !ka);
    pz_buf_free(&b);
    finish(h, !ka);
}

static void add_u64(cJSON *o, const char *name, uint64_t v)
{
    /* Raw numbers: cJSON's doubles would round 64-bit values. */
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    cJSON_AddRawToObject(o, name, num);
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
    add_u64(o, "uptime_seconds", server_uptime_ms() / 1000);
    add_u64(o, "keys", st.keys);
    add_u64(o, "term", st.term);
    add_u64(o, "commit_index", st.commit_index);
    add_u64(o, "applied_index", st.applied_index);
    add_u64(o, "last_index", st.last_index);
    add_u64(o, "persisted_index", st.persisted_index);
    add_u64(o, "fsyncs", st.fsyncs);
    uint64_t snap_index, snap_size;
    node_snapshot_info(&snap_index, &snap_size);
    add_u64(o, "snapshot_index", snap_index);
    add_u64(o, "snapshot_size", snap_size);
    /* Order-independent digest of the state machine: equal on nodes that
     * applied the same entries (compare at equal applied_index). */
    char dg[24];
    snprintf(dg, sizeof dg, "%016llx",
             (unsigned long long)kv_digest(node_kv()));
    cJSON_AddStringToObject(o, "digest", dg);
    add_u64(o, "fsync_entries", st.fsync_entries);
    add_u64(o, "partial_input", conn_in_total());
    cJSON *ms = cJSON_AddArrayToObject(o, "members");
    for (size_t i = 0; i < st.n_members; i++) {
        const struct node_member *m = &st.members[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "name", m->name);
        cJSON_AddStringToObject(j, "raft_addr", m->raft);
        cJSON_AddStringToObject(j, "http_addr", m->http);
        cJSON_AddStringToObject(j, "grpc_addr", m->grpc);
        cJSON_AddBoolToObject(j, "voter", m->voter);
        if (strcmp(st.role, "leader") == 0) {
            add_u64(j, "match_index", m->match);
            add_u64(j, "last_contact_ms", m->last_contact_ms);
        }
        cJSON_AddItemToArray(ms, j);
    }
    reply_json(h, o);
}

static void on_snapshot_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        bool ka = keep_alive(h);
        reply_text(h, 500, "Snapshot failed (see the server log)", NULL, !ka);
        finish(h, !ka);
        return;
    }
    uint64_t index, size;
    node_snapshot_info(&index, &size);
    cJSON *o = cJSON_CreateObject();
    add_u64(o, "snapshot_index", index);
    add_u64(o, "snapshot_size", size);
    reply_json(h, o);
}

/* Cluster-changing requests need "Authorization: Bearer <cluster-token>"
 * when a token is set. Compared in constant time. */
static bool authorized(struct http_conn *h)
{
    const char *tok = server_config()->cluster_token;
    if (tok == NULL || tok[0] == '\0')
        return true;
    const char *a = http_req_header(&h->p.req, "authorization");
    if (a == NULL || strncmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    return pz_token_equal(tok, strlen(tok), a, strlen(a));
}

static void reply_cluster(struct http_conn *h)
{
    struct node_status st;
    node_status(&st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "leader", st.leader);
    add_u64(o, "term", st.term);
    cJSON *ms = cJSON_AddArrayToObject(o, "members");
    for (size_t i = 0; i < st.n_members; i++) {
        const struct node_member *m = &st.members[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "id", m->name);
        cJSON_AddStringToObject(j, "raft_addr", m->raft);
        cJSON_AddStringToObject(j, "http_addr", m->http);
        cJSON_AddStringToObject(j, "grpc_addr", m->grpc);
        cJSON_AddBoolToObject(j, "voter", m->voter);
        cJSON_AddBoolToObject(j, "leader", strcmp(m->name, st.leader) == 0);
        if (strcmp(st.role, "leader") == 0) {
            add_u64(j, "match_index", m->match);
            add_u64(j, "last_contact_ms", m->last_contact_ms);
        }
        cJSON_AddItemToArray(ms, j);
    }
    reply_json(h, o);
}

static void on_forwarded(struct fwd_req *f, int status)
{
    struct http_conn *h = container_of(f, struct http_conn, fwd);
    bool ka = keep_alive(h);
    h->forwarding = false;
    if (status == PZ_EPROTO) {
        reply_text(h, 502, "Bad response from the leader", NULL, !ka);
    } else if (status == PZ_ETIMEDOUT) {
        reply_text(h, 504, "The leader did not answer in time", NULL, !ka);
    } else if (status < 0) {
        reply_text(h, 502, "Leader unreachable", NULL, !ka);
    } else {
        /* Relay the leader's answer as it is. */
        reply(h, f->http_status,
              f->content_type[0] ? f->content_type : "text/plain",
              f->body.data, f->body.len, f->allow[0] ? f->allow : NULL, !ka);
    }
    pz_buf_free(&f->body);
    finish(h, !ka);
}

/* A follower sends the write to the leader over the kept-alive
 * connection fwd.c holds for it. */
static void forward(struct http_conn *h)
{
    const char *addr = node_leader_http_addr();
    struct http_req *req = &h->p.req;
    if (http_req_header(req, "x-pyazdb-forwarded")) {
        /* It came from a node that took us for the leader: never forward
         * twice; the client retries once the cluster agrees. */
        reply_node_error(h, PZ_ENOTLEADER);
        return;
    }
    if (addr == NULL) {
        reply_text(h, 503, "Leader address not known yet", NULL,
                   !keep_alive(h));
        finish(h, !keep_alive(h));
        return;
    }
    /* The request passed our checks: the leader gets our token. */
    h->fwd.auth = server_config()->cluster_token;
    int rv = fwd_send(&h->fwd, addr, llhttp_method_name(req->method),
                      req->url.data, req->body.data ? req->body.data : "",
                      req->body.len, on_forwarded);
    if (rv < 0) {
        pz_buf_free(&h->fwd.body);
        reply_text(h, 502, "Leader unreachable", NULL, !keep_alive(h));
        finish(h, !keep_alive(h));
        return;
    }
    h->forwarding = true;
}

static void on_leader_known(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    if (status < 0) {
        reply_node_error(h, PZ_ENOLEADER);
        return;
    }
    start_write(h);
}

static void on_transfer_done(struct node_req *req, int status)
{
    struct http_conn *h = container_of(req, struct http_conn, req);
    bool ka = keep_alive(h);
    if (status == 0)
        reply(h, 204, NULL, NULL, 0, NULL, !ka);
    else if (status == PZ_ELEADERCHANGE)
        reply_text(h, 409, "Another node won the election", NULL, !ka);
    else if (status == PZ_ETIMEDOUT)
        reply_text(h, 503, "Leadership transfer did not complete", NULL, !ka);
    else {
        reply_node_error(h, status);
        return;
    }
    finish(h, !ka);
}

/* Run a request that needs the leader (writes, membership changes) here
 * if this node leads, forward it if another does, wait (bounded) for an
 * election if none does. h is in flight. */
static void start_write(struct http_conn *h)
{
    struct pz_buf cmd;
    int rv;
    pz_buf_init(&cmd);
    switch (h->op.kind) {
    case HTTP_OP_SET:
    case HTTP_OP_DEL:
        if (h->op.kind == HTTP_OP_SET)
            rv = kv_encode_set(&cmd, h->op.key, h->op.klen, h->op.value,
                               h->op.vlen);
        else
            rv = kv_encode_del(&cmd, h->op.key, h->op.klen);
        if (rv == 0)
            rv = node_propose(&h->req, (const uint8_t *)cmd.data, cmd.len,
                              on_write_done);
        break;
    case HTTP_OP_REMOVE:
        rv = node_remove_member(&h->req, h->op.key, on_write_done);
        break;
    case HTTP_OP_TRANSFER:
        rv = node_transfer(&h->req, h->op.key, on_transfer_done);
        break;
    default:
        pz_assert(0);
    }
    pz_buf_free(&cmd);
    bool ka = keep_alive(h);
    if (rv == PZ_ETOOBIG) {
        reply_text(h, 413, "Request too large", NULL, !ka);
        finish(h, !ka);
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

/* Serve the complete request in h->p.req. */
static void dispatch(struct http_conn *h)
{
    int rv;
    conn_mark_served(h->c);
    http_api_decode(&h->p.req, &api_limits, &h->op);
    bool ka = keep_alive(h);
    switch (h->op.kind) {
    case HTTP_OP_ERROR:
        reply_text(h, h->op.status, h->op.reason, h->op.allow, !ka);
        finish(h, !ka);
        return;
    case HTTP_OP_HEALTH:
        reply_text(h, 200, "ok", NULL, !ka);
        finish(h, !ka);
        return;
    case HTTP_OP_STATUS:
        reply_status(h);
        return;
    case HTTP_OP_GET:
        h->in_flight = true;
        h->c->busy++;
        conn_pause(h->c);
        rv = node_read(&h->req, h->op.stale, on_read_ready);
        break;
    case HTTP_OP_SET:
    case HTTP_OP_DEL:
    case HTTP_OP_REMOVE:
    case HTTP_OP_TRANSFER:
        if (h->op.needs_auth && !authorized(h)) {
            reply_text(h, 401, "Unauthorized", NULL, !ka);
            finish(h, !ka);
            return;
        }
        h->in_flight = true;
        h->c->busy++;
        conn_pause(h->c);
        start_write(h);
        return;
    case HTTP_OP_SNAPSHOT:
        if (!authorized(h)) {
            reply_text(h, 401, "Unauthorized", NULL, !ka);
            finish(h, !ka);
            return;
        }
        h->in_flight = true;
        h->c->busy++;
        conn_pause(h->c);
        if (node_snapshot_now(&h->req, on_snapshot_done) < 0)
            on_snapshot_done(&h->req, PZ_EIO);
        return;
    case HTTP_OP_CLUSTER:
        if (!node_is_leader() && node_leader_http_addr() &&
            !http_req_header(&h->p.req, "x-pyazdb-forwarded")) {
            /* Replication progress is the leader's to tell. */
            h->in_flight = true;
            h->c->busy++;
            conn_pause(h->c);
            forward(h);
            return;
        }
        reply_cluster(h);
        return;
    default:
        pz_assert(0);
    }
    if (rv < 0)
        reply_node_error(h, rv);
}

static void process(struct http_conn *h)
{
    h->processing = true;
    while (!h->in_flight && !conn_is_closing(h->c) && h->in.len > 0) {
        size_t used;
        int r = http_parser_feed(&h->p, h->in.data, h->in.len, &used);
        pz_buf_consume(&h->in, used);
        if (r == HTTP_PARSE_NEED_MORE)
            break;
        if (r == HTTP_PARSE_ERROR) {
            reply_text(h, h->p.err_status, h->p.err_reason, NULL, true);
            conn_close_after_flush(h->c);
            discard(h);
            break;
        }
        account(h); /* complete: only shrinks (what follows it is in) */
        dispatch(h);
        if (h->c->flags & CONN_CLOSE_AFTER)
            break;
    }
    h->processing = false;
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct http_conn *h = c->proto;
    if (c->flags & CONN_CLOSE_AFTER)
        return; /* replying to a fatal error: ignore the rest */
    /* The bytes are charged before they are held; what the parser keeps
     * of them is charged instead once they are parsed. */
    if (conn_in_reserve(c, len) < 0) {
        refuse_busy(h);
        return;
    }
    pz_buf_append(&h->in, data, len);
    process(h);
    if (!account(h))
        refuse_busy(h);
    update_deadline(h);
}

/* A request did not arrive in time (client-header-timeout or
 * client-body-timeout): 408, close. */
static void on_deadline(struct conn *c)
{
    struct http_conn *h = c->proto;
    int which = h->deadline;
    h->deadline = DEADLINE_NONE;
    if (which == DEADLINE_NONE || h->in_flight || (c->flags & CONN_CLOSE_AFTER))
        return;
    pz_debug("http: %s: request %s not received in time", c->peer,
             which == DEADLINE_BODY ? "body" : "headers");
    reply_text(h, 408,
               which == DEADLINE_BODY ? "Request body not received in time"
                                      : "Request headers not received in time",
               NULL, true);
    conn_close_after_flush(c);
    discard(h);
}

/* Evicted at max-clients: a client caught mid-request is told why. */
static void on_evict(struct conn *c)
{
    struct http_conn *h = c->proto;
    if (h && !h->in_flight && http_parser_started(&h->p))
        reply_text(h, 503, "Too many clients", NULL, true);
}

static int on_open(struct conn *c)
{
    struct http_conn *h = pz_calloc(1, sizeof *h);
    h->c = c;
    http_parser_init(&h->p, &parse_limits);
    pz_buf_init(&h->in);
    c->proto = h;
    return 0;
}

static void on_close(struct conn *c)
{
    struct http_conn *h = c->proto;
    if (h == NULL)
        return;
    if (h->in_flight)
        node_cancel(&h->req);
    if (h->forwarding) {
        fwd_cancel(&h->fwd);
        pz_buf_free(&h->fwd.body);
    }
    http_op_free(&h->op);
    http_parser_free(&h->p);
    pz_buf_free(&h->in);
    pz_free(h);
}

static void on_refuse(struct conn *c)
{
    static const char msg[] = "HTTP/1.1 503 Service Unavailable\r\n"
                              "Content-Type: text/plain; charset=utf-8\r\n"
                              "Content-Length: 17\r\n"
                              "Connection: close\r\n\r\n"
                              "Too many clients\n";
    conn_write(c, msg, sizeof msg - 1);
}

static const struct conn_ops http_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_close = on_close,
    .on_deadline = on_deadline,
    .on_evict = on_evict,
};

int http_start(struct conn_listener *ls, const struct pz_config *cfg,
               char *err, size_t errlen)
{
    parse_limits.max_header_bytes = (size_t)cfg->http_max_header_size;
    parse_limits.max_headers = (size_t)cfg->http_max_headers;
    parse_limits.max_body = (size_t)cfg->http_max_body;
    api_limits.max_key = (size_t)cfg->max_key_size;
    api_limits.max_value = (size_t)cfg->max_value_size;
    header_timeout = (uint64_t)cfg->client_header_timeout_ms;
    body_timeout = (uint64_t)cfg->client_body_timeout_ms;
    int rv = conn_listen(ls, cfg->http_addr, &http_ops, "http",
                         (size_t)cfg->max_clients, err, errlen);
    if (rv == 0) {
        ls->on_refuse = on_refuse;
        ls->evict = true;
    }
    return rv;
}

void http_drain(struct conn_listener *ls)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &ls->conns)
    {
        struct conn *c = container_of(e, struct conn, q);
        struct http_conn *h = c->proto;
        if (h == NULL || !h->in_flight)
            conn_close_after_flush(c); /* a reply may still be going out */
        else
            h->draining = true;
    }
}
