/* grpc_client.c - see grpc_client.h.
 *
 * A client owns a list of connections (struct gc_conn): the current one,
 * where new calls go, and older ones that were told to go away (GOAWAY) or
 * are closing, kept until their last stream ends. Each call is one stream;
 * the stream's user data points at the call until the call completes or is
 * cancelled, and every nghttp2 callback looks the call up there, so a
 * cancelled call's memory is never touched again.
 *
 * Completed calls wait on a done list and their callbacks run after
 * nghttp2 returns (end of a read, a timer, a closed connection): a callback
 * may then start calls, cancel calls or close the client without
 * re-entering nghttp2. */
#include "grpc_client.h"

#include <nghttp2/nghttp2.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "tls.h"

#define SEND_HIGH (64 * 1024)   /* stop producing output past this */
#define STREAM_WINDOW (1 << 20) /* per-stream receive window */
#define CONN_WINDOW (16 << 20)  /* connection receive window */

struct gc_conn {
    struct grpc_client *cl; /* owner */
    struct conn *c;         /* the TCP connection, NULL once closed */
    nghttp2_session *ng;    /* client session */
    struct pz_queue calls;  /* active calls with a stream here */
    struct pz_queue link;   /* in cl->conns */
    int in_recv;            /* inside mem_recv: no mem_send */
    bool usable;            /* new calls may use it */
    bool connected;         /* the TCP connection was made */
    bool blocked;           /* output over SEND_HIGH: not reading */
};

struct grpc_client {
    uv_loop_t *loop;       /* the loop */
    char addr[256];        /* "host:port" */
    size_t max_message;    /* response size limit */
    struct gc_conn *cur;   /* where new calls go, NULL: connect first */
    struct pz_queue conns; /* every gc_conn alive */
    struct pz_queue done;  /* completed calls, callbacks pending */
    uv_timer_t timer;      /* earliest deadline */
    uint64_t timer_due;    /* uv_now() it fires at, 0 = idle */
    uv_idle_t kick;        /* keeps poll from blocking on output */
    size_t active;         /* calls started, callback not yet run */
    uint64_t connects;     /* connections opened */
    int depth;             /* > 0: running callbacks */
    const struct tls_slot *tls; /* TLS for new connections, NULL: h2c */
    int handles;           /* open uv handles (timer, kick) */
    bool closing;          /* grpc_client_close called */
    bool freeing;          /* handles are closing: gone soon */
    bool count_output;     /* grpc_client_count_output */
    char last_error[384];  /* why the last connection failed */
};

static nghttp2_session_callbacks *callbacks;
static int callbacks_refs;

static void run_done(struct grpc_client *cl);
static void maybe_free(struct grpc_client *cl);

/* --- allocation: nghttp2 makes and drops several small objects per
 * stream (the stream, its frames, header copies), so they come from the
 * size-class cache rather than from malloc each time ---------------------- */

static void *ng_malloc(size_t n, void *ud)
{
    PZ_UNUSED(ud);
    return pz_cache_alloc(n);
}

static void ng_free(void *p, void *ud)
{
    PZ_UNUSED(ud);
    pz_cache_free(p);
}

static void *ng_calloc(size_t n, size_t size, void *ud)
{
    PZ_UNUSED(ud);
    return pz_cache_calloc(n, size);
}

static void *ng_realloc(void *p, size_t n, void *ud)
{
    PZ_UNUSED(ud);
    return pz_cache_realloc(p, n);
}

static nghttp2_mem ng_mem = {NULL, ng_malloc, ng_free, ng_calloc, ng_realloc};

nghttp2_mem *grpc_nghttp2_mem(void)
{
    return &ng_mem;
}

/* --- calls -----------------------------------------------------------------
 */

/* Count what call holds in its grpc_call_opts.held, if it has one. */
static void count_held(struct grpc_call *call, bool none)
{
    size_t n = call->req.cap + call->rd.msg.cap + call->resp.cap;
    if (call->held)
        conn_hold_detached(call->held, none ? 0 : n);
}

void grpc_call_init(struct grpc_call *call)
{
    memset(call, 0, sizeof *call);
    pz_buf_init(&call->resp);
    pz_buf_init(&call->req);
    pz_buf_init(&call->grpc_msg);
    pz_queue_init(&call->q);
    grpc_reader_init(&call->rd, 0);
    call->stream_id = -1;
    call->grpc_status = -1;
    call->local_status = -1;
}

