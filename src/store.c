/* store.c - the Raft log, hard state and node meta in SQLite (raft.db).
 *
 * Owns: the SQLite connection to <data-dir>/raft.db, its prepared
 * statements, the in-memory copy of what is stored (hard state, meta, last
 * index/term) and the queue of writes run on libuv's thread pool.
 *
 * Schema (version 3), all tables STRICT:
 *   log, log1 ... log7 (LOG_SLOTS tables, the same columns):
 *     (idx INTEGER PRIMARY KEY, term, type, data BLOB, crc)  one row per
 *       entry; crc: CRC-64/XZ of idx, term (8 bytes big-endian each), type
 *       (1 byte) and data, as its 64-bit pattern, checked by every load
 *       (SQLite checks its pages' structure, not their bytes: a flipped
 *       bit in a payload would go unseen); NULL in rows written by a
 *       version 1 build. The log is cut into segments of log_segment
 *       (meta) entries, and entry idx lives in table (idx / log_segment)
 *       % LOG_SLOTS, so that compaction empties a whole table at once
 *       ("Log segments" below). Open converts older files: version 1
 *       gets the crc column (ALTER TABLE ADD COLUMN), version 2 (one
 *       table, log) the seven others and its rows moved into them
 *   hard_state(id = 0, term, vote, commit_index)          exactly one row;
 *       vote is a node id kept as its 64-bit pattern (may read negative)
 *   meta(key TEXT PRIMARY KEY, value TEXT)                schema_version,
 *       created_ms, cluster_id, node_id, node_name, snapshot_index,
 *       snapshot_term, log_segment (a power of two, fixed when the file
 *       is made); 64-bit numbers as decimal text, never as doubles;
 *       optional: incarnation, lease_promise_ns, and restoring (only
 *       while a --restore seeds the directory: store_create_restoring
 *       writes it with the schema, store_restore_done deletes it)
 * plus PRAGMA application_id = STORE_APP_ID to recognise our files.
 * Terms and indexes are stored in SQLite's signed 64-bit INTEGER; values
 * above INT64_MAX are refused on write and reported as corruption on read.
 *
 * Happy path: store_open creates the directory and, if raft.db is missing,
 * builds a fresh database as raft.db.tmp, fsyncs it and renames it into
 * place (so a raft.db that exists always has a whole schema; an empty or
 * truncated one is refused, never mistaken for a new node). It then takes
 * an exclusive lock, switches to WAL with synchronous=FULL, runs PRAGMA
 * quick_check and validates schema version, meta and hard state, and that
 * each log table holds as many rows as the log has entries there.
 * store_write copies the hard state, borrows the entries and queues the
 * batch; a drain job on the thread pool runs the queued batches back to
 * back (BEGIN, DELETE idx >= first where the log is rewritten, INSERT...
 * into each entry's table, UPDATE hard_state, COMMIT),
 * and each result is applied to the in-memory copy and reported on the
 * loop thread as soon as it is durable (an async handle), while the next
 * batch is already being written. Compaction steps run there too, each
 * sized to a time budget of a few ms (STEP_NS), and once the last rows
 * are dropped, incremental vacuum steps sized the same way (the database
 * is auto_vacuum=INCREMENTAL; one from an older build is converted at
 * open), so the file shrinks.
 *
 * Log segments: deleting a row writes its leaf page into the WAL, so
 * dropping a compacted prefix row by row wrote about as many pages as
 * writing it had, and held the log writes behind it for tens of ms; a
 * DELETE without WHERE frees a whole table's pages at once (SQLite's
 * truncate optimisation: a few WAL frames for any number of rows). So a
 * compaction step empties the tables of the oldest segments its goal
 * covers to their last entry (whatever the step's row bound; up to
 * LOG_CLEAR_BYTES of payload), and a goal that ends inside a segment
 * leaves that segment's rows for a later step, which empties the table
 * once a later snapshot covers all of it: the store keeps at most one
 * segment (LOG_CLEAR_BYTES) more than it was asked to. Rows are deleted
 * one by one, in the bounded steps above, only where a table holds the
 * compacted rows beside live ones (a log longer than LOG_SLOTS - 1
 * segments) or a segment's payload is larger than that.
 *
 * Failure modes: any failed step inside a write rolls the transaction back
 * (if SQLite has not already), marks the store failed (every later write
 * is refused) and reports a negative code with "<path>: <step>: <why>",
 * except a lack of space (SQLITE_FULL: the file system said ENOSPC, or the
 * page limit of store_test_max_pages): that transaction is rolled back,
 * the store stays usable and the caller may retry the batch later. A
 * COMMIT that failed may or may not have reached the disk; it is reported
 * as failed all the same, which is safe: nothing was acknowledged. Batches
 * that would break the log's invariants (gaps, decreasing terms) are
 * refused with PZ_EINVAL before anything is written. */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pz.h"
#include "queue.h"
#include "snapshot.h" /* snapshot_crc64 */

#define STORE_APP_ID 0x50595a44 /* "PYZD" in the SQLite header */
#define STORE_FILE "raft.db"
/* Pages given back per vacuum step: VACUUM_PAGES_MIN << level, the
 * level sized by the time the last step took (step_resize), toward
 * STEP_NS. The step holds up the log writes behind it, and its
 * time per page is far from constant: SQLite looks each page up in the
 * freelist (a walk of the freelist's trunk pages, so a page costs more
 * the more pages are free) and moves a page in use to a free one lower
 * down (a WAL write). After a load of 1 MiB entries, with 50,000 pages
 * free, steps of 512 took 10 to 50 ms, and 100 to 240 ms while they moved
 * the live log; after a 1M-key load, 40 to 70 ms. */
#define VACUUM_PAGES_MIN 8
#define VACUUM_LEVELS 9             /* 8 to 2048 pages (8 MiB) */
#define VACUUM_LEVEL_START 3        /* 64 pages: the first step is short */
#define STEP_NS 2000000             /* 2 ms of vacuum, or of dropping rows,
                                       a step, at most about */
/* The payload a compaction step drops is the caller's max_bytes >>
 * (COMPACT_LEVELS - 1 - level), the level sized as a vacuum step's by the
 * time the last step took to find and delete its rows: a row's overflow
 * pages are freed one by one (and read where they are not in sequence),
 * so the time goes with the bytes, and at 4 MiB a step of 15 KB entries
 * held the writes for 5 to 20 ms beside a write load. */
#define COMPACT_LEVELS 6            /* max_bytes down to 1/32 of it */
#define COMPACT_LEVEL_START 2       /* an eighth of it: the first step of a
                                       process is short (at 4 MiB of 1 MiB
                                       entries it held the writes 50 to
                                       100 ms), and grows from there */
#define VACUUM_CKPT_PAGES 2048      /* checkpoint every 8 MiB given back */
#define VACUUM_KEEP 512   /* free pages kept for the log to grow into
                             (2 MiB of 4 KiB), at least */
#define VACUUM_KEEP_RATIO 4 /* ... and up to this many per page in use */
#define VACUUM_CONVERT_MAX (1024 * 1024 * 1024) /* convert at open below */
#define WAL_KEEP 33554432  /* WAL bytes kept after a checkpoint (32 MiB) */
/* A commit that leaves the WAL at least this many frames long is followed
 * by a PASSIVE checkpoint, as SQLite's auto-checkpoint does by default,
 * but run and timed by commit(), so that the checkpoint is not counted
 * as the COMMIT's fsync. The WAL is then written over from its start, in
 * place (docs/DESIGN.md, "Log writes", has what it costs). */
#define CKPT_FRAMES 1000

/* The checkpoints one transaction's thread ran (commit(), the vacuum
 * steps' own), added to the store's stats on the loop thread. */
struct ckpt {
    uint64_t n;        /* that succeeded */
    uint64_t ns;       /* their time */
    uint64_t tried_ns; /* the time of all, failed ones too */
    uint64_t failures; /* that failed: the WAL keeps the pages */
    const char *error; /* the last failure's (sqlite3_errstr) */
    int last;          /* the latest one: 0 none, 1 done, -1 failed */
};
/* Page cache of the connection, KiB (SQLite's default is 2000): a
 * compaction step (node_snapshot.c: 20,000 entries and 4 MiB of payload
 * at most, about 3 MiB of 110-byte entries) no longer spills dirty pages
 * into the WAL halfway (they were written twice), and the pages it
 * deletes, which entries wrote not long before, are still cached instead
 * of read back from the file. Memory grows to this only as pages are used. */
#define CACHE_KIB 16384
/* Deleted log rows are not overwritten with zeros page by page (Debian
 * builds SQLite with SECURE_DELETE on): that would write every dropped
 * byte again, through the WAL and then into the file, inside the
 * compaction step; for a log of 1 MiB entries, a 200 MiB transaction
 * that holds up every log write behind it for seconds. FAST still clears
 * deleted cells inside b-tree pages, where it costs no extra page write;
 * freed overflow pages keep their bytes until reused or given back to the
 * file system by the incremental vacuum. */
#define SECURE_DELETE "FAST"
/* The log's tables and segments ("Log segments" above). Eight tables of
 * 32768 entries hold a log of 229,376 entries or more (7 segments and a
 * part of two) before one holds two segments of it: more
 * than a default snapshot interval and the entries kept after it (65,536
 * and 10,240). Emptying a table of 32768 entries of 110 bytes (3.6 MB)
 * took 1.6 ms and wrote 6 WAL frames; deleting 3,400 of them by index,
 * 2.5 ms and 120 frames. */
#define LOG_SLOTS 8
#define LOG_SEGMENT 32768 /* entries a segment, in new files */
#define LOG_SEGMENT_MIN 4 /* what open accepts, and the hook */
#define LOG_SEGMENT_MAX (UINT64_C(1) << 30)
/* The most payload a step drops by emptying tables, or leaves for a
 * later one. Emptying a table reads each of its pages to free it, so the
 * time goes with the bytes: 8 MiB took 1.6 ms in entries of 250 bytes
 * and about 7 ms in entries of 1 to 3 KB (reading their sizes first
 * takes about as long). Not the row-by-row steps' adaptive bound: that
 * one starts at 512 KiB, below a default segment of small entries. */
#define LOG_CLEAR_BYTES (8 * 1024 * 1024)
#define STR_(x) #x
#define STR(x) STR_(x)

/* One write transaction: the input, then the outcome. */
struct batch {
    struct raft_hard_state hs;        /* to write if has_hs */
    bool has_hs;                      /* hs is part of the batch */
    const struct raft_entry *entries; /* borrowed until done */
    size_t n;                         /* number of entries */
    uint64_t bytes;                   /* payload bytes of entries */
    bool check_prev;                  /* read the term at first - 1 */
    bool reset;                       /* install: drop the whole log and
                                         move the snapshot point first */
    uint64_t reset_index, reset_term; /* the new snapshot point */
    uint64_t stored_last;             /* the last index stored when it
                                         runs (what the batches queued
                                         before it leave) */
    bool compact;                     /* drop the log up to compact_upto */
    uint64_t compact_from;            /* the snapshot point before it */
    uint64_t compact_upto;            /* (stored, so below last_index):
                                         where compact_plan ends it */
    uint64_t compact_goal;            /* the caller's upto: no vacuum
                                         before the step that reaches it */
    uint64_t compact_last;            /* the last index stored */
    uint64_t compact_rows;            /* the caller's max_rows */
    uint64_t compact_big;             /* in and out: a segment (number)
                                         too large to empty at once */
    uint64_t compact_bytes;           /* payload bytes at most (one
                                         entry at least) */
    unsigned compact_level;           /* in: that is max_bytes >>
                                         (COMPACT_LEVELS - 1 - it) */
    uint64_t compact_ns;              /* out: time to find and delete
                                         the rows */
    uint64_t compact_term;            /* read in the transaction */
    bool compact_left;                /* out: upto ends inside the oldest
                                         segment, which stays whole */
    uint64_t compact_cleared;         /* out: tables emptied whole */
    uint64_t compact_deleted;         /* out: rows deleted one by one */
    bool vacuum;                      /* then give free pages back */
    unsigned vacuum_level;            /* in: VACUUM_PAGES_MIN << it */
    uint64_t vacuum_ns;               /* out: time the vacuum took (0:
                                         none ran) */
    bool cut;                         /* out: the step only checkpointed */
    bool vacuum_full;                 /* out: the vacuum found no room
                                         (err; the batch succeeds) */
    bool counted;                     /* out: free_pages was counted */
    uint64_t free_pages;              /* free pages left after it, as
                                         count_free counts them */
    int rc;                           /* 0 or negative code */
    uint64_t commit_ns;               /* time inside COMMIT */
    struct ckpt ckpt;                 /* checkpoints after it (and in
                                         vacuum steps) */
    uint64_t total_ns;                /* BEGIN to COMMIT and the
                                         checkpoint after it */
    uint64_t queued_ns;               /* handed to the thread pool */
    uint64_t start_ns;                /* a worker started it */
    uint64_t done_ns;                 /* the worker finished it */
    char err[STORE_ERRMSG_SIZE];      /* message if rc != 0 */
    store_write_cb cb;                /* its completion */
    void *cb_arg;                     /* and argument */
    struct pz_queue q;                /* in the store's todo or done */
    struct batch *gnext;              /* merged behind it into its
                                         transaction (the drain) */
    bool merged;                      /* run in an earlier batch's
                                         transaction (its stats there) */
    uint64_t group_n;                 /* entries of its transaction */
    uint64_t group_bytes;             /* and their payload bytes */
};

/* The store's writer: a job on libuv's thread pool that runs the queued
 * batches back to back, in order, while there are any, and posts each
 * one's completion to the loop as soon as it is durable (async), so the
 * next batch starts on the disk at once rather than after a round trip
 * through the loop and the pool's queue. A drain that finds the queue
 * empty ends; the next store_write starts another. */
struct drain {
    uv_work_t work;      /* the job on the pool */
    uv_async_t async;    /* completions, to the loop */
    struct store *s;     /* NULL once the store is closed */
    struct drain *next;  /* the store's live drains */
};

/* The statements of one of the log's tables. */
struct log_slot {
    sqlite3_stmt *insert[4]; /* INSERT 8, 4, 2, 1 entries */
    sqlite3_stmt *del_from;  /* DELETE idx >= ?1 */
    sqlite3_stmt *del_upto;  /* DELETE idx <= ?1 */
    sqlite3_stmt *clear;     /* DELETE every row (SQLite frees
                                the table's pages whole) */
    sqlite3_stmt *term_at;   /* term of entry ?1 */
    sqlite3_stmt *bytes;     /* payload bytes of ?1 < idx <= ?2 */
    sqlite3_stmt *scan;      /* entries ?1 <= idx <= ?2, by index */
};

