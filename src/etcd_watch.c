/* etcd_watch.c - etcdserverpb.Watch/Watch (etcd.h): many watches on one
 * bidirectional stream, served from the node's watch history (watch.h) on
 * any node, leader or not.
 *
 * Happy path: each request message is a create, cancel or progress
 * request. A create decodes etcd's key range (an empty key is "\0"; an
 * empty range_end one key; "\0" every key from key), picks the watch id
 * (the client's, or the lowest free one from 0 up, as etcd), registers a
 * watcher at start_revision (0: the node's revision + 1) and queues the
 * `created` answer. The stream's output is pulled (grpc_stream_pump):
 * whenever the client has taken what was sent, the next queued answer
 * goes, else the next revision with events for one of the stream's
 * watches (round robin), as one WatchResponse whose header carries that
 * revision, after the NOPUT/NODELETE filters, with prev_kv when asked, in
 * pieces of at most grpc-max-message when `fragment` is set. Answers are
 * never built inside the hub's commit, nor for every stream a client
 * opens a window on at once: the hub tells a watch that has events
 * (notify), which kicks its stream, and an idle pass, once a loop turn,
 * fills the kicked streams' queues in turn up to EW_FILL_BYTES each, at
 * most EW_TURN_BYTES in all a turn (plus one revision), so that no number
 * of watches and no size of revision holds the loop for long. A
 * progress report (a progress request's answer, watch_id -1, or a
 * progress_notify watch's every watch-progress-interval while idle)
 * carries the node's revision and goes only once the watches it speaks
 * for are caught up and the revision is at least the one before each
 * one's start: a client resumes from it, and must not resume before the
 * start it asked for (a future one, or one taken from a node ahead).
 *
 * Failure modes: a start older than the history gets `created`, then
 * `canceled` with compact_revision (the oldest revision still held), as
 * etcd answers after a compaction; a negative one is refused
 * (etcd_watch_start). A client that reads too slowly lets
 * its watches fall behind in the shared history; a watch more than
 * watch-max-buffer bytes behind on a stream whose output the client took
 * nothing of for EW_STALL_MS is cancelled (etcd_watch_cron: `canceled`,
 * cancel_reason says why; a watch waiting for the idle pass is not the
 * client's doing), and the history dropping what a watch still needs or a
 * snapshot installed under it that skips a revision it wants cancels it
 * as compacted. Bounds: at most etcd-watch-max-per-stream watches per
 * stream and max-watchers in all
 * (`created` + `canceled` with a reason beyond), at most EW_QUEUE_MAX
 * answers queued (a client that sends requests without reading gets
 * RESOURCE_EXHAUSTED). A bad request message ends the stream with
 * INVALID_ARGUMENT. Loop thread only. */
#include "etcd.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "etcd_map.h"
#include "grpc_pb.h"
#include "log.h"
#include "node.h"
#include "queue.h"
#include "turns.h"
#include "watch.h"

#define EW_QUEUE_MAX 4096 /* answers queued on one stream */
/* The idle pass queues a kicked stream's revisions while it has less
 * than this queued ... */
#define EW_FILL_BYTES (256 * 1024)
/* ... and at most this much in all a loop turn (plus one revision). */
#define EW_TURN_BYTES (1024 * 1024)
/* A revision whose answer (not fragmented) is larger than this is not
 * packed at once but written from the history in pieces as the client
 * reads, EW_PIECE_BYTES at a time ... */
#define EW_WHOLE_MAX (1024 * 1024)
#define EW_PIECE_BYTES (64 * 1024)
/* ... up to the largest message gRPC's length prefix and etcd's clients
 * allow. */
#define EW_MESSAGE_MAX ((size_t)INT32_MAX)
/* A watch behind by more than watch-max-buffer on a stream whose client
 * took none of its output for this long is cancelled. */
#define EW_STALL_MS 2000

/* WatchResponse's events field */
#define EVENTS_FIELD 11

/* One queued answer: a packed WatchResponse, or (ww set, len 0) a
 * revision of ww's to write in pieces when its turn comes. */
