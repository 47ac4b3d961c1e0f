/* test_snapshot.c - snapshot files: CRC-64 vectors, the documented layout,
 * round trips (empty, binary, large values, 100k keys) compared by digest,
 * refusal of every single-byte flip and every truncation, wrong magic and
 * version, fallback to an older valid snapshot, a revoke's delete order
 * unchanged by a load, listing and pruning, the forked writer
 * (copy-on-write consistency while the parent mutates, a child killed
 * mid-write, failpoints), and the InstallSnapshot reader and
 * receiver. bench_1m measures 1M keys when PYAZDB_SNAPSHOT_BENCH is set
 * (scripts/bench-snapshot.sh). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "failpoint.h"
#include "kv.h"
#include "pz.h"
#include "snapshot.h"
#include "test.h"

/* --- helpers -------------------------------------------------------------- */

struct tdir {
    char root[64]; /* mkdtemp directory, the snapshot directory */
};

static void tdir_init(struct tdir *t)
{
    snprintf(t->root, sizeof t->root, "/tmp/pz-snap-XXXXXX");
    if (mkdtemp(t->root) == NULL) {
        perror("mkdtemp");
        abort();
    }
}

static int rm_one(const char *p, const struct stat *sb, int flag,
                  struct FTW *ftw)
{
    PZ_UNUSED(sb);
    PZ_UNUSED(flag);
    PZ_UNUSED(ftw);
    return remove(p);
}

static void tdir_free(struct tdir *t)
{
    nftw(t->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Number of entries of dir whose name ends with suffix. */
static size_t count_suffix(const char *dir, const char *suffix)
{
    DIR *d = opendir(dir);
    size_t n = 0, sl = strlen(suffix);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l >= sl && strcmp(de->d_name + l - sl, suffix) == 0)
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = pz_malloc((size_t)n + 1);
    size_t got = fread(p, 1, (size_t)n, f);
    fclose(f);
    *len = got;
    return p;
}

static bool write_file(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return false;
    bool ok = fwrite(p, 1, len, f) == len;
    return fclose(f) == 0 && ok;
}

/* Deterministic contents: key i -> 16-byte key, vlen-byte value. */
static void fill(struct kv *kv, size_t n, size_t vlen, uint64_t seed)
{
    uint8_t k[16], v[256];
    pz_assert(vlen <= sizeof v);
    uint64_t st = seed;
    for (size_t i = 0; i < n; i++) {
        uint64_t a = pz_rand_next(&st), b = i;
        pz_put_u64(k, a);
        pz_put_u64(k + 8, b);
        for (size_t j = 0; j < vlen; j += 8) {
            uint8_t w[8];
            pz_put_u64(w, pz_rand_next(&st));
            memcpy(v + j, w, PZ_MIN((size_t)8, vlen - j));
        }
        kv_set(kv, k, sizeof k, v, vlen);
    }
}

static const uint8_t conf_blob[] = {1, 0, 0, 0, 1, 0, 0, 0, 0,
                                    0, 0, 0, 7, 1, 0, 0, 0, 0};

static bool write_ok(const char *dir, const struct kv *kv, uint64_t index,
                     uint64_t term, char *path)
{
    char err[SNAPSHOT_ERRMSG_SIZE] = "";
    int rc = snapshot_write(
        dir, kv,
        &(struct snapshot_point){index, term, conf_blob, sizeof conf_blob},
        path, SNAPSHOT_PATH_MAX, err, sizeof err);
    if (rc)
        fprintf(stderr, "    snapshot_write: %s (%s)\n", err, pz_strerror(rc));
    return rc == 0;
}

/* Load path into a fresh table; returns its digest or 0 on failure (and
 * the error code / message through rc / err). */
static uint64_t load_digest(const char *path, int *rc, char *err, size_t errlen,
                            size_t *nkeys)
{
    struct kv *kv = kv_new();
    struct snapshot_meta m;
    *rc = snapshot_load(path, kv, &m, err, errlen);
    uint64_t d = *rc == 0 ? kv_digest(kv) : 0;
    if (*rc == 0 && kv_digest_compute(kv) != d)
        d = 0;
    if (nkeys)
        *nkeys = kv_count(kv);
    snapshot_meta_free(&m);
    kv_free(kv);
    return d;
}

static void rewrite_crc(uint8_t *p, size_t len)
{
    pz_put_u64(p + len - 8, snapshot_crc64(0, p, len - 8));
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Poll a child to its end (with a deadline). */
static bool poll_until_done(struct snapshot_child *h, bool *ok)
{
    bool done = false;
    for (int i = 0; i < 60000 && !done; i++) {
        if (snapshot_child_poll(h, &done, ok) != 0)
            return false;
        if (!done)
            usleep(1000);
    }
    return done;
}

/* Run fn(arg) in a subprocess; returns its exit status (or -signal). */
static int run_in_child(void (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid == 0) {
        fn(arg);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
}

/* --- format --------------------------------------------------------------- */

TEST(crc64_vectors)
{
    CHECK(snapshot_crc64(0, "", 0) == 0);
    CHECK(snapshot_crc64(0, "123456789", 9) == 0x995dc9bbdf1939faull);
    /* Incremental in any split equals one shot, also across alignments. */
    uint8_t buf[1000];
    uint64_t st = 7;
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)pz_rand_next(&st);
    uint64_t whole = snapshot_crc64(0, buf, sizeof buf);
    for (size_t cut = 0; cut <= sizeof buf; cut += 37) {
        uint64_t c = snapshot_crc64(0, buf, cut);
        c = snapshot_crc64(c, buf + cut, sizeof buf - cut);
        CHECK(c == whole);
    }
    /* Every single-bit flip changes it. */
    for (size_t i = 0; i < 64; i++) {
        buf[i / 8] ^= (uint8_t)(1u << (i % 8));
        CHECK(snapshot_crc64(0, buf, sizeof buf) != whole);
        buf[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
}

/* The carry-less path gives the table path's values: random contents,
 * lengths around its threshold and its 64-byte blocks, every alignment,
 * random starting registers; and the check value. */
TEST(crc64_accelerated_matches_tables)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1"))
        CHECK(snapshot_crc64_accelerated());
#endif
    static const char check[] = "123456789";
    CHECK(snapshot_crc64_portable(0, check, 9) == 0x995dc9bbdf1939faull);
    enum { MAX = 3000 };
    uint8_t *buf = pz_malloc(MAX + 16);
    uint64_t st = 11;
    for (size_t i = 0; i < MAX + 16; i++)
        buf[i] = (uint8_t)pz_rand_next(&st);
    /* 9 bytes repeated to 2 KiB: the check value's bytes through the
     * accelerated path agree with the tables too. */
    uint8_t rep[2048];
    for (size_t i = 0; i < sizeof rep; i++)
        rep[i] = (uint8_t)check[i % 9];
    CHECK(snapshot_crc64(0, rep, sizeof rep) ==
          snapshot_crc64_portable(0, rep, sizeof rep));
    for (int i = 0; i < 4000; i++) {
        size_t len = i < 600 ? (size_t)i : (size_t)(pz_rand_next(&st) % MAX);
        size_t off = (size_t)(pz_rand_next(&st) % 16);
        uint64_t init = i % 3 == 0 ? 0 : pz_rand_next(&st);
        uint64_t a = snapshot_crc64(init, buf + off, len);
        uint64_t b = snapshot_crc64_portable(init, buf + off, len);
        if (a != b)
            printf("    len %zu offset %zu: %016llx, tables %016llx\n", len,
                   off, (unsigned long long)a, (unsigned long long)b);
        CHECK(a == b);
    }
    /* Every length next to where the carry-less path starts (64 bytes)
     * and where it used to start (256), at every alignment. */
    static const size_t edges[] = {64, 128, 256};
    for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++)
        for (size_t len = edges[e] - 9; len <= edges[e] + 17; len++)
            for (size_t off = 0; off < 16; off++) {
                uint64_t init = off % 2 ? pz_rand_next(&st) : 0;
                CHECK(snapshot_crc64(init, buf + off, len) ==
                      snapshot_crc64_portable(init, buf + off, len));
            }
    /* A large piece in one call equals the same bytes in small pieces. */
    uint8_t *big = pz_malloc(1 << 20);
    for (size_t i = 0; i < 1 << 20; i++)
        big[i] = (uint8_t)pz_rand_next(&st);
    uint64_t one = snapshot_crc64(0, big, 1 << 20), parts = 0;
    for (size_t at = 0; at < 1 << 20; at += 100)
        parts = snapshot_crc64_portable(
            parts, big + at, PZ_MIN((size_t)100, ((size_t)1 << 20) - at));
    CHECK(one == parts);
    pz_free(big);
    pz_free(buf);
}

TEST(layout)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    kv_set(kv, "ab", 2, "xyz", 3);
    char path[SNAPSHOT_PATH_MAX];
    CHECK(write_ok(t.root, kv, 0x0102030405060708ull, 9, path));
    char want[SNAPSHOT_PATH_MAX];
    snprintf(want, sizeof want, "%s/snap-72623859790382856-9.snap", t.root);
    CHECK_EQ_STR(path, want);
    size_t len;
    uint8_t *p = read_all(path, &len);
    CHECK(p != NULL);
    size_t cl = sizeof conf_blob;
    CHECK_EQ_INT(len, SNAPSHOT_HEADER_SIZE + cl + 12 + SNAPSHOT_RECORD_HEADER +
                          2 + 3 + SNAPSHOT_TRAILER_SIZE);
    CHECK(memcmp(p, "PYAZSNAP", 8) == 0);
    CHECK_EQ_INT(pz_get_u32(p + 8), 3);
    CHECK(pz_get_u64(p + 12) == 0x0102030405060708ull);
    CHECK(pz_get_u64(p + 20) == 9);
    int64_t created = (int64_t)pz_get_u64(p + 28);
    CHECK(created > (int64_t)time(NULL) * 1000 - 60000);
    CHECK(pz_get_u64(p + 36) == 1);
    CHECK_EQ_INT(pz_get_u32(p + 44), cl);
    CHECK(memcmp(p + 48, conf_blob, cl) == 0);
    CHECK(pz_get_u64(p + 48 + cl) == 1); /* revision */
    CHECK(pz_get_u32(p + 56 + cl) == 0);  /* leases */
    const uint8_t *rec = p + 48 + cl + 12;
    CHECK_EQ_INT(pz_get_u32(rec), 2);
    CHECK_EQ_INT(pz_get_u32(rec + 4), 3);
    CHECK(pz_get_u64(rec + 8) == 1 && pz_get_u64(rec + 16) == 1 &&
          pz_get_u64(rec + 24) == 1 && pz_get_u64(rec + 32) == 0);
    rec += SNAPSHOT_RECORD_HEADER - 8;
    CHECK(memcmp(rec + 8, "abxyz", 5) == 0);
    CHECK(memcmp(rec + 13, "PYAZEND\n", 8) == 0);
    CHECK(pz_get_u64(rec + 21) == snapshot_crc64(0, p, len - 8));

    struct snapshot_meta m;
    char err[SNAPSHOT_ERRMSG_SIZE];
    CHECK_EQ_INT(snapshot_peek(path, &m, err, sizeof err), 0);
    CHECK(m.index == 0x0102030405060708ull && m.term == 9);
    CHECK(m.nkeys == 1 && m.conf_len == cl && m.file_size == len);
    CHECK(memcmp(m.conf, conf_blob, cl) == 0);
    CHECK(m.created_ms == created);
    snapshot_meta_free(&m);
    CHECK_EQ_INT(snapshot_verify(path, &m, err, sizeof err), 0);
    CHECK(m.checksum == snapshot_crc64(0, p, len - 8));
    snapshot_meta_free(&m);
    pz_free(p);
    kv_free(kv);
    tdir_free(&t);
}

/* --- round trips ---------------------------------------------------------- */

TEST(roundtrip_empty)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 5, 2, path));
    CHECK_EQ_INT(file_size(path), SNAPSHOT_HEADER_SIZE + sizeof conf_blob + 12 +
                                      SNAPSHOT_TRAILER_SIZE);
    struct kv *got = kv_new();
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_load(path, got, &m, err, sizeof err), 0);
    CHECK_EQ_INT(kv_count(got), 0);
    CHECK(kv_digest(got) == 0);
    CHECK(m.index == 5 && m.term == 2 && m.nkeys == 0);
    snapshot_meta_free(&m);
    /* No configuration at all is fine too. */
    CHECK_EQ_INT(snapshot_write(t.root, kv,
                                &(struct snapshot_point){6, 2, NULL, 0}, path,
                                sizeof path, err, sizeof err),
                 0);
    CHECK_EQ_INT(snapshot_load(path, got, &m, err, sizeof err), 0);
    CHECK(m.conf == NULL && m.conf_len == 0);
    CHECK_EQ_INT(count_suffix(t.root, ".tmp"), 0);
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