struct store {
    sqlite3 *db;                       /* the connection */
    char *path;                        /* <dir>/raft.db */
    char errmsg[STORE_ERRMSG_SIZE];    /* last failure */
    sqlite3_stmt *st_begin;            /* BEGIN IMMEDIATE */
    sqlite3_stmt *st_commit;           /* COMMIT */
    sqlite3_stmt *st_rollback;         /* ROLLBACK */
    struct log_slot slot[LOG_SLOTS];   /* the log's tables */
    unsigned seg_shift;                /* log2 of meta.log_segment */
    sqlite3_stmt *st_hs_put;           /* UPDATE hard_state */
    sqlite3_stmt *st_meta_put;         /* upsert a meta key */
    sqlite3_stmt *st_vacuum[VACUUM_LEVELS]; /* PRAGMA incremental_vacuum
                                          (VACUUM_PAGES_MIN << level) */
    sqlite3_stmt *st_freelist;         /* PRAGMA freelist_count */
    sqlite3_stmt *st_sizes;            /* payload bytes of ?1 < idx <= ?2,
                                          by index (every table) */
    bool incremental;                  /* auto_vacuum is INCREMENTAL */
    uint64_t free_pages;               /* free pages in the file (as of
                                          the last vacuum step) */
    unsigned vacuum_level;             /* of the next vacuum step */
    uint64_t ckpt_pages;               /* pages of the file at the last
                                          checkpoint of a vacuum step, or
                                          any size it has had since */
    unsigned compact_level;            /* of the next compaction step */
    uint64_t compact_left;             /* a compaction goal that ended
                                          inside the oldest segment: the
                                          entries up to it stay until a
                                          later goal covers the segment */
    uint64_t compact_big;              /* the segment (number) the last
                                          step found too large to empty
                                          whole (UINT64_MAX: none yet) */
    uint64_t step_budget_ns;           /* STEP_NS (tests set it) */
    bool test_vacuum_full;             /* test hook: vacuums find no room */
    bool test_ckpt_fail;               /* test hook: checkpoints fail */
    struct store_meta meta;            /* as stored */
    struct raft_hard_state hs;         /* as stored */
    uint64_t last_index;               /* last stored index (or snap) */
    uint64_t last_term;                /* its term (or snap term) */
    struct store_stats stats;          /* counters */
    int wal_frames;                    /* WAL frames after the last commit
                                          (the WAL hook; CKPT_FRAMES) */
    long fail_at;                      /* test hook: steps until failure */
    bool injected;                     /* last failing step was injected */
    bool failed;                       /* a write failed: refuse more */
    size_t jobs;                       /* batches queued and not yet
                                          completed (loop thread) */
    struct drain *drains;              /* drains not yet ended on the
                                          loop (the newest first) */
    uv_mutex_t mu;                     /* guards todo, done, draining,
                                          halted (worker and loop) */
    struct pz_queue todo;              /* queued, not started */
    struct pz_queue done;              /* run (or cancelled), completion
                                          not yet delivered */
    bool draining;                     /* a drain runs on the pool */
    bool halted;                       /* a batch failed: the worker
                                          cancels those behind it until
                                          every job is completed */
    /* What the queued batches leave (as stored when none is queued):
     * the next batch is checked against it. */
    struct raft_hard_state t_hs;
    uint64_t t_last_index, t_last_term;
    uint64_t t_snap_index, t_snap_term;
};

/* --- errors --------------------------------------------------------------- */

static void set_err(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (buf == NULL || len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static int map_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT:
    case SQLITE_SCHEMA:
        return PZ_ECORRUPT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return PZ_EBUSY;
    case SQLITE_NOMEM:
        return PZ_ENOMEM;
    case SQLITE_FULL:
        return PZ_ENOSPC;
    default:
        return PZ_EIO;
    }
}

/* "<path>: <what>: <SQLite's message> (SQLite error N)" into buf; returns
 * the mapped code. Reads the connection's message before anything resets
 * it. */
static int sql_err(struct store *s, char *buf, const char *what, int rc)
{
    if (s->injected) {
        s->injected = false;
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: %s: injected I/O error (store_fail_at test hook)",
                s->path, what);
        return PZ_EIO;
    }
    const char *msg = sqlite3_extended_errcode(s->db) == rc
                          ? sqlite3_errmsg(s->db)
                          : sqlite3_errstr(rc);
    const char *how = rc == SQLITE_IOERR_FSYNC    ? ", fsync failed"
                      : rc == SQLITE_IOERR_WRITE  ? ", write failed"
                      : rc == SQLITE_IOERR_SHORT_READ ? ", short read"
                      : rc == SQLITE_IOERR_READ   ? ", read failed"
                                                  : "";
    set_err(buf, STORE_ERRMSG_SIZE, "%s: %s: %s (SQLite error %d%s)", s->path,
            what, msg, rc, how);
    return map_sqlite(rc);
}

/* A batch's entries go in eight at a time, one statement for all of
 * them, the rest by four, two and one: a statement's step, reset and
 * halt cost about as much as the row it inserts. OR ROLLBACK: a failed
 * insert ends the whole transaction, as run_batch does with any failure
 * anyway; with the default (ABORT) SQLite would open a statement
 * savepoint for each multi-row INSERT and copy every page it first
 * touches into a statement journal, only to undo that one statement. */
#define INSERT_INTO /* table name: %s */                                       \
    "INSERT OR ROLLBACK INTO %s (idx, term, type, data, crc) VALUES "
#define INSERT_ROW1 "(?, ?, ?, ?, ?)"
#define INSERT_ROW2 INSERT_ROW1 "," INSERT_ROW1
#define INSERT_ROW4 INSERT_ROW2 "," INSERT_ROW2
#define INSERT_ROW8 INSERT_ROW4 "," INSERT_ROW4

/* The crc column of an entry (see the schema above). */
static uint64_t entry_crc(uint64_t index, uint64_t term, uint8_t type,
                          const void *data, size_t len)
{
    uint8_t h[17];
    pz_put_u64(h, index);
    pz_put_u64(h + 8, term);
    h[16] = type;
    uint64_t c = snapshot_crc64(0, h, sizeof h);
    return len > 0 ? snapshot_crc64(c, data, len) : c;
}

/* --- the log's tables ----------------------------------------------------- */

/* The names of the log's tables, by slot. */
static const char *const log_tables[LOG_SLOTS] = {
    "log", "log1", "log2", "log3", "log4", "log5", "log6", "log7"};

/* Into buf (LOG_SQL_MAX bytes): "SELECT cols FROM log WHERE cond UNION
 * ALL SELECT cols FROM log1 WHERE cond ... tail", the rows of every
 * table, which SQLite merges in index order when tail orders by idx (each
 * table read in the order of its primary key, no sort). */
#define LOG_SQL_MAX 2048
static void log_union(char *buf, const char *cols, const char *cond,
                      const char *tail)
{
    size_t n = 0;
    for (unsigned k = 0; k < LOG_SLOTS; k++) {
        n += (size_t)snprintf(buf + n, LOG_SQL_MAX - n,
                              "%sSELECT %s FROM %s%s%s", k ? " UNION ALL " : "",
                              cols, log_tables[k], cond ? " WHERE " : "",
                              cond ? cond : "");
        pz_assert(n < LOG_SQL_MAX);
    }
    n += (size_t)snprintf(buf + n, LOG_SQL_MAX - n, " %s", tail);
    pz_assert(n < LOG_SQL_MAX);
}

/* The table that holds entry index. */
static unsigned slot_of(const struct store *s, uint64_t index)
{
    return (unsigned)(index >> s->seg_shift) & (LOG_SLOTS - 1);
}

/* The last index of the segment that holds index. */
static uint64_t seg_end(const struct store *s, uint64_t index)
{
    return index | ((UINT64_C(1) << s->seg_shift) - 1);
}

/* How many of the indexes lo to hi table k holds (0 if lo > hi). */
static uint64_t slot_entries(const struct store *s, uint64_t lo, uint64_t hi,
                             unsigned k)
{
    if (lo > hi)
        return 0;
    uint64_t seg = UINT64_C(1) << s->seg_shift, period = seg * LOG_SLOTS;
    uint64_t at = seg * k; /* where table k's part of a period starts */
    /* of the indexes below x */
#define BELOW(x)                                                               \
    ((x) / period * seg +                                                      \
     PZ_MIN(seg, (x) % period > at ? (x) % period - at : 0))
    uint64_t n = BELOW(hi + 1) - BELOW(lo);
#undef BELOW
    return n;
}

/* The tables that hold the indexes lo to hi, a bit each (none if lo >
 * hi). */
static unsigned slots_of(const struct store *s, uint64_t lo, uint64_t hi)
{
    if (lo > hi)
        return 0;
    uint64_t a = lo >> s->seg_shift, b = hi >> s->seg_shift;
    if (b - a >= LOG_SLOTS - 1)
        return (1u << LOG_SLOTS) - 1;
    unsigned m = 0;
    for (uint64_t g = a; g <= b; g++)
        m |= 1u << (g & (LOG_SLOTS - 1));
    return m;
}

/* --- statements ----------------------------------------------------------- */

/* Every step of ours goes through here so tests can fail the nth one. */
static int step(struct store *s, sqlite3_stmt *st)
{
    if (s->fail_at > 0 && --s->fail_at == 0) {
        s->injected = true;
        return SQLITE_IOERR;
    }
    return sqlite3_step(st);
}

