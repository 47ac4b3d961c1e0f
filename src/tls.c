/* tls.c - see tls.h. Everything OpenSSL is confined to this file. */
#include "tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Plaintext handed to SSL_write at once: one full record. */
#define WRITE_CHUNK (16 * 1024)
/* Sessions a server context remembers for TLS 1.2 resumption. */
#define SESSION_CACHE 4096
/* What the plaintext queue and the ciphertext BIO may keep allocated with
 * nothing in them: both grow to a whole answer (a 4 MB range is queued,
 * then encrypted, at once) and would hold it for as long as the
 * connection stayed open, uncounted in max-pending-output. */
#define TLS_KEEP_MAX (64 * 1024)

struct tls_conn {
    SSL *ssl;
    BIO *rbio;           /* ciphertext in (fed from the socket) */
    BIO *wbio;           /* ciphertext out (to the socket) */
    struct pz_buf plain; /* plaintext queued before/while encrypting */
    uint64_t deadline;   /* handshake deadline, conn_now() ms */
    bool got_input;      /* bytes were fed */
    bool notified;       /* close_notify queued */
    bool failed;         /* a fatal error happened */
    char err[160];       /* why it failed */
    uint64_t encrypted;  /* plaintext encrypted since the last take */
    uint64_t overhead;   /* ciphertext taken beyond the plaintext in it */
};

void tls_addr_host(const char *addr, char *host, size_t len)
{
    int port;
    if (pz_split_hostport(addr, host, len, &port) < 0 ||
        strcmp(host, "localhost") == 0 || strcmp(host, "0.0.0.0") == 0 ||
        host[0] == '\0')
        snprintf(host, len, "127.0.0.1");
}

int tls_parse_client_auth(const char *s)
{
    if (strcmp(s, "none") == 0)
        return TLS_AUTH_NONE;
    if (strcmp(s, "optional") == 0)
        return TLS_AUTH_OPTIONAL;
    if (strcmp(s, "require") == 0)
        return TLS_AUTH_REQUIRE;
    return -1;
}

/* Whether an OpenSSL reason only names the library that failed ("PEM
 * lib", "system lib"): OpenSSL queues one of those on top of the cause. */
static bool names_a_library(const char *r)
{
    size_t n = strlen(r);
    return n >= 4 && strcmp(r + n - 4, " lib") == 0;
}

/* OpenSSL's reason for the failure as one line ("" when none), and clear
 * the queue: the earliest reason that says what went wrong ("no start
 * line" for a file that holds no PEM data), not the library names
 * queued above it. */
static void openssl_reason(char *buf, size_t len)
{
    const char *first = NULL, *cause = NULL;
    bool any = false;
    int sys = 0; /* the errno of a failed open or read, the cause */
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        any = true;
        if (ERR_SYSTEM_ERROR(e)) {
            if (sys == 0)
                sys = ERR_GET_REASON(e);
            continue;
        }
        const char *r = ERR_reason_error_string(e);
        if (r == NULL)
            continue;
        if (first == NULL)
            first = r;
        if (cause == NULL && !names_a_library(r))
            cause = r;
    }
    buf[0] = '\0';
    const char *r = cause ? cause : first;
    if (sys != 0) {
        snprintf(buf, len, "%s", strerror(sys));
    } else if (r) {
        /* OpenSSL's words for the usual mistakes, in plain ones (its own
         * kept, for a search). */
        static const char *const plain[][2] = {
            {"no start line", "no PEM data in the file"},
            {"bad end line", "the PEM data is cut short or damaged"},
            {"bad base64 decode", "the PEM data is damaged"},
            {"unsupported", "no key in a format OpenSSL reads"},
            {"key values mismatch", "the key is not the certificate's"},
            {"bad decrypt",
             "the key is encrypted: give it without a passphrase"},
            {"bad password read",
             "the key is encrypted: give it without a passphrase"},
            {"problems getting password",
             "the key is encrypted: give it without a passphrase"},
        };
        const char *say = NULL;
        for (size_t i = 0; i < PZ_ARRAY_SIZE(plain); i++)
            if (strcmp(r, plain[i][0]) == 0)
                say = plain[i][1];
        if (say)
            snprintf(buf, len, "%s (%s)", say, r);
        else
            snprintf(buf, len, "%s", r);
    } else if (any)
        snprintf(buf, len, "TLS error");
}

/* ALPN: the server takes its one protocol when the client offers it and
 * otherwise goes on without ALPN (the protocol on top then decides). */
