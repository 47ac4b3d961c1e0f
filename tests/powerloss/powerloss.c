/* powerloss.c - an LD_PRELOAD library that remembers, for every file under
 * one directory, what a power cut would leave of it: the content it had at
 * its last fsync/fdatasync (or before the process first changed it).
 *
 * Loaded into a server by the integration tests (tests/integration/
 * powerloss.py). Environment:
 *   PZ_POWERLOSS_ROOT    the directory whose files are watched (a node's
 *                        data dir); nothing else is touched
 *   PZ_POWERLOSS_SHADOW  where the durable copies are kept
 *   PZ_POWERLOSS_SYNC_DELAY_MS  optional: each fsync of a watched file
 *                        takes this much longer (a slow disk), which
 *                        widens the window in which written data is not
 *                        yet durable
 *   PZ_POWERLOSS_SYNC_DELAY_FILE  optional: a file holding that delay in
 *                        ms, read again at every fsync (a test can make
 *                        one node's disk slow once it knows the leader);
 *                        overrides PZ_POWERLOSS_SYNC_DELAY_MS when present
 *
 * For a watched file F (path relative to the root, '/' written as '@'),
 * the shadow directory holds F.data (its durable content) or F.absent (it
 * does not durably exist). Before the first change to F (write, pwrite,
 * writev, ftruncate, open with O_TRUNC or creating it, rename, unlink) the
 * current state is recorded as durable: whatever existed before this
 * process touched it counts as on disk. Each fsync or fdatasync of F
 * copies its content to F.data. A "power cut" is then: SIGKILL the process
 * and put every watched file back to its shadow (powerloss.py does that),
 * so writes not followed by an fsync are lost.
 *
 * The shadow directory, not the process, holds the model: every process
 * that loads the library with the same environment shares it, until
 * powerloss.py restores the files and clears it. A child forked by the
 * server (the snapshot writer) writes into a file the parent created:
 * what it writes is lost at a cut unless someone fsyncs the file first,
 * whichever process that is, exactly as with a page cache. Fork is safe:
 * the lock is taken around it (atfork handlers), so a child never
 * inherits it held by a thread that does not exist in the child, and
 * each process writes its shadow copies under a temporary name of its
 * own, so two processes recording at once never mix their bytes.
 *
 * The model is per file: renames and unlinks count as durable at once
 * (real file systems need an fsync of the directory), so it can miss a
 * bug there but never reports one that is not. Shadow copies are written
 * to a temporary name and renamed, so a SIGKILL in the middle of one
 * leaves the previous copy. SQLite in WAL mode writes the log with
 * pwrite and makes it durable with fdatasync (synchronous=FULL), which is
 * exactly what is modelled. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define REAL(name) static __typeof__(name) *real_##name

REAL(open);
REAL(open64);
REAL(openat);
REAL(write);
REAL(pwrite);
REAL(pwrite64);
REAL(writev);
REAL(pwritev);
REAL(ftruncate);
REAL(ftruncate64);
REAL(fsync);
REAL(fdatasync);
REAL(rename);
REAL(renameat);
REAL(unlink);
REAL(unlinkat);

static char root[PATH_MAX];   /* realpath of PZ_POWERLOSS_ROOT, "" = off */
static size_t root_len;
static char shadow[PATH_MAX]; /* PZ_POWERLOSS_SHADOW */
static long sync_delay_ms;
static char delay_file[PATH_MAX]; /* PZ_POWERLOSS_SYNC_DELAY_FILE or "" */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define LOAD(name) real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name)

/* Before fork: wait for any record in progress and hold the lock through
 * the fork, so that the child's copy of mu is consistent (a thread of the
 * parent in the middle of a record does not exist in the child, and the
 * child would wait forever for it to unlock). */
static void fork_prepare(void)
{
    pthread_mutex_lock(&mu);
}

/* After fork, in the parent and in the child: release it again. */
static void fork_done(void)
{
    pthread_mutex_unlock(&mu);
}

static void init(void)
{
    pthread_atfork(fork_prepare, fork_done, fork_done);
    LOAD(open);
    LOAD(open64);
    LOAD(openat);
    LOAD(write);
    LOAD(pwrite);
    LOAD(pwrite64);
    LOAD(writev);
    LOAD(pwritev);
    LOAD(ftruncate);
    LOAD(ftruncate64);
    LOAD(fsync);
    LOAD(fdatasync);
    LOAD(rename);
    LOAD(renameat);
    LOAD(unlink);
    LOAD(unlinkat);
    const char *r = getenv("PZ_POWERLOSS_ROOT");
    const char *s = getenv("PZ_POWERLOSS_SHADOW");
    const char *d = getenv("PZ_POWERLOSS_SYNC_DELAY_MS");
    if (d)
        sync_delay_ms = atol(d);
    const char *df = getenv("PZ_POWERLOSS_SYNC_DELAY_FILE");
    if (df && strlen(df) < sizeof delay_file)
        strcpy(delay_file, df);
    if (r && s && realpath(r, root) != NULL &&
        strlen(s) < sizeof shadow - 1) {
        strcpy(shadow, s);
        root_len = strlen(root);
    } else {
        root[0] = '\0';
    }
}

