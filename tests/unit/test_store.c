/* test_store.c - the SQLite Raft log: round trips, follower truncation,
 * the thread-pool write path on a real loop, refusal of damaged files,
 * fault injection, crash consistency under SIGKILL, and a throughput
 * measurement (printed, not asserted). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "pz.h"
#include "store.h"
#include "test.h"

/* --- helpers -------------------------------------------------------------- */

struct tdir {
    char root[64];  /* mkdtemp directory */
    char data[96];  /* root/data: the store's directory (created by it) */
    char db[128];   /* data/raft.db */
};

static void tdir_init(struct tdir *t)
{
    snprintf(t->root, sizeof t->root, "/tmp/pz-store-XXXXXX");
    if (mkdtemp(t->root) == NULL) {
        perror("mkdtemp");
        abort();
    }
    snprintf(t->data, sizeof t->data, "%s/data", t->root);
    snprintf(t->db, sizeof t->db, "%s/raft.db", t->data);
}

static int rm_one(const char *p, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    PZ_UNUSED(sb);
    PZ_UNUSED(flag);
    PZ_UNUSED(ftw);
    return remove(p);
}

static void tdir_free(struct tdir *t)
{
    nftw(t->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Payload of the entry (index, term): deterministic, length varies. */
static size_t payload(uint64_t index, uint64_t term, uint8_t *buf,
                      size_t cap)
{
    int n = snprintf((char *)buf, cap, "i%" PRIu64 "t%" PRIu64 ":", index,
                     term);
    size_t len = (size_t)n + (size_t)((index * 7 + term * 13) % 90);
    if (len > cap)
        len = cap;
    for (size_t i = (size_t)n; i < len; i++)
        buf[i] = (uint8_t)(index + term + i);
    return len;
}

/* Entries [first, first + n) of one term; index % 5 == 0 is empty. */
static struct raft_entry *mk_entries(uint64_t first, size_t n, uint64_t term)
{
    struct raft_entry *e = pz_calloc(n ? n : 1, sizeof *e);
    for (size_t i = 0; i < n; i++) {
        uint8_t buf[160];
        e[i].index = first + i;
        e[i].term = term;
        e[i].type = (uint8_t)((first + i) % 3);
        if ((first + i) % 5 != 0) {
            e[i].len = payload(first + i, term, buf, sizeof buf);
            e[i].data = pz_memdup(buf, e[i].len);
        }
    }
    return e;
}

static void free_entries(struct raft_entry *e, size_t n)
{
    store_entries_free(e, n);
}

static bool entry_ok(const struct raft_entry *e, uint64_t index,
                     uint64_t term)
{
    uint8_t buf[160];
    size_t len = index % 5 != 0 ? payload(index, term, buf, sizeof buf) : 0;
    if (e->index != index || e->term != term || e->len != len ||
        e->type != index % 3) {
        fprintf(stderr,
                "    entry %" PRIu64 ": got index %" PRIu64 " term %" PRIu64
                " len %zu type %d, want term %" PRIu64 " len %zu\n",
                index, e->index, e->term, e->len, e->type, term, len);
        return false;
    }
    if (len && memcmp(e->data, buf, len) != 0) {
        fprintf(stderr, "    entry %" PRIu64 ": payload differs\n", index);
        return false;
    }
    return len > 0 || e->data == NULL;
}

static struct store *open_ok(const struct tdir *t)
{
    char err[512];
    struct store *s = NULL;
    int rc = store_open(t->data, &s, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "    store_open: %d %s\n", rc, err);
        return NULL;
    }
    return s;
}

/* Opens and loads; on failure returns the code and the message in err. */
static int open_load(const struct tdir *t, char *err, size_t errlen)
{
    struct store *s = NULL;
    int rc = store_open(t->data, &s, err, errlen);
    if (rc)
        return rc;
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    rc = store_load(s, &hs, &e, &n, NULL);
    if (rc)
        snprintf(err, errlen, "%s", store_errmsg(s));
    else
        free_entries(e, n);
    store_close(s);
    return rc;
}

static int write_range(struct store *s, uint64_t first, size_t n,
                       uint64_t term, const struct raft_hard_state *hs)
{
    struct raft_entry *e = mk_entries(first, n, term);
    int rc = store_write_sync(s, hs, e, n);
    free_entries(e, n);
    return rc;
}

/* Opens a store in a new t holding entries 1..5 of term 1 (hard state
 * term 1), capped at its size now: the next write that needs a page finds
 * no room (SQLITE_FULL, as on a full file system). */
static struct store *open_full(struct tdir *t)
{
    tdir_init(t);
    struct store *s = open_ok(t);
    struct raft_hard_state hs = {1, 1, 0};
    if (s == NULL || write_range(s, 1, 5, 1, &hs) != 0 ||
        store_test_max_pages(s, 1) != 0) {
        fprintf(stderr, "    cannot prepare a full store\n");
        return NULL;
    }
    return s;
}

/* Runs SQL against the closed database behind the store's back. */
static bool sql(const struct tdir *t, const char *q)
{
    sqlite3 *db;
    char *msg = NULL;
    bool ok = sqlite3_open(t->db, &db) == SQLITE_OK &&
              sqlite3_exec(db, q, NULL, NULL, &msg) == SQLITE_OK;
    if (!ok)
        fprintf(stderr, "    sql %s: %s\n", q, msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(db);
    return ok;
}

static bool has(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL) {
        fprintf(stderr, "    \"%s\" not in \"%s\"\n", needle, hay);
        return false;
    }
    return true;
}

/* A database with entries 1..n (term 1..), hs term 3, closed. */
static bool build_db(const struct tdir *t, size_t n)
{
    struct store *s = open_ok(t);
    if (!s)
        return false;
    struct raft_hard_state hs = {3, 2, 0};
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i += 100) {
        size_t k = PZ_MIN(100, n - i);
        rc = write_range(s, i + 1, k, 1 + (i * 3) / n, &hs);
    }
    store_close(s);
    return rc == 0;
}

/* The closed database holds want_n entries, the last of term last_term,
 * and hard state term hs_term; with `whole`, entries 1..want_n all of
 * term last_term, each whole (entry_ok). */
static bool log_check(const struct tdir *t, size_t want_n, uint64_t last_term,
                      uint64_t hs_term, bool whole)
{
    struct store *s = open_ok(t);
    if (!s)
        return false;
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    bool ok = store_load(s, &hs, &e, &n, NULL) == 0;
    if (ok) {
        ok = n == want_n && hs.term == hs_term &&
             (n == 0 || e[n - 1].term == last_term);
        if (!ok)
            fprintf(stderr,
                    "    log: n %zu (want %zu), hs term %" PRIu64
                    " (want %" PRIu64 ")\n",
                    n, want_n, hs.term, hs_term);
        for (size_t i = 0; i < n && ok && whole; i++)
            ok = entry_ok(&e[i], i + 1, last_term);
        free_entries(e, n);
    }
    store_close(s);
    return ok;
}

static bool log_is(const struct tdir *t, size_t want_n, uint64_t last_term,
                   uint64_t hs_term)
{
    return log_check(t, want_n, last_term, hs_term, false);
}

static bool log_whole(const struct tdir *t, size_t want_n, uint64_t term,
                      uint64_t hs_term)
{
    return log_check(t, want_n, term, hs_term, true);
}

/* --- basics --------------------------------------------------------------- */

TEST(round_trip)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct stat st;
    CHECK(stat(t.data, &st) == 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0700);
    CHECK_EQ_STR(store_path(s), t.db);

    struct raft_hard_state hs = {9, 9, 9};
    struct raft_entry *e;
    size_t n = 99;
    struct store_meta m;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, &m), 0);
    CHECK_EQ_INT(n, 0);
    CHECK(e == NULL);
    CHECK(hs.term == 0 && hs.vote == 0 && hs.commit == 0);
    CHECK_EQ_INT(m.schema_version, STORE_SCHEMA_VERSION);
    CHECK(m.created_ms > 1600000000000LL);
    CHECK(m.cluster_id == 0 && m.node_id == 0 && m.node_name[0] == 0);
    CHECK(m.snap_index == 0 && m.snap_term == 0);

    struct raft_hard_state w = {1, 0, 0};
    CHECK_EQ_INT(write_range(s, 1, 3, 1, &w), 0);
    w = (struct raft_hard_state){2, 7, 3};
    CHECK_EQ_INT(write_range(s, 4, 7, 2, &w), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.batches, 2);
    CHECK_EQ_INT(ss.entries, 10);
    CHECK_EQ_INT(ss.hs_writes, 2);
    CHECK_EQ_INT(ss.last_batch_entries, 7);
    CHECK_EQ_INT(ss.max_batch_entries, 7);
    CHECK_EQ_INT(ss.last_index, 10);
    CHECK_EQ_INT(ss.first_index, 1);
    CHECK(ss.bytes > 0 && ss.commit_ns > 0 && ss.write_ns >= ss.commit_ns);
    store_close(s);

    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, &m), 0);
    CHECK(hs.term == 2 && hs.vote == 7 && hs.commit == 3);
    CHECK_EQ_INT(n, 10);
    for (size_t i = 0; i < n; i++)
        CHECK(entry_ok(&e[i], i + 1, i < 3 ? 1 : 2));
    free_entries(e, n);
    store_close(s);
    tdir_free(&t);
}

/* Batches of every size from 1 to 20 (rows go in by eight, four, two and
 * one per statement): every entry reads back whole, in order, with its
 * checksum. */
TEST(batch_sizes_round_trip)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state w = {1, 0, 0};
    uint64_t next = 1;
    for (size_t k = 1; k <= 20; k++) {
        CHECK_EQ_INT(write_range(s, next, k, 1, &w), 0);
        next += k;
    }
    store_close(s);
    CHECK(log_whole(&t, next - 1, 1, 1));
    tdir_free(&t);
}

TEST(overwrite_from_lower_index)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 1, 0};
    CHECK_EQ_INT(write_range(s, 1, 10, 1, &hs), 0);
    /* A new leader of term 3 overwrites from index 6 with 2 entries. */
    hs.term = 3;
    CHECK_EQ_INT(write_range(s, 6, 2, 3, &hs), 0);
    store_close(s);

    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 7);
    for (size_t i = 0; i < n; i++)
        CHECK(entry_ok(&e[i], i + 1, i < 5 ? 1 : 3));
    free_entries(e, n);
    /* The whole log replaced from index 1, then continued. */
    hs.term = 4;
    CHECK_EQ_INT(write_range(s, 1, 2, 4, &hs), 0);
    CHECK_EQ_INT(write_range(s, 3, 1, 4, NULL), 0);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 3);
    for (size_t i = 0; i < n; i++)
        CHECK(entry_ok(&e[i], i + 1, 4));
    free_entries(e, n);
    store_close(s);
    tdir_free(&t);
}

TEST(hard_state_only)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {5, 2, 0};
    CHECK_EQ_INT(store_write_sync(s, &hs, NULL, 0), 0);
    hs.vote = 0;
    hs.term = 6;
    CHECK_EQ_INT(store_write_sync(s, &hs, NULL, 0), 0);
    /* Terms never go back. */
    struct raft_hard_state back = {4, 1, 0};
    CHECK_EQ_INT(store_write_sync(s, &back, NULL, 0), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "go back"));
    /* One vote per term: once cast, neither changed nor cleared. */
    struct raft_hard_state revote = {6, 0, 0};
    CHECK_EQ_INT(store_write_sync(s, &revote, NULL, 0), 0);
    revote.vote = 3;
    CHECK_EQ_INT(store_write_sync(s, &revote, NULL, 0), 0);
    revote.vote = 2;
    CHECK_EQ_INT(store_write_sync(s, &revote, NULL, 0), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "vote in term 6 would change"));
    revote.vote = 0;
    CHECK_EQ_INT(store_write_sync(s, &revote, NULL, 0), PZ_EINVAL);
    revote = (struct raft_hard_state){6, 3, 1};
    CHECK_EQ_INT(store_write_sync(s, &revote, NULL, 0), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.batches, 5);
    CHECK_EQ_INT(ss.hs_writes, 5);
    CHECK_EQ_INT(ss.entries, 0);
    store_close(s);

    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
    CHECK(hs.term == 6 && hs.vote == 3 && hs.commit == 1);
    CHECK_EQ_INT(n, 0);
    store_close(s);
    tdir_free(&t);
}

struct empty_ctx {
    bool in_call; /* inside store_write */
    int calls;    /* callbacks seen */
    int status;   /* last status */
};

static void empty_cb(struct store *s, int status, const char *msg, void *arg)
{
    struct empty_ctx *c = arg;
    PZ_UNUSED(s);
    PZ_UNUSED(msg);
    if (c->in_call)
        c->status = -1000; /* called from inside store_write */
    else
        c->status = status;
    c->calls++;
}

TEST(empty_batches)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_write_sync(s, NULL, NULL, 0), 0);
    struct raft_entry none;
    CHECK_EQ_INT(store_write_sync(s, NULL, &none, 0), 0);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    struct empty_ctx c = {0};
    c.in_call = true;
    CHECK_EQ_INT(store_write(s, &loop, NULL, NULL, 0, empty_cb, &c), 0);
    c.in_call = false;
    CHECK(store_busy(s));
    CHECK_EQ_INT(c.calls, 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(c.calls, 1);
    CHECK_EQ_INT(c.status, 0);
    CHECK(!store_busy(s));
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.batches, 0);
    CHECK_EQ_INT(ss.last_index, 0);
    store_close(s);
    tdir_free(&t);
}

TEST(invalid_batches_refused)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {2, 0, 0};
    CHECK_EQ_INT(write_range(s, 1, 4, 2, &hs), 0);
    /* Beyond last + 1: would leave a gap. */
    CHECK_EQ_INT(write_range(s, 6, 1, 2, NULL), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "outside the writable range"));
    /* Index 0. */
    CHECK_EQ_INT(write_range(s, 0, 1, 2, NULL), PZ_EINVAL);
    /* Term above the hard state's. */
    CHECK_EQ_INT(write_range(s, 5, 1, 3, NULL), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "above the hard state"));
    /* Term below the previous entry's. */
    CHECK_EQ_INT(write_range(s, 5, 1, 1, NULL), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "terms decrease"));
    /* Not contiguous. */
    struct raft_entry *e = mk_entries(5, 3, 2);
    e[2].index = 8;
    CHECK_EQ_INT(store_write_sync(s, NULL, e, 3), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "not contiguous"));
    free_entries(e, 3);
    /* Overwrite whose term is below the kept entry before it: found
     * inside the transaction, which is rolled back. */
    hs.term = 5;
    CHECK_EQ_INT(write_range(s, 3, 2, 5, &hs), 0);
    CHECK_EQ_INT(write_range(s, 4, 1, 4, NULL), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "below the stored term"));
    /* That one was found mid-transaction: the store is failed now. */
    CHECK_EQ_INT(write_range(s, 4, 1, 5, NULL), PZ_EIO);
    CHECK(has(store_errmsg(s), "earlier failure"));
    store_close(s);

    s = open_ok(&t);
    CHECK(s != NULL);
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 4);
    CHECK(entry_ok(&e[0], 1, 2) && entry_ok(&e[1], 2, 2));
    CHECK(entry_ok(&e[2], 3, 5) && entry_ok(&e[3], 4, 5));
    CHECK_EQ_INT(hs.term, 5);
    free_entries(e, n);
    store_close(s);
    tdir_free(&t);
}

