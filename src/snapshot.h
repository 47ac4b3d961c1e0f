/* snapshot.h - snapshot files: the whole key-value table at one Raft index,
 * written atomically, verified on every read, streamed to followers.
 *
 * Files live in one directory and are named snap-<index>-<term>.snap
 * (decimal, no padding). A snapshot being written is <name>.tmp (local
 * write) or <name>.recv.tmp (InstallSnapshot receiver); it becomes a .snap
 * only by rename(2) after it was fsynced, and the directory is fsynced after
 * the rename. So a .snap is complete or absent, and the previous snapshot is
 * never touched by a new one.
 *
 * Happy path (node.c):
 *   snapshot_write_fork(dir, kv, index, term, conf, len, &child, err, n);
 *   every tick: snapshot_child_poll(&child, &done, &ok); when done and ok:
 *       truncate the log up to index, snapshot_prune(dir, 2, ...)
 *   at startup: kv = NULL; snapshot_load_newest_valid(dir, seed, pick, &kv, &meta,
 *       &path, NULL, NULL, err, n); then replay the log after meta.index
 *   leader: snapshot_reader_open(path), snapshot_reader_read(...) per chunk
 *   follower: snapshot_receiver_begin, _write per chunk, _finish loading
 *       into a fresh table (the check and the load are one pass)
 *
 * File format, version 3 (versions 1, written before revisions existed,
 * and 2, before leases, are still read: see below). Integers are big-endian and unsigned unless
 * stated otherwise:
 *
 *   offset  size      field
 *   0       8         magic "PYAZSNAP"
 *   8       4         format version (3)
 *   12      8         index: last Raft index the table includes
 *   20      8         term of the entry at index
 *   28      8         created: unix time in milliseconds (signed)
 *   36      8         nkeys: number of key/value records
 *   44      4         conf_len (at most SNAPSHOT_CONF_MAX)
 *   48      conf_len  Raft configuration as of index (raft_conf_encode
 *                     output; opaque to this module)
 *           8         revision of the table (kv_revision)
 *           4         nleases (at most KV_LEASE_HARD_MAX)
 *   then nleases lease records, ids strictly increasing:
 *           8         lease id (1..KV_LEASE_ID_MAX)
 *           8         ttl in seconds (1..KV_LEASE_TTL_MAX)
 *   then nkeys records, in key order:
 *           4         klen (at most KV_KEY_MAX)
 *           4         vlen (at most KV_VALUE_MAX)
 *           8         create_revision
 *           8         mod_revision
 *           8         version
 *           8         lease id (0, or one of the leases above)
 *           klen      key bytes (any bytes, NUL included)
 *           vlen      value bytes
 *   trailer:
 *           8         end marker "PYAZEND\n"
 *           8         checksum: CRC-64/XZ (snapshot_crc64) of every byte
 *                     of the file before this field
 *
 * Nothing follows the checksum. A reader refuses a file whose magic,
 * version, lengths, record count, end marker, size or checksum is wrong,
 * whose index or term is at or above RAFT_LIMIT (2^62: no log gets there,
 * and peers refuse such numbers) or whose revision is above
 * KV_REVISION_MAX (2^62 - 1), anything but a regular file (a FIFO named
 * like a snapshot is refused, never waited on),
 * a record whose metadata no sequence of commands produces (created after
 * modified, modified after the table's revision, version 0 or above the
 * revisions between creation and modification), and a file holding the
 * same key twice, a lease record out of range or out of order, and a key
 * naming a lease the file does not hold. A new format gets a new version number; readers keep
 * accepting the old ones.
 *
 * Version 1 has no revision field, and records are klen, vlen, key,
 * value. It kept no history, so its keys load with create_revision =
 * mod_revision = the snapshot's index (1 if that is 0) and version 1,
 * and the table's revision is that same number (later writes get higher
 * revisions). Nodes that load version-1 snapshots of different indexes
 * therefore disagree about those keys' metadata (and their digests say so)
 * until the keys are written again: upgrade a cluster by restoring a backup
 * taken with the new version, or take a snapshot on the leader and let it
 * install.
 *
 * Version 2 is version 3 without the lease count and lease records. Its
 * writers kept no lease table and never checked a key's lease id, so its
 * keys load with lease 0.
 *
 * CRC-64 detects every error burst up to 64 bits and misses a random
 * corruption with probability 2^-64; it guards against damage and
 * truncation, not against someone forging a file.
 *
 * Errors: every function returns 0 or a negative code and writes a message
 * naming the file and the problem into err (err may be NULL).
 * PZ_ECORRUPT: the file is not a valid snapshot (the message says why:
 * bad magic, unsupported version, truncated, checksum mismatch, ...).
 * PZ_ENOTFOUND: no such file / no snapshot. Negative errno values: a
 * system call failed (disk full, permission, ...).
 *
 * Threads and processes: call everything from the loop thread, but for
 * snapshot_receiver_finish (with the load into a new table), which the
 * node runs on libuv's thread pool: nothing else touches that receiver or
 * table meanwhile, and the module keeps no state between calls (its CRC
 * tables are set up once, under pthread_once). Loading and the
 * synchronous writer block their thread for as long as the file takes;
 * snapshot_write_fork does the writing in a child process. Not pure:
 * files, fork, the wall clock (creation time). */
