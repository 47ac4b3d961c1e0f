/* mandi_client.c - see mandi_client.h.
 *
 * Happy path: a request is formatted once (kept for a resend), queued and
 * written to the connection at once (conn.c buffers it while the
 * connection is still being made); responses are parsed with llhttp and
 * each one completes the oldest request. One timer is armed for the oldest
 * request's deadline: requests share one timeout and stay in the order
 * they were made, so the oldest always expires first.
 *
 * Failure modes: a failed connect fails every request written on it with
 * the connect error. A connection lost later (reset, EOF, mandi's idle
 * timeout racing a new request) is dialled again and the unanswered
 * requests are written once more; a request that has already been sent
 * twice fails with PZ_EIO instead. A request past its deadline fails with
 * PZ_ETIMEDOUT, and if it was waiting for its answer the connection is
 * dropped (mandi is stuck or slow) and the others move to a new one. A
 * malformed response fails the oldest request with PZ_EPROTO and drops the
 * connection the same way. A cancelled request that was already written
 * stays queued without a callback so that later answers still match.
 *
 * Whatever answers may be hostile or broken: the status line and headers
 * are capped at MAX_HEAD bytes and the body at MAX_RESPONSE (an announced
 * Content-Length over it fails at once), interim 1xx answers are skipped,
 * the join list is scanned rather than built into a JSON tree and capped
 * at MAX_JOINS, and ids and addresses pass mandi's own rules (mandi_codec.h)
 * or are left out. Text from the answer reaches the caller and the log
 * only escaped (pz_escape), and the warnings are rate-limited. */
#include "mandi_client.h"

#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "log.h"

#define MAX_ATTEMPTS 2                  /* connections a request is sent on */
#define MAX_RESPONSE (4u * 1024 * 1024) /* larger bodies are not mandi's */
#define MAX_HEAD (16u * 1024)           /* status line and headers */
#define MAX_JOINS 1024                  /* join requests taken per answer */
#define KEEP_BODY (64u * 1024)          /* buffer kept between answers */
#define WARN_BURST 5                    /* warnings per window... */
#define WARN_WINDOW_MS 60000            /* ...of this length */

enum req_kind {
    K_PUT_LEADER,
    K_GET_LEADER,
    K_POST_JOIN,
    K_GET_JOINS,
    K_DELETE_JOIN,
};

struct mreq {
    struct pz_queue q;  /* in mc->reqs, or a local list of finished ones */
    uint64_t id;        /* returned to the caller */
    enum req_kind kind; /* how to read the answer */
    struct pz_buf wire; /* the request bytes, kept for a resend */
    mandi_client_cb cb; /* NULL once cancelled */
    void *data;         /* cb's argument */
    uint64_t deadline;  /* uv_now() past which it fails */
    bool written;       /* written on mc->c */
    int attempts;       /* connections it was written on */
    int err;            /* finished: the error to report */
};

struct mandi_client {
    uv_loop_t *loop;             /* borrowed */
    char addr[CFG_ADDR_MAX + 3]; /* host:port to dial */
    char *token;                 /* owned; NULL: no Authorization */
    uint64_t timeout_ms;         /* per request */
    struct conn *c;              /* NULL when not connected */
    llhttp_t parser;             /* responses on c */
    llhttp_settings_t settings;  /* its callbacks */
    struct pz_buf body;          /* body of the response being read */
    size_t head_bytes;           /* its status line and headers so far */
    const char *why;             /* set by a callback that stops llhttp */
    struct pz_ratelimit warns;   /* rate of the warnings below */
    struct pz_queue reqs;        /* struct mreq, oldest first */
    size_t n_live;               /* requests with a callback due */
    uint64_t next_id;            /* last id handed out */
    uv_timer_t timer;            /* the oldest deadline, or a dial error */
    int dial_err;                /* conn_connect failed at once */
    bool freeing;                /* mandi_client_free ran */
};

/* A warning about what mandi did, rate-limited (WARN_BURST per
 * WARN_WINDOW_MS): a broken mandi answers every request the same way. The
 * format's arguments never hold text from mandi, only escaped copies. */