/* --- the thread-pool path on a real loop ---------------------------------- */

struct pump {
    uv_loop_t loop;           /* the loop the test runs */
    uv_timer_t timer;         /* ticks while writes run */
    struct store *s;          /* store under test */
    struct raft_entry *batch; /* entries of the write in flight */
    size_t batch_n;           /* their number */
    uint64_t next_index;      /* first index of the next batch */
    uint64_t term;            /* term used */
    long done;                /* batches acknowledged */
    long target;              /* batches to write (0: until deadline) */
    uint64_t deadline;        /* uv_hrtime() limit when target is 0 */
    size_t fixed;             /* batch size if non-zero, else varying */
    int inflight;             /* writes started, not called back */
    int max_inflight;         /* highest inflight seen */
    bool in_call;             /* inside store_write */
    bool cb_in_call;          /* a callback ran inside store_write */
    long ticks;               /* timer ticks seen */
    int status;               /* first failure, or 0 */
    char errmsg[512];         /* its message */
};

static void pump_next(struct pump *p);

static void pump_cb(struct store *s, int status, const char *msg, void *arg)
{
    struct pump *p = arg;
    PZ_UNUSED(s);
    if (p->in_call)
        p->cb_in_call = true;
    p->inflight--;
    free_entries(p->batch, p->batch_n);
    p->batch = NULL;
    if (status) {
        p->status = status;
        snprintf(p->errmsg, sizeof p->errmsg, "%s", msg ? msg : "(null)");
        uv_close((uv_handle_t *)&p->timer, NULL);
        return;
    }
    p->done++;
    pump_next(p);
}

static void pump_next(struct pump *p)
{
    bool more = p->target ? p->done < p->target
                          : uv_hrtime() < p->deadline;
    if (!more) {
        uv_close((uv_handle_t *)&p->timer, NULL);
        return;
    }
    p->batch_n = p->fixed ? p->fixed : 1 + (size_t)(p->done * 7 % 20);
    p->batch = mk_entries(p->next_index, p->batch_n, p->term);
    p->next_index += p->batch_n;
    struct raft_hard_state hs = {p->term, 1, p->next_index - 1};
    p->in_call = true;
    int rc = store_write(p->s, &p->loop, p->done % 3 ? NULL : &hs, p->batch,
                         p->batch_n, pump_cb, p);
    p->in_call = false;
    if (rc) {
        p->status = rc;
        snprintf(p->errmsg, sizeof p->errmsg, "%s", store_errmsg(p->s));
        free_entries(p->batch, p->batch_n);
        p->batch = NULL;
        uv_close((uv_handle_t *)&p->timer, NULL);
        return;
    }
    p->inflight++;
    p->max_inflight = PZ_MAX(p->max_inflight, p->inflight);
}

static void pump_tick(uv_timer_t *t)
{
    struct pump *p = t->data;
    p->ticks++;
}

static void pump_init(struct pump *p, struct store *s, uint64_t term)
{
    memset(p, 0, sizeof *p);
    pz_assert(uv_loop_init(&p->loop) == 0);
    uv_timer_init(&p->loop, &p->timer);
    p->timer.data = p;
    uv_timer_start(&p->timer, pump_tick, 1, 1);
    p->s = s;
    p->term = term;
    struct store_stats ss;
    store_stats(s, &ss);
    p->next_index = ss.last_index + 1;
}

TEST(async_many_batches)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs0 = {4, 0, 0};
    CHECK_EQ_INT(store_write_sync(s, &hs0, NULL, 0), 0);
    struct pump p;
    pump_init(&p, s, 4);
    p.target = 600;
    pump_next(&p);
    CHECK_EQ_INT(uv_run(&p.loop, UV_RUN_DEFAULT), 0);
    if (p.status)
        fprintf(stderr, "    write failed: %s\n", p.errmsg);
    CHECK_EQ_INT(p.status, 0);
    CHECK_EQ_INT(p.done, 600);
    CHECK_EQ_INT(p.max_inflight, 1);
    CHECK(!p.cb_in_call);
    /* The loop kept turning while the pool wrote. */
    CHECK(p.ticks > 0);
    fprintf(stderr, "    600 batches, %ld timer ticks of 1 ms meanwhile\n",
            p.ticks);
    CHECK_EQ_INT(uv_loop_close(&p.loop), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.batches, 601);
    CHECK_EQ_INT(ss.entries, p.next_index - 1);
    CHECK_EQ_INT(ss.last_index, p.next_index - 1);
    CHECK_EQ_INT(ss.failures, 0);
    store_close(s);
    CHECK(log_whole(&t, p.next_index - 1, 4, 4));
    tdir_free(&t);
}

static void never_cb(struct store *s, int status, const char *msg, void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(status);
    PZ_UNUSED(msg);
    PZ_UNUSED(arg);
}

/* Completions of queued writes, in the order they come. */
struct order_ctx {
    int status[8];
    int n;
};

static void order_cb(struct store *s, int status, const char *errmsg,
                     void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(errmsg);
    struct order_ctx *c = arg;
    if (c->n < 8)
        c->status[c->n] = status;
    c->n++;
}

/* Writes queue behind one another (pipelined): each is checked against
 * what those before it leave, they run in order and complete in order. */
TEST(queued_writes_in_order)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    struct raft_hard_state h1 = {1, 1, 0}, h2 = {2, 2, 3};
    struct raft_entry *a = mk_entries(1, 3, 1), *b = mk_entries(4, 2, 2),
                      *c = mk_entries(3, 2, 2);
    struct order_ctx oc = {0};
    CHECK_EQ_INT(store_write(s, &loop, &h1, a, 3, order_cb, &oc), 0);
    /* term 2 needs the hard state of term 2, queued or not */
    CHECK_EQ_INT(store_write(s, &loop, NULL, b, 2, order_cb, &oc),
                 PZ_EINVAL);
    /* index 4 follows the queued 1..3, though none is stored yet */
    CHECK_EQ_INT(store_write(s, &loop, &h2, b, 2, order_cb, &oc), 0);
    /* a vote of the queued term cannot change */
    struct raft_hard_state h3 = {2, 3, 3};
    CHECK_EQ_INT(store_write(s, &loop, &h3, NULL, 0, order_cb, &oc),
                 PZ_EINVAL);
    /* overwrites 3..5 with 3..4 */
    CHECK_EQ_INT(store_write(s, &loop, NULL, c, 2, order_cb, &oc), 0);
    CHECK(store_busy(s));
    CHECK_EQ_INT(oc.n, 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(oc.n, 3);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(oc.status[i], 0);
    CHECK(!store_busy(s));
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    /* those queued while one ran may share its successor's transaction */
    CHECK(ss.batches >= 1 && ss.batches <= 3);
    CHECK_EQ_INT(ss.entries, 7);
    CHECK_EQ_INT(ss.last_index, 4);
    struct raft_hard_state lh;
    struct raft_entry *le;
    size_t ln;
    CHECK_EQ_INT(store_load(s, &lh, &le, &ln, NULL), 0);
    CHECK_EQ_INT(ln, 4);
    CHECK_EQ_INT(lh.term, 2);
    CHECK_EQ_INT(lh.vote, 2);
    CHECK(entry_ok(&le[1], 2, 1));
    CHECK(entry_ok(&le[2], 3, 2));
    CHECK(entry_ok(&le[3], 4, 2));
    free_entries(le, ln);
    free_entries(a, 3);
    free_entries(b, 2);
    free_entries(c, 2);
    store_close(s);
    tdir_free(&t);
}

/* A write that fails stops the queue: those behind it are not run
 * (PZ_ECANCELED), after a full disk as after an I/O error; after a full
 * disk, the same writes go again, in order, once there is room. */
TEST(failed_write_cancels_queued)
{
    struct tdir t;
    struct store *s = open_full(&t);
    CHECK(s != NULL);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    struct raft_hard_state h2 = {2, 0, 0};
    struct raft_entry *e = mk_entries(6, 400, 2), *f = mk_entries(406, 2, 2);
    struct order_ctx oc = {0};
    CHECK_EQ_INT(store_write(s, &loop, &h2, e, 400, order_cb, &oc), 0);
    CHECK_EQ_INT(store_write(s, &loop, NULL, f, 2, order_cb, &oc), 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(oc.n, 2);
    CHECK_EQ_INT(oc.status[0], PZ_ENOSPC);
    CHECK_EQ_INT(oc.status[1], PZ_ECANCELED);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.nospace, 1);
    CHECK_EQ_INT(ss.failures, 0);
    CHECK_EQ_INT(ss.last_index, 5);
    /* room again: both, in order */
    CHECK_EQ_INT(store_test_max_pages(s, 0), 0);
    oc.n = 0;
    CHECK_EQ_INT(store_write(s, &loop, NULL, f, 2, order_cb, &oc),
                 PZ_EINVAL); /* 406 does not follow 5 */
    CHECK_EQ_INT(store_write(s, &loop, &h2, e, 400, order_cb, &oc), 0);
    CHECK_EQ_INT(store_write(s, &loop, NULL, f, 2, order_cb, &oc), 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(oc.n, 2);
    CHECK_EQ_INT(oc.status[0], 0);
    CHECK_EQ_INT(oc.status[1], 0);
    /* an I/O error: the store fails, the write behind is not run */
    struct raft_entry *g = mk_entries(408, 1, 2), *h = mk_entries(409, 1, 2);
    store_fail_at(s, 2);
    oc.n = 0;
    CHECK_EQ_INT(store_write(s, &loop, NULL, g, 1, order_cb, &oc), 0);
    CHECK_EQ_INT(store_write(s, &loop, NULL, h, 1, order_cb, &oc), 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(oc.n, 2);
    CHECK(oc.status[0] < 0 && oc.status[0] != PZ_ECANCELED);
    CHECK_EQ_INT(oc.status[1], PZ_ECANCELED);
    CHECK_EQ_INT(store_write(s, &loop, NULL, g, 1, order_cb, &oc), PZ_EIO);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    store_close(s);
    CHECK(log_is(&t, 407, 2, 2));
    free_entries(e, 400);
    free_entries(f, 2);
    free_entries(g, 1);
    free_entries(h, 1);
    tdir_free(&t);
}

struct cancel_ctx {
    int n, first, canceled, other;
};

static void cancel_cb(struct store *s, int status, const char *errmsg,
                      void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(errmsg);
    struct cancel_ctx *c = arg;
    if (c->n++ == 0)
        c->first = status;
    else if (status == PZ_ECANCELED)
        c->canceled++;
    else
        c->other++;
}

/* More writes queued behind a failing one than one transaction takes (64
 * batches): those merged into its transaction roll back with it, and the
 * rest are cancelled without running; run, they would leave a gap in the
 * log (index 406 on a log that ends at 5). */
TEST(failed_write_cancels_beyond_its_transaction)
{
    enum { BEHIND = 70 };
    struct tdir t;
    struct store *s = open_full(&t);
    CHECK(s != NULL);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    struct raft_entry *e = mk_entries(6, 400, 1), *f[BEHIND];
    struct cancel_ctx cc = {0};
    CHECK_EQ_INT(store_write(s, &loop, NULL, e, 400, cancel_cb, &cc), 0);
    for (int i = 0; i < BEHIND; i++) {
        f[i] = mk_entries(406 + (uint64_t)i, 1, 1);
        CHECK_EQ_INT(store_write(s, &loop, NULL, f[i], 1, cancel_cb, &cc), 0);
    }
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(cc.n, 1 + BEHIND);
    CHECK_EQ_INT(cc.first, PZ_ENOSPC);
    CHECK_EQ_INT(cc.canceled, BEHIND);
    CHECK_EQ_INT(cc.other, 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT((int)ss.last_index, 5);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    store_close(s);
    CHECK(log_is(&t, 5, 1, 1));
    free_entries(e, 400);
    for (int i = 0; i < BEHIND; i++)
        free_entries(f[i], 1);
    tdir_free(&t);
}

/* Nothing else touches the database while writes are queued. */
TEST(sync_call_while_queued_asserts)
{
    struct tdir t;
    tdir_init(&t);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        struct store *s = open_ok(&t);
        if (!s)
            _exit(3);
        uv_loop_t loop;
        uv_loop_init(&loop);
        struct raft_hard_state hs = {1, 0, 0};
        struct raft_entry *e = mk_entries(1, 2, 1);
        if (store_write(s, &loop, &hs, e, 2, never_cb, NULL) != 0)
            _exit(4);
        store_write_sync(s, NULL, e, 2);
        _exit(0); /* not reached: the sync write must abort */
    }
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(WIFSIGNALED(st));
    CHECK_EQ_INT(WTERMSIG(st), SIGABRT);
    tdir_free(&t);
}

/* --- damaged files are refused -------------------------------------------- */

static bool overwrite(const char *path, off_t off, size_t len, uint64_t seed)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0)
        return false;
    uint8_t *buf = pz_malloc(len);
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)pz_rand_next(&seed);
    bool ok = pwrite(fd, buf, len, off) == (ssize_t)len;
    pz_free(buf);
    close(fd);
    return ok;
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

TEST(garbage_header_refused)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 50));
    CHECK(file_size(t.db) > 0);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", t.db);
    CHECK(file_size(wal) < 0); /* checkpointed and removed on close */
    CHECK(overwrite(t.db, 0, 100, 1));
    char err[512];
    struct store *s = NULL;
    int rc = store_open(t.data, &s, err, sizeof err);
    fprintf(stderr, "    -> %s\n", err);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(s == NULL);
    CHECK(has(err, t.db));
    CHECK(has(err, "not an SQLite database"));
    tdir_free(&t);
}