TEST(roundtrip_binary)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    static const uint8_t k1[] = {0, 'a', 0}, v1[] = {0, 0, 0, 0};
    static const uint8_t k2[] = {0xff, 0, 0xfe};
    kv_set(kv, k1, sizeof k1, v1, sizeof v1);
    kv_set(kv, k2, sizeof k2, "", 0); /* empty value */
    kv_set(kv, "", 0, "empty key", 9);
    /* Values larger than the 1 MiB I/O buffer go around it. */
    size_t big = (3u << 20) + 17;
    uint8_t *bv = pz_malloc(big);
    for (size_t i = 0; i < big; i++)
        bv[i] = (uint8_t)(i * 31 + 7);
    kv_set(kv, "big", 3, bv, big);
    fill(kv, 1000, 100, 3);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 42, 3, path));
    struct kv *got = kv_new();
    CHECK_EQ_INT(snapshot_load(path, got, NULL, err, sizeof err), 0);
    CHECK(kv_digest(got) == kv_digest(kv));
    CHECK_EQ_INT(kv_count(got), kv_count(kv));
    const uint8_t *v;
    size_t vl;
    CHECK(kv_get(got, k1, sizeof k1, &v, &vl) && vl == 4);
    CHECK(memcmp(v, v1, 4) == 0);
    CHECK(kv_get(got, k2, sizeof k2, &v, &vl) && vl == 0);
    CHECK(kv_get(got, "", 0, &v, &vl) && vl == 9);
    CHECK(kv_get(got, "big", 3, &v, &vl) && vl == big);
    CHECK(memcmp(v, bv, big) == 0);
    pz_free(bv);
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

/* 100k keys, loaded as they are (under PZ_WARM_MIN) and then with the
 * heap warmed for the load (pz_warm, its minimum lowered to this table's
 * size): the same table both ways, and a file cut short still fails
 * cleanly with the thread stopped. */
TEST(roundtrip_100k)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new_seeded(11);
    fill(kv, 100000, 40, 5);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 100000, 4, path));
    uint64_t warmed = pz_warm_count();
    int rc;
    size_t n = 0;
    uint64_t d = load_digest(path, &rc, err, sizeof err, &n);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(n, 100000);
    CHECK(d == kv_digest(kv) && d != 0);
    CHECK(pz_warm_count() == warmed);
    pz_warm_min = 1 << 20;
    n = 0;
    CHECK(load_digest(path, &rc, err, sizeof err, &n) == d);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(n, 100000);
    CHECK(pz_warm_count() == warmed + pz_warm_built());
    /* A different table gives a different digest (the check can fail). */
    kv_del(kv, "nope", 4);
    uint8_t k[16] = {0};
    kv_set(kv, k, sizeof k, "x", 1);
    CHECK(d != kv_digest(kv));
    struct stat st;
    CHECK_EQ_INT(stat(path, &st), 0);
    CHECK_EQ_INT(truncate(path, st.st_size / 2), 0);
    CHECK(load_digest(path, &rc, err, sizeof err, NULL) == 0);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(strstr(err, "truncated") != NULL);
    CHECK(pz_warm_count() == warmed + 2 * pz_warm_built());
    pz_warm_min = PZ_WARM_MIN;
    kv_free(kv);
    tdir_free(&t);
}

/* The writer's sync_file_range calls, recorded while srf_on is set (this
 * definition takes the place of the C library's in the test binary) and
 * passed on to the kernel. */
static bool srf_on;
static size_t srf_n;
static struct {
    off64_t off, len;
    unsigned flags;
} srf_calls[64];

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned flags)
{
    if (srf_on && srf_n < PZ_ARRAY_SIZE(srf_calls)) {
        srf_calls[srf_n].off = offset;
        srf_calls[srf_n].len = nbytes;
        srf_calls[srf_n].flags = flags;
        srf_n++;
    }
    return (int)syscall(SYS_sync_file_range, fd, offset, nbytes, flags);
}

/* A large snapshot goes to the disk 4 MiB at a time as it is written, each
 * chunk started at once and the one before waited for, rather than all at
 * the final fsync. */
TEST(large_write_hands_chunks_to_writeback)
{
    const off64_t chunk = 4 << 20;
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new_seeded(12);
    fill(kv, 60000, 240, 6); /* about 17.5 MB of records */
    char path[SNAPSHOT_PATH_MAX];
    srf_n = 0;
    srf_on = true;
    bool ok = write_ok(t.root, kv, 9, 2, path);
    srf_on = false;
    CHECK(ok);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    off64_t whole = st.st_size / chunk; /* chunks written in full */
    CHECK(whole >= 4);
    off64_t started = 0, waited = 0;
    for (size_t i = 0; i < srf_n; i++) {
        CHECK(srf_calls[i].len == chunk);
        if (srf_calls[i].flags == SYNC_FILE_RANGE_WRITE) {
            CHECK(srf_calls[i].off == started * chunk);
            started++;
        } else {
            CHECK(srf_calls[i].flags ==
                  (SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                   SYNC_FILE_RANGE_WAIT_AFTER));
            /* the chunk before the one just started */
            CHECK(srf_calls[i].off == waited * chunk &&
                  waited + 1 < started);
            waited++;
        }
    }
    CHECK_EQ_INT(started, whole);
    CHECK_EQ_INT(waited, whole - 1);
    kv_free(kv);
    tdir_free(&t);
}

/* --- corruption ----------------------------------------------------------- */

static bool is_corrupt_named(int rc, const char *err, const char *path)
{
    if (rc != PZ_ECORRUPT || strstr(err, path) == NULL) {
        fprintf(stderr, "    got %d (%s), message \"%s\"\n", rc,
                pz_strerror(rc), err);
        return false;
    }
    return true;
}

TEST(corrupt_every_byte_flip)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 20, 10, 9);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 7, 1, path));
    size_t len;
    uint8_t *orig = read_all(path, &len);
    CHECK(orig != NULL);
    char bad[SNAPSHOT_PATH_MAX + 8];
    snprintf(bad, sizeof bad, "%s/snap-7-1.snap", t.root);
    bool saw_checksum = false, saw_magic = false, saw_version = false;
    for (size_t i = 0; i < len; i++) {
        for (int flip = 0; flip < 2; flip++) {
            uint8_t *p = pz_memdup(orig, len);
            p[i] ^= flip ? 0xff : 0x01;
            CHECK(write_file(bad, p, len));
            int rc;
            err[0] = '\0';
            load_digest(bad, &rc, err, sizeof err, NULL);
            if (!is_corrupt_named(rc, err, bad)) {
                fprintf(stderr, "    flip 0x%x at offset %zu not detected\n",
                        flip ? 0xff : 1, i);
                CHECK(false);
            }
            CHECK_EQ_INT(snapshot_verify(bad, NULL, err, sizeof err),
                         PZ_ECORRUPT);
            saw_checksum |= strstr(err, "checksum mismatch") != NULL;
            saw_magic |= strstr(err, "magic") != NULL;
            saw_version |= strstr(err, "version") != NULL;
            pz_free(p);
        }
    }
    CHECK(saw_checksum && saw_magic && saw_version);
    /* The original still loads: the loop really tested the flips. */
    CHECK(write_file(bad, orig, len));
    int rc;
    CHECK(load_digest(bad, &rc, err, sizeof err, NULL) == kv_digest(kv));
    pz_free(orig);
    kv_free(kv);
    tdir_free(&t);
}

TEST(corrupt_truncated_everywhere)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 30, 20, 1);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 9, 2, path));
    size_t len;
    uint8_t *orig = read_all(path, &len);
    CHECK(orig != NULL);
    for (size_t cut = 0; cut < len; cut++) {
        CHECK(truncate(path, (off_t)cut) == 0);
        int rc;
        err[0] = '\0';
        load_digest(path, &rc, err, sizeof err, NULL);
        if (!is_corrupt_named(rc, err, path)) {
            fprintf(stderr, "    truncation to %zu bytes not detected\n", cut);
            CHECK(false);
        }
        CHECK(write_file(path, orig, len));
    }
    /* Extra bytes after the trailer are refused as well. */
    uint8_t *longer = pz_malloc(len + 1);
    memcpy(longer, orig, len);
    longer[len] = 0;
    CHECK(write_file(path, longer, len + 1));
    int rc;
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path));
    pz_free(longer);
    pz_free(orig);
    kv_free(kv);
    tdir_free(&t);
}