static void warn(struct mandi_client *mc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void warn(struct mandi_client *mc, const char *fmt, ...)
{
    unsigned dropped;
    if (!pz_ratelimit(&mc->warns, uv_now(mc->loop), WARN_WINDOW_MS,
                        WARN_BURST, &dropped))
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (dropped)
        pz_warn("mandi at %s: %s (and %u similar warnings not logged)",
                mc->addr, msg, dropped);
    else
        pz_warn("mandi at %s: %s", mc->addr, msg);
}

static void free_req(struct mreq *r)
{
    pz_buf_free(&r->wire);
    pz_free(r);
}

static struct mreq *head(struct mandi_client *mc)
{
    if (pz_queue_empty(&mc->reqs))
        return NULL;
    return container_of(pz_queue_head(&mc->reqs), struct mreq, q);
}

/* Unlink r into the finished list with err, or drop it if cancelled. */
static void finish_req(struct mandi_client *mc, struct mreq *r, int err,
                       struct pz_queue *done)
{
    pz_queue_remove(&r->q);
    if (r->cb == NULL) {
        free_req(r);
        return;
    }
    mc->n_live--;
    r->err = err;
    pz_queue_push(done, &r->q);
}

/* Run the callbacks of finished requests (detached from mc, so callbacks
 * may do anything, mandi_client_free included). */
static void run_done(struct pz_queue *done)
{
    while (!pz_queue_empty(done)) {
        struct mreq *r = container_of(pz_queue_head(done), struct mreq, q);
        pz_queue_remove(&r->q);
        struct mandi_result res = {.err = r->err, .message = ""};
        r->cb(&res, r->data);
        free_req(r);
    }
}

static void on_timer(uv_timer_t *t);

static void arm(struct mandi_client *mc)
{
    if (mc->freeing)
        return;
    struct mreq *r = head(mc);
    if (mc->dial_err) {
        uv_timer_start(&mc->timer, on_timer, 0, 0);
    } else if (r == NULL) {
        uv_timer_stop(&mc->timer);
    } else {
        uint64_t now = uv_now(mc->loop);
        uv_timer_start(&mc->timer, on_timer,
                       r->deadline > now ? r->deadline - now : 0, 0);
    }
}

static const struct conn_ops client_ops;

static void on_connect(struct conn *c, int status);

/* Write every request not yet on the connection, dialling if needed. */
static void send_pending(struct mandi_client *mc)
{
    struct pz_queue *q;
    bool any = false;
    PZ_QUEUE_FOREACH(q, &mc->reqs)
    any = any || !container_of(q, struct mreq, q)->written;
    if (!any || mc->dial_err)
        return;
    if (mc->c == NULL) {
        llhttp_init(&mc->parser, HTTP_RESPONSE, &mc->settings);
        pz_buf_reset(&mc->body);
        mc->why = NULL;
        mc->c = conn_connect(mc->addr, &client_ops, mc, on_connect);
        if (mc->c == NULL) {
            mc->dial_err = PZ_EINVAL; /* reported from the timer */
            return;
        }
    }
    PZ_QUEUE_FOREACH(q, &mc->reqs)
    {
        struct mreq *r = container_of(q, struct mreq, q);
        if (r->written)
            continue;
        conn_write(mc->c, r->wire.data, r->wire.len);
        r->written = true;
        r->attempts++;
    }
}

/* The connection is gone (mc->c already NULL): requests written on it go
 * out again on a new one, unless they were sent MAX_ATTEMPTS times. */
static void requeue_written(struct mandi_client *mc, struct pz_queue *done)
{
    struct pz_queue *q = pz_queue_head(&mc->reqs);
    while (q != &mc->reqs) {
        struct mreq *r = container_of(q, struct mreq, q);
        q = q->next;
        if (!r->written)
            continue;
        r->written = false;
        if (r->cb == NULL || r->attempts >= MAX_ATTEMPTS)
            finish_req(mc, r, PZ_EIO, done);
    }
}

/* Drop the connection; the oldest request fails with head_err if it was
 * waiting on it (head_err 0: it is resent like the others). */
static void drop_conn(struct mandi_client *mc, int head_err,
                      struct pz_queue *done)
{
    if (mc->c) {
        mc->c->proto = NULL;
        conn_close(mc->c);
        mc->c = NULL;
    }
    struct mreq *r = head(mc);
    if (head_err && r && r->written)
        finish_req(mc, r, head_err, done);
    requeue_written(mc, done);
    send_pending(mc);
}

static void on_connect(struct conn *c, int status)
{
    struct mandi_client *mc = c->proto;
    if (mc == NULL || status == 0)
        return;
    pz_debug("mandi at %s: %s", mc->addr, uv_strerror(status));
    /* conn.c closes c right after this. */
    c->proto = NULL;
    mc->c = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    struct pz_queue *q = pz_queue_head(&mc->reqs);
    while (q != &mc->reqs) {
        struct mreq *r = container_of(q, struct mreq, q);
        q = q->next;
        if (r->written)
            finish_req(mc, r, status, &done);
    }
    send_pending(mc); /* nothing left unwritten: no new dial */
    arm(mc);
    run_done(&done);
}

static void on_close(struct conn *c)
{
    struct mandi_client *mc = c->proto;
    if (mc == NULL)
        return;
    pz_debug("mandi at %s: connection closed", mc->addr);
    c->proto = NULL;
    mc->c = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    drop_conn(mc, 0, &done);
    arm(mc);
    run_done(&done);
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct mandi_client *mc = c->proto;
    if (mc == NULL)
        return;
    llhttp_errno_t e = llhttp_execute(&mc->parser, data, len);
    if (mc->freeing || c->proto != mc || e == HPE_OK)
        return;
    /* Reasons are ours or llhttp's: constant strings. */
    warn(mc, "bad response (%s)",
         mc->why ? mc->why : llhttp_get_error_reason(&mc->parser));
    mc->why = NULL;
    struct pz_queue done;
    pz_queue_init(&done);
    drop_conn(mc, PZ_EPROTO, &done);
    arm(mc);
    run_done(&done);
}

static const struct conn_ops client_ops = {
    .on_data = on_data,
    .on_close = on_close,
};

static struct mandi_client *mc_of(llhttp_t *p)
{
    return container_of(p, struct mandi_client, parser);
}

static int on_message_begin(llhttp_t *p)
{
    struct mandi_client *mc = mc_of(p);
    mc->head_bytes = 0;
    pz_buf_reset(&mc->body);
    return 0;
}

/* Status line and header bytes, whatever callback they come through. */
static int count_head(llhttp_t *p, const char *at, size_t n)
{
    PZ_UNUSED(at);
    struct mandi_client *mc = mc_of(p);
    mc->head_bytes += n;
    if (mc->head_bytes <= MAX_HEAD)
        return 0;
    mc->why = "status line and headers over 16 KiB";
    return -1;
}

static int on_headers_complete(llhttp_t *p)
{
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > MAX_RESPONSE) {
        mc_of(p)->why = "Content-Length over 4 MiB";
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct mandi_client *mc = mc_of(p);
    if (mc->body.len + n > MAX_RESPONSE) {
        mc->why = "body over 4 MiB";
        return -1;
    }
    pz_buf_append(&mc->body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct mandi_client *mc = mc_of(p);
    struct mreq *r = head(mc);
    int status = llhttp_get_status_code(p);
    if (mc->freeing || r == NULL || !r->written) {
        mc->why = "an answer to no request";
        return -1;
    }
    if (status < 100 || status > 599 || status == 101) {
        mc->why = "a status mandi never sends";
        return -1;
    }
    if (status <= 199)
        return 0; /* interim: the answer follows */
    pz_queue_remove(&r->q);
    struct mandi_leader leader;
    struct mandi_join *joins = NULL;
    char message[PZ_ESCAPED_MAX] = "";
    struct mandi_result res = {.http_status = status, .message = message};
    const char *body = mc->body.data ? mc->body.data : "";
    char why[128];
    if (status == 200 && r->kind == K_GET_LEADER) {
        if (mandi_parse_leader(body, mc->body.len, &leader, why, sizeof why)) {
            warn(mc, "its leader is not valid: %s", why);
            res.err = PZ_EPROTO;
        } else {
            res.leader = &leader;
        }
    } else if (status == 200 && r->kind == K_GET_JOINS) {
        size_t invalid, over;
        if (mandi_parse_joins(body, mc->body.len, MAX_JOINS, &joins,
                              &res.n_joins, &invalid, &over) < 0) {
            warn(mc, "its join requests are not a JSON array");
            res.err = PZ_EPROTO;
        } else {
            res.joins = joins;
            if (invalid)
                warn(mc, "ignored %zu join requests that are not valid",
                     invalid);
            if (over)
                warn(mc, "ignored %zu join requests past the first %d", over,
                     MAX_JOINS);
        }
    } else if (status < 200 || status > 299) {
        /* The first line, escaped and cut (body is NUL-terminated). */
        size_t n = PZ_MIN(strcspn(body, "\r\n"), sizeof message);
        pz_escape(message, sizeof message, body, n);
    }
    if (res.err)
        res.http_status = 0;
    if (mc->body.cap > KEEP_BODY)
        pz_buf_free(&mc->body);
    else
        pz_buf_reset(&mc->body);
    arm(mc);
    if (r->cb) {
        mc->n_live--;
        r->cb(&res, r->data);
    }
    pz_free(joins);
    free_req(r);
    return 0;
}

static void on_timer(uv_timer_t *t)
{
    struct mandi_client *mc = t->data;
    struct pz_queue done;
    pz_queue_init(&done);
    if (mc->dial_err) {
        int err = mc->dial_err;
        mc->dial_err = 0;
        while (head(mc))
            finish_req(mc, head(mc), err, &done);
    }
    uint64_t now = uv_now(mc->loop);
    bool stuck = false;
    struct mreq *r;
    while ((r = head(mc)) != NULL && r->deadline <= now) {
        stuck = stuck || r->written;
        finish_req(mc, r, PZ_ETIMEDOUT, &done);
    }
    if (stuck && mc->c) {
        warn(mc, "no answer in %llu ms", (unsigned long long)mc->timeout_ms);
        drop_conn(mc, 0, &done);
    }
    arm(mc);
    run_done(&done);
}

static bool valid_token(const char *t)
{
    size_t n = strlen(t);
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] >= 0x7f)
            return false;
    return n <= CFG_TOKEN_MAX;
}

