/* fuzz_raft_chunk.c - InstallSnapshot chunk handling on a follower: the
 * rules of which chunks it takes (snapshot_rx_decide) and the receiver
 * that writes them (snapshot_receiver_*), driven as node.c's on_chunk
 * drives them, by a sequence of events read from the input: a chunk from
 * some peer (any term, snapshot index and term, offset, announced size and
 * bytes), a change of leader, term or commit index, or the link of the
 * sender closing.
 *
 * A chunk's bytes come from a valid snapshot file built at the start from
 * the input (so whole transfers of it can succeed) or from the input
 * itself (garbage), as the input says.
 *
 * Invariants: decide never begins a snapshot over max_size, nor one at or
 * below the commit index; it never lets a stale peer (not the leader, not
 * its term) write; a WRITE always continues the transfer in progress at
 * its exact offset and within its total, so the receiver never refuses
 * it; at most one temporary file exists, none once a transfer ended; a
 * file that finishes loads into a table whose key count matches its
 * header, and only a file whose bytes are exactly the valid snapshot (or
 * another valid one) finishes. */
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#include "kv.h"
#include "pz.h"
#include "raft.h"
#include "snapshot.h"

#define MAX_SIZE 4096 /* the follower's snapshot size bound */

static char dir[128];
static uint8_t good[MAX_SIZE]; /* a valid snapshot file */
static size_t good_len;
static const uint64_t GOOD_INDEX = 50, GOOD_TERM = 3;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    PZ_UNUSED(argc);
    PZ_UNUSED(argv);
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/pyazdb-fuzz-chunk-%d", base, (int)getpid());
    FUZZ_CHECK(mkdir(dir, 0700) == 0 || errno == EEXIST);
    /* A small valid snapshot to stream. */
    struct kv *kv = kv_new();
    for (int i = 0; i < 20; i++) {
        char k[16], v[16];
        int kl = snprintf(k, sizeof k, "key%d", i);
        int vl = snprintf(v, sizeof v, "value%d", i);
        kv_set(kv, k, (size_t)kl, v, (size_t)vl);
    }
    char path[SNAPSHOT_PATH_MAX], err[SNAPSHOT_ERRMSG_SIZE];
    FUZZ_CHECK(
        snapshot_write(dir, kv,
                       &(struct snapshot_point){GOOD_INDEX, GOOD_TERM, NULL, 0},
                       path, sizeof path, err, sizeof err) == 0);
    kv_free(kv);
    FILE *f = fopen(path, "rb");
    FUZZ_CHECK(f != NULL);
    good_len = fread(good, 1, sizeof good, f);
    fclose(f);
    FUZZ_CHECK(good_len > 0 && good_len < sizeof good);
    unlink(path);
    return 0;
}