TEST(garbage_pages_refused)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 3000));
    off_t size = file_size(t.db);
    CHECK(size > 40 * 4096);
    /* Garbage over a few pages in the middle of the log's b-tree. */
    CHECK(overwrite(t.db, (size / 4096 / 2) * 4096 + 100, 3 * 4096, 2));
    char err[512];
    int rc = open_load(&t, err, sizeof err);
    fprintf(stderr, "    -> %s\n", err);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(has(err, t.db));
    tdir_free(&t);
}

TEST(truncated_file_refused)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 3000));
    off_t size = file_size(t.db);
    CHECK(truncate(t.db, size / 2) == 0);
    char err[512];
    int rc = open_load(&t, err, sizeof err);
    fprintf(stderr, "    -> %s\n", err);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(has(err, t.db));
    /* Truncated to nothing: must not pass for a fresh node. */
    CHECK(truncate(t.db, 0) == 0);
    rc = open_load(&t, err, sizeof err);
    fprintf(stderr, "    -> %s\n", err);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(has(err, "empty file"));
    CHECK_EQ_INT(file_size(t.db), 0);
    tdir_free(&t);
}

TEST(orphan_wal_refused)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 10));
    CHECK(unlink(t.db) == 0);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", t.db);
    int fd = open(wal, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0);
    close(fd);
    char err[512];
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "-wal exists"));
    CHECK(file_size(t.db) < 0);
    tdir_free(&t);
}

/* Damage done with SQL behind the store's back, and what must be said. */
struct tamper {
    const char *sql;  /* run on the closed database */
    int rc;           /* expected from open or load */
    const char *msg;  /* expected in the message */
};

TEST(tampered_rows_refused)
{
    static const struct tamper cases[] = {
        {"DELETE FROM log WHERE idx = 50", PZ_ECORRUPT, "gap in the log"},
        {"DELETE FROM log WHERE idx = 1", PZ_ECORRUPT, "gap in the log"},
        /* Without their checksums (rows of a version 1 file), the log's
         * own rules still catch these. */
        {"UPDATE log SET term = 2, crc = NULL WHERE idx = 50", PZ_ECORRUPT,
         "term decreases"},
        {"UPDATE log SET term = 9, crc = NULL WHERE idx = 90", PZ_ECORRUPT,
         "above the hard state"},
        {"UPDATE log SET type = 77, crc = NULL WHERE idx = 3", PZ_ECORRUPT,
         "unknown entry type"},
        /* With them, any change to a row. */
        {"UPDATE log SET term = 2 WHERE idx = 50", PZ_ECORRUPT,
         "log entry 50 (row idx = 50 of table log, 0 payload bytes) fails "
         "its checksum"},
        {"UPDATE log SET data = CAST(X'00' || substr(data, 2) AS BLOB) WHERE "
         "idx = 42",
         PZ_ECORRUPT, "log entry 42 (row idx = 42"},
        {"UPDATE log SET type = 1 WHERE idx = 3", PZ_ECORRUPT,
         "log entry 3 (row idx = 3"},
        {"DELETE FROM hard_state", PZ_ECORRUPT, "hard state row is missing"},
        {"UPDATE hard_state SET term = -1", PZ_ECORRUPT,
         "hard state has negative values"},
        /* a vote in term 0, with nothing else stored: no node writes it */
        {"DELETE FROM log; UPDATE hard_state SET term = 0, vote = 7, "
         "commit_index = 0",
         PZ_ECORRUPT, "0 only with no log, snapshot or vote"},
        {"UPDATE meta SET value = '99' WHERE key = 'schema_version'",
         PZ_ECORRUPT, "unknown schema version 99"},
        {"UPDATE meta SET value = '1e3' WHERE key = 'node_id'", PZ_ECORRUPT,
         "bad value"},
        /* kept in signed 64-bit columns elsewhere: 2^63 is no value */
        {"UPDATE meta SET value = '9223372036854775808' WHERE key = "
         "'snapshot_term'",
         PZ_ECORRUPT, "meta snapshot_term has a bad value"},
        {"DELETE FROM meta WHERE key = 'snapshot_index'", PZ_ECORRUPT,
         "snapshot_index is missing"},
        {"UPDATE meta SET value = '60' WHERE key = 'snapshot_index'",
         PZ_ECORRUPT, "snapshot index"},
        {"DROP TABLE log", PZ_ECORRUPT, "schema does not match"},
        {"DROP TABLE log5", PZ_ECORRUPT, "no such table: log5"},
        /* an entry outside its segment's table (segments of 32768) */
        {"INSERT INTO log3 SELECT * FROM log WHERE idx = 50;"
         "DELETE FROM log WHERE idx = 50",
         PZ_ECORRUPT,
         "out of its segment's table: table log holds 99 entries where the "
         "log from 1 to 100 has 100"},
        {"INSERT INTO log5 SELECT * FROM log WHERE idx = 50", PZ_ECORRUPT,
         "table log5 holds 1 entries where the log from 1 to 100 has 0"},
        {"UPDATE meta SET value = '1000' WHERE key = 'log_segment'",
         PZ_ECORRUPT, "meta log_segment has a bad value \"1000\""},
        {"DELETE FROM meta WHERE key = 'log_segment'", PZ_ECORRUPT,
         "log_segment is missing"},
        {"PRAGMA application_id = 7", PZ_ECORRUPT,
         "not a PyazDB raft log (application_id 7)"},
        {"DROP TABLE log; DROP TABLE log1; DROP TABLE log2; DROP TABLE log3;"
         "DROP TABLE log4; DROP TABLE log5; DROP TABLE log6; DROP TABLE log7;"
         "DROP TABLE meta; DROP TABLE hard_state; PRAGMA application_id = 0",
         PZ_ECORRUPT, "no schema"},
        {"DROP TABLE log; DROP TABLE meta; DROP TABLE hard_state;"
         "PRAGMA application_id = 0",
         PZ_ECORRUPT, "not a PyazDB raft log (application_id 0)"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        struct tdir t;
        tdir_init(&t);
        CHECK(build_db(&t, 100));
        char err[512];
        CHECK_EQ_INT(open_load(&t, err, sizeof err), 0);
        CHECK(sql(&t, cases[i].sql));
        int rc = open_load(&t, err, sizeof err);
        fprintf(stderr, "    %s -> %s\n", cases[i].sql, err);
        CHECK_EQ_INT(rc, cases[i].rc);
        CHECK(has(err, t.db));
        CHECK(has(err, cases[i].msg));
        tdir_free(&t);
    }
    /* A restart reads only the log's end (store_load_from): a gap at
     * its start is found when the store opens, not by that read. */
    {
        struct tdir t;
        tdir_init(&t);
        CHECK(build_db(&t, 100));
        CHECK(sql(&t, "DELETE FROM log WHERE idx = 1"));
        struct store *s = NULL;
        char err[512] = "";
        int rc = store_open(t.data, &s, err, sizeof err);
        if (rc == 0) {
            struct raft_hard_state hs;
            struct raft_entry *e;
            size_t n;
            rc = store_load_from(s, 90, &hs, &e, &n, NULL);
            if (rc == 0)
                free_entries(e, n);
            store_close(s);
        }
        CHECK_EQ_INT(rc, PZ_ECORRUPT);
        CHECK(has(err, "gap in the log: it starts at index 2"));
        tdir_free(&t);
    }
    /* Losing a suffix is indistinguishable from a shorter log (a valid
     * prefix): accepted. */
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 100));
    CHECK(sql(&t, "DELETE FROM log WHERE idx > 80"));
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 80);
    free_entries(e, n);
    store_close(s);
    tdir_free(&t);
}

TEST(second_process_locked_out)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        char err[512] = "";
        struct store *s2 = NULL;
        int rc = store_open(t.data, &s2, err, sizeof err);
        ssize_t w = write(pfd[1], err, strlen(err) + 1);
        PZ_UNUSED(w);
        _exit(rc == PZ_EBUSY ? 0 : 1);
    }
    close(pfd[1]);
    char err[512] = "";
    ssize_t r = read(pfd[0], err, sizeof err - 1);
    close(pfd[0]);
    CHECK(r > 0);
    int st = 0;
    CHECK(waitpid(pid, &st, 0) == pid);
    fprintf(stderr, "    -> %s\n", err);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(has(err, "locked by another process"));
    /* The holder is unaffected. */
    CHECK_EQ_INT(write_range(s, 1, 3, 0, NULL), 0);
    store_close(s);
    tdir_free(&t);
}

/* --- fault injection ------------------------------------------------------ */

TEST(fault_injection_sync)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 1, 0};
    CHECK_EQ_INT(write_range(s, 1, 5, 1, &hs), 0);
    store_close(s);
    /* Append 3 entries + hs: BEGIN, INSERT of 2, INSERT of 1, UPDATE,
     * COMMIT. Overwrite from 4 adds the read of the term at 3 and the
     * DELETE of the entries from 4 on. */
    for (int overwrite_mode = 0; overwrite_mode < 2; overwrite_mode++) {
        uint64_t first = overwrite_mode ? 4 : 6;
        int steps = overwrite_mode ? 7 : 5;
        for (int k = 1; k <= steps + 1; k++) {
            s = open_ok(&t);
            CHECK(s != NULL);
            store_fail_at(s, k);
            struct raft_hard_state h2 = {2, 0, 0};
            int rc = write_range(s, first, 3, 2, &h2);
            if (k <= steps) {
                CHECK_EQ_INT(rc, PZ_EIO);
                CHECK(has(store_errmsg(s), "injected"));
                CHECK(has(store_errmsg(s), t.db));
                struct store_stats ss;
                store_stats(s, &ss);
                CHECK_EQ_INT(ss.failures, 1);
                CHECK_EQ_INT(ss.batches, 0);
                CHECK_EQ_INT(ss.last_index, 5);
                /* Fail-stop: no later write is accepted. */
                CHECK_EQ_INT(write_range(s, 6, 1, 1, NULL), PZ_EIO);
                store_close(s);
                CHECK(log_is(&t, 5, 1, 1));
            } else {
                CHECK_EQ_INT(rc, 0);
                store_close(s);
                CHECK(log_is(&t, first + 2, 2, 2));
            }
        }
        /* Back to 5 entries of term 1 for the next mode. */
        CHECK(sql(&t, "DELETE FROM log WHERE idx > 5;"
                      "UPDATE log SET term = 1;"
                      "UPDATE hard_state SET term = 1"));
    }
    tdir_free(&t);
}

TEST(fault_injection_async)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 0, 0};
    CHECK_EQ_INT(store_write_sync(s, &hs, NULL, 0), 0);
    struct pump p;
    pump_init(&p, s, 1);
    p.target = 1000;
    p.fixed = 4;
    /* Each batch of 4 without hs has 3 steps (BEGIN, one INSERT of 4,
     * COMMIT); every third carries hs (4): fail at the INSERT of the
     * batch after 11. */
    store_fail_at(s, 7 * 3 + 4 * 4 + 2);
    pump_next(&p);
    CHECK_EQ_INT(uv_run(&p.loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(uv_loop_close(&p.loop), 0);
    fprintf(stderr, "    -> %s\n", p.errmsg);
    CHECK_EQ_INT(p.status, PZ_EIO);
    CHECK_EQ_INT(p.done, 11);
    CHECK(has(p.errmsg, "injected"));
    CHECK(!store_busy(s));
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.failures, 1);
    CHECK_EQ_INT(ss.last_index, 44);
    store_close(s);
    CHECK(log_is(&t, 44, 1, 1));
    tdir_free(&t);
}

/* What a start pays to check the log: PRAGMA quick_check at open, the
 * rows' checksums at load (printed, not asserted). */
TEST(bench_start_checks)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 1, 0};
    size_t total = 200000, per = 5000;
    uint8_t val[256];
    memset(val, 'v', sizeof val);
    struct raft_entry *e = pz_calloc(per, sizeof *e);
    for (size_t i = 0; i < total; i += per) {
        for (size_t k = 0; k < per; k++) {
            e[k].index = i + k + 1;
            e[k].term = 1;
            e[k].type = RAFT_ENTRY_NORMAL;
            e[k].data = val;
            e[k].len = sizeof val;
        }
        CHECK_EQ_INT(store_write_sync(s, &hs, e, per), 0);
    }
    pz_free(e);
    store_close(s);
    struct stat st;
    CHECK(stat(t.db, &st) == 0);
    uint64_t t0 = uv_hrtime();
    s = open_ok(&t);
    CHECK(s != NULL);
    uint64_t t1 = uv_hrtime();
    struct raft_entry *le;
    size_t ln;
    CHECK_EQ_INT(store_load(s, &hs, &le, &ln, NULL), 0);
    uint64_t t2 = uv_hrtime();
    CHECK_EQ_INT(ln, total);
    free_entries(le, ln);
    store_close(s);
    CHECK(sql(&t, "UPDATE log SET crc = NULL"));
    s = open_ok(&t);
    CHECK(s != NULL);
    uint64_t t3 = uv_hrtime();
    CHECK_EQ_INT(store_load(s, &hs, &le, &ln, NULL), 0);
    uint64_t t4 = uv_hrtime();
    free_entries(le, ln);
    store_close(s);
    fprintf(stderr,
            "    %zu entries of %zu B, raft.db %lld MB: open (quick_check) "
            "%.0f ms, load %.0f ms with checksums, %.0f ms without\n",
            total, sizeof val, (long long)st.st_size >> 20,
            (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6,
            (double)(t4 - t3) / 1e6);
    tdir_free(&t);
}

/* SQL that turns a version 3 file into what a version 2 build wrote: one
 * table, log, for every entry, and no log_segment. */
#define AS_VERSION_2                                                           \
    "INSERT INTO log SELECT * FROM log1; INSERT INTO log SELECT * FROM log2;"  \
    "INSERT INTO log SELECT * FROM log3; INSERT INTO log SELECT * FROM log4;"  \
    "INSERT INTO log SELECT * FROM log5; INSERT INTO log SELECT * FROM log6;"  \
    "INSERT INTO log SELECT * FROM log7;"                                      \
    "DROP TABLE log1; DROP TABLE log2; DROP TABLE log3; DROP TABLE log4;"      \
    "DROP TABLE log5; DROP TABLE log6; DROP TABLE log7;"                       \
    "DELETE FROM meta WHERE key = 'log_segment';"                              \
    "UPDATE meta SET value = '2' WHERE key = 'schema_version';"

