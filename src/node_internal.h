/* node_internal.h - what the files of the node driver share: its state
 * and the functions one file calls in another. Not for anything outside
 * src/node*.c: the public API is node.h.
 *
 *   node.c           open and close, the tick, the Ready cycle, the
 *                    client-facing requests (propose, read, wait)
 *   node_reqs.c      the request lists: link, complete, expire
 *   node_members.c   the configuration as members with addresses, who may
 *                    dial us and removal, bootstrap and the cluster id,
 *                    remove/transfer/promote, mandi registration and joins
 *   node_snapshot.c  snapshots: take, compact the log, ship, receive,
 *                    install, restore at start
 *   node_status.c    node_status, node_ids, node_health
 *   node_nospace.c   out of space: the NOSPACE alarm, what it refuses,
 *                    leadership handed on, silent voters asked why
 *   node_io_uv.c     the production I/O table (node_io.h): everything the
 *                    others do to the world goes through nd->io
 *
 * Calls go from node.c down to the three others, and from those to
 * node_reqs.c; the few calls back into node.c (core_*) are the Ready
 * cycle's: completing reads after an install, finishing a close. The
 * state is one struct node; `nd` points at the one the code runs as (a
 * server has one; the simulation runs several, selecting each in turn). */
#ifndef PZ_NODE_INTERNAL_H
#define PZ_NODE_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "mandi_client.h"
#include "node_metrics.h"
#include "node.h"
#include "node_io.h"
#include "raft.h"
#include "raft_codec.h"
#include "snapshot.h"
#include "store.h"
#include "transport.h"
#include "watch.h"

#define NAME_SEED 0x7079617a6462ull /* hash seed of node names -> ids */

struct xfer;
struct httpc;

/* Leader: a voter that stopped answering, asked over HTTP for its
 * /status, so that the leader can say why (out of space). */
struct peer_alarm {
    uint64_t id;          /* the member's Raft id */
    struct httpc *c;      /* GET /status in flight, or NULL */
    uint64_t asked_at;    /* io now() of the last question */
    bool nospace;         /* its answer showed the NOSPACE alarm */
    char reason[200];     /* its alarm_reason then */
};

/* What the node knows of a member: from its configuration entry's meta,
 * and from its transport handshake (its client addresses). */
struct member {
    uint64_t id;        /* Raft id */
    unsigned caught_up; /* leader: consecutive checks a non-voter was
                           close behind the leader's log */
    char *name;         /* node-id */
    char *raft;         /* Raft address */
    char *http;         /* HTTP address, "" if unknown */
    char *grpc;         /* gRPC address, "" if unknown */
    uint64_t inc;       /* its data dir's incarnation (0: a founder) */
    bool voter;         /* in the current configuration */
    bool told;          /* its client addresses are known: from its
                           configuration entry, or from the handshake of a
                           link we dialed (else members_cron dials it) */
};

/* Readies in flight at most (the core's max_readies, its largest): enough
 * to keep the disk busy back to back while the loop builds the next
 * batch. The store writes those queued behind a COMMIT in one transaction,
 * so more in flight cost no fsync; with four, under a gRPC write load
 * (16x16, 64x1) the core was full when a commit came in 6 to 19% of the
 * writes timed (the apply then waits for the next COMMIT, which frees a
 * slot), and a follower's APPEND waited 1 to 6 ms for a slot now and then
 * (its entries missed the next transaction). */
#define NODE_READIES 8

/* A Ready taken from the core, until raft_advance. */
struct node_rd {
    struct raft_ready rd; /* arrays owned by the core (raft.h) */
    uint8_t state;        /* enum node_rd_state */
    bool hs;              /* its hard state goes with its write */
};

enum node_rd_state {
    RD_NO_WRITE = 0, /* nothing to persist: done once those before are */
    RD_WRITING,      /* handed to the store */
    RD_DURABLE,      /* written; waits for those before it */
    RD_OWED,         /* refused for lack of space (or behind one that
                        was): to be written again */
};

/* Committed entries handed out by the core and not applied yet (node.c,
 * "applying in steps"). */
struct node_apply {
    struct kv_job *job;       /* the command of cur, paused, or NULL */
    struct raft_entry cur;    /* the entry job applies (no data) */
    struct node_req *req;     /* the write whose sink job reports to */
    struct raft_entry *queue; /* a Ready's committed entries, taken
                                 from the core (raft_take_committed),
                                 those from next on still to apply:
                                 raft_hold_apply keeps the rest in the
                                 core */
    size_t n;                 /* entries in queue */
    size_t next;              /* queue[next] is the next to apply */
    uint64_t budget;          /* units (kv.h) applied per loop turn */
    uint64_t left;            /* what is left of it this turn */
};

