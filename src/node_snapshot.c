/* node_snapshot.c - snapshots on the node (see node_internal.h and the
 * section comment below): taking them, compacting the log behind them,
 * shipping them to followers, receiving and installing them, and loading
 * the newest at start. */
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "failpoint.h"
#include "log.h"
#include "node_internal.h"

static void snapshot_start(void);
static bool snap_due(void);
static void backups_start(void);
static void finish_snap_waiters(int status);
static void on_compacted(int status, const char *errmsg);
static void request_compaction(void);
static uint64_t rx_max_size(void);
static bool rx_fits_disk(uint64_t total, char *why, size_t len);
static void on_loaded(struct node_snap_load *job);

/* --- snapshots ------------------------------------------------------------
 * Taking one (after raft-snapshot-entries applied entries that carry an
 * eighth of the last snapshot's size, at the latest once they hold
 * raft-snapshot-bytes or the last snapshot's size, on POST
 * /admin/snapshot, or for backups, which share one and take at most one
 * per snapshot-backup-interval: backups_start): fork, as Redis's BGSAVE
 * does, so that the child writes the table as of the fork from
 * copy-on-write memory while the loop goes on serving; the parent only polls
 * the child from the tick timer. When the file is durable (written, fsynced,
 * renamed), the Raft core records the snapshot point and drops its log up to
 * index - raft-trailing-entries (fewer entries are kept if those hold more than
 * raft-trailing-bytes), and the store drops the same prefix. The two newest
 * files are kept. Fork rather than an incremental copy-on-write scan of the
 * table: the table stays simple and the loop does no snapshot work at all; the
 * price is the fork itself (page tables: a few milliseconds per GB) and memory
 * for the pages written meanwhile.
 *
 * Sending one (leader): an INSTALL_SNAPSHOT from the core is not sent as
 * it is: the file goes first, in chunks on the same ordered link, paced on
 * the transport's queue so that no chunk is dropped, then the message. The
 * outcome goes back to the core (raft_report_snapshot); a lost link fails
 * the transfer and the core retries.
 *
 * Receiving one (follower): chunks are written to a temporary file; when
 * it is whole, it is fsynced, loaded into a new table (the most thorough
 * check: the checksum, every record, a key held twice) and renamed into
 * place on libuv's thread pool (snap_load), so the loop goes on serving
 * clients and its peers while a large table loads (2M keys: about a
 * second; it stalled the loop that long). Chunks that come meanwhile are
 * ignored, and the leader's INSTALL_SNAPSHOT for the file is held until
 * the table is loaded (a dropped one would cost a whole new transfer after
 * the leader's snapshot timeout). Only then is the message handed to the
 * core. The core's Ready then
 * carries the snapshot: the state machine is loaded from the file and the
 * store replaces its log in the same transaction as the Ready's hard state
 * and entries, so a crash leaves the old state or the new one.
 *
 * Restart: the newest snapshot file that checks out and agrees with the
 * stored log (the log holds its index with its term, or was compacted
 * exactly to it) is loaded, then the log after it is replayed. A damaged
 * file is reported and an older one tried; with none usable while the log
 * was compacted, the node refuses to start. */

#define SNAP_LOG_SHARE 8 /* see snaps_maybe */
#define XFER_CHUNK (256 * 1024)     /* bytes per snapshot chunk */
#define XFER_QUEUE_MAX (1024 * 1024) /* pace: peer queue below this */

struct xfer {
    struct xfer *next;              /* in nd->xfers */
    uint64_t to;                    /* follower */
    struct raft_msg msg;            /* INSTALL_SNAPSHOT, sent last */
    struct raft_entry conf;         /* msg's entry (copied) */
    struct snapshot_reader *reader; /* the file */
    uint64_t offset;                /* bytes sent */
    uint64_t total;                 /* file size */
};

bool snaps_can_fork(void)
{
    return !kv_paused(nd->kv);
}

static void snapshot_start(void)
{
    if (!snaps_can_fork())
        return; /* snaps_after_entry tries again */
    if (nd->snap_child.pid != 0 || nd->applied == 0 ||
        nd->applied <= nd->snap_index)
        return;
    uint64_t at = nd->applied;
    struct raft_snapshot_meta meta;
    int rv = raft_snapshot_meta_at(nd->raft, at, &meta);
    if (rv < 0)
        return;
    uint8_t *conf;
    size_t conf_len;
    raft_conf_encode(&meta.conf, &conf, &conf_len);
    raft_conf_free(&meta.conf);
    char err[SNAPSHOT_ERRMSG_SIZE];
    struct snapshot_point point = {at, meta.term, conf, conf_len};
    rv = NIO(snap_write, nd->cfg->raft_data, nd->kv, &point, &nd->snap_child,
             err, sizeof err);
    pz_free(conf);
    if (rv < 0) {
        pz_warn("cannot start a snapshot: %s", err);
        return;
    }
    nd->snap_start_bytes = nd->applied_bytes;
    nd->snap_for_backup = false;
    node_metrics_snapshot_forked(nd->snap_child.fork_us);
    pz_info("snapshot at index %llu: writing (%zu keys, fork %llu us)",
            (unsigned long long)at, kv_count(nd->kv),
            (unsigned long long)nd->snap_child.fork_us);
}

static void finish_snap_waiters(int status)
{
    reqs_finish_all(&nd->snap_waiters, status);
}

/* The local snapshot is now nd->snap_index: complete the waiters it
 * covers (each waits for the index it needs, req->index); if some need a
 * newer one, take it: at once for POST /admin/snapshot, when
 * snapshot-backup-interval allows if only backups wait. */
static void update_snap_waiters(void)
{
    bool only_backups = true;
    struct pz_queue *e = nd->snap_waiters.next;
    while (e != &nd->snap_waiters) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= nd->snap_index)
            reqs_done(r, 0);
        else if (!r->backup)
            only_backups = false;
    }
    if (pz_queue_empty(&nd->snap_waiters) || !snaps_can_fork())
        return; /* (snaps_after_entry comes back) */
    if (only_backups) {
        backups_start();
        return;
    }
    snapshot_start();
    if (nd->snap_child.pid == 0)
        finish_snap_waiters(PZ_EIO);
}

/* Start the snapshot that waiting backups need, unless one is being
 * written (update_snap_waiters takes the next one after it) or the last
 * one started for backups began less than snapshot-backup-interval ago
 * (the tick tries again): a client that asks for backup after backup,
 * with a write in between, makes the node fork and write its whole table
 * at most once per interval. */
static void backups_start(void)
{
    if (nd->snap_child.pid != 0 || pz_queue_empty(&nd->snap_waiters) ||
        NIO(now) < nd->backup_next_at)
        return;
    if (!snaps_can_fork())
        return; /* snaps_after_entry comes back */
    snapshot_start();
    if (nd->snap_child.pid == 0) {
        finish_snap_waiters(PZ_EIO);
        return;
    }
    nd->snap_for_backup = true;
    nd->backup_next_at =
        NIO(now) + (uint64_t)nd->cfg->snapshot_backup_interval_ms;
}

