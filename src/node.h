/* node.h - the replicated key-value node as the protocols see it: propose a
 * write, wait until a read is safe, find the leader, look at the state.
 *
 * Requests are asynchronous. The caller embeds a struct node_req in its own
 * state, calls node_propose(), node_read() or node_wait_leader(), and gets
 * exactly one callback later, from the loop (never from inside the call),
 * unless it calls node_cancel() first, after which no callback comes. A
 * caller that goes away (its connection closed) must cancel.
 *
 * Consistency: a write's callback runs once its entry is committed and
 * applied here. A linearizable read's callback runs once this node has
 * applied at least the leader's commit index as of a moment after the read
 * arrived, confirmed by a heartbeat round (ReadIndex, thesis §6.4); the
 * caller then reads node_kv() directly. A stale read completes at once. */
#ifndef PZ_NODE_H
#define PZ_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "kv.h"
#include "queue.h"

struct node_req;
/* status: 0, or PZ_ENOTLEADER / PZ_ENOLEADER / PZ_ELEADERCHANGE /
 * PZ_ETIMEDOUT / PZ_ESHUTDOWN. */
typedef void (*node_req_cb)(struct node_req *req, int status);

struct node_req {
    struct pz_queue q;     /* in one of the node's lists */
    node_req_cb cb;        /* called once, unless cancelled */
    int status;            /* result, set before cb */
    bool queued;           /* q is linked */
    uint64_t index;        /* write: log index; read: read index */
    uint64_t term;         /* write: term of the proposal */
    uint64_t ctx;          /* read: ReadIndex context */
    uint64_t member;       /* removal, transfer: the member's Raft id */
    bool read_waits;       /* a read parked until a leader is known */
    uint64_t deadline;     /* uv_now() past which it fails (timeout) */
    uint64_t proposed_ns;  /* write: when the leader proposed it */
    struct kv_result res;  /* writes: what apply did */
    const struct kv_sink *sink; /* writes: a transaction's results go here
                                   as it applies (node_propose_sink) */
    uint8_t *ro_cmd;       /* a read-only transaction run after a read
                              (node_propose_sink): a copy, owned */
    size_t ro_len;         /* its length */
    node_req_cb ro_cb;     /* the caller's cb for it */
    bool unbounded;        /* write: the node's own (a lease expiry), not
                              refused past raft-max-uncommitted */
    bool backup;           /* snapshot waiter: a backup */
};

struct node_member {
    const char *name;     /* node-id */
    uint64_t id;          /* Raft id */
    bool voter;           /* voter or non-voter */
    const char *raft;     /* Raft address */
    const char *http;     /* HTTP address, "" if not known yet */
    const char *grpc;     /* gRPC address, "" if not known yet */
    uint64_t match;       /* leader only: replicated up to */
    uint64_t last_contact_ms; /* leader only: since last heard */
    bool nospace;          /* leader only: the member, silent, says it has
                              the NOSPACE alarm (asked by HTTP) */
    const char *alarm_reason; /* its reason then ("" if none) */
};

struct node_status {
    const char *id;          /* node-id */
    const char *role;        /* "leader", "follower", "candidate", ... */
    const char *leader;      /* leader's node-id, "" when unknown */
    uint64_t term;           /* current term */
    uint64_t commit_index;   /* highest committed log index */
    uint64_t applied_index;  /* highest applied log index */
    uint64_t last_index;     /* last log index */
    uint64_t persisted_index;/* last index durable here */
    uint64_t uncommitted_bytes; /* leader: bytes of writes not committed
                                   yet (raft-max-uncommitted) */
    size_t keys;             /* keys in the state machine */
    uint64_t revision;       /* the state machine's revision */
    size_t n_members;        /* entries in members */
    struct node_member *members; /* valid until the next loop turn */
    uint64_t fsyncs;         /* log write transactions */
    uint64_t fsync_entries;  /* entries written by them */
    bool nospace;            /* the NOSPACE alarm: client writes refused
                                (all of them when the disk is full, all
                                but deletes when over the quota) */
    const char *alarm_reason;/* why, one line ("" without an alarm) */
    uint64_t cluster_id;     /* identity shared by all members */
    uint64_t self_id;        /* this node's Raft id */
};

/* Asks the process to shut down, saying why (the node was removed from
 * the cluster). */