/* Runs a statement that returns no row; resets it. */
static int run(struct store *s, sqlite3_stmt *st, char *buf, const char *what)
{
    int rc = step(s, st);
    int ret = 0;
    if (rc != SQLITE_DONE)
        ret = sql_err(s, buf, what, rc == SQLITE_ROW ? SQLITE_MISUSE : rc);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

static void bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
    pz_assert(v <= (uint64_t)INT64_MAX);
    sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

/* Binds entry e to the five parameters after `base` of an INSERT into
 * log (idx, term, type, data, crc). */
static void bind_entry(sqlite3_stmt *st, int base, const struct raft_entry *e)
{
    bind_u64(st, base + 1, e->index);
    bind_u64(st, base + 2, e->term);
    sqlite3_bind_int(st, base + 3, e->type);
    if (e->len > 0)
        sqlite3_bind_blob64(st, base + 4, e->data, e->len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, base + 4);
    sqlite3_bind_int64(
        st, base + 5,
        (sqlite3_int64)entry_crc(e->index, e->term, e->type, e->data, e->len));
}

/* Rolls back if a transaction is open. Never counted by the fault hook:
 * it is the cleanup of a failure. */
static void rollback(struct store *s)
{
    if (!sqlite3_get_autocommit(s->db)) {
        sqlite3_step(s->st_rollback);
        sqlite3_reset(s->st_rollback);
    }
}

/* sqlite3_wal_hook: called after each commit with the WAL's length in
 * frames; replaces SQLite's auto-checkpoint, which commit() runs. */
static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct store *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* A checkpoint of the WAL in `mode`, counted in ck. One that fails (a
 * full disk, an I/O error) loses nothing: the WAL still holds every page
 * and the next one copies them again; meanwhile the WAL grows, and the
 * node warns (store_stats.checkpoint_failures). */
static void checkpoint(struct store *s, int mode, struct ckpt *ck)
{
    uint64_t t0 = uv_hrtime();
    int rc = s->test_ckpt_fail
                 ? SQLITE_IOERR
                 : sqlite3_wal_checkpoint_v2(s->db, NULL, mode, NULL, NULL);
    uint64_t ns = PZ_MAX(uv_hrtime() - t0, 1);
    ck->tried_ns += ns;
    if (rc == SQLITE_OK) {
        ck->n++;
        ck->ns += ns;
        ck->last = 1;
    } else {
        ck->failures++;
        ck->error = sqlite3_errstr(rc);
        ck->last = -1;
    }
}

/* Loop thread: ck into the store's stats. */
static void count_ckpt(struct store *s, const struct ckpt *ck)
{
    s->stats.checkpoints += ck->n;
    s->stats.checkpoint_ns += ck->ns;
    s->stats.checkpoint_failures += ck->failures;
    if (ck->error)
        s->stats.checkpoint_error = ck->error;
    if (ck->last != 0)
        s->stats.checkpoint_failing = ck->last < 0;
}

/* COMMIT, its time into *ns, and then, if the WAL has grown to
 * CKPT_FRAMES, a PASSIVE checkpoint counted in ck. The transaction is
 * durable once COMMIT returns, whatever the checkpoint does. */
static int commit(struct store *s, char *buf, uint64_t *ns, struct ckpt *ck)
{
    uint64_t t0 = uv_hrtime();
    s->wal_frames = 0;
    int rc = run(s, s->st_commit, buf, "COMMIT");
    if (ns)
        *ns = uv_hrtime() - t0;
    if (rc == 0 && s->wal_frames >= CKPT_FRAMES)
        checkpoint(s, SQLITE_CHECKPOINT_PASSIVE, ck);
    return rc;
}

/* commit() for the loop thread's own transactions (no job in flight). */
static int commit_sync(struct store *s, char *buf)
{
    struct ckpt ck = {0};
    int rc = commit(s, buf, NULL, &ck);
    count_ckpt(s, &ck);
    return rc;
}

/* Term of the stored entry at index into *term. PZ_ECORRUPT if missing. */
static int term_at(struct store *s, uint64_t index, uint64_t *term,
                   char *buf)
{
    sqlite3_stmt *st = s->slot[slot_of(s, index)].term_at;
    bind_u64(st, 1, index);
    int rc = step(s, st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        sqlite3_int64 t = sqlite3_column_int64(st, 0);
        if (t < 0) {
            set_err(buf, STORE_ERRMSG_SIZE,
                    "%s: entry %" PRIu64 " has a negative term", s->path,
                    index);
            ret = PZ_ECORRUPT;
        }
        *term = (uint64_t)t;
    } else if (rc == SQLITE_DONE) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: entry %" PRIu64 " is missing from the log", s->path,
                index);
        ret = PZ_ECORRUPT;
    } else {
        ret = sql_err(s, buf, "read term", rc);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

static int meta_put(struct store *s, const char *key, const char *value,
                    char *buf)
{
    sqlite3_bind_text(s->st_meta_put, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->st_meta_put, 2, value, -1, SQLITE_STATIC);
    return run(s, s->st_meta_put, buf, "write meta");
}

static int meta_put_u64(struct store *s, const char *key, uint64_t v,
                        char *buf)
{
    char tmp[24];
    snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    return meta_put(s, key, tmp, buf);
}

/* --- the write transaction ------------------------------------------------ */

/* Pages of the file (free ones too), 0 if SQLite cannot tell. */
static uint64_t count_pages(struct store *s)
{
    sqlite3_stmt *st = NULL;
    sqlite3_int64 n = 0;
    if (sqlite3_prepare_v2(s->db, "PRAGMA page_count", -1, &st, NULL) ==
            SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n > 0 ? (uint64_t)n : 0;
}

/* Count the free pages to give back into b->free_pages, plus VACUUM_KEEP:
 * above VACUUM_KEEP, a vacuum step has work. Kept are VACUUM_KEEP free
 * pages, or VACUUM_KEEP_RATIO per page in use if more: the log that
 * stays behind a snapshot (raft-trailing-bytes, 64 MiB by default) is
 * about a quarter of what the next snapshot frees (raft-snapshot-bytes,
 * 256 MiB, later on), and a busy node's log grows back into all of it
 * before then. Giving those pages back meant moving the whole live log,
 * which sits at the end of the file, page by page through the WAL after
 * every snapshot: with 1 MiB entries, seconds of vacuum steps holding up
 * the log writes. The file is thus at most about five times the log it
 * holds, however large its peak was. */
static int count_free(struct store *s, struct batch *b)
{
    int rc = step(s, s->st_freelist);
    sqlite3_int64 n = rc == SQLITE_ROW ? sqlite3_column_int64(s->st_freelist, 0)
                                       : 0;
    sqlite3_reset(s->st_freelist);
    if (rc != SQLITE_ROW)
        return sql_err(s, b->err, "count free pages", rc);
    uint64_t free_pages = n > 0 ? (uint64_t)n : 0;
    uint64_t pages = count_pages(s);
    uint64_t used = pages > free_pages ? pages - free_pages : 0;
    uint64_t keep = PZ_MAX((uint64_t)VACUUM_KEEP, VACUUM_KEEP_RATIO * used);
    b->free_pages = free_pages > keep ? free_pages - keep + VACUUM_KEEP
                                      : PZ_MIN(free_pages, VACUUM_KEEP);
    b->counted = true;
    return 0;
}

/* Give free pages back to the file system, then count those left: one
 * short transaction of its own, on the worker, after the compaction
 * step that dropped the last rows or alone. The free pages count_free
 * keeps stay: a log compacted after every snapshot frees about as many
 * pages as the next entries take, and giving them back only to grow the
 * file again would cost a vacuum, a checkpoint and a WAL reset per
 * snapshot, each holding up the log writes behind it.
 *
 * A step gives back VACUUM_PAGES_MIN << b->vacuum_level pages, and
 * b->vacuum_ns says how long that took (step_resize sizes the next).
 * The file shrinks when the WAL is copied back (a checkpoint cuts it to
 * the pages in use), and the WAL only when it is reset: every
 * VACUUM_CKPT_PAGES given back, a step only checkpoints (b->cut), so
 * that the space comes back as the steps go and the cut is short (cutting
 * 260 MB at once held the last step for 200 ms); after the last step,
 * the WAL is reset too (this connection is the only one: nothing
 * waits). */
static int vacuum_step(struct store *s, struct batch *b)
{
    int rc = count_free(s, b);
    if (rc || b->free_pages <= VACUUM_KEEP)
        return rc;
    uint64_t pages = count_pages(s);
    if (s->ckpt_pages > pages + VACUUM_CKPT_PAGES) {
        checkpoint(s, SQLITE_CHECKPOINT_PASSIVE, &b->ckpt);
        s->ckpt_pages = pages;
        b->cut = true;
        return 0;
    }
    s->ckpt_pages = PZ_MAX(s->ckpt_pages, pages); /* the log grew */
    /* No more than the free pages not kept (the last step may give back
     * up to VACUUM_PAGES_MIN - 1 of those). Timed alone, in a transaction
     * of its own: the COMMIT's fsync costs the same whatever the step's
     * size. */
    while (b->vacuum_level > 0 &&
           (uint64_t)VACUUM_PAGES_MIN << b->vacuum_level >
               b->free_pages - VACUUM_KEEP)
        b->vacuum_level--;
    sqlite3_stmt *st = s->st_vacuum[b->vacuum_level];
    if ((rc = run(s, s->st_begin, b->err, "BEGIN")))
        return rc;
    uint64_t t0 = uv_hrtime();
    if (s->test_vacuum_full)
        rc = SQLITE_FULL;
    else
        while ((rc = step(s, st)) == SQLITE_ROW)
            ;
    sqlite3_reset(st);
    b->vacuum_ns = PZ_MAX(uv_hrtime() - t0, 1);
    if (rc != SQLITE_DONE) {
        rc = sql_err(s, b->err, "incremental vacuum", rc);
        rollback(s);
        return rc;
    }
    if ((rc = commit(s, b->err, NULL, &b->ckpt))) {
        rollback(s);
        return rc;
    }
    if ((rc = count_free(s, b)))
        return rc;
    if (b->free_pages <= VACUUM_KEEP) {
        checkpoint(s, SQLITE_CHECKPOINT_TRUNCATE, &b->ckpt);
        s->ckpt_pages = count_pages(s);
    }
    return 0;
}

/* Lower b->compact_upto so that the entries a compaction step drops
 * carry at most b->compact_bytes of payload (the first one whatever its
 * size): freeing a row's overflow pages reads each of them, so a step's
 * time goes with its bytes, and a step of large entries held up the log
 * writes for a hundred milliseconds where one of small entries, as many
 * rows, took a few. */
static int compact_fit(struct store *s, struct batch *b)
{
    sqlite3_stmt *st = s->st_sizes;
    bind_u64(st, 1, b->compact_from);
    bind_u64(st, 2, b->compact_upto);
    uint64_t bytes = 0;
    int rc;
    while ((rc = step(s, st)) == SQLITE_ROW) {
        sqlite3_int64 idx = sqlite3_column_int64(st, 0);
        sqlite3_int64 len = sqlite3_column_int64(st, 1);
        bytes += len > 0 ? (uint64_t)len : 0;
        /* idx > compact_from (the query's bound): not the first row */
        if (bytes > b->compact_bytes && (uint64_t)idx > b->compact_from + 1) {
            b->compact_upto = (uint64_t)idx - 1;
            break;
        }
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return sql_err(s, b->err, "read entry sizes", rc);
    return 0;
}

/* The payload bytes of the stored entries from + 1 to upto, which one
 * segment holds, into *bytes; once past max, no more are read (*bytes >
 * max says so). */
static int segment_bytes(struct store *s, uint64_t from, uint64_t upto,
                         uint64_t max, uint64_t *bytes, char *err)
{
    sqlite3_stmt *st = s->slot[slot_of(s, from + 1)].bytes;
    bind_u64(st, 1, from);
    bind_u64(st, 2, upto);
    uint64_t sum = 0;
    int rc = SQLITE_DONE;
    while (sum <= max && (rc = step(s, st)) == SQLITE_ROW) {
        sqlite3_int64 len = sqlite3_column_int64(st, 0);
        sum += len > 0 ? (uint64_t)len : 0;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    *bytes = sum;
    if (sum <= max && rc != SQLITE_DONE)
        return sql_err(s, err, "read entry sizes", rc);
    return 0;
}

/* Where a compaction step ends ("Log segments" above): past the oldest
 * segments whose tables it can empty whole (the goal covers the
 * segment's last entry, no later segment shares its table, and they hold
 * at most LOG_CLEAR_BYTES together), whatever the row bound; nowhere if
 * the goal ends inside the oldest segment and that one could be emptied
 * later (compact_left); otherwise row by row, bounded by rows and bytes
 * as before segments. At most LOG_SLOTS segments: no more are free of a
 * later one. */
static int compact_plan(struct store *s, struct batch *b)
{
    uint64_t from = b->compact_from, goal = b->compact_goal;
    uint64_t upto = from, total = 0;
    while (upto < goal) {
        uint64_t end = seg_end(s, upto + 1);
        /* the first index after the segment that shares its table */
        uint64_t next = end + 1 + ((uint64_t)(LOG_SLOTS - 1) << s->seg_shift);
        uint64_t bytes = 0;
        if (b->compact_last >= next)
            break;
        if ((upto + 1) >> s->seg_shift == b->compact_big)
            break; /* found too large by an earlier step */
        int rc = segment_bytes(s, upto, PZ_MIN(end, goal),
                               LOG_CLEAR_BYTES - total, &bytes, b->err);
        if (rc)
            return rc;
        if (bytes > LOG_CLEAR_BYTES - total) {
            if (upto == from)
                b->compact_big = (upto + 1) >> s->seg_shift;
            break;
        }
        if (end > goal) {
            b->compact_left = upto == from;
            break;
        }
        total += bytes;
        upto = end;
    }
    if (upto > from || b->compact_left) {
        b->compact_upto = upto;
        return 0;
    }
    b->compact_upto = from + PZ_MIN(b->compact_rows, goal - from);
    return compact_fit(s, b);
}

/* Drops the stored entries from + 1 to upto (last: the last one stored):
 * a table that holds none of the entries after upto is emptied whole,
 * one that does loses its rows up to upto one by one. Counted in
 * *cleared and *deleted. */
static int drop_upto(struct store *s, uint64_t from, uint64_t upto,
                     uint64_t last, uint64_t *cleared, uint64_t *deleted,
                     char *err)
{
    unsigned drop = slots_of(s, from + 1, upto);
    unsigned keep = slots_of(s, upto + 1, last);
    for (unsigned k = 0; k < LOG_SLOTS; k++) {
        if (!(drop & (1u << k)))
            continue;
        struct log_slot *ls = &s->slot[k];
        int rc;
        if (keep & (1u << k)) {
            bind_u64(ls->del_upto, 1, upto);
            rc = run(s, ls->del_upto, err, "delete compacted entries");
            if (rc == 0)
                *deleted += (uint64_t)sqlite3_changes64(s->db);
        } else {
            rc = run(s, ls->clear, err, "drop a compacted segment");
            *cleared += rc == 0;
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* Inserts n entries of contiguous indexes into their tables, the run in
 * each segment eight at a time, the rest by four, two and one. */
static int insert_entries(struct store *s, const struct raft_entry *e, size_t n,
                          char *err)
{
    size_t i = 0;
    while (i < n) {
        struct log_slot *ls = &s->slot[slot_of(s, e[i].index)];
        size_t end =
            i + (size_t)PZ_MIN((uint64_t)(n - i),
                               seg_end(s, e[i].index) - e[i].index + 1);
        for (int k = 0; k < 4; k++) {
            size_t rows = (size_t)8 >> k; /* 8, 4, 2, 1 */
            sqlite3_stmt *st = ls->insert[k];
            for (; end - i >= rows; i += rows) {
                for (size_t j = 0; j < rows; j++)
                    bind_entry(st, 5 * (int)j, &e[i + j]);
                int rc = run(s, st, err, "insert entries");
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

/* The statements of one batch, inside the transaction run_batch opened
 * (an error: its message in b->err; the caller rolls back). */
static int batch_body(struct store *s, struct batch *b)
{
    int rc = 0;
    if (b->compact) {
        uint64_t t0 = uv_hrtime();
        rc = compact_plan(s, b);
        if (rc == 0 && !b->compact_left)
            rc = term_at(s, b->compact_upto, &b->compact_term, b->err);
        if (rc == 0 && !b->compact_left)
            rc = drop_upto(s, b->compact_from, b->compact_upto, b->compact_last,
                           &b->compact_cleared, &b->compact_deleted, b->err);
        /* The byte bound follows the steps that delete rows one by one
         * (a table emptied whole costs little per row). */
        if (b->compact_deleted > 0)
            b->compact_ns = PZ_MAX(uv_hrtime() - t0, 1);
        if (rc == 0 && !b->compact_left)
            rc = meta_put_u64(s, "snapshot_index", b->compact_upto, b->err);
        if (rc == 0 && !b->compact_left)
            rc = meta_put_u64(s, "snapshot_term", b->compact_term, b->err);
        if (rc)
            return rc;
    }
    if (b->reset) {
        /* An installed snapshot replaces the whole log, atomically with
         * the entries and hard state that follow it. */
        for (unsigned k = 0; k < LOG_SLOTS && rc == 0; k++)
            rc =
                run(s, s->slot[k].clear, b->err, "drop the log for a snapshot");
        if (rc == 0)
            rc = meta_put_u64(s, "snapshot_index", b->reset_index, b->err);
        if (rc == 0)
            rc = meta_put_u64(s, "snapshot_term", b->reset_term, b->err);
        if (rc)
            return rc;
    }
    if (b->n > 0) {
        uint64_t first = b->entries[0].index;
        if (b->check_prev) {
            uint64_t prev = 0;
            rc = term_at(s, first - 1, &prev, b->err);
            if (rc)
                return rc;
            if (prev > b->entries[0].term) {
                set_err(b->err, STORE_ERRMSG_SIZE,
                        "%s: batch term %" PRIu64 " at index %" PRIu64
                        " is below the stored term %" PRIu64 " before it",
                        s->path, b->entries[0].term, first, prev);
                return PZ_EINVAL;
            }
        }
        /* Entries from first on are written over (no row lies beyond
         * stored_last). */
        unsigned m = slots_of(s, first, b->stored_last);
        for (unsigned k = 0; k < LOG_SLOTS; k++) {
            if (!(m & (1u << k)))
                continue;
            bind_u64(s->slot[k].del_from, 1, first);
            rc = run(s, s->slot[k].del_from, b->err,
                     "delete conflicting entries");
            if (rc)
                return rc;
        }
        rc = insert_entries(s, b->entries, b->n, b->err);
        if (rc)
            return rc;
    }
    if (b->has_hs) {
        bind_u64(s->st_hs_put, 1, b->hs.term);
        /* A vote is a node id: any 64-bit value, kept as its bit
         * pattern in SQLite's signed integer. */
        sqlite3_bind_int64(s->st_hs_put, 2, (sqlite3_int64)b->hs.vote);
        bind_u64(s->st_hs_put, 3, b->hs.commit);
        rc = run(s, s->st_hs_put, b->err, "write hard state");
        if (rc)
            return rc;
        if (sqlite3_changes(s->db) != 1) {
            set_err(b->err, STORE_ERRMSG_SIZE,
                    "%s: hard state row is missing", s->path);
            return PZ_ECORRUPT;
        }
    }
    return 0;
}

/* A vacuum step; one that finds no room for its pages in the WAL (a full
 * disk) rolled back alone and is not an error of the batch: the free pages
 * stay in raft.db, where new entries reuse them (finish_batch). */
static int vacuum_or_full(struct store *s, struct batch *b)
{
    int rc = vacuum_step(s, b);
    if (rc == PZ_ENOSPC) {
        b->vacuum_full = true;
        return 0;
    }
    return rc;
}

/* Runs on the worker thread (the drain) or the caller's (sync). Uses
 * only the connection and statements, which nothing else touches while
 * jobs are queued, and the batches: b and those merged behind it
 * (b->gnext), all in ONE transaction, so one COMMIT (one fsync) makes
 * them durable together. The outcome is b's (rc, err, timings). */
static int run_batch(struct store *s, struct batch *b)
{
    if (b->vacuum && !b->compact)
        return vacuum_or_full(s, b);
    bool empty = true;
    for (struct batch *g = b; g; g = g->gnext)
        empty &= g->n == 0 && !g->has_hs && !g->reset && !g->compact;
    if (empty)
        return 0;
    uint64_t t0 = uv_hrtime();
    int rc = run(s, s->st_begin, b->err, "BEGIN");
    if (rc)
        goto err_in_txn;
    for (struct batch *g = b; g; g = g->gnext) {
        rc = batch_body(s, g);
        if (rc) {
            if (g != b)
                memcpy(b->err, g->err, sizeof b->err);
            goto err_in_txn;
        }
    }
    rc = commit(s, b->err, &b->commit_ns, &b->ckpt);
    if (rc)
        goto err_in_txn;
    b->total_ns = uv_hrtime() - t0;
    /* Not while rows remain to be dropped: the vacuum moves the pages at
     * the end of the file, the newest entries', down through the WAL,
     * and the next steps drop most of them. After a snapshot that left
     * 16 MiB of a 250 MiB log of 1 MiB entries, the steps held the store
     * for 1.2 s a node interleaved, 1.05 s deferred (one run each). */
    /* The compaction is committed whatever the vacuum does. */
    return b->vacuum && (b->compact_upto >= b->compact_goal || b->compact_left)
               ? vacuum_or_full(s, b)
               : 0;

err_in_txn:
    rollback(s);
    return rc;
}

/* The level of the next step (vacuum or compaction, of levels) after
 * one at level took ns: one down (half the size) if it took longer than
 * the budget, one up if it took less than half of it, so that a step
 * does as much as fits in the budget as the cost per page changes (with
 * the freelist's size, the pages moved, the rows' sizes). */
static unsigned step_resize(const struct store *s, unsigned level,
                            unsigned levels, uint64_t ns)
{
    if (ns > s->step_budget_ns && level > 0)
        return level - 1;
    if (ns < s->step_budget_ns / 2 && level + 1 < levels)
        return level + 1;
    return level;
}

/* Loop thread: the batch is over; update the in-memory copy or fail. */
static void finish_batch(struct store *s, struct batch *b)
{
    count_ckpt(s, &b->ckpt);
    if ((b->compact || b->vacuum) && b->queued_ns) {
        /* A step, rolled back or not, held the writer that long. */
        s->stats.steps++;
        s->stats.last_step_ns = b->done_ns - b->start_ns;
    }
    if (b->rc == PZ_ENOSPC) {
        /* SQLite rolled the transaction back whole (run_batch's
         * rollback): nothing of it is stored and the file is as it was,
         * so the same batch may be written again once there is room. */
        s->stats.nospace++;
        memcpy(s->errmsg, b->err, sizeof s->errmsg);
        return;
    }
    if (b->rc != 0) {
        s->failed = true;
        s->stats.failures++;
        memcpy(s->errmsg, b->err, sizeof s->errmsg);
        return;
    }
    if (b->compact_ns)
        s->compact_level =
            step_resize(s, b->compact_level, COMPACT_LEVELS, b->compact_ns);
    if (b->vacuum_full) {
        /* No more steps until the next compaction counts the free pages
         * again (store_compact_step), from the smallest: retried at once,
         * the same step would find no room again, and the caller would
         * take each failure for a full disk. */
        s->stats.vacuum_nospace++;
        memcpy(s->errmsg, b->err, sizeof s->errmsg);
        s->free_pages = 0;
        s->vacuum_level = 0;
        if (!b->compact)
            return;
    } else if (b->vacuum) {
        if (b->vacuum_ns)
            s->vacuum_level =
                step_resize(s, b->vacuum_level, VACUUM_LEVELS, b->vacuum_ns);
        if (!b->compact) {
            /* A step that gave nothing back would repeat forever. */
            s->free_pages = (b->cut || b->free_pages < s->free_pages) &&
                                    b->free_pages > VACUUM_KEEP
                                ? b->free_pages
                                : 0;
            return;
        }
        if (b->counted)
            s->free_pages = b->free_pages;
    }
    if (b->n == 0 && !b->has_hs && !b->reset && !b->compact)
        return;
    if (b->compact) {
        /* not a log write: not counted as a batch */
        s->stats.segments_dropped += b->compact_cleared;
        s->stats.rows_deleted += b->compact_deleted;
        s->compact_big = b->compact_big;
        if (b->compact_left) {
            s->compact_left = b->compact_goal;
            return;
        }
        s->meta.snap_index = b->compact_upto;
        s->meta.snap_term = b->compact_term;
        return;
    }
    if (b->reset) {
        /* a new log: nothing left from the old one's compaction */
        s->compact_left = 0;
        s->compact_big = UINT64_MAX;
        s->meta.snap_index = b->reset_index;
        s->meta.snap_term = b->reset_term;
        s->last_index = b->reset_index;
        s->last_term = b->reset_term;
    }
    if (b->has_hs)
        s->hs = b->hs;
    if (b->n > 0) {
        s->last_index = b->entries[b->n - 1].index;
        s->last_term = b->entries[b->n - 1].term;
    }
    struct store_stats *st = &s->stats;
    st->entries += b->n;
    st->bytes += b->bytes;
    st->hs_writes += b->has_hs;
    if (b->merged)
        return; /* its transaction is counted with the batch before it */
    uint64_t n = b->queued_ns ? b->group_n : b->n;
    st->batches++;
    st->last_batch_entries = n;
    st->last_batch_bytes = b->queued_ns ? b->group_bytes : b->bytes;
    st->max_batch_entries = PZ_MAX(st->max_batch_entries, n);
    st->commit_ns += b->commit_ns;
    st->last_commit_ns = b->commit_ns;
    st->last_checkpoint_ns = b->ckpt.tried_ns;
    st->write_ns += b->total_ns;
    if (b->queued_ns) { /* on the thread pool */
        st->last_queue_ns = b->start_ns - b->queued_ns;
        st->last_handback_ns = uv_hrtime() - b->done_ns;
    } else { /* store_write_sync: no hand-off at all */
        st->last_queue_ns = 0;
        st->last_handback_ns = 0;
        st->sync_batches++;
    }
}

/* Loop thread: checks a batch against what is stored, and what the batches
 * queued before it will leave, and fills b. */
static int prepare_batch(struct store *s, struct batch *b,
                         const struct raft_hard_state *hs,
                         const struct raft_entry *entries, size_t n)
{
    memset(b, 0, sizeof *b);
    b->stored_last = s->t_last_index;
    if (s->failed) {
        char prev[STORE_ERRMSG_SIZE];
        memcpy(prev, s->errmsg, sizeof prev);
        set_err(s->errmsg, sizeof s->errmsg,
                "refusing to write after an earlier failure: %s", prev);
        return PZ_EIO;
    }
    uint64_t hs_term = hs ? hs->term : s->t_hs.term;
    if (hs) {
        if (hs->term > INT64_MAX || hs->commit > INT64_MAX) {
            set_err(s->errmsg, sizeof s->errmsg,
                    "%s: hard state value out of range", s->path);
            return PZ_EINVAL;
        }
        if (hs->term < s->t_hs.term) {
            set_err(s->errmsg, sizeof s->errmsg,
                    "%s: hard state term would go back from %" PRIu64
                    " to %" PRIu64,
                    s->path, s->t_hs.term, hs->term);
            return PZ_EINVAL;
        }
        /* Figure 3.1: one vote per term. A vote that changes (or is
         * cleared) within a term would allow a second vote in it. */
        if (hs->term == s->t_hs.term && s->t_hs.vote != 0 &&
            hs->vote != s->t_hs.vote) {
            set_err(s->errmsg, sizeof s->errmsg,
                    "%s: vote in term %" PRIu64 " would change from %" PRIu64
                    " to %" PRIu64,
                    s->path, hs->term, s->t_hs.vote, hs->vote);
            return PZ_EINVAL;
        }
        b->hs = *hs;
        b->has_hs = true;
    }
    if (n == 0)
        return 0;
    pz_assert(entries != NULL);
    uint64_t first = entries[0].index;
    uint64_t prev_term = 0;
    if (first <= s->t_snap_index || first > s->t_last_index + 1) {
        set_err(s->errmsg, sizeof s->errmsg,
                "%s: batch starts at index %" PRIu64
                ", outside the writable range [%" PRIu64 ", %" PRIu64 "]",
                s->path, first, s->t_snap_index + 1, s->t_last_index + 1);
        return PZ_EINVAL;
    }
    if (first == s->t_last_index + 1)
        prev_term = s->t_last_term;
    else if (first == s->t_snap_index + 1)
        prev_term = s->t_snap_term;
    else
        b->check_prev = true;
    for (size_t i = 0; i < n; i++) {
        const struct raft_entry *e = &entries[i];
        const char *bad = NULL;
        if (e->index != first + i)
            bad = "indexes not contiguous";
        else if (e->index > INT64_MAX || e->term > INT64_MAX)
            bad = "index or term out of range";
        else if (e->term < prev_term)
            bad = "terms decrease";
        else if (e->term > hs_term)
            bad = "term above the hard state's term";
        else if (e->len > 0 && e->data == NULL)
            bad = "payload missing";
        if (bad) {
            set_err(s->errmsg, sizeof s->errmsg,
                    "%s: bad batch at entry %zu (index %" PRIu64
                    ", term %" PRIu64 "): %s",
                    s->path, i, e->index, e->term, bad);
            return PZ_EINVAL;
        }
        prev_term = e->term;
        b->bytes += e->len;
    }
    b->entries = entries;
    b->n = n;
    return 0;
}

/* The queued batches' outcome is what is stored: the next is checked
 * against that (loop thread, with no job queued). */
static void tail_sync(struct store *s)
{
    s->t_hs = s->hs;
    s->t_last_index = s->last_index;
    s->t_last_term = s->last_term;
    s->t_snap_index = s->meta.snap_index;
    s->t_snap_term = s->meta.snap_term;
}

/* b, prepared, is queued: what it leaves once written. */
static void tail_note(struct store *s, const struct batch *b)
{
    if (b->reset) {
        s->t_snap_index = s->t_last_index = b->reset_index;
        s->t_snap_term = s->t_last_term = b->reset_term;
    }
    if (b->has_hs)
        s->t_hs = b->hs;
    if (b->n > 0) {
        s->t_last_index = b->entries[b->n - 1].index;
        s->t_last_term = b->entries[b->n - 1].term;
    }
}

static struct batch *bq_first(const struct pz_queue *l)
{
    return pz_queue_empty(l) ? NULL
                             : container_of(pz_queue_head(l), struct batch, q);
}

static struct batch *bq_pop(struct pz_queue *l)
{
    struct batch *b = bq_first(l);
    if (b)
        pz_queue_remove(&b->q);
    return b;
}

/* A log write that may share a transaction with its neighbours (not an
 * install, a compaction or a vacuum step). */
static bool mergeable(const struct batch *b)
{
    return !b->reset && !b->compact && !b->vacuum;
}

#define MERGE_MAX 64 /* batches in one transaction at most */

/* Worker thread, with mu held: b did not run (a batch before it failed). */
static void cancel_locked(struct store *s, struct batch *b)
{
    b->rc = PZ_ECANCELED;
    set_err(b->err, sizeof b->err,
            "%s: write not run: an earlier write failed", s->path);
    pz_queue_push(&s->done, &b->q);
}

/* Worker thread: the batches queued, back to back, in order. Each one's
 * completion goes to the loop as soon as it is over when another follows
 * (the async is sent under mu: the loop closes it only after the drain
 * ended), else with the drain's end. A batch that
 * fails halts the queue: those behind it, and any queued before the loop
 * has seen every completion, are cancelled without running (they would
 * build on what was not stored). */
static void drain_work(uv_work_t *req)
{
    struct drain *d = req->data;
    struct store *s = d->s;
    uv_mutex_lock(&s->mu);
    for (;;) {
        struct batch *b = bq_pop(&s->todo);
        if (b == NULL)
            break;
        if (s->halted) {
            cancel_locked(s, b);
        } else {
            /* The log writes queued behind it meanwhile go in the same
             * transaction: one COMMIT for all (group commit), as they
             * would have been one batch had the loop waited for this
             * write before building them. */
            b->gnext = NULL;
            b->group_n = b->n;
            b->group_bytes = b->bytes;
            struct batch *last = b;
            for (int k = 1; k < MERGE_MAX && mergeable(b) &&
                            bq_first(&s->todo) && mergeable(bq_first(&s->todo));
                 k++) {
                struct batch *g = bq_pop(&s->todo);
                g->merged = true;
                g->gnext = NULL;
                last->gnext = g;
                last = g;
                b->group_n += g->n;
                b->group_bytes += g->bytes;
            }
            uv_mutex_unlock(&s->mu);
            b->start_ns = uv_hrtime();
            b->rc = run_batch(s, b);
            b->done_ns = uv_hrtime();
            uv_mutex_lock(&s->mu);
            for (struct batch *g = b, *nx; g; g = nx) {
                nx = g->gnext;
                if (g != b) {
                    /* Durable with b, or rolled back with it. */
                    g->rc = b->rc ? PZ_ECANCELED : 0;
                    if (b->rc)
                        set_err(g->err, sizeof g->err,
                                "%s: write rolled back with the batch "
                                "before it",
                                s->path);
                }
                pz_queue_push(&s->done, &g->q);
            }
            if (b->rc != 0)
                s->halted = true;
        }
        /* More to write: hand this one's completion to the loop now.
         * Nothing more: the drain ends, and its after-work (the pool's
         * own hand-back, one wake-up of the loop as for a lone write)
         * delivers it. */
        if (!pz_queue_empty(&s->todo))
            uv_async_send(&d->async);
    }
    s->draining = false;
    uv_mutex_unlock(&s->mu);
}

/* Loop thread: hand the completed batches to their callbacks, in order. */
static void deliver(struct store *s)
{
    uv_mutex_lock(&s->mu);
    struct pz_queue l;
    pz_queue_init(&l);
    struct batch *b;
    while ((b = bq_pop(&s->done)) != NULL)
        pz_queue_push(&l, &b->q);
    uv_mutex_unlock(&s->mu);
    while ((b = bq_pop(&l)) != NULL) {
        if (b->rc != PZ_ECANCELED)
            finish_batch(s, b);
        s->jobs--;
        if (s->jobs == 0) {
            /* Nothing queued: the next batch builds on what is stored
             * (after a failure too, whatever the halted ones said). */
            tail_sync(s);
            uv_mutex_lock(&s->mu);
            s->halted = false;
            uv_mutex_unlock(&s->mu);
        }
        store_write_cb cb = b->cb;
        void *arg = b->cb_arg;
        int rc = b->rc;
        if (rc == PZ_ECANCELED)
            memcpy(s->errmsg, b->err, sizeof s->errmsg);
        pz_free(b);
        cb(s, rc, rc ? s->errmsg : NULL, arg);
    }
}

static void on_drain_async(uv_async_t *a)
{
    struct drain *d = a->data;
    if (d->s)
        deliver(d->s);
}

static void on_drain_closed(uv_handle_t *h)
{
    pz_free(h->data);
}

static void drain_after(uv_work_t *req, int status)
{
    struct drain *d = req->data;
    struct store *s = d->s;
    if (s) {
        for (struct drain **p = &s->drains; *p; p = &(*p)->next)
            if (*p == d) {
                *p = d->next;
                break;
            }
        if (status < 0) {
            /* Cancelled before it ran (only at loop teardown): what it
             * would have written is not stored. */
            uv_mutex_lock(&s->mu);
            struct batch *b;
            while ((b = bq_pop(&s->todo)) != NULL)
                cancel_locked(s, b);
            s->halted = true;
            s->draining = false;
            uv_mutex_unlock(&s->mu);
        }
    }
    uv_close((uv_handle_t *)&d->async, on_drain_closed);
    if (s)
        deliver(s);
}

/* Queue the prepared batch b (ownership passes) behind the others, and
 * start a drain if none runs. */
static int queue_batch(struct store *s, uv_loop_t *loop, struct batch *b,
                       store_write_cb cb, void *arg)
{
    b->cb = cb;
    b->cb_arg = arg;
    b->queued_ns = uv_hrtime();
    struct drain *d = NULL;
    uv_mutex_lock(&s->mu);
    bool start = !s->draining;
    if (start) {
        d = pz_calloc(1, sizeof *d);
        d->s = s;
        d->work.data = d;
        d->async.data = d;
        int rc = uv_async_init(loop, &d->async, on_drain_async);
        if (rc == 0)
            rc = uv_queue_work(loop, &d->work, drain_work, drain_after);
        if (rc < 0) {
            uv_mutex_unlock(&s->mu);
            set_err(s->errmsg, sizeof s->errmsg, "%s: uv_queue_work: %s",
                    s->path, uv_strerror(rc));
            if (uv_is_active((uv_handle_t *)&d->async))
                uv_close((uv_handle_t *)&d->async, on_drain_closed);
            else
                pz_free(d);
            pz_free(b);
            return rc;
        }
        s->draining = true;
    }
    pz_queue_push(&s->todo, &b->q);
    uv_mutex_unlock(&s->mu);
    if (d) {
        d->next = s->drains;
        s->drains = d;
    }
    tail_note(s, b);
    s->jobs++;
    return 0;
}

int store_write(struct store *s, uv_loop_t *loop,
                const struct raft_hard_state *hs,
                const struct raft_entry *entries, size_t n,
                store_write_cb cb, void *arg)
{
    pz_assert(cb != NULL);
    struct batch *b = pz_malloc(sizeof *b);
    int rc = prepare_batch(s, b, hs, entries, n);
    if (rc) {
        pz_free(b);
        return rc;
    }
    return queue_batch(s, loop, b, cb, arg);
}

int store_write_sync(struct store *s, const struct raft_hard_state *hs,
                     const struct raft_entry *entries, size_t n)
{
    pz_assert(s->jobs == 0);
    struct batch *b = pz_malloc(sizeof *b);
    int rc = prepare_batch(s, b, hs, entries, n);
    if (rc == 0) {
        b->rc = run_batch(s, b);
        finish_batch(s, b);
        tail_sync(s);
        rc = b->rc;
    }
    pz_free(b);
    return rc;
}

int store_write_install(struct store *s, uv_loop_t *loop, uint64_t index,
                        uint64_t term, const struct raft_hard_state *hs,
                        const struct raft_entry *entries, size_t n,
                        store_write_cb cb, void *arg)
{
    if (index > INT64_MAX || term > INT64_MAX || term > hs->term ||
        index < s->t_snap_index ||
        (n > 0 && entries[0].index != index + 1)) {
        set_err(s->errmsg, sizeof s->errmsg,
                "%s: snapshot install at index %" PRIu64 " term %" PRIu64
                " does not fit (stored snapshot %" PRIu64 ")",
                s->path, index, term, s->t_snap_index);
        return PZ_EINVAL;
    }
    /* Validate the entries as if the log already ended at the snapshot. */
    uint64_t li = s->t_last_index, lt = s->t_last_term;
    uint64_t si = s->t_snap_index, st = s->t_snap_term;
    s->t_last_index = index;
    s->t_last_term = term;
    s->t_snap_index = index;
    s->t_snap_term = term;
    struct batch *b = pz_malloc(sizeof *b);
    int rc = prepare_batch(s, b, hs, entries, n);
    s->t_last_index = li;
    s->t_last_term = lt;
    s->t_snap_index = si;
    s->t_snap_term = st;
    if (rc) {
        pz_free(b);
        return rc;
    }
    b->check_prev = false;
    b->reset = true;
    b->reset_index = index;
    b->reset_term = term;
    return queue_batch(s, loop, b, cb, arg);
}

int store_compact_step(struct store *s, uv_loop_t *loop, uint64_t upto,
                       uint64_t max_rows, uint64_t max_bytes,
                       store_write_cb cb, void *arg)
{
    pz_assert(s->jobs == 0);
    if (s->failed)
        return PZ_EIO;
    upto = PZ_MIN(upto, s->last_index);
    struct batch *b = pz_calloc(1, sizeof *b);
    b->vacuum = s->incremental;
    b->vacuum_level = s->vacuum_level;
    if (upto <= s->meta.snap_index || upto <= s->compact_left) {
        if (!s->incremental || s->free_pages <= VACUUM_KEEP) {
            pz_free(b);
            return 1;
        }
        return queue_batch(s, loop, b, cb, arg); /* free pages left */
    }
    b->compact = true;
    b->compact_from = s->meta.snap_index;
    b->compact_upto = b->compact_from; /* compact_plan sets it */
    b->compact_goal = upto;
    b->compact_last = s->last_index;
    b->compact_rows = PZ_MAX(max_rows, 1);
    b->compact_big = s->compact_big;
    b->compact_level = s->compact_level;
    b->compact_bytes = max_bytes >> (COMPACT_LEVELS - 1 - s->compact_level);
    if (s->incremental && s->free_pages == 0)
        s->free_pages = UINT64_MAX; /* unknown until counted */
    return queue_batch(s, loop, b, cb, arg);
}

bool store_busy(const struct store *s)
{
    return s->jobs > 0;
}

/* --- compaction and meta -------------------------------------------------- */

int store_compact(struct store *s, uint64_t upto, uint64_t term)
{
    pz_assert(s->jobs == 0);
    char *buf = s->errmsg;
    if (s->failed)
        return PZ_EIO;
    if (upto <= s->meta.snap_index)
        return 0;
    if (upto > INT64_MAX || term > INT64_MAX || term > s->hs.term) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: compact: index %" PRIu64 " or term %" PRIu64
                " out of range",
                s->path, upto, term);
        return PZ_EINVAL;
    }
    int rc = run(s, s->st_begin, buf, "BEGIN");
    if (rc)
        goto err_in_txn;
    if (upto <= s->last_index) {
        uint64_t t = 0;
        rc = term_at(s, upto, &t, buf);
        if (rc)
            goto err_in_txn;
        if (t != term) {
            set_err(buf, STORE_ERRMSG_SIZE,
                    "%s: compact: entry %" PRIu64 " has term %" PRIu64
                    ", not %" PRIu64,
                    s->path, upto, t, term);
            rollback(s);
            return PZ_EINVAL;
        }
    }
    uint64_t cleared = 0, deleted = 0;
    rc = drop_upto(s, s->meta.snap_index, PZ_MIN(upto, s->last_index),
                   s->last_index, &cleared, &deleted, buf);
    if (rc)
        goto err_in_txn;
    rc = meta_put_u64(s, "snapshot_index", upto, buf);
    if (rc)
        goto err_in_txn;
    rc = meta_put_u64(s, "snapshot_term", term, buf);
    if (rc)
        goto err_in_txn;
    rc = commit_sync(s, buf);
    if (rc)
        goto err_in_txn;
    s->stats.segments_dropped += cleared;
    s->stats.rows_deleted += deleted;
    s->compact_left = 0;
    s->compact_big = UINT64_MAX;
    s->meta.snap_index = upto;
    s->meta.snap_term = term;
    if (upto >= s->last_index) {
        s->last_index = upto;
        s->last_term = term;
    }
    tail_sync(s);
    return 0;

err_in_txn:
    rollback(s);
    s->failed = true;
    return rc;
}

static int exec_sql(struct store *s, const char *sql, char *err, size_t errlen);

/* store_meta_set; with done, the meta row restoring goes in the same
 * transaction (store_restore_done). */
static int meta_set(struct store *s, uint64_t cluster_id, uint64_t node_id,
                    const char *node_name, bool done)
{
    pz_assert(s->jobs == 0);
    char *buf = s->errmsg;
    struct store_meta *m = &s->meta;
    bool put_cluster = false, put_id = false, put_name = false;
    if (s->failed)
        return PZ_EIO;
    if (node_name == NULL)
        node_name = "";
    if (strlen(node_name) >= STORE_NAME_MAX) {
        set_err(buf, STORE_ERRMSG_SIZE, "%s: node name too long", s->path);
        return PZ_EINVAL;
    }
    if (cluster_id != 0 && m->cluster_id != 0 && cluster_id != m->cluster_id) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: stored cluster id %" PRIu64 " differs from %" PRIu64,
                s->path, m->cluster_id, cluster_id);
        return PZ_EINVAL;
    }
    if (node_id != 0 && m->node_id != 0 && node_id != m->node_id) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: stored node id %" PRIu64 " differs from %" PRIu64,
                s->path, m->node_id, node_id);
        return PZ_EINVAL;
    }
    if (node_name[0] && m->node_name[0] &&
        strcmp(node_name, m->node_name) != 0) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: stored node name \"%s\" differs from \"%s\"", s->path,
                m->node_name, node_name);
        return PZ_EINVAL;
    }
    put_cluster = cluster_id != 0 && m->cluster_id == 0;
    put_id = node_id != 0 && m->node_id == 0;
    put_name = node_name[0] && !m->node_name[0];
    done = done && m->restoring;
    if (!put_cluster && !put_id && !put_name && !done)
        return 0;
    int rc = run(s, s->st_begin, buf, "BEGIN");
    if (rc == 0 && put_cluster)
        rc = meta_put_u64(s, "cluster_id", cluster_id, buf);
    if (rc == 0 && put_id)
        rc = meta_put_u64(s, "node_id", node_id, buf);
    if (rc == 0 && put_name)
        rc = meta_put(s, "node_name", node_name, buf);
    if (rc == 0 && done)
        rc = exec_sql(s, "DELETE FROM meta WHERE key = 'restoring'", buf,
                      STORE_ERRMSG_SIZE);
    if (rc == 0)
        rc = commit_sync(s, buf);
    if (rc) {
        rollback(s);
        s->failed = true;
        return rc;
    }
    if (put_cluster)
        m->cluster_id = cluster_id;
    if (put_id)
        m->node_id = node_id;
    if (put_name)
        snprintf(m->node_name, sizeof m->node_name, "%s", node_name);
    if (done)
        m->restoring = false;
    return 0;
}

int store_meta_set(struct store *s, uint64_t cluster_id, uint64_t node_id,
                   const char *node_name)
{
    return meta_set(s, cluster_id, node_id, node_name, false);
}

int store_restore_done(struct store *s, uint64_t cluster_id, uint64_t node_id,
                       const char *node_name)
{
    return meta_set(s, cluster_id, node_id, node_name, true);
}

int store_meta_set_incarnation(struct store *s, uint64_t incarnation)
{
    pz_assert(s->jobs == 0);
    char *buf = s->errmsg;
    if (s->failed)
        return PZ_EIO;
    if (s->meta.incarnation != 0) {
        if (s->meta.incarnation == incarnation)
            return 0;
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: stored incarnation %" PRIu64 " differs from %" PRIu64,
                s->path, s->meta.incarnation, incarnation);
        return PZ_EINVAL;
    }
    int rc = run(s, s->st_begin, buf, "BEGIN");
    if (rc == 0)
        rc = meta_put_u64(s, "incarnation", incarnation, buf);
    if (rc == 0)
        rc = commit_sync(s, buf);
    if (rc) {
        rollback(s);
        s->failed = true;
        return rc;
    }
    s->meta.incarnation = incarnation;
    return 0;
}

int store_meta_set_promise(struct store *s, uint64_t promise_ns)
{
    pz_assert(s->jobs == 0 && promise_ns <= INT64_MAX);
    char *buf = s->errmsg;
    if (s->failed)
        return PZ_EIO;
    if (s->meta.promise_ns == promise_ns)
        return 0;
    int rc = run(s, s->st_begin, buf, "BEGIN");
    if (rc == 0)
        rc = meta_put_u64(s, "lease_promise_ns", promise_ns, buf);
    if (rc == 0)
        rc = commit_sync(s, buf);
    if (rc) {
        /* A full disk leaves the file as it was (as for a batch). */
        rollback(s);
        if (rc != PZ_ENOSPC)
            s->failed = true;
        return rc;
    }
    s->meta.promise_ns = promise_ns;
    return 0;
}

void store_meta_get(const struct store *s, struct store_meta *meta)
{
    *meta = s->meta;
}

/* --- load ----------------------------------------------------------------- */

void store_entries_free(struct raft_entry *entries, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pz_free(entries[i].data);
    pz_free(entries);
}

int store_term(struct store *s, uint64_t index, uint64_t *term)
{
    pz_assert(s->jobs == 0);
    *term = 0;
    if (index == s->meta.snap_index) {
        *term = s->meta.snap_term;
        return 0;
    }
    if (index < s->meta.snap_index || index > s->last_index)
        return PZ_ENOTFOUND;
    return term_at(s, index, term, s->errmsg);
}

int store_trailing_from(struct store *s, uint64_t index, uint64_t max_entries,
                        uint64_t max_bytes, uint64_t *from)
{
    pz_assert(s->jobs == 0);
    *from = index;
    if (index == 0 || max_entries == 0)
        return 0;
    /* length() of a blob reads its size from the row header, not the
     * payload's overflow pages. */
    sqlite3_stmt *st;
    char sql[LOG_SQL_MAX];
    log_union(sql, "idx, length(data)", "idx <= ?1",
              "ORDER BY idx DESC LIMIT ?2");
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return sql_err(s, s->errmsg, "prepare trailing scan", rc);
    bind_u64(st, 1, PZ_MIN(index, (uint64_t)INT64_MAX));
    bind_u64(st, 2, PZ_MIN(max_entries, (uint64_t)INT64_MAX));
    uint64_t n = 0, bytes = 0;
    int ret = 0;
    while ((rc = step(s, st)) == SQLITE_ROW) {
        sqlite3_int64 idx = sqlite3_column_int64(st, 0);
        sqlite3_int64 len = sqlite3_column_int64(st, 1);
        if (idx < 0 || (uint64_t)idx != index - n || len < 0 ||
            (uint64_t)len > max_bytes - bytes)
            break;
        bytes += (uint64_t)len;
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        ret = sql_err(s, s->errmsg, "read the trailing entries", rc);
    sqlite3_finalize(st);
    if (ret == 0)
        *from = index - PZ_MIN(n, index);
    return ret;
}

int store_load(struct store *s, struct raft_hard_state *hs,
               struct raft_entry **entries, size_t *n,
               struct store_meta *meta)
{
    return store_load_from(s, 0, hs, entries, n, meta);
}

/* What store_load_from has read so far. */
struct loaded {
    struct raft_entry *ents; /* the entries */
    size_t cnt, cap;         /* their number, the array's room */
    uint64_t expect;         /* the index of the next row */
    uint64_t prev_term;      /* the term before it */
};

/* One row of the log, checked and appended to l (an error: its message
 * in s->errmsg). */
static int load_row(struct store *s, sqlite3_stmt *st, struct loaded *l)
{
    if (sqlite3_column_type(st, 0) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 2) != SQLITE_INTEGER ||
        (sqlite3_column_type(st, 3) != SQLITE_BLOB &&
         sqlite3_column_type(st, 3) != SQLITE_NULL) ||
        (sqlite3_column_type(st, 4) != SQLITE_INTEGER &&
         sqlite3_column_type(st, 4) != SQLITE_NULL)) {
        set_err(s->errmsg, STORE_ERRMSG_SIZE,
                "%s: log row after index %" PRIu64
                " has columns of the wrong type",
                s->path, l->expect - 1);
        return PZ_ECORRUPT;
    }
    sqlite3_int64 idx = sqlite3_column_int64(st, 0);
    sqlite3_int64 term = sqlite3_column_int64(st, 1);
    sqlite3_int64 type = sqlite3_column_int64(st, 2);
    const char *bad = NULL;
    if (idx < 0 || (uint64_t)idx < l->expect)
        bad = "index at or below the snapshot index";
    else if ((uint64_t)idx > l->expect)
        bad = "gap in the log";
    else if (term < 0 || (uint64_t)term < l->prev_term)
        bad = "term decreases";
    else if ((uint64_t)term > s->hs.term)
        bad = "term above the hard state's term";
    else if (type != RAFT_ENTRY_NORMAL && type != RAFT_ENTRY_CONF &&
             type != RAFT_ENTRY_NOOP)
        bad = "unknown entry type";
    if (bad) {
        set_err(s->errmsg, STORE_ERRMSG_SIZE,
                "%s: log corrupt at index %lld (expected index %" PRIu64
                ", term %lld after %" PRIu64 ", hard state term %" PRIu64
                ", type %lld): %s",
                s->path, idx, l->expect, term, l->prev_term, s->hs.term, type,
                bad);
        return PZ_ECORRUPT;
    }
    if (l->cnt == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->ents = pz_realloc(l->ents, l->cap * sizeof *l->ents);
    }
    struct raft_entry *e = &l->ents[l->cnt++];
    int len = sqlite3_column_bytes(st, 3);
    e->index = (uint64_t)idx;
    e->term = (uint64_t)term;
    e->type = (uint8_t)type;
    e->len = (size_t)len;
    e->data =
        len > 0 ? pz_memdup(sqlite3_column_blob(st, 3), (size_t)len) : NULL;
    if (sqlite3_column_type(st, 4) == SQLITE_INTEGER) {
        uint64_t want = (uint64_t)sqlite3_column_int64(st, 4);
        uint64_t got = entry_crc(e->index, e->term, e->type, e->data, e->len);
        if (got != want) {
            set_err(s->errmsg, STORE_ERRMSG_SIZE,
                    "%s: log entry %lld (row idx = %lld of table %s, "
                    "%d payload bytes) fails its checksum (stored "
                    "%016" PRIx64 ", computed %016" PRIx64
                    "): the file was changed on disk",
                    s->path, idx, idx, log_tables[slot_of(s, e->index)], len,
                    want, got);
            return PZ_ECORRUPT;
        }
    }
    l->expect++;
    l->prev_term = (uint64_t)term;
    return 0;
}

int store_load_from(struct store *s, uint64_t from,
                    struct raft_hard_state *hs, struct raft_entry **entries,
                    size_t *n, struct store_meta *meta)
{
    pz_assert(s->jobs == 0);
    char *buf = s->errmsg;
    struct loaded l = {.expect = s->meta.snap_index + 1,
                       .prev_term = s->meta.snap_term};
    int rc, ret = 0;

    *entries = NULL;
    *n = 0;
    /* Entries below from stay on disk (compaction drops them later);
     * the one before from gives the term the first loaded one must not
     * go below. */
    from = PZ_MIN(from, s->last_index + 1);
    if (from > l.expect) {
        ret = term_at(s, from - 1, &l.prev_term, buf);
        if (ret)
            return ret;
        l.expect = from;
    }
    /* Segment by segment, each read from its table: no merge of them
     * all (a load took 13% longer through one). Rows are checked as
     * before, so missing ones show as a gap wherever they were. */
    rc = SQLITE_DONE;
    for (uint64_t g = l.expect >> s->seg_shift;
         ret == 0 && rc == SQLITE_DONE && g <= s->last_index >> s->seg_shift;
         g++) {
        sqlite3_stmt *st = s->slot[g & (LOG_SLOTS - 1)].scan;
        bind_u64(st, 1, PZ_MAX(l.expect, g << s->seg_shift));
        bind_u64(st, 2, seg_end(s, g << s->seg_shift));
        while ((rc = step(s, st)) == SQLITE_ROW &&
               (ret = load_row(s, st, &l)) == 0)
            ;
        if (ret == 0 && rc != SQLITE_DONE)
            ret = sql_err(s, buf, "read log", rc);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
    if (ret == 0 && (l.expect - 1 != s->last_index ||
                     (l.cnt > 0 && l.prev_term != s->last_term))) {
        set_err(buf, STORE_ERRMSG_SIZE,
                "%s: log changed under us: last index %" PRIu64
                " read, %" PRIu64 " expected",
                s->path, l.expect - 1, s->last_index);
        ret = PZ_ECORRUPT;
    }
    if (ret) {
        store_entries_free(l.ents, l.cnt);
        return ret;
    }
    *hs = s->hs;
    *entries = l.ents;
    *n = l.cnt;
    if (meta)
        *meta = s->meta;
    return 0;
}

/* --- open / close --------------------------------------------------------- */

/* The columns of each of the log's tables. */
#define LOG_COLUMNS                                                            \
    " ("                                                                       \
    "  idx INTEGER PRIMARY KEY,"                                               \
    "  term INTEGER NOT NULL,"                                                 \
    "  type INTEGER NOT NULL,"                                                 \
    "  data BLOB,"                                                             \
    "  crc INTEGER) STRICT;"
/* The log's tables after the first (version 2 had that one only). */
#define LOG_TABLES_1_7                                                         \
    "CREATE TABLE log1" LOG_COLUMNS "CREATE TABLE log2" LOG_COLUMNS            \
    "CREATE TABLE log3" LOG_COLUMNS "CREATE TABLE log4" LOG_COLUMNS            \
    "CREATE TABLE log5" LOG_COLUMNS "CREATE TABLE log6" LOG_COLUMNS            \
    "CREATE TABLE log7" LOG_COLUMNS
_Static_assert(LOG_SLOTS == 8, "one table per slot");

static const char schema_sql[] =
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY NOT NULL,"
    "  value TEXT NOT NULL) STRICT;"
    "CREATE TABLE log" LOG_COLUMNS LOG_TABLES_1_7 "CREATE TABLE hard_state ("
    "  id INTEGER PRIMARY KEY CHECK (id = 0),"
    "  term INTEGER NOT NULL,"
    "  vote INTEGER NOT NULL,"
    "  commit_index INTEGER NOT NULL) STRICT;"
    "INSERT INTO hard_state VALUES (0, 0, 0, 0);";

static const char *const stmt_sql[] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "UPDATE hard_state SET term = ?1, vote = ?2, commit_index = ?3 "
    "WHERE id = 0",
    "INSERT INTO meta (key, value) VALUES (?1, ?2) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "PRAGMA incremental_vacuum(8)", /* VACUUM_PAGES_MIN << level */
    "PRAGMA incremental_vacuum(16)",
    "PRAGMA incremental_vacuum(32)",
    "PRAGMA incremental_vacuum(64)",
    "PRAGMA incremental_vacuum(128)",
    "PRAGMA incremental_vacuum(256)",
    "PRAGMA incremental_vacuum(512)",
    "PRAGMA incremental_vacuum(1024)",
    "PRAGMA incremental_vacuum(2048)",
    "PRAGMA freelist_count",
};

static sqlite3_stmt **stmt_slot(struct store *s, size_t i)
{
    sqlite3_stmt **slots[] = {
        &s->st_begin,     &s->st_commit,    &s->st_rollback,  &s->st_hs_put,
        &s->st_meta_put,  &s->st_vacuum[0], &s->st_vacuum[1], &s->st_vacuum[2],
        &s->st_vacuum[3], &s->st_vacuum[4], &s->st_vacuum[5], &s->st_vacuum[6],
        &s->st_vacuum[7], &s->st_vacuum[8], &s->st_freelist,
    };
    _Static_assert(PZ_ARRAY_SIZE(slots) == PZ_ARRAY_SIZE(stmt_sql),
                   "one slot per statement");
    _Static_assert(VACUUM_PAGES_MIN << (VACUUM_LEVELS - 1) == 2048,
                   "one vacuum statement per level");
    return slots[i];
}

/* Prepares one statement kept for the store's life; one that does not
 * compile names a table or column the file lacks. */
static int prep(struct store *s, const char *sql, sqlite3_stmt **st, char *err,
                size_t errlen)
{
    int rc =
        sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: schema does not match (%s): %s", s->path, sql,
                sqlite3_errmsg(s->db));
        return PZ_ECORRUPT;
    }
    return 0;
}

