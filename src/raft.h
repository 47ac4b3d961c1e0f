/* raft.h - the pure Raft consensus core (etcd-raft RawNode style).
 *
 * Owns: the in-memory log, term/vote/commit, elections (randomized timeouts,
 * Pre-Vote, CheckQuorum, leader stickiness), replication (probe/replicate
 * progress, pipelining, conflict hints), single-server membership changes,
 * leadership transfer (TimeoutNow), ReadIndex reads, and the Raft side of
 * snapshots: log compaction, the snapshot point (index, term, conf) and
 * InstallSnapshot (thesis §5). The state machine bytes of a snapshot never
 * enter the core: the driver writes, streams and loads snapshot files.
 *
 * Pure: no I/O, clocks or rand(). Inputs are messages (raft_step), proposals
 * (raft_propose*, raft_read_index, raft_transfer_leader) and ticks
 * (raft_tick). Outputs are plain C data collected in a struct raft_ready.
 * Given the same seed and the same sequence of calls the core behaves
 * identically (randomness comes from pz_rand_next seeded by config.seed).
 *
 * Happy path of the driver (node.c), one loop turn:
 *   if (raft_has_ready(r)) {
 *       raft_ready(r, &rd);
 *       apply rd.committed[] to the state machine (they are durable;
 *         NORMAL entries carry commands, NOOP entries are skipped, CONF
 *         entries need nothing: the conf took effect when appended);
 *       answer rd.read_states[] once applied >= read index; fail
 *         rd.dropped_reads[];
 *       send rd.msgs[] now;
 *       start writing rd.hs (if rd.hs_changed) and rd.entries[] in ONE
 *         transaction (storage first deletes every stored entry with
 *         index >= rd.entries[0].index, then appends);
 *       when the write is durable: send rd.msgs_after_persist[], then
 *         raft_advance(r, &rd);
 *   }
 * If rd has nothing to persist (!rd.hs_changed && rd.n_entries == 0 &&
 * !rd.snapshot), the driver may send msgs_after_persist at once and advance
 * immediately. A failed write is fatal (fail-stop): never advance past it.
 *
 * Snapshots, the driver's side (see raft_compact, raft_snapshot_meta_at,
 * raft_restore_snapshot, raft_report_snapshot and Ready.snapshot):
 *  - taking one: right after applying up to index A, call
 *    raft_snapshot_meta_at(r, A, &meta) and write the state machine as of A
 *    together with meta (index, term, conf) to a snapshot file, off the hot
 *    path. Once the file is durable, call raft_compact(r, A, trailing);
 *    if it returns 0, drop the same log prefix durably: store_compact(
 *    first_index - 1, compact_term) from raft_status (or less; never
 *    more); PZ_ECANCELED: the file is obsolete, drop it.
 *  - restart: load the current snapshot (state machine + meta: the latest
 *    local one whose file is durable, or the last one installed by a
 *    durable Ready, never a received file whose install was not written)
 *    and the stored log, then raft_restore_snapshot().
 *  - sending one: an INSTALL_SNAPSHOT in rd.msgs names (snap_index,
 *    snap_term): the driver streams the file of that snapshot to m.to and
 *    delivers m to the peer's core only once the whole file has arrived
 *    and checks out; it reports the outcome with raft_report_snapshot().
 *  - receiving one: rd.snapshot (see struct raft_ready).
 *
 * By default exactly one Ready is in flight: between raft_ready() and
 * raft_advance() raft_has_ready() returns false, while
 * raft_tick/raft_step/raft_propose* keep working; what they produce goes
 * into the next Ready, except that a leader's messages may be taken
 * earlier with raft_take_msgs. A Ready only contains what is new since
 * the previous one.
 *
 * Pipelined Readies (config.max_readies > 1): up to that many Readies may
 * be in flight, so that the next batch is handed to the disk while the
 * previous one is still being written. The driver must then:
 *  - persist them in the order they were taken, each whole (a crash may
 *    keep any prefix of them, never a later one without an earlier one);
 *  - call raft_advance once per Ready, in the order they were taken,
 *    once that Ready and every earlier one is durable, and send each
 *    Ready's msgs_after_persist only then (before its raft_advance); a
 *    Ready with nothing to persist taken behind others waits for them;
 *  - send rd.msgs at once, as usual (nothing in them claims anything of
 *    the disk: acknowledgements and votes are in msgs_after_persist).
 * A Ready's entries and msgs_after_persist stay valid until its
 * raft_advance and the next raft_ready() after it; its other arrays until
 * the next raft_ready(). A Ready that installs a snapshot is never taken
 * while others are in flight, and no other is taken while it is.
 *
 * Failure modes: calls return 0 or a negative PZ_E* code (err.h). Nothing
 * a peer sends can abort or hang the core: raft_step refuses, before
 * changing anything, every message no correct peer sends (PZ_EINVAL, with
 * the reason in raft_errmsg; the driver should drop the peer's link), and
 * ignores stale or inapplicable ones. A broken internal invariant is a
 * pz_assert. OOM aborts (pz_malloc).
 *
 * Thread safety: none. One owner calls everything. */