/* A version 1 file (no checksum column) is converted at open: its rows
 * keep no checksum and load, new ones get theirs. */
TEST(schema_1_is_converted)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 20));
    CHECK(sql(&t, AS_VERSION_2
              "ALTER TABLE log DROP COLUMN crc;"
              "UPDATE meta SET value = '1' WHERE key = 'schema_version'"));
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.schema_version, STORE_SCHEMA_VERSION);
    struct raft_hard_state hs = {3, 2, 0};
    CHECK_EQ_INT(write_range(s, 21, 5, 3, &hs), 0);
    store_close(s);
    CHECK(log_is(&t, 25, 3, 3));
    CHECK(sql(&t, "UPDATE log SET data = X'01' WHERE idx = 22"));
    char err[512];
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "log entry 22"));
    CHECK(sql(&t, "UPDATE log SET data = X'01' WHERE idx = 12"));
    CHECK(sql(&t, "UPDATE log SET crc = NULL WHERE idx = 22"));
    CHECK_EQ_INT(open_load(&t, err, sizeof err), 0); /* unchecked row */
    tdir_free(&t);
}

/* A write that finds no room (SQLITE_FULL, here from a page cap, as from
 * a full file system) is rolled back whole, leaves the store usable, and
 * the same batch goes through once there is room. */
TEST(full_disk_rolls_back_and_retries)
{
    struct tdir t;
    struct store *s = open_full(&t);
    CHECK(s != NULL);
    struct raft_hard_state h2 = {2, 0, 0};
    struct raft_entry *e = mk_entries(3, 400, 2); /* overwrites 3..5 */
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(store_write_sync(s, &h2, e, 400), PZ_ENOSPC);
        CHECK(has(store_errmsg(s), "full"));
        CHECK(has(store_errmsg(s), t.db));
    }
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.failures, 0);
    CHECK_EQ_INT(ss.nospace, 2);
    CHECK_EQ_INT(ss.last_index, 5);
    struct raft_hard_state lh;
    struct raft_entry *le;
    size_t ln;
    CHECK_EQ_INT(store_load(s, &lh, &le, &ln, NULL), 0);
    CHECK_EQ_INT(ln, 5);
    CHECK_EQ_INT(lh.term, 1);
    for (size_t i = 0; i < ln; i++)
        CHECK(entry_ok(&le[i], i + 1, 1));
    free_entries(le, ln);
    CHECK_EQ_INT(store_test_max_pages(s, 0), 0);
    CHECK_EQ_INT(store_write_sync(s, &h2, e, 400), 0);
    free_entries(e, 400);
    store_close(s);
    CHECK(log_is(&t, 402, 2, 2));
    tdir_free(&t);
}

/* --- compaction and meta -------------------------------------------------- */

/* An installed snapshot replaces the whole log in one transaction with the
 * hard state and the entries after it. */
TEST(install_snapshot_replaces_log)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {2, 1, 3};
    CHECK_EQ_INT(write_range(s, 1, 10, 2, &hs), 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct raft_hard_state hs2 = {4, 0, 20};
    struct raft_entry *e = mk_entries(21, 2, 4);
    struct empty_ctx c = {0};
    /* entries must follow the snapshot point */
    CHECK_EQ_INT(store_write_install(s, &loop, 20, 3, &hs2, e + 1, 1,
                                     empty_cb, &c),
                 PZ_EINVAL);
    CHECK_EQ_INT(store_write_install(s, &loop, 20, 3, &hs2, e, 2, empty_cb,
                                     &c),
                 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(c.calls, 1);
    CHECK_EQ_INT(c.status, 0);
    free_entries(e, 2);
    store_close(s);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);

    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_entry *le;
    size_t n;
    struct store_meta m;
    struct raft_hard_state lhs;
    CHECK_EQ_INT(store_load(s, &lhs, &le, &n, &m), 0);
    CHECK(m.snap_index == 20 && m.snap_term == 3);
    CHECK(lhs.term == 4 && lhs.commit == 20);
    CHECK_EQ_INT(n, 2);
    CHECK(entry_ok(&le[0], 21, 4) && entry_ok(&le[1], 22, 4));
    free_entries(le, n);
    store_close(s);
    tdir_free(&t);
}

TEST(compact_and_reload)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {3, 1, 8};
    CHECK_EQ_INT(write_range(s, 1, 5, 2, &hs), 0);
    CHECK_EQ_INT(write_range(s, 6, 5, 3, NULL), 0);
    CHECK_EQ_INT(store_compact(s, 4, 3), PZ_EINVAL); /* term is 2 there */
    CHECK(has(store_errmsg(s), "has term 2"));
    CHECK_EQ_INT(store_compact(s, 4, 2), 0);
    CHECK_EQ_INT(store_compact(s, 3, 2), 0); /* no-op */
    CHECK_EQ_INT(write_range(s, 4, 1, 3, NULL), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "outside the writable range"));
    store_close(s);

    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_entry *e;
    size_t n;
    struct store_meta m;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, &m), 0);
    CHECK(m.snap_index == 4 && m.snap_term == 2);
    CHECK_EQ_INT(n, 6);
    CHECK(entry_ok(&e[0], 5, 2));
    for (size_t i = 1; i < n; i++)
        CHECK(entry_ok(&e[i], 5 + i, 3));
    free_entries(e, n);
    /* Overwrite right after the snapshot point, then an installed
     * snapshot beyond the log. */
    CHECK_EQ_INT(write_range(s, 5, 2, 3, NULL), 0);
    CHECK_EQ_INT(store_compact(s, 15, 3), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK(ss.first_index == 16 && ss.last_index == 15);
    CHECK_EQ_INT(write_range(s, 16, 2, 3, NULL), 0);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, &m), 0);
    CHECK(m.snap_index == 15 && m.snap_term == 3);
    CHECK_EQ_INT(n, 2);
    CHECK(entry_ok(&e[0], 16, 3) && entry_ok(&e[1], 17, 3));
    free_entries(e, n);
    store_close(s);
    /* A log that no longer starts right after the snapshot: a gap. */
    CHECK(sql(&t, "DELETE FROM log WHERE idx = 16"));
    char err[512];
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "gap in the log"));
    tdir_free(&t);
}

/* Dropping a prefix of large entries writes (about) none of their bytes
 * again: no zeroing of freed overflow pages through the WAL, which for
 * a log of 1 MiB entries made a compaction step write as much as it
 * dropped. */
TEST(compact_does_not_rewrite_dropped_bytes)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    enum { N = 24, LEN = 512 * 1024 };
    struct raft_entry *e = pz_calloc(N, sizeof *e);
    for (size_t i = 0; i < N; i++) {
        e[i].index = i + 1;
        e[i].term = 1;
        e[i].len = LEN;
        e[i].data = pz_malloc(LEN);
        memset(e[i].data, 'a' + (int)i, LEN);
    }
    struct raft_hard_state hs = {1, 1, N};
    CHECK_EQ_INT(store_write_sync(s, &hs, e, N), 0);
    store_close(s); /* checkpoints: the WAL is gone */
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", t.db);
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_compact(s, N - 2, 1), 0);
    off_t w = file_size(wal);
    CHECK(w >= 0 && w < (off_t)(N * LEN) / 8);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_entry *got;
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &got, &n, NULL), 0);
    CHECK_EQ_INT(n, 2);
    CHECK(got[1].index == N && got[1].len == LEN &&
          memcmp(got[1].data, e[N - 1].data, LEN) == 0);
    free_entries(got, n);
    store_close(s);
    free_entries(e, N);
    tdir_free(&t);
}

/* Writes entry `index` alone: len bytes of 'a' + (index - 1) % 26. */
static int write_big(struct store *s, uint64_t index, size_t len)
{
    struct raft_hard_state hs = {1, 1, 0};
    struct raft_entry e = {.index = index, .term = 1, .len = len};
    e.data = pz_malloc(len);
    memset(e.data, 'a' + (int)((index - 1) % 26), len);
    int rc = store_write_sync(s, &hs, &e, 1);
    pz_free(e.data);
    return rc;
}

/* Loads s: n entries, the last as write_big wrote it. */
static bool loads_big(struct store *s, size_t n, size_t len)
{
    struct raft_hard_state hs;
    struct raft_entry *got;
    size_t got_n;
    if (store_load(s, &hs, &got, &got_n, NULL) != 0)
        return false;
    bool ok = got_n == n && got[n - 1].len == len &&
              got[n - 1].data[0] == 'a' + (int)((n - 1) % 26);
    free_entries(got, got_n);
    return ok;
}

/* A fresh store, and the path of its WAL in wal. */
static struct store *open_with_wal(struct tdir *t, char *wal, size_t len)
{
    tdir_init(t);
    snprintf(wal, len, "%s-wal", t->db);
    return open_ok(t);
}

/* The store checkpoints its WAL itself once a commit leaves it 1,000
 * frames long, times the checkpoint apart from the COMMIT, and writes the
 * WAL over from its start: after 120 writes of 40 KB (some 1,300 pages)
 * it never grew past the first 1,000 frames and a few. */
TEST(wal_checkpointed_after_1000_frames)
{
    struct tdir t;
    char wal[160];
    struct store *s = open_with_wal(&t, wal, sizeof wal);
    CHECK(s != NULL);
    enum { N = 120, LEN = 40000 };
    struct store_stats ss;
    uint64_t seen = 0;
    for (size_t i = 1; i <= N; i++) {
        CHECK_EQ_INT(write_big(s, i, LEN), 0);
        store_stats(s, &ss);
        /* a checkpoint is counted with the batch whose COMMIT it followed */
        CHECK((ss.last_checkpoint_ns > 0) == (ss.checkpoints > seen));
        seen = ss.checkpoints;
    }
    CHECK(ss.checkpoints >= 1 && ss.checkpoints <= 2);
    CHECK(ss.checkpoint_ns > 0 && ss.checkpoint_failures == 0);
    CHECK(ss.write_ns >= ss.commit_ns + ss.checkpoint_ns);
    off_t w = file_size(wal);
    fprintf(stderr, "    %llu checkpoints, WAL %lld bytes\n",
            (unsigned long long)ss.checkpoints, (long long)w);
    CHECK(w > 0 && w < 1100 * (4096 + 24));
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK(loads_big(s, N, LEN));
    store_close(s);
    tdir_free(&t);
}

/* A checkpoint that fails loses nothing: the WAL keeps every page and
 * grows, each failure is counted with its reason, a store closed then
 * (no checkpoint at close either) loads every entry from the WAL, the
 * first checkpoint that works counts as one, and the stats say whether
 * the latest failed. */
TEST(failed_checkpoints_keep_the_wal)
{
    struct tdir t;
    char wal[160];
    struct store *s = open_with_wal(&t, wal, sizeof wal);
    CHECK(s != NULL);
    enum { N = 120, LEN = 40000 };
    store_test_checkpoint_fail(s, true);
    for (size_t i = 1; i <= N; i++)
        CHECK_EQ_INT(write_big(s, i, LEN), 0);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK(ss.checkpoints == 0 && ss.checkpoint_failures >= 20);
    CHECK(ss.checkpoint_failing);
    CHECK(ss.checkpoint_error != NULL &&
          strstr(ss.checkpoint_error, "I/O") != NULL);
    CHECK(ss.last_checkpoint_ns > 0); /* tried: the loop's bound sees it */
    store_close(s);
    CHECK(file_size(wal) > 1200 * (4096 + 24));
    s = open_ok(&t); /* from the WAL alone */
    CHECK(s != NULL);
    CHECK(loads_big(s, N, LEN));
    CHECK_EQ_INT(write_big(s, N + 1, LEN), 0);
    store_stats(s, &ss);
    CHECK(ss.checkpoints == 1 && ss.checkpoint_failures == 0);
    CHECK(!ss.checkpoint_failing);
    /* the latest says: failing, then not once one works again */
    store_test_checkpoint_fail(s, true);
    for (size_t i = N + 2; i <= N + 120; i++)
        CHECK_EQ_INT(write_big(s, i, LEN), 0);
    store_stats(s, &ss);
    CHECK(ss.checkpoint_failures > 0 && ss.checkpoint_failing);
    store_test_checkpoint_fail(s, false);
    CHECK_EQ_INT(write_big(s, N + 121, LEN), 0);
    store_stats(s, &ss);
    CHECK(ss.checkpoints == 2 && !ss.checkpoint_failing);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK(loads_big(s, N + 121, LEN));
    store_close(s);
    tdir_free(&t);
}

/* The raft.db of a --restore carries meta restoring from its creation
 * (a new raft.db of a plain open does not), across reopens, until
 * store_restore_done clears it with the identity, in one transaction. */
TEST(restoring_marked_until_done)
{
    struct tdir t;
    tdir_init(&t);
    char err[STORE_ERRMSG_SIZE];
    struct store *s = NULL;
    struct store_meta m;
    CHECK_EQ_INT(store_create_restoring(t.data, &s, err, sizeof err), 0);
    store_meta_get(s, &m);
    CHECK(m.restoring);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(m.restoring);
    /* an identity alone leaves the mark */
    CHECK_EQ_INT(store_meta_set(s, 0, 7, NULL), 0);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(m.restoring && m.node_id == 7);
    CHECK_EQ_INT(store_restore_done(s, 5, 7, "node-a"), 0);
    store_meta_get(s, &m);
    CHECK(!m.restoring);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(!m.restoring && m.cluster_id == 5 && m.node_id == 7);
    CHECK_EQ_STR(m.node_name, "node-a");
    store_close(s);
    /* only into a directory without raft.db */
    s = NULL;
    CHECK_EQ_INT(store_create_restoring(t.data, &s, err, sizeof err),
                 PZ_EINVAL);
    CHECK(s == NULL && has(err, "exists already"));
    CHECK(sql(&t, "INSERT INTO meta VALUES ('restoring', 'yes')"));
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "meta restoring has a bad value"));
    tdir_free(&t);
    /* a plain open's new raft.db is not marked */
    tdir_init(&t);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(!m.restoring);
    store_close(s);
    tdir_free(&t);
}