/* The statements of the log's tables, and those that read them all. */
static int prepare_log(struct store *s, char *err, size_t errlen)
{
    static const char *const rows[4] = {INSERT_ROW8, INSERT_ROW4, INSERT_ROW2,
                                        INSERT_ROW1};
    char sql[LOG_SQL_MAX];
    int ret = 0;
    for (unsigned k = 0; k < LOG_SLOTS && ret == 0; k++) {
        const char *t = log_tables[k];
        struct log_slot *ls = &s->slot[k];
        for (int i = 0; i < 4 && ret == 0; i++) {
            snprintf(sql, sizeof sql, INSERT_INTO "%s", t, rows[i]);
            ret = prep(s, sql, &ls->insert[i], err, errlen);
        }
        const struct {
            sqlite3_stmt **st;
            const char *fmt;
        } one[] = {
            {&ls->del_from, "DELETE FROM %s WHERE idx >= ?1"},
            {&ls->del_upto, "DELETE FROM %s WHERE idx <= ?1"},
            {&ls->clear, "DELETE FROM %s"},
            {&ls->term_at, "SELECT term FROM %s WHERE idx = ?1"},
            /* length() of a BLOB column reads the row's header, not its
             * overflow pages */
            {&ls->bytes, "SELECT length(data) FROM %s "
                         "WHERE idx > ?1 AND idx <= ?2"},
            {&ls->scan, "SELECT idx, term, type, data, crc FROM %s "
                        "WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx"},
        };
        for (size_t i = 0; i < PZ_ARRAY_SIZE(one) && ret == 0; i++) {
            snprintf(sql, sizeof sql, one[i].fmt, t);
            ret = prep(s, sql, one[i].st, err, errlen);
        }
    }
    if (ret == 0) {
        log_union(sql, "idx, length(data)", "idx > ?1 AND idx <= ?2",
                  "ORDER BY idx");
        ret = prep(s, sql, &s->st_sizes, err, errlen);
    }
    return ret;
}