struct node {
    struct node_io io;           /* everything it does to the world */
    const struct pz_config *cfg; /* borrowed from main */
    node_stop_cb stop;           /* asks the process to shut down */
    struct kv *kv;               /* the state machine */
    struct node_apply ap;        /* committed entries being applied */
    struct raft *raft;           /* the consensus core */
    uint64_t id;                 /* our Raft id */
    uint64_t incarnation;        /* our data dir's (store_meta) */
    uint64_t member_since;       /* conf entry we are a member from (0:
                                    not one), told in handshakes */
    uint64_t cluster_id;         /* identity shared by all members */
    uint64_t tick_ms;            /* the tick's period (node_tick) */
    /* Readies taken and not advanced, oldest first (a ring): the store
     * writes them in that order, back to back (pipelined), and each is
     * advanced once it and those before it are durable. */
    struct node_rd rds[NODE_READIES];
    size_t rd_first;             /* ring position of the oldest */
    size_t n_rds;                /* Readies in the ring */
    size_t n_writing;            /* of them, handed to the store and not
                                    yet completed */
    bool store_busy;             /* a compaction step runs on the store
                                    (no Ready is taken meanwhile) */
    bool write_now;              /* the one Ready in the ring is to be
                                    written on the loop thread once the
                                    turn's output is flushed
                                    (node_write_now) */
    bool write_alone;            /* ... as a follower whose clients are
                                    quiet (node.c, write_now_fits) */
    /* out of space (node_nospace.c) */
    bool ready_owed;             /* a Ready could not be stored for lack
                                    of space: it and those behind it are
                                    written again every NOSPACE_RETRY_MS,
                                    never advanced before */
    bool retry_due;              /* ready_owed: a retry is scheduled */
    uint64_t retry_at;           /* io now() of the next attempt */
    uint64_t compact_retry_at;   /* no compaction step before (io now()) */
    uint64_t ckpt_failures_seen; /* store_stats.checkpoint_failures as
                                    of the last look */
    bool ckpt_warned;            /* warned of failed checkpoints, and
                                    said nothing since */
    bool ckpt_warned_once;       /* ever, at ckpt_warned_at (loop ms) */
    uint64_t ckpt_warned_at;
    bool term_max_warned;        /* said the term is at RAFT_TERM_MAX, */
    uint64_t term_max_warned_at; /* last at this (loop ms) */
    uint64_t promise_ns;         /* this run's raft_config.lease_ns */
    uint64_t promise_lower_at;   /* io clock_ns after which the stored
                                    promise, an earlier run's longer one,
                                    comes down to promise_ns (0: none) */
    bool promise_raise;          /* promise_ns is not recorded yet (a full
                                    disk): the core promises the stored
                                    one meanwhile */
    uint64_t vacuum_nospace_seen; /* store_stats.vacuum_nospace as of
                                     the last compaction step */
    uint64_t compact_step_from;  /* the store's snapshot point before the
                                    compaction step in flight */
    bool alarm_disk;             /* NOSPACE: the disk is full */
    bool alarm_quota;            /* NOSPACE: quota-backend-bytes reached */
    char alarm_reason[320];      /* why, one line (when either is set) */
    struct quota_pending *quota_pending; /* leader: writes accepted and not
                                            applied yet, what each adds to
                                            the data (node_nospace.c) */
    size_t quota_pending_head;           /* first live entry in quota_pending */
    size_t quota_pending_n;              /* entries used (from 0) */
    size_t quota_pending_cap;            /* entries allocated */
    uint64_t quota_pending_bytes;        /* sum of the live entries' bytes */
    struct peer_alarm *palarms;  /* leader: what lagging voters said of
                                    themselves (their /status) */
    size_t n_palarms;            /* entries in palarms */
    struct pz_queue proposals;   /* writes waiting for apply, by index */
    struct pz_queue reads;       /* reads waiting for their read index */
    struct pz_queue reads_apply; /* reads waiting for applied >= index */
    struct pz_queue wait_leader; /* requests waiting for a leader */
    struct pz_queue transfers;   /* transfer requests: index = target id */
    struct pz_queue conf_wait;   /* removals waiting to start: ctx = id */
    struct pz_queue done;        /* requests to call back */
    uint64_t read_ctx;           /* last ReadIndex context used */
    uint64_t applied;            /* last index applied to kv */
    uint64_t applied_bytes;      /* what the entries applied since the
                                    newest snapshot (or install) take in
                                    the log: payload + LOG_ENTRY_COST */
    uint64_t snap_start_bytes;   /* applied_bytes when the writer child
                                    forked (its snapshot covers them) */
    uint64_t leader;             /* known leader, 0 if none */
    uint8_t role;                /* enum raft_role */
    struct member *members;      /* current configuration (+ addresses) */
    size_t n_members;            /* entries in members */
    struct node_member *view;    /* node_status() scratch */
    void (*close_cb)(void);      /* node_close callback */
    bool open;                   /* node_init succeeded */
    bool closing;                /* node_close waits for a write */
    bool cluster_id_unsaved;     /* members_save_cluster_id came during a write */
    uint64_t saved_term;         /* term last handed to the store */
    uint64_t saved_vote;         /* vote last handed to the store */
    uint64_t saved_commit;       /* commit index last handed to it */
    uint64_t hs_commit_at;       /* io now() from which a write may
                                    carry a moved commit index again */
    struct member departed[4];   /* members dropped from the conf lately
                                    (names for the logs) */
    size_t n_departed;           /* entries in departed */
    struct member early[4];      /* what peers we dialed before they were in
                                    our configuration said of themselves
                                    (id, the Raft address dialed, client
                                    addresses): a joining node dials its
                                    leader before it knows the members */
    size_t n_early;              /* entries in early */
    struct raft_conf committed;  /* the last committed configuration
                                    (members, and removals to tell) */
    bool self_committed;         /* it has this node (this incarnation) */
    bool removed;                /* this node left the configuration */
    uint64_t cron_at;            /* io now() of the next members_cron */
    uint64_t mandi_at;           /* ... and of members_mandi_cron */
    bool mandi_on;               /* a discovery service is configured */
    uint64_t mandi_put;          /* PUT /leader in flight (request id) */
    uint64_t mandi_poll;         /* GET /join-requests in flight */
    uint64_t mandi_join;         /* POST /join-requests in flight */
    uint64_t mandi_del;          /* DELETE /join-requests in flight */
    uint64_t join_warned;        /* incarnation last warned about */
    struct pz_ratelimit join_lines; /* lines about join requests */
    uint64_t join_held;          /* id of the join request last held back
                                    for non-voters catching up */
    /* snapshots (see the section below) */
    struct snapshot_child snap_child; /* the forked writer, pid 0: none */
    uint64_t snap_index;         /* newest durable local snapshot */
    uint64_t snap_term;          /* its term */
    uint64_t snap_size;          /* its file size */
    uint64_t prev_snap_index;    /* the durable snapshot before it */
    uint64_t prev_snap_term;     /* its term */
    bool compact_pending;        /* store_compact waits for the write */
    uint64_t snap_retry_at;      /* no automatic snapshot before (io now()):
                                    the last one failed */
    struct pz_queue snap_waiters; /* POST /admin/snapshot requests and
                                     backups (node_snapshot_backup) */
    bool snap_for_backup;         /* the child was started for backups only:
                                     called off if they all go */
    uint64_t backup_next_at;      /* io now() from which a snapshot for
                                     backups may start */
    struct xfer *xfers;          /* snapshots being sent to followers */
    struct snapshot_receiver *rx;/* snapshot being received */
    uint64_t rx_from, rx_index, rx_term; /* what rx receives, from whom */
    uint64_t rx_total;           /* its announced size */
    uint64_t rx_leader_term;     /* the term its leader sends it in */
    uint64_t rx_last_ms;         /* io now() of its last chunk */
    struct node_snap_load *rx_load; /* rx whole, being checked and loaded
                                       off the loop (snap_load) */
    struct pz_buf rx_install;       /* its INSTALL_SNAPSHOT if one came
                                       meanwhile (a whole frame), for when
                                       it is loaded; empty: none */
    uint64_t got_index, got_term;/* verified received file, not installed */
    struct kv *got_kv;           /* that file, loaded (the check loads) */
    uint8_t *got_conf;           /* its configuration, encoded again */
    size_t got_conf_len;         /* (canonical: compared with a message's) */
    bool got_taken;              /* the core took its INSTALL_SNAPSHOT:
                                    the next Ready installs it */
    struct watch_hub watch_hub;  /* every change the state machine makes,
                                    for GET /watch: fed from kv's event
                                    callback, published per applied entry */
    struct node_lease *lease;    /* lease expiry (node_lease.c) */
};

