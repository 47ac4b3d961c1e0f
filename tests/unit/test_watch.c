/* test_watch.c - the event history and watcher registry (watch.h), fed
 * from a real kv table's event callback. */
#include <stdlib.h>
#include <string.h>

#include "../../src/kv.h"
#include "../../src/watch.h"
#include "test.h"

struct fx {
    struct kv *kv;
    struct watch_hub hub;
    int notified;
    struct watcher *last_cancelled;
};

static void on_event(void *arg, int type, const struct kv_view *cur,
                     const struct kv_view *prev)
{
    struct fx *f = arg;
    watch_hub_record(&f->hub, kv_revision(f->kv), type, cur, prev);
}

static void on_notify(void *arg, struct watcher *w)
{
    struct fx *f = arg;
    f->notified++;
    if (w->state != WATCH_LIVE)
        f->last_cancelled = w;
}

static void fx_init(struct fx *f, size_t max_events, size_t max_bytes,
                    size_t max_lag)
{
    memset(f, 0, sizeof *f);
    struct watch_limits l = {.max_events = max_events,
                             .max_bytes = max_bytes,
                             .max_watchers = 4,
                             .max_lag = max_lag};
    f->kv = kv_new();
    watch_hub_init(&f->hub, &l);
    watch_hub_set_notify(&f->hub, on_notify, f);
    kv_set_event_cb(f->kv, on_event, f);
}

static void fx_free(struct fx *f)
{
    watch_hub_close(&f->hub);
    kv_free(f->kv);
}

static void put(struct fx *f, const char *k, const char *v)
{
    struct pz_buf b;
    pz_buf_init(&b);
    kv_encode_set(&b, k, strlen(k), v, strlen(v));
    kv_apply(f->kv, (const uint8_t *)b.data, b.len, NULL);
    watch_hub_commit(&f->hub);
    pz_buf_free(&b);
}

static void del(struct fx *f, const char *k)
{
    struct pz_buf b;
    pz_buf_init(&b);
    kv_encode_del(&b, k, strlen(k));
    kv_apply(f->kv, (const uint8_t *)b.data, b.len, NULL);
    watch_hub_commit(&f->hub);
    pz_buf_free(&b);
}

/* A transaction putting each of keys (NULL-terminated) to v. */
static void txn_puts(struct fx *f, const char *const *keys, const char *v)
{
    struct kv_op ops[8];
    size_t n = 0;
    for (; keys[n]; n++)
        ops[n] = (struct kv_op){.type = KV_TOP_PUT,
                                .key = (const uint8_t *)keys[n],
                                .klen = strlen(keys[n]),
                                .value = (const uint8_t *)v,
                                .vlen = strlen(v)};
    struct pz_buf b;
    pz_buf_init(&b);
    kv_encode_txn(&b, NULL, 0, ops, n, NULL, 0);
    kv_apply(f->kv, (const uint8_t *)b.data, b.len, NULL);
    watch_hub_commit(&f->hub);
    pz_buf_free(&b);
}

/* Read everything w has into "rev:type:key=value;..." form. */
static void drain(struct fx *f, struct watcher *w, char *out, size_t n)
{
    uint64_t rev, b, e;
    out[0] = 0;
    while (watch_next(w, &rev, &b, &e)) {
        size_t l = strlen(out);
        snprintf(out + l, n - l, "%llu:", (unsigned long long)rev);
        for (uint64_t s = b; s < e; s++) {
            const struct watch_event *ev = watch_event_at(&f->hub, s);
            if (!watch_matches(w, ev))
                continue;
            l = strlen(out);
            snprintf(out + l, n - l, "%s%.*s%s%s,",
                     ev->type == KV_TOP_PUT ? "+" : "-", (int)ev->klen,
                     (const char *)ev->key, ev->value ? "=" : "",
                     ev->value ? (const char *)ev->value : "");
        }
        l = strlen(out);
        snprintf(out + l, n - l, ";");
    }
}

static int add_prefix(struct fx *f, struct watcher *w, const char *p,
                      uint64_t start)
{
    uint8_t end[64];
    long el = kv_prefix_end(p, strlen(p), end);
    return watch_add(&f->hub, w, p, strlen(p), el < 0 ? NULL : end,
                     el < 0 ? 0 : (size_t)el, start);
}