static void finalize_log(struct store *s)
{
    for (unsigned k = 0; k < LOG_SLOTS; k++) {
        struct log_slot *ls = &s->slot[k];
        for (int i = 0; i < 4; i++)
            sqlite3_finalize(ls->insert[i]);
        sqlite3_finalize(ls->del_from);
        sqlite3_finalize(ls->del_upto);
        sqlite3_finalize(ls->clear);
        sqlite3_finalize(ls->term_at);
        sqlite3_finalize(ls->bytes);
        sqlite3_finalize(ls->scan);
    }
    sqlite3_finalize(s->st_sizes);
}

/* Makes the entry of the directory p (just created) durable: fsyncs the
 * directory that holds it. Without this a power cut soon after the first
 * start may lose the new directory, and raft.db with it, on file systems
 * that do not order a mkdir before later fsyncs of files inside (XFS,
 * btrfs). */
static int sync_parent(char *p, char *err, size_t errlen)
{
    char *slash = strrchr(p, '/');
    int ret;
    if (slash == NULL) {
        ret = pz_fsync_path(".", true);
    } else if (slash == p) {
        ret = pz_fsync_path("/", true);
    } else {
        *slash = '\0';
        ret = pz_fsync_path(p, true);
        *slash = '/';
    }
    if (ret < 0)
        set_err(err, errlen, "%s: cannot sync the directory that holds it: %s",
                p, strerror(-ret));
    return ret;
}

