/* node_io_uv.c - the node's production I/O table (node_io.h): libuv's
 * timer and clock, store.c on libuv's thread pool (or on the loop, for a
 * small write while the loop has nothing else to do), transport.c,
 * snapshot.c's forked writer, its receiver's load on the thread pool and
 * mandi_client.c. One node per process: the handles live here. */
#include "node_io.h"

#include <poll.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "failpoint.h"
#include "log.h"
#include "tls_setup.h"

static struct {
    uv_loop_t *loop;
    uv_timer_t tick;
    void (*tick_cb)(void);
    void (*tick_done)(void);
    struct store *store;
    node_io_done_cb store_cbs[16]; /* the store's jobs in flight, in the
                                      order handed (their completions
                                      come in that order) */
    size_t cb_first, n_cbs;   /* ring */
    uint64_t batches_seen;    /* store_stats batches as of note_commit */
    uint64_t commit_avg_ns;   /* moving average of COMMIT times */
    uint64_t commit_last_ns;  /* the latest */
    uint64_t batch8_avg;      /* moving average of entries per write, x8 */
    struct transport *tr;
    void (*tr_done)(void);
    struct mandi_client *mandi;
} io;

static uint64_t uv_io_now(void *data)
{
    PZ_UNUSED(data);
    return uv_now(io.loop);
}

