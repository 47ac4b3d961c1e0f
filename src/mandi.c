/* mandi.c - the discovery service: its HTTP API on conn.c, its in-memory
 * state (the leader, the join requests) with their expiry, the term rule,
 * and mandi mode's own loop (mandi_run). The wire types and their codec
 * are mandi_codec.c's.
 *
 * Happy path: a request is parsed (http_parse.h), answered at once from
 * memory (nothing here waits), and the next pipelined request is served;
 * connections are kept alive. The leader expires leader_ttl after its last
 * PUT, a join request join_ttl after it was posted; a timer drops expired
 * entries every sweep_ms, and every read checks the deadline again so an
 * expired entry is never served between two sweeps.
 *
 * Failure modes: a malformed request (HTTP syntax, body or headers over
 * the limits) gets its 4xx and the connection closes after the reply; an
 * API error (404, 405, 400, 401, 409, 503) gets its reply and the
 * connection stays open. A client that sends requests without reading the
 * replies is not served further once its unread output passes out_pause
 * (and conn.c closes it past conn-hard-limit). Nothing survives a restart:
 * the leader is known again after its next PUT, joiners post again. */
#include "mandi.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conn.h"
#include "http_parse.h"
#include "log.h"
#include "mandi_codec.h"

#define CLOSE_GRACE_MS 2000

/* --- the term rule (mandi.h) ---------------------------------------------- */

uint64_t mandi_term_ceiling(const struct mandi_terms *t, uint64_t now)
{
    if (!t->known)
        return UINT64_MAX;
    uint64_t quiet = now > t->hi_at ? now - t->hi_at : 0;
    uint64_t allow = MANDI_TERM_JUMP + quiet / MANDI_TERM_GROWTH_MS;
    return t->hi > UINT64_MAX - allow ? UINT64_MAX : t->hi + allow;
}

enum mandi_term_verdict mandi_term_check(const struct mandi_terms *t, bool live,
                                         uint64_t live_term, uint64_t term,
                                         uint64_t now)
{
    if (term > mandi_term_ceiling(t, now))
        return MANDI_TERM_IMPLAUSIBLE;
    if (live && term < live_term)
        return live_term - term <= MANDI_TERM_JUMP ? MANDI_TERM_STALE
                                                   : MANDI_TERM_DISPUTED;
    return MANDI_TERM_OK;
}

void mandi_term_accept(struct mandi_terms *t, uint64_t term, uint64_t now)
{
    if (!t->known || term >= t->hi ||
        (now >= t->hi_at && now - t->hi_at >= MANDI_TERM_MEMORY_MS)) {
        t->known = true;
        t->hi = term;
        t->hi_at = now;
    }
}

/* --- state ------------------------------------------------------------ */

struct join_entry {
    struct pz_queue q;   /* in m->joins, oldest post first */
    struct mandi_join j; /* as posted, started_at set by us */
    uint64_t expires;    /* uv_now() at which it is forgotten */
};

struct mandi_conn {
    struct mandi *m;      /* owner */
    struct conn *c;       /* our connection */
    struct http_parser p; /* request parser */
    struct pz_buf in;     /* received bytes not yet parsed */
    bool head;            /* serving a HEAD request: replies have no body */
};

struct mandi {
    uv_loop_t *loop;            /* borrowed */
    struct mandi_opts o;        /* copy; o.token points to token */
    char *token;                /* owned copy, NULL when writes are open */
    size_t token_len;           /* its length */
    struct http_limits lim;     /* request parsing limits */
    struct conn_listener ls;    /* accepts clients; ls.data == this */
    int port;                   /* bound port */
    uv_timer_t timer;           /* sweep; while closing, the grace deadline */
    uv_check_t check;           /* closing: waits for the last connection */
    bool have_leader;           /* leader is set and maybe not expired */
    struct mandi_leader leader; /* last accepted PUT */
    uint64_t leader_expires;    /* uv_now() at which it is forgotten */
    struct pz_queue joins;      /* struct join_entry, oldest first */
    size_t n_joins;             /* length of joins */
    struct pz_ratelimit loglim; /* log lines that requests trigger */
    struct mandi_terms terms;   /* the term rule's memory (mandi.h) */
    bool closing;               /* mandi_close was called */
    void (*close_cb)(void *);   /* mandi_close's callback */
    void *close_data;           /* its argument */
};