/* mkdir -p with mode 0700 for what is created; each directory created is
 * made durable in its parent. */
static int make_dir(const char *dir, char *err, size_t errlen)
{
    char *p = pz_strdup(dir);
    int ret = 0;
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0')
            continue;
        char saved = *c;
        *c = '\0';
        if (mkdir(p, 0700) == 0) {
            if ((ret = sync_parent(p, err, errlen)) < 0)
                break;
        } else if (errno != EEXIST) {
            ret = -errno;
            set_err(err, errlen, "%s: cannot create directory: %s", p,
                    strerror(errno));
            break;
        }
        *c = saved;
        if (saved == '\0')
            break;
    }
    struct stat st;
    if (ret == 0 && (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode))) {
        ret = errno ? -errno : PZ_EINVAL;
        set_err(err, errlen, "%s: not a directory", dir);
    }
    pz_free(p);
    return ret;
}

static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = pz_malloc(la + lb + 2);
    memcpy(p, a, la);
    p[la] = '/';
    memcpy(p + la + 1, b, lb + 1);
    return p;
}

static char *suffixed(const char *a, const char *suffix)
{
    size_t la = strlen(a), ls = strlen(suffix);
    char *p = pz_malloc(la + ls + 1);
    memcpy(p, a, la);
    memcpy(p + la, suffix, ls + 1);
    return p;
}