struct omsg {
    struct omsg *next;
    struct ew_watch *ww;
    uint64_t rev, begin, end; /* ww's: the revision, its events */
    size_t pieces;            /* ww's: the bytes its events take */
    size_t len;
    uint8_t data[];
};

struct ew_stream;

struct ew_watch {
    struct watcher w;     /* in the node's hub while registered */
    struct ew_stream *es; /* owner */
    int64_t id;           /* watch id */
    struct etcd_watch_opts o;
    bool sent;                    /* something went since the last tick */
    bool in_pieces;  /* a revision of it waits or goes out in pieces: its
                        cursor is held at that revision until it is out */
    bool cancel_after; /* the client cancelled it meanwhile */
    struct ew_watch *prev, *next; /* the stream's watches */
};

struct ew_stream {
    struct gstream *st;
    struct ew_watch *watches; /* newest first */
    size_t n_watches;
    int64_t next_id;          /* next automatic id to try */
    struct omsg *head, *tail; /* queued answers */
    size_t queued;            /* how many */
    size_t queued_bytes;      /* their bytes */
    struct ew_watch *rr;      /* round robin: next watch to look at */
    bool progress_pending;    /* a WatchProgressRequest waits */
    /* The revision going out in pieces (pw set), after its prefix. */
    struct ew_watch *pw;
    uint64_t p_seq, p_end; /* its next event in the history, the end */
    size_t p_left;         /* bytes of the message still to write */
    bool cut;              /* reset in the middle of one: nothing more */
    uint64_t moved;        /* conn_now() its client last made room (pump),
                              or answers began to wait */
    struct turn_item turn; /* in ew.kicks while kicked */
    struct pz_queue q;        /* in ew.streams */
};

static struct {
    uv_loop_t *loop;
    uv_timer_t progress_timer; /* progress_notify */
    struct turns kicks;        /* streams with something new take turns */
    struct pz_queue streams;   /* every Watch stream */
    size_t max_per_stream;     /* etcd-watch-max-per-stream */
    uint64_t progress_ms;      /* watch-progress-interval */
    bool inited, timers_on;
} ew;

static void pump(struct gstream *st);

/* --- answers ------------------------------------------------------------- */

/* Queue m (its bytes, if any, count against the idle pass's turn). */
static void queue_push(struct ew_stream *es, struct omsg *m)
{
    if (es->head == NULL && es->pw == NULL)
        es->moved = conn_now(); /* waits from now */
    turns_spend(&ew.kicks, m->ww ? EW_PIECE_BYTES : m->len);
    if (es->tail)
        es->tail->next = m;
    else
        es->head = m;
    es->tail = m;
    es->queued++;
    es->queued_bytes += m->len;
}

static void enqueue(struct ew_stream *es, const Etcdserverpb__WatchResponse *r)
{
    size_t n = etcdserverpb__watch_response__get_packed_size(r);
    if (!grpc_stream_charge(es->st, n, 0))
        return; /* over max-pending-output: the connection is closing */
    struct omsg *m = pz_malloc(sizeof *m + n + 1);
    m->next = NULL;
    m->ww = NULL;
    m->len = etcdserverpb__watch_response__pack(r, m->data);
    queue_push(es, m);
}

static bool next_events(struct ew_stream *es);
static bool all_caught_up(const struct ew_stream *es);
/* Something new for es: pump it from the loop, not from here. */
static void kick(struct ew_stream *es)
{
    turns_mark(&ew.kicks, &es->turn);
}

/* The idle pass's turn for a kicked stream (at most EW_TURN_BYTES in all
 * a loop turn): queue its next revisions and hand its answers on. */
static void on_turn(struct turn_item *it)
{
    struct ew_stream *es = container_of(it, struct ew_stream, turn);
    if (es->cut) {
        grpc_stream_flush(es->st); /* the reset; may free es */
        return;
    }
    while (es->queued_bytes < EW_FILL_BYTES && turns_left(&ew.kicks) > 0 &&
           next_events(es))
        ;
    /* Stopped by the turn, not by its client: next turn. */
    if (turns_left(&ew.kicks) == 0 && es->queued_bytes < EW_FILL_BYTES &&
        !all_caught_up(es))
        turns_starve(&ew.kicks, &es->turn);
    grpc_stream_pump(es->st, pump); /* resumes output */
    grpc_stream_flush(es->st);      /* may free es */
}

