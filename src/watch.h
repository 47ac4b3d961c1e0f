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
 * overhead); past either, whole revisions go, oldest first, except the
 * newest one, which always stays (so one revision larger than the limits
 * is kept until the next arrives). first_rev is the oldest revision the
 * history still holds completely: every event of every revision from
 * first_rev to the newest is in it. After a snapshot is installed the
 * history is no longer continuous: watch_hub_reset(rev) empties it and
 * restarts it after rev.
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
 * At most max_watchers exist at once.
 *
 * Cost: a commit visits every watcher (O(watchers)); a watcher's pull
 * visits each event after its cursor once. */
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
    /* Set by the owner after watch_add: called for this watcher instead
     * of the hub's callback (watch_notify_cb; NULL: the hub's). */
    void (*notify)(void *arg, struct watcher *w);
    void *notify_arg; /* its argument */
};

/* Called by watch_hub_commit for each live watcher with events to read
 * (after the commit), and once for a watcher it cancels (state set, no
 * longer registered). The callback may read the watcher (watch_next) and
 * remove it (watch_remove) but no other watcher. */
typedef void (*watch_notify_cb)(void *arg, struct watcher *w);

struct watch_hub {
    struct watch_limits lim;   /* copy */
    struct watch_event **ring; /* events, oldest at ring[head] */
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
 * dropped; every watcher is cancelled as compacted (notified), since what
 * happened between its cursor and rev is not known. */
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
/* w has read every published event. */
bool watch_caught_up(const struct watcher *w);
/* Bytes of history w is behind. */
uint64_t watch_lag(const struct watcher *w);

#endif
