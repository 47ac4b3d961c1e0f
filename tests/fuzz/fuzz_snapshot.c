/* fuzz_snapshot.c - the snapshot file reader (snapshot_peek,
 * snapshot_verify, snapshot_load), as a node reads a file at startup and a
 * follower checks one received by InstallSnapshot.
 *
 * Input: byte 0 holds flags, the rest is the file, written into a memfd
 * (no disk traffic) opened by path (/proc/self/fd/N). Flag bit 0: fix the
 * checksum trailer so that the file gets past the CRC check (the fuzzer
 * cannot forge CRC-64), which lets it explore what a valid file may hold.
 *
 * Invariants: the three readers agree (verify accepts what load accepts,
 * and load refuses what verify refuses; peek accepts every header that
 * verify accepts and reads the same header values); a failure zeroes
 * *meta and says why; a loaded table has nkeys keys; its configuration
 * decodes as a Raft conf or not, and re-encodes stably; a loaded table
 * written back by snapshot_write (into a tmpfs directory) loads again
 * with the same index, term, conf, revision and contents (metadata
 * included: the digests agree), in format version 2 whatever it was
 * read in. Both versions are accepted; a version-2 record's metadata must
 * be possible. snapshot_crc64 of the input equals the table-only CRC. */
#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#include "kv.h"
#include "pz.h"
#include "raft.h"
#include "snapshot.h"

static int memfd = -1;
static char path[64];
static char dir[128];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    PZ_UNUSED(argc);
    PZ_UNUSED(argv);
    memfd = memfd_create("fuzz-snapshot", MFD_CLOEXEC);
    FUZZ_CHECK(memfd >= 0);
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    /* Write-back files go to tmpfs: fsync costs nothing there. */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/pyazdb-fuzz-snapshot-%d", base,
             (int)getpid());
    FUZZ_CHECK(mkdir(dir, 0700) == 0 || errno == EEXIST);
    return 0;
}

static bool meta_zero(const struct snapshot_meta *m)
{
    static const struct snapshot_meta z;
    return memcmp(m, &z, sizeof z) == 0;
}

static bool same_header(const struct snapshot_meta *a,
                        const struct snapshot_meta *b)
{
    return a->index == b->index && a->term == b->term &&
           a->created_ms == b->created_ms && a->nkeys == b->nkeys &&
           a->conf_len == b->conf_len && a->file_size == b->file_size &&
           a->version == b->version && a->revision == b->revision &&
           (a->conf_len == 0 || memcmp(a->conf, b->conf, a->conf_len) == 0);
}

/* The configuration bytes as node.c reads them. */
static void check_conf(const uint8_t *p, size_t len)
{
    struct raft_conf c, c2;
    if (raft_conf_decode(p, len, &c) != 0) {
        FUZZ_CHECK(c.n == 0 && c.servers == NULL);
        return;
    }
    uint8_t *buf;
    size_t blen;
    raft_conf_encode(&c, &buf, &blen);
    FUZZ_CHECK(raft_conf_decode(buf, blen, &c2) == 0);
    FUZZ_CHECK(c2.n == c.n);
    uint8_t *buf2;
    size_t blen2;
    raft_conf_encode(&c2, &buf2, &blen2);
    FUZZ_CHECK(blen == blen2 && memcmp(buf, buf2, blen) == 0);
    pz_free(buf);
    pz_free(buf2);
    raft_conf_free(&c);
    raft_conf_free(&c2);
}