static uint64_t now_ms(struct mandi *m)
{
    return uv_now(m->loop);
}

/* The wall clock as RFC 3339 in UTC, with milliseconds. */
static void wall_clock(char *buf, size_t len)
{
    uv_timeval64_t tv;
    struct tm tm;
    if (uv_gettimeofday(&tv) != 0)
        tv.tv_sec = time(NULL), tv.tv_usec = 0;
    time_t s = (time_t)tv.tv_sec;
    char date[32];
    gmtime_r(&s, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", date, (int)(tv.tv_usec / 1000) % 1000);
}

/* An escaped copy of untrusted text s for a log line; buf is an array. */
#define ESC(buf, s) pz_escape(buf, sizeof buf, s, strlen(s))

/* Lines that requests trigger (a refused request, a new leader, a join
 * request) are limited to LOG_BURST a second, so that a client cannot
 * flood the log; how many were dropped is said with the next line let
 * through, or by the sweep. */
#define LOG_BURST 20
#define LOG_WINDOW_MS 1000

static bool log_ok(struct mandi *m)
{
    unsigned dropped;
    bool ok = pz_ratelimit(&m->loglim, now_ms(m), LOG_WINDOW_MS, LOG_BURST,
                             &dropped);
    if (dropped)
        pz_warn("%u log lines about requests dropped (more than %d a "
                "second)",
                dropped, LOG_BURST);
    return ok;
}

static void expire_leader(struct mandi *m, uint64_t now)
{
    if (m->have_leader && now >= m->leader_expires) {
        char id[PZ_ESCAPED_MAX];
        pz_info("leader %s (term %llu) expired: no update for %llu ms",
                ESC(id, m->leader.id), (unsigned long long)m->leader.term,
                (unsigned long long)m->o.leader_ttl_ms);
        m->have_leader = false;
    }
}

static void drop_join(struct mandi *m, struct join_entry *e)
{
    pz_queue_remove(&e->q);
    m->n_joins--;
    pz_free(e);
}

/* Posting order is expiry order: stop at the first live one. */
static void expire_joins(struct mandi *m, uint64_t now)
{
    while (!pz_queue_empty(&m->joins)) {
        struct join_entry *e =
            container_of(pz_queue_head(&m->joins), struct join_entry, q);
        if (now < e->expires)
            break;
        char id[PZ_ESCAPED_MAX];
        pz_debug("join request of %s expired", ESC(id, e->j.id));
        drop_join(m, e);
    }
}

static struct join_entry *find_join(struct mandi *m, const char *id)
{
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &m->joins)
    {
        struct join_entry *e = container_of(q, struct join_entry, q);
        if (strcmp(e->j.id, id) == 0)
            return e;
    }
    return NULL;
}

static void drop_state(struct mandi *m)
{
    m->have_leader = false;
    while (!pz_queue_empty(&m->joins))
        drop_join(m,
                  container_of(pz_queue_head(&m->joins), struct join_entry, q));
}

static void on_sweep(uv_timer_t *t)
{
    struct mandi *m = t->data;
    uint64_t now = now_ms(m);
    expire_leader(m, now);
    expire_joins(m, now);
    if (m->loglim.dropped && now - m->loglim.start >= LOG_WINDOW_MS) {
        /* Quiet again: say what was dropped. */
        pz_warn("%u log lines about requests dropped (more than %d a "
                "second)",
                m->loglim.dropped, LOG_BURST);
        m->loglim.dropped = 0;
    }
}

