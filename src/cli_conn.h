/* cli_conn.h - a blocking connection of pyazdb-cli to one node's HTTP
 * port, in plain text or TLS, for the answers that stream (watch's
 * events, a snapshot download) and so do not fit the CLI's other calls.
 *
 * TLS runs over the same memory-BIO state the server's connections use
 * (tls.h): bytes read from the socket are fed to it, records it produces
 * are written out, so handshake, session tickets and close_notify behave
 * alike on both sides. Every wait is bounded by the connection's
 * timeout. */
#ifndef PZ_CLI_CONN_H
#define PZ_CLI_CONN_H

#include <stddef.h>
#include <sys/types.h>

#include "pz.h"

struct tls_slot;
struct tls_conn;

struct cli_conn {
    int fd;
    struct tls_conn *tls; /* NULL: plain text */
    struct pz_buf out;    /* TLS records not yet written */
    int timeout_ms;       /* for each wait on the socket */
};

/* Connect to addr ("host:port"; an empty or 0.0.0.0 host is 127.0.0.1),
 * with TLS when tls is on (the node's certificate must name the host).
 * Returns 0, or a negative errno with a message in err. */
int cli_conn_open(struct cli_conn *c, const char *addr,
                  const struct tls_slot *tls, int timeout_ms, char *err,
                  size_t errlen);
/* Send all of p; with TLS, plaintext that arrives meanwhile goes to in.
 * 0, or a negative code with a message in err. */
int cli_conn_send(struct cli_conn *c, const char *p, size_t n,
                  struct pz_buf *in, char *err, size_t errlen);
/* Append what arrives next to b: > 0 bytes, 0 at the end of the stream,
 * < 0 on an error or when nothing came within the timeout (-ETIMEDOUT),
 * with a message in err. */
ssize_t cli_conn_read(struct cli_conn *c, struct pz_buf *b, char *err,
                      size_t errlen);
void cli_conn_close(struct cli_conn *c);

#endif
