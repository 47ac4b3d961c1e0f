/* snapshot.c - snapshot files (format and contracts in snapshot.h): the
 * buffered writer shared by the in-process and the forked path, the
 * verifying loader, listing and pruning, and the chunked sender/receiver
 * of InstallSnapshot.
 *
 * Happy path: snapshot_write_fork() opens <name>.tmp and forks; the child
 * walks the table (its copy-on-write view) into a 1 MiB buffer flushed with
 * write(2) (each 4 MiB then handed to writeback, see w_write), CRCs each
 * flushed block, appends the trailer, fsyncs, renames
 * the file to <name>.snap, fsyncs the directory and exits 0. The parent
 * polls with waitpid(WNOHANG). snapshot_load() reads 1 MiB blocks, CRCs
 * them as they arrive and kv_sets every record straight out of the block.
 *
 * Failure modes: a failed write leaves no .snap (the .tmp is removed by
 * whoever notices: the sync writer, the poller, prune); a crash leaves at
 * most a stray .tmp. Every defect of a file found while reading is
 * PZ_ECORRUPT with the path and the reason; nothing is repaired. The child
 * reports its error through a pipe as one short message and exits 1. */
#include "snapshot.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "failpoint.h"
#include "log.h"
#include "pz.h"

#define IO_BUF_SIZE (1u << 20)           /* write buffer and read block size */
#define CRC64_POLY 0xc96c5795d7870f42ull /* ECMA-182, reflected */
#define TMP_SUFFIX ".tmp"
#define RECV_TMP_SUFFIX ".recv.tmp"
#define SNAP_PREFIX "snap-"
#define SNAP_SUFFIX ".snap"
#define MIN_FILE_SIZE (SNAPSHOT_HEADER_SIZE + SNAPSHOT_TRAILER_SIZE)

/* --- small helpers -------------------------------------------------------- */

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

/* Untranslated and allocation-free: usable in the forked child. */
static const char *errstr(int e)
{
    if (e < 0)
        e = -e;
    const char *s = strerrordesc_np(e);
    return s ? s : "unknown error";
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* "<dir>/snap-<index>-<term><suffix>" into buf. */
static int name_path(const char *dir, uint64_t index, uint64_t term,
                     const char *suffix, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/" SNAP_PREFIX "%" PRIu64 "-%" PRIu64 "%s",
                     dir, index, term, suffix);
    return n < 0 || (size_t)n >= len ? PZ_ETOOBIG : 0;
}

int snapshot_path(const char *dir, uint64_t index, uint64_t term, char *buf,
                  size_t len)
{
    return name_path(dir, index, term, SNAP_SUFFIX, buf, len);
}

void snapshot_meta_free(struct snapshot_meta *meta)
{
    if (meta == NULL)
        return;
    pz_free(meta->conf);
    memset(meta, 0, sizeof(*meta));
}

/* --- CRC-64/XZ: slicing by 8, and carry-less multiplication ------------
 * A reflected CRC register after a message M is M(x) * x^64 mod P, the
 * message's first bit its highest coefficient. The x86-64 path keeps four
 * 128-bit lanes of the message and folds each over the 512 bits that follow
 * it with PCLMULQDQ: a lane L * x^64 + H (L its first 8 bytes) 512 bits
 * before the end is worth L * (x^(512+64) mod P) + H * (x^512 mod P) there.
 * In this bit order a 64x64 carry-less product comes out one bit short of
 * the 128-bit lane's frame, so the constants are x^(d+63) and x^(d-1) mod
 * P for a fold over d bits. The lanes are then folded into one, and the
 * last 16 bytes of state and the tail go through the tables, which reduce
 * them mod P. The constants are computed in crc_init, not typed in. */

static uint64_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__)
#define CRC_CLMUL 1
/* Shorter: the tables. The carry-less path needs one 64-byte block;
 * from there on it is faster (a log entry of 64 to 255 bytes, the
 * common size, takes about half the time the tables take). */
#define CLMUL_MIN 64
static bool crc_clmul_ok;       /* the CPU has PCLMULQDQ */
static uint64_t crc_fold[4][2]; /* x^(d+63), x^(d-1) mod P, d = 512, 384,
                                   256, 128 bits, bit-reflected */
#endif

/* x^n mod P, bit-reflected as the register holds it. */
static uint64_t xpow_mod(unsigned n)
{
    uint64_t r = 1; /* x^0, unreflected: bit i is x^i */
    const uint64_t poly = 0x42f0e1eba9ea3693ull; /* CRC64_POLY unreflected */
    for (unsigned i = 0; i < n; i++)
        r = (r << 1) ^ ((r >> 63) ? poly : 0);
    uint64_t out = 0;
    for (int i = 0; i < 64; i++)
        out |= ((r >> i) & 1) << (63 - i);
    return out;
}

static void crc_init_once(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ CRC64_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    for (unsigned i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) {
            uint64_t c = crc_table[t - 1][i];
            crc_table[t][i] = (c >> 8) ^ crc_table[0][c & 0xff];
        }
#ifdef CRC_CLMUL
    for (unsigned i = 0; i < 4; i++) {
        unsigned d = 512 - 128 * i;
        crc_fold[i][0] = xpow_mod(d + 63);
        crc_fold[i][1] = xpow_mod(d - 1);
    }
    __builtin_cpu_init();
    crc_clmul_ok =
        __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
}

/* Thread-safe: the store's worker thread CRCs log entries too. */
static void crc_init(void)
{
    pthread_once(&crc_once, crc_init_once);
}

