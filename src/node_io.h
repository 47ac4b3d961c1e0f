/* node_io.h - everything the node driver does to the world, as one table
 * of functions (as canonical/raft's raft_io): the log store, the peer
 * transport, the snapshot writer and the loader of received snapshots,
 * the discovery service (mandi), the monotonic clock and the tick timer.
 *
 * The driver (src/node*.c) calls the store, the transport, the writer,
 * mandi and the clock only through this table. node_init fills it with
 * the production one (node_io_uv.c: libuv's timer and clock, store.c on
 * the thread pool, transport.c, snapshot.c's forked writer,
 * mandi_client.c); the deterministic simulation
 * (tests/unit/test_node_sim.c) gives node_open its own: a virtual clock,
 * an in-memory store whose writes complete when the simulation says so,
 * an in-memory network that loses, delays and reorders, and a fake mandi.
 *
 * Contracts are those of the modules the production table wraps
 * (store.h, transport.h, snapshot.h, mandi_client.h), minus the loop:
 *  - the store's asynchronous jobs (write, install, compaction step)
 *    complete exactly once through their callback, later, never from
 *    inside the call, in the order they were handed; writes and installs
 *    may be handed while others are in flight (a compaction step only
 *    alone); a write reported done is durable (a crash keeps it, and
 *    every job before it), those not reported may be lost, each whole,
 *    the later ones with the earlier; a job that fails (PZ_ENOSPC too)
 *    makes those behind it complete with PZ_ECANCELED, not run;
 *    store_write_now is the one synchronous write, for when nothing is
 *    in flight and the loop is idle or serves only its Raft peers;
 *  - a received snapshot's load (snap_load) completes once through its
 *    done, later, unless called off (snap_load_cancel); the production
 *    table runs it on libuv's thread pool, so the loop goes on serving
 *    while a large table loads;
 *  - transport callbacks (recv, on_chunk, ...) come from the
 *    transport_config given to tr_open, never from inside send;
 *  - the tick callback and every completion run with the node selected
 *    (node_select): the production table has one node; the simulation
 *    selects the node before it calls it.
 * Every function takes the table's data first. */
#ifndef PZ_NODE_IO_H
#define PZ_NODE_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "httpc.h"
#include "mandi_client.h"
#include "node.h"
#include "raft.h"
#include "raft_codec.h"
#include "snapshot.h"
#include "store.h"
#include "transport.h"

/* A store job finished: status 0 or a negative code, errmsg why (NULL on
 * success; valid during the call). */
typedef void (*node_io_done_cb)(int status, const char *errmsg);

/* A received snapshot file checked and loaded into a new table off the
 * loop (snap_load): snapshot_receiver_finish(rx, kv, ...), which fsyncs
 * the file, loads it (the most thorough check) and renames it into
 * place. The node fills the first fields and frees the job in done; the
 * io owns it from snap_load_cancel on. */
struct node_snap_load {
    struct snapshot_receiver *rx;   /* in: a whole file, taken by the job */
    struct kv *kv;                  /* in: a new table; out: filled (the
                                       job's rc 0) */
    uint64_t index, term;           /* the file's point, as announced */
    int rc;                         /* out: snapshot_receiver_finish's */
    struct snapshot_meta meta;      /* out: the file's (rc 0) */
    char err[SNAPSHOT_ERRMSG_SIZE]; /* out: why not (rc < 0) */
    void (*done)(struct node_snap_load *job); /* on the loop, node
                                                 selected */
    void *io_data;                            /* the io's */
    uint64_t started_ms; /* the node's: io now() at the start */
    bool slow_told;      /* the node's: "still loading" logged */
};

struct node_io {
    void *data;    /* first argument of every function */
    uint64_t seed; /* seeds the table's hash, the core's timeouts and the
                      transport's jitter; 0: from the system */

    /* --- clock and timer --- */
    uint64_t (*now)(void *data); /* monotonic milliseconds */
    /* Nanoseconds read now (never a cached time), from a clock that goes
     * on while the machine sleeps: the leader's read lease. */
    uint64_t (*clock_ns)(void *data);
    /* The clock again after long work (may be NULL: nothing to do). */
    void (*update_time)(void *data);
    /* Call cb every period_ms from now on; tick_close stops it and calls
     * done once it is closed. */
    void (*tick_start)(void *data, uint64_t period_ms, void (*cb)(void));
    void (*tick_close)(void *data, void (*done)(void));

