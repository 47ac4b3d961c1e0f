/* watch.c - the event history and the watcher registry (watch.h). */
#include "watch.h"

#include <string.h>

void watch_hub_init(struct watch_hub *h, const struct watch_limits *lim)
{
    memset(h, 0, sizeof *h);
    h->lim = *lim;
    if (h->lim.max_events < 1)
        h->lim.max_events = 1;
    h->first_rev = 1;
}

void watch_hub_set_notify(struct watch_hub *h, watch_notify_cb cb, void *arg)
{
    h->notify = cb;
    h->notify_arg = arg;
}

void watch_hub_set_limits(struct watch_hub *h, const struct watch_limits *lim)
{
    h->lim = *lim;
    if (h->lim.max_events < 1)
        h->lim.max_events = 1;
}

static struct watch_event **slot(const struct watch_hub *h, uint64_t seq)
{
    return &h->ring[(h->head + (size_t)(seq - h->first_seq)) % h->cap];
}

const struct watch_event *watch_event_at(const struct watch_hub *h,
                                         uint64_t seq)
{
    pz_assert(seq >= h->first_seq && seq < h->first_seq + h->count);
    return *slot(h, seq);
}

static void drop_oldest(struct watch_hub *h)
{
    struct watch_event *e = h->ring[h->head];
    h->bytes -= e->size;
    pz_free(e);
    h->ring[h->head] = NULL;
    h->head = (h->head + 1) % h->cap;
    h->count--;
    h->first_seq++;
}

static void drop_all(struct watch_hub *h)
{
    while (h->count)
        drop_oldest(h);
    h->committed_seq = h->first_seq;
}

void watch_hub_close(struct watch_hub *h)
{
    drop_all(h);
    pz_free(h->ring);
    h->ring = NULL;
    h->cap = 0;
    while (h->watchers) {
        struct watcher *w = h->watchers;
        h->watchers = w->next_w;
        w->hub = NULL;
        w->prev_w = w->next_w = NULL;
    }
    h->n_watchers = 0;
}

/* Make room for one more event in the ring (grows by doubling; events
 * over max_events are dropped at commit, so it stays near the limit). */
static void ring_grow(struct watch_hub *h)
{
    if (h->count < h->cap)
        return;
    size_t ncap = h->cap ? h->cap * 2 : 64;
    struct watch_event **n = pz_calloc(ncap, sizeof *n);
    for (size_t i = 0; i < h->count; i++)
        n[i] = h->ring[(h->head + i) % h->cap];
    pz_free(h->ring);
    h->ring = n;
    h->cap = ncap;
    h->head = 0;
}

void watch_hub_record(struct watch_hub *h, uint64_t rev, int type,
                      const struct kv_view *cur, const struct kv_view *prev)
{
    pz_assert(type == KV_TOP_PUT || type == KV_TOP_DEL);
    const struct kv_view *k = type == KV_TOP_PUT ? cur : prev;
    pz_assert(k != NULL);
    size_t vlen = type == KV_TOP_PUT ? cur->vlen : 0;
    size_t plen = prev ? prev->vlen : 0;
    /* One allocation: the struct, then key, value and previous value,
     * each followed by a NUL. */
    size_t total =
        sizeof(struct watch_event) + k->klen + 1 + vlen + 1 + plen + 1;
    struct watch_event *e = pz_malloc(total);
    memset(e, 0, sizeof *e);
    uint8_t *p = (uint8_t *)(e + 1);
    e->rev = rev;
    e->type = type;
    e->key = p;
    e->klen = k->klen;
    if (k->klen)
        memcpy(p, k->key, k->klen);
    p[k->klen] = 0;
    p += k->klen + 1;
    if (type == KV_TOP_PUT) {
        e->value = p;
        e->vlen = vlen;
        if (vlen)
            memcpy(p, cur->value, vlen);
        p[vlen] = 0;
        e->meta = cur->meta;
    } else {
        e->meta.mod_revision = rev;
    }
    p += vlen + 1;
    if (prev) {
        e->has_prev = true;
        e->prev = p;
        e->plen = plen;
        if (plen && prev->value)
            memcpy(p, prev->value, plen);
        p[plen] = 0;
        e->pmeta = prev->meta;
    }
    e->size = WATCH_EVENT_OVERHEAD + k->klen + vlen + plen;
    e->cum = h->cum;
    h->cum += e->size;
    h->bytes += e->size;
    if (rev > h->last_rev)
        h->last_rev = rev;
    ring_grow(h);
    h->ring[(h->head + h->count) % h->cap] = e;
    h->count++;
}

uint64_t watch_hub_first_rev(const struct watch_hub *h)
{
    return h->first_rev;
}

/* Drop whole revisions, oldest first, while over a limit, but never the
 * newest published one or anything unpublished. */
static void enforce_limits(struct watch_hub *h)
{
    while (h->count > 0 &&
           (h->count > h->lim.max_events || h->bytes > h->lim.max_bytes)) {
        uint64_t rev = h->ring[h->head]->rev;
        if (rev >= h->committed_rev)
            break; /* the newest revision stays */
        while (h->count > 0 && h->ring[h->head]->rev == rev)
            drop_oldest(h);
        h->first_rev = rev + 1;
    }
}