/* The register (not inverted) after the bytes. */
static uint64_t crc_tables(uint64_t crc, const uint8_t *p, size_t len)
{
    while (len >= 8) {
        uint64_t w = (uint64_t)p[0] | (uint64_t)p[1] << 8 |
                     (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
                     (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 |
                     (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
        crc ^= w;
        crc = crc_table[7][crc & 0xff] ^ crc_table[6][(crc >> 8) & 0xff] ^
              crc_table[5][(crc >> 16) & 0xff] ^
              crc_table[4][(crc >> 24) & 0xff] ^
              crc_table[3][(crc >> 32) & 0xff] ^
              crc_table[2][(crc >> 40) & 0xff] ^
              crc_table[1][(crc >> 48) & 0xff] ^ crc_table[0][crc >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef CRC_CLMUL
/* One lane folded over d bits (k: that distance's constants) onto next. */
__attribute__((target("pclmul,sse4.1"))) static inline __m128i
fold(__m128i lane, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(lane, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(lane, k, 0x11);
    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

/* The register after the bytes; len >= CLMUL_MIN. */
__attribute__((target("pclmul,sse4.1"))) static uint64_t
crc_clmul(uint64_t crc, const uint8_t *p, size_t len)
{
    __m128i k[4];
    for (int i = 0; i < 4; i++)
        k[i] = _mm_set_epi64x((long long)crc_fold[i][1],
                              (long long)crc_fold[i][0]);
    __m128i x0 = _mm_loadu_si128((const __m128i *)p);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    /* The register is the message's first 64 bits' complement so far. */
    x0 = _mm_xor_si128(x0, _mm_set_epi64x(0, (long long)crc));
    p += 64;
    len -= 64;
    while (len >= 64) {
        x0 = fold(x0, k[0], _mm_loadu_si128((const __m128i *)p));
        x1 = fold(x1, k[0], _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = fold(x2, k[0], _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = fold(x3, k[0], _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        len -= 64;
    }
    x3 = fold(x0, k[1], x3);
    x3 = fold(x1, k[2], x3);
    x3 = fold(x2, k[3], x3);
    while (len >= 16) {
        x3 = fold(x3, k[3], _mm_loadu_si128((const __m128i *)p));
        p += 16;
        len -= 16;
    }
    /* The state as a 16-byte message from a zero register is state *
     * x^64 mod P: the register after it. */
    uint8_t st[16];
    _mm_storeu_si128((__m128i *)st, x3);
    return crc_tables(crc_tables(0, st, 16), p, len);
}
#endif

uint64_t snapshot_crc64(uint64_t crc, const void *data, size_t len)
{
    crc_init();
#ifdef CRC_CLMUL
    if (crc_clmul_ok && len >= CLMUL_MIN)
        return ~crc_clmul(~crc, data, len);
#endif
    return ~crc_tables(~crc, data, len);
}

uint64_t snapshot_crc64_portable(uint64_t crc, const void *data, size_t len)
{
    crc_init();
    return ~crc_tables(~crc, data, len);
}

bool snapshot_crc64_accelerated(void)
{
    crc_init();
#ifdef CRC_CLMUL
    return crc_clmul_ok;
#else
    return false;
#endif
}

/* --- writer --------------------------------------------------------------- */

/* Buffered writer of one file. Allocates nothing: the buffer is given. */
struct writer {
    int fd;           /* the .tmp */
    uint8_t *buf;     /* IO_BUF_SIZE bytes */
    size_t len;       /* bytes buffered */
    uint64_t crc;     /* CRC of every byte flushed so far */
    uint64_t records; /* records written */
    int flushes;      /* flushes so far (for the mid-write failpoint) */
    int err;          /* first error (negative errno), then sticky */
    uint64_t off;     /* bytes written to fd */
    uint64_t queued;  /* ... of which handed to writeback (w_write) */
};

/* A snapshot's bytes go to the disk as they are written, SYNC_CHUNK at a
 * time, rather than all at the final fsync: a machine with gigabytes of
 * memory starts writeback only once a tenth of it is dirty, so a 1.5 GB
 * snapshot was flushed in one go at its end, and every fdatasync of the
 * Raft log on the same disk (this node's and, on one machine, its peers')
 * waited behind it. Each full chunk is handed to writeback at once and the
 * one before it is waited for, so at most two chunks are dirty. The final
 * fsync still decides durability; a failed sync_file_range (a file system
 * without it) only gives the old behaviour back. */
#define SYNC_CHUNK (4u << 20)

static int w_write(struct writer *w, const void *p, size_t n)
{
    int rc = write_all(w->fd, p, n);
    if (rc)
        return rc;
    w->off += n;
    while (w->off - w->queued >= SYNC_CHUNK) {
        (void)sync_file_range(w->fd, (off64_t)w->queued, SYNC_CHUNK,
                              SYNC_FILE_RANGE_WRITE);
        if (w->queued >= SYNC_CHUNK)
            (void)sync_file_range(w->fd, (off64_t)(w->queued - SYNC_CHUNK),
                                  SYNC_CHUNK,
                                  SYNC_FILE_RANGE_WAIT_BEFORE |
                                      SYNC_FILE_RANGE_WRITE |
                                      SYNC_FILE_RANGE_WAIT_AFTER);
        w->queued += SYNC_CHUNK;
    }
    return 0;
}

static int w_flush(struct writer *w)
{
    if (w->err || w->len == 0)
        return w->err;
    w->crc = snapshot_crc64(w->crc, w->buf, w->len);
    w->err = w_write(w, w->buf, w->len);
    w->len = 0;
    if (++w->flushes == 1)
        pz_failpoint(SNAPSHOT_FP_MID_WRITE);
    return w->err;
}

/* Fills the buffer completely before each flush, so every write(2) but
 * the last is exactly IO_BUF_SIZE bytes. */
static void w_put(struct writer *w, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0 && w->err == 0) {
        if (w->len == 0 && n >= IO_BUF_SIZE) { /* a huge value: direct */
            w->crc = snapshot_crc64(w->crc, p, n);
            w->err = w_write(w, p, n);
            return;
        }
        size_t c = PZ_MIN(n, IO_BUF_SIZE - w->len);
        memcpy(w->buf + w->len, p, c);
        w->len += c;
        p += c;
        n -= c;
        if (w->len == IO_BUF_SIZE)
            w_flush(w);
    }
}

static int w_record(void *arg, const struct kv_view *v)
{
    struct writer *w = arg;
    uint8_t h[SNAPSHOT_RECORD_HEADER];
    pz_put_u32(h, (uint32_t)v->klen);
    pz_put_u32(h + 4, (uint32_t)v->vlen);
    pz_put_u64(h + 8, v->meta.create_revision);
    pz_put_u64(h + 16, v->meta.mod_revision);
    pz_put_u64(h + 24, v->meta.version);
    pz_put_u64(h + 32, v->meta.lease);
    w_put(w, h, sizeof h);
    w_put(w, v->key, v->klen);
    w_put(w, v->value, v->vlen);
    w->records++;
    return w->err;
}

/* What goes into a header besides the table. */
struct header {
    uint64_t index;      /* snapshot index */
    uint64_t term;       /* its term */
    int64_t created_ms;  /* wall clock at the start */
    uint64_t nkeys;      /* kv_count at the start */
    const uint8_t *conf; /* configuration bytes (borrowed) */
    size_t conf_len;     /* their length */
};

/* Write the whole file to fd, fsync it (fd stays open). Returns 0 or a
 * negative errno, with a message in msg. Allocates nothing. */
static int write_contents(int fd, const struct kv *kv, const struct header *hd,
                          uint8_t *buf, const char *tmp, char *msg,
                          size_t msglen)
{
    struct writer w = {.fd = fd, .buf = buf};
    uint8_t h[SNAPSHOT_HEADER_SIZE];
    memcpy(h, SNAPSHOT_MAGIC, 8);
    pz_put_u32(h + 8, SNAPSHOT_VERSION);
    pz_put_u64(h + 12, hd->index);
    pz_put_u64(h + 20, hd->term);
    pz_put_u64(h + 28, (uint64_t)hd->created_ms);
    pz_put_u64(h + 36, hd->nkeys);
    pz_put_u32(h + 44, (uint32_t)hd->conf_len);
    w_put(&w, h, sizeof h);
    if (hd->conf_len)
        w_put(&w, hd->conf, hd->conf_len);
    uint8_t rev[12];
    pz_put_u64(rev, kv_revision(kv));
    pz_put_u32(rev + 8, (uint32_t)kv_lease_count(kv));
    w_put(&w, rev, sizeof rev);
    for (size_t i = 0; i < kv_lease_count(kv); i++) {
        struct kv_lease l;
        uint8_t lr[16];
        kv_lease_at(kv, i, &l);
        pz_put_u64(lr, l.id);
        pz_put_u64(lr + 8, l.ttl);
        w_put(&w, lr, sizeof lr);
    }
    kv_foreach_view(kv, w_record, &w);
    if (w.err == 0 && w.records != hd->nkeys) {
        set_err(msg, msglen,
                "%s: table has %" PRIu64 " entries, expected "
                "%" PRIu64,
                tmp, w.records, hd->nkeys);
        return PZ_EINVAL;
    }
    w_put(&w, SNAPSHOT_END_MAGIC, 8);
    if (w_flush(&w) == 0) {
        uint8_t c[8];
        pz_put_u64(c, w.crc);
        w.err = write_all(fd, c, sizeof c);
    }
    if (w.err) {
        set_err(msg, msglen, "%s: write: %s", tmp, errstr(w.err));
        return w.err;
    }
    if (fsync(fd) < 0) {
        int e = -errno;
        set_err(msg, msglen, "%s: fsync: %s", tmp, errstr(e));
        return e;
    }
    return 0;
}

/* Rename a synced tmp into place and make the rename durable. */
static int commit_file(const char *tmp, const char *path, const char *dir,
                       char *msg, size_t msglen)
{
    pz_failpoint(SNAPSHOT_FP_BEFORE_RENAME);
    if (rename(tmp, path) < 0) {
        int e = -errno;
        set_err(msg, msglen, "rename %s to %s: %s", tmp, path, errstr(e));
        return e;
    }
    int rc = pz_fsync_path(dir, true);
    if (rc) {
        set_err(msg, msglen, "%s: fsync of the directory: %s", dir, errstr(rc));
        return rc;
    }
    pz_failpoint(SNAPSHOT_FP_AFTER_RENAME);
    return 0;
}

/* Create (or truncate) a temporary file in the data directory. Neither a
 * symbolic link nor a FIFO there is written through: O_NOFOLLOW fails on
 * the one, O_NONBLOCK makes opening the other fail (no reader) instead of
 * blocking, and anything but a regular file is refused. */
static int open_tmp(const char *tmp, char *err, size_t errlen)
{
    int fd = open(
        tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
        0644);
    if (fd < 0) {
        int e = -errno;
        set_err(err, errlen, "%s: open: %s", tmp, errstr(e));
        return e;
    }
    struct stat st;
    int e = 0;
    if (fstat(fd, &st) < 0)
        e = -errno;
    else if (!S_ISREG(st.st_mode))
        e = PZ_EINVAL;
    else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
        e = -errno;
    if (e) {
        set_err(err, errlen, "%s: %s", tmp,
                e == PZ_EINVAL ? "not a regular file" : errstr(e));
        close(fd);
        return e;
    }
    return fd;
}

/* Checks and paths shared by both writers. */
static int prepare(const char *dir, const struct kv *kv,
                   const struct snapshot_point *at, struct header *hd,
                   char *path, char *tmp, char *err, size_t errlen)
{
    if (at->conf_len > SNAPSHOT_CONF_MAX ||
        (at->conf_len && at->conf == NULL)) {
        set_err(err, errlen, "%s: bad configuration blob (%zu bytes)", dir,
                at->conf_len);
        return PZ_EINVAL;
    }
    if (name_path(dir, at->index, at->term, SNAP_SUFFIX, path,
                  SNAPSHOT_PATH_MAX) ||
        name_path(dir, at->index, at->term, TMP_SUFFIX, tmp,
                  SNAPSHOT_PATH_MAX)) {
        set_err(err, errlen, "%s: directory name too long", dir);
        return PZ_ETOOBIG;
    }
    *hd = (struct header){.index = at->index,
                          .term = at->term,
                          .created_ms = wall_ms(),
                          .nkeys = kv_count(kv),
                          .conf = at->conf,
                          .conf_len = at->conf_len};
    crc_init(); /* before fork: the child then only reads the tables */
    return 0;
}

int snapshot_write(const char *dir, const struct kv *kv,
                   const struct snapshot_point *at, char *path_out,
                   size_t pathlen, char *err, size_t errlen)
{
    struct header hd;
    char path[SNAPSHOT_PATH_MAX], tmp[SNAPSHOT_PATH_MAX];
    int rc = prepare(dir, kv, at, &hd, path, tmp, err, errlen);
    if (rc)
        return rc;
    int fd = open_tmp(tmp, err, errlen);
    if (fd < 0)
        return fd;
    uint8_t *buf = pz_malloc(IO_BUF_SIZE);
    char msg[SNAPSHOT_ERRMSG_SIZE] = "";
    rc = write_contents(fd, kv, &hd, buf, tmp, msg, sizeof msg);
    pz_free(buf);
    if (close(fd) < 0 && rc == 0) {
        rc = -errno;
        set_err(msg, sizeof msg, "%s: close: %s", tmp, errstr(rc));
    }
    if (rc == 0)
        rc = commit_file(tmp, path, dir, msg, sizeof msg);
    if (rc) {
        unlink(tmp);
        set_err(err, errlen, "%s", msg);
        return rc;
    }
    if (path_out)
        snprintf(path_out, pathlen, "%s", path);
    return 0;
}

/* --- the forked writer ---------------------------------------------------- */

static void close_range_compat(unsigned lo, unsigned hi)
{
    if (lo > hi)
        return;
    if (close_range(lo, hi, 0) == 0)
        return;
    /* Kernel without close_range: close what the limit allows. */
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > (1 << 20))
        max = 1 << 20;
    for (long fd = lo; fd <= (long)hi && fd < max; fd++)
        close((int)fd);
}

/* Close every descriptor above stderr except a and b. */
static void close_other_fds(int a, int b)
{
    unsigned lo = (unsigned)PZ_MIN(a, b), hi = (unsigned)PZ_MAX(a, b);
    if (lo > 3)
        close_range_compat(3, lo - 1);
    if (hi > lo + 1)
        close_range_compat(lo + 1, hi - 1);
    close_range_compat(hi + 1, ~0u);
}

/* The child's whole life. Never returns. */
__attribute__((noreturn)) static void
child_main(pid_t parent, int fd, int msg_fd, const struct kv *kv,
           const struct header *hd, uint8_t *buf, const char *dir,
           const char *tmp, const char *path)
{
    char msg[SNAPSHOT_ERRMSG_SIZE] = "";
    /* Die with the node: an orphan writer could race a restarted node
     * writing the same .tmp. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_IGN);
    close_other_fds(fd, msg_fd);

    int rc = write_contents(fd, kv, hd, buf, tmp, msg, sizeof msg);
    if (rc == 0 && close(fd) < 0) {
        rc = -errno;
        set_err(msg, sizeof msg, "%s: close: %s", tmp, errstr(rc));
    }
    if (rc == 0)
        rc = commit_file(tmp, path, dir, msg, sizeof msg);
    if (rc) {
        (void)write_all(msg_fd, msg, strlen(msg));
        _exit(1);
    }
    _exit(0);
}

int snapshot_write_fork(const char *dir, const struct kv *kv,
                        const struct snapshot_point *at,
                        struct snapshot_child *h, char *err, size_t errlen)
{
    struct header hd;
    memset(h, 0, sizeof(*h));
    h->msg_fd = -1;
    h->index = at->index;
    h->term = at->term;
    int rc = prepare(dir, kv, at, &hd, h->path, h->tmp, err, errlen);
    if (rc)
        return rc;
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        rc = -errno;
        set_err(err, errlen, "%s: pipe: %s", dir, errstr(rc));
        return rc;
    }
    int fd = open_tmp(h->tmp, err, errlen);
    if (fd < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return fd;
    }
    /* Everything the child needs exists before fork: it allocates nothing. */
    uint8_t *buf = pz_malloc(IO_BUF_SIZE);
    pid_t parent = getpid();
    uint64_t t0 = mono_us();
    pid_t pid = fork();
    int fork_errno = errno;
    if (pid == 0)
        child_main(parent, fd, pfd[1], kv, &hd, buf, dir, h->tmp, h->path);
    uint64_t t1 = mono_us();
    pz_free(buf);
    close(fd);
    close(pfd[1]);
    if (pid < 0) {
        close(pfd[0]);
        unlink(h->tmp);
        set_err(err, errlen, "%s: fork: %s", h->tmp, errstr(fork_errno));
        return -fork_errno;
    }
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    h->pid = pid;
    h->msg_fd = pfd[0];
    h->started_ms = t0 / 1000;
    h->fork_us = t1 - t0;
    return 0;
}

/* The child is gone: collect its message, clean up, clear the handle. */
static void child_reaped(struct snapshot_child *h, int status, bool *ok)
{
    char msg[SNAPSHOT_ERRMSG_SIZE];
    ssize_t n = -1;
    if (h->msg_fd >= 0) {
        n = read(h->msg_fd, msg, sizeof msg - 1);
        close(h->msg_fd);
        h->msg_fd = -1;
    }
    msg[n > 0 ? n : 0] = '\0';
    pid_t pid = h->pid;
    h->pid = 0;
    h->status = status;
    *ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (*ok) {
        h->errmsg[0] = '\0';
        return;
    }
    /* A failpoint simulates a crash of the node: leave the files as the
     * child left them and go no further. */
    if (WIFEXITED(status) && WEXITSTATUS(status) == PZ_FAILPOINT_EXIT &&
        getenv(PZ_FAILPOINT_ENV)) {
        pz_warn("snapshot child %ld stopped at failpoint %s: exiting with "
                "status %d",
                (long)pid, getenv(PZ_FAILPOINT_ENV), PZ_FAILPOINT_EXIT);
        _exit(PZ_FAILPOINT_EXIT);
    }
    unlink(h->tmp);
    if (msg[0])
        set_err(h->errmsg, sizeof h->errmsg, "%s", msg);
    else if (WIFSIGNALED(status))
        set_err(h->errmsg, sizeof h->errmsg,
                "%s: snapshot child %ld killed by signal %d", h->tmp, (long)pid,
                WTERMSIG(status));
    else
        set_err(h->errmsg, sizeof h->errmsg,
                "%s: snapshot child %ld exited with status %d", h->tmp,
                (long)pid, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

int snapshot_child_poll(struct snapshot_child *h, bool *done, bool *ok)
{
    *done = true;
    *ok = false;
    if (h->pid <= 0)
        return 0;
    int status = 0;
    pid_t r;
    do
        r = waitpid(h->pid, &status, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
        *done = false;
        return 0;
    }
    if (r < 0 && errno != ECHILD) {
        *done = false;
        return -errno;
    }
    if (r < 0) { /* reaped by someone else: status unknown */
        pid_t pid = h->pid;
        child_reaped(h, W_EXITCODE(1, 0), ok);
        set_err(h->errmsg, sizeof h->errmsg,
                "%s: snapshot child %ld was reaped elsewhere", h->tmp,
                (long)pid);
        return 0;
    }
    child_reaped(h, status, ok);
    return 0;
}

void snapshot_child_kill(struct snapshot_child *h)
{
    if (h->pid <= 0)
        return;
    kill(h->pid, SIGKILL);
    int status = 0;
    pid_t r;
    do
        r = waitpid(h->pid, &status, 0);
    while (r < 0 && errno == EINTR);
    bool ok;
    child_reaped(h, r == h->pid ? status : W_EXITCODE(1, 0), &ok);
}

/* --- listing and pruning -------------------------------------------------- */

/* Parse decimal digits at *p (at least one, no overflow). */
static bool parse_u64(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (*s < '0' || *s > '9')
        return false;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
        s++;
    }
    *p = s;
    *out = v;
    return true;
}

/* snap-<index>-<term><suffix>, exactly. */
static bool parse_name(const char *name, const char *suffix, uint64_t *index,
                       uint64_t *term)
{
    size_t pl = strlen(SNAP_PREFIX);
    if (strncmp(name, SNAP_PREFIX, pl) != 0)
        return false;
    const char *p = name + pl;
    if (!parse_u64(&p, index) || *p++ != '-' || !parse_u64(&p, term))
        return false;
    return strcmp(p, suffix) == 0;
}

static int cmp_newest_first(const void *a, const void *b)
{
    const struct snapshot_info *x = a, *y = b;
    if (x->index != y->index)
        return x->index > y->index ? -1 : 1;
    if (x->term != y->term)
        return x->term > y->term ? -1 : 1;
    return 0;
}

static char *join(const char *dir, const char *name)
{
    size_t ld = strlen(dir), ln = strlen(name);
    char *p = pz_malloc(ld + ln + 2);
    memcpy(p, dir, ld);
    p[ld] = '/';
    memcpy(p + ld + 1, name, ln + 1);
    return p;
}

int snapshot_list(const char *dir, struct snapshot_info **out, size_t *n,
                  char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return 0;
        int e = -errno;
        set_err(err, errlen, "%s: opendir: %s", dir, errstr(e));
        return e;
    }
    struct snapshot_info *list = NULL;
    size_t len = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t index, term;
        if (!parse_name(de->d_name, SNAP_SUFFIX, &index, &term))
            continue;
        if (len == cap) {
            cap = cap ? cap * 2 : 8;
            list = pz_realloc(list, cap * sizeof(*list));
        }
        list[len++] = (struct snapshot_info){
            .index = index, .term = term, .path = join(dir, de->d_name)};
    }
    closedir(d);
    if (len > 1)
        qsort(list, len, sizeof(*list), cmp_newest_first);
    *out = list;
    *n = len;
    return 0;
}

void snapshot_list_free(struct snapshot_info *list, size_t n)
{
    for (size_t i = 0; i < n && list; i++)
        pz_free(list[i].path);
    pz_free(list);
}

/* Deletes every <name>.tmp of dir (interrupted writes and transfers);
 * counts into *count, keeps the first error in *first. */
static void remove_temp(const char *dir, size_t *count, int *first, char *err,
                        size_t errlen)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name), sl = strlen(TMP_SUFFIX);
        if (strncmp(de->d_name, SNAP_PREFIX, strlen(SNAP_PREFIX)) != 0 ||
            l < sl || strcmp(de->d_name + l - sl, TMP_SUFFIX) != 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) == 0) {
            (*count)++;
        } else if (errno != ENOENT && *first == 0) {
            *first = -errno;
            set_err(err, errlen, "%s/%s: unlink: %s", dir, de->d_name,
                    errstr(*first));
        }
    }
    closedir(d);
}

static bool kept(const struct snapshot_info *s, const struct snapshot_id *keep,
                 size_t nkeep)
{
    for (size_t i = 0; i < nkeep; i++)
        if (keep[i].index == s->index && keep[i].term == s->term)
            return true;
    return false;
}

/* The pruning of both public functions: keep the `newest` newest .snap
 * files and those listed in keep, delete the other .snap and every .tmp. */
static int prune(const char *dir, size_t newest, const struct snapshot_id *keep,
                 size_t nkeep, size_t *removed, char *err, size_t errlen)
{
    size_t count = 0;
    if (removed)
        *removed = 0;
    struct snapshot_info *list;
    size_t n;
    int rc = snapshot_list(dir, &list, &n, err, errlen);
    if (rc)
        return rc;
    int first = 0;
    for (size_t i = newest; i < n; i++) {
        if (kept(&list[i], keep, nkeep))
            continue;
        if (unlink(list[i].path) == 0) {
            count++;
        } else if (errno != ENOENT && first == 0) {
            first = -errno;
            set_err(err, errlen, "%s: unlink: %s", list[i].path, errstr(first));
        }
    }
    snapshot_list_free(list, n);
    remove_temp(dir, &count, &first, err, errlen);
    /* No fsync of the directory: deletions need not be durable (a file
     * back after a crash is pruned again), and the node prunes on its
     * loop, where an fsync would hold up every request behind it. */
    if (removed)
        *removed = count;
    return first;
}

int snapshot_prune(const char *dir, size_t keep, size_t *removed, char *err,
                   size_t errlen)
{
    if (keep < 1) {
        if (removed)
            *removed = 0;
        set_err(err, errlen, "%s: prune must keep at least one snapshot", dir);
        return PZ_EINVAL;
    }
    return prune(dir, keep, NULL, 0, removed, err, errlen);
}

int snapshot_prune_except(const char *dir, const struct snapshot_id *keep,
                          size_t nkeep, size_t *removed, char *err,
                          size_t errlen)
{
    return prune(dir, 0, keep, nkeep, removed, err, errlen);
}

int snapshot_remove_temp(const char *dir, size_t *removed, char *err,
                         size_t errlen)
{
    size_t count = 0;
    int first = 0;
    remove_temp(dir, &count, &first, err, errlen);
    if (count)
        pz_fsync_path(dir, true);
    if (removed)
        *removed = count;
    return first;
}

/* --- reading -------------------------------------------------------------- */

/* Sequential block reader of one file that CRCs what it reads. */
struct reader {
    const char *path;  /* for messages */
    int fd;            /* open file */
    uint64_t size;     /* file size at open */
    uint8_t *buf;      /* block buffer */
    size_t cap;        /* its size */
    size_t start;      /* first unconsumed byte in buf */
    size_t end;        /* end of the bytes read into buf */
    uint64_t pos;      /* file offset of buf[start] */
    uint64_t read_off; /* file offset of buf[end] */
    uint64_t crc;      /* CRC of bytes [0, read_off) below size - 8 */
    char *err;         /* caller's buffer */
    size_t errlen;     /* its size */
};

/* Open a snapshot file for reading: a regular file only (pz_open_regular),
 * so that a FIFO or a device named like a snapshot is reported as damaged
 * instead of blocking the open, and the node's start, forever. */
static int open_snapshot(const char *path, char *err, size_t errlen)
{
    int fd = pz_open_regular(path);
    if (fd == PZ_EINVAL) {
        set_err(err, errlen, "%s: not a regular file", path);
        return PZ_ECORRUPT;
    }
    if (fd < 0) {
        set_err(err, errlen, "%s: open: %s", path, errstr(fd));
        return fd == -ENOENT ? PZ_ENOTFOUND : fd;
    }
    return fd;
}

static int rd_open(struct reader *r, const char *path, char *err, size_t errlen)
{
    memset(r, 0, sizeof(*r));
    r->path = path;
    r->err = err;
    r->errlen = errlen;
    r->fd = -1;
    int fd = open_snapshot(path, err, errlen);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        set_err(err, errlen, "%s: fstat: %s", path, errstr(e));
        close(fd);
        return e;
    }
    r->fd = fd;
    r->size = (uint64_t)st.st_size;
    (void)posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL); /* a hint */
    return 0;
}

static void rd_close(struct reader *r)
{
    pz_free(r->buf);
    r->buf = NULL;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

static uint64_t rd_left(const struct reader *r)
{
    return r->size - r->pos;
}

/* Make n bytes available at r->buf + r->start. The caller has checked that
 * the file holds them (n <= rd_left). */
static int rd_need(struct reader *r, size_t n)
{
    if (r->end - r->start >= n)
        return 0;
    if (r->cap - r->start < n) {
        size_t have = r->end - r->start;
        if (r->cap < n) {
            /* A block, or the whole file when it is smaller: a small
             * snapshot does not take a MiB. */
            r->cap = PZ_MAX(n, (size_t)PZ_MIN((uint64_t)IO_BUF_SIZE, r->size));
            uint8_t *nb = pz_malloc(r->cap);
            if (have)
                memcpy(nb, r->buf + r->start, have);
            pz_free(r->buf);
            r->buf = nb;
        } else if (have) {
            memmove(r->buf, r->buf + r->start, have);
        }
        r->start = 0;
        r->end = have;
    }
    uint64_t crc_limit = r->size - 8;
    while (r->end - r->start < n) {
        ssize_t got = read(r->fd, r->buf + r->end, r->cap - r->end);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            set_err(r->err, r->errlen, "%s: read at offset %" PRIu64 ": %s",
                    r->path, r->read_off, errstr(e));
            return e;
        }
        if (got == 0) {
            set_err(r->err, r->errlen,
                    "%s: truncated: file ended at offset %" PRIu64
                    " while reading it (it shrank)",
                    r->path, r->read_off);
            return PZ_ECORRUPT;
        }
        if (r->read_off < crc_limit) {
            uint64_t c = PZ_MIN((uint64_t)got, crc_limit - r->read_off);
            r->crc = snapshot_crc64(r->crc, r->buf + r->end, (size_t)c);
        }
        r->end += (size_t)got;
        r->read_off += (uint64_t)got;
    }
    return 0;
}

static const uint8_t *rd_take(struct reader *r, size_t n)
{
    const uint8_t *p = r->buf + r->start;
    r->start += n;
    r->pos += n;
    return p;
}

/* Parse the fixed header and the conf; leaves the reader at the first
 * record. */
static int rd_header(struct reader *r, struct snapshot_meta *m)
{
    if (r->size < MIN_FILE_SIZE) {
        uint8_t magic[8];
        if (r->size >= 8 && pread(r->fd, magic, 8, 0) == 8 &&
            memcmp(magic, SNAPSHOT_MAGIC, 8) != 0)
            set_err(r->err, r->errlen, "%s: bad magic: not a snapshot file",
                    r->path);
        else
            set_err(r->err, r->errlen,
                    "%s: truncated: %" PRIu64 " bytes, a snapshot has at "
                    "least %d",
                    r->path, r->size, MIN_FILE_SIZE);
        return PZ_ECORRUPT;
    }
    int rc = rd_need(r, SNAPSHOT_HEADER_SIZE);
    if (rc)
        return rc;
    const uint8_t *h = rd_take(r, SNAPSHOT_HEADER_SIZE);
    if (memcmp(h, SNAPSHOT_MAGIC, 8) != 0) {
        set_err(r->err, r->errlen, "%s: bad magic: not a snapshot file",
                r->path);
        return PZ_ECORRUPT;
    }
    uint32_t version = pz_get_u32(h + 8);
    if (version < 1 || version > SNAPSHOT_VERSION) {
        set_err(r->err, r->errlen,
                "%s: unsupported format version %" PRIu32 " (this build "
                "reads versions 1 to %d)",
                r->path, version, SNAPSHOT_VERSION);
        return PZ_ECORRUPT;
    }
    m->version = version;
    m->index = pz_get_u64(h + 12);
    m->term = pz_get_u64(h + 20);
    m->created_ms = (int64_t)pz_get_u64(h + 28);
    m->nkeys = pz_get_u64(h + 36);
    uint32_t conf_len = pz_get_u32(h + 44);
    m->file_size = r->size;
    if (m->index >= RAFT_LIMIT || m->term >= RAFT_LIMIT) {
        /* No log gets there, and no peer would accept them (raft.h). */
        set_err(r->err, r->errlen,
                "%s: corrupt header: index %" PRIu64 " term %" PRIu64
                ": at or above 2^62, which no real log reaches",
                r->path, m->index, m->term);
        return PZ_ECORRUPT;
    }
    if (conf_len > SNAPSHOT_CONF_MAX ||
        conf_len > rd_left(r) - SNAPSHOT_TRAILER_SIZE) {
        set_err(r->err, r->errlen,
                "%s: truncated or corrupt header: configuration length "
                "%" PRIu32 " with %" PRIu64 " bytes left",
                r->path, conf_len, rd_left(r));
        return PZ_ECORRUPT;
    }
    /* Every record takes at least its header: a count that cannot fit is
     * caught here rather than after reading the whole file. */
    uint64_t room = rd_left(r) - SNAPSHOT_TRAILER_SIZE - conf_len;
    size_t rec = version == 1 ? 8 : SNAPSHOT_RECORD_HEADER;
    if (version >= 2) {
        size_t fixed = version >= 3 ? 12 : 8;
        if (room < fixed) {
            set_err(r->err, r->errlen,
                    "%s: truncated: no room for the revision after the "
                    "configuration",
                    r->path);
            return PZ_ECORRUPT;
        }
        room -= fixed;
    }
    if (m->nkeys > room / rec) {
        set_err(r->err, r->errlen,
                "%s: truncated or corrupt header: %" PRIu64 " keys cannot "
                "fit in %" PRIu64 " bytes",
                r->path, m->nkeys, room);
        return PZ_ECORRUPT;
    }
    if (conf_len) {
        rc = rd_need(r, conf_len);
        if (rc)
            return rc;
        m->conf = pz_memdup(rd_take(r, conf_len), conf_len);
        m->conf_len = conf_len;
    }
    if (version >= 2) {
        rc = rd_need(r, 8);
        if (rc)
            return rc;
        m->revision = pz_get_u64(rd_take(r, 8));
        if (m->revision > KV_REVISION_MAX) {
            set_err(r->err, r->errlen,
                    "%s: corrupt header: revision %" PRIu64
                    " above the highest a table reaches (2^62 - 1)",
                    r->path, m->revision);
            return PZ_ECORRUPT;
        }
    }
    if (version >= 3) {
        rc = rd_need(r, 4);
        if (rc)
            return rc;
        m->nleases = pz_get_u32(rd_take(r, 4));
        if (m->nleases > KV_LEASE_HARD_MAX ||
            (uint64_t)m->nleases * 16 > rd_left(r) - SNAPSHOT_TRAILER_SIZE ||
            m->nkeys > (rd_left(r) - SNAPSHOT_TRAILER_SIZE -
                        (uint64_t)m->nleases * 16) /
                           rec) {
            set_err(r->err, r->errlen,
                    "%s: truncated or corrupt header: %" PRIu32
                    " leases and %" PRIu64 " keys cannot fit in %" PRIu64
                    " bytes (at most %u leases)",
                    r->path, m->nleases, m->nkeys,
                    rd_left(r) - SNAPSHOT_TRAILER_SIZE, KV_LEASE_HARD_MAX);
            return PZ_ECORRUPT;
        }
    }
    if (version < 2) {
        /* Version 1 kept no history: its keys count as written at the
         * snapshot's index (at least 1), which later revisions exceed. */
        m->revision = m->nkeys && m->index == 0 ? 1 : m->index;
    }
    return 0;
}

/* A version 2 record's metadata must be one that applying commands can
 * produce. */
static bool meta_ok(const struct kv_meta *km, uint64_t revision)
{
    return km->create_revision >= 1 &&
           km->create_revision <= km->mod_revision &&
           km->mod_revision <= revision && km->version >= 1 &&
           km->version <= km->mod_revision - km->create_revision + 1;
}

/* Prefetching ahead of the loader: the buckets of the next records'
 * keys, as far as the block read holds them, start coming into the cache
 * while the current record is inserted (that cache miss was most of a
 * large table's load). Reads only bytes in the buffer; a bad length just
 * ends it (the record's own checks come when it is parsed). */
#define PREFETCH_AHEAD 8

struct ahead {
    uint64_t off; /* file offset of the next record to prefetch */
    unsigned n;   /* records prefetched past the current one */
    bool stop;    /* a bad length seen: no more */
};

static void prefetch_ahead(const struct reader *r, struct ahead *a,
                           const struct kv *kv, size_t rec)
{
    if (a->off < r->pos) {
        a->off = r->pos;
        a->n = 0;
    }
    size_t avail = r->end - r->start;
    while (a->n < PREFETCH_AHEAD && !a->stop) {
        uint64_t rel = a->off - r->pos;
        if (rel + rec > avail)
            return;
        const uint8_t *h = r->buf + r->start + rel;
        uint32_t klen = pz_get_u32(h), vlen = pz_get_u32(h + 4);
        if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX) {
            a->stop = true;
            return;
        }
        if (rel + rec + klen > avail)
            return;
        kv_prefetch(kv, h + rec, klen);
        a->off += rec + (uint64_t)klen + vlen;
        a->n++;
    }
}

/* Read (and into kv, unless NULL, load) a whole file with every check.
 * stop: NULL, or a flag another thread may raise: the read then ends
 * within 4096 records with PZ_ECANCELED. */
static int read_file(const char *path, struct kv *kv,
                     struct snapshot_meta *meta, const int *stop, char *err,
                     size_t errlen)
{
    struct snapshot_meta m = {0};
    struct reader r;
    char bad_meta[SNAPSHOT_ERRMSG_SIZE] = "";
    struct pz_warm warm = {0};
    size_t warm_est = 0;
    int rc = rd_open(&r, path, err, errlen);
    if (rc)
        goto out;
    rc = rd_header(&r, &m);
    if (rc == 0 && kv) {
        kv_reserve(kv, (size_t)m.nkeys); /* bounded by the file's size */
        /* Keys and values: what the records' headers leave of the file. */
        uint64_t rec = m.version == 1 ? 8 : SNAPSHOT_RECORD_HEADER;
        uint64_t heads = m.nkeys * rec + (uint64_t)m.nleases * 16;
        warm_est = kv_heap_estimate(
            m.nkeys, m.file_size > heads ? m.file_size - heads : 0);
        pz_warm_begin(&warm, warm_est);
    }
    uint64_t prev_lease = 0;
    struct ahead ahead = {0};
    for (uint32_t i = 0; rc == 0 && i < m.nleases; i++) {
        /* rd_header checked they fit before the trailer */
        uint64_t at = r.pos;
        if ((rc = rd_need(&r, 16)) != 0)
            break;
        const uint8_t *lr = rd_take(&r, 16);
        uint64_t id = pz_get_u64(lr), ttl = pz_get_u64(lr + 8);
        bool ok = id > prev_lease && id <= KV_LEASE_ID_MAX && ttl >= 1 &&
                  ttl <= KV_LEASE_TTL_MAX;
        if (!ok && bad_meta[0] == '\0')
            snprintf(bad_meta, sizeof bad_meta,
                     "%s: corrupt lease record %" PRIu32 " at offset %" PRIu64
                     ": id %" PRIu64 " (after %" PRIu64 "), ttl %" PRIu64
                     " (ids increase from 1 to %llu, ttls run 1 to %u)",
                     path, i, at, id, prev_lease, ttl,
                     (unsigned long long)KV_LEASE_ID_MAX, KV_LEASE_TTL_MAX);
        if (ok && kv)
            pz_assert(kv_lease_restore(kv, id, ttl) == 0);
        if (id > prev_lease)
            prev_lease = id;
    }
    for (uint64_t i = 0; rc == 0 && i < m.nkeys; i++) {
        uint64_t at = r.pos;
        if (rd_left(&r) < 8 + SNAPSHOT_TRAILER_SIZE) {
            set_err(err, errlen,
                    "%s: truncated: record %" PRIu64 " of %" PRIu64
                    " at offset %" PRIu64 " is past the end",
                    path, i, m.nkeys, at);
            rc = PZ_ECORRUPT;
            break;
        }
        size_t rec = m.version == 1 ? 8 : SNAPSHOT_RECORD_HEADER;
        if (rd_left(&r) < rec + SNAPSHOT_TRAILER_SIZE) {
            set_err(err, errlen,
                    "%s: truncated: record %" PRIu64 " of %" PRIu64
                    " at offset %" PRIu64 " is past the end",
                    path, i, m.nkeys, at);
            rc = PZ_ECORRUPT;
            break;
        }
        if ((rc = rd_need(&r, rec)) != 0)
            break;
        const uint8_t *h = rd_take(&r, rec);
        uint32_t klen = pz_get_u32(h), vlen = pz_get_u32(h + 4);
        struct kv_meta km = {.create_revision = m.revision,
                             .mod_revision = m.revision,
                             .version = 1};
        if (m.version >= 2) {
            km.create_revision = pz_get_u64(h + 8);
            km.mod_revision = pz_get_u64(h + 16);
            km.version = pz_get_u64(h + 24);
            km.lease = m.version >= 3 ? pz_get_u64(h + 32) : 0;
            if (!meta_ok(&km, m.revision) && bad_meta[0] == '\0') {
                /* Said only once the checksum matches: a damaged file
                 * is reported as damaged. */
                snprintf(bad_meta, sizeof bad_meta,
                         "%s: corrupt record %" PRIu64 " at offset %" PRIu64
                         ": impossible metadata (created %" PRIu64
                         ", modified %" PRIu64 ", version %" PRIu64
                         ", snapshot revision %" PRIu64 ")",
                         path, i, at, km.create_revision, km.mod_revision,
                         km.version, m.revision);
            }
        }
        if (klen > KV_KEY_MAX || vlen > KV_VALUE_MAX) {
            set_err(err, errlen,
                    "%s: corrupt record %" PRIu64 " at offset %" PRIu64
                    ": key length %" PRIu32 ", value length %" PRIu32
                    " (limits %u, %u)",
                    path, i, at, klen, vlen, KV_KEY_MAX, KV_VALUE_MAX);
            rc = PZ_ECORRUPT;
            break;
        }
        uint64_t need = (uint64_t)klen + vlen;
        if (need > rd_left(&r) - SNAPSHOT_TRAILER_SIZE) {
            set_err(err, errlen,
                    "%s: truncated: record %" PRIu64 " at offset %" PRIu64
                    " needs %" PRIu64 " bytes, %" PRIu64
                    " left before the trailer",
                    path, i, at, need, rd_left(&r) - SNAPSHOT_TRAILER_SIZE);
            rc = PZ_ECORRUPT;
            break;
        }
        if ((rc = rd_need(&r, (size_t)need)) != 0)
            break;
        const uint8_t *kvp = rd_take(&r, (size_t)need);
        if ((i & 4095) == 0 && stop &&
            __atomic_load_n(stop, __ATOMIC_RELAXED)) {
            set_err(err, errlen, "%s: load called off", path);
            rc = PZ_ECANCELED;
            break;
        }
        if ((i & 4095) == 0) /* the share of the file read */
            pz_warm_allow(&warm, (size_t)((double)warm_est * (double)r.pos /
                                          (double)m.file_size));
        if (kv) {
            if (ahead.n > 0)
                ahead.n--;
            prefetch_ahead(&r, &ahead, kv, rec);
        }
        struct kv_lease kl;
        if (kv && km.lease && !kv_lease_get(kv, km.lease, &kl)) {
            if (bad_meta[0] == '\0')
                snprintf(bad_meta, sizeof bad_meta,
                         "%s: corrupt record %" PRIu64 " at offset %" PRIu64
                         ": names lease %" PRIu64 ", which the file does "
                         "not hold",
                         path, i, at, km.lease);
            km.lease = 0; /* the load fails below */
        }
        if (kv && kv_restore(kv, kvp, klen, kvp + klen, vlen, &km) != 0) {
            set_err(err, errlen,
                    "%s: corrupt: record %" PRIu64 " at offset %" PRIu64
                    " repeats a key",
                    path, i, at);
            rc = PZ_ECORRUPT;
        }
    }
    if (rc)
        goto out;
    if (rd_left(&r) != SNAPSHOT_TRAILER_SIZE) {
        set_err(err, errlen,
                "%s: corrupt: %" PRIu64 " bytes after record %" PRIu64
                " where the %d-byte trailer should end the file",
                path, rd_left(&r), m.nkeys, SNAPSHOT_TRAILER_SIZE);
        rc = PZ_ECORRUPT;
        goto out;
    }
    if ((rc = rd_need(&r, SNAPSHOT_TRAILER_SIZE)) != 0)
        goto out;
    const uint8_t *t = rd_take(&r, SNAPSHOT_TRAILER_SIZE);
    if (memcmp(t, SNAPSHOT_END_MAGIC, 8) != 0) {
        set_err(err, errlen,
                "%s: corrupt: end marker missing at offset "
                "%" PRIu64,
                path, r.pos - SNAPSHOT_TRAILER_SIZE);
        rc = PZ_ECORRUPT;
        goto out;
    }
    m.checksum = pz_get_u64(t + 8);
    if (m.checksum != r.crc) {
        set_err(err, errlen,
                "%s: checksum mismatch: stored %016" PRIx64
                ", computed %016" PRIx64,
                path, m.checksum, r.crc);
        rc = PZ_ECORRUPT;
        goto out;
    }
    if (bad_meta[0]) {
        set_err(err, errlen, "%s", bad_meta);
        rc = PZ_ECORRUPT;
        goto out;
    }
    if (kv)
        kv_set_revision(kv, m.revision);
out:
    pz_warm_end(&warm);
    rd_close(&r);
    if (rc || meta == NULL)
        snapshot_meta_free(&m);
    if (meta)
        *meta = m;
    return rc;
}

int snapshot_load(const char *path, struct kv *into, struct snapshot_meta *meta,
                  char *err, size_t errlen)
{
    pz_assert(into != NULL);
    return read_file(path, into, meta, NULL, err, errlen);
}

int snapshot_verify(const char *path, struct snapshot_meta *meta, char *err,
                    size_t errlen)
{
    return read_file(path, NULL, meta, NULL, err, errlen);
}

int snapshot_peek(const char *path, struct snapshot_meta *meta, char *err,
                  size_t errlen)
{
    struct reader r;
    memset(meta, 0, sizeof(*meta));
    int rc = rd_open(&r, path, err, errlen);
    if (rc)
        return rc;
    rc = rd_header(&r, meta);
    rd_close(&r);
    if (rc)
        snapshot_meta_free(meta);
    return rc;
}

int snapshot_load_newest_valid(const char *dir, uint64_t seed,
                               const struct snapshot_pick *pick,
                               struct kv **out, struct snapshot_meta *meta,
                               char **path_out, char *err, size_t errlen)
{
    static const struct snapshot_pick none;
    struct snapshot_info *list;
    size_t n;
    if (pick == NULL)
        pick = &none;
    *out = NULL;
    if (meta)
        memset(meta, 0, sizeof(*meta));
    if (path_out)
        *path_out = NULL;
    int rc = snapshot_list(dir, &list, &n, err, errlen);
    if (rc)
        return rc;
    char msg[SNAPSHOT_ERRMSG_SIZE];
    size_t tried = 0;
    rc = PZ_ECORRUPT;
    for (size_t i = 0; i < n; i++) {
        if (pick->accept &&
            !pick->accept(pick->arg, list[i].index, list[i].term))
            continue;
        tried++;
        struct kv *kv = kv_new_seeded(seed);
        struct snapshot_meta m;
        int lrc = snapshot_load(list[i].path, kv, &m, msg, sizeof msg);
        /* pick->accept judged the point the name gives; the table is
         * the header's: a file whose two differ is trusted for neither. */
        if (lrc == 0 && (m.index != list[i].index || m.term != list[i].term)) {
            set_err(msg, sizeof msg,
                    "%s: corrupt: header says index %" PRIu64 " term %" PRIu64
                    ", the file name index %" PRIu64 " term %" PRIu64,
                    list[i].path, m.index, m.term, list[i].index, list[i].term);
            snapshot_meta_free(&m);
            lrc = PZ_ECORRUPT;
        }
        if (lrc == 0 && pick->check &&
            !pick->check(pick->arg, &m, msg, sizeof msg)) {
            snapshot_meta_free(&m);
            lrc = PZ_ECORRUPT;
        }
        if (lrc == 0) {
            *out = kv;
            if (meta)
                *meta = m;
            else
                snapshot_meta_free(&m);
            if (path_out)
                *path_out = pz_strdup(list[i].path);
            rc = 0;
            break;
        }
        kv_free(kv);
        if (pick->damaged)
            pick->damaged(pick->arg, list[i].path, lrc, msg);
        else
            pz_warn("skipping damaged snapshot: %s", msg);
    }
    if (tried == 0) {
        set_err(err, errlen, "%s: no snapshot", dir);
        rc = PZ_ENOTFOUND;
    } else if (rc) {
        set_err(err, errlen, "%s: none of the %zu snapshots is valid", dir,
                tried);
    }
    snapshot_list_free(list, n);
    return rc;
}

/* --- streaming: sender side ----------------------------------------------- */

struct snapshot_reader {
    int fd;        /* open file */
    uint64_t size; /* size at open */
    char *path;    /* for messages (pz_malloc) */
};

int snapshot_reader_open(const char *path, struct snapshot_reader **out,
                         char *err, size_t errlen)
{
    *out = NULL;
    int fd = open_snapshot(path, err, errlen);
    if (fd < 0)
        return fd;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        set_err(err, errlen, "%s: fstat: %s", path, errstr(e));
        close(fd);
        return e;
    }
    struct snapshot_reader *r = pz_malloc(sizeof(*r));
    r->fd = fd;
    r->size = (uint64_t)st.st_size;
    r->path = pz_strdup(path);
    *out = r;
    return 0;
}