static bool path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static uint64_t test_log_segment; /* store_test_log_segment (0: none) */

static bool valid_segment(uint64_t n)
{
    return n >= LOG_SEGMENT_MIN && n <= LOG_SEGMENT_MAX && (n & (n - 1)) == 0;
}

void store_test_log_segment(uint64_t entries)
{
    pz_assert(entries == 0 || valid_segment(entries));
    test_log_segment = entries;
}

/* The entries a segment holds in a database made now: the test hook's,
 * else PYAZDB_TEST_LOG_SEGMENT's, else LOG_SEGMENT; 0 and a message if
 * the variable is not a valid size. */
static uint64_t new_segment(char *err, size_t errlen)
{
    if (test_log_segment)
        return test_log_segment;
    const char *env = getenv("PYAZDB_TEST_LOG_SEGMENT");
    if (env == NULL || *env == '\0')
        return LOG_SEGMENT;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(env, &end, 10);
    if (errno || *end || !valid_segment(v)) {
        set_err(err, errlen,
                "PYAZDB_TEST_LOG_SEGMENT=%s: not a power of two from %d to "
                "%" PRIu64,
                env, LOG_SEGMENT_MIN, LOG_SEGMENT_MAX);
        return 0;
    }
    return v;
}

/* Builds a fresh database as <path>.tmp and renames it to path; with
 * restoring, the meta row restoring is in it from the start. */
static int create_db(const char *dir, const char *path, bool restoring,
                     char *err, size_t errlen)
{
    char *tmp = suffixed(path, ".tmp");
    static const char *const extra[] = {"", "-journal", "-wal", "-shm"};
    sqlite3 *db = NULL;
    char *msg = NULL;
    char sql[sizeof schema_sql + 1024];
    int ret = 0;
    uint64_t segment = new_segment(err, errlen);
    if (segment == 0) {
        pz_free(tmp);
        return PZ_EINVAL;
    }

    for (size_t i = 0; i < PZ_ARRAY_SIZE(extra); i++) {
        char *f = suffixed(tmp, extra[i]);
        if (unlink(f) < 0 && errno != ENOENT) {
            ret = -errno;
            set_err(err, errlen, "%s: cannot remove: %s", f, strerror(errno));
        }
        pz_free(f);
        if (ret)
            goto out;
    }
    int rc = sqlite3_open_v2(tmp, &db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: create: %s", tmp,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        ret = map_sqlite(rc);
        goto out;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    snprintf(sql, sizeof sql,
             "PRAGMA auto_vacuum = INCREMENTAL;" /* before any table */
             "PRAGMA synchronous = FULL;"
             "BEGIN;"
             "PRAGMA application_id = %d;"
             "%s"
             "INSERT INTO meta VALUES ('schema_version', '%d'),"
             " ('created_ms', '%" PRId64 "'), ('cluster_id', '0'),"
             " ('node_id', '0'), ('node_name', ''),"
             " ('snapshot_index', '0'), ('snapshot_term', '0'),"
             " ('log_segment', '%" PRIu64 "')%s;"
             "COMMIT;",
             STORE_APP_ID, schema_sql, STORE_SCHEMA_VERSION, ms, segment,
             restoring ? ", ('restoring', '1')" : "");
    rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: create schema: %s", tmp,
                msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        ret = map_sqlite(rc);
        goto out;
    }
    rc = sqlite3_close(db);
    db = NULL;
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: close: %s", tmp, sqlite3_errstr(rc));
        ret = PZ_EIO;
        goto out;
    }
    if ((ret = pz_fsync_path(tmp, false)) < 0 || rename(tmp, path) < 0 ||
        (ret = pz_fsync_path(dir, true)) < 0) {
        if (ret == 0)
            ret = -errno;
        set_err(err, errlen, "%s: cannot install new database: %s", path,
                strerror(-ret));
        goto out;
    }
out:
    if (db)
        sqlite3_close(db);
    pz_free(tmp);
    return ret;
}

/* Version 3 cuts the log into segments, each in its table: the seven
 * tables after log, and the rows moved into them, in one transaction. */
static int convert_2(struct store *s, char *err, size_t errlen)
{
    uint64_t seg = new_segment(err, errlen);
    if (seg == 0)
        return PZ_EINVAL;
    unsigned shift = (unsigned)__builtin_ctzll(seg);
    char sql[4096];
    size_t n = (size_t)snprintf(sql, sizeof sql, "BEGIN;" LOG_TABLES_1_7);
    for (unsigned k = 1; k < LOG_SLOTS; k++)
        n += (size_t)snprintf(sql + n, sizeof sql - n,
                              "INSERT INTO log%u (idx, term, type, data, crc) "
                              "SELECT idx, term, type, data, crc FROM log "
                              "WHERE ((idx >> %u) & %d) = %u;",
                              k, shift, LOG_SLOTS - 1, k);
    n += (size_t)snprintf(sql + n, sizeof sql - n,
                          "DELETE FROM log WHERE ((idx >> %u) & %d) != 0;"
                          "INSERT INTO meta VALUES ('log_segment', "
                          "'%" PRIu64 "');"
                          "UPDATE meta SET value = '%d' "
                          "WHERE key = 'schema_version';"
                          "COMMIT;",
                          shift, LOG_SLOTS - 1, seg, STORE_SCHEMA_VERSION);
    pz_assert(n < sizeof sql);
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        set_err(err, errlen,
                "%s: cannot convert to schema version %d (the log in "
                "segments): %s (SQLite error %d)",
                s->path, STORE_SCHEMA_VERSION, msg ? msg : sqlite3_errstr(rc),
                rc);
        sqlite3_free(msg);
        /* (the store's statements are not prepared yet) */
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return map_sqlite(rc);
    }
    s->meta.schema_version = STORE_SCHEMA_VERSION;
    s->meta.log_segment = seg;
    s->seg_shift = shift;
    return 0;
}

/* Runs a statement that yields one text or integer row, copies it into
 * out. */
static int pragma_row(struct store *s, const char *sql, char *out,
                      size_t outlen, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(out, outlen, "%s", t ? (const char *)t : "");
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            snprintf(out, outlen, "%s", "");
            rc = SQLITE_OK;
        }
    }
    int ret = 0;
    if (rc != SQLITE_OK) {
        ret = sql_err(s, s->errmsg, sql, rc);
        set_err(err, errlen, "%s", s->errmsg);
    }
    sqlite3_finalize(st);
    return ret;
}

static int exec_sql(struct store *s, const char *sql, char *err,
                    size_t errlen)
{
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK)
        return 0;
    set_err(err, errlen, "%s: %s: %s (SQLite error %d)", s->path, sql,
            msg ? msg : sqlite3_errstr(rc), rc);
    sqlite3_free(msg);
    return map_sqlite(rc);
}

/* PRAGMA quick_check: "ok" or a list of problems. */
static int quick_check(struct store *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    char report[STORE_ERRMSG_SIZE] = "";
    size_t used = 0;
    int rows = 0, rc;
    rc = sqlite3_prepare_v2(s->db, "PRAGMA quick_check(4)", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(st, 0);
            if (rows++ == 0 && t && strcmp(t, "ok") == 0)
                continue;
            if (used < sizeof report - 1)
                used += (size_t)snprintf(report + used, sizeof report - used,
                                         "%s%s", used ? "; " : "",
                                         t ? t : "?");
        }
    }
    int ret = 0;
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
        ret = sql_err(s, s->errmsg, "PRAGMA quick_check", rc);
        set_err(err, errlen, "%s", s->errmsg);
    } else if (report[0]) {
        for (char *c = report; *c; c++)
            if (*c == '\n')
                *c = ' ';
        set_err(err, errlen, "%s: PRAGMA quick_check failed: %s", s->path,
                report);
        ret = PZ_ECORRUPT;
    }
    sqlite3_finalize(st);
    return ret;
}

/* Strict decimal uint64 (no sign, no spaces, no overflow). */
static bool parse_u64(const char *t, uint64_t *v)
{
    if (t == NULL || *t < '0' || *t > '9')
        return false;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(t, &end, 10);
    if (errno || *end)
        return false;
    *v = x;
    return true;
}

/* Reads and validates the meta rows. */
static int load_meta(struct store *s, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "schema_version", "created_ms",     "cluster_id",    "node_id",
        "node_name",      "snapshot_index", "snapshot_term",
    };
    bool seen[PZ_ARRAY_SIZE(keys)] = {false};
    struct store_meta *m = &s->meta;
    sqlite3_stmt *st = NULL;
    uint64_t v = 0;
    int ret = 0;
    int rc = sqlite3_prepare_v2(s->db, "SELECT key, value FROM meta", -1, &st,
                                NULL);
    if (rc != SQLITE_OK)
        goto sql_error;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *t = (const char *)sqlite3_column_text(st, 1);
        if (k && strcmp(k, "restoring") == 0) {
            /* Optional: only while a --restore seeds the directory. */
            if (t == NULL || strcmp(t, "1") != 0) {
                set_err(err, errlen, "%s: meta %s has a bad value \"%s\"",
                        s->path, k, t ? t : "(null)");
                ret = PZ_ECORRUPT;
                goto out;
            }
            m->restoring = true;
            continue;
        }
        if (k && strcmp(k, "log_segment") == 0) {
            /* Version 3 on; open converts older files. */
            if (!parse_u64(t, &m->log_segment) ||
                !valid_segment(m->log_segment)) {
                set_err(err, errlen,
                        "%s: meta %s has a bad value \"%s\" (a power of "
                        "two from %d to %" PRIu64 ")",
                        s->path, k, t ? t : "(null)", LOG_SEGMENT_MIN,
                        LOG_SEGMENT_MAX);
                ret = PZ_ECORRUPT;
                goto out;
            }
            continue;
        }
        if (k && (strcmp(k, "incarnation") == 0 ||
                  strcmp(k, "lease_promise_ns") == 0)) {
            /* Optional: databases of joined nodes have an incarnation,
             * those of this version a promise (a time: signed 64-bit). */
            bool inc = strcmp(k, "incarnation") == 0;
            uint64_t *dst = inc ? &m->incarnation : &m->promise_ns;
            if (!parse_u64(t, dst) || (!inc && *dst > INT64_MAX)) {
                set_err(err, errlen, "%s: meta %s has a bad value \"%s\"",
                        s->path, k, t ? t : "(null)");
                ret = PZ_ECORRUPT;
                goto out;
            }
            continue;
        }
        size_t i;
        for (i = 0; i < PZ_ARRAY_SIZE(keys); i++)
            if (k && strcmp(k, keys[i]) == 0)
                break;
        if (i == PZ_ARRAY_SIZE(keys))
            continue; /* unknown keys are for later versions */
        seen[i] = true;
        bool ok = i == 4 ? t && strlen(t) < STORE_NAME_MAX
                         : parse_u64(t, &v);
        if (ok && (i == 1 || i == 5 || i == 6) && v > INT64_MAX)
            ok = false; /* kept in signed 64-bit columns elsewhere */
        if (!ok) {
            set_err(err, errlen, "%s: meta %s has a bad value \"%s\"",
                    s->path, keys[i], t ? t : "(null)");
            ret = PZ_ECORRUPT;
            goto out;
        }
        switch (i) {
        case 0:
            if (v != STORE_SCHEMA_VERSION && v != 1 && v != 2) {
                set_err(err, errlen,
                        "%s: unknown schema version %" PRIu64
                        " (this build reads version %d)",
                        s->path, v, STORE_SCHEMA_VERSION);
                ret = PZ_ECORRUPT;
                goto out;
            }
            m->schema_version = (int)v;
            break;
        case 1: m->created_ms = (int64_t)v; break;
        case 2: m->cluster_id = v; break;
        case 3: m->node_id = v; break;
        case 4: snprintf(m->node_name, sizeof m->node_name, "%s", t); break;
        case 5: m->snap_index = v; break;
        case 6: m->snap_term = v; break;
        }
    }
    if (rc != SQLITE_DONE)
        goto sql_error;
    for (size_t i = 0; i < PZ_ARRAY_SIZE(keys); i++) {
        if (!seen[i]) {
            set_err(err, errlen, "%s: meta row %s is missing", s->path,
                    keys[i]);
            ret = PZ_ECORRUPT;
            goto out;
        }
    }
    if (m->log_segment == 0 && m->schema_version == STORE_SCHEMA_VERSION) {
        set_err(err, errlen, "%s: meta row log_segment is missing", s->path);
        ret = PZ_ECORRUPT;
        goto out;
    }
    if (m->log_segment)
        s->seg_shift = (unsigned)__builtin_ctzll(m->log_segment);
    goto out;
sql_error:
    ret = sql_err(s, s->errmsg, "read meta", rc);
    if (ret == PZ_EIO && rc == SQLITE_ERROR)
        ret = PZ_ECORRUPT; /* e.g. no such table: not our schema */
    set_err(err, errlen, "%s", s->errmsg);
out:
    sqlite3_finalize(st);
    return ret;
}