TEST(corrupt_magic_version_lengths)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 5, 10, 2);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 3, 1, path));
    size_t len;
    uint8_t *orig = read_all(path, &len);
    CHECK(orig != NULL);
    int rc;
    /* Each defect below comes with a correct checksum, so the structural
     * check itself must catch it. */
    uint8_t *p = pz_memdup(orig, len);
    memcpy(p, "SQLite f", 8);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "bad magic"));
    memcpy(p, orig, len);
    pz_put_u32(p + 8, 4);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "version 4") &&
          strstr(err, "reads versions 1 to 3"));
    /* Metadata no history produces: version 0, modified after the
     * table's revision, created after modified. */
    size_t m0 = 48 + sizeof conf_blob + 12;
    static const int fields[] = {24, 16, 8};
    static const uint64_t bad[] = {0, 99, 99};
    for (size_t f = 0; f < 3; f++) {
        memcpy(p, orig, len);
        pz_put_u64(p + m0 + fields[f], bad[f]);
        rewrite_crc(p, len);
        CHECK(write_file(path, p, len));
        load_digest(path, &rc, err, sizeof err, NULL);
        CHECK(is_corrupt_named(rc, err, path) &&
              strstr(err, "impossible metadata"));
        /* The same bytes damaged (checksum not fixed): said as damage. */
        pz_put_u64(p + len - 8, pz_get_u64(orig + len - 8));
        CHECK(write_file(path, p, len));
        load_digest(path, &rc, err, sizeof err, NULL);
        CHECK(is_corrupt_named(rc, err, path) &&
              strstr(err, "checksum mismatch"));
    }
    /* More writes than its revisions hold, and created at 0. */
    memcpy(p, orig, len);
    pz_put_u64(p + m0 + 24,
               pz_get_u64(p + m0 + 16) - pz_get_u64(p + m0 + 8) + 2);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) &&
          strstr(err, "impossible metadata"));
    memcpy(p, orig, len);
    pz_put_u64(p + m0 + 8, 0);
    pz_put_u64(p + m0 + 16, 0);
    pz_put_u64(p + m0 + 24, 1);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) &&
          strstr(err, "impossible metadata"));
    /* Format version 0. */
    memcpy(p, orig, len);
    pz_put_u32(p + 8, 0);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "version 0"));
    /* A key count the bytes left cannot hold, each record taking at
     * least its header: refused from the header, before any record. */
    memcpy(p, orig, len);
    pz_put_u64(p + 36,
               len - 48 - sizeof conf_blob - 12 - SNAPSHOT_TRAILER_SIZE);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "cannot fit"));
    /* nkeys one too many / too few. */
    memcpy(p, orig, len);
    pz_put_u64(p + 36, 6);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path));
    memcpy(p, orig, len);
    pz_put_u64(p + 36, 4);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path));
    /* A key length above KV_KEY_MAX. */
    memcpy(p, orig, len);
    pz_put_u32(p + 48 + sizeof conf_blob + 12, KV_KEY_MAX + 1);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "key length"));
    /* An absurd configuration length. */
    memcpy(p, orig, len);
    pz_put_u32(p + 44, 0xffffffffu);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    CHECK_EQ_INT(
        snapshot_peek(path, &(struct snapshot_meta){0}, err, sizeof err),
        PZ_ECORRUPT);
    /* The end marker damaged (its last byte, the checksum rewritten). */
    memcpy(p, orig, len);
    p[len - 9] ^= 0x20;
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "end marker"));
    /* A repeated key (a second record equal to the first). */
    pz_free(p);
    struct kv *two = kv_new();
    kv_set(two, "aa", 2, "1", 1);
    kv_set(two, "bb", 2, "2", 1);
    CHECK(write_ok(t.root, two, 4, 1, path));
    p = read_all(path, &len);
    size_t r0 = 48 + sizeof conf_blob + 12, rl = SNAPSHOT_RECORD_HEADER + 3;
    memcpy(p + r0 + rl, p + r0, rl);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "repeats a key"));
    /* Not a regular file, missing file. */
    char d[SNAPSHOT_PATH_MAX];
    snprintf(d, sizeof d, "%s/snap-1-1.snap", t.root);
    CHECK(mkdir(d, 0755) == 0);
    load_digest(d, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, d));
    snprintf(d, sizeof d, "%s/absent.snap", t.root);
    load_digest(d, &rc, err, sizeof err, NULL);
    CHECK_EQ_INT(rc, PZ_ENOTFOUND);
    CHECK(strstr(err, d) != NULL);
    pz_free(p);
    pz_free(orig);
    kv_free(two);
    kv_free(kv);
    tdir_free(&t);
}

/* --- choosing a snapshot -------------------------------------------------- */

struct damaged {
    int n;                            /* reports */
    char paths[4][SNAPSHOT_PATH_MAX]; /* reported paths */
    int rcs[4];                       /* their codes */
};

static void on_damaged(void *arg, const char *path, int rc, const char *msg)
{
    struct damaged *d = arg;
    pz_assert(strstr(msg, path) != NULL);
    if (d->n < 4) {
        snprintf(d->paths[d->n], SNAPSHOT_PATH_MAX, "%s", path);
        d->rcs[d->n] = rc;
    }
    d->n++;
}

TEST(fallback_to_older_valid)
{
    struct tdir t;
    tdir_init(&t);
    char p10[SNAPSHOT_PATH_MAX], p20[SNAPSHOT_PATH_MAX], p30[SNAPSHOT_PATH_MAX],
        err[SNAPSHOT_ERRMSG_SIZE];
    struct kv *a = kv_new(), *b = kv_new(), *c = kv_new();
    fill(a, 100, 10, 1);
    fill(b, 200, 10, 2);
    fill(c, 300, 10, 3);
    CHECK(write_ok(t.root, a, 10, 1, p10));
    CHECK(write_ok(t.root, b, 20, 1, p20));
    CHECK(write_ok(t.root, c, 30, 2, p30));

    struct kv *got = NULL;
    struct snapshot_meta m;
    char *path = NULL;
    struct damaged d = {0};
    CHECK_EQ_INT(snapshot_load_newest_valid(
                     t.root, 77,
                     &(struct snapshot_pick){.damaged = on_damaged, .arg = &d},
                     &got, &m, &path, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(c) && m.index == 30 && d.n == 0);
    CHECK_EQ_STR(path, p30);
    kv_free(got);
    pz_free(path);
    snapshot_meta_free(&m);

    /* Damage the two newest: a flipped byte and a truncation. */
    size_t len;
    uint8_t *p = read_all(p30, &len);
    p[len / 2] ^= 0x10;
    CHECK(write_file(p30, p, len));
    pz_free(p);
    CHECK(truncate(p20, file_size(p20) - 1) == 0);
    CHECK_EQ_INT(snapshot_load_newest_valid(
                     t.root, 77,
                     &(struct snapshot_pick){.damaged = on_damaged, .arg = &d},
                     &got, &m, &path, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(a) && m.index == 10 && m.term == 1);
    CHECK_EQ_STR(path, p10);
    CHECK_EQ_INT(d.n, 2);
    CHECK_EQ_STR(d.paths[0], p30);
    CHECK_EQ_STR(d.paths[1], p20);
    CHECK(d.rcs[0] == PZ_ECORRUPT && d.rcs[1] == PZ_ECORRUPT);
    CHECK(exists(p30) && exists(p20)); /* reported, not deleted */
    kv_free(got);
    pz_free(path);
    snapshot_meta_free(&m);

    /* None valid, none at all, no directory. */
    CHECK(truncate(p10, 10) == 0);
    d.n = 0;
    CHECK_EQ_INT(snapshot_load_newest_valid(
                     t.root, 77,
                     &(struct snapshot_pick){.damaged = on_damaged, .arg = &d},
                     &got, &m, &path, err, sizeof err),
                 PZ_ECORRUPT);
    CHECK(got == NULL && path == NULL && d.n == 3);
    CHECK(strstr(err, "none of the 3") != NULL);
    unlink(p10);
    unlink(p20);
    unlink(p30);
    CHECK_EQ_INT(snapshot_load_newest_valid(t.root, 77, NULL, &got, NULL, NULL,
                                            err, sizeof err),
                 PZ_ENOTFOUND);
    char nodir[SNAPSHOT_PATH_MAX];
    snprintf(nodir, sizeof nodir, "%s/missing", t.root);
    CHECK_EQ_INT(snapshot_load_newest_valid(nodir, 77, NULL, &got, NULL, NULL,
                                            err, sizeof err),
                 PZ_ENOTFOUND);
    kv_free(a);
    kv_free(b);
    kv_free(c);
    tdir_free(&t);
}

static void touch(const char *dir, const char *name)
{
    char p[SNAPSHOT_PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    write_file(p, "x", 1);
}

/* A file whose name gives another point than its header (renamed, or a
 * name or header changed on disk) is damaged: the name is what the pick
 * accepted, the header what the table holds. */
TEST(name_and_header_disagree)
{
    struct tdir t;
    tdir_init(&t);
    char p10[SNAPSHOT_PATH_MAX], p20[SNAPSHOT_PATH_MAX], p30[SNAPSHOT_PATH_MAX],
        err[SNAPSHOT_ERRMSG_SIZE];
    struct kv *a = kv_new(), *b = kv_new();
    fill(a, 100, 10, 1);
    fill(b, 200, 10, 2);
    CHECK(write_ok(t.root, a, 10, 1, p10));
    CHECK(write_ok(t.root, b, 20, 1, p20));
    snapshot_path(t.root, 30, 2, p30, sizeof p30);
    CHECK(rename(p10, p30) == 0); /* index 10's table, named 30 */

    struct kv *got = NULL;
    struct snapshot_meta m;
    char *path = NULL;
    struct damaged d = {0};
    CHECK_EQ_INT(snapshot_load_newest_valid(
                     t.root, 77,
                     &(struct snapshot_pick){.damaged = on_damaged, .arg = &d},
                     &got, &m, &path, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(b) && m.index == 20 && m.term == 1);
    CHECK_EQ_STR(path, p20);
    CHECK_EQ_INT(d.n, 1);
    CHECK_EQ_STR(d.paths[0], p30);
    CHECK_EQ_INT(d.rcs[0], PZ_ECORRUPT);
    kv_free(got);
    pz_free(path);
    snapshot_meta_free(&m);

    /* The only one: none is valid. */
    unlink(p20);
    d.n = 0;
    CHECK_EQ_INT(snapshot_load_newest_valid(
                     t.root, 77,
                     &(struct snapshot_pick){.damaged = on_damaged, .arg = &d},
                     &got, &m, &path, err, sizeof err),
                 PZ_ECORRUPT);
    CHECK(got == NULL && path == NULL && d.n == 1 && m.index == 0);
    kv_free(a);
    kv_free(b);
    tdir_free(&t);
}

TEST(list_and_prune)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 10, 10, 1);
    char p[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    static const uint64_t idx[][2] = {
        {5, 1}, {100, 2}, {20, 1}, {100, 3}, {9, 1}};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(idx); i++)
        CHECK(write_ok(t.root, kv, idx[i][0], idx[i][1], p));
    touch(t.root, "snap-7-1.tmp");
    touch(t.root, "snap-8-1.recv.tmp");
    touch(t.root, "raft.db.tmp");
    touch(t.root, "snap-1-1.snapx");
    touch(t.root, "snap-x-1.snap");
    touch(t.root, "snap--1.snap");
    touch(t.root, "snap-99999999999999999999-1.snap"); /* overflows */
    touch(t.root, "raft.db");

    struct snapshot_info *list;
    size_t n;
    CHECK_EQ_INT(snapshot_list(t.root, &list, &n, err, sizeof err), 0);
    CHECK_EQ_INT(n, 5);
    static const uint64_t want[][2] = {
        {100, 3}, {100, 2}, {20, 1}, {9, 1}, {5, 1}};
    for (size_t i = 0; i < n; i++) {
        CHECK(list[i].index == want[i][0] && list[i].term == want[i][1]);
        char w[SNAPSHOT_PATH_MAX];
        snapshot_path(t.root, want[i][0], want[i][1], w, sizeof w);
        CHECK_EQ_STR(list[i].path, w);
    }
    snapshot_list_free(list, n);

    size_t removed = 0;
    CHECK_EQ_INT(snapshot_prune(t.root, 0, &removed, err, sizeof err),
                 PZ_EINVAL);
    CHECK_EQ_INT(snapshot_prune(t.root, 2, &removed, err, sizeof err), 0);
    CHECK_EQ_INT(removed, 3 + 2);
    CHECK_EQ_INT(snapshot_list(t.root, &list, &n, err, sizeof err), 0);
    CHECK_EQ_INT(n, 2);
    CHECK(list[0].index == 100 && list[0].term == 3);
    CHECK(list[1].index == 100 && list[1].term == 2);
    snapshot_list_free(list, n);
    CHECK_EQ_INT(count_suffix(t.root, "snap-7-1.tmp"), 0);
    CHECK_EQ_INT(count_suffix(t.root, "recv.tmp"), 0);
    CHECK_EQ_INT(count_suffix(t.root, "raft.db.tmp"), 1); /* not ours */
    CHECK_EQ_INT(count_suffix(t.root, "raft.db"), 1);
    CHECK_EQ_INT(count_suffix(t.root, "snapx"), 1);
    /* Idempotent. */
    CHECK_EQ_INT(snapshot_prune(t.root, 2, &removed, err, sizeof err), 0);
    CHECK_EQ_INT(removed, 0);
    /* An empty or missing directory is an empty list. */
    char nodir[SNAPSHOT_PATH_MAX];
    snprintf(nodir, sizeof nodir, "%s/missing", t.root);
    CHECK_EQ_INT(snapshot_list(nodir, &list, &n, err, sizeof err), 0);
    CHECK(n == 0 && list == NULL);
    kv_free(kv);
    tdir_free(&t);
}

/* --- the forked writer ---------------------------------------------------- */

TEST(fork_snapshot_is_table_at_fork_time)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new_seeded(5);
    fill(kv, 200000, 50, 21);
    for (int i = 0; i < 20000; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "d%05d", i);
        kv_set(kv, k, (size_t)kl, "original", 8);
    }
    uint64_t at_fork = kv_digest(kv);
    size_t n_at_fork = kv_count(kv);
    struct snapshot_child h;
    char err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){
                                         1000, 7, conf_blob, sizeof conf_blob},
                                     &h, err, sizeof err),
                 0);
    CHECK(h.pid > 0);
    /* Mutate heavily while the child writes: overwrite, add, delete. */
    for (int i = 0; i < 20000; i++) {
        char k[16];
        int kl = snprintf(k, sizeof k, "d%05d", i);
        kv_set(kv, k, (size_t)kl, "changed", 7);
        if (i % 2)
            kv_del(kv, k, (size_t)kl);
    }
    fill(kv, 50000, 60, 99);
    CHECK(kv_digest(kv) != at_fork);
    bool ok = false;
    CHECK(poll_until_done(&h, &ok));
    if (!ok)
        fprintf(stderr, "    child: %s\n", h.errmsg);
    CHECK(ok);
    CHECK(h.pid == 0);
    CHECK_EQ_INT(count_suffix(t.root, ".tmp"), 0);
    int rc;
    size_t n = 0;
    uint64_t d = load_digest(h.path, &rc, err, sizeof err, &n);
    CHECK_EQ_INT(rc, 0);
    CHECK(d == at_fork);
    CHECK_EQ_INT(n, n_at_fork);
    /* Polling an idle handle: done, not ok. */
    bool done = false;
    CHECK_EQ_INT(snapshot_child_poll(&h, &done, &ok), 0);
    CHECK(done && !ok);
    kv_free(kv);
    tdir_free(&t);
}

