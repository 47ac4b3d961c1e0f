/* watch.h - the event history and the watcher registry behind GET /watch.
 * Pure: no I/O, no clocks; single-threaded like the rest of the process.
 *
 * History. Every change the state machine makes (kv.h's event callback)
 * is recorded with the revision it happened at: type (put or delete), key,
 * the key's new value and metadata (put), and its previous value and
 * metadata when it had one. Events of one revision (a transaction) are
 * recorded one after the other and published together by
 * watch_hub_commit(). The history keeps at most max_events events and
 * max_bytes bytes (each event counts its key, values and a fixed
 * overhead); past either, whole revisions go, oldest first (see Bounds
 * for one revision larger than the limits). first_rev is the oldest revision
 * the history still holds completely: every event of every revision from
 * first_rev to the newest is in it. After a snapshot is installed the
 * history is no longer continuous: watch_hub_reset(rev) empties it and
 * restarts it after rev, cancelling only the watchers that wanted a
 * revision up to rev.
 *
 * Watchers. A watcher watches the keys k with from <= k < to (to_end: no
 * upper bound): a key is [K, K+"\0"), a prefix [P, prefix end). It starts
 * at a revision and sees every matching event of every revision from
 * there on, in revision order, each once: it keeps a cursor into the
 * history (a sequence number of events), so the history is its buffer and
 * a watcher holds no copy of events. watch_next() moves the cursor to the
 * end of the next revision that has events for it. A watcher whose cursor
 * falls behind the newest event by more than max_lag bytes (of history,
 * matching or not), or onto a revision the history dropped, is cancelled
 * at the next commit with a reason: it never holds memory or the loop.
 * An owner that can tell a reader that cannot keep up from one that
 * has not had a chance to write yet (a burst within one loop turn) sets
 * owner_lag and cancels it itself (watch_cancel) when it judges it slow.
 * At most max_watchers exist at once.
 *
 * Bounds. The history never holds more than its limits: a revision that
 * alone has more than max_events events or max_bytes bytes is not kept
 * (a compaction point: first_rev moves past it, too_large_rev says which,
 * and the watchers that wanted it are cancelled as compacted).
 *
 * Cost: a commit finds the watchers its events concern through an index
 * (exact keys and prefixes in a hash table, looked up once per prefix
 * length of each event's key; other ranges in a list scanned per event),
 * so a commit touching one key visits O(key length + matching watchers +
 * range watchers), not every watcher. Only watchers with events to read
 * ("dirty") are notified and checked for lag; a dirty watcher's pull
 * visits each event after its cursor once. The cursor of a watcher with
 * nothing to read may stay behind (it is moved when events for it come):
 * read the position with watch_lag and watch_caught_up, not seq. */
#ifndef PZ_WATCH_H
#define PZ_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.h"
#include "pz.h"

/* Bytes an event counts beyond its key and values. */
#define WATCH_EVENT_OVERHEAD 96

struct watch_limits {
    size_t max_events;   /* events kept at most (>= 1) */
    size_t max_bytes;    /* bytes kept at most */
    size_t max_watchers; /* watchers at most */
    size_t max_lag;      /* bytes a watcher may fall behind */
};

/* One change. Pointers owned by the history. */
struct watch_event {
    uint64_t rev;         /* revision it happened at */
    int type;             /* KV_TOP_PUT or KV_TOP_DEL */
    uint8_t *key;         /* key bytes */
    size_t klen;          /* its length */
    uint8_t *value;       /* PUT: new value; DEL: NULL */
    size_t vlen;          /* its length */
    struct kv_meta meta;  /* PUT: new metadata; DEL: zeros but
                             mod_revision = rev */
    bool has_prev;        /* the key existed before */
    uint8_t *prev;        /* its previous value (has_prev) */
    size_t plen;          /* its length */
    struct kv_meta pmeta; /* its previous metadata (has_prev) */
    size_t size;          /* bytes it counts */
    uint64_t cum;         /* bytes of every event recorded before it */
};