/* --- HTTP ------------------------------------------------------------- */

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Error";
    }
}

struct reply {
    int status;        /* HTTP status */
    const char *ctype; /* Content-Type, NULL for 204 */
    const char *body;  /* body bytes */
    size_t blen;       /* their length */
    const char *allow; /* Allow header (405), or NULL */
    bool challenge;    /* add WWW-Authenticate (401) */
    bool close;        /* Connection: close */
};

static void send_reply(struct mandi_conn *mc, const struct reply *r)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "HTTP/1.1 %d %s\r\n", r->status, status_text(r->status));
    if (r->status != 204)
        pz_buf_appendf(&b, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                       r->ctype, r->blen);
    if (r->allow)
        pz_buf_appendf(&b, "Allow: %s\r\n", r->allow);
    if (r->challenge)
        pz_buf_appendf(&b, "WWW-Authenticate: Bearer realm=\"mandi\"\r\n");
    if (r->close)
        pz_buf_appendf(&b, "Connection: close\r\n");
    pz_buf_append(&b, "\r\n", 2);
    if (r->status != 204 && !mc->head)
        pz_buf_append(&b, r->body, r->blen);
    conn_write(mc->c, b.data, b.len);
    pz_buf_free(&b);
}

/* An error: one line of text. */
static void send_text(struct mandi_conn *mc, int status, const char *line,
                      bool close)
{
    char body[256];
    int n = snprintf(body, sizeof body, "%s\n", line);
    struct reply r = {.status = status,
                      .ctype = "text/plain; charset=utf-8",
                      .body = body,
                      .blen = (size_t)PZ_MIN(n, (int)sizeof body - 1),
                      .close = close};
    send_reply(mc, &r);
}

static void send_json(struct mandi_conn *mc, struct pz_buf *json, bool close)
{
    pz_buf_append(json, "\n", 1);
    struct reply r = {.status = 200,
                      .ctype = "application/json",
                      .body = json->data,
                      .blen = json->len,
                      .close = close};
    send_reply(mc, &r);
}

static void send_204(struct mandi_conn *mc, bool close)
{
    struct reply r = {.status = 204, .close = close};
    send_reply(mc, &r);
}

