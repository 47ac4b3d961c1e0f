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
    /* One revision over the limit stays while it is the newest. */
    txn_puts(&f, (const char *const[]){"a", "b", "c", "d", NULL}, "w");
    CHECK_EQ_INT(watch_hub_first_rev(&f.hub), 8);
    CHECK_EQ_INT(f.hub.count, 4);
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

/* A watcher with a callback of its own is told there, not through the
 * hub's callback: of its events and of its cancellation. */
static int own_calls, own_cancelled;

static void on_own(void *arg, struct watcher *w)
{
    int *tag = arg;
    own_calls += *tag;
    if (w->state != WATCH_LIVE)
        own_cancelled++;
}

TEST(watcher_with_own_callback)
{
    struct fx f;
    fx_init(&f, 2, 1u << 20, 1u << 20);
    struct watcher a, b;
    int tag = 10;
    own_calls = own_cancelled = 0;
    CHECK_EQ_INT(add_prefix(&f, &a, "k", 1), 0);
    CHECK_EQ_INT(add_prefix(&f, &b, "k", 1), 0);
    b.notify = on_own;
    b.notify_arg = &tag;
    put(&f, "k1", "v");
    CHECK_EQ_INT(f.notified, 1); /* a, through the hub */
    CHECK_EQ_INT(own_calls, 10); /* b, through its own */
    char out[256];
    drain(&f, &b, out, sizeof out);
    CHECK_EQ_STR(out, "1:+k1=v,;");
    drain(&f, &a, out, sizeof out);
    /* b falls behind two revisions of a two-event history: cancelled */
    put(&f, "k2", "v");
    put(&f, "k3", "v");
    put(&f, "k4", "v");
    CHECK(own_cancelled == 1 && b.state == WATCH_COMPACTED);
    CHECK(f.last_cancelled != &b);
    watch_remove(&a);
    watch_remove(&b);
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

static const struct test_case cases[] = {
    TEST_ENTRY(order_and_filters),
    TEST_ENTRY(start_revision_past_and_future),
    TEST_ENTRY(bounds_and_compaction),
    TEST_ENTRY(lagging_watcher_is_compacted),
    TEST_ENTRY(slow_watcher_cancelled),
    TEST_ENTRY(watcher_with_own_callback),
    TEST_ENTRY(max_watchers),
    TEST_ENTRY(reset_after_snapshot),
    TEST_ENTRY(random_against_reference),
    TEST_END};

const struct test_suite suite_watch = {"watch", cases};
