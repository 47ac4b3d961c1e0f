/* store.h - durable Raft state: the log, the hard state and node meta in
 * one SQLite database, <data-dir>/raft.db.
 *
 * Happy path (node.c):
 *   store_open(dir, &s, err, errlen);            creates or checks raft.db
 *   store_load(s, &hs, &ents, &n, &meta);        everything raft_restore needs
 *       (store_load_from: only the log's end, after a snapshot)
 *   store_meta_set(s, cluster, id, name);        first start; later compare
 *   raft_restore(r, &hs, ents, n); store_entries_free(ents, n);
 *   per Ready: store_write(s, loop, hs or NULL, rd.entries, rd.n_entries,
 *              cb, arg); in cb: send msgs_after_persist, raft_advance.
 *              Several may be queued: they are written back to back, in
 *              order, and their callbacks come in that order.
 *   store_close(s) once no write is in flight.
 *
 * Durability: WAL journal with synchronous=FULL, so a transaction is on disk
 * when COMMIT returns. One batch (a Ready's hard state + entries) is one
 * transaction: stored entries with index >= entries[0].index are deleted,
 * then the batch is inserted (follower truncation), then the hard state is
 * updated. Either all of it is durable or none of it.
 *
 * Failure modes: every function returns 0 or a negative code and leaves a
 * message naming the file and the problem in store_errmsg() (or err for
 * store_open). PZ_ECORRUPT: the database is not usable as it is (SQLite
 * corruption, PRAGMA quick_check failure, unknown schema version, gaps or
 * decreasing terms in the log); the node must refuse to start. PZ_EIO (or a
 * negative errno): a write or read failed. A failed write is fatal: the
 * store refuses every later write (fail-stop) and the node must exit; a
 * write is reported successful only after COMMIT succeeded. PZ_ENOSPC
 * from a write (SQLite's SQLITE_FULL: the file system is out of space):
 * the one exception, the transaction was rolled back whole, nothing of
 * it is stored, and the store stays usable: the same batch may be
 * written again later. PZ_EBUSY from
 * store_open: another process holds raft.db (it is locked exclusively).
 *
 * Threads: every function must be called from one thread (the loop
 * thread). Queued jobs (store_write, store_write_install,
 * store_compact_step) run on libuv's thread pool, one after the other, in
 * the order queued, by one pool job (the drain) that runs while any are
 * queued and posts each completion to the loop as soon as that batch is
 * durable (log writes queued while another ran are merged into one
 * transaction, one COMMIT, and complete together, each its own
 * callback); while any is queued or running, only the queuing calls,
 * store_busy, store_stats, store_meta_get, store_errmsg and store_path may
 * be called (anything touching the database asserts). A job that fails
 * halts the queue: every job queued behind it, until all have completed,
 * completes with PZ_ECANCELED without running (nothing of it stored). */
#ifndef PZ_STORE_H
#define PZ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "raft.h"

/* The schema this code writes (1 and 2 are converted at open). */
#define STORE_SCHEMA_VERSION 3
#define STORE_NAME_MAX 256      /* node_name buffer, NUL included */
#define STORE_ERRMSG_SIZE 512   /* store_errmsg() buffer */

struct store;

/* Identity and layout facts kept next to the log. An unset id is 0, an
 * unset name "". */
struct store_meta {
    int schema_version;            /* STORE_SCHEMA_VERSION */
    uint64_t cluster_id;           /* 0 until set */
    uint64_t node_id;              /* 0 until set */
    char node_name[STORE_NAME_MAX]; /* "" until set */
    int64_t created_ms;            /* unix time (ms) raft.db was created */
    uint64_t snap_index;           /* last index compacted away (0: none);
                                      the log starts at snap_index + 1 */
    uint64_t snap_term;            /* term of the entry at snap_index */
    uint64_t log_segment;          /* entries per log segment (one table
                                      of the log holds a segment) */
    uint64_t incarnation;          /* 0 for a founding member; set once
                                      by a node that joins, so that the
                                      cluster can tell this data dir from
                                      an earlier one of the same name */
    uint64_t promise_ns;           /* the longest a run of this node may
                                      still have promised a leader to
                                      refuse votes (raft_config.lease_ns);
                                      0: none recorded (a new data dir, or
                                      one of an older version) */
    bool restoring;                /* a --restore began seeding this data
                                      dir and has not finished: the dir
                                      holds no node's state */
};

/* Counters since store_open, for /status and benchmarks. A batch is one
 * committed write transaction (empty writes are not counted). */