TEST(fork_errors)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 10, 10, 1);
    struct snapshot_child h;
    char err[SNAPSHOT_ERRMSG_SIZE] = "", dir[SNAPSHOT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s/missing", t.root);
    CHECK_EQ_INT(snapshot_write_fork(dir, kv,
                                     &(struct snapshot_point){1, 1, NULL, 0},
                                     &h, err, sizeof err),
                 -ENOENT);
    CHECK(h.pid == 0 && strstr(err, dir) != NULL);
    CHECK_EQ_INT(
        snapshot_write_fork(
            t.root, kv,
            &(struct snapshot_point){1, 1, conf_blob, SNAPSHOT_CONF_MAX + 1},
            &h, err, sizeof err),
        PZ_EINVAL);
    CHECK(h.pid == 0);
    /* The child fails to rename: the target is a non-empty directory. */
    char target[SNAPSHOT_PATH_MAX];
    snapshot_path(t.root, 2, 1, target, sizeof target);
    CHECK(mkdir(target, 0755) == 0);
    touch(target, "x");
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){2, 1, NULL, 0},
                                     &h, err, sizeof err),
                 0);
    bool ok = true;
    CHECK(poll_until_done(&h, &ok));
    CHECK(!ok);
    CHECK(strstr(h.errmsg, "rename") != NULL);
    CHECK(WIFEXITED(h.status) && WEXITSTATUS(h.status) == 1);
    CHECK_EQ_INT(count_suffix(t.root, ".tmp"), 0);
    kv_free(kv);
    tdir_free(&t);
}

TEST(fork_child_killed_mid_write)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 1000, 10, 4);
    char prev[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 5, 1, prev));
    uint64_t prev_digest = kv_digest(kv);
    long prev_size = file_size(prev);
    fill(kv, 100000, 50, 8); /* several MiB: many flushes */

    /* The child stops itself after its first 1 MiB flush. */
    setenv(PZ_FAILPOINT_ENV, SNAPSHOT_FP_MID_WRITE ":stop", 1);
    struct snapshot_child h;
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){50, 2, conf_blob,
                                                              sizeof conf_blob},
                                     &h, err, sizeof err),
                 0);
    unsetenv(PZ_FAILPOINT_ENV);
    int st = 0;
    CHECK(waitpid(h.pid, &st, WUNTRACED) == h.pid);
    CHECK(WIFSTOPPED(st));
    CHECK_EQ_INT(file_size(h.tmp), 1 << 20); /* mid-write, really */
    bool done = true, ok = true;
    CHECK_EQ_INT(snapshot_child_poll(&h, &done, &ok), 0);
    CHECK(!done); /* a stopped child is still running */
    pid_t pid = h.pid;
    CHECK(kill(pid, SIGKILL) == 0);
    CHECK(poll_until_done(&h, &ok));
    CHECK(!ok);
    CHECK(WIFSIGNALED(h.status) && WTERMSIG(h.status) == SIGKILL);
    CHECK(strstr(h.errmsg, "signal 9") != NULL);
    CHECK(!exists(h.tmp)); /* the poller removed it */
    CHECK(!exists(h.path));
    CHECK_EQ_INT(file_size(prev), prev_size);
    int rc;
    CHECK(load_digest(prev, &rc, err, sizeof err, NULL) == prev_digest);
    struct kv *got;
    CHECK_EQ_INT(snapshot_load_newest_valid(t.root, 1, NULL, &got, NULL, NULL, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == prev_digest);
    kv_free(got);

    /* snapshot_child_kill: the same without the poller. */
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){60, 2, NULL, 0},
                                     &h, err, sizeof err),
                 0);
    snapshot_child_kill(&h);
    CHECK(h.pid == 0 && h.msg_fd == -1);
    CHECK(!exists(h.tmp));
    CHECK(exists(prev));
    snapshot_child_kill(&h); /* no child: no-op */
    kv_free(kv);
    tdir_free(&t);
}

/* Descriptors the child holds, as a bitmap of fds below 64. */
static uint64_t child_fds(pid_t pid)
{
    char d[64];
    snprintf(d, sizeof d, "/proc/%ld/fd", (long)pid);
    DIR *dir = opendir(d);
    uint64_t bits = 0;
    struct dirent *de;
    while (dir && (de = readdir(dir)) != NULL) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] != '.' && fd < 64)
            bits |= 1ull << fd;
    }
    if (dir)
        closedir(dir);
    return bits;
}

struct orphan_case {
    const char *dir; /* snapshot directory */
    struct kv *kv;   /* table to write */
    int report_fd;   /* pipe the pid of the writer goes to */
};

static void orphan_run(void *arg)
{
    struct orphan_case *c = arg;
    struct snapshot_child h;
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_write_fork(c->dir, c->kv,
                            &(struct snapshot_point){70, 1, NULL, 0}, &h, err,
                            sizeof err))
        _exit(2);
    int st;
    if (waitpid(h.pid, &st, WUNTRACED) != h.pid || !WIFSTOPPED(st))
        _exit(3);
    if (write(c->report_fd, &h.pid, sizeof h.pid) != sizeof h.pid)
        _exit(4);
    _exit(0); /* the node dies while its writer is stopped mid-write */
}

static bool process_gone(pid_t pid)
{
    char p[64], buf[256];
    snprintf(p, sizeof p, "/proc/%ld/stat", (long)pid);
    for (int i = 0; i < 5000; i++) {
        FILE *f = fopen(p, "r");
        if (f == NULL)
            return true;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')');
        if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'))
            return true; /* dead, waiting for its new parent to reap */
        usleep(1000);
    }
    return false;
}

TEST(fork_child_isolation)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 20000, 100, 4);
    char err[SNAPSHOT_ERRMSG_SIZE];
    /* A descriptor of the "node" (think listening socket): the child must
     * not keep it open. */
    int extra[2];
    CHECK(pipe(extra) == 0);
    setenv(PZ_FAILPOINT_ENV, SNAPSHOT_FP_MID_WRITE ":stop", 1);
    struct snapshot_child h;
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){60, 1, NULL, 0},
                                     &h, err, sizeof err),
                 0);
    int st;
    CHECK(waitpid(h.pid, &st, WUNTRACED) == h.pid && WIFSTOPPED(st));
    uint64_t fds = child_fds(h.pid);
    CHECK((fds & (1ull << extra[0])) == 0);
    CHECK((fds & (1ull << extra[1])) == 0);
    CHECK((fds & 7) == 7); /* stdio kept */
    snapshot_child_kill(&h);
    CHECK(!exists(h.tmp));

    /* The node dies: its stopped writer dies with it (PR_SET_PDEATHSIG)
     * instead of finishing an orphan .snap. */
    struct orphan_case c = {t.root, kv, extra[1]};
    CHECK_EQ_INT(run_in_child(orphan_run, &c), 0);
    unsetenv(PZ_FAILPOINT_ENV);
    pid_t writer = 0;
    CHECK(read(extra[0], &writer, sizeof writer) == sizeof writer);
    CHECK(writer > 0);
    bool gone = process_gone(writer);
    if (!gone)
        kill(writer, SIGKILL); /* do not leave a stopped orphan behind */
    CHECK(gone);
    char snap[SNAPSHOT_PATH_MAX];
    snapshot_path(t.root, 70, 1, snap, sizeof snap);
    CHECK(!exists(snap));
    close(extra[0]);
    close(extra[1]);
    kv_free(kv);
    tdir_free(&t);
}