#ifndef PZ_SNAPSHOT_H
#define PZ_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kv.h"
#include "raft_codec.h"

#define SNAPSHOT_MAGIC "PYAZSNAP"      /* first 8 bytes of a file */
#define SNAPSHOT_END_MAGIC "PYAZEND\n" /* first 8 bytes of the trailer */
#define SNAPSHOT_VERSION 3             /* format written by this code */
#define SNAPSHOT_RECORD_HEADER 40      /* lengths and metadata (v2) */
#define SNAPSHOT_HEADER_SIZE 48        /* fixed part, before the conf */
#define SNAPSHOT_TRAILER_SIZE 16       /* end marker + checksum */
#define SNAPSHOT_CONF_MAX (1u << 24)   /* longest configuration blob */
#define SNAPSHOT_PATH_MAX 4096         /* path buffers, NUL included */
#define SNAPSHOT_ERRMSG_SIZE 512       /* err buffers that fit any message */

/* Failpoints (failpoint.h) of this module. The rename points fire in
 * every writer: snapshot_write, the forked child, the receiver's finish.
 *   snapshot-mid-write       writer, after its first 1 MiB write(2): the
 *                            .tmp is partial
 *   snapshot-before-rename   the .tmp is complete and fsynced, no .snap yet
 *   snapshot-after-rename    the .snap is in place, directory fsynced, the
 *                            caller not yet told
 *   install-mid              receiver, right after the first chunk */
#define SNAPSHOT_FP_MID_WRITE "snapshot-mid-write"
#define SNAPSHOT_FP_BEFORE_RENAME "snapshot-before-rename"
#define SNAPSHOT_FP_AFTER_RENAME "snapshot-after-rename"
#define SNAPSHOT_FP_INSTALL_MID "install-mid"

/* What a snapshot's header says, plus facts about the file. */
struct snapshot_meta {
    uint64_t index;     /* last Raft index included */
    uint64_t term;      /* term of that entry */
    int64_t created_ms; /* unix time (ms) the writer started */
    uint64_t nkeys;     /* number of records */
    uint32_t version;   /* file format version */
    uint64_t revision;  /* the table's revision (v1: the index) */
    uint32_t nleases;   /* lease records (v3) */
    uint8_t *conf;      /* configuration bytes (pz_malloc, owned; NULL
                           when conf_len is 0) */
    size_t conf_len;    /* length of conf */
    uint64_t file_size; /* bytes in the file */
    uint64_t checksum;  /* stored checksum (0 from snapshot_peek) */
};

/* Frees meta->conf and zeroes *meta. NULL or an all-zero meta is fine. */
void snapshot_meta_free(struct snapshot_meta *meta);

/* CRC-64/XZ (ECMA-182 polynomial, reflected, initial value and final XOR
 * all ones). Incremental: start with crc = 0 and feed the bytes in any
 * number of pieces; snapshot_crc64(snapshot_crc64(0, a), b) equals the CRC
 * of a followed by b. The CRC of "123456789" is 0x995dc9bbdf1939fa. */