TEST(meta_set_once)
{
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    const uint64_t cid = 0xfedcba9876543210ull; /* above INT64_MAX */
    CHECK_EQ_INT(store_meta_set(s, 0, 7, "node-a"), 0);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK(m.cluster_id == 0 && m.node_id == 7);
    CHECK_EQ_STR(m.node_name, "node-a");
    /* The cluster id learned later; the rest must match. */
    CHECK_EQ_INT(store_meta_set(s, cid, 7, "node-a"), 0);
    CHECK_EQ_INT(store_meta_set(s, cid, 0, NULL), 0);
    CHECK_EQ_INT(store_meta_set(s, cid, 7, "node-b"), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "\"node-a\" differs from \"node-b\""));
    CHECK_EQ_INT(store_meta_set(s, cid, 8, NULL), PZ_EINVAL);
    CHECK_EQ_INT(store_meta_set(s, cid + 1, 0, NULL), PZ_EINVAL);
    char big[STORE_NAME_MAX + 1];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK_EQ_INT(store_meta_set(s, 0, 0, big), PZ_EINVAL);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load(s, &hs, &e, &n, &m), 0);
    CHECK(m.cluster_id == cid);
    CHECK(m.node_id == 7);
    CHECK_EQ_STR(m.node_name, "node-a");
    /* The incarnation: none (a founder's data dir), then set once. */
    CHECK(m.incarnation == 0);
    CHECK_EQ_INT(store_meta_set_incarnation(s, cid), 0);
    CHECK_EQ_INT(store_meta_set_incarnation(s, cid), 0);
    CHECK_EQ_INT(store_meta_set_incarnation(s, 5), PZ_EINVAL);
    CHECK(has(store_errmsg(s), "incarnation"));
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(m.incarnation == cid);
    /* The lease promise: none recorded, then replaced at will, durably. */
    CHECK(m.promise_ns == 0);
    CHECK_EQ_INT(store_meta_set_promise(s, 1800000000), 0);
    CHECK_EQ_INT(store_meta_set_promise(s, 700000000), 0);
    store_close(s);
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK(m.promise_ns == 700000000);
    store_close(s);
    char err[STORE_ERRMSG_SIZE];
    CHECK(sql(&t, "UPDATE meta SET value = '-1' "
                  "WHERE key = 'lease_promise_ns'"));
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "meta lease_promise_ns has a bad value \"-1\""));
    CHECK(sql(&t, "UPDATE meta SET value = '9223372036854775808' "
                  "WHERE key = 'lease_promise_ns'"));
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "meta lease_promise_ns has a bad value"));
    CHECK(sql(&t, "DELETE FROM meta WHERE key = 'lease_promise_ns'"));
    CHECK(sql(&t, "UPDATE meta SET value = 'x' WHERE key = 'incarnation'"));
    CHECK_EQ_INT(open_load(&t, err, sizeof err), PZ_ECORRUPT);
    CHECK(has(err, "meta incarnation has a bad value"));
    CHECK(sql(&t, "UPDATE meta SET value = '18364758544493064720' "
                  "WHERE key = 'incarnation'"));
    /* Stored as exact decimal text. */
    CHECK(sql(&t, "CREATE TABLE x AS SELECT value FROM meta "
                  "WHERE key = 'cluster_id' AND value = "
                  "'18364758544493064720'"));
    sqlite3 *db;
    CHECK(sqlite3_open(t.db, &db) == SQLITE_OK);
    sqlite3_stmt *st;
    CHECK(sqlite3_prepare_v2(db, "SELECT count(*) FROM x", -1, &st, NULL) ==
          SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    tdir_free(&t);
}

/* --- crash consistency ---------------------------------------------------- */

/* Batch k (from 1) of the crash workload, given the last index before it:
 * term k; every 7th batch rewrites the last 3 entries; 1..13 entries. */
static void crash_batch(long k, uint64_t last, uint64_t *first, size_t *n)
{
    *first = (k % 7 == 0 && last >= 3) ? last - 2 : last + 1;
    *n = 1 + (size_t)(k * 31 % 13);
}

/* Model after j batches: terms[i] = term of index i + 1; returns count. */
static size_t crash_model(long j, uint64_t *terms, size_t cap,
                          struct raft_hard_state *hs)
{
    uint64_t last = 0;
    memset(hs, 0, sizeof *hs);
    for (long k = 1; k <= j; k++) {
        uint64_t first;
        size_t n;
        crash_batch(k, last, &first, &n);
        pz_assert(first + n - 1 <= cap);
        for (size_t i = 0; i < n; i++)
            terms[first - 1 + i] = (uint64_t)k;
        last = first + n - 1;
        *hs = (struct raft_hard_state){(uint64_t)k, (uint64_t)(k % 3 + 1),
                                       first - 1};
    }
    return last;
}

struct crash_child {
    struct pump p; /* reused for the loop; batches driven here */
    long k;        /* batch in flight */
    uint64_t last; /* last index written */
    int fd;        /* ack pipe */
    struct raft_entry *e; /* entries in flight */
    size_t n;      /* their number */
};

static void crash_next(struct crash_child *c);

static void crash_cb(struct store *s, int status, const char *msg, void *arg)
{
    struct crash_child *c = arg;
    PZ_UNUSED(s);
    PZ_UNUSED(msg);
    if (status)
        _exit(5);
    int32_t k = (int32_t)c->k;
    if (write(c->fd, &k, sizeof k) != sizeof k)
        _exit(6);
    free_entries(c->e, c->n);
    crash_next(c);
}

static void crash_next(struct crash_child *c)
{
    uint64_t first;
    c->k++;
    crash_batch(c->k, c->last, &first, &c->n);
    c->e = mk_entries(first, c->n, (uint64_t)c->k);
    c->last = first + c->n - 1;
    struct raft_hard_state hs = {(uint64_t)c->k, (uint64_t)(c->k % 3 + 1),
                                 first - 1};
    if (store_write(c->p.s, &c->p.loop, &hs, c->e, c->n, crash_cb, c) != 0)
        _exit(7);
}

/* Child: continues the workload after batch `start`, acking each batch
 * once durable, until killed. */
static void crash_run_child(const struct tdir *t, long start, int fd)
{
    struct crash_child *c = pz_calloc(1, sizeof *c);
    struct store *s = open_ok(t);
    if (!s)
        _exit(8);
    uint64_t *terms = pz_malloc(20 * (size_t)(start + 2) * sizeof *terms + 8);
    struct raft_hard_state hs;
    c->last = crash_model(start, terms, 20 * (size_t)(start + 2), &hs);
    pz_free(terms);
    c->k = start;
    c->fd = fd;
    c->p.s = s;
    uv_loop_init(&c->p.loop);
    crash_next(c);
    uv_run(&c->p.loop, UV_RUN_DEFAULT);
    _exit(9);
}

/* Does the store hold exactly the model after j batches? */
static bool crash_matches(const struct raft_hard_state *hs,
                          const struct raft_entry *e, size_t n, long j)
{
    size_t cap = 20 * (size_t)(j + 2);
    uint64_t *terms = pz_malloc(cap * sizeof *terms);
    struct raft_hard_state mhs;
    size_t mn = crash_model(j, terms, cap, &mhs);
    bool ok = mn == n && mhs.term == hs->term && mhs.vote == hs->vote &&
              mhs.commit == hs->commit;
    for (size_t i = 0; ok && i < n; i++) {
        uint8_t buf[160];
        size_t len =
            (i + 1) % 5 ? payload(i + 1, terms[i], buf, sizeof buf) : 0;
        ok = e[i].index == i + 1 && e[i].term == terms[i] &&
             e[i].len == len && (len == 0 || !memcmp(e[i].data, buf, len));
    }
    pz_free(terms);
    return ok;
}

TEST(crash_consistency_sigkill)
{
    /* segments of 8: batches of up to 13 entries and their rewrites
     * straddle them */
    store_test_log_segment(8);
    struct tdir t;
    tdir_init(&t);
    /* A fixed seed, so that a run can be repeated; PZ_TEST_SEED sets
     * another (the kill still lands wherever the child happens to be). */
    uint64_t seed = 1;
    const char *env = getenv("PZ_TEST_SEED");
    if (env && *env)
        seed = strtoull(env, NULL, 10);
    fprintf(stderr, "    seed %" PRIu64 " (PZ_TEST_SEED)\n", seed);
    uint64_t rng = seed;
    long verified = 0; /* batches known to be on disk */
    for (int round = 0; round < 8; round++) {
        int pfd[2];
        CHECK(pipe(pfd) == 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(pfd[0]);
            crash_run_child(&t, verified, pfd[1]);
        }
        close(pfd[1]);
        long wait_us = 5000 + (long)(pz_rand_next(&rng) % 200000);
        usleep((useconds_t)wait_us);
        kill(pid, SIGKILL);
        int st = 0;
        CHECK(waitpid(pid, &st, 0) == pid);
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
            fprintf(stderr, "    child ended early: status %d\n", st);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        long acked = verified;
        int32_t k;
        while (read(pfd[0], &k, sizeof k) == sizeof k) {
            CHECK_EQ_INT(k, acked + 1);
            acked = k;
        }
        close(pfd[0]);

        struct store *s = open_ok(&t);
        CHECK(s != NULL);
        struct raft_hard_state hs;
        struct raft_entry *e;
        size_t n;
        CHECK_EQ_INT(store_load(s, &hs, &e, &n, NULL), 0);
        store_close(s);
        long found = -1;
        if (crash_matches(&hs, e, n, acked))
            found = acked;
        else if (crash_matches(&hs, e, n, acked + 1))
            found = acked + 1;
        fprintf(stderr,
                "    round %d: killed after %ld us, %ld acked, disk holds "
                "batch %ld (%zu entries)\n",
                round, wait_us, acked, found, n);
        free_entries(e, n);
        CHECK(found >= 0);
        verified = found;
    }
    CHECK(verified > 0);
    tdir_free(&t);
}

/* --- with the real Raft core ------------------------------------------- */

/* Three cores, each persisting its Readies through its own store, with a
 * lossy instant network and restarts through store_load + raft_restore:
 * the Ready stream of the real core must pass every check of the store,
 * and a restarted node must get back exactly its durable log. */

#define RS_N 3

struct rs_node {
    struct tdir dir;    /* data directory */
    struct store *s;    /* its store */
    struct raft *r;     /* its core */
};

struct rs_net {
    struct rs_node nodes[RS_N + 1]; /* 1-based */
    struct raft_msg *q;             /* messages in transit (deep copies) */
    size_t nq, cap;                 /* queue size, capacity */
    uint64_t rng;                   /* drop decisions */
    int failures;                   /* store or restore errors */
};

static void rs_queue(struct rs_net *net, const struct raft_msg *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (pz_rand_next(&net->rng) % 10 == 0)
            continue; /* lost */
        if (net->nq == net->cap) {
            net->cap = net->cap ? net->cap * 2 : 64;
            net->q = pz_realloc(net->q, net->cap * sizeof *net->q);
        }
        struct raft_msg *c = &net->q[net->nq++];
        *c = m[i];
        c->entries = NULL;
        if (m[i].n_entries) {
            c->entries = pz_malloc(m[i].n_entries * sizeof *c->entries);
            for (size_t k = 0; k < m[i].n_entries; k++) {
                c->entries[k] = m[i].entries[k];
                c->entries[k].data =
                    m[i].entries[k].len
                        ? pz_memdup(m[i].entries[k].data,
                                    m[i].entries[k].len)
                        : NULL;
            }
        }
    }
}

static void rs_msg_free(struct raft_msg *m)
{
    for (size_t k = 0; k < m->n_entries; k++)
        pz_free(m->entries[k].data);
    pz_free(m->entries);
}

/* Runs every pending Ready of node id, persisting it synchronously. */
static void rs_ready(struct rs_net *net, int id)
{
    struct rs_node *nd = &net->nodes[id];
    while (raft_has_ready(nd->r)) {
        struct raft_ready rd;
        raft_ready(nd->r, &rd);
        rs_queue(net, rd.msgs, rd.n_msgs);
        int rc = store_write_sync(nd->s, rd.hs_changed ? &rd.hs : NULL,
                                  rd.entries, rd.n_entries);
        if (rc) {
            fprintf(stderr, "    node %d: %s\n", id, store_errmsg(nd->s));
            net->failures++;
            return;
        }
        rs_queue(net, rd.msgs_after_persist, rd.n_msgs_after_persist);
        raft_advance(nd->r, &rd);
    }
}

static void rs_deliver(struct rs_net *net)
{
    while (net->nq > 0) {
        struct raft_msg m = net->q[0];
        memmove(net->q, net->q + 1, (net->nq - 1) * sizeof *net->q);
        net->nq--;
        if (m.to >= 1 && m.to <= RS_N) {
            raft_step(net->nodes[m.to].r, &m);
            rs_ready(net, (int)m.to);
        }
        rs_msg_free(&m);
    }
}

static struct raft *rs_core(uint64_t id, uint64_t seed)
{
    struct raft_config cfg = {0};
    cfg.id = id;
    cfg.election_ticks = 10;
    cfg.heartbeat_ticks = 2;
    cfg.seed = seed * 1000 + id;
    cfg.pre_vote = true;
    cfg.check_quorum = true;
    return raft_new(&cfg, NULL);
}

/* Crash-restarts node id: what the store holds must be exactly the
 * durable log of the old core. */
static bool rs_restart(struct rs_net *net, int id, uint64_t seed)
{
    struct rs_node *nd = &net->nodes[id];
    struct raft_status st;
    raft_status(nd->r, &st);
    store_close(nd->s);
    nd->s = open_ok(&nd->dir);
    if (!nd->s)
        return false;
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    if (store_load(nd->s, &hs, &e, &n, NULL) != 0) {
        fprintf(stderr, "    load: %s\n", store_errmsg(nd->s));
        return false;
    }
    bool ok = n == st.persisted_index && hs.term == st.term &&
              hs.vote == st.vote;
    for (size_t i = 0; ok && i < n; i++) {
        const struct raft_entry *x = raft_log_get(nd->r, i + 1);
        ok = x && x->term == e[i].term && x->type == e[i].type &&
             x->len == e[i].len && (!x->len || !memcmp(x->data, e[i].data,
                                                        x->len));
    }
    if (!ok)
        fprintf(stderr,
                "    node %d: stored %zu entries, term %" PRIu64
                "; core had %" PRIu64 " durable, term %" PRIu64 "\n",
                id, n, hs.term, st.persisted_index, st.term);
    raft_free(nd->r);
    nd->r = rs_core((uint64_t)id, seed + 77);
    if (ok && raft_restore(nd->r, &hs, e, n) != 0) {
        fprintf(stderr, "    node %d: raft_restore refused the log\n", id);
        ok = false;
    }
    store_entries_free(e, n);
    return ok;
}