struct fp_case {
    const char *dir; /* snapshot directory */
    struct kv *kv;   /* table to write */
    bool fork;       /* forked writer (else synchronous) */
    uint64_t index;  /* snapshot index */
};

static void fp_run(void *arg)
{
    struct fp_case *c = arg;
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (!c->fork) {
        snapshot_write(c->dir, c->kv,
                       &(struct snapshot_point){c->index, 1, NULL, 0}, NULL, 0,
                       err, sizeof err);
        return;
    }
    struct snapshot_child h;
    if (snapshot_write_fork(c->dir, c->kv,
                            &(struct snapshot_point){c->index, 1, NULL, 0}, &h,
                            err, sizeof err))
        _exit(2);
    bool ok;
    poll_until_done(&h, &ok); /* exits 99 when the child hit the point */
    _exit(ok ? 0 : 3);
}

/* Expect exit 99 at point fp; check which of .tmp / .snap exist. */
static bool fp_check(const char *dir, struct kv *kv, bool fork, uint64_t index,
                     const char *fp, bool want_tmp, bool want_snap)
{
    struct fp_case c = {dir, kv, fork, index};
    setenv(PZ_FAILPOINT_ENV, fp, 1);
    int st = run_in_child(fp_run, &c);
    unsetenv(PZ_FAILPOINT_ENV);
    char snap[SNAPSHOT_PATH_MAX], tmp[SNAPSHOT_PATH_MAX + 8], err[512];
    snapshot_path(dir, index, 1, snap, sizeof snap);
    snprintf(tmp, sizeof tmp, "%.*s.tmp", (int)(strlen(snap) - 5), snap);
    if (st != PZ_FAILPOINT_EXIT || exists(tmp) != want_tmp ||
        exists(snap) != want_snap) {
        fprintf(stderr, "    %s fork=%d: status %d tmp %d snap %d\n", fp, fork,
                st, exists(tmp), exists(snap));
        return false;
    }
    /* Whatever the crash left in place is complete and valid. */
    if (want_tmp && snapshot_verify(tmp, NULL, err, sizeof err) != 0)
        return false;
    if (want_snap && snapshot_verify(snap, NULL, err, sizeof err) != 0)
        return false;
    return true;
}

TEST(failpoints)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 5000, 20, 6);
    char prev[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 1, 1, prev));
    CHECK(fp_check(t.root, kv, false, 10, SNAPSHOT_FP_BEFORE_RENAME, true,
                   false));
    CHECK(
        fp_check(t.root, kv, false, 11, SNAPSHOT_FP_AFTER_RENAME, false, true));
    CHECK(
        fp_check(t.root, kv, true, 12, SNAPSHOT_FP_BEFORE_RENAME, true, false));
    CHECK(
        fp_check(t.root, kv, true, 13, SNAPSHOT_FP_AFTER_RENAME, false, true));
    /* An unrelated or suffixed name is not this point. */
    setenv(PZ_FAILPOINT_ENV, "snapshot-before-renamex", 1);
    CHECK(!pz_failpoint_armed(SNAPSHOT_FP_BEFORE_RENAME));
    CHECK(write_ok(t.root, kv, 14, 1, NULL));
    unsetenv(PZ_FAILPOINT_ENV);
    /* Restart: the stray .tmp of the crashes before rename is pruned, the
     * newest complete snapshot wins. */
    size_t removed;
    CHECK_EQ_INT(snapshot_prune(t.root, 5, &removed, err, sizeof err), 0);
    CHECK_EQ_INT(removed, 2);
    CHECK_EQ_INT(count_suffix(t.root, ".tmp"), 0);
    struct kv *got;
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_load_newest_valid(t.root, 1, NULL, &got, &m, NULL, err, sizeof err),
                 0);
    CHECK(m.index == 14 && kv_digest(got) == kv_digest(kv));
    snapshot_meta_free(&m);
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

/* --- streaming ------------------------------------------------------------ */

/* Send src to a receiver in dir in chunks of `chunk` bytes, optionally
 * corrupting one byte. Returns finish's code. */
static int transfer(const char *src, const char *dir, uint64_t index,
                    uint64_t term, size_t chunk, long flip_at, char *out,
                    char *err, size_t errlen)
{
    struct snapshot_reader *rd;
    int rc = snapshot_reader_open(src, &rd, err, errlen);
    if (rc)
        return rc;
    uint64_t size = snapshot_reader_size(rd);
    struct snapshot_receiver *rx;
    rc = snapshot_receiver_begin(dir, index, term, size, &rx, err, errlen);
    if (rc) {
        snapshot_reader_close(rd);
        return rc;
    }
    uint8_t *buf = pz_malloc(chunk);
    uint64_t off = 0;
    while (off < size) {
        size_t got;
        rc = snapshot_reader_read(rd, off, buf, chunk, &got, err, errlen);
        pz_assert(rc == 0 && got > 0);
        if (flip_at >= 0 && (uint64_t)flip_at >= off &&
            (uint64_t)flip_at < off + got)
            buf[flip_at - (long)off] ^= 0x40;
        rc = snapshot_receiver_write(rx, off, buf, got, err, errlen);
        pz_assert(rc == 0);
        off += got;
        pz_assert(snapshot_receiver_offset(rx) == off);
    }
    pz_free(buf);
    snapshot_reader_close(rd);
    return snapshot_receiver_finish(rx, NULL, out, SNAPSHOT_PATH_MAX, NULL, err,
                                    errlen);
}

TEST(reader_chunks)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 3000, 30, 2);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 8, 1, path));
    size_t len;
    uint8_t *whole = read_all(path, &len);
    struct snapshot_reader *rd;
    CHECK_EQ_INT(snapshot_reader_open(path, &rd, err, sizeof err), 0);
    CHECK_EQ_INT(snapshot_reader_size(rd), len);
    /* The file may be pruned while it is being sent. */
    CHECK(unlink(path) == 0);
    uint8_t buf[4096];
    size_t got;
    CHECK_EQ_INT(
        snapshot_reader_read(rd, 100, buf, 1000, &got, err, sizeof err), 0);
    CHECK(got == 1000 && memcmp(buf, whole + 100, 1000) == 0);
    CHECK_EQ_INT(snapshot_reader_read(rd, len - 10, buf, sizeof buf, &got, err,
                                      sizeof err),
                 0);
    CHECK(got == 10 && memcmp(buf, whole + len - 10, 10) == 0);
    CHECK_EQ_INT(
        snapshot_reader_read(rd, len, buf, sizeof buf, &got, err, sizeof err),
        0);
    CHECK_EQ_INT(got, 0);
    CHECK_EQ_INT(snapshot_reader_read(rd, 0, buf, 8, &got, err, sizeof err), 0);
    CHECK(got == 8 && memcmp(buf, "PYAZSNAP", 8) == 0);
    snapshot_reader_close(rd);
    snapshot_reader_close(NULL);
    CHECK_EQ_INT(snapshot_reader_open(path, &rd, err, sizeof err),
                 PZ_ENOTFOUND);
    pz_free(whole);
    kv_free(kv);
    tdir_free(&t);
}

TEST(receiver_roundtrip)
{
    struct tdir t, u;
    tdir_init(&t);
    tdir_init(&u);
    struct kv *kv = kv_new();
    fill(kv, 20000, 40, 12);
    char src[SNAPSHOT_PATH_MAX], out[SNAPSHOT_PATH_MAX],
        err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 300, 4, src));
    static const size_t chunks[] = {65537, 777, 65536, 1 << 22};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(chunks); i++) {
        size_t c = chunks[i];
        int rc = transfer(src, u.root, 300, 4, c, -1, out, err, sizeof err);
        if (rc)
            fprintf(stderr, "    %s\n", err);
        CHECK_EQ_INT(rc, 0);
        char want[SNAPSHOT_PATH_MAX];
        snapshot_path(u.root, 300, 4, want, sizeof want);
        CHECK_EQ_STR(out, want);
        CHECK(load_digest(out, &rc, err, sizeof err, NULL) == kv_digest(kv));
        CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
    }
    /* finish reports the header. */
    struct snapshot_reader *rd;
    struct snapshot_receiver *rx;
    CHECK_EQ_INT(snapshot_reader_open(src, &rd, err, sizeof err), 0);
    uint64_t size = snapshot_reader_size(rd);
    uint8_t *buf = pz_malloc(size);
    size_t got;
    CHECK_EQ_INT(snapshot_reader_read(rd, 0, buf, size, &got, err, sizeof err),
                 0);
    snapshot_reader_close(rd);
    CHECK_EQ_INT(
        snapshot_receiver_begin(u.root, 300, 4, size, &rx, err, sizeof err), 0);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, buf, size, err, sizeof err), 0);
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_receiver_finish(rx, NULL, NULL, 0, &m, err, sizeof err), 0);
    CHECK(m.index == 300 && m.term == 4 && m.nkeys == 20000);
    CHECK(m.conf_len == sizeof conf_blob);
    snapshot_meta_free(&m);
    pz_free(buf);
    kv_free(kv);
    tdir_free(&t);
    tdir_free(&u);
}

/* A check called off (the node closing while a pool thread loads the
 * file): the finish fails with PZ_ECANCELED, leaves neither the .tmp nor
 * a .snap, and the same file received again with the flag down loads. */
TEST(receiver_load_called_off)
{
    struct tdir t, u;
    tdir_init(&t);
    tdir_init(&u);
    struct kv *kv = kv_new();
    fill(kv, 10000, 20, 10);
    char src[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 50, 2, src));
    size_t size;
    uint8_t *buf = read_all(src, &size);
    for (int stop = 1; stop >= 0; stop--) {
        struct snapshot_receiver *rx;
        CHECK_EQ_INT(
            snapshot_receiver_begin(u.root, 50, 2, size, &rx, err, sizeof err),
            0);
        CHECK_EQ_INT(snapshot_receiver_write(rx, 0, buf, size, err, sizeof err),
                     0);
        snapshot_receiver_stop_on(rx, &stop);
        struct kv *into = kv_new();
        int rc =
            snapshot_receiver_finish(rx, into, NULL, 0, NULL, err, sizeof err);
        if (stop) {
            CHECK_EQ_INT(rc, PZ_ECANCELED);
            CHECK(strstr(err, "called off") != NULL);
            CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
            CHECK_EQ_INT(count_suffix(u.root, ".snap"), 0);
        } else {
            CHECK_EQ_INT(rc, 0);
            CHECK(kv_digest(into) == kv_digest(kv));
            CHECK_EQ_INT(count_suffix(u.root, ".snap"), 1);
        }
        kv_free(into);
    }
    pz_free(buf);
    kv_free(kv);
    tdir_free(&t);
    tdir_free(&u);
}