    /* --- the log store (store.h) --- */
    int (*store_open)(void *data, const char *dir, char *err, size_t errlen);
    void (*store_close)(void *data);
    int (*store_load_from)(void *data, uint64_t from,
                           struct raft_hard_state *hs,
                           struct raft_entry **entries, size_t *n,
                           struct store_meta *meta);
    int (*store_term)(void *data, uint64_t index, uint64_t *term);
    int (*store_trailing_from)(void *data, uint64_t index, uint64_t max_entries,
                               uint64_t max_bytes, uint64_t *from);
    void (*store_meta_get)(void *data, struct store_meta *meta);
    int (*store_meta_set)(void *data, uint64_t cluster_id, uint64_t node_id,
                          const char *node_name);
    int (*store_meta_set_incarnation)(void *data, uint64_t incarnation);
    int (*store_meta_set_promise)(void *data, uint64_t promise_ns);
    /* Persist a Ready (hs may be NULL); entries stay valid until cb. */
    int (*store_write)(void *data, const struct raft_hard_state *hs,
                       const struct raft_entry *entries, size_t n,
                       node_io_done_cb cb);
    /* Whether a Ready may be persisted on the caller's thread: no store
     * job in flight and the disk fast of late; unless alone, the load
     * low of late too. alone: the loop has no client to serve (a
     * follower whose clients are quiet), so a batch of any load may
     * hold it. May be NULL (never). */
    bool (*store_write_now_ok)(void *data, bool alone);
    /* Persist a Ready on the caller's thread: 0 once durable, 1 with
     * nothing written when events wait to be handled (store_write then;
     * never when alone: the events are the peers' messages, which can
     * wait), or a negative code (store_errmsg says why; PZ_ENOSPC:
     * nothing stored, as for store_write). Only after store_write_now_ok
     * said yes, with the same alone. */
    int (*store_write_now)(void *data, bool alone,
                           const struct raft_hard_state *hs,
                           const struct raft_entry *entries, size_t n);
    /* Whether no client has sent this node anything for a while (the
     * Raft peers are not clients). May be NULL (never). */
    bool (*clients_quiet)(void *data);
    /* Drop the whole log, record (index, term) as the snapshot point,
     * write hs and entries, in one job. */
    int (*store_write_install)(void *data, uint64_t index, uint64_t term,
                               const struct raft_hard_state *hs,
                               const struct raft_entry *entries, size_t n,
                               node_io_done_cb cb);
    /* 0 (cb later), 1 (nothing to do, no cb), or an error. */
    int (*store_compact_step)(void *data, uint64_t upto, uint64_t max_rows,
                              uint64_t max_bytes, node_io_done_cb cb);
    bool (*store_busy)(void *data);
    void (*store_stats)(void *data, struct store_stats *st);
    const char *(*store_errmsg)(void *data);
    const char *(*store_path)(void *data);

    /* --- the peer transport (transport.h) --- */
    int (*tr_open)(void *data, const struct transport_config *tc, char *err,
                   size_t errlen);
    void (*tr_close)(void *data, void (*done)(void));
    void (*send)(void *data, const struct raft_msg *m);
    int (*send_chunk)(void *data, uint64_t to, const struct raft_snap_chunk *c);
    int (*peer_stats)(void *data, uint64_t id, struct transport_peer_stats *st);
    void (*tr_stats)(void *data, struct transport_stats *st);
    void (*set_peer)(void *data, uint64_t id, const char *addr);
    void (*remove_peer)(void *data, uint64_t id);
    void (*probe)(void *data, uint64_t id);

    /* --- the snapshot writer (snapshot_write_fork and friends) --- */
    int (*snap_write)(void *data, const char *dir, const struct kv *kv,
                      const struct snapshot_point *at,
                      struct snapshot_child *c, char *err, size_t errlen);
    void (*snap_poll)(void *data, struct snapshot_child *c, bool *done,
                      bool *ok);
    void (*snap_kill)(void *data, struct snapshot_child *c);
    /* Run job (struct node_snap_load) on another thread: its done
     * later, on the loop, never from inside the call. 0, or a negative
     * code (the job untouched: rx still the caller's). */
    int (*snap_load)(void *data, struct node_snap_load *job);
    /* The node goes: done is not called; the io frees the job (rx, kv,
     * meta and the job itself) once it has run or was called off. */
    void (*snap_load_cancel)(void *data, struct node_snap_load *job);

    /* --- mandi (mandi_client.h); mandi_open may leave it off --- */
    int (*mandi_open)(void *data, const struct pz_config *cfg, bool *on,
                      char *err, size_t errlen);
    void (*mandi_close)(void *data);
    uint64_t (*mandi_put_leader)(void *data, const struct mandi_leader *li,
                                 mandi_client_cb cb, void *arg);
    uint64_t (*mandi_post_join)(void *data, const struct mandi_join *j,
                                mandi_client_cb cb, void *arg);
    uint64_t (*mandi_get_joins)(void *data, mandi_client_cb cb, void *arg);
    uint64_t (*mandi_delete_join)(void *data, const char *id,
                                  mandi_client_cb cb, void *arg);

    /* --- a member's HTTP API (httpc.h): GET path at addr, cb(res, arg)
     * once; NULL if it cannot start. http_free cancels (allowed from
     * cb). --- */
    struct httpc *(*http_get)(void *data, const char *addr, const char *path,
                              const char *log_name, httpc_cb cb, void *arg);
    void (*http_free)(void *data, struct httpc *c);
};

/* Open a node on io (copied; io->data must outlive the node) and select
 * it. node_init is node_open on the production table. Returns 0 or a
 * negative code with a message in err. */
int node_open(const struct node_io *io, const struct pz_config *cfg,
              node_stop_cb stop, char *err, size_t errlen);

/* Several nodes in one process (the simulation): the node the calls of
 * node.h act on is the selected one. node_current() is NULL when none is
 * open. */
struct node;
void node_select(struct node *n);
struct node *node_current(void);
/* The selected node's tick (what the timer calls). */
void node_tick(void);
/* Drop the selected node as a crash would: no callback of any request,
 * nothing written, every in-memory thing freed, the io's handles left to
 * the caller (its store, transport and writer are not closed). */
void node_crash(void);

/* The production table (node_io_uv.c) on loop. */
void node_io_uv(struct node_io *io, uv_loop_t *loop);

#endif