static uint64_t uv_io_clock_ns(void *data)
{
    PZ_UNUSED(data);
    struct timespec ts;
    int rc = clock_gettime(CLOCK_BOOTTIME, &ts); /* only EFAULT/EINVAL */
    pz_assert(rc == 0);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void uv_io_update_time(void *data)
{
    PZ_UNUSED(data);
    uv_update_time(io.loop);
}

static void on_tick(uv_timer_t *t)
{
    PZ_UNUSED(t);
    io.tick_cb();
}

static void uv_io_tick_start(void *data, uint64_t period_ms, void (*cb)(void))
{
    PZ_UNUSED(data);
    io.tick_cb = cb;
    uv_timer_init(io.loop, &io.tick);
    uv_timer_start(&io.tick, on_tick, period_ms, period_ms);
}

static void on_tick_closed(uv_handle_t *h)
{
    PZ_UNUSED(h);
    io.tick_done();
}

static void uv_io_tick_close(void *data, void (*done)(void))
{
    PZ_UNUSED(data);
    io.tick_done = done;
    uv_timer_stop(&io.tick);
    uv_close((uv_handle_t *)&io.tick, on_tick_closed);
}

/* --- store ---------------------------------------------------------------- */

static int uv_io_store_open(void *data, const char *dir, char *err,
                            size_t errlen)
{
    PZ_UNUSED(data);
    return store_open(dir, &io.store, err, errlen);
}

static void uv_io_store_close(void *data)
{
    PZ_UNUSED(data);
    store_close(io.store);
    io.store = NULL;
}

static int uv_io_store_load_from(void *data, uint64_t from,
                                 struct raft_hard_state *hs,
                                 struct raft_entry **entries, size_t *n,
                                 struct store_meta *meta)
{
    PZ_UNUSED(data);
    return store_load_from(io.store, from, hs, entries, n, meta);
}

static int uv_io_store_term(void *data, uint64_t index, uint64_t *term)
{
    PZ_UNUSED(data);
    return store_term(io.store, index, term);
}

static int uv_io_store_trailing_from(void *data, uint64_t index,
                                     uint64_t max_entries, uint64_t max_bytes,
                                     uint64_t *from)
{
    PZ_UNUSED(data);
    return store_trailing_from(io.store, index, max_entries, max_bytes, from);
}

static void uv_io_store_meta_get(void *data, struct store_meta *meta)
{
    PZ_UNUSED(data);
    store_meta_get(io.store, meta);
}

static int uv_io_store_meta_set(void *data, uint64_t cluster_id,
                                uint64_t node_id, const char *node_name)
{
    PZ_UNUSED(data);
    return store_meta_set(io.store, cluster_id, node_id, node_name);
}

static int uv_io_store_meta_set_incarnation(void *data, uint64_t inc)
{
    PZ_UNUSED(data);
    return store_meta_set_incarnation(io.store, inc);
}

static int uv_io_store_meta_set_promise(void *data, uint64_t promise_ns)
{
    PZ_UNUSED(data);
    return store_meta_set_promise(io.store, promise_ns);
}

/* A write on the loop thread holds the loop for one COMMIT: only while
 * COMMITs take less than this, on average and the latest. */
#define WRITE_NOW_MAX_NS 1000000 /* 1 ms */
/* ... and only while the batches have been single entries of late (a
 * moving average of entries per write, in eighths, at most this): under
 * load they grow, and the loop is better left serving through the fsync
 * while a worker runs it. */
#define WRITE_NOW_MAX_BATCH8 12 /* 1.5 entries */
/* A loop with no client to serve (alone) has little to do through the
 * fsync: its leader's next messages wait in the socket and form the next
 * batch, as they would have in the store's queue, and the hand-offs to
 * and from a worker (a wake-up of each, on a machine whose cores the
 * other nodes and the clients share) are saved at any load.
 * What the COMMIT holds up is a client's first request after the quiet,
 * hence a bound on the COMMIT times still. */
#define WRITE_ALONE_MAX_NS 5000000 /* 5 ms */
/* Clients are quiet after this long without input from any. */
#define CLIENTS_QUIET_MS 100

/* After a write: follow the COMMIT times (the disk's fsync, mostly), with
 * the WAL checkpoint that may follow one: on the loop, it holds the loop
 * as long. */
static void note_commit(void)
{
    struct store_stats st;
    store_stats(io.store, &st);
    if (st.batches == io.batches_seen)
        return;
    io.batches_seen = st.batches;
    io.batch8_avg = (io.batch8_avg * 7 + st.last_batch_entries * 8) / 8;
    io.commit_last_ns = st.last_commit_ns + st.last_checkpoint_ns;
    io.commit_avg_ns = (io.commit_avg_ns * 7 + io.commit_last_ns) / 8;
}

static void on_store_done(struct store *s, int status, const char *errmsg,
                          void *arg)
{
    PZ_UNUSED(s);
    PZ_UNUSED(arg);
    note_commit();
    pz_assert(io.n_cbs > 0);
    node_io_done_cb cb = io.store_cbs[io.cb_first];
    io.cb_first = (io.cb_first + 1) % PZ_ARRAY_SIZE(io.store_cbs);
    io.n_cbs--;
    cb(status, errmsg);
}

/* A store job was handed: cb comes after those before it. */
static void push_cb(int rv, node_io_done_cb cb)
{
    if (rv != 0)
        return;
    pz_assert(io.n_cbs < PZ_ARRAY_SIZE(io.store_cbs));
    io.store_cbs[(io.cb_first + io.n_cbs) % PZ_ARRAY_SIZE(io.store_cbs)] = cb;
    io.n_cbs++;
}

static int uv_io_store_write(void *data, const struct raft_hard_state *hs,
                             const struct raft_entry *entries, size_t n,
                             node_io_done_cb cb)
{
    PZ_UNUSED(data);
    int rv =
        store_write(io.store, io.loop, hs, entries, n, on_store_done, NULL);
    push_cb(rv, cb);
    return rv;
}

/* No job in flight, the disk fast and (unless alone) the batches single
 * entries of late. */
static bool uv_io_store_write_now_ok(void *data, bool alone)
{
    PZ_UNUSED(data);
    uint64_t max = alone ? WRITE_ALONE_MAX_NS : WRITE_NOW_MAX_NS;
    return !store_busy(io.store) && io.commit_avg_ns <= max &&
           io.commit_last_ns <= max &&
           (alone || io.batch8_avg <= WRITE_NOW_MAX_BATCH8);
}

/* Unless alone, only with no event pending on the loop, which nothing
 * would handle during the COMMIT: its epoll descriptor polls readable as
 * soon as any watched descriptor is ready (a request, a peer's message,
 * a completion). */
static int uv_io_store_write_now(void *data, bool alone,
                                 const struct raft_hard_state *hs,
                                 const struct raft_entry *entries, size_t n)
{
    PZ_UNUSED(data);
    struct pollfd p = {.fd = uv_backend_fd(io.loop), .events = POLLIN};
    if (!alone && poll(&p, 1, 0) != 0)
        return 1;
    int rv = store_write_sync(io.store, hs, entries, n);
    note_commit();
    return rv;
}

static bool uv_io_clients_quiet(void *data)
{
    PZ_UNUSED(data);
    return uv_now(io.loop) >= conn_client_input_at() + CLIENTS_QUIET_MS;
}

static int uv_io_store_write_install(void *data, uint64_t index, uint64_t term,
                                     const struct raft_hard_state *hs,
                                     const struct raft_entry *entries, size_t n,
                                     node_io_done_cb cb)
{
    PZ_UNUSED(data);
    int rv = store_write_install(io.store, io.loop, index, term, hs, entries, n,
                                 on_store_done, NULL);
    push_cb(rv, cb);
    return rv;
}

static int uv_io_store_compact_step(void *data, uint64_t upto,
                                    uint64_t max_rows, uint64_t max_bytes,
                                    node_io_done_cb cb)
{
    PZ_UNUSED(data);
    int rv = store_compact_step(io.store, io.loop, upto, max_rows, max_bytes,
                                on_store_done, NULL);
    push_cb(rv, cb);
    return rv;
}

static bool uv_io_store_busy(void *data)
{
    PZ_UNUSED(data);
    return store_busy(io.store);
}

static void uv_io_store_stats(void *data, struct store_stats *st)
{
    PZ_UNUSED(data);
    store_stats(io.store, st);
}

static const char *uv_io_store_errmsg(void *data)
{
    PZ_UNUSED(data);
    return store_errmsg(io.store);
}

static const char *uv_io_store_path(void *data)
{
    PZ_UNUSED(data);
    return store_path(io.store);
}

/* --- transport ------------------------------------------------------------ */

static int uv_io_tr_open(void *data, const struct transport_config *tc,
                         char *err, size_t errlen)
{
    PZ_UNUSED(data);
    struct transport_config c = *tc;
    c.tls_in = &tls_peer_in;
    c.tls_out = &tls_peer_out;
    io.tr = transport_new(io.loop, &c, err, errlen);
    if (io.tr == NULL)
        return PZ_ECONFIG;
    if (tc->token == NULL || tc->token[0] == '\0') {
        if (tls_slot_on(&tls_peer_in))
            pz_info("cluster-token is not set: peers are authenticated by "
                    "their TLS certificates; the membership endpoints are "
                    "open to HTTP clients");
        else
            pz_warn("cluster-token is not set: anyone who can reach this "
                    "node can join the cluster or change its membership");
    }
    return 0;
}

static void on_tr_closed(void *data)
{
    PZ_UNUSED(data);
    io.tr = NULL;
    io.tr_done();
}

static void uv_io_tr_close(void *data, void (*done)(void))
{
    PZ_UNUSED(data);
    io.tr_done = done;
    transport_close(io.tr, on_tr_closed);
}

static void uv_io_send(void *data, const struct raft_msg *m)
{
    PZ_UNUSED(data);
    transport_send(io.tr, m);
}

static int uv_io_send_chunk(void *data, uint64_t to,
                            const struct raft_snap_chunk *c)
{
    PZ_UNUSED(data);
    return transport_send_chunk(io.tr, to, c);
}

static int uv_io_peer_stats(void *data, uint64_t id,
                            struct transport_peer_stats *st)
{
    PZ_UNUSED(data);
    return transport_peer_stats(io.tr, id, st);
}

static void uv_io_tr_stats(void *data, struct transport_stats *st)
{
    PZ_UNUSED(data);
    transport_stats(io.tr, st);
}

static void uv_io_set_peer(void *data, uint64_t id, const char *addr)
{
    PZ_UNUSED(data);
    transport_set_peer(io.tr, id, addr);
}

static void uv_io_remove_peer(void *data, uint64_t id)
{
    PZ_UNUSED(data);
    transport_remove_peer(io.tr, id);
}

static void uv_io_probe(void *data, uint64_t id)
{
    PZ_UNUSED(data);
    transport_probe(io.tr, id);
}

/* --- snapshot writer ------------------------------------------------------ */

static int uv_io_snap_write(void *data, const char *dir, const struct kv *kv,
                            const struct snapshot_point *at,
                            struct snapshot_child *c, char *err,
                            size_t errlen)
{
    PZ_UNUSED(data);
    return snapshot_write_fork(dir, kv, at, c, err, errlen);
}

static void uv_io_snap_poll(void *data, struct snapshot_child *c, bool *done,
                            bool *ok)
{
    PZ_UNUSED(data);
    snapshot_child_poll(c, done, ok);
}

static void uv_io_snap_kill(void *data, struct snapshot_child *c)
{
    PZ_UNUSED(data);
    snapshot_child_kill(c);
}

/* --- loading a received snapshot, on the thread pool ---------------------- */

struct snap_load_work {
    uv_work_t req;
    struct node_snap_load *job;
    bool cancelled; /* the node went: free, no done */
    int stop;       /* set with cancelled: the load ends early */
};

static void snap_load_work(uv_work_t *req)
{
    struct node_snap_load *job = ((struct snap_load_work *)req->data)->job;
    pz_failpoint("install-loading");
    job->rc = snapshot_receiver_finish(job->rx, job->kv, NULL, 0, &job->meta,
                                       job->err, sizeof job->err);
    job->rx = NULL; /* finished or freed */
}

static void snap_load_after(uv_work_t *req, int status)
{
    struct snap_load_work *w = req->data;
    struct node_snap_load *job = w->job;
    if (status == UV_ECANCELED) { /* never ran: only a cancelled one */
        snapshot_receiver_abort(job->rx);
        job->rx = NULL;
        job->rc = PZ_ECANCELED;
    }
    if (w->cancelled) {
        if (job->rc == 0)
            snapshot_meta_free(&job->meta);
        kv_free(job->kv);
        pz_free(job);
    } else {
        job->io_data = NULL;
        job->done(job);
    }
    pz_free(w);
}

static int uv_io_snap_load(void *data, struct node_snap_load *job)
{
    PZ_UNUSED(data);
    struct snap_load_work *w = pz_calloc(1, sizeof *w);
    w->req.data = w;
    w->job = job;
    job->io_data = w;
    snapshot_receiver_stop_on(job->rx, &w->stop);
    int rc = uv_queue_work(io.loop, &w->req, snap_load_work, snap_load_after);
    if (rc < 0) {
        job->io_data = NULL;
        pz_free(w);
        return rc;
    }
    return 0;
}

static void uv_io_snap_load_cancel(void *data, struct node_snap_load *job)
{
    PZ_UNUSED(data);
    struct snap_load_work *w = job->io_data;
    w->cancelled = true;
    /* Not yet started: never runs. Running: the load stops within 4096
     * records (a stop does not wait for a whole table). */
    if (uv_cancel((uv_req_t *)&w->req) != 0)
        __atomic_store_n(&w->stop, 1, __ATOMIC_RELAXED);
}

/* --- mandi ---------------------------------------------------------------- */

static int uv_io_mandi_open(void *data, const struct pz_config *cfg, bool *on,
                            char *err, size_t errlen)
{
    PZ_UNUSED(data);
    *on = false;
    if (strcmp(cfg->mandi_addr, "none") == 0)
        return 0;
    mandi_client_https(&tls_mandi_client); /* for an https mandi-addr */
    io.mandi = mandi_client_new(io.loop, cfg->mandi_addr, cfg->cluster_token,
                                2000, err, errlen);
    if (io.mandi == NULL)
        return PZ_ECONFIG;
    *on = true;
    return 0;
}

static void uv_io_mandi_close(void *data)
{
    PZ_UNUSED(data);
    mandi_client_free(io.mandi);
    io.mandi = NULL;
}

static uint64_t uv_io_mandi_put_leader(void *data,
                                       const struct mandi_leader *li,
                                       mandi_client_cb cb, void *arg)
{
    PZ_UNUSED(data);
    return mandi_put_leader(io.mandi, li, cb, arg);
}

static uint64_t uv_io_mandi_post_join(void *data, const struct mandi_join *j,
                                      mandi_client_cb cb, void *arg)
{
    PZ_UNUSED(data);
    return mandi_post_join(io.mandi, j, cb, arg);
}

static uint64_t uv_io_mandi_get_joins(void *data, mandi_client_cb cb, void *arg)
{
    PZ_UNUSED(data);
    return mandi_get_joins(io.mandi, cb, arg);
}

static uint64_t uv_io_mandi_delete_join(void *data, const char *id,
                                        mandi_client_cb cb, void *arg)
{
    PZ_UNUSED(data);
    return mandi_delete_join(io.mandi, id, cb, arg);
}

/* --- a member's HTTP API ----------------------------------------------- */

static struct httpc *uv_io_http_get(void *data, const char *addr,
                                    const char *path, const char *log_name,
                                    httpc_cb cb, void *arg)
{
    PZ_UNUSED(data);
    struct httpc_opts o = {.max_head = 16384,
                           .max_body = 65536,
                           .timeout_ms = 2000,
                           .max_attempts = 1,
                           .log_name = log_name,
                           .quiet_dial = true,
                           .tls = &tls_http_client};
    struct httpc *c = httpc_new(io.loop, addr, &o);
    if (c != NULL)
        httpc_request(c, "GET", path, NULL, NULL, 0, cb, arg);
    return c;
}

static void uv_io_http_free(void *data, struct httpc *c)
{
    PZ_UNUSED(data);
    httpc_free(c);
}

void node_io_uv(struct node_io *t, uv_loop_t *loop)
{
    memset(&io, 0, sizeof io);
    io.loop = loop;
    *t = (struct node_io){
        .data = &io,
        .seed = pz_seed(),
        .now = uv_io_now,
        .clock_ns = uv_io_clock_ns,
        .update_time = uv_io_update_time,
        .tick_start = uv_io_tick_start,
        .tick_close = uv_io_tick_close,
        .store_open = uv_io_store_open,
        .store_close = uv_io_store_close,
        .store_load_from = uv_io_store_load_from,
        .store_term = uv_io_store_term,
        .store_trailing_from = uv_io_store_trailing_from,
        .store_meta_get = uv_io_store_meta_get,
        .store_meta_set = uv_io_store_meta_set,
        .store_meta_set_incarnation = uv_io_store_meta_set_incarnation,
        .store_meta_set_promise = uv_io_store_meta_set_promise,
        .store_write = uv_io_store_write,
        .store_write_now_ok = uv_io_store_write_now_ok,
        .store_write_now = uv_io_store_write_now,
        .clients_quiet = uv_io_clients_quiet,
        .store_write_install = uv_io_store_write_install,
        .store_compact_step = uv_io_store_compact_step,
        .store_busy = uv_io_store_busy,
        .store_stats = uv_io_store_stats,
        .store_errmsg = uv_io_store_errmsg,
        .store_path = uv_io_store_path,
        .tr_open = uv_io_tr_open,
        .tr_close = uv_io_tr_close,
        .send = uv_io_send,
        .send_chunk = uv_io_send_chunk,
        .peer_stats = uv_io_peer_stats,
        .tr_stats = uv_io_tr_stats,
        .set_peer = uv_io_set_peer,
        .remove_peer = uv_io_remove_peer,
        .probe = uv_io_probe,
        .snap_write = uv_io_snap_write,
        .snap_poll = uv_io_snap_poll,
        .snap_kill = uv_io_snap_kill,
        .snap_load = uv_io_snap_load,
        .snap_load_cancel = uv_io_snap_load_cancel,
        .mandi_open = uv_io_mandi_open,
        .mandi_close = uv_io_mandi_close,
        .mandi_put_leader = uv_io_mandi_put_leader,
        .mandi_post_join = uv_io_mandi_post_join,
        .mandi_get_joins = uv_io_mandi_get_joins,
        .mandi_delete_join = uv_io_mandi_delete_join,
        .http_get = uv_io_http_get,
        .http_free = uv_io_http_free,
    };
}