static void unlink_watcher(struct watcher *w)
{
    struct watch_hub *h = w->hub;
    if (h == NULL)
        return;
    if (w->prev_w)
        w->prev_w->next_w = w->next_w;
    else
        h->watchers = w->next_w;
    if (w->next_w)
        w->next_w->prev_w = w->prev_w;
    w->prev_w = w->next_w = NULL;
    w->hub = NULL;
    h->n_watchers--;
}

uint64_t watch_lag(const struct watcher *w)
{
    const struct watch_hub *h = w->hub;
    if (h == NULL || w->seq >= h->committed_seq || w->seq < h->first_seq)
        return 0;
    return h->cum - watch_event_at(h, w->seq)->cum;
}

bool watch_caught_up(const struct watcher *w)
{
    return w->hub == NULL || w->seq >= w->hub->committed_seq;
}

/* Tell w's owner: its own callback, or else the hub's. */
static void tell(struct watch_hub *h, struct watcher *w)
{
    if (w->notify)
        w->notify(w->notify_arg, w);
    else if (h->notify)
        h->notify(h->notify_arg, w);
}

/* Cancel w with a reason and tell its owner (who may free it). */
static void cancel(struct watch_hub *h, struct watcher *w, int why)
{
    unlink_watcher(w);
    w->state = why;
    if (why == WATCH_SLOW)
        h->cancelled_slow++;
    else
        h->cancelled_compacted++;
    tell(h, w);
}

void watch_hub_commit(struct watch_hub *h)
{
    uint64_t end = h->first_seq + h->count;
    if (h->committed_seq == end)
        return; /* nothing new */
    h->committed_seq = end;
    h->committed_rev = h->last_rev;
    /* Watchers still behind the events about to go lose them: drop after
     * telling the others, so that a reader keeping up is never hurt. */
    struct watcher *w = h->watchers;
    while (w) {
        struct watcher *next = w->next_w;
        if (!watch_caught_up(w))
            tell(h, w); /* may read, or remove w */
        w = next;
    }
    enforce_limits(h);
    w = h->watchers;
    while (w) {
        struct watcher *next = w->next_w;
        if (w->seq < h->first_seq)
            cancel(h, w, WATCH_COMPACTED);
        else if (watch_lag(w) > h->lim.max_lag)
            cancel(h, w, WATCH_SLOW);
        w = next;
    }
}

void watch_hub_reset(struct watch_hub *h, uint64_t rev)
{
    drop_all(h);
    h->first_rev = rev + 1;
    h->last_rev = rev;
    h->committed_rev = rev;
    while (h->watchers)
        cancel(h, h->watchers, WATCH_COMPACTED);
}

/* First held event at revision >= rev (binary search: revisions grow
 * along the history), or the end. */
static uint64_t seq_of_rev(const struct watch_hub *h, uint64_t rev)
{
    uint64_t lo = h->first_seq, hi = h->committed_seq;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (watch_event_at(h, mid)->rev < rev)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int watch_add(struct watch_hub *h, struct watcher *w, const void *from,
              size_t flen, const void *to, size_t tlen, uint64_t start)
{
    memset(w, 0, sizeof *w);
    if (start < 1)
        start = 1;
    if (start < h->first_rev)
        return PZ_ENOTFOUND;
    if (h->n_watchers >= h->lim.max_watchers)
        return PZ_EBUSY;
    w->from = pz_memdup(flen ? from : "", flen);
    w->flen = flen;
    if (to) {
        w->to = pz_memdup(tlen ? to : "", tlen);
        w->tlen = tlen;
    } else {
        w->to_end = true;
    }
    w->start = start;
    w->sent_rev = start - 1;
    w->seq = seq_of_rev(h, start);
    w->hub = h;
    w->next_w = h->watchers;
    if (h->watchers)
        h->watchers->prev_w = w;
    h->watchers = w;
    h->n_watchers++;
    return 0;
}

void watch_remove(struct watcher *w)
{
    unlink_watcher(w);
    pz_free(w->from);
    pz_free(w->to);
    w->from = w->to = NULL;
}

static int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return al < bl ? -1 : al > bl;
}

bool watch_matches(const struct watcher *w, const struct watch_event *e)
{
    if (e->rev < w->start)
        return false;
    if (keycmp(e->key, e->klen, w->from, w->flen) < 0)
        return false;
    return w->to_end || keycmp(e->key, e->klen, w->to, w->tlen) < 0;
}

bool watch_next(struct watcher *w, uint64_t *rev, uint64_t *begin,
                uint64_t *end)
{
    struct watch_hub *h = w->hub;
    if (h == NULL)
        return false;
    if (w->seq < h->first_seq)
        return false; /* compacted: the commit cancels it */
    while (w->seq < h->committed_seq) {
        uint64_t b = w->seq;
        uint64_t r = watch_event_at(h, b)->rev;
        uint64_t e = b + 1;
        bool any = watch_matches(w, watch_event_at(h, b));
        while (e < h->committed_seq && watch_event_at(h, e)->rev == r) {
            if (!any && watch_matches(w, watch_event_at(h, e)))
                any = true;
            e++;
        }
        w->seq = e;
        if (any) {
            w->sent_rev = r;
            *rev = r;
            *begin = b;
            *end = e;
            return true;
        }
    }
    return false;
}