static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    PZ_UNUSED(ssl);
    const unsigned char *want = arg; /* length-prefixed */
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];
        if (i + 1 + n > inlen)
            break;
        if (n == want[0] && memcmp(in + i + 1, want + 1, n) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)n;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + n;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* Length-prefixed ALPN names, kept for the context's life: one static
 * string per protocol we use. */
static const unsigned char *alpn_wire(const char *p)
{
    static const unsigned char h2[] = "\x02h2";
    static const unsigned char h11[] = "\x08http/1.1";
    if (p == NULL)
        return NULL;
    if (strcmp(p, "h2") == 0)
        return h2;
    if (strcmp(p, "http/1.1") == 0)
        return h11;
    return NULL;
}

/* Is path something other than a FIFO or a device (a missing or
 * unreadable file is OpenSSL's to report)? OpenSSL opens the files it is
 * given itself, blocking: a FIFO named as a certificate, key or CA file
 * would hang the start, or the loop on SIGHUP, until a writer came. */
static bool not_special(const char *path)
{
    int fd = pz_open_regular(path);
    if (fd >= 0)
        close(fd);
    return fd != PZ_EINVAL;
}

/* The passphrase of an encrypted key: none. Without this callback
 * OpenSSL asks for it on the terminal, which would hold the start, or the
 * loop on SIGHUP, until someone typed; such a key is refused instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    PZ_UNUSED(buf);
    PZ_UNUSED(size);
    PZ_UNUSED(rwflag);
    PZ_UNUSED(arg);
    return 0;
}

static int build_ctx(SSL_CTX **out, const struct tls_opts *o, char *err,
                     size_t errlen)
{
    char why[160];
    ERR_clear_error();
    SSL_CTX *ctx =
        SSL_CTX_new(o->server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        openssl_reason(why, sizeof why);
        snprintf(err, errlen, "cannot make a TLS context: %s", why);
        return PZ_ENOMEM;
    }
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle connections give their read and write buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    const char *file = "";
    if (o->cert_file && o->cert_file[0]) {
        file = o->cert_file;
        if (!not_special(file))
            goto special;
        if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1)
            goto fail;
        file = o->key_file;
        if (!not_special(file))
            goto special;
        if (SSL_CTX_use_PrivateKey_file(ctx, o->key_file, SSL_FILETYPE_PEM) !=
            1)
            goto fail;
        if (SSL_CTX_check_private_key(ctx) != 1) {
            snprintf(err, errlen,
                     "TLS key %s does not match the certificate %s",
                     o->key_file, o->cert_file);
            SSL_CTX_free(ctx);
            ERR_clear_error();
            return PZ_EINVAL;
        }
    }
    if (o->ca_file && o->ca_file[0]) {
        file = o->ca_file;
        if (!not_special(file))
            goto special;
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1)
            goto fail;
        if (o->server && o->client_auth != TLS_AUTH_NONE) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
            if (names == NULL)
                goto fail;
            SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else if (!o->server) {
        SSL_CTX_set_default_verify_paths(ctx);
    }
    if (o->server) {
        int mode = SSL_VERIFY_NONE;
        if (o->client_auth == TLS_AUTH_OPTIONAL)
            mode = SSL_VERIFY_PEER;
        else if (o->client_auth == TLS_AUTH_REQUIRE)
            mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        if (mode != SSL_VERIFY_NONE && !(o->ca_file && o->ca_file[0])) {
            snprintf(err, errlen,
                     "client certificates are asked for but no CA file "
                     "is set to verify them");
            SSL_CTX_free(ctx);
            return PZ_EINVAL;
        }
        SSL_CTX_set_verify(ctx, mode, NULL);
        static const unsigned char sid[] = "pyazdb";
        SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(ctx, SESSION_CACHE);
        const unsigned char *w = alpn_wire(o->alpn);
        if (w)
            SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)w);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        const unsigned char *w = alpn_wire(o->alpn);
        if (w)
            SSL_CTX_set_alpn_protos(ctx, w, (unsigned)w[0] + 1);
    }
    *out = ctx;
    return 0;
fail:
    openssl_reason(why, sizeof why);
    snprintf(err, errlen, "cannot load %s: %s", file[0] ? file : "(none)",
             why[0] ? why : "unreadable");
    SSL_CTX_free(ctx);
    return PZ_EINVAL;
special:
    snprintf(err, errlen, "cannot load %s: not a regular file", file);
    SSL_CTX_free(ctx);
    return PZ_EINVAL;
}

int tls_slot_load(struct tls_slot *s, const char *name,
                  const struct tls_opts *o, char *err, size_t errlen)
{
    if (o->server &&
        !(o->cert_file && o->cert_file[0] && o->key_file && o->key_file[0])) {
        snprintf(err, errlen, "a TLS server needs a certificate and a key");
        return PZ_EINVAL;
    }
    SSL_CTX *ctx = NULL;
    int rv = build_ctx(&ctx, o, err, errlen);
    if (rv < 0)
        return rv;
    /* Connections hold their own reference (SSL_new): they keep it. */
    SSL_CTX_free(s->ctx);
    s->ctx = ctx;
    s->server = o->server;
    snprintf(s->name, sizeof s->name, "%s", name);
    s->loads++;
    return 0;
}

