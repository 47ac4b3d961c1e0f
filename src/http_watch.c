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
 * revision -> whenever the node publishes a revision, the watcher's
 * stream is marked (never written from inside the commit) and an idle
 * pass (turns.h) writes the marked streams in turn, at most HW_TURN_BYTES
 * a loop turn, one SSE event per revision with matching events:
 *
 *   id: 12
 *   data: {"revision":12,"events":[{"type":"put","kv":{...}},...]}
 *
 * each "kv" (and "prev_kv" with prev_kv=true) written as /range writes
 * keys, so an event id is a revision and Last-Event-ID resumes after it.
 * An idle stream (nothing sent for watch-progress-interval, all caught
 * up) gets `event: progress` with the node's revision, once that is at
 * least the one before the watch's start (watch_progress_ok: a client
 * resuming from it must not get revisions before the start it asked
 * for).
 *
 * A revision is written in pieces as the client reads (any size the
 * history holds; a client draining its connection marks its stream for
 * the pass too), each stream having at most its share of
 * watch-output-budget waiting in its connection: output memory is bounded
 * whatever the number of streams or the size of a revision, and so is a
 * loop turn's work.
 *
 * Failure modes: a client that reads too slowly only stops on_stream
 * (httpd asks for more as its output drains); the watcher's cursor then
 * lags in the shared history, and once it is watch-max-buffer bytes
 * behind while its client took none of its output for WATCH_STALL_MS
 * (judged by the cron, so that a reader that keeps up with a burst is
 * not), the stream is cancelled as slow; once the history dropped what
 * it still needs, the hub cancels it as compacted (a revision too large
 * for the history alone says so): `event: cancelled` with the reason,
 * and the stream ends (its unread output is dropped after
 * client-body-timeout). One
 * cancelled in the middle of a revision whose events are gone is closed
 * without the event. A snapshot installed under the stream cancels it the
 * same way (compacted) if it still wanted a revision up to the
 * snapshot's; one that wants only later ones goes on. At shutdown every
 * stream ends (clients resume elsewhere). */
#include "http_watch.h"

#include <stdio.h>
#include <string.h>

#include "conn.h"
#include "etcd_gateway.h"
#include "http.h"
#include "http_parse.h"
#include "log.h"
#include "metrics.h"
#include "node.h"
#include "stats.h"
#include "turns.h"
#include "watch.h"

struct watch_stream {
    struct httpd_conn *hc; /* its connection */
    struct node_req req;   /* the linearizable start */
    struct watcher w;      /* registered once the stream begins */
    bool registered;       /* w is (or was) registered; counted in
                              hw.n_streaming from then on */
    bool streaming;        /* the reply began */
    bool prev_kv;          /* send previous states */
    bool start_given;      /* start_revision or Last-Event-ID */
    uint64_t start;        /* ... its value */
    uint8_t *from, *to;    /* range (owned; to NULL: no end) */
    size_t flen, tlen;     /* their lengths */
    uint64_t last_write;   /* conn_now() of the last event written */
    bool ending;           /* judged slow: cancel once in_rev is out */
    bool wait_drain;       /* the next revision waits for the client to
                              read what waits: commits do not mark it */
    struct turn_item turn; /* in hw.turns while it has output to write */
    /* The revision being written (in_rev), piece by piece. */
    bool in_rev;
    uint64_t rev, seq, end; /* it, the next event, its end */
    size_t n_out;           /* events of it written */
    int part;               /* where in event seq (P_*) */
    bool fstarted;          /* within a bytes field */
    bool b64;               /* ... written as base64 */
    size_t off;             /* ... bytes of it written */
    struct watch_stream *prev_s, *next_s; /* all streams */
};