uint64_t snapshot_crc64(uint64_t crc, const void *data, size_t len);
/* snapshot_crc64 with the byte tables only (slicing by 8), whatever the
 * CPU: the same values, for tests. */
uint64_t snapshot_crc64_portable(uint64_t crc, const void *data, size_t len);
/* snapshot_crc64 uses carry-less multiplication (x86-64 with PCLMULQDQ)
 * for pieces of 256 bytes and more. */
bool snapshot_crc64_accelerated(void);

/* Writes "<dir>/snap-<index>-<term>.snap" into buf (len bytes). Returns 0
 * or PZ_ETOOBIG if it does not fit. */
int snapshot_path(const char *dir, uint64_t index, uint64_t term, char *buf,
                  size_t len);

/* --- writing -------------------------------------------------------------- */

/* What a snapshot covers: its point in the log and the configuration as
 * of there. */
struct snapshot_point {
    uint64_t index;      /* last Raft index included */
    uint64_t term;       /* term of that entry */
    const uint8_t *conf; /* configuration bytes (raft_conf_encode),
                            borrowed; NULL when conf_len is 0 */
    size_t conf_len;     /* their length */
};

/* Write kv (borrowed, unchanged) as the snapshot at `at` into dir, in
 * this process: <name>.tmp, fsync, rename to <name>.snap, fsync dir. On
 * success the path is copied to path_out when it is not NULL (pathlen
 * bytes). On failure the .tmp is removed and no .snap was created (an
 * existing file of the same name is left as it was). Blocks for the whole
 * write: for tests, tools and small tables. Returns 0, PZ_EINVAL
 * (at->conf_len > SNAPSHOT_CONF_MAX), PZ_ETOOBIG (path too long) or a negative
 * errno. */
int snapshot_write(const char *dir, const struct kv *kv,
                   const struct snapshot_point *at, char *path_out,
                   size_t pathlen, char *err, size_t errlen);

/* A snapshot being written by a child process. Embed it in the owner; it
 * holds no heap memory, only the child's pid and a pipe. */
struct snapshot_child {
    pid_t pid;                         /* child; 0 when none is running */
    int msg_fd;                        /* read end of the child's error pipe,
                                          -1 when none */
    uint64_t index;                    /* snapshot being written */
    uint64_t term;                     /* its term */
    uint64_t started_ms;               /* monotonic ms when forked */
    uint64_t fork_us;                  /* how long fork() took (us) */
    int status;                        /* waitpid status once reaped */
    char path[SNAPSHOT_PATH_MAX];      /* final .snap path */
    char tmp[SNAPSHOT_PATH_MAX];       /* the .tmp the child writes */
    char errmsg[SNAPSHOT_ERRMSG_SIZE]; /* why it failed ("" on success) */
};

/* Start writing kv as the snapshot at `at` in a child process
 * (Redis BGSAVE): the parent opens the .tmp, forks and returns at once;
 * the child sees the table as it was at fork() (copy-on-write), so the
 * caller may go on mutating kv, even freeing it. The child writes with
 * large buffered write(2)s (no allocation, no libuv), fsyncs, renames,
 * fsyncs the directory and _exit()s: 0 on success, otherwise 1 after
 * sending a message down a pipe. It closes the descriptors it does not
 * need (listening sockets, peer connections, the Raft database) and dies
 * with its parent (PR_SET_PDEATHSIG), so a killed node leaves no writer
 * behind. *h must not hold a running child (h->pid == 0); it is
 * initialized by this call. Returns 0 (h->pid set), PZ_EINVAL, PZ_ETOOBIG
 * or a negative errno (no child was started, nothing is left on disk). */
int snapshot_write_fork(const char *dir, const struct kv *kv,
                        const struct snapshot_point *at,
                        struct snapshot_child *h, char *err, size_t errlen);