/* A request left the waiters (its client went away): with none left, a
 * snapshot started for backups only is called off (the child killed, its
 * temporary file removed), unless the log is due for one anyway; its
 * start still counts for snapshot-backup-interval. */
void snaps_backup_gone(void)
{
    struct snapshot_child *c = &nd->snap_child;
    if (c->pid == 0 || !nd->snap_for_backup ||
        !pz_queue_empty(&nd->snap_waiters) || snap_due())
        return;
    uint64_t index = c->index;
    NIO(snap_kill, c);
    nd->snap_start_bytes = 0;
    nd->snap_for_backup = false;
    node_metrics_snapshot_cancelled();
    pz_info("snapshot at index %llu: called off, the backups it was for "
            "went away",
            (unsigned long long)index);
}

/* Drop the stored log prefix the core dropped in steps on the thread pool,
 * between log writes (never during one), so that a million-entry prefix
 * never stalls the loop or the writes. No Ready is taken during a step
 * (the leader neither persists nor applies, a follower acknowledges
 * nothing), and a step of 20000 rows took 6 to 30 ms under a write load:
 * the writes' p99. A step is a sixteenth of what is left to drop, at
 * least COMPACT_ROWS_MIN and at most COMPACT_ROWS_MAX: the 55000 rows a
 * default snapshot leaves go in steps of 3400, and a backlog that grows
 * (steps run only when no Ready waits) is dropped in larger ones. The
 * rows of a step carry at most COMPACT_BYTES_MAX of payload (one row
 * whatever its size), and the store lowers that bound while its steps
 * take longer than its time budget, and starts a process at an eighth of
 * it (store_compact_step): SQLite frees a row's overflow pages one by
 * one, and a step of 4000 rows of 15 KB (transactions of 128 puts) took
 * 100 ms against 3 ms for 2000 rows of 110 bytes. The bound leaves
 * steps of small entries as they were (20000 rows of 110 bytes hold 2.2
 * MB). */
#define COMPACT_ROWS_MIN 2000
#define COMPACT_ROWS_MAX 20000
#define COMPACT_BYTES_MAX (4 * 1024 * 1024)
#define SNAP_RETRY_MS 10000 /* after a failed snapshot */

uint64_t snaps_compact_rows(uint64_t left)
{
    return PZ_MIN(PZ_MAX(left / 16, COMPACT_ROWS_MIN), COMPACT_ROWS_MAX);
}

static void on_compacted(int status, const char *errmsg)
{
    nd->store_busy = false;
    if (status == PZ_ENOSPC) {
        /* Rolled back whole: try the step again a little later. */
        core_nospace(errmsg ? errmsg : pz_strerror(status));
        nd->compact_retry_at = NIO(now) + 1000;
    } else if (status < 0) {
        core_fatal("cannot compact the Raft log: %s",
                   errmsg ? errmsg : pz_strerror(status));
    } else {
        /* A vacuum that found no room fails no step: the store stops
         * vacuuming until the next compaction. Rows the step dropped show
         * room (their transaction committed); the vacuum alone does not. */
        struct store_stats st;
        struct store_meta meta;
        NIO(store_stats, &st);
        NIO(store_meta_get, &meta);
        bool full = st.vacuum_nospace > nd->vacuum_nospace_seen;
        if (full) {
            nd->vacuum_nospace_seen = st.vacuum_nospace;
            pz_warn("cannot give the Raft log's free pages back to the file "
                    "system: %s; new entries reuse them, and the next "
                    "snapshot tries again",
                    NIO(store_errmsg));
        }
        if (!nd->ready_owed &&
            (!full || meta.snap_index > nd->compact_step_from))
            core_space_back();
    }
    node_metrics_compacted();
    pz_failpoint("after-log-truncate");
    if (nd->cluster_id_unsaved) {
        nd->cluster_id_unsaved = false;
        members_save_cluster_id(NULL, nd->cluster_id);
    }
    if (nd->closing)
        core_finish_close();
}

static void request_compaction(void)
{
    nd->compact_pending = true;
}

/* From the Ready cycle, when no log write is due: one compaction step. */
void snaps_compact_step(void)
{
    if (!nd->compact_pending || nd->store_busy || nd->closing ||
        NIO(now) < nd->compact_retry_at)
        return;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    if (rs.first_index <= 1) {
        nd->compact_pending = false;
        return;
    }
    struct store_meta meta;
    NIO(store_meta_get, &meta);
    uint64_t upto = rs.first_index - 1;
    uint64_t left = upto > meta.snap_index ? upto - meta.snap_index : 0;
    pz_failpoint("before-log-truncate");
    nd->compact_step_from = meta.snap_index;
    int rv = NIO(store_compact_step, upto, snaps_compact_rows(left),
                 COMPACT_BYTES_MAX, on_compacted);
    if (rv < 0) {
        core_fatal("cannot compact the Raft log: %s",
                   NIO(store_errmsg));
    }
    if (rv == 1)
        nd->compact_pending = false; /* done */
    else
        nd->store_busy = true;
}

void snaps_poll(void)
{
    if (nd->snap_child.pid == 0) {
        backups_start(); /* backups waiting for snapshot-backup-interval */
        return;
    }
    bool done = false, ok = false;
    NIO(snap_poll, &nd->snap_child, &done, &ok);
    if (!done)
        return;
    struct snapshot_child *c = &nd->snap_child;
    node_metrics_snapshot(ok, c->started_ms);
    if (!ok) {
        /* Not again on every apply (a full disk would fork a child per
         * batch): the next automatic one waits SNAP_RETRY_MS. */
        pz_warn("snapshot at index %llu failed: %s; the next one in %d s at "
                "the earliest",
                (unsigned long long)c->index, c->errmsg,
                SNAP_RETRY_MS / 1000);
        nd->snap_retry_at = NIO(now) + SNAP_RETRY_MS;
        c->pid = 0;
        finish_snap_waiters(PZ_EIO);
        return;
    }
    int rv = raft_compact(
        nd->raft, c->index,
        raft_trailing_within(nd->raft, c->index,
                             (uint64_t)nd->cfg->raft_trailing_entries,
                             (uint64_t)nd->cfg->raft_trailing_bytes));
    if (rv == PZ_ECANCELED) {
        /* A newer snapshot came from the leader meanwhile. */
        unlink(c->path);
        c->pid = 0;
        update_snap_waiters();
        return;
    }
    /* What was applied since the fork waits for the next one. */
    uint64_t covered = nd->snap_start_bytes < nd->applied_bytes
                           ? nd->snap_start_bytes
                           : nd->applied_bytes;
    nd->applied_bytes -= covered;
    nd->snap_start_bytes = 0;
    struct snapshot_meta sm;
    char err[SNAPSHOT_ERRMSG_SIZE];
    nd->prev_snap_index = nd->snap_index;
    nd->prev_snap_term = nd->snap_term;
    nd->snap_index = c->index;
    nd->snap_term = c->term;
    if (snapshot_peek(c->path, &sm, err, sizeof err) == 0) {
        nd->snap_size = sm.file_size;
        snapshot_meta_free(&sm);
    }
    pz_info("snapshot at index %llu done: %llu bytes",
            (unsigned long long)c->index,
            (unsigned long long)nd->snap_size);
    c->pid = 0;
    /* The log's payloads live in chunks of their own (pz_fifo), unmapped
     * as compaction frees them: no malloc_trim, whose walk of the heap
     * stalled the loop. */
    if (rv == 0)
        request_compaction();
    size_t removed = 0;
    /* Keep the two newest durable snapshots (the newest covers the
     * compacted log) and a received one waiting for its install; any other
     * file goes, a newer one included. */
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    struct snapshot_id keep[4] = {
        {nd->snap_index, nd->snap_term},
        {nd->prev_snap_index, nd->prev_snap_term},
        {nd->got_index, nd->got_term},
        {rs.snap_index, rs.snap_term}, /* installed, maybe not yet here */
    };
    /* Pruning removes temporary files too: not while one is written, nor
     * while a whole one is checked and renamed into place. */
    if (nd->rx == NULL && nd->rx_load == NULL)
        snapshot_prune_except(nd->cfg->raft_data, keep, 4, &removed, err,
                              sizeof err);
    update_snap_waiters();
}

