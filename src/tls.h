/* tls.h - TLS (OpenSSL 3) for the connection layer, without sockets.
 *
 * Two parts:
 *  - struct tls_slot: the context of one listener or dialer (certificate,
 *    key, trusted CA, client-auth policy, ALPN). tls_slot_load() builds a
 *    new context from files and puts it in place only when everything
 *    loaded and matched: a reload (SIGHUP) with a bad file keeps the old
 *    one. Connections hold a reference to the context they started with,
 *    so existing ones keep their material and new ones get the new.
 *  - struct tls_conn: one connection's TLS state over two memory BIOs. The
 *    conn layer (conn.c) feeds it the bytes libuv read (tls_feed), takes
 *    the plaintext out (tls_read), queues plaintext to send (tls_queue),
 *    and moves the records to the socket's output (tls_take_output). No
 *    call blocks and nothing else touches a socket: every protocol on a
 *    conn gets TLS the same way.
 *
 * Bounds: input is fed at most one socket read at a time and drained
 * before the next read is started (the conn stops reading while the
 * protocol is paused), so the read BIO holds at most a read plus a
 * partial record; records written go to the conn's output at once, where
 * conn-hard-limit applies; queued plaintext counts as output too.
 *
 * Policy: TLS 1.2 at least, OpenSSL's default ciphers and groups, no
 * renegotiation, a server-side session cache (TLS 1.2) and tickets (1.3)
 * for resumption, buffers released while a connection is idle. */
#ifndef PZ_TLS_H
#define PZ_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

/* Client certificates a server asks for. */
enum tls_client_auth {
    TLS_AUTH_NONE = 0,     /* none asked */
    TLS_AUTH_OPTIONAL = 1, /* asked; one that does not verify is refused,
                              none at all is accepted */
    TLS_AUTH_REQUIRE = 2,  /* a verified client certificate is required */
};

struct tls_opts {
    bool server;           /* accepting side */
    const char *cert_file; /* PEM chain; "" = none (a client only) */
    const char *key_file;  /* PEM private key for cert_file */
    const char *ca_file;   /* PEM CAs: servers verify clients with it,
                              clients verify servers ("" on a client:
                              the system's default store) */
    int client_auth;       /* enum tls_client_auth, servers only */
    const char *alpn;      /* protocol to offer/select, e.g. "h2"; NULL */
};

struct tls_slot {
    void *ctx;      /* SSL_CTX *, NULL = plain text */
    char name[16];  /* "http", "grpc", "raft" for logs */
    bool server;    /* of the context in place */
    uint64_t loads; /* successful tls_slot_load calls */
};

/* Build a context from o and put it in s (the previous one is released
 * once its last connection is gone). On failure s is unchanged and err
 * holds one line naming the file. */
int tls_slot_load(struct tls_slot *s, const char *name,
                  const struct tls_opts *o, char *err, size_t errlen);
/* Drop s's context (new connections are plain text). */
void tls_slot_clear(struct tls_slot *s);
static inline bool tls_slot_on(const struct tls_slot *s)
{
    return s != NULL && s->ctx != NULL;
}

struct tls_conn;

/* A connection on s's current context (s must be on). host, for a client,
 * is the name or IP the server's certificate must name (NULL: chain only,
 * no name check); it is also sent as SNI when it is a name. */
struct tls_conn *tls_conn_new(const struct tls_slot *s, const char *host);
void tls_conn_free(struct tls_conn *t);

/* Ciphertext that arrived. */
void tls_feed(struct tls_conn *t, const void *p, size_t n);
/* Advance the handshake and decrypt: returns plaintext bytes put in buf
 * (> 0), 0 when more input is needed, or PZ_EPROTO on a TLS failure
 * (tls_error says why) or UV_EOF when the peer sent close_notify. */
int tls_read(struct tls_conn *t, char *buf, size_t cap);
/* Input fed but not yet returned by tls_read (possibly a partial record). */
bool tls_has_input(const struct tls_conn *t);
/* Plaintext to send, encrypted by tls_encrypt once the handshake is done. */
void tls_queue(struct tls_conn *t, const void *p, size_t n);
/* Plaintext queued, not yet encrypted. */
size_t tls_queued(const struct tls_conn *t);
/* Encrypt what is queued if the handshake is done; 0 or PZ_EPROTO. */
int tls_encrypt(struct tls_conn *t);
/* Append the records waiting to be sent to out. Returns bytes moved. */
size_t tls_take_output(struct tls_conn *t, struct pz_buf *out);
/* Start the handshake of a client (its first flight goes to the output). */
int tls_start(struct tls_conn *t);
/* Queue close_notify once; true if it was queued now. */
bool tls_close_notify(struct tls_conn *t);
bool tls_handshake_done(const struct tls_conn *t);
/* Why the last failure happened, one line; "" when none. Never holds key
 * material or payload. */
const char *tls_error(const struct tls_conn *t);
/* True when bytes were ever fed (a connection that closes before sending
 * anything is not worth a warning). */
bool tls_got_input(const struct tls_conn *t);
/* Bytes of ciphertext taken beyond the plaintext they carry: record
 * framing, handshake and alerts (grows only). */
uint64_t tls_overhead(const struct tls_conn *t);

/* Handshake deadline (conn_now() ms, 0 = none), kept by the conn layer. */
void tls_set_deadline(struct tls_conn *t, uint64_t at);
uint64_t tls_deadline(const struct tls_conn *t);

/* After the handshake: did the peer present a verified certificate, and
 * does it name node `name` (a DNS subjectAltName equal to it byte for
 * byte, whatever the name looks like: an IP subjectAltName never names a
 * node, not even node 10.0.0.5)? Node names are case-sensitive, so unlike
 * a host name check, DNS:NODE1 does not name node1, and no wildcard names
 * anything. */
bool tls_peer_verified(const struct tls_conn *t);
bool tls_peer_names(const struct tls_conn *t, const char *name);
/* After the handshake: does the peer's verified certificate hold a DNS
 * subjectAltName n with name_to_id(n) == id (the member we dialed, whose
 * name we may not know)? */
bool tls_peer_names_id(const struct tls_conn *t,
                       uint64_t (*name_to_id)(const char *name), uint64_t id);
/* The negotiated ALPN protocol ("" when none) and version ("TLSv1.3"). */
void tls_alpn(const struct tls_conn *t, char *buf, size_t len);
const char *tls_version(const struct tls_conn *t);
bool tls_session_reused(const struct tls_conn *t);

/* The name a server dialed at addr ("host:port") must have in its
 * certificate: the host, where an empty, 0.0.0.0 or localhost host is
 * 127.0.0.1, the address a dial of it reaches. */
void tls_addr_host(const char *addr, char *host, size_t len);
/* Parse "none" | "optional" | "require". Returns the value or -1. */
int tls_parse_client_auth(const char *s);

#endif
