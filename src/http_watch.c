/* http_watch.c - GET /watch as Server-Sent Events (http_watch.h).
 *
 * Happy path: GET /watch?key=K (or prefix=P, or from=A&to=B) with
 * optional start_revision, prev_kv, serializable and a Last-Event-ID
 * header -> parameters checked (400 with a line) -> unless
 * serializable=true, a ReadIndex round (node_read), so that the stream
 * starts at least at every write acknowledged before the request -> the
 * start revision (given, Last-Event-ID + 1, or the applied revision + 1)
 * is checked against the history (410 compacted) -> a watcher is
 * registered (watch.h) and the reply begins: 200 text/event-stream, open
 * ended, first `event: created` with the node's revision and the start
 * revision -> whenever the node publishes a revision, the watcher is kicked
 * and on_stream writes one SSE event per revision with matching events:
 *
 *   id: 12
 *   data: {"revision":12,"events":[{"type":"put","kv":{...}},...]}
 *
 * each "kv" (and "prev_kv" with prev_kv=true) written as /range writes
 * keys, so an event id is a revision and Last-Event-ID resumes after it.
 * An idle stream (nothing sent for watch-progress-interval, all caught
 * up) gets `event: progress` with the node's revision.
 *
 * Failure modes: a client that reads too slowly only stops on_stream
 * (httpd asks for more as its output drains); the watcher's cursor then
 * lags in the shared history, and once it is watch-max-buffer bytes
 * behind, or the history dropped what it still needs, the hub cancels it:
 * `event: cancelled` with the reason, and the stream ends. A snapshot
 * installed under the stream cancels it the same way (compacted). At
 * shutdown every stream ends (clients resume elsewhere). */
#include "http_watch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "http.h"
#include "http_parse.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "stats.h"
#include "watch.h"

#define WATCH_CACHE_MAX (1u << 20) /* largest revision kept encoded */

struct watch_stream {
    struct httpd_conn *hc; /* its connection */
    struct node_req req;   /* the linearizable start */
    struct watcher w;      /* registered once the stream begins */
    bool registered;       /* w is (or was) registered */
    bool streaming;        /* the reply began */
    bool prev_kv;          /* send previous states */
    bool start_given;      /* start_revision or Last-Event-ID */
    uint64_t start;        /* ... its value */
    uint8_t *from, *to;    /* range (owned; to NULL: no end) */
    size_t flen, tlen;     /* their lengths */
    uint64_t last_write;   /* conn_now() of the last event written */
    struct watch_stream *prev_s, *next_s; /* all streams */
};

static struct {
    struct watch_stream *streams; /* every stream, started or not */
    uint64_t progress_ms;         /* watch-progress-interval */
    size_t max_key;               /* max-key-size */
    size_t max_watchers;          /* max-watchers */
    uint64_t events_sent;         /* events written to streams */
    uint64_t revisions_sent;      /* SSE events with an id written */
    uint64_t progress_sent;       /* progress events written */
    bool inited;
} hw;

static void link_stream(struct watch_stream *ws)
{
    ws->next_s = hw.streams;
    if (hw.streams)
        hw.streams->prev_s = ws;
    hw.streams = ws;
}

static void unlink_stream(struct watch_stream *ws)
{
    if (ws->prev_s)
        ws->prev_s->next_s = ws->next_s;
    else if (hw.streams == ws)
        hw.streams = ws->next_s;
    if (ws->next_s)
        ws->next_s->prev_s = ws->prev_s;
    ws->prev_s = ws->next_s = NULL;
}

/* --- events ----------------------------------------------------------- */