uint64_t snapshot_reader_size(const struct snapshot_reader *r)
{
    return r->size;
}

int snapshot_reader_read(struct snapshot_reader *r, uint64_t offset, void *buf,
                         size_t len, size_t *got, char *err, size_t errlen)
{
    *got = 0;
    if (offset >= r->size)
        return 0;
    len = (size_t)PZ_MIN((uint64_t)len, r->size - offset);
    uint8_t *p = buf;
    while (*got < len) {
        ssize_t n = pread(r->fd, p + *got, len - *got, (off_t)(offset + *got));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            set_err(err, errlen, "%s: read at offset %" PRIu64 ": %s", r->path,
                    offset + *got, errstr(e));
            return e;
        }
        if (n == 0)
            break; /* the file shrank: report what there is */
        *got += (size_t)n;
    }
    return 0;
}

void snapshot_reader_close(struct snapshot_reader *r)
{
    if (r == NULL)
        return;
    close(r->fd);
    pz_free(r->path);
    pz_free(r);
}

/* --- streaming: receiver side --------------------------------------------- */

struct snapshot_receiver {
    int fd;                       /* the .recv.tmp */
    uint64_t index;               /* snapshot being received */
    uint64_t term;                /* its term */
    uint64_t total;               /* announced size */
    uint64_t received;            /* bytes written so far */
    char *dir;                    /* directory (pz_malloc) */
    char path[SNAPSHOT_PATH_MAX]; /* final .snap */
    char tmp[SNAPSHOT_PATH_MAX];  /* file being written */
    const int *stop;              /* snapshot_receiver_stop_on */
};