struct store_stats {
    uint64_t batches;            /* committed write transactions */
    uint64_t entries;            /* entries written */
    uint64_t bytes;              /* entry payload bytes written */
    uint64_t hs_writes;          /* batches that carried a hard state */
    uint64_t last_batch_entries; /* entries in the latest batch */
    uint64_t last_batch_bytes;   /* payload bytes in the latest batch */
    uint64_t max_batch_entries;  /* largest batch so far */
    uint64_t commit_ns;          /* total time inside COMMIT (the WAL
                                    fsync); entries / batches = entries
                                    per fsync */
    uint64_t last_commit_ns;     /* COMMIT time of the latest batch */
    uint64_t checkpoints;        /* WAL checkpoints: after a COMMIT
                                    that left the WAL 1,000 frames long,
                                    and in the vacuum steps */
    uint64_t checkpoint_ns;      /* their total time (a batch's are in
                                    write_ns, not in commit_ns) */
    uint64_t last_checkpoint_ns; /* the latest batch's, failed ones
                                    included (0: none) */
    uint64_t checkpoint_failures; /* checkpoints that failed (the WAL
                                     keeps the pages and grows) */
    const char *checkpoint_error; /* the last failure's reason (static
                                     string), NULL if none */
    bool checkpoint_failing;      /* the latest checkpoint failed */
    uint64_t write_ns;           /* total time of write transactions,
                                    BEGIN to COMMIT and its checkpoint */
    uint64_t last_queue_ns;      /* latest batch: handed to the thread
                                    pool until a worker started it */
    uint64_t last_handback_ns;   /* latest batch: worker done until its
                                    completion ran on the loop (both 0
                                    for a batch written by the caller:
                                    store_write_sync) */
    uint64_t sync_batches;       /* batches written by the caller's
                                    thread (store_write_sync) */
    uint64_t steps;              /* compaction and vacuum steps run */
    uint64_t segments_dropped;   /* log tables compaction emptied whole
                                    (each a segment, or what was left of
                                    it) */
    uint64_t rows_deleted;       /* entries compaction deleted one by one
                                    (rows beside live ones in a table) */
    uint64_t last_step_ns;       /* the latest one's time on the worker:
                                    what the log writes queued behind it
                                    waited */
    uint64_t failures;           /* failed writes (at most 1: fail-stop) */
    uint64_t nospace;            /* writes refused for lack of space (each
                                    rolled back whole; may be retried) */
    uint64_t vacuum_nospace;     /* vacuum steps that found no room: rolled
                                    back alone, the batch succeeds (the
                                    pages stay free in the file until the
                                    next compaction's vacuum) */
    uint64_t first_index;        /* first stored index (snap_index + 1) */
    uint64_t last_index;         /* last stored index (snap_index if the
                                    log is empty) */
};

/* Called on the loop thread once the write is durable (status 0) or has
 * failed (status < 0, errmsg says why; nothing of the batch may be
 * assumed durable and the node must stop, except after PZ_ENOSPC: nothing
 * of the batch is stored and it may be written again). errmsg is NULL on success and
 * valid only during the call. The store is no longer busy when cb runs:
 * cb may start the next write. */
typedef void (*store_write_cb)(struct store *s, int status,
                               const char *errmsg, void *arg);

/* Opens <dir>/raft.db, creating dir (mode 0700) and a fresh database if
 * missing. A fresh database is built under a temporary name and renamed
 * into place, so an existing raft.db always holds a complete schema.
 * Checks the file: SQLite can read it, PRAGMA quick_check passes, the
 * application id and schema version are ours, meta and hard state rows are
 * present and well-formed. Takes an exclusive lock held until close.
 * Returns 0 and *out, or a negative code (PZ_ECORRUPT, PZ_EIO, PZ_EBUSY,
 * -errno) with a message "<path>: <what>" in err (errlen bytes). */
int store_open(const char *dir, struct store **out, char *err,
               size_t errlen);

/* store_open for pyazdb-server --restore: creates raft.db, which must not
 * exist (PZ_EINVAL), with meta restoring set in the transaction that
 * creates it, so that whatever a crash leaves of the seeding that follows
 * is known as such (store_meta.restoring) until store_restore_done. */
int store_create_restoring(const char *dir, struct store **out, char *err,
                           size_t errlen);

/* Closes the database and frees s. No write may be in flight (asserted):
 * wait for the write callback first. */
void store_close(struct store *s);

/* Reads the whole log and the hard state. *entries (allocated, each entry's
 * data too; free with store_entries_free) holds *n entries contiguous from
 * meta.snap_index + 1 (from index 1 without compaction). Verifies that
 * indexes have no gaps, terms never decrease, no term exceeds hs->term or
 * precedes the snapshot term, and entry types are known.
 * meta may be NULL. Returns 0, PZ_ECORRUPT or PZ_EIO (store_errmsg). */