/* Reap the child without blocking (waitpid WNOHANG). If it is still
 * running: *done = false. If it ended: *done = true, *ok = whether the
 * .snap is in place; on failure h->errmsg says why and the .tmp has been
 * removed; h->pid is 0 either way and h may be reused. With h->pid == 0
 * (no child): *done = true, *ok = false. Returns 0, or a negative errno
 * if waitpid failed (h unchanged).
 *
 * If the child stopped at a failpoint (exit status PZ_FAILPOINT_EXIT) and
 * PYAZDB_FAILPOINT is set, this process exits with that status too: the
 * files are exactly as the crash left them and the node goes no further. */
int snapshot_child_poll(struct snapshot_child *h, bool *done, bool *ok);

/* For shutdown or a snapshot that became pointless: SIGKILL the child,
 * wait for it (blocking, briefly), remove its .tmp. No-op when h->pid is
 * 0. A .snap the child managed to rename before the kill stays (it is
 * complete). */
void snapshot_child_kill(struct snapshot_child *h);

/* Delete older snapshots in dir, keeping the `keep` newest .snap files (by
 * index, then term; keep >= 1), and delete every *.tmp (interrupted writes
 * and transfers). Must not run while a snapshot_child or a receiver is
 * writing into dir: it would remove their .tmp. Files that do not look like
 * snapshots are left alone. *removed (may be NULL) gets the number of files
 * deleted. Returns 0, PZ_EINVAL (keep < 1) or a negative errno (the first
 * failure; the other files were still processed). */
int snapshot_prune(const char *dir, size_t keep, size_t *removed, char *err,
                   size_t errlen);

/* A snapshot by name. */
struct snapshot_id {
    uint64_t index; /* last index covered */
    uint64_t term;  /* its term */
};

/* Like snapshot_prune, but keeps exactly the snapshots listed in keep
 * (nkeep entries; those absent are no error) and deletes every other
 * .snap, newer ones included: a file that is not the node's own durable
 * snapshot (say, a received one whose install never happened) can never
 * push the one that covers the compacted log out. */
int snapshot_prune_except(const char *dir, const struct snapshot_id *keep,
                          size_t nkeep, size_t *removed, char *err,
                          size_t errlen);

/* Delete every *.tmp in dir (what a crash left of interrupted writes and
 * transfers), at startup. Returns as snapshot_prune. */
int snapshot_remove_temp(const char *dir, size_t *removed, char *err,
                         size_t errlen);

/* --- reading -------------------------------------------------------------- */

/* One .snap file found by snapshot_list. */
struct snapshot_info {
    uint64_t index; /* from the file name */
    uint64_t term;  /* from the file name */
    char *path;     /* dir/name (pz_malloc, owned by the list) */
};

/* The .snap files of dir, newest first (higher index first, then higher
 * term). Only names of the exact form snap-<index>-<term>.snap count; their
 * contents are not read. *out is NULL when *n is 0. Free with
 * snapshot_list_free. Returns 0 (a missing dir is an empty list) or a
 * negative errno. */
int snapshot_list(const char *dir, struct snapshot_info **out, size_t *n,
                  char *err, size_t errlen);
void snapshot_list_free(struct snapshot_info *list, size_t n);

/* Read the fixed header and conf of path into *meta (file_size set,
 * checksum 0) without reading or checking the rest: fast, but the values
 * are unverified. For a leader filling in an InstallSnapshot message from a
 * file it loaded or wrote itself. Returns 0, PZ_ENOTFOUND, PZ_ECORRUPT or a
 * negative errno; on error *meta is zeroed. */
int snapshot_peek(const char *path, struct snapshot_meta *meta, char *err,
                  size_t errlen);

/* Load path into `into`, which should be a fresh, empty table: every
 * record is kv_set into it. Checks everything the file comment lists. On
 * success fills *meta (may be NULL; free with snapshot_meta_free) and
 * returns 0. On failure returns PZ_ECORRUPT, PZ_ENOTFOUND or a negative
 * errno with a message naming the file and what is wrong; `into` may then
 * hold part of the file and must be discarded (kv_free), *meta is zeroed.
 * Reads in large blocks: no system call per key. */
int snapshot_load(const char *path, struct kv *into, struct snapshot_meta *meta,
                  char *err, size_t errlen);

/* Like snapshot_load, but builds no table: only checks the file (all but
 * a repeated key, which only loading finds). */
