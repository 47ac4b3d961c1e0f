/* test_tls.c - the TLS engine without sockets: a client and a server
 * tls_conn joined in memory (handshake, ALPN, data both ways in pieces of
 * any size, client certificates and the names they carry, garbage input,
 * close_notify), and tls_slot_load keeping the old context when new files
 * do not load. Certificates are made here with OpenSSL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "test.h"
#include "tls.h"

struct pem {
    char dir[64];
    char crt[128], key[128];
};

/* A self-signed certificate with CN=name and the subjectAltNames san
 * (OpenSSL's "DNS:x,IP:y" form), written to a temporary directory; it
 * serves as its own CA. */
static void make_cert_san(struct pem *p, const char *name, const char *san)
{
    snprintf(p->dir, sizeof p->dir, "/tmp/pz-tls-XXXXXX");
    CHECK(mkdtemp(p->dir) != NULL);
    snprintf(p->crt, sizeof p->crt, "%s/c.pem", p->dir);
    snprintf(p->key, sizeof p->key, "%s/k.pem", p->dir);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    CHECK(k != NULL);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
                               (const unsigned char *)name, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
    CHECK(ext != NULL);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    CHECK(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(p->crt, "w");
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(p->key, "w");
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* A self-signed certificate naming DNS:name and IP:127.0.0.1. */
static void make_cert(struct pem *p, const char *name)
{
    char san[128];
    snprintf(san, sizeof san, "DNS:%s,IP:127.0.0.1", name);
    make_cert_san(p, name, san);
}

static void drop_cert(struct pem *p)
{
    unlink(p->crt);
    unlink(p->key);
    rmdir(p->dir);
}

/* Move every record between a and b until neither has output. */
static void pump(struct tls_conn *a, struct tls_conn *b)
{
    struct pz_buf x;
    pz_buf_init(&x);
    for (int round = 0; round < 20; round++) {
        size_t n = 0;
        n += tls_take_output(a, &x);
        tls_feed(b, x.data, x.len);
        pz_buf_reset(&x);
        n += tls_take_output(b, &x);
        tls_feed(a, x.data, x.len);
        pz_buf_reset(&x);
        char buf[64];
        /* Handshake steps happen in tls_read; no data is sent yet. */
        CHECK(tls_read(a, buf, sizeof buf) <= 0);
        CHECK(tls_read(b, buf, sizeof buf) <= 0);
        if (n == 0 && tls_handshake_done(a) && tls_handshake_done(b))
            break;
    }
    pz_buf_free(&x);
}

/* Send len bytes from a to b, and read them back in pieces of cap. */
static void send_recv(struct tls_conn *a, struct tls_conn *b, size_t len,
                      size_t cap)
{
    char *msg = pz_malloc(len), *got = pz_malloc(len), *buf = pz_malloc(cap);
    for (size_t i = 0; i < len; i++)
        msg[i] = (char)(i * 7 + 3);
    tls_queue(a, msg, len);
    CHECK_EQ_INT(tls_queued(a), len);
    CHECK_EQ_INT(tls_encrypt(a), 0);
    CHECK_EQ_INT(tls_queued(a), 0);
    struct pz_buf x;
    pz_buf_init(&x);
    tls_take_output(a, &x);
    CHECK(x.len > len); /* records carry overhead */
    tls_feed(b, x.data, x.len);
    size_t have = 0;
    int n;
    while (have < len && (n = tls_read(b, buf, cap)) > 0) {
        CHECK(have + (size_t)n <= len);
        memcpy(got + have, buf, (size_t)n);
        have += (size_t)n;
    }
    CHECK_EQ_INT(have, len);
    CHECK(memcmp(msg, got, len) == 0);
    CHECK_EQ_INT(tls_read(b, buf, cap), 0);
    pz_buf_free(&x);
    pz_free(msg);
    pz_free(got);
    pz_free(buf);
}

TEST(handshake_alpn_data)
{
    struct pem srv;
    make_cert(&srv, "node1");
    struct tls_slot ss = {0}, cs = {0};
    char err[256];
    struct tls_opts so = {.server = true,
                          .cert_file = srv.crt,
                          .key_file = srv.key,
                          .alpn = "h2"};
    CHECK_EQ_INT(tls_slot_load(&ss, "test", &so, err, sizeof err), 0);
    struct tls_opts co = {.server = false, .ca_file = srv.crt, .alpn = "h2"};
    CHECK_EQ_INT(tls_slot_load(&cs, "client", &co, err, sizeof err), 0);
    struct tls_conn *s = tls_conn_new(&ss, NULL);
    struct tls_conn *c = tls_conn_new(&cs, "127.0.0.1");
    /* What the client writes before the handshake waits for it. */
    tls_queue(c, "early", 5);
    CHECK_EQ_INT(tls_encrypt(c), 0);
    CHECK_EQ_INT(tls_queued(c), 5);
    CHECK_EQ_INT(tls_start(c), 0);
    pump(c, s);
    CHECK(tls_handshake_done(c));
    CHECK(tls_handshake_done(s));
    char alpn[16];
    tls_alpn(s, alpn, sizeof alpn);
    CHECK_EQ_STR(alpn, "h2");
    CHECK_EQ_STR(tls_version(s), "TLSv1.3");
    CHECK(!tls_peer_verified(s)); /* no client certificate asked */
    CHECK_EQ_INT(tls_encrypt(c), 0);
    struct pz_buf x;
    pz_buf_init(&x);
    tls_take_output(c, &x);
    tls_feed(s, x.data, x.len);
    char buf[16];
    CHECK_EQ_INT(tls_read(s, buf, sizeof buf), 5);
    CHECK(memcmp(buf, "early", 5) == 0);
    send_recv(c, s, 1, 16);
    send_recv(s, c, 100000, 7); /* many records, read in small pieces */
    send_recv(c, s, 1 << 20, 64 * 1024);
    /* close_notify once; the other side sees the end. */
    CHECK(tls_close_notify(s));
    CHECK(!tls_close_notify(s));
    pz_buf_reset(&x);
    tls_take_output(s, &x);
    tls_feed(c, x.data, x.len);
    CHECK_EQ_INT(tls_read(c, buf, sizeof buf), UV_EOF);
    pz_buf_free(&x);
    tls_conn_free(s);
    tls_conn_free(c);
    tls_slot_clear(&ss);
    tls_slot_clear(&cs);
    drop_cert(&srv);
}

TEST(client_cert_names)
{
    struct pem srv, cli;
    make_cert(&srv, "node1");
    make_cert(&cli, "node2");
    struct tls_slot ss = {0}, cs = {0};
    char err[256];
    struct tls_opts so = {.server = true,
                          .cert_file = srv.crt,
                          .key_file = srv.key,
                          .ca_file = cli.crt,
                          .client_auth = TLS_AUTH_REQUIRE};
    CHECK_EQ_INT(tls_slot_load(&ss, "raft", &so, err, sizeof err), 0);
    struct tls_opts co = {.server = false,
                          .cert_file = cli.crt,
                          .key_file = cli.key,
                          .ca_file = srv.crt};
    CHECK_EQ_INT(tls_slot_load(&cs, "dialer", &co, err, sizeof err), 0);
    struct tls_conn *s = tls_conn_new(&ss, NULL);
    struct tls_conn *c = tls_conn_new(&cs, "node1");
    CHECK_EQ_INT(tls_start(c), 0);
    pump(c, s);
    CHECK(tls_handshake_done(s));
    CHECK(tls_peer_verified(s));
    CHECK(tls_peer_names(s, "node2"));
    /* IP:127.0.0.1 is in it, but an IP subjectAltName names no node */
    CHECK(!tls_peer_names(s, "127.0.0.1"));
    CHECK(!tls_peer_names(s, "node1"));
    CHECK(!tls_peer_names(s, "node"));
    /* node names are case-sensitive: another name, not a host name's
     * other spelling */
    CHECK(!tls_peer_names(s, "NODE2"));
    CHECK(!tls_peer_names(s, "Node2"));
    CHECK(!tls_peer_names(s, ""));
    CHECK(tls_peer_names(c, "node1"));
    tls_conn_free(s);
    tls_conn_free(c);

    /* The dialer expects another name: its handshake fails. */
    s = tls_conn_new(&ss, NULL);
    c = tls_conn_new(&cs, "node3");
    CHECK_EQ_INT(tls_start(c), 0);
    struct pz_buf x;
    pz_buf_init(&x);
    int rv = 0;
    char buf[64];
    for (int i = 0; i < 10 && rv == 0; i++) {
        tls_take_output(c, &x);
        tls_feed(s, x.data, x.len);
        pz_buf_reset(&x);
        tls_read(s, buf, sizeof buf);
        tls_take_output(s, &x);
        tls_feed(c, x.data, x.len);
        pz_buf_reset(&x);
        rv = tls_read(c, buf, sizeof buf);
    }
    CHECK_EQ_INT(rv, PZ_EPROTO);
    CHECK(strstr(tls_error(c), "certificate") != NULL);
    tls_conn_free(s);
    tls_conn_free(c);

    /* A client without a certificate is refused by the server. */
    struct tls_slot anon = {0};
    struct tls_opts ao = {.server = false, .ca_file = srv.crt};
    CHECK_EQ_INT(tls_slot_load(&anon, "anon", &ao, err, sizeof err), 0);
    s = tls_conn_new(&ss, NULL);
    c = tls_conn_new(&anon, "node1");
    CHECK_EQ_INT(tls_start(c), 0);
    int srv_rv = 0;
    for (int i = 0; i < 10 && srv_rv == 0; i++) {
        tls_take_output(c, &x);
        tls_feed(s, x.data, x.len);
        pz_buf_reset(&x);
        srv_rv = tls_read(s, buf, sizeof buf);
        tls_take_output(s, &x);
        tls_feed(c, x.data, x.len);
        pz_buf_reset(&x);
        tls_read(c, buf, sizeof buf);
    }
    CHECK_EQ_INT(srv_rv, PZ_EPROTO);
    CHECK(tls_error(s)[0] != '\0');
    pz_buf_free(&x);
    tls_conn_free(s);
    tls_conn_free(c);
    tls_slot_clear(&anon);
    tls_slot_clear(&ss);
    tls_slot_clear(&cs);
    drop_cert(&srv);
    drop_cert(&cli);
}

/* Node ids of the names ip_looking_node_ids uses, as a node maps them. */
static uint64_t ip_name_to_id(const char *name)
{
    static const char *const names[] = {"10.0.0.5", "10.0.0.6", "127.0.0.1"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(names); i++)
        if (strcmp(name, names[i]) == 0)
            return i + 1;
    return 99;
}

/* Joins a dialer (client slot cs, no host name: the Raft transport's way)
 * and an acceptor (ss) in memory; both handshakes must finish. */
static void peer_pair(struct tls_slot *ss, struct tls_slot *cs,
                      struct tls_conn **s, struct tls_conn **c)
{
    *s = tls_conn_new(ss, NULL);
    *c = tls_conn_new(cs, NULL);
    CHECK_EQ_INT(tls_start(*c), 0);
    pump(*c, *s);
    CHECK(tls_handshake_done(*s));
    CHECK(tls_handshake_done(*c));
}

/* A node id that reads as an IP address is a node name like any other:
 * both the acceptor's check (tls_peer_names) and the dialer's
 * (tls_peer_names_id) look for it among the DNS subjectAltNames only,
 * byte for byte, and an IP subjectAltName, even one equal to the id,
 * names no node. */
TEST(ip_looking_node_ids)
{
    struct pem srv, cli, ipo;
    make_cert(&srv, "10.0.0.6");                   /* DNS:10.0.0.6,IP:127... */
    make_cert(&cli, "10.0.0.5");                   /* DNS:10.0.0.5,IP:127... */
    make_cert_san(&ipo, "ip-only", "IP:10.0.0.5"); /* no DNS name */
    struct tls_slot ss = {0}, cs = {0}, ics = {0};
    char err[256];
    char ca[256];
    snprintf(ca, sizeof ca, "%s/ca.pem", srv.dir);
    /* The acceptor trusts both dialers' self-signed certificates. */
    FILE *out = fopen(ca, "w");
    CHECK(out != NULL);
    const char *const crts[] = {cli.crt, ipo.crt, srv.crt};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(crts); i++) {
        FILE *in = fopen(crts[i], "r");
        CHECK(in != NULL);
        char line[256];
        while (fgets(line, sizeof line, in))
            fputs(line, out);
        fclose(in);
    }
    fclose(out);
    struct tls_opts so = {.server = true,
                          .cert_file = srv.crt,
                          .key_file = srv.key,
                          .ca_file = ca,
                          .client_auth = TLS_AUTH_REQUIRE};
    CHECK_EQ_INT(tls_slot_load(&ss, "raft", &so, err, sizeof err), 0);
    struct tls_opts co = {.server = false,
                          .cert_file = cli.crt,
                          .key_file = cli.key,
                          .ca_file = srv.crt};
    CHECK_EQ_INT(tls_slot_load(&cs, "dialer", &co, err, sizeof err), 0);
    co.cert_file = ipo.crt;
    co.key_file = ipo.key;
    CHECK_EQ_INT(tls_slot_load(&ics, "dialer", &co, err, sizeof err), 0);
    struct tls_conn *s, *c;
    peer_pair(&ss, &cs, &s, &c);
    /* The acceptor: DNS:10.0.0.5 names node 10.0.0.5... */
    CHECK(tls_peer_verified(s));
    CHECK(tls_peer_names(s, "10.0.0.5"));
    /* ...and IP:127.0.0.1 names no node 127.0.0.1. */
    CHECK(!tls_peer_names(s, "127.0.0.1"));
    CHECK(!tls_peer_names(s, "10.0.0.6"));
    CHECK(!tls_peer_names(s, "10.0.0.50"));
    CHECK(!tls_peer_names(s, "10.0.0"));
    /* The dialer, by the id it dialed: the same rule. */
    CHECK(tls_peer_names_id(c, ip_name_to_id, ip_name_to_id("10.0.0.6")));
    CHECK(!tls_peer_names_id(c, ip_name_to_id, ip_name_to_id("127.0.0.1")));
    CHECK(!tls_peer_names_id(c, ip_name_to_id, ip_name_to_id("10.0.0.5")));
    CHECK(tls_peer_names(c, "10.0.0.6"));
    CHECK(!tls_peer_names(c, "127.0.0.1"));
    tls_conn_free(s);
    tls_conn_free(c);

    /* IP:10.0.0.5 alone, equal to the id: not a name of node 10.0.0.5. */
    peer_pair(&ss, &ics, &s, &c);
    CHECK(tls_peer_verified(s));
    CHECK(!tls_peer_names(s, "10.0.0.5"));
    tls_conn_free(s);
    tls_conn_free(c);
    unlink(ca);
    tls_slot_clear(&ss);
    tls_slot_clear(&cs);
    tls_slot_clear(&ics);
    drop_cert(&srv);
    drop_cert(&cli);
    drop_cert(&ipo);
}

TEST(garbage_refused)
{
    struct pem srv;
    make_cert(&srv, "node1");
    struct tls_slot ss = {0};
    char err[256];
    struct tls_opts so = {
        .server = true, .cert_file = srv.crt, .key_file = srv.key};
    CHECK_EQ_INT(tls_slot_load(&ss, "test", &so, err, sizeof err), 0);
    struct tls_conn *s = tls_conn_new(&ss, NULL);
    CHECK(!tls_got_input(s));
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    tls_feed(s, req, sizeof req - 1);
    CHECK(tls_got_input(s));
    char buf[64];
    CHECK_EQ_INT(tls_read(s, buf, sizeof buf), PZ_EPROTO);
    CHECK(tls_error(s)[0] != '\0');
    CHECK_EQ_INT(tls_read(s, buf, sizeof buf), PZ_EPROTO); /* stays */
    CHECK(!tls_has_input(s));
    tls_conn_free(s);
    tls_slot_clear(&ss);
    drop_cert(&srv);
}

TEST(slot_keeps_old_on_bad_files)
{
    struct pem a, b;
    make_cert(&a, "node1");
    make_cert(&b, "node2");
    struct tls_slot ss = {0};
    char err[256];
    struct tls_opts so = {
        .server = true, .cert_file = a.crt, .key_file = a.key};
    CHECK_EQ_INT(tls_slot_load(&ss, "test", &so, err, sizeof err), 0);
    void *before = ss.ctx;
    /* The key of another certificate. */
    so.key_file = b.key;
    CHECK(tls_slot_load(&ss, "test", &so, err, sizeof err) < 0);
    CHECK(strstr(err, b.key) != NULL);
    CHECK(ss.ctx == before);
    /* A missing file. */
    so.cert_file = "/nonexistent/c.pem";
    CHECK(tls_slot_load(&ss, "test", &so, err, sizeof err) < 0);
    CHECK(strstr(err, "/nonexistent/c.pem") != NULL);
    CHECK(ss.ctx == before);
    /* Client certificates asked for without a CA. */
    so.cert_file = a.crt;
    so.key_file = a.key;
    so.client_auth = TLS_AUTH_REQUIRE;
    CHECK(tls_slot_load(&ss, "test", &so, err, sizeof err) < 0);
    CHECK(ss.ctx == before);
    /* A connection keeps its context across a reload. */
    struct tls_conn *t = tls_conn_new(&ss, NULL);
    so.client_auth = TLS_AUTH_NONE;
    so.cert_file = b.crt;
    so.key_file = b.key;
    CHECK_EQ_INT(tls_slot_load(&ss, "test", &so, err, sizeof err), 0);
    CHECK(ss.ctx != NULL);
    CHECK_EQ_INT(ss.loads, 2);
    tls_conn_free(t); /* the old context goes with it */
    CHECK_EQ_INT(tls_parse_client_auth("require"), TLS_AUTH_REQUIRE);
    CHECK_EQ_INT(tls_parse_client_auth("optional"), TLS_AUTH_OPTIONAL);
    CHECK_EQ_INT(tls_parse_client_auth("none"), TLS_AUTH_NONE);
    CHECK_EQ_INT(tls_parse_client_auth("yes"), -1);
    tls_slot_clear(&ss);
    drop_cert(&a);
    drop_cert(&b);
}

static const struct test_case cases[] = {
    TEST_ENTRY(handshake_alpn_data),         TEST_ENTRY(client_cert_names),
    TEST_ENTRY(ip_looking_node_ids),         TEST_ENTRY(garbage_refused),
    TEST_ENTRY(slot_keeps_old_on_bad_files), TEST_END};
const struct test_suite suite_tls = {"tls", cases};