void tls_slot_clear(struct tls_slot *s)
{
    SSL_CTX_free(s->ctx);
    s->ctx = NULL;
}

static bool is_ip(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 ||
           inet_pton(AF_INET6, host, a) == 1;
}

struct tls_conn *tls_conn_new(const struct tls_slot *s, const char *host)
{
    SSL *ssl = SSL_new(s->ctx);
    if (ssl == NULL) {
        ERR_clear_error();
        return NULL;
    }
    struct tls_conn *t = pz_calloc(1, sizeof *t);
    t->ssl = ssl;
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(ssl);
        pz_free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "more data later", not EOF. */
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(ssl, t->rbio, t->wbio);
    pz_buf_init(&t->plain);
    if (s->server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (host && host[0]) {
            if (is_ip(host)) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host);
            } else {
                SSL_set_tlsext_host_name(ssl, host);
                SSL_set1_host(ssl, host);
            }
        }
    }
    return t;
}

void tls_conn_free(struct tls_conn *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    pz_buf_free(&t->plain);
    pz_free(t);
}

void tls_feed(struct tls_conn *t, const void *p, size_t n)
{
    if (n == 0)
        return;
    t->got_input = true;
    BIO_write(t->rbio, p, (int)n);
}

bool tls_has_input(const struct tls_conn *t)
{
    return !t->failed &&
           (SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0);
}

bool tls_got_input(const struct tls_conn *t)
{
    return t->got_input;
}

/* Record why an SSL call failed. Returns PZ_EPROTO, or 0 when it only
 * needs more input or output. */
static int on_ssl_error(struct tls_conn *t, int ret)
{
    int e = SSL_get_error(t->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return UV_EOF;
    }
    t->failed = true;
    char why[128];
    openssl_reason(why, sizeof why);
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK)
        snprintf(t->err, sizeof t->err, "%s (certificate: %s)",
                 why[0] ? why : "handshake failed",
                 X509_verify_cert_error_string(vr));
    else
        snprintf(t->err, sizeof t->err, "%s",
                 why[0] ? why : "connection error");
    return PZ_EPROTO;
}

int tls_start(struct tls_conn *t)
{
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 0;
    return on_ssl_error(t, r) == PZ_EPROTO ? PZ_EPROTO : 0;
}

int tls_read(struct tls_conn *t, char *buf, size_t cap)
{
    if (t->failed)
        return PZ_EPROTO;
    if (!SSL_is_init_finished(t->ssl)) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int rv = on_ssl_error(t, r);
            return rv == UV_EOF ? PZ_EPROTO : rv;
        }
    }
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, buf, cap, &got);
    if (r == 1)
        return (int)got;
    return on_ssl_error(t, 0);
}

void tls_queue(struct tls_conn *t, const void *p, size_t n)
{
    pz_buf_append(&t->plain, p, n);
}

size_t tls_queued(const struct tls_conn *t)
{
    return t->plain.len;
}

int tls_encrypt(struct tls_conn *t)
{
    if (t->failed)
        return PZ_EPROTO;
    if (!SSL_is_init_finished(t->ssl) || t->notified)
        return 0;
    size_t off = 0;
    while (off < t->plain.len) {
        size_t n = t->plain.len - off;
        if (n > WRITE_CHUNK)
            n = WRITE_CHUNK;
        size_t done = 0;
        int r = SSL_write_ex(t->ssl, t->plain.data + off, n, &done);
        if (r != 1) {
            int rv = on_ssl_error(t, 0);
            if (rv < 0 && rv != UV_EOF)
                return rv;
            break;
        }
        off += done;
    }
    t->encrypted += off;
    pz_buf_consume(&t->plain, off);
    if (t->plain.len == 0)
        pz_buf_trim(&t->plain, TLS_KEEP_MAX);
    return 0;
}

