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
    pz_fifo_free(e);
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
    pz_fifo_close(&h->mem);
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
    pz_free(h->tab);
    h->tab = NULL;
    h->tab_cap = 0;
    h->n_hashed = 0;
    h->ranges = NULL;
    h->dirty = NULL;
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
    struct watch_event *e = pz_fifo_alloc(&h->mem, total);
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
 * newest published one (it is within the limits: see drop_too_large) or
 * anything unpublished. */
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

/* The newest revision alone is over a limit: keep none of the history
 * (it must be continuous up to the newest), only a compaction point. */
static void drop_too_large(struct watch_hub *h)
{
    uint64_t n = 0, bytes = 0;
    for (uint64_t s = h->first_seq + h->count; s > h->first_seq; s--) {
        const struct watch_event *e = watch_event_at(h, s - 1);
        if (e->rev != h->committed_rev)
            break;
        n++;
        bytes += e->size;
    }
    if (n <= h->lim.max_events && bytes <= h->lim.max_bytes)
        return;
    while (h->count)
        drop_oldest(h);
    h->first_rev = h->committed_rev + 1;
    h->too_large_rev = h->committed_rev;
}

/* --- the index --------------------------------------------------------- */

#define FNV_BASIS 14695981039346656037ull
#define FNV_PRIME 1099511628211ull

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t x = FNV_BASIS;
    for (size_t i = 0; i < n; i++)
        x = (x ^ p[i]) * FNV_PRIME;
    return x;
}

static struct watcher **bucket(const struct watch_hub *h, uint64_t x)
{
    return &h->tab[x & (h->tab_cap - 1)];
}

static void hash_link(struct watch_hub *h, struct watcher *w)
{
    struct watcher **b = bucket(h, w->khash);
    w->hprev = NULL;
    w->hnext = *b;
    if (*b)
        (*b)->hprev = w;
    *b = w;
}

/* Two watchers a bucket on average at most: doubled past that. */
static void tab_grow(struct watch_hub *h)
{
    if (h->n_hashed < h->tab_cap * 2 && h->tab_cap)
        return;
    size_t ocap = h->tab_cap;
    struct watcher **old = h->tab;
    h->tab_cap = ocap ? ocap * 2 : 64;
    h->tab = pz_calloc(h->tab_cap, sizeof *h->tab);
    for (size_t i = 0; i < ocap; i++) {
        struct watcher *w = old[i];
        while (w) {
            struct watcher *next = w->hnext;
            hash_link(h, w);
            w = next;
        }
    }
    pz_free(old);
}

/* What kind of range w watches: exactly a key, a prefix, or other. */
static int kind_of(const struct watcher *w)
{
    if (w->to_end)
        return WATCH_KIND_RANGE;
    if (w->tlen == w->flen + 1 && w->to[w->flen] == 0 &&
        (w->flen == 0 || memcmp(w->to, w->from, w->flen) == 0))
        return WATCH_KIND_EXACT;
    if (w->flen == 0 || w->tlen > w->flen)
        return WATCH_KIND_RANGE;
    uint8_t *end = pz_malloc(w->flen);
    long el = kv_prefix_end(w->from, w->flen, end);
    bool prefix =
        el >= 0 && (size_t)el == w->tlen && memcmp(end, w->to, w->tlen) == 0;
    pz_free(end);
    return prefix ? WATCH_KIND_PREFIX : WATCH_KIND_RANGE;
}

static void index_add(struct watch_hub *h, struct watcher *w)
{
    w->kind = kind_of(w);
    if (w->kind == WATCH_KIND_RANGE) {
        w->hprev = NULL;
        w->hnext = h->ranges;
        if (h->ranges)
            h->ranges->hprev = w;
        h->ranges = w;
        return;
    }
    w->khash = hash_bytes(w->from, w->flen);
    h->n_hashed++;
    tab_grow(h);
    hash_link(h, w);
}

static void index_remove(struct watch_hub *h, struct watcher *w)
{
    if (w->hprev)
        w->hprev->hnext = w->hnext;
    else if (w->kind == WATCH_KIND_RANGE)
        h->ranges = w->hnext;
    else
        *bucket(h, w->khash) = w->hnext;
    if (w->hnext)
        w->hnext->hprev = w->hprev;
    w->hprev = w->hnext = NULL;
    if (w->kind != WATCH_KIND_RANGE)
        h->n_hashed--;
}

static void set_dirty(struct watch_hub *h, struct watcher *w)
{
    if (w->dirty)
        return;
    w->dirty = true;
    w->dprev = NULL;
    w->dnext = h->dirty;
    if (h->dirty)
        h->dirty->dprev = w;
    h->dirty = w;
}

static void clear_dirty(struct watch_hub *h, struct watcher *w)
{
    if (!w->dirty)
        return;
    if (w->dprev)
        w->dprev->dnext = w->dnext;
    else
        h->dirty = w->dnext;
    if (w->dnext)
        w->dnext->dprev = w->dprev;
    w->dprev = w->dnext = NULL;
    w->dirty = false;
}

/* Event e (at sequence number seq, newly published) concerns w: it has
 * events to read from seq on unless it had some already (its cursor is
 * then before seq). */
static void touch(struct watch_hub *h, struct watcher *w,
                  const struct watch_event *e, uint64_t seq)
{
    if (w->dirty || !watch_matches(w, e))
        return;
    w->seq = seq;
    set_dirty(h, w);
}