static void base_response(Etcdserverpb__WatchResponse *r,
                          Etcdserverpb__ResponseHeader *h, uint64_t rev,
                          int64_t id)
{
    Etcdserverpb__WatchResponse init = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    *r = init;
    etcd_header(h, rev, NULL);
    r->header = h;
    r->watch_id = id;
}

static void queue_simple(struct ew_stream *es, int64_t id, bool created,
                         bool canceled, int64_t compact, const char *reason)
{
    Etcdserverpb__WatchResponse r;
    Etcdserverpb__ResponseHeader h;
    base_response(&r, &h, kv_revision(node_kv()), id);
    r.created = created;
    r.canceled = canceled;
    r.compact_revision = compact;
    r.cancel_reason = (char *)(reason ? reason : "");
    enqueue(es, &r);
}

/* --- watches ------------------------------------------------------------- */

static void watch_unlink(struct ew_watch *ww)
{
    struct ew_stream *es = ww->es;
    if (es->rr == ww)
        es->rr = ww->next;
    if (ww->prev)
        ww->prev->next = ww->next;
    else
        es->watches = ww->next;
    if (ww->next)
        ww->next->prev = ww->prev;
    es->n_watches--;
}

/* Forget ww's revision waiting to go out in pieces (not begun). */
static void drop_pieces(struct ew_watch *ww)
{
    struct ew_stream *es = ww->es;
    struct omsg **pp = &es->head, *prev = NULL;
    while (*pp && (*pp)->ww != ww) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    struct omsg *m = *pp;
    pz_assert(m != NULL && es->pw != ww);
    *pp = m->next;
    if (es->tail == m)
        es->tail = prev;
    es->queued--;
    pz_free(m);
    ww->in_pieces = false;
}

static void watch_free(struct ew_watch *ww)
{
    struct ew_stream *es = ww->es;
    if (es->pw == ww)
        es->pw = NULL; /* the stream is being cut or freed */
    else if (ww->in_pieces)
        drop_pieces(ww);
    watch_unlink(ww);
    watch_remove(&ww->w);
    pz_free(ww);
}

static struct ew_watch *watch_find(struct ew_stream *es, int64_t id)
{
    for (struct ew_watch *ww = es->watches; ww; ww = ww->next)
        if (ww->id == id)
            return ww;
    return NULL;
}

/* The hub has events for ww, or cancelled it. */
static void on_notify(void *data, struct watcher *w)
{
    struct ew_watch *ww = data;
    struct ew_stream *es = ww->es;
    PZ_UNUSED(w);
    if (ww->w.state != WATCH_LIVE) {
        int64_t compact;
        const char *why = etcd_watch_cancelled(&ww->w, &compact);
        if (es->pw == ww) {
            /* Part of a revision is out: nothing can follow it on the
             * stream. The client sees the call cancelled, as when its
             * connection breaks, and resumes its watches. */
            pz_info("etcd watch %lld cut in the middle of revision: %s",
                    (long long)ww->id, compact ? "compacted" : "slow");
            watch_free(ww);
            es->cut = true;
            grpc_stream_reset(es->st);
            kick(es); /* its turn sends the reset: not from the hub */
            return;
        }
        pz_info("etcd watch %lld cancelled: %s", (long long)ww->id,
                compact ? "compacted" : "slow");
        queue_simple(es, ww->id, false, true, compact, why);
        watch_free(ww);
    }
    kick(es);
}