/* Files in dir: .tmp ones counted apart; every file is removed. */
static void scan(size_t *tmps, size_t *snaps, bool remove)
{
    *tmps = *snaps = 0;
    DIR *d = opendir(dir);
    FUZZ_CHECK(d != NULL);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (strstr(de->d_name, ".tmp"))
            (*tmps)++;
        else
            (*snaps)++;
        if (remove)
            unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

struct follower {
    struct snapshot_rx_view v;    /* what decide sees */
    struct snapshot_receiver *rx; /* the transfer in progress */
    const uint8_t *src;           /* what the sender streams */
    size_t src_len;
};

static void rx_end(struct follower *fw)
{
    snapshot_receiver_abort(fw->rx);
    fw->rx = NULL;
    fw->v.receiving = false;
}

static void chunk(struct follower *fw, struct fz *f, const uint8_t *junk,
                  size_t junk_len)
{
    struct snapshot_rx_view *v = &fw->v;
    uint64_t from = fz_range(f, 0, 3);
    bool valid = fz_bool(f);
    struct raft_snap_chunk c = {
        .term = fz_bool(f) ? v->term : fz_range(f, 0, 6),
        .snap_index = valid ? GOOD_INDEX : fz_u64(f),
        .snap_term = valid ? GOOD_TERM : fz_range(f, 0, 6),
    };
    const uint8_t *src = valid ? good : junk;
    size_t src_len = valid ? good_len : junk_len;
    c.total = fz_bool(f) ? src_len : fz_u64(f);
    c.offset = fz_bool(f) && v->receiving ? v->rx_offset : fz_range(f, 0, 8192);
    size_t want = (size_t)fz_range(f, 0, 1024);
    c.data = src;
    c.len = 0;
    if (c.offset < src_len) {
        c.data = src + c.offset;
        c.len = PZ_MIN(want, src_len - (size_t)c.offset);
    }
    int act = snapshot_rx_decide(v, from, &c);
    bool stale = from != v->leader || c.term != v->term || v->leader == 0 ||
                 v->leader == v->self || c.term == 0;
    switch (act) {
    case SNAPSHOT_RX_INVALID:
        return; /* the link closes; nothing else changes */
    case SNAPSHOT_RX_STALE:
        if (fw->rx && v->rx_from == from)
            rx_end(fw);
        return;
    case SNAPSHOT_RX_IGNORE:
        return;
    case SNAPSHOT_RX_TOO_BIG:
        FUZZ_CHECK(c.offset == 0 && c.total > v->max_size && !stale);
        rx_end(fw);
        return;
    case SNAPSHOT_RX_BEGIN: {
        FUZZ_CHECK(!stale && c.offset == 0);
        FUZZ_CHECK(c.total <= v->max_size);
        FUZZ_CHECK(c.snap_index > v->commit && c.snap_index < RAFT_LIMIT);
        rx_end(fw);
        char err[SNAPSHOT_ERRMSG_SIZE];
        if (snapshot_receiver_begin(dir, c.snap_index, c.snap_term, c.total,
                                    &fw->rx, err, sizeof err) < 0)
            return;
        v->receiving = true;
        v->rx_from = from;
        v->rx_index = c.snap_index;
        v->rx_term = c.snap_term;
        v->rx_total = c.total;
        v->rx_offset = 0;
        fw->src = src;
        fw->src_len = src_len;
        break;
    }
    case SNAPSHOT_RX_WRITE:
        FUZZ_CHECK(!stale && fw->rx != NULL);
        FUZZ_CHECK(c.offset == v->rx_offset && from == v->rx_from);
        break;
    default:
        FUZZ_CHECKF(false, "unknown action %d", act);
    }
    char err[SNAPSHOT_ERRMSG_SIZE];
    int rv = snapshot_receiver_write(fw->rx, c.offset, c.data, c.len, err,
                                     sizeof err);
    /* decide checked order and bounds: only the disk may refuse */
    FUZZ_CHECKF(rv == 0 || rv != PZ_EINVAL, "%s", err);
    if (rv < 0) {
        rx_end(fw);
        return;
    }
    v->rx_offset += c.len;
    FUZZ_CHECK(snapshot_receiver_offset(fw->rx) == v->rx_offset);
    if (v->rx_offset < v->rx_total)
        return;
    struct snapshot_receiver *rx = fw->rx;
    fw->rx = NULL;
    v->receiving = false;
    struct kv *kv = kv_new();
    struct snapshot_meta m;
    rv = snapshot_receiver_finish(rx, kv, NULL, 0, &m, err, sizeof err);
    if (rv == 0) {
        FUZZ_CHECK(m.index == v->rx_index && m.term == v->rx_term);
        FUZZ_CHECK(kv_count(kv) == m.nkeys);
        v->have_index = m.index;
        v->have_term = m.term;
        snapshot_meta_free(&m);
    }
    kv_free(kv);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz f;
    fz_init(&f, data, size);
    size_t junk_len;
    const uint8_t *junk = fz_bytes(&f, 255, &junk_len);
    struct follower fw = {
        .v = {.self = 1, .leader = 2, .term = 3, .commit = 10,
              .max_size = MAX_SIZE},
    };
    for (int step = 0; step < 64 && fz_left(&f) > 0; step++) {
        switch (fz_range(&f, 0, 7)) {
        case 0:
            fw.v.leader = fz_range(&f, 0, 3);
            break;
        case 1:
            fw.v.term = fz_range(&f, 0, 6);
            break;
        case 2:
            fw.v.commit = fz_range(&f, 0, 100);
            break;
        case 3: /* the sender's link closed */
            if (fw.rx && fw.v.rx_from == fz_range(&f, 0, 3))
                rx_end(&fw);
            break;
        default:
            chunk(&fw, &f, junk, junk_len);
            break;
        }
    }
    size_t tmps, snaps;
    scan(&tmps, &snaps, false);
    FUZZ_CHECK(tmps == (fw.rx ? 1u : 0u));
    rx_end(&fw);
    scan(&tmps, &snaps, true);
    FUZZ_CHECK(tmps == 0);
    return 0;
}