TEST(order_and_filters)
{
    struct fx f;
    char out[512];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    struct watcher wk, wp, wr;
    CHECK_EQ_INT(watch_add(&f.hub, &wk, "a", 1, "a\0", 2, 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &wp, "b/", 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &wr, "b/2", 3, "c", 1, 1), 0);
    put(&f, "a", "1");   /* 1 */
    put(&f, "ab", "x");  /* 2: not the key a */
    put(&f, "b/1", "y"); /* 3 */
    del(&f, "a");        /* 4 */
    del(&f, "zz");       /* absent: no revision */
    txn_puts(&f, (const char *const[]){"b/2", "b/3", "a", NULL}, "t"); /* 5 */
    put(&f, "c", "no"); /* 6: outside [b/2, c) */
    drain(&f, &wk, out, sizeof out);
    CHECK_EQ_STR(out, "1:+a=1,;4:-a,;5:+a=t,;");
    drain(&f, &wp, out, sizeof out);
    CHECK_EQ_STR(out, "3:+b/1=y,;5:+b/2=t,+b/3=t,;");
    drain(&f, &wr, out, sizeof out);
    CHECK_EQ_STR(out, "5:+b/2=t,+b/3=t,;");
    /* Nothing more until the next commit: no duplicates. */
    drain(&f, &wk, out, sizeof out);
    CHECK_EQ_STR(out, "");
    put(&f, "a", "2");
    drain(&f, &wk, out, sizeof out);
    CHECK_EQ_STR(out, "7:+a=2,;");
    /* Metadata and previous state. */
    const struct watch_event *ev =
        watch_event_at(&f.hub, f.hub.committed_seq - 1);
    CHECK_EQ_INT(ev->meta.mod_revision, 7);
    CHECK_EQ_INT(ev->meta.create_revision, 5);
    CHECK_EQ_INT(ev->meta.version, 2);
    CHECK(ev->has_prev);
    CHECK_EQ_STR((const char *)ev->prev, "t");
    CHECK_EQ_INT(ev->pmeta.mod_revision, 5);
    watch_remove(&wk);
    watch_remove(&wp);
    watch_remove(&wr);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    fx_free(&f);
}

TEST(start_revision_past_and_future)
{
    struct fx f;
    char out[512];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "k", "1");
    put(&f, "k", "2");
    put(&f, "k", "3");
    struct watcher w2, w9;
    CHECK_EQ_INT(watch_add(&f.hub, &w2, "k", 1, "k\0", 2, 2), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &w9, "k", 1, "k\0", 2, 5), 0);
    drain(&f, &w2, out, sizeof out);
    CHECK_EQ_STR(out, "2:+k=2,;3:+k=3,;");
    drain(&f, &w9, out, sizeof out);
    CHECK_EQ_STR(out, "");
    put(&f, "k", "4");
    put(&f, "k", "5");
    drain(&f, &w9, out, sizeof out);
    CHECK_EQ_STR(out, "5:+k=5,;");
    watch_remove(&w2);
    watch_remove(&w9);
    fx_free(&f);
}

/* A new watcher counts as given every revision before its start (what a
 * cancelled stream reports as the revision to resume after), and each
 * revision watch_next returns after that. */
TEST(sent_revision_starts_before_start)
{
    struct fx f;
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "k", "1");
    put(&f, "k", "2");
    struct watcher w, w0;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 2), 0);
    CHECK_EQ_INT(w.sent_rev, 1);
    CHECK_EQ_INT(watch_add(&f.hub, &w0, "k", 1, "k\0", 2, 0), 0);
    CHECK_EQ_INT(w0.start, 1);
    CHECK_EQ_INT(w0.sent_rev, 0);
    uint64_t r, b, e;
    CHECK(watch_next(&w, &r, &b, &e));
    CHECK_EQ_INT(r, 2);
    CHECK_EQ_INT(w.sent_rev, 2);
    CHECK(!watch_next(&w, &r, &b, &e));
    CHECK_EQ_INT(w.sent_rev, 2);
    watch_remove(&w);
    watch_remove(&w0);
    fx_free(&f);
}

/* A progress report at the node's revision is true for a watch only from
 * the revision before its start on: not for a future start (or a start a
 * node behind got from one ahead) until the node gets there, which a
 * snapshot installed under the watch does not change. */
TEST(progress_never_before_start)
{
    struct fx f;
    char out[256];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "k", "1");
    put(&f, "k", "2");
    put(&f, "k", "3");
    struct watcher wp, wn, wf;
    CHECK_EQ_INT(watch_add(&f.hub, &wp, "k", 1, "k\0", 2, 2), 0); /* past */
    CHECK_EQ_INT(watch_add(&f.hub, &wn, "k", 1, "k\0", 2, 4), 0); /* next */
    CHECK_EQ_INT(watch_add(&f.hub, &wf, "k", 1, "k\0", 2, 9), 0); /* ahead */
    CHECK(watch_progress_ok(&wp, 3));
    CHECK(watch_progress_ok(&wn, 3));
    CHECK(!watch_progress_ok(&wf, 3));
    CHECK(!watch_progress_ok(&wf, 7));
    CHECK(watch_progress_ok(&wf, 8));
    CHECK(watch_progress_ok(&wf, 9));
    while (kv_revision(f.kv) < 8) {
        CHECK(!watch_progress_ok(&wf, kv_revision(f.kv)));
        put(&f, "k", "x");
    }
    drain(&f, &wf, out, sizeof out);
    CHECK_EQ_STR(out, "");
    CHECK(watch_caught_up(&wf) && watch_progress_ok(&wf, kv_revision(f.kv)));
    watch_remove(&wf);
    /* A snapshot at 20 under a watch starting at 30: it stays, and so
     * does its start; one given revision 8 goes on from 9. */
    CHECK_EQ_INT(watch_add(&f.hub, &wf, "k", 1, "k\0", 2, 30), 0);
    drain(&f, &wn, out, sizeof out);
    watch_remove(&wp);
    watch_hub_reset(&f.hub, 20);
    CHECK_EQ_INT(wf.state, WATCH_LIVE);
    CHECK(!watch_progress_ok(&wf, 20));
    CHECK(watch_progress_ok(&wf, 29));
    CHECK_EQ_INT(wn.state, WATCH_COMPACTED); /* it wanted 9 to 20 */
    watch_remove(&wn);
    watch_remove(&wf);
    fx_free(&f);
}