typedef void (*node_stop_cb)(const char *why);

/* Open the node (data directory, state machine, Raft, peers). cfg is
 * borrowed for the node's life. Returns 0 or a negative code with a
 * message in err. */
int node_init(uv_loop_t *loop, const struct pz_config *cfg, node_stop_cb stop,
              char *err, size_t errlen);
/* Stop: fail every waiting request with PZ_ESHUTDOWN, close the peer
 * transport, and call cb once every handle is closed. */
void node_close(void (*cb)(void));

/* The process is shutting down: the followers learn each commit index at
 * once (raft_commit_eager), as the leader may exit before its next tick. */
void node_drain(void);

/* Replicate an encoded kv command (kv_encode_*); cb once it is applied
 * here. Returns 0, or at once (cb never called): PZ_ENOTLEADER (a leader is
 * known elsewhere: forward to node_leader_*_addr()), PZ_ENOLEADER (none
 * known: node_wait_leader() then retry), PZ_EBUSY (leadership transfer). */
int node_propose(struct node_req *req, const uint8_t *cmd, size_t len,
                 node_req_cb cb);
/* node_propose, and while the entry applies here, sink (borrowed until
 * cb) gets a transaction's results (kv_apply_sink): the reads of its
 * branch see the table exactly at its revision. */
int node_propose_sink(struct node_req *req, const uint8_t *cmd, size_t len,
                      const struct kv_sink *sink, node_req_cb cb);
/* cb once reading the local state machine is linearizable (stale: at the
 * next loop turn, without any check). Works on followers too. */
int node_read(struct node_req *req, bool stale, node_req_cb cb);
/* cb(0) as soon as a leader is known that requests can reach (this node,
 * or one whose client addresses this node knows, to forward to; maybe at
 * once, on the next turn), or after request-timeout cb(PZ_ENOLEADER), or
 * cb(PZ_ETIMEDOUT) when a leader is known but not its addresses. */
void node_wait_leader(struct node_req *req, node_req_cb cb);
/* Leader only. Remove member `name` (node-id) from the configuration; cb
 * once the change is committed and applied here. The removed member is
 * told and stops. Returns 0, or at once PZ_ENOTLEADER / PZ_ENOLEADER,
 * PZ_ENOTFOUND (no such member), PZ_EBUSY (another change is pending). */
int node_remove_member(struct node_req *req, const char *name,
                       node_req_cb cb);
/* Leader only. Hand leadership to member `name` (TimeoutNow, thesis
 * §3.10); cb(0) once it leads, PZ_ELEADERCHANGE if another node won,
 * PZ_ETIMEDOUT if nothing happened. Immediate errors as above, and
 * PZ_EINVAL for a non-voter. */
int node_transfer(struct node_req *req, const char *name, node_req_cb cb);
/* Take a snapshot now (POST /admin/snapshot): cb(0) once a durable one
 * covers everything applied at the time of the call (at once if nothing
 * was applied since the last one), PZ_EIO if writing it failed. Returns 0
 * or PZ_EIO at once. */
int node_snapshot_now(struct node_req *req, node_req_cb cb);
/* A snapshot for a backup (GET /admin/snapshot, etcd Snapshot): cb(0)
 * once a durable one covers index `need` (the read index of the
 * linearizable read the caller did first: every write acknowledged before
 * the request). Requests share one: a snapshot being written that covers
 * `need` is waited for, and a new one starts no sooner than
 * snapshot-backup-interval after the last one started for backups (the
 * request waits for that moment). A snapshot started for backups whose
 * requests all went (node_cancel) is called off, unless the log needs it.
 * Returns 0; PZ_EIO at once if the snapshot cannot start; PZ_EBUSY (cb
 * never called) when the next permitted one is more than request-timeout
 * away: *retry_ms says when it is. */
int node_snapshot_backup(struct node_req *req, uint64_t need, node_req_cb cb,
                         uint64_t *retry_ms);
/* Open the newest local snapshot file for reading (GET /admin/snapshot,
 * after node_snapshot_now): *r (free with snapshot_reader_close) stays
 * readable to its end even if the file is pruned meanwhile; *index is its
 * Raft index. Returns 0, PZ_ENOTFOUND (no snapshot) or a negative errno,
 * with a message in err. */