void grpc_call_reset(struct grpc_call *call)
{
    pz_assert(!call->active);
    count_held(call, true);
    pz_buf_free(&call->resp);
    pz_buf_free(&call->req);
    pz_buf_free(&call->grpc_msg);
    grpc_reader_free(&call->rd);
    pz_free(call->message);
    grpc_call_init(call);
}

static void set_local(struct grpc_call *call, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_local(struct grpc_call *call, int status, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    if (call->local_status >= 0)
        return; /* the first error wins */
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    call->local_status = status;
    pz_free(call->message);
    call->message = pz_strdup(text);
}

/* gRPC's mapping of RST_STREAM codes (PROTOCOL-HTTP2.md). */
static int status_from_rst(uint32_t code)
{
    switch (code) {
    case NGHTTP2_REFUSED_STREAM:
        return GRPC_UNAVAILABLE;
    case NGHTTP2_CANCEL:
        return GRPC_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return GRPC_PERMISSION_DENIED;
    default:
        return GRPC_INTERNAL;
    }
}

/* The stream of an active call ended: work out the status, queue the
 * callback. error is the RST_STREAM code (0 for a clean end). */
static void complete(struct grpc_call *call, uint32_t error)
{
    struct grpc_client *cl = call->cl;
    if (call->local_status >= 0) {
        call->status = call->local_status;
    } else if (call->grpc_status >= 0) {
        call->status = call->grpc_status;
        struct pz_buf m;
        pz_buf_init(&m);
        grpc_message_decode(&m, call->grpc_msg.data ? call->grpc_msg.data : "",
                            call->grpc_msg.len);
        pz_free(call->message);
        call->message = m.data;
        if (call->status == GRPC_OK && grpc_reader_partial(&call->rd)) {
            call->status = GRPC_INTERNAL;
            pz_free(call->message);
            call->message = pz_strdup("truncated response message");
        } else if (call->status == GRPC_OK && !call->has_resp) {
            call->status = GRPC_INTERNAL;
            pz_free(call->message);
            call->message = pz_strdup("no response message");
        }
    } else if (error != NGHTTP2_NO_ERROR) {
        /* RFC 9113 §8.7: REFUSED_STREAM means no application processing. */
        call->unsent = error == NGHTTP2_REFUSED_STREAM;
        call->status = status_from_rst(error);
        set_local(call, call->status, "stream reset by %s: %s", cl->addr,
                  nghttp2_http2_strerror(error));
    } else if (call->http_status != 0 && call->http_status != 200) {
        call->status = grpc_status_from_http(call->http_status);
        set_local(call, call->status, "HTTP status %d from %s",
                  call->http_status, cl->addr);
    } else {
        call->status = GRPC_INTERNAL;
        set_local(call, call->status, "response from %s without grpc-status",
                  cl->addr);
    }
    if (call->message == NULL)
        call->message = pz_strdup("");
    if (call->status < 0 || call->status > GRPC_UNAUTHENTICATED)
        call->status = GRPC_UNKNOWN;
    pz_queue_remove(&call->q);
    call->conn = NULL;
    pz_queue_push(&cl->done, &call->q);
    call->queued = true;
}

static void run_done(struct grpc_client *cl)
{
    cl->depth++;
    while (!pz_queue_empty(&cl->done)) {
        struct grpc_call *call =
            container_of(pz_queue_head(&cl->done), struct grpc_call, q);
        pz_queue_remove(&call->q);
        call->queued = false;
        call->active = false;
        call->cl = NULL;
        cl->active--;
        call->cb(call); /* may free call's memory: do not touch it again */
    }
    cl->depth--;
    maybe_free(cl);
}

/* --- connection ------------------------------------------------------------
 */

static void on_kick(uv_idle_t *h)
{
    uv_idle_stop(h);
}

static void gc_flush(struct gc_conn *gc)
{
    if (gc->in_recv || gc->c == NULL || conn_is_closing(gc->c))
        return;
    bool wrote = false;
    while (conn_output_pending(gc->c) < SEND_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(gc->ng, &data);
        if (n < 0) {
            snprintf(gc->cl->last_error, sizeof gc->cl->last_error,
                     "HTTP/2 error with %s: %s", gc->cl->addr,
                     nghttp2_strerror((int)n));
            conn_close(gc->c);
            return;
        }
        if (n == 0)
            break;
        conn_write(gc->c, data, (size_t)n);
        wrote = true;
    }
    bool over = conn_output_pending(gc->c) >= SEND_HIGH;
    if (over && !gc->blocked) {
        gc->blocked = true;
        conn_pause(gc->c);
    } else if (!over && gc->blocked) {
        gc->blocked = false;
        conn_resume(gc->c);
    }
    if ((!nghttp2_session_want_read(gc->ng) &&
         !nghttp2_session_want_write(gc->ng)) ||
        (!gc->usable && pz_queue_empty(&gc->calls)))
        conn_close_after_flush(gc->c);
    if (wrote && !uv_is_closing((uv_handle_t *)&gc->cl->kick))
        uv_idle_start(&gc->cl->kick, on_kick);
}

static void on_data(struct conn *c, const char *data, size_t len)
{
    struct gc_conn *gc = c->proto;
    struct grpc_client *cl = gc->cl;
    gc->in_recv++;
    ssize_t rv = nghttp2_session_mem_recv(gc->ng, (const uint8_t *)data, len);
    gc->in_recv--;
    if (rv < 0) {
        snprintf(cl->last_error, sizeof cl->last_error,
                 "HTTP/2 error with %s: %s", cl->addr,
                 nghttp2_strerror((int)rv));
        conn_close(c);
    } else {
        gc_flush(gc);
    }
    run_done(cl);
}

static void on_drain(struct conn *c)
{
    gc_flush(c->proto);
}

static void on_close(struct conn *c)
{
    struct gc_conn *gc = c->proto;
    struct grpc_client *cl = gc->cl;
    gc->c = NULL;
    while (!pz_queue_empty(&gc->calls)) {
        struct grpc_call *call =
            container_of(pz_queue_head(&gc->calls), struct grpc_call, q);
        nghttp2_session_set_stream_user_data(gc->ng, call->stream_id, NULL);
        if (!gc->connected)
            call->unsent = true;
        set_local(call, GRPC_UNAVAILABLE, "%s",
                  cl->last_error[0] ? cl->last_error
                                    : "connection to the server lost");
        complete(call, 0);
    }
    nghttp2_session_del(gc->ng);
    pz_queue_remove(&gc->link);
    if (cl->cur == gc)
        cl->cur = NULL;
    pz_free(gc);
    c->proto = NULL;
    run_done(cl);
}

static void on_connected(struct conn *c, int status)
{
    struct gc_conn *gc = c->proto;
    if (status < 0) {
        snprintf(gc->cl->last_error, sizeof gc->cl->last_error,
                 "cannot connect to %s: %s", gc->cl->addr, uv_strerror(status));
        gc->usable = false;
        return; /* closed right after: on_close fails the calls */
    }
    gc->connected = true;
    gc->cl->last_error[0] = '\0';
    gc_flush(gc);
}

static const struct conn_ops client_ops = {
    .on_data = on_data,
    .on_drain = on_drain,
    .on_close = on_close,
};

static struct gc_conn *gc_new(struct grpc_client *cl)
{
    struct gc_conn *gc = pz_calloc(1, sizeof *gc);
    gc->cl = cl;
    pz_queue_init(&gc->calls);
    pz_queue_init(&gc->link);
    if (nghttp2_session_client_new3(&gc->ng, callbacks, gc, NULL, &ng_mem) !=
        0) {
        pz_free(gc);
        return NULL;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, GRPC_CLIENT_MAX_HEADER_BYTES},
    };
    nghttp2_submit_settings(gc->ng, NGHTTP2_FLAG_NONE, iv, PZ_ARRAY_SIZE(iv));
    nghttp2_session_set_local_window_size(gc->ng, NGHTTP2_FLAG_NONE, 0,
                                          CONN_WINDOW);
    gc->c = conn_connect(cl->addr, &client_ops, gc, on_connected);
    if (gc->c == NULL) {
        nghttp2_session_del(gc->ng);
        pz_free(gc);
        return NULL;
    }
    if (cl->count_output)
        conn_count_output(gc->c);
    /* A failure closes gc->c: its on_close fails the calls on it. */
    if (tls_slot_on(cl->tls))
        conn_start_tls_addr(gc->c, cl->tls, cl->addr, 0);
    gc->usable = true;
    pz_queue_push(&cl->conns, &gc->link);
    cl->connects++;
    return gc;
}