static void create(struct ew_stream *es, Etcdserverpb__WatchCreateRequest *c)
{
    struct watch_hub *hub = node_watch();
    struct etcd_watch_keys keys;
    size_t max_key = grpc_stream_server(es->st)->max_key;
    if (c->key.len > max_key || c->range_end.len > max_key) {
        queue_simple(es, -1, true, true, 0, ETCD_WATCH_KEY_TOO_LARGE);
        return;
    }
    if (etcd_watch_keys(c->key.data, c->key.len, c->range_end.data,
                        c->range_end.len, &keys) < 0) {
        queue_simple(es, -1, true, true, 0, ETCD_WATCH_EMPTY);
        return;
    }
    int64_t id = c->watch_id;
    uint64_t start;
    int rv = etcd_watch_start(c->start_revision, kv_revision(node_kv()),
                              watch_hub_first_rev(hub), &start);
    const char *refused = NULL;
    if (id != 0 && watch_find(es, id))
        refused = "mvcc: duplicate watch ID provided on the WatchStream";
    else if (rv == PZ_EINVAL)
        refused = ETCD_WATCH_NEGATIVE_START;
    else if (es->n_watches >= ew.max_per_stream)
        refused = "etcdserver: too many watches on this stream "
                  "(etcd-watch-max-per-stream)";
    if (refused) {
        etcd_watch_keys_free(&keys);
        queue_simple(es, -1, true, true, 0, refused);
        return;
    }
    if (id == 0) {
        while (watch_find(es, es->next_id))
            es->next_id++;
        id = es->next_id++;
    }
    struct ew_watch *ww = NULL;
    if (rv == 0) {
        ww = pz_calloc(1, sizeof *ww);
        rv = watch_add(hub, &ww->w, keys.from, keys.flen, keys.to, keys.tlen,
                       start);
    }
    etcd_watch_keys_free(&keys);
    if (rv < 0) {
        pz_free(ww);
        if (rv == PZ_ENOTFOUND) {
            /* etcd: created, then cancelled as compacted. */
            queue_simple(es, id, true, false, 0, NULL);
            queue_simple(es, id, false, true,
                         etcd_rev(watch_hub_first_rev(hub)),
                         ETCD_WATCH_COMPACTED);
        } else {
            queue_simple(es, -1, true, true, 0, ETCD_WATCH_TOO_MANY);
        }
        return;
    }
    ww->w.data = ww;
    ww->w.notify = on_notify;
    ww->w.owner_lag = true; /* judged by etcd_watch_cron */
    ww->es = es;
    ww->id = id;
    etcd_watch_opts_of(c, &ww->o);
    ww->next = es->watches;
    if (es->watches)
        es->watches->prev = ww;
    es->watches = ww;
    es->n_watches++;
    queue_simple(es, id, true, false, 0, NULL);
}

static void cancel_watch(struct ew_stream *es, int64_t id)
{
    struct ew_watch *ww = watch_find(es, id);
    if (ww == NULL || ww->cancel_after)
        return; /* etcd answers nothing for an unknown id */
    if (es->pw == ww) {
        ww->cancel_after = true; /* once its revision is out */
        return;
    }
    watch_free(ww);
    queue_simple(es, id, false, true, 0, NULL);
}

/* --- events -------------------------------------------------------------- */

void etcd_watch_opts_of(const Etcdserverpb__WatchCreateRequest *c,
                        struct etcd_watch_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prev_kv = c->prev_kv;
    o->progress_notify = c->progress_notify;
    o->fragment = c->fragment;
    for (size_t i = 0; i < c->n_filters; i++) {
        if (c->filters[i] ==
            ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT)
            o->noput = true;
        else if (c->filters[i] ==
                 ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE)
            o->nodel = true;
    }
}

const char *etcd_watch_cancelled(const struct watcher *w, int64_t *compact)
{
    if (w->state == WATCH_SLOW) {
        *compact = 0;
        return "etcdserver: watch is too slow: it fell more than "
               "watch-max-buffer behind the newest event";
    }
    *compact = etcd_rev(watch_hub_first_rev(node_watch()));
    return ETCD_WATCH_COMPACTED;
}