struct mandi_client *mandi_client_new(uv_loop_t *loop, const char *url,
                                      const char *token, uint64_t timeout_ms,
                                      char *err, size_t errlen)
{
    char host[256];
    int port;
    struct sockaddr_in6 sa6;
    struct sockaddr_in sa4;
    if (cfg_url_hostport(url, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "mandi url '%s' is not http://host:port", url);
        return NULL;
    }
    bool v6 = uv_ip6_addr(host, port, &sa6) == 0;
    if (strcmp(host, "localhost") != 0 && uv_ip4_addr(host, port, &sa4) != 0 &&
        !v6) {
        snprintf(err, errlen, "mandi url '%s': '%s' is not an IP address", url,
                 host);
        return NULL;
    }
    if (token && !valid_token(token)) {
        snprintf(err, errlen,
                 "cluster token: printable ASCII without "
                 "blanks, at most %d characters",
                 CFG_TOKEN_MAX);
        return NULL;
    }
    if (timeout_ms == 0) {
        snprintf(err, errlen, "mandi client: timeout must be positive");
        return NULL;
    }
    struct mandi_client *mc = pz_calloc(1, sizeof *mc);
    mc->loop = loop;
    snprintf(mc->addr, sizeof mc->addr, v6 ? "[%s]:%d" : "%s:%d", host, port);
    mc->token = token && token[0] ? pz_strdup(token) : NULL;
    mc->timeout_ms = timeout_ms;
    llhttp_settings_init(&mc->settings);
    mc->settings.on_message_begin = on_message_begin;
    mc->settings.on_status = count_head;
    mc->settings.on_header_field = count_head;
    mc->settings.on_header_value = count_head;
    mc->settings.on_headers_complete = on_headers_complete;
    mc->settings.on_body = on_body;
    mc->settings.on_message_complete = on_message_complete;
    pz_buf_init(&mc->body);
    pz_queue_init(&mc->reqs);
    uv_timer_init(loop, &mc->timer);
    mc->timer.data = mc;
    return mc;
}

