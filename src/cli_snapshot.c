/* cli_snapshot.c - see cli_snapshot.h. */
#include "cli_snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <llhttp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli_conn.h"
#include "err.h"
#include "pz.h"

#define ERR_BODY_MAX 512 /* bytes kept of a refusal's body */
/* Bounds of a download, which a real backup never meets, so that a node
 * (or anything answering on its address) cannot keep the command running,
 * or filling the disk, forever: the body stays under SAVE_MAX_BYTES (the
 * table a backup holds lives in a node's memory), and once the response
 * has begun each --timeout brings at least SAVE_MIN_BYTES until it is
 * complete (--timeout alone bounds each read: one byte a second would
 * do). */
#define SAVE_MAX_BYTES (UINT64_C(1) << 40) /* 1 TiB */
#define SAVE_MIN_BYTES (64u * 1024)        /* per --timeout */

/* What the response callbacks fill in. */
struct dl {
    int fd;             /* FILE.part */
    int werr;           /* first write error (negative errno) */
    bool too_big;       /* the body would pass SAVE_MAX_BYTES */
    uint64_t received;  /* body bytes written */
    bool complete;      /* the whole response arrived */
    char errbody[ERR_BODY_MAX + 1]; /* a refusal's body, cut */
    size_t errlen;      /* bytes in errbody */
};

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct dl *d = p->data;
    if (llhttp_get_status_code(p) != 200) {
        size_t c = PZ_MIN(len, ERR_BODY_MAX - d->errlen);
        memcpy(d->errbody + d->errlen, at, c);
        d->errlen += c;
        d->errbody[d->errlen] = '\0';
        return 0;
    }
    if (len > SAVE_MAX_BYTES - d->received) {
        d->too_big = true;
        return -1;
    }
    if (d->werr == 0)
        d->werr = write_all(d->fd, at, len);
    d->received += len;
    return d->werr ? -1 : 0;
}

/* A Content-Length past SAVE_MAX_BYTES is refused before any body. */
static int on_headers_complete(llhttp_t *p)
{
    struct dl *d = p->data;
    if (llhttp_get_status_code(p) == 200 && (p->flags & F_CONTENT_LENGTH) &&
        p->content_length > SAVE_MAX_BYTES) {
        d->too_big = true;
        return -1;
    }
    return 0;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int on_message_complete(llhttp_t *p)
{
    struct dl *d = p->data;
    d->complete = true;
    return HPE_PAUSED; /* one response: stop here */
}

/* Send the request, receive the response into d, within the bounds
 * above (timeout_ms: --timeout). */
static int exchange(struct cli_conn *c, const char *addr, const char *token,
                    uint64_t timeout_ms, struct dl *d, char *err, size_t errlen)
{
    struct pz_buf q, in;
    char why[256];
    pz_buf_init(&q);
    pz_buf_init(&in);
    pz_buf_appendf(&q, "GET /admin/snapshot HTTP/1.1\r\nHost: %s\r\n", addr);
    if (token && token[0])
        pz_buf_appendf(&q, "Authorization: Bearer %s\r\n", token);
    pz_buf_appendf(&q, "Connection: close\r\n\r\n");
    int rc = cli_conn_send(c, q.data, q.len, &in, why, sizeof why);
    pz_buf_free(&q);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", addr, why);
        pz_buf_free(&in);
        return rc;
    }

    llhttp_settings_t st;
    llhttp_t p;
    llhttp_settings_init(&st);
    st.on_body = on_body;
    st.on_headers_complete = on_headers_complete;
    st.on_message_complete = on_message_complete;
    llhttp_init(&p, HTTP_RESPONSE, &st);
    p.data = d;
    uint64_t window = 0, window_bytes = 0; /* since the first bytes */
    while (!d->complete) {
        ssize_t n = in.len ? (ssize_t)in.len
                           : cli_conn_read(c, &in, why, sizeof why);
        uint64_t now = mono_ms();
        if (n > 0 && window == 0)
            window = now;
        if (n > 0)
            window_bytes += (uint64_t)n;
        if (n < 0) {
            snprintf(err, errlen, "%s: %s after %" PRIu64 " bytes", addr,
                     n == -ETIMEDOUT ? "no data within --timeout" : why,
                     d->received);
            pz_buf_free(&in);
            return (int)n;
        }
        llhttp_errno_t r =
            n == 0 ? llhttp_finish(&p) : llhttp_execute(&p, in.data, in.len);
        pz_buf_reset(&in);
        if (d->werr) {
            snprintf(err, errlen, "write: %s", strerror(-d->werr));
            pz_buf_free(&in);
            return d->werr;
        }
        if (d->too_big) {
            snprintf(err, errlen,
                     "%s: the snapshot is larger than 1 TiB: not a backup "
                     "(a node holds its table in memory)",
                     addr);
            pz_buf_free(&in);
            return PZ_ETOOBIG;
        }
        if (!d->complete && window && now - window >= timeout_ms) {
            if (window_bytes < SAVE_MIN_BYTES) {
                snprintf(err, errlen,
                         "%s: less than 64 KiB within --timeout (%" PRIu64
                         " ms) after %" PRIu64
                         " bytes of the snapshot: too slow, giving up",
                         addr, timeout_ms, d->received);
                pz_buf_free(&in);
                return PZ_ETIMEDOUT;
            }
            window = now;
            window_bytes = 0;
        }
        if (r != HPE_OK && r != HPE_PAUSED) {
            snprintf(err, errlen, "%s: bad HTTP response: %s", addr,
                     llhttp_errno_name(r));
            pz_buf_free(&in);
            return PZ_EPROTO;
        }
        if (n == 0 && !d->complete) {
            snprintf(err, errlen,
                     "%s: connection closed after %" PRIu64 " bytes of the "
                     "snapshot",
                     addr, d->received);
            pz_buf_free(&in);
            return PZ_EIO;
        }
    }
    pz_buf_free(&in);
    int status = llhttp_get_status_code(&p);
    if (status != 200) {
        d->errbody[strcspn(d->errbody, "\r\n")] = '\0';
        snprintf(err, errlen, "%s: HTTP %d: %s", addr, status, d->errbody);
        return PZ_EPROTO;
    }
    return 0;
}