#ifndef RAFT_H
#define RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RAFT_ERRMSG_SIZE 256 /* size of the errmsg buffer of raft_new */
/* Terms and indexes in messages must stay below this: no real cluster gets
 * near it (2^62 elections or entries), and arithmetic on them (term + 1,
 * index + n) can then never wrap around. */
#define RAFT_LIMIT (UINT64_C(1) << 62)
/* A node's own term goes up to RAFT_TERM_MAX, never further: its next
 * election would ask for RAFT_LIMIT, which every peer refuses. There it
 * never stands for election again (raft_campaign is a no-op). */
#define RAFT_TERM_MAX (RAFT_LIMIT - 1)
/* Terms a peer may make us take. Below RAFT_TERM_BOUND (2^61) any: no
 * correct cluster gets there (2^61 elections, one a millisecond, take 73
 * million years). At or above it, at most RAFT_TERM_LEAP above our own
 * term; a message of a higher term is refused (the link dropped). Without
 * the bound one forged message at RAFT_TERM_MAX took the whole room left:
 * its receiver, and every node it then told, could never campaign again,
 * and the cluster stayed leaderless. With it, a forged term is either
 * refused, or below the bound and leaves the cluster 2^61 elections,
 * which forged messages can only take 2^16 at a time (2^45 messages).
 * After such a forgery the cluster elects past the bound, and a node that
 * trails it there (a new one, one that missed the forged term) must
 * follow: on a refused term, a node moves up to the most it may take (to
 * 2^61 - 1 from below, a leap from past the bound) and the cluster's next
 * messages come within its reach. A forged term past the reach moves its
 * receiver no further than one in reach does. */
#define RAFT_TERM_BOUND (RAFT_LIMIT / 2)
#define RAFT_TERM_LEAP (UINT64_C(1) << 16)
/* Default soft cap of an APPEND's entries, and what each entry counts on
 * top of its payload (its framing on the wire, roughly): a message of
 * many small entries stays as small as one of few large ones. */
#define RAFT_MAX_BYTES_PER_MSG (1024 * 1024)
#define RAFT_ENTRY_OVERHEAD 32
/* What an entry the leader holds uncommitted costs on top of its payload
 * (max_uncommitted): its log slot, the allocations and the copies queued
 * to followers. Measured on a leader whose followers were paused: 128
 * bytes of RSS per entry of a few bytes, where 32 counted a third. */
#define RAFT_UNCOMMITTED_OVERHEAD 128

/* --- configurations (membership) ------------------------------------ */

struct raft_server {
    uint64_t id; /* non-zero node id */
    bool voter;  /* false: non-voter (receives entries, never votes,
                    never counts for a quorum, never campaigns) */
    char *meta;  /* opaque NUL-terminated string, owned by the conf; the
                    core copies and stores it, never interprets it */
};

/* A server removed from the configuration, remembered in the
 * configurations that follow so that every node, and a leader elected
 * later or restored from a snapshot, can tell it so when it dials. */
struct raft_removed {
    uint64_t id;    /* the removed server's id */
    uint64_t index; /* the CONF entry that removed it */
    uint64_t term;  /* that entry's term */
    char *meta;     /* its meta when it was removed (owned by the conf) */
};

/* Removals a configuration remembers: the oldest is forgotten first. */
#define RAFT_CONF_MAX_REMOVED 32

struct raft_conf {
    struct raft_server *servers; /* sorted by id (the helpers keep it so) */
    size_t n;                    /* number of servers */
    struct raft_removed *removed; /* by index, oldest first; ids unique;
                                     an id may also be a server again */
    size_t n_removed;
};

/* An empty conf (servers NULL, n 0, no removals). */
void raft_conf_init(struct raft_conf *c);
/* Frees the servers, the removals and their meta strings; c is empty
 * afterwards. */
void raft_conf_free(struct raft_conf *c);
/* Deep copy into dst (dst's previous content is freed). */
void raft_conf_copy(struct raft_conf *dst, const struct raft_conf *src);
/* Adds a server (meta copied; NULL means ""), keeping servers sorted.
 * Returns 0, PZ_EINVAL for id 0 or an id already present. */
int raft_conf_add(struct raft_conf *c, uint64_t id, bool voter,
                  const char *meta);
/* Removes id. Returns 0 or PZ_ENOTFOUND. */
int raft_conf_remove(struct raft_conf *c, uint64_t id);
/* The server with this id, or NULL. Pointer valid until c changes. */
struct raft_server *raft_conf_get(const struct raft_conf *c, uint64_t id);
/* Number of voters. */
size_t raft_conf_voters(const struct raft_conf *c);
/* Records that id (with this meta, copied) was removed by the CONF entry
 * (index, term): an older record of the same id is replaced, and the
 * oldest record goes when RAFT_CONF_MAX_REMOVED are kept (and records
 * at or above index, which cannot be true). */
void raft_conf_note_removed(struct raft_conf *c, uint64_t id, uint64_t index,
                            uint64_t term, const char *meta);
/* The removal record of id, or NULL. Valid until c changes. */
const struct raft_removed *raft_conf_removed(const struct raft_conf *c,
                                             uint64_t id);