TEST(raft_core_round_trip)
{
    uint64_t seed = 42;
    const char *env = getenv("PZ_TEST_SEED");
    if (env)
        seed = strtoull(env, NULL, 10);
    struct rs_net *net = pz_calloc(1, sizeof *net);
    net->rng = seed;
    struct raft_conf conf;
    raft_conf_init(&conf);
    for (int i = 1; i <= RS_N; i++)
        CHECK_EQ_INT(raft_conf_add(&conf, (uint64_t)i, true, "m"), 0);
    for (int i = 1; i <= RS_N; i++) {
        struct rs_node *nd = &net->nodes[i];
        tdir_init(&nd->dir);
        nd->s = open_ok(&nd->dir);
        CHECK(nd->s != NULL);
        nd->r = rs_core((uint64_t)i, seed);
        CHECK(nd->r != NULL);
        CHECK_EQ_INT(raft_bootstrap(nd->r, &conf), 0);
        rs_ready(net, i);
    }
    raft_conf_free(&conf);
    int proposed = 0, restarts = 0;
    for (int round = 0; round < 3000 && net->failures == 0; round++) {
        for (int i = 1; i <= RS_N; i++) {
            raft_tick(net->nodes[i].r);
            rs_ready(net, i);
        }
        rs_deliver(net);
        uint64_t r = pz_rand_next(&net->rng);
        int id = 1 + (int)(r % RS_N);
        if ((r >> 8) % 4 == 0) {
            char cmd[32];
            int len = snprintf(cmd, sizeof cmd, "cmd-%d", proposed);
            if (raft_propose(net->nodes[id].r, (const uint8_t *)cmd,
                             (size_t)len, NULL, NULL) == 0)
                proposed++;
            rs_ready(net, id);
            rs_deliver(net);
        }
        if ((r >> 16) % 150 == 0) {
            CHECK(rs_restart(net, id, seed + (uint64_t)round));
            restarts++;
        }
    }
    CHECK_EQ_INT(net->failures, 0);
    /* Restart everyone; then the committed prefixes must agree. */
    uint64_t min_commit = UINT64_MAX;
    for (int i = 1; i <= RS_N; i++) {
        CHECK(rs_restart(net, i, seed + 5000));
        struct raft_status st;
        raft_status(net->nodes[i].r, &st);
        min_commit = PZ_MIN(min_commit, st.commit);
    }
    for (uint64_t x = 1; x <= min_commit; x++) {
        const struct raft_entry *a = raft_log_get(net->nodes[1].r, x);
        for (int i = 2; i <= RS_N; i++) {
            const struct raft_entry *b = raft_log_get(net->nodes[i].r, x);
            CHECK(a && b && a->term == b->term && a->len == b->len);
            CHECK(a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
        }
    }
    struct raft_status st1;
    raft_status(net->nodes[1].r, &st1);
    fprintf(stderr,
            "    %d proposals accepted, %d restarts, node 1: last %" PRIu64
            ", term %" PRIu64 ", committed everywhere: %" PRIu64 "\n",
            proposed, restarts, st1.last_index, st1.term, min_commit);
    CHECK(proposed > 50);
    CHECK(min_commit > 50);
    for (int i = 1; i <= RS_N; i++) {
        struct rs_node *nd = &net->nodes[i];
        raft_free(nd->r);
        store_close(nd->s);
        tdir_free(&nd->dir);
    }
    for (size_t i = 0; i < net->nq; i++)
        rs_msg_free(&net->q[i]);
    pz_free(net->q);
    pz_free(net);
}

/* --- throughput ----------------------------------------------------------- */

TEST(bench_batch_sizes)
{
    double secs = 0.4;
    const char *env = getenv("PZ_STORE_BENCH_SECS");
    if (env)
        secs = atof(env);
    static const size_t sizes[] = {1, 10, 100};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(sizes); i++) {
        struct tdir t;
        tdir_init(&t);
        struct store *s = open_ok(&t);
        CHECK(s != NULL);
        struct raft_hard_state hs = {1, 0, 0};
        CHECK_EQ_INT(store_write_sync(s, &hs, NULL, 0), 0);
        struct pump p;
        pump_init(&p, s, 1);
        p.fixed = sizes[i];
        uint64_t t0 = uv_hrtime();
        p.deadline = t0 + (uint64_t)(secs * 1e9);
        pump_next(&p);
        CHECK_EQ_INT(uv_run(&p.loop, UV_RUN_DEFAULT), 0);
        double el = (double)(uv_hrtime() - t0) / 1e9;
        CHECK_EQ_INT(p.status, 0);
        CHECK_EQ_INT(uv_loop_close(&p.loop), 0);
        struct store_stats ss;
        store_stats(s, &ss);
        CHECK_EQ_INT(ss.batches, p.done + 1);
        fprintf(stderr,
                "    batch %3zu: %7.0f commits/s %8.0f entries/s, "
                "%.1f entries/fsync, commit %.3f ms avg, %.0f B/entry "
                "(%ld batches)\n",
                sizes[i], (double)p.done / el,
                (double)p.done * (double)sizes[i] / el,
                (double)ss.entries / (double)(ss.batches - 1),
                (double)ss.commit_ns / 1e6 / (double)ss.batches,
                (double)ss.bytes / (double)ss.entries, p.done);
        /* The same on the calling thread, for comparison. */
        long done = 0;
        t0 = uv_hrtime();
        uint64_t end = t0 + (uint64_t)(secs * 0.5e9);
        while (uv_hrtime() < end) {
            CHECK_EQ_INT(write_range(s, p.next_index, sizes[i], 1, NULL), 0);
            p.next_index += sizes[i];
            done++;
        }
        el = (double)(uv_hrtime() - t0) / 1e9;
        fprintf(stderr,
                "    batch %3zu: %7.0f commits/s %8.0f entries/s "
                "(store_write_sync on the caller's thread)\n",
                sizes[i], (double)done / el,
                (double)done * (double)sizes[i] / el);
        store_close(s);
        tdir_free(&t);
    }
}

/* --- restarts read the end of the log; space comes back ------------------ */

TEST(load_from_and_term)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 300)); /* terms 1, 2, 3 for 1-100, 101-200, 201- */
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load_from(s, 201, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 100);
    for (size_t i = 0; i < n; i++)
        CHECK(entry_ok(&e[i], 201 + i, 3));
    free_entries(e, n);
    CHECK_EQ_INT(hs.term, 3);
    CHECK_EQ_INT(store_load_from(s, 0, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 300);
    free_entries(e, n);
    CHECK_EQ_INT(store_load_from(s, UINT64_MAX, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(hs.term, 3);
    free_entries(e, n);
    uint64_t term = 9;
    CHECK_EQ_INT(store_term(s, 150, &term), 0);
    CHECK_EQ_INT(term, 2);
    CHECK_EQ_INT(store_term(s, 301, &term), PZ_ENOTFOUND);
    CHECK_EQ_INT(store_term(s, 0, &term), 0);
    CHECK_EQ_INT(term, 0);
    /* Compacted: the snapshot point answers, below it nothing; a load
     * from below the point starts right after it. */
    CHECK_EQ_INT(store_compact(s, 100, 1), 0);
    CHECK_EQ_INT(store_term(s, 100, &term), 0);
    CHECK_EQ_INT(term, 1);
    CHECK_EQ_INT(store_term(s, 50, &term), PZ_ENOTFOUND);
    CHECK_EQ_INT(store_load_from(s, 50, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 200);
    CHECK(entry_ok(&e[0], 101, 2));
    free_entries(e, n);
    store_close(s);
    /* The checks hold from `from` on: a term going down after it. */
    CHECK(sql(&t, "UPDATE log SET term = 2 WHERE idx = 260"));
    s = open_ok(&t);
    CHECK(s != NULL);
    CHECK_EQ_INT(store_load_from(s, 251, &hs, &e, &n, NULL), PZ_ECORRUPT);
    CHECK(has(store_errmsg(s), "term decreases"));
    store_close(s);
    tdir_free(&t);
}

/* store_trailing_from against a model over the loaded log: entries
 * index, index - 1, ... while both bounds hold; absent entries end it. */
static uint64_t trailing_model(const struct raft_entry *e, size_t n,
                               uint64_t index, uint64_t max_entries,
                               uint64_t max_bytes)
{
    uint64_t k = 0, bytes = 0;
    while (k < max_entries && k < index) {
        const struct raft_entry *x = NULL;
        for (size_t i = 0; i < n; i++)
            if (e[i].index == index - k)
                x = &e[i];
        if (x == NULL || x->len > max_bytes - bytes)
            break;
        bytes += x->len;
        k++;
    }
    return index - k;
}

TEST(trailing_from_honours_both_bounds)
{
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 300));
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs;
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load_from(s, 0, &hs, &e, &n, NULL), 0);
    CHECK_EQ_INT(n, 300);
    static const uint64_t idx[] = {0, 1, 5, 100, 250, 300, 301, 1000};
    static const uint64_t ents[] = {0, 1, 10, 50, 1000};
    static const uint64_t bytes[] = {0, 1, 30, 200, 1000, UINT64_MAX};
    size_t cut_by_bytes = 0;
    for (size_t a = 0; a < PZ_ARRAY_SIZE(idx); a++)
        for (size_t b = 0; b < PZ_ARRAY_SIZE(ents); b++)
            for (size_t c = 0; c < PZ_ARRAY_SIZE(bytes); c++) {
                uint64_t from = 7;
                CHECK_EQ_INT(
                    store_trailing_from(s, idx[a], ents[b], bytes[c], &from),
                    0);
                uint64_t want = trailing_model(e, n, idx[a], ents[b], bytes[c]);
                if (from != want)
                    fprintf(stderr,
                            "    index %llu entries %llu bytes %llu: "
                            "%llu, want %llu\n",
                            (unsigned long long)idx[a],
                            (unsigned long long)ents[b],
                            (unsigned long long)bytes[c],
                            (unsigned long long)from, (unsigned long long)want);
                CHECK(from == want);
                if (want > trailing_model(e, n, idx[a], ents[b], UINT64_MAX))
                    cut_by_bytes++;
            }
    CHECK(cut_by_bytes > 10); /* the byte bound mattered */
    /* 50 entries of 250 stay below 1000 bytes: fewer are kept. */
    uint64_t from;
    CHECK_EQ_INT(store_trailing_from(s, 250, 50, 1000, &from), 0);
    CHECK(from > 200 && from < 250);
    free_entries(e, n);
    /* Compacted up to 100: entries at and below it are absent. */
    CHECK_EQ_INT(store_compact(s, 100, 1), 0);
    CHECK_EQ_INT(store_trailing_from(s, 150, 1000, UINT64_MAX, &from), 0);
    CHECK_EQ_INT(from, 100);
    store_close(s);
    tdir_free(&t);
}

static off_t db_bytes(const struct tdir *t)
{
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", t->db);
    struct stat a, b;
    off_t n = stat(t->db, &a) == 0 ? a.st_size : 0;
    return n + (stat(wal, &b) == 0 ? b.st_size : 0);
}

static void step_cb(struct store *s, int status, const char *msg, void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(msg);
    *(int *)arg = status;
}

/* Databases made from now on in this test cut their log into segments of
 * 4 entries: a log of more than 28 entries has a later segment in every
 * table, so compaction deletes rows one by one, bounded by rows and
 * bytes, the way these tests look at (tables emptied whole: the tests of
 * log segments, below). */
static void rows_one_by_one(void)
{
    store_test_log_segment(4);
}

/* Compaction steps up to upto, max_rows each (bytes unbounded), until
 * the store has nothing left to drop or give back: *steps is how many
 * ran, -1 if one failed. */
static void compact_steps(struct store *s, uint64_t upto, uint64_t max_rows,
                          int *steps)
{
    *steps = -1;
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int n = 0, status = 0, rc;
    while ((rc = store_compact_step(s, &loop, upto, max_rows, UINT64_MAX,
                                    step_cb, &status)) == 0) {
        CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
        CHECK_EQ_INT(status, 0);
        CHECK(++n < 100);
    }
    CHECK_EQ_INT(rc, 1);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    *steps = n;
}

static void compact_fully(struct store *s, uint64_t upto, int *steps)
{
    compact_steps(s, upto, 1000, steps);
}

/* Reopened, the store holds n entries from first on, the last of len
 * bytes. */
static void check_reopened(const struct tdir *t, uint64_t first, size_t n,
                           size_t len)
{
    struct store *s = open_ok(t);
    CHECK(s != NULL);
    struct raft_hard_state hs;
    struct raft_entry *le;
    size_t got;
    CHECK_EQ_INT(store_load(s, &hs, &le, &got, NULL), 0);
    CHECK(got == n && le[0].index == first && le[n - 1].len == len);
    free_entries(le, got);
    store_close(s);
}

TEST(compaction_gives_space_back)
{
    rows_one_by_one();
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 0, 0};
    static uint8_t big[4000];
    memset(big, 'x', sizeof big);
    struct raft_entry e[100];
    for (uint64_t first = 1; first <= 4000; first += 100) {
        for (size_t i = 0; i < 100; i++)
            e[i] = (struct raft_entry){.index = first + i, .term = 1,
                                       .type = RAFT_ENTRY_NORMAL,
                                       .data = big, .len = sizeof big};
        CHECK_EQ_INT(store_write_sync(s, &hs, e, 100), 0);
    }
    off_t peak = db_bytes(&t);
    CHECK(peak > 16 * 1024 * 1024);
    int steps;
    compact_fully(s, 3990, &steps);
    off_t after = db_bytes(&t);
    fprintf(stderr, "    %d steps: %lld bytes -> %lld bytes\n", steps,
            (long long)peak, (long long)after);
    CHECK(steps >= 4); /* 3990 rows in steps of 1000 */
    /* 10 entries and the 2 MiB of free pages kept (VACUUM_KEEP) */
    CHECK(after < 3 * 1024 * 1024);
    /* A step gives back at most 2 MiB (512 pages): the log writes wait
     * for it. */
    CHECK(steps >= (peak - after) / (2 * 1024 * 1024));
    store_close(s);
    check_reopened(&t, 3991, 10, sizeof big);
    tdir_free(&t);
}

/* A compaction that leaves a log a quarter or more the size of what it
 * dropped gives nothing back: the log grows back into the free pages,
 * and a vacuum would move all of it. */