static void need_init(void)
{
    pthread_once(&once, init);
}

/* At load, while the process has one thread: a fork can then never find
 * the once-control in progress, and the atfork handlers are in place
 * before the first fork. */
__attribute__((constructor)) static void init_at_load(void)
{
    need_init();
}

static void die(const char *what)
{
    char msg[256];
    int n = snprintf(msg, sizeof msg, "powerloss: %s: %s\n", what,
                     strerror(errno));
    if (real_write && n > 0)
        real_write(2, msg, (size_t)n);
    abort();
}

/* rel: the path relative to the root if path is under it. */
static bool watched(const char *path, const char **rel)
{
    if (root[0] == '\0' || strncmp(path, root, root_len) != 0 ||
        path[root_len] != '/')
        return false;
    *rel = path + root_len + 1;
    return true;
}

static bool fd_path(int fd, char *out, size_t len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    if (n <= 0)
        return false;
    out[n] = '\0';
    return out[0] == '/';
}

/* An absolute path without . or .. in its directory part; the file itself
 * need not exist. */
static bool abs_path(int dirfd, const char *path, char *out, size_t len)
{
    char dir[PATH_MAX], base[PATH_MAX], full[PATH_MAX * 2 + 2];
    if (path[0] == '/') {
        snprintf(full, sizeof full, "%s", path);
    } else {
        if (dirfd == AT_FDCWD) {
            if (getcwd(dir, sizeof dir) == NULL)
                return false;
        } else if (!fd_path(dirfd, dir, sizeof dir)) {
            return false;
        }
        snprintf(full, sizeof full, "%s/%s", dir, path);
    }
    char *slash = strrchr(full, '/');
    snprintf(base, sizeof base, "%s", slash + 1);
    *slash = '\0';
    if (realpath(full[0] ? full : "/", dir) == NULL)
        return false;
    return (size_t)snprintf(out, len, "%s/%s", dir, base) < len;
}

static void marker(const char *rel, const char *ext, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/", shadow);
    for (const char *p = rel; *p && (size_t)n < len - 16; p++)
        out[n++] = *p == '/' ? '@' : *p;
    snprintf(out + n, len - (size_t)n, ".%s", ext);
}

static void copy_file(const char *from, const char *to)
{
    char tmp[PATH_MAX * 2 + 32];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", to, (long)getpid());
    int in = real_open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        die(from);
    int out = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        die(tmp);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        for (ssize_t off = 0; off < n;) {
            ssize_t w = real_write(out, buf + off, (size_t)(n - off));
            if (w < 0)
                die(tmp);
            off += w;
        }
    }
    if (n < 0)
        die(from);
    close(in);
    close(out);
    if (real_rename(tmp, to) < 0)
        die(to);
}

/* The durable state of path becomes its current state. */
static void record(const char *path, const char *rel)
{
    char data[PATH_MAX * 2], absent[PATH_MAX * 2];
    marker(rel, "data", data, sizeof data);
    marker(rel, "absent", absent, sizeof absent);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        copy_file(path, data);
        real_unlink(absent);
    } else {
        int fd = real_open(absent, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            die(absent);
        close(fd);
        real_unlink(data);
    }
}

/* Before the first change to path: what it holds now is durable. */
static void capture(const char *path)
{
    const char *rel;
    if (!watched(path, &rel))
        return;
    char data[PATH_MAX * 2], absent[PATH_MAX * 2];
    marker(rel, "data", data, sizeof data);
    marker(rel, "absent", absent, sizeof absent);
    pthread_mutex_lock(&mu);
    if (access(data, F_OK) != 0 && access(absent, F_OK) != 0)
        record(path, rel);
    pthread_mutex_unlock(&mu);
}

static void capture_fd(int fd)
{
    char path[PATH_MAX];
    need_init();
    if (root[0] && fd_path(fd, path, sizeof path))
        capture(path);
}