/* Deterministic encoding of a configuration entry's data: same member set
 * (ids, voter flags, meta) and removals -> same bytes, whatever the order
 * of c->servers. Format (big-endian): u8 version, u32 n, then per server
 * sorted by id: u64 id, u8 voter, u32 meta_len, meta bytes (no NUL).
 * Version 1 ends there; version 2, written only when there are removals,
 * follows with u32 n_removed (1..RAFT_CONF_MAX_REMOVED), then per removal
 * by increasing index: u64 id, u64 index, u64 term, u32 meta_len, meta.
 * *buf is allocated with pz_malloc; the caller frees it with pz_free. */
void raft_conf_encode(const struct raft_conf *c, uint8_t **buf, size_t *len);
/* Decodes into out (initialized by the callee; free with raft_conf_free).
 * Returns 0 or PZ_ECORRUPT (truncated, trailing bytes, bad version, id 0,
 * duplicate id, removals out of order or repeated); on error out is left
 * empty. */
int raft_conf_decode(const uint8_t *buf, size_t len, struct raft_conf *out);

/* A snapshot point: the state machine as of index, and what Raft must know
 * about the log it replaces. */
struct raft_snapshot_meta {
    uint64_t index;        /* last index covered (0: no snapshot) */
    uint64_t term;         /* term of the entry at index */
    struct raft_conf conf; /* configuration as of index (the latest CONF
                              entry at or before index) */
};

/* --- log entries, hard state, messages ------------------------------- */

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0, /* application command (data opaque) */
    RAFT_ENTRY_CONF = 1,   /* data = raft_conf_encode() of the new conf */
    RAFT_ENTRY_NOOP = 2,   /* appended by a new leader (no data) */
};

struct raft_entry {
    uint64_t term;  /* term in which the entry was created */
    uint64_t index; /* position in the log, from 1 */
    uint8_t type;   /* enum raft_entry_type */
    uint8_t *data;  /* payload (NULL when len is 0); see ownership notes */
    size_t len;     /* payload bytes */
};

/* What must be durable before acknowledging anything (Figure 3.1). */
struct raft_hard_state {
    uint64_t term;   /* currentTerm */
    uint64_t vote;   /* votedFor in term (0: none) */
    uint64_t commit; /* commit index (may lag; persisted lazily) */
};

enum raft_msg_type {
    RAFT_MSG_APPEND = 1,            /* AppendEntries (leader -> follower) */
    RAFT_MSG_APPEND_RESP,           /* its answer */
    RAFT_MSG_HEARTBEAT,             /* empty AppendEntries carrying commit */
    RAFT_MSG_HEARTBEAT_RESP,        /* its answer */
    RAFT_MSG_PREVOTE,               /* Pre-Vote request (thesis §9.6) */
    RAFT_MSG_PREVOTE_RESP,          /* its answer */
    RAFT_MSG_VOTE,                  /* RequestVote */
    RAFT_MSG_VOTE_RESP,             /* its answer */
    RAFT_MSG_TIMEOUT_NOW,           /* leadership transfer (thesis §3.10) */
    RAFT_MSG_READ_INDEX,            /* follower -> leader ReadIndex request */
    RAFT_MSG_READ_INDEX_RESP,       /* leader -> follower: confirmed index */
    RAFT_MSG_INSTALL_SNAPSHOT,      /* InstallSnapshot (leader -> follower;
                                       thesis §5, whole snapshots) */
    RAFT_MSG_INSTALL_SNAPSHOT_RESP, /* reserved: never produced (the answer
                                       to INSTALL_SNAPSHOT is APPEND_RESP) */
    RAFT_MSG_TYPE_MAX               /* one past the last valid type */
};

/* One message. Field use per type:
 *  APPEND: index/log_term = index and term of the entry preceding
 *    entries[] (prevLogIndex/prevLogTerm); commit = leader commit.
 *  APPEND_RESP: accepted: index = last index known to match the leader's
 *    log (durable). rejected: index = the rejected prevLogIndex,
 *    log_term = conflict term (term of the follower's entry at index, 0 if
 *    it has none), reject_hint = conflict index (first index of that term
 *    in the follower's log, or its last index + 1).
 *  HEARTBEAT: commit = min(leader commit, follower match); context = read
 *    round. HEARTBEAT_RESP: context echoed; lease_ns = the sender's
 *    config.lease_ns, the least time it refuses votes after the heartbeat
 *    arrived (0: none; older nodes send none).
 *  PREVOTE/VOTE: index/log_term = candidate's last log index/term;
 *    term = the (proposed) election term; transfer = started by
 *    TIMEOUT_NOW (bypasses leader stickiness).
 *  PREVOTE_RESP/VOTE_RESP: reject = not granted. A granted PREVOTE_RESP
 *    carries the term of the request.
 *  READ_INDEX: context = the follower's read ctx; term 0 (term-less);
 *    log_term = the follower's term when it sent it (0 from older nodes):
 *    in the leader's term, the follower's acknowledgement of that read.
 *  READ_INDEX_RESP: context = ctx, index = read index, reject = the
 *    receiver could not serve it (not leader); term 0.
 *  INSTALL_SNAPSHOT: snap_index/snap_term = last index and term the
 *    snapshot covers; exactly one entry, entries[0] = {type CONF, index
 *    snap_index, term snap_term, data raft_conf_encode(conf as of
 *    snap_index)}. snap_data/snap_len are not used by the core (the state
 *    machine travels separately, see the driver notes above). Answered
 *    with an APPEND_RESP: accepted, index = snap_index once installed
 *    durably, or index = the receiver's commit index if it already had
 *    everything up to snap_index.
 * Every message has from, to, term (sender's current term unless said). */