TEST(receiver_refuses_gaps_and_overruns)
{
    struct tdir t, u;
    tdir_init(&t);
    tdir_init(&u);
    struct kv *kv = kv_new();
    fill(kv, 100, 20, 3);
    char src[SNAPSHOT_PATH_MAX], out[SNAPSHOT_PATH_MAX],
        err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 30, 2, src));
    size_t len;
    uint8_t *b = read_all(src, &len);
    struct snapshot_receiver *rx;
    CHECK_EQ_INT(
        snapshot_receiver_begin(u.root, 30, 2, 10, &rx, err, sizeof err),
        PZ_EINVAL);
    CHECK_EQ_INT(
        snapshot_receiver_begin(u.root, 30, 2, len, &rx, err, sizeof err), 0);
    CHECK_EQ_INT(
        snapshot_receiver_write(rx, 100, b + 100, 100, err, sizeof err),
        PZ_EINVAL); /* gap */
    CHECK(strstr(err, "contiguous") != NULL);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, b, 100, err, sizeof err), 0);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, b, 100, err, sizeof err),
                 PZ_EINVAL); /* resent */
    CHECK_EQ_INT(snapshot_receiver_write(rx, 50, b + 50, 100, err, sizeof err),
                 PZ_EINVAL); /* overlap */
    CHECK_EQ_INT(snapshot_receiver_write(rx, 300, b + 300, 10, err, sizeof err),
                 PZ_EINVAL); /* ahead */
    CHECK_EQ_INT(snapshot_receiver_offset(rx), 100);
    CHECK_EQ_INT(
        snapshot_receiver_write(rx, 100, b + 100, len, err, sizeof err),
        PZ_EINVAL); /* past the announced size */
    CHECK_EQ_INT(snapshot_receiver_offset(rx), 100);
    /* The transfer goes on from the offset it reports. */
    CHECK_EQ_INT(
        snapshot_receiver_write(rx, 100, b + 100, len - 100, err, sizeof err),
        0);
    CHECK_EQ_INT(
        snapshot_receiver_finish(rx, NULL, out, sizeof out, NULL, err, sizeof err),
        0);
    int rc;
    CHECK(load_digest(out, &rc, err, sizeof err, NULL) == kv_digest(kv));

    /* Incomplete: finish refuses, the .tmp goes away. */
    CHECK_EQ_INT(
        snapshot_receiver_begin(u.root, 31, 2, len, &rx, err, sizeof err), 0);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, b, len - 1, err, sizeof err),
                 0);
    CHECK_EQ_INT(
        snapshot_receiver_finish(rx, NULL, out, sizeof out, NULL, err, sizeof err),
        PZ_EINVAL);
    CHECK(strstr(err, "incomplete") != NULL);
    CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
    char p31[SNAPSHOT_PATH_MAX];
    snapshot_path(u.root, 31, 2, p31, sizeof p31);
    CHECK(!exists(p31));
    pz_free(b);
    kv_free(kv);
    tdir_free(&t);
    tdir_free(&u);
}

/* Which chunks a follower takes: only from its leader, in its term, for a
 * snapshot it needs and within its size bound, in order. */
TEST(rx_decide)
{
    struct snapshot_rx_view v = {.self = 2, .leader = 1, .term = 5,
                                 .commit = 100, .max_size = 1 << 20};
    uint8_t d[10] = {0};
    struct raft_snap_chunk c = {.term = 5, .snap_index = 200, .snap_term = 4,
                                .offset = 0, .total = 5000, .data = d,
                                .len = sizeof d};
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_BEGIN);
    /* not our leader, not our term, or we lead: stale */
    CHECK_EQ_INT(snapshot_rx_decide(&v, 3, &c), SNAPSHOT_RX_STALE);
    c.term = 6;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_STALE);
    c.term = 5;
    v.leader = 2;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 2, &c), SNAPSHOT_RX_STALE);
    v.leader = 0;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 0, &c), SNAPSHOT_RX_STALE);
    v.leader = 1;
    /* impossible ones: invalid, whoever sends them */
    struct raft_snap_chunk bad = c;
    bad.snap_index = 0;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 3, &bad), SNAPSHOT_RX_INVALID);
    bad = c;
    bad.snap_index = RAFT_LIMIT;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &bad), SNAPSHOT_RX_INVALID);
    bad = c;
    bad.snap_term = 6;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &bad), SNAPSHOT_RX_INVALID);
    bad = c;
    bad.total = 10;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &bad), SNAPSHOT_RX_INVALID);
    bad = c;
    bad.offset = 4995;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &bad), SNAPSHOT_RX_INVALID);
    /* one we do not need */
    c.snap_index = 100;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_IGNORE);
    c.snap_index = 200;
    v.have_index = 200;
    v.have_term = 4;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_IGNORE);
    v.have_index = v.have_term = 0;
    /* too big: refused before anything is written */
    c.total = (1 << 20) + 1;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_TOO_BIG);
    c.total = 5000;
    /* the rest of a transfer: in order only */
    v.receiving = true;
    v.rx_from = 1;
    v.rx_index = 200;
    v.rx_term = 4;
    v.rx_total = 5000;
    v.rx_offset = 10;
    c.offset = 10;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_WRITE);
    c.offset = 20;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_STALE);
    c.offset = 10;
    c.total = 6000;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_IGNORE);
    c.total = 5000;
    c.snap_index = 201;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_IGNORE);
    /* a new start replaces the transfer in progress */
    c.offset = 0;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_BEGIN);
    /* pieces without a start are dropped */
    v.receiving = false;
    c.offset = 10;
    CHECK_EQ_INT(snapshot_rx_decide(&v, 1, &c), SNAPSHOT_RX_IGNORE);
}

/* The receiver's check is the loader's: a file holding a key twice, whose
 * checksum is right, is refused when finishing with a table to load
 * into, and nothing stays behind. */
TEST(receiver_refuses_repeated_key)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    kv_set(kv, "a", 1, "1", 1);
    kv_set(kv, "b", 1, "2", 1);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK_EQ_INT(snapshot_write(t.root, kv,
                                &(struct snapshot_point){9, 2, NULL, 0}, path,
                                sizeof path, err, sizeof err),
                 0);
    kv_free(kv);
    /* Rename key "b" to "a" and fix the checksum. */
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unlink(path);
    /* Records are in key order: the second is b's. */
    static const uint8_t rec[] = {0, 0, 0, 1, 0, 0, 0, 1};
    uint8_t *pb = memmem(buf, n, rec, sizeof rec);
    CHECK(pb != NULL);
    pb = memmem(pb + 1, (size_t)(buf + n - pb - 1), rec, sizeof rec);
    CHECK(pb != NULL && pb[SNAPSHOT_RECORD_HEADER] == 'b');
    pb[SNAPSHOT_RECORD_HEADER] = 'a';
    pz_put_u64(buf + n - 8, snapshot_crc64(0, buf, n - 8));
    struct snapshot_receiver *rx;
    CHECK_EQ_INT(snapshot_receiver_begin(t.root, 9, 2, n, &rx, err,
                                         sizeof err),
                 0);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, buf, n, err, sizeof err), 0);
    struct kv *into = kv_new();
    CHECK_EQ_INT(snapshot_receiver_finish(rx, into, NULL, 0, NULL, err,
                                          sizeof err),
                 PZ_ECORRUPT);
    CHECK(strstr(err, "repeats a key") != NULL);
    kv_free(into);
    DIR *d = opendir(t.root);
    int files = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        files += de->d_name[0] != '.';
    closedir(d);
    CHECK_EQ_INT(files, 0);
    tdir_free(&t);
}

/* A version-1 file (what the previous release wrote) still loads: its
 * keys get the snapshot's index as their revisions. The file is made from
 * a version-2 one by dropping the revision and the records' metadata. */
TEST(loads_version_1)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    kv_set(kv, "a", 1, "1", 1);
    kv_set(kv, "b", 1, "22", 2);
    kv_set(kv, "a", 1, "333", 3);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 40, 3, path));
    size_t len;
    uint8_t *p = read_all(path, &len);
    CHECK(p != NULL);
    uint8_t *q = pz_malloc(len);
    size_t at = 48 + sizeof conf_blob, qn = at;
    memcpy(q, p, at);
    pz_put_u32(q + 8, 1);
    at += 12; /* revision, lease count (0) */
    for (int i = 0; i < 2; i++) {
        uint32_t kl = pz_get_u32(p + at), vl = pz_get_u32(p + at + 4);
        memcpy(q + qn, p + at, 8);
        memcpy(q + qn + 8, p + at + SNAPSHOT_RECORD_HEADER, kl + vl);
        qn += 8 + kl + vl;
        at += SNAPSHOT_RECORD_HEADER + kl + vl;
    }
    memcpy(q + qn, p + at, SNAPSHOT_TRAILER_SIZE);
    qn += SNAPSHOT_TRAILER_SIZE;
    rewrite_crc(q, qn);
    CHECK(write_file(path, q, qn));
    struct kv *got = kv_new();
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_load(path, got, &m, err, sizeof err), 0);
    CHECK(m.version == 1 && m.revision == 40 && m.index == 40);
    CHECK(kv_revision(got) == 40 && kv_count(got) == 2);
    struct kv_view v;
    CHECK(kv_get_view(got, "a", 1, &v));
    CHECK(v.vlen == 3 && memcmp(v.value, "333", 3) == 0);
    CHECK(v.meta.create_revision == 40 && v.meta.mod_revision == 40 &&
          v.meta.version == 1);
    CHECK(kv_digest(got) == kv_digest_compute(got));
    /* The next write is revision 41. */
    kv_set(got, "b", 1, "x", 1);
    CHECK(kv_get_view(got, "b", 1, &v) && v.meta.mod_revision == 41 &&
          v.meta.version == 2 && v.meta.create_revision == 40);
    snapshot_meta_free(&m);
    /* And a version-3 round trip keeps every key's metadata exactly. */
    CHECK(write_ok(t.root, kv, 41, 3, path));
    struct kv *back = kv_new();
    CHECK_EQ_INT(snapshot_load(path, back, &m, err, sizeof err), 0);
    CHECK(m.version == 3 && m.revision == 3 && kv_revision(back) == 3);
    CHECK(kv_get_view(back, "a", 1, &v) && v.meta.create_revision == 1 &&
          v.meta.mod_revision == 3 && v.meta.version == 2);
    CHECK(kv_digest(back) == kv_digest(kv));
    snapshot_meta_free(&m);
    kv_free(back);
    kv_free(got);
    pz_free(q);
    pz_free(p);
    kv_free(kv);
    tdir_free(&t);
}

/* Pruning keeps exactly the snapshots it is told to keep, newer files
 * included; temporary files go. */
TEST(prune_except_and_temp)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    char err[SNAPSHOT_ERRMSG_SIZE], p[SNAPSHOT_PATH_MAX];
    static const uint64_t idx[] = {10, 20, 30, 1ull << 61};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(idx); i++)
        CHECK_EQ_INT(
            snapshot_write(t.root, kv,
                           &(struct snapshot_point){idx[i], 3, NULL, 0}, NULL,
                           0, err, sizeof err),
            0);
    kv_free(kv);
    snprintf(p, sizeof p, "%s/snap-40-3.snap.recv.tmp", t.root);
    FILE *f = fopen(p, "w");
    fclose(f);
    struct snapshot_id keep[] = {{20, 3}, {10, 3}, {0, 0}};
    size_t removed = 0;
    CHECK_EQ_INT(snapshot_prune_except(t.root, keep, 3, &removed, err,
                                       sizeof err),
                 0);
    CHECK_EQ_INT(removed, 3); /* 30, the huge one, the .tmp */
    struct snapshot_info *list;
    size_t n;
    CHECK_EQ_INT(snapshot_list(t.root, &list, &n, err, sizeof err), 0);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(list[0].index, 20);
    CHECK_EQ_INT(list[1].index, 10);
    snapshot_list_free(list, n);
    f = fopen(p, "w");
    fclose(f);
    CHECK_EQ_INT(snapshot_remove_temp(t.root, &removed, err, sizeof err), 0);
    CHECK_EQ_INT(removed, 1);
    CHECK(!exists(p));
    tdir_free(&t);
}