TEST(compaction_keeps_room_for_a_large_log)
{
    rows_one_by_one();
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 0, 0};
    enum { N = 40, LEN = 256 * 1024 };
    static uint8_t big[LEN];
    memset(big, 'y', sizeof big);
    struct raft_entry e[N];
    for (size_t i = 0; i < N; i++)
        e[i] = (struct raft_entry){.index = i + 1, .term = 1,
                                   .type = RAFT_ENTRY_NORMAL, .data = big,
                                   .len = LEN};
    CHECK_EQ_INT(store_write_sync(s, &hs, e, N), 0);
    store_close(s); /* checkpointed: the file holds it all */
    s = open_ok(&t);
    CHECK(s != NULL);
    off_t peak = db_bytes(&t);
    CHECK(peak > N * LEN);
    int steps;
    compact_fully(s, 30, &steps);
    CHECK_EQ_INT(steps, 1); /* the delete, no vacuum step after it */
    store_close(s);
    off_t after = db_bytes(&t);
    fprintf(stderr, "    %lld bytes -> %lld bytes\n", (long long)peak,
            (long long)after);
    CHECK(after >= N * LEN); /* 30 entries' pages kept, free */
    check_reopened(&t, 31, 10, LEN);
    tdir_free(&t);
}

/* One compaction step (max_rows, max_bytes) up to upto: *at is the
 * snapshot point it leaves (0 if it failed). */
static void compact_once(struct store *s, uint64_t upto, uint64_t max_rows,
                         uint64_t max_bytes, uint64_t *at)
{
    *at = 0;
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int status = -1;
    CHECK_EQ_INT(store_compact_step(s, &loop, upto, max_rows, max_bytes,
                                    step_cb, &status),
                 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(status, 0);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    struct store_meta m;
    store_meta_get(s, &m);
    *at = m.snap_index;
}

/* A step drops no more payload bytes than it is given, whatever its
 * row bound (one entry at least, however large): deleting a row reads
 * its overflow pages, so large entries made long steps. */
TEST(compaction_step_bounded_by_bytes)
{
    rows_one_by_one();
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 0, 0};
    /* the 50 entries after the last step's end keep a later segment in
     * every table */
    enum { N = 200, MID = 15000, HUGE = 100000, SMALL = 100 };
    static uint8_t buf[HUGE];
    memset(buf, 'z', sizeof buf);
    struct raft_entry e[N];
    for (size_t i = 0; i < N; i++) {
        /* 1..40: 15 KB, 41..140: 100 B, 141: 100 KB, 142..200: 100 B */
        size_t len = i < 40 ? MID : i == 140 ? HUGE : SMALL;
        e[i] = (struct raft_entry){.index = i + 1, .term = 1 + i / 100,
                                   .type = RAFT_ENTRY_NORMAL, .data = buf,
                                   .len = len};
    }
    hs.term = 2;
    CHECK_EQ_INT(store_write_sync(s, &hs, e, N), 0);
    /* Steps as large as given however long they take (a slow machine
     * would make them smaller: compaction_step_shrinks_to_its_budget). */
    store_test_step_budget(s, UINT64_MAX);
    /* Each step with at most 64 KiB, and rows as given: where it ends.
     * The first steps of a store start at an eighth of that and double. */
    static const struct {
        uint64_t rows, at;
    } steps[] = {
        {2000, 1}, /* 8 KiB: one entry, however large */
        {2000, 2}, /* 16 KiB: one entry of 15 KB, two would not fit */
        {2000, 4}, /* 32 KiB: two */
        {2000, 8}, /* 4 entries of 15 KB fit in 64 KiB, a fifth does not */
        {2000, 12}, {2000, 16}, {2000, 20},
        {2000, 24},  {2000, 28}, {2000, 32}, {2000, 36},
        {2000, 95},  /* 37..40 (60000 bytes), then 55 of 100 bytes */
        {30, 125},   /* small entries: the row bound holds as before */
        {2000, 140}, /* 126..140 (1500 bytes) fit, 141 would not */
        {2000, 141}, /* 141 alone is larger than the bound: it goes */
        {2000, 150},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(steps); i++) {
        uint64_t at;
        compact_once(s, 150, steps[i].rows, 65536, &at);
        CHECK_EQ_INT(at, steps[i].at);
    }
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.snap_term, 2);
    store_close(s);
    check_reopened(&t, 151, 50, SMALL);
    tdir_free(&t);
}

/* A log of n entries of len bytes, written 100 at a time. */
static void write_log(struct store *s, uint64_t n, size_t len)
{
    static uint8_t data[16000];
    pz_assert(len <= sizeof data);
    memset(data, 'v', len);
    struct raft_hard_state hs = {1, 0, 0};
    struct raft_entry e[100];
    for (uint64_t first = 1; first <= n; first += 100) {
        for (size_t i = 0; i < 100; i++)
            e[i] = (struct raft_entry){.index = first + i, .term = 1,
                                       .type = RAFT_ENTRY_NORMAL,
                                       .data = data, .len = len};
        CHECK_EQ_INT(store_write_sync(s, &hs, e, 100), 0);
    }
}

/* A compaction step that takes longer than its time budget makes the
 * next one drop half the payload, down to a 32nd of max_bytes (one
 * entry at least); steps within it keep (or grow back to) max_bytes. */
TEST(compaction_step_shrinks_to_its_budget)
{
    rows_one_by_one();
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    enum { N = 2000, LEN = 15000, MAXB = 1 << 20 };
    write_log(s, N, LEN);
    /* A store's first step drops an eighth of max_bytes (8 rows of 15 KB
     * in 128 KiB); within the budget each next one doubles, to 1 MiB. */
    store_test_step_budget(s, UINT64_MAX);
    static const uint64_t first[] = {8, 17, 34, 69, 69};
    uint64_t at = 0, prev = 0;
    for (size_t i = 0; i < PZ_ARRAY_SIZE(first); i++) {
        compact_once(s, N - 10, 20000, MAXB, &at);
        CHECK_EQ_INT(at - prev, first[i]);
        prev = at;
    }
    /* At a budget no step meets: 69 rows (1 MiB of 15 KB), 34, 17, 8,
     * 4, then 2 a step (a 32nd of 1 MiB is 32 KiB: two entries). */
    store_test_step_budget(s, 0);
    static const uint64_t rows[] = {69, 34, 17, 8, 4, 2, 2, 2};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(rows); i++) {
        compact_once(s, N - 10, 20000, MAXB, &at);
        CHECK_EQ_INT(at - prev, rows[i]);
        prev = at;
    }
    /* Within any budget: back up a level a step (this one still at the
     * level the last one left), to 1 MiB again. */
    store_test_step_budget(s, UINT64_MAX);
    static const uint64_t up[] = {2, 4, 8, 17, 34, 69, 69};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(up); i++) {
        compact_once(s, N - 10, 20000, MAXB, &at);
        CHECK_EQ_INT(at - prev, up[i]);
        prev = at;
    }
    store_close(s);
    check_reopened(&t, at + 1, N - at, LEN);
    tdir_free(&t);
}

/* A store in t holding a log of n entries of len bytes, reopened so that
 * raft.db (checkpointed at close) holds it all; NULL on failure. */
static struct store *open_with_log(struct tdir *t, uint64_t n, size_t len)
{
    tdir_init(t);
    struct store *s = open_ok(t);
    if (s == NULL)
        return NULL;
    write_log(s, n, len);
    store_close(s);
    return open_ok(t);
}

/* Compaction steps up to upto (rows per step) until nothing is left to
 * drop or give back, max at most; after each, the size of raft.db alone
 * into sizes[]: *n is the number of steps, -1 if one failed. */
static void compact_sizes(struct store *s, const struct tdir *t,
                          uint64_t upto, uint64_t rows, off_t *sizes,
                          int max, int *n)
{
    *n = -1;
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int k = 0, status = 0;
    while (k < max && store_compact_step(s, &loop, upto, rows, UINT64_MAX,
                                         step_cb, &status) == 0) {
        CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
        CHECK_EQ_INT(status, 0);
        struct stat st;
        sizes[k++] = stat(t->db, &st) == 0 ? st.st_size : -1;
    }
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    *n = k;
}

/* A vacuum step gives back as many pages as fit in its time budget: at
 * a budget no step meets, the steps shrink to a few pages each (many
 * steps, none holding the log writes for long); at one every step
 * meets, they grow (few steps). Either way all the space comes back,
 * and raft.db shrinks as the steps go, not only after the last one. */
TEST(compaction_vacuum_steps_fit_a_time_budget)
{
    rows_one_by_one();
    enum { N = 6000, LEN = 4000, MAX = 4000 };
    static off_t sizes[MAX];
    int steps[2];
    off_t peak[2], after[2];
    for (int k = 0; k < 2; k++) {
        struct tdir t;
        struct store *s = open_with_log(&t, N, LEN);
        CHECK(s != NULL);
        struct stat st;
        CHECK_EQ_INT(stat(t.db, &st), 0);
        peak[k] = st.st_size;
        CHECK(peak[k] > N * LEN);
        store_test_step_budget(s, k == 0 ? 0 : UINT64_MAX);
        compact_sizes(s, &t, N - 10, 20000, sizes, MAX, &steps[k]);
        CHECK(steps[k] > 0 && steps[k] < MAX); /* it ends */
        after[k] = sizes[steps[k] - 1];
        /* Smaller by 8 MiB or more before the last step: a checkpoint
         * cut it on the way. */
        int cut_before_end = 0;
        for (int i = 0; i + 1 < steps[k]; i++)
            if (sizes[i] > 0 && sizes[i] < peak[k] - 8 * 1024 * 1024)
                cut_before_end++;
        fprintf(stderr, "    budget %s: %d steps, %lld -> %lld bytes, "
                "%d steps after a cut\n", k == 0 ? "0" : "unbounded",
                steps[k], (long long)peak[k], (long long)after[k],
                cut_before_end);
        CHECK(cut_before_end > 0);
        /* the cuts and the last step's WAL reset are counted checkpoints */
        struct store_stats ss;
        store_stats(s, &ss);
        CHECK(ss.checkpoints >= 2 && ss.checkpoint_failures == 0);
        /* 10 entries and the 2 MiB of free pages kept (VACUUM_KEEP) */
        CHECK(after[k] < 3 * 1024 * 1024);
        store_close(s);
        check_reopened(&t, N - 9, 10, LEN);
        tdir_free(&t);
    }
    /* At most 64 pages (the first step) and down to 8 per step: some
     * 24 MiB back, 6000 pages, in 700 steps or more; unbounded, steps of
     * up to 2048 pages. */
    off_t back = peak[0] - after[0];
    CHECK(steps[0] >= back / (64 * 4096));
    CHECK(steps[0] > 4 * steps[1]);
}

/* No vacuum step while rows remain to be dropped: it would move the
 * newest entries' pages, at the end of the file, through the WAL, and
 * the next steps drop most of them. */
TEST(compaction_vacuums_after_the_last_rows)
{
    rows_one_by_one();
    enum { N = 4000, LEN = 4000, MAX = 1000 };
    static off_t sizes[MAX];
    struct tdir t;
    struct store *s = open_with_log(&t, N, LEN);
    CHECK(s != NULL);
    /* Each step drops 500 rows (2 MB): no checkpoint cut, and no vacuum
     * that would write to the WAL, before the eighth. */
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", t.db);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int status = 0;
    struct stat st;
    off_t wal_after[8];
    for (int i = 0; i < 8; i++) {
        CHECK_EQ_INT(store_compact_step(s, &loop, N - 10, 500, UINT64_MAX,
                                        step_cb, &status),
                     0);
        CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
        CHECK_EQ_INT(status, 0);
        wal_after[i] = stat(wal, &st) == 0 ? st.st_size : 0;
    }
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    /* A step that drops rows writes a few pages (the b-tree's, the
     * freelist's, the pointer map's) to the WAL; a vacuum of its
     * 500 rows' pages would write hundreds. */
    for (int i = 1; i < 7; i++) {
        fprintf(stderr, "    step %d: WAL %lld bytes\n", i + 1,
                (long long)wal_after[i]);
        CHECK(wal_after[i] - wal_after[i - 1] < 64 * 4096);
    }
    int n;
    compact_sizes(s, &t, N - 10, 500, sizes, MAX, &n);
    CHECK(n > 0 && sizes[n - 1] < 3 * 1024 * 1024);
    store_close(s);
    check_reopened(&t, N - 9, 10, LEN);
    tdir_free(&t);
}

/* A vacuum step that finds no room (the WAL cannot grow on a full disk)
 * rolls back alone and fails nothing: after a compaction's last rows the
 * rows stay dropped and the snapshot point moves with them; after a step
 * that gave pages back, the batch succeeds too. Either way the store stops
 * vacuuming until the next compaction, whose vacuum gives the pages back
 * once there is room. */
TEST(vacuum_without_room_fails_no_step)
{
    rows_one_by_one();
    enum { N = 2000, LEN = 4000 };
    struct tdir t;
    struct store *s = open_with_log(&t, N, LEN);
    CHECK(s != NULL);
    off_t peak = db_bytes(&t);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int status;
    /* After the compaction's last rows (all in one step; the log left is
     * small enough for its free pages to be given back). */
    store_test_vacuum_full(s, true);
    uint64_t at;
    compact_once(s, N - 100, N, UINT64_MAX, &at);
    CHECK_EQ_INT(at, N - 100);
    struct store_stats ss;
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.vacuum_nospace, 1);
    CHECK_EQ_INT(ss.nospace, 0);
    CHECK_EQ_INT(ss.failures, 0);
    CHECK_EQ_INT(ss.first_index, N - 99);
    CHECK(has(store_errmsg(s), "full"));
    CHECK_EQ_INT(store_compact_step(s, &loop, N - 100, N, UINT64_MAX, step_cb,
                                    &status),
                 1); /* nothing more until the next compaction */
    /* After a vacuum step that gave pages back: the next one. */
    store_test_vacuum_full(s, false);
    compact_once(s, N - 10, N, UINT64_MAX, &at);
    CHECK_EQ_INT(at, N - 10);
    store_test_vacuum_full(s, true);
    compact_once(s, N - 10, N, UINT64_MAX, &at); /* a vacuum step: it runs */
    CHECK_EQ_INT(at, N - 10);
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.vacuum_nospace, 2);
    CHECK_EQ_INT(ss.nospace, 0);
    CHECK_EQ_INT(ss.first_index, N - 9);
    CHECK_EQ_INT(store_compact_step(s, &loop, N - 10, N, UINT64_MAX, step_cb,
                                    &status),
                 1);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    /* Room again: new entries, the next compaction, and the pages come
     * back (in steps that double whatever their time: from 8 pages). */
    store_test_vacuum_full(s, false);
    store_test_step_budget(s, UINT64_MAX);
    struct raft_hard_state hs = {1, 0, 0};
    CHECK_EQ_INT(write_range(s, N + 1, 10, 1, &hs), 0);
    int steps;
    compact_fully(s, N, &steps);
    CHECK(steps >= 1);
    off_t after = db_bytes(&t);
    fprintf(stderr, "    %lld bytes -> %lld bytes\n", (long long)peak,
            (long long)after);
    CHECK(after < 3 * 1024 * 1024 && after < peak / 2);
    store_stats(s, &ss);
    CHECK_EQ_INT(ss.vacuum_nospace, 2);
    store_close(s);
    tdir_free(&t);
}

