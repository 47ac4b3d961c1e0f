/* tls_setup.c - see tls_setup.h. */
#include "tls_setup.h"

#include <stdio.h>

#include "log.h"

struct tls_slot tls_http, tls_grpc, tls_peer_in, tls_peer_out;
struct tls_slot tls_http_client, tls_grpc_client, tls_mandi_client;

/* Load one slot from o. want: configured now. Returns 0, a negative
 * code when it did not load, or 1 on a reload that turns it on or off
 * (which needs a restart: logged, nothing done). */
static int load_one(struct tls_slot *s, const char *name, bool want,
                    const struct tls_opts *o, bool reload, char *err,
                    size_t errlen)
{
    char why[512];
    if (reload && want != tls_slot_on(s)) {
        pz_warn("reload: TLS on %s turned %s: needs a restart; still %s", name,
                want ? "on" : "off", tls_slot_on(s) ? "on" : "off");
        return 1;
    }
    if (!want)
        return 0;
    int rv = tls_slot_load(s, name, o, why, sizeof why);
    if (rv < 0) {
        if (reload) {
            pz_error("reload: TLS on %s: %s; the certificates in force stay",
                     name, why);
        } else {
            snprintf(err, errlen, "TLS on %s: %s", name, why);
        }
        return rv;
    }
    if (reload)
        pz_info("reload: TLS on %s: certificates read again", name);
    return 0;
}

int tls_setup_load(const struct pz_config *c, bool reload, char *err,
                   size_t errlen)
{
    bool client = c->tls_cert_file[0] != '\0';
    bool peer = c->peer_tls_cert_file[0] != '\0';
    struct tls_opts o = {
        .server = true,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .ca_file = c->tls_ca_file,
        .client_auth = c->tls_client_auth,
        .alpn = "http/1.1",
    };
    int failed = 0; /* TLS_SETUP_* */
    int rv;
    rv = load_one(&tls_http, "http", client, &o, reload, err, errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0 ? TLS_SETUP_FAILED : rv > 0 ? TLS_SETUP_RESTART : 0;
    o.alpn = "h2";
    rv = load_one(&tls_grpc, "grpc", client, &o, reload, err, errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0 ? TLS_SETUP_FAILED : rv > 0 ? TLS_SETUP_RESTART : 0;
    struct tls_opts oc = {
        .server = false,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .ca_file = c->tls_ca_file,
        .alpn = "http/1.1",
    };
    rv = load_one(&tls_http_client, "http client", client, &oc, reload, err,
                  errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0 ? TLS_SETUP_FAILED : rv > 0 ? TLS_SETUP_RESTART : 0;
    oc.alpn = "h2";
    rv = load_one(&tls_grpc_client, "grpc client", client, &oc, reload, err,
                  errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0 ? TLS_SETUP_FAILED : rv > 0 ? TLS_SETUP_RESTART : 0;
    /* A node's client of an https mandi: mandi-ca-file, else tls-ca-file,
     * else the system's CAs; this node's certificate when it has one. */
    struct tls_opts om = {
        .server = false,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .ca_file = c->mandi_ca_file[0] ? c->mandi_ca_file : c->tls_ca_file,
        .alpn = "http/1.1",
    };
    bool mandi_https = c->mode != CFG_MODE_MANDI &&
                       cfg_url_is_https(c->mandi_addr);
    rv = load_one(&tls_mandi_client, "mandi client", mandi_https, &om, reload,
                  err, errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    /* on or off with mandi-addr, which is reported as needing a restart */
    failed |= rv < 0 ? TLS_SETUP_FAILED : 0;
    struct tls_opts p = {
        .server = true,
        .cert_file = c->peer_tls_cert_file,
        .key_file = c->peer_tls_key_file,
        .ca_file = c->peer_tls_ca_file,
        .client_auth = TLS_AUTH_REQUIRE,
    };
    rv = load_one(&tls_peer_in, "raft", peer, &p, reload, err, errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0   ? TLS_SETUP_PEER_FAILED
              : rv > 0 ? TLS_SETUP_PEER_RESTART
                       : 0;
    p.server = false;
    rv = load_one(&tls_peer_out, "raft dialer", peer, &p, reload, err, errlen);
    if (rv < 0 && !reload)
        return PZ_ECONFIG;
    failed |= rv < 0   ? TLS_SETUP_PEER_FAILED
              : rv > 0 ? TLS_SETUP_PEER_RESTART
                       : 0;
    return failed;
}

void tls_setup_free(void)
{
    tls_slot_clear(&tls_http);
    tls_slot_clear(&tls_grpc);
    tls_slot_clear(&tls_mandi_client);
    tls_slot_clear(&tls_peer_in);
    tls_slot_clear(&tls_peer_out);
    tls_slot_clear(&tls_http_client);
    tls_slot_clear(&tls_grpc_client);
}