/* Whether the log is due for a snapshot (see snaps_maybe). */
static bool snap_due(void)
{
    if (NIO(now) < nd->snap_retry_at)
        return false;
    /* By entries once they carry a share of the table (a snapshot writes
     * the whole table: at most SNAP_LOG_SHARE bytes per byte of log it
     * replaces), or by bytes at the latest: the log in memory stays
     * bounded when entries are large. */
    uint64_t most = (uint64_t)nd->cfg->raft_snapshot_bytes;
    if (most < nd->snap_size)
        most = nd->snap_size;
    return (nd->applied >=
                nd->snap_index + (uint64_t)nd->cfg->raft_snapshot_entries &&
            nd->applied_bytes >= nd->snap_size / SNAP_LOG_SHARE) ||
           nd->applied_bytes >= most;
}

/* After applying: time for a snapshot? */
void snaps_maybe(void)
{
    if (snap_due())
        snapshot_start();
}

int node_snapshot_now(struct node_req *req, node_req_cb cb)
{
    reqs_prepare(req, cb);
    req->deadline = UINT64_MAX; /* a large table takes a while */
    /* What is applied now must be in it: a child already writing an
     * older index does not do (update_snap_waiters takes another). */
    req->index = nd->applied;
    if (nd->applied <= nd->snap_index) {
        reqs_done(req, 0); /* nothing new since the last one */
        return 0;
    }
    if (!snaps_can_fork()) {
        reqs_link(&nd->snap_waiters, req); /* snaps_after_entry */
        return 0;
    }
    snapshot_start();
    if (nd->snap_child.pid == 0)
        return PZ_EIO;
    reqs_link(&nd->snap_waiters, req);
    return 0;
}

void snaps_after_entry(void)
{
    if (nd->snap_child.pid == 0 && !pz_queue_empty(&nd->snap_waiters))
        update_snap_waiters();
}

int node_snapshot_backup(struct node_req *req, uint64_t need, node_req_cb cb,
                         uint64_t *retry_ms)
{
    reqs_prepare(req, cb);
    req->deadline = UINT64_MAX; /* a large table takes a while */
    req->index = need;
    req->backup = true;
    *retry_ms = 0;
    if (need <= nd->snap_index) {
        reqs_done(req, 0); /* the newest one has every acknowledged write */
        return 0;
    }
    struct snapshot_child *c = &nd->snap_child;
    uint64_t now = NIO(now);
    if ((c->pid == 0 || c->index < need) &&
        nd->backup_next_at > now + (uint64_t)nd->cfg->request_timeout_ms) {
        /* A new one is needed, and it may not start in time. */
        *retry_ms = nd->backup_next_at - now;
        return PZ_EBUSY;
    }
    reqs_link(&nd->snap_waiters, req);
    backups_start(); /* else the one being written is waited for */
    return 0;
}

static int64_t snap_streams; /* snapshot streams to clients now */

bool node_snapshot_stream_get(void)
{
    if (snap_streams >= nd->cfg->snapshot_max_streams)
        return false;
    snap_streams++;
    return true;
}

void node_snapshot_stream_put(void)
{
    if (snap_streams > 0)
        snap_streams--;
}

uint64_t node_snapshot_stall_ms(void)
{
    return (uint64_t)nd->cfg->snapshot_stall_timeout_ms;
}

int node_snapshot_open(struct snapshot_reader **r, uint64_t *index,
                       char *err, size_t errlen)
{
    char path[SNAPSHOT_PATH_MAX];
    *r = NULL;
    *index = nd->snap_index;
    if (nd->snap_index == 0) {
        snprintf(err, errlen, "no snapshot yet");
        return PZ_ENOTFOUND;
    }
    snapshot_path(nd->cfg->raft_data, nd->snap_index, nd->snap_term, path,
                  sizeof path);
    /* The open descriptor keeps the file readable to its end even if a
     * later prune unlinks its name. */
    return snapshot_reader_open(path, r, err, errlen);
}

void node_snapshot_info(uint64_t *index, uint64_t *size)
{
    *index = nd->snap_index;
    *size = nd->snap_size;
}

/* --- sending snapshots --- */

void snaps_xfer_free(struct xfer *x, bool ok)
{
    struct xfer **pp = &nd->xfers;
    while (*pp && *pp != x)
        pp = &(*pp)->next;
    if (*pp)
        *pp = x->next;
    if (nd->raft)
        raft_report_snapshot(nd->raft, x->to, ok);
    snapshot_reader_close(x->reader);
    pz_free(x->conf.data);
    pz_free(x);
}

void snaps_xfer_start(const struct raft_msg *m)
{
    for (struct xfer *x = nd->xfers; x; x = x->next)
        if (x->to == m->to)
            return; /* one at a time per follower */
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    struct xfer *x = pz_calloc(1, sizeof *x);
    x->to = m->to;
    x->msg = *m;
    if (m->n_entries == 1) {
        x->conf = m->entries[0];
        x->conf.data = pz_memdup(m->entries[0].data, m->entries[0].len);
        x->msg.entries = &x->conf;
    }
    x->next = nd->xfers;
    nd->xfers = x;
    snapshot_path(nd->cfg->raft_data, m->snap_index, m->snap_term, path,
                  sizeof path);
    if (snapshot_reader_open(path, &x->reader, err, sizeof err) < 0) {
        pz_warn("cannot send snapshot %llu to a follower: %s",
                (unsigned long long)m->snap_index, err);
        snaps_xfer_free(x, false);
        return;
    }
    x->total = snapshot_reader_size(x->reader);
    struct member *mb = members_find(m->to);
    pz_info("sending snapshot at index %llu (%llu bytes) to %s",
            (unsigned long long)m->snap_index,
            (unsigned long long)x->total, mb ? mb->name : "a follower");
}