static uint64_t submit(struct mandi_client *mc, enum req_kind kind,
                       const char *method, const char *target,
                       const struct pz_buf *body, mandi_client_cb cb,
                       void *data)
{
    pz_assert(cb != NULL);
    if (mc->freeing)
        return 0;
    struct mreq *r = pz_calloc(1, sizeof *r);
    r->id = ++mc->next_id;
    r->kind = kind;
    r->cb = cb;
    r->data = data;
    r->deadline = uv_now(mc->loop) + mc->timeout_ms;
    pz_buf_init(&r->wire);
    pz_buf_appendf(&r->wire, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, target,
                   mc->addr);
    if (mc->token)
        pz_buf_appendf(&r->wire, "Authorization: Bearer %s\r\n", mc->token);
    if (body)
        pz_buf_appendf(&r->wire,
                       "Content-Type: application/json\r\n"
                       "Content-Length: %zu\r\n",
                       body->len);
    pz_buf_append(&r->wire, "\r\n", 2);
    if (body)
        pz_buf_append(&r->wire, body->data, body->len);
    pz_queue_push(&mc->reqs, &r->q);
    mc->n_live++;
    send_pending(mc);
    arm(mc);
    return r->id;
}

uint64_t mandi_put_leader(struct mandi_client *mc,
                          const struct mandi_leader *info, mandi_client_cb cb,
                          void *data)
{
    struct pz_buf b;
    pz_buf_init(&b);
    mandi_leader_to_json(info, false, &b);
    uint64_t id = submit(mc, K_PUT_LEADER, "PUT", "/leader", &b, cb, data);
    pz_buf_free(&b);
    return id;
}