static void kv_of(Mvccpb__KeyValue *kv, const uint8_t *key, size_t klen,
                  const uint8_t *value, size_t vlen, const struct kv_meta *m)
{
    Mvccpb__KeyValue init = MVCCPB__KEY_VALUE__INIT;
    *kv = init;
    kv->key.data = (uint8_t *)key;
    kv->key.len = klen;
    kv->value.data = (uint8_t *)value;
    kv->value.len = value ? vlen : 0;
    kv->create_revision = etcd_key_rev(m->create_revision);
    kv->mod_revision = etcd_key_rev(m->mod_revision);
    kv->version = (int64_t)m->version;
    kv->lease = (int64_t)m->lease;
}

bool etcd_watch_event_of(const struct watcher *w,
                         const struct etcd_watch_opts *o,
                         const struct watch_event *we, Mvccpb__Event *ev,
                         Mvccpb__KeyValue kvs[2])
{
    if (!watch_matches(w, we))
        return false;
    bool put = we->type == KV_TOP_PUT;
    if ((put && o->noput) || (!put && o->nodel))
        return false;
    Mvccpb__Event init = MVCCPB__EVENT__INIT;
    *ev = init;
    ev->type =
        put ? MVCCPB__EVENT__EVENT_TYPE__PUT : MVCCPB__EVENT__EVENT_TYPE__DELETE;
    kv_of(&kvs[0], we->key, we->klen, we->value, we->vlen, &we->meta);
    ev->kv = &kvs[0];
    if (o->prev_kv && we->has_prev) {
        kv_of(&kvs[1], we->key, we->klen, we->prev, we->plen, &we->pmeta);
        ev->prev_kv = &kvs[1];
    }
    return true;
}

size_t etcd_watch_events(const struct watcher *w,
                         const struct etcd_watch_opts *o, uint64_t b,
                         uint64_t e, struct etcd_events *out)
{
    const struct watch_hub *hub = node_watch();
    size_t n = 0, cap = (size_t)(e - b);
    out->ev = pz_calloc(cap + 1, sizeof *out->ev);
    out->evp = pz_calloc(cap + 1, sizeof *out->evp);
    out->kvs = pz_calloc(2 * cap + 1, sizeof *out->kvs);
    for (uint64_t s = b; s < e; s++) {
        if (etcd_watch_event_of(w, o, watch_event_at(hub, s), &out->ev[n],
                                &out->kvs[2 * n])) {
            out->evp[n] = &out->ev[n];
            n++;
        }
    }
    out->n = n;
    return n;
}

void etcd_events_free(struct etcd_events *x)
{
    pz_free(x->kvs);
    pz_free(x->evp);
    pz_free(x->ev);
}

/* Queue the answer(s) for ww's events [b, e) of revision rev. Returns the
 * number of events queued (0: all filtered out). */
static size_t queue_events(struct ew_stream *es, struct ew_watch *ww,
                           uint64_t rev, uint64_t b, uint64_t e)
{
    struct etcd_events x;
    size_t n = etcd_watch_events(&ww->w, &ww->o, b, e, &x);
    if (n > 0) {
        size_t *sizes = pz_calloc(n, sizeof *sizes);
        for (size_t i = 0; i < n; i++)
            sizes[i] = mvccpb__event__get_packed_size(x.evp[i]) + 8;
        Etcdserverpb__WatchResponse r;
        Etcdserverpb__ResponseHeader h;
        base_response(&r, &h, rev, ww->id);
        size_t total = 64;
        for (size_t i = 0; i < n && !ww->o.fragment; i++)
            total += sizes[i];
        if (!ww->o.fragment && total > EW_WHOLE_MAX) {
            /* Held in the history until it is out (pump). */
            struct omsg *m = pz_calloc(1, sizeof *m);
            m->ww = ww;
            m->rev = rev;
            m->begin = b;
            m->end = e;
            for (size_t i = 0; i < n; i++)
                m->pieces += grpc_pb_len_head_size(EVENTS_FIELD, sizes[i] - 8) +
                             sizes[i] - 8;
            queue_push(es, m);
            ww->in_pieces = true;
            watch_set_cursor(&ww->w, b);
            ww->sent = true;
            pz_free(sizes);
            etcd_events_free(&x);
            return n;
        }
        size_t limit = grpc_stream_server(es->st)->max_message;
        size_t i = 0;
        while (i < n) {
            /* Whole unless fragmenting; a fragment holds at least one. */
            size_t j = i + 1, bytes = 64 + sizes[i];
            while (j < n && (!ww->o.fragment || bytes + sizes[j] <= limit))
                bytes += sizes[j++];
            r.events = &x.evp[i];
            r.n_events = j - i;
            r.fragment = j < n;
            enqueue(es, &r);
            i = j;
        }
        ww->sent = true;
        pz_free(sizes);
    }
    etcd_events_free(&x);
    return n;
}