/* --- nghttp2 callbacks ------------------------------------------------- */

static ssize_t req_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf,
                           size_t length, uint32_t *flags,
                           nghttp2_data_source *src, void *ud)
{
    PZ_UNUSED(src);
    PZ_UNUSED(ud);
    struct grpc_call *call = nghttp2_session_get_stream_user_data(ng, id);
    if (call == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* cancelled */
    size_t n = PZ_MIN(call->req.len - call->req_off, length);
    if (n)
        memcpy(buf, call->req.data + call->req_off, n);
    call->req_off += n;
    if (call->req_off == call->req.len) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        /* nghttp2 has its bytes: this copy is not needed any more. */
        pz_buf_free(&call->req);
        call->req_off = 0;
        count_held(call, false);
    }
    return (ssize_t)n;
}

static bool name_is(const uint8_t *name, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(name, want, len) == 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame,
                     const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen, uint8_t flags, void *ud)
{
    PZ_UNUSED(flags);
    PZ_UNUSED(ud);
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct grpc_call *call =
        nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (call == NULL)
        return 0;
    /* Informational responses, headers and trailers together: a peer that
     * sends header fields without end gets the call failed, not kept. */
    call->header_bytes += namelen + valuelen + 32;
    if (call->header_bytes > GRPC_CLIENT_MAX_HEADER_BYTES) {
        set_local(call, GRPC_INTERNAL, "response headers from %s over %d bytes",
                  call->cl->addr, GRPC_CLIENT_MAX_HEADER_BYTES);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    }
    if (name_is(name, namelen, ":status")) {
        int v = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            v = v * 10 + (value[i] - '0');
        call->http_status = v;
    } else if (name_is(name, namelen, "grpc-status")) {
        int v = grpc_status_parse((const char *)value, valuelen);
        call->grpc_status = v < 0 ? GRPC_UNKNOWN : v;
    } else if (name_is(name, namelen, "grpc-message")) {
        pz_buf_reset(&call->grpc_msg);
        pz_buf_append(&call->grpc_msg, value, valuelen);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id,
                         const uint8_t *data, size_t len, void *ud)
{
    PZ_UNUSED(flags);
    PZ_UNUSED(ud);
    struct grpc_call *call = nghttp2_session_get_stream_user_data(ng, id);
    if (call == NULL || call->local_status >= 0)
        return 0;
    while (len > 0) {
        size_t used;
        int rv = grpc_reader_feed(&call->rd, data, len, &used);
        data += used;
        len -= used;
        if (rv == GRPC_READ_TOO_BIG) {
            set_local(call, GRPC_RESOURCE_EXHAUSTED,
                      "response message of %lu bytes is over the limit "
                      "(%zu)",
                      (unsigned long)call->rd.len, call->rd.max);
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id,
                                      NGHTTP2_CANCEL);
            return 0;
        }
        if (rv == GRPC_READ_MORE)
            break;
        if (call->rd.compressed) {
            set_local(call, GRPC_INTERNAL,
                      "compressed response without a supported encoding");
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id,
                                      NGHTTP2_CANCEL);
            return 0;
        }
        if (!call->has_resp) {
            /* The reader's buffer becomes the response: not copied. */
            call->has_resp = true;
            pz_buf_free(&call->resp);
            call->resp = call->rd.msg;
            pz_buf_init(&call->rd.msg);
        }
        grpc_reader_next(&call->rd);
    }
    count_held(call, false);
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame,
                         void *ud)
{
    PZ_UNUSED(ng);
    struct gc_conn *gc = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        /* Streams above last_stream_id are closed with REFUSED_STREAM;
         * the others finish. New calls go to a new connection. */
        gc->usable = false;
        if (gc->cl->cur == gc)
            gc->cl->cur = NULL;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error,
                           void *ud)
{
    PZ_UNUSED(ud);
    struct grpc_call *call = nghttp2_session_get_stream_user_data(ng, id);
    if (call == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    complete(call, error);
    return 0;
}

static void setup_callbacks(void)
{
    if (callbacks_refs++ > 0)
        return;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks,
                                                              on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks,
                                                         on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks,
                                                           on_stream_close);
}