void snaps_xfer_pump(void)
{
    static uint8_t buf[XFER_CHUNK];
    struct xfer *x = nd->xfers;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    while (x) {
        struct xfer *next = x->next;
        struct transport_peer_stats ps;
        /* Chunks go out in the term we lead in; a leader that stepped down
         * has nothing to send (followers would drop it). */
        bool failed = rs.role != RAFT_LEADER || rs.term != x->msg.term ||
                      NIO(peer_stats, x->to, &ps) < 0;
        while (!failed && x->offset < x->total &&
               ps.queued_bytes < XFER_QUEUE_MAX) {
            size_t got = 0;
            char err[SNAPSHOT_ERRMSG_SIZE];
            if (snapshot_reader_read(x->reader, x->offset, buf, sizeof buf,
                                     &got, err, sizeof err) < 0 ||
                got == 0) {
                failed = true;
                break;
            }
            struct raft_snap_chunk c = {
                .term = x->msg.term,
                .snap_index = x->msg.snap_index,
                .snap_term = x->msg.snap_term,
                .offset = x->offset,
                .total = x->total,
                .data = buf,
                .len = got,
            };
            if (NIO(send_chunk, x->to, &c) < 0 ||
                NIO(peer_stats, x->to, &ps) < 0)
                failed = true;
            x->offset += got;
        }
        if (failed) {
            snaps_xfer_free(x, false);
        } else if (x->offset == x->total) {
            NIO(send, &x->msg);
            snaps_xfer_free(x, true);
        }
        x = next;
    }
}

/* A link went down: a transfer on it is lost. */
void snaps_on_peer_link(void *data, uint64_t id, bool connected)
{
    PZ_UNUSED(data);
    if (connected)
        return;
    for (struct xfer *x = nd->xfers; x; x = x->next) {
        if (x->to == id && x->offset > 0) {
            snaps_xfer_free(x, false);
            return;
        }
    }
}

/* --- receiving snapshots ---
 * Only the leader we follow, in our current term, may stream a snapshot
 * to us, one at a time, and only one that covers more than we have
 * committed. A transfer dies (its .recv.tmp removed) when its link
 * closes, the leader or term changes, or no chunk came for
 * RX_IDLE_MS. Its size is bounded before anything is written: by
 * raft-snapshot-max-size (0: four times our own state, at least
 * RX_AUTO_MIN), and by the free space of the data directory, which keeps
 * RX_DISK_RESERVE free. The file is checked by loading it (the loader's
 * checks, a repeated key included) into the table the install will use;
 * its configuration must decode, and the install message must carry the
 * same one (snaps_install_refused). */
#define RX_IDLE_MS 30000
#define RX_AUTO_MIN (UINT64_C(4) << 30)
#define RX_DISK_RESERVE (UINT64_C(64) << 20)

/* Forget a received snapshot awaiting its install: its table, and its
 * file (the disk check of the next transfer must see the space again). */
/* The core took the INSTALL_SNAPSHOT of the file held (its snapshot
 * point is that file's): the next Ready installs it (snaps_install),
 * which needs the file and its table. Between the two, a tick (the leader
 * moved) or a newer transfer completing must not drop them. */
static bool got_install_pending(void)
{
    /* Nothing is pending unless the core took its INSTALL_SNAPSHOT (the
     * core's snapshot point alone could be the node's own snapshot at
     * that index, reached through the log while the file waited for a
     * message that never came); nor with the state machine at that point
     * already (a snapshot of its own): the table held must not block
     * later transfers. */
    if (nd->got_kv == NULL || !nd->got_taken || nd->raft == NULL ||
        (nd->snap_index == nd->got_index && nd->snap_term == nd->got_term))
        return false;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    return rs.snap_index == nd->got_index && rs.snap_term == nd->got_term;
}

static void got_free(void);

void snaps_got_drop(void)
{
    if (got_install_pending())
        return;
    got_free();
}

/* Remove the received file (index, term). A local snapshot at the same
 * point has the same path (the writer renamed its file over the received
 * one): that file stays, or a crash after the log's compaction would leave
 * no snapshot that covers the compacted prefix and the node could not
 * start. So does the file of a local snapshot still being written at that
 * point: its writer may have renamed it into place already, and once it
 * is done the log is compacted on the strength of that file. */
static void got_unlink(uint64_t index, uint64_t term)
{
    const struct snapshot_child *c = &nd->snap_child;
    bool local = (index == nd->snap_index && term == nd->snap_term) ||
                 (index == nd->prev_snap_index && term == nd->prev_snap_term) ||
                 (c->pid != 0 && index == c->index && term == c->term);
    if (local)
        return;
    char path[SNAPSHOT_PATH_MAX];
    snapshot_path(nd->cfg->raft_data, index, term, path, sizeof path);
    unlink(path);
}

static void got_free(void)
{
    if (nd->got_kv)
        got_unlink(nd->got_index, nd->got_term);
    kv_free(nd->got_kv);
    nd->got_kv = NULL;
    pz_free(nd->got_conf);
    nd->got_conf = NULL;
    nd->got_conf_len = 0;
    nd->got_taken = false;
    nd->got_index = nd->got_term = 0;
}

void snaps_rx_abort(void)
{
    snapshot_receiver_abort(nd->rx);
    nd->rx = NULL;
}

static uint64_t rx_max_size(void)
{
    uint64_t cap = (uint64_t)nd->cfg->raft_snapshot_max_size;
    return cap ? cap : PZ_MAX(RX_AUTO_MIN, 4 * (uint64_t)kv_bytes(nd->kv));
}

/* Whether total more bytes fit on the data directory's disk, keeping
 * RX_DISK_RESERVE free; why not in why. */
static bool rx_fits_disk(uint64_t total, char *why, size_t len)
{
    struct statvfs vfs;
    if (statvfs(nd->cfg->raft_data, &vfs) != 0)
        return true; /* cannot tell: the writes will say */
    uint64_t avail = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    if (total + RX_DISK_RESERVE <= avail)
        return true;
    snprintf(why, len, "%llu bytes do not fit in the %llu bytes free in %s",
             (unsigned long long)total, (unsigned long long)avail,
             nd->cfg->raft_data);
    return false;
}

/* buf decoded and encoded again into *out (pz_free it); false if it does
 * not decode. Two blobs of the same configuration come out the same. */
static bool conf_canonical(const uint8_t *buf, size_t len, uint8_t **out,
                           size_t *outlen)
{
    struct raft_conf c;
    if (raft_conf_decode(buf, len, &c) < 0)
        return false;
    raft_conf_encode(&c, out, outlen);
    raft_conf_free(&c);
    return true;
}

