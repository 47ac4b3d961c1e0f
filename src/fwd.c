/* fwd.c - see fwd.h.
 *
 * Happy path: fwd_send finds (or dials) the connection to the address,
 * writes the request and queues a slot; responses are parsed with llhttp
 * and each completes the oldest slot. Failure modes: a refused connection
 * or a reset fails every slot of that connection with PZ_EIO, a malformed
 * or oversized response with PZ_EPROTO, an answer that does not come in
 * time with PZ_ETIMEDOUT; the connection is dropped (the next request
 * dials again). Header bytes are counted as they arrive, so a peer that
 * sends headers without end costs FWD_MAX_HEADER_BYTES at most. A
 * cancelled request keeps its slot, with no owner, until its response
 * arrives, so that later responses still match their requests. */
#include "fwd.h"

#include <llhttp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "log.h"

struct fwd_conn;

struct fwd_slot {
    struct pz_queue q;      /* in fc->slots, oldest first */
    struct fwd_req *req;    /* NULL once cancelled */
    uint64_t sent;          /* conn_now() when it was sent */
};

struct fwd_conn {
    struct pz_queue q;          /* in conns */
    char addr[256];             /* leader address */
    struct conn *c;             /* NULL once closed */
    llhttp_t parser;            /* responses */
    llhttp_settings_t settings; /* its callbacks */
    struct pz_queue slots;      /* requests awaiting a response */
    struct pz_buf field;        /* header name being read */
    struct pz_buf value;        /* header value being read */
    int status;                 /* status of the response being read */
    char ctype[128];            /* its Content-Type */
    char allow[64];             /* its Allow */
    struct pz_buf body;         /* its body */
    size_t header_bytes;        /* of the response being read */
    const char *error;          /* why the response was refused */
    bool in_parse;              /* inside llhttp_execute: don't free */
    bool dead;                  /* failed; freed once out of the parser */
};

static struct pz_queue conns = {&conns, &conns};
static uint64_t timeout; /* ms a request may wait for its answer, 0: any */

void fwd_setup(uint64_t timeout_ms)
{
    timeout = timeout_ms;
}

static struct fwd_conn *fc_of(llhttp_t *p)
{
    return container_of(p, struct fwd_conn, parser);
}

static void store_header(struct fwd_conn *fc)
{
    if (fc->field.len == 0)
        return;
    const char *v = fc->value.data ? fc->value.data : "";
    if (strcasecmp(fc->field.data, "content-type") == 0)
        snprintf(fc->ctype, sizeof fc->ctype, "%s", v);
    else if (strcasecmp(fc->field.data, "allow") == 0)
        snprintf(fc->allow, sizeof fc->allow, "%s", v);
    pz_buf_reset(&fc->field);
    pz_buf_reset(&fc->value);
}

/* Count n more bytes of status line and headers; -1 past the limit. */
static int count_header(struct fwd_conn *fc, size_t n)
{
    fc->header_bytes += n;
    if (fc->header_bytes <= FWD_MAX_HEADER_BYTES)
        return 0;
    fc->error = "response headers over 64 KiB";
    return -1;
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    PZ_UNUSED(at);
    return count_header(fc_of(p), n);
}

static int on_field(llhttp_t *p, const char *at, size_t n)
{
    struct fwd_conn *fc = fc_of(p);
    if (count_header(fc, n))
        return -1;
    if (fc->value.len)
        store_header(fc);
    pz_buf_append(&fc->field, at, n);
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t n)
{
    struct fwd_conn *fc = fc_of(p);
    if (count_header(fc, n))
        return -1;
    pz_buf_append(&fc->value, at, n);
    return 0;
}

static int on_value_complete(llhttp_t *p)
{
    struct fwd_conn *fc = fc_of(p);
    store_header(fc);
    return count_header(fc, 4); /* ": " and CRLF */
}

static int on_headers_complete(llhttp_t *p)
{
    fc_of(p)->status = llhttp_get_status_code(p);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct fwd_conn *fc = fc_of(p);
    if (fc->body.len + n > FWD_MAX_BODY) {
        fc->error = "response body over 64 MiB"; /* not one of ours */
        return -1;
    }
    pz_buf_append(&fc->body, at, n);
    return 0;
}

/* The oldest request still waiting bounds the connection's deadline. */
static void arm_timeout(struct fwd_conn *fc)
{
    if (fc->c == NULL)
        return;
    if (timeout == 0 || pz_queue_empty(&fc->slots)) {
        conn_set_deadline(fc->c, 0);
        return;
    }
    struct fwd_slot *s =
        container_of(pz_queue_head(&fc->slots), struct fwd_slot, q);
    conn_set_deadline(fc->c, s->sent + timeout);
}

static int on_message_complete(llhttp_t *p)
{
    struct fwd_conn *fc = fc_of(p);
    if (pz_queue_empty(&fc->slots))
        return -1; /* a response nobody asked for */
    struct fwd_slot *s =
        container_of(pz_queue_head(&fc->slots), struct fwd_slot, q);
    pz_queue_remove(&s->q);
    struct fwd_req *r = s->req;
    pz_free(s);
    if (r) {
        r->slot = NULL;
        r->http_status = fc->status;
        snprintf(r->content_type, sizeof r->content_type, "%s", fc->ctype);
        snprintf(r->allow, sizeof r->allow, "%s", fc->allow);
        pz_buf_reset(&r->body);
        pz_buf_append(&r->body, fc->body.data ? fc->body.data : "",
                      fc->body.len);
        r->cb(r, 0);
    }
    if (fc->dead)
        return -1; /* the callback shut us down: stop parsing */
    fc->ctype[0] = fc->allow[0] = '\0';
    fc->header_bytes = 0;
    pz_buf_reset(&fc->body);
    pz_buf_reset(&fc->field);
    pz_buf_reset(&fc->value);
    arm_timeout(fc);
    return 0;
}