int store_load(struct store *s, struct raft_hard_state *hs,
               struct raft_entry **entries, size_t *n,
               struct store_meta *meta);
void store_entries_free(struct raft_entry *entries, size_t n);

/* store_load, but only the entries from index `from` on (from at most
 * the snapshot index + 1 loads them all; past the last index, none): a
 * restart needs the log from its snapshot's index minus the trailing
 * entries, not the prefix that compaction had not dropped yet when the
 * node stopped. The checks are store_load's, from there on. */
int store_load_from(struct store *s, uint64_t from,
                    struct raft_hard_state *hs, struct raft_entry **entries,
                    size_t *n, struct store_meta *meta);

/* Where a restart reads the log from after a snapshot at index, as
 * raft_trailing_within and raft_compact keep it: *from = index - n, n the
 * number of stored entries index, index - 1, ... (at most max_entries)
 * whose payloads hold at most max_bytes together (entries below the
 * stored log count as absent). Reads only the payloads' lengths. Returns
 * 0 or a negative error with store_errmsg. */
int store_trailing_from(struct store *s, uint64_t index, uint64_t max_entries,
                        uint64_t max_bytes, uint64_t *from);

/* The term of the stored entry at index, or the snapshot term when index
 * is the snapshot index. Returns 0, PZ_ENOTFOUND (not in the stored log),
 * PZ_ECORRUPT or PZ_EIO (store_errmsg). */
int store_term(struct store *s, uint64_t index, uint64_t *term);

/* The meta as currently stored (no database access). */
void store_meta_get(const struct store *s, struct store_meta *meta);

/* Records identity, durably and synchronously. Each field is set once:
 * a field passed as 0 / NULL / "" is left alone; an unset stored field
 * takes the given value; a set field must equal the given value. The node
 * compares store_meta_get() with its config itself to word its refusal;
 * this is the last line of defence. Returns 0, PZ_EINVAL (differs from the
 * stored value, or name too long; nothing written), PZ_EIO. */
int store_meta_set(struct store *s, uint64_t cluster_id, uint64_t node_id,
                   const char *node_name);
/* store_meta_set that also clears meta restoring, in the same transaction:
 * the last step of a --restore. */
int store_restore_done(struct store *s, uint64_t cluster_id, uint64_t node_id,
                       const char *node_name);
/* Records the incarnation (non-zero), once: the same value again is 0,
 * another is PZ_EINVAL. PZ_EIO on a write error. */
int store_meta_set_incarnation(struct store *s, uint64_t incarnation);
/* Records promise_ns (at most INT64_MAX), durably and synchronously,
 * replacing the stored one. PZ_ENOSPC: nothing written, the store still
 * usable; any other error fails the store, as a failed batch does. */
int store_meta_set_promise(struct store *s, uint64_t promise_ns);

/* Persists one Ready in one transaction on libuv's thread pool, behind
 * the jobs already queued: deletes stored entries with index >=
 * entries[0].index, inserts entries[0..n), and writes *hs if hs is not
 * NULL. hs is copied; entries are NOT: they and their data must stay
 * valid and unchanged until cb runs (raft keeps a Ready's entries until
 * its raft_advance). The batch is checked against what is stored and
 * what the jobs queued before it will leave. n == 0 and hs == NULL is an
 * empty write: nothing touches the database, cb still comes later with 0.
 * Returns 0 (cb will be called exactly once, from the loop, never from
 * inside this call, after the callbacks of the jobs queued before it),
 * or at once without calling cb: PZ_EINVAL (batch not contiguous, terms
 * decreasing, first index beyond last + 1 or inside the compacted
 * prefix, a term above the hard state's, a vote changed within a term),
 * PZ_EIO (the store failed earlier), or a libuv error. cb's status may be
 * PZ_ECANCELED: a job before it failed, and this one did not run. */
int store_write(struct store *s, uv_loop_t *loop,
                const struct raft_hard_state *hs,
                const struct raft_entry *entries, size_t n,
                store_write_cb cb, void *arg);

/* The same transaction, run on the calling thread (bootstrap, tests, a
 * node's small write when its loop has nothing else to do), with no job
 * queued (asserted).
 * Returns 0 once durable, or a negative code as store_write would report
 * it either way (store_errmsg). */
int store_write_sync(struct store *s, const struct raft_hard_state *hs,
                     const struct raft_entry *entries, size_t n);

/* A snapshot received from the leader is being installed: in ONE
 * transaction, drop every stored entry, record (index, term) as the
 * snapshot point, then write hs (required) and entries (which must start
 * at index + 1, if any), as store_write does, on the thread pool. Returns
 * 0 (cb later) or PZ_EINVAL / PZ_EIO at once. */