static struct {
    struct watch_stream *streams; /* every stream, started or not */
    uint64_t progress_ms;         /* watch-progress-interval */
    size_t max_key;               /* max-key-size */
    size_t max_watchers;          /* max-watchers */
    size_t budget;                /* watch-output-budget */
    size_t n_streaming;           /* streams begun and not freed */
    struct turns turns;           /* streams with output take turns */
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

/* --- events -----------------------------------------------------------
 *
 * A revision goes out as one SSE event written in pieces as the client
 * reads: never more than the stream's share of the output budget waits in
 * its connection, however large the revision (up to the history's limits)
 * or however many streams want it. Each stream encodes from the history
 * itself (no copy of the revision per stream), keeping its cursor at the
 * revision's first event until the revision is out. */

/* Where a stream is within the revision it is writing. */
enum {
    P_OPEN,  /* {"type":...,"kv":{ */
    P_KEY,   /* "key":... */
    P_VAL,   /* ,"value":... (a put) */
    P_META,  /* ,"create_revision":...} */
    P_PREV,  /* ,"prev_kv": and null or { */
    P_PKEY,  /* previous: "key":... */
    P_PVAL,  /* ,"value":... */
    P_PMETA, /* ,"create_revision":...} */
    P_CLOSE, /* } */
};

#define WATCH_SHARE_MIN (4 * 1024) /* output a stream may always have */
/* Output the idle pass writes for all streams in one loop turn (plus a
 * piece of an event, or one revision from the cache). */
#define HW_TURN_BYTES (1024 * 1024)
/* A lagging stream whose client took nothing this long is slow. */
#define WATCH_STALL_MS 2000

static void write_buf(struct watch_stream *ws, struct pz_buf *b)
{
    httpd_stream_write(ws->hc, b->data, b->len);
    ws->last_write = conn_now();
}

/* Bytes [*off, n) of p into b as the inside of a JSON string, stopping
 * once b holds limit bytes; true when all are in. */
static bool put_str_part(struct pz_buf *b, const uint8_t *p, size_t n,
                         size_t *off, size_t limit)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = *off, run = i;
    while (i < n && b->len + (i - run) < limit) {
        uint8_t c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        pz_buf_append(b, p + run, i - run);
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            pz_buf_append(b, e, 2);
        } else {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            pz_buf_append(b, e, 6);
        }
        run = ++i;
    }
    pz_buf_append(b, p + run, i - run);
    *off = i;
    return i == n;
}

/* One bytes field ("name":"..." or "name_b64":"..."), from where the
 * stream left it; true when it is all in b. */
static bool put_field_part(struct watch_stream *ws, struct pz_buf *b,
                           const char *name, const uint8_t *p, size_t n,
                           size_t limit)
{
    if (!ws->fstarted) {
        ws->fstarted = true;
        ws->off = 0;
        ws->b64 = !pz_utf8_valid(p, n);
        pz_buf_appendf(b, "\"%s%s\":\"", name, ws->b64 ? "_b64" : "");
    }
    bool done;
    if (ws->b64) {
        size_t room = limit > b->len ? limit - b->len : 0;
        size_t take = PZ_MAX(room / 4 * 3, (size_t)3);
        take = PZ_MIN(take, n - ws->off);
        http_b64_encode(b, p + ws->off, take);
        ws->off += take;
        done = ws->off == n;
    } else {
        done = put_str_part(b, p, n, &ws->off, limit);
    }
    if (done) {
        pz_buf_append(b, "\"", 1);
        ws->fstarted = false;
    }
    return done;
}

static void put_meta(struct pz_buf *b, const struct kv_meta *m)
{
    pz_buf_appendf(b,
                   ",\"create_revision\":%llu,\"mod_revision\":%llu,"
                   "\"version\":%llu,\"lease\":%llu}",
                   (unsigned long long)m->create_revision,
                   (unsigned long long)m->mod_revision,
                   (unsigned long long)m->version,
                   (unsigned long long)m->lease);
}

/* Go on with event e until b holds limit bytes; true when e is all in
 * (the encoding is http_put_kv's, piece by piece). */
static bool put_event_part(struct watch_stream *ws, struct pz_buf *b,
                           const struct watch_event *e, size_t limit)
{
    bool prev = ws->prev_kv && e->has_prev;
    while (b->len < limit) {
        switch (ws->part) {
        case P_OPEN:
            pz_buf_appendf(b, "%s{\"type\":\"%s\",\"kv\":{",
                           ws->n_out ? "," : "",
                           e->type == KV_TOP_PUT ? "put" : "delete");
            ws->part = P_KEY;
            break;
        case P_KEY:
        case P_PKEY:
            if (put_field_part(ws, b, "key", e->key, e->klen, limit))
                ws->part++;
            break;
        case P_VAL:
        case P_PVAL: {
            bool p = ws->part == P_PVAL;
            if (!p && e->value == NULL) {
                ws->part++;
                break;
            }
            if (!ws->fstarted)
                pz_buf_append(b, ",", 1);
            if (put_field_part(ws, b, "value", p ? e->prev : e->value,
                               p ? e->plen : e->vlen, limit))
                ws->part++;
            break;
        }
        case P_META:
            put_meta(b, &e->meta);
            ws->part = ws->prev_kv ? P_PREV : P_CLOSE;
            break;
        case P_PREV:
            pz_buf_append(b, ",\"prev_kv\":", 11);
            pz_buf_append(b, prev ? "{" : "null", prev ? 1 : 4);
            ws->part = prev ? P_PKEY : P_CLOSE;
            break;
        case P_PMETA:
            put_meta(b, &e->pmeta);
            ws->part = P_CLOSE;
            break;
        default:
            pz_buf_append(b, "}", 1);
            ws->part = P_OPEN;
            return true;
        }
    }
    return false;
}