/* Writes need `Authorization: Bearer <token>` when a token is set. */
static bool authorized(struct mandi *m, const struct http_req *req)
{
    if (m->token == NULL)
        return true;
    const char *h = http_req_header(req, "authorization");
    if (h == NULL)
        return false;
    h += strspn(h, " \t");
    if (strncasecmp(h, "bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return false;
    h += 6;
    h += strspn(h, " \t");
    size_t n = strlen(h);
    while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    return pz_token_equal(m->token, m->token_len, h, n);
}

static const char *body_of(const struct http_req *req, size_t *len)
{
    *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

/* Log a refused write (rate-limited). why is one of the parsers' fixed
 * reasons, never text from the request; the peer address is the
 * kernel's. */
static void refused(struct mandi_conn *mc, const char *what, const char *why)
{
    if (log_ok(mc->m))
        pz_warn("refused %s from %s: %s", what, mc->c->peer, why);
}

static void get_leader(struct mandi_conn *mc, bool close)
{
    struct mandi *m = mc->m;
    expire_leader(m, now_ms(m));
    if (!m->have_leader) {
        send_text(mc, 404, "leader not available", close);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    mandi_leader_to_json(&m->leader, true, &b);
    send_json(mc, &b, close);
    pz_buf_free(&b);
}

static void put_leader(struct mandi_conn *mc, const struct http_req *req,
                       bool close)
{
    struct mandi *m = mc->m;
    struct mandi_leader l;
    char why[128];
    size_t blen;
    const char *body = body_of(req, &blen);
    if (mandi_parse_leader(body, blen, &l, why, sizeof why) < 0) {
        refused(mc, "PUT /leader", why);
        send_text(mc, 400, why, close);
        return;
    }
    uint64_t now = now_ms(m);
    expire_leader(m, now);
    char id[PZ_ESCAPED_MAX], holder[PZ_ESCAPED_MAX];
    switch (mandi_term_check(&m->terms, m->have_leader, m->leader.term, l.term,
                             now)) {
    case MANDI_TERM_IMPLAUSIBLE: {
        unsigned long long most = mandi_term_ceiling(&m->terms, now);
        if (log_ok(m))
            pz_warn("refused leader %s from %s at term %llu: implausible, "
                    "the highest recent term is %llu",
                    ESC(id, l.id), mc->c->peer, (unsigned long long)l.term,
                    (unsigned long long)m->terms.hi);
        snprintf(why, sizeof why, "implausible term (at most %llu now)", most);
        send_text(mc, 400, why, close);
        return;
    }
    case MANDI_TERM_STALE:
        if (log_ok(m))
            pz_warn("refused leader %s at term %llu: %s holds term %llu",
                    ESC(id, l.id), (unsigned long long)l.term,
                    ESC(holder, m->leader.id),
                    (unsigned long long)m->leader.term);
        send_text(mc, 409, "stale term", close);
        return;
    case MANDI_TERM_DISPUTED:
        if (log_ok(m))
            pz_warn("leader %s at term %llu from %s replaces %s at term "
                    "%llu: more than %d terms apart, the higher one is not "
                    "plausible",
                    ESC(id, l.id), (unsigned long long)l.term, mc->c->peer,
                    ESC(holder, m->leader.id),
                    (unsigned long long)m->leader.term, MANDI_TERM_JUMP);
        break;
    case MANDI_TERM_OK:
        break;
    }
    mandi_term_accept(&m->terms, l.term, now);
    bool changed = !m->have_leader || strcmp(l.id, m->leader.id) != 0 ||
                   l.term != m->leader.term ||
                   strcmp(l.addr, m->leader.addr) != 0;
    wall_clock(l.updated_at, sizeof l.updated_at);
    m->leader = l;
    m->have_leader = true;
    m->leader_expires = now + m->o.leader_ttl_ms;
    if (changed && log_ok(m)) {
        char a[PZ_ESCAPED_MAX], h[PZ_ESCAPED_MAX], g[PZ_ESCAPED_MAX];
        pz_info("leader is %s (term %llu), raft %s, http %s, grpc %s",
                ESC(id, l.id), (unsigned long long)l.term, ESC(a, l.addr),
                ESC(h, l.http_addr), ESC(g, l.grpc_addr));
    }
    send_204(mc, close);
}

static void get_joins(struct mandi_conn *mc, bool close)
{
    struct mandi *m = mc->m;
    expire_joins(m, now_ms(m));
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "[", 1);
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &m->joins)
    {
        struct join_entry *e = container_of(q, struct join_entry, q);
        if (b.len > 1)
            pz_buf_append(&b, ",", 1);
        mandi_join_to_json(&e->j, true, &b);
    }
    pz_buf_append(&b, "]", 1);
    send_json(mc, &b, close);
    pz_buf_free(&b);
}

static void post_join(struct mandi_conn *mc, const struct http_req *req,
                      bool close)
{
    struct mandi *m = mc->m;
    struct mandi_join j;
    char why[128];
    size_t blen;
    const char *body = body_of(req, &blen);
    if (mandi_parse_join(body, blen, &j, why, sizeof why) < 0) {
        refused(mc, "POST /join-requests", why);
        send_text(mc, 400, why, close);
        return;
    }
    uint64_t now = now_ms(m);
    expire_joins(m, now);
    struct join_entry *e = find_join(m, j.id);
    if (e) {
        pz_queue_remove(&e->q); /* a repeat replaces, and moves last */
    } else {
        if (m->n_joins >= m->o.max_joins) {
            char id[PZ_ESCAPED_MAX];
            if (log_ok(m))
                pz_warn("refused join request of %s: %zu pending "
                        "(mandi-max-join-requests)",
                        ESC(id, j.id), m->n_joins);
            send_text(mc, 503, "too many join requests", close);
            return;
        }
        e = pz_malloc(sizeof *e);
        m->n_joins++;
        char id[PZ_ESCAPED_MAX], a[PZ_ESCAPED_MAX];
        if (log_ok(m))
            pz_info("join request from %s at %s", ESC(id, j.id),
                    ESC(a, j.addr));
    }
    wall_clock(j.started_at, sizeof j.started_at);
    e->j = j;
    e->expires = now + m->o.join_ttl_ms;
    pz_queue_push(&m->joins, &e->q);
    send_204(mc, close);
}

static void delete_join(struct mandi_conn *mc, const struct http_req *req,
                        bool close)
{
    struct mandi *m = mc->m;
    char *id = NULL;
    size_t len = 0;
    int rv = http_query_get(req->url.data, req->url.len, "id", &id, &len);
    if (rv <= 0 || len == 0 || memchr(id, '\0', len)) {
        pz_free(id);
        refused(mc, "DELETE /join-requests", "missing id");
        send_text(mc, 400, "missing id", close);
        return;
    }
    const char *problem = mandi_text_problem(id, len);
    if (problem) {
        char why[64];
        snprintf(why, sizeof why, "'id' %s", problem);
        pz_free(id);
        refused(mc, "DELETE /join-requests", why);
        send_text(mc, 400, why, close);
        return;
    }
    struct join_entry *e = find_join(m, id);
    if (e) {
        char eid[PZ_ESCAPED_MAX];
        if (log_ok(m))
            pz_info("join request of %s deleted", ESC(eid, e->j.id));
        drop_join(m, e);
    }
    pz_free(id);
    send_204(mc, close);
}

static void method_not_allowed(struct mandi_conn *mc, const char *allow,
                               bool close)
{
    char body[] = "method not allowed\n";
    struct reply r = {.status = 405,
                      .ctype = "text/plain; charset=utf-8",
                      .body = body,
                      .blen = sizeof body - 1,
                      .allow = allow,
                      .close = close};
    send_reply(mc, &r);
}

static void unauthorized(struct mandi_conn *mc, const char *what, bool close)
{
    refused(mc, what, "unauthorized");
    char body[] = "unauthorized\n";
    struct reply r = {.status = 401,
                      .ctype = "text/plain; charset=utf-8",
                      .body = body,
                      .blen = sizeof body - 1,
                      .challenge = true,
                      .close = close};
    send_reply(mc, &r);
}

/* Serve the complete request in mc->p.req. */
static void dispatch(struct mandi_conn *mc)
{
    struct mandi *m = mc->m;
    const struct http_req *req = &mc->p.req;
    bool close = !req->keep_alive || m->closing;
    struct pz_buf path;
    mc->head = req->method == HTTP_HEAD;
    pz_buf_init(&path);
    if (http_url_path(req->url.data, req->url.len, &path) < 0) {
        send_text(mc, 400, "bad request target", close);
    } else if (strcmp(path.data, "/leader") == 0) {
        if (req->method == HTTP_GET)
            get_leader(mc, close);
        else if (req->method != HTTP_PUT)
            method_not_allowed(mc, "GET, PUT", close);
        else if (!authorized(m, req))
            unauthorized(mc, "PUT /leader", close);
        else
            put_leader(mc, req, close);
    } else if (strcmp(path.data, "/join-requests") == 0) {
        if (req->method == HTTP_GET)
            get_joins(mc, close);
        else if (req->method != HTTP_POST && req->method != HTTP_DELETE)
            method_not_allowed(mc, "GET, POST, DELETE", close);
        else if (!authorized(m, req))
            unauthorized(mc,
                         req->method == HTTP_POST ? "POST /join-requests"
                                                  : "DELETE /join-requests",
                         close);
        else if (req->method == HTTP_POST)
            post_join(mc, req, close);
        else
            delete_join(mc, req, close);
    } else {
        send_text(mc, 404, "404 page not found", close);
    }
    pz_buf_free(&path);
    if (close)
        conn_close_after_flush(mc->c);
}

static void process(struct mandi_conn *mc)
{
    struct conn *c = mc->c;
    while (!conn_is_closing(c) && !(c->flags & CONN_CLOSE_AFTER) &&
           mc->in.len > 0) {
        if (conn_output_pending(c) > mc->m->o.out_pause) {
            /* Serve the rest once the client has read this. */
            conn_pause(c);
            return;
        }
        size_t used;
        int r = http_parser_feed(&mc->p, mc->in.data, mc->in.len, &used);
        pz_buf_consume(&mc->in, used);
        if (r == HTTP_PARSE_NEED_MORE)
            break;
        if (r == HTTP_PARSE_ERROR) {
            send_text(mc, mc->p.err_status, mc->p.err_reason, true);
            conn_close_after_flush(c);
            pz_buf_reset(&mc->in);
            break;
        }
        dispatch(mc);
        mc->head = false;
        http_parser_next(&mc->p);
    }
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct mandi_conn *mc = c->proto;
    if (mc == NULL || (c->flags & CONN_CLOSE_AFTER))
        return; /* replying to a fatal error: ignore the rest */
    pz_buf_append(&mc->in, data, len);
    process(mc);
}

static void on_drain(struct conn *c)
{
    struct mandi_conn *mc = c->proto;
    if (mc == NULL || !(c->flags & CONN_PAUSED))
        return;
    conn_resume(c);
    process(mc);
}

static int on_open(struct conn *c)
{
    struct mandi *m = c->ls->data;
    struct mandi_conn *mc = pz_calloc(1, sizeof *mc);
    mc->m = m;
    mc->c = c;
    http_parser_init(&mc->p, &m->lim);
    pz_buf_init(&mc->in);
    c->proto = mc;
    return 0;
}

static void on_close(struct conn *c)
{
    struct mandi_conn *mc = c->proto;
    if (mc == NULL)
        return;
    http_parser_free(&mc->p);
    pz_buf_free(&mc->in);
    pz_free(mc);
}

static void on_refuse(struct conn *c)
{
    static const char msg[] = "HTTP/1.1 503 Service Unavailable\r\n"
                              "Content-Type: text/plain; charset=utf-8\r\n"
                              "Content-Length: 17\r\n"
                              "Connection: close\r\n\r\n"
                              "too many clients\n";
    conn_write(c, msg, sizeof msg - 1);
}

static const struct conn_ops mandi_ops = {
    .on_open = on_open,
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
};

/* --- lifecycle -------------------------------------------------------- */

int mandi_opts_from_config(const struct pz_config *cfg, struct mandi_opts *o)
{
    char host[256];
    int port;
    memset(o, 0, sizeof *o);
    if (cfg_url_hostport(cfg->mandi_addr, host, sizeof host, &port) < 0)
        return PZ_EINVAL;
    snprintf(o->listen_addr, sizeof o->listen_addr,
             strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    o->token = cfg->cluster_token;
    o->leader_ttl_ms = (uint64_t)cfg->mandi_leader_ttl_ms;
    o->join_ttl_ms = (uint64_t)cfg->mandi_join_ttl_ms;
    o->sweep_ms = (uint64_t)cfg->mandi_sweep_interval_ms;
    o->max_joins = (size_t)cfg->mandi_max_join_requests;
    o->max_clients = (size_t)cfg->max_clients;
    o->max_body = PZ_MIN((size_t)cfg->http_max_body, (size_t)MANDI_MAX_BODY);
    o->max_header_bytes = (size_t)cfg->http_max_header_size;
    o->max_headers = (size_t)cfg->http_max_headers;
    o->out_pause = (size_t)cfg->conn_high_water;
    return 0;
}

static void free_mandi(struct mandi *m)
{
    void (*cb)(void *) = m->close_cb;
    void *data = m->close_data;
    drop_state(m);
    pz_free(m->token);
    pz_free(m);
    if (cb)
        cb(data);
}

/* Two hops (as transport.c does): a handle closed now may share a close
 * pass with handles closed just before it, such as the listener, and run
 * first; the one closed from its callback runs in a later pass. */
static void on_fin_b(uv_handle_t *h)
{
    free_mandi(h->data);
}

static void on_fin_a(uv_handle_t *h)
{
    struct mandi *m = h->data;
    uv_close((uv_handle_t *)&m->check, on_fin_b);
}

static void finish(struct mandi *m)
{
    uv_close((uv_handle_t *)&m->timer, on_fin_a);
}

static void on_check(uv_check_t *h)
{
    struct mandi *m = h->data;
    if (m->ls.n_conns > 0)
        return;
    uv_check_stop(h);
    finish(m);
}

static void on_grace(uv_timer_t *t)
{
    struct mandi *m = t->data;
    if (m->ls.n_conns > 0)
        pz_warn("closing %zu connections still not flushed after %d ms",
                m->ls.n_conns, CLOSE_GRACE_MS);
    conn_listener_close_all(&m->ls);
}

struct mandi *mandi_new(uv_loop_t *loop, const struct mandi_opts *opts,
                        char *err, size_t errlen)
{
    struct mandi *m = pz_calloc(1, sizeof *m);
    m->loop = loop;
    m->o = *opts;
    if (opts->token && opts->token[0]) {
        m->token = pz_strdup(opts->token);
        m->token_len = strlen(m->token);
    }
    m->o.token = m->token;
    m->lim.max_body = opts->max_body;
    m->lim.max_header_bytes = opts->max_header_bytes;
    m->lim.max_headers = opts->max_headers;
    pz_queue_init(&m->joins);
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    uv_check_init(loop, &m->check);
    m->check.data = m;
    int rv = conn_listen(&m->ls, opts->listen_addr, &mandi_ops, "mandi",
                         opts->max_clients, err, errlen);
    if (rv < 0) {
        /* The listener's handle may be closing: free m from the loop,
         * after it (the caller runs the loop to finish). */
        m->closing = true;
        finish(m);
        return NULL;
    }
    m->ls.data = m;
    m->ls.on_refuse = on_refuse;
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getsockname(&m->ls.tcp, (struct sockaddr *)&ss, &sl) == 0)
        m->port = ntohs(ss.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)&ss)->sin6_port
                            : ((struct sockaddr_in *)&ss)->sin_port);
    uv_timer_start(&m->timer, on_sweep, m->o.sweep_ms, m->o.sweep_ms);
    return m;
}