/* What an entry of the in-memory log costs besides its payload (struct
 * raft_entry, the payload's header, the allocator's): counted with the
 * payload in applied_bytes, so that many small entries weigh too. */
#define LOG_ENTRY_COST 64

extern struct node *nd;

/* Call the current node's I/O table: NIO(store_write, hs, ...). */
#define NIO(fn, ...) nd->io.fn(nd->io.data, ##__VA_ARGS__)

/* --- node.c --- */
/* A failed write of the log, the term, the vote or the cluster id, or a
 * snapshot that cannot be installed: log and exit (fail-stop). */
/* nd->kv is a new table (a snapshot was loaded): hook the watch history
 * to it and restart the history at its revision. */
void core_kv_replaced(void);
void core_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2),
                                                     noreturn));
/* Complete the reads whose read index is applied now. */
void core_reads_check_applied(void);
/* Complete the requests in nd->wait_leader that may go on now: reads once
 * any leader is known, the rest once it can take them
 * (members_leader_told). */
void core_leader_waits_wake(void);
/* A message from a peer, as the transport hands it (its checks, then the
 * core); the reason if it is invalid. */
const char *core_on_recv(const struct raft_msg *m);
/* Close the tick timer, then the transport, then the rest (node_close,
 * once no store job is in flight). */