const char *snaps_on_chunk(void *data, uint64_t from,
                            const struct raft_snap_chunk *c)
{
    PZ_UNUSED(data);
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (!nd->open || got_install_pending() || nd->rx_load)
        return NULL; /* one waits or loads: the leader sends it again */
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    struct snapshot_rx_view v = {
        .self = nd->id,
        .leader = rs.leader,
        .term = rs.term,
        .commit = rs.commit,
        .receiving = nd->rx != NULL,
        .rx_from = nd->rx_from,
        .rx_index = nd->rx_index,
        .rx_term = nd->rx_term,
        .rx_offset = nd->rx ? snapshot_receiver_offset(nd->rx) : 0,
        .rx_total = nd->rx_total,
        .have_index = nd->got_kv ? nd->got_index : 0,
        .have_term = nd->got_kv ? nd->got_term : 0,
        .max_size = rx_max_size(),
    };
    switch (snapshot_rx_decide(&v, from, c)) {
    case SNAPSHOT_RX_INVALID:
        return "snapshot chunk with an impossible index, term, size or "
               "offset";
    case SNAPSHOT_RX_STALE:
        if (nd->rx && nd->rx_from == from)
            snaps_rx_abort();
        return NULL;
    case SNAPSHOT_RX_TOO_BIG:
        snaps_rx_abort();
        pz_warn("refusing snapshot %llu from the leader: %llu bytes is over "
                "raft-snapshot-max-size (%llu)",
                (unsigned long long)c->snap_index,
                (unsigned long long)c->total,
                (unsigned long long)v.max_size);
        return NULL;
    case SNAPSHOT_RX_BEGIN:
        snaps_rx_abort();
        if (!rx_fits_disk(c->total, err, sizeof err)) {
            pz_warn("refusing snapshot %llu from the leader: %s",
                    (unsigned long long)c->snap_index, err);
            return NULL;
        }
        if (snapshot_receiver_begin(nd->cfg->raft_data, c->snap_index,
                                    c->snap_term, c->total, &nd->rx, err,
                                    sizeof err) < 0) {
            pz_warn("cannot receive snapshot %llu: %s",
                    (unsigned long long)c->snap_index, err);
            return NULL;
        }
        nd->rx_from = from;
        nd->rx_index = c->snap_index;
        nd->rx_term = c->snap_term;
        nd->rx_total = c->total;
        nd->rx_leader_term = c->term;
        pz_info("receiving snapshot at index %llu (%llu bytes)",
                (unsigned long long)c->snap_index,
                (unsigned long long)c->total);
        break;
    case SNAPSHOT_RX_WRITE:
        break;
    default:
        return NULL;
    }
    nd->rx_last_ms = NIO(now);
    if (snapshot_receiver_write(nd->rx, c->offset, c->data, c->len, err,
                                sizeof err) < 0) {
        pz_warn("snapshot %llu: %s; dropping the transfer",
                (unsigned long long)c->snap_index, err);
        snaps_rx_abort();
        return NULL;
    }
    if (c->offset + c->len < c->total)
        return NULL;
    struct node_snap_load *job = pz_calloc(1, sizeof *job);
    job->rx = nd->rx;
    job->kv = kv_new_seeded(pz_seed());
    job->index = c->snap_index;
    job->term = c->snap_term;
    job->done = on_loaded;
    job->started_ms = NIO(now);
    pz_info("snapshot at index %llu received (%llu bytes); checking and "
            "loading it",
            (unsigned long long)c->snap_index, (unsigned long long)c->total);
    nd->rx = NULL; /* the job's */
    nd->rx_load = job;
    int rc = NIO(snap_load, job);
    if (rc < 0) {
        pz_warn("snapshot %llu: cannot load it: %s; dropping the transfer",
                (unsigned long long)c->snap_index, pz_strerror(rc));
        nd->rx_load = NULL;
        snapshot_receiver_abort(job->rx);
        kv_free(job->kv);
        pz_free(job);
    }
    return NULL;
}

/* Forget an INSTALL_SNAPSHOT held for the file being loaded. */
static void held_install_free(void)
{
    pz_buf_free(&nd->rx_install);
}

/* The loaded table of a received file (snap_load's done, on the loop):
 * held until the leader says to install it, then the INSTALL_SNAPSHOT
 * that came during the load, if one did, goes to the core. */
static void on_loaded(struct node_snap_load *job)
{
    nd->rx_load = NULL;
    uint64_t index = job->index, term = job->term;
    struct kv *kv = job->kv;
    int rc = job->rc;
    struct snapshot_meta meta = job->meta;
    if (rc < 0)
        pz_warn("snapshot %llu refused: %s", (unsigned long long)index,
                job->err);
    pz_free(job);
    if (rc < 0) {
        kv_free(kv);
        held_install_free();
        return;
    }
    /* Its configuration is what a restart reads: one that does not decode
     * would keep the node from starting once the log is compacted. */
    uint8_t *conf;
    size_t conf_len;
    bool conf_ok = conf_canonical(meta.conf, meta.conf_len, &conf, &conf_len);
    snapshot_meta_free(&meta);
    if (!conf_ok || got_install_pending()) {
        /* got_install_pending: the core took the INSTALL_SNAPSHOT of an
         * earlier file meanwhile, which its next Ready installs. */
        if (!conf_ok)
            pz_warn("snapshot %llu refused: its configuration does not "
                    "decode",
                    (unsigned long long)index);
        else
            pz_free(conf);
        kv_free(kv);
        got_unlink(index, term);
        held_install_free();
        return;
    }
    snaps_got_drop();
    nd->got_kv = kv;
    nd->got_conf = conf;
    nd->got_conf_len = conf_len;
    nd->got_taken = false;
    nd->got_index = index;
    nd->got_term = term;
    nd->rx_last_ms = NIO(now);
    pz_info("received snapshot at index %llu (%zu keys); installing it once "
            "the leader says so",
            (unsigned long long)index, kv_count(kv));
    pz_failpoint("install-received"); /* the file durable, Raft unaware */
    if (nd->rx_install.len == 0)
        return;
    struct pz_buf held = nd->rx_install;
    pz_buf_init(&nd->rx_install);
    struct raft_decoded d;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    if (raft_codec_decode((const uint8_t *)held.data + RAFT_FRAME_HDR,
                          held.len - RAFT_FRAME_HDR, &d) != 0 ||
        d.kind != RAFT_FRAME_MESSAGE) {
        /* Our own encoding of a message that decoded once. */
        pz_warn("snapshot %llu: its install message does not decode again; "
                "the leader sends another",
                (unsigned long long)index);
    } else if (rs.leader != d.msg.from || rs.term != d.msg.term || !rs.lease) {
        /* Its leader is no longer ours, or went quiet during the load:
         * the message, as old as the load, would count as word from a
         * live leader (the core resets its election timer and refuses
         * votes for another timeout). The table waits for a leader to
         * say so again (snaps_rx_check drops it if none does). */
        pz_info("snapshot %llu: the leader that sent it is %s; its "
                "install message is not taken",
                (unsigned long long)index,
                rs.term != d.msg.term || rs.leader != d.msg.from
                    ? "no longer the leader"
                    : "not heard from within an election timeout");
    } else {
        const char *why = core_on_recv(&d.msg);
        if (why)
            pz_warn("raft: INSTALL_SNAPSHOT %llu from node %llu: %s",
                    (unsigned long long)index, (unsigned long long)d.msg.from,
                    why);
    }
    raft_decoded_free(&d);
    pz_buf_free(&held);
}