size_t tls_take_output(struct tls_conn *t, struct pz_buf *out)
{
    size_t n = BIO_ctrl_pending(t->wbio);
    if (n == 0)
        return 0;
    pz_buf_reserve(out, n);
    int got = BIO_read(t->wbio, out->data + out->len, (int)n);
    if (got <= 0)
        return 0;
    out->len += (size_t)got;
    BUF_MEM *bm = NULL;
    BIO_get_mem_ptr(t->wbio, &bm);
    if (bm && bm->max > TLS_KEEP_MAX && BIO_ctrl_pending(t->wbio) == 0) {
        /* A memory BIO keeps the most it ever held: an empty one that
         * grew past TLS_KEEP_MAX is replaced (the SSL frees the old). */
        BIO *b = BIO_new(BIO_s_mem());
        if (b) {
            SSL_set0_wbio(t->ssl, b);
            t->wbio = b;
        }
        ERR_clear_error();
    }
    /* Every record written so far is taken at once (n is all there is):
     * what the plaintext since the last take does not account for is
     * TLS's own (record framing, handshake, alerts). */
    t->overhead +=
        (uint64_t)got > t->encrypted ? (uint64_t)got - t->encrypted : 0;
    t->encrypted = 0;
    return (size_t)got;
}

uint64_t tls_overhead(const struct tls_conn *t)
{
    return t->overhead;
}

bool tls_close_notify(struct tls_conn *t)
{
    if (t->notified || t->failed || !SSL_is_init_finished(t->ssl))
        return false;
    t->notified = true;
    SSL_shutdown(t->ssl);
    ERR_clear_error();
    return true;
}

bool tls_handshake_done(const struct tls_conn *t)
{
    return SSL_is_init_finished(t->ssl);
}

const char *tls_error(const struct tls_conn *t)
{
    return t->err;
}

void tls_set_deadline(struct tls_conn *t, uint64_t at)
{
    t->deadline = at;
}

uint64_t tls_deadline(const struct tls_conn *t)
{
    return t->deadline;
}

bool tls_peer_verified(const struct tls_conn *t)
{
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    return cert != NULL && SSL_get_verify_result(t->ssl) == X509_V_OK;
}

/* The verified peer certificate of t, or NULL. */
static X509 *verified_cert(const struct tls_conn *t)
{
    X509 *cert = SSL_get0_peer_certificate(t->ssl);
    if (cert == NULL || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return NULL;
    return cert;
}

/* Does some DNS subjectAltName of cert (as a string: none holding a NUL)
 * satisfy match(name, arg)? */
static bool some_dns_name(X509 *cert,
                          bool (*match)(const char *name, const void *arg),
                          const void *arg)
{
    GENERAL_NAMES *names =
        X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    bool found = false;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names) && !found; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_DNS)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
        int n = ASN1_STRING_length(g->d.dNSName);
        if (d == NULL || n <= 0 || n > 255 || memchr(d, 0, (size_t)n))
            continue;
        char name[256];
        memcpy(name, d, (size_t)n);
        name[n] = '\0';
        found = match(name, arg);
    }
    GENERAL_NAMES_free(names);
    ERR_clear_error();
    return found;
}

static bool same_name(const char *name, const void *want)
{
    return strcmp(name, want) == 0;
}

/* A node name is matched against the DNS subjectAltNames only, whatever
 * it looks like: a node id such as 10.0.0.5 is a name, not the node's
 * address (addresses play no part), so an IP subjectAltName never names
 * it, and the dialer's check (tls_peer_names_id) reads the same names. */
bool tls_peer_names(const struct tls_conn *t, const char *name)
{
    X509 *cert = verified_cert(t);
    if (cert == NULL || name == NULL || name[0] == '\0')
        return false;
    return some_dns_name(cert, same_name, name);
}

struct id_match {
    uint64_t (*name_to_id)(const char *name);
    uint64_t id;
};

static bool names_id(const char *name, const void *arg)
{
    const struct id_match *m = arg;
    return m->name_to_id(name) == m->id;
}

bool tls_peer_names_id(const struct tls_conn *t,
                       uint64_t (*name_to_id)(const char *name), uint64_t id)
{
    X509 *cert = verified_cert(t);
    if (cert == NULL || name_to_id == NULL)
        return false;
    struct id_match m = {name_to_id, id};
    return some_dns_name(cert, names_id, &m);
}

void tls_alpn(const struct tls_conn *t, char *buf, size_t len)
{
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    snprintf(buf, len, "%.*s", (int)n, p ? (const char *)p : "");
}

const char *tls_version(const struct tls_conn *t)
{
    return SSL_get_version(t->ssl);
}

bool tls_session_reused(const struct tls_conn *t)
{
    return SSL_session_reused(t->ssl) == 1;
}
