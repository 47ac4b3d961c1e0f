/* tls_setup.c - see tls_setup.h. */
#include "tls_setup.h"

#include <stdio.h>

#include "log.h"

struct tls_slot tls_http, tls_grpc, tls_peer_in, tls_peer_out;
struct tls_slot tls_http_client, tls_grpc_client, tls_mandi_client;

/* One tls_setup_load: at start or on a reload, where its message goes,
 * and the TLS_SETUP_* bits of what a reload could not put in place. */
struct setup {
    bool reload;
    char *err;
    size_t errlen;
    int bits;
};

/* Load one slot from o. want: configured now. On a reload, a slot that
 * did not load adds fail to st->bits and one turned on or off (which
 * needs a restart: logged, nothing done) adds restart. Returns false only
 * at start, when it did not load (err says why: the start stops). */
static bool load_one(struct setup *st, struct tls_slot *s, const char *name,
                     bool want, const struct tls_opts *o, int fail, int restart)
{
    char why[512];
    if (st->reload && want != tls_slot_on(s)) {
        pz_warn("reload: TLS on %s turned %s: needs a restart; still %s", name,
                want ? "on" : "off", tls_slot_on(s) ? "on" : "off");
        st->bits |= restart;
        return true;
    }
    if (!want)
        return true;
    if (tls_slot_load(s, name, o, why, sizeof why) < 0) {
        if (!st->reload) {
            snprintf(st->err, st->errlen, "TLS on %s: %s", name, why);
            return false;
        }
        pz_error("reload: TLS on %s: %s; the certificates in force stay", name,
                 why);
        st->bits |= fail;
        return true;
    }
    if (st->reload)
        pz_info("reload: TLS on %s: certificates read again", name);
    return true;
}

int tls_setup_load(const struct pz_config *c, bool reload, char *err,
                   size_t errlen)
{
    struct setup st = {reload, err, errlen, 0};
    const int F = TLS_SETUP_FAILED, R = TLS_SETUP_RESTART;
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
    if (!load_one(&st, &tls_http, "http", client, &o, F, R))
        return PZ_ECONFIG;
    o.alpn = "h2";
    if (!load_one(&st, &tls_grpc, "grpc", client, &o, F, R))
        return PZ_ECONFIG;
    struct tls_opts oc = {
        .server = false,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .ca_file = c->tls_ca_file,
        .alpn = "http/1.1",
    };
    if (!load_one(&st, &tls_http_client, "http client", client, &oc, F, R))
        return PZ_ECONFIG;
    oc.alpn = "h2";
    if (!load_one(&st, &tls_grpc_client, "grpc client", client, &oc, F, R))
        return PZ_ECONFIG;
    /* A node's client of an https mandi: mandi-ca-file, else tls-ca-file,
     * else the system's CAs; this node's certificate when it has one. */
    struct tls_opts om = {
        .server = false,
        .cert_file = c->tls_cert_file,
        .key_file = c->tls_key_file,
        .ca_file = c->mandi_ca_file[0] ? c->mandi_ca_file : c->tls_ca_file,
        .alpn = "http/1.1",
    };
    bool mandi_https =
        c->mode != CFG_MODE_MANDI && cfg_url_is_https(c->mandi_addr);
    /* on or off with mandi-addr, which is reported as needing a restart */
    if (!load_one(&st, &tls_mandi_client, "mandi client", mandi_https, &om, F,
                  0))
        return PZ_ECONFIG;
    struct tls_opts p = {
        .server = true,
        .cert_file = c->peer_tls_cert_file,
        .key_file = c->peer_tls_key_file,
        .ca_file = c->peer_tls_ca_file,
        .client_auth = TLS_AUTH_REQUIRE,
    };
    const int PF = TLS_SETUP_PEER_FAILED, PR = TLS_SETUP_PEER_RESTART;
    if (!load_one(&st, &tls_peer_in, "raft", peer, &p, PF, PR))
        return PZ_ECONFIG;
    p.server = false;
    if (!load_one(&st, &tls_peer_out, "raft dialer", peer, &p, PF, PR))
        return PZ_ECONFIG;
    return st.bits;
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