/* An INSTALL_SNAPSHOT whose file is being loaded: held (a copy) for
 * on_loaded, which hands it to the core; true if so. The latest one
 * counts (a leader retrying sends the same). */
bool snaps_install_later(const struct raft_msg *m)
{
    if (m->type != RAFT_MSG_INSTALL_SNAPSHOT || nd->rx_load == NULL ||
        m->snap_index != nd->rx_load->index ||
        m->snap_term != nd->rx_load->term)
        return false;
    pz_buf_reset(&nd->rx_install);
    if (raft_codec_encode_msg(&nd->rx_install, m, UINT32_MAX) < 0) {
        held_install_free();
        return false;
    }
    return true;
}

/* The last accepted link from `from` closed: a transfer on it is over,
 * and the address of a peer not in our configuration (learned from its
 * handshake) is forgotten. */
void snaps_on_inbound_closed(void *data, uint64_t from, bool last)
{
    PZ_UNUSED(data);
    /* Any link of the sender: a link replaced by a new one of the same id
     * (the leader redialed, or someone else claims its id) carried the
     * transfer to its end too; the leader starts over on its new link. */
    if (nd->rx && nd->rx_from == from) {
        pz_info("snapshot %llu: the leader's link closed; dropping the "
                "transfer",
                (unsigned long long)nd->rx_index);
        snaps_rx_abort();
    }
    if (last && from != nd->id && members_find(from) == NULL)
        NIO(remove_peer, from);
}

/* From the tick: a transfer whose leader moved on or went quiet. */
void snaps_rx_check(void)
{
    struct node_snap_load *job = nd->rx_load;
    if (job && !job->slow_told && NIO(now) - job->started_ms > RX_IDLE_MS) {
        /* The node answers its leader's heartbeats but takes none of
         * its entries meanwhile: say so, once. */
        job->slow_told = true;
        pz_warn("snapshot %llu: still being checked and loaded after %d s "
                "(a slow disk?); the leader's entries wait for it",
                (unsigned long long)job->index, RX_IDLE_MS / 1000);
    }
    if (nd->rx == NULL && nd->got_kv == NULL)
        return;
    struct raft_status rs;
    raft_status(nd->raft, &rs);
    bool moved = rs.leader != nd->rx_from || rs.term != nd->rx_leader_term;
    bool idle = NIO(now) - nd->rx_last_ms > RX_IDLE_MS;
    if (nd->got_kv && nd->rx == NULL && (moved || idle)) {
        /* Received whole, but its leader moved on or never sent the
         * message that installs it: the memory goes now (the file at the
         * next prune). */
        snaps_got_drop();
        return;
    }
    if (nd->rx == NULL)
        return;
    if (moved || idle) {
        pz_info("snapshot %llu: %s; dropping the transfer",
                (unsigned long long)nd->rx_index,
                moved ? "the leader changed" : "no data for 30 s");
        snaps_rx_abort();
    }
}

/* The core may see INSTALL_SNAPSHOT only once its file is here. */
bool snaps_install_ready(const struct raft_msg *m)
{
    return m->type != RAFT_MSG_INSTALL_SNAPSHOT ||
           (nd->got_kv && m->snap_index == nd->got_index &&
            m->snap_term == nd->got_term);
}

/* The core installs the configuration the message carries; a restart
 * reads the one in the file. They must be the same, or the node would come
 * back with another configuration than the one it ran with. Compared as
 * decoded (encoded again: the encoding is canonical). A message whose
 * configuration does not decode is left to the core, which refuses it. */
const char *snaps_install_refused(const struct raft_msg *m)
{
    uint8_t *conf;
    size_t len;
    if (m->type != RAFT_MSG_INSTALL_SNAPSHOT || m->n_entries != 1 ||
        !conf_canonical(m->entries[0].data, m->entries[0].len, &conf, &len))
        return NULL;
    bool same = len == nd->got_conf_len && memcmp(conf, nd->got_conf, len) == 0;
    pz_free(conf);
    if (same)
        return NULL;
    /* Kept if the core took an earlier message for this file: that one
     * carried the file's configuration. */
    snaps_got_drop();
    return "INSTALL_SNAPSHOT whose configuration is not its file's";
}

/* rd.snapshot: the state machine becomes the received file's table
 * (loaded when the file was checked). The store write that makes it
 * durable follows in the Ready cycle. */
void snaps_install(const struct raft_snapshot_meta *sm)
{
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    struct snapshot_meta meta;
    snapshot_path(nd->cfg->raft_data, sm->index, sm->term, path,
                  sizeof path);
    struct kv *kv = NULL;
    if (nd->got_kv && nd->got_index == sm->index &&
        nd->got_term == sm->term) {
        kv = nd->got_kv; /* the usual case: loaded when it arrived */
        nd->got_kv = NULL;
        nd->got_taken = false;
        if (snapshot_peek(path, &meta, err, sizeof err) == 0) {
            nd->snap_size = meta.file_size;
            snapshot_meta_free(&meta);
        }
    } else {
        uint64_t seed = pz_seed();
        kv = kv_new_seeded(seed);
        if (snapshot_load(path, kv, &meta, err, sizeof err) < 0 ||
            meta.index != sm->index || meta.term != sm->term) {
            core_fatal("cannot install snapshot %llu: %s",
                       (unsigned long long)sm->index, err);
        }
        nd->snap_size = meta.file_size;
        snapshot_meta_free(&meta);
    }
    snaps_got_drop();
    kv_free(nd->kv);
    nd->kv = kv;
    core_kv_replaced();
    nd->applied = sm->index;
    nospace_applied(sm->index);
    nd->prev_snap_index = nd->snap_index;
    nd->prev_snap_term = nd->snap_term;
    nd->snap_index = sm->index;
    nd->snap_term = sm->term;
    nd->applied_bytes = 0;
    nd->snap_start_bytes = 0;
    /* Writes waiting here can no longer be matched to their entries. */
    struct pz_queue *e = nd->proposals.next;
    while (e != &nd->proposals) {
        struct node_req *r = container_of(e, struct node_req, q);
        e = e->next;
        if (r->index <= sm->index)
            reqs_done(r, PZ_ELEADERCHANGE);
    }
    core_reads_check_applied();
    members_snapshot_committed(&sm->conf);
    update_snap_waiters();
    pz_info("installed snapshot at index %llu (%zu keys)",
            (unsigned long long)sm->index, kv_count(kv));
    pz_failpoint("install-applied"); /* in memory; the store write next */
}