TEST(bounds_and_compaction)
{
    struct fx f;
    char out[512];
    fx_init(&f, 3, 1 << 20, 1 << 20);
    for (int i = 0; i < 5; i++)
        put(&f, "k", "v");
    /* 3 events at most: revisions 3..5 remain. */
    CHECK_EQ_INT(f.hub.count, 3);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 3);
    struct watcher w;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 2), PZ_ENOTFOUND);
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 3), 0);
    drain(&f, &w, out, sizeof out);
    CHECK_EQ_STR(out, "3:+k=v,;4:+k=v,;5:+k=v,;");
    watch_remove(&w);
    /* A transaction is dropped whole: 3 events in revision 6, then 2 in
     * 7 leave only revision 7 (6 would exceed the limit with it). */
    txn_puts(&f, (const char *const[]){"x", "y", "z", NULL}, "t");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 6);
    CHECK_EQ_INT(f.hub.count, 3);
    txn_puts(&f, (const char *const[]){"x", "y", NULL}, "u");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 7);
    CHECK_EQ_INT(f.hub.count, 2);
    /* One revision over the limit is not kept: a compaction point. */
    txn_puts(&f, (const char *const[]){"a", "b", "c", "d", NULL}, "w");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 9);
    CHECK_EQ_INT(f.hub.count, 0);
    CHECK_EQ_INT(f.hub.too_large_rev, 8);
    put(&f, "k", "v");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 9);
    CHECK_EQ_INT(f.hub.count, 1);
    fx_free(&f);

    /* The byte limit. */
    fx_init(&f, 1000, 3 * (WATCH_EVENT_OVERHEAD + 2), 1 << 20);
    for (int i = 0; i < 10; i++)
        put(&f, "k", "v"); /* 2 bytes each (no previous on the first) */
    CHECK(f.hub.bytes <= 3 * (WATCH_EVENT_OVERHEAD + 2));
    CHECK(f.hub.count >= 1);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 10 - f.hub.count + 1);
    fx_free(&f);
}

/* The limits are inclusive: a history at exactly max_bytes, or exactly
 * max_events, keeps everything. */
TEST(history_at_its_limits_keeps_all)
{
    struct fx f;
    /* key "k", value "v": 1 + 1 bytes on the first put, 1 + 1 + 1 (its
     * previous value) after */
    size_t first = WATCH_EVENT_OVERHEAD + 2, next = WATCH_EVENT_OVERHEAD + 3;
    fx_init(&f, 1000, first + 2 * next, 1 << 20);
    for (int i = 0; i < 3; i++)
        put(&f, "k", "v");
    CHECK_EQ_INT(f.hub.bytes, first + 2 * next);
    CHECK_EQ_INT(f.hub.count, 3);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 1);
    /* over: without revision 1, the three of next bytes are one byte
     * over still, so revision 2 goes too */
    put(&f, "k", "v");
    CHECK_EQ_INT(f.hub.count, 2);
    CHECK_EQ_INT(f.hub.bytes, 2 * next);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 3);
    fx_free(&f);

    fx_init(&f, 3, 1 << 20, 1 << 20);
    for (int i = 0; i < 3; i++)
        put(&f, "k", "v");
    CHECK_EQ_INT(f.hub.count, 3);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 1);
    fx_free(&f);
}

/* The history's ring grows past its first size while it has wrapped
 * (its oldest event not at the start): every event kept stays, in
 * order. */
TEST(history_grows_after_wrapping)
{
    struct fx f;
    char out[4096], want[4096];
    fx_init(&f, 50, 1 << 20, 1 << 20);
    for (int i = 1; i <= 80; i++) /* 50 kept: 31 to 80 */
        put(&f, "k", "v");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 31);
    struct watch_limits l = f.hub.lim;
    l.max_events = 1000;
    watch_hub_set_limits(&f.hub, &l);
    struct watcher w;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 31), 0);
    for (int i = 81; i <= 200; i++) /* 170 events at once */
        put(&f, "k", "v");
    CHECK_EQ_INT(f.hub.count, 170);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 31);
    drain(&f, &w, out, sizeof out);
    want[0] = 0;
    for (int i = 31; i <= 200; i++) {
        size_t n = strlen(want);
        snprintf(want + n, sizeof want - n, "%d:+k=v,;", i);
    }
    CHECK_EQ_STR(out, want);
    watch_remove(&w);
    fx_free(&f);
}

TEST(lagging_watcher_is_compacted)
{
    struct fx f;
    fx_init(&f, 4, 1 << 20, 1 << 20);
    struct watcher w;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 1), 0);
    /* The owner never reads (its notify does nothing). */
    for (int i = 0; i < 5; i++)
        put(&f, "k", "v");
    CHECK(f.last_cancelled == &w);
    CHECK_EQ_INT(w.state, WATCH_COMPACTED);
    CHECK(w.hub == NULL);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    CHECK_EQ_INT(f.hub.cancelled_compacted, 1);
    watch_remove(&w);
    fx_free(&f);
}