/* The directory part of path ("." when it has none). */
static void dir_of(const char *path, char *dir, size_t len)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, len, ".");
    else if (slash == path)
        snprintf(dir, len, "/");
    else
        snprintf(dir, len, "%.*s", (int)(slash - path), path);
}

/* FILE.part of the save in progress, for the signal handler: a save
 * interrupted by Ctrl-C, timeout(1) or a hangup removes its file, or the
 * next save would find it and refuse (it never reuses one). Empty once
 * there is nothing to remove. */
static char interrupted_part[SNAPSHOT_PATH_MAX];
static const int cleanup_signals[] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction saved_actions[3];

static void on_interrupt(int sig)
{
    if (interrupted_part[0])
        unlink(interrupted_part); /* async-signal-safe */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(sig, &dfl, NULL);
    raise(sig); /* dies of it, as it would have */
}

/* Remove part (or stop removing it: NULL) if a signal ends the save. */
static void cleanup_on_signals(const char *part)
{
    if (part) {
        snprintf(interrupted_part, sizeof interrupted_part, "%s", part);
        struct sigaction sa = {.sa_handler = on_interrupt};
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < PZ_ARRAY_SIZE(cleanup_signals); i++)
            sigaction(cleanup_signals[i], &sa, &saved_actions[i]);
    } else {
        for (size_t i = 0; i < PZ_ARRAY_SIZE(cleanup_signals); i++)
            sigaction(cleanup_signals[i], &saved_actions[i], NULL);
        interrupted_part[0] = '\0';
    }
}

int cli_snapshot_save(const char *addr, const char *token,
                      const struct tls_slot *tls, const char *file,
                      uint64_t timeout_ms, struct snapshot_meta *meta,
                      char *err, size_t errlen)
{
    char part[SNAPSHOT_PATH_MAX], dir[SNAPSHOT_PATH_MAX];
    memset(meta, 0, sizeof *meta);
    if (snprintf(part, sizeof part, "%s.part", file) >= (int)sizeof part) {
        snprintf(err, errlen, "%s: file name too long", file);
        return PZ_ETOOBIG;
    }
    dir_of(file, dir, sizeof dir);
    struct dl d = {.fd = -1};
    /* Created here, never reused: a FILE.part that exists (a link planted
     * there included) is neither followed nor truncated. */
    d.fd =
        open(part, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (d.fd < 0) {
        int e = errno;
        if (e == EEXIST)
            snprintf(err, errlen,
                     "%s exists (another save in progress, or one that was "
                     "interrupted): remove it and try again",
                     part);
        else
            snprintf(err, errlen, "%s: %s", part, strerror(e));
        return -e;
    }
    cleanup_on_signals(part);
    struct cli_conn c;
    int rc = cli_conn_open(&c, addr, tls, (int)PZ_MIN(timeout_ms, INT32_MAX),
                           err, errlen);
    if (rc == 0) {
        rc = exchange(&c, addr, token, timeout_ms, &d, err, errlen);
        cli_conn_close(&c);
    }
    if (rc == 0 && fsync(d.fd) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: fsync: %s", part, strerror(-rc));
    }
    if (close(d.fd) < 0 && rc == 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: close: %s", part, strerror(-rc));
    }
    char why[SNAPSHOT_ERRMSG_SIZE];
    if (rc == 0 && (rc = snapshot_verify(part, meta, why, sizeof why)) < 0)
        snprintf(err, errlen, "the downloaded snapshot is not valid: %s", why);
    if (rc == 0)
        interrupted_part[0] = '\0'; /* renamed next, or removed below */
    if (rc == 0 && rename(part, file) < 0) {
        rc = -errno;
        snprintf(err, errlen, "rename %s to %s: %s", part, file,
                 strerror(-rc));
    }
    if (rc == 0) {
        cleanup_on_signals(NULL);
        if ((rc = pz_fsync_path(dir, true)) < 0)
            snprintf(err, errlen, "%s: fsync of the directory: %s", dir,
                     strerror(-rc));
        return rc;
    }
    snapshot_meta_free(meta);
    unlink(part);
    cleanup_on_signals(NULL);
    return rc;
}