size_t http_watch_rev_estimate(const struct watcher *w, bool prev_kv,
                               uint64_t begin, uint64_t end, bool *whole)
{
    const struct watch_hub *hub = node_watch();
    size_t n = 0;
    *whole = true;
    for (uint64_t s = begin; s < end; s++) {
        const struct watch_event *e = watch_event_at(hub, s);
        if (!watch_matches(w, e)) {
            *whole = false;
            continue;
        }
        size_t raw = e->klen + e->vlen;
        if (prev_kv && e->has_prev)
            raw += e->klen + e->plen;
        n += raw + raw / 3 + 300;
    }
    return n;
}

/* The last revision encoded whole in one piece (every event matched),
 * by prev_kv: the many watchers of one prefix send the same bytes,
 * encoded once. (rev, begin) name it for good: sequence numbers are never
 * reused. */
#define WATCH_CACHE_MAX (1u << 20) /* largest revision kept encoded */
static struct {
    uint64_t rev;      /* 0: none */
    uint64_t begin;    /* its first event's sequence number */
    struct pz_buf buf; /* the SSE event */
} cache[2];

/* Output a stream may have waiting: its share of watch-output-budget
 * among the streams, at least WATCH_SHARE_MIN, at most what httpd asks
 * for. */
static size_t share(void)
{
    size_t n = PZ_MAX(hw.n_streaming, (size_t)1);
    size_t s = hw.budget / n;
    return PZ_MIN(PZ_MAX(s, (size_t)WATCH_SHARE_MIN),
                  (size_t)HTTPD_STREAM_WANT);
}