TEST(slow_watcher_cancelled)
{
    struct fx f;
    char out[256];
    size_t ev = WATCH_EVENT_OVERHEAD + 1 + 10 + 10;
    fx_init(&f, 1000, 1 << 20, 3 * ev);
    struct watcher slow, fast;
    CHECK_EQ_INT(add_prefix(&f, &slow, "", 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &fast, "", 1), 0);
    put(&f, "k", "0123456789");
    for (int i = 0; i < 5 && slow.state == WATCH_LIVE; i++) {
        put(&f, "k", "0123456789");
        drain(&f, &fast, out, sizeof out);
        CHECK(strlen(out) > 0);
    }
    CHECK_EQ_INT(slow.state, WATCH_SLOW);
    CHECK_EQ_INT(fast.state, WATCH_LIVE);
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    CHECK_EQ_INT(f.hub.n_watchers, 1);
    /* A cancelled watcher reads nothing more. */
    uint64_t r, b, e;
    CHECK(!watch_next(&slow, &r, &b, &e));
    watch_remove(&slow);
    watch_remove(&fast);
    fx_free(&f);
}

/* Judged slow by its owner while a revision is half written: counted at
 * once (the metric shows it while the client is still stalled), and not
 * again when it is cancelled later. */
TEST(judged_slow_counted_once)
{
    struct fx f;
    fx_init(&f, 1000, 1 << 20, 1 << 20);
    struct watcher w;
    CHECK_EQ_INT(add_prefix(&f, &w, "", 1), 0);
    w.owner_lag = true;
    watch_judged_slow(&w);
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    CHECK_EQ_INT(w.state, WATCH_LIVE);
    watch_judged_slow(&w);
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    watch_cancel(&w, WATCH_SLOW);
    CHECK_EQ_INT(w.state, WATCH_SLOW);
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    watch_remove(&w);
    /* nor as compacted when the history drops its revision first */
    CHECK_EQ_INT(add_prefix(&f, &w, "", 1), 0);
    w.owner_lag = true;
    watch_judged_slow(&w);
    CHECK_EQ_INT(f.hub.cancelled_slow, 2);
    watch_cancel(&w, WATCH_COMPACTED);
    CHECK_EQ_INT(w.state, WATCH_COMPACTED);
    CHECK_EQ_INT(f.hub.cancelled_slow, 2);
    CHECK_EQ_INT(f.hub.cancelled_compacted, 0);
    watch_remove(&w);
    fx_free(&f);
}

/* A watcher with its own notify is told through it, not the hub's. */
static int own_calls;
static int own_cancelled;
static void own_notify(void *data, struct watcher *w)
{
    CHECK(data == (void *)&own_calls);
    own_calls++;
    if (w->state != WATCH_LIVE)
        own_cancelled++;
}

TEST(own_notify)
{
    struct fx f;
    size_t ev = WATCH_EVENT_OVERHEAD + 1 + 10 + 10;
    fx_init(&f, 1000, 1 << 20, 3 * ev);
    struct watcher mine, other;
    own_calls = own_cancelled = 0;
    CHECK_EQ_INT(add_prefix(&f, &mine, "", 1), 0);
    mine.data = &own_calls;
    mine.notify = own_notify;
    CHECK_EQ_INT(add_prefix(&f, &other, "", 1), 0);
    put(&f, "k", "0123456789");
    CHECK_EQ_INT(own_calls, 1);
    CHECK_EQ_INT(f.notified, 1); /* the other one only */
    /* Never read: cancelled as slow, told through its own callback. */
    for (int i = 0; i < 5 && mine.state == WATCH_LIVE; i++)
        put(&f, "k", "0123456789");
    CHECK_EQ_INT(mine.state, WATCH_SLOW);
    CHECK_EQ_INT(own_cancelled, 1);
    CHECK(f.last_cancelled != &mine);
    watch_remove(&mine);
    watch_remove(&other);
    fx_free(&f);
}

TEST(max_watchers)
{
    struct fx f;
    fx_init(&f, 10, 1 << 20, 1 << 20);
    struct watcher w[5];
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(add_prefix(&f, &w[i], "", 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &w[4], "", 1), PZ_EBUSY);
    watch_remove(&w[2]);
    CHECK_EQ_INT(add_prefix(&f, &w[4], "", 1), 0);
    for (int i = 0; i < 5; i++)
        if (i != 2)
            watch_remove(&w[i]);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    fx_free(&f);
}

TEST(reset_after_snapshot)
{
    struct fx f;
    char out[256];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "k", "1");
    put(&f, "k", "2");
    struct watcher w;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 1), 0);
    watch_hub_reset(&f.hub, 10);
    CHECK_EQ_INT(w.state, WATCH_COMPACTED);
    CHECK_EQ_INT(f.hub.count, 0);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 11);
    watch_remove(&w);
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 10), PZ_ENOTFOUND);
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 11), 0);
    kv_set_revision(f.kv, 10);
    put(&f, "k", "3");
    drain(&f, &w, out, sizeof out);
    CHECK_EQ_STR(out, "11:+k=3,;");
    watch_remove(&w);
    fx_free(&f);
}