TEST(receiver_abort_and_corruption)
{
    struct tdir t, u;
    tdir_init(&t);
    tdir_init(&u);
    struct kv *old = kv_new(), *kv = kv_new();
    fill(old, 500, 20, 1);
    fill(kv, 5000, 20, 2);
    char prev[SNAPSHOT_PATH_MAX], src[SNAPSHOT_PATH_MAX],
        out[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(u.root, old, 10, 1, prev)); /* follower's snapshot */
    long prev_size = file_size(prev);
    CHECK(write_ok(t.root, kv, 40, 3, src));
    size_t len;
    uint8_t *b = read_all(src, &len);

    /* Abort removes the .tmp and nothing else. */
    struct snapshot_receiver *rx;
    CHECK_EQ_INT(
        snapshot_receiver_begin(u.root, 40, 3, len, &rx, err, sizeof err), 0);
    CHECK_EQ_INT(snapshot_receiver_write(rx, 0, b, len / 2, err, sizeof err),
                 0);
    CHECK_EQ_INT(count_suffix(u.root, ".recv.tmp"), 1);
    snapshot_receiver_abort(rx);
    snapshot_receiver_abort(NULL);
    CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
    CHECK_EQ_INT(file_size(prev), prev_size);

    /* A byte damaged in transit (header, body, trailer) is caught at
     * finish; the previous snapshot stays the newest. */
    long flips[] = {5, 20, (long)len / 2, (long)len - 12, (long)len - 1};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(flips); i++) {
        err[0] = '\0';
        int rc =
            transfer(src, u.root, 40, 3, 4096, flips[i], out, err, sizeof err);
        CHECK_EQ_INT(rc, PZ_ECORRUPT);
        CHECK(strstr(err, ".recv.tmp") != NULL);
        CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
        CHECK_EQ_INT(count_suffix(u.root, ".snap"), 1);
    }
    /* A valid file announced under another index or term is refused. */
    int rc = transfer(src, u.root, 41, 3, 4096, -1, out, err, sizeof err);
    CHECK_EQ_INT(rc, PZ_ECORRUPT);
    CHECK(strstr(err, "announced") != NULL);
    CHECK_EQ_INT(count_suffix(u.root, ".snap"), 1);
    struct kv *got;
    CHECK_EQ_INT(snapshot_load_newest_valid(u.root, 1, NULL, &got, NULL, NULL, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(old));
    kv_free(got);
    pz_free(b);
    kv_free(old);
    kv_free(kv);
    tdir_free(&t);
    tdir_free(&u);
}

struct install_case {
    const char *dir; /* follower directory */
    uint8_t *data;   /* file contents */
    size_t len;      /* their size */
};

static void install_run(void *arg)
{
    struct install_case *c = arg;
    struct snapshot_receiver *rx;
    char err[SNAPSHOT_ERRMSG_SIZE];
    if (snapshot_receiver_begin(c->dir, 40, 3, c->len, &rx, err, sizeof err))
        _exit(2);
    for (size_t off = 0; off < c->len; off += 1000) {
        size_t n = PZ_MIN((size_t)1000, c->len - off);
        if (snapshot_receiver_write(rx, off, c->data + off, n, err, sizeof err))
            _exit(3);
    }
    snapshot_receiver_finish(rx, NULL, NULL, 0, NULL, err, sizeof err);
}

TEST(receiver_crash_mid_install)
{
    struct tdir t, u;
    tdir_init(&t);
    tdir_init(&u);
    struct kv *old = kv_new(), *kv = kv_new();
    fill(old, 500, 20, 1);
    fill(kv, 5000, 20, 2);
    char prev[SNAPSHOT_PATH_MAX], src[SNAPSHOT_PATH_MAX],
        err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(u.root, old, 10, 1, prev));
    CHECK(write_ok(t.root, kv, 40, 3, src));
    struct install_case c = {.dir = u.root};
    c.data = read_all(src, &c.len);
    setenv(PZ_FAILPOINT_ENV, SNAPSHOT_FP_INSTALL_MID, 1);
    int st = run_in_child(install_run, &c);
    unsetenv(PZ_FAILPOINT_ENV);
    CHECK_EQ_INT(st, PZ_FAILPOINT_EXIT);
    /* Exactly the first chunk is there, in the .tmp only. */
    char tmp[SNAPSHOT_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/snap-40-3.recv.tmp", u.root);
    CHECK_EQ_INT(file_size(tmp), 1000);
    CHECK_EQ_INT(count_suffix(u.root, ".snap"), 1);
    struct kv *got;
    CHECK_EQ_INT(snapshot_load_newest_valid(u.root, 1, NULL, &got, NULL, NULL, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(old));
    kv_free(got);
    /* After the restart the transfer starts over and succeeds. */
    CHECK_EQ_INT(run_in_child(install_run, &c), 0);
    CHECK_EQ_INT(count_suffix(u.root, ".tmp"), 0);
    CHECK_EQ_INT(snapshot_load_newest_valid(u.root, 1, NULL, &got, NULL, NULL, err, sizeof err),
                 0);
    CHECK(kv_digest(got) == kv_digest(kv));
    kv_free(got);
    pz_free(c.data);
    kv_free(old);
    kv_free(kv);
    tdir_free(&t);
    tdir_free(&u);
}

/* --- measurement ---------------------------------------------------------- */

/* 1M keys of 16 bytes with 100-byte values: fork writer and load, timed.
 * Runs only with PYAZDB_SNAPSHOT_BENCH set (PYAZDB_SNAPSHOT_BENCH_DIR
 * chooses the directory, default /tmp). */
TEST(bench_1m)
{
    const char *on = getenv("PYAZDB_SNAPSHOT_BENCH");
    if (on == NULL || on[0] == '\0')
        return;
    size_t n = (size_t)strtoul(on, NULL, 10);
    if (n < 1000)
        n = 1000000;
    const char *base = getenv("PYAZDB_SNAPSHOT_BENCH_DIR");
    struct tdir t;
    snprintf(t.root, sizeof t.root, "%s/pz-snapbench-XXXXXX",
             base ? base : "/tmp");
    CHECK(mkdtemp(t.root) != NULL);
    struct kv *kv = kv_new_seeded(3);
    uint64_t t0 = now_us();
    fill(kv, n, 100, 1);
    uint64_t t1 = now_us();
    printf("  bench: %zu keys (16 B keys, 100 B values) built in %.3f s\n",
           kv_count(kv), (double)(t1 - t0) / 1e6);
    struct snapshot_child h;
    char err[SNAPSHOT_ERRMSG_SIZE];
    t0 = now_us();
    CHECK_EQ_INT(snapshot_write_fork(t.root, kv,
                                     &(struct snapshot_point){n, 1, conf_blob,
                                                              sizeof conf_blob},
                                     &h, err, sizeof err),
                 0);
    uint64_t t_ret = now_us();
    /* Keep the "loop" busy with writes while the child works. */
    uint64_t muts = 0, st = 5;
    bool done = false, ok = false;
    uint64_t worst_poll = 0;
    while (!done) {
        uint8_t k[16];
        for (int i = 0; i < 1000; i++, muts++) {
            pz_put_u64(k, pz_rand_next(&st));
            pz_put_u64(k + 8, muts);
            kv_set(kv, k, sizeof k, "v", 1);
        }
        uint64_t p0 = now_us();
        CHECK_EQ_INT(snapshot_child_poll(&h, &done, &ok), 0);
        worst_poll = PZ_MAX(worst_poll, now_us() - p0);
        usleep(1000);
    }
    t1 = now_us();
    CHECK(ok);
    long size = file_size(h.path);
    printf("  bench: fork writer: fork() %.2f ms, call returned after "
           "%.2f ms, child done after %.3f s (poll granularity 1 ms); "
           "parent applied %" PRIu64 " sets meanwhile, slowest poll "
           "%" PRIu64 " us\n",
           (double)h.fork_us / 1e3, (double)(t_ret - t0) / 1e3,
           (double)(t1 - t0) / 1e6, muts, worst_poll);
    printf("  bench: file %ld bytes (%.1f MiB, %.1f bytes/key)\n", size,
           (double)size / (1 << 20), (double)size / (double)n);
    /* Synchronous writer on the same table, for comparison. */
    char p2[SNAPSHOT_PATH_MAX];
    t0 = now_us();
    CHECK_EQ_INT(snapshot_write(t.root, kv,
                                &(struct snapshot_point){n + 1, 1, conf_blob,
                                                         sizeof conf_blob},
                                p2, sizeof p2, err, sizeof err),
                 0);
    t1 = now_us();
    printf("  bench: synchronous writer (%zu keys): %.3f s\n", kv_count(kv),
           (double)(t1 - t0) / 1e6);
    /* Load, cold table. */
    struct kv *got = kv_new_seeded(4);
    struct snapshot_meta m;
    t0 = now_us();
    CHECK_EQ_INT(snapshot_load(h.path, got, &m, err, sizeof err), 0);
    t1 = now_us();
    CHECK_EQ_INT(kv_count(got), n);
    printf("  bench: load %zu keys: %.3f s (%.0f MiB/s)\n", kv_count(got),
           (double)(t1 - t0) / 1e6,
           (double)size / (1 << 20) / ((double)(t1 - t0) / 1e6));
    t0 = now_us();
    CHECK_EQ_INT(snapshot_verify(h.path, NULL, err, sizeof err), 0);
    t1 = now_us();
    printf("  bench: verify only (no table): %.3f s\n",
           (double)(t1 - t0) / 1e6);
    snapshot_meta_free(&m);
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

/* Leases round-trip (keys stay attached); every bad lease byte is refused
 * with a message once the checksum matches. */
TEST(leases_roundtrip_and_corruption)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 7, 30), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 9, 5), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_set_lease(&b, "aa", 2, "1", 1, 9), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    kv_set(kv, "bb", 2, "2", 1);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 4, 1, path));
    struct kv *got = kv_new();
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_load(path, got, &m, err, sizeof err), 0);
    CHECK(m.version == 3 && m.nleases == 2);
    snapshot_meta_free(&m);
    struct kv_lease l;
    CHECK(kv_lease_count(got) == 2 && kv_lease_get(got, 9, &l) &&
          l.ttl == 5 && l.nkeys == 1 && kv_lease_get(got, 7, &l) &&
          l.ttl == 30 && l.nkeys == 0);
    CHECK(kv_digest(got) == kv_digest(kv));
    CHECK(kv_digest_compute(got) == kv_digest(got));
    /* Revoking in the loaded table deletes the attached key. */
    pz_buf_reset(&b);
    CHECK_EQ_INT(kv_encode_lease_revoke(&b, 9), 0);
    struct kv_result res;
    CHECK_EQ_INT(kv_apply(got, (uint8_t *)b.data, b.len, &res), 0);
    CHECK(res.status == KV_OK && res.deleted == 1 && kv_count(got) == 1);
    kv_free(got);
    size_t len;
    uint8_t *orig = read_all(path, &len);
    CHECK(orig != NULL);
    uint8_t *p = pz_malloc(len);
    size_t l0 = 48 + sizeof conf_blob + 12; /* first lease record */
    /* id 0, ids out of order, ttl 0, ttl too long, key naming a lease
     * the file lacks. */
    struct {
        size_t off;
        uint64_t v;
        const char *msg;
    } bad[] = {
        {l0, 0, "corrupt lease record"},
        {l0, 10, "corrupt lease record"},
        {l0 + 8, 0, "corrupt lease record"},
        {l0 + 8, (uint64_t)KV_LEASE_TTL_MAX + 1, "corrupt lease record"},
        {l0 + 32 + 32, 8, "which the file does not hold"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        memcpy(p, orig, len);
        pz_put_u64(p + bad[i].off, bad[i].v);
        rewrite_crc(p, len);
        CHECK(write_file(path, p, len));
        int rc;
        load_digest(path, &rc, err, sizeof err, NULL);
        if (!(is_corrupt_named(rc, err, path) && strstr(err, bad[i].msg)))
            fprintf(stderr, "    case %zu: %s\n", i, err);
        CHECK(is_corrupt_named(rc, err, path) && strstr(err, bad[i].msg));
    }
    /* A lease count that cannot fit. */
    memcpy(p, orig, len);
    pz_put_u32(p + l0 - 4, 0x7fffffffu);
    rewrite_crc(p, len);
    CHECK(write_file(path, p, len));
    int rc;
    load_digest(path, &rc, err, sizeof err, NULL);
    CHECK(is_corrupt_named(rc, err, path) && strstr(err, "leases"));
    pz_free(p);
    pz_free(orig);
    pz_buf_free(&b);
    kv_free(kv);
    tdir_free(&t);
}