/* The next revision with events for one of the stream's watches, round
 * robin: true once something was queued. */
static bool next_events(struct ew_stream *es)
{
    size_t tries = es->n_watches;
    while (tries-- > 0) {
        struct ew_watch *ww = es->rr ? es->rr : es->watches;
        if (ww == NULL)
            return false;
        es->rr = ww->next;
        uint64_t rev, b, e;
        while (ww->w.state == WATCH_LIVE && !ww->in_pieces &&
               watch_next(&ww->w, &rev, &b, &e))
            if (queue_events(es, ww, rev, b, e) > 0)
                return true;
    }
    return false;
}

static bool all_caught_up(const struct ew_stream *es)
{
    for (const struct ew_watch *ww = es->watches; ww; ww = ww->next)
        if (!watch_caught_up(&ww->w))
            return false;
    return true;
}

/* May the stream's progress request be answered now, at the node's
 * revision? Not while one of its watches starts more than one revision
 * after it (a future start_revision, or a node behind the one the start
 * came from): etcd's clients take the answer's revision as every watch's
 * resume point, and that one would get revisions before its start. The
 * answer waits until the node gets there (etcd_watch_cron asks again). */
static bool progress_ok(const struct ew_stream *es)
{
    uint64_t rev = kv_revision(node_kv());
    for (const struct ew_watch *ww = es->watches; ww; ww = ww->next)
        if (!watch_progress_ok(&ww->w, rev))
            return false;
    return true;
}

/* Write the next events of the revision going out in pieces while the
 * stream has less than EW_PIECE_BYTES waiting; once it is all out, the
 * watch goes on from the revision's end. */
static void write_pieces(struct ew_stream *es)
{
    static struct pz_buf scratch;
    struct ew_watch *ww = es->pw;
    const struct watch_hub *hub = node_watch();
    while (es->p_left > 0 &&
           grpc_stream_out_pending(es->st) < EW_PIECE_BYTES) {
        /* The cursor holds these events: a commit that dropped them
         * cancelled ww and cut the stream first. */
        pz_assert(es->p_seq < es->p_end && es->p_seq >= hub->first_seq);
        Mvccpb__Event ev;
        Mvccpb__KeyValue kvs[2];
        if (!etcd_watch_event_of(&ww->w, &ww->o,
                                 watch_event_at(hub, es->p_seq++), &ev, kvs))
            continue;
        size_t n = mvccpb__event__get_packed_size(&ev);
        pz_buf_reset(&scratch);
        grpc_pb_put_len_head(&scratch, EVENTS_FIELD, n);
        pz_buf_reserve(&scratch, n);
        size_t got =
            mvccpb__event__pack(&ev, (uint8_t *)scratch.data + scratch.len);
        scratch.len += got;
        pz_assert(got == n && scratch.len <= es->p_left);
        grpc_stream_send_more(es->st, scratch.data, scratch.len);
        es->p_left -= scratch.len;
    }
    if (scratch.cap > EW_PIECE_BYTES)
        pz_buf_free(&scratch);
    if (es->p_left > 0)
        return;
    es->pw = NULL;
    ww->in_pieces = false;
    watch_set_cursor(&ww->w, es->p_end);
    if (ww->cancel_after) {
        int64_t id = ww->id;
        watch_free(ww);
        queue_simple(es, id, false, true, 0, NULL);
    }
    kick(es); /* what follows */
}

/* The revision m names goes out now: its length and prefix, then its
 * events in pieces (write_pieces). */