/* A snapshot cancels only the watchers that wanted a revision up to it: a
 * start after it, or everything up to it given, keeps the watcher, which
 * then sees each later revision once; a cursor held on an event (a
 * revision being delivered) is lost with the history. */
TEST(reset_keeps_watchers_past_it)
{
    struct fx f;
    char out[256];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    struct watch_limits l = f.hub.lim;
    l.max_watchers = 8;
    watch_hub_set_limits(&f.hub, &l);
    put(&f, "k", "1");
    put(&f, "k", "2");
    put(&f, "k", "3");
    struct watcher wseen, wfuture, wnext;
    CHECK_EQ_INT(watch_add(&f.hub, &wseen, "k", 1, "k\0", 2, 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &wfuture, "k", 1, "k\0", 2, 13), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &wnext, "k", 1, "k\0", 2, 11), 0);
    drain(&f, &wseen, out, sizeof out);
    CHECK_EQ_STR(out, "1:+k=1,;2:+k=2,;3:+k=3,;");
    put(&f, "k", "4");
    drain(&f, &wseen, out, sizeof out);
    CHECK_EQ_STR(out, "4:+k=4,;");
    CHECK(watch_caught_up(&wseen));
    /* A snapshot at revision 10 (the follower was at 4): wseen, given
     * everything up to 4, misses 5 to 10. */
    kv_set_revision(f.kv, 10);
    f.last_cancelled = NULL;
    f.notified = 0;
    watch_hub_reset(&f.hub, 10);
    CHECK_EQ_INT(wseen.state, WATCH_COMPACTED);
    CHECK(f.last_cancelled == &wseen);
    CHECK_EQ_INT(f.notified, 1);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 11);
    CHECK_EQ_INT(f.hub.cancelled_compacted, 1);
    CHECK_EQ_INT(wfuture.state, WATCH_LIVE);
    CHECK_EQ_INT(wnext.state, WATCH_LIVE);
    CHECK_EQ_INT(f.hub.n_watchers, 2);
    CHECK(watch_caught_up(&wfuture) && watch_caught_up(&wnext));
    CHECK_EQ_INT(watch_lag(&wnext), 0);
    watch_remove(&wseen);
    for (int i = 11; i <= 14; i++) {
        char v[8];
        snprintf(v, sizeof v, "%d", i);
        put(&f, "k", v);
    }
    drain(&f, &wnext, out, sizeof out);
    CHECK_EQ_STR(out, "11:+k=11,;12:+k=12,;13:+k=13,;14:+k=14,;");
    drain(&f, &wfuture, out, sizeof out);
    CHECK_EQ_STR(out, "13:+k=13,;14:+k=14,;");
    drain(&f, &wnext, out, sizeof out);
    CHECK_EQ_STR(out, "");

    /* A snapshot at exactly the revision the watchers were given: the
     * one whose cursor is held on revision 14 (being delivered) is
     * cancelled, the ones with everything are not. */
    struct watcher wheld;
    CHECK_EQ_INT(watch_add(&f.hub, &wheld, "k", 1, "k\0", 2, 13), 0);
    uint64_t r, b, e;
    CHECK(watch_next(&wheld, &r, &b, &e));
    CHECK_EQ_INT(r, 13);
    CHECK(watch_next(&wheld, &r, &b, &e));
    CHECK_EQ_INT(r, 14);
    watch_set_cursor(&wheld, b);
    f.last_cancelled = NULL;
    watch_hub_reset(&f.hub, 14);
    CHECK_EQ_INT(wheld.state, WATCH_COMPACTED);
    CHECK(f.last_cancelled == &wheld);
    CHECK_EQ_INT(wnext.state, WATCH_LIVE);
    CHECK_EQ_INT(wfuture.state, WATCH_LIVE);
    watch_remove(&wheld);
    put(&f, "k", "15");
    drain(&f, &wnext, out, sizeof out);
    CHECK_EQ_STR(out, "15:+k=15,;");
    drain(&f, &wfuture, out, sizeof out);
    CHECK_EQ_STR(out, "15:+k=15,;");
    watch_remove(&wnext);
    watch_remove(&wfuture);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    fx_free(&f);
}

/* Random operations against a reference: every watcher sees exactly the
 * matching events, in order, whatever the history drops meanwhile as long
 * as it keeps up. */
TEST(random_against_reference)
{
    struct fx f;
    fx_init(&f, 50, 1 << 20, 1 << 30);
    srand(7);
    struct watcher w;
    CHECK_EQ_INT(add_prefix(&f, &w, "p", 1), 0);
    uint64_t expect_rev = 0;
    for (int i = 0; i < 2000; i++) {
        char k[8];
        snprintf(k, sizeof k, "%c%d", rand() % 2 ? 'p' : 'q', rand() % 10);
        if (rand() % 3)
            put(&f, k, "v");
        else
            del(&f, k);
        uint64_t rev, b, e;
        while (watch_next(&w, &rev, &b, &e)) {
            CHECK(rev > expect_rev);
            for (uint64_t s = b; s < e; s++) {
                const struct watch_event *ev = watch_event_at(&f.hub, s);
                CHECK_EQ_INT(ev->rev, rev);
                if (watch_matches(&w, ev))
                    CHECK(ev->key[0] == 'p');
            }
            expect_rev = rev;
        }
        CHECK(watch_caught_up(&w));
    }
    CHECK_EQ_INT(w.state, WATCH_LIVE);
    watch_remove(&w);
    fx_free(&f);
}