struct raft_msg {
    uint8_t type;               /* enum raft_msg_type */
    bool reject;                /* *_RESP: request refused */
    bool transfer;              /* VOTE: campaign forced by TIMEOUT_NOW */
    uint64_t from;              /* sender id */
    uint64_t to;                /* receiver id */
    uint64_t term;              /* see above */
    uint64_t log_term;          /* see above */
    uint64_t index;             /* see above */
    uint64_t commit;            /* APPEND, HEARTBEAT: leader's commit */
    uint64_t reject_hint;       /* APPEND_RESP reject: conflict index */
    uint64_t context;           /* HEARTBEAT*: read round; READ_INDEX*: ctx */
    uint64_t lease_ns;          /* HEARTBEAT_RESP: the sender's lease_ns */
    struct raft_entry *entries; /* APPEND: entries to append */
    size_t n_entries;           /* number of entries */
    uint64_t snap_index;        /* INSTALL_SNAPSHOT: last index covered */
    uint64_t snap_term;         /* INSTALL_SNAPSHOT: its term */
    uint8_t *snap_data;         /* not used by the core (transports carry it) */
    size_t snap_len;            /* bytes at snap_data */
};

/* --- the core ----------------------------------------------------------- */

enum raft_role {
    RAFT_FOLLOWER = 0,
    RAFT_PRE_CANDIDATE = 1, /* running a Pre-Vote round */
    RAFT_CANDIDATE = 2,
    RAFT_LEADER = 3,
};

struct raft_config {
    uint64_t id;                /* this node, non-zero */
    int election_ticks;         /* election timeout; randomized in
                                   [election_ticks, 2*election_ticks),
                                   a fifth of that for a founding
                                   member (raft_bootstrap) */
    int heartbeat_ticks;        /* heartbeat interval, < election_ticks */
    uint64_t seed;              /* PRNG seed (distinct per node) */
    size_t max_inflight_msgs;   /* APPENDs in flight per follower
                                   (replicate state); 0 -> 256 */
    size_t max_bytes_per_msg;   /* soft cap of entry bytes per APPEND,
                                   payloads plus RAFT_ENTRY_OVERHEAD per
                                   entry (at least one entry is sent);
                                   0 -> RAFT_MAX_BYTES_PER_MSG */
    bool pre_vote;              /* thesis §9.6 */
    bool check_quorum;          /* leader steps down without a quorum */
    uint64_t applied;           /* index already applied by the state
                                   machine at start (0: replay everything
                                   after the snapshot, if any) */
    int snapshot_timeout_ticks; /* leader: a peer in SNAPSHOT state with
                                   neither an answer nor a report for
                                   this long goes back to probing;
                                   0 -> 10 * election_ticks */
    size_t max_readies;         /* Readies in flight at once (taken, not
                                   advanced), at most RAFT_MAX_READIES;
                                   0 -> 1 (see "Pipelined Readies") */
    uint64_t lease_ns;          /* read leases (thesis §6.4.1), 0: none.
                                   What this node promises a leader in its
                                   HEARTBEAT_RESP: below the least time its
                                   election_ticks - 1 ticks can take, as
                                   told by clock. Restored with a term, it
                                   refuses votes for its first election
                                   timeout (it forgot its promises), or
                                   longer: raft_restore_promise */
    bool lease_reads;           /* leader: a read is confirmed without a
                                   heartbeat round while a quorum of voters
                                   acknowledged a round sent less than
                                   lease_ns ago (needs lease_ns, clock and
                                   check_quorum) */
    uint64_t (*clock)(void *arg); /* nanoseconds, monotonic, not stopped
                                     while the machine sleeps; read now
                                     (never a cached time) */
    void *clock_arg;              /* its argument */
    uint64_t max_uncommitted;   /* leader: raft_propose refuses an entry
                                   while those it appended in its term and
                                   has not handed out for apply (committed
                                   and durable here) hold this many bytes
                                   (payloads plus
                                   RAFT_UNCOMMITTED_OVERHEAD each, empty
                                   entries nothing); one is
                                   always taken when none waits. 0: no
                                   limit */
};

#define RAFT_MAX_READIES 8

struct raft;

/* Creates a node: follower, term 0, empty log, empty configuration.
 * Returns NULL and writes a message into errmsg (RAFT_ERRMSG_SIZE bytes,
 * may be NULL) if the config is invalid. */
struct raft *raft_new(const struct raft_config *cfg, char *errmsg);
void raft_free(struct raft *r);

/* Restart without a snapshot: raft_restore_snapshot(r, hs, NULL, entries,
 * n); entries must then be contiguous from index 1. */
int raft_restore(struct raft *r, const struct raft_hard_state *hs,
                 const struct raft_entry *entries, size_t n);