static void synced(int fd)
{
    char path[PATH_MAX];
    const char *rel;
    if (root[0] == '\0' || !fd_path(fd, path, sizeof path) ||
        !watched(path, &rel))
        return;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return; /* a directory: names are modelled as durable at once */
    long delay = sync_delay_ms;
    if (delay_file[0]) {
        int dfd = real_open(delay_file, O_RDONLY | O_CLOEXEC);
        if (dfd >= 0) {
            char num[32];
            ssize_t n = read(dfd, num, sizeof num - 1);
            close(dfd);
            if (n > 0) {
                num[n] = '\0';
                delay = atol(num);
            }
        }
    }
    if (delay > 0) {
        struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&mu);
    record(path, rel);
    pthread_mutex_unlock(&mu);
}

static void before_open(int dirfd, const char *path, int flags)
{
    need_init();
    char full[PATH_MAX];
    if (root[0] == '\0' || !(flags & (O_CREAT | O_TRUNC)) ||
        !abs_path(dirfd, path, full, sizeof full))
        return;
    capture(full);
}

int open(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    before_open(AT_FDCWD, path, flags);
    return real_open(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    mode_t mode = 0;
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    before_open(AT_FDCWD, path, flags);
    return real_open64(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    mode_t mode = 0;
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    before_open(dirfd, path, flags);
    return real_openat(dirfd, path, flags, mode);
}

ssize_t write(int fd, const void *buf, size_t n)
{
    if (fd > 2)
        capture_fd(fd);
    else
        need_init();
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    capture_fd(fd);
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    capture_fd(fd);
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    if (fd > 2)
        capture_fd(fd);
    else
        need_init();
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    capture_fd(fd);
    return real_pwritev(fd, iov, cnt, off);
}

int ftruncate(int fd, off_t len)
{
    capture_fd(fd);
    return real_ftruncate(fd, len);
}

int ftruncate64(int fd, off64_t len)
{
    capture_fd(fd);
    return real_ftruncate64(fd, len);
}

int fsync(int fd)
{
    need_init();
    int rc = real_fsync(fd);
    if (rc == 0)
        synced(fd);
    return rc;
}

int fdatasync(int fd)
{
    need_init();
    int rc = real_fdatasync(fd);
    if (rc == 0)
        synced(fd);
    return rc;
}

/* A rename is durable at once: the target's durable content becomes the
 * source's, and the source durably absent. */
static int do_rename(int olddir, const char *from, int newdir, const char *to)
{
    need_init();
    char a[PATH_MAX], b[PATH_MAX];
    const char *ra, *rb;
    bool wa = root[0] && abs_path(olddir, from, a, sizeof a) &&
              watched(a, &ra);
    bool wb = root[0] && abs_path(newdir, to, b, sizeof b) && watched(b, &rb);
    if (wa)
        capture(a);
    if (wb)
        capture(b);
    int rc = real_renameat(olddir, from, newdir, to);
    if (rc != 0 || !(wa || wb))
        return rc;
    int e = errno;
    pthread_mutex_lock(&mu);
    if (wa && wb) {
        char da[PATH_MAX * 2], xa[PATH_MAX * 2], db[PATH_MAX * 2],
            xb[PATH_MAX * 2];
        marker(ra, "data", da, sizeof da);
        marker(ra, "absent", xa, sizeof xa);
        marker(rb, "data", db, sizeof db);
        marker(rb, "absent", xb, sizeof xb);
        if (access(da, F_OK) == 0) {
            real_rename(da, db);
            real_unlink(xb);
        } else {
            int fd = real_open(xb, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0)
                close(fd);
            real_unlink(db);
        }
        record(a, ra); /* now absent */
    } else if (wa) {
        record(a, ra);
    } else {
        record(b, rb); /* moved in from outside: durable as it is */
    }
    pthread_mutex_unlock(&mu);
    errno = e;
    return rc;
}

int rename(const char *from, const char *to)
{
    return do_rename(AT_FDCWD, from, AT_FDCWD, to);
}

int renameat(int olddir, const char *from, int newdir, const char *to)
{
    return do_rename(olddir, from, newdir, to);
}

static int do_unlink(int dirfd, const char *path, int flags)
{
    need_init();
    char a[PATH_MAX];
    const char *ra;
    bool w = root[0] && !(flags & AT_REMOVEDIR) &&
             abs_path(dirfd, path, a, sizeof a) && watched(a, &ra);
    int rc = real_unlinkat(dirfd, path, flags);
    if (rc == 0 && w) {
        int e = errno;
        pthread_mutex_lock(&mu);
        record(a, ra); /* durably absent */
        pthread_mutex_unlock(&mu);
        errno = e;
    }
    return rc;
}

int unlink(const char *path)
{
    return do_unlink(AT_FDCWD, path, 0);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    return do_unlink(dirfd, path, flags);
}