/* A revision over watch-history-bytes alone is never kept, watched or
 * not: the watchers that wanted it are cancelled as compacted, and a
 * watch cannot start at it. */
TEST(too_large_revision_not_kept)
{
    struct fx f;
    char big[4096];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    fx_init(&f, 1000, 2048, 1 << 20);
    put(&f, "k", "small");
    CHECK_EQ_INT(f.hub.count, 1);
    put(&f, "k", big); /* nobody watches */
    CHECK_EQ_INT(f.hub.count, 0);
    CHECK_EQ_INT(f.hub.bytes, 0);
    CHECK_EQ_INT(f.hub.too_large_rev, 2);
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 3);
    struct watcher w, other;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 2), PZ_ENOTFOUND);
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 3), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &other, "o", 1, "o\0", 2, 3), 0);
    put(&f, "k", big);
    CHECK_EQ_INT(w.state, WATCH_COMPACTED);
    CHECK(f.last_cancelled == &w);
    CHECK_EQ_INT(f.hub.too_large_rev, 3);
    CHECK_EQ_INT(other.state, WATCH_LIVE); /* wanted none of it */
    CHECK_EQ_INT(f.hub.count, 0);
    watch_remove(&w);
    watch_remove(&other);
    fx_free(&f);
}

/* A commit notifies only the watchers its events concern (found through
 * the index), and a watcher with nothing to read never lags, however
 * much else the history turns over. */
TEST(commit_visits_matching_watchers_only)
{
    struct fx f;
    char out[256];
    fx_init(&f, 4, 1 << 20, 300);
    struct watch_limits l = {.max_events = 4,
                             .max_bytes = 1 << 20,
                             .max_watchers = 2000,
                             .max_lag = 300};
    watch_hub_set_limits(&f.hub, &l);
    enum { N = 1000 };
    struct watcher *ws = calloc(N + 3, sizeof *ws);
    char k[16];
    for (int i = 0; i < N; i++) {
        snprintf(k, sizeof k, "k%d", i);
        size_t n = strlen(k);
        char to[16];
        memcpy(to, k, n + 1);
        CHECK_EQ_INT(watch_add(&f.hub, &ws[i], k, n, to, n + 1, 1), 0);
    }
    CHECK_EQ_INT(add_prefix(&f, &ws[N], "p1", 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &ws[N + 1], "a", 1, "c", 1, 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &ws[N + 2], "", 1), 0); /* every key */
    CHECK_EQ_INT(ws[0].kind, WATCH_KIND_EXACT);
    CHECK_EQ_INT(ws[N].kind, WATCH_KIND_PREFIX);
    CHECK_EQ_INT(ws[N + 1].kind, WATCH_KIND_RANGE);
    watch_remove(&ws[N + 2]);
    f.notified = 0;
    put(&f, "k5", "v");
    CHECK_EQ_INT(f.notified, 1);
    drain(&f, &ws[5], out, sizeof out);
    CHECK_EQ_STR(out, "1:+k5=v,;");
    f.notified = 0;
    put(&f, "p12", "v");
    CHECK_EQ_INT(f.notified, 1);
    drain(&f, &ws[N], out, sizeof out);
    CHECK_EQ_STR(out, "2:+p12=v,;");
    f.notified = 0;
    put(&f, "b", "v");
    CHECK_EQ_INT(f.notified, 1);
    drain(&f, &ws[N + 1], out, sizeof out);
    CHECK_EQ_STR(out, "3:+b=v,;");
    /* Many more writes than the history holds, none for k999: it stays
     * live and caught up, then gets its own. */
    for (int i = 0; i < 20; i++)
        put(&f, "other", "0123456789");
    CHECK_EQ_INT(ws[N - 1].state, WATCH_LIVE);
    CHECK(watch_caught_up(&ws[N - 1]));
    CHECK_EQ_INT(watch_lag(&ws[N - 1]), 0);
    CHECK_EQ_INT(f.hub.cancelled_slow + f.hub.cancelled_compacted, 0);
    put(&f, "k999", "z");
    drain(&f, &ws[N - 1], out, sizeof out);
    CHECK_EQ_STR(out, "24:+k999=z,;");
    for (int i = 0; i < N + 2; i++)
        watch_remove(&ws[i]);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    CHECK_EQ_INT(f.hub.n_hashed, 0);
    free(ws);
    fx_free(&f);
}

/* owner_lag: commits leave lag to the owner, who cancels with
 * watch_cancel; watch_set_cursor keeps a revision being delivered
 * counted. */