static void receiver_free(struct snapshot_receiver *r, bool remove_tmp)
{
    if (r->fd >= 0)
        close(r->fd);
    if (remove_tmp)
        unlink(r->tmp);
    pz_free(r->dir);
    pz_free(r);
}

int snapshot_receiver_begin(const char *dir, uint64_t index, uint64_t term,
                            uint64_t total_size, struct snapshot_receiver **out,
                            char *err, size_t errlen)
{
    *out = NULL;
    struct snapshot_receiver *r = pz_calloc(1, sizeof(*r));
    r->fd = -1;
    if (name_path(dir, index, term, SNAP_SUFFIX, r->path, sizeof r->path) ||
        name_path(dir, index, term, RECV_TMP_SUFFIX, r->tmp, sizeof r->tmp)) {
        set_err(err, errlen, "%s: directory name too long", dir);
        pz_free(r);
        return PZ_ETOOBIG;
    }
    if (total_size < MIN_FILE_SIZE) {
        set_err(err, errlen,
                "%s: announced size %" PRIu64 " is below the smallest "
                "snapshot (%d bytes)",
                r->tmp, total_size, MIN_FILE_SIZE);
        pz_free(r);
        return PZ_EINVAL;
    }
    r->fd = open_tmp(r->tmp, err, errlen);
    if (r->fd < 0) {
        int rc = r->fd;
        pz_free(r);
        return rc;
    }
    r->dir = pz_strdup(dir);
    r->index = index;
    r->term = term;
    r->total = total_size;
    crc_init();
    *out = r;
    return 0;
}

