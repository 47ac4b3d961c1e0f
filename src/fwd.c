/* fwd.c - see fwd.h.
 *
 * Happy path: fwd_send finds (or dials) the connection to the address,
 * writes the request and queues a slot; responses are parsed with llhttp
 * and each completes the oldest slot. Failure modes: a refused connection,
 * a reset or a malformed response fails every slot of that connection with
 * PZ_EIO and drops the connection (the next request dials again). A
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
    bool in_parse;              /* inside llhttp_execute: don't free */
    bool dead;                  /* failed; freed once out of the parser */
};

static struct pz_queue conns = {&conns, &conns};

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

static int on_field(llhttp_t *p, const char *at, size_t n)
{
    struct fwd_conn *fc = fc_of(p);
    if (fc->value.len)
        store_header(fc);
    pz_buf_append(&fc->field, at, n);
    return 0;
}

static int on_value(llhttp_t *p, const char *at, size_t n)
{
    pz_buf_append(&fc_of(p)->value, at, n);
    return 0;
}

static int on_value_complete(llhttp_t *p)
{
    store_header(fc_of(p));
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    fc_of(p)->status = llhttp_get_status_code(p);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct fwd_conn *fc = fc_of(p);
    if (fc->body.len + n > 64u * 1024 * 1024)
        return -1; /* a response this large is not ours */
    pz_buf_append(&fc->body, at, n);
    return 0;
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
    pz_buf_reset(&fc->body);
    return 0;
}

static void fc_free(struct fwd_conn *fc)
{
    pz_buf_free(&fc->field);
    pz_buf_free(&fc->value);
    pz_buf_free(&fc->body);
    pz_free(fc);
}

/* Fail every slot and forget the connection. A callback may get here
 * while the parser runs on fc (a reply that shuts the server down): then
 * on_data frees fc once the parser has returned. */
static void fc_fail(struct fwd_conn *fc)
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
            r->cb(r, PZ_EIO);
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
                llhttp_errno_name(e));
        fc_fail(fc);
    }
}

static void on_close(struct conn *c)
{
    struct fwd_conn *fc = c->proto;
    if (fc == NULL)
        return;
    fc->c = NULL;
    fc_fail(fc);
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
    pz_queue_push(&fc->slots, &s->q);
    r->slot = s;
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
        fc_fail(container_of(pz_queue_head(&conns), struct fwd_conn, q));
}
