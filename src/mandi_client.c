/* mandi_client.c - see mandi_client.h.
 *
 * Happy path: each request goes out on the client's httpc (httpc.h): one
 * kept-alive connection, pipelined, answered in order, each request
 * bounded by the timeout and sent at most twice (every mandi request is
 * idempotent, so one lost on a broken connection is sent once more). The
 * answer is then read as mandi's: a LeaderInfo or a join list for a 200
 * to a GET, the first line of the body otherwise.
 *
 * Whatever answers may be hostile or broken: httpc caps the status line
 * and headers at MAX_HEAD bytes and the body at MAX_RESPONSE; the join
 * list is read in place rather than built into a JSON tree, and capped at
 * MAX_JOINS; ids and addresses pass mandi's own rules (mandi_codec.h) or
 * are left out. Text from the answer reaches the caller and the log only
 * escaped (pz_escape), and the warnings are rate-limited. */
#include "mandi_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "http_parse.h"
#include "httpc.h"
#include "log.h"

#define MAX_ATTEMPTS 2                  /* connections a request is sent on */
#define MAX_RESPONSE (4u * 1024 * 1024) /* larger bodies are not mandi's */
#define MAX_HEAD (16u * 1024)           /* status line and headers */
#define MAX_JOINS 1024                  /* join requests taken per answer */
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
    struct mandi_client *mc; /* owner */
    enum req_kind kind;      /* how to read the answer */
    mandi_client_cb cb;      /* the caller's callback */
    void *data;              /* its argument */
};

struct mandi_client {
    uv_loop_t *loop;             /* borrowed */
    char addr[CFG_ADDR_MAX + 3]; /* host:port of mandi */
    char *token;                 /* owned; NULL: no Authorization */
    struct httpc *http;          /* the connection to mandi */
    struct pz_ratelimit warns;   /* rate of the warnings below */
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

/* httpc's troubles (bad answers, no answer) go through the same limit. */
static void http_warn(void *data, const char *msg)
{
    warn(data, "%s", msg);
}

/* mandi's answer to r (or why there is none), read and passed on. */
static void on_answer(const struct httpc_result *hr, void *data)
{
    struct mreq *r = data;
    struct mandi_client *mc = r->mc;
    struct mandi_leader leader;
    struct mandi_join *joins = NULL;
    char message[PZ_ESCAPED_MAX] = "";
    struct mandi_result res = {.err = hr->err,
                               .http_status = hr->status,
                               .message = message};
    char why[128];
    int status = hr->status;
    if (hr->err < 0) {
        /* nothing to read */
    } else if (status == 200 && r->kind == K_GET_LEADER) {
        if (mandi_parse_leader(hr->body, hr->blen, &leader, why,
                               sizeof why)) {
            warn(mc, "its leader is not valid: %s", why);
            res.err = PZ_EPROTO;
        } else {
            res.leader = &leader;
        }
    } else if (status == 200 && r->kind == K_GET_JOINS) {
        size_t invalid, over;
        if (mandi_parse_joins(hr->body, hr->blen, MAX_JOINS, &joins,
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
        /* The first line, escaped and cut (the body is NUL-terminated). */
        size_t n = PZ_MIN(strcspn(hr->body, "\r\n"), sizeof message);
        pz_escape(message, sizeof message, hr->body, n);
    }
    if (res.err)
        res.http_status = 0;
    r->cb(&res, r->data);
    pz_free(joins);
    pz_free(r);
}

static bool valid_token(const char *t)
{
    size_t n = strlen(t);
    for (size_t i = 0; i < n; i++)
        if (t[i] <= ' ' || t[i] >= 0x7f)
            return false;
    return n <= CFG_TOKEN_MAX;
}

static const struct tls_slot *https_slot; /* mandi_client_https() */

void mandi_client_https(const struct tls_slot *s)
{
    https_slot = s;
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
    bool https = cfg_url_is_https(url);
    if (https && https_slot == NULL) {
        snprintf(err, errlen, "mandi url '%s': no TLS set up for https", url);
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
    char name[CFG_ADDR_MAX + 16];
    snprintf(name, sizeof name, "mandi at %s", mc->addr);
    struct httpc_opts o = {
        .max_head = MAX_HEAD,
        .max_body = MAX_RESPONSE,
        .timeout_ms = timeout_ms,
        .max_attempts = MAX_ATTEMPTS,
        .log_name = name,
        .warn = http_warn,
        .warn_data = mc,
        .quiet_dial = true, /* mandi may be down: nodes do without it */
        .tls = https ? https_slot : NULL,
    };
    mc->http = httpc_new(loop, mc->addr, &o);
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
    struct mreq *r = pz_malloc(sizeof *r);
    *r = (struct mreq){.mc = mc, .kind = kind, .cb = cb, .data = data};
    struct pz_buf h;
    pz_buf_init(&h);
    pz_buf_append(&h, "", 0);
    if (mc->token)
        pz_buf_appendf(&h, "Authorization: Bearer %s\r\n", mc->token);
    if (body)
        pz_buf_appendf(&h, "Content-Type: application/json\r\n");
    uint64_t id = httpc_request(mc->http, method, target, h.data,
                                body ? body->data : NULL,
                                body ? body->len : 0, on_answer, r);
    pz_buf_free(&h);
    if (id == 0)
        pz_free(r);
    return id;
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
    struct pz_buf t;
    pz_buf_init(&t);
    pz_buf_appendf(&t, "/join-requests?id=");
    http_pct_encode(&t, id, strlen(id));
    uint64_t rid = submit(mc, K_DELETE_JOIN, "DELETE", t.data, NULL, cb, data);
    pz_buf_free(&t);
    return rid;
}

bool mandi_cancel(struct mandi_client *mc, uint64_t id)
{
    void *r;
    if (id == 0 || !httpc_cancel(mc->http, id, &r))
        return false;
    pz_free(r);
    return true;
}

size_t mandi_client_pending(const struct mandi_client *mc)
{
    return httpc_pending(mc->http);
}

void mandi_client_free(struct mandi_client *mc)
{
    if (mc == NULL || mc->freeing)
        return;
    mc->freeing = true;
    /* The pending callbacks run in here, with PZ_ECANCELED; httpc's
     * memory goes once its timer has closed. */
    httpc_free(mc->http);
    pz_free(mc->token);
    pz_free(mc);
}