int snapshot_verify(const char *path, struct snapshot_meta *meta, char *err,
                    size_t errlen);

/* Called by snapshot_load_newest_valid for each file it skips: rc is the
 * snapshot_load error, msg its message. */
typedef void (*snapshot_damaged_cb)(void *arg, const char *path, int rc,
                                    const char *msg);

/* How snapshot_load_newest_valid picks (every member optional). */
struct snapshot_pick {
    /* Whether the snapshot named (index, term) may be used at all (the
     * stored log agrees with it, say); files refused here are not read. */
    bool (*accept)(void *arg, uint64_t index, uint64_t term);
    /* Whether a loaded file is usable beyond the file checks (its
     * configuration decodes, say); false: treated as damaged, with why
     * written into msg (msglen bytes). */
    bool (*check)(void *arg, const struct snapshot_meta *meta, char *msg,
                  size_t msglen);
    snapshot_damaged_cb damaged; /* each file skipped as damaged; NULL:
                                    logged as a warning */
    void *arg;                   /* passed to the three */
};

/* Load the newest .snap of dir that pick accepts and that loads cleanly
 * with the index and term of its name in its header (and passes
 * pick->check), trying older ones in turn. Each attempt loads
 * into a new kv_new_seeded(seed); a damaged file's table is freed and the
 * file reported (pick->damaged, else a warning); damaged files are not
 * deleted. pick may be NULL. On success *out is the table (the caller owns
 * it), *meta filled (may be NULL), *path_out (may be NULL) a pz_malloc'd
 * copy of the file's path for the caller to pz_free. Returns 0;
 * PZ_ENOTFOUND if dir holds no .snap that pick accepts (or does not
 * exist); PZ_ECORRUPT if there are such snapshots but none is valid (err
 * says how many); a negative errno if listing failed. */
int snapshot_load_newest_valid(const char *dir, uint64_t seed,
                               const struct snapshot_pick *pick,
                               struct kv **out, struct snapshot_meta *meta,
                               char **path_out, char *err, size_t errlen);

/* --- streaming (InstallSnapshot) ------------------------------------------ */

/* A snapshot file opened for sending in chunks. Holds the descriptor, so
 * the file can be read to the end even if snapshot_prune deletes it in the
 * meantime. */
struct snapshot_reader;

/* Open path for chunked reading. Returns 0 and *out, PZ_ENOTFOUND or a
 * negative errno. */
int snapshot_reader_open(const char *path, struct snapshot_reader **out,
                         char *err, size_t errlen);
/* Size of the file in bytes (fixed at open). */
uint64_t snapshot_reader_size(const struct snapshot_reader *r);
/* Copy up to len bytes at offset into buf (pread; any offset, any order).
 * *got is len, or less only when the end of the file is reached (0 at or
 * past the end). Returns 0 or a negative errno. */
int snapshot_reader_read(struct snapshot_reader *r, uint64_t offset, void *buf,
                         size_t len, size_t *got, char *err, size_t errlen);
/* Close and free. NULL is fine. */
void snapshot_reader_close(struct snapshot_reader *r);

/* A snapshot being received from the leader into <name>.recv.tmp. */
struct snapshot_receiver;

/* Start receiving snapshot (index, term) of total_size bytes into dir.
 * Creates (truncating a stale one) <dir>/snap-<index>-<term>.recv.tmp; an
 * existing .snap is not touched. Returns 0 and *out, PZ_EINVAL (total_size
 * smaller than the smallest valid file), PZ_ETOOBIG or a negative errno. */
int snapshot_receiver_begin(const char *dir, uint64_t index, uint64_t term,
                            uint64_t total_size, struct snapshot_receiver **out,
                            char *err, size_t errlen);
/* Append a chunk of len bytes at offset. offset must equal
 * snapshot_receiver_offset(r) (chunks arrive contiguous and in order; a
 * resent chunk is refused like a gap, the caller tells the leader the
 * offset it expects) and offset + len must not exceed total_size. Returns
 * 0, PZ_EINVAL (gap, resend, overlap or past the end: nothing written, the
 * transfer can go on at snapshot_receiver_offset) or a negative errno
 * (write failed: abort the transfer). */