/* Write kv back as a snapshot and load that: the same snapshot. */
static void write_back(struct kv *kv, const struct snapshot_meta *m)
{
    char out[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    int rv = snapshot_write(
        dir, kv,
        &(struct snapshot_point){m->index, m->term, m->conf, m->conf_len}, out,
        sizeof out, err, sizeof err);
    FUZZ_CHECKF(rv == 0, "%s", err);
    struct kv *kv2 = kv_new();
    struct snapshot_meta m2;
    rv = snapshot_load(out, kv2, &m2, err, sizeof err);
    FUZZ_CHECKF(rv == 0, "%s", err);
    FUZZ_CHECK(m2.index == m->index && m2.term == m->term &&
               m2.nkeys == m->nkeys && m2.conf_len == m->conf_len);
    FUZZ_CHECK(m->conf_len == 0 || memcmp(m2.conf, m->conf, m->conf_len) == 0);
    FUZZ_CHECK(kv_count(kv2) == kv_count(kv));
    FUZZ_CHECK(m2.version == SNAPSHOT_VERSION && m2.revision == m->revision);
    FUZZ_CHECK(kv_revision(kv2) == kv_revision(kv));
    FUZZ_CHECK(kv_digest_compute(kv2) == kv_digest_compute(kv));
    FUZZ_CHECK(kv_digest(kv2) == kv_digest(kv));
    snapshot_meta_free(&m2);
    kv_free(kv2);
    unlink(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t flags = data[0];
    uint8_t *file = fuzz_dup(data + 1, size - 1);
    size_t flen = size - 1;
    if ((flags & 1) && flen >= SNAPSHOT_TRAILER_SIZE) {
        uint64_t crc = snapshot_crc64(0, file, flen - 8);
        pz_put_u64(file + flen - 8, crc);
    }
    /* The CRC's carry-less path (pieces of 256 bytes and more) agrees
     * with its tables. */
    FUZZ_CHECK(snapshot_crc64(flags, file, flen) ==
               snapshot_crc64_portable(flags, file, flen));
    FUZZ_CHECK(ftruncate(memfd, 0) == 0);
    FUZZ_CHECK(pwrite(memfd, file, flen, 0) == (ssize_t)flen);
    free(file);

    char err[SNAPSHOT_ERRMSG_SIZE];
    struct snapshot_meta pm, vm, lm;
    memset(&pm, 0x55, sizeof pm);
    memset(&vm, 0x55, sizeof vm);
    memset(&lm, 0x55, sizeof lm);

    err[0] = '\0';
    int prv = snapshot_peek(path, &pm, err, sizeof err);
    FUZZ_CHECK(prv == 0 || prv == PZ_ECORRUPT);
    FUZZ_CHECK(prv == 0 || (meta_zero(&pm) && err[0] != '\0'));
    if (prv == 0)
        FUZZ_CHECK(pm.checksum == 0 && pm.file_size == flen);

    err[0] = '\0';
    int vrv = snapshot_verify(path, &vm, err, sizeof err);
    FUZZ_CHECK(vrv == 0 || vrv == PZ_ECORRUPT);
    FUZZ_CHECK(vrv == 0 || (meta_zero(&vm) && err[0] != '\0'));

    struct kv *kv = kv_new();
    err[0] = '\0';
    int lrv = snapshot_load(path, kv, &lm, err, sizeof err);
    FUZZ_CHECK(lrv == 0 || lrv == PZ_ECORRUPT);
    FUZZ_CHECK(lrv == 0 || (meta_zero(&lm) && err[0] != '\0'));

    /* verify cannot see a repeated key (it builds no table): load may
     * refuse what verify accepts, never the reverse. */
    FUZZ_CHECK(lrv != 0 || vrv == 0);
    FUZZ_CHECK(vrv == 0 || lrv != 0);
    if (vrv == 0) {
        FUZZ_CHECK(prv == 0 && same_header(&pm, &vm));
        FUZZ_CHECK(vm.file_size == flen);
        check_conf(vm.conf, vm.conf_len);
    }
    if (lrv == 0) {
        FUZZ_CHECK(same_header(&lm, &vm) && lm.checksum == vm.checksum);
        FUZZ_CHECK(kv_count(kv) == lm.nkeys);
        FUZZ_CHECK(kv_revision(kv) == lm.revision);
        FUZZ_CHECK(kv_digest(kv) == kv_digest_compute(kv));
        write_back(kv, &lm);
    }
    snapshot_meta_free(&pm);
    snapshot_meta_free(&vm);
    snapshot_meta_free(&lm);
    kv_free(kv);
    return 0;
}