static void put_event(struct pz_buf *b, const struct watch_event *e,
                      bool prev_kv)
{
    struct kv_view v = {.key = e->key,
                        .klen = e->klen,
                        .value = e->value,
                        .vlen = e->vlen,
                        .meta = e->meta};
    pz_buf_appendf(b, "{\"type\":\"%s\",\"kv\":",
                   e->type == KV_TOP_PUT ? "put" : "delete");
    http_put_kv(b, &v);
    if (prev_kv) {
        pz_buf_append(b, ",\"prev_kv\":", 11);
        if (e->has_prev) {
            struct kv_view p = {.key = e->key,
                                .klen = e->klen,
                                .value = e->prev,
                                .vlen = e->plen,
                                .meta = e->pmeta};
            http_put_kv(b, &p);
        } else {
            pz_buf_append(b, "null", 4);
        }
    }
    pz_buf_append(b, "}", 1);
}

static void write_buf(struct watch_stream *ws, struct pz_buf *b)
{
    httpd_stream_write(ws->hc, b->data, b->len);
    ws->last_write = conn_now();
}

/* The last revision encoded whole (every event matched), by prev_kv: the
 * many watchers of one prefix send the same bytes, encoded once. Valid
 * while the history holds it (a reset or a newer revision replaces it). */
static struct {
    uint64_t rev;      /* 0: none */
    uint64_t begin;    /* its first event's sequence number */
    struct pz_buf buf; /* the SSE event */
} cache[2];

static bool all_match(const struct watch_hub *hub, const struct watcher *w,
                      uint64_t begin, uint64_t end)
{
    for (uint64_t s = begin; s < end; s++)
        if (!watch_matches(w, watch_event_at(hub, s)))
            return false;
    return true;
}

void http_watch_on_stream(struct watch_stream *ws)
{
    struct httpd_conn *hc = ws->hc;
    struct watch_hub *hub = node_watch();
    struct pz_buf b;
    uint64_t rev, begin, end;
    pz_buf_init(&b);
    while (hc->streaming && ws->w.state == WATCH_LIVE &&
           conn_output_pending(hc->c) < HTTPD_STREAM_WANT &&
           watch_next(&ws->w, &rev, &begin, &end)) {
        bool whole = all_match(hub, &ws->w, begin, end);
        int ci = ws->prev_kv ? 1 : 0;
        if (whole && cache[ci].rev == rev && cache[ci].begin == begin) {
            hw.events_sent += end - begin;
            hw.revisions_sent++;
            write_buf(ws, &cache[ci].buf);
            continue;
        }
        pz_buf_reset(&b);
        pz_buf_appendf(&b, "id: %llu\ndata: {\"revision\":%llu,\"events\":[",
                       (unsigned long long)rev, (unsigned long long)rev);
        size_t n = 0;
        for (uint64_t s = begin; s < end; s++) {
            const struct watch_event *e = watch_event_at(hub, s);
            if (!watch_matches(&ws->w, e))
                continue;
            if (n++)
                pz_buf_append(&b, ",", 1);
            put_event(&b, e, ws->prev_kv);
        }
        pz_buf_append(&b, "]}\n\n", 4);
        hw.events_sent += n;
        hw.revisions_sent++;
        write_buf(ws, &b);
        if (whole && b.len <= WATCH_CACHE_MAX) {
            cache[ci].rev = rev;
            cache[ci].begin = begin;
            pz_buf_reset(&cache[ci].buf);
            pz_buf_append(&cache[ci].buf, b.data, b.len);
        }
    }
    pz_buf_free(&b);
}