TEST(owner_lag_and_cursor)
{
    struct fx f;
    fx_init(&f, 1000, 1 << 20, 200);
    struct watcher w;
    CHECK_EQ_INT(add_prefix(&f, &w, "", 1), 0);
    w.owner_lag = true;
    for (int i = 0; i < 10; i++)
        put(&f, "k", "0123456789");
    CHECK_EQ_INT(w.state, WATCH_LIVE);
    CHECK(watch_lag(&w) > 200);
    uint64_t r, b, e;
    CHECK(watch_next(&w, &r, &b, &e));
    CHECK_EQ_INT(r, 1);
    watch_set_cursor(&w, b); /* being written */
    CHECK(!watch_caught_up(&w));
    uint64_t lag = watch_lag(&w);
    while (watch_next(&w, &r, &b, &e))
        ;
    CHECK(watch_caught_up(&w));
    watch_set_cursor(&w, b);
    CHECK(!watch_caught_up(&w));
    CHECK(watch_lag(&w) < lag);
    watch_set_cursor(&w, e);
    CHECK(watch_caught_up(&w));
    f.last_cancelled = NULL;
    watch_cancel(&w, WATCH_SLOW);
    CHECK(f.last_cancelled == &w);
    CHECK_EQ_INT(w.state, WATCH_SLOW);
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    watch_cancel(&w, WATCH_SLOW); /* no longer registered: nothing */
    CHECK_EQ_INT(f.hub.cancelled_slow, 1);
    watch_remove(&w);
    fx_free(&f);
}

/* Each event holds its key, value and previous value with their exact
 * lengths (what a watch stream encodes), and a delete's metadata is zeros
 * but its own revision. */
TEST(event_lengths_and_delete_meta)
{
    struct fx f;
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "key", "12345");   /* 1 */
    put(&f, "key", "abcdefg"); /* 2 */
    del(&f, "key");            /* 3 */
    const struct watch_event *e1 = watch_event_at(&f.hub, f.hub.first_seq);
    const struct watch_event *e2 = watch_event_at(&f.hub, f.hub.first_seq + 1);
    const struct watch_event *e3 = watch_event_at(&f.hub, f.hub.first_seq + 2);
    CHECK_EQ_INT(e1->klen, 3);
    CHECK_EQ_INT(e1->vlen, 5);
    CHECK(!e1->has_prev);
    CHECK_EQ_INT(e1->plen, 0);
    CHECK_EQ_INT(e2->rev, 2);
    CHECK_EQ_INT(e2->vlen, 7);
    CHECK(memcmp(e2->value, "abcdefg", 8) == 0); /* NUL-terminated too */
    CHECK(e2->has_prev);
    CHECK_EQ_INT(e2->plen, 5);
    CHECK(memcmp(e2->prev, "12345", 6) == 0);
    /* key 3 + value 7 + previous 5 */
    CHECK_EQ_INT(e2->size, WATCH_EVENT_OVERHEAD + 3 + 7 + 5);
    CHECK_EQ_INT(e3->type, KV_TOP_DEL);
    CHECK_EQ_INT(e3->klen, 3);
    CHECK(e3->value == NULL);
    CHECK_EQ_INT(e3->vlen, 0);
    CHECK_EQ_INT(e3->meta.mod_revision, 3);
    CHECK_EQ_INT(e3->meta.create_revision, 0);
    CHECK_EQ_INT(e3->meta.version, 0);
    CHECK(e3->has_prev);
    CHECK_EQ_INT(e3->plen, 7);
    CHECK_EQ_INT(e3->pmeta.mod_revision, 2);
    CHECK_EQ_INT(e3->pmeta.version, 2);
    fx_free(&f);
}

/* A range whose end is another key + "\0" is a range, not that one key:
 * it sees every key from its start up to and including that other key. */
TEST(range_ending_at_another_key_is_not_exact)
{
    struct fx f;
    char out[256];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    struct watcher w, wlong;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "ab", 2, "ac\0", 3, 1), 0);
    CHECK_EQ_INT(w.kind, WATCH_KIND_RANGE);
    CHECK_EQ_INT(watch_add(&f.hub, &wlong, "ab", 2, "zz\0", 3, 1), 0);
    CHECK_EQ_INT(wlong.kind, WATCH_KIND_RANGE);
    put(&f, "ab", "1");  /* 1 */
    put(&f, "ab0", "2"); /* 2 */
    put(&f, "ac", "3");  /* 3 */
    put(&f, "ac0", "4"); /* 4: past ac\0 */
    put(&f, "b", "5");   /* 5 */
    drain(&f, &w, out, sizeof out);
    CHECK_EQ_STR(out, "1:+ab=1,;2:+ab0=2,;3:+ac=3,;");
    drain(&f, &wlong, out, sizeof out);
    CHECK_EQ_STR(out, "1:+ab=1,;2:+ab0=2,;3:+ac=3,;4:+ac0=4,;5:+b=5,;");
    watch_remove(&w);
    watch_remove(&wlong);
    fx_free(&f);
}

/* A snapshot at exactly the revision a watcher wants next (given all
 * before it) cancels it: that revision's events are not in the history
 * that starts after the snapshot. */