/* Mark the watchers that events [from, to) concern. */
static void mark(struct watch_hub *h, uint64_t from, uint64_t to)
{
    for (uint64_t s = from; s < to; s++) {
        const struct watch_event *e = watch_event_at(h, s);
        if (h->tab_cap) {
            /* Every prefix of the key, the key itself last. */
            uint64_t x = FNV_BASIS;
            for (size_t i = 0; i <= e->klen; i++) {
                if (i > 0)
                    x = (x ^ e->key[i - 1]) * FNV_PRIME;
                for (struct watcher *w = *bucket(h, x); w; w = w->hnext)
                    if (w->khash == x && w->flen == i &&
                        (w->kind == WATCH_KIND_PREFIX || i == e->klen))
                        touch(h, w, e, s);
            }
        }
        for (struct watcher *w = h->ranges; w; w = w->hnext)
            touch(h, w, e, s);
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
    index_remove(h, w);
    clear_dirty(h, w);
    w->hub = NULL;
    h->n_watchers--;
}

uint64_t watch_lag(const struct watcher *w)
{
    const struct watch_hub *h = w->hub;
    if (h == NULL || !w->dirty || w->seq >= h->committed_seq ||
        w->seq < h->first_seq)
        return 0;
    return h->cum - watch_event_at(h, w->seq)->cum;
}

bool watch_caught_up(const struct watcher *w)
{
    return w->hub == NULL || !w->dirty || w->seq >= w->hub->committed_seq;
}

bool watch_progress_ok(const struct watcher *w, uint64_t rev)
{
    return rev + 1 >= w->start;
}

/* Tell w's owner: its own callback, else the hub's. */
static void tell(struct watch_hub *h, struct watcher *w)
{
    if (w->notify)
        w->notify(w->data, w);
    else if (h->notify)
        h->notify(h->notify_arg, w);
}

/* Cancel w with a reason and tell its owner (who may free it). */
static void cancel(struct watch_hub *h, struct watcher *w, int why)
{
    unlink_watcher(w);
    w->state = why;
    /* One judged slow (watch_judged_slow) is counted there only. */
    if (!w->slow_counted) {
        if (why != WATCH_SLOW)
            h->cancelled_compacted++;
        else
            h->cancelled_slow++;
    }
    tell(h, w);
}

void watch_cancel(struct watcher *w, int why)
{
    if (w->hub)
        cancel(w->hub, w, why);
}

void watch_judged_slow(struct watcher *w)
{
    if (w->hub && !w->slow_counted) {
        w->slow_counted = true;
        w->hub->cancelled_slow++;
    }
}

void watch_hub_commit(struct watch_hub *h)
{
    uint64_t end = h->first_seq + h->count;
    if (h->committed_seq == end)
        return; /* nothing new */
    uint64_t from = h->committed_seq;
    h->committed_seq = end;
    h->committed_rev = h->last_rev;
    mark(h, from, end);
    drop_too_large(h);
    /* Watchers still behind the events about to go lose them: drop after
     * telling the others, so that a reader keeping up is never hurt. */
    struct watcher *w = h->dirty;
    while (w) {
        struct watcher *next = w->dnext;
        if (w->seq >= h->first_seq)
            tell(h, w); /* may read, or remove w */
        w = next;
    }
    enforce_limits(h);
    w = h->dirty;
    while (w) {
        struct watcher *next = w->dnext;
        if (w->seq < h->first_seq)
            cancel(h, w, WATCH_COMPACTED);
        else if (!w->owner_lag && watch_lag(w) > h->lim.max_lag)
            cancel(h, w, WATCH_SLOW);
        w = next;
    }
}

/* The first revision w still wants: after its start and after the last
 * revision it was given. */
static uint64_t next_wanted(const struct watcher *w)
{
    return PZ_MAX(w->start, w->sent_rev + 1);
}

void watch_hub_reset(struct watch_hub *h, uint64_t rev)
{
    /* Which watchers lose events: decided before the history goes. One
     * whose cursor is still on a published event needs it, even when
     * watch_next counted its revision as sent (an owner delivering a
     * revision piecewise holds the cursor at its first event and keeps
     * the events' sequence numbers): it is cancelled too. The doomed are
     * put on the dirty list (the others are taken off it), so that they
     * are found without a scan per cancellation whatever the owners do. */
    struct watcher *w;
    for (w = h->watchers; w; w = w->next_w) {
        bool held = w->dirty && w->seq < h->committed_seq;
        clear_dirty(h, w);
        if (held || next_wanted(w) <= rev)
            set_dirty(h, w);
    }
    drop_all(h);
    h->first_rev = rev + 1;
    h->last_rev = rev;
    h->committed_rev = rev;
    /* The others wanted nothing up to rev: they go on from the new
     * history's start and see each revision after rev once. */
    for (w = h->watchers; w; w = w->next_w) {
        w->seq = h->committed_seq;
        if (!w->dirty)
            w->start = next_wanted(w);
    }
    while (h->dirty)
        cancel(h, h->dirty, WATCH_COMPACTED);
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
    index_add(h, w);
    if (w->seq < h->committed_seq)
        set_dirty(h, w); /* what the history holds already */
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
    if (!w->dirty) {
        w->seq = h->committed_seq; /* nothing for it before */
        return false;
    }
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
    clear_dirty(h, w);
    return false;
}

void watch_set_cursor(struct watcher *w, uint64_t seq)
{
    struct watch_hub *h = w->hub;
    if (h == NULL)
        return;
    pz_assert(seq >= h->first_seq && seq <= h->committed_seq);
    w->seq = seq;
    if (seq < h->committed_seq)
        set_dirty(h, w);
    else
        clear_dirty(h, w);
}