void core_finish_close(void);

/* --- node_nospace.c --- */
#define NOSPACE_RETRY_MS 1000 /* a Ready refused for lack of space: again */
/* A store job failed with PZ_ENOSPC (errmsg: the store's message): raise
 * the NOSPACE alarm (log it once); a job that succeeded clears it. */
void core_nospace(const char *errmsg);
void core_space_back(void);
/* Out of space with a Ready owed and not the leader: frozen, as if
 * paused (no ticks, peer messages dropped). */
bool nospace_frozen(void);
/* PZ_ENOSPC if the write cmd may not be proposed now (the alarm; a put
 * that would pass quota-backend-bytes, counting the writes accepted and
 * not applied yet, raises it), else 0 and *grow is what it adds to the
 * data (0: nothing) for nospace_proposed once it is proposed. */
int nospace_check(const struct kv_cmd *c, uint64_t *grow);
/* The write at log index adds bytes to the data once applied: counted by
 * nospace_check until apply reaches index (nospace_applied) or the node
 * stops leading (nospace_pending_clear, also on close). */
void nospace_proposed(uint64_t index, uint64_t bytes);
void nospace_applied(uint64_t applied);
void nospace_pending_clear(void);
/* Once a second: the quota alarm follows the data; a leader out of space
 * hands its leadership on; a leader asks silent voters why. */
void nospace_cron(void);
/* What voter id said of its alarm (leader), or NULL; forget them all. */
struct peer_alarm *palarm_get(uint64_t id);
void palarm_clear(void);

/* --- node_reqs.c --- */
/* Append req to list (req->queued). */
void reqs_link(struct pz_queue *list, struct node_req *req);
/* Complete req with status: it moves to nd->done and is called back from
 * node_before_sleep, never from inside this call. */
void reqs_done(struct node_req *req, int status);
/* Reset req for a new request: callback, no status, deadline
 * request-timeout from now. */
void reqs_prepare(struct node_req *req, node_req_cb cb);
/* Complete every request of list with status (0 is success: a leader is
 * known, a snapshot is durable, ...). */
void reqs_finish_all(struct pz_queue *list, int status);
/* Complete the requests of list whose deadline passed, with status. */
void reqs_expire(struct pz_queue *list, int status);
/* Link a write into nd->proposals, which stays in log index order. */
void reqs_link_proposal(struct node_req *req);

/* --- node_members.c --- */
/* A node name's Raft id (a fixed hash: every node computes the same). */
uint64_t members_name_to_id(const char *name);
void members_free_one(struct member *m);
/* The member of the current configuration with this id, or NULL. */
struct member *members_find(uint64_t id);
/* The name the core's current configuration gives id, a member or one it
 * remembers as removed, into name (len bytes); "" if it names none. */
void members_conf_name(uint64_t id, char *name, size_t len);
/* True when this node (this incarnation) is in its current
 * configuration. */
bool members_has_self(void);
/* Rebuild nd->members from the current configuration (addresses from
 * each member's meta, client addresses learned from its handshakes) and
 * point the transport at them. After every configuration change. */
void members_refresh(void);
/* A configuration entry was applied (committed): members that left get
 * their links closed (the configuration remembers them as removed); this
 * node stops if it was removed. */