/* Usable only if the stored log agrees with it: it is the store's
 * snapshot point, or the log holds its index with its term (one row read,
 * not the whole log). */
static bool restore_fits(void *arg, uint64_t index, uint64_t term)
{
    const struct store_meta *sm = arg;
    uint64_t t;
    if (index == sm->snap_index && term == sm->snap_term)
        return true;
    return NIO(store_term, index, &t) == 0 && t == term;
}

static bool restore_conf_ok(void *arg, const struct snapshot_meta *meta,
                            char *msg, size_t msglen)
{
    PZ_UNUSED(arg);
    struct raft_conf c;
    if (raft_conf_decode(meta->conf, meta->conf_len, &c) < 0) {
        snprintf(msg, msglen, "snapshot %llu: bad configuration",
                 (unsigned long long)meta->index);
        return false;
    }
    raft_conf_free(&c);
    return true;
}

static void restore_damaged(void *arg, const char *path, int rc,
                            const char *msg)
{
    PZ_UNUSED(arg);
    PZ_UNUSED(rc);
    pz_warn("damaged snapshot %s: %s; trying an older one", path, msg);
}

int snaps_restore(const struct store_meta *sm, struct raft_entry **ents,
                  size_t *n, struct raft_snapshot_meta *out, bool *have,
                  char *err, size_t errlen)
{
    struct snapshot_pick pick = {.accept = restore_fits,
                                 .check = restore_conf_ok,
                                 .damaged = restore_damaged,
                                 .arg = (void *)sm};
    struct kv *kv = NULL;
    struct snapshot_meta meta;
    char e2[SNAPSHOT_ERRMSG_SIZE];
    uint64_t seed = pz_seed();
    *have = snapshot_load_newest_valid(nd->cfg->raft_data, seed, &pick,
                                       &kv, &meta, NULL, e2, sizeof e2) == 0;
    if (*have) {
        out->index = meta.index;
        out->term = meta.term;
        raft_conf_init(&out->conf);
        int rc = raft_conf_decode(meta.conf, meta.conf_len, &out->conf);
        pz_assert(rc == 0); /* restore_conf_ok checked it */
        kv_free(nd->kv);
        nd->kv = kv;
        core_kv_replaced();
        nd->applied = meta.index;
        nd->snap_index = meta.index;
        nd->snap_term = meta.term;
        nd->snap_size = meta.file_size;
        snapshot_meta_free(&meta);
    }
    if (!*have && sm->snap_index > 0) {
        snprintf(err, errlen,
                 "%s: the log was compacted up to index %llu but no valid "
                 "snapshot in %s covers it: refusing to start",
                 NIO(store_path), (unsigned long long)sm->snap_index,
                 nd->cfg->raft_data);
        return PZ_ECORRUPT;
    }
    /* The log from the snapshot's index minus the trailing entries, as
     * raft_compact keeps it (raft-trailing-entries, fewer if those hold
     * more than raft-trailing-bytes): a prefix the store had not dropped
     * yet when the node stopped stays on disk, and its compaction goes
     * on. */
    uint64_t from = 0;
    int rv = 0;
    if (*have)
        rv = NIO(store_trailing_from, out->index,
                 (uint64_t)nd->cfg->raft_trailing_entries,
                 (uint64_t)nd->cfg->raft_trailing_bytes, &from);
    struct raft_hard_state hs;
    if (rv == 0)
        rv = NIO(store_load_from, from, &hs, ents, n, NULL);
    if (rv < 0) {
        snprintf(err, errlen, "%s", NIO(store_errmsg));
        if (*have)
            raft_conf_free(&out->conf);
        *have = false;
        return rv;
    }
    if (from > sm->snap_index + 1)
        request_compaction();
    return 0;
}

/* The node closes: the writer child, transfers both ways. */
void snaps_close(void)
{
    NIO(snap_kill, &nd->snap_child);
    snaps_rx_abort();
    if (nd->rx_load) {
        NIO(snap_load_cancel, nd->rx_load);
        nd->rx_load = NULL;
    }
    held_install_free();
    got_free();
    while (nd->xfers)
        snaps_xfer_free(nd->xfers, false);
}

/* --- seeding a new cluster from a backup (pyazdb-server --restore) ------
 * Runs before the node opens, on an empty data directory: the backup is
 * checked by loading it (format, lengths, CRC-64, a key held twice), then
 * written back as this node's snapshot with a new configuration, this node
 * as the only voter (the backup's members belong to the old cluster), and
 * the store records that snapshot as its compaction point, with the term
 * of the backup and a new random cluster id, so the old cluster's nodes
 * can never talk to the new one. The node then starts as if it had
 * compacted its log up to there: it elects itself at once and other nodes
 * join it as usual (InstallSnapshot brings them the state).
 *
 * Crashes: raft.db is created first, before the backup is even read, with
 * the meta row restoring in the transaction that creates it
 * (store_create_restoring), and that row goes only in the transaction of
 * the last step (store_restore_done). A crash at any step in between
 * leaves a directory that says so: a plain start refuses it (node.c
 * restore), and the next --restore removes what the interrupted one
 * wrote and starts over. A crash before raft.db exists leaves nothing a
 * start would read. */

/* Failpoints of the steps that have none of their own (snapshot_write
 * has snapshot-mid-write, snapshot-before-rename and
 * snapshot-after-rename). */
#define RESTORE_FP_CREATED "restore-created"       /* marked raft.db */
#define RESTORE_FP_HARD_STATE "restore-hard-state" /* term and commit */
#define RESTORE_FP_COMPACTED "restore-compacted"   /* snapshot point */
#define RESTORE_FP_CLEARING "restore-clearing"     /* raft.db left only */

/* What the data directory holds: 0 no state, 1 what an interrupted
 * --restore left (a raft.db with meta restoring), PZ_EINVAL state (why
 * says which): raft.db or a snapshot. A raft.db that cannot be opened
 * (damaged, or in use by a running server) counts as state. */
static int dir_state(const char *dir, char *why, size_t len)
{
    char path[SNAPSHOT_PATH_MAX];
    snprintf(path, sizeof path, "%s/raft.db", dir);
    if (access(path, F_OK) == 0) {
        struct store *s;
        struct store_meta sm = {0};
        char serr[STORE_ERRMSG_SIZE];
        if (store_open(dir, &s, serr, sizeof serr) == 0) {
            store_meta_get(s, &sm);
            store_close(s);
        }
        if (sm.restoring)
            return 1;
        snprintf(why, len, "it has a raft.db");
        return PZ_EINVAL;
    }
    struct snapshot_info *list;
    size_t n;
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_list(dir, &list, &n, err, sizeof err) == 0 && n > 0) {
        snprintf(why, len, "it has snapshot files");
        snapshot_list_free(list, n);
        return PZ_EINVAL;
    }
    return 0;
}

