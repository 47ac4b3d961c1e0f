/* tls_setup.h - the server's TLS contexts, made from the configuration.
 *
 * Six slots (tls.h): the HTTP listener (ALPN http/1.1), the gRPC listener
 * (ALPN h2), the Raft transport's accepting and dialing sides (mutual TLS
 * with the cluster CA), and the clients a node uses to reach other nodes'
 * HTTP and gRPC ports (forwarding to the leader, status polls): with TLS
 * on the client ports, these verify the other node's certificate against
 * tls-ca-file (the system's CAs when it is unset) and show this node's
 * own certificate, for a leader that requires client certificates. A slot is
 * off (plain text) when its files are not configured. tls_setup_load() at start
 * fails on any file that does not load; on a reload (SIGHUP) it reads every
 * file again and replaces a slot's context only when its new one loaded,
 * logging the ones that did not (the old context stays in force). Turning a
 * slot on or off takes a restart: a reload only logs it. */
#ifndef PZ_TLS_SETUP_H
#define PZ_TLS_SETUP_H

#include <stddef.h>

#include "config.h"
#include "tls.h"

extern struct tls_slot tls_http, tls_grpc, tls_peer_in, tls_peer_out;
extern struct tls_slot tls_http_client, tls_grpc_client;
/* A node's client of mandi when mandi-addr is https:// (mandi-ca-file). */
extern struct tls_slot tls_mandi_client;

/* What a reload of the slots did not do, as a mask: the client-facing
 * slots (HTTP, gRPC, this node's clients of other nodes and of mandi) and
 * the peer slots, each either failed to load (the old material stays in
 * force) or turned on or off (needs a restart). */
enum {
    TLS_SETUP_FAILED = 1 << 0,
    TLS_SETUP_RESTART = 1 << 1,
    TLS_SETUP_PEER_FAILED = 1 << 2,
    TLS_SETUP_PEER_RESTART = 1 << 3,
};

/* At start (reload false: any failure is an error in err; returns 0 or
 * PZ_ECONFIG) or on a reload (failures are logged, the rest applied;
 * returns the TLS_SETUP_* mask of what was not). */
int tls_setup_load(const struct pz_config *c, bool reload, char *err,
                   size_t errlen);
/* Release every context (at exit). */
void tls_setup_free(void);

#endif