static void begin_pieces(struct ew_stream *es, struct omsg *m)
{
    struct ew_watch *ww = m->ww;
    Etcdserverpb__WatchResponse r;
    Etcdserverpb__ResponseHeader h;
    base_response(&r, &h, m->rev, ww->id);
    size_t plen = etcdserverpb__watch_response__get_packed_size(&r);
    size_t events = m->pieces; /* the history's events do not change */
    if (plen + events > EW_MESSAGE_MAX) {
        ww->in_pieces = false;
        watch_set_cursor(&ww->w, m->end);
        int64_t id = ww->id;
        char why[160];
        snprintf(why, sizeof why,
                 "etcdserver: revision %lld is too large for one message: "
                 "watch with fragment",
                 (long long)etcd_rev(m->rev));
        watch_free(ww);
        queue_simple(es, id, false, true, 0, why);
        return;
    }
    uint8_t *prefix = pz_malloc(plen + 1);
    etcdserverpb__watch_response__pack(&r, prefix);
    grpc_stream_send_begin(es->st, plen + events);
    grpc_stream_send_more(es->st, prefix, plen);
    pz_free(prefix);
    es->pw = ww;
    es->p_seq = m->begin;
    es->p_end = m->end;
    es->p_left = events;
    write_pieces(es);
}

/* The output drained: the next answer, if any (grpc_stream_pump). */
static void pump(struct gstream *st)
{
    struct ew_stream *es = grpc_stream_ext(st);
    es->moved = conn_now(); /* nghttp2 asks: the client made room */
    if (es->cut)
        return;
    if (es->pw) {
        write_pieces(es);
        return;
    }
    if (es->head == NULL && !all_caught_up(es)) {
        kick(es); /* the idle pass queues its next revisions */
        return;
    }
    if (es->head == NULL && es->progress_pending && progress_ok(es)) {
        /* Every event up to the revision went: etcd's answer to a
         * progress request names no watch. */
        es->progress_pending = false;
        queue_simple(es, -1, false, false, 0, NULL);
    }
    struct omsg *m = es->head;
    if (m == NULL)
        return;
    es->head = m->next;
    if (es->head == NULL)
        es->tail = NULL;
    es->queued--;
    if (m->ww) {
        begin_pieces(es, m);
        pz_free(m);
        return;
    }
    es->queued_bytes -= m->len;
    grpc_stream_charge(st, 0, m->len);
    grpc_stream_send(st, m->data, m->len);
    pz_free(m);
}

/* progress_notify: an empty answer, at the node's revision, for each
 * watch that asked for them and had nothing to send since the last tick,
 * caught up, and whose start is at most one past the revision (else the
 * answer would name a revision before the start: progress_ok). */
static void on_progress_timer(uv_timer_t *t)
{
    PZ_UNUSED(t);
    uint64_t rev = kv_revision(node_kv());
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &ew.streams)
    {
        struct ew_stream *es = container_of(e, struct ew_stream, q);
        bool any = false;
        for (struct ew_watch *ww = es->watches; ww; ww = ww->next) {
            if (ww->o.progress_notify && !ww->sent && es->head == NULL &&
                watch_caught_up(&ww->w) && watch_progress_ok(&ww->w, rev)) {
                queue_simple(es, ww->id, false, false, 0, NULL);
                any = true;
            }
            ww->sent = false;
        }
        if (any)
            kick(es);
    }
}