static void release_callbacks(void)
{
    if (--callbacks_refs == 0) {
        nghttp2_session_callbacks_del(callbacks);
        callbacks = NULL;
    }
}

/* --- deadlines --------------------------------------------------------------
 */

static void on_timer(uv_timer_t *t);

static void arm(struct grpc_client *cl, uint64_t due)
{
    if (cl->freeing || (cl->timer_due != 0 && cl->timer_due <= due))
        return;
    uint64_t now = uv_now(cl->loop);
    cl->timer_due = due;
    uv_timer_start(&cl->timer, on_timer, due > now ? due - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct grpc_client *cl = t->data;
    uint64_t now = uv_now(cl->loop), next = 0;
    struct pz_queue *e, *f;
    cl->timer_due = 0;
    PZ_QUEUE_FOREACH(e, &cl->conns)
    {
        struct gc_conn *gc = container_of(e, struct gc_conn, link);
        for (f = pz_queue_head(&gc->calls); f != &gc->calls;) {
            struct grpc_call *call = container_of(f, struct grpc_call, q);
            f = f->next;
            if (call->deadline == 0)
                continue;
            if (call->deadline > now) {
                if (next == 0 || call->deadline < next)
                    next = call->deadline;
                continue;
            }
            nghttp2_session_set_stream_user_data(gc->ng, call->stream_id, NULL);
            nghttp2_submit_rst_stream(gc->ng, NGHTTP2_FLAG_NONE,
                                      call->stream_id, NGHTTP2_CANCEL);
            set_local(call, GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
            complete(call, 0);
        }
        gc_flush(gc);
    }
    if (next)
        arm(cl, next);
    run_done(cl);
}

/* --- client ------------------------------------------------------------------
 */

struct grpc_client *grpc_client_new(uv_loop_t *loop, const char *addr,
                                    size_t max_message)
{
    struct grpc_client *cl = pz_calloc(1, sizeof *cl);
    cl->loop = loop;
    snprintf(cl->addr, sizeof cl->addr, "%s", addr);
    cl->max_message = max_message;
    pz_queue_init(&cl->conns);
    pz_queue_init(&cl->done);
    uv_timer_init(loop, &cl->timer);
    uv_idle_init(loop, &cl->kick);
    cl->timer.data = cl;
    cl->kick.data = cl;
    cl->handles = 2;
    setup_callbacks();
    return cl;
}

void grpc_client_set_tls(struct grpc_client *cl, const struct tls_slot *s)
{
    cl->tls = s;
}

void grpc_client_count_output(struct grpc_client *cl)
{
    cl->count_output = true;
}

const char *grpc_client_addr(const struct grpc_client *cl)
{
    return cl->addr;
}

size_t grpc_client_active(const struct grpc_client *cl)
{
    return cl->active;
}

uint64_t grpc_client_connects(const struct grpc_client *cl)
{
    return cl->connects;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct grpc_client *cl = h->data;
    if (--cl->handles == 0) {
        release_callbacks();
        pz_free(cl);
    }
}

static void maybe_free(struct grpc_client *cl)
{
    struct pz_queue *e;
    if (!cl->closing || cl->freeing || cl->depth > 0 || cl->active > 0)
        return;
    PZ_QUEUE_FOREACH(e, &cl->conns)
    {
        struct gc_conn *gc = container_of(e, struct gc_conn, link);
        if (gc->c)
            conn_close(gc->c); /* on_close comes back here */
    }
    if (!pz_queue_empty(&cl->conns))
        return;
    cl->freeing = true;
    uv_close((uv_handle_t *)&cl->timer, on_handle_closed);
    uv_close((uv_handle_t *)&cl->kick, on_handle_closed);
}

void grpc_client_close(struct grpc_client *cl)
{
    cl->closing = true;
    cl->cur = NULL;
    maybe_free(cl);
}

void grpc_client_abort(struct grpc_client *cl)
{
    struct pz_queue *e;
    cl->closing = true;
    cl->cur = NULL;
    PZ_QUEUE_FOREACH(e, &cl->conns)
    {
        struct gc_conn *gc = container_of(e, struct gc_conn, link);
        while (!pz_queue_empty(&gc->calls)) {
            struct grpc_call *call =
                container_of(pz_queue_head(&gc->calls), struct grpc_call, q);
            nghttp2_session_set_stream_user_data(gc->ng, call->stream_id, NULL);
            set_local(call, GRPC_CANCELLED, "client closed");
            complete(call, 0);
        }
        if (gc->c)
            conn_close(gc->c);
    }
    if (cl->depth == 0)
        run_done(cl); /* ends in maybe_free */
}

int grpc_client_call(struct grpc_client *cl, struct grpc_call *call,
                     const char *path, const void *msg, size_t len,
                     const struct grpc_call_opts *opts, grpc_call_cb cb)
{
    static const struct grpc_call_opts no_opts;
    char timeout[16];
    if (opts == NULL)
        opts = &no_opts;
    pz_assert(!call->active);
    if (cl->closing)
        return PZ_ESHUTDOWN;
    if (len > UINT32_MAX)
        return PZ_EINVAL;
    if (cl->cur && (cl->cur->c == NULL || conn_is_closing(cl->cur->c) ||
                    (cl->cur->c->flags & CONN_CLOSE_AFTER)))
        cl->cur->usable = false;
    if (cl->cur == NULL || !cl->cur->usable) {
        cl->cur = gc_new(cl);
        if (cl->cur == NULL)
            return PZ_EIO; /* no connection could be opened */
    }
    struct gc_conn *gc = cl->cur;
    grpc_call_reset(call);
    call->unsent = false;
    grpc_reader_free(&call->rd);
    grpc_reader_init(&call->rd, cl->max_message);
    grpc_frame_append(&call->req, msg, len);
    call->held = opts->held;
    count_held(call, false);

    nghttp2_nv nva[16 + 2 * 8];
    size_t n = 0;
#define ADD(name, value)                                                       \
    nva[n++] = (nghttp2_nv){(uint8_t *)(name), (uint8_t *)(value),             \
                            strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE}
    ADD(":method", "POST");
    ADD(":scheme", "http");
    ADD(":path", path);
    ADD(":authority", cl->addr);
    ADD("content-type", "application/grpc");
    ADD("te", "trailers");
    ADD("user-agent", "pyazdb/" PZ_VERSION);
    if (opts->timeout_ms) {
        grpc_timeout_format(opts->timeout_ms, timeout, sizeof timeout);
        ADD("grpc-timeout", timeout);
    }
    for (size_t i = 0; opts->metadata && opts->metadata[i] &&
                       opts->metadata[i + 1] && n + 1 < PZ_ARRAY_SIZE(nva);
         i += 2)
        ADD(opts->metadata[i], opts->metadata[i + 1]);
#undef ADD
    nghttp2_data_provider dp = {.read_callback = req_read_cb};
    int32_t id = nghttp2_submit_request(gc->ng, NULL, nva, n, &dp, call);
    if (id < 0) {
        grpc_call_reset(call);
        return PZ_EIO;
    }
    call->cb = cb;
    call->cl = cl;
    call->conn = gc;
    call->stream_id = id;
    call->active = true;
    pz_queue_push(&gc->calls, &call->q);
    cl->active++;
    if (opts->timeout_ms) {
        call->deadline = uv_now(cl->loop) + opts->timeout_ms;
        arm(cl, call->deadline);
    }
    gc_flush(gc);
    return 0;
}

void grpc_client_cancel(struct grpc_call *call)
{
    if (!call->active)
        return;
    struct grpc_client *cl = call->cl;
    struct gc_conn *gc = call->conn;
    pz_queue_remove(&call->q);
    call->queued = false;
    call->active = false;
    call->cl = NULL;
    call->conn = NULL;
    cl->active--;
    count_held(call, true);
    if (gc != NULL) {
        nghttp2_session_set_stream_user_data(gc->ng, call->stream_id, NULL);
        if (gc->c) {
            nghttp2_submit_rst_stream(gc->ng, NGHTTP2_FLAG_NONE,
                                      call->stream_id, NGHTTP2_CANCEL);
            gc_flush(gc);
        }
    }
    maybe_free(cl);
}
