/* cli_conn.c - see cli_conn.h. */
#include "cli_conn.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include "err.h"
#include "tls.h"

#define READ_CHUNK 65536

static int dial(const char *addr, int timeout_ms, char *err, size_t errlen)
{
    char host[256], port_s[8];
    int port;
    if (pz_split_hostport(addr, host, sizeof host, &port) < 0 || port == 0) {
        snprintf(err, errlen, "bad HTTP address '%s' (want HOST:PORT)", addr);
        return -EINVAL;
    }
    if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    snprintf(port_s, sizeof port_s, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM},
                    *res, *ai;
    int rc = getaddrinfo(host, port_s, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "%s: cannot resolve '%s': %s", addr, host,
                 gai_strerror(rc));
        return -EINVAL;
    }
    int fd = -1, e = ECONNREFUSED;
    /* The send timeout bounds connect() too. */
    struct timeval tv = {.tv_sec = timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
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

int cli_conn_open(struct cli_conn *c, const char *addr,
                  const struct tls_slot *tls, int timeout_ms, char *err,
                  size_t errlen)
{
    memset(c, 0, sizeof *c);
    pz_buf_init(&c->out);
    c->timeout_ms = timeout_ms;
    c->fd = dial(addr, timeout_ms, err, errlen);
    if (c->fd < 0)
        return c->fd;
    if (tls_slot_on(tls)) {
        char host[256];
        tls_addr_host(addr, host, sizeof host);
        c->tls = tls_conn_new(tls, host);
        if (c->tls == NULL || tls_start(c->tls) < 0) {
            snprintf(err, errlen, "%s: cannot start TLS", addr);
            cli_conn_close(c);
            return PZ_EPROTO;
        }
    }
    return 0;
}

/* Wait for input, then read what is there into b. */
static ssize_t raw_read(struct cli_conn *c, struct pz_buf *b, char *err,
                        size_t errlen)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r;
    do {
        r = poll(&p, 1, c->timeout_ms);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        snprintf(err, errlen, "nothing received for %d ms", c->timeout_ms);
        return -ETIMEDOUT;
    }
    pz_buf_reserve(b, READ_CHUNK);
    ssize_t n = r < 0 ? -1 : 0;
    if (r > 0) {
        do {
            n = read(c->fd, b->data + b->len, READ_CHUNK);
        } while (n < 0 && errno == EINTR);
    }
    if (n < 0) {
        int e = errno;
        snprintf(err, errlen, "%s", strerror(e));
        return -e;
    }
    b->len += (size_t)n;
    return n;
}

static int raw_send(struct cli_conn *c, const char *p, size_t n, char *err,
                    size_t errlen)
{
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(c->fd, p + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            snprintf(err, errlen, "send: %s",
                     e == EAGAIN ? "timed out" : strerror(e));
            return -e;
        }
        off += (size_t)w;
    }
    return 0;
}

static int tls_failed(struct cli_conn *c, char *err, size_t errlen)
{
    const char *why = tls_error(c->tls);
    snprintf(err, errlen, "TLS: %s", why[0] ? why : "failed");
    return PZ_EPROTO;
}

/* Encrypt what is queued and write the records out. */
static int flush(struct cli_conn *c, char *err, size_t errlen)
{
    if (tls_encrypt(c->tls) < 0)
        return tls_failed(c, err, errlen);
    tls_take_output(c->tls, &c->out);
    int rv =
        raw_send(c, c->out.data ? c->out.data : "", c->out.len, err, errlen);
    pz_buf_reset(&c->out);
    return rv;
}

/* One step of TLS: decrypt into b what is buffered; when nothing is,
 * write out what TLS has to say and read more from the socket. Returns
 * > 0 plaintext bytes, 0 after reading ciphertext, < 0 an error, or
 * UV_EOF at the end (close_notify or the socket closed). */
static ssize_t tls_step(struct cli_conn *c, struct pz_buf *b, char *err,
                        size_t errlen)
{
    pz_buf_reserve(b, READ_CHUNK);
    int n = tls_read(c->tls, b->data + b->len, READ_CHUNK);
    if (n > 0) {
        b->len += (size_t)n;
        return n;
    }
    if (n == UV_EOF)
        return UV_EOF;
    if (n < 0)
        return tls_failed(c, err, errlen);
    int rv = flush(c, err, errlen);
    if (rv < 0)
        return rv;
    struct pz_buf raw;
    pz_buf_init(&raw);
    ssize_t r = raw_read(c, &raw, err, errlen);
    if (r > 0)
        tls_feed(c->tls, raw.data, raw.len);
    pz_buf_free(&raw);
    return r == 0 ? UV_EOF : r > 0 ? 0 : r;
}

int cli_conn_send(struct cli_conn *c, const char *p, size_t n,
                  struct pz_buf *in, char *err, size_t errlen)
{
    if (c->tls == NULL)
        return raw_send(c, p, n, err, errlen);
    tls_queue(c->tls, p, n);
    while (!tls_handshake_done(c->tls)) {
        ssize_t r = tls_step(c, in, err, errlen);
        if (r == UV_EOF) {
            if (tls_error(c->tls)[0])
                return tls_failed(c, err, errlen);
            snprintf(err, errlen,
                     "TLS: the node closed the connection "
                     "during the handshake");
            return PZ_EPROTO;
        }
        if (r < 0)
            return (int)r;
    }
    return flush(c, err, errlen);
}

ssize_t cli_conn_read(struct cli_conn *c, struct pz_buf *b, char *err,
                      size_t errlen)
{
    if (c->tls == NULL)
        return raw_read(c, b, err, errlen);
    for (;;) {
        ssize_t r = tls_step(c, b, err, errlen);
        if (r != 0)
            return r == UV_EOF ? 0 : r;
    }
}

void cli_conn_close(struct cli_conn *c)
{
    if (c->tls)
        tls_conn_free(c->tls);
    c->tls = NULL;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    pz_buf_free(&c->out);
}