enum {
    WATCH_LIVE = 0,      /* delivering */
    WATCH_SLOW = 1,      /* cancelled: fell more than max_lag behind */
    WATCH_COMPACTED = 2, /* cancelled: the history dropped what it needs */
};

struct watch_hub;

struct watcher {
    struct watch_hub *hub; /* registered in, NULL when not */
    uint8_t *from;         /* range start (owned) */
    size_t flen;           /* its length */
    uint8_t *to;           /* range end, exclusive (owned; NULL: to_end) */
    size_t tlen;           /* its length */
    bool to_end;           /* no upper bound */
    uint64_t start;        /* first revision it wants */
    uint64_t seq;          /* next event (sequence number) to look at */
    uint64_t sent_rev;     /* newest revision watch_next returned, or
                              start - 1 */
    int state;             /* WATCH_LIVE, or why it was cancelled */
    struct watcher *prev_w, *next_w; /* hub's list */
    void *data;                      /* the owner's */
    bool owner_lag;        /* set by the owner after watch_add: commits do
                              not cancel it for lag, the owner does */
    bool slow_counted;     /* judged slow and counted (watch_judged_slow)
                              before its cancellation */
    /* The hub's (index and the list of watchers with events to read). */
    int kind;                        /* WATCH_KIND_* */
    uint64_t khash;                  /* hash of from (exact, prefix) */
    struct watcher *hprev, *hnext;   /* index bucket or range list */
    bool dirty;                      /* has events to read */
    struct watcher *dprev, *dnext;   /* hub's dirty list */
    /* Set after watch_add to be notified through this instead of the
     * hub's callback (called as notify(w->data, w)); NULL: the hub's. */
    void (*notify)(void *data, struct watcher *w);
};

enum { WATCH_KIND_EXACT = 1, WATCH_KIND_PREFIX = 2, WATCH_KIND_RANGE = 3 };

/* Called by watch_hub_commit for each live watcher with events to read
 * (after the commit), and once for a watcher it cancels (state set, no
 * longer registered). The callback may read the watcher (watch_next) and
 * remove it (watch_remove) but no other watcher. */
typedef void (*watch_notify_cb)(void *arg, struct watcher *w);

struct watch_hub {
    struct watch_limits lim;   /* copy */
    struct watch_event **ring; /* events, oldest at ring[head] */
    struct pz_fifo mem;        /* where events are cut from (freed in
                                  order: not between the keys' memory) */
    size_t cap;                /* ring slots */
    size_t head;               /* index of the oldest */
    size_t count;              /* events held */
    uint64_t first_seq;        /* sequence number of ring[head] */
    uint64_t committed_seq;    /* events before it are published */
    uint64_t bytes;            /* bytes held */
    uint64_t cum;              /* bytes ever recorded */
    uint64_t first_rev;        /* oldest revision held completely */
    uint64_t last_rev;         /* newest revision recorded (or the reset
                                  point) */
    uint64_t committed_rev;    /* newest revision published */
    struct watcher *watchers;  /* registered */
    size_t n_watchers;         /* how many */
    watch_notify_cb notify;    /* or NULL */
    void *notify_arg;          /* its argument */
    uint64_t cancelled_slow;   /* counters */
    uint64_t cancelled_compacted;
    uint64_t too_large_rev;    /* newest revision not kept for being over
                                  the limits alone (0: none) */
    struct watcher **tab;      /* index: exact and prefix watchers */
    size_t tab_cap;            /* buckets (a power of two, or 0) */
    size_t n_hashed;           /* watchers in tab */
    struct watcher *ranges;    /* other watchers */
    struct watcher *dirty;     /* watchers with events to read */
};

void watch_hub_init(struct watch_hub *h, const struct watch_limits *lim);
/* Frees the history; watchers still registered are unlinked (their owners
 * free them). */