int mandi_port(const struct mandi *m)
{
    return m->port;
}

void mandi_close(struct mandi *m, void (*cb)(void *data), void *data)
{
    pz_assert(!m->closing);
    m->closing = true;
    m->close_cb = cb;
    m->close_data = data;
    drop_state(m);
    conn_listener_stop(&m->ls, NULL);
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &m->ls.conns)
    conn_close_after_flush(container_of(q, struct conn, q));
    uv_timer_stop(&m->timer);
    uv_timer_start(&m->timer, on_grace, CLOSE_GRACE_MS, 0);
    uv_check_start(&m->check, on_check);
}

/* --- mandi mode ------------------------------------------------------- */

struct mandi_proc {
    uv_loop_t loop;              /* the one loop */
    uv_prepare_t prepare;        /* flushes connections every turn */
    uv_idle_t idle;              /* keeps poll from blocking */
    uv_timer_t cron;             /* 1 s: idle connections */
    uv_signal_t sigint, sigterm; /* shutdown requests */
    struct mandi *m;             /* NULL once closing */
    bool shutting_down;          /* a signal arrived */
};

static struct mandi_proc proc;

static void on_idle(uv_idle_t *h)
{
    PZ_UNUSED(h);
}

static void on_prepare(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    conn_before_sleep();
    if (conn_has_work())
        uv_idle_start(&proc.idle, on_idle);
    else
        uv_idle_stop(&proc.idle);
}