void etcd_watch_cron(void)
{
    if (!ew.inited)
        return;
    uint64_t max_lag = node_watch()->lim.max_lag;
    struct pz_queue *e;
    PZ_QUEUE_FOREACH(e, &ew.streams)
    {
        struct ew_stream *es = container_of(e, struct ew_stream, q);
        /* A progress request held back (progress_ok): the node may have
         * got to the revision meanwhile, with no event for the stream. */
        if (es->progress_pending && es->head == NULL && !es->cut)
            kick(es);
        /* Answers wait and the client took none of them for EW_STALL_MS;
         * waiting for the idle pass's turn is not the client's doing. */
        bool waiting =
            es->head || es->pw || grpc_stream_out_pending(es->st) > 0;
        uint64_t moved = PZ_MAX(es->moved, grpc_stream_output_moved(es->st));
        if (es->cut || es->turn.starved || !waiting ||
            conn_now() - moved < EW_STALL_MS)
            continue;
        struct ew_watch *next;
        for (struct ew_watch *ww = es->watches; ww && !es->cut; ww = next) {
            next = ww->next;
            if (ww->w.state == WATCH_LIVE && watch_lag(&ww->w) > max_lag)
                watch_cancel(&ww->w, WATCH_SLOW); /* on_notify frees ww */
        }
    }
}

/* --- the stream ---------------------------------------------------------- */

static void stream_free(void *p)
{
    struct ew_stream *es = p;
    while (es->watches)
        watch_free(es->watches);
    while (es->head) {
        struct omsg *m = es->head;
        es->head = m->next;
        pz_free(m);
    }
    turns_forget(&es->turn);
    pz_queue_remove(&es->q);
    if (pz_queue_empty(&ew.streams) && ew.timers_on) {
        uv_timer_stop(&ew.progress_timer);
        ew.timers_on = false;
    }
    pz_free(es);
}

void etcd_watch_message(struct gstream *st)
{
    struct ew_stream *es = grpc_stream_ext(st);
    if (!ew.inited) {
        grpc_stream_fail(st, GRPC_UNAVAILABLE,
                         "etcdserver: watch is not served here");
        return;
    }
    if (es == NULL) {
        es = pz_calloc(1, sizeof *es);
        es->st = st;
        turn_item_init(&es->turn);
        pz_queue_push(&ew.streams, &es->q);
        grpc_stream_set_ext(st, es, stream_free);
        grpc_stream_pump(st, pump); /* response headers go now */
        if (!ew.timers_on && ew.inited) {
            ew.timers_on = true;
            uv_timer_start(&ew.progress_timer, on_progress_timer,
                           ew.progress_ms, ew.progress_ms);
        }
    }
    size_t len;
    const uint8_t *msg = grpc_stream_msg(st, &len);
    Etcdserverpb__WatchRequest *q =
        etcdserverpb__watch_request__unpack(&grpc_pb_allocator, len, msg);
    if (q == NULL) {
        grpc_stream_fail(st, GRPC_INVALID_ARGUMENT,
                         "request is not a valid etcdserverpb.WatchRequest");
        return;
    }
    if (es->queued >= EW_QUEUE_MAX) {
        grpc_stream_fail(st, GRPC_RESOURCE_EXHAUSTED,
                         "etcdserver: too many watch answers waiting for the "
                         "client to read them");
    } else {
        switch (q->request_union_case) {
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
            create(es, q->create_request);
            break;
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
            cancel_watch(es, q->cancel_request->watch_id);
            break;
        case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
            es->progress_pending = true;
            break;
        default:
            break; /* etcd ignores an empty request */
        }
        kick(es);
    }
    etcdserverpb__watch_request__free_unpacked(q, &grpc_pb_allocator);
}

void etcd_watch_end(struct gstream *st)
{
    /* etcd keeps a Watch stream open after the client's side ends: its
     * watches go on until the client cancels the call. */
    PZ_UNUSED(st);
}

void etcd_watch_setup(uv_loop_t *loop, size_t max_per_stream,
                      uint64_t progress_ms)
{
    if (!ew.inited) {
        ew.loop = loop;
        turns_init(&ew.kicks, loop, EW_TURN_BYTES, on_turn);
        uv_timer_init(loop, &ew.progress_timer);
        pz_queue_init(&ew.streams);
        ew.inited = true;
    }
    ew.max_per_stream = max_per_stream;
    ew.progress_ms = progress_ms ? progress_ms : 10000;
}

void etcd_watch_close(void)
{
    if (!ew.inited)
        return;
    ew.inited = false;
    ew.timers_on = false;
    turns_close(&ew.kicks);
    uv_close((uv_handle_t *)&ew.progress_timer, NULL);
}