static void fc_free(struct fwd_conn *fc)
{
    pz_buf_free(&fc->field);
    pz_buf_free(&fc->value);
    pz_buf_free(&fc->body);
    pz_free(fc);
}

/* Fail every slot with status and forget the connection. A callback may
 * get here while the parser runs on fc (a reply that shuts the server
 * down): then on_data frees fc once the parser has returned. */
static void fc_fail(struct fwd_conn *fc, int status)
{
    if (fc->dead)
        return;
    fc->dead = true;
    pz_queue_remove(&fc->q);
    if (fc->c) {
        fc->c->proto = NULL;
        conn_close(fc->c);
        fc->c = NULL;
    }
    while (!pz_queue_empty(&fc->slots)) {
        struct fwd_slot *s =
            container_of(pz_queue_head(&fc->slots), struct fwd_slot, q);
        pz_queue_remove(&s->q);
        struct fwd_req *r = s->req;
        pz_free(s);
        if (r) {
            r->slot = NULL;
            r->cb(r, status);
        }
    }
    if (!fc->in_parse)
        fc_free(fc);
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct fwd_conn *fc = c->proto;
    if (fc == NULL)
        return;
    fc->in_parse = true;
    llhttp_errno_t e = llhttp_execute(&fc->parser, data, len);
    fc->in_parse = false;
    if (fc->dead) {
        fc_free(fc);
        return;
    }
    if (e != HPE_OK) {
        pz_warn("forwarding to %s: bad response (%s)", fc->addr,
                fc->error ? fc->error : llhttp_errno_name(e));
        fc_fail(fc, PZ_EPROTO);
    }
}

static void on_deadline(struct conn *c)
{
    struct fwd_conn *fc = c->proto;
    if (fc == NULL)
        return;
    pz_warn("forwarding to %s: no answer within %llu ms", fc->addr,
            (unsigned long long)timeout);
    fc_fail(fc, PZ_ETIMEDOUT);
}

static void on_close(struct conn *c)
{
    struct fwd_conn *fc = c->proto;
    if (fc == NULL)
        return;
    fc->c = NULL;
    fc_fail(fc, PZ_EIO);
}

static void on_connect(struct conn *c, int status)
{
    struct fwd_conn *fc = c->proto;
    if (status < 0 && fc)
        pz_warn("forwarding: cannot reach the leader at %s: %s", fc->addr,
                uv_strerror(status));
}

static const struct conn_ops fwd_ops = {
    .on_data = on_data,
    .on_close = on_close,
    .on_deadline = on_deadline,
};

static struct fwd_conn *fc_get(const char *addr)
{
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &conns)
    {
        struct fwd_conn *fc = container_of(e, struct fwd_conn, q);
        if (strcmp(fc->addr, addr) == 0 && fc->c && !conn_is_closing(fc->c))
            return fc;
    }
    struct fwd_conn *fc = pz_calloc(1, sizeof *fc);
    snprintf(fc->addr, sizeof fc->addr, "%s", addr);
    pz_queue_init(&fc->slots);
    llhttp_settings_init(&fc->settings);
    fc->settings.on_status = on_status;
    fc->settings.on_header_field = on_field;
    fc->settings.on_header_value = on_value;
    fc->settings.on_header_value_complete = on_value_complete;
    fc->settings.on_headers_complete = on_headers_complete;
    fc->settings.on_body = on_body;
    fc->settings.on_message_complete = on_message_complete;
    llhttp_init(&fc->parser, HTTP_RESPONSE, &fc->settings);
    fc->c = conn_connect(addr, &fwd_ops, fc, on_connect);
    if (fc->c == NULL) {
        pz_free(fc);
        return NULL;
    }
    pz_queue_push(&conns, &fc->q);
    return fc;
}

int fwd_send(struct fwd_req *r, const char *addr, const char *method,
             const char *target, const char *body, size_t blen, fwd_cb cb)
{
    struct fwd_conn *fc = fc_get(addr);
    const char *auth = r->auth;
    pz_buf_init(&r->body);
    r->slot = NULL;
    r->cb = cb;
    if (fc == NULL)
        return PZ_EINVAL;
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b,
                   "%s %s HTTP/1.1\r\nHost: %s\r\n" FWD_HEADER ": 1\r\n"
                   "Content-Length: %zu\r\n",
                   method, target, addr, blen);
    if (auth && auth[0])
        pz_buf_appendf(&b, "Authorization: Bearer %s\r\n", auth);
    pz_buf_append(&b, "\r\n", 2);
    pz_buf_append(&b, body, blen);
    conn_write(fc->c, b.data, b.len);
    pz_buf_free(&b);
    struct fwd_slot *s = pz_calloc(1, sizeof *s);
    s->req = r;
    s->sent = conn_now();
    bool first = pz_queue_empty(&fc->slots);
    pz_queue_push(&fc->slots, &s->q);
    r->slot = s;
    if (first)
        arm_timeout(fc);
    return 0;
}

void fwd_cancel(struct fwd_req *r)
{
    if (r->slot) {
        r->slot->req = NULL;
        r->slot = NULL;
    }
}

void fwd_close_all(void)
{
    while (!pz_queue_empty(&conns))
        fc_fail(container_of(pz_queue_head(&conns), struct fwd_conn, q),
                PZ_EIO);
}