int store_write_install(struct store *s, uv_loop_t *loop, uint64_t index,
                        uint64_t term, const struct raft_hard_state *hs,
                        const struct raft_entry *entries, size_t n,
                        store_write_cb cb, void *arg);

/* Drop stored entries up to upto (at most max_rows of them, from the
 * current snapshot point on, and no more than max_bytes of payload, less
 * while steps take longer than the store's time budget of a few ms (an
 * eighth of it at a process's first step, doubling while steps are
 * quick), unless the first alone holds more; never past the last stored
 * entry) on the thread pool, with no other job queued (asserted), moving the
 * snapshot point there with the term stored at it: compaction in steps
 * short enough that log writes never wait long. Except by segments: a
 * step that can empty the tables of the oldest segments (upto covers
 * their last entries, no later segment shares their tables, and they
 * hold at most 8 MiB of payload) drops the rest of those segments
 * whatever max_rows says; and when upto ends inside the oldest segment (8 MiB
 * at most before it, no later segment in its table), the step drops nothing,
 * and the store keeps those entries until a later call's upto covers the
 * segment (an install or store_compact forgets that): store.c, "Log
 * segments". The step that reaches upto (or leaves the rest so), and each
 * step after it with nothing left to drop, then gives free pages back to
 * the file system (auto_vacuum INCREMENTAL), as many as fit in the same
 * budget; every 8 MiB given back a step checkpoints instead, which cuts
 * the file, and once none is left one checkpoints and truncates the WAL,
 * so raft.db shrinks as the steps go. A vacuum that finds no room (a full
 * disk) rolls back alone and fails nothing: counted in vacuum_nospace
 * (store_errmsg says why), it ends the giving back until the next compaction.
 * Returns 0 (cb later), 1 when there is nothing to drop or give back (no cb),
 * PZ_EIO. */
int store_compact_step(struct store *s, uv_loop_t *loop, uint64_t upto,
                       uint64_t max_rows, uint64_t max_bytes,
                       store_write_cb cb, void *arg);

/* True while any job is queued or running (its callback not yet
 * called). */
bool store_busy(const struct store *s);

/* Deletes stored entries with index <= upto and records (upto, term) as
 * the snapshot point, in one transaction (synchronous). If upto is
 * within the stored log, the entry there must have this term; if upto is
 * beyond the last stored index (an installed snapshot), the whole log is
 * dropped. upto <= the current snapshot index is a no-op. The caller
 * ensures everything up to upto is committed and captured in a snapshot.
 * Returns 0, PZ_EINVAL (term mismatch), PZ_EIO. */
int store_compact(struct store *s, uint64_t upto, uint64_t term);

void store_stats(const struct store *s, struct store_stats *st);

/* Message of the last failure ("" if none). Valid until the next call. */
const char *store_errmsg(const struct store *s);

/* Full path of raft.db. */
const char *store_path(const struct store *s);

/* Test hook: the nth SQLite step from now (1-based, counting every
 * statement step of writes, loads, compaction and meta updates, COMMIT
 * included, ROLLBACK excluded) fails as an I/O error would, without
 * running; 0 disables. store_open also reads the environment variable
 * PYAZDB_TEST_STORE_FAIL_AT (a positive integer) once, so a whole server
 * can be made to fail its nth step. */
void store_fail_at(struct store *s, long n);

/* Test hook: cap raft.db at this many pages (SQLite's max_page_count; at
 * least the current size; <= 0 lifts the cap), so that a write past it
 * fails as a full disk does (PZ_ENOSPC). Returns 0 or a negative code. */
int store_test_max_pages(struct store *s, long pages);

/* Test hook: the time a step of store_compact_step aims at (to drop its
 * rows, to give pages back), in ns, instead of the default (a few ms). */
void store_test_step_budget(struct store *s, uint64_t ns);

/* Test hook: while on, every incremental vacuum step fails as one that
 * finds the file system full (SQLITE_FULL, PZ_ENOSPC) would. */
void store_test_vacuum_full(struct store *s, bool on);

/* Test hook: while on, every WAL checkpoint fails as one on a broken disk
 * would (SQLITE_IOERR), without running, and closing the store leaves
 * the WAL as it is. store_open turns it on when the environment variable
 * PYAZDB_TEST_CHECKPOINT_FAIL is 1. */
void store_test_checkpoint_fail(struct store *s, bool on);

/* Test hook: databases this process creates from now on cut their log
 * into segments of this many entries (a power of two, 4 to 2^30; 0: the
 * default, 32768), so that a test crosses many with a short log.
 * store_open also reads the environment variable PYAZDB_TEST_LOG_SEGMENT
 * (the same number) when it creates a database. */
void store_test_log_segment(uint64_t entries);

#endif