int snapshot_receiver_write(struct snapshot_receiver *r, uint64_t offset,
                            const void *data, size_t len, char *err,
                            size_t errlen)
{
    if (offset != r->received) {
        set_err(err, errlen,
                "%s: chunk at offset %" PRIu64 " but %" PRIu64
                " bytes received: chunks must be contiguous",
                r->tmp, offset, r->received);
        return PZ_EINVAL;
    }
    if (len > r->total - r->received) {
        set_err(err, errlen,
                "%s: chunk of %zu bytes at offset %" PRIu64
                " goes past the announced size %" PRIu64,
                r->tmp, len, offset, r->total);
        return PZ_EINVAL;
    }
    if (len == 0)
        return 0;
    int rc = write_all(r->fd, data, len);
    if (rc) {
        set_err(err, errlen, "%s: write: %s", r->tmp, errstr(rc));
        return rc;
    }
    bool first = r->received == 0;
    r->received += len;
    if (first)
        pz_failpoint(SNAPSHOT_FP_INSTALL_MID);
    return 0;
}

uint64_t snapshot_receiver_offset(const struct snapshot_receiver *r)
{
    return r->received;
}

int snapshot_receiver_finish(struct snapshot_receiver *r, struct kv *into,
                             char *path_out, size_t pathlen,
                             struct snapshot_meta *meta, char *err,
                             size_t errlen)
{
    struct snapshot_meta m = {0};
    int rc = 0;
    if (meta)
        memset(meta, 0, sizeof(*meta));
    if (r->received != r->total) {
        set_err(err, errlen,
                "%s: incomplete: %" PRIu64 " of %" PRIu64 " bytes received",
                r->tmp, r->received, r->total);
        receiver_free(r, true);
        return PZ_EINVAL;
    }
    rc = fsync(r->fd) < 0 ? -errno : 0;
    if (close(r->fd) < 0 && rc == 0)
        rc = -errno;
    r->fd = -1;
    if (rc) {
        set_err(err, errlen, "%s: fsync: %s", r->tmp, errstr(rc));
        receiver_free(r, true);
        return rc;
    }
    /* Loading is the most thorough check (a repeated key included); a
     * caller that will load the file anyway does it here, once. */
    rc = read_file(r->tmp, into, &m, r->stop, err, errlen);
    if (rc == 0 && (m.index != r->index || m.term != r->term)) {
        set_err(err, errlen,
                "%s: corrupt: header says index %" PRIu64 " term %" PRIu64
                ", the leader announced index %" PRIu64 " term %" PRIu64,
                r->tmp, m.index, m.term, r->index, r->term);
        rc = PZ_ECORRUPT;
    }
    if (rc == 0)
        rc = commit_file(r->tmp, r->path, r->dir, err, errlen);
    if (rc) {
        snapshot_meta_free(&m);
        receiver_free(r, true);
        return rc;
    }
    if (path_out)
        snprintf(path_out, pathlen, "%s", r->path);
    if (meta)
        *meta = m;
    else
        snapshot_meta_free(&m);
    receiver_free(r, false);
    return 0;
}