/* Removes dir/name if it is there. */
static int restore_unlink(const char *dir, const char *name, char *err,
                          size_t errlen)
{
    char path[SNAPSHOT_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (unlink(path) == 0 || errno == ENOENT)
        return 0;
    int rc = -errno;
    snprintf(err, errlen, "%s: cannot remove: %s", path, pz_strerror(rc));
    return rc;
}

/* Removes what a --restore wrote into dir, which held no state before it
 * (raft.db says so with meta restoring, or this run created it): every
 * snapshot file (.snap and .tmp), then raft.db's journal files, and
 * raft.db last, so that a crash half way still leaves the marked raft.db
 * and the next --restore clears again. Nothing else in dir is touched. */
static int restore_clear(const char *dir, char *err, size_t errlen)
{
    char why[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_prune_except(dir, NULL, 0, NULL, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s", why);
        return PZ_EIO;
    }
    int rc;
    if ((rc = restore_unlink(dir, "raft.db-wal", err, errlen)) < 0 ||
        (rc = restore_unlink(dir, "raft.db-shm", err, errlen)) < 0 ||
        (rc = restore_unlink(dir, "raft.db-journal", err, errlen)) < 0)
        return rc;
    /* The other removals durable before the marker goes. */
    if ((rc = pz_fsync_path(dir, true)) == 0) {
        pz_failpoint(RESTORE_FP_CLEARING);
        if ((rc = restore_unlink(dir, "raft.db", err, errlen)) < 0)
            return rc;
        rc = pz_fsync_path(dir, true);
    }
    if (rc < 0)
        snprintf(err, errlen, "%s: fsync: %s", dir, pz_strerror(rc));
    return rc;
}

/* This node alone, with every address it has (as bootstrap writes it). */
static void restore_conf(const struct pz_config *cfg, uint8_t **buf,
                         size_t *len)
{
    struct raft_conf conf;
    raft_conf_init(&conf);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", cfg->node_id);
    cJSON_AddStringToObject(o, "raft", cfg->raft_addr);
    cJSON_AddStringToObject(o, "http", cfg->http_addr);
    cJSON_AddStringToObject(o, "grpc", cfg->grpc_addr);
    char *meta = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    raft_conf_add(&conf, members_name_to_id(cfg->node_id), true, meta);
    cJSON_free(meta);
    raft_conf_encode(&conf, buf, len);
    raft_conf_free(&conf);
}

int node_restore_backup(const struct pz_config *cfg, const char *file,
                        char *err, size_t errlen)
{
    char why[SNAPSHOT_ERRMSG_SIZE];
    if (cfg->initial_cluster[0]) {
        snprintf(err, errlen,
                 "--restore seeds a one-node cluster: remove initial-cluster "
                 "(the other nodes join it through mandi)");
        return PZ_ECONFIG;
    }
    int rv = dir_state(cfg->raft_data, why, sizeof why);
    if (rv < 0) {
        snprintf(err, errlen,
                 "raft-data %s already holds state (%s): --restore only seeds "
                 "an empty data directory",
                 cfg->raft_data, why);
        return rv;
    }
    if (rv == 1) {
        pz_info("an interrupted --restore left %s: starting over",
                cfg->raft_data);
        if ((rv = restore_clear(cfg->raft_data, err, errlen)) < 0)
            return rv;
    }
    /* The marked raft.db first: from here on a crash leaves a directory
     * that no start takes for a new node's. store_create_restoring
     * creates the directory. */
    struct store *s = NULL;
    rv = store_create_restoring(cfg->raft_data, &s, err, errlen);
    if (rv < 0)
        return rv;
    pz_failpoint(RESTORE_FP_CREATED);
    struct kv *kv = kv_new_seeded(pz_seed());
    struct snapshot_meta meta;
    rv = snapshot_load(file, kv, &meta, why, sizeof why);
    struct raft_conf old;
    if (rv == 0 && (meta.index == 0 || meta.term == 0)) {
        /* No node takes a snapshot before its first entry: the node this
         * would seed refuses such a point at its every start. */
        snprintf(why, sizeof why,
                 "%s: index %llu term %llu: a backup is taken at index 1 "
                 "or later, in term 1 or later",
                 file, (unsigned long long)meta.index,
                 (unsigned long long)meta.term);
        rv = PZ_ECORRUPT;
    } else if (rv == 0 &&
               raft_conf_decode(meta.conf, meta.conf_len, &old) < 0) {
        snprintf(why, sizeof why, "%s: corrupt: bad configuration", file);
        rv = PZ_ECORRUPT;
    } else if (rv == 0) {
        raft_conf_free(&old);
    }
    if (rv < 0)
        snprintf(err, errlen, "not a valid snapshot: %s", why);
    if (rv == 0) {
        uint8_t *conf;
        size_t conf_len;
        restore_conf(cfg, &conf, &conf_len);
        rv = snapshot_write(
            cfg->raft_data, kv,
            &(struct snapshot_point){meta.index, meta.term, conf, conf_len},
            NULL, 0, why, sizeof why);
        pz_free(conf);
        if (rv < 0)
            snprintf(err, errlen, "%s", why);
    }
    struct raft_hard_state hs = {.term = meta.term, .commit = meta.index};
    uint64_t cluster_id = pz_seed();
    cluster_id = cluster_id ? cluster_id : 1;
    bool store_steps = rv == 0; /* their errors are the store's */
    if (rv == 0)
        rv = store_write_sync(s, &hs, NULL, 0);
    if (rv == 0) {
        pz_failpoint(RESTORE_FP_HARD_STATE);
        rv = store_compact(s, meta.index, meta.term);
    }
    if (rv == 0) {
        pz_failpoint(RESTORE_FP_COMPACTED);
        rv = store_restore_done(s, cluster_id, members_name_to_id(cfg->node_id),
                                cfg->node_id);
    }
    if (store_steps && rv < 0)
        snprintf(err, errlen, "%s", store_errmsg(s));
    if (rv == 0)
        pz_info("restored %s: snapshot at index %llu (%zu keys) seeds a new "
                "one-node cluster (cluster id %016llx)",
                file, (unsigned long long)meta.index, kv_count(kv),
                (unsigned long long)cluster_id);
    store_close(s);
    /* The directory held no state: what is there now is ours. */
    char cerr[SNAPSHOT_ERRMSG_SIZE];
    if (rv < 0 && restore_clear(cfg->raft_data, cerr, sizeof cerr) < 0)
        pz_warn("cannot remove what the failed --restore wrote: %s", cerr);
    kv_free(kv);
    snapshot_meta_free(&meta);
    return rv;
}