/* Restart: loads durable state (copied; caller keeps ownership). Only on a
 * fresh node (nothing stepped yet). snap (NULL or index 0: no snapshot) is
 * the durable snapshot the state machine was loaded from; entries are the
 * stored log, contiguous, starting at index 1 without a snapshot, else at
 * any index <= snap->index + 1 (trailing entries kept below the snapshot
 * are fine; n == 0 is fine). With a snapshot and a log starting at or below
 * snap->index, the first entry given becomes the log's boundary (its term
 * is needed to check the entry after it) and the core holds the entries
 * after it. The configuration is the last CONF entry of the log (thesis
 * §4.1: a server uses the latest configuration in its log, committed or
 * not), else snap->conf. Loaded entries count as persisted. The commit
 * index is hs->commit clamped to the last index, and at least snap->index;
 * applied starts at max(config.applied, snap->index): committed entries
 * handed out start right after it.
 * snap must be the snapshot recorded durably together with this log: the
 * latest one taken locally, or installed by a Ready that became durable;
 * never a received file whose install Ready was not written.
 * Returns 0, PZ_EBUSY (node not fresh), PZ_ECORRUPT (gaps, a log that
 * starts after snap->index + 1 or not at 1 without a snapshot, or that
 * starts at or below snap->index but ends before it, an entry at
 * snap->index with another term, decreasing terms, a term above hs->term,
 * hs->term at or above RAFT_LIMIT, undecodable CONF entry, snapshot term 0 or
 * above hs->term, a conf with id 0 or a duplicate id). */
int raft_restore_snapshot(struct raft *r, const struct raft_hard_state *hs,
                          const struct raft_snapshot_meta *snap,
                          const struct raft_entry *entries, size_t n);

/* After raft_restore*: how long earlier runs of this node may still be
 * bound to refuse votes by what they promised leaders (the driver keeps
 * the largest config.lease_ns sent lately with the stable state, records
 * a larger one before it is sent, and passes it here with the margin its
 * clocks need). Restored with a term, the node then neither
 * grants a vote nor starts an election until ns after this call by
 * config.clock, besides its first election timeout (a transfer aside:
 * the leader that sends TIMEOUT_NOW gave its lease up, and the target's
 * VOTE says so): settings that promise less than before must not end an
 * older promise early. Once it is over, the node stands after a random
 * part of its election timeout. No-op with ns 0, no term or no clock. */
void raft_restore_promise(struct raft *r, uint64_t ns);

/* What the next HEARTBEAT_RESPs promise (0: nothing), config.lease_ns
 * until then: at most config.lease_ns, which still caps the followers'
 * promises as leader. */
void raft_set_promise(struct raft *r, uint64_t ns);

/* Bootstrap of a static initial cluster, on an empty node only (empty log,
 * term 0). Appends entry 1 (term 1, CONF, raft_conf_encode(conf)) and sets
 * term 1, commit 1: every member bootstrapping with the same member set gets
 * the identical entry 1. conf must contain this node and at least one
 * voter. The entry and hard state reach storage through the next Ready.
 * With several voters, the node stands for election after a fifth of the
 * usual timeout until it learns a later term (an election started).
 * A node joining an existing cluster must NOT bootstrap: it starts empty and
 * receives the log from the leader once added.
 * Returns 0, PZ_EBUSY (not empty), PZ_EINVAL (bad conf). */
int raft_bootstrap(struct raft *r, const struct raft_conf *conf);

/* Advances logical time by one tick (elections, heartbeats, CheckQuorum,
 * transfer timeout). */
void raft_tick(struct raft *r);

/* Feeds one message from a peer (m->to should be this node; otherwise it
 * is ignored). Everything kept is copied; m stays the caller's. Returns 0,
 * or PZ_EINVAL for a message no correct peer sends, with nothing changed
 * and the reason in raft_errmsg(): an unknown type, sender 0, a term or
 * index at or above RAFT_LIMIT, a term at or above RAFT_TERM_BOUND more
 * than RAFT_TERM_LEAP above ours (the one refusal that changes something:
 * our term moves up, see RAFT_TERM_BOUND), entries where none belong, a leader
 * message or vote request of term 0, an APPEND whose entries do not
 * follow its previous index one by one with terms from 1 never
 * decreasing and never above the message's, a configuration entry that
 * does not decode or has no voter, an INSTALL_SNAPSHOT not shaped as
 * documented above, and an APPEND of our term or a newer one that
 * contradicts an entry we know is committed. Stale or inapplicable
 * messages return 0 and are ignored, among them a TIMEOUT_NOW not from
 * the leader we follow, a READ_INDEX_RESP with an index not from it, and a
 * READ_INDEX from a non-member (answered with a refusal). */
int raft_step(struct raft *r, const struct raft_msg *m);
/* Why the last raft_step returned PZ_EINVAL ("" before any). */
const char *raft_errmsg(const struct raft *r);

/* Appends a NORMAL entry (data copied) on the leader. *index and *term (may be
 * NULL) identify it: it is committed iff an entry with this index and term
 * later shows up in Ready.committed; if a different term shows up at that
 * index, or the term moves on and the entry is gone, it was lost.
 * Returns 0, PZ_ENOTLEADER (not leader), PZ_EBUSY (leadership transfer in
 * progress), PZ_EOVERLOAD (config.max_uncommitted reached: nothing is
 * appended; the caller may try again once entries apply). */