void http_watch_on_stream(struct watch_stream *ws)
{
    struct httpd_conn *hc = ws->hc;
    struct watch_hub *hub = node_watch();
    if (!turns_in_pass(&hw.turns)) {
        /* The client drained: written in the idle pass. */
        ws->wait_drain = false;
        turns_mark(&hw.turns, &ws->turn);
        return;
    }
    size_t limit = share();
    size_t pending = conn_output_pending(hc->c);
    if (!hc->streaming || ws->w.state != WATCH_LIVE)
        return;
    if (pending >= limit) {
        /* Its client must read first: commits do not mark it meanwhile,
         * so that it is judged by what its client does. */
        ws->wait_drain = true;
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    /* What the stream may still have waiting (space), and of it what
     * the pass may still write (room; an event's piece, or a revision
     * from the cache, may go past it). */
    size_t space = limit - pending;
    size_t room = PZ_MIN(space, turns_left(&hw.turns));
    size_t rev_off = SIZE_MAX; /* where a revision begun here starts in b */
    bool whole = false;        /* ... every event of it matches */
    uint64_t rev_begin = 0;    /* ... its first event */
    int ci = ws->prev_kv ? 1 : 0;
    while (b.len < room) {
        if (!ws->in_rev && ws->ending) {
            turns_spend(&hw.turns, b.len);
            if (b.len)
                write_buf(ws, &b);
            pz_buf_free(&b);
            watch_cancel(&ws->w, WATCH_SLOW); /* frees ws */
            return;
        }
        if (!ws->in_rev) {
            uint64_t rev, begin, end, sent = ws->w.sent_rev;
            if (!watch_next(&ws->w, &rev, &begin, &end))
                break;
            /* Counted as unread until it is all out. */
            watch_set_cursor(&ws->w, begin);
            size_t est =
                64 + http_watch_rev_estimate(&ws->w, ws->prev_kv, begin, end,
                                             &whole);
            if (whole && cache[ci].rev == rev && cache[ci].begin == begin &&
                cache[ci].buf.len <= space - b.len) {
                pz_buf_append(&b, cache[ci].buf.data, cache[ci].buf.len);
                hw.events_sent += end - begin;
                hw.revisions_sent++;
                watch_set_cursor(&ws->w, end);
                continue;
            }
            if ((pending || b.len) && est > space - b.len) {
                /* Whole once the client has read what waits, so that a
                 * stream is mostly between revisions (where it can be
                 * cancelled with a reason); in pieces only when it is
                 * larger than all it may have waiting. Not looked at
                 * again before then: its held cursor keeps it dirty, and
                 * every commit would scan the revision again. */
                ws->w.sent_rev = sent;
                ws->wait_drain = true;
                break;
            }
            ws->in_rev = true;
            ws->rev = rev;
            ws->seq = begin;
            ws->end = end;
            ws->n_out = 0;
            ws->part = P_OPEN;
            ws->fstarted = false;
            rev_off = b.len;
            rev_begin = begin;
            pz_buf_appendf(&b,
                           "id: %llu\ndata: {\"revision\":%llu,\"events\":[",
                           (unsigned long long)rev, (unsigned long long)rev);
        }
        while (ws->seq < ws->end && b.len < room) {
            const struct watch_event *e = watch_event_at(hub, ws->seq);
            if (ws->part == P_OPEN && !watch_matches(&ws->w, e)) {
                ws->seq++;
                continue;
            }
            if (put_event_part(ws, &b, e, room)) {
                ws->n_out++;
                ws->seq++;
            }
        }
        if (ws->seq < ws->end)
            break;
        pz_buf_append(&b, "]}\n\n", 4);
        hw.events_sent += ws->n_out;
        hw.revisions_sent++;
        ws->in_rev = false;
        watch_set_cursor(&ws->w, ws->end);
        if (rev_off != SIZE_MAX && whole &&
            b.len - rev_off <= WATCH_CACHE_MAX) {
            cache[ci].rev = ws->rev;
            cache[ci].begin = rev_begin;
            pz_buf_reset(&cache[ci].buf);
            pz_buf_append(&cache[ci].buf, b.data + rev_off, b.len - rev_off);
        }
        rev_off = SIZE_MAX;
    }
    size_t turn = turns_left(&hw.turns);
    turns_spend(&hw.turns, b.len);
    if (b.len)
        write_buf(ws, &b);
    pz_buf_free(&b);
    /* Stopped by the pass's budget, not by its client: next turn. */
    if (b.len >= turn && b.len < space && !ws->wait_drain &&
        ws->w.state == WATCH_LIVE && (ws->in_rev || !watch_caught_up(&ws->w)))
        turns_starve(&hw.turns, &ws->turn);
}

/* The idle pass's turn for a stream with output: write, as httpd pumps. */
static void on_turn(struct turn_item *it)
{
    struct watch_stream *ws = container_of(it, struct watch_stream, turn);
    httpd_stream_kick(ws->hc);
}

/* The hub has events for w, or cancelled it. */
static void on_notify(void *arg, struct watcher *w)
{
    PZ_UNUSED(arg);
    struct watch_stream *ws = w->data;
    if (ws == NULL || !ws->streaming || !ws->hc->streaming)
        return;
    if (w->state == WATCH_LIVE) {
        /* Written in the idle pass, never from inside the commit; else
         * as its client reads. */
        if (!ws->ending && !ws->wait_drain)
            turns_mark(&hw.turns, &ws->turn);
        return;
    }
    const struct watch_hub *hub = node_watch();
    const char *why =
        w->state == WATCH_SLOW
            ? "slow watcher: fell more than watch-max-buffer behind"
            : "compacted: the history no longer holds the next revision";
    char tl[200];
    if (w->state == WATCH_COMPACTED && hub->too_large_rev > w->sent_rev &&
        hub->first_rev == hub->too_large_rev + 1) {
        snprintf(tl, sizeof tl,
                 "revision too large: revision %llu alone exceeds "
                 "watch-history-bytes or watch-history-events",
                 (unsigned long long)hub->too_large_rev);
        why = tl;
    }
    pz_info("watch from %s cancelled: %s", ws->hc->c->peer, why);
    ws->streaming = false;
    if (ws->in_rev) {
        /* Part of a revision is out: no event can follow it cleanly.
         * The client sees the stream end and resumes after the last
         * revision it got whole. */
        httpd_stream_abort(ws->hc);
        return;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b,
                   "event: cancelled\ndata: {\"reason\":\"%s\","
                   "\"revision\":%llu,\"compact_revision\":%llu}\n\n",
                   why, (unsigned long long)w->sent_rev,
                   (unsigned long long)watch_hub_first_rev(hub));
    write_buf(ws, &b);
    pz_buf_free(&b);
    httpd_stream_end(ws->hc); /* on_done frees ws */
}

void http_watch_cron(void)
{
    if (!hw.inited)
        return;
    uint64_t now = conn_now();
    uint64_t rev = kv_revision(node_kv());
    uint64_t max_lag = node_watch()->lim.max_lag;
    char line[128];
    struct watch_stream *next;
    for (struct watch_stream *ws = hw.streams; ws; ws = next) {
        next = ws->next_s;
        /* Slow: far behind, and its client took none of what waits for
         * it meanwhile (a burst that a reader keeps up with is written
         * as it reads). Judged by the client's connection, not by when
         * the stream last wrote: one waiting for the idle pass's turn
         * has written nothing either, with nothing waiting. */
        if (ws->streaming && ws->w.state == WATCH_LIVE && !ws->ending &&
            watch_lag(&ws->w) > max_lag &&
            conn_output_stalled(ws->hc->c) > WATCH_STALL_MS) {
            if (ws->in_rev) {
                /* The revision begun goes out first, as it is read
                 * (client-body-timeout closes a client that does not);
                 * it counts as cancelled from now. */
                ws->ending = true;
                watch_judged_slow(&ws->w);
                continue;
            }
            watch_cancel(&ws->w, WATCH_SLOW); /* frees ws */
            continue;
        }
        if (!ws->streaming || ws->w.state != WATCH_LIVE ||
            now - ws->last_write < hw.progress_ms || !watch_caught_up(&ws->w) ||
            !watch_progress_ok(&ws->w, rev) ||
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
    if (!http_watch_room(ws->hc)) {
        httpd_text(ws->hc, 503, HTTP_WATCH_NO_ROOM, NULL);
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
    ws->w.owner_lag = true; /* judged by http_watch_cron */
    ws->registered = true;
    ws->streaming = true;
    hw.n_streaming++;
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
    turns_mark(&hw.turns, &ws->turn); /* what the history holds already */
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

#define REV_MAX_TEXT "4611686018427387903"
_Static_assert(KV_REVISION_MAX == UINT64_C(4611686018427387903),
               "REV_MAX_TEXT is KV_REVISION_MAX");

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
        if (!http_parse_revision(v, vl, &ws->start)) {
            why = "start_revision must be a revision from 0 to " REV_MAX_TEXT;
            goto out;
        }
        ws->start_given = ws->start > 0; /* 0: from now on */
    }
    const char *id = http_req_header(req, "last-event-id");
    if (id) {
        uint64_t last;
        if (!http_parse_revision(id, strlen(id), &last)) {
            why = "Last-Event-ID must be a revision from 0 to " REV_MAX_TEXT;
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
    turn_item_init(&ws->turn);
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
    if (!http_watch_room(hc)) {
        httpd_text(hc, 503, HTTP_WATCH_NO_ROOM, NULL);
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
    if (ws->registered) /* counted in hw.n_streaming since then */
        hw.n_streaming--;
    if (ws->registered)
        watch_remove(&ws->w);
    turns_forget(&ws->turn);
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

bool http_watch_room(const struct httpd_conn *hc)
{
    size_t cap = PZ_MAX(hc->srv->ls.max_conns / 2, (size_t)1);
    return hw.n_streaming + etcd_gw_streams() < cap;
}

void http_watch_init(const struct pz_config *cfg)
{
    hw.progress_ms = (uint64_t)cfg->watch_progress_interval_ms;
    hw.max_key = (size_t)cfg->max_key_size;
    hw.max_watchers = (size_t)cfg->max_watchers;
    hw.budget = (size_t)cfg->watch_output_budget;
    watch_hub_set_notify(node_watch(), on_notify, NULL);
    turns_init(&hw.turns, conn_loop(), HW_TURN_BYTES, on_turn);
    if (!hw.inited)
        stats_add_collector(collect, NULL);
    hw.inited = true;
}

void http_watch_close(void)
{
    turns_close(&hw.turns);
}