void watch_hub_close(struct watch_hub *h);
void watch_hub_set_notify(struct watch_hub *h, watch_notify_cb cb, void *arg);
/* Change the limits (bounds apply at the next commit). */
void watch_hub_set_limits(struct watch_hub *h, const struct watch_limits *lim);

/* Record one change at revision rev (>= the last one recorded), in the
 * shape of kv_event_cb: KV_TOP_PUT with cur (and prev if the key existed),
 * or KV_TOP_DEL with prev. Copies what it keeps. */
void watch_hub_record(struct watch_hub *h, uint64_t rev, int type,
                      const struct kv_view *cur, const struct kv_view *prev);
/* Publish what was recorded, drop what is over the limits, cancel the
 * watchers that fell too far behind, notify the others that have events. */
void watch_hub_commit(struct watch_hub *h);
/* The history restarts after rev (a snapshot was installed): events are
 * dropped. A watcher that still wanted a revision up to rev (its start, or
 * the one after the last it was given, is <= rev, or its cursor is held
 * on an event) is cancelled as compacted (notified), since what happened
 * there is not known; the others (a start after rev, or everything up to
 * rev given) stay registered and see the revisions after rev. */
void watch_hub_reset(struct watch_hub *h, uint64_t rev);

/* Oldest revision a watcher may start at (older: compacted). */
uint64_t watch_hub_first_rev(const struct watch_hub *h);

/* Register w for the range [from, to) (to NULL: no upper bound; copied)
 * from revision start (>= 1). Returns 0, PZ_EBUSY at max_watchers,
 * PZ_ENOTFOUND if start < watch_hub_first_rev (compacted). */
int watch_add(struct watch_hub *h, struct watcher *w, const void *from,
              size_t flen, const void *to, size_t tlen, uint64_t start);
/* Unregister (if registered) and free what w owns. */
void watch_remove(struct watcher *w);

/* Does event e concern w (its key in range, its revision >= start)? */
bool watch_matches(const struct watcher *w, const struct watch_event *e);

/* The next revision with events for w, from its cursor up to what is
 * published: true with *rev and the sequence numbers [*begin, *end) of
 * that revision's events (some may not match: check watch_matches), and
 * the cursor moved past them; false when there is none yet (the cursor
 * is moved to the end). Events stay valid until the next commit. */
bool watch_next(struct watcher *w, uint64_t *rev, uint64_t *begin,
                uint64_t *end);
/* The event with sequence number seq (held: first_seq <= seq < end). */
const struct watch_event *watch_event_at(const struct watch_hub *h,
                                         uint64_t seq);
/* Cancel w (state why: WATCH_SLOW or WATCH_COMPACTED): unregistered,
 * counted, and the owner notified (may free it). For an owner_lag watcher
 * the owner judges slow. No-op if w is not registered. */
void watch_cancel(struct watcher *w, int why);
/* The owner judged w slow but ends it later (a revision it began writing
 * goes out first): counted now, not again by watch_cancel. */
void watch_judged_slow(struct watcher *w);
/* Set w's cursor to seq (from the oldest held event to the published
 * end): an owner that delivers a revision piecewise keeps the cursor at its
 * first event until it is out, so that lag and compaction count it, then
 * moves it to the end returned by watch_next. */
void watch_set_cursor(struct watcher *w, uint64_t seq);
/* w has read every published event. */
bool watch_caught_up(const struct watcher *w);
/* Bytes of history w is behind. */
uint64_t watch_lag(const struct watcher *w);
/* A progress report at revision rev (the node's) is true for w: rev is at
 * least the revision before w's start. One below it would tell a client
 * that resumes from a progress revision to ask for revisions it never
 * wanted (a future start, or a node still behind the one the start came
 * from): such a report waits until the node gets there. */
bool watch_progress_ok(const struct watcher *w, uint64_t rev);

#endif