void snapshot_receiver_stop_on(struct snapshot_receiver *r, const int *stop)
{
    r->stop = stop;
}

void snapshot_receiver_abort(struct snapshot_receiver *r)
{
    if (r)
        receiver_free(r, true);
}

/* --- which chunks a follower takes ---------------------------------------- */

int snapshot_rx_decide(const struct snapshot_rx_view *v, uint64_t from,
                       const struct raft_snap_chunk *c)
{
    if (c->term == 0)
        return SNAPSHOT_RX_STALE; /* a node older than the term field */
    if (c->snap_index == 0 || c->snap_index >= RAFT_LIMIT ||
        c->snap_term == 0 || c->snap_term > c->term ||
        c->total < MIN_FILE_SIZE || c->offset > c->total ||
        c->len > c->total - c->offset)
        return SNAPSHOT_RX_INVALID;
    if (from != v->leader || c->term != v->term || v->leader == v->self ||
        v->leader == 0)
        return SNAPSHOT_RX_STALE;
    if (c->offset == 0) {
        if (c->snap_index <= v->commit ||
            (c->snap_index == v->have_index && c->snap_term == v->have_term))
            return SNAPSHOT_RX_IGNORE;
        return c->total > v->max_size ? SNAPSHOT_RX_TOO_BIG
                                      : SNAPSHOT_RX_BEGIN;
    }
    if (!v->receiving || from != v->rx_from || c->snap_index != v->rx_index ||
        c->snap_term != v->rx_term || c->total != v->rx_total)
        return SNAPSHOT_RX_IGNORE;
    return c->offset == v->rx_offset ? SNAPSHOT_RX_WRITE : SNAPSHOT_RX_STALE;
}