TEST(reset_at_the_revision_wanted_next_cancels)
{
    struct fx f;
    char out[256];
    fx_init(&f, 100, 1 << 20, 1 << 20);
    put(&f, "k", "1");
    put(&f, "k", "2");
    put(&f, "k", "3");
    struct watcher w, wafter;
    CHECK_EQ_INT(watch_add(&f.hub, &w, "k", 1, "k\0", 2, 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &wafter, "k", 1, "k\0", 2, 5), 0);
    drain(&f, &w, out, sizeof out);
    CHECK_EQ_STR(out, "1:+k=1,;2:+k=2,;3:+k=3,;");
    /* w wants 4 next, wafter 5: a snapshot at 4 */
    kv_set_revision(f.kv, 4);
    f.last_cancelled = NULL;
    watch_hub_reset(&f.hub, 4);
    CHECK_EQ_INT(w.state, WATCH_COMPACTED);
    CHECK(f.last_cancelled == &w);
    CHECK_EQ_INT(wafter.state, WATCH_LIVE);
    put(&f, "k", "5");
    drain(&f, &wafter, out, sizeof out);
    CHECK_EQ_STR(out, "5:+k=5,;");
    watch_remove(&w);
    watch_remove(&wafter);
    fx_free(&f);
}

/* Closing the hub with watchers still registered detaches them: they
 * read nothing, and removing them afterwards touches no freed hub. */
TEST(close_detaches_watchers)
{
    struct fx f;
    fx_init(&f, 100, 1 << 20, 1 << 20);
    struct watcher a, b, c;
    CHECK_EQ_INT(watch_add(&f.hub, &a, "k", 1, "k\0", 2, 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &b, "", 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &c, "a", 1, "c", 1, 1), 0);
    put(&f, "k", "1");
    watch_hub_close(&f.hub);
    CHECK(a.hub == NULL && b.hub == NULL && c.hub == NULL);
    CHECK_EQ_INT(f.hub.n_watchers, 0);
    CHECK(f.hub.watchers == NULL);
    uint64_t r, bg, e;
    CHECK(!watch_next(&b, &r, &bg, &e));
    CHECK(watch_caught_up(&b));
    watch_remove(&a);
    watch_remove(&b);
    watch_remove(&c);
    kv_free(f.kv);
}

/* An owner told of one cancellation may read its other watchers at once
 * (one stream carries several): one whose revisions the history dropped
 * reads nothing, before the commit cancels it too. */
static struct watcher *stream[2];
static int stream_tries, stream_reads;
static void read_stream(void *arg, struct watcher *w)
{
    on_notify(arg, w);
    uint64_t r, b, e;
    for (int i = 0; i < 2 && w->state != WATCH_LIVE; i++)
        if (stream[i] && stream[i] != w && stream[i]->hub) {
            stream_tries++;
            if (watch_next(stream[i], &r, &b, &e))
                stream_reads++;
        }
}

TEST(compacted_watcher_reads_nothing)
{
    struct fx f;
    fx_init(&f, 2, 1 << 20, 1 << 20);
    watch_hub_set_notify(&f.hub, read_stream, &f);
    struct watcher a, b;
    CHECK_EQ_INT(watch_add(&f.hub, &a, "k", 1, "k\0", 2, 1), 0);
    CHECK_EQ_INT(watch_add(&f.hub, &b, "k", 1, "k\0", 2, 1), 0);
    stream[0] = &a;
    stream[1] = &b;
    stream_tries = stream_reads = 0;
    for (int i = 0; i < 3; i++) /* neither reads: revision 1 dropped */
        put(&f, "k", "v");
    CHECK_EQ_INT(a.state, WATCH_COMPACTED);
    CHECK_EQ_INT(b.state, WATCH_COMPACTED);
    CHECK_EQ_INT(stream_tries, 1); /* the second, when the first went */
    CHECK_EQ_INT(stream_reads, 0);
    stream[0] = stream[1] = NULL;
    watch_remove(&a);
    watch_remove(&b);
    fx_free(&f);
}

static const struct test_case cases[] = {
    TEST_ENTRY(order_and_filters),
    TEST_ENTRY(start_revision_past_and_future),
    TEST_ENTRY(sent_revision_starts_before_start),
    TEST_ENTRY(progress_never_before_start),
    TEST_ENTRY(bounds_and_compaction),
    TEST_ENTRY(history_at_its_limits_keeps_all),
    TEST_ENTRY(history_grows_after_wrapping),
    TEST_ENTRY(lagging_watcher_is_compacted),
    TEST_ENTRY(slow_watcher_cancelled),
    TEST_ENTRY(judged_slow_counted_once),
    TEST_ENTRY(own_notify),
    TEST_ENTRY(max_watchers),
    TEST_ENTRY(reset_after_snapshot),
    TEST_ENTRY(reset_keeps_watchers_past_it),
    TEST_ENTRY(random_against_reference),
    TEST_ENTRY(too_large_revision_not_kept),
    TEST_ENTRY(commit_visits_matching_watchers_only),
    TEST_ENTRY(owner_lag_and_cursor),
    TEST_ENTRY(event_lengths_and_delete_meta),
    TEST_ENTRY(range_ending_at_another_key_is_not_exact),
    TEST_ENTRY(reset_at_the_revision_wanted_next_cancels),
    TEST_ENTRY(close_detaches_watchers),
    TEST_ENTRY(compacted_watcher_reads_nothing),
    TEST_END};

const struct test_suite suite_watch = {"watch", cases};