int snapshot_receiver_write(struct snapshot_receiver *r, uint64_t offset,
                            const void *data, size_t len, char *err,
                            size_t errlen);
/* Bytes received so far: the offset the next chunk must start at. */
uint64_t snapshot_receiver_offset(const struct snapshot_receiver *r);
/* Finish: requires all total_size bytes; fsyncs, checks the whole file
 * (format and checksum, and that its header says index and term), renames
 * it to snap-<index>-<term>.snap and fsyncs dir. With into (a fresh, empty
 * table) the check is snapshot_load into it, which also refuses a
 * repeated key, and the caller keeps the loaded table; NULL: the check is
 * snapshot_verify. Frees r in every case. On success copies the .snap path
 * to path_out (pathlen bytes; may be NULL) and fills *meta (may be NULL).
 * On failure removes the .tmp and returns PZ_EINVAL (incomplete),
 * PZ_ECORRUPT (the check failed; discard into) or a negative errno; the
 * previous snapshots are untouched. */
int snapshot_receiver_finish(struct snapshot_receiver *r, struct kv *into,
                             char *path_out, size_t pathlen,
                             struct snapshot_meta *meta, char *err,
                             size_t errlen);
/* A flag that calls off the check of snapshot_receiver_finish running on
 * another thread (the node closing): once it is non-zero, the check ends
 * within 4096 records and the finish fails with PZ_ECANCELED, the .tmp
 * removed. NULL (the default): never. */
void snapshot_receiver_stop_on(struct snapshot_receiver *r, const int *stop);
/* Give up: close and remove the .tmp, free r. NULL is fine. */
void snapshot_receiver_abort(struct snapshot_receiver *r);

/* --- which chunks a follower takes (pure) ----------------------------------
 * Only the leader the follower follows, in its current term, may stream a
 * snapshot to it, one at a time, and only one that covers more than it has
 * committed and is at most max_size bytes. */

/* What the follower knows when a chunk arrives. */
struct snapshot_rx_view {
    uint64_t self;       /* its own id */
    uint64_t leader;     /* the leader it follows, 0: none */
    uint64_t term;       /* its current term */
    uint64_t commit;     /* its commit index */
    bool receiving;      /* a transfer is in progress: */
    uint64_t rx_from;    /*   from this peer */
    uint64_t rx_index;   /*   of this snapshot */
    uint64_t rx_term;    /*   and term */
    uint64_t rx_offset;  /*   bytes received so far */
    uint64_t rx_total;   /*   announced size */
    uint64_t have_index; /* received whole, awaiting its install (0: none) */
    uint64_t have_term;  /* its term */
    uint64_t max_size;   /* largest snapshot it takes */
};

enum snapshot_rx_action {
    SNAPSHOT_RX_IGNORE = 0, /* drop the chunk, change nothing */
    SNAPSHOT_RX_STALE,      /* drop it; a transfer in progress from the
                               same sender is over too (it no longer leads
                               in our term, or a piece went missing) */
    SNAPSHOT_RX_INVALID,    /* no correct leader sends it: drop the link */
    SNAPSHOT_RX_TOO_BIG,    /* the start of a snapshot over max_size: end
                               any transfer, refuse this one (say why) */
    SNAPSHOT_RX_BEGIN,      /* end any transfer, start this one */
    SNAPSHOT_RX_WRITE,      /* the next piece of the transfer in progress */
};

/* The action for chunk c from peer `from`. A chunk is INVALID when its
 * index is 0 or at least RAFT_LIMIT, its snapshot term is 0 or above its
 * term, its total is smaller than a snapshot can be, or it does not fit in
 * its total; STALE when it does not come from our leader in our term (or
 * we lead, or it has no term: a node of an older version sent it), or is not the next piece of the transfer in progress (the
 * leader's queue dropped one: the transfer fails, the leader retries);
 * IGNORE for a snapshot we do not need (at or below our commit, or the one
 * we hold already) and for the rest of a transfer we gave up on. */
int snapshot_rx_decide(const struct snapshot_rx_view *v, uint64_t from,
                       const struct raft_snap_chunk *c);

#endif