struct snapshot_reader;
int node_snapshot_open(struct snapshot_reader **r, uint64_t *index,
                       char *err, size_t errlen);
/* Streams sending a snapshot file to a client (GET /admin/snapshot, etcd
 * Maintenance.Snapshot), server-wide: take a slot before starting one
 * (false: snapshot-max-streams are running), give it back when it ends. */
bool node_snapshot_stream_get(void);
void node_snapshot_stream_put(void);
/* snapshot-stall-timeout, ms: a snapshot stream whose client took nothing
 * for this long is cancelled. */
uint64_t node_snapshot_stall_ms(void);

/* pyazdb-server --restore FILE, before node_init: seed cfg->raft_data,
 * which must hold no state, from the backup FILE (checked whole first),
 * as a new one-node cluster with a new cluster id whose state is the
 * backup's. Returns 0, or a negative code with a one-line reason in err
 * (PZ_ECORRUPT and friends: not a valid snapshot; PZ_EINVAL: the data
 * directory holds state; PZ_ECONFIG: initial-cluster is set). */
int node_restore_backup(const struct pz_config *cfg, const char *file,
                        char *err, size_t errlen);
/* Index and file size of the newest local snapshot (0, 0: none). */
void node_snapshot_info(uint64_t *index, uint64_t *size);
/* Forget req: its callback will not be called. Idempotent. */
void node_cancel(struct node_req *req);

/* Units of apply work (kv.h "applying in steps", about one key deleted
 * each, or one SET) a loop turn spends at most: an entry that needs more
 * is applied over several turns, and the entries after the budget wait
 * for the next turn (node.c, "applying in steps"): a follower catching up
 * is handed thousands of entries at once. Measured at about 1.5 us a key
 * deleted, and 3 to 6 us a SET into a table of 2M keys on a follower
 * catching up: a few ms a turn. */
#define NODE_APPLY_BUDGET 2048
/* Set the budget (0: NODE_APPLY_BUDGET); for tests. */
void node_set_apply_budget(uint64_t units);
/* Is part of an entry applied (a command paused between its steps)? Then
 * no key, range or lease may be read from node_kv() until it is done: a
 * reader goes through node_read (whose callbacks wait for its end). */
bool node_applying(void);
struct kv *node_kv(void);
/* Full path of the Raft log's database ("" when the node is not open). */
const char *node_db_path(void);
/* Bytes of that database and its write-ahead log (0: not open). */
uint64_t node_db_size(void);
/* The watch history and watchers (watch.h), fed as entries apply. */
struct watch_hub *node_watch(void);
/* True when this node is the leader. */
bool node_is_leader(void);
/* The known leader's HTTP or gRPC address ("host:port"), or NULL when this
 * node is the leader, no leader is known, or its address is not known yet.
 * Borrowed until the next loop turn. Followers forward client requests
 * there. */
const char *node_leader_http_addr(void);
const char *node_leader_grpc_addr(void);
void node_status(struct node_status *st);
/* What every etcd answer's header carries, cheaply (node_status builds the
 * member view): the cluster id, this node's Raft id and its term as last
 * made durable. */
void node_ids(uint64_t *cluster_id, uint64_t *self_id, uint64_t *term);

struct node_health {
    const char *role;   /* "leader", "follower", ... ("" if not open) */
    const char *leader; /* leader's node-id, "" when unknown */
    uint64_t term;      /* current term */
    char reason[192];   /* why not, one line (when false) */
};

/* The one rule of health checks (HTTP GET /health, gRPC Health): true
 * when this node can serve linearizable requests now. That is, a leader is
 * known, and on the leader a majority of the voters (itself included) was
 * heard from within the election timeout and an entry of its term is
 * committed; on a follower the leader was heard from within the election
 * timeout. Otherwise false, with the reason in h->reason. h's strings are
 * borrowed until the next loop turn. */
bool node_health(struct node_health *h);
/* Work to do before the loop sleeps: the Raft Ready cycle, completions. */
void node_before_sleep(void);
/* After node_before_sleep and the flush of the turn's output: writes the
 * Ready it left for the loop thread, if any (and calls what waited for
 * it). True if it wrote: its output is to be flushed too. */
bool node_write_now(void);
/* True when node_before_sleep has work it could not finish this turn. */
bool node_has_work(void);

#endif