/* Reads the hard state row and the last entry. */
static int load_state(struct store *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = 0;
    int rc = sqlite3_prepare_v2(
        s->db, "SELECT term, vote, commit_index FROM hard_state WHERE id = 0",
        -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto sql_error;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        set_err(err, errlen, "%s: hard state row is missing", s->path);
        ret = PZ_ECORRUPT;
        goto out;
    }
    if (rc != SQLITE_ROW)
        goto sql_error;
    sqlite3_int64 t = sqlite3_column_int64(st, 0);
    sqlite3_int64 v = sqlite3_column_int64(st, 1);
    sqlite3_int64 c = sqlite3_column_int64(st, 2);
    if (t < 0 || c < 0) {
        set_err(err, errlen, "%s: hard state has negative values", s->path);
        ret = PZ_ECORRUPT;
        goto out;
    }
    s->hs.term = (uint64_t)t;
    s->hs.vote = (uint64_t)v;
    s->hs.commit = (uint64_t)c;
    sqlite3_finalize(st);
    st = NULL;

    char sql[LOG_SQL_MAX];
    log_union(sql, "idx, term", NULL, "ORDER BY idx DESC LIMIT 1");
    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto sql_error;
    rc = sqlite3_step(st);
    s->last_index = s->meta.snap_index;
    s->last_term = s->meta.snap_term;
    if (rc == SQLITE_ROW) {
        sqlite3_int64 i = sqlite3_column_int64(st, 0);
        t = sqlite3_column_int64(st, 1);
        if (i < 0 || t < 0 || (uint64_t)i <= s->meta.snap_index) {
            set_err(err, errlen,
                    "%s: last log entry %lld (term %lld) is invalid or not "
                    "after the snapshot index %" PRIu64,
                    s->path, i, t, s->meta.snap_index);
            ret = PZ_ECORRUPT;
            goto out;
        }
        s->last_index = (uint64_t)i;
        s->last_term = (uint64_t)t;
    } else if (rc != SQLITE_DONE) {
        goto sql_error;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* The log starts right after the snapshot point (a restart may load
     * only its end: store_load_from, so the start is checked here). */
    log_union(sql, "idx", NULL, "ORDER BY idx LIMIT 1");
    rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        goto sql_error;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        sqlite3_int64 i = sqlite3_column_int64(st, 0);
        if (i < 0 || (uint64_t)i != s->meta.snap_index + 1) {
            set_err(err, errlen,
                    i >= 0 && (uint64_t)i > s->meta.snap_index
                        ? "%s: gap in the log: it starts at index %lld, "
                          "after the snapshot index %" PRIu64
                        : "%s: log entry %lld is at or below the snapshot "
                          "index %" PRIu64,
                    s->path, i, s->meta.snap_index);
            ret = PZ_ECORRUPT;
            goto out;
        }
    } else if (rc != SQLITE_DONE) {
        goto sql_error;
    }
    sqlite3_finalize(st);
    st = NULL;
    /* Every entry of the log, and nothing else, in its segment's table
     * (writes and loads look for it there): each table holds as many rows
     * as the log has entries in its segments. A gap, a row out of its
     * table or one stored twice changes a count, unless another such
     * error makes up for it in the same table (the load still finds a
     * gap in what it reads). SQLite counts a table's rows from its pages,
     * without reading the rows. */
    for (unsigned k = 0; k < LOG_SLOTS; k++) {
        const char *table = log_tables[k];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
        rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
            goto sql_error;
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            goto sql_error;
        sqlite3_int64 have = sqlite3_column_int64(st, 0);
        uint64_t want =
            slot_entries(s, s->meta.snap_index + 1, s->last_index, k);
        if (have < 0 || (uint64_t)have != want) {
            set_err(err, errlen,
                    "%s: gap in the log, or an entry out of its segment's "
                    "table: table %s holds %lld entries where the log from "
                    "%" PRIu64 " to %" PRIu64 " has %" PRIu64
                    " (segments of %" PRIu64 " entries)",
                    s->path, table, have, s->meta.snap_index + 1, s->last_index,
                    want, s->meta.log_segment);
            ret = PZ_ECORRUPT;
            goto out;
        }
        sqlite3_finalize(st);
        st = NULL;
    }
    /* Writes keep the hard state's term at or above every term stored
     * (prepare_batch, store_write_install), and a new database has term
     * 0 with no entry, no snapshot point and no vote. A term lowered on
     * disk would let the node vote a second time in a term it voted in,
     * and a term of 0 take a stored log for a new node's. */
    if (s->hs.term < PZ_MAX(s->last_term, s->meta.snap_term) ||
        (s->hs.term == 0 && (s->last_index > 0 || s->hs.vote != 0))) {
        set_err(err, errlen,
                "%s: hard state (term %" PRIu64 ", vote %" PRIu64
                ") does not fit the log (last index %" PRIu64 ", term %" PRIu64
                "; snapshot index %" PRIu64 ", term %" PRIu64
                "): the term must be at least the log's, and 0 only with no "
                "log, snapshot or vote",
                s->path, s->hs.term, s->hs.vote, s->last_index, s->last_term,
                s->meta.snap_index, s->meta.snap_term);
        ret = PZ_ECORRUPT;
        goto out;
    }
    goto out;
sql_error:
    ret = sql_err(s, s->errmsg, "read hard state", rc);
    if (ret == PZ_EIO && rc == SQLITE_ERROR)
        ret = PZ_ECORRUPT;
    set_err(err, errlen, "%s", s->errmsg);
out:
    sqlite3_finalize(st);
    return ret;
}

/* Looks at the file before SQLite does: SQLite would happily turn an empty
 * file into a fresh database, and writes a header when switching to WAL. */
static int check_header(const char *path, char *err, size_t errlen)
{
    static const char magic[16] = "SQLite format 3";
    char head[16];
    /* A regular file only: SQLite would block on a FIFO named raft.db. */
    int fd = pz_open_regular(path);
    if (fd == PZ_EINVAL) {
        set_err(err, errlen, "%s: not a regular file", path);
        return PZ_ECORRUPT;
    }
    if (fd < 0) {
        set_err(err, errlen, "%s: open: %s", path, strerror(-fd));
        return fd;
    }
    ssize_t r = pread(fd, head, sizeof head, 0);
    int e = errno;
    close(fd);
    if (r < 0) {
        set_err(err, errlen, "%s: read: %s", path, strerror(e));
        return -e;
    }
    if (r == 0) {
        set_err(err, errlen,
                "%s: empty file (truncated?); refusing to treat it as a "
                "new node",
                path);
        return PZ_ECORRUPT;
    }
    if ((size_t)r < sizeof head || memcmp(head, magic, sizeof head) != 0) {
        set_err(err, errlen,
                "%s: not an SQLite database (bad header: garbage or "
                "overwritten)",
                path);
        return PZ_ECORRUPT;
    }
    return 0;
}

/* Pages compacted away go back to the file system only with auto_vacuum
 * INCREMENTAL, which must be chosen before the tables exist: a database
 * created without it (by an older build) is converted here, once, by a
 * VACUUM that rewrites it, when it is at most VACUUM_CONVERT_MAX bytes; a
 * larger one keeps working without giving space back (the README says
 * how to convert it offline). */
static int vacuum_mode(struct store *s, char *err, size_t errlen)
{
    char row[64];
    int ret = pragma_row(s, "PRAGMA auto_vacuum", row, sizeof row, err,
                         errlen);
    if (ret)
        return ret;
    struct stat st;
    if (strcmp(row, "0") == 0 && stat(s->path, &st) == 0 &&
        st.st_size <= VACUUM_CONVERT_MAX) {
        if ((ret = exec_sql(s, "PRAGMA auto_vacuum = INCREMENTAL; VACUUM",
                            err, errlen)) ||
            (ret = pragma_row(s, "PRAGMA auto_vacuum", row, sizeof row, err,
                              errlen)))
            return ret;
    }
    s->incremental = strcmp(row, "2") == 0;
    if ((ret = pragma_row(s, "PRAGMA freelist_count", row, sizeof row, err,
                          errlen)))
        return ret;
    s->free_pages = strtoull(row, NULL, 10);
    return 0;
}

static int open_db(struct store *s, char *err, size_t errlen)
{
    char row[64];
    int rc = check_header(s->path, err, errlen);
    if (rc)
        return rc;
    /* Multi-thread mode (no per-connection mutex, taken a dozen times
     * per statement): the connection is used by one thread at a time,
     * the drain only while jobs are queued, when every other entry point
     * refuses (pz_assert(s->jobs == 0)); the queue's mutex orders the
     * two. */
    rc = sqlite3_open_v2(s->path, &s->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: open: %s (SQLite error %d)", s->path,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc), rc);
        return map_sqlite(rc);
    }
    sqlite3_extended_result_codes(s->db, 1);
    /* Exclusive locking: a second process on the same data directory gets
     * SQLITE_BUSY at once; in WAL mode it also means no shared-memory
     * index. The empty write transaction takes the lock now. */
    int ret = exec_sql(s, "PRAGMA locking_mode = EXCLUSIVE", err, errlen);
    if (ret)
        return ret;
    if ((ret = pragma_row(s, "PRAGMA journal_mode = WAL", row, sizeof row,
                          err, errlen)))
        goto check_busy;
    if (strcmp(row, "wal") != 0) {
        set_err(err, errlen, "%s: cannot switch to WAL (journal mode %s)",
                s->path, row);
        return PZ_EIO;
    }
    if ((ret = exec_sql(s, "BEGIN EXCLUSIVE; COMMIT", err, errlen)))
        goto check_busy;
    if ((ret = exec_sql(s,
                        "PRAGMA synchronous = FULL;"
                        "PRAGMA cell_size_check = ON;"
                        "PRAGMA secure_delete = " SECURE_DELETE ";"
                        "PRAGMA journal_size_limit = " STR(WAL_KEEP) ";"
                        "PRAGMA cache_size = -" STR(CACHE_KIB) ";",
                        err, errlen)))
        return ret;
    if ((ret = pragma_row(s, "PRAGMA synchronous", row, sizeof row, err,
                          errlen)))
        return ret;
    if (strcmp(row, "2") != 0) {
        set_err(err, errlen, "%s: synchronous is %s, not FULL", s->path,
                row);
        return PZ_EIO;
    }
    if ((ret = quick_check(s, err, errlen)))
        return ret;
    if ((ret = pragma_row(s, "PRAGMA application_id", row, sizeof row, err,
                          errlen)))
        return ret;
    if (strtol(row, NULL, 10) != STORE_APP_ID) {
        char tables[64];
        if (strcmp(row, "0") == 0 &&
            pragma_row(s, "SELECT count(*) FROM sqlite_schema", tables,
                       sizeof tables, err, errlen) == 0 &&
            strcmp(tables, "0") == 0)
            set_err(err, errlen,
                    "%s: database holds no schema (empty or truncated "
                    "file?); refusing to treat it as a new node",
                    s->path);
        else
            set_err(err, errlen,
                    "%s: not a PyazDB raft log (application_id %s)",
                    s->path, row);
        return PZ_ECORRUPT;
    }
    if ((ret = load_meta(s, err, errlen)))
        return ret;
    if (s->meta.schema_version == 1) {
        /* Version 2 adds the entries' checksums; old rows keep none. */
        if ((ret = exec_sql(s,
                            "BEGIN;"
                            "ALTER TABLE log ADD COLUMN crc INTEGER;"
                            "UPDATE meta SET value = '2' "
                            "WHERE key = 'schema_version';"
                            "COMMIT;",
                            err, errlen))) {
            /* (the store's statements are not prepared yet) */
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return ret;
        }
        s->meta.schema_version = 2;
    }
    if (s->meta.schema_version == 2 && (ret = convert_2(s, err, errlen)))
        return ret;
    if ((ret = vacuum_mode(s, err, errlen)))
        return ret;
    /* From here commit() checkpoints; until here SQLite's auto-checkpoint
     * did (the conversion's VACUUM, at open). */
    sqlite3_wal_hook(s->db, on_wal_commit, s);
    for (size_t i = 0; i < PZ_ARRAY_SIZE(stmt_sql); i++)
        if ((ret = prep(s, stmt_sql[i], stmt_slot(s, i), err, errlen)))
            return ret;
    if ((ret = prepare_log(s, err, errlen)))
        return ret;
    return load_state(s, err, errlen);

check_busy:
    if (ret == PZ_EBUSY)
        set_err(err, errlen,
                "%s: locked by another process (is another server using "
                "this data directory?)",
                s->path);
    return ret;
}

/* store_open and store_create_restoring: the latter creates raft.db,
 * which must not exist, with the meta row restoring. */
static int open_store(const char *dir, bool restoring, struct store **out,
                      char *err, size_t errlen)
{
    *out = NULL;
    set_err(err, errlen, "%s", "");
    int ret = make_dir(dir, err, errlen);
    if (ret)
        return ret;
    char *path = join(dir, STORE_FILE);
    if (restoring && path_exists(path)) {
        set_err(err, errlen, "%s exists already", path);
        pz_free(path);
        return PZ_EINVAL;
    }
    if (!path_exists(path)) {
        char *wal = suffixed(path, "-wal");
        bool orphan = path_exists(wal);
        pz_free(wal);
        if (orphan) {
            set_err(err, errlen,
                    "%s is missing but %s-wal exists: refusing to start "
                    "(remove the -wal file only if the database was "
                    "deliberately deleted)",
                    path, path);
            pz_free(path);
            return PZ_ECORRUPT;
        }
        ret = create_db(dir, path, restoring, err, errlen);
        if (ret) {
            pz_free(path);
            return ret;
        }
    }
    struct store *s = pz_calloc(1, sizeof *s);
    s->path = path;
    s->vacuum_level = VACUUM_LEVEL_START;
    s->compact_level = COMPACT_LEVEL_START;
    s->step_budget_ns = STEP_NS;
    s->compact_big = UINT64_MAX;
    pz_assert(uv_mutex_init(&s->mu) == 0);
    pz_queue_init(&s->todo);
    pz_queue_init(&s->done);
    ret = open_db(s, err, errlen);
    if (ret) {
        store_close(s);
        return ret;
    }
    tail_sync(s);
    const char *env = getenv("PYAZDB_TEST_STORE_FAIL_AT");
    if (env && *env)
        s->fail_at = strtol(env, NULL, 10);
    env = getenv("PYAZDB_TEST_CHECKPOINT_FAIL");
    if (env && strcmp(env, "1") == 0)
        store_test_checkpoint_fail(s, true);
    s->errmsg[0] = '\0';
    *out = s;
    return 0;
}

int store_open(const char *dir, struct store **out, char *err, size_t errlen)
{
    return open_store(dir, false, out, err, errlen);
}

int store_create_restoring(const char *dir, struct store **out, char *err,
                           size_t errlen)
{
    return open_store(dir, true, out, err, errlen);
}

void store_close(struct store *s)
{
    if (s == NULL)
        return;
    pz_assert(s->jobs == 0);
    /* A drain whose end the loop has not seen yet runs no more batches:
     * it only closes its handle. */
    for (struct drain *d = s->drains; d; d = d->next)
        d->s = NULL;
    uv_mutex_destroy(&s->mu);
    for (size_t i = 0; i < PZ_ARRAY_SIZE(stmt_sql); i++)
        sqlite3_finalize(*stmt_slot(s, i));
    finalize_log(s);
    if (s->db)
        sqlite3_close(s->db);
    pz_free(s->path);
    pz_free(s);
}

/* --- misc ----------------------------------------------------------------- */

void store_stats(const struct store *s, struct store_stats *st)
{
    *st = s->stats;
    st->first_index = s->meta.snap_index + 1;
    st->last_index = s->last_index;
}

const char *store_errmsg(const struct store *s)
{
    return s->errmsg;
}

const char *store_path(const struct store *s)
{
    return s->path;
}

int store_test_max_pages(struct store *s, long pages)
{
    pz_assert(s->jobs == 0);
    char sql[64], out[32];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %ld",
             pages > 0 ? pages : 0x7ffffffeL);
    return pragma_row(s, sql, out, sizeof out, NULL, 0);
}

void store_test_step_budget(struct store *s, uint64_t ns)
{
    s->step_budget_ns = ns;
}

void store_test_vacuum_full(struct store *s, bool on)
{
    s->test_vacuum_full = on;
}

void store_test_checkpoint_fail(struct store *s, bool on)
{
    s->test_ckpt_fail = on;
    /* the one sqlite3_close runs too */
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, on ? 1 : 0,
                      NULL);
}

void store_fail_at(struct store *s, long n)
{
    s->fail_at = n > 0 ? n : 0;
    s->injected = false;
}