uint64_t mandi_get_leader(struct mandi_client *mc, mandi_client_cb cb,
                          void *data)
{
    return submit(mc, K_GET_LEADER, "GET", "/leader", NULL, cb, data);
}

uint64_t mandi_post_join(struct mandi_client *mc, const struct mandi_join *j,
                         mandi_client_cb cb, void *data)
{
    struct pz_buf b;
    pz_buf_init(&b);
    mandi_join_to_json(j, false, &b);
    uint64_t id =
        submit(mc, K_POST_JOIN, "POST", "/join-requests", &b, cb, data);
    pz_buf_free(&b);
    return id;
}

uint64_t mandi_get_joins(struct mandi_client *mc, mandi_client_cb cb,
                         void *data)
{
    return submit(mc, K_GET_JOINS, "GET", "/join-requests", NULL, cb, data);
}

uint64_t mandi_delete_join(struct mandi_client *mc, const char *id,
                           mandi_client_cb cb, void *data)
{
    static const char hex[] = "0123456789ABCDEF";
    struct pz_buf t;
    pz_buf_init(&t);
    pz_buf_appendf(&t, "/join-requests?id=");
    for (const unsigned char *p = (const unsigned char *)id; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
            (*p >= '0' && *p <= '9') || strchr("-._~", *p)) {
            pz_buf_append(&t, p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            pz_buf_append(&t, e, 3);
        }
    }
    uint64_t rid = submit(mc, K_DELETE_JOIN, "DELETE", t.data, NULL, cb, data);
    pz_buf_free(&t);
    return rid;
}

bool mandi_cancel(struct mandi_client *mc, uint64_t id)
{
    struct pz_queue *q;
    PZ_QUEUE_FOREACH(q, &mc->reqs)
    {
        struct mreq *r = container_of(q, struct mreq, q);
        if (r->id != id || r->cb == NULL)
            continue;
        r->cb = NULL;
        mc->n_live--;
        if (!r->written) {
            pz_queue_remove(&r->q);
            free_req(r);
            arm(mc);
        }
        return true;
    }
    return false;
}

size_t mandi_client_pending(const struct mandi_client *mc)
{
    return mc->n_live;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct mandi_client *mc = h->data;
    pz_buf_free(&mc->body);
    pz_free(mc->token);
    pz_free(mc);
}

void mandi_client_free(struct mandi_client *mc)
{
    if (mc == NULL || mc->freeing)
        return;
    mc->freeing = true;
    if (mc->c) {
        mc->c->proto = NULL;
        conn_close(mc->c);
        mc->c = NULL;
    }
    struct pz_queue done;
    pz_queue_init(&done);
    while (head(mc))
        finish_req(mc, head(mc), PZ_ECANCELED, &done);
    uv_close((uv_handle_t *)&mc->timer, on_timer_closed);
    run_done(&done);
}