/* Steps run between log writes: with a write after every step, the
 * compaction still ends, in a bounded number of steps, and the space
 * comes back (less what the new entries took of it). The new entries are
 * small: the steps shrink to the time budget, so a slower build (the
 * sanitizers) takes more of them, and what the file keeps free grows with
 * the log (four times it). */
TEST(compaction_ends_beside_writes)
{
    rows_one_by_one();
    enum { N = 4000, LEN = 4000, WLEN = 100, MAX = 3000 };
    struct tdir t;
    struct store *s = open_with_log(&t, N, LEN);
    CHECK(s != NULL);
    struct stat st;
    CHECK_EQ_INT(stat(t.db, &st), 0);
    off_t peak = st.st_size;
    static uint8_t data[WLEN];
    memset(data, 'w', sizeof data);
    struct raft_hard_state hs = {1, 0, 0};
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    uint64_t next = N + 1;
    int steps = 0, status = 0, rc;
    while ((rc = store_compact_step(s, &loop, N - 10, 500, 1 << 20, step_cb,
                                    &status)) == 0 &&
           steps < MAX) {
        CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
        CHECK_EQ_INT(status, 0);
        steps++;
        struct raft_entry e[4];
        for (size_t i = 0; i < 4; i++)
            e[i] = (struct raft_entry){.index = next + i, .term = 1,
                                       .type = RAFT_ENTRY_NORMAL,
                                       .data = data, .len = WLEN};
        CHECK_EQ_INT(store_write_sync(s, &hs, e, 4), 0);
        next += 4;
    }
    CHECK_EQ_INT(rc, 1); /* nothing left to drop or give back */
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    CHECK_EQ_INT(stat(t.db, &st), 0);
    fprintf(stderr, "    %d steps, %llu entries written beside them: "
            "%lld -> %lld bytes\n", steps,
            (unsigned long long)(next - N - 1), (long long)peak,
            (long long)st.st_size);
    /* What stays: 10 old entries, the new ones, 2 MiB kept free (four
     * times the log if more) and the last cut's 8 MiB at most. */
    off_t logb = 10 * (LEN + 200) + (off_t)(next - N - 1) * (WLEN + 200);
    CHECK(st.st_size < PZ_MAX(2 * 1024 * 1024, 4 * logb) + logb +
                           8 * 1024 * 1024 + 1024 * 1024);
    CHECK(st.st_size < peak / 2);
    store_close(s);
    check_reopened(&t, N - 9, (size_t)(next - N + 9), WLEN);
    tdir_free(&t);
}

/* --- log segments --------------------------------------------------------- */

/* The one integer q yields on the closed database (-1 if none). */
static long long sql_int(const struct tdir *t, const char *q)
{
    sqlite3 *db;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open(t->db, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else
        fprintf(stderr, "    sql %s: %s\n", q, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* The closed database's log tables hold entries first..last, each in its
 * segment's table (segments of seg entries, eight tables), and nothing
 * else. */
static bool tables_hold(const struct tdir *t, uint64_t seg, uint64_t first,
                        uint64_t last)
{
    bool ok = true;
    for (unsigned k = 0; k < 8; k++) {
        long long want = 0;
        for (uint64_t i = first; i <= last; i++)
            want += (i / seg) % 8 == k;
        char table[8] = "log", q[160];
        if (k > 0)
            snprintf(table, sizeof table, "log%u", k);
        snprintf(q, sizeof q,
                 "SELECT count(*) FROM %s WHERE idx >= %" PRIu64
                 " AND idx <= %" PRIu64 " AND (idx / %" PRIu64 ") %% 8 = %u",
                 table, first, last, seg, k);
        long long in_range = sql_int(t, q);
        snprintf(q, sizeof q, "SELECT count(*) FROM %s", table);
        long long all = sql_int(t, q);
        if (in_range != want || all != want) {
            fprintf(stderr,
                    "    table %u: %lld rows, %lld of them its own, want "
                    "%lld\n",
                    k, all, in_range, want);
            ok = false;
        }
    }
    return ok;
}

/* Entries go to the table of their segment, batches that straddle
 * segments and a rewrite across several of them included. */
TEST(log_segments_hold_their_entries)
{
    store_test_log_segment(8);
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.log_segment, 8);
    struct raft_hard_state hs = {2, 1, 0};
    for (uint64_t first = 1; first <= 92; first += 13) /* 1..104 */
        CHECK_EQ_INT(write_range(s, first, 13, 1, &hs), 0);
    store_close(s);
    CHECK(tables_hold(&t, 8, 1, 104)); /* every table twice over */
    s = open_ok(&t);
    CHECK(s != NULL);
    /* 30..69 rewritten: 70..104, in every table, go */
    CHECK_EQ_INT(write_range(s, 30, 40, 2, &hs), 0);
    uint64_t term = 0;
    CHECK_EQ_INT(store_term(s, 29, &term), 0);
    CHECK_EQ_INT(term, 1);
    CHECK_EQ_INT(store_term(s, 64, &term), 0); /* table 0 again */
    CHECK_EQ_INT(term, 2);
    store_close(s);
    CHECK(tables_hold(&t, 8, 1, 69));
    CHECK(log_is(&t, 69, 2, 2));
    tdir_free(&t);
}

/* A compaction empties the tables of whole segments in one step whatever
 * its row bound, leaves a goal inside a segment for later, and deletes
 * rows one by one only from tables that also hold later entries. */
TEST(compaction_empties_whole_segments)
{
    store_test_log_segment(8);
    struct tdir t;
    tdir_init(&t);
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state hs = {1, 1, 0};
    int steps;
    CHECK_EQ_INT(write_range(s, 1, 50, 1, &hs), 0);
    /* 1..31 (four segments, tables 0..3) in one step of at most 2 rows;
     * then 32..37, inside segment 4, stay */
    compact_steps(s, 37, 2, &steps);
    CHECK_EQ_INT(steps, 2);
    struct store_stats st;
    store_stats(s, &st);
    CHECK_EQ_INT(st.segments_dropped, 4);
    CHECK_EQ_INT(st.rows_deleted, 0);
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.snap_index, 31);
    compact_steps(s, 37, 2, &steps);
    CHECK_EQ_INT(steps, 0); /* left: nothing to do */
    store_close(s);
    CHECK(tables_hold(&t, 8, 32, 50));
    s = open_ok(&t);
    CHECK(s != NULL);
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.snap_index, 31);
    /* 51..120: the log spans twelve segments, so every table holds a
     * later one: rows go one by one, 32..60 */
    CHECK_EQ_INT(write_range(s, 51, 70, 1, &hs), 0);
    compact_steps(s, 60, 1000, &steps);
    CHECK_EQ_INT(steps, 1);
    store_stats(s, &st);
    CHECK_EQ_INT(st.segments_dropped, 0);
    CHECK_EQ_INT(st.rows_deleted, 29);
    /* to 110: tables 0..4 (64..103) hold nothing later and go whole; 61..63
     * (table 7, beside 120) and 104..110 (table 5, beside 111) one by one */
    compact_steps(s, 110, 1000, &steps);
    CHECK_EQ_INT(steps, 1);
    store_stats(s, &st);
    CHECK_EQ_INT(st.segments_dropped, 5);
    CHECK_EQ_INT(st.rows_deleted, 29 + 10);
    store_close(s);
    CHECK(tables_hold(&t, 8, 111, 120));
    s = open_ok(&t);
    CHECK(s != NULL);
    struct raft_hard_state h;
    struct raft_entry *e;
    size_t n;
    CHECK_EQ_INT(store_load(s, &h, &e, &n, NULL), 0);
    CHECK(n == 10 && e[0].index == 111 && entry_ok(&e[9], 120, 1));
    free_entries(e, n);
    /* An installed snapshot empties every table. */
    struct raft_entry *ne = mk_entries(201, 5, 1);
    uv_loop_t loop;
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    int status = -1;
    CHECK_EQ_INT(
        store_write_install(s, &loop, 200, 1, &hs, ne, 5, step_cb, &status), 0);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(status, 0);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    free_entries(ne, 5);
    store_close(s);
    CHECK(tables_hold(&t, 8, 201, 205));
    tdir_free(&t);
}

/* What segments are for: emptying a table writes a few pages, where
 * deleting the same rows one by one writes every leaf page they were
 * on. Measured as the WAL a compaction of 2,047 entries of 100 bytes
 * leaves, one database each way. */
TEST(compaction_of_segments_writes_few_pages)
{
    off_t wal_size[2];
    for (int way = 0; way < 2; way++) {
        /* segments of 1024: 1..2047 fill two; of 4: every table holds
         * later entries */
        store_test_log_segment(way == 0 ? 1024 : 4);
        struct tdir t;
        char wal[160];
        struct store *s = open_with_wal(&t, wal, sizeof wal);
        CHECK(s != NULL);
        struct raft_hard_state hs = {1, 1, 0};
        for (uint64_t first = 1; first <= 3000; first += 100)
            CHECK_EQ_INT(write_range(s, first, 100, 1, &hs), 0);
        store_close(s); /* checkpoints: the WAL is gone */
        s = open_ok(&t);
        CHECK(s != NULL);
        int steps;
        compact_steps(s, 2047, 100000, &steps);
        CHECK_EQ_INT(steps, 1);
        wal_size[way] = file_size(wal);
        struct store_stats st;
        store_stats(s, &st);
        fprintf(stderr,
                "    segments of %d: %" PRIu64 " tables emptied, %" PRIu64
                " rows deleted, WAL %lld bytes\n",
                way == 0 ? 1024 : 4, st.segments_dropped, st.rows_deleted,
                (long long)wal_size[way]);
        CHECK_EQ_INT(st.rows_deleted, way == 0 ? 0 : 2047);
        store_close(s);
        CHECK(log_is(&t, 953, 1, 1));
        tdir_free(&t);
    }
    CHECK(wal_size[0] > 0 && wal_size[0] * 5 < wal_size[1]);
}

/* A version 2 file (the whole log in one table) is converted at open:
 * its rows moved into the tables of their segments. */
TEST(schema_2_is_converted)
{
    store_test_log_segment(16);
    struct tdir t;
    tdir_init(&t);
    CHECK(build_db(&t, 300));
    CHECK(sql(&t, AS_VERSION_2));
    CHECK_EQ_INT(sql_int(&t, "SELECT count(*) FROM log"), 300);
    store_test_log_segment(8); /* what the conversion cuts it into */
    struct store *s = open_ok(&t);
    CHECK(s != NULL);
    struct store_meta m;
    store_meta_get(s, &m);
    CHECK_EQ_INT(m.schema_version, STORE_SCHEMA_VERSION);
    CHECK_EQ_INT(m.log_segment, 8);
    struct raft_hard_state hs = {3, 2, 0};
    CHECK_EQ_INT(write_range(s, 301, 20, 3, &hs), 0);
    store_close(s);
    CHECK(tables_hold(&t, 8, 1, 320));
    CHECK(log_is(&t, 320, 3, 3));
    CHECK_EQ_INT(sql_int(&t, "SELECT value FROM meta WHERE key = "
                             "'log_segment'"),
                 8);
    tdir_free(&t);
}

static const struct test_case cases[] = {
    TEST_ENTRY(round_trip),
    TEST_ENTRY(batch_sizes_round_trip),
    TEST_ENTRY(overwrite_from_lower_index),
    TEST_ENTRY(hard_state_only),
    TEST_ENTRY(empty_batches),
    TEST_ENTRY(invalid_batches_refused),
    TEST_ENTRY(async_many_batches),
    TEST_ENTRY(queued_writes_in_order),
    TEST_ENTRY(failed_write_cancels_queued),
    TEST_ENTRY(failed_write_cancels_beyond_its_transaction),
    TEST_ENTRY(sync_call_while_queued_asserts),
    TEST_ENTRY(garbage_header_refused),
    TEST_ENTRY(garbage_pages_refused),
    TEST_ENTRY(truncated_file_refused),
    TEST_ENTRY(orphan_wal_refused),
    TEST_ENTRY(tampered_rows_refused),
    TEST_ENTRY(second_process_locked_out),
    TEST_ENTRY(fault_injection_sync),
    TEST_ENTRY(fault_injection_async),
    TEST_ENTRY(full_disk_rolls_back_and_retries),
    TEST_ENTRY(schema_1_is_converted),
    TEST_ENTRY(schema_2_is_converted),
    TEST_ENTRY(log_segments_hold_their_entries),
    TEST_ENTRY(compaction_empties_whole_segments),
    TEST_ENTRY(compaction_of_segments_writes_few_pages),
    TEST_ENTRY(compact_and_reload),
    TEST_ENTRY(compaction_keeps_room_for_a_large_log),
    TEST_ENTRY(compact_does_not_rewrite_dropped_bytes),
    TEST_ENTRY(wal_checkpointed_after_1000_frames),
    TEST_ENTRY(failed_checkpoints_keep_the_wal),
    TEST_ENTRY(install_snapshot_replaces_log),
    TEST_ENTRY(restoring_marked_until_done),
    TEST_ENTRY(meta_set_once),
    TEST_ENTRY(load_from_and_term),
    TEST_ENTRY(trailing_from_honours_both_bounds),
    TEST_ENTRY(compaction_gives_space_back),
    TEST_ENTRY(compaction_step_bounded_by_bytes),
    TEST_ENTRY(compaction_step_shrinks_to_its_budget),
    TEST_ENTRY(compaction_vacuum_steps_fit_a_time_budget),
    TEST_ENTRY(compaction_vacuums_after_the_last_rows),
    TEST_ENTRY(compaction_ends_beside_writes),
    TEST_ENTRY(vacuum_without_room_fails_no_step),
    TEST_ENTRY(crash_consistency_sigkill),
    TEST_ENTRY(raft_core_round_trip),
    TEST_ENTRY(bench_batch_sizes),
    TEST_ENTRY(bench_start_checks),
    TEST_END,
};

const struct test_suite suite_store = {"store", cases};
