/* cli_snapshot.c - see cli_snapshot.h. */
#include "cli_snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "pz.h"

#define RECV_BUF (64 * 1024)
#define ERR_BODY_MAX 512 /* bytes kept of a refusal's body */

/* What the response callbacks fill in. */
struct dl {
    int fd;             /* FILE.part */
    int werr;           /* first write error (negative errno) */
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
    if (d->werr == 0)
        d->werr = write_all(d->fd, at, len);
    d->received += len;
    return d->werr ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct dl *d = p->data;
    d->complete = true;
    return HPE_PAUSED; /* one response: stop here */
}

/* Connect to addr with send and receive timeouts of timeout_ms. */
static int dial(const char *addr, uint64_t timeout_ms, char *err,
                size_t errlen)
{
    char host[256], port_s[8];
    int port;
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0) {
        snprintf(err, errlen, "bad HTTP address '%s'", addr);
        return PZ_EINVAL;
    }
    if (strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM},
                    *res, *ai;
    int rc = getaddrinfo(host, port_s, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host,
                 gai_strerror(rc));
        return PZ_EINVAL;
    }
    int fd = -1, e = ECONNREFUSED;
    struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000),
                         .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        e = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", addr,
                 e == EINPROGRESS || e == EAGAIN ? "timed out" : strerror(e));
        return -e;
    }
    return fd;
}

/* Send the request, receive the response into d. */
static int exchange(int sock, const char *addr, const char *token,
                    struct dl *d, char *err, size_t errlen)
{
    struct pz_buf q;
    pz_buf_init(&q);
    pz_buf_appendf(&q, "GET /admin/snapshot HTTP/1.1\r\nHost: %s\r\n", addr);
    if (token && token[0])
        pz_buf_appendf(&q, "Authorization: Bearer %s\r\n", token);
    pz_buf_appendf(&q, "Connection: close\r\n\r\n");
    size_t off = 0;
    while (off < q.len) {
        ssize_t n = send(sock, q.data + off, q.len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            snprintf(err, errlen, "%s: send: %s", addr,
                     e == EAGAIN ? "timed out" : strerror(e));
            pz_buf_free(&q);
            return -e;
        }
        off += (size_t)n;
    }
    pz_buf_free(&q);

    llhttp_settings_t st;
    llhttp_t p;
    llhttp_settings_init(&st);
    st.on_body = on_body;
    st.on_message_complete = on_message_complete;
    llhttp_init(&p, HTTP_RESPONSE, &st);
    p.data = d;
    static char buf[RECV_BUF];
    while (!d->complete) {
        ssize_t n = recv(sock, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            snprintf(err, errlen, "%s: %s after %" PRIu64 " bytes", addr,
                     e == EAGAIN ? "no data within --timeout" : strerror(e),
                     d->received);
            return -e;
        }
        llhttp_errno_t r =
            n == 0 ? llhttp_finish(&p) : llhttp_execute(&p, buf, (size_t)n);
        if (d->werr) {
            snprintf(err, errlen, "write: %s", strerror(-d->werr));
            return d->werr;
        }
        if (r != HPE_OK && r != HPE_PAUSED) {
            snprintf(err, errlen, "%s: bad HTTP response: %s", addr,
                     llhttp_errno_name(r));
            return PZ_EPROTO;
        }
        if (n == 0 && !d->complete) {
            snprintf(err, errlen,
                     "%s: connection closed after %" PRIu64 " bytes of the "
                     "snapshot",
                     addr, d->received);
            return PZ_EIO;
        }
    }
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

int cli_snapshot_save(const char *addr, const char *token, const char *file,
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
    d.fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (d.fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", part, strerror(e));
        return -e;
    }
    int sock = dial(addr, timeout_ms, err, errlen);
    int rc = sock < 0 ? sock : exchange(sock, addr, token, &d, err, errlen);
    if (sock >= 0)
        close(sock);
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
    if (rc == 0 && rename(part, file) < 0) {
        rc = -errno;
        snprintf(err, errlen, "rename %s to %s: %s", part, file,
                 strerror(-rc));
    }
    if (rc == 0) {
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: fsync of the directory: %s", dir,
                     strerror(-rc));
        }
        if (dfd >= 0)
            close(dfd);
        return rc;
    }
    snapshot_meta_free(meta);
    unlink(part);
    return rc;
}