int raft_propose(struct raft *r, const uint8_t *data, size_t len,
                 uint64_t *index, uint64_t *term);
/* raft_propose, never refused for config.max_uncommitted (the entry still
 * counts): for the driver's own few proposals (lease expiries), which
 * clients writing at full speed must not hold back. */
int raft_propose_unbounded(struct raft *r, const uint8_t *data, size_t len,
                           uint64_t *index, uint64_t *term);

enum raft_conf_change_type {
    RAFT_CC_ADD_NONVOTER = 1, /* new server as non-voter (meta stored) */
    RAFT_CC_PROMOTE = 2,      /* non-voter -> voter */
    RAFT_CC_DEMOTE = 3,       /* voter -> non-voter */
    RAFT_CC_REMOVE = 4,       /* remove a server (voter or not); the new
                                 conf records the removal */
};

struct raft_conf_change {
    uint8_t type;     /* enum raft_conf_change_type */
    uint64_t id;      /* server concerned */
    const char *meta; /* ADD_NONVOTER: its meta (copied; NULL -> "") */
};

/* Single-server membership change (thesis §4.1) on the leader: appends a
 * CONF entry with the whole new configuration, which takes effect as soon
 * as it is appended, on every server. The driver learns of it through
 * rd.conf_changed and raft_conf_current().
 * Returns 0, PZ_ENOTLEADER, PZ_EBUSY (an earlier CONF entry is not yet
 * committed, the leader has not yet committed an entry of its term, or a
 * transfer is in progress; retry later), PZ_EINVAL (add of an existing
 * id, promote of a voter/unknown id, demote of a non-voter, remove of an
 * unknown id, a change that would leave no voter). */
int raft_propose_conf(struct raft *r, const struct raft_conf_change *cc,
                      uint64_t *index, uint64_t *term);

/* Leadership transfer (thesis §3.10) to voter id: the leader stops
 * accepting proposals (PZ_EBUSY), brings the target up to date, then sends
 * it TIMEOUT_NOW; the target campaigns at once (no Pre-Vote). Aborted after
 * an election timeout without success. Returns 0, PZ_ENOTLEADER, PZ_EINVAL
 * (id is self, unknown or a non-voter), PZ_EBUSY (a transfer is already
 * running). */
int raft_transfer_leader(struct raft *r, uint64_t id);

/* From now on (a leader about to stop) every commit index reaches the
 * followers at once, not with the next APPEND or tick: the process may be
 * gone before either. */
void raft_commit_eager(struct raft *r);

/* ReadIndex (thesis §6.4). ctx identifies the read for the caller (unique
 * per node among pending reads). On the leader the read index is the
 * commit index at request time (or, before the leader has committed an
 * entry of its term, the commit index once it has); it is confirmed by one
 * heartbeat round that a quorum acknowledges; all reads pending when a
 * round starts share it (rounds start when the next Ready is built, or at
 * raft_take_msgs). On a
 * follower the request is forwarded to the leader. The result shows up as
 * a read_state (ctx, index) in a later Ready: the read may be served once
 * the local applied index >= index. Every ctx gets at most one outcome:
 * a read that can no longer complete shows up in rd.dropped_reads instead
 * (the leader stepped down; this node's role, term or leader changed while
 * a forwarded read was pending; the leader refused it; or no answer came
 * within an election timeout, e.g. a lost message).
 * Returns 0, PZ_ENOLEADER (no leader known). */
int raft_read_index(struct raft *r, uint64_t ctx);

/* Starts an election now (Pre-Vote first if enabled), as an election
 * timeout would. No-op for a leader, for a node whose term is
 * RAFT_TERM_MAX, or for a node that may not campaign: only
 * voters of the current configuration campaign, plus a node whose latest
 * (uncommitted) configuration removed or demoted it while the previous one
 * had it as a voter (so a leader that removed itself and lost leadership
 * before that entry committed can still finish the change). It ignores
 * this node's own refusal to vote (config.lease_ns, raft_restore_promise),
 * on which a leader's read lease may count: for a lone voter whose
 * configuration is committed (no other leader can then count on it), or
 * where no leases are used. */
void raft_campaign(struct raft *r);

/* --- snapshots and compaction ------------------------------------------ */

/* The snapshot point of index: its term and the configuration as of index
 * (deep copy in out->conf: free it with raft_conf_free). For the driver
 * about to snapshot its state machine at index (== its applied index), so
 * the file can hold everything raft_restore_snapshot needs.
 * Returns 0, PZ_EINVAL (index above the applied index, or below the
 * current snapshot index: the core no longer knows the conf there;
 * out->conf is then left empty). */
int raft_snapshot_meta_at(const struct raft *r, uint64_t index,
                          struct raft_snapshot_meta *out);

/* The driver holds a durable snapshot covering index (index <= applied).
 * Records (index, its term, the conf as of index) as the snapshot point,
 * the one served to followers that need entries no longer held, and drops
 * the in-memory entries up to index - trailing (none if trailing >= index;
 * never below what is already dropped). The current configuration stays
 * known when its CONF entry goes.
 * Returns 0: the driver may now drop the same prefix of the stored log,
 * store_compact(first_index - 1, compact_term) with both from raft_status
 * (or keep more); PZ_ECANCELED: index <= the current snapshot index (the
 * file is obsolete, e.g. a newer snapshot was installed from the leader,
 * maybe not yet durably): nothing changed, compact nothing; PZ_EINVAL:
 * index > applied. */
