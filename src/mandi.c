/* mandi.c - the discovery service: its HTTP routes and handlers (on the
 * request loop of httpd.c), its in-memory state (the leader, the join
 * requests) with their expiry, the term rule, and mandi mode's own loop
 * (mandi_run). The wire types and their codec are mandi_codec.c's.
 *
 * Happy path: httpd hands over a complete request, it is answered at once
 * from memory (nothing here waits), and the next pipelined request is
 * served; connections are kept alive. The leader expires leader_ttl after
 * its last PUT, a join request join_ttl after it was posted; a timer drops
 * expired entries every sweep_ms, and every read checks the deadline again
 * so an expired entry is never served between two sweeps.
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
#include <time.h>

#include "conn.h"
#include "http_parse.h"
#include "httpd.h"
#include "log.h"
#include "mandi_codec.h"
#include "reload.h"
#include "sdnotify.h"
#include "stats.h"
#include "tls_setup.h"

#define CLOSE_GRACE_MS 2000
/* Descriptors mandi keeps for itself beside its clients' connections
 * (conn_fit_fds): the loop's own, the log, TLS files on a reload. */
#define MANDI_FD_RESERVE 64

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

struct mandi {
    uv_loop_t *loop;            /* borrowed */
    struct mandi_opts o;        /* copy; o.token points to token */
    char *token;                /* owned copy, NULL when writes are open */
    struct httpd http;          /* the HTTP server; http.data == this */
    int port;                   /* bound port */
    uv_timer_t timer;           /* sweep; while closing, the grace deadline */
    uv_check_t check;           /* closing: waits for the last connection */
    bool have_leader;           /* leader is set and maybe not expired */
    struct mandi_leader leader; /* last accepted PUT */
    uint64_t leader_expires;    /* uv_now() at which it is forgotten */
    struct pz_queue joins;      /* struct join_entry, oldest first */
    size_t n_joins;             /* length of joins */
    uint64_t leader_changes;    /* accepted PUTs that changed the leader */
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

static struct mandi *mandi_of(struct httpd_conn *hc)
{
    return hc->srv->data;
}

static void send_json(struct httpd_conn *hc, struct pz_buf *json)
{
    pz_buf_append(json, "\n", 1);
    struct httpd_reply r = {.status = 200,
                            .ctype = "application/json",
                            .body = json->data,
                            .blen = json->len};
    httpd_reply(hc, &r);
}

static void send_204(struct httpd_conn *hc)
{
    struct httpd_reply r = {.status = 204};
    httpd_reply(hc, &r);
}

static const char *body_of(const struct http_req *req, size_t *len)
{
    *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

/* Log a refused write (rate-limited). why is one of the parsers' fixed
 * reasons, never text from the request; the peer address is the
 * kernel's. */
static void refused(struct httpd_conn *hc, const char *what, const char *why)
{
    if (log_ok(mandi_of(hc)))
        pz_warn("refused %s from %s: %s", what, hc->c->peer, why);
}

static void get_leader(struct httpd_conn *hc)
{
    struct mandi *m = mandi_of(hc);
    expire_leader(m, now_ms(m));
    if (!m->have_leader) {
        httpd_text(hc, 404, "leader not available", NULL);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    mandi_leader_to_json(&m->leader, true, &b);
    send_json(hc, &b);
    pz_buf_free(&b);
}

static void put_leader(struct httpd_conn *hc, const struct http_req *req)
{
    struct mandi *m = mandi_of(hc);
    struct mandi_leader l;
    char why[128];
    size_t blen;
    const char *body = body_of(req, &blen);
    if (mandi_parse_leader(body, blen, &l, why, sizeof why) < 0) {
        refused(hc, "PUT /leader", why);
        httpd_text(hc, 400, why, NULL);
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
                    ESC(id, l.id), hc->c->peer, (unsigned long long)l.term,
                    (unsigned long long)m->terms.hi);
        snprintf(why, sizeof why, "implausible term (at most %llu now)", most);
        httpd_text(hc, 400, why, NULL);
        return;
    }
    case MANDI_TERM_STALE:
        if (log_ok(m))
            pz_warn("refused leader %s at term %llu: %s holds term %llu",
                    ESC(id, l.id), (unsigned long long)l.term,
                    ESC(holder, m->leader.id),
                    (unsigned long long)m->leader.term);
        httpd_text(hc, 409, "stale term", NULL);
        return;
    case MANDI_TERM_DISPUTED:
        if (log_ok(m))
            pz_warn("leader %s at term %llu from %s replaces %s at term "
                    "%llu: more than %d terms apart, the higher one is not "
                    "plausible",
                    ESC(id, l.id), (unsigned long long)l.term, hc->c->peer,
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
    m->leader_changes += changed;
    if (changed && log_ok(m)) {
        char a[PZ_ESCAPED_MAX], h[PZ_ESCAPED_MAX], g[PZ_ESCAPED_MAX];
        pz_info("leader is %s (term %llu), raft %s, http %s, grpc %s",
                ESC(id, l.id), (unsigned long long)l.term, ESC(a, l.addr),
                ESC(h, l.http_addr), ESC(g, l.grpc_addr));
    }
    send_204(hc);
}

static void get_joins(struct httpd_conn *hc)
{
    struct mandi *m = mandi_of(hc);
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
    send_json(hc, &b);
    pz_buf_free(&b);
}

static void post_join(struct httpd_conn *hc, const struct http_req *req)
{
    struct mandi *m = mandi_of(hc);
    struct mandi_join j;
    char why[128];
    size_t blen;
    const char *body = body_of(req, &blen);
    if (mandi_parse_join(body, blen, &j, why, sizeof why) < 0) {
        refused(hc, "POST /join-requests", why);
        httpd_text(hc, 400, why, NULL);
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
            httpd_text(hc, 503, "too many join requests", NULL);
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
    send_204(hc);
}

static void delete_join(struct httpd_conn *hc, const struct http_req *req)
{
    struct mandi *m = mandi_of(hc);
    char *id = NULL;
    size_t len = 0;
    int rv = http_query_get(req->url.data, req->url.len, "id", &id, &len);
    if (rv <= 0 || len == 0 || memchr(id, '\0', len)) {
        pz_free(id);
        refused(hc, "DELETE /join-requests", "missing id");
        httpd_text(hc, 400, "missing id", NULL);
        return;
    }
    const char *problem = mandi_text_problem(id, len);
    if (problem) {
        char why[64];
        snprintf(why, sizeof why, "'id' %s", problem);
        pz_free(id);
        refused(hc, "DELETE /join-requests", why);
        httpd_text(hc, 400, why, NULL);
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
    send_204(hc);
}

static void unauthorized(struct httpd_conn *hc, const char *what)
{
    refused(hc, what, "unauthorized");
    httpd_text(hc, 401, "unauthorized", NULL);
}

/* The request's method label in pyazdb_requests_total{api="mandi"}. */
static const char *route_of(const char *path, int method)
{
    if (strcmp(path, "/metrics") == 0)
        return "metrics";
    if (strcmp(path, "/leader") == 0)
        return method == HTTP_GET   ? "get_leader"
               : method == HTTP_PUT ? "put_leader"
                                    : "other";
    if (strcmp(path, "/join-requests") == 0)
        return method == HTTP_GET      ? "get_join_requests"
               : method == HTTP_POST   ? "post_join_requests"
               : method == HTTP_DELETE ? "delete_join_requests"
                                       : "other";
    return "other";
}

/* GET /metrics: the process's figures (stats.h) and mandi's below. Open
 * like GET /leader: it shows nothing a client could not read there. */
static void get_metrics(struct httpd_conn *hc)
{
    struct pz_buf b;
    pz_buf_init(&b);
    stats_render(&b);
    struct httpd_reply r = {
        .status = 200,
        .ctype = STATS_CONTENT_TYPE,
        .body = b.data,
        .blen = b.len,
    };
    httpd_reply(hc, &r);
    pz_buf_free(&b);
}

/* mandi's own figures, at scrape time (mandi_run's collector). */
static void collect(struct pz_buf *b, struct mandi *m)
{
    expire_leader(m, now_ms(m));
    expire_joins(m, now_ms(m));
    metrics_render_one(b, "pyazdb_mandi_has_leader", METRICS_GAUGE,
                       "1 when mandi knows a leader that has not expired.",
                       m->have_leader);
    metrics_render_one(b, "pyazdb_mandi_leader_term", METRICS_GAUGE,
                       "Term of the leader mandi knows (0: none).",
                       m->have_leader ? (double)m->leader.term : 0);
    metrics_render_one(b, "pyazdb_mandi_leader_changes_total",
                       METRICS_COUNTER,
                       "Leader registrations that changed the leader, its "
                       "term or its address.",
                       (double)m->leader_changes);
    metrics_render_one(b, "pyazdb_mandi_join_requests", METRICS_GAUGE,
                       "Join requests pending.", (double)m->n_joins);
}

/* Serve a complete request (httpd_ops.on_request): 405 and 404 before
 * the token is looked at. */
static void on_request(struct httpd_conn *hc)
{
    struct mandi *m = mandi_of(hc);
    const struct http_req *req = &hc->p.req;
    struct pz_buf path;
    pz_buf_init(&path);
    if (http_url_path(req->url.data, req->url.len, &path) < 0) {
        httpd_text(hc, 400, "bad request target", NULL);
        pz_buf_free(&path);
        return;
    }
    hc->route = route_of(path.data, req->method);
    if (strcmp(path.data, "/metrics") == 0) {
        if (req->method == HTTP_GET)
            get_metrics(hc);
        else
            httpd_text(hc, 405, "method not allowed", "GET");
    } else if (strcmp(path.data, "/leader") == 0) {
        if (req->method == HTTP_GET)
            get_leader(hc);
        else if (req->method != HTTP_PUT)
            httpd_text(hc, 405, "method not allowed", "GET, PUT");
        else if (!httpd_bearer_ok(req, m->token))
            unauthorized(hc, "PUT /leader");
        else
            put_leader(hc, req);
    } else if (strcmp(path.data, "/join-requests") == 0) {
        if (req->method == HTTP_GET)
            get_joins(hc);
        else if (req->method != HTTP_POST && req->method != HTTP_DELETE)
            httpd_text(hc, 405, "method not allowed", "GET, POST, DELETE");
        else if (!httpd_bearer_ok(req, m->token))
            unauthorized(hc, req->method == HTTP_POST
                                 ? "POST /join-requests"
                                 : "DELETE /join-requests");
        else if (req->method == HTTP_POST)
            post_join(hc, req);
        else
            delete_join(hc, req);
    } else {
        httpd_text(hc, 404, "404 page not found", NULL);
    }
    pz_buf_free(&path);
}

static const struct httpd_ops mandi_http_ops = {
    .on_request = on_request,
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
    o->header_timeout_ms = (uint64_t)cfg->client_header_timeout_ms;
    o->body_timeout_ms = (uint64_t)cfg->client_body_timeout_ms;
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
    if (m->http.ls.n_conns > 0)
        return;
    uv_check_stop(h);
    finish(m);
}

static void on_grace(uv_timer_t *t)
{
    struct mandi *m = t->data;
    if (m->http.ls.n_conns > 0)
        pz_warn("closing %zu connections still not flushed after %d ms",
                m->http.ls.n_conns, CLOSE_GRACE_MS);
    conn_listener_close_all(&m->http.ls);
}

struct mandi *mandi_new(uv_loop_t *loop, const struct mandi_opts *opts,
                        char *err, size_t errlen)
{
    struct mandi *m = pz_calloc(1, sizeof *m);
    m->loop = loop;
    m->o = *opts;
    if (opts->token && opts->token[0])
        m->token = pz_strdup(opts->token);
    m->o.token = m->token;
    pz_queue_init(&m->joins);
    uv_timer_init(loop, &m->timer);
    m->timer.data = m;
    uv_check_init(loop, &m->check);
    m->check.data = m;
    /* No request deadlines: client-header-timeout and client-body-timeout
     * are not mandi directives; client-idle-timeout applies (conn.c). */
    struct httpd_opts ho = {
        .limits =
            {
                .max_header_bytes = opts->max_header_bytes,
                .max_headers = opts->max_headers,
                .max_body = opts->max_body,
            },
        .out_pause = opts->out_pause,
        .header_timeout_ms = opts->header_timeout_ms,
        .body_timeout_ms = opts->body_timeout_ms,
        .max_clients = opts->max_clients,
        .evict = true,
        .busy_line = "too many clients",
        .realm = "mandi",
    };
    int rv = httpd_listen(&m->http, opts->listen_addr, &mandi_http_ops, &ho,
                          "mandi", m, err, errlen);
    if (rv < 0) {
        /* The listener's handle may be closing: free m from the loop,
         * after it (the caller runs the loop to finish). */
        m->closing = true;
        finish(m);
        return NULL;
    }
    m->http.ls.tls = opts->tls;
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getsockname(&m->http.ls.tcp, (struct sockaddr *)&ss, &sl) == 0)
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
    httpd_drain(&m->http);
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
    struct reload_hup hup;       /* reload requests */
    struct reload reload;        /* the configuration in effect */
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
    reload_hup_close(&proc.hup);
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
    sdnotify("STOPPING=1");
    struct mandi *m = proc.m;
    proc.m = NULL;
    mandi_close(m, close_proc_handles, NULL);
}

/* What a reload changes in mandi (reload_apply_cb): the log level, the
 * idle, header and body timeouts and max-clients, and the TLS files read
 * again; reload.c reopens the log file. Mandi reads no other directive
 * that a reload applies. */
static struct reload_refused apply_config(const struct pz_config *c, void *arg)
{
    PZ_UNUSED(arg);
    struct reload_refused no = {0, 0};
    pz_log_setup((enum pz_log_level)c->log_level, NULL);
    conn_set_idle_timeout((uint64_t)c->client_idle_timeout_ms);
    if (proc.m) {
        size_t per;
        char err[300];
        if (conn_fit_fds((size_t)c->max_clients, 1, MANDI_FD_RESERVE, &per, err,
                         sizeof err) < 0) {
            pz_warn("max-clients stays %zu: %s", proc.m->http.ls.max_conns,
                    err);
            per = proc.m->http.ls.max_conns;
        }
        proc.m->http.ls.max_conns = per;
        proc.m->http.o.max_clients = per;
        proc.m->http.o.header_timeout_ms =
            (uint64_t)c->client_header_timeout_ms;
        proc.m->http.o.body_timeout_ms = (uint64_t)c->client_body_timeout_ms;
        proc.m->http.ls.send_timeout = (uint64_t)c->client_body_timeout_ms;
    }
    if (tls_slot_on(&tls_http)) {
        int tls = tls_setup_load(c, true, NULL, 0); /* new certificates */
        if (tls & TLS_SETUP_FAILED)
            no.failed |= RELOAD_TLS;
        if (tls & TLS_SETUP_RESTART)
            no.restart |= RELOAD_TLS;
    }
    return no;
}

/* The reload a burst of SIGHUPs asks for (reload_hup). */
static void on_hups(unsigned hups)
{
    if (proc.shutting_down)
        return;
    reload_hup_log(hups);
    reload_run(&proc.reload, apply_config, NULL);
}

/* The collector of the process's mandi (none once it is closing). */
static void collect_proc(struct pz_buf *b, void *arg)
{
    PZ_UNUSED(arg);
    if (proc.m)
        collect(b, proc.m);
}

int mandi_run(const struct pz_config *cfg)
{
    char err[512];
    struct mandi_opts opts;
    memset(&proc, 0, sizeof proc);
    signal(SIGPIPE, SIG_IGN);
    if (mandi_opts_from_config(cfg, &opts) < 0) {
        pz_error("mandi-addr '%s' is not http(s)://host:port%s",
                 cfg->mandi_addr,
                 strcmp(cfg->mandi_addr, "none") == 0
                     ? ": mandi mode needs the address to listen on"
                     : "");
        return 1;
    }
    if (conn_fit_fds(opts.max_clients, 1, MANDI_FD_RESERVE, &opts.max_clients,
                     err, sizeof err) < 0) {
        pz_error("%s", err);
        return 1;
    }
    /* https:// in mandi-addr: HTTPS with the tls-* files (config.c
     * checks they are set). */
    if (cfg_url_is_https(cfg->mandi_addr)) {
        if (tls_setup_load(cfg, false, err, sizeof err) < 0) {
            pz_error("%s", err);
            tls_setup_free();
            return 1;
        }
        opts.tls = &tls_http;
    }
    uv_loop_init(&proc.loop);
    struct conn_limits lim = {
        .high_water = (size_t)cfg->conn_high_water,
        .hard_limit = (size_t)cfg->conn_hard_limit,
        .idle_timeout = (uint64_t)cfg->client_idle_timeout_ms,
        .max_partial_input = (size_t)cfg->max_partial_input,
        .max_pending_output = (size_t)cfg->max_pending_output,
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
    reload_hup_init(&proc.hup, &proc.loop, on_hups);
    reload_init(&proc.reload, cfg);
    stats_add_collector(collect_proc, NULL);

    proc.m = mandi_new(&proc.loop, &opts, err, sizeof err);
    if (proc.m == NULL) {
        pz_error("%s", err);
        close_proc_handles(NULL);
        uv_run(&proc.loop, UV_RUN_DEFAULT);
        uv_loop_close(&proc.loop);
        reload_free(&proc.reload);
        tls_setup_free();
        return 1;
    }
    pz_info("pyazdb %s mandi: listening on %s%s (port %d); leader ttl %llu "
            "ms, "
            "join request ttl %llu ms",
            PZ_VERSION, opts.tls ? "https://" : "", opts.listen_addr,
            mandi_port(proc.m),
            (unsigned long long)opts.leader_ttl_ms,
            (unsigned long long)opts.join_ttl_ms);
    if (opts.token == NULL || opts.token[0] == '\0')
        pz_warn("cluster-token is not set: anyone who can reach mandi can "
                "publish a leader and post or delete join requests");
    char ready[400];
    snprintf(ready, sizeof ready, "READY=1\nSTATUS=mandi on %s",
             opts.listen_addr);
    sdnotify(ready);
    uv_run(&proc.loop, UV_RUN_DEFAULT);
    reload_free(&proc.reload);
    tls_setup_free();
    int rv = uv_loop_close(&proc.loop);
    if (rv != 0) {
        pz_error("loop did not close cleanly: %s", uv_strerror(rv));
        return 1;
    }
    pz_info("stopped");
    return 0;
}