void members_conf_committed(const struct raft_entry *e);
/* A snapshot's configuration is the committed one (restart, install). */
void members_snapshot_committed(const struct raft_conf *c);
/* Once a second: promotion of caught-up non-voters (leader), probing
 * members when out of touch. */
void members_cron(void);
/* Every mandi-interval: the leader's registration and join polling, a
 * non-member's join request. */
void members_mandi_cron(void);
/* Once a tick: start the removals that waited for a change in flight. */
void members_conf_wait_retry(void);
/* First start with no state: write entry 1 (initial-cluster or a lone
 * node) and the cluster id. */
int members_bootstrap(char *err, size_t errlen);
/* Publish this node as the leader in mandi (now, and then every 2 s). */
void members_register_leader(void);
/* A leader is known and requests can reach it: this node leads, or we
 * know the client addresses of the node that does. */
bool members_leader_told(void);
/* Persist the cluster id a joining node learned (after a store job). */
void members_save_cluster_id(void *data, uint64_t id);
/* transport_config callbacks: addresses a peer told us, who may dial us,
 * a peer saying we were removed. */
void members_on_peer_info(void *data, uint64_t id, bool dialed,
                          const char *name, const char *raft,
                          const char *http, const char *grpc);
uint64_t members_member_since(void *data);
int members_check_peer(void *data, uint64_t id, uint64_t incarnation,
                       uint64_t member_since, uint64_t *conf_index,
                       uint64_t *conf_term);
void members_on_removed(void *data, uint64_t from, uint64_t conf_index,
                        uint64_t conf_term);

/* --- node_snapshot.c --- */
/* After applying: take a snapshot if raft-snapshot-entries were applied
 * since the last one. */
void snaps_maybe(void);
/* An entry applied in steps is done: snapshots asked for meanwhile start
 * (none is forked with part of an entry applied). */
void snaps_after_entry(void);
/* May a snapshot be forked now (no entry partly applied)? */
bool snaps_can_fork(void);
/* Each tick: reap the writer child; on success compact the core and
 * schedule the store's compaction, and prune old files. */
void snaps_poll(void);
/* node_cancel took a backup off the snapshot waiters: a snapshot started
 * for backups that none waits for any more is called off. */
void snaps_backup_gone(void);
/* From the Ready cycle when the store is free: one compaction step. */
void snaps_compact_step(void);
/* Rows one compaction step drops, with left rows still to drop. */
uint64_t snaps_compact_rows(uint64_t left);
/* Leader: stream the file of an INSTALL_SNAPSHOT to its follower, then
 * the message (xfer_start), paced each tick (xfer_pump); xfer_free ends a
 * transfer and reports it to the core. */
void snaps_xfer_start(const struct raft_msg *m);
void snaps_xfer_pump(void);
void snaps_xfer_free(struct xfer *x, bool ok);
/* Follower: end the transfer being received; forget the received file
 * awaiting its install (table and file); each tick, drop what went stale. */
void snaps_rx_abort(void);
void snaps_got_drop(void);
void snaps_rx_check(void);
/* Whether m may go to the core: an INSTALL_SNAPSHOT only once its file is
 * here and loaded. */
bool snaps_install_ready(const struct raft_msg *m);
/* Not ready, but its file is being loaded: held for then (true). */
bool snaps_install_later(const struct raft_msg *m);
/* NULL, or why an INSTALL_SNAPSHOT whose file is here must not go to the
 * core (its configuration is not the file's: the file is dropped). */
const char *snaps_install_refused(const struct raft_msg *m);
/* rd.snapshot: the received table becomes the state machine. */
void snaps_install(const struct raft_snapshot_meta *sm);
/* The node closes: the writer child, transfers both ways. */
void snaps_close(void);
/* Start: load the newest snapshot that agrees with the stored log, then
 * the stored log from its index minus raft-trailing-entries (*ents, *n:
 * free with store_entries_free; the whole log without a snapshot). */
int snaps_restore(const struct store_meta *sm, struct raft_entry **ents,
                  size_t *n, struct raft_snapshot_meta *out, bool *have,
                  char *err, size_t errlen);
/* transport_config callbacks: a chunk arrived, an outbound link went up
 * or down, the last inbound link of a peer closed. */
const char *snaps_on_chunk(void *data, uint64_t from,
                           const struct raft_snap_chunk *c);
void snaps_on_peer_link(void *data, uint64_t id, bool connected);
void snaps_on_inbound_closed(void *data, uint64_t from, bool last);

#endif