int raft_compact(struct raft *r, uint64_t index, uint64_t trailing);

/* How many entries to keep behind a snapshot at index (the trailing
 * argument of raft_compact): the most entries up to index, counted back
 * from it, that are at most max_entries and hold at most max_bytes of
 * data between them, so that large entries do not keep the log in memory
 * large (max_entries 1 MiB entries would). Entries no longer held end the
 * count. */
uint64_t raft_trailing_within(const struct raft *r, uint64_t index,
                              uint64_t max_entries, uint64_t max_bytes);

/* Leader: outcome of sending the INSTALL_SNAPSHOT message to peer id, from
 * the driver that streams the file (etcd's ReportSnapshot). ok: the whole
 * file and the message were delivered; the leader then waits for the
 * follower's answer (or a heartbeat answer) before sending entries after
 * the snapshot. !ok: the transfer failed; the leader probes again after
 * the next heartbeat answer and sends a new snapshot if still needed.
 * Should be called once per INSTALL_SNAPSHOT handed out; reports for a
 * peer that is not waiting for a snapshot are ignored. Without any report
 * or answer the leader gives up after config.snapshot_timeout_ticks.
 * Returns 0, PZ_ENOTLEADER. */
int raft_report_snapshot(struct raft *r, uint64_t id, bool ok);

/* --- the Ready cycle ----------------------------------------------------- */

struct raft_read_state {
    uint64_t ctx;   /* as given to raft_read_index */
    uint64_t index; /* serve the read once applied >= index */
};

struct raft_soft_state {
    uint8_t role;    /* enum raft_role */
    uint64_t leader; /* known leader id, 0 if none */
    uint64_t term;   /* current term */
};

/* Everything a Ready points to belongs to the core and stays valid until
 * the next raft_ready() or raft_free(), whatever else is called meanwhile
 * (stronger than "until the next mutating call"): a driver may hand
 * rd.entries to a writer thread without copying (the thread only reads
 * them; payload bytes are immutable), as long as the loop does not call
 * raft_ready() again before raft_advance(). */
struct raft_ready {
    struct raft_soft_state ss;           /* current soft state */
    bool ss_changed;                     /* differs from the previous Ready */
    struct raft_hard_state hs;           /* hard state to persist */
    bool hs_changed;                     /* term, vote or commit changed */
    struct raft_entry *entries;          /* to persist; entries[0].index may
                                            be <= the last stored index: the
                                            store deletes from there first */
    size_t n_entries;                    /* number of entries */
    struct raft_msg *msgs;               /* send now (before persisting) */
    size_t n_msgs;                       /* number of msgs */
    struct raft_msg *msgs_after_persist; /* send once hs/entries of this
                                         Ready are durable */
    size_t n_msgs_after_persist;         /* number of msgs_after_persist */
    struct raft_entry *committed;        /* apply now, in order: committed and
                                            already durable locally */
    size_t n_committed;                  /* number of committed */
    struct raft_read_state *read_states; /* confirmed reads */
    size_t n_read_states;                /* number of read_states */
    uint64_t *dropped_reads;             /* ctx of reads that will never be
                                            confirmed (lost leadership, or
                                            refused by the leader) */
    size_t n_dropped_reads;              /* number of dropped_reads */
    bool conf_changed;                   /* raft_conf_current() changed */
    uint64_t persist_index;              /* index of the last entry of
                                            entries[] (0 if none) */
    uint64_t persist_term;               /* its term */
    const struct raft_snapshot_meta *snapshot; /* non-NULL: a snapshot
        received from the leader (INSTALL_SNAPSHOT at index/term) to
        install. The driver loads the state machine from the received file
        of (index, term) before applying anything else, and persists, in
        the SAME transaction as hs and entries: delete every stored entry,
        record this snapshot (index, term, conf) as the durable one, then
        write hs and entries (which then start at index + 1: a suffix of
        the old log that matched is handed again). Such a Ready has no
        committed entries; later ones start at index + 1. hs.commit >=
        index. The acknowledgement is in msgs_after_persist. */
};

/* True if a Ready with anything in it is available and another may be
 * taken (fewer than config.max_readies in flight, and no snapshot to
 * install or being installed while any is). */
bool raft_has_ready(const struct raft *r);

/* Fills rd with everything new since the previous Ready and marks it in
 * flight. The committed entries count as applied from now on (the driver
 * applies them synchronously). Must not be called while config.max_readies
 * Readies are in flight, or while one is and a snapshot is to be
 * installed (pz_assert). Calling it when raft_has_ready() is false for
 * want of news yields an empty (but valid, and in-flight) Ready. */
void raft_ready(struct raft *r, struct raft_ready *rd);