/* The hub has events for w, or cancelled it. */
static void on_notify(void *arg, struct watcher *w)
{
    PZ_UNUSED(arg);
    struct watch_stream *ws = w->data;
    if (ws == NULL || !ws->streaming || !ws->hc->streaming)
        return;
    if (w->state == WATCH_LIVE) {
        httpd_stream_kick(ws->hc);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    const char *why =
        w->state == WATCH_SLOW
            ? "slow watcher: fell more than watch-max-buffer behind"
            : "compacted: the history no longer holds the next revision";
    pz_buf_appendf(&b,
                   "event: cancelled\ndata: {\"reason\":\"%s\","
                   "\"revision\":%llu,\"compact_revision\":%llu}\n\n",
                   why, (unsigned long long)w->sent_rev,
                   (unsigned long long)watch_hub_first_rev(node_watch()));
    pz_info("watch from %s cancelled: %s", ws->hc->c->peer, why);
    write_buf(ws, &b);
    pz_buf_free(&b);
    ws->streaming = false;
    httpd_stream_end(ws->hc); /* on_done frees ws */
}

void http_watch_cron(void)
{
    if (!hw.inited)
        return;
    uint64_t now = conn_now();
    uint64_t rev = kv_revision(node_kv());
    char line[128];
    for (struct watch_stream *ws = hw.streams; ws; ws = ws->next_s) {
        if (!ws->streaming || ws->w.state != WATCH_LIVE ||
            now - ws->last_write < hw.progress_ms || !watch_caught_up(&ws->w) ||
            conn_output_pending(ws->hc->c) > 0)
            continue;
        int n = snprintf(line, sizeof line,
                         "event: progress\ndata: {\"revision\":%llu}\n\n",
                         (unsigned long long)rev);
        httpd_stream_write(ws->hc, line, (size_t)n);
        ws->last_write = now;
        hw.progress_sent++;
    }
}

void http_watch_drain(void)
{
    for (int i = 0; i < 2; i++) {
        pz_buf_free(&cache[i].buf);
        cache[i].rev = 0;
    }
    struct watch_stream *ws = hw.streams;
    while (ws) {
        struct watch_stream *next = ws->next_s;
        if (ws->streaming && ws->hc->streaming) {
            ws->streaming = false;
            httpd_stream_end(ws->hc); /* frees ws */
        }
        ws = next;
    }
}

/* --- starting ----------------------------------------------------------- */

static void reply_compacted(struct watch_stream *ws, uint64_t first)
{
    char body[200];
    int n = snprintf(body, sizeof body,
                     "{\"error\":\"compacted: revision %llu is older than the "
                     "watch history\",\"compact_revision\":%llu}\n",
                     (unsigned long long)ws->start, (unsigned long long)first);
    struct httpd_reply r = {.status = 410,
                            .ctype = "application/json",
                            .body = body,
                            .blen = (size_t)n};
    httpd_reply(ws->hc, &r);
}

/* The read barrier passed (or was skipped): start at the right revision. */
static void begin(struct watch_stream *ws)
{
    struct watch_hub *hub = node_watch();
    if (ws->hc->srv->draining) {
        httpd_close_after(ws->hc);
        httpd_text(ws->hc, 503, "Server is shutting down", NULL);
        return;
    }
    if (!ws->start_given)
        ws->start = kv_revision(node_kv()) + 1;
    uint64_t first = watch_hub_first_rev(hub);
    if (ws->start < first) {
        reply_compacted(ws, first);
        return;
    }
    int rv =
        watch_add(hub, &ws->w, ws->from, ws->flen, ws->to, ws->tlen, ws->start);
    if (rv == PZ_EBUSY) {
        httpd_text(ws->hc, 503, "Too many watchers (max-watchers)", NULL);
        return;
    }
    pz_assert(rv == 0);
    ws->w.data = ws;
    ws->registered = true;
    ws->streaming = true;
    ws->last_write = conn_now();
    httpd_stream_begin(ws->hc, 200, "text/event-stream", HTTPD_STREAM_OPEN);
    /* Where the stream starts, so that a client that sees no event
     * before a disconnect still knows where to resume. */
    char line[160];
    int n = snprintf(line, sizeof line,
                     "event: created\ndata: {\"revision\":%llu,"
                     "\"start_revision\":%llu}\n\n",
                     (unsigned long long)kv_revision(node_kv()),
                     (unsigned long long)ws->start);
    httpd_stream_write(ws->hc, line, (size_t)n);
    httpd_stream_kick(ws->hc); /* what the history holds already */
}

static void on_read(struct node_req *req, int status)
{
    struct watch_stream *ws = container_of(req, struct watch_stream, req);
    if (status < 0) {
        char line[160];
        snprintf(line, sizeof line,
                 "Cannot start a linearizable watch: %s (serializable=true "
                 "starts without the cluster)",
                 pz_strerror(status));
        if (status == PZ_ESHUTDOWN)
            httpd_close_after(ws->hc);
        httpd_text(ws->hc, 503, line, NULL);
        return;
    }
    begin(ws);
}

/* A decimal revision (what strtoull takes, digits only). */
static bool parse_rev(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno || v >= UINT64_MAX)
        return false;
    *out = v;
    return true;
}

