/* auth.h - bearer tokens for the data API (client-token-file): the token
 * set in force, read at start and again on SIGHUP, and the decision for
 * each HTTP request and gRPC call.
 *
 * Without client-token-file nothing here refuses anything: the data API is
 * open as before (cluster-token still guards the admin routes). With it:
 *   - data routes and calls need a token of the file (401 / UNAUTHENTICATED
 *     without one), with the right (ro: reads and watches, rw: writes too)
 *     and, for a prefix-limited token, keys and ranges within its prefixes
 *     (403 / PERMISSION_DENIED);
 *   - lease routes need rw; revoking a lease, listing leases or a lease's
 *     keys need rw without prefixes (a lease may hold any key);
 *   - admin routes and calls (membership, transfer, snapshots, compaction,
 *     defragment, alarms) need the cluster token or an rw token without
 *     prefixes; Hash/HashKV need a token without prefixes;
 *   - /health, /status, /cluster, /metrics, gRPC Health, reflection and
 *     pyazdb.Cluster/Status stay open (no keys or values in them; /status
 *     shows the store's digest only to auth_http_sees_all).
 * A follower forwards the client's own Authorization to the leader, which
 * decides again with its own file: nothing a client sends (such as
 * X-Pyazdb-Forwarded) stands for a check done elsewhere.
 *
 * Refusals carry one line naming the token by its name, never the token.
 * A start with a file that does not load fails; a reload with one keeps
 * the tokens in force and logs the file, line and reason. */
#ifndef PZ_AUTH_H
#define PZ_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "config.h"
#include "http_parse.h"

/* What auth_* return. */
enum {
    AUTH_OK = 0,
    AUTH_UNAUTHENTICATED = 401, /* no token, or one the file lacks */
    AUTH_DENIED = 403,          /* a known token without the right */
};

/* Read c->client_token_file (none: tokens off). At start (reload false) a
 * failure returns PZ_ECONFIG with "FILE:LINE: reason" in err; on a reload
 * it is logged and the tokens in force stay. */
int auth_load(const struct pz_config *c, bool reload, char *err,
              size_t errlen);
void auth_free(void);
/* Are tokens in force (client-token-file set)? */
bool auth_on(void);

/* May the HTTP request req, decoded as op, run? AUTH_OK, or a refusal
 * with one line in why. The admin routes take the cluster token (read at
 * start by auth_load) too. */
int auth_http(const struct http_req *req, const struct http_op *op,
              char *why, size_t whylen);

/* May req see what covers every key (the store's digest in /status)?
 * True without tokens; with them, for the cluster token or a token
 * without prefixes (as etcd's Hash): the digest is a sum of hashes of
 * keys, values and their metadata, so with the revision beside it anyone
 * could test a guess at a value offline. */
bool auth_http_sees_all(const struct http_req *req);

/* gRPC: cred is the call's credential (the X of "authorization: Bearer
 * X", or etcd's "token" metadata; NULL: none). */
/* kv.KVService: a read or a write of one key. */
int auth_grpc_key(const char *cred, bool write, const uint8_t *key,
                  size_t klen, char *why, size_t whylen);
/* etcdserverpb.*: call (enum etcd_call) with its request message. */
int auth_grpc_etcd(const char *cred, int call, const uint8_t *msg,
                   size_t len, char *why, size_t whylen);
/* The same; when the check unpacked the request to decide (KV Range, Put,
 * DeleteRange, Txn with client tokens) and allows it, *unpacked gets it
 * (the caller's, to free with grpc_pb_allocator) and *bytes what it holds
 * (grpc_pb_counting), else NULL and 0. */
int auth_grpc_etcd_unpacked(const char *cred, int call, const uint8_t *msg,
                            size_t len, char *why, size_t whylen,
                            ProtobufCMessage **unpacked, size_t *bytes);
/* The cluster-token ("" none). */
const char *auth_cluster_token(void);
/* Is cred the token named name (etcd's Authenticate: etcdctl --user
 * NAME:TOKEN)? */
bool auth_user_ok(const char *name, const char *cred);

#endif