/* While hold is true, Readies hand out no committed entries (and
 * raft_has_ready does not count them as news): the driver is still
 * applying an entry it was handed, in steps, and takes the next ones when
 * it is done. Everything else (appends, heartbeats, votes, ticks, reads,
 * snapshots from the leader) goes on as usual; committed entries wait in
 * the log, count as not applied (raft_snapshot_meta_at, raft_compact) and
 * a leader's in max_uncommitted, as they would before their Ready. */
void raft_hold_apply(struct raft *r, bool hold);

/* The committed entries of the Ready just taken (its committed array,
 * returned with their count in *n) become the caller's: the next
 * raft_ready does not free them, and their payloads, shared with the log
 * rather than copied, stay valid until raft_entries_free. For a driver
 * that applies part of a Ready now and the rest in later turns. Returns
 * NULL (and 0) if the Ready had none or they were taken already. */
struct raft_entry *raft_take_committed(struct raft *r, size_t *n);
/* Release entries taken with raft_take_committed (NULL: nothing). */
void raft_entries_free(struct raft_entry *e, size_t n);

/* The oldest Ready in flight is durable (its snapshot, hs and entries
 * written; rd is that Ready, asserted). Uses only rd's scalar fields
 * (persist_index, persist_term, hs.term: that term is now durable, and a
 * candidate's vote for itself counts from now on, which may make it
 * leader). Entries are marked durable up to persist_index only if the log
 * still holds persist_term there (a later step may have truncated them). An
 * installed snapshot it carried counts as durable from now on (it may be
 * sent on to other followers; committed entries after it are handed
 * out). */
void raft_advance(struct raft *r, const struct raft_ready *rd);

/* A leader whose term is durable may send the messages it has produced
 * (appends for new proposals, heartbeats, read rounds) at any time, also
 * while a Ready is being written or the driver's store is busy with other
 * work: returns them (valid until the next call or raft_free) or 0 when
 * there are none or the node is not such a leader. Optional: whatever is
 * not taken goes into the next Ready. raft_has_msgs: whether a call may
 * return any (a due flush may turn out to have nothing to send). */
size_t raft_take_msgs(struct raft *r, const struct raft_msg **msgs);
bool raft_has_msgs(const struct raft *r);

/* --- introspection ------------------------------------------------------ */

enum raft_progress_state {
    RAFT_PROGRESS_PROBE = 0,     /* one APPEND at a time, finding next */
    RAFT_PROGRESS_REPLICATE = 1, /* pipelining APPENDs */
    RAFT_PROGRESS_SNAPSHOT = 2,  /* INSTALL_SNAPSHOT sent; no APPENDs
                                    until answered, reported or timed
                                    out */
};

struct raft_peer_status {
    uint64_t id;           /* peer id */
    bool voter;            /* voter in the current conf */
    uint8_t state;         /* enum raft_progress_state */
    uint64_t match;        /* highest index known replicated (durable) */
    uint64_t next;         /* next index to send */
    uint64_t last_contact; /* ticks since the leader last heard from it */
    size_t inflight;       /* APPENDs in flight */
    uint64_t pending_snap; /* SNAPSHOT state: index of the snapshot sent */
};

struct raft_status {
    uint64_t id;                    /* this node */
    uint8_t role;                   /* enum raft_role */
    uint64_t term;                  /* current term */
    uint64_t vote;                  /* vote in term */
    uint64_t leader;                /* known leader, 0 if none */
    bool lease;                     /* a leader (with CheckQuorum), or a
                                       follower that heard from its leader
                                       within the election timeout */
    uint64_t lease_reads;           /* leader: reads confirmed by the
                                       lease alone, since raft_new */
    uint64_t commit;                /* commit index */
    uint64_t applied;               /* last index handed out as committed */
    uint64_t first_index;           /* first index held in memory (the
                                       log is empty if > last_index) */
    uint64_t compact_term;          /* term of the entry at
                                       first_index - 1 (0 if none) */
    uint64_t snap_index;            /* snapshot point (0: none) */
    uint64_t snap_term;             /* its term */
    uint64_t last_index;            /* last log index */
    uint64_t last_term;             /* its term */
    uint64_t persisted_index;       /* last index durable locally */
    uint64_t conf_index;            /* index of the current conf entry
                                       (the snapshot index if the conf
                                       came with a snapshot) */
    uint64_t transferee;            /* leader: transfer target, 0 if none */
    uint64_t uncommitted;           /* leader: bytes of its entries not yet
                                       committed and applied
                                       (config.max_uncommitted) */
    size_t n_peers;                 /* leader: entries in peers (others) */
    struct raft_peer_status *peers; /* leader only; owned by r, valid
                                       until the next call on r */
};

void raft_status(struct raft *r, struct raft_status *st);

/* The current configuration (last CONF entry in the log, else the conf of
 * the snapshot, else empty) and the index of that entry (the snapshot
 * index if it came with a snapshot; 0 if none). Valid until the next
 * mutating call. */
const struct raft_conf *raft_conf_current(const struct raft *r,
                                          uint64_t *index);

/* The entry at index, or NULL if outside [first_index, last_index].
 * Valid until the next mutating call. For tests and diagnostics. */
const struct raft_entry *raft_log_get(const struct raft *r, uint64_t index);
uint64_t raft_last_index(const struct raft *r);

const char *raft_role_name(uint8_t role);
const char *raft_msg_type_name(uint8_t type);

#endif