static int parse_bool(const char *url, size_t ul, const char *name, bool *out)
{
    char *v;
    size_t vl;
    int rv = http_query_get(url, ul, name, &v, &vl);
    if (rv <= 0)
        return rv;
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        *out = true;
    else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        *out = false;
    else
        rv = PZ_EINVAL;
    pz_free(v);
    return rv;
}

/* The request's parameters into ws; NULL, or a one-line reason. */
static const char *parse(struct watch_stream *ws, const struct http_req *req,
                         bool *serializable)
{
    const char *u = req->url.data ? req->url.data : "";
    size_t ul = req->url.len;
    char *key = NULL, *pre = NULL, *from = NULL, *to = NULL, *v = NULL;
    size_t klen = 0, plen = 0, flen = 0, tlen = 0, vl;
    const char *why = NULL;
    int hk = http_query_get(u, ul, "key", &key, &klen);
    int hp = http_query_get(u, ul, "prefix", &pre, &plen);
    int hf = http_query_get(u, ul, "from", &from, &flen);
    int ht = http_query_get(u, ul, "to", &to, &tlen);
    if (hk < 0 || hp < 0 || hf < 0 || ht < 0) {
        why = "Bad percent-encoding in query";
        goto out;
    }
    if (hk + hp + hf != 1) {
        why = hk + hp + hf == 0 ? "Missing key, prefix or from parameter"
                                : "Give one of key, prefix or from";
        goto out;
    }
    if (ht && !hf) {
        why = "to goes with from";
        goto out;
    }
    if (klen > hw.max_key || plen > hw.max_key || flen > hw.max_key ||
        tlen > hw.max_key) {
        why = "Key too large";
        goto out;
    }
    if (hk) {
        if (klen == 0) {
            why = "Missing key parameter";
            goto out;
        }
        /* Exactly the key: [K, K + "\0"). */
        ws->from = (uint8_t *)key;
        ws->flen = klen;
        ws->to = pz_malloc(klen + 1);
        memcpy(ws->to, key, klen);
        ws->to[klen] = 0;
        ws->tlen = klen + 1;
        key = NULL;
    } else if (hp) {
        uint8_t *end = pz_malloc(plen + 1);
        long el = kv_prefix_end(pre, plen, end);
        if (el < 0) {
            pz_free(end); /* no end: every key from the prefix on */
        } else {
            ws->to = end;
            ws->tlen = (size_t)el;
        }
        ws->from = (uint8_t *)pre;
        ws->flen = plen;
        pre = NULL;
    } else {
        if (ht) {
            size_t n = flen < tlen ? flen : tlen;
            int c = n ? memcmp(from, to, n) : 0;
            if (c > 0 || (c == 0 && tlen <= flen)) {
                why = "to must be greater than from";
                goto out;
            }
            ws->to = (uint8_t *)to;
            ws->tlen = tlen;
            to = NULL;
        }
        ws->from = (uint8_t *)from;
        ws->flen = flen;
        from = NULL;
    }
    if (http_query_get(u, ul, "start_revision", &v, &vl) == 1) {
        if (!parse_rev(v, vl, &ws->start)) {
            why = "start_revision must be a non-negative integer";
            goto out;
        }
        ws->start_given = ws->start > 0; /* 0: from now on */
    }
    const char *id = http_req_header(req, "last-event-id");
    if (id) {
        uint64_t last;
        if (!parse_rev(id, strlen(id), &last)) {
            why = "Last-Event-ID must be a revision";
            goto out;
        }
        ws->start = last + 1; /* resumes after it, whatever else is asked */
        ws->start_given = true;
    }
    if (parse_bool(u, ul, "prev_kv", &ws->prev_kv) < 0) {
        why = "prev_kv must be true or false";
        goto out;
    }
    if (parse_bool(u, ul, "serializable", serializable) < 0) {
        why = "serializable must be true or false";
        goto out;
    }
out:
    pz_free(key);
    pz_free(pre);
    pz_free(from);
    pz_free(to);
    pz_free(v);
    return why;
}