static void on_cron(uv_timer_t *t)
{
    PZ_UNUSED(t);
    conn_cron();
}

static void close_proc_handles(void *data)
{
    PZ_UNUSED(data);
    uv_close((uv_handle_t *)&proc.prepare, NULL);
    uv_close((uv_handle_t *)&proc.idle, NULL);
    uv_close((uv_handle_t *)&proc.cron, NULL);
    uv_close((uv_handle_t *)&proc.sigint, NULL);
    uv_close((uv_handle_t *)&proc.sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    PZ_UNUSED(h);
    if (proc.shutting_down) {
        pz_warn("second signal %d: exiting now", signum);
        exit(1);
    }
    pz_info("received %s, shutting down",
            signum == SIGINT ? "SIGINT" : "SIGTERM");
    proc.shutting_down = true;
    struct mandi *m = proc.m;
    proc.m = NULL;
    mandi_close(m, close_proc_handles, NULL);
}

int mandi_run(const struct pz_config *cfg)
{
    char err[512];
    struct mandi_opts opts;
    memset(&proc, 0, sizeof proc);
    signal(SIGPIPE, SIG_IGN);
    if (mandi_opts_from_config(cfg, &opts) < 0) {
        pz_error("mandi-addr '%s' is not http://host:port%s",
                 cfg->mandi_addr,
                 strcmp(cfg->mandi_addr, "none") == 0
                     ? ": mandi mode needs the address to listen on"
                     : "");
        return 1;
    }
    uv_loop_init(&proc.loop);
    struct conn_limits lim = {
        .high_water = (size_t)cfg->conn_high_water,
        .hard_limit = (size_t)cfg->conn_hard_limit,
        .idle_timeout = (uint64_t)cfg->client_idle_timeout_ms,
    };
    conn_setup(&proc.loop, &lim);
    uv_prepare_init(&proc.loop, &proc.prepare);
    uv_prepare_start(&proc.prepare, on_prepare);
    uv_idle_init(&proc.loop, &proc.idle);
    uv_timer_init(&proc.loop, &proc.cron);
    uv_timer_start(&proc.cron, on_cron, 1000, 1000);
    uv_signal_init(&proc.loop, &proc.sigint);
    uv_signal_init(&proc.loop, &proc.sigterm);
    uv_signal_start(&proc.sigint, on_signal, SIGINT);
    uv_signal_start(&proc.sigterm, on_signal, SIGTERM);

    proc.m = mandi_new(&proc.loop, &opts, err, sizeof err);
    if (proc.m == NULL) {
        pz_error("%s", err);
        close_proc_handles(NULL);
        uv_run(&proc.loop, UV_RUN_DEFAULT);
        uv_loop_close(&proc.loop);
        return 1;
    }
    pz_info("pyazdb %s mandi: listening on %s (port %d); leader ttl %llu ms, "
            "join request ttl %llu ms",
            PZ_VERSION, opts.listen_addr, mandi_port(proc.m),
            (unsigned long long)opts.leader_ttl_ms,
            (unsigned long long)opts.join_ttl_ms);
    if (opts.token == NULL || opts.token[0] == '\0')
        pz_warn("cluster-token is not set: anyone who can reach mandi can "
                "publish a leader and post or delete join requests");
    uv_run(&proc.loop, UV_RUN_DEFAULT);
    int rv = uv_loop_close(&proc.loop);
    if (rv != 0) {
        pz_error("loop did not close cleanly: %s", uv_strerror(rv));
        return 1;
    }
    pz_info("stopped");
    return 0;
}