/* Keys a revoke deleted, in the order its events reported them. */
struct revoke_order {
    char keys[256];
    size_t n;
};

static void on_revoke_del(void *arg, int type, const struct kv_view *cur,
                          const struct kv_view *prev)
{
    struct revoke_order *o = arg;
    if (type == KV_TOP_DEL && cur == NULL && prev && prev->klen == 2 &&
        o->n + 2 < sizeof o->keys) {
        memcpy(o->keys + o->n, prev->key, 2);
        o->n += 2;
        o->keys[o->n] = '\0';
    }
}

/* Revoke lease id of kv, logging its deletes into o. */
static bool revoke_in_order(struct kv *kv, uint64_t id, struct revoke_order *o)
{
    struct pz_buf b;
    pz_buf_init(&b);
    struct kv_result res = {0};
    o->n = 0;
    o->keys[0] = '\0';
    kv_set_event_cb(kv, on_revoke_del, o);
    bool ok = kv_encode_lease_revoke(&b, id) == 0 &&
              kv_apply(kv, (uint8_t *)b.data, b.len, &res) == 0 &&
              res.status == KV_OK;
    kv_set_event_cb(kv, NULL, NULL);
    pz_buf_free(&b);
    return ok && res.deleted * 2 == o->n;
}

/* A lease's keys attached out of order, then a snapshot: revoking the
 * lease in the table that wrote it and in one loaded from it deletes the
 * keys in the same order, bytewise key order (the loader rebuilds the
 * lease's list of keys in its own order, a revoke must not depend on it:
 * a node restarted from a snapshot would report the deletes of that
 * revision to its watchers in another order than its peers). */
TEST(revoke_order_survives_load)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    struct pz_buf b;
    pz_buf_init(&b);
    CHECK_EQ_INT(kv_encode_lease_grant(&b, 4, 60), 0);
    CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    static const char *const attach[] = {"rz", "rm", "rn", "ra",
                                         "rq", "rb", "ry", "rc"};
    for (size_t i = 0; i < sizeof attach / sizeof attach[0]; i++) {
        pz_buf_reset(&b);
        CHECK_EQ_INT(kv_encode_set_lease(&b, attach[i], 2, "L", 1, 4), 0);
        CHECK_EQ_INT(kv_apply(kv, (uint8_t *)b.data, b.len, NULL), 0);
    }
    kv_set(kv, "rd", 2, "plain", 5); /* not on the lease: stays */
    pz_buf_free(&b);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE] = "";
    CHECK(write_ok(t.root, kv, 9, 1, path));
    struct kv *got = kv_new();
    struct snapshot_meta m;
    CHECK_EQ_INT(snapshot_load(path, got, &m, err, sizeof err), 0);
    snapshot_meta_free(&m);
    struct revoke_order a, l;
    CHECK(revoke_in_order(kv, 4, &a));
    CHECK(revoke_in_order(got, 4, &l));
    CHECK_EQ_STR(a.keys, "rarbrcrmrnrqryrz");
    CHECK_EQ_STR(l.keys, a.keys);
    CHECK(kv_count(got) == 1 && kv_digest(got) == kv_digest(kv));
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

/* Numbers no log reaches, with a correct checksum: an index or term at
 * 2^62 (RAFT_LIMIT, which peers refuse) or a revision above
 * KV_REVISION_MAX is refused as corrupt; one below loads. */
TEST(points_out_of_range)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 5, 10, 3);
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 3, 1, path));
    size_t len;
    uint8_t *orig = read_all(path, &len);
    CHECK(orig != NULL);
    uint8_t *p = pz_memdup(orig, len);
    size_t rev_at = 48 + sizeof conf_blob;
    struct {
        size_t at;
        uint64_t v;
        const char *why; /* NULL: loads */
    } cases[] = {
        {12, RAFT_LIMIT, "2^62"},
        {12, UINT64_MAX, "2^62"},
        {20, RAFT_LIMIT, "2^62"},
        {20, INT64_MAX, "2^62"},
        {rev_at, KV_REVISION_MAX + 1, "revision"},
        {rev_at, UINT64_MAX - 1, "revision"},
        {12, RAFT_LIMIT - 1, NULL},
        {20, RAFT_LIMIT - 1, NULL},
        {rev_at, KV_REVISION_MAX, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(p, orig, len);
        pz_put_u64(p + cases[i].at, cases[i].v);
        rewrite_crc(p, len);
        CHECK(write_file(path, p, len));
        struct kv *into = kv_new();
        struct snapshot_meta m;
        int rc = snapshot_load(path, into, &m, err, sizeof err);
        if (cases[i].why) {
            CHECK(is_corrupt_named(rc, err, path) && strstr(err, cases[i].why));
        } else {
            CHECK_EQ_INT(rc, 0);
            CHECK(cases[i].at != rev_at ||
                  kv_revision(into) == KV_REVISION_MAX);
            snapshot_meta_free(&m);
        }
        kv_free(into);
    }
    pz_free(p);
    pz_free(orig);
    kv_free(kv);
    tdir_free(&t);
}

/* A FIFO named like a snapshot (no writer: an open for reading would
 * block until one came) is refused at once as not a regular file, by the
 * loader and the InstallSnapshot reader; the newest valid file is loaded
 * past it. */
TEST(fifo_named_like_a_snapshot)
{
    struct tdir t;
    tdir_init(&t);
    struct kv *kv = kv_new();
    fill(kv, 5, 10, 4);
    char path[SNAPSHOT_PATH_MAX], fifo[SNAPSHOT_PATH_MAX];
    char err[SNAPSHOT_ERRMSG_SIZE];
    CHECK(write_ok(t.root, kv, 3, 1, path));
    CHECK_EQ_INT(snapshot_path(t.root, 9, 1, fifo, sizeof fifo), 0);
    CHECK_EQ_INT(mkfifo(fifo, 0600), 0);
    struct snapshot_meta m;
    int rc = snapshot_verify(fifo, &m, err, sizeof err);
    CHECK(is_corrupt_named(rc, err, fifo) && strstr(err, "not a regular file"));
    struct snapshot_reader *r = NULL;
    rc = snapshot_reader_open(fifo, &r, err, sizeof err);
    CHECK(rc == PZ_ECORRUPT && r == NULL && strstr(err, "not a regular file"));
    struct kv *got = NULL;
    char *from = NULL;
    struct damaged dl = {0};
    struct snapshot_pick pick = {.damaged = on_damaged, .arg = &dl};
    rc = snapshot_load_newest_valid(t.root, 1, &pick, &got, &m, &from, err,
                                    sizeof err);
    CHECK_EQ_INT(rc, 0);
    CHECK(m.index == 3 && strcmp(from, path) == 0);
    CHECK(kv_digest(got) == kv_digest(kv));
    CHECK(dl.n == 1 && strcmp(dl.paths[0], fifo) == 0 &&
          dl.rcs[0] == PZ_ECORRUPT);
    snapshot_meta_free(&m);
    pz_free(from);
    kv_free(got);
    kv_free(kv);
    tdir_free(&t);
}

static const struct test_case cases[] = {
    TEST_ENTRY(crc64_vectors),
    TEST_ENTRY(crc64_accelerated_matches_tables),
    TEST_ENTRY(layout),
    TEST_ENTRY(roundtrip_empty),
    TEST_ENTRY(roundtrip_binary),
    TEST_ENTRY(roundtrip_100k),
    TEST_ENTRY(large_write_hands_chunks_to_writeback),
    TEST_ENTRY(corrupt_every_byte_flip),
    TEST_ENTRY(corrupt_truncated_everywhere),
    TEST_ENTRY(corrupt_magic_version_lengths),
    TEST_ENTRY(points_out_of_range),
    TEST_ENTRY(fifo_named_like_a_snapshot),
    TEST_ENTRY(fallback_to_older_valid),
    TEST_ENTRY(name_and_header_disagree),
    TEST_ENTRY(list_and_prune),
    TEST_ENTRY(fork_snapshot_is_table_at_fork_time),
    TEST_ENTRY(fork_errors),
    TEST_ENTRY(fork_child_killed_mid_write),
    TEST_ENTRY(fork_child_isolation),
    TEST_ENTRY(failpoints),
    TEST_ENTRY(reader_chunks),
    TEST_ENTRY(receiver_roundtrip),
    TEST_ENTRY(receiver_load_called_off),
    TEST_ENTRY(receiver_refuses_gaps_and_overruns),
    TEST_ENTRY(receiver_abort_and_corruption),
    TEST_ENTRY(receiver_crash_mid_install),
    TEST_ENTRY(rx_decide),
    TEST_ENTRY(receiver_refuses_repeated_key),
    TEST_ENTRY(loads_version_1),
    TEST_ENTRY(leases_roundtrip_and_corruption),
    TEST_ENTRY(revoke_order_survives_load),
    TEST_ENTRY(prune_except_and_temp),
    TEST_ENTRY(bench_1m),
    TEST_END,
};

const struct test_suite suite_snapshot = {"snapshot", cases};