void http_watch_start(struct httpd_conn *hc, struct watch_stream **out)
{
    struct watch_stream *ws = pz_calloc(1, sizeof *ws);
    ws->hc = hc;
    *out = ws;
    link_stream(ws);
    bool serializable = false;
    const char *why = parse(ws, &hc->p.req, &serializable);
    if (why) {
        httpd_text(hc, 400, why, NULL);
        return;
    }
    if (node_watch()->n_watchers >= hw.max_watchers) {
        httpd_text(hc, 503, "Too many watchers (max-watchers)", NULL);
        return;
    }
    httpd_hold(hc);
    if (serializable) {
        begin(ws);
        return;
    }
    int rv = node_read(&ws->req, false, on_read);
    if (rv < 0)
        on_read(&ws->req, rv);
}

void http_watch_free(struct watch_stream **wsp)
{
    struct watch_stream *ws = *wsp;
    if (ws == NULL)
        return;
    *wsp = NULL;
    node_cancel(&ws->req);
    if (ws->registered)
        watch_remove(&ws->w);
    unlink_stream(ws);
    pz_free(ws->from);
    pz_free(ws->to);
    pz_free(ws);
}

/* --- /metrics ------------------------------------------------------------ */

static void collect(struct pz_buf *b, void *arg)
{
    PZ_UNUSED(arg);
    const struct watch_hub *h = node_watch();
    metrics_render_one(b, "pyazdb_watchers", METRICS_GAUGE,
                       "Watch streams registered on this node.",
                       (double)h->n_watchers);
    metrics_render_one(b, "pyazdb_watch_events_sent_total", METRICS_COUNTER,
                       "Events written to watch streams.",
                       (double)hw.events_sent);
    metrics_render_one(b, "pyazdb_watch_progress_sent_total", METRICS_COUNTER,
                       "Progress events written to idle watch streams.",
                       (double)hw.progress_sent);
    metrics_render_one(b, "pyazdb_watch_cancelled_slow_total", METRICS_COUNTER,
                       "Watchers cancelled for falling more than "
                       "watch-max-buffer behind.",
                       (double)h->cancelled_slow);
    metrics_render_one(b, "pyazdb_watch_cancelled_compacted_total",
                       METRICS_COUNTER,
                       "Watchers cancelled because the history dropped "
                       "events they had not read (or a snapshot was "
                       "installed).",
                       (double)h->cancelled_compacted);
    metrics_render_one(b, "pyazdb_watch_history_events", METRICS_GAUGE,
                       "Events held in the watch history.", (double)h->count);
    metrics_render_one(b, "pyazdb_watch_history_bytes", METRICS_GAUGE,
                       "Bytes the watch history counts.", (double)h->bytes);
    metrics_render_one(b, "pyazdb_watch_compact_revision", METRICS_GAUGE,
                       "Oldest revision a watch may start at.",
                       (double)h->first_rev);
}

void http_watch_init(const struct pz_config *cfg)
{
    hw.progress_ms = (uint64_t)cfg->watch_progress_interval_ms;
    hw.max_key = (size_t)cfg->max_key_size;
    hw.max_watchers = (size_t)cfg->max_watchers;
    watch_hub_set_notify(node_watch(), on_notify, NULL);
    if (!hw.inited)
        stats_add_collector(collect, NULL);
    hw.inited = true;
}
